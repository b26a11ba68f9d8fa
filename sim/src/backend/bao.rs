//! `SimBao`: a fake OpenBao (Shamir seal, root and child tokens, KV v2 at
//! `<mount>/data/<path>`, other paths as written), held to the same
//! contract test as the real client against a real `bao server`.
//!
//! Replicas: an endpoint through Kubernetes (`…/pods/openbao-<i>:…`) is
//! replica `i` of the cluster of its kubeconfig's CA; a direct endpoint
//! `http(s)://openbao-<i>.<rest>` is replica `i` of `<rest>`. Init state
//! (key and token hashes, KV) is shared by a cluster, the seal state and
//! unseal progress are per replica. Any other endpoint is its own
//! one-replica cluster. Only sha256 hashes of keys and tokens are stored.

use std::collections::BTreeSet;
use std::sync::Arc;

use async_trait::async_trait;
use cz_state::SecretString;
use serde_json::{Value, json};
use sha2::{Digest, Sha256};

use super::world::SimWorld;
use cz_adapters::openbao::BaoEndpoint;
use cz_adapters::{AdapterResult, BaoApi, BaoInit, BaoInitRequest, BaoLeader, BaoStatus};
use cz_engine::{Cause, StepError, System};

const SYS: &str = "bao";

fn err(op: &str, cause: Cause, msg: impl Into<String>) -> StepError {
    StepError::adapter(System::Openbao, op, cause, msg)
}

fn hash(s: &str) -> String {
    hex::encode(Sha256::digest(s.as_bytes()))
}

/// (cluster key, replica key) of an endpoint.
pub fn split(at: &BaoEndpoint) -> (String, String) {
    if let Some(kc) = &at.via
        && let Some((head, tail)) = at.url.split_once("/pods/")
    {
        let pod = tail.split(':').next().unwrap_or(tail);
        let cluster = format!("{}|{head}", super::kube::cluster_of(kc.expose()));
        return (cluster.clone(), format!("{cluster}|{pod}"));
    }
    split_endpoint(&at.url)
}

