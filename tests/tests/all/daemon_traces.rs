//! Traces, end to end: the real binary, configured only by the standard
//! `OTEL_*` variables, exports a sim run's spans over OTLP/HTTP to a
//! receiver in this test. One `job` span; one `phase` span per phase, its
//! child; one `step` span per step attempt, a child of its phase; `adapter`
//! spans inside steps; one trace id, which the daemon's JSON log lines of
//! the job carry too.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::Router;
use axum::body::Bytes;
use axum::extract::State;
use axum::routing::post;
use cz_testkit::daemon::{Api, Daemon};
use cz_testkit::requests::request;
use serde_json::{Value, json};

type Received = Arc<Mutex<Vec<Value>>>;

/// An OTLP/HTTP receiver (JSON encoding) on a loopback port.
async fn receiver() -> (std::net::SocketAddr, Received) {
    async fn traces(State(got): State<Received>, body: Bytes) -> axum::Json<Value> {
        let v: Value = serde_json::from_slice(&body).expect("an OTLP/JSON export request");
        got.lock().unwrap().push(v);
        axum::Json(json!({}))
    }
    let got: Received = Arc::default();
    let app = Router::new().route("/v1/traces", post(traces)).with_state(got.clone());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    (addr, got)
}

#[derive(Debug, Clone)]
struct Span {
    trace: String,
    id: String,
    parent: String,
    name: String,
    attrs: BTreeMap<String, String>,
}

fn spans(exports: &[Value]) -> (Vec<Span>, BTreeSet<String>) {
    let mut out = Vec::new();
    let mut services = BTreeSet::new();
    for e in exports {
        for rs in e["resourceSpans"].as_array().into_iter().flatten() {
            for a in rs["resource"]["attributes"].as_array().into_iter().flatten() {
                if a["key"] == "service.name" {
                    services.insert(a["value"]["stringValue"].as_str().unwrap_or("").to_owned());
                }
            }
            for ss in rs["scopeSpans"].as_array().into_iter().flatten() {
                for s in ss["spans"].as_array().into_iter().flatten() {
                    let attrs = s["attributes"]
                        .as_array()
                        .into_iter()
                        .flatten()
                        .map(|a| {
                            let v = &a["value"];
                            let text = v["stringValue"]
                                .as_str()
                                .map(str::to_owned)
                                .or_else(|| v["intValue"].as_str().map(str::to_owned))
                                .unwrap_or_else(|| v["intValue"].to_string());
                            (a["key"].as_str().unwrap().to_owned(), text)
                        })
                        .collect();
                    out.push(Span {
                        trace: s["traceId"].as_str().unwrap_or("").to_owned(),
                        id: s["spanId"].as_str().unwrap_or("").to_owned(),
                        parent: s["parentSpanId"].as_str().unwrap_or("").to_owned(),
                        name: s["name"].as_str().unwrap_or("").to_owned(),
                        attrs,
                    });
                }
            }
        }
    }
    (out, services)
}

