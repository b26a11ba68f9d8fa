//! The `catalyst-zero` command line: the daemon (`serve`), the all-in-one
//! `run`, and client subcommands against a running daemon.
//!
//! Every flag is also an environment variable, so the same binary is
//! configured the same way in a shell, a systemd unit or a container. The
//! client token comes from `--token`/`CATALYST_ZERO_TOKEN`, then
//! `CATALYST_ZERO_OPERATOR_TOKEN`, then the `operator.token` file a daemon
//! without a configured token writes into its data directory: on one
//! machine, `serve` in one terminal and `submit` in another just work.
//!
//! Exit codes: 0 success; 1 an error or a job that failed, was cancelled or
//! abandoned; 2 a job that paused and needs an operator.

pub mod check;
pub mod client;
pub mod custody;
pub mod follow;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::Context;
use clap::{Args, Parser, Subcommand};
use serde_json::{Value, json};

use crate::config::{self, BackendKind, Config};
use crate::telemetry::{self, LogFormat};
use client::Client;
use follow::Outcome;

#[derive(Debug, Parser)]
#[command(
    name = "catalyst-zero",
    version,
    about = "Provisions Sovereigns: daemon, API client and all-in-one runner."
)]
pub struct Cli {
    /// Log line format (logs go to stderr; filter with RUST_LOG).
    #[arg(long, env = "CATALYST_ZERO_LOG_FORMAT", value_enum, default_value_t = LogFormat::Text, global = true)]
    pub log_format: LogFormat,
    #[command(subcommand)]
    pub command: Command,
}

