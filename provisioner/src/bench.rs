//! Benchmarks that need a running daemon (P3, P5), called by `cz-bench`.

use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use futures::StreamExt;
use serde_json::{Value, json};

use crate::config::Config;

const TOKEN: &str = "bench-operator-token";

fn config(dir: &Path, latency: f64) -> Config {
    let mut c = Config {
        data_dir: dir.to_owned(),
        listen: "127.0.0.1:0".parse().expect("address"),
        at_rest_key: Some(at_rest_key(dir)),
        ..Default::default()
    };
    c.sim.latency_factor = latency;
    c.tokens.operator = Some(TOKEN.into());
    // P3 slows its job down with a fault plan.
    c.drills.fault_plans = true;
    c
}

/// A benchmark daemon's at-rest key: beside its data directory, never in
/// it (the daemon refuses a key among its data) and never the operator's.
fn at_rest_key(data_dir: &Path) -> std::path::PathBuf {
    let name = data_dir.file_name().map_or_else(|| "data".into(), |n| n.to_string_lossy());
    data_dir.parent().unwrap_or(data_dir).join(format!("{name}.at-rest-key.txt"))
}

fn now_us() -> i64 {
    chrono::Utc::now().timestamp_micros()
}

/// The README's example request (`examples/sovereign.toml`), which the
/// benchmarks run, with its subdomain and node counts set.
const EXAMPLE: &str = include_str!("../../examples/sovereign.toml");

/// The example request as a JSON body, for Sovereign `<sub>.omani.works`
/// with `cps` control planes and `workers` workers in its one region.
pub fn sample_body(sub: &str, cps: u32, workers: u32) -> Value {
    let example: toml::Value = toml::from_str(EXAMPLE).expect("the example request is TOML");
    let mut body = serde_json::to_value(example).expect("TOML converts to JSON");
    body["domain"]["subdomain"] = json!(sub);
    body["regions"][0]["control_plane"]["count"] = json!(cps);
    body["regions"][0]["workers"]["count"] = json!(workers);
    body
}

/// A provision job for `body`, as the API would make it.
pub fn submission(body: &Value, options: cz_engine::JobOptions) -> Result<cz_state::Submission> {
    let req = cz_phases::request::parse_provision(body.to_string().as_bytes())
        .map_err(|e| anyhow::anyhow!("the example request is invalid: {e:?}"))?;
    let submit = cz_phases::jobs::Submit { actor: "bench".into(), options, idempotency: None };
    Ok(cz_phases::jobs::provision(&req, submit))
}

/// The next whole SSE frame received (up to its blank line), taken out
/// of `buf`.
fn take_frame(buf: &mut String) -> Option<String> {
    let pos = buf.find("\n\n")?;
    Some(buf.drain(..pos + 2).collect())
}

/// One SSE subscriber: returns (ids received, latencies in µs of tagged events).
async fn subscribe(
    url: String,
    backlog: i64,
    ready: tokio::sync::mpsc::Sender<()>,
) -> Result<(Vec<i64>, Vec<i64>)> {
    let client = reqwest::Client::new();
    let resp = client.get(&url).bearer_auth(TOKEN).send().await?;
    if !resp.status().is_success() {
        bail!("subscribe: {}", resp.status());
    }
    let mut stream = resp.bytes_stream();
    let mut buf = String::new();
    let (mut ids, mut lat) = (Vec::new(), Vec::new());
    let mut signalled = false;
    while let Some(chunk) = stream.next().await {
        buf.push_str(&String::from_utf8_lossy(&chunk?));
        while let Some(frame) = take_frame(&mut buf) {
            let mut data = None;
            for line in frame.lines() {
                if let Some(d) = line.strip_prefix("data:") {
                    data = Some(d.trim().to_owned());
                }
            }
            let Some(d) = data else { continue };
            let v: Value = serde_json::from_str(&d)?;
            ids.push(v["id"].as_i64().unwrap_or(-1));
            if let Some(sent) = v["sent_us"].as_i64() {
                lat.push(now_us() - sent);
            }
            // Caught up with the backlog: now tailing.
            if !signalled && v["id"].as_i64().unwrap_or(0) >= backlog {
                signalled = true;
                let _ = ready.send(()).await;
            }
            if v["kind"] == "end" {
                return Ok((ids, lat));
            }
        }
    }
    Ok((ids, lat))
}

