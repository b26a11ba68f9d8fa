//! The real tofu runner against the real CLI, on offline modules that use
//! only the built-in `terraform_data` (no provider download).
//!
//! Binary: `CZ_TOFU_BIN`, else `tofu` on `PATH`, else
//! `/usr/local/bin/terraform`. With none of them the tests FAIL loudly,
//! unless `CZ_ALLOW_NO_TOFU=1`, where they print `SKIPPED` and return.
//! Workspaces live in a tempdir here; the product uses the data dir.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use cz_adapters::tofu::TofuCli;
use cz_adapters::tofu::cli::{LOCK_FILE, PID_FILE};
use cz_adapters::{TofuApi, TofuEvent, Workspace};
use cz_engine::{Cause, ErrorClass, StepError};
use cz_state::SecretString;

const TOKEN: &str = "cz-test-token-7f3a9c1e-DO-NOT-PERSIST";

fn find_binary() -> Option<PathBuf> {
    if let Some(p) = std::env::var_os("CZ_TOFU_BIN") {
        assert!(Path::new(&p).exists(), "CZ_TOFU_BIN={} does not exist", p.to_string_lossy());
    }
    cz_adapters::tofu::cli::find_cli()
}

/// The binary, or `None` after a loud skip (only with `CZ_ALLOW_NO_TOFU=1`).
fn binary() -> Option<PathBuf> {
    match find_binary() {
        Some(b) => Some(b),
        None if std::env::var("CZ_ALLOW_NO_TOFU").as_deref() == Ok("1") => {
            eprintln!(
                "SKIPPED: no tofu/terraform binary (CZ_TOFU_BIN unset, no `tofu` on PATH, no /usr/local/bin/terraform)"
            );
            None
        }
        None => panic!(
            "NO TOFU/TERRAFORM BINARY: set CZ_TOFU_BIN, put `tofu` on PATH or install /usr/local/bin/terraform; \
             set CZ_ALLOW_NO_TOFU=1 to skip these real-CLI tests explicitly"
        ),
    }
}

struct Fixture {
    _dir: tempfile::TempDir,
    ws: Workspace,
    cli: TofuCli,
}

fn fixture(bin: &Path, module: &str, timeout: Duration) -> Fixture {
    let dir = tempfile::tempdir().unwrap();
    let ws = Workspace { dir: dir.path().join("ws") };
    std::fs::create_dir_all(&ws.dir).unwrap();
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/modules").join(module);
    for e in std::fs::read_dir(&src).unwrap() {
        let e = e.unwrap();
        std::fs::copy(e.path(), ws.dir.join(e.file_name())).unwrap();
    }
    let cli = TofuCli::new(bin, dir.path().join("plugin-cache"), timeout);
    Fixture { _dir: dir, ws, cli }
}

fn token() -> SecretString {
    SecretString::new(TOKEN)
}

fn events()
-> (tokio::sync::mpsc::UnboundedSender<TofuEvent>, tokio::sync::mpsc::UnboundedReceiver<TofuEvent>)
{
    tokio::sync::mpsc::unbounded_channel()
}

fn drain(rx: &mut tokio::sync::mpsc::UnboundedReceiver<TofuEvent>) -> Vec<TofuEvent> {
    let mut v = Vec::new();
    while let Ok(e) = rx.try_recv() {
        v.push(e);
    }
    v
}

/// Every file under `dir` whose bytes contain `needle`.
fn files_containing(dir: &Path, needle: &[u8]) -> Vec<PathBuf> {
    let mut hits = Vec::new();
    let mut stack = vec![dir.to_owned()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).unwrap().flatten() {
            let p = e.path();
            let ft = e.file_type().unwrap();
            if ft.is_dir() {
                stack.push(p);
            } else if ft.is_file() {
                let b = std::fs::read(&p).unwrap_or_default();
                if b.windows(needle.len()).any(|w| w == needle) {
                    hits.push(p);
                }
            }
        }
    }
    hits
}

/// Pids of live (non-zombie) processes whose cwd is `dir`.
fn processes_in(dir: &Path) -> Vec<u32> {
    let dir = std::fs::canonicalize(dir).unwrap();
    let mut pids = Vec::new();
    for e in std::fs::read_dir("/proc").unwrap().flatten() {
        let Some(pid) = e.file_name().to_str().and_then(|s| s.parse::<u32>().ok()) else {
            continue;
        };
        let Ok(cwd) = std::fs::read_link(format!("/proc/{pid}/cwd")) else { continue };
        if cwd != dir {
            continue;
        }
        let zombie = std::fs::read_to_string(format!("/proc/{pid}/stat")).is_ok_and(|s| {
            s.rsplit_once(')').is_some_and(|(_, r)| r.trim_start().starts_with('Z'))
        });
        if !zombie {
            pids.push(pid);
        }
    }
    pids
}

