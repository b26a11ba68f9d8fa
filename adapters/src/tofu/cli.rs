//! `TofuCli`: the real [`TofuApi`], driving the `tofu` binary (or
//! `terraform`, CLI-compatible) through [`crate::command::run`].
//!
//! - **Workspaces** live under the daemon's data directory (never a
//!   temp dir, whose cleaning would lose the state); the caller passes them.
//! - **Environment**: cleared by the command helper, then
//!   `TF_CLI_CONFIG_FILE=/dev/null` (no operator `~/.terraformrc` changes
//!   behaviour), `TF_PLUGIN_CACHE_DIR`, `TF_IN_AUTOMATION=1`, `TF_INPUT=0`,
//!   `CHECKPOINT_DISABLE=1`.
//! - **The cloud token** reaches tofu only as `TF_VAR_hcloud_token` in the
//!   child's environment — never a file. A saved plan file embeds every
//!   input variable, sensitive ones included (checked against Terraform
//!   1.11), so [`TofuApi::plan`] deletes its `tfplan` as soon as the summary
//!   is read, and [`TofuApi::apply`] re-plans (`apply -auto-approve`, no
//!   saved plan) — which is also what an apply after a crash needs, since a
//!   saved plan would be stale. A `tfplan` found on disk (a crash between
//!   plan and delete) is removed before anything else runs.
//! - **Events**: every stdout line of `apply -json` / `destroy -json` is
//!   parsed into a [`TofuEvent`] and sent to the sink in order; lines that
//!   are not JSON become `log` events. Error diagnostics become the error.
//! - **Stale lock**: before each state-changing command, if
//!   `.terraform.tfstate.lock.info` exists, we look at
//!   `.catalyst-tofu.pid`, where the pid of each tofu child we spawn is
//!   recorded while it runs. If that pid is alive and is a tofu/terraform
//!   process, the lock is held → `Unavailable`: never taken (two applies on
//!   one state would corrupt it), retried until its holder lets go (our own
//!   tofu from an interrupted attempt, still exiting), escalated to an
//!   operator when the attempts run out. Otherwise the lock was left by a daemon killed mid-apply
//!   (kill -9 leaves the lock file; its holder is gone), so it is removed
//!   with a warning and a `stale_lock_removed` event, and the command runs.
//! - **Orphans**: a daemon killed with SIGKILL runs no destructor, so the
//!   tofu it spawned (in its own process group) lives on, reparented. A live
//!   pid in `.catalyst-tofu.pid` whose parent is not this process is such an
//!   orphan: its group gets `SIGTERM` (tofu finishes what is in flight and
//!   writes its state), then `SIGKILL` after [`ORPHAN_GRACE`], and the run
//!   goes on as for a stale lock.
//! - **Timeout**: each command is bounded; on expiry its process group gets
//!   `SIGTERM` (tofu persists the state it has), then `SIGKILL`, and the
//!   call fails with `Unavailable`. The next apply refreshes and converges.
//!   Tofu writes its state when it stops and periodically during a long
//!   apply, not after every resource: after a SIGKILL, objects the cloud
//!   created may be missing from the state. The `infra.apply` step adopts
//!   those by label and name before applying (import, or the offline
//!   module's create-or-adopt), so nothing is duplicated in the cloud.
//!
//! Causes: binary missing → `NotFound`; configuration errors → `Invalid`;
//! lock held by a live process, or tofu's own `Error acquiring the state
//! lock` → `Unavailable` (retried); timeout → `Unavailable`; any
//! other non-zero exit → `CommandFailed` with the diagnostics.

use std::borrow::Cow;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use cz_state::SecretString;
use serde::Deserialize;
use serde_json::Value;

use crate::command::{CommandError, CommandSpec, Output, run};
use crate::{AdapterResult, PlanSummary, StateResource, TofuApi, TofuEvent, TofuSink, Workspace};
use cz_engine::{Cause, StepError, System};

