//! Catalyst-Zero: the daemon, its HTTP API and the operator CLI.
//!
//! - [`config`]: the TOML config file and `CATALYST_ZERO_*` overrides;
//! - [`supervisor`]: the driver task of every running job, startup
//!   recovery, and operator verbs (stop → apply → start);
//! - [`api`]: the `/v1` HTTP API (axum), pure `router(state)`;
//! - [`wiring`]: the backend a config asks for (sim or hetzner adapters);
//! - [`reconcilers`]: the loops that keep things converged (DNS leases);
//! - [`server`]: starts store, backend, engine, supervisor, reconcilers and
//!   API together;
//! - [`telemetry`]: log subscriber setup (binary only);
//! - [`cli`]: the `catalyst-zero` command line (daemon, client, `run`).

pub mod api;
pub mod bench;
pub mod cli;
pub mod config;
pub mod datadir;
pub mod reconcilers;
pub mod server;
pub mod supervisor;
pub mod telemetry;
pub mod tls;
pub mod wiring;

pub use config::Config;
pub use server::{ServerHandle, start};
