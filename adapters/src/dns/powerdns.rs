//! [`PowerDns`]: the real [`DnsApi`], PowerDNS Authoritative's HTTP API
//! (`/api/v1/servers/{id}`) over reqwest, and DNS queries over UDP (TCP on
//! truncation) to the same server with hickory.
//!
//! - Zone ids in URLs are the zone name with its trailing dot, other
//!   characters than `A-Za-z0-9.-` written `=XX` (PowerDNS's encoding).
//! - Errors carry PowerDNS's own `error` text and are classified by
//!   status: 401/403 unauthorized (a wrong key is an operator's fix), 404
//!   not found, 409 conflict, 400/422 invalid (a record the server
//!   refuses), 429 rate limited, 5xx unavailable; no answer is `Network`.
//!   The API key never appears in a message.
//! - Idempotent by contract: creating an existing zone, deleting an absent
//!   zone or RRset succeed.
//! - Queries go to the authoritative server itself, without a cache, so a
//!   verification reads what the server serves now; no records (NXDOMAIN
//!   or NODATA) is an empty answer, not an error; REFUSED (a name the
//!   server does not serve) is `NotFound`.

use std::net::SocketAddr;
use std::time::Duration;

use async_trait::async_trait;
use cz_state::SecretString;
use hickory_resolver::Resolver;
use hickory_resolver::config::{
    ConnectionConfig, NameServerConfig, ProtocolConfig, ResolverConfig, ResolverOpts,
};
use hickory_resolver::net::runtime::TokioRuntimeProvider;
use hickory_resolver::net::{DnsError, NetError};
use hickory_resolver::proto::op::ResponseCode;
use hickory_resolver::proto::rr::RecordType;
use reqwest::{Method, StatusCode};
use serde_json::{Value, json};

use crate::{AdapterResult, DnsApi, Rrset, absolute_name as absolute};
use cz_engine::{Cause, StepError, System};

fn err(op: &str, cause: Cause, message: impl Into<String>) -> StepError {
    StepError::adapter(System::Dns, op, cause, message)
}

/// How a PowerDNS answer's status is classified.
pub fn cause_of(status: StatusCode) -> Cause {
    Cause::from_http_status(status.as_u16())
}

/// A zone name as PowerDNS writes it in URLs (bodies carry names as they
/// are).
pub fn zone_id(zone: &str) -> String {
    absolute(zone)
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '.' || c == '-' {
                c.to_string()
            } else {
                let mut b = [0; 4];
                c.encode_utf8(&mut b).bytes().map(|x| format!("={x:02X}")).collect()
            }
        })
        .collect()
}

/// A resolver asking only `server` (UDP, TCP on truncation), uncached;
/// `recursive`: recursion desired (a public resolver), else not (an
/// authoritative server).
fn resolver_for(
    server: SocketAddr,
    timeout: Duration,
    recursive: bool,
) -> AdapterResult<Resolver<TokioRuntimeProvider>> {
    let conn = |protocol| {
        let mut c = ConnectionConfig::new(protocol);
        c.port = server.port();
        c
    };
    let ns = NameServerConfig::new(
        server.ip(),
        true,
        vec![conn(ProtocolConfig::Udp), conn(ProtocolConfig::Tcp)],
    );
    let mut opts = ResolverOpts::default();
    opts.cache_size = 0;
    opts.timeout = timeout.min(Duration::from_secs(5));
    opts.attempts = 2;
    opts.recursion_desired = recursive;
    Resolver::builder_with_config(
        ResolverConfig::from_parts(None, vec![], vec![ns]),
        TokioRuntimeProvider::default(),
    )
    .with_options(opts)
    .build()
    .map_err(|e| err("resolver", Cause::Invalid, e.to_string()))
}

