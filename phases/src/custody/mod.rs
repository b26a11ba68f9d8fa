//! Phase 4, `custody`: the keys the cluster needs before the kit starts,
//! made here and escrowed to the custodians, never kept by the daemon.
//!
//! 1. `sealing-key` (undo: delete the Secret, forget the escrow): the
//!    sealed-secrets controller's key pair, RSA-4096 with its self-signed
//!    certificate ([`cz_adapters::sealed_secrets`]), installed as the
//!    active sealing key (`kube-system/sealed-secrets-key`, labelled
//!    `sealedsecrets.bitnami.com/sealed-secrets-key=active`) before the
//!    kit starts the controller, so Git-held SealedSecrets survive a
//!    rebuild. The private key is split k of n and dealt to the custodians.
//! 2. `static-seal-key` (only with `custody.seal = static`; undo: delete
//!    the Secret, forget the escrow): OpenBao's 32-byte static-seal key, as
//!    the Secret `openbao/openbao-static-seal` that bp-openbao mounts,
//!    split and dealt the same way.
//! 3. `admin-kubeconfig` (undo: forget the escrow): the cluster-admin
//!    kubeconfig, one copy per custodian, so custodians can reach the
//!    OpenBao pods (`catalyst-zero unseal`) without the daemon.
//!
//! Each key is generated, escrowed (one commit) and then installed, in one
//! step, with nothing left in the daemon's store. The sealed-secrets key,
//! RSA-4096 and most of a second of a core, is the exception in time only:
//! `infra` starts it in memory while the job waits on the cloud, and
//! `sealing-key` takes it from there (see [`AHEAD`]). A re-run finds the
//! Secret in the cluster and the escrow holding the same fingerprint, and
//! does nothing. A kill between the escrow commit and the install leaves an
//! escrow and no Secret: nothing can have used that key yet (it never
//! reached the cluster), so a new one is made and replaces it. A Secret in
//! the cluster whose key is not the escrowed one is an operator's call
//! (`needs-operator`): replacing it could orphan what was sealed to it.

pub mod escrow;

use base64::Engine as _;
use cz_adapters::ObjectRef;
use cz_adapters::labels::FIELD_MANAGER;
use cz_adapters::sealed_secrets::SealingKey;
use cz_engine::{ActionId, PhaseBuilder, PhaseDef, StepError, StepResult, action};
use cz_state::SecretString;
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

use self::escrow::{ADMIN_KUBECONFIG, SEALED_SECRETS_KEY, STATIC_SEAL_KEY, sha256_hex};
use crate::cluster::kubeconfig_for;
use crate::common::{first_location, job_request, precondition};
use crate::request::Seal;
use crate::{Registry, StepCtx};

pub const PHASE: &str = "custody";

/// Where the sealed-secrets controller finds its key.
const KEY_NAMESPACE: &str = "kube-system";
const KEY_SECRET: &str = "sealed-secrets-key";
/// Where bp-openbao finds its static-seal key.
pub const STATIC_SEAL_NAMESPACE: &str = "openbao";
pub const STATIC_SEAL_SECRET: &str = "openbao-static-seal";

// --- outputs -------------------------------------------------------------

/// `sealing-key`'s and `static-seal-key`'s output.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct KeyEscrowed {
    /// The Secret it is installed as (`namespace/name`).
    pub secret: String,
    /// SHA-256 of the certificate (DER) for the sealed-secrets key, of the
    /// key for the static seal.
    pub fingerprint: String,
    /// `threshold` of `parts` custodians' parts recover it.
    pub threshold: u8,
    pub parts: u8,
    /// False on a re-run that found it installed and escrowed.
    pub generated: bool,
}

/// `admin-kubeconfig`'s output.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct KubeconfigEscrowed {
    pub copies: usize,
    pub fingerprint: String,
}

// --- actions and the DAG -------------------------------------------------

const SEALING_KEY: ActionId<()> = ActionId::new("custody.sealing-key");
const STATIC_KEY: ActionId<()> = ActionId::new("custody.static-seal-key");
const ADMIN: ActionId<()> = ActionId::new("custody.admin-kubeconfig");

pub fn register(r: &mut Registry) {
    r.register(SEALING_KEY, action!(sealing_key, sealing_key_undo));
    r.register(STATIC_KEY, action!(static_seal_key, static_seal_key_undo));
    r.register(ADMIN, action!(admin_kubeconfig, admin_kubeconfig_undo));
}

