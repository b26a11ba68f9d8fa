//! `SimTofu`: `tofu` with the hcloud provider, against [`SimCloud`].
//!
//! The workspace holds `catalyst-resources.json`, written by the infra
//! phase's render step:
//! `{"resources": [{"address": "hcloud_server.cp[0]", "kind": "server",
//! "name": "…", "labels": {…}, "attrs": {…}}, …]}`.
//! The state is `terraform.tfstate` (`{"serial": n, "resources": […]}`),
//! rewritten atomically after each resource change like tofu's incremental
//! state persistence, so a daemon killed mid-apply leaves exactly the state
//! real tofu would leave. `.terraform.tfstate.lock.info` guards apply,
//! destroy and import; a lock whose pid is dead is stale and removed, one
//! whose pid lives is `Unavailable` (retried until its holder lets go).

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use cz_state::SecretString;
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use tokio::sync::Mutex;

use super::cloud::{SimCloud, token_scope_of};
use super::hcloud_view::provider_view;
use super::world::{SimWorld, action_polls, write_atomic, write_atomic_async};
use cz_adapters::{
    AdapterResult, CloudObject, PlanSummary, StateResource, TofuApi, TofuEvent, TofuSink,
    TokenScope, Workspace,
};
use cz_engine::{Cause, StepError, System};

pub const MANIFEST_FILE: &str = "catalyst-resources.json";
pub const STATE_FILE: &str = "terraform.tfstate";
pub const LOCK_FILE: &str = ".terraform.tfstate.lock.info";
const INIT_DIR: &str = ".terraform";

/// One resource of the rendered manifest.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ManifestResource {
    pub address: String,
    pub kind: String,
    pub name: String,
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
    #[serde(default)]
    pub attrs: Value,
}

#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct Manifest {
    pub resources: Vec<ManifestResource>,
}

/// One resource of the sim state file (a superset of [`StateResource`]).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct StateEntry {
    pub address: String,
    pub kind: String,
    pub id: i64,
    pub name: String,
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
    #[serde(default)]
    pub attrs: Value,
}

impl StateEntry {
    /// The cloud object as the apply recorded it.
    fn to_object(&self) -> CloudObject {
        CloudObject {
            kind: self.kind.clone(),
            id: self.id,
            name: self.name.clone(),
            labels: self.labels.clone(),
            attrs: self.attrs.clone(),
        }
    }
}

#[derive(Clone, Debug, Serialize, Deserialize)]
struct TfState {
    #[serde(default = "four")]
    version: u32,
    #[serde(default)]
    terraform_version: String,
    serial: u64,
    #[serde(default)]
    lineage: String,
    resources: Vec<StateEntry>,
}

fn four() -> u32 {
    4
}

impl TfState {
    fn fresh() -> TfState {
        TfState {
            version: 4,
            terraform_version: "1.10.0-sim".into(),
            serial: 0,
            lineage: uuid::Uuid::new_v4().to_string(),
            resources: Vec::new(),
        }
    }
}

fn kind_rank(kind: &str) -> u8 {
    match kind {
        "network" => 0,
        "firewall" => 1,
        "ssh_key" => 2,
        "placement_group" => 3,
        "primary_ip" => 4,
        "volume" => 5,
        "server" => 6,
        "load_balancer" => 7,
        _ => 8,
    }
}

/// The wave a create runs in. The load balancer depends on nothing the
/// servers make (its targets are a label selector), so tofu creates it
/// beside the servers, as it does with the real module.
fn create_wave(kind: &str) -> u8 {
    match kind {
        "load_balancer" => kind_rank("server"),
        k => kind_rank(k),
    }
}

fn create_latency(kind: &str) -> u64 {
    match kind {
        "server" => 30_000,
        "load_balancer" => 15_000,
        "volume" => 5_000,
        "network" | "firewall" | "primary_ip" => 1_000,
        _ => 500,
    }
}

fn destroy_latency(kind: &str) -> u64 {
    match kind {
        "server" => 8_000,
        "load_balancer" => 4_000,
        "volume" => 3_000,
        _ => 1_000,
    }
}

fn err(op: &str, cause: Cause, msg: impl Into<String>) -> StepError {
    StepError::adapter(System::Tofu, op, cause, msg)
}

/// A cloud (or other) error as tofu reports it: system tofu, same cause,
/// the address in front.
fn as_tofu(op: &str, address: &str, e: StepError) -> StepError {
    match e {
        StepError::Adapter { cause, message, .. } => {
            err(op, cause, format!("{address}: {message}"))
        }
        other => other,
    }
}

fn send(
    sink: &TofuSink,
    kind: &str,
    address: Option<&str>,
    action: Option<&str>,
    elapsed: Option<f64>,
    message: String,
) {
    let _ = sink.send(TofuEvent {
        kind: kind.to_owned(),
        address: address.map(str::to_owned),
        action: action.map(str::to_owned),
        elapsed_s: elapsed,
        id: None,
        message,
    });
}

fn round1(d: Duration) -> f64 {
    (d.as_secs_f64() * 10.0).round() / 10.0
}

// === the state lock ===

/// The held `.terraform.tfstate.lock.info`; removed on drop (also when the
/// apply future is cancelled). A process kill leaves it behind: stale.
struct StateLock {
    path: PathBuf,
    id: String,
}

fn pid_alive(pid: u64) -> bool {
    pid > 0 && Path::new(&format!("/proc/{pid}")).exists()
}

impl StateLock {
    async fn acquire(dir: &Path, operation: &str, op: &str) -> Result<StateLock, StepError> {
        let dir = dir.to_owned();
        let operation = operation.to_owned();
        let op_name = op.to_owned();
        tokio::task::spawn_blocking(move || Self::acquire_blocking(&dir, &operation, &op_name))
            .await
            .map_err(|e| StepError::internal(format!("lock task: {e}")))?
    }