fn addresses(state: &[cz_adapters::StateResource]) -> Vec<String> {
    let mut a: Vec<String> = state.iter().map(|r| r.address.clone()).collect();
    a.sort();
    a
}

#[tokio::test]
async fn init_plan_apply_output_state_and_no_op_reapply() {
    let Some(bin) = binary() else { return };
    let f = fixture(&bin, "ok", Duration::from_secs(120));
    f.cli.init(&f.ws).await.unwrap();

    let plan = f.cli.plan(&f.ws, &token()).await.unwrap();
    assert_eq!((plan.add, plan.change, plan.destroy), (2, 0, 0));
    assert!(!f.ws.dir.join("tfplan").exists(), "the plan file (which embeds the token) is removed");

    let (tx, mut rx) = events();
    f.cli.apply(&f.ws, &token(), &[], 10, tx).await.unwrap();
    let ev = drain(&mut rx);
    let starts: Vec<_> = ev.iter().filter(|e| e.kind == "apply_start").collect();
    let completes: Vec<_> = ev.iter().filter(|e| e.kind == "apply_complete").collect();
    assert_eq!(starts.len(), 2, "{ev:#?}");
    assert_eq!(completes.len(), 2, "{ev:#?}");
    assert!(starts.iter().all(|e| e.action.as_deref() == Some("create")));
    assert!(completes.iter().all(|e| e.elapsed_s.is_some()));
    let mut done: Vec<_> = completes.iter().filter_map(|e| e.address.clone()).collect();
    done.sort();
    assert_eq!(done, ["terraform_data.network", "terraform_data.server"]);
    let summary = ev.iter().rfind(|e| e.kind == "change_summary").expect("a change_summary event");
    assert!(summary.message.contains("2 added"), "{}", summary.message);
    assert!(!f.ws.dir.join(LOCK_FILE).exists());
    assert!(!f.ws.dir.join(PID_FILE).exists(), "the pid file is removed after the run");

    let out = f.cli.output(&f.ws).await.unwrap();
    assert_eq!(out["server_name"], "cz-server-0");
    let net_id = out["network_id"].as_str().unwrap().to_owned();
    assert_eq!(net_id.len(), 36, "terraform_data ids are UUIDs: {net_id}");

    let state = f.cli.state(&f.ws).await.unwrap();
    assert_eq!(addresses(&state), ["terraform_data.network", "terraform_data.server"]);
    let net = state.iter().find(|r| r.address == "terraform_data.network").unwrap();
    assert_eq!(net.kind, "terraform_data");
    assert_eq!(net.id, 0, "UUID ids are not numeric");
    assert_eq!(net.attrs["id"], net_id.as_str());
    assert_eq!(net.attrs["input"]["token_length"], TOKEN.len() as u64);

    let plan = f.cli.plan(&f.ws, &token()).await.unwrap();
    assert_eq!((plan.add, plan.change, plan.destroy), (0, 0, 0), "re-plan is a no-op");
    let (tx, mut rx) = events();
    f.cli.apply(&f.ws, &token(), &[], 10, tx).await.unwrap();
    let ev = drain(&mut rx);
    assert!(ev.iter().all(|e| e.kind != "apply_start"), "re-apply creates nothing: {ev:#?}");
    assert_eq!(f.cli.state(&f.ws).await.unwrap().len(), 2);

    let hits = files_containing(&f.ws.dir, TOKEN.as_bytes());
    assert!(hits.is_empty(), "the token was left on disk in {hits:?}");
    let hits = files_containing(f._dir.path(), TOKEN.as_bytes());
    assert!(hits.is_empty(), "the token was left on disk in {hits:?}");

    // Destroy streams events and empties the state.
    let (tx, mut rx) = events();
    f.cli.destroy(&f.ws, &token(), tx).await.unwrap();
    let ev = drain(&mut rx);
    assert_eq!(ev.iter().filter(|e| e.kind == "apply_complete").count(), 2, "{ev:#?}");
    assert!(f.cli.state(&f.ws).await.unwrap().is_empty());
}

