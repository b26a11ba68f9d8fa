//! Kubeconfig parsing and the endpoint check: before the `cluster`
//! phase may finish, the API must answer through the exact endpoint we
//! persist, over TLS verified against the cluster's own CA (no system
//! roots), with a certificate valid for that endpoint's address (the SAN),
//! and authenticated with the kubeconfig's client certificate.
//!
//! Causes: endpoint not reachable yet → `Network` (a bounded wait retries);
//! certificate not valid for the endpoint or not from the cluster's CA →
//! `Precondition` (an operator adds the SAN or fixes the load balancer);
//! client certificate refused → `Unauthorized`; a kubeconfig without the
//! fields → `Invalid`.

use std::time::Duration;

use base64::Engine as _;
use cz_state::SecretString;
use serde::Deserialize;
use serde_json::Value;

use crate::AdapterResult;
use cz_engine::{Cause, StepError, System};

/// What the check needs from a kubeconfig (its current context).
#[derive(Clone)]
pub struct Endpoint {
    pub server: String,
    pub ca_pem: Vec<u8>,
    /// Client certificate then key, PEM.
    pub identity_pem: Vec<u8>,
}

impl std::fmt::Debug for Endpoint {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Endpoint").field("server", &self.server).finish_non_exhaustive()
    }
}

#[derive(Deserialize)]
struct Kubeconfig {
    #[serde(rename = "current-context", default)]
    current_context: Option<String>,
    #[serde(default)]
    clusters: Vec<Named<Cluster>>,
    #[serde(default)]
    contexts: Vec<Named<Context>>,
    #[serde(default)]
    users: Vec<Named<User>>,
}

#[derive(Deserialize)]
struct Named<T> {
    name: String,
    #[serde(alias = "cluster", alias = "context", alias = "user")]
    value: Option<T>,
}

#[derive(Deserialize)]
struct Cluster {
    server: String,
    #[serde(rename = "certificate-authority-data")]
    ca: Option<String>,
}

#[derive(Deserialize)]
struct Context {
    cluster: String,
    user: String,
}

#[derive(Deserialize)]
struct User {
    #[serde(rename = "client-certificate-data")]
    cert: Option<String>,
    #[serde(rename = "client-key-data")]
    key: Option<String>,
}

fn invalid(msg: impl Into<String>) -> StepError {
    StepError::adapter(System::Kubernetes, "kubeconfig", Cause::Invalid, msg)
}

fn b64(field: &str, v: Option<&String>) -> AdapterResult<Vec<u8>> {
    let v = v.ok_or_else(|| invalid(format!("no `{field}`")))?;
    base64::engine::general_purpose::STANDARD
        .decode(v.trim())
        .map_err(|e| invalid(format!("`{field}` is not base64: {e}")))
}

/// The current context's server, CA and client identity.
pub fn endpoint(kubeconfig: &str) -> AdapterResult<Endpoint> {
    let kc: Kubeconfig = serde_saphyr::from_str(kubeconfig)
        .map_err(|e| invalid(format!("not a kubeconfig: {e}")))?;
    let ctx_name = kc
        .current_context
        .clone()
        .or_else(|| kc.contexts.first().map(|c| c.name.clone()))
        .ok_or_else(|| invalid("no context"))?;
    let find = |what: &str| invalid(format!("the current context names a missing {what}"));
    let ctx = kc
        .contexts
        .iter()
        .find(|c| c.name == ctx_name)
        .and_then(|c| c.value.as_ref())
        .ok_or_else(|| find("context"))?;
    let cluster = kc
        .clusters
        .iter()
        .find(|c| c.name == ctx.cluster)
        .and_then(|c| c.value.as_ref())
        .ok_or_else(|| find("cluster"))?;
    let user = kc
        .users
        .iter()
        .find(|u| u.name == ctx.user)
        .and_then(|u| u.value.as_ref())
        .ok_or_else(|| find("user"))?;
    let mut identity_pem = b64("client-certificate-data", user.cert.as_ref())?;
    identity_pem.push(b'\n');
    identity_pem.extend(b64("client-key-data", user.key.as_ref())?);
    Ok(Endpoint {
        server: cluster.server.clone(),
        ca_pem: b64("certificate-authority-data", cluster.ca.as_ref())?,
        identity_pem,
    })
}

