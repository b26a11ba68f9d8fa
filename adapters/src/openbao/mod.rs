//! OpenBao's HTTP API as the secrets hand-off uses it.

pub mod unbuilt;

use async_trait::async_trait;
use cz_state::SecretString;
use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::AdapterResult;

pub use unbuilt::Unbuilt;

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct BaoStatus {
    pub initialized: bool,
    pub sealed: bool,
}

#[derive(Clone, Debug)]
pub struct BaoInit {
    pub keys: Vec<SecretString>,
    pub root_token: SecretString,
}

#[async_trait]
pub trait BaoApi: Send + Sync {
    async fn status(&self, endpoint: &str) -> AdapterResult<BaoStatus>;
    /// `sys/init`; fails with `Conflict` if already initialized.
    async fn init(&self, endpoint: &str, shares: u8, threshold: u8) -> AdapterResult<BaoInit>;
    async fn unseal(&self, endpoint: &str, key: &SecretString) -> AdapterResult<BaoStatus>;
    /// Destroys the storage of the OpenBao cluster `endpoint` belongs to
    /// (every replica), leaving it uninitialized. Real implementation:
    /// delete the StatefulSet's PVCs and pods through the Kubernetes API.
    /// Only ever used before anything was stored in it.
    async fn wipe(&self, endpoint: &str) -> AdapterResult<()>;
    async fn write(
        &self,
        endpoint: &str,
        token: &SecretString,
        path: &str,
        body: Value,
    ) -> AdapterResult<Value>;
    async fn read(
        &self,
        endpoint: &str,
        token: &SecretString,
        path: &str,
    ) -> AdapterResult<Option<Value>>;
}
