//! The fake API server over TLS, as K3s serves its API: its own CA, a
//! serving certificate for the loopback address, and client certificates
//! as the admin's credentials. Client certificates are optional at the
//! handshake, as on a real API server: a client without one must bring a
//! bearer token ([`super::kube_auth`]), which is how OpenBao's Kubernetes
//! auth and the pods' service accounts reach it.
//!
//! The certificates are made with rcgen; the handshake is rustls with the
//! aws-lc-rs provider named explicitly (never the process default, so no
//! second provider is installed).

use std::net::SocketAddr;
use std::sync::Arc;

use axum::extract::connect_info::Connected;
use axum::serve::{IncomingStream, Listener};
use base64::Engine as _;
use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    SanType,
};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tokio_rustls::server::TlsStream;

/// The cluster's PKI and its admin credentials.
pub struct Pki {
    /// The cluster CA (what a kubeconfig's `certificate-authority-data` holds).
    pub ca_pem: String,
    /// The admin's client certificate and key (`system:admin`,
    /// `system:masters`).
    pub client_cert_pem: String,
    pub client_key_pem: String,
    /// Signs service-account tokens (RS256), as the API server's
    /// `--service-account-signing-key-file` does.
    pub(super) sa_key: KeyPair,
    server: Arc<rustls::ServerConfig>,
}

impl std::fmt::Debug for Pki {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Pki").finish_non_exhaustive()
    }
}

impl Pki {
    /// A new CA, a serving certificate for 127.0.0.1 and the admin's.
    pub fn new() -> Pki {
        Pki::for_address(None)
    }

    /// As [`Pki::new`], the serving certificate also valid for `ip` (the
    /// address a test's cluster is reached at: its load balancer's, as
    /// K3s's `tls-san` puts it in the certificate).
    pub fn for_address(ip: Option<std::net::IpAddr>) -> Pki {
        let bad = |what: &str, e: &dyn std::fmt::Display| -> ! { panic!("the fake's {what}: {e}") };
        let ca_key = KeyPair::generate().unwrap_or_else(|e| bad("CA key", &e));
        let mut ca = CertificateParams::new(Vec::<String>::new()).unwrap_or_else(|e| bad("CA", &e));
        ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        ca.distinguished_name.push(DnType::CommonName, "k3s-server-ca");
        let ca_cert = ca.self_signed(&ca_key).unwrap_or_else(|e| bad("CA", &e));
        let issuer = Issuer::new(ca, &ca_key);

        let server_key = KeyPair::generate().unwrap_or_else(|e| bad("server key", &e));
        let mut sp =
            CertificateParams::new(Vec::<String>::new()).unwrap_or_else(|e| bad("cert", &e));
        sp.distinguished_name.push(DnType::CommonName, "k3s");
        sp.subject_alt_names = vec![
            SanType::IpAddress([127, 0, 0, 1].into()),
            SanType::DnsName("localhost".try_into().unwrap_or_else(|e| bad("SAN", &e))),
            SanType::DnsName(
                "kubernetes.default.svc".try_into().unwrap_or_else(|e| bad("SAN", &e)),
            ),
        ];
        if let Some(ip) = ip {
            sp.subject_alt_names.push(SanType::IpAddress(ip));
        }
        let server_cert = sp.signed_by(&server_key, &issuer).unwrap_or_else(|e| bad("cert", &e));

        let client_key = KeyPair::generate().unwrap_or_else(|e| bad("client key", &e));
        let mut cp =
            CertificateParams::new(Vec::<String>::new()).unwrap_or_else(|e| bad("cert", &e));
        cp.distinguished_name.push(DnType::CommonName, "system:admin");
        cp.distinguished_name.push(DnType::OrganizationName, "system:masters");
        cp.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
        let client_cert = cp.signed_by(&client_key, &issuer).unwrap_or_else(|e| bad("cert", &e));

        let sa_key = KeyPair::generate_rsa_for(&rcgen::PKCS_RSA_SHA256, rcgen::RsaKeySize::_2048)
            .unwrap_or_else(|e| bad("service-account key", &e));

        let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
        let mut roots = rustls::RootCertStore::empty();
        roots.add(ca_cert.der().clone()).unwrap_or_else(|e| bad("roots", &e));
        let verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(
            Arc::new(roots),
            provider.clone(),
        )
        .allow_unauthenticated()
        .build()
        .unwrap_or_else(|e| bad("client verifier", &e));
        let key = rustls::pki_types::PrivateKeyDer::Pkcs8(server_key.serialize_der().into());
        let server = rustls::ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .unwrap_or_else(|e| bad("TLS versions", &e))
            .with_client_cert_verifier(verifier)
            .with_single_cert(vec![server_cert.der().clone(), ca_cert.der().clone()], key)
            .unwrap_or_else(|e| bad("TLS config", &e));
        Pki {
            ca_pem: ca_cert.pem(),
            client_cert_pem: client_cert.pem(),
            client_key_pem: client_key.serialize_pem(),
            sa_key,
            server: Arc::new(server),
        }
    }

