//! The `dns-reserve` and `dns-commit` phases, and destroy's DNS phase,
//! through the real PowerDNS adapter against a real `pdns_server` on
//! loopback, the way an operator's pool runs: the pool zone `omani.works.`
//! exists, each Sovereign gets a child zone and an NS delegation in it,
//! then its records. Every result is checked by DNS queries, with the
//! adapter and independently with `dig`.

mod common;

use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use common::pdns::Pdns;
use cz_phases::adapters::{Backend, DnsApi, Rrset};
use cz_phases::engine::{DriveOutcome, Engine, FailurePolicy, FaultPlan, JobOptions};
use cz_phases::pdns::PowerDns;
use cz_phases::phases::{destroy_plan, dns, preflight, provision_submission, registry};
use cz_phases::plan::{PhaseBuilder, Plan};
use cz_phases::request::{ProvisionRequest, sample_body};
use cz_phases::sim::{SimConfig, sim_backend};
use cz_phases::{ErrorClass, Step, StepCtx, StepResult};
use cz_state::{JobId, JobStatus, SecretString, Store, StorePaths};
use serde_json::{Value, json};
use tokio_util::sync::CancellationToken;

const LB: &str = "203.0.113.10";
const POOL: &str = "omani.works.";

/// `infra/outputs-fsn1` as the infra phase would have left it.
struct Outputs;

#[async_trait]
impl Step for Outputs {
    async fn run(&self, _cx: &StepCtx) -> StepResult<Value> {
        Ok(json!({ "location": "fsn1", "servers": [], "workspace": "/nonexistent",
                   "load_balancer": { "id": 1, "ipv4": LB } }))
    }
    async fn undo(&self, _cx: &StepCtx) -> StepResult<()> {
        Ok(())
    }
}

fn adapter(p: &Pdns) -> PowerDns {
    let dns: SocketAddr = format!("127.0.0.1:{}", p.dns_port).parse().unwrap();
    let key = SecretString::new(p.api_key.clone());
    PowerDns::new(&p.url(), "localhost", key, dns, Duration::from_secs(2)).unwrap()
}

/// A running PowerDNS with the operator's pool zone.
async fn pool() -> Pdns {
    assert!(Pdns::available(), "PowerDNS with the gsqlite3 backend is needed (see .ci/run)");
    let mut p = Pdns::prepare();
    p.start().await;
    let ns: Vec<String> = dns::NAMESERVERS.iter().map(|s| s.to_string()).collect();
    adapter(&p).create_zone(POOL, &ns, "").await.unwrap();
    p
}

fn request(sub: &str) -> ProvisionRequest {
    let recipient = age::x25519::Identity::generate().to_public().to_string();
    let mut body = sample_body("kube", 1, 0, &"s".repeat(64), &recipient);
    body["domain"]["subdomain"] = json!(sub);
    serde_json::from_value(body).unwrap()
}

fn backend_for(dir: &Path, p: &Pdns) -> Backend {
    let mut b = sim_backend(dir.join("sim"), dir.join("ws"), SimConfig::instant());
    b.dns = Arc::new(adapter(p));
    b.poll = Duration::from_millis(20);
    // Short, so that the tests outlive a lease several times.
    b.bounds.dns_lease = Duration::from_secs(1);
    // The propagation gate asks the server itself (no public resolver
    // can be reached from here).
    b.public_resolvers = vec![format!("127.0.0.1:{}", p.dns_port).parse().unwrap()];
    b
}

/// The same outputs after `.0` of work: a slow `infra` phase.
struct SlowOutputs(Duration);

#[async_trait]
impl Step for SlowOutputs {
    async fn run(&self, cx: &StepCtx) -> StepResult<Value> {
        tokio::time::sleep(self.0).await;
        Outputs.run(cx).await
    }
    async fn undo(&self, _cx: &StepCtx) -> StepResult<()> {
        Ok(())
    }
}

fn registry_for() -> cz_phases::Registry {
    let mut reg = registry();
    reg.register("test.outputs", Outputs);
    reg.register("test.slow-outputs", SlowOutputs(Duration::from_secs(4)));
    reg
}

fn plan(req: &ProvisionRequest) -> Plan {
    let mut infra = PhaseBuilder::new("infra");
    infra.step("outputs-fsn1", "test.outputs", &[], Value::Null);
    Plan {
        phases: vec![dns::reserve_phase(), infra.build(), dns::commit_phase(&req.regions, None)],
    }
}

struct Rig {
    store: Store,
    engine: Engine,
    job: JobId,
    fqdn: String,
    sovereign: String,
}

async fn rig_in(
    dir: &Path,
    p: &Pdns,
    req: &ProvisionRequest,
    plan: Plan,
    options: JobOptions,
) -> Rig {
    rig_with(dir, p, req, plan, options, None).await
}

/// `request`: the job's stored request instead of the provision request
/// (a destroy job's `sovereign` block).
async fn rig_with(
    dir: &Path,
    p: &Pdns,
    req: &ProvisionRequest,
    plan: Plan,
    options: JobOptions,
    request: Option<Value>,
) -> Rig {
    let store = Store::open(StorePaths::in_dir(&dir.join("data"))).await.unwrap();
    let (sov, job, mut sub) = provision_submission(req, &options, "test");
    sub.plan = serde_json::to_value(&plan).unwrap();
    if let Some(r) = request {
        sub.request = r;
    }
    store.submit(sub).await.unwrap();
    let engine =
        Engine::new(store.clone(), Arc::new(registry_for()), Arc::new(backend_for(dir, p)));
    Rig { store, engine, job, fqdn: req.fqdn(), sovereign: sov.to_string() }
}

async fn drive(r: &Rig) -> JobStatus {
    let fut = r.engine.drive(r.job, CancellationToken::new());
    match tokio::time::timeout(Duration::from_secs(120), fut).await.expect("bounded").unwrap() {
        DriveOutcome::Stopped(s) => s,
        DriveOutcome::Interrupted => panic!("interrupted"),
    }
}

