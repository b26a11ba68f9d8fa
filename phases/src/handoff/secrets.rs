//! Phase 6, `secrets-handoff`: OpenBao + ESO take over the secrets.
//!
//! 1. `init` (undo: forget the shares and tokens): `sys/init` with the
//!    request's shares and threshold; every share is encrypted to the
//!    operators' age recipients and stored (sealed to the daemon for
//!    unsealing after restarts) in one commit before the step returns;
//! 2. `unseal-<n>`, one per replica: unsealed with the stored shares;
//! 3. `configure`: KV v2, kubernetes auth, the ESO policy and role;
//! 4. `eso-store` (undo: delete it): the `ClusterSecretStore` to OpenBao;
//! 5. `roundtrip` (undo: delete the ExternalSecret): a value written to
//!    OpenBao reads back, and an `ExternalSecret` for it is applied;
//! 6. `root-token`: the root token escrowed to the operators and forgotten;
//! 7. `retire-sealed-secrets`: the transient sealed-secrets release goes.
//!
//! OpenBao init is the one step whose side effect cannot be repeated: the
//! shares exist only in `sys/init`'s answer. A re-run that finds OpenBao
//! initialized and the shares in the store goes on; one that finds it
//! initialized *without* stored shares (a kill between the answer and the
//! commit) wipes the still-empty OpenBao and initializes it again.
//!
//! Not built yet: a real OpenBao endpoint (through the API server's pod
//! proxy), true k-of-n escrow (each share to one custodian), and the
//! `ExternalSecret` read back from the cluster; the `hetzner` backend's
//! OpenBao adapter refuses every call, so a `hetzner` job pauses at `init`.

use std::time::Duration;

use cz_adapters::ObjectRef;
use cz_adapters::labels::FIELD_MANAGER;
use cz_adapters::openbao::BaoEndpoint;
use cz_engine::{ActionId, Cause, PhaseBuilder, PhaseDef, StepError, StepResult, System};
use cz_engine::{action, no_undo};
use cz_state::SecretString;
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

use crate::cluster::kubeconfig_for;
use crate::common::first_location;
use crate::custody::{custody_of, encrypt_to};
use crate::{Registry, StepCtx};

pub const PHASE: &str = "secrets-handoff";
const REPLICAS: u32 = 3;

// --- params and outputs --------------------------------------------------

/// `unseal-<n>`'s params.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ReplicaParams {
    pub replica: u32,
}

/// `init`'s output.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct BaoInitialized {
    pub shares: u8,
    pub threshold: u8,
    /// SHA-256 of each share's escrow blob (absent on a re-run).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub escrow_sha256: Vec<String>,
    pub already_initialized: bool,
}

/// `unseal-<n>`'s output.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Unsealed {
    pub replica: u32,
    pub sealed: bool,
    /// Shares it took (absent: it was unsealed already).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub shares_used: Option<u8>,
}

/// `configure`'s output.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Configured {
    pub kv: String,
    pub auth: String,
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
    pub openbao_roundtrip: bool,
    pub external_secret: String,
}

/// `root-token`'s output.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct RootTokenEscrowed {
    pub escrowed: bool,
    /// A re-run: it was escrowed and forgotten already.
    pub already: bool,
}

/// `retire-sealed-secrets`' output.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Retired {
    pub retired: String,
}

// --- actions and the DAG -------------------------------------------------

const INIT: ActionId<()> = ActionId::new("secrets-handoff.init");
const UNSEAL: ActionId<ReplicaParams> = ActionId::new("secrets-handoff.unseal");
const CONFIGURE: ActionId<()> = ActionId::new("secrets-handoff.configure");
const ESO_STORE: ActionId<()> = ActionId::new("secrets-handoff.eso-store");
const ROUNDTRIP: ActionId<()> = ActionId::new("secrets-handoff.roundtrip");
const ROOT_TOKEN: ActionId<()> = ActionId::new("secrets-handoff.root-token");
const RETIRE: ActionId<()> = ActionId::new("secrets-handoff.retire-sealed-secrets");

