//! [`FakeRegistrars`]: one in-process HTTP server (axum, a real socket)
//! speaking the five registrar APIs the adapters use, under
//! `/cloudflare/client/v4`, `/namecheap/xml.response`, `/godaddy`,
//! `/ovh/1.0` and `/dynadot/api3.json` ([`super::Endpoints::under`]).
//!
//! No registrar can be reached from here, so this fake is the adapters'
//! proof; it keeps what the adapters depend on:
//!
//! - **Credentials** checked each registrar's way: Cloudflare's bearer
//!   token (401, code 10000; `tokens/verify` 401, code 1000), Namecheap's
//!   `ApiUser`/`ApiKey` (1011102) and whitelisted `ClientIp` (1011150),
//!   GoDaddy's `sso-key` (401 `UNABLE_TO_AUTHENTICATE`, and 403
//!   `ACCESS_DENIED` for an account refused API access), OVH's application
//!   key (403 `INVALID_KEY`), consumer key (403 `INVALID_CREDENTIAL`) and
//!   request **signature** (400 `INVALID_SIGNATURE`, computed over the URL
//!   as the client sent it), Dynadot's `key` ("invalid key").
//! - **Accounts**: a domain of another account, or of none, is each
//!   registrar's not-found (Namecheap 2016166 / 2019166, GoDaddy 404
//!   `NOT_FOUND`, OVH 404 "This service does not exist", Dynadot "could
//!   not find domain in your account", Cloudflare an empty zone list and
//!   7003 for a zone id of another account).
//! - **Nameserver rules**: hostnames only; Namecheap and GoDaddy want at
//!   least two, Dynadot at most 13; Cloudflare NS records are per record
//!   (81058 for an identical one, 81044 for an absent one), and so are its
//!   DS records, whose fields come in `data` (9101 when they are not
//!   numbers and a hex digest).
//! - **Injected faults** per registrar ([`Fault`]), in each one's own
//!   shape: 429 bodies (Cloudflare 971, GoDaddy `retryAfterSec`),
//!   Namecheap's error 500000, Dynadot's `system_busy`, and 503s.
//!
//! Every call is logged as `METHOD path` (no query, so no key) for the
//! tests to count.

use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use axum::Router;
use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, Method, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use serde_json::{Value, json};

use cz_adapters::registrar::Registrar;
use cz_adapters::registrar::{Endpoints, bare, ovh::signature};

/// A failure the fake answers with instead of doing the call.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Fault {
    /// The registrar's rate-limit answer.
    RateLimited,
    /// HTTP 503.
    Unavailable,
}

#[derive(Clone, Debug)]
struct Account {
    registrar: Registrar,
    /// The token as the customer pastes it.
    token: String,
    id: String,
    api_access: bool,
}

#[derive(Clone, Debug)]
struct CfRecord {
    id: String,
    rtype: String,
    name: String,
    content: String,
}

/// A registered domain, or (Cloudflare) a zone.
#[derive(Clone, Debug)]
struct Domain {
    registrar: Registrar,
    name: String,
    account: String,
    id: String,
    /// Registrar: the delegation. Cloudflare: the zone's own nameservers.
    ns: Vec<String>,
    ovh_external: bool,
    records: Vec<CfRecord>,
}

#[derive(Default)]
struct Inner {
    accounts: Vec<Account>,
    domains: Vec<Domain>,
    faults: Vec<(Registrar, Fault, u32)>,
    log: Vec<(Registrar, String)>,
    next_id: u64,
}

impl Inner {
    fn id(&mut self) -> String {
        self.next_id += 1;
        format!("{:032x}", 0xc0ffee_u64 << 32 | self.next_id)
    }

    fn account_by_token(&self, r: Registrar, token: &str) -> Option<Account> {
        self.accounts.iter().find(|a| a.registrar == r && a.token == token).cloned()
    }

    fn domain_mut(&mut self, r: Registrar, name: &str) -> Option<&mut Domain> {
        let name = bare(name);
        self.domains.iter_mut().find(|d| d.registrar == r && d.name == name)
    }
}

/// The fake registrars' server.
#[derive(Clone)]
pub struct FakeRegistrars {
    inner: Arc<Mutex<Inner>>,
    addr: SocketAddr,
}