#[tokio::test]
async fn failing_apply_reports_the_diagnostic() {
    let Some(bin) = binary() else { return };
    let f = fixture(&bin, "fail", Duration::from_secs(120));
    f.cli.init(&f.ws).await.unwrap();
    let (tx, mut rx) = events();
    let e = f.cli.apply(&f.ws, &token(), &[], 10, tx).await.unwrap_err();
    match &e {
        StepError::Adapter { cause: Cause::CommandFailed, message, .. } => {
            assert!(message.contains("the doomed resource refuses to exist"), "{message}");
        }
        other => panic!("expected CommandFailed, got {other:?}"),
    }
    let ev = drain(&mut rx);
    assert!(
        ev.iter().any(|e| e.kind == "diagnostic" && e.message.contains("refuses to exist")),
        "{ev:#?}"
    );
    assert!(!f.ws.dir.join(LOCK_FILE).exists());
}

#[tokio::test]
async fn missing_binary_is_not_found() {
    let dir = tempfile::tempdir().unwrap();
    let ws = Workspace { dir: dir.path().to_owned() };
    let cli = TofuCli::new("/nonexistent/tofu", dir.path().join("cache"), Duration::from_secs(5));
    let e = cli.init(&ws).await.unwrap_err();
    assert!(matches!(e, StepError::Adapter { cause: Cause::NotFound, .. }), "{e}");
}

