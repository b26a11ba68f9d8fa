//! The toy step environment: a world of named things (`name → value`), a
//! log of every action call, and knobs making a step's do or undo fail
//! with a chosen error a number of times. A world may live in a JSON file
//! (written atomically) so that two processes driving one job see it.
//!
//! The toy plan has two phases: `base` is `net`, then `disk` and `ip` in
//! parallel, then `vm` joining them (its value sums theirs, read from
//! their outputs); `app` is `config`, then `service` (`vm` + `config`).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use cz_engine::testing::Rig;
use cz_engine::{
    ActionId, Cause, JobOptions, PhaseBuilder, Plan, Registry, RetryPolicy, StepCtx, StepEnv,
    StepError, StepResult, System, action, no_undo,
};
use cz_state::{
    JobId, JobKind, NewAudit, NodeState, SovereignId, SovereignTarget, StepEvent, Submission,
};
use serde::{Deserialize, Serialize};
use serde_json::json;

pub const NET: &str = "base/net";
pub const DISK: &str = "base/disk";
pub const IP: &str = "base/ip";
pub const VM: &str = "base/vm";
pub const CONFIG: &str = "app/config";
pub const SERVICE: &str = "app/service";
/// Every step of the toy plan, in plan order.
pub const STEPS: [&str; 6] = [NET, DISK, IP, VM, CONFIG, SERVICE];

/// What the world holds.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct State {
    /// Things that exist, by name.
    pub things: BTreeMap<String, i64>,
    /// How many times each thing came into being.
    pub created: BTreeMap<String, u32>,
    /// Every action call, in order: `create:net`, `delete:net`, `bump:n`.
    pub calls: Vec<String>,
}

/// The step environment.
pub struct World {
    state: Mutex<State>,
    /// Where the state lives, when it is shared between processes.
    file: Option<PathBuf>,
    /// `do:<node>` / `undo:<node>` → the error to fail with, and how often.
    failures: Mutex<BTreeMap<String, (StepError, u32)>>,
    /// How long a creating step holds on after its effect (a slow step).
    hold: Duration,
}

impl StepEnv for World {
    fn poll_interval(&self) -> Duration {
        Duration::from_millis(1)
    }
}

impl World {
    pub fn new() -> World {
        World {
            state: Mutex::default(),
            file: None,
            failures: Mutex::default(),
            hold: Duration::ZERO,
        }
    }

    /// An in-memory world whose creating steps hold on for `hold`.
    pub fn holding(hold: Duration) -> World {
        World { hold, ..World::new() }
    }

    /// A world kept in `file`, read before and written after every change.
    pub fn in_file(file: &Path, hold: Duration) -> World {
        World { file: Some(file.to_owned()), hold, ..World::new() }
    }

    /// Runs `f` on the state (re-read from the file, written back if changed).
    fn with<T>(&self, f: impl FnOnce(&mut State) -> T) -> T {
        let mut state = self.state.lock().expect("world lock");
        if let Some(file) = &self.file {
            *state = match std::fs::read(file) {
                Ok(bytes) => serde_json::from_slice(&bytes).expect("the world file decodes"),
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => State::default(),
                Err(e) => panic!("reading {}: {e}", file.display()),
            };
        }
        let before = self.file.as_ref().map(|_| state.clone());
        let out = f(&mut state);
        // A reader never writes: the other process may be changing the file.
        if let (Some(file), Some(before)) = (&self.file, before)
            && *state != before
        {
            let tmp = file.with_extension("tmp");
            std::fs::write(&tmp, serde_json::to_vec(&*state).expect("state encodes")).unwrap();
            std::fs::rename(&tmp, file).unwrap();
        }
        out
    }

    /// The next `times` runs of `node`'s do fail with `error`.
    pub fn fail_do(&self, node: &str, error: StepError, times: u32) {
        self.failures.lock().unwrap().insert(format!("do:{node}"), (error, times));
    }

    /// The next `times` runs of `node`'s undo fail with `error`.
    pub fn fail_undo(&self, node: &str, error: StepError, times: u32) {
        self.failures.lock().unwrap().insert(format!("undo:{node}"), (error, times));
    }

    fn take_failure(&self, key: &str) -> Option<StepError> {
        let mut failures = self.failures.lock().unwrap();
        let (error, left) = failures.get_mut(key)?;
        if *left == 0 {
            return None;
        }
        *left -= 1;
        Some(error.clone())
    }

