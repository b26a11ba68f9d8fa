//! A new region's OpenBao joins the Sovereign's: with the static seal on
//! its own, with Shamir in the named state `awaiting-custodians` until two
//! custodians (the real `age` CLI opening their escrow) unseal its pods,
//! after which the job goes on by itself. Every step of both phases is
//! also under the generic unwind and twice-run tests of the add-region
//! job (`jobs::tests`, static seal).

use cz_adapters::openbao::BaoEndpoint;
use cz_state::{JobId, JobStatus, SecretString, SovereignId};
use serde_json::Value;

use super::{
    AWAITING_CUSTODIANS, Joined, JoinedUnsealed, PHASE, SealCopied, admin_kubeconfig_kind,
};
use crate::custody::escrow::{OPENBAO_SHARE, STATIC_SEAL_KEY};
use crate::handoff::secrets::tests::Custodians;
use crate::handoff::secrets::{NAMESPACE, PORT, REPLICAS};
use crate::jobs::{Submit, add_region};
use crate::request::{ProvisionRequest, Seal};
use crate::testing::{SimRig, SimRigExt, add_region_body, sample_request, sim_rig};

async fn add_hel1(rig: &SimRig, sov: SovereignId) -> JobId {
    let s = rig.store.get_sovereign(sov).await.unwrap().unwrap();
    let js = rig.store.list_jobs(Some(sov)).await.unwrap();
    let sub = add_region(&s, &js, &add_region_body(&["hel1"]), Submit::default()).unwrap();
    rig.follow_up(sub).await
}

async fn pod(rig: &SimRig, sov: SovereignId, loc: &str, i: u32) -> BaoEndpoint {
    let kc = rig.store.get_secret(&sov.to_string(), &format!("kubeconfig-{loc}")).await;
    BaoEndpoint::pod(&kc.unwrap().unwrap(), NAMESPACE, &format!("openbao-{i}"), PORT).unwrap()
}

async fn output<T: serde::de::DeserializeOwned>(rig: &SimRig, job: JobId, node: &str) -> T {
    let states = rig.store.node_states(job).await.unwrap();
    serde_json::from_value(states[node].output().cloned().expect("the step succeeded")).unwrap()
}

/// The home cluster's id, as every home replica reports it.
async fn home_cluster(rig: &SimRig, sov: SovereignId) -> String {
    let mut ids = Vec::new();
    for i in 0..REPLICAS {
        let st = rig.env().bao.status(&pod(rig, sov, "fsn1", i).await).await.unwrap();
        assert!(!st.sealed, "home replica {i} stays unsealed");
        ids.push(st.cluster_id.expect("an unsealed replica names its cluster"));
    }
    ids.dedup();
    assert_eq!(ids.len(), 1, "{ids:?}");
    ids.pop().unwrap()
}

async fn events(rig: &SimRig, job: JobId) -> Vec<Value> {
    let evs = rig.store.events_after(job, 0, 100_000).await.unwrap();
    evs.into_iter().map(|e| e.body).collect()
}

