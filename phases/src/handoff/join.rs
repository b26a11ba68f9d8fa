//! add-region: the new region's OpenBao joins the Sovereign's raft cluster
//! and is unsealed. Two phases, both for the new regions only:
//!
//! `region-custody` (static seal only), before the regional kit:
//! - `static-seal-<loc>` (undo: delete the Secret there): the Sovereign's
//!   static-seal key, read from the Secret `openbao/openbao-static-seal`
//!   in the home region and written to the new region's cluster before
//!   bp-openbao exists there. The key passes through this process's memory
//!   only; its fingerprint must be the one escrowed to the custodians.
//!
//! `secrets-join`, after the regional kit:
//! - `admin-kubeconfig-<loc>` (undo: forget it): the new region's admin
//!   kubeconfig, one age-encrypted copy per custodian (escrow kind
//!   `admin-kubeconfig.<loc>`), so custodians can reach its pods;
//! - `join-<loc>-<n>`, one per replica: the home region's active node's
//!   advertised API address (`sys/leader` on an unsealed home replica),
//!   then `sys/storage/raft/join` on the new pod **as a non-voter**. A
//!   non-voter replicates everything and serves reads, and forwards writes
//!   to the active node, but never counts for quorum: a region cut off by
//!   the WAN, or destroyed, cannot take the Sovereign's OpenBao down with
//!   it. A pod that is already initialized is not joined again.
//! - `unseal-<loc>-<n>`: with the static seal the pod unseals itself and
//!   the step waits. With Shamir the daemon holds no share: the step emits
//!   a `custody` event in the named state `awaiting-custodians` and waits
//!   (bound `custodians`, a day by default) while `threshold` custodians
//!   run `catalyst-zero unseal SOVEREIGN --region <loc>`; it goes on by
//!   itself once they are done. Either way the step ends only when the pod
//!   reports the home cluster's `cluster_id`.
//!
//! **The network.** The new pods reach the home leader at the address it
//! advertises (bp-openbao's `api_addr`, the pod's IP) and raft replicates
//! over the cluster port (mutually authenticated TLS, OpenBao's own).
//! Pod addresses must therefore route between the regions' clusters,
//! which is Cilium ClusterMesh's job (WireGuard-encrypted between nodes).
//! The kit does not set ClusterMesh up yet: on a real cloud this phase
//! waits until it times out with the reason, and the sim and the tests
//! reach the pods directly. `docs/architecture.md` says so too.
//!
//! **Undo.** A join is not undone by this daemon: it holds no token once
//! the provision revoked its root token. A destroyed region's non-voters
//! are removed by OpenBao's autopilot (`cleanup_dead_servers`, set by the
//! provision's `secrets-handoff/configure`), and never counted for quorum.

use cz_adapters::ObjectRef;
use cz_adapters::labels::FIELD_MANAGER;
use cz_adapters::openbao::BaoEndpoint;
use cz_engine::{ActionId, PhaseBuilder, PhaseDef, StepError, StepResult, action, no_undo};
use cz_state::SecretString;
use serde::{Deserialize, Serialize};
use serde_json::json;

use super::secrets::{NAMESPACE, PORT, REPLICAS};
use crate::cluster::kubeconfig_for;
use crate::common::{RegionParams, job_request, precondition};
use crate::custody::escrow::{self, ADMIN_KUBECONFIG, STATIC_SEAL_KEY, sha256_hex};
use crate::custody::{
    KubeconfigEscrowed, STATIC_SEAL_NAMESPACE, STATIC_SEAL_SECRET, custody_of, escrow_kubeconfig,
    secret_data, secret_ref, static_seal_fingerprint, static_seal_objects,
};
use crate::request::{Region, Seal};
use crate::{Registry, StepCtx};

pub const CUSTODY_PHASE: &str = "region-custody";
pub const PHASE: &str = "secrets-join";
/// The named state a Shamir-sealed new replica waits in.
pub const AWAITING_CUSTODIANS: &str = "awaiting-custodians";

