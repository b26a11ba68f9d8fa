//! The two generic tests of `cz_engine::testing` on the toy plan, and
//! proof that they catch what they should: a step that is not idempotent,
//! and a step that does not undo.

use std::panic::AssertUnwindSafe;

use async_trait::async_trait;
use cz_engine::testing::{Scenario, Started, every_step_failure_unwinds, every_step_runs_twice};
use cz_engine::{JobOptions, PhaseBuilder, Plan};
use futures::FutureExt;
use serde_json::{Value, json};

use crate::toy::{self, BUMP, CREATE, LEAK, Named, Thing, World};

/// The generic tests' view of a toy plan: every step is under test, and
/// a clean slate is an empty world.
struct ToyScenario {
    plan: Plan,
}

impl ToyScenario {
    /// The toy plan with a third phase, `extra`, made by `build`.
    fn with_extra(build: impl FnOnce(&mut PhaseBuilder)) -> ToyScenario {
        let mut extra = PhaseBuilder::new("extra");
        build(&mut extra);
        let mut plan = toy::plan();
        plan.phases.push(extra.build());
        ToyScenario { plan }
    }
}

#[async_trait(?Send)]
impl Scenario for ToyScenario {
    type Env = World;

    fn steps(&self) -> Vec<String> {
        self.all_steps()
    }

    fn all_steps(&self) -> Vec<String> {
        self.plan.nodes_in_order().iter().map(|n| n.id.clone()).collect()
    }

    async fn start(&self, options: JobOptions) -> Started<World> {
        let rig = toy::rig().await;
        let (sovereign, job) = toy::submit(&rig, &self.plan, options).await;
        Started { rig, sovereign, job }
    }

    async fn assert_clean_slate(&self, run: &Started<World>, failed_at: &str) {
        let left = run.rig.env().things();
        assert!(left.is_empty(), "the unwind from {failed_at} left {left:?}");
    }

    async fn end_state(&self, run: &Started<World>) -> Value {
        json!(run.rig.env().things())
    }
}

/// The message of a panic caught from `fut`, which must panic.
async fn panic_message(fut: impl std::future::Future<Output = ()>) -> String {
    let payload = AssertUnwindSafe(fut).catch_unwind().await.expect_err("the test must fail");
    payload
        .downcast_ref::<String>()
        .cloned()
        .or_else(|| payload.downcast_ref::<&str>().map(|s| s.to_string()))
        .unwrap_or_default()
}

/// A failure at each step of the toy plan unwinds to an empty world.
#[tokio::test]
async fn toy_plan_every_step_failure_unwinds() {
    every_step_failure_unwinds(&ToyScenario { plan: toy::plan() }).await;
}

/// Every do and undo of the toy plan twice leaves what a plain run leaves.
#[tokio::test]
async fn toy_plan_every_step_runs_twice() {
    every_step_runs_twice(&ToyScenario { plan: toy::plan() }).await;
}

/// `every_step_runs_twice` fails on a step that is not idempotent.
#[tokio::test]
async fn runs_twice_catches_a_non_idempotent_step() {
    let scenario = ToyScenario::with_extra(|p| {
        p.step("counter", BUMP, &[], Named { name: "counter".into() });
    });
    let message = panic_message(every_step_runs_twice(&scenario)).await;
    assert!(message.contains("every step twice leaves what a plain run leaves"), "{message}");
}

/// `every_step_failure_unwinds` fails on a step whose undo leaves its thing behind.
#[tokio::test]
async fn failure_unwinds_catches_a_missing_undo() {
    let scenario = ToyScenario::with_extra(|p| {
        p.step("leak", LEAK, &[], Thing { name: "leak".into(), value: 7 });
        p.step("after", CREATE, &["leak"], Thing { name: "after".into(), value: 8 });
    });
    let message = panic_message(every_step_failure_unwinds(&scenario)).await;
    assert!(message.contains("the unwind from extra/after left {\"leak\": 7}"), "{message}");
}
