//! `SimBao`: a fake OpenBao (Shamir seal, root token, a path → value KV).
//!
//! Endpoints `http(s)://openbao-<i>.<rest>` are replicas of the cluster
//! `<rest>`: init state (key and root token hashes, KV) is shared, the seal
//! state and unseal progress are per replica. Any other endpoint is its own
//! one-replica cluster. Only sha256 hashes of keys and tokens are stored.

use std::collections::BTreeSet;
use std::sync::Arc;

use async_trait::async_trait;
use cz_state::SecretString;
use serde_json::{Value, json};
use sha2::{Digest, Sha256};

use super::world::SimWorld;
use cz_adapters::{AdapterResult, BaoApi, BaoInit, BaoStatus};
use cz_engine::{Cause, StepError, System};

const SYS: &str = "bao";

fn err(op: &str, cause: Cause, msg: impl Into<String>) -> StepError {
    StepError::adapter(System::Openbao, op, cause, msg)
}

fn hash(s: &str) -> String {
    hex::encode(Sha256::digest(s.as_bytes()))
}

/// (cluster key, replica key) of an endpoint.
pub fn split_endpoint(endpoint: &str) -> (String, String) {
    let e = endpoint.trim().trim_end_matches('/');
    let rest = e.split_once("://").map_or(e, |(_, r)| r);
    if let Some((idx, tail)) = rest.strip_prefix("openbao-").and_then(|r| r.split_once('.'))
        && !idx.is_empty()
        && idx.bytes().all(|b| b.is_ascii_digit())
        && !tail.is_empty()
    {
        return (tail.to_owned(), e.to_owned());
    }
    (e.to_owned(), e.to_owned())
}

/// The fake OpenBao.
#[derive(Clone, Debug)]
pub struct SimBao {
    world: Arc<SimWorld>,
}

impl SimBao {
    pub fn new(world: Arc<SimWorld>) -> SimBao {
        SimBao { world }
    }

    async fn cluster_state(&self, cluster: &str) -> Result<Value, StepError> {
        Ok(self
            .world
            .get(SYS, "clusters", cluster)
            .await?
            .unwrap_or_else(|| json!({"initialized": false})))
    }

    async fn replica_state(&self, replica: &str) -> Result<Value, StepError> {
        Ok(self
            .world
            .get(SYS, "replicas", replica)
            .await?
            .unwrap_or_else(|| json!({"sealed": true, "progress": []})))
    }

    async fn status_of(&self, cluster: &str, replica: &str) -> Result<BaoStatus, StepError> {
        let c = self.cluster_state(cluster).await?;
        let r = self.replica_state(replica).await?;
        Ok(BaoStatus { initialized: c["initialized"] == true, sealed: r["sealed"] != false })
    }

    /// Checks the replica is unsealed and the token valid; returns the
    /// cluster state.
    async fn authorized(
        &self,
        endpoint: &str,
        token: &SecretString,
        op: &str,
    ) -> Result<(String, Value), StepError> {
        let (cluster, replica) = split_endpoint(endpoint);
        let c = self.cluster_state(&cluster).await?;
        if c["initialized"] != true {
            return Err(err(op, Cause::Unavailable, "Vault is not initialized (503)"));
        }
        if self.replica_state(&replica).await?["sealed"] != false {
            return Err(err(op, Cause::Unavailable, "Vault is sealed (503)"));
        }
        let h = hash(token.expose());
        let valid = c["root_token_hash"].as_str() == Some(h.as_str())
            || c["token_hashes"]
                .as_array()
                .is_some_and(|a| a.iter().any(|t| t.as_str() == Some(h.as_str())));
        if !valid {
            return Err(err(op, Cause::Unauthorized, "permission denied (403)"));
        }
        Ok((cluster, c))
    }
}

fn normalize_path(path: &str) -> String {
    path.trim().trim_start_matches("/v1/").trim_matches('/').to_owned()
}

