//! Rigs: a store and the engine in a directory, over the `sim` backend or a
//! backend a test assembles from real adapters and fakes, and the generic
//! phase tests.
//!
//! The engine's half ([`Rig`], the generic tests, [`Scenario`]) is
//! `cz_engine::testing`; the `sim` half ([`sim_rig`], [`SimRigExt`],
//! [`PhaseScenario`]) is `cz_phases::testing`, where every phase's own
//! tests reach it. This module puts them together with what only the
//! integration tests need.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use cz_engine::{Action, StepCtx, StepResult};
use cz_phases::{Backend, Registry, registry};
use cz_sim::{SimConfig, sim_backend};
use cz_state::{JobId, NodeState, Store};
use serde::Serialize;
use serde::de::DeserializeOwned;
use serde_json::Value;

pub use cz_engine::testing::{
    DRIVE_BOUND, Rig, Scenario, Started, every_step_failure_unwinds, every_step_runs_twice,
};
pub use cz_phases::testing::{BaoTap, PhaseScenario, SimRig, SimRigExt, sim_rig};

/// The `sim` backend rooted in `dir` (`sim/` the world, `ws/` the
/// workspaces), instant: the base a test replaces adapters of.
pub fn sim_backend_in(dir: &Path) -> Backend {
    sim_backend(dir.join("sim"), dir.join("ws"), SimConfig::instant())
}

/// A rig in `dir` (its store in `dir/data`, kept after the rig) over the
/// backend `backend` builds there, with every phase's actions plus the
/// test's own (`extra`).
pub async fn rig_in(
    dir: &Path,
    extra: impl FnOnce(&mut Registry),
    backend: impl FnOnce(&Path) -> Backend,
) -> Rig<Backend> {
    let mut r = registry();
    extra(&mut r);
    Rig::in_dir(dir, Arc::new(r), backend).await
}

/// The same in a new temporary directory owned by the rig.
pub async fn rig(
    extra: impl FnOnce(&mut Registry),
    backend: impl FnOnce(&Path) -> Backend,
) -> Rig<Backend> {
    let mut r = registry();
    extra(&mut r);
    Rig::new(Arc::new(r), backend).await
}

/// A test's stand-in for a step of an earlier phase: it returns the output
/// that phase would have persisted (after `delay`: a slow phase) and has
/// nothing to undo. Its plan steps take no params (`ActionId<()>`).
pub struct Stub {
    output: Value,
    delay: Duration,
}

impl Stub {
    /// A stub persisting `output` (the typed output of the step it stands
    /// for).
    pub fn new(output: impl Serialize) -> Stub {
        let output = serde_json::to_value(output).expect("the stub's output encodes");
        Stub { output, delay: Duration::ZERO }
    }

    /// The same, taking `delay` to answer.
    pub fn slow(self, delay: Duration) -> Stub {
        Stub { delay, ..self }
    }

    /// As an action to register (`Registry::register_dyn`).
    pub fn action<E: Send + Sync + 'static>(self) -> Arc<dyn Action<E>> {
        Arc::new(self)
    }
}

#[async_trait]
impl<E: Send + Sync + 'static> Action<E> for Stub {
    async fn run(&self, _cx: &StepCtx<E>) -> StepResult<Value> {
        tokio::time::sleep(self.delay).await;
        Ok(self.output.clone())
    }

    async fn undo(&self, _cx: &StepCtx<E>) -> StepResult<()> {
        Ok(())
    }

    fn check_params(&self, params: &Value) -> Result<(), String> {
        serde_json::from_value::<()>(params.clone()).map_err(|e| e.to_string())
    }
}

/// The output `node` of `job` persisted, as its typed output `T` (or as
/// `Value`); panics naming the node's state when it has not succeeded.
pub async fn step_output<T: DeserializeOwned>(store: &Store, job: JobId, node: &str) -> T {
    let states = store.node_states(job).await.expect("the store reads");
    match states.get(node) {
        Some(NodeState::Succeeded { output, .. }) => serde_json::from_value(output.clone())
            .unwrap_or_else(|e| panic!("{node}'s output does not decode: {e}: {output}")),
        other => panic!("{node} has no output: {other:?}"),
    }
}
