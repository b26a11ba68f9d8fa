//! Phase 8, `infra-handoff`: Crossplane's provider-hetzner takes over the
//! cloud objects tofu built, without changing any of them.
//!
//! Every region's cluster runs its own Crossplane (a regional kit
//! component), and it owns that region's objects, with that region's
//! credential. Per region:
//!
//! 1. `provider-<loc>` (undo: delete it): the `pkg.crossplane.io` Provider of
//!    `release.toml [crossplane_provider]`, waited on until `Installed` and
//!    `Healthy` and every CRD it must serve is `Established`. Nothing of the
//!    provider's is applied before that, so there is no race on CRDs;
//! 2. `credential-<loc>` (undo: delete it): the token Crossplane uses, as a
//!    Secret. The request's `handoff_token` when given; otherwise the
//!    provisioning token, and a `warning` event says so. The token goes into
//!    that Secret and nowhere else;
//! 3. `provider-config-<loc>` (after both; undo: delete it): the namespaced
//!    ProviderConfig naming that Secret;
//! 4. `adopt-<loc>` (undo: delete the resources; observe-only, they orphan
//!    their objects): one managed resource per resource of the region's
//!    `tofu show -json`, of the right kind, named by its external name
//!    ([`managed`]), `managementPolicies: ["Observe"]` and an empty
//!    `forProvider`: Crossplane reads, never writes;
//! 5. `verify-<loc>`: every one `Synced` and `Ready`, and what it observes
//!    equal to what tofu built. Any difference pauses the job
//!    (`needs-operator`) with the diff, and nothing has been written;
//! 6. `widen-<loc>` (undo: back to observe-only): the diff checked again,
//!    then tofu's fields copied into `forProvider` and the policies widened
//!    to everything but `Delete` (deleting a managed resource never deletes
//!    a cloud object the operator did not release);
//! 7. `archive-<loc>` (undo: restore the workspace): the tofu workspace
//!    (state included) stored age-encrypted, never overwritten, and the
//!    workspace removed. From then on the infra phase refuses any tofu run
//!    for this region ([`crate::infra::handed_off`]).
//!
//! The `hetzner-offline` module's state (`terraform_data` per object) is
//! read as the production module's resources first ([`offline`]).
//!
//! Not built yet (docs/operations.md): the verb that opts a resource into
//! `Delete`.

pub mod managed;
pub mod offline;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use cz_adapters::labels::FIELD_MANAGER;
use cz_adapters::{ObjectRef, Until};
use cz_engine::{ActionId, Cause, PhaseBuilder, PhaseDef, StepError, StepResult, System};
use cz_engine::{action, no_undo};
use cz_state::SecretString;
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

use self::managed::{
    Adoptee, CREDENTIAL_KEY, CREDENTIAL_SECRET, NAMESPACE, PROVIDER_CONFIG, adoptees, census, diff,
    render,
};
use crate::bootstrap_kit::probe::{Health, probe_objects};
use crate::cluster::kubeconfig_for;
use crate::common::{RegionParams, fqdn, precondition, region_token, region_token_name, slug};
use crate::infra::{archive_name, handed_off, workspace};
use crate::release::Probe;
use crate::request::Region;
use crate::{Registry, StepCtx, release};

pub const PHASE: &str = "infra-handoff";
/// The secret the request's dedicated hand-off token is stored under.
pub const HANDOFF_TOKEN: &str = "handoff_token";

// --- outputs -------------------------------------------------------------

/// `provider`'s output.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ProviderInstalled {
    /// The package reference the Provider names.
    pub package: String,
    /// Whether it is pinned by digest.
    pub pinned: bool,
    /// CRDs seen Established.
    pub crds: usize,
}

/// `credential`'s output (never the token).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Credential {
    /// `namespace/name` of the Secret.
    pub secret: String,
    /// A token of its own (`handoff_token`), not the provisioning one.
    pub dedicated: bool,
}