pub fn register(r: &mut Registry) {
    r.register(INIT, action!(bao_init, bao_init_undo));
    r.register(UNSEAL, action!(bao_unseal, no_undo));
    r.register(CONFIGURE, action!(bao_configure, no_undo));
    r.register(ESO_STORE, action!(eso_store, eso_store_undo));
    r.register(ROUNDTRIP, action!(roundtrip, roundtrip_undo));
    r.register(ROOT_TOKEN, action!(root_token, no_undo));
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
    b.step("eso-store", ESO_STORE, &["configure"], ());
    b.step("roundtrip", ROUNDTRIP, &["eso-store"], ());
    b.step("root-token", ROOT_TOKEN, &["roundtrip"], ());
    b.step("retire-sealed-secrets", RETIRE, &["roundtrip"], ());
    b.build()
}

// --- steps ---------------------------------------------------------------

/// OpenBao's namespace and port (the bp-openbao chart's).
const NAMESPACE: &str = "openbao";
const PORT: u16 = 8200;

/// OpenBao replica `replica` of this Sovereign's first cluster, as its pod
/// through the cluster's API server: a sealed pod fails its readiness
/// probe, so the Service cannot reach it.
async fn endpoint(cx: &StepCtx, replica: u32) -> StepResult<BaoEndpoint> {
    let kc = kubeconfig_for(cx, &first_location(cx)?).await?;
    BaoEndpoint::pod(&kc, NAMESPACE, &format!("openbao-{replica}"), PORT)
}

async fn bao_init(cx: &StepCtx) -> StepResult<BaoInitialized> {
    let custody = custody_of(cx)?;
    let (shares, threshold) = (custody.shares(), custody.openbao_threshold);
    let ep = endpoint(cx, 0).await?;
    let status = cx.env.bao.status(&ep).await?;
    if status.initialized {
        // Ours when its shares are in the store, whatever happened since
        // (the root token is gone once `root-token` ran): never re-init.
        if cx.secret_opt("openbao-share-0").await?.is_some() {
            return Ok(BaoInitialized {
                shares,
                threshold,
                escrow_sha256: Vec::new(),
                already_initialized: true,
            });
        }
        // An earlier attempt got OpenBao's answer but died before the shares
        // reached the store: they are lost. Nothing can have been written to
        // this OpenBao yet (every later step needs those shares), so its
        // storage is wiped and it is initialized again.
        cx.event("custody", json!({ "message": "OpenBao was initialized by an interrupted attempt whose shares never reached the store; wiping its empty storage and initializing again" })).await?;
        cx.env.bao.wipe(&ep).await?;
    }
    let init = cx.env.bao.init(&ep, shares, threshold).await?;
    let mut digests = Vec::new();
    let mut secrets = Vec::new();
    for (i, key) in init.keys.iter().enumerate() {
        // Encrypted to its custodian alone before anything else touches it:
        // no custodian can read another's share, so unsealing takes
        // `threshold` of them...
        let holder = custody.holder(i);
        let escrow = encrypt_to(std::slice::from_ref(&holder.recipient), key.expose().as_bytes())?;
        digests.push(hex::encode(<sha2::Sha256 as sha2::Digest>::digest(&escrow)));
        secrets
            .push((format!("openbao-share-{i}.escrow"), SecretString::new(hex::encode(&escrow))));
        // ...and sealed to the daemon so restarts can unseal.
        secrets.push((format!("openbao-share-{i}"), key.clone()));
    }
    secrets.push(("openbao-root-token".to_owned(), init.root_token.clone()));
    // One commit: either every share is recorded or none is.
    cx.put_secrets(&secrets).await?;
    let message = format!(
        "OpenBao initialized: {shares} shares, threshold {threshold}, each escrowed to its \
         custodian alone ({} custodians)",
        custody.custodians.len()
    );
    cx.event("custody", json!({ "message": message, "escrow_sha256": digests })).await?;
    Ok(BaoInitialized { shares, threshold, escrow_sha256: digests, already_initialized: false })
}

