//! The engine: drives one job's plan from its journal.
//!
//! One code path for the happy path and recovery: [`Engine::drive`] always
//! starts by reading the job row and the journal, derives every node's state,
//! and decides what to do next from that alone. A daemon that died mid-step
//! therefore resumes exactly there: a node whose last event is `started` is
//! run again (steps are idempotent), an `undo_started` node is undone again.
//!
//! Forward: phases run in order, a phase that overlaps the one before it
//! together with it (one *stage*); inside a stage every node whose
//! dependencies are satisfied runs concurrently, and a released node is
//! satisfied when its producer journals it (see [`crate::plan`]). An error's class decides:
//! `transient` → retried here with bounded, jittered exponential backoff
//! (`backon`), escalating to `needs-operator` when attempts run out;
//! `needs-operator` → the job pauses with remediation and runbook, once
//! every step of the stage that does not depend on the blocked one has run;
//! `terminal` → the job fails and, under the `rollback` policy, unwinds.
//!
//! Unwinding: every node that may have had effects is undone in reverse
//! (phases backwards, each phase in reverse topological order). A failed undo
//! pauses the job: an operator must look (steno: an undo that fails leaves a
//! stuck saga, so undos retry transient errors before giving up).
//!
//! Fault injection ([`FaultPlan`]) is part of the engine, as in steno's SEC:
//! fail a node's do or undo, or run a node's do twice.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::{Duration, Instant};

use backon::BackoffBuilder;
use cz_state::{
    Job, JobId, JobKind, JobMode, JobStatus, JobUpdate, NewJobEvent, NodeState, SovereignStatus,
    StepEvent, Store, StoreError,
};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use crate::action::Registry;
use crate::context::{Outputs, Releaser, StepCtx, StepEnv};
use crate::error::{ErrorClass, StepError};
use crate::observe::{NoObserver, Observer};
use crate::plan::{NodeDef, PhaseDef, Plan, phase_of};
use tracing::Instrument;

/// Drives loading their job at once (see `Engine::load_gate`).
const LOADING_DRIVES: usize = 8;

/// What happens to what a job created when it fails.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "kebab-case")]
pub enum FailurePolicy {
    /// Undo what was done (unwind).
    #[default]
    Rollback,
    /// Keep it for inspection.
    Keep,
}

/// Faults to inject, by node id.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(default, deny_unknown_fields)]
pub struct FaultPlan {
    /// Fail the node's do with this class (every attempt).
    pub fail: BTreeMap<String, ErrorClass>,
    /// Fail the node's do with this class until an operator retries the
    /// node (the drill of pause → fix → retry: the retry is the fix).
    pub until_retry: BTreeMap<String, ErrorClass>,
    /// Fail the node's do with a transient error this many times, then pass.
    pub flaky: BTreeMap<String, u32>,
    /// Run the node's do twice (idempotency check).
    pub repeat: BTreeSet<String>,
    /// Run the node's undo twice.
    pub repeat_undo: BTreeSet<String>,
    /// Fail the node's undo.
    pub fail_undo: BTreeSet<String>,
    /// Slow motion: wait this long after every journal write, so an
    /// observer (the kill -9 test, a drill) can act at each step boundary.
    pub slow_ms: u64,
}

/// Bounds for transient retries.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(default, deny_unknown_fields)]
pub struct RetryPolicy {
    pub max_attempts: u32,
    pub min_delay_ms: u64,
    pub max_delay_ms: u64,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        RetryPolicy { max_attempts: 6, min_delay_ms: 1_000, max_delay_ms: 60_000 }
    }
}

/// Per-job engine options, stored with the job.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(default, deny_unknown_fields)]
pub struct JobOptions {
    pub on_failure: FailurePolicy,
    pub faults: FaultPlan,
    pub retry: RetryPolicy,
}

/// How a drive ended.
#[derive(Clone, Debug, PartialEq)]
pub enum DriveOutcome {
    /// The job reached this status (final, failed or paused).
    Stopped(JobStatus),
    /// The cancellation token fired; the job is still in flight in the store.
    Interrupted,
    /// This replica lost the job's lease (PostgreSQL): its writes are
    /// refused, and the replica that holds the lease now drives the job.
    LeaseLost,
}

/// Errors that stop the engine itself (not a step).
#[derive(Debug, thiserror::Error)]
pub enum EngineError {
    #[error("store failure while driving job {job}")]
    Store {
        job: JobId,
        #[source]
        source: StoreError,
    },
    #[error("job {0} does not exist")]
    NoSuchJob(JobId),
    #[error("job {job} has an invalid plan: {message}")]
    BadPlan { job: JobId, message: String },
}

/// Drives jobs over the step environment `E`. Cheap to clone.
pub struct Engine<E> {
    pub store: Store,
    pub registry: Arc<Registry<E>>,
    pub env: Arc<E>,
    /// Told of every step attempt's end (metrics).
    pub observer: Arc<dyn Observer>,
    /// How many drives load their job (row, plan, journal) at once: a
    /// restart over 1,000 in-flight jobs must not queue the readiness check
    /// and every API read behind 2,000 reads of the store.
    load_gate: Arc<tokio::sync::Semaphore>,
}