    /// An admin kubeconfig for the API at `server`.
    pub fn kubeconfig(&self, server: &str) -> String {
        let b = |s: &str| base64::engine::general_purpose::STANDARD.encode(s);
        format!(
            "apiVersion: v1\nkind: Config\nclusters:\n- cluster:\n    server: {server}\n    \
             certificate-authority-data: {}\n  name: fake\ncontexts:\n- context:\n    cluster: \
             fake\n    user: admin\n  name: fake\ncurrent-context: fake\nusers:\n- name: admin\n  \
             user:\n    client-certificate-data: {}\n    client-key-data: {}\n",
            b(&self.ca_pem),
            b(&self.client_cert_pem),
            b(&self.client_key_pem)
        )
    }
}

impl Default for Pki {
    fn default() -> Self {
        Pki::new()
    }
}

/// Who is at the other end of a connection.
#[derive(Clone, Copy, Debug)]
pub struct Peer {
    pub addr: SocketAddr,
    /// A client certificate from the cluster CA was presented (and
    /// verified in the handshake).
    pub client_cert: bool,
}

/// Accepts TCP connections and completes their TLS handshakes in the
/// background; [`Listener::accept`] hands out the finished ones.
pub struct TlsListener {
    rx: mpsc::Receiver<(TlsStream<TcpStream>, Peer)>,
    local: SocketAddr,
}

impl TlsListener {
    pub fn new(tcp: TcpListener, pki: &Pki) -> TlsListener {
        let local = tcp.local_addr().expect("a bound address");
        let acceptor = tokio_rustls::TlsAcceptor::from(pki.server.clone());
        let (tx, rx) = mpsc::channel(64);
        tokio::spawn(async move {
            loop {
                let Ok((stream, addr)) = tcp.accept().await else { continue };
                let (acceptor, tx) = (acceptor.clone(), tx.clone());
                tokio::spawn(async move {
                    // A failed handshake (wrong CA, no TLS) is the client's.
                    let Ok(tls) = acceptor.accept(stream).await else { return };
                    let client_cert =
                        tls.get_ref().1.peer_certificates().is_some_and(|c| !c.is_empty());
                    let _ = tx.send((tls, Peer { addr, client_cert })).await;
                });
            }
        });
        TlsListener { rx, local }
    }
}

impl Listener for TlsListener {
    type Io = TlsStream<TcpStream>;
    type Addr = Peer;

    async fn accept(&mut self) -> (Self::Io, Self::Addr) {
        match self.rx.recv().await {
            Some(c) => c,
            // The accept loop ended: no more connections, ever.
            None => std::future::pending().await,
        }
    }

    fn local_addr(&self) -> std::io::Result<Self::Addr> {
        Ok(Peer { addr: self.local, client_cert: false })
    }
}

impl Connected<IncomingStream<'_, TlsListener>> for Peer {
    fn connect_info(stream: IncomingStream<'_, TlsListener>) -> Self {
        *stream.remote_addr()
    }
}
