//! `cz-bench`: the Foundation's performance figures, one line per figure.
//!
//! - P1 step checkpoint (started + succeeded, durable) vs raw insert+commit;
//! - P2 100k OpenTofu `-json` lines into the event log vs raw batched insert;
//! - P3 1,000 SSE subscribers replaying and tailing one job;
//! - P4 200 concurrent `sim` jobs: wall time / one job's critical path, RSS;
//! - P5 daemon restart with 1,000 stored jobs: time until all in-flight jobs
//!   run again;
//! - P6 one large Sovereign on the sim, 50 and 500 nodes: wall time against one node's
//!   chain (the same Sovereign with one worker), hcloud requests against
//!   the project's budget and the wait it forced, steps and events
//!   written, peak RSS; hetzner-k3s's published figures beside it;
//! - P7 the console opening a job of 10,000 and 100,000 events: every
//!   request the page makes, timed;
//! - P8 one job's event log grown to a million events while SSE
//!   subscribers tail it: the daemon's resident memory against the log's
//!   length (it must not grow with it);
//! - P4-PG, P5-PG: P4 and P5 on PostgreSQL (`--database-url`, a server the
//!   benchmark may create databases on), beside the SQLite figures;
//! - H1 the hetzner backend end to end (real tofu, sshd, PowerDNS, OpenBao;
//!   the hcloud and Kubernetes fakes answering at once): wall time of a
//!   provision and of its destroy, the daemon's own overhead on the whole
//!   path. That world takes servers a benchmark machine may not have, so
//!   the `hetzner_e2e` test measures it and leaves the figure in
//!   `target/cz-figures/hetzner-e2e.json`; H1 reports it from there.
//!
//! `--quick` shrinks every size so CI can run it as a smoke test; the README
//! figures come from a full run (`cargo run --release --bin cz-bench`).
//! Targets are printed next to figures; they are not asserted here (speed
//! belongs in benchmarks, not in timed tests).

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use clap::Parser;
use cz_engine::{DriveOutcome, Engine, JobOptions};
use cz_sim::{SimConfig, SimWorld, sim_backend, sim_backend_with_world};
use cz_state::{JobId, NewJobEvent, StepEvent, Store, StorePaths};
use serde_json::{Value, json};
use tokio_util::sync::CancellationToken;

#[derive(Parser, Debug)]
#[command(about = "Catalyst-Zero benchmarks (P1–P7)")]
struct Args {
    /// Small sizes (CI smoke run).
    #[arg(long)]
    quick: bool,
    /// Run only these figures (e.g. `--only p1,p4`).
    #[arg(long, value_delimiter = ',')]
    only: Vec<String>,
    /// Where the end-to-end tests leave their figures (H1).
    #[arg(long, default_value = "target/cz-figures")]
    figures: std::path::PathBuf,
    /// Sim latency factor for P4 (0.1: ten times faster than real clouds;
    /// polling stays proportional, so CPU per simulated second is real).
    #[arg(long, default_value_t = 0.1)]
    latency: f64,
    /// A PostgreSQL server (`postgres://user@host:port/postgres`): P4 and P5
    /// also run on it, each in a fresh database, and are reported beside
    /// SQLite.
    #[arg(long, env = "CZ_BENCH_DATABASE_URL")]
    database_url: Option<String>,
}

fn wants(args: &Args, p: &str) -> bool {
    args.only.is_empty() || args.only.iter().any(|o| o.eq_ignore_ascii_case(p))
}

/// Peak resident set size of this process, in MiB (Linux `VmHWM`).
fn peak_rss_mib() -> f64 {
    catalyst_zero::bench::rss_mib("VmHWM")
}

/// Submits a provision job for `body` straight into the store.
async fn submit(store: &Store, body: &Value, options: &JobOptions) -> Result<JobId> {
    let sub = catalyst_zero::bench::submission(body, options.clone())?;
    let job = sub.job_id;
    store.submit(sub).await?;
    Ok(job)
}

