//! The `dns-reserve` and `dns-commit` phases, and destroy's DNS phase,
//! through the real PowerDNS adapter against a real `pdns_server` on
//! loopback, the way an operator's pool runs: the pool zone `omani.works.`
//! exists, each Sovereign gets a child zone and an NS delegation in it,
//! then its records. Every result is checked by DNS queries, with the
//! adapter and independently with `dig`.
//!
//! The tests share the test binary's server ([`pool`]), each with zones
//! of its own, and a second shared server standing for the world's
//! resolvers where a test needs one. The two tests that run the lease
//! keeper have private servers: the keeper sweeps every expired
//! reservation on the server it is given, other tests' included.

use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use cz_adapters::dns::PowerDns;
use cz_adapters::registrar::{Endpoints, HttpRegistrars, sorted};
use cz_adapters::{Backend, DnsApi, Rrset};
use cz_engine::{
    ActionId, ErrorClass, FailurePolicy, FaultPlan, JobOptions, PhaseBuilder, PhaseDef, Plan,
    RetryTarget, Verbs,
};
use cz_phases::dns::lease::{LEASE_META, keep_leases, owner};
use cz_phases::dns::reserve::{Delegation, Verified, Zone};
use cz_phases::dns::{self, NAMESERVERS, PREVIOUS_NS_META};
use cz_phases::infra::{LoadBalancer, Outputs};
use cz_phases::jobs::{self, FollowUp, SovereignBlock, Submit};
use cz_phases::request::{Domain, ProvisionRequest, Registrar};
use cz_phases::{Registry, preflight};
use cz_sim::wire::registrars::FakeRegistrars;
use cz_state::{JobId, JobStatus, SecretString, Store};
use cz_testkit::pdns::{Pdns, while_busy};
use cz_testkit::requests::{byo_api_request, sample_request};
use cz_testkit::rig::{Rig, SimRigExt, Stub, rig, rig_in, sim_backend_in, step_output};
use serde_json::{Value, json};
use tokio::sync::OnceCell;

const LB: &str = "203.0.113.10";
const POOL: &str = "omani.works.";
/// The pool zones a daemon makes at start when they are missing.
const POOL_ZONES: [&str; 2] = [POOL, "openova.io."];

/// `infra/outputs-fsn1` as the infra phase would have left it.
const OUTPUTS: ActionId<()> = ActionId::new("test.outputs");
/// The same after four seconds of work: a slow `infra` phase.
const SLOW_OUTPUTS: ActionId<()> = ActionId::new("test.slow-outputs");

fn register_stubs(reg: &mut Registry) {
    let out = Outputs {
        location: "fsn1".into(),
        servers: Vec::new(),
        load_balancer: LoadBalancer { id: 1, ipv4: LB.into() },
        workspace: "/nonexistent".into(),
    };
    reg.register_dyn(OUTPUTS.name, Stub::new(&out).action());
    reg.register_dyn(SLOW_OUTPUTS.name, Stub::new(&out).slow(Duration::from_secs(4)).action());
}

fn pool_nameservers() -> Vec<String> {
    NAMESERVERS.iter().map(|s| s.to_string()).collect()
}

/// Makes the pool zones that are missing on `p`.
async fn ensure_pool_zones(p: &Pdns) {
    let (d, ns) = (p.adapter(), pool_nameservers());
    for zone in POOL_ZONES {
        if !d.zone_exists(zone).await.unwrap() {
            while_busy(|| d.create_zone(zone, &ns, "")).await.unwrap();
        }
    }
}

/// The test binary's PowerDNS with the operator's pool zones, made once
/// (a daemon started on it finds them there).
pub(crate) async fn pool() -> &'static Pdns {
    static ZONES: OnceCell<()> = OnceCell::const_new();
    assert!(Pdns::available(), "PowerDNS with the gsqlite3 backend is needed (see .ci/run)");
    let p = Pdns::shared().await;
    ZONES.get_or_init(|| ensure_pool_zones(p)).await;
    p
}

/// A private PowerDNS with the pool zones, for a test that runs the lease
/// keeper (it sweeps every expired reservation on its server).
async fn private_pool() -> Pdns {
    assert!(Pdns::available(), "PowerDNS with the gsqlite3 backend is needed (see .ci/run)");
    let mut p = Pdns::prepare();
    p.start().await;
    ensure_pool_zones(&p).await;
    p
}

/// The second shared server: the world's resolvers, which see what the
/// registrars and the customers publish (not our server's zones).
async fn world_server() -> &'static Pdns {
    Pdns::shared_as("world").await
}

fn request(sub: &str) -> ProvisionRequest {
    sample_request(sub, 1, 0)
}

fn backend_for(dir: &Path, p: &Pdns) -> Backend {
    let mut b = sim_backend_in(dir);
    b.dns = Arc::new(p.adapter());
    b.poll = Duration::from_millis(20);
    // Short, so that the tests outlive a lease several times.
    b.bounds.dns_lease = Duration::from_secs(1);
    // The propagation gate asks the server itself (no public resolver
    // can be reached from here).
    b.public_resolvers = vec![p.dns_addr()];
    b
}

