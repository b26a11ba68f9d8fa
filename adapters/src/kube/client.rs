//! `KubeClient`: the real [`KubeApi`] over `kube` (dynamic objects,
//! server-side apply).
//!
//! - **Any kind**: `apiVersion`/`kind` are resolved through API discovery;
//!   a kind that is not served yet is looked up again once (a CRD applied a
//!   moment ago), then refused as `NotFound` naming the kind.
//! - **Server-side apply** with the caller's field manager, never forced: a
//!   field another manager owns is a `Conflict` with the server's message
//!   (who owns what), for an operator to decide.
//! - **CRDs before their CRs**: after applying a `CustomResourceDefinition`
//!   the call watches it (bounded) until it reports `Established`.
//! - **Waits are watches** ([`KubeApi::wait_until`]): kube-runtime's
//!   `await_condition`, under a bound.
//! - The endpoint check over https is [`crate::kube::kubeconfig`]'s.
//!
//! Errors: the API's `Status` code decides the cause (404 NotFound, 409
//! Conflict, 401/403 Unauthorized, 400/422 Invalid, 429 RateLimited, 5xx
//! Unavailable); transport errors are `Network`.

use std::time::Duration;

use async_trait::async_trait;
use cz_state::SecretString;
use kube::api::{Api, DeleteParams, DynamicObject, ListParams, Patch, PatchParams};
use kube::core::GroupVersionKind;
use kube::discovery::{ApiCapabilities, ApiResource, Discovery, Scope};
use serde_json::Value;

use crate::{AdapterResult, KubeApi, ObjectRef, Until};
use cz_engine::{Cause, StepError, System};

/// How long a CRD may take to become Established.
pub const CRD_ESTABLISH_BOUND: Duration = Duration::from_secs(60);

/// The real Kubernetes adapter.
#[derive(Clone, Debug, Default)]
pub struct KubeClient;

fn err(op: &str, cause: Cause, message: impl Into<String>) -> StepError {
    StepError::adapter(System::Kubernetes, op, cause, message)
}

fn map_err(op: &str, e: kube::Error) -> StepError {
    match e {
        kube::Error::Api(s) => {
            let cause = match s.code {
                404 => Cause::NotFound,
                409 => Cause::Conflict,
                401 | 403 => Cause::Unauthorized,
                400 | 415 | 422 => Cause::Invalid,
                429 => Cause::RateLimited,
                _ => Cause::Unavailable,
            };
            err(op, cause, format!("{} (HTTP {}): {}", s.reason, s.code, s.message))
        }
        other => err(op, Cause::Network, other.to_string()),
    }
}

async fn client(kubeconfig: &SecretString) -> AdapterResult<kube::Client> {
    let kc = kube::config::Kubeconfig::from_yaml(kubeconfig.expose())
        .map_err(|e| err("kubeconfig", Cause::Invalid, e.to_string()))?;
    let mut cfg =
        kube::Config::from_custom_kubeconfig(kc, &kube::config::KubeConfigOptions::default())
            .await
            .map_err(|e| err("kubeconfig", Cause::Invalid, e.to_string()))?;
    // kube retries 429/503/504 by itself up to 15 times with delays growing
    // to 1000 s: a step would hang there, unbounded and unreported. The
    // engine's retry classes and bounded waits decide instead (429 →
    // rate-limited, 5xx → unavailable, both transient), and a service
    // proxy's 503 "no endpoints" is an answer the probe reads.
    cfg.default_retry = false;
    kube::Client::try_from(cfg).map_err(|e| err("kubeconfig", Cause::Invalid, e.to_string()))
}

fn gvk_of(api_version: &str, kind: &str) -> GroupVersionKind {
    let (group, version) = api_version.split_once('/').unwrap_or(("", api_version));
    GroupVersionKind::gvk(group, version, kind)
}

/// Discovery, refreshed once when a kind is not (yet) known.
struct Resolver {
    client: kube::Client,
    discovery: Option<Discovery>,
}

impl Resolver {
    fn new(client: kube::Client) -> Self {
        Resolver { client, discovery: None }
    }

    async fn resolve(
        &mut self,
        api_version: &str,
        kind: &str,
    ) -> AdapterResult<(ApiResource, ApiCapabilities)> {
        let gvk = gvk_of(api_version, kind);
        for fresh in [false, true] {
            if fresh || self.discovery.is_none() {
                let d = Discovery::new(self.client.clone())
                    .run()
                    .await
                    .map_err(|e| map_err("discovery", e))?;
                self.discovery = Some(d);
            }
            if let Some(found) = self.discovery.as_ref().and_then(|d| d.resolve_gvk(&gvk)) {
                return Ok(found);
            }
        }
        Err(err(
            "discovery",
            Cause::NotFound,
            format!(
                "the API serves no {kind} in {api_version} (is its CRD installed and Established?)"
            ),
        ))
    }