/// Submits a job that pauses at its first step (a fault plan), so a
/// benchmark has a job whose log it controls.
async fn submit_held(client: &reqwest::Client, base: &str, sub: &str) -> Result<cz_state::JobId> {
    let resp = client
        .post(format!("{base}/v1/sovereigns"))
        .bearer_auth(TOKEN)
        .header(
            "X-Catalyst-Fault-Plan",
            json!({ "fail": { "preflight/validate": "needs-operator" } }).to_string(),
        )
        .json(&sample_body(sub, 1, 0))
        .send()
        .await?;
    let body: Value = resp.json().await?;
    Ok(body["job_id"].as_str().context("job id")?.parse()?)
}

/// Waits for a [`submit_held`] job to pause.
async fn paused(store: &cz_state::Store, job: cz_state::JobId) -> Result<()> {
    let deadline = Instant::now() + Duration::from_secs(30);
    while store.get_job(job).await?.context("the job")?.status != cz_state::JobStatus::Paused {
        anyhow::ensure!(Instant::now() < deadline, "the held job did not pause");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    Ok(())
}

/// This process's resident memory in MiB, as `/proc/self/status` gives
/// `field` (`VmRSS` now, `VmHWM` its peak).
pub fn rss_mib(field: &str) -> f64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.strip_prefix(field).is_some_and(|rest| rest.starts_with(':')))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|kb| kb.parse::<f64>().ok())
        })
        .map_or(0.0, |kb| kb / 1024.0)
}

/// A line of `tofu apply -json` progress, the kind a large apply streams
/// most of (P2, P8).
pub fn tofu_progress_line(i: usize) -> String {
    json!({ "@level": "info", "@message": format!("hcloud_server.worker[{i}]: Still creating... [{i}s elapsed]"),
            "type": "apply_progress", "hook": { "resource": { "addr": format!("hcloud_server.worker[{}]", i % 50) }, "action": "create", "elapsed_seconds": i } })
    .to_string()
}

/// An SSE client that only follows: it publishes the id of the last event
/// it received and keeps nothing else.
async fn follow(url: String, last: tokio::sync::watch::Sender<i64>) -> Result<()> {
    let resp = reqwest::Client::new().get(&url).bearer_auth(TOKEN).send().await?;
    if !resp.status().is_success() {
        bail!("subscribe: {}", resp.status());
    }
    let mut stream = resp.bytes_stream();
    let mut buf = String::new();
    while let Some(chunk) = stream.next().await {
        buf.push_str(&String::from_utf8_lossy(&chunk?));
        while let Some(frame) = take_frame(&mut buf) {
            let id = frame
                .lines()
                .find_map(|l| l.strip_prefix("id:"))
                .and_then(|id| id.trim().parse::<i64>().ok());
            if let Some(id) = id {
                last.send_replace(id);
            }
        }
    }
    Ok(())
}

