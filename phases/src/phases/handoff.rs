//! Phases 6 and 8: `secrets-handoff` (OpenBao + ESO) and `infra-handoff`
//! (Crossplane adopts the cloud objects; tofu state archived).
//!
//! OpenBao init is the one step whose side effect cannot be repeated: the
//! shares exist only in `sys/init`'s answer. So the step encrypts every share
//! to the operators' age recipients and stores them (sealed to the daemon for
//! unsealing after restarts) in one commit before it returns; a re-run that
//! finds OpenBao initialized and the shares in the store goes on; one that
//! finds it initialized *without* stored shares (a kill between the answer
//! and the commit) wipes the still-empty OpenBao and initializes it again.
//!
//! TODO(custody/hand-off issues): real OpenBao in-cluster endpoints (port
//! forward through the API), the ESO ExternalSecret round-trip through a real
//! cluster, provider-hcloud managed resources and a scoped cloud credential.

use std::time::Duration;

use cz_state::SecretString;
use serde_json::{Value, json};

use super::infra::{HANDED_OFF, workspace};
use super::{FIELD_MANAGER, action, cloud_token, cluster::kubeconfig_for, fqdn, no_undo};
use crate::adapters::ObjectRef;
use crate::plan::{PhaseBuilder, PhaseDef};
use crate::request::Region;
use crate::step::{Registry, StepCtx, StepResult};
use crate::{Cause, StepError, System};

const REPLICAS: u32 = 3;

pub fn register(r: &mut Registry) {
    r.register("bao.init", action!(bao_init, bao_init_undo));
    r.register("bao.unseal", action!(bao_unseal, no_undo));
    r.register("bao.configure", action!(bao_configure, no_undo));
    r.register("bao.eso-store", action!(eso_store, eso_store_undo));
    r.register("bao.roundtrip", action!(roundtrip, roundtrip_undo));
    r.register("bao.root-token", action!(root_token, no_undo));
    r.register("bao.retire-sealed-secrets", action!(retire_sealed_secrets, no_undo));
    r.register("handoff.credential", action!(credential, credential_undo));
    r.register("handoff.adopt", action!(adopt, adopt_undo));
    r.register("handoff.verify", action!(verify_adopted, no_undo));
    r.register("handoff.widen", action!(widen, widen_undo));
    r.register("handoff.archive", action!(archive, archive_undo));
}

pub fn secrets_phase() -> PhaseDef {
    let mut b = PhaseBuilder::new("secrets-handoff");
    b.step("init", "bao.init", &[], Value::Null);
    let mut unseals = Vec::new();
    for i in 0..REPLICAS {
        let n = format!("unseal-{i}");
        b.step(&n, "bao.unseal", &["init"], json!({ "replica": i }));
        unseals.push(n);
    }
    let u: Vec<&str> = unseals.iter().map(String::as_str).collect();
    b.step("configure", "bao.configure", &u, Value::Null);
    b.step("eso-store", "bao.eso-store", &["configure"], Value::Null);
    b.step("roundtrip", "bao.roundtrip", &["eso-store"], Value::Null);
    b.step("root-token", "bao.root-token", &["roundtrip"], Value::Null);
    b.step("retire-sealed-secrets", "bao.retire-sealed-secrets", &["roundtrip"], Value::Null);
    b.build()
}

pub fn infra_phase(regions: &[Region]) -> PhaseDef {
    let mut b = PhaseBuilder::new("infra-handoff");
    b.step("credential", "handoff.credential", &[], json!({ "location": regions[0].location }));
    for r in regions {
        let l = &r.location;
        let p = json!({ "location": l });
        b.step(&format!("adopt-{l}"), "handoff.adopt", &["credential"], p.clone());
        b.step(&format!("verify-{l}"), "handoff.verify", &[&format!("adopt-{l}")], p.clone());
        b.step(&format!("widen-{l}"), "handoff.widen", &[&format!("verify-{l}")], p.clone());
        b.step(&format!("archive-{l}"), "handoff.archive", &[&format!("widen-{l}")], p);
    }
    b.build()
}

// === OpenBao ===

/// OpenBao replica `replica` of this Sovereign's first cluster. The
/// cluster is named by its first server's cloud id, so a rebuilt cluster is
/// a new OpenBao (its data lives on the servers).
///
/// TODO(hand-off issue): reach the in-cluster service through the API
/// server's service proxy with the stored kubeconfig.
fn endpoint(cx: &StepCtx, replica: u32) -> StepResult<String> {
    let loc = first_location(cx)?;
    let out: super::infra::Outputs = cx.lookup(&format!("infra/outputs-{loc}"))?;
    let first = out
        .servers
        .iter()
        .find(|s| s.role == "control-plane")
        .ok_or_else(|| StepError::MissingOutput { name: "control plane".into() })?;
    Ok(format!("http://openbao-{replica}.openbao.{}.server-{}:8200", fqdn(cx)?, first.id))
}

