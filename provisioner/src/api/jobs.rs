//! `/v1/jobs`: list and show jobs, and the operator verbs.
//!
//! Verbs go through the [`Supervisor`](crate::supervisor::Supervisor): stop
//! the job's driver, apply the verb to the store (audit trail and journal),
//! drive again if the job is still in flight.

use axum::Json;
use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::HeaderMap;
use cz_engine::RetryTarget;
use cz_state::{Job, JobId, SovereignId};
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};

use super::views::{AuditList, AuditView};
use super::views::{
    ErrorBody, JobDetail, JobList, JobSummary, ValidationErrors, VerbResponse, job_detail,
};
use super::{ApiError, ApiState, Caller, Query, require_json};
use crate::supervisor::Verb;

pub(crate) fn parse_job_id(id: &str) -> Result<JobId, ApiError> {
    id.parse().map_err(|_| ApiError::NotFound(format!("job {id}")))
}

pub(crate) async fn load_job(st: &ApiState, id: JobId) -> Result<Job, ApiError> {
    st.store
        .get_job(id)
        .await
        .map_err(ApiError::store("read a job"))?
        .ok_or_else(|| ApiError::NotFound(format!("job {id}")))
}

#[derive(Debug, Deserialize, IntoParams)]
pub struct ListQuery {
    /// Only the jobs of this Sovereign.
    #[param(format = Uuid)]
    pub sovereign: Option<String>,
}

/// List jobs, newest last.
#[utoipa::path(get, path = "/v1/jobs", tag = "jobs", params(ListQuery),
    responses((status = 200, body = JobList), (status = 401, body = ErrorBody),
              (status = 422, body = ValidationErrors, description = "`sovereign` is not a Sovereign id")),
    security(("bearer" = [])))]
pub async fn list(
    State(st): State<ApiState>,
    _caller: Caller,
    Query(q): Query<ListQuery>,
) -> Result<Json<JobList>, ApiError> {
    let sov = match q.sovereign.as_deref() {
        None => None,
        Some(s) => Some(
            s.parse::<SovereignId>()
                .map_err(|_| ApiError::invalid("sovereign", "must be a sovereign id (UUID)"))?,
        ),
    };
    let jobs = st.store.list_jobs_light(sov).await.map_err(ApiError::store("list jobs"))?;
    let mut out = Vec::with_capacity(jobs.len());
    for j in &jobs {
        let mut s = JobSummary::from(j);
        s.current_phase = current_phase(&st, j).await?;
        out.push(s);
    }
    Ok(Json(JobList { jobs: out }))
}

/// The phase a job not yet finished is on; none for a finished job.
async fn current_phase(st: &ApiState, j: &cz_state::Job) -> Result<Option<String>, ApiError> {
    if j.status.is_final() {
        return Ok(None);
    }
    st.store.latest_phase(j.id).await.map_err(ApiError::store("read the current phase"))
}

/// Show a job: phases, steps, attempts, timings, errors, progress, audit.
#[utoipa::path(get, path = "/v1/jobs/{id}", tag = "jobs",
    params(("id" = String, Path, description = "Job id")),
    responses((status = 200, body = JobDetail), (status = 404, body = ErrorBody)),
    security(("bearer" = [])))]
pub async fn show(
    State(st): State<ApiState>,
    _caller: Caller,
    Path(id): Path<String>,
) -> Result<Json<JobDetail>, ApiError> {
    let id = parse_job_id(&id)?;
    let job = load_job(&st, id).await?;
    let journal = st.store.journal(id).await.map_err(ApiError::store("read a journal"))?;
    let audit = st.store.audit(Some(id)).await.map_err(ApiError::store("read the audit trail"))?;
    let mut detail = job_detail(&job, &journal, &audit);
    detail.job.current_phase = current_phase(&st, &job).await?;
    detail.last_event_id =
        st.store.last_event_id(id).await.map_err(ApiError::store("read the last event id"))?;
    Ok(Json(detail))
}

/// Body of `retry`: at most one of `step` and `phase`; neither retries every
/// failed step.
#[derive(Debug, Default, Serialize, Deserialize, ToSchema)]
#[serde(default, deny_unknown_fields)]
pub struct RetryBody {
    pub step: Option<String>,
    pub phase: Option<String>,
}

/// Body of `skip`.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct SkipBody {
    /// `<phase>/<step>`.
    #[schema(min_length = 3, max_length = 200, pattern = "^[a-z0-9-]+/[a-z0-9.-]+$")]
    pub step: String,
    /// Why skipping is safe; recorded in the audit trail.
    #[schema(min_length = 1, max_length = 2000, pattern = "[^ \t\r\n]")]
    pub reason: String,
}

/// Parses an optional JSON body (empty means default).
fn parse_body<T: serde::de::DeserializeOwned + Default>(
    headers: &HeaderMap,
    body: &Bytes,
) -> Result<T, ApiError> {
    // No body, or JSON `null` (what a generated client sends for an absent
    // optional body): the defaults.
    let text = body.trim_ascii();
    if text.is_empty() || text == b"null" {
        return Ok(T::default());
    }
    parse_required(headers, body)
}

fn parse_required<T: serde::de::DeserializeOwned>(
    headers: &HeaderMap,
    body: &Bytes,
) -> Result<T, ApiError> {
    require_json(headers)?;
    serde_json::from_slice(body).map_err(|e| ApiError::invalid("body", e.to_string()))
}

