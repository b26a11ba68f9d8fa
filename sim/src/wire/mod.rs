//! Fakes on the wire: in-process HTTP servers (axum, a real socket) that
//! speak the APIs the real adapters call, with failure injection.

pub mod controllers;
pub mod hcloud;
pub mod kube;
pub mod registrars;

pub use controllers::Pace;
pub use hcloud::{FakeConfig, FakeHandle};
pub use kube::FakeKube;
pub use registrars::FakeRegistrars;