impl<E> Clone for Engine<E> {
    fn clone(&self) -> Self {
        Engine {
            store: self.store.clone(),
            registry: self.registry.clone(),
            env: self.env.clone(),
            observer: self.observer.clone(),
            load_gate: self.load_gate.clone(),
        }
    }
}

enum PhaseOutcome {
    Done,
    Paused { node: String, error: Value },
    Failed { node: String, error: Value },
    Interrupted,
}

enum UnwindOutcome {
    Done,
    Paused { node: String, error: Value },
    Interrupted,
}

impl<E: StepEnv> Engine<E> {
    pub fn new(store: Store, registry: Arc<Registry<E>>, env: Arc<E>) -> Self {
        Engine {
            store,
            registry,
            env,
            observer: Arc::new(NoObserver),
            load_gate: Arc::new(tokio::sync::Semaphore::new(LOADING_DRIVES)),
        }
    }

    /// The same engine, reporting to `observer`.
    pub fn with_observer(mut self, observer: Arc<dyn Observer>) -> Self {
        self.observer = observer;
        self
    }

    /// Drives `job` until it stops or `cancel` fires. A storage fault that
    /// outlasts [`STORAGE_FAULT_GRACE`] pauses the job (when that can be
    /// recorded) instead of leaving it `running` with nobody driving it.
    pub async fn drive(
        &self,
        job_id: JobId,
        cancel: CancellationToken,
    ) -> Result<DriveOutcome, EngineError> {
        // The trace of one drive: a `job` span, a `phase` span per phase it
        // works on, a `step` span per attempt, the adapters' spans inside.
        let span = tracing::info_span!(
            "job",
            job_id = %job_id,
            trace_id = tracing::field::Empty,
            outcome = tracing::field::Empty,
        );
        self.observer.job_span(&span);
        span.in_scope(|| tracing::info!("Drive started."));
        let outcome = self.drive_traced(job_id, cancel).instrument(span.clone()).await;
        let what = match &outcome {
            Ok(DriveOutcome::Stopped(s)) => s.as_str(),
            Ok(DriveOutcome::Interrupted) => "interrupted",
            Ok(DriveOutcome::LeaseLost) => "lease-lost",
            Err(_) => "error",
        };
        span.record("outcome", what);
        outcome
    }

    async fn drive_traced(
        &self,
        job_id: JobId,
        cancel: CancellationToken,
    ) -> Result<DriveOutcome, EngineError> {
        match self.drive_inner(job_id, cancel).await {
            Err(EngineError::Store { job, source: StoreError::LeaseLost { .. } }) => {
                tracing::warn!(job_id = %job, "Lost the job's lease: stopping; the replica that holds it drives the job.");
                Ok(DriveOutcome::LeaseLost)
            }
            Err(EngineError::Store { job, source }) if source.storage_fault().is_some() => {
                self.pause_for_storage(job, source).await
            }
            other => other,
        }
    }

    /// Records `job` as `paused` for a storage fault, with the error an
    /// operator acts on. A full disk may refuse even that write: the
    /// store's reserve is then released to make room. If nothing can be
    /// written (a read-only file system), the fault is returned and the
    /// job stays as recorded until the daemon restarts or an operator acts.
    async fn pause_for_storage(
        &self,
        job: JobId,
        source: StoreError,
    ) -> Result<DriveOutcome, EngineError> {
        let fault = source.storage_fault();
        let error = StepError::from(source).to_json();
        tracing::error!(job_id = %job, fault = fault.map(|f| f.as_str()), %error, "Storage fault: pausing the job.");
        let update = JobUpdate {
            status: Some(JobStatus::Paused),
            pause: Some(Some(json!({ "step": Value::Null, "error": error }))),
            ..Default::default()
        };
        let mut last = None;
        for attempt in 0..5u32 {
            match self.store.update_job(job, update.clone()).await {
                Ok(j) => {
                    let _ = self.store.append_events(job, vec![job_event(&j)]).await;
                    return Ok(DriveOutcome::Stopped(JobStatus::Paused));
                }
                Err(e) => {
                    if e.storage_fault() == Some(cz_state::StorageFault::DiskFull) {
                        self.store.release_reserve();
                    }
                    last = Some(e);
                    tokio::time::sleep(Duration::from_millis(200 << attempt)).await;
                }
            }
        }
        Err(EngineError::Store { job, source: last.expect("five attempts failed") })
    }