    fn acquire_blocking(dir: &Path, operation: &str, op: &str) -> Result<StateLock, StepError> {
        let path = dir.join(LOCK_FILE);
        let id = uuid::Uuid::new_v4().to_string();
        let info = json!({
            "ID": id,
            "Operation": operation,
            "Info": "",
            "Who": format!("catalyst-zero@{}", std::process::id()),
            "Version": "1.10.0-sim",
            "Created": chrono::Utc::now().to_rfc3339(),
            "Path": STATE_FILE,
            "pid": std::process::id(),
        });
        let io = |e: std::io::Error| {
            err(op, Cause::Unavailable, format!("state lock {}: {e}", path.display()))
        };
        std::fs::create_dir_all(dir).map_err(io)?;
        // Written whole, then hard-linked into place: readers never see a
        // half-written lock, and the link fails if a lock exists.
        let tmp = dir.join(format!(".{LOCK_FILE}.{id}"));
        std::fs::write(&tmp, serde_json::to_vec_pretty(&info).expect("json")).map_err(io)?;
        // Held, by a live process or by one that took it back between our
        // two tries: `Unavailable`, retried. The holder lets go when its
        // operation ends, or when its run stops (a replica that lost the
        // job's lease stops its run; a paused one does once continued).
        let mut result = Err(err(op, Cause::Unavailable, "Error acquiring the state lock"));
        for _ in 0..2 {
            match std::fs::hard_link(&tmp, &path) {
                Ok(()) => {
                    result = Ok(StateLock { path: path.clone(), id: id.clone() });
                    break;
                }
                Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
                    let held: Value = std::fs::read(&path)
                        .ok()
                        .and_then(|b| serde_json::from_slice(&b).ok())
                        .unwrap_or(Value::Null);
                    let pid = held.get("pid").and_then(Value::as_u64).unwrap_or(0);
                    if pid_alive(pid) {
                        result = Err(err(
                            op,
                            Cause::Unavailable,
                            format!(
                                "Error acquiring the state lock: the state is locked by a running process (pid {pid}, ID {}, operation {}); retrying until it lets go",
                                held.get("ID").and_then(Value::as_str).unwrap_or("?"),
                                held.get("Operation").and_then(Value::as_str).unwrap_or("?"),
                            ),
                        ));
                        break;
                    }
                    let lock_id = held.get("ID").and_then(|v| v.as_str()).unwrap_or("?").to_owned();
                    tracing::warn!(
                        lock = %path.display(),
                        pid,
                        lock_id,
                        "Removing a stale tofu state lock: its process is gone (daemon killed mid-operation)."
                    );
                    let _ = std::fs::remove_file(&path);
                }
                Err(e) => {
                    result = Err(io(e));
                    break;
                }
            }
        }
        let _ = std::fs::remove_file(&tmp);
        result
    }
}

impl Drop for StateLock {
    fn drop(&mut self) {
        let ours = std::fs::read(&self.path)
            .ok()
            .and_then(|b| serde_json::from_slice::<Value>(&b).ok())
            .is_some_and(|v| v.get("ID").and_then(Value::as_str) == Some(self.id.as_str()));
        if ours {
            let _ = std::fs::remove_file(&self.path);
        }
    }
}

// === workspace files ===

async fn read_manifest(ws: &Workspace, op: &str) -> Result<Manifest, StepError> {
    let path = ws.dir.join(MANIFEST_FILE);
    let bytes = match tokio::fs::read(&path).await {
        Ok(b) => b,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            return Err(err(
                op,
                Cause::NotFound,
                format!("no {MANIFEST_FILE} in {} (render the workspace first)", ws.dir.display()),
            ));
        }
        Err(e) => {
            return Err(err(op, Cause::Unavailable, format!("reading {}: {e}", path.display())));
        }
    };
    let m: Manifest = serde_json::from_slice(&bytes)
        .map_err(|e| err(op, Cause::Invalid, format!("{} does not parse: {e}", path.display())))?;
    let mut seen = BTreeSet::new();
    for r in &m.resources {
        if !seen.insert(&r.address) {
            return Err(err(
                op,
                Cause::Invalid,
                format!("duplicate resource address {}", r.address),
            ));
        }
        if !super::cloud::KINDS.contains(&r.kind.as_str()) {
            return Err(err(
                op,
                Cause::Invalid,
                format!("{}: unsupported kind `{}`", r.address, r.kind),
            ));
        }
    }
    Ok(m)
}

async fn require_init(ws: &Workspace, op: &str) -> Result<(), StepError> {
    if tokio::fs::metadata(ws.dir.join(INIT_DIR)).await.is_ok() {
        Ok(())
    } else {
        Err(err(
            op,
            Cause::NotFound,
            format!("workspace {} is not initialized: run `tofu init`", ws.dir.display()),
        ))
    }
}

async fn read_state(ws: &Workspace, op: &str) -> Result<TfState, StepError> {
    let path = ws.dir.join(STATE_FILE);
    match tokio::fs::read(&path).await {
        Ok(b) => serde_json::from_slice(&b).map_err(|e| {
            err(op, Cause::Invalid, format!("{} does not parse: {e}", path.display()))
        }),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(TfState::fresh()),
        Err(e) => Err(err(op, Cause::Unavailable, format!("reading {}: {e}", path.display()))),
    }
}

async fn write_state(ws: &Workspace, st: &mut TfState, op: &str) -> Result<(), StepError> {
    st.serial += 1;
    let bytes = serde_json::to_vec_pretty(st).expect("state encodes");
    write_atomic_async(ws.dir.join(STATE_FILE), bytes)
        .await
        .map_err(|e| err(op, Cause::Unavailable, format!("writing state: {e}")))
}

/// `hcloud_server.cp[10]` → ("hcloud_server.cp", 10) for natural ordering.
fn address_sort_key(a: &str) -> (String, u64, String) {
    if let Some((base, rest)) = a.split_once('[') {
        let idx = rest.trim_end_matches(']').parse().unwrap_or(u64::MAX);
        (base.to_owned(), idx, rest.to_owned())
    } else {
        (a.to_owned(), 0, String::new())
    }
}

fn role_of(e: &StateEntry) -> Value {
    if let Some(r) = e.attrs.get("role").and_then(Value::as_str) {
        return json!(r);
    }
    e.labels
        .iter()
        .find(|(k, _)| *k == "role" || k.ends_with("/role"))
        .map(|(_, v)| json!(v))
        .unwrap_or(Value::Null)
}

