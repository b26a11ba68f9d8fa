//! OpenTofu: per-region workspaces under the data directory, typed
//! `-json` events, and the one real runner, [`TofuCli`] (the `tofu` binary,
//! or `terraform`, which is CLI-compatible).

pub mod cli;

use std::path::PathBuf;

use async_trait::async_trait;
use cz_state::SecretString;
use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::AdapterResult;

pub use cli::{TofuCli, find_cli};

/// A per-region OpenTofu workspace under the data directory (never a temp
/// dir: its cleaning would lose the state).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Workspace {
    pub dir: PathBuf,
}

/// One line of `tofu apply -json`, typed. Serialized with tofu's own name
/// for the kind, `type`: in the job's stream `kind` is the event's (`tofu`).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct TofuEvent {
    #[serde(rename = "type")]
    /// `apply_start`, `apply_progress`, `apply_complete`, `apply_errored`,
    /// `diagnostic`, `change_summary`, `refresh_complete`, …
    pub kind: String,
    pub address: Option<String>,
    pub action: Option<String>,
    pub elapsed_s: Option<f64>,
    /// The object's id, where tofu reports one (`apply_complete`'s
    /// `hook.id_value`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub id: Option<String>,
    pub message: String,
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct PlanSummary {
    pub add: u32,
    pub change: u32,
    pub destroy: u32,
}

/// One resource of the tofu state (`show -json`).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct StateResource {
    pub address: String,
    pub kind: String,
    pub id: i64,
    pub name: String,
    #[serde(default)]
    pub attrs: Value,
}

/// tofu's own `-parallelism` default.
pub const DEFAULT_PARALLELISM: u32 = 10;

/// Where apply/destroy stream their events. Sent in order; the step
/// forwards them to the job's event stream.
pub type TofuSink = tokio::sync::mpsc::UnboundedSender<TofuEvent>;

/// The events of one commit to the job's stream: waits for the next event
/// of `rx`, then takes what else has arrived, up to `max` (100k lines must
/// not be 100k fsyncs). `None` once the sender is gone and all is taken.
pub async fn next_batch<T>(
    rx: &mut tokio::sync::mpsc::UnboundedReceiver<T>,
    max: usize,
) -> Option<Vec<T>> {
    let mut batch = vec![rx.recv().await?];
    while batch.len() < max
        && let Ok(ev) = rx.try_recv()
    {
        batch.push(ev);
    }
    Some(batch)
}

#[async_trait]
pub trait TofuApi: Send + Sync {
    /// The CLI's name and version (`OpenTofu 1.8.2`, `Terraform 1.11.4`);
    /// an error if the binary is missing or too old to be used.
    async fn version(&self) -> AdapterResult<String>;
    async fn init(&self, ws: &Workspace) -> AdapterResult<()>;
    async fn plan(&self, ws: &Workspace, token: &SecretString) -> AdapterResult<PlanSummary>;
    /// `apply -auto-approve`. `replace` names state addresses to destroy and
    /// create again (`-replace=ADDR`): objects that are in the state but
    /// gone from the cloud, which only a provider's refresh would notice.
    /// `parallelism` is how many objects tofu creates at once
    /// (`-parallelism`; tofu's own default is [`DEFAULT_PARALLELISM`]).
    async fn apply(
        &self,
        ws: &Workspace,
        token: &SecretString,
        replace: &[String],
        parallelism: u32,
        sink: TofuSink,
    ) -> AdapterResult<()>;
    async fn output(&self, ws: &Workspace) -> AdapterResult<Value>;
    async fn state(&self, ws: &Workspace) -> AdapterResult<Vec<StateResource>>;
    /// `tofu import ADDRESS ID`: adopts an object created by an apply whose
    /// state write was lost (kill -9 between create and state write).
    async fn import(
        &self,
        ws: &Workspace,
        token: &SecretString,
        address: &str,
        id: i64,
    ) -> AdapterResult<()>;
    async fn destroy(
        &self,
        ws: &Workspace,
        token: &SecretString,
        sink: TofuSink,
    ) -> AdapterResult<()>;
}
