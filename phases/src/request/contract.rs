//! The request rules as JSON Schema, for the OpenAPI document.
//!
//! utoipa's derive writes the shape of the request types: fields, types,
//! lengths, the catalogue enums. Everything [`super::ProvisionRequest::validate`]
//! checks beyond that is stated here, built from the same tables the checks
//! use, so that a client generated from `/openapi.json` (a wizard's form
//! checks) accepts exactly what the daemon accepts, and the daemon answers
//! 422 only to a request the document rejects too. The tests below hold each
//! pattern to its check over generated and edge-case inputs.
//!
//! Patterns use only syntax that ECMA-262, Python's `re` and Rust's `regex`
//! read alike: classes, `{m,n}`, `(?:…)` and `\uXXXX` escapes, no lookaround.
//!
//! Two rules JSON Schema cannot state, so the document states them in words:
//! - an age recipient's bech32 checksum: `format: age-recipient`, which the
//!   description defines (a fuzzer is taught the format by
//!   `scripts/schemathesis_hooks.py`);
//! - custodians' recipients are distinct: uniqueness by one property of the
//!   items is not a JSON Schema keyword (`uniqueItems` compares whole items,
//!   and is set too).
//!
//! Rules that depend on stored state (a domain in use, a location the
//! Sovereign already has, an idempotency key used with another body) are
//! not properties of the request: the daemon answers them with 409.

use serde_json::{Map, Value, json};

use super::{
    COMPONENTS, HETZNER_LOCATIONS, MAX_CUSTODIANS, MAX_OPENBAO_SHARES, MAX_REGIONS, MAX_WORKERS,
    REQUIRED_COMPONENTS, RESERVED_LABELS, Registrar,
};

/// Characters text shown to people may not hold: controls (line breaks,
/// NUL, escapes), invisible formatting (zero-width characters,
/// bidirectional overrides, BOMs, interlinear annotations) and the BMP's
/// noncharacters.
pub const HIDDEN: &[(char, char)] = &[
    ('\u{0}', '\u{1F}'),
    ('\u{7F}', '\u{9F}'),
    ('\u{200B}', '\u{200F}'),
    ('\u{202A}', '\u{202E}'),
    ('\u{2060}', '\u{206F}'),
    ('\u{FDD0}', '\u{FDEF}'),
    ('\u{FEFF}', '\u{FEFF}'),
    ('\u{FFF9}', '\u{FFFB}'),
    ('\u{FFFE}', '\u{FFFF}'),
];

/// Unicode `White_Space`: what `char::is_whitespace` and `str::trim` see.
pub const WHITESPACE: &[(char, char)] = &[
    ('\t', '\r'),
    (' ', ' '),
    ('\u{85}', '\u{85}'),
    ('\u{A0}', '\u{A0}'),
    ('\u{1680}', '\u{1680}'),
    ('\u{2000}', '\u{200A}'),
    ('\u{2028}', '\u{2029}'),
    ('\u{202F}', '\u{202F}'),
    ('\u{205F}', '\u{205F}'),
    ('\u{3000}', '\u{3000}'),
];

/// Unicode `Cc`: what `char::is_control` sees.
const CONTROL: &[(char, char)] = &[('\u{0}', '\u{1F}'), ('\u{7F}', '\u{9F}')];

fn within(ranges: &[(char, char)], c: char) -> bool {
    ranges.iter().any(|&(lo, hi)| (lo..=hi).contains(&c))
}

/// A hidden character (see [`HIDDEN`]).
pub fn is_hidden(c: char) -> bool {
    within(HIDDEN, c)
}

