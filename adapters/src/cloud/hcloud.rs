//! [`HcloudClient`]: the Hetzner Cloud API v1 over REST (reqwest).
//!
//! - Every request first takes a token from the project's [`RateBudget`]
//!   (shared by every client of the same token, see [`BudgetRegistry`]);
//!   every response's `RateLimit-Remaining`/`RateLimit-Reset` is fed back.
//! - 429 is retried here, a bounded number of times, after `Retry-After`
//!   if the server names one, else after the time the missing tokens take
//!   to refill at the rate the `RateLimit-*` headers imply (one second for
//!   one request at Hetzner's 3,600/hour), never until `RateLimit-Reset`
//!   (the bucket *full*); everything else is returned to the engine,
//!   classified by [`cause_of`].
//! - Lists follow `meta.pagination.next_page` with `per_page=50`.
//! - Actions are awaited in batches: one `GET /v1/actions?id=…&id=…` per
//!   round for every action still running ([`HcloudClient::wait_actions`]),
//!   not one request per action.
//! - Error messages carry Hetzner's code and message, never the token.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use async_trait::async_trait;
use cz_state::SecretString;
use reqwest::header::HeaderMap;
use reqwest::{Method, StatusCode, Url};
use serde_json::{Value, json};

use super::budget::{BudgetRegistry, RateBudget};
use crate::cloud::selector::Selector;
use crate::{
    AdapterResult, CloudApi, CloudObject, Limit, LoadBalancerType, ProjectLimits, ServerAction,
    ServerType, TokenScope,
};
use cz_engine::{Cause, StepError, System};

/// The public API endpoint (paths below it start with `/v1/`).
pub const DEFAULT_BASE_URL: &str = "https://api.hetzner.cloud";

/// Page size used for every list (Hetzner's maximum).
pub const PER_PAGE: u32 = 50;

/// Object kinds and their collection (path segment and JSON key).
pub const KINDS: [(&str, &str); 8] = [
    ("server", "servers"),
    ("network", "networks"),
    ("firewall", "firewalls"),
    ("load_balancer", "load_balancers"),
    ("ssh_key", "ssh_keys"),
    ("placement_group", "placement_groups"),
    ("volume", "volumes"),
    ("primary_ip", "primary_ips"),
];

/// The collection of an object kind.
pub fn collection_of(kind: &str) -> Option<&'static str> {
    KINDS.iter().find(|(k, _)| *k == kind).map(|(_, c)| *c)
}

/// The general error codes of the API, with the status they come with.
pub const KNOWN_CODES: &[(&str, u16)] = &[
    ("unauthorized", 401),
    ("forbidden", 403),
    ("token_readonly", 403),
    ("protected", 403),
    ("resource_limit_exceeded", 403),
    ("not_found", 404),
    ("uniqueness_error", 409),
    ("conflict", 409),
    ("invalid_input", 400),
    ("json_error", 400),
    ("resource_unavailable", 412),
    ("resource_unavailable", 503),
    ("locked", 423),
    ("rate_limit_exceeded", 429),
    ("server_error", 500),
    ("service_error", 503),
    ("maintenance", 503),
    ("timeout", 504),
];

/// Resource-specific and legacy codes [`cause_of`] also knows (from
/// hcloud-go's list); their status varies, the code decides.
pub const OTHER_CODES: &[&str] = &[
    "limit_reached",
    "unknown_error",
    "robot_unavailable",
    "placement_error",
    "resource_in_use",
    "no_space_left_in_location",
    "ip_not_available",
    "no_subnet_available",
    "resource_locked",
    "invalid_server_type",
    "invalid_load_balancer_type",
    "unsupported_error",
    "deprecated_api_endpoint",
];

