//! Simulated controllers for [`FakeKube`]: what a K3s cluster with the kit
//! does on its own, so the kit phase's waits and probes meet the behaviour
//! they are written for. Level-triggered (each pass reads the stored
//! objects and writes only what differs), one pass per `tick`:
//!
//! - **K3s helm-controller**: a `HelmChart` (helm.cattle.io/v1) installs
//!   its chart ([`crate::charts`]) into `spec.targetNamespace`
//!   (`createNamespace` creates it) and records `status.jobName`.
//! - **Flux source- and helm-controller**, only while Flux runs (its CRDs
//!   Established, `source-controller` and `helm-controller` available):
//!   `HelmRepository` → `Ready=True`; a `HelmRelease` waits for each
//!   `dependsOn` (`Ready=False`, `DependencyNotReady`), needs its source
//!   (`ArtifactFailed`) and its target namespace (`InstallFailed`, as Helm
//!   says it), refuses to take over objects of another release (Helm's
//!   "invalid ownership metadata"), reports `Progressing`, then installs
//!   the chart's objects (labelled `helm.toolkit.fluxcd.io/name`) and
//!   reports `InstallSucceeded`.
//! - **Finalizers**, as the real controllers set them: a HelmChart
//!   (`wrangler.cattle.io/on-helm-chart-remove`) or HelmRelease
//!   (`finalizers.fluxcd.io`) being deleted first has its release
//!   uninstalled (workloads and Services; CRDs stay, as Helm leaves them).
//!   A finalizer removed by someone else is put back (K3s processes the
//!   deletion anyway). A HelmChart annotated
//!   `helmcharts.helm.cattle.io/unmanaged: "true"` is left alone and
//!   deleted without an uninstall: how K3s hands a release over to another
//!   tool (k3s-io/helm-controller#137), here to Flux.
//! - **Workloads**: Deployments, StatefulSets and DaemonSets get pods
//!   (labels from `spec.selector`) and the status `kubectl rollout status`
//!   reads; pods of a deleted workload are collected.
//!
//! Failure injection: [`FakeKube::fail_chart_pull`] (`ArtifactFailed` with
//! the registry's refusal, retried by Flux forever),
//! [`FakeKube::crash_loop`] (pods `Running`, container waiting in
//! `CrashLoopBackOff` with a growing restart count),
//! [`FakeKube::never_establish`]; [`FakeKube::heal`] clears them.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use serde_json::{Value, json};

use super::kube::FakeKube;
use crate::charts::{self, Chart};

const HR_GROUP: &str = "helm.toolkit.fluxcd.io";

/// How fast the simulated cluster moves.
#[derive(Clone, Copy, Debug)]
pub struct Pace {
    /// Between two passes.
    pub tick: Duration,
    /// From a change being seen to it taking effect (an install, pods
    /// starting).
    pub latency: Duration,
}

impl Default for Pace {
    fn default() -> Self {
        Pace { tick: Duration::from_millis(25), latency: Duration::from_millis(100) }
    }
}

impl FakeKube {
    /// Starts the simulated controllers; they run until the runtime ends.
    pub fn run_controllers(&self, pace: Pace) -> tokio::task::JoinHandle<()> {
        let fake = self.clone();
        tokio::spawn(async move {
            let mut seen = Seen::default();
            loop {
                reconcile(&fake, pace, &mut seen);
                tokio::time::sleep(pace.tick).await;
            }
        })
    }
}

/// When each change was first seen (object key + generation).
#[derive(Default)]
struct Seen(HashMap<String, Instant>);

impl Seen {
    /// Whether `latency` has passed since `key` was first seen.
    fn due(&mut self, key: String, latency: Duration) -> bool {
        self.0.entry(key).or_insert_with(Instant::now).elapsed() >= latency
    }
}

fn s<'a>(v: &'a Value, ptr: &str) -> &'a str {
    v.pointer(ptr).and_then(Value::as_str).unwrap_or_default()
}

fn key_of(o: &Value) -> String {
    format!(
        "{}/{}/{}/{}",
        s(o, "/kind"),
        s(o, "/metadata/namespace"),
        s(o, "/metadata/name"),
        o.pointer("/metadata/generation").and_then(Value::as_i64).unwrap_or(0)
    )
}

fn condition(o: &Value, ty: &str) -> Option<Value> {
    o.pointer("/status/conditions")?.as_array()?.iter().find(|c| c["type"] == ty).cloned()
}

fn is_true(o: &Value, ty: &str) -> bool {
    condition(o, ty).is_some_and(|c| c["status"] == "True")
}

