//! The provider half of the offline stand-in module
//! (`cloud-templates/hetzner-offline/`).
//!
//! The hcloud tofu provider cannot be downloaded on machines without the
//! registry (ours among them), so a module made of the built-in
//! `terraform_data` stands in for it: each cloud object is one
//! `terraform_data` whose `local-exec` provisioners run
//! `catalyst-zero hcloud-shim create|delete` with the object's description in
//! [`OBJECT_ENV`]. The real tofu/terraform CLI still plans, applies, locks,
//! writes its state and streams `-json` events; this
//! module makes the API calls the provider would.
//!
//! Semantics chosen for crash safety, like the provider plus our adoption:
//! - `create` first looks the name up. An object of this Sovereign (same
//!   `catalyst.openova.io/sovereign` label) is adopted, not duplicated: that
//!   is what a re-apply after kill -9 between "created" and "state written"
//!   needs. An object of the same name that is someone else's is a
//!   `Conflict`, never adopted.
//! - `delete` of an object that is already gone succeeds.
//! - The token comes from the environment tofu passes down
//!   (`TF_VAR_hcloud_token`), never from a file or an argument.

use std::collections::BTreeMap;

use cz_state::SecretString;
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

use super::hcloud::HcloudClient;
use crate::labels::LABEL_SOVEREIGN;
use crate::{AdapterResult, CloudObject};
use cz_engine::{Cause, StepError, System};

/// The environment variable that carries the object (JSON).
pub const OBJECT_ENV: &str = "CZ_SHIM_OBJECT";

/// One object, as the offline module hands it to the shim.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ShimObject {
    /// The API base URL (`https://api.hetzner.cloud` or a fake's).
    pub endpoint: String,
    pub kind: String,
    pub name: String,
    pub labels: BTreeMap<String, String>,
    /// Kind-specific: `server_type`, `location`, `image`, `network`,
    /// `firewall`, `ssh_key`, `placement_group` (names), `public_key`, …
    #[serde(default)]
    pub attrs: Value,
}

fn attr<'a>(o: &'a ShimObject, k: &str) -> Option<&'a str> {
    o.attrs.get(k).and_then(Value::as_str)
}

/// The id of the object `kind`/`name` that `o` refers to.
async fn id_of(
    client: &HcloudClient,
    token: &SecretString,
    o: &ShimObject,
    field: &str,
    kind: &str,
) -> AdapterResult<Option<i64>> {
    let Some(name) = attr(o, field) else { return Ok(None) };
    match client.find(token, kind, name).await? {
        Some(found) => Ok(Some(found.id)),
        None => Err(StepError::adapter(
            System::Cloud,
            "create",
            Cause::NotFound,
            format!("{} `{}` refers to {kind} `{name}`, which does not exist", o.kind, o.name),
        )),
    }
}

/// The API's create body for `o`.
async fn create_body(
    client: &HcloudClient,
    token: &SecretString,
    o: &ShimObject,
) -> AdapterResult<Value> {
    let mut body = json!({ "name": o.name, "labels": o.labels });
    let set = |body: &mut Value, k: &str, v: Value| {
        body[k] = v;
    };
    match o.kind.as_str() {
        "network" => {
            set(&mut body, "ip_range", json!(attr(o, "ip_range").unwrap_or("10.0.0.0/16")));
            if let (Some(subnet), Some(zone)) = (attr(o, "subnet"), attr(o, "network_zone")) {
                set(
                    &mut body,
                    "subnets",
                    json!([{ "type": "cloud", "ip_range": subnet, "network_zone": zone }]),
                );
            }
        }
        "ssh_key" => set(&mut body, "public_key", json!(attr(o, "public_key").unwrap_or(""))),
        "placement_group" => set(&mut body, "type", json!("spread")),
        "firewall" => set(&mut body, "rules", o.attrs.get("rules").cloned().unwrap_or(json!([]))),
        "server" => {
            for k in ["server_type", "image", "location"] {
                set(&mut body, k, json!(attr(o, k)));
            }
            if let Some(id) = id_of(client, token, o, "network", "network").await? {
                set(&mut body, "networks", json!([id]));
            }
            if let Some(id) = id_of(client, token, o, "firewall", "firewall").await? {
                set(&mut body, "firewalls", json!([{ "firewall": id }]));
            }
            if let Some(id) = id_of(client, token, o, "placement_group", "placement_group").await? {
                set(&mut body, "placement_group", json!(id));
            }
            if let Some(k) = attr(o, "ssh_key") {
                set(&mut body, "ssh_keys", json!([k]));
            }
            if let Some(ud) = attr(o, "user_data") {
                set(&mut body, "user_data", json!(ud));
            }
            set(&mut body, "start_after_create", json!(true));
        }
        "load_balancer" => {
            for k in ["load_balancer_type", "location"] {
                set(&mut body, k, json!(attr(o, k)));
            }
            if let Some(id) = id_of(client, token, o, "network", "network").await? {
                set(&mut body, "network", json!(id));
            }
            set(&mut body, "services", o.attrs.get("services").cloned().unwrap_or(json!([])));
            set(&mut body, "targets", o.attrs.get("targets").cloned().unwrap_or(json!([])));
        }
        other => {
            return Err(StepError::adapter(
                System::Cloud,
                "create",
                Cause::Invalid,
                format!("the offline module does not create `{other}` objects"),
            ));
        }
    }
    Ok(body)
}

fn ours(found: &CloudObject, o: &ShimObject) -> bool {
    let want = o.labels.get(LABEL_SOVEREIGN);
    want.is_some() && found.labels.get(LABEL_SOVEREIGN) == want
}

/// Creates `o`, or adopts this Sovereign's object of that name.
/// Returns the object and whether it was adopted.
pub async fn create(
    client: &HcloudClient,
    token: &SecretString,
    o: &ShimObject,
) -> AdapterResult<(CloudObject, bool)> {
    let taken = |found: &CloudObject| {
        StepError::adapter(
            System::Cloud,
            "create",
            Cause::Conflict,
            format!(
                "uniqueness_error: a {} named `{}` (id {}) exists and is not this Sovereign's",
                o.kind, o.name, found.id
            ),
        )
    };
    if let Some(found) = client.find(token, &o.kind, &o.name).await? {
        return if ours(&found, o) { Ok((found, true)) } else { Err(taken(&found)) };
    }
    let body = create_body(client, token, o).await?;
    match client.create(token, &o.kind, &body).await {
        Ok(created) => Ok((created, false)),
        // Lost a race with another create of the same name: look again.
        Err(e @ StepError::Adapter { cause: Cause::Conflict, .. }) => {
            match client.find(token, &o.kind, &o.name).await? {
                Some(found) if ours(&found, o) => Ok((found, true)),
                Some(found) => Err(taken(&found)),
                None => Err(e),
            }
        }
        Err(e) => Err(e),
    }
}

/// Deletes `o` by name; already gone is success. Returns whether an object
/// was deleted.
pub async fn delete(
    client: &HcloudClient,
    token: &SecretString,
    o: &ShimObject,
) -> AdapterResult<bool> {
    use crate::CloudApi;
    match client.find(token, &o.kind, &o.name).await? {
        None => Ok(false),
        Some(found) if !ours(&found, o) => Err(StepError::adapter(
            System::Cloud,
            "delete",
            Cause::Conflict,
            format!(
                "refusing to delete {} `{}` (id {}): it is not this Sovereign's",
                o.kind, o.name, found.id
            ),
        )),
        Some(found) => {
            client.delete(token, &found).await?;
            Ok(true)
        }
    }
}