pub const LOCK_FILE: &str = ".terraform.tfstate.lock.info";
pub const PID_FILE: &str = ".catalyst-tofu.pid";
pub const PLAN_FILE: &str = "tfplan";
/// The oldest CLI the modules are written for (`terraform_data`, `-json`
/// UI events with `hook`s, OpenTofu's first release).
pub const MIN_VERSION: (u32, u32) = (1, 6);
/// The only way the cloud token reaches tofu.
pub const TOKEN_ENV: &str = "TF_VAR_hcloud_token";

/// The tofu-compatible CLI for tests and tools: `CZ_TOFU_BIN`, else `tofu`,
/// else `terraform`, looked up on `PATH` and the pinned path.
pub fn find_cli() -> Option<PathBuf> {
    if let Some(p) = std::env::var_os("CZ_TOFU_BIN") {
        return Some(PathBuf::from(p)).filter(|p| p.is_file());
    }
    let mut dirs: Vec<PathBuf> =
        std::env::var_os("PATH").map(|p| std::env::split_paths(&p).collect()).unwrap_or_default();
    dirs.extend(crate::command::PINNED_PATH.split(':').map(PathBuf::from));
    ["tofu", "terraform"]
        .iter()
        .find_map(|name| dirs.iter().map(|d| d.join(name)).find(|p| p.is_file()))
}

/// The real tofu runner.
#[derive(Clone, Debug)]
pub struct TofuCli {
    binary: PathBuf,
    plugin_cache: PathBuf,
    timeout: Duration,
}

impl TofuCli {
    /// `binary`: `tofu` (looked up on the pinned `PATH`) or an absolute
    /// path; `terraform` works too. `plugin_cache` is created if missing.
    pub fn new(
        binary: impl Into<PathBuf>,
        plugin_cache: impl Into<PathBuf>,
        timeout: Duration,
    ) -> Self {
        TofuCli { binary: binary.into(), plugin_cache: plugin_cache.into(), timeout }
    }

    /// `tofu`, a plugin cache under `data_dir`, 30 minutes per command.
    pub fn default_in(data_dir: &Path) -> Self {
        TofuCli::new("tofu", data_dir.join("tofu-plugin-cache"), Duration::from_secs(30 * 60))
    }

    pub fn binary(&self) -> &Path {
        &self.binary
    }

    pub fn timeout(&self) -> Duration {
        self.timeout
    }

    fn spec(&self, ws: &Workspace, args: &[&str], token: Option<&SecretString>) -> CommandSpec {
        let mut spec = CommandSpec::new(&self.binary)
            .args(args.iter().copied())
            .cwd(&ws.dir)
            .env("TF_CLI_CONFIG_FILE", "/dev/null")
            .env("TF_PLUGIN_CACHE_DIR", self.plugin_cache.to_string_lossy())
            .env("TF_IN_AUTOMATION", "1")
            .env("TF_INPUT", "0")
            .env("CHECKPOINT_DISABLE", "1")
            .timeout(self.timeout)
            .pid_file(ws.dir.join(PID_FILE));
        if let Some(t) = token {
            spec = spec.env(TOKEN_ENV, t.expose());
        }
        spec
    }

    async fn exec(&self, op: &str, spec: CommandSpec) -> AdapterResult<Output> {
        run(spec).await.map_err(|e| self.map_err(op, e))
    }

    fn map_err(&self, op: &str, e: CommandError) -> StepError {
        match &e {
            CommandError::Spawn { source, .. } if source.kind() == std::io::ErrorKind::NotFound => {
                err(
                    op,
                    Cause::NotFound,
                    format!(
                        "the tofu binary `{}` was not found (install OpenTofu or configure the binary path): {e}",
                        self.binary.display()
                    ),
                )
            }
            CommandError::Spawn { .. } | CommandError::Io { .. } => {
                err(op, Cause::Unavailable, e.to_string())
            }
            CommandError::Timeout { timeout, stderr_tail, .. } => err(
                op,
                Cause::Unavailable,
                format!(
                    "tofu {op} timed out after {}s; its process group was killed. stderr: {stderr_tail}",
                    timeout.as_secs()
                ),
            ),
            CommandError::Failed { status, stdout_tail, stderr_tail, .. } => {
                let mut diags = diagnostics_of(stdout_tail);
                if diags.is_empty() {
                    diags = stderr_tail.trim().to_owned();
                }
                if diags.is_empty() {
                    diags = stdout_tail.trim().to_owned();
                }
                let cause = cause_of(&diags);
                err(op, cause, format!("tofu {op} failed ({status}): {diags}"))
            }
        }
    }

