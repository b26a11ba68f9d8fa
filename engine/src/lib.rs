//! Catalyst-Zero's durable do/undo engine. It knows no cloud: a job is a
//! [`Plan`] of phases, each a DAG of steps; a step is an [`Action`] (do and
//! undo) looked up by name in a [`Registry`], run with a narrow
//! [`StepCtx<E>`] over whatever step environment `E` the caller wires in.
//!
//! Read in this order:
//! - [`plan`](Plan): plans as data (phases, step DAGs), validated and
//!   serializable, built with [`PhaseBuilder`];
//! - [`action`](Action): the do/undo pair, typed params ([`ActionId`]) and
//!   outputs, the [`Registry`] with its alias table;
//! - [`context`](StepCtx): what a step may use;
//! - [`error`](StepError): step errors and the one match deciding their
//!   [`ErrorClass`] (retry, pause, unwind);
//! - [`drive`](Engine): drives a job from its journal (forward, unwind,
//!   recovery are one code path), with retries and fault injection;
//! - [`verbs`](Verbs): retry, skip, resume, abandon, cancel.
//!
//! The journal itself (append-only step events and the transition function
//! that derives a step's state) lives in `cz-state`.
//!
//! With the `testing` feature, [`testing`] holds the two generic tests every
//! phase runs: fail at each step and check a clean unwind, and run every
//! step twice and check the same result.

mod action;
mod context;
mod drive;
mod error;
mod observe;
mod plan;
mod verbs;

#[cfg(feature = "testing")]
pub mod testing;

pub use action::Action;
pub use action::ActionFn;
pub use action::ActionId;
pub use action::Registry;
pub use action::StepResult;
pub use action::no_undo;
pub use context::StepEnv;
pub use context::{Outputs, StepCtx};
pub use drive::DriveOutcome;
pub use drive::Engine;
pub use drive::EngineError;
pub use drive::FailurePolicy;
pub use drive::FaultPlan;
pub use drive::JobOptions;
pub use drive::RetryPolicy;
pub use error::Cause;
pub use error::ErrorClass;
pub use error::StepError;
pub use error::System;
pub use error::chain;
pub use observe::NoObserver;
pub use observe::Observer;
pub use plan::NodeDef;
pub use plan::PhaseBuilder;
pub use plan::PhaseDef;
pub use plan::Plan;
pub use plan::PlanError;
pub use plan::phase_progress;
pub use verbs::RetryTarget;
pub use verbs::VerbError;
pub use verbs::Verbs;
pub use verbs::describe;
