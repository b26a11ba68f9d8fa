//! The hetzner backend end to end: one job through the real binary from
//! `POST /v1/sovereigns` to `succeeded`, then a destroy back to nothing.
//!
//! Real: the `catalyst-zero` daemon on the `hetzner` backend; the tofu
//! (terraform) CLI on the offline module; SSH to five `sshd` nodes with the
//! stub K3s (`fixtures/k3s-stub/`); a `pdns_server`; three `bao server`
//! nodes in one raft cluster; the `age` CLI opening the escrow.
//!
//! Stand-ins, speaking the wire: the hcloud fake (its servers get the
//! nodes' loopback addresses, its load balancer the address the fake API
//! server listens at) and the fake Kubernetes API server over TLS with its
//! simulated controllers (Flux, External Secrets, Crossplane's
//! provider-hetzner reading the hcloud fake). The test plays two parts of
//! the world no daemon talks to: cloud-init on each new server (the keys
//! of the `user_data` the server was created with go into root's
//! `authorized_keys`), and K3s's deploy controller applying the manifests
//! the cluster phase leaves on the first server.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use cz_adapters::KubeApi;
use cz_adapters::kube::KubeClient;
use cz_sim::wire::controllers::Pace;
use cz_sim::wire::hcloud::{self as fake, Addresses, DEFAULT_TOKEN, FakeConfig, FakeHandle};
use cz_sim::wire::kube::FakeKube;
use cz_state::SecretString;
use cz_testkit::bao::{Bao, BaoCluster};
use cz_testkit::daemon::{Api, Daemon, TOKEN, files_containing, tofu_binary};
use cz_testkit::pdns::Pdns;
use cz_testkit::requests::{Custodians, sample_body};
use cz_testkit::sshd::Sshd;
use serde_json::{Value, json};

const SOVEREIGN_LABEL: &str = "catalyst.openova.io/sovereign";
const NODES: [(&str, &str); 5] =
    [("cp1", "11"), ("cp2", "12"), ("cp3", "13"), ("w1", "14"), ("w2", "15")];
const LB_HOST: &str = "20";
/// How long one job may take through the daemon.
const JOB_BOUND: Duration = Duration::from_secs(600);
const MANIFESTS: &str = "/var/lib/rancher/k3s/server/manifests";

/// One run's names: its own /24 of loopback addresses and subdomain, so
/// the two tests run in parallel.
#[derive(Clone, Copy)]
struct Case {
    net: &'static str,
    sub: &'static str,
}

impl Case {
    fn slug(&self) -> String {
        format!("{}-omani-works", self.sub)
    }

    fn server_name(&self, node: &str) -> String {
        format!("{}-fsn1-{node}", self.slug())
    }
}

/// Everything outside the daemon.
struct World {
    case: Case,
    hcloud: FakeHandle,
    kube: FakeKube,
    bao: BaoCluster,
    pdns: Pdns,
    nodes: Vec<Sshd>,
    ssh_port: u16,
    /// The stub K3s's shared state (`CZ_TEST_CLUSTER`).
    cluster: PathBuf,
    /// The custodians whose age identities the test holds.
    custodians: Custodians,
    stop: Arc<AtomicBool>,
}

impl Drop for World {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
    }
}

