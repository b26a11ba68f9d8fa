//! Store tests, each run twice: on a real SQLite file and on a real
//! PostgreSQL server (the test kit's, one per test binary, a database per
//! test).

use cz_state::*;
use serde_json::json;
use sqlx::{AnyConnection, Connection};

/// The database a test runs on.
enum Db {
    Sqlite(tempfile::TempDir),
    Postgres { url: String, key: tempfile::TempDir, data: std::path::PathBuf },
}

impl Db {
    fn sqlite() -> Db {
        Db::Sqlite(tempfile::tempdir().unwrap())
    }

    /// A database of its own on the shared server; `None` (said loudly)
    /// where PostgreSQL is not installed, outside CI only.
    async fn postgres(test: &str) -> Option<Db> {
        use cz_testkit::postgres::Postgres;
        if !Postgres::usable(test) {
            return None;
        }
        let pg = Postgres::shared().await;
        let name = format!("store_{}", test.replace(|c: char| !c.is_ascii_alphanumeric(), "_"));
        pg.create_db(&name);
        let key = tempfile::tempdir().unwrap();
        // Replicas share one key: the PostgreSQL store never creates it.
        cz_state::Sealer::load_or_create(&key.path().join("key.txt")).unwrap();
        Some(Db::Postgres { url: pg.url(&name), key, data: pg.dir.path().to_owned() })
    }

    async fn open(&self) -> Store {
        match self {
            Db::Sqlite(dir) => Store::open(StorePaths::in_dir(dir.path())).await.unwrap(),
            Db::Postgres { url, key, .. } => {
                Store::open_postgres(url, &key.path().join("key.txt")).await.unwrap()
            }
        }
    }

    /// A connection of the test's own, for raw SQL.
    async fn raw(&self) -> AnyConnection {
        sqlx::any::install_default_drivers();
        let url = match self {
            Db::Sqlite(dir) => {
                format!("sqlite://{}", dir.path().join("catalyst-zero.db").display())
            }
            Db::Postgres { url, .. } => url.clone(),
        };
        AnyConnection::connect(&url).await.unwrap()
    }

    /// Every file the store left on disk, as bytes.
    fn files(&self) -> Vec<Vec<u8>> {
        match self {
            Db::Sqlite(dir) => ["catalyst-zero.db", "catalyst-zero.db-wal"]
                .iter()
                .map(|f| std::fs::read(dir.path().join(f)).unwrap_or_default())
                .collect(),
            Db::Postgres { data, .. } => walk(data),
        }
    }
}

fn walk(dir: &std::path::Path) -> Vec<Vec<u8>> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        let p = e.path();
        if p.is_dir() {
            out.extend(walk(&p));
        } else if let Ok(b) = std::fs::read(&p) {
            out.push(b);
        }
    }
    out
}

/// `both!(test)`: `test::sqlite` and `test::postgres` run `test(&db)`.
macro_rules! both {
    ($name:ident) => {
        mod $name {
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn sqlite() {
                super::$name(&super::Db::sqlite()).await
            }
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn postgres() {
                if let Some(db) = super::Db::postgres(stringify!($name)).await {
                    super::$name(&db).await
                }
            }
        }
    };
}

/// Submits, then takes the job's lease as a driver would (on PostgreSQL a
/// job's writes need it; on SQLite it is a row nobody reads).
async fn submit_and_hold(store: &Store, sub: Submission) {
    let job = sub.job_id;
    store.submit(sub).await.unwrap();
    let ttl = std::time::Duration::from_secs(60);
    assert_eq!(store.claim_leases(Some(job), false, ttl, 1).await.unwrap(), vec![job]);
}

fn submission(fqdn: &str, key: Option<(&str, &str)>) -> Submission {
    let sov = SovereignId::new();
    let job = JobId::new();
    Submission {
        sovereign: SovereignTarget::New {
            id: sov,
            name: fqdn.split('.').next().unwrap().into(),
            fqdn: fqdn.into(),
        },
        job_id: job,
        kind: JobKind::Provision,
        request: json!({ "fqdn": fqdn }),
        plan: json!({ "phases": [] }),
        options: json!({}),
        secrets: vec![(
            sov.to_string(),
            "cloud_token".into(),
            SecretString::new("tok-plaintext-123"),
        )],
        idempotency: key.map(|(k, body)| IdempotencyKey {
            scope: "POST /v1/sovereigns".into(),
            key: k.into(),
            body_sha256: body.into(),
        }),
        response: json!({ "sovereign_id": sov, "job_id": job }),
        audit: NewAudit {
            actor: "wizard".into(),
            action: "submit".into(),
            job_id: Some(job),
            sovereign_id: Some(sov),
            detail: json!({}),
        },
    }
}