/// The fake tofu.
#[derive(Clone, Debug)]
pub struct SimTofu {
    world: Arc<SimWorld>,
}

impl SimTofu {
    pub fn new(world: Arc<SimWorld>) -> SimTofu {
        SimTofu { world }
    }

    fn cloud(&self) -> SimCloud {
        SimCloud::new(self.world.clone())
    }

    fn scope(token: &SecretString, op: &str) -> Result<TokenScope, StepError> {
        token_scope_of(token.expose())
            .map_err(|m| err(op, Cause::Unauthorized, format!("hcloud provider: {m}")))
    }

    /// Drops state entries whose object is gone from the cloud (what
    /// tofu's refresh does); returns the dropped entries.
    async fn refresh(&self, st: &mut TfState) -> Result<Vec<StateEntry>, StepError> {
        let cloud = self.cloud();
        let mut gone = Vec::new();
        let mut keep = Vec::new();
        for e in std::mem::take(&mut st.resources) {
            match cloud.get(&e.kind, e.id).await? {
                Some(obj) => keep.push(StateEntry { attrs: obj.attrs, ..e }),
                None => gone.push(e),
            }
        }
        st.resources = keep;
        Ok(gone)
    }

    /// Sleeps `total`, emitting `apply_progress` every 10 s (scaled).
    async fn wait_with_progress(
        &self,
        total: Duration,
        sink: &TofuSink,
        address: &str,
        action: &str,
        verb: &str,
    ) {
        let tick = self.world.scaled(10_000);
        let start = Instant::now();
        if tick.is_zero() || total <= tick {
            tokio::time::sleep(total).await;
            return;
        }
        loop {
            let left = total.saturating_sub(start.elapsed());
            if left <= tick {
                tokio::time::sleep(left).await;
                return;
            }
            tokio::time::sleep(tick).await;
            send(
                sink,
                "apply_progress",
                Some(address),
                Some(action),
                Some(round1(start.elapsed())),
                format!("{address}: Still {verb}... [{}s elapsed]", start.elapsed().as_secs()),
            );
        }
    }

    async fn create_one(
        &self,
        ws: &Workspace,
        res: &ManifestResource,
        scope: TokenScope,
        state: &Mutex<TfState>,
        sink: &TofuSink,
    ) -> Result<(), StepError> {
        let addr = res.address.as_str();
        let start = Instant::now();
        send(sink, "apply_start", Some(addr), Some("create"), None, format!("{addr}: Creating..."));
        // The provider's POST and its polls of the action, on the
        // project's budget (waiting for tokens as it would).
        let charged = self.world.charge(1 + action_polls(create_latency(&res.kind))).await;
        let total = self.world.latency(create_latency(&res.kind));
        self.wait_with_progress(total, sink, addr, "create", "creating").await;
        let created = async {
            charged?;
            self.world.check(&format!("tofu.create.{}", res.kind))?;
            if scope == TokenScope::Read {
                return Err(err(
                    "apply",
                    Cause::Unauthorized,
                    "insufficient permissions for this request: the token is read-only (forbidden)",
                ));
            }
            self.cloud().create(&res.kind, &res.name, res.labels.clone(), res.attrs.clone()).await
        }
        .await;
        let elapsed = round1(start.elapsed());
        match created {
            Ok(obj) => {
                let mut st = state.lock().await;
                st.resources.push(StateEntry {
                    address: res.address.clone(),
                    kind: obj.kind.clone(),
                    id: obj.id,
                    name: obj.name.clone(),
                    labels: obj.labels.clone(),
                    attrs: obj.attrs.clone(),
                });
                write_state(ws, &mut st, "apply").await?;
                drop(st);
                // As tofu's hook does, the event carries the new id.
                let _ = sink.send(TofuEvent {
                    kind: "apply_complete".into(),
                    address: Some(addr.to_owned()),
                    action: Some("create".into()),
                    elapsed_s: Some(elapsed),
                    id: Some(obj.id.to_string()),
                    message: format!(
                        "{addr}: Creation complete after {}s [id={}]",
                        elapsed.round() as u64,
                        obj.id
                    ),
                });
                Ok(())
            }
            Err(e) => {
                let e = as_tofu("apply", addr, e);
                send(
                    sink,
                    "apply_errored",
                    Some(addr),
                    Some("create"),
                    Some(elapsed),
                    format!("{addr}: Creation errored after {}s", elapsed.round() as u64),
                );
                let detail = match &e {
                    StepError::Adapter { message, .. } => message.clone(),
                    other => other.to_string(),
                };
                send(sink, "diagnostic", Some(addr), None, None, format!("Error: {detail}"));
                Err(e)
            }
        }
    }

    async fn destroy_entries(
        &self,
        ws: &Workspace,
        entries: Vec<StateEntry>,
        st: &mut TfState,
        sink: &TofuSink,
        op: &str,
    ) -> Result<u32, StepError> {
        let mut n = 0;
        for e in entries {
            let addr = e.address.as_str();
            let start = Instant::now();
            send(
                sink,
                "apply_start",
                Some(addr),
                Some("delete"),
                None,
                format!("{addr}: Destroying... [id={}]", e.id),
            );
            let charged = self.world.charge(1 + action_polls(destroy_latency(&e.kind))).await;
            let total = self.world.latency(destroy_latency(&e.kind));
            self.wait_with_progress(total, sink, addr, "delete", "destroying").await;
            let res = async {
                charged?;
                self.world.check(&format!("tofu.destroy.{}", e.kind))?;
                self.cloud().remove(&e.kind, e.id).await
            }
            .await;
            let elapsed = round1(start.elapsed());
            if let Err(err) = res {
                let err = as_tofu(op, addr, err);
                send(
                    sink,
                    "apply_errored",
                    Some(addr),
                    Some("delete"),
                    Some(elapsed),
                    format!("{addr}: Destruction errored after {}s", elapsed.round() as u64),
                );
                send(sink, "diagnostic", Some(addr), None, None, format!("Error: {err}"));
                return Err(err);
            }
            st.resources.retain(|r| r.address != e.address);
            write_state(ws, st, op).await?;
            n += 1;
            send(
                sink,
                "apply_complete",
                Some(addr),
                Some("delete"),
                Some(elapsed),
                format!("{addr}: Destruction complete after {}s", elapsed.round() as u64),
            );
        }
        Ok(n)
    }

