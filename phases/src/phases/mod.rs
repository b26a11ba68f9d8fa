//! The phase plans: `provision` (nine phases, ARCHITECTURE.md §1),
//! `add-region` and `destroy`, and the registry of every step action.
//!
//! Each phase module exposes the same things (omicron's `NexusSaga` shape):
//! its `PHASE` id, `register(&mut Registry)` for its actions, and a builder
//! that appends its steps to a plan from the request. Per-item work (one
//! server, one component, one OpenBao replica) is one node per item, with
//! the item fixed in the node's params when the plan is built, so re-runs
//! act on the same item.
//!
//! What is real and what is simulated: the step structure, ordering, the
//! outputs they persist and the checks they make are the real ones; the
//! adapters behind them are the `sim` fakes until each phase's issue plugs in
//! the real implementation (Hetzner REST, tofu CLI, ssh2, kube, OpenBao,
//! PowerDNS). Where a step's real content is not built yet, its doc says so
//! (`TODO(<phase> issue)`).

use std::collections::BTreeMap;

use futures::future::BoxFuture;
use serde_json::{Value, json};

use crate::plan::Plan;
use crate::request::{AddRegionRequest, ProvisionRequest, Region};
use crate::step::{Registry, Step, StepCtx, StepResult};
use crate::{Cause, StepError, System};

pub mod cluster;
pub mod custody;
pub mod destroy;
pub mod dns;
pub mod handoff;
pub mod infra;
pub mod kit;
pub mod kit_probe;
pub mod kit_render;
pub mod preflight;
pub mod release;
pub mod render;

/// The label keys every cloud object carries.
pub const LABEL_SOVEREIGN: &str = "catalyst.openova.io/sovereign";
pub const LABEL_JOB: &str = "catalyst.openova.io/job-id";
pub const LABEL_ROLE: &str = "catalyst.openova.io/role";
pub const LABEL_REGION: &str = "catalyst.openova.io/region";
/// The field manager of every server-side apply.
pub const FIELD_MANAGER: &str = "catalyst-zero";

/// A step made of two async functions (steno's `ActionFunc`).
pub struct FnStep {
    pub run: for<'a> fn(&'a StepCtx) -> BoxFuture<'a, StepResult<Value>>,
    pub undo: for<'a> fn(&'a StepCtx) -> BoxFuture<'a, StepResult<()>>,
}

#[async_trait::async_trait]
impl Step for FnStep {
    async fn run(&self, cx: &StepCtx) -> StepResult<Value> {
        (self.run)(cx).await
    }
    async fn undo(&self, cx: &StepCtx) -> StepResult<()> {
        (self.undo)(cx).await
    }
}

/// `action!(run_fn, undo_fn)` builds an [`FnStep`] from two `async fn`s.
macro_rules! action {
    ($run:path, $undo:path) => {
        $crate::phases::FnStep { run: |cx| Box::pin($run(cx)), undo: |cx| Box::pin($undo(cx)) }
    };
}
pub(crate) use action;

/// The undo of a step with no side effect.
pub async fn no_undo(_cx: &StepCtx) -> StepResult<()> {
    Ok(())
}

/// Every action of every phase.
pub fn registry() -> Registry {
    let mut r = Registry::new();
    preflight::register(&mut r);
    dns::register(&mut r);
    infra::register(&mut r);
    cluster::register(&mut r);
    custody::register(&mut r);
    kit::register(&mut r);
    handoff::register(&mut r);
    destroy::register(&mut r);
    r
}

/// The `provision` plan for a validated request.
pub fn provision_plan(req: &ProvisionRequest) -> Plan {
    let regions: Vec<Region> = req.regions.clone();
    let plan = Plan {
        phases: vec![
            preflight::phase(&regions, true),
            dns::reserve_phase(),
            infra::phase(&regions),
            cluster::phase(&regions),
            custody::phase(),
            kit::phase(&req.components, &regions[0].location, false),
            handoff::secrets_phase(),
            dns::commit_phase(&regions, None),
            handoff::infra_phase(&regions),
        ],
    };
    debug_assert_eq!(plan.validate(), Ok(()));
    plan
}

