//! What the engine reports while it runs, for metrics: a hook the daemon
//! implements (Prometheus) and tests may count with. The engine names no
//! metrics library.

use std::time::Duration;

use crate::error::ErrorClass;

/// Receives the engine's measurements. Every method defaults to nothing.
pub trait Observer: Send + Sync + 'static {
    /// A drive's `job` span was made (its `trace_id` field is empty): the
    /// daemon records the trace id there, so log lines carry it.
    fn job_span(&self, span: &tracing::Span) {
        let _ = span;
    }

    /// A step attempt (or an undo) ended after `elapsed`. `outcome`:
    /// `succeeded`, `retrying` (failed, to be retried), `failed`, `undone`
    /// or `undo-failed`. `action` is the step's kind (`infra.apply`), not
    /// its id, so labels stay few.
    fn step(&self, phase: &str, action: &str, outcome: &str, elapsed: Duration) {
        let _ = (phase, action, outcome, elapsed);
    }

    /// A failed attempt of class `class` is being retried.
    fn retry(&self, class: ErrorClass) {
        let _ = class;
    }
}

/// Observes nothing.
#[derive(Debug, Default)]
pub struct NoObserver;

impl Observer for NoObserver {}