    async fn drive_inner(
        &self,
        job_id: JobId,
        cancel: CancellationToken,
    ) -> Result<DriveOutcome, EngineError> {
        let st = |source| EngineError::Store { job: job_id, source };
        loop {
            let gate = self.load_gate.acquire().await.expect("the gate is never closed");
            let mut job = self
                .store
                .get_job(job_id)
                .await
                .map_err(st)?
                .ok_or(EngineError::NoSuchJob(job_id))?;
            if !job.status.in_flight() {
                return Ok(DriveOutcome::Stopped(job.status));
            }
            // Taken out of the row, not copied: a running job holds its plan
            // and request once.
            let plan: Plan = serde_json::from_value(std::mem::take(&mut job.plan))
                .map_err(|e| EngineError::BadPlan { job: job_id, message: e.to_string() })?;
            self.registry
                .check_plan(&plan)
                .map_err(|e| EngineError::BadPlan { job: job_id, message: e.to_string() })?;
            let options: JobOptions =
                serde_json::from_value(std::mem::take(&mut job.options)).unwrap_or_default();
            let request = Arc::new(std::mem::take(&mut job.request));
            drop(gate);
            if job.status == JobStatus::Pending {
                self.set_status(
                    &job,
                    JobUpdate { status: Some(JobStatus::Running), ..Default::default() },
                )
                .await?;
            }
            let run = JobRun {
                engine: self.clone(),
                request,
                job: Arc::new(job),
                plan: Arc::new(plan),
                options: Arc::new(options),
                cancel: cancel.clone(),
            };
            // Interrupted: every write the stopped steps had already handed
            // to the store is committed before the caller may drive the job
            // again, so the next drive reads a journal nobody still appends
            // to (otherwise a late `succeeded` lands after its `started`).
            let interrupted = || async {
                self.store
                    .barrier()
                    .await
                    .map_err(|source| EngineError::Store { job: job_id, source })?;
                Ok::<_, EngineError>(DriveOutcome::Interrupted)
            };
            match run.job.mode {
                JobMode::Forward => match run.forward().await? {
                    None => return interrupted().await,
                    Some(true) => continue, // switched to unwinding
                    Some(false) => {}
                },
                JobMode::Unwinding => {
                    if run.unwind().await?.is_none() {
                        return interrupted().await;
                    }
                }
            }
        }
    }

    async fn set_status(&self, job: &Job, update: JobUpdate) -> Result<Job, EngineError> {
        let status = update.status;
        let mode = update.mode;
        let j = record_forever(|| self.store.update_job(job.id, update.clone()))
            .await
            .map_err(|source| EngineError::Store { job: job.id, source })?;
        if status.is_some() || mode.is_some() {
            let mut evs = vec![job_event(&j)];
            if matches!(
                j.status,
                JobStatus::Succeeded
                    | JobStatus::Failed
                    | JobStatus::Cancelled
                    | JobStatus::Abandoned
            ) {
                evs.push(NewJobEvent::new("end", json!({ "status": j.status })));
            }
            record_forever(|| self.store.append_events(job.id, evs.clone()))
                .await
                .map_err(|source| EngineError::Store { job: job.id, source })?;
        }
        Ok(j)
    }
}

/// The `job` event that says where a job stands after a status change.
fn job_event(j: &Job) -> NewJobEvent {
    NewJobEvent::new(
        "job",
        json!({ "status": j.status, "mode": j.mode, "pause": j.pause, "error": j.error }),
    )
}

/// How long a storage fault (a full disk, a read-only file system, a
/// database held by another process) may last before the drive stops and
/// the job is paused for an operator: long enough to ride out a brief
/// hiccup, short enough that nobody watches a `running` job nobody drives.
pub const STORAGE_FAULT_GRACE: Duration = Duration::from_secs(10);

/// Retries a store write for as long as it fails with a retryable error,
/// escalating the log level (omicron's `retry_notify_ext`): progress must be
/// recorded. A storage fault is retried for [`STORAGE_FAULT_GRACE`], then
/// returned: the drive stops and the job is paused
/// ([`Engine::pause_for_storage`]).
async fn record_forever<T, F, Fut>(mut f: F) -> Result<T, StoreError>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<T, StoreError>>,
{
    let started = Instant::now();
    let mut attempt = 0u32;
    loop {
        match f().await {
            Ok(v) => return Ok(v),
            Err(e) if e.storage_fault().is_some() && started.elapsed() >= STORAGE_FAULT_GRACE => {
                return Err(e);
            }
            Err(e) if e.retryable() || e.storage_fault().is_some() => {
                attempt += 1;
                let elapsed_ms = started.elapsed().as_millis() as u64;
                if attempt < 5 {
                    tracing::warn!(
                        attempt,
                        elapsed_ms,
                        error = &e as &dyn std::error::Error,
                        "Recording progress failed; retrying."
                    );
                } else {
                    tracing::error!(
                        attempt,
                        elapsed_ms,
                        error = &e as &dyn std::error::Error,
                        "Recording progress keeps failing; the job cannot advance until the store accepts writes."
                    );
                }
                tokio::time::sleep(Duration::from_millis((50u64 << attempt.min(7)).min(5_000)))
                    .await;
            }
            Err(e) => return Err(e),
        }
    }
}