#[async_trait]
impl BaoApi for SimBao {
    async fn wipe(&self, endpoint: &str) -> AdapterResult<()> {
        self.world.op("bao.wipe", 2_000).await?;
        let (cluster, _) = split_endpoint(endpoint);
        let _guard = self.world.lock(SYS, "clusters").await;
        self.world.delete(SYS, "clusters", &cluster).await?;
        // Every replica's storage goes with it (the PVCs of each pod).
        let scheme = endpoint.split_once("://").map_or("", |(s, _)| s);
        for i in 0..16 {
            let ep = if scheme.is_empty() {
                format!("openbao-{i}.{cluster}")
            } else {
                format!("{scheme}://openbao-{i}.{cluster}")
            };
            self.world.delete(SYS, "replicas", &split_endpoint(&ep).1).await?;
        }
        Ok(())
    }

    async fn status(&self, endpoint: &str) -> AdapterResult<BaoStatus> {
        self.world.op("bao.status", 100).await?;
        let (cluster, replica) = split_endpoint(endpoint);
        self.status_of(&cluster, &replica).await
    }

    async fn init(&self, endpoint: &str, shares: u8, threshold: u8) -> AdapterResult<BaoInit> {
        self.world.op("bao.init", 3_000).await?;
        if shares == 0 || threshold == 0 || threshold > shares {
            return Err(err(
                "init",
                Cause::Invalid,
                format!("invalid seal configuration: {threshold} of {shares} shares"),
            ));
        }
        if threshold == 1 && shares > 1 {
            return Err(err(
                "init",
                Cause::Invalid,
                "threshold must be greater than one for multiple shares",
            ));
        }
        let (cluster, _) = split_endpoint(endpoint);
        let _g = self.world.lock(SYS, &format!("cluster:{cluster}")).await;
        if self.cluster_state(&cluster).await?["initialized"] == true {
            return Err(err("init", Cause::Conflict, "OpenBao is already initialized"));
        }
        let keys: Vec<String> =
            (0..shares).map(|_| hex::encode(self.world.random_bytes(32))).collect();
        let root = format!("s.{}", self.world.random_alnum(24));
        let state = json!({
            "initialized": true,
            "shares": shares,
            "threshold": threshold,
            "key_hashes": keys.iter().map(|k| hash(k)).collect::<Vec<_>>(),
            "root_token_hash": hash(&root),
            "token_hashes": [],
            "kv": {},
            "initialized_at": chrono::Utc::now().to_rfc3339(),
        });
        self.world.put(SYS, "clusters", &cluster, &state).await?;
        Ok(BaoInit {
            keys: keys.into_iter().map(SecretString::new).collect(),
            root_token: SecretString::new(root),
        })
    }

    async fn unseal(&self, endpoint: &str, key: &SecretString) -> AdapterResult<BaoStatus> {
        self.world.op("bao.unseal", 200).await?;
        let (cluster, replica) = split_endpoint(endpoint);
        let _g = self.world.lock(SYS, &format!("replica:{replica}")).await;
        let c = self.cluster_state(&cluster).await?;
        if c["initialized"] != true {
            return Err(err("unseal", Cause::Invalid, "Vault is not initialized"));
        }
        let mut r = self.replica_state(&replica).await?;
        if r["sealed"] == false {
            return Ok(BaoStatus { initialized: true, sealed: false });
        }
        let h = hash(key.expose().trim());
        if !c["key_hashes"]
            .as_array()
            .is_some_and(|a| a.iter().any(|k| k.as_str() == Some(h.as_str())))
        {
            return Err(err("unseal", Cause::Invalid, "invalid key"));
        }
        let mut progress: BTreeSet<String> = r["progress"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|v| v.as_str().map(str::to_owned))
            .collect();
        progress.insert(h);
        let threshold = c["threshold"].as_u64().unwrap_or(1) as usize;
        if progress.len() >= threshold {
            r = json!({"sealed": false, "progress": []});
        } else {
            r = json!({"sealed": true, "progress": progress});
        }
        self.world.put(SYS, "replicas", &replica, &r).await?;
        Ok(BaoStatus { initialized: true, sealed: r["sealed"] != false })
    }

