//! `custody` and `secrets-handoff` through the real adapters against a
//! real OpenBao: three `bao server` nodes in one raft cluster (node 1 and 2
//! `retry_join` node 0, as bp-openbao's pods do), reached as pods through
//! the fake Kubernetes API server over TLS (its pod proxy), with the
//! simulated External Secrets controller logging in to that OpenBao with
//! Kubernetes auth, which OpenBao checks with the fake's `TokenReview`.
//!
//! Asserted: the phase code initialises, unseals (all three nodes),
//! configures and hands off OpenBao; no share or root token is anywhere
//! the daemon writes (store, data dir, logs, events); the real `age` CLI
//! opens share i with custodian i's identity only; the root token is dead;
//! the ESO round trip ran both legs; after every node restarts (sealed),
//! one custodian running `catalyst-zero unseal` is not enough and two are;
//! the process driving the job, killed with SIGKILL inside every step of
//! both phases, never initialises OpenBao twice, and a kill between
//! `sys/init`'s answer and the escrow's commit stops for an operator
//! instead of re-initialising.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use cz_adapters::kube::KubeClient;
use cz_adapters::openbao::{BaoEndpoint, OpenBaoClient};
use cz_adapters::{Backend, BaoApi, BaoInit, KubeApi, ObjectRef};
use cz_engine::{ActionId, Cause, JobOptions, PhaseBuilder, Plan, RetryTarget, StepError, Verbs};
use cz_phases::cluster::CiliumChart;
use cz_phases::cluster::render::cilium_manifest;
use cz_phases::custody::escrow::OPENBAO_SHARE;
use cz_phases::handoff::secrets::RoundTrip;
use cz_phases::request::ProvisionRequest;
use cz_phases::{Registry, bootstrap_kit, custody, handoff, release};
use cz_sim::wire::controllers::Pace;
use cz_sim::wire::kube::FakeKube;
use cz_state::{JobId, JobStatus, SecretString, SovereignId};
use cz_testkit::bao::{Bao, BaoCluster};
use cz_testkit::requests::{Custodians, sample_request};
use cz_testkit::rig::{BaoTap, Rig, SimRigExt, Stub, rig_in, sim_backend_in, step_output};
use serde_json::{Value, json};

const CILIUM: ActionId<()> = ActionId::new("test.cilium");
/// The kit's components OpenBao and sealed-secrets need.
const KIT: &[&str] = &["cilium", "cert-manager", "flux", "sealed-secrets", "spire", "openbao"];

fn register(reg: &mut Registry) {
    let done = CiliumChart {
        chart_version: release::cilium_chart_version().to_owned(),
        k8s_service_host: "10.0.1.2".into(),
    };
    reg.register_dyn(CILIUM.name, Stub::new(done).action());
}

/// What a test needs: the fake cluster over TLS with its controllers and
/// External Secrets, three real OpenBao nodes behind its pod proxy and its
/// `openbao` Service.
struct World {
    fake: FakeKube,
    bao: BaoCluster,
}

async fn world() -> Option<World> {
    if !Bao::available() && cz_testkit::skip("handoff_bao", "no bao binary (set CZ_BAO_BIN)") {
        return None;
    }
    cz_testkit::crypto();
    let bao = BaoCluster::start(3).await;
    let fake = FakeKube::start_tls().await;
    fake.run_controllers(Pace::default());
    fake.run_external_secrets(Duration::from_millis(100));
    for n in ["cp1", "cp2", "cp3"] {
        fake.put("", "nodes", json!({"metadata": {"name": n}}));
    }
    let kc = SecretString::new(fake.kubeconfig());
    let cilium: Value = serde_saphyr::from_str(&cilium_manifest("10.0.1.2").unwrap()).unwrap();
    KubeClient.apply(&kc, "k3s", &[cilium]).await.unwrap();
    for (i, node) in bao.nodes.iter().enumerate() {
        fake.route_pod("openbao", &format!("openbao-{i}"), &node.url());
    }
    fake.route_service("openbao", "openbao", &bao.nodes[0].url());
    Some(World { fake, bao })
}

/// What the test sees of `sys/init` on the wire: every call is counted in
/// `dir/inits.log` (across the driving processes) and the last answer kept;
/// with `pause`, the driver then waits inside the init window (before the
/// escrow commit) and says so in `dir/init-answered`.
struct Watched {
    seen: Mutex<Option<(Vec<SecretString>, SecretString)>>,
}

