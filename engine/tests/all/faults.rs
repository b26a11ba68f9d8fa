//! Each fault of a `FaultPlan` does what it says.

use std::time::Instant;

use cz_engine::{ErrorClass, FaultPlan, JobOptions, RetryTarget, Verbs};
use cz_state::{JobMode, JobStatus, NodeState};

use crate::toy::{self, DISK, NET, SERVICE, STEPS, VM};

fn with_faults(faults: FaultPlan) -> JobOptions {
    JobOptions { faults, ..toy::fast() }
}

fn fail_at(node: &str, class: ErrorClass) -> FaultPlan {
    FaultPlan { fail: [(node.to_owned(), class)].into(), ..Default::default() }
}

/// `fail` with each class: terminal fails and unwinds, needs-operator pauses, transient exhausts its retries; the step never runs.
#[tokio::test]
async fn fail_injects_each_class() {
    let rig = toy::rig().await;
    let job = toy::submit_toy(&rig, with_faults(fail_at(VM, ErrorClass::Terminal))).await;
    assert_eq!(rig.drive(job).await, JobStatus::Failed);
    assert_eq!(rig.job(job).await.error.unwrap()["error"]["kind"], "injected");
    assert!(rig.env().things().is_empty(), "unwound");

    let rig = toy::rig().await;
    let job = toy::submit_toy(&rig, with_faults(fail_at(VM, ErrorClass::NeedsOperator))).await;
    assert_eq!(rig.drive(job).await, JobStatus::Paused);
    assert_eq!(toy::state(&rig, job, VM).await.attempts(), 1);

    let rig = toy::rig().await;
    let job = toy::submit_toy(&rig, with_faults(fail_at(VM, ErrorClass::Transient))).await;
    assert_eq!(rig.drive(job).await, JobStatus::Paused);
    let pause = rig.job(job).await.pause.unwrap();
    assert_eq!(pause["error"]["exhausted_attempts"], 4);
    assert_eq!(rig.env().count("create:vm"), 0, "an injected failure replaces the step");
}

/// `flaky` fails a step's do N times with a transient error, then lets it run.
#[tokio::test]
async fn flaky_fails_n_times_then_passes() {
    let rig = toy::rig().await;
    let faults = FaultPlan { flaky: [(DISK.to_owned(), 2)].into(), ..Default::default() };
    let job = toy::submit_toy(&rig, with_faults(faults)).await;
    assert_eq!(rig.drive(job).await, JobStatus::Succeeded);
    assert_eq!(toy::state(&rig, job, DISK).await.attempts(), 3);
    assert_eq!(rig.env().count("create:disk"), 1);
}

/// `until_retry` pauses the job at the step until an operator retries it (or resumes, which retries the failed steps); then the step runs once.
#[tokio::test]
async fn until_retry_pauses_until_an_operator_retries() {
    let rig = toy::rig().await;
    let faults = FaultPlan {
        until_retry: [(DISK.to_owned(), ErrorClass::NeedsOperator)].into(),
        ..Default::default()
    };
    let job = toy::submit_toy(&rig, with_faults(faults)).await;
    assert_eq!(rig.drive(job).await, JobStatus::Paused);
    assert_eq!(rig.env().count("create:disk"), 0);
    Verbs { store: &rig.store }.retry(job, RetryTarget::Failed, "alice").await.unwrap();
    assert_eq!(rig.drive(job).await, JobStatus::Succeeded);
    assert_eq!(rig.env().count("create:disk"), 1);
}

/// `flaky` counts every failure of the step, also across an operator's retry: N failures, then it passes.
#[tokio::test]
async fn flaky_counts_failures_across_a_retry() {
    let rig = toy::rig().await;
    let faults = FaultPlan { flaky: [(DISK.to_owned(), 3)].into(), ..Default::default() };
    let options = JobOptions { retry: toy::tiny_retry(2), ..with_faults(faults) };
    let job = toy::submit_toy(&rig, options).await;
    assert_eq!(rig.drive(job).await, JobStatus::Paused, "2 of 3 failures");
    Verbs { store: &rig.store }.retry(job, RetryTarget::Failed, "alice").await.unwrap();
    assert_eq!(rig.drive(job).await, JobStatus::Succeeded, "the 3rd failure, then a pass");
}

/// `repeat` runs a step's do twice in one attempt; an idempotent step makes its effect once.
#[tokio::test]
async fn repeat_runs_do_twice() {
    let rig = toy::rig().await;
    let faults = FaultPlan { repeat: [VM.to_owned()].into(), ..Default::default() };
    let job = toy::submit_toy(&rig, with_faults(faults)).await;
    assert_eq!(rig.drive(job).await, JobStatus::Succeeded);
    assert_eq!((rig.env().count("create:vm"), rig.env().count("create:net")), (2, 1));
    assert_eq!(toy::state(&rig, job, VM).await.attempts(), 1);
    assert_eq!(rig.env().snapshot().created["vm"], 1);
}

/// `repeat_undo` runs a step's undo twice.
#[tokio::test]
async fn repeat_undo_runs_undo_twice() {
    let mut faults = fail_at(SERVICE, ErrorClass::Terminal);
    faults.repeat_undo.insert(DISK.to_owned());
    let rig = toy::rig().await;
    let job = toy::submit_toy(&rig, with_faults(faults)).await;
    assert_eq!(rig.drive(job).await, JobStatus::Failed);
    assert_eq!((rig.env().count("delete:disk"), rig.env().count("delete:ip")), (2, 1));
    assert!(rig.env().things().is_empty());
}

/// `fail_undo` fails a step's undo without running it: the unwind pauses; a skip gets past it.
#[tokio::test]
async fn fail_undo_pauses_the_unwind() {
    let mut faults = fail_at(SERVICE, ErrorClass::Terminal);
    faults.fail_undo.insert(NET.to_owned());
    let rig = toy::rig().await;
    let job = toy::submit_toy(&rig, with_faults(faults)).await;
    assert_eq!(rig.drive(job).await, JobStatus::Paused);
    assert_eq!(rig.job(job).await.mode, JobMode::Unwinding);
    assert!(matches!(toy::state(&rig, job, NET).await, NodeState::UndoFailed { .. }));
    assert_eq!(rig.env().count("delete:net"), 0);
    let verbs = Verbs { store: &rig.store };
    verbs.skip(job, NET, "deleted by hand", "alice").await.unwrap();
    assert_eq!(rig.drive(job).await, JobStatus::Failed);
    assert_eq!(rig.env().things().into_keys().collect::<Vec<_>>(), ["net"], "skipped, left");
}

/// `slow_ms` waits after every journal write (two per step on the critical path).
#[tokio::test]
async fn slow_ms_waits_after_every_journal_write() {
    let rig = toy::rig().await;
    let job =
        toy::submit_toy(&rig, with_faults(FaultPlan { slow_ms: 25, ..Default::default() })).await;
    let started = Instant::now();
    assert_eq!(rig.drive(job).await, JobStatus::Succeeded);
    // net, disk|ip, vm, config, service: 5 steps deep, started + succeeded each.
    let floor = std::time::Duration::from_millis(5 * 2 * 25);
    assert!(started.elapsed() >= floor, "{:?} < {floor:?}", started.elapsed());
    for n in STEPS {
        assert_eq!(toy::starts(&rig, job, n).await, 1, "{n}");
    }
}
