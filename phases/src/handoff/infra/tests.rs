use std::sync::{Arc, Mutex};

use cz_adapters::{CloudObject, ObjectRef};
use cz_engine::{JobOptions, RetryTarget, Verbs};
use cz_state::{JobStatus, SecretString, SovereignId};
use serde_json::Value;

use super::managed::{KINDS, MANAGE, OBSERVE};
use super::{Credential, PHASE};
use crate::cluster::kubeconfig_secret;
use crate::infra::archive_name;
use crate::jobs::provision_plan;
use crate::request::ProvisionRequest;
use crate::testing::{
    KubeTap, SimRig, SimRigExt, World, WorldConfig, managed_tf_type, phase_tests,
    provider_resources, sample_request, sim_cloud, sim_rig_in_world_with,
};

phase_tests!(super::PHASE, sample_request("ih", 1, 1));

type Snapshot = Arc<Mutex<Option<Vec<CloudObject>>>>;

/// A rig whose `edit` runs on the sim cloud the moment the provider
/// package is applied (Crossplane arrives); the cloud as it was then is
/// kept in the snapshot.
async fn rig_with_edit(
    edit: impl Fn(Vec<CloudObject>) -> Option<CloudObject> + Send + Sync + 'static,
) -> (SimRig, Arc<World>, Snapshot) {
    let snapshot: Snapshot = Arc::default();
    let keep = snapshot.clone();
    let edit = Arc::new(edit);
    let (rig, world) = sim_rig_in_world_with(WorldConfig::instant(), move |mut b, world| {
        let inner = b.kube.clone();
        b.kube = Arc::new(KubeTap {
            inner,
            after_get: None,
            before_apply: Some(Box::new(move |objs| {
                let arriving = objs.iter().any(|o| o["kind"] == "Provider");
                let (world, keep, edit) = (world.clone(), keep.clone(), edit.clone());
                Box::pin(async move {
                    if !arriving || keep.lock().unwrap().is_some() {
                        return;
                    }
                    let cloud = sim_cloud(&world);
                    let all = cloud.all_objects().await.unwrap();
                    if let Some(o) = edit(all) {
                        cloud.update(&o.kind, o.id, &o.name, o.labels).await.unwrap();
                    }
                    *keep.lock().unwrap() = Some(cloud.all_objects().await.unwrap());
                })
            })),
        });
        b
    })
    .await;
    (rig, world, snapshot)
}

async fn kubeconfig(rig: &SimRig, sov: SovereignId, loc: &str) -> SecretString {
    rig.store.get_secret(&sov.to_string(), &kubeconfig_secret(loc)).await.unwrap().unwrap()
}

/// Every managed resource in the region's cluster.
async fn managed_resources(rig: &SimRig, kc: &SecretString) -> Vec<Value> {
    let mut out = Vec::new();
    let mut seen = std::collections::BTreeSet::new();
    for k in KINDS {
        if !seen.insert((k.api_version, k.kind)) {
            continue;
        }
        let sel = "app.kubernetes.io/managed-by=catalyst-zero";
        out.extend(rig.env().kube.list(kc, k.api_version, k.kind, sel).await.unwrap());
    }
    out
}

fn external(mr: &Value) -> String {
    mr.pointer("/metadata/annotations/crossplane.io~1external-name")
        .and_then(Value::as_str)
        .unwrap()
        .to_owned()
}

fn mr_ref(mr: &Value) -> ObjectRef {
    ObjectRef::of(mr).unwrap()
}

async fn provision(rig: &SimRig, req: &ProvisionRequest) -> (SovereignId, cz_state::JobId) {
    rig.submit_plan(req, &provision_plan(req), JobOptions::default()).await
}

