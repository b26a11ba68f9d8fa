//! The fake Kubernetes API server over a real socket, checked against the
//! API conventions it claims: discovery, CRD registration and establishment,
//! server-side apply (managedFields, conflicts, force, field removal),
//! resourceVersion and generation, label selectors, status, watch, delete,
//! Status error bodies. The CRDs applied are the upstream Flux ones.

use cz_sim::wire::kube::FakeKube;
use serde_json::{Value, json};

const CRDS: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../../shared/upstream/crds");
const HR: &str = "/apis/helm.toolkit.fluxcd.io/v2/namespaces/flux-system/helmreleases";

struct C {
    http: reqwest::Client,
    base: String,
}

impl C {
    async fn get(&self, path: &str) -> (u16, Value) {
        let r = self.http.get(format!("{}{path}", self.base)).send().await.unwrap();
        (r.status().as_u16(), r.json().await.unwrap_or(Value::Null))
    }
    async fn apply(&self, path: &str, manager: &str, force: bool, obj: &Value) -> (u16, Value) {
        let url = format!("{}{path}?fieldManager={manager}&force={force}", self.base);
        let r = self
            .http
            .patch(url)
            .header("content-type", "application/apply-patch+yaml")
            .body(obj.to_string())
            .send()
            .await
            .unwrap();
        (r.status().as_u16(), r.json().await.unwrap_or(Value::Null))
    }
    async fn delete(&self, path: &str) -> u16 {
        self.http.delete(format!("{}{path}", self.base)).send().await.unwrap().status().as_u16()
    }
}

async fn fake() -> (FakeKube, C) {
    let f = FakeKube::start().await;
    f.put("", "namespaces", json!({"metadata": {"name": "flux-system"}}));
    let c = C { http: reqwest::Client::new(), base: f.url() };
    (f, c)
}

fn crd(file: &str) -> Value {
    let text = std::fs::read_to_string(format!("{CRDS}/{file}")).unwrap();
    serde_saphyr::from_str(&text).unwrap()
}

async fn install_hr_crd(c: &C) {
    let crd = crd("flux-helm.toolkit.fluxcd.io_helmreleases.yaml");
    let name = crd["metadata"]["name"].as_str().unwrap().to_owned();
    let (code, body) = c
        .apply(
            &format!("/apis/apiextensions.k8s.io/v1/customresourcedefinitions/{name}"),
            "cz",
            false,
            &crd,
        )
        .await;
    assert_eq!(code, 201, "{body}");
}

fn hr(name: &str, version: &str, labels: Value) -> Value {
    json!({
        "apiVersion": "helm.toolkit.fluxcd.io/v2", "kind": "HelmRelease",
        "metadata": {"name": name, "namespace": "flux-system", "labels": labels},
        "spec": {"interval": "15m", "chart": {"spec": {"chart": name, "version": version}}},
    })
}

#[tokio::test]
async fn discovery_and_crds_gate_custom_resources() {
    let (_f, c) = fake().await;
    let (_, core) = c.get("/api/v1").await;
    assert!(core["resources"].as_array().unwrap().iter().any(|r| r["kind"] == "Namespace"));
    let (code, body) = c
        .apply(&format!("{HR}/bp-cilium"), "cz", false, &hr("bp-cilium", "1.1.1", json!({})))
        .await;
    assert_eq!((code, body["reason"].as_str()), (404, Some("NotFound")), "{body}");
    install_hr_crd(&c).await;
    let (_, groups) = c.get("/apis").await;
    assert!(
        groups["groups"].as_array().unwrap().iter().any(|g| g["name"] == "helm.toolkit.fluxcd.io")
    );
    let (_, res) = c.get("/apis/helm.toolkit.fluxcd.io/v2").await;
    assert!(
        res["resources"]
            .as_array()
            .unwrap()
            .iter()
            .any(|r| r["kind"] == "HelmRelease" && r["namespaced"] == true)
    );
    let (_, crd) = c.get("/apis/apiextensions.k8s.io/v1/customresourcedefinitions/helmreleases.helm.toolkit.fluxcd.io").await;
    let established = crd["status"]["conditions"]
        .as_array()
        .unwrap()
        .iter()
        .any(|c| c["type"] == "Established" && c["status"] == "True");
    assert!(established, "{crd}");
    let (code, _) = c
        .apply(&format!("{HR}/bp-cilium"), "cz", false, &hr("bp-cilium", "1.1.1", json!({})))
        .await;
    assert_eq!(code, 201);
}

