//! The `bootstrap-kit` phase through the real Kubernetes adapter
//! (`KubeClient`, over a real socket) against the fake API server with its
//! simulated controllers: K3s's helm-controller installs Flux from the
//! kit's HelmChart, Flux reconciles the HelmReleases in `dependsOn` order,
//! workloads get pods and status.
//!
//! Asserted: the full kit installs in dependency order and is healthy only
//! by its probes (workloads, CRDs, OpenBao pods running while sealed, the
//! PowerDNS API answering); every step run twice changes nothing; the
//! driving process killed with SIGKILL inside every step resumes to the
//! same end state with nothing installed twice; a component dropped from
//! the selection is pruned with its workloads; and each injected failure
//! (a chart that cannot be pulled, a crash-looping workload, a CRD that
//! never establishes) pauses the job at the right component with its
//! condition, message and runbook, while Flux's retries are reported as
//! `failing`, not final.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use cz_adapters::kube::KubeClient;
use cz_adapters::{Backend, KubeApi, ObjectRef, Until};
use cz_engine::{ActionId, FaultPlan, JobOptions, PhaseBuilder, Plan, RetryTarget, Verbs};
use cz_phases::bootstrap_kit::{self, KitHealthy, Pruned};
use cz_phases::cluster::CiliumChart;
use cz_phases::cluster::render::cilium_manifest;
use cz_phases::{Registry, release};
use cz_sim::wire::controllers::Pace;
use cz_sim::wire::kube::FakeKube;
use cz_state::{JobId, JobStatus, SecretString};
use cz_testkit::pdns::Pdns;
use cz_testkit::requests::sample_request;
use cz_testkit::rig::{Rig, SimRigExt, Stub, rig, rig_in, sim_backend_in, step_output};
use serde_json::{Value, json};

/// `cluster/cilium-fsn1` as the cluster phase would have left it.
const CILIUM: ActionId<()> = ActionId::new("test.cilium");

fn register_cilium(reg: &mut Registry) {
    let done = CiliumChart {
        chart_version: release::cilium_chart_version().to_owned(),
        k8s_service_host: "10.0.1.2".into(),
    };
    reg.register_dyn(CILIUM.name, Stub::new(done).action());
}

fn kubeconfig(server: &str) -> SecretString {
    SecretString::new(format!(
        "apiVersion: v1\nkind: Config\nclusters:\n- cluster:\n    server: {server}\n  name: fake\ncontexts:\n- context:\n    cluster: fake\n    user: fake\n  name: fake\ncurrent-context: fake\nusers:\n- name: fake\n  user: {{}}\n"
    ))
}

fn all_components() -> Vec<String> {
    release::pins().iter().map(|p| p.component.clone()).collect()
}

/// A K3s cluster as the `cluster` phase leaves it: three nodes, and the
/// Cilium HelmChart it wrote (K3s installs it).
async fn cluster() -> FakeKube {
    cz_testkit::crypto();
    let fake = FakeKube::start().await;
    fake.run_controllers(Pace::default());
    for n in ["cp1", "cp2", "cp3"] {
        fake.put("", "nodes", json!({"metadata": {"name": n}}));
    }
    let cilium: Value = serde_saphyr::from_str(&cilium_manifest("10.0.1.2").unwrap()).unwrap();
    KubeClient.apply(&kubeconfig(&fake.url()), "k3s", &[cilium]).await.unwrap();
    fake
}

/// The sim backend with the real Kubernetes client (on the fake API
/// server), short polls and `bound` per component.
fn backend_for(dir: &Path, bound: Duration) -> Backend {
    let mut backend = sim_backend_in(dir);
    backend.kube = Arc::new(KubeClient);
    backend.poll = Duration::from_millis(20);
    backend.bounds.kit_component = bound;
    backend
}

/// Submits a job of the cluster stub + the kit for `components`, on
/// `fake`.
async fn submit(r: &Rig<Backend>, fake: &FakeKube, components: &[String], o: JobOptions) -> JobId {
    let mut cl = PhaseBuilder::new("cluster");
    cl.step("cilium-fsn1", CILIUM, &[], ());
    let plan = Plan { phases: vec![cl.build(), bootstrap_kit::phase(components, "fsn1", false)] };
    let (sov, job) = r.submit_plan(&sample_request("kube", 3, 2), &plan, o).await;
    let kc = kubeconfig(&fake.url());
    r.store.put_secret(&sov.to_string(), "kubeconfig-fsn1", &kc).await.unwrap();
    job
}