/// Where the daemon is and how to authenticate.
#[derive(Debug, Clone, Args)]
pub struct Remote {
    /// The daemon's base URL.
    #[arg(long, env = "CATALYST_ZERO_SERVER", default_value = "http://127.0.0.1:7480")]
    pub server: String,
    /// Bearer token (falls back to CATALYST_ZERO_OPERATOR_TOKEN, then
    /// <CATALYST_ZERO_DATA_DIR or .cz-data>/operator.token).
    #[arg(long, env = "CATALYST_ZERO_TOKEN", hide_env_values = true)]
    pub token: Option<String>,
    /// A CA certificate (PEM) to trust for an `https` --server, besides
    /// the system's roots (a daemon with a private CA's certificate).
    #[arg(long, env = "CATALYST_ZERO_CA_CERT")]
    pub ca_cert: Option<PathBuf>,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the daemon.
    Serve(ServeArgs),
    /// Start a daemon in-process (sim backend), submit FILE, follow it to
    /// the end, stop. Exits 0 only if the job succeeded.
    Run {
        /// Provision request (TOML or JSON).
        file: PathBuf,
        /// Data directory; by default a new `.cz-data/runs/<time>` per run,
        /// so the command can be repeated (a Sovereign's name is unique).
        #[arg(long, env = "CATALYST_ZERO_DATA_DIR")]
        data_dir: Option<PathBuf>,
        /// Sim latency factor: 0 = no waits, 1 = realistic (many minutes).
        #[arg(long, env = "CATALYST_ZERO_SIM_LATENCY", default_value_t = 0.1)]
        sim_latency: f64,
    },
    /// Submit a provision request (TOML or JSON by extension).
    Submit {
        file: PathBuf,
        /// Follow the job after submitting.
        #[arg(long)]
        follow: bool,
        /// Makes the submission safe to repeat.
        #[arg(long, env = "CATALYST_ZERO_IDEMPOTENCY_KEY")]
        idempotency_key: Option<String>,
        /// Fault plan (JSON) for drills, e.g.
        /// '{"fail": {"preflight/quotas": "needs-operator"}}'. Operator token only.
        #[arg(long)]
        fault_plan: Option<String>,
        #[command(flatten)]
        remote: Remote,
    },
    /// List Sovereigns and jobs.
    List {
        #[command(flatten)]
        remote: Remote,
    },
    /// Show a job: phases, steps, attempts, timings, errors, audit.
    Show {
        job: String,
        /// Print the raw JSON.
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        remote: Remote,
    },
    /// Follow a job's progress live (exit 1 if it fails, 2 if it pauses).
    Follow {
        job: String,
        #[command(flatten)]
        remote: Remote,
    },
    /// Retry the failed steps of a job, one step, or a whole phase.
    Retry {
        job: String,
        #[arg(long, conflicts_with = "step")]
        phase: Option<String>,
        #[arg(long)]
        step: Option<String>,
        #[command(flatten)]
        remote: Remote,
    },
    /// Skip a step, with a justification (recorded in the audit trail).
    Skip {
        job: String,
        #[arg(long)]
        step: String,
        #[arg(long)]
        reason: String,
        #[command(flatten)]
        remote: Remote,
    },
    /// Resume a paused job.
    Resume {
        job: String,
        #[command(flatten)]
        remote: Remote,
    },
    /// Abandon a job where it stands (nothing is undone).
    Abandon {
        job: String,
        #[command(flatten)]
        remote: Remote,
    },
    /// Cancel a job with rollback (undo of everything that ran).
    Cancel {
        job: String,
        #[command(flatten)]
        remote: Remote,
    },
    /// Destroy a Sovereign (every cloud object, DNS zone and delegation).
    Destroy {
        sovereign: String,
        #[arg(long)]
        follow: bool,
        #[command(flatten)]
        remote: Remote,
    },
    /// Add regions to a Sovereign (TOML or JSON add-region request).
    AddRegion {
        sovereign: String,
        file: PathBuf,
        #[arg(long)]
        follow: bool,
        #[command(flatten)]
        remote: Remote,
    },
    /// Write a Sovereign's escrow to DIR: escrow.json and one `.age` file
    /// per blob, each opening only with its custodian's identity
    /// (operator token; the read is audited).
    Escrow {
        sovereign: String,
        #[arg(long)]
        out: PathBuf,
        #[command(flatten)]
        remote: Remote,
    },
    /// Probe every real system a config names (tofu, K3s artifacts,
    /// PowerDNS and its pool zones, the cloud token's write scope and
    /// quota) before any job: one line per system; exit 1 if any fails.
    Check {
        #[arg(long)]
        config: PathBuf,
        /// A file holding a cloud token to try (else
        /// CATALYST_ZERO_CHECK_CLOUD_TOKEN; without either, skipped).
        #[arg(long)]
        cloud_token_file: Option<PathBuf>,
    },
    /// A custodian's turn at unsealing OpenBao: decrypts your shares
    /// locally with --identity and gives them to every sealed pod, through
    /// the API server (the kubeconfig escrowed to you, or --kubeconfig), or
    /// to --endpoint URLs. Reports each pod's progress (k of n).
    /// `--region LOC`: the pods of a region an add-region job added (its
    /// own kubeconfig is escrowed to you as `admin-kubeconfig.LOC`).
    Unseal {
        sovereign: String,
        #[arg(long)]
        region: Option<String>,
        /// Your age identity file (`age-keygen` output). Never leaves
        /// this machine.
        #[arg(long)]
        identity: PathBuf,
        /// Read the escrow from a directory `escrow --out` wrote, instead
        /// of from the daemon.
        #[arg(long)]
        escrow: Option<PathBuf>,
        #[arg(long)]
        kubeconfig: Option<PathBuf>,
        /// An OpenBao replica's API URL (repeatable), e.g. a port-forward.
        #[arg(long = "endpoint")]
        endpoints: Vec<String>,
        /// A simulated Sovereign (the `sim` backend): its world's directory
        /// (`sim/` under the daemon's data_dir, or under shared_dir), whose
        /// simulated OpenBao pods get the shares as real pods would.
        #[arg(long)]
        sim_world: Option<PathBuf>,
        #[command(flatten)]
        remote: Remote,
    },
    /// Combine Shamir parts of a split key (each opened by its custodian
    /// with `age -d -i`) into the key: the sealed-secrets key or the
    /// static-seal key. Written to --out with mode 0600.
    Combine {
        #[arg(required = true)]
        parts: Vec<PathBuf>,
        #[arg(long)]
        out: PathBuf,
        /// The escrow's fingerprint of the key (SHA-256, hex) to check.
        #[arg(long)]
        fingerprint: Option<String>,
    },
    /// Internal: the provider half of the offline tofu module
    /// (`cloud-templates/hetzner-offline/`), run by its provisioners. Reads
    /// the object from CZ_SHIM_OBJECT and the token from
    /// TF_VAR_hcloud_token.
    #[command(hide = true)]
    HcloudShim {
        #[arg(value_enum)]
        action: ShimAction,
    },
    /// Development: serve the hcloud-compatible fake API the tests use, so
    /// the `hetzner` backend can be tried without a Hetzner account
    /// (objects live in memory; nothing is billed). Stops on Ctrl-C.
    HcloudFake {
        #[arg(long, default_value = "127.0.0.1:4000")]
        listen: SocketAddr,
        /// A token the fake accepts (repeatable); each is its own project.
        #[arg(long = "token", required = true)]
        tokens: Vec<String>,
        /// Every token is read-only (writes answer `forbidden`).
        #[arg(long)]
        read_only: bool,
        /// How long a create answers after, in milliseconds.
        #[arg(long, default_value_t = 500)]
        create_delay_ms: u64,
    },
    /// Development: serve the fake Kubernetes API server the tests use
    /// (over TLS with its own CA and an admin client certificate, objects
    /// in memory, no controllers), writing its kubeconfig to --kubeconfig,
    /// so kubectl can be pointed at it. Stops on Ctrl-C.
    KubeFake {
        /// Where to write the admin kubeconfig (mode 0600).
        #[arg(long)]
        kubeconfig: PathBuf,
        /// Plain HTTP without authentication instead of TLS.
        #[arg(long)]
        plain: bool,
    },
}

