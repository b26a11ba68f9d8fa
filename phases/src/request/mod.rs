//! The versioned provision request: one schema, validated in full before any
//! side effect.
//!
//! Why this module exists:
//! - **One schema, checked up front.** Every field of a request to create a
//!   Sovereign (or to add regions to one) is checked here, before the daemon
//!   stores a job, touches a cloud API or spends money. A request that passes
//!   [`ProvisionRequest::validate`] cannot fail later because of a malformed
//!   name, an unknown server type or a bad SSH key.
//! - **Field-level errors, all at once.** Validation never stops at the first
//!   problem: it returns every [`FieldError`], each with the path of the field
//!   (`regions[1].control_plane.count`, `custody.custodians[2].recipient`) and a
//!   message that says what is accepted. [`parse_provision`] extends this to
//!   the JSON layer: malformed JSON, unknown fields, wrong types and missing
//!   fields come back with the same kind of path, so a client (or the CLI) can
//!   point at the exact field.
//! - **Secrets never serialized.** `cloud_token` and the registrar token are
//!   [`SecretString`]s that are skipped when the request is serialized: the
//!   copy of the request kept with the job (and shown by the API) carries no
//!   secret at all. The secrets travel separately, through
//!   [`ProvisionRequest::secrets`], to the age-encrypted secrets table. When a
//!   stored request is read back the secret fields default to empty, which is
//!   why validation (run on submission only) rejects an empty token.
//! - **Versioned.** `api_version` must be exactly [`API_VERSION`]; a future
//!   incompatible schema gets a new version instead of silently changing
//!   meaning.
//!
//! The accepted Hetzner locations and server types are constants here; later
//! checks compare them with live provider data.

use std::collections::HashMap;
use std::fmt;

pub mod contract;

use cz_state::SecretString;
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

/// The only accepted `api_version`.
pub const API_VERSION: &str = "catalyst.openova.io/v1";

/// Every component Catalyst-Zero can install, in install order.
pub const COMPONENTS: &[&str] = &[
    "cilium",
    "cert-manager",
    "flux",
    "crossplane",
    "sealed-secrets",
    "spire",
    "nats-jetstream",
    "openbao",
    "keycloak",
    "gitea",
    "powerdns",
    "catalyst-platform",
];

/// Components later phases depend on; they cannot be deselected.
pub const REQUIRED_COMPONENTS: &[&str] =
    &["cilium", "cert-manager", "flux", "crossplane", "sealed-secrets", "openbao", "powerdns"];

/// Hetzner Cloud locations a region may use.
pub use cz_adapters::cloud::catalogue::LOCATIONS as HETZNER_LOCATIONS;

/// Hetzner Cloud server types a node group may use.
pub use cz_adapters::cloud::catalogue::SERVER_TYPE_NAMES as HETZNER_SKUS;

/// Labels that may not be used as a pool subdomain: they collide with names
/// the platform itself publishes or would mislead users.
pub const RESERVED_LABELS: &[&str] = &[
    "api", "admin", "console", "gitea", "harbor", "keycloak", "www", "mail", "smtp", "imap", "vpn",
    "openova", "catalyst", "docs", "status", "app", "system", "openbao", "vault", "flux", "k8s",
];

/// SSH public key types accepted in `ssh_public_keys`.
pub const SSH_KEY_TYPES: &[&str] = &[
    "ssh-ed25519",
    "ecdsa-sha2-nistp256",
    "ecdsa-sha2-nistp384",
    "ecdsa-sha2-nistp521",
    "ssh-rsa",
];

/// At most this many regions per Sovereign.
pub const MAX_REGIONS: usize = 8;
/// At most this many workers per region.
pub const MAX_WORKERS: u32 = 500;
/// At most this many SSH keys.
pub const MAX_SSH_KEYS: usize = 10;
/// At most this many age recipients.
pub const MAX_CUSTODIANS: usize = 10;
/// At most this many OpenBao unseal shares.
pub const MAX_OPENBAO_SHARES: u8 = 10;
/// A pool domain's longest name: room is left for a 63-character
/// subdomain, within DNS's 253.
pub const MAX_POOL_DOMAIN: usize = 253 - 1 - 63;

// ---------------------------------------------------------------------------
// Types
// ---------------------------------------------------------------------------

/// A request to provision a new Sovereign.
#[derive(Clone, Debug, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ProvisionRequest {
    /// Must be `catalyst.openova.io/v1`.
    #[schema(pattern = "^catalyst\\.openova\\.io/v1$")]
    pub api_version: String,
    pub org: Org,
    pub domain: Domain,
    /// 1 to 8 regions, each in a different location.
    #[schema(min_items = 1, max_items = 8)]
    pub regions: Vec<Region>,
    /// Components to install; defaults to all of them. Required components
    /// cannot be left out.
    #[serde(default = "default_components")]
    pub components: Vec<String>,
    /// 1 to 10 OpenSSH public keys (`<type> <base64> [comment]`).
    #[schema(min_items = 1, max_items = 10)]
    pub ssh_public_keys: Vec<String>,
    /// The Hetzner Cloud API token (64 letters and digits). Never serialized.
    // `skip_serializing_if` (always true) rather than `skip_serializing`: both
    // keep the token out of every serialized copy, but utoipa drops a
    // `skip_serializing` field from the OpenAPI schema altogether, and the
    // field must be documented as a (write-only) input.
    #[serde(skip_serializing_if = "always_skip", default = "empty_secret")]
    #[schema(value_type = String, format = Password, write_only, required = true, pattern = "^[A-Za-z0-9]{64}$")]
    pub cloud_token: SecretString,
    /// A separate Hetzner Cloud API token for Crossplane once it owns the
    /// cloud objects (`infra-handoff`). Hetzner has no finer scope than a
    /// project token, so this should be a token of a project holding only
    /// this Sovereign. Without one, the provisioning token is handed over
    /// and the job says so in an event (`runbooks/crossplane-credential.md`
    /// says how to rotate it). Never serialized.
    #[serde(skip_serializing_if = "always_skip", default)]
    #[schema(value_type = Option<String>, format = Password, write_only, pattern = "^[A-Za-z0-9]{64}$")]
    pub handoff_token: Option<SecretString>,
    pub custody: Custody,
    pub keycloak: Keycloak,
    /// What to do with created resources when provisioning fails.
    #[serde(default)]
    pub on_failure: FailurePolicy,
    /// Sign the Sovereign's zone with DNSSEC (the server's default keys:
    /// ECDSA P-256). A pool Sovereign's DS goes into the pool zone beside
    /// its delegation; a bring-your-own domain's DS is shown for the
    /// customer to add at their registrar.
    #[serde(default)]
    pub dnssec: bool,
}

/// The organization that owns the Sovereign.
#[derive(Clone, Debug, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Org {
    /// 1 to 100 characters, not only spaces.
    #[schema(min_length = 1, max_length = 100, pattern = "\\S")]
    pub name: String,
    /// An address with a valid domain (`local@example.com`).
    #[schema(format = Email, max_length = 254)]
    pub email: String,
}

/// Where the Sovereign's DNS name comes from.
#[derive(Clone, Debug, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(tag = "mode", rename_all = "kebab-case", deny_unknown_fields)]
pub enum Domain {
    /// A subdomain of a shared pool domain: `<subdomain>.<pool_domain>`.
    Pool { pool_domain: String, subdomain: String },
    /// The customer's own domain; DNS records are set by hand.
    ByoManual { fqdn: String },
    /// The customer's own domain; DNS records are set through the registrar's API.
    ByoApi {
        fqdn: String,
        registrar: Registrar,
        /// Never serialized.
        #[serde(skip_serializing_if = "always_skip", default = "empty_secret")]
        #[schema(value_type = String, format = Password, write_only, required = true)]
        registrar_token: SecretString,
    },
}

pub use cz_adapters::registrar::Registrar;

/// One region of the Sovereign: a cluster in one provider location.
#[derive(Clone, Debug, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Region {
    pub provider: Provider,
    pub location: String,
    pub control_plane: NodeGroup,
    pub workers: NodeGroup,
    /// How the region's nodes reach each other. Default `auto`.
    #[serde(default)]
    pub network: NodeNetwork,
    /// The region's load balancer. Default: the release's type, targeting
    /// the control planes.
    #[serde(default)]
    pub load_balancer: LoadBalancerSpec,
}

/// How the nodes of a region reach each other.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum NodeNetwork {
    /// A Hetzner private network while the region has at most 100 servers
    /// (the most one network holds); above that, the public interfaces
    /// with Cilium's WireGuard encryption.
    #[default]
    Auto,
    /// Always a private network: at most 100 servers.
    Private,
    /// Always the public interfaces, WireGuard-encrypted, as a region whose
    /// nodes span network zones needs.
    Public,
}

/// A region's load balancer: its type, and which servers it targets.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct LoadBalancerSpec {
    /// The Hetzner type; absent means the release's pinned type. Each type
    /// takes at most so many targets: lb11 25, lb21 75, lb31 150.
    #[serde(default, rename = "type", skip_serializing_if = "Option::is_none")]
    pub kind: Option<LoadBalancerKind>,
    /// Which servers it forwards to. Default `control-plane`.
    #[serde(default)]
    pub targets: LoadBalancerTargets,
}

/// Hetzner's load balancer types.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum LoadBalancerKind {
    Lb11,
    Lb21,
    Lb31,
}

impl LoadBalancerKind {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Lb11 => "lb11",
            Self::Lb21 => "lb21",
            Self::Lb31 => "lb31",
        }
    }
}

/// The servers a load balancer forwards to; every service (80, 443, 6443)
/// goes to every target, and Hetzner's per-service health checks keep
/// traffic to the targets that listen.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "kebab-case")]
pub enum LoadBalancerTargets {
    /// The control planes (the API, and ingress where it runs there).
    #[default]
    ControlPlane,
    /// Every server of the region: ingress on the workers.
    AllNodes,
}

impl LoadBalancerTargets {
    /// The wire name: `control-plane` or `all-nodes`.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::ControlPlane => "control-plane",
            Self::AllNodes => "all-nodes",
        }
    }
}

impl Region {
    /// The load balancer's type name: the request's, else the release's.
    pub fn load_balancer_type(&self) -> &str {
        self.load_balancer.kind.map_or_else(crate::release::load_balancer_type, |k| k.as_str())
    }
}

