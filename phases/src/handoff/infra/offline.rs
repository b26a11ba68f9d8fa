//! The `hetzner-offline` module's state, as the production module's
//! provider resources, so the hand-off adopts it like any other.
//!
//! The offline module (`cloud-templates/hetzner-offline/`) records one
//! `terraform_data` per cloud object; its `input.object` is the object as
//! declared (kind, name, labels, attributes) and its `input.address` the
//! production module's address of the same object. No id is in that state
//! (the shim creates objects by name), so ids come from the live objects
//! of the region, found by kind and name.
//!
//! What comes out is what the production module's `tofu show -json` would
//! list for the same objects: `hcloud_network` and its `_subnet`,
//! `hcloud_load_balancer` and its `_network`, `_service` per port and
//! `_target`, with the provider's attribute names. The declared values are
//! "what tofu built"; the provider's observation is then compared with
//! them as for the production module, so a change made in the cloud after
//! the apply (a label, a server type) still stops the hand-off.

use cz_adapters::cloud::shim::ShimObject;
use cz_adapters::{CloudObject, StateResource};
use serde_json::{Value, json};

/// The type the offline module's resources have in the state.
pub const TF_TYPE: &str = "terraform_data";

/// Whether `state` is the offline module's.
pub fn is_offline(state: &[StateResource]) -> bool {
    !state.is_empty() && state.iter().all(|s| s.kind == TF_TYPE)
}

fn resource(tf_type: &str, address: String, values: Value) -> StateResource {
    let id = values["id"].as_str().and_then(|s| s.parse().ok()).unwrap_or(0);
    let name = values["name"].as_str().map_or_else(|| address.clone(), str::to_owned);
    StateResource { address, kind: tf_type.to_owned(), id, name, attrs: values }
}

/// The declared object and production address of one `terraform_data`.
fn declared(s: &StateResource) -> Result<(ShimObject, String), String> {
    let input = &s.attrs["input"];
    let text = input["object"]
        .as_str()
        .ok_or_else(|| format!("{}: no `input.object` (not the offline module's)", s.address))?;
    let object: ShimObject =
        serde_json::from_str(text).map_err(|e| format!("{}: input.object: {e}", s.address))?;
    let address = input["address"]
        .as_str()
        .ok_or_else(|| format!("{}: no `input.address`", s.address))?
        .to_owned();
    Ok((object, address))
}