pub fn phase(seal: Seal) -> PhaseDef {
    let mut b = PhaseBuilder::new(PHASE);
    b.step("sealing-key", SEALING_KEY, &[], ());
    if seal == Seal::Static {
        b.step("static-seal-key", STATIC_KEY, &[], ());
    }
    b.step("admin-kubeconfig", ADMIN, &[], ());
    b.build()
}

// --- steps ---------------------------------------------------------------

/// The Sovereign's custody block: the provision's, as the job carries it
/// (an add-region job's copy of it).
pub(crate) fn custody_of(cx: &StepCtx) -> StepResult<crate::request::Custody> {
    job_request(cx)?.custody().cloned().ok_or_else(|| {
        precondition(
            "this job's stored request does not carry the Sovereign's custodians",
            "It was stored by an older daemon: submit the add-region job again.",
        )
    })
}

async fn kubeconfig(cx: &StepCtx) -> StepResult<SecretString> {
    kubeconfig_for(cx, &first_location(cx)?).await
}

pub(crate) fn secret_ref(namespace: &str, name: &str) -> ObjectRef {
    ObjectRef {
        api_version: "v1".into(),
        kind: "Secret".into(),
        namespace: Some(namespace.into()),
        name: name.into(),
    }
}

/// `data[key]` of a Secret as read back, decoded.
pub(crate) fn secret_data(secret: &Value, key: &str) -> Option<Vec<u8>> {
    let v = secret.get("data")?.get(key)?.as_str()?;
    base64::engine::general_purpose::STANDARD.decode(v.trim()).ok()
}

pub(crate) fn b64(bytes: &[u8]) -> String {
    base64::engine::general_purpose::STANDARD.encode(bytes)
}

/// The DER of the first PEM block of `pem`.
fn pem_der(pem: &str) -> Option<Vec<u8>> {
    let body: String = pem
        .lines()
        .skip_while(|l| !l.starts_with("-----BEGIN"))
        .skip(1)
        .take_while(|l| !l.starts_with("-----END"))
        .collect();
    base64::engine::general_purpose::STANDARD.decode(body).ok()
}

/// SHA-256 of a PEM certificate's DER (what `openssl x509 -fingerprint
/// -sha256` prints, without the colons).
pub fn certificate_fingerprint(pem: &str) -> Option<String> {
    pem_der(pem).map(|der| sha256_hex(&der))
}

/// What a key step finds: the Secret in the cluster with the fingerprint
/// of the key it holds, and whether the escrow holds the same.
enum Found {
    /// Installed and escrowed: nothing to do.
    Done(String),
    /// No Secret yet: make (or remake) the key.
    Absent,
}

async fn found(
    cx: &StepCtx,
    kc: &SecretString,
    r: &ObjectRef,
    kind: &str,
    fingerprint_of: impl Fn(&Value) -> Option<String>,
) -> StepResult<Found> {
    let Some(secret) = cx.env.kube.get(kc, r).await? else { return Ok(Found::Absent) };
    let escrowed = cx.escrow(kind).await?;
    match fingerprint_of(&secret) {
        Some(fp) if escrow::holds(&escrowed, &fp) => Ok(Found::Done(fp)),
        fp => Err(precondition(
            format!(
                "the Secret {}/{} is in the cluster, but its key ({}) is not the one escrowed \
                 to the custodians ({})",
                r.namespace.as_deref().unwrap_or_default(),
                r.name,
                fp.map_or("unreadable".to_owned(), |f| format!("sha256 {f}")),
                escrowed.first().and_then(|i| i.fingerprint.clone()).unwrap_or("none".into())
            ),
            format!(
                "Something else installed it. If anything was sealed to it, keep it and have \
                 it escrowed by hand; otherwise delete the Secret and `retry JOB --step \
                 {PHASE}/...` to make and escrow a new key (runbooks/needs-operator-precondition.md)."
            ),
        )),
    }
}

pub(crate) fn labels() -> Value {
    json!({ "app.kubernetes.io/managed-by": "catalyst-zero" })
}

/// The annotation a key Secret carries its fingerprint in (public: the
/// certificate's, or a hash of a random 32-byte key), so the check reads
/// no key material.
pub(crate) const FINGERPRINT: &str = "catalyst.openova.io/fingerprint-sha256";

pub(crate) fn annotated(secret: &Value) -> Option<String> {
    secret
        .pointer(&format!("/metadata/annotations/{}", FINGERPRINT.replace('/', "~1")))
        .and_then(Value::as_str)
        .map(str::to_owned)
}

