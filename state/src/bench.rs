//! Raw-SQLite baselines for the benchmarks (`cz-bench`): the same work the
//! store does, without the store, at the same durability (WAL,
//! `synchronous = FULL`). They live here because this is the only crate that
//! speaks SQL.

use std::path::Path;
use std::time::{Duration, Instant};

use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqliteSynchronous};
use sqlx::{Connection, SqliteConnection};

async fn connect(path: &Path) -> Result<SqliteConnection, sqlx::Error> {
    let opts = SqliteConnectOptions::new()
        .filename(path)
        .create_if_missing(true)
        .journal_mode(SqliteJournalMode::Wal)
        .synchronous(SqliteSynchronous::Full);
    SqliteConnection::connect_with(&opts).await
}

/// `n` step checkpoints as bare inserts: two rows (started, succeeded), each
/// in its own committed transaction, into a table shaped like
/// `step_events` (same columns, same index).
pub async fn raw_checkpoints(path: &Path, n: usize) -> Result<Duration, sqlx::Error> {
    let mut c = connect(path).await?;
    sqlx::query("CREATE TABLE IF NOT EXISTS raw_events (seq INTEGER PRIMARY KEY AUTOINCREMENT, job_id TEXT NOT NULL, node TEXT NOT NULL, event TEXT NOT NULL, body TEXT NOT NULL, at INTEGER NOT NULL)")
        .execute(&mut c)
        .await?;
    // The same index the journal has (the engine's reads need it).
    sqlx::query("CREATE INDEX IF NOT EXISTS raw_events_by_node ON raw_events (job_id, node, seq)")
        .execute(&mut c)
        .await?;
    let start = Instant::now();
    for i in 0..n {
        for (ev, body) in [
            ("started", "{\"event\":\"started\",\"attempt\":1}"),
            ("succeeded", "{\"event\":\"succeeded\",\"output\":{}}"),
        ] {
            let mut tx = c.begin().await?;
            sqlx::query(
                "INSERT INTO raw_events (job_id, node, event, body, at) VALUES (?, ?, ?, ?, ?)",
            )
            .bind("job")
            .bind(format!("phase/step-{i}"))
            .bind(ev)
            .bind(body)
            .bind(0i64)
            .execute(&mut *tx)
            .await?;
            tx.commit().await?;
        }
    }
    Ok(start.elapsed())
}

/// `lines` JSON lines inserted in batches of `batch` rows, one transaction
/// per batch, into a table shaped like `job_events`, as the same rows: a
/// job's id is a UUID (36 bytes of key in every row), and each row has
/// the lease generation column (NULL here, as on SQLite). The store's own
/// choices are not copied: 200 rows a statement, no foreign key, no head
/// row, the native driver.
pub async fn raw_batched_events(
    path: &Path,
    lines: &[String],
    batch: usize,
) -> Result<Duration, sqlx::Error> {
    let mut c = connect(path).await?;
    sqlx::query("CREATE TABLE IF NOT EXISTS raw_job_events (job_id TEXT NOT NULL, id INTEGER NOT NULL, at INTEGER NOT NULL, kind TEXT NOT NULL, body TEXT NOT NULL, generation INTEGER, PRIMARY KEY (job_id, id)) WITHOUT ROWID")
        .execute(&mut c)
        .await?;
    const JOB: &str = "0b6f3c9e-2d41-4f7a-9c1e-5a8d2b7e4f10";
    let start = Instant::now();
    let mut id = 0i64;
    for chunk in lines.chunks(batch) {
        let mut tx = c.begin().await?;
        for rows in chunk.chunks(200) {
            let mut qb = sqlx::QueryBuilder::new(
                "INSERT INTO raw_job_events (job_id, id, at, kind, body, generation) ",
            );
            qb.push_values(rows, |mut b, line| {
                id += 1;
                b.push_bind(JOB)
                    .push_bind(id)
                    .push_bind(0i64)
                    .push_bind("tofu")
                    .push_bind(line.as_str())
                    .push_bind(None::<i64>);
            });
            qb.build().execute(&mut *tx).await?;
        }
        tx.commit().await?;
    }
    Ok(start.elapsed())
}

/// Creates (dropping any old one) database `name` on the PostgreSQL server
/// behind `server_url` (any of its databases, e.g. `.../postgres`), and
/// returns its URL: the PostgreSQL figures run on a fresh database each.
pub async fn fresh_postgres_database(server_url: &str, name: &str) -> Result<String, sqlx::Error> {
    if name.is_empty() || !name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_') {
        return Err(sqlx::Error::Configuration(format!("bad database name `{name}`").into()));
    }
    sqlx::any::install_default_drivers();
    let mut c = sqlx::AnyConnection::connect(server_url).await?;
    sqlx::raw_sql(sqlx::AssertSqlSafe(format!("DROP DATABASE IF EXISTS {name}")))
        .execute(&mut c)
        .await?;
    sqlx::raw_sql(sqlx::AssertSqlSafe(format!("CREATE DATABASE {name}"))).execute(&mut c).await?;
    let mut url = url::Url::parse(server_url)
        .map_err(|e| sqlx::Error::Configuration(e.to_string().into()))?;
    url.set_path(&format!("/{name}"));
    Ok(url.to_string())
}
