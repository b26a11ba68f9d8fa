//! Readiness probes of the kit's components (`[components.probe]` in
//! `bootstrap-kit/release.toml`).
//!
//! A component is healthy when its HelmRelease is `Ready` for its current
//! generation **and** everything its probe names is: workloads rolled out
//! and available (what `kubectl rollout status` checks), CRDs
//! `Established`, pods running, a Service answering through the API
//! server's proxy. A release Flux is still retrying, or a workload still
//! starting, is [`Health::Waiting`]; a crash-looping pod or a chart that
//! cannot be pulled is [`Health::Failing`]. Neither is final: the caller
//! waits up to its bound, then reports the last one seen.

use serde_json::Value;

use crate::release::{Pin, Probe};
use cz_adapters::{KubeApi, ObjectRef};
use cz_engine::StepResult;
use cz_state::SecretString;

/// What a probe saw.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Health {
    Healthy,
    /// Not there yet, nothing wrong seen.
    Waiting {
        condition: String,
        message: String,
    },
    /// Something is failing (Flux or the kubelet retry it).
    Failing {
        condition: String,
        message: String,
    },
}

impl Health {
    fn waiting(condition: &str, message: impl Into<String>) -> Health {
        Health::Waiting { condition: condition.to_owned(), message: message.into() }
    }

    fn failing(condition: &str, message: impl Into<String>) -> Health {
        Health::Failing { condition: condition.to_owned(), message: message.into() }
    }

    /// `installing` / `failing` / `healthy`, as the job's events say it.
    pub fn state(&self) -> &'static str {
        match self {
            Health::Healthy => "healthy",
            Health::Waiting { .. } => "installing",
            Health::Failing { .. } => "failing",
        }
    }
}

fn s<'a>(v: &'a Value, ptr: &str) -> &'a str {
    v.pointer(ptr).and_then(Value::as_str).unwrap_or_default()
}

fn i(v: &Value, ptr: &str) -> i64 {
    v.pointer(ptr).and_then(Value::as_i64).unwrap_or(0)
}

/// Reasons Flux reports when an attempt failed; it retries them
/// (`remediation.retries`), so they are failing, not final.
const HR_FAILED: [&str; 5] =
    ["InstallFailed", "UpgradeFailed", "ChartPullError", "ChartLoadError", "ArtifactFailed"];

/// What a HelmRelease's `Ready` condition says.
pub fn helm_release(hr: &Value) -> Health {
    let Some(c) = hr
        .pointer("/status/conditions")
        .and_then(Value::as_array)
        .and_then(|cs| cs.iter().find(|c| c["type"] == "Ready"))
    else {
        return Health::waiting("NotReconciled", "Flux has not reconciled the HelmRelease yet");
    };
    let reason = s(c, "/reason");
    let message = match s(c, "/message") {
        "" => reason,
        m => m,
    };
    let current = hr.pointer("/status/observedGeneration") == hr.pointer("/metadata/generation");
    match s(c, "/status") {
        "True" if current => Health::Healthy,
        "True" => Health::waiting("Progressing", "Flux has not reconciled the latest spec yet"),
        "False" if HR_FAILED.contains(&reason) => Health::failing(reason, message),
        _ => Health::waiting(if reason.is_empty() { "Progressing" } else { reason }, message),
    }
}

