//! The OpenBao client against a real `bao server` (raft, loopback), and the
//! sim's OpenBao held to the same contract: seal status, init once, k
//! shares unseal and k−1 do not, KV v2, policies and child tokens, and a
//! revoked token that no longer works.

use cz_adapters::openbao::{BaoApi, BaoEndpoint, BaoInitRequest, OpenBaoClient};
use cz_engine::{Cause, StepError};
use cz_state::SecretString;
use cz_testkit::bao::Bao;
use serde_json::json;

fn cause(e: &StepError) -> Option<Cause> {
    match e {
        StepError::Adapter { cause, .. } => Some(*cause),
        _ => None,
    }
}

/// What every OpenBao the phases talk to must do, on a fresh one at `at`.
async fn contract(api: &dyn BaoApi, at: &BaoEndpoint) {
    let st = api.status(at).await.unwrap();
    assert!(!st.initialized && st.sealed, "{st:?}");

    let req = BaoInitRequest { shares: 3, threshold: 2, recovery: false };
    let init = api.init(at, req).await.unwrap();
    assert_eq!(init.keys.len(), 3);
    let e = api.init(at, req).await.unwrap_err();
    assert_eq!(cause(&e), Some(Cause::Conflict), "{e}");
    let st = api.status(at).await.unwrap();
    assert!(st.initialized && st.sealed && (st.threshold, st.shares) == (2, 3), "{st:?}");
    assert_eq!(st.seal_type, "shamir");
    let root = &init.root_token;

    // Sealed: nothing but the seal answers.
    let e = api.read(at, root, "sys/mounts").await.unwrap_err();
    assert_eq!(cause(&e), Some(Cause::Unavailable), "{e}");

    // k−1 shares do not unseal; the k-th does.
    let st = api.unseal(at, &init.keys[2]).await.unwrap();
    assert!(st.sealed && st.progress == 1, "{st:?}");
    let st = api.unseal(at, &init.keys[0]).await.unwrap();
    assert!(!st.sealed, "{st:?}");
    assert!(!api.status(at).await.unwrap().sealed);

    // KV v2, once the unsealed node is active (raft elects it; until then
    // OpenBao answers 500, which is transient).
    let started = std::time::Instant::now();
    let kv = json!({"type": "kv", "options": {"version": "2"}});
    while let Err(e) = api.write(at, root, "sys/mounts/secret", kv.clone()).await {
        assert_eq!(cause(&e), Some(Cause::Unavailable), "{e}");
        assert!(started.elapsed().as_secs() < 30, "never active: {e}");
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    }
    let w = api.write(at, root, "secret/data/app", json!({"data": {"k": "v1"}})).await.unwrap();
    assert_eq!(w["data"]["version"], 1, "{w}");
    let w = api.write(at, root, "secret/data/app", json!({"data": {"k": "v2"}})).await.unwrap();
    assert_eq!(w["data"]["version"], 2, "{w}");
    let r = api.read(at, root, "secret/data/app").await.unwrap().unwrap();
    assert_eq!(r["data"]["data"], json!({"k": "v2"}), "{r}");
    assert_eq!(r["data"]["metadata"]["version"], 2, "{r}");
    assert_eq!(api.read(at, root, "secret/data/none").await.unwrap(), None);
    // Deleting the metadata deletes every version; deleting what is not
    // there is fine.
    api.write(at, root, "secret/data/gone", json!({"data": {"k": "v"}})).await.unwrap();
    api.delete(at, root, "secret/metadata/gone").await.unwrap();
    assert_eq!(api.read(at, root, "secret/data/gone").await.unwrap(), None);
    api.delete(at, root, "secret/metadata/gone").await.unwrap();

    // A wrong token is refused, as an operator's problem.
    let e = api.read(at, &SecretString::new("s.wrong"), "secret/data/app").await.unwrap_err();
    assert_eq!(cause(&e), Some(Cause::Unauthorized), "{e}");

    // A policy, a child token bound to it, revoked: dead.
    api.write(
        at,
        root,
        "sys/policy/reader",
        json!({"policy": "path \"secret/data/*\" { capabilities = [\"read\"] }"}),
    )
    .await
    .unwrap();
    let child = api.write(at, root, "auth/token/create", json!({"policies": ["reader"]})).await;
    let child = SecretString::new(child.unwrap()["auth"]["client_token"].as_str().unwrap());
    let r = api.read(at, &child, "secret/data/app").await.unwrap().unwrap();
    assert_eq!(r["data"]["data"]["k"], "v2");
    api.write(at, &child, "auth/token/revoke-self", json!({})).await.unwrap();
    let e = api.read(at, &child, "secret/data/app").await.unwrap_err();
    assert_eq!(cause(&e), Some(Cause::Unauthorized), "{e}");

    // The root token revoked: dead too.
    assert!(api.read(at, root, "auth/token/lookup-self").await.unwrap().is_some());
    api.write(at, root, "auth/token/revoke-self", json!({})).await.unwrap();
    let e = api.read(at, root, "auth/token/lookup-self").await.unwrap_err();
    assert_eq!(cause(&e), Some(Cause::Unauthorized), "{e}");
}

