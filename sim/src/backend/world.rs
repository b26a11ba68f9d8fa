//! The sim world: the persistent "remote" side of every fake.
//!
//! Objects live as one JSON file each at `<root>/<system>/<kind>/<key>.json`,
//! written to a temp file and renamed into place, so a daemon killed with
//! SIGKILL finds every object exactly as the "remote" left it. No fsync: the
//! OS keeps its page cache across a process kill, and the world only has to
//! outlive the process, not the machine.
//!
//! The world also owns what is per process: latency scaling, failure
//! injection ([`SimConfig`]), a request log, the id allocator's mutex and the
//! per-(system, kind) mutexes that make create-with-unique-name atomic. One
//! daemon process at a time uses a world, unless it is opened
//! [`SimWorld::shared`]: then replicas of one PostgreSQL store share it, the
//! kind locks and counters are also file locks (`flock(2)`) under
//! `<root>/.locks`, and nothing is cached (another process may have written).

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex as StdMutex};
use std::time::Duration;

use rand::rngs::StdRng;
use rand::{RngExt, SeedableRng};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use tokio::sync::{Mutex, OwnedMutexGuard};

use cz_adapters::cloud::budget::{BudgetConfig, RateBudget};
use cz_engine::{Cause, StepError, System};

/// The first cloud id handed out by a fresh world (ids look like Hetzner's).
const ID_BASE: i64 = 4_200_000;
/// How many recent calls the in-memory request log keeps.
const LOG_CAP: usize = 20_000;

/// How the sim behaves: latency scaling and failure injection.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct SimConfig {
    /// Multiplies every base latency; `0` means no sleeping at all, `1` is
    /// realistic (a provisioning then takes many minutes).
    pub latency_factor: f64,
    /// Deterministic failures, matched by op name.
    pub fail: Vec<FailRule>,
    /// Probability (0..=1) that any op fails with `Cause::Unavailable`.
    pub transient_rate: f64,
    /// Seed for jitter, transient failures and generated secrets.
    pub seed: Option<u64>,
    /// The simulated project's limits by kind (`server`, `load_balancer`,
    /// `network`, `placement_group`) where they differ from a new Hetzner
    /// project's (25, 5, 10, 10): Hetzner raises them on request, and many
    /// Sovereigns in one shared world need that.
    pub project_limits: BTreeMap<String, u32>,
    /// The simulated project's request budget: Hetzner's token bucket of
    /// 3,600 requests, one back per (simulated) second.
    pub hcloud_rate_limit: u32,
    /// Servers, by name, whose first incarnation comes up broken: a host
    /// that failed on the cloud's side. The server made again under the
    /// same name (a replacement) is healthy.
    pub server_faults: BTreeMap<String, ServerFault>,
}

/// How a simulated server fails to come up.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ServerFault {
    /// Created `off`: a power-on brings it up.
    Off,
    /// `running`, but its boot hangs: no SSH, and a reset does not help.
    Hang,
}

impl Default for SimConfig {
    fn default() -> Self {
        SimConfig {
            latency_factor: 1.0,
            fail: Vec::new(),
            transient_rate: 0.0,
            seed: None,
            project_limits: BTreeMap::new(),
            hcloud_rate_limit: 3_600,
            server_faults: BTreeMap::new(),
        }
    }
}

impl SimConfig {
    /// No latency, no failures: for unit tests.
    pub fn instant() -> Self {
        SimConfig { latency_factor: 0.0, ..SimConfig::default() }
    }
}

/// The first `times` calls of `op` fail with `cause` (counted in memory, per
/// process). `op` is an exact op name (`cloud.delete`, `tofu.apply`,
/// `tofu.create.server`, `ssh.run`, `kube.apply`, `bao.init`,
/// `dns.create_zone`, …), or a prefix pattern ending in `*` (`cloud.*`).
/// Several rules for one op fire one after the other, in order.
///
/// `kube.helmrelease.<name>` rules are not call failures: while such a rule
/// exists with `times > 0`, that HelmRelease reports Ready=False
/// (InstallFailed); `times` is not consumed.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FailRule {
    pub op: String,
    pub cause: Cause,
    #[serde(default = "one")]
    pub times: u32,
}

fn one() -> u32 {
    1
}

fn rule_matches(pattern: &str, op: &str) -> bool {
    match pattern.strip_suffix('*') {
        Some(prefix) => op.starts_with(prefix),
        None => pattern == op,
    }
}

/// The [`System`] an op or world system name belongs to (`cloud.create` →
/// Cloud).
pub fn system_of(name: &str) -> System {
    match name.split('.').next().unwrap_or("") {
        "tofu" => System::Tofu,
        "ssh" => System::Ssh,
        "kube" | "kubernetes" => System::Kubernetes,
        "bao" | "openbao" => System::Openbao,
        "dns" => System::Dns,
        "registrar" => System::Registrar,
        _ => System::Cloud,
    }
}

/// Encodes a key as a file name: `A-Z a-z 0-9 - _` pass, everything else
/// (and a leading `.`) becomes `=XX`, so distinct keys never collide.
pub fn sanitize_key(key: &str) -> String {
    let mut out = String::with_capacity(key.len());
    for (i, b) in key.bytes().enumerate() {
        let plain = b.is_ascii_alphanumeric() || b == b'-' || b == b'_' || (b == b'.' && i > 0);
        if plain {
            out.push(b as char);
        } else {
            out.push_str(&format!("={b:02X}"));
        }
    }
    if out.is_empty() {
        out.push_str("=00");
    }
    out
}