/// A new sealed-secrets key. RSA-4096 generation takes most of a second
/// of a core: it runs off the async workers (they serve the API, the event
/// streams, the leases and every other job's steps), at most one per core
/// at a time, so 200 jobs reaching custody at once queue for the CPU
/// instead of stalling the daemon.
async fn generate_sealing_key() -> StepResult<SealingKey> {
    static GATE: std::sync::LazyLock<tokio::sync::Semaphore> = std::sync::LazyLock::new(|| {
        tokio::sync::Semaphore::new(std::thread::available_parallelism().map_or(1, |n| n.get()))
    });
    let _turn = GATE.acquire().await.expect("the gate is never closed");
    KEYS_MADE.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    tokio::task::spawn_blocking(|| SealingKey::generate(""))
        .await
        .map_err(|e| StepError::internal(format!("the key generation task: {e}")))?
        .map_err(|e| StepError::internal(format!("generating the sealed-secrets key: {e}")))
}

/// Sealing keys made ahead of their step, by job, in memory only.
///
/// A key costs most of a second of a core, and `sealing-key` used to make
/// it on the job's critical path: 200 jobs reaching custody together
/// queued about a minute for the CPU, each of them waiting. `infra` now
/// starts the key ([`make_sealing_key_ahead`]) as the job begins waiting
/// on the cloud, and `sealing-key` takes it ([`take_sealing_key`]).
///
/// Nothing of it is stored: after a restart, or a retry in another
/// process, the map is empty and `sealing-key` makes its key as before.
/// The key reaches the store only as the custodians' escrow, in that step,
/// so the step's idempotence and undo are unchanged. A key its job never
/// took (the job failed or was cancelled before custody) is dropped after
/// [`AHEAD_KEPT`].
static AHEAD: std::sync::LazyLock<
    std::sync::Mutex<std::collections::HashMap<cz_state::JobId, KeyAhead>>,
> = std::sync::LazyLock::new(Default::default);

struct KeyAhead {
    started: std::time::Instant,
    key: tokio::task::JoinHandle<StepResult<SealingKey>>,
}

/// How long a key made ahead waits for its job's `sealing-key`.
const AHEAD_KEPT: std::time::Duration = std::time::Duration::from_secs(3600);

/// Starts making `job`'s sealing key in the background, unless it is
/// already being made. Only a provision makes one; `infra` calls this.
pub(crate) fn make_sealing_key_ahead(job: cz_state::JobId) {
    let mut ahead = AHEAD.lock().expect("not poisoned");
    ahead.retain(|_, k| {
        let keep = k.started.elapsed() < AHEAD_KEPT;
        if !keep {
            k.key.abort();
        }
        keep
    });
    ahead.entry(job).or_insert_with(|| KeyAhead {
        started: std::time::Instant::now(),
        key: tokio::spawn(generate_sealing_key()),
    });
}

/// Drops `job`'s key made ahead, if any: its job unwound, or found its
/// key installed.
pub(crate) fn forget_sealing_key_ahead(job: cz_state::JobId) {
    if let Some(k) = AHEAD.lock().expect("not poisoned").remove(&job) {
        k.key.abort();
    }
}

/// `job`'s key made ahead, or a new one.
async fn take_sealing_key(job: cz_state::JobId) -> StepResult<SealingKey> {
    let ahead = AHEAD.lock().expect("not poisoned").remove(&job);
    match ahead {
        Some(k) => match k.key.await {
            Ok(made) => made,
            // Aborted by the sweep (a job that came back after an hour).
            Err(_) => generate_sealing_key().await,
        },
        None => generate_sealing_key().await,
    }
}

/// Whether a key is being made or waits for `job` (tests).
#[cfg(any(test, feature = "testing"))]
pub fn has_key_ahead(job: cz_state::JobId) -> bool {
    AHEAD.lock().expect("not poisoned").contains_key(&job)
}

/// Sealing keys this process has made (tests count them).
static KEYS_MADE: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);

