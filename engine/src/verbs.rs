//! Operator verbs: retry, skip, resume, abandon, cancel. Each checks the
//! job's state, appends to the journal and the audit trail, and leaves the
//! driving to the engine: the daemon stops a job's driver before a verb and
//! starts it again after (the provisioner's supervisor).

use std::collections::BTreeSet;

use cz_state::{
    Job, JobId, JobKind, JobMode, JobStatus, JobUpdate, NewAudit, NewJobEvent, NodeState,
    SovereignStatus, StepEvent, Store, StoreError,
};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

use crate::drive::EngineError;
use crate::error::chain;
use crate::plan::Plan;

/// What an operator asks `retry` to re-run.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "kebab-case")]
pub enum RetryTarget {
    /// Every failed step (the default).
    Failed,
    /// One step (`phase/step`).
    Step(String),
    /// Every step of a phase, including succeeded ones (they are idempotent).
    Phase(String),
}

/// An operator verb refused, with a reason the API shows as-is.
#[derive(Debug, thiserror::Error)]
pub enum VerbError {
    #[error("job {0} does not exist")]
    NoSuchJob(JobId),
    #[error("{0}")]
    Refused(String),
    #[error("store failure")]
    Store(#[source] StoreError),
}

impl From<StoreError> for VerbError {
    fn from(e: StoreError) -> Self {
        VerbError::Store(e)
    }
}

/// Applies operator verbs to the store. The daemon stops the job's driver
/// before and restarts it after (see the provisioner's supervisor).
pub struct Verbs<'a> {
    pub store: &'a Store,
}