/// The key [`sanitize_key`] made `file` (an object's file name) from:
/// each `=XX` back to its byte.
fn key_of_file(file: &str) -> String {
    let stem = file.strip_suffix(".json").unwrap_or(file).as_bytes();
    if stem == b"=00" {
        return String::new();
    }
    let mut out = Vec::with_capacity(stem.len());
    let mut i = 0;
    while i < stem.len() {
        let hex = stem.get(i + 1..i + 3).and_then(|h| std::str::from_utf8(h).ok());
        match hex.map(|h| u8::from_str_radix(h, 16)) {
            Some(Ok(b)) if stem[i] == b'=' => {
                out.push(b);
                i += 3;
            }
            _ => {
                out.push(stem[i]);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// An object file's text, checked to be JSON, compact: what [`SimWorld::put`]
/// writes is compact already (serde_json escapes a newline inside a
/// string), so only a file an older world pretty-printed is parsed and
/// written out again. A shared world reads every file on every list, so
/// its files are not parsed twice.
fn compact_text(bytes: Vec<u8>) -> serde_json::Result<Arc<str>> {
    // JSON is UTF-8: text that is not, is not JSON.
    let text = String::from_utf8(bytes).map_err(serde::de::Error::custom)?;
    if text.contains('\n') {
        return Ok(serde_json::from_str::<Value>(&text)?.to_string().into());
    }
    serde_json::from_str::<serde::de::IgnoredAny>(&text)?;
    Ok(text.into())
}

/// One object as the cache holds it: the key it was put under and its
/// compact JSON text (the file's).
#[derive(Clone, Debug)]
struct Cached {
    key: Box<str>,
    text: Arc<str>,
}

impl Cached {
    fn new(file: &str, text: Arc<str>) -> Cached {
        Cached { key: key_of_file(file).into(), text }
    }

    fn view(&self) -> ObjectText<'_> {
        ObjectText { key: &self.key, text: &self.text }
    }
}

/// One stored object as [`SimWorld::list_map`] shows it: the key it was
/// put under and its JSON text, parsed only on demand.
#[derive(Clone, Copy)]
pub struct ObjectText<'a> {
    key: &'a str,
    text: &'a str,
}

impl<'a> ObjectText<'a> {
    /// The key the object was [put](SimWorld::put) under.
    pub fn key(&self) -> &'a str {
        self.key
    }

    /// The object, parsed (`None`, logged, if its text is not JSON, which
    /// only a hand-edited file can be: the cache holds what was written).
    pub fn value(&self) -> Option<Value> {
        self.parse()
            .map_err(|e| tracing::warn!(key = self.key, error = %e, "Skipping an unreadable sim object."))
            .ok()
    }

    /// The object as a `T`: a type of the fields a read needs parses
    /// only those, skipping the rest without building it.
    pub fn parse<T: serde::de::DeserializeOwned>(&self) -> serde_json::Result<T> {
        serde_json::from_str(self.text)
    }
}

static TMP_COUNTER: AtomicU64 = AtomicU64::new(0);

/// Writes `bytes` to `path` atomically against process death: temp file in
/// the same directory, then rename. Creates the parent directories.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    let dir = path.parent().unwrap_or_else(|| Path::new("."));
    std::fs::create_dir_all(dir)?;
    let name = path.file_name().and_then(|n| n.to_str()).unwrap_or("file");
    let tmp = dir.join(format!(
        ".{name}.tmp.{}.{}",
        std::process::id(),
        TMP_COUNTER.fetch_add(1, Ordering::Relaxed)
    ));
    let res = (|| {
        let mut f = std::fs::File::create(&tmp)?;
        f.write_all(bytes)?;
        drop(f);
        std::fs::rename(&tmp, path)
    })();
    if res.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    res
}

/// A persisted counter's value: `absent` when its file does not exist (or
/// does not hold a number).
fn read_counter<T: std::str::FromStr>(path: &Path, absent: T) -> std::io::Result<T> {
    match std::fs::read_to_string(path) {
        Ok(s) => Ok(s.trim().parse().unwrap_or(absent)),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(absent),
        Err(e) => Err(e),
    }
}

/// [`write_atomic`] off the async executor.
pub async fn write_atomic_async(
    path: PathBuf,
    bytes: impl AsRef<[u8]> + Send + 'static,
) -> std::io::Result<()> {
    tokio::task::spawn_blocking(move || write_atomic(&path, bytes.as_ref()))
        .await
        .map_err(std::io::Error::other)?
}

/// A file-system error of the sim world: a full disk or a read-only file
/// system is a storage fault (the operator's to clear, the job pauses), as
/// it is for the store; anything else is the sim's `Unavailable`.
fn fs_error(system: &str, what: &str, e: std::io::Error) -> StepError {
    match cz_state::StorageFault::of_io(&e) {
        Some(fault) => StepError::Store {
            message: format!("sim world {what}: {e}"),
            retryable: false,
            fault: Some(fault),
        },
        None => io_error(system, what, e),
    }
}

fn io_error(system: &str, what: &str, e: impl std::fmt::Display) -> StepError {
    StepError::adapter(
        system_of(system),
        "sim-world",
        Cause::Unavailable,
        format!("sim world {what}: {e}"),
    )
}

#[derive(Default)]
struct Calls {
    counts: BTreeMap<String, u64>,
    recent: VecDeque<String>,
}

/// The per-(system, kind) async mutex.
type KindLock = Arc<Mutex<()>>;

/// A held kind lock (and, in a shared world, its file lock).
pub struct KindGuard {
    _guard: OwnedMutexGuard<()>,
    _file: Option<std::fs::File>,
}

struct IdState {
    scanned: bool,
}

