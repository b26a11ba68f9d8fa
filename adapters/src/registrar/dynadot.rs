//! Dynadot's `api3.json`: `GET ?key=…&command=…`. Every answer is HTTP 200
//! with one `<Command>Response` object holding `ResponseCode` ("0" is
//! success), `Status` and, on failure, `Error`. Errors have no numbers,
//! so they are classified by their text: the key (invalid key, IP not
//! allowed) → unauthorized; the domain not in the account → not found;
//! `system_busy` / too many requests → rate limited.
//!
//! The key travels in the query string (Dynadot's API has no other
//! place for it): errors are reported without the URL.

use async_trait::async_trait;
use cz_state::SecretString;
use serde_json::Value;

use super::Registrar;
use super::{Http, RegistrarApi, bare, cause_of, err};
use crate::AdapterResult;
use cz_engine::Cause;

const R: Registrar = Registrar::Dynadot;
/// Dynadot takes up to 13 name servers, `ns0` … `ns12`.
const MAX_NS: usize = 13;

pub struct Dynadot {
    http: Http,
    url: String,
    key: SecretString,
}

/// Classifies a Dynadot error by its status and text.
pub fn cause_of_error(status: &str, error: &str) -> Cause {
    let e = error.to_ascii_lowercase();
    if status == "system_busy" || e.contains("too many") || e.contains("busy") {
        Cause::RateLimited
    } else if e.contains("key") || e.contains("not allowed") || e.contains("ip address") {
        Cause::Unauthorized
    } else if e.contains("could not find")
        || e.contains("not found")
        || e.contains("not in your account")
    {
        Cause::NotFound
    } else {
        Cause::Invalid
    }
}

impl Dynadot {
    pub(crate) fn new(http: Http, url: &str, key: SecretString) -> Dynadot {
        Dynadot { http, url: url.to_owned(), key }
    }

    /// Runs `command`; the inner response object on success.
    async fn call(
        &self,
        op: &str,
        command: &str,
        params: &[(String, String)],
    ) -> AdapterResult<Value> {
        let mut q: Vec<(&str, &str)> = vec![("key", self.key.expose()), ("command", command)];
        q.extend(params.iter().map(|(k, v)| (k.as_str(), v.as_str())));
        let (status, text) =
            self.http.send(op, self.http.client.get(super::with_query(&self.url, &q))).await?;
        let garbled = || {
            let cause = if status.is_success() { Cause::Unavailable } else { cause_of(status) };
            err(
                R,
                op,
                cause,
                format!("HTTP {status}: {}", text.chars().take(200).collect::<String>()),
            )
        };
        let v: Value = serde_json::from_str(&text).map_err(|_| garbled())?;
        let inner = v.as_object().and_then(|o| o.values().next()).cloned().ok_or_else(garbled)?;
        let code = match &inner["ResponseCode"] {
            Value::String(s) => s.clone(),
            Value::Number(n) => n.to_string(),
            _ => return Err(garbled()),
        };
        if code == "0" {
            return Ok(inner);
        }
        let st = inner["Status"].as_str().unwrap_or("");
        let error = inner["Error"].as_str().unwrap_or(st);
        Err(err(R, op, cause_of_error(st, error), format!("{error} (ResponseCode {code})")))
    }
}

#[async_trait]
impl RegistrarApi for Dynadot {
    fn registrar(&self) -> Registrar {
        R
    }

    async fn validate_token(&self, domain: &str) -> AdapterResult<()> {
        self.call("validate_token", "domain_info", &[("domain".into(), domain.into())])
            .await
            .map(drop)
    }

    async fn get_nameservers(&self, domain: &str) -> AdapterResult<Vec<String>> {
        let r = self.call("get_nameservers", "get_ns", &[("domain".into(), domain.into())]).await?;
        Ok((0..MAX_NS)
            .filter_map(|i| r["NsContent"][format!("Host{i}")].as_str())
            .filter(|h| !h.trim().is_empty())
            .map(bare)
            .collect())
    }

    async fn set_nameservers(&self, domain: &str, nameservers: &[String]) -> AdapterResult<()> {
        let op = "set_nameservers";
        if nameservers.is_empty() || nameservers.len() > MAX_NS {
            return Err(err(
                R,
                op,
                Cause::Invalid,
                format!("takes 1 to {MAX_NS} name servers, not {}", nameservers.len()),
            ));
        }
        let mut params = vec![("domain".to_owned(), domain.to_owned())];
        params.extend(nameservers.iter().enumerate().map(|(i, n)| (format!("ns{i}"), bare(n))));
        self.call(op, "set_ns", &params).await.map(drop)
    }
}