/// The escrow kind of an added region's admin kubeconfig.
pub fn admin_kubeconfig_kind(location: &str) -> String {
    format!("{ADMIN_KUBECONFIG}.{location}")
}

/// `join-<loc>-<n>`'s and `unseal-<loc>-<n>`'s params.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ReplicaParams {
    pub location: String,
    pub replica: u32,
}

/// `static-seal-<loc>`'s output.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct SealCopied {
    pub secret: String,
    pub fingerprint: String,
}

/// `join-<loc>-<n>`'s output.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Joined {
    pub location: String,
    pub replica: u32,
    /// The home leader's advertised API address the pod joined through
    /// (empty: it was initialized already).
    pub leader_address: String,
    pub non_voter: bool,
}

/// `unseal-<loc>-<n>`'s output.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct JoinedUnsealed {
    pub location: String,
    pub replica: u32,
    pub cluster_id: String,
    /// Custodians unsealed it (Shamir); else it unsealed itself.
    pub by_custodians: bool,
}

const STATIC_SEAL: ActionId<RegionParams> = ActionId::new("secrets-join.static-seal");
const ADMIN_KC: ActionId<RegionParams> = ActionId::new("secrets-join.admin-kubeconfig");
const JOIN: ActionId<ReplicaParams> = ActionId::new("secrets-join.join");
const UNSEAL: ActionId<ReplicaParams> = ActionId::new("secrets-join.unseal");

pub fn register(r: &mut Registry) {
    r.register(STATIC_SEAL, action!(static_seal, static_seal_undo));
    r.register(ADMIN_KC, action!(admin_kubeconfig, admin_kubeconfig_undo));
    r.register(JOIN, action!(join, no_undo));
    r.register(UNSEAL, action!(unseal, no_undo));
}

/// `region-custody`: the static-seal key copied into each new region.
pub fn custody_phase(regions: &[Region]) -> PhaseDef {
    let mut b = PhaseBuilder::new(CUSTODY_PHASE);
    for r in regions {
        let loc = &r.location;
        b.step(&format!("static-seal-{loc}"), STATIC_SEAL, &[], RegionParams::new(loc));
    }
    b.build()
}

/// `secrets-join`: each new region's replicas join and are unsealed.
pub fn phase(regions: &[Region]) -> PhaseDef {
    let mut b = PhaseBuilder::new(PHASE);
    for r in regions {
        let loc = &r.location;
        let kc = format!("admin-kubeconfig-{loc}");
        b.step(&kc, ADMIN_KC, &[], RegionParams::new(loc));
        for replica in 0..REPLICAS {
            let params = ReplicaParams { location: loc.clone(), replica };
            let join = format!("join-{loc}-{replica}");
            b.step(&join, JOIN, &[kc.as_str()], params.clone());
            b.step(&format!("unseal-{loc}-{replica}"), UNSEAL, &[join.as_str()], params);
        }
    }
    b.build()
}

// --- helpers -------------------------------------------------------------

/// Where the Sovereign's OpenBao cluster runs.
fn home(cx: &StepCtx) -> StepResult<String> {
    job_request(cx)?.home_location().ok_or_else(|| {
        precondition(
            "this job's stored request does not say where the Sovereign's OpenBao runs",
            "It was stored by an older daemon: submit the add-region job again.",
        )
    })
}

fn pod(kubeconfig: &SecretString, replica: u32) -> StepResult<BaoEndpoint> {
    BaoEndpoint::pod(kubeconfig, NAMESPACE, &format!("openbao-{replica}"), PORT)
}

/// An unsealed replica of the home cluster: its endpoint and cluster id.
async fn home_replica(cx: &StepCtx) -> StepResult<(BaoEndpoint, String)> {
    let home = home(cx)?;
    let kc = kubeconfig_for(cx, &home).await?;
    let bao = &cx.env.bao;
    cx.wait_for(&format!("an unsealed OpenBao replica in {home}"), cx.env.bounds.openbao, || {
        let kc = kc.clone();
        async move {
            for i in 0..REPLICAS {
                let at = pod(&kc, i)?;
                if let Ok(st) = bao.status(&at).await
                    && let (false, Some(id)) = (st.sealed, st.cluster_id)
                {
                    return Ok(Some((at, id)));
                }
            }
            Ok(None)
        }
    })
    .await
}