    async fn prepare(
        &self,
        ws: &Workspace,
        op: &str,
        sink: Option<&TofuSink>,
    ) -> AdapterResult<()> {
        let dir = ws.dir.clone();
        let op_owned = op.to_owned();
        let binary = self.binary.clone();
        let removed =
            tokio::task::spawn_blocking(move || clear_stale_lock(&dir, &op_owned, &binary))
                .await
                .map_err(|e| StepError::internal(format!("lock check task: {e}")))??;
        if let (Some(msg), Some(sink)) = (removed, sink) {
            let _ = sink.send(TofuEvent {
                kind: "stale_lock_removed".into(),
                address: None,
                action: None,
                elapsed_s: None,
                id: None,
                message: msg,
            });
        }
        // A plan file carries the token: never leave one behind.
        remove_plan(ws).await;
        Ok(())
    }
}

fn err(op: &str, cause: Cause, msg: impl Into<String>) -> StepError {
    StepError::adapter(System::Tofu, op, cause, msg)
}

async fn remove_plan(ws: &Workspace) {
    let _ = tokio::fs::remove_file(ws.dir.join(PLAN_FILE)).await;
}

/// Whether `pid` is a live tofu/terraform process (not a zombie, not a
/// recycled pid of something else).
fn tofu_alive(pid: u32, binary: &Path) -> bool {
    if pid == 0 {
        return false;
    }
    let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
        return false;
    };
    if stat.rsplit_once(')').is_some_and(|(_, rest)| rest.trim_start().starts_with('Z')) {
        return false;
    }
    let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
    let cmdline = String::from_utf8_lossy(&cmdline);
    let name = binary.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
    cmdline.contains("tofu")
        || cmdline.contains("terraform")
        || (!name.is_empty() && cmdline.contains(&name))
}

/// Removes a stale lock; returns the event message if it did. A lock held
/// by a live tofu child of ours is a `Conflict`.
fn clear_stale_lock(dir: &Path, op: &str, binary: &Path) -> AdapterResult<Option<String>> {
    let lock = dir.join(LOCK_FILE);
    let pid_path = dir.join(PID_FILE);
    let pid: Option<u32> =
        std::fs::read_to_string(&pid_path).ok().and_then(|s| s.trim().parse().ok());
    let mut stopped = Vec::new();
    // Not our children: they belong to a daemon that was killed (SIGKILL
    // runs no destructor, so its tofu lived on, reparented). Nobody will
    // read their output; stop them so this run can take the workspace.
    // The pid file names the last one spawned, but a daemon killed between
    // a spawn and that write leaves one it does not name: every tofu
    // working in this directory counts.
    let mut orphans = orphans_in(dir, binary);
    if let Some(pid) = pid
        && tofu_alive(pid, binary)
        && parent_of(pid).is_some_and(|ppid| ppid != std::process::id())
        && !orphans.contains(&pid)
    {
        orphans.push(pid);
    }
    for o in orphans {
        stopped.push(stop_orphan(o, binary));
    }
    let stopped = (!stopped.is_empty()).then(|| stopped.join("; "));
    if let Some(pid) = pid
        && tofu_alive(pid, binary)
    {
        let info: Value = std::fs::read(&lock)
            .ok()
            .and_then(|b| serde_json::from_slice(&b).ok())
            .unwrap_or(Value::Null);
        return Err(err(
            op,
            Cause::Unavailable,
            format!(
                "the workspace {} is in use: tofu pid {pid} is still running (lock ID {}, who {}, operation {}); retrying until it lets go",
                dir.display(),
                info.get("ID").and_then(Value::as_str).unwrap_or("?"),
                info.get("Who").and_then(Value::as_str).unwrap_or("?"),
                info.get("Operation").and_then(Value::as_str).unwrap_or("?"),
            ),
        ));
    }
    // The pid file (if any) names a dead process: left by a killed daemon.
    let _ = std::fs::remove_file(&pid_path);
    let Ok(bytes) = std::fs::read(&lock) else {
        return Ok(stopped);
    };
    let info: Value = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
    let id = info.get("ID").and_then(Value::as_str).unwrap_or("?").to_owned();
    let who = info.get("Who").and_then(Value::as_str).unwrap_or("?").to_owned();
    tracing::warn!(
        lock = %lock.display(),
        lock_id = %id,
        who = %who,
        dead_pid = ?pid,
        "Removing a stale tofu state lock: no tofu process of ours holds it (daemon killed mid-operation)."
    );
    std::fs::remove_file(&lock).map_err(|e| {
        err(op, Cause::Unavailable, format!("removing stale lock {}: {e}", lock.display()))
    })?;
    let removed = format!(
        "removed stale state lock {id} held by {who} (pid {}): its process is gone",
        pid.map_or("unknown".to_owned(), |p| p.to_string())
    );
    Ok(Some(match stopped {
        Some(s) => format!("{s}; {removed}"),
        None => removed,
    }))
}

