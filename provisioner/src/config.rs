//! Daemon configuration: one TOML file, then `CATALYST_ZERO_*` overrides,
//! then command-line flags (applied by the CLI).
//!
//! Why a typed file with `deny_unknown_fields`: a misspelt key in an
//! operator's config must fail at startup with the file's path, not be
//! silently ignored (omicron's `nexus-config` does the same). Environment
//! overrides are applied through a lookup function rather than read from the
//! process environment directly, so tests can exercise them without
//! `std::env::set_var` (which races between test threads).
//!
//! Tokens are plain strings here because they are read once at startup; the
//! `Debug` output redacts them, and nothing ever logs them.

use std::fmt;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use cz_engine::RetryPolicy;
use cz_sim::SimConfig;
use serde::{Deserialize, Serialize};

/// The environment variables the daemon reads.
pub const ENV_OPERATOR_TOKEN: &str = "CATALYST_ZERO_OPERATOR_TOKEN";
pub const ENV_WIZARD_TOKEN: &str = "CATALYST_ZERO_WIZARD_TOKEN";
pub const ENV_DATA_DIR: &str = "CATALYST_ZERO_DATA_DIR";
pub const ENV_LISTEN: &str = "CATALYST_ZERO_LISTEN";
pub const ENV_TLS_CERT: &str = "CATALYST_ZERO_TLS_CERT";
pub const ENV_TOKENS_FILE: &str = "CATALYST_ZERO_TOKENS_FILE";
pub const ENV_TLS_KEY: &str = "CATALYST_ZERO_TLS_KEY";
pub const ENV_INSECURE_LISTEN: &str = "CATALYST_ZERO_INSECURE_LISTEN";
pub const ENV_SIM_LATENCY: &str = "CATALYST_ZERO_SIM_LATENCY";
pub const ENV_HETZNER_API_URL: &str = "CATALYST_ZERO_HETZNER_API_URL";
pub const ENV_TOFU_BINARY: &str = "CATALYST_ZERO_TOFU_BINARY";
pub const ENV_POWERDNS_API_KEY: &str = "CATALYST_ZERO_POWERDNS_API_KEY";
pub const ENV_AT_REST_KEY: &str = "CATALYST_ZERO_AT_REST_KEY";
pub const ENV_DATABASE_URL: &str = "CATALYST_ZERO_DATABASE_URL";
pub const ENV_FAULT_PLANS: &str = "CATALYST_ZERO_FAULT_PLANS";
pub const ENV_FAULT_PLANS_ON_HETZNER: &str = "CATALYST_ZERO_FAULT_PLANS_ON_HETZNER";
pub const ENV_SHARED_DIR: &str = "CATALYST_ZERO_SHARED_DIR";
/// Where systemd's `LoadCredential=` puts credentials.
pub const ENV_CREDENTIALS_DIRECTORY: &str = "CREDENTIALS_DIRECTORY";

/// The at-rest key an earlier layout kept in the data directory.
pub const LEGACY_KEY_FILE: &str = "identity.age.txt";

/// The file `serve` writes a generated operator token to.
pub const OPERATOR_TOKEN_FILE: &str = "operator.token";

/// Which adapters drive the cloud and the cluster.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum BackendKind {
    /// Persistent fakes with scalable latency (`docs/architecture.md`).
    #[default]
    Sim,
    /// Real Hetzner Cloud, tofu, ssh, kube, OpenBao and PowerDNS.
    Hetzner,
}

impl BackendKind {
    pub fn as_str(self) -> &'static str {
        match self {
            BackendKind::Sim => "sim",
            BackendKind::Hetzner => "hetzner",
        }
    }
}

impl std::str::FromStr for BackendKind {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "sim" => Ok(BackendKind::Sim),
            "hetzner" => Ok(BackendKind::Hetzner),
            other => Err(format!("unknown backend `{other}` (expected `sim` or `hetzner`)")),
        }
    }
}

/// Which tofu module the `hetzner` backend renders.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ModuleKind {
    /// `cloud-templates/hetzner/` with the hcloud provider (production).
    #[default]
    Hcloud,
    /// `cloud-templates/hetzner-offline/`: built-in `terraform_data` driving
    /// the API through `catalyst-zero hcloud-shim`; for machines that cannot
    /// download the provider (tests here). Never for a real Sovereign.
    Offline,
}

/// Project limits Hetzner does not publish (Console → project → Limits).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct QuotaConfig {
    pub servers: u32,
    pub load_balancers: u32,
    pub networks: u32,
    pub placement_groups: u32,
}

impl Default for QuotaConfig {
    fn default() -> Self {
        let q = cz_adapters::cloud::ProjectQuota::default();
        QuotaConfig {
            servers: q.servers,
            load_balancers: q.load_balancers,
            networks: q.networks,
            placement_groups: q.placement_groups,
        }
    }
}

/// The API's TLS certificate chain and private key, PEM files.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TlsConfig {
    pub cert: PathBuf,
    pub key: PathBuf,
}

