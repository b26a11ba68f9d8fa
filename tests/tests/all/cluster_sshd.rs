//! The `cluster` phase through the real SSH adapter against five real
//! `sshd` "nodes" (3 servers + 2 agents), each on its own loopback address
//! with its own root directory, host key and environment. The K3s artifacts
//! are stubs (`fixtures/k3s-stub/`) that enforce what a real cluster would
//! (one `cluster-init`, joins only to the first server's private address,
//! one token, a 0600 config, air-gap mode) and record every call.
//!
//! Asserted: the air-gap artifacts are verified and uploaded, the join
//! sequence per role, the done criteria (nodes Ready, etcd members,
//! CoreDNS), no second install when every step runs twice or after the
//! drive is interrupted mid-phase and resumed, and a tampered artifact
//! stops the phase before anything is uploaded.

mod common;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use common::sshd::Sshd;
use cz_phases::adapters::{Backend, ProvisionerKey};
use cz_phases::engine::{DriveOutcome, Engine, FailurePolicy, FaultPlan, JobOptions};
use cz_phases::exec::SshClient;
use cz_phases::phases::infra::{LoadBalancer, Outputs, PROVISIONER_KEY, Server};
use cz_phases::phases::{cluster, provision_submission, registry};
use cz_phases::plan::{PhaseBuilder, Plan};
use cz_phases::request::{ProvisionRequest, sample_body};
use cz_phases::sim::{SimConfig, sim_backend};
use cz_phases::{Step, StepCtx, StepResult};
use cz_state::{JobId, JobStatus, Store, StorePaths};
use serde_json::{Value, json};
use tokio_util::sync::CancellationToken;

const STUBS: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/k3s-stub");
const NODES: [(&str, &str); 5] =
    [("cp1", "11"), ("cp2", "12"), ("cp3", "13"), ("w1", "14"), ("w2", "15")];

/// `infra/outputs-fsn1` as the infra phase would have left it.
struct FixedOutputs(Value);

#[async_trait]
impl Step for FixedOutputs {
    async fn run(&self, _cx: &StepCtx) -> StepResult<Value> {
        Ok(self.0.clone())
    }
    async fn undo(&self, _cx: &StepCtx) -> StepResult<()> {
        Ok(())
    }
}

struct Rig {
    dir: tempfile::TempDir,
    nodes: Vec<Sshd>,
    store: Store,
    engine: Engine,
    key: ProvisionerKey,
    net: String,
    port: u16,
    _api: Option<ApiServer>,
}

fn cluster_dir(r: &Rig) -> PathBuf {
    r.dir.path().join("cluster")
}

/// A free port on all five loopback addresses of `net`.
fn port_for(net: &str) -> u16 {
    loop {
        let p = common::sshd::free_port();
        if NODES.iter().all(|(_, h)| std::net::TcpListener::bind((format!("{net}.{h}"), p)).is_ok())
        {
            return p;
        }
    }
}

/// Copies the stubs into an artifact directory with their SHA256SUMS.
fn artifact_dir(root: &Path) -> PathBuf {
    if root.join("artifacts").exists() {
        return root.join("artifacts");
    }
    use std::os::unix::fs::PermissionsExt;
    let dir = root.join("artifacts");
    std::fs::create_dir_all(&dir).unwrap();
    let mut sums = String::new();
    for name in cluster::ARTIFACT_FILES {
        let body = std::fs::read(Path::new(STUBS).join(name)).unwrap();
        std::fs::write(dir.join(name), &body).unwrap();
        std::fs::set_permissions(dir.join(name), std::fs::Permissions::from_mode(0o755)).unwrap();
        let sha = hex::encode(<sha2::Sha256 as sha2::Digest>::digest(&body));
        sums.push_str(&format!("{sha}  {name}\n"));
    }
    std::fs::write(dir.join(cluster::SUMS_FILE), sums).unwrap();
    dir
}

fn request() -> ProvisionRequest {
    let recipient = age::x25519::Identity::generate().to_public().to_string();
    let body = sample_body("kube", 3, 2, &"s".repeat(64), &recipient);
    serde_json::from_value(body).unwrap()
}

/// How the Kubernetes API endpoint is checked.
#[derive(Clone, Copy, PartialEq)]
enum Api {
    /// The sim's rule (the endpoint is the LB on 6443).
    Sim,
    /// A real TLS server on the LB address; its certificate has the LB
    /// address as SAN or not.
    Tls { with_san: bool },
}

