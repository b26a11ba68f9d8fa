//! The cloud API as pre-flight and the label sweep use it: token scope,
//! project limits, the catalogue, and label-selected objects. One real
//! client, [`HcloudClient`] (Hetzner Cloud REST, with the project's shared
//! rate budget); the fakes live in `cz-sim`.

pub mod budget;
pub mod catalogue;
pub mod hcloud;
pub mod selector;
pub mod shim;

use std::collections::BTreeMap;

use async_trait::async_trait;
use cz_state::SecretString;
use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::AdapterResult;

pub use budget::{BudgetConfig, BudgetRegistry, RateBudget, project_key};
pub use hcloud::{HcloudClient, PollConfig, ProjectQuota, RetryConfig, cause_of};
pub use selector::{Selector, selector_matches, valid_label_key, valid_label_value};

/// Where an object of `kind` comes in a teardown: what uses others first
/// (servers, load balancers), then what can be attached to a server
/// (volumes, IPs), then what is used (firewalls, networks, placement
/// groups, keys). Hetzner refuses, for one, to delete a firewall still
/// applied to a server (`resource_in_use`).
pub fn deletion_rank(kind: &str) -> u8 {
    match kind {
        "server" | "load_balancer" => 0,
        "volume" | "primary_ip" | "floating_ip" => 1,
        _ => 2,
    }
}

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
    /// How many targets (servers, label-selected ones each counted) it
    /// takes.
    pub max_targets: u32,
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

/// A power action on a server: Hetzner's
/// `POST /v1/servers/{id}/actions/{poweron|reset}`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ServerAction {
    /// Power on a server that is `off`.
    Poweron,
    /// A hard reset: the power cut and restored (a hung boot).
    Reset,
}

impl ServerAction {
    /// The action's name in the API's path.
    pub fn as_str(self) -> &'static str {
        match self {
            ServerAction::Poweron => "poweron",
            ServerAction::Reset => "reset",
        }
    }
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
    /// One object by kind and id (one request); `None` when it is gone.
    async fn object(
        &self,
        token: &SecretString,
        kind: &str,
        id: i64,
    ) -> AdapterResult<Option<CloudObject>>;
    /// Deletes an object; already gone is success.
    async fn delete(&self, token: &SecretString, obj: &CloudObject) -> AdapterResult<()>;
    /// Runs a power action on server `id` and waits until the API reports
    /// it done. A server that is gone is `NotFound`.
    async fn server_action(
        &self,
        token: &SecretString,
        id: i64,
        action: ServerAction,
    ) -> AdapterResult<()>;
}
