//! What the API answers: typed views of store rows, with times as RFC 3339
//! strings, and the job detail derived from the journal and the plan.
//!
//! The job detail is computed on every read from the step journal (folded
//! with the store's own transition function, [`NodeState::next`]) and the
//! stored plan, never from a cache: the journal is the source of truth.

use std::collections::BTreeMap;

use cz_engine::Plan;
use cz_phases::request::FieldError;
use cz_state::{
    AuditEntry, Job, JobEvent, Millis, NodeState, Sovereign, StepEvent, StepEventRecord,
};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use utoipa::ToSchema;

/// Milliseconds since the epoch as RFC 3339 (UTC, millisecond precision).
pub fn rfc3339(ms: Millis) -> String {
    chrono::DateTime::from_timestamp_millis(ms)
        .unwrap_or_default()
        .to_rfc3339_opts(chrono::SecondsFormat::Millis, true)
}

/// `202` answer of a submission.
#[derive(Clone, Debug, Serialize, Deserialize, ToSchema)]
pub struct SubmitResponse {
    pub sovereign_id: String,
    pub job_id: String,
}

/// `422` answer: every problem, each with the path of its field.
#[derive(Clone, Debug, Serialize, Deserialize, ToSchema)]
pub struct ValidationErrors {
    pub errors: Vec<FieldError>,
}

/// Any other error answer.
#[derive(Clone, Debug, Serialize, Deserialize, ToSchema)]
pub struct ErrorBody {
    pub error: ErrorDetail,
}

#[derive(Clone, Debug, Serialize, Deserialize, ToSchema)]
pub struct ErrorDetail {
    pub code: String,
    pub message: String,
}

#[derive(Clone, Debug, Serialize, Deserialize, ToSchema)]
pub struct SovereignView {
    pub id: String,
    pub name: String,
    pub fqdn: String,
    /// `provisioning`, `ready`, `failed`, `destroying` or `destroyed`.
    pub status: String,
    pub created_at: String,
    pub updated_at: String,
}

impl From<&Sovereign> for SovereignView {
    fn from(s: &Sovereign) -> Self {
        SovereignView {
            id: s.id.to_string(),
            name: s.name.clone(),
            fqdn: s.fqdn.clone(),
            status: s.status.to_string(),
            created_at: rfc3339(s.created_at),
            updated_at: rfc3339(s.updated_at),
        }
    }
}

#[derive(Clone, Debug, Serialize, Deserialize, ToSchema)]
pub struct SovereignList {
    pub sovereigns: Vec<SovereignView>,
}

#[derive(Clone, Debug, Serialize, Deserialize, ToSchema)]
pub struct SovereignDetail {
    #[serde(flatten)]
    pub sovereign: SovereignView,
    pub jobs: Vec<JobSummary>,
    /// The organization's name from the provision request (as submitted:
    /// shown escaped).
    pub org_name: Option<String>,
    /// The Kubernetes API, once a kubeconfig was checked against it.
    pub api_endpoint: Option<String>,
    pub dns: Option<DnsView>,
    /// Every region with its nodes (none once destroyed).
    pub regions: Vec<RegionView>,
    pub custody: Option<CustodyView>,
}

/// What the custodians hold for a Sovereign: every escrowed blob, each
/// age-encrypted to one custodian. Nothing here decrypts without a
/// custodian's identity; the daemon holds none.
#[derive(Clone, Debug, Serialize, Deserialize, ToSchema)]
pub struct EscrowView {
    pub sovereign_id: String,
    pub fqdn: String,
    pub items: Vec<EscrowBlob>,
}

