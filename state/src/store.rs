//! The SQLite store: opening, migrations, the group-commit writer, queries.
//!
//! Durability: WAL with `synchronous = FULL`, so a commit that returned has
//! reached the disk. Every write goes through one writer task that owns one
//! connection and commits whatever is queued as one transaction (group
//! commit): under load many step checkpoints share one fsync, and SQLite never
//! sees two writers (no `SQLITE_BUSY` dance). Each operation in a batch runs
//! under its own savepoint, so one refused operation (an illegal journal
//! transition, a taken FQDN) does not take the rest of the batch with it.
//!
//! Recording progress cannot fail silently (omicron's `sec_store.rs`): a
//! batch whose commit fails answers every op with a retryable
//! `StoreError::Commit`, and the engine's recorder retries journal writes
//! with backoff, forever, logging the attempt count and the elapsed time.
//!
//! Queries are runtime-checked (`sqlx::query` + binds), not the compile-time
//! macros: the macros need a live database or committed `.sqlx` data at build
//! time, and the store's tests exercise every query against a real SQLite.
//! TODO-design: switch to `query!` with committed offline data once the schema
//! settles.

use std::any::Any;
use std::collections::{BTreeMap, HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures::future::BoxFuture;
use serde_json::Value;
use sqlx::any::{AnyConnectOptions, AnyPoolOptions, AnyRow};
use sqlx::sqlite::SqliteConnectOptions;
use sqlx::{AnyConnection, AnyPool, AssertSqlSafe, ConnectOptions, Connection, Row};
use tokio::sync::{broadcast, mpsc, oneshot};

use crate::error::StoreError;
use crate::journal::{NodeState, StepEvent};
use crate::model::*;
use crate::secrets::{SealError, Sealer, SecretString};

/// The forward-only migrations of the SQLite store, `state/migrations/sqlite/`.
pub static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("./migrations/sqlite");

/// The PostgreSQL store's migrations, `state/migrations/postgres/`: the same
/// versions, tables and columns in PostgreSQL's dialect (the store tests
/// compare both schemas column by column).
pub static PG_MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("./migrations/postgres");

/// How many live events a slow SSE subscriber may fall behind before it
/// re-reads from the database (it never loses events, see `subscribe`).
const EVENT_FANOUT_CAPACITY: usize = 4096;

/// How many queued writes one transaction takes at most.
const MAX_BATCH: usize = 512;

type OpResult = Result<Box<dyn Any + Send>, StoreError>;
type CustomFn = Box<dyn for<'c> FnOnce(&'c mut WriterConn) -> BoxFuture<'c, OpResult> + Send>;
/// A write of one job's rows, given the lease generation it is made under.
type FencedFn<T> = Box<
    dyn for<'c> FnOnce(&'c mut WriterConn, Option<i64>) -> BoxFuture<'c, Result<T, StoreError>>
        + Send,
>;

/// The writer's connection and its cache of step states.
///
/// The writer is the only process-wide writer, so the states it has
/// committed are authoritative: the cache spares the journal read that the
/// transition check would otherwise need on every append. Writes of an op
/// are staged until the op's savepoint is released, and of a batch until it
/// commits; a rolled-back op or batch leaves the cache as it was.
pub(crate) struct WriterConn {
    conn: AnyConnection,
    /// How to connect again when a server connection breaks (PostgreSQL:
    /// a restart, a failover). `None` for SQLite's file.
    reconnect: Option<AnyConnectOptions>,
    committed: HashMap<(JobId, String), NodeState>,
    staged: HashMap<(JobId, String), NodeState>,
    op: HashMap<(JobId, String), NodeState>,
    /// Jobs whose whole journal is in the cache: an absent step is pending.
    loaded: HashSet<JobId>,
    staged_loaded: HashSet<JobId>,
    op_loaded: HashSet<JobId>,
}

/// Past this many cached step states the cache starts over (it is only a
/// cache: misses read the journal).
const NODE_CACHE_MAX: usize = 50_000;

impl WriterConn {
    fn new(conn: AnyConnection, reconnect: Option<AnyConnectOptions>) -> Self {
        WriterConn {
            conn,
            reconnect,
            committed: HashMap::new(),
            staged: HashMap::new(),
            op: HashMap::new(),
            loaded: HashSet::new(),
            staged_loaded: HashSet::new(),
            op_loaded: HashSet::new(),
        }
    }
    fn cached(&self, key: &(JobId, String)) -> Option<NodeState> {
        if let Some(s) =
            self.op.get(key).or_else(|| self.staged.get(key)).or_else(|| self.committed.get(key))
        {
            return Some(s.clone());
        }
        let loaded = self.op_loaded.contains(&key.0)
            || self.staged_loaded.contains(&key.0)
            || self.loaded.contains(&key.0);
        loaded.then_some(NodeState::Pending)
    }
    fn op_done(&mut self, ok: bool) {
        if ok {
            self.staged.extend(self.op.drain());
            self.staged_loaded.extend(self.op_loaded.drain());
        } else {
            self.op.clear();
            self.op_loaded.clear();
        }
    }
    fn batch_done(&mut self, ok: bool) {
        self.op.clear();
        self.op_loaded.clear();
        if ok {
            if self.committed.len() + self.staged.len() > NODE_CACHE_MAX {
                self.committed.clear();
                self.loaded.clear();
            }
            self.committed.extend(self.staged.drain());
            self.loaded.extend(self.staged_loaded.drain());
        } else {
            self.staged.clear();
            self.staged_loaded.clear();
        }
    }
    /// Drops every cached state of `job` (read again from the journal).
    fn forget(&mut self, job: JobId) {
        for layer in [&mut self.committed, &mut self.staged, &mut self.op] {
            layer.retain(|(j, _), _| *j != job);
        }
        for set in [&mut self.loaded, &mut self.staged_loaded, &mut self.op_loaded] {
            set.remove(&job);
        }
    }

    /// Reads a job's whole journal into the op layer (it becomes committed
    /// cache only if this op and batch commit).
    async fn load_job(&mut self, job: JobId) -> Result<(), StoreError> {
        let rows = sqlx::query("SELECT node, body FROM step_events WHERE job_id = $1 ORDER BY seq")
            .bind(job.to_string())
            .fetch_all(&mut self.conn)
            .await
            .map_err(StoreError::query("read job journal"))?;
        let mut states: HashMap<String, NodeState> = HashMap::new();
        for r in &rows {
            let node: String = r.get("node");
            let ev: StepEvent = json_col(r, "body")?;
            let cur = states.remove(&node).unwrap_or_default();
            let next = cur.next(&ev).map_err(|source| StoreError::CorruptJournal {
                job,
                node: node.clone(),
                source,
            })?;
            states.insert(node, next);
        }
        for (node, mut st) in states {
            // Outputs are left to the journal (see `append_step_tx`).
            st.take_output();
            let key = (job, node);
            // Staged writes of this batch are newer than nothing and already
            // in the rows read; keep the layers consistent by preferring them.
            if !self.staged.contains_key(&key) && !self.op.contains_key(&key) {
                self.op.insert(key, st);
            }
        }
        self.op_loaded.insert(job);
        Ok(())
    }

    /// One step's state read from the journal, output included (in this
    /// connection, so an uncommitted batch's own writes count).
    async fn node_from_journal(&mut self, job: JobId, node: &str) -> Result<NodeState, StoreError> {
        let rows = sqlx::query(
            "SELECT body FROM step_events WHERE job_id = $1 AND node = $2 ORDER BY seq",
        )
        .bind(job.to_string())
        .bind(node)
        .fetch_all(&mut self.conn)
        .await
        .map_err(StoreError::query("read step journal"))?;
        let events: Vec<StepEvent> =
            rows.iter().map(|r| json_col(r, "body")).collect::<Result<_, _>>()?;
        NodeState::replay(&events).map_err(|source| StoreError::CorruptJournal {
            job,
            node: node.to_owned(),
            source,
        })
    }
}

struct WriteOp {
    run: CustomFn,
    reply: oneshot::Sender<OpResult>,
    /// Events to fan out to subscribers once the batch has committed.
    publishes_events: bool,
}

/// Where the store keeps its files.
#[derive(Clone, Debug)]
pub struct StorePaths {
    pub database: PathBuf,
    /// The at-rest key (an age identity file).
    pub identity: PathBuf,
}

impl StorePaths {
    /// Both under one directory: for tests and benchmarks. The daemon keeps
    /// its key apart (its `at_rest_key` setting).
    pub fn in_dir(dir: &Path) -> StorePaths {
        StorePaths {
            database: dir.join("catalyst-zero.db"),
            identity: dir.join("identity.age.txt"),
        }
    }
}

/// What a submission should create, all in one transaction.
#[derive(Debug)]
pub struct Submission {
    pub sovereign: SovereignTarget,
    pub job_id: JobId,
    pub kind: JobKind,
    pub request: Value,
    pub plan: Value,
    pub options: Value,
    /// `(owner, name, plaintext)`; sealed before the transaction.
    pub secrets: Vec<(String, String, SecretString)>,
    pub idempotency: Option<IdempotencyKey>,
    /// What the API answers; replayed verbatim for a repeated key.
    pub response: Value,
    pub audit: NewAudit,
}

/// The Sovereign a submission creates or acts on.
#[derive(Debug)]
pub enum SovereignTarget {
    New {
        id: SovereignId,
        name: String,
        fqdn: String,
    },
    /// An existing Sovereign; its status becomes `status`.
    Existing {
        id: SovereignId,
        status: SovereignStatus,
    },
}

#[derive(Clone, Debug)]
pub struct IdempotencyKey {
    pub scope: String,
    pub key: String,
    pub body_sha256: String,
}

#[derive(Clone, Debug, PartialEq)]
pub enum SubmitOutcome {
    Created(Value),
    /// The same key and body were submitted before: the first answer.
    Replayed(Value),
}

