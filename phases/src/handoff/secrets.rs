//! Phase 6, `secrets-handoff`: OpenBao initialized with true k-of-n
//! custody, configured for External Secrets, proven end to end, and left
//! without a root token; then sealed-secrets is retired.
//!
//! 1. `init` (undo: forget the escrow and the root token): `sys/init` on
//!    replica 0, then, with the answer still only in memory, every share
//!    (or, with the static seal, every recovery key) is encrypted to its
//!    custodian alone and the escrow committed together with the root
//!    token (sealed to the daemon's at-rest key) in one transaction. With
//!    the Shamir seal the step then unseals every replica from the shares
//!    it holds in memory, waiting for replicas 1 and 2 to join. The shares
//!    are never written anywhere the daemon keeps.
//! 2. `unseal-<n>`, one per replica: waits until the replica answers and is
//!    unsealed. A replica still sealed (the daemon restarted after `init`
//!    committed, or a pod restarted since) cannot be unsealed by the
//!    daemon, which holds no share: the step stops with `needs-operator`,
//!    and `threshold` custodians run `catalyst-zero unseal` (the
//!    `openbao-unseal` runbook). With the static seal the pods unseal
//!    themselves and the step only waits.
//! 3. `configure`: KV v2 at `secret/`; Kubernetes auth at `kubernetes/`
//!    with the API server and CA of the cluster's kubeconfig (the client's
//!    own token reviews itself, so OpenBao needs no long-lived reviewer
//!    token); the policy `external-secrets` (read `secret/data/*`, read and
//!    list `secret/metadata/*`, nothing else) and the role
//!    `external-secrets` bound to ESO's service account; raft autopilot
//!    removes dead servers (an added region's non-voters, once destroyed)
//!    but never below the three home voters.
//! 4. `eso-install` (undo: remove it): External Secrets from the release
//!    manifest (`[[handoff]]`), installed and probed like a kit component.
//! 5. `eso-store` (undo: delete it): the `ClusterSecretStore` `openbao`
//!    (external-secrets.io/v1, Kubernetes auth) and the binding that lets
//!    ESO's token review itself; done when ESO reports the store Ready
//!    (it logged in to OpenBao).
//! 6. `roundtrip` (undo: delete what it made): a canary written to KV is
//!    read back through an `ExternalSecret` into a Kubernetes Secret; the
//!    canary is changed, a resync forced (`force-sync` annotation), and the
//!    new value must arrive; then everything it made is deleted.
//! 7. `revoke-root`: the root token revokes itself, the step checks it no
//!    longer works, and forgets it.
//! 8. `retire-sealed-secrets`: bp-sealed-secrets goes through the kit's
//!    prune; its key stays in escrow (and in `kube-system`).
//!
//! **The window.** Between `sys/init`'s answer and the escrow commit the
//! shares exist only in this process. A kill inside that window leaves an
//! OpenBao initialized with no escrow: nobody holds a share, so it was
//! never unsealed and holds no data. That, and only that, is when a re-run
//! may re-initialise it: OpenBao initialized, nothing escrowed for this
//! Sovereign, and `configure` never checkpointed. The wipe is an
//! operator's act on a real cluster (the adapter says how); the sim does
//! it. After the commit a re-run never re-initialises: it finds the escrow
//! and goes on, and a replica it cannot unseal is the custodians' job.

use std::sync::Mutex;

use cz_adapters::labels::FIELD_MANAGER;
use cz_adapters::openbao::BaoEndpoint;
use cz_adapters::{BaoInitRequest, ObjectRef};
use cz_engine::{ActionId, Cause, PhaseBuilder, PhaseDef, StepError, StepResult, System};
use cz_engine::{action, no_undo};
use cz_state::SecretString;
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

use crate::cluster::kubeconfig_for;
use crate::common::{first_location, job_request, precondition};
use crate::custody::custody_of;
use crate::custody::escrow::{self, OPENBAO_RECOVERY_KEY, OPENBAO_SHARE};
use crate::request::Seal;
use crate::{Registry, StepCtx, bootstrap_kit};

