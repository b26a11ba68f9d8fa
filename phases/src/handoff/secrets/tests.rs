use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use cz_adapters::ObjectRef;
use cz_adapters::openbao::BaoEndpoint;
use cz_engine::{Cause, ErrorClass, FaultPlan, JobOptions, RetryTarget, StepError, Verbs};
use cz_state::{JobId, JobStatus, SecretString, SovereignId};
use serde_json::{Value, json};

use super::{
    BaoInitialized, CANARY_KEY, CANARY_SECRET, ESO_NAMESPACE, NAMESPACE, PHASE, PORT, REPLICAS,
    ROOT_TOKEN, RoundTrip, roundtrip_external_secret,
};
use crate::custody::escrow::{OPENBAO_RECOVERY_KEY, OPENBAO_SHARE, STATIC_SEAL_KEY};
use crate::jobs::provision_plan;
use crate::request::{ProvisionRequest, Seal};
use crate::testing::{
    BaoTap, FailRule, SimRig, SimRigExt, WorldConfig as SimConfig, phase_tests,
    restart_bao_replica, sample_request, sim_rig, sim_rig_in_world, sim_rig_with,
};
use cz_adapters::labels::FIELD_MANAGER;

phase_tests!(super::PHASE, sample_request("sec", 1, 0));

/// Three custodians with identities the test holds (files for the `age`
/// CLI), `shares` shares (None: one each), threshold 2.
pub(crate) struct Custodians {
    dir: tempfile::TempDir,
    files: Vec<PathBuf>,
}

impl Custodians {
    pub(crate) fn new(req: &mut ProvisionRequest, shares: Option<u8>) -> Custodians {
        use age::secrecy::ExposeSecret as _;
        let dir = tempfile::tempdir().unwrap();
        let mut files = Vec::new();
        for (i, c) in req.custody.custodians.iter_mut().enumerate() {
            let id = age::x25519::Identity::generate();
            let f = dir.path().join(format!("id{i}.txt"));
            std::fs::write(&f, id.to_string().expose_secret()).unwrap();
            c.recipient = id.to_public().to_string();
            files.push(f);
        }
        req.custody.openbao_shares = shares;
        req.custody.openbao_threshold = 2;
        Custodians { dir, files }
    }

    /// `age -d` of `armored` with custodian `c`'s identity (the real CLI).
    pub(crate) fn open(&self, c: usize, armored: &str) -> Option<String> {
        let f = self.dir.path().join("blob.age");
        std::fs::write(&f, armored).unwrap();
        let out = std::process::Command::new("age")
            .args(["-d", "-i"])
            .arg(&self.files[c])
            .arg(&f)
            .output()
            .expect("the age CLI");
        out.status.success().then(|| String::from_utf8(out.stdout).unwrap())
    }
}

/// The request run up to and including this phase.
async fn run(rig: &SimRig, req: &ProvisionRequest, options: JobOptions) -> (SovereignId, JobId) {
    let mut plan = provision_plan(req);
    let at = plan.phases.iter().position(|p| p.id == PHASE).unwrap();
    plan.phases.truncate(at + 1);
    rig.submit_plan(req, &plan, options).await
}

/// The typed output of a step of `job`.
async fn output<T: serde::de::DeserializeOwned>(rig: &SimRig, job: JobId, step: &str) -> T {
    let states = rig.store.node_states(job).await.unwrap();
    let out = states[&format!("{PHASE}/{step}")].output().cloned().expect("the step succeeded");
    serde_json::from_value(out).unwrap()
}

async fn replica(rig: &SimRig, sov: SovereignId, i: u32) -> BaoEndpoint {
    let kc = rig.store.get_secret(&sov.to_string(), "kubeconfig-fsn1").await.unwrap().unwrap();
    BaoEndpoint::pod(&kc, NAMESPACE, &format!("openbao-{i}"), PORT).unwrap()
}

fn unauthorized(e: &StepError) -> bool {
    matches!(e, StepError::Adapter { cause: Cause::Unauthorized, .. })
}