/// The persistent sim world (see the module docs).
pub struct SimWorld {
    root: PathBuf,
    config: SimConfig,
    /// Shared by several processes (see the module docs).
    shared: bool,
    ids: Mutex<IdState>,
    /// [`Self::next_rising`]'s blocks, by counter: (last handed out, end
    /// of the block reserved on disk).
    rising: Mutex<HashMap<String, (u64, u64)>>,
    locks: StdMutex<HashMap<(String, String), KindLock>>,
    fired: StdMutex<Vec<u32>>,
    calls: StdMutex<Calls>,
    rng: StdMutex<StdRng>,
    /// Write-through cache of the object files, per (system, kind), keyed
    /// by file name: one process uses a world at a time, so after a kind
    /// is loaded once, reads never touch the disk (the sim's own cost must
    /// not swamp what the benchmarks measure). Files stay the truth across
    /// restarts.
    cache: StdMutex<HashMap<(String, String), BTreeMap<String, Cached>>>,
    /// The values of the simulated clusters' Secrets, by cluster and
    /// object key: process memory only, as a real cluster keeps them in
    /// its etcd and never in the daemon's data dir (the files hold their
    /// digests). A sim restarted in a new process has lost them, as a
    /// wiped etcd would have.
    secret_values: StdMutex<HashMap<String, Value>>,
    /// The project's request budget on the sim's clock (a simulated second
    /// is `latency_factor` real seconds), charged by every modelled API
    /// request: the sim cloud's calls and tofu's (create, action polls,
    /// delete). `None` at latency 0, where nothing takes time. One project
    /// per world; in a shared world each process keeps its own.
    budget: Option<Arc<RateBudget>>,
    /// Modelled hcloud API requests made so far.
    hcloud_requests: AtomicU64,
    /// Time modelled requests spent waiting for the budget, in µs (summed
    /// over concurrent waiters).
    budget_wait_us: AtomicU64,
}

/// How many values [`SimWorld::next_rising`] reserves per file write.
pub const RISING_BLOCK: u64 = 1000;

/// The budget's key in metrics: the sim's one project.
pub const SIM_PROJECT: &str = "sim";

/// How many times the hcloud provider polls an action that takes
/// `duration_ms`: hcloud-go's default backoff, 500 ms doubling (a model:
/// the cap is taken as 10 s).
pub fn action_polls(duration_ms: u64) -> u32 {
    let (mut waited, mut step, mut polls) = (0u64, 500u64, 0u32);
    while waited < duration_ms {
        waited += step;
        step = (step * 2).min(10_000);
        polls += 1;
    }
    polls.max(1)
}

impl std::fmt::Debug for SimWorld {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SimWorld").field("root", &self.root).field("config", &self.config).finish()
    }
}

impl SimWorld {
    /// A world rooted at `root` (e.g. `<data-dir>/sim`). No I/O happens
    /// here; directories appear with the first write.
    pub fn new(root: impl Into<PathBuf>, config: SimConfig) -> SimWorld {
        let rng = match config.seed {
            Some(seed) => StdRng::seed_from_u64(seed),
            None => rand::make_rng::<StdRng>(),
        };
        let rules = config.fail.len();
        let f = config.latency_factor;
        let budget = (f > 0.0 && f.is_finite()).then(|| {
            Arc::new(RateBudget::new(
                SIM_PROJECT,
                BudgetConfig {
                    capacity: config.hcloud_rate_limit.max(1),
                    refill_per_sec: 1.0 / f,
                    max_wait: Duration::from_secs_f64(120.0 * f).max(Duration::from_secs(1)),
                },
            ))
        });
        SimWorld {
            root: root.into(),
            config,
            shared: false,
            ids: Mutex::new(IdState { scanned: false }),
            rising: Mutex::new(HashMap::new()),
            locks: StdMutex::new(HashMap::new()),
            fired: StdMutex::new(vec![0; rules]),
            calls: StdMutex::new(Calls::default()),
            rng: StdMutex::new(rng),
            cache: StdMutex::new(HashMap::new()),
            secret_values: StdMutex::new(HashMap::new()),
            budget,
            hcloud_requests: AtomicU64::new(0),
            budget_wait_us: AtomicU64::new(0),
        }
    }

    /// The project's request budget (none at latency 0).
    pub fn budget(&self) -> Option<&Arc<RateBudget>> {
        self.budget.as_ref()
    }

    /// Spends `n` modelled hcloud requests, waiting for the budget's
    /// tokens as the real client does; fails (transient) when the wait
    /// would be longer than the client waits.
    pub async fn charge(&self, n: u32) -> Result<(), StepError> {
        self.hcloud_requests.fetch_add(u64::from(n), Ordering::Relaxed);
        if let Some(b) = &self.budget {
            let t0 = tokio::time::Instant::now();
            for _ in 0..n {
                b.acquire().await?;
            }
            let us = u64::try_from(t0.elapsed().as_micros()).unwrap_or(u64::MAX);
            self.budget_wait_us.fetch_add(us, Ordering::Relaxed);
        }
        Ok(())
    }

    /// Time modelled requests have waited for the budget (summed over
    /// concurrent waiters).
    pub fn budget_wait(&self) -> Duration {
        Duration::from_micros(self.budget_wait_us.load(Ordering::Relaxed))
    }

    /// Modelled hcloud API requests made so far.
    pub fn hcloud_requests(&self) -> u64 {
        self.hcloud_requests.load(Ordering::Relaxed)
    }

    /// Keeps a Secret's `data`/`stringData` in memory (see the field).
    /// A world several processes use at once (replicas on one PostgreSQL
    /// store): locks are also file locks, and nothing is cached.
    pub fn shared(root: impl Into<PathBuf>, config: SimConfig) -> SimWorld {
        SimWorld { shared: true, ..SimWorld::new(root, config) }
    }

