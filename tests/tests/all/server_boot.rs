//! Servers that do not boot, on the sim (issue 20, item 2): a server that
//! came up `off` is powered on and joins; a server whose boot hangs gets
//! one reset, is then deleted, and the job waits for an operator with the
//! remedy; meanwhile every other node joined. `retry --phase infra` makes
//! the server again (once) and the job succeeds.

use std::sync::Arc;

use cz_adapters::labels::sovereign_slug;
use cz_engine::{JobOptions, RetryTarget, Verbs};
use cz_phases::request::ProvisionRequest;
use cz_phases::testing::{SimRig, SimRigExt, sample_request, sim_cloud, sim_rig_in_world_with};
use cz_sim::SimConfig;
use cz_sim::backend::{ServerFault, SimWorld};
use cz_state::{JobId, JobStatus, NodeState};

/// One region of `cps` control planes and `workers` workers, provisioned
/// on the sim with `faults` (by server suffix: `w2`) and a host-boot bound
/// of `boot_secs`, driven until it stops. The rig, its world, the job, and
/// the full name of each server suffix.
struct Run {
    rig: SimRig,
    world: Arc<SimWorld>,
    job: JobId,
    req: ProvisionRequest,
    status: JobStatus,
}

impl Run {
    async fn start(
        sub: &str,
        (cps, workers): (u32, u32),
        faults: &[(&str, ServerFault)],
        boot_secs: u64,
    ) -> Run {
        let mut req = sample_request(sub, cps, workers);
        req.regions.truncate(1);
        let config = SimConfig {
            server_faults: faults.iter().map(|(s, f)| (server_name(&req, s), *f)).collect(),
            ..SimConfig::instant()
        };
        let (rig, world) = sim_rig_in_world_with(config, |mut b, _| {
            b.bounds.host_boot = std::time::Duration::from_secs(boot_secs);
            b
        })
        .await;
        let plan = cz_phases::jobs::provision_plan(&req);
        let (_, job) = rig.submit_plan(&req, &plan, JobOptions::default()).await;
        let status = rig.drive(job).await;
        Run { rig, world, job, req, status }
    }

    fn loc(&self) -> &str {
        &self.req.regions[0].location
    }

    fn name(&self, suffix: &str) -> String {
        server_name(&self.req, suffix)
    }

    /// `(server, action)` of each `server` event, sorted.
    async fn server_actions(&self) -> Vec<(String, String)> {
        let events = self.rig.store.events_after(self.job, 0, 100_000).await.unwrap();
        let mut out: Vec<(String, String)> = events
            .iter()
            .filter(|e| e.kind == "server")
            .map(|e| (e.body["server"].to_string(), e.body["action"].to_string()))
            .collect();
        out.sort();
        out
    }
}

/// The cloud name of the request's server `suffix` (`w2`) in its region.
fn server_name(req: &ProvisionRequest, suffix: &str) -> String {
    format!("{}-{}-{suffix}", sovereign_slug(&req.fqdn()), req.regions[0].location)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_off_is_powered_on_and_a_hung_one_replaced_while_the_rest_join() {
    let faults = [("w2", ServerFault::Off), ("w3", ServerFault::Hang)];
    let run = Run::start("boot", (3, 4), &faults, 2).await;
    let Run { rig, world, job, req, status } = &run;
    let (job, loc) = (*job, run.loc());
    let (off, hung) = (run.name("w2"), run.name("w3"));
    assert_eq!(*status, JobStatus::Paused);

    let stop = rig.stop_reason(job).await;
    assert_eq!(stop["step"], format!("cluster/ssh-{loc}-w3"), "{stop}");
    assert_eq!(stop["error"]["kind"], "precondition", "{stop}");
    let remedy = stop["error"]["remediation"].as_str().unwrap();
    assert!(remedy.contains("--phase infra"), "{remedy}");
    // The hung server is gone; the one that was off runs.
    let cloud = sim_cloud(world);
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
    let quoted = |s: &str| format!("\"{s}\"");
    let want = [
        (quoted(&off), quoted("poweron")),
        (quoted(&hung), quoted("delete")),
        (quoted(&hung), quoted("reset")),
    ];
    assert_eq!(run.server_actions().await, want, "one power-on, one reset, one delete");

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
    let run =
        Run::start("reach", (1, 1), &[("cp1", ServerFault::Hang), ("w1", ServerFault::Hang)], 1)
            .await;
    let Run { rig, world, job, status, .. } = &run;
    let (job, loc) = (*job, run.loc());
    let names = [run.name("cp1"), run.name("w1")];
    assert_eq!(*status, JobStatus::Paused);
    let stop = rig.stop_reason(job).await;
    let message = stop["error"]["message"].as_str().unwrap();
    assert!(message.contains(&format!("no server of region {loc} answered SSH")), "{stop}");
    let remedy = stop["error"]["remediation"].as_str().unwrap();
    assert!(remedy.contains("Nothing was deleted"), "{remedy}");
    let servers = sim_cloud(world).objects_of("server").await.unwrap();
    let mut left: Vec<&str> = servers.iter().map(|s| s.name.as_str()).collect();
    left.sort();
    assert_eq!(left, names.iter().map(String::as_str).collect::<Vec<_>>());
    let resets = run.server_actions().await.into_iter().filter(|(_, a)| a == "\"reset\"").count();
    assert_eq!(resets, 2, "one reset each");
}
