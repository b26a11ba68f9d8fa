//! The sim cloud's objects as the hcloud Terraform provider describes them.
//!
//! The sim cloud stores one object per top-level Hetzner object (a network
//! with its subnet range as an attribute, a load balancer with its services
//! and target). Two things outside us see them split into the provider's
//! resources, with the provider's attribute names:
//! - `tofu show -json` of the production module ([`SimTofu::state`]
//!   returns what it would list: `hcloud_network` and
//!   `hcloud_network_subnet`, `hcloud_load_balancer` and its `_network`,
//!   `_service` and `_target`), read from the state file's snapshot;
//! - Crossplane's provider-hetzner, whose `status.atProvider` is the same
//!   attributes in camelCase, read from the live cloud
//!   ([`super::crossplane`]).
//!
//! So what tofu recorded and what the provider observes come from one
//! function, and differ exactly when the cloud changed after the apply.
//!
//! [`SimTofu::state`]: super::tofu::SimTofu

use std::collections::BTreeMap;

use cz_adapters::CloudObject;
use cz_adapters::labels::{LABEL_REGION, LABEL_ROLE, LABEL_SOVEREIGN};
use serde_json::{Value, json};

/// One provider resource: its Terraform type, address suffix and values
/// (`id` included, as a string as Terraform keeps it).
#[derive(Clone, Debug, PartialEq)]
pub struct ProviderResource {
    pub tf_type: &'static str,
    /// The resource's name in the module (`main`, `cp[0]`, `tcp_443`).
    pub name_in_module: String,
    pub values: Value,
}

fn str_of<'a>(o: &'a CloudObject, k: &str) -> Option<&'a str> {
    o.attrs.get(k).and_then(Value::as_str)
}

fn same_region(a: &CloudObject, b: &CloudObject) -> bool {
    a.labels.get(LABEL_SOVEREIGN) == b.labels.get(LABEL_SOVEREIGN)
        && a.labels.get(LABEL_REGION) == b.labels.get(LABEL_REGION)
}

/// The network of `o`'s Sovereign and region, if any.
fn network_of<'a>(o: &CloudObject, all: &'a [CloudObject]) -> Option<&'a CloudObject> {
    all.iter().find(|n| n.kind == "network" && same_region(n, o))
}

fn firewall_rules(o: &CloudObject) -> Value {
    let sources = o.attrs.get("sources").cloned().unwrap_or_else(|| json!([]));
    let mut rules = Vec::new();
    for (field, src) in [("restricted", sources), ("open", json!(["0.0.0.0/0", "::/0"]))] {
        for port in o.attrs.get(field).and_then(Value::as_array).into_iter().flatten() {
            rules.push(json!({
                "direction": "in", "protocol": "tcp", "port": port.to_string(),
                "source_ips": src, "destination_ips": [], "description": "",
            }));
        }
    }
    json!(rules)
}

/// The provider resources of one sim cloud object; `all` holds the
/// objects it may reference (its region's network).
pub fn provider_view(o: &CloudObject, all: &[CloudObject]) -> Vec<ProviderResource> {
    let id = o.id;
    let labels = json!(o.labels);
    let one =
        |tf_type, name: String, values| ProviderResource { tf_type, name_in_module: name, values };
    let index = o.attrs.get("index").and_then(Value::as_u64).unwrap_or(0);
    match o.kind.as_str() {
        "network" => {
            let mut out = vec![one(
                "hcloud_network",
                "main".into(),
                json!({
                    "id": id.to_string(), "name": o.name, "labels": labels,
                    "ip_range": str_of(o, "ip_range"),
                    "delete_protection": false, "expose_routes_to_vswitch": false,
                }),
            )];
            if let Some(subnet) = str_of(o, "subnet") {
                out.push(one(
                    "hcloud_network_subnet",
                    "main".into(),
                    json!({
                        "id": format!("{id}-{subnet}"), "network_id": id, "type": "cloud",
                        "network_zone": str_of(o, "network_zone"), "ip_range": subnet,
                        "gateway": "10.0.0.1", "vswitch_id": null,
                    }),
                ));
            }
            out
        }
        "firewall" => vec![one(
            "hcloud_firewall",
            "main".into(),
            json!({ "id": id.to_string(), "name": o.name, "labels": labels, "rule": firewall_rules(o), "apply_to": [] }),
        )],
        "ssh_key" => vec![one(
            "hcloud_ssh_key",
            "main".into(),
            json!({ "id": id.to_string(), "name": o.name, "labels": labels,
                    "public_key": str_of(o, "public_key").unwrap_or_default() }),
        )],
        "placement_group" => {
            let role_name = o.name.rsplit('-').next().unwrap_or("cp");
            let name = match role_name.strip_prefix('w') {
                Some(n) => format!("workers[{}]", n.parse::<u64>().unwrap_or(1) - 1),
                None => "cp".into(),
            };
            vec![one(
                "hcloud_placement_group",
                name,
                json!({ "id": id.to_string(), "name": o.name, "labels": labels,
                        "type": str_of(o, "type").unwrap_or("spread") }),
            )]
        }
        "server" => {
            let role = o.labels.get(LABEL_ROLE).map(String::as_str).unwrap_or("worker");
            let name = if role == "control-plane" {
                format!("cp[{index}]")
            } else {
                format!("worker[{index}]")
            };
            vec![one(
                "hcloud_server",
                name,
                json!({
                    "id": id.to_string(), "name": o.name, "labels": labels,
                    "server_type": str_of(o, "server_type"), "location": str_of(o, "location"),
                    "image": str_of(o, "image"), "ipv4_address": str_of(o, "ipv4"),
                    "status": str_of(o, "status"),
                }),
            )]
        }
        "load_balancer" => {
            let mut out = vec![one(
                "hcloud_load_balancer",
                "main".into(),
                json!({
                    "id": id.to_string(), "name": o.name, "labels": labels,
                    "load_balancer_type": str_of(o, "type"), "location": str_of(o, "location"),
                    "ipv4": str_of(o, "ipv4"), "algorithm": [{ "type": "round_robin" }],
                }),
            )];
            if let Some(net) = network_of(o, all) {
                let subnet = str_of(net, "subnet").unwrap_or("10.0.1.0/24");
                out.push(one(
                    "hcloud_load_balancer_network",
                    "main".into(),
                    json!({
                        "id": format!("{id}-{}", net.id), "load_balancer_id": id,
                        "network_id": net.id, "subnet_id": format!("{}-{subnet}", net.id),
                        "ip": str_of(o, "private_ip"), "enable_public_interface": true,
                    }),
                ));
            }
            for port in o.attrs.get("services").and_then(Value::as_array).into_iter().flatten() {
                let port = port.as_u64().unwrap_or(0);
                out.push(one(
                    "hcloud_load_balancer_service",
                    format!("tcp_{port}"),
                    json!({
                        "id": format!("{id}__{port}"), "load_balancer_id": id.to_string(),
                        "protocol": "tcp", "listen_port": port, "destination_port": port,
                        "proxyprotocol": false,
                    }),
                ));
            }
            if let Some(role) = str_of(o, "targets") {
                let selector = format!(
                    "{LABEL_SOVEREIGN}={},{LABEL_REGION}={},{LABEL_ROLE}={role}",
                    o.labels.get(LABEL_SOVEREIGN).map(String::as_str).unwrap_or_default(),
                    o.labels.get(LABEL_REGION).map(String::as_str).unwrap_or_default(),
                );
                out.push(one(
                    "hcloud_load_balancer_target",
                    "control_planes".into(),
                    json!({
                        "id": format!("lb-target-{id}-label-selector"), "type": "label_selector",
                        "load_balancer_id": id, "label_selector": selector, "use_private_ip": true,
                    }),
                ));
            }
            out
        }
        _ => Vec::new(),
    }
}