/// The one mapping of a Hetzner error code to a [`Cause`] (and so, through
/// `StepError::class`/`runbook`, to a class and a runbook page).
///
/// - `rate_limit_exceeded` (legacy `limit_reached`) → RateLimited
///   (transient; 429s are first retried in the client);
/// - `resource_unavailable` (412/503: the type or location has no capacity
///   right now), `placement_error`, `server_error`, `unknown_error`,
///   `service_error`, `maintenance`, `robot_unavailable`, `timeout`,
///   `conflict` (the resource changed during the request: Hetzner says
///   retry), `locked` (another action is running on it) and
///   `resource_in_use` (e.g. a firewall still applied while a sweep
///   deletes its servers) → Unavailable (transient);
/// - `unauthorized`, `forbidden`, `token_readonly` → Unauthorized;
/// - `resource_limit_exceeded`, `no_space_left_in_location`,
///   `ip_not_available`, `no_subnet_available` → QuotaExceeded;
/// - `uniqueness_error` (the name is taken by an object that is not ours),
///   `protected` (delete/rebuild protection is on) and `resource_locked`
///   (Hetzner: contact support) → Conflict;
/// - `not_found` → NotFound;
/// - `invalid_input`, `json_error`, `invalid_server_type`,
///   `invalid_load_balancer_type`, `unsupported_error`,
///   `deprecated_api_endpoint` → Invalid.
///
/// An unknown code is classified by its status: 401/403 Unauthorized,
/// 404 NotFound, 409 Conflict, 429 RateLimited, 5xx Unavailable, other 4xx
/// Invalid.
pub fn cause_of(code: &str, status: u16) -> Cause {
    match code {
        "rate_limit_exceeded" | "limit_reached" => Cause::RateLimited,
        "resource_unavailable"
        | "placement_error"
        | "server_error"
        | "unknown_error"
        | "service_error"
        | "maintenance"
        | "robot_unavailable"
        | "timeout"
        | "conflict"
        | "locked"
        | "resource_in_use" => Cause::Unavailable,
        "unauthorized" | "forbidden" | "token_readonly" => Cause::Unauthorized,
        "resource_limit_exceeded"
        | "no_space_left_in_location"
        | "ip_not_available"
        | "no_subnet_available" => Cause::QuotaExceeded,
        "uniqueness_error" | "protected" | "resource_locked" => Cause::Conflict,
        "not_found" => Cause::NotFound,
        "invalid_input"
        | "json_error"
        | "invalid_server_type"
        | "invalid_load_balancer_type"
        | "unsupported_error"
        | "deprecated_api_endpoint" => Cause::Invalid,
        _ => match status {
            401 | 403 => Cause::Unauthorized,
            404 => Cause::NotFound,
            409 => Cause::Conflict,
            429 => Cause::RateLimited,
            500..=599 => Cause::Unavailable,
            _ => Cause::Invalid,
        },
    }
}

/// Project limits Hetzner does not publish through the API.
///
/// Hetzner Cloud has **no quota endpoint**: [`HcloudClient::limits`]
/// counts `used` by listing and takes `max` from here. The defaults are
/// what a new project typically gets ("typically 10 servers / 1 LB";
/// networks and placement groups are assumed); set the project's real
/// limits (Console → project → Limits) when they were raised.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ProjectQuota {
    pub servers: u32,
    pub load_balancers: u32,
    pub networks: u32,
    pub placement_groups: u32,
}

impl Default for ProjectQuota {
    fn default() -> Self {
        ProjectQuota { servers: 10, load_balancers: 1, networks: 50, placement_groups: 50 }
    }
}

/// How the client retries 429s.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RetryConfig {
    /// Attempts per request, the first included.
    pub max_attempts: u32,
    /// A 429 asking us to wait longer than this is returned, not retried.
    pub max_backoff: Duration,
    /// First backoff when the server names no wait (doubles per attempt).
    pub base_backoff: Duration,
}

impl Default for RetryConfig {
    fn default() -> Self {
        RetryConfig {
            max_attempts: 5,
            max_backoff: Duration::from_secs(60),
            base_backoff: Duration::from_secs(1),
        }
    }
}

/// How the client waits for actions.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PollConfig {
    /// Between two rounds (Hetzner's own clients: 500 ms).
    pub interval: Duration,
    /// The longest a wait lasts before it fails (transient).
    pub timeout: Duration,
}

impl Default for PollConfig {
    fn default() -> Self {
        PollConfig { interval: Duration::from_millis(500), timeout: Duration::from_secs(600) }
    }
}

/// A Hetzner API error answer.
#[derive(Clone, Debug, PartialEq, Eq)]
struct ApiError {
    status: u16,
    code: String,
    message: String,
}

#[derive(Debug)]
enum CallError {
    Api(ApiError),
    Step(StepError),
}

impl CallError {
    fn into_step(self, op: &str) -> StepError {
        match self {
            CallError::Step(e) => e,
            CallError::Api(a) => StepError::adapter(
                System::Cloud,
                op,
                cause_of(&a.code, a.status),
                format!("{} (HTTP {}): {}", a.code, a.status, a.message),
            ),
        }
    }
}