/// A rig over `p` in a directory of its own, or in `dir` (kept after it);
/// `tweak` adjusts its backend.
async fn dns_rig(dir: Option<&Path>, p: &Pdns, tweak: impl FnOnce(&mut Backend)) -> Rig<Backend> {
    let backend = |d: &Path| {
        let mut b = backend_for(d, p);
        tweak(&mut b);
        b
    };
    match dir {
        Some(dir) => rig_in(dir, register_stubs, backend).await,
        None => rig(register_stubs, backend).await,
    }
}

fn plan(req: &ProvisionRequest) -> Plan {
    plan_with(req, OUTPUTS)
}

fn plan_with(req: &ProvisionRequest, outputs: ActionId<()>) -> Plan {
    Plan { phases: vec![dns::reserve::phase(), infra_phase(outputs), commit_phase(req)] }
}

fn infra_phase(outputs: ActionId<()>) -> PhaseDef {
    let mut infra = PhaseBuilder::new("infra");
    infra.step("outputs-fsn1", outputs, &[], ());
    infra.build()
}

fn commit_phase(req: &ProvisionRequest) -> PhaseDef {
    dns::commit::phase(&req.regions, false)
}

/// A job on a rig, and the Sovereign it is for.
struct Run {
    rig: Rig<Backend>,
    job: JobId,
    fqdn: String,
    sovereign: String,
}

impl Run {
    /// Submits a provision of `req` with `plan` on `rig`.
    async fn submit(rig: Rig<Backend>, req: &ProvisionRequest, plan: Plan, o: JobOptions) -> Run {
        let (sov, job) = rig.submit_plan(req, &plan, o).await;
        Run { rig, job, fqdn: req.fqdn(), sovereign: sov.to_string() }
    }

    async fn drive(&self) -> JobStatus {
        self.rig.drive(self.job).await
    }

    async fn why(&self) -> String {
        self.rig.stop_reason(self.job).await.to_string()
    }

    /// A step's recorded output.
    async fn output<T: serde::de::DeserializeOwned>(&self, node: &str) -> T {
        step_output(&self.rig.store, self.job, node).await
    }

    async fn events(&self, kind: &str) -> Vec<Value> {
        self.rig.events(self.job, kind).await
    }
}