    /// The state entries of a workspace (test and debugging helper).
    pub async fn state_entries(&self, ws: &Workspace) -> Result<Vec<StateEntry>, StepError> {
        Ok(read_state(ws, "state").await?.resources)
    }
}

fn differs(m: &ManifestResource, e: &StateEntry) -> bool {
    m.name != e.name || m.labels != e.labels
}

#[async_trait]
impl TofuApi for SimTofu {
    async fn version(&self) -> AdapterResult<String> {
        self.world.op("tofu.version", 100).await?;
        Ok("sim tofu (applies the resource manifest to the sim cloud)".to_owned())
    }

    async fn init(&self, ws: &Workspace) -> AdapterResult<()> {
        self.world.op("tofu.init", 3_000).await?;
        read_manifest(ws, "init").await?;
        let dir = ws.dir.clone();
        tokio::task::spawn_blocking(move || -> std::io::Result<()> {
            std::fs::create_dir_all(dir.join(INIT_DIR).join("providers"))?;
            write_atomic(
                &dir.join(INIT_DIR).join("sim-providers.json"),
                br#"{"registry.opentofu.org/hetznercloud/hcloud": "1.68.0"}"#,
            )?;
            write_atomic(
                &dir.join(".terraform.lock.hcl"),
                b"# sim lock file\nprovider \"registry.opentofu.org/hetznercloud/hcloud\" {\n  version = \"1.68.0\"\n}\n",
            )
        })
        .await
        .map_err(|e| StepError::internal(e.to_string()))?
        .map_err(|e| err("init", Cause::Unavailable, format!("init: {e}")))
    }

    async fn plan(&self, ws: &Workspace, token: &SecretString) -> AdapterResult<PlanSummary> {
        self.world.op("tofu.plan", 2_000).await?;
        Self::scope(token, "plan")?;
        let manifest = read_manifest(ws, "plan").await?;
        require_init(ws, "plan").await?;
        let mut st = read_state(ws, "plan").await?;
        self.refresh(&mut st).await?;
        let in_state: BTreeMap<&str, &StateEntry> =
            st.resources.iter().map(|e| (e.address.as_str(), e)).collect();
        let wanted: BTreeSet<&str> =
            manifest.resources.iter().map(|r| r.address.as_str()).collect();
        let mut p = PlanSummary::default();
        for r in &manifest.resources {
            match in_state.get(r.address.as_str()) {
                None => p.add += 1,
                Some(e) if differs(r, e) => p.change += 1,
                Some(_) => {}
            }
        }
        p.destroy =
            st.resources.iter().filter(|e| !wanted.contains(e.address.as_str())).count() as u32;
        Ok(p)
    }

    async fn apply(
        &self,
        ws: &Workspace,
        token: &SecretString,
        replace: &[String],
        parallelism: u32,
        sink: TofuSink,
    ) -> AdapterResult<()> {
        self.world.op("tofu.apply", 2_000).await?;
        let scope = Self::scope(token, "apply")?;
        let manifest = read_manifest(ws, "apply").await?;
        require_init(ws, "apply").await?;
        let _lock = StateLock::acquire(&ws.dir, "OperationTypeApply", "apply").await?;
        let mut st = read_state(ws, "apply").await?;

        // Refresh: objects deleted outside tofu leave the state.
        let gone = self.refresh(&mut st).await?;
        for e in &gone {
            send(
                &sink,
                "resource_drift",
                Some(&e.address),
                Some("delete"),
                None,
                format!("{}: has been deleted outside of OpenTofu (id={})", e.address, e.id),
            );
        }
        if !gone.is_empty() {
            write_state(ws, &mut st, "apply").await?;
        }

        // Destroy what left the manifest or is to be replaced (servers
        // before networks); replaced ones are created again below.
        let wanted: BTreeSet<&str> =
            manifest.resources.iter().map(|r| r.address.as_str()).collect();
        let mut removed: Vec<StateEntry> = st
            .resources
            .iter()
            .filter(|e| !wanted.contains(e.address.as_str()) || replace.contains(&e.address))
            .cloned()
            .collect();
        removed.sort_by_key(|e| std::cmp::Reverse(kind_rank(&e.kind)));
        if !removed.is_empty() && scope == TokenScope::Read {
            return Err(err(
                "apply",
                Cause::Unauthorized,
                "insufficient permissions for this request: the token is read-only (forbidden)",
            ));
        }
        let destroyed = self.destroy_entries(ws, removed, &mut st, &sink, "apply").await?;

        // In-place updates (name, labels).
        let mut changed = 0;
        for r in &manifest.resources {
            let Some(idx) = st.resources.iter().position(|e| e.address == r.address) else {
                continue;
            };
            if !differs(r, &st.resources[idx]) {
                continue;
            }
            let (kind, id) = (st.resources[idx].kind.clone(), st.resources[idx].id);
            let addr = r.address.as_str();
            let start = Instant::now();
            send(
                &sink,
                "apply_start",
                Some(addr),
                Some("update"),
                None,
                format!("{addr}: Modifying... [id={id}]"),
            );
            let res = async {
                self.world.op(&format!("tofu.update.{kind}"), 1_000).await?;
                if scope == TokenScope::Read {
                    return Err(err("apply", Cause::Unauthorized, "insufficient permissions for this request: the token is read-only (forbidden)"));
                }
                self.cloud().update(&kind, id, &r.name, r.labels.clone()).await
            }
            .await;
            let elapsed = round1(start.elapsed());
            match res {
                Ok(obj) => {
                    st.resources[idx].name = obj.name;
                    st.resources[idx].labels = obj.labels;
                    write_state(ws, &mut st, "apply").await?;
                    changed += 1;
                    send(
                        &sink,
                        "apply_complete",
                        Some(addr),
                        Some("update"),
                        Some(elapsed),
                        format!(
                            "{addr}: Modifications complete after {}s [id={id}]",
                            elapsed.round() as u64
                        ),
                    );
                }
                Err(e) => {
                    let e = as_tofu("apply", addr, e);
                    send(
                        &sink,
                        "apply_errored",
                        Some(addr),
                        Some("update"),
                        Some(elapsed),
                        format!("{addr}: Modifying errored after {}s", elapsed.round() as u64),
                    );
                    send(&sink, "diagnostic", Some(addr), None, None, format!("Error: {e}"));
                    return Err(e);
                }
            }
        }

        // Creates, kind by kind; servers in parallel.
        let have: BTreeSet<String> = st.resources.iter().map(|e| e.address.clone()).collect();
        let mut pending: Vec<&ManifestResource> =
            manifest.resources.iter().filter(|r| !have.contains(&r.address)).collect();
        // Stable: manifest order within a kind; the load balancer first in
        // its wave (it starts with the first servers).
        pending.sort_by_key(|r| (create_wave(&r.kind), r.kind != "load_balancer"));
        let state = Mutex::new(st);
        let mut added = 0u32;
        let mut i = 0;
        while i < pending.len() {
            let rank = create_wave(&pending[i].kind);
            let j = pending[i..]
                .iter()
                .position(|r| create_wave(&r.kind) != rank)
                .map_or(pending.len(), |k| i + k);
            let group = &pending[i..j];
            i = j;
            let parallel = group.iter().any(|r| r.kind == "server");
            // `-parallelism`: how many objects tofu creates at once.
            let width = if parallel { parallelism.max(1) as usize } else { 1 };
            let sem = tokio::sync::Semaphore::new(width);
            let failed = AtomicBool::new(false);
            let results = futures::future::join_all(group.iter().map(|r| {
                let (sem, failed, state, sink) = (&sem, &failed, &state, &sink);
                async move {
                    let _permit = sem.acquire().await.expect("semaphore open");
                    if failed.load(Ordering::SeqCst) {
                        return Ok(false);
                    }
                    let res = self.create_one(ws, r, scope, state, sink).await;
                    if res.is_err() {
                        failed.store(true, Ordering::SeqCst);
                    }
                    res.map(|()| true)
                }
            }))
            .await;
            let mut first_err = None;
            for r in results {
                match r {
                    Ok(true) => added += 1,
                    Ok(false) => {}
                    Err(e) => {
                        first_err.get_or_insert(e);
                    }
                }
            }
            if let Some(e) = first_err {
                return Err(e);
            }
        }
        send(
            &sink,
            "change_summary",
            None,
            Some("apply"),
            None,
            format!(
                "Apply complete! Resources: {added} added, {changed} changed, {destroyed} destroyed."
            ),
        );
        Ok(())
    }

