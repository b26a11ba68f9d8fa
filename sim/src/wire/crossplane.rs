//! Crossplane's provider-hetzner for the [`FakeKube`], against the hcloud
//! wire fake ([`super::hcloud`]) over HTTP: the provider the `infra-handoff`
//! phase meets, reading the same objects the cloud holds.
//!
//! Each pass:
//! - **installs the package**: a `pkg.crossplane.io` `Provider` whose
//!   package is provider-hetzner gets the provider's deployment and CRDs
//!   (those already registered, e.g. the real upstream CRDs a test loaded,
//!   are left as they are), then `Installed` and `Healthy`;
//! - **reconciles every managed resource** of the provider's kinds: puts the
//!   managed-resource finalizer on it; resolves its `providerConfigRef` (a
//!   namespaced ProviderConfig in its namespace) and the token in the Secret
//!   that names; reads its object with that token (`GET /v1/<coll>/<id>`,
//!   sub-resources from their parent: a subnet from its network, a load
//!   balancer's network, services and targets from the load balancer) by
//!   its external name ([`crate::backend::crossplane::external_name`]);
//!   writes `status.atProvider` (the hcloud Terraform provider's attributes
//!   in camelCase), `Synced` and `Ready`. With `Update` allowed, a name or
//!   labels in `forProvider` that differ are written (`PUT`); other
//!   differences show as `Synced=False` (the fake API changes nothing else);
//! - **deletes**: a managed resource being deleted has its object deleted
//!   (`DELETE`) only when its policies allow `Delete`; then the finalizer
//!   goes. Otherwise the object is orphaned.
//!
//! Not simulated: creating objects from a managed resource, late
//! initialisation, references and selectors.

use std::time::Duration;

use base64::Engine as _;
use serde_json::{Value, json};

use super::kube::FakeKube;
use crate::backend::crossplane::{
    allows, external_name, is_provider_package, pending_update, tf_type, unsupported_differences,
};
use crate::backend::hcloud_view::camel;
use crate::charts::{self, PROVIDER_HETZNER};

const FINALIZER: &str = "finalizer.managedresource.crossplane.io";
const NAMESPACE: &str = "crossplane-system";

impl FakeKube {
    /// Runs provider-hetzner against the hcloud API at `hcloud` (the wire
    /// fake's base URL, `…/v1` not included), a pass every `tick`.
    pub fn run_crossplane(&self, hcloud: String, tick: Duration) -> tokio::task::JoinHandle<()> {
        let fake = self.clone();
        tokio::spawn(async move {
            let http = reqwest::Client::builder()
                .timeout(Duration::from_secs(10))
                .build()
                .expect("an HTTP client");
            loop {
                install_packages(&fake);
                for c in
                    PROVIDER_HETZNER.crds.iter().filter(|c| c.group != "hetzner.m.crossplane.io")
                {
                    for mr in fake.objects(c.group, c.plural) {
                        reconcile(&fake, &http, &hcloud, c.group, c.plural, mr).await;
                    }
                }
                tokio::time::sleep(tick).await;
            }
        })
    }
}

fn s<'a>(v: &'a Value, ptr: &str) -> &'a str {
    v.pointer(ptr).and_then(Value::as_str).unwrap_or_default()
}

fn install_packages(fake: &FakeKube) {
    for p in fake.objects("pkg.crossplane.io", "providers") {
        if !is_provider_package(&p) || s(&p, "/status/conditions/0/status") == "True" {
            continue;
        }
        let name = s(&p, "/metadata/name").to_owned();
        for (group, plural, obj) in charts::manifests(&PROVIDER_HETZNER, &name, NAMESPACE) {
            let crd_name = s(&obj, "/metadata/name").to_owned();
            if plural == "customresourcedefinitions"
                && fake.get(group, plural, "", &crd_name).is_some()
            {
                continue;
            }
            fake.put(group, plural, obj);
        }
        let now = chrono::Utc::now().format("%Y-%m-%dT%H:%M:%SZ").to_string();
        let cond = |t: &str, reason: &str| json!({"type": t, "status": "True", "reason": reason, "lastTransitionTime": now});
        fake.set_status(
            "pkg.crossplane.io",
            "providers",
            "",
            &name,
            json!({"conditions": [cond("Installed", "ActivePackageRevision"), cond("Healthy", "HealthyPackageRevision")]}),
        );
    }
}

