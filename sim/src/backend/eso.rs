//! External Secrets as the sim's Kubernetes runs it, against the sim's
//! OpenBao (its state read directly): logging in and reading, as pure
//! functions ([`crate::eso`] has the rules both fakes share).
//! [`SimKube`](super::kube::SimKube) runs it lazily before a read of a
//! store, an ExternalSecret or a Secret, like its other controllers.
//!
//! - **A store** (`ClusterSecretStore`, external-secrets.io/v1, provider
//!   `vault` with `auth.kubernetes`) is Ready once ESO can log in: the
//!   OpenBao behind `server` (an in-cluster Service URL) has an unsealed
//!   replica, Kubernetes auth enabled at `mountPath` and configured with a
//!   host, and the role, bound to the `serviceAccountRef`. Otherwise
//!   `Ready=False`, `InvalidProviderConfig`, with OpenBao's refusal.
//! - **An ExternalSecret** syncs when it has never synced, when its spec
//!   or annotations changed (`force-sync`), or when `refreshInterval` has
//!   passed: each `data[]` entry's `remoteRef.key`/`property` is read from
//!   `<path>/data/<key>` (KV v2), allowed only when one of the role's
//!   policies grants `read` on a matching path. The target Secret (owned
//!   by the ExternalSecret) gets the values; status `Ready=True`
//!   `SecretSynced`, `refreshTime`, `syncedResourceVersion`. A failure is
//!   `Ready=False` `SecretSyncedError` and leaves the Secret as it was.

use serde_json::Value;

pub use crate::eso::{Vault, refresh_secs, resource_version, service_namespace, vault_of};

/// A store ESO logged in to: its provider, the OpenBao behind it (its sim
/// state) and the token's policies.
#[derive(Clone, Debug)]
pub struct Session {
    pub vault: Vault,
    pub bao: Value,
    pub policies: Vec<String>,
}

fn stored(cluster: &Value, path: &str) -> Option<Value> {
    cluster.pointer("/kv").and_then(|kv| kv.get(path)).map(|e| e["value"].clone())
}

/// Logs in as ESO would; the role's policies, or OpenBao's refusal.
pub fn login(
    cluster: Option<&Value>,
    any_unsealed: bool,
    v: &Vault,
) -> Result<Vec<String>, String> {
    let Some(c) = cluster.filter(|c| c["initialized"] == true) else {
        return Err("Error making API request: Code: 501. Errors: Vault is not initialized".into());
    };
    if !any_unsealed {
        return Err("Error making API request: Code: 503. Errors: Vault is sealed".into());
    }
    let method = stored(c, &format!("sys/auth/{}", v.mount));
    if method.as_ref().and_then(|m| m["type"].as_str()) != Some("kubernetes") {
        return Err(format!("Code: 400. Errors: no handler for route \"auth/{}/login\"", v.mount));
    }
    let config = stored(c, &format!("auth/{}/config", v.mount)).unwrap_or(Value::Null);
    if config["kubernetes_host"].as_str().is_none_or(str::is_empty) {
        return Err("Code: 500. Errors: could not load backend configuration".into());
    }
    let role = stored(c, &format!("auth/{}/role/{}", v.mount, v.role))
        .ok_or_else(|| format!("Code: 400. Errors: invalid role name \"{}\"", v.role))?;
    let bound = |k: &str, want: &str| {
        role[k]
            .as_array()
            .is_some_and(|a| a.iter().any(|x| x.as_str() == Some(want) || x.as_str() == Some("*")))
    };
    if !bound("bound_service_account_names", &v.service_account) {
        return Err(format!(
            "Code: 403. Errors: service account name not authorized ({})",
            v.service_account
        ));
    }
    if !bound("bound_service_account_namespaces", &v.namespace) {
        return Err(format!("Code: 403. Errors: namespace not authorized ({})", v.namespace));
    }
    let policies = role.get("token_policies").or_else(|| role.get("policies"));
    Ok(policies
        .and_then(Value::as_array)
        .map(|a| a.iter().filter_map(Value::as_str).map(str::to_owned).collect())
        .unwrap_or_default())
}

/// Whether policy text grants `read` on `path` (`path "<glob>" {
/// capabilities = [...] }` blocks; `*` at the end matches any suffix).
pub fn grants_read(policy: &str, path: &str) -> bool {
    let mut rest = policy;
    while let Some(at) = rest.find("path \"") {
        let after = &rest[at + 6..];
        let Some(end) = after.find('"') else { return false };
        let glob = &after[..end];
        let block_end = after.find('}').unwrap_or(after.len());
        let block = &after[end..block_end];
        let matches = match glob.strip_suffix('*') {
            Some(prefix) => path.starts_with(prefix),
            None => path == glob,
        };
        if matches && block.contains("\"read\"") && !block.contains("\"deny\"") {
            return true;
        }
        rest = &after[block_end..];
    }
    false
}

/// Reads `key`/`property` as the token of `policies` would.
pub fn read(
    cluster: &Value,
    v: &Vault,
    policies: &[String],
    key: &str,
    property: Option<&str>,
) -> Result<String, String> {
    let path = format!("{}/data/{}", v.path, key.trim_start_matches('/'));
    let allowed = policies.iter().any(|p| {
        stored(cluster, &format!("sys/policy/{p}"))
            .and_then(|v| v["policy"].as_str().map(str::to_owned))
            .is_some_and(|text| grants_read(&text, &path))
    });
    if !allowed {
        return Err(format!("Code: 403. Errors: 1 error occurred: permission denied ({path})"));
    }
    let data = stored(cluster, &path).ok_or_else(|| format!("Secret does not exist: {key}"))?;
    let value = match property {
        Some(p) => {
            data.get(p).cloned().ok_or_else(|| format!("key {p} does not exist in secret {key}"))?
        }
        None => data,
    };
    Ok(match value {
        Value::String(s) => s,
        other => other.to_string(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn policies_grant_read_by_path() {
        let p = "path \"secret/data/*\" {\n  capabilities = [\"read\"]\n}\npath \"sys/*\" { capabilities = [\"deny\"] }";
        assert!(grants_read(p, "secret/data/app/x"));
        assert!(!grants_read(p, "secret/metadata/app"));
        assert!(!grants_read(p, "sys/mounts"));
    }
}