async fn p1(dir: &Path, n: usize) -> Result<()> {
    let store = Store::open(StorePaths::in_dir(&dir.join("p1"))).await?;
    let body = catalyst_zero::bench::sample_body("p1", 1, 0);
    let job = submit(&store, &body, &JobOptions::default()).await?;
    let start = Instant::now();
    for i in 0..n {
        let node = format!("phase/step-{i}");
        store.append_step_event(job, &node, StepEvent::Started { attempt: 1 }).await?;
        store.append_step_event(job, &node, StepEvent::Succeeded { output: json!({}) }).await?;
    }
    let ours = start.elapsed();
    let raw = cz_state::bench::raw_checkpoints(&dir.join("p1-raw.db"), n).await?;
    // The same checkpoints from 16 concurrent steps (a job's parallel
    // branches, or many jobs): the writer commits them in groups.
    let start = Instant::now();
    let mut set = tokio::task::JoinSet::new();
    for t in 0..16 {
        let store = store.clone();
        set.spawn(async move {
            for i in 0..n / 16 {
                let node = format!("phase/concurrent-{t}-{i}");
                store.append_step_event(job, &node, StepEvent::Started { attempt: 1 }).await?;
                store
                    .append_step_event(job, &node, StepEvent::Succeeded { output: json!({}) })
                    .await?;
            }
            Ok::<_, cz_state::StoreError>(())
        });
    }
    while let Some(r) = set.join_next().await {
        r??;
    }
    let concurrent = start.elapsed();
    println!(
        "P1 step checkpoint, 16 concurrent steps: {:.0} µs per checkpoint (group commit); ratio raw(sequential)/ours = {:.2}",
        concurrent.as_micros() as f64 / (n / 16 * 16) as f64,
        raw.as_secs_f64() / concurrent.as_secs_f64()
    );
    println!(
        "P1 step checkpoint: {:.0} µs per checkpoint (raw insert+commit {:.0} µs); ratio raw/ours = {:.2} (aim >= 0.8), n = {n}",
        ours.as_micros() as f64 / n as f64,
        raw.as_micros() as f64 / n as f64,
        raw.as_secs_f64() / ours.as_secs_f64()
    );
    Ok(())
}

/// Rounds of P2, ours and raw in turn: the figures are medians (a shared
/// 2-core machine varies by a third between single runs).
const P2_ROUNDS: usize = 5;

async fn p2(dir: &Path, lines: usize) -> Result<()> {
    let store = Store::open(StorePaths::in_dir(&dir.join("p2"))).await?;
    let texts: Vec<String> = (0..lines).map(catalyst_zero::bench::tofu_progress_line).collect();
    let (mut ours, mut raw, mut lossless) = (Vec::new(), Vec::new(), true);
    for round in 0..P2_ROUNDS {
        let body = catalyst_zero::bench::sample_body(&format!("p2-{round}"), 1, 0);
        let job = submit(&store, &body, &JobOptions::default()).await?;
        ours.push(p2_ours(&store, job, &texts).await?);
        let stored = store.events_after(job, 0, lines as i64 + 10).await?;
        lossless &=
            stored.len() == lines && stored.iter().enumerate().all(|(i, e)| e.id == i as i64 + 1);
        let db = dir.join(format!("p2-raw-{round}.db"));
        raw.push(cz_state::bench::raw_batched_events(&db, &texts, 1000).await?.as_secs_f64());
    }
    let (ours, raw) = (median(&mut ours), median(&mut raw));
    println!(
        "P2 tofu lines: {lines} lines in {ours:.2} s ({:.0} lines/s), stored {} ({}), raw batched {raw:.2} s; ratio raw/ours = {:.2} (aim >= 0.8; medians of {P2_ROUNDS})",
        lines as f64 / ours,
        lines * P2_ROUNDS,
        if lossless { "zero loss" } else { "LOSS" },
        raw / ours
    );
    Ok(())
}

