//! The hand-off: ownership of the Sovereign passes from this daemon to the
//! Sovereign itself.
//!
//! - [`secrets`] (`secrets-handoff`, phase 6): OpenBao initialized and
//!   unsealed, its shares escrowed, External Secrets wired to it, the root
//!   token retired, sealed-secrets retired;
//! - [`infra`] (`infra-handoff`, phase 8): Crossplane adopts the cloud
//!   objects, and the tofu state is archived and frozen.
//!
//! Both run only in the `sim` backend today: the OpenBao adapter of the
//! `hetzner` backend is not built, and the Crossplane resources are not yet
//! those of a real provider.

pub mod infra;
pub mod secrets;
