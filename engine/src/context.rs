//! The narrow context a step gets (omicron's `saga_interface.rs`): the
//! job's ids and request, the node's params, earlier outputs, the job's
//! secrets, an event emitter, bounded waits, and the step environment `E`
//! (the adapters the daemon wired in) — never the whole daemon.
//!
//! The engine is generic over `E` (steno's `ExecContextType`), so nothing in
//! this crate can name a backend: `E` only has to say how often a bounded
//! wait polls ([`StepEnv`]).

use std::collections::{BTreeMap, BTreeSet};
use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use cz_state::{JobId, NewJobEvent, NodeState, SecretString, SovereignId, StepEvent, Store};
use serde::de::DeserializeOwned;
use serde_json::{Value, json};
use tokio_util::sync::CancellationToken;

use crate::action::StepResult;
use crate::error::{ErrorClass, StepError};

/// The outputs of satisfied nodes, by node id. Each output is shared: the
/// map is copied when a step completes while others still read it, and
/// that copy must not copy every output with it.
pub type Outputs = BTreeMap<String, Arc<Value>>;

/// What the engine needs of a step environment.
pub trait StepEnv: Send + Sync + 'static {
    /// How often [`StepCtx::wait_for`] checks its condition.
    fn poll_interval(&self) -> Duration;
}

/// Everything a step may use.
pub struct StepCtx<E> {
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
    pub outputs: Arc<Outputs>,
    /// The step environment: the adapters and settings the daemon wired in.
    pub env: Arc<E>,
    pub(crate) store: Store,
    pub cancel: CancellationToken,
    /// Set for a step that releases nodes ([`StepCtx::release`]).
    pub(crate) releaser: Option<Arc<Releaser>>,
}

/// What a producer step needs to release its nodes: which they are, which
/// are satisfied already, and the channel to the driving loop (so their
/// dependents start at once).
pub(crate) struct Releaser {
    /// Ids of the nodes this step releases.
    pub(crate) nodes: BTreeSet<String>,
    /// Those not satisfied yet, with the attempts their journal holds (an
    /// earlier drive may have journaled a start and died).
    pub(crate) pending: Mutex<BTreeMap<String, u32>>,
    pub(crate) tx: tokio::sync::mpsc::UnboundedSender<(String, NodeState)>,
}

impl<E> Clone for StepCtx<E> {
    fn clone(&self) -> Self {
        StepCtx {
            job_id: self.job_id,
            sovereign_id: self.sovereign_id,
            node: self.node.clone(),
            attempt: self.attempt,
            params: self.params.clone(),
            request: self.request.clone(),
            outputs: self.outputs.clone(),
            env: self.env.clone(),
            store: self.store.clone(),
            cancel: self.cancel.clone(),
            releaser: self.releaser.clone(),
        }
    }
}

impl<E: StepEnv> StepCtx<E> {
    /// The phase id of this step.
    pub fn phase(&self) -> &str {
        crate::plan::phase_of(&self.node)
    }

    /// The output of an earlier node (`phase/step`), deserialized.
    pub fn lookup<T: DeserializeOwned>(&self, node: &str) -> StepResult<T> {
        let v = self
            .outputs
            .get(node)
            .ok_or_else(|| StepError::MissingOutput { name: node.to_owned() })?;
        T::deserialize(v.as_ref()).map_err(|e| StepError::Internal {
            message: format!("output of `{node}` does not decode: {e}"),
        })
    }

    /// Outputs of every node whose id starts with `prefix` (per-item steps).
    pub fn lookup_prefix(&self, prefix: &str) -> Vec<(&String, &Value)> {
        self.outputs
            .range(prefix.to_owned()..)
            .take_while(|(k, _)| k.starts_with(prefix))
            .map(|(k, v)| (k, v.as_ref()))
            .collect()
    }

    /// The node's params, typed. The registry checked them against the
    /// action's params type when the plan was built and again before the
    /// job ran, so a failure here is a step reading another type.
    pub fn params<T: DeserializeOwned>(&self) -> StepResult<T> {
        serde_json::from_value(self.params.clone()).map_err(|e| StepError::Internal {
            message: format!("the params of `{}` do not decode: {e}", self.node),
        })
    }

    /// A node param, deserialized.
    pub fn param<T: DeserializeOwned>(&self, name: &str) -> StepResult<T> {
        let v = self.params.get(name).cloned().unwrap_or(Value::Null);
        serde_json::from_value(v).map_err(|e| StepError::Internal {
            message: format!("param `{name}` of `{}`: {e}", self.node),
        })
    }

