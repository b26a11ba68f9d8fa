//! Kubernetes: the real adapter over `kube` ([`client`]) and an in-process
//! fake API server with the semantics it relies on ([`fake`]).

pub mod client;
pub mod fake;

pub use client::KubeClient;
pub use fake::FakeKube;
