//! The operator verbs: resume, retry (a step, a phase, the failed steps),
//! skip, abandon, cancel; their audit trail and `operator` events; and
//! their refusal in the wrong state.

use cz_engine::testing::Rig;
use cz_engine::{FailurePolicy, JobOptions, RetryTarget, VerbError, Verbs};
use cz_state::{JobId, JobMode, JobStatus, NodeState, SovereignStatus, StepEvent};

use crate::toy::{self, CONFIG, NET, SERVICE, VM, World};

/// The message of a refused verb (panics on success or another error).
fn refused<T: std::fmt::Debug>(r: Result<T, VerbError>) -> String {
    match r {
        Err(VerbError::Refused(m)) => m,
        other => panic!("expected a refusal, got {other:?}"),
    }
}

/// A toy job paused at `node` by a needs-operator error failing `times` runs.
async fn paused_at(node: &str, times: u32) -> (Rig<World>, JobId) {
    let rig = toy::rig().await;
    rig.env().fail_do(node, toy::precondition(), times);
    let job = toy::submit_toy(&rig, toy::fast()).await;
    assert_eq!(rig.drive(job).await, JobStatus::Paused);
    (rig, job)
}

/// The `action` of every audit entry of the job, in order.
async fn audit_actions(rig: &Rig<World>, job: JobId) -> Vec<String> {
    rig.store.audit(Some(job)).await.unwrap().into_iter().map(|a| a.action).collect()
}

/// `resume` re-runs the failed step and the job goes on to the end; audited and streamed.
#[tokio::test]
async fn resume_reruns_the_failed_step() {
    let (rig, job) = paused_at(VM, 1).await;
    Verbs { store: &rig.store }.resume(job, "alice").await.unwrap();
    assert_eq!(rig.job(job).await.status, JobStatus::Running);
    assert_eq!(rig.job(job).await.pause, None);
    assert_eq!(rig.drive(job).await, JobStatus::Succeeded);
    assert_eq!(rig.env().count("create:vm"), 2);
    assert_eq!(rig.env().things(), toy::full_world());
    assert_eq!(audit_actions(&rig, job).await, ["submit", "resume"]);
    let ops = rig.events(job, "operator").await;
    assert_eq!(ops.len(), 1);
    assert_eq!(
        (ops[0]["action"].as_str(), ops[0]["actor"].as_str()),
        (Some("resume"), Some("alice"))
    );
    let retried = StepEvent::Retried { by: "alice".into() };
    let journal = rig.store.journal(job).await.unwrap();
    assert!(journal.iter().any(|r| r.node == VM && r.event == retried), "journalled");
}

/// `retry` of one step re-runs only that step.
#[tokio::test]
async fn retry_one_step() {
    let (rig, job) = paused_at(VM, 1).await;
    let retried = Verbs { store: &rig.store }
        .retry(job, RetryTarget::Step(VM.into()), "alice")
        .await
        .unwrap();
    assert_eq!(retried, [VM]);
    assert_eq!(rig.drive(job).await, JobStatus::Succeeded);
    assert_eq!((rig.env().count("create:vm"), rig.env().count("create:net")), (2, 1));
    assert_eq!(audit_actions(&rig, job).await, ["submit", "retry"]);
}

/// `retry` of a phase re-runs its succeeded steps too (they are idempotent).
#[tokio::test]
async fn retry_a_phase_reruns_succeeded_steps() {
    let (rig, job) = paused_at(SERVICE, 1).await;
    let verbs = Verbs { store: &rig.store };
    let retried = verbs.retry(job, RetryTarget::Phase("app".into()), "alice").await.unwrap();
    assert_eq!(retried, [CONFIG, SERVICE]);
    assert_eq!(rig.drive(job).await, JobStatus::Succeeded);
    assert_eq!(rig.env().count("create:config"), 2, "the succeeded step ran again");
    assert_eq!(rig.env().count("create:net"), 1, "the other phase did not");
    assert_eq!(rig.env().snapshot().created["config"], 1, "and made nothing twice");
    assert_eq!(rig.env().things(), toy::full_world());
}

