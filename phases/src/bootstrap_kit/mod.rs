//! Phase 5, `bootstrap-kit`: the 12 components as Flux HelmReleases.
//!
//! Steps (undo in brackets):
//! 1. `flux-bootstrap` [delete the HelmChart]: Flux itself, as a K3s `HelmChart` of the chart
//!    bp-flux wraps, at its version and with bp-flux's values, so
//!    the HelmReleases have controllers; done when Flux's CRDs are
//!    Established and its controllers available (bp-flux's probe).
//! 2. `sources` [delete them]: every selected component's HelmRepository.
//! 3. one step per component [delete its HelmRelease and Namespace], with the kit's `dependsOn` graph as the DAG
//!    (independent components install concurrently): its Namespace and
//!    HelmRelease by server-side apply under one field manager, then its
//!    readiness probe ([`probe`]): HelmRelease `Ready` is
//!    necessary, not sufficient. A release Flux is still
//!    retrying is `installing` or `failing` in the job's `kit` events;
//!    only past the bound is it `needs-operator`
//!    ([`StepError::Unhealthy`], the component named, with its runbook).
//! 4. `handover`: once bp-cilium and bp-flux are healthy, the K3s
//!    HelmCharts that first installed them are removed without an
//!    uninstall (marked `helmcharts.helm.cattle.io/unmanaged`, then
//!    deleted), so one installer owns each release. A component
//!    still rolling out is waited for, within the bound; only a failing
//!    one, or the bound, pauses the job.
//! 5. `prune`: what an earlier run of this Sovereign's kit applied to the
//!    cluster and the selection no longer has (by label) is deleted:
//!    HelmRelease first (Flux uninstalls it), then its source and
//!    Namespace.
//! 6. `verify`: every **expected** component (the selection from the
//!    release manifest) healthy by its probe, again, from a fresh read
//!    (zero observed is not done; the level is read, not the edges).
//!
//! Every wait is bounded by `Bounds::kit_component`. Waits on one object
//! are watches ([`cz_adapters::KubeApi::wait_until`]); a probe reads
//! several objects (a release, its workloads, their pods, CRDs), so it is
//! re-run at the backend's `poll` interval and reports each change. The objects are rendered from
//! `bootstrap-kit/` ([`render`]).

pub mod probe;
pub mod render;

use cz_adapters::labels::FIELD_MANAGER;
use cz_adapters::{ObjectRef, Until};
use cz_engine::{ActionId, Cause, PhaseBuilder, PhaseDef, StepError, StepResult, System};
use cz_engine::{action, no_undo};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

use self::probe::{Health, probe, probe_objects};
use self::render::{KitInput, Rendered, render_component, values_text};
use crate::cluster::{CiliumChart, kubeconfig_for};
use crate::common::{fqdn, slug};
use crate::{Registry, StepCtx, release};

pub const PHASE: &str = "bootstrap-kit";

// --- params and outputs --------------------------------------------------

/// The params of the steps that act on the whole selection.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct KitParams {
    /// The region whose cluster the kit goes into.
    pub location: String,
    /// The selection, closed under dependencies.
    pub components: Vec<String>,
    /// add-region: the regional subset.
    pub regional: bool,
}

/// `<component>`'s params.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ComponentParams {
    pub location: String,
    pub component: String,
    /// The selected components it waits for (its plan dependencies).
    pub depends_on: Vec<String>,
}

/// `handover`'s params: the components whose first installer goes.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct HandoverParams {
    pub location: String,
    pub components: Vec<String>,
}

/// `flux-bootstrap`'s output.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct FluxInstalled {
    /// Set when bp-flux already owned Flux (a second run installs nothing).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub owned_by: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub chart: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub version: Option<String>,
    /// Flux's own version.
    pub flux: String,
}

/// `sources`' output.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Sources {
    pub sources: usize,
}

/// `<component>`'s output.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ComponentInstalled {
    pub release: String,
    pub version: String,
    pub namespace: String,
}

