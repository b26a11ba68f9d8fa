//! External Secrets' rules, as both fakes run them (the sim's Kubernetes
//! against the sim OpenBao, the wire fake against a real one): what a
//! `ClusterSecretStore`'s vault provider says, when an `ExternalSecret` is
//! due a sync, and the Secret a sync writes.
//!
//! - **A store** (external-secrets.io/v1, provider `vault`, `version: v2`,
//!   `auth.kubernetes`) is Ready once ESO has logged in with its service
//!   account's token; else `Ready=False`, `InvalidProviderConfig`, with
//!   OpenBao's refusal.
//! - **An ExternalSecret** syncs when it never has, when its spec or
//!   annotations changed (the `force-sync` annotation is how a resync is
//!   asked for), or when `refreshInterval` has passed: each `data[]`
//!   entry's `remoteRef.key`/`property` read from `<path>/data/<key>`. The
//!   target Secret is owned by the ExternalSecret and carries
//!   `target.template.metadata` labels; status `Ready=True` `SecretSynced`,
//!   `refreshTime`, `syncedResourceVersion`. A failure is `Ready=False`
//!   `SecretSyncedError` and leaves the Secret as it was.

use chrono::{DateTime, Utc};
use serde_json::{Map, Value, json};

/// The `vault` provider of a store, as ESO reads it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Vault {
    pub server: String,
    pub path: String,
    pub mount: String,
    pub role: String,
    pub service_account: String,
    pub namespace: String,
}

/// A store's provider, or why ESO rejects it.
pub fn vault_of(store: &Value) -> Result<Vault, String> {
    let v = store
        .pointer("/spec/provider/vault")
        .ok_or("spec.provider.vault is not set (only the vault provider is simulated)")?;
    let s = |p: &str| v.pointer(p).and_then(Value::as_str).map(str::to_owned);
    if s("/version").as_deref().is_some_and(|x| x != "v2") {
        return Err("only KV version v2 is simulated".into());
    }
    let k = "/auth/kubernetes";
    Ok(Vault {
        server: s("/server").ok_or("spec.provider.vault.server is required")?,
        path: s("/path").unwrap_or_else(|| "secret".into()),
        mount: s(&format!("{k}/mountPath")).unwrap_or_else(|| "kubernetes".into()),
        role: s(&format!("{k}/role")).ok_or("auth.kubernetes.role is required")?,
        service_account: s(&format!("{k}/serviceAccountRef/name"))
            .ok_or("auth.kubernetes.serviceAccountRef.name is required")?,
        namespace: s(&format!("{k}/serviceAccountRef/namespace"))
            .ok_or("a ClusterSecretStore's serviceAccountRef needs a namespace")?,
    })
}

/// The namespace of an in-cluster Service URL
/// (`http://<svc>.<ns>.svc[.cluster.local]:<port>`).
pub fn service_namespace(server: &str) -> Option<String> {
    let host = server.split_once("://").map_or(server, |(_, r)| r);
    let host = host.split(['/', ':']).next()?;
    let mut labels = host.split('.');
    let (_svc, ns, svc_marker) = (labels.next()?, labels.next()?, labels.next()?);
    (svc_marker == "svc").then(|| ns.to_owned())
}

/// What an ExternalSecret's next sync is keyed on: ESO re-syncs when this
/// changes (spec generation, labels and annotations).
pub fn resource_version(es: &Value) -> String {
    let g = es.pointer("/metadata/generation").and_then(Value::as_u64).unwrap_or(1);
    let ann = es.pointer("/metadata/annotations").cloned().unwrap_or(json!({}));
    let lbl = es.pointer("/metadata/labels").cloned().unwrap_or(json!({}));
    let h = <sha2::Sha256 as sha2::Digest>::digest(format!("{ann}{lbl}").as_bytes());
    format!("{g}-{}", &hex::encode(h)[..16])
}

/// `refreshInterval` in seconds (`1h`, `15m`, `30s`; `0`: never).
pub fn refresh_secs(es: &Value) -> Option<u64> {
    let text = es.pointer("/spec/refreshInterval").and_then(Value::as_str).unwrap_or("1h");
    let (num, unit) = text.split_at(text.find(|c: char| !c.is_ascii_digit()).unwrap_or(text.len()));
    let n: u64 = num.parse().ok()?;
    let secs = match unit {
        "h" => n * 3600,
        "m" => n * 60,
        "s" | "" => n,
        _ => return None,
    };
    (secs > 0).then_some(secs)
}

