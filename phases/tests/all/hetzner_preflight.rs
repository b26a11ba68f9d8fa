//! `preflight` through the real Hetzner client against the hcloud fake:
//! a read-only token, an over-quota request and an unknown SKU are refused
//! before any create call (asserted from the fake's request log), and a
//! passing pre-flight streams the cost preview computed from the API's
//! prices while making no successful write.

use std::sync::Arc;
use std::time::Duration;

use cz_phases::adapters::{Backend, InfraModule};
use cz_phases::engine::{DriveOutcome, Engine, FailurePolicy, JobOptions};
use cz_phases::exec::tofu::TofuCli;
use cz_phases::hcloud::fake::{self, DEFAULT_TOKEN, FakeConfig, FakeHandle, RecordedRequest};
use cz_phases::hcloud::{BudgetRegistry, HcloudClient, ProjectQuota};
use cz_phases::phases::{provision_submission, registry};
use cz_phases::request::{ProvisionRequest, sample_body};
use cz_phases::sim::{SimConfig, SimDns, SimWorld};
use cz_phases::unbuilt::Unbuilt;
use cz_state::{JobId, JobStatus, Store, StorePaths};
use serde_json::Value;
use tokio_util::sync::CancellationToken;

struct Rig {
    _dir: tempfile::TempDir,
    store: Store,
    engine: Engine,
    fake: FakeHandle,
}

/// The real CLI (pre-flight checks its version), or `None` after a loud
/// skip when the machine has none and `CZ_ALLOW_NO_TOFU=1`.
fn cli() -> Option<std::path::PathBuf> {
    match cz_phases::exec::tofu::find_cli() {
        Some(b) => Some(b),
        None if std::env::var("CZ_ALLOW_NO_TOFU").as_deref() == Ok("1") => {
            eprintln!("SKIPPED: no tofu/terraform binary; pre-flight checks the CLI");
            None
        }
        None => panic!("NO TOFU/TERRAFORM BINARY: install one or set CZ_ALLOW_NO_TOFU=1"),
    }
}

async fn rig(fake_cfg: FakeConfig, quota: ProjectQuota) -> Option<Rig> {
    Some(rig_with(fake_cfg, quota, cli()?).await)
}

async fn rig_with(fake_cfg: FakeConfig, quota: ProjectQuota, cli: std::path::PathBuf) -> Rig {
    let dir = tempfile::tempdir().unwrap();
    let fake = fake::start(fake_cfg).await;
    let cloud = HcloudClient::new(&fake.base_url(), Arc::new(BudgetRegistry::default()))
        .unwrap()
        .with_quota(quota);
    let world = Arc::new(SimWorld::new(dir.path().join("sim"), SimConfig::instant()));
    let backend = Backend {
        name: "hetzner".into(),
        cloud: Arc::new(cloud),
        tofu: Arc::new(TofuCli::new(cli, dir.path().join("plugins"), Duration::from_secs(60))),
        ssh: Arc::new(Unbuilt::SSH),
        kube: Arc::new(Unbuilt::KUBE),
        bao: Arc::new(Unbuilt::BAO),
        dns: Arc::new(SimDns::new(world.clone())),
        registrars: Arc::new(cz_phases::sim::SimRegistrars::new(world)),
        workspace_root: dir.path().join("workspaces"),
        infra: InfraModule::Offline {
            templates: concat!(env!("CARGO_MANIFEST_DIR"), "/../cloud-templates/hetzner-offline")
                .into(),
            shim: "/nonexistent/catalyst-zero".into(),
            endpoint: fake.base_url(),
        },
        k3s: cz_phases::adapters::K3sSource::Simulated,
        ssh_port: 22,
        bounds: Default::default(),
        poll: Duration::from_millis(10),
        public_resolvers: Vec::new(),
    };
    let ns: Vec<String> =
        cz_phases::phases::dns::NAMESERVERS.iter().map(|s| s.to_string()).collect();
    backend.dns.create_zone("omani.works.", &ns, "").await.unwrap();
    let store = Store::open(StorePaths::in_dir(&dir.path().join("data"))).await.unwrap();
    let engine = Engine::new(store.clone(), Arc::new(registry()), Arc::new(backend));
    Rig { _dir: dir, store, engine, fake }
}

