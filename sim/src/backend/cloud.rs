//! `SimCloud`: a fake Hetzner Cloud project.
//!
//! Objects are [`CloudObject`] JSON under system `cloud`, one kind per
//! directory, keyed by numeric id. Names are unique per kind (Hetzner's
//! `uniqueness_error`), label selectors follow Kubernetes syntax, and the
//! token decides the scope: 64 alphanumeric characters; `readonly…` is a
//! read-only token, `invalid…` is refused on every call.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use async_trait::async_trait;
use cz_state::SecretString;
use serde_json::{Value, json};

use super::world::{ServerFault, SimWorld};
use cz_adapters::cloud::catalogue::{
    LOCATIONS, PLACEMENT_GROUPS_PER_PROJECT, SERVERS_PER_NETWORK, SERVERS_PER_PLACEMENT_GROUP,
    load_balancer_type_table, server_type_table,
};
use cz_adapters::cloud::selector::{Selector, valid_label_key, valid_label_value};
use cz_adapters::{
    AdapterResult, CloudApi, CloudObject, Limit, LoadBalancerType, ProjectLimits, ServerAction,
    ServerType, TokenScope,
};
use cz_engine::{Cause, StepError, System};

const SYS: &str = "cloud";

/// Every object kind the sim cloud stores.
pub const KINDS: [&str; 8] = [
    "server",
    "network",
    "firewall",
    "load_balancer",
    "ssh_key",
    "placement_group",
    "volume",
    "primary_ip",
];

// === tokens ===

/// The scope a token has, or why it is refused.
pub fn token_scope_of(token: &str) -> Result<TokenScope, String> {
    if token.len() != 64 || !token.chars().all(|c| c.is_ascii_alphanumeric()) {
        return Err(
            "unable to authenticate: the token must be 64 alphanumeric characters (unauthorized)"
                .into(),
        );
    }
    if token.starts_with("invalid") {
        return Err("unable to authenticate (unauthorized)".into());
    }
    Ok(if token.starts_with("readonly") { TokenScope::Read } else { TokenScope::ReadWrite })
}

/// A valid sim token with the given prefix (`readonly`, `invalid`, `rw`…).
pub fn sim_token(prefix: &str) -> SecretString {
    let mut t: String = prefix.chars().filter(char::is_ascii_alphanumeric).take(64).collect();
    while t.len() < 64 {
        t.push('x');
    }
    SecretString::new(t)
}

fn check_token(
    token: &SecretString,
    system: System,
    op: &str,
    write: bool,
) -> Result<TokenScope, StepError> {
    let scope = token_scope_of(token.expose())
        .map_err(|m| StepError::adapter(system, op, Cause::Unauthorized, m))?;
    if write && scope == TokenScope::Read {
        return Err(StepError::adapter(
            system,
            op,
            Cause::Unauthorized,
            "insufficient permissions for this request: the token is read-only (forbidden)",
        ));
    }
    Ok(scope)
}

/// The documentation ranges (RFC 5737) the sim's public IPv4 addresses
/// come from: 759 addresses, hosts .2 to .254 of each.
const IP_POOLS: [&str; 3] = ["203.0.113", "198.51.100", "192.0.2"];

/// The pool position of a public address of [`IP_POOLS`].
fn public_index(ip: &str) -> Option<usize> {
    let (net, host) = ip.rsplit_once('.')?;
    let pool = IP_POOLS.iter().position(|p| *p == net)?;
    let host: usize = host.parse().ok()?;
    (2..=254).contains(&host).then(|| pool * 253 + host - 2)
}

/// The project limit of `kind`: the configured one
/// ([`SimConfig::project_limits`]), else a new Hetzner project's.
fn max_of(world: &SimWorld, kind: &str) -> Option<u32> {
    if let Some(max) = world.config().project_limits.get(kind) {
        return Some(*max);
    }
    match kind {
        "server" => Some(25),
        "load_balancer" => Some(5),
        "network" => Some(10),
        "placement_group" => Some(PLACEMENT_GROUPS_PER_PROJECT),
        _ => None,
    }
}

fn delete_latency(kind: &str) -> u64 {
    match kind {
        "server" => 5_000,
        "load_balancer" => 3_000,
        "volume" => 2_000,
        _ => 500,
    }
}