fn sealed_runbook(cx: &StepCtx, loc: &str, threshold: u8) -> String {
    format!(
        "The daemon holds no share. {threshold} custodians each run `catalyst-zero unseal {} \
         --region {loc} --identity THEIR-AGE-IDENTITY`; the job goes on by itself when the pod \
         is unsealed (runbooks/openbao-unseal.md).",
        cx.sovereign_id
    )
}

// --- region-custody ------------------------------------------------------

async fn static_seal(cx: &StepCtx) -> StepResult<SealCopied> {
    let RegionParams { location } = cx.params()?;
    let r = secret_ref(STATIC_SEAL_NAMESPACE, STATIC_SEAL_SECRET);
    let secret = format!("{STATIC_SEAL_NAMESPACE}/{STATIC_SEAL_SECRET}");
    let home = home(cx)?;
    let escrowed = cx.escrow(STATIC_SEAL_KEY).await?;
    let held = |fp: &str| escrowed.is_empty() || escrow::holds(&escrowed, fp);
    let target = kubeconfig_for(cx, &location).await?;
    if let Some(there) = cx.env.kube.get(&target, &r).await?
        && let Some(fp) = static_seal_fingerprint(&there)
        && held(&fp)
    {
        return Ok(SealCopied { secret, fingerprint: fp });
    }
    let source = kubeconfig_for(cx, &home).await?;
    let Some(original) = cx.env.kube.get(&source, &r).await? else {
        return Err(precondition(
            format!("the static-seal key Secret {secret} is gone from the home region {home}"),
            "Rebuild it from the custodians' parts (`catalyst-zero combine`, \
             runbooks/openbao-static-seal.md), put it back in the home region, then `retry JOB`.",
        ));
    };
    let key = secret_data(&original, "key").filter(|k| k.len() == 32).ok_or_else(|| {
        precondition(
            format!("the Secret {secret} in {home} holds no 32-byte `key`"),
            "Restore it from the custodians' parts (runbooks/openbao-static-seal.md), then \
             `retry JOB`.",
        )
    })?;
    let fingerprint = sha256_hex(&key);
    if !held(&fingerprint) {
        return Err(precondition(
            format!(
                "the static-seal key in {home} (sha256 {fingerprint}) is not the one escrowed to \
                 the custodians"
            ),
            "Someone replaced it: find out why before any region is added \
             (runbooks/openbao-static-seal.md).",
        ));
    }
    let objs = static_seal_objects(cx, &key, &fingerprint)?;
    cx.env.kube.apply(&target, FIELD_MANAGER, &objs).await?;
    cx.event(
        "custody",
        json!({ "message": format!(
            "OpenBao static-seal key copied from {home} to {location} as {secret}"),
            "fingerprint": fingerprint }),
    )
    .await?;
    Ok(SealCopied { secret, fingerprint })
}

async fn static_seal_undo(cx: &StepCtx) -> StepResult<()> {
    let RegionParams { location } = cx.params()?;
    if let Ok(kc) = kubeconfig_for(cx, &location).await {
        let r: ObjectRef = secret_ref(STATIC_SEAL_NAMESPACE, STATIC_SEAL_SECRET);
        cx.env.kube.delete(&kc, &r).await?;
    }
    Ok(())
}

// --- secrets-join --------------------------------------------------------

async fn admin_kubeconfig(cx: &StepCtx) -> StepResult<KubeconfigEscrowed> {
    let RegionParams { location } = cx.params()?;
    let kc = kubeconfig_for(cx, &location).await?;
    escrow_kubeconfig(cx, &admin_kubeconfig_kind(&location), &kc).await
}

