//! Unauthenticated operational endpoints: liveness, readiness, Prometheus
//! metrics, and the OpenAPI document.
//!
//! `/readyz` turns 200 only once startup recovery has started every in-flight
//! job *and* the store answers a query, so a load balancer never sends work
//! to a daemon that is still replaying its state. The job gauge is refreshed
//! at scrape time by one aggregate query (no job row is loaded).

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use axum::Json;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use cz_state::JobStatus;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;
use serde_json::{Value, json};
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

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct StepLabels {
    phase: String,
    action: String,
    outcome: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ClassLabels {
    class: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ProjectLabels {
    /// The first 16 hex digits of the token's SHA-256, never the token.
    project: String,
}

type StepHistograms = Family<StepLabels, Histogram, fn() -> Histogram>;

fn step_buckets() -> Histogram {
    // 10 ms .. ~5.5 min: a DNS check to a tofu apply.
    Histogram::new(exponential_buckets(0.01, 2.0, 16))
}

/// The daemon's Prometheus metrics. Counters owned elsewhere (the store's
/// events, the supervisor's leases) are brought up to date at scrape time;
/// nothing here reads job rows.
pub struct Metrics {
    registry: Mutex<Registry>,
    http: Family<HttpLabels, Counter>,
    jobs: Family<StatusLabels, Gauge>,
    steps: StepHistograms,
    retries: Family<ClassLabels, Counter>,
    hcloud_budget: Family<ProjectLabels, Gauge<f64, AtomicU64>>,
    events: Counter,
    sse: Gauge,
    lease_renewals: Counter,
    lease_renewal_failures: Counter,
    lease_losses: Counter,
    lease_claims: Counter,
    leases_held: Gauge,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    pub fn new() -> Self {
        let mut r = Registry::with_prefix("catalyst_zero");
        let m = Metrics {
            registry: Mutex::new(Registry::default()),
            http: Family::default(),
            jobs: Family::default(),
            steps: Family::new_with_constructor(step_buckets),
            retries: Family::default(),
            hcloud_budget: Family::default(),
            events: Counter::default(),
            sse: Gauge::default(),
            lease_renewals: Counter::default(),
            lease_renewal_failures: Counter::default(),
            lease_losses: Counter::default(),
            lease_claims: Counter::default(),
            leases_held: Gauge::default(),
        };
        // One table of every family: name, help, metric.
        macro_rules! register {
            ($($name:literal, $help:literal, $field:ident;)*) => {
                $(r.register($name, $help, m.$field.clone());)*
            };
        }
        register! {
            "http_requests", "HTTP requests by method, route and status", http;
            "jobs", "Jobs by status (one aggregate query at scrape time)", jobs;
            "step_duration_seconds", "Step attempts and undos by phase, action and outcome (succeeded, retrying, failed, undone, undo-failed)", steps;
            "step_retries", "Failed step attempts retried, by error class", retries;
            "hcloud_budget_remaining", "Requests left in each Hetzner project's rate-limit budget (this process's view)", hcloud_budget;
            "events_written", "Job events committed by this process", events;
            "sse_subscribers", "Open SSE event streams", sse;
            "lease_renewals", "Lease renewal passes that reached the store", lease_renewals;
            "lease_renewal_failures", "Lease renewal passes that could not reach the store", lease_renewal_failures;
            "lease_losses", "Job leases lost (expired or taken over)", lease_losses;
            "lease_claims", "Job leases claimed", lease_claims;
            "leases_held", "Job leases this replica holds", leases_held;
        }
        *m.registry.lock().expect("metrics lock") = r;
        // Every class is shown, at 0 until it happens (a rate over an absent
        // series is no rate).
        for class in [
            cz_engine::ErrorClass::Transient,
            cz_engine::ErrorClass::NeedsOperator,
            cz_engine::ErrorClass::Terminal,
        ] {
            let _ = m.retries.get_or_create(&ClassLabels { class: class.as_str().to_owned() });
        }
        m
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
        for s in JobStatus::ALL {
            let n = counts.iter().find(|(c, _)| c == s).map_or(0, |(_, n)| *n);
            self.jobs.get_or_create(&StatusLabels { status: s.to_string() }).set(n);
        }
    }

    /// An open SSE stream; the gauge goes down when the guard drops.
    pub fn sse_opened(self: &Arc<Self>) -> SseGuard {
        self.sse.inc();
        SseGuard(self.clone())
    }

    /// Brings the counters kept elsewhere up to date.
    fn refresh(&self, st: &ApiState) {
        let bump = |c: &Counter, now: u64| {
            let seen = c.get();
            if now > seen {
                c.inc_by(now - seen);
            }
        };
        bump(&self.events, st.store.events_written());
        let l = &st.supervisor.lease_stats;
        bump(&self.lease_renewals, l.renewals.load(Ordering::Relaxed));
        bump(&self.lease_renewal_failures, l.renewal_failures.load(Ordering::Relaxed));
        bump(&self.lease_losses, l.losses.load(Ordering::Relaxed));
        bump(&self.lease_claims, l.claims.load(Ordering::Relaxed));
        self.leases_held.set(st.store.held_leases().len() as i64);
        for (project, left) in cz_adapters::cloud::BudgetRegistry::global().remaining() {
            self.hcloud_budget.get_or_create(&ProjectLabels { project }).set(left);
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

/// Holds the SSE gauge up while a stream is open.
pub struct SseGuard(Arc<Metrics>);

impl Drop for SseGuard {
    fn drop(&mut self) {
        self.0.sse.dec();
    }
}

impl cz_engine::Observer for Metrics {
    fn job_span(&self, span: &tracing::Span) {
        crate::telemetry::record_trace_id(span);
    }

    fn step(&self, phase: &str, action: &str, outcome: &str, elapsed: std::time::Duration) {
        self.steps
            .get_or_create(&StepLabels {
                phase: phase.to_owned(),
                action: action.to_owned(),
                outcome: outcome.to_owned(),
            })
            .observe(elapsed.as_secs_f64());
    }

    fn retry(&self, class: cz_engine::ErrorClass) {
        self.retries.get_or_create(&ClassLabels { class: class.as_str().to_owned() }).inc();
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
    match st.store.ping().await {
        Ok(()) => Json(json!({ "status": "ready" })).into_response(),
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
    let counts = st.store.count_jobs_by_status().await.map_err(ApiError::store("count jobs"))?;
    st.metrics.set_jobs(&counts);
    st.metrics.refresh(&st);
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
pub async fn openapi() -> Json<Value> {
    Json(document().clone())
}

/// The document: what utoipa derives, with the request rules the derive
/// cannot state ([`cz_phases::request::contract`]). Built once.
pub fn document() -> &'static Value {
    static DOC: std::sync::OnceLock<Value> = std::sync::OnceLock::new();
    DOC.get_or_init(|| {
        let mut doc = serde_json::to_value(ApiDoc::openapi()).expect("the document serializes");
        cz_phases::request::contract::apply(&mut doc);
        doc
    })
}

struct BearerAuth;

impl Modify for BearerAuth {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        let components = openapi.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "bearer",
            SecurityScheme::Http(HttpBuilder::new().scheme(HttpAuthScheme::Bearer).build()),
        );
        // What the daemon checks against its catalogue is an enum in the
        // document too: a generated form offers exactly those values.
        if let Some(schemas) = openapi.components.as_mut().map(|c| &mut c.schemas) {
            let enumerate = |schemas: &mut std::collections::BTreeMap<
                String,
                utoipa::openapi::RefOr<utoipa::openapi::schema::Schema>,
            >,
                             component: &str,
                             field: &str,
                             values: &[&str]| {
                if let Some(utoipa::openapi::RefOr::T(utoipa::openapi::schema::Schema::Object(o))) =
                    schemas.get_mut(component)
                    && let Some(utoipa::openapi::RefOr::T(utoipa::openapi::schema::Schema::Object(
                        f,
                    ))) = o.properties.get_mut(field)
                {
                    f.enum_values = Some(values.iter().map(|v| serde_json::json!(v)).collect());
                    f.pattern = None;
                }
            };
            enumerate(schemas, "Region", "location", &cz_adapters::cloud::catalogue::LOCATIONS);
            enumerate(
                schemas,
                "NodeGroup",
                "sku",
                &cz_adapters::cloud::catalogue::SERVER_TYPE_NAMES,
            );
        }
        // Every operation that takes a bearer token answers 401 without a
        // good one: say so once, for all of them.
        for item in openapi.paths.paths.values_mut() {
            for op in
                [&mut item.get, &mut item.post, &mut item.put, &mut item.delete, &mut item.patch]
                    .into_iter()
                    .flatten()
            {
                // A header or query value is never JSON `null`: absent is
                // how it is optional. (utoipa writes `Option<T>` as
                // `[T, "null"]`, and a client generated from that sends
                // the text `null`.)
                for p in op.parameters.iter_mut().flatten() {
                    let utoipa::openapi::RefOr::T(p) = p else { continue };
                    if let Some(utoipa::openapi::RefOr::T(utoipa::openapi::schema::Schema::Object(
                        o,
                    ))) = p.schema.as_mut()
                        && let utoipa::openapi::schema::SchemaType::Array(types) = &o.schema_type
                    {
                        let kept: Vec<_> = types
                            .iter()
                            .filter(|t| **t != utoipa::openapi::schema::Type::Null)
                            .cloned()
                            .collect();
                        if kept.len() == 1 {
                            o.schema_type =
                                utoipa::openapi::schema::SchemaType::Type(kept[0].clone());
                        }
                    }
                }
                if op.security.as_ref().is_some_and(|s| !s.is_empty())
                    && !op.responses.responses.contains_key("401")
                {
                    let unauthorized = utoipa::openapi::ResponseBuilder::new()
                        .description("Missing or unknown bearer token")
                        .content(
                            "application/json",
                            utoipa::openapi::ContentBuilder::new()
                                .schema(Some(utoipa::openapi::Ref::from_schema_name("ErrorBody")))
                                .build(),
                        )
                        .build();
                    op.responses.responses.insert("401".into(), unauthorized.into());
                }
            }
        }
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
        super::views::SseFrame,
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
