//! Backend wiring: which adapters a daemon's jobs run against, from its
//! config. The `sim` backend is `cz-sim`'s; the `hetzner` backend is the
//! real clients of `cz-adapters` (Hetzner API, tofu, ssh2, kube-rs,
//! OpenBao over HTTP, PowerDNS, which it refuses to start without). Both
//! then take the DNS configuration: the real PowerDNS and registrar APIs
//! where `[powerdns]` and `[registrars]` say so, and the `[dns]` bounds.

use std::sync::Arc;

use anyhow::Context;
use cz_adapters::dns::{DnsApi, PowerDns};
use cz_adapters::registrar::{Endpoints, HttpRegistrars, Registrars};
use cz_adapters::{Backend, InfraModule};
use cz_phases::dns::NAMESERVERS;

use crate::config::{BackendKind, Config};

/// The backend `config` asks for, DNS configuration applied, checked: a
/// `hetzner` backend without a usable tofu and module refuses to start
/// rather than fail every job at its first infra step, and the pool zones
/// exist (made if missing) on the DNS server the jobs will use.
pub async fn backend(config: &Config) -> anyhow::Result<Backend> {
    let backend = match config.backend {
        BackendKind::Sim => {
            let (world, workspaces) = match &config.shared_dir {
                None => (
                    cz_sim::SimWorld::new(config.data_dir.join("sim"), config.sim.clone()),
                    config.data_dir.join("workspaces"),
                ),
                Some(shared) => (
                    cz_sim::SimWorld::shared(shared.join("sim"), config.sim.clone()),
                    shared.join("workspaces"),
                ),
            };
            // `/metrics` reports the simulated project's budget beside any
            // real one (`hcloud_budget_remaining{project="sim"}`).
            if let Some(budget) = world.budget() {
                cz_adapters::cloud::BudgetRegistry::global().adopt(budget.clone());
            }
            cz_sim::sim_backend_with_world(Arc::new(world), workspaces)
        }
        BackendKind::Hetzner => {
            let b = hetzner_backend(config)?;
            let tofu = b.tofu.version().await.map_err(|e| {
                anyhow::anyhow!("the hetzner backend cannot use its tofu binary: {e}")
            })?;
            if let InfraModule::Hcloud { templates, .. } | InfraModule::Offline { templates, .. } =
                &b.infra
            {
                let digest = cz_phases::infra::render::templates_digest(templates)
                    .map_err(|e| anyhow::anyhow!("the cloud templates cannot be read: {e}"))?;
                tracing::info!(%tofu, templates = %templates.display(), sha256 = %digest, "Hetzner backend ready.");
            }
            b
        }
    };
    let backend = with_dns_config(backend, config)?;
    ensure_pool_zones(&backend, config.powerdns.is_some()).await?;
    Ok(backend)
}

/// The pool parent zones a sim world must serve (delegations go there).
pub const SIM_POOL_ZONES: &[&str] = &["omani.works.", "openova.io."];

/// Creates the pool parent zones in a sim world (idempotent): a pool
/// Sovereign's delegation is written into its parent zone, which on real
/// infrastructure exists before any Sovereign does.
pub async fn ensure_sim_pool_zones(backend: &Backend) -> anyhow::Result<()> {
    ensure_pool_zones(backend, false).await
}

/// The registrars' real adapters, at `endpoints`.
fn http_registrars(endpoints: Endpoints) -> Arc<dyn Registrars> {
    Arc::new(HttpRegistrars::new(endpoints, std::time::Duration::from_secs(30)))
}

/// The real PowerDNS adapter when `[powerdns]` is configured.
pub(crate) fn powerdns(config: &Config) -> anyhow::Result<Option<Arc<dyn DnsApi>>> {
    let Some(p) = &config.powerdns else { return Ok(None) };
    let key = cz_state::SecretString::new(p.api_key.clone().unwrap_or_default());
    let timeout = std::time::Duration::from_secs(p.timeout_secs);
    let d = PowerDns::new(&p.api_url, &p.server_id, key, p.dns_address, timeout)
        .map_err(|e| anyhow::anyhow!("powerdns: {e}"))?;
    Ok(Some(Arc::new(d)))
}

/// The DNS side of `config`, the same for both backends: the real PowerDNS
/// and registrar APIs where configured (otherwise the backend's own), and
/// the `[dns]` lease, propagation and bring-your-own bounds and resolvers.
fn with_dns_config(mut b: Backend, config: &Config) -> anyhow::Result<Backend> {
    if let Some(d) = powerdns(config)? {
        b.dns = d;
    }
    if let Some(r) = &config.registrars {
        b.registrars = http_registrars(r.clone());
    }
    let secs = std::time::Duration::from_secs;
    b.bounds.dns_lease = secs(config.dns.lease_secs);
    b.bounds.dns_propagation = secs(config.dns.propagation_secs);
    b.bounds.byo_delegation = secs(config.dns.byo_wait_secs);
    b.public_resolvers = config.dns.public_resolvers.clone();
    Ok(b)
}

/// With a real PowerDNS: the pool zones exist (created if missing, as the
/// pool's operator would have), and the API answers with this key, or the
/// daemon does not start rather than fail every job at `dns-reserve`.
async fn ensure_pool_zones(backend: &Backend, real: bool) -> anyhow::Result<()> {
    let ns: Vec<String> = NAMESERVERS.iter().map(|s| s.to_string()).collect();
    // The zones at once: each check is a round trip to the DNS server, on
    // the way to readiness.
    let ensure = |zone: &'static str| {
        let ns = &ns;
        async move {
            let exists = backend.dns.zone_exists(zone).await.map_err(|e| {
                anyhow::anyhow!(
                    "the DNS server cannot be used (checking the pool zone {zone}): {e}"
                )
            })?;
            if !exists {
                backend
                    .dns
                    .create_zone(zone, ns, "")
                    .await
                    .with_context(|| format!("cannot create the pool zone {zone}"))?;
                if real {
                    tracing::warn!(zone, "Created the missing pool zone in PowerDNS.");
                }
            }
            Ok::<_, anyhow::Error>(())
        }
    };
    futures::future::try_join_all(SIM_POOL_ZONES.iter().map(|z| ensure(z))).await?;
    Ok(())
}

mod hetzner;
pub use hetzner::hetzner_backend;