/// A rig with such a job, its store in `dir`.
async fn kit_in(
    dir: &Path,
    fake: &FakeKube,
    components: &[String],
    options: JobOptions,
    bound: Duration,
) -> (Rig<Backend>, JobId) {
    let r = rig_in(dir, register_cilium, |d| backend_for(d, bound)).await;
    let job = submit(&r, fake, components, options).await;
    (r, job)
}

/// The same in a temporary directory of its own.
async fn kit(
    fake: &FakeKube,
    components: &[String],
    options: JobOptions,
    bound: Duration,
) -> (Rig<Backend>, JobId) {
    let r = rig(register_cilium, |d| backend_for(d, bound)).await;
    let job = submit(&r, fake, components, options).await;
    (r, job)
}

fn names(fake: &FakeKube, group: &str, plural: &str) -> BTreeSet<String> {
    fake.objects(group, plural)
        .iter()
        .map(|o| {
            format!(
                "{}/{}",
                o["metadata"]["namespace"].as_str().unwrap_or(""),
                o["metadata"]["name"].as_str().unwrap()
            )
        })
        .collect()
}

/// What the kit leaves in the cluster, by identity.
fn end_state(fake: &FakeKube) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    for (g, p) in [
        ("helm.toolkit.fluxcd.io", "helmreleases"),
        ("source.toolkit.fluxcd.io", "helmrepositories"),
        ("helm.cattle.io", "helmcharts"),
        ("", "namespaces"),
        ("apps", "deployments"),
        ("apps", "statefulsets"),
        ("apps", "daemonsets"),
        ("apiextensions.k8s.io", "customresourcedefinitions"),
    ] {
        out.extend(names(fake, g, p).into_iter().map(|n| format!("{p}:{n}")));
    }
    out
}

/// Each release installed once, after everything it depends on.
fn assert_installed_in_order(fake: &FakeKube, components: &[String]) {
    let installs = fake.installs();
    let at = |what: &str| installs.iter().position(|i| i == what);
    for c in components {
        let p = release::pin(c).unwrap();
        let me = format!("HelmRelease/{}", p.release);
        assert_eq!(installs.iter().filter(|i| **i == me).count(), 1, "{me} in {installs:?}");
        for d in &p.depends_on {
            let dep = format!("HelmRelease/{}", release::pin(d).unwrap().release);
            assert!(at(&dep) < at(&me), "{dep} after {me}: {installs:?}");
        }
    }
    // Flux came first, once, from the kit's HelmChart; bp-flux took over
    // that release rather than installing a second Flux.
    assert_eq!(installs.iter().filter(|i| *i == "HelmChart/flux").count(), 1, "{installs:?}");
    assert!(at("HelmChart/flux") < at("HelmRelease/bp-cilium"), "{installs:?}");
    let hc = fake.get("apps", "deployments", "flux-system", "helm-controller").unwrap();
    assert_eq!(hc["metadata"]["annotations"]["meta.helm.sh/release-name"], "flux");
    assert_eq!(hc["metadata"]["labels"]["helm.toolkit.fluxcd.io/name"], "bp-flux");
}

#[tokio::test]
async fn the_full_kit_installs_in_dependency_order_and_is_healthy_by_its_probes() {
    let fake = cluster().await;
    let comps = all_components();
    let (r, job) = kit(&fake, &comps, JobOptions::default(), Duration::from_secs(60)).await;
    assert_eq!(r.drive(job).await, JobStatus::Succeeded, "{}", r.stop_reason(job).await);
    assert_installed_in_order(&fake, &comps);
    // Healthy by the probes' own evidence, not only Ready conditions.
    let hrs = fake.objects("helm.toolkit.fluxcd.io", "helmreleases");
    assert_eq!(hrs.len(), 12);
    for hr in &hrs {
        assert_eq!(hr["status"]["conditions"][0]["status"], "True", "{hr}");
    }
    let bao = fake.objects("", "pods");
    let bao: Vec<&Value> = bao.iter().filter(|p| p["metadata"]["namespace"] == "openbao").collect();
    assert_eq!(bao.len(), 3);
    for p in bao {
        assert_eq!(p["status"]["phase"], "Running");
        assert_eq!(p["status"]["conditions"][0]["status"], "False", "sealed: not Ready");
    }
    let sts = fake.get("apps", "statefulsets", "openbao", "openbao").unwrap();
    assert_eq!(sts["status"]["readyReplicas"], 0);
    // The first installers are gone, and nothing was uninstalled on the
    // way: Cilium and Flux belong to their blueprints alone.
    for hc in ["cilium", "flux"] {
        assert!(fake.get("helm.cattle.io", "helmcharts", "kube-system", hc).is_none(), "{hc}");
    }
    assert!(!fake.installs().iter().any(|i| i.starts_with("uninstall")), "{:?}", fake.installs());
    assert!(fake.get("apps", "daemonsets", "kube-system", "cilium").is_some());
    // The kit phase's events: each component went installing → healthy.
    let events = r.events(job, "kit").await;
    for c in comps.iter().chain(std::iter::once(&"flux".to_owned())) {
        let states: Vec<&str> = events
            .iter()
            .filter(|e| e["component"] == c.as_str())
            .map(|e| e["state"].as_str().unwrap())
            .collect();
        assert_eq!(states.last(), Some(&"healthy"), "{c}: {states:?}");
    }
    // The verify step's record: the expected set, all of it.
    let out: KitHealthy = step_output(&r.store, job, "bootstrap-kit/verify").await;
    assert_eq!(out.healthy.len(), 12);
}

