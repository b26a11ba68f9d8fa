//! `preflight` through the real Hetzner client against the hcloud fake:
//! a read-only token, an over-quota request and an unknown SKU are refused
//! before any create call (asserted from the fake's request log), and a
//! passing pre-flight streams the cost preview computed from the API's
//! prices while making no successful write.

use std::sync::Arc;
use std::time::Duration;

use cz_adapters::cloud::{BudgetRegistry, HcloudClient, ProjectQuota};
use cz_adapters::kube::KubeClient;
use cz_adapters::openbao::OpenBaoClient;
use cz_adapters::ssh::SshClient;
use cz_adapters::tofu::{TofuCli, find_cli};
use cz_adapters::{InfraModule, K3sSource};
use cz_engine::testing::Rig;
use cz_engine::{DriveOutcome, FailurePolicy, JobOptions};
use cz_phases::dns::NAMESERVERS;
use cz_phases::jobs::{self, Submit};
use cz_phases::request::ProvisionRequest;
use cz_phases::testing::{age_recipient, sample_body};
use cz_phases::{Backend, registry};
use cz_sim::wire::hcloud::{self as fake, DEFAULT_TOKEN, FakeConfig, FakeHandle, RecordedRequest};
use cz_sim::{SimConfig, SimDns, SimRegistrars, SimWorld};
use cz_state::{JobId, JobStatus};
use tokio_util::sync::CancellationToken;

/// The engine and store over a `hetzner` backend whose cloud is the real
/// client against `fake`.
struct Preflight {
    rig: Rig<Backend>,
    fake: FakeHandle,
}

/// The real CLI (pre-flight checks its version), or `None` after a loud
/// skip when the machine has none and `CZ_ALLOW_NO_TOFU=1`.
fn cli() -> Option<std::path::PathBuf> {
    match find_cli() {
        Some(b) => Some(b),
        None if std::env::var("CZ_ALLOW_NO_TOFU").as_deref() == Ok("1") => {
            eprintln!("SKIPPED: no tofu/terraform binary; pre-flight checks the CLI");
            None
        }
        None => panic!("NO TOFU/TERRAFORM BINARY: install one or set CZ_ALLOW_NO_TOFU=1"),
    }
}

async fn rig(fake_cfg: FakeConfig, quota: ProjectQuota) -> Option<Preflight> {
    Some(rig_with(fake_cfg, quota, cli()?).await)
}

/// The backend the daemon wires for `hetzner` (SSH and Kubernetes are the
/// real clients, which pre-flight never calls), with DNS and registrars
/// from the sim.
async fn rig_with(fake_cfg: FakeConfig, quota: ProjectQuota, cli: std::path::PathBuf) -> Preflight {
    let fake = fake::start(fake_cfg).await;
    let cloud = HcloudClient::new(&fake.base_url(), Arc::new(BudgetRegistry::default()))
        .unwrap()
        .with_quota(quota);
    let endpoint = fake.base_url();
    let rig = Rig::new(Arc::new(registry()), |dir| {
        let world = Arc::new(SimWorld::new(dir.join("sim"), SimConfig::instant()));
        Backend {
            name: "hetzner".into(),
            cloud: Arc::new(cloud),
            tofu: Arc::new(TofuCli::new(cli, dir.join("plugins"), Duration::from_secs(60))),
            ssh: Arc::new(SshClient::default()),
            kube: Arc::new(KubeClient),
            bao: Arc::new(OpenBaoClient::default()),
            dns: Arc::new(SimDns::new(world.clone())),
            registrars: Arc::new(SimRegistrars::new(world)),
            workspace_root: dir.join("workspaces"),
            infra: InfraModule::Offline {
                templates: concat!(
                    env!("CARGO_MANIFEST_DIR"),
                    "/../cloud-templates/hetzner-offline"
                )
                .into(),
                shim: "/nonexistent/catalyst-zero".into(),
                endpoint,
            },
            k3s: K3sSource::Simulated,
            ssh_port: 22,
            bounds: Default::default(),
            poll: Duration::from_millis(10),
            public_resolvers: Vec::new(),
        }
    })
    .await;
    let ns: Vec<String> = NAMESERVERS.iter().map(|s| s.to_string()).collect();
    rig.env().dns.create_zone("omani.works.", &ns, "").await.unwrap();
    Preflight { rig, fake }
}

/// The sample request with `sku` everywhere; a failure keeps what the job
/// made, so the test reads where it stopped.
fn request(sub: &str, sku: &str, cps: u32, workers: u32) -> ProvisionRequest {
    let mut body = sample_body(sub, cps, workers, DEFAULT_TOKEN, &age_recipient());
    body["regions"][0]["control_plane"]["sku"] = sku.into();
    body["regions"][0]["workers"]["sku"] = sku.into();
    body["on_failure"] = "keep".into();
    let req: ProvisionRequest = serde_json::from_value(body).expect("a valid request");
    assert_eq!(req.on_failure, FailurePolicy::Keep);
    req
}

/// Submits and drives until the job stops or reaches `infra` (where a
/// passing pre-flight would start spending: the test stops it there).
async fn run_preflight(p: &Preflight, req: &ProvisionRequest) -> (JobId, JobStatus) {
    let r = &p.rig;
    let submit = Submit { actor: "test".into(), options: JobOptions::default(), idempotency: None };
    let job = r.submit(jobs::provision(req, submit)).await;
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
        DriveOutcome::Interrupted | DriveOutcome::LeaseLost => JobStatus::Running,
    };
    (job, status)
}

fn writes(log: &[RecordedRequest]) -> Vec<String> {
    log.iter()
        .filter(|r| r.method != "GET")
        .map(|r| format!("{} {} -> {} {:?}", r.method, r.path, r.status, r.code))
        .collect()
}

async fn failed_step(p: &Preflight, job: JobId) -> String {
    p.rig.stop_reason(job).await.to_string()
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
    // cx43 passes the request schema (it is in its SKU list) but this
    // project's catalogue does not offer it.
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
    let states = r.rig.store.node_states(job).await.unwrap();
    for step in
        ["validate", "catalog", "quotas", "names-free", "cost-preview", "artifacts", "token-scope"]
    {
        let s = states.get(&format!("preflight/{step}"));
        assert!(s.is_some_and(|s| s.is_satisfied()), "{step}: {s:?}");
    }
    let cost = r.rig.events(job, "cost").await.into_iter().next().expect("a cost event");
    // The fake serves the catalogue's price table as strings: cpx32 13.99/month,
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

/// A missing tofu binary stops the job in pre-flight, before any write
/// (not at the first apply, with objects half made); a present one is
/// recorded with the module's digest.
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
    let states = r.rig.store.node_states(job).await.unwrap();
    let out = match states.get("preflight/artifacts") {
        Some(cz_state::NodeState::Succeeded { output, .. }) => output.clone(),
        other => panic!("artifacts: {other:?}"),
    };
    let tofu = out["tofu"].as_str().unwrap();
    assert!(tofu.starts_with("Terraform 1.") || tofu.starts_with("OpenTofu 1."), "{tofu}");
    assert_eq!(out["module"]["sha256"].as_str().map(str::len), Some(64), "{out}");
}