/// Cloud providers.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum Provider {
    Hetzner,
}

/// A group of identical nodes.
#[derive(Clone, Debug, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct NodeGroup {
    /// Provider server type, e.g. `cpx32`.
    #[schema(min_length = 1, max_length = 32, pattern = "^[a-z0-9-]+$")]
    pub sku: String,
    /// Control planes: 1 or 3. Workers: 0 to 500.
    #[schema(maximum = 500)]
    #[serde(deserialize_with = "whole::number")]
    pub count: u32,
}

/// Who holds the keys of the Sovereign: k of n custodians.
///
/// OpenBao's unseal shares are dealt to the custodians in order, share `i`
/// to custodian `i mod n`, each encrypted to that custodian's age recipient
/// alone, so no custodian can decrypt another's share and at least
/// `openbao_threshold` custodians are needed to unseal.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Custody {
    /// The custodians, 1 to 10, each with an age X25519 recipient.
    #[schema(min_items = 1, max_items = 10)]
    pub custodians: Vec<Custodian>,
    /// Number of OpenBao unseal shares: one per custodian by default; more
    /// (up to 10) are dealt round-robin, as long as no custodian holds
    /// enough to unseal alone.
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        deserialize_with = "whole::optional"
    )]
    #[schema(minimum = 1, maximum = 10)]
    pub openbao_shares: Option<u8>,
    /// Shares needed to unseal (1 to the number of shares, and no more than
    /// the number of custodians).
    #[schema(minimum = 1, maximum = 10)]
    #[serde(deserialize_with = "whole::number")]
    pub openbao_threshold: u8,
    /// How OpenBao is sealed: `shamir` (the default) or `static`.
    #[serde(default)]
    pub seal: Seal,
}

/// OpenBao's seal.
///
/// - `shamir`: OpenBao's root key is split into the shares above; every
///   pod that restarts stays sealed until `openbao_threshold` custodians
///   run `catalyst-zero unseal`. Nothing in the cluster can unseal it.
/// - `static`: a 32-byte key, generated here, given to the pods as the
///   Secret `openbao/openbao-static-seal`; pods unseal themselves on
///   restart. The shares above become OpenBao's recovery keys, and the key
///   itself is split `openbao_threshold` of `openbao_shares` to the
///   custodians. Whoever can read that Secret (or the etcd holding it) can
///   unseal: pick it when unattended restarts matter more than that.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "kebab-case")]
pub enum Seal {
    #[default]
    Shamir,
    Static,
}

impl Seal {
    pub fn as_str(self) -> &'static str {
        match self {
            Seal::Shamir => "shamir",
            Seal::Static => "static",
        }
    }
}

/// One custodian of the recovery material.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Custodian {
    /// Their age X25519 recipient (`age1…`, as `age-keygen -y` prints it).
    #[schema(pattern = "^age1[02-9ac-hj-np-z]{58}$")]
    pub recipient: String,
    /// Who they are, for people (1 to 64 printable characters).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(min_length = 1, max_length = 64)]
    pub label: Option<String>,
}

impl Custody {
    /// How many OpenBao shares are made.
    pub fn shares(&self) -> u8 {
        self.openbao_shares.unwrap_or(self.custodians.len().min(255) as u8)
    }

    /// The custodian who holds share `i` (round-robin).
    pub fn holder(&self, share: usize) -> &Custodian {
        &self.custodians[share % self.custodians.len()]
    }

    /// Every custodian's recipient, in order.
    pub fn recipients(&self) -> Vec<String> {
        self.custodians.iter().map(|c| c.recipient.clone()).collect()
    }
}

impl Custodian {
    /// How they are named in messages and escrow listings.
    pub fn name(&self, index: usize) -> String {
        self.label.clone().unwrap_or_else(|| format!("custodian {index}"))
    }
}

/// Keycloak settings.
#[derive(Clone, Debug, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Keycloak {
    pub topology: KeycloakTopology,
}

/// One Keycloak realm per organization, or one shared by the Sovereign.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "kebab-case")]
pub enum KeycloakTopology {
    PerOrganization,
    SharedSovereign,
}

pub use cz_engine::FailurePolicy;

/// A request to add regions to an existing Sovereign.
#[derive(Clone, Debug, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct AddRegionRequest {
    /// Must be `catalyst.openova.io/v1`.
    #[schema(pattern = "^catalyst\\.openova\\.io/v1$")]
    pub api_version: String,
    /// 1 to 8 new regions, in locations the Sovereign does not use yet.
    #[schema(min_items = 1, max_items = 8)]
    pub regions: Vec<Region>,
    /// A new cloud token; when absent the Sovereign's stored token is used.
    /// Never serialized.
    #[serde(skip_serializing_if = "always_skip", default)]
    #[schema(value_type = Option<String>, format = Password, write_only, pattern = "^[A-Za-z0-9]{64}$")]
    pub cloud_token: Option<SecretString>,
}

/// One problem with one field of a request.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct FieldError {
    /// Path of the field, e.g. `regions[1].control_plane.count`; `body` for
    /// the request as a whole.
    pub path: String,
    pub message: String,
}

impl FieldError {
    pub fn new(path: impl Into<String>, message: impl Into<String>) -> Self {
        FieldError { path: path.into(), message: message.into() }
    }
}

impl fmt::Display for FieldError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.path, self.message)
    }
}

fn default_components() -> Vec<String> {
    COMPONENTS.iter().map(|c| c.to_string()).collect()
}

fn empty_secret() -> SecretString {
    SecretString::new("")
}

fn always_skip<T>(_: &T) -> bool {
    true
}

// ---------------------------------------------------------------------------
// Accessors
// ---------------------------------------------------------------------------

impl ProvisionRequest {
    /// The Sovereign's fully qualified domain name.
    pub fn fqdn(&self) -> String {
        match &self.domain {
            Domain::Pool { pool_domain, subdomain } => format!("{subdomain}.{pool_domain}"),
            Domain::ByoManual { fqdn } | Domain::ByoApi { fqdn, .. } => fqdn.clone(),
        }
    }

    /// The Sovereign's short name: the first label of [`Self::fqdn`].
    pub fn name(&self) -> String {
        self.fqdn().split('.').next().unwrap_or_default().to_string()
    }

    /// The secrets of the request, by name, to be stored encrypted apart from
    /// the (secret-free) serialized request.
    pub fn secrets(&self) -> Vec<(&'static str, SecretString)> {
        let mut out = vec![("cloud_token", self.cloud_token.clone())];
        if let Some(t) = &self.handoff_token {
            out.push(("handoff_token", t.clone()));
        }
        if let Domain::ByoApi { registrar_token, .. } = &self.domain {
            out.push(("registrar_token", registrar_token.clone()));
        }
        out
    }
}

// ---------------------------------------------------------------------------
// Parsing
// ---------------------------------------------------------------------------

/// Parses and validates a provision request body. Every JSON-level problem
/// (malformed JSON, unknown field, wrong type, missing field) comes back as a
/// [`FieldError`] with the path of the field; a well-formed request is then
/// checked by [`ProvisionRequest::validate`].
pub fn parse_provision(body: &[u8]) -> Result<ProvisionRequest, Vec<FieldError>> {
    let req: ProvisionRequest = parse_json(body)?;
    req.validate()?;
    Ok(req)
}

/// Parses and validates an add-region request body on its own; see
/// [`AddRegionRequest::conflicts`] for the checks against the Sovereign.
pub fn parse_add_region(body: &[u8]) -> Result<AddRegionRequest, Vec<FieldError>> {
    let req: AddRegionRequest = parse_json(body)?;
    req.validate()?;
    Ok(req)
}

fn parse_json<T: DeserializeOwned>(body: &[u8]) -> Result<T, Vec<FieldError>> {
    // serde accepts a JSON array for a struct (fields by position); a request
    // body must be an object.
    let first = body.iter().find(|b| !b.is_ascii_whitespace());
    if first.is_some_and(|&b| b != b'{')
        && serde_json::from_slice::<serde::de::IgnoredAny>(body).is_ok()
    {
        return Err(vec![FieldError::new("body", "must be a JSON object")]);
    }
    let mut de = serde_json::Deserializer::from_slice(body);
    let value: T = serde_path_to_error::deserialize(&mut de).map_err(|e| vec![json_error(e)])?;
    // Like `serde_json::from_slice`: nothing but whitespace may follow.
    de.end().map_err(|e| vec![syntax_error(&e)])?;
    Ok(value)
}

fn json_error(e: serde_path_to_error::Error<serde_json::Error>) -> FieldError {
    use serde_json::error::Category;
    let path = e.path().to_string();
    let inner = e.into_inner();
    match inner.classify() {
        Category::Syntax | Category::Eof | Category::Io => syntax_error(&inner),
        Category::Data => {
            let message = message_without_position(&inner);
            // A missing field is reported at its own path, not its parent's.
            let missing = message
                .strip_prefix("missing field `")
                .and_then(|rest| rest.split('`').next())
                .map(str::to_string);
            // An unknown field is reported at the object that has it
            // (serde_path_to_error's path ends with the unknown key).
            let unknown =
                message.strip_prefix("unknown field `").and_then(|rest| rest.split('`').next());
            let path = match unknown {
                Some(field) if path == field => ".".to_string(),
                Some(field) => {
                    path.strip_suffix(&format!(".{field}")).map(str::to_string).unwrap_or(path)
                }
                None => path,
            };
            let root = path == "." || path.is_empty();
            let path = match (missing, root) {
                (Some(field), true) => field,
                (Some(field), false) => format!("{path}.{field}"),
                (None, true) => "body".to_string(),
                (None, false) => path,
            };
            FieldError::new(path, message)
        }
    }
}

fn syntax_error(e: &serde_json::Error) -> FieldError {
    FieldError::new(
        "body",
        format!(
            "invalid JSON at line {} column {}: {}",
            e.line(),
            e.column(),
            message_without_position(e)
        ),
    )
}

/// serde_json appends " at line L column C" to its messages; the path already
/// says where a data error is.
fn message_without_position(e: &serde_json::Error) -> String {
    let full = e.to_string();
    let suffix = format!(" at line {} column {}", e.line(), e.column());
    full.strip_suffix(&suffix).map(str::to_string).unwrap_or(full)
}

