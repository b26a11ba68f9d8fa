//! Contract tests of `cloud-templates/hetzner/` without the provider or tofu:
//! every render parses as HCL, uses only resource types and arguments the
//! hcloud provider v1.68 schema has (`shared/upstream/hcloud/resources.json`)
//! with every required argument set, matches its golden files byte for byte
//! (`UPDATE_GOLDEN=1` rewrites them), accepts every location and SKU the
//! request schema accepts, carries no secret, and labels everything.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

use cz_phases::infra;
use cz_phases::infra::render::{RenderError, RenderInput, render_hetzner};
use cz_phases::request::{
    HETZNER_LOCATIONS, HETZNER_SKUS, LoadBalancerSpec, NodeGroup, NodeNetwork, Provider,
    ProvisionRequest, Region, parse_provision,
};
use hcl::{Body, Expression, ObjectKey};
use serde_json::{Value, json};

const TEMPLATES: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../cloud-templates/hetzner");
const GOLDEN: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/golden");
const SCHEMA: &str =
    concat!(env!("CARGO_MANIFEST_DIR"), "/../../shared/upstream/hcloud/resources.json");
const JOB_ID: &str = "0191d3c4-5b6a-7c8d-9e0f-a1b2c3d4e5f6";
const TOKEN: &str = "ZZtok3nZZ9f8e7d6c5b4a3928171605f4e3d2c1b0a99887766554433221100aa";
const CIDRS: &[&str] = &["203.0.113.10/32", "2001:db8:42::/48"];
const FILES: &[&str] = &["cloud-init.yaml", "main.tf", "outputs.tf", "variables.tf", "versions.tf"];
/// Terraform/OpenTofu meta-arguments, valid in every resource.
const META_ATTRS: &[&str] = &["count", "for_each", "depends_on", "provider"];
const META_BLOCKS: &[&str] = &["lifecycle", "provisioner", "connection"];

fn templates() -> &'static Path {
    Path::new(TEMPLATES)
}

fn request(regions: Value) -> ProvisionRequest {
    let body = json!({
        "api_version": "catalyst.openova.io/v1",
        "org": { "name": "Acme", "email": "ops@acme.io" },
        "domain": { "mode": "pool", "pool_domain": "omani.works", "subdomain": "acme" },
        "regions": regions,
        "ssh_public_keys": [
            "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIJ1jEYyjbOZZpBaF4nB0KDRtBb1WPw6mXf1Y8y3hUKt4 ops@acme",
            "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIFVL6Z3jaEPlXSLeko7N8pqVsQj5ORzW4fseNu0nH20D provisioner@catalyst",
        ],
        "cloud_token": TOKEN,
        "custody": {
            "custodians": [
                { "recipient": "age1ql3z7hjy54pw3hyww5ayyfg7zqgvc7w3j2elw8zmrj2kg5sfn9aqmcac8p" },
                { "recipient": "age1rxepl4nxeaeqpf7855c9njx86hjcg76jnu4wfg8qplr2r9cpcczshqlu3p" },
            ],
            "openbao_threshold": 2,
        },
        "keycloak": { "topology": "per-organization" },
    });
    parse_provision(&serde_json::to_vec(&body).unwrap())
        .unwrap_or_else(|e| panic!("test request is invalid: {e:?}"))
}

fn region(location: &str, cp: (&str, u32), w: (&str, u32)) -> Value {
    json!({ "provider": "hetzner", "location": location,
            "control_plane": { "sku": cp.0, "count": cp.1 },
            "workers": { "sku": w.0, "count": w.1 } })
}

fn slug(req: &ProvisionRequest) -> String {
    req.fqdn().replace('.', "-")
}

fn input(req: &ProvisionRequest, r: &Region) -> RenderInput {
    let cidrs: Vec<String> = CIDRS.iter().map(|s| s.to_string()).collect();
    RenderInput::from_region(&slug(req), JOB_ID, r, &req.ssh_public_keys, &cidrs).unwrap()
}

