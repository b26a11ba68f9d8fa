//! A simulated Crossplane `provider-hetzner` inside [`SimKube`], working on
//! the sim cloud.
//!
//! What it does, as the real provider (upjet over the hcloud Terraform
//! provider, `../shared/upstream/crds/provider-hetzner/SOURCES.md`) does:
//! - the `pkg.crossplane.io/v1` `Provider` whose package is provider-hetzner
//!   becomes `Installed` and `Healthy` some seconds after it is applied; from
//!   then its CRDs exist (Established) and its deployment runs. Before that,
//!   applying one of its managed resources fails as "no matches for kind";
//! - a managed resource names its cloud object by `crossplane.io/external-name`,
//!   in the provider's id form (compound for subnets, load-balancer
//!   networks, services and targets: [`external_name`]);
//! - it needs its `ProviderConfig` (namespaced, in its own namespace) and
//!   the Secret that config names, else `Synced=False`;
//! - `status.atProvider` is the object's provider attributes in camelCase
//!   ([`super::hcloud_view`]), read from the live cloud;
//! - writes follow `spec.managementPolicies` (default `["*"]`): with
//!   `Update`, a `forProvider` name or labels that differ from the cloud are
//!   written to it (the only fields the sim cloud can change: others show
//!   as `Synced=False`, not silently ignored); deleting the resource
//!   deletes the cloud object only with `Delete` (or `*`).
//!
//! Not simulated: creating cloud objects from a managed resource (no phase
//! of ours asks a provider to create), and late initialisation.
//!
//! [`SimKube`]: super::kube::SimKube

use cz_adapters::CloudObject;
use serde_json::Value;

use super::hcloud_view::{ProviderResource, camel, provider_view};

/// How long after its `Provider` is applied the package is installed
/// (before scaling).
pub const PROVIDER_INSTALL_MS: u64 = 20_000;
/// How long a managed resource takes to observe its object.
pub const OBSERVE_MS: u64 = 5_000;

fn group(api_version: &str) -> &str {
    api_version.split_once('/').map_or("", |(g, _)| g)
}

/// A managed resource of provider-hetzner (not its ProviderConfig).
pub fn is_managed(api_version: &str) -> bool {
    group(api_version).ends_with(".hetzner.m.crossplane.io")
}

/// A ProviderConfig (or cluster one) of provider-hetzner.
pub fn is_config(api_version: &str) -> bool {
    group(api_version) == "hetzner.m.crossplane.io"
}

/// Is this the provider-hetzner package?
pub fn is_provider_package(obj: &Value) -> bool {
    obj["apiVersion"] == "pkg.crossplane.io/v1"
        && obj["kind"] == "Provider"
        && obj
            .pointer("/spec/package")
            .and_then(Value::as_str)
            .is_some_and(|p| p.contains("/provider-hetzner"))
}

/// The Terraform resource type behind a managed resource kind.
pub fn tf_type(api_version: &str, kind: &str) -> Option<&'static str> {
    Some(match (group(api_version), kind) {
        ("server.hetzner.m.crossplane.io", "Server") => "hcloud_server",
        ("server.hetzner.m.crossplane.io", "Network") => "hcloud_server_network",
        ("server.hetzner.m.crossplane.io", "Key") => "hcloud_ssh_key",
        ("server.hetzner.m.crossplane.io", "Group") => "hcloud_placement_group",
        ("server.hetzner.m.crossplane.io", "FirewallAttachment") => "hcloud_firewall_attachment",
        ("network.hetzner.m.crossplane.io", "Network") => "hcloud_network",
        ("network.hetzner.m.crossplane.io", "Subnet") => "hcloud_network_subnet",
        ("network.hetzner.m.crossplane.io", "Firewall") => "hcloud_firewall",
        ("loadbalancer.hetzner.m.crossplane.io", "Balancer") => "hcloud_load_balancer",
        ("loadbalancer.hetzner.m.crossplane.io", "BalancerNetwork") => {
            "hcloud_load_balancer_network"
        }
        ("loadbalancer.hetzner.m.crossplane.io", "BalancerService") => {
            "hcloud_load_balancer_service"
        }
        ("loadbalancer.hetzner.m.crossplane.io", "BalancerTarget") => "hcloud_load_balancer_target",
        _ => return None,
    })
}

