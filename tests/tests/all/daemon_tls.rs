//! The API over TLS, through the real binary: the daemon serves a test
//! CA's certificate; the CLI submits and follows a job over https trusting
//! that CA (`--ca-cert`) to `succeeded`, and refuses the daemon without it.
//! A plain listen on a non-loopback address is refused at start.

use std::path::Path;
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use cz_testkit::daemon::{TOKEN, binary};

/// A CA and a server certificate for 127.0.0.1 signed by it, as PEM files.
fn pki(dir: &Path) {
    use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, Issuer, KeyPair, SanType};
    let ca_key = KeyPair::generate().unwrap();
    let mut ca = CertificateParams::new(Vec::<String>::new()).unwrap();
    ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca.distinguished_name.push(DnType::CommonName, "catalyst-zero test CA");
    let ca_cert = ca.self_signed(&ca_key).unwrap();
    let issuer = Issuer::new(ca, &ca_key);
    let key = KeyPair::generate().unwrap();
    let mut sp = CertificateParams::new(Vec::<String>::new()).unwrap();
    sp.subject_alt_names = vec![SanType::IpAddress([127, 0, 0, 1].into())];
    let cert = sp.signed_by(&key, &issuer).unwrap();
    std::fs::write(dir.join("ca.pem"), ca_cert.pem()).unwrap();
    std::fs::write(dir.join("tls.crt"), cert.pem()).unwrap();
    std::fs::write(dir.join("tls.key"), key.serialize_pem()).unwrap();
}

fn serve(dir: &Path, listen: &str, extra: &[&str]) -> Child {
    Command::new(binary())
        .args(["serve", "--backend", "sim", "--sim-latency", "0", "--listen", listen, "--data-dir"])
        .arg(dir.join("data"))
        .args(extra)
        .env("CATALYST_ZERO_OPERATOR_TOKEN", TOKEN)
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap()
}

fn cli(args: &[&str]) -> Output {
    Command::new(binary())
        .args(args)
        .env("CATALYST_ZERO_TOKEN", TOKEN)
        .current_dir(concat!(env!("CARGO_MANIFEST_DIR"), "/.."))
        .output()
        .unwrap()
}

#[test]
fn the_cli_follows_a_job_over_https_and_a_plain_public_listen_is_refused() {
    cz_testkit::crypto();
    let dir = tempfile::tempdir().unwrap();
    pki(dir.path());
    let port = cz_testkit::free_port();
    let listen = format!("127.0.0.1:{port}");
    let (cert, key) = (dir.path().join("tls.crt"), dir.path().join("tls.key"));
    let mut daemon = serve(
        dir.path(),
        &listen,
        &["--tls-cert", cert.to_str().unwrap(), "--tls-key", key.to_str().unwrap()],
    );
    let deadline = Instant::now() + Duration::from_secs(30);
    while std::net::TcpStream::connect(&listen).is_err() {
        assert!(Instant::now() < deadline, "the daemon did not listen");
        std::thread::sleep(Duration::from_millis(20));
    }
    let server = format!("https://{listen}");
    let ca = dir.path().join("ca.pem");

    // Without the CA the certificate is not trusted.
    let out = cli(&["list", "--server", &server]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "an untrusted certificate was accepted");
    assert!(err.contains("cannot reach the daemon"), "{err}");
    // With it, the API answers.
    let out = cli(&[
        "list",
        "--server",
        &server,
        "--ca-cert",
        dir.path().join("ca.pem").to_str().unwrap(),
    ]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    // With it, submit and follow to the end.
    let out = cli(&[
        "submit",
        "examples/sovereign.toml",
        "--follow",
        "--server",
        &server,
        "--ca-cert",
        ca.to_str().unwrap(),
    ]);
    let text =
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "submit --follow over https failed: {text}");
    assert!(text.contains("succeeded"), "{text}");
    // Plain HTTP on that port gets no API answer.
    let plain = cli(&["list", "--server", &format!("http://{listen}")]);
    assert!(!plain.status.success(), "plain HTTP was answered on the TLS port");
    let _ = daemon.kill();
    let _ = daemon.wait();

    // A non-loopback listen without TLS is refused, naming the way out.
    let mut refused = serve(dir.path(), "0.0.0.0:0", &[]);
    let status = refused.wait().unwrap();
    let mut err = String::new();
    std::io::Read::read_to_string(&mut refused.stderr.take().unwrap(), &mut err).unwrap();
    assert!(!status.success(), "a plain public listen started");
    assert!(err.contains("--insecure-listen") && err.contains("--tls-cert"), "{err}");
}