/// The schema of a store: each table's columns in order, with their
/// nullability (types differ by dialect: TEXT/BYTEA/BIGINT vs SQLite's).
async fn schema(db: &Db) -> Vec<(String, Vec<(String, bool)>)> {
    let mut c = db.raw().await;
    let rows: Vec<(String, String, i64)> = match db {
        Db::Sqlite(_) => sqlx::query_as(
            // An INTEGER PRIMARY KEY is the rowid: never NULL, though
            // `notnull` does not say so.
            "SELECT m.name, p.name, (p.\"notnull\" OR p.pk > 0) FROM sqlite_master m, pragma_table_info(m.name) p \
             WHERE m.type = 'table' AND m.name NOT LIKE 'sqlite_%' AND m.name NOT LIKE '_sqlx%' \
             ORDER BY m.name, p.cid",
        ),
        Db::Postgres { .. } => sqlx::query_as(
            "SELECT table_name::text, column_name::text, \
             CASE WHEN is_nullable = 'NO' THEN 1::bigint ELSE 0::bigint END \
             FROM information_schema.columns WHERE table_schema = 'public' \
             AND table_name NOT LIKE '_sqlx%' ORDER BY table_name, ordinal_position",
        ),
    }
    .fetch_all(&mut c)
    .await
    .unwrap();
    let mut out: Vec<(String, Vec<(String, bool)>)> = Vec::new();
    for (table, col, not_null) in rows {
        if out.last().is_none_or(|t| t.0 != table) {
            out.push((table.clone(), Vec::new()));
        }
        out.last_mut().unwrap().1.push((col, not_null != 0));
    }
    out
}

async fn migrations_build_the_expected_schema_on_an_empty_database(db: &Db) {
    let store = db.open().await;
    let tables = schema(db).await;
    let names: Vec<&str> = tables.iter().map(|t| t.0.as_str()).collect();
    assert_eq!(
        names,
        [
            "audit",
            "console_sessions",
            "escrow",
            "idempotency_keys",
            "job_event_heads",
            "job_events",
            "job_leases",
            "jobs",
            "secrets",
            "sovereigns",
            "step_events"
        ]
    );
    let jobs = &tables.iter().find(|t| t.0 == "jobs").unwrap().1;
    let cols: Vec<&str> = jobs.iter().map(|c| c.0.as_str()).collect();
    assert_eq!(
        cols,
        [
            "id",
            "sovereign_id",
            "kind",
            "status",
            "mode",
            "request",
            "plan",
            "options",
            "pause",
            "error",
            "created_at",
            "updated_at",
            "finished_at"
        ]
    );
    let mut c = db.raw().await;
    if let Db::Sqlite(_) = db {
        let (mode,): (String,) =
            sqlx::query_as("PRAGMA journal_mode").fetch_one(&mut c).await.unwrap();
        assert_eq!(mode, "wal");
    }
    let applied: Vec<(i64,)> =
        sqlx::query_as("SELECT version FROM _sqlx_migrations ORDER BY version")
            .fetch_all(&mut c)
            .await
            .unwrap();
    assert_eq!(applied.len(), MIGRATOR.iter().count());
    // Re-opening applies nothing new and keeps data.
    drop(store);
    let _again = db.open().await;
    let applied2: Vec<(i64,)> =
        sqlx::query_as("SELECT version FROM _sqlx_migrations ORDER BY version")
            .fetch_all(&mut c)
            .await
            .unwrap();
    assert_eq!(applied, applied2);
}
both!(migrations_build_the_expected_schema_on_an_empty_database);

/// The two dialects' migrations are one schema: the same versions and
/// names, and the same tables with the same columns in the same order and
/// the same nullability.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_and_postgres_migrations_build_the_same_schema() {
    let versions = |m: &sqlx::migrate::Migrator| -> Vec<(i64, String)> {
        m.iter().map(|m| (m.version, m.description.to_string())).collect()
    };
    assert_eq!(versions(&MIGRATOR), versions(&PG_MIGRATOR));
    let Some(pg) = Db::postgres("same_schema").await else { return };
    let lite = Db::sqlite();
    let (_a, _b) = (lite.open().await, pg.open().await);
    assert_eq!(schema(&lite).await, schema(&pg).await);
}

async fn journal_refuses_illegal_transitions_and_is_append_only(db: &Db) {
    let store = db.open().await;
    let sub = submission("a.omani.works", None);
    let job = sub.job_id;
    submit_and_hold(&store, sub).await;
    let err = store
        .append_step_event(job, "infra/apply", StepEvent::Succeeded { output: json!(1) })
        .await
        .unwrap_err();
    assert!(matches!(err, StoreError::IllegalTransition { .. }), "{err}");
    assert!(store.journal(job).await.unwrap().is_empty(), "refused event not written");
    store.append_step_event(job, "infra/apply", StepEvent::Started { attempt: 1 }).await.unwrap();
    let s = store
        .append_step_event(job, "infra/apply", StepEvent::Succeeded { output: json!({"id": 1}) })
        .await
        .unwrap();
    assert!(s.is_satisfied());
    assert_eq!(store.node_states(job).await.unwrap()["infra/apply"], s);
    // The triggers refuse updates and deletes even from raw SQL.
    let mut conn = db.raw().await;
    let r = sqlx::query("UPDATE step_events SET event = 'x'").execute(&mut conn).await;
    assert!(r.unwrap_err().to_string().contains("append-only"));
    let r = sqlx::query("DELETE FROM step_events").execute(&mut conn).await;
    assert!(r.unwrap_err().to_string().contains("append-only"));
}
both!(journal_refuses_illegal_transitions_and_is_append_only);