/// The ranges without `allowed`.
fn minus(ranges: &[(char, char)], allowed: &[char]) -> Vec<(char, char)> {
    let mut out = Vec::new();
    for &(lo, hi) in ranges {
        let (lo, hi) = (lo as u32, hi as u32);
        let mut start = lo;
        let mut cuts: Vec<u32> =
            allowed.iter().map(|&a| a as u32).filter(|a| (lo..=hi).contains(a)).collect();
        cuts.sort_unstable();
        for a in cuts {
            if a > start {
                out.push((start, a - 1));
            }
            start = a + 1;
        }
        if start <= hi {
            out.push((start, hi));
        }
    }
    out.into_iter().filter_map(|(a, b)| Some((char::from_u32(a)?, char::from_u32(b)?))).collect()
}

/// The body of a character class (`a-z` without brackets) naming `ranges`.
fn class(ranges: &[(char, char)]) -> String {
    let esc = |c: char| {
        assert!((c as u32) < 0x10000, "patterns name BMP characters only");
        format!("\\u{:04X}", c as u32)
    };
    ranges
        .iter()
        .map(|&(lo, hi)| if lo == hi { esc(lo) } else { format!("{}-{}", esc(lo), esc(hi)) })
        .collect()
}

/// Text shown to people: no hidden character but `allowed`, and not only
/// whitespace (what `trim().is_empty()` refuses).
pub fn shown_text_pattern(allowed: &[char]) -> String {
    let hidden = class(&minus(HIDDEN, allowed));
    format!("^[^{hidden}]*[^{hidden}{}][^{hidden}]*$", class(WHITESPACE))
}

/// The rest of a DNS label after its first character.
const LABEL_TAIL: &str = "(?:[a-z0-9-]{0,61}[a-z0-9])?";

/// A domain name as [`super::check_fqdn`] accepts it (lowercase, two labels
/// or more, the first and the last starting with a letter); the length
/// limit is `maxLength`.
pub fn fqdn_pattern() -> String {
    format!("^[a-z]{LABEL_TAIL}(?:\\.[a-z0-9]{LABEL_TAIL})*\\.[a-z]{LABEL_TAIL}$")
}

/// A pool subdomain: one label starting with a letter.
pub fn subdomain_pattern() -> String {
    format!("^[a-z]{LABEL_TAIL}$")
}

/// An email address as `check_email` accepts it: a local part without `@`,
/// whitespace or controls, and a domain whose labels may be upper case and
/// may start with a digit, but whose last label starts with a letter.
pub fn email_pattern() -> String {
    let tail = LABEL_TAIL.replace("a-z", "A-Za-z");
    let local = format!("[^@{}{}]+", class(WHITESPACE), class(CONTROL));
    format!("^{local}@[A-Za-z0-9]{tail}(?:\\.[A-Za-z0-9]{tail})*\\.[A-Za-z]{tail}$")
}

/// What a registrar's token must look like: `:`-separated parts without
/// whitespace or controls, and Namecheap's last part an IPv4 address.
pub fn registrar_token_pattern(registrar: Registrar) -> String {
    let part = format!("[^:{}{}]+", class(WHITESPACE), class(CONTROL));
    let octet = "(?:25[0-5]|2[0-4][0-9]|1[0-9][0-9]|[1-9]?[0-9])";
    let ipv4 = format!("{octet}(?:\\.{octet}){{3}}");
    match registrar {
        Registrar::Cloudflare | Registrar::Dynadot => format!("^{part}$"),
        Registrar::Godaddy => format!("^{part}:{part}$"),
        Registrar::Ovh => format!("^{part}:{part}:{part}$"),
        Registrar::Namecheap => format!("^{part}:{part}:{ipv4}$"),
    }
}

// ---------------------------------------------------------------------------
// SSH keys: the exact wire format of every accepted key shape
// ---------------------------------------------------------------------------

/// One byte of a key blob.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Byte {
    Is(u8),
    Any,
    /// The top bit is set (the first byte of an RSA modulus of exactly its
    /// size).
    High,
}

impl Byte {
    fn admits(self, b: u8) -> bool {
        match self {
            Byte::Is(v) => b == v,
            Byte::Any => true,
            Byte::High => b >= 0x80,
        }
    }
    fn bit(self, i: u32) -> Option<bool> {
        match self {
            Byte::Is(v) => Some(v >> (7 - i) & 1 == 1),
            Byte::Any => None,
            Byte::High => (i == 0).then_some(true),
        }
    }
}