fn first_location(cx: &StepCtx) -> StepResult<String> {
    super::regions(cx)?
        .first()
        .map(|r| r.location.clone())
        .ok_or_else(|| StepError::internal("no region"))
}

async fn bao_init(cx: &StepCtx) -> StepResult<Value> {
    let shares: u8 = cx.request_field("/custody/openbao_shares")?;
    let threshold: u8 = cx.request_field("/custody/openbao_threshold")?;
    let recipients: Vec<String> = cx.request_field("/custody/age_recipients")?;
    let ep = endpoint(cx, 0)?;
    let status = cx.backend.bao.status(&ep).await?;
    if status.initialized {
        if cx.secret_opt("openbao-share-0").await?.is_some()
            && cx.secret_opt("openbao-root-token").await?.is_some()
        {
            return Ok(
                json!({ "shares": shares, "threshold": threshold, "already_initialized": true }),
            );
        }
        // An earlier attempt got OpenBao's answer but died before the shares
        // reached the store: they are lost. Nothing can have been written to
        // this OpenBao yet (every later step needs those shares), so its
        // storage is wiped and it is initialized again.
        cx.event("custody", json!({ "message": "OpenBao was initialized by an interrupted attempt whose shares never reached the store; wiping its empty storage and initializing again" })).await?;
        cx.backend.bao.wipe(&ep).await?;
    }
    let init = cx.backend.bao.init(&ep, shares, threshold).await?;
    let mut digests = Vec::new();
    let mut secrets = Vec::new();
    for (i, key) in init.keys.iter().enumerate() {
        // Encrypted to the operators before anything else touches it...
        let escrow = cz_state::secrets::encrypt_to_recipients(&recipients, key.expose().as_bytes())
            .map_err(|e| StepError::InvalidInput {
                path: "custody.age_recipients".into(),
                message: e.to_string(),
            })?;
        digests.push(hex::encode(<sha2::Sha256 as sha2::Digest>::digest(&escrow)));
        secrets
            .push((format!("openbao-share-{i}.escrow"), SecretString::new(hex::encode(&escrow))));
        // ...and sealed to the daemon so restarts can unseal.
        secrets.push((format!("openbao-share-{i}"), key.clone()));
    }
    secrets.push(("openbao-root-token".to_owned(), init.root_token.clone()));
    // One commit: either every share is recorded or none is.
    cx.put_secrets(&secrets).await?;
    cx.event("custody", json!({ "message": format!("OpenBao initialized: {shares} shares, threshold {threshold}, each escrowed to {} age recipient(s)", recipients.len()), "escrow_sha256": digests })).await?;
    Ok(
        json!({ "shares": shares, "threshold": threshold, "escrow_sha256": digests, "already_initialized": false }),
    )
}

/// The cluster (and with it OpenBao's data) goes with the infra undo; this
/// forgets the shares and tokens of an OpenBao that will not exist any more.
async fn bao_init_undo(cx: &StepCtx) -> StepResult<()> {
    let shares: u8 = cx.request_field("/custody/openbao_shares")?;
    for i in 0..shares {
        cx.delete_secret(&format!("openbao-share-{i}")).await?;
        cx.delete_secret(&format!("openbao-share-{i}.escrow")).await?;
    }
    cx.delete_secret("openbao-root-token").await?;
    cx.delete_secret("openbao-root-token.escrow").await
}

async fn bao_unseal(cx: &StepCtx) -> StepResult<Value> {
    let replica: u32 = cx.param("replica")?;
    let threshold: u8 = cx.request_field("/custody/openbao_threshold")?;
    let ep = endpoint(cx, replica)?;
    let status = cx
        .wait_for(
            &format!("OpenBao replica {replica} to answer"),
            Duration::from_secs(600),
            || async { Ok(Some(cx.backend.bao.status(&ep).await?)) },
        )
        .await?;
    if !status.sealed {
        return Ok(json!({ "replica": replica, "sealed": false }));
    }
    for i in 0..threshold {
        let key = cx.secret(&format!("openbao-share-{i}")).await?;
        if !cx.backend.bao.unseal(&ep, &key).await?.sealed {
            return Ok(json!({ "replica": replica, "sealed": false, "shares_used": i + 1 }));
        }
    }
    Err(StepError::adapter(
        System::Openbao,
        "unseal",
        Cause::Invalid,
        format!("replica {replica} still sealed after {threshold} shares"),
    ))
}