// ---------------------------------------------------------------------------
// Validation
// ---------------------------------------------------------------------------

/// Text shown to people (the console, the CLI, escrow listings): no
/// control characters (line breaks, NUL, escapes) and no invisible
/// formatting (bidirectional overrides, zero-width characters, BOMs),
/// which would let a name pose as another ([`contract::HIDDEN`]).
pub fn check_shown_text(s: &str) -> Result<(), String> {
    let bad = s.chars().find(|c| contract::is_hidden(*c));
    match bad {
        None => Ok(()),
        Some(c) => Err(format!(
            "must not contain control or invisible formatting characters (found U+{:04X})",
            c as u32
        )),
    }
}

/// Integers as JSON Schema has them: a number with no fraction, so `3.0`
/// is the integer 3 (a generated client may send it so).
mod whole {
    use serde::de::{Deserializer, Error, Visitor};
    use std::fmt;
    use std::marker::PhantomData;

    struct Whole<T>(PhantomData<T>);

    impl<T: TryFrom<u64>> Visitor<'_> for Whole<T> {
        type Value = T;
        fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.write_str("a whole number")
        }
        fn visit_u64<E: Error>(self, v: u64) -> Result<T, E> {
            T::try_from(v).map_err(|_| E::custom(format!("{v} is out of range")))
        }
        fn visit_i64<E: Error>(self, v: i64) -> Result<T, E> {
            let u = u64::try_from(v).map_err(|_| E::custom(format!("{v} is out of range")))?;
            self.visit_u64(u)
        }
        fn visit_f64<E: Error>(self, v: f64) -> Result<T, E> {
            if v.fract() != 0.0 || !(0.0..=u64::MAX as f64).contains(&v) {
                return Err(E::custom(format!("{v} is not a whole number in range")));
            }
            self.visit_u64(v as u64)
        }
    }

    pub fn number<'de, D: Deserializer<'de>, T: TryFrom<u64>>(d: D) -> Result<T, D::Error> {
        d.deserialize_any(Whole(PhantomData))
    }

    pub fn optional<'de, D: Deserializer<'de>, T: TryFrom<u64>>(
        d: D,
    ) -> Result<Option<T>, D::Error> {
        struct Opt<T>(PhantomData<T>);
        impl<'de, T: TryFrom<u64>> Visitor<'de> for Opt<T> {
            type Value = Option<T>;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a whole number or null")
            }
            fn visit_none<E: Error>(self) -> Result<Option<T>, E> {
                Ok(None)
            }
            fn visit_unit<E: Error>(self) -> Result<Option<T>, E> {
                Ok(None)
            }
            fn visit_some<D: Deserializer<'de>>(self, d: D) -> Result<Option<T>, D::Error> {
                number(d).map(Some)
            }
        }
        d.deserialize_option(Opt(PhantomData))
    }
}

/// Collects errors; keeps the checks below free of `Vec` plumbing.
#[derive(Default)]
struct Errors(Vec<FieldError>);

impl Errors {
    fn add(&mut self, path: impl Into<String>, message: impl Into<String>) {
        self.0.push(FieldError::new(path, message));
    }
    fn check(&mut self, path: impl Into<String>, result: Result<(), String>) {
        if let Err(message) = result {
            self.add(path, message);
        }
    }
    fn finish(self) -> Result<(), Vec<FieldError>> {
        if self.0.is_empty() { Ok(()) } else { Err(self.0) }
    }
}

/// User input quoted in a message, shortened so a huge value cannot blow up
/// the error response. Never used for secrets.
fn shown(s: &str) -> String {
    const MAX: usize = 64;
    if s.chars().count() <= MAX {
        format!("`{s}`")
    } else {
        format!("`{}…`", s.chars().take(MAX).collect::<String>())
    }
}

impl ProvisionRequest {
    /// Checks every field and returns all problems found.
    pub fn validate(&self) -> Result<(), Vec<FieldError>> {
        let mut errs = Errors::default();
        check_api_version(&mut errs, &self.api_version);
        self.check_org(&mut errs);
        self.check_domain(&mut errs);
        check_regions(&mut errs, &self.regions);
        self.check_components(&mut errs);
        check_ssh_keys(&mut errs, &self.ssh_public_keys);
        if self.cloud_token.expose().trim().is_empty() {
            errs.add(
                "cloud_token",
                "is required: a Hetzner Cloud API token with read & write access",
            );
        } else if self.regions.iter().all(|r| r.provider == Provider::Hetzner) {
            errs.check("cloud_token", check_hetzner_token(&self.cloud_token));
        }
        if let Some(t) = &self.handoff_token {
            errs.check("handoff_token", check_hetzner_token(t));
        }
        self.check_custody(&mut errs);
        errs.finish()
    }

    fn check_org(&self, errs: &mut Errors) {
        let name = self.org.name.trim();
        if name.is_empty() {
            errs.add("org.name", "is required");
        } else if self.org.name.chars().count() > 100 {
            errs.add("org.name", "must be at most 100 characters");
        } else {
            errs.check("org.name", check_shown_text(&self.org.name));
        }
        errs.check("org.email", check_email(&self.org.email));
    }

    fn check_domain(&self, errs: &mut Errors) {
        match &self.domain {
            Domain::Pool { pool_domain, subdomain } => {
                errs.check("domain.pool_domain", check_fqdn(pool_domain));
                if pool_domain.len() > MAX_POOL_DOMAIN {
                    errs.add(
                        "domain.pool_domain",
                        format!(
                            "a pool domain has at most {MAX_POOL_DOMAIN} characters, leaving room for a 63-character subdomain; this one has {}",
                            pool_domain.len()
                        ),
                    );
                }
                let sub = check_label(subdomain).and_then(|()| {
                    if !subdomain.starts_with(|c: char| c.is_ascii_lowercase()) {
                        Err(format!("{} must start with a letter", shown(subdomain)))
                    } else if RESERVED_LABELS.contains(&subdomain.as_str()) {
                        Err(format!(
                            "{} is reserved; reserved names: {}",
                            shown(subdomain),
                            RESERVED_LABELS.join(", ")
                        ))
                    } else {
                        Ok(())
                    }
                });
                errs.check("domain.subdomain", sub);
            }
            Domain::ByoManual { fqdn } => errs.check("domain.fqdn", check_fqdn(fqdn)),
            Domain::ByoApi { fqdn, registrar, registrar_token } => {
                errs.check("domain.fqdn", check_fqdn(fqdn));
                let token = registrar_token.expose();
                if token.trim().is_empty() {
                    errs.add(
                        "domain.registrar_token",
                        "is required with mode `byo-api`: an API token of the registrar",
                    );
                } else if token.trim() != token {
                    errs.add("domain.registrar_token", "has leading or trailing whitespace");
                } else if let Err(m) =
                    cz_adapters::registrar::Credentials::parse(*registrar, registrar_token.expose())
                {
                    errs.add("domain.registrar_token", m);
                }
            }
        }
    }

    fn check_components(&self, errs: &mut Errors) {
        let mut first_at: HashMap<&str, usize> = HashMap::new();
        for (i, c) in self.components.iter().enumerate() {
            let path = format!("components[{i}]");
            if !COMPONENTS.contains(&c.as_str()) {
                errs.add(
                    path,
                    format!(
                        "unknown component {}; known components: {}",
                        shown(c),
                        COMPONENTS.join(", ")
                    ),
                );
            } else if let Some(j) = first_at.get(c.as_str()) {
                errs.add(path, format!("`{c}` is listed twice (also at components[{j}])"));
            } else {
                first_at.insert(c, i);
            }
        }
        for required in REQUIRED_COMPONENTS {
            if !first_at.contains_key(required) {
                errs.add(
                    "components",
                    format!(
                        "`{required}` is required and cannot be deselected (required: {})",
                        REQUIRED_COMPONENTS.join(", ")
                    ),
                );
            }
        }
        // A missing required dependency is already reported above.
        for (i, c) in self.components.iter().enumerate() {
            if first_at.get(c.as_str()) != Some(&i) {
                continue;
            }
            for dep in crate::release::depends_on(c) {
                let dep = dep.as_str();
                if !first_at.contains_key(dep) && !REQUIRED_COMPONENTS.contains(&dep) {
                    errs.add(
                        format!("components[{i}]"),
                        format!("`{c}` depends on `{dep}`, which is not selected"),
                    );
                }
            }
        }
    }

    fn check_custody(&self, errs: &mut Errors) {
        let c = &self.custody;
        let n = c.custodians.len();
        if n == 0 {
            errs.add("custody.custodians", "at least one custodian is required");
        } else if n > MAX_CUSTODIANS {
            errs.add(
                "custody.custodians",
                format!("at most {MAX_CUSTODIANS} custodians are allowed, got {n}"),
            );
        }
        for (i, cu) in c.custodians.iter().enumerate() {
            let r = &cu.recipient;
            if !cz_state::secrets::is_age_recipient(r) || *r != r.to_ascii_lowercase() {
                errs.add(
                    format!("custody.custodians[{i}].recipient"),
                    format!("{} is not an age X25519 recipient (expected `age1…`, as printed by `age-keygen -y`)", shown(r)),
                );
            } else if let Some(j) = c.custodians[..i].iter().position(|o| o.recipient == *r) {
                errs.add(
                    format!("custody.custodians[{i}].recipient"),
                    format!("is custodians[{j}]'s recipient too: one person would hold two custodians' shares"),
                );
            }
            if let Some(l) = &cu.label
                && (l.trim().is_empty() || l.chars().count() > 64 || check_shown_text(l).is_err())
            {
                errs.add(
                    format!("custody.custodians[{i}].label"),
                    "must be 1 to 64 printable characters",
                );
            }
        }
        let errors = custody_numbers(n, c.openbao_shares, c.openbao_threshold);
        errs.0.extend(errors);
    }
}

