//! Contract tests of what `infra-handoff` renders, without a cluster: every
//! managed resource, observe-only and managed, validates strictly against
//! provider-hetzner's namespaced CRDs (`shared/upstream/crds/provider-hetzner/`)
//! and their "required parameter" rules, which an API server enforces once
//! the policies allow Create or Update; the Provider and ProviderConfig
//! validate against Crossplane v2's and the provider's CRDs.
//!
//! The state adopted is what `tofu show -json` lists for a full region,
//! as the sim derives it from a sim cloud (`cz_sim::backend::hcloud_view`).

use std::collections::BTreeMap;

use cz_adapters::{CloudObject, StateResource};
use cz_phases::handoff::infra::managed::{KINDS, adoptees, render};
use cz_sim::backend::hcloud_view::provider_view;
use serde_json::{Value, json};

use crate::handoff_contract::{crd_file, validate_strictly};

fn labels(role: &str) -> BTreeMap<String, String> {
    BTreeMap::from([
        ("catalyst.openova.io/sovereign".to_owned(), "acme".to_owned()),
        ("catalyst.openova.io/region".to_owned(), "fsn1".to_owned()),
        ("catalyst.openova.io/role".to_owned(), role.to_owned()),
    ])
}

/// A full Phase-0 region, as `tofu show -json` lists it.
fn region_state() -> Vec<StateResource> {
    let o = |kind: &str, id: i64, name: &str, role: &str, attrs: Value| CloudObject {
        kind: kind.into(),
        id,
        name: name.into(),
        labels: labels(role),
        attrs,
    };
    let objects = vec![
        o(
            "network",
            1,
            "acme-fsn1-net",
            "network",
            json!({"ip_range": "10.0.0.0/16", "subnet": "10.0.1.0/24", "network_zone": "eu-central"}),
        ),
        o(
            "firewall",
            2,
            "acme-fsn1-fw",
            "firewall",
            json!({"open": [80, 443], "restricted": [22, 6443], "sources": ["198.51.100.7/32"]}),
        ),
        o(
            "ssh_key",
            3,
            "acme-fsn1-key",
            "ssh-key",
            json!({"public_key": "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIB0 cz"}),
        ),
        o("placement_group", 4, "acme-fsn1-pg-cp", "placement-group", json!({"type": "spread"})),
        o(
            "server",
            5,
            "acme-fsn1-cp1",
            "control-plane",
            json!({"server_type": "cpx32", "location": "fsn1", "image": "ubuntu-24.04", "ipv4": "203.0.113.2", "index": 0}),
        ),
        o(
            "load_balancer",
            6,
            "acme-fsn1-lb",
            "load-balancer",
            json!({"type": "lb11", "location": "fsn1", "services": [80, 443, 6443], "targets": "control-plane", "private_ip": "10.0.1.254"}),
        ),
    ];
    let mut out = Vec::new();
    for ob in &objects {
        for r in provider_view(ob, &objects) {
            out.push(StateResource {
                address: format!("{}.{}", r.tf_type, r.name_in_module),
                kind: r.tf_type.to_owned(),
                id: r.values["id"].as_str().and_then(|s| s.parse().ok()).unwrap_or(0),
                name: r.values["name"].as_str().unwrap_or_default().to_owned(),
                attrs: r.values,
            });
        }
    }
    out
}

/// The CRD file of a managed resource kind.
fn file_of(api_version: &str, kind: &str) -> String {
    let group = api_version.split_once('/').unwrap().0;
    format!("provider-hetzner/{group}_{}s.yaml", kind.to_lowercase())
}

/// The CRD's "X is a required parameter" rules (CEL the API server runs):
/// with Create, Update or `*` among the policies, `forProvider.X` (or
/// `initProvider.X`) must be set.
fn required_parameters(crd: &Value) -> Vec<String> {
    let spec = &crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]["spec"];
    spec["x-kubernetes-validations"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|v| v["message"].as_str())
        .filter_map(|m| {
            m.strip_prefix("spec.forProvider.")?.strip_suffix(" is a required parameter")
        })
        .map(str::to_owned)
        .collect()
}

fn check(obj: &Value) -> Vec<String> {
    let api = obj["apiVersion"].as_str().unwrap();
    let kind = obj["kind"].as_str().unwrap();
    let (crd, schema) = crd_file(&file_of(api, kind), api.split_once('/').unwrap().1);
    let mut errors = validate_strictly(kind, &schema, obj);
    let policies: Vec<&str> = obj["spec"]["managementPolicies"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p.as_str().unwrap())
        .collect();
    if policies.iter().any(|p| ["*", "Create", "Update"].contains(p)) {
        for field in required_parameters(&crd) {
            if obj["spec"]["forProvider"].get(&field).is_none() {
                errors.push(format!("{kind}: spec.forProvider.{field} is a required parameter"));
            }
        }
    }
    errors
}