/// `handover`'s output.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct HandedOver {
    pub handed_over: Vec<String>,
}

/// `prune`'s output: `Kind/name` of each object deleted.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Pruned {
    pub pruned: Vec<String>,
}

/// `verify`'s output.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct KitHealthy {
    pub healthy: Vec<String>,
}

// --- actions and the DAG -------------------------------------------------

const FLUX: ActionId<KitParams> = ActionId::new("bootstrap-kit.flux");
const SOURCES: ActionId<KitParams> = ActionId::new("bootstrap-kit.sources");
const COMPONENT: ActionId<ComponentParams> = ActionId::new("bootstrap-kit.component");
const HANDOVER: ActionId<HandoverParams> = ActionId::new("bootstrap-kit.handover");
const PRUNE: ActionId<KitParams> = ActionId::new("bootstrap-kit.prune");
const VERIFY: ActionId<KitParams> = ActionId::new("bootstrap-kit.verify");

pub fn register(r: &mut Registry) {
    r.register(FLUX, action!(flux_bootstrap, flux_bootstrap_undo));
    r.register(SOURCES, action!(sources, sources_undo));
    r.register(COMPONENT, action!(component, component_undo));
    r.register(HANDOVER, action!(handover, no_undo));
    r.register(PRUNE, action!(prune, no_undo));
    r.register(VERIFY, action!(verify, no_undo));
}

/// The labels every object the kit applies carries.
const MANAGED: &str = "app.kubernetes.io/managed-by=catalyst-zero";
const SOVEREIGN_LABEL: &str = cz_adapters::labels::LABEL_SOVEREIGN;
const COMPONENT_LABEL: &str = "catalyst.openova.io/component";

/// `components`: the selection (already closed under dependencies).
pub fn phase(components: &[String], location: &str, regional: bool) -> PhaseDef {
    let mut b = PhaseBuilder::new(PHASE);
    let base =
        || KitParams { location: location.to_owned(), components: components.to_vec(), regional };
    b.step("flux-bootstrap", FLUX, &[], base());
    b.step("sources", SOURCES, &["flux-bootstrap"], base());
    for p in release::pins().iter().filter(|p| components.contains(&p.component)) {
        let deps: Vec<&str> = p
            .depends_on
            .iter()
            .map(String::as_str)
            .filter(|d| components.iter().any(|c| c == d))
            .collect();
        let mut after = vec!["sources"];
        after.extend(deps.iter().copied());
        let params = ComponentParams {
            location: location.to_owned(),
            component: p.component.clone(),
            depends_on: deps.iter().map(|d| d.to_string()).collect(),
        };
        b.step(&p.component, COMPONENT, &after, params);
    }
    // The first installers' records go once their blueprint owns the release.
    let handed: Vec<&str> =
        ["cilium", "flux"].into_iter().filter(|c| components.iter().any(|x| x == c)).collect();
    let mut all: Vec<&str> = components.iter().map(String::as_str).collect();
    all.push("sources");
    if !handed.is_empty() {
        let params = HandoverParams {
            location: location.to_owned(),
            components: handed.iter().map(|c| c.to_string()).collect(),
        };
        b.step("handover", HANDOVER, &handed, params);
        all.push("handover");
    }
    b.step("prune", PRUNE, &all, base());
    b.step("verify", VERIFY, &["prune"], base());
    b.build()
}

/// add-region's kit for one new region: the regional subset, as the phase
/// `bootstrap-kit-<location>` (one per region, so each is its own DAG).
pub fn regional_phase(components: &[String], location: &str) -> PhaseDef {
    let mut kit = phase(components, location, true);
    kit.id = format!("{PHASE}-{location}");
    let prefix = format!("{}/", kit.id);
    for n in &mut kit.nodes {
        n.id = n.id.replacen(&format!("{PHASE}/"), &prefix, 1);
        for d in &mut n.depends_on {
            *d = d.replacen(&format!("{PHASE}/"), &prefix, 1);
        }
    }
    kit
}

// --- steps ---------------------------------------------------------------

