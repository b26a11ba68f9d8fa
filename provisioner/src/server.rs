//! Assembles the daemon: store, backend, engine, supervisor, recovery and
//! the HTTP server.
//!
//! [`start`] installs nothing global (no subscriber, no signal handler), so
//! tests and the all-in-one `run` command can start a daemon in-process on
//! port 0 and shut it down again. Order matters: the listener is bound
//! before recovery so a port clash fails fast, and `/readyz` turns ready
//! only after recovery has started every in-flight job.

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;

use anyhow::Context;
use cz_phases::phases::dns::NAMESERVERS;
use cz_phases::phases::registry;
use cz_phases::sim::sim_backend;
use cz_phases::{Backend, Engine};
use cz_state::{Store, StorePaths};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::api::{self, ApiState};
use crate::config::{BackendKind, Config, OPERATOR_TOKEN_FILE};
use crate::supervisor::Supervisor;

/// The pool parent zones a sim world must serve (delegations go there).
pub const SIM_POOL_ZONES: &[&str] = &["omani.works.", "openova.io."];

/// Creates the pool parent zones in a sim world (idempotent): a pool
/// Sovereign's delegation is written into its parent zone, which on real
/// infrastructure exists before any Sovereign does.
pub async fn ensure_sim_pool_zones(backend: &Backend) -> anyhow::Result<()> {
    ensure_pool_zones(backend, false).await
}

/// The registrars' real adapters, at `endpoints`.
fn http_registrars(
    endpoints: cz_phases::registrar::Endpoints,
) -> Arc<dyn cz_phases::registrar::Registrars> {
    Arc::new(cz_phases::registrar::HttpRegistrars::new(
        endpoints,
        std::time::Duration::from_secs(30),
    ))
}

/// The real PowerDNS adapter when `[powerdns]` is configured.
fn powerdns(config: &Config) -> anyhow::Result<Option<Arc<dyn cz_phases::adapters::DnsApi>>> {
    let Some(p) = &config.powerdns else { return Ok(None) };
    let key = cz_state::SecretString::new(p.api_key.clone().unwrap_or_default());
    let timeout = std::time::Duration::from_secs(p.timeout_secs);
    let d = cz_phases::pdns::PowerDns::new(&p.api_url, &p.server_id, key, p.dns_address, timeout)
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

/// Keeps DNS reservations (F-43): every third of the lease, renews the
/// lease of each live job's reservation (pending, running or paused: a
/// paused job is waiting for its operator, not gone), then removes the
/// reservations whose lease ran out more than a lease ago and whose job is
/// not live here. The first round runs at once, so a daemon that was down
/// longer than a lease renews its own before anything is swept.
async fn lease_keeper(
    store: Store,
    dns: Arc<dyn cz_phases::adapters::DnsApi>,
    lease: std::time::Duration,
    stop: CancellationToken,
) {
    use cz_phases::phases::dns::keep_leases;
    loop {
        match store.list_jobs(None).await {
            Ok(jobs) => {
                match keep_leases(dns.as_ref(), &jobs, SIM_POOL_ZONES, lease, lease).await {
                    Ok((renewed, swept)) => {
                        if !renewed.is_empty() {
                            tracing::debug!(zones = ?renewed, "Renewed DNS leases.");
                        }
                        if !swept.is_empty() {
                            tracing::warn!(zones = ?swept, "Removed DNS reservations whose lease ran out.");
                        }
                    }
                    Err(e) => tracing::warn!(error = %e, "Cannot keep the DNS leases."),
                }
            }
            Err(e) => tracing::warn!(error = %e, "Cannot list jobs for the DNS leases."),
        }
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tokio::time::sleep(lease / 3) => {}
        }
    }
}

/// A running daemon.
pub struct ServerHandle {
    pub addr: SocketAddr,
    operator_token: String,
    shutdown: CancellationToken,
    task: JoinHandle<anyhow::Result<()>>,
    supervisor: Arc<Supervisor>,
    store: Store,
}