    /// A file lock of `<root>/.locks/<name>` held for the guard's life
    /// (blocking: call it on a blocking thread).
    fn file_lock(root: &Path, name: &str) -> std::io::Result<std::fs::File> {
        let dir = root.join(".locks");
        std::fs::create_dir_all(&dir)?;
        let f = std::fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(dir.join(sanitize_key(name)))?;
        f.lock()?;
        Ok(f)
    }

    pub fn keep_secret_values(&self, key: &str, values: Value) {
        self.secret_values.lock().expect("not poisoned").insert(key.to_owned(), values);
    }

    /// A Secret's values kept by [`Self::keep_secret_values`].
    pub fn secret_values(&self, key: &str) -> Option<Value> {
        self.secret_values.lock().expect("not poisoned").get(key).cloned()
    }

    pub fn forget_secret_values(&self, key: &str) {
        self.secret_values.lock().expect("not poisoned").remove(key);
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    pub fn config(&self) -> &SimConfig {
        &self.config
    }

    // === storage ===

    fn obj_dir(&self, system: &str, kind: &str) -> PathBuf {
        self.root.join(sanitize_key(system)).join(sanitize_key(kind))
    }

    fn obj_path(&self, system: &str, kind: &str, key: &str) -> PathBuf {
        self.obj_dir(system, kind).join(format!("{}.json", sanitize_key(key)))
    }

    /// Stores `value` (atomic replace), as compact JSON: the cache holds
    /// the same text the file does.
    pub async fn put(
        &self,
        system: &str,
        kind: &str,
        key: &str,
        value: &Value,
    ) -> Result<(), StepError> {
        let text: Arc<str> =
            serde_json::to_string(value).map_err(|e| io_error(system, "encode", e))?.into();
        write_atomic_async(self.obj_path(system, kind, key), Arc::<[u8]>::from(text.clone()))
            .await
            .map_err(|e| fs_error(system, "write", e))?;
        if self.shared {
            return Ok(());
        }
        let mut cache = self.cache.lock().expect("sim cache");
        if let Some(objs) = cache.get_mut(&(system.to_owned(), kind.to_owned())) {
            objs.insert(format!("{}.json", sanitize_key(key)), Cached { key: key.into(), text });
        }
        Ok(())
    }

    pub async fn get(
        &self,
        system: &str,
        kind: &str,
        key: &str,
    ) -> Result<Option<Value>, StepError> {
        let file = format!("{}.json", sanitize_key(key));
        let cached = self
            .cache
            .lock()
            .expect("sim cache")
            .get(&(system.to_owned(), kind.to_owned()))
            .filter(|_| !self.shared)
            .map(|objs| objs.get(&file).map(|c| c.text.clone()));
        if let Some(text) = cached {
            return text
                .map(|t| serde_json::from_str(&t))
                .transpose()
                .map_err(|e| io_error(system, &format!("decode {kind}/{file}"), e));
        }
        let path = self.obj_path(system, kind, key);
        match tokio::fs::read(&path).await {
            Ok(bytes) => serde_json::from_slice(&bytes)
                .map(Some)
                .map_err(|e| io_error(system, &format!("decode {}", path.display()), e)),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(io_error(system, "read", e)),
        }
    }

    /// Every object of a kind, in file-name order.
    pub async fn list(&self, system: &str, kind: &str) -> Result<Vec<Value>, StepError> {
        self.list_where(system, kind, |_| true).await
    }

    /// The objects of a kind that `keep` accepts, in file-name order.
    pub async fn list_where(
        &self,
        system: &str,
        kind: &str,
        keep: impl Fn(&Value) -> bool,
    ) -> Result<Vec<Value>, StepError> {
        self.list_map(system, kind, |o| o.value().filter(|v| keep(v))).await
    }

    /// What `view` makes of each object of a kind, in file-name order,
    /// skipping the objects it returns `None` for, from the cache (loading
    /// the kind from disk once).
    ///
    /// The cache holds each object as its compact JSON text, not as a
    /// parsed tree: 200 sim clusters in one process (P4) kept 60 MB of
    /// `Value` trees, most of them Kubernetes objects, where their text
    /// is a quarter of that. A view that can decide from an object's key
    /// ([`ObjectText::key`]) parses nothing it skips; one that keeps an
    /// object parses only that object ([`ObjectText::value`]).
    pub async fn list_map<T>(
        &self,
        system: &str,
        kind: &str,
        view: impl Fn(ObjectText<'_>) -> Option<T>,
    ) -> Result<Vec<T>, StepError> {
        let as_text = |o: &Cached| view(o.view());
        if self.shared {
            let all = self.list_from_disk(system, kind).await?;
            return Ok(all.values().filter_map(as_text).collect());
        }
        let k = (system.to_owned(), kind.to_owned());
        let loaded = if self.cache.lock().expect("sim cache").contains_key(&k) {
            None
        } else {
            Some(self.list_from_disk(system, kind).await?)
        };
        let mut cache = self.cache.lock().expect("sim cache");
        // A write that raced the load is already on disk and in `loaded`, or
        // it finished after: keep whatever got into the cache first.
        let objs = cache.entry(k).or_insert_with(|| loaded.unwrap_or_default());
        Ok(objs.values().filter_map(as_text).collect())
    }

    /// A kind's object files, by file name, as compact JSON text (files
    /// an older world wrote pretty-printed are compacted as they load).
    async fn list_from_disk(
        &self,
        system: &str,
        kind: &str,
    ) -> Result<BTreeMap<String, Cached>, StepError> {
        let dir = self.obj_dir(system, kind);
        let sys = system.to_owned();
        tokio::task::spawn_blocking(move || -> Result<BTreeMap<String, Cached>, StepError> {
            let entries = match std::fs::read_dir(&dir) {
                Ok(e) => e,
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Default::default()),
                Err(e) => return Err(io_error(&sys, "list", e)),
            };
            let mut names: Vec<PathBuf> = entries
                .filter_map(|e| e.ok())
                .map(|e| e.path())
                .filter(|p| {
                    let n = p.file_name().and_then(|n| n.to_str()).unwrap_or("");
                    n.ends_with(".json") && !n.starts_with('.')
                })
                .collect();
            names.sort();
            let mut out = BTreeMap::new();
            for p in names {
                let name = p.file_name().and_then(|n| n.to_str()).unwrap_or_default().to_owned();
                match std::fs::read(&p) {
                    Ok(bytes) => match compact_text(bytes) {
                        Ok(text) => {
                            let cached = Cached::new(&name, text);
                            out.insert(name, cached);
                        }
                        Err(e) => tracing::warn!(path = %p.display(), error = %e, "Skipping an unreadable sim object."),
                    },
                    // Deleted between read_dir and read.
                    Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                    Err(e) => return Err(io_error(&sys, "read", e)),
                }
            }
            Ok(out)
        })
        .await
        .map_err(|e| io_error(system, "list", e))?
    }

    /// Removes an object; returns whether it existed.
    pub async fn delete(&self, system: &str, kind: &str, key: &str) -> Result<bool, StepError> {
        if let Some(objs) =
            self.cache.lock().expect("sim cache").get_mut(&(system.to_owned(), kind.to_owned()))
        {
            objs.remove(&format!("{}.json", sanitize_key(key)));
        }
        match tokio::fs::remove_file(self.obj_path(system, kind, key)).await {
            Ok(()) => Ok(true),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(false),
            Err(e) => Err(fs_error(system, "delete", e)),
        }
    }

    /// The per-(system, kind) mutex: hold it across read-check-write
    /// sequences (unique names, counters). Any string works as `kind`.
    pub async fn lock(&self, system: &str, kind: &str) -> KindGuard {
        let m = {
            let mut map = self.locks.lock().expect("sim lock map");
            map.entry((system.to_owned(), kind.to_owned())).or_default().clone()
        };
        let guard = m.lock_owned().await;
        let file = if self.shared {
            let (root, name) = (self.root.clone(), format!("{system}.{kind}"));
            // A lock that cannot be taken is a broken world dir: say so
            // loudly, and go on with the process-local lock.
            match tokio::task::spawn_blocking(move || SimWorld::file_lock(&root, &name)).await {
                Ok(Ok(f)) => Some(f),
                Ok(Err(e)) => {
                    tracing::error!(error = %e, "Cannot take a file lock of the shared sim world.");
                    None
                }
                Err(e) => {
                    tracing::error!(error = %e, "The sim world's lock task failed.");
                    None
                }
            }
        } else {
            None
        };
        KindGuard { _guard: guard, _file: file }
    }

    // === ids and counters ===

    /// A new cloud id, unique across restarts: persisted in `<root>/ids`
    /// and, on the first call of a process, bumped past the largest id
    /// among existing cloud objects.
    pub async fn next_id(&self) -> Result<i64, StepError> {
        let mut st = self.ids.lock().await;
        let root = self.root.clone();
        let scan = !st.scanned;
        let shared = self.shared;
        let id = tokio::task::spawn_blocking(move || -> std::io::Result<i64> {
            let _file = if shared { Some(SimWorld::file_lock(&root, "ids")?) } else { None };
            let path = root.join("ids");
            let mut cur = read_counter(&path, ID_BASE)?;
            if scan {
                cur = cur.max(max_cloud_id(&root.join("cloud")));
            }
            let next = cur + 1;
            write_atomic(&path, next.to_string().as_bytes())?;
            Ok(next)
        })
        .await
        .map_err(|e| io_error("cloud", "ids", e))?
        .map_err(|e| fs_error("cloud", "ids", e))?;
        st.scanned = true;
        Ok(id)
    }

    /// A persisted world-wide counter (`<root>/seq/<name>`), starting at 1.
    pub async fn next_seq(&self, name: &str) -> Result<u64, StepError> {
        let _g = self.ids.lock().await;
        let path = self.root.join("seq").join(sanitize_key(name));
        let (root, shared) = (self.root.clone(), self.shared);
        let n = tokio::task::spawn_blocking(move || -> std::io::Result<u64> {
            let _file = if shared { Some(SimWorld::file_lock(&root, "ids")?) } else { None };
            let cur = read_counter(&path, 0u64)?;
            write_atomic(&path, (cur + 1).to_string().as_bytes())?;
            Ok(cur + 1)
        })
        .await
        .map_err(|e| io_error(name, "seq", e))?
        .map_err(|e| fs_error(name, "seq", e))?;
        Ok(n)
    }

    /// A persisted world-wide counter whose values need only grow, as
    /// resourceVersions (etcd revisions) do: gaps are allowed. It shares
    /// [`Self::next_seq`]'s file, which holds the largest value a process
    /// may have handed out. A process reserves [`RISING_BLOCK`] values at a
    /// time and writes the file once per block instead of once per value
    /// (a kube write was two file writes); a restart starts after the last
    /// block reserved. A world shared by several processes hands out
    /// values one by one under its file lock, as [`Self::next_seq`] does,
    /// so that each value is larger than every one before it.
    pub async fn next_rising(&self, name: &str) -> Result<u64, StepError> {
        if self.shared {
            return self.next_seq(name).await;
        }
        let mut rising = self.rising.lock().await;
        let (last, end) = rising.entry(name.to_owned()).or_insert((0, 0));
        if *last >= *end {
            let path = self.root.join("seq").join(sanitize_key(name));
            let reserved = tokio::task::spawn_blocking(move || -> std::io::Result<(u64, u64)> {
                let start = read_counter(&path, 0u64)?;
                let end = start + RISING_BLOCK;
                write_atomic(&path, end.to_string().as_bytes())?;
                Ok((start, end))
            })
            .await
            .map_err(|e| io_error(name, "seq", e))?
            .map_err(|e| fs_error(name, "seq", e))?;
            (*last, *end) = reserved;
        }
        *last += 1;
        Ok(*last)
    }

    // === latency, failure injection, request log ===

    /// `base_ms` scaled by the latency factor, ±20 % jitter.
    pub fn latency(&self, base_ms: u64) -> Duration {
        let f = self.config.latency_factor;
        if f <= 0.0 || base_ms == 0 || !f.is_finite() {
            return Duration::ZERO;
        }
        let jitter: f64 = self.rng.lock().expect("sim rng").random_range(0.8..=1.2);
        Duration::from_secs_f64(base_ms as f64 * f * jitter / 1000.0)
    }

    /// `base_ms` scaled by the latency factor, no jitter (deterministic
    /// controller delays).
    pub fn scaled(&self, base_ms: u64) -> Duration {
        let f = self.config.latency_factor;
        if f <= 0.0 || !f.is_finite() {
            return Duration::ZERO;
        }
        Duration::from_secs_f64(base_ms as f64 * f / 1000.0)
    }

    /// Every fake method starts here: sleeps the scaled latency, then
    /// records the call and applies the failure rules.
    ///
    /// Traced as an `adapter` span (system and op from `name`): in the sim,
    /// the simulated latency is the call.
    #[tracing::instrument(name = "adapter", level = "info", skip_all, fields(system = %system_of(name).as_str(), op = %name))]
    pub async fn op(&self, name: &str, base_latency_ms: u64) -> Result<(), StepError> {
        let d = self.latency(base_latency_ms);
        if !d.is_zero() {
            tokio::time::sleep(d).await;
        }
        self.check(name)
    }

    /// Records a call of `name` and applies the failure rules (no sleep).
    pub fn check(&self, name: &str) -> Result<(), StepError> {
        {
            let mut calls = self.calls.lock().expect("sim calls");
            *calls.counts.entry(name.to_owned()).or_default() += 1;
            if calls.recent.len() >= LOG_CAP {
                calls.recent.pop_front();
            }
            calls.recent.push_back(name.to_owned());
        }
        let (system, op) = match name.split_once('.') {
            Some((s, o)) => (system_of(s), o),
            None => (system_of(name), name),
        };
        {
            let mut fired = self.fired.lock().expect("sim fired");
            for (i, rule) in self.config.fail.iter().enumerate() {
                if rule_matches(&rule.op, name) && fired[i] < rule.times {
                    fired[i] += 1;
                    return Err(StepError::adapter(
                        system,
                        op,
                        rule.cause,
                        format!(
                            "sim: injected failure {} of {} for `{name}`",
                            fired[i], rule.times
                        ),
                    ));
                }
            }
        }
        let rate = self.config.transient_rate;
        if rate > 0.0 && self.rng.lock().expect("sim rng").random_bool(rate.min(1.0)) {
            return Err(StepError::adapter(
                system,
                op,
                Cause::Unavailable,
                format!("sim: transient failure of `{name}` (503 service unavailable)"),
            ));
        }
        Ok(())
    }

    /// The first rule for `name` that has `times > 0`, without consuming it.
    pub fn standing_rule(&self, name: &str) -> Option<&FailRule> {
        self.config.fail.iter().find(|r| r.times > 0 && rule_matches(&r.op, name))
    }

    /// The most recent calls (op names), oldest first.
    pub fn request_log(&self) -> Vec<String> {
        self.calls.lock().expect("sim calls").recent.iter().cloned().collect()
    }

    /// How many times `op` was called in this process.
    pub fn calls(&self, op: &str) -> u64 {
        self.calls.lock().expect("sim calls").counts.get(op).copied().unwrap_or(0)
    }

    /// Call counts per op in this process.
    pub fn call_counts(&self) -> BTreeMap<String, u64> {
        self.calls.lock().expect("sim calls").counts.clone()
    }

    // === randomness ===

    pub fn random_bytes(&self, n: usize) -> Vec<u8> {
        let mut buf = vec![0u8; n];
        self.rng.lock().expect("sim rng").fill(buf.as_mut_slice());
        buf
    }

    pub fn random_alnum(&self, n: usize) -> String {
        const ALPHABET: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789";
        let mut rng = self.rng.lock().expect("sim rng");
        (0..n).map(|_| ALPHABET[rng.random_range(0..ALPHABET.len())] as char).collect()
    }
}

/// The largest numeric key under `<root>/cloud/<kind>/`.
fn max_cloud_id(cloud_dir: &Path) -> i64 {
    let mut max = 0;
    let Ok(kinds) = std::fs::read_dir(cloud_dir) else { return 0 };
    for kind in kinds.filter_map(|e| e.ok()) {
        let Ok(files) = std::fs::read_dir(kind.path()) else { continue };
        for f in files.filter_map(|e| e.ok()) {
            let name = f.file_name();
            let name = name.to_string_lossy();
            if let Some(id) = name.strip_suffix(".json").and_then(|s| s.parse::<i64>().ok()) {
                max = max.max(id);
            }
        }
    }
    max
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn action_polls_follow_the_providers_backoff() {
        assert_eq!(action_polls(0), 1);
        assert_eq!(action_polls(500), 1);
        assert_eq!(action_polls(1_500), 2);
        assert_eq!(action_polls(20_000), 6);
    }

    /// Rising values grow across restarts, and a block of them costs one
    /// file write: the file holds the block's end.
    #[tokio::test]
    async fn rising_values_grow_across_restarts_with_one_write_a_block() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("seq").join("rv");
        let w = SimWorld::new(dir.path(), SimConfig::instant());
        let mut seen = Vec::new();
        for _ in 0..RISING_BLOCK + 2 {
            seen.push(w.next_rising("rv").await.unwrap());
        }
        assert!(seen.windows(2).all(|p| p[0] < p[1]), "{seen:?}");
        assert_eq!(seen[0], 1);
        let on_disk = || std::fs::read_to_string(&file).unwrap().parse::<u64>().unwrap();
        assert_eq!(on_disk(), 2 * RISING_BLOCK, "two blocks reserved, one write each");
        let last = *seen.last().unwrap();
        drop(w);
        // A restart (or a kill -9) skips what was reserved and not used.
        let w = SimWorld::new(dir.path(), SimConfig::instant());
        let after = w.next_rising("rv").await.unwrap();
        assert!(after > last, "{after} after {last}");
        assert_eq!(after, 2 * RISING_BLOCK + 1);
        // The one-by-one counter of the same name continues above both.
        assert!(w.next_seq("rv").await.unwrap() > after);
    }