/// A change to a job's cached status, checked against the status machine.
#[derive(Clone, Debug, Default)]
pub struct JobUpdate {
    pub status: Option<JobStatus>,
    pub mode: Option<JobMode>,
    /// `Some(None)` clears.
    pub pause: Option<Option<Value>>,
    pub error: Option<Option<Value>>,
    pub sovereign_status: Option<SovereignStatus>,
}

/// The database under a store.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Backend {
    /// One file, one daemon (the data dir's lock says which).
    Sqlite,
    /// A server shared by replicas; job runs are held by leases.
    Postgres,
}

impl Backend {
    pub fn as_str(self) -> &'static str {
        match self {
            Backend::Sqlite => "sqlite",
            Backend::Postgres => "postgres",
        }
    }
}

/// The durable store. Cheap to clone.
#[derive(Clone)]
pub struct Store {
    inner: Arc<Inner>,
}

struct Inner {
    pool: AnyPool,
    writer: mpsc::UnboundedSender<WriteOp>,
    sealer: Sealer,
    hub: Mutex<HashMap<JobId, broadcast::Sender<Arc<JobEvent>>>>,
    backend: Backend,
    /// The SQLite files; `None` on PostgreSQL.
    paths: Option<StorePaths>,
    /// Where the database is, for messages (a PostgreSQL URL without its
    /// password).
    location: String,
    /// This process's name as a lease owner (PostgreSQL).
    replica: String,
    /// The leases this process holds: job → generation.
    held: Mutex<HashMap<JobId, i64>>,
    /// Job events committed by this process.
    events_written: std::sync::atomic::AtomicU64,
}

/// The lease a write of a job is made under (PostgreSQL): checked in the
/// write's own transaction, and recorded on its rows.
#[derive(Clone, Debug)]
struct Fence {
    owner: String,
    generation: i64,
}

/// How much space the store holds back for recording a full disk.
pub const RESERVE_BYTES: u64 = 4 << 20;

/// Per-connection settings of the SQLite store: WAL with `synchronous =
/// FULL` (a commit that returned is on disk), foreign keys, and a wait for
/// an outside writer (an operator's `sqlite3` shell) instead of an error.
const SQLITE_PRAGMAS: &str = "PRAGMA journal_mode = WAL; PRAGMA synchronous = FULL; \
                              PRAGMA foreign_keys = ON; PRAGMA busy_timeout = 30000;";

/// `url` without its password, for logs and errors.
pub fn redact_url(url: &str) -> String {
    match url::Url::parse(url) {
        Ok(mut u) => {
            if u.password().is_some() {
                let _ = u.set_password(Some("***"));
            }
            u.to_string()
        }
        Err(_) => "<an unparseable database URL>".into(),
    }
}

impl Store {
    /// Opens (creating if needed) the SQLite database and identity under
    /// `paths`, applies pending migrations and starts the writer task.
    pub async fn open(paths: StorePaths) -> Result<Store, StoreError> {
        if let Some(dir) = paths.database.parent() {
            std::fs::create_dir_all(dir)
                .map_err(|source| StoreError::DataDir { path: dir.to_owned(), source })?;
        }
        let sealer = Sealer::load_or_create(&paths.identity).map_err(StoreError::Seal)?;
        sqlx::any::install_default_drivers();
        let open_err = |source| StoreError::Open { path: paths.database.clone(), source };
        let file = SqliteConnectOptions::new().filename(&paths.database);
        let rw = AnyConnectOptions::from_url(&file.clone().create_if_missing(true).to_url_lossy())
            .map_err(open_err)?;
        let ro =
            AnyConnectOptions::from_url(&file.read_only(true).to_url_lossy()).map_err(open_err)?;
        let mut writer_conn = AnyConnection::connect_with(&rw).await.map_err(open_err)?;
        sqlx::raw_sql(SQLITE_PRAGMAS).execute(&mut writer_conn).await.map_err(open_err)?;
        MIGRATOR.run(&mut writer_conn).await.map_err(StoreError::Migrate)?;
        let pool = AnyPoolOptions::new()
            .max_connections(8)
            .after_connect(|c, _| {
                Box::pin(async move {
                    sqlx::raw_sql("PRAGMA busy_timeout = 30000").execute(c).await.map(|_| ())
                })
            })
            .connect_with(ro)
            .await
            .map_err(open_err)?;
        let location = paths.database.display().to_string();
        Store::start(writer_conn, None, pool, sealer, Backend::Sqlite, Some(paths), location).await
    }

    /// Opens the PostgreSQL store at `url` (`postgres://…`) with the
    /// at-rest key at `identity`, applying pending migrations (under
    /// PostgreSQL's advisory lock, so replicas starting together migrate
    /// once).
    ///
    /// The key must exist: replicas share the store, so they must share the
    /// key, and one created here would be this replica's alone.
    pub async fn open_postgres(url: &str, identity: &Path) -> Result<Store, StoreError> {
        let location = redact_url(url);
        let sealer = Sealer::load(identity).map_err(StoreError::Seal)?;
        sqlx::any::install_default_drivers();
        let connect_err = |source| StoreError::Connect { url: location.clone(), source };
        let opts = AnyConnectOptions::from_str(url).map_err(connect_err)?;
        if opts.database_url.scheme() != "postgres" && opts.database_url.scheme() != "postgresql" {
            return Err(StoreError::Connect {
                url: location.clone(),
                source: sqlx::Error::Configuration("not a postgres:// URL".into()),
            });
        }
        let mut writer_conn = AnyConnection::connect_with(&opts).await.map_err(connect_err)?;
        PG_MIGRATOR.run(&mut writer_conn).await.map_err(StoreError::Migrate)?;
        let pool = AnyPoolOptions::new()
            .max_connections(8)
            .connect_with(opts.clone())
            .await
            .map_err(connect_err)?;
        Store::start(writer_conn, Some(opts), pool, sealer, Backend::Postgres, None, location).await
    }

    async fn start(
        writer_conn: AnyConnection,
        reconnect: Option<AnyConnectOptions>,
        pool: AnyPool,
        sealer: Sealer,
        backend: Backend,
        paths: Option<StorePaths>,
        location: String,
    ) -> Result<Store, StoreError> {
        // A store written with another key would fail at its first secret,
        // mid-job: refuse now.
        let sample: Option<Vec<u8>> = sqlx::query_scalar("SELECT ciphertext FROM secrets LIMIT 1")
            .fetch_optional(&pool)
            .await
            .map_err(StoreError::query("check the at-rest key"))?;
        if let Some(blob) = sample
            && sealer.unseal(blob.as_slice()).is_err()
        {
            return Err(StoreError::WrongKey { key: sealer.path().to_owned(), database: location });
        }
        let (tx, rx) = mpsc::unbounded_channel();
        let store = Store {
            inner: Arc::new(Inner {
                pool,
                writer: tx,
                sealer,
                hub: Mutex::new(HashMap::new()),
                backend,
                paths,
                location,
                replica: format!(
                    "{}/{}/{}",
                    hostname(),
                    std::process::id(),
                    &uuid::Uuid::new_v4().simple().to_string()[..8]
                ),
                held: Mutex::new(HashMap::new()),
                events_written: std::sync::atomic::AtomicU64::new(0),
            }),
        };
        // The writer runs on its own thread with a single-threaded runtime:
        // a caller's op then costs one wake-up each way instead of a trip
        // through the shared scheduler (measured: ~50 µs vs ~125 µs per op).
        let weak = Arc::downgrade(&store.inner);
        std::thread::Builder::new()
            .name("cz-store-writer".into())
            .spawn(move || {
                let rt = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                    .expect("the store writer's runtime");
                rt.block_on(writer_task(WriterConn::new(writer_conn, reconnect), rx, weak));
            })
            .map_err(|source| StoreError::Thread { source })?;
        Ok(store)
    }

    pub fn backend(&self) -> Backend {
        self.inner.backend
    }

    /// Where the database is (a file path, or a URL without password).
    pub fn location(&self) -> &str {
        &self.inner.location
    }

    /// The reserve file beside the database: space held back so that,
    /// when the disk fills, releasing it leaves room to record why the job
    /// stopped (see [`Store::release_reserve`]).
    /// `None` on PostgreSQL, whose disk is the server's.
    pub fn reserve_path(&self) -> Option<PathBuf> {
        Some(self.inner.paths.as_ref()?.database.with_extension("reserve"))
    }

    /// Writes the reserve if it is missing (real bytes: a sparse file would
    /// hold back nothing). Whether it is in place; a disk too full for it
    /// is logged, not an error.
    pub fn ensure_reserve(&self) -> bool {
        use std::io::Write as _;
        let Some(path) = self.reserve_path() else { return true };
        if std::fs::metadata(&path).is_ok_and(|m| m.len() >= RESERVE_BYTES) {
            return true;
        }
        let write = || -> std::io::Result<()> {
            let mut f = std::fs::File::create(&path)?;
            let chunk = vec![0u8; 1 << 20];
            for _ in 0..RESERVE_BYTES / chunk.len() as u64 {
                f.write_all(&chunk)?;
            }
            f.sync_all()
        };
        match write() {
            Ok(()) => true,
            Err(e) => {
                let _ = std::fs::remove_file(&path);
                tracing::warn!(
                    reserve = %path.display(),
                    error = &e as &dyn std::error::Error,
                    "Cannot hold back the store's reserve space; a full disk may leave a job unrecorded."
                );
                false
            }
        }
    }

    /// Gives the reserve's space back to the file system (a full disk):
    /// whether there was one.
    pub fn release_reserve(&self) -> bool {
        let Some(path) = self.reserve_path() else { return false };
        let released = std::fs::remove_file(&path).is_ok();
        if released {
            tracing::warn!(reserve = %path.display(), "Released the store's reserve space to record a storage fault.");
        }
        released
    }

    /// The SQLite store's files; `None` on PostgreSQL.
    pub fn paths(&self) -> Option<&StorePaths> {
        self.inner.paths.as_ref()
    }

    /// A read-only pool (tests and the schema check use it).
    pub fn read_pool(&self) -> &AnyPool {
        &self.inner.pool
    }

