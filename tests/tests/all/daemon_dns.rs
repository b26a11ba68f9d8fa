//! The daemon with a real PowerDNS: `serve --backend sim` with a
//! `[powerdns]` section (the key from `CATALYST_ZERO_POWERDNS_API_KEY`)
//! provisions a simulated Sovereign whose zone, delegation and records are
//! on a real `pdns_server`, checked with `dig`; destroying the Sovereign
//! removes them.

use std::time::{Duration, Instant};

use cz_phases::request::Registrar;
use cz_sim::wire::registrars::FakeRegistrars;
use cz_testkit::daemon::{Api, Daemon, files_containing};
use cz_testkit::pdns::Pdns;
use cz_testkit::requests::request;

/// How long a job may take through the daemon.
const JOB_BOUND: Duration = Duration::from_secs(300);
const ENDED: &[&str] = &["succeeded", "failed", "paused"];

fn now_unix() -> i64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs() as i64
}

/// A raw PowerDNS API call, as another tool (or an older daemon) would make.
fn pdns_api(p: &Pdns, method: &str, path: &str, body: &str) {
    let rt = tokio::runtime::Runtime::new().unwrap();
    let url = format!("{}/api/v1/servers/localhost{path}", p.url());
    let status = rt.block_on(async {
        reqwest::Client::new()
            .request(method.parse().unwrap(), url)
            .header("X-API-Key", &p.api_key)
            .body(body.to_owned())
            .send()
            .await
            .unwrap()
            .status()
    });
    assert!(status.is_success(), "{method} {path}: {status}");
}

/// The daemon (`--backend sim`) with `p` as its PowerDNS, also asked as the
/// public resolver; `dns` goes into `[dns]`, `extra` after.
fn daemon_on(
    p: &Pdns,
    dir: &std::path::Path,
    dns: &str,
    extra: &str,
) -> (Daemon, std::path::PathBuf, Api) {
    let config = dir.join("config.toml");
    std::fs::write(
        &config,
        format!(
            "[dns]\n{dns}public_resolvers = [\"127.0.0.1:{port}\"]\n[powerdns]\napi_url = \"{}\"\ndns_address = \"127.0.0.1:{port}\"\ntimeout_secs = 5\n{extra}",
            p.url(),
            port = p.dns_port
        ),
    )
    .unwrap();
    let data = dir.join("data");
    std::fs::create_dir_all(&data).unwrap();
    let mut d = Daemon::new(&data, 0.002);
    d.backend_args.extend(["--config".into(), config.display().to_string()]);
    d.env.push(("CATALYST_ZERO_POWERDNS_API_KEY".into(), p.api_key.clone()));
    d.start().unwrap();
    let api = Api::new(d.port);
    (d, data, api)
}

/// A private server: the daemon makes the pool zone on it at start, and
/// its lease keeper (a 3 s lease) sweeps every expired reservation on it.
#[test]
fn e2e_a_sovereign_on_a_real_powerdns_is_served_then_destroyed() {
    assert!(Pdns::available(), "PowerDNS with the gsqlite3 backend is needed (see .ci/run)");
    let rt = tokio::runtime::Runtime::new().unwrap();
    let mut p = Pdns::prepare();
    rt.block_on(p.start());
    let dir = tempfile::tempdir().unwrap();
    let (_d, data, api) = daemon_on(&p, dir.path(), "lease_secs = 3\n", "");
    // The pool zone was made at start, on the real server.
    assert!(!p.dig("omani.works", "SOA").is_empty());

    let (code, resp) = api.post("/v1/sovereigns", &request("pdns", 1, 0)).unwrap();
    assert_eq!(code, 202, "{resp}");
    let job = resp["job_id"].as_str().unwrap().to_owned();
    let sovereign = resp["sovereign_id"].as_str().unwrap().to_owned();
    let status = api.wait_status(&job, ENDED, JOB_BOUND);
    assert_eq!(status, "succeeded", "{}", api.get(&format!("/v1/jobs/{job}")).unwrap());
    let fqdn = "pdns.omani.works";
    let lb = p.dig(fqdn, "A");
    assert_eq!(lb.len(), 1, "{lb:?}");
    for n in ["console", "api", "gitea", "harbor", "anything"] {
        assert_eq!(p.dig(&format!("{n}.{fqdn}"), "A"), lb, "{n}");
    }
    assert_eq!(p.dig(fqdn, "NS").len(), 3);
    // The key is in no file the daemon wrote.
    assert!(files_containing(&data, p.api_key.as_bytes()).is_empty());

    // The daemon's lease keeper: a reservation nobody renews (its job is
    // unknown here, its lease long run out) is removed with its
    // delegation; the committed Sovereign is left alone.
    let expired = serde_json::json!({ "job": "gone", "expires": now_unix() - 100 }).to_string();
    let zone = serde_json::json!({ "name": "stale.omani.works.", "kind": "Native",
        "account": "catalyst-zero:other", "nameservers": ["ns1.openova.io."] });
    pdns_api(&p, "POST", "/zones", &zone.to_string());
    let lease = serde_json::json!({ "kind": "X-CATALYST-LEASE", "metadata": [expired] });
    pdns_api(&p, "PUT", "/zones/stale.omani.works./metadata/X-CATALYST-LEASE", &lease.to_string());
    let deleg = serde_json::json!({ "rrsets": [{ "name": "stale.omani.works.", "type": "NS",
        "ttl": 3600, "changetype": "REPLACE",
        "records": [{ "content": "ns1.openova.io.", "disabled": false }] }] });
    pdns_api(&p, "PATCH", "/zones/omani.works.", &deleg.to_string());
    assert!(!p.dig("stale.omani.works", "SOA").is_empty());
    let deadline = Instant::now() + Duration::from_secs(20);
    while !p.dig("stale.omani.works", "SOA").is_empty() {
        assert!(Instant::now() < deadline, "the expired reservation was not swept");
        std::thread::sleep(Duration::from_millis(200));
    }
    assert_eq!(p.dig(&format!("console.{fqdn}"), "A"), lb);

    let (code, resp) =
        api.post(&format!("/v1/sovereigns/{sovereign}/destroy"), &serde_json::Value::Null).unwrap();
    assert_eq!(code, 202, "{resp}");
    let destroy = resp["job_id"].as_str().unwrap().to_owned();
    assert_eq!(api.wait_status(&destroy, ENDED, JOB_BOUND), "succeeded");
    assert!(p.dig(&format!("console.{fqdn}"), "A").is_empty());
    assert!(p.dig(fqdn, "NS").is_empty());
    // The pool zone stays.
    assert!(!p.dig("omani.works", "SOA").is_empty());
}

