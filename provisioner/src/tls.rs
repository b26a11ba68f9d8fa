//! The API over TLS (`--tls-cert`, `--tls-key`): rustls with the aws-lc-rs
//! provider named explicitly (never the process default: two providers in
//! one process panic, see DEPENDENCIES.md). Handshakes run in their own
//! tasks, so a slow or broken client never holds up the accept loop.

use std::net::SocketAddr;
use std::sync::Arc;

use anyhow::Context;
use axum::serve::Listener;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tokio_rustls::server::TlsStream;

use crate::config::TlsConfig;

/// The server configuration of `t`'s certificate chain and key.
pub fn server_config(t: &TlsConfig) -> anyhow::Result<Arc<rustls::ServerConfig>> {
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(&t.cert)
        .with_context(|| format!("cannot read the TLS certificate {}", t.cert.display()))?
        .collect::<Result<_, _>>()
        .with_context(|| format!("{} is not a PEM certificate chain", t.cert.display()))?;
    anyhow::ensure!(!certs.is_empty(), "{} holds no certificate", t.cert.display());
    let key = PrivateKeyDer::from_pem_file(&t.key)
        .with_context(|| format!("{} is not a PEM private key", t.key.display()))?;
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let cfg = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .context("TLS protocol versions")?
        .with_no_client_auth()
        .with_single_cert(certs, key)
        .context("the TLS certificate and key do not go together")?;
    Ok(Arc::new(cfg))
}

/// Accepts TCP connections and hands out the finished TLS handshakes.
pub struct TlsListener {
    rx: mpsc::Receiver<(TlsStream<TcpStream>, SocketAddr)>,
    local: SocketAddr,
}

impl TlsListener {
    pub fn new(tcp: TcpListener, cfg: Arc<rustls::ServerConfig>) -> std::io::Result<TlsListener> {
        let local = tcp.local_addr()?;
        let acceptor = tokio_rustls::TlsAcceptor::from(cfg);
        let (tx, rx) = mpsc::channel(64);
        tokio::spawn(async move {
            loop {
                let (stream, addr) = match tcp.accept().await {
                    Ok(c) => c,
                    Err(e) => {
                        // EMFILE and the like: back off, as axum's own loop does.
                        tracing::warn!(error = &e as &dyn std::error::Error, "accept failed");
                        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
                        continue;
                    }
                };
                let (acceptor, tx) = (acceptor.clone(), tx.clone());
                tokio::spawn(async move {
                    match acceptor.accept(stream).await {
                        Ok(tls) => {
                            let _ = tx.send((tls, addr)).await;
                        }
                        Err(e) => tracing::debug!(
                            peer = %addr,
                            error = &e as &dyn std::error::Error,
                            "TLS handshake failed"
                        ),
                    }
                });
            }
        });
        Ok(TlsListener { rx, local })
    }
}

impl Listener for TlsListener {
    type Io = TlsStream<TcpStream>;
    type Addr = SocketAddr;

    async fn accept(&mut self) -> (Self::Io, Self::Addr) {
        match self.rx.recv().await {
            Some(c) => c,
            None => std::future::pending().await,
        }
    }

    fn local_addr(&self) -> std::io::Result<Self::Addr> {
        Ok(self.local)
    }
}