    /// The public half of the daemon identity.
    pub fn identity_recipient(&self) -> String {
        self.inner.sealer.recipient()
    }

    async fn write<T: Send + 'static>(
        &self,
        publishes_events: bool,
        run: CustomFn,
    ) -> Result<T, StoreError> {
        let (reply, rx) = oneshot::channel();
        self.inner
            .writer
            .send(WriteOp { run, reply, publishes_events })
            .map_err(|_| StoreError::WriterGone)?;
        let boxed = rx.await.map_err(|_| StoreError::WriterGone)??;
        Ok(*boxed.downcast::<T>().expect("writer op returned its own type"))
    }

    // === submissions ===

    /// Creates (or, for a repeated idempotency key, replays) a submission:
    /// Sovereign, job, sealed secrets, idempotency key and audit entry in one
    /// transaction. On any error nothing is written.
    pub async fn submit(&self, sub: Submission) -> Result<SubmitOutcome, StoreError> {
        let mut sealed = Vec::new();
        for (owner, name, plain) in &sub.secrets {
            sealed.push((owner.clone(), name.clone(), self.seal(plain)?));
        }
        self.write(
            false,
            Box::new(move |w| {
                Box::pin(async move {
                    let c = &mut w.conn;
                    let out: SubmitOutcome = submit_tx(c, sub, sealed).await?;
                    Ok(Box::new(out) as Box<dyn Any + Send>)
                })
            }),
        )
        .await
    }

    // === sovereigns ===

    pub async fn get_sovereign(&self, id: SovereignId) -> Result<Option<Sovereign>, StoreError> {
        let row = sqlx::query("SELECT * FROM sovereigns WHERE id = $1")
            .bind(id.to_string())
            .fetch_optional(&self.inner.pool)
            .await
            .map_err(StoreError::query("get sovereign"))?;
        row.map(|r| sovereign_from_row(&r)).transpose()
    }

    pub async fn list_sovereigns(&self) -> Result<Vec<Sovereign>, StoreError> {
        let rows = sqlx::query("SELECT * FROM sovereigns ORDER BY created_at, id")
            .fetch_all(&self.inner.pool)
            .await
            .map_err(StoreError::query("list sovereigns"))?;
        rows.iter().map(sovereign_from_row).collect()
    }

    // === jobs ===

    pub async fn get_job(&self, id: JobId) -> Result<Option<Job>, StoreError> {
        let row = sqlx::query("SELECT * FROM jobs WHERE id = $1")
            .bind(id.to_string())
            .fetch_optional(&self.inner.pool)
            .await
            .map_err(StoreError::query("get job"))?;
        row.map(|r| job_from_row(&r)).transpose()
    }

    pub async fn list_jobs(&self, sovereign: Option<SovereignId>) -> Result<Vec<Job>, StoreError> {
        let rows = match sovereign {
            Some(s) => {
                sqlx::query("SELECT * FROM jobs WHERE sovereign_id = $1 ORDER BY created_at, id")
                    .bind(s.to_string())
                    .fetch_all(&self.inner.pool)
                    .await
            }
            None => {
                sqlx::query("SELECT * FROM jobs ORDER BY created_at, id")
                    .fetch_all(&self.inner.pool)
                    .await
            }
        }
        .map_err(StoreError::query("list jobs"))?;
        rows.iter().map(job_from_row).collect()
    }

    /// Job rows for a list: every column but the request, the plan and the
    /// options, which are `Null` here (a list of many jobs never loads
    /// their plans; the console polls it).
    pub async fn list_jobs_light(
        &self,
        sovereign: Option<SovereignId>,
    ) -> Result<Vec<Job>, StoreError> {
        macro_rules! light {
            ($tail:literal) => {
                concat!(
                    "SELECT id, sovereign_id, kind, status, mode, 'null' AS request, ",
                    "'null' AS plan, 'null' AS options, pause, error, created_at, updated_at, ",
                    "finished_at FROM jobs",
                    $tail
                )
            };
        }
        let rows = match sovereign {
            Some(s) => {
                sqlx::query(light!(" WHERE sovereign_id = $1 ORDER BY created_at, id"))
                    .bind(s.to_string())
                    .fetch_all(&self.inner.pool)
                    .await
            }
            None => {
                sqlx::query(light!(" ORDER BY created_at, id")).fetch_all(&self.inner.pool).await
            }
        }
        .map_err(StoreError::query("list jobs"))?;
        rows.iter().map(job_from_row).collect()
    }

    /// The phase of a job's newest `phase` event: the phase it is on (or
    /// was last on). Reads back from the newest event, so it costs the
    /// events since that phase began, not the whole log.
    pub async fn latest_phase(&self, job: JobId) -> Result<Option<String>, StoreError> {
        let body: Option<String> = sqlx::query_scalar(
            "SELECT body FROM job_events WHERE job_id = $1 AND kind = 'phase' \
             ORDER BY id DESC LIMIT 1",
        )
        .bind(job.to_string())
        .fetch_optional(&self.inner.pool)
        .await
        .map_err(StoreError::query("read the latest phase"))?;
        Ok(body
            .and_then(|b| serde_json::from_str::<Value>(&b).ok())
            .and_then(|v| v["phase"].as_str().map(str::to_owned)))
    }

    /// How many jobs there are of each status (one aggregate query: a
    /// scrape never loads job rows).
    pub async fn count_jobs_by_status(&self) -> Result<Vec<(JobStatus, i64)>, StoreError> {
        let rows: Vec<(String, i64)> =
            sqlx::query_as("SELECT status, count(*) FROM jobs GROUP BY status")
                .fetch_all(&self.inner.pool)
                .await
                .map_err(StoreError::query("count jobs"))?;
        rows.into_iter()
            .map(|(s, n)| {
                let status = s.parse::<JobStatus>().map_err(|e| StoreError::Decode {
                    column: "status",
                    source: format!("`{s}`: {e}").into(),
                })?;
                Ok((status, n))
            })
            .collect()
    }

    /// Jobs not yet ended: pending, running or paused (a paused job waits
    /// for its operator). Final jobs are never read.
    pub async fn live_jobs(&self) -> Result<Vec<Job>, StoreError> {
        self.jobs_where(
            "SELECT * FROM jobs WHERE status IN ('pending', 'running', 'paused') ORDER BY created_at, id",
            "live jobs",
        )
        .await
    }

    /// The jobs `sql` (a fixed query without parameters) selects.
    async fn jobs_where(
        &self,
        sql: &'static str,
        what: &'static str,
    ) -> Result<Vec<Job>, StoreError> {
        let rows =
            sqlx::query(sql).fetch_all(&self.inner.pool).await.map_err(StoreError::query(what))?;
        rows.iter().map(job_from_row).collect()
    }

    /// Whether the database answers (one trivial query).
    pub async fn ping(&self) -> Result<(), StoreError> {
        sqlx::query("SELECT 1")
            .execute(&self.inner.pool)
            .await
            .map_err(StoreError::query("ping"))?;
        Ok(())
    }

    /// Job events this process has committed since it started.
    pub fn events_written(&self) -> u64 {
        self.inner.events_written.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// The jobs a starting daemon must drive, oldest first, without their
    /// request, plan and options (nothing JSON is decoded): `(id, sovereign,
    /// kind, status)`.
    pub async fn jobs_in_flight_ids(
        &self,
    ) -> Result<Vec<(JobId, SovereignId, JobKind, JobStatus)>, StoreError> {
        let rows = sqlx::query(
            "SELECT id, sovereign_id, kind, status FROM jobs \
             WHERE status IN ('pending', 'running') ORDER BY created_at, id",
        )
        .fetch_all(&self.inner.pool)
        .await
        .map_err(StoreError::query("jobs in flight"))?;
        rows.iter()
            .map(|r| {
                Ok((
                    parse_col(r, "id")?,
                    parse_col(r, "sovereign_id")?,
                    parse_col(r, "kind")?,
                    parse_col(r, "status")?,
                ))
            })
            .collect()
    }

    /// Jobs a starting daemon must drive: `pending` or `running`.
    pub async fn jobs_in_flight(&self) -> Result<Vec<Job>, StoreError> {
        self.jobs_where(
            "SELECT * FROM jobs WHERE status IN ('pending', 'running') ORDER BY created_at, id",
            "jobs in flight",
        )
        .await
    }

    /// Applies `update` to a job, refusing a status change the status machine
    /// forbids. Returns the updated row.
    pub async fn update_job(&self, id: JobId, update: JobUpdate) -> Result<Job, StoreError> {
        self.fenced(
            id,
            false,
            Box::new(move |w, _| {
                Box::pin(async move { update_job_tx(&mut w.conn, id, update).await })
            }),
        )
        .await
    }

    // === step journal ===

    /// Appends one journal event after checking it against the node's
    /// current state. Returns the new state.
    pub async fn append_step_event(
        &self,
        job: JobId,
        node: &str,
        event: StepEvent,
    ) -> Result<NodeState, StoreError> {
        Ok(self.append_step_event_with(job, node, event, Vec::new()).await?.0)
    }

    /// Appends a journal event and stream events in one transaction (a step
    /// transition and the events announcing it are never separated).
    /// Returns the node's new state and the last event's id (0: none).
    pub async fn append_step_event_with(
        &self,
        job: JobId,
        node: &str,
        event: StepEvent,
        events: Vec<NewJobEvent>,
    ) -> Result<(NodeState, i64), StoreError> {
        let node = node.to_owned();
        let (state, appended) = self
            .fenced(
                job,
                true,
                Box::new(move |w, g| {
                    Box::pin(async move {
                        let state = append_step_tx(w, job, &node, &event, g).await?;
                        let evs = append_events_tx(&mut w.conn, job, events, g).await?;
                        Ok((state, evs))
                    })
                }),
            )
            .await?;
        Ok((state, appended.last_id()))
    }

    /// The whole journal of a job, in order.
    pub async fn journal(&self, job: JobId) -> Result<Vec<StepEventRecord>, StoreError> {
        let rows = sqlx::query(
            "SELECT seq, node, body, at FROM step_events WHERE job_id = $1 ORDER BY seq",
        )
        .bind(job.to_string())
        .fetch_all(&self.inner.pool)
        .await
        .map_err(StoreError::query("read journal"))?;
        rows.iter()
            .map(|r| {
                Ok(StepEventRecord {
                    seq: r.get("seq"),
                    node: r.get("node"),
                    event: json_col(r, "body")?,
                    at: r.get("at"),
                })
            })
            .collect()
    }

    /// Every node's derived state (nodes without events are absent).
    pub async fn node_states(&self, job: JobId) -> Result<BTreeMap<String, NodeState>, StoreError> {
        let mut out: BTreeMap<String, NodeState> = BTreeMap::new();
        for rec in self.journal(job).await? {
            let cur = out.remove(&rec.node).unwrap_or_default();
            let next = cur.next(&rec.event).map_err(|source| StoreError::CorruptJournal {
                job,
                node: rec.node.clone(),
                source,
            })?;
            out.insert(rec.node, next);
        }
        Ok(out)
    }

    // === job events ===

    /// Appends events to a job's stream; ids are allocated in the
    /// transaction. Returns the id of the last one (0: none given, none
    /// written).
    pub async fn append_events(
        &self,
        job: JobId,
        events: Vec<NewJobEvent>,
    ) -> Result<i64, StoreError> {
        if events.is_empty() {
            return Ok(0);
        }
        let appended = self
            .fenced(
                job,
                true,
                Box::new(move |w, g| {
                    Box::pin(async move { append_events_tx(&mut w.conn, job, events, g).await })
                }),
            )
            .await?;
        Ok(appended.last_id())
    }

    /// The id of a job's newest event (0: none yet).
    pub async fn last_event_id(&self, job: JobId) -> Result<i64, StoreError> {
        let last: Option<i64> =
            sqlx::query_scalar("SELECT last_id FROM job_event_heads WHERE job_id = $1")
                .bind(job.to_string())
                .fetch_optional(&self.inner.pool)
                .await
                .map_err(StoreError::query("read last event id"))?;
        Ok(last.unwrap_or(0))
    }

    /// Events with id > `after`, at most `limit`.
    pub async fn events_after(
        &self,
        job: JobId,
        after: i64,
        limit: i64,
    ) -> Result<Vec<JobEvent>, StoreError> {
        read_events(&self.inner.pool, job, after, limit).await
    }

    /// Live events of a job, published after their transaction committed.
    /// Subscribe *before* reading the backlog and drop ids already seen; on
    /// `Lagged`, read the gap back from `events_after`.
    ///
    /// On PostgreSQL another replica may be the one writing the job's
    /// events: a tail task polls the job's stream every
    /// [`TAIL_EVERY`] while anyone here subscribes, and publishes what it
    /// finds (subscribers drop ids they have already seen).
    pub fn subscribe(&self, job: JobId) -> broadcast::Receiver<Arc<JobEvent>> {
        let mut hub = self.inner.hub.lock().expect("event hub lock");
        let mut first = false;
        let rx = hub
            .entry(job)
            .or_insert_with(|| {
                first = true;
                broadcast::channel(EVENT_FANOUT_CAPACITY).0
            })
            .subscribe();
        if first
            && self.inner.backend == Backend::Postgres
            && let Ok(rt) = tokio::runtime::Handle::try_current()
        {
            rt.spawn(tail_events(Arc::downgrade(&self.inner), job));
        }
        rx
    }

    /// Returns once every write handed to the writer before this call is
    /// committed (the writer applies operations in order).
    pub async fn barrier(&self) -> Result<(), StoreError> {
        self.write(
            false,
            Box::new(|_w| Box::pin(async { Ok(Box::new(()) as Box<dyn Any + Send>) })),
        )
        .await
    }

    // === audit ===

    pub async fn record_audit(&self, entry: NewAudit) -> Result<i64, StoreError> {
        self.write(
            false,
            Box::new(move |w| {
                Box::pin(async move {
                    let c = &mut w.conn;
                    let id = insert_audit(c, &entry).await?;
                    Ok(Box::new(id) as Box<dyn Any + Send>)
                })
            }),
        )
        .await
    }

    pub async fn audit(&self, job: Option<JobId>) -> Result<Vec<AuditEntry>, StoreError> {
        let rows = match job {
            Some(j) => {
                sqlx::query("SELECT * FROM audit WHERE job_id = $1 ORDER BY id")
                    .bind(j.to_string())
                    .fetch_all(&self.inner.pool)
                    .await
            }
            None => {
                sqlx::query("SELECT * FROM audit ORDER BY id").fetch_all(&self.inner.pool).await
            }
        }
        .map_err(StoreError::query("read audit"))?;
        audit_rows(&rows)
    }

    /// The audit entries of one Sovereign with one action (`escrow.read`).
    pub async fn audit_of_sovereign(
        &self,
        sovereign: SovereignId,
        action: &str,
    ) -> Result<Vec<AuditEntry>, StoreError> {
        let rows =
            sqlx::query("SELECT * FROM audit WHERE sovereign_id = $1 AND action = $2 ORDER BY id")
                .bind(sovereign.to_string())
                .bind(action)
                .fetch_all(&self.inner.pool)
                .await
                .map_err(StoreError::query("read audit"))?;
        audit_rows(&rows)
    }
}