/// The token a managed resource's ProviderConfig leads to.
fn token_of(fake: &FakeKube, mr: &Value) -> Result<String, String> {
    let ns = s(mr, "/metadata/namespace");
    let name =
        mr.pointer("/spec/providerConfigRef/name").and_then(Value::as_str).unwrap_or("default");
    let pc = fake
        .get("hetzner.m.crossplane.io", "providerconfigs", ns, name)
        .ok_or_else(|| format!("cannot get ProviderConfig {ns}/{name}: not found"))?;
    let (sns, sname, key) = (
        s(&pc, "/spec/credentials/secretRef/namespace"),
        s(&pc, "/spec/credentials/secretRef/name"),
        s(&pc, "/spec/credentials/secretRef/key"),
    );
    let secret = fake
        .get("", "secrets", sns, sname)
        .ok_or_else(|| format!("cannot get credentials secret {sns}/{sname}: not found"))?;
    if let Some(v) = secret.pointer(&format!("/data/{key}")).and_then(Value::as_str) {
        let bytes = base64::engine::general_purpose::STANDARD
            .decode(v)
            .map_err(|e| format!("credentials secret {sns}/{sname}: {e}"))?;
        return String::from_utf8(bytes).map_err(|e| e.to_string());
    }
    secret
        .pointer(&format!("/stringData/{key}"))
        .and_then(Value::as_str)
        .map(str::to_owned)
        .ok_or_else(|| format!("credentials secret {sns}/{sname} has no key {key}"))
}

/// What the API answered for `GET /v1/<coll>/<id>`: the object, none
/// (404), or the error.
async fn get(
    http: &reqwest::Client,
    base: &str,
    token: &str,
    coll: &str,
    id: &str,
) -> Result<Option<Value>, String> {
    let url = format!("{}/v1/{coll}/{id}", base.trim_end_matches('/'));
    let r = http.get(&url).bearer_auth(token).send().await.map_err(|e| e.to_string())?;
    let code = r.status().as_u16();
    let body: Value = r.json().await.unwrap_or(Value::Null);
    match code {
        200 => Ok(body.get(coll.trim_end_matches('s')).cloned()),
        404 => Ok(None),
        _ => Err(format!("hcloud: {code} {}", body["error"]["message"].as_str().unwrap_or(""))),
    }
}

/// The collection and id holding a resource's object, and whether the
/// object is the resource's own (not a part of its parent).
fn home(tf: &str, external: &str) -> (&'static str, String, bool) {
    let head = |sep: &str| external.split(sep).next().unwrap_or_default().to_owned();
    match tf {
        "hcloud_server" => ("servers", external.to_owned(), true),
        "hcloud_network" => ("networks", external.to_owned(), true),
        "hcloud_network_subnet" => ("networks", head("-"), false),
        "hcloud_firewall" => ("firewalls", external.to_owned(), true),
        "hcloud_ssh_key" => ("ssh_keys", external.to_owned(), true),
        "hcloud_placement_group" => ("placement_groups", external.to_owned(), true),
        "hcloud_load_balancer" => ("load_balancers", external.to_owned(), true),
        "hcloud_load_balancer_network" => ("load_balancers", head("-"), false),
        _ => ("load_balancers", head("__"), false),
    }
}

