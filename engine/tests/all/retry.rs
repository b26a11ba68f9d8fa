//! What the engine does with each class of step error: retry (transient),
//! pause (needs-operator, or transient past its attempts), fail and unwind
//! or keep (terminal).

use cz_engine::{FailurePolicy, JobOptions};
use cz_state::{JobMode, JobStatus, NodeState, StepEvent};

use crate::toy::{self, CONFIG, DISK, SERVICE, STEPS, VM};

/// A transient error is retried until the step passes; the journal counts every attempt.
#[tokio::test]
async fn transient_error_is_retried_until_it_passes() {
    let rig = toy::rig().await;
    rig.env().fail_do(DISK, toy::unavailable(), 2);
    let job = toy::submit_toy(&rig, toy::fast()).await;
    assert_eq!(rig.drive(job).await, JobStatus::Succeeded);
    assert_eq!(toy::state(&rig, job, DISK).await.attempts(), 3);
    let journal = rig.store.journal(job).await.unwrap();
    let retried = journal
        .iter()
        .filter(|r| r.node == DISK && matches!(r.event, StepEvent::AttemptFailed { .. }))
        .count();
    assert_eq!(retried, 2, "two attempts failed and were retried");
    assert_eq!(rig.env().count("create:disk"), 3);
    assert_eq!(rig.env().things(), toy::full_world());
}

/// A transient error outlasting `max_attempts` pauses the job as needs-operator, with the count.
#[tokio::test]
async fn exhausted_transient_retries_pause_as_needs_operator() {
    let rig = toy::rig().await;
    rig.env().fail_do(DISK, toy::unavailable(), 100);
    let options = JobOptions { retry: toy::tiny_retry(3), ..Default::default() };
    let job = toy::submit_toy(&rig, options).await;
    assert_eq!(rig.drive(job).await, JobStatus::Paused);
    let pause = rig.job(job).await.pause.expect("a paused job says why");
    assert_eq!(pause["step"], DISK);
    assert_eq!(pause["error"]["class"], "needs-operator");
    assert_eq!(pause["error"]["exhausted_attempts"], 3);
    let remediation = pause["error"]["remediation"].as_str().unwrap();
    assert!(remediation.starts_with("Still failing after 3 attempts."), "{remediation}");
    assert!(matches!(toy::state(&rig, job, DISK).await, NodeState::Failed { attempts: 3, .. }));
    assert_eq!(rig.env().count("create:disk"), 3);
    assert_eq!(rig.env().count("create:vm"), 0, "the join waits for the paused branch");
}

/// A needs-operator error pauses at once (no retry), with its remediation and runbook.
#[tokio::test]
async fn needs_operator_error_pauses_at_once() {
    let rig = toy::rig().await;
    rig.env().fail_do(VM, toy::precondition(), 1);
    let job = toy::submit_toy(&rig, toy::fast()).await;
    assert_eq!(rig.drive(job).await, JobStatus::Paused);
    let pause = rig.job(job).await.pause.unwrap();
    assert_eq!(pause["step"], VM);
    assert_eq!(pause["error"]["class"], "needs-operator");
    assert_eq!(pause["error"]["remediation"], "Make the toy ready, then `retry`.");
    assert_eq!(pause["error"]["runbook"], "runbooks/needs-operator-precondition.md");
    assert_eq!(rig.env().count("create:vm"), 1, "not retried by the engine");
    assert_eq!(rig.env().count("create:config"), 0, "the next phase does not start");
}

/// A terminal error under `rollback` fails the job and undoes every step in reverse order.
#[tokio::test]
async fn terminal_error_with_rollback_unwinds_in_reverse() {
    let rig = toy::rig().await;
    rig.env().fail_do(SERVICE, toy::invalid(), 1);
    let job = toy::submit_toy(&rig, toy::fast()).await;
    assert_eq!(rig.drive(job).await, JobStatus::Failed);
    let j = rig.job(job).await;
    assert_eq!(j.mode, JobMode::Unwinding);
    let error = j.error.unwrap();
    assert_eq!(
        (error["step"].as_str(), error["error"]["class"].as_str()),
        (Some(SERVICE), Some("terminal"))
    );
    assert_eq!(rig.env().count("create:service"), 1, "not retried");
    let undone = ["service", "config", "vm", "ip", "disk", "net"].map(|n| format!("delete:{n}"));
    assert_eq!(rig.env().calls_of("delete:"), undone, "reverse order, phases backwards");
    assert!(rig.env().things().is_empty());
    for n in STEPS {
        assert!(matches!(toy::state(&rig, job, n).await, NodeState::Undone { .. }), "{n}");
    }
}

/// A terminal error under `keep` fails the job and leaves what it made.
#[tokio::test]
async fn terminal_error_with_keep_leaves_everything() {
    let rig = toy::rig().await;
    rig.env().fail_do(SERVICE, toy::invalid(), 1);
    let options = JobOptions { on_failure: FailurePolicy::Keep, ..toy::fast() };
    let job = toy::submit_toy(&rig, options).await;
    assert_eq!(rig.drive(job).await, JobStatus::Failed);
    assert_eq!(rig.job(job).await.mode, JobMode::Forward);
    let mut kept = toy::full_world();
    kept.remove("service");
    assert_eq!(rig.env().things(), kept);
    assert!(rig.env().calls_of("delete:").is_empty());
    assert!(matches!(toy::state(&rig, job, CONFIG).await, NodeState::Succeeded { .. }));
    assert!(matches!(toy::state(&rig, job, SERVICE).await, NodeState::Failed { .. }));
}
