//! `check --config FILE`: probes every real system a config names, before
//! any job is submitted, and prints one line per system with its verdict:
//!
//! - `tofu`: the binary answers with its version;
//! - `k3s`: the air-gap artifacts match their `SHA256SUMS`, or the
//!   download pin is well formed (nothing is fetched here);
//! - `powerdns`: the API answers with this key, and which pool zones it
//!   serves (a missing one is made at start);
//! - `cloud`: with a token (`--cloud-token-file`, or the variable
//!   `CATALYST_ZERO_CHECK_CLOUD_TOKEN`), that it may write and what the
//!   project's quota leaves; without one, skipped: each job brings its own
//!   token and its pre-flight checks it;
//! - `registrars`: where their APIs are; their credentials come with each
//!   `byo-api` request and are checked by its pre-flight, so skipped here.
//!
//! The exit code is 1 when any system fails, else 0.

use std::fmt;
use std::path::Path;

use cz_adapters::cloud::{BudgetRegistry, CloudApi, HcloudClient, TokenScope};

use cz_adapters::tofu::{TofuApi, TofuCli};
use cz_state::SecretString;

use crate::config::{BackendKind, Config};

/// A system's verdict.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Verdict {
    Ok,
    Fail,
    Skipped,
}

/// One line of the report.
#[derive(Clone, Debug)]
pub struct Probe {
    pub system: &'static str,
    pub verdict: Verdict,
    pub detail: String,
}

impl fmt::Display for Probe {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let v = match self.verdict {
            Verdict::Ok => "ok",
            Verdict::Fail => "FAIL",
            Verdict::Skipped => "skipped",
        };
        write!(f, "{:<11} {v:<8} {}", self.system, self.detail)
    }
}

fn probe(system: &'static str, verdict: Verdict, detail: impl Into<String>) -> Probe {
    Probe { system, verdict, detail: detail.into() }
}

/// Probes what `config` names; `cloud_token` is the token to try, if any.
pub async fn check(config: &Config, cloud_token: Option<SecretString>) -> Vec<Probe> {
    let mut out = Vec::new();
    if config.backend == BackendKind::Hetzner {
        out.push(tofu(config).await);
        out.push(k3s(config));
    } else {
        out.push(probe("backend", Verdict::Ok, "sim: no cloud, no nodes, nothing to probe"));
    }
    out.push(powerdns(config).await);
    if config.backend == BackendKind::Hetzner {
        out.push(cloud(config, cloud_token).await);
    }
    out.push(registrars(config));
    out
}

async fn tofu(config: &Config) -> Probe {
    let h = &config.hetzner;
    let dir = tempfile::tempdir();
    let Ok(dir) = dir else { return probe("tofu", Verdict::Fail, "no temporary directory") };
    let cli = TofuCli::new(
        &h.tofu_binary,
        dir.path().join("plugin-cache"),
        std::time::Duration::from_secs(30),
    );
    match cli.version().await {
        Ok(v) => probe("tofu", Verdict::Ok, format!("{v} ({})", h.tofu_binary.display())),
        Err(e) => probe("tofu", Verdict::Fail, format!("{}: {e}", h.tofu_binary.display())),
    }
}

fn k3s(config: &Config) -> Probe {
    let h = &config.hetzner;
    match (&h.artifacts_dir, &h.k3s_download) {
        (Some(dir), _) => match cz_phases::cluster::verified_artifacts(dir) {
            Ok(files) => {
                let list: Vec<String> = files
                    .iter()
                    .map(|(name, _, sha)| format!("{name} sha256 {}…", &sha[..12]))
                    .collect();
                let unpinned = cz_phases::cluster::unpinned_artifacts();
                let pins = if unpinned.is_empty() {
                    "and the release manifest's pins".to_owned()
                } else {
                    format!("(the release manifest pins no sha256 for {})", unpinned.join(", "))
                };
                let detail =
                    format!("{}: {} match SHA256SUMS {pins}", dir.display(), list.join(", "));
                probe("k3s", Verdict::Ok, detail)
            }
            Err(e) => probe("k3s", Verdict::Fail, format!("{}: {e}", dir.display())),
        },
        (None, Some(d)) => probe(
            "k3s",
            Verdict::Ok,
            format!(
                "download: installer {} pinned to sha256 {}…, the binary checked on each node \
                 against its release's checksums (not fetched here)",
                d.script_url,
                &d.script_sha256[..12.min(d.script_sha256.len())]
            ),
        ),
        (None, None) => probe(
            "k3s",
            Verdict::Fail,
            "neither hetzner.artifacts_dir nor [hetzner.k3s_download]: K3s is never simulated",
        ),
    }
}