/// `provider-config`'s output.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ProviderConfigured {
    pub provider_config: String,
}

/// `adopt-<loc>`'s output: managed resources observing objects, by kind.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Observed {
    pub observed: usize,
    pub kinds: BTreeMap<String, usize>,
}

/// `verify-<loc>`'s output.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Verified {
    pub synced: usize,
    /// Fields compared, all equal.
    pub fields_compared: usize,
    /// Fields the provider does not report (`Kind/name field`), not
    /// compared; copied from tofu on widening all the same.
    #[serde(default)]
    pub fields_unobserved: Vec<String>,
}

/// `widen-<loc>`'s output.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Managed {
    pub managed: usize,
    pub policies: Vec<String>,
}

/// `archive-<loc>`'s output.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Archived {
    /// Files in the archive.
    pub files: usize,
    /// The store secret holding it.
    pub secret: String,
}

// --- actions and the DAG -------------------------------------------------

const PROVIDER: ActionId<RegionParams> = ActionId::new("infra-handoff.provider");
const CREDENTIAL: ActionId<RegionParams> = ActionId::new("infra-handoff.credential");
const PROVIDER_CONFIG_STEP: ActionId<RegionParams> = ActionId::new("infra-handoff.provider-config");
const ADOPT: ActionId<RegionParams> = ActionId::new("infra-handoff.adopt");
const VERIFY: ActionId<RegionParams> = ActionId::new("infra-handoff.verify");
const WIDEN: ActionId<RegionParams> = ActionId::new("infra-handoff.widen");
const ARCHIVE: ActionId<RegionParams> = ActionId::new("infra-handoff.archive");
/// The destroy job's step: Crossplane lets go before the cloud objects go.
pub const RELEASE: ActionId<RegionParams> = ActionId::new("infra-handoff.release");

pub fn register(r: &mut Registry) {
    r.register(PROVIDER, action!(provider, provider_undo));
    r.register(CREDENTIAL, action!(credential, credential_undo));
    r.register(PROVIDER_CONFIG_STEP, action!(provider_config, provider_config_undo));
    r.register(ADOPT, action!(adopt, adopt_undo));
    r.register(VERIFY, action!(verify, no_undo));
    r.register(WIDEN, action!(widen, widen_undo));
    r.register(ARCHIVE, action!(archive, archive_undo));
    r.register(RELEASE, action!(release, no_undo));
}

pub fn phase(regions: &[Region]) -> PhaseDef {
    let mut b = PhaseBuilder::new(PHASE);
    for r in regions {
        let l = &r.location;
        let p = || RegionParams::new(l);
        let (provider, credential, config) =
            (format!("provider-{l}"), format!("credential-{l}"), format!("provider-config-{l}"));
        b.step(&provider, PROVIDER, &[], p());
        b.step(&credential, CREDENTIAL, &[], p());
        b.step(&config, PROVIDER_CONFIG_STEP, &[&provider, &credential], p());
        b.step(&format!("adopt-{l}"), ADOPT, &[&config], p());
        b.step(&format!("verify-{l}"), VERIFY, &[&format!("adopt-{l}")], p());
        b.step(&format!("widen-{l}"), WIDEN, &[&format!("verify-{l}")], p());
        b.step(&format!("archive-{l}"), ARCHIVE, &[&format!("widen-{l}")], p());
    }
    b.build()
}

// --- shared --------------------------------------------------------------

/// The cluster of this node's region, whose Crossplane takes it over.
async fn kubeconfig(cx: &StepCtx) -> StepResult<SecretString> {
    kubeconfig_for(cx, &cx.params::<RegionParams>()?.location).await
}

fn secret_ref(namespace: &str, name: &str) -> ObjectRef {
    ObjectRef {
        api_version: "v1".into(),
        kind: "Secret".into(),
        namespace: Some(namespace.into()),
        name: name.into(),
    }
}

