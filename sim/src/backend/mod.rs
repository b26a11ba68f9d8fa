//! The `sim` backend: hand-written fakes of every system a job talks to,
//! behind the adapter traits, persistent in a [`SimWorld`].

pub mod bao;
pub mod cloud;
pub mod crossplane;
pub mod dns;
pub mod eso;
pub mod hcloud_view;
pub mod kube;
pub mod registrar;
pub mod ssh;
pub mod tofu;
pub mod world;

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

pub use bao::SimBao;
pub use cloud::{SimCloud, sim_token};
pub use dns::SimDns;
pub use kube::SimKube;
pub use registrar::SimRegistrars;
pub use ssh::SimSsh;
pub use tofu::SimTofu;
pub use world::{FailRule, ServerFault, SimConfig, SimWorld};

use cz_adapters::{Backend, InfraModule, K3sSource};

/// The sim backend over a world at `world_root` (e.g. `<data-dir>/sim`).
pub fn sim_backend(world_root: PathBuf, workspace_root: PathBuf, config: SimConfig) -> Backend {
    sim_backend_with_world(Arc::new(SimWorld::new(world_root, config)), workspace_root)
}

/// The sim backend over an existing world (tests that inspect the world).
pub fn sim_backend_with_world(world: Arc<SimWorld>, workspace_root: PathBuf) -> Backend {
    let poll = world.scaled(1_000).max(Duration::from_millis(5));
    Backend {
        name: "sim".into(),
        cloud: Arc::new(SimCloud::new(world.clone())),
        tofu: Arc::new(SimTofu::new(world.clone())),
        ssh: Arc::new(SimSsh::new(world.clone())),
        kube: Arc::new(SimKube::new(world.clone())),
        bao: Arc::new(SimBao::new(world.clone())),
        dns: Arc::new(SimDns::new(world.clone())),
        registrars: Arc::new(SimRegistrars::new(world)),
        workspace_root,
        infra: InfraModule::Manifest,
        k3s: K3sSource::Simulated,
        ssh_port: 22,
        bounds: Default::default(),
        poll,
        public_resolvers: cz_adapters::dns::default_public_resolvers(),
    }
}

/// Standard base64 with padding (the kubeconfig's `*-data` fields).
pub(crate) fn b64(bytes: &[u8]) -> String {
    use base64::Engine as _;
    base64::engine::general_purpose::STANDARD.encode(bytes)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn backend_survives_a_restart() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().join("sim");
        let token = sim_token("rw");
        let b = sim_backend(root.clone(), dir.path().join("ws"), SimConfig::instant());
        assert_eq!(b.name, "sim");
        assert_eq!(b.poll, Duration::from_millis(5));
        b.dns.create_zone("pool.example", &["ns1.example.".into()], "").await.unwrap();
        let bao = b
            .bao
            .init(
                &cz_adapters::openbao::BaoEndpoint::direct("http://openbao-0.c:8200"),
                cz_adapters::BaoInitRequest { shares: 1, threshold: 1, recovery: false },
            )
            .await
            .unwrap();
        drop(b);
        // "Restart": a new backend over the same directory.
        let slow = sim_backend(
            root.clone(),
            dir.path().join("ws"),
            SimConfig { latency_factor: 2.0, ..SimConfig::instant() },
        );
        assert_eq!(slow.poll, Duration::from_secs(2));
        let b = sim_backend(root, dir.path().join("ws"), SimConfig::instant());
        assert!(b.dns.zone_exists("pool.example.").await.unwrap());
        assert!(
            b.bao
                .status(&cz_adapters::openbao::BaoEndpoint::direct("http://openbao-1.c:8200"))
                .await
                .unwrap()
                .initialized
        );
        assert!(
            !b.bao
                .unseal(
                    &cz_adapters::openbao::BaoEndpoint::direct("http://openbao-0.c:8200"),
                    &bao.keys[0]
                )
                .await
                .unwrap()
                .sealed
        );
        assert!(b.cloud.list(&token, "").await.unwrap().is_empty());
    }
    /// Inherent helpers are used from spawned tasks (test harnesses).
    #[tokio::test]
    async fn inherent_futures_are_send() {
        let dir = tempfile::tempdir().unwrap();
        let world = Arc::new(SimWorld::new(dir.path(), SimConfig::instant()));
        let cloud = SimCloud::new(world.clone());
        let ssh = SimSsh::new(world.clone());
        let tofu = SimTofu::new(world.clone());
        let ws = cz_adapters::tofu::Workspace { dir: dir.path().join("ws") };
        tokio::spawn(async move {
            assert!(cloud.all_objects().await.unwrap().is_empty());
            let o = cloud
                .create("server", "s", Default::default(), serde_json::Value::Null)
                .await
                .unwrap();
            assert!(cloud.get("server", o.id).await.unwrap().is_some());
            assert!(ssh.command_log("203.0.113.2").await.is_empty());
            assert!(ssh.k3s_nodes().await.unwrap().is_empty());
            assert!(tofu.state_entries(&ws).await.unwrap().is_empty());
            world.next_seq("x").await.unwrap();
        })
        .await
        .unwrap();
    }
}
