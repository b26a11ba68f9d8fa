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
use cz_engine::{FaultPlan, JobOptions};
use cz_phases::jobs::{self, FollowUpError, Submit};
use cz_phases::request::parse_provision;
use cz_state::{IdempotencyKey, Sovereign, SovereignId, StoreError, Submission, SubmitOutcome};
use serde_json::Value;

use super::views::{
    CustodianView, CustodyItemView, CustodyView, DnsView, ErrorBody, JobSummary, RegionView,
    SovereignDetail, SovereignList, SovereignView, SubmitResponse, ValidationErrors, job_facts,
    rfc3339,
};
use super::{ApiError, ApiState, Caller, hex_sha256, require_json};

pub const IDEMPOTENCY_HEADER: &str = "idempotency-key";
pub const FAULT_PLAN_HEADER: &str = "x-catalyst-fault-plan";

fn idempotency(
    headers: &HeaderMap,
    scope: String,
    body: &Bytes,
) -> Result<Option<IdempotencyKey>, ApiError> {
    let Some(v) = headers.get(IDEMPOTENCY_HEADER) else { return Ok(None) };
    // Exactly the document's pattern, `^[!-~]{1,200}$`: no spaces inside.
    let key = v
        .to_str()
        .ok()
        .filter(|k| (1..=200).contains(&k.len()) && k.bytes().all(|b| (b'!'..=b'~').contains(&b)))
        .ok_or_else(|| {
            ApiError::invalid("Idempotency-Key", "must be 1 to 200 visible ASCII characters")
        })?;
    Ok(Some(IdempotencyKey { scope, key: key.to_owned(), body_sha256: hex_sha256(body) }))
}