impl ServerHandle {
    /// The operator token in force (configured or generated).
    pub fn operator_token(&self) -> &str {
        &self.operator_token
    }

    /// The daemon's store (tests and `run` inspect it).
    pub fn store(&self) -> &Store {
        &self.store
    }

    /// Stops accepting requests, drains open ones, stops every job driver
    /// (jobs stay in flight and resume on the next start).
    pub async fn shutdown(self) -> anyhow::Result<()> {
        self.shutdown.cancel();
        self.wait().await
    }

    /// Waits until the server stops (after [`Self::shutdown`] or an error).
    pub async fn wait(self) -> anyhow::Result<()> {
        let served = self.task.await.context("the server task panicked")?;
        self.supervisor.shutdown().await;
        tracing::info!("Daemon stopped.");
        served
    }

    /// A token that stops the server when cancelled (signal handlers).
    pub fn shutdown_token(&self) -> CancellationToken {
        self.shutdown.clone()
    }
}

/// Uses the configured operator token, or generates one and writes it to
/// `<data_dir>/operator.token` (mode 0600). Logs the path, never the token.
fn operator_token(config: &Config) -> anyhow::Result<String> {
    if let Some(t) = &config.tokens.operator {
        return Ok(t.clone());
    }
    let path = config.data_dir.join(OPERATOR_TOKEN_FILE);
    // A token generated by an earlier start stays valid across restarts.
    if let Ok(existing) = std::fs::read_to_string(&path) {
        let existing = existing.trim();
        if existing.len() >= 16 {
            tracing::info!(path = %path.display(), "Using the operator token generated earlier.");
            return Ok(existing.to_owned());
        }
    }
    let bytes: [u8; 32] = rand::random();
    let token = hex::encode(bytes);
    write_private(&path, &token).with_context(|| format!("cannot write {}", path.display()))?;
    tracing::info!(path = %path.display(), "Generated an operator token (no CATALYST_ZERO_OPERATOR_TOKEN set).");
    Ok(token)
}

fn write_private(path: &Path, content: &str) -> std::io::Result<()> {
    use std::io::Write;
    let mut opts = std::fs::OpenOptions::new();
    opts.write(true).create(true).truncate(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        opts.mode(0o600);
    }
    let mut f = opts.open(path)?;
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        f.set_permissions(std::fs::Permissions::from_mode(0o600))?;
    }
    f.write_all(content.as_bytes())?;
    f.write_all(b"\n")?;
    f.sync_all()
}