async fn sealing_key(cx: &StepCtx) -> StepResult<KeyEscrowed> {
    let custody = custody_of(cx)?;
    let kc = kubeconfig(cx).await?;
    let r = secret_ref(KEY_NAMESPACE, KEY_SECRET);
    let secret = format!("{KEY_NAMESPACE}/{KEY_SECRET}");
    let (threshold, parts) = (custody.openbao_threshold, custody.shares());
    let cert_fp = |s: &Value| {
        let pem = String::from_utf8(secret_data(s, "tls.crt")?).ok()?;
        certificate_fingerprint(&pem)
    };
    let cert_fp = |s: &Value| annotated(s).or_else(|| cert_fp(s));
    if let Found::Done(fingerprint) = found(cx, &kc, &r, SEALED_SECRETS_KEY, cert_fp).await? {
        forget_sealing_key_ahead(cx.job_id);
        return Ok(KeyEscrowed { secret, fingerprint, threshold, parts, generated: false });
    }
    let key = take_sealing_key(cx.job_id).await?;
    let fingerprint = certificate_fingerprint(&key.certificate_pem)
        .ok_or_else(|| StepError::internal("the generated certificate is not PEM"))?;
    let private = key.private_pem.expose().as_bytes();
    let items = escrow::split_and_deal(&custody, SEALED_SECRETS_KEY, private, &fingerprint)?;
    // Escrowed before it is installed: a key in the cluster always has its
    // parts with the custodians.
    cx.put_escrow(SEALED_SECRETS_KEY, &items, &[]).await?;
    let mut lbl = labels();
    lbl["sealedsecrets.bitnami.com/sealed-secrets-key"] = json!("active");
    let obj = json!({
        "apiVersion": "v1", "kind": "Secret",
        "metadata": { "name": KEY_SECRET, "namespace": KEY_NAMESPACE, "labels": lbl,
                      "annotations": { FINGERPRINT: fingerprint } },
        "type": "kubernetes.io/tls",
        "data": { "tls.crt": b64(key.certificate_pem.as_bytes()), "tls.key": b64(private) },
    });
    cx.env.kube.apply(&kc, FIELD_MANAGER, &[obj]).await?;
    cx.event(
        "custody",
        json!({ "message": format!(
            "sealed-secrets key installed as {secret}; its private key split {threshold} of \
             {parts} to the custodians"), "fingerprint": fingerprint }),
    )
    .await?;
    Ok(KeyEscrowed { secret, fingerprint, threshold, parts, generated: true })
}

async fn sealing_key_undo(cx: &StepCtx) -> StepResult<()> {
    if let Ok(kc) = kubeconfig(cx).await {
        cx.env.kube.delete(&kc, &secret_ref(KEY_NAMESPACE, KEY_SECRET)).await?;
    }
    cx.put_escrow(SEALED_SECRETS_KEY, &[], &[]).await
}

async fn static_seal_key(cx: &StepCtx) -> StepResult<KeyEscrowed> {
    let custody = custody_of(cx)?;
    let kc = kubeconfig(cx).await?;
    let r = secret_ref(STATIC_SEAL_NAMESPACE, STATIC_SEAL_SECRET);
    let secret = format!("{STATIC_SEAL_NAMESPACE}/{STATIC_SEAL_SECRET}");
    let (threshold, parts) = (custody.openbao_threshold, custody.shares());
    if let Found::Done(fingerprint) =
        found(cx, &kc, &r, STATIC_SEAL_KEY, static_seal_fingerprint).await?
    {
        return Ok(KeyEscrowed { secret, fingerprint, threshold, parts, generated: false });
    }
    let key: [u8; 32] = rand::random();
    let fingerprint = sha256_hex(&key);
    let items = escrow::split_and_deal(&custody, STATIC_SEAL_KEY, &key, &fingerprint)?;
    cx.put_escrow(STATIC_SEAL_KEY, &items, &[]).await?;
    let objs = static_seal_objects(cx, &key, &fingerprint)?;
    cx.env.kube.apply(&kc, FIELD_MANAGER, &objs).await?;
    cx.event(
        "custody",
        json!({ "message": format!(
            "OpenBao static-seal key installed as {secret}; split {threshold} of {parts} to the \
             custodians"), "fingerprint": fingerprint }),
    )
    .await?;
    Ok(KeyEscrowed { secret, fingerprint, threshold, parts, generated: true })
}

/// The fingerprint of the static-seal key a Secret holds: its annotation,
/// else the hash of its `key`.
pub(crate) fn static_seal_fingerprint(secret: &Value) -> Option<String> {
    annotated(secret).or_else(|| secret_data(secret, "key").map(|k| sha256_hex(&k)))
}

/// The static-seal key as bp-openbao mounts it: its namespace (made before
/// bp-openbao exists; the kit applies the same object under the same field
/// manager) and the Secret, annotated with the key's fingerprint.
pub(crate) fn static_seal_objects(
    cx: &StepCtx,
    key: &[u8],
    fingerprint: &str,
) -> StepResult<[Value; 2]> {
    let mut ns_labels = labels();
    ns_labels["catalyst.openova.io/sovereign"] =
        json!(crate::common::slug(&crate::common::fqdn(cx)?));
    ns_labels["catalyst.openova.io/component"] = json!("openbao");
    Ok([
        json!({ "apiVersion": "v1", "kind": "Namespace",
                "metadata": { "name": STATIC_SEAL_NAMESPACE, "labels": ns_labels } }),
        json!({ "apiVersion": "v1", "kind": "Secret",
                "metadata": { "name": STATIC_SEAL_SECRET, "namespace": STATIC_SEAL_NAMESPACE,
                              "labels": labels(), "annotations": { FINGERPRINT: fingerprint } },
                "type": "Opaque", "data": { "key": b64(key) } }),
    ])
}

