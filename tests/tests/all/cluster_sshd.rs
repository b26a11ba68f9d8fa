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

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use cz_adapters::kube::KubeClient;
use cz_adapters::ssh::SshClient;
use cz_adapters::{Backend, K3sSource, ProvisionerKey};
use cz_engine::PhaseDef;
use cz_engine::{ActionId, DriveOutcome, FailurePolicy, FaultPlan, JobOptions, PhaseBuilder, Plan};
use cz_phases::Registry;
use cz_phases::cluster::{self, ClusterVerified, Kubeconfig};
use cz_phases::infra::{LoadBalancer, Outputs, PROVISIONER_KEY, Server};
use cz_state::{JobId, JobStatus, NodeState};
use cz_testkit::requests::sample_request;
use cz_testkit::rig::{Rig, SimRigExt, Stub, rig_in, sim_backend_in, step_output};
use cz_testkit::sshd::Sshd;
use tokio_util::sync::CancellationToken;

const STUBS: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/k3s-stub");
const NODES: [(&str, &str); 5] =
    [("cp1", "11"), ("cp2", "12"), ("cp3", "13"), ("w1", "14"), ("w2", "15")];

/// `infra/outputs-fsn1` as the infra phase would have left it.
const OUTPUTS: ActionId<()> = ActionId::new("test.outputs");

/// Five nodes on a /24 of their own, and a job of the infra stub + the
/// cluster phase in a rig in `dir`.
struct Cluster {
    rig: Rig<Backend>,
    job: JobId,
    nodes: Vec<Sshd>,
    net: String,
    port: u16,
    /// The cluster's API endpoint (the load balancer on 6443).
    api: ApiServer,
    /// Last: removed after the rig and the nodes are gone.
    dir: tempfile::TempDir,
}

impl Cluster {
    fn dir(&self) -> &Path {
        self.dir.path()
    }

    async fn drive(&self) -> JobStatus {
        self.rig.drive(self.job).await
    }

    async fn why(&self) -> String {
        self.rig.stop_reason(self.job).await.to_string()
    }
}

fn cluster_dir(dir: &Path) -> PathBuf {
    dir.join("cluster")
}

/// A free port on all five loopback addresses of `net`.
fn port_for(net: &str) -> u16 {
    let ips: Vec<String> = NODES.iter().map(|(_, h)| format!("{net}.{h}")).collect();
    cz_testkit::sshd::free_port_on(&ips)
}

