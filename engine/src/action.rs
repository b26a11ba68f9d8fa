//! Actions: a do/undo pair registered by name, with typed params and output.
//!
//! A plan names its steps' actions by string (it is stored with the job and
//! read back after a restart); the [`Registry`] maps those names to code.
//! Each action is declared once as an [`ActionId<P>`], a name tied to its
//! params type `P`, so a phase's plan builder can only give a step the
//! params its action reads ([`crate::PhaseBuilder::step`]), and the registry
//! can check a stored plan's params before anything runs
//! ([`Registry::check_plan`]).
//!
//! An action's contract (steno's `Action::do_it`, omicron's sagas):
//! - `run` is idempotent: recovery runs again any step whose last journal
//!   event is `started`, and fault injection runs every step twice. IDs and
//!   names are decided when the plan is built (node params), never inside
//!   the step that creates the resource.
//! - `undo` is idempotent and treats "already gone" as done; it retries
//!   transient errors itself (the engine also retries it) because a failed
//!   undo stops the job until an operator looks.
//! - Steps share data only through persisted outputs looked up by node id
//!   ([`crate::StepCtx::lookup`]); nothing passes in memory.
//!
//! Action names carry their phase id (`cluster.k3s`). A rename keeps old
//! stored plans resuming through [`Registry::alias`].

use std::collections::HashMap;
use std::marker::PhantomData;
use std::sync::Arc;

use async_trait::async_trait;
use futures::future::BoxFuture;
use serde::Serialize;
use serde::de::DeserializeOwned;
use serde_json::Value;

use crate::context::StepCtx;
use crate::error::StepError;
use crate::plan::{Plan, PlanError};

pub type StepResult<T> = Result<T, StepError>;

/// A do/undo pair over the step environment `E`.
#[async_trait]
pub trait Action<E>: Send + Sync {
    /// Does the work; the returned JSON is persisted as the step's output.
    async fn run(&self, cx: &StepCtx<E>) -> StepResult<Value>;
    /// Removes the work's effects; absent effects are success.
    async fn undo(&self, cx: &StepCtx<E>) -> StepResult<()>;
    /// Whether `params` (a plan node's) decode into the action's params
    /// type; the decoder's message otherwise.
    fn check_params(&self, params: &Value) -> Result<(), String>;
}

/// An action's name and, in its type, the params its steps read.
pub struct ActionId<P> {
    pub name: &'static str,
    params: PhantomData<fn() -> P>,
}

impl<P> ActionId<P> {
    pub const fn new(name: &'static str) -> Self {
        ActionId { name, params: PhantomData }
    }
}

impl<P> Clone for ActionId<P> {
    fn clone(&self) -> Self {
        *self
    }
}

impl<P> Copy for ActionId<P> {}

impl<P> std::fmt::Debug for ActionId<P> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name)
    }
}

/// The do half of an [`ActionFn`].
pub type RunFn<E, O> = for<'a> fn(&'a StepCtx<E>) -> BoxFuture<'a, StepResult<O>>;
/// The undo half of an [`ActionFn`].
pub type UndoFn<E> = for<'a> fn(&'a StepCtx<E>) -> BoxFuture<'a, StepResult<()>>;

/// An action made of two async functions (steno's `ActionFunc`): `P` is the
/// params type its steps read, `O` the output it persists. Build it with
/// [`action!`](crate::action).
pub struct ActionFn<E, P, O> {
    pub run: RunFn<E, O>,
    pub undo: UndoFn<E>,
    pub params: PhantomData<fn() -> P>,
}

#[async_trait]
impl<E, P, O> Action<E> for ActionFn<E, P, O>
where
    E: Send + Sync + 'static,
    P: DeserializeOwned + 'static,
    O: Serialize + Send + 'static,
{
    async fn run(&self, cx: &StepCtx<E>) -> StepResult<Value> {
        let out = (self.run)(cx).await?;
        serde_json::to_value(out).map_err(|e| StepError::Internal {
            message: format!("the output of `{}` does not serialize: {e}", cx.node),
        })
    }

    async fn undo(&self, cx: &StepCtx<E>) -> StepResult<()> {
        (self.undo)(cx).await
    }

    fn check_params(&self, params: &Value) -> Result<(), String> {
        serde_json::from_value::<P>(params.clone()).map(drop).map_err(|e| e.to_string())
    }
}