/// One escrowed blob.
#[derive(Clone, Debug, Serialize, Deserialize, ToSchema)]
pub struct EscrowBlob {
    /// `openbao-share`, `openbao-recovery-key`, `static-seal-key`,
    /// `sealed-secrets-key` or `admin-kubeconfig`.
    pub kind: String,
    /// The part (0-based); for a whole copy, the custodian's index.
    pub index: u32,
    /// The custodian's index in the request, label and age recipient.
    pub custodian: u32,
    pub label: String,
    pub recipient: String,
    /// How many parts recover the secret, of how many made (1: this blob
    /// alone).
    pub threshold: u8,
    pub parts: u8,
    /// SHA-256 (hex) of the recovered secret or of its public half.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fingerprint: Option<String>,
    pub created_at: String,
    /// The blob: `-----BEGIN AGE ENCRYPTED FILE-----` ... (`age -d -i`).
    pub age: String,
}

impl From<&cz_state::EscrowItem> for EscrowBlob {
    fn from(i: &cz_state::EscrowItem) -> Self {
        EscrowBlob {
            kind: i.kind.clone(),
            index: i.index,
            custodian: i.custodian,
            label: i.label.clone(),
            recipient: i.recipient.clone(),
            threshold: i.threshold,
            parts: i.parts,
            fingerprint: i.fingerprint.clone(),
            created_at: rfc3339(i.created_at),
            age: i.armored.clone(),
        }
    }
}

/// A job row without its plan and journal.
#[derive(Clone, Debug, Serialize, Deserialize, ToSchema)]
pub struct JobSummary {
    pub id: String,
    pub sovereign_id: String,
    /// `provision`, `add-region` or `destroy`.
    pub kind: String,
    /// `pending`, `running`, `paused`, `succeeded`, `failed`, `cancelled`
    /// or `abandoned`.
    pub status: String,
    /// `forward` or `unwinding`.
    pub mode: String,
    /// Why the job is paused: `{step, error: {class, message, remediation,
    /// runbook}}`.
    #[schema(value_type = Option<Object>)]
    pub pause: Option<Value>,
    #[schema(value_type = Option<Object>)]
    pub error: Option<Value>,
    pub created_at: String,
    pub updated_at: String,
    pub finished_at: Option<String>,
    /// The phase a job not yet finished is on (of its newest phase event;
    /// with overlapping phases, the newer one).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub current_phase: Option<String>,
}

impl From<&Job> for JobSummary {
    fn from(j: &Job) -> Self {
        JobSummary {
            id: j.id.to_string(),
            sovereign_id: j.sovereign_id.to_string(),
            kind: j.kind.to_string(),
            status: j.status.to_string(),
            mode: j.mode.to_string(),
            pause: j.pause.clone(),
            error: j.error.clone(),
            created_at: rfc3339(j.created_at),
            updated_at: rfc3339(j.updated_at),
            finished_at: j.finished_at.map(rfc3339),
            current_phase: None,
        }
    }
}

#[derive(Clone, Debug, Serialize, Deserialize, ToSchema)]
pub struct JobList {
    pub jobs: Vec<JobSummary>,
}

/// A step error as the API shows it.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct StepErrorView {
    /// `transient`, `needs-operator` or `terminal`.
    pub class: String,
    pub message: String,
    pub remediation: String,
    /// Path under `runbooks/`.
    pub runbook: String,
}

impl StepErrorView {
    pub fn from_json(v: &Value) -> StepErrorView {
        let s = |k: &str| v.get(k).and_then(Value::as_str).unwrap_or_default().to_owned();
        StepErrorView {
            class: s("class"),
            message: s("message"),
            remediation: s("remediation"),
            runbook: s("runbook"),
        }
    }
}

#[derive(Clone, Debug, Serialize, Deserialize, ToSchema)]
pub struct StepView {
    /// `<phase>/<step>`.
    pub step: String,
    /// The registered action.
    pub action: String,
    /// `pending`, `running`, `succeeded`, `failed`, `skipped`, `undoing`,
    /// `undone` or `undo_failed`.
    pub state: String,
    pub attempts: u32,
    pub started_at: Option<String>,
    pub finished_at: Option<String>,
    pub elapsed_ms: Option<i64>,
    pub error: Option<StepErrorView>,
    /// Who skipped the step and why.
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<Object>)]
    pub skipped: Option<Value>,
    /// A released node: the step that journals it as it learns it (the
    /// apply releases each server as the cloud creates it); no action runs
    /// for it.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub released_by: Option<String>,
}