/// Copies the stubs into an artifact directory with their SHA256SUMS.
pub(crate) fn artifact_dir(root: &Path) -> PathBuf {
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
/// `port`, the artifact directory under `dir`, short bounds, and the real
/// Kubernetes client.
///
/// The kubeconfig's endpoint check is the real client's: on an `https`
/// endpoint, a TLS handshake against the kubeconfig's CA plus an
/// authenticated `GET /version`, which the test's apiserver on the load
/// balancer's address answers. (The sim's Kubernetes answers the version
/// only for clusters its own simulated hosts installed; these nodes are
/// real `sshd`s.)
fn backend_for(dir: &Path, port: u16) -> Backend {
    let mut backend = sim_backend_in(dir);
    backend.ssh = Arc::new(SshClient::new(Duration::from_secs(5), Duration::from_secs(60)));
    backend.k3s = K3sSource::AirGap { dir: dir.join("artifacts") };
    backend.ssh_port = port;
    backend.poll = Duration::from_millis(20);
    backend.bounds.host_boot = Duration::from_secs(3);
    backend.kube = Arc::new(KubeClient);
    backend
}

/// Registers `test.outputs`, the infra outputs pointing at the nodes, and
/// a `test.server-<name>` / `test.load-balancer` per object: what
/// `infra/apply-fsn1` would have released.
fn register_outputs(reg: &mut Registry, dir: &Path, net: &str) {
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
    for s in &servers {
        let short = s.name.rsplit('-').next().unwrap();
        let name: &'static str = Box::leak(format!("test.server-{short}").into_boxed_str());
        reg.register_dyn(name, Stub::new(s.clone()).action());
    }
    let lb = LoadBalancer { id: 99, ipv4: format!("{net}.20") };
    reg.register_dyn("test.load-balancer", Stub::new(lb).action());
    let outputs = Outputs {
        location: "fsn1".into(),
        servers,
        load_balancer: LoadBalancer { id: 99, ipv4: format!("{net}.20") },
        workspace: dir.join("ws"),
    };
    reg.register_dyn(OUTPUTS.name, Stub::new(outputs).action());
}

/// A rig over the store in `dir`, with the backend and actions of these
/// tests.
async fn rig_for(dir: &Path, net: &str, port: u16) -> Rig<Backend> {
    rig_in(dir, |reg| register_outputs(reg, dir, net), |d| backend_for(d, port)).await
}

fn infra_phase() -> PhaseDef {
    let mut infra = PhaseBuilder::new("infra");
    infra.step("outputs-fsn1", OUTPUTS, &[], ());
    let mut phase = infra.build();
    let mut stub = |id: String, action: String| {
        let mut n = phase.nodes[0].clone();
        (n.id, n.action) = (id, action);
        phase.nodes.push(n);
    };
    for (name, _) in NODES {
        stub(cz_phases::infra::server_node(&format!("fsn1-{name}")), format!("test.server-{name}"));
    }
    stub(cz_phases::infra::load_balancer_node("fsn1"), "test.load-balancer".into());
    phase
}

fn cluster_phase() -> PhaseDef {
    cluster::phase(&sample_request("kube", 3, 2).regions)
}

/// `net` is a /24 of 127.0.0.0/8 of its own per test (tests run in parallel).
async fn start(net: &str, options: JobOptions) -> Cluster {
    start_with(net, options, true, &[]).await
}

/// `with_san`: whether the apiserver's certificate has the load
/// balancer's address as SAN; `extra_env`: the nodes' session environment
/// (the stubs' knobs).
async fn start_with(
    net: &str,
    options: JobOptions,
    with_san: bool,
    extra_env: &[(&str, &str)],
) -> Cluster {
    use base64::Engine as _;
    cz_testkit::crypto();
    let dir = tempfile::tempdir().unwrap();
    let key = ProvisionerKey::generate("catalyst-zero@kube").unwrap();
    let port = port_for(net);
    let calls = cluster_dir(dir.path());
    std::fs::create_dir_all(&calls).unwrap();
    let server = api_server(&format!("{net}.20"), with_san).await;
    let b64 = |s: &str| base64::engine::general_purpose::STANDARD.encode(s);
    let pki: Vec<(&str, String)> = vec![
        ("CZ_TEST_CA_B64", b64(&server.ca_pem)),
        ("CZ_TEST_CERT_B64", b64(&server.client_cert_pem)),
        ("CZ_TEST_KEY_B64", b64(&server.client_key_pem)),
    ];
    let nodes: Vec<Sshd> = NODES
        .iter()
        .map(|(name, h)| {
            let ip = format!("{net}.{h}");
            let mut env: Vec<(&str, &str)> = vec![
                ("CZ_NODE_NAME", name),
                ("CZ_NODE_IP", &ip),
                ("CZ_TEST_CLUSTER", calls.to_str().unwrap()),
            ];
            env.extend(pki.iter().map(|(k, v)| (*k, v.as_str())));
            env.extend(extra_env.iter().copied());
            Sshd::start_at(&ip, port, &[&key], &env)
        })
        .collect();
    artifact_dir(dir.path());

    let rig = rig_for(dir.path(), net, port).await;
    let req = sample_request("kube", 3, 2);
    let plan = Plan { phases: vec![infra_phase(), cluster::phase(&req.regions)] };
    let (sov, job) = rig.submit_plan(&req, &plan, options).await;
    // The provisioner key the infra phase would have made and authorized.
    rig.store.put_secret(&sov.to_string(), PROVISIONER_KEY, &key.private).await.unwrap();
    Cluster { rig, job, nodes, net: net.to_owned(), port, api: server, dir }
}

fn calls(dir: &Path) -> Vec<String> {
    std::fs::read_to_string(cluster_dir(dir).join("calls.log"))
        .unwrap_or_default()
        .lines()
        .map(str::to_owned)
        .collect()
}

/// What each node logged, in order (the `k3s` stub's calls left out).
fn installs(dir: &Path) -> BTreeMap<String, Vec<String>> {
    let mut m: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for l in calls(dir) {
        let (node, what) = l.split_once(' ').unwrap();
        if !what.starts_with("k3s ") {
            m.entry(node.to_owned()).or_default().push(what.to_owned());
        }
    }
    m
}

fn assert_join_sequence(c: &Cluster) {
    assert_join_sequence_in(c.dir(), &c.net, true);
}

/// The join sequence the nodes of `net` logged under `dir`.
fn assert_join_sequence_in(dir: &Path, net: &str, air_gap: bool) {
    let mut i = installs(dir);
    if !air_gap {
        // Online: each node downloaded the pinned binary, once.
        for (node, lines) in i.iter_mut() {
            let dl = lines.iter().filter(|l| l.starts_with("downloaded ")).count();
            assert_eq!(dl, 1, "{node}: {lines:?}");
            lines.retain(|l| !l.starts_with("downloaded "));
        }
    }
    let v = format!("version=v1.31.4+k3s1 skip_download={air_gap}");
    let first = format!("https://{net}.11:6443");
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
    let order: Vec<String> = calls(dir)
        .iter()
        .filter(|l| l.contains(" joined role=server"))
        .map(|l| l[..3].to_owned())
        .collect();
    assert_eq!(order, vec!["cp1", "cp2", "cp3"]);
}

fn keep() -> JobOptions {
    JobOptions { on_failure: FailurePolicy::Keep, ..JobOptions::default() }
}

#[tokio::test]
async fn three_servers_and_two_agents_join_in_order_over_real_ssh() {
    let c = start("127.0.41", JobOptions::default()).await;
    assert_eq!(c.drive().await, JobStatus::Succeeded, "{}", c.why().await);
    assert_join_sequence(&c);
    // Air-gap artifacts on every node, as uploaded (verified checksums).
    for n in &c.nodes {
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
        c.nodes[0].path("/var/lib/rancher/k3s/server/manifests/cilium.yaml"),
    )
    .unwrap();
    assert!(cilium.contains(&format!("k8sServiceHost: \"{}.11\"", c.net)), "{cilium}");
    assert!(!c.nodes[1].path("/var/lib/rancher/k3s/server/manifests/cilium.yaml").exists());
    // Applied once, then suppressed: a K3s restart after the kit's
    // hand-over cannot bring the Cilium HelmChart back.
    assert!(c.nodes[0].path("/var/lib/rancher/k3s/server/manifests/cilium.yaml.skip").exists());
    // The done criteria were checked.
    let out: ClusterVerified = step_output(&c.rig.store, c.job, "cluster/verify-fsn1").await;
    let want =
        ClusterVerified { ready_servers: 3, ready_nodes: 5, etcd_members: 3, coredns_available: 1 };
    assert_eq!(out, want);
    // The kubeconfig points at the load balancer, stored encrypted.
    let sov = c.rig.job(c.job).await.sovereign_id;
    let kc = c.rig.store.get_secret(&sov.to_string(), "kubeconfig-fsn1").await.unwrap().unwrap();
    assert!(kc.expose().contains(&format!("server: https://{}.20:6443", c.net)));
}

#[tokio::test]
async fn every_step_twice_installs_nothing_twice() {
    // Node ids are full (`cluster/<step>`): every step of the phase.
    let repeat = cluster_phase().nodes.iter().map(|n| n.id.clone()).collect();
    let options = JobOptions {
        faults: FaultPlan { repeat, ..FaultPlan::default() },
        ..JobOptions::default()
    };
    let c = start("127.0.42", options).await;
    assert_eq!(c.drive().await, JobStatus::Succeeded, "{}", c.why().await);
    assert_join_sequence(&c);
}

#[tokio::test]
async fn an_interrupted_phase_resumes_without_a_second_install() {
    let c = start("127.0.43", JobOptions::default()).await;
    // Interrupt as soon as the second server's install has begun.
    let cancel = CancellationToken::new();
    let watch = {
        let (cancel, log) = (cancel.clone(), cluster_dir(c.dir()).join("calls.log"));
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
    let (outcome, ()) = tokio::join!(c.rig.engine.drive(c.job, cancel.clone()), watch);
    assert_eq!(outcome.unwrap(), DriveOutcome::Interrupted);
    // A new drive over the same store ("restart") finishes the job.
    assert_eq!(c.drive().await, JobStatus::Succeeded, "{}", c.why().await);
    assert_join_sequence(&c);
}

#[tokio::test]
async fn a_tampered_artifact_stops_the_phase_before_any_upload() {
    let c = start("127.0.44", keep()).await;
    let k3s = c.dir().join("artifacts/k3s");
    std::fs::write(&k3s, b"#!/bin/sh\necho pwned\n").unwrap();
    let status = c.drive().await;
    assert!(matches!(status, JobStatus::Paused | JobStatus::Failed), "{status}");
    let why = c.why().await;
    assert!(why.contains("corrupted or replaced"), "{why}");
    for n in &c.nodes {
        assert!(!n.path("/var/lib/catalyst/artifacts/k3s").exists(), "uploaded to {}", n.ip);
    }
    assert!(installs(c.dir()).is_empty());
}

/// The kubeconfig handed over is verified through its endpoint (the LB on
/// 6443) by a real TLS handshake against the cluster CA plus an
/// authenticated request; an endpoint whose certificate lacks the LB's
/// address as SAN is refused and nothing is stored.
#[tokio::test]
async fn the_kubeconfig_is_verified_over_tls_and_a_certificate_without_the_san_is_refused() {
    let c = start_with("127.0.45", JobOptions::default(), true, &[]).await;
    assert_eq!(c.drive().await, JobStatus::Succeeded, "{}", c.why().await);
    let out: Kubeconfig = step_output(&c.rig.store, c.job, "cluster/kubeconfig-fsn1").await;
    assert_eq!(out.server_version, "v1.31.4+k3s1");
    assert_eq!(out.endpoint, "https://127.0.45.20:6443");

    let c = start_with("127.0.46", keep(), false, &[]).await;
    let status = c.drive().await;
    assert!(matches!(status, JobStatus::Paused | JobStatus::Failed), "{status}");
    let why = c.why().await;
    assert!(why.contains("kubeconfig-fsn1") && why.contains("tls-san"), "{why}");
    assert!(why.contains("127.0.46.20"), "{why}");
    let sov = c.rig.job(c.job).await.sovereign_id;
    assert!(c.rig.store.get_secret(&sov.to_string(), "kubeconfig-fsn1").await.unwrap().is_none());
}

/// The daemon killed in the middle of an install: its SSH connections drop
/// (SIGKILL to the node's per-connection sshd), the install on the node goes
/// on to the end anyway, and the resumed job finds it done instead of
/// installing a second time.
#[tokio::test]
async fn a_dropped_connection_mid_install_neither_aborts_nor_repeats_it() {
    let delay = [("CZ_TEST_INSTALL_DELAY", "2")];
    let c = start_with("127.0.47", JobOptions::default(), true, &delay).await;
    let cancel = CancellationToken::new();
    let watch = {
        let (cancel, log) = (cancel.clone(), cluster_dir(c.dir()).join("calls.log"));
        let cp1 = &c.nodes[0];
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
    let (outcome, ()) = tokio::join!(c.rig.engine.drive(c.job, cancel.clone()), watch);
    assert!(matches!(outcome.unwrap(), DriveOutcome::Interrupted | DriveOutcome::Stopped(_)));
    // The node finishes the install on its own.
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    while !calls(c.dir()).iter().any(|l| l.starts_with("cp1 joined")) {
        assert!(std::time::Instant::now() < deadline, "the install died with the connection");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(c.drive().await, JobStatus::Succeeded, "{}", c.why().await);
    assert_join_sequence(&c);
}

/// A server that never answers SSH: the wait is bounded, names the host and
/// what it waited for, pauses the job for an operator, and the other nodes
/// are left as they were (the agent never joined a half-formed cluster).
#[tokio::test]
async fn a_host_that_never_comes_up_pauses_with_its_name_after_the_bound() {
    let mut c = start_with("127.0.48", keep(), true, &[]).await;
    c.nodes[4].stop();
    let status = c.drive().await;
    assert!(matches!(status, JobStatus::Paused | JobStatus::Failed), "{status}");
    let why = c.why().await;
    assert!(why.contains("ssh-fsn1-w2"), "{why}");
    assert!(
        why.contains("SSH on kube-omani-works-fsn1-w2 (127.0.48.15) to accept connections"),
        "{why}"
    );
    assert!(why.contains("timed out after 3s"), "{why}");
    // This world's servers are hosts the cloud does not list: asked why
    // the host is silent, the cloud says it has no such server.
    assert!(why.contains("is gone") && why.contains("--phase infra"), "{why}");
    assert!(!installs(c.dir()).contains_key("w2"));
}

/// A node whose host key changes between its first contact (pinned) and a
/// later step (a reinstalled server, or someone in the middle): the step is
/// refused before any command runs there and the job pauses for an operator.
#[tokio::test]
async fn a_changed_host_key_after_pinning_pauses_the_job_before_any_command() {
    let delay = [("CZ_TEST_INSTALL_DELAY", "1")];
    let mut c = start_with("127.0.49", keep(), true, &delay).await;
    // Stop once every host is pinned and the first server is installing.
    let cancel = CancellationToken::new();
    let watch = {
        let (cancel, store, log, job) =
            (cancel.clone(), c.rig.store.clone(), cluster_dir(c.dir()).join("calls.log"), c.job);
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
    let (outcome, ()) = tokio::join!(c.rig.engine.drive(c.job, cancel.clone()), watch);
    assert_eq!(outcome.unwrap(), DriveOutcome::Interrupted);
    c.nodes[4].reinstall();
    let status = c.drive().await;
    assert!(matches!(status, JobStatus::Paused | JobStatus::Failed), "{status}");
    let why = c.why().await;
    assert!(why.contains("k3s-fsn1-w2") && why.contains("host key"), "{why}");
    assert!(why.contains(&c.nodes[4].fingerprint()), "{why}");
    assert!(!installs(c.dir()).contains_key("w2"), "a command ran on the re-keyed host");
}

/// The drive interrupted once inside every step of the phase (as soon as
/// the step has started), resumed each time: the job still succeeds with
/// the same join sequence and each node installed exactly once.
#[tokio::test]
async fn interrupted_inside_every_step_each_node_is_installed_once() {
    let c = start("127.0.50", JobOptions::default()).await;
    let mut hit = std::collections::BTreeSet::new();
    let mut rounds = 0;
    loop {
        rounds += 1;
        assert!(rounds < 200, "no progress after {rounds} rounds");
        let cancel = CancellationToken::new();
        let drive = c.rig.engine.drive(c.job, cancel.clone());
        tokio::pin!(drive);
        let watch = async {
            loop {
                let states = c.rig.store.node_states(c.job).await.unwrap();
                let running = states.iter().find(|(n, s)| {
                    n.starts_with("cluster/")
                        && matches!(s, NodeState::Running { .. })
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
            DriveOutcome::Interrupted | DriveOutcome::LeaseLost => continue,
            DriveOutcome::Stopped(JobStatus::Succeeded) => break,
            DriveOutcome::Stopped(s) => panic!("stopped {s}: {}", c.why().await),
        }
    }
    let steps = cluster_phase().nodes.len();
    assert!(hit.len() >= steps - 2, "interrupted inside {} of {steps} steps: {hit:?}", hit.len());
    assert_join_sequence(&c);
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
    cz_testkit::crypto();
    let r = rig_for(&dir, &net, port).await;
    cz_testkit::kill9::drive_logging_steps(&r.engine, &r.store, job, &dir).await;
}

/// The process driving the phase is killed with SIGKILL once inside every
/// step (a fresh process resumes each time, from the store alone), and the
/// cluster still comes up with each node installed exactly once and the
/// join order intact.
#[tokio::test]
async fn kill9_of_the_driver_inside_every_step_installs_each_node_once() {
    if std::env::var("CZ_DRIVER_DIR").is_ok() {
        return;
    }
    let c = start("127.0.51", JobOptions::default()).await;
    // The nodes and the directory stay; this process drives nothing.
    // The parent keeps the nodes, the cluster's API endpoint and the
    // directory; its children drive.
    let Cluster { rig, job, nodes, net, port, dir, api } = c;
    drop(rig);
    let env = [
        ("CZ_DRIVER_DIR", dir.path().display().to_string()),
        ("CZ_DRIVER_NET", net.clone()),
        ("CZ_DRIVER_PORT", port.to_string()),
        ("CZ_DRIVER_JOB", job.to_string()),
    ];
    let (killed, starts, outcome) =
        cz_testkit::kill9::kill_inside_every_step("cluster_sshd::child_driver", &env, dir.path())
            .await;
    assert_eq!(outcome, "Stopped(Succeeded)");
    let steps = cluster_phase().nodes.len();
    assert!(
        killed.len() >= steps - 2,
        "killed inside {} of {steps} steps: {killed:?}",
        killed.len()
    );
    // The same checks as the other tests, on what the nodes logged.
    assert_join_sequence_in(dir.path(), &net, true);
    drop((nodes, api));
    eprintln!("kill -9 inside {} steps, {starts} driver processes", killed.len());
}

/// An installer that fails on the node: the job pauses at that node's k3s
/// step with the class, the exit and the tail of the node's install log.
#[tokio::test]
async fn a_failing_installer_pauses_with_the_node_log_tail() {
    let fail = [("CZ_TEST_INSTALL_FAIL", "Job for k3s.service failed")];
    let c = start_with("127.0.52", keep(), true, &fail).await;
    assert_eq!(c.drive().await, JobStatus::Paused);
    let why = c.why().await;
    assert!(why.contains("k3s-fsn1-cp1"), "{why}");
    assert!(why.contains("command-failed") || why.contains("CommandFailed"), "{why}");
    assert!(why.contains("Job for k3s.service failed"), "the node's log tail: {why}");
    assert!(why.contains("runbooks/needs-operator-command-failed.md"), "{why}");
}

/// Serves the stub installer and the "release" binary over HTTP, as
/// get.k3s.io and GitHub would: a minimal HTTP/1.1 server, one response
/// per connection.
async fn release_server() -> (String, tokio::task::JoinHandle<()>) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let install = std::fs::read(Path::new(STUBS).join("install.sh")).unwrap();
    let k3s = std::fs::read(Path::new(STUBS).join("k3s")).unwrap();
    let files = Arc::new(BTreeMap::from([
        ("/install.sh".to_owned(), install),
        ("/download/v1.31.4+k3s1/k3s".to_owned(), k3s),
    ]));
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", l.local_addr().unwrap());
    let task = tokio::spawn(async move {
        loop {
            let Ok((mut tcp, _)) = l.accept().await else { return };
            let files = files.clone();
            tokio::spawn(async move {
                let mut req = Vec::new();
                let mut buf = [0u8; 4096];
                while !req.windows(4).any(|w| w == b"\r\n\r\n") {
                    match tcp.read(&mut buf).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => req.extend_from_slice(&buf[..n]),
                    }
                }
                let line = String::from_utf8_lossy(&req);
                let path = line.split_whitespace().nth(1).unwrap_or_default();
                let (status, body) = match files.get(path) {
                    Some(b) => ("200 OK", b.as_slice()),
                    None => ("404 Not Found", &b""[..]),
                };
                let head = format!(
                    "HTTP/1.1 {status}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
                    body.len()
                );
                let _ = tcp.write_all(head.as_bytes()).await;
                let _ = tcp.write_all(body).await;
                let _ = tcp.shutdown().await;
            });
        }
    });
    (url, task)
}

/// The online source: every node fetches the installer, checks it against
/// the pinned SHA-256, and the installer fetches the pinned release; a
/// mismatching installer is refused on the node and nothing is installed.
#[tokio::test]
async fn online_install_verifies_the_installer_then_downloads_the_pinned_release() {
    let (url, _srv) = release_server().await;
    let sha = hex::encode(<sha2::Sha256 as sha2::Digest>::digest(
        std::fs::read(Path::new(STUBS).join("install.sh")).unwrap(),
    ));
    let online = |sha: String| K3sSource::Download {
        script_url: format!("{url}/install.sh"),
        script_sha256: sha,
        release_url: url.clone(),
    };
    // The same job, driven by an engine whose nodes fetch K3s online.
    let online_rig = |c: &Cluster, source: K3sSource| {
        let (dir, net, port) = (c.dir().to_owned(), c.net.clone(), c.port);
        async move {
            let reg = |r: &mut Registry| register_outputs(r, &dir, &net);
            rig_in(&dir, reg, |d| {
                let mut b = backend_for(d, port);
                b.k3s = source;
                b
            })
            .await
        }
    };
    let mut c = start("127.0.53", JobOptions::default()).await;
    c.rig = online_rig(&c, online(sha.clone())).await;
    assert_eq!(c.drive().await, JobStatus::Succeeded, "{}", c.why().await);
    assert_join_sequence_in(c.dir(), &c.net, false);
    assert!(!c.nodes[0].path("/var/lib/catalyst/artifacts/k3s").exists(), "nothing uploaded");

    let mut c = start("127.0.54", keep()).await;
    c.rig = online_rig(&c, online("f".repeat(64))).await;
    assert_eq!(c.drive().await, JobStatus::Paused);
    let why = c.why().await;
    assert!(why.contains("k3s-fsn1-cp1") && why.contains("FAILED"), "{why}");
    assert!(installs(c.dir()).is_empty(), "an unverified installer ran");
}