fn is_hostname(h: &str) -> bool {
    let h = bare(h);
    h.len() <= 253
        && h.split('.').count() >= 2
        && h.split('.').all(|l| {
            !l.is_empty()
                && l.len() <= 63
                && l.chars().all(|c| c.is_ascii_alphanumeric() || c == '-')
                && !l.starts_with('-')
        })
}

impl FakeRegistrars {
    /// Starts the server on 127.0.0.1 (an ephemeral port).
    pub async fn start() -> FakeRegistrars {
        let (listener, addr) = super::bind_loopback().await;
        let fake = FakeRegistrars { inner: Arc::new(Mutex::new(Inner::default())), addr };
        super::serve(listener, Router::new().fallback(handle).with_state(fake.clone()));
        fake
    }

    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Where the adapters reach this fake.
    pub fn endpoints(&self) -> Endpoints {
        Endpoints::under(&self.url())
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().expect("fake registrars")
    }

    /// An account reached with `token` (as the customer pastes it).
    pub fn account(&self, r: Registrar, token: &str) {
        let mut i = self.lock();
        if i.account_by_token(r, token).is_none() {
            let id = i.id();
            i.accounts.push(Account { registrar: r, token: token.into(), id, api_access: true });
        }
    }

    /// A domain in `token`'s account, delegated to `ns`. For Cloudflare, a
    /// zone answered by the (Cloudflare) nameservers `ns`.
    pub fn domain(&self, r: Registrar, token: &str, name: &str, ns: &[&str]) {
        self.account(r, token);
        let mut i = self.lock();
        let account = i.account_by_token(r, token).expect("just made").id;
        let id = i.id();
        i.domains.retain(|d| !(d.registrar == r && d.name == bare(name)));
        i.domains.push(Domain {
            registrar: r,
            name: bare(name),
            account,
            id,
            ns: ns.iter().map(|n| bare(n)).collect(),
            ovh_external: false,
            records: Vec::new(),
        });
    }

    /// Makes the registrar refuse `token`'s account API access (GoDaddy's
    /// `ACCESS_DENIED`).
    pub fn deny_api_access(&self, r: Registrar, token: &str) {
        for a in self.lock().accounts.iter_mut().filter(|a| a.registrar == r && a.token == token) {
            a.api_access = false;
        }
    }

    /// What `name` is delegated to: a registrar's nameservers; for
    /// Cloudflare, a zone's own nameservers or a subdomain's NS records.
    pub fn nameservers(&self, r: Registrar, name: &str) -> Vec<String> {
        let name = bare(name);
        let i = self.lock();
        if let Some(d) = i.domains.iter().find(|d| d.registrar == r && d.name == name) {
            return d.ns.clone();
        }
        i.domains
            .iter()
            .filter(|d| d.registrar == r && name.ends_with(&format!(".{}", d.name)))
            .flat_map(|z| z.records.iter().filter(|rec| rec.rtype == "NS" && rec.name == name))
            .map(|rec| rec.content.clone())
            .collect()
    }

    /// The `rtype` records of `name` in the Cloudflare zone holding it, as
    /// Cloudflare shows their content.
    pub fn cloudflare_records(&self, name: &str, rtype: &str) -> Vec<String> {
        let name = bare(name);
        let i = self.lock();
        i.domains
            .iter()
            .filter(|z| z.registrar == Registrar::Cloudflare)
            .flat_map(|z| z.records.iter().filter(|r| r.rtype == rtype && r.name == name))
            .map(|r| r.content.clone())
            .collect()
    }

    /// The customer changes a registrar domain's nameservers by hand.
    pub fn set_by_hand(&self, r: Registrar, name: &str, ns: &[&str]) {
        if let Some(d) = self.lock().domain_mut(r, name) {
            d.ns = ns.iter().map(|n| bare(n)).collect();
        }
    }

    /// The next `times` calls to `r` fail with `fault`.
    pub fn fail_next(&self, r: Registrar, fault: Fault, times: u32) {
        self.lock().faults.push((r, fault, times));
    }

    /// The calls `r` answered (or faulted), as `METHOD path` or, for the
    /// single-endpoint APIs, `command`.
    pub fn calls(&self, r: Registrar) -> Vec<String> {
        self.lock().log.iter().filter(|(x, _)| *x == r).map(|(_, c)| c.clone()).collect()
    }

