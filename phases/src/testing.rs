//! Test support, for this crate's tests and (feature `testing`, through
//! `cz-testkit`) for the crates above: request fixtures, a rig over the
//! `sim` backend, and [`PhaseScenario`], one phase's view of the engine's
//! generic tests (`cz_engine::testing`).
//!
//! It lives here, not in `cz-testkit`, because every phase module's own
//! tests need it and this crate cannot depend on the test kit (two copies
//! of it would link); the test kit re-exports it. None of it is compiled
//! into the daemon.

use std::collections::BTreeSet;
use std::sync::Arc;

use async_trait::async_trait;
use cz_adapters::AdapterResult;
use cz_adapters::openbao::BaoEndpoint;
use cz_engine::testing::{Rig, Scenario, Started};
use cz_engine::{JobOptions, Plan};
use cz_sim::{SimCloud, SimConfig, SimWorld, sim_backend};
use cz_state::{JobId, JobStatus, SecretString, SovereignId, Submission};
use serde_json::{Value, json};

use crate::dns::NAMESERVERS;
use crate::jobs::{self, Submit};
use crate::request::{API_VERSION, Domain, ProvisionRequest, Registrar};
use crate::{Backend, registry};

// --- requests ------------------------------------------------------------

/// A valid provision request body (pool mode under `omani.works`, one
/// `fsn1` region, every component): the one sample the tests, the e2e
/// harness and the benchmarks share. The SSH key is a real public key; the
/// caller picks the (sim-valid) cloud token and the first custodian's age
/// recipient (two more custodians get fresh ones; two of the three
/// unseal).
pub fn sample_body(
    subdomain: &str,
    control_planes: u32,
    workers: u32,
    cloud_token: &str,
    age_recipient: &str,
) -> Value {
    json!({
        "api_version": API_VERSION,
        "org": { "name": "Acme", "email": "ops@acme.io" },
        "domain": { "mode": "pool", "pool_domain": "omani.works", "subdomain": subdomain },
        "regions": [{ "provider": "hetzner", "location": "fsn1",
                      "control_plane": { "sku": "cpx32", "count": control_planes },
                      "workers": { "sku": "cpx32", "count": workers } }],
        "ssh_public_keys": ["ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIJ1jEYyjbOZZpBaF4nB0KDRtBb1WPw6mXf1Y8y3hUKt4 sample@acme"],
        "cloud_token": cloud_token,
        "custody": { "custodians": [
                        { "recipient": age_recipient, "label": "alice" },
                        { "recipient": self::age_recipient(), "label": "bob" },
                        { "recipient": self::age_recipient(), "label": "carol" } ],
                      "openbao_threshold": 2 },
        "keycloak": { "topology": "per-organization" },
    })
}

/// A fresh age recipient (its identity is dropped: nobody needs to decrypt).
pub fn age_recipient() -> String {
    age::x25519::Identity::generate().to_public().to_string()
}

/// The sample request, parsed, with a valid sim cloud token.
pub fn sample_request(subdomain: &str, control_planes: u32, workers: u32) -> ProvisionRequest {
    let body = sample_body(subdomain, control_planes, workers, &"s".repeat(64), &age_recipient());
    serde_json::from_value(body).expect("the sample request decodes")
}

/// The sample request on the customer's own domain `fqdn` at `registrar`.
pub fn byo_api_request(fqdn: &str, registrar: Registrar, token: &str) -> ProvisionRequest {
    let mut req = sample_request("byo", 1, 1);
    req.domain = Domain::ByoApi {
        fqdn: fqdn.into(),
        registrar,
        registrar_token: cz_state::SecretString::new(token),
    };
    req
}

/// A region in `location` (one control plane, one worker), as a request
/// body has it.
pub fn region_body(location: &str) -> Value {
    json!({ "provider": "hetzner", "location": location,
            "control_plane": { "sku": "cpx32", "count": 1 },
            "workers": { "sku": "cpx32", "count": 1 } })
}

