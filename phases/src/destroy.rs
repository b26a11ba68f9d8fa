//! The `destroy` job: tear a Sovereign (or a half-built run) down.
//!
//! Its phases, in order:
//! 1. `preflight/token-scope`: the cloud token still has write scope;
//! 2. `infra-handoff/release-<loc>` per region: Crossplane's managed
//!    resources of the region deleted (orphaning, never deleting, the cloud
//!    objects) and waited on, so nothing rebuilds what the sweep deletes;
//! 3. `infra/tofu-destroy-<loc>` per region: tofu destroy where a live (not
//!    handed-off) state exists; then `infra/sweep`: every object labelled
//!    for the Sovereign, including those in-cluster controllers created
//!    later (load balancers, volumes, primary IPs), deleted until none is
//!    left;
//! 4. `dns/zone`: the records, zone and delegation (a `byo-api` domain's
//!    registrar delegation put back as it was);
//! 5. `state/secrets`: the Sovereign's secrets (escrow blobs and archived
//!    states stay).
//!
//! Every step is idempotent, so a destroy resumes after a crash and works
//! on partial state. Destroy steps have no undo: a destroy is not rolled
//! back.

use std::time::Duration;

use cz_adapters::cloud::deletion_rank;
use cz_adapters::labels::{LABEL_REGION, LABEL_SOVEREIGN};
use cz_engine::{ActionId, Cause, PhaseBuilder, Plan, StepError, StepResult, action, no_undo};
use cz_state::SecretString;
use serde::{Deserialize, Serialize};
use serde_json::json;

use crate::common::{
    RegionParams, cloud_token, fqdn, job_request, region_token, region_token_name, regions, slug,
};
use crate::dns::{Restored, cut_of, restore_registrar};
use crate::handoff::infra::RELEASE;
use crate::infra::{MANIFEST, PROVISIONER_KEY, handed_off, with_events, workspace};
use crate::preflight::TOKEN_SCOPE;
use crate::{Registry, StepCtx};

// --- params and outputs --------------------------------------------------

/// `state/secrets`' params: the regions whose secrets go.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct SecretsParams {
    pub locations: Vec<String>,
}

/// `infra/tofu-destroy-<loc>`'s output.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct TofuDestroyed {
    /// Crossplane owns the objects, or tofu never ran: the sweep removes them.
    pub skipped: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub events: Option<u64>,
}

/// `infra/sweep`'s output.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Swept {
    pub deleted: usize,
}

/// `dns/zone`'s output.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct DnsRemoved {
    pub zone: String,
    /// `byo-api`: what the registrar was given back.
    pub registrar: Option<Restored>,
}

/// `state/secrets`' output.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct SecretsRemoved {
    pub removed: usize,
}

// --- actions and the plan ------------------------------------------------

const TOFU: ActionId<RegionParams> = ActionId::new("destroy.tofu");
const SWEEP: ActionId<()> = ActionId::new("destroy.sweep");
const DNS: ActionId<()> = ActionId::new("destroy.dns");
const SECRETS: ActionId<SecretsParams> = ActionId::new("destroy.secrets");

pub fn register(r: &mut Registry) {
    r.register(TOFU, action!(tofu_destroy, no_undo));
    r.register(SWEEP, action!(sweep, no_undo));
    r.register(DNS, action!(dns, no_undo));
    r.register(SECRETS, action!(secrets, no_undo));
}

pub fn plan(locations: &[String]) -> Plan {
    let mut pre = PhaseBuilder::new("preflight");
    pre.step("token-scope", TOKEN_SCOPE, &[], ());
    let mut handoff = PhaseBuilder::new(crate::handoff::infra::PHASE);
    for l in locations {
        handoff.step(&format!("release-{l}"), RELEASE, &[], RegionParams::new(l));
    }
    let mut infra = PhaseBuilder::new("infra");
    let mut tofus = Vec::new();
    for l in locations {
        let n = format!("tofu-destroy-{l}");
        infra.step(&n, TOFU, &[], RegionParams::new(l));
        tofus.push(n);
    }
    let t: Vec<&str> = tofus.iter().map(String::as_str).collect();
    infra.step("sweep", SWEEP, &t, ());
    let mut dns = PhaseBuilder::new("dns");
    dns.step("zone", DNS, &[], ());
    let mut st = PhaseBuilder::new("state");
    st.step("secrets", SECRETS, &[], SecretsParams { locations: locations.to_vec() });
    Plan { phases: vec![pre.build(), handoff.build(), infra.build(), dns.build(), st.build()] }
}