#[tokio::test]
async fn the_client_against_a_real_openbao() {
    if !Bao::available() && cz_testkit::skip("openbao", "no bao binary (set CZ_BAO_BIN)") {
        return;
    }
    let bao = Bao::start().await;
    contract(&OpenBaoClient::default(), &BaoEndpoint::direct(bao.url())).await;
}

#[tokio::test]
async fn the_sim_openbao_keeps_the_same_contract() {
    let dir = tempfile::tempdir().unwrap();
    let backend = cz_testkit::rig::sim_backend_in(dir.path());
    contract(backend.bao.as_ref(), &BaoEndpoint::direct("http://openbao-0.c:8200")).await;
}

/// No answer is a network problem, and the message names no secret.
#[tokio::test]
async fn a_server_that_is_down_is_transient() {
    let at = BaoEndpoint::direct(format!("http://127.0.0.1:{}", cz_testkit::free_port()));
    let e = OpenBaoClient::default().status(&at).await.unwrap_err();
    assert_eq!(cause(&e), Some(Cause::Network), "{e}");
    let token = SecretString::new("s.sEcReTtOkEn");
    let e = OpenBaoClient::default().read(&at, &token, "secret/data/x").await.unwrap_err();
    assert!(!e.to_string().contains("sEcReTtOkEn"), "{e}");
}

/// The static seal: `sys/init` answers recovery keys, the server unseals
/// itself, and again after a restart (what bp-openbao does with
/// `custody.seal = static`).
#[tokio::test]
async fn the_client_against_a_real_static_seal_openbao() {
    if !Bao::available() && cz_testkit::skip("openbao", "no bao binary (set CZ_BAO_BIN)") {
        return;
    }
    let mut bao = cz_testkit::bao::BaoCluster::start_static(1, &[7u8; 32]).await;
    let api = OpenBaoClient::default();
    let at = BaoEndpoint::direct(bao.nodes[0].url());
    let st = api.status(&at).await.unwrap();
    assert!(!st.initialized && st.seal_type == "static", "{st:?}");
    let e = api
        .init(&at, BaoInitRequest { shares: 3, threshold: 2, recovery: false })
        .await
        .unwrap_err();
    assert_eq!(cause(&e), Some(Cause::Invalid), "unseal shares on a static seal: {e}");
    let init =
        api.init(&at, BaoInitRequest { shares: 3, threshold: 2, recovery: true }).await.unwrap();
    assert_eq!(init.keys.len(), 3, "three recovery keys");
    let unsealed = |api: &OpenBaoClient, at: &BaoEndpoint| {
        let (api, at) = (api.clone(), at.clone());
        async move {
            let started = std::time::Instant::now();
            loop {
                if api.status(&at).await.is_ok_and(|s| s.initialized && !s.sealed) {
                    return;
                }
                assert!(started.elapsed().as_secs() < 30, "never unsealed itself");
                tokio::time::sleep(std::time::Duration::from_millis(200)).await;
            }
        }
    };
    unsealed(&api, &at).await;
    bao.nodes[0].restart().await;
    unsealed(&api, &at).await;
}

