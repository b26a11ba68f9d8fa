//! Catalyst-Zero's end-to-end tests, one test binary:
//!
//! - whole phases through the real adapters against real servers and the
//!   wire fakes: [`cluster_sshd`] (the `cluster` phase over real SSH to
//!   five `sshd` nodes), [`kit_fake`] (the `bootstrap-kit` phase through
//!   the real Kubernetes client against the fake API server and its
//!   controllers), [`dns_pdns`] (the DNS phases against a real
//!   `pdns_server`, and the registrars' wire fakes), [`handoff_bao`]
//!   (`custody` and `secrets-handoff` against three real OpenBao nodes
//!   behind the fake API server over TLS, and the `unseal` CLI),
//!   [`hcloud_client`] (Hetzner's own Python client against the hcloud
//!   fake);
//! - the `catalyst-zero` binary end to end (build it first:
//!   `cargo build -p catalyst-zero`): [`daemon_kill9`] (SIGKILL at every
//!   step boundary and inside every step), [`daemon_dns`] (a real
//!   PowerDNS), [`daemon_hetzner`] (the hcloud fake and the real tofu CLI),
//!   [`hetzner_e2e`] (every real adapter of the hetzner backend, from the
//!   request to `succeeded` and a destroy back to nothing).
//!
//! The kill -9 tests run this binary again as their child, naming the
//! child test by its path here (`kit_fake::child_driver`).

mod check_cli;
mod cluster_sshd;
mod console;
mod daemon_disk_full;
mod daemon_dns;
mod daemon_hetzner;
mod daemon_kill9;
mod daemon_lock;
mod daemon_replicas;
mod daemon_tls;
mod daemon_traces;
mod dns_pdns;
mod handoff_bao;
mod hcloud_client;
mod hetzner_e2e;
mod kit_fake;
mod kubectl_fake;
mod large_region;
mod server_boot;