/// The writer caches states without their outputs; the undo events, which
/// carry a step's output into its next state, still get it, in one store
/// and in a store opened again (a cold cache).
async fn undo_states_keep_the_output_the_cache_does_not(db: &Db) {
    let store = db.open().await;
    let sub = submission("u.omani.works", None);
    let job = sub.job_id;
    submit_and_hold(&store, sub).await;
    let out = json!({"ids": [1, 2, 3], "name": "net"});
    for node in ["a", "b"] {
        store.append_step_event(job, node, StepEvent::Started { attempt: 1 }).await.unwrap();
        store
            .append_step_event(job, node, StepEvent::Succeeded { output: out.clone() })
            .await
            .unwrap();
    }
    let undoing = NodeState::Undoing { attempts: 1, output: Some(out.clone()) };
    let s = store.append_step_event(job, "a", StepEvent::UndoStarted).await.unwrap();
    assert_eq!(s, undoing);
    let s = store
        .append_step_event(job, "a", StepEvent::UndoFailed { error: json!("gone wrong") })
        .await
        .unwrap();
    assert_eq!(
        s,
        NodeState::UndoFailed {
            error: json!("gone wrong"),
            attempts: 1,
            output: Some(out.clone())
        }
    );
    assert_eq!(store.append_step_event(job, "a", StepEvent::UndoStarted).await.unwrap(), undoing);
    store.release_lease(job).await.unwrap();
    drop(store);
    let store = db.open().await;
    let ttl = std::time::Duration::from_secs(60);
    assert_eq!(store.claim_leases(Some(job), false, ttl, 1).await.unwrap(), vec![job]);
    assert_eq!(store.append_step_event(job, "b", StepEvent::UndoStarted).await.unwrap(), undoing);
    let states = store.node_states(job).await.unwrap();
    assert_eq!(states["a"], undoing);
    assert_eq!(states["b"], undoing);
}
both!(undo_states_keep_the_output_the_cache_does_not);

async fn events_have_gap_free_ids_and_reach_subscribers(db: &Db) {
    let store = db.open().await;
    let sub = submission("b.omani.works", None);
    let job = sub.job_id;
    submit_and_hold(&store, sub).await;
    let mut rx = store.subscribe(job);
    let mut handles = Vec::new();
    for i in 0..20 {
        let s = store.clone();
        handles.push(tokio::spawn(async move {
            s.append_events(
                job,
                vec![
                    NewJobEvent::new("log", json!({ "i": i })),
                    NewJobEvent::new("log", json!({ "i": i })),
                ],
            )
            .await
            .unwrap()
        }));
    }
    for h in handles {
        h.await.unwrap();
    }
    let all = store.events_after(job, 0, 1000).await.unwrap();
    assert_eq!(all.iter().map(|e| e.id).collect::<Vec<_>>(), (1..=40).collect::<Vec<_>>());
    let mut live = Vec::new();
    while let Ok(ev) = rx.try_recv() {
        live.push(ev.id);
    }
    assert_eq!(live, (1..=40).collect::<Vec<_>>());
    assert_eq!(store.events_after(job, 38, 10).await.unwrap().len(), 2);
}
both!(events_have_gap_free_ids_and_reach_subscribers);

/// A typed event is stored as the text it was serialized to, tags and all,
/// and a live subscriber gets it as a value (parsed back only because it
/// subscribed).
async fn typed_events_are_stored_tagged_and_reach_subscribers(db: &Db) {
    #[derive(serde::Serialize)]
    struct Line<'a> {
        #[serde(rename = "type")]
        kind: &'a str,
        elapsed_s: Option<f64>,
    }
    let store = db.open().await;
    let sub = submission("typed.omani.works", None);
    let job = sub.job_id;
    submit_and_hold(&store, sub).await;
    let mut rx = store.subscribe(job);
    let ev = NewJobEvent::of_step(
        "tofu",
        &Line { kind: "apply_progress", elapsed_s: Some(1.5) },
        "infra",
        "infra/apply-fsn1",
    )
    .unwrap();
    assert_eq!(
        ev.text(),
        r#"{"type":"apply_progress","elapsed_s":1.5,"phase":"infra","step":"infra/apply-fsn1"}"#
    );
    assert_eq!(store.append_events(job, vec![ev]).await.unwrap(), 1);
    let want = json!({ "type": "apply_progress", "elapsed_s": 1.5, "phase": "infra",
                       "step": "infra/apply-fsn1" });
    let live = rx.try_recv().unwrap();
    assert_eq!((live.id, live.kind.as_str(), &live.body), (1, "tofu", &want));
    let stored = store.events_after(job, 0, 10).await.unwrap();
    assert_eq!(stored.len(), 1);
    assert_eq!(stored[0].body, want);
}
both!(typed_events_are_stored_tagged_and_reach_subscribers);