#[derive(Clone, Debug, Serialize, Deserialize, ToSchema)]
pub struct PhaseView {
    pub phase: String,
    /// `pending`, `running`, `succeeded`, `failed`, `paused`, `undoing`,
    /// `undone`.
    pub state: String,
    pub steps: Vec<StepView>,
}

#[derive(Clone, Debug, Serialize, Deserialize, ToSchema)]
pub struct PhaseProgress {
    pub phase: String,
    pub done: usize,
    pub total: usize,
}

#[derive(Clone, Debug, Serialize, Deserialize, ToSchema)]
pub struct AuditView {
    pub id: i64,
    pub at: String,
    /// The person (a named operator), or the shared token's role.
    pub actor: String,
    /// The verb (`submit`, `retry`, `destroy`, `escrow.read`, ...); a
    /// refused verb is recorded as `<verb>.refused`.
    pub action: String,
    /// The target: the job and the Sovereign.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub job_id: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sovereign_id: Option<String>,
    #[schema(value_type = Object)]
    pub detail: Value,
}

/// The audit trail (`GET /v1/audit`).
#[derive(Clone, Debug, Serialize, Deserialize, ToSchema)]
pub struct AuditList {
    pub entries: Vec<AuditView>,
}

impl From<&AuditEntry> for AuditView {
    fn from(a: &AuditEntry) -> Self {
        AuditView {
            id: a.id,
            at: rfc3339(a.at),
            actor: a.actor.clone(),
            action: a.action.clone(),
            job_id: a.job_id.map(|j| j.to_string()),
            sovereign_id: a.sovereign_id.map(|s| s.to_string()),
            detail: a.detail.clone(),
        }
    }
}

/// A job with its phases, steps, progress and audit trail.
#[derive(Clone, Debug, Serialize, Deserialize, ToSchema)]
pub struct JobDetail {
    #[serde(flatten)]
    pub job: JobSummary,
    /// The request as stored: every secret removed.
    #[schema(value_type = Object)]
    pub request: Value,
    pub phases: Vec<PhaseView>,
    pub progress: Vec<PhaseProgress>,
    /// The pre-flight cost preview (EUR, monthly and hourly, per region,
    /// from the cloud API's prices), once computed.
    #[schema(value_type = Option<Object>)]
    pub cost: Option<Value>,
    pub audit: Vec<AuditView>,
    /// The id of the job's newest event (0: none yet): where a reader of
    /// the newest page of `/events` starts.
    pub last_event_id: i64,
    /// Every server of the job's cluster phase, with how far it got.
    pub nodes: Vec<NodeView>,
}

/// One server of a cluster: its address and how far its bring-up got.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct NodeView {
    /// `<location>-cp1`, `<location>-w3`, ...
    pub name: String,
    pub location: String,
    /// `control-plane` or `worker`.
    pub role: String,
    /// `pending`, then `created` (the cloud made it), `reachable` (its SSH
    /// host key is pinned), `joined` (K3s installed and joined) and
    /// `ready` (the region's nodes verified Ready).
    pub stage: String,
    /// The step after `stage` failed (the job paused or failed there).
    pub failed: bool,
    pub ipv4: Option<String>,
    pub private_ip: Option<String>,
}

/// One region of a Sovereign, from its provision and add-region jobs.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct RegionView {
    pub location: String,
    /// The region's load balancer (the API and ingress address).
    pub load_balancer: Option<String>,
    pub nodes: Vec<NodeView>,
}

/// The Sovereign's DNS, as its jobs left it.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct DnsView {
    /// `pending`, `reserved` (zone made and delegated), `records-written`
    /// or `propagated` (every public resolver answers).
    pub state: String,
    pub records: Vec<DnsRecordView>,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct DnsRecordView {
    pub name: String,
    #[serde(rename = "type")]
    pub rtype: String,
    pub content: String,
}