async fn world(case: Case, dir: &Path) -> World {
    let net = case.net;
    use base64::Engine as _;
    cz_testkit::crypto();
    let mut addresses = std::collections::BTreeMap::new();
    for (n, h) in NODES {
        addresses.insert(
            case.server_name(n),
            Addresses {
                public_ipv4: format!("{net}.{h}"),
                private_ip: Some(format!("10.0.1.{h}")),
            },
        );
    }
    addresses.insert(
        format!("{}-fsn1-lb", case.slug()),
        Addresses { public_ipv4: format!("{net}.{LB_HOST}"), private_ip: None },
    );
    let hcloud = fake::start(FakeConfig { addresses, ..FakeConfig::default() }).await;
    let lb: std::net::SocketAddr = format!("{net}.{LB_HOST}:6443").parse().unwrap();
    let kube = FakeKube::start_tls_at(lb).await.expect("the fake API server at the LB address");
    kube.run_controllers(Pace::default());
    kube.run_external_secrets(Duration::from_millis(100));
    kube.run_crossplane(hcloud.base_url(), Duration::from_millis(200));
    for (n, _) in NODES {
        kube.put("", "nodes", json!({"metadata": {"name": case.server_name(n)}}));
    }
    let bao = BaoCluster::start(3).await;
    for (i, node) in bao.nodes.iter().enumerate() {
        kube.route_pod("openbao", &format!("openbao-{i}"), &node.url());
    }
    kube.route_service("openbao", "openbao", &bao.nodes[0].url());
    let mut pdns = Pdns::prepare();
    pdns.start().await;

    let cluster = dir.join("cluster");
    std::fs::create_dir_all(&cluster).unwrap();
    let b64 = |s: &str| base64::engine::general_purpose::STANDARD.encode(s);
    let (cert, key) = kube.admin_credentials().unwrap();
    let ca = b64(&kube.ca_pem().unwrap());
    let (cert, key) = (b64(&cert), b64(&key));
    let ips: Vec<String> = NODES.iter().map(|(_, h)| format!("{net}.{h}")).collect();
    let ssh_port = cz_testkit::sshd::free_port_on(&ips);
    let nodes = NODES
        .iter()
        .map(|(n, h)| {
            let (name, private) = (case.server_name(n), format!("10.0.1.{h}"));
            let env: Vec<(&str, &str)> = vec![
                ("CZ_NODE_NAME", &name),
                ("CZ_NODE_IP", &private),
                ("CZ_TEST_CLUSTER", cluster.to_str().unwrap()),
                ("CZ_TEST_CA_B64", &ca),
                ("CZ_TEST_CERT_B64", &cert),
                ("CZ_TEST_KEY_B64", &key),
            ];
            // No key yet: Hetzner puts the project's key on at creation.
            Sshd::start_at(&format!("{net}.{h}"), ssh_port, &[], &env)
        })
        .collect();
    let custodians = Custodians::generate(dir);
    let w = World {
        case,
        hcloud,
        kube,
        bao,
        pdns,
        nodes,
        ssh_port,
        cluster,
        custodians,
        stop: Arc::new(AtomicBool::new(false)),
    };
    tokio::spawn(cloud_init_on_each_node(&w));
    tokio::spawn(k3s_deploys_manifests(&w));
    w
}

