//! Kubernetes: the real adapter over `kube` ([`client`]) and an in-process
//! fake API server with the semantics it relies on ([`fake`]).

pub mod charts;
pub mod client;
mod controllers;
pub mod fake;

pub use client::KubeClient;
pub use controllers::Pace;
pub use fake::FakeKube;
