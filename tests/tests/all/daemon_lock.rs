//! One daemon per data directory, through the real binary: a second
//! `serve` on a held data directory refuses to start and names the
//! holder's pid and the lock's path, while the first one's job runs on to
//! `succeeded`; once the holder is killed with
//! SIGKILL (its lock file left behind), the next start succeeds.

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use cz_testkit::daemon::{Api, Daemon, TOKEN, binary};
use cz_testkit::requests::{age_recipient, sample_body};

#[test]
fn a_second_daemon_on_a_held_data_dir_refuses_and_a_kill9_frees_it() {
    let dir = tempfile::tempdir().unwrap();
    let mut first = Daemon::new(dir.path(), 0.02);
    first.start().unwrap();
    let api = Api::new(first.port);
    let body = sample_body("locked", 1, 1, &"s".repeat(64), &age_recipient());
    let (code, resp) = api.post("/v1/sovereigns", &body).unwrap();
    assert_eq!(code, 202, "{resp}");
    let job = resp["job_id"].as_str().unwrap().to_owned();
    let holder = std::fs::read_to_string(dir.path().join("daemon.lock")).unwrap();
    let pid = holder.lines().next().unwrap().strip_prefix("pid ").unwrap().to_owned();

    let mut second = Command::new(binary())
        .args(["serve", "--backend", "sim", "--listen"])
        .arg(format!("127.0.0.1:{}", cz_testkit::free_port()))
        .arg("--data-dir")
        .arg(dir.path())
        .env("CATALYST_ZERO_OPERATOR_TOKEN", TOKEN)
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    let status = loop {
        if let Some(s) = second.try_wait().unwrap() {
            break s;
        }
        assert!(Instant::now() < deadline, "the second daemon did not refuse within 30 s");
        std::thread::sleep(Duration::from_millis(20));
    };
    let mut err = String::new();
    std::io::Read::read_to_string(&mut second.stderr.take().unwrap(), &mut err).unwrap();
    assert!(!status.success(), "the second daemon started: {err}");
    assert!(err.contains(&format!("pid {pid}")), "the holder's pid is not named: {err}");
    assert!(err.contains("daemon.lock"), "the lock's path is not named: {err}");

    // The first daemon's job went on undisturbed.
    assert_eq!(
        api.wait_status(&job, &["succeeded", "failed", "paused"], Duration::from_secs(120)),
        "succeeded"
    );

    // SIGKILL leaves the file but not the lock: the next start succeeds.
    first.kill9();
    assert!(dir.path().join("daemon.lock").exists());
    first.port = cz_testkit::free_port();
    first.start().unwrap();
}
