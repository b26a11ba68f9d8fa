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