#[test]
fn every_managed_resource_validates_against_provider_hetzner() {
    let state = region_state();
    let all = adoptees(&state, "fsn1").unwrap();
    let kinds: std::collections::BTreeSet<&str> = all.iter().map(|a| a.kind.kind).collect();
    for k in [
        "Network",
        "Subnet",
        "Firewall",
        "Key",
        "Group",
        "Server",
        "Balancer",
        "BalancerNetwork",
        "BalancerService",
        "BalancerTarget",
    ] {
        assert!(kinds.contains(k), "{k} adopted");
    }
    let mut errors = Vec::new();
    for a in &all {
        for managed in [false, true] {
            errors.extend(check(&render(a, managed, "acme", "fsn1")));
        }
    }
    assert!(errors.is_empty(), "{}", errors.join("\n"));
}

/// Every kind of the mapping names a CRD we have, at a served version.
#[test]
fn every_kind_of_the_mapping_is_served_by_the_provider() {
    for k in KINDS {
        let (version, _) = (k.api_version.split_once('/').unwrap().1, ());
        let (crd, _) = crd_file(&file_of(k.api_version, k.kind), version);
        assert_eq!(crd["spec"]["names"]["kind"], k.kind);
        assert_eq!(
            crd["spec"]["scope"], "Namespaced",
            "{}: Crossplane v2 namespaced kinds",
            k.kind
        );
    }
}

/// The checks have teeth: a managed resource missing a required
/// parameter, or with a field the CRD does not know, is refused.
#[test]
fn the_checks_refuse_what_an_api_server_would() {
    let state = region_state();
    let all = adoptees(&state, "fsn1").unwrap();
    let server = all.iter().find(|a| a.kind.kind == "Server").unwrap();
    let mut obj = render(server, true, "acme", "fsn1");
    obj["spec"]["forProvider"].as_object_mut().unwrap().remove("serverType");
    obj["spec"]["forProvider"]["serverTipe"] = json!("cpx32");
    let errors = check(&obj);
    assert!(errors.iter().any(|e| e.contains("serverType is a required parameter")), "{errors:?}");
    assert!(errors.iter().any(|e| e.contains("serverTipe: unknown field")), "{errors:?}");
    // The old cluster-scoped field does not exist on a v2 resource.
    let mut obj = render(server, false, "acme", "fsn1");
    obj["spec"]["deletionPolicy"] = json!("Orphan");
    assert!(check(&obj).iter().any(|e| e.contains("deletionPolicy: unknown field")));
}

#[test]
fn the_provider_and_its_config_validate() {
    let pin = cz_phases::release::crossplane_provider();
    let provider = json!({"apiVersion": "pkg.crossplane.io/v1", "kind": "Provider",
        "metadata": {"name": pin.name},
        "spec": {"package": pin.package_ref(), "packagePullPolicy": "IfNotPresent"}});
    let (_, schema) = crd_file("crossplane-pkg.crossplane.io_providers.yaml", "v1");
    let errors = validate_strictly("Provider", &schema, &provider);
    assert!(errors.is_empty(), "{}", errors.join("\n"));
    let (_, schema) =
        crd_file("provider-hetzner/hetzner.m.crossplane.io_providerconfigs.yaml", "v1beta1");
    let config = json!({"apiVersion": "hetzner.m.crossplane.io/v1beta1", "kind": "ProviderConfig",
        "metadata": {"name": "catalyst-zero", "namespace": "crossplane-system"},
        "spec": {"credentials": {"source": "Secret", "secretRef": {
            "namespace": "crossplane-system", "name": "hcloud-credentials", "key": "token"}}}});
    let errors = validate_strictly("ProviderConfig", &schema, &config);
    assert!(errors.is_empty(), "{}", errors.join("\n"));
    // Every CRD the hand-off waits for is one the provider ships.
    for c in &pin.crds {
        let (plural, group) = c.split_once('.').unwrap();
        let f = format!("{CRDS}/provider-hetzner/{group}_{plural}.yaml");
        assert!(std::path::Path::new(&f).exists(), "{c}: {f}");
    }
}

const CRDS: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../../shared/upstream/crds");