    /// The project budget runs on the sim's clock: at factor 0.01 a
    /// simulated second is 10 ms, so 5 requests past a bucket of 5 cost
    /// 50 ms; at factor 0 nothing waits, but requests are still counted.
    #[tokio::test(start_paused = true)]
    async fn the_project_budget_paces_modelled_requests_on_the_sim_clock() {
        let dir = tempfile::tempdir().unwrap();
        let cfg = SimConfig { latency_factor: 0.01, hcloud_rate_limit: 5, ..SimConfig::default() };
        let w = SimWorld::new(dir.path(), cfg);
        let t0 = tokio::time::Instant::now();
        w.charge(5).await.unwrap();
        assert_eq!(t0.elapsed(), Duration::ZERO);
        w.charge(5).await.unwrap();
        let waited = t0.elapsed();
        assert!(
            waited >= Duration::from_millis(49) && waited <= Duration::from_millis(51),
            "{waited:?}"
        );
        assert_eq!(w.hcloud_requests(), 10);
        assert_eq!(w.budget_wait(), waited);
        assert_eq!(w.budget().unwrap().key(), SIM_PROJECT);
        let w0 = SimWorld::new(dir.path(), SimConfig::instant());
        assert!(w0.budget().is_none());
        w0.charge(100).await.unwrap();
        assert_eq!(w0.hcloud_requests(), 100);
    }