/// One P2 round on the product's path: tofu's reader parses each line as
/// it comes (`parse_event`), `infra` makes it a tagged event
/// (`StepCtx::tagged`) while its forwarder commits what has arrived, up to
/// 1,000 events a commit. Seconds taken.
async fn p2_ours(store: &Store, job: JobId, texts: &[String]) -> Result<f64> {
    let feed = texts.to_vec();
    let start = Instant::now();
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
    let reader = tokio::spawn(async move {
        for t in feed {
            if let Some(ev) = cz_adapters::tofu::cli::parse_event(&t) {
                let ev = NewJobEvent::of_step("tofu", &ev, "infra", "infra/apply-fsn1")
                    .expect("a tofu event serializes");
                let _ = tx.send(ev);
            }
        }
    });
    let mut forwarded = 0;
    let per_commit = cz_phases::infra::EVENTS_PER_COMMIT;
    while let Some(batch) = cz_adapters::tofu::next_batch(&mut rx, per_commit).await {
        forwarded += batch.len();
        store.append_events(job, batch).await?;
    }
    reader.await?;
    let took = start.elapsed().as_secs_f64();
    anyhow::ensure!(forwarded == texts.len(), "forwarded {forwarded} of {} lines", texts.len());
    Ok(took)
}

fn median(xs: &mut [f64]) -> f64 {
    xs.sort_by(f64::total_cmp);
    xs[xs.len() / 2]
}

/// CPU time this process has used, user and system, all threads
/// (`/proc/self/stat`, in the kernel's fixed 100 ticks a second).
fn cpu_used() -> Duration {
    let stat = std::fs::read_to_string("/proc/self/stat").unwrap_or_default();
    // The fields after the command name, which may hold spaces: state is
    // the first, utime the 12th, stime the 13th.
    let after = stat.rsplit_once(')').map_or("", |(_, rest)| rest);
    let ticks: u64 =
        after.split_whitespace().skip(11).take(2).filter_map(|t| t.parse::<u64>().ok()).sum();
    Duration::from_millis(ticks * 10)
}

/// Runs `n` provision jobs concurrently on one store. Each job gets its
/// own sim world: its own cloud project (quotas are per project, as on
/// Hetzner, and 200 Sovereigns do not fit one project's 25 servers).
///
/// On PostgreSQL (`pg`) each job is driven under its lease, claimed for
/// an hour: the figure is the store's and the engine's (with every write
/// fenced), not the lease keeper's.
async fn run_jobs(
    dir: &Path,
    n: usize,
    latency: f64,
    pg: Option<&str>,
) -> Result<(Duration, usize)> {
    let db = format!(
        "cz_bench_{}",
        dir.file_name().map_or("p4".into(), |f| f.to_string_lossy()).replace('-', "_")
    );
    let store = catalyst_zero::bench::bench_store(&dir.join("data"), pg, &db).await?;
    let registry = Arc::new(cz_phases::registry());
    let ns: Vec<String> = cz_phases::dns::NAMESERVERS.iter().map(|s| s.to_string()).collect();
    let mut jobs = Vec::new();
    for i in 0..n {
        let config = SimConfig { latency_factor: latency, ..SimConfig::default() };
        let backend = Arc::new(sim_backend(dir.join(format!("sim-{i}")), dir.join("ws"), config));
        backend.dns.create_zone("omani.works.", &ns, "").await?;
        let engine = Engine::new(store.clone(), registry.clone(), backend);
        let job = submit(
            &store,
            &catalyst_zero::bench::sample_body(&format!("bench{i}"), 3, 2),
            &JobOptions::default(),
        )
        .await?;
        if pg.is_some() {
            store.claim_leases(Some(job), false, Duration::from_secs(3600), 1).await?;
        }
        jobs.push((engine, job));
    }
    let start = Instant::now();
    let mut set = tokio::task::JoinSet::new();
    for (engine, job) in jobs {
        set.spawn(async move { engine.drive(job, CancellationToken::new()).await });
    }
    let mut ok = 0;
    while let Some(r) = set.join_next().await {
        match r? {
            Ok(DriveOutcome::Stopped(cz_state::JobStatus::Succeeded)) => ok += 1,
            other => eprintln!("P4: a job ended {other:?}"),
        }
    }
    Ok((start.elapsed(), ok))
}

