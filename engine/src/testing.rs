//! Test support (feature `testing`): a store and engine in a temporary
//! directory, and the two generic tests every phase runs (omicron's
//! `action_failure_can_unwind` and `actions_succeed_idempotently`):
//!
//! - [`every_step_failure_unwinds`]: for each step under test, a fresh
//!   world whose job fails at that step (terminal, rollback policy, every
//!   undo run twice); the job must fail there and the unwind must leave a
//!   clean slate, as the [`Scenario`] defines it;
//! - [`every_step_runs_twice`]: every do and undo run twice; the job
//!   succeeds and leaves the same end state as a plain run.
//!
//! A [`Scenario`] is one phase's view of these tests: how to start a world
//! with its job submitted, which steps to test, what "clean" means and what
//! "the same end state" compares.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use cz_state::{JobId, JobStatus, SovereignId, Store, StorePaths, Submission};
use futures::StreamExt;
use serde_json::Value;
use tokio_util::sync::CancellationToken;

use crate::action::Registry;
use crate::context::StepEnv;
use crate::drive::{DriveOutcome, Engine, FailurePolicy, FaultPlan, JobOptions};
use crate::error::ErrorClass;

/// How long [`Rig::drive`] lets a job run before it reports where it hangs.
pub const DRIVE_BOUND: Duration = Duration::from_secs(120);

/// A store and an engine in a directory: `root/data` holds the store; the
/// rest of `root` is the caller's (a simulated world, workspaces). A rig
/// made by [`Rig::new`] owns a temporary directory that lives as long as
/// it; one made by [`Rig::in_dir`] leaves its directory behind (another
/// process, or the next rig, opens the same store).
pub struct Rig<E> {
    _tmp: Option<tempfile::TempDir>,
    pub root: PathBuf,
    pub store: Store,
    pub engine: Engine<E>,
}

impl<E: StepEnv> Rig<E> {
    /// A new rig in a new temporary directory; `env` builds the step
    /// environment inside it.
    pub async fn new(registry: Arc<Registry<E>>, env: impl FnOnce(&Path) -> E) -> Rig<E> {
        let tmp = tempfile::tempdir().expect("a temporary directory");
        let mut rig = Rig::in_dir(tmp.path(), registry, env).await;
        rig._tmp = Some(tmp);
        rig
    }

    /// A rig over the store in `root/data` (made if missing).
    pub async fn in_dir(
        root: &Path,
        registry: Arc<Registry<E>>,
        env: impl FnOnce(&Path) -> E,
    ) -> Rig<E> {
        let store = Store::open(StorePaths::in_dir(&root.join("data")))
            .await
            .expect("a store in the rig's directory");
        let env = Arc::new(env(root));
        let engine = Engine::new(store.clone(), registry, env);
        Rig { _tmp: None, root: root.to_owned(), store, engine }
    }

    /// The step environment.
    pub fn env(&self) -> &Arc<E> {
        &self.engine.env
    }

    /// Stores a job (and its Sovereign, secrets and audit record).
    pub async fn submit(&self, submission: Submission) -> JobId {
        let job = submission.job_id;
        self.store.submit(submission).await.expect("the store accepts the submission");
        job
    }

    /// Drives `job` until it stops, bounded by [`DRIVE_BOUND`]; past the
    /// bound it panics naming the unsatisfied steps and the last events.
    pub async fn drive(&self, job: JobId) -> JobStatus {
        let fut = self.engine.drive(job, CancellationToken::new());
        let Ok(outcome) = tokio::time::timeout(DRIVE_BOUND, fut).await else {
            let states = self.store.node_states(job).await.unwrap_or_default();
            let open: Vec<_> = states.iter().filter(|(_, s)| !s.is_satisfied()).collect();
            let events = self.store.events_after(job, 0, 100_000).await.unwrap_or_default();
            let tail: Vec<_> = events.iter().rev().take(5).collect();
            panic!(
                "job {job} did not stop within {DRIVE_BOUND:?}; unsatisfied steps: {open:?}; \
                 last events: {tail:?}"
            );
        };
        let status = match outcome.expect("the engine drives the job") {
            DriveOutcome::Stopped(s) => s,
            DriveOutcome::Interrupted | DriveOutcome::LeaseLost => {
                panic!("job {job} was interrupted")
            }
        };
        if status == JobStatus::Paused {
            let j = self.store.get_job(job).await.ok().flatten();
            let pause = j.and_then(|j| j.pause).unwrap_or_default();
            eprintln!("job {job} paused: {pause}");
        }
        status
    }