    /// The calls that wrote something.
    pub fn writes(&self, r: Registrar) -> Vec<String> {
        self.calls(r)
            .into_iter()
            .filter(|c| {
                ["POST", "PUT", "PATCH", "DELETE", "setCustom", "set_ns"]
                    .iter()
                    .any(|w| c.contains(w))
            })
            .collect()
    }

    fn take_fault(&self, r: Registrar) -> Option<Fault> {
        let mut i = self.lock();
        let slot = i.faults.iter_mut().find(|(x, _, n)| *x == r && *n > 0)?;
        slot.2 -= 1;
        Some(slot.1)
    }
}

/// One request, as the handlers see it.
struct Req {
    method: Method,
    /// The path below the registrar's prefix.
    path: String,
    query: HashMap<String, String>,
    headers: HeaderMap,
    body: Bytes,
    /// The URL as the client sent it (OVH signs it).
    url: String,
}

async fn handle(
    State(f): State<FakeRegistrars>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let path = uri.path();
    let prefixes = [
        ("/cloudflare/client/v4", Registrar::Cloudflare),
        ("/namecheap/xml.response", Registrar::Namecheap),
        ("/godaddy", Registrar::Godaddy),
        ("/ovh/1.0", Registrar::Ovh),
        ("/dynadot/api3.json", Registrar::Dynadot),
    ];
    let Some((prefix, r)) = prefixes.iter().find(|(p, _)| path.starts_with(p)) else {
        return (StatusCode::NOT_FOUND, "no such API").into_response();
    };
    let query: HashMap<String, String> =
        serde_urlencoded::from_str(uri.query().unwrap_or("")).unwrap_or_default();
    let host = headers.get("host").and_then(|h| h.to_str().ok()).unwrap_or("").to_owned();
    let req = Req {
        method,
        path: path[prefix.len()..].to_owned(),
        query,
        url: format!("http://{host}{uri}"),
        headers,
        body,
    };
    let what = match r {
        Registrar::Namecheap => form(&req).get("Command").cloned().unwrap_or_default(),
        Registrar::Dynadot => req.query.get("command").cloned().unwrap_or_default(),
        _ => format!("{} {}", req.method, req.path),
    };
    f.lock().log.push((*r, what));
    if let Some(fault) = f.take_fault(*r) {
        return fault_answer(*r, fault);
    }
    match r {
        Registrar::Cloudflare => cloudflare(&f, &req),
        Registrar::Namecheap => namecheap(&f, &req),
        Registrar::Godaddy => godaddy(&f, &req),
        Registrar::Ovh => ovh(&f, &req),
        Registrar::Dynadot => dynadot(&f, &req),
    }
}

fn fault_answer(r: Registrar, fault: Fault) -> Response {
    if fault == Fault::Unavailable {
        return (
            StatusCode::SERVICE_UNAVAILABLE,
            "<html><body>503 Service Unavailable</body></html>",
        )
            .into_response();
    }
    match r {
        Registrar::Cloudflare => cf_error(
            StatusCode::TOO_MANY_REQUESTS,
            971,
            "Please wait and consider throttling your request speed",
        ),
        Registrar::Namecheap => nc_error(500000, "Too many requests"),
        Registrar::Godaddy => (
            StatusCode::TOO_MANY_REQUESTS,
            axum::Json(json!({ "code": "TOO_MANY_REQUESTS",
                "message": "Too many requests received within interval", "retryAfterSec": 30 })),
        )
            .into_response(),
        Registrar::Ovh => {
            (StatusCode::TOO_MANY_REQUESTS, axum::Json(json!({ "message": "Too many requests" })))
                .into_response()
        }
        Registrar::Dynadot => axum::Json(json!({ "Response": {
            "ResponseCode": "-1", "Status": "system_busy",
            "Error": "system busy, please try again later" } }))
        .into_response(),
    }
}

// ---- Cloudflare ----

fn cf_ok(result: Value) -> Response {
    let n = result.as_array().map(Vec::len).unwrap_or(1);
    axum::Json(json!({ "success": true, "errors": [], "messages": [], "result": result,
        "result_info": { "page": 1, "per_page": 100, "count": n, "total_count": n, "total_pages": 1 } }))
    .into_response()
}