/// After a provision every cloud object is owned by exactly one managed
/// resource of its kind, named as the provider names it, fully managed but
/// never allowed to delete; nothing in the cloud changed; tofu is archived.
#[tokio::test]
async fn every_object_is_owned_by_one_managed_resource_and_nothing_was_written() {
    let (rig, world, snapshot) = rig_with_edit(|_| None).await;
    let req = sample_request("adopt", 1, 1);
    let (sov, job) = provision(&rig, &req).await;
    assert_eq!(rig.drive(job).await, JobStatus::Succeeded);
    let loc = req.regions[0].location.clone();
    let kc = kubeconfig(&rig, sov, &loc).await;

    let mrs = managed_resources(&rig, &kc).await;
    let mut owned: Vec<(String, String)> = mrs
        .iter()
        .map(|m| {
            let ty =
                managed_tf_type(m["apiVersion"].as_str().unwrap(), m["kind"].as_str().unwrap());
            (ty.unwrap().to_owned(), external(m))
        })
        .collect();
    owned.sort();
    let cloud = provider_resources(&world).await;
    assert_eq!(owned, cloud, "one managed resource per provider resource, none twice");
    assert!(
        cloud
            .iter()
            .any(|(t, n)| t == "hcloud_load_balancer_target" && n.contains("__label_selector__"))
    );
    assert!(cloud.iter().any(|(t, n)| t == "hcloud_network_subnet" && n.contains("-10.0.1.0/24")));
    for m in &mrs {
        assert_eq!(m["spec"]["managementPolicies"], serde_json::json!(MANAGE), "{m}");
        let conds = m["status"]["conditions"].as_array().unwrap();
        assert!(conds.iter().all(|c| c["status"] == "True"), "{m}");
    }
    // The cloud is exactly as it was when Crossplane arrived.
    let before = snapshot.lock().unwrap().clone().expect("the provider was applied");
    assert_eq!(sim_cloud(&world).all_objects().await.unwrap(), before);

    // The provisioning token was handed over, and the job said so.
    let states = rig.store.node_states(job).await.unwrap();
    let out = states[&format!("{PHASE}/credential-{loc}")].output().cloned().unwrap();
    let cred: Credential = serde_json::from_value(out).unwrap();
    assert!(!cred.dedicated);
    let warned = rig.events(job, "warning").await;
    assert!(warned.iter().any(|w| w["message"].as_str().unwrap().contains("handoff_token")));

    // Archived: the workspace is gone, the state is in the store.
    assert!(!workspace_dir(&rig, sov, &loc).exists());
    let archive = rig.store.get_secret(&sov.to_string(), &archive_name(&loc)).await.unwrap();
    assert!(archive.unwrap().expose().contains("terraform.tfstate"));

    // Deleting a managed resource (no Delete policy) leaves its object.
    let server = mrs.iter().find(|m| m["kind"] == "Server").unwrap();
    rig.env().kube.delete(&kc, &mr_ref(server)).await.unwrap();
    assert_eq!(sim_cloud(&world).all_objects().await.unwrap(), before);
}

fn workspace_dir(rig: &SimRig, sov: SovereignId, loc: &str) -> std::path::PathBuf {
    rig.env().workspace_root.join(sov.to_string()).join(loc)
}