    /// The stored job row (it exists: the rig submitted it).
    pub async fn job(&self, job: JobId) -> cz_state::Job {
        self.store.get_job(job).await.expect("store read").expect("the job exists")
    }

    /// Why the job stopped: its pause, else its error (null for neither).
    pub async fn stop_reason(&self, job: JobId) -> Value {
        let j = self.job(job).await;
        j.pause.or(j.error).unwrap_or(Value::Null)
    }

    /// The bodies of the job's events of `kind`, in order.
    pub async fn events(&self, job: JobId, kind: &str) -> Vec<Value> {
        let all = self.store.events_after(job, 0, i64::MAX).await.expect("store read");
        all.into_iter().filter(|e| e.kind == kind).map(|e| e.body).collect()
    }
}

/// A world with one job submitted, as a [`Scenario`] starts it.
pub struct Started<E> {
    pub rig: Rig<E>,
    pub sovereign: SovereignId,
    pub job: JobId,
}

/// One phase's view of the generic tests.
#[async_trait(?Send)]
pub trait Scenario {
    type Env: StepEnv;

    /// The steps under test, in plan order (usually one phase's).
    fn steps(&self) -> Vec<String>;

    /// A fresh world with the scenario's job submitted under `options`.
    async fn start(&self, options: JobOptions) -> Started<Self::Env>;

    /// Asserts that the unwind from a failure at `failed_at` left nothing
    /// behind (no cloud object, record, file or secret the job made).
    async fn assert_clean_slate(&self, run: &Started<Self::Env>, failed_at: &str);

    /// A comparable picture of the world after the job: a run with every
    /// step twice must leave the same one as a plain run.
    async fn end_state(&self, run: &Started<Self::Env>) -> Value;

    /// Every step of the scenario's job (undo is repeated on all of them,
    /// not only the ones under test).
    fn all_steps(&self) -> Vec<String>;
}

/// How many worlds the generic tests run at once.
const CONCURRENCY: usize = 4;

/// Generic test (a): fail at each step in turn; the unwind must leave a
/// clean slate. Every undo runs twice on the way back.
pub async fn every_step_failure_unwinds<S: Scenario>(scenario: &S) {
    let steps = scenario.steps();
    assert!(!steps.is_empty(), "the scenario names no step to test");
    let all: BTreeSet<String> = scenario.all_steps().into_iter().collect();
    futures::stream::iter(steps)
        .for_each_concurrent(CONCURRENCY, |step| {
            let all = all.clone();
            async move {
                let mut faults = FaultPlan { repeat_undo: all, ..Default::default() };
                faults.fail.insert(step.clone(), ErrorClass::Terminal);
                let options = JobOptions {
                    on_failure: FailurePolicy::Rollback,
                    faults,
                    ..Default::default()
                };
                let run = scenario.start(options).await;
                let status = run.rig.drive(run.job).await;
                assert_eq!(status, JobStatus::Failed, "failure injected at {step}");
                let job = run.rig.job(run.job).await;
                let failed_at = job.error.as_ref().map(|e| e["step"].clone()).unwrap_or_default();
                assert_eq!(failed_at, step.as_str(), "the job failed at the injected step");
                scenario.assert_clean_slate(&run, &step).await;
            }
        })
        .await;
}

/// Generic test (b): every do and every undo of the steps under test runs
/// twice; the job succeeds with the same end state as a plain run.
pub async fn every_step_runs_twice<S: Scenario>(scenario: &S) {
    let plain = scenario.start(JobOptions::default()).await;
    assert_eq!(plain.rig.drive(plain.job).await, JobStatus::Succeeded, "a plain run succeeds");
    let steps: BTreeSet<String> = scenario.steps().into_iter().collect();
    assert!(!steps.is_empty(), "the scenario names no step to test");
    let faults = FaultPlan { repeat: steps.clone(), repeat_undo: steps, ..Default::default() };
    let twice = scenario.start(JobOptions { faults, ..Default::default() }).await;
    let status = twice.rig.drive(twice.job).await;
    if status != JobStatus::Succeeded {
        let job = twice.rig.job(twice.job).await;
        panic!("every step twice: {status:?}, stopped: {:?}", job.pause.or(job.error));
    }
    assert_eq!(
        scenario.end_state(&plain).await,
        scenario.end_state(&twice).await,
        "every step twice leaves what a plain run leaves"
    );
}