/// Live tofu processes working in `dir` (their cwd) that are not ours
/// and not started by another of them (a provider plugin): the top of
/// each orphaned process group.
fn orphans_in(dir: &Path, binary: &Path) -> Vec<u32> {
    let Ok(dir) = std::fs::canonicalize(dir) else { return Vec::new() };
    let me = std::process::id();
    let in_dir: Vec<u32> = std::fs::read_dir("/proc")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<u32>().ok())
        .filter(|pid| {
            std::fs::read_link(format!("/proc/{pid}/cwd")).is_ok_and(|cwd| cwd == dir)
                && tofu_alive(*pid, binary)
        })
        .collect();
    in_dir
        .iter()
        .copied()
        .filter(|pid| parent_of(*pid).is_some_and(|pp| pp != me && !in_dir.contains(&pp)))
        .collect()
}

/// The parent pid of `pid` (`/proc/<pid>/stat`, field 4).
fn parent_of(pid: u32) -> Option<u32> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let (_, rest) = stat.rsplit_once(')')?;
    rest.split_whitespace().nth(1)?.parse().ok()
}

/// How long an orphaned tofu gets to stop after `SIGTERM` (it finishes the
/// resource operations in flight and writes its state) before `SIGKILL`.
pub const ORPHAN_GRACE: std::time::Duration = std::time::Duration::from_secs(60);

/// Stops an orphaned tofu (and its provisioners: its process group).
fn stop_orphan(pid: u32, binary: &Path) -> String {
    use crate::command::kill_group_blocking;
    tracing::warn!(pid, "Stopping a tofu process left running by a killed daemon.");
    kill_group_blocking(pid, "TERM");
    let deadline = std::time::Instant::now() + ORPHAN_GRACE;
    while tofu_alive(pid, binary) && std::time::Instant::now() < deadline {
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    if tofu_alive(pid, binary) {
        kill_group_blocking(pid, "KILL");
        std::thread::sleep(std::time::Duration::from_millis(200));
        format!("killed tofu pid {pid} left running by a killed daemon (no exit after SIGTERM)")
    } else {
        format!("stopped tofu pid {pid} left running by a killed daemon")
    }
}

/// The fields of a `-json` UI line that an event keeps, borrowed from the
/// line: 100k lines are not 100k JSON trees.
#[derive(Deserialize)]
struct UiLine<'a> {
    #[serde(rename = "type", borrow)]
    kind: Option<Cow<'a, str>>,
    #[serde(rename = "@message", borrow)]
    message: Option<Cow<'a, str>>,
    #[serde(borrow)]
    hook: Option<UiHook<'a>>,
    #[serde(borrow)]
    change: Option<UiHook<'a>>,
    #[serde(borrow)]
    diagnostic: Option<UiDiagnostic<'a>>,
}