/// `byo-api` through the daemon: a Sovereign on the customer's own domain
/// at Dynadot (the fake registrars, reached through `[registrars]`), its
/// zone on the real PowerDNS. Pre-flight validates the token, the job has
/// the registrar delegate the domain to us, and destroying the Sovereign
/// gives the registrar its old delegation back. The token is in no file
/// the daemon wrote and in no answer of its API.
#[test]
fn e2e_byo_api_delegates_at_the_registrar_and_destroy_gives_it_back() {
    // The test binary's shared server (a zone of its own; the daemon's
    // lease keeper sweeps only reservations a lease, 600 s, past their end).
    let rt = tokio::runtime::Runtime::new().unwrap();
    let p = rt.block_on(crate::dns_pdns::pool());
    let fake = rt.block_on(FakeRegistrars::start());
    const TOKEN: &str = "DynadotE2Ekey0123456789";
    let before = ["ns1.dyna-ns.net", "ns2.dyna-ns.net"];
    fake.domain(Registrar::Dynadot, TOKEN, "acme-e2e.org", &before);

    let e = fake.endpoints();
    let registrars = format!(
        "[registrars]\ncloudflare = \"{}\"\nnamecheap = \"{}\"\ngodaddy = \"{}\"\novh = \"{}\"\ndynadot = \"{}\"\n",
        e.cloudflare, e.namecheap, e.godaddy, e.ovh, e.dynadot
    );
    let dir = tempfile::tempdir().unwrap();
    let (_d, data, api) = daemon_on(p, dir.path(), "", &registrars);
    let mut body = request("byo", 1, 0);
    body["domain"] = serde_json::json!({ "mode": "byo-api", "fqdn": "acme-e2e.org",
        "registrar": "dynadot", "registrar_token": TOKEN });
    let (code, resp) = api.post("/v1/sovereigns", &body).unwrap();
    assert_eq!(code, 202, "{resp}");
    let job = resp["job_id"].as_str().unwrap().to_owned();
    let sovereign = resp["sovereign_id"].as_str().unwrap().to_owned();
    let status = api.wait_status(&job, ENDED, JOB_BOUND);
    let detail = api.get(&format!("/v1/jobs/{job}")).unwrap();
    assert_eq!(status, "succeeded", "{detail}");
    assert!(!detail.to_string().contains(TOKEN));
    let mut ns = fake.nameservers(Registrar::Dynadot, "acme-e2e.org");
    ns.sort();
    assert_eq!(ns, ["ns1.openova.io", "ns2.openova.io", "ns3.openova.io"]);
    assert_eq!(p.dig("console.acme-e2e.org", "A").len(), 1);
    assert!(fake.calls(Registrar::Dynadot).iter().any(|c| c == "domain_info"), "pre-flight");

    let (code, resp) =
        api.post(&format!("/v1/sovereigns/{sovereign}/destroy"), &serde_json::Value::Null).unwrap();
    assert_eq!(code, 202, "{resp}");
    let destroy = resp["job_id"].as_str().unwrap().to_owned();
    let status = api.wait_status(&destroy, ENDED, JOB_BOUND);
    assert_eq!(status, "succeeded", "{}", api.get(&format!("/v1/jobs/{destroy}")).unwrap());
    assert_eq!(fake.nameservers(Registrar::Dynadot, "acme-e2e.org"), before);
    assert!(p.dig("acme-e2e.org", "SOA").is_empty());
    assert!(files_containing(&data, TOKEN.as_bytes()).is_empty());
}