/// `action!(run_fn, undo_fn)` builds an [`ActionFn`] from two `async fn`s
/// taking `&StepCtx<E>`; the params type comes from the [`ActionId`] it is
/// registered under.
#[macro_export]
macro_rules! action {
    ($run:path, $undo:path) => {
        $crate::ActionFn {
            run: |cx| ::std::boxed::Box::pin($run(cx)),
            undo: |cx| ::std::boxed::Box::pin($undo(cx)),
            params: ::std::marker::PhantomData,
        }
    };
}

/// The undo of a step with no side effect.
pub async fn no_undo<E>(_cx: &StepCtx<E>) -> StepResult<()> {
    Ok(())
}

/// Maps action names (as stored in plans) to their implementations.
pub struct Registry<E> {
    actions: HashMap<&'static str, Arc<dyn Action<E>>>,
    /// Old name → current name, for plans stored before a rename.
    aliases: HashMap<&'static str, &'static str>,
}

impl<E> Default for Registry<E> {
    fn default() -> Self {
        Registry { actions: HashMap::new(), aliases: HashMap::new() }
    }
}

impl<E> Clone for Registry<E> {
    fn clone(&self) -> Self {
        Registry { actions: self.actions.clone(), aliases: self.aliases.clone() }
    }
}

impl<E: Send + Sync + 'static> Registry<E> {
    pub fn new() -> Self {
        Self::default()
    }

    /// Registers `action` under `id`; registering a name twice is a bug.
    pub fn register<P, O>(&mut self, id: ActionId<P>, action: ActionFn<E, P, O>)
    where
        P: DeserializeOwned + 'static,
        O: Serialize + Send + 'static,
    {
        self.register_dyn(id.name, Arc::new(action));
    }

    /// Registers a hand-written [`Action`] under `name`.
    pub fn register_dyn(&mut self, name: &'static str, action: Arc<dyn Action<E>>) {
        let prev = self.actions.insert(name, action);
        assert!(prev.is_none(), "step action `{name}` registered twice");
        assert!(!self.aliases.contains_key(name), "`{name}` is already an alias");
    }

    /// Lets plans stored under the old name `old` run the action `new`.
    pub fn alias(&mut self, old: &'static str, new: &'static str) {
        assert!(self.actions.contains_key(new), "alias `{old}` → unknown action `{new}`");
        assert!(!self.actions.contains_key(old), "alias `{old}` shadows an action");
        self.aliases.insert(old, new);
    }

    /// The action a stored name runs (an alias resolves to its target).
    pub fn get(&self, name: &str) -> Option<Arc<dyn Action<E>>> {
        let name = self.aliases.get(name).copied().unwrap_or(name);
        self.actions.get(name).cloned()
    }

    pub fn contains(&self, name: &str) -> bool {
        self.get(name).is_some()
    }

    /// Every registered name, aliases excluded, sorted.
    pub fn names(&self) -> Vec<&'static str> {
        let mut v: Vec<_> = self.actions.keys().copied().collect();
        v.sort_unstable();
        v
    }

    /// Checks a plan against the registry: it is a valid DAG, every node
    /// names a registered action, and every node's params decode into that
    /// action's params type. A plan that passes cannot fail later for a
    /// missing or mistyped param.
    pub fn check_plan(&self, plan: &Plan) -> Result<(), PlanError> {
        plan.validate()?;
        for node in plan.phases.iter().flat_map(|p| &p.nodes) {
            let action = self.get(&node.action).ok_or_else(|| PlanError::UnknownAction {
                node: node.id.clone(),
                action: node.action.clone(),
            })?;
            action.check_params(&node.params).map_err(|message| PlanError::BadParams {
                node: node.id.clone(),
                action: node.action.clone(),
                message,
            })?;
        }
        Ok(())
    }
}
