//! The `hetzner` backend's OpenBao adapter, until the real one is built.
//!
//! Not a fake: every call fails with a precondition that says so, so a
//! `hetzner` job runs everything up to `secrets-handoff` for real and then
//! pauses at its first step, with the reason in the job's events. Nothing
//! is pretended. The `sim` backend has a simulated OpenBao (`cz-sim`).

use async_trait::async_trait;
use cz_engine::StepError;
use cz_state::SecretString;
use serde_json::Value;

use crate::{AdapterResult, BaoApi, BaoInit, BaoStatus};

/// Fails every call: the real OpenBao adapter is not built yet.
#[derive(Clone, Copy, Debug, Default)]
pub struct Unbuilt;

impl Unbuilt {
    fn refuse<T>(&self, op: &str) -> AdapterResult<T> {
        Err(StepError::Precondition {
            message: format!("the hetzner backend has no real OpenBao adapter yet (`{op}`)"),
            remediation: "The cloud objects and the cluster made so far are real and labelled. \
                Abandon the job and run `destroy` to remove them, or keep them for when the \
                adapter lands; use `--backend sim` for a full run."
                .into(),
        })
    }
}

#[async_trait]
impl BaoApi for Unbuilt {
    async fn status(&self, _endpoint: &str) -> AdapterResult<BaoStatus> {
        self.refuse("status")
    }
    async fn init(&self, _endpoint: &str, _shares: u8, _threshold: u8) -> AdapterResult<BaoInit> {
        self.refuse("init")
    }
    async fn unseal(&self, _endpoint: &str, _key: &SecretString) -> AdapterResult<BaoStatus> {
        self.refuse("unseal")
    }
    async fn wipe(&self, _endpoint: &str) -> AdapterResult<()> {
        self.refuse("wipe")
    }
    async fn write(
        &self,
        _endpoint: &str,
        _token: &SecretString,
        _path: &str,
        _body: Value,
    ) -> AdapterResult<Value> {
        self.refuse("write")
    }
    async fn read(
        &self,
        _endpoint: &str,
        _token: &SecretString,
        _path: &str,
    ) -> AdapterResult<Option<Value>> {
        self.refuse("read")
    }
}