pub const PHASE: &str = "secrets-handoff";
/// bp-openbao's replicas (`server.ha.replicas`).
pub const REPLICAS: u32 = 3;
/// OpenBao's namespace, pods (`openbao-<i>`) and port (the chart's).
pub const NAMESPACE: &str = "openbao";
pub const PORT: u16 = 8200;
/// The root token, sealed to the daemon from `init` until `revoke-root`.
const ROOT_TOKEN: &str = "openbao-root-token";
/// The hand-off component and where it runs.
const ESO: &str = "external-secrets";
pub const ESO_NAMESPACE: &str = "external-secrets-system";
pub const ESO_SERVICE_ACCOUNT: &str = "external-secrets";
/// The policy and role ESO logs in with.
pub const ESO_ROLE: &str = "external-secrets";
const ESO_POLICY: &str = "path \"secret/data/*\" {\n  capabilities = [\"read\"]\n}\n\
                          path \"secret/metadata/*\" {\n  capabilities = [\"read\", \"list\"]\n}\n";
/// The store, and the canary the round trip syncs.
pub const STORE: &str = "openbao";
const CANARY_KEY: &str = "catalyst-zero/roundtrip";
const CANARY_SECRET: &str = "catalyst-zero-roundtrip";

// --- params and outputs --------------------------------------------------

/// `unseal-<n>`'s params.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ReplicaParams {
    pub replica: u32,
}

/// `init`'s output.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct BaoInitialized {
    pub seal: Seal,
    pub shares: u8,
    pub threshold: u8,
    /// Found initialized with its escrow: a re-run.
    pub already_initialized: bool,
    /// The replicas this step unsealed with the shares it held.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub unsealed: Vec<u32>,
}

/// `unseal-<n>`'s output.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Unsealed {
    pub replica: u32,
    pub sealed: bool,
}

/// `configure`'s output.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Configured {
    pub kv: String,
    pub auth: String,
    pub kubernetes_host: String,
    pub role: String,
}

/// `eso-store`'s output.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct SecretStore {
    pub store: String,
}

/// `roundtrip`'s output.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct RoundTrip {
    /// The canary reached the Secret, then its change did after a resync.
    pub synced: bool,
    pub resynced: bool,
    pub external_secret: String,
}

/// `revoke-root`'s output.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct RootRevoked {
    pub revoked: bool,
    /// A re-run: revoked and forgotten already.
    pub already: bool,
}

/// `retire-sealed-secrets`' output.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Retired {
    pub pruned: Vec<String>,
}

// --- actions and the DAG -------------------------------------------------

const INIT: ActionId<()> = ActionId::new("secrets-handoff.init");
const UNSEAL: ActionId<ReplicaParams> = ActionId::new("secrets-handoff.unseal");
const CONFIGURE: ActionId<()> = ActionId::new("secrets-handoff.configure");
const ESO_INSTALL: ActionId<()> = ActionId::new("secrets-handoff.eso-install");
const ESO_STORE: ActionId<()> = ActionId::new("secrets-handoff.eso-store");
const ROUNDTRIP: ActionId<()> = ActionId::new("secrets-handoff.roundtrip");
const REVOKE_ROOT: ActionId<()> = ActionId::new("secrets-handoff.revoke-root");
const RETIRE: ActionId<()> = ActionId::new("secrets-handoff.retire-sealed-secrets");

pub fn register(r: &mut Registry) {
    r.register(INIT, action!(bao_init, bao_init_undo));
    r.register(UNSEAL, action!(bao_unseal, no_undo));
    r.register(CONFIGURE, action!(bao_configure, no_undo));
    r.register(ESO_INSTALL, action!(eso_install, eso_install_undo));
    r.register(ESO_STORE, action!(eso_store, eso_store_undo));
    r.register(ROUNDTRIP, action!(roundtrip, roundtrip_undo));
    r.register(REVOKE_ROOT, action!(revoke_root, no_undo));
    r.register(RETIRE, action!(retire_sealed_secrets, no_undo));
}

