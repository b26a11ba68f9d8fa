//! The fake API server's provider-hetzner ([`FakeKube::run_crossplane`])
//! against the hcloud wire fake, driven by the real Kubernetes adapter, with
//! the real upstream CRDs of Crossplane's packages and of the provider
//! loaded (so every managed resource is checked against its schema by the
//! fake): the package installs, resources observe what the cloud API
//! holds, observe-only writes nothing, Update writes names and labels, and
//! only Delete deletes.

use std::time::Duration;

use cz_adapters::kube::KubeClient;
use cz_adapters::{KubeApi, ObjectRef};
use cz_sim::wire::hcloud::{self, DEFAULT_TOKEN, FakeConfig};
use cz_sim::wire::kube::FakeKube;
use cz_state::SecretString;
use serde_json::{Value, json};

const CRDS: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../../shared/upstream/crds");

fn crd(file: &str) -> Value {
    serde_saphyr::from_str(&std::fs::read_to_string(format!("{CRDS}/{file}")).unwrap()).unwrap()
}

fn kubeconfig(server: &str) -> SecretString {
    let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
    SecretString::new(format!(
        "apiVersion: v1\nkind: Config\nclusters:\n- cluster:\n    server: {server}\n  name: fake\ncontexts:\n- context:\n    cluster: fake\n    user: fake\n  name: fake\ncurrent-context: fake\nusers:\n- name: fake\n  user: {{}}\n"
    ))
}

fn network(id: i64, policies: Value, for_provider: Value) -> Value {
    json!({
        "apiVersion": "network.hetzner.m.crossplane.io/v1alpha1", "kind": "Network",
        "metadata": {"name": "acme-net", "namespace": "crossplane-system",
                     "annotations": {"crossplane.io/external-name": id.to_string()}},
        "spec": {"managementPolicies": policies, "forProvider": for_provider,
                 "providerConfigRef": {"kind": "ProviderConfig", "name": "catalyst-zero"}},
    })
}

