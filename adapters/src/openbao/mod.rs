//! OpenBao's HTTP API as the secrets hand-off uses it: seal status, init,
//! unseal, and authenticated reads and writes (mounts, auth methods,
//! policies, the Kubernetes auth role, KV v2, token revocation). The real
//! client is [`OpenBaoClient`].
//!
//! A replica is reached at a [`BaoEndpoint`]: directly (a URL), or in a
//! Sovereign through its Kubernetes API server's pod proxy. A sealed pod
//! fails its readiness probe, so the Service cannot reach it: each replica
//! is addressed as its pod.

pub mod client;

use async_trait::async_trait;
use cz_state::SecretString;
use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::AdapterResult;

pub use client::OpenBaoClient;

/// What `sys/seal-status` says of a replica.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct BaoStatus {
    pub initialized: bool,
    pub sealed: bool,
    /// Shares needed to unseal (0 before init).
    #[serde(default)]
    pub threshold: u8,
    /// Shares made at init (0 before init).
    #[serde(default)]
    pub shares: u8,
    /// Shares given so far towards the next unseal.
    #[serde(default)]
    pub progress: u8,
    /// The seal: `shamir`, `static`, ...
    #[serde(default)]
    pub seal_type: String,
    /// The raft cluster's id, once the replica is unsealed (a sealed or
    /// uninitialized replica does not say): two replicas with the same id
    /// are one cluster.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cluster_id: Option<String>,
}

/// What `sys/leader` says: where the active node's API is advertised.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct BaoLeader {
    /// This replica is the active node.
    pub is_self: bool,
    /// The active node's advertised API address (its `api_addr`): what a
    /// new replica joins through.
    pub leader_address: String,
}

/// What `sys/init` is asked for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BaoInitRequest {
    pub shares: u8,
    pub threshold: u8,
    /// An auto-unseal (static) seal: the shares are recovery keys
    /// (`recovery_shares`), not unseal keys.
    pub recovery: bool,
}

/// `sys/init`'s answer: shown once, never stored in the clear.
#[derive(Clone, Debug)]
pub struct BaoInit {
    /// The unseal shares, or with an auto-unseal seal the recovery keys.
    pub keys: Vec<SecretString>,
    pub root_token: SecretString,
}

/// Where one OpenBao replica's API is reached.
#[derive(Clone, PartialEq, Eq)]
pub struct BaoEndpoint {
    /// The base URL the API's `/v1/...` paths go under.
    pub url: String,
    /// Through a Kubernetes API server: its kubeconfig (TLS verified
    /// against the cluster's CA, authenticated by its client certificate).
    pub via: Option<SecretString>,
}

impl std::fmt::Debug for BaoEndpoint {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BaoEndpoint")
            .field("url", &self.url)
            .field("via_kubernetes", &self.via.is_some())
            .finish()
    }
}

impl BaoEndpoint {
    /// A replica reached directly at `url`.
    pub fn direct(url: impl Into<String>) -> BaoEndpoint {
        BaoEndpoint { url: url.into().trim_end_matches('/').to_owned(), via: None }
    }

    /// Pod `pod` (`openbao-0`) in `namespace`, port `port`, through the API
    /// server of `kubeconfig` (`…/api/v1/namespaces/{ns}/pods/{pod}:{port}/proxy`).
    pub fn pod(
        kubeconfig: &SecretString,
        namespace: &str,
        pod: &str,
        port: u16,
    ) -> AdapterResult<BaoEndpoint> {
        let server = crate::kube::kubeconfig::endpoint(kubeconfig.expose())?.server;
        Ok(BaoEndpoint {
            url: format!(
                "{}/api/v1/namespaces/{namespace}/pods/{pod}:{port}/proxy",
                server.trim_end_matches('/')
            ),
            via: Some(kubeconfig.clone()),
        })
    }
}

#[async_trait]
pub trait BaoApi: Send + Sync {
    /// `GET sys/seal-status` (unauthenticated).
    async fn status(&self, at: &BaoEndpoint) -> AdapterResult<BaoStatus>;
    /// `POST sys/init`; `Conflict` if it is initialized already.
    async fn init(&self, at: &BaoEndpoint, req: BaoInitRequest) -> AdapterResult<BaoInit>;
    /// `POST sys/unseal` with one share.
    async fn unseal(&self, at: &BaoEndpoint, key: &SecretString) -> AdapterResult<BaoStatus>;
    /// `GET sys/leader` (unauthenticated): the active node, as an unsealed
    /// replica of an initialized cluster sees it.
    async fn leader(&self, at: &BaoEndpoint) -> AdapterResult<BaoLeader>;
    /// `POST sys/storage/raft/join` (unauthenticated): an uninitialized
    /// replica joins the raft cluster whose active node advertises
    /// `leader_api_addr`, as a voter or (`non_voter`) a replica that never
    /// counts for quorum. Joining again is a no-op or, once the node has
    /// raft state, `Conflict` (as is joining a node of another cluster):
    /// callers check `status` first and the `cluster_id` after. With
    /// the Shamir seal the replica then waits sealed for the cluster's
    /// shares; an auto-unseal seal unseals it on its own.
    async fn raft_join(
        &self,
        at: &BaoEndpoint,
        leader_api_addr: &str,
        non_voter: bool,
    ) -> AdapterResult<()>;
    /// Destroys the storage of the OpenBao cluster `at` belongs to (every
    /// replica), leaving it uninitialized. Only ever asked for before
    /// anything was written to it. The real client refuses: that is an
    /// operator's call (runbooks/needs-operator-precondition.md).
    async fn wipe(&self, at: &BaoEndpoint) -> AdapterResult<()>;
    /// An authenticated write (`POST /v1/<path>`); the answer's body, or
    /// null for `204`.
    async fn write(
        &self,
        at: &BaoEndpoint,
        token: &SecretString,
        path: &str,
        body: Value,
    ) -> AdapterResult<Value>;
    /// An authenticated delete (`DELETE /v1/<path>`); a path that is not
    /// there is fine.
    async fn delete(&self, at: &BaoEndpoint, token: &SecretString, path: &str)
    -> AdapterResult<()>;
    /// An authenticated read (`GET /v1/<path>`); `None` for `404`.
    async fn read(
        &self,
        at: &BaoEndpoint,
        token: &SecretString,
        path: &str,
    ) -> AdapterResult<Option<Value>>;
}
