//! Input hygiene, as a property: arbitrary Unicode in any string field of a
//! provision request is either refused with a 422 entry naming that field,
//! or accepted, and then it is stored intact and every file rendered from
//! the request (the tofu module's HCL, the nodes' cloud-init YAML) still
//! parses, with the value where it belongs.

use std::path::Path;

use cz_phases::infra::render::{RenderInput, render_hetzner};
use cz_phases::request::parse_provision;
use proptest::prelude::*;
use proptest::test_runner::{Config, TestRunner};
use serde_json::{Value, json};

const TEMPLATES: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../cloud-templates/hetzner");
const TOKEN: &str = "ZZtok3nZZ9f8e7d6c5b4a3928171605f4e3d2c1b0a99887766554433221100aa";

fn body() -> Value {
    json!({
        "api_version": "catalyst.openova.io/v1",
        "org": { "name": "Acme", "email": "ops@acme.io" },
        "domain": { "mode": "pool", "pool_domain": "omani.works", "subdomain": "acme" },
        "regions": [{ "provider": "hetzner", "location": "fsn1",
                      "control_plane": { "sku": "cpx32", "count": 1 },
                      "workers": { "sku": "cpx32", "count": 1 } }],
        "components": ["cilium", "cert-manager", "flux", "crossplane", "sealed-secrets",
                       "spire", "openbao", "powerdns"],
        "ssh_public_keys": [
            "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIJ1jEYyjbOZZpBaF4nB0KDRtBb1WPw6mXf1Y8y3hUKt4 ops@acme",
        ],
        "cloud_token": TOKEN,
        "handoff_token": TOKEN,
        "custody": {
            "custodians": [
                { "recipient": "age1ql3z7hjy54pw3hyww5ayyfg7zqgvc7w3j2elw8zmrj2kg5sfn9aqmcac8p",
                  "label": "alice" },
            ],
            "openbao_threshold": 1,
            "seal": "shamir",
        },
        "keycloak": { "topology": "per-organization" },
        "on_failure": "rollback",
    })
}

/// Every string field: its JSON pointer, and whether it is a secret (never
/// serialized, so "stored intact" is checked by the parse alone).
const FIELDS: &[(&str, bool)] = &[
    ("/api_version", false),
    ("/org/name", false),
    ("/org/email", false),
    ("/domain/pool_domain", false),
    ("/domain/subdomain", false),
    ("/regions/0/location", false),
    ("/regions/0/control_plane/sku", false),
    ("/regions/0/workers/sku", false),
    ("/components/0", false),
    ("/ssh_public_keys/0", false),
    ("/cloud_token", true),
    ("/handoff_token", true),
    ("/custody/custodians/0/recipient", false),
    ("/custody/custodians/0/label", false),
    ("/custody/seal", false),
    ("/keycloak/topology", false),
    ("/on_failure", false),
];

/// `/regions/0/control_plane/sku` → `regions[0].control_plane.sku`.
fn field_path(pointer: &str) -> String {
    let mut out = String::new();
    for part in pointer.trim_start_matches('/').split('/') {
        if part.chars().all(|c| c.is_ascii_digit()) {
            out.push_str(&format!("[{part}]"));
        } else {
            if !out.is_empty() {
                out.push('.');
            }
            out.push_str(part);
        }
    }
    out
}

/// What each value must survive: quotes and template syntax of HCL and
/// YAML, line breaks, control and bidi characters, NUL, long strings.
fn nasty() -> impl Strategy<Value = String> {
    prop_oneof![
        any::<String>(),
        "\\PC{0,80}",
        Just("\"${jsonencode(var.x)}\"".to_owned()),
        Just("%{ if true }x%{ endif }".to_owned()),
        Just("a\nb: c\n- d".to_owned()),
        Just("{{ job_id }}".to_owned()),
        Just("x\u{0}y".to_owned()),
        Just("evil\u{202e}txt.exe".to_owned()),
        Just(" acme ".to_owned()),
        Just("a".repeat(5000)),
        Just(String::new()),
    ]
}

/// A value for messages: quoted, escaped, cut at 60 characters.
fn shown(v: &str) -> String {
    let cut: String = v.chars().take(60).collect();
    if cut.len() < v.len() {
        format!("{cut:?}… ({} chars)", v.chars().count())
    } else {
        format!("{cut:?}")
    }
}

