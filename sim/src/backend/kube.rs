//! `SimKube`: a fake Kubernetes API server with time-based controllers.
//!
//! Objects live under system `kube`, one directory per cluster (the cluster
//! is named by a hash of the kubeconfig's CA data, so every kubeconfig of
//! one k3s cluster reaches the same objects), keyed by
//! `apiVersion/kind/namespace/name`. `apply` behaves like server-side apply
//! with a single manager. Controllers do not run in the background: status
//! is computed on `get`/`list` from the time of the last spec change, so it
//! survives restarts:
//! - `HelmRelease` (helm.toolkit.fluxcd.io): Ready=True (InstallSucceeded)
//!   at `max(last spec change, every dependsOn ready) + ready latency` (per
//!   release name, scaled); before that Unknown/Progressing, or
//!   False/DependencyNotReady while a dependency is missing or not ready.
//!   A fail rule `kube.helmrelease.<name>` makes it False/InstallFailed.
//! - Deployment/StatefulSet/DaemonSet: ready replicas after a few seconds.
//! - Flux sources and Kustomizations: Ready after a few seconds.
//! - Crossplane: the provider-hetzner package and its managed resources,
//!   observed in (and written to) the sim cloud ([`super::crossplane`]).
//! - CustomResourceDefinition: Established; Namespace: Active.
//! - External Secrets (once its chart's controller runs): stores and
//!   ExternalSecrets reconciled against the sim OpenBao before a read of
//!   either or of a Secret ([`super::eso`]).

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::Arc;

use async_trait::async_trait;
use chrono::{DateTime, SecondsFormat, Utc};
use cz_state::SecretString;
use serde_json::{Value, json};
use sha2::{Digest, Sha256};

use super::crossplane::{self, CloudView, Observation};
use super::world::SimWorld;
use cz_adapters::cloud::Selector;
use cz_adapters::{AdapterResult, KubeApi, ObjectRef};
use cz_engine::{Cause, StepError, System};

const SYS: &str = "kube";

fn err(op: &str, cause: Cause, msg: impl Into<String>) -> StepError {
    StepError::adapter(System::Kubernetes, op, cause, msg)
}

/// The cluster a kubeconfig reaches: a hash of its CA data (or of the
/// whole kubeconfig when it has none).
pub fn cluster_of(kubeconfig: &str) -> String {
    let basis = kubeconfig
        .lines()
        .find_map(|l| l.trim().strip_prefix("certificate-authority-data:"))
        .map(str::trim)
        .unwrap_or(kubeconfig);
    format!("cluster-{}", &hex::encode(Sha256::digest(basis.as_bytes()))[..16])
}

fn key_of(api_version: &str, kind: &str, namespace: Option<&str>, name: &str) -> String {
    format!("{api_version}/{kind}/{}/{name}", namespace.unwrap_or("_"))
}

/// An object's key, from its own apiVersion, kind, namespace and name.
fn object_key(o: &Value) -> String {
    key_of(
        o["apiVersion"].as_str().unwrap_or_default(),
        o["kind"].as_str().unwrap_or_default(),
        o.pointer("/metadata/namespace").and_then(Value::as_str),
        o.pointer("/metadata/name").and_then(Value::as_str).unwrap_or_default(),
    )
}

fn ref_key(r: &ObjectRef) -> String {
    key_of(&r.api_version, &r.kind, r.namespace.as_deref(), &r.name)
}

fn now_secs(t: DateTime<Utc>) -> String {
    t.to_rfc3339_opts(SecondsFormat::Secs, true)
}

fn parse_time(v: &Value) -> Option<DateTime<Utc>> {
    DateTime::parse_from_rfc3339(v.as_str()?).ok().map(|t| t.with_timezone(&Utc))
}

fn is_helm_release(obj: &Value) -> bool {
    Head::of_object(obj).is_helm_release()
}

/// Whether a stored object installs a chart's objects ([`SimKube::installed`]):
/// a Flux HelmRelease, a K3s HelmChart or a Crossplane provider package.
fn installs_charts(obj: &Value) -> bool {
    let head = Head::of_object(obj);
    head.is_helm_release() || head.is_helm_chart() || crossplane::is_provider_package(obj)
}

/// An object's identity as its key spells it, `apiVersion/kind/namespace/
/// name` (`_` for no namespace): what a read of the stored objects can
/// decide on without parsing one.
#[derive(Clone, Copy, Debug, PartialEq)]
struct Head<'a> {
    api_version: &'a str,
    kind: &'a str,
    namespace: Option<&'a str>,
}

