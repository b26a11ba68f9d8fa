//! Backend wiring: which adapters a daemon's jobs run against, from its
//! config. The `sim` backend is `cz-sim`'s; the `hetzner` backend is the
//! real clients of `cz-adapters` (Hetzner API, tofu, ssh2, kube-rs,
//! OpenBao over HTTP, PowerDNS, which it refuses to start without). Both
//! then take the DNS configuration: the real PowerDNS and registrar APIs
//! where `[powerdns]` and `[registrars]` say so, and the `[dns]` bounds.

use std::sync::Arc;

use anyhow::Context;
use cz_adapters::cloud::{BudgetRegistry, HcloudClient, ProjectQuota};
use cz_adapters::dns::{DnsApi, PowerDns, default_public_resolvers};
use cz_adapters::kube::KubeClient;
use cz_adapters::openbao::OpenBaoClient;
use cz_adapters::registrar::{Endpoints, HttpRegistrars, Registrars};
use cz_adapters::ssh::SshClient;
use cz_adapters::tofu::TofuCli;
use cz_adapters::{Backend, Bounds, InfraModule, K3sSource};
use cz_phases::dns::NAMESERVERS;
use cz_sim::sim_backend;

use crate::config::{BackendKind, Config, ModuleKind};

/// The backend `config` asks for, DNS configuration applied, checked: a
/// `hetzner` backend without a usable tofu and module refuses to start
/// rather than fail every job at its first infra step, and the pool zones
/// exist (made if missing) on the DNS server the jobs will use.
pub async fn backend(config: &Config) -> anyhow::Result<Backend> {
    let backend = match config.backend {
        BackendKind::Sim => sim_backend(
            config.data_dir.join("sim"),
            config.data_dir.join("workspaces"),
            config.sim.clone(),
        ),
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
fn powerdns(config: &Config) -> anyhow::Result<Option<Arc<dyn DnsApi>>> {
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
    for zone in SIM_POOL_ZONES {
        let exists = backend.dns.zone_exists(zone).await.map_err(|e| {
            anyhow::anyhow!("the DNS server cannot be used (checking the pool zone {zone}): {e}")
        })?;
        if !exists {
            backend
                .dns
                .create_zone(zone, &ns, "")
                .await
                .with_context(|| format!("cannot create the pool zone {zone}"))?;
            if real {
                tracing::warn!(zone, "Created the missing pool zone in PowerDNS.");
            }
        }
    }
    Ok(())
}

/// The `hetzner` backend: the real Hetzner API client and tofu runner.
///
/// OpenBao is reached through each cluster's API server (its pods' proxy).
/// DNS is the real PowerDNS of `[powerdns]`, which it cannot start
/// without: no simulated adapter stands in on a real backend, where a
/// propagation gate "passing" against sim data would be a lie.
pub fn hetzner_backend(config: &Config) -> anyhow::Result<Backend> {
    let dns = powerdns(config)?.ok_or_else(|| {
        anyhow::anyhow!(
            "the hetzner backend needs a [powerdns] section (api_url, server_id, dns_address; \
             the key in CATALYST_ZERO_POWERDNS_API_KEY): the Sovereign's zone and its \
             delegation are served by a real PowerDNS, never simulated (examples/hetzner.toml)"
        )
    })?;
    let h = &config.hetzner;
    let q = h.quota;
    let cloud = HcloudClient::new(&h.api_url, BudgetRegistry::global())
        .map_err(|e| anyhow::anyhow!("{e}"))?
        .with_quota(ProjectQuota {
            servers: q.servers,
            load_balancers: q.load_balancers,
            networks: q.networks,
            placement_groups: q.placement_groups,
        });
    let tofu = TofuCli::new(
        &h.tofu_binary,
        config.data_dir.join("tofu-plugin-cache"),
        std::time::Duration::from_secs(h.tofu_timeout_secs),
    );
    let templates = std::path::absolute(h.templates_dir.join(h.module_dir()))
        .context("cannot resolve hetzner.templates_dir")?;
    let infra = match h.module {
        ModuleKind::Hcloud => {
            InfraModule::Hcloud { templates, provisioner_cidrs: h.provisioner_cidrs.clone() }
        }
        ModuleKind::Offline => InfraModule::Offline {
            templates,
            // The module's provisioners run this very binary's `hcloud-shim`.
            shim: std::env::current_exe().context("cannot find the daemon's own binary")?,
            endpoint: h.api_url.clone(),
        },
    };
    Ok(Backend {
        name: "hetzner".into(),
        cloud: Arc::new(cloud),
        tofu: Arc::new(tofu),
        ssh: Arc::new(SshClient::default()),
        kube: Arc::new(KubeClient),
        bao: Arc::new(OpenBaoClient::default()),
        dns,
        // The production registrar APIs unless [registrars] says otherwise.
        registrars: http_registrars(Default::default()),
        workspace_root: config.data_dir.join("workspaces"),
        infra,
        k3s: match (&h.artifacts_dir, &h.k3s_download) {
            (Some(dir), _) => K3sSource::AirGap { dir: dir.clone() },
            (None, Some(d)) => K3sSource::Download {
                script_url: d.script_url.clone(),
                script_sha256: d.script_sha256.to_ascii_lowercase(),
                release_url: d.release_url.clone(),
            },
            // Only the offline module allows neither: its hosts never run K3s.
            (None, None) => K3sSource::Simulated,
        },
        ssh_port: 22,
        bounds: Bounds {
            host_boot: std::time::Duration::from_secs(h.host_boot_secs),
            ..Default::default()
        },
        poll: std::time::Duration::from_secs(2),
        public_resolvers: default_public_resolvers(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hetzner(extra: &str) -> Config {
        let text = format!(
            "backend = \"hetzner\"\n[hetzner]\napi_url = \"http://127.0.0.1:9\"\n\
             module = \"offline\"\ntemplates_dir = \"{}/../cloud-templates\"\n{extra}",
            env!("CARGO_MANIFEST_DIR")
        );
        Config::from_toml(&text).expect("the config parses")
    }

    /// A `hetzner` backend without PowerDNS does not start, and says what
    /// is missing; no simulated DNS stands in.
    #[test]
    fn a_hetzner_backend_without_powerdns_is_refused_naming_it() {
        let e = hetzner_backend(&hetzner("")).err().expect("refused");
        let msg = e.to_string();
        assert!(msg.contains("[powerdns]") && msg.contains("never simulated"), "{msg}");
    }

    #[test]
    fn a_hetzner_backend_with_powerdns_uses_it() {
        let pdns = "[powerdns]\napi_url = \"http://127.0.0.1:9\"\ndns_address = \"127.0.0.1:53\"\n";
        let b = hetzner_backend(&hetzner(pdns)).expect("built");
        assert_eq!(b.name, "hetzner");
    }
}
