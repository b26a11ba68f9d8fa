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
    #[error("cannot connect to the database {url}")]
    Connect {
        url: String,
        #[source]
        source: sqlx::Error,
    },
    #[error("cannot start the store's writer thread")]
    Thread {
        #[source]
        source: std::io::Error,
    },
    #[error("cannot apply migrations")]
    Migrate(#[source] sqlx::migrate::MigrateError),
    #[error("secret sealing failed")]
    Seal(#[source] SealError),
    #[error(
        "the at-rest key {key} does not open the secrets of {database}: it is not the key this \
         store was written with (point `at_rest_key` at that one)"
    )]
    WrongKey { key: PathBuf, database: String },
    #[error("database query failed: {what}")]
    Query {
        what: &'static str,
        #[source]
        source: sqlx::Error,
    },
    #[error("the transaction could not commit: {message}")]
    Commit { message: String, fault: Option<StorageFault> },
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
    /// This replica no longer holds the job's lease (it expired, or
    /// another replica took the job over): the write is refused, and the
    /// run must stop.
    #[error("this replica no longer holds the lease of job {job}")]
    LeaseLost { job: JobId },
}

/// A fault of the storage under the store, rather than of one write: no
/// write can succeed until an operator (or time) clears it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum StorageFault {
    /// `SQLITE_FULL`, `ENOSPC`: the disk (or the database's size cap) is full.
    DiskFull,
    /// `SQLITE_READONLY`, `EROFS`: the file system or the file went read-only.
    ReadOnly,
    /// `SQLITE_BUSY`, `SQLITE_LOCKED`: another process holds the database.
    Locked,
    /// `SQLITE_IOERR`, `SQLITE_CANTOPEN` and other I/O errors.
    Io,
}

impl StorageFault {
    pub fn as_str(self) -> &'static str {
        match self {
            StorageFault::DiskFull => "disk-full",
            StorageFault::ReadOnly => "read-only",
            StorageFault::Locked => "locked",
            StorageFault::Io => "io",
        }
    }

    /// The fault behind an OS error, if it is one.
    pub fn of_io(e: &std::io::Error) -> Option<StorageFault> {
        match e.raw_os_error() {
            Some(28) | Some(122) => Some(StorageFault::DiskFull), // ENOSPC, EDQUOT
            Some(30) => Some(StorageFault::ReadOnly),             // EROFS
            Some(5) => Some(StorageFault::Io),                    // EIO
            _ => None,
        }
    }

    /// The fault behind a database error, if it is one (SQLite result
    /// codes: the primary code is the low byte of the extended one).
    pub fn of_sqlx(e: &sqlx::Error) -> Option<StorageFault> {
        match e {
            sqlx::Error::Database(db) => {
                if let Some(pg) = db.try_downcast_ref::<sqlx::postgres::PgDatabaseError>() {
                    return StorageFault::of_sqlstate(pg.code());
                }
                let code: i64 = db.code()?.parse().ok()?;
                match code & 0xff {
                    13 => Some(StorageFault::DiskFull),
                    8 => Some(StorageFault::ReadOnly),
                    5 | 6 => Some(StorageFault::Locked),
                    10 | 14 => Some(StorageFault::Io),
                    _ => None,
                }
            }
            sqlx::Error::Io(io) => StorageFault::of_io(io),
            _ => None,
        }
    }
}

impl StorageFault {
    /// The fault behind a PostgreSQL SQLSTATE, if it is one: the server's
    /// disk is full, it is a read-only standby, or a lock wait gave up.
    fn of_sqlstate(code: &str) -> Option<StorageFault> {
        match code {
            "53100" => Some(StorageFault::DiskFull),
            "25006" => Some(StorageFault::ReadOnly),
            "55P03" => Some(StorageFault::Locked),
            "58030" => Some(StorageFault::Io),
            _ => None,
        }
    }
}

impl StoreError {
    /// The storage fault behind this error, if it is one.
    pub fn storage_fault(&self) -> Option<StorageFault> {
        match self {
            StoreError::Query { source, .. }
            | StoreError::Open { source, .. }
            | StoreError::Connect { source, .. } => StorageFault::of_sqlx(source),
            StoreError::Commit { fault, .. } => *fault,
            StoreError::DataDir { source, .. } | StoreError::Thread { source } => {
                StorageFault::of_io(source)
            }
            _ => None,
        }
    }

    pub(crate) fn query(what: &'static str) -> impl FnOnce(sqlx::Error) -> StoreError {
        move |source| StoreError::Query { what, source }
    }

    /// Whether trying the same write again may succeed. Exhaustive on purpose:
    /// a new variant forces a decision.
    pub fn retryable(&self) -> bool {
        match self {
            StoreError::Commit { .. } | StoreError::Query { .. } => true,
            StoreError::DataDir { .. }
            | StoreError::Open { .. }
            | StoreError::Connect { .. }
            | StoreError::Thread { .. }
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
            | StoreError::IdempotencyConflict { .. }
            | StoreError::LeaseLost { .. } => false,
        }
    }
}