/// An add-region request body for `locations`.
pub fn add_region_body(locations: &[&str]) -> Vec<u8> {
    let regions: Vec<Value> = locations.iter().map(|l| region_body(l)).collect();
    serde_json::to_vec(&json!({ "api_version": API_VERSION, "regions": regions }))
        .expect("JSON encodes")
}

// --- a rig over the sim backend ------------------------------------------

/// The engine, a store and the sim backend in one temporary directory
/// (`sim/` the simulated world, `ws/` the workspaces), with the pool
/// zone `omani.works.` served, as on real infrastructure.
pub type SimRig = Rig<Backend>;

/// A new [`SimRig`] with instant simulated latencies.
pub async fn sim_rig() -> SimRig {
    sim_rig_with(registry(), |b| b).await
}

/// A [`SimRig`] with the test's own registry (every phase's actions and
/// its own), and its backend changed by `adapt` (an adapter wrapped).
pub async fn sim_rig_with(
    registry: crate::Registry,
    adapt: impl FnOnce(Backend) -> Backend,
) -> SimRig {
    let rig = Rig::new(Arc::new(registry), |dir| {
        adapt(sim_backend(dir.join("sim"), dir.join("ws"), SimConfig::instant()))
    })
    .await;
    serve_pool_zone(&rig).await;
    rig
}

/// A [`SimRig`] over a world with `config` (its failure rules), and the
/// world itself, for tests that act on the simulated systems directly (a
/// pod restarting).
pub async fn sim_rig_in_world(config: SimConfig) -> (SimRig, Arc<SimWorld>) {
    sim_rig_in_world_with(config, |b, _| b).await
}

/// [`sim_rig_in_world`] with its backend changed by `adapt` (which also
/// gets the world, for a tap that acts on it).
pub async fn sim_rig_in_world_with(
    config: SimConfig,
    adapt: impl FnOnce(Backend, Arc<SimWorld>) -> Backend,
) -> (SimRig, Arc<SimWorld>) {
    let mut world = None;
    let rig = Rig::new(Arc::new(registry()), |dir| {
        let w = Arc::new(SimWorld::new(dir.join("sim"), config));
        world = Some(w.clone());
        adapt(cz_sim::sim_backend_with_world(w.clone(), dir.join("ws")), w)
    })
    .await;
    serve_pool_zone(&rig).await;
    (rig, world.expect("the rig built its backend"))
}

/// An OpenBao adapter watching the wire for a test: every `sys/init`
/// answer goes to `after_init` (to keep the root token, count inits), which
/// may ask for a pause inside the init window (a slow commit, a kill
/// there); every other call passes through.
pub struct BaoTap {
    pub inner: Arc<dyn cz_adapters::BaoApi>,
    #[allow(clippy::type_complexity)]
    pub after_init: Box<dyn Fn(&cz_adapters::BaoInit) -> Option<std::time::Duration> + Send + Sync>,
}