async fn static_seal_key_undo(cx: &StepCtx) -> StepResult<()> {
    if let Ok(kc) = kubeconfig(cx).await {
        cx.env.kube.delete(&kc, &secret_ref(STATIC_SEAL_NAMESPACE, STATIC_SEAL_SECRET)).await?;
    }
    cx.put_escrow(STATIC_SEAL_KEY, &[], &[]).await
}

async fn admin_kubeconfig(cx: &StepCtx) -> StepResult<KubeconfigEscrowed> {
    escrow_kubeconfig(cx, ADMIN_KUBECONFIG, &kubeconfig(cx).await?).await
}

/// `kc`, one copy per custodian, as escrow `kind` (unless the escrow holds
/// it already): the home region's admin kubeconfig, or an added region's.
pub(crate) async fn escrow_kubeconfig(
    cx: &StepCtx,
    kind: &str,
    kc: &SecretString,
) -> StepResult<KubeconfigEscrowed> {
    let custody = custody_of(cx)?;
    let fingerprint = sha256_hex(kc.expose().as_bytes());
    let copies = custody.custodians.len();
    if !escrow::holds(&cx.escrow(kind).await?, &fingerprint) {
        let items = escrow::copies(&custody, kind, kc.expose().as_bytes(), &fingerprint)?;
        cx.put_escrow(kind, &items, &[]).await?;
    }
    Ok(KubeconfigEscrowed { copies, fingerprint })
}

async fn admin_kubeconfig_undo(cx: &StepCtx) -> StepResult<()> {
    cx.put_escrow(ADMIN_KUBECONFIG, &[], &[]).await
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::Ordering;

    use cz_engine::JobOptions;
    use cz_engine::testing::Scenario as _;
    use cz_state::{JobId, JobStatus};

    use super::{
        KEYS_MADE, forget_sealing_key_ahead, has_key_ahead, make_sealing_key_ahead,
        take_sealing_key,
    };
    use crate::testing::{PhaseScenario, phase_tests, sample_request};

    phase_tests!(super::PHASE, sample_request("cus", 1, 0));

    /// `infra` starts the sealing key, `sealing-key` installs that one:
    /// one key made for the job, none left waiting after it.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn the_sealing_key_is_made_while_the_job_waits_on_the_cloud() {
        let s = PhaseScenario::provision(sample_request("ahead", 1, 0), "cluster");
        let run = s.start(JobOptions::default()).await;
        assert_eq!(run.rig.drive(run.job).await, JobStatus::Succeeded);
        assert!(has_key_ahead(run.job), "infra started the key");
        // Started in the background: give it a moment to begin.
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        while KEYS_MADE.load(Ordering::Relaxed) == 0 && std::time::Instant::now() < deadline {
            tokio::time::sleep(std::time::Duration::from_millis(10)).await;
        }
        assert_eq!(KEYS_MADE.load(Ordering::Relaxed), 1, "one key, made before custody");
        let s = PhaseScenario::provision(sample_request("ahead", 1, 0), super::PHASE);
        let run = s.start(JobOptions::default()).await;
        assert_eq!(run.rig.drive(run.job).await, JobStatus::Succeeded);
        assert!(!has_key_ahead(run.job), "custody took it");
        assert_eq!(KEYS_MADE.load(Ordering::Relaxed), 2, "custody made no key of its own");
    }

    /// Taken once; a key forgotten is gone; a job with none gets a new one.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_key_made_ahead_is_taken_once_or_forgotten() {
        let (a, b) = (JobId::new(), JobId::new());
        make_sealing_key_ahead(a);
        make_sealing_key_ahead(a);
        make_sealing_key_ahead(b);
        forget_sealing_key_ahead(b);
        assert!(!has_key_ahead(b));
        let first = take_sealing_key(a).await.unwrap();
        assert!(!has_key_ahead(a));
        let second = take_sealing_key(a).await.unwrap();
        assert_ne!(first.certificate_pem, second.certificate_pem, "a second take makes a new key");
        // a's ahead key (once, though asked twice), b's perhaps (aborted
        // while it waited for the CPU, or made and dropped), a's second.
        let made = KEYS_MADE.load(Ordering::Relaxed);
        assert!((2..=3).contains(&made), "{made} keys made");
    }
}
