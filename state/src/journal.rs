//! The step journal: event types and the transition function.
//!
//! A step's state is never stored; it is derived by folding its events
//! through [`NodeState::next`]. This is steno's `SagaNodeLoadStatus` idea:
//! the log is the source of truth, any "current state" is a cache, and an
//! event that does not fit the current state is a typed error
//! ([`IllegalTransition`]) that the store refuses to write.
//!
//! ```text
//!            Started           Succeeded
//!  Pending ──────────▶ Running ─────────▶ Succeeded ──UndoStarted──▶ Undoing
//!     ▲   ◀─Retried─┐   │ ▲ │ Failed          │                      │ │ │
//!     │             │   │ └─┘ AttemptFailed   │ Retried              │ │ └─UndoFailed─▶ UndoFailed
//!     │             └─ Failed ◀───────────────┘                      │ └─UndoStarted (re-run)
//!     └──Retried── Skipped ◀─Skipped── Pending|Running|Failed        └─UndoFinished─▶ Undone
//! ```
//!
//! Re-logging `Started` on a `Running` node is legal: it is what recovery does
//! when a daemon died mid-step (the step is idempotent and runs again). The
//! same holds for `UndoStarted` on `Undoing`.

use serde::{Deserialize, Serialize};
use serde_json::Value;

/// Who asked for an operator transition (retry, skip).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Actor(pub String);

/// One journal event. The serialized form (`event` column + JSON body) is
/// stable: it is read back after crashes and upgrades.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "event", rename_all = "snake_case")]
pub enum StepEvent {
    /// The do action is about to run (attempt counts from 1).
    Started { attempt: u32 },
    /// A transient failure; the engine will run the step again after `retry_in_ms`.
    AttemptFailed { attempt: u32, error: Value, retry_in_ms: u64 },
    /// The do action finished; `output` is what later steps look up by name.
    Succeeded { output: Value },
    /// The do action failed for good (terminal or needs-operator).
    Failed { error: Value },
    /// The undo action is about to run.
    UndoStarted,
    /// The undo action finished (the step's effects are gone).
    UndoFinished,
    /// The undo action failed; an operator must look.
    UndoFailed { error: Value },
    /// An operator skipped the step with a justification.
    Skipped { by: String, reason: String },
    /// An operator asked for the step to run again.
    Retried { by: String },
}

impl StepEvent {
    /// The value of the `event` column.
    pub fn name(&self) -> &'static str {
        match self {
            StepEvent::Started { .. } => "started",
            StepEvent::AttemptFailed { .. } => "attempt_failed",
            StepEvent::Succeeded { .. } => "succeeded",
            StepEvent::Failed { .. } => "failed",
            StepEvent::UndoStarted => "undo_started",
            StepEvent::UndoFinished => "undo_finished",
            StepEvent::UndoFailed { .. } => "undo_failed",
            StepEvent::Skipped { .. } => "skipped",
            StepEvent::Retried { .. } => "retried",
        }
    }
}

/// The derived state of one step.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(tag = "state", rename_all = "snake_case")]
pub enum NodeState {
    #[default]
    Pending,
    Running {
        attempt: u32,
        last_error: Option<Value>,
    },
    Succeeded {
        output: Value,
        attempts: u32,
    },
    Failed {
        error: Value,
        attempts: u32,
    },
    Skipped {
        by: String,
        reason: String,
    },
    /// `output` is kept so an undo re-run after a crash still has it.
    Undoing {
        attempts: u32,
        output: Option<Value>,
    },
    Undone {
        attempts: u32,
    },
    UndoFailed {
        error: Value,
        attempts: u32,
        output: Option<Value>,
    },
}

/// An event that does not fit the step's current state.
#[derive(Clone, Debug, PartialEq, thiserror::Error)]
#[error("illegal journal event `{event}` for a step in state `{state}`")]
pub struct IllegalTransition {
    pub state: &'static str,
    pub event: &'static str,
}