    async fn write(
        &self,
        endpoint: &str,
        token: &SecretString,
        path: &str,
        body: Value,
    ) -> AdapterResult<Value> {
        self.world.op("bao.write", 100).await?;
        let (cluster, _) = split_endpoint(endpoint);
        let _g = self.world.lock(SYS, &format!("cluster:{cluster}")).await;
        let (cluster, mut c) = self.authorized(endpoint, token, "write").await?;
        let path = normalize_path(path);
        if path.is_empty() {
            return Err(err("write", Cause::Invalid, "missing path"));
        }
        let reply = if path == "auth/token/create" {
            let t = format!("s.{}", self.world.random_alnum(24));
            if let Some(a) = c["token_hashes"].as_array_mut() {
                a.push(json!(hash(&t)));
            } else {
                c["token_hashes"] = json!([hash(&t)]);
            }
            json!({"auth": {"client_token": t, "policies": body.get("policies").cloned().unwrap_or(json!(["default"]))}})
        } else {
            let version = c["kv"][&path]["_sim_version"].as_u64().unwrap_or(0) + 1;
            c["kv"][&path] = json!({"value": body, "_sim_version": version});
            if path.contains("/data/") { json!({"data": {"version": version}}) } else { json!({}) }
        };
        self.world.put(SYS, "clusters", &cluster, &c).await?;
        Ok(reply)
    }