/// The Terraform provider's attributes of a resource, read from its
/// object (`o`), or `None` when the part is not there.
fn attributes(tf: &str, external: &str, o: &Value) -> Option<Value> {
    let id = o["id"].clone();
    let labels = o.get("labels").cloned().unwrap_or(json!({}));
    Some(match tf {
        "hcloud_server" => json!({
            "id": external, "name": o["name"], "labels": labels,
            "server_type": o["server_type"]["name"], "location": o["datacenter"]["location"]["name"],
            "image": o["image"]["name"], "placement_group_id": o["placement_group"]["id"],
            "ipv4_address": o["public_net"]["ipv4"]["ip"], "status": o["status"],
        }),
        "hcloud_network" => json!({
            "id": external, "name": o["name"], "labels": labels, "ip_range": o["ip_range"],
            "delete_protection": o["protection"]["delete"].as_bool().unwrap_or(false),
        }),
        "hcloud_network_subnet" => {
            let range = external.split_once('-').map(|(_, r)| r)?;
            let sn = o["subnets"].as_array()?.iter().find(|s| s["ip_range"] == range)?;
            json!({ "id": external, "network_id": id, "type": sn["type"],
                    "network_zone": sn["network_zone"], "ip_range": sn["ip_range"],
                    "gateway": sn["gateway"] })
        }
        "hcloud_firewall" => {
            let rules: Vec<Value> = o["rules"]
                .as_array()
                .into_iter()
                .flatten()
                .map(|r| {
                    json!({
                        "direction": r["direction"], "protocol": r["protocol"], "port": r["port"],
                        "source_ips": r.get("source_ips").cloned().unwrap_or(json!([])),
                        "destination_ips": r.get("destination_ips").cloned().unwrap_or(json!([])),
                        "description": r.get("description").cloned().unwrap_or(json!("")),
                    })
                })
                .collect();
            json!({ "id": external, "name": o["name"], "labels": labels, "rule": rules })
        }
        "hcloud_ssh_key" => json!({ "id": external, "name": o["name"], "labels": labels,
            "public_key": o["public_key"], "fingerprint": o["fingerprint"] }),
        "hcloud_placement_group" => json!({ "id": external, "name": o["name"],
            "labels": labels, "type": o["type"] }),
        "hcloud_load_balancer" => json!({
            "id": external, "name": o["name"], "labels": labels,
            "load_balancer_type": o["load_balancer_type"]["name"], "location": o["location"]["name"],
            "ipv4": o["public_net"]["ipv4"]["ip"],
        }),
        "hcloud_load_balancer_network" => {
            let net = external.split_once('-').and_then(|(_, n)| n.parse::<i64>().ok())?;
            let pn =
                o["private_net"].as_array()?.iter().find(|p| p["network"].as_i64() == Some(net))?;
            json!({ "id": external, "load_balancer_id": id, "network_id": pn["network"],
                    "ip": pn["ip"], "enable_public_interface": o["public_net"]["enabled"] })
        }
        "hcloud_load_balancer_service" => {
            let port = external.split_once("__").and_then(|(_, p)| p.parse::<i64>().ok())?;
            let sv = o["services"]
                .as_array()?
                .iter()
                .find(|s| s["listen_port"].as_i64() == Some(port))?;
            json!({ "id": external, "load_balancer_id": id.to_string(), "protocol": sv["protocol"],
                    "listen_port": sv["listen_port"], "destination_port": sv["destination_port"],
                    "proxyprotocol": sv["proxyprotocol"].as_bool().unwrap_or(false) })
        }
        "hcloud_load_balancer_target" => {
            let t = o["targets"].as_array()?.iter().find(|t| {
                let attrs = target_attrs(&id, t);
                external_name(tf, &attrs) == external
            })?;
            target_attrs(&id, t)
        }
        _ => return None,
    })
}

fn target_attrs(lb: &Value, t: &Value) -> Value {
    json!({
        "load_balancer_id": lb, "type": t["type"],
        "label_selector": t["label_selector"]["selector"], "server_id": t["server"]["id"],
        "ip": t["ip"]["ip"], "use_private_ip": t["use_private_ip"].as_bool().unwrap_or(false),
    })
}

fn conditions(synced: Result<(), String>, ready: bool) -> Value {
    let now = chrono::Utc::now().format("%Y-%m-%dT%H:%M:%SZ").to_string();
    let (st, reason, msg) = match synced {
        Ok(()) => ("True", "ReconcileSuccess", String::new()),
        Err(m) => ("False", "ReconcileError", m),
    };
    json!([
        {"type": "Synced", "status": st, "reason": reason, "message": msg, "lastTransitionTime": now},
        {"type": "Ready", "status": if ready { "True" } else { "False" },
         "reason": if ready { "Available" } else { "Unavailable" }, "lastTransitionTime": now},
    ])
}