/// Whether `es` is due a sync at `now`.
pub fn due(es: &Value, now: DateTime<Utc>) -> bool {
    let last = es
        .pointer("/status/refreshTime")
        .and_then(Value::as_str)
        .and_then(|t| DateTime::parse_from_rfc3339(t).ok())
        .map(|t| t.with_timezone(&Utc));
    es.pointer("/status/syncedResourceVersion").and_then(Value::as_str)
        != Some(resource_version(es).as_str())
        || match (last, refresh_secs(es)) {
            (None, _) => true,
            (Some(t), Some(every)) => (now - t).num_seconds() >= every as i64,
            (Some(_), None) => false,
        }
}

/// The (`secretKey`, `remoteRef.key`, `remoteRef.property`) of each
/// `data[]` entry.
pub fn entries(es: &Value) -> Vec<(String, String, Option<String>)> {
    es.pointer("/spec/data")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .map(|d| {
            let key = d.pointer("/remoteRef/key").and_then(Value::as_str).unwrap_or("").to_owned();
            let prop = d.pointer("/remoteRef/property").and_then(Value::as_str).map(str::to_owned);
            let sk = d["secretKey"].as_str().map_or_else(|| key.clone(), str::to_owned);
            (sk, key, prop)
        })
        .collect()
}

/// The Secret a sync of `es` writes, with `data` (base64 values).
pub fn target_secret(es: &Value, data: Map<String, Value>) -> Value {
    let name = es.pointer("/metadata/name").cloned().unwrap_or(Value::Null);
    let ns = es.pointer("/metadata/namespace").and_then(Value::as_str).unwrap_or("default");
    let target = es.pointer("/spec/target/name").cloned().unwrap_or_else(|| name.clone());
    let mut labels =
        es.pointer("/spec/target/template/metadata/labels").cloned().unwrap_or(json!({}));
    labels["reconcile.external-secrets.io/created-by"] = name.clone();
    json!({
        "apiVersion": "v1", "kind": "Secret",
        "metadata": {
            "name": target, "namespace": ns, "labels": labels,
            "ownerReferences": [{
                "apiVersion": "external-secrets.io/v1", "kind": "ExternalSecret", "name": name,
                "uid": es.pointer("/metadata/uid").cloned().unwrap_or(Value::Null),
                "controller": true, "blockOwnerDeletion": true,
            }],
        },
        "type": "Opaque",
        "data": data,
    })
}

/// The value OpenBao holds for `property` of a KV v2 read's `data.data`
/// (a whole-secret reference without a property: its JSON).
pub fn value_of(data: &Value, property: Option<&str>, key: &str) -> Result<String, String> {
    let v = match property {
        Some(p) => {
            data.get(p).cloned().ok_or_else(|| format!("key {p} does not exist in secret {key}"))?
        }
        None => data.clone(),
    };
    Ok(match v {
        Value::String(s) => s,
        other => other.to_string(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn services_intervals_and_due() {
        assert_eq!(
            service_namespace("http://openbao.openbao.svc.cluster.local:8200").as_deref(),
            Some("openbao")
        );
        assert_eq!(service_namespace("https://vault.acme.org"), None);
        assert_eq!(refresh_secs(&json!({"spec": {"refreshInterval": "1h"}})), Some(3600));
        assert_eq!(refresh_secs(&json!({"spec": {"refreshInterval": "0"}})), None);
        let now = Utc::now();
        let mut es = json!({"metadata": {"generation": 1}, "spec": {"refreshInterval": "1h"}});
        assert!(due(&es, now), "never synced");
        es["status"] = json!({"refreshTime": now.to_rfc3339(), "syncedResourceVersion": resource_version(&es)});
        assert!(!due(&es, now));
        es["metadata"]["annotations"] = json!({"force-sync": "1"});
        assert!(due(&es, now), "a force-sync annotation asks for a resync");
    }
}