/// `snake_case` keys to `camelCase`, recursively (what upjet does between
/// the Terraform schema and the CRD).
pub fn camel(v: &Value) -> Value {
    match v {
        Value::Object(m) => {
            let out: serde_json::Map<String, Value> = m
                .iter()
                .map(|(k, v)| {
                    // Label keys are data, not field names.
                    let v = if k == "labels" { v.clone() } else { camel(v) };
                    (camel_key(k), v)
                })
                .collect();
            Value::Object(out)
        }
        Value::Array(a) => Value::Array(a.iter().map(camel).collect()),
        other => other.clone(),
    }
}

fn camel_key(k: &str) -> String {
    let mut out = String::with_capacity(k.len());
    let mut up = false;
    for c in k.chars() {
        if c == '_' {
            up = true;
        } else if up {
            out.extend(c.to_uppercase());
            up = false;
        } else {
            out.push(c);
        }
    }
    out
}

/// The provider resources of every object, in a map keyed by Terraform
/// type and provider id (the `id` value).
pub fn by_type_and_id(all: &[CloudObject]) -> BTreeMap<(String, String), ProviderResource> {
    let mut out = BTreeMap::new();
    for o in all {
        for r in provider_view(o, all) {
            let id = r.values["id"].as_str().unwrap_or_default().to_owned();
            out.insert((r.tf_type.to_owned(), id), r);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn obj(kind: &str, id: i64, name: &str, attrs: Value) -> CloudObject {
        let labels = BTreeMap::from([
            (LABEL_SOVEREIGN.to_owned(), "acme".to_owned()),
            (LABEL_REGION.to_owned(), "fsn1".to_owned()),
            (LABEL_ROLE.to_owned(), "load-balancer".to_owned()),
        ]);
        CloudObject { kind: kind.into(), id, name: name.into(), labels, attrs }
    }

    #[test]
    fn a_load_balancer_is_four_provider_resources_with_compound_ids() {
        let net = obj(
            "network",
            7,
            "acme-fsn1-net",
            json!({"ip_range": "10.0.0.0/16", "subnet": "10.0.1.0/24", "network_zone": "eu-central"}),
        );
        let lb = obj(
            "load_balancer",
            9,
            "acme-fsn1-lb",
            json!({"type": "lb11", "services": [80, 443], "targets": "control-plane", "private_ip": "10.0.1.254"}),
        );
        let all = vec![net.clone(), lb.clone()];
        let v = provider_view(&lb, &all);
        let ids: Vec<_> = v.iter().map(|r| (r.tf_type, r.values["id"].as_str().unwrap())).collect();
        assert_eq!(
            ids,
            [
                ("hcloud_load_balancer", "9"),
                ("hcloud_load_balancer_network", "9-7"),
                ("hcloud_load_balancer_service", "9__80"),
                ("hcloud_load_balancer_service", "9__443"),
                ("hcloud_load_balancer_target", "lb-target-9-label-selector"),
            ]
        );
        let subnet = &provider_view(&net, &all)[1];
        assert_eq!(subnet.values["id"], "7-10.0.1.0/24");
        assert_eq!(camel(&subnet.values)["networkZone"], "eu-central");
    }
}