/// The Hetzner Cloud API client.
#[derive(Clone, Debug)]
pub struct HcloudClient {
    base_url: Url,
    http: reqwest::Client,
    budgets: Arc<BudgetRegistry>,
    quota: ProjectQuota,
    retry: RetryConfig,
    poll: PollConfig,
}

impl HcloudClient {
    /// A client of the API at `base_url` (e.g. [`DEFAULT_BASE_URL`]) drawing
    /// on `budgets` (use [`BudgetRegistry::global`] in the daemon).
    pub fn new(base_url: &str, budgets: Arc<BudgetRegistry>) -> Result<HcloudClient, StepError> {
        let http = reqwest::Client::builder()
            .timeout(Duration::from_secs(30))
            .connect_timeout(Duration::from_secs(10))
            .user_agent(concat!("catalyst-zero/", env!("CARGO_PKG_VERSION")))
            .build()
            .map_err(|e| StepError::internal(format!("building the HTTP client: {e}")))?;
        Self::with_http(base_url, http, budgets)
    }

    /// As [`new`](Self::new) with a caller-built reqwest client (timeouts).
    pub fn with_http(
        base_url: &str,
        http: reqwest::Client,
        budgets: Arc<BudgetRegistry>,
    ) -> Result<HcloudClient, StepError> {
        let base_url = Url::parse(base_url).map_err(|e| {
            StepError::adapter(
                System::Cloud,
                "configure",
                Cause::Invalid,
                format!("invalid base URL `{base_url}`: {e}"),
            )
        })?;
        Ok(HcloudClient {
            base_url,
            http,
            budgets,
            quota: ProjectQuota::default(),
            retry: RetryConfig::default(),
            poll: PollConfig::default(),
        })
    }

    pub fn with_quota(mut self, quota: ProjectQuota) -> Self {
        self.quota = quota;
        self
    }

    pub fn with_retry(mut self, retry: RetryConfig) -> Self {
        self.retry = retry;
        self
    }

    pub fn with_poll(mut self, poll: PollConfig) -> Self {
        self.poll = poll;
        self
    }

    /// Waits until every action in `ids` has finished: one
    /// `GET /v1/actions?id=…&id=…` per round (up to 50 ids a page) for the
    /// ones still running. An action that ends in `error` fails the wait
    /// with its code, classified like any API error; one still running
    /// after [`PollConfig::timeout`] fails it as `Unavailable`.
    pub async fn wait_actions(
        &self,
        token: &SecretString,
        op: &str,
        ids: &[i64],
    ) -> AdapterResult<()> {
        let mut pending: Vec<i64> = ids.to_vec();
        pending.sort_unstable();
        pending.dedup();
        let started = tokio::time::Instant::now();
        loop {
            let mut still = Vec::new();
            for chunk in pending.chunks(PER_PAGE as usize) {
                let mut query: Vec<(&str, String)> =
                    chunk.iter().map(|id| ("id", id.to_string())).collect();
                query.push(("per_page", PER_PAGE.to_string()));
                let v = self
                    .call(token, op, Method::GET, "/v1/actions", &query, None)
                    .await
                    .map_err(|e| e.into_step(op))?;
                let actions = v["actions"].as_array().cloned().unwrap_or_default();
                for id in chunk {
                    let Some(a) = actions.iter().find(|a| a["id"] == *id) else {
                        return Err(malformed(op, format!("action {id} is not in the answer")));
                    };
                    match a["status"].as_str() {
                        Some("success") => {}
                        Some("running") => still.push(*id),
                        Some("error") => {
                            let code = a.pointer("/error/code").and_then(Value::as_str);
                            let code = code.unwrap_or("action_failed");
                            let message =
                                a.pointer("/error/message").and_then(Value::as_str).unwrap_or("");
                            return Err(StepError::adapter(
                                System::Cloud,
                                op,
                                cause_of(code, 422),
                                format!(
                                    "{code}: action {id} ({}) failed: {message}",
                                    a["command"].as_str().unwrap_or("?")
                                ),
                            ));
                        }
                        other => {
                            return Err(malformed(op, format!("action {id} has status {other:?}")));
                        }
                    }
                }
            }
            if still.is_empty() {
                return Ok(());
            }
            if started.elapsed() >= self.poll.timeout {
                return Err(StepError::adapter(
                    System::Cloud,
                    op,
                    Cause::Unavailable,
                    format!(
                        "actions {still:?} still running after {}s",
                        self.poll.timeout.as_secs()
                    ),
                ));
            }
            pending = still;
            tokio::time::sleep(self.poll.interval).await;
        }
    }

