//! The job kinds: from a validated request to a job's plan and its
//! submission (the Sovereign, the job row, the sealed secrets and the audit
//! record, which the store writes in one transaction). The API adds only
//! the idempotency key and who asked; the tests submit through the same
//! functions.
//!
//! What each job stores as its request, and what its steps read back
//! through [`JobRequest`]:
//! - `provision`: the [`ProvisionRequest`] (its secrets are not serialized;
//!   they are sealed in the store apart from it);
//! - `add-region` and `destroy`: a [`FollowUp`], the new (or every) region
//!   and a [`SovereignBlock`], what the Sovereign's provision said that
//!   later jobs need.

use cz_engine::{FailurePolicy, JobOptions, Plan, PlanError};
use cz_state::{
    IdempotencyKey, Job, JobId, JobKind, JobStatus, NewAudit, SecretString, Sovereign, SovereignId,
    SovereignStatus, SovereignTarget, Submission,
};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

use crate::request::{AddRegionRequest, Domain, ProvisionRequest, Region, Registrar, Seal};
use crate::{bootstrap_kit, cluster, custody, destroy, dns, handoff, infra, preflight, registry};

/// What later jobs know of the Sovereign, stored in their request.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct SovereignBlock {
    pub fqdn: String,
    /// The provision's authorized keys: an add-region's new servers get
    /// the same ones.
    #[serde(default)]
    pub ssh_public_keys: Vec<String>,
    /// Pool mode: the parent zone that delegates to the Sovereign.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pool_domain: Option<String>,
    /// `byo-api`: the registrar destroy gives the delegation back at.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub registrar: Option<Registrar>,
    /// The provision's components (add-region installs the regional ones).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub components: Vec<String>,
    /// OpenBao's seal, as the provision asked.
    #[serde(default)]
    pub seal: crate::request::Seal,
    /// The provision's first region, where the Sovereign's OpenBao cluster
    /// (the raft leader an added region joins) runs. Empty in follow-ups
    /// stored before it was recorded.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub home_location: String,
    /// The provision's custodians (public recipients only): an added
    /// region's admin kubeconfig is escrowed to them, and they unseal its
    /// OpenBao replicas.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub custody: Option<crate::request::Custody>,
}

impl SovereignBlock {
    /// The block for a Sovereign provisioned by `provision`.
    pub fn of(fqdn: &str, provision: &ProvisionRequest) -> SovereignBlock {
        let (pool_domain, registrar) = match &provision.domain {
            Domain::Pool { pool_domain, .. } => (Some(pool_domain.clone()), None),
            Domain::ByoApi { registrar, .. } => (None, Some(*registrar)),
            Domain::ByoManual { .. } => (None, None),
        };
        SovereignBlock {
            fqdn: fqdn.to_owned(),
            ssh_public_keys: provision.ssh_public_keys.clone(),
            pool_domain,
            registrar,
            components: provision.components.clone(),
            seal: provision.custody.seal,
            home_location: provision
                .regions
                .first()
                .map(|r| r.location.clone())
                .unwrap_or_default(),
            custody: Some(provision.custody.clone()),
        }
    }
}

/// The stored request of an `add-region` or `destroy` job.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct FollowUp {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub api_version: Option<String>,
    /// add-region: the new regions; destroy: every region the Sovereign has.
    pub regions: Vec<Region>,
    pub sovereign: SovereignBlock,
}

/// A job's stored request, whatever its kind, as its steps read it.
#[derive(Clone, Debug)]
pub enum JobRequest {
    Provision(Box<ProvisionRequest>),
    FollowUp(FollowUp),
}

impl JobRequest {
    /// Decodes a stored request: a follow-up has a `sovereign` block.
    pub fn decode(v: &Value) -> Result<JobRequest, serde_json::Error> {
        if v.get("sovereign").is_some() {
            Ok(JobRequest::FollowUp(serde_json::from_value(v.clone())?))
        } else {
            Ok(JobRequest::Provision(Box::new(serde_json::from_value(v.clone())?)))
        }
    }

    pub fn fqdn(&self) -> String {
        match self {
            JobRequest::Provision(r) => r.fqdn(),
            JobRequest::FollowUp(f) => f.sovereign.fqdn.clone(),
        }
    }

    pub fn regions(&self) -> &[Region] {
        match self {
            JobRequest::Provision(r) => &r.regions,
            JobRequest::FollowUp(f) => &f.regions,
        }
    }

    /// The parent zone that delegates to the Sovereign (pool mode only).
    pub fn pool_domain(&self) -> Option<String> {
        match self {
            JobRequest::Provision(r) => match &r.domain {
                Domain::Pool { pool_domain, .. } => Some(pool_domain.clone()),
                Domain::ByoManual { .. } | Domain::ByoApi { .. } => None,
            },
            JobRequest::FollowUp(f) => f.sovereign.pool_domain.clone(),
        }
    }