    async fn output(&self, ws: &Workspace) -> AdapterResult<Value> {
        self.world.op("tofu.output", 500).await?;
        let st = read_state(ws, "output").await?;
        let mut entries = st.resources.clone();
        entries.sort_by_key(|e| address_sort_key(&e.address));
        let mut out = serde_json::Map::new();
        let servers: Vec<Value> = entries
            .iter()
            .filter(|e| e.kind == "server")
            .map(|e| {
                json!({
                    "address": e.address,
                    "name": e.name,
                    "id": e.id,
                    "role": role_of(e),
                    "ipv4": e.attrs.get("ipv4").cloned().unwrap_or(Value::Null),
                    "private_ip": e.attrs.get("private_ip").cloned().unwrap_or(Value::Null),
                    "location": e.attrs.get("location").cloned().unwrap_or(Value::Null),
                    "labels": e.labels,
                })
            })
            .collect();
        out.insert("servers".into(), Value::Array(servers));
        for e in entries.iter().filter(|e| e.kind != "server") {
            if out.contains_key(&e.kind) {
                continue; // the first of a kind; all are under `resources`
            }
            let mut v = json!({"id": e.id, "name": e.name, "address": e.address});
            for k in ["ipv4", "private_ip", "location", "ip_range"] {
                if let Some(x) = e.attrs.get(k) {
                    v[k] = x.clone();
                }
            }
            out.insert(e.kind.clone(), v);
        }
        out.insert(
            "resources".into(),
            Value::Array(
                entries.iter().map(|e| json!({"address": e.address, "kind": e.kind, "id": e.id, "name": e.name})).collect(),
            ),
        );
        Ok(Value::Object(out))
    }

    /// What `tofu show -json` lists for the production module: the
    /// provider's resources (subnets, load-balancer services and targets
    /// split out), from the state's snapshot, not the live cloud.
    async fn state(&self, ws: &Workspace) -> AdapterResult<Vec<StateResource>> {
        self.world.op("tofu.state", 300).await?;
        let entries = read_state(ws, "state").await?.resources;
        let objects: Vec<CloudObject> = entries.iter().map(StateEntry::to_object).collect();
        let mut out = Vec::new();
        for (e, o) in entries.iter().zip(&objects) {
            for (i, r) in provider_view(o, &objects).into_iter().enumerate() {
                let id = r.values["id"].as_str().and_then(|s| s.parse().ok()).unwrap_or(0);
                let name = r.values["name"].as_str().map(str::to_owned);
                // The object itself keeps its recorded address; what the
                // provider splits out of it is named as the module names it.
                let address = if i == 0 {
                    e.address.clone()
                } else {
                    format!("{}.{}", r.tf_type, r.name_in_module)
                };
                out.push(StateResource {
                    name: name.unwrap_or_else(|| address.clone()),
                    address,
                    kind: r.tf_type.to_owned(),
                    id,
                    attrs: r.values,
                });
            }
        }
        Ok(out)
    }