pub fn phase() -> PhaseDef {
    let mut b = PhaseBuilder::new(PHASE);
    b.step("init", INIT, &[], ());
    let mut unseals = Vec::new();
    for replica in 0..REPLICAS {
        let n = format!("unseal-{replica}");
        b.step(&n, UNSEAL, &["init"], ReplicaParams { replica });
        unseals.push(n);
    }
    let u: Vec<&str> = unseals.iter().map(String::as_str).collect();
    b.step("configure", CONFIGURE, &u, ());
    b.step("eso-install", ESO_INSTALL, &["configure"], ());
    b.step("eso-store", ESO_STORE, &["eso-install"], ());
    b.step("roundtrip", ROUNDTRIP, &["eso-store"], ());
    b.step("revoke-root", REVOKE_ROOT, &["roundtrip"], ());
    b.step("retire-sealed-secrets", RETIRE, &["roundtrip"], ());
    b.build()
}

// --- helpers -------------------------------------------------------------

async fn kubeconfig(cx: &StepCtx) -> StepResult<SecretString> {
    kubeconfig_for(cx, &first_location(cx)?).await
}

/// OpenBao replica `replica` of this Sovereign's first cluster, as its pod
/// through the cluster's API server: a sealed pod fails its readiness
/// probe, so the Service cannot reach it.
async fn endpoint(cx: &StepCtx, replica: u32) -> StepResult<BaoEndpoint> {
    BaoEndpoint::pod(&kubeconfig(cx).await?, NAMESPACE, &format!("openbao-{replica}"), PORT)
}

fn bao_err(op: &str, cause: Cause, message: impl Into<String>) -> StepError {
    StepError::adapter(System::Openbao, op, cause, message)
}

fn is_unauthorized(e: &StepError) -> bool {
    matches!(e, StepError::Adapter { cause: Cause::Unauthorized, .. })
}

/// The escrow kind of this seal's init keys.
fn key_kind(seal: Seal) -> &'static str {
    match seal {
        Seal::Shamir => OPENBAO_SHARE,
        Seal::Static => OPENBAO_RECOVERY_KEY,
    }
}

/// The runbook remediation for a replica only custodians can unseal.
fn unseal_runbook(cx: &StepCtx, threshold: u8) -> String {
    format!(
        "The daemon holds no share. {threshold} custodians each run `catalyst-zero unseal {} \
         --identity THEIR-AGE-IDENTITY` (it fetches their share from the escrow, decrypts it \
         locally and submits it to every sealed pod), then `retry JOB` \
         (runbooks/openbao-unseal.md).",
        cx.sovereign_id
    )
}

// --- init and unseal -----------------------------------------------------