/// The cluster (and with it OpenBao's data) goes with the infra undo; this
/// forgets the shares and tokens of an OpenBao that will not exist any more.
async fn bao_init_undo(cx: &StepCtx) -> StepResult<()> {
    for i in 0..custody_of(cx)?.shares() {
        cx.delete_secret(&format!("openbao-share-{i}")).await?;
        cx.delete_secret(&format!("openbao-share-{i}.escrow")).await?;
    }
    cx.delete_secret("openbao-root-token").await?;
    cx.delete_secret("openbao-root-token.escrow").await
}

async fn bao_unseal(cx: &StepCtx) -> StepResult<Unsealed> {
    let ReplicaParams { replica } = cx.params()?;
    let threshold = custody_of(cx)?.openbao_threshold;
    let ep = endpoint(cx, replica).await?;
    let status = cx
        .wait_for(
            &format!("OpenBao replica {replica} to answer"),
            Duration::from_secs(600),
            || async { Ok(Some(cx.env.bao.status(&ep).await?)) },
        )
        .await?;
    if !status.sealed {
        return Ok(Unsealed { replica, sealed: false, shares_used: None });
    }
    for i in 0..threshold {
        let key = cx.secret(&format!("openbao-share-{i}")).await?;
        if !cx.env.bao.unseal(&ep, &key).await?.sealed {
            return Ok(Unsealed { replica, sealed: false, shares_used: Some(i + 1) });
        }
    }
    Err(StepError::adapter(
        System::Openbao,
        "unseal",
        Cause::Invalid,
        format!("replica {replica} still sealed after {threshold} shares"),
    ))
}

async fn bao_configure(cx: &StepCtx) -> StepResult<Configured> {
    let ep = endpoint(cx, 0).await?;
    let root = cx.secret("openbao-root-token").await?;
    let b = &cx.env.bao;
    b.write(
        &ep,
        &root,
        "sys/mounts/secret",
        json!({ "type": "kv", "options": { "version": "2" } }),
    )
    .await?;
    b.write(&ep, &root, "sys/auth/kubernetes", json!({ "type": "kubernetes" })).await?;
    b.write(
        &ep,
        &root,
        "auth/kubernetes/config",
        json!({ "kubernetes_host": "https://kubernetes.default.svc:443" }),
    )
    .await?;
    b.write(
        &ep,
        &root,
        "sys/policy/external-secrets",
        json!({ "policy": "path \"secret/data/*\" { capabilities = [\"read\"] }" }),
    )
    .await?;
    b.write(&ep, &root, "auth/kubernetes/role/external-secrets", json!({
        "bound_service_account_names": ["external-secrets"], "bound_service_account_namespaces": ["external-secrets-system"],
        "policies": ["external-secrets"], "ttl": "1h",
    })).await?;
    Ok(Configured {
        kv: "secret/".into(),
        auth: "kubernetes".into(),
        role: "external-secrets".into(),
    })
}

fn store_ref() -> ObjectRef {
    ObjectRef {
        api_version: "external-secrets.io/v1beta1".into(),
        kind: "ClusterSecretStore".into(),
        namespace: None,
        name: "openbao".into(),
    }
}

async fn eso_store(cx: &StepCtx) -> StepResult<SecretStore> {
    let kc = kubeconfig_for(cx, &first_location(cx)?).await?;
    let obj = json!({
        "apiVersion": "external-secrets.io/v1beta1", "kind": "ClusterSecretStore",
        "metadata": { "name": "openbao" },
        "spec": { "provider": { "vault": {
            "server": "http://openbao.openbao.svc.cluster.local:8200", "path": "secret", "version": "v2",
            "auth": { "kubernetes": { "mountPath": "kubernetes", "role": "external-secrets",
                "serviceAccountRef": { "name": "external-secrets", "namespace": "external-secrets-system" } } },
        } } },
    });
    cx.env.kube.apply(&kc, FIELD_MANAGER, &[obj]).await?;
    Ok(SecretStore { store: "openbao".into() })
}

async fn eso_store_undo(cx: &StepCtx) -> StepResult<()> {
    let Ok(kc) = kubeconfig_for(cx, &first_location(cx)?).await else { return Ok(()) };
    cx.env.kube.delete(&kc, &store_ref()).await
}