fn invalid(op: &str, msg: impl Into<String>) -> StepError {
    StepError::adapter(System::Cloud, op, Cause::Invalid, msg)
}

fn decode(v: Value) -> Result<CloudObject, StepError> {
    serde_json::from_value(v)
        .map_err(|e| StepError::internal(format!("sim cloud object does not decode: {e}")))
}

/// The fake Hetzner Cloud project.
#[derive(Clone, Debug)]
pub struct SimCloud {
    world: Arc<SimWorld>,
}

impl SimCloud {
    pub fn new(world: Arc<SimWorld>) -> SimCloud {
        SimCloud { world }
    }

    pub fn world(&self) -> &Arc<SimWorld> {
        &self.world
    }

    /// One modelled API call: its latency and failure rules (`op`), then
    /// the `requests` it spends from the project's budget. `list` and
    /// `find_by_name` cost one request per kind, as the real client lists
    /// each kind.
    async fn api(&self, op: &str, latency_ms: u64, requests: u32) -> Result<(), StepError> {
        self.world.op(op, latency_ms).await?;
        self.world.charge(requests).await
    }

    fn check_kind(kind: &str, op: &str) -> Result<(), StepError> {
        if KINDS.contains(&kind) {
            Ok(())
        } else {
            Err(invalid(op, format!("invalid_input: unknown object kind `{kind}`")))
        }
    }

    /// Objects of one kind, by id.
    pub async fn objects_of(&self, kind: &str) -> Result<Vec<CloudObject>, StepError> {
        let mut out: Vec<CloudObject> =
            self.world.list(SYS, kind).await?.into_iter().map(decode).collect::<Result<_, _>>()?;
        out.sort_by_key(|o| o.id);
        Ok(out)
    }

    /// Every object of every kind (kind order, then id).
    pub async fn all_objects(&self) -> Result<Vec<CloudObject>, StepError> {
        let mut out = Vec::new();
        for kind in KINDS {
            out.extend(self.objects_of(kind).await?);
        }
        Ok(out)
    }

    pub async fn get(&self, kind: &str, id: i64) -> Result<Option<CloudObject>, StepError> {
        Self::check_kind(kind, "get")?;
        self.world.get(SYS, kind, &id.to_string()).await?.map(decode).transpose()
    }

    /// The server or load balancer whose public IPv4 is `ip`.
    pub async fn by_ipv4(&self, kind: &str, ip: &str) -> Result<Option<CloudObject>, StepError> {
        Ok(self
            .objects_of(kind)
            .await?
            .into_iter()
            .find(|o| o.attrs.get("ipv4").and_then(Value::as_str) == Some(ip)))
    }