/// One drive of one job. Cheap to clone: every field is shared.
struct JobRun<E> {
    engine: Engine<E>,
    job: Arc<Job>,
    request: Arc<Value>,
    plan: Arc<Plan>,
    options: Arc<JobOptions>,
    cancel: CancellationToken,
}

impl<E> Clone for JobRun<E> {
    fn clone(&self) -> Self {
        JobRun {
            engine: self.engine.clone(),
            job: self.job.clone(),
            request: self.request.clone(),
            plan: self.plan.clone(),
            options: self.options.clone(),
            cancel: self.cancel.clone(),
        }
    }
}

impl<E: StepEnv> JobRun<E> {
    fn store(&self) -> &Store {
        &self.engine.store
    }

    fn st(&self) -> impl FnOnce(StoreError) -> EngineError + '_ {
        move |source| EngineError::Store { job: self.job.id, source }
    }

    async fn states(&self) -> Result<BTreeMap<String, NodeState>, EngineError> {
        self.store().node_states(self.job.id).await.map_err(self.st())
    }

    /// `None`: interrupted. `Some(true)`: switched to unwinding. `Some(false)`: stopped.
    async fn forward(&self) -> Result<Option<bool>, EngineError> {
        let gate = self.engine.load_gate.acquire().await.expect("the gate is never closed");
        let mut states = self.states().await?;
        drop(gate);
        // Outputs of satisfied steps, shared by every step launched until
        // the next completion (copied only when a completion adds one);
        // the states keep none of their own (see `settle`).
        let mut outputs = Arc::new(Self::take_outputs(&mut states));
        for stage in self.plan.stages() {
            match self.run_stage(&stage, &mut states, &mut outputs).await? {
                PhaseOutcome::Done => {}
                PhaseOutcome::Interrupted => return Ok(None),
                PhaseOutcome::Paused { node, error } => {
                    self.phase_event(phase_of(&node), "paused").await?;
                    self.engine
                        .set_status(
                            &self.job,
                            JobUpdate {
                                status: Some(JobStatus::Paused),
                                pause: Some(Some(json!({ "step": node, "error": error }))),
                                ..Default::default()
                            },
                        )
                        .await?;
                    return Ok(Some(false));
                }
                PhaseOutcome::Failed { node, error } => {
                    self.phase_event(phase_of(&node), "failed").await?;
                    let err = json!({ "step": node, "error": error });
                    if self.options.on_failure == FailurePolicy::Rollback {
                        self.engine
                            .set_status(
                                &self.job,
                                JobUpdate {
                                    mode: Some(JobMode::Unwinding),
                                    error: Some(Some(err)),
                                    ..Default::default()
                                },
                            )
                            .await?;
                        return Ok(Some(true));
                    }
                    let sov =
                        (self.job.kind == JobKind::Provision).then_some(SovereignStatus::Failed);
                    self.engine
                        .set_status(
                            &self.job,
                            JobUpdate {
                                status: Some(JobStatus::Failed),
                                error: Some(Some(err)),
                                sovereign_status: sov,
                                ..Default::default()
                            },
                        )
                        .await?;
                    return Ok(Some(false));
                }
            }
        }
        let sov = match self.job.kind {
            JobKind::Provision | JobKind::AddRegion => SovereignStatus::Ready,
            JobKind::Destroy => SovereignStatus::Destroyed,
        };
        self.engine
            .set_status(
                &self.job,
                JobUpdate {
                    status: Some(JobStatus::Succeeded),
                    pause: Some(None),
                    sovereign_status: Some(sov),
                    ..Default::default()
                },
            )
            .await?;
        Ok(Some(false))
    }

    async fn phase_event(&self, phase: &str, state: &str) -> Result<(), EngineError> {
        let ev = NewJobEvent::new("phase", json!({ "phase": phase, "state": state }));
        record_forever(|| self.store().append_events(self.job.id, vec![ev.clone()]))
            .await
            .map_err(self.st())?;
        Ok(())
    }

    fn outputs(states: &BTreeMap<String, NodeState>) -> Outputs {
        states
            .iter()
            .filter_map(|(k, s)| s.output().map(|o| (k.clone(), Arc::new(o.clone()))))
            .collect()
    }

    fn ctx(&self, node: &NodeDef, attempt: u32, outputs: &Arc<Outputs>) -> StepCtx<E> {
        StepCtx {
            job_id: self.job.id,
            sovereign_id: self.job.sovereign_id,
            node: node.id.clone(),
            attempt,
            params: node.params.clone(),
            request: self.request.clone(),
            outputs: outputs.clone(),
            env: self.engine.env.clone(),
            store: self.engine.store.clone(),
            cancel: self.cancel.child_token(),
            releaser: None,
        }
    }

    async fn run_stage(
        &self,
        stage: &[&PhaseDef],
        states: &mut BTreeMap<String, NodeState>,
        outputs: &mut Arc<Outputs>,
    ) -> Result<PhaseOutcome, EngineError> {
        if stage.iter().all(|p| phase_done(p, states)) {
            return Ok(PhaseOutcome::Done);
        }
        let mut open: Vec<&PhaseDef> = Vec::new();
        // The trace has a `phase` span per phase, each step's span under
        // its own phase's, whether or not the phase overlaps another.
        let mut spans: BTreeMap<&str, tracing::Span> = BTreeMap::new();
        for p in stage {
            if !phase_done(p, states) {
                self.phase_event(&p.id, "started").await?;
                open.push(p);
                spans.insert(&p.id, tracing::info_span!("phase", phase = %p.id));
            }
        }
        let nodes: Vec<&NodeDef> = stage.iter().flat_map(|p| p.nodes.iter()).collect();
        // Each producer's released nodes, found once per stage (not per
        // launch: a 500-server region has a thousand steps).
        let mut released_by: BTreeMap<&str, Vec<&NodeDef>> = BTreeMap::new();
        for n in &nodes {
            if let Some(p) = n.released_by.as_deref() {
                released_by.entry(p).or_default().push(n);
            }
        }
        let mut inflight: JoinSet<Result<(String, NodeState), EngineError>> = JoinSet::new();
        let mut running: BTreeSet<String> = BTreeSet::new();
        // Released nodes arrive here from their producers, mid-step.
        let (tx, mut released) = tokio::sync::mpsc::unbounded_channel::<(String, NodeState)>();
        loop {
            let mut blocked: Option<(String, Value)> = None;
            let mut failed: Option<(String, Value)> = None;
            for n in &nodes {
                if let Some(NodeState::Failed { error, .. }) = states.get(&n.id) {
                    match stored_class(error) {
                        ErrorClass::Terminal => {
                            failed = failed.or(Some((n.id.clone(), error.clone())))
                        }
                        _ => blocked = blocked.or(Some((n.id.clone(), error.clone()))),
                    }
                }
            }
            // A step that waits for an operator blocks only what depends on
            // it: the rest of the stage runs on (a server that never boots
            // holds back no other node's bring-up), then the job pauses. A
            // terminal failure stops every launch: the job unwinds.
            if failed.is_none() && !self.cancel.is_cancelled() {
                for n in &nodes {
                    if running.contains(&n.id) || n.released_by.is_some() {
                        continue;
                    }
                    let state = states.get(&n.id);
                    let ready = matches!(
                        state,
                        None | Some(NodeState::Pending | NodeState::Running { .. })
                    ) && n
                        .depends_on
                        .iter()
                        .all(|d| states.get(d).is_some_and(NodeState::is_satisfied));
                    if ready {
                        running.insert(n.id.clone());
                        let mine = released_by.get(n.id.as_str()).map(Vec::as_slice);
                        let releaser = Self::releaser(mine.unwrap_or_default(), states, &tx);
                        let exec = NodeExec {
                            run: self.clone_run(),
                            node: (*n).clone(),
                            prior: state.cloned().unwrap_or_default(),
                            outputs: outputs.clone(),
                            releaser,
                        };
                        let span = spans.get(phase_of(&n.id)).cloned();
                        let span = span.unwrap_or_else(tracing::Span::current);
                        inflight.spawn(exec.forward().instrument(span));
                    }
                }
            }
            if inflight.is_empty() {
                if let Some((node, error)) = failed {
                    return Ok(PhaseOutcome::Failed { node, error });
                }
                if let Some((node, error)) = blocked {
                    return Ok(PhaseOutcome::Paused { node, error });
                }
                if self.cancel.is_cancelled() {
                    return Ok(PhaseOutcome::Interrupted);
                }
                if stage.iter().all(|p| phase_done(p, states)) {
                    return Ok(PhaseOutcome::Done);
                }
                let stuck: Vec<&str> = nodes
                    .iter()
                    .filter(|n| !states.get(&n.id).is_some_and(NodeState::is_satisfied))
                    .map(|n| n.id.as_str())
                    .take(5)
                    .collect();
                return Err(EngineError::BadPlan {
                    job: self.job.id,
                    message: format!(
                        "phase `{}` cannot make progress: {} never became ready (a released \
                         node its producer did not release?)",
                        phase_of(stuck.first().copied().unwrap_or_default()),
                        stuck.join(", ")
                    ),
                });
            }
            tokio::select! {
                joined = inflight.join_next() => {
                    let (id, state) = joined.expect("non-empty join set").expect("step task panicked")?;
                    running.remove(&id);
                    // What the step released before it returned is queued;
                    // take it first.
                    while let Ok((rid, rstate)) = released.try_recv() {
                        Self::settle(states, outputs, rid, rstate);
                    }
                    Self::settle(states, outputs, id, state);
                }
                Some((id, state)) = released.recv() => {
                    Self::settle(states, outputs, id, state);
                }
                _ = self.cancel.cancelled() => {
                    // Dropping in-flight steps is exactly a crash: their
                    // journal says `started` and the next drive re-runs them.
                    // Wait until they have stopped, so none of them can hand
                    // the store a write after this drive returns.
                    inflight.abort_all();
                    while inflight.join_next().await.is_some() {}
                    return Ok(PhaseOutcome::Interrupted);
                }
            }
            let mut still_open = Vec::with_capacity(open.len());
            for p in open {
                if phase_done(p, states) {
                    // Its span ends with the phase.
                    spans.remove(p.id.as_str());
                    self.phase_event(&p.id, "succeeded").await?;
                } else {
                    still_open.push(p);
                }
            }
            open = still_open;
        }
    }

    /// Moves every state's output into one map (see `settle`).
    fn take_outputs(states: &mut BTreeMap<String, NodeState>) -> Outputs {
        states
            .iter_mut()
            .filter_map(|(k, s)| s.take_output().map(|o| (k.clone(), Arc::new(o))))
            .collect()
    }

    /// Records a node's new state and, if satisfied, its output: the
    /// output moves to `outputs`, so 200 jobs' outputs are not held twice.
    fn settle(
        states: &mut BTreeMap<String, NodeState>,
        outputs: &mut Arc<Outputs>,
        id: String,
        mut state: NodeState,
    ) {
        if let Some(out) = state.take_output() {
            Arc::make_mut(outputs).insert(id.clone(), Arc::new(out));
        }
        states.insert(id, state);
    }

    /// The release handle of a producer of the nodes `mine`, if it has any.
    fn releaser(
        mine: &[&NodeDef],
        states: &BTreeMap<String, NodeState>,
        tx: &tokio::sync::mpsc::UnboundedSender<(String, NodeState)>,
    ) -> Option<Arc<Releaser>> {
        if mine.is_empty() {
            return None;
        }
        let pending = mine
            .iter()
            .filter_map(|n| {
                let s = states.get(&n.id).cloned().unwrap_or_default();
                (!s.is_satisfied()).then(|| (n.id.clone(), s.attempts()))
            })
            .collect();
        Some(Arc::new(Releaser {
            nodes: mine.iter().map(|n| n.id.clone()).collect(),
            pending: std::sync::Mutex::new(pending),
            tx: tx.clone(),
        }))
    }

    fn clone_run(&self) -> Arc<JobRun<E>> {
        Arc::new(self.clone())
    }

    /// `None`: interrupted.
    async fn unwind(&self) -> Result<Option<()>, EngineError> {
        let mut states = self.states().await?;
        let cancelled = self.job.error.as_ref().is_some_and(|e| e.get("cancelled").is_some());
        match self.unwind_nodes(&mut states).await? {
            UnwindOutcome::Interrupted => return Ok(None),
            UnwindOutcome::Paused { node, error } => {
                self.engine
                    .set_status(
                        &self.job,
                        JobUpdate {
                            status: Some(JobStatus::Paused),
                            pause: Some(Some(
                                json!({ "step": node, "error": error, "unwinding": true }),
                            )),
                            ..Default::default()
                        },
                    )
                    .await?;
                return Ok(Some(()));
            }
            UnwindOutcome::Done => {}
        }
        let sov = match self.job.kind {
            // A provision rolled back leaves nothing: the name is free again.
            JobKind::Provision => SovereignStatus::Destroyed,
            JobKind::AddRegion => SovereignStatus::Ready,
            JobKind::Destroy => SovereignStatus::Failed,
        };
        let status = if cancelled { JobStatus::Cancelled } else { JobStatus::Failed };
        self.engine
            .set_status(
                &self.job,
                JobUpdate {
                    status: Some(status),
                    pause: Some(None),
                    sovereign_status: Some(sov),
                    ..Default::default()
                },
            )
            .await?;
        Ok(Some(()))
    }

    async fn unwind_nodes(
        &self,
        states: &mut BTreeMap<String, NodeState>,
    ) -> Result<UnwindOutcome, EngineError> {
        let mut order: Vec<NodeDef> = Vec::new();
        for phase in self.plan.phases.iter().rev() {
            let topo = phase
                .topo_order()
                .map_err(|e| EngineError::BadPlan { job: self.job.id, message: e.to_string() })?;
            order.extend(topo.into_iter().rev().cloned());
        }
        let outputs = Arc::new(Self::outputs(states));
        for node in order {
            if self.cancel.is_cancelled() {
                return Ok(UnwindOutcome::Interrupted);
            }
            let state = states.get(&node.id).cloned().unwrap_or_default();
            if !state.needs_undo() {
                continue;
            }
            let exec = NodeExec {
                run: self.clone_run(),
                node: node.clone(),
                prior: state,
                outputs: outputs.clone(),
                releaser: None,
            };
            let fut = exec.undo().instrument(tracing::info_span!(
                "undo",
                step = %node.id,
                action = %node.action,
            ));
            let (id, new_state) = tokio::select! {
                r = fut => r?,
                _ = self.cancel.cancelled() => return Ok(UnwindOutcome::Interrupted),
            };
            let failed = match &new_state {
                NodeState::UndoFailed { error, .. } => Some(error.clone()),
                _ => None,
            };
            states.insert(id.clone(), new_state);
            if let Some(error) = failed {
                return Ok(UnwindOutcome::Paused { node: id, error });
            }
        }
        Ok(UnwindOutcome::Done)
    }
}