async fn bao_init(cx: &StepCtx) -> StepResult<BaoInitialized> {
    let custody = custody_of(cx)?;
    let (seal, shares, threshold) = (custody.seal, custody.shares(), custody.openbao_threshold);
    let kind = key_kind(seal);
    let ep = endpoint(cx, 0).await?;
    let bound = cx.env.bounds.openbao;
    let status = cx
        .wait_for("OpenBao replica 0 to answer", bound, || async {
            Ok(Some(cx.env.bao.status(&ep).await?))
        })
        .await?;
    if !status.seal_type.is_empty() && status.seal_type != seal.as_str() {
        return Err(precondition(
            format!(
                "OpenBao runs with the `{}` seal; the request asks for `{}`",
                status.seal_type,
                seal.as_str()
            ),
            "bp-openbao's values did not get the request's seal: check the HelmRelease's \
             `server.ha.raft.config` and the Secret openbao/openbao-static-seal, then `retry JOB`.",
        ));
    }
    let base =
        BaoInitialized { seal, shares, threshold, already_initialized: true, unsealed: Vec::new() };
    if status.initialized {
        if !cx.escrow(kind).await?.is_empty() {
            // Ours, whatever happened since: never initialised again.
            return Ok(base);
        }
        if !cx.lookup_prefix(&format!("{PHASE}/configure")).is_empty() {
            return Err(StepError::Precondition {
                message: "OpenBao is initialized and configured, but its escrow is gone from \
                          the store"
                    .into(),
                remediation: format!(
                    "Never re-initialise it: it holds data. Restore the store from its backup \
                     (the escrow table), or unseal with the custodians' copies. {}",
                    unseal_runbook(cx, threshold)
                ),
            });
        }
        // An earlier attempt got the answer and died before the commit:
        // nobody holds a share or the root token, so nothing was ever
        // unsealed or written; its storage can go.
        cx.event(
            "custody",
            json!({ "message": "OpenBao was initialized by an attempt whose escrow never reached \
                                the store; nothing can have been written to it: wiping it and \
                                initializing again" }),
        )
        .await?;
        cx.env.bao.wipe(&ep).await?;
    }
    let req = BaoInitRequest { shares, threshold, recovery: seal == Seal::Static };
    let init = cx.env.bao.init(&ep, req).await?;
    // The window: the answer is in this process only, until this commit.
    let items = escrow::deal(&custody, kind, &init.keys, threshold, None)?;
    cx.put_escrow(kind, &items, &[(ROOT_TOKEN.to_owned(), init.root_token.clone())]).await?;
    cx.event(
        "custody",
        json!({ "message": format!(
            "OpenBao initialized ({} seal): {shares} {}, threshold {threshold}, each encrypted \
             to its custodian alone ({} custodians)",
            seal.as_str(),
            if seal == Seal::Static { "recovery keys" } else { "unseal shares" },
            custody.custodians.len()) }),
    )
    .await?;
    let mut unsealed = Vec::new();
    if seal == Seal::Shamir {
        let keys = &init.keys[..usize::from(threshold)];
        for replica in 0..REPLICAS {
            match unseal_with(cx, replica, keys).await {
                Ok(()) => unsealed.push(replica),
                // The escrow is committed: a replica left sealed is the
                // custodians' (`unseal-<n>` says so), not a reason to fail.
                Err(e) => {
                    let message = format!("OpenBao replica {replica} left sealed: {e}");
                    cx.event("custody", json!({ "message": message })).await?;
                }
            }
        }
    }
    Ok(BaoInitialized { already_initialized: false, unsealed, ..base })
}

/// Unseals `replica` with `keys` (held in memory by `init`): waits for it
/// to answer as part of the initialized cluster (replicas 1 and 2 join
/// replica 0), gives it the keys, and waits until it reports unsealed (a
/// joining replica takes a moment after the last key).
async fn unseal_with(cx: &StepCtx, replica: u32, keys: &[SecretString]) -> StepResult<()> {
    let ep = endpoint(cx, replica).await?;
    let bound = cx.env.bounds.openbao;
    let bao = &cx.env.bao;
    let st = cx
        .wait_for(&format!("OpenBao replica {replica} to join"), bound, || async {
            let st = bao.status(&ep).await?;
            Ok(st.initialized.then_some(st))
        })
        .await?;
    if st.sealed {
        for key in keys {
            if !bao.unseal(&ep, key).await?.sealed {
                break;
            }
        }
    }
    cx.wait_for(&format!("OpenBao replica {replica} to unseal"), bound, || async {
        Ok((!bao.status(&ep).await?.sealed).then_some(()))
    })
    .await?;
    cx.event("custody", json!({ "message": format!("OpenBao replica {replica} unsealed") })).await
}

/// The cluster (and OpenBao's data with it) goes with the infra undo; this
/// forgets the escrow and root token of an OpenBao that will not exist.
async fn bao_init_undo(cx: &StepCtx) -> StepResult<()> {
    let seal = job_request(cx)?.seal();
    cx.put_escrow(key_kind(seal), &[], &[]).await?;
    cx.delete_secret(ROOT_TOKEN).await
}

