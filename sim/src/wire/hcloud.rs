//! An hcloud-compatible fake API server (axum) for testing [`HcloudClient`]
//! over a real socket.
//!
//! It serves exactly what the client calls, in the real response shapes:
//! - `GET /v1/{servers,networks,firewalls,load_balancers,ssh_keys,
//!   placement_groups,volumes,primary_ips}` with `label_selector` (real
//!   Kubernetes semantics: [`cz_adapters::cloud::Selector`]), `name`,
//!   `page`, `per_page` (default 25, max 50) and `meta.pagination`;
//! - `GET /v1/server_types`, `/v1/load_balancer_types` (prices as strings),
//!   `/v1/locations`;
//! - `POST /v1/ssh_keys` (the token-scope probe; a valid key is created);
//! - `GET /v1/{collection}/{id}` (`{"<kind>": object}`), `PUT` of the
//!   same with `name` and `labels` (what Crossplane's provider writes);
//! - `DELETE /v1/{collection}/{id}` (servers answer an action, others 204).
//!
//! Bearer auth (`unauthorized` for an unknown token), `forbidden` for writes
//! of a read-only token, a per-token rate budget with `RateLimit-*` headers
//! that answers 429 `rate_limit_exceeded` when exhausted, injectable 429s,
//! errors and slow `resource_unavailable`, and a log of every request so
//! tests can assert the budget was never exceeded.
//!
//! [`HcloudClient`]: cz_adapters::cloud::HcloudClient

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use axum::Router;
use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use cz_state::SecretString;
use serde_json::{Value, json};

use cz_adapters::cloud::Selector;
use cz_adapters::cloud::budget::project_key;
use cz_adapters::cloud::catalogue::{
    LOCATIONS, PLACEMENT_GROUPS_PER_PROJECT, SERVERS_PER_NETWORK, SERVERS_PER_PLACEMENT_GROUP,
    load_balancer_type_table, server_type_table,
};
use cz_adapters::cloud::hcloud::collection_of;

/// The token the fake accepts unless configured otherwise.
pub const DEFAULT_TOKEN: &str = "fakehcloudtoken0000000000000000000000000000000000000000000000000";

/// Server types the fake's catalogue holds (prices from the sim table).
pub const SERVER_TYPES: [&str; 8] =
    ["cx23", "cx33", "cpx22", "cpx31", "cpx32", "cax21", "ccx13", "ccx33"];
/// Load balancer types the fake's catalogue holds.
pub const LB_TYPES: [&str; 3] = cz_adapters::cloud::catalogue::LOAD_BALANCER_TYPE_NAMES;

const OBJECT_COLLECTIONS: [&str; 8] = [
    "servers",
    "networks",
    "firewalls",
    "load_balancers",
    "ssh_keys",
    "placement_groups",
    "volumes",
    "primary_ips",
];

#[derive(Clone, Debug)]
pub struct FakeConfig {
    /// Tokens that authenticate (each its own project budget).
    pub tokens: Vec<String>,
    /// Whether every token is read-only.
    pub read_only: bool,
    /// Bucket size per token (Hetzner: 3,600).
    pub rate_limit: u32,
    /// Refill per second (Hetzner: 1).
    pub refill_per_sec: f64,
    /// `Retry-After` of injected 429s, seconds.
    pub retry_after_s: u64,
    /// How long an injected `resource_unavailable` takes to answer.
    pub unavailable_delay: Duration,
    /// Servers the project may hold; a create past it answers
    /// `resource_limit_exceeded`.
    pub server_limit: usize,
    /// How long a create (`POST`) takes to answer: a real server create
    /// answers in about a second.
    pub create_delay: Duration,
    /// How long an action (create_server, delete_server, …) stays
    /// `running` before it is `success`: a real server takes 10 to 30 s to
    /// boot. Zero: finished by the time anyone asks.
    pub action_duration: Duration,
    /// Addresses given to objects of these names (public IPv4, private IP
    /// in their network) instead of 203.0.113.x and 10.0.1.x: a test
    /// whose servers are real hosts (`sshd`s on loopback addresses) and
    /// whose load balancer address is where its API server listens.
    pub addresses: BTreeMap<String, Addresses>,
}

/// What [`FakeConfig::addresses`] gives one object.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Addresses {
    pub public_ipv4: String,
    pub private_ip: Option<String>,
}

impl Default for FakeConfig {
    fn default() -> Self {
        FakeConfig {
            tokens: vec![DEFAULT_TOKEN.to_owned()],
            read_only: false,
            rate_limit: 3_600,
            refill_per_sec: 1.0,
            retry_after_s: 1,
            unavailable_delay: Duration::from_millis(200),
            server_limit: 100,
            create_delay: Duration::ZERO,
            action_duration: Duration::ZERO,
            addresses: BTreeMap::new(),
        }
    }
}

/// One request the fake answered.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RecordedRequest {
    /// When it arrived, since the fake started.
    pub at: Duration,
    pub method: String,
    pub path: String,
    pub query: String,
    /// The project key of the bearer token (a hash), if one was sent.
    pub project: Option<String>,
    pub status: u16,
    /// The Hetzner error code of an error answer.
    pub code: Option<String>,
}

impl RecordedRequest {
    /// A write (non-GET) that succeeded.
    pub fn is_successful_write(&self) -> bool {
        self.method != "GET" && (200..300).contains(&self.status)
    }
}

#[derive(Debug)]
struct Bucket {
    tokens: f64,
    last: Instant,
}

#[derive(Debug, Default)]
struct FState {
    read_only: bool,
    objects: BTreeMap<&'static str, Vec<Value>>,
    next_id: i64,
    log: Vec<RecordedRequest>,
    buckets: HashMap<String, Bucket>,
    inject_429: u32,
    inject_unavailable: u32,
    inject_errors: VecDeque<(u16, String)>,
    /// Every action the fake started, finished (`success`), with when it
    /// started: `GET /v1/actions` shows it `running` until
    /// [`FakeConfig::action_duration`] has passed.
    actions: Vec<Value>,
    action_started: Vec<Instant>,
    /// Each server's `user_data` (cloud-init) by name: the API takes it at
    /// creation and never returns it; a test's "host" reads it here.
    user_data: BTreeMap<String, String>,
}