fn cf_error(status: StatusCode, code: i64, message: &str) -> Response {
    (
        status,
        axum::Json(json!({ "success": false, "errors": [{ "code": code, "message": message }],
            "messages": [], "result": null })),
    )
        .into_response()
}

fn cf_record(r: &CfRecord) -> Value {
    json!({ "id": r.id, "type": r.rtype, "name": r.name, "content": r.content, "ttl": 3600, "proxied": false })
}

fn cloudflare(f: &FakeRegistrars, req: &Req) -> Response {
    let bearer = req
        .headers
        .get("authorization")
        .and_then(|h| h.to_str().ok())
        .and_then(|h| h.strip_prefix("Bearer "))
        .unwrap_or("");
    let account = f.lock().account_by_token(Registrar::Cloudflare, bearer);
    let segs: Vec<&str> = req.path.trim_matches('/').split('/').collect();
    let Some(account) = account else {
        return if segs == ["user", "tokens", "verify"] {
            cf_error(StatusCode::UNAUTHORIZED, 1000, "Invalid API Token")
        } else {
            cf_error(StatusCode::FORBIDDEN, 10000, "Authentication error")
        };
    };
    let mut i = f.lock();
    match (&req.method, segs.as_slice()) {
        (&Method::GET, ["user", "tokens", "verify"]) => cf_ok(
            json!({ "id": account.id, "status": "active", "not_before": null, "expires_on": null }),
        ),
        (&Method::GET, ["zones"]) => {
            let name = req.query.get("name").map(|n| bare(n));
            let zones: Vec<Value> = i
                .domains
                .iter()
                .filter(|z| z.registrar == Registrar::Cloudflare && z.account == account.id)
                .filter(|z| name.as_ref().is_none_or(|n| *n == z.name))
                .map(|z| {
                    json!({ "id": z.id, "name": z.name, "status": "active",
                    "name_servers": z.ns, "account": { "id": account.id } })
                })
                .collect();
            cf_ok(Value::Array(zones))
        }
        (m, ["zones", zid, "dns_records", rest @ ..]) => {
            let new_id = i.id();
            let Some(zone) = i.domains.iter_mut().find(|z| {
                z.registrar == Registrar::Cloudflare && z.id == *zid && z.account == account.id
            }) else {
                return cf_error(
                    StatusCode::NOT_FOUND,
                    7003,
                    &format!(
                        "Could not route to /zones/{zid}/dns_records, perhaps your object identifier is invalid?"
                    ),
                );
            };
            cf_records(zone, m, rest, req, new_id)
        }
        _ => cf_error(StatusCode::NOT_FOUND, 7000, "No route for that URI"),
    }
}

