//! The daemon as a child process: the real `catalyst-zero` binary against
//! a data directory that outlives it, talked to over HTTP, and killed with
//! SIGKILL (`Child::kill` sends SIGKILL on Unix).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use serde_json::Value;

use crate::free_port;

pub const TOKEN: &str = "e2e-operator-token-0123456789";

/// The `catalyst-zero` binary built next to this test binary. `.ci/run`
/// builds the workspace before the tests; a missing binary is an error, not
/// a skip.
pub fn binary() -> PathBuf {
    let exe = std::env::current_exe().expect("test binary path");
    let dir = exe.parent().and_then(Path::parent).expect("target dir");
    let bin = dir.join("catalyst-zero");
    assert!(
        bin.exists(),
        "{} is missing: build it first (`cargo build -p catalyst-zero`)",
        bin.display()
    );
    bin
}

/// A daemon process on a data directory that outlives it.
pub struct Daemon {
    pub data_dir: PathBuf,
    pub port: u16,
    pub sim_latency: f64,
    /// `serve` flags choosing the backend: `--backend sim` by default.
    pub backend_args: Vec<String>,
    /// Extra environment of the daemon (a PowerDNS key, ...).
    pub env: Vec<(String, String)>,
    child: Option<Child>,
    pub starts: u32,
    /// Where its stderr goes (`<data_dir>/daemon.log` unless set).
    pub log: PathBuf,
}

