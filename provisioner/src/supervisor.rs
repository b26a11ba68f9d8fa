//! The supervisor: which jobs this daemon is driving right now.
//!
//! Every in-flight job has exactly one driver task, running
//! [`Engine::drive`] under its own cancellation token. The engine is
//! stateless between drives (it always starts from the journal), so stopping
//! a driver is the same as a crash at that point, and starting it again is
//! the same as a recovery: one code path for both.
//!
//! Operator verbs follow "stop, apply, start": the driver is stopped (its
//! in-flight steps stay `started` in the journal and are re-run later, which
//! is why steps are idempotent), the verb is applied to the store by
//! [`cz_engine::Verbs`] (which writes the audit trail and the journal), and
//! the job is driven again if the verb left it in flight. Verbs are
//! serialized by one lock so two operators cannot interleave on a job.
//!
//! Startup recovery is split into a pure plan ([`recovery_plan`], unit
//! tested without a database, as omicron's saga recovery does) and its
//! execution ([`Supervisor::recover`]).
//!
//! TODO-design: this is the single-daemon design. It assumes one process
//! owns the data directory (SQLite cannot be shared anyway). Several replicas
//! on one PostgreSQL store (`docs/architecture.md`) need a lease per job, renewed
//! by the driver and taken over by another replica when it expires; the
//! supervisor is where that lease would be acquired before `start` and
//! released after `stop`. That is a later issue.

use std::collections::HashMap;
use std::sync::Mutex;

use cz_engine::{DriveOutcome, RetryTarget, VerbError, Verbs};

/// The engine over the daemon's backend.
pub type Engine = cz_engine::Engine<cz_adapters::Backend>;
use cz_state::{Job, JobId, JobStatus};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

/// An operator verb, as the API and CLI name it.
#[derive(Clone, Debug, PartialEq)]
pub enum Verb {
    Retry(RetryTarget),
    Skip { step: String, reason: String },
    Resume,
    Abandon,
    Cancel,
}

impl Verb {
    pub fn name(&self) -> &'static str {
        match self {
            Verb::Retry(_) => "retry",
            Verb::Skip { .. } => "skip",
            Verb::Resume => "resume",
            Verb::Abandon => "abandon",
            Verb::Cancel => "cancel",
        }
    }
}

struct Driver {
    cancel: CancellationToken,
    handle: JoinHandle<()>,
}

/// Owns the driver tasks of running jobs.
pub struct Supervisor {
    engine: Engine,
    drivers: Mutex<HashMap<JobId, Driver>>,
    /// Serializes verbs: stop → apply → start is one critical section.
    verbs: tokio::sync::Mutex<()>,
}

/// Which jobs a starting daemon must drive, oldest first: every job whose
/// status is `pending` or `running`. Paused and failed jobs wait for an
/// operator; final jobs are done.
pub fn recovery_plan(jobs: &[Job]) -> Vec<JobId> {
    let mut in_flight: Vec<&Job> = jobs.iter().filter(|j| j.status.in_flight()).collect();
    in_flight.sort_by_key(|j| (j.created_at, j.id));
    in_flight.into_iter().map(|j| j.id).collect()
}

impl Supervisor {
    pub fn new(engine: Engine) -> Self {
        Supervisor {
            engine,
            drivers: Mutex::new(HashMap::new()),
            verbs: tokio::sync::Mutex::new(()),
        }
    }

    pub fn engine(&self) -> &Engine {
        &self.engine
    }

    /// Starts driving `job` unless a driver is already running it.
    pub fn start(&self, job: JobId) {
        let mut drivers = self.drivers.lock().expect("supervisor lock");
        drivers.retain(|_, d| !d.handle.is_finished());
        if drivers.contains_key(&job) {
            return;
        }
        let cancel = CancellationToken::new();
        let engine = self.engine.clone();
        let token = cancel.clone();
        let handle = tokio::spawn(async move {
            tracing::info!(job_id = %job, "Driving job.");
            match engine.drive(job, token).await {
                Ok(DriveOutcome::Stopped(status)) => {
                    tracing::info!(job_id = %job, status = status.as_str(), "Job stopped.");
                }
                Ok(DriveOutcome::Interrupted) => {
                    tracing::info!(job_id = %job, "Job driver interrupted; the job stays in flight.");
                }
                Err(e) => {
                    tracing::error!(
                        job_id = %job,
                        error = &e as &dyn std::error::Error,
                        "Job driver failed; the job stays as recorded until a restart or a verb."
                    );
                }
            }
        });
        drivers.insert(job, Driver { cancel, handle });
    }