/// Share `i` is encrypted to its custodian alone: the real `age` CLI opens
/// it with that custodian's identity and no other; the daemon's store
/// holds no share and, after the phase, no root token; `threshold`
/// shares opened by the custodians unseal a restarted replica and one
/// does not.
#[tokio::test]
async fn the_shares_are_the_custodians_alone_k_of_n() {
    let mut req = sample_request("k-of-n", 1, 0);
    let people = Custodians::new(&mut req, Some(4));
    let (rig, world) = sim_rig_in_world(SimConfig::instant()).await;
    let (sov, job) = run(&rig, &req, JobOptions::default()).await;
    assert_eq!(rig.drive(job).await, JobStatus::Succeeded);
    let owner = sov.to_string();
    let shares = rig.store.escrow(&owner, Some(OPENBAO_SHARE)).await.unwrap();
    assert_eq!(shares.len(), 4);
    let mut opened = Vec::new();
    for s in &shares {
        assert_eq!((s.threshold, s.parts), (2, 4));
        assert_eq!(s.custodian as usize, s.index as usize % 3, "dealt round-robin");
        for c in 0..3 {
            let got = people.open(c, &s.armored);
            assert_eq!(
                got.is_some(),
                c == s.custodian as usize,
                "custodian {c}, share {}",
                s.index
            );
            if let Some(share) = got {
                opened.push(SecretString::new(share));
            }
        }
    }
    let names = rig.store.secret_names(&owner).await.unwrap();
    assert!(names.iter().all(|n| !n.contains("openbao")), "the daemon keeps {names:?}");

    let at = replica(&rig, sov, 1).await;
    restart_bao_replica(&world, &at).await;
    let bao = &rig.env().bao;
    assert!(bao.unseal(&at, &opened[0]).await.unwrap().sealed, "one share does not unseal");
    assert!(!bao.unseal(&at, &opened[1]).await.unwrap().sealed, "two do");
}

/// The daemon restarted between `init`'s commit and the unseals (its
/// shares lost with its memory), or a pod restarted: the replica is the
/// custodians' to unseal. The job stops at that replica's step with the
/// runbook, never re-initialises, and goes on once two custodians have
/// given their shares.
#[tokio::test]
async fn a_replica_sealed_after_init_waits_for_the_custodians() {
    let mut req = sample_request("reseal", 1, 0);
    let people = Custodians::new(&mut req, None);
    // `configure` makes the first authenticated read: refused once, the job
    // pauses there, after `init` and the unseals.
    let refused = FailRule { op: "bao.read".into(), cause: Cause::Unauthorized, times: 1 };
    let (rig, world) =
        sim_rig_in_world(SimConfig { fail: vec![refused], ..SimConfig::instant() }).await;
    let (sov, job) = run(&rig, &req, JobOptions::default()).await;
    assert_eq!(rig.drive(job).await, JobStatus::Paused);
    assert_eq!(rig.stop_reason(job).await["step"], format!("{PHASE}/configure"));
    let owner = sov.to_string();
    let before = rig.store.escrow(&owner, Some(OPENBAO_SHARE)).await.unwrap();

    let at = replica(&rig, sov, 2).await;
    restart_bao_replica(&world, &at).await;
    let verbs = Verbs { store: &rig.store };
    verbs.retry(job, RetryTarget::Phase(PHASE.into()), "alice").await.unwrap();
    assert_eq!(rig.drive(job).await, JobStatus::Paused);
    let stop = rig.stop_reason(job).await;
    assert_eq!(stop["step"], format!("{PHASE}/unseal-2"), "{stop}");
    assert_eq!(stop["error"]["kind"], "precondition", "{stop}");
    let remedy = stop["error"]["remediation"].as_str().unwrap();
    assert!(remedy.contains("catalyst-zero unseal") && remedy.contains("2 custodians"), "{remedy}");
    let init: BaoInitialized = output(&rig, job, "init").await;
    assert!(init.already_initialized, "never initialised again");
    assert_eq!(rig.store.escrow(&owner, Some(OPENBAO_SHARE)).await.unwrap(), before);

    // Custodians 0 and 2 open their shares and give them to the replica.
    for c in [0, 2] {
        let share = people.open(c, &before[c].armored).unwrap();
        rig.env().bao.unseal(&at, &SecretString::new(share)).await.unwrap();
    }
    verbs.retry(job, RetryTarget::Failed, "alice").await.unwrap();
    assert_eq!(rig.drive(job).await, JobStatus::Succeeded);
}