/// The `hetzner` backend: Hetzner Cloud API and OpenTofu.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct HetznerConfig {
    /// The API base URL (a fake's in tests).
    pub api_url: String,
    /// `tofu` (default) or `terraform`, on the PATH or absolute.
    pub tofu_binary: PathBuf,
    /// Bound of one tofu command; on expiry it is stopped and the step
    /// retried.
    pub tofu_timeout_secs: u64,
    pub module: ModuleKind,
    /// The directory holding `hetzner/` and `hetzner-offline/`.
    pub templates_dir: PathBuf,
    /// Where this daemon connects from: the firewall opens SSH and the
    /// Kubernetes API to these only. Required for the `hcloud` module.
    pub provisioner_cidrs: Vec<String>,
    pub quota: QuotaConfig,
    /// The K3s air-gap artifact directory (`k3s`, `install.sh`, `SHA256SUMS`)
    /// uploaded to every node; see README "Air-gap artifacts". Required with
    /// the `hcloud` module.
    pub artifacts_dir: Option<PathBuf>,
    /// Instead of `artifacts_dir`: nodes fetch K3s online.
    pub k3s_download: Option<K3sDownload>,
    /// How long a new server may take to answer SSH.
    pub host_boot_secs: u64,
    /// The port the servers' sshd listens on (22 on Hetzner's images).
    pub ssh_port: u16,
    /// How often a wait polls what it waits on (the cluster, the cloud,
    /// DNS).
    pub poll_millis: u64,
}

/// Online K3s: each node fetches the installer and checks it against the
/// pinned SHA-256; the installer downloads the release pinned in the release
/// manifest and verifies the binary against that release's checksum file.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct K3sDownload {
    /// e.g. `https://get.k3s.io`.
    pub script_url: String,
    /// SHA-256 (hex) of the installer the operator reviewed.
    pub script_sha256: String,
    /// Release download base (`GITHUB_URL`).
    #[serde(default = "default_release_url")]
    pub release_url: String,
}

fn default_release_url() -> String {
    "https://github.com/k3s-io/k3s/releases".into()
}

impl HetznerConfig {
    fn validate(&self) -> Result<(), LoadError> {
        let bad = |m: String| Err(LoadError::Invalid(m));
        match reqwest::Url::parse(&self.api_url) {
            Ok(u) if matches!(u.scheme(), "http" | "https") => {}
            _ => return bad(format!("hetzner.api_url `{}` is not an http(s) URL", self.api_url)),
        }
        if self.tofu_timeout_secs == 0 {
            return bad("hetzner.tofu_timeout_secs must be at least 1".into());
        }
        if self.module == ModuleKind::Hcloud && self.provisioner_cidrs.is_empty() {
            return bad("hetzner.provisioner_cidrs is empty: the firewall would close SSH and \
                 the Kubernetes API to the provisioner itself; set this daemon's egress \
                 address, e.g. [\"203.0.113.7/32\"]"
                .into());
        }
        for c in &self.provisioner_cidrs {
            let ok = c.split_once('/').is_some_and(|(ip, len)| {
                ip.parse::<std::net::IpAddr>().is_ok_and(|ip| {
                    len.parse::<u8>().is_ok_and(|l| l <= if ip.is_ipv4() { 32 } else { 128 })
                })
            });
            if !ok {
                return bad(format!("hetzner.provisioner_cidrs: `{c}` is not an IP network"));
            }
        }
        match (&self.artifacts_dir, &self.k3s_download) {
            (Some(_), Some(_)) => {
                return bad("set one of hetzner.artifacts_dir and hetzner.k3s_download".into());
            }
            // The offline module too: a real backend never simulates K3s.
            (None, None) => {
                return bad("hetzner.artifacts_dir is not set: K3s is installed from an air-gap \
                     artifact directory (k3s, install.sh, SHA256SUMS), or online with \
                     hetzner.k3s_download"
                    .into());
            }
            _ => {}
        }
        if let Some(d) = &self.k3s_download {
            let hex64 = d.script_sha256.len() == 64
                && d.script_sha256.bytes().all(|b| b.is_ascii_hexdigit());
            if !hex64 {
                return bad("hetzner.k3s_download.script_sha256 must be 64 hex digits".into());
            }
            for (field, url) in [("script_url", &d.script_url), ("release_url", &d.release_url)] {
                if !matches!(
                    reqwest::Url::parse(url).map(|u| u.scheme().to_owned()).as_deref(),
                    Ok("https" | "http")
                ) {
                    return bad(format!(
                        "hetzner.k3s_download.{field} `{url}` is not an http(s) URL"
                    ));
                }
            }
        }
        if let Some(d) = &self.artifacts_dir
            && !d.join("SHA256SUMS").is_file()
        {
            return bad(format!("hetzner.artifacts_dir: {} has no SHA256SUMS", d.display()));
        }
        if self.ssh_port == 0 {
            return bad("hetzner.ssh_port must not be 0".into());
        }
        if !(10..=60_000).contains(&self.poll_millis) {
            return bad(format!(
                "hetzner.poll_millis must be between 10 and 60000, not {}",
                self.poll_millis
            ));
        }
        if self.host_boot_secs == 0 {
            return bad("hetzner.host_boot_secs must be at least 1".into());
        }
        let dir = self.templates_dir.join(self.module_dir());
        if !dir.is_dir() {
            return bad(format!(
                "hetzner.templates_dir: {} does not exist (run from the repository root or set \
                 the path to cloud-templates)",
                dir.display()
            ));
        }
        Ok(())
    }

    /// The template folder of the configured module.
    pub fn module_dir(&self) -> &'static str {
        match self.module {
            ModuleKind::Hcloud => "hetzner",
            ModuleKind::Offline => "hetzner-offline",
        }
    }
}

