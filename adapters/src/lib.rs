//! Catalyst-Zero's outside world: per system a narrow trait and its real
//! client (omicron's `clients/*`). Steps see only the traits, through the
//! [`Backend`] the daemon wires; the `sim` backend and the wire-level fakes
//! that stand in for these systems in tests live in `cz-sim`, which this
//! crate does not know.
//!
//! | system | trait | real client |
//! |---|---|---|
//! | Hetzner Cloud API | [`cloud::CloudApi`] | [`cloud::HcloudClient`] |
//! | OpenTofu | [`tofu::TofuApi`] | [`tofu::TofuCli`] |
//! | SSH | [`ssh::SshApi`] | [`ssh::SshClient`] |
//! | Kubernetes | [`kube::KubeApi`] | [`kube::KubeClient`] |
//! | PowerDNS + DNS queries | [`dns::DnsApi`] | [`dns::PowerDns`] |
//! | registrars | [`registrar::Registrars`] | [`registrar::HttpRegistrars`] |
//! | OpenBao | [`openbao::BaoApi`] | [`openbao::OpenBaoClient`] |
//!
//! Every subprocess goes through [`command::run`].
//!
//! Errors are `cz_engine::StepError`s whose `Cause` the adapter decided
//! from its system's own codes (HTTP status, Hetzner error code, exit
//! status): adapters classify, the engine decides what to do.

pub mod cloud;
pub mod command;
pub mod dns;
pub mod kube;
pub mod labels;
pub mod openbao;
pub mod registrar;
pub mod sealed_secrets;
pub mod ssh;
pub mod tofu;

use std::path::PathBuf;
use std::sync::Arc;

use cz_engine::{StepEnv, StepError};

use crate::registrar::Registrars;

pub type AdapterResult<T> = Result<T, StepError>;

pub use cloud::{
    CloudApi, CloudObject, Limit, LoadBalancerType, ProjectLimits, ServerAction, ServerType,
    TokenScope,
};
pub use dns::{DnsApi, Rrset, absolute_name};
pub use kube::{KubeApi, ObjectRef, Until};
pub use openbao::{BaoApi, BaoInit, BaoInitRequest, BaoLeader, BaoStatus};
pub use ssh::{CommandOutput, Host, ProvisionerKey, SshApi};
pub use tofu::{
    DEFAULT_PARALLELISM, PlanSummary, StateResource, TofuApi, TofuEvent, TofuSink, Workspace,
};

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
/// with their reason (no silent 25-minute hangs).
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
    /// (parent NS TTLs are an hour).
    pub dns_propagation: std::time::Duration,
    /// A bring-your-own domain's NS pointed at us by its owner.
    pub byo_delegation: std::time::Duration,
    /// An OpenBao replica to answer, join its cluster and unseal.
    pub openbao: std::time::Duration,
    /// An ExternalSecret's target Secret to hold what OpenBao holds.
    pub secret_sync: std::time::Duration,
    /// Custodians to unseal an added region's Shamir-sealed OpenBao
    /// replicas (people, so a day).
    pub custodians: std::time::Duration,
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
            openbao: Duration::from_secs(600),
            secret_sync: Duration::from_secs(180),
            custodians: Duration::from_secs(24 * 3600),
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
    pub registrars: Arc<dyn Registrars>,
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
    /// Public resolvers the propagation gate asks; none: only the
    /// authoritative server is asked.
    pub public_resolvers: Vec<std::net::SocketAddr>,
}

impl StepEnv for Backend {
    fn poll_interval(&self) -> std::time::Duration {
        self.poll
    }
}