fn provider_ref() -> ObjectRef {
    ObjectRef {
        api_version: "pkg.crossplane.io/v1".into(),
        kind: "Provider".into(),
        namespace: None,
        name: release::crossplane_provider().name.clone(),
    }
}

fn provider_config_ref() -> ObjectRef {
    ObjectRef {
        api_version: "hetzner.m.crossplane.io/v1beta1".into(),
        kind: "ProviderConfig".into(),
        namespace: Some(NAMESPACE.into()),
        name: PROVIDER_CONFIG.into(),
    }
}

/// Whether every condition of `types` is `True` on `obj`.
fn all_true(obj: &Value, types: &[&'static str]) -> bool {
    types.iter().all(|t| Until::Condition(t).holds(Some(obj)))
}

/// The managed resource of `a`, as the cluster names it.
fn mr_ref(a: &Adoptee) -> ObjectRef {
    ObjectRef {
        api_version: a.kind.api_version.into(),
        kind: a.kind.kind.into(),
        namespace: Some(NAMESPACE.into()),
        name: a.name.clone(),
    }
}

// --- steps ---------------------------------------------------------------

async fn provider(cx: &StepCtx) -> StepResult<ProviderInstalled> {
    let kc = kubeconfig(cx).await?;
    let pin = release::crossplane_provider();
    if let Some(why) = pin.unpinned() {
        cx.event("warning", json!({ "message": why })).await?;
    }
    let obj = json!({
        "apiVersion": "pkg.crossplane.io/v1", "kind": "Provider",
        "metadata": { "name": pin.name, "labels": { "app.kubernetes.io/managed-by": FIELD_MANAGER } },
        "spec": { "package": pin.package_ref(), "packagePullPolicy": "IfNotPresent" },
    });
    cx.env.kube.apply(&kc, FIELD_MANAGER, &[obj]).await?;
    let kube = &cx.env.kube;
    cx.wait_for(
        &format!("{} Installed and Healthy, its {} CRDs Established", pin.name, pin.crds.len()),
        Duration::from_secs(600),
        || async {
            let Some(p) = kube.get(&kc, &provider_ref()).await? else { return Ok(None) };
            if !all_true(&p, &["Installed", "Healthy"]) {
                return Ok(None);
            }
            // The CRDs, checked as the kit's probes check a component's.
            let crds = Probe { crds: pin.crds.clone(), ..Default::default() };
            let health = probe_objects(kube.as_ref(), &kc, NAMESPACE, &crds).await?;
            Ok(matches!(health, Health::Healthy).then_some(()))
        },
    )
    .await?;
    Ok(ProviderInstalled {
        package: pin.package_ref(),
        pinned: pin.unpinned().is_none(),
        crds: pin.crds.len(),
    })
}

async fn provider_undo(cx: &StepCtx) -> StepResult<()> {
    let Ok(kc) = kubeconfig(cx).await else { return Ok(()) };
    cx.env.kube.delete(&kc, &provider_ref()).await
}

async fn credential(cx: &StepCtx) -> StepResult<Credential> {
    let kc = kubeconfig(cx).await?;
    let loc = cx.params::<RegionParams>()?.location;
    // A region an add-region job brought with a token of its own may be in
    // another project: its Crossplane gets that region's token.
    let dedicated_token = if cx.has_secret(&region_token_name(&loc)).await? {
        None
    } else {
        cx.secret_opt(HANDOFF_TOKEN).await?
    };
    let (token, dedicated) = match dedicated_token {
        Some(t) => (t, true),
        None => {
            cx.event("warning", json!({
                "message": "no handoff_token in the request: Crossplane uses the provisioning token; \
                            give it a token of a project holding only this Sovereign \
                            (runbooks/crossplane-credential.md)",
            }))
            .await?;
            (region_token(cx, &loc).await?, false)
        }
    };
    let obj = json!({ "apiVersion": "v1", "kind": "Secret", "type": "Opaque",
        "metadata": { "name": CREDENTIAL_SECRET, "namespace": NAMESPACE,
                      "labels": { "app.kubernetes.io/managed-by": FIELD_MANAGER } },
        "stringData": { CREDENTIAL_KEY: token.expose() } });
    cx.env.kube.apply(&kc, FIELD_MANAGER, &[obj]).await?;
    Ok(Credential { secret: format!("{NAMESPACE}/{CREDENTIAL_SECRET}"), dedicated })
}

async fn credential_undo(cx: &StepCtx) -> StepResult<()> {
    let Ok(kc) = kubeconfig(cx).await else { return Ok(()) };
    cx.env.kube.delete(&kc, &secret_ref(NAMESPACE, CREDENTIAL_SECRET)).await
}

async fn provider_config(cx: &StepCtx) -> StepResult<ProviderConfigured> {
    let kc = kubeconfig(cx).await?;
    let obj = json!({
        "apiVersion": "hetzner.m.crossplane.io/v1beta1", "kind": "ProviderConfig",
        "metadata": { "name": PROVIDER_CONFIG, "namespace": NAMESPACE,
                      "labels": { "app.kubernetes.io/managed-by": FIELD_MANAGER } },
        "spec": { "credentials": { "source": "Secret", "secretRef": {
            "namespace": NAMESPACE, "name": CREDENTIAL_SECRET, "key": CREDENTIAL_KEY } } },
    });
    cx.env.kube.apply(&kc, FIELD_MANAGER, &[obj]).await?;
    Ok(ProviderConfigured { provider_config: format!("{NAMESPACE}/{PROVIDER_CONFIG}") })
}

async fn provider_config_undo(cx: &StepCtx) -> StepResult<()> {
    let Ok(kc) = kubeconfig(cx).await else { return Ok(()) };
    cx.env.kube.delete(&kc, &provider_config_ref()).await
}

/// This region's adoptees, from the tofu state (or, once archived, from
/// the archive: the undo of a later step may need them).
async fn region_adoptees(cx: &StepCtx) -> StepResult<(String, Vec<Adoptee>)> {
    let loc = cx.params::<RegionParams>()?.location;
    let ws = workspace(cx, &loc);
    let mut state = cx.env.tofu.state(&ws).await?;
    if offline::is_offline(&state) {
        let live = crate::infra::region_objects(cx, &loc).await?;
        state = offline::provider_state(&state, &live).map_err(|m| {
            precondition(
                format!("region {loc}: {m}"),
                "Retry the infra phase (it re-creates what is missing), then this one.",
            )
        })?;
    }
    let all = adoptees(&state, &loc).map_err(|m| {
        precondition(
            format!("region {loc}: {m}"),
            "Only the production `hetzner` module's state can be handed to Crossplane; \
             adopt these objects by hand or destroy them.",
        )
    })?;
    Ok((loc, all))
}

async fn apply_all(cx: &StepCtx, all: &[Adoptee], managed: bool, loc: &str) -> StepResult<()> {
    let kc = kubeconfig(cx).await?;
    let sov = slug(&fqdn(cx)?);
    let objs: Vec<Value> = all.iter().map(|a| render(a, managed, &sov, loc)).collect();
    for chunk in objs.chunks(50) {
        cx.env.kube.apply(&kc, FIELD_MANAGER, chunk).await?;
    }
    Ok(())
}

async fn adopt(cx: &StepCtx) -> StepResult<Observed> {
    let (loc, all) = region_adoptees(cx).await?;
    apply_all(cx, &all, false, &loc).await?;
    Ok(Observed { observed: all.len(), kinds: census(&all) })
}

async fn adopt_undo(cx: &StepCtx) -> StepResult<()> {
    let Ok(kc) = kubeconfig(cx).await else { return Ok(()) };
    let Ok((_, all)) = region_adoptees(cx).await else { return Ok(()) };
    // Observe-only (widen's undo ran first): deleting orphans the objects.
    for a in &all {
        cx.env.kube.delete(&kc, &mr_ref(a)).await?;
    }
    Ok(())
}

/// Each adoptee's live resource once all are Synced and Ready; a resource
/// that reports a reconcile error is retried until the bound.
async fn observed(cx: &StepCtx, loc: &str, all: &[Adoptee]) -> StepResult<Vec<Value>> {
    let kc = kubeconfig(cx).await?;
    let kube = &cx.env.kube;
    // One list per kind (a region's few kinds), not one get per resource:
    // a 500-server region has over 550 managed resources, and each poll
    // round read them all.
    let mut kinds: Vec<(&str, &str)> =
        all.iter().map(|a| (a.kind.api_version, a.kind.kind)).collect();
    kinds.sort_unstable();
    kinds.dedup();
    let selector = format!(
        "app.kubernetes.io/managed-by={FIELD_MANAGER},{}={loc}",
        cz_adapters::labels::LABEL_REGION
    );
    cx.wait_for(
        &format!("{} managed resources Synced and Ready", all.len()),
        Duration::from_secs(900),
        || async {
            let mut live: BTreeMap<(&str, &str, String), Value> = BTreeMap::new();
            for (api_version, kind) in &kinds {
                for o in kube.list(&kc, api_version, kind, &selector).await? {
                    if o.pointer("/metadata/namespace").and_then(Value::as_str) != Some(NAMESPACE) {
                        continue;
                    }
                    let name = o.pointer("/metadata/name").and_then(Value::as_str);
                    let name = name.unwrap_or_default().to_owned();
                    live.insert((api_version, kind, name), o);
                }
            }
            let mut out = Vec::with_capacity(all.len());
            for a in all {
                let key = (a.kind.api_version, a.kind.kind, a.name.clone());
                let Some(o) = live.remove(&key) else { return Ok(None) };
                if !all_true(&o, &["Synced", "Ready"]) {
                    return Ok(None);
                }
                out.push(o);
            }
            Ok(Some(out))
        },
    )
    .await
}

/// Zero diff between tofu and the cloud (how many fields were compared,
/// which were not observed), or `needs-operator` with the differences.
async fn zero_diff(cx: &StepCtx, loc: &str, all: &[Adoptee]) -> StepResult<(usize, Vec<String>)> {
    let live = observed(cx, loc, all).await?;
    let mut diffs = Vec::new();
    let mut unobserved = Vec::new();
    let mut compared = 0;
    for (a, l) in all.iter().zip(&live) {
        let c = diff(a, l.pointer("/status/atProvider").unwrap_or(&Value::Null));
        compared += c.compared;
        diffs.extend(c.differences);
        unobserved.extend(c.unobserved);
    }
    if diffs.is_empty() {
        return Ok((compared, unobserved));
    }
    cx.event("drift", json!({ "region": loc, "differences": diffs })).await?;
    let shown: Vec<&str> = diffs.iter().take(10).map(String::as_str).collect();
    Err(precondition(
        format!(
            "region {loc}: the cloud differs from what tofu built in {} field(s); Crossplane \
             was given nothing to change: {}{}",
            diffs.len(),
            shown.join("; "),
            if diffs.len() > shown.len() { "; …" } else { "" },
        ),
        "Make the cloud match tofu (or accept the change in tofu's state), then retry this \
         phase. The resources stay observe-only until the diff is empty.",
    ))
}

async fn verify(cx: &StepCtx) -> StepResult<Verified> {
    let (loc, all) = region_adoptees(cx).await?;
    let (compared, unobserved) = zero_diff(cx, &loc, &all).await?;
    Ok(Verified { synced: all.len(), fields_compared: compared, fields_unobserved: unobserved })
}

async fn widen(cx: &StepCtx) -> StepResult<Managed> {
    let (loc, all) = region_adoptees(cx).await?;
    // Checked again: the cloud may have changed since verify (or this is a
    // resumed run whose verify ran long ago).
    zero_diff(cx, &loc, &all).await?;
    apply_all(cx, &all, true, &loc).await?;
    Ok(Managed {
        managed: all.len(),
        policies: managed::MANAGE.iter().map(|p| (*p).to_owned()).collect(),
    })
}

async fn widen_undo(cx: &StepCtx) -> StepResult<()> {
    if kubeconfig(cx).await.is_err() {
        return Ok(());
    }
    let Ok((loc, all)) = region_adoptees(cx).await else { return Ok(()) };
    apply_all(cx, &all, false, &loc).await
}

// --- archive -------------------------------------------------------------

/// The workspace's files (not tofu's plugin cache), by relative path.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
struct Archive {
    files: BTreeMap<String, String>,
}

fn io_err(op: &str, path: &Path, e: std::io::Error) -> StepError {
    StepError::adapter(System::Tofu, op, Cause::Unavailable, format!("{}: {e}", path.display()))
}

fn read_tree(root: &Path, dir: &Path, out: &mut BTreeMap<String, String>) -> std::io::Result<()> {
    for entry in std::fs::read_dir(dir)? {
        let entry = entry?;
        let path = entry.path();
        let name = entry.file_name().to_string_lossy().into_owned();
        if entry.file_type()?.is_dir() {
            // Provider binaries and caches are rebuilt by `tofu init`.
            if name != ".terraform" {
                read_tree(root, &path, out)?;
            }
        } else if let Ok(text) = std::fs::read_to_string(&path) {
            let rel = path.strip_prefix(root).unwrap_or(&path).to_string_lossy().into_owned();
            out.insert(rel, text);
        }
    }
    Ok(())
}

async fn archive(cx: &StepCtx) -> StepResult<Archived> {
    let loc = cx.params::<RegionParams>()?.location;
    let ws = workspace(cx, &loc);
    let name = archive_name(&loc);
    // Stored once, never overwritten: a re-run after a kill finds it and
    // only finishes removing the workspace.
    let files = match cx.secret_opt(&name).await? {
        Some(existing) => serde_json::from_str::<Archive>(existing.expose())
            .map_err(|e| StepError::internal(format!("{name}: {e}")))?
            .files
            .len(),
        None => {
            let dir = ws.dir.clone();
            let files = tokio::task::spawn_blocking(move || {
                let mut files = BTreeMap::new();
                read_tree(&dir, &dir, &mut files).map(|()| files)
            })
            .await
            .map_err(|e| StepError::internal(e.to_string()))?
            .map_err(|e| io_err("archive", &ws.dir, e))?;
            if files.is_empty() {
                return Err(precondition(
                    format!("region {loc}: the tofu workspace {} is empty", ws.dir.display()),
                    "Nothing to archive: restore the workspace from a backup before retrying.",
                ));
            }
            let n = files.len();
            let body = serde_json::to_string(&Archive { files }).expect("serializable");
            cx.put_secret(&name, &SecretString::new(body)).await?;
            n
        }
    };
    match tokio::fs::remove_dir_all(&ws.dir).await {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(io_err("remove workspace", &ws.dir, e)),
    }
    cx.event("tofu", json!({ "type": "archived", "region": loc, "files": files,
        "message": "tofu state archived (encrypted) and the workspace removed: Crossplane owns these objects" }))
        .await?;
    Ok(Archived { files, secret: name })
}

async fn archive_undo(cx: &StepCtx) -> StepResult<()> {
    let loc = cx.params::<RegionParams>()?.location;
    let name = archive_name(&loc);
    let Some(body) = cx.secret_opt(&name).await? else { return Ok(()) };
    let archive: Archive = serde_json::from_str(body.expose())
        .map_err(|e| StepError::internal(format!("{name}: {e}")))?;
    let root = workspace(cx, &loc).dir;
    for (rel, text) in &archive.files {
        let path: PathBuf = root.join(rel);
        if let Some(parent) = path.parent() {
            tokio::fs::create_dir_all(parent).await.map_err(|e| io_err("restore", parent, e))?;
        }
        tokio::fs::write(&path, text).await.map_err(|e| io_err("restore", &path, e))?;
    }
    cx.delete_secret(&name).await
}

#[cfg(test)]
mod tests;

// --- destroy -------------------------------------------------------------

/// `release-<loc>`'s output.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Released {
    /// Managed resources deleted (their cloud objects orphaned, for the
    /// destroy's sweep to delete).
    pub managed_resources: usize,
    /// Why the cluster was not asked, if it was not.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub skipped: Option<String>,
}