impl Default for HetznerConfig {
    fn default() -> Self {
        HetznerConfig {
            api_url: cz_adapters::cloud::hcloud::DEFAULT_BASE_URL.to_owned(),
            tofu_binary: PathBuf::from("tofu"),
            tofu_timeout_secs: 30 * 60,
            module: ModuleKind::Hcloud,
            templates_dir: PathBuf::from("cloud-templates"),
            provisioner_cidrs: Vec::new(),
            quota: QuotaConfig::default(),
            artifacts_dir: None,
            k3s_download: None,
            host_boot_secs: 600,
            ssh_port: 22,
            poll_millis: 2_000,
        }
    }
}

/// The PowerDNS Authoritative server that holds the pool zones and the
/// Sovereigns' zones. When set, both backends use it (the real adapter);
/// when absent, the `sim` backend's DNS stands in.
#[derive(Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PowerDnsConfig {
    /// The webserver's base URL, e.g. `http://127.0.0.1:8081`.
    pub api_url: String,
    #[serde(default = "default_server_id")]
    pub server_id: String,
    /// Where the same server answers DNS (verification queries).
    pub dns_address: SocketAddr,
    /// Bound of one API call or DNS query.
    #[serde(default = "default_pdns_timeout")]
    pub timeout_secs: u64,
    /// The API key. Prefer `CATALYST_ZERO_POWERDNS_API_KEY`: a key in the
    /// file is readable by whoever reads the file.
    #[serde(default)]
    pub api_key: Option<String>,
}

fn default_server_id() -> String {
    "localhost".into()
}

fn default_pdns_timeout() -> u64 {
    10
}

impl fmt::Debug for PowerDnsConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PowerDnsConfig")
            .field("api_url", &self.api_url)
            .field("server_id", &self.server_id)
            .field("dns_address", &self.dns_address)
            .field("timeout_secs", &self.timeout_secs)
            .field("api_key", &self.api_key.as_ref().map(|_| "<redacted>"))
            .finish()
    }
}

impl PowerDnsConfig {
    fn validate(&self) -> Result<(), LoadError> {
        let bad = |m: String| Err(LoadError::Invalid(m));
        match reqwest::Url::parse(&self.api_url) {
            Ok(u) if matches!(u.scheme(), "http" | "https") => {}
            _ => return bad(format!("powerdns.api_url `{}` is not an http(s) URL", self.api_url)),
        }
        if self.server_id.is_empty() {
            return bad("powerdns.server_id is empty (PowerDNS's is `localhost`)".into());
        }
        if self.timeout_secs == 0 {
            return bad("powerdns.timeout_secs must be at least 1".into());
        }
        if self.api_key.as_deref().is_none_or(|k| k.trim().is_empty()) {
            return bad(format!(
                "powerdns: no API key; set {ENV_POWERDNS_API_KEY} (or powerdns.api_key)"
            ));
        }
        Ok(())
    }
}

/// The DNS reservation lease.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct DnsConfig {
    /// How long a reservation (a zone made by `dns-reserve`, not committed
    /// yet) is held without renewal. The daemon renews the leases of its
    /// live jobs every third of this, and removes reservations whose lease
    /// ran out more than this long ago and whose job it does not know.
    pub lease_secs: u64,
    /// The propagation gate asks these resolvers before a job may
    /// declare its Sovereign ready.
    pub public_resolvers: Vec<SocketAddr>,
    /// How long the gate waits for them (parent NS TTLs are an hour).
    pub propagation_secs: u64,
    /// How long a bring-your-own job waits for the domain's NS to point at
    /// the Sovereign's nameservers (set by hand at the registrar).
    pub byo_wait_secs: u64,
}

impl Default for DnsConfig {
    fn default() -> Self {
        DnsConfig {
            lease_secs: 600,
            public_resolvers: cz_adapters::dns::default_public_resolvers(),
            propagation_secs: 1800,
            byo_wait_secs: 24 * 3600,
        }
    }
}

/// Bearer tokens of the two API scopes.
#[derive(Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Tokens {
    /// Every verb. Generated at startup when absent.
    pub operator: Option<String>,
    /// Submit and read only (the public wizard's backend).
    pub wizard: Option<String>,
    /// Named operators: a TOML file of `[[token]]` entries (`name`, `role`,
    /// `sha256` of the token), reloaded on change; the audit trail records
    /// the person. See docs/operations.md.
    pub file: Option<PathBuf>,
}

impl fmt::Debug for Tokens {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let shown = |t: &Option<String>| t.as_ref().map(|_| "<redacted>");
        f.debug_struct("Tokens")
            .field("operator", &shown(&self.operator))
            .field("wizard", &shown(&self.wizard))
            .field("file", &self.file)
            .finish()
    }
}