#[derive(Deserialize)]
struct UiHook<'a> {
    #[serde(borrow)]
    resource: Option<UiResource<'a>>,
    #[serde(borrow)]
    action: Option<Cow<'a, str>>,
    elapsed_seconds: Option<f64>,
    #[serde(borrow)]
    id_value: Option<Cow<'a, str>>,
}

#[derive(Deserialize)]
struct UiResource<'a> {
    #[serde(borrow)]
    addr: Option<Cow<'a, str>>,
}

#[derive(Deserialize)]
struct UiDiagnostic<'a> {
    #[serde(borrow)]
    detail: Option<Cow<'a, str>>,
}

impl<'a> UiLine<'a> {
    /// The same fields read from a JSON tree, leniently: a field of another
    /// type is absent.
    fn of_tree(v: &'a Value) -> UiLine<'a> {
        fn text(v: Option<&Value>) -> Option<Cow<'_, str>> {
            v.and_then(Value::as_str).map(Cow::Borrowed)
        }
        let hook = |h: Option<&'a Value>| {
            h.map(|h| UiHook {
                resource: Some(UiResource { addr: text(h.pointer("/resource/addr")) }),
                action: text(h.get("action")),
                elapsed_seconds: h.get("elapsed_seconds").and_then(Value::as_f64),
                id_value: text(h.get("id_value")),
            })
        };
        UiLine {
            kind: text(v.get("type")),
            message: text(v.get("@message")),
            hook: hook(v.get("hook")),
            change: hook(v.get("change")),
            diagnostic: v.get("diagnostic").map(|d| UiDiagnostic { detail: text(d.get("detail")) }),
        }
    }

    fn event(self) -> TofuEvent {
        let hook = self.hook.or(self.change);
        let mut message = self.message.map(Cow::into_owned).unwrap_or_default();
        if let Some(detail) = self.diagnostic.and_then(|d| d.detail).filter(|d| !d.is_empty()) {
            message = format!("{message}: {detail}");
        }
        let owned = |c: Option<Cow<str>>| c.map(Cow::into_owned);
        let (address, action, elapsed_s, id) = match hook {
            Some(h) => (
                owned(h.resource.and_then(|r| r.addr)),
                owned(h.action),
                h.elapsed_seconds,
                owned(h.id_value),
            ),
            None => (None, None, None, None),
        };
        TofuEvent {
            kind: self.kind.map_or_else(|| "log".to_owned(), Cow::into_owned),
            address,
            action,
            elapsed_s,
            id,
            message,
        }
    }
}

/// One `-json` UI line → a typed event (`log` if it is not JSON).
pub fn parse_event(line: &str) -> Option<TofuEvent> {
    let line = line.trim();
    if line.is_empty() {
        return None;
    }
    match serde_json::from_str::<UiLine>(line) {
        Ok(l) => Some(l.event()),
        // JSON of another shape than tofu's (a field of an unexpected
        // type): read it leniently.
        Err(_) => parse_event_leniently(line),
    }
}

/// [`parse_event`] over a JSON tree: any JSON, fields of other types read
/// as absent.
fn parse_event_leniently(line: &str) -> Option<TofuEvent> {
    let Ok(v) = serde_json::from_str::<Value>(line) else {
        return Some(TofuEvent {
            kind: "log".into(),
            address: None,
            action: None,
            elapsed_s: None,
            id: None,
            message: line.to_owned(),
        });
    };
    Some(UiLine::of_tree(&v).event())
}

/// Error-level diagnostics of a `-json` stream, joined; `""` if none.
fn diagnostics_of(stdout: &str) -> String {
    let mut out = Vec::new();
    for line in stdout.lines() {
        let Ok(v) = serde_json::from_str::<Value>(line) else { continue };
        if v.get("type").and_then(Value::as_str) != Some("diagnostic") {
            continue;
        }
        let Some(d) = v.get("diagnostic") else { continue };
        if d.get("severity").and_then(Value::as_str) != Some("error") {
            continue;
        }
        let summary = d.get("summary").and_then(Value::as_str).unwrap_or_default();
        let detail = d.get("detail").and_then(Value::as_str).unwrap_or_default();
        let addr = d.get("address").and_then(Value::as_str);
        let mut s = match addr {
            Some(a) => format!("{a}: {summary}"),
            None => summary.to_owned(),
        };
        if !detail.is_empty() {
            s.push_str(": ");
            s.push_str(detail);
        }
        out.push(s);
    }
    out.join("; ")
}