async fn admin_kubeconfig_undo(cx: &StepCtx) -> StepResult<()> {
    let RegionParams { location } = cx.params()?;
    cx.put_escrow(&admin_kubeconfig_kind(&location), &[], &[]).await
}

async fn join(cx: &StepCtx) -> StepResult<Joined> {
    let ReplicaParams { location, replica } = cx.params()?;
    let at = pod(&kubeconfig_for(cx, &location).await?, replica)?;
    let bao = &cx.env.bao;
    let name = format!("OpenBao {location}/openbao-{replica}");
    let st = cx
        .wait_for(&format!("{name} to answer"), cx.env.bounds.openbao, || async {
            Ok(Some(bao.status(&at).await?))
        })
        .await?;
    let done = |leader_address: String| Joined {
        location: location.clone(),
        replica,
        leader_address,
        non_voter: true,
    };
    if st.initialized {
        // Joined by an earlier attempt (or by a sibling pod's retry_join
        // through it): `unseal-` checks which cluster it is in.
        return Ok(done(String::new()));
    }
    let (home_at, _) = home_replica(cx).await?;
    let leader = bao.leader(&home_at).await?;
    match bao.raft_join(&at, &leader.leader_address, true).await {
        Ok(()) => {}
        // Raft state appeared since the status: joined meanwhile.
        Err(StepError::Adapter { cause: cz_engine::Cause::Conflict, .. }) => {}
        Err(e) => return Err(e),
    }
    cx.wait_for(&format!("{name} to join"), cx.env.bounds.openbao, || async {
        Ok(bao.status(&at).await?.initialized.then_some(()))
    })
    .await?;
    cx.event(
        "custody",
        json!({ "message": format!("{name} joined the Sovereign's OpenBao as a non-voter"),
                "leader": leader.leader_address }),
    )
    .await?;
    Ok(done(leader.leader_address))
}

async fn unseal(cx: &StepCtx) -> StepResult<JoinedUnsealed> {
    let ReplicaParams { location, replica } = cx.params()?;
    let custody = custody_of(cx)?;
    let at = pod(&kubeconfig_for(cx, &location).await?, replica)?;
    let bao = &cx.env.bao;
    let name = format!("OpenBao {location}/openbao-{replica}");
    let (_, want) = home_replica(cx).await?;
    let st = bao.status(&at).await?;
    let by_custodians = st.sealed && custody.seal == Seal::Shamir;
    let (reason, bound) = if by_custodians {
        let message = format!(
            "{name} joined and waits sealed for {} custodians ({} of {} shares given). {}",
            custody.openbao_threshold,
            st.progress,
            st.threshold,
            sealed_runbook(cx, &location, custody.openbao_threshold)
        );
        cx.event(
            "custody",
            json!({ "state": AWAITING_CUSTODIANS, "location": location, "replica": replica,
                    "message": message }),
        )
        .await?;
        (format!("{AWAITING_CUSTODIANS}: {name} to be unsealed"), cx.env.bounds.custodians)
    } else {
        (format!("{name} to unseal"), cx.env.bounds.openbao)
    };
    let cluster_id = cx
        .wait_for(&reason, bound, || async {
            let st = bao.status(&at).await?;
            Ok(if st.sealed { None } else { st.cluster_id })
        })
        .await?;
    if cluster_id != want {
        return Err(precondition(
            format!("{name} is unsealed in cluster {cluster_id}, not the Sovereign's ({want})"),
            format!(
                "It was initialized on its own before it could join. Nothing of the Sovereign's \
                 is in it: delete its volume (`kubectl -n {NAMESPACE} delete pvc \
                 data-openbao-{replica}` in {location}), restart the pod, then `retry JOB`."
            ),
        ));
    }
    if by_custodians {
        cx.event(
            "custody",
            json!({ "state": "unsealed", "location": location, "replica": replica,
                    "message": format!("{name} unsealed by the custodians") }),
        )
        .await?;
    }
    Ok(JoinedUnsealed { location, replica, cluster_id, by_custodians })
}

#[cfg(test)]
mod tests;