fn request(sub: &str, sku: &str, cps: u32, workers: u32) -> ProvisionRequest {
    let recipient = age::x25519::Identity::generate().to_public().to_string();
    let mut body = sample_body(sub, cps, workers, DEFAULT_TOKEN, &recipient);
    body["regions"][0]["control_plane"]["sku"] = sku.into();
    body["regions"][0]["workers"]["sku"] = sku.into();
    serde_json::from_value(body).expect("a valid request")
}

/// Submits and drives until the job stops or reaches `infra` (where a
/// passing pre-flight would start spending: the test stops it there).
async fn run_preflight(r: &Rig, req: &ProvisionRequest) -> (JobId, JobStatus) {
    let options = JobOptions { on_failure: FailurePolicy::Keep, ..JobOptions::default() };
    let (_sov, job, sub) = provision_submission(req, &options, "test");
    r.store.submit(sub).await.unwrap();
    let cancel = CancellationToken::new();
    let drive = r.engine.drive(job, cancel.clone());
    let watch = async {
        loop {
            let states = r.store.node_states(job).await.unwrap();
            // token-scope runs last (after every read check) and artifacts
            // on its own branch.
            let done = |n: &str| states.get(n).is_some_and(|s| s.is_satisfied());
            if done("preflight/token-scope") && done("preflight/artifacts") {
                cancel.cancel();
                return;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    };
    let both = async {
        tokio::pin!(drive);
        tokio::select! {
            o = &mut drive => o,
            // Cancelled at the end of pre-flight: the drive stops next.
            () = watch => drive.await,
        }
    };
    let outcome =
        tokio::time::timeout(Duration::from_secs(60), both).await.expect("pre-flight ends in 60 s");
    let status = match outcome.unwrap() {
        DriveOutcome::Stopped(s) => s,
        DriveOutcome::Interrupted => JobStatus::Running,
    };
    (job, status)
}

fn writes(log: &[RecordedRequest]) -> Vec<String> {
    log.iter()
        .filter(|r| r.method != "GET")
        .map(|r| format!("{} {} -> {} {:?}", r.method, r.path, r.status, r.code))
        .collect()
}

async fn failed_step(r: &Rig, job: JobId) -> String {
    let j = r.store.get_job(job).await.unwrap().unwrap();
    let why = j.pause.or(j.error).unwrap_or(Value::Null);
    why.to_string()
}

#[tokio::test]
async fn a_read_only_token_is_refused_and_nothing_is_created() {
    let ro = FakeConfig { read_only: true, ..FakeConfig::default() };
    let Some(r) = rig(ro, ProjectQuota::default()).await else { return };
    let (job, status) = run_preflight(&r, &request("ro", "cpx32", 1, 1)).await;
    assert!(matches!(status, JobStatus::Paused | JobStatus::Failed), "{status}");
    let why = failed_step(&r, job).await;
    assert!(why.contains("token-scope") && why.contains("read-only"), "{why}");
    let log = r.fake.requests();
    assert!(!log.iter().any(RecordedRequest::is_successful_write), "{:?}", writes(&log));
    // The one write attempted is the scope probe, refused.
    assert_eq!(writes(&log), vec!["POST /v1/ssh_keys -> 403 Some(\"forbidden\")".to_owned()]);
    assert!(r.fake.objects("ssh_key").is_empty());
}

#[tokio::test]
async fn an_over_quota_request_is_refused_before_any_write() {
    // A new project's limit: 10 servers. 3 + 8 = 11.
    let Some(r) = rig(FakeConfig::default(), ProjectQuota::default()).await else { return };
    let (job, status) = run_preflight(&r, &request("quota", "cpx32", 3, 8)).await;
    assert!(matches!(status, JobStatus::Paused | JobStatus::Failed), "{status}");
    let why = failed_step(&r, job).await;
    assert!(why.contains("quotas") && why.contains("server"), "{why}");
    assert_eq!(writes(&r.fake.requests()), Vec::<String>::new());
}

#[tokio::test]
async fn an_unknown_sku_is_refused_before_any_write() {
    // cx43 passes the request schema (F-09 list) but this project's
    // catalogue does not offer it.
    let Some(r) = rig(FakeConfig::default(), ProjectQuota::default()).await else { return };
    let (job, status) = run_preflight(&r, &request("sku", "cx43", 1, 1)).await;
    assert!(matches!(status, JobStatus::Paused | JobStatus::Failed), "{status}");
    let why = failed_step(&r, job).await;
    assert!(why.contains("catalog") && why.contains("cx43"), "{why}");
    assert_eq!(writes(&r.fake.requests()), Vec::<String>::new());
}

#[tokio::test]
async fn a_passing_preflight_streams_the_cost_from_api_prices_and_writes_nothing() {
    let Some(r) = rig(FakeConfig::default(), ProjectQuota::default()).await else { return };
    let (job, _status) = run_preflight(&r, &request("cost", "cpx32", 3, 2)).await;
    let states = r.store.node_states(job).await.unwrap();
    for step in
        ["validate", "catalog", "quotas", "names-free", "cost-preview", "artifacts", "token-scope"]
    {
        let s = states.get(&format!("preflight/{step}"));
        assert!(s.is_some_and(|s| s.is_satisfied()), "{step}: {s:?}");
    }
    let events = r.store.events_after(job, 0, 10_000).await.unwrap();
    let cost = events.iter().find(|e| e.kind == "cost").expect("a cost event").body.clone();
    // The fake serves the sim's price table as strings: cpx32 13.99/month,
    // lb11 at its price; 5 servers + 1 LB.
    let region = &cost["regions"][0];
    assert_eq!(region["control_plane"]["monthly_eur"], 13.99, "{cost}");
    let lb = region["load_balancer"]["monthly_eur"].as_f64().unwrap();
    let want = 13.99 * 5.0 + lb;
    assert!((cost["monthly"].as_f64().unwrap() - want).abs() < 0.011, "{cost}");
    assert!(cost["hourly"].as_f64().unwrap() > 0.0);
    // The cost preview is in the stream before the first infra event.
    let log = r.fake.requests();
    assert!(!log.iter().any(RecordedRequest::is_successful_write), "{:?}", writes(&log));
    assert_eq!(writes(&log), vec!["POST /v1/ssh_keys -> 400 Some(\"invalid_input\")".to_owned()]);
}

#[tokio::test]
async fn a_name_collision_with_someone_elses_object_is_refused_before_any_write() {
    let Some(r) = rig(FakeConfig::default(), ProjectQuota::default()).await else { return };
    // Someone else's network holds the name this Sovereign's region needs.
    r.fake.seed_object("network", "taken-omani-works-fsn1-net", [("team", "other")]);
    let (job, status) = run_preflight(&r, &request("taken", "cpx32", 1, 1)).await;
    assert!(matches!(status, JobStatus::Paused | JobStatus::Failed), "{status}");
    let why = failed_step(&r, job).await;
    assert!(why.contains("names-free") && why.contains("taken-omani-works-fsn1-net"), "{why}");
    assert_eq!(writes(&r.fake.requests()), Vec::<String>::new());
}

/// F-02: a missing tofu binary stops the job in pre-flight, before any
/// write; a present one is recorded with the module's digest.
#[tokio::test]
async fn preflight_records_the_cli_and_module_and_refuses_a_missing_cli() {
    let r =
        rig_with(FakeConfig::default(), ProjectQuota::default(), "/nonexistent/tofu".into()).await;
    let (job, status) = run_preflight(&r, &request("nocli", "cpx32", 1, 1)).await;
    assert!(matches!(status, JobStatus::Paused | JobStatus::Failed), "{status}");
    let why = failed_step(&r, job).await;
    assert!(why.contains("artifacts") && why.contains("was not found"), "{why}");
    assert!(!r.fake.requests().iter().any(RecordedRequest::is_successful_write));

    let Some(r) = rig(FakeConfig::default(), ProjectQuota::default()).await else { return };
    let (job, _) = run_preflight(&r, &request("cli", "cpx32", 1, 1)).await;
    let states = r.store.node_states(job).await.unwrap();
    let out = match states.get("preflight/artifacts") {
        Some(cz_state::NodeState::Succeeded { output, .. }) => output.clone(),
        other => panic!("artifacts: {other:?}"),
    };
    let tofu = out["tofu"].as_str().unwrap();
    assert!(tofu.starts_with("Terraform 1.") || tofu.starts_with("OpenTofu 1."), "{tofu}");
    assert_eq!(out["module"]["sha256"].as_str().map(str::len), Some(64), "{out}");
}