/// Events for a job the store does not have are refused, and none is
/// written: the head row's reference to `jobs` guards the stream.
async fn events_of_an_unknown_job_are_refused_whole(db: &Db) {
    let store = db.open().await;
    let ghost = JobId::new();
    let evs = vec![NewJobEvent::new("log", json!(1)), NewJobEvent::new("log", json!(2))];
    store.append_events(ghost, evs).await.unwrap_err();
    let mut c = db.raw().await;
    let n: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM job_events WHERE job_id = $1")
        .bind(ghost.to_string())
        .fetch_one(&mut c)
        .await
        .unwrap();
    assert_eq!(n, 0);
    assert_eq!(store.last_event_id(ghost).await.unwrap(), 0);
}
both!(events_of_an_unknown_job_are_refused_whole);

/// Migration 11 rebuilds `job_events` on SQLite (to drop its per-row
/// foreign key): a database written before it keeps every event.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_event_table_rebuild_keeps_every_event() {
    let db = Db::sqlite();
    let Db::Sqlite(dir) = &db else { unreachable!() };
    let before = sqlx::migrate::Migrator {
        migrations: MIGRATOR.iter().filter(|m| m.version < 11).cloned().collect(),
        ..sqlx::migrate::Migrator::DEFAULT
    };
    let url = format!("sqlite://{}?mode=rwc", dir.path().join("catalyst-zero.db").display());
    let mut c = sqlx::SqliteConnection::connect(&url).await.unwrap();
    before.run(&mut c).await.unwrap();
    sqlx::raw_sql(
        // (No job row: the old per-row reference is switched off to write
        // the rows alone.)
        "PRAGMA foreign_keys = OFF; INSERT INTO job_events (job_id, id, at, kind, body, generation) VALUES \
         ('j', 1, 10, 'log', '{\"a\":1}', NULL), ('j', 2, 11, 'step', '{}', 3)",
    )
    .execute(&mut c)
    .await
    .unwrap();
    c.close().await.unwrap();
    let store = db.open().await;
    let mut c = db.raw().await;
    let rows: Vec<(String, i64, i64, String, String, Option<i64>)> =
        sqlx::query_as("SELECT job_id, id, at, kind, body, generation FROM job_events ORDER BY id")
            .fetch_all(&mut c)
            .await
            .unwrap();
    assert_eq!(
        rows,
        [
            ("j".into(), 1, 10, "log".into(), r#"{"a":1}"#.into(), None),
            ("j".into(), 2, 11, "step".into(), "{}".into(), Some(3)),
        ]
    );
    drop(store);
}

async fn secrets_are_encrypted_at_rest_and_survive_a_restart(db: &Db) {
    let store = db.open().await;
    let sub = submission("c.omani.works", None);
    let sov = match &sub.sovereign {
        SovereignTarget::New { id, .. } => *id,
        _ => unreachable!(),
    };
    submit_and_hold(&store, sub).await;
    store.barrier().await.unwrap();
    drop(store);
    let files = db.files();
    assert!(files.iter().map(Vec::len).sum::<usize>() > 0);
    for bytes in &files {
        assert!(!bytes.windows(16).any(|w| w == b"tok-plaintext-12"), "plaintext secret on disk");
    }
    let store = db.open().await;
    let s = store.get_secret(&sov.to_string(), "cloud_token").await.unwrap().unwrap();
    assert_eq!(s.expose(), "tok-plaintext-123");
}
both!(secrets_are_encrypted_at_rest_and_survive_a_restart);

async fn submissions_are_atomic_and_idempotent(db: &Db) {
    let store = db.open().await;
    let first = store.submit(submission("d.omani.works", Some(("k1", "h1")))).await.unwrap();
    let SubmitOutcome::Created(resp) = first else { panic!("created") };
    // Same key, same body: the first answer, nothing new.
    let again = store.submit(submission("d.omani.works", Some(("k1", "h1")))).await.unwrap();
    assert_eq!(again, SubmitOutcome::Replayed(resp));
    // Same key, other body: refused.
    let err = store.submit(submission("e.omani.works", Some(("k1", "h2")))).await.unwrap_err();
    assert!(matches!(err, StoreError::IdempotencyConflict { .. }));
    // A taken FQDN: refused, and nothing of that submission is written.
    let before = (
        store.list_sovereigns().await.unwrap().len(),
        store.list_jobs(None).await.unwrap().len(),
        store.audit(None).await.unwrap().len(),
    );
    let err = store.submit(submission("d.omani.works", None)).await.unwrap_err();
    assert!(matches!(err, StoreError::FqdnTaken { .. }));
    let after = (
        store.list_sovereigns().await.unwrap().len(),
        store.list_jobs(None).await.unwrap().len(),
        store.audit(None).await.unwrap().len(),
    );
    assert_eq!(before, after);
    assert_eq!(before, (1, 1, 1));
}
both!(submissions_are_atomic_and_idempotent);