/// The provider resources behind the offline `state`, with ids from
/// `live` (the region's objects). An object of the state that is not in
/// the cloud is an error: there would be nothing to adopt.
pub fn provider_state(
    state: &[StateResource],
    live: &[CloudObject],
) -> Result<Vec<StateResource>, String> {
    let find = |kind: &str, name: &str| -> Result<&CloudObject, String> {
        live.iter()
            .find(|o| o.kind == kind && o.name == name)
            .ok_or_else(|| format!("{kind} `{name}` is in the tofu state but not in the cloud"))
    };
    let attr = |o: &ShimObject, k: &str| o.attrs.get(k).cloned().unwrap_or(Value::Null);
    let text = |o: &ShimObject, k: &str| o.attrs.get(k).and_then(Value::as_str).map(str::to_owned);
    let mut out = Vec::new();
    for s in state {
        if s.kind != TF_TYPE {
            return Err(format!("{} ({}) is not of the offline module", s.address, s.kind));
        }
        let (o, address) = declared(s)?;
        let me = find(&o.kind, &o.name)?;
        let id = me.id.to_string();
        let labels = json!(o.labels);
        let named = |attrs: Value| {
            let mut v = json!({ "id": id, "name": o.name, "labels": labels });
            if let (Some(m), Value::Object(extra)) = (v.as_object_mut(), attrs) {
                m.extend(extra);
            }
            v
        };
        match o.kind.as_str() {
            "network" => {
                out.push(resource(
                    "hcloud_network",
                    address,
                    named(json!({ "ip_range": attr(&o, "ip_range") })),
                ));
                if let Some(subnet) = text(&o, "subnet") {
                    out.push(resource(
                        "hcloud_network_subnet",
                        "hcloud_network_subnet.main".into(),
                        json!({ "id": format!("{id}-{subnet}"), "network_id": me.id,
                                "type": "cloud", "network_zone": attr(&o, "network_zone"),
                                "ip_range": subnet }),
                    ));
                }
            }
            "firewall" => {
                let rules: Vec<Value> = attr(&o, "rules")
                    .as_array()
                    .into_iter()
                    .flatten()
                    .map(|r| {
                        json!({
                            "direction": r["direction"], "protocol": r["protocol"],
                            "port": r["port"],
                            "source_ips": r.get("source_ips").cloned().unwrap_or(json!([])),
                            "destination_ips": r.get("destination_ips").cloned().unwrap_or(json!([])),
                            "description": r.get("description").cloned().unwrap_or(Value::Null),
                        })
                    })
                    .collect();
                out.push(resource("hcloud_firewall", address, named(json!({ "rule": rules }))));
            }
            "ssh_key" => out.push(resource(
                "hcloud_ssh_key",
                address,
                named(json!({ "public_key": attr(&o, "public_key") })),
            )),
            "placement_group" => out.push(resource(
                "hcloud_placement_group",
                address,
                named(json!({ "type": "spread" })),
            )),
            "server" => {
                let pg = match text(&o, "placement_group") {
                    Some(name) => json!(find("placement_group", &name)?.id),
                    None => Value::Null,
                };
                out.push(resource(
                    "hcloud_server",
                    address,
                    named(json!({
                        "server_type": attr(&o, "server_type"), "location": attr(&o, "location"),
                        "image": attr(&o, "image"), "placement_group_id": pg,
                        "ipv4_address": me.attrs.get("ipv4").cloned().unwrap_or(Value::Null),
                    })),
                ));
            }
            "load_balancer" => {
                out.push(resource(
                    "hcloud_load_balancer",
                    address,
                    named(json!({
                        "load_balancer_type": attr(&o, "load_balancer_type"),
                        "location": attr(&o, "location"),
                        "ipv4": me.attrs.get("ipv4").cloned().unwrap_or(Value::Null),
                    })),
                ));
                let lb = me.id;
                if let Some(net_name) = text(&o, "network") {
                    let net = find("network", &net_name)?;
                    let subnet = live_subnet(state, &net_name)?;
                    out.push(resource(
                        "hcloud_load_balancer_network",
                        "hcloud_load_balancer_network.main".into(),
                        json!({ "id": format!("{lb}-{}", net.id), "load_balancer_id": lb,
                                "network_id": net.id,
                                "subnet_id": subnet.map(|s| format!("{}-{s}", net.id)),
                                "ip": me.attrs.get("private_ip").cloned().unwrap_or(Value::Null) }),
                    ));
                }
                for sv in attr(&o, "services").as_array().into_iter().flatten() {
                    let port = sv["listen_port"].clone();
                    out.push(resource(
                        "hcloud_load_balancer_service",
                        format!("hcloud_load_balancer_service.tcp_{port}"),
                        json!({ "id": format!("{lb}__{port}"), "load_balancer_id": lb.to_string(),
                                "protocol": sv["protocol"], "listen_port": port,
                                "destination_port": sv["destination_port"] }),
                    ));
                }
                for t in attr(&o, "targets").as_array().into_iter().flatten() {
                    let selector = t["label_selector"]["selector"].as_str().unwrap_or_default();
                    out.push(resource(
                        "hcloud_load_balancer_target",
                        "hcloud_load_balancer_target.control_planes".into(),
                        json!({ "id": format!("{lb}__label_selector__{selector}"),
                                "load_balancer_id": lb, "type": t["type"],
                                "label_selector": selector,
                                "use_private_ip": t.get("use_private_ip").cloned().unwrap_or(json!(false)) }),
                    ));
                }
            }
            other => return Err(format!("{}: an offline object of kind `{other}`", s.address)),
        }
    }
    Ok(out)
}