impl FState {
    /// Records an action on `resources` (`(id, type)`); returns it as the
    /// call that started it answers: `running`, 0 %.
    fn action(&mut self, command: &str, resources: &[(i64, &str)]) -> Value {
        let id = 1_000_000 + self.actions.len() as i64;
        let resources: Vec<Value> =
            resources.iter().map(|(id, t)| json!({"id": id, "type": t})).collect();
        let started = "2026-01-01T00:00:00+00:00";
        self.actions.push(json!({
            "id": id, "command": command, "status": "success", "progress": 100,
            "started": started, "finished": started, "resources": resources, "error": null,
        }));
        self.action_started.push(Instant::now());
        json!({
            "id": id, "command": command, "status": "running", "progress": 0,
            "started": started, "finished": null, "resources": resources, "error": null,
        })
    }
}

#[derive(Debug)]
struct Inner {
    cfg: FakeConfig,
    started: Instant,
    state: Mutex<FState>,
}

/// A running fake; stopped when dropped.
#[derive(Debug)]
pub struct FakeHandle {
    pub addr: SocketAddr,
    inner: Arc<Inner>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for FakeHandle {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Starts the fake on 127.0.0.1 (an ephemeral port).
pub async fn start(cfg: FakeConfig) -> FakeHandle {
    start_at(cfg, SocketAddr::from(([127, 0, 0, 1], 0))).await.expect("bind the fake")
}

/// Starts the fake on `addr`.
pub async fn start_at(cfg: FakeConfig, addr: SocketAddr) -> std::io::Result<FakeHandle> {
    let inner = Arc::new(Inner {
        state: Mutex::new(FState { read_only: cfg.read_only, next_id: 1, ..FState::default() }),
        cfg,
        started: Instant::now(),
    });
    let app = Router::new().fallback(handle).with_state(inner.clone());
    let listener = tokio::net::TcpListener::bind(addr).await?;
    let addr = listener.local_addr()?;
    let task = super::serve(listener, app);
    Ok(FakeHandle { addr, inner, task })
}

impl FakeHandle {
    /// `http://127.0.0.1:PORT` (the client adds `/v1/...`).
    pub fn base_url(&self) -> String {
        format!("http://{}", self.addr)
    }

    fn state(&self) -> std::sync::MutexGuard<'_, FState> {
        self.inner.state.lock().expect("fake lock")
    }

    /// Every request answered so far, in order.
    pub fn requests(&self) -> Vec<RecordedRequest> {
        self.state().log.clone()
    }

    pub fn clear_requests(&self) {
        self.state().log.clear();
    }

    /// The next `n` authenticated requests answer 429 with `Retry-After`.
    pub fn inject_429(&self, n: u32) {
        self.state().inject_429 += n;
    }

    /// The next `n` authenticated requests answer, after
    /// `unavailable_delay`, 503 `resource_unavailable`.
    pub fn inject_unavailable(&self, n: u32) {
        self.state().inject_unavailable += n;
    }

    /// The next authenticated request answers this error.
    pub fn inject_error(&self, status: u16, code: &str) {
        self.state().inject_errors.push_back((status, code.to_owned()));
    }

    pub fn set_read_only(&self, read_only: bool) {
        self.state().read_only = read_only;
    }

    /// Adds an object of `kind` (`server`, `network`, …); returns its id.
    pub fn seed_object<K, V>(
        &self,
        kind: &str,
        name: &str,
        labels: impl IntoIterator<Item = (K, V)>,
    ) -> i64
    where
        K: Into<String>,
        V: Into<String>,
    {
        let collection = collection_of(kind).unwrap_or_else(|| panic!("unknown kind `{kind}`"));
        let labels: BTreeMap<String, String> =
            labels.into_iter().map(|(k, v)| (k.into(), v.into())).collect();
        let mut st = self.state();
        let id = st.next_id;
        st.next_id += 1;
        let obj = object_json(kind, id, name, &labels);
        st.objects.entry(collection).or_default().push(obj);
        id
    }

    /// Sets server `name`'s `status` (`off`, `running`, …): a host that
    /// stopped, as the API would show it. False if there is no such server.
    pub fn set_server_status(&self, name: &str, status: &str) -> bool {
        let mut st = self.inner.state.lock().expect("fake lock");
        let servers = st.objects.entry("servers").or_default();
        let Some(s) = servers.iter_mut().find(|o| o["name"] == name) else { return false };
        s["status"] = status.into();
        true
    }

    /// Deletes an object of `kind` by name as someone in the console would
    /// (no API request is recorded); whether it was there.
    pub fn remove_object(&self, kind: &str, name: &str) -> bool {
        let collection = collection_of(kind).unwrap_or_else(|| panic!("unknown kind `{kind}`"));
        let mut st = self.state();
        let Some(objs) = st.objects.get_mut(collection) else { return false };
        let before = objs.len();
        objs.retain(|o| o["name"] != name);
        objs.len() != before
    }

    /// The `user_data` a server of that name was created with, as
    /// cloud-init on it would read it (a function a background task can
    /// keep).
    pub fn user_data_fn(&self) -> impl Fn(&str) -> Option<String> + Send + Sync + use<> {
        let inner = self.inner.clone();
        move |name| inner.state.lock().expect("fake lock").user_data.get(name).cloned()
    }

    /// [`FakeHandle::objects`] as a function a background task can keep
    /// (the handle itself stops the fake when dropped).
    pub fn objects_fn(&self) -> impl Fn(&str) -> Vec<Value> + Send + Sync + use<> {
        let inner = self.inner.clone();
        move |kind| {
            let collection = collection_of(kind).unwrap_or_else(|| panic!("unknown kind `{kind}`"));
            let st = inner.state.lock().expect("fake lock");
            st.objects.get(collection).cloned().unwrap_or_default()
        }
    }

    /// The objects of a kind, in the API's JSON shape.
    pub fn objects(&self, kind: &str) -> Vec<Value> {
        let collection = collection_of(kind).unwrap_or_else(|| panic!("unknown kind `{kind}`"));
        self.state().objects.get(collection).cloned().unwrap_or_default()
    }
}

/// The object key of a collection's answers (`servers` → `server`).
fn singular(coll: &str) -> &str {
    coll.strip_suffix('s').unwrap_or(coll)
}

/// Hetzner's label syntax: keys `[prefix/]name` (name ≤ 63 of
/// `[A-Za-z0-9._-]`, alphanumeric at both ends), values ≤ 63 of the same set.
fn valid_label(k: &str, v: &str) -> bool {
    let part = |s: &str, empty_ok: bool| {
        (empty_ok && s.is_empty())
            || (s.len() <= 63
                && s.bytes().all(|b| b.is_ascii_alphanumeric() || b"-._".contains(&b))
                && s.bytes().next().is_some_and(|b| b.is_ascii_alphanumeric())
                && s.bytes().last().is_some_and(|b| b.is_ascii_alphanumeric()))
    };
    let name = k.rsplit_once('/').map_or(k, |(prefix, name)| {
        if prefix.is_empty() || prefix.len() > 253 { "" } else { name }
    });
    part(name, false) && part(v, true)
}

fn object_json(kind: &str, id: i64, name: &str, labels: &BTreeMap<String, String>) -> Value {
    let mut v = json!({
        "id": id,
        "name": name,
        "labels": labels,
        "created": "2026-01-01T00:00:00+00:00",
    });
    let ip = format!("203.0.113.{}", id % 250 + 1);
    let ip6 = format!("2001:db8:{:x}::/64", id % 0xffff);
    let ptr = format!("static.{ip}.clients.your-server.de");
    let location = json!({"id": 1, "name": "fsn1", "network_zone": "eu-central",
                          "country": "DE", "city": "Falkenstein", "description": "Falkenstein DC Park 1",
                          "latitude": 50.47612, "longitude": 12.370071});
    let extra = match kind {
        "server" => json!({
            "status": "running",
            "public_net": {
                "ipv4": {"id": id + 500_000, "ip": ip, "blocked": false, "dns_ptr": ptr},
                "ipv6": {"id": id + 600_000, "ip": ip6, "blocked": false, "dns_ptr": []},
                "floating_ips": [],
                "firewalls": [],
            },
            "private_net": [],
            "image": null,
            "iso": null,
            "rescue_enabled": false,
            "locked": false,
            "backup_window": null,
            "outgoing_traffic": 0,
            "ingoing_traffic": 0,
            "included_traffic": 21_990_232_555_520_i64,
            "primary_disk_size": 80,
            "volumes": [],
            "load_balancers": [],
            "placement_group": null,
            "server_type": {"id": 1, "name": "cx23"},
            "datacenter": {"id": 1, "name": "fsn1-dc14", "location": location},
            "protection": {"delete": false, "rebuild": false},
        }),
        "load_balancer" => json!({
            "public_net": {"enabled": true, "ipv4": {"ip": ip, "dns_ptr": ptr},
                           "ipv6": {"ip": ip6.trim_end_matches("/64").to_owned() + "1", "dns_ptr": ptr}},
            "private_net": [],
            "algorithm": {"type": "round_robin"},
            "services": [],
            "targets": [],
            "outgoing_traffic": 0,
            "ingoing_traffic": 0,
            "included_traffic": 21_990_232_555_520_i64,
            "location": location,
            "load_balancer_type": {"id": 1, "name": "lb11"},
            "protection": {"delete": false},
        }),
        "network" => json!({"ip_range": "10.0.0.0/16", "subnets": [], "routes": [], "servers": [],
                             "load_balancers": [], "protection": {"delete": false},
                             "expose_routes_to_vswitch": false}),
        "volume" => json!({"size": 10, "location": location, "status": "available",
                            "server": null, "linux_device": format!("/dev/disk/by-id/scsi-0HC_Volume_{id}"),
                            "format": "ext4", "protection": {"delete": false}}),
        "primary_ip" => json!({
            "ip": ip, "type": "ipv4", "assignee_id": null, "assignee_type": "server",
            "auto_delete": false, "blocked": false, "dns_ptr": [{"ip": ip, "dns_ptr": ptr}],
            "protection": {"delete": false},
            "datacenter": {"id": 1, "name": "fsn1-dc14", "location": location},
        }),
        "ssh_key" => json!({"fingerprint": "00:11", "public_key": "ssh-ed25519 AAAA fake"}),
        "firewall" => json!({"rules": [], "applied_to": []}),
        "placement_group" => json!({"type": "spread", "servers": []}),
        _ => json!({}),
    };
    if let (Some(o), Value::Object(e)) = (v.as_object_mut(), extra) {
        o.extend(e);
    }
    v
}

fn price_json(prices: &BTreeMap<String, (f64, f64)>) -> Value {
    let s = |x: f64| format!("{x:.10}");
    Value::Array(
        prices
            .iter()
            .map(|(loc, (h, m))| {
                json!({
                    "location": loc,
                    "price_hourly": {"net": s(h / 1.19), "gross": s(*h)},
                    "price_monthly": {"net": s(m / 1.19), "gross": s(*m)},
                })
            })
            .collect(),
    )
}

fn catalogue(collection: &str) -> Vec<Value> {
    match collection {
        "server_types" => SERVER_TYPES
            .iter()
            .enumerate()
            .filter_map(|(i, n)| {
                let t = server_type_table(n)?;
                Some(json!({
                    "id": i + 1,
                    "name": t.name,
                    "description": t.name.to_uppercase(),
                    "cores": t.cores,
                    "memory": t.memory_gb,
                    "disk": 40,
                    "deprecated": t.deprecated,
                    "deprecation": null,
                    "cpu_type": if t.name.starts_with("ccx") { "dedicated" } else { "shared" },
                    "architecture": if t.name.starts_with("cax") { "arm" } else { "x86" },
                    "storage_type": "local",
                    "prices": price_json(&t.prices),
                }))
            })
            .collect(),
        "load_balancer_types" => LB_TYPES
            .iter()
            .enumerate()
            .filter_map(|(i, n)| {
                let t = load_balancer_type_table(n)?;
                Some(json!({
                    "id": i + 1,
                    "name": t.name,
                    "description": t.name.to_uppercase(),
                    "max_connections": ([10_000, 20_000, 40_000][i]),
                    "max_services": ([5, 15, 30][i]),
                    "max_targets": t.max_targets,
                    "deprecated": null,
                    "prices": price_json(&t.prices),
                }))
            })
            .collect(),
        "locations" => LOCATIONS
            .iter()
            .enumerate()
            .map(|(i, n)| json!({"id": i + 1, "name": n, "network_zone": "eu-central"}))
            .collect(),
        // The system images a Sovereign's servers boot.
        "images" => ["ubuntu-24.04", "ubuntu-22.04", "debian-12"]
            .iter()
            .enumerate()
            .flat_map(|(i, n)| {
                ["x86", "arm"].into_iter().enumerate().map(move |(j, arch)| {
                    let (os, version) = n.split_once('-').unwrap_or((n, ""));
                    json!({
                        "id": 100 + i * 2 + j, "type": "system", "status": "available",
                        "name": n, "description": n.replace('-', " "), "image_size": null,
                        "disk_size": 5, "created": "2024-04-25T00:00:00+00:00",
                        "created_from": null, "bound_to": null, "os_flavor": os,
                        "os_version": version, "rapid_deploy": true,
                        "protection": {"delete": false}, "deprecated": null, "deleted": null,
                        "labels": {}, "architecture": arch,
                    })
                })
            })
            .collect(),
        _ => Vec::new(),
    }
}

/// One page of `items` under `key`, with the API's `meta.pagination`
/// (`page` from 1, `per_page` up to 50, 25 by default).
fn paginated(key: &str, items: Vec<Value>, query: &[(String, String)]) -> Answer {
    let q = |k: &str| query.iter().find(|(qk, _)| qk == k).map(|(_, v)| v.as_str());
    let num = |k: &str, default: u64| -> Result<u64, Answer> {
        match q(k) {
            None => Ok(default),
            Some(v) => v.parse::<u64>().ok().filter(|n| *n >= 1).ok_or_else(|| {
                error(400, "invalid_input", format!("invalid input in field '{k}'"))
            }),
        }
    };
    let (page, per_page) = match (num("page", 1), num("per_page", 25)) {
        (Ok(p), Ok(n)) => (p, n.min(50)),
        (Err(a), _) | (_, Err(a)) => return a,
    };
    let total = items.len() as u64;
    let last_page = total.div_ceil(per_page).max(1);
    let page_items: Vec<Value> =
        items.into_iter().skip(((page - 1) * per_page) as usize).take(per_page as usize).collect();
    ok(
        200,
        Some(json!({
            key: page_items,
            "meta": {"pagination": {
                "page": page,
                "per_page": per_page,
                "previous_page": if page > 1 { json!(page - 1) } else { Value::Null },
                "next_page": if page < last_page { json!(page + 1) } else { Value::Null },
                "last_page": last_page,
                "total_entries": total,
            }},
        })),
    )
}

struct Answer {
    status: u16,
    body: Option<Value>,
    headers: Vec<(&'static str, String)>,
}

fn error(status: u16, code: &str, message: impl Into<String>) -> Answer {
    Answer {
        status,
        body: Some(json!({"error": {"code": code, "message": message.into(), "details": {}}})),
        headers: Vec::new(),
    }
}

fn ok(status: u16, body: Option<Value>) -> Answer {
    Answer { status, body, headers: Vec::new() }
}

fn unix_now() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).unwrap_or_default().as_secs()
}