fn ssh_string(out: &mut Vec<Byte>, bytes: &[u8]) {
    let len = u32::try_from(bytes.len()).expect("short");
    out.extend(len.to_be_bytes().map(Byte::Is));
    out.extend(bytes.iter().map(|&b| Byte::Is(b)));
}

fn ssh_length(out: &mut Vec<Byte>, len: usize) {
    out.extend(u32::try_from(len).expect("short").to_be_bytes().map(Byte::Is));
}

/// The accepted key shapes, by type: what ssh-keygen makes. Ed25519;
/// ECDSA on P-256/384/521 with an uncompressed point; RSA with exponent
/// 65537 and a modulus of exactly 2048, 3072 or 4096 bits.
pub fn key_shapes() -> Vec<(&'static str, Vec<Byte>)> {
    let mut shapes = Vec::new();
    let mut ed = Vec::new();
    ssh_string(&mut ed, b"ssh-ed25519");
    ssh_length(&mut ed, 32);
    ed.extend([Byte::Any; 32]);
    shapes.push(("ssh-ed25519", ed));
    for (kind, curve, size) in [
        ("ecdsa-sha2-nistp256", "nistp256", 32),
        ("ecdsa-sha2-nistp384", "nistp384", 48),
        ("ecdsa-sha2-nistp521", "nistp521", 66),
    ] {
        let mut ec = Vec::new();
        ssh_string(&mut ec, kind.as_bytes());
        ssh_string(&mut ec, curve.as_bytes());
        ssh_length(&mut ec, 1 + 2 * size);
        ec.push(Byte::Is(0x04));
        ec.extend(std::iter::repeat_n(Byte::Any, 2 * size));
        shapes.push((kind, ec));
    }
    for bits in [2048, 3072, 4096] {
        let mut rsa = Vec::new();
        ssh_string(&mut rsa, b"ssh-rsa");
        ssh_string(&mut rsa, &[0x01, 0x00, 0x01]);
        ssh_length(&mut rsa, bits / 8 + 1);
        rsa.extend([Byte::Is(0), Byte::High]);
        rsa.extend(std::iter::repeat_n(Byte::Any, bits / 8 - 1));
        shapes.push(("ssh-rsa", rsa));
    }
    shapes
}

/// The blob has one of `kind`'s accepted shapes.
pub fn key_blob_ok(kind: &str, blob: &[u8]) -> bool {
    key_shapes().iter().any(|(k, shape)| {
        *k == kind && shape.len() == blob.len() && shape.iter().zip(blob).all(|(s, &b)| s.admits(b))
    })
}

const B64: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";

/// The canonical (padded, zero trailing bits) base64 of every blob of
/// `shape`, as a pattern.
pub fn base64_pattern(shape: &[Byte]) -> String {
    let mut bits: Vec<Option<bool>> =
        shape.iter().flat_map(|b| (0..8).map(move |i| b.bit(i))).collect();
    while !bits.len().is_multiple_of(6) {
        bits.push(Some(false));
    }
    // One class per base64 digit; runs of "any digit" are merged.
    let mut out = String::new();
    let mut free = 0usize;
    for chunk in bits.chunks(6) {
        let admitted: Vec<u8> = (0u8..64)
            .filter(|v| {
                chunk
                    .iter()
                    .enumerate()
                    .all(|(i, bit)| bit.is_none_or(|b| (v >> (5 - i) & 1 == 1) == b))
            })
            .map(|v| B64[usize::from(v)])
            .collect();
        if admitted.len() == 64 {
            free += 1;
            continue;
        }
        flush_free(&mut out, &mut free);
        if let [only] = admitted[..] {
            if only == b'+' {
                out.push('\\');
            }
            out.push(char::from(only));
        } else {
            out.push('[');
            out.extend(admitted.iter().map(|&c| char::from(c)));
            out.push(']');
        }
    }
    flush_free(&mut out, &mut free);
    out.push_str(match shape.len() % 3 {
        1 => "==",
        2 => "=",
        _ => "",
    });
    out
}