/// The daemon's configuration.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    /// The SQLite database, the lock, and (without `shared_dir`) the sim
    /// world and tofu workspaces live here.
    pub data_dir: PathBuf,
    /// The daemon's at-rest key (an age identity; created 0600 on first
    /// start; refused if group or others can read it). Default:
    /// `$CREDENTIALS_DIRECTORY/at-rest-key` under systemd, else
    /// `$XDG_CONFIG_HOME/catalyst-zero/at-rest-key.txt` (or
    /// `~/.config/...`): never the data directory, so a copy of it opens
    /// no secret.
    pub at_rest_key: Option<PathBuf>,
    /// Address the HTTP API listens on (port 0 picks a free port).
    pub listen: SocketAddr,
    /// Serve the API over TLS with this certificate chain and key (PEM).
    pub tls: Option<TlsConfig>,
    /// Allow plain HTTP on a non-loopback address (a TLS-terminating proxy
    /// in front). Without it such a listen is refused: bearer tokens and
    /// escrow would cross the network in clear.
    pub insecure_listen: bool,
    pub backend: BackendKind,
    /// Latency and failure injection of the `sim` backend.
    pub sim: SimConfig,
    pub hetzner: HetznerConfig,
    pub powerdns: Option<PowerDnsConfig>,
    pub dns: DnsConfig,
    /// The registrar APIs of `byo-api` domains. Without this section the
    /// `hetzner` backend uses the production APIs and the `sim` backend
    /// simulates them; with it, both use these (a staging API, a fake).
    pub registrars: Option<cz_adapters::registrar::Endpoints>,
    /// Seconds between SSE heartbeat comments.
    pub heartbeat_secs: u64,
    /// Transient-retry bounds applied to every submitted job.
    pub retry: RetryPolicy,
    pub tokens: Tokens,
    pub database: DatabaseConfig,
    pub drills: Drills,
    /// The operator console served at `/ui`.
    pub console: ConsoleConfig,
    /// What replicas must share besides the database: the tofu workspaces
    /// and, on the `sim` backend, the simulated world (then locked across
    /// processes). Default: the data directory (one replica).
    pub shared_dir: Option<PathBuf>,
}

/// The operator console (`/ui`): a browser front end on the same API,
/// signed in with an operator token into a cookie session.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ConsoleConfig {
    /// Serve `/ui` (on by default; off answers 404 there).
    pub enabled: bool,
    /// How long a sign-in lasts (5 minutes to 7 days).
    pub session_secs: u64,
}

impl Default for ConsoleConfig {
    fn default() -> Self {
        ConsoleConfig { enabled: true, session_secs: 8 * 3600 }
    }
}

/// Fault injection through the API (`X-Catalyst-Fault-Plan`), for drills
/// and tests. Off unless enabled; on the `hetzner` backend it also needs
/// its own switch, since a plan there fails steps against real
/// infrastructure.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Drills {
    pub fault_plans: bool,
    pub fault_plans_on_hetzner: bool,
}

/// The store: SQLite in the data directory (default), or PostgreSQL shared
/// by replicas that hold each job run by a lease.
#[derive(Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct DatabaseConfig {
    /// `postgres://user:password@host/db`: selects the PostgreSQL store.
    pub url: Option<String>,
    /// How long a job's lease lasts unless renewed (PostgreSQL).
    pub lease_ttl_secs: u64,
    /// How often a replica renews its leases and claims free jobs.
    pub lease_renew_secs: u64,
    /// How many jobs one replica drives at most (PostgreSQL).
    pub max_runs: usize,
}

impl Default for DatabaseConfig {
    fn default() -> Self {
        DatabaseConfig { url: None, lease_ttl_secs: 15, lease_renew_secs: 5, max_runs: 256 }
    }
}

impl fmt::Debug for DatabaseConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("DatabaseConfig")
            .field("url", &self.url.as_deref().map(cz_state::redact_url))
            .field("lease_ttl_secs", &self.lease_ttl_secs)
            .field("lease_renew_secs", &self.lease_renew_secs)
            .field("max_runs", &self.max_runs)
            .finish()
    }
}

impl DatabaseConfig {
    fn validate(&self) -> Result<(), LoadError> {
        if let Some(u) = &self.url
            && !(u.starts_with("postgres://") || u.starts_with("postgresql://"))
        {
            return Err(LoadError::Invalid(
                "database.url: only postgres:// URLs are supported (SQLite is the default, in \
                 the data directory)"
                    .into(),
            ));
        }
        if !(5..=300).contains(&self.lease_ttl_secs) {
            return Err(LoadError::Invalid("database.lease_ttl_secs must be 5..=300".into()));
        }
        if self.lease_renew_secs == 0 || self.lease_renew_secs * 2 > self.lease_ttl_secs {
            return Err(LoadError::Invalid(
                "database.lease_renew_secs must be at least 1 and at most half of \
                 lease_ttl_secs (a renewal may be missed once without losing the lease)"
                    .into(),
            ));
        }
        if self.max_runs == 0 {
            return Err(LoadError::Invalid("database.max_runs must be at least 1".into()));
        }
        Ok(())
    }
}

impl Default for Config {
    fn default() -> Self {
        Config {
            data_dir: PathBuf::from(".cz-data"),
            at_rest_key: None,
            listen: SocketAddr::from(([127, 0, 0, 1], 7480)),
            tls: None,
            insecure_listen: false,
            backend: BackendKind::Sim,
            sim: SimConfig::default(),
            hetzner: HetznerConfig::default(),
            powerdns: None,
            dns: DnsConfig::default(),
            registrars: None,
            heartbeat_secs: 15,
            retry: RetryPolicy::default(),
            tokens: Tokens::default(),
            database: DatabaseConfig::default(),
            drills: Drills::default(),
            console: ConsoleConfig::default(),
            shared_dir: None,
        }
    }
}