fn fault_plan(headers: &HeaderMap, caller: &Caller, st: &ApiState) -> Result<FaultPlan, ApiError> {
    let Some(v) = headers.get(FAULT_PLAN_HEADER) else { return Ok(FaultPlan::default()) };
    caller.require_operator("inject faults")?;
    let drills = &st.config.drills;
    if !drills.fault_plans {
        return Err(ApiError::Disabled(
            "fault plans are off on this daemon: a drill daemon enables them with \
             [drills] fault_plans = true (or --fault-plans)"
                .into(),
        ));
    }
    if st.config.backend == crate::config::BackendKind::Hetzner && !drills.fault_plans_on_hetzner {
        return Err(ApiError::Disabled(
            "fault plans are refused on the hetzner backend (they fail steps against real \
             infrastructure) unless [drills] fault_plans_on_hetzner = true"
                .into(),
        ));
    }
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
        // A conflict with the stored answer for that key, not a fault of
        // the request on its own: 409, like a domain in use.
        StoreError::IdempotencyConflict { .. } => ApiError::Conflict(
            "the Idempotency-Key was already used with a different request body; use a new key \
             for a new request"
                .into(),
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
            st.supervisor.start_new(job_id).await;
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

pub(super) fn parse_id(id: &str) -> Result<SovereignId, ApiError> {
    id.parse().map_err(|_| ApiError::NotFound(format!("sovereign {id}")))
}

pub(super) async fn sovereign(st: &ApiState, id: SovereignId) -> Result<Sovereign, ApiError> {
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
        ("Idempotency-Key" = Option<String>, Header, pattern = "^[!-~]{1,200}$", description = "Replays the first answer for the same key and body: 1 to 200 visible ASCII characters"),
        ("X-Catalyst-Fault-Plan" = Option<String>, Header, description = "JSON FaultPlan (operator token only; drills and tests). Refused (403, `disabled`) unless the daemon enables `[drills] fault_plans`, and on the hetzner backend unless also `fault_plans_on_hetzner`"),
    ),
    responses(
        (status = 202, body = SubmitResponse),
        (status = 401, body = ErrorBody), (status = 403, body = ErrorBody),
        (status = 409, body = ErrorBody, description = "The domain is in use, or the Idempotency-Key was used with another body"),
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
    let faults = fault_plan(&headers, &caller, &st)?;
    let idem = idempotency(&headers, "POST /v1/sovereigns".into(), &body)?;
    let req = parse_provision(&body).map_err(ApiError::Invalid)?;
    let options = JobOptions { faults, retry: st.config.retry, ..Default::default() };
    let submit = Submit { actor: caller.actor().to_owned(), options, idempotency: idem };
    let sub = jobs::provision(&req, submit);
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
    let mut oldest_first: Vec<&cz_state::Job> = jobs.iter().collect();
    oldest_first.sort_by_key(|j| (j.created_at, j.id.to_string()));
    let gone = s.status == cz_state::SovereignStatus::Destroyed;
    let (mut regions, mut dns, mut seal) = (Vec::<RegionView>::new(), None::<DnsView>, None);
    let mut api_endpoint = None;
    let mut org_name = None;
    for job in oldest_first {
        if job.kind == cz_state::JobKind::Provision {
            org_name = job.request.pointer("/org/name").and_then(Value::as_str).map(str::to_owned);
        }
        if job.kind == cz_state::JobKind::Destroy || gone {
            continue;
        }
        let journal = st.store.journal(job.id).await.map_err(ApiError::store("read a journal"))?;
        let facts = job_facts(job, &journal);
        for r in facts.regions {
            match regions.iter_mut().find(|have| have.location == r.location) {
                Some(have) => *have = r,
                None => regions.push(r),
            }
        }
        if facts.kubeconfig_checked {
            api_endpoint = Some(format!("https://api.{}:6443", s.fqdn));
        }
        // A later job's DNS replaces the earlier one's, unless it wrote no
        // records where the earlier one did (an add-region job that has not
        // reached its records yet).
        if let Some(d) = facts.dns
            && !(d.records.is_empty() && dns.as_ref().is_some_and(|o| !o.records.is_empty()))
        {
            dns = Some(d);
        }
        seal = facts.seal.or(seal);
    }
    let custody = if gone { None } else { custody_of(&st, &s, seal).await? };
    Ok(Json(SovereignDetail {
        sovereign: SovereignView::from(&s),
        jobs: jobs.iter().map(JobSummary::from).collect(),
        org_name,
        api_endpoint,
        dns,
        regions,
        custody,
    }))
}

/// Who holds which part of the Sovereign's keys, and which parts an
/// operator has fetched (the escrow read is audited); never a blob.
async fn custody_of(
    st: &ApiState,
    s: &Sovereign,
    seal: Option<String>,
) -> Result<Option<CustodyView>, ApiError> {
    let items = st
        .store
        .escrow(&s.id.to_string(), None)
        .await
        .map_err(ApiError::store("read the escrow"))?;
    if items.is_empty() {
        return Ok(None);
    }
    let reads = st
        .store
        .audit_of_sovereign(s.id, "escrow.read")
        .await
        .map_err(ApiError::store("read the audit trail"))?;
    let head = items
        .iter()
        .find(|i| i.kind == cz_phases::custody::escrow::OPENBAO_SHARE)
        .unwrap_or(&items[0]);
    let mut custodians: Vec<CustodianView> = Vec::new();
    for i in &items {
        if !custodians.iter().any(|c| c.index == i.custodian) {
            custodians.push(CustodianView {
                index: i.custodian,
                label: i.label.clone(),
                recipient: i.recipient.clone(),
            });
        }
    }
    custodians.sort_by_key(|c| c.index);
    let views = items
        .iter()
        .map(|i| {
            let last = reads.iter().rev().find(|r| r.at >= i.created_at);
            CustodyItemView {
                kind: i.kind.clone(),
                index: i.index,
                custodian: i.custodian,
                label: i.label.clone(),
                fingerprint: i.fingerprint.clone(),
                created_at: rfc3339(i.created_at),
                retrieved: last.is_some(),
                retrieved_by: last.map(|r| r.actor.clone()),
                retrieved_at: last.map(|r| rfc3339(r.at)),
            }
        })
        .collect();
    Ok(Some(CustodyView {
        threshold: head.threshold,
        parts: head.parts,
        seal: seal.unwrap_or_else(|| "unknown".to_owned()),
        custodians,
        items: views,
    }))
}

/// Maps why a follow-up job cannot be made to its answer.
fn follow_up_error(e: FollowUpError) -> ApiError {
    match e {
        FollowUpError::Invalid(errors) => ApiError::Invalid(errors),
        FollowUpError::NoProvision | FollowUpError::NotReady(_) | FollowUpError::Conflicts(_) => {
            ApiError::Conflict(e.to_string())
        }
        FollowUpError::BadProvision(_) => {
            ApiError::Internal { what: "read the sovereign's provision", source: Box::new(e) }
        }
    }
}

/// A Sovereign and its jobs.
async fn sovereign_and_jobs(
    st: &ApiState,
    id: SovereignId,
) -> Result<(Sovereign, Vec<cz_state::Job>), ApiError> {
    let s = sovereign(st, id).await?;
    let jobs = st.store.list_jobs(Some(id)).await.map_err(ApiError::store("list jobs"))?;
    Ok((s, jobs))
}

/// Add regions to a Sovereign (an `add-region` job).
#[utoipa::path(
    post, path = "/v1/sovereigns/{id}/regions", tag = "sovereigns",
    params(("id" = String, Path, description = "Sovereign id"),
        ("Idempotency-Key" = Option<String>, Header, pattern = "^[!-~]{1,200}$", description = "Replays the first answer for the same key and body: 1 to 200 visible ASCII characters")),
    request_body(content = cz_phases::request::AddRegionRequest, content_type = "application/json"),
    responses((status = 202, body = SubmitResponse),
        (status = 403, body = ErrorBody, description = "Operator token only"),
        (status = 404, body = ErrorBody),
        (status = 409, body = ErrorBody, description = "The sovereign is busy or not ready, already has a region in a requested location, or would exceed 8 regions; or the Idempotency-Key was used with another body"),
        (status = 422, body = ValidationErrors)),
    security(("bearer" = [])))]