/// The share arithmetic of [`Custody`] for `n` custodians: the rules on
/// `openbao_shares` and `openbao_threshold`. A function of the three
/// numbers alone, so the OpenAPI document can list what it accepts
/// ([`contract`]).
pub fn custody_numbers(n: usize, openbao_shares: Option<u8>, t: u8) -> Vec<FieldError> {
    let mut errs = Errors::default();
    let shares = openbao_shares.unwrap_or(n.min(255) as u8);
    let shares_ok = match openbao_shares {
        _ if n == 0 || n > MAX_CUSTODIANS => false,
        Some(s) if !(1..=MAX_OPENBAO_SHARES).contains(&s) => {
            errs.add(
                "custody.openbao_shares",
                format!("must be between 1 and {MAX_OPENBAO_SHARES}, got {s}"),
            );
            false
        }
        Some(s) if usize::from(s) < n => {
            errs.add(
                "custody.openbao_shares",
                format!("must be at least one per custodian ({n}), got {s}"),
            );
            false
        }
        _ => true,
    };
    if t == 0 {
        errs.add("custody.openbao_threshold", "must be at least 1");
    } else if !shares_ok {
    } else if t > shares {
        errs.add(
            "custody.openbao_threshold",
            format!("must be between 1 and the number of shares ({shares}), got {t}"),
        );
    } else if usize::from(t) > n {
        errs.add(
            "custody.custodians",
            format!(
                "{n} custodian(s) cannot reach a threshold of {t}: name at least {t} \
                 custodians, each with a recipient of their own"
            ),
        );
    } else if t == 1 && shares >= 3 {
        errs.add(
            "custody.openbao_threshold",
            format!("a threshold of 1 with {shares} shares lets any single holder unseal; use at least 2"),
        );
    } else if n >= 2 && usize::from(shares).div_ceil(n) >= usize::from(t) {
        errs.add(
            "custody.openbao_shares",
            format!(
                "{shares} shares dealt to {n} custodians give one of them {} shares, enough \
                 to unseal alone with a threshold of {t}",
                usize::from(shares).div_ceil(n)
            ),
        );
    }
    errs.0
}

impl AddRegionRequest {
    /// Checks the new regions against each other, and the optional cloud
    /// token: the request on its own (a 422 when it fails).
    pub fn validate(&self) -> Result<(), Vec<FieldError>> {
        let mut errs = Errors::default();
        check_api_version(&mut errs, &self.api_version);
        check_regions(&mut errs, &self.regions);
        if let Some(token) = &self.cloud_token {
            errs.check("cloud_token", check_hetzner_token(token));
        }
        errs.finish()
    }

    /// What the request cannot do to a Sovereign whose regions are in
    /// `existing`: a location it has already, or more regions than a
    /// Sovereign may have. A conflict with stored state (409), not a fault
    /// of the request.
    pub fn conflicts(&self, existing: &[String]) -> Vec<FieldError> {
        let mut errs = Errors::default();
        let total = existing.len() + self.regions.len();
        if total > MAX_REGIONS {
            errs.add(
                "regions",
                format!(
                    "a Sovereign has at most {MAX_REGIONS} regions; it has {} and {} would be added",
                    existing.len(),
                    self.regions.len()
                ),
            );
        }
        for (i, r) in self.regions.iter().enumerate() {
            if existing.contains(&r.location) {
                errs.add(
                    format!("regions[{i}].location"),
                    format!("the Sovereign already has a region in `{}`", r.location),
                );
            }
        }
        errs.0
    }
}

fn check_api_version(errs: &mut Errors, v: &str) {
    if v != API_VERSION {
        errs.add("api_version", format!("must be `{API_VERSION}`, got {}", shown(v)));
    }
}

/// Region rules, shared by provisioning and add-region.
fn check_regions(errs: &mut Errors, regions: &[Region]) {
    if regions.is_empty() {
        errs.add("regions", "at least one region is required");
    }
    if regions.len() > MAX_REGIONS {
        errs.add(
            "regions",
            format!("at most {MAX_REGIONS} regions are allowed, got {}", regions.len()),
        );
    }
    let mut seen: HashMap<&str, usize> = HashMap::new();
    for (i, r) in regions.iter().enumerate() {
        let p = format!("regions[{i}]");
        if !HETZNER_LOCATIONS.contains(&r.location.as_str()) {
            errs.add(
                format!("{p}.location"),
                format!(
                    "unknown Hetzner location {}; accepted: {}",
                    shown(&r.location),
                    HETZNER_LOCATIONS.join(", ")
                ),
            );
        }
        if let Some(j) = seen.get(r.location.as_str()) {
            errs.add(
                format!("{p}.location"),
                format!("location {} is already used by regions[{j}]; each region needs its own location", shown(&r.location)),
            );
        } else {
            seen.insert(&r.location, i);
        }
        errs.check(format!("{p}.control_plane.sku"), check_sku(&r.control_plane.sku));
        if !matches!(r.control_plane.count, 1 | 3) {
            errs.add(
                format!("{p}.control_plane.count"),
                format!(
                    "must be 1 or 3 (an odd etcd quorum; 3 for high availability), got {}",
                    r.control_plane.count
                ),
            );
        }
        // Checked even with zero workers: the group can be scaled up later.
        errs.check(format!("{p}.workers.sku"), check_sku(&r.workers.sku));
        if r.workers.count > MAX_WORKERS {
            errs.add(
                format!("{p}.workers.count"),
                format!("must be between 0 and {MAX_WORKERS}, got {}", r.workers.count),
            );
        } else if matches!(r.control_plane.count, 1 | 3) {
            // Hetzner's fixed limits on the region's shape.
            for (field, message) in crate::infra::layout::check(&p, r) {
                errs.add(field, message);
            }
        }
    }
}

fn check_sku(sku: &str) -> Result<(), String> {
    if HETZNER_SKUS.contains(&sku) {
        Ok(())
    } else {
        Err(format!(
            "unknown Hetzner server type {}; valid types include cx23, cx33, cpx22, cpx32, cax21, ccx23 (all: {})",
            shown(sku),
            HETZNER_SKUS.join(", ")
        ))
    }
}

/// Hetzner Cloud API tokens are 64 ASCII letters and digits. The message
/// never contains the token.
fn check_hetzner_token(token: &SecretString) -> Result<(), String> {
    let t = token.expose();
    if t.is_empty() {
        return Err("must not be empty".to_string());
    }
    if t.len() == 64 && t.bytes().all(|b| b.is_ascii_alphanumeric()) {
        return Ok(());
    }
    let trimmed = t.trim();
    if trimmed != t && trimmed.len() == 64 && trimmed.bytes().all(|b| b.is_ascii_alphanumeric()) {
        return Err("has leading or trailing whitespace; a Hetzner Cloud API token is exactly 64 letters and digits".to_string());
    }
    Err(format!(
        "is not a Hetzner Cloud API token: expected exactly 64 letters and digits, got {} characters{}",
        t.chars().count(),
        if t.bytes().all(|b| b.is_ascii_alphanumeric()) {
            ""
        } else {
            " including other characters"
        }
    ))
}

fn check_email(email: &str) -> Result<(), String> {
    if email.is_empty() {
        return Err("is required".to_string());
    }
    if email.chars().count() > 254 {
        return Err("must be at most 254 characters".to_string());
    }
    if email.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return Err("must not contain whitespace".to_string());
    }
    let Some((local, domain)) = email.split_once('@') else {
        return Err(format!("{} is not an email address: it has no `@`", shown(email)));
    };
    if domain.contains('@') {
        return Err(format!("{} is not an email address: it has more than one `@`", shown(email)));
    }
    if local.is_empty() {
        return Err(format!("{} is not an email address: nothing before the `@`", shown(email)));
    }
    // Domain names are case-insensitive; digits may lead (`163.com`).
    check_fqdn_with(&domain.to_ascii_lowercase(), false)
        .map_err(|e| format!("the domain of {} is not valid: {e}", shown(email)))
}

/// Checks one DNS label: 1 to 63 characters of `a-z`, `0-9` and `-`, not
/// starting or ending with `-`.
pub fn check_label(s: &str) -> Result<(), String> {
    if s.is_empty() {
        return Err("a DNS label must not be empty".to_string());
    }
    if s.len() > 63 {
        return Err(format!("DNS label {} is {} characters; at most 63", shown(s), s.len()));
    }
    if let Some(c) =
        s.chars().find(|c| !(c.is_ascii_lowercase() || c.is_ascii_digit() || *c == '-'))
    {
        let hint = if c.is_ascii_uppercase() { " (use lowercase)" } else { "" };
        return Err(format!(
            "DNS label {} contains `{c}`; only lowercase letters, digits and `-` are allowed{hint}",
            shown(s)
        ));
    }
    if s.starts_with('-') || s.ends_with('-') {
        return Err(format!("DNS label {} must not start or end with `-`", shown(s)));
    }
    Ok(())
}

/// Checks a fully qualified domain name as the Sovereign uses it: lowercase,
/// at least two labels each valid per [`check_label`], at most 253
/// characters, no trailing dot, and a first label that starts with a letter
/// (it becomes the Sovereign's name).
pub fn check_fqdn(s: &str) -> Result<(), String> {
    check_fqdn_with(s, true)
}

fn check_fqdn_with(s: &str, first_label_letter: bool) -> Result<(), String> {
    if s.is_empty() {
        return Err("is required".to_string());
    }
    if s.ends_with('.') {
        return Err(format!("{} must not end with a dot", shown(s)));
    }
    if s.chars().any(|c| c.is_ascii_uppercase()) {
        return Err(format!("{} must be lowercase", shown(s)));
    }
    if s.len() > 253 {
        return Err(format!("a domain name has at most 253 characters, this one has {}", s.len()));
    }
    let labels: Vec<&str> = s.split('.').collect();
    if labels.len() < 2 {
        return Err(format!(
            "{} is not a fully qualified domain name: it needs at least two labels, like `example.com`",
            shown(s)
        ));
    }
    for label in &labels {
        check_label(label).map_err(|e| format!("in {}: {e}", shown(s)))?;
    }
    if first_label_letter && !labels[0].starts_with(|c: char| c.is_ascii_lowercase()) {
        return Err(format!("the first label of {} must start with a letter", shown(s)));
    }
    if labels.last().is_some_and(|tld| !tld.starts_with(|c: char| c.is_ascii_lowercase())) {
        return Err(format!(
            "{} is not a domain name: the last label (the top-level domain) must start with a letter",
            shown(s)
        ));
    }
    Ok(())
}

fn check_ssh_keys(errs: &mut Errors, keys: &[String]) {
    if keys.is_empty() {
        errs.add("ssh_public_keys", "at least one SSH public key is required");
    } else if keys.len() > MAX_SSH_KEYS {
        errs.add(
            "ssh_public_keys",
            format!("at most {MAX_SSH_KEYS} SSH public keys are allowed, got {}", keys.len()),
        );
    }
    for (i, k) in keys.iter().enumerate() {
        errs.check(format!("ssh_public_keys[{i}]"), check_ssh_key(k));
    }
}