fn cf_records(zone: &mut Domain, m: &Method, rest: &[&str], req: &Req, new_id: String) -> Response {
    match (m, rest) {
        (&Method::GET, []) => {
            let t = req.query.get("type");
            let n = req.query.get("name").map(|n| bare(n));
            let recs: Vec<Value> = zone
                .records
                .iter()
                .filter(|r| {
                    t.is_none_or(|t| *t == r.rtype) && n.as_ref().is_none_or(|n| *n == r.name)
                })
                .map(cf_record)
                .collect();
            cf_ok(Value::Array(recs))
        }
        (&Method::POST, []) => {
            let Ok(b) = serde_json::from_slice::<Value>(&req.body) else {
                return cf_error(StatusCode::BAD_REQUEST, 9207, "Request body is invalid.");
            };
            let (rtype, name) = (
                b["type"].as_str().unwrap_or("").to_owned(),
                bare(b["name"].as_str().unwrap_or("")),
            );
            let content = match rtype.as_str() {
                "NS" => {
                    let c = bare(b["content"].as_str().unwrap_or(""));
                    if !is_hostname(&c) {
                        return cf_error(
                            StatusCode::BAD_REQUEST,
                            9005,
                            "Content for NS record is invalid.",
                        );
                    }
                    c
                }
                // DS fields come in `data`; the content Cloudflare shows
                // is their presentation.
                "DS" => {
                    let d = &b["data"];
                    let digest = d["digest"].as_str().unwrap_or("");
                    let nums = ["key_tag", "algorithm", "digest_type"].map(|k| d[k].as_u64());
                    let hex = !digest.is_empty() && digest.chars().all(|c| c.is_ascii_hexdigit());
                    match nums {
                        [Some(t), Some(a), Some(dt)]
                            if hex && t <= 65535 && a <= 255 && dt <= 255 =>
                        {
                            format!("{t} {a} {dt} {}", digest.to_ascii_uppercase())
                        }
                        _ => {
                            return cf_error(
                                StatusCode::BAD_REQUEST,
                                9101,
                                "DS record data is invalid.",
                            );
                        }
                    }
                }
                _ => {
                    return cf_error(
                        StatusCode::BAD_REQUEST,
                        9004,
                        "Unsupported record type in this fake.",
                    );
                }
            };
            if !(name == zone.name || name.ends_with(&format!(".{}", zone.name))) {
                return cf_error(StatusCode::BAD_REQUEST, 1004, "DNS Validation Error");
            }
            if zone
                .records
                .iter()
                .any(|r| r.rtype == rtype && r.name == name && r.content == content)
            {
                return cf_error(
                    StatusCode::BAD_REQUEST,
                    81058,
                    "An identical record already exists.",
                );
            }
            let rec = CfRecord { id: new_id, rtype, name, content };
            let out = cf_record(&rec);
            zone.records.push(rec);
            cf_ok(out)
        }
        (&Method::DELETE, [rid]) => {
            let before = zone.records.len();
            zone.records.retain(|r| r.id != *rid);
            if zone.records.len() == before {
                return cf_error(StatusCode::NOT_FOUND, 81044, "Record does not exist.");
            }
            cf_ok(json!({ "id": rid }))
        }
        _ => cf_error(StatusCode::METHOD_NOT_ALLOWED, 10405, "Method not allowed"),
    }
}

// ---- Namecheap ----

/// Namecheap reads parameters from the query or a form body.
fn form(req: &Req) -> HashMap<String, String> {
    let mut p = req.query.clone();
    if let Ok(body) = serde_urlencoded::from_bytes::<HashMap<String, String>>(&req.body) {
        p.extend(body);
    }
    p
}

fn nc_xml(status: &str, errors: &str, command: &str, response: &str) -> Response {
    let body = format!(
        "<?xml version=\"1.0\" encoding=\"utf-8\"?>\n\
         <ApiResponse Status=\"{status}\" xmlns=\"http://api.namecheap.com/xml.response\">\n\
         <Errors>{errors}</Errors>\n<Warnings />\n<RequestedCommand>{command}</RequestedCommand>\n\
         {response}\n<Server>FAKE-API</Server>\n<GMTTimeDifference>--5:00</GMTTimeDifference>\n\
         <ExecutionTime>0.012</ExecutionTime>\n</ApiResponse>"
    );
    ([("content-type", "text/xml; charset=utf-8")], body).into_response()
}

fn nc_error(number: u64, text: &str) -> Response {
    nc_xml("ERROR", &format!("<Error Number=\"{number}\">{text}</Error>"), "", "")
}