    async fn api(
        &mut self,
        api_version: &str,
        kind: &str,
        ns: Option<&str>,
    ) -> AdapterResult<Api<DynamicObject>> {
        let (ar, caps) = self.resolve(api_version, kind).await?;
        Ok(match (caps.scope, ns) {
            (Scope::Namespaced, Some(ns)) => Api::namespaced_with(self.client.clone(), ns, &ar),
            (Scope::Namespaced, None) => Api::default_namespaced_with(self.client.clone(), &ar),
            (Scope::Cluster, _) => Api::all_with(self.client.clone(), &ar),
        })
    }
}

/// Watches `r` through `api` until `until` holds (kube-runtime's
/// `await_condition`: a list, then a watch from its resourceVersion,
/// re-listing after a lost watch), within `bound`.
async fn watch_until(
    api: Api<DynamicObject>,
    r: &ObjectRef,
    until: Until,
    bound: Duration,
) -> AdapterResult<()> {
    let cond = move |o: Option<&DynamicObject>| {
        until.holds(o.map(|o| serde_json::to_value(o).unwrap_or(Value::Null)).as_ref())
    };
    match tokio::time::timeout(bound, kube::runtime::wait::await_condition(api, &r.name, cond))
        .await
    {
        Ok(Ok(_)) => Ok(()),
        Ok(Err(e)) => {
            Err(err(&format!("watch {} {}", r.kind, r.name), Cause::Network, e.to_string()))
        }
        Err(_) => Err(StepError::Timeout {
            reason: format!("{} {} {}", r.kind, r.name, until.describe()),
            bound_s: bound.as_secs(),
        }),
    }
}