/// The destroy job's first step per region: every managed resource of
/// this Sovereign and region is deleted (their policies never include
/// `Delete`, so the cloud objects are orphaned, not deleted), then the
/// ProviderConfig and its credential, and the step waits until they are
/// gone. Only then may the sweep delete the objects: a Crossplane still
/// managing them (with `Create`) would build them again.
///
/// A region that was handed off must be released: an unreachable cluster
/// is retried, then pauses the destroy for an operator (who skips the step
/// once the cluster is known to be gone). A region that was not handed off
/// has at most observe-only resources, which change nothing: an
/// unreachable cluster there is a warning.
async fn release(cx: &StepCtx) -> StepResult<Released> {
    let loc = cx.params::<RegionParams>()?.location;
    let Some(kc) = cx.secret_opt(&crate::cluster::kubeconfig_secret(&loc)).await? else {
        return Ok(Released {
            managed_resources: 0,
            skipped: Some("the region's cluster was never reached".into()),
        });
    };
    let must = handed_off(cx, &loc).await?;
    match release_in(cx, &kc, &loc).await {
        Ok(n) => Ok(Released { managed_resources: n, skipped: None }),
        Err(StepError::Adapter { cause: Cause::Network | Cause::Unavailable, message, .. })
            if !must =>
        {
            let why = format!(
                "region {loc}: the cluster does not answer ({message}); it was not handed \
                 to Crossplane, so nothing there manages the cloud objects"
            );
            cx.event("warning", json!({ "message": why })).await?;
            Ok(Released { managed_resources: 0, skipped: Some(why) })
        }
        Err(e) => Err(e),
    }
}