/// A test PKI and an HTTPS "apiserver" answering `/version` to clients
/// with a certificate from the same CA.
struct ApiServer {
    ca_pem: String,
    client_cert_pem: String,
    client_key_pem: String,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for ApiServer {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn api_server(ip: &str, with_san: bool) -> ApiServer {
    use rcgen::{
        BasicConstraints, CertificateParams, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
        SanType,
    };
    let ca_key = KeyPair::generate().unwrap();
    let mut ca_params = CertificateParams::new(Vec::<String>::new()).unwrap();
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca_params.distinguished_name.push(rcgen::DnType::CommonName, "k3s-server-ca");
    let ca_cert = ca_params.self_signed(&ca_key).unwrap();
    let issuer = Issuer::new(ca_params, &ca_key);
    let server_key = KeyPair::generate().unwrap();
    let mut sp = CertificateParams::new(Vec::<String>::new()).unwrap();
    // K3s's own SANs; the LB's only when tls-san reached the certificate.
    sp.subject_alt_names = vec![
        SanType::DnsName("kubernetes.default".try_into().unwrap()),
        SanType::IpAddress("127.0.0.1".parse().unwrap()),
    ];
    if with_san {
        sp.subject_alt_names.push(SanType::IpAddress(ip.parse().unwrap()));
    }
    let server_cert = sp.signed_by(&server_key, &issuer).unwrap();
    let client_key = KeyPair::generate().unwrap();
    let mut cp = CertificateParams::new(Vec::<String>::new()).unwrap();
    cp.distinguished_name.push(rcgen::DnType::CommonName, "system:admin");
    cp.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
    let client_cert = cp.signed_by(&client_key, &issuer).unwrap();

    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let mut roots = rustls::RootCertStore::empty();
    roots.add(ca_cert.der().clone()).unwrap();
    let verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(
        Arc::new(roots),
        provider.clone(),
    )
    .build()
    .unwrap();
    let key = rustls::pki_types::PrivateKeyDer::Pkcs8(server_key.serialize_der().into());
    let cfg = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_client_cert_verifier(verifier)
        .with_single_cert(vec![server_cert.der().clone(), ca_cert.der().clone()], key)
        .unwrap();
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(cfg));
    let listener = tokio::net::TcpListener::bind((ip, 6443)).await.unwrap();
    let task = tokio::spawn(async move {
        loop {
            let Ok((tcp, _)) = listener.accept().await else { return };
            let acceptor = acceptor.clone();
            tokio::spawn(async move {
                use tokio::io::{AsyncReadExt, AsyncWriteExt};
                let Ok(mut tls) = acceptor.accept(tcp).await else { return };
                let mut buf = vec![0u8; 4096];
                let mut req = Vec::new();
                while !req.windows(4).any(|w| w == b"\r\n\r\n") {
                    match tls.read(&mut buf).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => req.extend_from_slice(&buf[..n]),
                    }
                }
                let body = if req.starts_with(b"GET /version ") {
                    r#"{"major":"1","minor":"31","gitVersion":"v1.31.4+k3s1"}"#
                } else {
                    r#"{"kind":"Status","code":404}"#
                };
                let status = if body.contains("gitVersion") { "200 OK" } else { "404 Not Found" };
                let resp = format!(
                    "HTTP/1.1 {status}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                    body.len()
                );
                let _ = tls.write_all(resp.as_bytes()).await;
                let _ = tls.shutdown().await;
            });
        }
    });
    ApiServer {
        ca_pem: ca_cert.pem(),
        client_cert_pem: client_cert.pem(),
        client_key_pem: client_key.serialize_pem(),
        task,
    }
}

/// The backend of these tests: the sim's, with the real SSH client on
/// `port`, the artifact directory under `dir`, short bounds.
fn backend_for(dir: &Path, port: u16) -> Backend {
    let mut backend = sim_backend(dir.join("sim"), dir.join("ws"), SimConfig::instant());
    backend.ssh = Arc::new(SshClient::new(Duration::from_secs(5), Duration::from_secs(60)));
    backend.k3s = cz_phases::adapters::K3sSource::AirGap { dir: dir.join("artifacts") };
    backend.ssh_port = port;
    backend.poll = Duration::from_millis(20);
    backend.bounds.host_boot = Duration::from_secs(3);
    backend
}