/// After `revoke-root` the root token `sys/init` answered no longer
/// works, and the daemon has forgotten it; a phase retry then initialises
/// nothing again and stops for an operator at the first step that needs
/// the token.
#[tokio::test]
async fn the_root_token_is_revoked_and_a_retry_never_reinitialises() {
    let req = sample_request("revoke", 1, 0);
    // The root token `sys/init` answers, as someone watching the wire sees it.
    let seen = Arc::new(Mutex::new(None::<SecretString>));
    let keep = seen.clone();
    let rig = sim_rig_with(crate::registry(), move |mut b| {
        let after_init = Box::new(move |init: &cz_adapters::BaoInit| {
            *keep.lock().unwrap() = Some(init.root_token.clone());
            None
        });
        b.bao = Arc::new(BaoTap { inner: b.bao.clone(), after_init });
        b
    })
    .await;
    // The job goes on to the next phase and pauses there.
    let mut faults = FaultPlan::default();
    faults.fail.insert("dns-commit/records".into(), ErrorClass::NeedsOperator);
    let options = JobOptions { faults, ..Default::default() };
    let (sov, job) = rig.submit_plan(&req, &provision_plan(&req), options).await;
    assert_eq!(rig.drive(job).await, JobStatus::Paused);
    let owner = sov.to_string();
    assert!(rig.store.get_secret(&owner, "openbao-root-token").await.unwrap().is_none());
    let root = seen.lock().unwrap().clone().expect("init answered");
    let at = replica(&rig, sov, 0).await;
    let e = rig.env().bao.read(&at, &root, "auth/token/lookup-self").await.unwrap_err();
    assert!(unauthorized(&e), "the root token still works: {e}");
    let shares = rig.store.escrow(&owner, Some(OPENBAO_SHARE)).await.unwrap();

    Verbs { store: &rig.store }
        .retry(job, RetryTarget::Phase(PHASE.into()), "alice")
        .await
        .unwrap();
    assert_eq!(rig.drive(job).await, JobStatus::Paused);
    let stop = rig.stop_reason(job).await;
    assert_eq!(stop["step"], format!("{PHASE}/configure"), "{stop}");
    assert_eq!(stop["error"]["kind"], "precondition", "{stop}");
    let init: BaoInitialized = output(&rig, job, "init").await;
    assert!(init.already_initialized);
    assert_eq!(rig.store.escrow(&owner, Some(OPENBAO_SHARE)).await.unwrap(), shares);
}

/// Both legs of the round trip ran against the sim's External Secrets
/// (which reads the sim OpenBao with the role `configure` made), and it
/// left nothing behind: no ExternalSecret, no Secret, no canary in KV.
#[tokio::test]
async fn the_round_trip_proves_both_legs_and_cleans_up() {
    let req = sample_request("eso", 1, 0);
    let rig = sim_rig().await;
    let (sov, job) = run(&rig, &req, JobOptions::default()).await;
    assert_eq!(rig.drive(job).await, JobStatus::Succeeded);
    let rt: RoundTrip = output(&rig, job, "roundtrip").await;
    assert!(rt.synced && rt.resynced);
    let kc = rig.store.get_secret(&sov.to_string(), "kubeconfig-fsn1").await.unwrap().unwrap();
    let kube = &rig.env().kube;
    let get = |api: &str, kind: &str, ns: Option<&str>, name: &str| ObjectRef {
        api_version: api.into(),
        kind: kind.into(),
        namespace: ns.map(str::to_owned),
        name: name.into(),
    };
    let es = get(
        "external-secrets.io/v1",
        "ExternalSecret",
        Some("external-secrets-system"),
        "catalyst-zero-roundtrip",
    );
    assert!(kube.get(&kc, &es).await.unwrap().is_none());
    let secret = get("v1", "Secret", Some("external-secrets-system"), "catalyst-zero-roundtrip");
    assert!(kube.get(&kc, &secret).await.unwrap().is_none());
    let store = get("external-secrets.io/v1", "ClusterSecretStore", None, "openbao");
    let store = kube.get(&kc, &store).await.unwrap().unwrap();
    assert_eq!(store.pointer("/status/conditions/0/status"), Some(&json!("True")), "{store}");
    let hr =
        get("helm.toolkit.fluxcd.io/v2", "HelmRelease", Some("flux-system"), "bp-sealed-secrets");
    assert!(kube.get(&kc, &hr).await.unwrap().is_none(), "sealed-secrets is retired");
    let events = rig.events(job, "custody").await;
    assert!(
        events.iter().any(|e| e["message"].as_str().is_some_and(|m| m.contains("forced resync"))),
        "the round trip reported"
    );
}