async fn bao_unseal(cx: &StepCtx) -> StepResult<Unsealed> {
    let ReplicaParams { replica } = cx.params()?;
    let custody = custody_of(cx)?;
    let ep = endpoint(cx, replica).await?;
    let bound = cx.env.bounds.openbao;
    let status = cx
        .wait_for(&format!("OpenBao replica {replica} to answer"), bound, || async {
            let st = cx.env.bao.status(&ep).await?;
            Ok(st.initialized.then_some(st))
        })
        .await?;
    if !status.sealed {
        return Ok(Unsealed { replica, sealed: false });
    }
    if custody.seal == Seal::Static {
        cx.wait_for(&format!("OpenBao replica {replica} to unseal itself"), bound, || async {
            Ok((!cx.env.bao.status(&ep).await?.sealed).then_some(()))
        })
        .await?;
        return Ok(Unsealed { replica, sealed: false });
    }
    Err(StepError::Precondition {
        message: format!(
            "OpenBao replica {replica} is sealed ({} of {} shares given)",
            status.progress, status.threshold
        ),
        remediation: unseal_runbook(cx, custody.openbao_threshold),
    })
}

// --- configuration -------------------------------------------------------

async fn root_token(cx: &StepCtx) -> StepResult<SecretString> {
    cx.secret_opt(ROOT_TOKEN).await?.ok_or_else(|| StepError::Precondition {
        message: "OpenBao's root token was revoked and forgotten already".into(),
        remediation: "A step that needs it is re-running after `revoke-root`: generate a \
                      short-lived root token with the custodians (`bao operator generate-root`), \
                      do the step's work by hand, and `skip` it (runbooks/needs-operator-precondition.md)."
            .into(),
    })
}

async fn bao_configure(cx: &StepCtx) -> StepResult<Configured> {
    let ep = endpoint(cx, 0).await?;
    let root = root_token(cx).await?;
    let kc = kubeconfig(cx).await?;
    let api = cz_adapters::kube::kubeconfig::endpoint(kc.expose())?;
    let ca = String::from_utf8(api.ca_pem.clone()).map_err(|_| StepError::InvalidInput {
        path: "kubeconfig".into(),
        message: "certificate-authority-data is not PEM text".into(),
    })?;
    let b = &cx.env.bao;
    let mounts = b.read(&ep, &root, "sys/mounts").await?.unwrap_or(Value::Null);
    if mounts.pointer("/data/secret~1").or_else(|| mounts.get("secret/")).is_none() {
        let kv = json!({ "type": "kv", "options": { "version": "2" } });
        b.write(&ep, &root, "sys/mounts/secret", kv).await?;
    }
    let auths = b.read(&ep, &root, "sys/auth").await?.unwrap_or(Value::Null);
    if auths.pointer("/data/kubernetes~1").or_else(|| auths.get("kubernetes/")).is_none() {
        b.write(&ep, &root, "sys/auth/kubernetes", json!({ "type": "kubernetes" })).await?;
    }
    b.write(
        &ep,
        &root,
        "auth/kubernetes/config",
        json!({
            "kubernetes_host": api.server,
            "kubernetes_ca_cert": ca,
            // The client's own token is the reviewer: OpenBao keeps no
            // long-lived token, and it works the same from outside a pod.
            "disable_local_ca_jwt": true,
        }),
    )
    .await?;
    b.write(&ep, &root, "sys/policy/external-secrets", json!({ "policy": ESO_POLICY })).await?;
    // Regions added later join as non-voters; when one is destroyed its
    // dead replicas are removed by autopilot, as nobody keeps a token to
    // remove them by hand. Never below the home region's three voters.
    b.write(
        &ep,
        &root,
        "sys/storage/raft/autopilot/configuration",
        json!({
            "cleanup_dead_servers": true,
            "dead_server_last_contact_threshold": "1h",
            "min_quorum": REPLICAS,
        }),
    )
    .await?;
    b.write(
        &ep,
        &root,
        &format!("auth/kubernetes/role/{ESO_ROLE}"),
        json!({
            "bound_service_account_names": [ESO_SERVICE_ACCOUNT],
            "bound_service_account_namespaces": [ESO_NAMESPACE],
            "token_policies": ["external-secrets"],
            "token_ttl": "1h",
        }),
    )
    .await?;
    Ok(Configured {
        kv: "secret/".into(),
        auth: "kubernetes/".into(),
        kubernetes_host: api.server,
        role: ESO_ROLE.into(),
    })
}