/// The custody of a Sovereign's keys: who holds which part. Never a
/// secret, never a blob (those come only from the audited escrow read).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct CustodyView {
    /// Parts needed of parts made (of the OpenBao unseal shares, else of
    /// the sealing key).
    pub threshold: u8,
    pub parts: u8,
    /// OpenBao's seal as the last job saw it: `unsealed`, `sealed`
    /// (initialised, not yet unsealed) or `unknown`.
    pub seal: String,
    pub custodians: Vec<CustodianView>,
    pub items: Vec<CustodyItemView>,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct CustodianView {
    pub index: u32,
    pub label: String,
    /// The custodian's age recipient (a public key).
    pub recipient: String,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct CustodyItemView {
    pub kind: String,
    pub index: u32,
    pub custodian: u32,
    pub label: String,
    pub fingerprint: Option<String>,
    pub created_at: String,
    /// Whether an operator fetched the escrow since this part was made,
    /// who last did and when (from the audit trail).
    pub retrieved: bool,
    pub retrieved_by: Option<String>,
    pub retrieved_at: Option<String>,
}

/// One event of a job's stream (also each SSE `data:`).
#[derive(Clone, Debug, Serialize, Deserialize, ToSchema)]
pub struct EventView {
    pub id: i64,
    pub at: String,
    /// `job`, `phase`, `step`, `cost`, `tofu`, `wait`, `log`, `operator`,
    /// `end`, …; the other fields depend on it.
    pub kind: String,
    #[serde(flatten)]
    #[schema(value_type = Object)]
    pub body: Map<String, Value>,
}

impl From<&JobEvent> for EventView {
    fn from(e: &JobEvent) -> Self {
        let mut body = match &e.body {
            Value::Object(m) => m.clone(),
            Value::Null => Map::new(),
            other => Map::from_iter([("body".to_owned(), other.clone())]),
        };
        // The envelope's fields win; a body field of the same name is kept
        // under `body_<name>` rather than silently dropped.
        for k in ["id", "at", "kind"] {
            if let Some(v) = body.remove(k) {
                body.insert(format!("body_{k}"), v);
            }
        }
        EventView { id: e.id, at: rfc3339(e.at), kind: e.kind.clone(), body }
    }
}

/// One Server-Sent Events frame of `GET /v1/jobs/{id}/events`: `id` is
/// the event's id (gap-free per job), `event` its kind, `data` the event
/// as JSON (an `EventView`).
#[derive(Debug, Serialize, ToSchema)]
pub struct SseFrame {
    #[schema(pattern = "^[0-9]+$")]
    pub id: String,
    pub event: String,
    pub data: String,
}

#[derive(Clone, Debug, Serialize, Deserialize, ToSchema)]
pub struct EventPage {
    pub events: Vec<EventView>,
    /// Pass as `?after=` to get the next page.
    pub next_after: i64,
}

/// Verb answer.
#[derive(Clone, Debug, Serialize, Deserialize, ToSchema)]
pub struct VerbResponse {
    pub job_id: String,
    pub action: String,
    /// The job's status after the verb.
    pub status: String,
}

// === job detail from journal + plan ===

#[derive(Default)]
struct Fold {
    state: NodeState,
    started_at: Option<Millis>,
    finished_at: Option<Millis>,
}

/// Folds a journal into per-step state and timings.
fn fold(journal: &[StepEventRecord]) -> BTreeMap<&str, Fold> {
    let mut out: BTreeMap<&str, Fold> = BTreeMap::new();
    for r in journal {
        let f = out.entry(r.node.as_str()).or_default();
        match f.state.next(&r.event) {
            Ok(s) => f.state = s,
            Err(e) => {
                // The store checked it on write; a refusal here means a newer
                // event kind than this binary knows. Show what we have.
                tracing::warn!(step = %r.node, error = &e as &dyn std::error::Error, "Journal event does not fold.");
                continue;
            }
        }
        match &r.event {
            StepEvent::Started { attempt } => {
                if *attempt <= 1 || f.started_at.is_none() {
                    f.started_at = Some(r.at);
                }
                f.finished_at = None;
            }
            StepEvent::UndoStarted => {
                f.finished_at = None;
            }
            StepEvent::Retried { .. } => {
                f.started_at = None;
                f.finished_at = None;
            }
            StepEvent::Succeeded { .. }
            | StepEvent::Failed { .. }
            | StepEvent::Skipped { .. }
            | StepEvent::UndoFinished
            | StepEvent::UndoFailed { .. } => f.finished_at = Some(r.at),
            StepEvent::AttemptFailed { .. } => {}
        }
    }
    out
}

fn phase_state(steps: &[StepView]) -> &'static str {
    let any = |s: &str| steps.iter().any(|x| x.state == s);
    let all = |f: &dyn Fn(&str) -> bool| steps.iter().all(|x| f(&x.state));
    if any("undo_failed") || any("failed") {
        "failed"
    } else if any("undoing") {
        "undoing"
    } else if any("running") {
        "running"
    } else if all(&|s| s == "succeeded" || s == "skipped") {
        "succeeded"
    } else if any("undone") && all(&|s| s == "undone" || s == "pending") {
        "undone"
    } else if any("succeeded") || any("skipped") {
        "running"
    } else {
        "pending"
    }
}