/// The `hetzner` backend: the real Hetzner API client and tofu runner.
///
/// Not real yet, and said so at every call: OpenBao ([`Unbuilt`]: a job
/// pauses at the first step needing it). DNS is the sim's until `start`
/// applies a `[powerdns]` section ([`with_dns_config`]).
pub fn hetzner_backend(config: &Config) -> anyhow::Result<Backend> {
    use cz_phases::adapters::InfraModule;
    use cz_phases::exec::tofu::TofuCli;
    use cz_phases::hcloud::{BudgetRegistry, HcloudClient, ProjectQuota};
    use cz_phases::sim::{SimDns, SimWorld};
    use cz_phases::unbuilt::Unbuilt;

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
        crate::config::ModuleKind::Hcloud => {
            InfraModule::Hcloud { templates, provisioner_cidrs: h.provisioner_cidrs.clone() }
        }
        crate::config::ModuleKind::Offline => InfraModule::Offline {
            templates,
            // The module's provisioners run this very binary's `hcloud-shim`.
            shim: std::env::current_exe().context("cannot find the daemon's own binary")?,
            endpoint: h.api_url.clone(),
        },
    };
    let world = Arc::new(SimWorld::new(config.data_dir.join("sim"), config.sim.clone()));
    Ok(Backend {
        name: "hetzner".into(),
        cloud: Arc::new(cloud),
        tofu: Arc::new(tofu),
        ssh: Arc::new(cz_phases::exec::SshClient::default()),
        kube: Arc::new(cz_phases::k8s::KubeClient),
        bao: Arc::new(Unbuilt::BAO),
        // Without a [powerdns] section the sim's DNS stands in; `start`
        // applies the DNS configuration to both backends.
        dns: Arc::new(SimDns::new(world)),
        // The production registrar APIs unless [registrars] says otherwise.
        registrars: http_registrars(Default::default()),
        workspace_root: config.data_dir.join("workspaces"),
        infra,
        k3s: match (&h.artifacts_dir, &h.k3s_download) {
            (Some(dir), _) => cz_phases::adapters::K3sSource::AirGap { dir: dir.clone() },
            (None, Some(d)) => cz_phases::adapters::K3sSource::Download {
                script_url: d.script_url.clone(),
                script_sha256: d.script_sha256.to_ascii_lowercase(),
                release_url: d.release_url.clone(),
            },
            // Only the offline module allows neither: its hosts never run K3s.
            (None, None) => cz_phases::adapters::K3sSource::Simulated,
        },
        ssh_port: 22,
        bounds: cz_phases::adapters::Bounds {
            host_boot: std::time::Duration::from_secs(h.host_boot_secs),
            ..Default::default()
        },
        poll: std::time::Duration::from_secs(2),
        public_resolvers: cz_phases::phases::dns::default_public_resolvers(),
    })
}

/// Starts the daemon described by `config`.
pub async fn start(mut config: Config) -> anyhow::Result<ServerHandle> {
    config.validate()?;
    std::fs::create_dir_all(&config.data_dir).with_context(|| {
        format!("cannot create the data directory {}", config.data_dir.display())
    })?;
    let token = operator_token(&config)?;
    config.tokens.operator = Some(token.clone());

    let store = Store::open(StorePaths::in_dir(&config.data_dir))
        .await
        .with_context(|| format!("cannot open the store in {}", config.data_dir.display()))?;
    let backend = match config.backend {
        BackendKind::Sim => sim_backend(
            config.data_dir.join("sim"),
            config.data_dir.join("workspaces"),
            config.sim.clone(),
        ),
        BackendKind::Hetzner => {
            let b = hetzner_backend(&config)?;
            // F-01/F-02: refuse to start without a usable tofu and module
            // rather than fail every job at its first infra step.
            let tofu = b.tofu.version().await.map_err(|e| {
                anyhow::anyhow!("the hetzner backend cannot use its tofu binary: {e}")
            })?;
            if let cz_phases::adapters::InfraModule::Hcloud { templates, .. }
            | cz_phases::adapters::InfraModule::Offline { templates, .. } = &b.infra
            {
                let digest = cz_phases::phases::render::templates_digest(templates)
                    .map_err(|e| anyhow::anyhow!("the cloud templates cannot be read: {e}"))?;
                tracing::info!(%tofu, templates = %templates.display(), sha256 = %digest, "Hetzner backend ready.");
            }
            b
        }
    };
    let backend = with_dns_config(backend, &config)?;
    ensure_pool_zones(&backend, config.powerdns.is_some()).await?;
    let lease = backend.bounds.dns_lease;
    let dns = backend.dns.clone();
    let engine = Engine::new(store.clone(), Arc::new(registry()), Arc::new(backend));
    let supervisor = Arc::new(Supervisor::new(engine));

    let listener = tokio::net::TcpListener::bind(config.listen)
        .await
        .with_context(|| format!("cannot listen on {}", config.listen))?;
    let addr = listener.local_addr().context("listener has no address")?;

    let config = Arc::new(config);
    let state = ApiState::new(store.clone(), supervisor.clone(), config.clone());
    let app = api::router(state.clone());
    let shutdown = CancellationToken::new();
    let stop = shutdown.clone();
    let task = tokio::spawn(async move {
        axum::serve(listener, app)
            .with_graceful_shutdown(async move { stop.cancelled().await })
            .await
            .context("the HTTP server failed")
    });
    tracing::info!(
        %addr,
        data_dir = %config.data_dir.display(),
        backend = config.backend.as_str(),
        sim_latency = config.sim.latency_factor,
        "Catalyst-Zero listening."
    );

    let resumed = supervisor.recover().await.context("startup recovery failed")?;
    tokio::spawn(lease_keeper(store.clone(), dns, lease, shutdown.clone()));
    state.set_ready();
    tracing::info!(resumed, "Recovery done; ready.");

    Ok(ServerHandle { addr, operator_token: token, shutdown, task, supervisor, store })
}