/// Checks one OpenSSH public key line: `<type> <base64>`, then optionally a
/// space and a comment, single spaces between; the base64 blob is in the
/// OpenSSH wire format, names the same type and has one of the shapes
/// ssh-keygen makes ([`contract::key_shapes`]).
fn check_ssh_key(line: &str) -> Result<(), String> {
    if line.chars().any(|c| matches!(c, '\n' | '\r' | '\0')) {
        return Err("must be a single line".to_string());
    }
    if line.starts_with(char::is_whitespace) {
        return Err("must not start with whitespace".to_string());
    }
    if let Some(c) = line.chars().find(|&c| contract::is_hidden(c)) {
        return Err(if c == '\t' {
            "separate the type, the key data and the comment with single spaces, not tabs"
                .to_string()
        } else {
            format!("must not contain control or invisible characters (found U+{:04X})", c as u32)
        });
    }
    let mut parts = line.splitn(3, ' ');
    let kind = parts.next().unwrap_or_default();
    if kind.is_empty() {
        return Err("is empty; expected `<type> <base64> [comment]`".to_string());
    }
    if !SSH_KEY_TYPES.contains(&kind) {
        return Err(format!(
            "unsupported SSH key type {}; use ssh-ed25519, ecdsa-sha2-nistp256/384/521 or ssh-rsa",
            shown(kind)
        ));
    }
    let data = match parts.next() {
        None => return Err(format!("has no key data; expected `{kind} <base64> [comment]`")),
        Some("") => {
            return Err(
                "separate the type, the key data and the comment with single spaces".to_string()
            );
        }
        Some(data) => data,
    };
    use base64::Engine as _;
    let blob = base64::engine::general_purpose::STANDARD
        .decode(data)
        .map_err(|_| "the key data is not valid base64".to_string())?;
    let not_this_kind = || format!("the key data does not encode a `{kind}` key");
    match ssh_key::PublicKey::from_bytes(&blob) {
        Ok(key) if key.algorithm().as_str() != kind => return Err(not_this_kind()),
        Ok(_) => {}
        // The wire format starts with the type's name, length first: a
        // blob that names this type but does not parse is cut short.
        Err(_) if blob.get(4..4 + kind.len()) == Some(kind.as_bytes()) => {
            return Err(format!("the key data is not a complete {kind} public key"));
        }
        Err(_) => return Err(not_this_kind()),
    }
    if contract::key_blob_ok(kind, &blob) {
        return Ok(());
    }
    Err(match kind {
        "ssh-rsa" => "an ssh-rsa key must have the exponent 65537 and a modulus of 2048, 3072 \
                      or 4096 bits, as ssh-keygen makes them"
            .to_string(),
        "ssh-ed25519" => not_this_kind(),
        _ => "an ECDSA key must hold its point uncompressed, as ssh-keygen writes it".to_string(),
    })
}

// ---------------------------------------------------------------------------
// Tests
// ---------------------------------------------------------------------------

#[cfg(test)]
mod tests {
    use super::*;

    const ED25519: &str = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIJLgSfWI3AEt8R6XSfXLkH+3w9vy7JdRatHbOVvvga38 ops@example";
    const ECDSA: &str = "ecdsa-sha2-nistp256 AAAAE2VjZHNhLXNoYTItbmlzdHAyNTYAAAAIbmlzdHAyNTYAAABBBKr8PWQQJtnjbDjoVwi+BJeq/1FMdApOa3hqRNHIvtkzFyZxX5snRAcRCReWj6jqzQEanbNRjSgm8rrwrq11qeg=";
    const HCLOUD_TOKEN: &str = "Zq8WnT3kLm0xV7pR2sY5uB9cD4eF6gH1jK8lM3nO0pQ7rS2tU5vW9xY4zA6bC1dE";
    const REGISTRAR_TOKEN: &str = "cf-registrar-token-1234567890";

    fn recipient() -> String {
        age::x25519::Identity::generate().to_public().to_string()
    }

    fn region(location: &str) -> Region {
        Region {
            provider: Provider::Hetzner,
            location: location.to_string(),
            control_plane: NodeGroup { sku: "cpx32".to_string(), count: 3 },
            workers: NodeGroup { sku: "cpx42".to_string(), count: 2 },
            network: NodeNetwork::Auto,
            load_balancer: LoadBalancerSpec::default(),
        }
    }

    fn sample() -> ProvisionRequest {
        ProvisionRequest {
            api_version: API_VERSION.to_string(),
            org: Org { name: "Acme Corp".to_string(), email: "ops@acme.example.com".to_string() },
            domain: Domain::Pool {
                pool_domain: "sovereign.openova.io".to_string(),
                subdomain: "acme".to_string(),
            },
            regions: vec![region("fsn1"), region("hel1")],
            components: default_components(),
            ssh_public_keys: vec![ED25519.to_string(), ECDSA.to_string()],
            cloud_token: SecretString::new(HCLOUD_TOKEN),
            handoff_token: None,
            custody: Custody {
                custodians: (0..3)
                    .map(|i| Custodian {
                        recipient: recipient(),
                        label: Some(format!("custodian-{i}")),
                    })
                    .collect(),
                openbao_shares: None,
                openbao_threshold: 3,
                seal: Seal::Shamir,
            },
            keycloak: Keycloak { topology: KeycloakTopology::PerOrganization },
            on_failure: FailurePolicy::Rollback,
            dnssec: false,
        }
    }

    fn byo_api() -> Domain {
        Domain::ByoApi {
            fqdn: "k8s-prod.acme.com".to_string(),
            registrar: Registrar::Cloudflare,
            registrar_token: SecretString::new(REGISTRAR_TOKEN),
        }
    }

    /// The paths of the errors of `req`, which must be invalid.
    fn paths(req: &ProvisionRequest) -> Vec<String> {
        req.validate().expect_err("request should be invalid").into_iter().map(|e| e.path).collect()
    }

    /// The single error of `req`.
    fn only_error(req: &ProvisionRequest) -> FieldError {
        let errs = req.validate().expect_err("request should be invalid");
        assert_eq!(errs.len(), 1, "expected one error, got {errs:#?}");
        errs.into_iter().next().unwrap()
    }

    fn sample_json() -> serde_json::Value {
        let mut v = serde_json::to_value(sample()).unwrap();
        v["cloud_token"] = HCLOUD_TOKEN.into();
        v
    }

    fn parse_err(v: &serde_json::Value) -> Vec<FieldError> {
        parse_provision(v.to_string().as_bytes()).expect_err("body should be rejected")
    }

    #[test]
    fn sample_is_valid_and_has_name_fqdn_and_secrets() {
        assert_eq!(HCLOUD_TOKEN.len(), 64);
        let req = sample();
        req.validate().unwrap();
        assert_eq!(req.fqdn(), "acme.sovereign.openova.io");
        assert_eq!(req.name(), "acme");
        let secrets = req.secrets();
        assert_eq!(secrets.len(), 1);
        assert_eq!(secrets[0].0, "cloud_token");
        assert_eq!(secrets[0].1.expose(), HCLOUD_TOKEN);

        let mut req = sample();
        req.domain = byo_api();
        req.validate().unwrap();
        assert_eq!(req.fqdn(), "k8s-prod.acme.com");
        assert_eq!(req.name(), "k8s-prod");
        let names: Vec<_> =
            req.secrets().iter().map(|(n, s)| (*n, s.expose().to_string())).collect();
        assert_eq!(
            names,
            vec![
                ("cloud_token", HCLOUD_TOKEN.to_string()),
                ("registrar_token", REGISTRAR_TOKEN.to_string())
            ]
        );

        req.domain = Domain::ByoManual { fqdn: "acme.io".to_string() };
        req.validate().unwrap();
        assert_eq!(req.name(), "acme");
    }

    #[test]
    fn component_graph_is_closed_and_ordered() {
        // Every dependency is a known component listed before its dependent.
        for (i, c) in COMPONENTS.iter().enumerate() {
            for dep in crate::release::depends_on(c) {
                let j = COMPONENTS.iter().position(|x| x == dep).expect("known dep");
                assert!(j < i, "{c} depends on later {dep}");
            }
        }
        assert_eq!(COMPONENTS.len(), 12);
        assert!(crate::release::depends_on("cilium").is_empty());
        assert_eq!(crate::release::depends_on("catalyst-platform"), &["gitea"]);
    }

    #[test]
    fn api_version_must_be_exact() {
        let mut req = sample();
        req.api_version = "catalyst.openova.io/v2".to_string();
        let e = only_error(&req);
        assert_eq!(e.path, "api_version");
        assert!(e.message.contains(API_VERSION), "{}", e.message);
    }

    #[test]
    fn org_name_rules() {
        let mut req = sample();
        req.org.name = "   ".to_string();
        assert_eq!(only_error(&req).path, "org.name");
        req.org.name = "x".repeat(101);
        assert_eq!(only_error(&req).path, "org.name");
        req.org.name = "é".repeat(100);
        req.validate().unwrap();
    }

    #[test]
    fn org_email_rules() {
        for bad in [
            "",
            "ops.acme.com",
            "ops@@acme.com",
            "a@b@acme.com",
            "@acme.com",
            "ops@localhost",
            "ops @acme.com",
            "ops@acme.com.",
            "ops@-acme.com",
            "ops@acme..com",
        ] {
            let mut req = sample();
            req.org.email = bad.to_string();
            let e = only_error(&req);
            assert_eq!(e.path, "org.email", "{bad:?}");
        }
        let mut req = sample();
        req.org.email = format!("{}@acme.com", "a".repeat(250));
        assert_eq!(only_error(&req).path, "org.email");
        for good in ["ops@acme.com", "First.Last+tag@Mail.Acme.COM", "x@163.com"] {
            req.org.email = good.to_string();
            req.validate().unwrap_or_else(|e| panic!("{good}: {e:?}"));
        }
    }

