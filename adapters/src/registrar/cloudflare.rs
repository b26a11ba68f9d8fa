//! Cloudflare (API v4, bearer token): a **subdomain** of a zone the
//! customer hosts on Cloudflare is delegated by NS records in that zone.
//!
//! The apex of a Cloudflare zone cannot be delegated elsewhere: Cloudflare
//! answers it with its own nameservers (and Cloudflare Registrar does not
//! let a domain leave them), so an apex is refused as unsupported, with
//! the two ways out in the message.
//!
//! Every answer is the v4 envelope `{success, errors:[{code, message}],
//! result}`; the codes that matter: 1000/9109/10000 (token invalid or not
//! allowed), 971 (throttled), 7003 (no such zone), 81044 (no such record),
//! 81058 (an identical record exists, which is success here).

use async_trait::async_trait;
use cz_state::SecretString;
use reqwest::Method;
use serde_json::{Value, json};

use super::Registrar;
use super::{Http, RegistrarApi, bare, cause_of, err, sorted};
use crate::AdapterResult;
use cz_engine::{Cause, StepError};

const R: Registrar = Registrar::Cloudflare;

pub struct Cloudflare {
    http: Http,
    base: String,
    token: SecretString,
}

/// A failed call: Cloudflare's error code (0 without one) and the error.
struct Failure {
    code: i64,
    error: StepError,
}

impl From<StepError> for Failure {
    fn from(error: StepError) -> Failure {
        Failure { code: 0, error }
    }
}

impl From<Failure> for StepError {
    fn from(f: Failure) -> StepError {
        f.error
    }
}

/// The zone that holds a name.
struct Zone {
    id: String,
    name: String,
    name_servers: Vec<String>,
}

impl Cloudflare {
    pub(crate) fn new(http: Http, base: &str, token: SecretString) -> Cloudflare {
        Cloudflare { http, base: base.trim_end_matches('/').to_owned(), token }
    }

    /// One call; the envelope's `result`, or its first error classified.
    async fn call(
        &self,
        op: &str,
        method: Method,
        path: &str,
        query: &[(&str, &str)],
        body: Option<Value>,
    ) -> Result<Value, Failure> {
        let mut req = self
            .http
            .client
            .request(method, super::with_query(&format!("{}{path}", self.base), query))
            .bearer_auth(self.token.expose());
        if let Some(b) = body {
            req = req.json(&b);
        }
        let (status, text) = self.http.send(op, req).await?;
        let v: Value = serde_json::from_str(&text).unwrap_or(Value::Null);
        if status.is_success() && v["success"].as_bool() == Some(true) {
            return Ok(v["result"].clone());
        }
        let first = &v["errors"][0];
        let code = first["code"].as_i64().unwrap_or(0);
        let message = first["message"].as_str().map(str::to_owned).unwrap_or_else(|| {
            format!("HTTP {status}: {}", text.chars().take(200).collect::<String>())
        });
        let cause = match code {
            1000 | 6003 | 6111 | 9103 | 9109 | 10000 => Cause::Unauthorized,
            971 => Cause::RateLimited,
            7003 | 81044 => Cause::NotFound,
            _ => cause_of(status),
        };
        let hint = match cause {
            Cause::Unauthorized => {
                " (the token must be active, with Zone:Read and DNS:Edit on the zone)"
            }
            _ => "",
        };
        Err(Failure { code, error: err(R, op, cause, format!("{message} (code {code}){hint}")) })
    }

    /// The customer's zone holding `domain`: the longest of its suffixes
    /// that is a zone of the token's account.
    async fn zone_of(&self, op: &str, domain: &str) -> AdapterResult<Zone> {
        let labels: Vec<&str> = domain.split('.').collect();
        for i in 0..labels.len().saturating_sub(1) {
            let candidate = labels[i..].join(".");
            let found = self.call(op, Method::GET, "/zones", &[("name", &candidate)], None).await?;
            if let Some(z) = found.as_array().and_then(|a| a.first()) {
                return Ok(Zone {
                    id: z["id"].as_str().unwrap_or_default().to_owned(),
                    name: z["name"].as_str().unwrap_or_default().to_owned(),
                    name_servers: z["name_servers"]
                        .as_array()
                        .map(|a| a.iter().filter_map(Value::as_str).map(bare).collect())
                        .unwrap_or_default(),
                });
            }
        }
        Err(err(
            R,
            op,
            Cause::NotFound,
            format!("no zone of this token's account holds {domain} (nor a parent of it)"),
        ))
    }

    fn refuse_apex(op: &str, zone: &Zone) -> StepError {
        err(
            R,
            op,
            Cause::Invalid,
            format!(
                "{} is a Cloudflare zone apex: Cloudflare always answers it with its own \
                 nameservers, so it cannot be delegated to the Sovereign; use a subdomain \
                 (e.g. sovereign.{}), or mode byo-manual with the NS changed at the registrar",
                zone.name, zone.name
            ),
        )
    }