fn flush_free(out: &mut String, free: &mut usize) {
    match *free {
        0 => {}
        1 => out.push_str("[A-Za-z0-9+/]"),
        n => out.push_str(&format!("[A-Za-z0-9+/]{{{n}}}")),
    }
    *free = 0;
}

/// One OpenSSH public key line: `<type> <base64>`, then optionally a space
/// and a comment of printable text.
pub fn ssh_key_pattern() -> String {
    let shapes: Vec<String> = key_shapes()
        .iter()
        .map(|(kind, shape)| format!("{kind} {}", base64_pattern(shape)))
        .collect();
    format!("^(?:{})(?: [^{}]*)?$", shapes.join("|"), class(HIDDEN))
}

// ---------------------------------------------------------------------------
// The document
// ---------------------------------------------------------------------------

/// Writes the rules above into the generated document's components.
pub fn apply(doc: &mut Value) {
    let Some(schemas) = doc.pointer_mut("/components/schemas").and_then(Value::as_object_mut)
    else {
        return;
    };
    let shown = |max: usize, allowed: &[char]| json!({ "pattern": shown_text_pattern(allowed), "maxLength": max, "minLength": 1 });
    if let Some(org) = object(schemas, "Org") {
        merge(prop(org, "name"), shown(100, &[]));
        let email = prop(org, "email");
        email.remove("format");
        merge(email, json!({ "pattern": email_pattern() }));
    }
    if let Some(c) = object(schemas, "Custodian") {
        merge(prop(c, "label"), shown(64, &[]));
        merge(
            prop(c, "recipient"),
            json!({
                "format": "age-recipient",
                "description": "Their age X25519 recipient, as `age-keygen -y` prints it: \
                    format `age-recipient` is `age1` and the bech32 encoding (lowercase) of a \
                    32-byte key, checksum included. Each custodian's recipient is their own: \
                    no two custodians may share one.",
            }),
        );
    }
    if let Some(custody) = object(schemas, "Custody") {
        merge(
            prop(custody, "custodians"),
            json!({ "uniqueItems": true, "maxItems": MAX_CUSTODIANS }),
        );
        custody.insert("anyOf".into(), Value::Array(custody_branches()));
    }
    if let Some(domain) = schemas.get_mut("Domain").and_then(|d| d.get_mut("oneOf")) {
        for branch in domain.as_array_mut().into_iter().flatten() {
            let Some(b) = branch.as_object_mut() else { continue };
            b.insert("additionalProperties".into(), false.into());
            let mode = b
                .get("properties")
                .and_then(|p| p.pointer("/mode/enum/0"))
                .and_then(Value::as_str)
                .map(str::to_owned);
            let fqdn = json!({ "pattern": fqdn_pattern(), "maxLength": 253 });
            match mode.as_deref() {
                Some("pool") => {
                    merge(
                        prop(b, "pool_domain"),
                        json!({ "pattern": fqdn_pattern(), "maxLength": super::MAX_POOL_DOMAIN }),
                    );
                    merge(
                        prop(b, "subdomain"),
                        json!({
                            "pattern": subdomain_pattern(), "maxLength": 63,
                            "not": { "enum": RESERVED_LABELS },
                        }),
                    );
                }
                Some("byo-manual") => merge(prop(b, "fqdn"), fqdn),
                Some("byo-api") => {
                    merge(prop(b, "fqdn"), fqdn);
                    let rules: Vec<Value> = Registrar::all()
                        .into_iter()
                        .map(|r| {
                            json!({
                                "if": { "properties": { "registrar": { "const": r } } },
                                "then": { "properties": { "registrar_token": {
                                    "pattern": registrar_token_pattern(r) } } },
                            })
                        })
                        .collect();
                    b.insert("allOf".into(), Value::Array(rules));
                }
                _ => {}
            }
        }
    }
    if let Some(region) = object(schemas, "Region") {
        let group = json!({ "$ref": "#/components/schemas/NodeGroup" });
        let props = prop(region, "control_plane");
        props.clear();
        merge(
            props,
            json!({
                "allOf": [group],
                "properties": { "count": { "enum": [1, 3] } },
                    "description": "1 or 3 control-plane nodes: an odd etcd quorum, 3 for high availability.",
            }),
        );
        let workers = prop(region, "workers");
        workers.clear();
        merge(
            workers,
            json!({
                "allOf": [group],
                "properties": { "count": { "minimum": 0, "maximum": MAX_WORKERS } },
                "description": format!("0 to {MAX_WORKERS} workers."),
            }),
        );
        region.insert("allOf".into(), Value::Array(region_limits()));
        region.insert(
            "description".into(),
            json!(
                "One region of the Sovereign: a cluster in one provider location. \
                   Hetzner's fixed limits bound its size: 10 servers per spread placement \
                   group and 50 groups per project (so at most 500 servers), 100 servers \
                   per private network, and the load balancer type's targets \
                   (lb11 25, lb21 75, lb31 150)."
            ),
        );
    }
    let distinct_locations: Vec<Value> = HETZNER_LOCATIONS
        .iter()
        .map(|l| {
            json!({
                "contains": { "properties": { "location": { "const": l } }, "required": ["location"] },
                "minContains": 0,
                "maxContains": 1,
            })
        })
        .collect();
    for name in ["ProvisionRequest", "AddRegionRequest"] {
        if let Some(req) = object(schemas, name) {
            merge(
                prop(req, "regions"),
                json!({ "allOf": distinct_locations, "maxItems": MAX_REGIONS }),
            );
        }
    }
    if let Some(req) = object(schemas, "ProvisionRequest") {
        merge(prop(req, "components"), components_schema());
        merge(
            prop(req, "ssh_public_keys"),
            json!({ "items": { "type": "string", "pattern": ssh_key_pattern() } }),
        );
    }
    if let Some(skip) = object(schemas, "SkipBody") {
        merge(prop(skip, "reason"), shown(2000, &['\t', '\n']));
    }
    if let Some(retry) = object(schemas, "RetryBody") {
        retry.insert(
            "not".into(),
            json!({
                "properties": { "step": { "type": "string" }, "phase": { "type": "string" } },
                "required": ["step", "phase"],
            }),
        );
    }
}