/// The golden cases: directory name → (request, region).
fn cases() -> Vec<(String, ProvisionRequest, Region)> {
    let solo = request(json!([region("fsn1", ("cpx32", 1), ("cpx32", 0))]));
    let ha = request(json!([region("nbg1", ("ccx23", 3), ("cpx42", 12))]));
    let two = request(json!([
        region("fsn1", ("cpx32", 3), ("cpx32", 2)),
        region("hel1", ("cax21", 1), ("cax31", 3)),
    ]));
    let mut out = vec![
        ("hetzner-solo".to_owned(), solo.clone(), solo.regions[0].clone()),
        ("hetzner-ha".to_owned(), ha.clone(), ha.regions[0].clone()),
    ];
    for r in &two.regions {
        out.push((format!("hetzner-two-region-{}", r.location), two.clone(), r.clone()));
    }
    // Above a private network's 100 servers: public interfaces, 15 groups.
    let large = request(json!([region("hel1", ("cpx32", 3), ("cpx22", 147))]));
    out.push(("hetzner-large".to_owned(), large.clone(), large.regions[0].clone()));
    // Ingress on every node, through a load balancer type that takes them.
    let mut all = region("ash", ("cpx31", 3), ("cpx31", 20));
    all["load_balancer"] = json!({ "type": "lb21", "targets": "all-nodes" });
    let all = request(json!([all]));
    out.push(("hetzner-all-nodes".to_owned(), all.clone(), all.regions[0].clone()));
    out
}

fn render(req: &ProvisionRequest, r: &Region) -> BTreeMap<String, String> {
    render_hetzner(&input(req, r), templates()).unwrap_or_else(|e| panic!("render: {e}"))
}

fn parse_tf(files: &BTreeMap<String, String>) -> BTreeMap<String, Body> {
    files
        .iter()
        .filter(|(n, _)| n.ends_with(".tf"))
        .map(|(n, c)| {
            let body = hcl::parse(c).unwrap_or_else(|e| panic!("{n} is not valid HCL: {e}\n{c}"));
            (n.clone(), body)
        })
        .collect()
}

/// `(type, name, body)` of every `resource` block.
fn resources(bodies: &BTreeMap<String, Body>) -> Vec<(String, String, &Body)> {
    let mut out = Vec::new();
    for body in bodies.values() {
        for b in body.blocks().filter(|b| b.identifier.as_str() == "resource") {
            assert_eq!(b.labels.len(), 2, "resource block with labels {:?}", b.labels);
            out.push((b.labels[0].as_str().to_owned(), b.labels[1].as_str().to_owned(), &b.body));
        }
    }
    out
}

// ---------------------------------------------------------------------------
// The provider schema
// ---------------------------------------------------------------------------

#[derive(Debug, Default)]
struct Args {
    /// Configurable arguments (attributes and blocks).
    all: BTreeSet<String>,
    required: BTreeSet<String>,
    deprecated: BTreeSet<String>,
    /// Nested block name → its arguments.
    blocks: BTreeMap<String, Args>,
}

/// Arguments of a level: the docs' list united with the Go schema's
/// configurable fields. Required-ness comes from the Go schema where there is
/// one (it is what the provider enforces; `doc_vs_schema_notes` lists where
/// the docs disagree), from the docs otherwise.
fn args(doc_args: Option<&Value>, go_fields: Option<&Value>) -> Args {
    let mut a = Args::default();
    for d in doc_args.and_then(Value::as_array).into_iter().flatten() {
        let name = d["name"].as_str().unwrap().to_owned();
        if d["deprecated"] == json!(true) {
            a.deprecated.insert(name.clone());
        }
        if go_fields.is_none() && d["required"] == json!(true) {
            a.required.insert(name.clone());
        }
        a.all.insert(name);
    }
    for (name, f) in go_fields.and_then(Value::as_object).into_iter().flatten() {
        match f["mode"].as_str() {
            Some("computed-only") => continue,
            Some("required") => {
                a.required.insert(name.clone());
            }
            _ => {}
        }
        if f.get("deprecated") == Some(&json!(true)) {
            a.deprecated.insert(name.clone());
        }
        a.all.insert(name.clone());
    }
    a
}

fn schema() -> BTreeMap<String, Args> {
    let text = std::fs::read_to_string(SCHEMA)
        .unwrap_or_else(|e| panic!("the hcloud schema {SCHEMA} is needed by this test: {e}"));
    let v: Value = serde_json::from_str(&text).unwrap();
    assert_eq!(v["provider"]["version"], "1.68.0");
    let mut out = BTreeMap::new();
    for (ty, r) in v["resources"].as_object().unwrap() {
        let go = r.get("go_schema").and_then(|g| g.get("fields"));
        let mut a = args(r.get("arguments"), go);
        let mut names: BTreeSet<String> = BTreeSet::new();
        if let Some(b) = r.get("argument_blocks").and_then(Value::as_object) {
            names.extend(b.keys().cloned());
        }
        if let Some(g) = go.and_then(Value::as_object) {
            names
                .extend(g.iter().filter(|(_, f)| f.get("block").is_some()).map(|(n, _)| n.clone()));
        }
        for n in names {
            let docs = r.get("argument_blocks").and_then(|b| b.get(&n));
            let gob = go.and_then(|g| g.get(&n)).and_then(|f| f.get("block"));
            a.all.insert(n.clone());
            a.blocks.insert(n, args(docs, gob));
        }
        out.insert(ty.clone(), a);
    }
    out
}