// --- steps ---------------------------------------------------------------

async fn tofu_destroy(cx: &StepCtx) -> StepResult<TofuDestroyed> {
    let loc = cx.params::<RegionParams>()?.location;
    let ws = workspace(cx, &loc);
    if handed_off(cx, &loc).await? || !ws.dir.join(MANIFEST).exists() {
        // Crossplane owns the objects (or tofu never ran): the sweep removes them.
        return Ok(TofuDestroyed { skipped: true, events: None });
    }
    let token = region_token(cx, &loc).await?;
    let tofu = cx.env.tofu.clone();
    let n = with_events(cx, |sink| {
        let (ws, token) = (ws.clone(), token.clone());
        async move { tofu.destroy(&ws, &token, sink).await }
    })
    .await?;
    Ok(TofuDestroyed { skipped: false, events: Some(n) })
}

async fn sweep(cx: &StepCtx) -> StepResult<Swept> {
    let sov = slug(&fqdn(cx)?);
    // Each region with its own token (an add-region job's may be of another
    // project), then the Sovereign's token for whatever carries no region.
    let mut passes = Vec::new();
    for r in regions(cx)? {
        let selector = format!("{LABEL_SOVEREIGN}={sov},{LABEL_REGION}={}", r.location);
        passes.push((region_token(cx, &r.location).await?, selector));
    }
    passes.push((cloud_token(cx).await?, format!("{LABEL_SOVEREIGN}={sov}")));
    let mut deleted = 0;
    for (token, selector) in &passes {
        deleted += sweep_with(cx, token, selector).await?;
    }
    Ok(Swept { deleted })
}

/// Deletes every object `selector` lists with `token`, until none is left.
async fn sweep_with(cx: &StepCtx, token: &SecretString, selector: &str) -> StepResult<usize> {
    let deleted = std::sync::atomic::AtomicUsize::new(0);
    cx.wait_for(
        &format!("every object labelled {selector} to be gone"),
        Duration::from_secs(1800),
        || async {
            let mut objs = cx.env.cloud.list(token, selector).await?;
            if objs.is_empty() {
                return Ok(Some(()));
            }
            objs.sort_by_key(|o| deletion_rank(&o.kind));
            let mut this_round = 0;
            for o in &objs {
                match cx.env.cloud.delete(token, o).await {
                    Ok(()) => this_round += 1,
                    // Still in use by what this round deleted (a server's
                    // deletion is an action that takes a moment): the next
                    // round. With nothing deleted, it is an outage: retry.
                    Err(StepError::Adapter { cause: Cause::Unavailable, .. }) if this_round > 0 => {
                        break;
                    }
                    Err(e) => return Err(e),
                }
                deleted.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                cx.event(
                    "cloud",
                    json!({ "action": "delete", "kind": o.kind, "name": o.name, "id": o.id }),
                )
                .await?;
            }
            Ok(None)
        },
    )
    .await?;
    Ok(deleted.into_inner())
}

async fn dns(cx: &StepCtx) -> StepResult<DnsRemoved> {
    let fqdn = fqdn(cx)?;
    let zone = format!("{fqdn}.");
    // byo-api: the registrar first, while the zone still says what the
    // domain pointed at before.
    let registrar = restore_registrar(cx).await?;
    if let Some(pool) = job_request(cx)?.pool_domain() {
        cx.env.dns.delete_rrsets(&format!("{pool}."), &cut_of(&zone)).await?;
    }
    cx.env.dns.delete_zone(&zone).await?;
    Ok(DnsRemoved { zone, registrar })
}