/// `kubectl rollout status` for a Deployment, StatefulSet or DaemonSet:
/// `None` when fully rolled out and available, else what is missing.
pub fn rollout(w: &Value) -> Option<String> {
    let kind = s(w, "/kind");
    let name = format!("{kind} {}/{}", s(w, "/metadata/namespace"), s(w, "/metadata/name"));
    if i(w, "/status/observedGeneration") < i(w, "/metadata/generation") {
        return Some(format!("{name}: the controller has not observed the latest spec"));
    }
    let (want, updated, ready) = match kind {
        "DaemonSet" => (
            i(w, "/status/desiredNumberScheduled"),
            i(w, "/status/updatedNumberScheduled"),
            i(w, "/status/numberAvailable"),
        ),
        "StatefulSet" => (
            w.pointer("/spec/replicas").and_then(Value::as_i64).unwrap_or(1),
            i(w, "/status/updatedReplicas"),
            i(w, "/status/readyReplicas"),
        ),
        _ => (
            w.pointer("/spec/replicas").and_then(Value::as_i64).unwrap_or(1),
            i(w, "/status/updatedReplicas"),
            i(w, "/status/availableReplicas"),
        ),
    };
    if updated < want {
        return Some(format!("{name}: {updated} of {want} updated"));
    }
    if ready < want {
        return Some(format!("{name}: {ready} of {want} available"));
    }
    if kind == "StatefulSet"
        && w.pointer("/status/updateRevision").is_some()
        && w.pointer("/status/currentRevision") != w.pointer("/status/updateRevision")
    {
        return Some(format!("{name}: revision update in progress"));
    }
    None
}

/// Container states that mean a pod will not come up by itself soon.
const POD_FAILING: [&str; 6] = [
    "CrashLoopBackOff",
    "ImagePullBackOff",
    "ErrImagePull",
    "CreateContainerConfigError",
    "CreateContainerError",
    "InvalidImageName",
];

/// The first failing container among `pods`, as (reason, message).
fn pod_failure(pods: &[Value]) -> Option<(String, String)> {
    for p in pods {
        for c in
            p.pointer("/status/containerStatuses").and_then(Value::as_array).into_iter().flatten()
        {
            let reason = s(c, "/state/waiting/reason");
            if POD_FAILING.contains(&reason) {
                let msg = format!(
                    "pod {}/{} container {}: {reason} (restarts {}): {}",
                    s(p, "/metadata/namespace"),
                    s(p, "/metadata/name"),
                    s(c, "/name"),
                    i(c, "/restartCount"),
                    s(c, "/state/waiting/message")
                );
                return Some((reason.to_owned(), msg));
            }
        }
    }
    None
}

async fn pods(
    kube: &dyn KubeApi,
    kc: &SecretString,
    namespace: &str,
    selector: &str,
) -> StepResult<Vec<Value>> {
    let all = kube.list(kc, "v1", "Pod", selector).await?;
    Ok(all.into_iter().filter(|p| s(p, "/metadata/namespace") == namespace).collect())
}

fn selector_of(w: &Value) -> String {
    w.pointer("/spec/selector/matchLabels")
        .and_then(Value::as_object)
        .map(|m| {
            m.iter()
                .map(|(k, v)| format!("{k}={}", v.as_str().unwrap_or_default()))
                .collect::<Vec<_>>()
                .join(",")
        })
        .unwrap_or_default()
}

/// The probe of `pin` (with its HelmRelease when `release` is given).
pub async fn probe(
    kube: &dyn KubeApi,
    kc: &SecretString,
    pin: &Pin,
    release: Option<&ObjectRef>,
) -> StepResult<Health> {
    if let Some(r) = release {
        match kube.get(kc, r).await? {
            None => {
                return Ok(Health::waiting(
                    "NotFound",
                    format!("HelmRelease {} is absent", r.name),
                ));
            }
            Some(hr) => match helm_release(&hr) {
                Health::Healthy => {}
                other => return Ok(other),
            },
        }
    }
    probe_objects(kube, kc, &pin.namespace, &pin.probe).await
}