/// A step's output, if it succeeded.
fn output_of<'a>(folded: &'a BTreeMap<&str, Fold>, step: &str) -> Option<&'a Value> {
    match folded.get(step).map(|f| &f.state) {
        Some(NodeState::Succeeded { output, .. }) => Some(output),
        _ => None,
    }
}

fn state_of<'a>(folded: &'a BTreeMap<&str, Fold>, step: &str) -> &'a str {
    folded.get(step).map(|f| f.state.name()).unwrap_or("pending")
}

/// Whether a step is done, as the engine counts it (succeeded or skipped).
fn satisfied(folded: &BTreeMap<&str, Fold>, step: &str) -> bool {
    folded.get(step).is_some_and(|f| f.state.is_satisfied())
}

/// The regions of a job's cluster phase, each server with its address
/// and stage, from the plan (`cluster/ssh-<server>` names every server)
/// and the journal.
fn cluster_of(plan: &Plan, folded: &BTreeMap<&str, Fold>) -> Vec<RegionView> {
    let Some(cluster) = plan.phases.iter().find(|p| p.id == "cluster") else {
        return Vec::new();
    };
    let mut regions: Vec<RegionView> = Vec::new();
    for n in &cluster.nodes {
        let Some(server) = n.id.strip_prefix("cluster/ssh-") else { continue };
        let text = |k: &str| n.params.get(k).and_then(Value::as_str).unwrap_or_default().to_owned();
        let location = text("location");
        let outputs = output_of(folded, &format!("infra/outputs-{location}"));
        // The released node's output is the server; an older plan has only
        // the region's outputs.
        let found = output_of(folded, &format!("infra/server-{server}")).cloned().or_else(|| {
            outputs.and_then(|o| o["servers"].as_array()).and_then(|all| {
                all.iter()
                    .find(|s| {
                        s["name"]
                            .as_str()
                            .is_some_and(|n| n == server || n.ends_with(&format!("-{server}")))
                    })
                    .cloned()
            })
        });
        let ladder = [
            ("created", format!("infra/server-{server}")),
            ("reachable", format!("cluster/ssh-{server}")),
            ("joined", format!("cluster/k3s-{server}")),
            ("ready", format!("cluster/verify-{location}")),
        ];
        let mut stage = "pending";
        let mut failed = false;
        for (name, step) in &ladder {
            // An older plan has no released server node: its outputs say.
            let older = *name == "created" && state_of(folded, step) == "pending";
            if !(satisfied(folded, step) || older && found.is_some()) {
                failed = matches!(state_of(folded, step), "failed" | "undo_failed");
                break;
            }
            stage = name;
        }
        let addr = |k: &str| {
            found.as_ref().and_then(|s| s[k].as_str()).filter(|v| !v.is_empty()).map(str::to_owned)
        };
        let node = NodeView {
            name: server.to_owned(),
            location: location.clone(),
            role: text("role"),
            stage: stage.to_owned(),
            failed,
            ipv4: addr("ipv4"),
            private_ip: addr("private_ip"),
        };
        match regions.iter_mut().find(|r| r.location == location) {
            Some(r) => r.nodes.push(node),
            None => {
                let load_balancer = output_of(folded, &format!("infra/load-balancer-{location}"))
                    .or_else(|| outputs.map(|o| &o["load_balancer"]))
                    .and_then(|l| l["ipv4"].as_str())
                    .map(str::to_owned);
                regions.push(RegionView { location, load_balancer, nodes: vec![node] })
            }
        }
    }
    regions
}