    /// The registrar of a `byo-api` domain.
    pub fn registrar(&self) -> Option<Registrar> {
        match self {
            JobRequest::Provision(r) => match &r.domain {
                Domain::ByoApi { registrar, .. } => Some(*registrar),
                Domain::Pool { .. } | Domain::ByoManual { .. } => None,
            },
            JobRequest::FollowUp(f) => f.sovereign.registrar,
        }
    }

    /// Whether the zone is to be signed (provision jobs only).
    pub fn dnssec(&self) -> bool {
        matches!(self, JobRequest::Provision(r) if r.dnssec)
    }

    pub fn ssh_public_keys(&self) -> &[String] {
        match self {
            JobRequest::Provision(r) => &r.ssh_public_keys,
            JobRequest::FollowUp(f) => &f.sovereign.ssh_public_keys,
        }
    }

    pub fn components(&self) -> &[String] {
        match self {
            JobRequest::Provision(r) => &r.components,
            JobRequest::FollowUp(f) => &f.sovereign.components,
        }
    }

    /// OpenBao's seal.
    pub fn seal(&self) -> crate::request::Seal {
        match self {
            JobRequest::Provision(r) => r.custody.seal,
            JobRequest::FollowUp(f) => f.sovereign.seal,
        }
    }

    /// Where the Sovereign's OpenBao cluster runs: the provision's first
    /// region.
    pub fn home_location(&self) -> Option<String> {
        match self {
            JobRequest::Provision(r) => r.regions.first().map(|r| r.location.clone()),
            JobRequest::FollowUp(f) => {
                Some(f.sovereign.home_location.clone()).filter(|l| !l.is_empty())
            }
        }
    }

    /// The Sovereign's custody block (custodians, threshold, seal).
    pub fn custody(&self) -> Option<&crate::request::Custody> {
        match self {
            JobRequest::Provision(r) => Some(&r.custody),
            JobRequest::FollowUp(f) => f.sovereign.custody.as_ref(),
        }
    }

    /// The provision request itself (custody, keycloak, ...), for the
    /// phases only a provision runs.
    pub fn provision(&self) -> Option<&ProvisionRequest> {
        match self {
            JobRequest::Provision(r) => Some(r),
            JobRequest::FollowUp(_) => None,
        }
    }
}

// --- plans ---------------------------------------------------------------

/// The `provision` plan for a validated request.
pub fn provision_plan(req: &ProvisionRequest) -> Plan {
    let regions = &req.regions;
    Plan {
        phases: vec![
            preflight::phase(regions, true),
            dns::reserve::phase(),
            infra::phase(regions),
            cluster::phase(regions),
            custody::phase(req.custody.seal),
            bootstrap_kit::phase(&req.components, &regions[0].location, false),
            handoff::secrets::phase(),
            dns::commit::phase(regions, false),
            handoff::infra::phase(regions),
        ],
    }
}

/// The `add-region` plan: the new regions only, with the regional subset
/// of the Sovereign's `components`.
pub fn add_region_plan(regions: &[Region], components: &[String], seal: Seal) -> Plan {
    let regional: Vec<String> = components
        .iter()
        .filter(|c| crate::release::regional().contains(&c.as_str()))
        .cloned()
        .collect();
    let mut phases =
        vec![preflight::phase(regions, false), infra::phase(regions), cluster::phase(regions)];
    if seal == Seal::Static {
        phases.push(handoff::join::custody_phase(regions));
    }
    for r in regions {
        phases.push(bootstrap_kit::regional_phase(&regional, &r.location));
    }
    if regional.iter().any(|c| c == "openbao") {
        phases.push(handoff::join::phase(regions));
    }
    phases.push(dns::commit::phase(regions, true));
    phases.push(handoff::infra::phase(regions));
    Plan { phases }
}

/// The `destroy` plan for a Sovereign with regions in `locations`.
pub fn destroy_plan(locations: &[String]) -> Plan {
    destroy::plan(locations)
}

/// A JSON summary of a plan for the API: phases with their step ids.
pub fn plan_summary(plan: &Plan) -> Value {
    json!(
        plan.phases
            .iter()
            .map(|p| json!({ "phase": p.id, "steps": p.nodes.iter().map(|n| &n.id).collect::<Vec<_>>() }))
            .collect::<Vec<_>>()
    )
}

// --- submissions ---------------------------------------------------------

/// Who asks, and how: the parts of a submission the caller decides.
#[derive(Clone, Debug, Default)]
pub struct Submit {
    /// The actor recorded in the audit trail (`operator`, `wizard`, ...).
    pub actor: String,
    pub options: JobOptions,
    pub idempotency: Option<IdempotencyKey>,
}