/// Decides the cause from tofu's diagnostics text.
fn cause_of(diags: &str) -> Cause {
    let d = diags.to_ascii_lowercase();
    if d.contains("error acquiring the state lock") || d.contains("state is locked") {
        // Someone took the lock between our check and tofu's: wait for it.
        Cause::Unavailable
    } else if [
        "unsupported argument",
        "missing required argument",
        "reference to undeclared",
        "invalid reference",
        "unsupported block type",
        "argument or block definition required",
        "invalid expression",
        "configuration for import target does not exist",
        "no configuration files",
        "module not installed",
        "invalid value for input variable",
    ]
    .iter()
    .any(|p| d.contains(p))
    {
        Cause::Invalid
    } else if d.contains("required plugins are not installed")
        || d.contains("please run \"terraform init\"")
        || d.contains("please run \"tofu init\"")
    {
        Cause::NotFound
    } else if d.contains("unauthorized") || d.contains("invalid token") || d.contains("(forbidden)")
    {
        Cause::Unauthorized
    } else {
        Cause::CommandFailed
    }
}

fn parse_json(op: &str, stdout: &str) -> AdapterResult<Value> {
    serde_json::from_str(stdout)
        .map_err(|e| err(op, Cause::CommandFailed, format!("tofu {op} printed invalid JSON: {e}")))
}

/// Streams `-json` lines to the sink as events while the command runs.
fn event_sink(sink: TofuSink) -> impl FnMut(&str) + Send + 'static {
    move |line: &str| {
        if let Some(ev) = parse_event(line) {
            let _ = sink.send(ev);
        }
    }
}

/// `show -json` → resources of the root module and its children.
fn resources_of(module: &Value, out: &mut Vec<StateResource>) {
    for r in module.get("resources").and_then(Value::as_array).into_iter().flatten() {
        let address = r.get("address").and_then(Value::as_str).unwrap_or_default().to_owned();
        let values = r.get("values").cloned().unwrap_or(Value::Null);
        let id = match values.get("id") {
            Some(Value::Number(n)) => n.as_i64().unwrap_or(0),
            Some(Value::String(s)) => s.parse().unwrap_or(0),
            _ => 0,
        };
        let name = values
            .get("name")
            .and_then(Value::as_str)
            .map(str::to_owned)
            .unwrap_or_else(|| address.clone());
        out.push(StateResource {
            kind: r.get("type").and_then(Value::as_str).unwrap_or_default().to_owned(),
            address,
            id,
            name,
            attrs: values,
        });
    }
    for child in module.get("child_modules").and_then(Value::as_array).into_iter().flatten() {
        resources_of(child, out);
    }
}

#[async_trait]
impl TofuApi for TofuCli {
    /// `version -json`, run in the plugin cache dir (no workspace needed).
    async fn version(&self) -> AdapterResult<String> {
        tokio::fs::create_dir_all(&self.plugin_cache).await.map_err(|e| {
            err(
                "version",
                Cause::Unavailable,
                format!("plugin cache {}: {e}", self.plugin_cache.display()),
            )
        })?;
        let ws = Workspace { dir: self.plugin_cache.clone() };
        let spec = self.spec(&ws, &["version", "-json"], None).timeout(Duration::from_secs(30));
        let out = self.exec("version", spec).await?;
        let v = parse_json("version", &out.stdout)?;
        let version = v.get("terraform_version").and_then(Value::as_str).unwrap_or_default();
        let name = if out.stdout.contains("opentofu") || self.binary.ends_with("tofu") {
            "OpenTofu"
        } else {
            "Terraform"
        };
        let parsed: Vec<u32> =
            version.split(['.', '-']).take(2).filter_map(|p| p.parse().ok()).collect();
        if parsed.len() < 2 || (parsed[0], parsed[1]) < MIN_VERSION {
            return Err(err(
                "version",
                Cause::Invalid,
                format!(
                    "{} reports version `{version}`; {}.{} or newer is needed",
                    self.binary.display(),
                    MIN_VERSION.0,
                    MIN_VERSION.1
                ),
            ));
        }
        Ok(format!("{name} {version}"))
    }