/// An answer in presentation format. Without hickory's DNSSEC feature
/// (crypto this adapter does not need) DS and DNSKEY arrive as unknown
/// data; they are written here as PowerDNS and `dig` write them, so a DS
/// read over DNS compares with the one the API gave (digest in lowercase).
fn presentation(data: &hickory_resolver::proto::rr::RData) -> String {
    use base64::Engine as _;
    use hickory_resolver::proto::rr::RData;
    let RData::Unknown { code, rdata } = data else { return data.to_string() };
    let b = &rdata.anything;
    // Both start with 16 bits and two octets (DS: key tag, algorithm,
    // digest type; DNSKEY: flags, protocol, algorithm), then the digest in
    // hex or the key in base64.
    let tail = match *code {
        RecordType::DS if b.len() > 4 => hex::encode(&b[4..]),
        RecordType::DNSKEY if b.len() > 4 => {
            base64::engine::general_purpose::STANDARD.encode(&b[4..])
        }
        _ => return data.to_string(),
    };
    format!("{} {} {} {tail}", u16::from_be_bytes([b[0], b[1]]), b[2], b[3])
}

/// One lookup, as strings, sorted; no records is empty.
async fn lookup(
    resolver: &Resolver<TokioRuntimeProvider>,
    name: &str,
    rtype: &str,
) -> AdapterResult<Vec<String>> {
    let t = rtype_of(rtype)?;
    let fqdn = absolute(name);
    match resolver.lookup(fqdn.as_str(), t).await {
        Ok(lookup) => {
            let mut out: Vec<String> = lookup
                .answers()
                .iter()
                .filter(|r| r.record_type() == t)
                .map(|r| presentation(&r.data))
                .collect();
            out.sort();
            Ok(out)
        }
        Err(e) if e.is_no_records_found() || e.is_nx_domain() => Ok(Vec::new()),
        // The server does not serve that name at all: a fact, not a
        // hiccup (a zone missing, or asked of the wrong server).
        Err(NetError::Dns(DnsError::ResponseCode(ResponseCode::Refused))) => Err(err(
            &format!("query {fqdn} {rtype}"),
            Cause::NotFound,
            format!("the server refused the query: it is not authoritative for {fqdn}"),
        )),
        Err(e) => Err(err(
            &format!("query {fqdn} {rtype}"),
            Cause::Unavailable,
            format!("the server did not answer: {e}"),
        )),
    }
}

/// The PowerDNS Authoritative adapter.
pub struct PowerDns {
    http: reqwest::Client,
    /// `{api_url}/api/v1/servers/{server_id}`.
    base: String,
    key: SecretString,
    resolver: Resolver<TokioRuntimeProvider>,
    timeout: Duration,
}

impl std::fmt::Debug for PowerDns {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PowerDns").field("base", &self.base).finish_non_exhaustive()
    }
}

impl PowerDns {
    /// `api_url`: the webserver (`http://127.0.0.1:8081`); `dns`: where the
    /// same server answers DNS.
    pub fn new(
        api_url: &str,
        server_id: &str,
        key: SecretString,
        dns: SocketAddr,
        timeout: Duration,
    ) -> AdapterResult<PowerDns> {
        let http = reqwest::Client::builder()
            .timeout(timeout)
            .build()
            .map_err(|e| err("client", Cause::Invalid, e.to_string()))?;
        let resolver = resolver_for(dns, timeout, false)?;
        Ok(PowerDns {
            http,
            base: format!("{}/api/v1/servers/{server_id}", api_url.trim_end_matches('/')),
            key,
            resolver,
            timeout,
        })
    }

    /// One API call: the status and the JSON body (`Null` when empty).
    #[tracing::instrument(name = "adapter", level = "info", skip_all, fields(system = "dns", op = %op))]
    async fn call(
        &self,
        op: &str,
        method: Method,
        path: &str,
        body: Option<Value>,
    ) -> AdapterResult<(StatusCode, Value)> {
        let mut req = self
            .http
            .request(method, format!("{}{path}", self.base))
            .header("X-API-Key", self.key.expose());
        if let Some(b) = body {
            req = req.json(&b);
        }
        let resp = req.send().await.map_err(|e| {
            err(
                op,
                Cause::Network,
                format!("PowerDNS API did not answer: {}", cz_engine::chain(&e)),
            )
        })?;
        let status = resp.status();
        let text = resp.text().await.unwrap_or_default();
        let v: Value = serde_json::from_str(&text).unwrap_or(Value::Null);
        Ok((
            status,
            if text.is_empty() {
                Value::Null
            } else if v.is_null() {
                json!(text)
            } else {
                v
            },
        ))
    }

