//! The OpenAPI document is the contract: a request body the document's
//! schema accepts is one the daemon accepts, and the other way round.
//!
//! A real JSON Schema validator (draft 2020-12, the `jsonschema` crate:
//! the engine schemathesis itself checks with) judges bodies against the
//! document the daemon serves, and `parse_provision`/`parse_add_region`
//! judge the same bytes. Proptest mutates a valid body, field by field,
//! towards every rule's edges; any disagreement is a contract bug.
//!
//! The one rule JSON Schema cannot state, distinct custodian recipients,
//! is the one allowed difference, and asserted as such.

use base64::Engine as _;
use catalyst_zero::api::system::document;
use cz_phases::request::contract::{Byte, key_shapes};
use cz_phases::request::{COMPONENTS, HETZNER_LOCATIONS, parse_add_region, parse_provision};
use proptest::prelude::*;
use serde_json::{Value, json};

fn validator(component: &str) -> jsonschema::Validator {
    let schema = json!({
        "$schema": "https://json-schema.org/draft/2020-12/schema",
        "$ref": format!("#/components/schemas/{component}"),
        "components": document()["components"],
    });
    jsonschema::options()
        .should_validate_formats(true)
        .with_format("age-recipient", cz_state::secrets::is_age_recipient)
        .build(&schema)
        .expect("the document's schema compiles")
}

/// Twelve real recipients, so generated custodians are distinct unless a
/// case repeats one on purpose.
fn recipients() -> &'static [String] {
    static R: std::sync::OnceLock<Vec<String>> = std::sync::OnceLock::new();
    R.get_or_init(|| {
        (0..12).map(|_| age::x25519::Identity::generate().to_public().to_string()).collect()
    })
}

fn sample() -> Value {
    let mut v = cz_phases::testing::sample_body("acme", 3, 2, &"t".repeat(64), &recipients()[0]);
    v["custody"]["custodians"][1]["recipient"] = recipients()[1].clone().into();
    v["custody"]["custodians"][2]["recipient"] = recipients()[2].clone().into();
    v
}

/// Text near every edge: arbitrary Unicode, whitespace, hidden characters.
fn text() -> impl Strategy<Value = String> {
    prop_oneof![
        any::<String>(),
        "[ a-zA-Z0-9:@.\\-\t\n\u{a0}\u{85}\u{1680}\u{200b}\u{202e}\u{2028}\u{feff}\u{fffe}\u{e9}]{0,10}",
        Just(String::new()),
        (90usize..110).prop_map(|n| "a b".repeat(n / 3 + 1)[..n].to_string()),
    ]
}

fn domainish() -> impl Strategy<Value = String> {
    prop_oneof![
        "[a-zA-Z0-9.\\-_]{0,20}",
        "([a-z0-9\\-]{1,6}\\.){1,3}[a-z0-9\\-]{1,6}",
        (1usize..5, 55usize..66).prop_map(|(n, len)| {
            let labels: Vec<String> = (0..n).map(|_| "a".repeat(len)).collect();
            format!("{}.io", labels.join("."))
        }),
    ]
}

fn count() -> impl Strategy<Value = Value> {
    prop_oneof![
        (0u32..5).prop_map(Value::from),
        Just(json!(3.0)),
        Just(json!(1.5)),
        Just(json!(-1)),
        Just(json!(7.0)),
        // The edges of Hetzner's limits beside 1 or 3 control planes.
        proptest::sample::select(vec![22, 24, 25, 72, 74, 75, 97, 99, 100, 147, 149, 150])
            .prop_map(Value::from),
        proptest::sample::select(vec![496, 497, 498, 499, 500, 501]).prop_map(Value::from),
    ]
}

fn network() -> impl Strategy<Value = Option<Value>> {
    prop_oneof![
        Just(None),
        proptest::sample::select(vec!["auto", "private", "public", "Private", ""])
            .prop_map(|n| Some(n.into())),
    ]
}

fn load_balancer() -> impl Strategy<Value = Option<Value>> {
    let kind = prop_oneof![
        Just(None),
        Just(Some(Value::Null)),
        proptest::sample::select(vec!["lb11", "lb21", "lb31", "lb41"])
            .prop_map(|k| Some(Value::from(k)))
    ];
    let targets = prop_oneof![
        Just(None),
        proptest::sample::select(vec!["control-plane", "all-nodes", "workers"]).prop_map(Some)
    ];
    prop_oneof![
        Just(None),
        (kind, targets).prop_map(|(k, t)| {
            let mut lb = json!({});
            if let Some(k) = k {
                lb["type"] = k;
            }
            if let Some(t) = t {
                lb["targets"] = t.into();
            }
            Some(lb)
        }),
        Just(Some(json!({ "targets": "all-nodes", "extra": 1 }))),
    ]
}