#[async_trait]
impl cz_adapters::BaoApi for BaoTap {
    async fn status(&self, at: &BaoEndpoint) -> AdapterResult<cz_adapters::BaoStatus> {
        self.inner.status(at).await
    }
    async fn init(
        &self,
        at: &BaoEndpoint,
        req: cz_adapters::BaoInitRequest,
    ) -> AdapterResult<cz_adapters::BaoInit> {
        let init = self.inner.init(at, req).await?;
        if let Some(pause) = (self.after_init)(&init) {
            tokio::time::sleep(pause).await;
        }
        Ok(init)
    }
    async fn unseal(
        &self,
        at: &BaoEndpoint,
        key: &SecretString,
    ) -> AdapterResult<cz_adapters::BaoStatus> {
        self.inner.unseal(at, key).await
    }
    async fn wipe(&self, at: &BaoEndpoint) -> AdapterResult<()> {
        self.inner.wipe(at).await
    }
    async fn leader(&self, at: &BaoEndpoint) -> AdapterResult<cz_adapters::BaoLeader> {
        self.inner.leader(at).await
    }
    async fn raft_join(
        &self,
        at: &BaoEndpoint,
        leader_api_addr: &str,
        non_voter: bool,
    ) -> AdapterResult<()> {
        self.inner.raft_join(at, leader_api_addr, non_voter).await
    }
    async fn write(
        &self,
        at: &BaoEndpoint,
        token: &SecretString,
        path: &str,
        body: Value,
    ) -> AdapterResult<Value> {
        self.inner.write(at, token, path, body).await
    }
    async fn delete(
        &self,
        at: &BaoEndpoint,
        token: &SecretString,
        path: &str,
    ) -> AdapterResult<()> {
        self.inner.delete(at, token, path).await
    }
    async fn read(
        &self,
        at: &BaoEndpoint,
        token: &SecretString,
        path: &str,
    ) -> AdapterResult<Option<Value>> {
        self.inner.read(at, token, path).await
    }
}

/// What a [`KubeTap`] runs before an apply: sees the objects, its future
/// runs first.
pub type BeforeApply = Box<
    dyn Fn(&[Value]) -> std::pin::Pin<Box<dyn std::future::Future<Output = ()> + Send>>
        + Send
        + Sync,
>;
/// What a [`KubeTap`] makes of each object a get answers.
pub type AfterGet =
    Box<dyn Fn(&cz_adapters::ObjectRef, Option<Value>) -> Option<Value> + Send + Sync>;

/// A Kubernetes adapter that lets a test act on the wire: just before an
/// apply reaches the cluster (a hand edit in the cloud at the moment
/// Crossplane arrives), or on what a get answers (a controller disturbed).
/// Every other call passes through.
pub struct KubeTap {
    pub inner: Arc<dyn cz_adapters::KubeApi>,
    pub before_apply: Option<BeforeApply>,
    pub after_get: Option<AfterGet>,
}

#[async_trait]
impl cz_adapters::KubeApi for KubeTap {
    async fn apply(&self, kc: &SecretString, manager: &str, objs: &[Value]) -> AdapterResult<()> {
        if let Some(f) = &self.before_apply {
            f(objs).await;
        }
        self.inner.apply(kc, manager, objs).await
    }
    async fn get(
        &self,
        kc: &SecretString,
        r: &cz_adapters::ObjectRef,
    ) -> AdapterResult<Option<Value>> {
        let got = self.inner.get(kc, r).await?;
        Ok(match &self.after_get {
            Some(f) => f(r, got),
            None => got,
        })
    }
    async fn list(
        &self,
        kc: &SecretString,
        api_version: &str,
        kind: &str,
        selector: &str,
    ) -> AdapterResult<Vec<Value>> {
        self.inner.list(kc, api_version, kind, selector).await
    }
    async fn delete(&self, kc: &SecretString, r: &cz_adapters::ObjectRef) -> AdapterResult<()> {
        self.inner.delete(kc, r).await
    }
    async fn server_version(&self, kc: &SecretString) -> AdapterResult<String> {
        self.inner.server_version(kc).await
    }
    async fn wait_until(
        &self,
        kc: &SecretString,
        r: &cz_adapters::ObjectRef,
        until: cz_adapters::Until,
        bound: std::time::Duration,
    ) -> AdapterResult<()> {
        self.inner.wait_until(kc, r, until, bound).await
    }
    async fn service_get(
        &self,
        kc: &SecretString,
        namespace: &str,
        service: &str,
        port: u16,
        path: &str,
    ) -> AdapterResult<(u16, String)> {
        self.inner.service_get(kc, namespace, service, port, path).await
    }
}

/// The simulated world a [`sim_rig_in_world`] rig runs in.
pub type World = SimWorld;