#[tokio::test]
async fn a_crd_that_never_establishes_keeps_its_kind_unserved() {
    let (f, c) = fake().await;
    f.never_establish("helmreleases.helm.toolkit.fluxcd.io");
    install_hr_crd(&c).await;
    let (_, crd) = c.get("/apis/apiextensions.k8s.io/v1/customresourcedefinitions/helmreleases.helm.toolkit.fluxcd.io").await;
    let est = crd["status"]["conditions"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["type"] == "Established")
        .unwrap()
        .clone();
    assert_eq!(est["status"], "False");
    let (code, _) = c.apply(&format!("{HR}/x"), "cz", false, &hr("x", "1", json!({}))).await;
    assert_eq!(code, 404);
}

#[tokio::test]
async fn server_side_apply_tracks_owners_versions_and_conflicts() {
    let (_f, c) = fake().await;
    install_hr_crd(&c).await;
    let path = format!("{HR}/bp-flux");
    let (code, a) = c
        .apply(&path, "catalyst-zero", false, &hr("bp-flux", "1.1.2", json!({"app": "flux"})))
        .await;
    assert_eq!(code, 201);
    assert_eq!(a["metadata"]["generation"], 1);
    let rv1: u64 = a["metadata"]["resourceVersion"].as_str().unwrap().parse().unwrap();
    let mf = &a["metadata"]["managedFields"][0];
    assert_eq!(
        (mf["manager"].as_str(), mf["operation"].as_str()),
        (Some("catalyst-zero"), Some("Apply"))
    );
    assert!(mf["fieldsV1"]["f:spec"]["f:chart"]["f:spec"]["f:version"].is_object(), "{mf}");
    assert!(a["metadata"]["uid"].is_string() && a["metadata"]["creationTimestamp"].is_string());

    // The same apply again changes nothing, not even the resourceVersion.
    let (code, same) = c
        .apply(&path, "catalyst-zero", false, &hr("bp-flux", "1.1.2", json!({"app": "flux"})))
        .await;
    assert_eq!(
        (code, &same["metadata"]["resourceVersion"]),
        (200, &a["metadata"]["resourceVersion"])
    );

    // A change: new resourceVersion, generation 2.
    let (_, b) = c
        .apply(&path, "catalyst-zero", false, &hr("bp-flux", "1.1.3", json!({"app": "flux"})))
        .await;
    assert_eq!(b["metadata"]["generation"], 2);
    let rv2: u64 = b["metadata"]["resourceVersion"].as_str().unwrap().parse().unwrap();
    assert!(rv2 > rv1);

    // Another manager changing an owned field: 409 naming the owner.
    let (code, conflict) =
        c.apply(&path, "kubectl", false, &hr("bp-flux", "9.9.9", json!({}))).await;
    assert_eq!((code, conflict["reason"].as_str()), (409, Some("Conflict")), "{conflict}");
    assert!(conflict["message"].as_str().unwrap().contains("\"catalyst-zero\""), "{conflict}");
    assert!(conflict["message"].as_str().unwrap().contains(".spec.chart.spec.version"));
    // ... agreeing on the value is no conflict (shared ownership).
    let (code, _) = c.apply(&path, "kubectl", false, &hr("bp-flux", "1.1.3", json!({}))).await;
    assert_eq!(code, 200);
    // ... with force it takes the field over.
    let (code, forced) = c.apply(&path, "kubectl", true, &hr("bp-flux", "9.9.9", json!({}))).await;
    assert_eq!(code, 200);
    assert_eq!(forced["spec"]["chart"]["spec"]["version"], "9.9.9");
    let owners: Vec<&str> = forced["metadata"]["managedFields"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["manager"].as_str().unwrap())
        .collect();
    assert!(owners.contains(&"kubectl") && owners.contains(&"catalyst-zero"), "{owners:?}");

    // A field the manager stops applying is removed if it owned it alone
    // (the label), kept if another manager applied it too (the interval,
    // which kubectl applied with the same value above).
    let mut smaller = hr("bp-flux", "9.9.9", json!({}));
    smaller["spec"].as_object_mut().unwrap().remove("interval");
    let (_, after) = c.apply(&path, "catalyst-zero", true, &smaller).await;
    assert!(after["metadata"]["labels"].get("app").is_none(), "{after}");
    assert_eq!(after["spec"]["interval"], "15m", "co-owned by kubectl: {after}");
    // Label keys with dots and slashes are one field, not a path.
    let (_, l) = c
        .apply(
            &path,
            "catalyst-zero",
            true,
            &hr("bp-flux", "9.9.9", json!({"app.kubernetes.io/name": "flux"})),
        )
        .await;
    assert_eq!(l["metadata"]["labels"]["app.kubernetes.io/name"], "flux", "{l}");
}

