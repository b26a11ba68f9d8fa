//! Test harness for phase plans, and the two generic tests every plan runs
//! (omicron's `action_failure_can_unwind` and
//! `actions_succeed_idempotently`):
//! - fail at each step in turn (terminal, rollback policy) and check the
//!   unwind leaves a clean slate;
//! - run every step (and every undo) twice and check the job succeeds with
//!   the same cloud objects as a plain run.

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::Duration;

use cz_state::{
    JobId, JobKind, JobStatus, NewAudit, SovereignId, SovereignTarget, Store, StorePaths,
    Submission,
};
use serde_json::json;
use tokio_util::sync::CancellationToken;

use crate::Backend;
use crate::engine::{DriveOutcome, Engine, JobOptions};
use crate::plan::Plan;
use crate::request::*;
use crate::sim::cloud::SimCloud;
use crate::sim::{SimConfig, SimWorld, sim_backend};

pub struct Harness {
    pub dir: tempfile::TempDir,
    pub store: Store,
    pub engine: Engine,
    pub backend: Arc<Backend>,
}

pub fn sample_request(sub: &str, cps: u32, workers: u32) -> ProvisionRequest {
    let recipient = age::x25519::Identity::generate().to_public().to_string();
    let body = sample_body(sub, cps, workers, &"s".repeat(64), &recipient);
    serde_json::from_value(body).expect("sample request")
}

/// The sample request on the customer's own domain at `registrar`.
pub fn byo_api_request(fqdn: &str, registrar: Registrar, token: &str) -> ProvisionRequest {
    let mut req = sample_request("byo", 1, 1);
    req.domain = Domain::ByoApi {
        fqdn: fqdn.into(),
        registrar,
        registrar_token: cz_state::SecretString::new(token),
    };
    req
}

impl Harness {
    pub async fn new() -> Harness {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(StorePaths::in_dir(&dir.path().join("data"))).await.unwrap();
        let backend = Arc::new(sim_backend(
            dir.path().join("sim"),
            dir.path().join("ws"),
            SimConfig::instant(),
        ));
        let ns: Vec<String> = super::dns::NAMESERVERS.iter().map(|s| s.to_string()).collect();
        backend.dns.create_zone("omani.works.", &ns, "").await.unwrap();
        let engine = Engine::new(store.clone(), Arc::new(super::registry()), backend.clone());
        Harness { dir, store, engine, backend }
    }

    pub async fn submit(
        &self,
        req: &ProvisionRequest,
        plan: &Plan,
        options: JobOptions,
    ) -> (SovereignId, JobId) {
        let (sov, job, mut sub) = super::provision_submission(req, &options, "test");
        sub.plan = serde_json::to_value(plan).unwrap();
        self.store.submit(sub).await.unwrap();
        (sov, job)
    }

    /// Submits a job for an existing Sovereign (add-region, destroy).
    pub async fn submit_existing(
        &self,
        sov: SovereignId,
        kind: JobKind,
        request: serde_json::Value,
        plan: &Plan,
        options: JobOptions,
    ) -> JobId {
        let job = JobId::new();
        let status = if kind == JobKind::Destroy {
            cz_state::SovereignStatus::Destroying
        } else {
            cz_state::SovereignStatus::Provisioning
        };
        self.store
            .submit(Submission {
                sovereign: SovereignTarget::Existing { id: sov, status },
                job_id: job,
                kind,
                request,
                plan: serde_json::to_value(plan).unwrap(),
                options: serde_json::to_value(options).unwrap(),
                secrets: Vec::new(),
                idempotency: None,
                response: json!({}),
                audit: NewAudit {
                    actor: "test".into(),
                    action: kind.as_str().into(),
                    job_id: Some(job),
                    sovereign_id: Some(sov),
                    detail: json!({}),
                },
            })
            .await
            .unwrap();
        job
    }