    /// Stops `job`'s driver (if any) and waits until it has let go.
    pub async fn stop(&self, job: JobId) {
        let driver = self.drivers.lock().expect("supervisor lock").remove(&job);
        if let Some(d) = driver {
            d.cancel.cancel();
            if let Err(e) = d.handle.await {
                tracing::error!(job_id = %job, error = &e as &dyn std::error::Error, "Job driver panicked.");
            }
        }
    }

    /// True while a driver task for `job` is alive.
    pub fn is_driving(&self, job: JobId) -> bool {
        self.drivers
            .lock()
            .expect("supervisor lock")
            .get(&job)
            .is_some_and(|d| !d.handle.is_finished())
    }

    /// Starts every in-flight job (daemon startup). Returns how many.
    pub async fn recover(&self) -> Result<usize, cz_state::StoreError> {
        let jobs = self.engine.store.jobs_in_flight().await?;
        let plan = recovery_plan(&jobs);
        for id in &plan {
            let job = jobs.iter().find(|j| j.id == *id).expect("planned from this list");
            tracing::info!(
                job_id = %id,
                sovereign_id = %job.sovereign_id,
                kind = job.kind.as_str(),
                status = job.status.as_str(),
                "Resuming job after start."
            );
            self.start(*id);
        }
        Ok(plan.len())
    }

    /// Applies an operator verb: stop the driver, apply, restart if the job
    /// is still in flight afterwards. Returns the job's status after.
    pub async fn apply(&self, job: JobId, verb: Verb, actor: &str) -> Result<JobStatus, VerbError> {
        let _serial = self.verbs.lock().await;
        self.stop(job).await;
        let verbs = Verbs { store: &self.engine.store };
        let result = match &verb {
            Verb::Retry(target) => verbs.retry(job, target.clone(), actor).await.map(|_| ()),
            Verb::Skip { step, reason } => verbs.skip(job, step, reason, actor).await,
            Verb::Resume => {
                // After a full disk: hold the reserve back again first.
                self.engine.store.ensure_reserve();
                verbs.resume(job, actor).await
            }
            Verb::Abandon => verbs.abandon(job, actor).await,
            Verb::Cancel => verbs.cancel(job, actor).await,
        };
        // Restart even when the verb was refused: we stopped the driver.
        let status = match self.engine.store.get_job(job).await? {
            Some(j) => {
                if j.status.in_flight() {
                    self.start(job);
                }
                j.status
            }
            None => return Err(VerbError::NoSuchJob(job)),
        };
        result?;
        tracing::info!(job_id = %job, verb = verb.name(), actor, status = status.as_str(), "Operator verb applied.");
        Ok(status)
    }

    /// Stops every driver (daemon shutdown). Jobs stay in flight in the
    /// store and are resumed by the next start.
    pub async fn shutdown(&self) {
        let drivers: Vec<(JobId, Driver)> =
            self.drivers.lock().expect("supervisor lock").drain().collect();
        for (_, d) in &drivers {
            d.cancel.cancel();
        }
        for (job, d) in drivers {
            if let Err(e) = d.handle.await {
                tracing::error!(job_id = %job, error = &e as &dyn std::error::Error, "Job driver panicked.");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use cz_state::{JobKind, JobMode, SovereignId};
    use serde_json::Value;

    use super::*;

    fn job(status: JobStatus, created_at: i64) -> Job {
        Job {
            id: JobId::new(),
            sovereign_id: SovereignId::new(),
            kind: JobKind::Provision,
            status,
            mode: JobMode::Forward,
            request: Value::Null,
            plan: Value::Null,
            options: Value::Null,
            pause: None,
            error: None,
            created_at,
            updated_at: created_at,
            finished_at: None,
        }
    }

    #[test]
    fn recovery_picks_pending_and_running_oldest_first() {
        let jobs = vec![
            job(JobStatus::Running, 30),
            job(JobStatus::Paused, 5),
            job(JobStatus::Pending, 10),
            job(JobStatus::Succeeded, 1),
            job(JobStatus::Failed, 2),
            job(JobStatus::Cancelled, 3),
            job(JobStatus::Abandoned, 4),
        ];
        let plan = recovery_plan(&jobs);
        assert_eq!(plan, vec![jobs[2].id, jobs[0].id]);
        assert!(recovery_plan(&[]).is_empty());
    }
}