/// A cloud adapter that records which token each deletion used, with the
/// deleted object's region label: `(token, region)`.
pub struct CloudTap {
    pub inner: Arc<dyn cz_adapters::CloudApi>,
    pub deletions: Arc<std::sync::Mutex<Vec<(String, String)>>>,
}

#[async_trait]
impl cz_adapters::CloudApi for CloudTap {
    async fn token_scope(&self, t: &SecretString) -> AdapterResult<cz_adapters::TokenScope> {
        self.inner.token_scope(t).await
    }
    async fn limits(&self, t: &SecretString) -> AdapterResult<cz_adapters::ProjectLimits> {
        self.inner.limits(t).await
    }
    async fn locations(&self, t: &SecretString) -> AdapterResult<Vec<String>> {
        self.inner.locations(t).await
    }
    async fn server_type(
        &self,
        t: &SecretString,
        name: &str,
    ) -> AdapterResult<Option<cz_adapters::ServerType>> {
        self.inner.server_type(t, name).await
    }
    async fn load_balancer_type(
        &self,
        t: &SecretString,
        name: &str,
    ) -> AdapterResult<Option<cz_adapters::LoadBalancerType>> {
        self.inner.load_balancer_type(t, name).await
    }
    async fn list(
        &self,
        t: &SecretString,
        selector: &str,
    ) -> AdapterResult<Vec<cz_adapters::CloudObject>> {
        self.inner.list(t, selector).await
    }
    async fn find_by_name(
        &self,
        t: &SecretString,
        name: &str,
    ) -> AdapterResult<Vec<cz_adapters::CloudObject>> {
        self.inner.find_by_name(t, name).await
    }
    async fn object(
        &self,
        t: &SecretString,
        kind: &str,
        id: i64,
    ) -> AdapterResult<Option<cz_adapters::CloudObject>> {
        self.inner.object(t, kind, id).await
    }
    async fn delete(&self, t: &SecretString, obj: &cz_adapters::CloudObject) -> AdapterResult<()> {
        let region = obj.labels.get(cz_adapters::labels::LABEL_REGION).cloned().unwrap_or_default();
        self.deletions.lock().expect("tap lock").push((t.expose().to_owned(), region));
        self.inner.delete(t, obj).await
    }
    async fn server_action(
        &self,
        t: &SecretString,
        id: i64,
        action: cz_adapters::ServerAction,
    ) -> AdapterResult<()> {
        self.inner.server_action(t, id, action).await
    }
}

/// The sim world's cloud (for a test's hand edits and checks).
pub fn sim_cloud(world: &Arc<SimWorld>) -> SimCloud {
    SimCloud::new(world.clone())
}

/// Every provider resource of the sim cloud as the simulated
/// provider-hetzner names it: (Terraform type, external name). Computed by
/// the sim (the provider's side), not by the hand-off's own mapping.
pub async fn provider_resources(world: &Arc<SimWorld>) -> Vec<(String, String)> {
    use cz_sim::backend::{crossplane, hcloud_view};
    let all = SimCloud::new(world.clone()).all_objects().await.expect("sim cloud");
    let mut out = Vec::new();
    for o in &all {
        for r in hcloud_view::provider_view(o, &all) {
            out.push((r.tf_type.to_owned(), crossplane::external_name(r.tf_type, &r.values)));
        }
    }
    out.sort();
    out
}

/// The Terraform type a provider-hetzner managed resource stands for
/// (the simulated provider's table).
pub fn managed_tf_type(api_version: &str, kind: &str) -> Option<&'static str> {
    cz_sim::backend::crossplane::tf_type(api_version, kind)
}

/// The sim's failure rules and config, for [`sim_rig_in_world`].
pub use cz_sim::{FailRule, SimConfig as WorldConfig};

/// Restarts the OpenBao pod at `at` in `world`: it comes back sealed.
pub async fn restart_bao_replica(world: &SimWorld, at: &BaoEndpoint) {
    cz_sim::backend::bao::restart_replica(world, at).await.expect("the sim world writes");
}