/// The registry plus `test.outputs`: the infra outputs pointing at the nodes.
fn registry_for(dir: &Path, net: &str) -> cz_phases::Registry {
    let servers: Vec<Server> = NODES
        .iter()
        .map(|(name, h)| Server {
            name: format!("kube-omani-works-fsn1-{name}"),
            id: h.parse().unwrap(),
            role: if name.starts_with("cp") { "control-plane" } else { "worker" }.into(),
            ipv4: format!("{net}.{h}"),
            private_ip: format!("{net}.{h}"),
        })
        .collect();
    let outputs = Outputs {
        location: "fsn1".into(),
        servers,
        load_balancer: LoadBalancer { id: 99, ipv4: format!("{net}.20") },
        workspace: dir.join("ws"),
    };
    let mut reg = registry();
    reg.register("test.outputs", FixedOutputs(serde_json::to_value(&outputs).unwrap()));
    reg
}

fn infra_phase() -> cz_phases::PhaseDef {
    let mut infra = PhaseBuilder::new("infra");
    infra.step("outputs-fsn1", "test.outputs", &[], Value::Null);
    infra.build()
}

/// `net` is a /24 of 127.0.0.0/8 of its own per test (tests run in parallel).
async fn rig(net: &str, options: JobOptions) -> (Rig, JobId) {
    rig_with(net, options, Api::Sim, &[]).await
}

async fn rig_with(
    net: &str,
    options: JobOptions,
    api: Api,
    extra_env: &[(&str, &str)],
) -> (Rig, JobId) {
    use base64::Engine as _;
    let dir = tempfile::tempdir().unwrap();
    let key = ProvisionerKey::generate("catalyst-zero@kube").unwrap();
    let port = port_for(net);
    let cluster = dir.path().join("cluster");
    std::fs::create_dir_all(&cluster).unwrap();
    let server = match api {
        Api::Sim => None,
        Api::Tls { with_san } => Some(api_server(&format!("{net}.20"), with_san).await),
    };
    let b64 = |s: &str| base64::engine::general_purpose::STANDARD.encode(s);
    let pki: Vec<(&str, String)> = server
        .as_ref()
        .map(|s| {
            vec![
                ("CZ_TEST_CA_B64", b64(&s.ca_pem)),
                ("CZ_TEST_CERT_B64", b64(&s.client_cert_pem)),
                ("CZ_TEST_KEY_B64", b64(&s.client_key_pem)),
            ]
        })
        .unwrap_or_default();
    let nodes: Vec<Sshd> = NODES
        .iter()
        .map(|(name, h)| {
            let ip = format!("{net}.{h}");
            let mut env: Vec<(&str, &str)> = vec![
                ("CZ_NODE_NAME", name),
                ("CZ_NODE_IP", &ip),
                ("CZ_TEST_CLUSTER", cluster.to_str().unwrap()),
            ];
            env.extend(pki.iter().map(|(k, v)| (*k, v.as_str())));
            env.extend(extra_env.iter().copied());
            Sshd::start_at(&ip, port, &[&key], &env)
        })
        .collect();
    let mut backend = backend_for(dir.path(), port);
    artifact_dir(dir.path());
    if server.is_some() {
        // The real endpoint check (it needs no Kubernetes client).
        backend.kube = Arc::new(cz_phases::unbuilt::Unbuilt::KUBE);
    }
    let backend: Backend = backend;

    let req = request();
    let reg = registry_for(dir.path(), net);
    let plan = Plan { phases: vec![infra_phase(), cluster::phase(&req.regions)] };
    let store = Store::open(StorePaths::in_dir(&dir.path().join("data"))).await.unwrap();
    let (sov, job, mut sub) = provision_submission(&req, &options, "test");
    sub.plan = serde_json::to_value(&plan).unwrap();
    store.submit(sub).await.unwrap();
    // The provisioner key the infra phase would have made and authorized.
    store.put_secret(&sov.to_string(), PROVISIONER_KEY, &key.private).await.unwrap();
    let engine = Engine::new(store.clone(), Arc::new(reg), Arc::new(backend));
    (Rig { dir, nodes, store, engine, key, net: net.to_owned(), port, _api: server }, job)
}

async fn drive(r: &Rig, job: JobId) -> JobStatus {
    let fut = r.engine.drive(job, CancellationToken::new());
    match tokio::time::timeout(Duration::from_secs(120), fut).await.expect("bounded").unwrap() {
        DriveOutcome::Stopped(s) => s,
        DriveOutcome::Interrupted => panic!("interrupted"),
    }
}