/// The kubeconfig of the cluster this node's region runs. Every step of
/// the phase names its region in its params, under `location`.
async fn kubeconfig(cx: &StepCtx) -> StepResult<cz_state::SecretString> {
    kubeconfig_for(cx, &cx.params::<crate::common::RegionParams>()?.location).await
}

/// What the kit is rendered for: this Sovereign, and the API address
/// Cilium was installed with by the `cluster` phase.
fn kit_input(cx: &StepCtx) -> StepResult<KitInput> {
    kit_input_at(cx, &cx.params::<crate::common::RegionParams>()?.location)
}

/// What the kit is rendered for in region `loc`.
pub(crate) fn kit_input_at(cx: &StepCtx, loc: &str) -> StepResult<KitInput> {
    let fqdn = fqdn(cx)?;
    let cilium: CiliumChart = cx.lookup(&format!("cluster/cilium-{loc}"))?;
    Ok(KitInput {
        sovereign: slug(&fqdn),
        fqdn,
        api_host: cilium.k8s_service_host,
        seal: crate::common::job_request(cx)?.seal().as_str().to_owned(),
    })
}

fn rendered(cx: &StepCtx, p: &release::Pin) -> StepResult<Rendered> {
    render_at(p, &kit_input(cx)?)
}

fn render_at(p: &release::Pin, input: &KitInput) -> StepResult<Rendered> {
    render_component(p, input).map_err(|e| {
        StepError::internal(format!("the release's bootstrap kit does not render: {e}"))
    })
}

fn hr_ref(p: &release::Pin) -> ObjectRef {
    ObjectRef {
        api_version: "helm.toolkit.fluxcd.io/v2".into(),
        kind: "HelmRelease".into(),
        namespace: Some("flux-system".into()),
        name: p.release.clone(),
    }
}

fn pin_of(name: &str) -> StepResult<&'static release::Pin> {
    release::pin(name).ok_or_else(|| StepError::InvalidInput {
        path: "components".into(),
        message: format!("unknown component `{name}`"),
    })
}

async fn sources(cx: &StepCtx) -> StepResult<Sources> {
    let kc = kubeconfig(cx).await?;
    let comps = cx.params::<KitParams>()?.components;
    let mut objs = Vec::new();
    for c in &comps {
        objs.push(rendered(cx, pin_of(c)?)?.source);
    }
    cx.env.kube.apply(&kc, FIELD_MANAGER, &objs).await?;
    Ok(Sources { sources: objs.len() })
}

async fn sources_undo(cx: &StepCtx) -> StepResult<()> {
    let Ok(kc) = kubeconfig(cx).await else { return Ok(()) };
    for c in cx.params::<KitParams>()?.components {
        cx.env.kube.delete(&kc, &source_ref(pin_of(&c)?)).await?;
    }
    Ok(())
}

/// What a wait does with a component its probe finds `Failing`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum WhenFailing {
    /// Keep waiting: Flux retries a failed install or upgrade by itself,
    /// so only the bound decides (a component being installed).
    Wait,
    /// Stop now: the step needs a working component to act on (the
    /// hand-over hands a release from one installer to another).
    Stop,
}

/// Waits until `check` says healthy, within the kit bound; reports each
/// change of state as a `kit` event; past the bound (or at the first
/// `Failing` under [`WhenFailing::Stop`]) the last state seen is the error,
/// naming the component. A `Waiting` component is always waited for.
async fn wait_healthy<F, Fut>(cx: &StepCtx, component: &str, check: F) -> StepResult<()>
where
    F: Fn() -> Fut,
    Fut: Future<Output = StepResult<Health>>,
{
    wait_component(cx, component, WhenFailing::Wait, check).await
}