async fn bao_configure(cx: &StepCtx) -> StepResult<Value> {
    let ep = endpoint(cx, 0)?;
    let root = cx.secret("openbao-root-token").await?;
    let b = &cx.backend.bao;
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
    Ok(json!({ "kv": "secret/", "auth": "kubernetes", "role": "external-secrets" }))
}

fn store_ref() -> ObjectRef {
    ObjectRef {
        api_version: "external-secrets.io/v1beta1".into(),
        kind: "ClusterSecretStore".into(),
        namespace: None,
        name: "openbao".into(),
    }
}

async fn eso_store(cx: &StepCtx) -> StepResult<Value> {
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
    cx.backend.kube.apply(&kc, FIELD_MANAGER, &[obj]).await?;
    Ok(json!({ "store": "openbao" }))
}

async fn eso_store_undo(cx: &StepCtx) -> StepResult<()> {
    let Ok(kc) = kubeconfig_for(cx, &first_location(cx)?).await else { return Ok(()) };
    cx.backend.kube.delete(&kc, &store_ref()).await
}

fn roundtrip_ref() -> ObjectRef {
    ObjectRef {
        api_version: "external-secrets.io/v1beta1".into(),
        kind: "ExternalSecret".into(),
        namespace: Some("catalyst-system".into()),
        name: "catalyst-roundtrip".into(),
    }
}

async fn roundtrip(cx: &StepCtx) -> StepResult<Value> {
    let ep = endpoint(cx, 0)?;
    let root = cx.secret("openbao-root-token").await?;
    let nonce = hex::encode(rand::random::<[u8; 16]>());
    cx.backend
        .bao
        .write(&ep, &root, "secret/data/catalyst/roundtrip", json!({ "data": { "nonce": nonce } }))
        .await?;
    let back = cx.backend.bao.read(&ep, &root, "secret/data/catalyst/roundtrip").await?;
    if back.as_ref().and_then(|v| v.pointer("/data/nonce")).and_then(Value::as_str)
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
    cx.backend.kube.apply(&kc, FIELD_MANAGER, &[es]).await?;
    // TODO(hand-off issue): read the synced Secret and compare the nonce;
    // the sim Kubernetes has no ESO controller, so only the OpenBao side of
    // the round trip is checked here.
    Ok(
        json!({ "openbao_roundtrip": true, "external_secret": "catalyst-system/catalyst-roundtrip" }),
    )
}

async fn roundtrip_undo(cx: &StepCtx) -> StepResult<()> {
    let Ok(kc) = kubeconfig_for(cx, &first_location(cx)?).await else { return Ok(()) };
    cx.backend.kube.delete(&kc, &roundtrip_ref()).await
}

async fn root_token(cx: &StepCtx) -> StepResult<Value> {
    let Some(root) = cx.secret_opt("openbao-root-token").await? else {
        return Ok(json!({ "escrowed": true, "already": true }));
    };
    let recipients: Vec<String> = cx.request_field("/custody/age_recipients")?;
    let blob = cz_state::secrets::encrypt_to_recipients(&recipients, root.expose().as_bytes())
        .map_err(|e| StepError::InvalidInput {
            path: "custody.age_recipients".into(),
            message: e.to_string(),
        })?;
    cx.put_secret("openbao-root-token.escrow", &SecretString::new(hex::encode(&blob))).await?;
    // The daemon keeps no usable root token after hand-off.
    cx.delete_secret("openbao-root-token").await?;
    Ok(json!({ "escrowed": true, "already": false }))
}

async fn retire_sealed_secrets(cx: &StepCtx) -> StepResult<Value> {
    let kc = kubeconfig_for(cx, &first_location(cx)?).await?;
    let r = ObjectRef {
        api_version: "helm.toolkit.fluxcd.io/v2".into(),
        kind: "HelmRelease".into(),
        namespace: Some("flux-system".into()),
        name: "bp-sealed-secrets".into(),
    };
    cx.backend.kube.delete(&kc, &r).await?;
    Ok(json!({ "retired": "bp-sealed-secrets" }))
}

// === Crossplane adoption ===

fn credential_ref() -> ObjectRef {
    ObjectRef {
        api_version: "v1".into(),
        kind: "Secret".into(),
        namespace: Some("crossplane-system".into()),
        name: "hcloud-credentials".into(),
    }
}

