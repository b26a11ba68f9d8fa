//! GoDaddy's domains API (`/v1/domains/{domain}`, `Authorization: sso-key
//! key:secret`). `GET` returns the domain with its `nameServers`; `PATCH`
//! with `{"nameServers": [...]}` replaces them (204). Errors are `{code,
//! message, fields?}`: 401 `UNABLE_TO_AUTHENTICATE`, 403 `ACCESS_DENIED`
//! (GoDaddy refuses its management API to some accounts), 404
//! `NOT_FOUND`, 422 `INVALID_BODY` with the fields, 429
//! `TOO_MANY_REQUESTS` with `retryAfterSec`.

use async_trait::async_trait;
use cz_state::SecretString;
use reqwest::Method;
use serde_json::{Value, json};

use super::Registrar;
use super::{Http, RegistrarApi, bare, cause_of, err};
use crate::AdapterResult;
use cz_engine::Cause;

const R: Registrar = Registrar::Godaddy;

pub struct Godaddy {
    http: Http,
    base: String,
    key: String,
    secret: SecretString,
}

impl Godaddy {
    pub(crate) fn new(http: Http, base: &str, key: String, secret: SecretString) -> Godaddy {
        Godaddy { http, base: base.trim_end_matches('/').to_owned(), key, secret }
    }

    async fn call(
        &self,
        op: &str,
        method: Method,
        domain: &str,
        body: Option<Value>,
    ) -> AdapterResult<Value> {
        let mut req = self
            .http
            .client
            .request(method, format!("{}/v1/domains/{domain}", self.base))
            .header("Authorization", format!("sso-key {}:{}", self.key, self.secret.expose()))
            .header("Accept", "application/json");
        if let Some(b) = body {
            req = req.json(&b);
        }
        let (status, text) = self.http.send(op, req).await?;
        if status.is_success() {
            return Ok(serde_json::from_str(&text).unwrap_or(Value::Null));
        }
        let v: Value = serde_json::from_str(&text).unwrap_or(Value::Null);
        let code = v["code"].as_str().unwrap_or("");
        let mut message = v["message"]
            .as_str()
            .map(str::to_owned)
            .unwrap_or_else(|| text.chars().take(200).collect());
        if let Some(fields) = v["fields"].as_array() {
            for f in fields {
                message.push_str(&format!(
                    "; {}: {}",
                    f["path"].as_str().unwrap_or("?"),
                    f["message"].as_str().unwrap_or("")
                ));
            }
        }
        if let Some(s) = v["retryAfterSec"].as_u64() {
            message.push_str(&format!(" (retry after {s}s)"));
        }
        let cause = match code {
            "UNABLE_TO_AUTHENTICATE" | "ACCESS_DENIED" => Cause::Unauthorized,
            "NOT_FOUND" | "UNKNOWN_DOMAIN" => Cause::NotFound,
            "TOO_MANY_REQUESTS" => Cause::RateLimited,
            _ => cause_of(status),
        };
        Err(err(R, op, cause, format!("{domain}: {message} ({status}, {code})")))
    }
}

#[async_trait]
impl RegistrarApi for Godaddy {
    fn registrar(&self) -> Registrar {
        R
    }

    async fn validate_token(&self, domain: &str) -> AdapterResult<()> {
        let op = "validate_token";
        let d = self.call(op, Method::GET, domain, None).await?;
        match d["status"].as_str() {
            Some("ACTIVE") => Ok(()),
            s => Err(err(
                R,
                op,
                Cause::Invalid,
                format!("{domain} has status `{}`, not ACTIVE", s.unwrap_or("?")),
            )),
        }
    }

    async fn get_nameservers(&self, domain: &str) -> AdapterResult<Vec<String>> {
        let d = self.call("get_nameservers", Method::GET, domain, None).await?;
        Ok(d["nameServers"]
            .as_array()
            .map(|a| a.iter().filter_map(Value::as_str).map(bare).collect())
            .unwrap_or_default())
    }

    async fn set_nameservers(&self, domain: &str, nameservers: &[String]) -> AdapterResult<()> {
        let list: Vec<String> = nameservers.iter().map(|n| bare(n)).collect();
        self.call("set_nameservers", Method::PATCH, domain, Some(json!({ "nameServers": list })))
            .await
            .map(drop)
    }
}