async fn why(r: &Rig) -> String {
    let j = r.store.get_job(r.job).await.unwrap().unwrap();
    j.pause.or(j.error).map(|v| v.to_string()).unwrap_or_default()
}

/// `dig +short` against the server: an answer independent of our code.
fn dig(p: &Pdns, name: &str, rtype: &str) -> Vec<String> {
    let out = std::process::Command::new("dig")
        .args(["@127.0.0.1", "-p", &p.dns_port.to_string(), "+short", "+norecurse", name, rtype])
        .output()
        .expect("dig (dnsutils)");
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let mut v: Vec<String> =
        String::from_utf8_lossy(&out.stdout).lines().map(str::to_owned).collect();
    v.sort();
    v
}

/// The delegation of `fqdn` as the pool zone holds it (an NS query for
/// the child is answered from the child zone itself, so the parent's side
/// is read through the API).
async fn delegation(p: &Pdns, fqdn: &str) -> Vec<String> {
    let url = format!("{}/api/v1/servers/localhost/zones/{POOL}", p.url());
    let z: Value = reqwest::Client::new()
        .get(url)
        .header("X-API-Key", &p.api_key)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let mut ns: Vec<String> = z["rrsets"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|r| r["name"] == format!("{fqdn}.") && r["type"] == "NS")
        .flat_map(|r| r["records"].as_array().unwrap().iter())
        .map(|r| r["content"].as_str().unwrap().to_owned())
        .collect();
    ns.sort();
    ns
}

fn nameservers() -> Vec<String> {
    let mut v: Vec<String> = dns::NAMESERVERS.iter().map(|s| s.to_string()).collect();
    v.sort();
    v
}

async fn assert_served(p: &Pdns, fqdn: &str) {
    assert_eq!(delegation(p, fqdn).await, nameservers());
    assert_eq!(dig(p, fqdn, "NS"), nameservers());
    for n in ["", "console.", "api.", "gitea.", "harbor.", "anything-else."] {
        assert_eq!(dig(p, &format!("{n}{fqdn}"), "A"), [LB], "{n}{fqdn}");
    }
}

async fn assert_gone(p: &Pdns, fqdn: &str) {
    assert!(!adapter(p).zone_exists(fqdn).await.unwrap());
    assert!(delegation(p, fqdn).await.is_empty());
    assert!(dig(p, &format!("console.{fqdn}"), "A").is_empty());
}

/// A destroy job's DNS phase, with the request a destroy job stores (the
/// Sovereign's block).
async fn destroy_dns(dir: &Path, p: &Pdns, req: &ProvisionRequest) -> Rig {
    let plan = destroy_plan(&["fsn1".to_owned()]);
    let dns_only = plan.phases.into_iter().filter(|ph| ph.id == "dns").collect();
    let request = json!({ "sovereign": { "fqdn": req.fqdn(), "pool_domain": "omani.works" },
                          "regions": [{ "location": "fsn1" }] });
    rig_with(dir, p, req, Plan { phases: dns_only }, JobOptions::default(), Some(request)).await
}

#[tokio::test]
async fn reserve_commit_verify_by_dns_then_destroy_leaves_nothing() {
    let p = pool().await;
    let tmp = tempfile::tempdir().unwrap();
    let req = request("acme");
    let r = rig_in(tmp.path(), &p, &req, plan(&req), JobOptions::default()).await;
    assert_eq!(drive(&r).await, JobStatus::Succeeded, "{}", why(&r).await);
    assert_served(&p, &r.fqdn).await;

    // A second Sovereign with the same name is refused before any write.
    let tmp2 = tempfile::tempdir().unwrap();
    let pre = Plan { phases: vec![preflight::phase(&req.regions, true)] };
    let again = rig_in(tmp2.path(), &p, &req, pre, JobOptions::default()).await;
    let status = drive(&again).await;
    assert!(matches!(status, JobStatus::Paused | JobStatus::Failed), "{status}");
    let w = why(&again).await;
    assert!(w.contains("preflight/names-free") && w.contains("already exists"), "{w}");

    // Destroy's DNS phase: delegation, then zone; twice is the same.
    let tmp3 = tempfile::tempdir().unwrap();
    let d = destroy_dns(tmp3.path(), &p, &req).await;
    assert_eq!(drive(&d).await, JobStatus::Succeeded, "{}", why(&d).await);
    assert_gone(&p, &r.fqdn).await;
    let tmp4 = tempfile::tempdir().unwrap();
    let d2 = destroy_dns(tmp4.path(), &p, &req).await;
    assert_eq!(drive(&d2).await, JobStatus::Succeeded, "{}", why(&d2).await);
    // The pool zone itself is untouched.
    assert!(adapter(&p).zone_exists(POOL).await.unwrap());
}

#[tokio::test]
async fn a_failure_after_commit_unwinds_records_delegation_and_zone() {
    let p = pool().await;
    let tmp = tempfile::tempdir().unwrap();
    let req = request("unwind");
    let faults = FaultPlan {
        fail: [("dns-commit/propagation".to_owned(), ErrorClass::Terminal)].into(),
        ..FaultPlan::default()
    };
    let options =
        JobOptions { faults, on_failure: FailurePolicy::Rollback, ..JobOptions::default() };
    let r = rig_in(tmp.path(), &p, &req, plan(&req), options).await;
    assert_eq!(drive(&r).await, JobStatus::Failed, "{}", why(&r).await);
    assert_gone(&p, &r.fqdn).await;
}

