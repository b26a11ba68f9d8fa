//! Kill -9 of the process driving a job, inside every step: the parent test
//! runs its own test binary as a child (`child_test`, the child test's full
//! path in the binary such as `kit_fake::child_driver`, with `--exact`),
//! the child drives the job from the store in `dir` and logs each step it
//! sees running; the parent kills it with SIGKILL as soon as a step it has
//! not killed inside yet is running, then starts a fresh child, until one
//! finishes. The children's output goes to `dir/children.log`.

use std::collections::BTreeSet;
use std::path::Path;
use std::time::Duration;

use cz_engine::{Engine, StepEnv};
use cz_state::{JobId, Store};
use tokio_util::sync::CancellationToken;

/// The child's half: drives `job` to its end, logging every step seen
/// running to `dir/progress.log` (synced), then writes `dir/done` with the
/// outcome.
pub async fn drive_logging_steps<E: StepEnv>(
    engine: &Engine<E>,
    store: &Store,
    job: JobId,
    dir: &Path,
) {
    let progress = dir.join("progress.log");
    let watcher = {
        let store = store.clone();
        tokio::spawn(async move {
            use std::io::Write;
            let mut seen = BTreeSet::new();
            loop {
                for (n, st) in store.node_states(job).await.unwrap_or_default() {
                    if matches!(st, cz_state::NodeState::Running { .. }) && seen.insert(n.clone()) {
                        let mut f = std::fs::OpenOptions::new()
                            .create(true)
                            .append(true)
                            .open(&progress)
                            .unwrap();
                        writeln!(f, "{n}").unwrap();
                        f.sync_all().unwrap();
                    }
                }
                tokio::time::sleep(Duration::from_millis(2)).await;
            }
        })
    };
    let outcome = engine.drive(job, CancellationToken::new()).await.unwrap();
    watcher.abort();
    std::fs::write(dir.join("done"), format!("{outcome:?}")).unwrap();
}

/// The parent's half: starts `child_test` of this binary with `env` until
/// one run finishes, killing each inside a step not killed inside before.
/// Returns the steps killed inside, the number of processes started and
/// the finished child's outcome.
pub async fn kill_inside_every_step(
    child_test: &str,
    env: &[(&str, String)],
    dir: &Path,
) -> (BTreeSet<String>, usize, String) {
    let mut killed = BTreeSet::new();
    let (starts, outcome) = kill_inside_steps(child_test, env, dir, |_| true, &mut killed).await;
    (killed, starts, outcome)
}

/// The same for the steps `which` selects, adding to `killed` (the steps
/// killed inside already, which are not killed again): a test that
/// resumes a paused job calls it again with the same set. Returns the
/// processes started and the finished child's outcome.
pub async fn kill_inside_steps(
    child_test: &str,
    env: &[(&str, String)],
    dir: &Path,
    which: impl Fn(&str) -> bool,
    killed: &mut BTreeSet<String>,
) -> (usize, String) {
    let _ = std::fs::remove_file(dir.join("done"));
    let _ = std::fs::remove_file(dir.join("progress.log"));
    let mut starts = 0;
    'outer: loop {
        starts += 1;
        assert!(starts < 200, "no progress after {starts} starts");
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(dir.join("children.log"))
            .expect("the children's log opens");
        let mut child = std::process::Command::new(std::env::current_exe().unwrap())
            .args([child_test, "--exact", "--nocapture", "--test-threads", "1"])
            .envs(env.iter().map(|(k, v)| (*k, v.as_str())))
            .stdout(log.try_clone().expect("a second handle on the log"))
            .stderr(log)
            .spawn()
            .unwrap();
        loop {
            if dir.join("done").exists() {
                let _ = child.wait();
                break 'outer;
            }
            let progress = std::fs::read_to_string(dir.join("progress.log")).unwrap_or_default();
            if let Some(step) = progress.lines().find(|l| !killed.contains(*l) && which(l)) {
                child.kill().unwrap(); // SIGKILL
                child.wait().unwrap();
                killed.insert(step.to_owned());
                break;
            }
            if let Some(status) = child.try_wait().unwrap() {
                let log = std::fs::read_to_string(dir.join("children.log")).unwrap_or_default();
                let tail: String = log.lines().rev().take(30).collect::<Vec<_>>().join("\n");
                panic!(
                    "the driver exited {status} without finishing; last lines, newest first:\n{tail}"
                );
            }
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
    }
    let outcome = std::fs::read_to_string(dir.join("done")).unwrap();
    (starts, outcome)
}