    async fn import(
        &self,
        ws: &Workspace,
        token: &SecretString,
        address: &str,
        id: i64,
    ) -> AdapterResult<()> {
        self.world.op("tofu.import", 2_000).await?;
        Self::scope(token, "import")?;
        let manifest = read_manifest(ws, "import").await?;
        require_init(ws, "import").await?;
        let res = manifest.resources.iter().find(|r| r.address == address).ok_or_else(|| {
            err(
                "import",
                Cause::Invalid,
                format!("Configuration for import target does not exist: {address}"),
            )
        })?;
        let _lock = StateLock::acquire(&ws.dir, "OperationTypeImport", "import").await?;
        let mut st = read_state(ws, "import").await?;
        if st.resources.iter().any(|e| e.address == address) {
            return Err(err(
                "import",
                Cause::Conflict,
                format!("Resource already managed by OpenTofu: {address}"),
            ));
        }
        if let Some(other) = st.resources.iter().find(|e| e.kind == res.kind && e.id == id) {
            return Err(err(
                "import",
                Cause::Conflict,
                format!("{} {id} is already managed as {}", res.kind, other.address),
            ));
        }
        let obj = self.cloud().get(&res.kind, id).await?.ok_or_else(|| {
            err(
                "import",
                Cause::NotFound,
                format!("Cannot import non-existent remote object: {address} (id={id})"),
            )
        })?;
        st.resources.push(StateEntry {
            address: address.to_owned(),
            kind: obj.kind,
            id: obj.id,
            name: obj.name,
            labels: obj.labels,
            attrs: obj.attrs,
        });
        write_state(ws, &mut st, "import").await
    }