    /// The call, with any status outside `ok` an error naming what
    /// PowerDNS said.
    async fn expect(
        &self,
        op: &str,
        method: Method,
        path: &str,
        body: Option<Value>,
        ok: &[u16],
    ) -> AdapterResult<(StatusCode, Value)> {
        let (status, v) = self.call(op, method, path, body).await?;
        if ok.contains(&status.as_u16()) {
            return Ok((status, v));
        }
        let said = match (&v["error"], &v["errors"]) {
            (Value::String(e), Value::Array(more)) if !more.is_empty() => {
                let more: Vec<&str> = more.iter().filter_map(Value::as_str).collect();
                format!("{e} ({})", more.join("; "))
            }
            (Value::String(e), _) => e.clone(),
            _ => v.as_str().map(str::to_owned).unwrap_or_else(|| v.to_string()),
        };
        Err(err(op, cause_of(status), format!("PowerDNS answered {}: {said}", status.as_u16())))
    }
}

fn rtype_of(rtype: &str) -> AdapterResult<RecordType> {
    rtype
        .trim()
        .to_ascii_uppercase()
        .parse()
        .map_err(|_| err("query", Cause::Invalid, format!("unknown record type `{rtype}`")))
}

#[async_trait]
impl DnsApi for PowerDns {
    async fn zone_exists(&self, zone: &str) -> AdapterResult<bool> {
        Ok(self.zone_account(zone).await?.is_some())
    }

    async fn zone_account(&self, zone: &str) -> AdapterResult<Option<String>> {
        let path = format!("/zones/{}?rrsets=false", zone_id(zone));
        let (status, v) = self.expect("get zone", Method::GET, &path, None, &[200, 404]).await?;
        Ok((status == StatusCode::OK).then(|| v["account"].as_str().unwrap_or_default().to_owned()))
    }

    async fn zone_meta(&self, zone: &str, kind: &str) -> AdapterResult<Vec<String>> {
        let path = format!("/zones/{}/metadata/{kind}", zone_id(zone));
        let (_, v) = self.expect("get metadata", Method::GET, &path, None, &[200]).await?;
        Ok(v["metadata"]
            .as_array()
            .map(|m| m.iter().filter_map(|x| x.as_str().map(str::to_owned)).collect())
            .unwrap_or_default())
    }

    async fn secure_zone(&self, zone: &str) -> AdapterResult<Vec<String>> {
        let id = zone_id(zone);
        let (_, z) = self
            .expect("get zone", Method::GET, &format!("/zones/{id}?rrsets=false"), None, &[200])
            .await?;
        if z["dnssec"].as_bool() != Some(true) {
            // The server's default keys (PowerDNS 4.x: an ECDSA P-256 KSK
            // and ZSK), signing on the fly; rectified by every API change.
            let body = json!({ "dnssec": true, "api_rectify": true });
            self.expect("secure zone", Method::PUT, &format!("/zones/{id}"), Some(body), &[204])
                .await?;
        }
        let (_, keys) = self
            .expect(
                "list cryptokeys",
                Method::GET,
                &format!("/zones/{id}/cryptokeys"),
                None,
                &[200],
            )
            .await?;
        let ds: Vec<String> = keys
            .as_array()
            .into_iter()
            .flatten()
            .filter(|k| k["active"].as_bool() == Some(true))
            .flat_map(|k| k["ds"].as_array().cloned().unwrap_or_default())
            .filter_map(|d| d.as_str().map(str::to_owned))
            .filter(|d| d.split_whitespace().nth(2) == Some("2"))
            .collect();
        if ds.is_empty() {
            return Err(err(
                "secure zone",
                Cause::Unavailable,
                format!("{zone} is signed but has no active key with a DS record"),
            ));
        }
        Ok(ds)
    }

    async fn set_zone_meta(&self, zone: &str, kind: &str, values: &[String]) -> AdapterResult<()> {
        let path = format!("/zones/{}/metadata/{kind}", zone_id(zone));
        if values.is_empty() {
            self.expect("delete metadata", Method::DELETE, &path, None, &[200, 204]).await?;
        } else {
            let body = json!({ "kind": kind, "metadata": values });
            self.expect("set metadata", Method::PUT, &path, Some(body), &[200, 204]).await?;
        }
        Ok(())
    }

