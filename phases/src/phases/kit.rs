//! Phase 5, `bootstrap-kit`: the 12 components as Flux HelmReleases.
//!
//! Steps:
//! 1. `flux-bootstrap`: Flux itself, as a K3s `HelmChart` of the chart
//!    bp-flux wraps, at its version and with bp-flux's values (F-35), so
//!    the HelmReleases have controllers; done when Flux's CRDs are
//!    Established and its controllers available (bp-flux's probe).
//! 2. `sources`: every selected component's HelmRepository.
//! 3. one step per component, with the kit's `dependsOn` graph as the DAG
//!    (independent components install concurrently): its Namespace and
//!    HelmRelease by server-side apply under one field manager, then its
//!    readiness probe ([`super::kit_probe`]): HelmRelease `Ready` is
//!    necessary, not sufficient (F-28, F-41). A release Flux is still
//!    retrying is `installing` or `failing` in the job's `kit` events;
//!    only past the bound is it `needs-operator`
//!    ([`StepError::Unhealthy`], the component named, with its runbook).
//! 4. `handover`: once bp-cilium and bp-flux are healthy, the K3s
//!    HelmCharts that first installed them are removed without an
//!    uninstall (marked `helmcharts.helm.cattle.io/unmanaged`, then
//!    deleted), so one installer owns each release (F-35).
//! 5. `prune`: what an earlier run of this Sovereign's kit applied to the
//!    cluster and the selection no longer has (by label) is deleted:
//!    HelmRelease first (Flux uninstalls it), then its source and
//!    Namespace.
//! 6. `verify`: every **expected** component (the selection from the
//!    release manifest) healthy by its probe, again, from a fresh read
//!    (F-37: zero observed is not done; F-39: level, not edges).
//!
//! Every wait is bounded by `Bounds::kit_component`. Waits on one object
//! are watches ([`crate::adapters::KubeApi::wait_until`]); a probe reads
//! several objects (a release, its workloads, their pods, CRDs), so it is
//! re-run at the backend's `poll` interval and reports each change. The objects are rendered from
//! `bootstrap-kit/` ([`super::kit_render`]).

use serde_json::{Value, json};

use super::kit_probe::{Health, probe, probe_objects};
use super::kit_render::{KitInput, Rendered, render_component, values_text};
use super::{FIELD_MANAGER, action, cluster::kubeconfig_for, fqdn, no_undo, release, slug};
use crate::adapters::{ObjectRef, Until};
use crate::plan::{PhaseBuilder, PhaseDef};
use crate::step::{Registry, StepCtx, StepResult};
use crate::{Cause, StepError, System};

pub const PHASE: &str = "bootstrap-kit";

pub fn register(r: &mut Registry) {
    r.register("kit.flux", action!(flux_bootstrap, flux_bootstrap_undo));
    r.register("kit.sources", action!(sources, sources_undo));
    r.register("kit.component", action!(component, component_undo));
    r.register("kit.handover", action!(handover, no_undo));
    r.register("kit.prune", action!(prune, no_undo));
    r.register("kit.verify", action!(verify, no_undo));
}

/// The labels every object the kit applies carries.
const MANAGED: &str = "app.kubernetes.io/managed-by=catalyst-zero";
const SOVEREIGN_LABEL: &str = "catalyst.openova.io/sovereign";
const COMPONENT_LABEL: &str = "catalyst.openova.io/component";

/// `components`: the selection (already closed under dependencies).
pub fn phase(components: &[String], location: &str, regional: bool) -> PhaseDef {
    let mut b = PhaseBuilder::new(PHASE);
    let base = json!({ "location": location, "components": components, "regional": regional });
    b.step("flux-bootstrap", "kit.flux", &[], base.clone());
    b.step("sources", "kit.sources", &["flux-bootstrap"], base.clone());
    for p in release::pins().iter().filter(|p| components.contains(&p.component)) {
        let deps: Vec<&str> = p
            .depends_on
            .iter()
            .map(String::as_str)
            .filter(|d| components.iter().any(|c| c == d))
            .collect();
        let mut after = vec!["sources"];
        after.extend(deps.iter().copied());
        b.step(
            &p.component,
            "kit.component",
            &after,
            json!({ "location": location, "component": p.component, "depends_on": deps }),
        );
    }
    // The first installers' records go once their blueprint owns the release.
    let handed: Vec<&str> =
        ["cilium", "flux"].into_iter().filter(|c| components.iter().any(|x| x == c)).collect();
    let mut all: Vec<&str> = components.iter().map(String::as_str).collect();
    all.push("sources");
    if !handed.is_empty() {
        b.step(
            "handover",
            "kit.handover",
            &handed,
            json!({ "location": location, "components": handed }),
        );
        all.push("handover");
    }
    b.step("prune", "kit.prune", &all, base.clone());
    b.step("verify", "kit.verify", &["prune"], base);
    b.build()
}

