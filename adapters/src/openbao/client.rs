//! [`OpenBaoClient`]: the real [`BaoApi`] over HTTP (reqwest).
//!
//! - **Transport**: a direct endpoint is plain HTTP(S) to its URL; an
//!   endpoint through Kubernetes goes to the API server's pod proxy over
//!   TLS verified against the cluster's CA and authenticated with the
//!   kubeconfig's client certificate (`kube::kubeconfig::tls_client`). The
//!   token travels in `X-Vault-Token`, which the proxy passes on.
//! - **Bounded**: every call has a timeout.
//! - **Errors**: OpenBao's status decides the cause: 400 invalid (400 to
//!   `sys/init` on an initialized server: conflict), 401/403 unauthorized,
//!   404 not found (a read answers `None`), 429 rate limited, 5xx (503 is
//!   sealed or not initialized) unavailable, no answer network. Messages
//!   carry OpenBao's `errors`, never a token or a share.
//! - **Never wipes**: re-initialising a cluster destroys its data; the
//!   client refuses, and the precondition runbook says how an operator
//!   does it.

use std::time::Duration;

use async_trait::async_trait;
use cz_engine::{Cause, StepError, System};
use cz_state::SecretString;
use reqwest::{Method, StatusCode};
use serde_json::{Value, json};

use super::{BaoApi, BaoEndpoint, BaoInit, BaoInitRequest, BaoLeader, BaoStatus};
use crate::AdapterResult;

/// The real OpenBao client.
#[derive(Clone, Debug)]
pub struct OpenBaoClient {
    timeout: Duration,
    direct: reqwest::Client,
}

impl Default for OpenBaoClient {
    fn default() -> Self {
        OpenBaoClient::new(Duration::from_secs(30))
    }
}

fn err(op: &str, cause: Cause, message: impl Into<String>) -> StepError {
    StepError::adapter(System::Openbao, op, cause, message)
}

/// The cause of an answer that is not a success.
pub fn cause_of(status: StatusCode) -> Cause {
    match status.as_u16() {
        401 | 403 => Cause::Unauthorized,
        404 => Cause::NotFound,
        409 => Cause::Conflict,
        429 => Cause::RateLimited,
        400 | 405 | 422 => Cause::Invalid,
        _ => Cause::Unavailable,
    }
}

/// OpenBao's `errors`, joined (the body as text when it has none).
fn errors_of(body: &str) -> String {
    serde_json::from_str::<Value>(body)
        .ok()
        .and_then(|v| v.get("errors").and_then(Value::as_array).cloned())
        .map(|e| e.iter().filter_map(Value::as_str).collect::<Vec<_>>().join("; "))
        .filter(|m| !m.is_empty())
        .unwrap_or_else(|| body.chars().take(300).collect())
}

/// A refused call: `Conflict` when OpenBao says something is "already
/// initialized" (whatever its status code), else by the status.
fn refused(op: &str, status: StatusCode, body: &str) -> StepError {
    let message = errors_of(body);
    let cause =
        if message.contains("already initialized") { Cause::Conflict } else { cause_of(status) };
    err(op, cause, format!("HTTP {status}: {message}"))
}

fn status_of(v: &Value) -> BaoStatus {
    let n = |k: &str| v.get(k).and_then(Value::as_u64).unwrap_or(0).min(255) as u8;
    BaoStatus {
        initialized: v.get("initialized").and_then(Value::as_bool).unwrap_or(false),
        sealed: v.get("sealed").and_then(Value::as_bool).unwrap_or(true),
        threshold: n("t"),
        shares: n("n"),
        progress: n("progress"),
        seal_type: v.get("type").and_then(Value::as_str).unwrap_or_default().to_owned(),
        cluster_id: v.get("cluster_id").and_then(Value::as_str).map(str::to_owned),
    }
}

