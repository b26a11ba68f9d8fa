//! A real PowerDNS Authoritative server for tests: its own directory,
//! SQLite database (the packaged gsqlite3 schema, DNSSEC on), API key, and
//! loopback ports for the API/webserver and DNS.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use tokio::sync::OnceCell;

use crate::free_port;
use crate::process::{Tied, spawn_tied};

const PDNS: &str = "/usr/sbin/pdns_server";
const SCHEMA: &str = "/usr/share/pdns-backend-sqlite3/schema/schema.sqlite3.sql";

pub struct Pdns {
    pub dir: tempfile::TempDir,
    pub api_port: u16,
    pub dns_port: u16,
    pub api_key: String,
    child: Option<Tied>,
}

static SHARED: OnceCell<Pdns> = OnceCell::const_new();

impl Pdns {
    /// Whether PowerDNS and its SQLite backend are installed here.
    pub fn available() -> bool {
        Path::new(PDNS).exists() && Path::new(SCHEMA).exists()
    }

    /// The one server of this test binary, started by the first caller.
    /// Tests sharing it use zones of their own.
    pub async fn shared() -> &'static Pdns {
        SHARED
            .get_or_init(|| async {
                let mut p = Pdns::prepare();
                p.start().await;
                p
            })
            .await
    }

    /// Prepares the server without starting it.
    pub fn prepare() -> Pdns {
        let dir = tempfile::tempdir().expect("a temporary directory");
        let db = dir.path().join("pdns.sqlite3");
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
            dir = dir.path().display(),
        );
        std::fs::write(dir.path().join("pdns.conf"), conf).expect("pdns.conf written");
        Pdns { dir, api_port, dns_port, api_key, child: None }
    }

    /// A handle on a server another process started (a kill -9 test's
    /// child): nothing is started or stopped.
    pub fn attach(api_port: u16, dns_port: u16, api_key: String) -> Pdns {
        let dir = tempfile::tempdir().expect("a temporary directory");
        Pdns { dir, api_port, dns_port, api_key, child: None }
    }

    /// Starts it and waits (bounded) until its API answers with the key.
    pub async fn start(&mut self) {
        let config_dir = format!("--config-dir={}", self.dir.path().display());
        self.child = Some(spawn_tied(Path::new(PDNS), &[config_dir], &self.log()));
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
    pub fn dns_addr(&self) -> std::net::SocketAddr {
        std::net::SocketAddr::from(([127, 0, 0, 1], self.dns_port))
    }

    pub fn log(&self) -> PathBuf {
        self.dir.path().join("pdns.log")
    }
}