#[derive(Debug, Clone, Copy, clap::ValueEnum)]
pub enum ShimAction {
    Create,
    Delete,
}

/// `hcloud-fake`: serves until Ctrl-C.
async fn hcloud_fake(
    listen: SocketAddr,
    tokens: Vec<String>,
    read_only: bool,
    create_delay_ms: u64,
) -> anyhow::Result<u8> {
    use cz_sim::wire::hcloud::{self as fake, FakeConfig};
    let cfg = FakeConfig {
        tokens,
        read_only,
        create_delay: std::time::Duration::from_millis(create_delay_ms),
        ..FakeConfig::default()
    };
    let handle =
        fake::start_at(cfg, listen).await.with_context(|| format!("cannot listen on {listen}"))?;
    println!(
        "hcloud fake API at {} (in memory; set hetzner.api_url to this). Ctrl-C stops it.",
        handle.base_url()
    );
    tokio::signal::ctrl_c().await.context("waiting for Ctrl-C")?;
    Ok(0)
}

async fn kube_fake(kubeconfig: &Path, plain: bool) -> anyhow::Result<u8> {
    use std::io::Write as _;
    use std::os::unix::fs::OpenOptionsExt as _;
    let fake = if plain {
        cz_sim::wire::kube::FakeKube::start().await
    } else {
        cz_sim::wire::kube::FakeKube::start_tls().await
    };
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(kubeconfig)
        .with_context(|| format!("cannot write {}", kubeconfig.display()))?;
    f.write_all(fake.kubeconfig().as_bytes())?;
    println!(
        "fake Kubernetes API at {} (in memory); kubeconfig in {}. Ctrl-C stops it.",
        fake.url(),
        kubeconfig.display()
    );
    tokio::signal::ctrl_c().await.context("waiting for Ctrl-C")?;
    Ok(0)
}

/// `hcloud-shim`: one create-or-adopt or delete-if-present, one line out.
async fn hcloud_shim(
    action: ShimAction,
    env: &dyn Fn(&str) -> Option<String>,
) -> anyhow::Result<u8> {
    use cz_adapters::cloud::shim::{self, OBJECT_ENV, ShimObject};
    use cz_adapters::cloud::{BudgetRegistry, HcloudClient};
    use cz_adapters::tofu::cli::TOKEN_ENV;
    let spec = env(OBJECT_ENV).with_context(|| format!("{OBJECT_ENV} is not set"))?;
    let obj: ShimObject =
        serde_json::from_str(&spec).with_context(|| format!("{OBJECT_ENV} is not an object"))?;
    let token = env(TOKEN_ENV)
        .filter(|t| !t.trim().is_empty())
        .with_context(|| format!("{TOKEN_ENV} is not set"))?;
    let token = cz_state::SecretString::new(token);
    let client = HcloudClient::new(&obj.endpoint, std::sync::Arc::new(BudgetRegistry::default()))
        .map_err(|e| anyhow::anyhow!("{e}"))?;
    match action {
        ShimAction::Create => {
            let (o, adopted) =
                shim::create(&client, &token, &obj).await.map_err(|e| anyhow::anyhow!("{e}"))?;
            let verb = if adopted { "adopted" } else { "created" };
            println!("{verb} {} {} id={}", o.kind, o.name, o.id);
        }
        ShimAction::Delete => {
            let deleted =
                shim::delete(&client, &token, &obj).await.map_err(|e| anyhow::anyhow!("{e}"))?;
            let verb = if deleted { "deleted" } else { "already gone:" };
            println!("{verb} {} {}", obj.kind, obj.name);
        }
    }
    Ok(0)
}

