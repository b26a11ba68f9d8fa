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

use cz_phases::{Backend, Registry, registry};
use cz_sim::{SimConfig, sim_backend};

pub use cz_engine::testing::{
    DRIVE_BOUND, Rig, Scenario, Started, every_step_failure_unwinds, every_step_runs_twice,
};
pub use cz_phases::testing::{PhaseScenario, SimRig, SimRigExt, sim_rig};

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