fn scalar(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

/// The provider's external name of a resource: its Terraform id, except
/// the kinds the provider names by their parameters
/// (`config/external_name.go` upstream).
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

/// The live cloud as the provider reads it.
pub struct CloudView {
    pub objects: Vec<CloudObject>,
}

impl CloudView {
    /// The provider resource a managed resource's external name names, and
    /// the sim cloud object it belongs to.
    pub fn find(&self, tf_type: &str, external: &str) -> Option<(ProviderResource, &CloudObject)> {
        self.objects.iter().find_map(|o| {
            provider_view(o, &self.objects)
                .into_iter()
                .find(|r| r.tf_type == tf_type && external_name(tf_type, &r.values) == external)
                .map(|r| (r, o))
        })
    }
}

/// `spec.managementPolicies`, `["*"]` when unset.
pub fn policies(obj: &Value) -> Vec<String> {
    match obj.pointer("/spec/managementPolicies").and_then(Value::as_array) {
        Some(a) => a.iter().filter_map(Value::as_str).map(str::to_owned).collect(),
        None => vec!["*".to_owned()],
    }
}

pub fn allows(obj: &Value, action: &str) -> bool {
    policies(obj).iter().any(|p| p == "*" || p == action)
}

/// What the provider observed of one managed resource.
pub enum Observation {
    /// Synced: the object exists; its attributes in camelCase.
    Found { at_provider: Value, object: CloudObject },
    /// Synced=False with this message.
    Error(String),
}

/// Observes `obj` in the cloud, given whether its ProviderConfig resolves
/// (`Err` says why not).
pub fn observe(obj: &Value, view: &CloudView, config: Result<(), String>) -> Observation {
    let api = obj["apiVersion"].as_str().unwrap_or_default();
    let kind = obj["kind"].as_str().unwrap_or_default();
    if let Err(why) = config {
        return Observation::Error(format!("cannot get terraform setup: {why}"));
    }
    let Some(ty) = tf_type(api, kind) else {
        return Observation::Error(format!("sim provider: {kind} is not a kind it serves"));
    };
    let Some(external) =
        obj.pointer("/metadata/annotations/crossplane.io~1external-name").and_then(Value::as_str)
    else {
        return Observation::Error(
            "sim provider: no external name and creating is not simulated".into(),
        );
    };
    match view.find(ty, external) {
        Some((r, o)) => Observation::Found { at_provider: camel(&r.values), object: o.clone() },
        None => Observation::Error(format!(
            "cannot run refresh: observe failed: {ty} {external} not found (it does not exist in the cloud)"
        )),
    }
}

/// A write the provider owes the cloud: a new name, new labels (either
/// may be unchanged).
pub type PendingUpdate = (Option<String>, Option<serde_json::Map<String, Value>>);

/// The name and labels `forProvider` asks for that the cloud object does
/// not have, as (name, labels) to write, when `Update` is allowed and the
/// object is the resource's own (not a sub-resource, whose name is its
/// parent's).
pub fn pending_update(obj: &Value, at_provider: &Value) -> Option<PendingUpdate> {
    if !allows(obj, "Update") {
        return None;
    }
    let fp = obj.pointer("/spec/forProvider")?;
    let name = fp
        .get("name")
        .and_then(Value::as_str)
        .filter(|n| Some(*n) != at_provider.get("name").and_then(Value::as_str))
        .map(str::to_owned);
    let labels = fp
        .get("labels")
        .and_then(Value::as_object)
        .filter(|l| at_provider.get("labels").and_then(Value::as_object) != Some(*l))
        .cloned();
    (name.is_some() || labels.is_some()).then_some((name, labels))
}

/// Fields of `forProvider` the sim cannot write that differ from the
/// cloud (the real provider would update them).
pub fn unsupported_differences(obj: &Value, at_provider: &Value) -> Vec<String> {
    let Some(Value::Object(fp)) = obj.pointer("/spec/forProvider") else { return Vec::new() };
    fp.iter()
        .filter(|(k, _)| !matches!(k.as_str(), "name" | "labels"))
        .filter(|(k, v)| at_provider.get(k.as_str()).is_some_and(|a| scalar(a) != scalar(v)))
        .map(|(k, _)| k.clone())
        .collect()
}