async fn settled(k: &KubeClient, kc: &SecretString, r: &ObjectRef, gen_seen: &str) -> Value {
    for _ in 0..200 {
        if let Some(o) = k.get(kc, r).await.unwrap()
            && o.pointer("/status/conditions").is_some()
            && o["metadata"]["resourceVersion"] != gen_seen
        {
            return o;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    panic!("{} never reconciled", r.name);
}

fn synced(o: &Value) -> (String, String) {
    let c = o["status"]["conditions"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["type"] == "Synced")
        .unwrap();
    (c["status"].as_str().unwrap().to_owned(), c["message"].as_str().unwrap_or("").to_owned())
}

#[tokio::test]
async fn provider_hetzner_observes_the_wire_cloud_and_writes_only_what_policies_allow() {
    let cloud = hcloud::start(FakeConfig::default()).await;
    let labels = [("catalyst.openova.io/sovereign", "acme")];
    let net = cloud.seed_object("network", "acme-net", labels);
    let f = FakeKube::start().await;
    f.run_crossplane(cloud.base_url(), Duration::from_millis(20));
    let kc = kubeconfig(&f.url());
    let k = KubeClient;
    let mut crds = vec![crd("crossplane-pkg.crossplane.io_providers.yaml")];
    for file in [
        "hetzner.m.crossplane.io_providerconfigs.yaml",
        "network.hetzner.m.crossplane.io_networks.yaml",
    ] {
        crds.push(crd(&format!("provider-hetzner/{file}")));
    }
    crds.push(
        json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "crossplane-system"}}),
    );
    k.apply(&kc, "catalyst-zero", &crds).await.unwrap();

    let provider = json!({"apiVersion": "pkg.crossplane.io/v1", "kind": "Provider",
        "metadata": {"name": "provider-hetzner"},
        "spec": {"package": "ghcr.io/openova-io/provider-hetzner:808d93c"}});
    k.apply(&kc, "catalyst-zero", &[provider]).await.unwrap();
    let pref = ObjectRef {
        api_version: "pkg.crossplane.io/v1".into(),
        kind: "Provider".into(),
        namespace: None,
        name: "provider-hetzner".into(),
    };
    let p = settled(&k, &kc, &pref, "").await;
    assert_eq!(p["status"]["conditions"][1]["type"], "Healthy");
    let secret = json!({"apiVersion": "v1", "kind": "Secret",
        "metadata": {"name": "hcloud-credentials", "namespace": "crossplane-system"},
        "stringData": {"token": DEFAULT_TOKEN}});
    let config = json!({"apiVersion": "hetzner.m.crossplane.io/v1beta1", "kind": "ProviderConfig",
        "metadata": {"name": "catalyst-zero", "namespace": "crossplane-system"},
        "spec": {"credentials": {"source": "Secret", "secretRef": {
            "namespace": "crossplane-system", "name": "hcloud-credentials", "key": "token"}}}});
    k.apply(&kc, "catalyst-zero", &[secret, config]).await.unwrap();

    // Observe-only, with a forProvider that differs: read, never written.
    cloud.clear_requests();
    let observe = network(net, json!(["Observe"]), json!({"name": "renamed"}));
    k.apply(&kc, "catalyst-zero", std::slice::from_ref(&observe)).await.unwrap();
    let r = ObjectRef::of(&observe).unwrap();
    let o = settled(&k, &kc, &r, "").await;
    assert_eq!(synced(&o).0, "True", "{o}");
    assert_eq!(o["status"]["atProvider"]["ipRange"], "10.0.0.0/16");
    assert_eq!(o["status"]["atProvider"]["labels"]["catalyst.openova.io/sovereign"], "acme");
    assert_eq!(o["metadata"]["finalizers"][0], "finalizer.managedresource.crossplane.io");
    tokio::time::sleep(Duration::from_millis(100)).await;
    let writes = |c: &hcloud::FakeHandle| -> Vec<String> {
        c.requests()
            .into_iter()
            .filter(|r| r.method != "GET")
            .map(|r| format!("{} {}", r.method, r.path))
            .collect()
    };
    assert!(writes(&cloud).is_empty(), "observe-only wrote: {:?}", writes(&cloud));
    assert!(cloud.requests().iter().any(|r| r.path == format!("/v1/networks/{net}")));

    // A missing object: Synced=False, not a create.
    let ghost = network(net + 999, json!(["Observe"]), json!({}));
    let mut ghost = ghost;
    ghost["metadata"]["name"] = json!("ghost");
    k.apply(&kc, "catalyst-zero", std::slice::from_ref(&ghost)).await.unwrap();
    let g = settled(&k, &kc, &ObjectRef::of(&ghost).unwrap(), "").await;
    assert_eq!(synced(&g).0, "False");
    assert!(synced(&g).1.contains("not found"), "{g}");

    // Update allowed: the name is written through the API.
    let managed = network(
        net,
        json!(["Observe", "Create", "Update", "LateInitialize"]),
        json!({"name": "renamed", "ipRange": "10.0.0.0/16"}),
    );
    k.apply(&kc, "catalyst-zero", &[managed]).await.unwrap();
    for _ in 0..200 {
        if cloud.objects("network")[0]["name"] == "renamed" {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(cloud.objects("network")[0]["name"], "renamed");
    assert!(writes(&cloud).contains(&format!("PUT /v1/networks/{net}")));

    // Deleting it without Delete orphans the object; the finalizer goes.
    k.delete(&kc, &r).await.unwrap();
    for _ in 0..200 {
        if k.get(&kc, &r).await.unwrap().is_none() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(k.get(&kc, &r).await.unwrap().is_none());
    assert_eq!(cloud.objects("network").len(), 1, "orphaned, not deleted");
    // With Delete allowed, the object goes with it.
    k.apply(&kc, "catalyst-zero", &[network(net, json!(["*"]), json!({}))]).await.unwrap();
    settled(&k, &kc, &r, "").await;
    k.delete(&kc, &r).await.unwrap();
    for _ in 0..200 {
        if cloud.objects("network").is_empty() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(cloud.objects("network").is_empty(), "deleted with Delete allowed");
}

/// Sub-resources are read from their parents, named as the provider names
/// them: a subnet from its network, a load balancer's network, services
/// and target from the load balancer.
#[tokio::test]
async fn sub_resources_are_observed_through_their_parents() {
    let cloud = hcloud::start(FakeConfig::default()).await;
    let http = reqwest::Client::new();
    let post = |coll: &'static str, body: Value| {
        let (http, url) = (http.clone(), format!("{}/v1/{coll}", cloud.base_url()));
        async move {
            let r = http.post(url).bearer_auth(DEFAULT_TOKEN).json(&body).send().await.unwrap();
            assert_eq!(r.status().as_u16(), 201);
            r.json::<Value>().await.unwrap()
        }
    };
    let net = post("networks", json!({"name": "n", "ip_range": "10.0.0.0/16", "labels": {},
        "subnets": [{"type": "cloud", "ip_range": "10.0.1.0/24", "network_zone": "eu-central", "gateway": "10.0.0.1"}]}))
    .await["network"]["id"]
        .as_i64()
        .unwrap();
    let lb = post("load_balancers", json!({"name": "lb", "load_balancer_type": "lb11", "location": "fsn1",
        "labels": {}, "network": net,
        "services": [{"protocol": "tcp", "listen_port": 443, "destination_port": 443, "proxyprotocol": false}],
        "targets": [{"type": "label_selector", "label_selector": {"selector": "role=cp"}, "use_private_ip": true}]}))
    .await["load_balancer"]["id"]
        .as_i64()
        .unwrap();

    let f = FakeKube::start().await;
    f.run_crossplane(cloud.base_url(), Duration::from_millis(20));
    let kc = kubeconfig(&f.url());
    let k = KubeClient;
    let mut objs = vec![crd("crossplane-pkg.crossplane.io_providers.yaml")];
    for file in [
        "hetzner.m.crossplane.io_providerconfigs.yaml",
        "network.hetzner.m.crossplane.io_subnets.yaml",
        "loadbalancer.hetzner.m.crossplane.io_balancernetworks.yaml",
        "loadbalancer.hetzner.m.crossplane.io_balancerservices.yaml",
        "loadbalancer.hetzner.m.crossplane.io_balancertargets.yaml",
    ] {
        objs.push(crd(&format!("provider-hetzner/{file}")));
    }
    objs.push(
        json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "crossplane-system"}}),
    );
    objs.push(json!({"apiVersion": "v1", "kind": "Secret",
        "metadata": {"name": "hcloud-credentials", "namespace": "crossplane-system"},
        "stringData": {"token": DEFAULT_TOKEN}}));
    k.apply(&kc, "catalyst-zero", &objs).await.unwrap();
    k.apply(
        &kc,
        "catalyst-zero",
        &[json!({"apiVersion": "hetzner.m.crossplane.io/v1beta1", "kind": "ProviderConfig",
        "metadata": {"name": "catalyst-zero", "namespace": "crossplane-system"},
        "spec": {"credentials": {"source": "Secret", "secretRef": {
            "namespace": "crossplane-system", "name": "hcloud-credentials", "key": "token"}}}})],
    )
    .await
    .unwrap();
    let mr = |api: &str, kind: &str, name: &str, ext: String, fp: Value| {
        json!({"apiVersion": api, "kind": kind,
            "metadata": {"name": name, "namespace": "crossplane-system",
                         "annotations": {"crossplane.io/external-name": ext}},
            "spec": {"managementPolicies": ["Observe"], "forProvider": fp,
                     "providerConfigRef": {"kind": "ProviderConfig", "name": "catalyst-zero"}}})
    };
    let lbg = "loadbalancer.hetzner.m.crossplane.io/v1alpha1";
    let cases = [
        (
            mr(
                "network.hetzner.m.crossplane.io/v1alpha1",
                "Subnet",
                "subnet",
                format!("{net}-10.0.1.0/24"),
                json!({}),
            ),
            "networkZone",
            json!("eu-central"),
        ),
        (
            mr(lbg, "BalancerNetwork", "lbnet", format!("{lb}-{net}"), json!({})),
            "networkId",
            json!(net),
        ),
        (
            mr(lbg, "BalancerService", "https", format!("{lb}__443"), json!({})),
            "destinationPort",
            json!(443),
        ),
        (
            mr(
                lbg,
                "BalancerTarget",
                "cps",
                format!("{lb}__label_selector__role=cp"),
                json!({"type": "label_selector"}),
            ),
            "labelSelector",
            json!("role=cp"),
        ),
    ];
    let all: Vec<Value> = cases.iter().map(|(o, _, _)| o.clone()).collect();
    k.apply(&kc, "catalyst-zero", &all).await.unwrap();
    for (o, field, want) in &cases {
        let got = settled(&k, &kc, &ObjectRef::of(o).unwrap(), "").await;
        assert_eq!(synced(&got).0, "True", "{got}");
        assert_eq!(&got["status"]["atProvider"][field], want, "{got}");
    }
}