    async fn list_zones(&self) -> AdapterResult<Vec<String>> {
        let (_, v) = self.expect("list zones", Method::GET, "/zones", None, &[200]).await?;
        Ok(v.as_array()
            .map(|zs| zs.iter().filter_map(|z| z["name"].as_str().map(str::to_owned)).collect())
            .unwrap_or_default())
    }

    async fn create_zone(
        &self,
        zone: &str,
        nameservers: &[String],
        account: &str,
    ) -> AdapterResult<()> {
        let body = json!({ "name": absolute(zone), "kind": "Native", "account": account, "nameservers": nameservers,
                           "soa_edit_api": "DEFAULT" });
        let (status, _) = self
            .expect("create zone", Method::POST, "/zones?rrsets=false", Some(body), &[201, 409])
            .await?;
        // 409: it exists already, from an earlier attempt of this step.
        if status == StatusCode::CONFLICT && !self.zone_exists(zone).await? {
            return Err(err("create zone", Cause::Conflict, format!("{zone} conflicts")));
        }
        Ok(())
    }

    async fn delete_zone(&self, zone: &str) -> AdapterResult<()> {
        let path = format!("/zones/{}", zone_id(zone));
        self.expect("delete zone", Method::DELETE, &path, None, &[204, 404]).await?;
        Ok(())
    }

    async fn replace_rrsets(&self, zone: &str, rrsets: &[Rrset]) -> AdapterResult<()> {
        let rrsets: Vec<Value> = rrsets
            .iter()
            .map(|r| {
                let records: Vec<Value> =
                    r.records.iter().map(|c| json!({ "content": c, "disabled": false })).collect();
                json!({ "name": absolute(&r.name), "type": r.rtype, "ttl": r.ttl,
                        "changetype": "REPLACE", "records": records })
            })
            .collect();
        let path = format!("/zones/{}", zone_id(zone));
        let body = json!({ "rrsets": rrsets });
        self.expect("replace rrsets", Method::PATCH, &path, Some(body), &[204]).await?;
        Ok(())
    }

    async fn delete_rrsets(&self, zone: &str, names: &[(String, String)]) -> AdapterResult<()> {
        let rrsets: Vec<Value> = names
            .iter()
            .map(|(n, t)| json!({ "name": absolute(n), "type": t, "changetype": "DELETE" }))
            .collect();
        let path = format!("/zones/{}", zone_id(zone));
        let body = json!({ "rrsets": rrsets });
        // The zone itself gone: nothing of it is left to delete.
        self.expect("delete rrsets", Method::PATCH, &path, Some(body), &[204, 404]).await?;
        Ok(())
    }

    async fn query(&self, name: &str, rtype: &str) -> AdapterResult<Vec<String>> {
        lookup(&self.resolver, name, rtype).await
    }

    async fn query_via(
        &self,
        server: SocketAddr,
        name: &str,
        rtype: &str,
    ) -> AdapterResult<Vec<String>> {
        lookup(&resolver_for(server, self.timeout, true)?, name, rtype).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn zone_ids_are_encoded_as_powerdns_does() {
        assert_eq!(zone_id("acme.omani.works"), "acme.omani.works.");
        assert_eq!(zone_id("acme.omani.works."), "acme.omani.works.");
        assert_eq!(zone_id("0/24.10.in-addr.arpa."), "0=2F24.10.in-addr.arpa.");
        assert_eq!(zone_id("a_b.example."), "a=5Fb.example.");
    }

    #[test]
    fn statuses_decide_the_class() {
        use cz_engine::ErrorClass::*;
        let class = |s: u16| {
            StepError::adapter(System::Dns, "x", cause_of(StatusCode::from_u16(s).unwrap()), "")
                .class()
        };
        assert_eq!(class(401), NeedsOperator);
        assert_eq!(class(422), Terminal);
        assert_eq!(class(409), NeedsOperator);
        assert_eq!(class(503), Transient);
        assert_eq!(class(429), Transient);
    }
}
