//! Contract tests of what `secrets-handoff` and `custody` render, without
//! a cluster: the External Secrets objects validate against ESO's CRDs
//! (v2.9.0, `shared/upstream/crds/`, which serve `external-secrets.io/v1`
//! only), strictly (a field the schema does not name is refused, as an API
//! server with strict field validation refuses it); External Secrets'
//! HelmRelease is rendered from the release manifest like a kit component;
//! bp-openbao's values carry the request's seal.

use cz_phases::bootstrap_kit::render::{KitInput, render_component};
use cz_phases::handoff::secrets::{cluster_secret_store, roundtrip_external_secret};
use cz_phases::release;
use serde_json::Value;

const CRDS: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../../shared/upstream/crds");

/// The CRD of `file` (under `shared/upstream/crds/`) and the schema of
/// `version`.
pub(crate) fn crd_file(file: &str, version: &str) -> (Value, Value) {
    let text = std::fs::read_to_string(format!("{CRDS}/{file}")).unwrap();
    let crd: Value = serde_saphyr::from_str(&text).unwrap();
    let versions = crd["spec"]["versions"].as_array().unwrap();
    let schema =
        versions.iter().find(|v| v["name"] == version).unwrap()["schema"]["openAPIV3Schema"]
            .clone();
    (crd, schema)
}

/// The CRD of `file`: its served versions and the schema of `version`.
fn crd(file: &str, version: &str) -> (Vec<String>, Value) {
    let text = std::fs::read_to_string(format!("{CRDS}/{file}")).unwrap();
    let crd: Value = serde_saphyr::from_str(&text).unwrap();
    let versions = crd["spec"]["versions"].as_array().unwrap();
    let served = versions
        .iter()
        .filter(|v| v["served"] == true)
        .map(|v| v["name"].as_str().unwrap().to_owned())
        .collect();
    let schema =
        versions.iter().find(|v| v["name"] == version).unwrap()["schema"]["openAPIV3Schema"]
            .clone();
    (served, schema)
}

/// Fields of `obj` its structural schema does not declare (where the
/// schema does not preserve unknown fields), as JSON pointers.
fn unknown_fields(schema: &Value, obj: &Value, at: &str, out: &mut Vec<String>) {
    if schema["x-kubernetes-preserve-unknown-fields"] == true {
        return;
    }
    match obj {
        Value::Object(m) => {
            let props = schema.get("properties").and_then(Value::as_object);
            let extra = schema.get("additionalProperties").filter(|a| a.is_object());
            for (k, v) in m {
                // metadata is the API server's, validated by it.
                if at.is_empty() && (k == "apiVersion" || k == "kind" || k == "metadata") {
                    continue;
                }
                let path = format!("{at}/{k}");
                match (props.and_then(|p| p.get(k)), extra) {
                    (Some(s), _) => unknown_fields(s, v, &path, out),
                    (None, Some(s)) => unknown_fields(s, v, &path, out),
                    (None, None) => out.push(path),
                }
            }
        }
        Value::Array(a) => {
            if let Some(items) = schema.get("items") {
                for (i, v) in a.iter().enumerate() {
                    unknown_fields(items, v, &format!("{at}/{i}"), out);
                }
            }
        }
        _ => {}
    }
}

pub(crate) fn validate_strictly(what: &str, schema: &Value, obj: &Value) -> Vec<String> {
    let v = jsonschema::validator_for(schema).unwrap();
    let mut errors: Vec<String> =
        v.iter_errors(obj).map(|e| format!("{what}{}: {e}", e.instance_path())).collect();
    let mut unknown = Vec::new();
    unknown_fields(schema, obj, "", &mut unknown);
    errors.extend(unknown.into_iter().map(|u| format!("{what}{u}: unknown field")));
    errors
}

