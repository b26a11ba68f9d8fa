//! Phase 4, `custody`: the sealed-secrets key, generated here and escrowed.
//!
//! The key is created by the daemon (bring-your-own-key), installed as the
//! active sealing key before the controller starts, and its private half is
//! escrowed encrypted to the operators' age recipients, so Git-held
//! SealedSecrets survive a cluster rebuild.
//!
//! 1. `sealing-key` (undo: forget it): the key, made once, held
//!    age-encrypted in the store;
//! 2. `escrow` (undo: forget the blob): the key encrypted to the request's
//!    age recipients;
//! 3. `install` (undo: delete the Secret): the key as the active sealing
//!    key in `kube-system`.
//!
//! Not built yet, and a placeholder until it is: the key material is 32
//! random bytes, not an RSA-4096 key pair with its self-signed certificate
//! in the sealed-secrets format, and the escrow is one blob to every
//! recipient. The escrow's age encryption and the install flow are real.

use cz_adapters::ObjectRef;
use cz_adapters::labels::FIELD_MANAGER;
use cz_engine::{ActionId, PhaseBuilder, PhaseDef, StepError, StepResult, action};
use cz_state::SecretString;
use serde::{Deserialize, Serialize};
use serde_json::json;

use crate::cluster::kubeconfig_for;
use crate::common::{SecretRef, first_location, job_request};
use crate::{Registry, StepCtx};

pub const PHASE: &str = "custody";
const KEY_SECRET: &str = "sealed-secrets-key";
const ESCROW_SECRET: &str = "sealed-secrets-key.escrow";

// --- outputs -------------------------------------------------------------

/// `escrow`'s output.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Escrowed {
    pub recipients: usize,
    /// SHA-256 of the escrow blob.
    pub sha256: String,
}

// --- actions and the DAG -------------------------------------------------

const SEALING_KEY: ActionId<()> = ActionId::new("custody.sealing-key");
const ESCROW: ActionId<()> = ActionId::new("custody.escrow");
const INSTALL: ActionId<()> = ActionId::new("custody.install");

pub fn register(r: &mut Registry) {
    r.register(SEALING_KEY, action!(sealing_key, sealing_key_undo));
    r.register(ESCROW, action!(escrow, escrow_undo));
    r.register(INSTALL, action!(install, install_undo));
}

pub fn phase() -> PhaseDef {
    let mut b = PhaseBuilder::new(PHASE);
    b.step("sealing-key", SEALING_KEY, &[], ());
    b.step("escrow", ESCROW, &["sealing-key"], ());
    b.step("install", INSTALL, &["sealing-key"], ());
    b.build()
}

// --- steps ---------------------------------------------------------------

async fn sealing_key(cx: &StepCtx) -> StepResult<SecretRef> {
    // Generated once: a re-run keeps the stored key.
    if cx.secret_opt(KEY_SECRET).await?.is_none() {
        let bytes: [u8; 32] = rand::random();
        cx.put_secret(KEY_SECRET, &SecretString::new(hex::encode(bytes))).await?;
    }
    Ok(SecretRef::new(KEY_SECRET))
}

async fn sealing_key_undo(cx: &StepCtx) -> StepResult<()> {
    cx.delete_secret(KEY_SECRET).await
}

/// The provision request's custody block (custody runs in provisions only).
pub(crate) fn custody_of(cx: &StepCtx) -> StepResult<crate::request::Custody> {
    match job_request(cx)?.provision() {
        Some(p) => Ok(p.custody.clone()),
        None => Err(StepError::internal("custody steps run in provision jobs only")),
    }
}

/// `plaintext` encrypted to every recipient of `recipients` (the request
/// validated them; a failure here is the store's crypto refusing).
pub(crate) fn encrypt_to(recipients: &[String], plaintext: &[u8]) -> StepResult<Vec<u8>> {
    cz_state::secrets::encrypt_to_recipients(recipients, plaintext).map_err(|e| {
        StepError::InvalidInput { path: "custody.custodians".into(), message: e.to_string() }
    })
}

async fn escrow(cx: &StepCtx) -> StepResult<Escrowed> {
    // TODO-design: escrow the key k of n, as OpenBao's shares are; today
    // every custodian can decrypt this one blob alone.
    let recipients = custody_of(cx)?.recipients();
    let key = cx.secret(KEY_SECRET).await?;
    let blob = encrypt_to(&recipients, key.expose().as_bytes())?;
    let digest = hex::encode(<sha2::Sha256 as sha2::Digest>::digest(&blob));
    // The blob is ciphertext to the operators; it is stored (sealed again
    // to the daemon) so it can be handed out through the API later.
    cx.put_secret(ESCROW_SECRET, &SecretString::new(hex::encode(&blob))).await?;
    Ok(Escrowed { recipients: recipients.len(), sha256: digest })
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

async fn install(cx: &StepCtx) -> StepResult<SecretRef> {
    let kc = kubeconfig_for(cx, &first_location(cx)?).await?;
    let key = cx.secret(KEY_SECRET).await?;
    let obj = json!({
        "apiVersion": "v1", "kind": "Secret",
        "metadata": { "name": "sealed-secrets-key", "namespace": "kube-system",
                      "labels": { "sealedsecrets.bitnami.com/sealed-secrets-key": "active" } },
        "type": "kubernetes.io/tls",
        "stringData": { "tls.key": key.expose(), "tls.crt": "" },
    });
    cx.env.kube.apply(&kc, FIELD_MANAGER, &[obj]).await?;
    Ok(SecretRef::new("kube-system/sealed-secrets-key"))
}

async fn install_undo(cx: &StepCtx) -> StepResult<()> {
    let Ok(kc) = kubeconfig_for(cx, &first_location(cx)?).await else { return Ok(()) };
    cx.env.kube.delete(&kc, &key_ref()).await
}

#[cfg(test)]
mod tests {
    use crate::testing::{phase_tests, sample_request};

    phase_tests!(super::PHASE, sample_request("cus", 1, 0));
}