/// The daemon died inside `roundtrip` after its first leg synced: the
/// ExternalSecret stands and its Secret holds that run's canary. The re-run
/// writes a new canary and must have ESO fetch it now; an unchanged
/// ExternalSecret is refreshed only after its `refreshInterval` (1 h).
#[tokio::test]
async fn a_round_trip_rerun_over_a_synced_first_leg_forces_a_refresh() {
    let req = sample_request("eso-rerun", 1, 0);
    let rig = sim_rig_with(crate::registry(), |mut b| {
        b.bounds.secret_sync = std::time::Duration::from_secs(3);
        b
    })
    .await;
    let mut faults = FaultPlan::default();
    faults.until_retry.insert(format!("{PHASE}/roundtrip"), ErrorClass::NeedsOperator);
    let (sov, job) = run(&rig, &req, JobOptions { faults, ..Default::default() }).await;
    assert_eq!(rig.drive(job).await, JobStatus::Paused);
    assert_eq!(rig.stop_reason(job).await["step"], format!("{PHASE}/roundtrip"));

    // The first leg as the dead run left it, synced by ESO.
    let owner = sov.to_string();
    let root = rig.store.get_secret(&owner, ROOT_TOKEN).await.unwrap().unwrap();
    let kc = rig.store.get_secret(&owner, "kubeconfig-fsn1").await.unwrap().unwrap();
    let env = rig.env();
    let at = replica(&rig, sov, 0).await;
    let path = format!("secret/data/{CANARY_KEY}");
    env.bao.write(&at, &root, &path, json!({ "data": { "canary": "stale" } })).await.unwrap();
    env.kube.apply(&kc, FIELD_MANAGER, &[roundtrip_external_secret(None)]).await.unwrap();
    let secret = ObjectRef {
        api_version: "v1".into(),
        kind: "Secret".into(),
        namespace: Some(ESO_NAMESPACE.into()),
        name: CANARY_SECRET.into(),
    };
    let synced = async {
        loop {
            if let Some(s) = env.kube.get(&kc, &secret).await.unwrap()
                && s.pointer("/data/canary").is_some()
            {
                break;
            }
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        }
    };
    tokio::time::timeout(std::time::Duration::from_secs(10), synced).await.expect("ESO synced");

    Verbs { store: &rig.store }.retry(job, RetryTarget::Failed, "alice").await.unwrap();
    assert_eq!(rig.drive(job).await, JobStatus::Succeeded, "{}", rig.stop_reason(job).await);
    let rt: RoundTrip = output(&rig, job, "roundtrip").await;
    assert!(rt.synced && rt.resynced);
}

/// With the static seal: the key is a Secret the pods mount, split to the
/// custodians; OpenBao unseals itself, its recovery keys are escrowed
/// instead of shares; bp-openbao's values carry the seal.
#[tokio::test]
async fn the_static_seal_escrows_its_key_and_unseals_itself() {
    let mut req = sample_request("static", 1, 0);
    let people = Custodians::new(&mut req, None);
    req.custody.seal = Seal::Static;
    let rig = sim_rig().await;
    let (sov, job) = run(&rig, &req, JobOptions::default()).await;
    assert_eq!(rig.drive(job).await, JobStatus::Succeeded, "{}", rig.stop_reason(job).await);
    let owner = sov.to_string();
    assert!(rig.store.escrow(&owner, Some(OPENBAO_SHARE)).await.unwrap().is_empty());
    assert_eq!(rig.store.escrow(&owner, Some(OPENBAO_RECOVERY_KEY)).await.unwrap().len(), 3);
    let parts = rig.store.escrow(&owner, Some(STATIC_SEAL_KEY)).await.unwrap();
    assert_eq!(parts.len(), 3);
    // Two custodians' parts give the key back; its hash is the recorded one.
    let texts: Vec<cz_state::shamir::Part> = [0, 1]
        .iter()
        .map(|&c| {
            cz_state::shamir::Part::decode(&people.open(c, &parts[c].armored).unwrap()).unwrap()
        })
        .collect();
    let key = cz_state::shamir::combine(&texts).unwrap();
    assert_eq!(key.len(), 32);
    assert_eq!(Some(crate::custody::escrow::sha256_hex(&key)), parts[0].fingerprint);
    let single =
        cz_state::shamir::Part::decode(&people.open(2, &parts[2].armored).unwrap()).unwrap();
    assert!(cz_state::shamir::combine(&[single]).is_err(), "one part is not enough");

    for i in 0..REPLICAS {
        let st = rig.env().bao.status(&replica(&rig, sov, i).await).await.unwrap();
        assert!(st.initialized && !st.sealed && st.seal_type == "static", "{st:?}");
    }
    let kc = rig.store.get_secret(&owner, "kubeconfig-fsn1").await.unwrap().unwrap();
    let hr = ObjectRef {
        api_version: "helm.toolkit.fluxcd.io/v2".into(),
        kind: "HelmRelease".into(),
        namespace: Some("flux-system".into()),
        name: "bp-openbao".into(),
    };
    let hr = rig.env().kube.get(&kc, &hr).await.unwrap().unwrap();
    let config = hr.pointer("/spec/values/server/ha/raft/config").and_then(Value::as_str).unwrap();
    assert!(config.contains("seal \"static\""), "{config}");
    let secret = ObjectRef {
        api_version: "v1".into(),
        kind: "Secret".into(),
        namespace: Some("openbao".into()),
        name: "openbao-static-seal".into(),
    };
    assert!(rig.env().kube.get(&kc, &secret).await.unwrap().is_some());
}
