//! The HTTP API (`docs/api.md`), versioned under `/v1`.
//!
//! [`router`] is a pure function of [`ApiState`]: tests drive it with
//! `tower::ServiceExt::oneshot` against a real store in a temporary
//! directory, without binding a socket.
//!
//! Authentication is a bearer token with two scopes. The operator token may
//! do everything; the wizard token (the public wizard's backend) may submit
//! and read but not run verbs or destroy. Tokens are compared in constant
//! time (on their SHA-256 digests, so the length does not leak either).
//! Health, readiness, metrics and the OpenAPI document need no token: they
//! carry no tenant data and are what load balancers and scrapers reach.
//! The operator console ([`console`]) reaches the same handlers with a
//! session cookie instead of a bearer token, CSRF-checked on every verb.
//!
//! Request bodies are taken as raw bytes and parsed here, so that every
//! rejection (malformed JSON, wrong content type, unknown field, invalid
//! value) comes back in the one `422 {"errors": [{path, message}]}` shape,
//! and so the idempotency key can be bound to the exact bytes submitted.
//! Bodies are never logged: they carry cloud tokens.

pub mod console;
mod error;
mod escrow;
mod events;
mod jobs;
mod sovereigns;
pub mod system;
#[cfg(test)]
mod tests;
pub mod tokens;
pub mod views;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use axum::Router;
use axum::extract::{FromRequestParts, MatchedPath, Request, State};
use axum::http::request::Parts;
use axum::http::{HeaderMap, header};
use axum::middleware::{self, Next};
use axum::response::Response;
use axum::routing::{get, post};
use cz_state::Store;
use sha2::{Digest, Sha256};

pub use error::ApiError;
pub use system::{ApiDoc, Metrics};

use crate::config::Config;
use crate::supervisor::Supervisor;

/// Everything a handler needs. Cheap to clone.
#[derive(Clone)]
pub struct ApiState {
    pub store: Store,
    pub supervisor: Arc<Supervisor>,
    pub config: Arc<Config>,
    pub metrics: Arc<Metrics>,
    /// Set once recovery has started every in-flight job.
    pub ready: Arc<AtomicBool>,
    /// Named operators (`tokens.file`), if configured.
    pub people: Option<Arc<tokens::TokenFile>>,
}

impl ApiState {
    pub fn new(store: Store, supervisor: Arc<Supervisor>, config: Arc<Config>) -> Self {
        ApiState {
            store,
            supervisor,
            config,
            metrics: Arc::new(Metrics::new()),
            ready: Arc::new(AtomicBool::new(false)),
            people: None,
        }
    }

    pub fn set_ready(&self) {
        self.ready.store(true, Ordering::SeqCst);
    }
}

/// Who calls, from the `Authorization: Bearer` header: a role and the
/// name the audit trail records (the person's, from the tokens file, or
/// the role's for the shared tokens).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Caller {
    pub role: tokens::Role,
    name: String,
}

impl Caller {
    pub fn operator(name: &str) -> Caller {
        Caller { role: tokens::Role::Operator, name: name.to_owned() }
    }

    pub fn wizard(name: &str) -> Caller {
        Caller { role: tokens::Role::Wizard, name: name.to_owned() }
    }

    /// The actor recorded in the audit trail.
    pub fn actor(&self) -> &str {
        &self.name
    }

    /// Refuses anything but an operator.
    pub fn require_operator(&self, what: &'static str) -> Result<(), ApiError> {
        match self.role {
            tokens::Role::Operator => Ok(()),
            tokens::Role::Wizard => Err(ApiError::Forbidden(what)),
        }
    }
}

/// Constant-time comparison of two secrets (digests first, so neither the
/// content nor the length leaks through timing).
pub fn token_eq(a: &str, b: &str) -> bool {
    let (da, db) = (Sha256::digest(a.as_bytes()), Sha256::digest(b.as_bytes()));
    da.iter().zip(db.iter()).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

impl FromRequestParts<ApiState> for Caller {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &ApiState) -> Result<Self, ApiError> {
        if parts.headers.get(header::AUTHORIZATION).is_none()
            && state.config.console.enabled
            && console::has_session_cookie(&parts.headers)
        {
            // The console: a session cookie, and CSRF checked on every verb.
            let p = console::presented(state, &parts.headers).await?;
            console::check_csrf(parts, &p)?;
            return Ok(p.caller);
        }
        let presented = parts
            .headers
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "))
            .map(str::trim)
            .filter(|t| !t.is_empty())
            .ok_or(ApiError::Unauthorized)?;
        caller_of_digest(state, &hex_sha256(presented.as_bytes())).ok_or(ApiError::Unauthorized)
    }
}