// --- External Secrets ----------------------------------------------------

async fn eso_install(cx: &StepCtx) -> StepResult<bootstrap_kit::ComponentInstalled> {
    bootstrap_kit::install_handoff_component(cx, &first_location(cx)?, ESO).await
}

async fn eso_install_undo(cx: &StepCtx) -> StepResult<()> {
    bootstrap_kit::remove_handoff_component(cx, &first_location(cx)?, ESO).await
}

fn store_ref() -> ObjectRef {
    ObjectRef {
        api_version: "external-secrets.io/v1".into(),
        kind: "ClusterSecretStore".into(),
        namespace: None,
        name: STORE.into(),
    }
}

fn binding_ref() -> ObjectRef {
    ObjectRef {
        api_version: "rbac.authorization.k8s.io/v1".into(),
        kind: "ClusterRoleBinding".into(),
        namespace: None,
        name: "external-secrets-openbao-tokenreview".into(),
    }
}

/// The `ClusterSecretStore` the secrets hand-off applies.
pub fn cluster_secret_store() -> Value {
    json!({
        "apiVersion": "external-secrets.io/v1", "kind": "ClusterSecretStore",
        "metadata": { "name": STORE, "labels": { "app.kubernetes.io/managed-by": "catalyst-zero" } },
        "spec": { "provider": { "vault": {
            "server": format!("http://openbao.{NAMESPACE}.svc.cluster.local:{PORT}"),
            "path": "secret",
            "version": "v2",
            "auth": { "kubernetes": {
                "mountPath": "kubernetes",
                "role": ESO_ROLE,
                "serviceAccountRef": { "name": ESO_SERVICE_ACCOUNT, "namespace": ESO_NAMESPACE },
            } },
        } } },
    })
}

/// ESO's service account may review its own token (OpenBao's Kubernetes
/// auth with `disable_local_ca_jwt` sends the client's token as the
/// reviewer's).
fn tokenreview_binding() -> Value {
    json!({
        "apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRoleBinding",
        "metadata": { "name": binding_ref().name,
                      "labels": { "app.kubernetes.io/managed-by": "catalyst-zero" } },
        "roleRef": { "apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole",
                     "name": "system:auth-delegator" },
        "subjects": [{ "kind": "ServiceAccount", "name": ESO_SERVICE_ACCOUNT,
                       "namespace": ESO_NAMESPACE }],
    })
}

/// The `Ready` condition of `obj`: (status, reason, message).
fn ready_of(obj: &Value) -> Option<(String, String, String)> {
    let c = obj
        .pointer("/status/conditions")?
        .as_array()?
        .iter()
        .find(|c| c["type"] == "Ready")?
        .clone();
    let s = |k: &str| c[k].as_str().unwrap_or_default().to_owned();
    Some((s("status"), s("reason"), s("message")))
}

/// Waits until `r` is Ready; past the bound the error carries the last
/// reason and message seen (what an operator needs).
async fn wait_ready(cx: &StepCtx, kc: &SecretString, r: &ObjectRef) -> StepResult<()> {
    let last = Mutex::new(String::from("no status yet"));
    let what = format!("{} {} to be Ready", r.kind, r.name);
    let waited = cx
        .wait_for(&what, cx.env.bounds.secret_sync, || async {
            let obj = cx.env.kube.get(kc, r).await?;
            match obj.as_ref().and_then(ready_of) {
                Some((s, _, _)) if s == "True" => Ok(Some(())),
                Some((s, reason, message)) => {
                    *last.lock().expect("lock") = format!("Ready={s} {reason}: {message}");
                    Ok(None)
                }
                None => Ok(None),
            }
        })
        .await;
    waited.map_err(|e| match e {
        StepError::Timeout { reason, bound_s } => StepError::Timeout {
            reason: format!("{reason} (last: {})", last.lock().expect("lock")),
            bound_s,
        },
        e => e,
    })
}