async fn powerdns(config: &Config) -> Probe {
    let api_url = config.powerdns.as_ref().map_or("", |p| p.api_url.as_str());
    let dns = match crate::wiring::powerdns(config) {
        Ok(Some(d)) => d,
        Ok(None) => {
            return match config.backend {
                BackendKind::Hetzner => probe(
                    "powerdns",
                    Verdict::Fail,
                    "no [powerdns] section: the hetzner backend needs it",
                ),
                BackendKind::Sim => probe("powerdns", Verdict::Skipped, "not configured: sim DNS"),
            };
        }
        Err(e) => return probe("powerdns", Verdict::Fail, format!("{api_url}: {e}")),
    };
    let mut zones = Vec::new();
    for zone in crate::wiring::SIM_POOL_ZONES {
        match dns.zone_exists(zone).await {
            Ok(true) => zones.push(format!("{zone} served")),
            Ok(false) => zones.push(format!("{zone} missing (made at start)")),
            Err(e) => return probe("powerdns", Verdict::Fail, format!("{api_url}: {e}")),
        }
    }
    probe("powerdns", Verdict::Ok, format!("{api_url} answers; pool zones: {}", zones.join(", ")))
}

async fn cloud(config: &Config, token: Option<SecretString>) -> Probe {
    let Some(token) = token else {
        return probe(
            "cloud",
            Verdict::Skipped,
            "no token given (--cloud-token-file or CATALYST_ZERO_CHECK_CLOUD_TOKEN); each job's \
             pre-flight checks its own",
        );
    };
    let api_url = &config.hetzner.api_url;
    let client = match HcloudClient::new(api_url, BudgetRegistry::global()) {
        Ok(c) => c,
        Err(e) => return probe("cloud", Verdict::Fail, format!("{api_url}: {e}")),
    };
    let scope = match client.token_scope(&token).await {
        Ok(s) => s,
        Err(e) => return probe("cloud", Verdict::Fail, format!("{api_url}: {e}")),
    };
    if scope != TokenScope::ReadWrite {
        return probe("cloud", Verdict::Fail, format!("{api_url}: the token is read-only"));
    }
    match client.limits(&token).await {
        Ok(l) => probe(
            "cloud",
            Verdict::Ok,
            format!(
                "{api_url}: the token may write; in use: servers {}/{}, load balancers {}/{}, \
                 networks {}/{}, placement groups {}/{}",
                l.servers.used,
                l.servers.max,
                l.load_balancers.used,
                l.load_balancers.max,
                l.networks.used,
                l.networks.max,
                l.placement_groups.used,
                l.placement_groups.max,
            ),
        ),
        Err(e) => probe("cloud", Verdict::Fail, format!("{api_url}: quota: {e}")),
    }
}

fn registrars(config: &Config) -> Probe {
    let at =
        if config.registrars.is_some() { "the configured URLs" } else { "their production APIs" };
    probe(
        "registrars",
        Verdict::Skipped,
        format!(
            "at {at}; credentials come with each byo-api request and its pre-flight checks them"
        ),
    )
}

/// `check --config FILE [--cloud-token-file F]`: the report, and its exit
/// code.
pub async fn run(
    file: &Path,
    token_file: Option<&Path>,
    env: &dyn Fn(&str) -> Option<String>,
) -> anyhow::Result<u8> {
    let mut config = Config::from_file(file)?;
    config.apply_env(env)?;
    if let Err(e) = config.validate() {
        println!("{}", probe("config", Verdict::Fail, e.to_string()));
        return Ok(1);
    }
    println!(
        "{}",
        probe("config", Verdict::Ok, format!("{} ({})", file.display(), config.backend.as_str()))
    );
    let token = match token_file {
        Some(f) => Some(SecretString::new(
            std::fs::read_to_string(f)
                .map_err(|e| anyhow::anyhow!("cannot read {}: {e}", f.display()))?
                .trim(),
        )),
        None => env("CATALYST_ZERO_CHECK_CLOUD_TOKEN").map(SecretString::new),
    };
    let report = check(&config, token).await;
    for p in &report {
        println!("{p}");
    }
    Ok(u8::from(report.iter().any(|p| p.verdict == Verdict::Fail)))
}