    #[tokio::test]
    async fn put_get_list_delete_round_trip() {
        let dir = tempfile::tempdir().unwrap();
        let w = SimWorld::new(dir.path().join("sim"), SimConfig::instant());
        assert_eq!(w.get("dns", "zones", "a.example.").await.unwrap(), None);
        w.put("dns", "zones", "a.example.", &json!({"n": 1})).await.unwrap();
        w.put("dns", "zones", "b/example", &json!({"n": 2})).await.unwrap();
        w.put("dns", "zones", "b_example", &json!({"n": 3})).await.unwrap();
        assert_eq!(w.get("dns", "zones", "a.example.").await.unwrap(), Some(json!({"n": 1})));
        let mut ns: Vec<i64> = w
            .list("dns", "zones")
            .await
            .unwrap()
            .iter()
            .map(|v| v["n"].as_i64().unwrap())
            .collect();
        ns.sort();
        assert_eq!(ns, vec![1, 2, 3], "keys that differ only by a slash must not collide");
        assert!(w.delete("dns", "zones", "a.example.").await.unwrap());
        assert!(!w.delete("dns", "zones", "a.example.").await.unwrap());
        assert_eq!(w.list("dns", "zones").await.unwrap().len(), 2);
        assert!(w.list("dns", "nothing").await.unwrap().is_empty());
        // No temp files are left behind.
        let leftovers: Vec<_> = std::fs::read_dir(dir.path().join("sim/dns/zones"))
            .unwrap()
            .filter_map(|e| e.ok())
            .filter(|e| e.file_name().to_string_lossy().contains(".tmp."))
            .collect();
        assert!(leftovers.is_empty());
    }