impl Daemon {
    pub fn new(data_dir: &Path, sim_latency: f64) -> Daemon {
        Daemon {
            data_dir: data_dir.to_owned(),
            port: free_port(),
            sim_latency,
            backend_args: vec!["--backend".into(), "sim".into()],
            env: Vec::new(),
            child: None,
            starts: 0,
            log: data_dir.join("daemon.log"),
        }
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}{path}", self.port)
    }

    /// Starts the daemon and waits (bounded) until it answers `/readyz`.
    pub fn start(&mut self) -> Result<()> {
        let log = std::fs::OpenOptions::new().create(true).append(true).open(&self.log)?;
        let child = Command::new(binary())
            .arg("serve")
            .args(&self.backend_args)
            .arg("--listen")
            .arg(format!("127.0.0.1:{}", self.port))
            .arg("--data-dir")
            .arg(&self.data_dir)
            .arg("--sim-latency")
            .arg(self.sim_latency.to_string())
            .env("CATALYST_ZERO_OPERATOR_TOKEN", TOKEN)
            .env("RUST_LOG", "warn")
            .envs(self.env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .context("spawn catalyst-zero")?;
        self.child = Some(child);
        self.starts += 1;
        let api = Api::new(self.port);
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if api.ready() {
                return Ok(());
            }
            if Instant::now() > deadline {
                bail!("daemon not ready within 30 s (see {})", self.log.display());
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// The process id while it runs.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// Sends `signal` (`STOP`, `CONT`, `TERM`, ...) with kill(1).
    pub fn signal(&self, signal: &str) {
        let pid = self.pid().expect("the daemon runs");
        let ok = Command::new("kill")
            .args(["-s", signal, &pid.to_string()])
            .status()
            .is_ok_and(|s| s.success());
        assert!(ok, "kill -s {signal} {pid}");
    }

    /// Waits (at most `bound`) for the process to exit; whether it did.
    pub fn wait_exit(&mut self, bound: Duration) -> bool {
        let deadline = Instant::now() + bound;
        while let Some(c) = self.child.as_mut() {
            if c.try_wait().ok().flatten().is_some() {
                self.child = None;
                return true;
            }
            if Instant::now() > deadline {
                return false;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        true
    }

    /// SIGKILL, then reap.
    pub fn kill9(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        self.kill9();
    }
}

/// A tiny synchronous HTTP helper over reqwest (one runtime per call site).
pub struct Api {
    rt: tokio::runtime::Runtime,
    client: ::reqwest::Client,
    base: String,
}

impl Api {
    pub fn new(port: u16) -> Api {
        Api {
            rt: tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap(),
            client: ::reqwest::Client::new(),
            base: format!("http://127.0.0.1:{port}"),
        }
    }

    /// True when `/readyz` answers 200.
    pub fn ready(&self) -> bool {
        self.rt.block_on(async {
            match self
                .client
                .get(format!("{}/readyz", self.base))
                .timeout(Duration::from_secs(2))
                .send()
                .await
            {
                Ok(r) => r.status().is_success(),
                Err(_) => false,
            }
        })
    }

    pub fn set_port(&mut self, port: u16) {
        self.base = format!("http://127.0.0.1:{port}");
    }

    pub fn get(&self, path: &str) -> Result<Value> {
        self.rt.block_on(async {
            let r =
                self.client.get(format!("{}{path}", self.base)).bearer_auth(TOKEN).send().await?;
            let status = r.status();
            let body: Value = r.json().await?;
            if !status.is_success() {
                bail!("GET {path}: {status} {body}");
            }
            Ok(body)
        })
    }

    pub fn delete(&self, path: &str) -> Result<(u16, Value)> {
        self.rt.block_on(async {
            let r = self
                .client
                .delete(format!("{}{path}", self.base))
                .bearer_auth(TOKEN)
                .send()
                .await?;
            let status = r.status().as_u16();
            let body: Value = r.json().await.unwrap_or(Value::Null);
            Ok((status, body))
        })
    }

    pub fn post(&self, path: &str, body: &Value) -> Result<(u16, Value)> {
        self.post_with(path, body, &[])
    }

    pub fn post_with(
        &self,
        path: &str,
        body: &Value,
        headers: &[(&str, &str)],
    ) -> Result<(u16, Value)> {
        self.rt.block_on(async {
            let mut req =
                self.client.post(format!("{}{path}", self.base)).bearer_auth(TOKEN).json(body);
            for (k, v) in headers {
                req = req.header(*k, *v);
            }
            let r = req.send().await?;
            let status = r.status().as_u16();
            let body: Value = r.json().await.unwrap_or(Value::Null);
            Ok((status, body))
        })
    }

    /// The job's status, or `None` while the daemon does not answer.
    pub fn status(&self, job: &str) -> Option<String> {
        self.get(&format!("/v1/jobs/{job}")).ok()?["status"].as_str().map(str::to_owned)
    }

    /// Waits (at most `bound`, polling every 50 ms) until the job's status
    /// is one of `want`, and returns it.
    pub fn wait_status(&self, job: &str, want: &[&str], bound: Duration) -> String {
        let deadline = Instant::now() + bound;
        loop {
            if let Some(s) = self.status(job)
                && want.contains(&s.as_str())
            {
                return s;
            }
            assert!(Instant::now() < deadline, "job {job} not in {want:?} within {bound:?}");
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// The job's events after id `after` (one page; none while the daemon
    /// does not answer).
    pub fn events_after(&self, job: &str, after: i64) -> Vec<Value> {
        self.get(&format!("/v1/jobs/{job}/events?format=json&after={after}"))
            .map(|v| v["events"].as_array().cloned().unwrap_or_default())
            .unwrap_or_default()
    }
}

/// Every file under `dir` whose bytes contain `needle`.
pub fn files_containing(dir: &Path, needle: &[u8]) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_owned()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).into_iter().flatten().flatten() {
            let p = e.path();
            if p.is_dir() {
                stack.push(p);
            } else if let Ok(bytes) = std::fs::read(&p)
                && bytes.windows(needle.len()).any(|w| w == needle)
            {
                out.push(p);
            }
        }
    }
    out
}

/// Cloud objects the sim cloud holds, per kind, from its files (the "remote"
/// side, independent of the daemon).
pub fn sim_cloud_objects(data_dir: &Path) -> BTreeMap<String, Vec<Value>> {
    sim_world_objects(data_dir, "cloud")
}

/// Every record one simulated system keeps, by kind
/// (`<data_dir>/sim/<system>/<kind>/*.json`): `ssh` holds `k3s_nodes`.
pub fn sim_world_objects(data_dir: &Path, system: &str) -> BTreeMap<String, Vec<Value>> {
    let mut out = BTreeMap::new();
    let root = data_dir.join("sim").join(system);
    let Ok(kinds) = std::fs::read_dir(&root) else { return out };
    for k in kinds.flatten() {
        if !k.path().is_dir() {
            continue;
        }
        let mut objs = Vec::new();
        for f in std::fs::read_dir(k.path()).into_iter().flatten().flatten() {
            if f.path().extension().is_some_and(|e| e == "json")
                && let Ok(text) = std::fs::read_to_string(f.path())
                && let Ok(v) = serde_json::from_str::<Value>(&text)
            {
                objs.push(v);
            }
        }
        out.insert(k.file_name().to_string_lossy().into_owned(), objs);
    }
    out
}

/// Every object the sim's Kubernetes holds, in every cluster, as applied
/// (`<data_dir>/sim/kube/<cluster>/*.json`).
pub fn sim_kube_objects(data_dir: &Path) -> Vec<Value> {
    let mut out = Vec::new();
    let root = data_dir.join("sim").join("kube");
    for cluster in std::fs::read_dir(&root).into_iter().flatten().flatten() {
        for f in std::fs::read_dir(cluster.path()).into_iter().flatten().flatten() {
            if f.path().extension().is_some_and(|e| e == "json")
                && let Ok(text) = std::fs::read_to_string(f.path())
                && let Ok(v) = serde_json::from_str::<Value>(&text)
            {
                out.push(v["object"].clone());
            }
        }
    }
    out
}

/// The tofu-compatible CLI on this machine (see `find_cli`).
pub fn tofu_binary() -> Option<PathBuf> {
    cz_adapters::tofu::find_cli()
}