impl<'a> Head<'a> {
    /// From a key ([`key_of`]); an apiVersion may hold a `/`, nothing
    /// after it can.
    fn of_key(key: &'a str) -> Head<'a> {
        let mut parts = key.rsplitn(4, '/').skip(1);
        let namespace = parts.next().filter(|ns| *ns != "_");
        let kind = parts.next().unwrap_or_default();
        Head { api_version: parts.next().unwrap_or_default(), kind, namespace }
    }

    fn of_object(obj: &'a Value) -> Head<'a> {
        Head {
            api_version: obj["apiVersion"].as_str().unwrap_or_default(),
            kind: obj["kind"].as_str().unwrap_or_default(),
            namespace: obj.pointer("/metadata/namespace").and_then(Value::as_str),
        }
    }

    fn is(&self, api_version: &str, kind: &str) -> bool {
        self.api_version == api_version && self.kind == kind
    }

    fn is_helm_release(&self) -> bool {
        self.kind == "HelmRelease" && self.api_version.starts_with("helm.toolkit.fluxcd.io/")
    }

    fn is_helm_chart(&self) -> bool {
        self.is("helm.cattle.io/v1", "HelmChart")
    }

    /// Whether the object may install charts ([`installs_charts`] decides,
    /// from the object: a provider package only if it is Hetzner's).
    fn may_install_charts(&self) -> bool {
        self.is_helm_release()
            || self.is_helm_chart()
            || self.is("pkg.crossplane.io/v1", "Provider")
    }
}

/// What a managed resource's status reads ([`SimKube::observe`]): every
/// managed resource (the simulated provider writes the updates they ask
/// for, [`SimKube::cloud_view`]), the provider configs and the Secrets
/// they name. No chart installs any of these.
fn feeds_managed_status(h: &Head<'_>) -> bool {
    crossplane::is_managed(h.api_version)
        || crossplane::is_config(h.api_version)
        || h.is("v1", "Secret")
}

/// Which stored objects a read takes, and how much of each.
enum Take {
    Skip,
    Whole,
    /// The [`installer_outline`] of an object that [`installs_charts`].
    Outline,
}

/// The fields of an object that installs charts which decide what it
/// installs and when ([`SimKube::installed`], [`SimKube::hr_eval`]): its
/// identity and the chart, release, namespace and dependencies it names,
/// not its values. Reads that need the installers but not their whole
/// objects take these: a Flux release's values are most of its size, and
/// parsing a stored object as an `Outline` skips them without building them.
#[derive(Default, serde::Deserialize, serde::Serialize)]
struct Outline {
    #[serde(rename = "apiVersion", default, skip_serializing_if = "Option::is_none")]
    api_version: Option<Value>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    kind: Option<Value>,
    #[serde(default)]
    metadata: OutlineMeta,
    #[serde(default)]
    spec: OutlineSpec,
}

#[derive(Default, serde::Deserialize, serde::Serialize)]
struct OutlineMeta {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    name: Option<Value>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    namespace: Option<Value>,
}

#[derive(Default, serde::Deserialize, serde::Serialize)]
#[serde(rename_all = "camelCase")]
struct OutlineSpec {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    chart: Option<Value>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    depends_on: Option<Value>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    target_namespace: Option<Value>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    release_name: Option<Value>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    package: Option<Value>,
}

/// An object's [`Outline`]: of its identity only if its metadata or spec
/// is not an object.
fn installer_outline(obj: &Value) -> Value {
    use serde::Deserialize;
    let outline = Outline::deserialize(obj).unwrap_or_else(|_| Outline {
        api_version: obj.get("apiVersion").cloned(),
        kind: obj.get("kind").cloned(),
        ..Outline::default()
    });
    serde_json::to_value(outline).unwrap_or_default()
}

fn is_managed_resource(obj: &Value) -> bool {
    obj["apiVersion"].as_str().is_some_and(crossplane::is_managed)
}

/// Base ready latency (ms, before scaling) of a HelmRelease by name
/// (a `bp-` prefix is ignored: `bp-cilium` is cilium).
pub fn helm_ready_latency_ms(name: &str) -> u64 {
    match name.strip_prefix("bp-").unwrap_or(name) {
        "cilium" => 40_000,
        "cert-manager" => 30_000,
        "sealed-secrets" => 20_000,
        "openbao" => 60_000,
        "external-secrets" => 35_000,
        "crossplane" => 90_000,
        "traefik" | "ingress-nginx" => 25_000,
        "hcloud-ccm" | "hcloud-cloud-controller-manager" => 20_000,
        "hcloud-csi" => 30_000,
        "kube-prometheus-stack" => 90_000,
        "longhorn" => 75_000,
        other => {
            let h = Sha256::digest(other.as_bytes());
            20_000 + u64::from(u16::from_be_bytes([h[0], h[1]])) % 70_001
        }
    }
}

/// One object a chart installs, rendered: its key and, for a workload,
/// its pods (key and object) as they run once it is available.
struct ChartObject {
    key: String,
    object: Value,
    pods: Vec<(String, Value)>,
}

/// How many renderings [`chart_objects`] keeps before it starts over.
const CHART_OBJECTS_KEPT: usize = 1024;

/// `chart`'s objects as Helm release `release` in `ns`
/// ([`crate::charts::manifests`], with the pods of its workloads).
///
/// They are a function of those three alone, and every read of every sim
/// cluster with the chart installed needs them ([`SimKube::installed`]):
/// rendering them on each read was a quarter of the allocations of 200
/// concurrent sim jobs (P4). They are rendered once per process and
/// shared; a read copies only the objects it wants.
fn chart_objects(
    chart: &'static crate::charts::Chart,
    release: &str,
    ns: &str,
) -> Arc<[ChartObject]> {
    type Renderings = HashMap<(usize, String, String), Arc<[ChartObject]>>;
    static RENDERED: std::sync::LazyLock<std::sync::Mutex<Renderings>> =
        std::sync::LazyLock::new(Default::default);
    let id = (std::ptr::from_ref(chart).addr(), release.to_owned(), ns.to_owned());
    if let Some(done) = RENDERED.lock().expect("not poisoned").get(&id) {
        return done.clone();
    }
    let rendered: Arc<[ChartObject]> = crate::charts::manifests(chart, release, ns)
        .into_iter()
        .map(|(_, _, object)| {
            let kind = object["kind"].as_str().unwrap_or_default();
            let name = object.pointer("/metadata/name").and_then(Value::as_str).unwrap_or_default();
            let pods = if matches!(kind, "Deployment" | "StatefulSet" | "DaemonSet") {
                let n = object.pointer("/spec/replicas").and_then(Value::as_i64).unwrap_or(1);
                (0..n)
                    .map(|i| {
                        let pod_name = crate::charts::pod_name(kind, name, i);
                        let key = key_of("v1", "Pod", Some(ns), &pod_name);
                        (key, crate::charts::pod(kind, &object, &pod_name, None))
                    })
                    .collect()
            } else {
                Vec::new()
            };
            ChartObject { key: object_key(&object), object, pods }
        })
        .collect();
    let mut kept = RENDERED.lock().expect("not poisoned");
    if kept.len() >= CHART_OBJECTS_KEPT {
        kept.clear();
    }
    kept.entry(id).or_insert(rendered).clone()
}

/// A stored object and when its spec last changed.
#[derive(Clone, Debug)]
struct Stored {
    object: Value,
    reconcile_from: DateTime<Utc>,
}

/// A stored object's file: the object (or the part of it a read parses)
/// and when its controllers reconcile from.
#[derive(serde::Deserialize)]
struct StoredDoc<T> {
    object: T,
    #[serde(rename = "reconcileFrom")]
    reconcile_from: Value,
}

impl Stored {
    fn from_doc(doc: StoredDoc<Value>) -> Option<Stored> {
        Some(Stored { reconcile_from: parse_time(&doc.reconcile_from)?, object: doc.object })
    }

    fn from_json(v: Value) -> Option<Stored> {
        serde_json::from_value(v).ok().and_then(Stored::from_doc)
    }

    fn to_json(&self) -> Value {
        json!({
            "object": self.object,
            "reconcileFrom": self.reconcile_from.to_rfc3339_opts(SecondsFormat::Micros, true),
        })
    }
}

/// When a HelmRelease becomes Ready (None: never, as things stand).
#[derive(Clone, Debug)]
struct HrEval {
    ready_at: Option<DateTime<Utc>>,
    failed: bool,
}

/// The fake Kubernetes API.
#[derive(Clone, Debug)]
pub struct SimKube {
    world: Arc<SimWorld>,
}

impl SimKube {
    pub fn new(world: Arc<SimWorld>) -> SimKube {
        SimKube { world }
    }

    fn cluster(kubeconfig: &SecretString, op: &str) -> Result<String, StepError> {
        if kubeconfig.expose().trim().is_empty() {
            return Err(err(
                op,
                Cause::Unauthorized,
                "Unauthorized: no credentials in the kubeconfig",
            ));
        }
        Ok(cluster_of(kubeconfig.expose()))
    }

    /// Every stored object, plus what the charts installed so far put in
    /// the cluster ([`Self::installed`]).
    async fn load_all(&self, cluster: &str) -> Result<HashMap<String, Stored>, StepError> {
        self.load_some(cluster, |_| true, |_| true).await
    }

    /// What a read needs: the stored objects `keep` accepts and the chart
    /// objects whose keys `wanted` accepts; a stored object wins over a
    /// chart's of the same key, as in [`Self::load_all`]. The objects that
    /// install charts are always read, since they decide what is
    /// installed. Reading one object used to copy the cluster's every
    /// object and render every installed chart: with 200 sim clusters in
    /// one process that was a third of P4's CPU.
    async fn load_some(
        &self,
        cluster: &str,
        keep: impl Fn(&Head<'_>) -> bool,
        wanted: impl Fn(&str) -> bool,
    ) -> Result<HashMap<String, Stored>, StepError> {
        let mut out = self
            .load_stored_as(cluster, |head| {
                if keep(head) {
                    Take::Whole
                } else if head.may_install_charts() {
                    Take::Outline
                } else {
                    Take::Skip
                }
            })
            .await?;
        let now = Utc::now();
        for (k, v) in self.installed(&out, now, &wanted) {
            out.entry(k).or_insert(v);
        }
        Ok(out)
    }

    /// What installed charts created, computed like status: a HelmRelease
    /// Ready (or a K3s HelmChart some seconds after it was applied) has
    /// its chart's CRDs, workloads and Services ([`crate::charts`]);
    /// a workload that is available has its pods. Never stored: deleting
    /// the release takes them away, as Helm's uninstall would. Only the
    /// objects whose keys `wanted` accepts are built.
    fn installed(
        &self,
        all: &HashMap<String, Stored>,
        now: DateTime<Utc>,
        wanted: &dyn Fn(&str) -> bool,
    ) -> Vec<(String, Stored)> {
        let mut out = Vec::new();
        let mut memo = HashMap::new();
        for (key, st) in all {
            let o = &st.object;
            let s = |p: &str| o.pointer(p).and_then(Value::as_str).unwrap_or_default().to_owned();
            let (chart, release, ns, at) = if is_helm_release(o) {
                let Some(at) = self
                    .hr_eval(key, all, &mut memo, &mut HashSet::new())
                    .ready_at
                    .filter(|t| now >= *t)
                else {
                    continue;
                };
                let ns = match s("/spec/targetNamespace") {
                    t if t.is_empty() => s("/metadata/namespace"),
                    t => t,
                };
                let rel = match s("/spec/releaseName") {
                    r if r.is_empty() => s("/metadata/name"),
                    r => r,
                };
                (crate::charts::chart(&s("/spec/chart/spec/chart")), rel, ns, at)
            } else if o["apiVersion"] == "helm.cattle.io/v1" && o["kind"] == "HelmChart" {
                let at = st.reconcile_from
                    + chrono::Duration::from_std(self.world.scaled(15_000)).unwrap_or_default();
                if now < at {
                    continue;
                }
                let ns = match s("/spec/targetNamespace") {
                    t if t.is_empty() => s("/metadata/namespace"),
                    t => t,
                };
                (crate::charts::chart(&s("/spec/chart")), s("/metadata/name"), ns, at)
            } else if crossplane::is_provider_package(o) {
                let at = st.reconcile_from
                    + chrono::Duration::from_std(
                        self.world.scaled(crossplane::PROVIDER_INSTALL_MS),
                    )
                    .unwrap_or_default();
                if now < at {
                    continue;
                }
                (
                    Some(&crate::charts::PROVIDER_HETZNER),
                    s("/metadata/name"),
                    "crossplane-system".to_owned(),
                    at,
                )
            } else {
                continue;
            };
            let Some(chart) = chart else { continue };
            let pods_from =
                at + chrono::Duration::from_std(self.world.scaled(8_000)).unwrap_or_default();
            for co in chart_objects(chart, &release, &ns).iter() {
                if now >= pods_from {
                    for (key, pod) in &co.pods {
                        if wanted(key) {
                            let pod = Stored { object: pod.clone(), reconcile_from: pods_from };
                            out.push((key.clone(), pod));
                        }
                    }
                }
                if wanted(&co.key) {
                    out.push((
                        co.key.clone(),
                        Stored { object: co.object.clone(), reconcile_from: at },
                    ));
                }
            }
        }
        out
    }

    /// The stored objects `take` asks for, as much of each as it asks,
    /// by key. Only those are parsed ([`SimWorld::list_map`]).
    async fn load_stored_as(
        &self,
        cluster: &str,
        take: impl Fn(&Head<'_>) -> Take,
    ) -> Result<HashMap<String, Stored>, StepError> {
        let rows = self
            .world
            .list_map(SYS, cluster, |o| {
                let st = match take(&Head::of_key(o.key())) {
                    Take::Skip => return None,
                    Take::Whole => Stored::from_doc(o.parse().ok()?)?,
                    // Parsed to its outline: the values are skipped, not built.
                    Take::Outline => {
                        let st = match o.parse::<StoredDoc<Outline>>() {
                            Ok(doc) => Stored::from_doc(StoredDoc {
                                object: serde_json::to_value(doc.object).ok()?,
                                reconcile_from: doc.reconcile_from,
                            })?,
                            // A metadata or spec that is not an object.
                            Err(_) => {
                                let whole = Stored::from_json(o.value()?)?;
                                Stored { object: installer_outline(&whole.object), ..whole }
                            }
                        };
                        installs_charts(&st.object).then_some(st)?
                    }
                };
                Some((o.key().to_owned(), st))
            })
            .await?;
        Ok(rows.into_iter().collect())
    }

    /// The live sim cloud, when a managed resource needs it. First the
    /// simulated provider writes what resources allowed to update ask for
    /// (as the real one would have by now).
    async fn cloud_view(
        &self,
        all: &HashMap<String, Stored>,
        needed: bool,
    ) -> Result<Option<CloudView>, StepError> {
        if !needed {
            return Ok(None);
        }
        let cloud = super::cloud::SimCloud::new(self.world.clone());
        let mut view = CloudView { objects: cloud.all_objects().await? };
        let mut wrote = false;
        for s in all.values().filter(|s| is_managed_resource(&s.object)) {
            let config = Self::provider_config(all, &s.object);
            if let Observation::Found { at_provider, object } =
                crossplane::observe(&s.object, &view, config)
                && let Some((name, labels)) = crossplane::pending_update(&s.object, &at_provider)
                // A sub-resource (subnet, service) has no name of its own.
                && at_provider.get("name").is_some()
            {
                let labels = labels.map_or_else(
                    || object.labels.clone(),
                    |l| {
                        l.into_iter()
                            .map(|(k, v)| (k, v.as_str().unwrap_or_default().to_owned()))
                            .collect()
                    },
                );
                let name = name.unwrap_or_else(|| object.name.clone());
                cloud.update(&object.kind, object.id, &name, labels).await?;
                wrote = true;
            }
        }
        if wrote {
            view = CloudView { objects: cloud.all_objects().await? };
        }
        Ok(Some(view))
    }

    /// Whether a managed resource's ProviderConfig and its Secret exist.
    fn provider_config(all: &HashMap<String, Stored>, mr: &Value) -> Result<(), String> {
        let ns = mr.pointer("/metadata/namespace").and_then(Value::as_str).unwrap_or("default");
        let kind = mr.pointer("/spec/providerConfigRef/kind").and_then(Value::as_str);
        let name = mr.pointer("/spec/providerConfigRef/name").and_then(Value::as_str);
        let (kind, name) = (kind.unwrap_or("ClusterProviderConfig"), name.unwrap_or("default"));
        let config_ns = (kind == "ProviderConfig").then_some(ns);
        let key = key_of("hetzner.m.crossplane.io/v1beta1", kind, config_ns, name);
        let Some(pc) = all.get(&key) else {
            return Err(format!("cannot get {kind} {ns}/{name}: not found"));
        };
        let secret = pc.object.pointer("/spec/credentials/secretRef");
        let sns = secret.and_then(|r| r["namespace"].as_str()).unwrap_or_default();
        let sname = secret.and_then(|r| r["name"].as_str()).unwrap_or_default();
        if !all.contains_key(&key_of("v1", "Secret", Some(sns), sname)) {
            return Err(format!("cannot get credentials secret {sns}/{sname}: not found"));
        }
        Ok(())
    }

    /// A provider's kinds exist only once its package installed their CRDs
    /// (the API server answers "no matches for kind" before).
    async fn kinds_served(&self, cluster: &str, objects: &[Value]) -> Result<(), StepError> {
        let provided = |o: &Value| {
            o["apiVersion"]
                .as_str()
                .is_some_and(|a| crossplane::is_managed(a) || crossplane::is_config(a))
        };
        if !objects.iter().any(provided) {
            return Ok(());
        }
        let crds = "apiextensions.k8s.io/v1/CustomResourceDefinition/";
        let all = self
            .load_some(cluster, |h| h.kind == "CustomResourceDefinition", |k| k.starts_with(crds))
            .await?;
        for o in objects.iter().filter(|o| provided(o)) {
            let api = o["apiVersion"].as_str().unwrap_or_default();
            let kind = o["kind"].as_str().unwrap_or_default();
            let (group, version) = api.split_once('/').unwrap_or((api, ""));
            let served = crate::charts::PROVIDER_HETZNER.crds.iter().any(|c| {
                c.group == group
                    && c.version == version
                    && c.kind == kind
                    && all.contains_key(&key_of(
                        "apiextensions.k8s.io/v1",
                        "CustomResourceDefinition",
                        None,
                        &format!("{}.{}", c.plural, c.group),
                    ))
            });
            if !served {
                return Err(err(
                    "apply",
                    Cause::NotFound,
                    format!("no matches for kind \"{kind}\" in version \"{api}\""),
                ));
            }
        }
        Ok(())
    }

    /// Deleting a managed resource deletes its cloud object only when its
    /// policies allow `Delete`; otherwise the object is orphaned.
    async fn delete_managed(&self, cluster: &str, r: &ObjectRef) -> Result<(), StepError> {
        let all = self.load_some(cluster, feeds_managed_status, |_| false).await?;
        let Some(s) = all.get(&ref_key(r)) else { return Ok(()) };
        if !crossplane::allows(&s.object, "Delete") {
            return Ok(());
        }
        let cloud = super::cloud::SimCloud::new(self.world.clone());
        let view = CloudView { objects: cloud.all_objects().await? };
        if let Observation::Found { object, at_provider } =
            crossplane::observe(&s.object, &view, Self::provider_config(&all, &s.object))
            && at_provider.get("name").is_some()
        {
            cloud.remove(&object.kind, object.id).await?;
        }
        Ok(())
    }

    fn find_helm_release<'a>(
        all: &'a HashMap<String, Stored>,
        ns: Option<&str>,
        name: &str,
    ) -> Option<(&'a String, &'a Stored)> {
        all.iter().find(|(_, s)| {
            is_helm_release(&s.object)
                && s.object.pointer("/metadata/name").and_then(Value::as_str) == Some(name)
                && s.object.pointer("/metadata/namespace").and_then(Value::as_str) == ns
        })
    }

    fn hr_eval(
        &self,
        key: &str,
        all: &HashMap<String, Stored>,
        memo: &mut HashMap<String, HrEval>,
        visiting: &mut HashSet<String>,
    ) -> HrEval {
        if let Some(e) = memo.get(key) {
            return e.clone();
        }
        let never = HrEval { ready_at: None, failed: false };
        let Some(s) = all.get(key) else { return never };
        if !visiting.insert(key.to_owned()) {
            return never; // a dependency cycle never becomes ready
        }
        let name = s.object.pointer("/metadata/name").and_then(Value::as_str).unwrap_or("");
        let ns = s.object.pointer("/metadata/namespace").and_then(Value::as_str);
        let result = if self.world.standing_rule(&format!("kube.helmrelease.{name}")).is_some() {
            HrEval { ready_at: None, failed: true }
        } else {
            let mut start = Some(s.reconcile_from);
            for dep in
                s.object.pointer("/spec/dependsOn").and_then(Value::as_array).into_iter().flatten()
            {
                let (dns, dname) = match dep {
                    Value::String(n) => (ns.map(str::to_owned), n.clone()),
                    d => (
                        d["namespace"].as_str().map(str::to_owned).or(ns.map(str::to_owned)),
                        d["name"].as_str().unwrap_or("").to_owned(),
                    ),
                };
                let dep_ready = Self::find_helm_release(all, dns.as_deref(), &dname)
                    .map(|(k, _)| k.clone())
                    .and_then(|k| self.hr_eval(&k, all, memo, visiting).ready_at);
                start = match (start, dep_ready) {
                    (Some(a), Some(b)) => Some(a.max(b)),
                    _ => None,
                };
            }
            let lat = chrono::Duration::from_std(self.world.scaled(helm_ready_latency_ms(name)))
                .unwrap_or_default();
            HrEval { ready_at: start.map(|t| t + lat), failed: false }
        };
        visiting.remove(key);
        memo.insert(key.to_owned(), result.clone());
        result
    }

    /// The object as a GET returns it: stored fields plus computed status.
    fn observe(
        &self,
        key: &str,
        all: &HashMap<String, Stored>,
        cloud: Option<&CloudView>,
        now: DateTime<Utc>,
    ) -> Option<Value> {
        let s = all.get(key)?;
        let mut obj = s.object.clone();
        let generation = obj.pointer("/metadata/generation").cloned().unwrap_or(json!(1));
        let since = |ms: u64| {
            s.reconcile_from + chrono::Duration::from_std(self.world.scaled(ms)).unwrap_or_default()
        };
        let cond = |ty: &str, status: &str, reason: &str, message: String, at: DateTime<Utc>| json!({"type": ty, "status": status, "reason": reason, "message": message, "lastTransitionTime": now_secs(at), "observedGeneration": generation});
        let api = obj["apiVersion"].as_str().unwrap_or("").to_owned();
        let kind = obj["kind"].as_str().unwrap_or("").to_owned();
        let name = obj.pointer("/metadata/name").and_then(Value::as_str).unwrap_or("").to_owned();
        let ns = obj
            .pointer("/metadata/namespace")
            .and_then(Value::as_str)
            .unwrap_or("default")
            .to_owned();
        let status = if is_helm_release(&obj) {
            let mut memo = HashMap::new();
            let ev = self.hr_eval(key, all, &mut memo, &mut HashSet::new());
            let ready = if ev.failed {
                cond(
                    "Ready",
                    "False",
                    "InstallFailed",
                    format!("Helm install failed for release {ns}/{name}: sim: injected failure"),
                    s.reconcile_from,
                )
            } else if let Some(t) = ev.ready_at.filter(|t| now >= *t) {
                let chart =
                    obj.pointer("/spec/chart/spec/chart").and_then(Value::as_str).unwrap_or(&name);
                let version =
                    obj.pointer("/spec/chart/spec/version").and_then(Value::as_str).unwrap_or("*");
                cond(
                    "Ready",
                    "True",
                    "InstallSucceeded",
                    format!(
                        "Helm install succeeded for release {ns}/{name}.v1 with chart {chart}@{version}"
                    ),
                    t,
                )
            } else {
                // Which dependency holds it back, if any?
                let blocker = obj
                    .pointer("/spec/dependsOn")
                    .and_then(Value::as_array)
                    .into_iter()
                    .flatten()
                    .find_map(|dep| {
                        let (dns, dname) = match dep {
                            Value::String(n) => (ns.clone(), n.clone()),
                            d => (
                                d["namespace"].as_str().unwrap_or(&ns).to_owned(),
                                d["name"].as_str().unwrap_or("").to_owned(),
                            ),
                        };
                        let ready = Self::find_helm_release(all, Some(&dns), &dname)
                            .map(|(k, _)| k.clone())
                            .and_then(|k| {
                                self.hr_eval(&k, all, &mut memo, &mut HashSet::new()).ready_at
                            })
                            .is_some_and(|t| now >= t);
                        (!ready).then(|| format!("{dns}/{dname}"))
                    });
                match blocker {
                    Some(dep) => cond(
                        "Ready",
                        "False",
                        "DependencyNotReady",
                        format!("dependency '{dep}' is not ready"),
                        s.reconcile_from,
                    ),
                    None => cond(
                        "Ready",
                        "Unknown",
                        "Progressing",
                        "Running 'install' action with timeout of 5m0s".to_owned(),
                        s.reconcile_from,
                    ),
                }
            };
            Some(json!({"observedGeneration": generation, "conditions": [ready]}))
        } else if api == "apps/v1"
            && matches!(kind.as_str(), "Deployment" | "StatefulSet" | "DaemonSet")
        {
            let replicas = obj.pointer("/spec/replicas").and_then(Value::as_u64).unwrap_or(1);
            // A chart's workload annotated not-ready (OpenBao, sealed) runs
            // but never becomes ready, as in the fake API server.
            let never =
                obj.pointer("/metadata/annotations/sim.catalyst-zero.io~1not-ready").is_some();
            let ready = if !never && now >= since(if kind == "StatefulSet" { 8_000 } else { 5_000 })
            {
                replicas
            } else {
                0
            };
            let mut st = json!({
                "observedGeneration": generation,
                "replicas": replicas,
                "readyReplicas": ready,
                "availableReplicas": ready,
                "updatedReplicas": ready,
            });
            if kind == "DaemonSet" {
                st["desiredNumberScheduled"] = json!(replicas);
                st["currentNumberScheduled"] = json!(replicas);
                st["numberReady"] = json!(ready);
                st["numberAvailable"] = json!(ready);
                st["updatedNumberScheduled"] = json!(ready);
            }
            Some(st)
        } else if api.starts_with("source.toolkit.fluxcd.io/")
            || api.starts_with("kustomize.toolkit.fluxcd.io/")
        {
            let at = since(3_000);
            let c = if now >= at {
                cond("Ready", "True", "Succeeded", "sim: reconciliation succeeded".into(), at)
            } else {
                cond(
                    "Ready",
                    "Unknown",
                    "Progressing",
                    "sim: reconciliation in progress".into(),
                    s.reconcile_from,
                )
            };
            Some(json!({"observedGeneration": generation, "conditions": [c]}))
        } else if is_managed_resource(&obj) {
            let at = since(crossplane::OBSERVE_MS);
            let config = Self::provider_config(all, &obj);
            let empty = CloudView { objects: Vec::new() };
            let observed = crossplane::observe(&obj, cloud.unwrap_or(&empty), config);
            let (conds, at_provider) = match observed {
                Observation::Error(msg) => (
                    vec![
                        cond("Synced", "False", "ReconcileError", msg, s.reconcile_from),
                        cond("Ready", "False", "Unavailable", String::new(), s.reconcile_from),
                    ],
                    None,
                ),
                Observation::Found { .. } if now < at => (
                    vec![
                        cond("Synced", "True", "ReconcileSuccess", String::new(), s.reconcile_from),
                        cond("Ready", "False", "Creating", String::new(), s.reconcile_from),
                    ],
                    None,
                ),
                Observation::Found { at_provider, .. } => {
                    let stuck = if crossplane::allows(&obj, "Update") {
                        crossplane::unsupported_differences(&obj, &at_provider)
                    } else {
                        Vec::new()
                    };
                    let synced = if stuck.is_empty() {
                        cond("Synced", "True", "ReconcileSuccess", String::new(), at)
                    } else {
                        let msg = format!(
                            "sim provider: cannot update {} (the sim cloud changes only names and labels)",
                            stuck.join(", ")
                        );
                        cond("Synced", "False", "ReconcileError", msg, at)
                    };
                    (
                        vec![synced, cond("Ready", "True", "Available", String::new(), at)],
                        Some(at_provider),
                    )
                }
            };
            let mut st = json!({"conditions": conds});
            if let Some(a) = at_provider {
                st["atProvider"] = a;
            }
            Some(st)
        } else if crossplane::is_provider_package(&obj) {
            let at = since(crossplane::PROVIDER_INSTALL_MS);
            let (status, reason) = if now >= at {
                ("True", "ActivePackageRevision")
            } else {
                ("False", "UnpackingPackage")
            };
            let healthy = if now >= at {
                ("True", "HealthyPackageRevision")
            } else {
                ("Unknown", "UnknownPackageRevisionHealth")
            };
            let t = if now >= at { at } else { s.reconcile_from };
            Some(json!({"conditions": [
                cond("Installed", status, reason, String::new(), t),
                cond("Healthy", healthy.0, healthy.1, String::new(), t),
            ]}))
        } else if kind == "CustomResourceDefinition" {
            Some(json!({"conditions": [
                cond("NamesAccepted", "True", "NoConflicts", "no conflicts found".into(), s.reconcile_from),
                cond("Established", "True", "InitialNamesAccepted", "the initial names have been accepted".into(), s.reconcile_from),
            ]}))
        } else if api == "v1" && kind == "Namespace" {
            Some(json!({"phase": "Active"}))
        } else {
            None
        };
        if let Some(st) = status
            && let Some(m) = obj.as_object_mut()
        {
            m.insert("status".into(), st);
        }
        Some(obj)
    }

    /// Applies one object under the cluster lock.
    async fn apply_one(
        &self,
        cluster: &str,
        field_manager: &str,
        input: &Value,
        idx: usize,
    ) -> Result<(), StepError> {
        let r = ObjectRef::of(input).ok_or_else(|| {
            err(
                "apply",
                Cause::Invalid,
                format!("object #{idx} lacks apiVersion, kind or metadata.name"),
            )
        })?;
        if r.name.is_empty() {
            return Err(err(
                "apply",
                Cause::Invalid,
                format!("object #{idx}: metadata.name is empty"),
            ));
        }
        let key = ref_key(&r);
        let now = Utc::now();
        let mut new = input.clone();
        let m = new.as_object_mut().ok_or_else(|| {
            err("apply", Cause::Invalid, format!("object #{idx} is not a JSON object"))
        })?;
        m.remove("status");
        // The sim's files live under the daemon's data dir, which must never
        // hold a secret in clear: a Secret's values are kept as digests (a
        // real cluster keeps them in etcd). The one exception holds no
        // secret by its own label: a canary, whose value a round trip
        // compares.
        let canary = input
            .pointer("/metadata/labels/catalyst.openova.io~1canary")
            .is_some_and(|v| v == "true");
        if r.api_version == "v1" && r.kind == "Secret" && !canary {
            let values = json!({ "data": m.get("data"), "stringData": m.get("stringData") });
            self.world.keep_secret_values(&format!("{cluster}|{key}"), values);
            for field in ["data", "stringData"] {
                if let Some(Value::Object(vals)) = m.get_mut(field) {
                    for v in vals.values_mut() {
                        let text = v.as_str().map_or_else(|| v.to_string(), str::to_owned);
                        *v = json!(format!(
                            "sha256:{}",
                            hex::encode(Sha256::digest(text.as_bytes()))
                        ));
                    }
                }
            }
        }
        let managed = json!([{
            "manager": field_manager,
            "operation": "Apply",
            "apiVersion": r.api_version,
            "fieldsType": "FieldsV1",
            "time": now_secs(now),
        }]);
        let stored = match self.world.get(SYS, cluster, &key).await?.and_then(Stored::from_json) {
            None => {
                let meta =
                    new["metadata"].as_object_mut().expect("metadata checked by ObjectRef::of");
                meta.insert("uid".into(), json!(uuid::Uuid::new_v4().to_string()));
                meta.insert("creationTimestamp".into(), json!(now_secs(now)));
                meta.insert("generation".into(), json!(1));
                meta.insert(
                    "resourceVersion".into(),
                    json!(self.world.next_rising("kube.resourceVersion").await?.to_string()),
                );
                meta.insert("managedFields".into(), managed);
                Stored { object: new, reconcile_from: now }
            }
            Some(old) => {
                // Everything but metadata comes from the applied object;
                // metadata keeps the server's fields, labels/annotations are
                // replaced.
                let mut merged = old.object.clone();
                let mm = merged.as_object_mut().expect("stored objects are objects");
                let new_m = new.as_object().expect("checked");
                mm.retain(|k, _| k == "metadata" || k == "status" || new_m.contains_key(k));
                for (k, v) in new_m {
                    if k != "metadata" {
                        mm.insert(k.clone(), v.clone());
                    }
                }
                let meta = merged["metadata"].as_object_mut().expect("stored metadata");
                for field in ["labels", "annotations", "finalizers", "ownerReferences"] {
                    match new.pointer(&format!("/metadata/{field}")) {
                        Some(v) => {
                            meta.insert(field.into(), v.clone());
                        }
                        None => {
                            meta.remove(field);
                        }
                    }
                }
                let old_manager = old.object.pointer("/metadata/managedFields/0/manager").cloned();
                let spec_changed = old.object.get("spec") != merged.get("spec");
                let changed =
                    merged != old.object || old_manager.as_ref() != Some(&json!(field_manager));
                if !changed {
                    return Ok(());
                }
                let meta = merged["metadata"].as_object_mut().expect("stored metadata");
                if spec_changed {
                    let g = meta.get("generation").and_then(Value::as_u64).unwrap_or(1);
                    meta.insert("generation".into(), json!(g + 1));
                }
                meta.insert(
                    "resourceVersion".into(),
                    json!(self.world.next_rising("kube.resourceVersion").await?.to_string()),
                );
                meta.insert("managedFields".into(), managed);
                Stored {
                    object: merged,
                    reconcile_from: if spec_changed { now } else { old.reconcile_from },
                }
            }
        };
        self.world.put(SYS, cluster, &key, &stored.to_json()).await
    }
}

/// Kinds whose read first lets the simulated External Secrets act.
fn eso_related(api_version: &str, kind: &str) -> bool {
    api_version.starts_with("external-secrets.io/") || (api_version == "v1" && kind == "Secret")
}

impl SimKube {
    /// The External Secrets controller, one pass, if its chart runs in the
    /// cluster: store statuses, and every ExternalSecret due a sync.
    async fn eso(&self, kubeconfig: &SecretString, cluster: &str) -> Result<(), StepError> {
        let _g = self.world.lock(SYS, cluster).await;
        // Pods (is ESO's controller up?), stores and ExternalSecrets.
        let all = self
            .load_some(
                cluster,
                |h| h.api_version == "external-secrets.io/v1" || h.is("v1", "Pod"),
                |k| k.starts_with("v1/Pod/"),
            )
            .await?;
        // ESO's controller pod runs (its chart is installed and rolled out).
        let runs = all.values().any(|s| {
            s.object["kind"] == "Pod"
                && s.object.pointer("/metadata/labels/sim.catalyst-zero.io~1owner")
                    == Some(&json!("Deployment.external-secrets"))
        });
        if !runs {
            return Ok(());
        }
        let now = Utc::now();
        let stores: BTreeMap<String, Value> = all
            .values()
            .filter(|s| {
                s.object["apiVersion"] == "external-secrets.io/v1"
                    && s.object["kind"] == "ClusterSecretStore"
            })
            .map(|s| {
                let name = s.object.pointer("/metadata/name").and_then(Value::as_str).unwrap_or("");
                (name.to_owned(), s.object.clone())
            })
            .collect();
        // Each store: can ESO log in?
        let mut logins: BTreeMap<String, Result<super::eso::Session, String>> = BTreeMap::new();
        for (name, store) in &stores {
            let r = match super::eso::vault_of(store) {
                Err(e) => Err(e),
                Ok(v) => {
                    let (c, unsealed) =
                        super::bao::behind_service(&self.world, kubeconfig, &v.server).await?;
                    super::eso::login(c.as_ref(), unsealed, &v).map(|policies| {
                        super::eso::Session { vault: v, bao: c.unwrap_or(Value::Null), policies }
                    })
                }
            };
            let (status, reason, message) = match &r {
                Ok(_) => ("True", "Valid", "store validated".to_owned()),
                Err(e) => ("False", "InvalidProviderConfig", format!("unable to log in: {e}")),
            };
            let key = key_of("external-secrets.io/v1", "ClusterSecretStore", None, name);
            self.set_condition(cluster, &key, status, reason, &message, json!({}), now).await?;
            logins.insert(name.clone(), r);
        }
        let externals: Vec<(String, Value)> = all
            .iter()
            .filter(|(_, s)| {
                s.object["apiVersion"] == "external-secrets.io/v1"
                    && s.object["kind"] == "ExternalSecret"
            })
            .map(|(k, s)| (k.clone(), s.object.clone()))
            .collect();
        for (key, es) in externals {
            let version = super::eso::resource_version(&es);
            let due = crate::eso::due(&es, now);
            if !due {
                continue;
            }
            let store =
                es.pointer("/spec/secretStoreRef/name").and_then(Value::as_str).unwrap_or("");
            let synced = match logins.get(store) {
                None => Err(format!("could not get ClusterSecretStore \"{store}\"")),
                Some(Err(e)) => Err(format!("store {store} is not ready: {e}")),
                Some(Ok(super::eso::Session { vault: v, bao: c, policies })) => {
                    let mut data = serde_json::Map::new();
                    let mut failed = None;
                    for (sk, k, p) in crate::eso::entries(&es) {
                        match super::eso::read(c, v, policies, &k, p.as_deref()) {
                            Ok(val) => {
                                data.insert(sk, json!(base64_encode(val.as_bytes())));
                            }
                            Err(e) => {
                                failed = Some(e);
                                break;
                            }
                        }
                    }
                    failed.map_or(Ok(data), Err)
                }
            };
            match synced {
                Ok(data) => {
                    let secret = crate::eso::target_secret(&es, data);
                    let target = secret.pointer("/metadata/name").cloned().unwrap_or(Value::Null);
                    self.apply_one(cluster, "external-secrets", &secret, 0).await?;
                    let extra = json!({
                        "refreshTime": now_secs(now),
                        "syncedResourceVersion": version,
                        "binding": { "name": target },
                    });
                    self.set_condition(
                        cluster,
                        &key,
                        "True",
                        "SecretSynced",
                        "secret synced",
                        extra,
                        now,
                    )
                    .await?;
                }
                Err(e) => {
                    let extra =
                        json!({ "refreshTime": now_secs(now), "syncedResourceVersion": version });
                    let msg = format!("error processing spec.data[0]: {e}");
                    self.set_condition(
                        cluster,
                        &key,
                        "False",
                        "SecretSyncedError",
                        &msg,
                        extra,
                        now,
                    )
                    .await?;
                }
            }
        }
        Ok(())
    }

    /// A controller's status write: `Ready` = `status` with `reason` and
    /// `message`, plus `extra` status fields; unchanged, nothing is written.
    #[allow(clippy::too_many_arguments)]
    async fn set_condition(
        &self,
        cluster: &str,
        key: &str,
        status: &str,
        reason: &str,
        message: &str,
        extra: Value,
        now: DateTime<Utc>,
    ) -> Result<(), StepError> {
        let Some(mut st) = self.world.get(SYS, cluster, key).await?.and_then(Stored::from_json)
        else {
            return Ok(());
        };
        let old = st.object.get("status").cloned().unwrap_or(json!({}));
        let same = old.pointer("/conditions/0/status").and_then(Value::as_str) == Some(status)
            && old.pointer("/conditions/0/reason").and_then(Value::as_str) == Some(reason)
            && old.pointer("/conditions/0/message").and_then(Value::as_str) == Some(message);
        let since = if same {
            old.pointer("/conditions/0/lastTransitionTime").cloned().unwrap_or(json!(now_secs(now)))
        } else {
            json!(now_secs(now))
        };
        let mut new = json!({ "conditions": [{
            "type": "Ready", "status": status, "reason": reason, "message": message,
            "lastTransitionTime": since,
        }] });
        if let (Some(n), Some(e)) = (new.as_object_mut(), extra.as_object()) {
            for (k, v) in e {
                n.insert(k.clone(), v.clone());
            }
        }
        if new == old {
            return Ok(());
        }
        st.object["status"] = new;
        self.world.put(SYS, cluster, key, &st.to_json()).await
    }
}

fn base64_encode(bytes: &[u8]) -> String {
    use base64::Engine as _;
    base64::engine::general_purpose::STANDARD.encode(bytes)
}

#[async_trait]
impl KubeApi for SimKube {
    async fn apply(
        &self,
        kubeconfig: &SecretString,
        field_manager: &str,
        objects: &[Value],
    ) -> AdapterResult<()> {
        self.world.op("kube.apply", 300).await?;
        let cluster = Self::cluster(kubeconfig, "apply")?;
        if field_manager.is_empty() {
            return Err(err("apply", Cause::Invalid, "fieldManager is required for apply patch"));
        }
        let _g = self.world.lock(SYS, &cluster).await;
        self.kinds_served(&cluster, objects).await?;
        for (i, o) in objects.iter().enumerate() {
            self.apply_one(&cluster, field_manager, o, i).await?;
        }
        Ok(())
    }

    async fn get(&self, kubeconfig: &SecretString, r: &ObjectRef) -> AdapterResult<Option<Value>> {
        self.world.op("kube.get", 50).await?;
        let cluster = Self::cluster(kubeconfig, "get")?;
        if eso_related(&r.api_version, &r.kind) {
            self.eso(kubeconfig, &cluster).await?;
        }
        let key = ref_key(r);
        let Some(one) = self.world.get(SYS, &cluster, &key).await?.and_then(Stored::from_json)
        else {
            // Not applied by anyone: perhaps a chart's object.
            let all = self.load_some(&cluster, |_| false, |k| k == key).await?;
            return Ok(self.observe(&key, &all, None, Utc::now()));
        };
        let mr = is_managed_resource(&one.object);
        let all = if mr {
            self.load_some(&cluster, feeds_managed_status, |_| false).await?
        } else if is_helm_release(&one.object) {
            // A release's status reads only the outlines of the releases
            // (its dependencies), and no chart installs one.
            let mut releases = self
                .load_stored_as(&cluster, |h| {
                    if h.is_helm_release() { Take::Outline } else { Take::Skip }
                })
                .await?;
            releases.insert(key.clone(), one);
            releases
        } else {
            HashMap::from([(key.clone(), one)])
        };
        let cloud = self.cloud_view(&all, mr).await?;
        let mut got = self.observe(&key, &all, cloud.as_ref(), Utc::now());
        if let (Some(obj), Some(values)) =
            (got.as_mut(), self.world.secret_values(&format!("{cluster}|{key}")))
        {
            for field in ["data", "stringData"] {
                if !values[field].is_null() {
                    obj[field] = values[field].clone();
                }
            }
        }
        Ok(got)
    }

    async fn list(
        &self,
        kubeconfig: &SecretString,
        api_version: &str,
        kind: &str,
        selector: &str,
    ) -> AdapterResult<Vec<Value>> {
        self.world.op("kube.list", 100).await?;
        let cluster = Self::cluster(kubeconfig, "list")?;
        if eso_related(api_version, kind) {
            self.eso(kubeconfig, &cluster).await?;
        }
        let sel = Selector::parse(selector).map_err(|m| {
            err("list", Cause::Invalid, format!("unable to parse requirement: `{selector}`: {m}"))
        })?;
        // A managed resource's status reads its ProviderConfig; any other
        // kind's reads only the object (and a release's, releases).
        let all = if crossplane::is_managed(api_version) {
            self.load_some(&cluster, feeds_managed_status, |_| false).await?
        } else {
            let prefix = format!("{api_version}/{kind}/");
            self.load_some(&cluster, |h| h.is(api_version, kind), |k| k.starts_with(&prefix))
                .await?
        };
        let now = Utc::now();
        let mut keys: Vec<(String, String, &String)> = all
            .iter()
            .filter(|(_, s)| {
                s.object["apiVersion"] == api_version
                    && s.object["kind"] == kind
                    && sel.matches_json(s.object.pointer("/metadata/labels"))
            })
            .map(|(k, s)| {
                let ns = s
                    .object
                    .pointer("/metadata/namespace")
                    .and_then(Value::as_str)
                    .unwrap_or("")
                    .to_owned();
                let name = s
                    .object
                    .pointer("/metadata/name")
                    .and_then(Value::as_str)
                    .unwrap_or("")
                    .to_owned();
                (ns, name, k)
            })
            .collect();
        keys.sort();
        let needed = keys.iter().any(|(_, _, k)| is_managed_resource(&all[*k].object));
        let cloud = self.cloud_view(&all, needed).await?;
        Ok(keys
            .into_iter()
            .filter_map(|(_, _, k)| self.observe(k, &all, cloud.as_ref(), now))
            .collect())
    }

    /// The sim keeps no watch streams: it reads the object until `until`
    /// holds, within the bound.
    async fn wait_until(
        &self,
        kubeconfig: &SecretString,
        r: &ObjectRef,
        until: cz_adapters::Until,
        bound: std::time::Duration,
    ) -> AdapterResult<()> {
        let started = std::time::Instant::now();
        loop {
            let obj = self.get(kubeconfig, r).await?;
            if until.holds(obj.as_ref()) {
                return Ok(());
            }
            if started.elapsed() >= bound {
                return Err(StepError::Timeout {
                    reason: format!("{} {} {}", r.kind, r.name, until.describe()),
                    bound_s: bound.as_secs(),
                });
            }
            tokio::time::sleep(self.world.scaled(500).max(std::time::Duration::from_millis(5)))
                .await;
        }
    }

    /// A Service of an installed chart answers once a pod behind it is
    /// Ready; before that, as the API server says, no endpoints.
    async fn service_get(
        &self,
        kubeconfig: &SecretString,
        namespace: &str,
        service: &str,
        port: u16,
        path: &str,
    ) -> AdapterResult<(u16, String)> {
        self.world.op("kube.proxy", 100).await?;
        let cluster = Self::cluster(kubeconfig, "service proxy")?;
        // The Service and the pods of its namespace (its endpoints).
        let svc_key = key_of("v1", "Service", Some(namespace), service);
        let pods = format!("v1/Pod/{namespace}/");
        let all = self
            .load_some(
                &cluster,
                |h| (h.is("v1", "Service") || h.is("v1", "Pod")) && h.namespace == Some(namespace),
                |k| k == svc_key || k.starts_with(&pods),
            )
            .await?;
        let Some(svc) = all.get(&svc_key) else {
            return Ok((404, format!("services \"{service}\" not found")));
        };
        let svc = &svc.object;
        let served = svc
            .pointer("/spec/ports")
            .and_then(Value::as_array)
            .is_some_and(|ps| ps.iter().any(|p| p["port"] == port));
        let selector = svc.pointer("/spec/selector").cloned().unwrap_or(json!({}));
        let ready = all.values().any(|st| {
            let p = &st.object;
            p["kind"] == "Pod"
                && p.pointer("/metadata/namespace").and_then(Value::as_str) == Some(namespace)
                && selector.as_object().is_some_and(|m| {
                    !m.is_empty()
                        && m.iter().all(|(k, v)| {
                            p.pointer("/metadata/labels").and_then(|l| l.get(k)) == Some(v)
                        })
                })
                && p.pointer("/status/conditions/0/status") == Some(&json!("True"))
        });
        if !served || !ready {
            return Ok((503, format!("no endpoints available for service \"{service}\"")));
        }
        let answer: Value = svc
            .pointer("/metadata/annotations/sim.catalyst-zero.io~1answer")
            .and_then(Value::as_str)
            .and_then(|a| serde_json::from_str(a).ok())
            .unwrap_or(json!({"status": 200, "body": ""}));
        let _ = path;
        Ok((
            answer["status"].as_u64().unwrap_or(200) as u16,
            answer["body"].as_str().unwrap_or_default().to_owned(),
        ))
    }

    /// The sim's endpoint check: the endpoint must be the one handed over (not the
    /// node-local `127.0.0.1`) and on 6443.
    async fn server_version(&self, kubeconfig: &SecretString) -> AdapterResult<String> {
        self.world.op("kube.version", 200).await?;
        Self::cluster(kubeconfig, "version")?;
        let server = kubeconfig
            .expose()
            .lines()
            .find_map(|l| l.trim().strip_prefix("server:"))
            .map(str::trim)
            .unwrap_or_default()
            .to_owned();
        if server.contains("127.0.0.1") || !server.ends_with(":6443") {
            return Err(StepError::Precondition {
                message: format!("the Kubernetes API is not served at {server} for other hosts"),
                remediation: "Rewrite the kubeconfig to the load balancer on 6443.".into(),
            });
        }
        // The version the cluster's servers were installed with.
        let cluster = Self::cluster(kubeconfig, "version")?;
        let nodes = super::ssh::SimSsh::new(self.world.clone()).k3s_nodes().await?;
        let version = nodes
            .iter()
            .filter(|n| n["role"] == "server")
            .find(|n| {
                let c = n["cluster"].as_str().unwrap_or_default();
                cluster_of(&super::ssh::fake_kubeconfig(c)) == cluster
            })
            .and_then(|n| n["version"].as_str())
            .ok_or_else(|| err("version", Cause::Unavailable, "no server of this cluster runs"))?;
        Ok(format!("{version} (sim)"))
    }

    async fn delete(&self, kubeconfig: &SecretString, r: &ObjectRef) -> AdapterResult<()> {
        self.world.op("kube.delete", 200).await?;
        let cluster = Self::cluster(kubeconfig, "delete")?;
        let _g = self.world.lock(SYS, &cluster).await;
        if crossplane::is_managed(&r.api_version) {
            self.delete_managed(&cluster, r).await?;
        }
        self.world.delete(SYS, &cluster, &ref_key(r)).await?;
        self.world.forget_secret_values(&format!("{cluster}|{}", ref_key(r)));
        if r.api_version == "v1" && r.kind == "Namespace" {
            // Namespace deletion takes its objects with it.
            let all = self.load_all(&cluster).await?;
            let doomed: BTreeMap<&String, ()> = all
                .iter()
                .filter(|(_, s)| {
                    s.object.pointer("/metadata/namespace").and_then(Value::as_str)
                        == Some(r.name.as_str())
                })
                .map(|(k, _)| (k, ()))
                .collect();
            for k in doomed.keys() {
                self.world.delete(SYS, &cluster, k).await?;
                self.world.forget_secret_values(&format!("{cluster}|{k}"));
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backend::world::{FailRule, SimConfig};

    fn hr(name: &str, deps: &[&str]) -> Value {
        json!({
            "apiVersion": "helm.toolkit.fluxcd.io/v2",
            "kind": "HelmRelease",
            "metadata": {"name": name, "namespace": "flux-system", "labels": {"catalyst.io/component": name}},
            "spec": {
                "interval": "10m",
                "chart": {"spec": {"chart": name, "version": "1.0.0", "sourceRef": {"kind": "HelmRepository", "name": "repo"}}},
                "dependsOn": deps.iter().map(|d| json!({"name": d})).collect::<Vec<_>>(),
            },
        })
    }

    fn hr_ref(name: &str) -> ObjectRef {
        ObjectRef {
            api_version: "helm.toolkit.fluxcd.io/v2".into(),
            kind: "HelmRelease".into(),
            namespace: Some("flux-system".into()),
            name: name.into(),
        }
    }

    fn ready(obj: &Value) -> (String, String) {
        let c = &obj["status"]["conditions"][0];
        (c["status"].as_str().unwrap().to_owned(), c["reason"].as_str().unwrap().to_owned())
    }

    fn kc() -> SecretString {
        SecretString::new(super::super::ssh::fake_kubeconfig("test-cluster"))
    }

    #[tokio::test]
    async fn apply_is_ssa_like() {
        let dir = tempfile::tempdir().unwrap();
        let kube = SimKube::new(Arc::new(SimWorld::new(dir.path(), SimConfig::instant())));
        let cm = json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "c", "namespace": "default", "labels": {"a": "1"}}, "data": {"k": "v"}});
        kube.apply(&kc(), "catalyst-zero", std::slice::from_ref(&cm)).await.unwrap();
        let r = ObjectRef::of(&cm).unwrap();
        let got = kube.get(&kc(), &r).await.unwrap().unwrap();
        assert_eq!(got["data"]["k"], "v");
        assert_eq!(got["metadata"]["generation"], 1);
        assert_eq!(got["metadata"]["managedFields"][0]["manager"], "catalyst-zero");
        let created = got["metadata"]["creationTimestamp"].clone();
        assert!(DateTime::parse_from_rfc3339(created.as_str().unwrap()).is_ok());
        let rv1: u64 = got["metadata"]["resourceVersion"].as_str().unwrap().parse().unwrap();
        // Same object again: nothing changes.
        kube.apply(&kc(), "catalyst-zero", std::slice::from_ref(&cm)).await.unwrap();
        let again = kube.get(&kc(), &r).await.unwrap().unwrap();
        assert_eq!(again["metadata"]["resourceVersion"], got["metadata"]["resourceVersion"]);
        // A spec change bumps generation and resourceVersion, keeps creation.
        let mut d = json!({"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": "d", "namespace": "default"}, "spec": {"replicas": 2}});
        kube.apply(&kc(), "m", std::slice::from_ref(&d)).await.unwrap();
        d["spec"]["replicas"] = json!(3);
        d["metadata"]["labels"] = json!({"x": "y"});
        kube.apply(&kc(), "m2", std::slice::from_ref(&d)).await.unwrap();
        let dep = kube.get(&kc(), &ObjectRef::of(&d).unwrap()).await.unwrap().unwrap();
        assert_eq!(dep["metadata"]["generation"], 2);
        assert_eq!(dep["metadata"]["labels"]["x"], "y");
        assert_eq!(dep["metadata"]["managedFields"][0]["manager"], "m2");
        assert!(dep["metadata"]["resourceVersion"].as_str().unwrap().parse::<u64>().unwrap() > rv1);
        assert_eq!(dep["status"]["readyReplicas"], 3, "latency 0: ready at once");
        // Label-selected list; bad selectors are refused.
        assert_eq!(kube.list(&kc(), "apps/v1", "Deployment", "x=y").await.unwrap().len(), 1);
        assert_eq!(kube.list(&kc(), "apps/v1", "Deployment", "x!=y").await.unwrap().len(), 0);
        assert!(matches!(
            kube.list(&kc(), "v1", "ConfigMap", "a in (").await,
            Err(StepError::Adapter { cause: Cause::Invalid, .. })
        ));
        // Another cluster sees nothing; an empty kubeconfig is refused.
        let other = SecretString::new(super::super::ssh::fake_kubeconfig("other"));
        assert!(kube.get(&other, &r).await.unwrap().is_none());
        assert!(matches!(
            kube.get(&SecretString::new(""), &r).await,
            Err(StepError::Adapter { cause: Cause::Unauthorized, .. })
        ));
        kube.delete(&kc(), &r).await.unwrap();
        kube.delete(&kc(), &r).await.unwrap();
        assert!(kube.get(&kc(), &r).await.unwrap().is_none());
        assert!(matches!(
            kube.apply(&kc(), "m", &[json!({"kind": "X"})]).await,
            Err(StepError::Adapter { cause: Cause::Invalid, .. })
        ));
    }

    /// `get` and `list` read only what they need (the chart installers,
    /// the wanted kind, the wanted chart objects). Each must answer what
    /// the whole cluster's computation answers, chart objects, pods and a
    /// stored object that shadows a chart's included.
    #[tokio::test]
    async fn narrowed_reads_answer_as_the_whole_cluster_does() {
        let dir = tempfile::tempdir().unwrap();
        let kube = SimKube::new(Arc::new(SimWorld::new(dir.path(), SimConfig::instant())));
        let mut releases =
            vec![hr("bp-cert-manager", &[]), hr("bp-crossplane", &["bp-cert-manager"])];
        releases[0]["spec"]["targetNamespace"] = json!("cert-manager");
        kube.apply(&kc(), "flux", &releases).await.unwrap();
        // A stored object with a chart object's key wins over the chart's.
        let sa = json!({"apiVersion": "v1", "kind": "ServiceAccount",
                        "metadata": {"name": "cert-manager", "namespace": "cert-manager",
                                     "labels": {"mine": "yes"}}});
        let cm = json!({"apiVersion": "v1", "kind": "ConfigMap",
                        "metadata": {"name": "c", "namespace": "cert-manager"}});
        kube.apply(&kc(), "me", &[sa, cm]).await.unwrap();
        let cluster = SimKube::cluster(&kc(), "test").unwrap();
        let all = kube.load_all(&cluster).await.unwrap();
        let mut kinds = BTreeMap::new();
        for (key, st) in &all {
            let o = &st.object;
            let api = o["apiVersion"].as_str().unwrap().to_owned();
            let kind = o["kind"].as_str().unwrap().to_owned();
            *kinds.entry((api.clone(), kind.clone())).or_insert(0) += 1;
            let r = ObjectRef {
                api_version: api,
                kind,
                namespace: o.pointer("/metadata/namespace").and_then(Value::as_str).map(Into::into),
                name: o["metadata"]["name"].as_str().unwrap().to_owned(),
            };
            let mut whole = kube.observe(key, &all, None, Utc::now()).unwrap();
            let mut got = kube.get(&kc(), &r).await.unwrap().unwrap_or_else(|| panic!("{key}"));
            for o in [&mut whole, &mut got] {
                // Condition times are whole seconds; a read may cross one.
                if let Some(cs) = o.pointer_mut("/status/conditions").and_then(Value::as_array_mut)
                {
                    cs.iter_mut().for_each(|c| c["lastTransitionTime"] = json!("t"));
                }
            }
            assert_eq!(got, whole, "{key}");
        }
        assert_eq!(all.values().filter(|s| s.object["kind"] == "Pod").count(), 5, "{kinds:?}");
        assert!(
            kinds.contains_key(&(
                "apiextensions.k8s.io/v1".into(),
                "CustomResourceDefinition".into()
            ))
        );
        let shadowed = &all[&key_of("v1", "ServiceAccount", Some("cert-manager"), "cert-manager")];
        assert_eq!(shadowed.object["metadata"]["labels"]["mine"], "yes");
        for ((api, kind), n) in &kinds {
            let listed = kube.list(&kc(), api, kind, "").await.unwrap();
            assert_eq!(listed.len(), *n, "{api} {kind}");
        }
        let mine = kube.list(&kc(), "v1", "ServiceAccount", "mine=yes").await.unwrap();
        assert_eq!(mine.len(), 1);
        // A key no chart makes and no one stored is absent.
        let none = ObjectRef {
            api_version: "apps/v1".into(),
            kind: "Deployment".into(),
            namespace: Some("cert-manager".into()),
            name: "nothing".into(),
        };
        assert!(kube.get(&kc(), &none).await.unwrap().is_none());
    }

    /// A read decides from a key what it would decide from the object.
    #[test]
    fn a_key_names_the_head_its_object_has() {
        let objects = [
            hr("bp-x", &[]),
            json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "n"}}),
            json!({"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "s", "namespace": "a"}}),
            json!({"apiVersion": "pkg.crossplane.io/v1", "kind": "Provider", "metadata": {"name": "p"}}),
        ];
        for o in &objects {
            let key = object_key(o);
            assert_eq!(Head::of_key(&key), Head::of_object(o), "{key}");
        }
        let hr_key = object_key(&objects[0]);
        assert!(
            Head::of_key(&hr_key).is_helm_release() && Head::of_key(&hr_key).may_install_charts()
        );
        assert!(feeds_managed_status(&Head::of_key("v1/Secret/a/s")));
        assert!(!feeds_managed_status(&Head::of_key("v1/ConfigMap/a/s")));
    }

    /// Reads that need a release only to know what it installs copy its
    /// outline, not its values.
    #[test]
    fn an_installers_outline_keeps_what_decides_the_install_and_not_its_values() {
        let mut r = hr("bp-crossplane", &["bp-cert-manager"]);
        r["spec"]["values"] = json!({"replicas": 3, "args": ["--debug"]});
        r["spec"]["targetNamespace"] = json!("crossplane-system");
        let o = installer_outline(&r);
        assert!(o["spec"].get("values").is_none() && o["metadata"].get("labels").is_none());
        for field in ["chart", "dependsOn", "targetNamespace"] {
            assert_eq!(o["spec"][field], r["spec"][field], "{field}");
        }
        assert_eq!(o["metadata"], json!({"name": "bp-crossplane", "namespace": "flux-system"}));
        assert!(is_helm_release(&o) && installs_charts(&o));
        let cluster_scoped = json!({"apiVersion": "pkg.crossplane.io/v1", "kind": "Provider",
            "metadata": {"name": "p"}, "spec": {"package": "x/provider-hetzner:v1"}});
        let o = installer_outline(&cluster_scoped);
        assert!(o["metadata"].get("namespace").is_none() && installs_charts(&o));
    }

    /// A read of the stored installers parses each to the outline the
    /// object gives, skipping everything else; an object whose spec is
    /// not an object outlines to its identity, as before.
    #[tokio::test]
    async fn stored_installers_read_as_the_outline_their_objects_give() {
        let dir = tempfile::tempdir().unwrap();
        let kube = SimKube::new(Arc::new(SimWorld::new(dir.path(), SimConfig::instant())));
        let mut r = hr("bp-crossplane", &["bp-cert-manager"]);
        r["spec"]["values"] = json!({"replicas": 3, "args": ["--debug"]});
        let cm = json!({"apiVersion": "v1", "kind": "ConfigMap",
            "metadata": {"name": "c", "namespace": "flux-system"}, "data": {"k": "v"}});
        kube.apply(&kc(), "catalyst-zero", &[r.clone(), cm.clone()]).await.unwrap();
        let cluster = cluster_of(kc().expose());
        let odd = json!({"object": {"apiVersion": "helm.toolkit.fluxcd.io/v2",
            "kind": "HelmRelease", "metadata": {"name": "odd", "namespace": "flux-system"},
            "spec": "not an object"}, "reconcileFrom": "2026-01-01T00:00:00Z"});
        let odd_key = "helm.toolkit.fluxcd.io/v2/HelmRelease/flux-system/odd";
        kube.world.put(SYS, &cluster, odd_key, &odd).await.unwrap();
        let read = kube.load_stored_as(&cluster, |h| {
            if h.may_install_charts() { Take::Outline } else { Take::Skip }
        });
        let read = read.await.unwrap();
        assert_eq!(read.len(), 2, "{:?}", read.keys());
        let stored = read[&object_key(&r)].object.clone();
        let mut expected = installer_outline(&r);
        // What apply added to the stored object's metadata is not outlined.
        assert_eq!(stored, expected);
        expected = json!({"apiVersion": "helm.toolkit.fluxcd.io/v2", "kind": "HelmRelease",
            "metadata": {}, "spec": {}});
        assert_eq!(read[odd_key].object, expected);
        let whole = kube.load_stored_as(&cluster, |h| {
            if h.is("v1", "ConfigMap") { Take::Whole } else { Take::Skip }
        });
        assert_eq!(whole.await.unwrap()[&object_key(&cm)].object["data"], cm["data"]);
    }

    /// A chart's objects are shared by every read of one release in one
    /// namespace, and a release elsewhere gets its own.
    #[test]
    fn a_charts_objects_are_rendered_once_per_release_and_namespace() {
        let chart = crate::charts::chart("bp-cilium").unwrap();
        let a = chart_objects(chart, "cilium", "kube-system");
        assert!(Arc::ptr_eq(&a, &chart_objects(chart, "cilium", "kube-system")));
        let b = chart_objects(chart, "cilium", "elsewhere");
        assert!(!Arc::ptr_eq(&a, &b) && !b.is_empty());
        assert!(b.iter().all(|o| !o.key.contains("/kube-system/")));
        let pods: Vec<_> = b.iter().flat_map(|o| &o.pods).collect();
        assert!(!pods.is_empty());
        for (key, pod) in pods {
            assert!(key.starts_with("v1/Pod/elsewhere/"), "{key}");
            assert_eq!(pod["metadata"]["namespace"], "elsewhere");
        }
    }

    #[tokio::test]
    async fn helm_releases_become_ready_in_depends_on_order() {
        let dir = tempfile::tempdir().unwrap();
        // cilium 40 s and cert-manager 30 s → 40 ms and 30 ms.
        let cfg = SimConfig { latency_factor: 0.001, ..SimConfig::default() };
        let world = Arc::new(SimWorld::new(dir.path(), cfg));
        let kube = SimKube::new(world.clone());
        // The install clock starts at the apply.
        let start = std::time::Instant::now();
        kube.apply(
            &kc(),
            "cz",
            &[hr("cert-manager", &["cilium"]), hr("cilium", &[]), hr("app", &["ghost"])],
        )
        .await
        .unwrap();

        let cilium = kube.get(&kc(), &hr_ref("cilium")).await.unwrap().unwrap();
        assert_eq!(ready(&cilium), ("Unknown".into(), "Progressing".into()));
        let cm = kube.get(&kc(), &hr_ref("cert-manager")).await.unwrap().unwrap();
        assert_eq!(ready(&cm), ("False".into(), "DependencyNotReady".into()));
        assert!(
            cm["status"]["conditions"][0]["message"]
                .as_str()
                .unwrap()
                .contains("flux-system/cilium")
        );

        // Poll until cert-manager is ready; cilium must have been ready first.
        let mut cilium_ready_seen = false;
        loop {
            let c = kube.get(&kc(), &hr_ref("cilium")).await.unwrap().unwrap();
            let m = kube.get(&kc(), &hr_ref("cert-manager")).await.unwrap().unwrap();
            if ready(&c).0 == "True" {
                cilium_ready_seen = true;
                assert_eq!(ready(&c).1, "InstallSucceeded");
            }
            if ready(&m).0 == "True" {
                assert!(cilium_ready_seen, "cert-manager was ready before its dependency");
                break;
            }
            assert!(start.elapsed() < std::time::Duration::from_secs(5), "never became ready");
            tokio::time::sleep(std::time::Duration::from_millis(5)).await;
        }
        // cert-manager installs only after cilium: ≥ 40 + 30 ms.
        assert!(start.elapsed() >= std::time::Duration::from_millis(60));
        let app = kube.get(&kc(), &hr_ref("app")).await.unwrap().unwrap();
        assert_eq!(ready(&app), ("False".into(), "DependencyNotReady".into()));
        // list sees the computed status too.
        let all = kube
            .list(
                &kc(),
                "helm.toolkit.fluxcd.io/v2",
                "HelmRelease",
                "catalyst.io/component in (cilium,cert-manager)",
            )
            .await
            .unwrap();
        assert_eq!(all.len(), 2);
        assert!(all.iter().all(|o| ready(o).0 == "True"));

        // A restart (new world, same directory) still sees them ready.
        let kube2 = SimKube::new(Arc::new(SimWorld::new(
            dir.path(),
            SimConfig { latency_factor: 0.001, ..SimConfig::default() },
        )));
        assert_eq!(
            ready(&kube2.get(&kc(), &hr_ref("cert-manager")).await.unwrap().unwrap()).0,
            "True"
        );
    }

    #[tokio::test]
    async fn the_simulated_provider_observes_writes_and_orphans_as_its_policies_say() {
        let dir = tempfile::tempdir().unwrap();
        let world = Arc::new(SimWorld::new(dir.path(), SimConfig::instant()));
        let kube = SimKube::new(world.clone());
        let cloud = crate::backend::SimCloud::new(world.clone());
        let labels =
            BTreeMap::from([("catalyst.openova.io/sovereign".to_owned(), "acme".to_owned())]);
        let net = cloud
            .create("network", "acme-net", labels, json!({"ip_range": "10.0.0.0/16"}))
            .await
            .unwrap();
        let mr = |policies: Value, for_provider: Value| {
            json!({
                "apiVersion": "network.hetzner.m.crossplane.io/v1alpha1", "kind": "Network",
                "metadata": {"name": "acme-net", "namespace": "crossplane-system",
                             "annotations": {"crossplane.io/external-name": net.id.to_string()}},
                "spec": {"managementPolicies": policies, "forProvider": for_provider,
                         "providerConfigRef": {"kind": "ProviderConfig", "name": "default"}},
            })
        };
        let observe = mr(json!(["Observe"]), json!({}));
        // No provider yet: the kind is not served.
        let e = kube.apply(&kc(), "cz", std::slice::from_ref(&observe)).await.unwrap_err();
        assert!(e.to_string().contains("no matches for kind"), "{e}");
        let provider = json!({"apiVersion": "pkg.crossplane.io/v1", "kind": "Provider",
            "metadata": {"name": "provider-hetzner"},
            "spec": {"package": "xpkg.upbound.io/miaits/provider-hetzner@sha256:00"}});
        let config = json!({"apiVersion": "hetzner.m.crossplane.io/v1beta1", "kind": "ProviderConfig",
            "metadata": {"name": "default", "namespace": "crossplane-system"},
            "spec": {"credentials": {"source": "Secret",
                "secretRef": {"namespace": "crossplane-system", "name": "hcloud", "key": "token"}}}});
        kube.apply(&kc(), "cz", &[provider]).await.unwrap();
        kube.apply(&kc(), "cz", &[config, observe.clone()]).await.unwrap();
        let r = ObjectRef::of(&observe).unwrap();
        let cond = |o: &Value, t: &str| {
            let cs = o["status"]["conditions"].as_array().unwrap();
            let c = cs.iter().find(|c| c["type"] == t).unwrap();
            (c["status"].as_str().unwrap().to_owned(), c["message"].as_str().unwrap().to_owned())
        };
        // The credentials Secret is missing.
        let got = kube.get(&kc(), &r).await.unwrap().unwrap();
        assert_eq!(cond(&got, "Synced").0, "False");
        assert!(cond(&got, "Synced").1.contains("credentials secret"), "{got}");
        let secret = json!({"apiVersion": "v1", "kind": "Secret",
            "metadata": {"name": "hcloud", "namespace": "crossplane-system"}, "stringData": {"token": "t"}});
        kube.apply(&kc(), "cz", &[secret]).await.unwrap();
        let got = kube.get(&kc(), &r).await.unwrap().unwrap();
        assert_eq!(cond(&got, "Synced").0, "True");
        assert_eq!(got["status"]["atProvider"]["ipRange"], "10.0.0.0/16");
        assert_eq!(got["status"]["atProvider"]["labels"]["catalyst.openova.io/sovereign"], "acme");
        // Observe-only writes nothing, even when forProvider differs.
        let other = json!({"name": "renamed", "ipRange": "10.0.0.0/16"});
        kube.apply(&kc(), "cz", &[mr(json!(["Observe"]), other.clone())]).await.unwrap();
        kube.get(&kc(), &r).await.unwrap();
        assert_eq!(cloud.get("network", net.id).await.unwrap().unwrap().name, "acme-net");
        // Update allowed: the name is written to the cloud.
        let widened = mr(json!(["Observe", "Create", "Update", "LateInitialize"]), other);
        kube.apply(&kc(), "cz", &[widened]).await.unwrap();
        let got = kube.get(&kc(), &r).await.unwrap().unwrap();
        assert_eq!(cloud.get("network", net.id).await.unwrap().unwrap().name, "renamed");
        assert_eq!(got["status"]["atProvider"]["name"], "renamed");
        // Without Delete the resource's deletion orphans the object...
        kube.delete(&kc(), &r).await.unwrap();
        assert!(cloud.get("network", net.id).await.unwrap().is_some());
        // ...with it, the object goes too.
        kube.apply(&kc(), "cz", &[mr(json!(["*"]), json!({}))]).await.unwrap();
        kube.delete(&kc(), &r).await.unwrap();
        assert!(cloud.get("network", net.id).await.unwrap().is_none());
    }

    #[tokio::test]
    async fn fail_rule_makes_a_release_install_failed() {
        let dir = tempfile::tempdir().unwrap();
        let cfg = SimConfig {
            fail: vec![FailRule {
                op: "kube.helmrelease.openbao".into(),
                cause: Cause::CommandFailed,
                times: 1,
            }],
            ..SimConfig::instant()
        };
        let kube = SimKube::new(Arc::new(SimWorld::new(dir.path(), cfg)));
        kube.apply(&kc(), "cz", &[hr("openbao", &[]), hr("external-secrets", &["openbao"])])
            .await
            .unwrap();
        for _ in 0..3 {
            let o = kube.get(&kc(), &hr_ref("openbao")).await.unwrap().unwrap();
            assert_eq!(ready(&o), ("False".into(), "InstallFailed".into()));
        }
        let e = kube.get(&kc(), &hr_ref("external-secrets")).await.unwrap().unwrap();
        assert_eq!(ready(&e), ("False".into(), "DependencyNotReady".into()));
    }
}