/// Resets this process's peak RSS (`VmHWM`), so each figure reports its own.
fn reset_peak_rss() {
    let _ = std::fs::write("/proc/self/clear_refs", "5");
}

async fn p4(dir: &Path, n: usize, latency: f64, pg: Option<&str>) -> Result<()> {
    reset_peak_rss();
    let sfx = if pg.is_some() { "-pg" } else { "" };
    let (one, ok1) = run_jobs(&dir.join(format!("p4-one{sfx}")), 1, latency, pg).await?;
    let cpu_before = cpu_used();
    let (all, okn) = run_jobs(&dir.join(format!("p4-all{sfx}")), n, latency, pg).await?;
    let cpu = (cpu_used() - cpu_before).as_secs_f64();
    let (key, cores) = sealing_key_cost(P4_KEYS_TIMED)?;
    let floor = n as f64 * key.as_secs_f64() / cores as f64;
    println!(
        "P4 floor: one RSA-4096 sealing key (custody, one per Sovereign) takes {:.2} s of a core (mean of {P4_KEYS_TIMED}); {n} of them on {cores} cores take {floor:.1} s alone, {:.2}x one job alone",
        key.as_secs_f64(),
        floor / one.as_secs_f64()
    );
    println!(
        "P4 CPU: the {n} jobs used {cpu:.0} s of CPU in {:.0} s on {cores} cores ({:.0}% busy), {:.2} s a job, {:.2} s of it the sealing key",
        all.as_secs_f64(),
        100.0 * cpu / (all.as_secs_f64() * cores as f64),
        cpu / n as f64,
        key.as_secs_f64()
    );
    println!(
        "P4 concurrent sim jobs ({}): {n} jobs (latency factor {latency}) in {:.2} s, one job alone {:.2} s; wall/critical-path = {:.2} (aim <= 1.1); succeeded {okn}/{n} (+{ok1}/1); peak RSS {:.0} MiB (aim <= 150)",
        if pg.is_some() { "PostgreSQL" } else { "SQLite" },
        all.as_secs_f64(),
        one.as_secs_f64(),
        all.as_secs_f64() / one.as_secs_f64(),
        peak_rss_mib()
    );
    Ok(())
}

/// Sealing keys P4 times one after another for its floor (a key's time
/// varies by a factor of several, prime search being random).
const P4_KEYS_TIMED: u32 = 16;

/// The mean time one core takes to make a sealed-secrets key, as custody
/// makes it, and the cores there are: the CPU floor under P4, which no
/// scheduling beats.
fn sealing_key_cost(keys: u32) -> Result<(Duration, usize)> {
    let start = Instant::now();
    for _ in 0..keys {
        cz_adapters::sealed_secrets::SealingKey::generate("")?;
    }
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    Ok((start.elapsed() / keys, cores))
}