fn audit_rows(rows: &[AnyRow]) -> Result<Vec<AuditEntry>, StoreError> {
    rows.iter()
        .map(|r| {
            Ok(AuditEntry {
                id: r.get("id"),
                at: r.get("at"),
                actor: r.get("actor"),
                action: r.get("action"),
                job_id: opt_id(r, "job_id")?,
                sovereign_id: opt_id(r, "sovereign_id")?,
                detail: json_col(r, "detail")?,
            })
        })
        .collect()
}

impl Store {
    // === secrets ===

    fn seal(&self, plain: &SecretString) -> Result<Vec<u8>, StoreError> {
        self.inner.sealer.seal(plain.expose().as_bytes()).map_err(StoreError::Seal)
    }

    /// Stores (or replaces) a secret, age-encrypted.
    pub async fn put_secret(
        &self,
        owner: &str,
        name: &str,
        plain: &SecretString,
    ) -> Result<(), StoreError> {
        self.put_secrets(owner, &[(name.to_owned(), plain.clone())]).await
    }

    /// Stores several secrets in one transaction (all or none).
    pub async fn put_secrets(
        &self,
        owner: &str,
        secrets: &[(String, SecretString)],
    ) -> Result<(), StoreError> {
        let mut sealed = Vec::with_capacity(secrets.len());
        for (name, plain) in secrets {
            sealed.push((name.clone(), self.seal(plain)?));
        }
        let owner = owner.to_owned();
        self.write(
            false,
            Box::new(move |w| {
                Box::pin(async move {
                    let c = &mut w.conn;
                    upsert_sealed(c, &owner, sealed).await?;
                    Ok(Box::new(()) as Box<dyn Any + Send>)
                })
            }),
        )
        .await
    }

    /// Reads and decrypts a secret.
    pub async fn get_secret(
        &self,
        owner: &str,
        name: &str,
    ) -> Result<Option<SecretString>, StoreError> {
        let row = sqlx::query("SELECT ciphertext FROM secrets WHERE owner = $1 AND name = $2")
            .bind(owner)
            .bind(name)
            .fetch_optional(&self.inner.pool)
            .await
            .map_err(StoreError::query("get secret"))?;
        let Some(row) = row else { return Ok(None) };
        let blob: Vec<u8> = row.get("ciphertext");
        let plain = self.inner.sealer.unseal(&blob).map_err(StoreError::Seal)?;
        let text = String::from_utf8(plain)
            .map_err(|_| StoreError::Seal(SealError::Decrypt("secret is not UTF-8".into())))?;
        Ok(Some(SecretString::new(text)))
    }

    /// The names of the secrets `owner` holds, sorted (never their values).
    pub async fn secret_names(&self, owner: &str) -> Result<Vec<String>, StoreError> {
        let rows = sqlx::query("SELECT name FROM secrets WHERE owner = $1 ORDER BY name")
            .bind(owner)
            .fetch_all(&self.inner.pool)
            .await
            .map_err(StoreError::query("list secret names"))?;
        Ok(rows.iter().map(|r| r.get("name")).collect())
    }

    /// Removes a secret; absent is fine.
    pub async fn delete_secret(&self, owner: &str, name: &str) -> Result<(), StoreError> {
        let (owner, name) = (owner.to_owned(), name.to_owned());
        self.write(
            false,
            Box::new(move |w| {
                Box::pin(async move {
                    let c = &mut w.conn;
                    sqlx::query("DELETE FROM secrets WHERE owner = $1 AND name = $2")
                        .bind(owner)
                        .bind(name)
                        .execute(&mut *c)
                        .await
                        .map_err(StoreError::query("delete secret"))?;
                    Ok(Box::new(()) as Box<dyn Any + Send>)
                })
            }),
        )
        .await
    }
}

// === leases (PostgreSQL replicas) ===

/// The database server's clock in milliseconds: replicas judge lease
/// expiry by one clock, not by their own.
fn db_now(backend: Backend) -> &'static str {
    match backend {
        Backend::Postgres => "(extract(epoch from clock_timestamp()) * 1000)::bigint",
        Backend::Sqlite => "CAST((julianday('now') - 2440587.5) * 86400000 AS INTEGER)",
    }
}

/// What a renewal found.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Renewal {
    /// Still held, now until the new expiry.
    pub renewed: Vec<JobId>,
    /// Expired or taken over: their runs must stop (their writes are
    /// already refused).
    pub lost: Vec<JobId>,
}

impl Store {
    /// What a lease write needs: the dialect, this owner, the TTL in ms.
    fn lease_args(&self, ttl: Duration) -> (Backend, String, i64) {
        let ttl_ms = i64::try_from(ttl.as_millis()).unwrap_or(i64::MAX);
        (self.inner.backend, self.inner.replica.clone(), ttl_ms)
    }

