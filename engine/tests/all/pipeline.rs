//! Overlapping phases and released nodes (a pipelined bring-up): a
//! producer step makes a fleet one member at a time and releases each as
//! it is made; the overlapping phase's per-member step starts from that
//! release while the producer is still making the others. Interrupted
//! mid-fleet, the next drive makes nothing twice and joins nothing twice.

use std::sync::Arc;
use std::time::{Duration, Instant};

use cz_engine::testing::Rig;
use cz_engine::{
    ActionId, DriveOutcome, PhaseBuilder, Plan, PlanError, Registry, StepCtx, StepError,
    StepResult, action, no_undo,
};
use cz_state::{JobStatus, StepEvent};
use serde::{Deserialize, Serialize};
use tokio_util::sync::CancellationToken;

use crate::toy::{self, Made, Named, World};

/// The fleet's members.
const MEMBERS: [&str; 4] = ["a", "b", "c", "d"];

#[derive(Clone, Debug, Serialize, Deserialize)]
struct Fleet {
    members: Vec<String>,
    /// Release nothing (a producer with a bug).
    #[serde(default)]
    silent: bool,
}

const MAKE: ActionId<Fleet> = ActionId::new("fleet.make");
const MEMBER: ActionId<Named> = ActionId::new("fleet.member");

/// Makes each member (idempotently), holds on a little, releases it.
async fn make(cx: &StepCtx<World>) -> StepResult<usize> {
    let f: Fleet = cx.params()?;
    for m in &f.members {
        cx.env.make_thing(cx, m, 1)?;
        tokio::time::sleep(Duration::from_millis(40)).await;
        if !f.silent {
            cx.release(&format!("member-{m}"), &Made { name: m.clone(), value: 1 }).await?;
        }
    }
    Ok(f.members.len())
}

/// Removes every member; already gone is done.
async fn unmake(cx: &StepCtx<World>) -> StepResult<()> {
    let f: Fleet = cx.params()?;
    for m in &f.members {
        cx.env.remove(m);
    }
    Ok(())
}

async fn member(cx: &StepCtx<World>) -> StepResult<Made> {
    Err(StepError::internal(format!("`{}` is released, never run", cx.node)))
}

fn registry() -> Registry<World> {
    let mut r = toy::registry();
    r.register(MAKE, action!(make, unmake));
    r.register(MEMBER, action!(member, no_undo));
    r
}

/// `fleet`: `make` releases `member-<m>`; `join` (overlapping) has one
/// `join-<m>` per member, after its release: a thing `joined-<m>` whose
/// value is the member's.
fn plan(silent: bool) -> Plan {
    let mut fleet = PhaseBuilder::new("fleet");
    let members = MEMBERS.iter().map(|m| m.to_string()).collect();
    fleet.step("make", MAKE, &[], Fleet { members, silent });
    for m in MEMBERS {
        fleet.released(&format!("member-{m}"), MEMBER, "make", &[], Named { name: m.into() });
    }
    let mut join = PhaseBuilder::overlapping("join");
    for m in MEMBERS {
        let of = vec![format!("fleet/member-{m}")];
        let sum = toy::Sum { name: format!("joined-{m}"), of };
        join.step(&format!("join-{m}"), toy::SUM, &[&format!("fleet/member-{m}")], sum);
    }
    Plan { phases: vec![fleet.build(), join.build()] }
}

async fn rig() -> Rig<World> {
    Rig::new(Arc::new(registry()), |_| World::holding(Duration::from_millis(30))).await
}

/// The journal's events in order, as `(node, event)`.
async fn journal(rig: &Rig<World>, job: cz_state::JobId) -> Vec<(String, String)> {
    let j = rig.store.journal(job).await.unwrap();
    j.into_iter()
        .map(|r| {
            let e = match r.event {
                StepEvent::Started { .. } => "started",
                StepEvent::Succeeded { .. } => "succeeded",
                _ => "other",
            };
            (r.node, e.to_owned())
        })
        .collect()
}