async fn eso_store(cx: &StepCtx) -> StepResult<SecretStore> {
    let kc = kubeconfig(cx).await?;
    let objs = [tokenreview_binding(), cluster_secret_store()];
    cx.env.kube.apply(&kc, FIELD_MANAGER, &objs).await?;
    wait_ready(cx, &kc, &store_ref()).await?;
    Ok(SecretStore { store: STORE.into() })
}

async fn eso_store_undo(cx: &StepCtx) -> StepResult<()> {
    let Ok(kc) = kubeconfig(cx).await else { return Ok(()) };
    cx.env.kube.delete(&kc, &store_ref()).await?;
    cx.env.kube.delete(&kc, &binding_ref()).await
}

fn roundtrip_ref() -> ObjectRef {
    ObjectRef {
        api_version: "external-secrets.io/v1".into(),
        kind: "ExternalSecret".into(),
        namespace: Some(ESO_NAMESPACE.into()),
        name: CANARY_SECRET.into(),
    }
}

fn synced_secret_ref() -> ObjectRef {
    ObjectRef {
        api_version: "v1".into(),
        kind: "Secret".into(),
        namespace: Some(ESO_NAMESPACE.into()),
        name: CANARY_SECRET.into(),
    }
}

/// The `ExternalSecret` of the round trip; `force_sync` (a changing value)
/// makes ESO refresh it now.
pub fn roundtrip_external_secret(force_sync: Option<&str>) -> Value {
    let mut es = json!({
        "apiVersion": "external-secrets.io/v1", "kind": "ExternalSecret",
        "metadata": { "name": CANARY_SECRET, "namespace": ESO_NAMESPACE,
                      "labels": { "app.kubernetes.io/managed-by": "catalyst-zero" } },
        "spec": {
            "refreshInterval": "1h",
            "secretStoreRef": { "kind": "ClusterSecretStore", "name": STORE },
            // The canary holds no secret, and says so (the sim keeps a
            // Secret's values readable only then).
            "target": { "name": CANARY_SECRET, "creationPolicy": "Owner",
                        "template": { "metadata": { "labels": {
                            "catalyst.openova.io/canary": "true" } } } },
            "data": [{ "secretKey": "canary",
                       "remoteRef": { "key": CANARY_KEY, "property": "canary" } }],
        },
    });
    if let Some(v) = force_sync {
        es["metadata"]["annotations"] = json!({ "force-sync": v });
    }
    es
}

/// Waits until the synced Secret holds `want` under `canary`.
async fn wait_synced(cx: &StepCtx, kc: &SecretString, want: &str) -> StepResult<()> {
    use base64::Engine as _;
    let r = synced_secret_ref();
    cx.wait_for(
        "the ExternalSecret's Secret to hold the canary",
        cx.env.bounds.secret_sync,
        || async {
            let got = cx.env.kube.get(kc, &r).await?;
            let value = got
                .as_ref()
                .and_then(|s| s.pointer("/data/canary"))
                .and_then(Value::as_str)
                .and_then(|v| base64::engine::general_purpose::STANDARD.decode(v).ok());
            Ok((value.as_deref() == Some(want.as_bytes())).then_some(()))
        },
    )
    .await
}

