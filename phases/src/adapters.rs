//! The adapter traits: one narrow trait per external system.
//!
//! Each trait has one real implementation (arriving with its phase issue:
//! Hetzner REST, the tofu CLI, ssh2, kube, OpenBao and PowerDNS HTTP) and one
//! hand-written fake in [`crate::sim`] with failure injection. Steps only see
//! these traits, through [`Backend`]. No mocking framework: see
//! omicron's `illumos-utils/src/fakes/README.adoc` for why.
//!
//! Errors are [`StepError`]s whose `Cause` the adapter decided from its
//! system's own codes; the engine classifies from there.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;

use async_trait::async_trait;
use cz_state::SecretString;
use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::error::StepError;

pub type AdapterResult<T> = Result<T, StepError>;

// === cloud API (pre-flight, label sweep) ===

/// What a cloud token may do.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum TokenScope {
    Read,
    ReadWrite,
}

/// A project limit: how many exist and how many may.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Limit {
    pub used: u32,
    pub max: u32,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ProjectLimits {
    pub servers: Limit,
    pub load_balancers: Limit,
    pub networks: Limit,
    pub placement_groups: Limit,
}

/// A server type (SKU) with its per-location prices.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ServerType {
    pub name: String,
    pub cores: u32,
    pub memory_gb: f64,
    pub deprecated: bool,
    /// location → (hourly, monthly) gross price in EUR.
    pub prices: BTreeMap<String, (f64, f64)>,
}

/// A load balancer type with its per-location prices.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct LoadBalancerType {
    pub name: String,
    pub prices: BTreeMap<String, (f64, f64)>,
}

/// An object in the cloud project, as a label sweep sees it.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct CloudObject {
    /// `server`, `network`, `firewall`, `load_balancer`, `ssh_key`,
    /// `placement_group`, `volume`, `primary_ip`.
    pub kind: String,
    pub id: i64,
    pub name: String,
    pub labels: BTreeMap<String, String>,
    /// Kind-specific attributes (IPs, location, type).
    #[serde(default)]
    pub attrs: Value,
}

#[async_trait]
pub trait CloudApi: Send + Sync {
    /// Proves the token's scope by a harmless write where the API allows it.
    async fn token_scope(&self, token: &SecretString) -> AdapterResult<TokenScope>;
    async fn limits(&self, token: &SecretString) -> AdapterResult<ProjectLimits>;
    /// Locations that exist and accept new servers.
    async fn locations(&self, token: &SecretString) -> AdapterResult<Vec<String>>;
    async fn server_type(
        &self,
        token: &SecretString,
        name: &str,
    ) -> AdapterResult<Option<ServerType>>;
    async fn load_balancer_type(
        &self,
        token: &SecretString,
        name: &str,
    ) -> AdapterResult<Option<LoadBalancerType>>;
    /// Every object whose labels match `selector` (Kubernetes syntax).
    async fn list(&self, token: &SecretString, selector: &str) -> AdapterResult<Vec<CloudObject>>;
    /// Objects whose name is `name`, of any kind (collision checks).
    async fn find_by_name(
        &self,
        token: &SecretString,
        name: &str,
    ) -> AdapterResult<Vec<CloudObject>>;
    /// Deletes an object; already gone is success.
    async fn delete(&self, token: &SecretString, obj: &CloudObject) -> AdapterResult<()>;
}

// === OpenTofu ===

/// A per-region OpenTofu workspace under the data directory (never a temp
/// dir: F-05).
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

/// Where apply/destroy stream their events. Sent in order; the step
/// forwards them to the job's event stream.
pub type TofuSink = tokio::sync::mpsc::UnboundedSender<TofuEvent>;

#[async_trait]
pub trait TofuApi: Send + Sync {
    /// The CLI's name and version (`OpenTofu 1.8.2`, `Terraform 1.11.4`);
    /// an error if the binary is missing or too old to be used (F-02).
    async fn version(&self) -> AdapterResult<String>;
    async fn init(&self, ws: &Workspace) -> AdapterResult<()>;
    async fn plan(&self, ws: &Workspace, token: &SecretString) -> AdapterResult<PlanSummary>;
    async fn apply(
        &self,
        ws: &Workspace,
        token: &SecretString,
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

// === SSH ===

/// The per-Sovereign key pair the provisioner logs in with.
#[derive(Clone)]
pub struct ProvisionerKey {
    /// OpenSSH private key (`-----BEGIN OPENSSH PRIVATE KEY-----`).
    pub private: SecretString,
    /// `ssh-ed25519 AAAA… catalyst-zero@<sovereign>`.
    pub public: String,
}

impl std::fmt::Debug for ProvisionerKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ProvisionerKey").field("public", &self.public).finish_non_exhaustive()
    }
}