fn attr<'a>(body: &'a Body, key: &str) -> Option<&'a Expression> {
    body.attributes().find(|a| a.key.as_str() == key).map(|a| &a.expr)
}

fn key_str(k: &ObjectKey) -> Option<String> {
    match k {
        ObjectKey::Identifier(i) => Some(i.as_str().to_owned()),
        ObjectKey::Expression(Expression::String(s)) => Some(s.clone()),
        _ => None,
    }
}

fn string(e: &Expression) -> Option<&str> {
    match e {
        Expression::String(s) => Some(s),
        _ => None,
    }
}

/// Checks one body against its schema level; returns the problems found.
fn check_body(ctx: &str, body: &Body, a: &Args, top: bool) -> Vec<String> {
    let mut bad = Vec::new();
    let mut present = BTreeSet::new();
    for at in body.attributes() {
        let k = at.key.as_str();
        present.insert(k.to_owned());
        if top && META_ATTRS.contains(&k) {
            continue;
        }
        if !a.all.contains(k) || a.blocks.contains_key(k) {
            bad.push(format!("{ctx}: `{k}` is not an argument of the provider schema"));
        }
        if a.deprecated.contains(k) {
            bad.push(format!("{ctx}: `{k}` is deprecated"));
        }
    }
    for b in body.blocks() {
        let k = b.identifier.as_str();
        present.insert(k.to_owned());
        if top && META_BLOCKS.contains(&k) {
            continue;
        }
        match a.blocks.get(k) {
            None => bad.push(format!("{ctx}: block `{k}` is not in the provider schema")),
            Some(nested) => bad.extend(check_body(&format!("{ctx}.{k}"), &b.body, nested, false)),
        }
    }
    for r in &a.required {
        if !present.contains(r) {
            bad.push(format!("{ctx}: required argument `{r}` is missing"));
        }
    }
    bad
}

// ---------------------------------------------------------------------------
// (a) contract
// ---------------------------------------------------------------------------

#[test]
fn every_render_uses_only_schema_types_and_arguments_with_required_ones_set() {
    let schema = schema();
    for (case, req, r) in cases() {
        let files = render(&req, &r);
        assert_eq!(files.keys().map(String::as_str).collect::<Vec<_>>(), FILES, "{case}");
        let bodies = parse_tf(&files);
        let res = resources(&bodies);
        assert!(!res.is_empty(), "{case}: no resources");
        let mut bad = Vec::new();
        for (ty, name, body) in &res {
            match schema.get(ty) {
                None => bad.push(format!("{case}: resource type `{ty}` is not in resources.json")),
                Some(a) => bad.extend(check_body(&format!("{case}: {ty}.{name}"), body, a, true)),
            }
        }
        assert!(bad.is_empty(), "schema violations:\n{}", bad.join("\n"));
    }
}

#[test]
fn the_contract_check_catches_unknown_and_missing_arguments() {
    let schema = schema();
    let body = hcl::parse(
        r#"resource "hcloud_server" "x" {
             name = "a"
             flavour = "big"
             network { vlan = 3 }
           }"#,
    )
    .unwrap();
    let bodies = BTreeMap::from([("t.tf".to_owned(), body)]);
    let res = resources(&bodies);
    let bad = check_body("x", res[0].2, &schema["hcloud_server"], true);
    let all = bad.join("\n");
    assert!(all.contains("`flavour` is not an argument"), "{all}");
    assert!(all.contains("x.network: `vlan`"), "{all}");
    assert!(all.contains("required argument `server_type`"), "{all}");
}

