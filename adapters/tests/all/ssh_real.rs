//! The real SSH adapter against real OpenSSH `sshd` instances on loopback:
//! host-key pinning, key-only authentication, exit status and both output
//! streams, atomic uploads with modes, timeouts, a changed host key refused,
//! a wrong key refused, a closed port, several hosts in parallel.
//!
//! Each test starts its own `sshd -D` (its own host key, port, authorized
//! keys and `internal-sftp`) in a temp dir. `.ci/run` installs
//! `openssh-server`; without `/usr/sbin/sshd` these tests fail, loudly.

use std::time::Duration;

use cz_testkit::free_port;
use cz_testkit::sshd::{Sshd, user};

use cz_adapters::ssh::SshClient;
use cz_adapters::{Host, ProvisionerKey, SshApi};
use cz_engine::{Cause, StepError};

fn client() -> SshClient {
    SshClient::new(Duration::from_secs(5), Duration::from_secs(60))
}

#[tokio::test]
async fn probe_pins_the_host_key_in_openssh_format() {
    let me = ProvisionerKey::generate("me").unwrap();
    let sshd = Sshd::start(&[&me]);
    let fp = client().probe(&sshd.host()).await.unwrap();
    assert_eq!(fp, sshd.fingerprint());
    assert!(fp.starts_with("SHA256:"));
}

#[tokio::test]
async fn run_returns_status_stdout_and_stderr_even_when_both_are_large() {
    let me = ProvisionerKey::generate("me").unwrap();
    let sshd = Sshd::start(&[&me]);
    let (c, h) = (client(), sshd.host());
    let fp = c.probe(&h).await.unwrap();
    let o = c.run(&h, &fp, &me, "printf out; printf err >&2; exit 3").await.unwrap();
    assert_eq!((o.status, o.stdout.as_str(), o.stderr.as_str()), (3, "out", "err"));
    // 3 MB on each stream: more than a channel window, read together.
    let big = "head -c 3000000 /dev/zero | tr '\\0' a; head -c 3000000 /dev/zero | tr '\\0' b >&2";
    let o = c.run(&h, &fp, &me, big).await.unwrap();
    assert_eq!((o.status, o.stdout.len(), o.stderr.len()), (0, 3_000_000, 3_000_000));
    assert!(o.stdout.bytes().all(|b| b == b'a') && o.stderr.bytes().all(|b| b == b'b'));
}

#[tokio::test]
async fn uploads_are_atomic_create_directories_and_set_the_mode() {
    use std::os::unix::fs::PermissionsExt;
    let me = ProvisionerKey::generate("me").unwrap();
    let sshd = Sshd::start(&[&me]);
    let (c, h) = (client(), sshd.host());
    let fp = c.probe(&h).await.unwrap();
    // The node's paths are rooted at its $CZ_NODE_ROOT (set by its sshd).
    let path = "/etc/rancher/k3s/config.yaml";
    let target = sshd.path(path);
    c.upload(&h, &fp, &me, path, b"token: first\n", 0o600).await.unwrap();
    assert_eq!(std::fs::read(&target).unwrap(), b"token: first\n");
    assert_eq!(std::fs::metadata(&target).unwrap().permissions().mode() & 0o777, 0o600);
    c.upload(&h, &fp, &me, path, b"token: second\n", 0o640).await.unwrap();
    assert_eq!(std::fs::read(&target).unwrap(), b"token: second\n");
    assert_eq!(std::fs::metadata(&target).unwrap().permissions().mode() & 0o777, 0o640);
    let names: Vec<String> = std::fs::read_dir(target.parent().unwrap())
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    assert_eq!(names, vec!["config.yaml".to_owned()], "no temporary file left");
    for bad in ["relative/path", "/etc/$(reboot)", "/etc/a b", "/etc/../x"] {
        let e = c.upload(&h, &fp, &me, bad, b"x", 0o600).await.unwrap_err();
        assert!(matches!(e, StepError::Adapter { cause: Cause::Invalid, .. }), "{bad}: {e}");
    }
    // A large file (more than a channel window) arrives whole.
    let big: Vec<u8> = (0..5_000_000u32).map(|i| (i % 251) as u8).collect();
    c.upload(&h, &fp, &me, "/var/lib/catalyst/artifacts/k3s", &big, 0o755).await.unwrap();
    assert!(std::fs::read(sshd.path("/var/lib/catalyst/artifacts/k3s")).unwrap() == big);
}