/// A `provision` submission for a validated request: a new Sovereign, the
/// plan, the request (secrets are skipped by its serializer) and the
/// secrets to seal, owned by the Sovereign. The API adds its idempotency key.
pub fn provision_submission(
    req: &ProvisionRequest,
    options: &crate::engine::JobOptions,
    actor: &str,
) -> (cz_state::SovereignId, cz_state::JobId, cz_state::Submission) {
    let (sov, job) = (cz_state::SovereignId::new(), cz_state::JobId::new());
    let sub = cz_state::Submission {
        sovereign: cz_state::SovereignTarget::New { id: sov, name: req.name(), fqdn: req.fqdn() },
        job_id: job,
        kind: cz_state::JobKind::Provision,
        request: serde_json::to_value(req).expect("requests serialize"),
        plan: serde_json::to_value(provision_plan(req)).expect("plans serialize"),
        options: serde_json::to_value(options).expect("options serialize"),
        secrets: req
            .secrets()
            .into_iter()
            .map(|(n, v)| (sov.to_string(), n.to_owned(), v))
            .collect(),
        idempotency: None,
        response: json!({ "sovereign_id": sov, "job_id": job }),
        audit: cz_state::NewAudit {
            actor: actor.to_owned(),
            action: "submit".into(),
            job_id: Some(job),
            sovereign_id: Some(sov),
            detail: json!({ "kind": "provision", "fqdn": req.fqdn() }),
        },
    };
    (sov, job, sub)
}

/// The `add-region` plan: the new regions only.
pub fn add_region_plan(req: &AddRegionRequest, components: &[String]) -> Plan {
    let regions = req.regions.clone();
    let regional: Vec<String> =
        components.iter().filter(|c| release::regional().contains(&c.as_str())).cloned().collect();
    let mut phases =
        vec![preflight::phase(&regions, false), infra::phase(&regions), cluster::phase(&regions)];
    for r in &regions {
        let mut kit = kit::phase(&regional, &r.location, true);
        kit.id = format!("bootstrap-kit-{}", r.location);
        for n in &mut kit.nodes {
            n.id = n.id.replacen("bootstrap-kit/", &format!("{}/", kit.id), 1);
            for d in &mut n.depends_on {
                *d = d.replacen("bootstrap-kit/", &format!("{}/", kit.id), 1);
            }
        }
        phases.push(kit);
    }
    phases.push(dns::commit_phase(&regions, Some(())));
    phases.push(handoff::infra_phase(&regions));
    Plan { phases }
}

/// The `destroy` plan for a Sovereign.
pub fn destroy_plan(regions: &[String]) -> Plan {
    destroy::plan(regions)
}

// === helpers shared by the phases ===

/// The request of the job, typed (secrets are absent: read them with
/// `cx.secret`).
pub fn request(cx: &StepCtx) -> StepResult<ProvisionRequest> {
    serde_json::from_value((*cx.request).clone()).map_err(|e| StepError::Internal {
        message: format!("stored request does not decode: {e}"),
    })
}

/// The Sovereign's FQDN, from the stored request or (add-region, destroy)
/// the `sovereign` block the API adds to the stored request.
pub fn fqdn(cx: &StepCtx) -> StepResult<String> {
    if let Some(f) = cx.request.pointer("/sovereign/fqdn").and_then(Value::as_str) {
        return Ok(f.to_owned());
    }
    Ok(request(cx)?.fqdn())
}

/// The label value naming this Sovereign (FQDN with dots as dashes).
pub fn slug(fqdn: &str) -> String {
    fqdn.replace('.', "-")
}