fn bearer(headers: &HeaderMap) -> Option<String> {
    let v = headers.get("authorization")?.to_str().ok()?;
    v.strip_prefix("Bearer ").map(str::to_owned)
}

async fn handle(
    State(inner): State<Arc<Inner>>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let at = inner.started.elapsed();
    let token = bearer(&headers);
    let project = token.as_ref().map(|t| project_key(&SecretString::new(t.clone())));
    let answer = inner.answer(&method, &uri, token.as_deref(), project.as_deref(), &body).await;
    let code = answer
        .body
        .as_ref()
        .and_then(|b| b.pointer("/error/code"))
        .and_then(Value::as_str)
        .map(str::to_owned);
    inner.state.lock().expect("fake lock").log.push(RecordedRequest {
        at,
        method: method.to_string(),
        path: uri.path().to_owned(),
        query: uri.query().unwrap_or_default().to_owned(),
        project,
        status: answer.status,
        code,
    });
    let status = StatusCode::from_u16(answer.status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    let mut resp = match answer.body {
        Some(b) => (status, axum::Json(b)).into_response(),
        None => status.into_response(),
    };
    for (k, v) in answer.headers {
        if let Ok(v) = HeaderValue::from_str(&v) {
            resp.headers_mut().insert(k, v);
        }
    }
    resp
}

enum Gate {
    Pass,
    Answer(Answer),
    Unavailable,
}

impl Inner {
    /// Auth, rate budget and injections; then the route.
    async fn answer(
        &self,
        method: &Method,
        uri: &Uri,
        token: Option<&str>,
        project: Option<&str>,
        body: &[u8],
    ) -> Answer {
        let (Some(token), Some(project)) = (token, project) else {
            return error(401, "unauthorized", "unable to authenticate");
        };
        if !self.cfg.tokens.iter().any(|t| t == token) {
            return error(401, "unauthorized", "unable to authenticate");
        }
        let (gate, rate_headers) = self.gate(project);
        let mut answer = match gate {
            Gate::Answer(a) => a,
            Gate::Unavailable => {
                tokio::time::sleep(self.cfg.unavailable_delay).await;
                error(
                    503,
                    "resource_unavailable",
                    "the requested resource is currently unavailable",
                )
            }
            Gate::Pass => {
                if method == Method::POST && !self.cfg.create_delay.is_zero() {
                    tokio::time::sleep(self.cfg.create_delay).await;
                }
                self.route(method, uri, body)
            }
        };
        answer.headers.extend(rate_headers);
        answer
    }

    fn gate(&self, project: &str) -> (Gate, Vec<(&'static str, String)>) {
        let cfg = &self.cfg;
        let mut st = self.state.lock().expect("fake lock");
        let now = Instant::now();
        let limit = f64::from(cfg.rate_limit);
        let bucket =
            st.buckets.entry(project.to_owned()).or_insert(Bucket { tokens: limit, last: now });
        bucket.tokens =
            (bucket.tokens + (now - bucket.last).as_secs_f64() * cfg.refill_per_sec).min(limit);
        bucket.last = now;
        let injected = st.inject_429 > 0;
        let bucket = st.buckets.get_mut(project).expect("just inserted");
        let exhausted = !injected && bucket.tokens < 1.0;
        if !injected && !exhausted {
            bucket.tokens -= 1.0;
        }
        let tokens = bucket.tokens;
        let reset = unix_now() + ((limit - tokens) / cfg.refill_per_sec).ceil() as u64;
        let headers = vec![
            ("ratelimit-limit", cfg.rate_limit.to_string()),
            ("ratelimit-remaining", (tokens.max(0.0).floor() as u64).to_string()),
            ("ratelimit-reset", reset.to_string()),
        ];
        if injected {
            st.inject_429 -= 1;
            let mut a = error(429, "rate_limit_exceeded", "limit of requests per hour reached");
            a.headers.push(("retry-after", cfg.retry_after_s.to_string()));
            return (Gate::Answer(a), headers);
        }
        if exhausted {
            // As Hetzner: no `Retry-After`; the `RateLimit-*` headers say
            // when the bucket is full again, and the refill is steady.
            let a = error(429, "rate_limit_exceeded", "limit of requests per hour reached");
            return (Gate::Answer(a), headers);
        }
        if let Some((status, code)) = st.inject_errors.pop_front() {
            let a = error(status, &code, format!("injected {code}"));
            return (Gate::Answer(a), headers);
        }
        if st.inject_unavailable > 0 {
            st.inject_unavailable -= 1;
            return (Gate::Unavailable, headers);
        }
        (Gate::Pass, headers)
    }

    fn route(&self, method: &Method, uri: &Uri, body: &[u8]) -> Answer {
        let segs: Vec<&str> = uri.path().trim_matches('/').split('/').collect();
        let query: Vec<(String, String)> = reqwest::Url::parse(&format!("http://x{uri}"))
            .map(|u| u.query_pairs().map(|(k, v)| (k.into_owned(), v.into_owned())).collect())
            .unwrap_or_default();
        match (method.as_str(), segs.as_slice()) {
            ("GET", ["v1", "actions"]) => self.actions(None, &query),
            ("GET", ["v1", "actions", id]) => self.action(None, id),
            ("GET", ["v1", coll, "actions"]) => self.actions(Some((coll, None)), &query),
            ("GET", ["v1", coll, "actions", id]) => self.action(Some(coll), id),
            ("GET", ["v1", coll, id, "actions"]) => self.actions(Some((coll, Some(id))), &query),
            ("GET", ["v1", coll]) => self.list(coll, &query),
            ("GET", ["v1", coll, id]) => self.get_one(coll, id),
            ("PUT", ["v1", coll, id]) => self.update(coll, id, body),
            ("POST", ["v1", "servers", id, "actions", action]) => self.server_action(id, action),
            ("POST", ["v1", "ssh_keys"]) => self.create_ssh_key(body),
            ("POST", ["v1", coll]) => self.create(coll, body),
            ("DELETE", ["v1", coll, id]) => self.delete(coll, id),
            _ => error(404, "not_found", format!("no route {method} {}", uri.path())),
        }
    }

    /// `GET /v1/actions/{id}` and `GET /v1/{collection}/actions/{id}`.
    /// The actions as the API shows them now: `running` (half done) until
    /// their duration has passed.
    fn live_actions(&self, st: &FState) -> Vec<Value> {
        let now = Instant::now();
        st.actions
            .iter()
            .zip(&st.action_started)
            .map(|(a, at)| {
                let mut a = a.clone();
                if now.duration_since(*at) < self.cfg.action_duration {
                    a["status"] = "running".into();
                    a["progress"] = 50.into();
                    a["finished"] = Value::Null;
                }
                a
            })
            .collect()
    }

    fn action(&self, coll: Option<&str>, id: &str) -> Answer {
        let Ok(id) = id.parse::<i64>() else {
            return error(400, "invalid_input", "invalid id");
        };
        let st = self.state.lock().expect("fake lock");
        let kind = coll.map(singular);
        self.live_actions(&st)
            .into_iter()
            .find(|a| a["id"] == id)
            .filter(|a| kind.is_none_or(|k| Self::touches(a, k, None)))
            .map_or_else(
                || error(404, "not_found", format!("action with ID '{id}' not found")),
                |a| ok(200, Some(json!({ "action": a }))),
            )
    }

    fn touches(action: &Value, kind: &str, id: Option<i64>) -> bool {
        action["resources"].as_array().is_some_and(|rs| {
            rs.iter().any(|r| r["type"] == kind && id.is_none_or(|id| r["id"] == id))
        })
    }

    /// `GET /v1/actions` (by `id`), `GET /v1/{collection}/actions` and
    /// `GET /v1/{collection}/{id}/actions`: paginated, `status` filtered.
    fn actions(&self, scope: Option<(&str, Option<&str>)>, query: &[(String, String)]) -> Answer {
        if let Some((coll, _)) = scope
            && !OBJECT_COLLECTIONS.contains(&coll)
        {
            return error(404, "not_found", format!("no route GET /v1/{coll}/actions"));
        }
        let ids: Vec<i64> =
            query.iter().filter(|(k, _)| k == "id").filter_map(|(_, v)| v.parse().ok()).collect();
        let statuses: Vec<&str> =
            query.iter().filter(|(k, _)| k == "status").map(|(_, v)| v.as_str()).collect();
        let on = match scope {
            Some((coll, Some(id))) => match id.parse::<i64>() {
                Ok(id) => Some((singular(coll), Some(id))),
                Err(_) => return error(400, "invalid_input", "invalid id"),
            },
            Some((coll, None)) => Some((singular(coll), None)),
            None => None,
        };
        let items: Vec<Value> = {
            let st = self.state.lock().expect("fake lock");
            self.live_actions(&st)
                .into_iter()
                .filter(|a| ids.is_empty() || ids.iter().any(|id| a["id"] == *id))
                .filter(|a| statuses.is_empty() || statuses.iter().any(|s| a["status"] == *s))
                .filter(|a| on.is_none_or(|(k, id)| Self::touches(a, k, id)))
                .collect()
        };
        paginated("actions", items, query)
    }

    fn list(&self, coll: &str, query: &[(String, String)]) -> Answer {
        let q = |k: &str| query.iter().find(|(qk, _)| qk == k).map(|(_, v)| v.as_str());
        let mut items: Vec<Value> = if OBJECT_COLLECTIONS.contains(&coll) {
            let st = self.state.lock().expect("fake lock");
            st.objects.get(coll).cloned().unwrap_or_default()
        } else if ["server_types", "load_balancer_types", "locations", "images"].contains(&coll) {
            catalogue(coll)
        } else {
            return error(404, "not_found", format!("no route GET /v1/{coll}"));
        };
        if let Some(sel) = q("label_selector") {
            let sel = match Selector::parse(sel) {
                Ok(s) => s,
                Err(m) => {
                    return error(400, "invalid_input", format!("label_selector is invalid: {m}"));
                }
            };
            items.retain(|o| sel.matches_json(o.get("labels")));
        }
        for field in ["name", "architecture", "type", "status"] {
            if let Some(want) = q(field) {
                items.retain(|o| o.get(field).and_then(Value::as_str) == Some(want));
            }
        }
        items.sort_by_key(|o| o.get("id").and_then(Value::as_i64));
        paginated(coll, items, query)
    }

    fn create_ssh_key(&self, body: &[u8]) -> Answer {
        let mut st = self.state.lock().expect("fake lock");
        if st.read_only {
            return error(403, "forbidden", "insufficient permissions for this request");
        }
        let Ok(v) = serde_json::from_slice::<Value>(body) else {
            return error(400, "json_error", "request body is not valid JSON");
        };
        let name = v.get("name").and_then(Value::as_str).unwrap_or_default();
        let key = v.get("public_key").and_then(Value::as_str).unwrap_or_default();
        if name.is_empty() {
            return error(400, "invalid_input", "invalid input in field 'name'");
        }
        let valid_key = ["ssh-ed25519 ", "ssh-rsa ", "ecdsa-sha2-nistp256 "]
            .iter()
            .any(|p| key.starts_with(p) && key.len() > p.len() + 16);
        if !valid_key {
            return error(400, "invalid_input", "invalid input in field 'public_key'");
        }
        let taken = st.objects.get("ssh_keys").is_some_and(|ks| {
            ks.iter().any(|k| k.get("name").and_then(Value::as_str) == Some(name))
        });
        if taken {
            return error(409, "uniqueness_error", "SSH key with the same name already exists");
        }
        let labels: BTreeMap<String, String> = v
            .get("labels")
            .and_then(|l| serde_json::from_value(l.clone()).ok())
            .unwrap_or_default();
        let id = st.next_id;
        st.next_id += 1;
        let mut obj = object_json("ssh_key", id, name, &labels);
        obj["public_key"] = json!(key);
        st.objects.entry("ssh_keys").or_default().push(obj.clone());
        ok(201, Some(json!({"ssh_key": obj})))
    }

    /// `POST /v1/{servers,networks,firewalls,load_balancers,placement_groups}`:
    /// name (unique per kind), labels (Hetzner's syntax), and for servers and
    /// load balancers a type from the catalogue, a known location and the
    /// referenced network (which gives the private IP).
    fn create(&self, coll: &str, body: &[u8]) -> Answer {
        const CREATABLE: [(&str, &str); 5] = [
            ("servers", "server"),
            ("networks", "network"),
            ("firewalls", "firewall"),
            ("load_balancers", "load_balancer"),
            ("placement_groups", "placement_group"),
        ];
        let Some(&(coll, kind)) = CREATABLE.iter().find(|(c, _)| *c == coll) else {
            return error(404, "not_found", format!("no route POST /v1/{coll}"));
        };
        let mut st = self.state.lock().expect("fake lock");
        if st.read_only {
            return error(403, "forbidden", "insufficient permissions for this request");
        }
        let Ok(v) = serde_json::from_slice::<Value>(body) else {
            return error(400, "json_error", "request body is not valid JSON");
        };
        let field = |k: &str| v.get(k).and_then(Value::as_str).unwrap_or_default().to_owned();
        let name = field("name");
        if name.is_empty() || name.len() > 63 {
            return error(400, "invalid_input", "invalid input in field 'name'");
        }
        let labels: BTreeMap<String, String> = match v.get("labels") {
            None | Some(Value::Null) => BTreeMap::new(),
            Some(l) => match serde_json::from_value(l.clone()) {
                Ok(l) => l,
                Err(_) => return error(400, "invalid_input", "invalid input in field 'labels'"),
            },
        };
        if let Some((k, _)) = labels.iter().find(|(k, v)| !valid_label(k, v)) {
            return error(400, "invalid_input", format!("invalid input in field 'labels' ({k})"));
        }
        let objs = st.objects.get(coll).map(Vec::as_slice).unwrap_or_default();
        if objs.iter().any(|o| o.get("name").and_then(Value::as_str) == Some(name.as_str())) {
            return error(409, "uniqueness_error", format!("{kind} name is already used"));
        }
        if kind == "server" && objs.len() >= self.cfg.server_limit {
            return error(403, "resource_limit_exceeded", "server limit exceeded");
        }
        let location = field("location");
        if matches!(kind, "server" | "load_balancer") && !LOCATIONS.contains(&location.as_str()) {
            return error(400, "invalid_input", "invalid input in field 'location'");
        }
        if kind == "server" && !SERVER_TYPES.contains(&field("server_type").as_str()) {
            return error(400, "invalid_server_type", "server type not found");
        }
        if kind == "load_balancer" && !LB_TYPES.contains(&field("load_balancer_type").as_str()) {
            return error(400, "invalid_load_balancer_type", "load balancer type not found");
        }
        let network = match kind {
            "server" => v.pointer("/networks/0").and_then(Value::as_i64),
            "load_balancer" => v.get("network").and_then(Value::as_i64),
            _ => None,
        };
        let network_exists = |id: i64| {
            st.objects.get("networks").is_some_and(|ns| {
                ns.iter().any(|n| n.get("id").and_then(Value::as_i64) == Some(id))
            })
        };
        if let Some(n) = network.filter(|n| !network_exists(*n)) {
            return error(404, "not_found", format!("network with ID '{n}' not found"));
        }
        // Hetzner's fixed limits: 50 placement groups per project, 10
        // servers per spread group, 100 servers per network.
        let count_in = |coll: &str| st.objects.get(coll).map_or(0, Vec::len) as u32;
        if kind == "placement_group" && count_in("placement_groups") >= PLACEMENT_GROUPS_PER_PROJECT
        {
            return error(403, "resource_limit_exceeded", "placement_group limit exceeded");
        }
        let group = v.get("placement_group").and_then(Value::as_i64).filter(|_| kind == "server");
        if let Some(g) = group {
            let Some(pg) = st
                .objects
                .get("placement_groups")
                .and_then(|gs| gs.iter().find(|o| o["id"].as_i64() == Some(g)))
            else {
                return error(404, "not_found", format!("placement group with ID '{g}' not found"));
            };
            let members = pg["servers"].as_array().map_or(0, Vec::len) as u32;
            if members >= SERVERS_PER_PLACEMENT_GROUP {
                return error(
                    412,
                    "placement_error",
                    format!("spread placement group '{g}' already holds {members} servers"),
                );
            }
        }
        if let Some(n) = network.filter(|_| kind == "server") {
            let attached = st.objects.get("servers").map_or(0, |ss| {
                ss.iter().filter(|o| o.pointer("/private_net/0/network") == Some(&json!(n))).count()
            }) as u32;
            if attached >= SERVERS_PER_NETWORK {
                return error(
                    403,
                    "resource_limit_exceeded",
                    format!("network '{n}' already holds {attached} servers"),
                );
            }
        }
        let id = st.next_id;
        st.next_id += 1;
        let mut obj = object_json(kind, id, &name, &labels);
        let loc = json!({"id": 1, "name": location, "network_zone": "eu-central"});
        match kind {
            "server" => {
                obj["server_type"]["name"] = json!(field("server_type"));
                obj["datacenter"]["location"] = loc;
                obj["datacenter"]["name"] = json!(format!("{location}-dc1"));
                // Applied firewalls: on the server and on each firewall
                // (which then cannot be deleted: `resource_in_use`).
                let wanted: Vec<i64> = v
                    .get("firewalls")
                    .and_then(Value::as_array)
                    .into_iter()
                    .flatten()
                    .filter_map(|f| f.get("firewall").and_then(Value::as_i64))
                    .collect();
                let fws = st.objects.entry("firewalls").or_default();
                let mut applied = Vec::new();
                for fid in wanted {
                    let Some(fw) = fws.iter_mut().find(|f| f["id"].as_i64() == Some(fid)) else {
                        return error(
                            404,
                            "firewall_resource_not_found",
                            format!("firewall with ID '{fid}' not found"),
                        );
                    };
                    let entry = json!({"type": "server", "server": {"id": id}});
                    match fw["applied_to"].as_array_mut() {
                        Some(a) => a.push(entry),
                        None => fw["applied_to"] = json!([entry]),
                    }
                    applied.push(json!({"id": fid, "status": "applied"}));
                }
                obj["public_net"]["firewalls"] = json!(applied);
            }
            "load_balancer" => {
                obj["load_balancer_type"]["name"] = json!(field("load_balancer_type"));
                obj["location"] = loc;
                obj["services"] = v.get("services").cloned().unwrap_or(json!([]));
                obj["targets"] = v.get("targets").cloned().unwrap_or(json!([]));
            }
            "network" => {
                obj["ip_range"] = v.get("ip_range").cloned().unwrap_or(json!("10.0.0.0/16"));
                obj["subnets"] = v.get("subnets").cloned().unwrap_or(json!([]));
            }
            "firewall" => {
                // Every rule carries every field, as the API answers it.
                let rules: Vec<Value> = v
                    .get("rules")
                    .and_then(Value::as_array)
                    .into_iter()
                    .flatten()
                    .map(|r| {
                        let f = |k: &str, d: Value| r.get(k).cloned().unwrap_or(d);
                        json!({
                            "direction": f("direction", json!("in")),
                            "protocol": f("protocol", json!("tcp")),
                            "port": f("port", Value::Null),
                            "source_ips": f("source_ips", json!([])),
                            "destination_ips": f("destination_ips", json!([])),
                            "description": f("description", Value::Null),
                        })
                    })
                    .collect();
                obj["rules"] = json!(rules);
                obj["applied_to"] = v.get("apply_to").cloned().unwrap_or(json!([]));
            }
            "placement_group" => {
                obj["type"] = v.get("type").cloned().unwrap_or(json!("spread"));
            }
            _ => {}
        }
        if let Some(ud) = v.get("user_data").and_then(Value::as_str)
            && kind == "server"
        {
            st.user_data.insert(name.clone(), ud.to_owned());
        }
        let fixed = self.cfg.addresses.get(&name);
        if let Some(a) = fixed {
            obj["public_net"]["ipv4"]["ip"] = json!(a.public_ipv4);
        }
        if let Some(g) = group {
            let pgs = st.objects.entry("placement_groups").or_default();
            if let Some(pg) = pgs.iter_mut().find(|o| o["id"].as_i64() == Some(g)) {
                match pg["servers"].as_array_mut() {
                    Some(a) => a.push(json!(id)),
                    None => pg["servers"] = json!([id]),
                }
                obj["placement_group"] = pg.clone();
            }
        }
        if let Some(n) = network {
            let ip = fixed
                .and_then(|a| a.private_ip.clone())
                .unwrap_or_else(|| format!("10.0.1.{}", (id % 250) + 2));
            let mac = format!("86:00:00:00:{:02x}:{:02x}", (id >> 8) & 0xff, id & 0xff);
            obj["private_net"] =
                json!([{"network": n, "ip": ip, "alias_ips": [], "mac_address": mac}]);
        }
        st.objects.entry(coll).or_default().push(obj.clone());
        let mut answer = json!({ kind: obj });
        // What each create answers besides the object (the API's shapes).
        match kind {
            "server" => {
                answer["action"] = st.action("create_server", &[(id, "server")]);
                answer["root_password"] = Value::Null;
                answer["next_actions"] = json!([]);
            }
            "load_balancer" => {
                answer["action"] = st.action("create_load_balancer", &[(id, "load_balancer")]);
            }
            "firewall" => answer["actions"] = json!([]),
            "placement_group" => answer["action"] = Value::Null,
            _ => {}
        }
        ok(201, Some(answer))
    }

    /// `GET /v1/{collection}/{id}`: `{"<kind>": object}`.
    fn get_one(&self, coll: &str, id: &str) -> Answer {
        let Some(coll) = OBJECT_COLLECTIONS.iter().find(|c| **c == coll) else {
            return error(404, "not_found", format!("no route GET /v1/{coll}/{id}"));
        };
        let Ok(id) = id.parse::<i64>() else {
            return error(400, "invalid_input", "invalid id");
        };
        let st = self.state.lock().expect("fake lock");
        let found = st
            .objects
            .get(coll)
            .and_then(|objs| objs.iter().find(|o| o.get("id").and_then(Value::as_i64) == Some(id)));
        match found {
            Some(o) => ok(200, Some(json!({ singular(coll): o }))),
            None => error(404, "not_found", format!("{coll} with ID '{id}' not found")),
        }
    }

    /// `POST /v1/servers/{id}/actions/{poweron|poweroff|reset}`: the
    /// server's `status` as the action leaves it, and the action (201).
    fn server_action(&self, id: &str, action: &str) -> Answer {
        let (command, status) = match action {
            "poweron" => ("start_server", "running"),
            "poweroff" => ("stop_server", "off"),
            "reset" => ("reset_server", "running"),
            _ => {
                return error(
                    404,
                    "not_found",
                    format!("no route POST /v1/servers/{id}/actions/{action}"),
                );
            }
        };
        let Ok(id) = id.parse::<i64>() else {
            return error(400, "invalid_input", "invalid id");
        };
        let mut st = self.state.lock().expect("fake lock");
        if st.read_only {
            return error(403, "forbidden", "insufficient permissions for this request");
        }
        let servers = st.objects.entry("servers").or_default();
        let Some(server) = servers.iter_mut().find(|o| o["id"].as_i64() == Some(id)) else {
            return error(404, "not_found", format!("servers with ID '{id}' not found"));
        };
        server["status"] = status.into();
        let action = st.action(command, &[(id, "server")]);
        ok(201, Some(json!({ "action": action })))
    }

    /// `PUT /v1/{collection}/{id}`: the name and labels Hetzner lets a
    /// client change (labels are replaced whole, as the API does).
    fn update(&self, coll: &str, id: &str, body: &[u8]) -> Answer {
        let Some(coll) = OBJECT_COLLECTIONS.iter().find(|c| **c == coll) else {
            return error(404, "not_found", format!("no route PUT /v1/{coll}/{id}"));
        };
        let Ok(id) = id.parse::<i64>() else {
            return error(400, "invalid_input", "invalid id");
        };
        let Ok(v) = serde_json::from_slice::<Value>(body) else {
            return error(400, "json_error", "invalid JSON");
        };
        let mut st = self.state.lock().expect("fake lock");
        if st.read_only {
            return error(403, "forbidden", "insufficient permissions for this request");
        }
        if let Some(labels) = v.get("labels").and_then(Value::as_object)
            && let Some((k, _)) =
                labels.iter().find(|(k, v)| !v.as_str().is_some_and(|v| valid_label(k, v)))
        {
            return error(400, "invalid_input", format!("label `{k}` is invalid"));
        }
        let objs = st.objects.entry(coll).or_default();
        let Some(o) = objs.iter_mut().find(|o| o.get("id").and_then(Value::as_i64) == Some(id))
        else {
            return error(404, "not_found", format!("{coll} with ID '{id}' not found"));
        };
        if let Some(name) = v.get("name").and_then(Value::as_str) {
            o["name"] = json!(name);
        }
        if let Some(labels) = v.get("labels") {
            o["labels"] = labels.clone();
        }
        ok(200, Some(json!({ singular(coll): o.clone() })))
    }

    fn delete(&self, coll: &str, id: &str) -> Answer {
        let Some(coll) = OBJECT_COLLECTIONS.iter().find(|c| **c == coll) else {
            return error(404, "not_found", format!("no route DELETE /v1/{coll}/{id}"));
        };
        let mut st = self.state.lock().expect("fake lock");
        if st.read_only {
            return error(403, "forbidden", "insufficient permissions for this request");
        }
        let Ok(id) = id.parse::<i64>() else {
            return error(400, "invalid_input", "invalid id");
        };
        let objs = st.objects.entry(coll).or_default();
        let Some(pos) = objs.iter().position(|o| o.get("id").and_then(Value::as_i64) == Some(id))
        else {
            return error(404, "not_found", format!("{coll} with ID '{id}' not found"));
        };
        if *coll == "firewalls" && objs[pos]["applied_to"].as_array().is_some_and(|a| !a.is_empty())
        {
            return error(422, "resource_in_use", "Firewall still applied to a resource");
        }
        objs.remove(pos);
        if *coll == "servers" {
            for fw in st.objects.entry("firewalls").or_default() {
                if let Some(a) = fw["applied_to"].as_array_mut() {
                    a.retain(|t| t["server"]["id"].as_i64() != Some(id));
                }
            }
            for pg in st.objects.entry("placement_groups").or_default() {
                if let Some(a) = pg["servers"].as_array_mut() {
                    a.retain(|s| s.as_i64() != Some(id));
                }
            }
        }
        // Servers and (since 2025) load balancers are deleted by an action.
        if *coll == "servers" {
            ok(200, Some(json!({"action": st.action("delete_server", &[(id, "server")])})))
        } else if *coll == "load_balancers" {
            let action = st.action("delete_load_balancer", &[(id, "load_balancer")]);
            ok(200, Some(json!({ "action": action })))
        } else {
            ok(204, None)
        }
    }
}