async fn apply(
    st: &ApiState,
    caller: Caller,
    id: &str,
    verb: Verb,
) -> Result<Json<VerbResponse>, ApiError> {
    caller.require_operator("run operator verbs")?;
    let id = parse_job_id(id)?;
    let action = verb.name().to_owned();
    match st.supervisor.apply(id, verb, caller.actor()).await {
        Ok(status) => {
            Ok(Json(VerbResponse { job_id: id.to_string(), action, status: status.to_string() }))
        }
        Err(e) => {
            // Who tried what, and why not: the outcome is audited too.
            if let cz_engine::VerbError::Refused(why) = &e {
                let job = st.store.get_job(id).await.ok().flatten();
                let _ = st
                    .store
                    .record_audit(cz_state::NewAudit {
                        actor: caller.actor().to_owned(),
                        action: format!("{action}.refused"),
                        job_id: job.as_ref().map(|j| j.id),
                        sovereign_id: job.as_ref().map(|j| j.sovereign_id),
                        detail: serde_json::json!({ "reason": why }),
                    })
                    .await;
            }
            Err(e.into())
        }
    }
}

#[derive(Debug, Deserialize, IntoParams)]
pub struct AuditQuery {
    /// Only the entries of this job.
    #[param(format = Uuid)]
    pub job: Option<String>,
}

/// The audit trail: who did what to which job or Sovereign, and the
/// outcome. Operator token only.
#[utoipa::path(get, path = "/v1/audit", tag = "jobs", params(AuditQuery),
    responses((status = 200, body = AuditList), (status = 401, body = ErrorBody),
              (status = 403, body = ErrorBody), (status = 404, body = ErrorBody, description = "No such job"),
              (status = 422, body = ValidationErrors)),
    security(("bearer" = [])))]
pub async fn audit(
    State(st): State<ApiState>,
    caller: Caller,
    Query(q): Query<AuditQuery>,
) -> Result<Json<AuditList>, ApiError> {
    caller.require_operator("read the audit trail")?;
    let job = q.job.as_deref().map(parse_job_id).transpose()?;
    let entries = st.store.audit(job).await.map_err(ApiError::store("read the audit trail"))?;
    Ok(Json(AuditList { entries: entries.iter().map(AuditView::from).collect() }))
}

/// Retry failed steps, one step, or a whole phase. Operator token only.
#[utoipa::path(post, path = "/v1/jobs/{id}/retry", tag = "verbs",
    params(("id" = String, Path, description = "Job id")),
    request_body(content = Option<RetryBody>, content_type = "application/json"),
    responses((status = 200, body = VerbResponse), (status = 403, body = ErrorBody),
        (status = 404, body = ErrorBody), (status = 409, body = ErrorBody), (status = 422, body = ValidationErrors)),
    security(("bearer" = [])))]
pub async fn retry(
    State(st): State<ApiState>,
    caller: Caller,
    Path(id): Path<String>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Json<VerbResponse>, ApiError> {
    caller.require_operator("run operator verbs")?;
    let b: RetryBody = parse_body(&headers, &body)?;
    let target = match (b.step, b.phase) {
        (Some(_), Some(_)) => {
            return Err(ApiError::invalid("step", "give `step` or `phase`, not both"));
        }
        (Some(s), None) => RetryTarget::Step(s),
        (None, Some(p)) => RetryTarget::Phase(p),
        (None, None) => RetryTarget::Failed,
    };
    apply(&st, caller, &id, Verb::Retry(target)).await
}

/// Skip a step with a justification. Operator token only.
#[utoipa::path(post, path = "/v1/jobs/{id}/skip", tag = "verbs",
    params(("id" = String, Path, description = "Job id")),
    request_body(content = SkipBody, content_type = "application/json"),
    responses((status = 200, body = VerbResponse), (status = 403, body = ErrorBody),
        (status = 404, body = ErrorBody), (status = 409, body = ErrorBody), (status = 422, body = ValidationErrors)),
    security(("bearer" = [])))]
pub async fn skip(
    State(st): State<ApiState>,
    caller: Caller,
    Path(id): Path<String>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Json<VerbResponse>, ApiError> {
    caller.require_operator("run operator verbs")?;
    let b: SkipBody = parse_required(&headers, &body)?;
    if b.reason.trim().is_empty() {
        return Err(ApiError::invalid("reason", "is required: say why skipping is safe"));
    }
    if b.reason.chars().count() > 2000 {
        return Err(ApiError::invalid("reason", "must be at most 2000 characters"));
    }
    if let Err(m) = cz_phases::request::check_shown_text(&b.reason.replace(['\n', '\t'], " ")) {
        return Err(ApiError::invalid("reason", m));
    }
    apply(&st, caller, &id, Verb::Skip { step: b.step, reason: b.reason }).await
}

/// The handler of a verb that takes no body: its path, its OpenAPI entry,
/// and the verb it applies.
macro_rules! bodyless_verb {
    ($(#[doc = $doc:literal])* $name:ident, $path:literal, $verb:expr) => {
        $(#[doc = $doc])*
        #[utoipa::path(post, path = $path, tag = "verbs",
            params(("id" = String, Path, description = "Job id")),
            responses((status = 200, body = VerbResponse), (status = 403, body = ErrorBody),
                (status = 404, body = ErrorBody), (status = 409, body = ErrorBody)),
            security(("bearer" = [])))]
        pub async fn $name(
            State(st): State<ApiState>,
            caller: Caller,
            Path(id): Path<String>,
        ) -> Result<Json<VerbResponse>, ApiError> {
            apply(&st, caller, &id, $verb).await
        }
    };
}

bodyless_verb!(
    /// Resume a paused job. Operator token only.
    resume, "/v1/jobs/{id}/resume", Verb::Resume
);
bodyless_verb!(
    /// Abandon a job where it stands (nothing is undone). Operator token only.
    abandon, "/v1/jobs/{id}/abandon", Verb::Abandon
);
bodyless_verb!(
    /// Cancel a job with rollback (undo of everything that ran). Operator
    /// token only.
    cancel, "/v1/jobs/{id}/cancel", Verb::Cancel
);