fn reconcile(fake: &FakeKube, pace: Pace, seen: &mut Seen) {
    helm_charts(fake, pace, seen);
    if flux_running(fake) {
        for repo in fake.objects("source.toolkit.fluxcd.io", "helmrepositories") {
            let ready = json!({"observedGeneration": repo["metadata"]["generation"], "conditions": [
                {"type": "Ready", "status": "True", "reason": "Succeeded", "message": "Helm repository is Ready"}]});
            if repo.get("status") != Some(&ready) {
                fake.set_status(
                    "source.toolkit.fluxcd.io",
                    "helmrepositories",
                    s(&repo, "/metadata/namespace"),
                    s(&repo, "/metadata/name"),
                    ready,
                );
            }
        }
        let releases = fake.objects(HR_GROUP, "helmreleases");
        for hr in &releases {
            helm_release(fake, pace, seen, hr, &releases);
        }
    }
    workloads(fake, pace, seen);
}

/// Flux reconciles only once its CRDs and controllers are up.
fn flux_running(fake: &FakeKube) -> bool {
    let crd_ok = fake
        .get(
            "apiextensions.k8s.io",
            "customresourcedefinitions",
            "",
            "helmreleases.helm.toolkit.fluxcd.io",
        )
        .is_some_and(|c| is_true(&c, "Established"));
    crd_ok
        && ["source-controller", "helm-controller"].iter().all(|d| {
            fake.get("apps", "deployments", "flux-system", d)
                .is_some_and(|o| is_true(&o, "Available"))
        })
}

/// K3s's helm-controller finalizer: deleting a HelmChart uninstalls its
/// release first.
const K3S_FINALIZER: &str = "wrangler.cattle.io/on-helm-chart-remove";
/// Flux's: deleting a HelmRelease uninstalls it first.
const FLUX_FINALIZER: &str = "finalizers.fluxcd.io";

fn finalizers(o: &Value) -> Vec<String> {
    o.pointer("/metadata/finalizers")
        .and_then(Value::as_array)
        .map(|f| f.iter().filter_map(|x| x.as_str().map(str::to_owned)).collect())
        .unwrap_or_default()
}

/// Adds `finalizer` to a live object; `false` if it is being deleted.
fn ensure_finalizer(
    fake: &FakeKube,
    group: &str,
    plural: &str,
    o: &Value,
    finalizer: &str,
) -> bool {
    if o.pointer("/metadata/deletionTimestamp").is_some() {
        return false;
    }
    let mut f = finalizers(o);
    if !f.iter().any(|x| x == finalizer) {
        f.push(finalizer.to_owned());
        let mut o = o.clone();
        o["metadata"]["finalizers"] = json!(f);
        fake.put(group, plural, o);
    }
    true
}

/// Runs the uninstall behind `finalizer` of a deleting object, then
/// removes the finalizer (the API server then removes the object).
fn finalize(
    fake: &FakeKube,
    group: &str,
    plural: &str,
    o: &Value,
    finalizer: &str,
    uninstall: impl FnOnce(),
) {
    if o.pointer("/metadata/deletionTimestamp").is_none()
        || !finalizers(o).iter().any(|f| f == finalizer)
    {
        return;
    }
    uninstall();
    let mut o = o.clone();
    let rest: Vec<String> = finalizers(&o).into_iter().filter(|f| f != finalizer).collect();
    o["metadata"]["finalizers"] = json!(rest);
    fake.put(group, plural, o);
}

/// Deletes a Helm release's workloads and Services (Helm leaves CRDs).
fn uninstall(fake: &FakeKube, owned: impl Fn(&Value) -> bool) {
    for (g, p) in [
        ("apps", "deployments"),
        ("apps", "statefulsets"),
        ("apps", "daemonsets"),
        ("", "services"),
    ] {
        for o in fake.objects(g, p) {
            if owned(&o) {
                fake.remove(g, p, s(&o, "/metadata/namespace"), s(&o, "/metadata/name"));
            }
        }
    }
}