fn check(pointer: &str, secret: bool, value: &str) -> Result<(), TestCaseError> {
    let mut b = body();
    *b.pointer_mut(pointer).expect("the field exists") = Value::String(value.to_owned());
    let bytes = serde_json::to_vec(&b).unwrap();
    let path = field_path(pointer);
    match parse_provision(&bytes) {
        Err(errs) => {
            // The answer names the field (a value may also break a rule of
            // a sibling: a long pool domain makes the whole name too long).
            let names_it =
                errs.iter().any(|e| e.path == path || e.path.starts_with(&format!("{path}.")));
            prop_assert!(
                names_it,
                "{} in {path}: refused without naming it: {errs:?}",
                shown(value)
            );
            prop_assert!(errs.iter().all(|e| !e.message.is_empty()));
        }
        Ok(req) => {
            // Stored intact.
            if !secret {
                let stored = serde_json::to_value(&req).unwrap();
                prop_assert_eq!(stored.pointer(pointer), Some(&Value::String(value.to_owned())));
            }
            // Rendered, it still parses, and carries the value.
            let slug = req.fqdn().replace('.', "-");
            let cidrs = vec!["203.0.113.10/32".to_owned()];
            let input = RenderInput::from_region(
                &slug,
                "0191d3c4-5b6a-7c8d-9e0f-a1b2c3d4e5f6",
                &req.regions[0],
                &req.ssh_public_keys,
                &cidrs,
            )
            .map_err(|e| TestCaseError::fail(format!("{} in {path}: {e}", shown(value))))?;
            let files = render_hetzner(&input, Path::new(TEMPLATES)).map_err(|e| {
                TestCaseError::fail(format!("{} in {path}: render: {e}", shown(value)))
            })?;
            for (name, text) in &files {
                if name.ends_with(".tf") {
                    hcl::parse(text).map_err(|e| {
                        TestCaseError::fail(format!("{} in {path}: {name}: {e}", shown(value)))
                    })?;
                }
            }
            let cloud_init: Value =
                serde_saphyr::from_str(&files["cloud-init.yaml"]).map_err(|e| {
                    TestCaseError::fail(format!("{} in {path}: cloud-init: {e}", shown(value)))
                })?;
            let keys = &cloud_init["users"][0]["ssh_authorized_keys"];
            prop_assert_eq!(keys, &json!(req.ssh_public_keys));
        }
    }
    Ok(())
}

/// Names people read refuse what would disguise them.
#[test]
fn shown_text_refuses_control_and_invisible_characters() {
    for (pointer, path) in
        [("/org/name", "org.name"), ("/custody/custodians/0/label", "custody.custodians[0].label")]
    {
        for bad in ["a\u{0}b", "evil\u{202e}txt", "a\nb", "zero\u{200b}width", "bom\u{feff}"] {
            let mut b = body();
            *b.pointer_mut(pointer).unwrap() = json!(bad);
            let errs = parse_provision(&serde_json::to_vec(&b).unwrap()).unwrap_err();
            assert_eq!(errs[0].path, path, "{bad:?}");
        }
        let mut b = body();
        *b.pointer_mut(pointer).unwrap() = json!("Åsa Öberg-Ngữ 🌍");
        assert!(
            parse_provision(&serde_json::to_vec(&b).unwrap()).is_ok(),
            "ordinary Unicode is fine"
        );
    }
}

#[test]
fn every_string_field_refuses_or_carries_arbitrary_unicode() {
    let cases: u32 =
        std::env::var("CZ_HYGIENE_CASES").ok().and_then(|v| v.parse().ok()).unwrap_or(96);
    for (pointer, secret) in FIELDS {
        let mut runner =
            TestRunner::new(Config { cases, failure_persistence: None, ..Config::default() });
        let result = runner.run(&nasty(), |v| check(pointer, *secret, &v));
        if let Err(e) = result {
            panic!("{pointer}: {e}");
        }
    }
}

/// The sample itself is accepted (so the property above tests one field
/// at a time).
#[test]
fn the_sample_body_is_valid() {
    parse_provision(&serde_json::to_vec(&body()).unwrap()).unwrap();
}
