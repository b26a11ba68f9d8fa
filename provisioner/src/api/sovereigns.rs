//! `/v1/sovereigns`: submit a provision, list and show Sovereigns, add a
//! region, destroy.
//!
//! Every submission is validated in full before anything is written; the
//! store then creates the Sovereign, the job, its sealed secrets, the
//! idempotency key and the audit entry in one transaction, so an invalid or
//! conflicting request leaves no trace.

use axum::Json;
use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use cz_phases::phases::{add_region_plan, destroy_plan, provision_plan};
use cz_phases::request::{Region, parse_add_region, parse_provision};
use cz_phases::{FailurePolicy, FaultPlan, JobOptions};
use cz_state::{
    IdempotencyKey, Job, JobId, JobKind, JobStatus, NewAudit, SecretString, Sovereign, SovereignId,
    SovereignStatus, SovereignTarget, StoreError, Submission, SubmitOutcome,
};
use serde_json::{Value, json};

use super::views::{
    ErrorBody, JobSummary, SovereignDetail, SovereignList, SovereignView, SubmitResponse,
    ValidationErrors,
};
use super::{ApiError, ApiState, Caller, body_sha256, require_json};

pub const IDEMPOTENCY_HEADER: &str = "idempotency-key";
pub const FAULT_PLAN_HEADER: &str = "x-catalyst-fault-plan";

fn idempotency(
    headers: &HeaderMap,
    scope: String,
    body: &Bytes,
) -> Result<Option<IdempotencyKey>, ApiError> {
    let Some(v) = headers.get(IDEMPOTENCY_HEADER) else { return Ok(None) };
    let key =
        v.to_str().ok().map(str::trim).filter(|k| !k.is_empty() && k.len() <= 200).ok_or_else(
            || ApiError::invalid("Idempotency-Key", "must be 1 to 200 visible ASCII characters"),
        )?;
    Ok(Some(IdempotencyKey { scope, key: key.to_owned(), body_sha256: body_sha256(body) }))
}

fn fault_plan(headers: &HeaderMap, caller: Caller) -> Result<FaultPlan, ApiError> {
    let Some(v) = headers.get(FAULT_PLAN_HEADER) else { return Ok(FaultPlan::default()) };
    caller.require_operator("inject faults")?;
    let text =
        v.to_str().map_err(|_| ApiError::invalid("X-Catalyst-Fault-Plan", "must be ASCII JSON"))?;
    serde_json::from_str(text)
        .map_err(|e| ApiError::invalid("X-Catalyst-Fault-Plan", format!("not a fault plan: {e}")))
}

/// Maps submission errors with a client meaning; the rest are internal.
fn submit_error(e: StoreError) -> ApiError {
    match e {
        StoreError::FqdnTaken { .. }
        | StoreError::SovereignBusy { .. }
        | StoreError::SovereignGone { .. } => ApiError::Conflict(e.to_string()),
        StoreError::IdempotencyConflict { .. } => ApiError::invalid(
            "Idempotency-Key",
            "was already used with a different request body; use a new key for a new request",
        ),
        StoreError::SovereignNotFound { id } => ApiError::NotFound(format!("sovereign {id}")),
        other => ApiError::Internal { what: "store the submission", source: Box::new(other) },
    }
}

/// Stores a submission and starts its job; a replay starts nothing new.
async fn submit_and_start(st: &ApiState, sub: Submission) -> Result<Value, ApiError> {
    let job_id = sub.job_id;
    match st.store.submit(sub).await.map_err(submit_error)? {
        SubmitOutcome::Created(v) => {
            tracing::info!(job_id = %job_id, "Job submitted.");
            st.supervisor.start(job_id);
            Ok(v)
        }
        SubmitOutcome::Replayed(v) => {
            tracing::info!(
                replayed_job_id = v["job_id"].as_str().unwrap_or_default(),
                "Idempotent submission replayed."
            );
            Ok(v)
        }
    }
}

fn parse_id(id: &str) -> Result<SovereignId, ApiError> {
    id.parse().map_err(|_| ApiError::NotFound(format!("sovereign {id}")))
}