/// A configuration that could not be loaded. Sources are not interpolated
/// into the message (they are printed as the chain).
#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    #[error("cannot read the config file {path}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("invalid config file {path}")]
    Parse {
        path: PathBuf,
        #[source]
        source: toml::de::Error,
    },
    #[error("invalid value of {var}: {message}")]
    Env { var: &'static str, message: String },
    #[error("{0}")]
    Invalid(String),
}

impl Config {
    /// Reads a TOML config file.
    pub fn from_file(path: &Path) -> Result<Config, LoadError> {
        let text = std::fs::read_to_string(path)
            .map_err(|source| LoadError::Read { path: path.to_owned(), source })?;
        Config::from_toml(&text)
            .map_err(|source| LoadError::Parse { path: path.to_owned(), source })
    }

    pub fn from_toml(text: &str) -> Result<Config, toml::de::Error> {
        toml::from_str(text)
    }

    /// Applies `CATALYST_ZERO_*` overrides; `get` looks a variable up
    /// (`&|k| std::env::var(k).ok()` in production).
    pub fn apply_env(&mut self, get: &dyn Fn(&str) -> Option<String>) -> Result<(), LoadError> {
        let non_empty = |k: &str| get(k).filter(|v| !v.trim().is_empty());
        if let Some(t) = non_empty(ENV_OPERATOR_TOKEN) {
            self.tokens.operator = Some(t.trim().to_owned());
        }
        if let Some(t) = non_empty(ENV_WIZARD_TOKEN) {
            self.tokens.wizard = Some(t.trim().to_owned());
        }
        if let Some(d) = non_empty(ENV_DATA_DIR) {
            self.data_dir = PathBuf::from(d);
        }
        if let Some(k) = non_empty(ENV_AT_REST_KEY) {
            self.at_rest_key = Some(PathBuf::from(k.trim()));
        }
        if let Some(l) = non_empty(ENV_LISTEN) {
            self.listen = l.trim().parse().map_err(|e: std::net::AddrParseError| {
                LoadError::Env { var: ENV_LISTEN, message: e.to_string() }
            })?;
        }
        match (non_empty(ENV_TLS_CERT), non_empty(ENV_TLS_KEY)) {
            (Some(cert), Some(key)) => {
                self.tls = Some(TlsConfig {
                    cert: PathBuf::from(cert.trim()),
                    key: PathBuf::from(key.trim()),
                });
            }
            (None, None) => {}
            (Some(_), None) | (None, Some(_)) => {
                return Err(LoadError::Env {
                    var: ENV_TLS_CERT,
                    message: format!("{ENV_TLS_CERT} and {ENV_TLS_KEY} go together"),
                });
            }
        }
        for (var, slot) in [
            (ENV_FAULT_PLANS, &mut self.drills.fault_plans),
            (ENV_FAULT_PLANS_ON_HETZNER, &mut self.drills.fault_plans_on_hetzner),
        ] {
            if let Some(v) = non_empty(var) {
                *slot = match v.trim() {
                    "1" | "true" | "yes" => true,
                    "0" | "false" | "no" => false,
                    other => {
                        return Err(LoadError::Env {
                            var,
                            message: format!("`{other}`: use true or false"),
                        });
                    }
                };
            }
        }
        if let Some(u) = non_empty(ENV_DATABASE_URL) {
            self.database.url = Some(u.trim().to_owned());
        }
        if let Some(d) = non_empty(ENV_SHARED_DIR) {
            self.shared_dir = Some(PathBuf::from(d.trim()));
        }
        if let Some(f) = non_empty(ENV_TOKENS_FILE) {
            self.tokens.file = Some(PathBuf::from(f.trim()));
        }
        if let Some(v) = non_empty(ENV_INSECURE_LISTEN) {
            self.insecure_listen = matches!(v.trim(), "1" | "true" | "yes");
        }
        if let Some(u) = non_empty(ENV_HETZNER_API_URL) {
            self.hetzner.api_url = u.trim().to_owned();
        }
        if let Some(b) = non_empty(ENV_TOFU_BINARY) {
            self.hetzner.tofu_binary = PathBuf::from(b.trim());
        }
        if let Some(k) = non_empty(ENV_POWERDNS_API_KEY) {
            match self.powerdns.as_mut() {
                Some(p) => p.api_key = Some(k.trim().to_owned()),
                None => {
                    return Err(LoadError::Env {
                        var: ENV_POWERDNS_API_KEY,
                        message: "set, but the config has no [powerdns] section".into(),
                    });
                }
            }
        }
        if let Some(f) = non_empty(ENV_SIM_LATENCY) {
            self.sim.latency_factor =
                f.trim().parse().map_err(|e: std::num::ParseFloatError| LoadError::Env {
                    var: ENV_SIM_LATENCY,
                    message: e.to_string(),
                })?;
        }
        Ok(())
    }