    async fn read(
        &self,
        endpoint: &str,
        token: &SecretString,
        path: &str,
    ) -> AdapterResult<Option<Value>> {
        self.world.op("bao.read", 100).await?;
        let (_, c) = self.authorized(endpoint, token, "read").await?;
        Ok(c["kv"].get(normalize_path(path)).map(|e| e["value"].clone()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backend::world::SimConfig;

    fn setup() -> (tempfile::TempDir, SimBao) {
        let dir = tempfile::tempdir().unwrap();
        let world = Arc::new(SimWorld::new(
            dir.path(),
            SimConfig { seed: Some(1), ..SimConfig::instant() },
        ));
        (dir, SimBao::new(world))
    }

    const EP0: &str = "http://openbao-0.openbao-internal.openbao.svc:8200";
    const EP1: &str = "http://openbao-1.openbao-internal.openbao.svc:8200";

    #[test]
    fn endpoints_group_replicas() {
        assert_eq!(split_endpoint(EP0).0, "openbao-internal.openbao.svc:8200");
        assert_eq!(split_endpoint(EP0).0, split_endpoint(EP1).0);
        assert_ne!(split_endpoint(EP0).1, split_endpoint(EP1).1);
        assert_eq!(split_endpoint("http://openbao.x:8200/").0, "http://openbao.x:8200");
        assert_eq!(split_endpoint("http://openbao-a.x").0, "http://openbao-a.x");
    }

    #[tokio::test]
    async fn init_once_per_cluster() {
        let (_d, bao) = setup();
        assert_eq!(bao.status(EP0).await.unwrap(), BaoStatus { initialized: false, sealed: true });
        assert!(matches!(
            bao.init(EP0, 5, 1).await,
            Err(StepError::Adapter { cause: Cause::Invalid, .. })
        ));
        assert!(matches!(
            bao.init(EP0, 3, 4).await,
            Err(StepError::Adapter { cause: Cause::Invalid, .. })
        ));
        let init = bao.init(EP0, 5, 3).await.unwrap();
        assert_eq!(init.keys.len(), 5);
        assert!(init.keys.iter().all(|k| k.expose().len() == 64));
        assert!(init.root_token.expose().starts_with("s."));
        let e = bao.init(EP0, 5, 3).await.unwrap_err();
        assert!(matches!(
            e,
            StepError::Adapter { system: System::Openbao, cause: Cause::Conflict, .. }
        ));
        // Another replica of the same cluster is initialized too.
        assert!(matches!(
            bao.init(EP1, 5, 3).await,
            Err(StepError::Adapter { cause: Cause::Conflict, .. })
        ));
        assert_eq!(bao.status(EP1).await.unwrap(), BaoStatus { initialized: true, sealed: true });
        // The world holds only hashes.
        let raw = std::fs::read_to_string(_d.path().join("bao/clusters").join(format!(
            "{}.json",
            crate::backend::world::sanitize_key("openbao-internal.openbao.svc:8200")
        )))
        .unwrap();
        assert!(!raw.contains(init.keys[0].expose()) && !raw.contains(init.root_token.expose()));
    }

    #[tokio::test]
    async fn unseal_threshold_per_replica_and_kv() {
        let (_d, bao) = setup();
        let init = bao.init(EP0, 5, 3).await.unwrap();
        let tok = &init.root_token;
        assert!(
            matches!(
                bao.write(EP0, tok, "sys/mounts/secret", json!({})).await,
                Err(StepError::Adapter { cause: Cause::Unavailable, .. })
            ),
            "sealed"
        );
        let e = bao.unseal(EP0, &SecretString::new("00".repeat(32))).await.unwrap_err();
        assert!(
            matches!(&e, StepError::Adapter { cause: Cause::Invalid, message, .. } if message == "invalid key")
        );
        assert!(bao.unseal(EP0, &init.keys[0]).await.unwrap().sealed);
        assert!(
            bao.unseal(EP0, &init.keys[0]).await.unwrap().sealed,
            "the same key twice counts once"
        );
        assert!(bao.unseal(EP0, &init.keys[1]).await.unwrap().sealed);
        assert!(!bao.unseal(EP0, &init.keys[4]).await.unwrap().sealed);
        assert_eq!(bao.status(EP0).await.unwrap(), BaoStatus { initialized: true, sealed: false });
        assert!(bao.status(EP1).await.unwrap().sealed, "seal state is per replica");

        bao.write(EP0, tok, "sys/auth/kubernetes", json!({"type": "kubernetes"})).await.unwrap();
        bao.write(
            EP0,
            tok,
            "auth/kubernetes/role/eso",
            json!({"bound_service_account_names": ["eso"]}),
        )
        .await
        .unwrap();
        let r = bao.write(EP0, tok, "secret/data/app", json!({"data": {"k": "v"}})).await.unwrap();
        assert_eq!(r["data"]["version"], 1);
        assert_eq!(
            bao.read(EP0, tok, "secret/data/app").await.unwrap(),
            Some(json!({"data": {"k": "v"}}))
        );
        assert_eq!(
            bao.read(EP0, tok, "/sys/auth/kubernetes").await.unwrap(),
            Some(json!({"type": "kubernetes"}))
        );
        assert_eq!(bao.read(EP0, tok, "secret/data/none").await.unwrap(), None);
        let e = bao.read(EP0, &SecretString::new("s.wrong"), "secret/data/app").await.unwrap_err();
        assert!(matches!(e, StepError::Adapter { cause: Cause::Unauthorized, .. }));
        // A child token works; the other replica sees the shared KV once unsealed.
        let child =
            bao.write(EP0, tok, "auth/token/create", json!({"policies": ["eso"]})).await.unwrap();
        let child = SecretString::new(child["auth"]["client_token"].as_str().unwrap());
        assert!(bao.read(EP0, &child, "secret/data/app").await.unwrap().is_some());
        for k in &init.keys[2..5] {
            bao.unseal(EP1, k).await.unwrap();
        }
        assert_eq!(
            bao.read(EP1, tok, "secret/data/app").await.unwrap(),
            Some(json!({"data": {"k": "v"}}))
        );
    }
}