    /// This process's name as a lease owner: host, pid and a random tag.
    pub fn replica(&self) -> &str {
        &self.inner.replica
    }

    /// The leases this process holds, job → generation.
    pub fn held_leases(&self) -> BTreeMap<JobId, i64> {
        self.inner.held.lock().expect("lease table").iter().map(|(j, g)| (*j, *g)).collect()
    }

    /// The lease a write of `job` must be made under: none on SQLite
    /// (one writer, by the data dir's lock); on PostgreSQL the one this
    /// process holds, or `LeaseLost`.
    fn fence(&self, job: JobId) -> Result<Option<Fence>, StoreError> {
        match self.inner.backend {
            Backend::Sqlite => Ok(None),
            Backend::Postgres => {
                let held = self.inner.held.lock().expect("lease table");
                let generation = *held.get(&job).ok_or(StoreError::LeaseLost { job })?;
                Ok(Some(Fence { owner: self.inner.replica.clone(), generation }))
            }
        }
    }

    /// Runs `run` as a write of `job`'s rows: on PostgreSQL under the
    /// lease this process holds, checked in the same transaction (a lost
    /// lease is forgotten here and answered `LeaseLost`).
    async fn fenced<T: Send + 'static>(
        &self,
        job: JobId,
        publishes_events: bool,
        run: FencedFn<T>,
    ) -> Result<T, StoreError> {
        let fence = self.fence(job)?;
        let r = self
            .write(
                publishes_events,
                Box::new(move |w| {
                    Box::pin(async move {
                        let g = check_fence(w, job, fence.as_ref()).await?;
                        Ok(Box::new(run(w, g).await?) as Box<dyn Any + Send>)
                    })
                }),
            )
            .await;
        if let Err(StoreError::LeaseLost { .. }) = &r {
            self.inner.held.lock().expect("lease table").remove(&job);
        }
        r
    }

    /// Claims leases for `ttl`: on `job` alone if given (taking it over
    /// from a live holder too if `take_over`: an operator's verb), else on
    /// up to `limit` in-flight jobs whose lease is absent or expired,
    /// oldest first. Rows being claimed by another replica at this moment
    /// are skipped (`FOR UPDATE SKIP LOCKED`), so replicas never wait on
    /// each other. Every claim raises the lease's generation, which
    /// fences off the writes of any earlier holder. Returns what was
    /// claimed.
    pub async fn claim_leases(
        &self,
        job: Option<JobId>,
        take_over: bool,
        ttl: Duration,
        limit: i64,
    ) -> Result<Vec<JobId>, StoreError> {
        let (backend, owner, ttl_ms) = self.lease_args(ttl);
        let claimed: Vec<(JobId, i64)> = self
            .write(
                false,
                Box::new(move |w| {
                    Box::pin(async move {
                        let now = db_now(backend);
                        let lock = match backend {
                            Backend::Postgres => " FOR UPDATE OF j SKIP LOCKED",
                            Backend::Sqlite => "",
                        };
                        let rows: Vec<String> = match job {
                            Some(id) => sqlx::query_scalar(AssertSqlSafe(format!(
                                "SELECT j.id FROM jobs j WHERE j.id = $1{lock}"
                            )))
                            .bind(id.to_string())
                            .fetch_all(&mut w.conn)
                            .await,
                            None => sqlx::query_scalar(AssertSqlSafe(format!(
                                "SELECT j.id FROM jobs j LEFT JOIN job_leases l ON l.job_id = j.id \
                                 WHERE j.status IN ('pending', 'running') \
                                 AND (l.job_id IS NULL OR l.expires_at < {now}) \
                                 ORDER BY j.created_at, j.id LIMIT $1{lock}"
                            )))
                            .bind(limit)
                            .fetch_all(&mut w.conn)
                            .await,
                        }
                        .map_err(StoreError::query("find leases to claim"))?;
                        let mut out = Vec::new();
                        for id in rows {
                            let g: Option<i64> = sqlx::query_scalar(AssertSqlSafe(format!(
                                "INSERT INTO job_leases (job_id, owner, generation, expires_at) \
                                 VALUES ($1, $2, 1, {now} + $3) ON CONFLICT (job_id) DO UPDATE \
                                 SET owner = excluded.owner, generation = job_leases.generation + 1, \
                                 expires_at = excluded.expires_at \
                                 WHERE job_leases.expires_at < {now} OR job_leases.owner = $2 OR $4 \
                                 RETURNING generation"
                            )))
                            .bind(&id)
                            .bind(&owner)
                            .bind(ttl_ms)
                            .bind(take_over)
                            .fetch_optional(&mut w.conn)
                            .await
                            .map_err(StoreError::query("claim a lease"))?;
                            if let Some(g) = g {
                                let id: JobId = id.parse().map_err(|e: uuid::Error| {
                                    StoreError::Decode { column: "id", source: e.to_string().into() }
                                })?;
                                // Another replica may have written this job's
                                // journal since this one last cached it.
                                w.forget(id);
                                out.push((id, g));
                            }
                        }
                        Ok(Box::new(out) as Box<dyn Any + Send>)
                    })
                }),
            )
            .await?;
        let mut held = self.inner.held.lock().expect("lease table");
        for (id, g) in &claimed {
            held.insert(*id, *g);
        }
        Ok(claimed.into_iter().map(|(id, _)| id).collect())
    }

    /// Extends every lease this process holds by `ttl`, and says which are
    /// lost (expired, or taken over by another replica).
    pub async fn renew_leases(&self, ttl: Duration) -> Result<Renewal, StoreError> {
        let (backend, owner, ttl_ms) = self.lease_args(ttl);
        let live: Vec<(String, i64)> = self
            .write(
                false,
                Box::new(move |w| {
                    Box::pin(async move {
                        let now = db_now(backend);
                        let rows: Vec<(String, i64)> = sqlx::query_as(AssertSqlSafe(format!(
                            "UPDATE job_leases SET expires_at = {now} + $2 \
                             WHERE owner = $1 AND expires_at >= {now} RETURNING job_id, generation"
                        )))
                        .bind(&owner)
                        .bind(ttl_ms)
                        .fetch_all(&mut w.conn)
                        .await
                        .map_err(StoreError::query("renew leases"))?;
                        Ok(Box::new(rows) as Box<dyn Any + Send>)
                    })
                }),
            )
            .await?;
        let live: HashMap<String, i64> = live.into_iter().collect();
        let mut held = self.inner.held.lock().expect("lease table");
        let mut out = Renewal::default();
        held.retain(|job, g| {
            if live.get(&job.to_string()) == Some(g) {
                out.renewed.push(*job);
                true
            } else {
                out.lost.push(*job);
                false
            }
        });
        Ok(out)
    }

    /// Gives up the lease of `job` (its run ended here), so another replica
    /// need not wait for it to expire. Absent is fine.
    pub async fn release_lease(&self, job: JobId) -> Result<(), StoreError> {
        let Some(generation) = self.inner.held.lock().expect("lease table").remove(&job) else {
            return Ok(());
        };
        let owner = self.inner.replica.clone();
        self.write(
            false,
            Box::new(move |w| {
                Box::pin(async move {
                    sqlx::query(
                        "DELETE FROM job_leases WHERE job_id = $1 AND owner = $2 AND generation = $3",
                    )
                    .bind(job.to_string())
                    .bind(&owner)
                    .bind(generation)
                    .execute(&mut w.conn)
                    .await
                    .map_err(StoreError::query("release a lease"))?;
                    Ok(Box::new(()) as Box<dyn Any + Send>)
                })
            }),
        )
        .await
    }

    /// Forgets every lease this process holds, without writing (it can no
    /// longer reach the database: they will expire).
    pub fn drop_leases(&self) -> Vec<JobId> {
        self.inner.held.lock().expect("lease table").drain().map(|(j, _)| j).collect()
    }
}

/// Checks, inside the write's transaction, that this process still holds
/// `job`'s lease at `fence`'s generation, and keeps the lease row locked
/// until the commit (a takeover waits for it). The generation to record.
async fn check_fence(
    w: &mut WriterConn,
    job: JobId,
    fence: Option<&Fence>,
) -> Result<Option<i64>, StoreError> {
    let Some(f) = fence else { return Ok(None) };
    let now = db_now(Backend::Postgres);
    let ok: Option<i64> = sqlx::query_scalar(AssertSqlSafe(format!(
        "SELECT generation FROM job_leases WHERE job_id = $1 AND owner = $2 \
         AND generation = $3 AND expires_at >= {now} FOR SHARE"
    )))
    .bind(job.to_string())
    .bind(&f.owner)
    .bind(f.generation)
    .fetch_optional(&mut w.conn)
    .await
    .map_err(StoreError::query("check the job's lease"))?;
    match ok {
        Some(g) => Ok(Some(g)),
        None => Err(StoreError::LeaseLost { job }),
    }
}

fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_owned())
        .ok()
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "localhost".into())
}

// === console sessions ===

impl Store {
    /// Opens a console session (and drops sessions that ended or expired
    /// over a day ago, so the table stays small).
    pub async fn open_console_session(&self, s: ConsoleSession) -> Result<(), StoreError> {
        self.write(
            false,
            Box::new(move |w| {
                Box::pin(async move {
                    let c = &mut w.conn;
                    let horizon = now_ms() - 86_400_000;
                    sqlx::query(
                        "DELETE FROM console_sessions WHERE expires_at < $1 OR ended_at < $1",
                    )
                    .bind(horizon)
                    .execute(&mut *c)
                    .await
                    .map_err(StoreError::query("sweep console sessions"))?;
                    sqlx::query(
                        "INSERT INTO console_sessions (id_sha256, actor, role, token_sha256, \
                         created_at, expires_at) VALUES ($1, $2, $3, $4, $5, $6)",
                    )
                    .bind(s.id_sha256)
                    .bind(s.actor)
                    .bind(s.role)
                    .bind(s.token_sha256)
                    .bind(s.created_at)
                    .bind(s.expires_at)
                    .execute(&mut *c)
                    .await
                    .map_err(StoreError::query("open console session"))?;
                    Ok(Box::new(()) as Box<dyn Any + Send>)
                })
            }),
        )
        .await
    }