    /// The job's request (secrets removed), typed.
    pub fn request<T: DeserializeOwned>(&self) -> StepResult<T> {
        serde_json::from_value((*self.request).clone()).map_err(|e| StepError::Internal {
            message: format!("the stored request does not decode: {e}"),
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

    /// Every node's state in the journal now: what sibling steps did while
    /// this one ran ([`StepCtx::outputs`] is as it was when it started).
    pub async fn node_states_now(&self) -> StepResult<BTreeMap<String, NodeState>> {
        Ok(self.store.node_states(self.job_id).await?)
    }

    pub async fn secret_opt(&self, name: &str) -> StepResult<Option<SecretString>> {
        Ok(self.store.get_secret(&self.sovereign_id.to_string(), name).await?)
    }

    /// Whether this job's Sovereign holds the secret `name` (nothing is
    /// decrypted).
    pub async fn has_secret(&self, name: &str) -> StepResult<bool> {
        let names = self.store.secret_names(&self.sovereign_id.to_string()).await?;
        Ok(names.iter().any(|n| n == name))
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

    /// Replaces this Sovereign's escrow of `kind` with `items` and stores
    /// `secrets` (sealed to the daemon), in one commit.
    pub async fn put_escrow(
        &self,
        kind: &str,
        items: &[cz_state::EscrowItem],
        secrets: &[(String, SecretString)],
    ) -> StepResult<()> {
        let owner = self.sovereign_id.to_string();
        Ok(self.store.put_escrow(&owner, kind, items, secrets).await?)
    }

    /// This Sovereign's escrow of `kind`, by index.
    pub async fn escrow(&self, kind: &str) -> StepResult<Vec<cz_state::EscrowItem>> {
        Ok(self.store.escrow(&self.sovereign_id.to_string(), Some(kind)).await?)
    }

    /// Emits a progress event on the job's stream, tagged with phase/step.
    pub async fn event(&self, kind: &str, mut body: Value) -> StepResult<()> {
        self.tag(&mut body);
        self.store.append_events(self.job_id, vec![NewJobEvent::new(kind, body)]).await?;
        Ok(())
    }

    /// A typed event of this step, serialized once with its phase/step
    /// tags (no [`Value`] on the way to the store: tofu's lines are made
    /// into events as they come, while the previous batch commits). `T`
    /// serializes as a map with no `phase` or `step` field.
    pub fn tagged<T: serde::Serialize>(&self, kind: &str, body: &T) -> StepResult<NewJobEvent> {
        NewJobEvent::of_step(kind, body, self.phase(), &self.node)
            .map_err(|e| StepError::internal(format!("serialize a `{kind}` event: {e}")))
    }

    /// Appends events made by [`StepCtx::tagged`] in one commit.
    pub async fn append(&self, events: Vec<NewJobEvent>) -> StepResult<()> {
        self.store.append_events(self.job_id, events).await?;
        Ok(())
    }

    fn tag(&self, body: &mut Value) {
        if let Some(o) = body.as_object_mut() {
            o.entry("phase").or_insert_with(|| self.phase().into());
            o.entry("step").or_insert_with(|| self.node.clone().into());
        }
    }

    /// Releases `step` (a node of this phase that this step produces, see
    /// [`NodeDef::released_by`](crate::NodeDef::released_by)) with `output`:
    /// journaled as that node's start and success, then its dependents may
    /// start. Idempotent: a node satisfied already (an earlier run released
    /// it) is left as it is, and `false` says so.
    pub async fn release<T: serde::Serialize>(&self, step: &str, output: &T) -> StepResult<bool> {
        let id =
            if step.contains('/') { step.to_owned() } else { format!("{}/{step}", self.phase()) };
        let r = self.releaser.as_ref().filter(|r| r.nodes.contains(&id)).ok_or_else(|| {
            StepError::internal(format!("`{}` does not release `{id}`", self.node))
        })?;
        let Some(prior) = r.pending.lock().expect("release set").remove(&id) else {
            return Ok(false);
        };
        let output = serde_json::to_value(output)
            .map_err(|e| StepError::internal(format!("output of `{id}`: {e}")))?;
        let tag = |state: &str| {
            NewJobEvent::new(
                "step",
                json!({ "state": state, "attempt": prior + 1, "step": id, "phase": self.phase(),
                        "released_by": self.node }),
            )
        };
        let journal = async {
            self.store
                .append_step_event_with(
                    self.job_id,
                    &id,
                    StepEvent::Started { attempt: prior + 1 },
                    vec![tag("started")],
                )
                .await?;
            self.store
                .append_step_event_with(
                    self.job_id,
                    &id,
                    StepEvent::Succeeded { output },
                    vec![tag("succeeded")],
                )
                .await
        };
        match journal.await {
            Ok((state, _)) => {
                // The loop is gone only when the drive stopped; the journal
                // holds the release for the next one.
                let _ = r.tx.send((id, state));
                Ok(true)
            }
            Err(e) => {
                r.pending.lock().expect("release set").insert(id, prior);
                Err(e.into())
            }
        }
    }

    /// Logs a line on the job's stream.
    pub async fn log(&self, message: impl Into<String>) -> StepResult<()> {
        self.event("log", json!({ "level": "info", "message": message.into() })).await
    }

    /// A bounded wait: polls `check` every [`StepEnv::poll_interval`] until it returns
    /// `Some`, the bound passes (a `Timeout` naming the reason) or the job is
    /// cancelled. The reason and bound are streamed when the wait starts and
    /// progress is streamed every `report_every` (every wait has
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
                Err(e) if e.class() == ErrorClass::Transient => {}
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
                _ = tokio::time::sleep(self.env.poll_interval()) => {}
                _ = self.cancel.cancelled() => {
                    return Err(StepError::Timeout { reason: format!("{reason} (cancelled)"), bound_s: started.elapsed().as_secs() });
                }
            }
        }
    }
}