    #[test]
    fn check_label_rules() {
        assert!(check_label("acme-1").is_ok());
        assert!(check_label("1acme").is_ok());
        assert!(check_label("").is_err());
        assert!(check_label(&"a".repeat(63)).is_ok());
        assert!(check_label(&"a".repeat(64)).is_err());
        assert!(check_label("-acme").is_err());
        assert!(check_label("acme-").is_err());
        assert!(check_label("Acme").unwrap_err().contains("lowercase"));
        assert!(check_label("ac_me").is_err());
        assert!(check_label("ac.me").is_err());
    }

    #[test]
    fn check_fqdn_rules() {
        assert!(check_fqdn("acme.com").is_ok());
        assert!(check_fqdn("a-1.b.c.example").is_ok());
        assert!(check_fqdn("").is_err());
        assert!(check_fqdn("acme").unwrap_err().contains("two labels"));
        assert!(check_fqdn("acme.com.").unwrap_err().contains("dot"));
        assert!(check_fqdn("Acme.com").unwrap_err().contains("lowercase"));
        assert!(check_fqdn("acme..com").is_err());
        assert!(check_fqdn("-acme.com").is_err());
        assert!(check_fqdn("1acme.com").unwrap_err().contains("start with a letter"));
        assert!(check_fqdn("acme.1234").is_err());
        assert!(check_fqdn("ac me.com").is_err());
        let long = format!("{}.com", vec!["a".repeat(63); 4].join("."));
        assert!(long.len() > 253);
        assert!(check_fqdn(&long).unwrap_err().contains("253"));
    }

    #[test]
    fn pool_subdomain_rules() {
        for (sub, needle) in [
            ("api", "reserved"),
            ("k8s", "reserved"),
            ("1acme", "letter"),
            ("Acme", "lowercase"),
            ("ac.me", "`.`"),
            ("", "empty"),
            ("acme-", "`-`"),
        ] {
            let mut req = sample();
            req.domain = Domain::Pool {
                pool_domain: "sovereign.openova.io".to_string(),
                subdomain: sub.to_string(),
            };
            let e = only_error(&req);
            assert_eq!(e.path, "domain.subdomain", "{sub:?}");
            assert!(e.message.contains(needle), "{sub:?}: {}", e.message);
        }
        // A valid name, but too long to leave room for any subdomain of
        // up to 63 characters within DNS's 253.
        let pool = format!("{}.io", vec!["p".repeat(63); 3].join("."));
        assert!(check_fqdn(&pool).is_ok());
        let mut req = sample();
        req.domain = Domain::Pool { pool_domain: pool, subdomain: "a".into() };
        let e = only_error(&req);
        assert_eq!(e.path, "domain.pool_domain");
        assert!(e.message.contains("at most 189"), "{}", e.message);
    }

    #[test]
    fn pool_domain_and_byo_fqdn_rules() {
        let mut req = sample();
        req.domain =
            Domain::Pool { pool_domain: "openova".to_string(), subdomain: "acme".to_string() };
        assert_eq!(paths(&req), ["domain.pool_domain"]);

        req.domain = Domain::ByoManual { fqdn: "Acme.com".to_string() };
        assert_eq!(paths(&req), ["domain.fqdn"]);

        req.domain = Domain::ByoApi {
            fqdn: "acme".to_string(),
            registrar: Registrar::Ovh,
            registrar_token: SecretString::new("  "),
        };
        assert_eq!(paths(&req), ["domain.fqdn", "domain.registrar_token"]);

        // Each registrar's token shape, checked before anything is spent,
        // and the message never repeats the token.
        req.domain = Domain::ByoApi {
            fqdn: "acme.com".to_string(),
            registrar: Registrar::Namecheap,
            registrar_token: SecretString::new("acme:k3y-only"),
        };
        let e = only_error(&req);
        assert_eq!(e.path, "domain.registrar_token");
        assert!(e.message.contains("apiUser:apiKey:clientIP"), "{}", e.message);
        assert!(!e.message.contains("k3y-only"), "{}", e.message);
    }

    #[test]
    fn region_count_rules() {
        let mut req = sample();
        req.regions.clear();
        assert_eq!(paths(&req), ["regions"]);

        let locs = ["fsn1", "nbg1", "hel1", "ash", "hil", "sin"];
        req.regions = locs.iter().map(|l| region(l)).collect();
        req.validate().unwrap();
        // 9 regions: too many, and (only 6 locations) duplicates.
        req.regions = (0..9).map(|i| region(locs[i % 6])).collect();
        let p = paths(&req);
        assert_eq!(p[0], "regions");
        assert!(req.validate().unwrap_err()[0].message.contains("at most 8"));
    }

    #[test]
    fn duplicate_location_is_reported_on_the_later_region() {
        let mut req = sample();
        req.regions = vec![region("fsn1"), region("nbg1"), region("fsn1")];
        let e = only_error(&req);
        assert_eq!(e.path, "regions[2].location");
        assert!(e.message.contains("regions[0]"), "{}", e.message);
    }

    #[test]
    fn unknown_location() {
        let mut req = sample();
        req.regions[1].location = "fra1".to_string();
        let e = only_error(&req);
        assert_eq!(e.path, "regions[1].location");
        assert!(e.message.contains("fsn1, nbg1, hel1, ash, hil, sin"), "{}", e.message);
    }

    #[test]
    fn control_plane_count_must_be_1_or_3() {
        for n in [0, 2, 4, 5] {
            let mut req = sample();
            req.regions[1].control_plane.count = n;
            assert_eq!(paths(&req), ["regions[1].control_plane.count"], "{n}");
        }
        let mut req = sample();
        req.regions[0].control_plane.count = 1;
        req.validate().unwrap();
    }

    #[test]
    fn worker_count_is_0_to_500_within_the_placement_groups() {
        let mut req = sample();
        req.regions[0].workers.count = 0;
        req.validate().unwrap();
        req.regions[0].workers.count = 497;
        req.validate().unwrap();
        // 3 + 498 servers need 51 spread groups of 10; a project holds 50.
        req.regions[0].workers.count = 498;
        let e = req.validate().unwrap_err();
        assert_eq!(e[0].path, "regions[0].workers.count");
        assert!(e[0].message.contains("at most 50"), "{}", e[0].message);
        req.regions[0].control_plane.count = 1;
        req.regions[0].workers.count = 499;
        req.validate().unwrap();
        req.regions[0].workers.count = 501;
        assert_eq!(paths(&req), ["regions[0].workers.count"]);
    }

    #[test]
    fn skus_must_be_known_even_with_zero_workers() {
        let mut req = sample();
        req.regions[0].control_plane.sku = "cx22".to_string();
        req.regions[1].workers.sku = "m5.large".to_string();
        req.regions[1].workers.count = 0;
        let errs = req.validate().unwrap_err();
        let p: Vec<_> = errs.iter().map(|e| e.path.as_str()).collect();
        assert_eq!(p, ["regions[0].control_plane.sku", "regions[1].workers.sku"]);
        assert!(
            errs[0].message.contains("unknown Hetzner server type `cx22`"),
            "{}",
            errs[0].message
        );
        assert!(errs[0].message.contains("cpx32"), "{}", errs[0].message);
    }

    #[test]
    fn ssh_key_count_rules() {
        let mut req = sample();
        req.ssh_public_keys.clear();
        assert_eq!(paths(&req), ["ssh_public_keys"]);
        req.ssh_public_keys = vec![ED25519.to_string(); 11];
        assert_eq!(paths(&req), ["ssh_public_keys"]);
        req.ssh_public_keys = vec![ED25519.to_string(); 10];
        req.validate().unwrap();
    }

    /// Keys `ssh-keygen` makes, of every supported type, are accepted; the
    /// same key data under another type's name is not.
    #[test]
    fn keys_made_by_ssh_keygen_are_accepted() {
        let dir = tempfile::tempdir().unwrap();
        for (kind, args) in [
            ("ssh-ed25519", &["-t", "ed25519"][..]),
            ("ssh-rsa", &["-t", "rsa", "-b", "2048"][..]),
            ("ecdsa-sha2-nistp256", &["-t", "ecdsa", "-b", "256"][..]),
            ("ecdsa-sha2-nistp384", &["-t", "ecdsa", "-b", "384"][..]),
            ("ecdsa-sha2-nistp521", &["-t", "ecdsa", "-b", "521"][..]),
        ] {
            let path = dir.path().join(kind);
            let ok = std::process::Command::new("ssh-keygen")
                .args(args)
                .args(["-q", "-N", "", "-C", "me@example", "-f"])
                .arg(&path)
                .status()
                .expect("ssh-keygen (openssh-client) runs");
            assert!(ok.success(), "{kind}");
            let line = std::fs::read_to_string(path.with_extension("pub")).unwrap();
            let line = line.trim();
            assert!(line.starts_with(kind), "{line}");
            check_ssh_key(line).unwrap_or_else(|e| panic!("{kind}: {e}"));
            let data = line.split_whitespace().nth(1).unwrap();
            let other = if kind == "ssh-rsa" { "ssh-ed25519" } else { "ssh-rsa" };
            let e = check_ssh_key(&format!("{other} {data}")).unwrap_err();
            assert!(e.contains(&format!("does not encode a `{other}` key")), "{e}");
        }
    }