async fn job_status_machine_is_enforced(db: &Db) {
    let store = db.open().await;
    let sub = submission("f.omani.works", None);
    let job = sub.job_id;
    submit_and_hold(&store, sub).await;
    let j = store
        .update_job(job, JobUpdate { status: Some(JobStatus::Running), ..Default::default() })
        .await
        .unwrap();
    assert_eq!(j.status, JobStatus::Running);
    store
        .update_job(job, JobUpdate { status: Some(JobStatus::Succeeded), ..Default::default() })
        .await
        .unwrap();
    let err = store
        .update_job(job, JobUpdate { status: Some(JobStatus::Running), ..Default::default() })
        .await
        .unwrap_err();
    assert!(matches!(err, StoreError::IllegalJobStatus { .. }));
    assert!(store.jobs_in_flight().await.unwrap().is_empty());
}
both!(job_status_machine_is_enforced);

/// What a starting daemon resumes: the pending and running jobs, read
/// without their JSON.
async fn jobs_in_flight_ids_are_the_pending_and_running_ones(db: &Db) {
    let store = db.open().await;
    let mut ids = Vec::new();
    for name in ["r", "p", "s"] {
        let sub = submission(&format!("{name}.omani.works"), None);
        ids.push(sub.job_id);
        submit_and_hold(&store, sub).await;
    }
    let to = |s| JobUpdate { status: Some(s), ..Default::default() };
    store.update_job(ids[0], to(JobStatus::Running)).await.unwrap();
    store.update_job(ids[2], to(JobStatus::Running)).await.unwrap();
    store.update_job(ids[2], to(JobStatus::Succeeded)).await.unwrap();
    let found = store.jobs_in_flight_ids().await.unwrap();
    let mut got: Vec<(JobId, JobStatus)> = found.iter().map(|(id, _, _, s)| (*id, *s)).collect();
    got.sort_by_key(|(id, _)| *id);
    let mut want = vec![(ids[0], JobStatus::Running), (ids[1], JobStatus::Pending)];
    want.sort_by_key(|(id, _)| *id);
    assert_eq!(got, want);
    let full: Vec<JobId> = store.jobs_in_flight().await.unwrap().iter().map(|j| j.id).collect();
    let light: Vec<JobId> = found.iter().map(|(id, ..)| *id).collect();
    assert_eq!(full, light, "the same jobs in the same order");
}
both!(jobs_in_flight_ids_are_the_pending_and_running_ones);

/// Found by schemathesis: abandoning a provision job that was rolled back
/// (its Sovereign destroyed, the name since taken by another) tried to
/// bring the old Sovereign back and broke the name's uniqueness.
async fn a_destroyed_sovereign_stays_destroyed(db: &Db) {
    let store = db.open().await;
    let old = submission("tomb.omani.works", None);
    let old_job = old.job_id;
    let SovereignTarget::New { id: old_sov, .. } = &old.sovereign else { unreachable!() };
    let old_sov = *old_sov;
    submit_and_hold(&store, old).await;
    store
        .update_job(
            old_job,
            JobUpdate {
                status: Some(JobStatus::Failed),
                sovereign_status: Some(SovereignStatus::Destroyed),
                ..Default::default()
            },
        )
        .await
        .unwrap();
    submit_and_hold(&store, submission("tomb.omani.works", None)).await;
    let j = store
        .update_job(
            old_job,
            JobUpdate {
                status: Some(JobStatus::Abandoned),
                sovereign_status: Some(SovereignStatus::Failed),
                ..Default::default()
            },
        )
        .await
        .unwrap();
    assert_eq!(j.status, JobStatus::Abandoned);
    let sovs = store.list_sovereigns().await.unwrap();
    let status = |id| sovs.iter().find(|s| s.id == id).unwrap().status;
    assert_eq!(status(old_sov), SovereignStatus::Destroyed);
    assert_eq!(sovs.iter().filter(|s| s.status != SovereignStatus::Destroyed).count(), 1);
}
both!(a_destroyed_sovereign_stays_destroyed);