fn helm_charts(fake: &FakeKube, pace: Pace, seen: &mut Seen) {
    for hc in fake.objects("helm.cattle.io", "helmcharts") {
        let name = s(&hc, "/metadata/name").to_owned();
        let target = match s(&hc, "/spec/targetNamespace") {
            "" => s(&hc, "/metadata/namespace"),
            t => t,
        }
        .to_owned();
        // `helmcharts.helm.cattle.io/unmanaged`: the controller leaves the
        // chart alone, and deleting it runs no uninstall.
        let unmanaged = hc
            .pointer("/metadata/annotations/helmcharts.helm.cattle.io~1unmanaged")
            .is_some_and(|v| v == "true");
        finalize(fake, "helm.cattle.io", "helmcharts", &hc, K3S_FINALIZER, || {
            if !unmanaged {
                fake.record_install(format!("uninstall HelmChart/{name}"));
                uninstall(fake, |o| {
                    s(o, "/metadata/annotations/meta.helm.sh~1release-name") == name
                        && s(o, "/metadata/annotations/meta.helm.sh~1release-namespace") == target
                });
            }
        });
        if unmanaged || !ensure_finalizer(fake, "helm.cattle.io", "helmcharts", &hc, K3S_FINALIZER)
        {
            continue;
        }
        if hc.pointer("/status/jobName").is_some() {
            continue;
        }
        if !seen.due(key_of(&hc), pace.latency) {
            continue;
        }
        let name = s(&hc, "/metadata/name");
        let ns = match s(&hc, "/spec/targetNamespace") {
            "" => s(&hc, "/metadata/namespace"),
            t => t,
        };
        if hc.pointer("/spec/createNamespace") == Some(&json!(true))
            && fake.get("", "namespaces", "", ns).is_none()
        {
            fake.put("", "namespaces", json!({"metadata": {"name": ns}}));
        }
        let installed = match charts::chart(s(&hc, "/spec/chart")) {
            Some(chart) if fake.get("", "namespaces", "", ns).is_some() => {
                install(fake, chart, name, ns, &json!({"helm.cattle.io/chart": name})).is_ok()
            }
            _ => false,
        };
        if installed {
            fake.record_install(format!("HelmChart/{name}"));
            let mut st = hc.get("status").cloned().unwrap_or(json!({}));
            st["jobName"] = json!(format!("helm-install-{name}"));
            fake.set_status(
                "helm.cattle.io",
                "helmcharts",
                s(&hc, "/metadata/namespace"),
                name,
                st,
            );
        }
    }
}

fn set_ready(
    fake: &FakeKube,
    hr: &Value,
    status: &str,
    reason: &str,
    message: &str,
    installed: bool,
) {
    let mut st = hr.get("status").cloned().unwrap_or(json!({}));
    let cond = json!({"type": "Ready", "status": status, "reason": reason, "message": message});
    if condition(hr, "Ready").is_some_and(|c| c == cond)
        && (!installed || st["observedGeneration"] == hr["metadata"]["generation"])
    {
        return;
    }
    st["conditions"] = json!([cond]);
    if installed {
        st["observedGeneration"] = hr["metadata"]["generation"].clone();
    }
    fake.set_status(
        HR_GROUP,
        "helmreleases",
        s(hr, "/metadata/namespace"),
        s(hr, "/metadata/name"),
        st,
    );
}

