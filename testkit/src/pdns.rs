//! A real PowerDNS Authoritative server for tests: its own directory,
//! SQLite database (the packaged gsqlite3 schema, DNSSEC on), API key, and
//! loopback ports for the API/webserver and DNS.
//!
//! A test that only needs zones of its own uses the test binary's shared
//! server ([`Pdns::shared`]); one that needs a second server standing for
//! another party (the world's resolvers beside our authoritative server)
//! asks for it by role ([`Pdns::shared_as`]). A test that stops or starts
//! its server, or must see every zone on it as its own, starts a private
//! one ([`Pdns::prepare`], [`Pdns::start`]).
//!
//! Tests sharing a server write to one SQLite database: a write that races
//! another one can be refused (PowerDNS answers 500, "database is
//! locked"), which the adapter reports as `Unavailable` and the engine
//! retries as transient; a test's own calls retry through
//! [`while_busy`].

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use cz_adapters::dns::PowerDns;
use cz_engine::{Cause, StepError};
use cz_state::SecretString;
use tokio::sync::OnceCell;

use crate::free_port;
use crate::process::{Tied, spawn_tied, spawn_tied_removing};

const PDNS: &str = "/usr/sbin/pdns_server";
const SCHEMA: &str = "/usr/share/pdns-backend-sqlite3/schema/schema.sqlite3.sql";

pub struct Pdns {
    /// Its configuration, database and log (none for an attached handle).
    pub dir: PathBuf,
    _tmp: Option<tempfile::TempDir>,
    pub api_port: u16,
    pub dns_port: u16,
    pub api_key: String,
    child: Option<Tied>,
}

/// The shared servers of this test binary, by role.
static SHARED: Mutex<BTreeMap<&'static str, &'static OnceCell<Pdns>>> = Mutex::new(BTreeMap::new());

impl Pdns {
    /// Whether PowerDNS and its SQLite backend are installed here.
    pub fn available() -> bool {
        Path::new(PDNS).exists() && Path::new(SCHEMA).exists()
    }

    /// The one server of this test binary, started by the first caller.
    /// Tests sharing it use zones of their own.
    pub async fn shared() -> &'static Pdns {
        Self::shared_as("shared").await
    }

    /// The one server of this test binary in `role` (say, `world`: the
    /// resolvers the public sees, beside our own server), started by the
    /// first caller. Tests sharing it use zones of their own.
    pub async fn shared_as(role: &'static str) -> &'static Pdns {
        let cell = *SHARED
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .entry(role)
            .or_insert_with(|| Box::leak(Box::new(OnceCell::new())));
        cell.get_or_init(|| async {
            let mut p = Pdns::prepare();
            // Its `TempDir` lives in a static, whose destructor never runs:
            // the directory goes when the server does.
            p.launch(true).await;
            p
        })
        .await
    }

    /// Prepares the server without starting it.
    pub fn prepare() -> Pdns {
        let tmp = tempfile::tempdir().expect("a temporary directory");
        let dir = tmp.path().to_owned();
        let db = dir.join("pdns.sqlite3");
        let out = Command::new("sqlite3")
            .arg(&db)
            .stdin(std::fs::File::open(SCHEMA).expect("the gsqlite3 schema"))
            .output()
            .expect("sqlite3");
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        let api_port = free_port();
        let dns_port = free_port();
        let api_key = format!("{:032x}", rand::random::<u128>());
        let conf = format!(
            "launch=gsqlite3\ngsqlite3-database={db}\ngsqlite3-dnssec=yes\napi=yes\napi-key={api_key}\nwebserver=yes\nwebserver-address=127.0.0.1\nwebserver-port={api_port}\nwebserver-allow-from=127.0.0.0/8\nlocal-address=127.0.0.1\nlocal-port={dns_port}\nsocket-dir={dir}\nguardian=no\ndaemon=no\ndefault-soa-content=ns1.@ hostmaster.@ 0 10800 3600 604800 3600\n",
            db = db.display(),
            dir = dir.display(),
        );
        std::fs::write(dir.join("pdns.conf"), conf).expect("pdns.conf written");
        Pdns { dir, _tmp: Some(tmp), api_port, dns_port, api_key, child: None }
    }

    /// A handle on a server another process started (a kill -9 test's
    /// child): nothing is started or stopped.
    pub fn attach(api_port: u16, dns_port: u16, api_key: String) -> Pdns {
        Pdns { dir: PathBuf::new(), _tmp: None, api_port, dns_port, api_key, child: None }
    }

    /// Starts it and waits (bounded) until its API answers with the key.
    pub async fn start(&mut self) {
        self.launch(false).await;
    }

    /// [`Self::start`]; `remove_dir`: its directory is removed when the
    /// server exits (a shared server's; a private one may start again).
    async fn launch(&mut self, remove_dir: bool) {
        let config_dir = format!("--config-dir={}", self.dir.display());
        let child = if remove_dir {
            spawn_tied_removing(Path::new(PDNS), &[config_dir], &self.log(), &self.dir)
        } else {
            spawn_tied(Path::new(PDNS), &[config_dir], &self.log())
        };
        self.child = Some(child);
        let http = reqwest::Client::new();
        let started = Instant::now();
        loop {
            let r = http
                .get(format!("{}/api/v1/servers", self.url()))
                .header("X-API-Key", &self.api_key)
                .send()
                .await;
            if r.is_ok_and(|r| r.status().is_success()) {
                return;
            }
            assert!(
                started.elapsed() < Duration::from_secs(15),
                "PowerDNS did not come up: {}",
                std::fs::read_to_string(self.log()).unwrap_or_default()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Stops it (a restart test starts it again with [`Self::start`]).
    pub fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            c.stop();
        }
    }

    /// The webserver's base URL (the API is under `/api/v1`).
    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.api_port)
    }

    /// Its DNS address.
    pub fn dns_addr(&self) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], self.dns_port))
    }

    /// The real PowerDNS adapter on this server (API with its key, DNS
    /// queries to it), with a 2 s timeout.
    pub fn adapter(&self) -> PowerDns {
        let key = SecretString::new(self.api_key.clone());
        PowerDns::new(&self.url(), "localhost", key, self.dns_addr(), Duration::from_secs(2))
            .expect("the PowerDNS adapter builds")
    }

    /// `dig +short +norecurse` against this server, sorted: an answer
    /// independent of our code.
    pub fn dig(&self, name: &str, rtype: &str) -> Vec<String> {
        let port = self.dns_port.to_string();
        let out = Command::new("dig")
            .args(["@127.0.0.1", "-p", &port, "+short", "+norecurse", name, rtype])
            .output()
            .expect("dig (dnsutils) runs");
        assert!(out.status.success(), "dig: {}", String::from_utf8_lossy(&out.stderr));
        let mut v: Vec<String> =
            String::from_utf8_lossy(&out.stdout).lines().map(str::to_owned).collect();
        v.sort();
        v
    }

    pub fn log(&self) -> PathBuf {
        self.dir.join("pdns.log")
    }
}

/// Runs `op` again (every 20 ms, for at most 10 s) while PowerDNS refuses
/// it as unavailable: a write racing another test's on a shared server.
pub async fn while_busy<T, F, Fut>(mut op: F) -> Result<T, StepError>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<T, StepError>>,
{
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        match op().await {
            Err(StepError::Adapter { cause: Cause::Unavailable, .. })
                if Instant::now() < deadline =>
            {
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            other => return other,
        }
    }
}