/// The HCL and the sim manifest (`infra::desired`) describe the same objects:
/// same addresses, same names, same counts.
#[test]
fn the_hcl_declares_exactly_the_objects_of_the_manifest() {
    for (case, req, r) in cases() {
        let files = render(&req, &r);
        let bodies = parse_tf(&files);
        let res = resources(&bodies);
        let by_addr: BTreeMap<String, &Body> =
            res.iter().map(|(t, n, b)| (format!("{t}.{n}"), *b)).collect();
        for d in infra::desired(&slug(&req), &r, None) {
            let (base, index) = match d.address.split_once('[') {
                Some((b, i)) => {
                    (b.to_owned(), Some(i.trim_end_matches(']').parse::<u32>().unwrap()))
                }
                None => (d.address.clone(), None),
            };
            let body = by_addr.get(&base).unwrap_or_else(|| panic!("{case}: no {base} in the HCL"));
            let name = match attr(body, "name").unwrap() {
                Expression::String(s) => s.clone(),
                Expression::TemplateExpr(t) => t.to_string(),
                e => panic!("{case}: {base}.name is {e:?}"),
            };
            let name = match index {
                Some(i) => {
                    let count = match attr(body, "count") {
                        Some(Expression::Number(n)) => n.as_u64().unwrap() as u32,
                        e => panic!("{case}: {base}.count is {e:?}"),
                    };
                    assert!(i < count, "{case}: {} beyond count {count}", d.address);
                    name.replace("${count.index + 1}", &(i + 1).to_string())
                }
                None => name,
            };
            assert_eq!(name.trim_matches('"'), d.name, "{case}: {}", d.address);
        }
        // …and the counted resources have no more instances than the manifest.
        let desired = infra::desired(&slug(&req), &r, None);
        for (ty, n, body) in &res {
            if let Some(Expression::Number(c)) = attr(body, "count") {
                let prefix = format!("{ty}.{n}[");
                let want = desired.iter().filter(|d| d.address.starts_with(&prefix)).count();
                assert_eq!(c.as_u64().unwrap() as usize, want, "{case}: {ty}.{n}");
            }
        }
    }
}

// ---------------------------------------------------------------------------
// (b) golden files
// ---------------------------------------------------------------------------

#[test]
fn renders_match_the_golden_files() {
    let update = std::env::var_os("UPDATE_GOLDEN").is_some_and(|v| v == "1");
    let mut stale = Vec::new();
    for (case, req, r) in cases() {
        let dir = PathBuf::from(GOLDEN).join(&case);
        let files = render(&req, &r);
        if update {
            let _ = std::fs::remove_dir_all(&dir);
            std::fs::create_dir_all(&dir).unwrap();
            for (name, body) in &files {
                std::fs::write(dir.join(name), body).unwrap();
            }
            continue;
        }
        let on_disk: BTreeSet<String> = std::fs::read_dir(&dir)
            .map(|d| d.map(|e| e.unwrap().file_name().to_string_lossy().into_owned()).collect())
            .unwrap_or_default();
        let rendered: BTreeSet<String> = files.keys().cloned().collect();
        if on_disk != rendered {
            stale.push(format!("{case}: golden files {on_disk:?}, rendered {rendered:?}"));
        }
        for (name, body) in &files {
            let path = dir.join(name);
            let want = std::fs::read_to_string(&path).unwrap_or_default();
            if &want != body {
                let line = want
                    .lines()
                    .zip(body.lines())
                    .position(|(a, b)| a != b)
                    .unwrap_or(want.lines().count().min(body.lines().count()));
                stale.push(format!(
                    "{}: differs from line {}\n  golden:   {:?}\n  rendered: {:?}",
                    path.display(),
                    line + 1,
                    want.lines().nth(line).unwrap_or("<end of file>"),
                    body.lines().nth(line).unwrap_or("<end of file>"),
                ));
            }
        }
    }
    assert!(
        stale.is_empty(),
        "{}\n\nIf the change is intended, regenerate with\n  UPDATE_GOLDEN=1 cargo test -p cz-phases --test all hetzner_templates\nand review the diff (git diff phases/tests/golden).",
        stale.join("\n")
    );
}

// ---------------------------------------------------------------------------
// (c) every location and SKU the request accepts renders as-is
// ---------------------------------------------------------------------------