impl Verbs<'_> {
    async fn job(&self, id: JobId) -> Result<Job, VerbError> {
        self.store.get_job(id).await?.ok_or(VerbError::NoSuchJob(id))
    }

    fn plan(job: &Job) -> Result<Plan, VerbError> {
        serde_json::from_value(job.plan.clone())
            .map_err(|e| VerbError::Refused(format!("stored plan unreadable: {e}")))
    }

    async fn audit(
        &self,
        job: &Job,
        actor: &str,
        action: &str,
        detail: Value,
    ) -> Result<(), VerbError> {
        self.store
            .record_audit(NewAudit {
                actor: actor.to_owned(),
                action: action.to_owned(),
                job_id: Some(job.id),
                sovereign_id: Some(job.sovereign_id),
                detail: detail.clone(),
            })
            .await?;
        self.store
            .append_events(
                job.id,
                vec![NewJobEvent::new(
                    "operator",
                    json!({ "action": action, "actor": actor, "detail": detail }),
                )],
            )
            .await?;
        Ok(())
    }

    async fn reopen(&self, job: &Job) -> Result<(), VerbError> {
        let j = self
            .store
            .update_job(
                job.id,
                JobUpdate {
                    status: Some(JobStatus::Running),
                    pause: Some(None),
                    ..Default::default()
                },
            )
            .await?;
        self.store
            .append_events(
                job.id,
                vec![NewJobEvent::new("job", json!({ "status": j.status, "mode": j.mode }))],
            )
            .await?;
        Ok(())
    }

    /// `retry`: re-runs failed steps, one step, or a whole phase.
    pub async fn retry(
        &self,
        id: JobId,
        target: RetryTarget,
        actor: &str,
    ) -> Result<Vec<String>, VerbError> {
        let job = self.job(id).await?;
        if !matches!(job.status, JobStatus::Paused | JobStatus::Failed) {
            return Err(VerbError::Refused(format!(
                "job is `{}`; retry applies to paused or failed jobs",
                job.status
            )));
        }
        let plan = Self::plan(&job)?;
        let states = self.store.node_states(id).await?;
        let mut nodes: Vec<String> = match &target {
            RetryTarget::Failed => states
                .iter()
                .filter(|(_, s)| {
                    matches!(s, NodeState::Failed { .. } | NodeState::UndoFailed { .. })
                })
                .map(|(k, _)| k.clone())
                .collect(),
            RetryTarget::Step(s) => {
                if plan.node(s).is_none() {
                    return Err(VerbError::Refused(format!("no step `{s}` in this job's plan")));
                }
                vec![s.clone()]
            }
            RetryTarget::Phase(p) => {
                let phase = plan.phase(p).ok_or_else(|| {
                    VerbError::Refused(format!("no phase `{p}` in this job's plan"))
                })?;
                let mut nodes: Vec<String> = phase.nodes.iter().map(|n| n.id.clone()).collect();
                // And the failed steps downstream of it: a node that failed
                // on what the phase made (a server that never booted and was
                // deleted) runs again on what the retry makes.
                let mut downstream: BTreeSet<&str> =
                    phase.nodes.iter().map(|n| n.id.as_str()).collect();
                for n in plan.nodes_in_order() {
                    // (`insert` is false for the phase's own nodes.)
                    if n.depends_on.iter().any(|d| downstream.contains(d.as_str()))
                        && downstream.insert(&n.id)
                        && matches!(states.get(&n.id), Some(NodeState::Failed { .. }))
                    {
                        nodes.push(n.id.clone());
                    }
                }
                nodes
            }
        };
        if job.mode == JobMode::Unwinding {
            // Retrying during an unwind means: try the failed undo again. The
            // unwind re-runs every `undo_failed` node; nothing to append.
            nodes.retain(|n| matches!(states.get(n), Some(NodeState::UndoFailed { .. })));
            if nodes.is_empty() {
                return Err(VerbError::Refused(
                    "the job was rolled back: there is no failed undo to retry, and what it \
                     did is undone; submit the request again"
                        .into(),
                ));
            }
        } else {
            if job.status == JobStatus::Failed && job.error.is_some() && nodes.is_empty() {
                return Err(VerbError::Refused("nothing to retry".into()));
            }
            let mut retried = Vec::new();
            for n in &nodes {
                let s = states.get(n).cloned().unwrap_or_default();
                if matches!(
                    s,
                    NodeState::Failed { .. }
                        | NodeState::Succeeded { .. }
                        | NodeState::Skipped { .. }
                        | NodeState::Undone { .. }
                ) {
                    self.store
                        .append_step_event(id, n, StepEvent::Retried { by: actor.to_owned() })
                        .await?;
                    retried.push(n.clone());
                } else if matches!(target, RetryTarget::Step(_)) && !matches!(s, NodeState::Pending)
                {
                    return Err(VerbError::Refused(format!(
                        "step `{n}` is `{}`; only failed, succeeded or skipped steps can be retried",
                        s.name()
                    )));
                }
            }
            nodes = retried;
            if job.status == JobStatus::Failed {
                self.store
                    .update_job(id, JobUpdate { error: Some(None), ..Default::default() })
                    .await?;
            }
        }
        self.audit(&job, actor, "retry", json!({ "target": target, "steps": nodes })).await?;
        self.reopen(&job).await?;
        Ok(nodes)
    }

    /// `skip`: marks a step done by hand, with a justification.
    pub async fn skip(
        &self,
        id: JobId,
        step: &str,
        reason: &str,
        actor: &str,
    ) -> Result<(), VerbError> {
        let job = self.job(id).await?;
        if reason.trim().is_empty() {
            return Err(VerbError::Refused("skip needs a reason".into()));
        }
        if job.status.is_final() {
            return Err(VerbError::Refused(format!("job is `{}`", job.status)));
        }
        let plan = Self::plan(&job)?;
        if plan.node(step).is_none() {
            return Err(VerbError::Refused(format!("no step `{step}` in this job's plan")));
        }
        let states = self.store.node_states(id).await?;
        let s = states.get(step).cloned().unwrap_or_default();
        if matches!(s, NodeState::Running { .. }) && job.status == JobStatus::Running {
            return Err(VerbError::Refused(format!(
                "step `{step}` is running; pause the job (or wait for it to fail) first"
            )));
        }
        self.store
            .append_step_event(
                id,
                step,
                StepEvent::Skipped { by: actor.to_owned(), reason: reason.to_owned() },
            )
            .await
            .map_err(|e| match e {
                StoreError::IllegalTransition { .. } => VerbError::Refused(format!(
                    "step `{step}` is `{}` and cannot be skipped",
                    s.name()
                )),
                other => VerbError::Store(other),
            })?;
        self.audit(&job, actor, "skip", json!({ "step": step, "reason": reason })).await?;
        if matches!(job.status, JobStatus::Paused | JobStatus::Failed) {
            self.reopen(&job).await?;
        }
        Ok(())
    }

    /// `resume`: continues a paused job (the failed step runs again).
    pub async fn resume(&self, id: JobId, actor: &str) -> Result<(), VerbError> {
        let job = self.job(id).await?;
        if job.status != JobStatus::Paused {
            return Err(VerbError::Refused(format!(
                "job is `{}`; only paused jobs resume",
                job.status
            )));
        }
        if job.mode == JobMode::Forward {
            for (n, s) in self.store.node_states(id).await? {
                if matches!(s, NodeState::Failed { .. }) {
                    self.store
                        .append_step_event(id, &n, StepEvent::Retried { by: actor.to_owned() })
                        .await?;
                }
            }
        }
        self.audit(&job, actor, "resume", json!({})).await?;
        self.reopen(&job).await
    }

    /// `abandon`: stops the job where it is, undoing nothing.
    pub async fn abandon(&self, id: JobId, actor: &str) -> Result<(), VerbError> {
        let job = self.job(id).await?;
        if job.status.is_final() {
            return Err(VerbError::Refused(format!("job is already `{}`", job.status)));
        }
        self.audit(&job, actor, "abandon", json!({})).await?;
        let sov = (job.kind != JobKind::Destroy).then_some(SovereignStatus::Failed);
        let j = self
            .store
            .update_job(
                id,
                JobUpdate {
                    status: Some(JobStatus::Abandoned),
                    sovereign_status: sov,
                    ..Default::default()
                },
            )
            .await?;
        self.store
            .append_events(
                id,
                vec![
                    NewJobEvent::new("job", json!({ "status": j.status, "mode": j.mode })),
                    NewJobEvent::new("end", json!({ "status": j.status })),
                ],
            )
            .await?;
        Ok(())
    }

    /// `cancel`: rolls the job back (undo of everything that ran).
    pub async fn cancel(&self, id: JobId, actor: &str) -> Result<(), VerbError> {
        let job = self.job(id).await?;
        if job.status.is_final() {
            return Err(VerbError::Refused(format!("job is already `{}`", job.status)));
        }
        if job.mode == JobMode::Unwinding && job.status == JobStatus::Running {
            return Err(VerbError::Refused("job is already rolling back".into()));
        }
        self.audit(&job, actor, "cancel", json!({})).await?;
        let j = self
            .store
            .update_job(
                id,
                JobUpdate {
                    status: Some(JobStatus::Running),
                    mode: Some(JobMode::Unwinding),
                    pause: Some(None),
                    error: Some(Some(json!({ "cancelled": true, "by": actor }))),
                    ..Default::default()
                },
            )
            .await?;
        self.store
            .append_events(
                id,
                vec![NewJobEvent::new("job", json!({ "status": j.status, "mode": j.mode }))],
            )
            .await?;
        Ok(())
    }
}

/// The error chain of an engine error, for logs and API messages.
pub fn describe(e: &EngineError) -> String {
    chain(e)
}
