//! Phase 8, `infra-handoff`: Crossplane takes over the cloud objects.
//!
//! 1. `credential` (undo: delete it): the cloud credential Crossplane's
//!    provider uses, in `crossplane-system`;
//!
//! then per region:
//! 2. `adopt-<loc>` (undo: delete the managed resources; they orphan the
//!    cloud objects): one managed resource per object of the tofu state,
//!    `crossplane.io/external-name` = its id, `managementPolicies:
//!    ["Observe"]`;
//! 3. `verify-<loc>`: every one `Synced` and `Ready`;
//! 4. `widen-<loc>` (undo: back to Observe + Orphan): full management;
//! 5. `archive-<loc>` (undo: unfreeze): the tofu state archived
//!    (age-encrypted in the store) and the workspace frozen, so no tofu
//!    run against this Sovereign is possible any more.
//!
//! Not built yet: a credential scoped to the Sovereign (today the
//! customer's token is copied), the resources of a real Crossplane
//! provider, and a zero-diff check before widening.

use std::time::Duration;

use cz_adapters::ObjectRef;
use cz_adapters::labels::FIELD_MANAGER;
use cz_engine::{ActionId, Cause, PhaseBuilder, PhaseDef, StepError, StepResult, System};
use cz_engine::{action, no_undo};
use cz_state::SecretString;
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

use crate::cluster::kubeconfig_for;
use crate::common::{RegionParams, SecretRef, cloud_token};
use crate::infra::{HANDED_OFF, workspace};
use crate::request::Region;
use crate::{Registry, StepCtx};

pub const PHASE: &str = "infra-handoff";

// --- outputs -------------------------------------------------------------

/// `adopt-<loc>`'s output: how many managed resources observe objects.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Observed {
    pub observed: usize,
}

/// `verify-<loc>`'s output.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Synced {
    pub synced: usize,
}

/// `widen-<loc>`'s output.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Managed {
    pub managed: usize,
}

/// `archive-<loc>`'s output.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Archived {
    /// Objects in the archived state.
    pub archived: usize,
    /// The secret holding it.
    pub secret: String,
}

// --- actions and the DAG -------------------------------------------------

const CREDENTIAL: ActionId<RegionParams> = ActionId::new("infra-handoff.credential");
const ADOPT: ActionId<RegionParams> = ActionId::new("infra-handoff.adopt");
const VERIFY: ActionId<RegionParams> = ActionId::new("infra-handoff.verify");
const WIDEN: ActionId<RegionParams> = ActionId::new("infra-handoff.widen");
const ARCHIVE: ActionId<RegionParams> = ActionId::new("infra-handoff.archive");

pub fn register(r: &mut Registry) {
    r.register(CREDENTIAL, action!(credential, credential_undo));
    r.register(ADOPT, action!(adopt, adopt_undo));
    r.register(VERIFY, action!(verify_adopted, no_undo));
    r.register(WIDEN, action!(widen, widen_undo));
    r.register(ARCHIVE, action!(archive, archive_undo));
}

pub fn phase(regions: &[Region]) -> PhaseDef {
    let mut b = PhaseBuilder::new(PHASE);
    b.step("credential", CREDENTIAL, &[], RegionParams::new(&regions[0].location));
    for r in regions {
        let l = &r.location;
        let p = || RegionParams::new(l);
        b.step(&format!("adopt-{l}"), ADOPT, &["credential"], p());
        b.step(&format!("verify-{l}"), VERIFY, &[&format!("adopt-{l}")], p());
        b.step(&format!("widen-{l}"), WIDEN, &[&format!("verify-{l}")], p());
        b.step(&format!("archive-{l}"), ARCHIVE, &[&format!("widen-{l}")], p());
    }
    b.build()
}

// --- steps ---------------------------------------------------------------

/// This node's region.
fn location(cx: &StepCtx) -> StepResult<String> {
    Ok(cx.params::<RegionParams>()?.location)
}

/// The kubeconfig of this node's region.
async fn kubeconfig(cx: &StepCtx) -> StepResult<SecretString> {
    kubeconfig_for(cx, &location(cx)?).await
}

fn credential_ref() -> ObjectRef {
    ObjectRef {
        api_version: "v1".into(),
        kind: "Secret".into(),
        namespace: Some("crossplane-system".into()),
        name: "hcloud-credentials".into(),
    }
}

async fn credential(cx: &StepCtx) -> StepResult<SecretRef> {
    let kc = kubeconfig(cx).await?;
    // TODO-design: a token scoped to this Sovereign, not the customer's.
    let token = cloud_token(cx).await?;
    let obj = json!({ "apiVersion": "v1", "kind": "Secret",
        "metadata": { "name": "hcloud-credentials", "namespace": "crossplane-system" },
        "stringData": { "token": token.expose() } });
    cx.env.kube.apply(&kc, FIELD_MANAGER, &[obj]).await?;
    Ok(SecretRef::new("crossplane-system/hcloud-credentials"))
}

