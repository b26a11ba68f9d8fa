//! Three replicas of the real binary on one real PostgreSQL, sharing one
//! simulated world: 30 jobs, one replica killed with SIGKILL mid-run,
//! another paused with SIGSTOP past its lease and then continued. Every job
//! must succeed, no step may complete twice (the journal) and no cloud
//! object may exist twice (the shared sim cloud), and an SSE stream on one
//! replica must follow a job another replica runs, with no gap.

use std::collections::{BTreeMap, BTreeSet};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use cz_testkit::daemon::{Api, Daemon, TOKEN, sim_cloud_objects};
use cz_testkit::postgres::Postgres;
use cz_testkit::requests::{Custodians, request};
use sqlx::Connection;

/// Sim latency: a job takes a few seconds, so the faults land mid-run.
const LATENCY: f64 = 0.01;
/// The daemons' default lease: the pause must outlast it.
const LEASE_TTL: Duration = Duration::from_secs(15);

#[test]
fn three_replicas_on_postgres_survive_the_loss_or_pause_of_one() {
    if !Postgres::usable("three_replicas") {
        return;
    }
    let rt = tokio::runtime::Runtime::new().unwrap();
    let pg = rt.block_on(Postgres::shared());
    pg.create_db("replicas");
    let url = pg.url("replicas");
    let dir = tempfile::tempdir().unwrap();
    let key = dir.path().join("at-rest-key.txt");
    cz_state::Sealer::load_or_create(&key).unwrap();
    let shared = dir.path().join("shared");
    // One shared world is one Hetzner project: 30 Sovereigns need its
    // limits raised, as Hetzner does on request.
    let config = dir.path().join("replica.toml");
    std::fs::write(
        &config,
        "[sim.project_limits]\nserver = 100\nload_balancer = 40\nnetwork = 40\nplacement_group = 100\n",
    )
    .unwrap();

    let mut reps: Vec<Daemon> = (0..3)
        .map(|i| {
            let data = dir.path().join(format!("replica-{i}"));
            std::fs::create_dir_all(&data).unwrap();
            let mut d = Daemon::new(&data, LATENCY);
            d.backend_args.extend(["--config".into(), config.display().to_string()]);
            d.env = vec![
                ("CATALYST_ZERO_DATABASE_URL".into(), url.clone()),
                ("CATALYST_ZERO_SHARED_DIR".into(), shared.display().to_string()),
                ("CATALYST_ZERO_AT_REST_KEY".into(), key.display().to_string()),
            ];
            d
        })
        .collect();
    for d in &mut reps {
        d.start().unwrap();
    }
    let apis: Vec<Api> = reps.iter().map(|d| Api::new(d.port)).collect();

    // Three custodians whose identities this test holds: a replica lost
    // inside `secrets-handoff/init`'s unseal leaves OpenBao replicas only
    // they can unseal (the daemon never holds a share).
    let custodians = Custodians::generate(dir.path());

    // 30 jobs, submitted round robin: each replica drives its own.
    let started = Instant::now();
    let mut jobs: Vec<(String, usize)> = Vec::new();
    for i in 0..30 {
        let mut body = request(&format!("rep{i}"), 1, 1);
        custodians.deal(&mut body);
        let (status, body) = apis[i % 3].post("/v1/sovereigns", &body).unwrap();
        assert_eq!(status, 202, "{body}");
        jobs.push((body["job_id"].as_str().unwrap().to_owned(), i % 3));
    }

    // SSE on replica 0 for a job replica 1 runs (and loses to a pause).
    let followed = jobs.iter().find(|(_, r)| *r == 1).unwrap().0.clone();
    let sse_out = dir.path().join("sse.txt");
    let mut curl = Command::new("curl")
        .args(["-sN", "--max-time", "600", "-H", &format!("Authorization: Bearer {TOKEN}")])
        .arg(reps[0].url(&format!("/v1/jobs/{followed}/events")))
        .stdout(std::fs::File::create(&sse_out).unwrap())
        .stderr(Stdio::null())
        .spawn()
        .expect("curl");

    // Faults, mid-run: replica 2 dies, replica 1 is paused past its lease.
    std::thread::sleep(Duration::from_secs(2));
    let running =
        jobs.iter().filter(|(j, _)| apis[0].status(j).as_deref() == Some("running")).count();
    assert!(running > 0, "the faults must land mid-run");
    reps[2].kill9();
    std::thread::sleep(Duration::from_secs(1));
    // Pause replica 1 only while it provably holds the lease of a running
    // job: under load it may have finished its own by now, and a replica
    // paused with nothing in hand has nothing to lose. Better still, inside
    // the hardest window: a job's `secrets-handoff/init` has committed the
    // escrow and is unsealing OpenBao's replicas from the shares only its
    // memory holds. Its new owner finds OpenBao initialized with an
    // escrow, never initializes it again, and stops for the custodians
    // (as a CI run found). Up to 20 s are given to find that moment.
    let mine: BTreeSet<String> =
        jobs.iter().filter(|(_, r)| *r == 1).map(|(j, _)| j.clone()).collect();
    rt.block_on(async {
        sqlx::any::install_default_drivers();
        let mut c = sqlx::AnyConnection::connect(&url).await.unwrap();
        let deadline = Instant::now() + Duration::from_secs(120);
        let mut holding_since: Option<Instant> = None;
        let in_window = "SELECT DISTINCT s.job_id FROM step_events s \
             JOIN jobs j ON j.id = s.job_id \
             JOIN escrow e ON e.sovereign_id = j.sovereign_id AND e.kind = 'openbao-share' \
             WHERE s.node = 'secrets-handoff/init' AND NOT EXISTS (SELECT 1 FROM step_events d \
             WHERE d.job_id = s.job_id AND d.node = s.node AND d.event = 'succeeded')";
        loop {
            let held: Vec<String> = sqlx::query_scalar(
                "SELECT l.job_id FROM job_leases l JOIN jobs j ON j.id = l.job_id \
                 WHERE j.status = 'running'",
            )
            .fetch_all(&mut c)
            .await
            .unwrap();
            if held.iter().any(|j| mine.contains(j)) {
                let since = *holding_since.get_or_insert_with(Instant::now);
                let unsealing: Vec<String> =
                    sqlx::query_scalar(in_window).fetch_all(&mut c).await.unwrap();
                if unsealing.iter().any(|j| mine.contains(j)) {
                    eprintln!("replica 1 paused inside init's unseal window");
                    break;
                }
                if since.elapsed() > Duration::from_secs(20) {
                    break;
                }
            }
            assert!(Instant::now() < deadline, "replica 1 never held a running job's lease");
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    });
    reps[1].signal("STOP");
    std::thread::sleep(LEASE_TTL + Duration::from_secs(5));
    reps[1].signal("CONT");

    // Every job succeeds, driven by whoever holds its lease, with the
    // custodians' help where the runbook asks for it: a replica paused
    // after `init` committed the escrow but before it unsealed every
    // OpenBao replica from the shares in its memory leaves those replicas
    // sealed, and the job's new owner stops for the custodians.
    let ended = |job: &str| {
        apis[0].wait_status(
            job,
            &["succeeded", "failed", "paused", "cancelled"],
            Duration::from_secs(600),
        )
    };
    let mut unsealed_by_custodians = 0;
    for (job, submitted_to) in &jobs {
        let mut s = ended(job);
        let detail = apis[0].get(&format!("/v1/jobs/{job}")).unwrap();
        if s == "paused"
            && detail["pause"]["step"]
                .as_str()
                .is_some_and(|st| st.starts_with("secrets-handoff/unseal-"))
        {
            // Only a replica that was lost can have left OpenBao sealed.
            assert_ne!(*submitted_to, 0, "job {job} of the healthy replica needs custodians");
            unsealed_by_custodians += 1;
            let sov = detail["sovereign_id"].as_str().unwrap();
            let world = shared.join("sim");
            custodians.unseal(sov, &reps[0].url(""), &["--sim-world".as_ref(), world.as_ref()]);
            eprintln!("custodians unsealed {} of job {job}; retrying", detail["pause"]["step"]);
            let (code, resp) =
                apis[0].post(&format!("/v1/jobs/{job}/retry"), &serde_json::json!({})).unwrap();
            assert_eq!(code, 200, "{resp}");
            s = ended(job);
        }
        if s != "succeeded" {
            // Everything a rare failure under load leaves to read: the
            // job, its last events, and what each replica logged of it
            // (the data directories go with this test).
            let events = apis[0].events_after(job, 0);
            let last: Vec<String> =
                events.iter().rev().take(15).rev().map(|e| e.to_string()).collect();
            let logs: Vec<String> = reps
                .iter()
                .enumerate()
                .flat_map(|(i, d)| {
                    let log = std::fs::read_to_string(&d.log).unwrap_or_default();
                    let mine: Vec<String> = log
                        .lines()
                        .filter(|l| l.contains(job.as_str()))
                        .map(|l| format!("replica {i}: {l}"))
                        .collect();
                    mine.into_iter().rev().take(15).rev().collect::<Vec<_>>()
                })
                .collect();
            panic!(
                "job {job} ended {s}: {}\nlast events:\n{}\nreplica logs:\n{}",
                apis[0].get(&format!("/v1/jobs/{job}")).unwrap(),
                last.join("\n"),
                logs.join("\n")
            );
        }
    }
    let took = started.elapsed();
    eprintln!(
        "three replicas: 30 jobs in {took:?} (one killed, one paused {:?}; custodians unsealed \
         {unsealed_by_custodians})",
        LEASE_TTL + Duration::from_secs(5)
    );

    // The paused replica learnt it had lost its jobs, and serves again.
    let log = std::fs::read_to_string(&reps[1].log).unwrap();
    assert!(
        log.contains("Lost the job's lease") || log.contains("another replica holds the job"),
        "replica 1 did not stop its runs:\n{log}"
    );
    assert!(apis[1].ready(), "replica 1 serves after SIGCONT");

    // No step completed twice; some jobs did change hands.
    let (twice, moved): (Vec<(String, String, i64)>, i64) = rt.block_on(async {
        sqlx::any::install_default_drivers();
        let mut c = sqlx::AnyConnection::connect(&url).await.unwrap();
        let twice = sqlx::query_as(
            "SELECT job_id, node, count(*) FROM step_events WHERE event = 'succeeded' \
             GROUP BY job_id, node HAVING count(*) > 1",
        )
        .fetch_all(&mut c)
        .await
        .unwrap();
        let moved: i64 = sqlx::query_scalar(
            "SELECT count(*) FROM (SELECT job_id FROM step_events GROUP BY job_id \
             HAVING count(DISTINCT generation) > 1) m",
        )
        .fetch_one(&mut c)
        .await
        .unwrap();
        (twice, moved)
    });
    assert!(twice.is_empty(), "steps that completed twice: {twice:?}");
    assert!(moved > 0, "no job changed replica: the faults did not bite");

    // No cloud object twice in the shared world.
    for (kind, objs) in sim_cloud_objects(&shared) {
        let mut names: BTreeMap<String, usize> = BTreeMap::new();
        for o in &objs {
            if let Some(n) = o["name"].as_str() {
                *names.entry(n.to_owned()).or_default() += 1;
            }
        }
        let dup: Vec<_> = names.iter().filter(|(_, n)| **n > 1).collect();
        assert!(dup.is_empty(), "duplicate {kind}: {dup:?}");
    }

    // The stream on replica 0 saw every event of replica 1's job, in order,
    // once, to its end.
    let deadline = Instant::now() + Duration::from_secs(30);
    while curl.try_wait().unwrap().is_none() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(100));
    }
    let _ = curl.kill();
    let text = std::fs::read_to_string(&sse_out).unwrap();
    let ids: Vec<i64> = text
        .lines()
        .filter_map(|l| l.strip_prefix("id:"))
        .map(|v| v.trim().parse().unwrap())
        .collect();
    assert!(!ids.is_empty(), "no events streamed:\n{text}");
    assert_eq!(ids, (1..=ids.len() as i64).collect::<Vec<_>>(), "a gap or a repeat");
    assert!(text.contains("event: end"), "the stream did not reach the job's end");
    let stored = apis[0].events_after(&followed, 0);
    let last_stored = stored.iter().filter_map(|e| e["id"].as_i64()).max().unwrap_or(0);
    assert!(last_stored >= *ids.last().unwrap());
    let kinds: BTreeSet<String> = text
        .lines()
        .filter_map(|l| l.strip_prefix("event:"))
        .map(|k| k.trim().to_owned())
        .collect();
    assert!(kinds.contains("step"), "{kinds:?}");
}

