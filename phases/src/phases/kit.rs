//! Phase 5, `bootstrap-kit`: the 12 components as Flux HelmReleases.
//!
//! One node per selected component, with the kit's `dependsOn` graph as the
//! DAG, so independent components install concurrently and each waits only
//! for what it needs. A component is applied by server-side apply under one
//! field manager and is done when its readiness probe passes — HelmRelease
//! `Ready=True` is necessary, not sufficient (F-28, F-41). `verify` checks
//! the expected set from the release manifest: zero observed is not done
//! (F-37). A release Flux is still retrying is `installing`, not failed.
//!
//! The objects are rendered from `bootstrap-kit/` ([`super::kit_render`]).
//!
//! TODO(bootstrap-kit issue): the real Kubernetes adapter and its fake API
//! server, per-component workload probes (Deployments/StatefulSets,
//! PowerDNS API, OpenBao pods), prune by label.

use std::time::Duration;

use serde_json::{Value, json};

use super::kit_render::{KitInput, Rendered, render_component};
use super::{FIELD_MANAGER, action, cluster::kubeconfig_for, fqdn, no_undo, release, slug};
use crate::adapters::ObjectRef;
use crate::plan::{PhaseBuilder, PhaseDef};
use crate::step::{Registry, StepCtx, StepResult};
use crate::{Cause, StepError, System};

pub const PHASE: &str = "bootstrap-kit";

pub fn register(r: &mut Registry) {
    r.register("kit.sources", action!(sources, sources_undo));
    r.register("kit.component", action!(component, component_undo));
    r.register("kit.verify", action!(verify, no_undo));
}

/// `components`: the selection (already closed under dependencies).
pub fn phase(components: &[String], location: &str, regional: bool) -> PhaseDef {
    let mut b = PhaseBuilder::new(PHASE);
    let base = json!({ "location": location, "components": components, "regional": regional });
    b.step("sources", "kit.sources", &[], base.clone());
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
    let all: Vec<&str> = components.iter().map(String::as_str).collect();
    b.step("verify", "kit.verify", &all, base);
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

/// What a HelmRelease's Ready condition says.
#[derive(Debug, PartialEq)]
enum HrState {
    Ready,
    Installing(String),
    Failed(String),
}

fn hr_state(obj: &Value) -> HrState {
    let cond = obj
        .pointer("/status/conditions")
        .and_then(Value::as_array)
        .and_then(|cs| cs.iter().find(|c| c["type"] == "Ready"));
    let Some(c) = cond else { return HrState::Installing("no Ready condition yet".into()) };
    let reason = c["reason"].as_str().unwrap_or_default();
    let msg = c["message"].as_str().unwrap_or(reason).to_owned();
    match c["status"].as_str() {
        Some("True") => HrState::Ready,
        // Flux retries these (remediation.retries): still installing until
        // the bound says otherwise (F-41).
        Some("False")
            if matches!(
                reason,
                "InstallFailed" | "UpgradeFailed" | "ChartPullError" | "ArtifactFailed"
            ) =>
        {
            HrState::Failed(format!("{reason}: {msg}"))
        }
        _ => HrState::Installing(format!("{reason}: {msg}")),
    }
}

async fn component(cx: &StepCtx) -> StepResult<Value> {
    let kc = kubeconfig_for(cx, &cx.param::<String>("location")?).await?;
    let p = pin_of(&cx.param::<String>("component")?)?;
    let r = rendered(cx, p)?;
    let mut objs: Vec<Value> = r.namespace.into_iter().collect();
    objs.push(r.helm_release);
    cx.backend.kube.apply(&kc, FIELD_MANAGER, &objs).await?;
    let r = hr_ref(p);
    let last_failure: std::sync::Mutex<Option<String>> = std::sync::Mutex::new(None);
    let res = cx
        .wait_for(&format!("{} to become Ready", p.release), Duration::from_secs(1800), || async {
            let obj = cx.backend.kube.get(&kc, &r).await?;
            match obj.as_ref().map(hr_state) {
                Some(HrState::Ready) => Ok(Some(())),
                Some(HrState::Failed(m)) => {
                    *last_failure.lock().expect("lock") = Some(m);
                    Ok(None)
                }
                _ => Ok(None),
            }
        })
        .await;
    match res {
        Ok(()) => {
            Ok(json!({ "release": p.release, "version": p.version, "namespace": p.namespace }))
        }
        Err(StepError::Timeout { reason, bound_s }) => {
            match last_failure.into_inner().expect("lock") {
                Some(m) => Err(StepError::adapter(
                    System::Kubernetes,
                    format!("component {}", p.component),
                    Cause::CommandFailed,
                    format!("{} kept failing for {bound_s}s: {m}", p.release),
                )),
                None => Err(StepError::Timeout { reason, bound_s }),
            }
        }
        Err(e) => Err(e),
    }
}

async fn component_undo(cx: &StepCtx) -> StepResult<()> {
    let Ok(kc) = kubeconfig_for(cx, &cx.param::<String>("location")?).await else { return Ok(()) };
    let p = pin_of(&cx.param::<String>("component")?)?;
    cx.backend.kube.delete(&kc, &hr_ref(p)).await
}

async fn verify(cx: &StepCtx) -> StepResult<Value> {
    let kc = kubeconfig_for(cx, &cx.param::<String>("location")?).await?;
    let comps: Vec<String> = cx.param("components")?;
    let listed = cx
        .backend
        .kube
        .list(
            &kc,
            "helm.toolkit.fluxcd.io/v2",
            "HelmRelease",
            "app.kubernetes.io/managed-by=catalyst-zero",
        )
        .await?;
    let mut missing = Vec::new();
    for c in &comps {
        let p = pin_of(c)?;
        let found = listed.iter().find(|o| {
            o.pointer("/metadata/name").and_then(Value::as_str) == Some(p.release.as_str())
        });
        match found.map(hr_state) {
            Some(HrState::Ready) => {}
            Some(s) => missing.push(format!("{}: {s:?}", p.release)),
            None => missing.push(format!("{}: not found", p.release)),
        }
    }
    if comps.is_empty() || !missing.is_empty() {
        return Err(StepError::adapter(
            System::Kubernetes,
            "verify kit",
            Cause::NotFound,
            format!(
                "expected {} components healthy; not healthy: {}",
                comps.len(),
                missing.join(", ")
            ),
        ));
    }
    Ok(json!({ "healthy": comps }))
}