/// Labels for an object of this job.
pub fn labels(cx: &StepCtx, fqdn: &str, role: &str, region: &str) -> BTreeMap<String, String> {
    BTreeMap::from([
        (LABEL_SOVEREIGN.to_owned(), slug(fqdn)),
        (LABEL_JOB.to_owned(), cx.job_id.to_string()),
        (LABEL_ROLE.to_owned(), role.to_owned()),
        (LABEL_REGION.to_owned(), region.to_owned()),
    ])
}

/// The regions of the job: from the provision request, or the add-region
/// request stored under `regions`.
pub fn regions(cx: &StepCtx) -> StepResult<Vec<Region>> {
    cx.request_field("/regions")
}

/// The Sovereign's cloud token.
pub async fn cloud_token(cx: &StepCtx) -> StepResult<cz_state::SecretString> {
    cx.secret("cloud_token").await
}

pub(crate) fn precondition(
    message: impl Into<String>,
    remediation: impl Into<String>,
) -> StepError {
    StepError::Precondition { message: message.into(), remediation: remediation.into() }
}

pub(crate) fn command_failed(op: &str, out: &crate::adapters::CommandOutput) -> StepError {
    let tail: String =
        out.stderr.chars().rev().take(400).collect::<Vec<_>>().into_iter().rev().collect();
    StepError::adapter(
        System::Ssh,
        op,
        Cause::CommandFailed,
        format!("exit {}: {}", out.status, tail.trim()),
    )
}

/// A JSON summary of the plan for the API: phases with their step ids.
pub fn plan_summary(plan: &Plan) -> Value {
    json!(plan.phases.iter().map(|p| json!({ "phase": p.id, "steps": p.nodes.iter().map(|n| &n.id).collect::<Vec<_>>() })).collect::<Vec<_>>())
}

