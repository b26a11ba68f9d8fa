//! The hcloud fake held to Hetzner's own client: `hcloud` 2.27 (PyPI),
//! driven by `tests/hcloud-client/contract.py`, creates, reads, lists
//! (label selectors, pagination), relabels, waits on and deletes every
//! kind a Sovereign creates, and provokes the errors we classify. Every
//! answer must parse in the client's own models. A 429 (with `Retry-After`
//! and the rate-limit headers) is answered first: the client must wait
//! and carry on. `.ci/run` installs the client and sets
//! `CZ_HCLOUD_PYTHON`.

use std::path::PathBuf;
use std::time::Duration;

use cz_sim::wire::hcloud::{self as fake, DEFAULT_TOKEN, FakeConfig};
use serde_json::Value;

/// A Python with `hcloud` importable: `$CZ_HCLOUD_PYTHON`, else `python3`.
fn python() -> Option<PathBuf> {
    let p = std::env::var_os("CZ_HCLOUD_PYTHON")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("python3"));
    let ok = std::process::Command::new(&p)
        .args(["-c", "import hcloud; assert hcloud.__version__.startswith('2.')"])
        .output()
        .is_ok_and(|o| o.status.success());
    ok.then_some(p)
}

#[test]
fn hetzners_own_client_parses_every_answer_of_the_fake() {
    let Some(py) = python() else {
        if std::env::var("CZ_ALLOW_NO_HCLOUD").as_deref() == Ok("1") {
            cz_testkit::skip("hcloud_client", "no Python with the hcloud package");
            return;
        }
        panic!(
            "NO hcloud PYTHON CLIENT: set CZ_HCLOUD_PYTHON (see .ci/run) or CZ_ALLOW_NO_HCLOUD=1"
        );
    };
    let rt = tokio::runtime::Runtime::new().unwrap();
    let handle = rt.block_on(fake::start(FakeConfig {
        create_delay: Duration::ZERO,
        retry_after_s: 1,
        ..FakeConfig::default()
    }));
    handle.inject_429(1);
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/hcloud-client/contract.py");
    let out = std::process::Command::new(&py)
        .args(["-W", "ignore", script, &format!("{}/v1", handle.base_url()), DEFAULT_TOKEN])
        .output()
        .expect("python runs");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "the client failed against the fake:\n{stdout}\n{stderr}");
    let summary: Value = serde_json::from_str(stdout.lines().last().unwrap_or_default())
        .unwrap_or_else(|e| panic!("no summary ({e}):\n{stdout}"));
    assert_eq!(summary["ok"], true);
    let calls = summary["calls"].as_array().unwrap();
    for kind in
        ["ssh_keys", "networks", "placement_groups", "servers", "firewalls", "load_balancers"]
    {
        for what in ["get", "list paginated", "list selectors", "update labels", "delete"] {
            let want = format!("{kind} {what}");
            assert!(calls.iter().any(|c| c == &want), "never checked: {want}");
        }
    }
    assert!(calls.iter().any(|c| c == "server power actions"), "never checked: power actions");
    // The 429 came first, and the client went on after it.
    let log = handle.requests();
    assert_eq!(log.first().map(|r| r.status), Some(429), "{:?}", log.first());
    assert!(log.iter().skip(1).all(|r| r.status != 429));
    eprintln!("hcloud 2.27 against the fake: {} requests, {} checks", log.len(), calls.len());
}