/// Why a follow-up job cannot be made for a Sovereign.
#[derive(Debug, thiserror::Error)]
pub enum FollowUpError {
    #[error("this sovereign has no provision job")]
    NoProvision,
    #[error("the sovereign's provision request does not decode: {0}")]
    BadProvision(String),
    #[error("sovereign is `{0}`; regions can be added to a ready sovereign only")]
    NotReady(SovereignStatus),
    #[error("the request is invalid")]
    Invalid(Vec<crate::request::FieldError>),
    /// The request is valid but does not fit the Sovereign as it is.
    #[error("the request conflicts with the sovereign: {}", conflicts_text(.0))]
    Conflicts(Vec<crate::request::FieldError>),
}

fn conflicts_text(errors: &[crate::request::FieldError]) -> String {
    errors.iter().map(ToString::to_string).collect::<Vec<_>>().join("; ")
}

/// A checked plan, serialized for the store. The plan was just built from
/// typed params, so a refusal here is a bug in a phase's builder.
fn checked(plan: &Plan) -> Value {
    let r: Result<(), PlanError> = registry().check_plan(plan);
    if let Err(e) = r {
        panic!("a freshly built plan does not fit its actions: {e}");
    }
    serde_json::to_value(plan).expect("plans serialize")
}

fn options_json(options: &JobOptions) -> Value {
    serde_json::to_value(options).expect("options serialize")
}

fn response(sovereign: SovereignId, job: JobId) -> Value {
    json!({ "sovereign_id": sovereign.to_string(), "job_id": job.to_string() })
}

/// A `provision` job for a validated request: a new Sovereign, its plan,
/// the request (secrets are skipped by its serializer) and the secrets to
/// seal, owned by the Sovereign. The job's failure policy is the request's.
pub fn provision(req: &ProvisionRequest, submit: Submit) -> Submission {
    let (sov, job) = (SovereignId::new(), JobId::new());
    let options = JobOptions { on_failure: req.on_failure, ..submit.options };
    let owner = sov.to_string();
    Submission {
        sovereign: SovereignTarget::New { id: sov, name: req.name(), fqdn: req.fqdn() },
        job_id: job,
        kind: JobKind::Provision,
        request: serde_json::to_value(req).expect("requests serialize"),
        plan: checked(&provision_plan(req)),
        options: options_json(&options),
        secrets: req.secrets().into_iter().map(|(n, v)| (owner.clone(), n.to_owned(), v)).collect(),
        idempotency: submit.idempotency,
        response: response(sov, job),
        audit: NewAudit {
            actor: submit.actor,
            action: "submit".into(),
            job_id: Some(job),
            sovereign_id: Some(sov),
            detail: json!({
                "kind": "provision",
                "fqdn": req.fqdn(),
                "faults": options.faults != Default::default(),
            }),
        },
    }
}

/// What a Sovereign's jobs say about it: its provision request, and every
/// region it has (provision regions plus succeeded add-region regions).
pub struct Footprint {
    pub provision: ProvisionRequest,
    pub regions: Vec<Region>,
}

impl Footprint {
    pub fn of(jobs: &[Job]) -> Result<Footprint, FollowUpError> {
        let stored =
            jobs.iter().find(|j| j.kind == JobKind::Provision).ok_or(FollowUpError::NoProvision)?;
        let provision: ProvisionRequest = serde_json::from_value(stored.request.clone())
            .map_err(|e| FollowUpError::BadProvision(e.to_string()))?;
        let mut regions = provision.regions.clone();
        for j in
            jobs.iter().filter(|j| j.kind == JobKind::AddRegion && j.status == JobStatus::Succeeded)
        {
            if let Ok(f) = serde_json::from_value::<FollowUp>(j.request.clone()) {
                regions.extend(f.regions);
            }
        }
        Ok(Footprint { provision, regions })
    }

    pub fn locations(&self) -> Vec<String> {
        let mut out: Vec<String> = Vec::new();
        for r in &self.regions {
            if !out.contains(&r.location) {
                out.push(r.location.clone());
            }
        }
        out
    }
}