#[tokio::test]
async fn stale_lock_is_removed_and_a_live_lock_is_waited_for() {
    let Some(bin) = binary() else { return };
    let f = fixture(&bin, "ok", Duration::from_secs(120));
    f.cli.init(&f.ws).await.unwrap();
    // A lock left by a daemon killed mid-apply: the tofu pid is dead.
    std::fs::write(
        f.ws.dir.join(LOCK_FILE),
        r#"{"ID":"0b5e6c1a-dead-dead-dead-000000000000","Operation":"OperationTypeApply","Info":"","Who":"catalyst@old-host","Version":"1.11.4","Created":"2026-01-01T00:00:00Z","Path":"terraform.tfstate"}"#,
    )
    .unwrap();
    std::fs::write(f.ws.dir.join(PID_FILE), "99999999\n").unwrap();
    let (tx, mut rx) = events();
    f.cli.apply(&f.ws, &token(), &[], 10, tx).await.unwrap();
    let ev = drain(&mut rx);
    assert!(ev.iter().any(|e| e.kind == "stale_lock_removed"), "{ev:#?}");
    assert_eq!(f.cli.state(&f.ws).await.unwrap().len(), 2);
    assert!(!f.ws.dir.join(LOCK_FILE).exists());

    // A lock whose recorded tofu process is alive: left alone, and retried
    // (`Unavailable`, transient) rather than handed to an operator at once.
    let mut holder = std::process::Command::new("/bin/bash")
        .args(["-c", "exec -a terraform-holder sleep 30"])
        .spawn()
        .unwrap();
    std::fs::write(f.ws.dir.join(LOCK_FILE), r#"{"ID":"live","Who":"x@y"}"#).unwrap();
    std::fs::write(f.ws.dir.join(PID_FILE), format!("{}\n", holder.id())).unwrap();
    std::thread::sleep(Duration::from_millis(200));
    let (tx, _rx) = events();
    let e = f.cli.apply(&f.ws, &token(), &[], 10, tx).await.unwrap_err();
    holder.kill().unwrap();
    holder.wait().unwrap();
    assert!(matches!(e, StepError::Adapter { cause: Cause::Unavailable, .. }), "{e}");
    assert_eq!(e.class(), ErrorClass::Transient);
    assert!(f.ws.dir.join(LOCK_FILE).exists(), "a live holder's lock is left alone");
}

/// A stand-in for a tofu left behind by a killed daemon, named `name`,
/// working in `cwd`: `setsid` in a shell that exits at once, so it is
/// reparented and leads its own process group, as our spawned tofu does.
fn spawn_orphan(cwd: Option<&std::path::Path>, name: &str) -> u32 {
    let cd = cwd.map(|d| format!("cd '{}' && ", d.display())).unwrap_or_default();
    let script =
        format!("{cd}setsid /bin/bash -c 'exec -a {name} sleep 60' >/dev/null 2>&1 & echo $!");
    let out = std::process::Command::new("/bin/sh").args(["-c", &script]).output().unwrap();
    let pid: u32 = String::from_utf8_lossy(&out.stdout).trim().parse().unwrap();
    std::thread::sleep(Duration::from_millis(300));
    pid
}

/// An apply in `f`'s workspace stops the orphan `pid`, says so, and runs.
async fn apply_stops_orphan(f: &Fixture, pid: u32) {
    let (tx, mut rx) = events();
    f.cli.apply(&f.ws, &token(), &[], 10, tx).await.unwrap();
    let ev = drain(&mut rx);
    let stale = ev.iter().find(|e| e.kind == "stale_lock_removed").expect("an event");
    assert!(stale.message.contains(&format!("stopped tofu pid {pid}")), "{}", stale.message);
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    assert!(stat.is_empty() || stat.contains(") Z"), "the orphan still runs: {stat}");
}

/// A daemon killed with SIGKILL leaves its tofu running, reparented. The
/// next run stops that orphan (it is not our child) instead of waiting on
/// its lock forever.
#[tokio::test]
async fn an_orphaned_tofu_of_a_killed_daemon_is_stopped_and_its_lock_cleared() {
    let Some(bin) = binary() else { return };
    let f = fixture(&bin, "ok", Duration::from_secs(120));
    f.cli.init(&f.ws).await.unwrap();
    let pid = spawn_orphan(None, "terraform-orphan");
    assert!(std::path::Path::new(&format!("/proc/{pid}")).exists());
    std::fs::write(f.ws.dir.join(LOCK_FILE), r#"{"ID":"orphan","Who":"x@y"}"#).unwrap();
    std::fs::write(f.ws.dir.join(PID_FILE), format!("{pid}\n")).unwrap();
    apply_stops_orphan(&f, pid).await;
    assert_eq!(f.cli.state(&f.ws).await.unwrap().len(), 2);
}

/// The daemon was killed between spawning tofu and recording its pid: the
/// pid file names an older, dead process. The orphan working in the
/// workspace is still found (by its working directory) and stopped before
/// its lock is touched: two tofus on one state would corrupt it.
#[tokio::test]
async fn an_orphan_the_pid_file_does_not_name_is_found_by_its_directory() {
    let Some(bin) = binary() else { return };
    let f = fixture(&bin, "ok", Duration::from_secs(120));
    f.cli.init(&f.ws).await.unwrap();
    let pid = spawn_orphan(Some(&f.ws.dir), "terraform-unnamed");
    std::fs::write(f.ws.dir.join(LOCK_FILE), r#"{"ID":"unnamed","Who":"x@y"}"#).unwrap();
    std::fs::write(f.ws.dir.join(PID_FILE), "99999999\n").unwrap();
    apply_stops_orphan(&f, pid).await;
}

#[tokio::test]
async fn timeout_kills_the_apply_and_a_rerun_converges() {
    let Some(bin) = binary() else { return };
    let timeout = Duration::from_secs(6);
    let f = fixture(&bin, "slow", timeout);
    f.cli.init(&f.ws).await.unwrap();
    let (tx, mut rx) = events();
    let started = Instant::now();
    let e = f.cli.apply(&f.ws, &token(), &[], 10, tx).await.unwrap_err();
    let took = started.elapsed();
    assert!(took < timeout + Duration::from_secs(5), "took {took:?}");
    match &e {
        StepError::Adapter { cause: Cause::Unavailable, message, .. } => {
            assert!(message.contains("timed out"), "{message}")
        }
        other => panic!("expected a timeout, got {other:?}"),
    }
    let ev = drain(&mut rx);
    assert!(
        ev.iter().any(|e| e.kind == "apply_start"
            && e.address.as_deref() == Some("terraform_data.slow")),
        "the slow resource had started: {ev:#?}"
    );
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(processes_in(&f.ws.dir), Vec::<u32>::new(), "processes survived the timeout");
    assert!(!f.ws.dir.join(PID_FILE).exists());

    // Converge: the same module, now quick.
    let main = f.ws.dir.join("main.tf");
    let src = std::fs::read_to_string(&main).unwrap().replace("sleep 30", "sleep 1");
    std::fs::write(&main, src).unwrap();
    let fast = TofuCli::new(&bin, f._dir.path().join("plugin-cache"), Duration::from_secs(120));
    let (tx, _rx) = events();
    fast.apply(&f.ws, &token(), &[], 10, tx).await.unwrap();
    let state = fast.state(&f.ws).await.unwrap();
    assert_eq!(addresses(&state), ["terraform_data.quick", "terraform_data.slow"], "no duplicates");
    let plan = fast.plan(&f.ws, &token()).await.unwrap();
    assert_eq!((plan.add, plan.change, plan.destroy), (0, 0, 0));
}