    /// Creates an object (what the hcloud provider does for tofu). Fails
    /// with `Conflict` ("uniqueness_error: name is already used") when the
    /// name is taken in that kind, `QuotaExceeded` over a project limit.
    /// Servers and load balancers get a public IPv4 `203.0.113.N`
    /// (TEST-NET-3) and a private IP `10.0.1.N`. Op name `cloud.create`.
    pub async fn create(
        &self,
        kind: &str,
        name: &str,
        labels: BTreeMap<String, String>,
        attrs: Value,
    ) -> Result<CloudObject, StepError> {
        self.world.op("cloud.create", 0).await?;
        Self::check_kind(kind, "create")?;
        if name.is_empty() || name.len() > 63 {
            return Err(invalid("create", format!("invalid_input: invalid name `{name}`")));
        }
        for (k, v) in &labels {
            if !valid_label_key(k) || !valid_label_value(v) {
                return Err(invalid(
                    "create",
                    format!("invalid_input: label `{k}={v}` is invalid"),
                ));
            }
        }
        let mut attrs = match attrs {
            Value::Object(m) => m,
            Value::Null => serde_json::Map::new(),
            other => {
                return Err(invalid(
                    "create",
                    format!("invalid_input: attrs must be an object, got {other}"),
                ));
            }
        };
        let _kind_lock = self.world.lock(SYS, kind).await;
        let existing = self.objects_of(kind).await?;
        if existing.iter().any(|o| o.name == name) {
            return Err(StepError::adapter(
                System::Cloud,
                "create",
                Cause::Conflict,
                format!("uniqueness_error: name is already used ({kind} `{name}`)"),
            ));
        }
        if let Some(max) = max_of(&self.world, kind)
            && existing.len() as u32 >= max
        {
            return Err(StepError::adapter(
                System::Cloud,
                "create",
                Cause::QuotaExceeded,
                format!("resource_limit_exceeded: {kind} limit exceeded ({max})"),
            ));
        }
        if kind == "server" {
            // Hetzner's fixed limits: 10 servers per spread placement group,
            // 100 per private network.
            for (attr, most) in
                [("placement_group", SERVERS_PER_PLACEMENT_GROUP), ("network", SERVERS_PER_NETWORK)]
            {
                let Some(of) = attrs.get(attr).and_then(Value::as_str) else { continue };
                let members = existing
                    .iter()
                    .filter(|o| o.attrs.get(attr).and_then(Value::as_str) == Some(of))
                    .count() as u32;
                if members >= most {
                    return Err(StepError::adapter(
                        System::Cloud,
                        "create",
                        Cause::QuotaExceeded,
                        format!(
                            "resource_limit_exceeded: {attr} `{of}` holds at most {most} servers"
                        ),
                    ));
                }
            }
        }
        if matches!(kind, "server" | "load_balancer") && !attrs.contains_key("ipv4") {
            let _ip_lock = self.world.lock(SYS, "ip-pool").await;
            let mut used = BTreeSet::new();
            for k in ["server", "load_balancer"] {
                for o in self.objects_of(k).await? {
                    if let Some(n) =
                        o.attrs.get("ipv4").and_then(Value::as_str).and_then(public_index)
                    {
                        used.insert(n);
                    }
                }
            }
            let n = (0..IP_POOLS.len() * 253).find(|n| !used.contains(n)).ok_or_else(|| {
                StepError::adapter(
                    System::Cloud,
                    "create",
                    Cause::QuotaExceeded,
                    "ip_unavailable: no public IPv4 left",
                )
            })?;
            let (pool, host) = (n / 253, n % 253 + 2);
            attrs.insert("ipv4".into(), json!(format!("{}.{host}", IP_POOLS[pool])));
            // A server without a network (`"network": null`) has no private IP.
            if !attrs.get("network").is_some_and(Value::is_null) {
                attrs
                    .entry("private_ip")
                    .or_insert_with(|| json!(format!("10.0.{}.{host}", pool + 1)));
            }
            // Written while the pool lock is held, so the address is taken.
            let obj = self.finish_create(kind, name, labels, attrs).await?;
            return Ok(obj);
        }
        self.finish_create(kind, name, labels, attrs).await
    }

    async fn finish_create(
        &self,
        kind: &str,
        name: &str,
        labels: BTreeMap<String, String>,
        mut attrs: serde_json::Map<String, Value>,
    ) -> Result<CloudObject, StepError> {
        attrs.insert("created".into(), json!(chrono::Utc::now().to_rfc3339()));
        if matches!(kind, "server" | "load_balancer" | "primary_ip" | "volume") {
            attrs.entry("location").or_insert_with(|| json!("fsn1"));
        }
        if kind == "server" {
            attrs.insert("status".into(), json!("running"));
            // A fault of the config, on this name's first server only.
            if let Some(fault) = self.world.config().server_faults.get(name)
                && self.world.get(SYS, "faulted", name).await?.is_none()
            {
                self.world.put(SYS, "faulted", name, &json!(fault)).await?;
                match fault {
                    ServerFault::Off => attrs.insert("status".into(), json!("off")),
                    ServerFault::Hang => attrs.insert("boot".into(), json!("hang")),
                };
            }
        }
        let id = self.world.next_id().await?;
        let obj = CloudObject {
            kind: kind.to_owned(),
            id,
            name: name.to_owned(),
            labels,
            attrs: Value::Object(attrs),
        };
        self.store(&obj).await?;
        Ok(obj)
    }

    /// Writes `obj` to the world, under its kind and id.
    async fn store(&self, obj: &CloudObject) -> Result<(), StepError> {
        let body = serde_json::to_value(obj).expect("cloud objects encode");
        self.world.put(SYS, &obj.kind, &obj.id.to_string(), &body).await
    }