/// Every component is known and listed once; the required ones are there,
/// and so is every dependency of a selected one.
fn components_schema() -> Value {
    let mut rules: Vec<Value> =
        REQUIRED_COMPONENTS.iter().map(|r| json!({ "contains": { "const": r } })).collect();
    for c in COMPONENTS {
        for dep in crate::release::depends_on(c) {
            if !REQUIRED_COMPONENTS.contains(&dep.as_str()) {
                rules.push(json!({
                    "if": { "contains": { "const": c } },
                    "then": { "contains": { "const": dep } },
                }));
            }
        }
    }
    json!({
        "items": { "type": "string", "enum": COMPONENTS },
        "uniqueItems": true,
        "maxItems": COMPONENTS.len(),
        "allOf": rules,
    })
}

/// The share arithmetic as a list of the accepted (custodians, shares,
/// threshold) combinations: every number is at most 10, so the rules of
/// [`super::custody_numbers`] can be listed where JSON Schema cannot
/// compare two fields.
fn custody_branches() -> Vec<Value> {
    let mut out = Vec::new();
    for n in 1..=MAX_CUSTODIANS {
        for shares in std::iter::once(None).chain((1..=MAX_OPENBAO_SHARES).map(Some)) {
            let thresholds: Vec<u8> = (1..=MAX_OPENBAO_SHARES)
                .filter(|&t| super::custody_numbers(n, shares, t).is_empty())
                .collect();
            if thresholds.is_empty() {
                continue;
            }
            let shares_rule = match shares {
                None => json!({ "type": "null" }),
                Some(s) => json!({ "const": s }),
            };
            let mut branch = json!({ "properties": {
                "custodians": { "minItems": n, "maxItems": n },
                "openbao_shares": shares_rule,
                "openbao_threshold": { "enum": thresholds },
            } });
            if shares.is_some() {
                branch["required"] = json!(["openbao_shares"]);
            }
            out.push(branch);
        }
    }
    out
}