async fn concurrent_appends_to_one_step_admit_exactly_one_transition(db: &Db) {
    let store = db.open().await;
    let sub = submission("g.omani.works", None);
    let job = sub.job_id;
    submit_and_hold(&store, sub).await;
    for round in 1..=3u32 {
        // Many racers, one legal event each round: batches mix accepted and
        // refused ops, and the writer's state cache must not count refused ones.
        let mut set = tokio::task::JoinSet::new();
        for _ in 0..40 {
            let s = store.clone();
            set.spawn(async move {
                s.append_step_event(job, "infra/apply", StepEvent::Started { attempt: round })
                    .await
                    .is_ok()
            });
        }
        let mut ok = 0;
        while let Some(r) = set.join_next().await {
            ok += usize::from(r.unwrap());
        }
        assert_eq!(ok, 1, "round {round}");
    }
    assert_eq!(store.journal(job).await.unwrap().len(), 3);
    drop(store);
    // A fresh process (empty cache) derives the same state from the journal
    // (taking the dead process's lease over, as an operator's verb would).
    let store = db.open().await;
    let ttl = std::time::Duration::from_secs(60);
    store.claim_leases(Some(job), true, ttl, 1).await.unwrap();
    let s = store
        .append_step_event(job, "infra/apply", StepEvent::Succeeded { output: json!(7) })
        .await
        .unwrap();
    assert_eq!(s, NodeState::Succeeded { output: json!(7), attempts: 3 });
}
both!(concurrent_appends_to_one_step_admit_exactly_one_transition);

/// The escrow of one kind is replaced as a whole, together with the
/// secrets that go with it, in one commit; reads come back in order and
/// survive a restart.
async fn escrow_is_replaced_per_kind_in_one_commit(db: &Db) {
    let store = db.open().await;
    let item = |kind: &str, index: u32| EscrowItem {
        kind: kind.into(),
        index,
        custodian: index % 2,
        label: format!("custodian {}", index % 2),
        recipient: "age1example".into(),
        armored: format!("-----BEGIN AGE ENCRYPTED FILE-----\n{kind}{index}\n"),
        threshold: 2,
        parts: 3,
        fingerprint: Some("ab".repeat(32)),
        created_at: 0,
    };
    let token = [("openbao-root-token".to_owned(), SecretString::new("s.root"))];
    let shares: Vec<EscrowItem> = (0..3).map(|i| item("openbao-share", i)).collect();
    store.put_escrow("sov", "openbao-share", &shares, &token).await.unwrap();
    store
        .put_escrow("sov", "sealed-secrets-key", &[item("sealed-secrets-key", 0)], &[])
        .await
        .unwrap();
    store.put_escrow("sov", "openbao-share", &shares[..2], &[]).await.unwrap();
    drop(store);
    let store = db.open().await;
    let all = store.escrow("sov", None).await.unwrap();
    let keys: Vec<(String, u32)> = all.iter().map(|i| (i.kind.clone(), i.index)).collect();
    assert_eq!(
        keys,
        [
            ("openbao-share".into(), 0),
            ("openbao-share".into(), 1),
            ("sealed-secrets-key".into(), 0)
        ]
    );
    assert_eq!(all[1].armored, shares[1].armored);
    assert!(all[0].created_at > 0);
    assert_eq!(store.escrow("sov", Some("sealed-secrets-key")).await.unwrap().len(), 1);
    assert!(store.escrow("other", None).await.unwrap().is_empty());
    assert_eq!(
        store.get_secret("sov", "openbao-root-token").await.unwrap().unwrap().expose(),
        "s.root"
    );
    store.delete_escrow("sov", "openbao-share").await.unwrap();
    assert_eq!(store.escrow("sov", None).await.unwrap().len(), 1);
}
both!(escrow_is_replaced_per_kind_in_one_commit);

/// A store opened with another at-rest key is refused at once, naming
/// both files, instead of failing at its first secret mid-job.
#[tokio::test]
async fn a_store_refuses_a_key_it_was_not_written_with() {
    let dir = tempfile::tempdir().unwrap();
    let paths = |key: &str| StorePaths {
        database: dir.path().join("cz.db"),
        identity: dir.path().join("keys").join(key),
    };
    let store = Store::open(paths("a.txt")).await.unwrap();
    store.put_secret("sov", "token", &SecretString::new("t")).await.unwrap();
    drop(store);
    let e = Store::open(paths("b.txt")).await.err().expect("refused");
    assert!(matches!(e, StoreError::WrongKey { .. }), "{e}");
    assert!(e.to_string().contains("b.txt") && e.to_string().contains("cz.db"), "{e}");
    let again = Store::open(paths("a.txt")).await.unwrap();
    assert_eq!(again.get_secret("sov", "token").await.unwrap().unwrap().expose(), "t");
}

/// On PostgreSQL the key is shared by replicas: a missing key is refused
/// (never created), and so is a key the store was not written with.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_postgres_store_needs_the_key_it_was_written_with() {
    let Some(db) = Db::postgres("pg_key").await else { return };
    let Db::Postgres { url, key, .. } = &db else { unreachable!() };
    let missing = key.path().join("absent.txt");
    let e = Store::open_postgres(url, &missing).await.err().expect("refused");
    assert!(matches!(e, StoreError::Seal(_)), "{e}");
    assert!(!missing.exists(), "a replica must not make a key of its own");
    let store = db.open().await;
    store.put_secret("sov", "token", &SecretString::new("t")).await.unwrap();
    drop(store);
    let other = key.path().join("other.txt");
    Sealer::load_or_create(&other).unwrap();
    let e = Store::open_postgres(url, &other).await.err().expect("refused");
    assert!(matches!(e, StoreError::WrongKey { .. }), "{e}");
    assert!(e.to_string().contains("other.txt") && !e.to_string().contains("password"), "{e}");
    assert_eq!(db.open().await.get_secret("sov", "token").await.unwrap().unwrap().expose(), "t");
}

