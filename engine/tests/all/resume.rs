//! Resume after a SIGKILL mid-step. The test runs its own binary as a child
//! (`resume::child_driver`, told so by environment variables) that drives
//! a job of slow steps over a world kept in a file; the parent kills it
//! while a step holds on after making its thing, then drives the job to
//! the end itself from the same store and world. And the in-process
//! analogue: a drive whose cancellation token fires mid-step.

use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use cz_engine::testing::Rig;
use cz_engine::{DriveOutcome, VerbError, Verbs};
use cz_state::{JobId, JobStatus, NodeState};
use tokio_util::sync::CancellationToken;

use crate::toy::{self, CONFIG, STEPS, VM, World};

/// The directory of the child's store and world; unset outside a child.
const CHILD_DIR: &str = "CZ_ENGINE_TEST_CHILD_DIR";
/// The job the child drives.
const CHILD_JOB: &str = "CZ_ENGINE_TEST_CHILD_JOB";
/// The world's file, in that directory.
const WORLD: &str = "world.json";
/// How long each of the child's steps holds on after making its thing.
const HOLD: Duration = Duration::from_millis(300);
/// How long the parent waits for the child to reach the step to kill in.
const BOUND: Duration = Duration::from_secs(60);

/// A child process, killed (SIGKILL) and reaped when dropped, so that a
/// failing parent leaves no driver behind.
struct Child(std::process::Child);

impl Drop for Child {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// The child half of `sigkill_mid_step_resumes_from_the_journal` (returns at once elsewhere).
#[tokio::test]
async fn child_driver() {
    let (Ok(dir), Ok(job)) = (std::env::var(CHILD_DIR), std::env::var(CHILD_JOB)) else {
        return;
    };
    let (dir, job) = (PathBuf::from(dir), job.parse::<JobId>().unwrap());
    let world = |root: &std::path::Path| World::in_file(&root.join(WORLD), HOLD);
    let rig = Rig::in_dir(&dir, Arc::new(toy::registry()), world).await;
    let outcome = rig.engine.drive(job, CancellationToken::new()).await;
    std::fs::write(dir.join("done"), format!("{outcome:?}")).unwrap();
}

/// A driver killed with SIGKILL mid-step: the next drive re-runs that step from the journal, and every effect happens once.
#[tokio::test]
async fn sigkill_mid_step_resumes_from_the_journal() {
    let world = |root: &std::path::Path| World::in_file(&root.join(WORLD), Duration::ZERO);
    let rig = Rig::new(Arc::new(toy::registry()), world).await;
    let job = toy::submit_toy(&rig, toy::fast()).await;
    let log = rig.root.join("child.log");
    let child = Command::new(std::env::current_exe().unwrap())
        .args(["resume::child_driver", "--exact", "--nocapture", "--test-threads", "1"])
        .env(CHILD_DIR, &rig.root)
        .env(CHILD_JOB, job.to_string())
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&log).unwrap())
        .spawn()
        .unwrap();
    let mut child = Child(child);

    // `config` has made its thing and holds on: the child is inside the step.
    let deadline = Instant::now() + BOUND;
    while !rig.env().things().contains_key("config") {
        if let Some(status) = child.0.try_wait().unwrap() {
            let log = std::fs::read_to_string(&log).unwrap_or_default();
            panic!("the child exited ({status}) before the kill:\n{log}");
        }
        assert!(Instant::now() < deadline, "the child did not reach {CONFIG} in {BOUND:?}");
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    child.0.kill().unwrap(); // SIGKILL
    child.0.wait().unwrap();
    assert!(!rig.root.join("done").exists(), "the child was killed before finishing");
    let killed = toy::state(&rig, job, CONFIG).await;
    assert!(matches!(killed, NodeState::Running { attempt: 1, .. }), "mid-step: {killed:?}");

    assert_eq!(rig.drive(job).await, JobStatus::Succeeded);
    let world = rig.env().snapshot();
    assert_eq!(world.things, toy::full_world());
    assert!(world.created.values().all(|n| *n == 1), "every effect once: {:?}", world.created);
    assert_eq!(rig.env().count("create:config"), 2, "the killed step ran again");
    for n in STEPS {
        let expected = if n == CONFIG { 2 } else { 1 };
        assert_eq!(toy::starts(&rig, job, n).await, expected, "`started` events of {n}");
    }
}

/// A drive interrupted mid-step (its token cancelled) leaves the step `running`; the next drive re-runs it.
#[tokio::test]
async fn interrupted_drive_resumes_the_step() {
    let rig = Rig::new(Arc::new(toy::registry()), |_| World::holding(HOLD)).await;
    let job = toy::submit_toy(&rig, toy::fast()).await;
    let (engine, cancel) = (rig.engine.clone(), CancellationToken::new());
    let driver = tokio::spawn({
        let cancel = cancel.clone();
        async move { engine.drive(job, cancel).await }
    });
    let deadline = Instant::now() + BOUND;
    while !rig.env().things().contains_key("vm") {
        assert!(Instant::now() < deadline, "the drive did not reach {VM} in {BOUND:?}");
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    cancel.cancel();
    let outcome = driver.await.unwrap().unwrap();
    assert_eq!(outcome, DriveOutcome::Interrupted);
    assert!(matches!(toy::state(&rig, job, VM).await, NodeState::Running { attempt: 1, .. }));
    // The job is still running: its running step cannot be skipped.
    let skip = Verbs { store: &rig.store }.skip(job, VM, "why", "alice").await;
    assert!(matches!(skip, Err(VerbError::Refused(m)) if m.contains("is running")));

    assert_eq!(rig.drive(job).await, JobStatus::Succeeded);
    assert_eq!(rig.env().things(), toy::full_world());
    assert_eq!((toy::starts(&rig, job, VM).await, rig.env().count("create:vm")), (2, 2));
    assert_eq!(rig.env().snapshot().created["vm"], 1);
}
