//! Stored plans against the registry: a renamed action runs through its
//! alias; params that do not fit the action's params type are refused
//! before anything runs.

use std::sync::Arc;

use cz_engine::testing::Rig;
use cz_engine::{EngineError, Plan, PlanError};
use cz_state::JobStatus;
use serde_json::json;
use tokio_util::sync::CancellationToken;

use crate::toy::{self, NET, World};

/// The toy plan as stored before `toy.create` was renamed from `toy.make`.
fn plan_with_old_name() -> Plan {
    let mut plan = toy::plan();
    for n in plan.phases.iter_mut().flat_map(|p| &mut p.nodes) {
        if n.action == toy::CREATE.name {
            n.action = "toy.make".into();
        }
    }
    plan
}

/// A stored plan naming a renamed action still runs, through `Registry::alias`.
#[tokio::test]
async fn renamed_action_runs_through_its_alias() {
    let old = plan_with_old_name();
    let mut registry = toy::registry();
    let unknown = registry.check_plan(&old).unwrap_err();
    assert!(matches!(unknown, PlanError::UnknownAction { action, .. } if action == "toy.make"));
    registry.alias("toy.make", toy::CREATE.name);
    registry.check_plan(&old).expect("the alias resolves");
    let rig = Rig::new(Arc::new(registry), |_| World::new()).await;
    let (_, job) = toy::submit(&rig, &old, toy::fast()).await;
    assert_eq!(rig.drive(job).await, JobStatus::Succeeded);
    assert_eq!(rig.env().things(), toy::full_world());
}

/// Params that do not decode into the action's params type are refused by `check_plan` and by `drive`.
#[tokio::test]
async fn mistyped_params_are_refused() {
    let registry = toy::registry();
    for params in
        [json!({ "name": "net", "value": "one" }), json!({ "name": "net", "value": 1, "size": 2 })]
    {
        let mut plan = toy::plan();
        plan.phases[0].nodes[0].params = params;
        let err = registry.check_plan(&plan).unwrap_err();
        assert!(
            matches!(&err, PlanError::BadParams { node, action, .. } if node == NET && action == "toy.create"),
            "{err:?}"
        );

        let rig = toy::rig().await;
        let (_, job) = toy::submit(&rig, &plan, toy::fast()).await;
        let refused = rig.engine.drive(job, CancellationToken::new()).await;
        assert!(matches!(refused, Err(EngineError::BadPlan { .. })), "{refused:?}");
        assert_eq!(rig.job(job).await.status, JobStatus::Pending, "nothing ran");
        assert!(rig.store.journal(job).await.unwrap().is_empty());
        assert!(rig.env().calls().is_empty());
    }
}