    #[test]
    fn sanitize_is_injective_on_tricky_keys() {
        let keys = ["a/b", "a_b", "a=2Fb", "..", ".", "", "x.y", "http://openbao-0.x:8200"];
        let mut seen = std::collections::HashSet::new();
        for k in keys {
            let s = sanitize_key(k);
            assert!(!s.contains('/') && !s.starts_with('.'), "{k} → {s}");
            assert!(seen.insert(s), "collision for {k}");
        }
    }

    #[test]
    fn a_file_name_gives_back_its_key() {
        let keys = ["a/b", "a_b", "a=2Fb", "..", ".", "", "x.y", "http://openbao-0.x:8200", "ü/ß"];
        for k in keys {
            assert_eq!(key_of_file(&format!("{}.json", sanitize_key(k))), k);
        }
    }

    /// The cache holds what the file holds, compact JSON; a view sees each
    /// object's key and parses only the objects it asks for; a file an
    /// older world wrote pretty-printed reads the same.
    #[tokio::test]
    async fn a_view_sees_keys_and_parses_only_what_it_takes() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().join("sim");
        let w = SimWorld::new(&root, SimConfig::instant());
        w.put("kube", "c1", "v1/Secret/ns/a", &json!({"object": {"n": 1}})).await.unwrap();
        let file = root.join("kube/c1").join(format!("{}.json", sanitize_key("v1/Secret/ns/a")));
        assert_eq!(std::fs::read_to_string(&file).unwrap(), r#"{"object":{"n":1}}"#);
        // Written by an older world, and one hand-broken file.
        let pretty = serde_json::to_vec_pretty(&json!({"object": {"n": 2}})).unwrap();
        std::fs::write(
            root.join("kube/c1").join(format!("{}.json", sanitize_key("v1/Pod/ns/b"))),
            pretty,
        )
        .unwrap();
        std::fs::write(
            root.join("kube/c1").join(format!("{}.json", sanitize_key("v1/Pod/ns/c"))),
            "{",
        )
        .unwrap();
        let w = SimWorld::new(&root, SimConfig::instant());
        let keys = w.list_map("kube", "c1", |o| Some(o.key().to_owned())).await.unwrap();
        assert_eq!(keys, ["v1/Pod/ns/b", "v1/Secret/ns/a"], "the broken file is skipped");
        let pods = w
            .list_map("kube", "c1", |o| o.key().starts_with("v1/Pod/").then(|| o.value()).flatten())
            .await
            .unwrap();
        assert_eq!(pods, [json!({"object": {"n": 2}})]);
        assert_eq!(
            w.get("kube", "c1", "v1/Pod/ns/b").await.unwrap(),
            Some(json!({"object": {"n": 2}}))
        );
    }