/// Why the hand-over marks the HelmChart unmanaged first: deleted as it
/// is, K3s's helm-controller uninstalls the release, here Flux itself.
#[tokio::test]
async fn deleting_a_k3s_helmchart_as_it_is_uninstalls_its_release() {
    let fake = cluster().await;
    let kc = kubeconfig(&fake.url());
    let r = ObjectRef {
        api_version: "helm.cattle.io/v1".into(),
        kind: "HelmChart".into(),
        namespace: Some("kube-system".into()),
        name: "cilium".into(),
    };
    let bound = Duration::from_secs(10);
    let started = std::time::Instant::now();
    while fake.get("apps", "daemonsets", "kube-system", "cilium").is_none() {
        assert!(started.elapsed() < bound, "K3s never installed Cilium");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    KubeClient.delete(&kc, &r).await.unwrap();
    KubeClient.wait_until(&kc, &r, Until::Deleted, bound).await.unwrap();
    assert!(fake.get("apps", "daemonsets", "kube-system", "cilium").is_none());
    assert!(fake.installs().contains(&"uninstall HelmChart/cilium".to_owned()));
}

#[tokio::test]
async fn every_step_twice_leaves_the_same_cluster() {
    let once = cluster().await;
    let comps = all_components();
    let (r, job) = kit(&once, &comps, JobOptions::default(), Duration::from_secs(60)).await;
    assert_eq!(r.drive(job).await, JobStatus::Succeeded, "{}", r.stop_reason(job).await);

    let twice = cluster().await;
    let repeat: BTreeSet<String> =
        bootstrap_kit::phase(&comps, "fsn1", false).nodes.iter().map(|n| n.id.clone()).collect();
    let options = JobOptions {
        faults: FaultPlan { repeat, ..FaultPlan::default() },
        ..JobOptions::default()
    };
    let (r2, job2) = kit(&twice, &comps, options, Duration::from_secs(60)).await;
    assert_eq!(r2.drive(job2).await, JobStatus::Succeeded, "{}", r2.stop_reason(job2).await);
    assert_eq!(end_state(&once), end_state(&twice));
    assert_installed_in_order(&twice, &comps);
}

/// The driver half of the kill -9 test: a no-op unless the parent test runs
/// this binary as its child with `CZ_KIT_DIR` set.
#[tokio::test]
async fn child_driver() {
    let Ok(dir) = std::env::var("CZ_KIT_DIR") else { return };
    let dir = PathBuf::from(dir);
    let job: JobId = std::env::var("CZ_KIT_JOB").unwrap().parse().unwrap();
    let bound = Duration::from_secs(60);
    let r = rig_in(&dir, register_cilium, |d| backend_for(d, bound)).await;
    cz_testkit::kill9::drive_logging_steps(&r.engine, &r.store, job, &dir).await;
}

/// The process driving the kit is killed with SIGKILL once inside every
/// step (mid-apply or mid-wait); fresh processes resume from the store
/// alone. The cluster ends as a clean run leaves it, every release
/// installed once, in order.
#[tokio::test]
async fn kill9_of_the_driver_inside_every_step_resumes_to_the_same_cluster() {
    if std::env::var("CZ_KIT_DIR").is_ok() {
        return;
    }
    let reference = cluster().await;
    let comps = all_components();
    let (clean, job) =
        kit(&reference, &comps, JobOptions::default(), Duration::from_secs(60)).await;
    assert_eq!(clean.drive(job).await, JobStatus::Succeeded);

    let fake = cluster().await;
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().to_owned();
    let (r, job) =
        kit_in(&dir, &fake, &comps, JobOptions::default(), Duration::from_secs(60)).await;
    drop(r);
    let env = [("CZ_KIT_DIR", dir.display().to_string()), ("CZ_KIT_JOB", job.to_string())];
    let (killed, starts, outcome) =
        cz_testkit::kill9::kill_inside_every_step("kit_fake::child_driver", &env, &dir).await;
    assert_eq!(outcome, "Stopped(Succeeded)");
    let steps = bootstrap_kit::phase(&comps, "fsn1", false).nodes.len();
    assert!(
        killed.len() >= steps - 2,
        "killed inside {} of {steps} steps: {killed:?}",
        killed.len()
    );
    assert_eq!(end_state(&fake), end_state(&reference));
    assert_installed_in_order(&fake, &comps);
    eprintln!("kill -9 inside {} steps, {starts} driver processes", killed.len());
}

#[tokio::test]
async fn a_component_dropped_from_the_selection_is_pruned_with_its_workloads() {
    let fake = cluster().await;
    let comps = all_components();
    let (first, job) = kit(&fake, &comps, JobOptions::default(), Duration::from_secs(60)).await;
    assert_eq!(first.drive(job).await, JobStatus::Succeeded, "{}", first.stop_reason(job).await);
    assert!(fake.get("apps", "deployments", "catalyst-system", "catalyst-api").is_some());
    // Someone else's object in the same namespace pattern is not ours.
    fake.put(
        "apps",
        "deployments",
        json!({"metadata": {"name": "theirs", "namespace": "default"},
        "spec": {"replicas": 1, "selector": {"matchLabels": {"app": "theirs"}}}}),
    );

    // A later run of this Sovereign's kit without catalyst-platform.
    let fewer: Vec<String> = comps.iter().filter(|c| *c != "catalyst-platform").cloned().collect();
    let (second, job) = kit(&fake, &fewer, JobOptions::default(), Duration::from_secs(60)).await;
    assert_eq!(second.drive(job).await, JobStatus::Succeeded, "{}", second.stop_reason(job).await);
    let out: Pruned = step_output(&second.store, job, "bootstrap-kit/prune").await;
    assert_eq!(
        out.pruned,
        [
            "HelmRelease/bp-catalyst-platform",
            "HelmRepository/bp-catalyst-platform",
            "Namespace/catalyst-system"
        ]
    );
    let hrs = names(&fake, "helm.toolkit.fluxcd.io", "helmreleases");
    assert_eq!(hrs.len(), 11);
    assert!(!hrs.contains("flux-system/bp-catalyst-platform"));
    // Flux uninstalled its release: the workloads are gone, the rest stay.
    assert!(fake.get("apps", "deployments", "catalyst-system", "catalyst-api").is_none());
    assert!(fake.get("apps", "deployments", "catalyst-system", "catalyst-console").is_none());
    assert!(fake.get("apps", "deployments", "gitea", "gitea").is_some());
    assert!(fake.get("apps", "deployments", "default", "theirs").is_some());
    assert!(fake.get("", "namespaces", "", "flux-system").is_some());
}

/// The job pauses at `step` with an `unhealthy` error naming `component`.
async fn assert_unhealthy(
    r: &Rig<Backend>,
    job: JobId,
    component: &str,
    condition: &str,
    message_has: &str,
) -> Value {
    let p = r.stop_reason(job).await;
    assert_eq!(p["step"], format!("bootstrap-kit/{component}"), "{p}");
    let e = &p["error"];
    assert_eq!(e["kind"], "unhealthy", "{p}");
    assert_eq!(e["class"], "needs-operator", "{p}");
    assert_eq!(e["component"], component, "{p}");
    assert_eq!(e["condition"], condition, "{p}");
    assert!(e["message"].as_str().unwrap().contains(message_has), "{p}");
    assert_eq!(e["runbook"], "runbooks/needs-operator-component-unhealthy.md");
    assert!(e["remediation"].as_str().unwrap().contains(&format!("#{component}")), "{p}");
    p
}

#[tokio::test]
async fn a_chart_that_cannot_be_pulled_is_failing_then_needs_an_operator_and_retry_heals() {
    let fake = cluster().await;
    fake.fail_chart_pull("bp-keycloak");
    let comps = all_components();
    let (r, job) = kit(&fake, &comps, JobOptions::default(), Duration::from_secs(3)).await;
    assert_eq!(r.drive(job).await, JobStatus::Paused);
    assert_unhealthy(&r, job, "keycloak", "ArtifactFailed", "chart pull error").await;
    // While Flux retried, the component was reported failing, not failed.
    let events = r.events(job, "kit").await;
    assert!(events.iter().any(|e| e["component"] == "keycloak" && e["state"] == "failing"));
    // Its dependents never started; independent components are healthy.
    let hrs = names(&fake, "helm.toolkit.fluxcd.io", "helmreleases");
    assert!(!hrs.contains("flux-system/bp-gitea"), "{hrs:?}");
    let pdns = fake.get("helm.toolkit.fluxcd.io", "helmreleases", "flux-system", "bp-powerdns");
    assert_eq!(pdns.unwrap()["status"]["conditions"][0]["status"], "True");
    // The registry is fixed; the operator retries; the job completes.
    fake.heal();
    Verbs { store: &r.store }.retry(job, RetryTarget::Failed, "test").await.unwrap();
    assert_eq!(r.drive(job).await, JobStatus::Succeeded, "{}", r.stop_reason(job).await);
}

#[tokio::test]
async fn a_crash_looping_workload_is_reported_with_its_pod_and_restarts() {
    let fake = cluster().await;
    fake.crash_loop("powerdns", "powerdns");
    let comps = all_components();
    let (r, job) = kit(&fake, &comps, JobOptions::default(), Duration::from_secs(3)).await;
    assert_eq!(r.drive(job).await, JobStatus::Paused);
    // Flux says Ready (its wait is disabled); the workload probe knows
    // better.
    let hr = fake.get("helm.toolkit.fluxcd.io", "helmreleases", "flux-system", "bp-powerdns");
    assert_eq!(hr.unwrap()["status"]["conditions"][0]["status"], "True");
    let p =
        assert_unhealthy(&r, job, "powerdns", "CrashLoopBackOff", "pod powerdns/powerdns-").await;
    assert!(p["error"]["message"].as_str().unwrap().contains("0 of 3 available"), "{p}");
}

#[tokio::test]
async fn a_crd_that_never_establishes_is_reported_at_its_component() {
    let fake = cluster().await;
    fake.never_establish("certificates.cert-manager.io");
    let comps = all_components();
    let (r, job) = kit(&fake, &comps, JobOptions::default(), Duration::from_secs(3)).await;
    assert_eq!(r.drive(job).await, JobStatus::Paused);
    let crd = "certificates.cert-manager.io";
    assert_unhealthy(&r, job, "cert-manager", "Established=False", crd).await;
}

#[tokio::test]
async fn powerdns_is_healthy_only_once_its_real_api_answers_through_the_service_proxy() {
    assert!(Pdns::available(), "PowerDNS with the gsqlite3 backend is needed (see .ci/run)");
    // A service with no ready pods behind it: the API server's 503.
    let fake = cluster().await;
    let kc = kubeconfig(&fake.url());
    fake.put(
        "",
        "services",
        json!({"metadata": {"name": "api", "namespace": "default"},
        "spec": {"selector": {"app": "nothing"}, "ports": [{"port": 80}]}}),
    );
    let (code, body) = KubeClient.service_get(&kc, "default", "api", 80, "/x").await.unwrap();
    assert_eq!(code, 503, "{body}");
    assert!(body.contains("no endpoints available for service"), "{body}");

    // bp-powerdns's Service is backed by a real PowerDNS, not running yet:
    // the pods are ready, the application does not answer. A private
    // server: the test starts it while the job waits.
    let mut pdns = Pdns::prepare();
    fake.route_service("powerdns", "powerdns-api", &pdns.url());
    let comps: Vec<String> =
        ["cilium", "cert-manager", "powerdns"].iter().map(|s| s.to_string()).collect();
    let (r, job) = kit(&fake, &comps, JobOptions::default(), Duration::from_secs(60)).await;
    let waited = async {
        loop {
            let seen = r
                .events(job, "kit")
                .await
                .into_iter()
                .any(|e| e["component"] == "powerdns" && e["condition"] == "NotAnswering");
            if seen {
                break;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        // Not healthy while it does not answer, however long.
        tokio::time::sleep(Duration::from_millis(500)).await;
        assert_eq!(r.job(job).await.status, JobStatus::Running);
        pdns.start().await;
    };
    let (status, ()) = tokio::join!(r.drive(job), waited);
    assert_eq!(status, JobStatus::Succeeded, "{}", r.stop_reason(job).await);
    // What the probe accepted: PowerDNS itself refusing a call without
    // its API key (the key is the dns phases' business).
    let (code, _) = KubeClient
        .service_get(&kc, "powerdns", "powerdns-api", 8081, "/api/v1/servers")
        .await
        .unwrap();
    assert_eq!(code, 401);
    let last = r
        .events(job, "kit")
        .await
        .into_iter()
        .filter(|e| e["component"] == "powerdns")
        .map(|e| e["state"].as_str().unwrap().to_owned())
        .collect::<Vec<_>>();
    assert_eq!(last.last().map(String::as_str), Some("healthy"), "{last:?}");
}
