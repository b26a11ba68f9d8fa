//! The store's error type.

use std::path::PathBuf;

use crate::journal::IllegalTransition;
use crate::model::{JobId, JobStatus, SovereignId};
use crate::secrets::SealError;

type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// Everything that can go wrong in the store. One variant per failed
/// operation; sources are never interpolated into the message.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("cannot create the data directory {path}")]
    DataDir {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot open the database {path}")]
    Open {
        path: PathBuf,
        #[source]
        source: sqlx::Error,
    },
    #[error("cannot apply migrations")]
    Migrate(#[source] sqlx::migrate::MigrateError),
    #[error("secret sealing failed")]
    Seal(#[source] SealError),
    #[error(
        "the at-rest key {key} does not open the secrets of {database}: it is not the key this \
         store was written with (point `at_rest_key` at that one)"
    )]
    WrongKey { key: PathBuf, database: PathBuf },
    #[error("database query failed: {what}")]
    Query {
        what: &'static str,
        #[source]
        source: sqlx::Error,
    },
    #[error("the transaction could not commit: {0}")]
    Commit(String),
    #[error("cannot decode column `{column}`")]
    Decode {
        column: &'static str,
        #[source]
        source: BoxError,
    },
    #[error("the store writer has stopped")]
    WriterGone,
    #[error("journal of job {job}, step `{node}` refused an event")]
    IllegalTransition {
        job: JobId,
        node: String,
        #[source]
        source: IllegalTransition,
    },
    #[error("journal of job {job}, step `{node}` is corrupt")]
    CorruptJournal {
        job: JobId,
        node: String,
        #[source]
        source: IllegalTransition,
    },
    #[error("job {id} cannot go from `{from}` to `{to}`")]
    IllegalJobStatus { id: JobId, from: JobStatus, to: JobStatus },
    #[error("job {id} does not exist")]
    JobNotFound { id: JobId },
    #[error("sovereign {id} does not exist")]
    SovereignNotFound { id: SovereignId },
    #[error("sovereign {id} has been destroyed")]
    SovereignGone { id: SovereignId },
    #[error("sovereign {id} already has job {job} in flight")]
    SovereignBusy { id: SovereignId, job: String },
    #[error("a live sovereign already uses the domain {fqdn}")]
    FqdnTaken { fqdn: String },
    #[error("idempotency key `{key}` was used before with a different body")]
    IdempotencyConflict { key: String },
}

impl StoreError {
    pub(crate) fn query(what: &'static str) -> impl FnOnce(sqlx::Error) -> StoreError {
        move |source| StoreError::Query { what, source }
    }

    /// Whether trying the same write again may succeed. Exhaustive on purpose:
    /// a new variant forces a decision.
    pub fn retryable(&self) -> bool {
        match self {
            StoreError::Commit(_) | StoreError::Query { .. } => true,
            StoreError::DataDir { .. }
            | StoreError::Open { .. }
            | StoreError::Migrate(_)
            | StoreError::Seal(_)
            | StoreError::WrongKey { .. }
            | StoreError::Decode { .. }
            | StoreError::WriterGone
            | StoreError::IllegalTransition { .. }
            | StoreError::CorruptJournal { .. }
            | StoreError::IllegalJobStatus { .. }
            | StoreError::JobNotFound { .. }
            | StoreError::SovereignNotFound { .. }
            | StoreError::SovereignGone { .. }
            | StoreError::SovereignBusy { .. }
            | StoreError::FqdnTaken { .. }
            | StoreError::IdempotencyConflict { .. } => false,
        }
    }
}