    async fn destroy(
        &self,
        ws: &Workspace,
        token: &SecretString,
        sink: TofuSink,
    ) -> AdapterResult<()> {
        self.world.op("tofu.destroy", 2_000).await?;
        let scope = Self::scope(token, "destroy")?;
        let _lock = StateLock::acquire(&ws.dir, "OperationTypeApply", "destroy").await?;
        let mut st = read_state(ws, "destroy").await?;
        if !st.resources.is_empty() && scope == TokenScope::Read {
            return Err(err(
                "destroy",
                Cause::Unauthorized,
                "insufficient permissions for this request: the token is read-only (forbidden)",
            ));
        }
        let mut entries = st.resources.clone();
        entries.reverse();
        entries.sort_by_key(|e| std::cmp::Reverse(kind_rank(&e.kind)));
        let n = self.destroy_entries(ws, entries, &mut st, &sink, "destroy").await?;
        send(
            &sink,
            "change_summary",
            None,
            Some("destroy"),
            None,
            format!("Destroy complete! Resources: {n} destroyed."),
        );
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backend::cloud::sim_token;
    use crate::backend::world::{FailRule, SimConfig};
    use cz_adapters::CloudApi;
    use cz_adapters::DEFAULT_PARALLELISM;
    use cz_engine::ErrorClass;

    fn manifest(workers: usize) -> Value {
        let mut resources = vec![
            json!({"address": "hcloud_network.main", "kind": "network", "name": "sov-net", "labels": {"catalyst.io/job": "j1"}, "attrs": {"ip_range": "10.0.0.0/16"}}),
            json!({"address": "hcloud_firewall.main", "kind": "firewall", "name": "sov-fw", "labels": {"catalyst.io/job": "j1"}}),
            json!({"address": "hcloud_load_balancer.api", "kind": "load_balancer", "name": "sov-lb", "labels": {"catalyst.io/job": "j1"}}),
        ];
        for i in 0..3 {
            resources.push(json!({"address": format!("hcloud_server.cp[{i}]"), "kind": "server", "name": format!("sov-cp-{i}"), "labels": {"catalyst.io/job": "j1", "catalyst.io/role": "server"}, "attrs": {"server_type": "cx33", "location": "fsn1"}}));
        }
        for i in 0..workers {
            resources.push(json!({"address": format!("hcloud_server.worker[{i}]"), "kind": "server", "name": format!("sov-w-{i}"), "labels": {"catalyst.io/job": "j1", "catalyst.io/role": "agent"}, "attrs": {"server_type": "cx43"}}));
        }
        json!({"resources": resources})
    }

    fn setup(cfg: SimConfig) -> (tempfile::TempDir, Arc<SimWorld>, SimTofu, Workspace) {
        let dir = tempfile::tempdir().unwrap();
        let world = Arc::new(SimWorld::new(dir.path().join("sim"), cfg));
        let ws = Workspace { dir: dir.path().join("ws/job1/fsn1") };
        std::fs::create_dir_all(&ws.dir).unwrap();
        (dir, world.clone(), SimTofu::new(world), ws)
    }

    fn write_manifest(ws: &Workspace, m: &Value) {
        std::fs::write(ws.dir.join(MANIFEST_FILE), serde_json::to_vec(m).unwrap()).unwrap();
    }

    fn events() -> (TofuSink, tokio::sync::mpsc::UnboundedReceiver<TofuEvent>) {
        tokio::sync::mpsc::unbounded_channel()
    }

    fn drain(rx: &mut tokio::sync::mpsc::UnboundedReceiver<TofuEvent>) -> Vec<TofuEvent> {
        let mut v = Vec::new();
        while let Ok(e) = rx.try_recv() {
            v.push(e);
        }
        v
    }

    #[tokio::test]
    async fn init_needs_the_manifest() {
        let (_d, _w, tofu, ws) = setup(SimConfig::instant());
        let e = tofu.init(&ws).await.unwrap_err();
        assert!(matches!(
            e,
            StepError::Adapter { cause: Cause::NotFound, system: System::Tofu, .. }
        ));
        write_manifest(&ws, &manifest(0));
        let e = tofu.plan(&ws, &sim_token("rw")).await.unwrap_err();
        assert!(matches!(e, StepError::Adapter { cause: Cause::NotFound, .. }), "plan before init");
        tofu.init(&ws).await.unwrap();
        assert!(ws.dir.join(".terraform").is_dir());
    }

    #[tokio::test]
    async fn apply_then_reapply_is_a_no_op() {
        let (_d, world, tofu, ws) =
            setup(SimConfig { latency_factor: 0.0001, ..SimConfig::default() });
        write_manifest(&ws, &manifest(4));
        tofu.init(&ws).await.unwrap();
        let token = sim_token("rw");
        assert_eq!(
            tofu.plan(&ws, &token).await.unwrap(),
            PlanSummary { add: 10, change: 0, destroy: 0 }
        );
        let (tx, mut rx) = events();
        tofu.apply(&ws, &token, &[], DEFAULT_PARALLELISM, tx).await.unwrap();
        let ev = drain(&mut rx);
        assert_eq!(ev.iter().filter(|e| e.kind == "apply_start").count(), 10);
        assert_eq!(ev.iter().filter(|e| e.kind == "apply_complete").count(), 10);
        assert!(ev.iter().all(|e| e.kind != "apply_complete" || e.elapsed_s.is_some()));
        assert_eq!(ev.last().unwrap().kind, "change_summary");
        assert!(ev.last().unwrap().message.contains("10 added"));
        // Ordering: the network before any server, the LB with the servers.
        let pos = |addr: &str| {
            ev.iter()
                .position(|e| e.kind == "apply_complete" && e.address.as_deref() == Some(addr))
                .unwrap()
        };
        assert!(pos("hcloud_network.main") < pos("hcloud_server.cp[0]"));
        let started = |addr: &str| {
            ev.iter()
                .position(|e| e.kind == "apply_start" && e.address.as_deref() == Some(addr))
                .unwrap()
        };
        assert!(started("hcloud_load_balancer.api") < pos("hcloud_server.cp[0]"));
        assert!(ev.iter().any(|e| e.kind == "apply_complete" && e.id.is_some()));
        assert!(!ws.dir.join(LOCK_FILE).exists());
        // Each create is a POST and its action polls, on the project's
        // budget: at least two requests per object.
        let used = world.hcloud_requests();
        assert!(used >= 20, "{used} modelled requests for 10 creates");

        // Ten objects, listed as the provider's resources (a load
        // balancer's service split out of it).
        let state = tofu.state(&ws).await.unwrap();
        assert_eq!(state.len(), 11);
        assert!(state.iter().all(|r| r.kind.starts_with("hcloud_")), "{state:?}");
        let st: Value =
            serde_json::from_slice(&std::fs::read(ws.dir.join(STATE_FILE)).unwrap()).unwrap();
        assert!(st["serial"].as_u64().unwrap() >= 10, "state is written after each create");

        let out = tofu.output(&ws).await.unwrap();
        let servers = out["servers"].as_array().unwrap();
        assert_eq!(servers.len(), 7);
        assert_eq!(servers[0]["address"], "hcloud_server.cp[0]");
        assert_eq!(servers[0]["role"], "server");
        assert!(servers[0]["ipv4"].as_str().unwrap().starts_with("203.0.113."));
        assert!(servers[0]["private_ip"].as_str().unwrap().starts_with("10.0.1."));
        assert!(out["load_balancer"]["ipv4"].as_str().unwrap().starts_with("203.0.113."));
        assert!(out["network"]["id"].as_i64().is_some());
        let ips: BTreeSet<&str> = servers.iter().map(|s| s["ipv4"].as_str().unwrap()).collect();
        assert_eq!(ips.len(), 7);

        let creates = world.calls("cloud.create");
        assert_eq!(creates, 10);
        assert_eq!(tofu.plan(&ws, &token).await.unwrap(), PlanSummary::default());
        let (tx, mut rx) = events();
        tofu.apply(&ws, &token, &[], DEFAULT_PARALLELISM, tx).await.unwrap();
        assert_eq!(world.calls("cloud.create"), creates, "re-apply creates nothing");
        let ev = drain(&mut rx);
        assert_eq!(ev.len(), 1);
        assert!(ev[0].message.contains("0 added, 0 changed, 0 destroyed"));

        // `-replace`: the load balancer is destroyed and created again.
        let lb_id = |st: &[StateResource]| {
            st.iter().find(|r| r.address == "hcloud_load_balancer.api").map(|r| r.id)
        };
        let before = lb_id(&tofu.state(&ws).await.unwrap()).unwrap();
        let (tx, mut rx) = events();
        tofu.apply(&ws, &token, &["hcloud_load_balancer.api".to_owned()], DEFAULT_PARALLELISM, tx)
            .await
            .unwrap();
        assert_eq!(world.calls("cloud.create"), creates + 1, "one re-create");
        let after = lb_id(&tofu.state(&ws).await.unwrap()).unwrap();
        assert_ne!(before, after);
        assert!(drain(&mut rx).last().unwrap().message.contains("1 added, 0 changed, 1 destroyed"));

        // Destroy empties the cloud and the state.
        let (tx, mut rx) = events();
        tofu.destroy(&ws, &token, tx).await.unwrap();
        assert!(SimCloud::new(world.clone()).all_objects().await.unwrap().is_empty());
        assert!(tofu.state(&ws).await.unwrap().is_empty());
        let ev = drain(&mut rx);
        let first_delete = ev.iter().find(|e| e.kind == "apply_start").unwrap();
        assert_eq!(first_delete.address.as_deref(), Some("hcloud_load_balancer.api"));
        assert!(ev.last().unwrap().message.contains("10 destroyed"));
    }

    #[tokio::test]
    async fn killed_between_create_and_state_write_then_import() {
        let (_d, world, tofu, ws) = setup(SimConfig::instant());
        write_manifest(&ws, &manifest(0));
        tofu.init(&ws).await.unwrap();
        let token = sim_token("rw");
        // The previous apply created the network and cp[1] and died before
        // writing cp[1] to the state.
        let (tx, _rx) = events();
        let net_only = json!({"resources": [manifest(0)["resources"][0].clone()]});
        write_manifest(&ws, &net_only);
        tofu.apply(&ws, &token, &[], DEFAULT_PARALLELISM, tx).await.unwrap();
        write_manifest(&ws, &manifest(0));
        let cloud = SimCloud::new(world.clone());
        let orphan = cloud
            .create(
                "server",
                "sov-cp-1",
                [("catalyst.io/job".to_owned(), "j1".to_owned())].into(),
                json!({}),
            )
            .await
            .unwrap();

        let (tx, mut rx) = events();
        let e = tofu.apply(&ws, &token, &[], DEFAULT_PARALLELISM, tx).await.unwrap_err();
        match &e {
            StepError::Adapter {
                system: System::Tofu, cause: Cause::Conflict, message, ..
            } => {
                assert!(
                    message.contains("hcloud_server.cp[1]") && message.contains("uniqueness_error"),
                    "{message}"
                )
            }
            other => panic!("{other}"),
        }
        let ev = drain(&mut rx);
        assert!(
            ev.iter().any(|e| e.kind == "apply_errored"
                && e.address.as_deref() == Some("hcloud_server.cp[1]"))
        );
        assert!(
            ev.iter().any(|e| e.kind == "diagnostic" && e.message.contains("uniqueness_error"))
        );
        assert!(ev.iter().all(|e| e.kind != "change_summary"));
        assert!(!ws.dir.join(LOCK_FILE).exists(), "the lock is released on error");

        let e = tofu.import(&ws, &token, "hcloud_server.cp[1]", 999).await;
        assert!(matches!(e, Err(StepError::Adapter { cause: Cause::NotFound, .. })));
        tofu.import(&ws, &token, "hcloud_server.cp[1]", orphan.id).await.unwrap();
        let e = tofu.import(&ws, &token, "hcloud_server.cp[1]", orphan.id).await.unwrap_err();
        assert!(matches!(e, StepError::Adapter { cause: Cause::Conflict, .. }));

        let (tx, _rx) = events();
        tofu.apply(&ws, &token, &[], DEFAULT_PARALLELISM, tx).await.unwrap();
        let servers: Vec<_> = cloud.objects_of("server").await.unwrap();
        assert_eq!(servers.len(), 3, "no duplicate server");
        let names: BTreeSet<_> = servers.iter().map(|s| s.name.as_str()).collect();
        assert_eq!(names, ["sov-cp-0", "sov-cp-1", "sov-cp-2"].into());
        let st = tofu.state(&ws).await.unwrap();
        assert_eq!(st.iter().find(|r| r.address == "hcloud_server.cp[1]").unwrap().id, orphan.id);
        assert_eq!(tofu.plan(&ws, &token).await.unwrap(), PlanSummary::default());
    }

    #[tokio::test]
    async fn stale_lock_is_removed_and_a_live_lock_is_waited_for() {
        let (_d, _w, tofu, ws) = setup(SimConfig::instant());
        write_manifest(&ws, &manifest(0));
        tofu.init(&ws).await.unwrap();
        let token = sim_token("rw");
        // A lock left by a killed daemon (that pid cannot exist).
        std::fs::write(
            ws.dir.join(LOCK_FILE),
            json!({"ID": "dead", "pid": 99_999_999u64}).to_string(),
        )
        .unwrap();
        let (tx, _rx) = events();
        tofu.apply(&ws, &token, &[], DEFAULT_PARALLELISM, tx).await.unwrap();
        assert!(!ws.dir.join(LOCK_FILE).exists());
        // A lock held by a live process (this one).
        std::fs::write(
            ws.dir.join(LOCK_FILE),
            json!({"ID": "live", "pid": std::process::id()}).to_string(),
        )
        .unwrap();
        let (tx, _rx) = events();
        let e = tofu.apply(&ws, &token, &[], DEFAULT_PARALLELISM, tx).await.unwrap_err();
        // Retried, not an operator's: its holder may be a replica paused
        // mid-apply (SIGSTOP, a frozen VM) whose run stops once it goes on.
        assert!(matches!(e, StepError::Adapter { cause: Cause::Unavailable, .. }), "{e}");
        assert_eq!(e.class(), ErrorClass::Transient);
        assert!(e.to_string().contains(&format!("pid {}", std::process::id())), "{e}");
        assert!(ws.dir.join(LOCK_FILE).exists(), "someone else's lock is left alone");
        // Once the holder lets go, the retry applies.
        std::fs::remove_file(ws.dir.join(LOCK_FILE)).unwrap();
        let (tx, _rx) = events();
        tofu.apply(&ws, &token, &[], DEFAULT_PARALLELISM, tx).await.unwrap();
    }

    #[tokio::test]
    async fn failures_mid_apply_leave_partial_state_and_drift_is_recreated() {
        let cfg = SimConfig {
            fail: vec![FailRule {
                op: "tofu.create.load_balancer".into(),
                cause: Cause::QuotaExceeded,
                times: 1,
            }],
            ..SimConfig::instant()
        };
        let (_d, world, tofu, ws) = setup(cfg);
        write_manifest(&ws, &manifest(1));
        tofu.init(&ws).await.unwrap();
        let token = sim_token("rw");
        let (tx, _rx) = events();
        let e = tofu.apply(&ws, &token, &[], DEFAULT_PARALLELISM, tx).await.unwrap_err();
        assert!(matches!(e, StepError::Adapter { cause: Cause::QuotaExceeded, .. }));
        assert_eq!(
            tofu.state(&ws).await.unwrap().len(),
            6,
            "everything but the LB is in the state"
        );
        assert_eq!(tofu.plan(&ws, &token).await.unwrap().add, 1);
        // Someone deletes a server behind tofu's back.
        let cloud = SimCloud::new(world.clone());
        let victim = cloud.objects_of("server").await.unwrap().remove(0);
        cloud.delete(&token, &victim).await.unwrap();
        assert_eq!(tofu.plan(&ws, &token).await.unwrap().add, 2);
        let (tx, mut rx) = events();
        tofu.apply(&ws, &token, &[], DEFAULT_PARALLELISM, tx).await.unwrap();
        assert!(drain(&mut rx).iter().any(|e| e.kind == "resource_drift"));
        assert_eq!(cloud.objects_of("server").await.unwrap().len(), 4);
        // A read-only token cannot create.
        write_manifest(&ws, &manifest(2));
        let (tx, _rx) = events();
        let e = tofu
            .apply(&ws, &sim_token("readonly"), &[], DEFAULT_PARALLELISM, tx)
            .await
            .unwrap_err();
        assert!(matches!(e, StepError::Adapter { cause: Cause::Unauthorized, .. }));
        // Shrinking the manifest destroys the extra worker.
        write_manifest(&ws, &manifest(0));
        assert_eq!(tofu.plan(&ws, &token).await.unwrap().destroy, 1);
        let (tx, _rx) = events();
        tofu.apply(&ws, &token, &[], DEFAULT_PARALLELISM, tx).await.unwrap();
        assert_eq!(cloud.objects_of("server").await.unwrap().len(), 3);
    }
}