impl ProvisionerKey {
    /// A new Ed25519 key pair from the OS RNG.
    pub fn generate(comment: &str) -> Result<ProvisionerKey, crate::error::StepError> {
        use ssh_key::rand_core::OsRng;
        let mut key = ssh_key::PrivateKey::random(&mut OsRng, ssh_key::Algorithm::Ed25519)
            .map_err(|e| {
                crate::error::StepError::internal(format!("generating an SSH key: {e}"))
            })?;
        key.set_comment(comment);
        let private = key
            .to_openssh(ssh_key::LineEnding::LF)
            .map_err(|e| crate::error::StepError::internal(format!("encoding the SSH key: {e}")))?;
        let public = key.public_key().to_openssh().map_err(|e| {
            crate::error::StepError::internal(format!("encoding the SSH public key: {e}"))
        })?;
        Ok(ProvisionerKey { private: SecretString::new(private.to_string()), public })
    }

    /// The public half of an OpenSSH private key.
    pub fn from_private(private: SecretString) -> Result<ProvisionerKey, crate::error::StepError> {
        let key = ssh_key::PrivateKey::from_openssh(private.expose()).map_err(|e| {
            crate::error::StepError::internal(format!("the stored SSH key does not parse: {e}"))
        })?;
        let public = key.public_key().to_openssh().map_err(|e| {
            crate::error::StepError::internal(format!("encoding the SSH public key: {e}"))
        })?;
        Ok(ProvisionerKey { private, public })
    }
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Host {
    /// Name for logs and events (the server name).
    pub name: String,
    pub address: String,
    pub port: u16,
    pub user: String,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct CommandOutput {
    pub status: i32,
    pub stdout: String,
    pub stderr: String,
}

#[async_trait]
pub trait SshApi: Send + Sync {
    /// Connects once; returns the host key fingerprint (SHA256:…).
    async fn probe(&self, host: &Host) -> AdapterResult<String>;
    /// Runs a command as `host.user`, authenticated with `key`, after
    /// checking the host key against the pinned `fingerprint`; a non-zero
    /// exit is an `Ok` with the status (callers decide); connection problems,
    /// a changed host key and refused authentication are errors.
    async fn run(
        &self,
        host: &Host,
        fingerprint: &str,
        key: &ProvisionerKey,
        command: &str,
    ) -> AdapterResult<CommandOutput>;
    /// Writes `contents` to `path` atomically (temporary name, then rename),
    /// creating its directory, with `mode`.
    async fn upload(
        &self,
        host: &Host,
        fingerprint: &str,
        key: &ProvisionerKey,
        path: &str,
        contents: &[u8],
        mode: u32,
    ) -> AdapterResult<()>;
}

// === Kubernetes ===

/// A reference to an object for get/delete.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct ObjectRef {
    pub api_version: String,
    pub kind: String,
    pub namespace: Option<String>,
    pub name: String,
}

impl ObjectRef {
    pub fn of(obj: &Value) -> Option<ObjectRef> {
        Some(ObjectRef {
            api_version: obj.get("apiVersion")?.as_str()?.to_owned(),
            kind: obj.get("kind")?.as_str()?.to_owned(),
            namespace: obj
                .pointer("/metadata/namespace")
                .and_then(Value::as_str)
                .map(str::to_owned),
            name: obj.pointer("/metadata/name")?.as_str()?.to_owned(),
        })
    }
}

#[async_trait]
pub trait KubeApi: Send + Sync {
    /// Server-side apply of each object under `field_manager`.
    async fn apply(
        &self,
        kubeconfig: &SecretString,
        field_manager: &str,
        objects: &[Value],
    ) -> AdapterResult<()>;
    async fn get(&self, kubeconfig: &SecretString, r: &ObjectRef) -> AdapterResult<Option<Value>>;
    async fn list(
        &self,
        kubeconfig: &SecretString,
        api_version: &str,
        kind: &str,
        selector: &str,
    ) -> AdapterResult<Vec<Value>>;
    /// Deletes; already gone is success. An object with finalizers is gone
    /// only once its controllers are done ([`KubeApi::wait_until`]).
    async fn delete(&self, kubeconfig: &SecretString, r: &ObjectRef) -> AdapterResult<()>;
    /// The API server's version through the kubeconfig's own endpoint, TLS
    /// verified against its CA and authenticated (F-12).
    async fn server_version(&self, kubeconfig: &SecretString) -> AdapterResult<String>;
    /// Waits, by watching the object (not polling), until `until` holds;
    /// `Timeout` past `bound`.
    async fn wait_until(
        &self,
        kubeconfig: &SecretString,
        r: &ObjectRef,
        until: Until,
        bound: std::time::Duration,
    ) -> AdapterResult<()>;
    /// `GET` `path` on a Service through the API server's proxy
    /// (`/api/v1/namespaces/{ns}/services/{service}:{port}/proxy{path}`):
    /// the status and body as answered. A 503 "no endpoints available" is
    /// an answer, not an error; only a failure to reach the API server is.
    async fn service_get(
        &self,
        kubeconfig: &SecretString,
        namespace: &str,
        service: &str,
        port: u16,
        path: &str,
    ) -> AdapterResult<(u16, String)>;
}

/// What [`KubeApi::wait_until`] waits for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Until {
    /// The object is gone (a finalizer, Flux's uninstall, ran).
    Deleted,
    /// A condition of this type is `True` (a CRD's `Established`).
    Condition(&'static str),
}

impl Until {
    /// Whether `obj` (None: absent) satisfies it.
    pub fn holds(self, obj: Option<&Value>) -> bool {
        match self {
            Until::Deleted => obj.is_none(),
            Until::Condition(ty) => obj
                .and_then(|o| o.pointer("/status/conditions"))
                .and_then(Value::as_array)
                .is_some_and(|cs| cs.iter().any(|c| c["type"] == ty && c["status"] == "True")),
        }
    }