fn helm_release(fake: &FakeKube, pace: Pace, seen: &mut Seen, hr: &Value, all: &[Value]) {
    let (hr_ns, hr_name) = (s(hr, "/metadata/namespace"), s(hr, "/metadata/name"));
    finalize(fake, HR_GROUP, "helmreleases", hr, FLUX_FINALIZER, || {
        fake.record_install(format!("uninstall HelmRelease/{hr_name}"));
        uninstall(fake, |o| {
            s(o, "/metadata/labels/helm.toolkit.fluxcd.io~1name") == hr_name
                && s(o, "/metadata/labels/helm.toolkit.fluxcd.io~1namespace") == hr_ns
        });
    });
    if !ensure_finalizer(fake, HR_GROUP, "helmreleases", hr, FLUX_FINALIZER) {
        return;
    }
    let Some(hr) = &fake.get(HR_GROUP, "helmreleases", hr_ns, hr_name) else { return };
    let done = hr.pointer("/status/observedGeneration") == hr.pointer("/metadata/generation")
        && is_true(hr, "Ready");
    if done {
        return;
    }
    let ns = s(hr, "/metadata/namespace");
    let name = s(hr, "/metadata/name");
    for d in hr.pointer("/spec/dependsOn").and_then(Value::as_array).into_iter().flatten() {
        let dn = s(d, "/name");
        let dns = match s(d, "/namespace") {
            "" => ns,
            x => x,
        };
        let ready = all.iter().any(|o| {
            s(o, "/metadata/name") == dn
                && s(o, "/metadata/namespace") == dns
                && is_true(o, "Ready")
                && o.pointer("/status/observedGeneration") == o.pointer("/metadata/generation")
        });
        if !ready {
            let msg = format!("dependency '{dns}/{dn}' is not ready");
            return set_ready(fake, hr, "False", "DependencyNotReady", &msg, false);
        }
    }
    let chart_name = s(hr, "/spec/chart/spec/chart");
    let version = s(hr, "/spec/chart/spec/version");
    let src = s(hr, "/spec/chart/spec/sourceRef/name");
    let helmchart = format!("{ns}/{ns}-{name}");
    let Some(repo) = fake.get("source.toolkit.fluxcd.io", "helmrepositories", ns, src) else {
        let msg = format!(
            "HelmChart '{helmchart}' is not ready: HelmRepository.source.toolkit.fluxcd.io \"{src}\" not found"
        );
        return set_ready(fake, hr, "False", "ArtifactFailed", &msg, false);
    };
    if fake.faults().chart_pull.iter().any(|r| r == name) {
        let url = s(&repo, "/spec/url").trim_start_matches("oci://").to_owned();
        let (host, path) = url.split_once('/').unwrap_or((&url, ""));
        let msg = format!(
            "HelmChart '{helmchart}' is not ready: chart pull error: failed to download chart for remote reference: {url}/{chart_name}:{version}: GET \"https://{host}/v2/{path}/{chart_name}/manifests/{version}\": DENIED: denied"
        );
        return set_ready(fake, hr, "False", "ArtifactFailed", &msg, false);
    }
    let target = match s(hr, "/spec/targetNamespace") {
        "" => ns,
        t => t,
    };
    let release = match s(hr, "/spec/releaseName") {
        "" => name,
        r => r,
    };
    let attempt = format!(
        "Helm install failed for release {target}/{release} with chart {chart_name}@{version}"
    );
    if fake.get("", "namespaces", "", target).is_none() {
        let msg = format!("{attempt}: create: failed to create: namespaces \"{target}\" not found");
        return set_ready(fake, hr, "False", "InstallFailed", &msg, false);
    }
    let Some(chart) = charts::chart(chart_name) else {
        let msg = format!("{attempt}: chart \"{chart_name}\" version \"{version}\" not found");
        return set_ready(fake, hr, "False", "InstallFailed", &msg, false);
    };
    if !seen.due(key_of(hr), pace.latency) {
        return set_ready(
            fake,
            hr,
            "Unknown",
            "Progressing",
            "Running 'install' action with timeout of 5m0s",
            false,
        );
    }
    let labels =
        json!({"helm.toolkit.fluxcd.io/name": name, "helm.toolkit.fluxcd.io/namespace": ns});
    match install(fake, chart, release, target, &labels) {
        Ok(()) => {
            fake.record_install(format!("HelmRelease/{name}"));
            let msg = format!(
                "Helm install succeeded for release {target}/{release}.v1 with chart {chart_name}@{version}"
            );
            set_ready(fake, hr, "True", "InstallSucceeded", &msg, true);
        }
        Err(why) => {
            set_ready(fake, hr, "False", "InstallFailed", &format!("{attempt}: {why}"), false)
        }
    }
}

/// Creates (or adopts) a chart's objects as Helm release `release` in
/// `ns`. Helm refuses objects another release owns.
fn install(
    fake: &FakeKube,
    chart: &Chart,
    release: &str,
    ns: &str,
    labels: &Value,
) -> Result<(), String> {
    let mut objs: Vec<(&str, &str, Value)> = charts::manifests(chart, release, ns);
    // Helm checks every object before writing any; CRDs (a chart's
    // `crds/`) are only created when absent, never owned or upgraded.
    objs.retain(|(g, p, o)| {
        *p != "customresourcedefinitions" || fake.get(g, p, "", s(o, "/metadata/name")).is_none()
    });
    for (g, p, o) in objs.iter().filter(|(_, p, _)| *p != "customresourcedefinitions") {
        let ons = s(o, "/metadata/namespace");
        let name = s(o, "/metadata/name");
        if let Some(live) = fake.get(g, p, ons, name) {
            let owner = s(&live, "/metadata/annotations/meta.helm.sh~1release-name");
            let owner_ns = s(&live, "/metadata/annotations/meta.helm.sh~1release-namespace");
            if owner != release || owner_ns != ns {
                let kind = s(&live, "/kind");
                return Err(format!(
                    "rendered manifests contain a resource that already exists. Unable to continue with install: {kind} \"{name}\" in namespace \"{ons}\" exists and cannot be imported into the current release: invalid ownership metadata; annotation validation error: key \"meta.helm.sh/release-name\" must equal \"{release}\": current value is \"{owner}\""
                ));
            }
        }
    }
    for (g, p, mut o) in objs {
        let mut l = labels.clone();
        l["app.kubernetes.io/managed-by"] = json!("Helm");
        if let Some(sel) = o.pointer("/spec/selector/matchLabels").cloned() {
            for (k, v) in sel.as_object().into_iter().flatten() {
                l[k] = v.clone();
            }
        }
        // An adopted object keeps the labels of its first installer too.
        if let Some(live) = fake.get(g, p, s(&o, "/metadata/namespace"), s(&o, "/metadata/name")) {
            for (k, v) in
                live.pointer("/metadata/labels").and_then(Value::as_object).into_iter().flatten()
            {
                if l.get(k).is_none() {
                    l[k] = v.clone();
                }
            }
        }
        o["metadata"]["labels"] = l;
        fake.put(g, p, o);
    }
    Ok(())
}

