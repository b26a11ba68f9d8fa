//! From tofu's state to Crossplane managed resources of provider-hetzner,
//! and the comparison that decides whether Crossplane may take over.
//!
//! Pure: the phase reads the state and the cluster, this module decides.
//!
//! - [`adoptees`]: one [`Adoptee`] per object of `tofu show -json`, of the
//!   provider kind behind its Terraform type, named by the provider's
//!   external-name form (`config/external_name.go` of provider-hetzner:
//!   the Terraform id for most kinds; `<lb>-<network>` for a load
//!   balancer's network, `<lb>__<port>` for a service,
//!   `<lb>__<type>__<server|selector|ip>` for a target, `<server>-<network>`
//!   for a server's network attachment). A resource of a type we cannot
//!   adopt stops the hand-off: an object nobody owns is worse than a
//!   paused job.
//! - [`render`]: the managed resource, observe-only (`["Observe"]`, an
//!   empty `forProvider` but for what the schema always requires: a
//!   target's `type`) or managed. Managed means the CRD's required fields
//!   (and labels) copied from tofu into `forProvider` and the policies
//!   `Observe, Create, Update, LateInitialize`: everything but `Delete`, so
//!   deleting the resource orphans the cloud object. That is Crossplane
//!   v2's form of `deletionPolicy: Orphan` (namespaced resources dropped
//!   the field); the operator opts into `Delete` with the `crossplane-delete`
//!   verb (not built yet: docs/operations.md).
//! - [`diff`]: what the provider observes (`status.atProvider`) against
//!   what tofu built, field by field over the fields `render` would copy.
//!   Any difference stops the phase before anything is written.

use std::collections::BTreeMap;

use cz_adapters::StateResource;
use cz_adapters::labels::{FIELD_MANAGER, LABEL_REGION, LABEL_SOVEREIGN};
use serde_json::{Map, Value, json};

/// Where the provider's ProviderConfig, its credential and every managed
/// resource live.
pub const NAMESPACE: &str = "crossplane-system";
/// The namespaced ProviderConfig the managed resources use.
pub const PROVIDER_CONFIG: &str = "catalyst-zero";
/// The Secret (and key) holding the hand-off token.
pub const CREDENTIAL_SECRET: &str = "hcloud-credentials";
pub const CREDENTIAL_KEY: &str = "token";
/// Policies of an adopted resource before the zero-diff check.
pub const OBSERVE: &[&str] = &["Observe"];
/// Policies after it: full management except deleting the cloud object.
pub const MANAGE: &[&str] = &["Observe", "Create", "Update", "LateInitialize"];

/// How a field's value is typed in the CRD (Terraform keeps ids as
/// strings or numbers depending on the resource).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Ty {
    Str,
    Num,
    Any,
}

/// A provider-hetzner kind and the fields copied into `forProvider`.
#[derive(Debug, PartialEq, Eq)]
pub struct Kind {
    pub tf_type: &'static str,
    pub api_version: &'static str,
    pub kind: &'static str,
    /// Terraform attribute and its CRD type: the CRD's required parameters,
    /// the labels, and what identifies a sub-resource.
    fields: &'static [(&'static str, Ty)],
    /// Fields the schema requires in `forProvider` whatever the policies
    /// (kept even observe-only).
    pub always: &'static [&'static str],
}

use Ty::{Any, Num, Str};