impl OpenBaoClient {
    pub fn new(timeout: Duration) -> OpenBaoClient {
        let direct = reqwest::Client::builder()
            .timeout(timeout)
            .connect_timeout(timeout)
            .build()
            .expect("an HTTP client builds");
        OpenBaoClient { timeout, direct }
    }

    fn http(&self, at: &BaoEndpoint) -> AdapterResult<reqwest::Client> {
        match &at.via {
            None => Ok(self.direct.clone()),
            Some(kc) => {
                let ep = crate::kube::kubeconfig::endpoint(kc.expose())?;
                crate::kube::kubeconfig::tls_client(&ep, self.timeout)
            }
        }
    }

    /// One call: the status and the body text.
    #[tracing::instrument(name = "adapter", level = "info", skip_all, fields(system = "openbao", op = %op))]
    async fn call(
        &self,
        op: &str,
        at: &BaoEndpoint,
        method: Method,
        path: &str,
        token: Option<&SecretString>,
        body: Option<Value>,
    ) -> AdapterResult<(StatusCode, String)> {
        let url = format!("{}/v1/{}", at.url, path.trim_start_matches('/'));
        let mut req = self.http(at)?.request(method, &url);
        if let Some(t) = token {
            req = req.header("X-Vault-Token", t.expose());
        }
        if let Some(b) = body {
            req = req.json(&b);
        }
        let resp = req.send().await.map_err(|e| {
            // reqwest's message names the URL, never a header.
            err(op, Cause::Network, cz_engine::chain(&e))
        })?;
        let status = resp.status();
        let text = resp.text().await.map_err(|e| err(op, Cause::Network, e.to_string()))?;
        Ok((status, text))
    }

    /// A call that must succeed; its body as JSON (null when empty).
    async fn expect(
        &self,
        op: &str,
        at: &BaoEndpoint,
        method: Method,
        path: &str,
        token: Option<&SecretString>,
        body: Option<Value>,
    ) -> AdapterResult<Value> {
        let (status, text) = self.call(op, at, method, path, token, body).await?;
        if !status.is_success() {
            return Err(err(op, cause_of(status), format!("HTTP {status}: {}", errors_of(&text))));
        }
        if text.trim().is_empty() {
            return Ok(Value::Null);
        }
        serde_json::from_str(&text).map_err(|e| err(op, Cause::Invalid, format!("not JSON: {e}")))
    }
}

#[async_trait]
impl BaoApi for OpenBaoClient {
    async fn status(&self, at: &BaoEndpoint) -> AdapterResult<BaoStatus> {
        let v = self.expect("seal-status", at, Method::GET, "sys/seal-status", None, None).await?;
        Ok(status_of(&v))
    }

    async fn init(&self, at: &BaoEndpoint, req: BaoInitRequest) -> AdapterResult<BaoInit> {
        let (shares, threshold) = (req.shares, req.threshold);
        let body = if req.recovery {
            json!({ "recovery_shares": shares, "recovery_threshold": threshold })
        } else {
            json!({ "secret_shares": shares, "secret_threshold": threshold })
        };
        let (status, text) =
            self.call("init", at, Method::POST, "sys/init", None, Some(body)).await?;
        if !status.is_success() {
            return Err(refused("init", status, &text));
        }
        let v: Value = serde_json::from_str(&text)
            .map_err(|e| err("init", Cause::Invalid, format!("not JSON: {e}")))?;
        let field = if req.recovery { "recovery_keys" } else { "keys" };
        let keys: Vec<SecretString> = v
            .get(field)
            .and_then(Value::as_array)
            .map(|ks| ks.iter().filter_map(Value::as_str).map(SecretString::new).collect())
            .unwrap_or_default();
        let root = v.get("root_token").and_then(Value::as_str).map(SecretString::new);
        match root {
            Some(root_token) if keys.len() == usize::from(shares) => {
                Ok(BaoInit { keys, root_token })
            }
            _ => Err(err("init", Cause::Invalid, "the answer lacks its shares or root token")),
        }
    }