    /// Drives the job until it stops (bounded).
    pub async fn drive(&self, job: JobId) -> JobStatus {
        let fut = self.engine.drive(job, CancellationToken::new());
        let Ok(outcome) = tokio::time::timeout(Duration::from_secs(120), fut).await else {
            let states = self.store.node_states(job).await.unwrap();
            let running: Vec<_> = states.iter().filter(|(_, s)| !s.is_satisfied()).collect();
            let evs = self.store.events_after(job, 0, 100_000).await.unwrap();
            let tail: Vec<_> = evs.iter().rev().take(5).collect();
            panic!(
                "job {job} did not stop within 120 s; unsatisfied steps: {running:?}; last events: {tail:?}"
            );
        };
        let status = match outcome.unwrap() {
            DriveOutcome::Stopped(s) => s,
            DriveOutcome::Interrupted => panic!("not interrupted"),
        };
        if status == JobStatus::Paused {
            let j = self.store.get_job(job).await.unwrap().unwrap();
            eprintln!(
                "job {job} stopped {status}: pause={} error={}",
                j.pause.unwrap_or_default(),
                j.error.unwrap_or_default()
            );
        }
        status
    }

    pub async fn cloud_objects(&self) -> BTreeSet<(String, String)> {
        let cloud = SimCloud::new(Arc::new(SimWorld::new(
            self.dir.path().join("sim"),
            SimConfig::instant(),
        )));
        cloud.all_objects().await.unwrap().into_iter().map(|o| (o.kind, o.name)).collect()
    }

    /// The clean-slate check after an unwind: no cloud object, no zone, no
    /// delegation, no workspace, and no secret but the submitted ones.
    pub async fn assert_clean_slate(
        &self,
        sov: SovereignId,
        req: &ProvisionRequest,
        context: &str,
    ) {
        let objs = self.cloud_objects().await;
        assert!(objs.is_empty(), "{context}: cloud objects left: {objs:?}");
        let zone = format!("{}.", req.fqdn());
        assert!(!self.backend.dns.zone_exists(&zone).await.unwrap(), "{context}: zone left");
        let ns = self.backend.dns.query(&zone, "NS").await.unwrap_or_default();
        assert!(ns.is_empty(), "{context}: delegation left: {ns:?}");
        let ds = self.backend.dns.query(&zone, "DS").await.unwrap_or_default();
        assert!(ds.is_empty(), "{context}: DS left in the parent: {ds:?}");
        let ws = self.dir.path().join("ws").join(sov.to_string());
        let left: Vec<_> = std::fs::read_dir(&ws)
            .map(|d| d.flatten().map(|e| e.path()).collect())
            .unwrap_or_default();
        assert!(left.is_empty(), "{context}: workspaces left: {left:?}");
        let rows = sqlx_free_secret_names(&self.store, sov).await;
        let submitted: Vec<String> = req.secrets().iter().map(|(n, _)| n.to_string()).collect();
        assert_eq!(rows, submitted, "{context}: secrets left");
        // byo-api: the registrar delegates the domain where it did before.
        if let Domain::ByoApi { registrar, registrar_token, .. } = &req.domain {
            let api = self.backend.registrars.connect(*registrar, registrar_token).unwrap();
            let ns = api.get_nameservers(&req.fqdn()).await.unwrap();
            let ours: Vec<String> =
                super::dns::NAMESERVERS.iter().map(|n| crate::registrar::bare(n)).collect();
            assert!(
                !ns.is_empty() && ns.iter().all(|n| !ours.contains(n)),
                "{context}: the registrar was not given back: {ns:?}"
            );
        }
    }
}

/// Secret names of a Sovereign (through the store's public API).
async fn sqlx_free_secret_names(store: &Store, sov: SovereignId) -> Vec<String> {
    let candidates = [
        "cloud_token",
        "registrar_token",
        "k3s-token-fsn1",
        "kubeconfig-fsn1",
        "sealed-secrets-key",
        "sealed-secrets-key.escrow",
        "openbao-root-token",
        "openbao-root-token.escrow",
        "openbao-share-0",
        "openbao-share-0.escrow",
        "tofu-state-archive-fsn1",
    ];
    let mut out = Vec::new();
    for c in candidates {
        if store.get_secret(&sov.to_string(), c).await.unwrap().is_some() {
            out.push(c.to_owned());
        }
    }
    out
}
