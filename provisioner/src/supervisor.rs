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
//! Startup recovery ([`Supervisor::recover`]) starts a driver for every
//! pending or running job, oldest first, from their ids alone
//! (`Store::jobs_in_flight_ids`); each driver loads its job when the
//! engine's load gate lets it, so readiness does not wait for 1,000 jobs
//! to be decoded.
//!
//! On PostgreSQL several replicas share the store, and a replica drives a
//! job only while it holds the job's lease ([`LeasePolicy`]): the lease
//! keeper ([`Supervisor::keep_leases`]) renews what this replica holds every
//! few seconds, stops the runs whose leases were lost, and claims in-flight
//! jobs nobody holds (a new job, or one whose replica died: its lease
//! expires). A replica that cannot renew stops all its runs before its
//! leases can pass to another. The store fences every write with the lease
//! generation, so a replica that was paused past its lease cannot write a
//! step twice. On SQLite (one daemon per data dir, by its lock) there are
//! no leases.

use std::collections::HashMap;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use cz_engine::{DriveOutcome, RetryTarget, VerbError, Verbs};

/// The engine over the daemon's backend.
pub type Engine = cz_engine::Engine<cz_adapters::Backend>;
use cz_state::{JobId, JobStatus};
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
    /// Job leases (PostgreSQL); `None` on SQLite.
    leases: Option<LeasePolicy>,
    pub lease_stats: LeaseStats,
}

/// How this replica holds job leases.
#[derive(Clone, Copy, Debug)]
pub struct LeasePolicy {
    /// A lease not renewed for this long passes to another replica.
    pub ttl: Duration,
    /// How often leases are renewed and free jobs claimed.
    pub renew: Duration,
    /// How many jobs this replica drives at most.
    pub max_runs: usize,
}

/// Lease counters for `/metrics`.
#[derive(Debug, Default)]
pub struct LeaseStats {
    pub renewals: AtomicU64,
    pub renewal_failures: AtomicU64,
    pub losses: AtomicU64,
    pub claims: AtomicU64,
}

impl Supervisor {
    pub fn new(engine: Engine) -> Self {
        Supervisor {
            engine,
            drivers: Mutex::new(HashMap::new()),
            verbs: tokio::sync::Mutex::new(()),
            leases: None,
            lease_stats: LeaseStats::default(),
        }
    }

    /// A supervisor that drives a job only under its lease (PostgreSQL).
    pub fn with_leases(engine: Engine, policy: LeasePolicy) -> Self {
        Supervisor { leases: Some(policy), ..Supervisor::new(engine) }
    }

    pub fn lease_policy(&self) -> Option<LeasePolicy> {
        self.leases
    }