fn workloads(fake: &FakeKube, pace: Pace, seen: &mut Seen) {
    let nodes = fake.objects("", "nodes").len().max(1) as i64;
    let faults = fake.faults();
    let mut owners = Vec::new();
    for (plural, kind) in [
        ("deployments", "Deployment"),
        ("statefulsets", "StatefulSet"),
        ("daemonsets", "DaemonSet"),
    ] {
        for w in fake.objects("apps", plural) {
            let ns = s(&w, "/metadata/namespace").to_owned();
            let name = s(&w, "/metadata/name").to_owned();
            owners.push(format!("{kind}/{ns}/{name}"));
            if !seen.due(key_of(&w), pace.latency) {
                continue;
            }
            let desired = if kind == "DaemonSet" {
                nodes
            } else {
                w.pointer("/spec/replicas").and_then(Value::as_i64).unwrap_or(1)
            };
            let crashing = faults.crash_loop.contains(&format!("{ns}/{name}"));
            let not_ready = s(&w, "/metadata/annotations/sim.catalyst-zero.io~1not-ready");
            let ready = !crashing && not_ready.is_empty();
            for i in 0..desired {
                let pod_name = charts::pod_name(kind, &name, i);
                let restarts = fake
                    .get("", "pods", &ns, &pod_name)
                    .and_then(|p| {
                        p.pointer("/status/containerStatuses/0/restartCount")
                            .and_then(Value::as_i64)
                    })
                    .unwrap_or(0);
                let restart_count = if crashing
                    && seen.due(format!("restart/{ns}/{pod_name}/{restarts}"), pace.latency)
                {
                    restarts + 1
                } else {
                    restarts
                };
                let pod = charts::pod(kind, &w, &pod_name, crashing.then_some(restart_count));
                fake.put("", "pods", pod);
            }
            let n = if ready { desired } else { 0 };
            let observed = w["metadata"]["generation"].clone();
            let status = match kind {
                "Deployment" => {
                    json!({"observedGeneration": observed, "replicas": desired, "updatedReplicas": desired,
                    "readyReplicas": n, "availableReplicas": n, "unavailableReplicas": desired - n,
                    "conditions": [{"type": "Available", "status": if n >= desired { "True" } else { "False" },
                                    "reason": if n >= desired { "MinimumReplicasAvailable" } else { "MinimumReplicasUnavailable" }}]})
                }
                "StatefulSet" => {
                    json!({"observedGeneration": observed, "replicas": desired, "currentReplicas": desired,
                    "updatedReplicas": desired, "readyReplicas": n, "availableReplicas": n,
                    "currentRevision": format!("{name}-1"), "updateRevision": format!("{name}-1")})
                }
                _ => {
                    json!({"observedGeneration": observed, "desiredNumberScheduled": desired, "currentNumberScheduled": desired,
                    "updatedNumberScheduled": desired, "numberReady": n, "numberAvailable": n})
                }
            };
            if w.get("status") != Some(&status) {
                fake.set_status("apps", plural, &ns, &name, status);
            }
        }
    }
    for p in fake.objects("", "pods") {
        let owner = p.pointer("/metadata/ownerReferences/0").cloned().unwrap_or(Value::Null);
        let ns = s(&p, "/metadata/namespace");
        let key = format!("{}/{ns}/{}", s(&owner, "/kind"), s(&owner, "/name"));
        if !owner.is_null() && !owners.contains(&key) {
            fake.remove("", "pods", ns, s(&p, "/metadata/name"));
        }
    }
}
