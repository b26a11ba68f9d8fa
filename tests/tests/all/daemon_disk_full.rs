//! A full disk pauses a job and never hangs it, through the real binary:
//! the daemon's data directory is a small tmpfs, filled while a job runs.
//! The job ends `paused` with a classified storage error and its runbook;
//! the daemon keeps answering reads; the database passes
//! `PRAGMA integrity_check`. Once the space is freed, `resume` completes
//! the job. Skipped, loudly, where mounting a tmpfs is not permitted.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use cz_testkit::daemon::{Api, Daemon};
use cz_testkit::requests::{age_recipient, sample_body};
use serde_json::Value;

/// Unmounts (lazily: the killed daemon's files may still be open) on drop.
struct Mounted(PathBuf);

impl Drop for Mounted {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.0).status();
    }
}

fn mount_tmpfs(at: &Path, size: &str) -> Option<Mounted> {
    let ok = Command::new("mount")
        .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
        .arg(at)
        .stderr(std::process::Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    ok.then(|| Mounted(at.to_owned()))
}

/// Writes `path` until the file system refuses: the disk is full.
fn fill(path: &Path) -> u64 {
    let mut f = std::fs::File::create(path).unwrap();
    let chunk = vec![0xA5u8; 256 << 10];
    let mut n = 0u64;
    while f.write_all(&chunk).and_then(|()| f.flush()).is_ok() {
        n += chunk.len() as u64;
    }
    // The last partial chunks, down to the byte.
    while f.write_all(&[0]).is_ok() {
        n += 1;
    }
    n
}

fn wait_for(api: &Api, job: &str, want: &[&str], bound: Duration, log: &Path) -> Value {
    let deadline = Instant::now() + bound;
    loop {
        let detail = api.get(&format!("/v1/jobs/{job}")).unwrap_or_default();
        if detail["status"].as_str().is_some_and(|s| want.contains(&s)) {
            return detail;
        }
        if Instant::now() > deadline {
            let log = std::fs::read_to_string(log).unwrap_or_default();
            let tail: Vec<&str> = log.lines().rev().take(40).collect();
            panic!(
                "job {job} not in {want:?} within {bound:?}: {detail}\n--- daemon log (last lines, newest first)\n{}",
                tail.join("\n")
            );
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn a_full_disk_pauses_the_job_and_resume_completes_it_once_space_is_back() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    std::fs::create_dir_all(&data).unwrap();
    let Some(_mounted) = mount_tmpfs(&data, "48m") else {
        cz_testkit::skip("daemon_disk_full", "mounting a tmpfs is not permitted on this machine");
        return;
    };
    let mut d = Daemon::new(&data, 0.05);
    // Its log on the disk that fills, too: the worst case (a log line
    // that cannot be written must never stop the daemon).
    d.start().unwrap();
    let api = Api::new(d.port);
    assert!(data.join("catalyst-zero.reserve").exists(), "no reserve held back");
    let body = sample_body("full", 3, 2, &"s".repeat(64), &age_recipient());
    let (code, resp) = api.post("/v1/sovereigns", &body).unwrap();
    assert_eq!(code, 202, "{resp}");
    let job = resp["job_id"].as_str().unwrap().to_owned();
    // Well into the run (the cluster phase), the disk fills up.
    let deadline = Instant::now() + Duration::from_secs(120);
    while api.events_after(&job, 60).is_empty() {
        assert!(Instant::now() < deadline, "the job made no progress");
        std::thread::sleep(Duration::from_millis(20));
    }
    let filler = data.join("filler");
    let filled = fill(&filler);
    eprintln!("filled {} MiB", filled >> 20);

    let log = data.join("daemon.log");
    let detail =
        wait_for(&api, &job, &["paused", "failed", "succeeded"], Duration::from_secs(120), &log);
    assert_eq!(detail["status"], "paused", "{detail}");
    let error = &detail["pause"]["error"];
    assert_eq!(error["fault"], "disk-full", "{detail}");
    assert_eq!(error["class"], "needs-operator", "{detail}");
    assert_eq!(error["runbook"], "runbooks/needs-operator-storage.md", "{detail}");
    // Reads go on: the job, its events.
    assert!(!api.events_after(&job, 0).is_empty());
    // Nothing half-written.
    let out = Command::new("sqlite3")
        .arg(data.join("catalyst-zero.db"))
        .arg("PRAGMA integrity_check;")
        .output()
        .expect("the sqlite3 CLI");
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "ok", "{out:?}");

    // Space back, resume, done.
    std::fs::remove_file(&filler).unwrap();
    let (code, resp) = api.post(&format!("/v1/jobs/{job}/resume"), &Value::Null).unwrap();
    assert_eq!(code, 200, "{resp}");
    let detail =
        wait_for(&api, &job, &["succeeded", "failed", "paused"], Duration::from_secs(300), &log);
    assert_eq!(detail["status"], "succeeded", "{detail}");
    assert!(data.join("catalyst-zero.reserve").exists(), "the reserve was not held back again");
    drop(d);
}