fn namecheap(f: &FakeRegistrars, req: &Req) -> Response {
    let p = form(req);
    let get = |k: &str| p.get(k).map(String::as_str).unwrap_or("");
    let mut i = f.lock();
    let account = i.accounts.iter().find(|a| {
        a.registrar == Registrar::Namecheap && {
            let t: Vec<&str> = a.token.split(':').collect();
            t.len() == 3
                && t[0] == get("ApiUser")
                && t[1] == get("ApiKey")
                && t[0] == get("UserName")
        }
    });
    let Some(account) = account.cloned() else {
        return nc_error(1011102, "API Key is invalid or API access has not been enabled");
    };
    if account.token.rsplit(':').next() != Some(get("ClientIp")) {
        return nc_error(1011150, &format!("Invalid request IP: {}", get("ClientIp")));
    }
    let command = get("Command").to_owned();
    let name = match command.as_str() {
        "namecheap.domains.getInfo" => get("DomainName").to_ascii_lowercase(),
        _ => format!("{}.{}", get("SLD"), get("TLD")).to_ascii_lowercase(),
    };
    let Some(d) = i.domain_mut(Registrar::Namecheap, &name) else {
        return nc_error(2019166, "Domain not found");
    };
    if d.account != account.id {
        return nc_error(2016166, "Domain is not associated with your account");
    }
    let ok = |resp: String| {
        nc_xml(
            "OK",
            "",
            &command,
            &format!("<CommandResponse Type=\"{command}\">{resp}</CommandResponse>"),
        )
    };
    match command.as_str() {
        "namecheap.domains.getInfo" => ok(format!(
            "<DomainGetInfoResult Status=\"Ok\" ID=\"{}\" DomainName=\"{name}\" OwnerName=\"{}\" IsOwner=\"true\" IsPremium=\"false\" />",
            d.id.len(),
            get("UserName")
        )),
        "namecheap.domains.dns.getList" => {
            let ns: String = d.ns.iter().map(|n| format!("<Nameserver>{n}</Nameserver>")).collect();
            ok(format!(
                "<DomainDNSGetListResult Domain=\"{name}\" IsUsingOurDNS=\"false\" IsPremiumDNS=\"false\" IsUsingFreeDNS=\"false\">{ns}</DomainDNSGetListResult>"
            ))
        }
        "namecheap.domains.dns.setCustom" => {
            let list: Vec<String> =
                get("Nameservers").split(',').filter(|s| !s.is_empty()).map(bare).collect();
            if list.len() < 2 {
                return nc_error(2011170, "At least two nameservers are required");
            }
            if let Some(bad) = list.iter().find(|n| !is_hostname(n)) {
                return nc_error(2011177, &format!("Nameserver is invalid: {bad}"));
            }
            d.ns = list;
            ok(format!("<DomainDNSSetCustomResult Domain=\"{name}\" Updated=\"true\" />"))
        }
        other => nc_error(1010900, &format!("Invalid Command: {other}")),
    }
}

// ---- GoDaddy ----

fn gd_error(status: StatusCode, code: &str, message: &str, fields: Value) -> Response {
    let mut b = json!({ "code": code, "message": message });
    if !fields.is_null() {
        b["fields"] = fields;
    }
    (status, axum::Json(b)).into_response()
}

fn godaddy(f: &FakeRegistrars, req: &Req) -> Response {
    let key = req
        .headers
        .get("authorization")
        .and_then(|h| h.to_str().ok())
        .and_then(|h| h.strip_prefix("sso-key "))
        .unwrap_or("");
    let mut i = f.lock();
    let Some(account) = i.account_by_token(Registrar::Godaddy, key) else {
        return gd_error(
            StatusCode::UNAUTHORIZED,
            "UNABLE_TO_AUTHENTICATE",
            "Unable to authenticate",
            Value::Null,
        );
    };
    if !account.api_access {
        return gd_error(
            StatusCode::FORBIDDEN,
            "ACCESS_DENIED",
            "Authenticated user is not allowed access",
            Value::Null,
        );
    }
    let Some(name) = req.path.strip_prefix("/v1/domains/") else {
        return gd_error(StatusCode::NOT_FOUND, "NOT_FOUND", "Not found", Value::Null);
    };
    let d = match i.domain_mut(Registrar::Godaddy, name) {
        Some(d) if d.account == account.id => d,
        _ => {
            return gd_error(
                StatusCode::NOT_FOUND,
                "NOT_FOUND",
                &format!("Domain {name} not found"),
                Value::Null,
            );
        }
    };
    match req.method {
        Method::GET => {
            axum::Json(json!({ "domain": d.name, "domainId": d.id.len(), "status": "ACTIVE",
            "locked": true, "privacy": false, "renewAuto": true, "nameServers": d.ns }))
            .into_response()
        }
        Method::PATCH => {
            let b: Value = serde_json::from_slice(&req.body).unwrap_or(Value::Null);
            let Some(list) = b["nameServers"].as_array() else {
                return gd_error(
                    StatusCode::UNPROCESSABLE_ENTITY,
                    "INVALID_BODY",
                    "Request body doesn't fulfill schema",
                    Value::Null,
                );
            };
            let list: Vec<String> = list.iter().filter_map(Value::as_str).map(bare).collect();
            let mut fields = Vec::new();
            if list.len() < 2 {
                fields.push(json!({ "path": "nameServers", "code": "MIN_ITEMS", "message": "must have at least 2 items" }));
            }
            for (k, n) in list.iter().enumerate() {
                if !is_hostname(n) {
                    fields.push(json!({ "path": format!("nameServers[{k}]"), "code": "INVALID_FORMAT", "message": "is not a valid hostname" }));
                }
            }
            if !fields.is_empty() {
                return gd_error(
                    StatusCode::UNPROCESSABLE_ENTITY,
                    "INVALID_BODY",
                    "Request body doesn't fulfill schema",
                    Value::Array(fields),
                );
            }
            d.ns = list;
            StatusCode::NO_CONTENT.into_response()
        }
        _ => gd_error(
            StatusCode::METHOD_NOT_ALLOWED,
            "METHOD_NOT_ALLOWED",
            "Method not allowed",
            Value::Null,
        ),
    }
}

