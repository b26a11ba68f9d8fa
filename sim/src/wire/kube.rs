//! An in-process fake Kubernetes API server (axum, a real socket), with the
//! semantics the kit's adapter relies on. No Kubernetes can run here, so
//! this fake is the proof; it follows the API conventions:
//!
//! - **Discovery**: `/api`, `/api/v1`, `/apis`, `/apis/{group}/{version}`
//!   list the built-in kinds and every registered CRD's kind.
//! - **CRDs**: creating a `CustomResourceDefinition` registers its kind; it
//!   reports `Established=True` (or never, when injected), and its custom
//!   resources are refused with 404 until then.
//! - **Server-side apply** (`PATCH` with `application/apply-patch+yaml`,
//!   `fieldManager`, `force`): field ownership per manager in
//!   `metadata.managedFields` (`FieldsV1`), a 409 `Conflict` naming the
//!   other manager when a field it owns would change (unless `force`, which
//!   takes the field over), removal of fields the manager no longer applies.
//! - **Metadata**: `uid`, `creationTimestamp`, a cluster-wide
//!   `resourceVersion` that grows with every write, `generation` that grows
//!   when anything but `metadata`/`status` changes.
//! - **Reads**: get, list with `labelSelector` (Kubernetes syntax) and
//!   `fieldSelector` (`metadata.name`/`metadata.namespace`), watch
//!   (from now, or resumed from a `resourceVersion` with every event since,
//!   `410 Expired` when that is too old),
//!   (`?watch=true`: the current objects as `ADDED`, then live events, as
//!   newline-delimited JSON), the `status` subresource, delete.
//! - **Deletion** honours finalizers: the object is marked with
//!   `deletionTimestamp` until its controllers remove them.
//! - **Namespaces**: `default`, `kube-system`, `kube-public` and
//!   `kube-node-lease` exist; namespaced objects need theirs.
//! - **Errors** are `Status` objects with `reason` and `code`.
//!
//! - **TLS and identities** ([`FakeKube::start_tls`]): the cluster's own CA,
//!   admin client certificates, service-account tokens (`TokenRequest`)
//!   and `TokenReview` ([`super::kube_auth`]).
//! - **Proxies**: the service proxy (GET) and the pod proxy (every method),
//!   forwarding to real servers a test registered
//!   ([`FakeKube::route_service`], [`FakeKube::route_pod`]).
//!
//! Simulated controllers (Flux reconciling HelmReleases, workloads becoming
//! available, External Secrets) act through [`FakeKube::set_status`].

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use axum::Router;
use axum::body::{Body, Bytes};
use axum::extract::{Query, State};
use axum::http::{HeaderMap, Method, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use serde_json::{Value, json};
use tokio::sync::broadcast;

use cz_adapters::cloud::Selector;

use super::kube_auth::{Caller, SaToken};
use super::kube_tls::{Peer, Pki, TlsListener};

/// A kind the server serves.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Kind {
    pub group: String,
    pub version: String,
    pub kind: String,
    pub plural: String,
    pub namespaced: bool,
}

fn builtin() -> Vec<Kind> {
    let k = |g: &str, v: &str, kind: &str, plural: &str, ns: bool| Kind {
        group: g.into(),
        version: v.into(),
        kind: kind.into(),
        plural: plural.into(),
        namespaced: ns,
    };
    vec![
        k("", "v1", "Namespace", "namespaces", false),
        k("", "v1", "ConfigMap", "configmaps", true),
        k("", "v1", "Secret", "secrets", true),
        k("", "v1", "Service", "services", true),
        k("", "v1", "Pod", "pods", true),
        k("", "v1", "Node", "nodes", false),
        k("", "v1", "PersistentVolumeClaim", "persistentvolumeclaims", true),
        k("", "v1", "ServiceAccount", "serviceaccounts", true),
        k("rbac.authorization.k8s.io", "v1", "ClusterRole", "clusterroles", false),
        k("rbac.authorization.k8s.io", "v1", "ClusterRoleBinding", "clusterrolebindings", false),
        // K3s serves its helm-controller's kinds from the start.
        k("helm.cattle.io", "v1", "HelmChart", "helmcharts", true),
        k("helm.cattle.io", "v1", "HelmChartConfig", "helmchartconfigs", true),
        k("apps", "v1", "Deployment", "deployments", true),
        k("apps", "v1", "StatefulSet", "statefulsets", true),
        k("apps", "v1", "DaemonSet", "daemonsets", true),
        k(
            "apiextensions.k8s.io",
            "v1",
            "CustomResourceDefinition",
            "customresourcedefinitions",
            false,
        ),
    ]
}

/// An object's key: group, plural, namespace, name.
type Key = (String, String, String, String);

#[derive(Default)]
struct Inner {
    kinds: Vec<Kind>,
    objects: BTreeMap<Key, Value>,
    revision: u64,
    /// CRD names (`plural.group`) that never become Established.
    never_establish: Vec<String>,
    /// Injected faults the simulated controllers act on.
    pub(super) faults: Faults,
    /// Services whose proxy forwards to a real server: (ns, name) → base URL.
    routes: BTreeMap<(String, String), String>,
    /// Pods whose proxy forwards to a real server: (ns, pod) → base URL.
    pod_routes: BTreeMap<(String, String), String>,
    /// Service-account tokens issued (TLS mode).
    issued: super::kube_auth::Issued,
    /// Helm installs the simulated controllers made, in order.
    installs: Vec<String>,
    /// Recent watch events, for watches that resume from a resourceVersion.
    history: std::collections::VecDeque<Event>,
}

