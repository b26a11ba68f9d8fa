//! What several phases read the same way: the job's request, the
//! Sovereign's name and labels, the cloud token, and the shape of two
//! common errors.

use std::collections::BTreeMap;

use cz_adapters::CommandOutput;
use cz_adapters::labels::{LABEL_JOB, LABEL_REGION, LABEL_ROLE, LABEL_SOVEREIGN, sovereign_slug};
use cz_engine::{Cause, StepError, StepResult, System};
use cz_state::SecretString;

use crate::StepCtx;
use crate::jobs::JobRequest;
use crate::request::Region;

/// The job's stored request, typed (secrets are absent: read them with
/// `cx.secret`).
pub(crate) fn job_request(cx: &StepCtx) -> StepResult<JobRequest> {
    JobRequest::decode(&cx.request).map_err(|e| StepError::Internal {
        message: format!("the stored request does not decode: {e}"),
    })
}

/// The Sovereign's FQDN.
pub(crate) fn fqdn(cx: &StepCtx) -> StepResult<String> {
    Ok(job_request(cx)?.fqdn())
}

/// The job's regions: the provision's, or an add-region's new ones, or
/// every region a destroy removes.
pub(crate) fn regions(cx: &StepCtx) -> StepResult<Vec<Region>> {
    Ok(job_request(cx)?.regions().to_vec())
}

/// The region of this node's `location`.
pub(crate) fn region(cx: &StepCtx, location: &str) -> StepResult<Region> {
    regions(cx)?.into_iter().find(|r| r.location == location).ok_or_else(|| StepError::Internal {
        message: format!("no region `{location}` in the job's request"),
    })
}

/// The location of the job's first region (where the Sovereign-wide
/// components run).
pub(crate) fn first_location(cx: &StepCtx) -> StepResult<String> {
    regions(cx)?
        .first()
        .map(|r| r.location.clone())
        .ok_or_else(|| StepError::internal("the job's request has no region"))
}

/// The label value naming the job's Sovereign.
pub(crate) fn slug(fqdn: &str) -> String {
    sovereign_slug(fqdn)
}

/// Labels for an object of this job.
pub(crate) fn labels(
    cx: &StepCtx,
    fqdn: &str,
    role: &str,
    region: &str,
) -> BTreeMap<String, String> {
    BTreeMap::from([
        (LABEL_SOVEREIGN.to_owned(), slug(fqdn)),
        (LABEL_JOB.to_owned(), cx.job_id.to_string()),
        (LABEL_ROLE.to_owned(), role.to_owned()),
        (LABEL_REGION.to_owned(), region.to_owned()),
    ])
}

/// The Sovereign's cloud token (the one its provision brought).
pub(crate) async fn cloud_token(cx: &StepCtx) -> StepResult<SecretString> {
    cx.secret("cloud_token").await
}

/// Where a region's own cloud token is kept: an add-region job that
/// brings a token stores it for its new regions only, so it never replaces
/// the token another region's objects were made with.
pub fn region_token_name(location: &str) -> String {
    format!("cloud_token.{location}")
}

/// The cloud token of `location`: its own, else the Sovereign's.
pub(crate) async fn region_token(cx: &StepCtx, location: &str) -> StepResult<SecretString> {
    match cx.secret_opt(&region_token_name(location)).await? {
        Some(t) => Ok(t),
        None => cloud_token(cx).await,
    }
}

/// The cloud token of this job's regions (an add-region job's new ones
/// share the token it brought).
pub(crate) async fn job_token(cx: &StepCtx) -> StepResult<SecretString> {
    region_token(cx, &first_location(cx)?).await
}

/// A precondition that does not hold, with what an operator does about it.
pub(crate) fn precondition(
    message: impl Into<String>,
    remediation: impl Into<String>,
) -> StepError {
    StepError::Precondition { message: message.into(), remediation: remediation.into() }
}

/// A remote command that exited non-zero, with the tail of its stderr.
pub(crate) fn command_failed(op: &str, out: &CommandOutput) -> StepError {
    let tail: String =
        out.stderr.chars().rev().take(400).collect::<Vec<_>>().into_iter().rev().collect();
    StepError::adapter(
        System::Ssh,
        op,
        Cause::CommandFailed,
        format!("exit {}: {}", out.status, tail.trim()),
    )
}

/// Params of the steps that act on one region.
#[derive(Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct RegionParams {
    pub location: String,
}

impl RegionParams {
    pub fn new(location: &str) -> Self {
        RegionParams { location: location.to_owned() }
    }
}

/// An output naming where a step keeps what it made (a secret in the
/// store, an object in the cluster).
#[derive(Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct SecretRef {
    pub secret: String,
}