    /// The `rtype` records of `name` in `zone`: (record id, content).
    async fn records(
        &self,
        op: &str,
        zone: &Zone,
        name: &str,
        rtype: &str,
    ) -> AdapterResult<Vec<(String, String)>> {
        let path = format!("/zones/{}/dns_records", zone.id);
        let q = [("type", rtype), ("name", name), ("per_page", "100")];
        let recs = self.call(op, Method::GET, &path, &q, None).await?;
        Ok(recs
            .as_array()
            .map(|a| {
                a.iter()
                    .map(|r| {
                        (
                            r["id"].as_str().unwrap_or_default().to_owned(),
                            bare(r["content"].as_str().unwrap_or_default()),
                        )
                    })
                    .collect()
            })
            .unwrap_or_default())
    }
}

impl Cloudflare {
    /// The zone holding `domain`, which must be below its apex.
    async fn subdomain_zone(&self, op: &str, domain: &str) -> AdapterResult<Zone> {
        let zone = self.zone_of(op, domain).await?;
        if zone.name == domain {
            return Err(Self::refuse_apex(op, &zone));
        }
        Ok(zone)
    }

    /// Makes `domain`'s `rtype` records exactly `want` (normalized as
    /// [`Self::records`] reads them): deletes the others, creates the
    /// missing ones with `body`. Records gone or made meanwhile (an earlier
    /// attempt) are what was wanted.
    async fn reconcile(
        &self,
        op: &str,
        zone: &Zone,
        domain: &str,
        rtype: &str,
        want: &[String],
        body: impl Fn(&str) -> Value,
    ) -> AdapterResult<()> {
        let have = self.records(op, zone, domain, rtype).await?;
        let path = format!("/zones/{}/dns_records", zone.id);
        for (id, content) in &have {
            if !want.contains(content) {
                match self.call(op, Method::DELETE, &format!("{path}/{id}"), &[], None).await {
                    Ok(_) | Err(Failure { code: 81044, .. }) => {}
                    Err(f) => return Err(f.into()),
                }
            }
        }
        for w in want.iter().filter(|w| !have.iter().any(|(_, c)| c == *w)) {
            match self.call(op, Method::POST, &path, &[], Some(body(w))).await {
                Ok(_) | Err(Failure { code: 81058, .. }) => {}
                Err(f) => return Err(f.into()),
            }
        }
        Ok(())
    }
}

#[async_trait]
impl RegistrarApi for Cloudflare {
    fn registrar(&self) -> Registrar {
        R
    }

    async fn validate_token(&self, domain: &str) -> AdapterResult<()> {
        let op = "validate_token";
        let t = self.call(op, Method::GET, "/user/tokens/verify", &[], None).await?;
        match t["status"].as_str() {
            Some("active") => {}
            s => {
                return Err(err(
                    R,
                    op,
                    Cause::Unauthorized,
                    format!("the token is {}, not active", s.unwrap_or("of unknown status")),
                ));
            }
        }
        self.subdomain_zone(op, domain).await.map(drop)
    }

    async fn get_nameservers(&self, domain: &str) -> AdapterResult<Vec<String>> {
        let op = "get_nameservers";
        let zone = self.zone_of(op, domain).await?;
        if zone.name == domain {
            return Ok(zone.name_servers);
        }
        Ok(self.records(op, &zone, domain, "NS").await?.into_iter().map(|(_, c)| c).collect())
    }

    async fn set_nameservers(&self, domain: &str, nameservers: &[String]) -> AdapterResult<()> {
        let op = "set_nameservers";
        let zone = self.subdomain_zone(op, domain).await?;
        let body = |ns: &str| json!({ "type": "NS", "name": domain, "content": ns, "ttl": 3600 });
        self.reconcile(op, &zone, domain, "NS", &sorted(nameservers), body).await
    }

    async fn set_ds(&self, domain: &str, ds: &[String]) -> AdapterResult<bool> {
        let op = "set_ds";
        let zone = self.subdomain_zone(op, domain).await?;
        let mut want = Vec::new();
        for d in ds {
            let f: Vec<&str> = d.split_whitespace().collect();
            if f.len() < 4 {
                return Err(err(R, op, Cause::Invalid, format!("`{d}` is not a DS record")));
            }
            want.push(
                format!("{} {} {} {}", f[0], f[1], f[2], f[3..].concat()).to_ascii_lowercase(),
            );
        }
        want.sort();
        // Cloudflare takes a DS record's fields in `data`.
        let body = |d: &str| {
            let f: Vec<&str> = d.split_whitespace().collect();
            let n = |i: usize| f[i].parse::<u32>().unwrap_or(0);
            json!({ "type": "DS", "name": domain, "ttl": 3600, "data": {
                "key_tag": n(0), "algorithm": n(1), "digest_type": n(2),
                "digest": f[3].to_ascii_uppercase() } })
        };
        self.reconcile(op, &zone, domain, "DS", &want, body).await?;
        Ok(true)
    }
}