/// A run of `plan` for `req` on `p`, in a directory of its own.
async fn start(p: &Pdns, req: &ProvisionRequest, plan: Plan, options: JobOptions) -> Run {
    Run::submit(dns_rig(None, p, |_| ()).await, req, plan, options).await
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

/// Our nameservers, sorted, as DNS answers them (absolute names).
fn nameservers() -> Vec<String> {
    let mut v = pool_nameservers();
    v.sort();
    v
}

async fn assert_served(p: &Pdns, fqdn: &str) {
    assert_eq!(delegation(p, fqdn).await, nameservers());
    assert_eq!(p.dig(fqdn, "NS"), nameservers());
    for n in ["", "console.", "api.", "gitea.", "harbor.", "anything-else."] {
        assert_eq!(p.dig(&format!("{n}{fqdn}"), "A"), [LB], "{n}{fqdn}");
    }
}

async fn assert_gone(p: &Pdns, fqdn: &str) {
    assert!(!p.adapter().zone_exists(fqdn).await.unwrap());
    assert!(delegation(p, fqdn).await.is_empty());
    assert!(p.dig(&format!("console.{fqdn}"), "A").is_empty());
}

/// A destroy job's DNS phase for the Sovereign `req` made, with the
/// request a destroy job stores (the Sovereign's block), on `rig`.
async fn destroy_dns_on(rig: Rig<Backend>, req: &ProvisionRequest) -> Run {
    let mut sub = jobs::provision(req, Submit { actor: "test".into(), ..Submit::default() });
    let request = FollowUp {
        api_version: None,
        regions: req.regions.clone(),
        sovereign: SovereignBlock::of(&req.fqdn(), req),
    };
    sub.request = serde_json::to_value(&request).unwrap();
    let destroy = jobs::destroy_plan(&["fsn1".to_owned()]);
    let dns_only = destroy.phases.into_iter().filter(|ph| ph.id == "dns").collect();
    sub.plan = serde_json::to_value(Plan { phases: dns_only }).unwrap();
    sub.options = serde_json::to_value(JobOptions::default()).unwrap();
    let sov = match &sub.sovereign {
        cz_state::SovereignTarget::New { id, .. } => id.to_string(),
        cz_state::SovereignTarget::Existing { id, .. } => id.to_string(),
    };
    let job = rig.submit(sub).await;
    Run { rig, job, fqdn: req.fqdn(), sovereign: sov }
}

async fn destroy_dns(p: &Pdns, req: &ProvisionRequest) -> Run {
    destroy_dns_on(dns_rig(None, p, |_| ()).await, req).await
}

#[tokio::test]
async fn reserve_commit_verify_by_dns_then_destroy_leaves_nothing() {
    let p = pool().await;
    let req = request("acme");
    let r = start(p, &req, plan(&req), JobOptions::default()).await;
    assert_eq!(r.drive().await, JobStatus::Succeeded, "{}", r.why().await);
    assert_served(p, &r.fqdn).await;

    // A second Sovereign with the same name is refused before any write.
    let pre = Plan { phases: vec![preflight::phase(&req.regions, true)] };
    let again = start(p, &req, pre, JobOptions::default()).await;
    let status = again.drive().await;
    assert!(matches!(status, JobStatus::Paused | JobStatus::Failed), "{status}");
    let w = again.why().await;
    assert!(w.contains("preflight/names-free") && w.contains("already exists"), "{w}");

    // Destroy's DNS phase: delegation, then zone; twice is the same.
    let d = destroy_dns(p, &req).await;
    assert_eq!(d.drive().await, JobStatus::Succeeded, "{}", d.why().await);
    assert_gone(p, &r.fqdn).await;
    let d2 = destroy_dns(p, &req).await;
    assert_eq!(d2.drive().await, JobStatus::Succeeded, "{}", d2.why().await);
    // The pool zone itself is untouched.
    assert!(p.adapter().zone_exists(POOL).await.unwrap());
}

#[tokio::test]
async fn a_failure_after_commit_unwinds_records_delegation_and_zone() {
    let p = pool().await;
    let req = request("unwind");
    let faults = FaultPlan {
        fail: [("dns-commit/propagation".to_owned(), ErrorClass::Terminal)].into(),
        ..FaultPlan::default()
    };
    let options =
        JobOptions { faults, on_failure: FailurePolicy::Rollback, ..JobOptions::default() };
    let r = start(p, &req, plan(&req), options).await;
    assert_eq!(r.drive().await, JobStatus::Failed, "{}", r.why().await);
    assert_gone(p, &r.fqdn).await;
}

fn every_node(plan: &Plan) -> BTreeSet<String> {
    plan.phases.iter().flat_map(|ph| ph.nodes.iter().map(|n| n.id.clone())).collect()
}

#[tokio::test]
async fn every_step_twice_serves_the_same_zone() {
    let p = pool().await;
    let req = request("twice");
    let repeat = every_node(&plan(&req));
    let options = JobOptions {
        faults: FaultPlan { repeat, ..FaultPlan::default() },
        ..JobOptions::default()
    };
    let r = start(p, &req, plan(&req), options).await;
    assert_eq!(r.drive().await, JobStatus::Succeeded, "{}", r.why().await);
    assert_served(p, &r.fqdn).await;
}

/// The child half of the kill -9 tests.
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
    let r = dns_rig(Some(&dir), &p, |b| {
        // byo-api: the parent's fake registrars, and its world as a resolver.
        if let Ok(base) = std::env::var("CZ_DNS_REGISTRARS") {
            let e = Endpoints::under(&base);
            b.registrars = Arc::new(HttpRegistrars::new(e, Duration::from_secs(5)));
            b.public_resolvers.push(std::env::var("CZ_DNS_WORLD").unwrap().parse().unwrap());
        }
    })
    .await;
    cz_testkit::kill9::drive_logging_steps(&r.engine, &r.store, job, &dir).await;
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

/// Slow motion (a pause after every journal write), so that every step,
/// however fast, is seen running and killed inside.
fn slow_motion() -> JobOptions {
    JobOptions {
        faults: FaultPlan { slow_ms: 30, ..FaultPlan::default() },
        ..JobOptions::default()
    }
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
    let dir = tmp.path();
    let req = request("killed");
    let r = Run::submit(dns_rig(Some(dir), p, |_| ()).await, &req, plan(&req), slow_motion()).await;
    let (job, fqdn) = (r.job, r.fqdn.clone());
    drop(r);
    let env = child_env(dir, job, p);
    let (killed, starts, outcome) =
        cz_testkit::kill9::kill_inside_every_step("dns_pdns::child_driver", &env, dir).await;
    assert_eq!(outcome, "Stopped(Succeeded)");
    assert!(killed.contains("dns-reserve/zone"), "{killed:?}");
    assert!(killed.contains("dns-reserve/delegation"), "{killed:?}");
    assert_served(p, &fqdn).await;
    eprintln!("kill -9 inside {} steps, {starts} driver processes", killed.len());
}

#[tokio::test]
async fn records_are_replaced_in_one_patch_and_a_changed_address_is_served() {
    let p = pool().await;
    let (d, ns) = (p.adapter(), pool_nameservers());
    let zone = "moved.omani.works.";
    while_busy(|| d.create_zone(zone, &ns, "")).await.unwrap();
    let rr = |ip: &str| Rrset {
        name: zone.into(),
        rtype: "A".into(),
        ttl: 300,
        records: vec![ip.into()],
    };
    let (first, second) = ([rr("203.0.113.1")], [rr("203.0.113.2")]);
    while_busy(|| d.replace_rrsets(zone, &first)).await.unwrap();
    while_busy(|| d.replace_rrsets(zone, &second)).await.unwrap();
    assert_eq!(p.dig("moved.omani.works", "A"), ["203.0.113.2"]);
}

/// One round of the daemon's lease keeper (its own code), over this
/// store's jobs, sweeping leases that ran out more than `grace` ago.
async fn keeper_round_with(store: &Store, d: &PowerDns, grace: Duration) -> Vec<String> {
    let jobs = store.list_jobs(None).await.unwrap();
    let ttl = Duration::from_secs(1);
    keep_leases(d, &jobs, &[POOL], ttl, grace).await.unwrap().1
}

async fn keeper_round(store: &Store, d: &PowerDns) -> Vec<String> {
    keeper_round_with(store, d, Duration::ZERO).await
}

/// An `infra` phase four times longer than the lease, with the keeper
/// sweeping every 200 ms, does not lose the zone; the commit ends the
/// lease, and a committed zone is never swept. A private server: the
/// keeper sweeps every expired reservation on it.
#[tokio::test]
async fn a_slow_infra_keeps_its_reservation_while_the_lease_is_renewed() {
    let p = private_pool().await;
    let req = request("slow");
    let r = start(&p, &req, plan_with(&req, SLOW_OUTPUTS), JobOptions::default()).await;
    let d = p.adapter();
    let zone = format!("{}.", r.fqdn);
    let keeper = async {
        let mut swept = Vec::new();
        let mut renewed_seen = 0;
        loop {
            swept.extend(keeper_round(&r.rig.store, &d).await);
            let lease = d.zone_meta(&zone, LEASE_META).await.unwrap_or_default();
            renewed_seen += usize::from(!lease.is_empty());
            if r.rig.job(r.job).await.status == JobStatus::Succeeded {
                return (swept, renewed_seen);
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    };
    let (status, (swept, renewed_seen)) = tokio::join!(r.drive(), keeper);
    assert_eq!(status, JobStatus::Succeeded, "{}", r.why().await);
    assert!(swept.is_empty(), "{swept:?}");
    assert!(renewed_seen >= 10, "the lease was seen held only {renewed_seen} times");
    assert_served(&p, &r.fqdn).await;
    assert_eq!(d.zone_account(&zone).await.unwrap(), Some(owner(&r.sovereign)));
    // Committed: no lease, and the sweeper leaves it alone.
    assert!(d.zone_meta(&zone, LEASE_META).await.unwrap().is_empty());
    tokio::time::sleep(Duration::from_millis(1100)).await;
    assert!(keeper_round(&r.rig.store, &d).await.is_empty());
    assert_served(&p, &r.fqdn).await;
}

/// A reservation whose job is gone is swept once its lease runs out, with
/// its delegation; a commit after that fails loudly (not found) instead of
/// declaring the Sovereign ready. A private server: the keeper sweeps
/// every expired reservation on it, and this test counts what it swept.
#[tokio::test]
async fn an_abandoned_reservation_is_swept_and_a_late_commit_fails_loudly() {
    let p = private_pool().await;
    let d = p.adapter();
    let req = request("gone");
    // Reserve only: the job ends, nobody renews.
    let reserve = Plan { phases: vec![dns::reserve::phase()] };
    let r = start(&p, &req, reserve, JobOptions::default()).await;
    assert_eq!(r.drive().await, JobStatus::Succeeded, "{}", r.why().await);
    assert_eq!(delegation(&p, &r.fqdn).await, nameservers());
    // Not while the lease (1 s, whole seconds) plus a grace runs.
    assert!(keeper_round_with(&r.rig.store, &d, Duration::from_secs(5)).await.is_empty());
    tokio::time::sleep(Duration::from_millis(2100)).await;
    assert_eq!(keeper_round(&r.rig.store, &d).await, [format!("{}.", r.fqdn)]);
    assert_gone(&p, &r.fqdn).await;

    let late = Plan { phases: vec![infra_phase(OUTPUTS), commit_phase(&req)] };
    let c = start(&p, &req, late, JobOptions::default()).await;
    assert_eq!(c.drive().await, JobStatus::Paused);
    let w = c.why().await;
    assert!(w.contains("dns-commit/records") && w.contains("not-found"), "{w}");
}

/// A zone someone else made under the same name is not adopted.
#[tokio::test]
async fn a_zone_another_owner_made_is_a_conflict_not_adopted() {
    let p = pool().await;
    let (d, ns) = (p.adapter(), pool_nameservers());
    while_busy(|| d.create_zone("taken.omani.works.", &ns, "someone-else")).await.unwrap();
    let req = request("taken");
    let r = start(p, &req, plan(&req), JobOptions::default()).await;
    assert_eq!(r.drive().await, JobStatus::Paused);
    let w = r.why().await;
    assert!(w.contains("dns-reserve/zone") && w.contains("someone-else"), "{w}");
    // Still theirs, unleased, undelegated.
    assert_eq!(
        d.zone_account("taken.omani.works.").await.unwrap().as_deref(),
        Some("someone-else")
    );
    assert!(d.zone_meta("taken.omani.works.", LEASE_META).await.unwrap().is_empty());
    assert!(delegation(p, "taken.omani.works").await.is_empty());
}

/// The records of a Sovereign at `fqdn`, all pointing at `ip`.
fn a_records(fqdn: &str, ip: &str, ttl: u32) -> Vec<Rrset> {
    ["", "*.", "console.", "api.", "gitea.", "harbor."]
        .iter()
        .map(|n| Rrset {
            name: format!("{n}{fqdn}."),
            rtype: "A".into(),
            ttl,
            records: vec![ip.into()],
        })
        .collect()
}

/// The job is not done while a public resolver does not see the Sovereign
/// yet. The world's server stands for a public resolver that has not
/// caught up: until it serves the zone the gate reports it, past the bound
/// the job pauses with what it last saw, and once it serves the records a
/// retry passes.
#[tokio::test]
async fn the_propagation_gate_waits_for_every_public_resolver() {
    let p = pool().await;
    let lagging = world_server().await;
    let req = request("propagating");
    let lag = lagging.dns_addr();
    let rig = dns_rig(None, p, |b| {
        b.public_resolvers.push(lag);
        b.bounds.dns_propagation = Duration::from_secs(2);
    })
    .await;
    let r = Run::submit(rig, &req, plan(&req), JobOptions::default()).await;
    assert_eq!(r.drive().await, JobStatus::Paused);
    let w = r.why().await;
    assert!(w.contains("dns-commit/propagation") && w.contains(&lag.to_string()), "{w}");
    assert!(w.contains("refused"), "what the lagging resolver said: {w}");
    let events = r.events("dns").await;
    assert!(events.iter().any(|e| e["resolver"] == lag.to_string() && e["propagated"] == false));
    // The resolver catches up (here: it gets the zone); the operator retries.
    let (d2, ns) = (lagging.adapter(), pool_nameservers());
    let zone = format!("{}.", r.fqdn);
    while_busy(|| d2.create_zone(&zone, &ns, "")).await.unwrap();
    let records = a_records(&r.fqdn, LB, 300);
    while_busy(|| d2.replace_rrsets(&zone, &records)).await.unwrap();
    Verbs { store: &r.rig.store }.retry(r.job, RetryTarget::Failed, "test").await.unwrap();
    assert_eq!(r.drive().await, JobStatus::Succeeded, "{}", r.why().await);
}

/// byo-manual: the customer points their domain's NS at us by hand. The
/// job waits (bounded) and streams what the resolvers see: here the
/// world's server, still serving the registrar's old NS. Once the
/// customer's change is visible, the job goes on to commit and the
/// propagation gate.
#[tokio::test]
async fn byo_manual_waits_for_the_customers_ns_change_and_streams_it() {
    let p = pool().await;
    let world = world_server().await;
    let w = world.adapter();
    let old = vec!["ns1.registrar.example.".to_owned()];
    while_busy(|| w.create_zone("customer.example.", &old, "")).await.unwrap();

    let mut req = sample_request("byo", 1, 0);
    req.domain = Domain::ByoManual { fqdn: "customer.example".into() };
    let seen_by_world: SocketAddr = world.dns_addr();
    let rig = dns_rig(None, p, |b| b.public_resolvers.push(seen_by_world)).await;
    let r = Run::submit(rig, &req, plan(&req), JobOptions::default()).await;

    let customer = async {
        // Wait until the job reports the old NS, then make the change.
        loop {
            let reported = r.events("dns").await.iter().any(|e| {
                e["resolver"] == seen_by_world.to_string()
                    && e["message"].as_str().is_some_and(|m| m.contains("ns1.registrar.example."))
            });
            if reported {
                break;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let j = r.rig.job(r.job).await;
        assert_eq!(j.status, JobStatus::Running, "the job waits for the customer");
        let ns = [Rrset {
            name: "customer.example.".into(),
            rtype: "NS".into(),
            ttl: 300,
            records: pool_nameservers(),
        }];
        while_busy(|| w.replace_rrsets("customer.example.", &ns)).await.unwrap();
        // The world now resolves through our servers: our records.
        let records = a_records("customer.example", LB, 300);
        while_busy(|| w.replace_rrsets("customer.example.", &records)).await.unwrap();
    };
    let (status, ()) = tokio::join!(r.drive(), customer);
    assert_eq!(status, JobStatus::Succeeded, "{}", r.why().await);
    // Ours: served by our server, and no pool delegation was written.
    assert_eq!(p.dig("console.customer.example", "A"), [LB]);
    assert!(delegation(p, "customer.example").await.is_empty());
}

// ---- byo-api: the customer's registrar, through its API ----

/// A customer at a registrar: the token, the Sovereign's domain, the zone
/// the registrar holds it in (Cloudflare: the customer's zone; otherwise
/// the domain itself) and where it points before.
struct Customer {
    r: Registrar,
    token: &'static str,
    fqdn: String,
    zone: String,
    before: &'static [&'static str],
}

impl Customer {
    fn request(&self) -> ProvisionRequest {
        byo_api_request(&self.fqdn, self.r, self.token)
    }
}

/// One customer at each registrar, their domains named after `test` (the
/// tests share our server and the world's, each with domains of its own).
fn customers(test: &str) -> [Customer; 5] {
    let c = |r, token, fqdn: String, zone: Option<String>, before| Customer {
        r,
        token,
        zone: zone.unwrap_or_else(|| fqdn.clone()),
        fqdn,
        before,
    };
    [
        c(
            Registrar::Cloudflare,
            "cf-token-1",
            format!("k8s.acme-cf-{test}.com"),
            Some(format!("acme-cf-{test}.com")),
            &[],
        ),
        c(
            Registrar::Namecheap,
            "acme:nc-key:203.0.113.7",
            format!("acme-nc-{test}.io"),
            None,
            &["dns1.registrar-servers.com", "dns2.registrar-servers.com"],
        ),
        c(
            Registrar::Godaddy,
            "gd-key:gd-secret",
            format!("acme-gd-{test}.net"),
            None,
            &["ns55.domaincontrol.com", "ns56.domaincontrol.com"],
        ),
        c(
            Registrar::Ovh,
            "ovh-app:ovh-secret:ovh-consumer",
            format!("acme-ovh-{test}.fr"),
            None,
            &["dns110.ovh.net", "ns110.ovh.net"],
        ),
        c(
            Registrar::Dynadot,
            "dyn-key",
            format!("acme-dyn-{test}.org"),
            None,
            &["ns1.dyna-ns.net", "ns2.dyna-ns.net"],
        ),
    ]
}

fn owned(v: &[&str]) -> Vec<String> {
    v.iter().map(|s| s.to_string()).collect()
}

/// Pre-flight's registrar check, then the DNS phases.
fn byo_api_plan(req: &ProvisionRequest) -> Plan {
    let mut pre = preflight::phase(&req.regions, true);
    pre.nodes.retain(|n| n.id == "preflight/registrar");
    pre.nodes[0].depends_on.clear();
    let mut p = plan(req);
    p.phases.insert(0, pre);
    p
}

/// The registrars, and the world: the world's server, standing for the
/// TLD servers and resolvers. It follows the registrars: a domain
/// delegated to us resolves through our servers (our NS, the Sovereign's
/// records); otherwise to what the registrar has.
struct ByoWorld {
    fake: FakeRegistrars,
    world: &'static Pdns,
    customers: [Customer; 5],
}

impl ByoWorld {
    async fn start(test: &str) -> ByoWorld {
        let fake = FakeRegistrars::start().await;
        let world = world_server().await;
        let w = world.adapter();
        let customers = customers(test);
        for c in &customers {
            if c.r == Registrar::Cloudflare {
                let ns = ["ada.ns.cloudflare.com", "bob.ns.cloudflare.com"];
                fake.domain(c.r, c.token, &c.zone, &ns);
            } else {
                fake.domain(c.r, c.token, &c.zone, c.before);
            }
            let (zone, ns) = (format!("{}.", c.fqdn), vec!["ns1.parked.example.".to_owned()]);
            while_busy(|| w.create_zone(&zone, &ns, "")).await.unwrap();
        }
        ByoWorld { fake, world, customers }
    }

    fn resolver(&self) -> SocketAddr {
        self.world.dns_addr()
    }

    /// The world catches up with the registrars, every 50 ms: it writes a
    /// domain's records when where the registrar delegates it changes (a
    /// write refused while the shared server is busy is made again at the
    /// next round).
    async fn follow(&self) {
        let w = self.world.adapter();
        let mut written: BTreeMap<String, bool> = BTreeMap::new();
        loop {
            for c in &self.customers {
                let at = sorted(&self.fake.nameservers(c.r, &c.fqdn));
                let ours = at == sorted(&nameservers());
                if written.get(&c.fqdn) == Some(&ours) {
                    continue;
                }
                let zone = format!("{}.", c.fqdn);
                let ns = if ours { nameservers() } else { vec!["ns1.parked.example.".into()] };
                let mut rrs =
                    vec![Rrset { name: zone.clone(), rtype: "NS".into(), ttl: 60, records: ns }];
                rrs.extend(a_records(&c.fqdn, if ours { LB } else { "192.0.2.99" }, 60));
                if w.replace_rrsets(&zone, &rrs).await.is_ok() {
                    written.insert(c.fqdn.clone(), ours);
                }
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// A rig over `p` (in `dir`, if given) whose backend reaches the fake
    /// registrars and asks the world.
    async fn rig(&self, dir: Option<&Path>, p: &Pdns) -> Rig<Backend> {
        let endpoints = self.fake.endpoints();
        let world = self.resolver();
        dns_rig(dir, p, |b| {
            b.registrars = Arc::new(HttpRegistrars::new(endpoints, Duration::from_secs(5)));
            b.public_resolvers.push(world);
        })
        .await
    }

    /// A run of `req` with `plan` on such a rig.
    async fn start_run(&self, p: &Pdns, req: &ProvisionRequest, plan: Plan, o: JobOptions) -> Run {
        Run::submit(self.rig(None, p).await, req, plan, o).await
    }
}

/// Drives `r` while the world follows the registrars.
async fn drive_in(world: &ByoWorld, r: &Run) -> JobStatus {
    tokio::select! {
        s = r.drive() => s,
        () = world.follow() => unreachable!(),
    }
}

/// Destroy's DNS phase for a byo-api Sovereign (its block names the registrar).
async fn destroy_byo(world: &ByoWorld, p: &Pdns, c: &Customer) -> Run {
    destroy_dns_on(world.rig(None, p).await, &c.request()).await
}

/// Against each of the five registrars: pre-flight reads where the domain
/// points, the job has the registrar delegate it to us, waits for the
/// registrar and the world to say so, commits and passes the propagation
/// gate; destroy gives the registrar its old delegation back and leaves
/// no zone.
#[tokio::test]
async fn byo_api_each_registrar_delegates_then_destroy_gives_it_back() {
    let p = pool().await;
    let world = ByoWorld::start("each").await;
    for c in &world.customers {
        // Signed: Cloudflare publishes the DS, the registrars ask the customer.
        let mut req = c.request();
        req.dnssec = true;
        let r = world.start_run(p, &req, byo_api_plan(&req), JobOptions::default()).await;
        let status = drive_in(&world, &r).await;
        assert_eq!(status, JobStatus::Succeeded, "{:?}: {}", c.r, r.why().await);
        let at = sorted(&world.fake.nameservers(c.r, &c.fqdn));
        assert_eq!(at, sorted(&nameservers()), "{:?}", c.r);
        assert_eq!(p.dig(&format!("console.{}", c.fqdn), "A"), [LB], "{:?}", c.r);
        // What it pointed at before is kept on our zone.
        let prev = p.adapter().zone_meta(&format!("{}.", c.fqdn), PREVIOUS_NS_META).await.unwrap();
        let prev: Value = serde_json::from_str(&prev[0]).unwrap();
        assert_eq!(prev["nameservers"], json!(c.before), "{:?}", c.r);
        let evs = r.rig.store.events_after(r.job, 0, 100_000).await.unwrap();
        let said = evs.iter().any(|e| {
            e.kind == "dns"
                && e.body["message"].as_str().is_some_and(|m| {
                    m.contains(&format!("{}: {} delegated to", c.r.title(), c.fqdn))
                })
        });
        assert!(said, "{:?}: no delegation event", c.r);
        let Delegation::ByoApi { ds, ds_published, .. } = r.output("dns-reserve/delegation").await
        else {
            panic!("{:?}: not a byo-api delegation", c.r)
        };
        assert!(!ds.is_empty(), "{:?}: signed", c.r);
        let published = c.r == Registrar::Cloudflare;
        assert_eq!(ds_published, published, "{:?}", c.r);
        let norm = |v: &[String]| {
            let mut v: Vec<String> = v.iter().map(|d| d.to_ascii_lowercase()).collect();
            v.sort();
            v
        };
        if published {
            let shown = world.fake.cloudflare_records(&c.fqdn, "DS");
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
            let d = destroy_byo(&world, p, c).await;
            let status = drive_in(&world, &d).await;
            assert_eq!(status, JobStatus::Succeeded, "{:?}: {}", c.r, d.why().await);
            assert_eq!(
                sorted(&world.fake.nameservers(c.r, &c.fqdn)),
                sorted(&owned(c.before)),
                "{:?}",
                c.r
            );
            assert!(!p.adapter().zone_exists(&c.fqdn).await.unwrap(), "{:?}", c.r);
            assert!(world.fake.cloudflare_records(&c.fqdn, "DS").is_empty(), "{:?}", c.r);
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
    let world = ByoWorld::start("unwind").await;
    let c = &world.customers[2]; // GoDaddy
    let req = c.request();
    let nodes = every_node(&byo_api_plan(&req));
    let faults = FaultPlan {
        fail: [("dns-commit/records".to_owned(), ErrorClass::Terminal)].into(),
        repeat: nodes.clone(),
        repeat_undo: nodes,
        ..FaultPlan::default()
    };
    let options =
        JobOptions { faults, on_failure: FailurePolicy::Rollback, ..JobOptions::default() };
    let r = world.start_run(p, &req, byo_api_plan(&req), options).await;
    assert_eq!(drive_in(&world, &r).await, JobStatus::Failed, "{}", r.why().await);
    assert_eq!(sorted(&world.fake.nameservers(c.r, &c.fqdn)), sorted(&owned(c.before)));
    assert!(!p.adapter().zone_exists(&c.fqdn).await.unwrap());

    // The customer moves the domain while the job is paused; cancelling
    // it then leaves their choice.
    let c = &world.customers[4]; // Dynadot
    let req = c.request();
    let faults = FaultPlan {
        fail: [("dns-commit/records".to_owned(), ErrorClass::NeedsOperator)].into(),
        ..FaultPlan::default()
    };
    let options = JobOptions { faults, ..JobOptions::default() };
    let r = world.start_run(p, &req, byo_api_plan(&req), options).await;
    assert_eq!(drive_in(&world, &r).await, JobStatus::Paused, "{}", r.why().await);
    let elsewhere = ["ns1.elsewhere.example", "ns2.elsewhere.example"];
    world.fake.set_by_hand(c.r, &c.fqdn, &elsewhere);
    Verbs { store: &r.rig.store }.cancel(r.job, "test").await.unwrap();
    assert_eq!(drive_in(&world, &r).await, JobStatus::Cancelled, "{}", r.why().await);
    assert_eq!(world.fake.nameservers(c.r, &c.fqdn), elsewhere);
    assert!(!p.adapter().zone_exists(&c.fqdn).await.unwrap());

    // A Namecheap key the registrar does not know: pre-flight says so.
    let c = &world.customers[1];
    let mut req = c.request();
    let bad = c.token.replace("nc-key", "nc-wrong");
    if let Domain::ByoApi { registrar_token, .. } = &mut req.domain {
        *registrar_token = SecretString::new(bad);
    }
    let r = world.start_run(p, &req, byo_api_plan(&req), JobOptions::default()).await;
    let status = drive_in(&world, &r).await;
    assert!(matches!(status, JobStatus::Paused | JobStatus::Failed), "{status}");
    let w = r.why().await;
    assert!(
        w.contains("preflight/registrar") && w.contains("1011102") && w.contains("unauthorized"),
        "{w}"
    );
    assert!(!w.contains("nc-wrong"), "{w}");
    assert!(!p.adapter().zone_exists(&c.fqdn).await.unwrap());
    assert!(world.fake.writes(c.r).is_empty(), "{:?}", world.fake.writes(c.r));
}

/// DNSSEC on request: the zone is signed, its DS goes into the pool zone
/// with the NS (one PATCH), the chain answers over DNS before the job goes
/// on, and destroy removes the DS with the delegation.
#[tokio::test]
async fn dnssec_on_request_signs_the_zone_and_publishes_its_ds_in_the_pool() {
    let p = pool().await;
    let mut req = request("signed");
    req.dnssec = true;
    let r = start(p, &req, plan(&req), JobOptions::default()).await;
    assert_eq!(r.drive().await, JobStatus::Succeeded, "{}", r.why().await);
    assert_served(p, &r.fqdn).await;

    let zone: Zone = r.output("dns-reserve/zone").await;
    assert!(!zone.ds.is_empty());
    let verified: Verified = r.output("dns-reserve/verify-delegation").await;
    assert_eq!(verified.dnssec, Some(true));
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
    assert_eq!(lower(p.dig(&r.fqdn, "DS")), lower(zone.ds.clone()));
    assert!(!p.dig(&r.fqdn, "DNSKEY").is_empty());
    let out = std::process::Command::new("dig")
        .args(["@127.0.0.1", "-p", &p.dns_port.to_string(), "+norecurse", "+dnssec"])
        .arg(format!("console.{}", r.fqdn))
        .arg("A")
        .output()
        .unwrap();
    let full = String::from_utf8_lossy(&out.stdout);
    assert!(full.contains("RRSIG") && full.contains(LB), "{full}");

    let d = destroy_dns(p, &req).await;
    assert_eq!(d.drive().await, JobStatus::Succeeded, "{}", d.why().await);
    assert_gone(p, &r.fqdn).await;
    assert!(p.dig(&r.fqdn, "DS").is_empty());
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
    let world = ByoWorld::start("killed").await;
    let c = &world.customers[0];
    let req = c.request();
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let rig = world.rig(Some(dir), p).await;
    let r = Run::submit(rig, &req, byo_api_plan(&req), slow_motion()).await;
    let job = r.job;
    drop(r);
    let mut env = child_env(dir, job, p);
    env.push(("CZ_DNS_REGISTRARS", world.fake.url()));
    env.push(("CZ_DNS_WORLD", world.resolver().to_string()));
    let (killed, starts, outcome) = tokio::select! {
        r = cz_testkit::kill9::kill_inside_every_step("dns_pdns::child_driver", &env, dir) => r,
        () = world.follow() => unreachable!(),
    };
    assert_eq!(outcome, "Stopped(Succeeded)");
    assert!(killed.contains("dns-reserve/delegation"), "{killed:?}");
    assert_eq!(sorted(&world.fake.nameservers(c.r, &c.fqdn)), sorted(&nameservers()));
    assert_eq!(world.fake.nameservers(c.r, &c.fqdn).len(), 3, "no duplicate NS record");
    let prev = p.adapter().zone_meta(&format!("{}.", c.fqdn), PREVIOUS_NS_META).await.unwrap();
    assert_eq!(serde_json::from_str::<Value>(&prev[0]).unwrap()["nameservers"], json!(c.before));
    eprintln!("kill -9 inside {} steps, {starts} driver processes", killed.len());
}