fn calls(r: &Rig) -> Vec<String> {
    std::fs::read_to_string(cluster_dir(r).join("calls.log"))
        .unwrap_or_default()
        .lines()
        .map(str::to_owned)
        .collect()
}

/// What each node logged, in order (the `k3s` stub's calls left out).
fn installs(r: &Rig) -> BTreeMap<String, Vec<String>> {
    let mut m: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for l in calls(r) {
        let (node, what) = l.split_once(' ').unwrap();
        if !what.starts_with("k3s ") {
            m.entry(node.to_owned()).or_default().push(what.to_owned());
        }
    }
    m
}

async fn pause_reason(r: &Rig, job: JobId) -> String {
    let j = r.store.get_job(job).await.unwrap().unwrap();
    j.pause.or(j.error).map(|v| v.to_string()).unwrap_or_default()
}

fn assert_join_sequence(r: &Rig) {
    assert_join_sequence_with(r, true);
}

fn assert_join_sequence_with(r: &Rig, air_gap: bool) {
    let mut i = installs(r);
    if !air_gap {
        // Online: each node downloaded the pinned binary, once.
        for (node, lines) in i.iter_mut() {
            let dl = lines.iter().filter(|l| l.starts_with("downloaded ")).count();
            assert_eq!(dl, 1, "{node}: {lines:?}");
            lines.retain(|l| !l.starts_with("downloaded "));
        }
    }
    let v = format!("version=v1.31.4+k3s1 skip_download={air_gap}");
    let first = format!("https://{}.11:6443", r.net);
    assert_eq!(
        i["cp1"],
        vec![format!("install role=server {v}"), "joined role=server cluster-init".into()]
    );
    for cp in ["cp2", "cp3"] {
        assert_eq!(
            i[cp],
            vec![format!("install role=server {v}"), format!("joined role=server server={first}")],
            "{cp}"
        );
    }
    for w in ["w1", "w2"] {
        assert_eq!(
            i[w],
            vec![format!("install role=agent {v}"), format!("joined role=agent server={first}")],
            "{w}"
        );
    }
    // Servers joined one at a time, after the first.
    let order: Vec<String> = calls(r)
        .iter()
        .filter(|l| l.contains(" joined role=server"))
        .map(|l| l[..3].to_owned())
        .collect();
    assert_eq!(order, vec!["cp1", "cp2", "cp3"]);
}

#[tokio::test]
async fn three_servers_and_two_agents_join_in_order_over_real_ssh() {
    let (r, job) = rig("127.0.41", JobOptions::default()).await;
    let status = drive(&r, job).await;
    assert_eq!(status, JobStatus::Succeeded, "{}", pause_reason(&r, job).await);
    assert_join_sequence(&r);
    // Air-gap artifacts on every node, as uploaded (verified checksums).
    for n in &r.nodes {
        for name in cluster::ARTIFACT_FILES {
            let remote =
                std::fs::read(n.path(&format!("/var/lib/catalyst/artifacts/{name}"))).unwrap();
            assert_eq!(remote, std::fs::read(Path::new(STUBS).join(name)).unwrap());
        }
        // The k3s config carries the token: 0600 on the node.
        use std::os::unix::fs::PermissionsExt;
        let cfg = n.path("/etc/rancher/k3s/config.yaml");
        assert_eq!(std::fs::metadata(&cfg).unwrap().permissions().mode() & 0o777, 0o600);
    }
    // Cilium only on the first server, pointing agents at a reachable API.
    let cilium = std::fs::read_to_string(
        r.nodes[0].path("/var/lib/rancher/k3s/server/manifests/cilium.yaml"),
    )
    .unwrap();
    assert!(cilium.contains(&format!("k8sServiceHost: \"{}.11\"", r.net)), "{cilium}");
    assert!(!r.nodes[1].path("/var/lib/rancher/k3s/server/manifests/cilium.yaml").exists());
    // Applied once, then suppressed: a K3s restart after the kit's
    // hand-over cannot bring the Cilium HelmChart back.
    assert!(r.nodes[0].path("/var/lib/rancher/k3s/server/manifests/cilium.yaml.skip").exists());
    // The done criteria were checked.
    let states = r.store.node_states(job).await.unwrap();
    let out = match states.get("cluster/verify-fsn1") {
        Some(cz_state::NodeState::Succeeded { output, .. }) => output.clone(),
        other => panic!("{other:?}"),
    };
    assert_eq!(
        out,
        json!({"ready_servers": 3, "ready_nodes": 5, "etcd_members": 3, "coredns_available": 1})
    );
    // The kubeconfig points at the load balancer, stored encrypted.
    let sov = r.store.get_job(job).await.unwrap().unwrap().sovereign_id;
    let kc = r.store.get_secret(&sov.to_string(), "kubeconfig-fsn1").await.unwrap().unwrap();
    assert!(kc.expose().contains(&format!("server: https://{}.20:6443", r.net)));
    let _ = &r.key;
}