    /// The live session whose secret hashes to `id_sha256`: not ended and
    /// not expired at `now`.
    pub async fn console_session(
        &self,
        id_sha256: &str,
        now: Millis,
    ) -> Result<Option<ConsoleSession>, StoreError> {
        let row = sqlx::query(
            "SELECT * FROM console_sessions WHERE id_sha256 = $1 AND ended_at IS NULL \
             AND expires_at > $2",
        )
        .bind(id_sha256)
        .bind(now)
        .fetch_optional(&self.inner.pool)
        .await
        .map_err(StoreError::query("read console session"))?;
        Ok(row.map(|r| ConsoleSession {
            id_sha256: r.get("id_sha256"),
            actor: r.get("actor"),
            role: r.get("role"),
            token_sha256: r.get("token_sha256"),
            created_at: r.get("created_at"),
            expires_at: r.get("expires_at"),
        }))
    }

    /// Ends a session (sign-out); an unknown or ended one is fine.
    pub async fn end_console_session(&self, id_sha256: &str) -> Result<(), StoreError> {
        let id = id_sha256.to_owned();
        self.write(
            false,
            Box::new(move |w| {
                Box::pin(async move {
                    sqlx::query(
                        "UPDATE console_sessions SET ended_at = $1 \
                         WHERE id_sha256 = $2 AND ended_at IS NULL",
                    )
                    .bind(now_ms())
                    .bind(id)
                    .execute(&mut w.conn)
                    .await
                    .map_err(StoreError::query("end console session"))?;
                    Ok(Box::new(()) as Box<dyn Any + Send>)
                })
            }),
        )
        .await
    }
}

// === escrow ===

impl Store {
    /// Replaces the escrow of `kind` for `sovereign` with `items`, and
    /// stores `secrets` (sealed to the daemon), in one commit: after a
    /// crash either all of it is there or none.
    pub async fn put_escrow(
        &self,
        sovereign: &str,
        kind: &str,
        items: &[EscrowItem],
        secrets: &[(String, SecretString)],
    ) -> Result<(), StoreError> {
        let mut sealed = Vec::with_capacity(secrets.len());
        for (name, plain) in secrets {
            sealed.push((name.clone(), self.seal(plain)?));
        }
        let (owner, kind, items) = (sovereign.to_owned(), kind.to_owned(), items.to_vec());
        self.write(
            false,
            Box::new(move |w| {
                Box::pin(async move {
                    let c = &mut w.conn;
                    sqlx::query("DELETE FROM escrow WHERE sovereign_id = $1 AND kind = $2")
                        .bind(&owner)
                        .bind(&kind)
                        .execute(&mut *c)
                        .await
                        .map_err(StoreError::query("replace escrow"))?;
                    for i in items {
                        sqlx::query(
                            "INSERT INTO escrow (sovereign_id, kind, idx, custodian, label, \
                             recipient, armored, threshold, parts, fingerprint, created_at) \
                             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11)",
                        )
                        .bind(&owner)
                        .bind(&kind)
                        .bind(i64::from(i.index))
                        .bind(i64::from(i.custodian))
                        .bind(i.label)
                        .bind(i.recipient)
                        .bind(i.armored)
                        .bind(i64::from(i.threshold))
                        .bind(i64::from(i.parts))
                        .bind(i.fingerprint)
                        .bind(now_ms())
                        .execute(&mut *c)
                        .await
                        .map_err(StoreError::query("put escrow"))?;
                    }
                    upsert_sealed(c, &owner, sealed).await?;
                    Ok(Box::new(()) as Box<dyn Any + Send>)
                })
            }),
        )
        .await
    }

    /// The escrow of `sovereign` (of one `kind`, or all), by kind and index.
    pub async fn escrow(
        &self,
        sovereign: &str,
        kind: Option<&str>,
    ) -> Result<Vec<EscrowItem>, StoreError> {
        let rows = sqlx::query(
            "SELECT * FROM escrow WHERE sovereign_id = $1 AND ($2 IS NULL OR kind = $2) \
             ORDER BY kind, idx",
        )
        .bind(sovereign)
        .bind(kind)
        .fetch_all(&self.inner.pool)
        .await
        .map_err(StoreError::query("read escrow"))?;
        rows.iter()
            .map(|r| {
                let int = |col: &'static str| {
                    let v: i64 = r.get(col);
                    u32::try_from(v).map_err(|e| StoreError::Decode {
                        column: col,
                        source: e.to_string().into(),
                    })
                };
                let small = |col: &'static str| {
                    u8::try_from(int(col)?).map_err(|e| StoreError::Decode {
                        column: col,
                        source: e.to_string().into(),
                    })
                };
                Ok(EscrowItem {
                    kind: r.get("kind"),
                    index: int("idx")?,
                    custodian: int("custodian")?,
                    label: r.get("label"),
                    recipient: r.get("recipient"),
                    armored: r.get("armored"),
                    threshold: small("threshold")?,
                    parts: small("parts")?,
                    fingerprint: r.get("fingerprint"),
                    created_at: r.get("created_at"),
                })
            })
            .collect()
    }

    /// Forgets the escrow of `kind` (absent is fine).
    pub async fn delete_escrow(&self, sovereign: &str, kind: &str) -> Result<(), StoreError> {
        self.put_escrow(sovereign, kind, &[], &[]).await
    }
}

/// Inserts or replaces sealed secrets of `owner` (inside the caller's
/// transaction).
async fn upsert_sealed(
    c: &mut AnyConnection,
    owner: &str,
    sealed: Vec<(String, Vec<u8>)>,
) -> Result<(), StoreError> {
    for (name, blob) in sealed {
        sqlx::query(
            "INSERT INTO secrets (owner, name, ciphertext, created_at) VALUES ($1, $2, $3, $4) \
             ON CONFLICT (owner, name) DO UPDATE SET ciphertext = excluded.ciphertext",
        )
        .bind(owner)
        .bind(name)
        .bind(blob)
        .bind(now_ms())
        .execute(&mut *c)
        .await
        .map_err(StoreError::query("put secrets"))?;
    }
    Ok(())
}

// === the writer ===

async fn writer_task(
    mut conn: WriterConn,
    mut rx: mpsc::UnboundedReceiver<WriteOp>,
    inner: std::sync::Weak<Inner>,
) {
    while let Some(first) = rx.recv().await {
        let mut batch = vec![first];
        while batch.len() < MAX_BATCH {
            match rx.try_recv() {
                Ok(op) => batch.push(op),
                Err(_) => break,
            }
        }
        let results = run_batch(&mut conn, &mut batch).await;
        for (op, result) in batch.into_iter().zip(results) {
            if op.publishes_events
                && let Ok(value) = &result
                && let Some(inner) = inner.upgrade()
            {
                publish(&inner, value.as_ref());
            }
            let _ = op.reply.send(result);
        }
    }
}

/// Runs one batch in one transaction. Each op runs under a savepoint so its
/// own failure is contained. If the transaction cannot begin or commit, every
/// op of the batch gets a retryable `StoreError::Commit` and nothing of the
/// batch is visible; callers that must record progress retry (see
/// the engine's recorder).
async fn run_batch(w: &mut WriterConn, batch: &mut [WriteOp]) -> Vec<OpResult> {
    let started = Instant::now();
    let mut attempt = 0u32;
    // BEGIN IMMEDIATE only fails if another process holds the write lock
    // (an operator's sqlite3 shell, say): wait for it, bounded per try.
    loop {
        match sqlx::query("BEGIN").execute(&mut w.conn).await {
            Ok(_) => break,
            Err(error) => {
                attempt += 1;
                log_retry("begin", attempt, started, &error);
                tokio::time::sleep(backoff(attempt)).await;
                // A server that went away broke this connection for good:
                // connect again (the cache stays right: while this process
                // could not write, nobody wrote under its leases).
                if let Some(opts) = w.reconnect.clone()
                    && let Ok(c) = AnyConnection::connect_with(&opts).await
                {
                    tracing::warn!(attempt, "Reconnected the store's writer to the database.");
                    w.conn = c;
                }
            }
        }
    }
    let mut results = Vec::with_capacity(batch.len());
    // A batch of one needs no savepoint: on failure the whole transaction
    // is rolled back (two fewer statements on the sequential hot path).
    if batch.len() == 1 {
        let run = std::mem::replace(
            &mut batch[0].run,
            Box::new(|_| Box::pin(async { Err(StoreError::WriterGone) })),
        );
        let result = run(&mut *w).await;
        w.op_done(result.is_ok());
        if result.is_err() {
            let _ = sqlx::query("ROLLBACK").execute(&mut w.conn).await;
            w.batch_done(false);
            return vec![result];
        }
        results.push(result);
    } else {
        for op in batch.iter_mut() {
            let run = std::mem::replace(
                &mut op.run,
                Box::new(|_| Box::pin(async { Err(StoreError::WriterGone) })),
            );
            if let Err(e) = sqlx::query("SAVEPOINT op").execute(&mut w.conn).await {
                results.push(Err(StoreError::query("savepoint")(e)));
                continue;
            }
            let result = run(&mut *w).await;
            let end = if result.is_ok() { "RELEASE op" } else { "ROLLBACK TO op; RELEASE op" };
            match sqlx::raw_sql(end).execute(&mut w.conn).await {
                Ok(_) => {
                    w.op_done(result.is_ok());
                    results.push(result);
                }
                Err(e) => {
                    w.op_done(false);
                    results.push(Err(StoreError::query("release savepoint")(e)));
                }
            }
        }
    }
    if let Err(error) = sqlx::query("COMMIT").execute(&mut w.conn).await {
        log_retry("commit", 1, started, &error);
        let _ = sqlx::query("ROLLBACK").execute(&mut w.conn).await;
        w.batch_done(false);
        let msg = error.to_string();
        let fault = crate::error::StorageFault::of_sqlx(&error);
        return results
            .iter()
            .map(|_| Err(StoreError::Commit { message: msg.clone(), fault }))
            .collect();
    }
    w.batch_done(true);
    results
}