#[cfg(test)]
pub(crate) mod testkit;

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;

    use futures::StreamExt;

    use super::testkit::{Harness, sample_request};
    use super::*;
    use crate::engine::{FaultPlan, JobOptions};
    use crate::{ErrorClass, FailurePolicy};
    use cz_state::JobStatus;

    #[tokio::test]
    async fn provision_runs_to_hand_off_and_destroy_cleans_up() {
        let h = Harness::new().await;
        let req = sample_request("alpha", 3, 2);
        let plan = provision_plan(&req);
        assert_eq!(
            plan.phases.iter().map(|p| p.id.as_str()).collect::<Vec<_>>(),
            crate::plan::PROVISION_PHASES
        );
        let (sov, job) = h.submit(&req, &plan, JobOptions::default()).await;
        assert_eq!(h.drive(job).await, JobStatus::Succeeded);
        let objs = h.cloud_objects().await;
        assert_eq!(objs.iter().filter(|(k, _)| k == "server").count(), 5);
        assert_eq!(objs.iter().filter(|(k, _)| k == "load_balancer").count(), 1);
        let _ = sov;
    }

    /// Generic test (a): fail at each step in turn; the unwind must leave a
    /// clean slate.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn every_step_failure_unwinds_to_a_clean_slate() {
        // Signed, so the unwind also takes the DS out of the pool zone.
        let mut req = sample_request("unwind", 1, 1);
        req.dnssec = true;
        unwind_at_every_step(req).await;
    }

    /// The same on a `byo-api` domain: the registrar is given back too.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn every_step_failure_unwinds_a_byo_api_domain_to_a_clean_slate() {
        let req = super::testkit::byo_api_request(
            "acme-unwind.com",
            crate::request::Registrar::Godaddy,
            "key:secret",
        );
        unwind_at_every_step(req).await;
    }

    async fn unwind_at_every_step(req: crate::request::ProvisionRequest) {
        let plan = provision_plan(&req);
        let nodes: Vec<String> = plan.nodes_in_order().iter().map(|n| n.id.clone()).collect();
        // Concurrently on one task (no spawn: the futures need not be Send).
        futures::stream::iter(nodes)
            .for_each_concurrent(4, |node| {
                let (req, plan) = (req.clone(), plan.clone());
                async move {
                    let h = Harness::new().await;
                    let mut faults = FaultPlan::default();
                    faults.fail.insert(node.clone(), ErrorClass::Terminal);
                    let opts = JobOptions {
                        on_failure: FailurePolicy::Rollback,
                        faults,
                        ..Default::default()
                    };
                    let (sov, job) = h.submit(&req, &plan, opts).await;
                    assert_eq!(h.drive(job).await, JobStatus::Failed, "{node}");
                    let j = h.store.get_job(job).await.unwrap().unwrap();
                    assert_eq!(
                        j.error.as_ref().unwrap()["step"],
                        node.as_str(),
                        "failed at the injected node"
                    );
                    h.assert_clean_slate(sov, &req, &node).await;
                }
            })
            .await;
    }

    /// Generic test (b): every do and every undo runs twice; same result.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn every_step_runs_twice_with_the_same_result() {
        let mut req = sample_request("twice", 3, 1);
        req.dnssec = true;
        let plan = provision_plan(&req);
        let plain = Harness::new().await;
        let (_, job) = plain.submit(&req, &plan, JobOptions::default()).await;
        assert_eq!(plain.drive(job).await, JobStatus::Succeeded);

        let all: BTreeSet<String> = plan.nodes_in_order().iter().map(|n| n.id.clone()).collect();
        let twice = Harness::new().await;
        let faults = FaultPlan { repeat: all.clone(), repeat_undo: all, ..Default::default() };
        let (_, job2) =
            twice.submit(&req, &plan, JobOptions { faults, ..Default::default() }).await;
        assert_eq!(twice.drive(job2).await, JobStatus::Succeeded);
        assert_eq!(plain.cloud_objects().await, twice.cloud_objects().await);
    }

    /// The same on a `byo-api` domain: twice is one delegation to us.
    #[tokio::test]
    async fn every_step_runs_twice_on_a_byo_api_domain() {
        let req = super::testkit::byo_api_request(
            "k8s.acme-twice.com",
            crate::request::Registrar::Cloudflare,
            "cf-token",
        );
        let plan = provision_plan(&req);
        let all: BTreeSet<String> = plan.nodes_in_order().iter().map(|n| n.id.clone()).collect();
        let h = Harness::new().await;
        let faults = FaultPlan { repeat: all.clone(), repeat_undo: all, ..Default::default() };
        let (_, job) = h.submit(&req, &plan, JobOptions { faults, ..Default::default() }).await;
        assert_eq!(h.drive(job).await, JobStatus::Succeeded);
        let crate::request::Domain::ByoApi { registrar, registrar_token, .. } = &req.domain else {
            unreachable!()
        };
        let api = h.backend.registrars.connect(*registrar, registrar_token).unwrap();
        let mut ns = api.get_nameservers(&req.fqdn()).await.unwrap();
        ns.sort();
        assert_eq!(ns, ["ns1.openova.io", "ns2.openova.io", "ns3.openova.io"]);
    }

    fn sovereign_block(req: &crate::request::ProvisionRequest) -> serde_json::Value {
        serde_json::json!({ "fqdn": req.fqdn(), "pool_domain": "omani.works", "components": req.components, "ssh_public_keys": req.ssh_public_keys })
    }

    fn hel1() -> serde_json::Value {
        serde_json::json!({ "provider": "hetzner", "location": "hel1", "control_plane": { "sku": "cpx32", "count": 1 }, "workers": { "sku": "cpx32", "count": 1 } })
    }

    async fn provisioned(
        h: &Harness,
        sub: &str,
    ) -> (cz_state::SovereignId, crate::request::ProvisionRequest) {
        let req = sample_request(sub, 1, 0);
        let (sov, job) = h.submit(&req, &provision_plan(&req), JobOptions::default()).await;
        assert_eq!(h.drive(job).await, JobStatus::Succeeded);
        (sov, req)
    }

    fn add_region(req: &crate::request::ProvisionRequest) -> (serde_json::Value, Plan) {
        let body = serde_json::json!({ "api_version": crate::request::API_VERSION, "regions": [hel1()], "sovereign": sovereign_block(req) });
        let ar: crate::request::AddRegionRequest = serde_json::from_value(body.clone()).unwrap_or_else(|_| {
            serde_json::from_value(serde_json::json!({ "api_version": crate::request::API_VERSION, "regions": [hel1()] })).unwrap()
        });
        (body, add_region_plan(&ar, &req.components))
    }

    #[tokio::test]
    async fn add_region_then_destroy_leaves_nothing() {
        let h = Harness::new().await;
        let (sov, req) = provisioned(&h, "multi").await;
        let (body, plan) = add_region(&req);
        let job = h
            .submit_existing(sov, cz_state::JobKind::AddRegion, body, &plan, JobOptions::default())
            .await;
        assert_eq!(h.drive(job).await, JobStatus::Succeeded);
        let servers = h.cloud_objects().await.into_iter().filter(|(k, _)| k == "server").count();
        assert_eq!(servers, 3, "fsn1: 1 server, hel1: 1 + 1");
        let plan = destroy_plan(&["fsn1".into(), "hel1".into()]);
        let body = serde_json::json!({ "sovereign": sovereign_block(&req), "regions": [] });
        let job = h
            .submit_existing(
                sov,
                cz_state::JobKind::Destroy,
                body,
                &plan,
                JobOptions { on_failure: FailurePolicy::Keep, ..Default::default() },
            )
            .await;
        assert_eq!(h.drive(job).await, JobStatus::Succeeded);
        assert!(h.cloud_objects().await.is_empty());
        assert!(!h.backend.dns.zone_exists(&format!("{}.", req.fqdn())).await.unwrap());
        let s = h.store.get_sovereign(sov).await.unwrap().unwrap();
        assert_eq!(s.status, cz_state::SovereignStatus::Destroyed);
    }

    /// Generic tests for `add-region`: each step failing unwinds the new
    /// region only; every step twice gives the same objects.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn add_region_generic_unwind_and_idempotency() {
        let base = Harness::new().await;
        let (_, req) = provisioned(&base, "probe").await;
        let (_, plan) = add_region(&req);
        let nodes: Vec<String> = plan.nodes_in_order().iter().map(|n| n.id.clone()).collect();
        futures::stream::iter(nodes.iter().cloned().map(Some).chain([None]))
            .for_each_concurrent(4, |node| async move {
                let h = Harness::new().await;
                let (sov, req) = provisioned(&h, "region").await;
                let before = h.cloud_objects().await;
                let (body, plan) = add_region(&req);
                let mut faults = FaultPlan::default();
                match &node {
                    Some(n) => {
                        faults.fail.insert(n.clone(), ErrorClass::Terminal);
                    }
                    None => {
                        let all: BTreeSet<String> =
                            plan.nodes_in_order().iter().map(|n| n.id.clone()).collect();
                        faults.repeat = all.clone();
                        faults.repeat_undo = all;
                    }
                }
                let job = h
                    .submit_existing(
                        sov,
                        cz_state::JobKind::AddRegion,
                        body,
                        &plan,
                        JobOptions { faults, ..Default::default() },
                    )
                    .await;
                let status = h.drive(job).await;
                match &node {
                    Some(n) => {
                        assert_eq!(status, JobStatus::Failed, "{n}");
                        let after = h.cloud_objects().await;
                        assert_eq!(
                            after, before,
                            "{n}: the first region is untouched and the new one is gone"
                        );
                    }
                    None => {
                        assert_eq!(status, JobStatus::Succeeded);
                        let after = h.cloud_objects().await.len();
                        assert_eq!(
                            after,
                            before.len() + 8,
                            "hel1: net, fw, key, 2 placement groups, 2 servers, lb"
                        );
                    }
                }
            })
            .await;
    }

    /// `destroy` has no undo; its generic test is idempotency (every step
    /// twice) and resuming after a failure at each step.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn destroy_generic_retry_after_failure_and_idempotency() {
        let plan = destroy_plan(&["fsn1".into()]);
        let nodes: Vec<String> = plan.nodes_in_order().iter().map(|n| n.id.clone()).collect();
        for node in nodes.iter().cloned().map(Some).chain([None]) {
            let h = Harness::new().await;
            let (sov, req) = provisioned(&h, "gone").await;
            let mut faults = FaultPlan::default();
            match &node {
                Some(n) => {
                    faults.fail.insert(n.clone(), ErrorClass::NeedsOperator);
                }
                None => {
                    let all: BTreeSet<String> = nodes.iter().cloned().collect();
                    faults.repeat = all;
                }
            }
            let body = serde_json::json!({ "sovereign": sovereign_block(&req), "regions": [] });
            let job = h
                .submit_existing(
                    sov,
                    cz_state::JobKind::Destroy,
                    body,
                    &plan,
                    JobOptions { on_failure: FailurePolicy::Keep, faults, ..Default::default() },
                )
                .await;
            if let Some(n) = &node {
                assert_eq!(h.drive(job).await, JobStatus::Paused, "{n}");
                let j = h.store.get_job(job).await.unwrap().unwrap();
                assert_eq!(j.pause.unwrap()["step"], n.as_str());
                // The operator abandons it; a new destroy finishes the
                // half-done teardown from whatever state is left.
                crate::Verbs { store: &h.store }.abandon(job, "alice").await.unwrap();
                let body = serde_json::json!({ "sovereign": sovereign_block(&req), "regions": [] });
                let job = h
                    .submit_existing(
                        sov,
                        cz_state::JobKind::Destroy,
                        body,
                        &plan,
                        JobOptions { on_failure: FailurePolicy::Keep, ..Default::default() },
                    )
                    .await;
                assert_eq!(h.drive(job).await, JobStatus::Succeeded, "{n}");
                assert!(h.cloud_objects().await.is_empty(), "{n}");
                continue;
            }
            assert_eq!(h.drive(job).await, JobStatus::Succeeded);
            assert!(h.cloud_objects().await.is_empty());
        }
    }

    #[tokio::test]
    async fn transient_failures_are_retried_and_needs_operator_pauses() {
        let h = Harness::new().await;
        let req = sample_request("retry", 1, 0);
        let plan = provision_plan(&req);
        let mut faults = FaultPlan::default();
        faults.flaky.insert("infra/apply-fsn1".into(), 2);
        faults.fail.insert("preflight/cost-preview".into(), ErrorClass::NeedsOperator);
        let retry = crate::RetryPolicy { max_attempts: 5, min_delay_ms: 1, max_delay_ms: 5 };
        let (_, job) =
            h.submit(&req, &plan, JobOptions { faults, retry, ..Default::default() }).await;
        assert_eq!(h.drive(job).await, JobStatus::Paused);
        let j = h.store.get_job(job).await.unwrap().unwrap();
        let pause = j.pause.unwrap();
        assert_eq!(pause["step"], "preflight/cost-preview");
        assert_eq!(pause["error"]["runbook"], "runbooks/injected-fault.md");
        assert!(h.cloud_objects().await.is_empty(), "nothing spent before preflight passes");
        // The operator skips it with a reason; the job finishes.
        crate::Verbs { store: &h.store }
            .skip(job, "preflight/cost-preview", "preview checked by hand", "alice")
            .await
            .unwrap();
        assert_eq!(h.drive(job).await, JobStatus::Succeeded);
        let states = h.store.node_states(job).await.unwrap();
        assert_eq!(
            states["infra/apply-fsn1"].attempts(),
            3,
            "two transient failures, then success"
        );
        let audit = h.store.audit(Some(job)).await.unwrap();
        assert!(audit.iter().any(|a| a.action == "skip"
            && a.actor == "alice"
            && a.detail["reason"] == "preview checked by hand"));
    }
}
