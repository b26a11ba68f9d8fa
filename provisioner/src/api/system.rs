//! Unauthenticated operational endpoints: liveness, readiness, Prometheus
//! metrics, and the OpenAPI document.
//!
//! `/readyz` turns 200 only once startup recovery has started every in-flight
//! job *and* the store answers a query, so a load balancer never sends work
//! to a daemon that is still replaying its state. The job gauge is refreshed
//! from the store at scrape time (constant work, no cache to go stale).

use std::sync::Mutex;
use std::sync::atomic::Ordering;

use axum::Json;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use cz_state::JobStatus;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;
use serde_json::json;
use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
use utoipa::{Modify, OpenApi};

use super::{ApiError, ApiState};

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct HttpLabels {
    method: String,
    route: String,
    status: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct StatusLabels {
    status: String,
}

/// The daemon's Prometheus metrics.
pub struct Metrics {
    registry: Mutex<Registry>,
    http: Family<HttpLabels, Counter>,
    jobs: Family<StatusLabels, Gauge>,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    pub fn new() -> Self {
        let mut registry = Registry::with_prefix("catalyst_zero");
        let http = Family::<HttpLabels, Counter>::default();
        let jobs = Family::<StatusLabels, Gauge>::default();
        registry.register(
            "http_requests",
            "HTTP requests by method, route and status",
            http.clone(),
        );
        registry.register(
            "jobs",
            "Jobs by status (read from the store at scrape time)",
            jobs.clone(),
        );
        Metrics { registry: Mutex::new(registry), http, jobs }
    }

    pub fn count_request(&self, method: &str, route: &str, status: u16) {
        self.http
            .get_or_create(&HttpLabels {
                method: method.to_owned(),
                route: route.to_owned(),
                status: status.to_string(),
            })
            .inc();
    }

    fn set_jobs(&self, counts: &[(JobStatus, i64)]) {
        for (s, n) in counts {
            self.jobs.get_or_create(&StatusLabels { status: s.to_string() }).set(*n);
        }
    }

    fn encode(&self) -> Result<String, std::fmt::Error> {
        let mut out = String::new();
        prometheus_client::encoding::text::encode(
            &mut out,
            &self.registry.lock().expect("metrics lock"),
        )?;
        Ok(out)
    }
}

/// Liveness: the process answers.
#[utoipa::path(get, path = "/healthz", tag = "ops", responses((status = 200, description = "Alive")))]
pub async fn healthz() -> Json<serde_json::Value> {
    Json(json!({ "status": "ok" }))
}

/// Readiness: recovery done and the store answers.
#[utoipa::path(get, path = "/readyz", tag = "ops",
    responses((status = 200, description = "Ready"), (status = 503, description = "Starting or the store is down")))]
pub async fn readyz(State(st): State<ApiState>) -> Response {
    if !st.ready.load(Ordering::SeqCst) {
        return (StatusCode::SERVICE_UNAVAILABLE, Json(json!({ "status": "recovering" })))
            .into_response();
    }
    match st.store.list_sovereigns().await {
        Ok(_) => Json(json!({ "status": "ready" })).into_response(),
        Err(e) => {
            tracing::warn!(
                error = &e as &dyn std::error::Error,
                "Readiness check: the store does not answer."
            );
            (StatusCode::SERVICE_UNAVAILABLE, Json(json!({ "status": "store unavailable" })))
                .into_response()
        }
    }
}

/// Prometheus metrics (OpenMetrics text).
#[utoipa::path(get, path = "/metrics", tag = "ops", responses((status = 200, description = "OpenMetrics text", content_type = "application/openmetrics-text")))]
pub async fn metrics(State(st): State<ApiState>) -> Result<Response, ApiError> {
    let jobs = st.store.list_jobs(None).await.map_err(ApiError::store("count jobs"))?;
    let counts: Vec<(JobStatus, i64)> = JobStatus::ALL
        .iter()
        .map(|s| (*s, jobs.iter().filter(|j| j.status == *s).count() as i64))
        .collect();
    st.metrics.set_jobs(&counts);
    let text = st
        .metrics
        .encode()
        .map_err(|e| ApiError::Internal { what: "encode metrics", source: Box::new(e) })?;
    Ok((
        [(header::CONTENT_TYPE, "application/openmetrics-text; version=1.0.0; charset=utf-8")],
        text,
    )
        .into_response())
}

/// This document.
#[utoipa::path(get, path = "/openapi.json", tag = "ops", responses((status = 200, description = "OpenAPI document")))]
pub async fn openapi() -> Json<utoipa::openapi::OpenApi> {
    Json(ApiDoc::openapi())
}

struct BearerAuth;

impl Modify for BearerAuth {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        let components = openapi.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "bearer",
            SecurityScheme::Http(HttpBuilder::new().scheme(HttpAuthScheme::Bearer).build()),
        );
    }
}

/// The OpenAPI document of the whole API.
#[derive(OpenApi)]
#[openapi(
    info(title = "Catalyst-Zero", description = "Provisions Sovereigns: jobs, phases, steps, operator verbs."),
    paths(
        super::sovereigns::submit, super::sovereigns::list, super::sovereigns::show,
        super::sovereigns::add_region, super::sovereigns::destroy, super::escrow::escrow,
        super::jobs::list, super::jobs::show, super::events::events,
        super::jobs::retry, super::jobs::skip, super::jobs::resume, super::jobs::abandon,
        super::jobs::cancel, super::jobs::audit,
        healthz, readyz, metrics, openapi,
    ),
    components(schemas(
        cz_phases::request::ProvisionRequest, cz_phases::request::AddRegionRequest,
        cz_phases::request::FieldError, cz_engine::FaultPlan,
        super::views::SubmitResponse, super::views::ValidationErrors, super::views::ErrorBody,
        super::views::SovereignList, super::views::SovereignDetail, super::views::JobList,
        super::views::EscrowView, super::views::EscrowBlob,
        super::views::JobDetail, super::views::EventPage, super::views::EventView,
        super::views::VerbResponse, super::jobs::RetryBody, super::jobs::SkipBody,
        super::views::AuditList, super::views::AuditView,
    )),
    modifiers(&BearerAuth),
    tags(
        (name = "sovereigns", description = "Submit, add regions, destroy"),
        (name = "jobs", description = "Jobs, their steps and event streams"),
        (name = "verbs", description = "Operator verbs (operator token only)"),
        (name = "ops", description = "Health, readiness, metrics, this document"),
    )
)]
pub struct ApiDoc;