    async fn unseal(&self, at: &BaoEndpoint, key: &SecretString) -> AdapterResult<BaoStatus> {
        let body = json!({ "key": key.expose() });
        let v = self.expect("unseal", at, Method::POST, "sys/unseal", None, Some(body)).await?;
        Ok(status_of(&v))
    }

    async fn leader(&self, at: &BaoEndpoint) -> AdapterResult<BaoLeader> {
        let v = self.expect("leader", at, Method::GET, "sys/leader", None, None).await?;
        let leader_address =
            v.get("leader_address").and_then(Value::as_str).unwrap_or_default().to_owned();
        if leader_address.is_empty() {
            return Err(err("leader", Cause::Unavailable, "no active node is advertised yet"));
        }
        Ok(BaoLeader {
            is_self: v.get("is_self").and_then(Value::as_bool).unwrap_or(false),
            leader_address,
        })
    }

    async fn raft_join(
        &self,
        at: &BaoEndpoint,
        leader_api_addr: &str,
        non_voter: bool,
    ) -> AdapterResult<()> {
        let body = json!({ "leader_api_addr": leader_api_addr, "non_voter": non_voter });
        let (status, text) = self
            .call("raft-join", at, Method::POST, "sys/storage/raft/join", None, Some(body))
            .await?;
        if !status.is_success() {
            // A node with raft state of its own (joined already, or a
            // cluster of its own) answers 500 "raft is already initialized".
            return Err(refused("raft-join", status, &text));
        }
        let v: Value = serde_json::from_str(&text).unwrap_or(Value::Null);
        if v.get("joined").and_then(Value::as_bool) == Some(true) {
            return Ok(());
        }
        Err(err("raft-join", Cause::Invalid, format!("the join was not accepted: {v}")))
    }

    async fn wipe(&self, at: &BaoEndpoint) -> AdapterResult<()> {
        Err(StepError::Precondition {
            message: format!(
                "OpenBao is initialized but its shares never reached the store ({}); the \
                 daemon does not wipe an OpenBao",
                at.url
            ),
            remediation: "Nothing was written to it (every later step needs those shares): \
                scale the OpenBao StatefulSet to 0, delete its volumes \
                (`kubectl -n openbao delete pvc -l app.kubernetes.io/name=openbao`), scale it \
                back, then `retry JOB --step secrets-handoff/init` \
                (runbooks/needs-operator-precondition.md)."
                .into(),
        })
    }

    async fn write(
        &self,
        at: &BaoEndpoint,
        token: &SecretString,
        path: &str,
        body: Value,
    ) -> AdapterResult<Value> {
        let op = format!("write {path}");
        self.expect(&op, at, Method::POST, path, Some(token), Some(body)).await
    }

    async fn delete(
        &self,
        at: &BaoEndpoint,
        token: &SecretString,
        path: &str,
    ) -> AdapterResult<()> {
        let op = format!("delete {path}");
        let (status, text) = self.call(&op, at, Method::DELETE, path, Some(token), None).await?;
        if status.is_success() || status == StatusCode::NOT_FOUND {
            return Ok(());
        }
        Err(err(&op, cause_of(status), format!("HTTP {status}: {}", errors_of(&text))))
    }

    async fn read(
        &self,
        at: &BaoEndpoint,
        token: &SecretString,
        path: &str,
    ) -> AdapterResult<Option<Value>> {
        let op = format!("read {path}");
        let (status, text) = self.call(&op, at, Method::GET, path, Some(token), None).await?;
        if status == StatusCode::NOT_FOUND {
            return Ok(None);
        }
        if !status.is_success() {
            return Err(err(&op, cause_of(status), format!("HTTP {status}: {}", errors_of(&text))));
        }
        serde_json::from_str(&text)
            .map(Some)
            .map_err(|e| err(&op, Cause::Invalid, format!("not JSON: {e}")))
    }
}