#[tokio::test]
async fn status_selectors_watch_and_delete() {
    let (f, c) = fake().await;
    install_hr_crd(&c).await;
    for (n, comp) in [("bp-cilium", "cilium"), ("bp-flux", "flux"), ("other", "x")] {
        let labels = if n == "other" {
            json!({})
        } else {
            json!({"app.kubernetes.io/managed-by": "catalyst-zero", "component": comp})
        };
        c.apply(&format!("{HR}/{n}"), "cz", false, &hr(n, "1", labels)).await;
    }
    let (_, list) = c.get(&format!("{HR}?labelSelector=app.kubernetes.io%2Fmanaged-by%3Dcatalyst-zero,component%20in%20(flux,gitea)")).await;
    let names: Vec<&str> = list["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|o| o["metadata"]["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["bp-flux"]);
    let (code, bad) = c.get(&format!("{HR}?labelSelector=a%20in%20(")).await;
    assert_eq!((code, bad["kind"].as_str()), (400, Some("Status")));

    // Watch: the current objects, then what changes.
    let mut resp =
        reqwest::get(format!("{}{HR}?watch=true&labelSelector=component%3Dflux", f.url()))
            .await
            .unwrap();
    let first = resp.chunk().await.unwrap().unwrap();
    let ev: Value = serde_json::from_slice(&first).unwrap();
    assert_eq!(
        (ev["type"].as_str(), ev["object"]["metadata"]["name"].as_str()),
        (Some("ADDED"), Some("bp-flux"))
    );
    let (_, before) = c.get(&format!("{HR}/bp-flux")).await;
    assert!(f.set_status(
        "helm.toolkit.fluxcd.io",
        "helmreleases",
        "flux-system",
        "bp-flux",
        json!({"conditions": [{"type": "Ready", "status": "True", "reason": "InstallSucceeded"}]})
    ));
    let next = tokio::time::timeout(std::time::Duration::from_secs(5), resp.chunk())
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    let ev: Value = serde_json::from_slice(&next).unwrap();
    assert_eq!(ev["type"], "MODIFIED");
    assert_eq!(ev["object"]["status"]["conditions"][0]["status"], "True");
    // Status moves resourceVersion, not generation.
    assert_eq!(ev["object"]["metadata"]["generation"], before["metadata"]["generation"]);
    assert_ne!(ev["object"]["metadata"]["resourceVersion"], before["metadata"]["resourceVersion"]);

    assert_eq!(c.delete(&format!("{HR}/bp-flux")).await, 200);
    let (code, gone) = c.get(&format!("{HR}/bp-flux")).await;
    assert_eq!((code, gone["reason"].as_str()), (404, Some("NotFound")));
    assert_eq!(c.delete(&format!("{HR}/bp-flux")).await, 404);
    let ev: Value = serde_json::from_slice(&resp.chunk().await.unwrap().unwrap()).unwrap();
    assert_eq!(ev["type"], "DELETED");
}