async fn wait_component<F, Fut>(
    cx: &StepCtx,
    component: &str,
    when_failing: WhenFailing,
    check: F,
) -> StepResult<()>
where
    F: Fn() -> Fut,
    Fut: Future<Output = StepResult<Health>>,
{
    let bound = cx.env.bounds.kit_component;
    let last = std::sync::Mutex::new(None::<Health>);
    let res = cx
        .wait_for(&format!("component {component} to be healthy"), bound, || async {
            let h = check().await?;
            let changed = last.lock().expect("lock").as_ref() != Some(&h);
            if changed {
                let (condition, message) = match &h {
                    Health::Healthy => ("", ""),
                    Health::Waiting { condition, message }
                    | Health::Failing { condition, message } => {
                        (condition.as_str(), message.as_str())
                    }
                };
                cx.event(
                    "kit",
                    json!({ "component": component, "state": h.state(),
                            "condition": condition, "message": message }),
                )
                .await?;
                *last.lock().expect("lock") = Some(h.clone());
            }
            if let (Health::Failing { condition, message }, WhenFailing::Stop) = (&h, when_failing)
            {
                return Err(StepError::Unhealthy {
                    component: component.to_owned(),
                    condition: condition.clone(),
                    message: message.clone(),
                    bound_s: 0,
                });
            }
            Ok((h == Health::Healthy).then_some(()))
        })
        .await;
    match res {
        Err(StepError::Timeout { bound_s, .. }) => {
            let (condition, message) = match last.into_inner().expect("lock") {
                Some(Health::Waiting { condition, message })
                | Some(Health::Failing { condition, message }) => (condition, message),
                _ => ("Unknown".to_owned(), "no probe answered".to_owned()),
            };
            Err(StepError::Unhealthy {
                component: component.to_owned(),
                condition,
                message,
                bound_s,
            })
        }
        other => other,
    }
}

/// The K3s HelmChart that first installed `component` (the `cluster`
/// phase's for Cilium, `flux-bootstrap`'s for Flux): same name as the
/// release, in `kube-system`.
fn helm_chart_ref(component: &str) -> ObjectRef {
    ObjectRef {
        api_version: "helm.cattle.io/v1".into(),
        kind: "HelmChart".into(),
        namespace: Some("kube-system".into()),
        name: component.into(),
    }
}

/// The field manager of the hand-over's one annotation, so applying it
/// does not drop the fields `catalyst-zero` applied to the HelmChart.
const HANDOVER_MANAGER: &str = "catalyst-zero-handover";

/// Hands Cilium and Flux from their first installer (a K3s HelmChart) to
/// their blueprint's HelmRelease, which by now owns the same release at
/// the same version: the HelmChart is marked
/// `helmcharts.helm.cattle.io/unmanaged` so K3s's helm-controller leaves
/// it alone, then deleted, which then runs no uninstall
/// (k3s-io/helm-controller#137; deleting it as it is, or only removing its
/// finalizer, would uninstall Cilium or Flux). The component must still
/// be healthy afterwards.
///
/// Only a release its blueprint owns and runs is handed over: one still
/// rolling out (bp-flux's upgrade of the first install restarts Flux's
/// controllers) is waited for within the kit bound; a failing one stops
/// the step at once.
async fn handover(cx: &StepCtx) -> StepResult<HandedOver> {
    let kc = kubeconfig(cx).await?;
    let kube = cx.env.kube.as_ref();
    let mut done = Vec::new();
    for c in cx.params::<HandoverParams>()?.components {
        let p = pin_of(&c)?;
        let hr = hr_ref(p);
        let r = helm_chart_ref(&p.component);
        if kube.get(&kc, &r).await?.is_none() {
            continue;
        }
        wait_component(cx, &c, WhenFailing::Stop, || probe(kube, &kc, p, Some(&hr))).await?;
        let mark = json!({ "apiVersion": r.api_version, "kind": r.kind,
            "metadata": { "name": r.name, "namespace": "kube-system",
                          "annotations": { "helmcharts.helm.cattle.io/unmanaged": "true" } } });
        kube.apply(&kc, HANDOVER_MANAGER, &[mark]).await?;
        kube.delete(&kc, &r).await?;
        kube.wait_until(&kc, &r, Until::Deleted, cx.env.bounds.kit_component).await?;
        wait_healthy(cx, &c, || probe(kube, &kc, p, Some(&hr))).await?;
        cx.event("kit", json!({ "component": c, "state": "handed-over",
            "from": format!("HelmChart kube-system/{}", r.name), "to": format!("HelmRelease flux-system/{}", p.release) }))
            .await?;
        done.push(c);
    }
    Ok(HandedOver { handed_over: done })
}