pub const KINDS: &[Kind] = &[
    Kind {
        tf_type: "hcloud_network",
        api_version: "network.hetzner.m.crossplane.io/v1alpha1",
        kind: "Network",
        fields: &[("name", Str), ("ip_range", Str), ("labels", Any)],
        always: &[],
    },
    Kind {
        tf_type: "hcloud_network_subnet",
        api_version: "network.hetzner.m.crossplane.io/v1alpha1",
        kind: "Subnet",
        fields: &[("network_id", Num), ("type", Str), ("network_zone", Str), ("ip_range", Str)],
        always: &[],
    },
    Kind {
        tf_type: "hcloud_firewall",
        api_version: "network.hetzner.m.crossplane.io/v1alpha1",
        kind: "Firewall",
        fields: &[("name", Str), ("labels", Any), ("rule", Any)],
        always: &[],
    },
    Kind {
        tf_type: "hcloud_ssh_key",
        api_version: "server.hetzner.m.crossplane.io/v1alpha1",
        kind: "Key",
        fields: &[("name", Str), ("public_key", Str), ("labels", Any)],
        always: &[],
    },
    Kind {
        tf_type: "hcloud_placement_group",
        api_version: "server.hetzner.m.crossplane.io/v1alpha1",
        kind: "Group",
        fields: &[("name", Str), ("type", Str), ("labels", Any)],
        always: &[],
    },
    Kind {
        tf_type: "hcloud_server",
        api_version: "server.hetzner.m.crossplane.io/v1alpha1",
        kind: "Server",
        fields: &[
            ("name", Str),
            ("server_type", Str),
            ("location", Str),
            ("image", Str),
            ("placement_group_id", Num),
            ("labels", Any),
        ],
        always: &[],
    },
    Kind {
        tf_type: "hcloud_server_network",
        api_version: "server.hetzner.m.crossplane.io/v1alpha1",
        kind: "Network",
        fields: &[("server_id", Num), ("subnet_id", Str), ("ip", Str)],
        always: &[],
    },
    Kind {
        tf_type: "hcloud_firewall_attachment",
        api_version: "server.hetzner.m.crossplane.io/v1alpha1",
        kind: "FirewallAttachment",
        fields: &[("firewall_id", Num), ("server_ids", Any), ("label_selectors", Any)],
        always: &[],
    },
    Kind {
        tf_type: "hcloud_load_balancer",
        api_version: "loadbalancer.hetzner.m.crossplane.io/v1alpha1",
        kind: "Balancer",
        fields: &[("name", Str), ("load_balancer_type", Str), ("location", Str), ("labels", Any)],
        always: &[],
    },
    Kind {
        tf_type: "hcloud_load_balancer_network",
        api_version: "loadbalancer.hetzner.m.crossplane.io/v1alpha1",
        kind: "BalancerNetwork",
        fields: &[("load_balancer_id", Num), ("subnet_id", Str), ("ip", Str)],
        always: &[],
    },
    Kind {
        tf_type: "hcloud_load_balancer_service",
        api_version: "loadbalancer.hetzner.m.crossplane.io/v1alpha1",
        kind: "BalancerService",
        fields: &[
            ("load_balancer_id", Str),
            ("protocol", Str),
            ("listen_port", Num),
            ("destination_port", Num),
        ],
        always: &[],
    },
    Kind {
        tf_type: "hcloud_load_balancer_target",
        api_version: "loadbalancer.hetzner.m.crossplane.io/v1alpha1",
        kind: "BalancerTarget",
        fields: &[
            ("load_balancer_id", Num),
            ("type", Str),
            ("label_selector", Str),
            ("server_id", Num),
            ("ip", Str),
            ("use_private_ip", Any),
        ],
        always: &["type"],
    },
];

/// One cloud object to hand to Crossplane.
#[derive(Clone, Debug, PartialEq)]
pub struct Adoptee {
    pub kind: &'static Kind,
    /// The tofu address (`hcloud_server.cp[0]`).
    pub address: String,
    /// `crossplane.io/external-name`.
    pub external_name: String,
    /// `metadata.name`: the region and the address, DNS-1123.
    pub name: String,
    /// `forProvider` once managed (camelCase, CRD-typed), from tofu.
    pub for_provider: Map<String, Value>,
}