    pub fn snapshot(&self) -> State {
        self.with(|s| s.clone())
    }

    pub fn things(&self) -> BTreeMap<String, i64> {
        self.snapshot().things
    }

    pub fn calls(&self) -> Vec<String> {
        self.snapshot().calls
    }

    /// How many times `call` (e.g. `create:net`) was made.
    pub fn count(&self, call: &str) -> usize {
        self.calls().iter().filter(|c| *c == call).count()
    }

    /// The calls starting with `prefix` (e.g. `delete:`), in order.
    pub fn calls_of(&self, prefix: &str) -> Vec<String> {
        self.calls().into_iter().filter(|c| c.starts_with(prefix)).collect()
    }

    /// Logs the call, fails if a knob says so, else applies `effect`.
    fn call(
        &self,
        kind: &str,
        cx: &StepCtx<World>,
        name: &str,
        effect: impl FnOnce(&mut State) -> StepResult<()>,
    ) -> StepResult<()> {
        self.with(|s| {
            s.calls.push(format!("{kind}:{name}"));
            let knob = if kind == "delete" { "undo" } else { "do" };
            if let Some(e) = self.take_failure(&format!("{knob}:{}", cx.node)) {
                return Err(e);
            }
            effect(s)
        })
    }

    /// Creates `name` with `value` for the step `cx` (logged, knobs apply).
    pub fn make_thing(&self, cx: &StepCtx<World>, name: &str, value: i64) -> StepResult<Made> {
        self.make(cx, name, value)
    }

    /// Removes `name` (logged as `delete:<name>`); already gone is done.
    pub fn remove(&self, name: &str) {
        self.with(|s| {
            s.calls.push(format!("delete:{name}"));
            s.things.remove(name);
        })
    }

    /// Creates `name` with `value`; done already is done.
    fn make(&self, cx: &StepCtx<World>, name: &str, value: i64) -> StepResult<Made> {
        self.call("create", cx, name, |s| match s.things.get(name) {
            Some(v) if *v == value => Ok(()),
            Some(v) => Err(StepError::adapter(
                System::Cloud,
                "create",
                Cause::Conflict,
                format!("`{name}` exists with value {v}"),
            )),
            None => {
                s.things.insert(name.to_owned(), value);
                *s.created.entry(name.to_owned()).or_default() += 1;
                Ok(())
            }
        })?;
        Ok(Made { name: name.to_owned(), value })
    }
}

// --- actions -------------------------------------------------------------

/// Params of `toy.create`: the thing to make.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Thing {
    pub name: String,
    pub value: i64,
}

/// Params of `toy.sum`: a thing whose value is the sum of earlier outputs.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Sum {
    pub name: String,
    pub of: Vec<String>,
}

/// Params of `toy.bump`, and what every undo reads.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Named {
    pub name: String,
}

/// The output of a creating step.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Made {
    pub name: String,
    pub value: i64,
}

pub const CREATE: ActionId<Thing> = ActionId::new("toy.create");
pub const SUM: ActionId<Sum> = ActionId::new("toy.sum");
/// Not idempotent: adds one each time it runs.
pub const BUMP: ActionId<Named> = ActionId::new("toy.bump");
/// Creates, and forgets to undo.
pub const LEAK: ActionId<Thing> = ActionId::new("toy.leak");

async fn create(cx: &StepCtx<World>) -> StepResult<Made> {
    let t: Thing = cx.params()?;
    let made = cx.env.make(cx, &t.name, t.value)?;
    tokio::time::sleep(cx.env.hold).await;
    Ok(made)
}

async fn sum(cx: &StepCtx<World>) -> StepResult<Made> {
    let p: Sum = cx.params()?;
    let mut value = 0;
    for node in &p.of {
        value += cx.lookup::<Made>(node)?.value;
    }
    let made = cx.env.make(cx, &p.name, value)?;
    tokio::time::sleep(cx.env.hold).await;
    Ok(made)
}

async fn bump(cx: &StepCtx<World>) -> StepResult<()> {
    let p: Named = cx.params()?;
    cx.env.call("bump", cx, &p.name, |s| {
        *s.things.entry(p.name.clone()).or_default() += 1;
        Ok(())
    })
}

/// Removes the thing; already gone is done.
async fn delete(cx: &StepCtx<World>) -> StepResult<()> {
    let p: Named = cx.params()?;
    cx.env.call("delete", cx, &p.name, |s| {
        s.things.remove(&p.name);
        Ok(())
    })
}