impl NodeState {
    /// Short name of the state, as shown in the API.
    pub fn name(&self) -> &'static str {
        match self {
            NodeState::Pending => "pending",
            NodeState::Running { .. } => "running",
            NodeState::Succeeded { .. } => "succeeded",
            NodeState::Failed { .. } => "failed",
            NodeState::Skipped { .. } => "skipped",
            NodeState::Undoing { .. } => "undoing",
            NodeState::Undone { .. } => "undone",
            NodeState::UndoFailed { .. } => "undo_failed",
        }
    }

    /// Number of do attempts recorded so far.
    pub fn attempts(&self) -> u32 {
        match self {
            NodeState::Pending | NodeState::Skipped { .. } => 0,
            NodeState::Running { attempt, .. } => *attempt,
            NodeState::Succeeded { attempts, .. }
            | NodeState::Failed { attempts, .. }
            | NodeState::Undoing { attempts, .. }
            | NodeState::Undone { attempts }
            | NodeState::UndoFailed { attempts, .. } => *attempts,
        }
    }

    /// True when later steps may rely on this one (done or skipped).
    pub fn is_satisfied(&self) -> bool {
        matches!(self, NodeState::Succeeded { .. } | NodeState::Skipped { .. })
    }

    /// The output a later step (or this step's undo) may look up.
    pub fn output(&self) -> Option<&Value> {
        match self {
            NodeState::Succeeded { output, .. } => Some(output),
            NodeState::Undoing { output, .. } | NodeState::UndoFailed { output, .. } => {
                output.as_ref()
            }
            _ => None,
        }
    }

    /// Moves the output out (see [`Self::output`]), leaving `null` in its
    /// place: for a holder that keeps outputs apart from states, so that
    /// none is held twice. The state's kind, attempts and whether it had
    /// an output stay.
    pub fn take_output(&mut self) -> Option<Value> {
        match self {
            NodeState::Succeeded { output, .. } => Some(std::mem::take(output)),
            NodeState::Undoing { output: Some(o), .. }
            | NodeState::UndoFailed { output: Some(o), .. } => Some(std::mem::take(o)),
            _ => None,
        }
    }

    /// True when `event` carries the state's output into the next state
    /// ([`Self::next`] on `undo_started` or `undo_failed`): a state whose
    /// output was taken cannot answer such an event.
    pub fn carries_output(event: &StepEvent) -> bool {
        matches!(event, StepEvent::UndoStarted | StepEvent::UndoFailed { .. })
    }

    /// True when an unwind must still run this step's undo.
    pub fn needs_undo(&self) -> bool {
        matches!(
            self,
            NodeState::Running { .. }
                | NodeState::Succeeded { .. }
                | NodeState::Failed { .. }
                | NodeState::Undoing { .. }
                | NodeState::UndoFailed { .. }
        )
    }

    /// The transition function. Pure; the store calls it inside the writing
    /// transaction and refuses the write on `Err`.
    pub fn next(&self, event: &StepEvent) -> Result<NodeState, IllegalTransition> {
        use NodeState as S;
        use StepEvent as E;
        let next = match (self, event) {
            (S::Pending, E::Started { attempt }) => {
                S::Running { attempt: *attempt, last_error: None }
            }
            // Recovery re-runs a step whose last event is `started`, and the
            // engine re-runs it after a transient failure.
            (S::Running { attempt: prev, .. }, E::Started { attempt }) if *attempt > *prev => {
                S::Running { attempt: *attempt, last_error: None }
            }
            (S::Running { attempt: a, .. }, E::AttemptFailed { attempt, error, .. })
                if a == attempt =>
            {
                S::Running { attempt: *a, last_error: Some(error.clone()) }
            }
            (S::Running { attempt, .. }, E::Succeeded { output }) => {
                S::Succeeded { output: output.clone(), attempts: *attempt }
            }
            (S::Running { attempt, .. }, E::Failed { error }) => {
                S::Failed { error: error.clone(), attempts: *attempt }
            }
            (
                S::Pending | S::Running { .. } | S::Failed { .. } | S::UndoFailed { .. },
                E::Skipped { by, reason },
            ) => S::Skipped { by: by.clone(), reason: reason.clone() },
            (
                S::Failed { .. } | S::Succeeded { .. } | S::Skipped { .. } | S::Undone { .. },
                E::Retried { .. },
            ) => S::Pending,
            (S::Running { attempt, .. }, E::UndoStarted) => {
                S::Undoing { attempts: *attempt, output: None }
            }
            (S::Failed { attempts, .. }, E::UndoStarted) => {
                S::Undoing { attempts: *attempts, output: None }
            }
            (
                S::Succeeded { attempts, output }
                | S::Undoing { attempts, output: Some(output) }
                | S::UndoFailed { attempts, output: Some(output), .. },
                E::UndoStarted,
            ) => S::Undoing { attempts: *attempts, output: Some(output.clone()) },
            (
                S::Undoing { attempts, output: None }
                | S::UndoFailed { attempts, output: None, .. },
                E::UndoStarted,
            ) => S::Undoing { attempts: *attempts, output: None },
            (S::Undoing { attempts, .. }, E::UndoFinished) => S::Undone { attempts: *attempts },
            (S::Undoing { attempts, output }, E::UndoFailed { error }) => {
                S::UndoFailed { error: error.clone(), attempts: *attempts, output: output.clone() }
            }
            (state, event) => {
                return Err(IllegalTransition { state: state.name(), event: event.name() });
            }
        };
        Ok(next)
    }

    /// Folds a whole event sequence, failing on the first illegal event.
    pub fn replay<'a>(
        events: impl IntoIterator<Item = &'a StepEvent>,
    ) -> Result<NodeState, IllegalTransition> {
        events.into_iter().try_fold(NodeState::Pending, |s, e| s.next(e))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn started(a: u32) -> StepEvent {
        StepEvent::Started { attempt: a }
    }

    #[test]
    fn happy_path_and_undo() {
        let s = NodeState::replay(&[
            started(1),
            StepEvent::Succeeded { output: json!({"id": 7}) },
            StepEvent::UndoStarted,
            StepEvent::UndoFinished,
        ])
        .unwrap();
        assert_eq!(s, NodeState::Undone { attempts: 1 });
    }

    #[test]
    fn recovery_rerun_and_transient_retry() {
        let s = NodeState::replay(&[
            started(1),
            started(2), // daemon died mid-step, recovery ran it again
            StepEvent::AttemptFailed { attempt: 2, error: json!("429"), retry_in_ms: 10 },
            started(3),
            StepEvent::Succeeded { output: json!(null) },
        ])
        .unwrap();
        assert_eq!(s.attempts(), 3);
        assert!(s.is_satisfied());
    }

    #[test]
    fn illegal_sequences_are_typed_errors() {
        let cases: Vec<Vec<StepEvent>> = vec![
            vec![StepEvent::Succeeded { output: json!(1) }],
            vec![started(1), StepEvent::Succeeded { output: json!(1) }, started(2)],
            vec![started(2), started(1)],
            vec![StepEvent::UndoStarted],
            vec![StepEvent::UndoFinished],
            vec![started(1), StepEvent::UndoFinished],
            vec![
                started(1),
                StepEvent::AttemptFailed { attempt: 7, error: json!(1), retry_in_ms: 0 },
            ],
            vec![StepEvent::Retried { by: "op".into() }],
            vec![
                started(1),
                StepEvent::Succeeded { output: json!(1) },
                StepEvent::Skipped { by: "op".into(), reason: "x".into() },
            ],
        ];
        for events in cases {
            let err = NodeState::replay(&events).unwrap_err();
            assert!(err.to_string().contains("illegal journal event"), "{events:?}");
        }
    }

    #[test]
    fn operator_paths() {
        let s = NodeState::replay(&[
            started(1),
            StepEvent::Failed { error: json!({"class": "needs_operator"}) },
            StepEvent::Retried { by: "alice".into() },
            started(2),
            StepEvent::Failed { error: json!(1) },
            StepEvent::Skipped { by: "alice".into(), reason: "done by hand".into() },
        ])
        .unwrap();
        assert!(matches!(s, NodeState::Skipped { .. }));
        let s = NodeState::replay(&[
            started(1),
            StepEvent::Succeeded { output: json!(1) },
            StepEvent::UndoStarted,
            StepEvent::UndoFailed { error: json!("boom") },
            StepEvent::UndoStarted,
            StepEvent::UndoFinished,
        ])
        .unwrap();
        assert!(matches!(s, NodeState::Undone { .. }));
    }
}