#[tokio::test]
async fn every_step_twice_serves_the_same_zone() {
    let p = pool().await;
    let tmp = tempfile::tempdir().unwrap();
    let req = request("twice");
    let repeat: BTreeSet<String> =
        plan(&req).phases.iter().flat_map(|ph| ph.nodes.iter().map(|n| n.id.clone())).collect();
    let options = JobOptions {
        faults: FaultPlan { repeat, ..FaultPlan::default() },
        ..JobOptions::default()
    };
    let r = rig_in(tmp.path(), &p, &req, plan(&req), options).await;
    assert_eq!(drive(&r).await, JobStatus::Succeeded, "{}", why(&r).await);
    assert_served(&p, &r.fqdn).await;
}

/// The child half of the kill -9 test.
#[tokio::test]
async fn child_driver() {
    let Ok(dir) = std::env::var("CZ_DNS_DIR") else { return };
    let dir = PathBuf::from(dir);
    let job: JobId = std::env::var("CZ_DNS_JOB").unwrap().parse().unwrap();
    let p = Pdns::attach(
        std::env::var("CZ_DNS_API").unwrap().parse().unwrap(),
        std::env::var("CZ_DNS_PORT").unwrap().parse().unwrap(),
        std::env::var("CZ_DNS_KEY").unwrap(),
    );
    let store = Store::open(StorePaths::in_dir(&dir.join("data"))).await.unwrap();
    let mut b = backend_for(&dir, &p);
    // byo-api: the parent's fake registrars, and its world as a resolver.
    if let Ok(base) = std::env::var("CZ_DNS_REGISTRARS") {
        let e = cz_phases::registrar::Endpoints::under(&base);
        b.registrars = Arc::new(HttpRegistrars::new(e, Duration::from_secs(5)));
        b.public_resolvers.push(std::env::var("CZ_DNS_WORLD").unwrap().parse().unwrap());
    }
    let engine = Engine::new(store.clone(), Arc::new(registry_for()), Arc::new(b));
    common::kill9::drive_logging_steps(&engine, &store, job, &dir).await;
}

/// What `child_driver` needs to drive `job` in `dir` against `p`.
fn child_env(dir: &Path, job: JobId, p: &Pdns) -> Vec<(&'static str, String)> {
    vec![
        ("CZ_DNS_DIR", dir.display().to_string()),
        ("CZ_DNS_JOB", job.to_string()),
        ("CZ_DNS_API", p.api_port.to_string()),
        ("CZ_DNS_PORT", p.dns_port.to_string()),
        ("CZ_DNS_KEY", p.api_key.clone()),
    ]
}

/// SIGKILL of the driving process inside every step, between zone and
/// delegation included: fresh processes resume from the store and the
/// Sovereign ends served exactly once.
#[tokio::test]
async fn kill9_inside_every_step_between_zone_and_delegation_included() {
    if std::env::var("CZ_DNS_DIR").is_ok() {
        return;
    }
    let p = pool().await;
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().to_owned();
    let req = request("killed");
    // Slow motion (a pause after every journal write), so that every step,
    // however fast, is seen running and killed inside.
    let options = JobOptions {
        faults: FaultPlan { slow_ms: 30, ..FaultPlan::default() },
        ..JobOptions::default()
    };
    let r = rig_in(&dir, &p, &req, plan(&req), options).await;
    let (job, fqdn) = (r.job, r.fqdn.clone());
    drop(r);
    let env = child_env(&dir, job, &p);
    let (killed, starts, outcome) =
        common::kill9::kill_inside_every_step("child_driver", &env, &dir).await;
    assert_eq!(outcome, "Stopped(Succeeded)");
    assert!(killed.contains("dns-reserve/zone"), "{killed:?}");
    assert!(killed.contains("dns-reserve/delegation"), "{killed:?}");
    assert_served(&p, &fqdn).await;
    eprintln!("kill -9 inside {} steps, {starts} driver processes", killed.len());
}

#[tokio::test]
async fn records_are_replaced_in_one_patch_and_a_changed_address_is_served() {
    let p = pool().await;
    let d = adapter(&p);
    let ns: Vec<String> = dns::NAMESERVERS.iter().map(|s| s.to_string()).collect();
    d.create_zone("moved.omani.works.", &ns, "").await.unwrap();
    let rr = |ip: &str| Rrset {
        name: "moved.omani.works.".into(),
        rtype: "A".into(),
        ttl: 300,
        records: vec![ip.into()],
    };
    d.replace_rrsets("moved.omani.works.", &[rr("203.0.113.1")]).await.unwrap();
    d.replace_rrsets("moved.omani.works.", &[rr("203.0.113.2")]).await.unwrap();
    assert_eq!(dig(&p, "moved.omani.works", "A"), ["203.0.113.2"]);
}

/// One round of the daemon's lease keeper (its own code), over this
/// store's jobs, sweeping leases that ran out more than `grace` ago.
async fn keeper_round_with(store: &Store, d: &PowerDns, grace: Duration) -> Vec<String> {
    let jobs = store.list_jobs(None).await.unwrap();
    let ttl = Duration::from_secs(1);
    dns::keep_leases(d, &jobs, &[POOL], ttl, grace).await.unwrap().1
}

async fn keeper_round(store: &Store, d: &PowerDns) -> Vec<String> {
    keeper_round_with(store, d, Duration::ZERO).await
}

fn slow_plan(req: &ProvisionRequest) -> Plan {
    let mut infra = PhaseBuilder::new("infra");
    infra.step("outputs-fsn1", "test.slow-outputs", &[], Value::Null);
    Plan {
        phases: vec![dns::reserve_phase(), infra.build(), dns::commit_phase(&req.regions, None)],
    }
}

