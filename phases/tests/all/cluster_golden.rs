//! Golden files of what the `cluster` phase writes to nodes (the K3s config
//! per role, the install wrapper, the Cilium HelmChart), `UPDATE_GOLDEN=1`
//! rewrites them; and the HelmChart checked against the helm-controller CRD
//! (`shared/upstream/crds/k3s-helm.cattle.io_helmcharts.yaml`).

use cz_adapters::K3sSource;
use cz_phases::cluster::render::{cilium_manifest, install_script, k3s_config};
use serde_json::Value;

const GOLDEN: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/golden/cluster");
const CRD: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/../../shared/upstream/crds/k3s-helm.cattle.io_helmcharts.yaml"
);
/// A made-up token: the golden files show where it goes.
const TOKEN: &str = "0000000000000000000000000000000000000000000000000000000000000000";

fn golden(name: &str, got: &str) {
    let path = std::path::Path::new(GOLDEN).join(name);
    if std::env::var("UPDATE_GOLDEN").as_deref() == Ok("1") {
        std::fs::write(&path, got).unwrap();
    }
    let want = std::fs::read_to_string(&path)
        .unwrap_or_else(|e| panic!("{}: {e} (UPDATE_GOLDEN=1 writes it)", path.display()));
    assert_eq!(got, want, "{name} differs from its golden file");
}

#[test]
fn node_files_match_their_golden_files() {
    let (first, lb, fqdn) = ("10.0.1.2", "203.0.113.50", "acme.omani.works");
    golden("config-server-first.yaml", &k3s_config("server", true, TOKEN, first, first, lb, fqdn));
    golden(
        "config-server-join.yaml",
        &k3s_config("server", false, TOKEN, first, "10.0.1.3", lb, fqdn),
    );
    golden("config-agent.yaml", &k3s_config("agent", false, TOKEN, first, "10.0.1.11", lb, fqdn));
    let air = K3sSource::AirGap { dir: "/srv/artifacts".into() };
    let online = K3sSource::Download {
        script_url: "https://get.k3s.io".into(),
        script_sha256: "0".repeat(64),
        release_url: "https://github.com/k3s-io/k3s/releases".into(),
    };
    golden("install-server.sh", &install_script("server", &air));
    golden("install-agent.sh", &install_script("agent", &air));
    golden("install-server-download.sh", &install_script("server", &online));
    for s in [install_script("server", &air), install_script("agent", &online)] {
        let mut sh = std::process::Command::new("sh")
            .arg("-n")
            .stdin(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        use std::io::Write;
        sh.stdin.take().unwrap().write_all(s.as_bytes()).unwrap();
        assert!(sh.wait().unwrap().success(), "not valid sh:\n{s}");
    }
    golden("cilium.yaml", &cilium_manifest(first).unwrap());
}

#[test]
fn server_configs_carry_the_critical_flags_identically() {
    // K3s refuses a server join with "critical configuration value mismatch"
    // if these differ between servers.
    let first = k3s_config("server", true, TOKEN, "10.0.1.2", "10.0.1.2", "203.0.113.50", "a.b.c");
    let join = k3s_config("server", false, TOKEN, "10.0.1.2", "10.0.1.3", "203.0.113.50", "a.b.c");
    let critical = |c: &str| -> Vec<String> {
        c.lines()
            .filter(|l| {
                [
                    "flannel-backend",
                    "disable-network-policy",
                    "disable-kube-proxy",
                    "  - traefik",
                    "  - servicelb",
                ]
                .iter()
                .any(|k| l.starts_with(k))
            })
            .map(str::to_owned)
            .collect()
    };
    assert_eq!(critical(&first).len(), 5, "{first}");
    assert_eq!(critical(&first), critical(&join));
    assert!(first.contains("cluster-init: true") && !join.contains("cluster-init"));
    assert!(join.contains("server: \"https://10.0.1.2:6443\""));
    for c in [&first, &join] {
        assert!(c.contains("  - \"203.0.113.50\"\n") && c.contains("  - \"api.a.b.c\"\n"), "{c}");
    }
}

/// Every field of the HelmChart is one the CRD's `spec` declares, with the
/// declared type, and its values parse as YAML with what Cilium on K3s needs.
#[test]
fn the_cilium_helmchart_fits_the_helm_controller_crd() {
    let crd: Value = serde_saphyr::from_str(&std::fs::read_to_string(CRD).unwrap()).unwrap();
    let spec_props = crd
        .pointer("/spec/versions/0/schema/openAPIV3Schema/properties/spec/properties")
        .and_then(Value::as_object)
        .expect("the CRD's spec properties")
        .clone();
    let chart: Value = serde_saphyr::from_str(&cilium_manifest("10.0.1.2").unwrap()).unwrap();
    assert_eq!(chart["apiVersion"], "helm.cattle.io/v1");
    assert_eq!(chart["kind"], "HelmChart");
    let group = crd.pointer("/spec/group").and_then(Value::as_str).unwrap();
    assert_eq!(format!("{group}/v1"), "helm.cattle.io/v1");
    for (k, v) in chart["spec"].as_object().unwrap() {
        let decl = spec_props.get(k).unwrap_or_else(|| panic!("spec.{k} is not in the CRD"));
        let want = decl["type"].as_str().unwrap_or("object");
        let ok = match want {
            "string" => v.is_string(),
            "boolean" => v.is_boolean(),
            "integer" => v.is_i64() || v.is_u64(),
            "object" => v.is_object(),
            "array" => v.is_array(),
            _ => true,
        };
        assert!(ok, "spec.{k} is {v}, the CRD says {want}");
    }
    assert_eq!(chart["spec"]["bootstrap"], true, "the CNI installs before there is a pod network");
    let values: Value =
        serde_saphyr::from_str(chart["spec"]["valuesContent"].as_str().unwrap()).unwrap();
    assert_eq!(
        values["k8sServiceHost"], "10.0.1.2",
        "agents reach the API (127.0.0.1 only exists on servers)"
    );
    assert_eq!(values["k8sServicePort"], 6443);
    assert_eq!(values["kubeProxyReplacement"], true, "K3s runs with --disable-kube-proxy");
}