    #[tokio::test]
    async fn ids_stay_unique_across_reopen_and_lost_counter() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().join("sim");
        let w = SimWorld::new(&root, SimConfig::instant());
        let a = w.next_id().await.unwrap();
        let b = w.next_id().await.unwrap();
        assert!(b > a);
        w.put("cloud", "server", &b.to_string(), &json!({"id": b})).await.unwrap();
        drop(w);
        let w = SimWorld::new(&root, SimConfig::instant());
        let c = w.next_id().await.unwrap();
        assert!(c > b);
        // A counter file lost or rolled back: the scan of existing objects
        // still keeps ids unique.
        std::fs::write(root.join("ids"), "1").unwrap();
        w.put("cloud", "network", &(c + 100).to_string(), &json!({})).await.unwrap();
        let w = SimWorld::new(&root, SimConfig::instant());
        assert!(w.next_id().await.unwrap() > c + 100);
    }

    #[tokio::test]
    async fn fail_rules_fire_the_first_times_calls_then_stop() {
        let dir = tempfile::tempdir().unwrap();
        let cfg = SimConfig {
            fail: vec![
                FailRule { op: "cloud.delete".into(), cause: Cause::RateLimited, times: 2 },
                FailRule { op: "cloud.delete".into(), cause: Cause::Conflict, times: 1 },
                FailRule { op: "dns.*".into(), cause: Cause::Network, times: 1 },
            ],
            ..SimConfig::instant()
        };
        let w = SimWorld::new(dir.path(), cfg);
        let causes: Vec<Option<Cause>> = (0..4)
            .map(|_| match w.check("cloud.delete") {
                Ok(()) => None,
                Err(StepError::Adapter { cause, system, op, .. }) => {
                    assert_eq!(system, System::Cloud);
                    assert_eq!(op, "delete");
                    Some(cause)
                }
                Err(e) => panic!("{e}"),
            })
            .collect();
        assert_eq!(
            causes,
            vec![Some(Cause::RateLimited), Some(Cause::RateLimited), Some(Cause::Conflict), None]
        );
        assert!(matches!(
            w.check("dns.query"),
            Err(StepError::Adapter { system: System::Dns, cause: Cause::Network, .. })
        ));
        assert!(w.check("dns.query").is_ok());
        assert_eq!(w.calls("cloud.delete"), 4);
        assert_eq!(w.request_log().len(), 6);
    }

    #[tokio::test]
    async fn transient_rate_one_always_fails_and_latency_sleeps() {
        let dir = tempfile::tempdir().unwrap();
        let w = SimWorld::new(
            dir.path(),
            SimConfig { transient_rate: 1.0, seed: Some(7), ..SimConfig::instant() },
        );
        assert!(matches!(
            w.op("kube.get", 10).await,
            Err(StepError::Adapter { cause: Cause::Unavailable, .. })
        ));
        let w =
            SimWorld::new(dir.path(), SimConfig { latency_factor: 0.01, ..SimConfig::default() });
        let t = std::time::Instant::now();
        w.op("ssh.run", 2_000).await.unwrap(); // 20 ms ± 20 %
        assert!(t.elapsed() >= Duration::from_millis(15));
        assert_eq!(SimWorld::new(dir.path(), SimConfig::instant()).latency(30_000), Duration::ZERO);
    }

    #[test]
    fn config_deserializes_with_defaults() {
        let c: SimConfig =
            serde_json::from_value(json!({"fail": [{"op": "tofu.apply", "cause": "unavailable"}]}))
                .unwrap();
        assert_eq!(c.latency_factor, 1.0);
        assert_eq!(
            c.fail[0],
            FailRule { op: "tofu.apply".into(), cause: Cause::Unavailable, times: 1 }
        );
        assert!(serde_json::from_value::<SimConfig>(json!({"latency": 1})).is_err());
    }
}