/// P8: memory against the length of one job's event log. A daemon holds
/// a job (paused at its first step, as P7's) while its log grows to each
/// of `sizes` events along the product's tofu path: each `-json` line
/// parsed as the CLI adapter's reader parses it, tagged as `infra`'s
/// forwarder tags it, committed up to `EVENTS_PER_COMMIT` at a time.
/// `subscribers` SSE clients tail it live throughout. At each size, once
/// every subscriber has the whole log, the process's resident memory.
///
/// Nothing of a log should stay in memory: the store commits and fans out
/// events (a slow subscriber's lag is bounded, after which it re-reads
/// from the database), the SSE stream renders each once, and the engine
/// never sees them. The figure is the slope of resident memory against
/// the log's length (least squares over `sizes`), beside what the log
/// takes in the database: what keeping it in memory would cost at least.
/// Resident memory moves by some MiB either way as SQLite's page caches
/// fill (up to 2 MiB for each of the store's connections) and as the
/// allocator keeps or returns what a moment's lag used.
pub async fn p8(dir: &Path, sizes: &[usize], subscribers: usize) -> Result<()> {
    let data = dir.join("p8");
    let handle = crate::server::start(config(&data, 0.0)).await?;
    let base = format!("http://{}", handle.addr);
    let client = reqwest::Client::new();
    let job = submit_held(&client, &base, "p8").await?;
    let store = handle.store().clone();
    paused(&store, job).await?;
    let mut followers = Vec::new();
    let mut tasks = tokio::task::JoinSet::new();
    for _ in 0..subscribers {
        let (tx, rx) = tokio::sync::watch::channel(0);
        tasks.spawn(follow(format!("{base}/v1/jobs/{job}/events"), tx));
        followers.push(rx);
    }
    let mut written = store.last_event_id(job).await? as usize;
    let mut rss = Vec::new();
    let started = Instant::now();
    for &size in sizes {
        let per_commit = cz_phases::infra::EVENTS_PER_COMMIT;
        while written < size {
            let batch = (written..size.min(written + per_commit))
                .filter_map(|i| cz_adapters::tofu::cli::parse_event(&tofu_progress_line(i)))
                .map(|ev| cz_state::NewJobEvent::of_step("tofu", &ev, "infra", "infra/apply-fsn1"))
                .collect::<Result<Vec<_>, _>>()?;
            written += batch.len();
            store.append_events(job, batch).await?;
        }
        let last = store.last_event_id(job).await?;
        for rx in &mut followers {
            let caught_up = rx.wait_for(|id| *id >= last);
            tokio::time::timeout(Duration::from_secs(600), caught_up)
                .await
                .context("a subscriber did not catch up in 10 minutes")??;
        }
        rss.push((size, rss_mib("VmRSS")));
    }
    let took = started.elapsed();
    let figures: Vec<String> = rss.iter().map(|(n, mib)| format!("{n}: {mib:.0} MiB")).collect();
    let per_100k = slope(&rss) * 100_000.0;
    let db = cz_state::StorePaths::in_dir(&data).database;
    let on_disk: u64 = ["", "-wal"]
        .iter()
        .filter_map(|sfx| std::fs::metadata(format!("{}{sfx}", db.display())).ok())
        .map(|m| m.len())
        .sum();
    let last = rss[rss.len() - 1].0;
    let log_per_100k = on_disk as f64 / (1024.0 * 1024.0) / last as f64 * 100_000.0;
    println!(
        "P8 memory against the event log: one job's log grown to {last} events ({subscribers} SSE subscribers tailing, {:.0} s); daemon RSS {}; {per_100k:+.1} MiB per 100,000 events, {:.0}% of the {log_per_100k:.0} MiB they take in the database, the least holding them would cost (aim: no growth with the log)",
        took.as_secs_f64(),
        figures.join(", "),
        100.0 * per_100k / log_per_100k,
    );
    tasks.abort_all();
    handle.shutdown().await?;
    Ok(())
}

/// The least-squares slope of `y` against `x`.
fn slope(points: &[(usize, f64)]) -> f64 {
    let n = points.len() as f64;
    let mx = points.iter().map(|p| p.0 as f64).sum::<f64>() / n;
    let my = points.iter().map(|p| p.1).sum::<f64>() / n;
    let sxy: f64 = points.iter().map(|p| (p.0 as f64 - mx) * (p.1 - my)).sum();
    let sxx: f64 = points.iter().map(|p| (p.0 as f64 - mx).powi(2)).sum();
    if sxx == 0.0 { 0.0 } else { sxy / sxx }
}

