//! Servers that do not boot, on the sim (issue 20, item 2): a server that
//! came up `off` is powered on and joins; a server whose boot hangs gets
//! one reset, is then deleted, and the job waits for an operator with the
//! remedy; meanwhile every other node joined. `retry --phase infra` makes
//! the server again (once) and the job succeeds.

use cz_adapters::labels::sovereign_slug;
use cz_engine::{JobOptions, RetryTarget, Verbs};
use cz_phases::testing::{SimRigExt, sample_request, sim_cloud, sim_rig_in_world_with};
use cz_sim::SimConfig;
use cz_sim::backend::ServerFault;
use cz_state::{JobStatus, NodeState};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_off_is_powered_on_and_a_hung_one_replaced_while_the_rest_join() {
    let mut req = sample_request("boot", 3, 4);
    req.regions.truncate(1);
    let loc = req.regions[0].location.clone();
    let slug = sovereign_slug(&req.fqdn());
    let (off, hung) = (format!("{slug}-{loc}-w2"), format!("{slug}-{loc}-w3"));
    let config = SimConfig {
        server_faults: [(off.clone(), ServerFault::Off), (hung.clone(), ServerFault::Hang)]
            .into_iter()
            .collect(),
        ..SimConfig::instant()
    };
    let (rig, world) = sim_rig_in_world_with(config, |mut b, _| {
        b.bounds.host_boot = std::time::Duration::from_secs(2);
        b
    })
    .await;
    let plan = cz_phases::jobs::provision_plan(&req);
    let (_, job) = rig.submit_plan(&req, &plan, JobOptions::default()).await;
    assert_eq!(rig.drive(job).await, JobStatus::Paused);

    let stop = rig.stop_reason(job).await;
    assert_eq!(stop["step"], format!("cluster/ssh-{loc}-w3"), "{stop}");
    assert_eq!(stop["error"]["kind"], "precondition", "{stop}");
    let remedy = stop["error"]["remediation"].as_str().unwrap();
    assert!(remedy.contains("--phase infra"), "{remedy}");
    // The hung server is gone; the one that was off runs.
    let cloud = sim_cloud(&world);
    let servers = cloud.objects_of("server").await.unwrap();
    assert!(!servers.iter().any(|s| s.name == hung), "the hung server was deleted");
    let was_off = servers.iter().find(|s| s.name == off).expect("the server that was off");
    assert_eq!(was_off.attrs["status"], "running");
    // Every other node joined while the hung one held nothing back.
    let states = rig.store.node_states(job).await.unwrap();
    for s in cz_phases::infra::server_suffixes(&req.regions[0]) {
        let k3s = states.get(&format!("cluster/k3s-{s}")).cloned().unwrap_or_default();
        let done = matches!(k3s, NodeState::Succeeded { .. });
        assert_eq!(done, !s.ends_with("-w3"), "k3s on {s}: {}", k3s.name());
    }
    let mut actions: Vec<String> = rig
        .store
        .events_after(job, 0, 100_000)
        .await
        .unwrap()
        .iter()
        .filter(|e| e.kind == "server")
        .map(|e| format!("{} {}", e.body["server"].as_str().unwrap(), e.body["action"]))
        .collect();
    actions.sort();
    let want =
        [format!("{off} \"poweron\""), format!("{hung} \"delete\""), format!("{hung} \"reset\"")];
    assert_eq!(actions, want, "one power-on, one reset, one delete");

    // The operator's retry of `infra` makes the server again, once, and
    // the step that waited on it runs on the new one.
    Verbs { store: &rig.store }
        .retry(job, RetryTarget::Phase("infra".into()), "alice")
        .await
        .unwrap();
    let status = rig.drive(job).await;
    assert_eq!(status, JobStatus::Succeeded, "{}", rig.stop_reason(job).await);
    let servers = cloud.objects_of("server").await.unwrap();
    assert_eq!(servers.len(), 7, "one server each, the hung one made once more");
    assert_eq!(servers.iter().filter(|s| s.name == hung).count(), 1);
}

/// No server of the region answers (every boot hangs here; on a real
/// cloud, as likely a firewall between the daemon and the servers): each
/// gets its one reset, and nothing is deleted; the pause says to check
/// the daemon's reach.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn when_no_server_answers_nothing_is_deleted() {
    let mut req = sample_request("reach", 1, 1);
    req.regions.truncate(1);
    let loc = req.regions[0].location.clone();
    let slug = sovereign_slug(&req.fqdn());
    let names = [format!("{slug}-{loc}-cp1"), format!("{slug}-{loc}-w1")];
    let config = SimConfig {
        server_faults: names.iter().map(|n| (n.clone(), ServerFault::Hang)).collect(),
        ..SimConfig::instant()
    };
    let (rig, world) = sim_rig_in_world_with(config, |mut b, _| {
        b.bounds.host_boot = std::time::Duration::from_secs(1);
        b
    })
    .await;
    let plan = cz_phases::jobs::provision_plan(&req);
    let (_, job) = rig.submit_plan(&req, &plan, JobOptions::default()).await;
    assert_eq!(rig.drive(job).await, JobStatus::Paused);
    let stop = rig.stop_reason(job).await;
    let message = stop["error"]["message"].as_str().unwrap();
    assert!(message.contains(&format!("no server of region {loc} answered SSH")), "{stop}");
    let remedy = stop["error"]["remediation"].as_str().unwrap();
    assert!(remedy.contains("Nothing was deleted"), "{remedy}");
    let servers = sim_cloud(&world).objects_of("server").await.unwrap();
    let mut left: Vec<&str> = servers.iter().map(|s| s.name.as_str()).collect();
    left.sort();
    assert_eq!(left, names.iter().map(String::as_str).collect::<Vec<_>>());
    let resets = rig
        .store
        .events_after(job, 0, 100_000)
        .await
        .unwrap()
        .iter()
        .filter(|e| e.kind == "server" && e.body["action"] == "reset")
        .count();
    assert_eq!(resets, 2, "one reset each");
}