fn roundtrip_ref() -> ObjectRef {
    ObjectRef {
        api_version: "external-secrets.io/v1beta1".into(),
        kind: "ExternalSecret".into(),
        namespace: Some("catalyst-system".into()),
        name: "catalyst-roundtrip".into(),
    }
}

async fn roundtrip(cx: &StepCtx) -> StepResult<RoundTrip> {
    let ep = endpoint(cx, 0).await?;
    let root = cx.secret("openbao-root-token").await?;
    let nonce = hex::encode(rand::random::<[u8; 16]>());
    cx.env
        .bao
        .write(&ep, &root, "secret/data/catalyst/roundtrip", json!({ "data": { "nonce": nonce } }))
        .await?;
    let back = cx.env.bao.read(&ep, &root, "secret/data/catalyst/roundtrip").await?;
    if back.as_ref().and_then(|v| v.pointer("/data/data/nonce")).and_then(Value::as_str)
        != Some(nonce.as_str())
    {
        return Err(StepError::adapter(
            System::Openbao,
            "roundtrip",
            Cause::Invalid,
            "value read back differs from value written",
        ));
    }
    let kc = kubeconfig_for(cx, &first_location(cx)?).await?;
    let es = json!({
        "apiVersion": "external-secrets.io/v1beta1", "kind": "ExternalSecret",
        "metadata": { "name": "catalyst-roundtrip", "namespace": "catalyst-system" },
        "spec": { "secretStoreRef": { "kind": "ClusterSecretStore", "name": "openbao" }, "refreshInterval": "1m",
                  "target": { "name": "catalyst-roundtrip" },
                  "data": [{ "secretKey": "nonce", "remoteRef": { "key": "catalyst/roundtrip", "property": "nonce" } }] },
    });
    cx.env.kube.apply(&kc, FIELD_MANAGER, &[es]).await?;
    // TODO-design: read the synced Secret back and compare the nonce; the
    // sim Kubernetes has no ESO controller, so only the OpenBao side of the
    // round trip is checked here.
    Ok(RoundTrip {
        openbao_roundtrip: true,
        external_secret: "catalyst-system/catalyst-roundtrip".into(),
    })
}

async fn roundtrip_undo(cx: &StepCtx) -> StepResult<()> {
    let Ok(kc) = kubeconfig_for(cx, &first_location(cx)?).await else { return Ok(()) };
    cx.env.kube.delete(&kc, &roundtrip_ref()).await
}

async fn root_token(cx: &StepCtx) -> StepResult<RootTokenEscrowed> {
    let Some(root) = cx.secret_opt("openbao-root-token").await? else {
        return Ok(RootTokenEscrowed { escrowed: true, already: true });
    };
    // TODO-design: revoke the root token instead of escrowing it.
    let blob = encrypt_to(&custody_of(cx)?.recipients(), root.expose().as_bytes())?;
    cx.put_secret("openbao-root-token.escrow", &SecretString::new(hex::encode(&blob))).await?;
    // The daemon keeps no usable root token after hand-off.
    cx.delete_secret("openbao-root-token").await?;
    Ok(RootTokenEscrowed { escrowed: true, already: false })
}

async fn retire_sealed_secrets(cx: &StepCtx) -> StepResult<Retired> {
    let kc = kubeconfig_for(cx, &first_location(cx)?).await?;
    let r = ObjectRef {
        api_version: "helm.toolkit.fluxcd.io/v2".into(),
        kind: "HelmRelease".into(),
        namespace: Some("flux-system".into()),
        name: "bp-sealed-secrets".into(),
    };
    cx.env.kube.delete(&kc, &r).await?;
    Ok(Retired { retired: "bp-sealed-secrets".into() })
}

#[cfg(test)]
mod tests {
    use cz_engine::{ErrorClass, FaultPlan, JobOptions, RetryTarget, Verbs};
    use cz_state::JobStatus;

    use crate::jobs::provision_plan;
    use crate::testing::{SimRigExt, phase_tests, sample_request, sim_rig};

    phase_tests!(super::PHASE, sample_request("sec", 1, 0));