#[tokio::test]
async fn apply_needs_a_field_manager_and_a_matching_name() {
    let (_f, c) = fake().await;
    let ns = json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "gitea"}});
    let (code, body) = c.apply("/api/v1/namespaces/gitea", "", false, &ns).await;
    assert_eq!((code, body["reason"].as_str()), (422, Some("Invalid")));
    let (code, _) = c.apply("/api/v1/namespaces/other", "cz", false, &ns).await;
    assert_eq!(code, 400);
    let (code, created) = c.apply("/api/v1/namespaces/gitea", "cz", false, &ns).await;
    assert_eq!(code, 201);
    assert!(created["metadata"].get("namespace").is_none(), "cluster-scoped");
}

/// Reads `n` watch events (lines) from a streaming response.
async fn events(resp: &mut reqwest::Response, n: usize) -> Vec<Value> {
    let mut buf = Vec::new();
    let mut out = Vec::new();
    while out.len() < n {
        let chunk = tokio::time::timeout(std::time::Duration::from_secs(5), resp.chunk())
            .await
            .expect("an event within 5s")
            .unwrap()
            .expect("the stream goes on");
        buf.extend_from_slice(&chunk);
        while let Some(i) = buf.iter().position(|b| *b == b'\n') {
            let line: Vec<u8> = buf.drain(..=i).collect();
            out.push(serde_json::from_slice(&line).unwrap());
        }
    }
    out
}

/// A watch resumed from a resourceVersion gets every event since, a
/// deletion included (what a client that listed, then watched, relies
/// on), and one from a version the server no longer has gets 410.
#[tokio::test]
async fn a_watch_resumes_from_a_resource_version_with_every_event_since() {
    let (f, c) = fake().await;
    install_hr_crd(&c).await;
    c.apply(&format!("{HR}/bp-flux"), "cz", false, &hr("bp-flux", "1", json!({}))).await;
    let (_, list) = c.get(HR).await;
    let rv = list["metadata"]["resourceVersion"].as_str().unwrap().to_owned();
    // After the list, before the watch: a change and a deletion.
    c.apply(&format!("{HR}/bp-gitea"), "cz", false, &hr("bp-gitea", "1", json!({}))).await;
    assert_eq!(c.delete(&format!("{HR}/bp-flux")).await, 200);
    let mut resp = reqwest::get(format!(
        "{}{HR}?watch=true&resourceVersion={rv}&fieldSelector=metadata.name%3Dbp-flux",
        f.url()
    ))
    .await
    .unwrap();
    let evs = events(&mut resp, 1).await;
    assert_eq!(evs[0]["type"], "DELETED", "{evs:?}");
    assert_eq!(evs[0]["object"]["metadata"]["name"], "bp-flux");
    assert!(
        evs[0]["object"]["metadata"]["resourceVersion"].as_str().unwrap().parse::<u64>().unwrap()
            > rv.parse::<u64>().unwrap()
    );
    // Live events after the replay, filtered by the field selector.
    let mut resp = reqwest::get(format!(
        "{}{HR}?watch=true&resourceVersion={rv}&fieldSelector=metadata.name%3Dbp-gitea",
        f.url()
    ))
    .await
    .unwrap();
    assert_eq!(events(&mut resp, 1).await[0]["type"], "ADDED");
    f.set_status(
        "helm.toolkit.fluxcd.io",
        "helmreleases",
        "flux-system",
        "bp-gitea",
        json!({"x": 1}),
    );
    assert_eq!(events(&mut resp, 1).await[0]["type"], "MODIFIED");
    // A version from the future (or compacted away): 410 Expired.
    let mut resp =
        reqwest::get(format!("{}{HR}?watch=true&resourceVersion=999999", f.url())).await.unwrap();
    let ev = &events(&mut resp, 1).await[0];
    assert_eq!((ev["type"].as_str(), ev["object"]["code"].as_u64()), (Some("ERROR"), Some(410)));
    // An unsupported field selector is refused, as the API server does.
    let (code, _) = c.get(&format!("{HR}?fieldSelector=spec.interval%3D15m")).await;
    assert_eq!(code, 400);
}
