//! Integration tests of the wire-level fakes, each held to the real adapter
//! that calls it over a socket, one module per system.

mod crossplane_fake;
mod hcloud_client;
mod kube_client;
mod kube_fake;
mod registrar_fake;