    /// The budget this client draws on for `token`.
    pub fn budget(&self, token: &SecretString) -> Arc<RateBudget> {
        self.budgets.for_token(token)
    }

    fn url(&self, path: &str, query: &[(&str, String)]) -> Url {
        let mut url = self.base_url.clone();
        let base = url.path().trim_end_matches('/').to_owned();
        url.set_path(&format!("{base}{path}"));
        if !query.is_empty() {
            let mut q = url.query_pairs_mut();
            for (k, v) in query {
                q.append_pair(k, v);
            }
        }
        url
    }

    /// One API call: budget, send, observe rate headers, retry 429s.
    #[tracing::instrument(name = "adapter", level = "info", skip_all, fields(system = "cloud", op = %op))]
    async fn call(
        &self,
        token: &SecretString,
        op: &str,
        method: Method,
        path: &str,
        query: &[(&str, String)],
        body: Option<&Value>,
    ) -> Result<Value, CallError> {
        let budget = self.budgets.for_token(token);
        let url = self.url(path, query);
        let mut attempt = 0;
        loop {
            attempt += 1;
            budget.acquire().await.map_err(CallError::Step)?;
            let mut req =
                self.http.request(method.clone(), url.clone()).bearer_auth(token.expose());
            if let Some(b) = body {
                req = req.json(b);
            }
            let resp = req.send().await.map_err(|e| {
                CallError::Step(StepError::adapter(
                    System::Cloud,
                    op,
                    Cause::Network,
                    format!("{method} {path}: {}", without_url(e)),
                ))
            })?;
            let status = resp.status();
            let headers = resp.headers().clone();
            observe_headers(&budget, &headers);
            let bytes = resp.bytes().await.map_err(|e| {
                CallError::Step(StepError::adapter(
                    System::Cloud,
                    op,
                    Cause::Network,
                    format!("{method} {path}: reading the body: {}", without_url(e)),
                ))
            })?;
            if status.is_success() {
                if bytes.is_empty() {
                    return Ok(Value::Null);
                }
                return serde_json::from_slice(&bytes).map_err(|e| {
                    CallError::Step(StepError::adapter(
                        System::Cloud,
                        op,
                        Cause::Unavailable,
                        format!("{method} {path}: the answer is not JSON: {e}"),
                    ))
                });
            }
            let err = api_error(status, &bytes);
            if status == StatusCode::TOO_MANY_REQUESTS && attempt < self.retry.max_attempts {
                let wait = retry_wait(&headers).unwrap_or_else(|| {
                    self.retry.base_backoff.saturating_mul(1 << (attempt - 1).min(16))
                });
                if wait <= self.retry.max_backoff {
                    tracing::info!(
                        op,
                        attempt,
                        wait_s = wait.as_secs_f64(),
                        "cloud API said 429; backing off"
                    );
                    tokio::time::sleep(wait).await;
                    continue;
                }
            }
            return Err(CallError::Api(err));
        }
    }

    async fn get(
        &self,
        token: &SecretString,
        op: &str,
        path: &str,
        query: &[(&str, String)],
    ) -> AdapterResult<Value> {
        self.call(token, op, Method::GET, path, query, None).await.map_err(|e| e.into_step(op))
    }

    /// Every item of a collection, following `next_page`.
    async fn list_all(
        &self,
        token: &SecretString,
        op: &str,
        collection: &str,
        filter: &[(&str, String)],
    ) -> AdapterResult<Vec<Value>> {
        let mut out = Vec::new();
        let mut page: u64 = 1;
        loop {
            let mut q: Vec<(&str, String)> = filter.to_vec();
            q.push(("page", page.to_string()));
            q.push(("per_page", PER_PAGE.to_string()));
            let v = self.get(token, op, &format!("/v1/{collection}"), &q).await?;
            let items = v.get(collection).and_then(Value::as_array).ok_or_else(|| {
                StepError::adapter(
                    System::Cloud,
                    op,
                    Cause::Unavailable,
                    format!("GET /v1/{collection}: the answer has no `{collection}` array"),
                )
            })?;
            out.extend(items.iter().cloned());
            match v.pointer("/meta/pagination/next_page").and_then(Value::as_u64) {
                Some(next) if next > page && page < 10_000 => page = next,
                _ => return Ok(out),
            }
        }
    }