#[test]
fn every_accepted_location_and_sku_renders_to_that_value() {
    let req = request(json!([region("fsn1", ("cpx32", 1), ("cpx32", 1))]));
    for loc in HETZNER_LOCATIONS.iter() {
        for sku in HETZNER_SKUS.iter() {
            let r = Region {
                provider: Provider::Hetzner,
                location: loc.to_string(),
                control_plane: NodeGroup { sku: sku.to_string(), count: 1 },
                workers: NodeGroup { sku: sku.to_string(), count: 1 },
                network: NodeNetwork::Auto,
                load_balancer: LoadBalancerSpec::default(),
            };
            // The request schema accepts it…
            let one = request(json!([region(loc, (sku, 1), (sku, 1))]));
            assert_eq!(one.regions[0].location, *loc);
            // …and the render puts exactly those strings where the provider reads them.
            let files = render(&req, &r);
            let bodies = parse_tf(&files);
            for (ty, name, body) in resources(&bodies) {
                let ctx = format!("{loc}/{sku}: {ty}.{name}");
                if ty == "hcloud_server" {
                    assert_eq!(attr(body, "server_type").and_then(string), Some(*sku), "{ctx}");
                    assert_eq!(attr(body, "location").and_then(string), Some(*loc), "{ctx}");
                }
                if ty == "hcloud_load_balancer" {
                    assert_eq!(attr(body, "location").and_then(string), Some(*loc), "{ctx}");
                }
                if ty == "hcloud_network_subnet" {
                    let zone = cz_phases::infra::render::network_zone(loc).unwrap();
                    assert_eq!(attr(body, "network_zone").and_then(string), Some(zone), "{ctx}");
                }
            }
        }
    }
}

#[test]
fn unknown_locations_and_unsafe_values_are_refused() {
    let req = request(json!([region("fsn1", ("cpx32", 1), ("cpx32", 0))]));
    let mut r = req.regions[0].clone();
    r.location = "mars1".into();
    let cidrs = vec![CIDRS[0].to_owned()];
    let e = RenderInput::from_region("acme", JOB_ID, &r, &req.ssh_public_keys, &cidrs);
    assert!(matches!(e, Err(RenderError::UnknownLocation(_))), "{e:?}");

    let mut i = input(&req, &req.regions[0]);
    i.control_plane.0 = "cpx32\" \n evil = \"1".into();
    assert!(matches!(render_hetzner(&i, templates()), Err(RenderError::Input { .. })));

    let mut i = input(&req, &req.regions[0]);
    i.provisioner_cidrs = vec!["0.0.0.0/0\"]".into()];
    assert!(matches!(render_hetzner(&i, templates()), Err(RenderError::Input { .. })));

    let mut i = input(&req, &req.regions[0]);
    i.provisioner_cidrs.clear();
    assert!(matches!(render_hetzner(&i, templates()), Err(RenderError::Input { .. })));
}

#[test]
fn an_undefined_variable_fails_the_render() {
    let dir = tempfile::tempdir().unwrap();
    for f in FILES {
        let src = PathBuf::from(TEMPLATES).join(format!("{f}.tera"));
        std::fs::copy(src, dir.path().join(format!("{f}.tera"))).unwrap();
    }
    std::fs::write(dir.path().join("extra.tf.tera"), "x = \"{{ no_such_variable }}\"\n").unwrap();
    let req = request(json!([region("fsn1", ("cpx32", 1), ("cpx32", 0))]));
    let e = render_hetzner(&input(&req, &req.regions[0]), dir.path()).unwrap_err();
    assert!(matches!(e, RenderError::Template { .. }), "{e}");
    assert!(e.to_string().contains("extra.tf.tera"), "{e}");

    // A raw block that leaves template syntax in the output is refused too.
    std::fs::write(dir.path().join("extra.tf.tera"), "{% raw %}{{ x }}{% endraw %}\n").unwrap();
    let e = render_hetzner(&input(&req, &req.regions[0]), dir.path()).unwrap_err();
    assert!(matches!(e, RenderError::Leftover { .. }), "{e}");
}

// ---------------------------------------------------------------------------
// (d) no secret
// ---------------------------------------------------------------------------

#[test]
fn no_secret_reaches_the_workspace_files() {
    for (case, req, r) in cases() {
        assert!(
            req.secrets().iter().any(|(_, s)| s.expose() == TOKEN),
            "the request has the token"
        );
        for (name, body) in render(&req, &r) {
            assert!(!body.contains(TOKEN), "{case}/{name} contains the cloud token");
            assert!(!body.contains(&TOKEN[..16]), "{case}/{name} contains part of the cloud token");
            if name == "cloud-init.yaml" {
                assert!(!body.to_lowercase().contains("token"), "{case}/{name} mentions a token");
                assert!(!body.contains("k3s"), "{case}/{name}: K3s is installed over SSH");
            }
        }
        let files = render(&req, &r);
        let bodies = parse_tf(&files);
        // The token is a sensitive variable with no default: it can only come
        // from TF_VAR_hcloud_token.
        let vars: Vec<_> = bodies["variables.tf"]
            .blocks()
            .filter(|b| b.identifier.as_str() == "variable")
            .collect();
        assert_eq!(vars.len(), 1, "{case}: only the token is a variable");
        assert_eq!(vars[0].labels[0].as_str(), "hcloud_token");
        assert_eq!(attr(&vars[0].body, "sensitive"), Some(&Expression::Bool(true)));
        assert!(attr(&vars[0].body, "default").is_none(), "{case}: the token has no default");
        let no_vars: Vec<_> = bodies
            .iter()
            .filter(|(n, _)| *n != "variables.tf")
            .flat_map(|(_, b)| b.blocks().filter(|b| b.identifier.as_str() == "variable"))
            .collect();
        assert!(no_vars.is_empty(), "{case}: variables outside variables.tf");
    }
}