/// The subnet range the state declares for the network `name`.
fn live_subnet(state: &[StateResource], name: &str) -> Result<Option<String>, String> {
    for s in state {
        let (o, _) = declared(s)?;
        if o.kind == "network" && o.name == name {
            return Ok(o.attrs.get("subnet").and_then(Value::as_str).map(str::to_owned));
        }
    }
    Ok(None)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeMap;

    fn data(address: &str, kind: &str, name: &str, attrs: Value) -> StateResource {
        let object = ShimObject {
            endpoint: "http://127.0.0.1:1".into(),
            kind: kind.into(),
            name: name.into(),
            labels: BTreeMap::from([("catalyst.openova.io/sovereign".into(), "s".into())]),
            attrs,
        };
        StateResource {
            address: format!("terraform_data.{}", address.replace(['.', '[', ']'], "_")),
            kind: TF_TYPE.into(),
            id: 0,
            name: address.into(),
            attrs: json!({ "id": "uuid", "input": { "shim": "/bin/cz", "address": address,
                           "object": serde_json::to_string(&object).unwrap() } }),
        }
    }

    fn live(kind: &str, id: i64, name: &str, attrs: Value) -> CloudObject {
        CloudObject { kind: kind.into(), id, name: name.into(), labels: BTreeMap::new(), attrs }
    }

    #[test]
    fn offline_state_becomes_the_production_modules_resources() {
        let state = vec![
            data(
                "hcloud_network.main",
                "network",
                "s-net",
                json!({"ip_range": "10.0.0.0/16", "subnet": "10.0.1.0/24", "network_zone": "eu-central"}),
            ),
            data("hcloud_placement_group.cp", "placement_group", "s-pg", json!({"type": "spread"})),
            data(
                "hcloud_server.cp[0]",
                "server",
                "s-cp1",
                json!({"server_type": "cpx32", "location": "fsn1", "image": "ubuntu-24.04", "placement_group": "s-pg", "network": "s-net"}),
            ),
            data(
                "hcloud_load_balancer.main",
                "load_balancer",
                "s-lb",
                json!({"load_balancer_type": "lb11", "location": "fsn1", "network": "s-net",
                   "services": [{"protocol": "tcp", "listen_port": 443, "destination_port": 443}],
                   "targets": [{"type": "label_selector", "label_selector": {"selector": "a=b"}}]}),
            ),
        ];
        assert!(is_offline(&state));
        let cloud = vec![
            live("network", 7, "s-net", json!({})),
            live("placement_group", 8, "s-pg", json!({})),
            live("server", 9, "s-cp1", json!({"ipv4": "203.0.113.9"})),
            live(
                "load_balancer",
                10,
                "s-lb",
                json!({"ipv4": "203.0.113.10", "private_ip": "10.0.1.254"}),
            ),
        ];
        let out = provider_state(&state, &cloud).unwrap();
        let by = |a: &str| out.iter().find(|r| r.address == a).unwrap_or_else(|| panic!("{a}"));
        assert_eq!(by("hcloud_network_subnet.main").attrs["id"], "7-10.0.1.0/24");
        let server = by("hcloud_server.cp[0]");
        assert_eq!((server.kind.as_str(), server.id), ("hcloud_server", 9));
        assert_eq!(server.attrs["placement_group_id"], 8);
        assert_eq!(server.attrs["labels"]["catalyst.openova.io/sovereign"], "s");
        let net = by("hcloud_load_balancer_network.main");
        assert_eq!(net.attrs["id"], "10-7");
        assert_eq!(net.attrs["subnet_id"], "7-10.0.1.0/24");
        assert_eq!(net.attrs["ip"], "10.0.1.254");
        assert_eq!(by("hcloud_load_balancer_service.tcp_443").attrs["id"], "10__443");
        assert_eq!(
            by("hcloud_load_balancer_target.control_planes").attrs["id"],
            "10__label_selector__a=b"
        );
        // Every one is a kind the hand-off can adopt.
        let adopted = super::super::managed::adoptees(&out, "fsn1").unwrap();
        assert_eq!(adopted.len(), out.len());

        // An object gone from the cloud stops it, naming the object.
        let e = provider_state(&state, &cloud[..2]).unwrap_err();
        assert!(e.contains("server `s-cp1`"), "{e}");
    }
}
