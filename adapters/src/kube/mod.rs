//! Kubernetes: server-side apply under a fixed field manager, reads,
//! label-selected lists, watches as bounded waits, and the service proxy.
//! The real client is [`KubeClient`] (kube-rs); [`kubeconfig`] reads and
//! checks a kubeconfig's endpoint on its own (TLS verified against its CA).

pub mod client;
pub mod kubeconfig;

use async_trait::async_trait;
use cz_state::SecretString;
use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::AdapterResult;

pub use client::KubeClient;

/// A reference to an object for get/delete.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct ObjectRef {
    pub api_version: String,
    pub kind: String,
    pub namespace: Option<String>,
    pub name: String,
}

impl ObjectRef {
    pub fn of(obj: &Value) -> Option<ObjectRef> {
        Some(ObjectRef {
            api_version: obj.get("apiVersion")?.as_str()?.to_owned(),
            kind: obj.get("kind")?.as_str()?.to_owned(),
            namespace: obj
                .pointer("/metadata/namespace")
                .and_then(Value::as_str)
                .map(str::to_owned),
            name: obj.pointer("/metadata/name")?.as_str()?.to_owned(),
        })
    }
}

#[async_trait]
pub trait KubeApi: Send + Sync {
    /// Server-side apply of each object under `field_manager`.
    async fn apply(
        &self,
        kubeconfig: &SecretString,
        field_manager: &str,
        objects: &[Value],
    ) -> AdapterResult<()>;
    async fn get(&self, kubeconfig: &SecretString, r: &ObjectRef) -> AdapterResult<Option<Value>>;
    async fn list(
        &self,
        kubeconfig: &SecretString,
        api_version: &str,
        kind: &str,
        selector: &str,
    ) -> AdapterResult<Vec<Value>>;
    /// Deletes; already gone is success. An object with finalizers is gone
    /// only once its controllers are done ([`KubeApi::wait_until`]).
    async fn delete(&self, kubeconfig: &SecretString, r: &ObjectRef) -> AdapterResult<()>;
    /// The API server's version through the kubeconfig's own endpoint, TLS
    /// verified against its CA and authenticated.
    async fn server_version(&self, kubeconfig: &SecretString) -> AdapterResult<String>;
    /// Waits, by watching the object (not polling), until `until` holds;
    /// `Timeout` past `bound`.
    async fn wait_until(
        &self,
        kubeconfig: &SecretString,
        r: &ObjectRef,
        until: Until,
        bound: std::time::Duration,
    ) -> AdapterResult<()>;
    /// `GET` `path` on a Service through the API server's proxy
    /// (`/api/v1/namespaces/{ns}/services/{service}:{port}/proxy{path}`):
    /// the status and body as answered. A 503 "no endpoints available" is
    /// an answer, not an error; only a failure to reach the API server is.
    async fn service_get(
        &self,
        kubeconfig: &SecretString,
        namespace: &str,
        service: &str,
        port: u16,
        path: &str,
    ) -> AdapterResult<(u16, String)>;
}

/// What [`KubeApi::wait_until`] waits for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Until {
    /// The object is gone (a finalizer, Flux's uninstall, ran).
    Deleted,
    /// A condition of this type is `True` (a CRD's `Established`).
    Condition(&'static str),
}

impl Until {
    /// Whether `obj` (None: absent) satisfies it.
    pub fn holds(self, obj: Option<&Value>) -> bool {
        match self {
            Until::Deleted => obj.is_none(),
            Until::Condition(ty) => obj
                .and_then(|o| o.pointer("/status/conditions"))
                .and_then(Value::as_array)
                .is_some_and(|cs| cs.iter().any(|c| c["type"] == ty && c["status"] == "True")),
        }
    }

    pub fn describe(self) -> String {
        match self {
            Until::Deleted => "to be deleted".into(),
            Until::Condition(ty) => format!("to be {ty}"),
        }
    }
}
