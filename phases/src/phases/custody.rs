//! Phase 4, `custody`: the sealed-secrets key, generated here and escrowed.
//!
//! The key is created by the daemon (bring-your-own-key), installed as the
//! active sealing key before the controller starts, and its private half is
//! escrowed encrypted to the operators' age recipients — so Git-held
//! SealedSecrets survive a cluster rebuild.
//!
//! TODO(custody issue): generate a real RSA-4096 key pair and self-signed
//! certificate in the sealed-secrets format (`../upstream/sealed-secrets/`,
//! test vectors); until then the key material is 32 random bytes, and only
//! the escrow (real age encryption to the operators) and the install flow are
//! the real ones.

use cz_state::SecretString;
use serde_json::{Value, json};

use super::{action, cluster::kubeconfig_for};
use crate::adapters::ObjectRef;
use crate::plan::{PhaseBuilder, PhaseDef};
use crate::step::{Registry, StepCtx, StepResult};
use crate::{StepError, phases::FIELD_MANAGER};

pub const PHASE: &str = "custody";
const KEY_SECRET: &str = "sealed-secrets-key";
const ESCROW_SECRET: &str = "sealed-secrets-key.escrow";

pub fn register(r: &mut Registry) {
    r.register("custody.sealing-key", action!(sealing_key, sealing_key_undo));
    r.register("custody.escrow", action!(escrow, escrow_undo));
    r.register("custody.install", action!(install, install_undo));
}

pub fn phase() -> PhaseDef {
    let mut b = PhaseBuilder::new(PHASE);
    b.step("sealing-key", "custody.sealing-key", &[], Value::Null);
    b.step("escrow", "custody.escrow", &["sealing-key"], Value::Null);
    b.step("install", "custody.install", &["sealing-key"], Value::Null);
    b.build()
}

fn first_location(cx: &StepCtx) -> StepResult<String> {
    super::regions(cx)?
        .first()
        .map(|r| r.location.clone())
        .ok_or_else(|| StepError::internal("no region"))
}

async fn sealing_key(cx: &StepCtx) -> StepResult<Value> {
    // Generated once: a re-run keeps the stored key.
    if cx.secret_opt(KEY_SECRET).await?.is_none() {
        let bytes: [u8; 32] = rand::random();
        cx.put_secret(KEY_SECRET, &SecretString::new(hex::encode(bytes))).await?;
    }
    Ok(json!({ "secret": KEY_SECRET }))
}

async fn sealing_key_undo(cx: &StepCtx) -> StepResult<()> {
    cx.delete_secret(KEY_SECRET).await
}

async fn escrow(cx: &StepCtx) -> StepResult<Value> {
    let recipients: Vec<String> = cx.request_field("/custody/age_recipients")?;
    let key = cx.secret(KEY_SECRET).await?;
    let blob = cz_state::secrets::encrypt_to_recipients(&recipients, key.expose().as_bytes())
        .map_err(|e| StepError::InvalidInput {
            path: "custody.age_recipients".into(),
            message: e.to_string(),
        })?;
    let digest = hex::encode(<sha2::Sha256 as sha2::Digest>::digest(&blob));
    // The blob is ciphertext to the operators; it is stored (sealed again
    // to the daemon) so it can be handed out through the API later.
    cx.put_secret(ESCROW_SECRET, &SecretString::new(hex::encode(&blob))).await?;
    Ok(json!({ "recipients": recipients.len(), "sha256": digest }))
}

async fn escrow_undo(cx: &StepCtx) -> StepResult<()> {
    cx.delete_secret(ESCROW_SECRET).await
}

fn key_ref() -> ObjectRef {
    ObjectRef {
        api_version: "v1".into(),
        kind: "Secret".into(),
        namespace: Some("kube-system".into()),
        name: "sealed-secrets-key".into(),
    }
}

async fn install(cx: &StepCtx) -> StepResult<Value> {
    let kc = kubeconfig_for(cx, &first_location(cx)?).await?;
    let key = cx.secret(KEY_SECRET).await?;
    let obj = json!({
        "apiVersion": "v1", "kind": "Secret",
        "metadata": { "name": "sealed-secrets-key", "namespace": "kube-system",
                      "labels": { "sealedsecrets.bitnami.com/sealed-secrets-key": "active" } },
        "type": "kubernetes.io/tls",
        "stringData": { "tls.key": key.expose(), "tls.crt": "" },
    });
    cx.backend.kube.apply(&kc, FIELD_MANAGER, &[obj]).await?;
    Ok(json!({ "secret": "kube-system/sealed-secrets-key" }))
}

async fn install_undo(cx: &StepCtx) -> StepResult<()> {
    let Ok(kc) = kubeconfig_for(cx, &first_location(cx)?).await else { return Ok(()) };
    cx.backend.kube.delete(&kc, &key_ref()).await
}