#[test]
fn a_sim_run_exports_its_span_tree_over_otlp() {
    let rt = tokio::runtime::Runtime::new().unwrap();
    let (addr, got) = rt.block_on(receiver());
    let dir = tempfile::tempdir().unwrap();
    let mut d = Daemon::new(dir.path(), 0.0);
    d.env = [
        ("OTEL_EXPORTER_OTLP_ENDPOINT", format!("http://{addr}")),
        ("OTEL_EXPORTER_OTLP_PROTOCOL", "http/json".into()),
        ("OTEL_SERVICE_NAME", "cz-trace-test".into()),
        ("OTEL_BSP_SCHEDULE_DELAY", "100".into()),
        ("CATALYST_ZERO_LOG_FORMAT", "json".into()),
        ("RUST_LOG", "info".into()),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_owned(), v))
    .collect();
    d.start().unwrap();
    let api = Api::new(d.port);
    let (status, body) = api.post("/v1/sovereigns", &request("traced", 1, 1)).unwrap();
    assert_eq!(status, 202, "{body}");
    let job = body["job_id"].as_str().unwrap().to_owned();
    assert_eq!(
        api.wait_status(&job, &["succeeded", "failed", "paused"], Duration::from_secs(120)),
        "succeeded"
    );
    let detail = api.get(&format!("/v1/jobs/{job}")).unwrap();
    // A clean stop flushes what the batch exporter still holds.
    d.signal("TERM");
    assert!(d.wait_exit(Duration::from_secs(30)), "the daemon did not stop on SIGTERM");

    let (all, services) = spans(&got.lock().unwrap());
    assert!(services.contains("cz-trace-test"), "{services:?}");
    let jobs: Vec<&Span> = all.iter().filter(|s| s.name == "job").collect();
    assert_eq!(jobs.len(), 1, "one job span: {jobs:?}");
    let root = jobs[0];
    assert_eq!(root.attrs.get("job_id"), Some(&job));
    assert_eq!(root.attrs.get("outcome").map(String::as_str), Some("succeeded"));

    // One phase span per phase of the plan, each a child of the job span.
    let phases: Vec<&Span> = all.iter().filter(|s| s.name == "phase").collect();
    let want: Vec<String> = detail["phases"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["phase"].as_str().unwrap().to_owned())
        .collect();
    let mut seen: Vec<String> = phases.iter().map(|p| p.attrs["phase"].clone()).collect();
    seen.sort();
    let mut sorted = want.clone();
    sorted.sort();
    assert_eq!(seen, sorted, "one span per phase");
    for p in &phases {
        assert_eq!((p.trace.as_str(), p.parent.as_str()), (root.trace.as_str(), root.id.as_str()));
    }
    let phase_of: BTreeMap<&str, &str> =
        phases.iter().map(|p| (p.id.as_str(), p.attrs["phase"].as_str())).collect();

    // One step span per step (every step ran once), a child of its phase.
    let steps: Vec<&Span> = all.iter().filter(|s| s.name == "step").collect();
    let mut want_steps = Vec::new();
    for p in detail["phases"].as_array().unwrap() {
        for s in p["steps"].as_array().unwrap() {
            assert_eq!(s["attempts"], 1, "{s}");
            // A released node runs no action: its producer's span holds it.
            if s.get("released_by").is_none() {
                want_steps.push(s["step"].as_str().unwrap().to_owned());
            }
        }
    }
    let mut step_ids: Vec<String> = steps.iter().map(|s| s.attrs["step"].clone()).collect();
    step_ids.sort();
    want_steps.sort();
    assert_eq!(step_ids, want_steps, "one span per step attempt");
    for s in &steps {
        let phase =
            phase_of.get(s.parent.as_str()).unwrap_or_else(|| panic!("{s:?} under no phase"));
        assert!(s.attrs["step"].starts_with(&format!("{phase}/")), "{s:?} under {phase}");
        assert_eq!(s.attrs.get("attempt").map(String::as_str), Some("1"));
    }

    // Adapter calls of the job are spans inside its steps (calls outside
    // any job, as the DNS lease keeper's, are traces of their own).
    let step_ids: BTreeSet<&str> = steps.iter().map(|s| s.id.as_str()).collect();
    let adapters: Vec<&Span> =
        all.iter().filter(|s| s.name == "adapter" && s.trace == root.trace).collect();
    assert!(adapters.len() >= steps.len() / 2, "{} adapter spans", adapters.len());
    for a in &adapters {
        assert!(step_ids.contains(a.parent.as_str()), "{a:?} is not inside a step");
    }
    for system in ["cloud", "tofu", "ssh", "kubernetes", "openbao", "dns"] {
        assert!(
            adapters.iter().any(|a| a.attrs.get("system").map(String::as_str) == Some(system)),
            "no {system} call traced"
        );
    }

    // The job's log lines name the trace.
    let log = std::fs::read_to_string(&d.log).unwrap();
    let traced =
        log.lines().filter(|l| l.contains(&format!("\"trace_id\":\"{}\"", root.trace))).count();
    assert!(
        traced > 0,
        "no log line carries trace {}:\n{}",
        root.trace,
        &log[..log.len().min(3000)]
    );
}
