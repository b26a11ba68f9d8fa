//! Catalyst-Zero's durable store: the only crate that speaks SQL.
//!
//! SQLite in WAL mode with `synchronous = FULL` (a returned commit is on
//! disk), forward-only migrations (`migrations/`), and:
//! - Sovereigns and jobs (request with secrets removed, plan, status cache);
//! - the step journal, append-only, checked by the transition function in
//!   [`journal`] before every write;
//! - the per-job event stream with gap-free monotonic ids, fanned out live to
//!   subscribers after commit;
//! - the audit trail of operator actions;
//! - secrets as age-encrypted blobs ([`secrets`]);
//! - the custodians' escrow: blobs encrypted to them, not to the daemon;
//! - idempotency keys for submissions.

pub mod bench;
mod error;
pub mod journal;
mod model;
pub mod secrets;
pub mod shamir;
mod store;

pub use error::{StorageFault, StoreError};
pub use journal::{IllegalTransition, NodeState, StepEvent};
pub use model::{
    AuditEntry, ConsoleSession, EscrowItem, Job, JobEvent, JobId, JobKind, JobMode, JobStatus,
    Millis, NewAudit, NewJobEvent, Rendered, Sovereign, SovereignId, SovereignStatus,
    StepEventRecord, now_ms,
};
pub use secrets::{SealError, Sealer, SecretString};
pub use store::{
    Backend, IdempotencyKey, JobUpdate, MIGRATOR, PG_MIGRATOR, Renewal, SovereignTarget, Store,
    StorePaths, Submission, SubmitOutcome, redact_url,
};