async fn sovereign(st: &ApiState, id: SovereignId) -> Result<Sovereign, ApiError> {
    st.store
        .get_sovereign(id)
        .await
        .map_err(ApiError::store("read a sovereign"))?
        .ok_or_else(|| ApiError::NotFound(format!("sovereign {id}")))
}

/// Submit a provision request for a new Sovereign.
#[utoipa::path(
    post, path = "/v1/sovereigns", tag = "sovereigns",
    request_body(content = cz_phases::request::ProvisionRequest, content_type = "application/json"),
    params(
        ("Idempotency-Key" = Option<String>, Header, description = "Replays the first answer for the same key and body"),
        ("X-Catalyst-Fault-Plan" = Option<String>, Header, description = "JSON FaultPlan (operator token only; drills and tests)"),
    ),
    responses(
        (status = 202, body = SubmitResponse),
        (status = 401, body = ErrorBody), (status = 403, body = ErrorBody),
        (status = 409, body = ErrorBody, description = "The domain is in use"),
        (status = 422, body = ValidationErrors),
    ),
    security(("bearer" = []))
)]
pub async fn submit(
    State(st): State<ApiState>,
    caller: Caller,
    headers: HeaderMap,
    body: Bytes,
) -> Result<(StatusCode, Json<Value>), ApiError> {
    require_json(&headers)?;
    let faults = fault_plan(&headers, caller)?;
    let idem = idempotency(&headers, "POST /v1/sovereigns".into(), &body)?;
    let req = parse_provision(&body).map_err(ApiError::Invalid)?;
    let sovereign_id = SovereignId::new();
    let job_id = JobId::new();
    let plan = provision_plan(&req);
    let options = JobOptions { on_failure: req.on_failure, faults, retry: st.config.retry };
    let owner = sovereign_id.to_string();
    let response = serde_json::to_value(SubmitResponse {
        sovereign_id: owner.clone(),
        job_id: job_id.to_string(),
    })
    .expect("serializes");
    let sub = Submission {
        sovereign: SovereignTarget::New { id: sovereign_id, name: req.name(), fqdn: req.fqdn() },
        job_id,
        kind: JobKind::Provision,
        request: serde_json::to_value(&req).expect("request serializes"),
        plan: serde_json::to_value(&plan).expect("plan serializes"),
        options: serde_json::to_value(&options).expect("options serialize"),
        secrets: req.secrets().into_iter().map(|(n, s)| (owner.clone(), n.to_owned(), s)).collect(),
        idempotency: idem,
        response,
        audit: NewAudit {
            actor: caller.actor().to_owned(),
            action: "submit".into(),
            job_id: Some(job_id),
            sovereign_id: Some(sovereign_id),
            detail: json!({ "kind": "provision", "fqdn": req.fqdn(), "faults": options.faults != FaultPlan::default() }),
        },
    };
    let v = submit_and_start(&st, sub).await?;
    Ok((StatusCode::ACCEPTED, Json(v)))
}

/// List Sovereigns.
#[utoipa::path(get, path = "/v1/sovereigns", tag = "sovereigns",
    responses((status = 200, body = SovereignList), (status = 401, body = ErrorBody)),
    security(("bearer" = [])))]
pub async fn list(
    State(st): State<ApiState>,
    _caller: Caller,
) -> Result<Json<SovereignList>, ApiError> {
    let all = st.store.list_sovereigns().await.map_err(ApiError::store("list sovereigns"))?;
    Ok(Json(SovereignList { sovereigns: all.iter().map(SovereignView::from).collect() }))
}

/// Show a Sovereign with its jobs.
#[utoipa::path(get, path = "/v1/sovereigns/{id}", tag = "sovereigns",
    params(("id" = String, Path, description = "Sovereign id")),
    responses((status = 200, body = SovereignDetail), (status = 404, body = ErrorBody)),
    security(("bearer" = [])))]