    /// How many objects a collection holds: one request (`per_page=1`,
    /// `total_entries`), or a full listing if the total is absent.
    async fn count(&self, token: &SecretString, collection: &str) -> AdapterResult<u32> {
        let q = [("page", "1".to_owned()), ("per_page", "1".to_owned())];
        let v = self.get(token, "limits", &format!("/v1/{collection}"), &q).await?;
        if let Some(n) = v.pointer("/meta/pagination/total_entries").and_then(Value::as_u64) {
            return Ok(u32::try_from(n).unwrap_or(u32::MAX));
        }
        Ok(self.list_all(token, "limits", collection, &[]).await?.len() as u32)
    }

    /// The object of `kind` named `name`, if one exists.
    pub async fn find(
        &self,
        token: &SecretString,
        kind: &str,
        name: &str,
    ) -> AdapterResult<Option<CloudObject>> {
        let op = "find";
        let collection = known_collection(op, kind)?;
        let items = self.list_all(token, op, collection, &[("name", name.to_owned())]).await?;
        Ok(items.iter().filter_map(|i| object_of(kind, i)).find(|o| o.name == name))
    }

    /// `POST /v1/{collection}` with `body` (the API's create body for that
    /// kind); returns the created object. Not on [`CloudApi`]: steps create
    /// objects through tofu, only the offline stand-in module
    /// (`hcloud-shim`) calls this.
    pub async fn create(
        &self,
        token: &SecretString,
        kind: &str,
        body: &Value,
    ) -> AdapterResult<CloudObject> {
        let op = "create";
        let collection = known_collection(op, kind)?;
        let v = self
            .call(token, op, Method::POST, &format!("/v1/{collection}"), &[], Some(body))
            .await
            .map_err(|e| e.into_step(op))?;
        let obj = v.get(kind).and_then(|o| object_of(kind, o)).ok_or_else(|| {
            malformed(op, format!("POST /v1/{collection}: the answer has no `{kind}` object"))
        })?;
        // The create and what follows it (a server's start), together.
        self.wait_actions(token, op, &running_actions(&v)).await?;
        Ok(obj)
    }

    async fn list_kinds(
        &self,
        token: &SecretString,
        op: &str,
        filter: &[(&str, String)],
    ) -> AdapterResult<Vec<CloudObject>> {
        let mut out = Vec::new();
        for (kind, collection) in KINDS {
            for item in self.list_all(token, op, collection, filter).await? {
                out.push(object_of(kind, &item).ok_or_else(|| {
                    StepError::adapter(
                        System::Cloud,
                        op,
                        Cause::Unavailable,
                        format!("a {kind} in the answer has no id/name"),
                    )
                })?);
            }
        }
        Ok(out)
    }
}

/// A reqwest error's text without its URL (kept short; tokens are only
/// ever in headers, never in URLs).
fn without_url(e: reqwest::Error) -> String {
    let kind = if e.is_timeout() {
        "timed out"
    } else if e.is_connect() {
        "connection failed"
    } else {
        "request failed"
    };
    format!("{kind}: {}", cz_engine::chain(&e.without_url()))
}

/// The ids of the unfinished actions in an answer (`action`, `actions`,
/// `next_actions`).
fn running_actions(v: &Value) -> Vec<i64> {
    let one = v.get("action").into_iter();
    let many = ["actions", "next_actions"]
        .into_iter()
        .filter_map(|k| v.get(k).and_then(Value::as_array))
        .flatten();
    one.chain(many).filter(|a| a["status"] != "success").filter_map(|a| a["id"].as_i64()).collect()
}

fn header_u64(headers: &HeaderMap, name: &str) -> Option<u64> {
    headers.get(name)?.to_str().ok()?.trim().parse().ok()
}

fn observe_headers(budget: &RateBudget, headers: &HeaderMap) {
    if let Some(remaining) = header_u64(headers, "ratelimit-remaining") {
        budget.observe(u32::try_from(remaining).unwrap_or(u32::MAX));
    }
}

/// How long a 429 asks us to wait: `Retry-After` (seconds) if given, else
/// the deficit: the one token this request lacks, at the refill rate the
/// headers imply ((limit - remaining) tokens come back by `RateLimit-Reset`;
/// Hetzner: 1/s). `None` without rate headers (the caller backs off).
pub fn retry_wait(headers: &HeaderMap) -> Option<Duration> {
    if let Some(s) = header_u64(headers, "retry-after") {
        return Some(Duration::from_secs(s));
    }
    let limit = header_u64(headers, "ratelimit-limit")? as f64;
    let remaining = header_u64(headers, "ratelimit-remaining")? as f64;
    let reset = header_u64(headers, "ratelimit-reset")?;
    let now = SystemTime::now().duration_since(UNIX_EPOCH).unwrap_or_default().as_secs_f64();
    let until_full = (reset as f64 - now).max(1.0);
    let rate = ((limit - remaining) / until_full).max(f64::MIN_POSITIVE);
    let deficit = (1.0 - remaining).max(0.0);
    Some(Duration::from_secs_f64((deficit / rate).clamp(0.05, until_full)))
}

