//! Adapters of the `hetzner` backend whose real implementation has not been
//! built yet: SSH (the `cluster` phase's issue), Kubernetes (the
//! `bootstrap-kit` issue) and OpenBao (the custody/hand-off issue).
//!
//! They are not fakes: every call fails with a precondition naming what is
//! missing (except `KubeApi::server_version`, the real F-12 endpoint check), so a `hetzner` job runs `preflight`, DNS and `infra` for real and
//! then pauses at the first step that needs one of these, with the reason in
//! the job's events. Nothing is pretended.

use async_trait::async_trait;
use cz_state::SecretString;
use serde_json::Value;

use crate::{
    AdapterResult, BaoApi, BaoInit, BaoStatus, CommandOutput, Host, KubeApi, ObjectRef,
    ProvisionerKey, SshApi,
};
use cz_engine::StepError;

/// Fails every call: the real adapter of `system` arrives with `issue`.
#[derive(Clone, Debug)]
pub struct Unbuilt {
    pub system: &'static str,
    pub issue: &'static str,
}

impl Unbuilt {
    pub const SSH: Unbuilt = Unbuilt { system: "SSH", issue: "the `cluster` phase issue" };
    pub const KUBE: Unbuilt =
        Unbuilt { system: "Kubernetes", issue: "the `bootstrap-kit` phase issue" };
    pub const BAO: Unbuilt = Unbuilt { system: "OpenBao", issue: "the custody/hand-off issue" };

    fn refuse<T>(&self, op: &str) -> AdapterResult<T> {
        Err(StepError::Precondition {
            message: format!(
                "the hetzner backend has no real {} adapter yet (`{op}`); it arrives with {}",
                self.system, self.issue
            ),
            remediation: "The cloud objects created so far are real and labelled. Abandon the \
                job and run `destroy` to remove them, or keep them for when the adapter lands; \
                use `--backend sim` for a full run."
                .into(),
        })
    }
}

#[async_trait]
impl SshApi for Unbuilt {
    async fn probe(&self, _host: &Host) -> AdapterResult<String> {
        self.refuse("probe")
    }
    async fn run(
        &self,
        _h: &Host,
        _fp: &str,
        _key: &ProvisionerKey,
        _command: &str,
    ) -> AdapterResult<CommandOutput> {
        self.refuse("run")
    }
    async fn upload(
        &self,
        _h: &Host,
        _fp: &str,
        _key: &ProvisionerKey,
        _path: &str,
        _contents: &[u8],
        _mode: u32,
    ) -> AdapterResult<()> {
        self.refuse("upload")
    }
}

#[async_trait]
impl KubeApi for Unbuilt {
    async fn apply(&self, _k: &SecretString, _fm: &str, _objects: &[Value]) -> AdapterResult<()> {
        self.refuse("apply")
    }
    async fn get(&self, _k: &SecretString, _r: &ObjectRef) -> AdapterResult<Option<Value>> {
        self.refuse("get")
    }
    async fn list(
        &self,
        _k: &SecretString,
        _api_version: &str,
        _kind: &str,
        _selector: &str,
    ) -> AdapterResult<Vec<Value>> {
        self.refuse("list")
    }
    async fn delete(&self, _k: &SecretString, _r: &ObjectRef) -> AdapterResult<()> {
        self.refuse("delete")
    }
    async fn wait_until(
        &self,
        _k: &SecretString,
        _r: &ObjectRef,
        _until: crate::Until,
        _bound: std::time::Duration,
    ) -> AdapterResult<()> {
        self.refuse("watch")
    }
    async fn service_get(
        &self,
        _k: &SecretString,
        _ns: &str,
        _service: &str,
        _port: u16,
        _path: &str,
    ) -> AdapterResult<(u16, String)> {
        self.refuse("service proxy")
    }
    /// Real already: the endpoint check needs no Kubernetes client.
    async fn server_version(&self, kubeconfig: &SecretString) -> AdapterResult<String> {
        crate::kube::kubeconfig::server_version(kubeconfig, std::time::Duration::from_secs(10))
            .await
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