#[derive(Debug, Args)]
pub struct ServeArgs {
    /// TOML config file (flags and CATALYST_ZERO_* variables override it).
    #[arg(long, env = "CATALYST_ZERO_CONFIG")]
    pub config: Option<PathBuf>,
    #[arg(long, env = "CATALYST_ZERO_DATA_DIR")]
    pub data_dir: Option<PathBuf>,
    /// The daemon's at-rest key file (default: outside the data directory,
    /// see docs/configuration.md).
    #[arg(long)]
    pub at_rest_key: Option<PathBuf>,
    #[arg(long, env = "CATALYST_ZERO_LISTEN")]
    pub listen: Option<SocketAddr>,
    /// Serve the API over TLS with this certificate chain (PEM); with
    /// --tls-key.
    #[arg(long, requires = "tls_key")]
    pub tls_cert: Option<PathBuf>,
    /// The TLS private key (PEM).
    #[arg(long, requires = "tls_cert")]
    pub tls_key: Option<PathBuf>,
    /// Allow plain HTTP on a non-loopback --listen (a TLS-terminating proxy
    /// in front). Refused otherwise.
    #[arg(long)]
    pub insecure_listen: bool,
    #[arg(long, env = "CATALYST_ZERO_BACKEND")]
    pub backend: Option<BackendKind>,
    /// Sim latency factor: 0 = no waits, 1 = realistic.
    #[arg(long, env = "CATALYST_ZERO_SIM_LATENCY")]
    pub sim_latency: Option<f64>,
    /// `postgres://…`: use the PostgreSQL store (replicas share it and hold
    /// each job run by a lease) instead of SQLite in the data directory.
    #[arg(long, env = "CATALYST_ZERO_DATABASE_URL", hide_env_values = true)]
    pub database_url: Option<String>,
    /// What replicas share besides the database (tofu workspaces; the sim
    /// world).
    #[arg(long, env = "CATALYST_ZERO_SHARED_DIR")]
    pub shared_dir: Option<PathBuf>,
    /// Accept fault plans (`X-Catalyst-Fault-Plan`) from operators: drills.
    #[arg(long)]
    pub fault_plans: bool,
    /// Accept them on the hetzner backend too (with --fault-plans).
    #[arg(long)]
    pub fault_plans_on_hetzner: bool,
}

