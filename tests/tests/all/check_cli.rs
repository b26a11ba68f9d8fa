//! `catalyst-zero check --config FILE`, the binary, against real systems:
//! the tofu/terraform CLI, a stub K3s release in an air-gap directory, a
//! real `pdns_server`, and the hcloud fake. One line per system; exit 0
//! when all hold, 1 with each broken system named when not.

use std::process::Command;

use cz_sim::wire::hcloud::{self as fake, DEFAULT_TOKEN, FakeConfig};
use cz_testkit::daemon::{binary, tofu_binary};
use cz_testkit::pdns::Pdns;

fn run_check(config: &std::path::Path, token: &std::path::Path, key: &str) -> (i32, String) {
    let out = Command::new(binary())
        .args(["check", "--config"])
        .arg(config)
        .arg("--cloud-token-file")
        .arg(token)
        .env("CATALYST_ZERO_POWERDNS_API_KEY", key)
        .output()
        .expect("the binary runs");
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    (out.status.code().unwrap_or(-1), text)
}

fn line<'a>(report: &'a str, system: &str) -> &'a str {
    report
        .lines()
        .find(|l| l.starts_with(system))
        .unwrap_or_else(|| panic!("no {system}: {report}"))
}

#[test]
fn check_names_every_system_and_each_that_fails() {
    let Some(tofu) = tofu_binary() else {
        if std::env::var("CZ_ALLOW_NO_TOFU").as_deref() == Ok("1") {
            cz_testkit::skip("check_cli", "no tofu/terraform binary on this machine");
            return;
        }
        panic!("NO TOFU/TERRAFORM BINARY: install one or set CZ_ALLOW_NO_TOFU=1 to skip loudly");
    };
    assert!(Pdns::available(), "PowerDNS with the gsqlite3 backend is needed (see .ci/run)");
    let rt = tokio::runtime::Runtime::new().unwrap();
    let mut pdns = Pdns::prepare();
    rt.block_on(pdns.start());
    let writable = rt.block_on(fake::start(FakeConfig::default()));
    let read_only =
        rt.block_on(fake::start(FakeConfig { read_only: true, ..FakeConfig::default() }));
    let dir = tempfile::tempdir().unwrap();
    let artifacts = crate::cluster_sshd::artifact_dir(dir.path());
    let token = dir.path().join("token");
    std::fs::write(&token, DEFAULT_TOKEN).unwrap();
    let templates = concat!(env!("CARGO_MANIFEST_DIR"), "/../cloud-templates");
    let write = |name: &str, api: &str, pdns_url: &str| {
        let f = dir.path().join(name);
        std::fs::write(
            &f,
            format!(
                "backend = \"hetzner\"\n[hetzner]\napi_url = \"{api}\"\ntofu_binary = \"{}\"\n\
                 module = \"offline\"\ntemplates_dir = \"{templates}\"\nartifacts_dir = \"{}\"\n\
                 [powerdns]\napi_url = \"{pdns_url}\"\ndns_address = \"127.0.0.1:{}\"\n\
                 timeout_secs = 3\n",
                tofu.display(),
                artifacts.display(),
                pdns.dns_port
            ),
        )
        .unwrap();
        f
    };

    let good = write("good.toml", &writable.base_url(), &pdns.url());
    let (code, report) = run_check(&good, &token, &pdns.api_key);
    assert_eq!(code, 0, "{report}");
    for system in ["config", "tofu", "k3s", "powerdns", "cloud"] {
        assert!(line(&report, system).contains(" ok "), "{system}: {report}");
    }
    assert!(line(&report, "cloud").contains("may write"), "{report}");
    assert!(line(&report, "k3s").contains("match SHA256SUMS"), "{report}");
    assert!(line(&report, "registrars").contains("skipped"), "{report}");
    assert!(!report.contains(DEFAULT_TOKEN) && !report.contains(&pdns.api_key), "{report}");

    // A read-only token, a replaced installer, a PowerDNS that is not there.
    std::fs::write(artifacts.join("install.sh"), "#!/bin/sh\necho replaced\n").unwrap();
    let gone = format!("http://127.0.0.1:{}", cz_testkit::free_port());
    let bad = write("bad.toml", &read_only.base_url(), &gone);
    let (code, report) = run_check(&bad, &token, &pdns.api_key);
    assert_eq!(code, 1, "{report}");
    assert!(line(&report, "tofu").contains(" ok "), "{report}");
    let k3s = line(&report, "k3s");
    assert!(k3s.contains("FAIL") && k3s.contains("install.sh"), "{report}");
    assert!(line(&report, "powerdns").contains("FAIL"), "{report}");
    let cloud = line(&report, "cloud");
    assert!(cloud.contains("FAIL") && cloud.contains("read-only"), "{report}");
    eprintln!("{report}");
}
