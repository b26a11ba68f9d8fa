//! The real servers of the test kit, each started once and checked.

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use cz_testkit::bao::Bao;
use cz_testkit::pdns::Pdns;
use cz_testkit::postgres::{self, Postgres};
use cz_testkit::process::{spawn_tied, spawn_tied_removing};
use cz_testkit::skip;

/// A fresh OpenBao answers uninitialized and sealed, as a new pod does.
#[tokio::test]
async fn openbao_starts_uninitialized_and_sealed() {
    if !Bao::available() && skip("openbao", "no bao binary (set CZ_BAO_BIN; .ci/run installs it)") {
        return;
    }
    let bao = Bao::shared().await;
    let status = bao.seal_status().await.expect("sys/seal-status answers");
    assert_eq!(status["initialized"], false, "{status}");
    assert_eq!(status["sealed"], true, "{status}");
    assert!(bao.url().starts_with("http://127.0.0.1:"));
}

/// PostgreSQL takes connections and a test gets a database of its own.
#[tokio::test]
async fn postgres_starts_and_serves_a_database_of_its_own() {
    if !Postgres::available() && skip("postgres", "no PostgreSQL server binaries") {
        return;
    }
    let pg = Postgres::shared().await;
    pg.create_db("kit_check");
    let psql = postgres::bin_dir().unwrap().join("psql");
    let out = Command::new(psql)
        .args(["-h", "127.0.0.1", "-p", &pg.port.to_string(), "-U", "postgres", "-d"])
        .args(["kit_check", "-tAc", "select current_database()"])
        .output()
        .expect("psql runs");
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "kit_check");
}

/// The shared PowerDNS answers its API with its key, once per binary.
#[tokio::test]
async fn powerdns_is_shared_by_the_binary() {
    if !Pdns::available() && skip("pdns", "no pdns_server with the gsqlite3 backend") {
        return;
    }
    let a = Pdns::shared().await;
    let b = Pdns::shared().await;
    assert_eq!(a.api_port, b.api_port, "one server");
    let r = reqwest::Client::new()
        .get(format!("{}/api/v1/servers/localhost", a.url()))
        .header("X-API-Key", &a.api_key)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
}

fn alive(pid: &str) -> bool {
    Path::new(&format!("/proc/{pid}")).exists()
        && !std::fs::read_to_string(format!("/proc/{pid}/stat"))
            .unwrap_or_default()
            .contains(") Z ")
}

/// A tied process stops when asked, and does not outlive its parent.
#[tokio::test]
async fn a_tied_process_stops_with_its_owner() {
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("log");
    // Asked to stop, right after the program starts: a stop that lands
    // before the shell is ready must not orphan it. Several rounds, since
    // the window is a few microseconds wide.
    for round in 0..10 {
        let mut t = spawn_tied(Path::new("/bin/sleep"), &["1000"], &log);
        let pid = find_child(t.id());
        t.stop();
        assert!(!alive(&pid), "round {round}: sleep {pid} outlived stop()");
    }
    // Its owner gone: a child test process ties a sleep and is killed
    // with SIGKILL (no destructor runs); the sleep must go.
    let pid_file = dir.path().join("pid");
    let mut owner = Command::new(std::env::current_exe().unwrap())
        .args(["servers::tied_owner", "--exact", "--nocapture", "--test-threads", "1"])
        .env("CZ_TIED_OWNER_PID_FILE", &pid_file)
        .stdout(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    let sleep_pid = loop {
        if let Some(p) = std::fs::read_to_string(&pid_file).ok().filter(|p| p.ends_with('\n')) {
            break p.trim().to_owned();
        }
        assert!(Instant::now() < deadline, "the owner did not tie its sleep");
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    assert!(alive(&sleep_pid));
    owner.kill().unwrap(); // SIGKILL
    owner.wait().unwrap();
    let deadline = Instant::now() + Duration::from_secs(5);
    while alive(&sleep_pid) {
        assert!(Instant::now() < deadline, "the tied sleep outlived its owner");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// A shared server's directory goes when the server does, asked to stop
/// or not: its `TempDir` lives in a static and is never dropped.
#[tokio::test]
async fn a_removing_tied_process_takes_its_directory_along() {
    for stop in [true, false] {
        let dir = tempfile::tempdir().unwrap().keep();
        std::fs::write(dir.join("data"), "x").unwrap();
        let log = dir.join("log");
        let mut t = spawn_tied_removing(Path::new("/bin/sleep"), &["1000"], &log, &dir);
        let inner = find_child(t.id());
        // Signalled by this test, the program must be `sleep` already: a
        // SIGTERM to the shell's child before its `exec` is lost (see
        // `STOP_CHILD`), so the directory would outlive the kill.
        let pid = find_program(inner.parse().unwrap(), "sleep");
        if stop {
            t.stop();
        } else {
            // The program ends on its own: the directory still goes.
            assert!(Command::new("kill").arg(&pid).status().unwrap().success());
            let deadline = Instant::now() + Duration::from_secs(5);
            while dir.exists() {
                assert!(Instant::now() < deadline, "{} outlived its program", dir.display());
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            t.stop();
        }
        assert!(!alive(&pid), "sleep {pid} outlived stop()");
        assert!(!dir.exists(), "{} outlived its server", dir.display());
    }
}

/// The owner half of the test above: ties a sleep, writes its pid, and
/// waits to be killed. Returns at once unless the parent test runs it.
#[test]
fn tied_owner() {
    let Some(file) = std::env::var_os("CZ_TIED_OWNER_PID_FILE") else { return };
    let file = std::path::PathBuf::from(file);
    let t = spawn_tied(Path::new("/bin/sleep"), &["1000"], &file.with_extension("log"));
    std::fs::write(&file, format!("{}\n", find_child(t.id()))).unwrap();
    std::thread::sleep(Duration::from_secs(60));
}

/// The pid of `shell`'s child once it runs `program` (it has `exec`ed).
fn find_program(shell: u32, program: &str) -> String {
    let deadline = Instant::now() + Duration::from_secs(5);
    let pid = find_child(shell);
    loop {
        let exe = std::fs::read_link(format!("/proc/{pid}/exe")).unwrap_or_default();
        if exe.file_name().is_some_and(|n| n == program) {
            return pid;
        }
        assert!(Instant::now() < deadline, "{pid} never ran {program}: {}", exe.display());
        std::thread::yield_now();
    }
}

/// The pid of `shell`'s child (the tied program).
fn find_child(shell: u32) -> String {
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let children = std::fs::read_to_string(format!("/proc/{shell}/task/{shell}/children"))
            .unwrap_or_default();
        if let Some(pid) = children.split_whitespace().next() {
            return pid.to_owned();
        }
        assert!(Instant::now() < deadline, "no child under {shell}");
        std::thread::yield_now();
    }
}
