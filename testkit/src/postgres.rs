//! A real PostgreSQL server for tests: `initdb` into its own directory,
//! `postgres` on a loopback port with trust authentication for its
//! superuser. PostgreSQL refuses to run as root, so under root the cluster
//! belongs to, and runs as, the unprivileged `nobody` (via `runuser`).

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use tokio::sync::OnceCell;

use crate::free_port;
use crate::process::{Tied, spawn_tied, spawn_tied_removing};

pub struct Postgres {
    pub dir: tempfile::TempDir,
    pub port: u16,
    child: Option<Tied>,
}

static SHARED: OnceCell<Postgres> = OnceCell::const_new();

/// The server binaries' directory (`/usr/lib/postgresql/<major>/bin`, the
/// newest), or `$CZ_PG_BIN`.
pub fn bin_dir() -> Option<PathBuf> {
    if let Some(p) = std::env::var_os("CZ_PG_BIN").map(PathBuf::from) {
        return p.join("initdb").exists().then_some(p);
    }
    let mut dirs: Vec<PathBuf> = std::fs::read_dir("/usr/lib/postgresql")
        .ok()?
        .flatten()
        .map(|e| e.path().join("bin"))
        .filter(|b| b.join("initdb").exists())
        .collect();
    dirs.sort_by_key(|d| {
        d.parent()
            .and_then(|p| p.file_name())
            .and_then(|n| n.to_str())
            .and_then(|n| n.parse::<u32>().ok())
            .unwrap_or(0)
    });
    dirs.pop()
}

fn is_root() -> bool {
    Command::new("id").arg("-u").output().is_ok_and(|o| o.stdout.starts_with(b"0\n"))
}

/// `program args` as the cluster's owner.
fn as_owner(program: &Path) -> (PathBuf, Vec<String>) {
    if is_root() {
        let runuser = PathBuf::from("/usr/sbin/runuser");
        (runuser, vec!["-u".into(), "nobody".into(), "--".into(), program.display().to_string()])
    } else {
        (program.to_owned(), Vec::new())
    }
}

impl Postgres {
    pub fn available() -> bool {
        bin_dir().is_some()
    }

    /// Whether `test` can run on a real server: `false` (said loudly) where
    /// PostgreSQL is not installed, and a failure under `CI=true`, which
    /// must install it.
    pub fn usable(test: &str) -> bool {
        if Postgres::available() {
            return true;
        }
        assert!(
            std::env::var("CI").as_deref() != Ok("true"),
            "CI must run {test} on a real PostgreSQL: install postgresql"
        );
        !crate::skip(test, "no PostgreSQL server binaries (initdb)")
    }

    /// The one server of this test binary, started by the first caller.
    /// Tests sharing it use databases of their own ([`Self::create_db`]).
    pub async fn shared() -> &'static Postgres {
        // Its `TempDir` lives in a static, whose destructor never runs:
        // the directory goes when the server does.
        SHARED.get_or_init(|| Postgres::launch(true)).await
    }

    /// Initializes a cluster and starts it; waits (bounded) until it takes
    /// connections.
    pub async fn start() -> Postgres {
        Postgres::launch(false).await
    }

    /// [`Self::start`]; `remove_dir`: the directory is removed when the
    /// server exits (the shared server's).
    async fn launch(remove_dir: bool) -> Postgres {
        let bin = bin_dir().expect("no PostgreSQL server binaries (initdb)");
        let dir = tempfile::tempdir().expect("a temporary directory");
        let data = dir.path().join("data");
        if is_root() {
            let ok = Command::new("chown")
                .args(["-R", "nobody"])
                .arg(dir.path())
                .status()
                .is_ok_and(|s| s.success());
            assert!(ok, "cannot give {} to nobody", dir.path().display());
        }
        let (initdb, mut args) = as_owner(&bin.join("initdb"));
        args.extend(["-D".into(), data.display().to_string()]);
        args.extend(["-U".into(), "postgres".into(), "--auth=trust".into(), "-E".into()]);
        args.extend(["UTF8".into(), "--no-sync".into()]);
        let out = Command::new(&initdb).args(&args).output().expect("initdb runs");
        assert!(out.status.success(), "initdb: {}", String::from_utf8_lossy(&out.stderr));
        let port = free_port();
        let (postgres, mut args) = as_owner(&bin.join("postgres"));
        args.extend(["-D".into(), data.display().to_string(), "-p".into(), port.to_string()]);
        args.extend(["-c".into(), "listen_addresses=127.0.0.1".into()]);
        args.extend(["-c".into(), format!("unix_socket_directories={}", dir.path().display())]);
        args.extend(["-c".into(), "fsync=off".into()]);
        let log = dir.path().join("postgres.log");
        let child = if remove_dir {
            spawn_tied_removing(&postgres, &args, &log, dir.path())
        } else {
            spawn_tied(&postgres, &args, &log)
        };
        let pg = Postgres { dir, port, child: Some(child) };
        let started = Instant::now();
        while !pg.accepts() {
            assert!(
                started.elapsed() < Duration::from_secs(30),
                "PostgreSQL did not come up: {}",
                std::fs::read_to_string(&log).unwrap_or_default()
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        pg
    }

    /// Whether it answers `pg_isready`.
    fn accepts(&self) -> bool {
        let Some(bin) = bin_dir() else { return false };
        Command::new(bin.join("pg_isready"))
            .args(["-h", "127.0.0.1", "-p", &self.port.to_string(), "-U", "postgres"])
            .output()
            .is_ok_and(|o| o.status.success())
    }

    /// A connection URL for database `db`.
    pub fn url(&self, db: &str) -> String {
        format!("postgres://postgres@127.0.0.1:{}/{db}", self.port)
    }

    /// Creates database `db` (a test's own, on a shared server).
    pub fn create_db(&self, db: &str) {
        let bin = bin_dir().expect("PostgreSQL binaries");
        let out = Command::new(bin.join("createdb"))
            .args(["-h", "127.0.0.1", "-p", &self.port.to_string(), "-U", "postgres", db])
            .output()
            .expect("createdb runs");
        assert!(out.status.success(), "createdb {db}: {}", String::from_utf8_lossy(&out.stderr));
    }

    /// Stops it.
    pub fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            c.stop();
        }
    }
}