/// A replica that cannot reach its database stops its runs by itself,
/// before its leases can pass to another replica, and keeps answering.
#[test]
fn a_replica_that_cannot_renew_stops_its_runs() {
    if !Postgres::usable("cannot_renew") {
        return;
    }
    let rt = tokio::runtime::Runtime::new().unwrap();
    // A server of its own: this test stops it.
    let mut pg = rt.block_on(Postgres::start());
    pg.create_db("lonely");
    let dir = tempfile::tempdir().unwrap();
    let key = dir.path().join("at-rest-key.txt");
    cz_state::Sealer::load_or_create(&key).unwrap();
    let data = dir.path().join("replica");
    std::fs::create_dir_all(&data).unwrap();
    // Slow enough that the job is mid-run when the database goes away.
    let mut d = Daemon::new(&data, 0.2);
    d.env = vec![
        ("CATALYST_ZERO_DATABASE_URL".into(), pg.url("lonely")),
        ("CATALYST_ZERO_AT_REST_KEY".into(), key.display().to_string()),
        ("RUST_LOG".into(), "warn".into()),
    ];
    d.start().unwrap();
    let api = Api::new(d.port);
    let (status, body) = api.post("/v1/sovereigns", &request("lonely", 1, 1)).unwrap();
    assert_eq!(status, 202, "{body}");
    let job = body["job_id"].as_str().unwrap().to_owned();
    api.wait_status(&job, &["running"], Duration::from_secs(30));

    let stopped = Instant::now();
    pg.stop();
    let deadline = stopped + LEASE_TTL + Duration::from_secs(15);
    let said = "Leases not renewed in time: stopping every run here";
    loop {
        let log = std::fs::read_to_string(&d.log).unwrap_or_default();
        if log.contains(said) {
            break;
        }
        assert!(Instant::now() < deadline, "no stop within the lease:\n{log}");
        std::thread::sleep(Duration::from_millis(200));
    }
    // It stopped before the lease could have passed to anyone else.
    assert!(stopped.elapsed() < LEASE_TTL, "stopped after {:?}", stopped.elapsed());
    let health = api.get("/healthz").unwrap();
    assert_eq!(health["status"], "ok", "it keeps answering");
}