fn backoff(attempt: u32) -> Duration {
    Duration::from_millis((10u64 << attempt.min(10)).min(5_000))
}

fn log_retry(what: &str, attempt: u32, started: Instant, error: &sqlx::Error) {
    let elapsed_ms = started.elapsed().as_millis() as u64;
    if attempt < 5 {
        tracing::warn!(
            what,
            attempt,
            elapsed_ms,
            error = error as &dyn std::error::Error,
            "Store write failed; retrying."
        );
    } else {
        tracing::error!(
            what,
            attempt,
            elapsed_ms,
            error = error as &dyn std::error::Error,
            "Store write keeps failing; progress cannot be recorded until it succeeds."
        );
    }
}

/// Publishes what a committed transaction appended. A job nobody
/// subscribes to costs a counter: its events become [`JobEvent`]s (and a
/// text-only body a [`Value`]) only for a live subscriber.
fn publish(inner: &Inner, value: &(dyn Any + Send)) {
    let appended = if let Some(a) = value.downcast_ref::<Appended>() {
        a
    } else if let Some((_, a)) = value.downcast_ref::<(NodeState, Appended)>() {
        a
    } else {
        return;
    };
    inner
        .events_written
        .fetch_add(appended.events.len() as u64, std::sync::atomic::Ordering::Relaxed);
    let hub = inner.hub.lock().expect("event hub lock");
    let Some(tx) = hub.get(&appended.job).filter(|tx| tx.receiver_count() > 0) else {
        return;
    };
    for (ev, id) in appended.events.iter().zip(appended.first..) {
        let _ = tx.send(Arc::new(JobEvent {
            job_id: appended.job,
            id,
            at: appended.at,
            kind: ev.kind().to_owned(),
            body: ev.body(),
            rendered: Default::default(),
        }));
    }
}

async fn read_events(
    pool: &AnyPool,
    job: JobId,
    after: i64,
    limit: i64,
) -> Result<Vec<JobEvent>, StoreError> {
    let rows = sqlx::query(
        "SELECT id, at, kind, body FROM job_events WHERE job_id = $1 AND id > $2 ORDER BY id LIMIT $3",
    )
    .bind(job.to_string())
    .bind(after)
    .bind(limit)
    .fetch_all(pool)
    .await
    .map_err(StoreError::query("read events"))?;
    rows.iter()
        .map(|r| {
            Ok(JobEvent {
                job_id: job,
                id: r.get("id"),
                at: r.get("at"),
                kind: r.get("kind"),
                body: json_col(r, "body")?,
                rendered: Default::default(),
            })
        })
        .collect()
}

/// How often a PostgreSQL replica looks for events of a subscribed job that
/// another replica wrote.
pub const TAIL_EVERY: Duration = Duration::from_millis(250);

/// Publishes to this process's subscribers of `job` the events other
/// replicas write, until nobody here subscribes.
async fn tail_events(inner: std::sync::Weak<Inner>, job: JobId) {
    let mut last: Option<i64> = None;
    loop {
        tokio::time::sleep(TAIL_EVERY).await;
        let Some(inner) = inner.upgrade() else { return };
        let tx = {
            let mut hub = inner.hub.lock().expect("event hub lock");
            match hub.get(&job) {
                Some(tx) if tx.receiver_count() > 0 => tx.clone(),
                _ => {
                    hub.remove(&job);
                    return;
                }
            }
        };
        let after = match last {
            Some(l) => l,
            None => match sqlx::query_scalar::<_, i64>(
                "SELECT last_id FROM job_event_heads WHERE job_id = $1",
            )
            .bind(job.to_string())
            .fetch_optional(&inner.pool)
            .await
            {
                Ok(head) => {
                    last = Some(head.unwrap_or(0));
                    continue;
                }
                Err(e) => {
                    tracing::warn!(job_id = %job, error = &e as &dyn std::error::Error, "Cannot tail the job's events.");
                    continue;
                }
            },
        };
        match read_events(&inner.pool, job, after, 1000).await {
            Ok(evs) => {
                for e in evs {
                    last = Some(e.id);
                    let _ = tx.send(Arc::new(e));
                }
            }
            Err(e) => {
                tracing::warn!(job_id = %job, error = &e as &dyn std::error::Error, "Cannot tail the job's events.");
            }
        }
    }
}

// === transactional bodies ===

async fn submit_tx(
    c: &mut AnyConnection,
    sub: Submission,
    sealed: Vec<(String, String, Vec<u8>)>,
) -> Result<SubmitOutcome, StoreError> {
    let now = now_ms();
    if let Some(k) = &sub.idempotency {
        let row = sqlx::query(
            "SELECT body_sha256, response FROM idempotency_keys WHERE scope = $1 AND key = $2",
        )
        .bind(&k.scope)
        .bind(&k.key)
        .fetch_optional(&mut *c)
        .await
        .map_err(StoreError::query("read idempotency key"))?;
        if let Some(row) = row {
            let hash: String = row.get("body_sha256");
            if hash != k.body_sha256 {
                return Err(StoreError::IdempotencyConflict { key: k.key.clone() });
            }
            return Ok(SubmitOutcome::Replayed(json_col(&row, "response")?));
        }
    }
    let sovereign_id = match &sub.sovereign {
        SovereignTarget::New { id, name, fqdn } => {
            let taken =
                sqlx::query("SELECT id FROM sovereigns WHERE fqdn = $1 AND status <> 'destroyed'")
                    .bind(fqdn)
                    .fetch_optional(&mut *c)
                    .await
                    .map_err(StoreError::query("check fqdn"))?;
            if taken.is_some() {
                return Err(StoreError::FqdnTaken { fqdn: fqdn.clone() });
            }
            sqlx::query("INSERT INTO sovereigns (id, name, fqdn, status, created_at, updated_at) VALUES ($1, $2, $3, $4, $5, $6)")
                .bind(id.to_string())
                .bind(name)
                .bind(fqdn)
                .bind(SovereignStatus::Provisioning.as_str())
                .bind(now)
                .bind(now)
                .execute(&mut *c)
                .await
                .map_err(StoreError::query("insert sovereign"))?;
            *id
        }
        SovereignTarget::Existing { id, status } => {
            let row = sqlx::query("SELECT status FROM sovereigns WHERE id = $1")
                .bind(id.to_string())
                .fetch_optional(&mut *c)
                .await
                .map_err(StoreError::query("read sovereign"))?
                .ok_or(StoreError::SovereignNotFound { id: *id })?;
            let cur: String = row.get("status");
            if cur == SovereignStatus::Destroyed.as_str() {
                return Err(StoreError::SovereignGone { id: *id });
            }
            let busy = sqlx::query("SELECT id FROM jobs WHERE sovereign_id = $1 AND status IN ('pending', 'running', 'paused') LIMIT 1")
                .bind(id.to_string())
                .fetch_optional(&mut *c)
                .await
                .map_err(StoreError::query("check busy sovereign"))?;
            if let Some(row) = busy {
                let job: String = row.get("id");
                return Err(StoreError::SovereignBusy { id: *id, job });
            }
            sqlx::query("UPDATE sovereigns SET status = $1, updated_at = $2 WHERE id = $3")
                .bind(status.as_str())
                .bind(now)
                .bind(id.to_string())
                .execute(&mut *c)
                .await
                .map_err(StoreError::query("update sovereign"))?;
            *id
        }
    };
    sqlx::query("INSERT INTO jobs (id, sovereign_id, kind, status, mode, request, plan, options, created_at, updated_at) VALUES ($1, $2, $3, 'pending', 'forward', $4, $5, $6, $7, $8)")
        .bind(sub.job_id.to_string())
        .bind(sovereign_id.to_string())
        .bind(sub.kind.as_str())
        .bind(sub.request.to_string())
        .bind(sub.plan.to_string())
        .bind(sub.options.to_string())
        .bind(now)
        .bind(now)
        .execute(&mut *c)
        .await
        .map_err(StoreError::query("insert job"))?;
    for (owner, name, blob) in sealed {
        sqlx::query("INSERT INTO secrets (owner, name, ciphertext, created_at) VALUES ($1, $2, $3, $4) ON CONFLICT (owner, name) DO UPDATE SET ciphertext = excluded.ciphertext")
            .bind(owner)
            .bind(name)
            .bind(blob)
            .bind(now)
            .execute(&mut *c)
            .await
            .map_err(StoreError::query("insert secret"))?;
    }
    if let Some(k) = &sub.idempotency {
        sqlx::query("INSERT INTO idempotency_keys (scope, key, body_sha256, response, created_at) VALUES ($1, $2, $3, $4, $5)")
            .bind(&k.scope)
            .bind(&k.key)
            .bind(&k.body_sha256)
            .bind(sub.response.to_string())
            .bind(now)
            .execute(&mut *c)
            .await
            .map_err(StoreError::query("insert idempotency key"))?;
    }
    insert_audit(c, &sub.audit).await?;
    Ok(SubmitOutcome::Created(sub.response))
}