async fn serve_pool_zone(rig: &SimRig) {
    let ns: Vec<String> = NAMESERVERS.iter().map(|s| s.to_string()).collect();
    rig.env().dns.create_zone("omani.works.", &ns, "").await.expect("the sim serves the pool zone");
}

/// What the tests do with a [`SimRig`].
#[async_trait(?Send)]
pub trait SimRigExt {
    /// Submits a provision of `req` whose plan is `plan` (a provision plan,
    /// possibly cut short), under `options`.
    async fn submit_plan(
        &self,
        req: &ProvisionRequest,
        plan: &Plan,
        options: JobOptions,
    ) -> (SovereignId, JobId);
    /// Provisions `req` to hand-off; the job must succeed.
    async fn provisioned(&self, req: &ProvisionRequest) -> SovereignId;
    /// Submits a follow-up job (add-region, destroy) as the API would.
    async fn follow_up(&self, sub: Submission) -> JobId;
    /// Every object of the sim cloud, by (kind, name).
    async fn cloud_objects(&self) -> BTreeSet<(String, String)>;
    /// Asserts nothing of `req`'s Sovereign is left: no cloud object, zone,
    /// delegation, workspace, secret but the submitted ones, and (byo-api)
    /// the registrar delegates where it did before.
    async fn assert_clean_slate(&self, sov: SovereignId, req: &ProvisionRequest, context: &str);
    /// A comparable picture of the world after a job on `req`.
    async fn end_state(&self, sov: SovereignId, req: &ProvisionRequest) -> Value;
    /// Where `req`'s registrar delegates its domain now (byo-api).
    async fn registrar_nameservers(&self, req: &ProvisionRequest) -> Vec<String>;
}

#[async_trait(?Send)]
impl SimRigExt for SimRig {
    async fn submit_plan(
        &self,
        req: &ProvisionRequest,
        plan: &Plan,
        options: JobOptions,
    ) -> (SovereignId, JobId) {
        let submit = Submit { actor: "test".into(), options: options.clone(), idempotency: None };
        let mut sub = jobs::provision(req, submit);
        // The test's options as given: the request's failure policy would
        // override the test's.
        sub.options = serde_json::to_value(&options).expect("options encode");
        sub.plan = serde_json::to_value(plan).expect("plans encode");
        let sov = match &sub.sovereign {
            cz_state::SovereignTarget::New { id, .. } => *id,
            cz_state::SovereignTarget::Existing { id, .. } => *id,
        };
        (sov, self.submit(sub).await)
    }

    async fn provisioned(&self, req: &ProvisionRequest) -> SovereignId {
        let plan = jobs::provision_plan(req);
        let (sov, job) = self.submit_plan(req, &plan, JobOptions::default()).await;
        assert_eq!(self.drive(job).await, JobStatus::Succeeded, "the provision succeeds");
        sov
    }

    async fn follow_up(&self, sub: Submission) -> JobId {
        self.submit(sub).await
    }

    async fn cloud_objects(&self) -> BTreeSet<(String, String)> {
        let world = SimWorld::new(self.root.join("sim"), SimConfig::instant());
        let cloud = SimCloud::new(Arc::new(world));
        let all = cloud.all_objects().await.expect("the sim cloud reads");
        all.into_iter().map(|o| (o.kind, o.name)).collect()
    }