/// Who a token is, from its SHA-256 (hex): a named person from the tokens
/// file first, else the shared operator or wizard token. Every comparison
/// runs every time, in constant time. Bearer tokens and the console's
/// sessions (which keep only the digest of the token that opened them) are
/// both resolved here.
pub(crate) fn caller_of_digest(state: &ApiState, token_sha256: &str) -> Option<Caller> {
    let tokens = &state.config.tokens;
    let shared = |t: &Option<String>| {
        t.as_deref().is_some_and(|t| token_eq(&hex_sha256(t.as_bytes()), token_sha256))
    };
    let (op, wiz) = (shared(&tokens.operator), shared(&tokens.wizard));
    let person = state.people.as_ref().and_then(|f| f.find_digest(token_sha256));
    match (person, op, wiz) {
        (Some((name, role)), _, _) => Some(Caller { role, name }),
        (None, true, _) => Some(Caller::operator("operator")),
        (None, false, true) => Some(Caller::wizard("wizard")),
        (None, false, false) => None,
    }
}

/// Checks the content type of a JSON body (absent is accepted).
pub(crate) fn require_json(headers: &HeaderMap) -> Result<(), ApiError> {
    match headers.get(header::CONTENT_TYPE) {
        None => Ok(()),
        Some(v) => {
            let v = v.to_str().unwrap_or_default();
            let mime = v.split(';').next().unwrap_or_default().trim().to_ascii_lowercase();
            if mime == "application/json"
                || (mime.starts_with("application/") && mime.ends_with("+json"))
            {
                Ok(())
            } else {
                Err(ApiError::invalid(
                    "body",
                    format!("expected Content-Type: application/json, got `{v}`"),
                ))
            }
        }
    }
}

/// SHA-256 of bytes, hex: what an idempotency key is bound to (the raw
/// body), and how tokens and console sessions are kept and compared.
pub(crate) fn hex_sha256(bytes: &[u8]) -> String {
    hex::encode(Sha256::digest(bytes))
}

/// Counts every request by route and status.
async fn count_requests(State(state): State<ApiState>, req: Request, next: Next) -> Response {
    let route = req
        .extensions()
        .get::<MatchedPath>()
        .map(|p| p.as_str().to_owned())
        .unwrap_or_else(|| "unmatched".to_owned());
    let method = req.method().to_string();
    let resp = next.run(req).await;
    state.metrics.count_request(&method, &route, resp.status().as_u16());
    resp
}

/// The operator console's routes (`console.enabled`).
fn console_routes(state: &ApiState) -> Router<ApiState> {
    if !state.config.console.enabled {
        return Router::new();
    }
    Router::new()
        .route("/", get(console::root))
        .route("/ui", get(console::index))
        .route("/ui/", get(console::index))
        .route("/ui/app.js", get(console::app_js))
        .route("/ui/app.css", get(console::app_css))
        .route("/ui/runbooks/{name}", get(console::runbook))
        .route("/ui/session", get(console::whoami).post(console::sign_in).delete(console::sign_out))
}

/// The whole API.
pub fn router(state: ApiState) -> Router {
    Router::new()
        .merge(console_routes(&state))
        .route("/v1/sovereigns", post(sovereigns::submit).get(sovereigns::list))
        .route("/v1/sovereigns/{id}", get(sovereigns::show))
        .route("/v1/sovereigns/{id}/destroy", post(sovereigns::destroy))
        .route("/v1/sovereigns/{id}/regions", post(sovereigns::add_region))
        .route("/v1/sovereigns/{id}/escrow", get(escrow::escrow))
        .route("/v1/jobs", get(jobs::list))
        .route("/v1/audit", get(jobs::audit))
        .route("/v1/jobs/{id}", get(jobs::show))
        .route("/v1/jobs/{id}/events", get(events::events))
        .route("/v1/jobs/{id}/retry", post(jobs::retry))
        .route("/v1/jobs/{id}/skip", post(jobs::skip))
        .route("/v1/jobs/{id}/resume", post(jobs::resume))
        .route("/v1/jobs/{id}/abandon", post(jobs::abandon))
        .route("/v1/jobs/{id}/cancel", post(jobs::cancel))
        .route("/healthz", get(system::healthz))
        .route("/readyz", get(system::readyz))
        .route("/metrics", get(system::metrics))
        .route("/openapi.json", get(system::openapi))
        .route_layer(middleware::from_fn_with_state(state.clone(), count_requests))
        .layer(tower_http::trace::TraceLayer::new_for_http())
        .with_state(state)
}

/// `Query<T>` whose rejection is a 422 naming the query, like every other
/// invalid input (axum's own answers 400 in plain text).
pub struct Query<T>(pub T);

impl<T, S> axum::extract::FromRequestParts<S> for Query<T>
where
    T: serde::de::DeserializeOwned,
    S: Send + Sync,
{
    type Rejection = ApiError;

    async fn from_request_parts(
        parts: &mut axum::http::request::Parts,
        state: &S,
    ) -> Result<Self, Self::Rejection> {
        match axum::extract::Query::<T>::from_request_parts(parts, state).await {
            Ok(axum::extract::Query(v)) => Ok(Query(v)),
            Err(e) => Err(ApiError::invalid("query", e.body_text())),
        }
    }
}