#[tokio::test]
async fn a_static_seal_region_joins_and_unseals_itself() {
    let mut req = sample_request("joins", 1, 0);
    req.custody.seal = Seal::Static;
    let rig = sim_rig().await;
    let sov = rig.provisioned(&req).await;
    let home = home_cluster(&rig, sov).await;
    let job = add_hel1(&rig, sov).await;
    assert_eq!(rig.drive(job).await, JobStatus::Succeeded, "{}", rig.stop_reason(job).await);

    // The key went over, the one escrowed to the custodians, in memory only.
    let copied: SealCopied = output(&rig, job, "region-custody/static-seal-hel1").await;
    let escrowed = rig.store.escrow(&sov.to_string(), Some(STATIC_SEAL_KEY)).await.unwrap();
    assert!(escrowed.iter().all(|i| i.fingerprint.as_deref() == Some(&copied.fingerprint)));
    let names = rig.store.secret_names(&sov.to_string()).await.unwrap();
    assert!(names.iter().all(|n| !n.contains("seal")), "the daemon keeps {names:?}");

    for i in 0..REPLICAS {
        let joined: Joined = output(&rig, job, &format!("{PHASE}/join-hel1-{i}")).await;
        assert!(joined.non_voter && !joined.leader_address.is_empty(), "{joined:?}");
        let u: JoinedUnsealed = output(&rig, job, &format!("{PHASE}/unseal-hel1-{i}")).await;
        assert_eq!((u.cluster_id.as_str(), u.by_custodians), (home.as_str(), false));
        let st = rig.env().bao.status(&pod(&rig, sov, "hel1", i).await).await.unwrap();
        assert_eq!(st.cluster_id.as_deref(), Some(home.as_str()));
    }
    assert_eq!(home_cluster(&rig, sov).await, home, "the home cluster is untouched");
    let kc = rig.store.escrow(&sov.to_string(), Some(&admin_kubeconfig_kind("hel1"))).await;
    assert_eq!(kc.unwrap().len(), req.custody.custodians.len(), "a copy per custodian");
}

/// With Shamir the new pods wait sealed; the job says so once per pod in
/// the named state and keeps waiting, two custodians open the region's
/// kubeconfig and their shares with `age` and give them to the pods, and
/// the job finishes on its own: no retry, no share in the store.
#[tokio::test]
async fn a_shamir_region_waits_for_the_custodians_and_goes_on() {
    let mut req: ProvisionRequest = sample_request("waits", 1, 0);
    let people = Custodians::new(&mut req, None);
    let rig = sim_rig().await;
    let sov = rig.provisioned(&req).await;
    let home = home_cluster(&rig, sov).await;
    let owner = sov.to_string();
    let job = add_hel1(&rig, sov).await;

    let custodians = async {
        // Wait until the job says it waits for them.
        loop {
            let evs = events(&rig, job).await;
            if evs.iter().any(|b| b["state"] == AWAITING_CUSTODIANS) {
                break;
            }
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        }
        let kind = admin_kubeconfig_kind("hel1");
        let copies = rig.store.escrow(&owner, Some(&kind)).await.unwrap();
        let kc = SecretString::new(people.open(1, &copies[1].armored).expect("their copy"));
        let shares = rig.store.escrow(&owner, Some(OPENBAO_SHARE)).await.unwrap();
        for c in [0, 1] {
            let share = SecretString::new(people.open(c, &shares[c].armored).unwrap());
            for i in 0..REPLICAS {
                let at = BaoEndpoint::pod(&kc, NAMESPACE, &format!("openbao-{i}"), PORT).unwrap();
                // A pod not joined yet is given its share on a later pass.
                while !rig.env().bao.status(&at).await.unwrap().initialized {
                    tokio::time::sleep(std::time::Duration::from_millis(20)).await;
                }
                rig.env().bao.unseal(&at, &share).await.unwrap();
            }
        }
    };
    let (status, ()) = tokio::join!(rig.drive(job), custodians);
    assert_eq!(status, JobStatus::Succeeded, "{}", rig.stop_reason(job).await);

    let evs = events(&rig, job).await;
    let waiting = evs.iter().filter(|b| b["state"] == AWAITING_CUSTODIANS).count();
    assert!(waiting >= 1, "the named state was announced");
    for i in 0..REPLICAS {
        let u: JoinedUnsealed = output(&rig, job, &format!("{PHASE}/unseal-hel1-{i}")).await;
        assert_eq!(u.cluster_id, home, "{u:?}");
    }
    let names = rig.store.secret_names(&owner).await.unwrap();
    assert!(names.iter().all(|n| !n.contains("openbao")), "the daemon keeps {names:?}");
    assert_eq!(home_cluster(&rig, sov).await, home, "the home cluster is untouched");
}