fn region() -> impl Strategy<Value = Value> {
    let location = prop_oneof![
        proptest::sample::select(HETZNER_LOCATIONS.to_vec()).prop_map(str::to_owned),
        Just("xx1".to_owned()),
    ];
    let sku = prop_oneof![Just("cpx32"), Just("cax11"), Just("bogus")];
    (location, count(), count(), sku, network(), load_balancer()).prop_map(
        |(l, cp, w, sku, net, lb)| {
            let mut r = json!({ "provider": "hetzner", "location": l,
                    "control_plane": { "sku": sku, "count": cp },
                    "workers": { "sku": "cpx32", "count": w } });
            if let Some(n) = net {
                r["network"] = n;
            }
            if let Some(lb) = lb {
                r["load_balancer"] = lb;
            }
            r
        },
    )
}

/// A key line: one of the accepted shapes with random bytes (a byte the
/// shape fixes is changed now and then), then separators and a comment.
fn ssh_key() -> impl Strategy<Value = String> {
    let shapes = key_shapes();
    let n = shapes.len();
    (0..n, proptest::collection::vec(any::<u8>(), 600), 0u8..20, 0u8..4, text()).prop_map(
        move |(i, bytes, tweak, sep, comment)| {
            let (kind, shape) = &shapes[i];
            let mut blob: Vec<u8> = shape
                .iter()
                .zip(&bytes)
                .map(|(b, r)| match b {
                    Byte::Is(v) => *v,
                    Byte::Any => *r,
                    Byte::High => *r | if tweak == 1 { 0 } else { 0x80 },
                })
                .collect();
            match tweak {
                2 => blob[shape.len() / 2] ^= 1,
                3 => blob[5] ^= 1,
                4 => blob.truncate(blob.len() - 1),
                5 => blob.push(0),
                _ => {}
            }
            let data = base64::engine::general_purpose::STANDARD.encode(&blob);
            let sep = [" ", " ", "  ", "\t"][usize::from(sep)];
            match tweak {
                6 => format!("{kind}{sep}{data}"),
                7 => format!("{kind}{sep}{}", data.trim_end_matches('=')),
                8 => format!(" {kind} {data}"),
                _ => format!("{kind}{sep}{data} {comment}"),
            }
        },
    )
}

fn custody() -> impl Strategy<Value = Value> {
    let shares = prop_oneof![
        Just(None),
        Just(Some(Value::Null)),
        (0u8..12).prop_map(|s| Some(s.into())),
        Just(Some(json!(4.0))),
    ];
    let label = prop_oneof![Just(None), text().prop_map(Some)];
    (0usize..12, shares, 0u8..12, label, any::<bool>()).prop_map(
        |(n, shares, threshold, label, repeat)| {
            let mut custodians: Vec<Value> =
                recipients()[..n].iter().map(|r| json!({ "recipient": r })).collect();
            if let (Some(l), Some(c)) = (label, custodians.first_mut()) {
                c["label"] = l.into();
            }
            if repeat && n >= 2 {
                custodians[1]["recipient"] = recipients()[0].clone().into();
                custodians[1]["label"] = "twin".into();
            }
            let mut c = json!({ "custodians": custodians, "openbao_threshold": threshold });
            if let Some(s) = shares {
                c["openbao_shares"] = s;
            }
            c
        },
    )
}

fn domain() -> impl Strategy<Value = Value> {
    let registrar = prop_oneof![
        Just("cloudflare"),
        Just("namecheap"),
        Just("godaddy"),
        Just("ovh"),
        Just("dynadot")
    ];
    let token = prop_oneof![
        "[a-z0-9:. ]{0,14}",
        "[a-z]{1,3}:[a-z]{1,3}:[0-9]{1,3}(\\.[0-9]{1,3}){3}",
        "[a-z]{1,3}:[a-z]{1,3}:0[0-9](\\.[0-9]{1,3}){3}",
    ];
    let subdomain = prop_oneof!["[a-z0-9\\-]{0,8}", Just("api".to_owned()), "[a-z]{62,65}"];
    prop_oneof![
        (domainish(), subdomain)
            .prop_map(|(p, s)| json!({ "mode": "pool", "pool_domain": p, "subdomain": s })),
        domainish().prop_map(|f| json!({ "mode": "byo-manual", "fqdn": f })),
        (domainish(), registrar, token).prop_map(|(f, r, t)| {
            json!({ "mode": "byo-api", "fqdn": f, "registrar": r, "registrar_token": t })
        }),
        Just(json!({ "mode": "byo-manual", "fqdn": "a.example.com", "extra": 1 })),
    ]
}

