//! Contract tests of `bootstrap-kit/` without a cluster: every rendered
//! object validates against its CRD's `openAPIV3Schema` from
//! `shared/upstream/crds/` (Flux HelmRelease v2, HelmRepository v1), every
//! `dependsOn` names a HelmRelease of the kit and the graph is acyclic, no
//! placeholder survives rendering (a literal placeholder once reached live
//! clusters), no monitoring CR is enabled before its CRD exists (a chart
//! defaulting `serviceMonitor.enabled` fails to install on a fresh cluster
//! and every release depending on it waits forever), bp-cilium carries
//! exactly the values the cluster phase installed Cilium with (one
//! installer, one version, one set of values: two diverging installs of one
//! component can break it beyond repair), and the full render for a default
//! request matches its golden file (`UPDATE_GOLDEN=1` rewrites it).

use std::collections::{BTreeMap, BTreeSet};

use cz_phases::bootstrap_kit::flux_install;
use cz_phases::bootstrap_kit::render::{KitInput, Rendered, render_kit};
use cz_phases::cluster::render::cilium_manifest;
use cz_phases::release;
use serde_json::Value;

const CRDS: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../../shared/upstream/crds");
const GOLDEN: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/golden/kit/default.json");

fn input() -> KitInput {
    KitInput {
        fqdn: "acme.omani.works".into(),
        sovereign: "acme-omani-works".into(),
        api_host: "10.0.1.2".into(),
        seal: "shamir".into(),
    }
}

fn all() -> Vec<Rendered> {
    render_kit(&[], &input()).unwrap()
}

/// The `openAPIV3Schema` of `version` in a CRD file.
fn schema(file: &str, version: &str) -> Value {
    let text = std::fs::read_to_string(format!("{CRDS}/{file}")).unwrap();
    let crd: Value = serde_saphyr::from_str(&text).unwrap();
    crd["spec"]["versions"]
        .as_array()
        .unwrap()
        .iter()
        .find(|v| v["name"] == version)
        .unwrap_or_else(|| panic!("{file} has no version {version}"))["schema"]["openAPIV3Schema"]
        .clone()
}

fn validate(what: &str, schema: &Value, obj: &Value) {
    let v = jsonschema::validator_for(schema).unwrap();
    let errors: Vec<String> =
        v.iter_errors(obj).map(|e| format!("{}: {e}", e.instance_path())).collect();
    assert!(errors.is_empty(), "{what} does not fit its CRD:\n{}", errors.join("\n"));
}

#[test]
fn every_object_validates_against_its_upstream_crd() {
    let hr = schema("flux-helm.toolkit.fluxcd.io_helmreleases.yaml", "v2");
    let repo = schema("flux-source.toolkit.fluxcd.io_helmrepositories.yaml", "v1");
    let kit = all();
    assert_eq!(kit.len(), 12);
    for r in &kit {
        assert_eq!(r.helm_release["apiVersion"], "helm.toolkit.fluxcd.io/v2");
        validate(&format!("{} HelmRelease", r.component), &hr, &r.helm_release);
        assert_eq!(r.source["apiVersion"], "source.toolkit.fluxcd.io/v1");
        validate(&format!("{} HelmRepository", r.component), &repo, &r.source);
        if let Some(ns) = &r.namespace {
            assert_eq!(
                (ns["apiVersion"].as_str(), ns["kind"].as_str()),
                (Some("v1"), Some("Namespace"))
            );
            assert_eq!(
                ns["metadata"]["labels"]["catalyst.openova.io/sovereign"],
                "acme-omani-works"
            );
        }
    }
    // The check has teeth: a wrongly typed field is refused. (Unknown fields
    // such as `disableTakeOwnership`, which HelmRelease v2 does not have,
    // are pruned by a real API server, not refused by these schemas: they
    // set no `additionalProperties`.)
    let v = jsonschema::validator_for(&hr).unwrap();
    let mut bad = kit[0].helm_release.clone();
    bad["spec"]["interval"] = Value::from(15);
    assert!(!v.is_valid(&bad), "a non-string interval should be refused");
}

#[test]
fn depends_on_names_kit_releases_and_the_graph_is_acyclic() {
    let kit = all();
    let names: BTreeSet<String> = kit
        .iter()
        .map(|r| r.helm_release["metadata"]["name"].as_str().unwrap().to_owned())
        .collect();
    let mut edges: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for r in &kit {
        let me = r.helm_release["metadata"]["name"].as_str().unwrap().to_owned();
        for d in r.helm_release["spec"]["dependsOn"].as_array().into_iter().flatten() {
            let d = d["name"].as_str().unwrap().to_owned();
            assert!(names.contains(&d), "{me} depends on {d}, which is not in the kit");
            edges.entry(me.clone()).or_default().push(d);
        }
    }
    // Kahn: every node is removed, so there is no cycle.
    let mut left: BTreeSet<String> = names.clone();
    while !left.is_empty() {
        let ready: Vec<String> = left
            .iter()
            .filter(|n| edges.get(*n).is_none_or(|ds| ds.iter().all(|d| !left.contains(d))))
            .cloned()
            .collect();
        assert!(!ready.is_empty(), "a dependsOn cycle among {left:?}");
        for n in ready {
            left.remove(&n);
        }
    }
    assert!(!edges.contains_key("bp-cilium"), "Cilium depends on nothing");
}

