//! Kubernetes: an in-process fake API server with the semantics the kit's
//! adapter relies on ([`fake`]). The real adapter (kube) arrives next.

pub mod fake;

pub use fake::FakeKube;
