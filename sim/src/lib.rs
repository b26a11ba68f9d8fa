//! Everything in Catalyst-Zero that pretends. Nothing here runs in a real
//! Sovereign's provisioning; it exists so the whole state machine can run
//! on one machine, and so the real adapters have something to be tested
//! against where the real system cannot run here.
//!
//! Two kinds of pretending, kept apart:
//!
//! - [`backend`]: the `sim` backend, fakes *behind the adapter traits*. The
//!   fakes simulate remote systems that outlive the daemon: their state is
//!   a [`SimWorld`] of JSON files under `<data-dir>/sim/`, written
//!   atomically, so a daemon killed with SIGKILL and restarted finds the
//!   sim cloud, hosts, clusters, OpenBao and DNS exactly as the "remote"
//!   left them. Latency is realistic by default and scaled by
//!   [`SimConfig::latency_factor`]; failures are injected per op with
//!   [`FailRule`]s and a transient rate. This is the README's main job and
//!   the base of the benchmarks.
//!
//!   | system | fake | world system |
//!   |---|---|---|
//!   | Hetzner Cloud | [`SimCloud`] | `cloud` |
//!   | OpenTofu + hcloud provider | [`SimTofu`] | `cloud` + workspace files |
//!   | SSH | [`SimSsh`] | `ssh` |
//!   | Kubernetes (k3s, Flux) | [`SimKube`] | `kube` |
//!   | OpenBao | [`SimBao`] | `bao` |
//!   | PowerDNS | [`SimDns`] | `dns` |
//!   | registrars (`byo-api`) | [`SimRegistrars`] | `registrar` |
//!
//! - [`wire`]: fakes *on the wire*, in-process HTTP servers on a real
//!   socket that speak an API the real adapters call: the Hetzner Cloud API
//!   ([`wire::hcloud`]), the Kubernetes API with simulated K3s, Flux and
//!   workload controllers ([`wire::kube`], [`wire::controllers`]), and five
//!   registrar APIs ([`wire::registrars`]). No Hetzner, Kubernetes or
//!   registrar API can run here, so these fakes are the adapters' only
//!   proof; they keep the real semantics (server-side apply, watches,
//!   `resourceVersion`, label selectors, error bodies, rate limits) and are
//!   held to clients someone else wrote (`kubectl`, Hetzner's `hcloud`).
//!
//! [`charts`] says what each kit chart puts in a cluster; both kinds of
//! Kubernetes fake install from it. [`eso`] is External Secrets' rules,
//! which both run.

pub mod backend;
pub mod charts;
pub mod eso;
pub mod wire;

pub use backend::FailRule;
pub use backend::SimBao;
pub use backend::SimCloud;
pub use backend::SimConfig;
pub use backend::SimDns;
pub use backend::SimKube;
pub use backend::SimRegistrars;
pub use backend::SimSsh;
pub use backend::SimTofu;
pub use backend::SimWorld;
pub use backend::sim_backend;
pub use backend::sim_backend_with_world;
pub use backend::sim_token;
