//! Steps: a do/undo pair registered by name, and the narrow context they get.
//!
//! A step's contract (steno's `Action::do_it`, omicron's sagas):
//! - `run` is idempotent: recovery runs again any step whose last journal
//!   event is `started`, and fault injection runs every step twice. IDs and
//!   names are decided when the plan is built (node params), never inside the
//!   step that creates the resource.
//! - `undo` is idempotent and treats "already gone" as done; it retries
//!   transient errors itself (the engine also retries it) because a failed
//!   undo stops the job until an operator looks.
//! - Steps share data only through persisted outputs looked up by node id
//!   ([`StepCtx::lookup`]); nothing passes in memory.
//!
//! Steps get a [`StepCtx`]: the job's ids and request, the node's params,
//! earlier outputs, secrets, the adapters and an event emitter — never the
//! whole daemon (omicron's `saga_interface.rs`).

use std::collections::{BTreeMap, HashMap};
use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use cz_state::{JobId, NewJobEvent, SecretString, SovereignId, Store};
use serde::de::DeserializeOwned;
use serde_json::{Value, json};
use tokio_util::sync::CancellationToken;

use crate::adapters::Backend;
use crate::error::StepError;

pub type StepResult<T> = Result<T, StepError>;

/// A do/undo pair.
#[async_trait]
pub trait Step: Send + Sync {
    /// Does the work; the returned JSON is persisted as the step's output.
    async fn run(&self, cx: &StepCtx) -> StepResult<Value>;
    /// Removes the work's effects; absent effects are success.
    async fn undo(&self, cx: &StepCtx) -> StepResult<()>;
}

/// Maps action names (as stored in plans) to their implementations.
#[derive(Clone, Default)]
pub struct Registry {
    actions: HashMap<&'static str, Arc<dyn Step>>,
}

impl Registry {
    pub fn new() -> Self {
        Self::default()
    }

    /// Registers `name`; registering a name twice is a bug.
    pub fn register(&mut self, name: &'static str, step: impl Step + 'static) {
        let prev = self.actions.insert(name, Arc::new(step));
        assert!(prev.is_none(), "step action `{name}` registered twice");
    }

    pub fn get(&self, name: &str) -> Option<Arc<dyn Step>> {
        self.actions.get(name).cloned()
    }

    pub fn contains(&self, name: &str) -> bool {
        self.actions.contains_key(name)
    }
}

/// Everything a step may use.
#[derive(Clone)]
pub struct StepCtx {
    pub job_id: JobId,
    pub sovereign_id: SovereignId,
    /// `<phase>/<step>`.
    pub node: String,
    /// 1 for the first attempt.
    pub attempt: u32,
    /// The node's constant params from the plan.
    pub params: Value,
    /// The job's request, secrets removed.
    pub request: Arc<Value>,
    /// Outputs of satisfied nodes, by node id.
    pub outputs: Arc<BTreeMap<String, Value>>,
    pub backend: Arc<Backend>,
    pub(crate) store: Store,
    pub cancel: CancellationToken,
}

impl StepCtx {
    /// The phase id of this step.
    pub fn phase(&self) -> &str {
        self.node.split('/').next().unwrap_or(&self.node)
    }

    /// The output of an earlier node (`phase/step`), deserialized.
    pub fn lookup<T: DeserializeOwned>(&self, node: &str) -> StepResult<T> {
        let v = self
            .outputs
            .get(node)
            .ok_or_else(|| StepError::MissingOutput { name: node.to_owned() })?;
        serde_json::from_value(v.clone()).map_err(|e| StepError::Internal {
            message: format!("output of `{node}` does not decode: {e}"),
        })
    }

    /// Outputs of every node whose id starts with `prefix` (per-item steps).
    pub fn lookup_prefix(&self, prefix: &str) -> Vec<(&String, &Value)> {
        self.outputs.range(prefix.to_owned()..).take_while(|(k, _)| k.starts_with(prefix)).collect()
    }

    /// A node param, deserialized.
    pub fn param<T: DeserializeOwned>(&self, name: &str) -> StepResult<T> {
        let v = self.params.get(name).cloned().unwrap_or(Value::Null);
        serde_json::from_value(v).map_err(|e| StepError::Internal {
            message: format!("param `{name}` of `{}`: {e}", self.node),
        })
    }

    /// A request field by JSON pointer, deserialized.
    pub fn request_field<T: DeserializeOwned>(&self, pointer: &str) -> StepResult<T> {
        let v = self.request.pointer(pointer).cloned().unwrap_or(Value::Null);
        serde_json::from_value(v).map_err(|e| StepError::InvalidInput {
            path: pointer.trim_start_matches('/').replace('/', "."),
            message: e.to_string(),
        })
    }