/// A real `SQLITE_FULL` (the database capped by `max_page_count`, as a full
/// disk caps it), `SQLITE_READONLY` and `SQLITE_BUSY` are classified as
/// storage faults; an ordinary constraint error is not one.
#[tokio::test]
async fn sqlite_errors_of_the_storage_are_classified_as_faults() {
    let dir = tempfile::tempdir().unwrap();
    let url = format!("sqlite://{}?mode=rwc", dir.path().join("f.db").display());
    let mut c = sqlx::SqliteConnection::connect(&url).await.unwrap();
    sqlx::raw_sql("CREATE TABLE t (x BLOB UNIQUE); PRAGMA max_page_count = 8;")
        .execute(&mut c)
        .await
        .unwrap();
    let mut full = None;
    for i in 0..64 {
        if let Err(e) =
            sqlx::query("INSERT INTO t VALUES (?)").bind(vec![i as u8; 4096]).execute(&mut c).await
        {
            full = Some(e);
            break;
        }
    }
    let full = full.expect("the capped database filled up");
    assert_eq!(StorageFault::of_sqlx(&full), Some(StorageFault::DiskFull), "{full}");
    let dup = sqlx::query("INSERT INTO t VALUES (?)").bind(vec![0u8; 4096]).execute(&mut c).await;
    assert_eq!(StorageFault::of_sqlx(&dup.unwrap_err()), None, "a constraint is no fault");

    // Another connection holds the write lock: busy.
    sqlx::raw_sql("PRAGMA max_page_count = 100000; BEGIN IMMEDIATE;")
        .execute(&mut c)
        .await
        .unwrap();
    let mut other = sqlx::SqliteConnection::connect(&url).await.unwrap();
    sqlx::raw_sql("PRAGMA busy_timeout = 10;").execute(&mut other).await.unwrap();
    let busy = sqlx::query("INSERT INTO t VALUES (x'01')").execute(&mut other).await.unwrap_err();
    assert_eq!(StorageFault::of_sqlx(&busy), Some(StorageFault::Locked), "{busy}");
    sqlx::raw_sql("ROLLBACK;").execute(&mut c).await.unwrap();

    // A read-only connection: read-only.
    let ro = format!("sqlite://{}?mode=ro", dir.path().join("f.db").display());
    let mut r = sqlx::SqliteConnection::connect(&ro).await.unwrap();
    let e = sqlx::query("INSERT INTO t VALUES (x'02')").execute(&mut r).await.unwrap_err();
    assert_eq!(StorageFault::of_sqlx(&e), Some(StorageFault::ReadOnly), "{e}");
    // The OS's own codes.
    let enospc = std::io::Error::from_raw_os_error(28);
    assert_eq!(StorageFault::of_io(&enospc), Some(StorageFault::DiskFull));
}