    pub fn describe(self) -> String {
        match self {
            Until::Deleted => "to be deleted".into(),
            Until::Condition(ty) => format!("to be {ty}"),
        }
    }
}

// === OpenBao ===

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

// === PowerDNS ===

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Rrset {
    pub name: String,
    pub rtype: String,
    pub ttl: u32,
    pub records: Vec<String>,
}

/// A DNS name in absolute form, with its trailing dot (as PowerDNS wants
/// zone and RRset names).
pub fn absolute_name(name: &str) -> String {
    if name.ends_with('.') { name.to_owned() } else { format!("{name}.") }
}

#[async_trait]
pub trait DnsApi: Send + Sync {
    async fn zone_exists(&self, zone: &str) -> AdapterResult<bool>;
    /// The zone's `account` (who made it; empty for none), `None` when the
    /// zone does not exist.
    async fn zone_account(&self, zone: &str) -> AdapterResult<Option<String>>;
    /// Creates a Native zone with these NS and `account`, in one call (so a
    /// crash cannot leave a zone without its owner); an existing zone is
    /// success.
    async fn create_zone(
        &self,
        zone: &str,
        nameservers: &[String],
        account: &str,
    ) -> AdapterResult<()>;
    /// The values of a zone metadata kind (`X-…`); empty when unset.
    async fn zone_meta(&self, zone: &str, kind: &str) -> AdapterResult<Vec<String>>;
    /// Replaces a zone metadata kind; no values removes it.
    async fn set_zone_meta(&self, zone: &str, kind: &str, values: &[String]) -> AdapterResult<()>;
    /// Signs the zone with DNSSEC (idempotent: a signed zone keeps its
    /// keys) and returns the DS records (SHA-256 digests) its parent must
    /// publish, as `<key tag> <algorithm> 2 <digest>`.
    async fn secure_zone(&self, zone: &str) -> AdapterResult<Vec<String>>;
    /// Every zone the server has.
    async fn list_zones(&self) -> AdapterResult<Vec<String>>;
    async fn delete_zone(&self, zone: &str) -> AdapterResult<()>;
    /// PATCH with changetype REPLACE for each rrset.
    async fn replace_rrsets(&self, zone: &str, rrsets: &[Rrset]) -> AdapterResult<()>;
    /// PATCH with changetype DELETE; absent is success.
    async fn delete_rrsets(&self, zone: &str, names: &[(String, String)]) -> AdapterResult<()>;
    /// A DNS query (not the API) to the authoritative server.
    async fn query(&self, name: &str, rtype: &str) -> AdapterResult<Vec<String>>;
    /// The same query to another server: a public resolver (recursion
    /// desired), as the world will see the Sovereign (F-44).
    async fn query_via(
        &self,
        server: std::net::SocketAddr,
        name: &str,
        rtype: &str,
    ) -> AdapterResult<Vec<String>>;
}

/// What the `infra` phase renders into a region's workspace for its tofu.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum InfraModule {
    /// Only the JSON resource manifest, which the sim tofu applies.
    Manifest,
    /// The hcloud-provider module from `cloud-templates/hetzner/` (production).
    Hcloud {
        templates: PathBuf,
        /// Where the provisioner connects from: the firewall opens SSH and
        /// 6443 to these CIDRs only.
        provisioner_cidrs: Vec<String>,
    },
    /// The offline stand-in from `cloud-templates/hetzner-offline/`: one
    /// `terraform_data` per object whose `local-exec` provisioners create and
    /// delete it through the Hetzner API (`catalyst-zero hcloud-shim`). For
    /// machines where the hcloud provider cannot be downloaded; the real CLI
    /// still plans, applies, locks and streams events, and the objects are
    /// really created in the API at `endpoint`.
    Offline { templates: PathBuf, shim: PathBuf, endpoint: String },
}