/// The probe's objects only (Flux before any HelmRelease can exist).
pub async fn probe_objects(
    kube: &dyn KubeApi,
    kc: &SecretString,
    ns: &str,
    probe: &Probe,
) -> StepResult<Health> {
    for crd in &probe.crds {
        let r = ObjectRef {
            api_version: "apiextensions.k8s.io/v1".into(),
            kind: "CustomResourceDefinition".into(),
            namespace: None,
            name: crd.clone(),
        };
        match kube.get(kc, &r).await? {
            None => {
                return Ok(Health::waiting("NotFound", format!("CRD {crd} does not exist yet")));
            }
            Some(c) => {
                let established =
                    c.pointer("/status/conditions").and_then(Value::as_array).is_some_and(|cs| {
                        cs.iter().any(|c| c["type"] == "Established" && c["status"] == "True")
                    });
                if !established {
                    return Ok(Health::waiting(
                        "Established=False",
                        format!("CRD {crd} is not Established"),
                    ));
                }
            }
        }
    }
    for w in &probe.workloads {
        let (kind, name) = w.split_once('/').unwrap_or(("Deployment", w));
        let r = ObjectRef {
            api_version: "apps/v1".into(),
            kind: kind.into(),
            namespace: Some(ns.into()),
            name: name.into(),
        };
        let Some(obj) = kube.get(kc, &r).await? else {
            return Ok(Health::waiting(
                "NotFound",
                format!("{kind} {ns}/{name} does not exist yet"),
            ));
        };
        if let Some(missing) = rollout(&obj) {
            let ps = pods(kube, kc, ns, &selector_of(&obj)).await?;
            return Ok(match pod_failure(&ps) {
                Some((reason, msg)) => Health::failing(&reason, format!("{missing}; {msg}")),
                None => Health::waiting("Unavailable", missing),
            });
        }
    }
    if let Some(pp) = &probe.pods {
        let ps = pods(kube, kc, ns, &pp.selector).await?;
        if let Some((reason, msg)) = pod_failure(&ps) {
            return Ok(Health::failing(&reason, msg));
        }
        let running = ps.iter().filter(|p| s(p, "/status/phase") == "Running").count();
        if running < pp.min {
            return Ok(Health::waiting(
                "Unavailable",
                format!("{running} of {} pods `{}` in {ns} running", pp.min, pp.selector),
            ));
        }
    }
    if let Some(h) = &probe.http {
        let (code, body) = kube.service_get(kc, ns, &h.service, h.port, &h.path).await?;
        if !h.expect.contains(&code) {
            let mut body = body.replace('\n', " ");
            body.truncate(200);
            return Ok(Health::waiting(
                "NotAnswering",
                format!(
                    "GET {}:{}{} in {ns} answered {code} (expected {:?}): {body}",
                    h.service, h.port, h.path, h.expect
                ),
            ));
        }
    }
    Ok(Health::Healthy)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn a_release_flux_retries_is_failing_and_an_old_generation_is_not_ready() {
        let hr = |status: &str, reason: &str, observed: i64| {
            json!({"metadata": {"generation": 2}, "status": {"observedGeneration": observed,
                "conditions": [{"type": "Ready", "status": status, "reason": reason, "message": "m"}]}})
        };
        assert_eq!(helm_release(&hr("True", "InstallSucceeded", 2)), Health::Healthy);
        assert_eq!(helm_release(&hr("True", "InstallSucceeded", 1)).state(), "installing");
        assert_eq!(helm_release(&hr("False", "InstallFailed", 2)).state(), "failing");
        assert_eq!(helm_release(&hr("False", "DependencyNotReady", 2)).state(), "installing");
        assert_eq!(helm_release(&hr("Unknown", "Progressing", 2)).state(), "installing");
        assert_eq!(helm_release(&json!({})).state(), "installing");
    }

    #[test]
    fn rollout_reads_status_as_kubectl_does() {
        let d = |obs: i64, avail: i64| {
            json!({"kind": "Deployment", "metadata": {"name": "d", "namespace": "n", "generation": 2},
                   "spec": {"replicas": 3},
                   "status": {"observedGeneration": obs, "updatedReplicas": 3, "availableReplicas": avail}})
        };
        assert_eq!(rollout(&d(2, 3)), None);
        assert!(rollout(&d(1, 3)).unwrap().contains("not observed"));
        assert!(rollout(&d(2, 1)).unwrap().contains("1 of 3 available"));
        let ds = json!({"kind": "DaemonSet", "metadata": {"name": "c", "namespace": "k", "generation": 1},
            "status": {"observedGeneration": 1, "desiredNumberScheduled": 5, "updatedNumberScheduled": 5, "numberAvailable": 4}});
        assert!(rollout(&ds).unwrap().contains("4 of 5"));
    }
}