/// The binary's entry point.
pub fn main() -> ExitCode {
    let cli = Cli::parse();
    let default_filter = match cli.command {
        Command::Run { .. } | Command::HcloudShim { .. } => "warn",
        _ => "info",
    };
    let _guard = match telemetry::init(cli.log_format, default_filter) {
        Ok(g) => g,
        Err(e) => {
            eprintln!("error: {e:#}");
            return ExitCode::FAILURE;
        }
    };
    let runtime = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
        Ok(r) => r,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let env = |k: &str| std::env::var(k).ok();
    match runtime.block_on(dispatch(cli.command, &env)) {
        Ok(code) => ExitCode::from(code),
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

/// Resolves the client token (see the module doc).
pub fn resolve_token(
    remote: &Remote,
    env: &dyn Fn(&str) -> Option<String>,
) -> anyhow::Result<String> {
    if let Some(t) = remote.token.as_ref().filter(|t| !t.trim().is_empty()) {
        return Ok(t.trim().to_owned());
    }
    if let Some(t) = env(config::ENV_OPERATOR_TOKEN).filter(|t| !t.trim().is_empty()) {
        return Ok(t.trim().to_owned());
    }
    let dir = env(config::ENV_DATA_DIR).unwrap_or_else(|| ".cz-data".into());
    let path = Path::new(&dir).join(config::OPERATOR_TOKEN_FILE);
    match std::fs::read_to_string(&path) {
        Ok(t) if !t.trim().is_empty() => Ok(t.trim().to_owned()),
        _ => anyhow::bail!(
            "no API token: pass --token, set CATALYST_ZERO_TOKEN or CATALYST_ZERO_OPERATOR_TOKEN, \
             or run where {} exists",
            path.display()
        ),
    }
}

fn connect(remote: &Remote, env: &dyn Fn(&str) -> Option<String>) -> anyhow::Result<Client> {
    Client::with_ca(&remote.server, resolve_token(remote, env)?, remote.ca_cert.as_deref())
}

async fn dispatch(cmd: Command, env: &dyn Fn(&str) -> Option<String>) -> anyhow::Result<u8> {
    match cmd {
        Command::Serve(args) => serve(args, env).await.map(|()| 0),
        Command::HcloudShim { action } => hcloud_shim(action, env).await,
        Command::KubeFake { kubeconfig, plain } => kube_fake(&kubeconfig, plain).await,
        Command::HcloudFake { listen, tokens, read_only, create_delay_ms } => {
            hcloud_fake(listen, tokens, read_only, create_delay_ms).await
        }
        Command::Run { file, data_dir, sim_latency } => run(&file, data_dir, sim_latency).await,
        Command::Submit { file, follow, idempotency_key, fault_plan, remote } => {
            let c = connect(&remote, env)?;
            let body = client::read_request(&file)?;
            let mut req = c.request(reqwest::Method::POST, "/v1/sovereigns").json(&body);
            if let Some(k) = idempotency_key {
                req = req.header("idempotency-key", k);
            }
            if let Some(f) = fault_plan {
                req = req.header("x-catalyst-fault-plan", f);
            }
            let resp = c.send(req).await?;
            submitted(&c, &resp, follow).await
        }
        Command::List { remote } => list(&connect(&remote, env)?).await.map(|()| 0),
        Command::Show { job, json, remote } => {
            show(&connect(&remote, env)?, &job, json).await.map(|()| 0)
        }
        Command::Follow { job, remote } => {
            Ok(follow::follow(&connect(&remote, env)?, &job).await?.exit_code())
        }
        Command::Retry { job, phase, step, remote } => {
            let body = match (step, phase) {
                (Some(s), _) => json!({ "step": s }),
                (None, Some(p)) => json!({ "phase": p }),
                (None, None) => json!({}),
            };
            verb(&connect(&remote, env)?, &job, "retry", Some(body)).await
        }
        Command::Skip { job, step, reason, remote } => {
            verb(
                &connect(&remote, env)?,
                &job,
                "skip",
                Some(json!({ "step": step, "reason": reason })),
            )
            .await
        }
        Command::Resume { job, remote } => {
            verb(&connect(&remote, env)?, &job, "resume", None).await
        }
        Command::Abandon { job, remote } => {
            verb(&connect(&remote, env)?, &job, "abandon", None).await
        }
        Command::Cancel { job, remote } => {
            verb(&connect(&remote, env)?, &job, "cancel", None).await
        }
        Command::Destroy { sovereign, follow, remote } => {
            let c = connect(&remote, env)?;
            let resp =
                c.send(c.request(
                    reqwest::Method::POST,
                    &format!("/v1/sovereigns/{sovereign}/destroy"),
                ))
                .await?;
            submitted(&c, &resp, follow).await
        }
        Command::Escrow { sovereign, out, remote } => {
            custody::escrow_out(&connect(&remote, env)?, &sovereign, &out).await
        }
        Command::Unseal {
            sovereign,
            region,
            identity,
            escrow,
            kubeconfig,
            endpoints,
            sim_world,
            remote,
        } => {
            let e = custody::load_escrow(escrow.as_deref(), || connect(&remote, env), &sovereign)
                .await?;
            let bao: Box<dyn cz_adapters::openbao::BaoApi> = match sim_world {
                // Shared: the daemon may be writing the same world.
                Some(dir) => Box::new(cz_sim::SimBao::new(std::sync::Arc::new(
                    cz_sim::SimWorld::shared(dir, cz_sim::SimConfig::instant()),
                ))),
                None => Box::new(cz_adapters::openbao::OpenBaoClient::default()),
            };
            let (region, kubeconfig) = (region.as_deref(), kubeconfig.as_deref());
            custody::unseal(bao.as_ref(), &e, &identity, region, kubeconfig, &endpoints).await
        }
        Command::Check { config, cloud_token_file } => {
            check::run(&config, cloud_token_file.as_deref(), env).await
        }
        Command::Combine { parts, out, fingerprint } => {
            custody::combine(&parts, &out, fingerprint.as_deref())
        }
        Command::AddRegion { sovereign, file, follow, remote } => {
            let c = connect(&remote, env)?;
            let body = client::read_request(&file)?;
            let resp = c.post(&format!("/v1/sovereigns/{sovereign}/regions"), Some(&body)).await?;
            submitted(&c, &resp, follow).await
        }
    }
}

async fn submitted(c: &Client, resp: &Value, follow: bool) -> anyhow::Result<u8> {
    let job =
        resp.get("job_id").and_then(Value::as_str).context("the daemon's answer has no job_id")?;
    let sov = resp.get("sovereign_id").and_then(Value::as_str).unwrap_or_default();
    println!("Submitted: sovereign {sov}, job {job}");
    if follow { Ok(follow::follow(c, job).await?.exit_code()) } else { Ok(0) }
}

async fn verb(c: &Client, job: &str, action: &str, body: Option<Value>) -> anyhow::Result<u8> {
    let resp = c.post(&format!("/v1/jobs/{job}/{action}"), body.as_ref()).await?;
    println!(
        "{action}: job {job} is now {}",
        resp.get("status").and_then(Value::as_str).unwrap_or("unknown")
    );
    Ok(0)
}

fn st<'a>(v: &'a Value, k: &str) -> &'a str {
    v.get(k).and_then(Value::as_str).unwrap_or("-")
}