/// Whether every step of `phase` is satisfied.
fn phase_done(phase: &PhaseDef, states: &BTreeMap<String, NodeState>) -> bool {
    phase.nodes.iter().all(|n| states.get(&n.id).is_some_and(NodeState::is_satisfied))
}

/// The class recorded with a failed step (what the engine decided then).
fn stored_class(error: &Value) -> ErrorClass {
    match error.get("class").and_then(Value::as_str) {
        Some("terminal") => ErrorClass::Terminal,
        Some("transient") => ErrorClass::Transient,
        _ => ErrorClass::NeedsOperator,
    }
}

struct NodeExec<E> {
    run: Arc<JobRun<E>>,
    node: NodeDef,
    prior: NodeState,
    /// Outputs of satisfied steps (and, for an undo, the step's own).
    outputs: Arc<Outputs>,
    /// Set when this node releases others (kept across its attempts).
    releaser: Option<Arc<Releaser>>,
}

impl<E: StepEnv> NodeExec<E> {
    /// The phase this node belongs to.
    fn phase(&self) -> &str {
        phase_of(&self.node.id)
    }

    async fn record(&self, event: StepEvent, body: Value) -> Result<NodeState, EngineError> {
        let store = self.run.store();
        let mut body = body;
        if let Some(o) = body.as_object_mut() {
            o.insert("step".into(), self.node.id.clone().into());
            o.insert("phase".into(), self.phase().into());
        }
        let ev = NewJobEvent::new("step", body);
        let (state, _) = record_forever(|| {
            store.append_step_event_with(
                self.run.job.id,
                &self.node.id,
                event.clone(),
                vec![ev.clone()],
            )
        })
        .await
        .map_err(|source| EngineError::Store { job: self.run.job.id, source })?;
        if self.run.options.faults.slow_ms > 0 {
            tokio::time::sleep(Duration::from_millis(self.run.options.faults.slow_ms)).await;
        }
        Ok(state)
    }