impl InfraModule {
    /// Whether objects missing from state are adopted by `tofu import`
    /// (the offline stand-in adopts by name itself).
    pub fn adopts_by_import(&self) -> bool {
        !matches!(self, InfraModule::Offline { .. })
    }
}

/// Where the `cluster` phase gets K3s from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum K3sSource {
    /// Nothing is uploaded or fetched: the sim backend's hosts need no binary.
    Simulated,
    /// Air gap: `dir` holds the release's `k3s`, `install.sh` and a
    /// `SHA256SUMS` covering both; each is verified, then uploaded to nodes
    /// whose copy differs.
    AirGap { dir: PathBuf },
    /// Each node fetches the installer from `script_url`, refuses it unless
    /// its SHA-256 is `script_sha256`, and the installer downloads the pinned
    /// release from `release_url` (GitHub's by default), verifying the binary
    /// against that release's own checksum file.
    Download { script_url: String, script_sha256: String, release_url: String },
}

/// How long the bounded waits of the phases may take before they give up
/// with their reason (F-17, F-22: no silent 25-minute hangs).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Bounds {
    /// A new server's SSH to accept connections.
    pub host_boot: std::time::Duration,
    /// Every node Ready.
    pub nodes_ready: std::time::Duration,
    /// CoreDNS available.
    pub coredns: std::time::Duration,
    /// The API to answer through the load balancer.
    pub api_endpoint: std::time::Duration,
    /// One kit component healthy by its probe (Flux retries in between).
    pub kit_component: std::time::Duration,
    /// A DNS reservation's lease; the daemon renews it well before.
    pub dns_lease: std::time::Duration,
    /// The Sovereign's records visible through every public resolver
    /// (parent NS TTLs are an hour: F-44).
    pub dns_propagation: std::time::Duration,
    /// A bring-your-own domain's NS pointed at us by its owner.
    pub byo_delegation: std::time::Duration,
}

impl Default for Bounds {
    fn default() -> Self {
        use std::time::Duration;
        Bounds {
            host_boot: Duration::from_secs(600),
            nodes_ready: Duration::from_secs(900),
            coredns: Duration::from_secs(600),
            api_endpoint: Duration::from_secs(300),
            kit_component: Duration::from_secs(900),
            dns_lease: Duration::from_secs(600),
            dns_propagation: Duration::from_secs(1800),
            byo_delegation: Duration::from_secs(24 * 3600),
        }
    }
}

/// The adapters a job runs against.
#[derive(Clone)]
pub struct Backend {
    /// `sim` or `hetzner`.
    pub name: String,
    pub cloud: Arc<dyn CloudApi>,
    pub tofu: Arc<dyn TofuApi>,
    pub ssh: Arc<dyn SshApi>,
    pub kube: Arc<dyn KubeApi>,
    pub bao: Arc<dyn BaoApi>,
    pub dns: Arc<dyn DnsApi>,
    /// The customers' registrars (`byo-api` domains).
    pub registrars: Arc<dyn crate::registrar::Registrars>,
    /// Where per-job workspaces live (under the data directory).
    pub workspace_root: PathBuf,
    /// What `infra.render` writes for tofu.
    pub infra: InfraModule,
    /// Where nodes get K3s from.
    pub k3s: K3sSource,
    /// The SSH port of every node (22).
    pub ssh_port: u16,
    pub bounds: Bounds,
    /// Poll interval for bounded waits.
    pub poll: std::time::Duration,
    /// Public resolvers the propagation gate asks (F-44); none: only the
    /// authoritative server is asked.
    pub public_resolvers: Vec<std::net::SocketAddr>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generated_keys_round_trip_and_redact() {
        let k = ProvisionerKey::generate("catalyst-zero@test").unwrap();
        assert!(k.public.starts_with("ssh-ed25519 ") && k.public.ends_with("catalyst-zero@test"));
        assert!(k.private.expose().starts_with("-----BEGIN OPENSSH PRIVATE KEY-----"));
        let again = ProvisionerKey::from_private(k.private.clone()).unwrap();
        assert_eq!(again.public, k.public);
        assert!(!format!("{k:?}").contains("PRIVATE"));
    }
}