    /// How many driver tasks are alive.
    pub fn driving(&self) -> usize {
        self.drivers
            .lock()
            .expect("supervisor lock")
            .values()
            .filter(|d| !d.handle.is_finished())
            .count()
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
        let leased = self.leases.is_some();
        let handle = tokio::spawn(async move {
            tracing::info!(job_id = %job, "Driving job.");
            let outcome = engine.drive(job, token).await;
            match &outcome {
                Ok(DriveOutcome::Stopped(status)) => {
                    tracing::info!(job_id = %job, status = status.as_str(), "Job stopped.");
                }
                Ok(DriveOutcome::Interrupted) => {
                    tracing::info!(job_id = %job, "Job driver interrupted; the job stays in flight.");
                }
                Ok(DriveOutcome::LeaseLost) => {
                    tracing::warn!(job_id = %job, "Job driver stopped: another replica holds the job now.");
                }
                Err(e) => {
                    tracing::error!(
                        job_id = %job,
                        error = e as &dyn std::error::Error,
                        "Job driver failed; the job stays as recorded until a restart or a verb."
                    );
                }
            }
            // The run ended here: let another replica have the job at once
            // rather than after the lease expires.
            if leased
                && !matches!(outcome, Ok(DriveOutcome::LeaseLost))
                && let Err(e) = engine.store.release_lease(job).await
            {
                tracing::warn!(job_id = %job, error = &e as &dyn std::error::Error, "Cannot release the job's lease; it will expire.");
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

    /// Stops the drivers of `jobs`: every one is told first, then each is
    /// awaited (one that waits on the store does not delay the others'
    /// stop).
    async fn stop_all_of(&self, jobs: &[JobId]) {
        let drivers: Vec<(JobId, Driver)> = {
            let mut map = self.drivers.lock().expect("supervisor lock");
            jobs.iter().filter_map(|j| map.remove(j).map(|d| (*j, d))).collect()
        };
        for (_, d) in &drivers {
            d.cancel.cancel();
        }
        for (job, d) in drivers {
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

    /// Starts driving a job just submitted here: on PostgreSQL once its
    /// lease is claimed (a new job is free; if the claim fails, the lease
    /// keeper or another replica claims it on its next pass).
    pub async fn start_new(&self, job: JobId) {
        if let Some(p) = self.leases {
            match self.engine.store.claim_leases(Some(job), false, p.ttl, 1).await {
                Ok(claimed) if claimed.contains(&job) => {
                    self.lease_stats.claims.fetch_add(1, Ordering::Relaxed);
                }
                Ok(_) => {
                    tracing::info!(job_id = %job, "Another replica already holds the new job.");
                    return;
                }
                Err(e) => {
                    tracing::warn!(job_id = %job, error = &e as &dyn std::error::Error, "Cannot claim the new job now; a lease pass will.");
                    return;
                }
            }
        }
        self.start(job);
    }

    /// Renews this replica's leases every `renew` and claims free jobs,
    /// until `shutdown`.
    pub async fn keep_leases(&self, shutdown: CancellationToken) {
        let Some(p) = self.leases else { return };
        let mut last_renewed = Instant::now();
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = tokio::time::sleep(p.renew) => {}
            }
            self.lease_pass(p, &mut last_renewed).await;
        }
    }

    /// One pass of the lease keeper: renew, stop what was lost, claim what
    /// is free (up to `max_runs`). Returns how many jobs it started.
    async fn lease_pass(&self, p: LeasePolicy, last_renewed: &mut Instant) -> usize {
        let store = &self.engine.store;
        // Bounded: a store that does not answer is a failed renewal.
        let renewal = match tokio::time::timeout(p.renew, store.renew_leases(p.ttl)).await {
            Ok(r) => r,
            Err(_) => Err(cz_state::StoreError::Commit {
                message: format!("no answer within {:?}", p.renew),
                fault: None,
            }),
        };
        match renewal {
            Ok(r) => {
                *last_renewed = Instant::now();
                self.lease_stats.renewals.fetch_add(1, Ordering::Relaxed);
                for job in r.lost {
                    self.lease_stats.losses.fetch_add(1, Ordering::Relaxed);
                    tracing::warn!(job_id = %job, "Lost the job's lease (expired or taken over): stopping its run here.");
                    self.stop(job).await;
                }
            }
            Err(e) => {
                self.lease_stats.renewal_failures.fetch_add(1, Ordering::Relaxed);
                tracing::warn!(error = &e as &dyn std::error::Error, "Cannot renew job leases.");
                // Before the leases can pass to another replica, stop: two
                // replicas must never drive one job.
                if last_renewed.elapsed() + p.renew >= p.ttl {
                    let held = store.drop_leases();
                    tracing::error!(
                        runs = held.len(),
                        "Leases not renewed in time: stopping every run here; other replicas take the jobs over once the leases expire."
                    );
                    self.lease_stats.losses.fetch_add(held.len() as u64, Ordering::Relaxed);
                    self.stop_all_of(&held).await;
                }
                return 0;
            }
        }
        let room = p.max_runs.saturating_sub(self.driving());
        if room == 0 {
            return 0;
        }
        match store.claim_leases(None, false, p.ttl, room as i64).await {
            Ok(jobs) => {
                for job in &jobs {
                    self.lease_stats.claims.fetch_add(1, Ordering::Relaxed);
                    tracing::info!(job_id = %job, "Claimed the job's lease: driving it here.");
                    self.start(*job);
                }
                jobs.len()
            }
            Err(e) => {
                tracing::warn!(error = &e as &dyn std::error::Error, "Cannot claim free jobs.");
                0
            }
        }
    }

    /// Starts every in-flight job (daemon startup). Returns how many. On
    /// PostgreSQL: a first lease pass, claiming the jobs nobody holds.
    pub async fn recover(&self) -> Result<usize, cz_state::StoreError> {
        if let Some(p) = self.leases {
            return Ok(self.lease_pass(p, &mut Instant::now()).await);
        }
        // Ids only, oldest first: nothing of the jobs is decoded before
        // their drives load them (in turn, see the engine's load gate).
        let jobs = self.engine.store.jobs_in_flight_ids().await?;
        for (id, sovereign_id, kind, status) in &jobs {
            tracing::debug!(
                job_id = %id,
                sovereign_id = %sovereign_id,
                kind = kind.as_str(),
                status = status.as_str(),
                "Resuming job after start."
            );
            self.start(*id);
        }
        tracing::info!(jobs = jobs.len(), "Resumed every job in flight.");
        Ok(jobs.len())
    }

    /// Applies an operator verb: stop the driver, apply, restart if the job
    /// is still in flight afterwards. Returns the job's status after.
    pub async fn apply(&self, job: JobId, verb: Verb, actor: &str) -> Result<JobStatus, VerbError> {
        let _serial = self.verbs.lock().await;
        self.stop(job).await;
        // On PostgreSQL the verb's writes need the job's lease: take it
        // over (fencing off a run on another replica, which stops at its
        // next write).
        if let Some(p) = self.leases {
            self.engine.store.claim_leases(Some(job), true, p.ttl, 1).await?;
        }
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
                } else if self.leases.is_some() {
                    self.engine.store.release_lease(job).await?;
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
        let all: Vec<JobId> =
            self.drivers.lock().expect("supervisor lock").keys().copied().collect();
        self.stop_all_of(&all).await;
    }
}