#[tokio::test]
async fn every_step_twice_installs_nothing_twice() {
    let phase = cluster::phase(&request().regions);
    let repeat = phase.nodes.iter().map(|n| format!("cluster/{}", n.id)).collect();
    let options = JobOptions {
        faults: FaultPlan { repeat, ..FaultPlan::default() },
        ..JobOptions::default()
    };
    let (r, job) = rig("127.0.42", options).await;
    assert_eq!(drive(&r, job).await, JobStatus::Succeeded, "{}", pause_reason(&r, job).await);
    assert_join_sequence(&r);
}

#[tokio::test]
async fn an_interrupted_phase_resumes_without_a_second_install() {
    let (r, job) = rig("127.0.43", JobOptions::default()).await;
    // Interrupt as soon as the second server's install has begun.
    let cancel = CancellationToken::new();
    let watch = {
        let (cancel, log) = (cancel.clone(), cluster_dir(&r).join("calls.log"));
        async move {
            loop {
                let text = std::fs::read_to_string(&log).unwrap_or_default();
                if text.contains("cp2 install") {
                    cancel.cancel();
                    return;
                }
                tokio::time::sleep(Duration::from_millis(2)).await;
            }
        }
    };
    let (outcome, ()) = tokio::join!(r.engine.drive(job, cancel.clone()), watch);
    assert_eq!(outcome.unwrap(), DriveOutcome::Interrupted);
    // A new engine over the same store ("restart") finishes the job.
    assert_eq!(drive(&r, job).await, JobStatus::Succeeded, "{}", pause_reason(&r, job).await);
    assert_join_sequence(&r);
}

#[tokio::test]
async fn a_tampered_artifact_stops_the_phase_before_any_upload() {
    let (r, job) =
        rig("127.0.44", JobOptions { on_failure: FailurePolicy::Keep, ..JobOptions::default() })
            .await;
    let k3s = r.dir.path().join("artifacts/k3s");
    std::fs::write(&k3s, b"#!/bin/sh\necho pwned\n").unwrap();
    let status = drive(&r, job).await;
    assert!(matches!(status, JobStatus::Paused | JobStatus::Failed), "{status}");
    let why = pause_reason(&r, job).await;
    assert!(why.contains("corrupted or replaced"), "{why}");
    for n in &r.nodes {
        assert!(!n.path("/var/lib/catalyst/artifacts/k3s").exists(), "uploaded to {}", n.ip);
    }
    assert!(installs(&r).is_empty());
}

/// F-12: the kubeconfig handed over is verified through its endpoint (the
/// LB on 6443) by a real TLS handshake against the cluster CA plus an
/// authenticated request; an endpoint whose certificate lacks the LB's
/// address as SAN is refused and nothing is stored.
#[tokio::test]
async fn the_kubeconfig_is_verified_over_tls_and_a_certificate_without_the_san_is_refused() {
    let (r, job) =
        rig_with("127.0.45", JobOptions::default(), Api::Tls { with_san: true }, &[]).await;
    assert_eq!(drive(&r, job).await, JobStatus::Succeeded, "{}", pause_reason(&r, job).await);
    let states = r.store.node_states(job).await.unwrap();
    match states.get("cluster/kubeconfig-fsn1") {
        Some(cz_state::NodeState::Succeeded { output, .. }) => {
            assert_eq!(output["server_version"], "v1.31.4+k3s1");
            assert_eq!(output["endpoint"], "https://127.0.45.20:6443");
        }
        other => panic!("{other:?}"),
    }

    let (r, job) = rig_with(
        "127.0.46",
        JobOptions { on_failure: FailurePolicy::Keep, ..JobOptions::default() },
        Api::Tls { with_san: false },
        &[],
    )
    .await;
    let status = drive(&r, job).await;
    assert!(matches!(status, JobStatus::Paused | JobStatus::Failed), "{status}");
    let why = pause_reason(&r, job).await;
    assert!(why.contains("kubeconfig-fsn1") && why.contains("tls-san"), "{why}");
    assert!(why.contains("127.0.46.20"), "{why}");
    let sov = r.store.get_job(job).await.unwrap().unwrap().sovereign_id;
    assert!(r.store.get_secret(&sov.to_string(), "kubeconfig-fsn1").await.unwrap().is_none());
}

