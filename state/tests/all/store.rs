//! Store tests against a real SQLite file.

use cz_state::*;
use serde_json::json;

async fn open(dir: &std::path::Path) -> Store {
    Store::open(StorePaths::in_dir(dir)).await.unwrap()
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

#[tokio::test]
async fn migrations_build_the_expected_schema_on_an_empty_database() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path()).await;
    let tables: Vec<(String,)> = sqlx::query_as("SELECT name FROM sqlite_master WHERE type = 'table' AND name NOT LIKE 'sqlite_%' AND name NOT LIKE '_sqlx%' ORDER BY name")
        .fetch_all(store.read_pool())
        .await
        .unwrap();
    let names: Vec<&str> = tables.iter().map(|t| t.0.as_str()).collect();
    assert_eq!(
        names,
        [
            "audit",
            "escrow",
            "idempotency_keys",
            "job_event_heads",
            "job_events",
            "jobs",
            "secrets",
            "sovereigns",
            "step_events"
        ]
    );
    let cols: Vec<(String,)> =
        sqlx::query_as("SELECT name FROM pragma_table_info('jobs') ORDER BY cid")
            .fetch_all(store.read_pool())
            .await
            .unwrap();
    let cols: Vec<&str> = cols.iter().map(|c| c.0.as_str()).collect();
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
    let (mode,): (String,) =
        sqlx::query_as("PRAGMA journal_mode").fetch_one(store.read_pool()).await.unwrap();
    assert_eq!(mode, "wal");
    let applied: Vec<(i64,)> =
        sqlx::query_as("SELECT version FROM _sqlx_migrations ORDER BY version")
            .fetch_all(store.read_pool())
            .await
            .unwrap();
    assert_eq!(applied.len(), MIGRATOR.iter().count());
    // Re-opening applies nothing new and keeps data.
    drop(store);
    let again = open(dir.path()).await;
    let applied2: Vec<(i64,)> = sqlx::query_as("SELECT version FROM _sqlx_migrations")
        .fetch_all(again.read_pool())
        .await
        .unwrap();
    assert_eq!(applied, applied2);
}

#[tokio::test]
async fn journal_refuses_illegal_transitions_and_is_append_only() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path()).await;
    let sub = submission("a.omani.works", None);
    let job = sub.job_id;
    store.submit(sub).await.unwrap();
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
    // The triggers refuse updates even from raw SQL.
    let mut conn =
        sqlx::SqliteConnection::connect(&format!("sqlite://{}", store.paths().database.display()))
            .await
            .unwrap();
    let r = sqlx::query("UPDATE step_events SET event = 'x'").execute(&mut conn).await;
    assert!(r.is_err());
}

use sqlx::Connection;

#[tokio::test]
async fn events_have_gap_free_ids_and_reach_subscribers() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path()).await;
    let sub = submission("b.omani.works", None);
    let job = sub.job_id;
    store.submit(sub).await.unwrap();
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

#[tokio::test]
async fn secrets_are_encrypted_at_rest_and_survive_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path()).await;
    let sub = submission("c.omani.works", None);
    let sov = match &sub.sovereign {
        SovereignTarget::New { id, .. } => *id,
        _ => unreachable!(),
    };
    store.submit(sub).await.unwrap();
    drop(store);
    let raw = std::fs::read(dir.path().join("catalyst-zero.db")).unwrap();
    let wal = std::fs::read(dir.path().join("catalyst-zero.db-wal")).unwrap_or_default();
    for bytes in [&raw, &wal] {
        assert!(!bytes.windows(16).any(|w| w == b"tok-plaintext-12"), "plaintext secret on disk");
    }
    let store = open(dir.path()).await;
    let s = store.get_secret(&sov.to_string(), "cloud_token").await.unwrap().unwrap();
    assert_eq!(s.expose(), "tok-plaintext-123");
}

#[tokio::test]
async fn submissions_are_atomic_and_idempotent() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path()).await;
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

#[tokio::test]
async fn job_status_machine_is_enforced() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path()).await;
    let sub = submission("f.omani.works", None);
    let job = sub.job_id;
    store.submit(sub).await.unwrap();
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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_appends_to_one_step_admit_exactly_one_transition() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path()).await;
    let sub = submission("g.omani.works", None);
    let job = sub.job_id;
    store.submit(sub).await.unwrap();
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
    // A fresh process (empty cache) derives the same state from the journal.
    let store = open(dir.path()).await;
    let s = store
        .append_step_event(job, "infra/apply", StepEvent::Succeeded { output: json!(7) })
        .await
        .unwrap();
    assert_eq!(s, NodeState::Succeeded { output: json!(7), attempts: 3 });
}

/// The escrow of one kind is replaced as a whole, together with the
/// secrets that go with it, in one commit; reads come back in order and
/// survive a restart.
#[tokio::test]
async fn escrow_is_replaced_per_kind_in_one_commit() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path()).await;
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
    let store = open(dir.path()).await;
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