    async fn init(&self, ws: &Workspace) -> AdapterResult<()> {
        tokio::fs::create_dir_all(&self.plugin_cache).await.map_err(|e| {
            err(
                "init",
                Cause::Unavailable,
                format!("plugin cache {}: {e}", self.plugin_cache.display()),
            )
        })?;
        if !ws.dir.is_dir() {
            return Err(err(
                "init",
                Cause::NotFound,
                format!("workspace {} does not exist", ws.dir.display()),
            ));
        }
        self.exec("init", self.spec(ws, &["init", "-input=false", "-no-color"], None)).await?;
        Ok(())
    }

    async fn plan(&self, ws: &Workspace, token: &SecretString) -> AdapterResult<PlanSummary> {
        self.prepare(ws, "plan", None).await?;
        let summary: Arc<Mutex<Option<PlanSummary>>> = Arc::default();
        let s2 = summary.clone();
        let spec = self
            .spec(
                ws,
                &[
                    "plan",
                    "-input=false",
                    "-no-color",
                    "-json",
                    "-detailed-exitcode",
                    "-out=tfplan",
                ],
                Some(token),
            )
            .ok_codes(&[0, 2])
            .line_sink(move |line| {
                let Ok(v) = serde_json::from_str::<Value>(line) else { return };
                if v.get("type").and_then(Value::as_str) == Some("change_summary")
                    && let Some(c) = v.get("changes")
                {
                    let n = |k: &str| c.get(k).and_then(Value::as_u64).unwrap_or(0) as u32;
                    *s2.lock().expect("summary lock") = Some(PlanSummary {
                        add: n("add"),
                        change: n("change"),
                        destroy: n("remove"),
                    });
                }
            });
        let res = self.exec("plan", spec).await;
        // The plan file embeds the token: delete it whatever happened.
        remove_plan(ws).await;
        let out = res?;
        let summary = summary.lock().expect("summary lock").clone();
        match (summary, out.code) {
            (Some(s), _) => Ok(s),
            (None, Some(0)) => Ok(PlanSummary::default()),
            (None, _) => Err(err(
                "plan",
                Cause::CommandFailed,
                "tofu plan reported changes but no change_summary",
            )),
        }
    }

    async fn apply(
        &self,
        ws: &Workspace,
        token: &SecretString,
        replace: &[String],
        parallelism: u32,
        sink: TofuSink,
    ) -> AdapterResult<()> {
        self.prepare(ws, "apply", Some(&sink)).await?;
        let replace: Vec<String> = replace.iter().map(|a| format!("-replace={a}")).collect();
        let parallelism = format!("-parallelism={}", parallelism.max(1));
        let mut args = vec!["apply", "-input=false", "-auto-approve", "-json", &parallelism];
        args.extend(replace.iter().map(String::as_str));
        let spec = self.spec(ws, &args, Some(token)).line_sink(event_sink(sink));
        self.exec("apply", spec).await?;
        Ok(())
    }

    async fn output(&self, ws: &Workspace) -> AdapterResult<Value> {
        let out =
            self.exec("output", self.spec(ws, &["output", "-no-color", "-json"], None)).await?;
        let v = parse_json("output", &out.stdout)?;
        let mut map = serde_json::Map::new();
        if let Value::Object(o) = v {
            for (k, entry) in o {
                map.insert(k, entry.get("value").cloned().unwrap_or(Value::Null));
            }
        }
        Ok(Value::Object(map))
    }