fn api_error(status: StatusCode, body: &[u8]) -> ApiError {
    let v: Value = serde_json::from_slice(body).unwrap_or(Value::Null);
    let code = v.pointer("/error/code").and_then(Value::as_str);
    let message = v.pointer("/error/message").and_then(Value::as_str);
    ApiError {
        status: status.as_u16(),
        code: code.unwrap_or("unknown").to_owned(),
        message: message.map(str::to_owned).unwrap_or_else(|| {
            let text = String::from_utf8_lossy(body);
            let text: String = text.chars().take(200).collect();
            format!("{status} without a Hetzner error body: {text}")
        }),
    }
}

fn labels_of(item: &Value) -> BTreeMap<String, String> {
    item.get("labels")
        .and_then(Value::as_object)
        .map(|m| m.iter().filter_map(|(k, v)| Some((k.clone(), v.as_str()?.to_owned()))).collect())
        .unwrap_or_default()
}

/// A listed item as a [`CloudObject`], with the attributes steps use
/// (`ipv4`, `private_ip`, `location`, `status`, `server_type`, `ip`).
pub fn object_of(kind: &str, item: &Value) -> Option<CloudObject> {
    let id = item.get("id")?.as_i64()?;
    let name = item.get("name")?.as_str()?.to_owned();
    let mut attrs = serde_json::Map::new();
    let mut put = |k: &str, v: Option<&Value>| {
        if let Some(v) = v.filter(|v| !v.is_null()) {
            attrs.insert(k.to_owned(), v.clone());
        }
    };
    put("ipv4", item.pointer("/public_net/ipv4/ip"));
    put("ipv6", item.pointer("/public_net/ipv6/ip"));
    put("private_ip", item.pointer("/private_net/0/ip"));
    put("status", item.get("status"));
    put("server_type", item.pointer("/server_type/name"));
    put("load_balancer_type", item.pointer("/load_balancer_type/name"));
    put("ip_range", item.get("ip_range"));
    put("ip", item.get("ip"));
    put("type", item.get("type"));
    put("size", item.get("size"));
    put("created", item.get("created"));
    let location = item
        .pointer("/location/name")
        .or_else(|| item.pointer("/datacenter/location/name"))
        .or_else(|| item.pointer("/assignee_location/name"));
    put("location", location);
    Some(CloudObject {
        kind: kind.to_owned(),
        id,
        name,
        labels: labels_of(item),
        attrs: Value::Object(attrs),
    })
}

fn price(v: &Value, field: &str) -> Option<f64> {
    let p = v.get(field)?.get("gross")?;
    match p {
        Value::String(s) => s.trim().parse().ok(),
        Value::Number(n) => n.as_f64(),
        _ => None,
    }
}

/// `prices[]` as location → (hourly, monthly) gross.
pub fn prices_of(item: &Value) -> Result<BTreeMap<String, (f64, f64)>, String> {
    let mut out = BTreeMap::new();
    for p in item.get("prices").and_then(Value::as_array).map(Vec::as_slice).unwrap_or_default() {
        let loc = p.get("location").and_then(Value::as_str).ok_or("a price has no location")?;
        let hourly =
            price(p, "price_hourly").ok_or_else(|| format!("bad price_hourly at {loc}"))?;
        let monthly =
            price(p, "price_monthly").ok_or_else(|| format!("bad price_monthly at {loc}"))?;
        out.insert(loc.to_owned(), (hourly, monthly));
    }
    Ok(out)
}

fn known_collection(op: &str, kind: &str) -> AdapterResult<&'static str> {
    collection_of(kind).ok_or_else(|| {
        StepError::adapter(
            System::Cloud,
            op,
            Cause::Invalid,
            format!("invalid_input: unknown object kind `{kind}`"),
        )
    })
}

fn malformed(op: &str, msg: String) -> StepError {
    StepError::adapter(System::Cloud, op, Cause::Unavailable, format!("malformed answer: {msg}"))
}