async fn roundtrip(cx: &StepCtx) -> StepResult<RoundTrip> {
    let ep = endpoint(cx, 0).await?;
    let root = root_token(cx).await?;
    let kc = kubeconfig(cx).await?;
    let b = &cx.env.bao;
    let path = format!("secret/data/{CANARY_KEY}");
    // Each leg asks for a sync of its own: a run that died after the
    // first leg left the ExternalSecret synced to an older canary, and ESO
    // refreshes an unchanged ExternalSecret only after `refreshInterval`.
    let stamp = chrono::Utc::now().timestamp_millis();
    let first = hex::encode(rand::random::<[u8; 16]>());
    b.write(&ep, &root, &path, json!({ "data": { "canary": first } })).await?;
    let es = roundtrip_external_secret(Some(&format!("{stamp}-first")));
    cx.env.kube.apply(&kc, FIELD_MANAGER, &[es]).await?;
    wait_synced(cx, &kc, &first).await?;
    // The other leg: a change in OpenBao reaches the cluster on a resync.
    let second = hex::encode(rand::random::<[u8; 16]>());
    b.write(&ep, &root, &path, json!({ "data": { "canary": second } })).await?;
    let es = roundtrip_external_secret(Some(&format!("{stamp}-second")));
    cx.env.kube.apply(&kc, FIELD_MANAGER, &[es]).await?;
    wait_synced(cx, &kc, &second).await?;
    cleanup_roundtrip(cx, &kc).await?;
    b.delete(&ep, &root, &format!("secret/metadata/{CANARY_KEY}")).await?;
    if b.read(&ep, &root, &path).await?.is_some() {
        return Err(bao_err("roundtrip", Cause::Invalid, "the canary survived its deletion"));
    }
    cx.event(
        "custody",
        json!({ "message": "External Secrets read a canary from OpenBao into a Secret, and its \
                            change after a forced resync; the canary is deleted" }),
    )
    .await?;
    Ok(RoundTrip {
        synced: true,
        resynced: true,
        external_secret: format!("{ESO_NAMESPACE}/{CANARY_SECRET}"),
    })
}

/// Deletes the round trip's ExternalSecret and its Secret (the garbage
/// collector would, through the owner reference; not waited for).
async fn cleanup_roundtrip(cx: &StepCtx, kc: &SecretString) -> StepResult<()> {
    cx.env.kube.delete(kc, &roundtrip_ref()).await?;
    cx.env.kube.delete(kc, &synced_secret_ref()).await
}

async fn roundtrip_undo(cx: &StepCtx) -> StepResult<()> {
    let Ok(kc) = kubeconfig(cx).await else { return Ok(()) };
    cleanup_roundtrip(cx, &kc).await
}

// --- the end of the daemon's power ---------------------------------------

async fn revoke_root(cx: &StepCtx) -> StepResult<RootRevoked> {
    let Some(root) = cx.secret_opt(ROOT_TOKEN).await? else {
        return Ok(RootRevoked { revoked: true, already: true });
    };
    let ep = endpoint(cx, 0).await?;
    let b = &cx.env.bao;
    match b.write(&ep, &root, "auth/token/revoke-self", json!({})).await {
        // Refused: revoked already (a kill after the revoke, before the
        // forget).
        Err(e) if is_unauthorized(&e) => {}
        r => {
            r?;
        }
    }
    match b.read(&ep, &root, "auth/token/lookup-self").await {
        Err(e) if is_unauthorized(&e) => {}
        Err(e) => return Err(e),
        Ok(_) => {
            return Err(bao_err("revoke-root", Cause::Invalid, "the root token still works"));
        }
    }
    cx.delete_secret(ROOT_TOKEN).await?;
    cx.event(
        "custody",
        json!({ "message": "OpenBao's root token is revoked (it no longer works) and forgotten; \
                            a new one takes the custodians (generate-root)" }),
    )
    .await?;
    Ok(RootRevoked { revoked: true, already: false })
}

async fn retire_sealed_secrets(cx: &StepCtx) -> StepResult<Retired> {
    let kc = kubeconfig(cx).await?;
    let keep: Vec<String> =
        job_request(cx)?.components().iter().filter(|c| *c != "sealed-secrets").cloned().collect();
    let pruned = bootstrap_kit::prune_unwanted(cx, &kc, &keep).await?;
    Ok(Retired { pruned })
}

#[cfg(test)]
pub(crate) mod tests;