async fn secrets(cx: &StepCtx) -> StepResult<SecretsRemoved> {
    let SecretsParams { locations } = cx.params()?;
    let mut names = vec![
        "cloud_token".to_owned(),
        "handoff_token".to_owned(),
        "registrar_token".to_owned(),
        "sealed-secrets-key".to_owned(),
        "openbao-root-token".to_owned(),
        PROVISIONER_KEY.to_owned(),
    ];
    for l in &locations {
        names.push(region_token_name(l));
        names.push(format!("k3s-token-{l}"));
        names.push(format!("kubeconfig-{l}"));
    }
    for i in 0..10 {
        names.push(format!("openbao-share-{i}"));
    }
    // Escrow blobs (encrypted to the operators) and archived states stay.
    for n in &names {
        cx.delete_secret(n).await?;
    }
    Ok(SecretsRemoved { removed: names.len() })
}

#[cfg(test)]
mod tests {
    use cz_engine::{ErrorClass, FaultPlan, JobOptions, Verbs};
    use cz_state::{JobStatus, SovereignStatus};

    use crate::jobs::{Submit, destroy};
    use crate::testing::{SimRig, SimRigExt, sample_request, sim_rig};

    /// A destroy of `sov` under `faults` (failures are kept: no rollback).
    async fn destroy_job(
        rig: &SimRig,
        sov: cz_state::SovereignId,
        faults: FaultPlan,
    ) -> cz_state::JobId {
        let s = rig.store.get_sovereign(sov).await.unwrap().unwrap();
        let jobs = rig.store.list_jobs(Some(sov)).await.unwrap();
        let options = JobOptions { faults, ..Default::default() };
        let submit = Submit { actor: "test".into(), options, idempotency: None };
        rig.submit(destroy(&s, &jobs, submit).unwrap()).await
    }

    /// `destroy` has no undo. Its generic tests: a failure at any step
    /// pauses it there, and after the operator abandons it a new destroy
    /// finishes the half-done teardown from whatever state is left; every
    /// step run twice leaves nothing either.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_destroy_resumes_after_a_failure_at_any_step_and_runs_twice() {
        let nodes: Vec<String> =
            super::plan(&["fsn1".into()]).nodes_in_order().iter().map(|n| n.id.clone()).collect();
        for node in nodes.iter().cloned().map(Some).chain([None]) {
            let rig = sim_rig().await;
            let sov = rig.provisioned(&sample_request("gone", 1, 0)).await;
            let mut faults = FaultPlan::default();
            match &node {
                Some(n) => {
                    faults.fail.insert(n.clone(), ErrorClass::NeedsOperator);
                }
                None => faults.repeat = nodes.iter().cloned().collect(),
            }
            let job = destroy_job(&rig, sov, faults).await;
            if let Some(n) = &node {
                assert_eq!(rig.drive(job).await, JobStatus::Paused, "{n}");
                assert_eq!(rig.job(job).await.pause.unwrap()["step"], n.as_str());
                Verbs { store: &rig.store }.abandon(job, "alice").await.unwrap();
                let job = destroy_job(&rig, sov, FaultPlan::default()).await;
                assert_eq!(rig.drive(job).await, JobStatus::Succeeded, "{n}");
            } else {
                assert_eq!(rig.drive(job).await, JobStatus::Succeeded, "every step twice");
            }
            assert!(rig.cloud_objects().await.is_empty(), "{node:?}");
            let s = rig.store.get_sovereign(sov).await.unwrap().unwrap();
            assert_eq!(s.status, SovereignStatus::Destroyed, "{node:?}");
            let left = rig.store.secret_names(&sov.to_string()).await.unwrap();
            assert!(
                left.iter().all(|n| n.ends_with(".escrow") || n.starts_with("tofu-state-archive")),
                "{node:?}: only escrow blobs and archived states stay: {left:?}"
            );
        }
    }
}