#[async_trait]
impl CloudApi for HcloudClient {
    /// Hetzner has no "who am I": a write that cannot have a billable
    /// effect proves the scope. `POST /v1/ssh_keys` with an invalid public
    /// key answers `invalid_input` to a read-write token and `forbidden`
    /// (or `token_readonly`) to a read-only one.
    async fn token_scope(&self, token: &SecretString) -> AdapterResult<TokenScope> {
        let op = "token_scope";
        let body = json!({
            "name": "catalyst-zero-scope-probe",
            "public_key": "not-a-public-key (catalyst-zero token scope probe)",
            "labels": {"catalyst.io/probe": "token-scope"},
        });
        match self.call(token, op, Method::POST, "/v1/ssh_keys", &[], Some(&body)).await {
            // Refused on its content, so past the permission check.
            Err(CallError::Api(a)) if a.code == "invalid_input" || a.code == "uniqueness_error" => {
                Ok(TokenScope::ReadWrite)
            }
            Err(CallError::Api(a)) if a.code == "forbidden" || a.code == "token_readonly" => {
                Ok(TokenScope::Read)
            }
            Err(e) => Err(e.into_step(op)),
            Ok(created) => {
                // The API accepted the key after all: remove it again.
                if let Some(id) = created.pointer("/ssh_key/id").and_then(Value::as_i64) {
                    self.call(token, op, Method::DELETE, &format!("/v1/ssh_keys/{id}"), &[], None)
                        .await
                        .map_err(|e| e.into_step(op))?;
                }
                Ok(TokenScope::ReadWrite)
            }
        }
    }

    /// Hetzner has no quota endpoint: `used` is counted (one request per
    /// kind), `max` comes from the configured [`ProjectQuota`].
    async fn limits(&self, token: &SecretString) -> AdapterResult<ProjectLimits> {
        let q = self.quota;
        Ok(ProjectLimits {
            servers: Limit { used: self.count(token, "servers").await?, max: q.servers },
            load_balancers: Limit {
                used: self.count(token, "load_balancers").await?,
                max: q.load_balancers,
            },
            networks: Limit { used: self.count(token, "networks").await?, max: q.networks },
            placement_groups: Limit {
                used: self.count(token, "placement_groups").await?,
                max: q.placement_groups,
            },
        })
    }

    /// The names of `GET /v1/locations` (whether a type is orderable there
    /// is what `server_type(..).prices` says).
    async fn locations(&self, token: &SecretString) -> AdapterResult<Vec<String>> {
        let items = self.list_all(token, "locations", "locations", &[]).await?;
        items
            .iter()
            .map(|l| {
                l.get("name")
                    .and_then(Value::as_str)
                    .map(str::to_owned)
                    .ok_or_else(|| malformed("locations", "a location has no name".into()))
            })
            .collect()
    }

    async fn server_type(
        &self,
        token: &SecretString,
        name: &str,
    ) -> AdapterResult<Option<ServerType>> {
        let op = "server_type";
        let items = self.list_all(token, op, "server_types", &[("name", name.to_owned())]).await?;
        let Some(t) = items.iter().find(|t| t.get("name").and_then(Value::as_str) == Some(name))
        else {
            return Ok(None);
        };
        let deprecated = t.get("deprecated").and_then(Value::as_bool).unwrap_or(false)
            || t.get("deprecation").is_some_and(|d| !d.is_null());
        Ok(Some(ServerType {
            name: name.to_owned(),
            cores: t.get("cores").and_then(Value::as_u64).unwrap_or(0) as u32,
            memory_gb: t.get("memory").and_then(Value::as_f64).unwrap_or(0.0),
            deprecated,
            prices: prices_of(t).map_err(|m| malformed(op, m))?,
        }))
    }

    async fn load_balancer_type(
        &self,
        token: &SecretString,
        name: &str,
    ) -> AdapterResult<Option<LoadBalancerType>> {
        let op = "load_balancer_type";
        let items =
            self.list_all(token, op, "load_balancer_types", &[("name", name.to_owned())]).await?;
        let Some(t) = items.iter().find(|t| t.get("name").and_then(Value::as_str) == Some(name))
        else {
            return Ok(None);
        };
        Ok(Some(LoadBalancerType {
            name: name.to_owned(),
            max_targets: t.get("max_targets").and_then(Value::as_u64).unwrap_or(0) as u32,
            prices: prices_of(t).map_err(|m| malformed(op, m))?,
        }))
    }