/// `retry` of the failed steps re-opens a job failed under `keep` and finishes it.
#[tokio::test]
async fn retry_failed_steps_of_a_kept_failure() {
    let rig = toy::rig().await;
    rig.env().fail_do(SERVICE, toy::invalid(), 1);
    let options = JobOptions { on_failure: FailurePolicy::Keep, ..toy::fast() };
    let job = toy::submit_toy(&rig, options).await;
    assert_eq!(rig.drive(job).await, JobStatus::Failed);
    let retried = Verbs { store: &rig.store }.retry(job, RetryTarget::Failed, "alice").await;
    assert_eq!(retried.unwrap(), [SERVICE]);
    assert_eq!(rig.job(job).await.error, None, "the failure is cleared");
    assert_eq!(rig.drive(job).await, JobStatus::Succeeded);
    assert_eq!(rig.env().things(), toy::full_world());
}

/// `skip` needs a reason; with one, the step counts as done by hand and the job goes on.
#[tokio::test]
async fn skip_with_a_reason() {
    let (rig, job) = paused_at(SERVICE, 100).await;
    let verbs = Verbs { store: &rig.store };
    assert_eq!(refused(verbs.skip(job, SERVICE, " ", "alice").await), "skip needs a reason");
    verbs.skip(job, SERVICE, "started by hand", "alice").await.unwrap();
    assert_eq!(rig.drive(job).await, JobStatus::Succeeded);
    let state = toy::state(&rig, job, SERVICE).await;
    assert_eq!(state, NodeState::Skipped { by: "alice".into(), reason: "started by hand".into() });
    assert!(!rig.env().things().contains_key("service"));
    let audit = rig.store.audit(Some(job)).await.unwrap();
    let skip = audit.last().unwrap();
    assert_eq!((skip.action.as_str(), skip.actor.as_str()), ("skip", "alice"));
    assert_eq!(skip.detail["reason"], "started by hand");
    let ops = rig.events(job, "operator").await;
    assert_eq!(ops.len(), 1, "the refused skip left no trace");
    assert_eq!(ops[0]["detail"]["step"], SERVICE);
}

/// `abandon` stops the job where it is and undoes nothing.
#[tokio::test]
async fn abandon_leaves_everything_as_is() {
    let rig = toy::rig().await;
    rig.env().fail_do(SERVICE, toy::precondition(), 1);
    let (sovereign, job) = toy::submit(&rig, &toy::plan(), toy::fast()).await;
    assert_eq!(rig.drive(job).await, JobStatus::Paused);
    let before = rig.env().things();
    Verbs { store: &rig.store }.abandon(job, "alice").await.unwrap();
    assert_eq!(rig.drive(job).await, JobStatus::Abandoned);
    let sov = rig.store.get_sovereign(sovereign).await.unwrap().unwrap();
    assert_eq!(sov.status, SovereignStatus::Failed);
    assert_eq!(rig.env().things(), before);
    assert!(rig.env().calls_of("delete:").is_empty());
    assert_eq!(rig.events(job, "end").await.last().unwrap()["status"], "abandoned");
    assert_eq!(audit_actions(&rig, job).await, ["submit", "abandon"]);
}

/// `cancel` of a paused job unwinds it: everything it made is undone.
#[tokio::test]
async fn cancel_unwinds() {
    let (rig, job) = paused_at(SERVICE, 100).await;
    let verbs = Verbs { store: &rig.store };
    verbs.cancel(job, "alice").await.unwrap();
    let j = rig.job(job).await;
    assert_eq!((j.status, j.mode), (JobStatus::Running, JobMode::Unwinding));
    let again = refused(verbs.cancel(job, "alice").await);
    assert_eq!(again, "job is already rolling back");
    assert_eq!(rig.drive(job).await, JobStatus::Cancelled);
    assert!(rig.env().things().is_empty());
    assert_eq!(rig.job(job).await.error.unwrap()["cancelled"], true);
    assert_eq!(audit_actions(&rig, job).await, ["submit", "cancel"]);
}