/// Leases on PostgreSQL: claims of two replicas are disjoint, a write is
/// fenced by the generation it was made under, an expired lease passes to
/// the next claimer and its old holder's writes are refused, a renewal
/// says what was lost, and an operator's takeover fences a live holder.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn leases_fence_writes_of_a_replica_that_lost_its_job() {
    use std::time::Duration;
    let Some(db) = Db::postgres("leases").await else { return };
    let (a, b) = (db.open().await, db.open().await);
    assert_ne!(a.replica(), b.replica());
    let mut jobs = Vec::new();
    for i in 0..30 {
        let sub = submission(&format!("l{i}.omani.works"), None);
        jobs.push(sub.job_id);
        a.submit(sub).await.unwrap();
    }
    // Unleased writes are refused on PostgreSQL: nobody drives a job
    // without its lease.
    let e = a.append_events(jobs[0], vec![NewJobEvent::new("log", json!(1))]).await.unwrap_err();
    assert!(matches!(e, StoreError::LeaseLost { .. }), "{e}");

    // Two replicas claim at once: every job once, none twice.
    let ttl = Duration::from_secs(30);
    let (ca, cb) =
        tokio::join!(a.claim_leases(None, false, ttl, 20), b.claim_leases(None, false, ttl, 20));
    let (ca, cb) = (ca.unwrap(), cb.unwrap());
    assert_eq!(ca.len() + cb.len(), 30, "{} + {}", ca.len(), cb.len());
    assert!(ca.iter().all(|j| !cb.contains(j)));
    assert!(a.claim_leases(None, false, ttl, 30).await.unwrap().is_empty(), "all are held");

    let (mine, theirs) = (ca[0], cb[0]);
    a.append_step_event(mine, "infra/apply", StepEvent::Started { attempt: 1 }).await.unwrap();
    let e = a
        .append_step_event(theirs, "infra/apply", StepEvent::Started { attempt: 1 })
        .await
        .unwrap_err();
    assert!(matches!(e, StoreError::LeaseLost { .. }), "{e}");

    // A's lease of `mine` runs out (A stopped renewing): B claims it, at a
    // higher generation, and A's late write is refused.
    a.claim_leases(Some(mine), false, Duration::from_millis(200), 1).await.unwrap();
    tokio::time::sleep(Duration::from_millis(400)).await;
    assert_eq!(b.claim_leases(None, false, ttl, 30).await.unwrap(), vec![mine]);
    let e = a
        .append_step_event(mine, "infra/apply", StepEvent::Succeeded { output: json!(1) })
        .await
        .unwrap_err();
    assert!(matches!(e, StoreError::LeaseLost { .. }), "{e}");
    let renewal = a.renew_leases(ttl).await.unwrap();
    assert!(renewal.lost.is_empty(), "the refused write already dropped it: {renewal:?}");
    assert!(!a.held_leases().contains_key(&mine));
    // B goes on from the journal as written: `started` once, by A.
    let s = b
        .append_step_event(mine, "infra/apply", StepEvent::Succeeded { output: json!(2) })
        .await
        .unwrap();
    assert_eq!(s, NodeState::Succeeded { output: json!(2), attempts: 1 });
    let mut c = db.raw().await;
    let gens: Vec<(Option<i64>,)> =
        sqlx::query_as("SELECT generation FROM step_events WHERE job_id = $1 ORDER BY seq")
            .bind(mine.to_string())
            .fetch_all(&mut c)
            .await
            .unwrap();
    assert_eq!(gens, [(Some(1),), (Some(3),)], "each row carries its writer's generation");

    // An operator's verb on A takes a live lease over from B.
    let other = cb[1];
    assert_eq!(a.claim_leases(Some(other), true, ttl, 1).await.unwrap(), vec![other]);
    let renewal = b.renew_leases(ttl).await.unwrap();
    assert_eq!(renewal.lost, vec![other]);
    assert!(renewal.renewed.contains(&mine));
    a.append_events(other, vec![NewJobEvent::new("log", json!("a"))]).await.unwrap();

    // Released leases are claimable at once.
    a.release_lease(other).await.unwrap();
    assert_eq!(b.claim_leases(Some(other), false, ttl, 1).await.unwrap(), vec![other]);
}

/// On PostgreSQL a subscriber on one replica sees the events another
/// replica writes, in order and without a gap.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_subscriber_follows_events_written_by_another_replica() {
    use std::time::Duration;
    let Some(db) = Db::postgres("tail").await else { return };
    let (a, b) = (db.open().await, db.open().await);
    let sub = submission("tail.omani.works", None);
    let job = sub.job_id;
    submit_and_hold(&b, sub).await;
    b.append_events(job, vec![NewJobEvent::new("log", json!(0))]).await.unwrap();
    let mut rx = a.subscribe(job);
    tokio::time::sleep(Duration::from_millis(600)).await; // the tail has its start
    for i in 1..=50 {
        b.append_events(job, vec![NewJobEvent::new("log", json!(i))]).await.unwrap();
    }
    let mut seen = Vec::new();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while seen.len() < 50 {
        let ev = tokio::time::timeout_at(deadline, rx.recv()).await.expect("in time").unwrap();
        seen.push(ev.id);
    }
    assert_eq!(seen, (2..=51).collect::<Vec<_>>());
}

/// A console session is found while it lives, not once it expired or
/// ended; ending twice is fine; a new sign-in sweeps long-dead rows.
async fn console_sessions_live_expire_and_end(db: &Db) {
    let store = db.open().await;
    let now = now_ms();
    let session = |id: &str, expires_at| ConsoleSession {
        id_sha256: id.into(),
        actor: "alice".into(),
        role: "operator".into(),
        token_sha256: "ab".repeat(32),
        created_at: now - 10,
        expires_at,
    };
    store.open_console_session(session("live", now + 60_000)).await.unwrap();
    store.open_console_session(session("expired", now - 1)).await.unwrap();
    store.open_console_session(session("ancient", now - 2 * 86_400_000)).await.unwrap();
    assert_eq!(
        store.console_session("live", now).await.unwrap(),
        Some(session("live", now + 60_000))
    );
    assert_eq!(store.console_session("expired", now).await.unwrap(), None);
    assert_eq!(store.console_session("nope", now).await.unwrap(), None);
    store.end_console_session("live").await.unwrap();
    store.end_console_session("live").await.unwrap();
    assert_eq!(store.console_session("live", now).await.unwrap(), None);
    // The next sign-in sweeps what expired over a day ago.
    store.open_console_session(session("next", now + 60_000)).await.unwrap();
    let mut c = db.raw().await;
    let left: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM console_sessions")
        .fetch_one(&mut c)
        .await
        .unwrap();
    assert_eq!(left, 3, "live (ended), expired, next; not ancient");
}
both!(console_sessions_live_expire_and_end);