    /// Renames/relabels an object in place (`tofu apply` of an update).
    pub async fn update(
        &self,
        kind: &str,
        id: i64,
        name: &str,
        labels: BTreeMap<String, String>,
    ) -> Result<CloudObject, StepError> {
        self.world.op("cloud.update", 0).await?;
        Self::check_kind(kind, "update")?;
        let _kind_lock = self.world.lock(SYS, kind).await;
        let mut obj = self.get(kind, id).await?.ok_or_else(|| {
            StepError::adapter(
                System::Cloud,
                "update",
                Cause::NotFound,
                format!("not_found: {kind} {id}"),
            )
        })?;
        if obj.name != name && self.objects_of(kind).await?.iter().any(|o| o.name == name) {
            return Err(StepError::adapter(
                System::Cloud,
                "update",
                Cause::Conflict,
                format!("uniqueness_error: name is already used ({kind} `{name}`)"),
            ));
        }
        obj.name = name.to_owned();
        obj.labels = labels;
        self.store(&obj).await?;
        Ok(obj)
    }

    /// Removes an object without token or latency (tofu destroy does its
    /// own); returns whether it existed.
    pub async fn remove(&self, kind: &str, id: i64) -> Result<bool, StepError> {
        Self::check_kind(kind, "delete")?;
        let _kind_lock = self.world.lock(SYS, kind).await;
        self.world.delete(SYS, kind, &id.to_string()).await
    }
}

#[async_trait]
impl CloudApi for SimCloud {
    async fn token_scope(&self, token: &SecretString) -> AdapterResult<TokenScope> {
        self.api("cloud.token_scope", 300, 1).await?;
        check_token(token, System::Cloud, "token_scope", false)
    }

    async fn limits(&self, token: &SecretString) -> AdapterResult<ProjectLimits> {
        self.api("cloud.limits", 150, 1).await?;
        check_token(token, System::Cloud, "limits", false)?;
        let mut limit = BTreeMap::new();
        for kind in ["server", "load_balancer", "network", "placement_group"] {
            let used = self.world.list(SYS, kind).await?.len() as u32;
            limit.insert(kind, Limit { used, max: max_of(&self.world, kind).unwrap_or(u32::MAX) });
        }
        Ok(ProjectLimits {
            servers: limit["server"],
            load_balancers: limit["load_balancer"],
            networks: limit["network"],
            placement_groups: limit["placement_group"],
        })
    }

    async fn locations(&self, token: &SecretString) -> AdapterResult<Vec<String>> {
        self.api("cloud.locations", 100, 1).await?;
        check_token(token, System::Cloud, "locations", false)?;
        Ok(LOCATIONS.iter().map(|s| (*s).to_owned()).collect())
    }

    async fn server_type(
        &self,
        token: &SecretString,
        name: &str,
    ) -> AdapterResult<Option<ServerType>> {
        self.api("cloud.server_type", 100, 1).await?;
        check_token(token, System::Cloud, "server_type", false)?;
        Ok(server_type_table(name))
    }

    async fn load_balancer_type(
        &self,
        token: &SecretString,
        name: &str,
    ) -> AdapterResult<Option<LoadBalancerType>> {
        self.api("cloud.load_balancer_type", 100, 1).await?;
        check_token(token, System::Cloud, "load_balancer_type", false)?;
        Ok(load_balancer_type_table(name))
    }

    async fn list(&self, token: &SecretString, selector: &str) -> AdapterResult<Vec<CloudObject>> {
        self.api("cloud.list", 200, KINDS.len() as u32).await?;
        check_token(token, System::Cloud, "list", false)?;
        let sel = Selector::parse(selector).map_err(|m| {
            invalid("list", format!("invalid_input: label_selector `{selector}`: {m}"))
        })?;
        let mut out: Vec<CloudObject> =
            self.all_objects().await?.into_iter().filter(|o| sel.matches(&o.labels)).collect();
        out.sort_by_key(|o| o.id);
        Ok(out)
    }

    async fn find_by_name(
        &self,
        token: &SecretString,
        name: &str,
    ) -> AdapterResult<Vec<CloudObject>> {
        self.api("cloud.find_by_name", 200, KINDS.len() as u32).await?;
        check_token(token, System::Cloud, "find_by_name", false)?;
        Ok(self.all_objects().await?.into_iter().filter(|o| o.name == name).collect())
    }