/// Verbs are refused on a job in the wrong state, an unknown step or phase, an unknown job.
#[tokio::test]
async fn verbs_refused_in_the_wrong_state() {
    let rig = toy::rig().await;
    let verbs = Verbs { store: &rig.store };
    let job = toy::submit_toy(&rig, toy::fast()).await;
    // Pending: nothing to resume or retry.
    assert!(refused(verbs.resume(job, "a").await).contains("only paused jobs resume"));
    assert!(refused(verbs.retry(job, RetryTarget::Failed, "a").await).contains("retry applies"));
    assert_eq!(rig.drive(job).await, JobStatus::Succeeded);
    // Succeeded is final: every verb is refused.
    assert!(refused(verbs.resume(job, "a").await).contains("`succeeded`"));
    assert!(refused(verbs.retry(job, RetryTarget::Failed, "a").await).contains("`succeeded`"));
    assert!(refused(verbs.skip(job, NET, "why", "a").await).contains("`succeeded`"));
    assert!(refused(verbs.abandon(job, "a").await).contains("`succeeded`"));
    assert!(refused(verbs.cancel(job, "a").await).contains("`succeeded`"));
    assert_eq!(audit_actions(&rig, job).await, ["submit"], "refusals are not audited");

    let (rig, job) = paused_at(SERVICE, 100).await;
    let verbs = Verbs { store: &rig.store };
    let no_step = verbs.retry(job, RetryTarget::Step("app/nope".into()), "a").await;
    assert_eq!(refused(no_step), "no step `app/nope` in this job's plan");
    let no_phase = verbs.retry(job, RetryTarget::Phase("nope".into()), "a").await;
    assert_eq!(refused(no_phase), "no phase `nope` in this job's plan");
    assert!(refused(verbs.skip(job, "app/nope", "why", "a").await).contains("no step"));
    assert!(refused(verbs.skip(job, NET, "why", "a").await).contains("cannot be skipped"));
    let unknown = verbs.resume(JobId::new(), "a").await;
    assert!(matches!(unknown, Err(VerbError::NoSuchJob(_))));
    assert_eq!(rig.job(job).await.status, JobStatus::Paused, "still paused");
}

/// A skipped step records no output (a later step reading it fails) and a rollback does not undo it.
#[tokio::test]
async fn skipped_step_has_no_output_and_is_not_undone() {
    let (rig, job) = paused_at(VM, 100).await;
    Verbs { store: &rig.store }.skip(job, VM, "made by hand", "alice").await.unwrap();
    assert_eq!(rig.drive(job).await, JobStatus::Failed);
    let error = rig.job(job).await.error.unwrap();
    assert_eq!(
        (error["step"].as_str(), error["error"]["kind"].as_str()),
        (Some(SERVICE), Some("missing-output"))
    );
    assert!(rig.env().things().is_empty());
    assert_eq!(rig.env().count("delete:vm"), 0, "the skipped step is not undone");
}

/// `retry` of a rolled-back job is refused with the reason, and changes
/// nothing: every step is undone and stays so.
#[tokio::test]
async fn retry_of_a_rolled_back_job_is_refused() {
    let rig = toy::rig().await;
    rig.env().fail_do(SERVICE, toy::invalid(), 1);
    let job = toy::submit_toy(&rig, toy::fast()).await;
    assert_eq!(rig.drive(job).await, JobStatus::Failed);
    assert!(matches!(toy::state(&rig, job, SERVICE).await, NodeState::Undone { .. }));
    let verbs = Verbs { store: &rig.store };
    for target in [RetryTarget::Step(SERVICE.into()), RetryTarget::Failed] {
        let e = verbs.retry(job, target, "alice").await.unwrap_err();
        assert!(e.to_string().contains("rolled back"), "{e}");
    }
    assert_eq!(rig.job(job).await.status, JobStatus::Failed);
    assert!(rig.store.audit(Some(job)).await.unwrap().iter().all(|a| a.action != "retry"));
}