pub async fn add_region(
    State(st): State<ApiState>,
    caller: Caller,
    Path(id): Path<String>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<(StatusCode, Json<Value>), ApiError> {
    caller.require_operator("add a region")?;
    let sid = parse_id(&id)?;
    require_json(&headers)?;
    let faults = fault_plan(&headers, &caller, &st)?;
    let idem = idempotency(&headers, format!("POST /v1/sovereigns/{sid}/regions"), &body)?;
    let (s, jobs) = sovereign_and_jobs(&st, sid).await?;
    let options = JobOptions { faults, retry: st.config.retry, ..Default::default() };
    let submit = Submit { actor: caller.actor().to_owned(), options, idempotency: idem };
    let sub = jobs::add_region(&s, &jobs, &body, submit).map_err(follow_up_error)?;
    let v = submit_and_start(&st, sub).await?;
    Ok((StatusCode::ACCEPTED, Json(v)))
}

/// Destroy a Sovereign (a `destroy` job). Operator token only.
///
/// A verb, not `DELETE`: the Sovereign's record stays, with its jobs and
/// audit trail, and shows `destroying` and then `destroyed`.
#[utoipa::path(post, path = "/v1/sovereigns/{id}/destroy", tag = "sovereigns",
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
    let (s, jobs) = sovereign_and_jobs(&st, sid).await?;
    let options = JobOptions { retry: st.config.retry, ..Default::default() };
    let submit = Submit { actor: caller.actor().to_owned(), options, idempotency: None };
    let sub = jobs::destroy(&s, &jobs, submit).map_err(follow_up_error)?;
    let v = submit_and_start(&st, sub).await?;
    Ok((StatusCode::ACCEPTED, Json(v)))
}
