//! Hetzner Cloud API client (reqwest), its per-project rate budget, and an
//! hcloud-compatible fake server for tests.
//!
//! - [`budget`]: [`RateBudget`] token bucket per project (hash of the
//!   token), shared through [`BudgetRegistry`];
//! - [`client`]: [`HcloudClient`], the real [`crate::adapters::CloudApi`];
//!   [`cause_of`] maps Hetzner error codes to causes;
//! - [`fake`]: an axum server speaking the same REST shapes.

pub mod budget;
pub mod client;
pub mod fake;
pub mod shim;

pub use budget::{BudgetConfig, BudgetRegistry, RateBudget, project_key};
pub use client::{HcloudClient, ProjectQuota, RetryConfig, cause_of};