async fn credential_undo(cx: &StepCtx) -> StepResult<()> {
    let Ok(kc) = kubeconfig(cx).await else { return Ok(()) };
    cx.env.kube.delete(&kc, &credential_ref()).await
}

fn managed_kind(kind: &str) -> &'static str {
    match kind {
        "server" => "Server",
        "network" => "Network",
        "firewall" => "Firewall",
        "load_balancer" => "LoadBalancer",
        "ssh_key" => "SSHKey",
        "placement_group" => "PlacementGroup",
        _ => "Resource",
    }
}

async fn managed_resources(
    cx: &StepCtx,
    policies: &[&str],
    deletion: &str,
) -> StepResult<Vec<Value>> {
    let ws = workspace(cx, &location(cx)?);
    let state = cx.env.tofu.state(&ws).await?;
    Ok(state
        .iter()
        .map(|s| {
            json!({
                "apiVersion": "hcloud.crossplane.io/v1alpha1", "kind": managed_kind(&s.kind),
                "metadata": { "name": s.name, "annotations": { "crossplane.io/external-name": s.id.to_string() },
                              "labels": { "app.kubernetes.io/managed-by": FIELD_MANAGER } },
                "spec": { "managementPolicies": policies, "deletionPolicy": deletion,
                          "providerConfigRef": { "name": "default" }, "forProvider": s.attrs },
            })
        })
        .collect())
}

async fn adopt(cx: &StepCtx) -> StepResult<Observed> {
    let kc = kubeconfig(cx).await?;
    let objs = managed_resources(cx, &["Observe"], "Orphan").await?;
    cx.env.kube.apply(&kc, FIELD_MANAGER, &objs).await?;
    Ok(Observed { observed: objs.len() })
}

async fn adopt_undo(cx: &StepCtx) -> StepResult<()> {
    let Ok(kc) = kubeconfig(cx).await else { return Ok(()) };
    // deletionPolicy Orphan: removing the managed resources leaves the cloud
    // objects for the infra undo.
    for o in managed_resources(cx, &["Observe"], "Orphan").await? {
        if let Some(r) = ObjectRef::of(&o) {
            cx.env.kube.delete(&kc, &r).await?;
        }
    }
    Ok(())
}

async fn verify_adopted(cx: &StepCtx) -> StepResult<Synced> {
    let kc = kubeconfig(cx).await?;
    let objs = managed_resources(cx, &["Observe"], "Orphan").await?;
    let n = objs.len();
    cx.wait_for(
        &format!("{n} Crossplane managed resources to be Synced and Ready"),
        Duration::from_secs(900),
        || async {
            for o in &objs {
                let Some(r) = ObjectRef::of(o) else { continue };
                let Some(live) = cx.env.kube.get(&kc, &r).await? else { return Ok(None) };
                let ok = |t: &str| {
                    live.pointer("/status/conditions").and_then(Value::as_array).is_some_and(|cs| {
                        cs.iter().any(|c| c["type"] == t && c["status"] == "True")
                    })
                };
                if !(ok("Synced") && ok("Ready")) {
                    return Ok(None);
                }
            }
            Ok(Some(()))
        },
    )
    .await?;
    Ok(Synced { synced: n })
}

async fn widen(cx: &StepCtx) -> StepResult<Managed> {
    let kc = kubeconfig(cx).await?;
    let objs = managed_resources(cx, &["*"], "Delete").await?;
    cx.env.kube.apply(&kc, FIELD_MANAGER, &objs).await?;
    Ok(Managed { managed: objs.len() })
}

async fn widen_undo(cx: &StepCtx) -> StepResult<()> {
    let Ok(kc) = kubeconfig(cx).await else { return Ok(()) };
    let objs = managed_resources(cx, &["Observe"], "Orphan").await?;
    cx.env.kube.apply(&kc, FIELD_MANAGER, &objs).await
}

async fn archive(cx: &StepCtx) -> StepResult<Archived> {
    let loc = location(cx)?;
    let ws = workspace(cx, &loc);
    let state = cx.env.tofu.state(&ws).await?;
    let body = serde_json::to_string(&state).expect("serializable");
    cx.put_secret(&format!("tofu-state-archive-{loc}"), &SecretString::new(body)).await?;
    tokio::fs::write(
        ws.dir.join(HANDED_OFF),
        format!("handed off to Crossplane by job {}\n", cx.job_id),
    )
    .await
    .map_err(|e| StepError::adapter(System::Tofu, "archive", Cause::Unavailable, e.to_string()))?;
    Ok(Archived { archived: state.len(), secret: format!("tofu-state-archive-{loc}") })
}

async fn archive_undo(cx: &StepCtx) -> StepResult<()> {
    let loc = location(cx)?;
    match tokio::fs::remove_file(workspace(cx, &loc).dir.join(HANDED_OFF)).await {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => {
            Err(StepError::adapter(System::Tofu, "unarchive", Cause::Unavailable, e.to_string()))
        }
    }
}

#[cfg(test)]
mod tests {
    use crate::testing::{phase_tests, sample_request};

    phase_tests!(super::PHASE, sample_request("ih", 1, 1));
}