/// F-43: an `infra` phase four times longer than the lease, with the
/// keeper sweeping every 200 ms, does not lose the zone; the commit ends
/// the lease, and a committed zone is never swept.
#[tokio::test]
async fn a_slow_infra_keeps_its_reservation_while_the_lease_is_renewed() {
    let p = pool().await;
    let tmp = tempfile::tempdir().unwrap();
    let req = request("slow");
    let r = rig_in(tmp.path(), &p, &req, slow_plan(&req), JobOptions::default()).await;
    let d = adapter(&p);
    let zone = format!("{}.", r.fqdn);
    let keeper = async {
        let mut swept = Vec::new();
        let mut renewed_seen = 0;
        loop {
            swept.extend(keeper_round(&r.store, &d).await);
            let lease = d.zone_meta(&zone, dns::LEASE_META).await.unwrap_or_default();
            renewed_seen += usize::from(!lease.is_empty());
            let j = r.store.get_job(r.job).await.unwrap().unwrap();
            if j.status == JobStatus::Succeeded {
                return (swept, renewed_seen);
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    };
    let (status, (swept, renewed_seen)) = tokio::join!(drive(&r), keeper);
    assert_eq!(status, JobStatus::Succeeded, "{}", why(&r).await);
    assert!(swept.is_empty(), "{swept:?}");
    assert!(renewed_seen >= 10, "the lease was seen held only {renewed_seen} times");
    assert_served(&p, &r.fqdn).await;
    assert_eq!(d.zone_account(&zone).await.unwrap(), Some(dns::owner(&r.sovereign)));
    // Committed: no lease, and the sweeper leaves it alone.
    assert!(d.zone_meta(&zone, dns::LEASE_META).await.unwrap().is_empty());
    tokio::time::sleep(Duration::from_millis(1100)).await;
    assert!(keeper_round(&r.store, &d).await.is_empty());
    assert_served(&p, &r.fqdn).await;
}

/// A reservation whose job is gone is swept once its lease runs out, with
/// its delegation; a commit after that fails loudly (not found) instead of
/// declaring the Sovereign ready.
#[tokio::test]
async fn an_abandoned_reservation_is_swept_and_a_late_commit_fails_loudly() {
    let p = pool().await;
    let d = adapter(&p);
    let tmp = tempfile::tempdir().unwrap();
    let req = request("gone");
    // Reserve only: the job ends, nobody renews.
    let r = rig_in(
        tmp.path(),
        &p,
        &req,
        Plan { phases: vec![dns::reserve_phase()] },
        JobOptions::default(),
    )
    .await;
    assert_eq!(drive(&r).await, JobStatus::Succeeded, "{}", why(&r).await);
    assert_eq!(delegation(&p, &r.fqdn).await, nameservers());
    // Not while the lease (1 s, whole seconds) plus a grace runs.
    assert!(keeper_round_with(&r.store, &d, Duration::from_secs(5)).await.is_empty());
    tokio::time::sleep(Duration::from_millis(2100)).await;
    assert_eq!(keeper_round(&r.store, &d).await, [format!("{}.", r.fqdn)]);
    assert_gone(&p, &r.fqdn).await;

    let mut infra = PhaseBuilder::new("infra");
    infra.step("outputs-fsn1", "test.outputs", &[], Value::Null);
    let late = Plan { phases: vec![infra.build(), dns::commit_phase(&req.regions, None)] };
    let tmp2 = tempfile::tempdir().unwrap();
    let c = rig_in(tmp2.path(), &p, &req, late, JobOptions::default()).await;
    assert_eq!(drive(&c).await, JobStatus::Paused);
    let w = why(&c).await;
    assert!(w.contains("dns-commit/records") && w.contains("not-found"), "{w}");
}

/// A zone someone else made under the same name is not adopted.
#[tokio::test]
async fn a_zone_another_owner_made_is_a_conflict_not_adopted() {
    let p = pool().await;
    let d = adapter(&p);
    let ns: Vec<String> = dns::NAMESERVERS.iter().map(|s| s.to_string()).collect();
    d.create_zone("taken.omani.works.", &ns, "someone-else").await.unwrap();
    let tmp = tempfile::tempdir().unwrap();
    let req = request("taken");
    let r = rig_in(tmp.path(), &p, &req, plan(&req), JobOptions::default()).await;
    assert_eq!(drive(&r).await, JobStatus::Paused);
    let w = why(&r).await;
    assert!(w.contains("dns-reserve/zone") && w.contains("someone-else"), "{w}");
    // Still theirs, unleased, undelegated.
    assert_eq!(
        d.zone_account("taken.omani.works.").await.unwrap().as_deref(),
        Some("someone-else")
    );
    assert!(d.zone_meta("taken.omani.works.", dns::LEASE_META).await.unwrap().is_empty());
    assert!(delegation(&p, "taken.omani.works").await.is_empty());
}

/// F-44: the job is not done while a public resolver does not see the
/// Sovereign yet. A second PowerDNS stands for a public resolver that has
/// not caught up: until it serves the zone the gate reports it, past the
/// bound the job pauses with what it last saw, and once it serves the
/// records a retry passes.
#[tokio::test]
async fn the_propagation_gate_waits_for_every_public_resolver() {
    let p = pool().await;
    let mut lagging = Pdns::prepare();
    lagging.start().await;
    let tmp = tempfile::tempdir().unwrap();
    let req = request("propagating");
    let r = rig_in(tmp.path(), &p, &req, plan(&req), JobOptions::default()).await;
    // Re-made with the lagging resolver as well, and a short bound.
    let mut b = backend_for(tmp.path(), &p);
    let lag: SocketAddr = format!("127.0.0.1:{}", lagging.dns_port).parse().unwrap();
    b.public_resolvers.push(lag);
    b.bounds.dns_propagation = Duration::from_secs(2);
    let engine = Engine::new(r.store.clone(), Arc::new(registry_for()), Arc::new(b));
    let r = Rig { engine, ..r };
    assert_eq!(drive(&r).await, JobStatus::Paused);
    let w = why(&r).await;
    assert!(w.contains("dns-commit/propagation") && w.contains(&lag.to_string()), "{w}");
    assert!(w.contains("refused"), "what the lagging resolver said: {w}");
    let events: Vec<Value> = r
        .store
        .events_after(r.job, 0, 100_000)
        .await
        .unwrap()
        .into_iter()
        .filter(|e| e.kind == "dns")
        .map(|e| e.body)
        .collect();
    assert!(events.iter().any(|e| e["resolver"] == lag.to_string() && e["propagated"] == false));
    // The resolver catches up (here: it gets the zone); the operator retries.
    let d2 = adapter(&lagging);
    let ns: Vec<String> = dns::NAMESERVERS.iter().map(|s| s.to_string()).collect();
    d2.create_zone(&format!("{}.", r.fqdn), &ns, "").await.unwrap();
    let rrs: Vec<Rrset> = ["", "*.", "console.", "api.", "gitea.", "harbor."]
        .iter()
        .map(|n| Rrset {
            name: format!("{n}{}.", r.fqdn),
            rtype: "A".into(),
            ttl: 300,
            records: vec![LB.into()],
        })
        .collect();
    d2.replace_rrsets(&format!("{}.", r.fqdn), &rrs).await.unwrap();
    cz_phases::engine::Verbs { store: &r.store }
        .retry(r.job, cz_phases::engine::RetryTarget::Failed, "test")
        .await
        .unwrap();
    assert_eq!(drive(&r).await, JobStatus::Succeeded, "{}", why(&r).await);
}

/// byo-manual: the customer points their domain's NS at us by hand. The
/// job waits (bounded) and streams what the resolvers see: here a second
/// PowerDNS stands for the world, still serving the registrar's old NS.
/// Once the customer's change is visible, the job goes on to commit and
/// the propagation gate.
#[tokio::test]
async fn byo_manual_waits_for_the_customers_ns_change_and_streams_it() {
    let p = pool().await;
    let mut world = Pdns::prepare();
    world.start().await;
    let w = adapter(&world);
    let old = vec!["ns1.registrar.example.".to_owned()];
    w.create_zone("customer.example.", &old, "").await.unwrap();

    let recipient = age::x25519::Identity::generate().to_public().to_string();
    let mut body = sample_body("byo", 1, 0, &"s".repeat(64), &recipient);
    body["domain"] = json!({ "mode": "byo-manual", "fqdn": "customer.example" });
    let req: ProvisionRequest = serde_json::from_value(body).unwrap();
    let tmp = tempfile::tempdir().unwrap();
    let r = rig_in(tmp.path(), &p, &req, plan(&req), JobOptions::default()).await;
    let mut b = backend_for(tmp.path(), &p);
    let seen_by_world: SocketAddr = format!("127.0.0.1:{}", world.dns_port).parse().unwrap();
    b.public_resolvers.push(seen_by_world);
    let engine = Engine::new(r.store.clone(), Arc::new(registry_for()), Arc::new(b));
    let r = Rig { engine, ..r };

    let customer = async {
        // Wait until the job reports the old NS, then make the change.
        loop {
            let evs = r.store.events_after(r.job, 0, 100_000).await.unwrap();
            let reported = evs.iter().any(|e| {
                e.kind == "dns"
                    && e.body["resolver"] == seen_by_world.to_string()
                    && e.body["message"]
                        .as_str()
                        .is_some_and(|m| m.contains("ns1.registrar.example."))
            });
            if reported {
                break;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let j = r.store.get_job(r.job).await.unwrap().unwrap();
        assert_eq!(j.status, JobStatus::Running, "the job waits for the customer");
        let ns = Rrset {
            name: "customer.example.".into(),
            rtype: "NS".into(),
            ttl: 300,
            records: dns::NAMESERVERS.iter().map(|s| s.to_string()).collect(),
        };
        w.replace_rrsets("customer.example.", &[ns]).await.unwrap();
        // The world now resolves through our servers: our records.
        let rrs: Vec<Rrset> = ["", "*.", "console.", "api.", "gitea.", "harbor."]
            .iter()
            .map(|n| Rrset {
                name: format!("{n}customer.example."),
                rtype: "A".into(),
                ttl: 300,
                records: vec![LB.into()],
            })
            .collect();
        w.replace_rrsets("customer.example.", &rrs).await.unwrap();
    };
    let (status, ()) = tokio::join!(drive(&r), customer);
    assert_eq!(status, JobStatus::Succeeded, "{}", why(&r).await);
    // Ours: served by our server, and no pool delegation was written.
    assert_eq!(dig(&p, "console.customer.example", "A"), [LB]);
    assert!(delegation(&p, "customer.example").await.is_empty());
}

// ---- byo-api: the customer's registrar, through its API ----

use cz_phases::registrar::fake::FakeRegistrars;
use cz_phases::registrar::{HttpRegistrars, sorted};
use cz_phases::request::Registrar;

/// A customer at a registrar: the token, the Sovereign's domain, the zone
/// the registrar holds it in (Cloudflare: the customer's zone; otherwise
/// the domain itself) and where it points before.
struct Customer {
    r: Registrar,
    token: &'static str,
    fqdn: &'static str,
    zone: &'static str,
    before: &'static [&'static str],
}

const CUSTOMERS: [Customer; 5] = [
    Customer {
        r: Registrar::Cloudflare,
        token: "cf-token-1",
        fqdn: "k8s.acme-cf.com",
        zone: "acme-cf.com",
        before: &[],
    },
    Customer {
        r: Registrar::Namecheap,
        token: "acme:nc-key:203.0.113.7",
        fqdn: "acme-nc.io",
        zone: "acme-nc.io",
        before: &["dns1.registrar-servers.com", "dns2.registrar-servers.com"],
    },
    Customer {
        r: Registrar::Godaddy,
        token: "gd-key:gd-secret",
        fqdn: "acme-gd.net",
        zone: "acme-gd.net",
        before: &["ns55.domaincontrol.com", "ns56.domaincontrol.com"],
    },
    Customer {
        r: Registrar::Ovh,
        token: "ovh-app:ovh-secret:ovh-consumer",
        fqdn: "acme-ovh.fr",
        zone: "acme-ovh.fr",
        before: &["dns110.ovh.net", "ns110.ovh.net"],
    },
    Customer {
        r: Registrar::Dynadot,
        token: "dyn-key",
        fqdn: "acme-dyn.org",
        zone: "acme-dyn.org",
        before: &["ns1.dyna-ns.net", "ns2.dyna-ns.net"],
    },
];

fn owned(v: &[&str]) -> Vec<String> {
    v.iter().map(|s| s.to_string()).collect()
}

fn byo_api_request(c: &Customer) -> ProvisionRequest {
    let recipient = age::x25519::Identity::generate().to_public().to_string();
    let mut body = sample_body("byo", 1, 0, &"s".repeat(64), &recipient);
    body["domain"] = json!({ "mode": "byo-api", "fqdn": c.fqdn, "registrar": c.r,
                             "registrar_token": c.token });
    serde_json::from_value(body).unwrap()
}

/// Pre-flight's registrar check, then the DNS phases.
fn byo_api_plan(req: &ProvisionRequest) -> Plan {
    let mut pre = PhaseBuilder::new("preflight");
    pre.step("registrar", "preflight.registrar", &[], json!({ "dns": true }));
    let mut p = plan(req);
    p.phases.insert(0, pre.build());
    p
}

/// The registrars, and the world: a second PowerDNS that stands for the
/// TLD servers and resolvers. It follows the registrars: a domain
/// delegated to us resolves through our servers (our NS, the Sovereign's
/// records); otherwise to what the registrar has.
struct ByoWorld {
    fake: FakeRegistrars,
    world: Pdns,
}

impl ByoWorld {
    async fn start() -> ByoWorld {
        let fake = FakeRegistrars::start().await;
        let mut world = Pdns::prepare();
        world.start().await;
        let w = adapter(&world);
        for c in &CUSTOMERS {
            if c.r == Registrar::Cloudflare {
                fake.domain(
                    c.r,
                    c.token,
                    c.zone,
                    &["ada.ns.cloudflare.com", "bob.ns.cloudflare.com"],
                );
            } else {
                fake.domain(c.r, c.token, c.zone, c.before);
            }
            let ns = vec!["ns1.parked.example.".to_owned()];
            w.create_zone(&format!("{}.", c.fqdn), &ns, "").await.unwrap();
        }
        ByoWorld { fake, world }
    }

    fn resolver(&self) -> SocketAddr {
        format!("127.0.0.1:{}", self.world.dns_port).parse().unwrap()
    }

    /// The world catches up with the registrars, every 50 ms.
    async fn follow(&self) {
        let w = adapter(&self.world);
        loop {
            for c in &CUSTOMERS {
                let at = sorted(&self.fake.nameservers(c.r, c.fqdn));
                let ours = sorted(&nameservers());
                let zone = format!("{}.", c.fqdn);
                let mut rrs = vec![Rrset {
                    name: zone.clone(),
                    rtype: "NS".into(),
                    ttl: 60,
                    records: if at == ours {
                        nameservers()
                    } else {
                        vec!["ns1.parked.example.".into()]
                    },
                }];
                for n in ["", "*.", "console.", "api.", "gitea.", "harbor."] {
                    rrs.push(Rrset {
                        name: format!("{n}{zone}"),
                        rtype: "A".into(),
                        ttl: 60,
                        records: vec![if at == ours { LB } else { "192.0.2.99" }.into()],
                    });
                }
                w.replace_rrsets(&zone, &rrs).await.unwrap();
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// A rig whose backend reaches the fake registrars and asks the world.
    async fn rig(
        &self,
        dir: &Path,
        p: &Pdns,
        req: &ProvisionRequest,
        plan: Plan,
        o: JobOptions,
        request: Option<Value>,
    ) -> Rig {
        let r = rig_with(dir, p, req, plan, o, request).await;
        let mut b = backend_for(dir, p);
        b.registrars = Arc::new(HttpRegistrars::new(self.fake.endpoints(), Duration::from_secs(5)));
        b.public_resolvers.push(self.resolver());
        let engine = Engine::new(r.store.clone(), Arc::new(registry_for()), Arc::new(b));
        Rig { engine, ..r }
    }
}

/// Drives `r` while the world follows the registrars.
async fn drive_in(world: &ByoWorld, r: &Rig) -> JobStatus {
    tokio::select! {
        s = drive(r) => s,
        () = world.follow() => unreachable!(),
    }
}

/// Destroy's DNS phase for a byo-api Sovereign (its block names the registrar).
async fn destroy_byo(world: &ByoWorld, dir: &Path, p: &Pdns, c: &Customer) -> Rig {
    let plan = destroy_plan(&["fsn1".to_owned()]);
    let dns_only = plan.phases.into_iter().filter(|ph| ph.id == "dns").collect();
    let request = json!({ "sovereign": { "fqdn": c.fqdn, "registrar": c.r },
                          "regions": [{ "location": "fsn1" }] });
    let req = byo_api_request(c);
    world.rig(dir, p, &req, Plan { phases: dns_only }, JobOptions::default(), Some(request)).await
}

/// Against each of the five registrars: pre-flight reads where the domain
/// points, the job has the registrar delegate it to us, waits for the
/// registrar and the world to say so, commits and passes the propagation
/// gate; destroy gives the registrar its old delegation back and leaves
/// no zone.
#[tokio::test]
async fn byo_api_each_registrar_delegates_then_destroy_gives_it_back() {
    let p = pool().await;
    let world = ByoWorld::start().await;
    for c in &CUSTOMERS {
        // Signed: Cloudflare publishes the DS, the registrars ask the customer.
        let mut req = byo_api_request(c);
        req.dnssec = true;
        let tmp = tempfile::tempdir().unwrap();
        let r =
            world.rig(tmp.path(), &p, &req, byo_api_plan(&req), JobOptions::default(), None).await;
        let status = drive_in(&world, &r).await;
        assert_eq!(status, JobStatus::Succeeded, "{:?}: {}", c.r, why(&r).await);
        assert_eq!(
            sorted(&world.fake.nameservers(c.r, c.fqdn)),
            sorted(&nameservers()),
            "{:?}",
            c.r
        );
        assert_eq!(dig(&p, &format!("console.{}", c.fqdn), "A"), [LB], "{:?}", c.r);
        // What it pointed at before is kept on our zone.
        let prev =
            adapter(&p).zone_meta(&format!("{}.", c.fqdn), dns::PREVIOUS_NS_META).await.unwrap();
        let prev: Value = serde_json::from_str(&prev[0]).unwrap();
        assert_eq!(prev["nameservers"], json!(c.before), "{:?}", c.r);
        let evs = r.store.events_after(r.job, 0, 100_000).await.unwrap();
        let said = evs.iter().any(|e| {
            e.kind == "dns"
                && e.body["message"].as_str().is_some_and(|m| {
                    m.contains(&format!("{}: {} delegated to", c.r.title(), c.fqdn))
                })
        });
        assert!(said, "{:?}: no delegation event", c.r);
        let deleg = output(&r, "dns-reserve/delegation").await;
        let ds: Vec<String> = serde_json::from_value(deleg["ds"].clone()).unwrap();
        assert!(!ds.is_empty(), "{:?}: signed", c.r);
        let published = c.r == Registrar::Cloudflare;
        assert_eq!(deleg["ds_published"], published, "{:?}", c.r);
        let norm = |v: &[String]| {
            let mut v: Vec<String> = v.iter().map(|d| d.to_ascii_lowercase()).collect();
            v.sort();
            v
        };
        if published {
            let shown = world.fake.cloudflare_records(c.fqdn, "DS");
            assert_eq!(norm(&shown), norm(&ds), "the zone's own DS, beside its NS");
        } else {
            let asked = evs.iter().any(|e| {
                e.kind == "log"
                    && e.body["message"]
                        .as_str()
                        .is_some_and(|m| m.contains("add these DS records"))
            });
            assert!(asked, "{:?}: the customer is asked to add the DS", c.r);
        }
        // Nothing secret in the journal.
        let journal =
            serde_json::to_string(&evs.iter().map(|e| &e.body).collect::<Vec<_>>()).unwrap();
        assert!(!journal.contains(c.token), "{:?}", c.r);

        // Destroy: the registrar delegates back, and the zone is gone; twice is the same.
        for _ in 0..2 {
            let tmp = tempfile::tempdir().unwrap();
            let d = destroy_byo(&world, tmp.path(), &p, c).await;
            assert_eq!(
                drive_in(&world, &d).await,
                JobStatus::Succeeded,
                "{:?}: {}",
                c.r,
                why(&d).await
            );
            assert_eq!(
                sorted(&world.fake.nameservers(c.r, c.fqdn)),
                sorted(&owned(c.before)),
                "{:?}",
                c.r
            );
            assert!(!adapter(&p).zone_exists(c.fqdn).await.unwrap(), "{:?}", c.r);
            assert!(world.fake.cloudflare_records(c.fqdn, "DS").is_empty(), "{:?}", c.r);
        }
    }
}

/// A failure after the delegation unwinds it: the registrar points where
/// it did, every step done and undone twice. A customer's own change made
/// meanwhile is left alone. A token the registrar refuses stops the job in
/// pre-flight, before any zone or registrar write.
#[tokio::test]
async fn byo_api_unwind_restores_the_registrar_and_a_bad_token_spends_nothing() {
    let p = pool().await;
    let world = ByoWorld::start().await;
    let c = &CUSTOMERS[2]; // GoDaddy
    let req = byo_api_request(c);
    let nodes: BTreeSet<String> = byo_api_plan(&req)
        .phases
        .iter()
        .flat_map(|ph| ph.nodes.iter().map(|n| n.id.clone()))
        .collect();
    let faults = FaultPlan {
        fail: [("dns-commit/records".to_owned(), ErrorClass::Terminal)].into(),
        repeat: nodes.clone(),
        repeat_undo: nodes,
        ..FaultPlan::default()
    };
    let options =
        JobOptions { faults, on_failure: FailurePolicy::Rollback, ..JobOptions::default() };
    let tmp = tempfile::tempdir().unwrap();
    let r = world.rig(tmp.path(), &p, &req, byo_api_plan(&req), options, None).await;
    assert_eq!(drive_in(&world, &r).await, JobStatus::Failed, "{}", why(&r).await);
    assert_eq!(sorted(&world.fake.nameservers(c.r, c.fqdn)), sorted(&owned(c.before)));
    assert!(!adapter(&p).zone_exists(c.fqdn).await.unwrap());

    // The customer moves the domain while the job is paused; cancelling
    // it then leaves their choice.
    let c = &CUSTOMERS[4]; // Dynadot
    let req = byo_api_request(c);
    let faults = FaultPlan {
        fail: [("dns-commit/records".to_owned(), ErrorClass::NeedsOperator)].into(),
        ..FaultPlan::default()
    };
    let tmp = tempfile::tempdir().unwrap();
    let r = world
        .rig(
            tmp.path(),
            &p,
            &req,
            byo_api_plan(&req),
            JobOptions { faults, ..JobOptions::default() },
            None,
        )
        .await;
    assert_eq!(drive_in(&world, &r).await, JobStatus::Paused, "{}", why(&r).await);
    world.fake.set_by_hand(c.r, c.fqdn, &["ns1.elsewhere.example", "ns2.elsewhere.example"]);
    cz_phases::engine::Verbs { store: &r.store }.cancel(r.job, "test").await.unwrap();
    assert_eq!(drive_in(&world, &r).await, JobStatus::Cancelled, "{}", why(&r).await);
    assert_eq!(
        world.fake.nameservers(c.r, c.fqdn),
        ["ns1.elsewhere.example", "ns2.elsewhere.example"]
    );
    assert!(!adapter(&p).zone_exists(c.fqdn).await.unwrap());

    // A Namecheap key the registrar does not know: pre-flight says so.
    let mut bad = CUSTOMERS[1].token.replace("nc-key", "nc-wrong");
    let c = &CUSTOMERS[1];
    let mut req = byo_api_request(c);
    if let cz_phases::request::Domain::ByoApi { registrar_token, .. } = &mut req.domain {
        *registrar_token = SecretString::new(std::mem::take(&mut bad));
    }
    let tmp = tempfile::tempdir().unwrap();
    let r = world.rig(tmp.path(), &p, &req, byo_api_plan(&req), JobOptions::default(), None).await;
    let status = drive_in(&world, &r).await;
    assert!(matches!(status, JobStatus::Paused | JobStatus::Failed), "{status}");
    let w = why(&r).await;
    assert!(
        w.contains("preflight/registrar") && w.contains("1011102") && w.contains("unauthorized"),
        "{w}"
    );
    assert!(!w.contains("nc-wrong"), "{w}");
    assert!(!adapter(&p).zone_exists(c.fqdn).await.unwrap());
    assert!(world.fake.writes(c.r).is_empty(), "{:?}", world.fake.writes(c.r));
}

/// DNSSEC on request: the zone is signed, its DS goes into the pool zone
/// with the NS (one PATCH), the chain answers over DNS before the job goes
/// on, and destroy removes the DS with the delegation.
#[tokio::test]
async fn dnssec_on_request_signs_the_zone_and_publishes_its_ds_in_the_pool() {
    let p = pool().await;
    let tmp = tempfile::tempdir().unwrap();
    let mut req = request("signed");
    req.dnssec = true;
    let r = rig_in(tmp.path(), &p, &req, plan(&req), JobOptions::default()).await;
    assert_eq!(drive(&r).await, JobStatus::Succeeded, "{}", why(&r).await);
    assert_served(&p, &r.fqdn).await;

    let ds: Vec<String> =
        serde_json::from_value(output(&r, "dns-reserve/zone").await["ds"].clone()).unwrap();
    assert!(!ds.is_empty());
    assert_eq!(output(&r, "dns-reserve/verify-delegation").await["dnssec"], true);
    // The parent answers the DS; the child its key and signed records.
    // dig writes the digest uppercase, in groups.
    let lower = |v: Vec<String>| {
        let mut v: Vec<String> = v
            .into_iter()
            .map(|s| {
                let f: Vec<&str> = s.split_whitespace().collect();
                format!("{} {} {} {}", f[0], f[1], f[2], f[3..].concat()).to_ascii_lowercase()
            })
            .collect();
        v.sort();
        v
    };
    assert_eq!(lower(dig(&p, &r.fqdn, "DS")), lower(ds.clone()));
    assert!(!dig(&p, &r.fqdn, "DNSKEY").is_empty());
    let out = std::process::Command::new("dig")
        .args(["@127.0.0.1", "-p", &p.dns_port.to_string(), "+norecurse", "+dnssec"])
        .arg(format!("console.{}", r.fqdn))
        .arg("A")
        .output()
        .unwrap();
    let full = String::from_utf8_lossy(&out.stdout);
    assert!(full.contains("RRSIG") && full.contains(LB), "{full}");

    let tmp2 = tempfile::tempdir().unwrap();
    let d = destroy_dns(tmp2.path(), &p, &req).await;
    assert_eq!(drive(&d).await, JobStatus::Succeeded, "{}", why(&d).await);
    assert_gone(&p, &r.fqdn).await;
    assert!(dig(&p, &r.fqdn, "DS").is_empty());
}

/// A step's recorded output.
async fn output(r: &Rig, node: &str) -> Value {
    r.store
        .journal(r.job)
        .await
        .unwrap()
        .into_iter()
        .find_map(|e| match e.event {
            cz_state::StepEvent::Succeeded { output } if e.node == node => Some(output),
            _ => None,
        })
        .unwrap_or_else(|| panic!("{node} has no output"))
}

/// SIGKILL inside every step of a byo-api job at Cloudflare (whose
/// delegation is records, so a duplicate would show): fresh processes
/// resume, the subdomain ends with exactly our three NS records, and what
/// it pointed at before is still recorded as before.
#[tokio::test]
async fn kill9_inside_every_step_of_a_byo_api_job() {
    if std::env::var("CZ_DNS_DIR").is_ok() {
        return;
    }
    let p = pool().await;
    let world = ByoWorld::start().await;
    let c = &CUSTOMERS[0];
    let req = byo_api_request(c);
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().to_owned();
    let options = JobOptions {
        faults: FaultPlan { slow_ms: 30, ..FaultPlan::default() },
        ..JobOptions::default()
    };
    let r = world.rig(&dir, &p, &req, byo_api_plan(&req), options, None).await;
    let job = r.job;
    drop(r);
    let mut env = child_env(&dir, job, &p);
    env.push(("CZ_DNS_REGISTRARS", world.fake.url()));
    env.push(("CZ_DNS_WORLD", world.resolver().to_string()));
    let (killed, starts, outcome) = tokio::select! {
        r = common::kill9::kill_inside_every_step("child_driver", &env, &dir) => r,
        () = world.follow() => unreachable!(),
    };
    assert_eq!(outcome, "Stopped(Succeeded)");
    assert!(killed.contains("dns-reserve/delegation"), "{killed:?}");
    assert_eq!(sorted(&world.fake.nameservers(c.r, c.fqdn)), sorted(&nameservers()));
    assert_eq!(world.fake.nameservers(c.r, c.fqdn).len(), 3, "no duplicate NS record");
    let prev = adapter(&p).zone_meta(&format!("{}.", c.fqdn), dns::PREVIOUS_NS_META).await.unwrap();
    assert_eq!(serde_json::from_str::<Value>(&prev[0]).unwrap()["nameservers"], json!(c.before));
    eprintln!("kill -9 inside {} steps, {starts} driver processes", killed.len());
}