/// P3: `subscribers` SSE clients replay a job's backlog and tail it live.
pub async fn p3(dir: &Path, subscribers: usize) -> Result<()> {
    let handle = crate::server::start(config(&dir.join("p3"), 0.0)).await?;
    let base = format!("http://{}", handle.addr);
    let client = reqwest::Client::new();
    let job = submit_held(&client, &base, "p3").await?;
    let store = handle.store().clone();
    // Let the job pause, then add a backlog to replay.
    tokio::time::sleep(Duration::from_millis(300)).await;
    for _ in 0..10 {
        let evs = (0..100)
            .map(|i| {
                cz_state::NewJobEvent::new("log", json!({ "message": format!("backlog {i}") }))
            })
            .collect();
        store.append_events(job, evs).await?;
    }
    let backlog = store.events_after(job, 0, 1_000_000).await?.len() as i64;
    let (tx, mut rx) = tokio::sync::mpsc::channel(subscribers);
    let mut set = tokio::task::JoinSet::new();
    for _ in 0..subscribers {
        set.spawn(subscribe(format!("{base}/v1/jobs/{job}/events"), backlog, tx.clone()));
    }
    let replay = Instant::now();
    for _ in 0..subscribers {
        rx.recv().await.context("a subscriber never caught up")?;
    }
    let replay = replay.elapsed();
    // 100 events/s for 5 s: a busy tofu apply streams at about this rate.
    let live = 500;
    for i in 0..live {
        store
            .append_events(
                job,
                vec![cz_state::NewJobEvent::new(
                    "log",
                    json!({ "message": format!("live {i}"), "sent_us": now_us() }),
                )],
            )
            .await?;
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    store
        .append_events(job, vec![cz_state::NewJobEvent::new("end", json!({ "status": "bench" }))])
        .await?;
    let total = store.events_after(job, 0, 1_000_000).await?.len();
    let (mut complete, mut lats) = (0usize, Vec::new());
    while let Some(r) = set.join_next().await {
        let (ids, lat) = r??;
        if ids == (1..=total as i64).collect::<Vec<_>>() {
            complete += 1;
        }
        lats.extend(lat);
    }
    lats.sort_unstable();
    let pct = |p: f64| {
        lats.get(((lats.len() as f64 - 1.0) * p) as usize).copied().unwrap_or(0) as f64 / 1000.0
    };
    println!(
        "P3 SSE fan-out: {subscribers} subscribers replayed {backlog} events in {:.2} s, then tailed {live} live events at 100/s; complete and in order: {complete}/{subscribers} ({}); live delivery latency p50 {:.1} ms, p99 {:.1} ms (aim p99 < 100 ms)",
        replay.as_secs_f64(),
        if complete == subscribers { "zero loss" } else { "LOSS" },
        pct(0.5),
        pct(0.99)
    );
    handle.shutdown().await?;
    Ok(())
}

/// The store a benchmark runs on: SQLite under `data`, or a fresh
/// PostgreSQL database `name` on `pg` (key beside `data`).
pub async fn bench_store(data: &Path, pg: Option<&str>, name: &str) -> Result<cz_state::Store> {
    std::fs::create_dir_all(data)?;
    let key = at_rest_key(data);
    Ok(match pg {
        None => {
            let paths = cz_state::StorePaths {
                database: cz_state::StorePaths::in_dir(data).database,
                identity: key,
            };
            cz_state::Store::open(paths).await?
        }
        Some(server) => {
            cz_state::Sealer::load_or_create(&key)?;
            let url = cz_state::bench::fresh_postgres_database(server, name).await?;
            cz_state::Store::open_postgres(&url, &key).await?
        }
    })
}

/// P5: a daemon restarts over `jobs` stored in-flight jobs; time until
/// every one is driven again (`/readyz` turns ready only after recovery
/// started them all). On PostgreSQL (`pg`: a server URL) the jobs were
/// left by a replica that shut down cleanly (leases released); the new
/// replica claims them all in its first lease pass.
pub async fn p5(dir: &Path, jobs: usize, pg: Option<&str>) -> Result<()> {
    let data = dir.join(if pg.is_some() { "p5-pg" } else { "p5" });
    let store = bench_store(&data, pg, "cz_bench_p5").await?;
    {
        // Jobs a crashed daemon left `running`, written straight into the
        // store (the previous daemon is gone, not shut down).
        let hold = Duration::from_secs(600);
        for i in 0..jobs {
            let body = sample_body(&format!("p{i}"), 1, 0);
            let sub = submission(&body, cz_engine::JobOptions::default())?;
            let job = sub.job_id;
            store.submit(sub).await?;
            if pg.is_some() {
                store.claim_leases(Some(job), false, hold, 1).await?;
            }
            store
                .update_job(
                    job,
                    cz_state::JobUpdate {
                        status: Some(cz_state::JobStatus::Running),
                        ..Default::default()
                    },
                )
                .await?;
            store.release_lease(job).await?;
        }
    }
    drop(store);
    let mut c = config(&data, 1.0);
    // The world a crashed daemon left: its pool zones exist.
    crate::wiring::backend(&config(&data, 0.0)).await?;
    if let Some(server) = pg {
        let mut u = reqwest::Url::parse(server)?;
        u.set_path("/cz_bench_p5");
        c.database.url = Some(u.to_string());
        c.database.max_runs = jobs.max(1);
    }
    let t0 = Instant::now();
    let handle = crate::server::start(c).await?;
    let client = reqwest::Client::new();
    loop {
        let r = client.get(format!("http://{}/readyz", handle.addr)).send().await?;
        if r.status().is_success() {
            break;
        }
        if t0.elapsed() > Duration::from_secs(120) {
            bail!("not ready after 120 s");
        }
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    let ready = t0.elapsed();
    let in_flight = handle.store().jobs_in_flight().await?.len();
    println!(
        "P5 restart ({}): {jobs} stored jobs, {in_flight} in flight; all driven again after {:.0} ms (aim < 250 ms)",
        if pg.is_some() { "PostgreSQL" } else { "SQLite" },
        ready.as_secs_f64() * 1000.0
    );
    handle.shutdown().await?;
    Ok(())
}

/// P6's critical path: one node's chain (the whole job for the smallest
/// fleet, `chain`) plus the wait the project's request budget forces on a
/// fleet that needs `requests` hcloud requests: whatever the bucket cannot
/// pay at once (`requests` beyond its `capacity`) comes back at
/// `refill_per_sec` simulated seconds, which last `latency` real seconds
/// each. No schedule finishes a fleet's creates before that wait is over;
/// the slowest node's boot and join follow its create.
pub fn critical_path(
    chain: std::time::Duration,
    requests: u64,
    budget: &cz_adapters::cloud::BudgetConfig,
    latency: f64,
) -> (std::time::Duration, std::time::Duration) {
    let excess = requests.saturating_sub(u64::from(budget.capacity)) as f64;
    let forced = std::time::Duration::from_secs_f64(excess / budget.refill_per_sec * latency);
    (chain + forced, forced)
}

/// P7: the console opening a job whose log is `events` long, as the page
/// does it: the page and its assets, the session, the job's detail, the
/// newest page of its log (200 events) and its runbook. The aim: under a
/// second however long the log (the page never loads it whole; the
/// browser test checks the rows stay bounded).
pub async fn p7(dir: &Path, sizes: &[usize]) -> Result<()> {
    for &events in sizes {
        let handle = crate::server::start(config(&dir.join(format!("p7-{events}")), 0.0)).await?;
        let base = format!("http://{}", handle.addr);
        let client = reqwest::Client::new();
        let job = submit_held(&client, &base, &format!("p7-{events}")).await?;
        let store = handle.store().clone();
        paused(&store, job).await?;
        let mut added = store.last_event_id(job).await? as usize;
        while added < events {
            let n = (events - added).min(1000);
            let evs = (0..n)
                .map(|i| {
                    cz_state::NewJobEvent::new(
                        "tofu",
                        json!({ "type": "apply_progress", "address": format!("hcloud_server.w[{i}]"),
                                "action": "create", "elapsed_s": i % 60 }),
                    )
                })
                .collect();
            store.append_events(job, evs).await?;
            added += n;
        }
        let signed = client
            .post(format!("{base}/ui/session"))
            .json(&json!({ "token": TOKEN }))
            .send()
            .await?;
        anyhow::ensure!(signed.status().is_success(), "sign-in: {}", signed.status());
        let cookie = signed
            .headers()
            .get("set-cookie")
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.split(';').next())
            .context("a session cookie")?
            .to_owned();
        let mut times = Vec::new();
        let mut bytes = 0usize;
        for _ in 0..20 {
            let started = Instant::now();
            bytes = 0;
            let mut get = async |path: String| -> Result<Value> {
                let r =
                    client.get(format!("{base}{path}")).header("cookie", &cookie).send().await?;
                anyhow::ensure!(r.status().is_success(), "{path}: {}", r.status());
                let b = r.bytes().await?;
                bytes += b.len();
                Ok(serde_json::from_slice(&b).unwrap_or(Value::Null))
            };
            for asset in ["/ui", "/ui/app.js", "/ui/app.css", "/ui/session"] {
                get(asset.to_owned()).await?;
            }
            let detail = get(format!("/v1/jobs/{job}")).await?;
            let last = detail["last_event_id"].as_i64().context("last_event_id")?;
            let page = get(format!(
                "/v1/jobs/{job}/events?format=json&after={}&limit=200",
                (last - 200).max(0)
            ))
            .await?;
            anyhow::ensure!(page["events"].as_array().is_some_and(|e| e.len() == 200));
            let runbook = detail["pause"]["error"]["runbook"].as_str().unwrap_or_default();
            let file = runbook.rsplit('/').next().unwrap_or_default();
            get(format!("/ui/runbooks/{file}")).await?;
            times.push(started.elapsed());
        }
        times.sort();
        println!(
            "P7 console opens a paused job of {events} events (page, assets, session, detail, newest 200 events, runbook; {} KiB): p50 {:.1} ms, max {:.1} ms (aim < 1 s, whatever the log's length)",
            bytes / 1024,
            times[times.len() / 2].as_secs_f64() * 1000.0,
            times[times.len() - 1].as_secs_f64() * 1000.0,
        );
        handle.shutdown().await?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use cz_adapters::cloud::BudgetConfig;

    use super::{critical_path, slope};

    #[test]
    fn the_slope_is_the_least_squares_fit() {
        assert_eq!(slope(&[(0, 1.0), (10, 2.0), (20, 3.0)]), 0.1);
        assert_eq!(slope(&[(0, 5.0), (10, 7.0), (20, 5.0)]), 0.0);
        assert_eq!(slope(&[(7, 5.0)]), 0.0);
    }

    #[test]
    fn the_critical_path_adds_only_the_wait_the_budget_forces() {
        let hetzner = BudgetConfig::default();
        let chain = Duration::from_secs(60);
        // Within the bucket: the chain alone.
        assert_eq!(critical_path(chain, 500, &hetzner, 0.1), (chain, Duration::ZERO));
        assert_eq!(critical_path(chain, 3_600, &hetzner, 0.1).1, Duration::ZERO);
        // 1,000 requests beyond 3,600 tokens at 1/s: 1,000 simulated
        // seconds, 100 real ones at factor 0.1.
        let (path, forced) = critical_path(chain, 4_600, &hetzner, 0.1);
        assert_eq!(forced, Duration::from_secs(100));
        assert_eq!(path, Duration::from_secs(160));
        // A faster refill forces less.
        let fast = BudgetConfig { refill_per_sec: 10.0, ..hetzner };
        assert_eq!(critical_path(chain, 4_600, &fast, 0.1).1, Duration::from_secs(10));
    }
}