    async fn object(
        &self,
        token: &SecretString,
        kind: &str,
        id: i64,
    ) -> AdapterResult<Option<CloudObject>> {
        self.api("cloud.object", 100, 1).await?;
        check_token(token, System::Cloud, "object", false)?;
        self.get(kind, id).await
    }

    async fn delete(&self, token: &SecretString, obj: &CloudObject) -> AdapterResult<()> {
        self.api("cloud.delete", delete_latency(&obj.kind), 1).await?;
        check_token(token, System::Cloud, "delete", true)?;
        self.remove(&obj.kind, obj.id).await?;
        Ok(())
    }

    /// The POST and one poll of its action. Power-on and reset leave the
    /// server `running`; a hung boot stays hung.
    async fn server_action(
        &self,
        token: &SecretString,
        id: i64,
        action: ServerAction,
    ) -> AdapterResult<()> {
        self.api("cloud.server_action", 1_000, 2).await?;
        check_token(token, System::Cloud, "server_action", true)?;
        let _lock = self.world.lock(SYS, "server").await;
        let Some(mut server) = self.get("server", id).await? else {
            return Err(StepError::adapter(
                System::Cloud,
                "server_action",
                Cause::NotFound,
                format!("not_found: server with ID '{id}' not found ({})", action.as_str()),
            ));
        };
        server.attrs["status"] = json!("running");
        self.store(&server).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backend::world::SimConfig;

    #[test]
    fn tokens_and_catalogue() {
        assert_eq!(token_scope_of(sim_token("readonly").expose()), Ok(TokenScope::Read));
        assert_eq!(token_scope_of(sim_token("rw").expose()), Ok(TokenScope::ReadWrite));
        assert!(token_scope_of(sim_token("invalid").expose()).is_err());
        assert!(token_scope_of("short").is_err());
        let cax = server_type_table("cax21").unwrap();
        assert!(cax.prices.contains_key("hel1") && !cax.prices.contains_key("ash"));
        let cpx = server_type_table("cpx31").unwrap();
        assert!(cpx.prices["ash"].1 > cpx.prices["fsn1"].1);
        assert!(server_type_table("ccx63").is_some() && server_type_table("cx99").is_none());
        assert_eq!(load_balancer_type_table("lb21").unwrap().prices.len(), 6);
    }

    fn labels(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs.iter().map(|(k, v)| ((*k).to_owned(), (*v).to_owned())).collect()
    }

    #[tokio::test]
    async fn names_are_unique_per_kind_and_tokens_scope_calls() {
        let dir = tempfile::tempdir().unwrap();
        let cloud = SimCloud::new(Arc::new(SimWorld::new(dir.path(), SimConfig::instant())));
        let rw = sim_token("rw");
        let l = labels(&[("catalyst.io/job", "j1")]);
        let s = cloud
            .create("server", "cp-0", l.clone(), json!({"server_type": "cx33"}))
            .await
            .unwrap();
        assert_eq!(s.attrs["ipv4"], "203.0.113.2");
        assert_eq!(s.attrs["private_ip"], "10.0.1.2");
        let err = cloud.create("server", "cp-0", BTreeMap::new(), Value::Null).await.unwrap_err();
        match &err {
            StepError::Adapter { cause: Cause::Conflict, message, .. } => {
                assert!(message.starts_with("uniqueness_error: name is already used"))
            }
            e => panic!("{e}"),
        }
        // Same name in another kind is fine.
        let n = cloud.create("network", "cp-0", l.clone(), Value::Null).await.unwrap();
        assert_ne!(n.id, s.id);
        let lb = cloud.create("load_balancer", "lb", BTreeMap::new(), Value::Null).await.unwrap();
        assert_eq!(lb.attrs["ipv4"], "203.0.113.3");

        assert_eq!(cloud.list(&rw, "catalyst.io/job=j1").await.unwrap().len(), 2);
        assert_eq!(cloud.find_by_name(&rw, "cp-0").await.unwrap().len(), 2);
        let bad = cloud.list(&rw, "a in (").await.unwrap_err();
        assert!(matches!(bad, StepError::Adapter { cause: Cause::Invalid, .. }));
        let limits = cloud.limits(&rw).await.unwrap();
        assert_eq!(limits.servers, Limit { used: 1, max: 25 });
        assert_eq!(limits.load_balancers.used, 1);

        let ro = sim_token("readonly");
        assert_eq!(cloud.token_scope(&ro).await.unwrap(), TokenScope::Read);
        let e = cloud.delete(&ro, &s).await.unwrap_err();
        assert!(matches!(e, StepError::Adapter { cause: Cause::Unauthorized, .. }));
        let e = cloud.locations(&sim_token("invalid")).await.unwrap_err();
        assert!(matches!(e, StepError::Adapter { cause: Cause::Unauthorized, .. }));

        cloud.delete(&rw, &s).await.unwrap();
        cloud.delete(&rw, &s).await.unwrap(); // absent is Ok
        assert!(cloud.get("server", s.id).await.unwrap().is_none());
        // The freed address is reused by the next server.
        let s2 = cloud.create("server", "cp-0", l, Value::Null).await.unwrap();
        assert_eq!(s2.attrs["ipv4"], "203.0.113.2");
        assert!(s2.id > lb.id);
        assert_eq!(cloud.all_objects().await.unwrap().len(), 3);
    }

    #[tokio::test]
    async fn hetzners_fixed_limits_hold_per_group_and_network() {
        let dir = tempfile::tempdir().unwrap();
        let config = SimConfig {
            project_limits: [("server".to_owned(), 1_000)].into(),
            ..SimConfig::instant()
        };
        let cloud = SimCloud::new(Arc::new(SimWorld::new(dir.path(), config)));
        let server = |name: String, attrs: Value| {
            let cloud = cloud.clone();
            async move { cloud.create("server", &name, BTreeMap::new(), attrs).await }
        };
        for i in 0..10 {
            server(format!("g{i}"), json!({"placement_group": "pg1", "network": "n1"}))
                .await
                .unwrap();
        }
        let e = server("g10".into(), json!({"placement_group": "pg1"})).await.unwrap_err();
        assert!(e.to_string().contains("placement_group `pg1` holds at most 10"), "{e}");
        for i in 10..100 {
            server(format!("n{i}"), json!({"network": "n1"})).await.unwrap();
        }
        let e = server("n100".into(), json!({"network": "n1"})).await.unwrap_err();
        assert!(e.to_string().contains("network `n1` holds at most 100"), "{e}");
        // Without a network: a public address only, from beyond the first
        // documentation range once it is used up.
        let mut last = None;
        for i in 0..160 {
            last = Some(server(format!("p{i}"), json!({"network": null})).await.unwrap());
        }
        let last = last.unwrap();
        assert!(last.attrs.get("private_ip").is_none(), "{:?}", last.attrs);
        assert_eq!(last.attrs["ipv4"], "198.51.100.8", "the 260th address");
    }

    #[tokio::test]
    async fn ids_unique_across_world_reopen_and_limits_enforced() {
        let dir = tempfile::tempdir().unwrap();
        let mut ids = BTreeSet::new();
        for round in 0..2 {
            let cloud = SimCloud::new(Arc::new(SimWorld::new(dir.path(), SimConfig::instant())));
            for i in 0..5 {
                let o = cloud
                    .create("network", &format!("n-{round}-{i}"), BTreeMap::new(), Value::Null)
                    .await
                    .unwrap();
                assert!(ids.insert(o.id), "id {} reused after reopen", o.id);
            }
        }
        let cloud = SimCloud::new(Arc::new(SimWorld::new(dir.path(), SimConfig::instant())));
        let e = cloud.create("network", "n-11", BTreeMap::new(), Value::Null).await.unwrap_err();
        assert!(matches!(e, StepError::Adapter { cause: Cause::QuotaExceeded, .. }));
        // Concurrent creates of one name: exactly one wins.
        let results = futures::future::join_all(
            (0..4).map(|_| cloud.create("firewall", "fw", BTreeMap::new(), Value::Null)),
        )
        .await;
        assert_eq!(results.iter().filter(|r| r.is_ok()).count(), 1);
    }
}
