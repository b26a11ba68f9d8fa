//! A region above Hetzner's private-network limit (100 servers), provisioned
//! to hand-off on the sim: 3 control planes and 147 workers in one region.
//!
//! What it proves: the plan of `cz_phases::infra::layout` reaches the cloud
//! as it should (15 spread placement groups of 10, the control planes
//! together in the first, no private network, the `nodes` firewall), and
//! the cluster is built over the public interfaces with WireGuard on: each
//! node's K3s registers its public address, agents join the first server's
//! public address, and the Cilium values encrypt with WireGuard. The sim
//! cloud enforces the limits itself (a 101st server in a network, an 11th
//! in a group, more groups than the project holds), so a plan that broke
//! one would fail here, not only in a unit test.

use std::collections::BTreeMap;

use cz_phases::request::{NodeNetwork, ProvisionRequest};
use cz_phases::testing::{SimRigExt, sample_request, sim_cloud, sim_rig_in_world};
use cz_sim::SimConfig;
use cz_sim::backend::ssh::SimSsh;
use serde_json::Value;

fn large_request() -> ProvisionRequest {
    let mut req = sample_request("large", 3, 147);
    req.regions.truncate(1);
    assert_eq!(req.regions[0].network, NodeNetwork::Auto);
    req.validate().expect("150 servers in one region fit Hetzner's limits");
    req
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_150_node_region_goes_public_with_wireguard_and_fifteen_placement_groups() {
    // A project whose quotas were raised for the size (Hetzner raises them
    // on request); the fixed limits stay what they are.
    let limits = [("server", 200), ("placement_group", 50)];
    let config = SimConfig {
        project_limits: limits.iter().map(|(k, v)| ((*k).to_owned(), *v)).collect(),
        ..SimConfig::instant()
    };
    let (rig, world) = sim_rig_in_world(config).await;
    let req = large_request();
    let plan = cz_phases::jobs::provision_plan(&req);
    let (_, job) = rig.submit_plan(&req, &plan, cz_engine::JobOptions::default()).await;
    let status = rig.drive(job).await;
    if status != cz_state::JobStatus::Succeeded {
        let events = rig.store.events_after(job, 0, 100_000).await.unwrap();
        let failed: Vec<_> = events
            .iter()
            .filter(|e| e.body.to_string().contains("error"))
            .map(|e| (&e.kind, &e.body))
            .take(3)
            .collect();
        panic!("the provision ended {status:?}: {failed:#?}");
    }

    let objects = sim_cloud(&world).all_objects().await.expect("the sim cloud reads");
    let of = |kind: &str| objects.iter().filter(|o| o.kind == kind).collect::<Vec<_>>();
    assert!(of("network").is_empty(), "no private network above 100 servers");
    let groups = of("placement_group");
    assert_eq!(groups.len(), 15, "150 servers in spread groups of 10");
    let servers = of("server");
    assert_eq!(servers.len(), 150);
    let attr = |o: &cz_adapters::CloudObject, k: &str| {
        o.attrs.get(k).and_then(Value::as_str).unwrap_or_default().to_owned()
    };
    let mut per_group: BTreeMap<String, u32> = BTreeMap::new();
    for s in &servers {
        *per_group.entry(attr(s, "placement_group")).or_default() += 1;
        assert!(attr(s, "private_ip").is_empty(), "{} has a private IP", s.name);
    }
    assert_eq!(per_group.len(), 15);
    assert!(per_group.values().all(|n| *n == 10), "{per_group:?}");
    let first_group = groups.iter().map(|g| g.name.clone()).find(|n| n.ends_with("-pg1")).unwrap();
    for cp in servers.iter().filter(|s| s.name.contains("-cp")) {
        assert_eq!(attr(cp, "placement_group"), first_group, "{}", cp.name);
    }
    let firewalls: Vec<&str> = of("firewall").iter().map(|f| f.name.as_str()).collect();
    assert!(firewalls.iter().any(|n| n.ends_with("-nodes")), "{firewalls:?}");

    // Every node registered its public address; agents joined the first
    // server's public address; Cilium encrypts with WireGuard.
    let ssh = SimSsh::new(world.clone());
    let first_cp = servers.iter().find(|s| s.name.ends_with("-cp1")).unwrap();
    let first_ip = attr(first_cp, "ipv4");
    for s in &servers {
        let ip = attr(s, "ipv4");
        let config = ssh
            .file(&ip, "/etc/rancher/k3s/config.yaml")
            .await
            .unwrap_or_else(|| panic!("{} has no K3s config", s.name));
        let config = String::from_utf8(config).unwrap();
        assert!(config.contains(&format!("node-ip: \"{ip}\"")), "{}: {config}", s.name);
        if s.name.ends_with("-cp1") {
            continue;
        }
        assert!(config.contains(&format!("server: \"https://{first_ip}:6443\"")), "{config}");
    }
    let cilium = ssh
        .file(&first_ip, "/var/lib/rancher/k3s/server/manifests/cilium.yaml")
        .await
        .expect("the Cilium manifest is on the first server");
    let cilium = String::from_utf8(cilium).unwrap();
    assert!(cilium.contains("type: wireguard"), "{cilium}");
    assert!(cilium.contains(&format!("k8sServiceHost: \"{first_ip}\"")), "{cilium}");
}