fn watched(dir: &Path, pause: Option<Duration>) -> (Arc<Watched>, Arc<dyn BaoApi>) {
    let w = Arc::new(Watched { seen: Mutex::new(None) });
    let (keep, dir) = (w.clone(), dir.to_owned());
    let after_init = Box::new(move |init: &BaoInit| {
        use std::io::Write as _;
        let mut f = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(dir.join("inits.log"))
            .unwrap();
        writeln!(f, "init").unwrap();
        f.sync_all().unwrap();
        *keep.seen.lock().unwrap() = Some((init.keys.clone(), init.root_token.clone()));
        if pause.is_some() {
            std::fs::write(dir.join("init-answered"), "").unwrap();
        }
        pause
    });
    let tap = BaoTap { inner: Arc::new(OpenBaoClient::default()), after_init };
    (w, Arc::new(tap))
}

/// The backend: the sim's, with the real Kubernetes and OpenBao clients.
fn backend(dir: &Path, bao: Arc<dyn BaoApi>) -> Backend {
    let mut b = sim_backend_in(dir);
    b.kube = Arc::new(KubeClient);
    b.bao = bao;
    b.poll = Duration::from_millis(50);
    b.bounds.kit_component = Duration::from_secs(60);
    b.bounds.openbao = Duration::from_secs(60);
    b.bounds.secret_sync = Duration::from_secs(60);
    b
}

/// The sample's three custodians, dealt to identities the test holds.
fn custodians(dir: &Path, req: &mut ProvisionRequest) -> Custodians {
    let people = Custodians::generate(dir);
    for (c, r) in req.custody.custodians.iter_mut().zip(&people.recipients) {
        c.recipient = r.clone();
    }
    req.custody.openbao_threshold = 2;
    people
}

fn request(dir: &Path) -> (ProvisionRequest, Custodians) {
    let mut req = sample_request("vaulted", 3, 0);
    req.components = KIT.iter().map(|c| c.to_string()).collect();
    let people = custodians(dir, &mut req);
    (req, people)
}

fn plan(req: &ProvisionRequest) -> Plan {
    let mut cl = PhaseBuilder::new("cluster");
    cl.step("cilium-fsn1", CILIUM, &[], ());
    let comps: Vec<String> = KIT.iter().map(|c| c.to_string()).collect();
    Plan {
        phases: vec![
            cl.build(),
            custody::phase(req.custody.seal),
            bootstrap_kit::phase(&comps, "fsn1", false),
            handoff::secrets::phase(),
        ],
    }
}

/// A job of [`plan`] in a rig in `dir` (its store in `dir/data`).
async fn submit(
    dir: &Path,
    w: &World,
    req: &ProvisionRequest,
    bao: Arc<dyn BaoApi>,
) -> (Rig<Backend>, SovereignId, JobId) {
    let r = rig_in(dir, register, move |d| backend(d, bao)).await;
    let (sov, job) = r.submit_plan(req, &plan(req), JobOptions::default()).await;
    let kc = SecretString::new(w.fake.kubeconfig());
    r.store.put_secret(&sov.to_string(), "kubeconfig-fsn1", &kc).await.unwrap();
    (r, sov, job)
}

fn unauthorized(e: &StepError) -> bool {
    matches!(e, StepError::Adapter { cause: Cause::Unauthorized, .. })
}

/// `age -d -i identity` of `armored` (the real CLI), if it opens.
pub(crate) fn age_open(identity: &Path, armored: &str, scratch: &Path) -> Option<String> {
    let f = scratch.join("blob.age");
    std::fs::write(&f, armored).unwrap();
    let out = std::process::Command::new("age")
        .args(["-d", "-i"])
        .arg(identity)
        .arg(&f)
        .output()
        .expect("the age CLI");
    out.status.success().then(|| String::from_utf8(out.stdout).unwrap())
}

/// Every file under `root`, recursively.
fn files(root: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut todo = vec![root.to_owned()];
    while let Some(d) = todo.pop() {
        for e in std::fs::read_dir(&d).into_iter().flatten().flatten() {
            let p = e.path();
            if p.is_dir() { todo.push(p) } else { out.push(p) }
        }
    }
    out
}

/// The escrow as `catalyst-zero escrow --out` writes it (the API's
/// answer), for `unseal --escrow DIR`.
async fn write_escrow(r: &Rig<Backend>, sov: SovereignId, out: &Path) {
    let items = r.store.escrow(&sov.to_string(), None).await.unwrap();
    let items: Vec<Value> = items
        .iter()
        .map(|i| {
            json!({ "kind": i.kind, "index": i.index, "custodian": i.custodian, "label": i.label,
                    "recipient": i.recipient, "threshold": i.threshold, "parts": i.parts,
                    "fingerprint": i.fingerprint, "created_at": "", "age": i.armored })
        })
        .collect();
    std::fs::create_dir_all(out).unwrap();
    let doc =
        json!({ "sovereign_id": sov.to_string(), "fqdn": "vaulted.omani.works", "items": items });
    std::fs::write(out.join("escrow.json"), doc.to_string()).unwrap();
}