async fn update_job_tx(c: &mut AnyConnection, id: JobId, u: JobUpdate) -> Result<Job, StoreError> {
    let row = sqlx::query("SELECT * FROM jobs WHERE id = $1")
        .bind(id.to_string())
        .fetch_optional(&mut *c)
        .await
        .map_err(StoreError::query("read job"))?
        .ok_or(StoreError::JobNotFound { id })?;
    let mut job = job_from_row(&row)?;
    let now = now_ms();
    if let Some(next) = u.status {
        if !job.status.can_become(next) {
            return Err(StoreError::IllegalJobStatus { id, from: job.status, to: next });
        }
        if next != job.status {
            job.finished_at = matches!(
                next,
                JobStatus::Succeeded
                    | JobStatus::Failed
                    | JobStatus::Cancelled
                    | JobStatus::Abandoned
            )
            .then_some(now);
        }
        job.status = next;
    }
    if let Some(mode) = u.mode {
        job.mode = mode;
    }
    if let Some(p) = u.pause {
        job.pause = p;
    }
    if let Some(e) = u.error {
        job.error = e;
    }
    job.updated_at = now;
    sqlx::query("UPDATE jobs SET status = $1, mode = $2, pause = $3, error = $4, updated_at = $5, finished_at = $6 WHERE id = $7")
        .bind(job.status.as_str())
        .bind(job.mode.as_str())
        .bind(job.pause.as_ref().map(Value::to_string))
        .bind(job.error.as_ref().map(Value::to_string))
        .bind(job.updated_at)
        .bind(job.finished_at)
        .bind(id.to_string())
        .execute(&mut *c)
        .await
        .map_err(StoreError::query("update job"))?;
    if let Some(s) = u.sovereign_status {
        // `destroyed` is a tombstone: nothing brings it back. A verb on an
        // old job of a destroyed Sovereign (abandoning a provision that was
        // rolled back) leaves it destroyed; its name may be live again
        // under a new Sovereign.
        sqlx::query("UPDATE sovereigns SET status = $1, updated_at = $2 WHERE id = $3 AND status <> 'destroyed'")
            .bind(s.as_str())
            .bind(now)
            .bind(job.sovereign_id.to_string())
            .execute(&mut *c)
            .await
            .map_err(StoreError::query("update sovereign status"))?;
    }
    Ok(job)
}

async fn append_step_tx(
    w: &mut WriterConn,
    job: JobId,
    node: &str,
    event: &StepEvent,
    generation: Option<i64>,
) -> Result<NodeState, StoreError> {
    let key = (job, node.to_owned());
    // The cache keeps states without their outputs: 200 jobs' outputs as
    // JSON trees were a sixth of the daemon's heap, held a second time by
    // the engine. The two events that carry an output on read the step's
    // journal instead (undo only).
    let state = if NodeState::carries_output(event) {
        w.node_from_journal(job, node).await?
    } else if let Some(s) = w.cached(&key) {
        s
    } else {
        w.load_job(job).await?;
        w.cached(&key).expect("a loaded job answers every step")
    };
    let c = &mut w.conn;
    let next = state.next(event).map_err(|source| StoreError::IllegalTransition {
        job,
        node: node.to_owned(),
        source,
    })?;
    sqlx::query("INSERT INTO step_events (job_id, node, event, body, at, generation) VALUES ($1, $2, $3, $4, $5, $6)")
        .bind(job.to_string())
        .bind(node)
        .bind(event.name())
        .bind(serde_json::to_string(event).expect("step events serialize"))
        .bind(now_ms())
        .bind(generation)
        .execute(&mut *c)
        .await
        .map_err(StoreError::query("append step event"))?;
    let mut kept = next.clone();
    kept.take_output();
    w.op.insert(key, kept);
    Ok(next)
}

/// Events a transaction appended: what the writer publishes once it
/// committed.
pub(crate) struct Appended {
    job: JobId,
    /// The first event's id; the rest follow without gaps.
    first: i64,
    at: Millis,
    events: Vec<NewJobEvent>,
}

impl Appended {
    /// The last event's id (0: none appended).
    fn last_id(&self) -> i64 {
        if self.events.is_empty() { 0 } else { self.first + self.events.len() as i64 - 1 }
    }
}

async fn append_events_tx(
    c: &mut AnyConnection,
    job: JobId,
    events: Vec<NewJobEvent>,
    generation: Option<i64>,
) -> Result<Appended, StoreError> {
    if events.is_empty() {
        return Ok(Appended { job, first: 0, at: 0, events });
    }
    let job_s = job.to_string();
    let head: Option<i64> = sqlx::query("SELECT last_id FROM job_event_heads WHERE job_id = $1")
        .bind(&job_s)
        .fetch_optional(&mut *c)
        .await
        .map_err(StoreError::query("read event head"))?
        .map(|r| r.get("last_id"));
    let first = head.unwrap_or(0) + 1;
    let at = now_ms();
    // Multi-row inserts: 100k tofu lines are a few hundred statements.
    let mut id = first - 1;
    // (Numbered placeholders, which both SQLite and PostgreSQL read;
    // `QueryBuilder` over `Any` writes `?`, which PostgreSQL does not.)
    // SQLite looks a numbered placeholder's name up by a linear scan, once
    // per parameter: a statement of n of them costs n², so SQLite gets plain
    // `?`s, every value bound per row. PostgreSQL gets numbered ones, the
    // job, time and generation bound once per statement.
    let positional = c.backend_name().eq_ignore_ascii_case("sqlite");
    for chunk in events.chunks(EVENTS_PER_INSERT) {
        let sql = AssertSqlSafe(events_insert(chunk.len(), positional));
        let mut q = sqlx::query(sql);
        if positional {
            for ev in chunk {
                id += 1;
                q = q
                    .bind(job_s.as_str())
                    .bind(id)
                    .bind(at)
                    .bind(ev.kind())
                    .bind(ev.text())
                    .bind(generation);
            }
        } else {
            q = q.bind(job_s.as_str()).bind(at).bind(generation);
            for ev in chunk {
                id += 1;
                q = q.bind(id).bind(ev.kind()).bind(ev.text());
            }
        }
        q.execute(&mut *c).await.map_err(StoreError::query("append events"))?;
    }
    sqlx::query("INSERT INTO job_event_heads (job_id, last_id) VALUES ($1, $2) ON CONFLICT (job_id) DO UPDATE SET last_id = excluded.last_id")
        .bind(&job_s)
        .bind(id)
        .execute(&mut *c)
        .await
        .map_err(StoreError::query("advance event head"))?;
    Ok(Appended { job, first, at, events })
}

async fn insert_audit(c: &mut AnyConnection, e: &NewAudit) -> Result<i64, StoreError> {
    let id: i64 = sqlx::query_scalar("INSERT INTO audit (at, actor, action, job_id, sovereign_id, detail) VALUES ($1, $2, $3, $4, $5, $6) RETURNING id")
        .bind(now_ms())
        .bind(&e.actor)
        .bind(&e.action)
        .bind(e.job_id.map(|j| j.to_string()))
        .bind(e.sovereign_id.map(|s| s.to_string()))
        .bind(e.detail.to_string())
        .fetch_one(&mut *c)
        .await
        .map_err(StoreError::query("insert audit"))?;
    Ok(id)
}

/// Rows per multi-row insert of job events: a forwarder's whole commit of
/// tofu lines is one statement (6,000 parameters on SQLite, 3,003 on
/// PostgreSQL; the limits are 32,766 and 65,535).
const EVENTS_PER_INSERT: usize = 1000;

/// `INSERT INTO job_events` of `rows` rows. `positional`: plain `?`s, six
/// per row (job, id, at, kind, body, generation). Else numbered ones,
/// shared `$1` (job), `$2` (at) and `$3` (generation), and row `r`'s id,
/// kind and body at `$4+3r`, `$5+3r` and `$6+3r`.
fn events_insert(rows: usize, positional: bool) -> String {
    use std::fmt::Write as _;
    let mut sql = String::with_capacity(80 + rows * 32);
    sql.push_str("INSERT INTO job_events (job_id, id, at, kind, body, generation) VALUES ");
    for r in 0..rows {
        let sep = if r == 0 { "" } else { ", " };
        if positional {
            let _ = write!(sql, "{sep}(?, ?, ?, ?, ?, ?)");
        } else {
            let p = 4 + 3 * r;
            let _ = write!(sql, "{sep}($1, ${p}, $2, ${}, ${}, $3)", p + 1, p + 2);
        }
    }
    sql
}

// === row decoding ===

fn json_col<T: serde::de::DeserializeOwned>(
    r: &AnyRow,
    col: &'static str,
) -> Result<T, StoreError> {
    let s: String = r.get(col);
    serde_json::from_str(&s)
        .map_err(|source| StoreError::Decode { column: col, source: Box::new(source) })
}

fn parse_col<T: FromStr>(r: &AnyRow, col: &'static str) -> Result<T, StoreError>
where
    T::Err: std::fmt::Display,
{
    let s: String = r.get(col);
    s.parse::<T>()
        .map_err(|e| StoreError::Decode { column: col, source: format!("`{s}`: {e}").into() })
}

fn opt_id<T: FromStr>(r: &AnyRow, col: &'static str) -> Result<Option<T>, StoreError>
where
    T::Err: std::fmt::Display,
{
    let s: Option<String> = r.get(col);
    s.map(|s| {
        s.parse::<T>().map_err(|e| StoreError::Decode { column: col, source: e.to_string().into() })
    })
    .transpose()
}

fn sovereign_from_row(r: &AnyRow) -> Result<Sovereign, StoreError> {
    Ok(Sovereign {
        id: parse_col(r, "id")?,
        name: r.get("name"),
        fqdn: r.get("fqdn"),
        status: parse_col(r, "status")?,
        created_at: r.get("created_at"),
        updated_at: r.get("updated_at"),
    })
}

fn job_from_row(r: &AnyRow) -> Result<Job, StoreError> {
    let opt_json = |col: &'static str| -> Result<Option<Value>, StoreError> {
        let s: Option<String> = r.get(col);
        s.map(|s| {
            serde_json::from_str(&s)
                .map_err(|e| StoreError::Decode { column: col, source: Box::new(e) })
        })
        .transpose()
    };
    Ok(Job {
        id: parse_col(r, "id")?,
        sovereign_id: parse_col(r, "sovereign_id")?,
        kind: parse_col(r, "kind")?,
        status: parse_col(r, "status")?,
        mode: parse_col(r, "mode")?,
        request: json_col(r, "request")?,
        plan: json_col(r, "plan")?,
        options: json_col(r, "options")?,
        pause: opt_json("pause")?,
        error: opt_json("error")?,
        created_at: r.get("created_at"),
        updated_at: r.get("updated_at"),
        finished_at: r.get("finished_at"),
    })
}
