//! The real Kubernetes adapter (`kube`) against the fake API server over a
//! real socket: discovery of built-in and CRD kinds, server-side apply with
//! a field manager, a conflict with another manager surfacing as
//! `Conflict`, selectors, delete of what is already gone, and a kind that is
//! not served. The same code runs against a real cluster given a kubeconfig
//! (`KUBECONFIG`), in the `#[ignore]`d test at the end.

use cz_adapters::kube::KubeClient;
use cz_adapters::{KubeApi, ObjectRef, Until};
use cz_engine::{Cause, ErrorClass, StepError};
use cz_sim::wire::kube::FakeKube;
use cz_state::SecretString;
use serde_json::{Value, json};

const CRDS: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../../shared/upstream/crds");

/// The rustls crypto provider the daemon installs at start; the kube
/// client's TLS stack needs one chosen before it builds a connector.
fn crypto_provider() {
    let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
}

fn kubeconfig(server: &str) -> SecretString {
    crypto_provider();
    SecretString::new(format!(
        "apiVersion: v1\nkind: Config\nclusters:\n- cluster:\n    server: {server}\n  name: fake\ncontexts:\n- context:\n    cluster: fake\n    user: fake\n  name: fake\ncurrent-context: fake\nusers:\n- name: fake\n  user: {{}}\n"
    ))
}

fn crd(file: &str) -> Value {
    serde_saphyr::from_str(&std::fs::read_to_string(format!("{CRDS}/{file}")).unwrap()).unwrap()
}

fn hr(name: &str, version: &str) -> Value {
    json!({
        "apiVersion": "helm.toolkit.fluxcd.io/v2", "kind": "HelmRelease",
        "metadata": {"name": name, "namespace": "flux-system", "labels": {"app.kubernetes.io/managed-by": "catalyst-zero"}},
        "spec": {"interval": "15m", "chart": {"spec": {"chart": name, "version": version}}},
    })
}

fn hr_ref(name: &str) -> ObjectRef {
    ObjectRef {
        api_version: "helm.toolkit.fluxcd.io/v2".into(),
        kind: "HelmRelease".into(),
        namespace: Some("flux-system".into()),
        name: name.into(),
    }
}

#[tokio::test]
async fn apply_get_list_delete_through_discovery_and_ssa() {
    let f = FakeKube::start().await;
    f.put("", "namespaces", json!({"metadata": {"name": "flux-system"}}));
    let kc = kubeconfig(&f.url());
    let k = KubeClient;
    assert!(k.server_version(&kc).await.unwrap().starts_with("v1.31.4"));
    // Not served yet: apply refuses naming the kind, get sees nothing.
    let e = k.apply(&kc, "catalyst-zero", &[hr("bp-flux", "1.1.2")]).await.unwrap_err();
    assert!(
        matches!(&e, StepError::Adapter { cause: Cause::NotFound, message, .. } if message.contains("HelmRelease")),
        "{e}"
    );
    assert_eq!(k.get(&kc, &hr_ref("bp-flux")).await.unwrap(), None);
    // The CRD, then (in the same call) its custom resources.
    let objs = vec![
        crd("flux-helm.toolkit.fluxcd.io_helmreleases.yaml"),
        json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "gitea"}}),
        hr("bp-flux", "1.1.2"),
        hr("bp-gitea", "1.1.2"),
    ];
    k.apply(&kc, "catalyst-zero", &objs).await.unwrap();
    let got = k.get(&kc, &hr_ref("bp-flux")).await.unwrap().unwrap();
    assert_eq!(got["spec"]["chart"]["spec"]["version"], "1.1.2");
    assert_eq!(got["metadata"]["managedFields"][0]["manager"], "catalyst-zero");
    // Idempotent: the same apply again.
    k.apply(&kc, "catalyst-zero", &objs[2..]).await.unwrap();
    // Another manager changing our field: a Conflict naming us.
    let e = k.apply(&kc, "someone-else", &[hr("bp-flux", "9.9.9")]).await.unwrap_err();
    match &e {
        StepError::Adapter { cause: Cause::Conflict, message, .. } => {
            assert!(message.contains("catalyst-zero"), "{message}")
        }
        other => panic!("expected a conflict, got {other}"),
    }
    assert_eq!(e.class(), ErrorClass::NeedsOperator);
    let listed = k
        .list(
            &kc,
            "helm.toolkit.fluxcd.io/v2",
            "HelmRelease",
            "app.kubernetes.io/managed-by=catalyst-zero",
        )
        .await
        .unwrap();
    assert_eq!(listed.len(), 2);
    k.delete(&kc, &hr_ref("bp-gitea")).await.unwrap();
    k.delete(&kc, &hr_ref("bp-gitea")).await.unwrap();
    let listed = k.list(&kc, "helm.toolkit.fluxcd.io/v2", "HelmRelease", "").await.unwrap();
    assert_eq!(listed.len(), 1);
    assert!(k.list(&kc, "example.io/v1", "Nothing", "").await.unwrap().is_empty());
}