// ---- OVH ----

fn ovh_error(status: StatusCode, code: Option<&str>, message: &str) -> Response {
    let mut b = json!({ "message": message, "class": match status.as_u16() {
        404 => "Client::NotFound", 403 => "Client::Forbidden", _ => "Client::BadRequest" } });
    if let Some(c) = code {
        b["errorCode"] = c.into();
        b["httpCode"] =
            format!("{} {}", status.as_u16(), status.canonical_reason().unwrap_or("")).into();
    }
    (status, axum::Json(b)).into_response()
}

fn ovh(f: &FakeRegistrars, req: &Req) -> Response {
    if req.method == Method::GET && req.path == "/auth/time" {
        return chrono::Utc::now().timestamp().to_string().into_response();
    }
    let h = |k: &str| req.headers.get(k).and_then(|v| v.to_str().ok()).unwrap_or("").to_owned();
    let mut i = f.lock();
    let by_app = i.accounts.iter().find(|a| {
        a.registrar == Registrar::Ovh
            && a.token.split(':').next() == Some(h("x-ovh-application").as_str())
    });
    let Some(account) = by_app.cloned() else {
        return ovh_error(
            StatusCode::FORBIDDEN,
            Some("INVALID_KEY"),
            "This application key is invalid",
        );
    };
    let parts: Vec<&str> = account.token.split(':').collect();
    if parts.get(2) != Some(&h("x-ovh-consumer").as_str()) {
        return ovh_error(
            StatusCode::FORBIDDEN,
            Some("INVALID_CREDENTIAL"),
            "This credential does not exist",
        );
    }
    let ts: i64 = h("x-ovh-timestamp").parse().unwrap_or(0);
    let body = String::from_utf8_lossy(&req.body);
    let want = signature(parts[1], parts[2], req.method.as_str(), &req.url, &body, ts);
    if h("x-ovh-signature") != want {
        return ovh_error(StatusCode::BAD_REQUEST, Some("INVALID_SIGNATURE"), "Invalid signature");
    }
    if (chrono::Utc::now().timestamp() - ts).abs() > 180 {
        return ovh_error(
            StatusCode::BAD_REQUEST,
            Some("QUERY_TIME_TOO_FAR"),
            "Query time is too far",
        );
    }
    let segs: Vec<&str> = req.path.trim_matches('/').split('/').collect();
    if segs == ["auth", "currentCredential"] {
        return axum::Json(json!({ "credentialId": account.id.len(), "status": "validated",
            "applicationId": 1, "rules": [{ "method": "GET", "path": "/*" }, { "method": "PUT", "path": "/domain/*" }, { "method": "POST", "path": "/domain/*" }],
            "expiration": null })).into_response();
    }
    let ["domain", name, rest @ ..] = segs.as_slice() else {
        return ovh_error(StatusCode::NOT_FOUND, None, "Got an invalid (or empty) URL");
    };
    let d = match i.domain_mut(Registrar::Ovh, name) {
        Some(d) if d.account == account.id => d,
        _ => return ovh_error(StatusCode::NOT_FOUND, None, "This service does not exist"),
    };
    let body: Value = serde_json::from_slice(&req.body).unwrap_or(Value::Null);
    match (&req.method, rest) {
        (&Method::GET, []) => axum::Json(json!({ "domain": d.name, "nameServerType":
            if d.ovh_external { "external" } else { "hosted" }, "transferLockStatus": "locked", "offer": "gold" }))
        .into_response(),
        (&Method::PUT, []) => {
            match body["nameServerType"].as_str() {
                Some("external") => d.ovh_external = true,
                Some("hosted") => d.ovh_external = false,
                _ => {}
            }
            axum::Json(Value::Null).into_response()
        }
        (&Method::GET, ["nameServer"]) => {
            axum::Json(json!((1..=d.ns.len()).collect::<Vec<_>>())).into_response()
        }
        (&Method::GET, ["nameServer", id]) => match id.parse::<usize>().ok().and_then(|k| d.ns.get(k.wrapping_sub(1))) {
            Some(host) => axum::Json(json!({ "id": id.parse::<usize>().unwrap_or(0), "host": host, "ip": null, "isUsed": true, "toDelete": false })).into_response(),
            None => ovh_error(StatusCode::NOT_FOUND, None, "The requested object (id = ...) does not exist"),
        },
        (&Method::POST, ["nameServers", "update"]) => {
            let hosts: Vec<String> = body["nameServers"]
                .as_array()
                .map(|a| a.iter().filter_map(|h| h["host"].as_str()).map(bare).collect())
                .unwrap_or_default();
            if hosts.is_empty() || hosts.iter().any(|h| !is_hostname(h)) {
                return ovh_error(StatusCode::BAD_REQUEST, None, "Invalid nameserver host");
            }
            if !d.ovh_external {
                return ovh_error(StatusCode::FORBIDDEN, None, "The domain's DNS is hosted by OVH: set nameServerType to external first");
            }
            d.ns = hosts;
            axum::Json(json!({ "id": 4242, "function": "DomainDnsUpdate", "status": "todo",
                "domain": d.name, "canCancel": false, "canAccelerate": false, "canRelaunch": false }))
            .into_response()
        }
        _ => ovh_error(StatusCode::NOT_FOUND, None, "Got an invalid (or empty) URL"),
    }
}