/// A member's join starts while the producer is still making the others.
#[tokio::test]
async fn a_released_member_joins_while_the_fleet_is_made() {
    let rig = rig().await;
    let (_, job) = toy::submit(&rig, &plan(false), toy::fast()).await;
    assert_eq!(rig.drive(job).await, JobStatus::Succeeded);
    let j = journal(&rig, job).await;
    let at = |node: &str, ev: &str| j.iter().position(|(n, e)| n == node && e == ev).unwrap();
    assert!(
        at("join/join-a", "started") < at("fleet/make", "succeeded"),
        "the first join waited for the whole fleet: {j:?}"
    );
    for m in MEMBERS {
        assert!(at(&format!("fleet/member-{m}"), "succeeded") < at("fleet/make", "succeeded"));
        assert_eq!(rig.env().snapshot().created[&format!("joined-{m}")], 1);
    }
    // Both phases report their own start and success.
    let phases = rig.events(job, "phase").await;
    let seen: Vec<String> = phases
        .iter()
        .map(|p| format!("{}:{}", p["phase"].as_str().unwrap(), p["state"].as_str().unwrap()))
        .collect();
    for want in ["fleet:started", "join:started", "fleet:succeeded", "join:succeeded"] {
        assert!(seen.contains(&want.to_owned()), "{seen:?}");
    }
}

/// A drive cancelled mid-fleet: the next drive makes no member twice, joins
/// none twice, and journals no release twice.
#[tokio::test]
async fn interrupted_mid_fleet_resumes_without_doing_anything_twice() {
    let rig = rig().await;
    let (_, job) = toy::submit(&rig, &plan(false), toy::fast()).await;
    let (engine, cancel) = (rig.engine.clone(), CancellationToken::new());
    let drive = tokio::spawn({
        let cancel = cancel.clone();
        async move { engine.drive(job, cancel).await }
    });
    let deadline = Instant::now() + Duration::from_secs(30);
    while !rig.env().things().contains_key("joined-a") {
        assert!(Instant::now() < deadline, "join-a never ran");
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    cancel.cancel();
    assert!(matches!(drive.await.unwrap(), Ok(DriveOutcome::Interrupted)));
    assert!(rig.env().things().len() < MEMBERS.len() * 2, "the cancel came too late to test");
    assert_eq!(rig.drive(job).await, JobStatus::Succeeded);
    let s = rig.env().snapshot();
    for m in MEMBERS {
        assert_eq!(s.created[m], 1, "{m} made twice");
        assert_eq!(s.created[&format!("joined-{m}")], 1, "{m} joined twice");
    }
    let released = journal(&rig, job).await;
    for m in MEMBERS {
        let node = format!("fleet/member-{m}");
        let n = released.iter().filter(|(n, e)| *n == node && e == "succeeded").count();
        assert_eq!(n, 1, "{node} released {n} times");
    }
}

/// A producer that ends without releasing its nodes stops the job with an
/// error naming them, instead of hanging.
#[tokio::test]
async fn a_producer_that_releases_nothing_is_named() {
    let rig = rig().await;
    let (_, job) = toy::submit(&rig, &plan(true), toy::fast()).await;
    let out = rig.engine.drive(job, CancellationToken::new()).await;
    let message = format!("{:?}", out.unwrap_err());
    assert!(message.contains("fleet/member-a"), "{message}");
}

/// Dependencies across phases need an overlapping phase; a released node
/// needs a producer that runs.
#[test]
fn plans_check_overlaps_and_producers() {
    plan(false).validate().unwrap();
    let mut not_overlapping = plan(false);
    not_overlapping.phases[1].overlaps = false;
    assert!(matches!(not_overlapping.validate(), Err(PlanError::UnknownDependency { .. })));
    let mut orphan = plan(false);
    orphan.phases[0].nodes[1].released_by = Some("fleet/nobody".into());
    assert!(matches!(orphan.validate(), Err(PlanError::BadProducer { .. })));
    assert_eq!(plan(false).stages().len(), 1);
    assert_eq!(plan(false).steps_that_run().count(), 1 + MEMBERS.len());
}