#[test]
fn cloud_init_hardens_the_host_and_carries_every_key() {
    let (_, req, r) = cases().remove(1);
    let ci = &render(&req, &r)["cloud-init.yaml"];
    assert!(ci.starts_with("#cloud-config\n"));
    for k in &req.ssh_public_keys {
        assert!(ci.contains(&format!("- \"{k}\"")), "key {k} missing");
    }
    for needle in [
        "PasswordAuthentication no",
        "PermitRootLogin prohibit-password",
        "/etc/ssh/sshd_config.d/",
        "swapoff",
        "/etc/fstab",
    ] {
        assert!(ci.contains(needle), "cloud-init lacks {needle}");
    }
}

// ---------------------------------------------------------------------------
// (e) labels, firewall, load balancer
// ---------------------------------------------------------------------------

#[test]
fn every_resource_that_supports_labels_has_all_four() {
    let schema = schema();
    for (case, req, r) in cases() {
        let files = render(&req, &r);
        let bodies = parse_tf(&files);
        for (ty, name, body) in resources(&bodies) {
            if !schema[&ty].all.contains("labels") {
                continue;
            }
            let Some(Expression::Object(labels)) = attr(body, "labels") else {
                panic!("{case}: {ty}.{name} has no literal labels map");
            };
            let labels: BTreeMap<String, String> = labels
                .iter()
                .map(|(k, v)| (key_str(k).unwrap(), string(v).unwrap().to_owned()))
                .collect();
            assert_eq!(labels["catalyst.openova.io/sovereign"], slug(&req), "{case}: {ty}.{name}");
            assert_eq!(labels["catalyst.openova.io/job-id"], JOB_ID, "{case}: {ty}.{name}");
            assert_eq!(labels["catalyst.openova.io/region"], r.location, "{case}: {ty}.{name}");
            assert!(!labels["catalyst.openova.io/role"].is_empty(), "{case}: {ty}.{name}");
            assert_eq!(labels.len(), 4, "{case}: {ty}.{name}");
        }
    }
}

#[test]
fn firewall_and_load_balancer_expose_only_what_they_should() {
    let (case, req, r) = cases().remove(1);
    let files = render(&req, &r);
    let bodies = parse_tf(&files);
    let res = resources(&bodies);
    let fw = res.iter().find(|(t, _, _)| t == "hcloud_firewall").unwrap().2;
    let mut ports = BTreeMap::new();
    for rule in fw.blocks().filter(|b| b.identifier.as_str() == "rule") {
        let port = string(attr(&rule.body, "port").unwrap()).unwrap().to_owned();
        let Some(Expression::Array(src)) = attr(&rule.body, "source_ips") else { panic!() };
        let src: Vec<String> = src.iter().map(|e| string(e).unwrap().to_owned()).collect();
        assert_eq!(string(attr(&rule.body, "direction").unwrap()), Some("in"));
        ports.insert(port, src);
    }
    let cidrs: Vec<String> = CIDRS.iter().map(|s| s.to_string()).collect();
    assert_eq!(ports["22"], cidrs, "{case}: ssh only from the provisioner");
    let mut api = cidrs.clone();
    api.push(format!("{}/32", cz_phases::infra::render::LB_PRIVATE_IP));
    assert_eq!(ports["6443"], api, "{case}: API from the provisioner and the LB");
    assert_eq!(ports["80"], ["0.0.0.0/0", "::/0"]);
    assert_eq!(ports["443"], ["0.0.0.0/0", "::/0"]);
    assert_eq!(ports.len(), 4);

    let services: BTreeSet<i64> = res
        .iter()
        .filter(|(t, _, _)| t == "hcloud_load_balancer_service")
        .map(|(_, _, b)| match attr(b, "listen_port") {
            Some(Expression::Number(n)) => n.as_i64().unwrap(),
            e => panic!("{e:?}"),
        })
        .collect();
    assert_eq!(services, BTreeSet::from([80, 443, 6443]));
    let target = res.iter().find(|(t, _, _)| t == "hcloud_load_balancer_target").unwrap().2;
    let sel = string(attr(target, "label_selector").unwrap()).unwrap();
    assert!(sel.contains("catalyst.openova.io/role=control-plane"), "{sel}");
    assert!(res.iter().any(|(t, _, _)| t == "hcloud_load_balancer_network"), "LB on the network");
}