/// Flux, so that HelmReleases have controllers: a K3s HelmChart of the
/// chart and version bp-flux wraps, with bp-flux's own values, released as
/// `flux` in `flux-system` (bp-flux's release name and namespace), so that
/// bp-flux later upgrades this release in place instead of installing a
/// second Flux.
async fn flux_bootstrap(cx: &StepCtx) -> StepResult<FluxInstalled> {
    let kc = kubeconfig(cx).await?;
    let input = kit_input(cx)?;
    let pin = pin_of("flux")?;
    // Once bp-flux owns Flux (after `handover`), a second run must not bring
    // the first installer back: it would manage the same release again.
    let kube = cx.env.kube.as_ref();
    if let Some(hr) = kube.get(&kc, &hr_ref(pin)).await?
        && probe::helm_release(&hr) == Health::Healthy
    {
        wait_healthy(cx, "flux", || probe_objects(kube, &kc, &pin.namespace, &pin.probe)).await?;
        return Ok(FluxInstalled {
            owned_by: Some(pin.release.clone()),
            chart: None,
            version: None,
            flux: release::flux_version().into(),
        });
    }
    kube.apply(&kc, FIELD_MANAGER, &flux_install(&input)?).await?;
    wait_healthy(cx, "flux", || probe_objects(kube, &kc, &pin.namespace, &pin.probe)).await?;
    let (chart, _, version) = release::flux_chart();
    Ok(FluxInstalled {
        owned_by: None,
        chart: Some(chart.into()),
        version: Some(version.into()),
        flux: release::flux_version().into(),
    })
}

/// Flux's first install: Namespace `flux-system` and the K3s HelmChart
/// `kube-system/flux` of the chart bp-flux wraps, at its version, with
/// bp-flux's rendered values, released as `flux` (bp-flux's release name)
/// in bp-flux's namespace.
pub fn flux_install(input: &KitInput) -> StepResult<Vec<Value>> {
    let pin = pin_of("flux")?;
    let values = values_text("flux", input)
        .map_err(|e| StepError::internal(format!("the release's Flux values: {e}")))?;
    let (chart, repo, version) = release::flux_chart();
    let labels = json!({ "app.kubernetes.io/managed-by": "catalyst-zero", SOVEREIGN_LABEL: input.sovereign });
    Ok(vec![
        json!({ "apiVersion": "v1", "kind": "Namespace",
                "metadata": { "name": pin.namespace, "labels": labels } }),
        json!({ "apiVersion": "helm.cattle.io/v1", "kind": "HelmChart",
                "metadata": { "name": pin.component, "namespace": "kube-system", "labels": labels },
                "spec": { "chart": chart, "repo": repo, "version": version,
                          "targetNamespace": pin.namespace, "valuesContent": values } }),
    ])
}

async fn flux_bootstrap_undo(cx: &StepCtx) -> StepResult<()> {
    let Ok(kc) = kubeconfig(cx).await else { return Ok(()) };
    cx.env.kube.delete(&kc, &helm_chart_ref("flux")).await
}

async fn component(cx: &StepCtx) -> StepResult<ComponentInstalled> {
    let kc = kubeconfig(cx).await?;
    let p = pin_of(&cx.params::<ComponentParams>()?.component)?;
    let r = rendered(cx, p)?;
    let mut objs: Vec<Value> = r.namespace.into_iter().collect();
    objs.push(r.helm_release);
    install(cx, &kc, p, objs).await
}