    /// Where the at-rest key is (see [`Config::at_rest_key`]); `get` looks
    /// a variable up. An old layout's key left in the data directory, with
    /// none at the configured place, is refused with how to move it: a new
    /// key would open none of the stored secrets.
    pub fn at_rest_key_path(
        &self,
        get: &dyn Fn(&str) -> Option<String>,
    ) -> Result<PathBuf, LoadError> {
        let path = match &self.at_rest_key {
            Some(p) => p.clone(),
            None => {
                let non_empty = |k: &str| get(k).filter(|v| !v.trim().is_empty());
                if let Some(d) = non_empty(ENV_CREDENTIALS_DIRECTORY) {
                    PathBuf::from(d).join("at-rest-key")
                } else if let Some(d) = non_empty("XDG_CONFIG_HOME") {
                    PathBuf::from(d).join("catalyst-zero/at-rest-key.txt")
                } else if let Some(h) = non_empty("HOME") {
                    PathBuf::from(h).join(".config/catalyst-zero/at-rest-key.txt")
                } else {
                    return Err(LoadError::Invalid(
                        "no place for the at-rest key: set at_rest_key (or CATALYST_ZERO_AT_REST_KEY, \
                         or HOME)"
                            .into(),
                    ));
                }
            }
        };
        let legacy = self.data_dir.join(LEGACY_KEY_FILE);
        if legacy.exists() && !path.exists() {
            return Err(LoadError::Invalid(format!(
                "the at-rest key of this data directory is {} (an earlier layout); move it out of the \
                 data directory (`install -m 600 -D {} {}` then delete it) or set at_rest_key to it",
                legacy.display(),
                legacy.display(),
                path.display()
            )));
        }
        if let (Ok(d), Some(parent)) = (self.data_dir.canonicalize(), path.parent())
            && parent.canonicalize().is_ok_and(|p| p.starts_with(&d))
        {
            tracing::warn!(
                key = %path.display(),
                data_dir = %self.data_dir.display(),
                "The at-rest key is inside the data directory: a copy of the directory opens every stored secret."
            );
        }
        Ok(path)
    }

