//! Unwinding: undo errors are retried like do errors, and an undo that
//! fails for good pauses the unwind until an operator retries or skips it.

use cz_engine::{RetryTarget, Verbs};
use cz_state::{JobMode, JobStatus, NodeState};

use crate::toy::{self, DISK, SERVICE};

/// A failed undo pauses the unwind (`undo_failed`); `retry` of it resumes the unwind to the end.
#[tokio::test]
async fn failed_undo_pauses_the_unwind_and_retry_resumes_it() {
    let rig = toy::rig().await;
    rig.env().fail_do(SERVICE, toy::invalid(), 1);
    rig.env().fail_undo(DISK, toy::precondition(), 1);
    let job = toy::submit_toy(&rig, toy::fast()).await;
    assert_eq!(rig.drive(job).await, JobStatus::Paused);
    let j = rig.job(job).await;
    assert_eq!(j.mode, JobMode::Unwinding);
    let pause = j.pause.unwrap();
    assert_eq!((&pause["step"], &pause["unwinding"]), (&DISK.into(), &true.into()));
    assert!(matches!(toy::state(&rig, job, DISK).await, NodeState::UndoFailed { .. }));
    let left: Vec<_> = rig.env().things().into_keys().collect();
    assert_eq!(left, ["disk", "net"], "the unwind stopped at the failed undo");

    let retried = Verbs { store: &rig.store }.retry(job, RetryTarget::Failed, "alice").await;
    assert_eq!(retried.unwrap(), [DISK]);
    assert_eq!(rig.drive(job).await, JobStatus::Failed);
    assert!(rig.env().things().is_empty());
    assert_eq!(rig.env().count("delete:disk"), 2);
    assert_eq!(rig.env().count("delete:net"), 1);
}

/// A transient undo error is retried by the engine; the unwind does not stop.
#[tokio::test]
async fn transient_undo_error_is_retried() {
    let rig = toy::rig().await;
    rig.env().fail_do(SERVICE, toy::invalid(), 1);
    rig.env().fail_undo(DISK, toy::unavailable(), 2);
    let job = toy::submit_toy(&rig, toy::fast()).await;
    assert_eq!(rig.drive(job).await, JobStatus::Failed);
    assert_eq!(rig.env().count("delete:disk"), 3);
    assert!(rig.env().things().is_empty());
}

/// A transient undo error outlasting `max_attempts` pauses the unwind too.
#[tokio::test]
async fn exhausted_undo_retries_pause_the_unwind() {
    let rig = toy::rig().await;
    rig.env().fail_do(SERVICE, toy::invalid(), 1);
    rig.env().fail_undo(DISK, toy::unavailable(), 100);
    let job = toy::submit_toy(&rig, toy::fast()).await;
    assert_eq!(rig.drive(job).await, JobStatus::Paused);
    assert_eq!(rig.env().count("delete:disk"), 4, "max_attempts undo runs");
    assert!(matches!(toy::state(&rig, job, DISK).await, NodeState::UndoFailed { .. }));
}

/// `resume` of a paused unwind runs the failed undo again and finishes the unwind.
#[tokio::test]
async fn resume_reruns_the_failed_undo() {
    let rig = toy::rig().await;
    rig.env().fail_do(SERVICE, toy::invalid(), 1);
    rig.env().fail_undo(DISK, toy::precondition(), 1);
    let job = toy::submit_toy(&rig, toy::fast()).await;
    assert_eq!(rig.drive(job).await, JobStatus::Paused);
    Verbs { store: &rig.store }.resume(job, "alice").await.unwrap();
    assert_eq!(rig.drive(job).await, JobStatus::Failed);
    assert!(rig.env().things().is_empty());
    assert_eq!(rig.env().count("delete:disk"), 2);
}