#[tokio::test]
async fn a_changed_host_key_is_refused_before_anything_runs() {
    let me = ProvisionerKey::generate("me").unwrap();
    let mut sshd = Sshd::start(&[&me]);
    let (c, h) = (client(), sshd.host());
    let pinned = c.probe(&h).await.unwrap();
    sshd.reinstall();
    let marker = sshd.path("/ran");
    let cmd = format!("touch {}", marker.display());
    let e = c.run(&h, &pinned, &me, &cmd).await.unwrap_err();
    match &e {
        StepError::Adapter { cause: Cause::Conflict, message, .. } => {
            assert!(
                message.contains(&pinned) && message.contains(&sshd.fingerprint()),
                "{message}"
            );
        }
        other => panic!("expected a Conflict, got {other}"),
    }
    assert_eq!(e.class(), cz_engine::ErrorClass::NeedsOperator);
    assert!(!marker.exists(), "the command ran on an unverified host");
    let e = c.upload(&h, &pinned, &me, "/f", b"x", 0o600).await;
    assert!(matches!(e, Err(StepError::Adapter { cause: Cause::Conflict, .. })));
}

#[tokio::test]
async fn a_key_that_is_not_authorized_is_refused_as_unauthorized() {
    let me = ProvisionerKey::generate("me").unwrap();
    let stranger = ProvisionerKey::generate("stranger").unwrap();
    let sshd = Sshd::start(&[&me]);
    let (c, h) = (client(), sshd.host());
    let fp = c.probe(&h).await.unwrap();
    let e = c.run(&h, &fp, &stranger, "true").await.unwrap_err();
    assert!(matches!(e, StepError::Adapter { cause: Cause::Unauthorized, .. }), "{e}");
}

#[tokio::test]
async fn a_host_that_is_not_up_is_a_network_error() {
    let c = client();
    let h =
        Host { name: "down".into(), address: "127.0.0.1".into(), port: free_port(), user: user() };
    let e = c.probe(&h).await.unwrap_err();
    assert!(matches!(e, StepError::Adapter { cause: Cause::Network, .. }), "{e}");
    assert_eq!(e.class(), cz_engine::ErrorClass::Transient);
}

#[tokio::test]
async fn a_command_past_its_bound_times_out() {
    let me = ProvisionerKey::generate("me").unwrap();
    let sshd = Sshd::start(&[&me]);
    let c = SshClient::new(Duration::from_secs(5), Duration::from_secs(1));
    let h = sshd.host();
    let fp = c.probe(&h).await.unwrap();
    let e = c.run(&h, &fp, &me, "sleep 5").await.unwrap_err();
    match &e {
        StepError::Adapter { cause: Cause::Unavailable, message, .. } => {
            assert!(message.contains("timed out"), "{message}")
        }
        other => panic!("expected a timeout, got {other}"),
    }
}

#[tokio::test]
async fn several_hosts_are_driven_in_parallel() {
    let me = ProvisionerKey::generate("me").unwrap();
    let nodes: Vec<Sshd> = (0..3).map(|_| Sshd::start(&[&me])).collect();
    let c = client();
    let runs = nodes.iter().map(|n| {
        let (c, h, me) = (c.clone(), n.host(), me.clone());
        async move {
            let fp = c.probe(&h).await?;
            c.run(&h, &fp, &me, &format!("sleep 0.3; echo {}", h.port)).await
        }
    });
    let outs = futures::future::join_all(runs).await;
    for (n, o) in nodes.iter().zip(outs) {
        assert_eq!(o.unwrap().stdout.trim(), n.port.to_string());
    }
}