    async fn assert_clean_slate(&self, sov: SovereignId, req: &ProvisionRequest, context: &str) {
        let objs = self.cloud_objects().await;
        assert!(objs.is_empty(), "{context}: cloud objects left: {objs:?}");
        let dns = &self.env().dns;
        let zone = format!("{}.", req.fqdn());
        assert!(!dns.zone_exists(&zone).await.expect("dns reads"), "{context}: zone left");
        let ns = dns.query(&zone, "NS").await.unwrap_or_default();
        assert!(ns.is_empty(), "{context}: delegation left: {ns:?}");
        let ds = dns.query(&zone, "DS").await.unwrap_or_default();
        assert!(ds.is_empty(), "{context}: DS left in the parent: {ds:?}");
        let ws = self.root.join("ws").join(sov.to_string());
        let left: Vec<_> = std::fs::read_dir(&ws)
            .map(|d| d.flatten().map(|e| e.path()).collect())
            .unwrap_or_default();
        assert!(left.is_empty(), "{context}: workspaces left: {left:?}");
        let held = self.store.secret_names(&sov.to_string()).await.expect("store reads");
        let mut submitted: Vec<String> = req.secrets().iter().map(|(n, _)| n.to_string()).collect();
        submitted.sort();
        assert_eq!(held, submitted, "{context}: secrets left");
        let escrow = self.store.escrow(&sov.to_string(), None).await.expect("store reads");
        let kinds: Vec<&str> = escrow.iter().map(|i| i.kind.as_str()).collect();
        assert!(escrow.is_empty(), "{context}: escrow left: {kinds:?}");
        if matches!(req.domain, Domain::ByoApi { .. }) {
            let ns = self.registrar_nameservers(req).await;
            let ours: Vec<String> =
                NAMESERVERS.iter().map(|n| cz_adapters::registrar::bare(n)).collect();
            assert!(
                !ns.is_empty() && ns.iter().all(|n| !ours.contains(n)),
                "{context}: the registrar was not given back: {ns:?}"
            );
        }
    }

    async fn end_state(&self, sov: SovereignId, req: &ProvisionRequest) -> Value {
        let zones = self.env().dns.list_zones().await.expect("dns reads");
        let secrets = self.store.secret_names(&sov.to_string()).await.expect("store reads");
        // The escrow as dealt (what each custodian holds; the blobs differ
        // from run to run, the keys being new).
        let escrow: Vec<(String, u32, u32)> = self
            .store
            .escrow(&sov.to_string(), None)
            .await
            .expect("store reads")
            .into_iter()
            .map(|i| (i.kind, i.index, i.custodian))
            .collect();
        let registrar = match req.domain {
            Domain::ByoApi { .. } => self.registrar_nameservers(req).await,
            Domain::Pool { .. } | Domain::ByoManual { .. } => Vec::new(),
        };
        json!({
            "cloud": self.cloud_objects().await,
            "zones": zones,
            "secrets": secrets,
            "escrow": escrow,
            "registrar": registrar,
        })
    }

    async fn registrar_nameservers(&self, req: &ProvisionRequest) -> Vec<String> {
        let Domain::ByoApi { registrar, registrar_token, .. } = &req.domain else {
            return Vec::new();
        };
        let api = self.env().registrars.connect(*registrar, registrar_token).expect("connects");
        let mut ns = api.get_nameservers(&req.fqdn()).await.expect("the registrar answers");
        ns.sort();
        ns
    }
}

// --- one phase under the generic tests -----------------------------------

/// A provision of `request` cut short after `phase`, whose steps are the
/// ones under test: a failure injected in `phase` unwinds the phases
/// before it too, and the clean slate is the whole job's.
pub struct PhaseScenario {
    pub request: ProvisionRequest,
    pub phase: String,
    pub plan: Plan,
}

impl PhaseScenario {
    /// Every step of the job that runs (released nodes left out).
    pub fn run_steps(&self) -> Vec<String> {
        self.plan.steps_that_run().map(|n| n.id.clone()).collect()
    }
    pub fn provision(request: ProvisionRequest, phase: &str) -> PhaseScenario {
        let mut plan = jobs::provision_plan(&request);
        let at = plan.phases.iter().position(|p| p.id == phase).expect("a provision phase");
        plan.phases.truncate(at + 1);
        PhaseScenario { request, phase: phase.to_owned(), plan }
    }