    /// Checks what serde cannot: ranges and features not built yet.
    pub fn validate(&self) -> Result<(), LoadError> {
        if !self.listen.ip().is_loopback() && self.tls.is_none() && !self.insecure_listen {
            return Err(LoadError::Invalid(format!(
                "listen {} is not a loopback address and the API would be plain HTTP (bearer \
                 tokens and the escrow in clear): give tls cert and key (--tls-cert, \
                 --tls-key), or --insecure-listen when a TLS-terminating proxy is in front",
                self.listen
            )));
        }
        if let Some(t) = &self.tls {
            for (what, f) in [("tls.cert", &t.cert), ("tls.key", &t.key)] {
                if !f.is_file() {
                    return Err(LoadError::Invalid(format!(
                        "{what}: {} is not a file",
                        f.display()
                    )));
                }
            }
        }
        self.database.validate()?;
        if !(300..=7 * 86_400).contains(&self.console.session_secs) {
            return Err(LoadError::Invalid(
                "console.session_secs must be from 300 (5 minutes) to 604800 (7 days)".into(),
            ));
        }
        if self.drills.fault_plans_on_hetzner && !self.drills.fault_plans {
            return Err(LoadError::Invalid(
                "drills.fault_plans_on_hetzner needs drills.fault_plans".into(),
            ));
        }
        if self.backend == BackendKind::Hetzner {
            self.hetzner.validate()?;
        }
        if let Some(p) = &self.powerdns {
            p.validate()?;
        }
        if let Some(r) = &self.registrars {
            r.validate().map_err(LoadError::Invalid)?;
        }
        if self.dns.byo_wait_secs == 0 {
            return Err(LoadError::Invalid("dns.byo_wait_secs must be at least 1".into()));
        }
        if self.dns.propagation_secs == 0 {
            return Err(LoadError::Invalid("dns.propagation_secs must be at least 1".into()));
        }
        if self.dns.lease_secs < 3 {
            return Err(LoadError::Invalid(format!(
                "dns.lease_secs must be at least 3 (renewed every third), got {}",
                self.dns.lease_secs
            )));
        }
        if !(self.sim.latency_factor.is_finite() && self.sim.latency_factor >= 0.0) {
            return Err(LoadError::Invalid(format!(
                "sim.latency_factor must be a number >= 0, got {}",
                self.sim.latency_factor
            )));
        }
        if self.heartbeat_secs == 0 {
            return Err(LoadError::Invalid("heartbeat_secs must be at least 1".into()));
        }
        if self.retry.max_attempts == 0 {
            return Err(LoadError::Invalid("retry.max_attempts must be at least 1".into()));
        }
        for (name, t) in [("operator", &self.tokens.operator), ("wizard", &self.tokens.wizard)] {
            if t.as_ref().is_some_and(|t| t.len() < 16) {
                return Err(LoadError::Invalid(format!(
                    "the {name} token must be at least 16 characters"
                )));
            }
        }
        if self.tokens.operator.is_some() && self.tokens.operator == self.tokens.wizard {
            return Err(LoadError::Invalid("the operator and wizard tokens must differ".into()));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use super::*;

    #[test]
    fn example_config_parses() {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("examples/config.toml");
        let c = Config::from_file(&path).unwrap();
        c.validate().unwrap();
        assert_eq!(c.backend, BackendKind::Sim);
        assert_eq!(c.listen.port(), 7480);
    }

    #[test]
    fn the_at_rest_key_lives_apart_from_the_data_directory() {
        let dir = tempfile::tempdir().unwrap();
        let c = Config { data_dir: dir.path().join("data"), ..Config::default() };
        let env: HashMap<&str, String> = [("HOME", "/home/op".to_owned())].into();
        let get = |k: &str| env.get(k).cloned();
        let p = c.at_rest_key_path(&get).unwrap();
        assert_eq!(p, PathBuf::from("/home/op/.config/catalyst-zero/at-rest-key.txt"));
        let env: HashMap<&str, String> =
            [("HOME", "/home/op".to_owned()), ("CREDENTIALS_DIRECTORY", "/run/creds/cz".into())]
                .into();
        let get = |k: &str| env.get(k).cloned();
        assert_eq!(c.at_rest_key_path(&get).unwrap(), PathBuf::from("/run/creds/cz/at-rest-key"));
        let explicit = Config { at_rest_key: Some("/etc/cz/key".into()), ..c.clone() };
        assert_eq!(explicit.at_rest_key_path(&get).unwrap(), PathBuf::from("/etc/cz/key"));
        // An earlier layout's key in the data directory is not silently
        // replaced by a new one.
        std::fs::create_dir_all(&c.data_dir).unwrap();
        std::fs::write(c.data_dir.join(LEGACY_KEY_FILE), "AGE-SECRET-KEY-1").unwrap();
        let e = c.at_rest_key_path(&get).unwrap_err();
        assert!(e.to_string().contains("move it out of the data directory"), "{e}");
        let none = |_: &str| None;
        assert!(Config::default().at_rest_key_path(&none).is_err());
    }

    #[test]
    fn defaults_and_unknown_keys() {
        let c = Config::from_toml("").unwrap();
        assert_eq!(c, Config::default());
        let err = Config::from_toml("listen_addr = \"x\"").unwrap_err();
        assert!(err.to_string().contains("listen_addr"), "{err}");
    }

    #[test]
    fn missing_and_bad_files_name_the_path() {
        let err = Config::from_file(Path::new("/nonexistent/cz.toml")).unwrap_err();
        assert!(matches!(err, LoadError::Read { .. }));
        assert!(err.to_string().contains("/nonexistent/cz.toml"));
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("bad.toml");
        std::fs::write(&p, "heartbeat_secs = \"soon\"").unwrap();
        let err = Config::from_file(&p).unwrap_err();
        assert!(matches!(err, LoadError::Parse { .. }));
    }

    #[test]
    fn env_overrides_apply() {
        let env: HashMap<&str, &str> = HashMap::from([
            (ENV_OPERATOR_TOKEN, "op-token-0123456789abcdef"),
            (ENV_DATA_DIR, "/tmp/cz"),
            (ENV_LISTEN, "127.0.0.1:0"),
            (ENV_SIM_LATENCY, "0"),
        ]);
        let mut c = Config::default();
        c.apply_env(&|k| env.get(k).map(|v| v.to_string())).unwrap();
        assert_eq!(c.tokens.operator.as_deref(), Some("op-token-0123456789abcdef"));
        assert_eq!(c.data_dir, PathBuf::from("/tmp/cz"));
        assert_eq!(c.listen.port(), 0);
        assert_eq!(c.sim.latency_factor, 0.0);
        assert!(!format!("{c:?}").contains("op-token"));

        let mut c = Config::default();
        let err = c.apply_env(&|k| (k == ENV_SIM_LATENCY).then(|| "fast".to_string()));
        assert!(matches!(err, Err(LoadError::Env { var: ENV_SIM_LATENCY, .. })));
    }

    #[test]
    fn powerdns_needs_a_key_from_the_environment_and_never_shows_it() {
        let text =
            "[powerdns]\napi_url = \"http://127.0.0.1:8081\"\ndns_address = \"127.0.0.1:5353\"\n";
        let mut c = Config::from_toml(text).unwrap();
        let err = c.validate().unwrap_err();
        assert!(err.to_string().contains(ENV_POWERDNS_API_KEY), "{err}");
        c.apply_env(&|k| (k == ENV_POWERDNS_API_KEY).then(|| "pdns-secret-key".to_string()))
            .unwrap();
        c.validate().unwrap();
        let p = c.powerdns.as_ref().unwrap();
        assert_eq!((p.server_id.as_str(), p.timeout_secs), ("localhost", 10));
        assert!(!format!("{c:?}").contains("pdns-secret-key"));
        // A key with nowhere to go is an error, not silently dropped.
        let mut c = Config::default();
        let err = c.apply_env(&|k| (k == ENV_POWERDNS_API_KEY).then(|| "k".to_string()));
        assert!(matches!(err, Err(LoadError::Env { var: ENV_POWERDNS_API_KEY, .. })));
        let bad = Config::from_toml(&text.replace("http://127.0.0.1:8081", "ftp://x")).unwrap();
        let mut bad = bad;
        bad.powerdns.as_mut().unwrap().api_key = Some("k".into());
        assert!(bad.validate().unwrap_err().to_string().contains("powerdns.api_url"));
    }

    #[test]
    fn registrars_override_some_apis_and_keep_the_production_ones() {
        let c =
            Config::from_toml("[registrars]\ngodaddy = \"https://api.ote-godaddy.com\"\n").unwrap();
        let r = c.registrars.as_ref().expect("[registrars]");
        assert_eq!(r.godaddy, "https://api.ote-godaddy.com");
        assert_eq!(r.ovh, cz_adapters::registrar::Endpoints::default().ovh);
        c.validate().unwrap();
        assert!(
            Config::default().registrars.is_none(),
            "none: production (hetzner) or simulated (sim)"
        );
        let bad = Config::from_toml("[registrars]\novh = \"eu.api.ovh.com\"\n").unwrap();
        assert!(bad.validate().unwrap_err().to_string().contains("registrars.ovh"));
        assert!(Config::from_toml("[registrars]\nnamecheep = \"https://x\"\n").is_err());
    }

    /// The shipped example configs parse (their paths are the operator's to
    /// create, so they are not validated here).
    #[test]
    fn example_configs_parse() {
        let ex = concat!(env!("CARGO_MANIFEST_DIR"), "/../examples");
        let c = Config::from_file(&Path::new(ex).join("hetzner.toml")).unwrap();
        assert_eq!((c.backend, c.hetzner.module), (BackendKind::Hetzner, ModuleKind::Hcloud));
        assert!(c.hetzner.artifacts_dir.is_some() && c.hetzner.k3s_download.is_none());
        let p = c.powerdns.as_ref().expect("[powerdns]");
        assert_eq!((p.server_id.as_str(), p.api_key.as_deref()), ("localhost", None));
        let c = Config::from_file(&Path::new(ex).join("hetzner-offline.toml")).unwrap();
        assert_eq!(c.hetzner.module, ModuleKind::Offline);
        assert!(c.hetzner.artifacts_dir.is_some(), "K3s is never simulated");
        let mut c = c;
        c.hetzner.templates_dir = concat!(env!("CARGO_MANIFEST_DIR"), "/../cloud-templates").into();
        let artifacts = tempfile::tempdir().unwrap();
        std::fs::write(artifacts.path().join("SHA256SUMS"), "").unwrap();
        c.hetzner.artifacts_dir = Some(artifacts.path().to_owned());
        // A real PowerDNS, its key from the environment.
        c.powerdns.as_mut().expect("[powerdns]").api_key = Some("from-the-env".into());
        c.validate().unwrap();
    }

    #[test]
    fn hetzner_settings_are_checked_with_field_names() {
        let root = concat!(env!("CARGO_MANIFEST_DIR"), "/../cloud-templates");
        let artifacts = tempfile::tempdir().unwrap();
        std::fs::write(artifacts.path().join("SHA256SUMS"), "").unwrap();
        let base = || Config {
            backend: BackendKind::Hetzner,
            hetzner: HetznerConfig {
                templates_dir: root.into(),
                provisioner_cidrs: vec!["203.0.113.7/32".into()],
                artifacts_dir: Some(artifacts.path().to_owned()),
                ..HetznerConfig::default()
            },
            ..Config::default()
        };
        base().validate().unwrap();
        let err = |f: &dyn Fn(&mut Config)| {
            let mut c = base();
            f(&mut c);
            c.validate().unwrap_err().to_string()
        };
        assert!(
            err(&|c| c.hetzner.provisioner_cidrs.clear()).contains("hetzner.provisioner_cidrs")
        );
        assert!(
            err(&|c| c.hetzner.provisioner_cidrs = vec!["0.0.0.0".into()])
                .contains("`0.0.0.0` is not an IP network")
        );
        assert!(err(&|c| c.hetzner.api_url = "ftp://x".into()).contains("hetzner.api_url"));
        assert!(err(&|c| c.hetzner.artifacts_dir = None).contains("hetzner.artifacts_dir"));
        let online = K3sDownload {
            script_url: "https://get.k3s.io".into(),
            script_sha256: "a".repeat(64),
            release_url: default_release_url(),
        };
        assert!(err(&|c| c.hetzner.k3s_download = Some(online.clone())).contains("set one of"));
        let mut c = base();
        c.hetzner.artifacts_dir = None;
        c.hetzner.k3s_download = Some(online.clone());
        c.validate().unwrap();
        c.hetzner.k3s_download = Some(K3sDownload { script_sha256: "x".into(), ..online.clone() });
        assert!(c.validate().unwrap_err().to_string().contains("script_sha256"));
        assert!(
            err(&|c| c.hetzner.artifacts_dir = Some("/nope".into())).contains("has no SHA256SUMS")
        );
        assert!(err(&|c| c.hetzner.templates_dir = "/nope".into()).contains("/nope/hetzner"));
        // The offline stand-in needs no CIDRs (it only talks to loopback),
        // but K3s all the same.
        let mut c = base();
        c.hetzner.module = ModuleKind::Offline;
        c.hetzner.provisioner_cidrs.clear();
        c.validate().unwrap();
        c.hetzner.artifacts_dir = None;
        assert!(c.validate().unwrap_err().to_string().contains("hetzner.artifacts_dir"));
        let c: Config = Config::from_toml(
            "backend = \"hetzner\"\n[hetzner]\nmodule = \"offline\"\ntofu_binary = \"terraform\"\n",
        )
        .unwrap();
        assert_eq!(c.hetzner.module, ModuleKind::Offline);
        assert_eq!(c.hetzner.tofu_binary, PathBuf::from("terraform"));
        let mut c = Config::default();
        c.apply_env(&|k| match k {
            ENV_HETZNER_API_URL => Some("http://127.0.0.1:9/".into()),
            ENV_TOFU_BINARY => Some("/usr/local/bin/terraform".into()),
            _ => None,
        })
        .unwrap();
        assert_eq!(c.hetzner.api_url, "http://127.0.0.1:9/");
        assert_eq!(c.hetzner.tofu_binary, PathBuf::from("/usr/local/bin/terraform"));
    }
}