/// An `add-region` job for `sovereign`, whose jobs are `jobs`, from the
/// request `body` (validated here, against the regions it has).
pub fn add_region(
    sovereign: &Sovereign,
    jobs: &[Job],
    body: &[u8],
    submit: Submit,
) -> Result<Submission, FollowUpError> {
    let fp = Footprint::of(jobs)?;
    let req: AddRegionRequest =
        crate::request::parse_add_region(body).map_err(FollowUpError::Invalid)?;
    let conflicts = req.conflicts(&fp.locations());
    if !conflicts.is_empty() {
        return Err(FollowUpError::Conflicts(conflicts));
    }
    // A busy Sovereign (job in flight) is refused by the store, in the same
    // transaction that would create the job.
    if matches!(
        sovereign.status,
        SovereignStatus::Failed | SovereignStatus::Destroying | SovereignStatus::Destroyed
    ) {
        return Err(FollowUpError::NotReady(sovereign.status));
    }
    let block = SovereignBlock::of(&sovereign.fqdn, &fp.provision);
    let plan = add_region_plan(&req.regions, &block.components, block.seal);
    let request = FollowUp {
        api_version: Some(req.api_version.clone()),
        regions: req.regions.clone(),
        sovereign: block,
    };
    let options = JobOptions { on_failure: FailurePolicy::Rollback, ..submit.options };
    let job = JobId::new();
    let owner = sovereign.id.to_string();
    // A new token is the new regions' own: the regions already there keep
    // the one their objects were made with (and destroy uses each).
    let secrets: Vec<(String, String, SecretString)> = req
        .cloud_token
        .iter()
        .flat_map(|t| {
            req.regions
                .iter()
                .map(|r| (owner.clone(), crate::common::region_token_name(&r.location), t.clone()))
        })
        .collect();
    let locations: Vec<&str> = req.regions.iter().map(|r| r.location.as_str()).collect();
    Ok(Submission {
        sovereign: SovereignTarget::Existing {
            id: sovereign.id,
            status: SovereignStatus::Provisioning,
        },
        job_id: job,
        kind: JobKind::AddRegion,
        request: serde_json::to_value(&request).expect("requests serialize"),
        plan: checked(&plan),
        options: options_json(&options),
        secrets,
        idempotency: submit.idempotency,
        response: response(sovereign.id, job),
        audit: NewAudit {
            actor: submit.actor,
            action: "add-region".into(),
            job_id: Some(job),
            sovereign_id: Some(sovereign.id),
            detail: json!({ "locations": locations, "new_cloud_token": req.cloud_token.is_some() }),
        },
    })
}