/// What a new region's replica goes through, against the initialized,
/// unsealed cluster of `leader_at`: the active node's advertised address
/// from `sys/leader`, a raft join (twice: the second is a no-op), then,
/// with the Shamir seal, sealed until `keys` are given; with an
/// auto-unseal seal, unsealed on its own. Either way it ends in the
/// leader's cluster (the same `cluster_id`), and a second, foreign
/// cluster's node cannot join it.
async fn join_contract(
    api: &dyn BaoApi,
    leader_at: &BaoEndpoint,
    new_at: &BaoEndpoint,
    keys: Option<&[SecretString]>,
) {
    let wait = |what: &'static str| {
        let started = std::time::Instant::now();
        move || assert!(started.elapsed().as_secs() < 60, "never {what}")
    };
    let leader = api.leader(leader_at).await.unwrap();
    assert!(!leader.leader_address.is_empty(), "{leader:?}");
    let cluster = api.status(leader_at).await.unwrap().cluster_id;
    assert!(cluster.is_some(), "an unsealed replica names its cluster");

    let st = api.status(new_at).await.unwrap();
    assert!(!st.initialized && st.sealed && st.cluster_id.is_none(), "{st:?}");
    // A sealed, uninitialized node advertises no leader.
    assert!(api.leader(new_at).await.is_err());
    // Nobody answers at a made-up address.
    let e = api.raft_join(new_at, "http://127.0.0.1:9", true).await.unwrap_err();
    assert!(matches!(cause(&e), Some(Cause::Network | Cause::Invalid | Cause::Unavailable)), "{e}");

    api.raft_join(new_at, &leader.leader_address, true).await.unwrap();
    again(api.raft_join(new_at, &leader.leader_address, true).await);
    let until_initialized = wait("initialized by the join");
    while !api.status(new_at).await.unwrap().initialized {
        until_initialized();
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    }
    if let Some(keys) = keys {
        let st = api.status(new_at).await.unwrap();
        assert!(st.sealed && st.threshold == 2, "a joined Shamir replica waits sealed: {st:?}");
        for k in keys {
            api.unseal(new_at, k).await.unwrap();
        }
    }
    let until_unsealed = wait("unsealed and in the leader's cluster");
    loop {
        let st = api.status(new_at).await.unwrap();
        if !st.sealed && st.cluster_id == cluster {
            break;
        }
        until_unsealed();
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    }
    // It sees the same active node.
    let until_leader = wait("following the leader");
    loop {
        match api.leader(new_at).await {
            Ok(l) if l.leader_address == leader.leader_address => break,
            _ => until_leader(),
        }
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    }
    again(api.raft_join(new_at, &leader.leader_address, true).await);
}

/// A repeated join is a no-op, or refused as raft already initialized.
fn again(r: Result<(), StepError>) {
    if let Err(e) = r {
        assert_eq!(cause(&e), Some(Cause::Conflict), "{e}");
    }
}

#[tokio::test]
async fn a_new_replica_joins_a_real_shamir_cluster() {
    if !Bao::available() && cz_testkit::skip("openbao", "no bao binary (set CZ_BAO_BIN)") {
        return;
    }
    let mut bao = cz_testkit::bao::BaoCluster::start(1).await;
    let api = OpenBaoClient::default();
    let leader = BaoEndpoint::direct(bao.nodes[0].url());
    let init = api.init(&leader, BaoInitRequest { shares: 3, threshold: 2, recovery: false });
    let init = init.await.unwrap();
    for k in &init.keys[..2] {
        api.unseal(&leader, k).await.unwrap();
    }
    let i = bao.add_unjoined().await;
    let new = BaoEndpoint::direct(bao.nodes[i].url());
    join_contract(&api, &leader, &new, Some(&init.keys[1..])).await;
}

#[tokio::test]
async fn a_new_replica_joins_a_real_static_seal_cluster_and_unseals_itself() {
    if !Bao::available() && cz_testkit::skip("openbao", "no bao binary (set CZ_BAO_BIN)") {
        return;
    }
    let mut bao = cz_testkit::bao::BaoCluster::start_static(1, &[9u8; 32]).await;
    let api = OpenBaoClient::default();
    let leader = BaoEndpoint::direct(bao.nodes[0].url());
    let req = BaoInitRequest { shares: 3, threshold: 2, recovery: true };
    api.init(&leader, req).await.unwrap();
    let until = std::time::Instant::now();
    while api.leader(&leader).await.is_err() {
        assert!(until.elapsed().as_secs() < 60, "{}", bao.logs());
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    }
    let i = bao.add_unjoined().await;
    let new = BaoEndpoint::direct(bao.nodes[i].url());
    join_contract(&api, &leader, &new, None).await;
}

#[tokio::test]
async fn the_sim_openbao_joins_the_same_way() {
    let dir = tempfile::tempdir().unwrap();
    let backend = cz_testkit::rig::sim_backend_in(dir.path());
    let api = backend.bao.as_ref();
    let leader = BaoEndpoint::direct("http://openbao-0.first:8200");
    let init = api.init(&leader, BaoInitRequest { shares: 3, threshold: 2, recovery: false });
    let init = init.await.unwrap();
    for k in &init.keys[..2] {
        api.unseal(&leader, k).await.unwrap();
    }
    let new = BaoEndpoint::direct("http://openbao-0.second:8200");
    join_contract(api, &leader, &new, Some(&init.keys[1..])).await;
    // A node of an initialized cluster of its own cannot join another.
    let other = BaoEndpoint::direct("http://openbao-0.third:8200");
    api.init(&other, BaoInitRequest { shares: 1, threshold: 1, recovery: false }).await.unwrap();
    let addr = api.leader(&leader).await.unwrap().leader_address;
    assert_eq!(
        cause(&api.raft_join(&other, &addr, true).await.unwrap_err()),
        Some(Cause::Conflict)
    );
}