#[cfg(test)]
mod tests {
    use std::time::{Duration, Instant};

    use serde_json::{Value, json};

    use super::*;

    fn request() -> Value {
        json!({
            "api_version": "catalyst.openova.io/v1",
            "org": { "name": "Acme", "email": "ops@acme.example.com" },
            "domain": { "mode": "pool", "pool_domain": "omani.works", "subdomain": "restart" },
            "regions": [{ "provider": "hetzner", "location": "fsn1",
                "control_plane": { "sku": "cpx32", "count": 1 }, "workers": { "sku": "cpx42", "count": 1 } }],
            "ssh_public_keys": ["ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIJLgSfWI3AEt8R6XSfXLkH+3w9vy7JdRatHbOVvvga38 ops@example"],
            "cloud_token": "rw".repeat(32),
            "custody": { "age_recipients": [age::x25519::Identity::generate().to_public().to_string()],
                "openbao_shares": 1, "openbao_threshold": 1 },
            "keycloak": { "topology": "shared-sovereign" }
        })
    }

    fn config(dir: &Path, latency: f64) -> Config {
        let mut c = Config {
            data_dir: dir.to_owned(),
            listen: SocketAddr::from(([127, 0, 0, 1], 0)),
            ..Config::default()
        };
        c.sim.latency_factor = latency;
        c
    }

    /// A generated token is written 0600 and reused; a daemon stopped
    /// mid-job resumes the job on the next start.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn restart_resumes_in_flight_jobs_with_the_same_token() {
        let dir = tempfile::tempdir().unwrap();
        let h = start(config(dir.path(), 1.0)).await.unwrap();
        let token = h.operator_token().to_owned();
        let file = dir.path().join(OPERATOR_TOKEN_FILE);
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            assert_eq!(std::fs::metadata(&file).unwrap().permissions().mode() & 0o777, 0o600);
        }
        let http = reqwest::Client::new();
        let base = format!("http://{}", h.addr);
        let ready = http.get(format!("{base}/readyz")).send().await.unwrap();
        assert_eq!(ready.status(), 200);
        let r: Value = http
            .post(format!("{base}/v1/sovereigns"))
            .bearer_auth(&token)
            .json(&request())
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        let job = r["job_id"].as_str().unwrap().to_owned();
        tokio::time::sleep(Duration::from_millis(300)).await;
        h.shutdown().await.unwrap();
        let j = {
            let store = Store::open(StorePaths::in_dir(dir.path())).await.unwrap();
            store.get_job(job.parse().unwrap()).await.unwrap().unwrap()
        };
        assert!(j.status.in_flight(), "stopped mid-run: {}", j.status);

        let h = start(config(dir.path(), 0.0)).await.unwrap();
        assert_eq!(h.operator_token(), token);
        let base = format!("http://{}", h.addr);
        let started = Instant::now();
        loop {
            let d: Value = http
                .get(format!("{base}/v1/jobs/{job}"))
                .bearer_auth(&token)
                .send()
                .await
                .unwrap()
                .json()
                .await
                .unwrap();
            if d["status"] == "succeeded" {
                break;
            }
            assert!(started.elapsed() < Duration::from_secs(60), "not resumed: {d:#}");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        h.shutdown().await.unwrap();
    }
}