    /// Lists the eight kinds with the selector (checked locally first, so
    /// a bad one costs no request).
    async fn list(&self, token: &SecretString, selector: &str) -> AdapterResult<Vec<CloudObject>> {
        Selector::parse(selector).map_err(|m| {
            StepError::adapter(
                System::Cloud,
                "list",
                Cause::Invalid,
                format!("invalid_input: label_selector `{selector}`: {m}"),
            )
        })?;
        let filter: Vec<(&str, String)> = if selector.trim().is_empty() {
            Vec::new()
        } else {
            vec![("label_selector", selector.to_owned())]
        };
        self.list_kinds(token, "list", &filter).await
    }

    async fn find_by_name(
        &self,
        token: &SecretString,
        name: &str,
    ) -> AdapterResult<Vec<CloudObject>> {
        let found = self.list_kinds(token, "find_by_name", &[("name", name.to_owned())]).await?;
        Ok(found.into_iter().filter(|o| o.name == name).collect())
    }

    /// `GET /v1/{collection}/{id}`, answered as `{"<kind>": object}`.
    async fn object(
        &self,
        token: &SecretString,
        kind: &str,
        id: i64,
    ) -> AdapterResult<Option<CloudObject>> {
        let op = "object";
        let collection = known_collection(op, kind)?;
        let path = format!("/v1/{collection}/{id}");
        match self.call(token, op, Method::GET, &path, &[], None).await {
            Ok(v) => {
                let item = v.get(kind).ok_or_else(|| malformed(op, format!("no `{kind}` key")))?;
                object_of(kind, item)
                    .map(Some)
                    .ok_or_else(|| malformed(op, format!("the {kind} has no id/name")))
            }
            Err(CallError::Api(a)) if a.status == 404 || a.code == "not_found" => Ok(None),
            Err(e) => Err(e.into_step(op)),
        }
    }

    async fn delete(&self, token: &SecretString, obj: &CloudObject) -> AdapterResult<()> {
        let op = "delete";
        let collection = collection_of(&obj.kind).ok_or_else(|| {
            StepError::adapter(
                System::Cloud,
                op,
                Cause::Invalid,
                format!("invalid_input: unknown object kind `{}`", obj.kind),
            )
        })?;
        let path = format!("/v1/{collection}/{}", obj.id);
        match self.call(token, op, Method::DELETE, &path, &[], None).await {
            // Gone when its action is done: a network cannot go while a
            // server in it is still being deleted.
            Ok(v) => self.wait_actions(token, op, &running_actions(&v)).await,
            Err(CallError::Api(a)) if a.status == 404 || a.code == "not_found" => Ok(()),
            Err(e) => Err(e.into_step(op)),
        }
    }

    /// `POST /v1/servers/{id}/actions/{action}`, then its action awaited.
    async fn server_action(
        &self,
        token: &SecretString,
        id: i64,
        action: ServerAction,
    ) -> AdapterResult<()> {
        let op = "server_action";
        let path = format!("/v1/servers/{id}/actions/{}", action.as_str());
        let v = self
            .call(token, op, Method::POST, &path, &[], Some(&json!({})))
            .await
            .map_err(|e| e.into_step(op))?;
        self.wait_actions(token, op, &running_actions(&v)).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unknown_codes_fall_back_to_the_status_class() {
        assert_eq!(cause_of("brand_new", 401), Cause::Unauthorized);
        assert_eq!(cause_of("brand_new", 404), Cause::NotFound);
        assert_eq!(cause_of("brand_new", 409), Cause::Conflict);
        assert_eq!(cause_of("brand_new", 429), Cause::RateLimited);
        assert_eq!(cause_of("brand_new", 502), Cause::Unavailable);
        assert_eq!(cause_of("brand_new", 422), Cause::Invalid);
    }

    #[test]
    fn prices_are_strings() {
        let t = json!({"prices": [{"location": "fsn1",
            "price_hourly": {"net": "0.0048", "gross": "0.0057"},
            "price_monthly": {"net": "2.9900", "gross": "3.5581"}}]});
        assert_eq!(prices_of(&t).unwrap()["fsn1"], (0.0057, 3.5581));
        let bad = json!({"prices": [{"location": "fsn1", "price_hourly": {"gross": "x"}}]});
        assert!(prices_of(&bad).is_err());
    }

    #[test]
    fn urls_keep_the_base_path() {
        let c = HcloudClient::new("http://127.0.0.1:1/api", Arc::new(BudgetRegistry::default()))
            .unwrap();
        let u = c.url("/v1/servers", &[("label_selector", "a in (b,c)".into())]);
        assert_eq!(u.as_str(), "http://127.0.0.1:1/api/v1/servers?label_selector=a+in+%28b%2Cc%29");
    }
}