/// cloud-init's part on each node: the `user_data` its server was created
/// with puts the listed keys in root's `authorized_keys` (the provisioner's
/// key arrives that way, as on Hetzner).
fn cloud_init_on_each_node(w: &World) -> impl std::future::Future<Output = ()> + use<> {
    let nodes: Vec<(String, PathBuf)> = NODES
        .iter()
        .zip(&w.nodes)
        .map(|((n, _), sshd)| (w.case.server_name(n), sshd.dir.path().join("authorized_keys")))
        .collect();
    let user_data = w.hcloud.user_data_fn();
    let stop = w.stop.clone();
    async move {
        let mut done = std::collections::BTreeMap::<String, String>::new();
        while !stop.load(Ordering::SeqCst) {
            for (name, file) in &nodes {
                let Some(ud) = user_data(name) else { continue };
                if done.get(name) == Some(&ud) {
                    continue;
                }
                let doc: Value = serde_saphyr::from_str(&ud).expect("cloud-init is YAML");
                let keys: Vec<&str> = doc["users"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .filter(|u| u["name"] == "root")
                    .flat_map(|u| u["ssh_authorized_keys"].as_array().into_iter().flatten())
                    .filter_map(Value::as_str)
                    .collect();
                std::fs::write(file, keys.join("\n") + "\n").unwrap();
                done.insert(name.clone(), ud);
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

/// K3s's deploy controller on the first server: what is in its manifests
/// directory (and not suppressed by a `.skip` marker) is applied.
fn k3s_deploys_manifests(w: &World) -> impl std::future::Future<Output = ()> + use<> {
    let dir = w.nodes[0].path(MANIFESTS);
    let kc = SecretString::new(w.kube.kubeconfig());
    let stop = w.stop.clone();
    async move {
        let mut applied = std::collections::BTreeMap::<PathBuf, String>::new();
        while !stop.load(Ordering::SeqCst) {
            for e in std::fs::read_dir(&dir).into_iter().flatten().flatten() {
                let p = e.path();
                if p.extension().is_none_or(|x| x != "yaml")
                    || p.with_extension("yaml.skip").exists()
                {
                    continue;
                }
                let Ok(text) = std::fs::read_to_string(&p) else { continue };
                if applied.get(&p) == Some(&text) {
                    continue;
                }
                let docs: Vec<Value> = text
                    .split("\n---")
                    .filter(|d| !d.trim().is_empty())
                    .filter_map(|d| serde_saphyr::from_str(d).ok())
                    .collect();
                if KubeClient.apply(&kc, "k3s", &docs).await.is_ok() {
                    applied.insert(p, text);
                }
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}

/// The daemon's configuration for `w`.
fn config(w: &World, dir: &Path, tofu: &Path) -> PathBuf {
    let templates = concat!(env!("CARGO_MANIFEST_DIR"), "/../cloud-templates");
    let artifacts = crate::cluster_sshd::artifact_dir(dir);
    let path = dir.join("catalyst-zero.toml");
    std::fs::write(
        &path,
        format!(
            "backend = \"hetzner\"\n\
             [hetzner]\napi_url = \"{api}\"\ntofu_binary = \"{tofu}\"\nmodule = \"offline\"\n\
             templates_dir = \"{templates}\"\nartifacts_dir = \"{artifacts}\"\n\
             host_boot_secs = 60\nssh_port = {ssh}\npoll_millis = 100\n\
             [hetzner.quota]\nservers = 20\nload_balancers = 5\n\
             [dns]\npublic_resolvers = [\"127.0.0.1:{port}\"]\n\
             [powerdns]\napi_url = \"{pdns}\"\ndns_address = \"127.0.0.1:{port}\"\ntimeout_secs = 5\n",
            api = w.hcloud.base_url(),
            tofu = tofu.display(),
            artifacts = artifacts.display(),
            ssh = w.ssh_port,
            pdns = w.pdns.url(),
            port = w.pdns.dns_port,
        ),
    )
    .unwrap();
    path
}

/// This Sovereign's objects in the hcloud fake, per kind.
pub(crate) fn ours(
    hcloud: &FakeHandle,
    slug: &str,
) -> std::collections::BTreeMap<&'static str, Vec<String>> {
    cz_sim::backend::cloud::KINDS
        .iter()
        .map(|kind| {
            let names = hcloud
                .objects(kind)
                .iter()
                .filter(|o| o["labels"][SOVEREIGN_LABEL] == slug)
                .map(|o| o["name"].as_str().unwrap_or_default().to_owned())
                .collect();
            (*kind, names)
        })
        .collect()
}

/// Exactly one region of 3 control planes and 2 workers, each object once.
pub(crate) fn assert_one_region(objs: &std::collections::BTreeMap<&'static str, Vec<String>>) {
    let count = |k: &str| objs[k].len();
    assert_eq!(
        (count("server"), count("network"), count("firewall"), count("ssh_key")),
        (5, 1, 1, 1),
        "{objs:?}"
    );
    // 5 servers fill one spread placement group of 10.
    assert_eq!((count("load_balancer"), count("placement_group")), (1, 1), "{objs:?}");
    for (k, names) in objs {
        let mut u = names.clone();
        u.dedup();
        assert_eq!(u.len(), names.len(), "duplicate {k}: {names:?}");
    }
}

/// Every provider-hetzner managed resource in the fake cluster.
fn managed_resources(kube: &FakeKube) -> Vec<Value> {
    cz_sim::charts::PROVIDER_HETZNER
        .crds
        .iter()
        .filter(|c| c.group != "hetzner.m.crossplane.io")
        .flat_map(|c| kube.objects(c.group, c.plural))
        .collect()
}

/// Where a run kills the daemon: after the job's event of each id (in
/// order), as soon as the daemon wrote it.
struct Fire {
    seed: u64,
    provision: Vec<i64>,
    destroy: Vec<i64>,
}

impl Fire {
    /// `n` kill points in `1..=span` for the provision and two in
    /// `1..=20` for the destroy, from `seed` (printed, so a failing run
    /// can be replayed with `CZ_E2E_SEED`).
    fn new(seed: u64, n: usize, span: i64) -> Fire {
        let mut x = seed | 1;
        let mut next = |m: i64| {
            // xorshift64*: enough to scatter kill points.
            x ^= x >> 12;
            x ^= x << 25;
            x ^= x >> 27;
            (x.wrapping_mul(0x2545_F491_4F6C_DD1D) % m as u64) as i64 + 1
        };
        let mut provision: Vec<i64> = (0..n).map(|_| next(span)).collect();
        provision.sort_unstable();
        provision.dedup();
        let mut destroy = vec![next(20), next(20)];
        destroy.sort_unstable();
        destroy.dedup();
        Fire { seed, provision, destroy }
    }
}

/// Every event of `job`, all pages.
fn all_events(api: &Api, job: &str) -> Vec<Value> {
    let mut all = Vec::new();
    let mut after = 0;
    loop {
        let page = api.events_after(job, after);
        let Some(last) = page.last() else { return all };
        after = last["id"].as_i64().unwrap();
        all.extend(page);
    }
}

/// Whether `step` of `job` is running now.
fn running(api: &Api, job: &str, step: &str) -> bool {
    let detail = api.get(&format!("/v1/jobs/{job}")).unwrap_or_default();
    detail["phases"].as_array().into_iter().flatten().any(|p| {
        p["steps"]
            .as_array()
            .into_iter()
            .flatten()
            .any(|s| s["step"] == step && s["state"] == "running")
    })
}

/// Runs `job` to its end, killing the daemon after each event id of
/// `kills`, and acting as the operator and custodians would on a pause
/// the runbooks cover: a replica left sealed by a restart after `init`
/// (the daemon holds no share) is unsealed by two custodians with
/// `catalyst-zero unseal`, then the step is retried.
fn finish(
    w: &World,
    d: &mut Daemon,
    api: &mut Api,
    job: &str,
    sov: &str,
    kills: &[i64],
) -> (String, Value) {
    let deadline = Instant::now() + JOB_BOUND;
    let mut kills = kills.iter().copied().peekable();
    loop {
        assert!(Instant::now() < deadline, "job {job} did not end within {JOB_BOUND:?}");
        let detail = api.get(&format!("/v1/jobs/{job}")).unwrap_or_default();
        let status = detail["status"].as_str().unwrap_or_default().to_owned();
        if status == "paused"
            && detail["pause"]["step"]
                .as_str()
                .is_some_and(|s| s.starts_with("secrets-handoff/unseal-"))
        {
            w.custodians.unseal(sov, &d.url(""), &[]);
            eprintln!("custodians unsealed {} after a restart; retrying", detail["pause"]["step"]);
            let (code, resp) = api.post(&format!("/v1/jobs/{job}/retry"), &json!({})).unwrap();
            assert_eq!(code, 200, "{resp}");
            continue;
        }
        if ["succeeded", "failed", "paused", "abandoned", "cancelled"].contains(&status.as_str()) {
            return (status, detail);
        }
        // The init window (sys/init answered, escrow not yet committed) is
        // an operator's wipe on a real cluster: handoff_bao covers it.
        if let Some(&at) = kills.peek()
            && !api.events_after(job, at - 1).is_empty()
            && !running(api, job, "secrets-handoff/init")
        {
            kills.next();
            d.kill9();
            d.port = cz_testkit::free_port();
            d.start().unwrap();
            api.set_port(d.port);
            eprintln!("killed the daemon after event {at} of {job}");
            continue;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// The whole path: provision to `succeeded`, check the world, destroy to
/// nothing; under `fire`, with the daemon killed at its kill points.
fn run(case: Case, fire: Option<Fire>) {
    let Some(tofu) = tofu_binary() else {
        if std::env::var("CZ_ALLOW_NO_TOFU").as_deref() == Ok("1") {
            cz_testkit::skip("hetzner_e2e", "no tofu/terraform binary on this machine");
            return;
        }
        panic!("NO TOFU/TERRAFORM BINARY: install one or set CZ_ALLOW_NO_TOFU=1 to skip loudly");
    };
    assert!(Pdns::available(), "PowerDNS with the gsqlite3 backend is needed (see .ci/run)");
    assert!(Bao::available(), "the bao binary is needed (CZ_BAO_BIN; .ci/run installs it)");
    if let Some(f) = &fire {
        eprintln!(
            "hetzner e2e under fire: seed {} (CZ_E2E_SEED), kills after provision events {:?}, destroy events {:?}",
            f.seed, f.provision, f.destroy
        );
    }
    let rt =
        tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let w = rt.block_on(world(case, dir));
    let slug = case.slug();
    let zone = format!("{}.omani.works", case.sub);
    let foreign = w.hcloud.seed_object("server", "someone-elses-server", [("team", "other")]);
    let config = config(&w, dir, &tofu);
    let data = dir.join("data");
    std::fs::create_dir_all(&data).unwrap();
    let mut d = Daemon::new(&data, 0.0);
    d.backend_args = vec!["--config".into(), config.display().to_string()];
    d.env.push(("CATALYST_ZERO_POWERDNS_API_KEY".into(), w.pdns.api_key.clone()));
    d.start().unwrap();
    let mut api = Api::new(d.port);

    let mut body = sample_body(case.sub, 3, 2, DEFAULT_TOKEN, &w.custodians.recipients[0]);
    w.custodians.deal(&mut body);
    let started = Instant::now();
    let (code, resp) = api.post("/v1/sovereigns", &body).unwrap();
    assert_eq!(code, 202, "{resp}");
    let job = resp["job_id"].as_str().unwrap().to_owned();
    let sovereign = resp["sovereign_id"].as_str().unwrap().to_owned();
    let kills = fire.as_ref().map(|f| f.provision.clone()).unwrap_or_default();
    let (status, detail) = finish(&w, &mut d, &mut api, &job, &sovereign, &kills);
    let provision_wall = started.elapsed();
    assert_eq!(
        status,
        "succeeded",
        // The job last: CI keeps the tail of a failure's output.
        "--- daemon log\n{}\n--- bao\n{}\n--- the job\n{}\n--- where it stopped\n{}",
        std::fs::read_to_string(data.join("daemon.log")).unwrap_or_default(),
        w.bao.logs(),
        detail,
        detail["pause"],
    );
    let events = all_events(&api, &job);
    let ids: Vec<i64> = events.iter().map(|e| e["id"].as_i64().unwrap()).collect();
    assert_eq!(ids, (1..=ids.len() as i64).collect::<Vec<_>>(), "gap or duplicate in event ids");

    // The cloud: each object once.
    assert_one_region(&ours(&w.hcloud, &slug));
    // K3s: one cluster-init, four joins, every node registered.
    let calls = std::fs::read_to_string(w.cluster.join("calls.log")).unwrap();
    assert_eq!(calls.matches("joined role=server cluster-init").count(), 1, "{calls}");
    assert_eq!(calls.matches(" joined ").count(), 5, "{calls}");
    // DNS: the Sovereign's zone is served by the real PowerDNS.
    assert!(!w.pdns.dig(&zone, "SOA").is_empty(), "no zone served");
    // Crossplane owns the cloud objects, managed but never deleting them.
    let mrs = managed_resources(&w.kube);
    assert!(mrs.len() >= 11, "{} managed resources", mrs.len());
    for mr in &mrs {
        let policies = mr["spec"]["managementPolicies"].to_string();
        assert!(policies.contains("Update") && !policies.contains("Delete"), "{mr}");
    }
    // OpenBao: initialised once, unsealed, its shares escrowed per
    // custodian; the `age` CLI opens share i with custodian i's identity
    // only.
    for n in &w.bao.nodes {
        let s = rt.block_on(n.seal_status()).unwrap();
        assert_eq!(s["sealed"], false, "{s}");
    }
    let escrow = api.get(&format!("/v1/sovereigns/{sovereign}/escrow")).unwrap();
    let items = escrow["items"].as_array().cloned().unwrap_or_default();
    let shares: Vec<&Value> = items.iter().filter(|i| i["kind"] == "openbao-share").collect();
    assert_eq!(shares.len(), 3, "{escrow}");
    for item in &shares {
        let owner = item["custodian"].as_u64().unwrap() as usize;
        for (c, id) in w.custodians.files.iter().enumerate() {
            let opened = crate::handoff_bao::age_open(id, item["age"].as_str().unwrap(), dir);
            assert_eq!(opened.is_some(), c == owner, "custodian {c} and share {item}");
        }
    }

    // Destroy: back to nothing, someone else's server untouched.
    let started = Instant::now();
    let (code, resp) =
        api.post(&format!("/v1/sovereigns/{sovereign}/destroy"), &serde_json::Value::Null).unwrap();
    assert_eq!(code, 202, "{resp}");
    let destroy = resp["job_id"].as_str().unwrap().to_owned();
    let kills = fire.as_ref().map(|f| f.destroy.clone()).unwrap_or_default();
    let (status, detail) = finish(&w, &mut d, &mut api, &destroy, &sovereign, &kills);
    let destroy_wall = started.elapsed();
    assert_eq!(status, "succeeded", "{detail}");
    let left: Vec<String> = ours(&w.hcloud, &slug).into_values().flatten().collect();
    assert!(left.is_empty(), "labelled objects left after destroy: {left:?}");
    assert!(
        w.hcloud.objects("server").iter().any(|o| o["id"] == foreign),
        "someone else's server was deleted"
    );
    assert!(w.pdns.dig(&zone, "SOA").is_empty(), "the zone is still served");
    let mrs = managed_resources(&w.kube);
    assert!(mrs.is_empty(), "managed resources left: {}", mrs.len());
    // The fake's request log: no project was served more requests than its
    // bucket (3,600, one back per second) allowed at any moment, however
    // often the daemon was killed mid-way.
    assert_within_budget(&w.hcloud.requests(), 3_600.0, 1.0);
    // No secret in the clear in the daemon's data dir (its log included).
    let starts = d.starts;
    drop(d);
    for needle in [DEFAULT_TOKEN, "OPENSSH PRIVATE KEY", TOKEN] {
        let leaks = files_containing(&data, needle.as_bytes());
        assert!(leaks.is_empty(), "`{needle}` is on disk: {leaks:?}");
    }
    eprintln!(
        "hetzner e2e: provision {:.1} s ({} events), destroy {:.1} s, {} daemon starts, {} hcloud requests",
        provision_wall.as_secs_f64(),
        ids.len(),
        destroy_wall.as_secs_f64(),
        starts,
        w.hcloud.requests().len()
    );
    if fire.is_none() {
        write_figure(provision_wall, destroy_wall, ids.len(), w.hcloud.requests().len());
    }
    drop(w);
    drop(rt);
}

/// The run's figure, for `cz-bench` (H1): in `target/cz-figures/`.
/// Every served request (not a 429) of a project was within its bucket:
/// the n-th by arrival came at most `capacity + refill × t` into the run.
pub(crate) fn assert_within_budget(
    log: &[cz_sim::wire::hcloud::RecordedRequest],
    capacity: f64,
    refill_per_sec: f64,
) {
    let mut served: std::collections::BTreeMap<&str, Vec<Duration>> = Default::default();
    for r in log.iter().filter(|r| r.status != 429) {
        served.entry(r.project.as_deref().unwrap_or("")).or_default().push(r.at);
    }
    for (project, mut at) in served {
        at.sort();
        for (n, t) in at.iter().enumerate() {
            let allowed = capacity + refill_per_sec * t.as_secs_f64();
            assert!(
                (n + 1) as f64 <= allowed + 1.0,
                "project {project}: request {} at {t:?} is over its budget ({allowed:.0})",
                n + 1
            );
        }
    }
}

fn write_figure(provision: Duration, destroy: Duration, events: usize, requests: usize) {
    let bin = cz_testkit::daemon::binary();
    let target = bin.parent().and_then(Path::parent).expect("the target directory");
    let dir = target.join("cz-figures");
    std::fs::create_dir_all(&dir).unwrap();
    let figure = json!({
        "provision_s": provision.as_secs_f64(), "destroy_s": destroy.as_secs_f64(),
        "events": events, "hcloud_requests": requests,
        "at": chrono::Utc::now().to_rfc3339(),
    });
    std::fs::write(dir.join("hetzner-e2e.json"), figure.to_string()).unwrap();
}

#[test]
fn e2e_hetzner_backend_every_real_adapter_to_succeeded_and_destroy_to_nothing() {
    run(Case { net: "127.0.61", sub: "e2e" }, None);
}

/// The same path with the daemon killed (SIGKILL) at random moments of
/// both jobs: each still ends `succeeded`, with no duplicate cloud object
/// and a gap-free event sequence.
#[test]
fn e2e_hetzner_backend_under_kill9_at_random_moments() {
    let seed =
        std::env::var("CZ_E2E_SEED").ok().and_then(|s| s.parse().ok()).unwrap_or_else(|| {
            std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_nanos()
                as u64
        });
    run(Case { net: "127.0.62", sub: "fire" }, Some(Fire::new(seed, 8, 440)));
}