fn scalar(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

/// The external name provider-hetzner gives a resource of `tf_type` with
/// these Terraform values.
pub fn external_name(tf_type: &str, values: &Value) -> String {
    let p = |k: &str| scalar(&values[k]);
    match tf_type {
        "hcloud_load_balancer_network" => format!("{}-{}", p("load_balancer_id"), p("network_id")),
        "hcloud_load_balancer_service" => {
            format!("{}__{}", p("load_balancer_id"), p("listen_port"))
        }
        "hcloud_server_network" => format!("{}-{}", p("server_id"), p("network_id")),
        "hcloud_load_balancer_target" => {
            let ty = p("type").to_lowercase();
            let ident = match ty.as_str() {
                "server" => p("server_id"),
                "ip" => p("ip"),
                _ => p("label_selector"),
            };
            format!("{}__{ty}__{ident}", p("load_balancer_id"))
        }
        _ => p("id"),
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

/// Terraform's nested `snake_case` keys as the CRD's `camelCase` (label keys
/// are data and stay as they are).
fn camel(v: &Value) -> Value {
    match v {
        Value::Object(m) => Value::Object(
            m.iter()
                .map(|(k, v)| (camel_key(k), if k == "labels" { v.clone() } else { camel(v) }))
                .collect(),
        ),
        Value::Array(a) => Value::Array(a.iter().map(camel).collect()),
        other => other.clone(),
    }
}

fn typed(v: &Value, ty: Ty) -> Option<Value> {
    match (ty, v) {
        (_, Value::Null) => None,
        (Ty::Num, Value::String(s)) => s.parse::<i64>().ok().map(Value::from),
        (Ty::Str, Value::Number(n)) => Some(Value::String(n.to_string())),
        (Ty::Any, v) => Some(camel(v)),
        (_, v) => Some(v.clone()),
    }
}

/// A DNS-1123 name for the resource of `address` in `location`.
fn object_name(location: &str, address: &str) -> String {
    let raw = format!("{location}-{}", address.trim_start_matches("hcloud_"));
    let mut out = String::new();
    for c in raw.chars() {
        let c = c.to_ascii_lowercase();
        if c.is_ascii_alphanumeric() {
            out.push(c);
        } else if !out.ends_with('-') {
            out.push('-');
        }
    }
    out.trim_end_matches('-').chars().take(63).collect()
}

/// One [`Adoptee`] per resource of the state, or what cannot be adopted.
pub fn adoptees(state: &[StateResource], location: &str) -> Result<Vec<Adoptee>, String> {
    let mut out = Vec::new();
    let mut refused = Vec::new();
    for s in state {
        let Some(kind) = KINDS.iter().find(|k| k.tf_type == s.kind) else {
            refused.push(format!("{} ({})", s.address, s.kind));
            continue;
        };
        let for_provider = kind
            .fields
            .iter()
            .filter_map(|(f, ty)| typed(&s.attrs[*f], *ty).map(|v| (camel_key(f), v)))
            .collect();
        out.push(Adoptee {
            kind,
            address: s.address.clone(),
            external_name: external_name(kind.tf_type, &s.attrs),
            name: object_name(location, &s.address),
            for_provider,
        });
    }
    if refused.is_empty() {
        Ok(out)
    } else {
        Err(format!(
            "the tofu state has resources no provider-hetzner kind can own: {}",
            refused.join(", ")
        ))
    }
}

/// The managed resource of `a`: observe-only, or managed with tofu's
/// fields in `forProvider`.
pub fn render(a: &Adoptee, managed: bool, sovereign: &str, location: &str) -> Value {
    let (policies, for_provider) = if managed {
        (MANAGE, a.for_provider.clone())
    } else {
        let kept = a.for_provider.iter().filter(|(k, _)| a.kind.always.contains(&k.as_str()));
        (OBSERVE, kept.map(|(k, v)| (k.clone(), v.clone())).collect())
    };
    json!({
        "apiVersion": a.kind.api_version, "kind": a.kind.kind,
        "metadata": {
            "name": a.name, "namespace": NAMESPACE,
            "annotations": { "crossplane.io/external-name": a.external_name },
            "labels": {
                "app.kubernetes.io/managed-by": FIELD_MANAGER,
                LABEL_SOVEREIGN: sovereign, LABEL_REGION: location,
            },
        },
        "spec": {
            "managementPolicies": policies,
            "providerConfigRef": { "kind": "ProviderConfig", "name": PROVIDER_CONFIG },
            "forProvider": for_provider,
        },
    })
}

/// What the provider observes against what tofu built, over the fields
/// [`render`] would copy.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Comparison {
    /// `Kind/name field: tofu <a>, cloud <b>` (empty: zero diff).
    pub differences: Vec<String>,
    /// `Kind/name field`: fields the provider does not report (the hcloud
    /// API cannot tell a load balancer's subnet, only its network), so not
    /// compared. A resource that reports none of its fields is a
    /// difference: nothing was observed.
    pub unobserved: Vec<String>,
    pub compared: usize,
}

pub fn diff(a: &Adoptee, at_provider: &Value) -> Comparison {
    let mut out = Comparison::default();
    for (field, want) in &a.for_provider {
        let got = at_provider.get(field).unwrap_or(&Value::Null);
        if got.is_null() {
            out.unobserved.push(format!("{}/{} {field}", a.kind.kind, a.name));
            continue;
        }
        out.compared += 1;
        let same = match want {
            Value::Object(_) | Value::Array(_) => want == got,
            _ => scalar(want) == scalar(got),
        };
        if !same {
            out.differences
                .push(format!("{}/{} {field}: tofu {want}, cloud {got}", a.kind.kind, a.name));
        }
    }
    if out.compared == 0 && !a.for_provider.is_empty() {
        out.differences.push(format!(
            "{}/{}: the provider reports none of {} field(s) (status.atProvider is empty)",
            a.kind.kind,
            a.name,
            a.for_provider.len()
        ));
    }
    out
}

/// How many adoptees of each kind (for the step's output).
pub fn census(all: &[Adoptee]) -> BTreeMap<String, usize> {
    let mut out = BTreeMap::new();
    for a in all {
        *out.entry(a.kind.kind.to_owned()).or_default() += 1;
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn res(address: &str, kind: &str, attrs: Value) -> StateResource {
        StateResource {
            address: address.into(),
            kind: kind.into(),
            id: 0,
            name: address.into(),
            attrs,
        }
    }

    #[test]
    fn compound_external_names_follow_the_provider() {
        let lb = json!({"load_balancer_id": 9, "network_id": 7, "listen_port": 443, "type": "label_selector", "label_selector": "a=b"});
        assert_eq!(external_name("hcloud_load_balancer_network", &lb), "9-7");
        assert_eq!(
            external_name(
                "hcloud_load_balancer_service",
                &json!({"load_balancer_id": "9", "listen_port": 443})
            ),
            "9__443"
        );
        assert_eq!(external_name("hcloud_load_balancer_target", &lb), "9__label_selector__a=b");
        assert_eq!(
            external_name(
                "hcloud_load_balancer_target",
                &json!({"load_balancer_id": 9, "type": "server", "server_id": 3})
            ),
            "9__server__3"
        );
        assert_eq!(
            external_name("hcloud_network_subnet", &json!({"id": "7-10.0.1.0/24"})),
            "7-10.0.1.0/24"
        );
        assert_eq!(external_name("hcloud_server", &json!({"id": "42"})), "42");
    }

    #[test]
    fn fields_are_typed_as_the_crd_wants_and_the_diff_is_exact() {
        let state = [
            res(
                "hcloud_load_balancer_service.tcp_443",
                "hcloud_load_balancer_service",
                json!({"id": "9__443", "load_balancer_id": 9, "protocol": "tcp", "listen_port": "443", "destination_port": 443}),
            ),
            res(
                "hcloud_server.cp[0]",
                "hcloud_server",
                json!({"id": "42", "name": "acme-fsn1-cp1", "server_type": "cpx32", "location": "fsn1", "image": "ubuntu-24.04", "placement_group_id": null, "labels": {"catalyst.openova.io/role": "control-plane"}, "user_data": "secret-ish"}),
            ),
        ];
        let a = adoptees(&state, "fsn1").unwrap();
        assert_eq!(a[0].name, "fsn1-load-balancer-service-tcp-443");
        assert_eq!(a[0].for_provider["loadBalancerId"], json!("9"));
        assert_eq!(a[0].for_provider["listenPort"], json!(443));
        assert_eq!(a[1].name, "fsn1-server-cp-0");
        assert!(!a[1].for_provider.contains_key("userData"), "only the listed fields are copied");
        assert!(!a[1].for_provider.contains_key("placementGroupId"), "nulls are not copied");
        let observed = json!({"name": "acme-fsn1-cp1", "serverType": "cpx32", "location": "fsn1", "image": "ubuntu-24.04", "labels": {"catalyst.openova.io/role": "control-plane"}});
        let same = diff(&a[1], &observed);
        assert!(same.differences.is_empty() && same.unobserved.is_empty(), "{same:?}");
        let mut drifted = observed.clone();
        drifted["serverType"] = json!("cpx42");
        drifted["labels"]["extra"] = json!("x");
        let d = diff(&a[1], &drifted).differences;
        assert_eq!(d.len(), 2, "{d:?}");
        assert!(d.iter().any(|l| l.contains("serverType: tofu \"cpx32\", cloud \"cpx42\"")));
        // A field the provider does not report is not compared, but an
        // empty observation is never a zero diff.
        let mut partial = observed.clone();
        partial.as_object_mut().unwrap().remove("image");
        let p = diff(&a[1], &partial);
        assert!(p.differences.is_empty());
        assert_eq!(p.unobserved, ["Server/fsn1-server-cp-0 image"]);
        assert_eq!(diff(&a[1], &Value::Null).differences.len(), 1);
        let r = render(&a[1], true, "acme", "fsn1");
        assert_eq!(r["spec"]["managementPolicies"], json!(MANAGE));
        assert_eq!(r["spec"]["forProvider"]["serverType"], "cpx32");
        assert_eq!(render(&a[1], false, "acme", "fsn1")["spec"]["forProvider"], json!({}));
    }

    #[test]
    fn a_resource_no_kind_can_own_stops_the_adoption() {
        let state = [res("terraform_data.server_cp", "terraform_data", json!({}))];
        let e = adoptees(&state, "fsn1").unwrap_err();
        assert!(e.contains("terraform_data.server_cp"), "{e}");
    }
}
