//! OVH's API 1.0, with signed requests: `X-Ovh-Application` (the
//! application key), `X-Ovh-Consumer` (the consumer key), `X-Ovh-Timestamp`
//! (OVH's clock, learned once from `GET /auth/time`) and `X-Ovh-Signature`
//! = `$1$` + hex SHA-1 of `secret+consumer+METHOD+url+body+timestamp`.
//!
//! - validate: `GET /auth/currentCredential` (`status: validated`), then
//!   `GET /domain/{domain}` (404 "This service does not exist": not in the
//!   account);
//! - get: `GET /domain/{domain}/nameServer` (ids), then each
//!   `/nameServer/{id}` (`host`; `toDelete` ones are on their way out);
//! - set: `PUT /domain/{domain}` `{"nameServerType":"external"}` when it is
//!   OVH-hosted, then `POST /domain/{domain}/nameServers/update`, which
//!   returns the task that applies it.
//!
//! Errors are `{errorCode?, message, class?}`: 403 `INVALID_KEY` /
//! `INVALID_CREDENTIAL` / `NOT_GRANTED_CALL` → unauthorized, 400
//! `INVALID_SIGNATURE` → unauthorized (the secret does not match the key),
//! `QUERY_TIME_TOO_FAR` → the clock is learned again and the call is
//! transient, 404 → not found, 429 → rate limited.

use std::sync::Mutex;

use async_trait::async_trait;
use cz_state::SecretString;
use reqwest::Method;
use serde_json::{Value, json};
use sha1::{Digest, Sha1};

use super::Registrar;
use super::{Http, RegistrarApi, bare, cause_of, err, sorted};
use crate::AdapterResult;
use cz_engine::Cause;

const R: Registrar = Registrar::Ovh;

pub struct Ovh {
    http: Http,
    base: String,
    app_key: String,
    app_secret: SecretString,
    consumer_key: SecretString,
    /// OVH's clock minus ours, once known.
    drift: Mutex<Option<i64>>,
}

/// `$1$` + hex SHA-1 of the request, as OVH checks it.
pub fn signature(
    secret: &str,
    consumer: &str,
    method: &str,
    url: &str,
    body: &str,
    ts: i64,
) -> String {
    let mut h = Sha1::new();
    h.update(format!("{secret}+{consumer}+{method}+{url}+{body}+{ts}").as_bytes());
    format!("$1${}", hex::encode(h.finalize()))
}

impl Ovh {
    pub(crate) fn new(
        http: Http,
        base: &str,
        app_key: String,
        app_secret: SecretString,
        consumer_key: SecretString,
    ) -> Ovh {
        Ovh {
            http,
            base: base.trim_end_matches('/').to_owned(),
            app_key,
            app_secret,
            consumer_key,
            drift: Mutex::new(None),
        }
    }

    async fn timestamp(&self, op: &str) -> AdapterResult<i64> {
        let now = chrono::Utc::now().timestamp();
        if let Some(d) = *self.drift.lock().expect("drift") {
            return Ok(now + d);
        }
        let (status, text) =
            self.http.send(op, self.http.client.get(format!("{}/auth/time", self.base))).await?;
        let server: i64 = text.trim().parse().map_err(|_| {
            err(
                R,
                op,
                cause_of(status),
                format!(
                    "GET /auth/time answered {status}: {}",
                    text.chars().take(100).collect::<String>()
                ),
            )
        })?;
        *self.drift.lock().expect("drift") = Some(server - now);
        Ok(server)
    }

    async fn call(
        &self,
        op: &str,
        method: Method,
        path: &str,
        body: Option<Value>,
    ) -> AdapterResult<Value> {
        let url = format!("{}{path}", self.base);
        let body = body.map(|b| b.to_string()).unwrap_or_default();
        let ts = self.timestamp(op).await?;
        let sig = signature(
            self.app_secret.expose(),
            self.consumer_key.expose(),
            method.as_str(),
            &url,
            &body,
            ts,
        );
        let mut req = self
            .http
            .client
            .request(method, &url)
            .header("X-Ovh-Application", &self.app_key)
            .header("X-Ovh-Consumer", self.consumer_key.expose())
            .header("X-Ovh-Timestamp", ts.to_string())
            .header("X-Ovh-Signature", sig);
        if !body.is_empty() {
            req = req.header("Content-Type", "application/json").body(body);
        }
        let (status, text) = self.http.send(op, req).await?;
        if status.is_success() {
            return Ok(serde_json::from_str(&text).unwrap_or(Value::Null));
        }
        let v: Value = serde_json::from_str(&text).unwrap_or(Value::Null);
        let code = v["errorCode"].as_str().unwrap_or("");
        let message = v["message"]
            .as_str()
            .map(str::to_owned)
            .unwrap_or_else(|| text.chars().take(200).collect());
        let cause = match code {
            "INVALID_KEY" | "INVALID_CREDENTIAL" | "NOT_GRANTED_CALL" | "NOT_CREDENTIAL"
            | "INVALID_SIGNATURE" => Cause::Unauthorized,
            "QUERY_TIME_TOO_FAR" => {
                *self.drift.lock().expect("drift") = None;
                Cause::Unavailable
            }
            _ => cause_of(status),
        };
        Err(err(
            R,
            op,
            cause,
            format!(
                "{path}: {message} ({status}{}{code})",
                if code.is_empty() { "" } else { ", " }
            ),
        ))
    }
}

#[async_trait]
impl RegistrarApi for Ovh {
    fn registrar(&self) -> Registrar {
        R
    }

    async fn validate_token(&self, domain: &str) -> AdapterResult<()> {
        let op = "validate_token";
        let c = self.call(op, Method::GET, "/auth/currentCredential", None).await?;
        if c["status"].as_str() != Some("validated") {
            return Err(err(
                R,
                op,
                Cause::Unauthorized,
                format!(
                    "the consumer key is `{}`, not validated",
                    c["status"].as_str().unwrap_or("?")
                ),
            ));
        }
        self.call(op, Method::GET, &format!("/domain/{domain}"), None).await.map(drop)
    }

    async fn get_nameservers(&self, domain: &str) -> AdapterResult<Vec<String>> {
        let op = "get_nameservers";
        let ids = self.call(op, Method::GET, &format!("/domain/{domain}/nameServer"), None).await?;
        let mut out = Vec::new();
        for id in ids.as_array().into_iter().flatten().filter_map(Value::as_i64) {
            let ns = self
                .call(op, Method::GET, &format!("/domain/{domain}/nameServer/{id}"), None)
                .await?;
            if ns["toDelete"].as_bool() != Some(true)
                && let Some(h) = ns["host"].as_str()
            {
                out.push(bare(h));
            }
        }
        Ok(out)
    }

    async fn set_nameservers(&self, domain: &str, nameservers: &[String]) -> AdapterResult<()> {
        let op = "set_nameservers";
        if sorted(&self.get_nameservers(domain).await?) == sorted(nameservers) {
            return Ok(());
        }
        let d = self.call(op, Method::GET, &format!("/domain/{domain}"), None).await?;
        if d["nameServerType"].as_str() != Some("external") {
            let body = json!({ "nameServerType": "external" });
            self.call(op, Method::PUT, &format!("/domain/{domain}"), Some(body)).await?;
        }
        let hosts: Vec<Value> = nameservers.iter().map(|n| json!({ "host": bare(n) })).collect();
        let path = format!("/domain/{domain}/nameServers/update");
        self.call(op, Method::POST, &path, Some(json!({ "nameServers": hosts }))).await.map(drop)
    }
}