/// Hetzner's fixed limits on a region (`crate::infra::layout::check`), as
/// `if`/`then` on the control-plane count: the workers that fit beside 1
/// or 3 control planes.
fn region_limits() -> Vec<Value> {
    use cz_adapters::cloud::catalogue::{
        LOAD_BALANCER_TYPE_NAMES, PLACEMENT_GROUPS_PER_PROJECT, SERVERS_PER_NETWORK,
        SERVERS_PER_PLACEMENT_GROUP, load_balancer_type_table,
    };
    let most_workers = |cp: u32, servers: u32, when: Value| {
        let mut cond = json!({
            "properties": { "control_plane": {
                "properties": { "count": { "const": cp } }, "required": ["count"] } },
            "required": ["control_plane"],
        });
        if let (Value::Object(c), Value::Object(w)) = (&mut cond, when) {
            for (k, v) in w {
                match (c.get_mut(k.as_str()), v) {
                    (Some(Value::Object(a)), Value::Object(b)) => a.extend(b),
                    (Some(Value::Array(a)), Value::Array(b)) => a.extend(b),
                    (_, v) => {
                        c.insert(k, v);
                    }
                }
            }
        }
        json!({ "if": cond, "then": { "properties": { "workers": { "properties": {
            "count": { "maximum": servers.saturating_sub(cp) } } } } } })
    };
    let mut rules = Vec::new();
    for cp in [1, 3] {
        rules.push(most_workers(
            cp,
            PLACEMENT_GROUPS_PER_PROJECT * SERVERS_PER_PLACEMENT_GROUP,
            json!({}),
        ));
        rules.push(most_workers(
            cp,
            SERVERS_PER_NETWORK,
            json!({ "properties": { "network": { "const": "private" } }, "required": ["network"] }),
        ));
        for name in LOAD_BALANCER_TYPE_NAMES {
            let t = load_balancer_type_table(name).expect("a catalogue type");
            // An absent or null type is the release's (`properties` holds
            // for an absent key).
            let lb = if name == crate::release::load_balancer_type() {
                json!({ "properties": { "targets": { "const": "all-nodes" },
                                        "type": { "enum": [name, null] } },
                        "required": ["targets"] })
            } else {
                json!({ "properties": { "targets": { "const": "all-nodes" },
                                        "type": { "const": name } },
                        "required": ["targets", "type"] })
            };
            rules.push(most_workers(
                cp,
                t.max_targets,
                json!({ "properties": { "load_balancer": lb }, "required": ["load_balancer"] }),
            ));
        }
    }
    rules
}

fn object<'a>(
    schemas: &'a mut Map<String, Value>,
    name: &str,
) -> Option<&'a mut Map<String, Value>> {
    schemas.get_mut(name).and_then(Value::as_object_mut)
}

fn prop<'a>(schema: &'a mut Map<String, Value>, name: &str) -> &'a mut Map<String, Value> {
    let props = schema
        .entry("properties")
        .or_insert_with(|| json!({}))
        .as_object_mut()
        .expect("properties is an object");
    props.entry(name).or_insert_with(|| json!({})).as_object_mut().expect("a schema object")
}

fn merge(into: &mut Map<String, Value>, from: Value) {
    if let Value::Object(from) = from {
        into.extend(from);
    }
}