/// Applies `objs` (a component's Namespace and HelmRelease, and its source
/// when it is not applied with the others) and waits until `p` is healthy
/// by its probe.
async fn install(
    cx: &StepCtx,
    kc: &cz_state::SecretString,
    p: &release::Pin,
    objs: Vec<Value>,
) -> StepResult<ComponentInstalled> {
    cx.env.kube.apply(kc, FIELD_MANAGER, &objs).await?;
    let hr = hr_ref(p);
    let kube = cx.env.kube.as_ref();
    wait_healthy(cx, &p.component, || probe(kube, kc, p, Some(&hr))).await?;
    Ok(ComponentInstalled {
        release: p.release.clone(),
        version: p.version.clone(),
        namespace: p.namespace.clone(),
    })
}

/// Installs a hand-off component (`release::handoff_pins`) into the
/// cluster of region `loc`, as the kit installs its own: Namespace, source
/// and HelmRelease, then its probe.
pub(crate) async fn install_handoff_component(
    cx: &StepCtx,
    loc: &str,
    component: &str,
) -> StepResult<ComponentInstalled> {
    let p = release::handoff_pin(component)
        .ok_or_else(|| StepError::internal(format!("no hand-off component `{component}`")))?;
    let kc = kubeconfig_for(cx, loc).await?;
    let r = render_at(p, &kit_input_at(cx, loc)?)?;
    install(cx, &kc, p, r.objects()).await
}

/// Removes a hand-off component (undo): its HelmRelease (Flux uninstalls
/// it), source and Namespace.
pub(crate) async fn remove_handoff_component(
    cx: &StepCtx,
    loc: &str,
    component: &str,
) -> StepResult<()> {
    let Some(p) = release::handoff_pin(component) else { return Ok(()) };
    let Ok(kc) = kubeconfig_for(cx, loc).await else { return Ok(()) };
    cx.env.kube.delete(&kc, &hr_ref(p)).await?;
    cx.env.kube.delete(&kc, &source_ref(p)).await?;
    cx.env.kube.delete(&kc, &namespace_ref(&p.namespace)).await
}

fn source_ref(p: &release::Pin) -> ObjectRef {
    ObjectRef {
        api_version: "source.toolkit.fluxcd.io/v1".into(),
        kind: "HelmRepository".into(),
        namespace: Some("flux-system".into()),
        name: p.release.clone(),
    }
}

async fn component_undo(cx: &StepCtx) -> StepResult<()> {
    let Ok(kc) = kubeconfig(cx).await else { return Ok(()) };
    let p = pin_of(&cx.params::<ComponentParams>()?.component)?;
    cx.env.kube.delete(&kc, &hr_ref(p)).await?;
    if rendered(cx, p)?.namespace.is_some() {
        cx.env.kube.delete(&kc, &namespace_ref(&p.namespace)).await?;
    }
    Ok(())
}

fn namespace_ref(name: &str) -> ObjectRef {
    ObjectRef {
        api_version: "v1".into(),
        kind: "Namespace".into(),
        namespace: None,
        name: name.to_owned(),
    }
}

/// Deletes what this Sovereign's kit applied earlier to this cluster and
/// the selection no longer has: HelmReleases first, waiting until they
/// are gone (Flux uninstalls the release behind its finalizer), then
/// their sources and Namespaces. Objects without a component label (the
/// Flux bootstrap) and anything not labelled as ours are never touched.
async fn prune(cx: &StepCtx) -> StepResult<Pruned> {
    let kc = kubeconfig(cx).await?;
    let wanted = cx.params::<KitParams>()?.components;
    Ok(Pruned { pruned: prune_unwanted(cx, &kc, &wanted).await? })
}