async fn reconcile(
    fake: &FakeKube,
    http: &reqwest::Client,
    base: &str,
    group: &str,
    plural: &str,
    mut mr: Value,
) {
    let (ns, name) =
        (s(&mr, "/metadata/namespace").to_owned(), s(&mr, "/metadata/name").to_owned());
    let deleting = mr.pointer("/metadata/deletionTimestamp").is_some();
    let has_finalizer = mr
        .pointer("/metadata/finalizers")
        .and_then(Value::as_array)
        .is_some_and(|f| f.iter().any(|x| x == FINALIZER));
    if !deleting && !has_finalizer {
        let mut fs = mr.pointer("/metadata/finalizers").cloned().unwrap_or(json!([]));
        fs.as_array_mut().expect("finalizers are a list").push(json!(FINALIZER));
        mr["metadata"]["finalizers"] = fs;
        fake.put(group, plural, mr.clone());
    }
    let Some(tf) = tf_type(s(&mr, "/apiVersion"), s(&mr, "/kind")) else { return };
    let external = s(&mr, "/metadata/annotations/crossplane.io~1external-name").to_owned();
    let (coll, id, own) = home(tf, &external);
    let url = format!("{}/v1/{coll}/{id}", base.trim_end_matches('/'));
    let token = token_of(fake, &mr);
    let observed: Result<Option<Value>, String> = async {
        if external.is_empty() {
            return Err("no external name, and creating is not simulated".to_owned());
        }
        let obj = get(http, base, token.as_ref().map_err(Clone::clone)?, coll, &id).await?;
        Ok(obj.and_then(|o| attributes(tf, &external, &o)))
    }
    .await;
    if deleting {
        if allows(&mr, "Delete")
            && own
            && matches!(observed, Ok(Some(_)))
            && let Ok(token) = &token
        {
            let _ = http.delete(&url).bearer_auth(token).send().await;
        }
        if let Some(fs) = mr.pointer_mut("/metadata/finalizers").and_then(Value::as_array_mut) {
            fs.retain(|f| f != FINALIZER);
        }
        fake.put(group, plural, mr);
        return;
    }
    let status = match observed {
        Err(e) => json!({"conditions": conditions(Err(e), false)}),
        Ok(None) => json!({"conditions": conditions(
            Err(format!("cannot observe external resource: {tf} {external} not found")), false)}),
        Ok(Some(attrs)) => {
            let at = camel(&attrs);
            // The same rules as the sim cluster's provider: what Update may
            // write (name, labels of the resource's own object), and what
            // it may not.
            let synced = match pending_update(&mr, &at).filter(|_| own) {
                Some((name, labels)) => {
                    let mut body = json!({});
                    if let Some(n) = name {
                        body["name"] = json!(n);
                    }
                    if let Some(l) = labels {
                        body["labels"] = Value::Object(l);
                    }
                    let write = async {
                        let token = token.as_ref().map_err(Clone::clone)?;
                        let r = http.put(&url).bearer_auth(token).json(&body).send().await;
                        match r.map(|r| r.status().as_u16()) {
                            Ok(200) => Ok(()),
                            Ok(c) => Err(format!("cannot update: hcloud answered {c}")),
                            Err(e) => Err(e.to_string()),
                        }
                    };
                    write.await
                }
                None => {
                    let others = if allows(&mr, "Update") {
                        unsupported_differences(&mr, &at)
                    } else {
                        Vec::new()
                    };
                    if others.is_empty() {
                        Ok(())
                    } else {
                        Err(format!(
                            "fake provider: cannot update {} (the fake API changes names and labels only)",
                            others.join(", ")
                        ))
                    }
                }
            };
            json!({"atProvider": at, "conditions": conditions(synced, true)})
        }
    };
    fake.set_status(group, plural, &ns, &name, status);
}