pub async fn show(
    State(st): State<ApiState>,
    _caller: Caller,
    Path(id): Path<String>,
) -> Result<Json<SovereignDetail>, ApiError> {
    let s = sovereign(&st, parse_id(&id)?).await?;
    let jobs = st.store.list_jobs(Some(s.id)).await.map_err(ApiError::store("list jobs"))?;
    Ok(Json(SovereignDetail {
        sovereign: SovereignView::from(&s),
        jobs: jobs.iter().map(JobSummary::from).collect(),
    }))
}

/// What the Sovereign's jobs say about it: its provision request, and every
/// region it has (provision regions plus succeeded add-region regions).
struct Footprint {
    provision: Value,
    regions: Vec<Value>,
}

fn footprint(jobs: &[Job]) -> Result<Footprint, ApiError> {
    let provision =
        jobs.iter()
            .find(|j| j.kind == JobKind::Provision)
            .map(|j| j.request.clone())
            .ok_or_else(|| ApiError::Conflict("this sovereign has no provision job".into()))?;
    let mut regions: Vec<Value> =
        provision.get("regions").and_then(Value::as_array).cloned().unwrap_or_default();
    for j in
        jobs.iter().filter(|j| j.kind == JobKind::AddRegion && j.status == JobStatus::Succeeded)
    {
        regions.extend(
            j.request.get("regions").and_then(Value::as_array).cloned().unwrap_or_default(),
        );
    }
    Ok(Footprint { provision, regions })
}

fn location(r: &Value) -> Option<String> {
    r.get("location").and_then(Value::as_str).map(str::to_owned)
}

fn sovereign_block(s: &Sovereign, provision: &Value) -> Value {
    // The public keys go with it: an add-region's new servers get the same
    // authorized keys as the Sovereign's first region.
    let mut block = json!({
        "fqdn": s.fqdn,
        "ssh_public_keys": provision.get("ssh_public_keys").cloned().unwrap_or(json!([])),
    });
    match provision.pointer("/domain/mode").and_then(Value::as_str) {
        Some("pool") => {
            block["pool_domain"] =
                provision.pointer("/domain/pool_domain").cloned().unwrap_or(Value::Null);
        }
        // Destroy gives the registrar its delegation back.
        Some("byo-api") => {
            block["registrar"] =
                provision.pointer("/domain/registrar").cloned().unwrap_or(Value::Null);
        }
        _ => {}
    }
    block
}

/// Add regions to a Sovereign (an `add-region` job).
#[utoipa::path(
    post, path = "/v1/sovereigns/{id}/regions", tag = "sovereigns",
    params(("id" = String, Path, description = "Sovereign id"),
        ("Idempotency-Key" = Option<String>, Header, description = "Replays the first answer for the same key and body")),
    request_body(content = cz_phases::request::AddRegionRequest, content_type = "application/json"),
    responses((status = 202, body = SubmitResponse), (status = 404, body = ErrorBody),
        (status = 409, body = ErrorBody, description = "The sovereign is busy or not ready"),
        (status = 422, body = ValidationErrors)),
    security(("bearer" = [])))]