    /// A secret owned by this job's Sovereign.
    pub async fn secret(&self, name: &str) -> StepResult<SecretString> {
        self.store
            .get_secret(&self.sovereign_id.to_string(), name)
            .await?
            .ok_or_else(|| StepError::MissingSecret { name: name.to_owned() })
    }

    pub async fn secret_opt(&self, name: &str) -> StepResult<Option<SecretString>> {
        Ok(self.store.get_secret(&self.sovereign_id.to_string(), name).await?)
    }

    /// Stores a secret (age-encrypted) for this job's Sovereign.
    pub async fn put_secret(&self, name: &str, value: &SecretString) -> StepResult<()> {
        Ok(self.store.put_secret(&self.sovereign_id.to_string(), name, value).await?)
    }

    /// Stores several secrets in one commit (all or none).
    pub async fn put_secrets(&self, secrets: &[(String, SecretString)]) -> StepResult<()> {
        Ok(self.store.put_secrets(&self.sovereign_id.to_string(), secrets).await?)
    }

    pub async fn delete_secret(&self, name: &str) -> StepResult<()> {
        Ok(self.store.delete_secret(&self.sovereign_id.to_string(), name).await?)
    }

    /// Emits a progress event on the job's stream, tagged with phase/step.
    pub async fn event(&self, kind: &str, mut body: Value) -> StepResult<()> {
        self.tag(&mut body);
        self.store.append_events(self.job_id, vec![NewJobEvent::new(kind, body)]).await?;
        Ok(())
    }

    /// Emits several events in one commit (tofu line batches).
    pub async fn events(&self, kind: &str, bodies: Vec<Value>) -> StepResult<()> {
        let evs = bodies
            .into_iter()
            .map(|mut b| {
                self.tag(&mut b);
                NewJobEvent::new(kind, b)
            })
            .collect();
        self.store.append_events(self.job_id, evs).await?;
        Ok(())
    }

    fn tag(&self, body: &mut Value) {
        if let Some(o) = body.as_object_mut() {
            o.entry("phase").or_insert_with(|| self.phase().into());
            o.entry("step").or_insert_with(|| self.node.clone().into());
        }
    }

    /// Logs a line on the job's stream.
    pub async fn log(&self, message: impl Into<String>) -> StepResult<()> {
        self.event("log", json!({ "level": "info", "message": message.into() })).await
    }

    /// A bounded wait: polls `check` every `backend.poll` until it returns
    /// `Some`, the bound passes (a `Timeout` naming the reason) or the job is
    /// cancelled. The reason and bound are streamed when the wait starts and
    /// progress is streamed every `report_every` (F-17, F-22: every wait has
    /// a reason, a bound, and reports back).
    pub async fn wait_for<T, F, Fut>(
        &self,
        reason: &str,
        bound: Duration,
        mut check: F,
    ) -> StepResult<T>
    where
        F: FnMut() -> Fut,
        Fut: Future<Output = StepResult<Option<T>>>,
    {
        let started = Instant::now();
        self.event(
            "wait",
            json!({ "reason": reason, "bound_s": bound.as_secs(), "state": "started" }),
        )
        .await?;
        let report_every = Duration::from_secs(15);
        let mut last_report = Instant::now();
        loop {
            match check().await {
                Ok(Some(v)) => {
                    self.event(
                        "wait",
                        json!({ "reason": reason, "state": "done", "elapsed_ms": started.elapsed().as_millis() as u64 }),
                    )
                    .await?;
                    return Ok(v);
                }
                Ok(None) => {}
                // A transient failure while polling is just "not yet".
                Err(e) if e.class() == crate::error::ErrorClass::Transient => {}
                Err(e) => return Err(e),
            }
            if started.elapsed() >= bound {
                return Err(StepError::Timeout {
                    reason: reason.to_owned(),
                    bound_s: bound.as_secs(),
                });
            }
            if last_report.elapsed() >= report_every {
                last_report = Instant::now();
                self.event(
                    "wait",
                    json!({ "reason": reason, "state": "waiting", "elapsed_s": started.elapsed().as_secs() }),
                )
                .await?;
            }
            tokio::select! {
                _ = tokio::time::sleep(self.backend.poll) => {}
                _ = self.cancel.cancelled() => {
                    return Err(StepError::Timeout { reason: format!("{reason} (cancelled)"), bound_s: started.elapsed().as_secs() });
                }
            }
        }
    }
}