#[test]
fn nothing_unrendered_and_no_monitoring_before_its_crd() {
    let text = serde_json::to_string(&all().iter().flat_map(Rendered::objects).collect::<Vec<_>>())
        .unwrap();
    for marker in ["{{", "{%", "${", "PLACEHOLDER", "example.com", "example.de"] {
        assert!(!text.contains(marker), "`{marker}` in the rendered kit");
    }
    fn walk(path: &str, v: &Value, bad: &mut Vec<String>) {
        match v {
            Value::Object(m) => {
                for (k, x) in m {
                    let p = format!("{path}.{k}");
                    let monitor = ["servicemonitor", "podmonitor", "prometheusrule"]
                        .iter()
                        .any(|w| k.to_ascii_lowercase().contains(w));
                    if monitor {
                        for flag in ["enabled", "create"] {
                            if x.get(flag) == Some(&Value::Bool(true)) {
                                bad.push(format!("{p}.{flag}"));
                            }
                        }
                    }
                    walk(&p, x, bad);
                }
            }
            Value::Array(a) => a.iter().for_each(|x| walk(path, x, bad)),
            _ => {}
        }
    }
    let mut bad = Vec::new();
    for r in all() {
        walk(&r.component, &r.helm_release["spec"]["values"], &mut bad);
    }
    assert!(bad.is_empty(), "monitoring CRs enabled before their CRDs exist: {bad:?}");
}

#[test]
fn bp_cilium_has_the_values_the_cluster_phase_installed_and_every_pin_is_the_manifests() {
    let kit = all();
    let cilium = kit.iter().find(|r| r.component == "cilium").unwrap();
    let chart: Value = serde_saphyr::from_str(&cilium_manifest("10.0.1.2").unwrap()).unwrap();
    let installed: Value =
        serde_saphyr::from_str(chart["spec"]["valuesContent"].as_str().unwrap()).unwrap();
    assert_eq!(cilium.helm_release["spec"]["values"], installed, "one set of Cilium values");
    for r in &kit {
        let p = release::pin(&r.component).unwrap();
        let spec = &r.helm_release["spec"];
        assert_eq!(spec["chart"]["spec"]["version"], p.version.as_str(), "{}", r.component);
        assert_eq!(spec["targetNamespace"], p.namespace.as_str());
        assert_eq!(
            spec["install"]["disableWait"], true,
            "readiness is judged by our probes, not by Helm's wait"
        );
        assert_eq!(r.source["spec"]["url"], release::source().url.as_str());
    }
}

#[test]
fn the_default_render_matches_its_golden_file() {
    let objs: Vec<Value> = all().iter().flat_map(Rendered::objects).collect();
    let got = serde_json::to_string_pretty(&objs).unwrap() + "\n";
    if std::env::var("UPDATE_GOLDEN").as_deref() == Ok("1") {
        std::fs::create_dir_all(std::path::Path::new(GOLDEN).parent().unwrap()).unwrap();
        std::fs::write(GOLDEN, &got).unwrap();
    }
    let want = std::fs::read_to_string(GOLDEN).expect("golden file (UPDATE_GOLDEN=1 writes it)");
    assert!(got == want, "the kit render differs from {GOLDEN}");
}

#[test]
fn an_unknown_component_is_refused() {
    assert!(render_kit(&["nginx".into()], &input()).is_err());
    let two = render_kit(&["cilium".into(), "cert-manager".into()], &input()).unwrap();
    assert_eq!(
        two.iter().map(|r| r.component.as_str()).collect::<Vec<_>>(),
        ["cilium", "cert-manager"]
    );
}

/// Flux's first install is the release bp-flux takes over (a second Flux
/// install at another version can roll back into deleting every Flux
/// controller): the K3s HelmChart fits its CRD, installs the chart bp-flux
/// wraps at that version, as bp-flux's release name in bp-flux's
/// namespace, with exactly bp-flux's values.
#[test]
fn the_flux_helmchart_is_the_release_bp_flux_takes_over() {
    let objs = flux_install(&input()).unwrap();
    let chart = &objs[1];
    validate("the Flux HelmChart", &schema("k3s-helm.cattle.io_helmcharts.yaml", "v1"), chart);
    let bp = all().into_iter().find(|r| r.component == "flux").unwrap().helm_release;
    let pin = release::pin("flux").unwrap();
    let (name, _, version) = release::flux_chart();
    assert_eq!(pin.upstream.split(' ').take(2).collect::<Vec<_>>(), [name, version]);
    assert_eq!(chart["spec"]["chart"], name);
    assert_eq!(chart["spec"]["version"], version);
    assert_eq!(chart["metadata"]["name"], bp["spec"]["releaseName"]);
    assert_eq!(chart["spec"]["targetNamespace"], bp["spec"]["targetNamespace"]);
    assert_eq!(objs[0]["metadata"]["name"], bp["spec"]["targetNamespace"]);
    let values: Value =
        serde_saphyr::from_str(chart["spec"]["valuesContent"].as_str().unwrap()).unwrap();
    assert_eq!(values, bp["spec"]["values"]);
}