/// One Sovereign of `workers` workers and 3 control planes in one region,
/// driven to hand-off on a sim world of its own; returns its wall time and
/// the world.
async fn one_sovereign(
    dir: &Path,
    workers: u32,
    latency: f64,
) -> Result<(Duration, Arc<SimWorld>, Store, JobId)> {
    let store = catalyst_zero::bench::bench_store(&dir.join("data"), None, "p6").await?;
    // A project raised for the size (Hetzner raises limits on request).
    let limits =
        [("server", 1_000), ("placement_group", 100), ("load_balancer", 10), ("network", 10)];
    let config = SimConfig {
        latency_factor: latency,
        project_limits: limits.iter().map(|(k, v)| ((*k).to_owned(), *v)).collect(),
        ..SimConfig::default()
    };
    let world = Arc::new(SimWorld::new(dir.join("sim"), config));
    let backend = Arc::new(sim_backend_with_world(world.clone(), dir.join("ws")));
    let ns: Vec<String> = cz_phases::dns::NAMESERVERS.iter().map(|s| s.to_string()).collect();
    backend.dns.create_zone("omani.works.", &ns, "").await?;
    let engine = Engine::new(store.clone(), Arc::new(cz_phases::registry()), backend);
    let job = submit(
        &store,
        &catalyst_zero::bench::sample_body("p6", 3, workers),
        &JobOptions::default(),
    )
    .await?;
    let start = Instant::now();
    let outcome = engine.drive(job, CancellationToken::new()).await?;
    anyhow::ensure!(
        matches!(outcome, DriveOutcome::Stopped(cz_state::JobStatus::Succeeded)),
        "P6: the {workers}-worker Sovereign ended {outcome:?}"
    );
    Ok((start.elapsed(), world, store, job))
}

/// P6 (see the module doc): one chain, then one Sovereign per size.
async fn p6(dir: &Path, sizes: &[u32], latency: f64) -> Result<()> {
    reset_peak_rss();
    let (chain, _, _, _) = one_sovereign(&dir.join("p6-one"), 1, latency).await?;
    // hetzner-k3s's published figures (3 nodes 2–3 min, 200 in just under
    // 4 min, 500 in under 11 min), scaled to the same factor.
    let anchor = |s: f64| s * latency;
    println!(
        "P6 anchor: one node's chain (3 control planes + 1 worker) {:.1} s at latency factor {latency}; hetzner-k3s at the same factor: 3 nodes {:.0}-{:.0} s, 200 nodes < {:.0} s, 500 nodes < {:.0} s",
        chain.as_secs_f64(),
        anchor(120.0),
        anchor(180.0),
        anchor(240.0),
        anchor(660.0),
    );
    for &workers in sizes {
        reset_peak_rss();
        let (wall, world, store, job) =
            one_sovereign(&dir.join(format!("p6-{workers}")), workers, latency).await?;
        let nodes = workers + 3;
        let steps = store.journal(job).await?.len();
        let events = store.events_written();
        // The simulated project's bucket, in simulated seconds.
        let budget = cz_adapters::cloud::BudgetConfig {
            capacity: world.config().hcloud_rate_limit,
            refill_per_sec: 1.0,
            ..Default::default()
        };
        let requests = world.hcloud_requests();
        let (path, forced) = catalyst_zero::bench::critical_path(chain, requests, &budget, latency);
        println!(
            "P6 one {nodes}-node Sovereign (sim, latency factor {latency}): wall {:.1} s; critical path {:.1} s (the chain {:.1} s + {:.1} s the budget forces: {requests} hcloud requests against a bucket of {} refilled 1/simulated s); wall/critical-path = {:.2} (aim <= 1.1); wall/chain = {:.2}; time requests waited for tokens {:.1} s (summed over waiters); {steps} step events, {events} job events; peak RSS {:.0} MiB",
            wall.as_secs_f64(),
            path.as_secs_f64(),
            chain.as_secs_f64(),
            forced.as_secs_f64(),
            budget.capacity,
            wall.as_secs_f64() / path.as_secs_f64(),
            wall.as_secs_f64() / chain.as_secs_f64(),
            world.budget_wait().as_secs_f64(),
            peak_rss_mib(),
        );
    }
    Ok(())
}