/// (cluster key, replica key) of a direct endpoint's URL.
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

    /// (cluster key, replica key) of an endpoint, after any raft join: a
    /// replica that joined another cluster is that cluster's.
    async fn locate(&self, at: &BaoEndpoint) -> Result<(String, String), StepError> {
        let (cluster, replica) = split(at);
        match self.world.get(SYS, "members", &replica).await? {
            Some(joined) => Ok((joined.as_str().unwrap_or(&cluster).to_owned(), replica)),
            None => Ok((cluster, replica)),
        }
    }

    async fn status_of(&self, cluster: &str, replica: &str) -> Result<BaoStatus, StepError> {
        let c = self.cluster_state(cluster).await?;
        let r = self.replica_state(replica).await?;
        Ok(status(&c, &r))
    }

    /// The seal OpenBao's pods are configured with: for a pod reached
    /// through a sim cluster, what bp-openbao's values say (the sim's
    /// Kubernetes holds its HelmRelease); else `shamir`.
    async fn configured_seal(&self, at: &BaoEndpoint) -> Result<&'static str, StepError> {
        let Some(kc) = &at.via else { return Ok("shamir") };
        let cluster = super::kube::cluster_of(kc.expose());
        let key = "helm.toolkit.fluxcd.io/v2/HelmRelease/flux-system/bp-openbao";
        let hr = self.world.get("kube", &cluster, key).await?;
        let config = hr
            .as_ref()
            .and_then(|v| v.pointer("/object/spec/values/server/ha/raft/config"))
            .and_then(Value::as_str)
            .unwrap_or_default();
        Ok(if config.contains("seal \"static\"") { "static" } else { "shamir" })
    }

    /// Checks the replica is unsealed and the token valid; returns the
    /// cluster state.
    async fn authorized(
        &self,
        at: &BaoEndpoint,
        token: &SecretString,
        op: &str,
    ) -> Result<(String, Value), StepError> {
        let (cluster, replica) = self.locate(at).await?;
        let c = self.cluster_state(&cluster).await?;
        if c["initialized"] != true {
            return Err(err(op, Cause::Unavailable, "Vault is not initialized (503)"));
        }
        if status(&c, &self.replica_state(&replica).await?).sealed {
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

fn status(cluster: &Value, replica: &Value) -> BaoStatus {
    let n = |v: &Value| v.as_u64().unwrap_or(0).min(255) as u8;
    let auto = cluster["seal_type"] == "static";
    // An auto-unseal seal unseals every replica of an initialized cluster.
    let sealed = if auto { cluster["initialized"] != true } else { replica["sealed"] != false };
    BaoStatus {
        initialized: cluster["initialized"] == true,
        sealed,
        threshold: n(&cluster["threshold"]),
        shares: n(&cluster["shares"]),
        progress: if sealed {
            replica["progress"].as_array().map_or(0, |a| a.len().min(255) as u8)
        } else {
            0
        },
        seal_type: if auto { "static" } else { "shamir" }.to_owned(),
        cluster_id: if sealed { None } else { cluster["cluster_id"].as_str().map(str::to_owned) },
    }
}

/// Whether `path` is a KV v2 data path (`<mount>/data/<key>`).
fn kv_data(path: &str) -> bool {
    path.split_once("/data/").is_some_and(|(m, k)| !m.is_empty() && !k.is_empty())
}

#[async_trait]
impl BaoApi for SimBao {
    async fn wipe(&self, at: &BaoEndpoint) -> AdapterResult<()> {
        self.world.op("bao.wipe", 2_000).await?;
        let (cluster, _) = split(at);
        let _guard = self.world.lock(SYS, "clusters").await;
        self.world.delete(SYS, "clusters", &cluster).await?;
        // Every replica's storage goes with it (the PVCs of each pod).
        for i in 0..16 {
            let replica = replica_at(at, i);
            self.world.delete(SYS, "replicas", &split(&replica).1).await?;
        }
        Ok(())
    }

    async fn status(&self, at: &BaoEndpoint) -> AdapterResult<BaoStatus> {
        self.world.op("bao.status", 100).await?;
        let (cluster, replica) = self.locate(at).await?;
        let mut st = self.status_of(&cluster, &replica).await?;
        if !st.initialized {
            st.seal_type = self.configured_seal(at).await?.to_owned();
        }
        Ok(st)
    }

    async fn leader(&self, at: &BaoEndpoint) -> AdapterResult<BaoLeader> {
        self.world.op("bao.leader", 100).await?;
        let (cluster, replica) = self.locate(at).await?;
        let st = self.status_of(&cluster, &replica).await?;
        if !st.initialized || st.sealed {
            return Err(err("leader", Cause::Unavailable, "HTTP 503: Vault is sealed"));
        }
        // The active node's advertised address: a name only this sim
        // resolves, back to the cluster.
        let addr = format!("http://openbao-active.{}.sim:8200", &hash(&cluster)[..16]);
        self.world.put(SYS, "leaders", &addr, &json!(cluster)).await?;
        Ok(BaoLeader { is_self: replica.ends_with("openbao-0"), leader_address: addr })
    }

    async fn raft_join(
        &self,
        at: &BaoEndpoint,
        leader_api_addr: &str,
        non_voter: bool,
    ) -> AdapterResult<()> {
        self.world.op("bao.raft_join", 500).await?;
        let Some(target) = self.world.get(SYS, "leaders", leader_api_addr).await? else {
            return Err(err(
                "raft-join",
                Cause::Network,
                format!("failed to join raft cluster: no leader answers at {leader_api_addr}"),
            ));
        };
        let target = target.as_str().unwrap_or_default().to_owned();
        let (cluster, replica) = self.locate(at).await?;
        let _g = self.world.lock(SYS, &format!("replica:{replica}")).await;
        if cluster == target {
            return Ok(()); // joined already
        }
        if self.cluster_state(&cluster).await?["initialized"] == true {
            return Err(err(
                "raft-join",
                Cause::Conflict,
                "raft storage is already initialized as another cluster",
            ));
        }
        self.world.put(SYS, "members", &replica, &json!(target)).await?;
        self.world.put(SYS, "voters", &replica, &json!(!non_voter)).await?;
        self.world.put(SYS, "replicas", &replica, &json!({"sealed": true, "progress": []})).await
    }

    async fn init(&self, at: &BaoEndpoint, req: BaoInitRequest) -> AdapterResult<BaoInit> {
        self.world.op("bao.init", 3_000).await?;
        let (shares, threshold) = (req.shares, req.threshold);
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
        let seal = self.configured_seal(at).await?;
        if req.recovery != (seal == "static") {
            let which = if req.recovery {
                "recovery_shares,recovery_threshold"
            } else {
                "secret_shares,secret_threshold"
            };
            return Err(err(
                "init",
                Cause::Invalid,
                format!("parameters {which} not applicable to seal type {seal}"),
            ));
        }
        let (cluster, _) = self.locate(at).await?;
        let _g = self.world.lock(SYS, &format!("cluster:{cluster}")).await;
        if self.cluster_state(&cluster).await?["initialized"] == true {
            return Err(err("init", Cause::Conflict, "OpenBao is already initialized"));
        }
        let keys: Vec<String> =
            (0..shares).map(|_| hex::encode(self.world.random_bytes(32))).collect();
        let root = format!("s.{}", self.world.random_alnum(24));
        let state = json!({
            "initialized": true,
            "seal_type": if req.recovery { "static" } else { "shamir" },
            "shares": shares,
            "threshold": threshold,
            "key_hashes": keys.iter().map(|k| hash(k)).collect::<Vec<_>>(),
            "root_token_hash": hash(&root),
            "token_hashes": [],
            "kv": {},
            "initialized_at": chrono::Utc::now().to_rfc3339(),
            "cluster_id": format!("sim-{}", self.world.random_alnum(16)),
        });
        self.world.put(SYS, "clusters", &cluster, &state).await?;
        Ok(BaoInit {
            keys: keys.into_iter().map(SecretString::new).collect(),
            root_token: SecretString::new(root),
        })
    }

    async fn unseal(&self, at: &BaoEndpoint, key: &SecretString) -> AdapterResult<BaoStatus> {
        self.world.op("bao.unseal", 200).await?;
        let (cluster, replica) = self.locate(at).await?;
        let _g = self.world.lock(SYS, &format!("replica:{replica}")).await;
        let c = self.cluster_state(&cluster).await?;
        if c["initialized"] != true {
            return Err(err("unseal", Cause::Invalid, "Vault is not initialized"));
        }
        let mut r = self.replica_state(&replica).await?;
        if status(&c, &r).seal_type == "static" {
            return Err(err(
                "unseal",
                Cause::Invalid,
                "cannot unseal with a recovery key: the static seal unseals itself",
            ));
        }
        if r["sealed"] == false {
            return Ok(status(&c, &r));
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
        Ok(status(&c, &r))
    }

    async fn write(
        &self,
        at: &BaoEndpoint,
        token: &SecretString,
        path: &str,
        body: Value,
    ) -> AdapterResult<Value> {
        self.world.op("bao.write", 100).await?;
        let (cluster, _) = self.locate(at).await?;
        let _g = self.world.lock(SYS, &format!("cluster:{cluster}")).await;
        let (cluster, mut c) = self.authorized(at, token, "write").await?;
        let path = normalize_path(path);
        if path.is_empty() {
            return Err(err("write", Cause::Invalid, "missing path"));
        }
        let reply = match path.as_str() {
            "auth/token/create" => {
                let t = format!("s.{}", self.world.random_alnum(24));
                if let Some(a) = c["token_hashes"].as_array_mut() {
                    a.push(json!(hash(&t)));
                } else {
                    c["token_hashes"] = json!([hash(&t)]);
                }
                let policies = body.get("policies").cloned().unwrap_or(json!(["default"]));
                json!({"auth": {"client_token": t, "policies": policies}})
            }
            "auth/token/revoke-self" => {
                let h = hash(token.expose());
                if c["root_token_hash"].as_str() == Some(h.as_str()) {
                    c["root_token_hash"] = Value::Null;
                }
                if let Some(a) = c["token_hashes"].as_array_mut() {
                    a.retain(|t| t.as_str() != Some(h.as_str()));
                }
                Value::Null
            }
            p if kv_data(p) => {
                let version = c["kv"][p]["_sim_version"].as_u64().unwrap_or(0) + 1;
                let data = body.get("data").cloned().unwrap_or(json!({}));
                c["kv"][p] = json!({"value": data, "_sim_version": version});
                json!({"data": {"version": version}})
            }
            p => {
                c["kv"][p] = json!({"value": body});
                Value::Null
            }
        };
        self.world.put(SYS, "clusters", &cluster, &c).await?;
        Ok(reply)
    }

    async fn delete(
        &self,
        at: &BaoEndpoint,
        token: &SecretString,
        path: &str,
    ) -> AdapterResult<()> {
        self.world.op("bao.delete", 100).await?;
        let (cluster, _) = self.locate(at).await?;
        let _g = self.world.lock(SYS, &format!("cluster:{cluster}")).await;
        let (cluster, mut c) = self.authorized(at, token, "delete").await?;
        let path = normalize_path(path);
        // KV v2: deleting the metadata deletes every version.
        let data = path.replacen("/metadata/", "/data/", 1);
        if let Some(kv) = c["kv"].as_object_mut() {
            kv.remove(&path);
            kv.remove(&data);
        }
        self.world.put(SYS, "clusters", &cluster, &c).await?;
        Ok(())
    }

    async fn read(
        &self,
        at: &BaoEndpoint,
        token: &SecretString,
        path: &str,
    ) -> AdapterResult<Option<Value>> {
        self.world.op("bao.read", 100).await?;
        let (_, c) = self.authorized(at, token, "read").await?;
        let path = normalize_path(path);
        if path == "auth/token/lookup-self" {
            return Ok(Some(json!({"data": {"id": "(redacted)"}})));
        }
        let Some(e) = c["kv"].get(&path) else { return Ok(None) };
        if kv_data(&path) {
            let version = e["_sim_version"].clone();
            return Ok(Some(
                json!({"data": {"data": e["value"], "metadata": {"version": version}}}),
            ));
        }
        Ok(Some(e["value"].clone()))
    }
}

/// What a client in the cluster of `kubeconfig` reaches at the in-cluster
/// URL `server` (`http://openbao.<ns>.svc...`): the OpenBao's cluster
/// state, and whether any of its replicas is unsealed.
pub(crate) async fn behind_service(
    world: &SimWorld,
    kubeconfig: &SecretString,
    server: &str,
) -> Result<(Option<Value>, bool), StepError> {
    let Some(ns) = super::eso::service_namespace(server) else { return Ok((None, false)) };
    let at = BaoEndpoint::pod(kubeconfig, &ns, "openbao-0", 8200)?;
    let (cluster, _) = split(&at);
    let Some(c) = world.get(SYS, "clusters", &cluster).await? else { return Ok((None, false)) };
    let mut unsealed = false;
    for i in 0..16 {
        let (_, replica) = split(&replica_at(&at, i));
        let r = world.get(SYS, "replicas", &replica).await?.unwrap_or(json!({"sealed": true}));
        unsealed |= !status(&c, &r).sealed;
    }
    Ok((Some(c), unsealed))
}

/// Seals replica `at`, as a restart of its pod does (tests).
pub async fn restart_replica(world: &SimWorld, at: &BaoEndpoint) -> Result<(), StepError> {
    let (_, replica) = split(at);
    world.put(SYS, "replicas", &replica, &json!({"sealed": true, "progress": []})).await
}

/// Replica `i` of the cluster `at` is in.
fn replica_at(at: &BaoEndpoint, i: usize) -> BaoEndpoint {
    let url = match at.url.split_once("/pods/openbao-") {
        Some((head, tail)) => {
            let rest = tail.trim_start_matches(|c: char| c.is_ascii_digit());
            format!("{head}/pods/openbao-{i}{rest}")
        }
        None => {
            let (cluster, _) = split_endpoint(&at.url);
            match at.url.split_once("://") {
                // Not a replica's name: a one-replica cluster.
                _ if cluster == at.url.trim_end_matches('/') => at.url.clone(),
                Some((scheme, _)) => format!("{scheme}://openbao-{i}.{cluster}"),
                None => format!("openbao-{i}.{cluster}"),
            }
        }
    };
    BaoEndpoint { url, via: at.via.clone() }
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

    const URL0: &str = "http://openbao-0.openbao-internal.openbao.svc:8200";
    const URL1: &str = "http://openbao-1.openbao-internal.openbao.svc:8200";

    fn shamir(shares: u8, threshold: u8) -> BaoInitRequest {
        BaoInitRequest { shares, threshold, recovery: false }
    }

    fn ep(url: &str) -> BaoEndpoint {
        BaoEndpoint::direct(url)
    }

    #[test]
    fn endpoints_group_replicas() {
        assert_eq!(split_endpoint(URL0).0, "openbao-internal.openbao.svc:8200");
        assert_eq!(split_endpoint(URL0).0, split_endpoint(URL1).0);
        assert_ne!(split_endpoint(URL0).1, split_endpoint(URL1).1);
        assert_eq!(split_endpoint("http://openbao.x:8200/").0, "http://openbao.x:8200");
        assert_eq!(split_endpoint("http://openbao-a.x").0, "http://openbao-a.x");
    }

    #[tokio::test]
    async fn init_once_per_cluster() {
        let (_d, bao) = setup();
        let st = bao.status(&ep(URL0)).await.unwrap();
        assert!(!st.initialized && st.sealed);
        assert!(matches!(
            bao.init(&ep(URL0), shamir(5, 1)).await,
            Err(StepError::Adapter { cause: Cause::Invalid, .. })
        ));
        assert!(matches!(
            bao.init(&ep(URL0), shamir(3, 4)).await,
            Err(StepError::Adapter { cause: Cause::Invalid, .. })
        ));
        let init = bao.init(&ep(URL0), shamir(5, 3)).await.unwrap();
        assert_eq!(init.keys.len(), 5);
        assert!(init.keys.iter().all(|k| k.expose().len() == 64));
        assert!(init.root_token.expose().starts_with("s."));
        let e = bao.init(&ep(URL0), shamir(5, 3)).await.unwrap_err();
        assert!(matches!(
            e,
            StepError::Adapter { system: System::Openbao, cause: Cause::Conflict, .. }
        ));
        // Another replica of the same cluster is initialized too.
        assert!(matches!(
            bao.init(&ep(URL1), shamir(5, 3)).await,
            Err(StepError::Adapter { cause: Cause::Conflict, .. })
        ));
        let st = bao.status(&ep(URL1)).await.unwrap();
        assert!(st.initialized && st.sealed && st.threshold == 3 && st.shares == 5);
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
        let init = bao.init(&ep(URL0), shamir(5, 3)).await.unwrap();
        let tok = &init.root_token;
        assert!(
            matches!(
                bao.write(&ep(URL0), tok, "sys/mounts/secret", json!({})).await,
                Err(StepError::Adapter { cause: Cause::Unavailable, .. })
            ),
            "sealed"
        );
        let e = bao.unseal(&ep(URL0), &SecretString::new("00".repeat(32))).await.unwrap_err();
        assert!(
            matches!(&e, StepError::Adapter { cause: Cause::Invalid, message, .. } if message == "invalid key")
        );
        assert!(bao.unseal(&ep(URL0), &init.keys[0]).await.unwrap().sealed);
        assert!(
            bao.unseal(&ep(URL0), &init.keys[0]).await.unwrap().sealed,
            "the same key twice counts once"
        );
        assert!(bao.unseal(&ep(URL0), &init.keys[1]).await.unwrap().sealed);
        assert!(!bao.unseal(&ep(URL0), &init.keys[4]).await.unwrap().sealed);
        let st = bao.status(&ep(URL0)).await.unwrap();
        assert!(st.initialized && !st.sealed);
        assert!(bao.status(&ep(URL1)).await.unwrap().sealed, "seal state is per replica");

        bao.write(&ep(URL0), tok, "sys/auth/kubernetes", json!({"type": "kubernetes"}))
            .await
            .unwrap();
        bao.write(
            &ep(URL0),
            tok,
            "auth/kubernetes/role/eso",
            json!({"bound_service_account_names": ["eso"]}),
        )
        .await
        .unwrap();
        let r = bao
            .write(&ep(URL0), tok, "secret/data/app", json!({"data": {"k": "v"}}))
            .await
            .unwrap();
        assert_eq!(r["data"]["version"], 1);
        assert_eq!(
            bao.read(&ep(URL0), tok, "secret/data/app").await.unwrap(),
            Some(json!({"data": {"data": {"k": "v"}, "metadata": {"version": 1}}}))
        );
        assert_eq!(
            bao.read(&ep(URL0), tok, "/sys/auth/kubernetes").await.unwrap(),
            Some(json!({"type": "kubernetes"}))
        );
        assert_eq!(bao.read(&ep(URL0), tok, "secret/data/none").await.unwrap(), None);
        let e = bao
            .read(&ep(URL0), &SecretString::new("s.wrong"), "secret/data/app")
            .await
            .unwrap_err();
        assert!(matches!(e, StepError::Adapter { cause: Cause::Unauthorized, .. }));
        // A child token works; the other replica sees the shared KV once unsealed.
        let child = bao
            .write(&ep(URL0), tok, "auth/token/create", json!({"policies": ["eso"]}))
            .await
            .unwrap();
        let child = SecretString::new(child["auth"]["client_token"].as_str().unwrap());
        assert!(bao.read(&ep(URL0), &child, "secret/data/app").await.unwrap().is_some());
        for k in &init.keys[2..5] {
            bao.unseal(&ep(URL1), k).await.unwrap();
        }
        assert_eq!(
            bao.read(&ep(URL1), tok, "secret/data/app").await.unwrap().unwrap()["data"]["data"],
            json!({"k": "v"})
        );
    }
}