/// A watch event: the kind, the object (at its new resourceVersion), the type.
type Event = (Kind, Value, &'static str);

/// How many events a watch can resume across (older: 410 Gone, as an API
/// server whose etcd compacted them says).
const HISTORY: usize = 4_096;

/// Records `ev` for resuming watches and sends it to live ones; under the
/// state lock, so the event order is the resourceVersion order.
fn emit(st: &mut Inner, tx: &broadcast::Sender<Event>, ev: Event) {
    if st.history.len() == HISTORY {
        st.history.pop_front();
    }
    st.history.push_back(ev.clone());
    let _ = tx.send(ev);
}

fn rv_of(o: &Value) -> u64 {
    o.pointer("/metadata/resourceVersion")
        .and_then(Value::as_str)
        .and_then(|r| r.parse().ok())
        .unwrap_or(0)
}

/// Failures the simulated controllers inject ([`super::controllers`]).
#[derive(Clone, Debug, Default)]
pub(super) struct Faults {
    /// HelmRelease names whose chart cannot be pulled.
    pub chart_pull: Vec<String>,
    /// Workloads (`namespace/name`) whose pods crash-loop.
    pub crash_loop: Vec<String>,
}

/// The fake's handle: its address and test-side access to its state.
#[derive(Clone)]
pub struct FakeKube {
    inner: Arc<Mutex<Inner>>,
    events: broadcast::Sender<Event>,
    pub addr: SocketAddr,
    /// TLS mode: the cluster's PKI.
    pki: Option<Arc<Pki>>,
}

type ApiResult = Result<(StatusCode, Value), Box<Response>>;

fn status(code: StatusCode, reason: &str, message: impl Into<String>) -> Box<Response> {
    let body = json!({
        "kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
        "message": message.into(), "reason": reason, "code": code.as_u16(),
    });
    Box::new((code, axum::Json(body)).into_response())
}

impl FakeKube {
    /// Starts the server on 127.0.0.1 (an ephemeral port), plain HTTP and
    /// without authentication.
    pub async fn start() -> FakeKube {
        let (listener, addr) = super::bind_loopback().await;
        let fake = FakeKube::new(addr, None);
        super::serve(listener, Router::new().fallback(handle).with_state(fake.clone()));
        fake
    }

    /// Starts the server over TLS with authentication, as K3s serves its
    /// API: [`FakeKube::kubeconfig`] is the admin's.
    pub async fn start_tls() -> FakeKube {
        let (listener, addr) = super::bind_loopback().await;
        FakeKube::serve_tls(listener, addr, Pki::new())
    }

    /// As [`FakeKube::start_tls`], listening at `addr` (a loopback address
    /// a test gave its cluster's load balancer), with a serving
    /// certificate valid for that address.
    pub async fn start_tls_at(addr: SocketAddr) -> std::io::Result<FakeKube> {
        let listener = tokio::net::TcpListener::bind(addr).await?;
        let addr = listener.local_addr()?;
        Ok(FakeKube::serve_tls(listener, addr, Pki::for_address(Some(addr.ip()))))
    }

    fn serve_tls(listener: tokio::net::TcpListener, addr: SocketAddr, pki: Pki) -> FakeKube {
        let pki = Arc::new(pki);
        let fake = FakeKube::new(addr, Some(pki.clone()));
        let app = Router::new().fallback(handle).with_state(fake.clone());
        let tls = TlsListener::new(listener, &pki);
        tokio::spawn(async move {
            let _ = axum::serve(tls, app.into_make_service_with_connect_info::<Peer>()).await;
        });
        fake
    }

    /// The admin's client certificate and key (TLS mode), as K3s writes
    /// them into `k3s.yaml`.
    pub fn admin_credentials(&self) -> Option<(String, String)> {
        self.pki.as_ref().map(|p| (p.client_cert_pem.clone(), p.client_key_pem.clone()))
    }

    fn new(addr: SocketAddr, pki: Option<Arc<Pki>>) -> FakeKube {
        let (events, _) = broadcast::channel(4096);
        let fake = FakeKube {
            inner: Arc::new(Mutex::new(Inner { kinds: builtin(), ..Inner::default() })),
            events,
            addr,
            pki,
        };
        // The namespaces every cluster has.
        for ns in ["default", "kube-system", "kube-public", "kube-node-lease"] {
            fake.put(
                "",
                "namespaces",
                json!({"metadata": {"name": ns}, "status": {"phase": "Active"}}),
            );
        }
        fake
    }

    pub fn url(&self) -> String {
        let scheme = if self.pki.is_some() { "https" } else { "http" };
        format!("{scheme}://{}", self.addr)
    }

    /// The admin's kubeconfig (TLS mode: the CA, a client certificate).
    pub fn kubeconfig(&self) -> String {
        match &self.pki {
            Some(pki) => pki.kubeconfig(&self.url()),
            None => format!(
                "apiVersion: v1\nkind: Config\nclusters:\n- cluster:\n    server: {}\n  name: fake\n\
                 contexts:\n- context:\n    cluster: fake\n    user: fake\n  name: fake\n\
                 current-context: fake\nusers:\n- name: fake\n  user: {{}}\n",
                self.url()
            ),
        }
    }

    /// The cluster CA (TLS mode).
    pub fn ca_pem(&self) -> Option<String> {
        self.pki.as_ref().map(|p| p.ca_pem.clone())
    }

    /// The pod proxy of `namespace/pod` forwards to `base_url` (a real
    /// server a test started), while the pod exists and runs.
    pub fn route_pod(&self, namespace: &str, pod: &str, base_url: &str) {
        self.inner
            .lock()
            .expect("lock")
            .pod_routes
            .insert((namespace.to_owned(), pod.to_owned()), base_url.to_owned());
    }

    /// Where the Service `namespace/service` leads, as a client in the
    /// cluster reaches it (a route a test registered).
    pub fn service_route(&self, namespace: &str, service: &str) -> Option<String> {
        let st = self.inner.lock().expect("lock");
        st.routes.get(&(namespace.to_owned(), service.to_owned())).cloned()
    }

    /// A token for the service account `namespace/name`, as the
    /// `TokenRequest` API issues it (TLS mode; the account must exist).
    pub fn issue_token(
        &self,
        namespace: &str,
        name: &str,
        audiences: &[String],
        ttl_secs: i64,
    ) -> Result<String, String> {
        let pki = self.pki.as_ref().ok_or("tokens need the TLS mode")?;
        let sa = self
            .get("", "serviceaccounts", namespace, name)
            .ok_or_else(|| format!("serviceaccounts \"{name}\" not found"))?;
        let token = SaToken {
            namespace: namespace.to_owned(),
            name: name.to_owned(),
            uid: sa.pointer("/metadata/uid").and_then(Value::as_str).unwrap_or_default().to_owned(),
            audiences: if audiences.is_empty() {
                vec![super::kube_auth::ISSUER.to_owned()]
            } else {
                audiences.to_vec()
            },
            expires: chrono::Utc::now().timestamp() + ttl_secs.max(600),
        };
        let jwt = super::kube_auth::sign(pki, &token);
        self.inner.lock().expect("lock").issued.insert(jwt.clone(), token);
        Ok(jwt)
    }

    /// Makes the CRD `name` (`plural.group`) never report Established.
    pub fn never_establish(&self, name: &str) {
        self.inner.lock().expect("lock").never_establish.push(name.to_owned());
    }

    /// Makes `release`'s chart pull fail (a registry refusing it), until
    /// [`FakeKube::heal`].
    pub fn fail_chart_pull(&self, release: &str) {
        self.inner.lock().expect("lock").faults.chart_pull.push(release.to_owned());
    }

    /// Makes the pods of workload `namespace/name` crash-loop.
    pub fn crash_loop(&self, namespace: &str, name: &str) {
        self.inner.lock().expect("lock").faults.crash_loop.push(format!("{namespace}/{name}"));
    }

    /// Clears every injected fault (CRDs included: they establish).
    pub fn heal(&self) {
        let mut st = self.inner.lock().expect("lock");
        st.faults = Faults::default();
        let names = std::mem::take(&mut st.never_establish);
        drop(st);
        for name in names {
            if let Some(mut crd) =
                self.get("apiextensions.k8s.io", "customresourcedefinitions", "", &name)
                && let Some(conds) =
                    crd.pointer_mut("/status/conditions").and_then(Value::as_array_mut)
            {
                for c in conds.iter_mut().filter(|c| c["type"] == "Established") {
                    c["status"] = json!("True");
                    c["reason"] = json!("InitialNamesAccepted");
                }
                let st = crd["status"].take();
                self.set_status("apiextensions.k8s.io", "customresourcedefinitions", "", &name, st);
            }
        }
    }

    /// The Helm installs the simulated controllers made, in order:
    /// `HelmChart/<name>` (K3s) or `HelmRelease/<name>` (Flux).
    pub fn installs(&self) -> Vec<String> {
        self.inner.lock().expect("lock").installs.clone()
    }

    pub(super) fn record_install(&self, what: String) {
        self.inner.lock().expect("lock").installs.push(what);
    }

    pub(super) fn faults(&self) -> Faults {
        self.inner.lock().expect("lock").faults.clone()
    }

    /// The service proxy of `namespace/service` forwards to `base_url` (a
    /// real server a test started), once the service has ready endpoints.
    pub fn route_service(&self, namespace: &str, service: &str, base_url: &str) {
        self.inner
            .lock()
            .expect("lock")
            .routes
            .insert((namespace.to_owned(), service.to_owned()), base_url.to_owned());
    }

    /// Every object of a kind, in every namespace.
    pub fn objects(&self, group: &str, plural: &str) -> Vec<Value> {
        let st = self.inner.lock().expect("lock");
        st.objects
            .iter()
            .filter(|((g, p, _, _), _)| g == group && p == plural)
            .map(|(_, o)| o.clone())
            .collect()
    }

    /// A controller's write: creates `obj` or replaces what is stored
    /// (keeping identity and status unless `obj` has one), with the same
    /// metadata rules as an API write; CRDs register their kind.
    pub fn put(&self, group: &str, plural: &str, mut obj: Value) -> bool {
        let mut st = self.inner.lock().expect("lock");
        let Some(kind) = st.kinds.iter().find(|k| k.group == group && k.plural == plural).cloned()
        else {
            return false;
        };
        let ns = if kind.namespaced {
            obj.pointer("/metadata/namespace").and_then(Value::as_str).unwrap_or("default")
        } else {
            ""
        }
        .to_owned();
        let name =
            obj.pointer("/metadata/name").and_then(Value::as_str).unwrap_or_default().to_owned();
        let key = (group.to_owned(), plural.to_owned(), ns.clone(), name);
        let existing = st.objects.get(&key).cloned();
        obj["apiVersion"] = json!(api_version(&kind));
        obj["kind"] = json!(kind.kind);
        match &existing {
            Some(old) => {
                for f in ["uid", "creationTimestamp", "generation", "resourceVersion"] {
                    obj["metadata"][f] = old["metadata"][f].clone();
                }
                if let Some(d) = old.pointer("/metadata/deletionTimestamp") {
                    obj["metadata"]["deletionTimestamp"] = d.clone();
                }
                if obj.get("status").is_none() && old.get("status").is_some() {
                    obj["status"] = old["status"].clone();
                }
                let strip = |v: &Value| {
                    let mut v = v.clone();
                    if let Some(m) = v.as_object_mut() {
                        m.remove("metadata");
                        m.remove("status");
                    }
                    v
                };
                if strip(old) != strip(&obj) {
                    let g = old["metadata"]["generation"].as_i64().unwrap_or(1);
                    obj["metadata"]["generation"] = json!(g + 1);
                }
                if *old == obj {
                    return true;
                }
            }
            None => {
                obj["metadata"]["uid"] = json!(uuid::Uuid::new_v4().to_string());
                obj["metadata"]["creationTimestamp"] =
                    json!(chrono::Utc::now().format("%Y-%m-%dT%H:%M:%SZ").to_string());
                obj["metadata"]["generation"] = json!(1);
                if kind.namespaced {
                    obj["metadata"]["namespace"] = json!(ns);
                }
            }
        }
        if obj.pointer("/metadata/deletionTimestamp").is_some() && !has_finalizers(&obj) {
            drop(st);
            let name = obj["metadata"]["name"].as_str().unwrap_or_default();
            let _ = remove_object(self, &kind, &ns, name, true);
            return true;
        }
        if kind.kind == "CustomResourceDefinition" && register_crd(&mut st, &mut obj).is_err() {
            return false;
        }
        st.revision += 1;
        obj["metadata"]["resourceVersion"] = json!(st.revision.to_string());
        st.objects.insert(key, obj.clone());
        let ty = if existing.is_some() { "MODIFIED" } else { "ADDED" };
        emit(&mut st, &self.events, (kind, obj, ty));
        true
    }

    /// A controller's delete (garbage collection, uninstall).
    pub fn remove(&self, group: &str, plural: &str, ns: &str, name: &str) {
        let Some(kind) = self
            .inner
            .lock()
            .expect("lock")
            .kinds
            .iter()
            .find(|k| k.group == group && k.plural == plural)
            .cloned()
        else {
            return;
        };
        let _ = delete(self, &kind, ns, name);
    }

    /// An object, as stored.
    pub fn get(&self, group: &str, plural: &str, ns: &str, name: &str) -> Option<Value> {
        let st = self.inner.lock().expect("lock");
        st.objects.get(&(group.into(), plural.into(), ns.into(), name.into())).cloned()
    }

    /// Sets an object's status (a simulated controller); bumps resourceVersion.
    pub fn set_status(
        &self,
        group: &str,
        plural: &str,
        ns: &str,
        name: &str,
        status: Value,
    ) -> bool {
        let mut st = self.inner.lock().expect("lock");
        let key = (group.to_owned(), plural.to_owned(), ns.to_owned(), name.to_owned());
        let Some(kind) = st.kinds.iter().find(|k| k.group == group && k.plural == plural).cloned()
        else {
            return false;
        };
        st.revision += 1;
        let rv = st.revision;
        let Some(obj) = st.objects.get_mut(&key) else { return false };
        obj["status"] = status;
        obj["metadata"]["resourceVersion"] = json!(rv.to_string());
        let obj = obj.clone();
        emit(&mut st, &self.events, (kind, obj, "MODIFIED"));
        true
    }

    fn kind_of(&self, group: &str, version: &str, plural: &str) -> Option<Kind> {
        let st = self.inner.lock().expect("lock");
        st.kinds
            .iter()
            .find(|k| k.group == group && k.version == version && k.plural == plural)
            .cloned()
    }
}

/// `/api/v1/...` or `/apis/{g}/{v}/...` → (group, version, rest).
fn split(path: &str) -> Option<(String, String, Vec<String>)> {
    let segs: Vec<String> =
        path.trim_matches('/').split('/').filter(|s| !s.is_empty()).map(str::to_owned).collect();
    match segs.first().map(String::as_str) {
        Some("api") if segs.len() >= 2 => {
            Some((String::new(), segs[1].clone(), segs[2..].to_vec()))
        }
        Some("apis") if segs.len() >= 3 => {
            Some((segs[1].clone(), segs[2].clone(), segs[3..].to_vec()))
        }
        _ => None,
    }
}

async fn handle(
    State(fake): State<FakeKube>,
    method: Method,
    uri: Uri,
    Query(q): Query<BTreeMap<String, String>>,
    headers: HeaderMap,
    ext: axum::http::Extensions,
    body: Bytes,
) -> Response {
    let path = uri.path().to_owned();
    let caller = match authenticate(&fake, &headers, &ext) {
        Ok(c) => c,
        Err(r) => return *r,
    };
    if let Some(r) = identity_and_proxy(&fake, &caller, &method, &uri, &headers, &body).await {
        return r;
    }
    if let Caller::ServiceAccount(sa) = &caller {
        return *status(
            StatusCode::FORBIDDEN,
            "Forbidden",
            format!(
                "{} is forbidden: User \"{}\" cannot {} resource at {path}",
                path,
                sa.username(),
                method.as_str().to_lowercase()
            ),
        );
    }
    if method == Method::GET
        && let Some(r) = discovery(&fake, &path)
    {
        return r;
    }
    let Some((group, version, rest)) = split(&path) else {
        return *status(StatusCode::NOT_FOUND, "NotFound", format!("no route {path}"));
    };
    // rest: [namespaces, ns, plural, name?, sub?] or [plural, name?, sub?]
    let (ns, rest) = if rest.first().map(String::as_str) == Some("namespaces") && rest.len() >= 3 {
        (rest[1].clone(), rest[2..].to_vec())
    } else {
        (String::new(), rest)
    };
    let Some(plural) = rest.first().cloned() else {
        return *status(StatusCode::NOT_FOUND, "NotFound", format!("no route {path}"));
    };
    let name = rest.get(1).cloned();
    let sub = rest.get(2).cloned();
    let Some(kind) = fake.kind_of(&group, &version, &plural) else {
        return *status(
            StatusCode::NOT_FOUND,
            "NotFound",
            format!(
                "the server could not find the requested resource ({group}/{version} {plural})"
            ),
        );
    };
    if let Err(r) = established(&fake, &kind) {
        return *r;
    }
    let res = match (method.as_str(), name, sub.as_deref()) {
        ("GET", None, _) if q.get("watch").is_some_and(|w| w == "true" || w == "1") => {
            return watch(&fake, &kind, &ns, &q);
        }
        ("GET", None, _) => list(&fake, &kind, &ns, &q),
        ("GET", Some(n), Some("proxy")) if kind.group.is_empty() && kind.plural == "services" => {
            return service_proxy(&fake, &ns, &n, &rest[3..].join("/")).await;
        }
        ("GET", Some(n), None | Some("status")) => get(&fake, &kind, &ns, &n),
        ("PATCH", Some(n), None) => {
            let ct = headers.get("content-type").and_then(|v| v.to_str().ok()).unwrap_or_default();
            if ct.starts_with("application/apply-patch") {
                apply(&fake, &kind, &ns, &n, &q, &body)
            } else if ct.starts_with("application/merge-patch+json") {
                merge_patch(&fake, &kind, &ns, &n, &body)
            } else {
                // A real server also serves JSON patch and, for built-in
                // kinds, strategic merge patch; this fake does not.
                Err(status(
                    StatusCode::UNSUPPORTED_MEDIA_TYPE,
                    "UnsupportedMediaType",
                    format!(
                        "the media type {ct} is not served here: server-side apply and JSON \
                         merge patch are"
                    ),
                ))
            }
        }
        ("PUT" | "PATCH", Some(n), Some("status")) => put_status(&fake, &kind, &ns, &n, &body),
        ("DELETE", Some(n), None) => delete(&fake, &kind, &ns, &n),
        (m, _, _) => Err(status(
            StatusCode::METHOD_NOT_ALLOWED,
            "MethodNotAllowed",
            format!("{m} is not served here"),
        )),
    };
    match res {
        Ok((code, v)) => (code, axum::Json(v)).into_response(),
        Err(r) => *r,
    }
}

/// Who is calling: everyone is the admin on the plain-HTTP fake; over TLS
/// a verified client certificate is the admin, a token the fake issued is
/// its service account, and anything else is 401.
fn authenticate(
    fake: &FakeKube,
    headers: &HeaderMap,
    ext: &axum::http::Extensions,
) -> Result<Caller, Box<Response>> {
    if fake.pki.is_none() {
        return Ok(Caller::Admin);
    }
    let peer = ext.get::<axum::extract::ConnectInfo<Peer>>().map(|c| c.0);
    if peer.is_some_and(|p| p.client_cert) {
        return Ok(Caller::Admin);
    }
    let auth = headers.get(axum::http::header::AUTHORIZATION).and_then(|v| v.to_str().ok());
    let sa = super::kube_auth::bearer(auth)
        .and_then(|t| fake.inner.lock().expect("lock").issued.valid(t));
    sa.map(Caller::ServiceAccount)
        .ok_or_else(|| status(StatusCode::UNAUTHORIZED, "Unauthorized", "Unauthorized"))
}

/// The routes that are not objects: `TokenReview`, `TokenRequest`, and
/// the pod proxy. `None`: not one of them.
async fn identity_and_proxy(
    fake: &FakeKube,
    caller: &Caller,
    method: &Method,
    uri: &Uri,
    headers: &HeaderMap,
    body: &Bytes,
) -> Option<Response> {
    let path = uri.path();
    let segs: Vec<&str> = path.trim_matches('/').split('/').collect();
    let forbidden = |what: &str| {
        let who = match caller {
            Caller::ServiceAccount(sa) => sa.username(),
            Caller::Admin => "system:admin".into(),
        };
        Some(*status(
            StatusCode::FORBIDDEN,
            "Forbidden",
            format!("{what} is forbidden: User \"{who}\" cannot create it"),
        ))
    };
    if method == Method::POST && path == "/apis/authentication.k8s.io/v1/tokenreviews" {
        if let Caller::ServiceAccount(sa) = caller {
            let bindings = fake.objects("rbac.authorization.k8s.io", "clusterrolebindings");
            if !super::kube_auth::may_review(sa, &bindings) {
                return forbidden("tokenreviews.authentication.k8s.io");
            }
        }
        let req: Value = serde_json::from_slice(body).unwrap_or(Value::Null);
        let answer = super::kube_auth::review(&fake.inner.lock().expect("lock").issued, &req);
        return Some((StatusCode::CREATED, axum::Json(answer)).into_response());
    }
    // /api/v1/namespaces/{ns}/serviceaccounts/{name}/token
    if method == Method::POST
        && segs.len() == 7
        && segs[..3] == ["api", "v1", "namespaces"]
        && segs[4] == "serviceaccounts"
        && segs[6] == "token"
    {
        if *caller != Caller::Admin {
            return forbidden("serviceaccounts/token");
        }
        let req: Value = serde_json::from_slice(body).unwrap_or(Value::Null);
        let audiences: Vec<String> = req
            .pointer("/spec/audiences")
            .and_then(Value::as_array)
            .map(|a| a.iter().filter_map(Value::as_str).map(str::to_owned).collect())
            .unwrap_or_default();
        let ttl = req.pointer("/spec/expirationSeconds").and_then(Value::as_i64).unwrap_or(3600);
        return Some(match fake.issue_token(segs[3], segs[5], &audiences, ttl) {
            Ok(token) => {
                let exp = chrono::Utc::now() + chrono::Duration::seconds(ttl.max(600));
                let answer = json!({
                    "kind": "TokenRequest", "apiVersion": "authentication.k8s.io/v1",
                    "spec": req.get("spec").cloned().unwrap_or(json!({})),
                    "status": { "token": token, "expirationTimestamp": exp.to_rfc3339() },
                });
                (StatusCode::CREATED, axum::Json(answer)).into_response()
            }
            Err(m) => *status(StatusCode::NOT_FOUND, "NotFound", m),
        });
    }
    // /api/v1/namespaces/{ns}/pods/{name[:port]}/proxy[/...]
    if segs.len() >= 7
        && segs[..3] == ["api", "v1", "namespaces"]
        && segs[4] == "pods"
        && segs[6] == "proxy"
    {
        if *caller != Caller::Admin {
            return forbidden("pods/proxy");
        }
        let rest = segs[7..].join("/");
        let query = uri.query().map(|q| format!("?{q}")).unwrap_or_default();
        return Some(pod_proxy(fake, segs[3], segs[5], method, &rest, &query, headers, body).await);
    }
    None
}

/// The API server's pod proxy, any method: the pod must exist and run; a
/// route registered for it forwards to a real server, else the dial fails
/// as it would at a pod with nothing listening.
#[allow(clippy::too_many_arguments)]
async fn pod_proxy(
    fake: &FakeKube,
    ns: &str,
    name_port: &str,
    method: &Method,
    path: &str,
    query: &str,
    headers: &HeaderMap,
    body: &Bytes,
) -> Response {
    let name = name_port.split(':').find(|p| !p.is_empty() && *p != "http" && *p != "https");
    let name = name.unwrap_or_default();
    let Some(pod) = fake.get("", "pods", ns, name) else {
        return *status(StatusCode::NOT_FOUND, "NotFound", format!("pods \"{name}\" not found"));
    };
    if pod.pointer("/status/phase").and_then(Value::as_str) != Some("Running") {
        return *status(
            StatusCode::SERVICE_UNAVAILABLE,
            "ServiceUnavailable",
            format!("pod {name} is not running"),
        );
    }
    let route =
        fake.inner.lock().expect("lock").pod_routes.get(&(ns.to_owned(), name.to_owned())).cloned();
    let Some(base) = route else {
        return *status(
            StatusCode::SERVICE_UNAVAILABLE,
            "ServiceUnavailable",
            format!("error trying to reach service: dial tcp {name}: connection refused"),
        );
    };
    let url = format!("{}/{path}{query}", base.trim_end_matches('/'));
    forward(method, &url, headers, body.clone()).await
}

/// Sends the request on to a real server and relays its answer (the
/// headers an application reads: its content type, OpenBao's token).
async fn forward(method: &Method, url: &str, headers: &HeaderMap, body: Bytes) -> Response {
    let m = reqwest::Method::from_bytes(method.as_str().as_bytes()).unwrap_or(reqwest::Method::GET);
    let mut req = reqwest::Client::new().request(m, url).body(body.to_vec());
    for h in ["content-type", "accept", "x-vault-token", "x-vault-request"] {
        if let Some(v) = headers.get(h).and_then(|v| v.to_str().ok()) {
            req = req.header(h, v);
        }
    }
    match req.send().await {
        Ok(r) => {
            let code = StatusCode::from_u16(r.status().as_u16()).unwrap_or(StatusCode::BAD_GATEWAY);
            let ct = r
                .headers()
                .get("content-type")
                .and_then(|v| v.to_str().ok())
                .unwrap_or("application/json")
                .to_owned();
            let body = r.bytes().await.unwrap_or_default();
            (code, [(axum::http::header::CONTENT_TYPE, ct)], body).into_response()
        }
        Err(e) => *status(
            StatusCode::SERVICE_UNAVAILABLE,
            "ServiceUnavailable",
            format!("error trying to reach service: {e}"),
        ),
    }
}

/// `GET /api/v1/namespaces/{ns}/services/{name[:port]}/proxy/{path}`: the
/// API server's service proxy. No Running and Ready pod behind the
/// Service's selector is a 503 "no endpoints available", as the API server
/// answers. Behind a ready Service: a registered route forwards to a real
/// server; else the Service's `sim.catalyst-zero.io/answer` annotation
/// (`{"status": N, "body": "..."}`) is what the simulated application says.
async fn service_proxy(fake: &FakeKube, ns: &str, name_port: &str, path: &str) -> Response {
    let name = name_port.split(':').find(|p| !p.is_empty() && *p != "http" && *p != "https");
    let name = name.unwrap_or_default();
    let Some(svc) = fake.get("", "services", ns, name) else {
        return *status(
            StatusCode::NOT_FOUND,
            "NotFound",
            format!("services \"{name}\" not found"),
        );
    };
    let selector: BTreeMap<String, String> = svc
        .pointer("/spec/selector")
        .and_then(|s| serde_json::from_value(s.clone()).ok())
        .unwrap_or_default();
    let ready = fake.objects("", "pods").iter().any(|p| {
        p.pointer("/metadata/namespace").and_then(Value::as_str) == Some(ns)
            && !selector.is_empty()
            && selector.iter().all(|(k, v)| {
                p.pointer("/metadata/labels").and_then(|l| l.get(k)).and_then(Value::as_str)
                    == Some(v.as_str())
            })
            && p.pointer("/status/phase").and_then(Value::as_str) == Some("Running")
            && p.pointer("/status/conditions")
                .and_then(Value::as_array)
                .is_some_and(|cs| cs.iter().any(|c| c["type"] == "Ready" && c["status"] == "True"))
    });
    if !ready {
        return *status(
            StatusCode::SERVICE_UNAVAILABLE,
            "ServiceUnavailable",
            format!("no endpoints available for service \"{name}\""),
        );
    }
    let route =
        fake.inner.lock().expect("lock").routes.get(&(ns.to_owned(), name.to_owned())).cloned();
    if let Some(base) = route {
        let url = format!("{}/{}", base.trim_end_matches('/'), path);
        return forward(&Method::GET, &url, &HeaderMap::new(), Bytes::new()).await;
    }
    let answer: Option<Value> = svc
        .pointer("/metadata/annotations/sim.catalyst-zero.io~1answer")
        .and_then(Value::as_str)
        .and_then(|a| serde_json::from_str(a).ok());
    match answer {
        Some(a) => {
            let code = a["status"]
                .as_u64()
                .and_then(|c| StatusCode::from_u16(c as u16).ok())
                .unwrap_or(StatusCode::OK);
            (code, a["body"].as_str().unwrap_or_default().to_owned()).into_response()
        }
        None => *status(
            StatusCode::SERVICE_UNAVAILABLE,
            "ServiceUnavailable",
            format!("error trying to reach service: dial tcp {name}: connection refused"),
        ),
    }
}

/// Custom resources are served only once their CRD is Established.
fn established(fake: &FakeKube, kind: &Kind) -> Result<(), Box<Response>> {
    if builtin().iter().any(|b| b.group == kind.group && b.plural == kind.plural) {
        return Ok(());
    }
    let name = format!("{}.{}", kind.plural, kind.group);
    let st = fake.inner.lock().expect("lock");
    if st.never_establish.contains(&name) {
        return Err(status(
            StatusCode::NOT_FOUND,
            "NotFound",
            format!("the server could not find the requested resource ({name} is not established)"),
        ));
    }
    Ok(())
}

/// The short names a real API server gives the built-in kinds; a CRD's
/// come from its `spec.names.shortNames`.
fn short_names(st: &Inner, k: &Kind) -> Vec<String> {
    let builtin: &[&str] = match (k.group.as_str(), k.plural.as_str()) {
        ("", "namespaces") => &["ns"],
        ("", "configmaps") => &["cm"],
        ("", "services") => &["svc"],
        ("", "pods") => &["po"],
        ("", "nodes") => &["no"],
        ("", "persistentvolumeclaims") => &["pvc"],
        ("", "serviceaccounts") => &["sa"],
        ("apps", "deployments") => &["deploy"],
        ("apps", "statefulsets") => &["sts"],
        ("apps", "daemonsets") => &["ds"],
        ("apiextensions.k8s.io", "customresourcedefinitions") => &["crd", "crds"],
        _ => &[],
    };
    if !builtin.is_empty() || k.group.is_empty() {
        return builtin.iter().map(|s| s.to_string()).collect();
    }
    let crd = (
        "apiextensions.k8s.io".to_owned(),
        "customresourcedefinitions".to_owned(),
        String::new(),
        format!("{}.{}", k.plural, k.group),
    );
    st.objects
        .get(&crd)
        .and_then(|o| o.pointer("/spec/names/shortNames"))
        .and_then(Value::as_array)
        .map(|a| a.iter().filter_map(Value::as_str).map(str::to_owned).collect())
        .unwrap_or_default()
}

/// `/openapi/v3` and `/openapi/v3/{api/v1 | apis/g/v}`: the OpenAPI v3
/// documents, as far as clients use them: every kind's paths, each PATCH
/// tagged with its `x-kubernetes-group-version-kind` and taking the
/// `fieldValidation` query parameter (kubectl then leaves validation to
/// the server instead of downloading schemas). No schemas are served.
fn openapi(st: &Inner, path: &str) -> Option<Value> {
    let gv_path = |g: &str, v: &str| {
        if g.is_empty() { format!("api/{v}") } else { format!("apis/{g}/{v}") }
    };
    if path == "/openapi/v3" {
        let mut paths = serde_json::Map::new();
        for k in &st.kinds {
            let p = gv_path(&k.group, &k.version);
            let url = format!("/openapi/v3/{p}?hash={}", st.revision);
            paths.insert(p, json!({ "serverRelativeURL": url }));
        }
        return Some(json!({ "paths": paths }));
    }
    let rest = path.strip_prefix("/openapi/v3/")?;
    let (g, v) = match rest.split('/').collect::<Vec<_>>().as_slice() {
        ["api", v] => (String::new(), v.to_string()),
        ["apis", g, v] => (g.to_string(), v.to_string()),
        _ => return None,
    };
    let kinds: Vec<&Kind> = st.kinds.iter().filter(|k| k.group == g && k.version == v).collect();
    if kinds.is_empty() {
        return None;
    }
    let mut paths = serde_json::Map::new();
    for k in kinds {
        let gvk = json!([{ "group": k.group, "version": k.version, "kind": k.kind }]);
        let params = json!([
            {"name": "fieldManager", "in": "query", "schema": {"type": "string"}},
            {"name": "fieldValidation", "in": "query", "schema": {"type": "string"}},
            {"name": "force", "in": "query", "schema": {"type": "boolean"}},
        ]);
        let base = if k.namespaced {
            format!("/{}/namespaces/{{namespace}}/{}", gv_path(&k.group, &k.version), k.plural)
        } else {
            format!("/{}/{}", gv_path(&k.group, &k.version), k.plural)
        };
        let op = |verb: &str| json!({ "x-kubernetes-action": verb, "x-kubernetes-group-version-kind": gvk[0] });
        paths.insert(base.clone(), json!({ "get": op("list") }));
        let mut patch = op("patch");
        patch["parameters"] = params;
        paths.insert(
            format!("{base}/{{name}}"),
            json!({ "get": op("get"), "delete": op("delete"), "patch": patch }),
        );
    }
    Some(json!({
        "openapi": "3.0.0",
        "info": { "title": "Kubernetes (catalyst-zero fake)", "version": "v1.31.4" },
        "paths": paths,
        "components": { "schemas": {} },
    }))
}

fn discovery(fake: &FakeKube, path: &str) -> Option<Response> {
    let st = fake.inner.lock().expect("lock");
    if path.starts_with("/openapi/v3") {
        let doc = openapi(&st, path.trim_end_matches('/'))?;
        return Some((StatusCode::OK, axum::Json(doc)).into_response());
    }
    let resources = |g: &str, v: &str| -> Vec<Value> {
        st.kinds
            .iter()
            .filter(|k| k.group == g && k.version == v)
            .flat_map(|k| {
                let verbs = json!(["get", "list", "watch", "patch", "delete"]);
                let short = short_names(&st, k);
                [
                    json!({"name": k.plural, "singularName": k.kind.to_lowercase(), "namespaced": k.namespaced, "kind": k.kind, "verbs": verbs, "shortNames": short}),
                    json!({"name": format!("{}/status", k.plural), "singularName": "", "namespaced": k.namespaced, "kind": k.kind, "verbs": ["get", "patch", "update"]}),
                ]
            })
            .collect()
    };
    let body = match path.trim_end_matches('/') {
        "/version" => json!({"major": "1", "minor": "31", "gitVersion": "v1.31.4+k3s1 (fake)",
            "gitCommit": "", "gitTreeState": "", "buildDate": "", "goVersion": "", "compiler": "", "platform": "linux/amd64"}),
        "/api" => {
            json!({"kind": "APIVersions", "versions": ["v1"], "serverAddressByClientCIDRs": []})
        }
        "/api/v1" => {
            json!({"kind": "APIResourceList", "groupVersion": "v1", "resources": resources("", "v1")})
        }
        "/apis" => {
            let mut groups: BTreeMap<&str, Vec<&str>> = BTreeMap::new();
            for k in st.kinds.iter().filter(|k| !k.group.is_empty()) {
                let vs = groups.entry(&k.group).or_default();
                if !vs.contains(&k.version.as_str()) {
                    vs.push(&k.version);
                }
            }
            let groups: Vec<Value> = groups
                .into_iter()
                .map(|(g, vs)| {
                    let versions: Vec<Value> = vs
                        .iter()
                        .map(|v| json!({"groupVersion": format!("{g}/{v}"), "version": v}))
                        .collect();
                    json!({"name": g, "versions": versions, "preferredVersion": versions[0]})
                })
                .collect();
            json!({"kind": "APIGroupList", "apiVersion": "v1", "groups": groups})
        }
        p => {
            let segs: Vec<&str> = p.trim_matches('/').split('/').collect();
            match segs.as_slice() {
                ["apis", g, v] => {
                    let r = resources(g, v);
                    if r.is_empty() {
                        return None;
                    }
                    json!({"kind": "APIResourceList", "apiVersion": "v1", "groupVersion": format!("{g}/{v}"), "resources": r})
                }
                _ => return None,
            }
        }
    };
    Some((StatusCode::OK, axum::Json(body)).into_response())
}

/// A field selector: `metadata.name` / `metadata.namespace` with `=`,
/// `==` or `!=`, comma-separated (what the API server supports for every
/// kind).
fn parse_fields(
    q: &BTreeMap<String, String>,
) -> Result<Vec<(String, bool, String)>, Box<Response>> {
    let Some(fs) = q.get("fieldSelector").filter(|s| !s.is_empty()) else { return Ok(Vec::new()) };
    fs.split(',')
        .map(|term| {
            let (field, eq, value) = if let Some((f, v)) = term.split_once("!=") {
                (f, false, v)
            } else if let Some((f, v)) = term.split_once("==") {
                (f, true, v)
            } else if let Some((f, v)) = term.split_once('=') {
                (f, true, v)
            } else {
                return Err(status(
                    StatusCode::BAD_REQUEST,
                    "BadRequest",
                    format!("invalid field selector: {term}"),
                ));
            };
            if !matches!(field.trim(), "metadata.name" | "metadata.namespace") {
                return Err(status(
                    StatusCode::BAD_REQUEST,
                    "BadRequest",
                    format!("field label not supported: {}", field.trim()),
                ));
            }
            Ok((field.trim().to_owned(), eq, value.trim().to_owned()))
        })
        .collect()
}

fn fields_match(o: &Value, fields: &[(String, bool, String)]) -> bool {
    fields.iter().all(|(f, eq, v)| {
        let ptr = format!("/{}", f.replace('.', "/"));
        let actual = o.pointer(&ptr).and_then(Value::as_str).unwrap_or_default();
        (actual == v) == *eq
    })
}

fn list(fake: &FakeKube, kind: &Kind, ns: &str, q: &BTreeMap<String, String>) -> ApiResult {
    let fields = parse_fields(q)?;
    let selector = q.get("labelSelector").map(String::as_str);
    let sel = match selector.filter(|s| !s.is_empty()) {
        Some(s) => Some(Selector::parse(s).map_err(|m| {
            status(
                StatusCode::BAD_REQUEST,
                "BadRequest",
                format!("unable to parse requirement: {m}"),
            )
        })?),
        None => None,
    };
    let st = fake.inner.lock().expect("lock");
    let items: Vec<Value> = st
        .objects
        .iter()
        .filter(|((g, p, n, _), _)| {
            *g == kind.group && *p == kind.plural && (ns.is_empty() || n == ns)
        })
        .map(|(_, o)| o.clone())
        .filter(|o| sel.as_ref().is_none_or(|s| s.matches_json(o.pointer("/metadata/labels"))))
        .filter(|o| fields_match(o, &fields))
        .collect();
    Ok((
        StatusCode::OK,
        json!({
            "apiVersion": api_version(kind), "kind": format!("{}List", kind.kind),
            "metadata": {"resourceVersion": st.revision.to_string()}, "items": items,
        }),
    ))
}

fn api_version(k: &Kind) -> String {
    if k.group.is_empty() { k.version.clone() } else { format!("{}/{}", k.group, k.version) }
}

fn get(fake: &FakeKube, kind: &Kind, ns: &str, name: &str) -> ApiResult {
    let st = fake.inner.lock().expect("lock");
    st.objects
        .get(&(kind.group.clone(), kind.plural.clone(), ns.to_owned(), name.to_owned()))
        .map(|o| (StatusCode::OK, o.clone()))
        .ok_or_else(|| not_found(kind, name))
}

fn not_found(kind: &Kind, name: &str) -> Box<Response> {
    let what = if kind.group.is_empty() {
        kind.plural.clone()
    } else {
        format!("{}.{}", kind.plural, kind.group)
    };
    status(StatusCode::NOT_FOUND, "NotFound", format!("{what} \"{name}\" not found"))
}

fn has_finalizers(obj: &Value) -> bool {
    obj.pointer("/metadata/finalizers").and_then(Value::as_array).is_some_and(|f| !f.is_empty())
}

/// RFC 7386: `patch` merged into `target` (`null` removes a field; arrays
/// and scalars replace).
fn merge_into(target: &mut Value, patch: &Value) {
    let Value::Object(p) = patch else {
        *target = patch.clone();
        return;
    };
    if !target.is_object() {
        *target = json!({});
    }
    let t = target.as_object_mut().expect("an object");
    for (k, v) in p {
        if v.is_null() {
            t.remove(k);
        } else {
            merge_into(t.entry(k.clone()).or_insert(Value::Null), v);
        }
    }
}

/// `PATCH` with `application/merge-patch+json`: the object's fields
/// merged, with the same metadata rules as any write (a `resourceVersion`
/// in the patch is a precondition; removing the last finalizer of an
/// object being deleted deletes it). Status goes through `/status`.
fn merge_patch(fake: &FakeKube, kind: &Kind, ns: &str, name: &str, body: &[u8]) -> ApiResult {
    let patch: Value = serde_json::from_slice(body)
        .map_err(|e| status(StatusCode::BAD_REQUEST, "BadRequest", e.to_string()))?;
    let key = (kind.group.clone(), kind.plural.clone(), ns.to_owned(), name.to_owned());
    let Some(current) = fake.inner.lock().expect("lock").objects.get(&key).cloned() else {
        return Err(not_found(kind, name));
    };
    if let Some(rv) = patch.pointer("/metadata/resourceVersion")
        && Some(rv) != current.pointer("/metadata/resourceVersion")
    {
        return Err(status(
            StatusCode::CONFLICT,
            "Conflict",
            format!(
                "Operation cannot be fulfilled on {} \"{name}\": the object has been modified; \
                 please apply your changes to the latest version and try again",
                kind.plural
            ),
        ));
    }
    let mut merged = current.clone();
    let mut p = patch;
    if let Some(m) = p.as_object_mut() {
        m.remove("status");
    }
    merge_into(&mut merged, &p);
    for f in ["name", "namespace", "uid"] {
        match current["metadata"].get(f) {
            Some(v) => merged["metadata"][f] = v.clone(),
            None => {
                if let Some(m) = merged["metadata"].as_object_mut() {
                    m.remove(f);
                }
            }
        }
    }
    fake.put(&kind.group, &kind.plural, merged);
    match get(fake, kind, ns, name) {
        Ok(found) => Ok(found),
        // The last finalizer went: deleted.
        Err(_) => Ok((StatusCode::OK, current)),
    }
}

/// `DELETE`: an object with finalizers is only marked
/// (`deletionTimestamp`) until its controllers remove them; then, or
/// without any, it is gone.
fn delete(fake: &FakeKube, kind: &Kind, ns: &str, name: &str) -> ApiResult {
    remove_object(fake, kind, ns, name, false)
}

/// Deletes, or with finalizers only marks; `finalized`: they are done, it goes.
fn remove_object(fake: &FakeKube, kind: &Kind, ns: &str, name: &str, finalized: bool) -> ApiResult {
    let mut st = fake.inner.lock().expect("lock");
    let key = (kind.group.clone(), kind.plural.clone(), ns.to_owned(), name.to_owned());
    if let Some(obj) = st.objects.get(&key)
        && has_finalizers(obj)
        && !finalized
    {
        if obj.pointer("/metadata/deletionTimestamp").is_some() {
            return Ok((StatusCode::OK, obj.clone()));
        }
        st.revision += 1;
        let rv = st.revision.to_string();
        let obj = st.objects.get_mut(&key).expect("present");
        obj["metadata"]["deletionTimestamp"] =
            json!(chrono::Utc::now().format("%Y-%m-%dT%H:%M:%SZ").to_string());
        obj["metadata"]["resourceVersion"] = json!(rv);
        let obj = obj.clone();
        emit(&mut st, &fake.events, (kind.clone(), obj.clone(), "MODIFIED"));
        return Ok((StatusCode::OK, obj));
    }
    let Some(mut obj) = st.objects.remove(&key) else { return Err(not_found(kind, name)) };
    st.revision += 1;
    obj["metadata"]["resourceVersion"] = json!(st.revision.to_string());
    if kind.kind == "CustomResourceDefinition" {
        let plural = obj
            .pointer("/spec/names/plural")
            .and_then(Value::as_str)
            .unwrap_or_default()
            .to_owned();
        let group =
            obj.pointer("/spec/group").and_then(Value::as_str).unwrap_or_default().to_owned();
        st.kinds.retain(|k| !(k.group == group && k.plural == plural));
    }
    emit(&mut st, &fake.events, (kind.clone(), obj, "DELETED"));
    Ok((
        StatusCode::OK,
        json!({"kind": "Status", "apiVersion": "v1", "status": "Success", "details": {"name": name, "kind": kind.plural}}),
    ))
}

fn put_status(fake: &FakeKube, kind: &Kind, ns: &str, name: &str, body: &[u8]) -> ApiResult {
    let v: Value = serde_json::from_slice(body)
        .map_err(|e| status(StatusCode::BAD_REQUEST, "BadRequest", e.to_string()))?;
    let new_status = v.get("status").cloned().unwrap_or(Value::Null);
    if fake.set_status(&kind.group, &kind.plural, ns, name, new_status) {
        get(fake, kind, ns, name)
    } else {
        Err(not_found(kind, name))
    }
}

/// Separates path segments: field names may contain dots (label keys).
const SEP: char = '\u{1f}';

/// A path for messages: `.spec.chart.version`.
fn shown(path: &str) -> String {
    format!(".{}", path.replace(SEP, "."))
}

/// Leaf paths of a JSON value (segments joined by [`SEP`]), arrays as one leaf.
fn leaves(prefix: &str, v: &Value, out: &mut BTreeMap<String, Value>) {
    match v {
        Value::Object(m) if !m.is_empty() => {
            for (k, x) in m {
                let p = if prefix.is_empty() { k.clone() } else { format!("{prefix}{SEP}{k}") };
                leaves(&p, x, out);
            }
        }
        other => {
            out.insert(prefix.to_owned(), other.clone());
        }
    }
}

fn set_path(obj: &mut Value, path: &str, v: Value) {
    let mut cur = obj;
    let parts: Vec<&str> = path.split(SEP).collect();
    for p in &parts[..parts.len() - 1] {
        if !cur.get(*p).is_some_and(Value::is_object) {
            cur[*p] = json!({});
        }
        cur = cur.get_mut(*p).expect("just set");
    }
    cur[parts[parts.len() - 1]] = v;
}

fn remove_path(obj: &mut Value, path: &str) {
    let parts: Vec<&str> = path.split(SEP).collect();
    let mut cur = obj;
    for p in &parts[..parts.len() - 1] {
        match cur.get_mut(*p) {
            Some(next) => cur = next,
            None => return,
        }
    }
    if let Some(m) = cur.as_object_mut() {
        m.remove(parts[parts.len() - 1]);
    }
}

/// `FieldsV1` of a set of leaf paths.
fn fields_v1(paths: &[String]) -> Value {
    let mut root = json!({});
    for p in paths {
        let mut cur = &mut root;
        for part in p.split(SEP) {
            let k = format!("f:{part}");
            if cur.get(&k).is_none() {
                cur[k.clone()] = json!({});
            }
            cur = cur.get_mut(&k).expect("just set");
        }
    }
    root
}

/// The leaf paths of a `FieldsV1` value.
fn paths_of(f: &Value, prefix: &str, out: &mut Vec<String>) {
    let Some(m) = f.as_object() else { return };
    if m.is_empty() && !prefix.is_empty() {
        out.push(prefix.to_owned());
    }
    for (k, v) in m {
        if let Some(name) = k.strip_prefix("f:") {
            let p =
                if prefix.is_empty() { name.to_owned() } else { format!("{prefix}{SEP}{name}") };
            paths_of(v, &p, out);
        }
    }
}

/// Fields server-side apply tracks: everything but identity and server-set metadata.
fn tracked(path: &str) -> bool {
    !matches!(path, "apiVersion" | "kind" | "metadata.name" | "metadata.namespace")
        && !path.starts_with("status")
        && !path.starts_with("metadata.managedFields")
        && ![
            "metadata.uid",
            "metadata.resourceVersion",
            "metadata.generation",
            "metadata.creationTimestamp",
        ]
        .contains(&path)
}

fn apply(
    fake: &FakeKube,
    kind: &Kind,
    ns: &str,
    name: &str,
    q: &BTreeMap<String, String>,
    body: &[u8],
) -> ApiResult {
    let manager = q.get("fieldManager").cloned().filter(|m| !m.is_empty()).ok_or_else(|| {
        status(
            StatusCode::UNPROCESSABLE_ENTITY,
            "Invalid",
            "fieldManager is required for apply patch",
        )
    })?;
    let force = q.get("force").is_some_and(|f| f == "true");
    let text = std::str::from_utf8(body)
        .map_err(|e| status(StatusCode::BAD_REQUEST, "BadRequest", e.to_string()))?;
    let applied: Value = serde_saphyr::from_str(text).map_err(|e| {
        status(StatusCode::BAD_REQUEST, "BadRequest", format!("invalid apply body: {e}"))
    })?;
    if applied.pointer("/metadata/name").and_then(Value::as_str) != Some(name) {
        return Err(status(
            StatusCode::BAD_REQUEST,
            "BadRequest",
            "the name in the body does not match the URL",
        ));
    }
    if applied.get("kind").and_then(Value::as_str) != Some(kind.kind.as_str()) {
        return Err(status(
            StatusCode::BAD_REQUEST,
            "BadRequest",
            format!("kind must be {}", kind.kind),
        ));
    }
    let mut mine = BTreeMap::new();
    leaves("", &applied, &mut mine);
    mine.retain(|p, _| tracked(p));

    let mut st = fake.inner.lock().expect("lock");
    let key = (kind.group.clone(), kind.plural.clone(), ns.to_owned(), name.to_owned());
    let existing = st.objects.get(&key).cloned();
    let created = existing.is_none();
    if created
        && kind.namespaced
        && !st.objects.contains_key(&(
            String::new(),
            "namespaces".into(),
            String::new(),
            ns.to_owned(),
        ))
    {
        return Err(status(
            StatusCode::NOT_FOUND,
            "NotFound",
            format!("namespaces \"{ns}\" not found"),
        ));
    }
    let mut obj = existing.unwrap_or_else(
        || json!({"apiVersion": api_version(kind), "kind": kind.kind, "metadata": {"name": name}}),
    );
    // Ownership as recorded: manager → paths.
    let mut owners: Vec<(String, Vec<String>)> = obj
        .pointer("/metadata/managedFields")
        .and_then(Value::as_array)
        .map(|mf| {
            mf.iter()
                .map(|e| {
                    let mut ps = Vec::new();
                    paths_of(&e["fieldsV1"], "", &mut ps);
                    (e["manager"].as_str().unwrap_or_default().to_owned(), ps)
                })
                .collect()
        })
        .unwrap_or_default();
    let mut current = BTreeMap::new();
    leaves("", &obj, &mut current);
    // Conflicts: a field another manager owns, that this apply would change.
    let mut conflicts = Vec::new();
    for (other, paths) in owners.iter().filter(|(m, _)| *m != manager) {
        for p in paths {
            if let Some(v) = mine.get(p)
                && current.get(p) != Some(v)
            {
                conflicts.push(format!("conflict with \"{other}\": {}", shown(p)));
            }
        }
    }
    if !conflicts.is_empty() && !force {
        return Err(status(
            StatusCode::CONFLICT,
            "Conflict",
            format!("Apply failed with {} conflict(s): {}", conflicts.len(), conflicts.join("; ")),
        ));
    }
    let before = obj.clone();
    // Fields this manager applied before and no longer applies, owned by
    // nobody else, are removed.
    let previously: Vec<String> =
        owners.iter().find(|(m, _)| *m == manager).map(|(_, p)| p.clone()).unwrap_or_default();
    for p in &previously {
        let others_own = owners.iter().any(|(m, ps)| *m != manager && ps.contains(p));
        if !mine.contains_key(p) && !others_own {
            remove_path(&mut obj, p);
        }
    }
    for (p, v) in &mine {
        set_path(&mut obj, p, v.clone());
    }
    // Ownership: this manager owns what it applied; forced fields leave
    // their previous owners.
    for (m, ps) in owners.iter_mut() {
        if *m != manager {
            ps.retain(|p| !mine.contains_key(p));
        }
    }
    let my_paths: Vec<String> = mine.keys().cloned().collect();
    owners.retain(|(m, ps)| *m != manager && !ps.is_empty());
    owners.push((manager.clone(), my_paths));
    let spec_changed = {
        let strip = |v: &Value| {
            let mut v = v.clone();
            if let Some(m) = v.as_object_mut() {
                m.remove("metadata");
                m.remove("status");
            }
            v
        };
        created || strip(&before) != strip(&obj)
    };
    let changed = created || before != obj;
    let now = chrono::Utc::now().format("%Y-%m-%dT%H:%M:%SZ").to_string();
    let meta = obj["metadata"].as_object_mut().expect("metadata");
    if created {
        meta.insert("uid".into(), json!(uuid::Uuid::new_v4().to_string()));
        meta.insert("creationTimestamp".into(), json!(now.clone()));
        if kind.namespaced {
            meta.insert("namespace".into(), json!(ns));
        }
    }
    let generation = meta.get("generation").and_then(Value::as_i64).unwrap_or(0);
    if spec_changed {
        meta.insert("generation".into(), json!(generation + 1));
    }
    let mf: Vec<Value> = owners
        .iter()
        .map(|(m, ps)| {
            json!({"manager": m, "operation": "Apply", "apiVersion": api_version(kind),
                   "time": now, "fieldsType": "FieldsV1", "fieldsV1": fields_v1(ps)})
        })
        .collect();
    meta.insert("managedFields".into(), Value::Array(mf));
    if changed {
        st.revision += 1;
        let rv = st.revision.to_string();
        obj["metadata"]["resourceVersion"] = json!(rv);
    }
    if kind.kind == "CustomResourceDefinition" {
        register_crd(&mut st, &mut obj)?;
    }
    st.objects.insert(key, obj.clone());
    if changed {
        let ty = if created { "ADDED" } else { "MODIFIED" };
        emit(&mut st, &fake.events, (kind.clone(), obj.clone(), ty));
    }
    drop(st);
    Ok((if created { StatusCode::CREATED } else { StatusCode::OK }, obj))
}

fn register_crd(st: &mut Inner, crd: &mut Value) -> Result<(), Box<Response>> {
    let invalid = |m: &str| status(StatusCode::UNPROCESSABLE_ENTITY, "Invalid", m.to_owned());
    let group = crd
        .pointer("/spec/group")
        .and_then(Value::as_str)
        .ok_or_else(|| invalid("spec.group: Required value"))?
        .to_owned();
    let names =
        crd.pointer("/spec/names").cloned().ok_or_else(|| invalid("spec.names: Required value"))?;
    let plural = names["plural"]
        .as_str()
        .ok_or_else(|| invalid("spec.names.plural: Required value"))?
        .to_owned();
    let kind = names["kind"]
        .as_str()
        .ok_or_else(|| invalid("spec.names.kind: Required value"))?
        .to_owned();
    let namespaced = crd.pointer("/spec/scope").and_then(Value::as_str) == Some("Namespaced");
    let versions: Vec<String> = crd
        .pointer("/spec/versions")
        .and_then(Value::as_array)
        .map(|vs| {
            vs.iter()
                .filter(|v| v["served"] == true)
                .filter_map(|v| v["name"].as_str().map(str::to_owned))
                .collect()
        })
        .unwrap_or_default();
    if versions.is_empty() {
        return Err(invalid("spec.versions: at least one served version is required"));
    }
    let name = format!("{plural}.{group}");
    if crd.pointer("/metadata/name").and_then(Value::as_str) != Some(name.as_str()) {
        return Err(invalid(&format!(
            "metadata.name: must be spec.names.plural+\".\"+spec.group ({name})"
        )));
    }
    st.kinds.retain(|k| !(k.group == group && k.plural == plural));
    for v in versions {
        st.kinds.push(Kind {
            group: group.clone(),
            version: v,
            kind: kind.clone(),
            plural: plural.clone(),
            namespaced,
        });
    }
    let established = !st.never_establish.contains(&name);
    crd["status"] = json!({"conditions": [
        {"type": "NamesAccepted", "status": "True", "reason": "NoConflicts"},
        {"type": "Established", "status": if established { "True" } else { "False" },
         "reason": if established { "InitialNamesAccepted" } else { "Installing" }},
    ], "acceptedNames": names});
    Ok(())
}

/// `?watch=true`: the current objects as ADDED, then live events.
fn watch(fake: &FakeKube, kind: &Kind, ns: &str, q: &BTreeMap<String, String>) -> Response {
    let fields = match parse_fields(q) {
        Ok(f) => f,
        Err(r) => return *r,
    };
    let selector = q.get("labelSelector").map(String::as_str);
    let sel = selector.filter(|s| !s.is_empty()).and_then(|s| Selector::parse(s).ok());
    let watched = kind.clone();
    let (kind, ns) = (kind.clone(), ns.to_owned());
    let matches = move |k: &Kind, o: &Value| {
        k.group == kind.group
            && k.plural == kind.plural
            && (ns.is_empty()
                || o.pointer("/metadata/namespace").and_then(Value::as_str) == Some(ns.as_str()))
            && sel.as_ref().is_none_or(|s| s.matches_json(o.pointer("/metadata/labels")))
            && fields_match(o, &fields)
    };
    // Subscribed before the snapshot, and events are emitted under the
    // lock: nothing falls between the two.
    let mut rx = fake.events.subscribe();
    let from: Option<u64> = q
        .get("resourceVersion")
        .filter(|r| !r.is_empty() && *r != "0")
        .map(|r| r.parse().unwrap_or(u64::MAX));
    let (initial, start_rv): (Vec<Value>, u64) = {
        let st = fake.inner.lock().expect("lock");
        match from {
            // Resume: every event after that version, or 410 Gone.
            Some(rv) => {
                let oldest =
                    st.history.front().map(|(_, o, _)| rv_of(o)).unwrap_or(st.revision + 1);
                if rv > st.revision || (rv + 1 < oldest && rv < st.revision) {
                    let gone = json!({"type": "ERROR", "object": {"kind": "Status", "apiVersion": "v1",
                        "status": "Failure", "reason": "Expired", "code": 410,
                        "message": format!("too old resource version: {rv} ({})", oldest.saturating_sub(1))}});
                    (vec![gone], u64::MAX)
                } else {
                    let lines = st
                        .history
                        .iter()
                        .filter(|(k, o, _)| rv_of(o) > rv && matches(k, o))
                        .map(|(_, o, ty)| json!({"type": ty, "object": o}))
                        .collect();
                    (lines, st.revision)
                }
            }
            // From now: the current objects as ADDED.
            None => {
                let lines = st
                    .objects
                    .iter()
                    .filter(|((g, p, _, _), o)| {
                        *g == watched.group && *p == watched.plural && matches(&watched, o)
                    })
                    .map(|(_, o)| json!({"type": "ADDED", "object": o}))
                    .collect();
                (lines, st.revision)
            }
        }
    };
    let stream = async_stream_lines(initial, move |tx| async move {
        if start_rv == u64::MAX {
            return;
        }
        while let Ok((k, obj, ty)) = rx.recv().await {
            if rv_of(&obj) > start_rv && matches(&k, &obj) {
                let line = json!({"type": ty, "object": obj}).to_string() + "\n";
                if tx.send(Ok(Bytes::from(line))).await.is_err() {
                    return;
                }
            }
        }
    });
    Response::builder()
        .status(StatusCode::OK)
        .header("content-type", "application/json")
        .body(stream)
        .expect("response")
}

/// A streaming body: the initial events, then what `more` sends.
fn async_stream_lines<F, Fut>(initial: Vec<Value>, more: F) -> Body
where
    F: FnOnce(tokio::sync::mpsc::Sender<Result<Bytes, std::io::Error>>) -> Fut + Send + 'static,
    Fut: std::future::Future<Output = ()> + Send + 'static,
{
    let (tx, rx) = tokio::sync::mpsc::channel(64);
    tokio::spawn(async move {
        for ev in initial {
            let line = ev.to_string() + "\n";
            if tx.send(Ok(Bytes::from(line))).await.is_err() {
                return;
            }
        }
        more(tx).await;
    });
    Body::from_stream(tokio_stream_from(rx))
}

fn tokio_stream_from(
    mut rx: tokio::sync::mpsc::Receiver<Result<Bytes, std::io::Error>>,
) -> impl futures::Stream<Item = Result<Bytes, std::io::Error>> {
    futures::stream::poll_fn(move |cx| rx.poll_recv(cx))
}