/// A `destroy` job for `sovereign`: every region it has, the DNS it holds,
/// its secrets. It keeps what it has done when it fails (no rollback).
pub fn destroy(
    sovereign: &Sovereign,
    jobs: &[Job],
    submit: Submit,
) -> Result<Submission, FollowUpError> {
    let fp = Footprint::of(jobs)?;
    let locations = fp.locations();
    let request = FollowUp {
        api_version: None,
        regions: fp.regions.clone(),
        sovereign: SovereignBlock::of(&sovereign.fqdn, &fp.provision),
    };
    let options = JobOptions { on_failure: FailurePolicy::Keep, ..submit.options };
    let job = JobId::new();
    Ok(Submission {
        sovereign: SovereignTarget::Existing {
            id: sovereign.id,
            status: SovereignStatus::Destroying,
        },
        job_id: job,
        kind: JobKind::Destroy,
        request: serde_json::to_value(&request).expect("requests serialize"),
        plan: checked(&destroy_plan(&locations)),
        options: options_json(&options),
        secrets: Vec::new(),
        idempotency: submit.idempotency,
        response: response(sovereign.id, job),
        audit: NewAudit {
            actor: submit.actor,
            action: "destroy".into(),
            job_id: Some(job),
            sovereign_id: Some(sovereign.id),
            detail: json!({ "fqdn": sovereign.fqdn, "locations": locations }),
        },
    })
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;
    use std::sync::Arc;

    use async_trait::async_trait;
    use cz_engine::testing::{
        Scenario, Started, every_step_failure_unwinds, every_step_runs_twice,
    };
    use cz_engine::{ErrorClass, FaultPlan, RetryPolicy, Verbs};
    use cz_state::SovereignStatus;

    use super::*;
    use crate::common::slug;
    use crate::testing::{SimRigExt, add_region_body, byo_api_request, sample_request, sim_rig};

    /// `req` with the static seal: an added region's OpenBao unseals
    /// itself, where with Shamir the job waits for custodians
    /// (`handoff::join::tests` has them).
    fn static_seal(mut req: ProvisionRequest) -> ProvisionRequest {
        req.custody.seal = Seal::Static;
        req
    }

    /// The whole provision of a `byo-api` domain under the generic unwind
    /// test: whatever step fails, the registrar gets its delegation back.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn every_step_failure_of_a_byo_api_provision_unwinds() {
        let req = byo_api_request("acme-unwind.com", Registrar::Godaddy, "key:secret");
        let last = crate::PROVISION_PHASES.last().expect("phases");
        let s = crate::testing::PhaseScenario::provision(req, last);
        let whole = WholeJob(s);
        every_step_failure_unwinds(&whole).await;
    }

    /// A [`crate::testing::PhaseScenario`] with every step of the job under test.
    struct WholeJob(crate::testing::PhaseScenario);

    #[async_trait(?Send)]
    impl Scenario for WholeJob {
        type Env = crate::Backend;
        fn steps(&self) -> Vec<String> {
            self.0.run_steps()
        }
        fn all_steps(&self) -> Vec<String> {
            self.0.all_steps()
        }
        async fn start(&self, options: JobOptions) -> Started<crate::Backend> {
            self.0.start(options).await
        }
        async fn assert_clean_slate(&self, run: &Started<crate::Backend>, failed_at: &str) {
            self.0.assert_clean_slate(run, failed_at).await
        }
        async fn end_state(&self, run: &Started<crate::Backend>) -> Value {
            self.0.end_state(run).await
        }
    }

    #[tokio::test]
    async fn provision_runs_to_hand_off() {
        let rig = sim_rig().await;
        let req = sample_request("alpha", 3, 2);
        let plan = provision_plan(&req);
        let ids: Vec<&str> = plan.phases.iter().map(|p| p.id.as_str()).collect();
        assert_eq!(ids, crate::PROVISION_PHASES);
        let sov = rig.provisioned(&req).await;
        let objs = rig.cloud_objects().await;
        assert_eq!(objs.iter().filter(|(k, _)| k == "server").count(), 5);
        assert_eq!(objs.iter().filter(|(k, _)| k == "load_balancer").count(), 1);
        let s = rig.store.get_sovereign(sov).await.unwrap().unwrap();
        assert_eq!(s.status, SovereignStatus::Ready);
    }

    /// Transient failures are retried (and counted); a needs-operator one
    /// pauses before anything is spent; `skip` with a reason, audited, lets
    /// the job finish.
    #[tokio::test]
    async fn transient_failures_are_retried_and_needs_operator_pauses() {
        let rig = sim_rig().await;
        let req = sample_request("retry", 1, 0);
        let mut faults = FaultPlan::default();
        faults.flaky.insert("infra/apply-fsn1".into(), 2);
        faults.fail.insert("preflight/cost-preview".into(), ErrorClass::NeedsOperator);
        let retry = RetryPolicy { max_attempts: 5, min_delay_ms: 1, max_delay_ms: 5 };
        let options = JobOptions { faults, retry, ..Default::default() };
        let (_, job) = rig.submit_plan(&req, &provision_plan(&req), options).await;
        assert_eq!(rig.drive(job).await, JobStatus::Paused);
        let pause = rig.job(job).await.pause.unwrap();
        assert_eq!(pause["step"], "preflight/cost-preview");
        assert_eq!(pause["error"]["runbook"], "runbooks/injected-fault.md");
        assert!(rig.cloud_objects().await.is_empty(), "nothing spent before preflight passes");
        Verbs { store: &rig.store }
            .skip(job, "preflight/cost-preview", "preview checked by hand", "alice")
            .await
            .unwrap();
        assert_eq!(rig.drive(job).await, JobStatus::Succeeded);
        let states = rig.store.node_states(job).await.unwrap();
        assert_eq!(
            states["infra/apply-fsn1"].attempts(),
            3,
            "two transient failures, then success"
        );
        let audit = rig.store.audit(Some(job)).await.unwrap();
        assert!(audit.iter().any(|a| a.action == "skip"
            && a.actor == "alice"
            && a.detail["reason"] == "preview checked by hand"));
    }

    /// A tofu state lock held by a live process (a replica paused
    /// mid-apply, which lost the job's lease) is waited for, never taken
    /// and never handed to an operator: once its holder lets go, the same
    /// job applies and succeeds. (A CI run of three replicas paused one
    /// while it held the lock; its job's new owner paused for an operator.)
    #[tokio::test]
    async fn a_state_lock_held_by_a_live_process_is_waited_for() {
        let rig = sim_rig().await;
        let req = sample_request("locked", 1, 0);
        let retry = RetryPolicy { max_attempts: 6, min_delay_ms: 20, max_delay_ms: 100 };
        let options = JobOptions { retry, ..Default::default() };
        let (sov, job) = rig.submit_plan(&req, &provision_plan(&req), options).await;
        let ws = rig.root.join("ws").join(sov.to_string()).join("fsn1");
        std::fs::create_dir_all(&ws).unwrap();
        let lock = ws.join(cz_adapters::tofu::cli::LOCK_FILE);
        // Held by this process: alive, as a stopped replica's is.
        std::fs::write(&lock, json!({"ID": "replica-1", "pid": std::process::id()}).to_string())
            .unwrap();
        // The holder lets go once the apply has waited for it.
        let store = rig.store.clone();
        let release = tokio::spawn(async move {
            loop {
                let events = store.events_after(job, 0, i64::MAX).await.unwrap();
                let waited = events
                    .iter()
                    .any(|e| e.body["step"] == "infra/apply-fsn1" && e.body["state"] == "retrying");
                if waited {
                    std::fs::remove_file(&lock).unwrap();
                    return;
                }
                tokio::time::sleep(std::time::Duration::from_millis(10)).await;
            }
        });
        assert_eq!(rig.drive(job).await, JobStatus::Succeeded, "{}", rig.stop_reason(job).await);
        release.await.unwrap();
        let retried = rig.events(job, "step").await;
        let waited = retried
            .iter()
            .find(|e| e["step"] == "infra/apply-fsn1" && e["state"] == "retrying")
            .expect("the apply waited for the lock");
        assert_eq!(waited["error"]["cause"], "unavailable", "{waited}");
        let message = waited["error"]["message"].as_str().unwrap_or_default();
        assert!(message.contains("locked by a running process"), "{message}");
        assert_eq!(rig.cloud_objects().await.iter().filter(|(k, _)| k == "server").count(), 1);
    }

    async fn sovereign_and_jobs(
        rig: &crate::testing::SimRig,
        sov: SovereignId,
    ) -> (Sovereign, Vec<Job>) {
        let s = rig.store.get_sovereign(sov).await.unwrap().unwrap();
        (s, rig.store.list_jobs(Some(sov)).await.unwrap())
    }

    #[tokio::test]
    async fn add_region_then_destroy_leaves_nothing() {
        let rig = sim_rig().await;
        let req = static_seal(sample_request("multi", 1, 0));
        let sov = rig.provisioned(&req).await;
        let (s, js) = sovereign_and_jobs(&rig, sov).await;
        let sub = add_region(&s, &js, &add_region_body(&["hel1"]), Submit::default()).unwrap();
        let job = rig.submit(sub).await;
        assert_eq!(rig.drive(job).await, JobStatus::Succeeded);
        let servers = rig.cloud_objects().await.into_iter().filter(|(k, _)| k == "server").count();
        assert_eq!(servers, 3, "fsn1: 1 server, hel1: 1 + 1");
        let (s, js) = sovereign_and_jobs(&rig, sov).await;
        let sub = destroy(&s, &js, Submit::default()).unwrap();
        let stored: FollowUp = serde_json::from_value(sub.request.clone()).unwrap();
        let locations: Vec<&str> = stored.regions.iter().map(|r| r.location.as_str()).collect();
        assert_eq!(locations, ["fsn1", "hel1"], "destroy covers every region");
        let job = rig.submit(sub).await;
        assert_eq!(rig.drive(job).await, JobStatus::Succeeded);
        assert!(rig.cloud_objects().await.is_empty());
        let zone = format!("{}.", req.fqdn());
        assert!(!rig.env().dns.zone_exists(&zone).await.unwrap());
        let s = rig.store.get_sovereign(sov).await.unwrap().unwrap();
        assert_eq!(s.status, SovereignStatus::Destroyed);
    }

    /// An add-region job with a token of its own keeps it for its new
    /// region: the first region's token is unchanged, and destroy removes
    /// each region's objects with that region's token (tofu destroy of a
    /// handed-off region is skipped; the sweep does the deleting).
    #[tokio::test]
    async fn each_region_keeps_its_own_token_through_destroy() {
        let deletions: Arc<std::sync::Mutex<Vec<(String, String)>>> = Arc::default();
        let seen = deletions.clone();
        let rig = crate::testing::sim_rig_with(crate::registry(), move |mut b| {
            b.cloud =
                Arc::new(crate::testing::CloudTap { inner: b.cloud.clone(), deletions: seen });
            b
        })
        .await;
        let req = static_seal(sample_request("tokens", 1, 0));
        let first = req.cloud_token.expose().to_owned();
        let sov = rig.provisioned(&req).await;
        let (s, js) = sovereign_and_jobs(&rig, sov).await;
        let second = "t".repeat(64);
        let mut body: Value = serde_json::from_slice(&add_region_body(&["hel1"])).unwrap();
        body["cloud_token"] = json!(second);
        let sub =
            add_region(&s, &js, &serde_json::to_vec(&body).unwrap(), Submit::default()).unwrap();
        let job = rig.submit(sub).await;
        assert_eq!(rig.drive(job).await, JobStatus::Succeeded);
        let owner = sov.to_string();
        let get = |n: &str| {
            let (store, n) = (rig.store.clone(), n.to_owned());
            let owner = owner.clone();
            async move { store.get_secret(&owner, &n).await.unwrap().map(|t| t.expose().to_owned()) }
        };
        assert_eq!(get("cloud_token").await.as_deref(), Some(first.as_str()));
        assert_eq!(get("cloud_token.hel1").await.as_deref(), Some(second.as_str()));
        assert_eq!(get("cloud_token.fsn1").await, None);

        let (s, js) = sovereign_and_jobs(&rig, sov).await;
        let job = rig.submit(destroy(&s, &js, Submit::default()).unwrap()).await;
        assert_eq!(rig.drive(job).await, JobStatus::Succeeded);
        assert!(rig.cloud_objects().await.is_empty());
        let deletions = deletions.lock().unwrap().clone();
        assert!(deletions.iter().any(|(_, r)| r == "hel1"));
        for (token, region) in &deletions {
            let want = if region == "hel1" { &second } else { &first };
            assert_eq!(token, want, "an object of {region} deleted with another region's token");
        }
        assert_eq!(get("cloud_token.hel1").await, None, "destroy forgets it");
    }

    /// A region in another network zone (ash, us-east) gets its own
    /// network in that zone, and is handed to its own cluster's Crossplane
    /// like the first; the first region's objects, archive and managed
    /// resources are untouched.
    #[tokio::test]
    async fn add_region_in_another_network_zone_leaves_the_first_untouched() {
        let rig = sim_rig().await;
        let req = static_seal(sample_request("zones", 1, 0));
        let sov = rig.provisioned(&req).await;
        let owner = sov.to_string();
        let kc = |loc: &'static str| {
            let (store, owner) = (rig.store.clone(), owner.clone());
            async move { store.get_secret(&owner, &format!("kubeconfig-{loc}")).await.unwrap().unwrap() }
        };
        let subnets = |kc: SecretString| {
            let kube = rig.env().kube.clone();
            async move {
                kube.list(&kc, "network.hetzner.m.crossplane.io/v1alpha1", "Subnet", "")
                    .await
                    .unwrap()
            }
        };
        let fsn1_objects = |all: BTreeSet<(String, String)>| -> BTreeSet<(String, String)> {
            all.into_iter().filter(|(_, n)| n.contains("-fsn1-")).collect()
        };
        let before = fsn1_objects(rig.cloud_objects().await);
        let fsn1_mrs = subnets(kc("fsn1").await).await;
        let archive = rig.store.get_secret(&owner, "tofu-state-archive-fsn1").await.unwrap();

        let (s, js) = sovereign_and_jobs(&rig, sov).await;
        let sub = add_region(&s, &js, &add_region_body(&["ash"]), Submit::default()).unwrap();
        let job = rig.submit(sub).await;
        assert_eq!(rig.drive(job).await, JobStatus::Succeeded);

        let all = rig.cloud_objects().await;
        assert!(all.contains(&("network".to_owned(), "zones-omani-works-ash-net".to_owned())));
        let ash = subnets(kc("ash").await).await;
        assert_eq!(ash.len(), 1);
        assert_eq!(ash[0]["status"]["atProvider"]["networkZone"], "us-east", "{}", ash[0]);
        assert_eq!(ash[0]["spec"]["forProvider"]["networkZone"], "us-east");
        // The first region: same objects, same managed resources, same archive.
        assert_eq!(fsn1_objects(all), before);
        assert_eq!(subnets(kc("fsn1").await).await, fsn1_mrs);
        assert_eq!(
            rig.store
                .get_secret(&owner, "tofu-state-archive-fsn1")
                .await
                .unwrap()
                .map(|a| a.expose().to_owned()),
            archive.map(|a| a.expose().to_owned())
        );
    }

    /// An add-region job the project cannot hold stops in pre-flight,
    /// before any object, workspace or cluster of the new region exists;
    /// the first region is untouched.
    #[tokio::test]
    async fn an_add_region_over_quota_stops_in_preflight_with_nothing_created() {
        let rig = sim_rig().await;
        let req = sample_request("quota", 1, 0);
        let sov = rig.provisioned(&req).await;
        let before = rig.cloud_objects().await;
        let (s, js) = sovereign_and_jobs(&rig, sov).await;
        // 1 + 22 servers with the first region's 1: over the project's 25.
        let mut body: Value = serde_json::from_slice(&add_region_body(&["hel1"])).unwrap();
        body["regions"][0]["control_plane"]["count"] = json!(3);
        body["regions"][0]["workers"]["count"] = json!(22);
        let sub =
            add_region(&s, &js, &serde_json::to_vec(&body).unwrap(), Submit::default()).unwrap();
        let job = rig.submit(sub).await;
        let status = rig.drive(job).await;
        assert!(matches!(status, JobStatus::Paused | JobStatus::Failed), "{status}");
        let stop = rig.stop_reason(job).await;
        assert_eq!(stop["step"], "preflight/quotas", "{stop}");
        let msg = stop["error"]["message"].as_str().unwrap();
        assert!(msg.contains("servers: need 25, 1 of 25 in use"), "{msg}");
        assert_eq!(rig.cloud_objects().await, before, "nothing created");
        let ws = rig.env().workspace_root.join(sov.to_string()).join("hel1");
        assert!(!ws.exists(), "no workspace for the new region");
        let owner = sov.to_string();
        assert!(rig.store.get_secret(&owner, "kubeconfig-hel1").await.unwrap().is_none());
    }

    /// Once a region is handed off, no tofu run may touch it: a job that
    /// plans the infra phase for it again stops at its first step with a
    /// clear precondition, before tofu runs, and the cloud is unchanged.
    #[tokio::test]
    async fn a_handed_off_region_refuses_every_tofu_run() {
        let rig = sim_rig().await;
        let req = sample_request("archived", 1, 0);
        let sov = rig.provisioned(&req).await;
        let before = rig.cloud_objects().await;
        let (s, js) = sovereign_and_jobs(&rig, sov).await;
        let mut sub = add_region(&s, &js, &add_region_body(&["hel1"]), Submit::default()).unwrap();
        let fsn1 = req.regions[0].clone();
        let plan = Plan { phases: vec![crate::infra::phase(&[fsn1])] };
        sub.plan = serde_json::to_value(&plan).unwrap();
        let job = rig.submit(sub).await;
        assert_eq!(rig.drive(job).await, JobStatus::Paused);
        let stop = rig.stop_reason(job).await;
        assert_eq!(stop["step"], "infra/render-fsn1", "{stop}");
        assert_eq!(stop["error"]["kind"], "precondition", "{stop}");
        let msg = stop["error"]["message"].as_str().unwrap();
        assert!(msg.contains("handed off to Crossplane"), "{msg}");
        assert_eq!(rig.cloud_objects().await, before);
    }

    /// An add-region job for `hel1` on a provisioned `fsn1` Sovereign.
    struct AddRegion {
        request: ProvisionRequest,
    }

    impl AddRegion {
        fn plan(&self) -> Plan {
            let regions: Vec<Region> =
                vec![serde_json::from_value(crate::testing::region_body("hel1")).unwrap()];
            add_region_plan(&regions, &self.request.components, self.request.custody.seal)
        }
    }

    #[async_trait(?Send)]
    impl Scenario for AddRegion {
        type Env = crate::Backend;
        fn steps(&self) -> Vec<String> {
            self.plan().steps_that_run().map(|n| n.id.clone()).collect()
        }
        fn all_steps(&self) -> Vec<String> {
            self.plan().nodes_in_order().iter().map(|n| n.id.clone()).collect()
        }
        async fn start(&self, options: JobOptions) -> Started<crate::Backend> {
            let rig = sim_rig().await;
            let sovereign = rig.provisioned(&self.request).await;
            let (s, js) = sovereign_and_jobs(&rig, sovereign).await;
            let submit =
                Submit { actor: "test".into(), options: options.clone(), idempotency: None };
            let mut sub = add_region(&s, &js, &add_region_body(&["hel1"]), submit).unwrap();
            // The test's failure policy as given.
            sub.options = serde_json::to_value(&options).unwrap();
            let job = rig.submit(sub).await;
            Started { rig, sovereign, job }
        }
        /// The first region is untouched and the new one is gone.
        async fn assert_clean_slate(&self, run: &Started<crate::Backend>, failed_at: &str) {
            let names: BTreeSet<String> =
                run.rig.cloud_objects().await.into_iter().map(|(_, n)| n).collect();
            let slug = slug(&self.request.fqdn());
            let first: BTreeSet<String> =
                crate::infra::object_names(&slug, &self.request.regions[0]).into_iter().collect();
            assert_eq!(names, first, "{failed_at}: only the first region's objects are left");
            let s = run.rig.store.get_sovereign(run.sovereign).await.unwrap().unwrap();
            assert_eq!(s.status, SovereignStatus::Ready, "{failed_at}");
        }
        async fn end_state(&self, run: &Started<crate::Backend>) -> Value {
            json!(run.rig.cloud_objects().await)
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn every_step_failure_of_an_add_region_unwinds_the_new_region_only() {
        every_step_failure_unwinds(&AddRegion {
            request: static_seal(sample_request("region", 1, 0)),
        })
        .await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn every_step_of_an_add_region_runs_twice() {
        every_step_runs_twice(&AddRegion { request: static_seal(sample_request("region2", 1, 0)) })
            .await;
    }

    /// Follow-up jobs are refused with the reason, before anything is stored.
    #[tokio::test]
    async fn follow_ups_check_the_sovereign_and_the_request() {
        let rig = sim_rig().await;
        let req = sample_request("checks", 1, 0);
        let sov = rig.provisioned(&req).await;
        let (s, js) = sovereign_and_jobs(&rig, sov).await;
        let e = add_region(&s, &js, &add_region_body(&["fsn1"]), Submit::default()).unwrap_err();
        assert!(
            matches!(&e, FollowUpError::Conflicts(errs) if errs[0].path.contains("location")),
            "{e:?}"
        );
        let e = add_region(&s, &[], &add_region_body(&["hel1"]), Submit::default()).unwrap_err();
        assert!(matches!(e, FollowUpError::NoProvision), "{e:?}");
        let mut gone = s.clone();
        gone.status = SovereignStatus::Destroyed;
        let e = add_region(&gone, &js, &add_region_body(&["hel1"]), Submit::default()).unwrap_err();
        assert!(matches!(e, FollowUpError::NotReady(SovereignStatus::Destroyed)), "{e:?}");
    }
}
