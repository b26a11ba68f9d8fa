//! Catalyst-Zero's step engine, adapter traits with their fakes, and the
//! phase plans.
//!
//! - [`plan`]: plans as data (phases, step DAGs), validated and serializable;
//! - [`step`]: the do/undo trait, the registry, the narrow step context;
//! - [`error`]: step errors and the one match deciding their class;
//! - [`engine`]: drives a job from its journal (forward, unwind, recovery),
//!   fault injection, operator verbs;
//! - [`adapters`]: one trait per external system;
//! - [`sim`]: hand-written fakes of every system, persistent, with latency
//!   and failure injection (the `sim` backend);
//! - [`registrar`]: the registrar adapters of `byo-api` domains, and a
//!   fake of their APIs;
//! - [`request`]: the versioned provision request and its validation;
//! - [`phases`]: the nine provision phases, add-region and destroy.

pub mod adapters;
pub mod engine;
pub mod error;
pub mod exec;
pub mod hcloud;
pub mod k8s;
pub mod pdns;
pub mod phases;
pub mod plan;
pub mod registrar;
pub mod request;
pub mod sim;
pub mod step;
pub mod unbuilt;

pub use adapters::Backend;
pub use engine::{
    DriveOutcome, Engine, EngineError, FailurePolicy, FaultPlan, JobOptions, RetryPolicy,
    RetryTarget, VerbError, Verbs,
};
pub use error::{Cause, ErrorClass, StepError, System};
pub use plan::{NodeDef, PhaseDef, Plan, PlanError};
pub use step::{Registry, Step, StepCtx, StepResult};