/// Every `hcloud_<type>.<name>.<attr>` the outputs read is an attribute (or
/// argument) of that type, and the loop variables over servers (`s.…`) and
/// their networks (`n.…`) read server attributes and network block fields.
#[test]
fn outputs_read_only_attributes_the_schema_has() {
    let v: Value = serde_json::from_str(&std::fs::read_to_string(SCHEMA).unwrap()).unwrap();
    let readable = |ty: &str| -> BTreeSet<String> {
        let r = &v["resources"][ty];
        let mut out = BTreeSet::from(["id".to_owned()]);
        for key in ["arguments", "attributes"] {
            for a in r[key].as_array().into_iter().flatten() {
                out.insert(a["name"].as_str().unwrap().to_owned());
            }
        }
        out
    };
    let network_fields: BTreeSet<String> =
        v["resources"]["hcloud_server"]["attribute_blocks"]["network"]
            .as_array()
            .unwrap()
            .iter()
            .map(|a| a["name"].as_str().unwrap().to_owned())
            .collect();
    let (case, req, r) = cases().remove(1);
    let files = render(&req, &r);
    let out = &files["outputs.tf"];
    let bodies = parse_tf(&files);
    let declared: BTreeSet<String> =
        resources(&bodies).iter().map(|(t, n, _)| format!("{t}.{n}")).collect();
    let mut checked = 0;
    let tokens = out.split(|c: char| !(c.is_ascii_alphanumeric() || "_.[]*".contains(c)));
    for tok in tokens.filter(|t| !t.is_empty()) {
        let parts: Vec<&str> =
            tok.split('.').map(|p| p.trim_end_matches("[*]").trim_end_matches(']')).collect();
        match parts.as_slice() {
            [ty, name, attr, ..] if ty.starts_with("hcloud_") => {
                assert!(declared.contains(&format!("{ty}.{name}")), "{case}: {tok} undeclared");
                assert!(readable(ty).contains(*attr), "{case}: {ty} has no attribute `{attr}`");
                checked += 1;
            }
            [ty, name] if ty.starts_with("hcloud_") => {
                assert!(declared.contains(&format!("{ty}.{name}")), "{case}: {tok} undeclared");
            }
            ["s", attr] => {
                assert!(readable("hcloud_server").contains(*attr), "{case}: server `{attr}`");
                checked += 1;
            }
            ["n", attr] => {
                assert!(network_fields.contains(*attr), "{case}: server network `{attr}`");
                checked += 1;
            }
            _ => {}
        }
    }
    assert!(checked > 10, "{case}: only {checked} attribute reads found");
}

// ---------------------------------------------------------------------------
// the offline stand-in module (cloud-templates/hetzner-offline/)
// ---------------------------------------------------------------------------

const OFFLINE: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../cloud-templates/hetzner-offline");