// ---- Dynadot ----

fn dyn_answer(command: &str, fields: Value) -> Response {
    let key = match command {
        "get_ns" => "GetNsResponse",
        "set_ns" => "SetNsResponse",
        "domain_info" => "DomainInfoResponse",
        _ => "Response",
    };
    axum::Json(json!({ key: fields })).into_response()
}

fn dyn_error(command: &str, error: &str) -> Response {
    dyn_answer(command, json!({ "ResponseCode": "-1", "Status": "error", "Error": error }))
}

fn dynadot(f: &FakeRegistrars, req: &Req) -> Response {
    let q = |k: &str| req.query.get(k).map(String::as_str).unwrap_or("");
    let command = q("command").to_owned();
    let mut i = f.lock();
    let Some(account) = i.account_by_token(Registrar::Dynadot, q("key")) else {
        return dyn_answer("", json!({ "ResponseCode": "-1", "Error": "invalid key" }));
    };
    let d = match i.domain_mut(Registrar::Dynadot, q("domain")) {
        Some(d) if d.account == account.id => d,
        _ => return dyn_error(&command, "could not find domain in your account"),
    };
    match command.as_str() {
        "domain_info" => dyn_answer(
            &command,
            json!({ "ResponseCode": "0", "Status": "success",
            "DomainInfo": { "Name": d.name, "Expiration": "1893456000000", "Locked": "yes",
                "NameServerSettings": { "Type": "Name Servers",
                    "NameServers": d.ns.iter().map(|n| json!({ "ServerId": "", "ServerName": n })).collect::<Vec<_>>() } } }),
        ),
        "get_ns" => {
            let mut content = BTreeMap::new();
            for (k, n) in d.ns.iter().enumerate() {
                content.insert(format!("Host{k}"), json!(n));
            }
            content.insert("NsName".into(), json!(""));
            dyn_answer(
                &command,
                json!({ "ResponseCode": "0", "Status": "success", "NsContent": content }),
            )
        }
        "set_ns" => {
            let list: Vec<String> =
                (0..13).map(|k| q(&format!("ns{k}"))).filter(|n| !n.is_empty()).map(bare).collect();
            if list.is_empty() || list.iter().any(|n| !is_hostname(n)) {
                return dyn_error(&command, "invalid name server");
            }
            d.ns = list;
            dyn_answer(&command, json!({ "ResponseCode": "0", "Status": "success" }))
        }
        other => dyn_error(other, "invalid command"),
    }
}