/// The daemon killed in the middle of an install: its SSH connections drop
/// (SIGKILL to the node's per-connection sshd), the install on the node goes
/// on to the end anyway, and the resumed job finds it done instead of
/// installing a second time.
#[tokio::test]
async fn a_dropped_connection_mid_install_neither_aborts_nor_repeats_it() {
    let (r, job) =
        rig_with("127.0.47", JobOptions::default(), Api::Sim, &[("CZ_TEST_INSTALL_DELAY", "2")])
            .await;
    let cancel = CancellationToken::new();
    let watch = {
        let (cancel, log) = (cancel.clone(), cluster_dir(&r).join("calls.log"));
        let cp1 = &r.nodes[0];
        async move {
            loop {
                let text = std::fs::read_to_string(&log).unwrap_or_default();
                if text.contains("cp1 install") {
                    // The daemon dies: its drive stops, its connections drop.
                    cancel.cancel();
                    assert!(cp1.drop_sessions() > 0, "no SSH session to drop");
                    return;
                }
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        }
    };
    let (outcome, ()) = tokio::join!(r.engine.drive(job, cancel.clone()), watch);
    assert!(matches!(outcome.unwrap(), DriveOutcome::Interrupted | DriveOutcome::Stopped(_)));
    // The node finishes the install on its own.
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    while !calls(&r).iter().any(|l| l.starts_with("cp1 joined")) {
        assert!(std::time::Instant::now() < deadline, "the install died with the connection");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(drive(&r, job).await, JobStatus::Succeeded, "{}", pause_reason(&r, job).await);
    assert_join_sequence(&r);
}

/// A server that never answers SSH: the wait is bounded, names the host and
/// what it waited for, pauses the job for an operator, and the other nodes
/// are left as they were (the agent never joined a half-formed cluster).
#[tokio::test]
async fn a_host_that_never_comes_up_pauses_with_its_name_after_the_bound() {
    let (mut r, job) = rig_with(
        "127.0.48",
        JobOptions { on_failure: FailurePolicy::Keep, ..JobOptions::default() },
        Api::Sim,
        &[],
    )
    .await;
    r.nodes[4].stop();
    let status = drive(&r, job).await;
    assert!(matches!(status, JobStatus::Paused | JobStatus::Failed), "{status}");
    let why = pause_reason(&r, job).await;
    assert!(why.contains("ssh-fsn1-w2"), "{why}");
    assert!(
        why.contains("SSH on kube-omani-works-fsn1-w2 (127.0.48.15) to accept connections"),
        "{why}"
    );
    assert!(why.contains("timed out after 3s"), "{why}");
    assert!(!installs(&r).contains_key("w2"));
}

/// A node whose host key changes between its first contact (pinned) and a
/// later step (a reinstalled server, or someone in the middle): the step is
/// refused before any command runs there and the job pauses for an operator.
#[tokio::test]
async fn a_changed_host_key_after_pinning_pauses_the_job_before_any_command() {
    let (mut r, job) = rig_with(
        "127.0.49",
        JobOptions { on_failure: FailurePolicy::Keep, ..JobOptions::default() },
        Api::Sim,
        &[("CZ_TEST_INSTALL_DELAY", "1")],
    )
    .await;
    // Stop once every host is pinned and the first server is installing.
    let cancel = CancellationToken::new();
    let watch = {
        let (cancel, store, log) =
            (cancel.clone(), r.store.clone(), cluster_dir(&r).join("calls.log"));
        async move {
            loop {
                let states = store.node_states(job).await.unwrap();
                let pinned = NODES.iter().all(|(n, _)| {
                    states.get(&format!("cluster/ssh-fsn1-{n}")).is_some_and(|s| s.is_satisfied())
                });
                let text = std::fs::read_to_string(&log).unwrap_or_default();
                if pinned && text.contains("cp1 install") {
                    cancel.cancel();
                    return;
                }
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        }
    };
    let (outcome, ()) = tokio::join!(r.engine.drive(job, cancel.clone()), watch);
    assert_eq!(outcome.unwrap(), DriveOutcome::Interrupted);
    r.nodes[4].reinstall();
    let status = drive(&r, job).await;
    assert!(matches!(status, JobStatus::Paused | JobStatus::Failed), "{status}");
    let why = pause_reason(&r, job).await;
    assert!(why.contains("k3s-fsn1-w2") && why.contains("host key"), "{why}");
    assert!(why.contains(&r.nodes[4].fingerprint()), "{why}");
    assert!(!installs(&r).contains_key("w2"), "a command ran on the re-keyed host");
}

/// The drive interrupted once inside every step of the phase (as soon as
/// the step has started), resumed each time: the job still succeeds with
/// the same join sequence and each node installed exactly once.
#[tokio::test]
async fn interrupted_inside_every_step_each_node_is_installed_once() {
    let (r, job) = rig("127.0.50", JobOptions::default()).await;
    let mut hit = std::collections::BTreeSet::new();
    let mut rounds = 0;
    loop {
        rounds += 1;
        assert!(rounds < 200, "no progress after {rounds} rounds");
        let cancel = CancellationToken::new();
        let drive = r.engine.drive(job, cancel.clone());
        tokio::pin!(drive);
        let watch = async {
            loop {
                let states = r.store.node_states(job).await.unwrap();
                let running = states.iter().find(|(n, s)| {
                    n.starts_with("cluster/")
                        && matches!(s, cz_state::NodeState::Running { .. })
                        && !hit.contains(*n)
                });
                if let Some((n, _)) = running {
                    return n.clone();
                }
                tokio::time::sleep(Duration::from_millis(1)).await;
            }
        };
        let outcome = tokio::select! {
            o = &mut drive => o.unwrap(),
            n = watch => {
                hit.insert(n);
                cancel.cancel();
                drive.await.unwrap()
            }
        };
        match outcome {
            DriveOutcome::Interrupted => continue,
            DriveOutcome::Stopped(JobStatus::Succeeded) => break,
            DriveOutcome::Stopped(s) => panic!("stopped {s}: {}", pause_reason(&r, job).await),
        }
    }
    let steps = cluster::phase(&request().regions).nodes.len();
    assert!(hit.len() >= steps - 2, "interrupted inside {} of {steps} steps: {hit:?}", hit.len());
    assert_join_sequence(&r);
}

/// The driver half of the kill -9 test: a no-op unless the parent test runs
/// this test binary as its child with `CZ_DRIVER_DIR` set. It drives the job
/// and records each step it sees running in `progress.log`.
#[tokio::test]
async fn child_driver() {
    let Ok(dir) = std::env::var("CZ_DRIVER_DIR") else { return };
    let dir = PathBuf::from(dir);
    let net = std::env::var("CZ_DRIVER_NET").unwrap();
    let port: u16 = std::env::var("CZ_DRIVER_PORT").unwrap().parse().unwrap();
    let job: JobId = std::env::var("CZ_DRIVER_JOB").unwrap().parse().unwrap();
    let store = Store::open(StorePaths::in_dir(&dir.join("data"))).await.unwrap();
    let engine = Engine::new(
        store.clone(),
        Arc::new(registry_for(&dir, &net)),
        Arc::new(backend_for(&dir, port)),
    );
    common::kill9::drive_logging_steps(&engine, &store, job, &dir).await;
}

/// Done-when of the cluster issue: the process driving the phase is killed
/// with SIGKILL once inside every step (a fresh process resumes each time,
/// from the store alone), and the cluster still comes up with each node
/// installed exactly once and the join order intact.
#[tokio::test]
async fn kill9_of_the_driver_inside_every_step_installs_each_node_once() {
    if std::env::var("CZ_DRIVER_DIR").is_ok() {
        return;
    }
    let (r, job) = rig("127.0.51", JobOptions::default()).await;
    let dir = r.dir.path().to_owned();
    let (net, port) = (r.net.clone(), r.port);
    let Rig { dir: tmp, nodes, store, engine, .. } = r;
    drop(engine);
    drop(store);
    let env = [
        ("CZ_DRIVER_DIR", dir.display().to_string()),
        ("CZ_DRIVER_NET", net.clone()),
        ("CZ_DRIVER_PORT", port.to_string()),
        ("CZ_DRIVER_JOB", job.to_string()),
    ];
    let (killed, starts, outcome) =
        common::kill9::kill_inside_every_step("child_driver", &env, &dir).await;
    assert_eq!(outcome, "Stopped(Succeeded)");
    let steps = cluster::phase(&request().regions).nodes.len();
    assert!(
        killed.len() >= steps - 2,
        "killed inside {} of {steps} steps: {killed:?}",
        killed.len()
    );
    // The same checks as the other tests, on a rig view of the same dir.
    let store = Store::open(StorePaths::in_dir(&dir.join("data"))).await.unwrap();
    let engine =
        Engine::new(store.clone(), Arc::new(registry()), Arc::new(backend_for(&dir, port)));
    let r = Rig {
        dir: tmp,
        nodes,
        store,
        engine,
        key: ProvisionerKey::generate("x").unwrap(),
        net,
        port,
        _api: None,
    };
    assert_join_sequence(&r);
    eprintln!("kill -9 inside {} steps, {starts} driver processes", killed.len());
}

/// An installer that fails on the node: the job pauses at that node's k3s
/// step with the class, the exit and the tail of the node's install log.
#[tokio::test]
async fn a_failing_installer_pauses_with_the_node_log_tail() {
    let (r, job) = rig_with(
        "127.0.52",
        JobOptions { on_failure: FailurePolicy::Keep, ..JobOptions::default() },
        Api::Sim,
        &[("CZ_TEST_INSTALL_FAIL", "Job for k3s.service failed")],
    )
    .await;
    let status = drive(&r, job).await;
    assert_eq!(status, JobStatus::Paused);
    let why = pause_reason(&r, job).await;
    assert!(why.contains("k3s-fsn1-cp1"), "{why}");
    assert!(why.contains("command-failed") || why.contains("CommandFailed"), "{why}");
    assert!(why.contains("Job for k3s.service failed"), "the node's log tail: {why}");
    assert!(why.contains("runbooks/needs-operator-command-failed.md"), "{why}");
}

/// Serves the stub installer and the "release" binary over HTTP, as
/// get.k3s.io and GitHub would.
async fn release_server() -> (String, tokio::task::JoinHandle<()>) {
    use axum::routing::get;
    let install = std::fs::read(Path::new(STUBS).join("install.sh")).unwrap();
    let k3s = std::fs::read(Path::new(STUBS).join("k3s")).unwrap();
    let app = axum::Router::new()
        .route("/install.sh", get(move || async move { install.clone() }))
        .route("/download/v1.31.4+k3s1/k3s", get(move || async move { k3s.clone() }));
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", l.local_addr().unwrap());
    (url, tokio::spawn(async move { axum::serve(l, app).await.unwrap() }))
}

/// The online source: every node fetches the installer, checks it against
/// the pinned SHA-256, and the installer fetches the pinned release; a
/// mismatching installer is refused on the node and nothing is installed.
#[tokio::test]
async fn online_install_verifies_the_installer_then_downloads_the_pinned_release() {
    use cz_phases::adapters::K3sSource;
    let (url, _srv) = release_server().await;
    let sha = hex::encode(<sha2::Sha256 as sha2::Digest>::digest(
        std::fs::read(Path::new(STUBS).join("install.sh")).unwrap(),
    ));
    let online = |sha: String| K3sSource::Download {
        script_url: format!("{url}/install.sh"),
        script_sha256: sha,
        release_url: url.clone(),
    };
    let (mut r, job) = rig("127.0.53", JobOptions::default()).await;
    let engine = Engine::new(r.store.clone(), Arc::new(registry_for(r.dir.path(), &r.net)), {
        let mut b = backend_for(r.dir.path(), r.port);
        b.k3s = online(sha.clone());
        Arc::new(b)
    });
    r.engine = engine;
    assert_eq!(drive(&r, job).await, JobStatus::Succeeded, "{}", pause_reason(&r, job).await);
    assert_join_sequence_with(&r, false);
    assert!(!r.nodes[0].path("/var/lib/catalyst/artifacts/k3s").exists(), "nothing uploaded");

    let (mut r, job) =
        rig("127.0.54", JobOptions { on_failure: FailurePolicy::Keep, ..JobOptions::default() })
            .await;
    r.engine = Engine::new(r.store.clone(), Arc::new(registry_for(r.dir.path(), &r.net)), {
        let mut b = backend_for(r.dir.path(), r.port);
        b.k3s = online("f".repeat(64));
        Arc::new(b)
    });
    assert_eq!(drive(&r, job).await, JobStatus::Paused);
    let why = pause_reason(&r, job).await;
    assert!(why.contains("k3s-fsn1-cp1") && why.contains("FAILED"), "{why}");
    assert!(installs(&r).is_empty(), "an unverified installer ran");
}