    /// How many of this node's journal events match, over the whole journal.
    async fn count_in_journal(&self, which: fn(&StepEvent) -> bool) -> Result<u32, EngineError> {
        let journal = record_forever(|| self.run.store().journal(self.run.job.id))
            .await
            .map_err(|source| EngineError::Store { job: self.run.job.id, source })?;
        let n = journal.iter().filter(|r| r.node == self.node.id && which(&r.event)).count();
        Ok(u32::try_from(n).unwrap_or(u32::MAX))
    }

    async fn forward(self) -> Result<(String, NodeState), EngineError> {
        let opts = &self.run.options;
        let faults = &opts.faults;
        let step = self.run.engine.registry.get(&self.node.action).expect("validated action");
        let mut backoff = backon::ExponentialBuilder::default()
            .with_min_delay(Duration::from_millis(opts.retry.min_delay_ms))
            .with_max_delay(Duration::from_millis(opts.retry.max_delay_ms))
            .with_jitter()
            .without_max_times()
            .build();
        let mut attempt = self.prior.attempts();
        let mut flaky_left = match faults.flaky.get(&self.node.id) {
            // Counted over every attempt the journal holds, across an
            // operator's retries (which restart the attempt count).
            Some(n) => n.saturating_sub(
                self.count_in_journal(|e| matches!(e, StepEvent::Started { .. })).await?,
            ),
            None => 0,
        };
        let until_retry = match faults.until_retry.get(&self.node.id) {
            Some(class) => {
                let retried =
                    self.count_in_journal(|e| matches!(e, StepEvent::Retried { .. })).await?;
                (retried == 0).then_some(*class)
            }
            None => None,
        };
        loop {
            attempt += 1;
            let started = Instant::now();
            self.record(
                StepEvent::Started { attempt },
                json!({ "state": "started", "attempt": attempt }),
            )
            .await?;
            let mut cx = self.run.ctx(&self.node, attempt, &self.outputs);
            cx.releaser = self.releaser.clone();
            let span = tracing::info_span!(
                "step",
                step = %self.node.id,
                action = %self.node.action,
                attempt,
                error_class = tracing::field::Empty,
            );
            let result = async {
                if let Some(class) = faults.fail.get(&self.node.id).or(until_retry.as_ref()) {
                    Err(StepError::Injected { node: self.node.id.clone(), class: *class })
                } else if flaky_left > 0 {
                    flaky_left -= 1;
                    Err(StepError::Injected {
                        node: self.node.id.clone(),
                        class: ErrorClass::Transient,
                    })
                } else {
                    let first = step.run(&cx).await;
                    if faults.repeat.contains(&self.node.id) && first.is_ok() {
                        step.run(&cx).await
                    } else {
                        first
                    }
                }
            }
            .instrument(span.clone())
            .await;
            if let Err(e) = &result {
                span.record("error_class", e.class().as_str());
            }
            let elapsed = started.elapsed();
            let elapsed_ms = elapsed.as_millis() as u64;
            let observe = |outcome: &str| {
                self.run.engine.observer.step(self.phase(), &self.node.action, outcome, elapsed)
            };
            match result {
                Ok(output) => {
                    observe("succeeded");
                    let s = self
                        .record(
                            StepEvent::Succeeded { output },
                            json!({ "state": "succeeded", "attempt": attempt, "elapsed_ms": elapsed_ms }),
                        )
                        .await?;
                    return Ok((self.node.id.clone(), s));
                }
                Err(e) => {
                    let class = e.class();
                    let mut err = e.to_json();
                    tracing::warn!(job_id = %self.run.job.id, step = %self.node.id, attempt, class = class.as_str(), error = &e as &dyn std::error::Error, "Step failed.");
                    if class == ErrorClass::Transient && attempt < opts.retry.max_attempts {
                        observe("retrying");
                        self.run.engine.observer.retry(class);
                        let delay = backoff
                            .next()
                            .unwrap_or(Duration::from_millis(opts.retry.max_delay_ms));
                        self.record(
                            StepEvent::AttemptFailed { attempt, error: err.clone(), retry_in_ms: delay.as_millis() as u64 },
                            json!({ "state": "retrying", "attempt": attempt, "error": err, "retry_in_ms": delay.as_millis() as u64 }),
                        )
                        .await?;
                        tokio::select! {
                            _ = tokio::time::sleep(delay) => continue,
                            _ = self.run.cancel.cancelled() => {
                                // Journal says running: the next drive re-runs it.
                                return Ok((self.node.id.clone(), NodeState::Running { attempt, last_error: Some(err) }));
                            }
                        }
                    }
                    observe("failed");
                    if class == ErrorClass::Transient {
                        // Attempts exhausted: a person has to look.
                        err["class"] = "needs-operator".into();
                        err["exhausted_attempts"] = attempt.into();
                        err["remediation"] =
                            format!("Still failing after {attempt} attempts. {}", e.remediation())
                                .into();
                    }
                    let s = self
                        .record(
                            StepEvent::Failed { error: err.clone() },
                            json!({ "state": "failed", "attempt": attempt, "error": err, "elapsed_ms": elapsed_ms }),
                        )
                        .await?;
                    return Ok((self.node.id.clone(), s));
                }
            }
        }
    }