#[tokio::main]
async fn main() -> Result<()> {
    let args = Args::parse();
    if args.only.is_empty() {
        // Each figure in its own process: memory one figure used (and the
        // allocator kept) must not count as the next one's peak RSS.
        let exe = std::env::current_exe().context("own path")?;
        for p in ["p1", "p2", "p3", "p4", "p5", "p6", "p7", "p8", "p4-pg", "p5-pg", "h1"] {
            if p.ends_with("-pg") && args.database_url.is_none() {
                println!(
                    "{}: not measured (no --database-url / CZ_BENCH_DATABASE_URL)",
                    p.to_uppercase()
                );
                continue;
            }
            let mut cmd = std::process::Command::new(&exe);
            cmd.args(["--only", p, "--latency", &args.latency.to_string()]);
            cmd.arg("--figures").arg(&args.figures);
            if let Some(u) = &args.database_url {
                cmd.arg("--database-url").arg(u);
            }
            if args.quick {
                cmd.arg("--quick");
            }
            let status = cmd.status().with_context(|| format!("run {p}"))?;
            anyhow::ensure!(status.success(), "{p} failed: {status}");
        }
        return Ok(());
    }
    let tmp = tempfile::tempdir().context("temp dir")?;
    let dir = tmp.path();
    if wants(&args, "p1") {
        p1(dir, if args.quick { 200 } else { 2000 }).await?;
    }
    if wants(&args, "p2") {
        p2(dir, if args.quick { 10_000 } else { 100_000 }).await?;
    }
    if wants(&args, "p3") {
        catalyst_zero::bench::p3(dir, if args.quick { 100 } else { 1000 }).await?;
    }
    if wants(&args, "p4") {
        p4(dir, if args.quick { 20 } else { 200 }, args.latency, None).await?;
    }
    if wants(&args, "p5") {
        catalyst_zero::bench::p5(dir, if args.quick { 100 } else { 1000 }, None).await?;
    }
    if wants(&args, "p6") {
        // 50 and 500 nodes (3 control planes each); quick: 10.
        let sizes: &[u32] = if args.quick { &[7] } else { &[47, 497] };
        p6(dir, sizes, args.latency).await?;
    }
    if wants(&args, "p7") {
        let sizes: &[usize] = if args.quick { &[2_000] } else { &[10_000, 100_000] };
        catalyst_zero::bench::p7(dir, sizes).await?;
    }
    if wants(&args, "p8") {
        let (sizes, subscribers): (&[usize], usize) = if args.quick {
            (&[50_000, 100_000], 2)
        } else {
            (&[100_000, 250_000, 500_000, 750_000, 1_000_000], 4)
        };
        catalyst_zero::bench::p8(dir, sizes, subscribers).await?;
    }
    let pg = args.database_url.as_deref();
    if wants(&args, "p4-pg") && pg.is_some() {
        p4(dir, if args.quick { 20 } else { 200 }, args.latency, pg).await?;
    }
    if wants(&args, "p5-pg") && pg.is_some() {
        catalyst_zero::bench::p5(dir, if args.quick { 100 } else { 1000 }, pg).await?;
    }
    if wants(&args, "h1") {
        h1(&args.figures);
    }
    Ok(())
}

/// H1, from the figure the `hetzner_e2e` test left (see the module doc).
fn h1(figures: &Path) {
    let file = figures.join("hetzner-e2e.json");
    let Some(f) = std::fs::read(&file).ok().and_then(|b| serde_json::from_slice::<Value>(&b).ok())
    else {
        println!(
            "H1 hetzner end to end: not measured on this machine ({} is missing): run \
             `cargo nextest run -p cz-e2e hetzner_e2e` (needs tofu, sshd, pdns_server, bao)",
            file.display()
        );
        return;
    };
    println!(
        "H1 hetzner end to end (real tofu, sshd, PowerDNS, OpenBao; fakes at zero latency): provision {:.1} s, destroy {:.1} s, {} events, {} hcloud requests (measured by the hetzner_e2e test at {})",
        f["provision_s"].as_f64().unwrap_or(f64::NAN),
        f["destroy_s"].as_f64().unwrap_or(f64::NAN),
        f["events"],
        f["hcloud_requests"],
        f["at"].as_str().unwrap_or("?"),
    );
}