/// One object changed by hand before Crossplane arrives: the phase stops
/// for an operator with the diff, every resource stays observe-only and
/// nothing reaches the cloud. Put right, a retry hands off.
#[tokio::test]
async fn drift_pauses_with_the_diff_and_writes_nothing() {
    let (rig, world, snapshot) = rig_with_edit(|all| {
        let mut o = all.into_iter().find(|o| o.kind == "server")?;
        o.labels.insert("edited-by".into(), "hand".into());
        Some(o)
    })
    .await;
    let req = sample_request("drift", 1, 0);
    let (sov, job) = provision(&rig, &req).await;
    assert_eq!(rig.drive(job).await, JobStatus::Paused);
    let loc = req.regions[0].location.clone();
    let stop = rig.stop_reason(job).await;
    assert_eq!(stop["step"], format!("{PHASE}/verify-{loc}"), "{stop}");
    assert_eq!(stop["error"]["kind"], "precondition", "{stop}");
    let msg = stop["error"]["message"].as_str().unwrap();
    assert!(
        msg.contains("Server/") && msg.contains("labels") && msg.contains("edited-by"),
        "{msg}"
    );
    let drift = rig.events(job, "drift").await;
    assert_eq!(drift[0]["differences"].as_array().unwrap().len(), 1, "{drift:?}");

    let kc = kubeconfig(&rig, sov, &loc).await;
    for m in managed_resources(&rig, &kc).await {
        assert_eq!(m["spec"]["managementPolicies"], serde_json::json!(OBSERVE), "{m}");
        let kept: Vec<&String> = m["spec"]["forProvider"].as_object().unwrap().keys().collect();
        assert!(
            kept.iter().all(|k| *k == "type") && (kept.is_empty() || m["kind"] == "BalancerTarget"),
            "{m}"
        );
    }
    let edited = snapshot.lock().unwrap().clone().unwrap();
    assert_eq!(sim_cloud(&world).all_objects().await.unwrap(), edited, "nothing overwritten");
    assert!(workspace_dir(&rig, sov, &loc).exists(), "not archived");

    // The operator puts the cloud back as tofu built it and retries.
    let cloud = sim_cloud(&world);
    let mut s = edited.into_iter().find(|o| o.kind == "server").unwrap();
    s.labels.remove("edited-by");
    cloud.update("server", s.id, &s.name, s.labels.clone()).await.unwrap();
    Verbs { store: &rig.store }.retry(job, RetryTarget::Failed, "alice").await.unwrap();
    assert_eq!(rig.drive(job).await, JobStatus::Succeeded);
    let after = cloud.get("server", s.id).await.unwrap().unwrap();
    assert_eq!(after.labels, s.labels, "the retry wrote nothing over the operator's fix");
}

/// A destroy first has Crossplane let go: every managed resource of the
/// region, the ProviderConfig and its credential are gone before the
/// sweep, and the cloud is empty after it.
#[tokio::test]
async fn destroy_releases_every_managed_resource_before_the_sweep() {
    use crate::jobs::{Submit, destroy};
    let (rig, world, _) = rig_with_edit(|_| None).await;
    let req = sample_request("release", 1, 1);
    let (sov, job) = provision(&rig, &req).await;
    assert_eq!(rig.drive(job).await, JobStatus::Succeeded);
    let loc = req.regions[0].location.clone();
    let kc = kubeconfig(&rig, sov, &loc).await;
    let before = managed_resources(&rig, &kc).await.len();
    assert!(before > 0);

    let s = rig.store.get_sovereign(sov).await.unwrap().unwrap();
    let js = rig.store.list_jobs(Some(sov)).await.unwrap();
    let d = rig.follow_up(destroy(&s, &js, Submit::default()).unwrap()).await;
    assert_eq!(rig.drive(d).await, JobStatus::Succeeded, "{}", rig.stop_reason(d).await);
    let states = rig.store.node_states(d).await.unwrap();
    let out: super::Released = serde_json::from_value(
        states[&format!("{PHASE}/release-{loc}")].output().cloned().unwrap(),
    )
    .unwrap();
    assert_eq!((out.managed_resources, out.skipped), (before, None));
    assert!(managed_resources(&rig, &kc).await.is_empty());
    let pc = ObjectRef {
        api_version: "hetzner.m.crossplane.io/v1beta1".into(),
        kind: "ProviderConfig".into(),
        namespace: Some(super::managed::NAMESPACE.into()),
        name: super::managed::PROVIDER_CONFIG.into(),
    };
    assert!(rig.env().kube.get(&kc, &pc).await.unwrap().is_none());
    assert!(sim_cloud(&world).all_objects().await.unwrap().is_empty());
}