    #[test]
    fn ssh_key_format_rules() {
        let ed_data = ED25519.split_whitespace().nth(1).unwrap();
        let ec_data = ECDSA.split_whitespace().nth(1).unwrap();
        let cases: Vec<(String, &str)> = vec![
            (format!("ssh-dss {ed_data}"), "unsupported SSH key type `ssh-dss`"),
            (format!("ssh-foo {ed_data}"), "unsupported SSH key type `ssh-foo`"),
            ("".to_string(), "empty"),
            ("ssh-ed25519".to_string(), "no key data"),
            ("ssh-ed25519 not*base64!".to_string(), "not valid base64"),
            ("ssh-ed25519 QUJDRA==".to_string(), "does not encode"),
            // Valid blob of another type.
            (format!("ssh-ed25519 {ec_data}"), "does not encode a `ssh-ed25519` key"),
            (format!("ssh-rsa {ed_data}"), "does not encode a `ssh-rsa` key"),
            // Truncated ed25519 blob (the key itself cut short).
            (format!("ssh-ed25519 {}", &ed_data[..40]), "not a complete"),
            (format!("{ED25519}\nssh-ed25519 {ed_data} evil"), "single line"),
        ];
        for (key, needle) in cases {
            let mut req = sample();
            req.ssh_public_keys = vec![ED25519.to_string(), key.clone()];
            let e = only_error(&req);
            assert_eq!(e.path, "ssh_public_keys[1]", "{key:?}");
            assert!(e.message.contains(needle), "{key:?}: {}", e.message);
        }
        let e = {
            let mut req = sample();
            req.ssh_public_keys[0] = format!("ssh-dss {ed_data}");
            only_error(&req)
        };
        assert_eq!(
            e.message,
            "unsupported SSH key type `ssh-dss`; use ssh-ed25519, ecdsa-sha2-nistp256/384/521 or ssh-rsa"
        );
        // Without a comment, or with spaces in it, a key is fine; the
        // fields are separated by single spaces, as ssh-keygen writes them.
        let mut req = sample();
        req.ssh_public_keys = vec![format!("ssh-ed25519 {ed_data}"), format!("{ECDSA} a b c")];
        req.validate().unwrap();
        for (key, needle) in [
            (format!("ssh-ed25519   {ed_data}"), "single spaces"),
            (format!("ssh-ed25519\t{ed_data}"), "not tabs"),
            (format!(" ssh-ed25519 {ed_data}"), "start with whitespace"),
            (format!("ssh-ed25519 {ed_data} \u{202E}evil"), "U+202E"),
        ] {
            let mut req = sample();
            req.ssh_public_keys = vec![key.clone()];
            assert!(only_error(&req).message.contains(needle), "{key:?}");
        }
    }

    #[test]
    fn cloud_token_rules_never_echo_the_token() {
        let mut req = sample();
        req.cloud_token = SecretString::new("");
        let e = only_error(&req);
        assert_eq!(e.path, "cloud_token");
        assert!(e.message.contains("required"));

        for bad in [
            HCLOUD_TOKEN[..63].to_string(),
            format!("{HCLOUD_TOKEN}A"),
            format!("{}-", &HCLOUD_TOKEN[..63]),
            format!("{HCLOUD_TOKEN}\n"),
        ] {
            let mut req = sample();
            req.cloud_token = SecretString::new(bad.clone());
            let e = only_error(&req);
            assert_eq!(e.path, "cloud_token");
            assert!(!e.message.contains(bad.trim()), "token leaked: {}", e.message);
            assert!(!e.message.contains(&HCLOUD_TOKEN[..20]), "token leaked: {}", e.message);
        }
    }

    fn custodians(n: usize) -> Vec<Custodian> {
        (0..n).map(|_| Custodian { recipient: recipient(), label: None }).collect()
    }

    #[test]
    fn custody_recipient_rules() {
        let mut req = sample();
        req.custody.custodians.clear();
        assert_eq!(paths(&req), ["custody.custodians"]);

        req.custody.custodians = custodians(11);
        assert_eq!(paths(&req), ["custody.custodians"]);

        let good = recipient();
        let with = |r: String| Custodian { recipient: r, label: None };
        req.custody.custodians = vec![
            with(good.clone()),
            with(good.to_uppercase().replace("AGE1", "age1")),
            with("age1notarecipient".to_string()),
            with(ED25519.to_string()),
            with(format!(" {good}")),
            with(good.clone()),
        ];
        assert_eq!(
            paths(&req),
            [
                "custody.custodians[1].recipient",
                "custody.custodians[2].recipient",
                "custody.custodians[3].recipient",
                "custody.custodians[4].recipient",
                "custody.custodians[5].recipient",
            ]
        );
        let e = only_error(&{
            let mut r = sample();
            r.custody.custodians[2].recipient = r.custody.custodians[0].recipient.clone();
            r
        });
        assert_eq!(e.path, "custody.custodians[2].recipient");
        assert!(e.message.contains("custodians[0]"), "{}", e.message);
        for bad in ["", " ", "x\n", &"x".repeat(65)] {
            let mut r = sample();
            r.custody.custodians[1].label = Some(bad.to_string());
            assert_eq!(only_error(&r).path, "custody.custodians[1].label", "{bad:?}");
        }
    }

    #[test]
    fn custody_share_and_threshold_rules() {
        // (custodians, shares, threshold, the fields in error)
        let cases: &[(usize, Option<u8>, u8, &[&str])] = &[
            (3, Some(0), 1, &["custody.openbao_shares"]),
            (3, Some(11), 2, &["custody.openbao_shares"]),
            (3, Some(2), 2, &["custody.openbao_shares"]),
            (3, None, 0, &["custody.openbao_threshold"]),
            (3, None, 4, &["custody.openbao_threshold"]),
            (3, None, 1, &["custody.openbao_threshold"]),
            (2, Some(5), 4, &["custody.custodians"]),
            (2, None, 3, &["custody.openbao_threshold"]),
            (3, Some(6), 2, &["custody.openbao_shares"]),
            (2, None, 1, &["custody.openbao_shares"]),
        ];
        for &(n, shares, threshold, want) in cases {
            let mut req = sample();
            req.custody.custodians = custodians(n);
            req.custody.openbao_shares = shares;
            req.custody.openbao_threshold = threshold;
            assert_eq!(paths(&req), want, "{n} custodians, {shares:?}/{threshold}");
        }
        let mut req = sample();
        req.custody.openbao_threshold = 1;
        assert_eq!(
            only_error(&req).message,
            "a threshold of 1 with 3 shares lets any single holder unseal; use at least 2"
        );
        let mut req = sample();
        req.custody.custodians = custodians(3);
        req.custody.openbao_shares = Some(7);
        req.custody.openbao_threshold = 3;
        let e = only_error(&req);
        assert_eq!(e.path, "custody.openbao_shares");
        assert!(
            e.message.contains("give one of them 3 shares, enough to unseal alone"),
            "{}",
            e.message
        );
        for (n, shares, threshold) in [
            (1, None, 1),
            (2, None, 2),
            (3, None, 2),
            (3, Some(5), 3),
            (10, None, 10),
            (4, Some(8), 3),
        ] {
            req.custody.custodians = custodians(n);
            req.custody.openbao_shares = shares;
            req.custody.openbao_threshold = threshold;
            req.validate().unwrap_or_else(|e| panic!("{n}/{shares:?}/{threshold}: {e:?}"));
            assert_eq!(req.custody.shares(), shares.unwrap_or(n as u8));
        }
        // Shares are dealt round-robin.
        req.custody.custodians = custodians(3);
        req.custody.openbao_shares = Some(5);
        let holders: Vec<&str> = (0..5).map(|i| req.custody.holder(i).recipient.as_str()).collect();
        let r = req.custody.recipients();
        assert_eq!(holders, [&r[0], &r[1], &r[2], &r[0], &r[1]]);
    }

    #[test]
    fn component_rules() {
        // Optional components can be left out when nothing selected needs them.
        let mut req = sample();
        req.components.retain(|c| {
            !["catalyst-platform", "gitea", "keycloak", "nats-jetstream"].contains(&c.as_str())
        });
        req.validate().unwrap();

        // Unknown and duplicate.
        let mut req = sample();
        req.components.push("istio".to_string());
        req.components.push("flux".to_string());
        let errs = req.validate().unwrap_err();
        assert_eq!(errs.len(), 2, "{errs:#?}");
        assert_eq!(errs[0].path, "components[12]");
        assert!(errs[0].message.contains("unknown component `istio`"));
        assert_eq!(errs[1].path, "components[13]");
        assert!(errs[1].message.contains("components[2]"), "{}", errs[1].message);

        // A required component cannot be deselected.
        let mut req = sample();
        req.components.retain(|c| c != "powerdns");
        let e = only_error(&req);
        assert_eq!(e.path, "components");
        assert!(e.message.contains("`powerdns` is required"), "{}", e.message);

        // A selected component needs its dependencies.
        let mut req = sample();
        req.components.retain(|c| c != "keycloak");
        let e = only_error(&req);
        let gitea = req.components.iter().position(|c| c == "gitea").unwrap();
        assert_eq!(e.path, format!("components[{gitea}]"));
        assert_eq!(e.message, "`gitea` depends on `keycloak`, which is not selected");

        // spire is optional, but required openbao depends on it.
        let mut req = sample();
        req.components.retain(|c| c != "spire" && c != "nats-jetstream");
        let e = only_error(&req);
        assert!(e.message.contains("`openbao` depends on `spire`"), "{}", e.message);

        // An empty selection lacks every required component.
        let mut req = sample();
        req.components.clear();
        assert_eq!(paths(&req), vec!["components"; REQUIRED_COMPONENTS.len()]);
    }

    #[test]
    fn all_errors_are_collected() {
        let mut req = sample();
        req.api_version = "v1".to_string();
        req.org.email = "nope".to_string();
        req.regions[1].control_plane.count = 2;
        req.ssh_public_keys[0] = "ssh-dss AAAA".to_string();
        req.custody.custodians[1].recipient = "x".to_string();
        req.cloud_token = SecretString::new("short");
        assert_eq!(
            paths(&req),
            [
                "api_version",
                "org.email",
                "regions[1].control_plane.count",
                "ssh_public_keys[0]",
                "cloud_token",
                "custody.custodians[1].recipient"
            ]
        );
    }