    async fn undo(self) -> Result<(String, NodeState), EngineError> {
        let opts = &self.run.options;
        let step = self.run.engine.registry.get(&self.node.action).expect("validated action");
        self.record(StepEvent::UndoStarted, json!({ "state": "undo_started" })).await?;
        let started = Instant::now();
        let attempt = self.prior.attempts().max(1);
        // The undo sees its own output (the ids it must remove): the map was
        // built from every step's state, own output included.
        let cx = self.run.ctx(&self.node, attempt, &self.outputs);
        let mut backoff = backon::ExponentialBuilder::default()
            .with_min_delay(Duration::from_millis(opts.retry.min_delay_ms))
            .with_max_delay(Duration::from_millis(opts.retry.max_delay_ms))
            .with_jitter()
            .with_max_times(opts.retry.max_attempts.saturating_sub(1) as usize)
            .build();
        let result = loop {
            let r = if opts.faults.fail_undo.contains(&self.node.id) {
                Err(StepError::Injected {
                    node: self.node.id.clone(),
                    class: ErrorClass::NeedsOperator,
                })
            } else {
                let first = step.undo(&cx).await;
                if opts.faults.repeat_undo.contains(&self.node.id) && first.is_ok() {
                    step.undo(&cx).await
                } else {
                    first
                }
            };
            match r {
                Err(e) if e.class() == ErrorClass::Transient => match backoff.next() {
                    Some(d) => {
                        tracing::warn!(job_id = %self.run.job.id, step = %self.node.id, error = &e as &dyn std::error::Error, "Undo failed; retrying.");
                        tokio::time::sleep(d).await;
                    }
                    None => break Err(e),
                },
                other => break other,
            }
        };
        let elapsed_ms = started.elapsed().as_millis() as u64;
        let outcome = if result.is_ok() { "undone" } else { "undo-failed" };
        self.run.engine.observer.step(self.phase(), &self.node.action, outcome, started.elapsed());
        let s = match result {
            Ok(()) => {
                self.record(
                    StepEvent::UndoFinished,
                    json!({ "state": "undone", "elapsed_ms": elapsed_ms }),
                )
                .await?
            }
            Err(e) => {
                let err = e.to_json();
                tracing::error!(job_id = %self.run.job.id, step = %self.node.id, error = &e as &dyn std::error::Error, "Undo failed; the job needs an operator.");
                self.record(
                    StepEvent::UndoFailed { error: err.clone() },
                    json!({ "state": "undo_failed", "error": err }),
                )
                .await?
            }
        };
        Ok((self.node.id.clone(), s))
    }
}