/// Waits are watches: a condition set by a controller later, a deletion,
/// and a bound that runs out, each seen through kube-runtime's watcher on
/// the fake's watch stream (list, then watch with a field selector).
#[tokio::test]
async fn waits_watch_the_object_until_the_condition_or_the_bound() {
    use std::time::{Duration, Instant};
    let f = FakeKube::start().await;
    f.put("", "namespaces", json!({"metadata": {"name": "flux-system"}}));
    let kc = kubeconfig(&f.url());
    let k = KubeClient;
    k.apply(&kc, "catalyst-zero", &[crd("flux-helm.toolkit.fluxcd.io_helmreleases.yaml")])
        .await
        .unwrap();
    k.apply(&kc, "catalyst-zero", &[hr("bp-flux", "1.1.2"), hr("bp-gitea", "1.1.2")])
        .await
        .unwrap();
    let later = f.clone();
    tokio::spawn(async move {
        tokio::time::sleep(Duration::from_millis(300)).await;
        // Another object changing first must not satisfy the wait.
        later.set_status(
            "helm.toolkit.fluxcd.io",
            "helmreleases",
            "flux-system",
            "bp-gitea",
            json!({"conditions": [{"type": "Ready", "status": "True"}]}),
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
        later.set_status(
            "helm.toolkit.fluxcd.io",
            "helmreleases",
            "flux-system",
            "bp-flux",
            json!({"conditions": [{"type": "Ready", "status": "True"}]}),
        );
    });
    let t = Instant::now();
    k.wait_until(&kc, &hr_ref("bp-flux"), Until::Condition("Ready"), Duration::from_secs(10))
        .await
        .unwrap();
    assert!(t.elapsed() >= Duration::from_millis(450), "{:?}", t.elapsed());
    // Deletion, seen as a DELETED event.
    let later = f.clone();
    tokio::spawn(async move {
        tokio::time::sleep(Duration::from_millis(200)).await;
        later.remove("helm.toolkit.fluxcd.io", "helmreleases", "flux-system", "bp-flux");
    });
    k.wait_until(&kc, &hr_ref("bp-flux"), Until::Deleted, Duration::from_secs(10)).await.unwrap();
    assert!(k.get(&kc, &hr_ref("bp-flux")).await.unwrap().is_none());
    // Already gone: at once. Never: the bound, as a Timeout naming it.
    k.wait_until(&kc, &hr_ref("bp-flux"), Until::Deleted, Duration::from_secs(1)).await.unwrap();
    let e = k
        .wait_until(&kc, &hr_ref("bp-gitea"), Until::Deleted, Duration::from_millis(500))
        .await
        .unwrap_err();
    assert!(matches!(&e, StepError::Timeout { reason, .. } if reason.contains("bp-gitea")), "{e}");
}

/// The same calls against a real cluster:
/// `KUBECONFIG=… cargo test -p cz-sim --test all -- --ignored`.
#[tokio::test]
#[ignore = "needs a real cluster (KUBECONFIG)"]
async fn against_a_real_cluster() {
    crypto_provider();
    let path = std::env::var("KUBECONFIG").expect("KUBECONFIG");
    let kc = SecretString::new(std::fs::read_to_string(path).unwrap());
    let k = KubeClient;
    println!("server {}", k.server_version(&kc).await.unwrap());
    let ns = json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "catalyst-zero-adapter-test"}});
    k.apply(&kc, "catalyst-zero-test", &[ns]).await.unwrap();
    let r = ObjectRef {
        api_version: "v1".into(),
        kind: "Namespace".into(),
        namespace: None,
        name: "catalyst-zero-adapter-test".into(),
    };
    assert!(k.get(&kc, &r).await.unwrap().is_some());
    k.delete(&kc, &r).await.unwrap();
    // Namespace deletion is finalized by the namespace controller.
    let bound = std::time::Duration::from_secs(120);
    k.wait_until(&kc, &r, Until::Deleted, bound).await.unwrap();
    let (code, body) = k.service_get(&kc, "default", "kubernetes", 443, "/version").await.unwrap();
    println!("service proxy to default/kubernetes: {code} {body}");
}