    #[test]
    fn serialized_request_carries_no_secret() {
        let mut req = sample();
        req.domain = byo_api();
        let json = serde_json::to_string(&req).unwrap();
        assert!(!json.contains(HCLOUD_TOKEN), "{json}");
        assert!(!json.contains(REGISTRAR_TOKEN), "{json}");
        assert!(!json.contains("cloud_token") && !json.contains("registrar_token"), "{json}");
        assert!(!json.contains("<redacted>"), "{json}");
        assert!(
            json.contains(r#""mode":"byo-api""#) && json.contains(r#""registrar":"cloudflare""#),
            "{json}"
        );

        // A stored request reads back, with empty secrets that validation rejects.
        let back: ProvisionRequest = serde_json::from_str(&json).unwrap();
        assert_eq!(back.fqdn(), "k8s-prod.acme.com");
        assert!(back.secrets().iter().all(|(_, s)| s.expose().is_empty()));
        assert_eq!(paths(&back), ["domain.registrar_token", "cloud_token"]);

        let add = AddRegionRequest {
            api_version: API_VERSION.to_string(),
            regions: vec![region("ash")],
            cloud_token: Some(SecretString::new(HCLOUD_TOKEN)),
        };
        let json = serde_json::to_string(&add).unwrap();
        assert!(!json.contains(HCLOUD_TOKEN) && !json.contains("cloud_token"), "{json}");
    }

    #[test]
    fn parse_accepts_a_valid_body_and_applies_defaults() {
        let mut v = sample_json();
        let obj = v.as_object_mut().unwrap();
        obj.remove("components");
        obj.remove("on_failure");
        obj.insert("keycloak".into(), serde_json::json!({"topology": "shared-sovereign"}));
        let req = parse_provision(v.to_string().as_bytes()).unwrap();
        assert_eq!(req.components, COMPONENTS);
        assert_eq!(req.on_failure, FailurePolicy::Rollback);
        assert_eq!(req.keycloak.topology, KeycloakTopology::SharedSovereign);
        assert_eq!(req.cloud_token.expose(), HCLOUD_TOKEN);

        let mut v = sample_json();
        v["on_failure"] = "keep".into();
        v["domain"] = serde_json::json!({
            "mode": "byo-api", "fqdn": "acme.com", "registrar": "namecheap",
            "registrar_token": "acme:t0k:203.0.113.7"
        });
        let req = parse_provision(v.to_string().as_bytes()).unwrap();
        assert_eq!(req.on_failure, FailurePolicy::Keep);
        assert_eq!(req.secrets()[1].1.expose(), "acme:t0k:203.0.113.7");
    }

    #[test]
    fn parse_reports_unknown_fields_at_the_containing_object() {
        let mut v = sample_json();
        v["org"]["phone"] = "123".into();
        let errs = parse_err(&v);
        assert_eq!(errs.len(), 1);
        assert_eq!(errs[0].path, "org");
        assert!(errs[0].message.starts_with("unknown field `phone`"), "{}", errs[0].message);

        let mut v = sample_json();
        v["regions"][1]["workers"]["size"] = 3.into();
        assert_eq!(parse_err(&v)[0].path, "regions[1].workers");

        let mut v = sample_json();
        v["extra"] = true.into();
        let errs = parse_err(&v);
        assert_eq!(errs[0].path, "body");
        assert!(errs[0].message.starts_with("unknown field `extra`"), "{}", errs[0].message);

        // Inside the internally tagged domain, too.
        let mut v = sample_json();
        v["domain"]["fqdn"] = "acme.com".into();
        let errs = parse_err(&v);
        assert_eq!(errs[0].path, "domain");
        assert!(errs[0].message.starts_with("unknown field `fqdn`"), "{}", errs[0].message);
    }

    #[test]
    fn parse_reports_wrong_types_at_the_field() {
        let mut v = sample_json();
        v["regions"][0]["control_plane"]["count"] = "three".into();
        let errs = parse_err(&v);
        assert_eq!(errs.len(), 1);
        assert_eq!(errs[0].path, "regions[0].control_plane.count");
        assert!(
            errs[0].message.starts_with("invalid type: string \"three\""),
            "{}",
            errs[0].message
        );
        assert!(!errs[0].message.contains("line"), "{}", errs[0].message);

        let mut v = sample_json();
        v["custody"]["openbao_shares"] = 300.into();
        assert_eq!(parse_err(&v)[0].path, "custody.openbao_shares");

        let mut v = sample_json();
        v["ssh_public_keys"][1] = 7.into();
        assert_eq!(parse_err(&v)[0].path, "ssh_public_keys[1]");

        let mut v = sample_json();
        v["regions"][0]["provider"] = "aws".into();
        let errs = parse_err(&v);
        assert_eq!(errs[0].path, "regions[0].provider");
        assert!(errs[0].message.contains("unknown variant `aws`"), "{}", errs[0].message);

        let mut v = sample_json();
        v["keycloak"]["topology"] = "per_organization".into();
        assert_eq!(parse_err(&v)[0].path, "keycloak.topology");

        for body in [&b"[1, 2]"[..], b" \"x\" ", b"null"] {
            let errs = parse_provision(body).unwrap_err();
            assert_eq!(errs, vec![FieldError::new("body", "must be a JSON object")]);
        }
        // Not even by position.
        let v = sample_json();
        let obj = v.as_object().unwrap();
        let positional: Vec<_> = obj.values().cloned().collect();
        let body = serde_json::to_vec(&positional).unwrap();
        assert_eq!(parse_provision(&body).unwrap_err()[0].message, "must be a JSON object");
    }

    #[test]
    fn parse_reports_missing_fields_at_their_path() {
        let mut v = sample_json();
        v["org"].as_object_mut().unwrap().remove("email");
        let errs = parse_err(&v);
        assert_eq!(errs, vec![FieldError::new("org.email", "missing field `email`")]);

        let mut v = sample_json();
        v.as_object_mut().unwrap().remove("custody");
        assert_eq!(parse_err(&v), vec![FieldError::new("custody", "missing field `custody`")]);

        let mut v = sample_json();
        v["regions"][1].as_object_mut().unwrap().remove("workers");
        assert_eq!(parse_err(&v)[0].path, "regions[1].workers");

        let mut v = sample_json();
        v["domain"].as_object_mut().unwrap().remove("mode");
        assert_eq!(parse_err(&v)[0].path, "domain.mode");

        // A missing cloud token parses (stored requests have none) but does
        // not validate.
        let mut v = sample_json();
        v.as_object_mut().unwrap().remove("cloud_token");
        let errs = parse_err(&v);
        assert_eq!(errs.len(), 1);
        assert_eq!(errs[0].path, "cloud_token");
    }

    #[test]
    fn parse_reports_malformed_json() {
        let errs =
            parse_provision(b"{\n  \"api_version\": \"catalyst.openova.io/v1\",\n  \"org\": {,\n}")
                .unwrap_err();
        assert_eq!(errs.len(), 1);
        assert_eq!(errs[0].path, "body");
        assert!(
            errs[0].message.starts_with("invalid JSON at line 3 column 11"),
            "{}",
            errs[0].message
        );

        let errs = parse_provision(b"").unwrap_err();
        assert_eq!(errs[0].path, "body");
        assert!(
            errs[0].message.starts_with("invalid JSON at line 1 column 0"),
            "{}",
            errs[0].message
        );

        let body = format!("{} trailing", sample_json());
        let errs = parse_provision(body.as_bytes()).unwrap_err();
        assert_eq!(errs[0].path, "body");
        assert!(errs[0].message.contains("trailing characters"), "{}", errs[0].message);
    }

    #[test]
    fn parse_then_validate_reports_validation_errors() {
        let mut v = sample_json();
        v["regions"][1]["location"] = "fsn1".into();
        v["custody"]["openbao_threshold"] = 9.into();
        let p: Vec<_> = parse_err(&v).into_iter().map(|e| e.path).collect();
        assert_eq!(p, ["regions[1].location", "custody.openbao_threshold"]);
    }

    #[test]
    fn add_region_rules() {
        let existing = vec!["fsn1".to_string(), "hel1".to_string()];
        let ok = AddRegionRequest {
            api_version: API_VERSION.to_string(),
            regions: vec![region("nbg1"), region("ash")],
            cloud_token: None,
        };
        ok.validate().unwrap();
        assert!(ok.conflicts(&existing).is_empty());

        let mut req = ok.clone();
        req.regions = vec![region("nbg1"), region("hel1"), region("nbg1")];
        req.regions[0].control_plane.count = 2;
        req.cloud_token = Some(SecretString::new("not-a-token"));
        let errs = req.validate().unwrap_err();
        let p: Vec<_> = errs.iter().map(|e| e.path.as_str()).collect();
        assert_eq!(p, ["regions[0].control_plane.count", "regions[2].location", "cloud_token"]);
        assert!(!errs[2].message.contains("not-a-token"));
        // A location the Sovereign has is a conflict with it, not a fault
        // of the request (409, not 422).
        let conflicts = req.conflicts(&existing);
        assert_eq!(conflicts.len(), 1);
        assert_eq!(conflicts[0].path, "regions[1].location");
        assert!(conflicts[0].message.contains("already has a region in `hel1`"));

        let mut req = ok.clone();
        req.regions.clear();
        assert_eq!(req.validate().unwrap_err()[0].path, "regions");

        // Existing plus new may not exceed 8.
        let existing: Vec<String> =
            ["fsn1", "nbg1", "hel1", "ash", "hil"].iter().map(|s| s.to_string()).collect();
        let mut req = ok.clone();
        req.regions = vec![region("sin"), region("fsn1"), region("nbg1"), region("hel1")];
        let errs = req.conflicts(&existing);
        assert_eq!(errs[0].path, "regions");
        assert!(errs[0].message.contains("at most 8"), "{}", errs[0].message);
    }

    #[test]
    fn parse_add_region_paths() {
        let body = serde_json::json!({
            "api_version": API_VERSION,
            "regions": [{"provider": "hetzner", "location": "sin",
                         "control_plane": {"sku": "cpx32", "count": 1},
                         "workers": {"sku": "cpx32", "count": 0}}],
            "cloud_token": HCLOUD_TOKEN
        });
        let req = parse_add_region(body.to_string().as_bytes()).unwrap();
        assert_eq!(req.cloud_token.as_ref().unwrap().expose(), HCLOUD_TOKEN);
        assert_eq!(req.conflicts(&["sin".to_string()])[0].path, "regions[0].location");

        let mut bad = body.clone();
        bad["regions"][0]["control_plane"]["count"] = "three".into();
        let errs = parse_add_region(bad.to_string().as_bytes()).unwrap_err();
        assert_eq!(errs[0].path, "regions[0].control_plane.count");

        let mut bad = body;
        bad["zone"] = "x".into();
        assert!(
            parse_add_region(bad.to_string().as_bytes()).unwrap_err()[0]
                .message
                .contains("unknown field `zone`")
        );
    }

    #[test]
    fn openapi_schema_documents_secret_fields_as_write_only() {
        use utoipa::PartialSchema as _;
        let schema = serde_json::to_value(ProvisionRequest::schema()).unwrap();
        let token = &schema["properties"]["cloud_token"];
        assert_eq!(token["type"], "string", "{schema:#}");
        assert_eq!(token["format"], "password");
        assert_eq!(token["writeOnly"], true);
        assert!(
            schema["required"].as_array().unwrap().contains(&"cloud_token".into()),
            "{schema:#}"
        );
        assert!(!schema["required"].as_array().unwrap().contains(&"components".into()));
    }
}