    async fn state(&self, ws: &Workspace) -> AdapterResult<Vec<StateResource>> {
        let out = self.exec("state", self.spec(ws, &["show", "-no-color", "-json"], None)).await?;
        let v = parse_json("state", &out.stdout)?;
        let mut resources = Vec::new();
        if let Some(root) = v.pointer("/values/root_module") {
            resources_of(root, &mut resources);
        }
        Ok(resources)
    }

    async fn import(
        &self,
        ws: &Workspace,
        token: &SecretString,
        address: &str,
        id: i64,
    ) -> AdapterResult<()> {
        self.prepare(ws, "import", None).await?;
        let id = id.to_string();
        let spec =
            self.spec(ws, &["import", "-input=false", "-no-color", address, &id], Some(token));
        self.exec("import", spec).await?;
        Ok(())
    }

    async fn destroy(
        &self,
        ws: &Workspace,
        token: &SecretString,
        sink: TofuSink,
    ) -> AdapterResult<()> {
        self.prepare(ws, "destroy", Some(&sink)).await?;
        let spec = self
            .spec(ws, &["destroy", "-input=false", "-auto-approve", "-json"], Some(token))
            .line_sink(event_sink(sink));
        self.exec("destroy", spec).await?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_apply_lines() {
        let l = r#"{"@level":"info","@message":"terraform_data.a: Creation complete after 0s [id=x]","hook":{"resource":{"addr":"terraform_data.a"},"action":"create","id_key":"id","id_value":"x","elapsed_seconds":1.5},"type":"apply_complete"}"#;
        let e = parse_event(l).unwrap();
        assert_eq!(e.id.as_deref(), Some("x"));
        assert_eq!(e.kind, "apply_complete");
        assert_eq!(e.address.as_deref(), Some("terraform_data.a"));
        assert_eq!(e.action.as_deref(), Some("create"));
        assert_eq!(e.elapsed_s, Some(1.5));
        assert_eq!(parse_event("plain text").unwrap().kind, "log");
        assert_eq!(parse_event("  ").as_ref(), None);
        let d = r#"{"@level":"error","@message":"Error: boom","diagnostic":{"severity":"error","summary":"boom","detail":"it broke","address":"terraform_data.a"},"type":"diagnostic"}"#;
        assert_eq!(diagnostics_of(d), "terraform_data.a: boom: it broke");
        assert_eq!(cause_of("Error acquiring the state lock"), Cause::Unavailable);
        assert_eq!(cause_of("Unsupported argument"), Cause::Invalid);
        assert_eq!(cause_of("Resource postcondition failed"), Cause::CommandFailed);
    }

    /// The borrowed parse and the tree parse read every shape of line alike;
    /// a field of an unexpected type falls back to the tree.
    #[test]
    fn the_typed_parse_reads_what_the_tree_reads() {
        let lines = [
            r#"{"@level":"info","@message":"hcloud_server.w[0]: Still creating... [10s elapsed]","hook":{"resource":{"addr":"hcloud_server.w[0]"},"action":"create","elapsed_seconds":10},"type":"apply_progress"}"#,
            r#"{"@level":"info","@message":"a \"quoted\" \u00e9 line","change":{"resource":{"addr":"hcloud_network.n"},"action":"create"},"type":"planned_change"}"#,
            r#"{"@level":"error","@message":"Error: boom","diagnostic":{"severity":"error","summary":"boom","detail":"it broke"},"type":"diagnostic"}"#,
            r#"{"@level":"info","@message":"x","hook":{"resource":{"addr":"a.b"},"action":"delete","id_value":null},"type":"apply_start"}"#,
            r#"{"@message":"no type"}"#,
            r#"{"type":"apply_progress","hook":{"action":5,"elapsed_seconds":"soon"}}"#,
            r#"[1, 2]"#,
        ];
        for l in lines {
            assert_eq!(parse_event(l), parse_event_leniently(l), "{l}");
        }
        let odd = parse_event(lines[5]).unwrap();
        assert_eq!((odd.kind.as_str(), odd.action, odd.elapsed_s), ("apply_progress", None, None));
        assert_eq!(parse_event(lines[1]).unwrap().message, "a \"quoted\" é line");
    }
}