/// `catalyst-zero unseal` as the custodian of `identity`; its output.
/// (Awaited, not blocked on: the fake API server it talks to runs on this
/// test's runtime.)
async fn unseal_cli(sov: SovereignId, escrow: &Path, identity: &Path) -> String {
    let out = tokio::process::Command::new(cz_testkit::daemon::binary())
        .args(["unseal", &sov.to_string(), "--escrow"])
        .arg(escrow)
        .arg("--identity")
        .arg(identity)
        .output()
        .await
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(out.status.success(), "unseal failed: {text}{}", String::from_utf8_lossy(&out.stderr));
    text
}

async fn sealed(node: &cz_testkit::bao::BaoNode) -> bool {
    node.seal_status().await.is_some_and(|s| s["sealed"] == true)
}

#[tokio::test]
async fn a_real_openbao_is_initialised_handed_off_and_unsealed_by_custodians_k_of_n() {
    let Some(mut w) = world().await else { return };
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("run");
    let (req, people) = request(tmp.path());
    // Everything the daemon logs, into a file searched below.
    let log_file = tmp.path().join("daemon.log");
    let log = std::fs::File::create(&log_file).unwrap();
    let subscriber = tracing_subscriber::fmt()
        .with_writer(Mutex::new(log))
        .with_max_level(tracing::Level::TRACE)
        .with_ansi(false)
        .finish();
    let _guard = tracing::subscriber::set_default(subscriber);
    let (spy, bao) = watched(&dir, None);
    let (r, sov, job) = submit(&dir, &w, &req, bao).await;
    let status = r.drive(job).await;
    assert_eq!(status, JobStatus::Succeeded, "{}\n{}", r.stop_reason(job).await, w.bao.logs());

    let (shares, root) = spy.seen.lock().unwrap().clone().expect("sys/init answered");
    assert_eq!(shares.len(), 3);
    // Nowhere the daemon writes: its data dir (store, WAL, sim world,
    // workspaces), its log, its events.
    let events: Vec<String> = r
        .store
        .events_after(job, 0, i64::MAX)
        .await
        .unwrap()
        .iter()
        .map(|e| e.body.to_string())
        .collect();
    let mut haystacks: Vec<(String, Vec<u8>)> = files(&dir)
        .into_iter()
        .map(|f| (f.display().to_string(), std::fs::read(&f).unwrap()))
        .collect();
    haystacks.push(("the log".into(), std::fs::read(&log_file).unwrap()));
    haystacks.push(("the events".into(), events.join("\n").into_bytes()));
    assert!(std::fs::metadata(&log_file).unwrap().len() > 0, "the log was captured");
    for secret in shares.iter().chain([&root]) {
        let needle = secret.expose().as_bytes();
        for (name, bytes) in &haystacks {
            assert!(!bytes.windows(needle.len()).any(|w| w == needle), "a secret is in {name}");
        }
    }
    // Share i opens with custodian i's identity only, and is the share.
    let escrow = r.store.escrow(&sov.to_string(), Some(OPENBAO_SHARE)).await.unwrap();
    for item in &escrow {
        for (c, id) in people.files.iter().enumerate() {
            let got = age_open(id, &item.armored, tmp.path());
            if c == item.custodian as usize {
                assert_eq!(got.as_deref(), Some(shares[item.index as usize].expose()));
            } else {
                assert!(got.is_none(), "custodian {c} opened share {}", item.index);
            }
        }
    }
    // The root token is dead.
    let bao = OpenBaoClient::default();
    let at = BaoEndpoint::direct(w.bao.nodes[0].url());
    let e = bao.read(&at, &root, "auth/token/lookup-self").await.unwrap_err();
    assert!(unauthorized(&e), "the root token still works: {e}");
    // External Secrets proved both legs against this OpenBao.
    let rt: RoundTrip = step_output(&r.store, job, "secrets-handoff/roundtrip").await;
    assert!(rt.synced && rt.resynced);
    let store = w.fake.get("external-secrets.io", "clustersecretstores", "", "openbao").unwrap();
    assert_eq!(store.pointer("/status/conditions/0/status"), Some(&json!("True")), "{store}");
    assert!(
        w.fake.get("", "secrets", "external-secrets-system", "catalyst-zero-roundtrip").is_none()
    );
    let kc = SecretString::new(w.fake.kubeconfig());
    let hr = ObjectRef {
        api_version: "helm.toolkit.fluxcd.io/v2".into(),
        kind: "HelmRelease".into(),
        namespace: Some("flux-system".into()),
        name: "bp-sealed-secrets".into(),
    };
    assert!(KubeClient.get(&kc, &hr).await.unwrap().is_none(), "sealed-secrets is retired");

    // Every node restarts, sealed. One custodian is not enough, two are.
    for n in &mut w.bao.nodes {
        n.restart().await;
    }
    for n in &w.bao.nodes {
        assert!(sealed(n).await);
    }
    let escrow_dir = tmp.path().join("escrow");
    write_escrow(&r, sov, &escrow_dir).await;
    let first = unseal_cli(sov, &escrow_dir, &people.files[0]).await;
    assert!(first.contains("1 of 2 shares given"), "{first}");
    for n in &w.bao.nodes {
        assert!(sealed(n).await, "one custodian unsealed {}: {first}", n.url());
    }
    let second = unseal_cli(sov, &escrow_dir, &people.files[2]).await;
    let started = std::time::Instant::now();
    for n in &w.bao.nodes {
        while sealed(n).await {
            assert!(started.elapsed() < Duration::from_secs(30), "{second}\n{}", w.bao.logs());
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }
    let third = unseal_cli(sov, &escrow_dir, &people.files[1]).await;
    assert!(third.contains("unsealed already") && third.contains("Every replica"), "{third}");
}

/// The driving half of the kill -9 tests: a no-op unless the parent runs
/// this binary as its child with `CZ_BAO_DIR` set.
#[tokio::test]
async fn child_driver() {
    let Ok(dir) = std::env::var("CZ_BAO_DIR") else { return };
    let dir = PathBuf::from(dir);
    let job: JobId = std::env::var("CZ_BAO_JOB").unwrap().parse().unwrap();
    let pause =
        std::env::var("CZ_BAO_PAUSE_MS").ok().map(|m| Duration::from_millis(m.parse().unwrap()));
    let (_, bao) = watched(&dir, pause);
    let r = rig_in(&dir, register, move |d| backend(d, bao)).await;
    cz_testkit::kill9::drive_logging_steps(&r.engine, &r.store, job, &dir).await;
}

fn inits(dir: &Path) -> usize {
    std::fs::read_to_string(dir.join("inits.log")).unwrap_or_default().lines().count()
}

/// Gives `threshold` custodians' shares (opened with their identities) to
/// every sealed node, as `catalyst-zero unseal` does.
async fn custodians_unseal(
    r: &Rig<Backend>,
    sov: SovereignId,
    people: &Custodians,
    w: &World,
    scratch: &Path,
) {
    let escrow = r.store.escrow(&sov.to_string(), Some(OPENBAO_SHARE)).await.unwrap();
    let bao = OpenBaoClient::default();
    for n in &w.bao.nodes {
        let at = BaoEndpoint::direct(n.url());
        for item in escrow.iter().take(2) {
            if !sealed(n).await {
                break;
            }
            let share =
                age_open(&people.files[item.custodian as usize], &item.armored, scratch).unwrap();
            bao.unseal(&at, &SecretString::new(share)).await.unwrap();
        }
    }
}

/// Killed with SIGKILL inside every step of `custody` and
/// `secrets-handoff`, fresh processes resume from the store alone; OpenBao
/// is initialised once. A kill that leaves replicas sealed stops the job
/// for the custodians, who unseal, and `retry` goes on.
#[tokio::test]
async fn killed_inside_every_custody_and_handoff_step_it_initialises_once() {
    if std::env::var("CZ_BAO_DIR").is_ok() {
        return;
    }
    let Some(w) = world().await else { return };
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("run");
    std::fs::create_dir_all(&dir).unwrap();
    let (req, people) = request(tmp.path());
    let (r, sov, job) = submit(&dir, &w, &req, watched(&dir, None).1).await;
    let env = [("CZ_BAO_DIR", dir.display().to_string()), ("CZ_BAO_JOB", job.to_string())];
    let ours = |s: &str| s.starts_with("custody/") || s.starts_with("secrets-handoff/");
    let mut killed = BTreeSet::new();
    let mut rounds = 0;
    loop {
        rounds += 1;
        assert!(rounds < 10, "no end after {rounds} rounds");
        let (_, outcome) = cz_testkit::kill9::kill_inside_steps(
            "handoff_bao::child_driver",
            &env,
            &dir,
            ours,
            &mut killed,
        )
        .await;
        if outcome == "Stopped(Succeeded)" {
            break;
        }
        assert_eq!(outcome, "Stopped(Paused)");
        let stop = r.stop_reason(job).await;
        let step = stop["step"].as_str().unwrap_or_default();
        assert!(step.starts_with("secrets-handoff/unseal-"), "an unexpected stop: {stop}");
        assert!(stop["error"]["remediation"].as_str().unwrap().contains("catalyst-zero unseal"));
        custodians_unseal(&r, sov, &people, &w, tmp.path()).await;
        Verbs { store: &r.store }.retry(job, RetryTarget::Failed, "custodians").await.unwrap();
    }
    assert_eq!(inits(&dir), 1, "OpenBao was initialised more than once");
    let phase_steps: usize = plan(&req)
        .phases
        .iter()
        .filter(|p| ours(&format!("{}/", p.id)))
        .map(|p| p.nodes.len())
        .sum();
    assert!(
        killed.len() >= phase_steps - 3,
        "killed inside {} of {phase_steps}: {killed:?}",
        killed.len()
    );
    eprintln!("kill -9 inside {} steps in {rounds} rounds", killed.len());
}

/// A kill between `sys/init`'s answer and the escrow commit: the shares
/// are lost, so the re-run finds OpenBao initialised with no escrow, and
/// stops for an operator with the wipe runbook rather than re-initialise a
/// real OpenBao itself. Once the operator has reset its storage, `retry`
/// initialises it (the second init of the test) and the job completes.
#[tokio::test]
async fn a_kill_inside_the_init_window_asks_an_operator_to_reset_openbao() {
    if std::env::var("CZ_BAO_DIR").is_ok() {
        return;
    }
    let Some(mut w) = world().await else { return };
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("run");
    std::fs::create_dir_all(&dir).unwrap();
    let (req, _people) = request(tmp.path());
    let (r, sov, job) = submit(&dir, &w, &req, watched(&dir, None).1).await;
    let env = [
        ("CZ_BAO_DIR", dir.display().to_string()),
        ("CZ_BAO_JOB", job.to_string()),
        ("CZ_BAO_PAUSE_MS", "30000".to_string()),
    ];
    let mut child = std::process::Command::new(std::env::current_exe().unwrap())
        .args(["handoff_bao::child_driver", "--exact", "--nocapture", "--test-threads", "1"])
        .envs(env.iter().map(|(k, v)| (*k, v.as_str())))
        .stdout(std::fs::File::create(dir.join("child.log")).unwrap())
        .stderr(std::fs::File::create(dir.join("child.err")).unwrap())
        .spawn()
        .unwrap();
    let started = std::time::Instant::now();
    while !dir.join("init-answered").exists() {
        assert!(
            started.elapsed() < Duration::from_secs(240),
            "init never answered: {}",
            std::fs::read_to_string(dir.join("child.err")).unwrap_or_default()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    child.kill().unwrap(); // SIGKILL, inside the window
    child.wait().unwrap();
    assert!(r.store.escrow(&sov.to_string(), Some(OPENBAO_SHARE)).await.unwrap().is_empty());
    drop(r);

    let (_, bao) = watched(&dir, None);
    let r2 = rig_in(&dir, register, move |d| backend(d, bao)).await;
    assert_eq!(r2.drive(job).await, JobStatus::Paused);
    let stop = r2.stop_reason(job).await;
    assert_eq!(stop["step"], "secrets-handoff/init", "{stop}");
    assert_eq!(stop["error"]["kind"], "precondition", "{stop}");
    assert!(
        stop["error"]["remediation"].as_str().unwrap().contains("delete its volumes"),
        "{stop}"
    );
    assert_eq!(inits(&dir), 1);

    // The operator resets OpenBao's storage (the PVCs), as the runbook says.
    for n in &mut w.bao.nodes {
        n.stop();
        let _ = std::fs::remove_dir_all(n.dir.join("raft"));
        std::fs::create_dir_all(n.dir.join("raft")).unwrap();
    }
    for n in &mut w.bao.nodes {
        n.restart().await;
    }
    Verbs { store: &r2.store }.retry(job, RetryTarget::Failed, "operator").await.unwrap();
    assert_eq!(r2.drive(job).await, JobStatus::Succeeded, "{}", r2.stop_reason(job).await);
    assert_eq!(inits(&dir), 2);
}