/// What a Sovereign's page shows of one of its jobs (its regions, DNS and
/// seal), folded from that job's journal.
#[derive(Default)]
pub struct JobFacts {
    pub regions: Vec<RegionView>,
    pub kubeconfig_checked: bool,
    pub dns: Option<DnsView>,
    /// `unsealed`, `sealed` or none (the job did not get that far).
    pub seal: Option<String>,
}

/// The facts of one job (see [`JobFacts`]).
pub fn job_facts(job: &Job, journal: &[StepEventRecord]) -> JobFacts {
    let plan: Plan = serde_json::from_value(job.plan.clone()).unwrap_or_default();
    let folded = fold(journal);
    let regions = cluster_of(&plan, &folded);
    let kubeconfig_checked = regions
        .iter()
        .any(|r| state_of(&folded, &format!("cluster/kubeconfig-{}", r.location)) == "succeeded");
    let has = |phase: &str| plan.phases.iter().any(|p| p.id == phase);
    let dns = (has("dns-reserve") || has("dns-commit")).then(|| {
        let records: Vec<DnsRecordView> = output_of(&folded, "dns-commit/records")
            .and_then(|o| o["rrsets"].as_array())
            .map(|sets| {
                sets.iter()
                    .flat_map(|r| {
                        let name = r["name"].as_str().unwrap_or_default().to_owned();
                        let rtype = r["rtype"].as_str().unwrap_or_default().to_owned();
                        r["records"].as_array().cloned().unwrap_or_default().into_iter().map(
                            move |c| DnsRecordView {
                                name: name.clone(),
                                rtype: rtype.clone(),
                                content: c.as_str().unwrap_or_default().to_owned(),
                            },
                        )
                    })
                    .collect()
            })
            .unwrap_or_default();
        let phase_done = |phase: &str| {
            let phase = plan.phases.iter().find(|p| p.id == phase);
            phase.is_some_and(|p| p.nodes.iter().all(|n| satisfied(&folded, &n.id)))
        };
        let state = if state_of(&folded, "dns-commit/propagation") == "succeeded" {
            "propagated"
        } else if state_of(&folded, "dns-commit/records") == "succeeded" {
            "records-written"
        } else if has("dns-reserve") && phase_done("dns-reserve") {
            "reserved"
        } else {
            "pending"
        };
        DnsView { state: state.to_owned(), records }
    });
    let unseals: Vec<&str> = plan
        .phases
        .iter()
        .filter(|p| p.id == "secrets-handoff" || p.id == "secrets-join")
        .flat_map(|p| p.nodes.iter())
        .filter(|n| n.action.ends_with(".unseal") || n.id.contains("/unseal-"))
        .map(|n| n.id.as_str())
        .collect();
    let seal = if !unseals.is_empty() && unseals.iter().all(|u| state_of(&folded, u) == "succeeded")
    {
        Some("unsealed".to_owned())
    } else if state_of(&folded, "secrets-handoff/init") == "succeeded" {
        Some("sealed".to_owned())
    } else {
        None
    };
    JobFacts { regions, kubeconfig_checked, dns, seal }
}