async fn release_in(cx: &StepCtx, kc: &SecretString, loc: &str) -> StepResult<usize> {
    let selector = crate::infra::region_selector(cx, loc)?;
    let kube = &cx.env.kube;
    let mut gone: Vec<ObjectRef> = Vec::new();
    for k in managed::KINDS {
        for obj in kube.list(kc, k.api_version, k.kind, &selector).await? {
            let name = obj.pointer("/metadata/name").and_then(Value::as_str).unwrap_or_default();
            let namespace = obj.pointer("/metadata/namespace").and_then(Value::as_str);
            let r = ObjectRef {
                api_version: k.api_version.into(),
                kind: k.kind.into(),
                namespace: namespace.map(str::to_owned),
                name: name.to_owned(),
            };
            if !gone.contains(&r) {
                gone.push(r);
            }
        }
    }
    let n = gone.len();
    gone.push(provider_config_ref());
    gone.push(secret_ref(NAMESPACE, CREDENTIAL_SECRET));
    for r in &gone {
        kube.delete(kc, r).await?;
    }
    for r in &gone {
        kube.wait_until(kc, r, Until::Deleted, Duration::from_secs(300)).await?;
    }
    cx.event(
        "handoff",
        json!({ "region": loc, "released": n,
                "message": format!("{n} managed resource(s) deleted; Crossplane no longer manages the region's cloud objects") }),
    )
    .await?;
    Ok(n)
}
