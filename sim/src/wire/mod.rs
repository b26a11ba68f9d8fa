//! Fakes on the wire: in-process HTTP servers (axum, a real socket) that
//! speak the APIs the real adapters call, with failure injection.

pub mod controllers;
pub mod crossplane;
pub mod eso;
pub mod hcloud;
pub mod kube;
pub mod kube_auth;
pub mod kube_tls;
pub mod registrars;

use std::net::SocketAddr;

use axum::Router;

pub use controllers::Pace;
pub use hcloud::{FakeConfig, FakeHandle};
pub use kube::FakeKube;
pub use registrars::FakeRegistrars;

/// Serves `app` on `listener` in the background, until the runtime ends.
pub(crate) fn serve(listener: tokio::net::TcpListener, app: Router) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let _ = axum::serve(listener, app).await;
    })
}

/// A listener on 127.0.0.1 (an ephemeral port) and its address.
pub(crate) async fn bind_loopback() -> (tokio::net::TcpListener, SocketAddr) {
    let listener = tokio::net::TcpListener::bind(SocketAddr::from(([127, 0, 0, 1], 0)))
        .await
        .expect("a loopback listener");
    let addr = listener.local_addr().expect("a bound address");
    (listener, addr)
}