/// The detail view of a job.
pub fn job_detail(job: &Job, journal: &[StepEventRecord], audit: &[AuditEntry]) -> JobDetail {
    let plan: Plan = serde_json::from_value(job.plan.clone()).unwrap_or_default();
    let folded = fold(journal);
    let mut phases = Vec::new();
    let mut progress = Vec::new();
    for p in &plan.phases {
        let steps: Vec<StepView> = p
            .nodes
            .iter()
            .map(|n| {
                let f = folded.get(n.id.as_str());
                let state = f.map(|f| f.state.clone()).unwrap_or_default();
                let error = match &state {
                    NodeState::Failed { error, .. } | NodeState::UndoFailed { error, .. } => {
                        Some(StepErrorView::from_json(error))
                    }
                    NodeState::Running { last_error: Some(error), .. } => {
                        Some(StepErrorView::from_json(error))
                    }
                    _ => None,
                };
                let skipped = match &state {
                    NodeState::Skipped { by, reason } => {
                        Some(serde_json::json!({ "by": by, "reason": reason }))
                    }
                    _ => None,
                };
                let started = f.and_then(|f| f.started_at);
                let finished = f.and_then(|f| f.finished_at);
                StepView {
                    step: n.id.clone(),
                    action: n.action.clone(),
                    state: state.name().to_owned(),
                    attempts: state.attempts(),
                    started_at: started.map(rfc3339),
                    finished_at: finished.map(rfc3339),
                    elapsed_ms: started.zip(finished).map(|(s, e)| e - s),
                    error,
                    skipped,
                    released_by: n.released_by.clone(),
                }
            })
            .collect();
        let done = steps.iter().filter(|s| s.state == "succeeded" || s.state == "skipped").count();
        progress.push(PhaseProgress { phase: p.id.clone(), done, total: steps.len() });
        let mut state = phase_state(&steps);
        if state == "failed"
            && job.status == cz_state::JobStatus::Paused
            && steps.iter().any(|s| s.error.as_ref().is_some_and(|e| e.class != "terminal"))
        {
            state = "paused";
        }
        phases.push(PhaseView { phase: p.id.clone(), state: state.to_owned(), steps });
    }
    let cost = output_of(&folded, "preflight/cost-preview").cloned();
    let nodes = cluster_of(&plan, &folded).into_iter().flat_map(|r| r.nodes).collect();
    JobDetail {
        job: JobSummary::from(job),
        request: job.request.clone(),
        phases,
        progress,
        cost,
        audit: audit.iter().map(AuditView::from).collect(),
        last_event_id: 0,
        nodes,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fold_tracks_times_and_retries() {
        let rec =
            |seq, node: &str, event, at| StepEventRecord { seq, node: node.into(), event, at };
        let j = vec![
            rec(1, "a/x", StepEvent::Started { attempt: 1 }, 100),
            rec(
                2,
                "a/x",
                StepEvent::Failed { error: serde_json::json!({"class": "terminal"}) },
                150,
            ),
            rec(3, "a/x", StepEvent::Retried { by: "op".into() }, 200),
            rec(4, "a/x", StepEvent::Started { attempt: 2 }, 300),
            rec(5, "a/x", StepEvent::Succeeded { output: Value::Null }, 350),
        ];
        let f = fold(&j);
        let x = &f["a/x"];
        assert_eq!(x.state.name(), "succeeded");
        assert_eq!((x.started_at, x.finished_at), (Some(300), Some(350)));
    }

    /// A plan from before released nodes: addresses come from the region's
    /// outputs, the stage stops at the failed step and says so.
    #[test]
    fn nodes_of_an_older_plan_come_from_the_region_outputs() {
        use cz_state::{JobId, JobKind, JobMode, JobStatus, SovereignId};
        let node = |id: &str, params: Value| serde_json::json!({ "id": id, "action": "x", "params": params });
        let cp1 = serde_json::json!({ "location": "fsn1", "suffix": "fsn1-cp1", "role": "control-plane" });
        let w1 = serde_json::json!({ "location": "fsn1", "suffix": "fsn1-w1", "role": "worker" });
        let plan = serde_json::json!({ "phases": [
            { "id": "infra", "nodes": [node("infra/outputs-fsn1", serde_json::json!({ "location": "fsn1" }))] },
            { "id": "cluster", "nodes": [
                node("cluster/ssh-fsn1-cp1", cp1.clone()), node("cluster/k3s-fsn1-cp1", cp1),
                node("cluster/ssh-fsn1-w1", w1.clone()), node("cluster/k3s-fsn1-w1", w1),
                node("cluster/verify-fsn1", serde_json::json!({ "location": "fsn1" })) ] } ] });
        let job = Job {
            id: JobId::new(),
            sovereign_id: SovereignId::new(),
            kind: JobKind::Provision,
            status: JobStatus::Paused,
            mode: JobMode::Forward,
            request: Value::Null,
            plan,
            options: Value::Null,
            pause: None,
            error: None,
            created_at: 0,
            updated_at: 0,
            finished_at: None,
        };
        let outputs = serde_json::json!({ "location": "fsn1", "workspace": "/w",
            "servers": [
                { "name": "acme-fsn1-cp1", "id": 1, "role": "control-plane", "ipv4": "203.0.113.3", "private_ip": "10.0.1.3" },
                { "name": "acme-fsn1-w1", "id": 2, "role": "worker", "ipv4": "203.0.113.4", "private_ip": null } ],
            "load_balancer": { "id": 9, "ipv4": "203.0.113.2" } });
        let mut seq = 0;
        let mut rec = |node: &str, event| {
            seq += 1;
            StepEventRecord { seq, node: node.into(), event, at: seq }
        };
        let ok = |output| StepEvent::Succeeded { output };
        let journal = vec![
            rec("infra/outputs-fsn1", StepEvent::Started { attempt: 1 }),
            rec("infra/outputs-fsn1", ok(outputs)),
            rec("cluster/ssh-fsn1-cp1", StepEvent::Started { attempt: 1 }),
            rec("cluster/ssh-fsn1-cp1", ok(Value::Null)),
            rec("cluster/k3s-fsn1-cp1", StepEvent::Started { attempt: 1 }),
            rec("cluster/k3s-fsn1-cp1", ok(Value::Null)),
            rec("cluster/ssh-fsn1-w1", StepEvent::Started { attempt: 1 }),
            rec(
                "cluster/ssh-fsn1-w1",
                StepEvent::Failed { error: serde_json::json!({ "class": "needs-operator" }) },
            ),
        ];
        let facts = job_facts(&job, &journal);
        assert_eq!(facts.regions.len(), 1);
        let r = &facts.regions[0];
        assert_eq!(r.load_balancer.as_deref(), Some("203.0.113.2"));
        let (cp, w) = (&r.nodes[0], &r.nodes[1]);
        assert_eq!((cp.stage.as_str(), cp.failed), ("joined", false));
        assert_eq!(cp.private_ip.as_deref(), Some("10.0.1.3"));
        assert_eq!((w.stage.as_str(), w.failed), ("created", true));
        assert_eq!((w.ipv4.as_deref(), w.private_ip.as_deref()), (Some("203.0.113.4"), None));
        assert_eq!(w.role, "worker");
        assert!(facts.dns.is_none() && facts.seal.is_none() && !facts.kubeconfig_checked);
    }

    #[test]
    fn rfc3339_is_utc_millis() {
        assert_eq!(rfc3339(0), "1970-01-01T00:00:00.000Z");
    }
}