async fn credential(cx: &StepCtx) -> StepResult<Value> {
    let kc = kubeconfig_for(cx, &cx.param::<String>("location")?).await?;
    // TODO(hand-off issue): a token scoped to this Sovereign's project.
    let token = cloud_token(cx).await?;
    let obj = json!({ "apiVersion": "v1", "kind": "Secret",
        "metadata": { "name": "hcloud-credentials", "namespace": "crossplane-system" },
        "stringData": { "token": token.expose() } });
    cx.backend.kube.apply(&kc, FIELD_MANAGER, &[obj]).await?;
    Ok(json!({ "secret": "crossplane-system/hcloud-credentials" }))
}

async fn credential_undo(cx: &StepCtx) -> StepResult<()> {
    let Ok(kc) = kubeconfig_for(cx, &cx.param::<String>("location")?).await else { return Ok(()) };
    cx.backend.kube.delete(&kc, &credential_ref()).await
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
    let ws = workspace(cx, &cx.param::<String>("location")?);
    let state = cx.backend.tofu.state(&ws).await?;
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

async fn adopt(cx: &StepCtx) -> StepResult<Value> {
    let kc = kubeconfig_for(cx, &cx.param::<String>("location")?).await?;
    let objs = managed_resources(cx, &["Observe"], "Orphan").await?;
    cx.backend.kube.apply(&kc, FIELD_MANAGER, &objs).await?;
    Ok(json!({ "observed": objs.len() }))
}

async fn adopt_undo(cx: &StepCtx) -> StepResult<()> {
    let Ok(kc) = kubeconfig_for(cx, &cx.param::<String>("location")?).await else { return Ok(()) };
    // deletionPolicy Orphan: removing the managed resources leaves the cloud
    // objects for the infra undo.
    for o in managed_resources(cx, &["Observe"], "Orphan").await? {
        if let Some(r) = ObjectRef::of(&o) {
            cx.backend.kube.delete(&kc, &r).await?;
        }
    }
    Ok(())
}

async fn verify_adopted(cx: &StepCtx) -> StepResult<Value> {
    let kc = kubeconfig_for(cx, &cx.param::<String>("location")?).await?;
    let objs = managed_resources(cx, &["Observe"], "Orphan").await?;
    let n = objs.len();
    cx.wait_for(
        &format!("{n} Crossplane managed resources to be Synced and Ready"),
        Duration::from_secs(900),
        || async {
            for o in &objs {
                let Some(r) = ObjectRef::of(o) else { continue };
                let Some(live) = cx.backend.kube.get(&kc, &r).await? else { return Ok(None) };
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
    Ok(json!({ "synced": n }))
}

async fn widen(cx: &StepCtx) -> StepResult<Value> {
    let kc = kubeconfig_for(cx, &cx.param::<String>("location")?).await?;
    let objs = managed_resources(cx, &["*"], "Delete").await?;
    cx.backend.kube.apply(&kc, FIELD_MANAGER, &objs).await?;
    Ok(json!({ "managed": objs.len() }))
}

async fn widen_undo(cx: &StepCtx) -> StepResult<()> {
    let Ok(kc) = kubeconfig_for(cx, &cx.param::<String>("location")?).await else { return Ok(()) };
    let objs = managed_resources(cx, &["Observe"], "Orphan").await?;
    cx.backend.kube.apply(&kc, FIELD_MANAGER, &objs).await
}

async fn archive(cx: &StepCtx) -> StepResult<Value> {
    let loc: String = cx.param("location")?;
    let ws = workspace(cx, &loc);
    let state = cx.backend.tofu.state(&ws).await?;
    let body = serde_json::to_string(&state).expect("serializable");
    cx.put_secret(&format!("tofu-state-archive-{loc}"), &SecretString::new(body)).await?;
    tokio::fs::write(
        ws.dir.join(HANDED_OFF),
        format!("handed off to Crossplane by job {}\n", cx.job_id),
    )
    .await
    .map_err(|e| StepError::adapter(System::Tofu, "archive", Cause::Unavailable, e.to_string()))?;
    Ok(json!({ "archived": state.len(), "secret": format!("tofu-state-archive-{loc}") }))
}

async fn archive_undo(cx: &StepCtx) -> StepResult<()> {
    let loc: String = cx.param("location")?;
    match tokio::fs::remove_file(workspace(cx, &loc).dir.join(HANDED_OFF)).await {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => {
            Err(StepError::adapter(System::Tofu, "unarchive", Cause::Unavailable, e.to_string()))
        }
    }
}