    /// Share `i` is encrypted to its custodian alone: the real `age` CLI
    /// decrypts it with that custodian's identity and with no other.
    #[tokio::test]
    async fn each_share_opens_for_its_custodian_only() {
        use age::secrecy::ExposeSecret as _;
        let dir = tempfile::tempdir().unwrap();
        let ids: Vec<age::x25519::Identity> =
            (0..3).map(|_| age::x25519::Identity::generate()).collect();
        let files: Vec<std::path::PathBuf> = ids
            .iter()
            .enumerate()
            .map(|(i, id)| {
                let f = dir.path().join(format!("id{i}.txt"));
                std::fs::write(&f, id.to_string().expose_secret()).unwrap();
                f
            })
            .collect();
        let mut req = sample_request("k-of-n", 1, 0);
        for (c, id) in req.custody.custodians.iter_mut().zip(&ids) {
            c.recipient = id.to_public().to_string();
        }
        req.custody.openbao_shares = Some(4);
        let rig = sim_rig().await;
        let mut plan = provision_plan(&req);
        let at = plan.phases.iter().position(|p| p.id == super::PHASE).unwrap();
        plan.phases.truncate(at + 1);
        let (sov, job) = rig.submit_plan(&req, &plan, JobOptions::default()).await;
        assert_eq!(rig.drive(job).await, JobStatus::Succeeded);
        let owner = sov.to_string();
        for share in 0..4 {
            let name = format!("openbao-share-{share}.escrow");
            let blob = rig.store.get_secret(&owner, &name).await.unwrap().unwrap();
            let ct = dir.path().join(format!("share{share}.age"));
            std::fs::write(&ct, hex::decode(blob.expose()).unwrap()).unwrap();
            let plain = rig.store.get_secret(&owner, &format!("openbao-share-{share}")).await;
            let plain = plain.unwrap().unwrap();
            for (c, id) in files.iter().enumerate() {
                let out = std::process::Command::new("age")
                    .args(["-d", "-i"])
                    .arg(id)
                    .arg(&ct)
                    .output()
                    .expect("the age CLI");
                if c == share % 3 {
                    assert!(out.status.success(), "share {share}, custodian {c}");
                    assert_eq!(out.stdout, plain.expose().as_bytes(), "share {share}");
                } else {
                    assert!(!out.status.success(), "custodian {c} opened share {share}");
                }
            }
        }
    }

    /// Re-running the phase after the root token was escrowed and revoked
    /// never re-initialises OpenBao (that would lose its data): `init`
    /// finds its shares, and the job stops for an operator at the first
    /// step that needs the root token.
    #[tokio::test]
    async fn a_phase_retry_after_the_root_token_never_reinitialises() {
        let rig = sim_rig().await;
        let req = sample_request("reinit", 1, 0);
        let mut faults = FaultPlan::default();
        faults.fail.insert("dns-commit/records".into(), ErrorClass::NeedsOperator);
        let options = JobOptions { faults, ..Default::default() };
        let (sov, job) = rig.submit_plan(&req, &provision_plan(&req), options).await;
        assert_eq!(rig.drive(job).await, JobStatus::Paused);
        let owner = sov.to_string();
        let share = rig.store.get_secret(&owner, "openbao-share-0").await.unwrap().unwrap();
        assert!(rig.store.get_secret(&owner, "openbao-root-token").await.unwrap().is_none());
        Verbs { store: &rig.store }
            .retry(job, RetryTarget::Phase(super::PHASE.into()), "alice")
            .await
            .unwrap();
        assert_eq!(rig.drive(job).await, JobStatus::Paused);
        let stop = rig.stop_reason(job).await;
        assert_eq!(stop["step"], "secrets-handoff/configure", "{stop}");
        assert_eq!(stop["error"]["kind"], "missing-secret", "{stop}");
        let again = rig.store.get_secret(&owner, "openbao-share-0").await.unwrap().unwrap();
        assert_eq!(again.expose(), share.expose(), "the shares are the first init's");
        let init: super::BaoInitialized =
            rig.store.node_states(job).await.unwrap()["secrets-handoff/init"]
                .output()
                .map(|o| serde_json::from_value(o.clone()).unwrap())
                .unwrap();
        assert!(init.already_initialized);
    }
}
