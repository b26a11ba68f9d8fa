//! The hand-off: ownership of the Sovereign passes from this daemon to the
//! Sovereign itself.
//!
//! - [`secrets`] (`secrets-handoff`, phase 6): OpenBao initialized and
//!   unsealed, its shares escrowed to the custodians, External Secrets
//!   installed and wired to it and proven by a round trip, the root token
//!   revoked, sealed-secrets retired;
//! - [`join`] (`region-custody`, `secrets-join`, add-region only): a new
//!   region's OpenBao replicas join the Sovereign's cluster as non-voters
//!   and are unsealed (by themselves, or by the custodians);
//! - [`infra`] (`infra-handoff`, phase 8): Crossplane adopts the cloud
//!   objects, and the tofu state is archived and frozen.
//!
//! The secrets hand-off runs on both backends (the real OpenBao client
//! through the API server's pod proxy); the infra hand-off's Crossplane
//! resources are not yet those of a real provider.

pub mod infra;
pub mod join;
pub mod secrets;