/// The kit's prune: deletes what this Sovereign's kit applied to the
/// cluster of `kc` whose component is not in `wanted` (hand-off
/// components are always kept). Also how the secrets hand-off retires
/// sealed-secrets.
pub(crate) async fn prune_unwanted(
    cx: &StepCtx,
    kc: &cz_state::SecretString,
    wanted: &[String],
) -> StepResult<Vec<String>> {
    let kc = kc.clone();
    let keep = |c: &str| wanted.iter().any(|w| w == c) || release::handoff_pin(c).is_some();
    let sel = format!("{MANAGED},{SOVEREIGN_LABEL}={}", slug(&fqdn(cx)?));
    let kinds = [
        ("helm.toolkit.fluxcd.io/v2", "HelmRelease"),
        ("source.toolkit.fluxcd.io/v1", "HelmRepository"),
        ("v1", "Namespace"),
    ];
    let mut pruned = Vec::new();
    for (api_version, kind) in kinds {
        let unwanted: Vec<ObjectRef> = cx
            .env
            .kube
            .list(&kc, api_version, kind, &sel)
            .await?
            .iter()
            .filter(|o| {
                let c =
                    o.pointer(&format!("/metadata/labels/{}", COMPONENT_LABEL.replace('/', "~1")));
                c.and_then(Value::as_str).is_some_and(|c| !keep(c))
            })
            .filter_map(ObjectRef::of)
            .collect();
        for r in &unwanted {
            cx.event("kit", json!({ "state": "pruning", "kind": kind, "name": r.name })).await?;
            cx.env.kube.delete(&kc, r).await?;
            if kind == "HelmRelease" {
                let bound = cx.env.bounds.kit_component;
                cx.env.kube.wait_until(&kc, r, Until::Deleted, bound).await?;
            }
            pruned.push(format!("{kind}/{}", r.name));
        }
    }
    Ok(pruned)
}