pub async fn add_region(
    State(st): State<ApiState>,
    caller: Caller,
    Path(id): Path<String>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<(StatusCode, Json<Value>), ApiError> {
    let sid = parse_id(&id)?;
    require_json(&headers)?;
    let faults = fault_plan(&headers, caller)?;
    let idem = idempotency(&headers, format!("POST /v1/sovereigns/{sid}/regions"), &body)?;
    let s = sovereign(&st, sid).await?;
    let jobs = st.store.list_jobs(Some(sid)).await.map_err(ApiError::store("list jobs"))?;
    let fp = footprint(&jobs)?;
    let existing: Vec<String> = fp.regions.iter().filter_map(location).collect();
    let req = parse_add_region(&body, &existing).map_err(ApiError::Invalid)?;
    // A busy Sovereign (job in flight) is refused by the store, in the same
    // transaction that would create the job.
    if matches!(
        s.status,
        SovereignStatus::Failed | SovereignStatus::Destroying | SovereignStatus::Destroyed
    ) {
        return Err(ApiError::Conflict(format!(
            "sovereign is `{}`; regions can be added to a ready sovereign only",
            s.status
        )));
    }
    let components: Vec<String> = fp
        .provision
        .get("components")
        .and_then(|c| serde_json::from_value(c.clone()).ok())
        .unwrap_or_default();
    let plan = add_region_plan(&req, &components);
    let mut sov = sovereign_block(&s, &fp.provision);
    sov["components"] = json!(components);
    let request = json!({
        "api_version": req.api_version,
        "regions": serde_json::to_value(&req.regions).expect("regions serialize"),
        "sovereign": sov,
    });
    let options =
        JobOptions { on_failure: FailurePolicy::Rollback, faults, retry: st.config.retry };
    let job_id = JobId::new();
    let owner = sid.to_string();
    let secrets: Vec<(String, String, SecretString)> = req
        .cloud_token
        .iter()
        .map(|t| (owner.clone(), "cloud_token".to_owned(), t.clone()))
        .collect();
    let new_locations: Vec<String> =
        req.regions.iter().map(|r: &Region| r.location.clone()).collect();
    let sub = Submission {
        sovereign: SovereignTarget::Existing { id: sid, status: SovereignStatus::Provisioning },
        job_id,
        kind: JobKind::AddRegion,
        request,
        plan: serde_json::to_value(&plan).expect("plan serializes"),
        options: serde_json::to_value(&options).expect("options serialize"),
        secrets,
        idempotency: idem,
        response: json!({ "sovereign_id": owner, "job_id": job_id.to_string() }),
        audit: NewAudit {
            actor: caller.actor().to_owned(),
            action: "add-region".into(),
            job_id: Some(job_id),
            sovereign_id: Some(sid),
            detail: json!({ "locations": new_locations, "new_cloud_token": req.cloud_token.is_some() }),
        },
    };
    let v = submit_and_start(&st, sub).await?;
    Ok((StatusCode::ACCEPTED, Json(v)))
}

/// Destroy a Sovereign (a `destroy` job). Operator token only.
#[utoipa::path(delete, path = "/v1/sovereigns/{id}", tag = "sovereigns",
    params(("id" = String, Path, description = "Sovereign id")),
    responses((status = 202, body = SubmitResponse), (status = 403, body = ErrorBody),
        (status = 404, body = ErrorBody), (status = 409, body = ErrorBody)),
    security(("bearer" = [])))]
pub async fn destroy(
    State(st): State<ApiState>,
    caller: Caller,
    Path(id): Path<String>,
) -> Result<(StatusCode, Json<Value>), ApiError> {
    caller.require_operator("destroy a sovereign")?;
    let sid = parse_id(&id)?;
    let s = sovereign(&st, sid).await?;
    let jobs = st.store.list_jobs(Some(sid)).await.map_err(ApiError::store("list jobs"))?;
    let fp = footprint(&jobs)?;
    let mut locations: Vec<String> = fp.regions.iter().filter_map(location).collect();
    locations.dedup();
    let plan = destroy_plan(&locations);
    let request = json!({ "sovereign": sovereign_block(&s, &fp.provision), "regions": fp.regions });
    let options = JobOptions {
        on_failure: FailurePolicy::Keep,
        faults: FaultPlan::default(),
        retry: st.config.retry,
    };
    let job_id = JobId::new();
    let sub = Submission {
        sovereign: SovereignTarget::Existing { id: sid, status: SovereignStatus::Destroying },
        job_id,
        kind: JobKind::Destroy,
        request,
        plan: serde_json::to_value(&plan).expect("plan serializes"),
        options: serde_json::to_value(&options).expect("options serialize"),
        secrets: Vec::new(),
        idempotency: None,
        response: json!({ "sovereign_id": sid.to_string(), "job_id": job_id.to_string() }),
        audit: NewAudit {
            actor: caller.actor().to_owned(),
            action: "destroy".into(),
            job_id: Some(job_id),
            sovereign_id: Some(sid),
            detail: json!({ "fqdn": s.fqdn, "locations": locations }),
        },
    };
    let v = submit_and_start(&st, sub).await?;
    Ok((StatusCode::ACCEPTED, Json(v)))
}