pub fn registry() -> Registry<World> {
    let mut r = Registry::new();
    r.register(CREATE, action!(create, delete));
    r.register(SUM, action!(sum, delete));
    r.register(BUMP, action!(bump, delete));
    r.register(LEAK, action!(create, no_undo));
    r
}

// --- the plan ------------------------------------------------------------

fn thing(name: &str, value: i64) -> Thing {
    Thing { name: name.to_owned(), value }
}

fn sum_of(name: &str, of: &[&str]) -> Sum {
    Sum { name: name.to_owned(), of: of.iter().map(|s| s.to_string()).collect() }
}

/// The toy plan (see the module doc).
pub fn plan() -> Plan {
    let mut base = PhaseBuilder::new("base");
    base.step("net", CREATE, &[], thing("net", 1));
    base.step("disk", CREATE, &["net"], thing("disk", 2));
    base.step("ip", CREATE, &["net"], thing("ip", 3));
    base.step("vm", SUM, &["disk", "ip"], sum_of("vm", &[DISK, IP]));
    let mut app = PhaseBuilder::new("app");
    app.step("config", CREATE, &[], thing("config", 4));
    app.step("service", SUM, &["config"], sum_of("service", &[VM, CONFIG]));
    Plan { phases: vec![base.build(), app.build()] }
}

/// What the world holds after the toy plan ran.
pub fn full_world() -> BTreeMap<String, i64> {
    [("net", 1), ("disk", 2), ("ip", 3), ("vm", 5), ("config", 4), ("service", 9)]
        .into_iter()
        .map(|(k, v)| (k.to_owned(), v))
        .collect()
}

// --- rigs and jobs -------------------------------------------------------

/// A store and engine in a temporary directory over an in-memory world.
pub async fn rig() -> Rig<World> {
    Rig::new(Arc::new(registry()), |_| World::new()).await
}

/// Options with retries fast enough for tests.
pub fn fast() -> JobOptions {
    JobOptions { retry: tiny_retry(4), ..Default::default() }
}

pub fn tiny_retry(max_attempts: u32) -> RetryPolicy {
    RetryPolicy { max_attempts, min_delay_ms: 1, max_delay_ms: 5 }
}

/// Stores a job running `plan` under `options`, for a new Sovereign.
pub async fn submit(rig: &Rig<World>, plan: &Plan, options: JobOptions) -> (SovereignId, JobId) {
    let (sovereign, job) = (SovereignId::new(), JobId::new());
    let sub = Submission {
        sovereign: SovereignTarget::New {
            id: sovereign,
            name: format!("toy-{job}"),
            fqdn: format!("{job}.toy.test"),
        },
        job_id: job,
        kind: JobKind::Provision,
        request: json!({ "toy": true }),
        plan: serde_json::to_value(plan).unwrap(),
        options: serde_json::to_value(options).unwrap(),
        secrets: Vec::new(),
        idempotency: None,
        response: json!({}),
        audit: NewAudit {
            actor: "test".into(),
            action: "submit".into(),
            job_id: Some(job),
            sovereign_id: Some(sovereign),
            detail: json!({}),
        },
    };
    (sovereign, rig.submit(sub).await)
}

/// Submits the toy plan under `options`.
pub async fn submit_toy(rig: &Rig<World>, options: JobOptions) -> JobId {
    submit(rig, &plan(), options).await.1
}

/// A node's derived state.
pub async fn state(rig: &Rig<World>, job: JobId, node: &str) -> NodeState {
    rig.store.node_states(job).await.unwrap().get(node).cloned().unwrap_or_default()
}

/// How many `started` events the journal holds for `node`.
pub async fn starts(rig: &Rig<World>, job: JobId, node: &str) -> usize {
    let journal = rig.store.journal(job).await.unwrap();
    journal
        .iter()
        .filter(|r| r.node == node && matches!(r.event, StepEvent::Started { .. }))
        .count()
}

/// A transient error.
pub fn unavailable() -> StepError {
    StepError::adapter(System::Cloud, "create", Cause::Unavailable, "503 from the toy cloud")
}

/// A needs-operator error with its own remediation.
pub fn precondition() -> StepError {
    StepError::Precondition {
        message: "the toy is not ready".into(),
        remediation: "Make the toy ready, then `retry`.".into(),
    }
}

/// A terminal error.
pub fn invalid() -> StepError {
    StepError::adapter(System::Cloud, "create", Cause::Invalid, "the toy size is invalid")
}