async fn verify(cx: &StepCtx) -> StepResult<KitHealthy> {
    let kc = kubeconfig(cx).await?;
    let comps = cx.params::<KitParams>()?.components;
    if comps.is_empty() {
        return Err(StepError::adapter(
            System::Kubernetes,
            "verify kit",
            Cause::NotFound,
            "no component is expected: an empty kit is not a healthy one",
        ));
    }
    let kube = cx.env.kube.as_ref();
    for c in &comps {
        let p = pin_of(c)?;
        let hr = hr_ref(p);
        wait_healthy(cx, c, || probe(kube, &kc, p, Some(&hr))).await?;
    }
    Ok(KitHealthy { healthy: comps })
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicU32, Ordering};

    use async_trait::async_trait;
    use cz_adapters::ObjectRef;
    use cz_engine::{Action, ActionId, JobOptions, StepResult};
    use cz_state::JobStatus;
    use serde_json::{Value, json};

    use crate::testing::{KubeTap, SimRigExt, phase_tests, sample_request, sim_rig_with};
    use crate::{Backend, StepCtx, jobs, registry};

    phase_tests!(super::PHASE, sample_request("kit", 1, 0));

    /// What the sim's Kubernetes answers, with Flux disturbed for the next
    /// reads once armed: its `source-controller` rolling out again (what
    /// K3s's helm-controller re-applying the first install can do until the
    /// hand-over), or, with `failing`, its HelmRelease failing an upgrade.
    fn disturb(
        reads_left: &AtomicU32,
        failing: bool,
        r: &ObjectRef,
        obj: Option<Value>,
    ) -> Option<Value> {
        let mut obj = obj?;
        let hit = if failing {
            r.kind == "HelmRelease" && r.name == "bp-flux"
        } else {
            r.kind == "Deployment" && r.name == "source-controller"
        };
        if hit && reads_left.load(Ordering::SeqCst) > 0 {
            reads_left.fetch_sub(1, Ordering::SeqCst);
            if failing {
                obj["status"]["conditions"] = json!([{ "type": "Ready", "status": "False",
                    "reason": "UpgradeFailed", "message": "Helm upgrade failed: timed out" }]);
            } else {
                obj["status"]["updatedReplicas"] = json!(0);
            }
        }
        Some(obj)
    }

    /// A step that arms the disturbance: it runs after bp-flux is healthy
    /// and before the hand-over, so the hand-over's first probes see it.
    struct Arm(Arc<AtomicU32>);

    #[async_trait]
    impl Action<Backend> for Arm {
        async fn run(&self, _cx: &StepCtx) -> StepResult<Value> {
            self.0.store(3, Ordering::SeqCst);
            Ok(Value::Null)
        }
        async fn undo(&self, _cx: &StepCtx) -> StepResult<()> {
            Ok(())
        }
        fn check_params(&self, _params: &Value) -> Result<(), String> {
            Ok(())
        }
    }

    const ARM: ActionId<()> = ActionId::new("test.arm");

    /// Provisions to the end of the kit with Flux disturbed as the
    /// hand-over starts; returns the job's status, its kit events and its
    /// stop reason.
    async fn hand_over_a_disturbed_flux(failing: bool) -> (JobStatus, Vec<Value>, Value, u32) {
        let reads_left = Arc::new(AtomicU32::new(0));
        let mut reg = registry();
        reg.register_dyn(ARM.name, Arc::new(Arm(reads_left.clone())));
        let left = reads_left.clone();
        let rig = sim_rig_with(reg, move |mut b| {
            b.kube = Arc::new(KubeTap {
                inner: b.kube.clone(),
                before_apply: None,
                after_get: Some(Box::new(move |r, obj| disturb(&left, failing, r, obj))),
            });
            b
        })
        .await;
        let req = sample_request("handover", 1, 0);
        let mut plan = jobs::provision_plan(&req);
        let at = plan.phases.iter().position(|p| p.id == super::PHASE).unwrap();
        plan.phases.truncate(at + 1);
        let kit = plan.phases.last_mut().unwrap();
        let mut b = cz_engine::PhaseBuilder::new(super::PHASE);
        b.step("arm", ARM, &["flux"], ());
        kit.nodes.extend(b.build().nodes);
        let handover = kit.nodes.iter_mut().find(|n| n.id.ends_with("/handover")).unwrap();
        handover.depends_on.push(format!("{}/arm", super::PHASE));
        let (_, job) = rig.submit_plan(&req, &plan, JobOptions::default()).await;
        let status = rig.drive(job).await;
        let kit_events = rig.events(job, "kit").await;
        let left = reads_left.load(Ordering::SeqCst);
        assert!(left < 3, "the hand-over read Flux while disturbed");
        (status, kit_events, rig.stop_reason(job).await, left)
    }

    /// Flux still rolling out when the hand-over starts is waited for, as
    /// any component's install is; the hand-over then goes through.
    #[tokio::test]
    async fn the_hand_over_waits_for_a_component_that_is_rolling_out() {
        let (status, events, stop, left) = hand_over_a_disturbed_flux(false).await;
        assert_eq!(status, JobStatus::Succeeded, "{stop}");
        assert_eq!(left, 0, "it read Flux rolling out three times, and waited");
        let seen = |state: &str| {
            events.iter().any(|e| {
                e["step"] == "bootstrap-kit/handover"
                    && e["component"] == "flux"
                    && e["state"] == state
                    && (state != "installing"
                        || e["message"].as_str().unwrap_or("").contains("0 of 1 updated"))
            })
        };
        assert!(seen("installing"), "the hand-over saw the rollout: {events:#?}");
        assert!(seen("handed-over"), "{events:#?}");
    }

    /// A failing component is not handed over: the job pauses at once,
    /// with the component, its condition and the message.
    #[tokio::test]
    async fn the_hand_over_stops_at_a_failing_component() {
        let (status, _, stop, left) = hand_over_a_disturbed_flux(true).await;
        assert_eq!(status, JobStatus::Paused);
        assert_eq!(left, 2, "it stopped at the first failing read");
        assert_eq!(stop["step"], "bootstrap-kit/handover");
        let e = &stop["error"];
        assert_eq!(
            (e["kind"].as_str(), e["component"].as_str()),
            (Some("unhealthy"), Some("flux"))
        );
        assert_eq!(e["condition"], "UpgradeFailed");
        assert_eq!(e["bound_s"], 0);
        assert!(e["message"].as_str().unwrap().contains("timed out"), "{e}");
    }
}