    /// The phase's plan is valid for the registry, is stored with its job
    /// and read back unchanged, and still fits the registry.
    pub async fn assert_plan_round_trips(&self) {
        let full = jobs::provision_plan(&self.request);
        let phase = full.phase(&self.phase).expect("the plan has the phase");
        assert!(!phase.nodes.is_empty(), "the phase has steps");
        let registry = registry();
        registry.check_plan(&full).expect("the plan fits the registry");
        let rig = sim_rig().await;
        let sub = jobs::provision(&self.request, Submit::default());
        let job = rig.submit(sub).await;
        let stored = rig.job(job).await;
        let back: Plan = serde_json::from_value(stored.plan).expect("the stored plan decodes");
        assert_eq!(back, full, "the plan round-trips through the store");
        registry.check_plan(&back).expect("the stored plan fits the registry");
        let phase_back = back.phase(&self.phase).expect("the stored plan has the phase");
        assert_eq!(phase_back, phase);
    }

    /// Where the registrar delegates the domain after a plain run.
    pub async fn registrar_nameservers_after_a_run(&self) -> Vec<String> {
        let run = self.start(JobOptions::default()).await;
        assert_eq!(run.rig.drive(run.job).await, JobStatus::Succeeded);
        run.rig.registrar_nameservers(&self.request).await
    }
}

#[async_trait(?Send)]
impl Scenario for PhaseScenario {
    type Env = Backend;

    fn steps(&self) -> Vec<String> {
        self.plan
            .phase(&self.phase)
            .map(|p| {
                // A released node runs nothing of its own: its producer's
                // failure and repetition are the ones to test.
                p.nodes.iter().filter(|n| n.released_by.is_none()).map(|n| n.id.clone()).collect()
            })
            .unwrap_or_default()
    }

    fn all_steps(&self) -> Vec<String> {
        self.plan.nodes_in_order().iter().map(|n| n.id.clone()).collect()
    }

    async fn start(&self, options: JobOptions) -> Started<Backend> {
        let rig = sim_rig().await;
        let (sovereign, job) = rig.submit_plan(&self.request, &self.plan, options).await;
        Started { rig, sovereign, job }
    }

    async fn assert_clean_slate(&self, run: &Started<Backend>, failed_at: &str) {
        run.rig.assert_clean_slate(run.sovereign, &self.request, failed_at).await;
        // Nor does a sealing key made ahead wait in memory for a job gone.
        assert!(!crate::custody::has_key_ahead(run.job), "{failed_at}: a sealing key made ahead");
    }

    async fn end_state(&self, run: &Started<Backend>) -> Value {
        run.rig.end_state(run.sovereign, &self.request).await
    }
}

/// The tests every phase module runs, on `$request` cut short after the
/// phase `$phase`: the generic unwind and run-twice tests on the phase's
/// own steps ([`cz_engine::testing`]), and its plan's round trip through
/// the store. (This crate's own tests only.)
#[cfg(test)]
macro_rules! phase_tests {
    ($phase:expr, $request:expr) => {
        /// Fail at each step in turn: the unwind leaves a clean slate.
        #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
        async fn every_step_failure_unwinds() {
            let s = $crate::testing::PhaseScenario::provision($request, $phase);
            cz_engine::testing::every_step_failure_unwinds(&s).await;
        }

        /// Every do and undo twice: the same end state as once.
        #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
        async fn every_step_runs_twice() {
            let s = $crate::testing::PhaseScenario::provision($request, $phase);
            cz_engine::testing::every_step_runs_twice(&s).await;
        }

        /// The plan fits the registry and round-trips through the store.
        #[tokio::test]
        async fn the_plan_builds_and_round_trips_through_the_store() {
            let s = $crate::testing::PhaseScenario::provision($request, $phase);
            s.assert_plan_round_trips().await;
        }
    };
}
#[cfg(test)]
pub(crate) use phase_tests;