#[async_trait]
impl KubeApi for KubeClient {
    #[tracing::instrument(
        name = "adapter",
        level = "info",
        skip_all,
        fields(system = "kubernetes", op = "apply")
    )]
    async fn apply(
        &self,
        kubeconfig: &SecretString,
        field_manager: &str,
        objects: &[Value],
    ) -> AdapterResult<()> {
        let mut r = Resolver::new(client(kubeconfig).await?);
        for obj in objects {
            let o = ObjectRef::of(obj).ok_or_else(|| {
                err("apply", Cause::Invalid, "an object without apiVersion, kind or metadata.name")
            })?;
            let api = r.api(&o.api_version, &o.kind, o.namespace.as_deref()).await?;
            let applied = api
                .patch(&o.name, &PatchParams::apply(field_manager), &Patch::Apply(obj))
                .await
                .map_err(|e| map_err(&format!("apply {} {}", o.kind, o.name), e))?;
            if o.kind == "CustomResourceDefinition"
                && !Until::Condition("Established")
                    .holds(Some(&serde_json::to_value(&applied).unwrap_or(Value::Null)))
            {
                watch_until(api, &o, Until::Condition("Established"), CRD_ESTABLISH_BOUND).await?;
            }
        }
        Ok(())
    }

    #[tracing::instrument(
        name = "adapter",
        level = "info",
        skip_all,
        fields(system = "kubernetes", op = "get")
    )]
    async fn get(&self, kubeconfig: &SecretString, r: &ObjectRef) -> AdapterResult<Option<Value>> {
        let mut res = Resolver::new(client(kubeconfig).await?);
        let api = match res.api(&r.api_version, &r.kind, r.namespace.as_deref()).await {
            Ok(api) => api,
            // A kind not served means no such object (yet).
            Err(StepError::Adapter { cause: Cause::NotFound, .. }) => return Ok(None),
            Err(e) => return Err(e),
        };
        let got = api.get_opt(&r.name).await.map_err(|e| map_err("get", e))?;
        Ok(got.map(|o| serde_json::to_value(o).unwrap_or(Value::Null)))
    }

    #[tracing::instrument(
        name = "adapter",
        level = "info",
        skip_all,
        fields(system = "kubernetes", op = "list")
    )]
    async fn list(
        &self,
        kubeconfig: &SecretString,
        api_version: &str,
        kind: &str,
        selector: &str,
    ) -> AdapterResult<Vec<Value>> {
        let mut res = Resolver::new(client(kubeconfig).await?);
        let (ar, _) = match res.resolve(api_version, kind).await {
            Ok(x) => x,
            Err(StepError::Adapter { cause: Cause::NotFound, .. }) => return Ok(Vec::new()),
            Err(e) => return Err(e),
        };
        let api: Api<DynamicObject> = Api::all_with(res.client.clone(), &ar);
        let lp = if selector.is_empty() {
            ListParams::default()
        } else {
            ListParams::default().labels(selector)
        };
        let list = api.list(&lp).await.map_err(|e| map_err("list", e))?;
        Ok(list.items.into_iter().map(|o| serde_json::to_value(o).unwrap_or(Value::Null)).collect())
    }

    #[tracing::instrument(
        name = "adapter",
        level = "info",
        skip_all,
        fields(system = "kubernetes", op = "delete")
    )]
    async fn delete(&self, kubeconfig: &SecretString, r: &ObjectRef) -> AdapterResult<()> {
        let mut res = Resolver::new(client(kubeconfig).await?);
        let api = match res.api(&r.api_version, &r.kind, r.namespace.as_deref()).await {
            Ok(api) => api,
            Err(StepError::Adapter { cause: Cause::NotFound, .. }) => return Ok(()),
            Err(e) => return Err(e),
        };
        match api.delete(&r.name, &DeleteParams::default()).await {
            Ok(_) => Ok(()),
            Err(kube::Error::Api(s)) if s.code == 404 => Ok(()),
            Err(e) => Err(map_err("delete", e)),
        }
    }

    #[tracing::instrument(
        name = "adapter",
        level = "info",
        skip_all,
        fields(system = "kubernetes", op = "server_version")
    )]
    async fn server_version(&self, kubeconfig: &SecretString) -> AdapterResult<String> {
        let https = crate::kube::kubeconfig::endpoint(kubeconfig.expose())
            .map(|e| e.server.starts_with("https://"))
            .unwrap_or(false);
        if https {
            return crate::kube::kubeconfig::server_version(kubeconfig, Duration::from_secs(10))
                .await;
        }
        let info = client(kubeconfig)
            .await?
            .apiserver_version()
            .await
            .map_err(|e| map_err("version", e))?;
        Ok(info.git_version)
    }

    #[tracing::instrument(
        name = "adapter",
        level = "info",
        skip_all,
        fields(system = "kubernetes", op = "wait_until")
    )]
    async fn wait_until(
        &self,
        kubeconfig: &SecretString,
        r: &ObjectRef,
        until: Until,
        bound: Duration,
    ) -> AdapterResult<()> {
        let mut res = Resolver::new(client(kubeconfig).await?);
        let api = match res.api(&r.api_version, &r.kind, r.namespace.as_deref()).await {
            Ok(api) => api,
            // A kind no longer served has no objects left.
            Err(StepError::Adapter { cause: Cause::NotFound, .. }) if until == Until::Deleted => {
                return Ok(());
            }
            Err(e) => return Err(e),
        };
        watch_until(api, r, until, bound).await
    }

    #[tracing::instrument(
        name = "adapter",
        level = "info",
        skip_all,
        fields(system = "kubernetes", op = "service_get")
    )]
    async fn service_get(
        &self,
        kubeconfig: &SecretString,
        namespace: &str,
        service: &str,
        port: u16,
        path: &str,
    ) -> AdapterResult<(u16, String)> {
        let uri = proxy_path(namespace, service, port, path);
        let req = http::Request::get(&uri)
            .body(kube::client::Body::empty())
            .map_err(|e| err("service proxy", Cause::Invalid, e.to_string()))?;
        let op = format!("GET {uri}");
        let client = client(kubeconfig).await?;
        let resp = tokio::time::timeout(Duration::from_secs(30), client.send(req))
            .await
            .map_err(|_| err(&op, Cause::Network, "no answer within 30s"))?
            .map_err(|e| err(&op, Cause::Network, e.to_string()))?;
        let code = resp.status().as_u16();
        let body = resp
            .into_body()
            .collect_bytes()
            .await
            .map_err(|e| err(&op, Cause::Network, e.to_string()))?;
        let mut text = String::from_utf8_lossy(&body).into_owned();
        text.truncate(4096);
        Ok((code, text))
    }
}

/// The API server's proxy path to `path` on `service:port`.
pub fn proxy_path(namespace: &str, service: &str, port: u16, path: &str) -> String {
    format!(
        "/api/v1/namespaces/{namespace}/services/{service}:{port}/proxy/{}",
        path.trim_start_matches('/')
    )
}