#[derive(Clone, Debug)]
enum Change {
    Set(&'static str, Value),
    Remove(&'static str),
}

fn change() -> impl Strategy<Value = Change> {
    let components = proptest::collection::vec(
        prop_oneof![
            proptest::sample::select(COMPONENTS.to_vec()).prop_map(str::to_owned),
            Just("bogus".to_owned())
        ],
        0..14,
    );
    let token = "[A-Za-z0-9 ]{62,65}";
    prop_oneof![
        text().prop_map(|t| Change::Set("/org/name", t.into())),
        "[a-zA-Z0-9 .\u{a0}\\-]{0,8}@?[a-zA-Z0-9.\\-]{0,12}"
            .prop_map(|t| Change::Set("/org/email", t.into())),
        domain().prop_map(|d| Change::Set("/domain", d)),
        proptest::collection::vec(region(), 0..4).prop_map(|r| Change::Set("/regions", r.into())),
        components.prop_map(|c| Change::Set("/components", c.into())),
        Just(Change::Remove("/components")),
        proptest::collection::vec(ssh_key(), 0..3)
            .prop_map(|k| Change::Set("/ssh_public_keys", k.into())),
        custody().prop_map(|c| Change::Set("/custody", c)),
        token.prop_map(|t| Change::Set("/cloud_token", t.into())),
        token.prop_map(|t| Change::Set("/handoff_token", t.into())),
        Just(Change::Set("/handoff_token", Value::Null)),
        prop_oneof![Just("catalyst.openova.io/v1"), Just("catalyst.openova.io/v2")]
            .prop_map(|v| Change::Set("/api_version", v.into())),
    ]
}

fn apply(body: &mut Value, c: &Change) {
    let (path, value) = match c {
        Change::Set(p, v) => (*p, Some(v.clone())),
        Change::Remove(p) => (*p, None),
    };
    let (parent, key) = path.rsplit_once('/').unwrap();
    let obj = body.pointer_mut(if parent.is_empty() { "" } else { parent }).unwrap();
    let obj = obj.as_object_mut().unwrap();
    match value {
        Some(v) => obj.insert(key.to_owned(), v),
        None => obj.remove(key),
    };
}

fn distinct_recipients(body: &Value) -> bool {
    let rs: Vec<&str> = body
        .pointer("/custody/custodians")
        .and_then(Value::as_array)
        .map(|cs| cs.iter().filter_map(|c| c["recipient"].as_str()).collect())
        .unwrap_or_default();
    let mut unique = rs.clone();
    unique.sort_unstable();
    unique.dedup();
    unique.len() == rs.len()
}

fn cases() -> u32 {
    std::env::var("CZ_CONTRACT_CASES").ok().and_then(|v| v.parse().ok()).unwrap_or(2000)
}

#[test]
fn the_sample_is_valid_both_ways() {
    let body = sample();
    assert!(validator("ProvisionRequest").is_valid(&body));
    parse_provision(body.to_string().as_bytes()).unwrap();
}

proptest! {
    #![proptest_config(ProptestConfig { cases: cases(), failure_persistence: None, ..ProptestConfig::default() })]

    #[test]
    fn the_document_and_the_daemon_agree_on_provision_bodies(
        changes in proptest::collection::vec(change(), 1..3)
    ) {
        let v = validator("ProvisionRequest");
        let mut body = sample();
        for c in &changes {
            apply(&mut body, c);
        }
        let schema_ok = v.is_valid(&body);
        let daemon = parse_provision(body.to_string().as_bytes());
        // The one rule the document states in words only.
        let expected = schema_ok && distinct_recipients(&body);
        prop_assert_eq!(
            daemon.is_ok(), expected,
            "schema says {}; daemon says {:?}; schema errors: {:?}\n{:#}",
            schema_ok, daemon.as_ref().err(),
            v.iter_errors(&body).map(|e| e.to_string()).collect::<Vec<_>>(), body
        );
    }

    #[test]
    fn the_document_and_the_daemon_agree_on_add_region_bodies(
        regions in proptest::collection::vec(region(), 0..4),
        token in prop_oneof![Just(None), "[A-Za-z0-9 ]{63,65}".prop_map(Some)],
    ) {
        let v = validator("AddRegionRequest");
        let mut body = json!({ "api_version": "catalyst.openova.io/v1", "regions": regions });
        if let Some(t) = token {
            body["cloud_token"] = t.into();
        }
        let schema_ok = v.is_valid(&body);
        let daemon = parse_add_region(body.to_string().as_bytes());
        prop_assert_eq!(daemon.is_ok(), schema_ok, "{:?}\n{:#}", daemon.err(), body);
    }
}