#[test]
fn the_external_secrets_objects_validate_strictly_against_eso_v1() {
    let (served, store_schema) = crd("eso-external-secrets.io_clustersecretstores.yaml", "v1");
    assert_eq!(served, ["v1"], "ESO serves v1 only: v1beta1 objects would be refused");
    let store = cluster_secret_store();
    assert_eq!(store["apiVersion"], "external-secrets.io/v1");
    let errors = validate_strictly("ClusterSecretStore", &store_schema, &store);
    assert!(errors.is_empty(), "{}", errors.join("\n"));

    let (served, es_schema) = crd("eso-external-secrets.io_externalsecrets.yaml", "v1");
    assert_eq!(served, ["v1"]);
    for es in [roundtrip_external_secret(None), roundtrip_external_secret(Some("1700000000000"))] {
        assert_eq!(es["apiVersion"], "external-secrets.io/v1");
        let errors = validate_strictly("ExternalSecret", &es_schema, &es);
        assert!(errors.is_empty(), "{}", errors.join("\n"));
    }
}

/// The strict check has teeth: a misspelt field, a wrongly typed one and
/// the store kind's old shape are each refused.
#[test]
fn the_strict_check_refuses_what_an_api_server_would() {
    let (_, store_schema) = crd("eso-external-secrets.io_clustersecretstores.yaml", "v1");
    let mut typo = cluster_secret_store();
    typo["spec"]["provider"]["vault"]["sever"] = typo["spec"]["provider"]["vault"]["server"].take();
    let errors = validate_strictly("store", &store_schema, &typo);
    assert!(errors.iter().any(|e| e.contains("/sever: unknown field")), "{errors:?}");
    assert!(errors.iter().any(|e| e.contains("server")), "server is required: {errors:?}");
    let (_, es_schema) = crd("eso-external-secrets.io_externalsecrets.yaml", "v1");
    let mut bad = roundtrip_external_secret(None);
    bad["spec"]["data"][0]["remoteRef"]["key"] = Value::from(7);
    assert!(!validate_strictly("es", &es_schema, &bad).is_empty());
}

fn input(seal: &str) -> KitInput {
    KitInput {
        fqdn: "acme.omani.works".into(),
        sovereign: "acme-omani-works".into(),
        api_host: "10.0.1.2".into(),
        seal: seal.into(),
    }
}

#[test]
fn external_secrets_is_pinned_and_rendered_like_a_kit_component() {
    let pin = release::handoff_pin("external-secrets").expect("the manifest pins it");
    assert!(release::pin("external-secrets").is_none(), "not one of the kit's 12");
    assert!(pin.upstream.starts_with("external-secrets "), "{}", pin.upstream);
    let r = render_component(pin, &input("shamir")).unwrap();
    let hr = &r.helm_release;
    assert_eq!(hr["spec"]["chart"]["spec"]["chart"], "bp-external-secrets");
    assert_eq!(hr["spec"]["chart"]["spec"]["version"], pin.version.as_str());
    assert_eq!(hr["spec"]["targetNamespace"], "external-secrets-system");
    assert_eq!(hr["spec"]["dependsOn"][0]["name"], "bp-openbao");
    assert_eq!(hr["spec"]["values"]["serviceAccount"]["name"], "external-secrets");
    let (_, hr_schema) = crd("flux-helm.toolkit.fluxcd.io_helmreleases.yaml", "v2");
    let v = jsonschema::validator_for(&hr_schema).unwrap();
    assert!(v.is_valid(hr), "{hr}");
    assert!(r.namespace.is_some());
}

#[test]
fn bp_openbao_carries_the_requested_seal() {
    let pin = release::pin("openbao").unwrap();
    let values = |seal: &str| {
        render_component(pin, &input(seal)).unwrap().helm_release["spec"]["values"].clone()
    };
    let shamir = values("shamir");
    let config = shamir["server"]["ha"]["raft"]["config"].as_str().unwrap();
    assert!(!config.contains("seal \""), "{config}");
    assert!(config.contains("retry_join"), "replicas join replica 0: {config}");
    assert!(shamir["server"].get("volumes").is_none());
    let st = values("static");
    let config = st["server"]["ha"]["raft"]["config"].as_str().unwrap();
    assert!(config.contains("seal \"static\""), "{config}");
    assert!(config.contains("file:///openbao/static-seal/key"), "{config}");
    assert_eq!(st["server"]["volumes"][0]["secret"]["secretName"], "openbao-static-seal");
    assert_eq!(st["server"]["volumeMounts"][0]["mountPath"], "/openbao/static-seal");
}