async fn list(c: &Client) -> anyhow::Result<()> {
    let sovs = c.get("/v1/sovereigns").await?;
    let jobs = c.get("/v1/jobs").await?;
    println!("{:<38} {:<12} FQDN", "SOVEREIGN", "STATUS");
    for s in sovs.get("sovereigns").and_then(Value::as_array).into_iter().flatten() {
        println!("{:<38} {:<12} {}", st(s, "id"), st(s, "status"), st(s, "fqdn"));
    }
    println!();
    println!("{:<38} {:<11} {:<10} {:<38} CREATED", "JOB", "KIND", "STATUS", "SOVEREIGN");
    for j in jobs.get("jobs").and_then(Value::as_array).into_iter().flatten() {
        println!(
            "{:<38} {:<11} {:<10} {:<38} {}",
            st(j, "id"),
            st(j, "kind"),
            st(j, "status"),
            st(j, "sovereign_id"),
            st(j, "created_at")
        );
    }
    Ok(())
}

async fn show(c: &Client, job: &str, raw: bool) -> anyhow::Result<()> {
    let d = c.get(&format!("/v1/jobs/{job}")).await?;
    if raw {
        println!("{}", serde_json::to_string_pretty(&d)?);
        return Ok(());
    }
    println!("job {} ({}) of sovereign {}", st(&d, "id"), st(&d, "kind"), st(&d, "sovereign_id"));
    println!(
        "status {} mode {} created {} finished {}",
        st(&d, "status"),
        st(&d, "mode"),
        st(&d, "created_at"),
        st(&d, "finished_at")
    );
    if st(&d, "status") == "paused" {
        println!("{}", follow::describe_pause(&d));
    }
    if let Some(cost) = d.get("cost").filter(|c| !c.is_null()) {
        println!("{}", follow::cost_table(cost));
    }
    for p in d.get("phases").and_then(Value::as_array).into_iter().flatten() {
        println!("\n{} [{}]", st(p, "phase"), st(p, "state"));
        for s in p.get("steps").and_then(Value::as_array).into_iter().flatten() {
            let elapsed = s
                .get("elapsed_ms")
                .and_then(Value::as_i64)
                .map(|m| format!("{m} ms"))
                .unwrap_or_default();
            println!(
                "  {:<44} {:<11} attempts {:<2} {}",
                st(s, "step"),
                st(s, "state"),
                s.get("attempts").and_then(Value::as_u64).unwrap_or_default(),
                elapsed
            );
            if let Some(e) = s.get("error").filter(|e| !e.is_null()) {
                println!("      [{}] {}", st(e, "class"), st(e, "message"));
                println!("      remediation: {}", st(e, "remediation"));
                println!("      runbook: {}", st(e, "runbook"));
            }
        }
    }
    let audit: Vec<&Value> =
        d.get("audit").and_then(Value::as_array).into_iter().flatten().collect();
    if !audit.is_empty() {
        println!("\naudit:");
        for a in audit {
            println!(
                "  {} {} {} {}",
                st(a, "at"),
                st(a, "actor"),
                st(a, "action"),
                a.get("detail").cloned().unwrap_or_default()
            );
        }
    }
    Ok(())
}