/// An HTTP client for `ep`'s API server: TLS verified against the
/// cluster's CA only (no system roots), authenticated with the client
/// certificate, every call bounded by `timeout`.
pub fn tls_client(ep: &Endpoint, timeout: Duration) -> AdapterResult<reqwest::Client> {
    let ca = reqwest::Certificate::from_pem(&ep.ca_pem)
        .map_err(|e| invalid(format!("certificate-authority-data: {e}")))?;
    let id = reqwest::Identity::from_pem(&ep.identity_pem)
        .map_err(|e| invalid(format!("client certificate/key: {e}")))?;
    reqwest::Client::builder()
        .tls_backend_rustls()
        .tls_certs_only([ca])
        .identity(id)
        .timeout(timeout)
        .connect_timeout(timeout)
        .build()
        .map_err(|e| invalid(format!("TLS client: {e}")))
}

/// `GET <server>/version` through verified, mutually authenticated TLS;
/// returns the server's `gitVersion`.
pub async fn server_version(kubeconfig: &SecretString, timeout: Duration) -> AdapterResult<String> {
    let ep = endpoint(kubeconfig.expose())?;
    let http = tls_client(&ep, timeout)?;
    let url = format!("{}/version", ep.server.trim_end_matches('/'));
    let resp = http.get(&url).send().await.map_err(|e| classify(&ep.server, &e))?;
    let status = resp.status();
    if status.as_u16() == 401 || status.as_u16() == 403 {
        return Err(StepError::adapter(
            System::Kubernetes,
            "verify endpoint",
            Cause::Unauthorized,
            format!("{}: the client certificate was refused (HTTP {status})", ep.server),
        ));
    }
    if !status.is_success() {
        return Err(StepError::adapter(
            System::Kubernetes,
            "verify endpoint",
            Cause::Unavailable,
            format!("{url}: HTTP {status}"),
        ));
    }
    let v: Value = resp.json().await.map_err(|e| {
        StepError::adapter(
            System::Kubernetes,
            "verify endpoint",
            Cause::Unavailable,
            format!("{url}: {e}"),
        )
    })?;
    Ok(v.get("gitVersion").and_then(Value::as_str).unwrap_or("unknown").to_owned())
}

/// A connection error: certificate problems are an operator's, anything
/// else is the network's (the endpoint may not be up yet).
fn classify(server: &str, e: &reqwest::Error) -> StepError {
    let chain = cz_engine::chain(e);
    let lower = chain.to_ascii_lowercase();
    let cert = ["certificate", "notvalidforname", "unknownissuer", "invalid peer"];
    if cert.iter().any(|c| lower.contains(c)) {
        return StepError::Precondition {
            message: format!(
                "the Kubernetes API at {server} does not present a certificate valid for that \
                 address from the cluster's CA ({chain})"
            ),
            remediation: "The endpoint we hand over must verify: add the load balancer's \
                address to the K3s `tls-san` list on every server and restart them, or check that \
                the load balancer forwards 6443 to the control planes."
                .into(),
        };
    }
    StepError::adapter(
        System::Kubernetes,
        "verify endpoint",
        Cause::Network,
        format!("{server}: {chain}"),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_current_context_decides() {
        let kc = "apiVersion: v1\nkind: Config\nclusters:\n- cluster:\n    certificate-authority-data: Y2E=\n    server: https://10.0.0.1:6443\n  name: a\n- cluster:\n    certificate-authority-data: Y2Iy\n    server: https://203.0.113.9:6443\n  name: b\ncontexts:\n- context:\n    cluster: a\n    user: u\n  name: one\n- context:\n    cluster: b\n    user: u\n  name: two\ncurrent-context: two\nusers:\n- name: u\n  user:\n    client-certificate-data: Y2VydA==\n    client-key-data: a2V5\n";
        let e = endpoint(kc).unwrap();
        assert_eq!(e.server, "https://203.0.113.9:6443");
        assert_eq!(e.ca_pem, b"cb2");
        assert_eq!(e.identity_pem, b"cert\nkey");
        assert!(!format!("{e:?}").contains("key"));
        assert!(matches!(
            endpoint("clusters: []"),
            Err(StepError::Adapter { cause: Cause::Invalid, .. })
        ));
    }
}