/// What the kit is rendered for: this Sovereign, and the API address
/// Cilium was installed with by the `cluster` phase.
fn kit_input(cx: &StepCtx) -> StepResult<KitInput> {
    let loc: String = cx.param("location")?;
    let fqdn = fqdn(cx)?;
    let cilium: Value = cx.lookup(&format!("cluster/cilium-{loc}"))?;
    let api_host = cilium["k8s_service_host"].as_str().unwrap_or_default().to_owned();
    Ok(KitInput { sovereign: slug(&fqdn), fqdn, api_host })
}

fn rendered(cx: &StepCtx, p: &release::Pin) -> StepResult<Rendered> {
    render_component(p, &kit_input(cx)?).map_err(|e| {
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

async fn sources(cx: &StepCtx) -> StepResult<Value> {
    let kc = kubeconfig_for(cx, &cx.param::<String>("location")?).await?;
    let comps: Vec<String> = cx.param("components")?;
    let mut objs = Vec::new();
    for c in &comps {
        objs.push(rendered(cx, pin_of(c)?)?.source);
    }
    cx.backend.kube.apply(&kc, FIELD_MANAGER, &objs).await?;
    Ok(json!({ "sources": objs.len() }))
}

async fn sources_undo(cx: &StepCtx) -> StepResult<()> {
    let Ok(kc) = kubeconfig_for(cx, &cx.param::<String>("location")?).await else { return Ok(()) };
    for c in cx.param::<Vec<String>>("components")? {
        let p = pin_of(&c)?;
        let r = ObjectRef {
            api_version: "source.toolkit.fluxcd.io/v1".into(),
            kind: "HelmRepository".into(),
            namespace: Some("flux-system".into()),
            name: p.release.clone(),
        };
        cx.backend.kube.delete(&kc, &r).await?;
    }
    Ok(())
}

/// Waits until `check` says healthy, within the kit bound; reports each
/// change of state as a `kit` event; past the bound, the last state seen
/// is the error, naming the component.
async fn wait_healthy<F, Fut>(cx: &StepCtx, component: &str, check: F) -> StepResult<()>
where
    F: Fn() -> Fut,
    Fut: Future<Output = StepResult<Health>>,
{
    let bound = cx.backend.bounds.kit_component;
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
/// the same version (F-35): the HelmChart is marked
/// `helmcharts.helm.cattle.io/unmanaged` so K3s's helm-controller leaves
/// it alone, then deleted, which then runs no uninstall
/// (k3s-io/helm-controller#137; deleting it as it is, or only removing its
/// finalizer, would uninstall Cilium or Flux). The component must still
/// be healthy afterwards.
async fn handover(cx: &StepCtx) -> StepResult<Value> {
    let kc = kubeconfig_for(cx, &cx.param::<String>("location")?).await?;
    let kube = cx.backend.kube.as_ref();
    let mut done = Vec::new();
    for c in cx.param::<Vec<String>>("components")? {
        let p = pin_of(&c)?;
        let hr = hr_ref(p);
        let r = helm_chart_ref(&p.component);
        if kube.get(&kc, &r).await?.is_none() {
            continue;
        }
        // Only a release its blueprint already owns is handed over.
        match probe(kube, &kc, p, Some(&hr)).await? {
            Health::Healthy => {}
            Health::Waiting { condition, message } | Health::Failing { condition, message } => {
                return Err(StepError::Unhealthy { component: c, condition, message, bound_s: 0 });
            }
        }
        let mark = json!({ "apiVersion": r.api_version, "kind": r.kind,
            "metadata": { "name": r.name, "namespace": "kube-system",
                          "annotations": { "helmcharts.helm.cattle.io/unmanaged": "true" } } });
        kube.apply(&kc, HANDOVER_MANAGER, &[mark]).await?;
        kube.delete(&kc, &r).await?;
        kube.wait_until(&kc, &r, Until::Deleted, cx.backend.bounds.kit_component).await?;
        wait_healthy(cx, &c, || probe(kube, &kc, p, Some(&hr))).await?;
        cx.event("kit", json!({ "component": c, "state": "handed-over",
            "from": format!("HelmChart kube-system/{}", r.name), "to": format!("HelmRelease flux-system/{}", p.release) }))
            .await?;
        done.push(c);
    }
    Ok(json!({ "handed_over": done }))
}

/// Flux, so that HelmReleases have controllers: a K3s HelmChart of the
/// chart and version bp-flux wraps, with bp-flux's own values, released as
/// `flux` in `flux-system` (bp-flux's release name and namespace), so that
/// bp-flux later upgrades this release in place instead of installing a
/// second Flux (F-35).
async fn flux_bootstrap(cx: &StepCtx) -> StepResult<Value> {
    let kc = kubeconfig_for(cx, &cx.param::<String>("location")?).await?;
    let input = kit_input(cx)?;
    let pin = pin_of("flux")?;
    // Once bp-flux owns Flux (after `handover`), a second run must not bring
    // the first installer back: it would manage the same release again.
    let kube = cx.backend.kube.as_ref();
    if let Some(hr) = kube.get(&kc, &hr_ref(pin)).await?
        && super::kit_probe::helm_release(&hr) == Health::Healthy
    {
        wait_healthy(cx, "flux", || probe_objects(kube, &kc, &pin.namespace, &pin.probe)).await?;
        return Ok(json!({ "owned_by": pin.release, "flux": release::flux_version() }));
    }
    kube.apply(&kc, FIELD_MANAGER, &flux_install(&input)?).await?;
    wait_healthy(cx, "flux", || probe_objects(kube, &kc, &pin.namespace, &pin.probe)).await?;
    let (chart, _, version) = release::flux_chart();
    Ok(json!({ "chart": chart, "version": version, "flux": release::flux_version() }))
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
    let Ok(kc) = kubeconfig_for(cx, &cx.param::<String>("location")?).await else { return Ok(()) };
    cx.backend.kube.delete(&kc, &helm_chart_ref("flux")).await
}

async fn component(cx: &StepCtx) -> StepResult<Value> {
    let kc = kubeconfig_for(cx, &cx.param::<String>("location")?).await?;
    let p = pin_of(&cx.param::<String>("component")?)?;
    let r = rendered(cx, p)?;
    let mut objs: Vec<Value> = r.namespace.into_iter().collect();
    objs.push(r.helm_release);
    cx.backend.kube.apply(&kc, FIELD_MANAGER, &objs).await?;
    let hr = hr_ref(p);
    let kube = cx.backend.kube.as_ref();
    wait_healthy(cx, &p.component, || probe(kube, &kc, p, Some(&hr))).await?;
    Ok(json!({ "release": p.release, "version": p.version, "namespace": p.namespace }))
}

async fn component_undo(cx: &StepCtx) -> StepResult<()> {
    let Ok(kc) = kubeconfig_for(cx, &cx.param::<String>("location")?).await else { return Ok(()) };
    let p = pin_of(&cx.param::<String>("component")?)?;
    cx.backend.kube.delete(&kc, &hr_ref(p)).await?;
    if rendered(cx, p)?.namespace.is_some() {
        cx.backend.kube.delete(&kc, &namespace_ref(&p.namespace)).await?;
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
async fn prune(cx: &StepCtx) -> StepResult<Value> {
    let kc = kubeconfig_for(cx, &cx.param::<String>("location")?).await?;
    let wanted: Vec<String> = cx.param("components")?;
    let sel = format!("{MANAGED},{SOVEREIGN_LABEL}={}", slug(&fqdn(cx)?));
    let kinds = [
        ("helm.toolkit.fluxcd.io/v2", "HelmRelease"),
        ("source.toolkit.fluxcd.io/v1", "HelmRepository"),
        ("v1", "Namespace"),
    ];
    let mut pruned = Vec::new();
    for (api_version, kind) in kinds {
        let unwanted: Vec<ObjectRef> = cx
            .backend
            .kube
            .list(&kc, api_version, kind, &sel)
            .await?
            .iter()
            .filter(|o| {
                let c =
                    o.pointer(&format!("/metadata/labels/{}", COMPONENT_LABEL.replace('/', "~1")));
                c.and_then(Value::as_str).is_some_and(|c| !wanted.iter().any(|w| w == c))
            })
            .filter_map(ObjectRef::of)
            .collect();
        for r in &unwanted {
            cx.event("kit", json!({ "state": "pruning", "kind": kind, "name": r.name })).await?;
            cx.backend.kube.delete(&kc, r).await?;
            if kind == "HelmRelease" {
                let bound = cx.backend.bounds.kit_component;
                cx.backend.kube.wait_until(&kc, r, Until::Deleted, bound).await?;
            }
            pruned.push(format!("{kind}/{}", r.name));
        }
    }
    Ok(json!({ "pruned": pruned }))
}

async fn verify(cx: &StepCtx) -> StepResult<Value> {
    let kc = kubeconfig_for(cx, &cx.param::<String>("location")?).await?;
    let comps: Vec<String> = cx.param("components")?;
    if comps.is_empty() {
        return Err(StepError::adapter(
            System::Kubernetes,
            "verify kit",
            Cause::NotFound,
            "no component is expected: an empty kit is not a healthy one",
        ));
    }
    let kube = cx.backend.kube.as_ref();
    for c in &comps {
        let p = pin_of(c)?;
        let hr = hr_ref(p);
        wait_healthy(cx, c, || probe(kube, &kc, p, Some(&hr))).await?;
    }
    Ok(json!({ "healthy": comps }))
}