/// Builds the daemon config for `serve`: file, then env, then flags.
pub fn serve_config(
    args: &ServeArgs,
    env: &dyn Fn(&str) -> Option<String>,
) -> anyhow::Result<Config> {
    let mut config = match &args.config {
        Some(p) => Config::from_file(p)?,
        None => Config::default(),
    };
    config.apply_env(env)?;
    if let Some(d) = &args.data_dir {
        config.data_dir = d.clone();
    }
    if let Some(k) = &args.at_rest_key {
        config.at_rest_key = Some(k.clone());
    }
    if let Some(l) = args.listen {
        config.listen = l;
    }
    if let (Some(cert), Some(key)) = (&args.tls_cert, &args.tls_key) {
        config.tls = Some(crate::config::TlsConfig { cert: cert.clone(), key: key.clone() });
    }
    if args.insecure_listen {
        config.insecure_listen = true;
    }
    if let Some(b) = args.backend {
        config.backend = b;
    }
    if let Some(f) = args.sim_latency {
        config.sim.latency_factor = f;
    }
    if let Some(u) = &args.database_url {
        config.database.url = Some(u.clone());
    }
    if let Some(d) = &args.shared_dir {
        config.shared_dir = Some(d.clone());
    }
    config.drills.fault_plans |= args.fault_plans;
    config.drills.fault_plans_on_hetzner |= args.fault_plans_on_hetzner;
    config.validate()?;
    Ok(config)
}

async fn serve(args: ServeArgs, env: &dyn Fn(&str) -> Option<String>) -> anyhow::Result<()> {
    let config = serve_config(&args, env)?;
    let handle = crate::server::start(config).await?;
    let stop = handle.shutdown_token();
    tokio::spawn(async move {
        shutdown_signal().await;
        tracing::info!("Shutdown requested; finishing open requests.");
        stop.cancel();
    });
    handle.wait().await
}

async fn shutdown_signal() {
    let ctrl_c = async {
        if let Err(e) = tokio::signal::ctrl_c().await {
            tracing::error!(error = &e as &dyn std::error::Error, "Cannot listen for ctrl-c.");
            std::future::pending::<()>().await;
        }
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(e) => {
                tracing::error!(error = &e as &dyn std::error::Error, "Cannot listen for SIGTERM.");
                std::future::pending::<()>().await;
            }
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        _ = ctrl_c => {}
        _ = term => {}
    }
}

/// `run`: daemon in-process, submit, follow, stop.
async fn run(file: &Path, data_dir: Option<PathBuf>, sim_latency: f64) -> anyhow::Result<u8> {
    let body = client::read_request(file)?;
    let data_dir = data_dir.unwrap_or_else(|| {
        PathBuf::from(".cz-data")
            .join("runs")
            .join(chrono::Utc::now().format("%Y%m%dT%H%M%S%.3fZ").to_string())
    });
    println!("Data directory: {}", data_dir.display());
    let token = hex::encode(rand::random::<[u8; 32]>());
    let mut config = Config {
        data_dir,
        listen: SocketAddr::from(([127, 0, 0, 1], 0)),
        backend: BackendKind::Sim,
        ..Config::default()
    };
    config.sim.latency_factor = sim_latency;
    config.tokens.operator = Some(token.clone());
    let handle = crate::server::start(config).await?;
    let c = Client::new(&format!("http://{}", handle.addr), token)?;
    println!("Daemon started on {} (sim backend, latency factor {sim_latency})", handle.addr);
    let result = async {
        let resp = c.post("/v1/sovereigns", Some(&body)).await?;
        let job = resp
            .get("job_id")
            .and_then(Value::as_str)
            .context("no job_id in the answer")?
            .to_owned();
        println!("Submitted: sovereign {}, job {job}", st(&resp, "sovereign_id"));
        follow::follow(&c, &job).await
    }
    .await;
    handle.shutdown().await?;
    let outcome = result?;
    if outcome == Outcome::Paused {
        eprintln!(
            "The job stays paused in the data directory; `catalyst-zero serve` resumes it with the verbs above."
        );
    }
    Ok(outcome.exit_code())
}