/// The stand-in declares one `terraform_data` per manifest object, each
/// carrying that object (same kind, name and four labels) for the shim, with
/// dependencies that exist and put servers after their network, firewall,
/// key and placement group and the load balancer after the control planes;
/// only built-in resources; and no secret.
#[test]
fn the_offline_module_mirrors_the_manifest_with_builtin_resources_only() {
    use cz_adapters::cloud::shim::ShimObject;
    use cz_phases::infra::render::{offline_id, render_offline};
    for (case, req, r) in cases() {
        if !infra::layout::RegionLayout::of(&r).private_network {
            // The stand-in builds private-network regions only, and says so.
            let e = render_offline(
                &input(&req, &r),
                &infra::desired(&slug(&req), &r, None),
                Path::new("/opt/catalyst-zero/bin/catalyst-zero"),
                "http://127.0.0.1:4000",
                Path::new(OFFLINE),
            )
            .unwrap_err();
            assert!(e.to_string().contains("hcloud provider"), "{case}: {e}");
            continue;
        }
        let mut desired = infra::desired(&slug(&req), &r, None);
        // The step labels every object; the test sets what it would.
        for d in &mut desired {
            d.labels = BTreeMap::from([
                ("catalyst.openova.io/sovereign".to_owned(), slug(&req)),
                ("catalyst.openova.io/job-id".to_owned(), JOB_ID.to_owned()),
                ("catalyst.openova.io/role".to_owned(), "x".to_owned()),
                ("catalyst.openova.io/region".to_owned(), r.location.clone()),
            ]);
        }
        let files = render_offline(
            &input(&req, &r),
            &desired,
            Path::new("/opt/catalyst-zero/bin/catalyst-zero"),
            "http://127.0.0.1:4000",
            Path::new(OFFLINE),
        )
        .unwrap_or_else(|e| panic!("{case}: {e}"));
        assert_eq!(files.keys().collect::<Vec<_>>(), vec!["main.tf"], "{case}");
        let text = &files["main.tf"];
        assert!(!text.contains(TOKEN), "{case}: the token is in the module");
        let body: Body = hcl::from_str(text).unwrap_or_else(|e| panic!("{case}: {e}"));
        let mut declared = BTreeMap::new();
        for b in body.blocks().filter(|b| b.identifier() == "resource") {
            let labels: Vec<String> = b.labels().iter().map(|l| l.as_str().to_owned()).collect();
            assert_eq!(labels[0], "terraform_data", "{case}: only built-in resources");
            declared.insert(labels[1].clone(), b.body().clone());
        }
        assert_eq!(declared.len(), desired.len(), "{case}: one terraform_data per object");
        for d in &desired {
            let id = offline_id(&d.address);
            let b = declared.get(&id).unwrap_or_else(|| panic!("{case}: no terraform_data.{id}"));
            let Some(Expression::Object(input)) = attr(b, "input") else {
                panic!("{case}: {id} has no input object")
            };
            let object = input
                .iter()
                .find(|(k, _)| key_str(k).as_deref() == Some("object"))
                .and_then(|(_, v)| string(v).map(str::to_owned))
                .unwrap_or_else(|| panic!("{case}: {id}.input.object"));
            let o: ShimObject = serde_json::from_str(&object).unwrap();
            assert_eq!((o.kind.as_str(), o.name.as_str()), (d.kind.as_str(), d.name.as_str()));
            assert_eq!(o.labels, d.labels, "{case}: {id} labels");
            assert_eq!(o.endpoint, "http://127.0.0.1:4000");
            let deps: Vec<String> = match attr(b, "depends_on") {
                Some(Expression::Array(a)) => a.iter().map(|e| e.to_string()).collect(),
                _ => Vec::new(),
            };
            for dep in &deps {
                let target = dep.trim_start_matches("terraform_data.");
                assert!(declared.contains_key(target), "{case}: {id} depends on missing {dep}");
            }
            let provisioners = b.blocks().filter(|p| p.identifier() == "provisioner").count();
            assert_eq!(provisioners, 2, "{case}: {id} has a create and a destroy provisioner");
            match d.kind.as_str() {
                "server" => {
                    for want in ["network_main", "firewall_main", "ssh_key_main"] {
                        assert!(deps.iter().any(|x| x.ends_with(want)), "{case}: {id} {deps:?}");
                    }
                    assert!(deps.iter().any(|x| x.contains("placement_group_")), "{case}: {id}");
                    assert_eq!(o.attrs["network"], format!("{}-{}-net", slug(&req), r.location));
                }
                "load_balancer" => {
                    let cps = desired.iter().filter(|x| x.address.starts_with("hcloud_server.cp["));
                    for cp in cps {
                        assert!(
                            deps.contains(&format!("terraform_data.{}", offline_id(&cp.address)))
                        );
                    }
                    let ports: Vec<i64> = o.attrs["services"]
                        .as_array()
                        .unwrap()
                        .iter()
                        .map(|s| s["listen_port"].as_i64().unwrap())
                        .collect();
                    assert_eq!(ports, vec![80, 443, 6443], "{case}");
                }
                "firewall" => {
                    let rules = o.attrs["rules"].as_array().unwrap();
                    let ssh = rules.iter().find(|x| x["port"] == "22").unwrap();
                    assert_eq!(
                        ssh["source_ips"],
                        json!(CIDRS),
                        "{case}: SSH only from the provisioner"
                    );
                }
                _ => {}
            }
        }
    }
}
