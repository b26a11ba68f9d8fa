//! API tests: the real router, a real store in a temporary directory and the
//! sim backend at latency 0, driven with `tower::ServiceExt::oneshot`.

use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::Router;
use axum::body::Body;
use axum::http::{Method, Request, StatusCode};
use cz_engine::RetryPolicy;
use cz_phases::jobs::provision_plan;
use cz_phases::request::parse_provision;
use cz_phases::testing::{SimRig, age_recipient, sample_body, sim_rig};
use serde_json::{Value, json};
use tower::ServiceExt;

use super::{ApiState, router};
use crate::config::{Config, Tokens};
use crate::supervisor::Supervisor;

const OP: &str = "operator-token-0123456789abcdef";
const WIZ: &str = "wizard-token-0123456789abcdef00";
/// A distinctive 64-character cloud token, searched for in every answer.
const CLOUD_TOKEN: &str = "SeCrEtCloudTokenQ7x9Z2w4K6m8N0p1R3t5V7y9B1d3F5h7J9k1L3n5P7r9T1vW";
const WAIT: Duration = Duration::from_secs(60);

struct Harness {
    _rig: SimRig,
    state: ApiState,
    app: Router,
}

async fn harness() -> Harness {
    harness_with(|_| {}).await
}

async fn harness_with(adjust: impl FnOnce(&mut Config)) -> Harness {
    let rig = sim_rig().await;
    crate::wiring::ensure_sim_pool_zones(rig.env()).await.unwrap();
    let mut config = Config {
        tokens: Tokens { operator: Some(OP.into()), wizard: Some(WIZ.into()), file: None },
        drills: crate::config::Drills { fault_plans: true, fault_plans_on_hetzner: false },
        retry: RetryPolicy { max_attempts: 3, min_delay_ms: 1, max_delay_ms: 10 },
        heartbeat_secs: 1,
        ..Config::default()
    };
    adjust(&mut config);
    let metrics = Arc::new(super::system::Metrics::new());
    let engine = rig.engine.clone().with_observer(metrics.clone());
    let supervisor = Arc::new(Supervisor::new(engine));
    let mut state = ApiState::new(rig.store.clone(), supervisor, Arc::new(config));
    state.metrics = metrics;
    state.set_ready();
    let app = router(state.clone());
    Harness { _rig: rig, state, app }
}

/// The sample request with a distinctive cloud token.
fn body(sub: &str) -> Value {
    sample_body(sub, 1, 1, CLOUD_TOKEN, &age_recipient())
}

struct Resp {
    status: StatusCode,
    text: String,
}

impl Resp {
    fn json(&self) -> Value {
        serde_json::from_str(&self.text).unwrap_or_else(|e| panic!("not JSON ({e}): {}", self.text))
    }
}

impl Harness {
    async fn call(&self, req: Request<Body>) -> Resp {
        let resp = self.app.clone().oneshot(req).await.unwrap();
        let status = resp.status();
        let bytes = axum::body::to_bytes(resp.into_body(), usize::MAX).await.unwrap();
        let text = String::from_utf8(bytes.to_vec()).unwrap();
        assert!(!text.contains(CLOUD_TOKEN), "a secret leaked in an answer: {text}");
        Resp { status, text }
    }

    async fn req(
        &self,
        method: Method,
        uri: &str,
        token: Option<&str>,
        body: Option<&Value>,
    ) -> Resp {
        let mut b = Request::builder().method(method).uri(uri);
        if let Some(t) = token {
            b = b.header("authorization", format!("Bearer {t}"));
        }
        let req = match body {
            Some(v) => b.header("content-type", "application/json").body(Body::from(v.to_string())),
            None => b.body(Body::empty()),
        };
        self.call(req.unwrap()).await
    }

    async fn get(&self, uri: &str) -> Value {
        let r = self.req(Method::GET, uri, Some(OP), None).await;
        assert_eq!(r.status, StatusCode::OK, "{uri}: {}", r.text);
        r.json()
    }

    async fn submit_with(&self, v: &Value, headers: &[(&str, &str)]) -> Resp {
        let mut b = Request::builder()
            .method(Method::POST)
            .uri("/v1/sovereigns")
            .header("authorization", format!("Bearer {OP}"))
            .header("content-type", "application/json");
        for (k, val) in headers {
            b = b.header(*k, *val);
        }
        self.call(b.body(Body::from(v.to_string())).unwrap()).await
    }

    async fn submit(&self, v: &Value) -> (String, String) {
        let r = self.submit_with(v, &[]).await;
        assert_eq!(r.status, StatusCode::ACCEPTED, "{}", r.text);
        let j = r.json();
        (j["sovereign_id"].as_str().unwrap().to_owned(), j["job_id"].as_str().unwrap().to_owned())
    }

    /// Polls the job until `done(status)`, at most [`WAIT`].
    async fn wait_for(&self, job: &str, done: impl Fn(&str) -> bool) -> Value {
        let start = Instant::now();
        loop {
            let d = self.get(&format!("/v1/jobs/{job}")).await;
            if done(d["status"].as_str().unwrap()) {
                return d;
            }
            assert!(start.elapsed() < WAIT, "job {job} stuck: {d:#}");
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
    }

    async fn wait_status(&self, job: &str, status: &str) -> Value {
        let d = self
            .wait_for(job, |s| {
                s == status
                    || matches!(s, "succeeded" | "failed" | "cancelled" | "abandoned" | "paused")
            })
            .await;
        assert_eq!(d["status"], status, "{d:#}");
        d
    }

    /// Everything a rejected request must not change.
    async fn snapshot(&self) -> String {
        let s = &self.state.store;
        let sovs = s.list_sovereigns().await.unwrap();
        let jobs = s.list_jobs(None).await.unwrap();
        let audit = s.audit(None).await.unwrap();
        serde_json::to_string(&json!([sovs, jobs, audit])).unwrap()
    }

    /// Reads an SSE response to its end (the stream closes after `end`).
    async fn sse(&self, job: &str, last_event_id: Option<i64>) -> Vec<(i64, String, Value)> {
        let mut b = Request::builder()
            .uri(format!("/v1/jobs/{job}/events"))
            .header("authorization", format!("Bearer {OP}"));
        if let Some(k) = last_event_id {
            b = b.header("last-event-id", k.to_string());
        }
        let resp = tokio::time::timeout(WAIT, self.call(b.body(Body::empty()).unwrap()))
            .await
            .expect("stream ends");
        assert_eq!(resp.status, StatusCode::OK);
        parse_sse(&resp.text)
    }
}

fn parse_sse(text: &str) -> Vec<(i64, String, Value)> {
    let mut p = crate::cli::follow::SseParser::default();
    p.push(text)
        .into_iter()
        .map(|f| (f.id.unwrap(), f.event, serde_json::from_str(&f.data).unwrap()))
        .collect()
}

#[tokio::test]
async fn scopes_are_enforced() {
    let h = harness().await;
    for (token, want) in
        [(None, 401), (Some("nope-nope-nope-nope"), 401), (Some(WIZ), 200), (Some(OP), 200)]
    {
        let r = h.req(Method::GET, "/v1/jobs", token, None).await;
        assert_eq!(r.status.as_u16(), want, "{token:?}: {}", r.text);
    }
    let r = h.req(Method::GET, "/v1/sovereigns", None, None).await;
    assert_eq!(r.status, StatusCode::UNAUTHORIZED);
    assert_eq!(r.json()["error"]["code"], "unauthorized");
    for uri in ["/healthz", "/readyz", "/metrics", "/openapi.json"] {
        assert_eq!(h.req(Method::GET, uri, None, None).await.status, StatusCode::OK, "{uri}");
    }
    let fake = cz_state::JobId::new();
    for verb in ["retry", "skip", "resume", "abandon", "cancel"] {
        let r = h
            .req(Method::POST, &format!("/v1/jobs/{fake}/{verb}"), Some(WIZ), Some(&json!({})))
            .await;
        assert_eq!(r.status, StatusCode::FORBIDDEN, "{verb}");
        let r = h.req(Method::POST, &format!("/v1/jobs/{fake}/{verb}"), None, None).await;
        assert_eq!(r.status, StatusCode::UNAUTHORIZED, "{verb}");
    }
    let r = h
        .req(
            Method::POST,
            &format!("/v1/sovereigns/{}/destroy", cz_state::SovereignId::new()),
            Some(WIZ),
            None,
        )
        .await;
    assert_eq!(r.status, StatusCode::FORBIDDEN);
    // Adding a region is the operator's, before anything is read or stored.
    let before = h.snapshot().await;
    let uri = format!("/v1/sovereigns/{}/regions", cz_state::SovereignId::new());
    let add = json!({"api_version": "catalyst.openova.io/v1", "regions": []});
    let r = h.req(Method::POST, &uri, Some(WIZ), Some(&add)).await;
    assert_eq!(r.status, StatusCode::FORBIDDEN, "{}", r.text);
    assert_eq!(before, h.snapshot().await);
    // Wizard may submit but not inject faults.
    let before = h.snapshot().await;
    let req = Request::builder()
        .method(Method::POST)
        .uri("/v1/sovereigns")
        .header("authorization", format!("Bearer {WIZ}"))
        .header("x-catalyst-fault-plan", r#"{"fail":{"preflight/quotas":"terminal"}}"#)
        .body(Body::from(body("wizfault").to_string()))
        .unwrap();
    assert_eq!(h.call(req).await.status, StatusCode::FORBIDDEN);
    assert_eq!(before, h.snapshot().await);
    let r = h.req(Method::POST, "/v1/sovereigns", Some(WIZ), Some(&body("wizard"))).await;
    assert_eq!(r.status, StatusCode::ACCEPTED, "{}", r.text);
    let job = r.json()["job_id"].as_str().unwrap().to_owned();
    let audit = h.state.store.audit(Some(job.parse().unwrap())).await.unwrap();
    assert_eq!((audit[0].actor.as_str(), audit[0].action.as_str()), ("wizard", "submit"));
    assert_eq!(
        h.req(Method::GET, &format!("/v1/jobs/{job}"), Some(WIZ), None).await.status,
        StatusCode::OK
    );
    h.wait_status(&job, "succeeded").await;
}

#[tokio::test]
async fn readyz_waits_for_recovery() {
    let h = harness().await;
    h.state.ready.store(false, std::sync::atomic::Ordering::SeqCst);
    assert_eq!(
        h.req(Method::GET, "/readyz", None, None).await.status,
        StatusCode::SERVICE_UNAVAILABLE
    );
    h.state.set_ready();
    assert_eq!(h.req(Method::GET, "/readyz", None, None).await.status, StatusCode::OK);
    assert_eq!(
        h.req(Method::GET, "/v1/jobs/not-a-uuid", Some(OP), None).await.status,
        StatusCode::NOT_FOUND
    );
    let r =
        h.req(Method::GET, &format!("/v1/jobs/{}", cz_state::JobId::new()), Some(OP), None).await;
    assert_eq!(r.status, StatusCode::NOT_FOUND);
    assert_eq!(r.json()["error"]["code"], "not_found");
}

#[tokio::test]
async fn a_valid_submission_succeeds_and_leaks_no_secret() {
    let h = harness().await;
    let (sov, job) = h.submit(&body("acme")).await;
    let d = h.wait_status(&job, "succeeded").await;
    assert_eq!(d["kind"], "provision");
    let phases: Vec<&str> =
        d["phases"].as_array().unwrap().iter().map(|p| p["phase"].as_str().unwrap()).collect();
    assert_eq!(phases, cz_phases::PROVISION_PHASES);
    for p in d["phases"].as_array().unwrap() {
        assert_eq!(p["state"], "succeeded", "{p:#}");
        for s in p["steps"].as_array().unwrap() {
            assert_eq!(s["state"], "succeeded");
            assert!(s["attempts"].as_u64().unwrap() >= 1);
            assert!(
                s["started_at"].is_string()
                    && s["finished_at"].is_string()
                    && s["elapsed_ms"].is_i64(),
                "{s:#}"
            );
        }
    }
    for p in d["progress"].as_array().unwrap() {
        assert_eq!(p["done"], p["total"]);
    }
    assert!(d["request"]["cloud_token"].is_null(), "the stored request has no token");
    let s = h.get(&format!("/v1/sovereigns/{sov}")).await;
    assert_eq!(s["status"], "ready");
    assert_eq!(s["fqdn"], "acme.omani.works");
    assert_eq!(s["jobs"][0]["id"], job.as_str());
    // Every event, page by page: none carries the secret (checked in `call`).
    let mut after = 0;
    loop {
        let page =
            h.get(&format!("/v1/jobs/{job}/events?format=json&after={after}&limit=50")).await;
        if page["events"].as_array().unwrap().is_empty() {
            break;
        }
        after = page["next_after"].as_i64().unwrap();
    }
    assert!(after > 10);
    h.sse(&job, None).await;
    h.get("/v1/sovereigns").await;
    h.get("/v1/jobs").await;
    // Nor does the database, except sealed.
    let dump = std::fs::read(h.state.store.paths().unwrap().database.clone()).unwrap();
    assert!(!dump.windows(CLOUD_TOKEN.len()).any(|w| w == CLOUD_TOKEN.as_bytes()));
    // The same domain cannot be provisioned twice.
    let r = h.submit_with(&body("acme"), &[]).await;
    assert_eq!(r.status, StatusCode::CONFLICT, "{}", r.text);
    let m = h.req(Method::GET, "/metrics", None, None).await.text;
    assert!(m.contains("catalyst_zero_jobs{status=\"succeeded\"} 1"), "{m}");
    assert!(m.contains("catalyst_zero_jobs{status=\"failed\"} 0"), "{m}");
    assert!(m.contains("catalyst_zero_http_requests_total"), "{m}");
    // Every step attempt is in the histogram, by phase, action and outcome.
    let count = |prefix: &str| -> u64 {
        m.lines()
            .filter(|l| l.starts_with(prefix))
            .filter_map(|l| l.rsplit(' ').next()?.parse::<u64>().ok())
            .sum()
    };
    assert!(
        m.contains("catalyst_zero_step_duration_seconds_count{phase=\"infra\",action=\"infra.apply\",outcome=\"succeeded\"} 1"),
        "{m}"
    );
    assert!(count("catalyst_zero_step_duration_seconds_count{") >= 40, "{m}");
    assert!(count("catalyst_zero_events_written_total") > 10, "{m}");
    assert!(m.contains("catalyst_zero_step_retries_total{class=\"transient\"} 0"), "{m}");
    for family in [
        "catalyst_zero_sse_subscribers",
        "catalyst_zero_step_retries",
        "catalyst_zero_lease_renewals_total",
        "catalyst_zero_lease_losses_total",
        "catalyst_zero_leases_held",
    ] {
        assert!(m.contains(family), "{family} missing:\n{m}");
    }
}

#[tokio::test]
async fn every_bad_input_is_refused_with_its_field_and_no_trace() {
    let h = harness().await;
    // One accepted submission with a key, so the duplicate-key case has
    // something to conflict with.
    let keyed = body("keyed");
    let first = h.submit_with(&keyed, &[("idempotency-key", "k-1")]).await;
    assert_eq!(first.status, StatusCode::ACCEPTED, "{}", first.text);
    // Let it finish, so the snapshot only changes if a rejection writes.
    h.wait_status(first.json()["job_id"].as_str().unwrap(), "succeeded").await;
    let before = h.snapshot().await;

    let set = |f: &dyn Fn(&mut Value)| {
        let mut v = body("bad");
        f(&mut v);
        v.to_string()
    };
    type Case<'a> = (&'a str, String, Vec<(&'a str, &'a str)>, &'a str);
    let cases: Vec<Case> = vec![
        ("malformed JSON", "{\"api_version\": ".into(), vec![], "body"),
        ("unknown field", set(&|v| v["org"]["colour"] = json!("red")), vec![], "colour"),
        (
            "wrong type",
            set(&|v| v["regions"][0]["control_plane"]["count"] = json!("three")),
            vec![],
            "regions[0].control_plane.count",
        ),
        (
            "out-of-range count",
            set(&|v| v["regions"][0]["workers"]["count"] = json!(501)),
            vec![],
            "regions[0].workers.count",
        ),
        (
            "invalid FQDN label",
            set(&|v| v["domain"]["subdomain"] = json!("-bad-")),
            vec![],
            "domain.subdomain",
        ),
        (
            "ssh-dss key",
            set(&|v| v["ssh_public_keys"][0] = json!("ssh-dss AAAAB3NzaC1kc3MAAACBAP ops@x")),
            vec![],
            "ssh_public_keys[0]",
        ),
        (
            "bad age recipient",
            set(&|v| v["custody"]["custodians"][0]["recipient"] = json!("age1notarecipient")),
            vec![],
            "custody.custodians[0].recipient",
        ),
        (
            "duplicate custodian recipient",
            set(&|v| {
                v["custody"]["custodians"][2]["recipient"] =
                    v["custody"]["custodians"][0]["recipient"].clone()
            }),
            vec![],
            "custody.custodians[2].recipient",
        ),
        (
            "threshold above the shares",
            set(&|v| v["custody"]["openbao_threshold"] = json!(4)),
            vec![],
            "custody.openbao_threshold",
        ),
        (
            "fewer custodians than the threshold",
            set(&|v| {
                v["custody"]["openbao_shares"] = json!(4);
                v["custody"]["openbao_threshold"] = json!(4);
            }),
            vec![],
            "custody.custodians",
        ),
        // Hetzner's fixed limits, named with their field before anything
        // is created.
        (
            "101 servers on a private network",
            set(&|v| {
                v["regions"][0]["network"] = json!("private");
                v["regions"][0]["control_plane"]["count"] = json!(3);
                v["regions"][0]["workers"]["count"] = json!(98);
            }),
            vec![],
            "regions[0].network",
        ),
        (
            "more placement groups than a project holds",
            set(&|v| {
                v["regions"][0]["control_plane"]["count"] = json!(3);
                v["regions"][0]["workers"]["count"] = json!(498);
            }),
            vec![],
            "a Hetzner project holds at most 50",
        ),
        (
            "more targets than the load balancer type takes",
            set(&|v| {
                v["regions"][0]["control_plane"]["count"] = json!(3);
                v["regions"][0]["workers"]["count"] = json!(30);
                v["regions"][0]["load_balancer"] = json!({"type": "lb11", "targets": "all-nodes"});
            }),
            vec![],
            "regions[0].load_balancer.type",
        ),
        ("not an object", "[1, 2]".into(), vec![], "body"),
        (
            "bad fault plan",
            body("faulty").to_string(),
            vec![("x-catalyst-fault-plan", "{\"explode\": 1}")],
            "X-Catalyst-Fault-Plan",
        ),
        (
            "wrong content type",
            body("ctype").to_string(),
            vec![("content-type", "text/plain")],
            "body",
        ),
    ];
    for (name, raw, headers, field) in cases {
        let mut b = Request::builder()
            .method(Method::POST)
            .uri("/v1/sovereigns")
            .header("authorization", format!("Bearer {OP}"));
        if !headers.iter().any(|(k, _)| *k == "content-type") {
            b = b.header("content-type", "application/json");
        }
        for (k, v) in &headers {
            b = b.header(*k, *v);
        }
        let r = h.call(b.body(Body::from(raw)).unwrap()).await;
        assert_eq!(r.status, StatusCode::UNPROCESSABLE_ENTITY, "{name}: {}", r.text);
        let errors = r.json()["errors"].as_array().cloned().unwrap_or_default();
        assert!(
            errors.iter().any(|e| format!("{} {}", e["path"], e["message"]).contains(field)),
            "{name}: no error names `{field}`: {errors:#?}"
        );
        assert!(before == h.snapshot().await, "{name} left a trace");
    }
    // A key used with another body conflicts with what is stored for it:
    // 409, like a domain in use, and nothing is written.
    let r = h
        .call(
            Request::builder()
                .method(Method::POST)
                .uri("/v1/sovereigns")
                .header("authorization", format!("Bearer {OP}"))
                .header("content-type", "application/json")
                .header("idempotency-key", "k-1")
                .body(Body::from(body("other").to_string()))
                .unwrap(),
        )
        .await;
    assert_eq!(r.status, StatusCode::CONFLICT, "{}", r.text);
    assert!(r.text.contains("Idempotency-Key"), "{}", r.text);
    assert!(before == h.snapshot().await, "a reused key left a trace");

    // Same key, same body: the same answer and still one job.
    let again = h.submit_with(&keyed, &[("idempotency-key", "k-1")]).await;
    assert_eq!(again.status, StatusCode::ACCEPTED);
    assert_eq!(again.json(), first.json());
    assert_eq!(before, h.snapshot().await);
    assert_eq!(h.state.store.list_jobs(None).await.unwrap().len(), 1);
}

#[tokio::test]
async fn sse_resumes_after_last_event_id_without_gap_or_duplicate() {
    let h = harness().await;
    let (_, job) = h.submit(&body("stream")).await;
    h.wait_status(&job, "succeeded").await;
    let all = h.sse(&job, None).await;
    let ids: Vec<i64> = all.iter().map(|e| e.0).collect();
    assert_eq!(ids, (1..=ids.len() as i64).collect::<Vec<_>>(), "ids are 1..n");
    let (_, kind, data) = all.last().unwrap();
    assert_eq!((kind.as_str(), data["status"].as_str()), ("end", Some("succeeded")));
    assert!(all.iter().any(|e| e.1 == "cost"), "a cost preview event");
    // ... and the same preview in the job detail.
    let detail = h.get(&format!("/v1/jobs/{job}")).await;
    assert!(detail["cost"]["monthly"].as_f64().is_some_and(|m| m > 0.0), "{}", detail["cost"]);
    assert_eq!(detail["cost"]["currency"], "EUR");
    assert_eq!(all[0].2["id"], 1);
    let k = ids.len() as i64 / 2;
    let rest = h.sse(&job, Some(k)).await;
    assert_eq!(
        rest.iter().map(|e| e.0).collect::<Vec<_>>(),
        (k + 1..=ids.len() as i64).collect::<Vec<_>>()
    );
    assert_eq!(rest.last().unwrap().1, "end");
    // `?after=` is the same resume for clients without headers.
    let req = Request::builder()
        .uri(format!("/v1/jobs/{job}/events?after={k}"))
        .header("authorization", format!("Bearer {OP}"))
        .body(Body::empty())
        .unwrap();
    assert_eq!(parse_sse(&h.call(req).await.text).len(), rest.len());
    // JSON pages concatenate to the stream.
    let mut paged = Vec::new();
    let mut after = 0;
    loop {
        let p = h.get(&format!("/v1/jobs/{job}/events?format=json&after={after}&limit=7")).await;
        let evs = p["events"].as_array().unwrap().clone();
        if evs.is_empty() {
            assert_eq!(p["next_after"], after);
            break;
        }
        assert!(evs.len() <= 7);
        paged.extend(evs.iter().map(|e| e["id"].as_i64().unwrap()));
        after = p["next_after"].as_i64().unwrap();
    }
    assert_eq!(paged, ids);
    let bad =
        h.req(Method::GET, &format!("/v1/jobs/{job}/events?format=json"), Some(OP), None).await;
    assert_eq!(bad.status, StatusCode::OK);
}

#[tokio::test]
async fn pause_skip_and_live_stream() {
    let h = harness().await;
    let fault = r#"{"fail": {"preflight/quotas": "needs-operator"}}"#;
    let r = h.submit_with(&body("pausy"), &[("x-catalyst-fault-plan", fault)]).await;
    assert_eq!(r.status, StatusCode::ACCEPTED, "{}", r.text);
    let job = r.json()["job_id"].as_str().unwrap().to_owned();
    let d = h.wait_status(&job, "paused").await;
    assert_eq!(d["pause"]["step"], "preflight/quotas");
    assert!(!d["pause"]["error"]["runbook"].as_str().unwrap().is_empty(), "{d:#}");
    let quotas = d["phases"][0]["steps"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["step"] == "preflight/quotas")
        .unwrap()
        .clone();
    assert_eq!(quotas["state"], "failed");
    assert_eq!(quotas["error"]["class"], "needs-operator");
    assert_eq!(d["phases"][0]["state"], "paused");

    // A live stream opened while paused sees everything until `end`.
    let app = h.app.clone();
    let path = format!("/v1/jobs/{job}/events");
    let live = tokio::spawn(async move {
        let req = Request::builder()
            .uri(path)
            .header("authorization", format!("Bearer {OP}"))
            .body(Body::empty())
            .unwrap();
        let resp = app.oneshot(req).await.unwrap();
        let bytes = axum::body::to_bytes(resp.into_body(), usize::MAX).await.unwrap();
        String::from_utf8(bytes.to_vec()).unwrap()
    });

    let skip = format!("/v1/jobs/{job}/skip");
    let r = h
        .req(
            Method::POST,
            &skip,
            Some(OP),
            Some(&json!({ "step": "preflight/quotas", "reason": "  " })),
        )
        .await;
    assert_eq!(r.status, StatusCode::UNPROCESSABLE_ENTITY);
    let r = h
        .req(Method::POST, &skip, Some(OP), Some(&json!({ "step": "nope/nope", "reason": "x" })))
        .await;
    assert_eq!(r.status, StatusCode::CONFLICT, "{}", r.text);
    let r = h.req(Method::POST, &skip, Some(OP), Some(&json!({ "step": "preflight/quotas", "reason": "quota raised by Hetzner support, ticket 42" }))).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text);
    let d = h.wait_status(&job, "succeeded").await;
    let audit = d["audit"].as_array().unwrap();
    let s = audit.iter().find(|a| a["action"] == "skip").expect("skip audited");
    assert_eq!(s["actor"], "operator");
    assert_eq!(s["detail"]["reason"], "quota raised by Hetzner support, ticket 42");
    let step = d["phases"][0]["steps"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["step"] == "preflight/quotas")
        .unwrap()
        .clone();
    assert_eq!(step["state"], "skipped");

    let text = tokio::time::timeout(WAIT, live).await.expect("live stream ends").unwrap();
    let evs = parse_sse(&text);
    let ids: Vec<i64> = evs.iter().map(|e| e.0).collect();
    assert_eq!(ids, (1..=ids.len() as i64).collect::<Vec<_>>(), "live stream has no gap: {ids:?}");
    assert_eq!(evs.last().unwrap().1, "end");
    assert!(evs.iter().any(|e| e.1 == "operator" && e.2["action"] == "skip"));

    // Verbs on a finished job are refused with a reason.
    let r = h.req(Method::POST, &format!("/v1/jobs/{job}/resume"), Some(OP), None).await;
    assert_eq!(r.status, StatusCode::CONFLICT);
    assert!(r.json()["error"]["message"].as_str().unwrap().contains("succeeded"));
    let r = h
        .req(
            Method::POST,
            &format!("/v1/jobs/{job}/retry"),
            Some(OP),
            Some(&json!({ "step": "a", "phase": "b" })),
        )
        .await;
    assert_eq!(r.status, StatusCode::UNPROCESSABLE_ENTITY);
}

#[tokio::test]
async fn cancel_rolls_back() {
    let h = harness().await;
    let v = body("cancelme");
    let plan = provision_plan(&parse_provision(v.to_string().as_bytes()).unwrap());
    // Pause in the cluster phase, after DNS and infra have real effects.
    let at = &plan.phase("cluster").unwrap().nodes[0].id;
    let fault = json!({ "fail": { at.as_str(): "needs-operator" } }).to_string();
    let r = h.submit_with(&v, &[("x-catalyst-fault-plan", &fault)]).await;
    assert_eq!(r.status, StatusCode::ACCEPTED, "{}", r.text);
    let (sov, job) = (
        r.json()["sovereign_id"].as_str().unwrap().to_owned(),
        r.json()["job_id"].as_str().unwrap().to_owned(),
    );
    h.wait_status(&job, "paused").await;
    let r = h.req(Method::POST, &format!("/v1/jobs/{job}/cancel"), Some(OP), None).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text);
    let d = h.wait_status(&job, "cancelled").await;
    assert_eq!(d["mode"], "unwinding");
    let infra = d["phases"].as_array().unwrap().iter().find(|p| p["phase"] == "infra").unwrap();
    assert!(
        infra["steps"]
            .as_array()
            .unwrap()
            .iter()
            .all(|s| s["state"] == "undone" || s["state"] == "pending"),
        "{infra:#}"
    );
    assert!(infra["steps"].as_array().unwrap().iter().any(|s| s["state"] == "undone"));
    assert!(
        d["audit"]
            .as_array()
            .unwrap()
            .iter()
            .any(|a| a["action"] == "cancel" && a["actor"] == "operator")
    );
    let s = h.get(&format!("/v1/sovereigns/{sov}")).await;
    assert_eq!(s["status"], "destroyed");
    // The name is free again.
    let (_, again) = h.submit(&body("cancelme")).await;
    h.wait_status(&again, "succeeded").await;
}

#[tokio::test]
async fn add_region_then_destroy() {
    let h = harness().await;
    // The static seal: the added region's OpenBao unseals itself (with
    // Shamir it waits for custodians, `phases::handoff::join` tests that).
    let mut grow = body("grow");
    grow["custody"]["seal"] = json!("static");
    let (sov, job) = h.submit(&grow).await;
    h.wait_status(&job, "succeeded").await;
    let add = json!({
        "api_version": "catalyst.openova.io/v1",
        "regions": [{ "provider": "hetzner", "location": "hel1",
            "control_plane": { "sku": "cpx32", "count": 1 }, "workers": { "sku": "cpx42", "count": 1 } }],
    });
    let before = h.snapshot().await;
    let mut dup = add.clone();
    dup["regions"][0]["location"] = json!("fsn1");
    let r =
        h.req(Method::POST, &format!("/v1/sovereigns/{sov}/regions"), Some(OP), Some(&dup)).await;
    // A location the Sovereign has already: a conflict with it (409).
    assert_eq!(r.status, StatusCode::CONFLICT, "{}", r.text);
    assert!(r.text.contains("regions[0].location"), "{}", r.text);
    assert_eq!(before, h.snapshot().await);
    let r =
        h.req(Method::POST, &format!("/v1/sovereigns/{sov}/regions"), Some(OP), Some(&add)).await;
    assert_eq!(r.status, StatusCode::ACCEPTED, "{}", r.text);
    let add_job = r.json()["job_id"].as_str().unwrap().to_owned();
    let d = h.wait_status(&add_job, "succeeded").await;
    assert_eq!(d["kind"], "add-region");
    assert_eq!(d["request"]["sovereign"]["fqdn"], "grow.omani.works");
    let r = h.req(Method::POST, &format!("/v1/sovereigns/{sov}/destroy"), Some(OP), None).await;
    assert_eq!(r.status, StatusCode::ACCEPTED, "{}", r.text);
    let destroy = r.json()["job_id"].as_str().unwrap().to_owned();
    let d = h.wait_status(&destroy, "succeeded").await;
    let locations: Vec<&str> = d["request"]["regions"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["location"].as_str().unwrap())
        .collect();
    assert_eq!(locations, ["fsn1", "hel1"]);
    assert_eq!(h.get(&format!("/v1/sovereigns/{sov}")).await["status"], "destroyed");
    let r = h.req(Method::POST, &format!("/v1/sovereigns/{sov}/destroy"), Some(OP), None).await;
    assert_eq!(r.status, StatusCode::CONFLICT, "{}", r.text);
}

/// The escrow is for operators only, every read is in the audit trail,
/// and it is ciphertext to the custodians: three unseal shares, the
/// sealed-secrets key in three parts, a kubeconfig copy each.
#[tokio::test]
async fn the_escrow_is_operator_only_audited_and_ciphertext_only() {
    let h = harness().await;
    let (sov, job) = h.submit(&body("keys")).await;
    h.wait_status(&job, "succeeded").await;
    let uri = format!("/v1/sovereigns/{sov}/escrow");
    assert_eq!(h.req(Method::GET, &uri, Some(WIZ), None).await.status, StatusCode::FORBIDDEN);
    assert_eq!(h.req(Method::GET, &uri, None, None).await.status, StatusCode::UNAUTHORIZED);
    let missing = "/v1/sovereigns/01a24387-7ab9-73e0-8171-cf75f756aebb/escrow";
    assert_eq!(h.req(Method::GET, missing, Some(OP), None).await.status, StatusCode::NOT_FOUND);
    let before = h.state.store.audit(None).await.unwrap().len();
    let e = h.get(&uri).await;
    assert_eq!(e["fqdn"], "keys.omani.works");
    let items = e["items"].as_array().unwrap();
    let count = |k: &str| items.iter().filter(|i| i["kind"] == k).count();
    assert_eq!(
        (count("openbao-share"), count("sealed-secrets-key"), count("admin-kubeconfig")),
        (3, 3, 3)
    );
    for i in items {
        assert!(i["age"].as_str().unwrap().starts_with("-----BEGIN AGE ENCRYPTED FILE-----"));
        assert!(i["label"].is_string() && i["recipient"].as_str().unwrap().starts_with("age1"));
    }
    let shares: Vec<&Value> = items.iter().filter(|i| i["kind"] == "openbao-share").collect();
    assert!(shares.iter().all(|s| s["threshold"] == 2 && s["parts"] == 3), "{shares:?}");
    let audit = h.state.store.audit(None).await.unwrap();
    assert_eq!(audit.len(), before + 1);
    let last = audit.last().unwrap();
    assert_eq!((last.action.as_str(), last.actor.as_str()), ("escrow.read", "operator"));
    assert_eq!(last.detail["blobs"], 9);
}

#[tokio::test]
async fn openapi_lists_every_path() {
    let h = harness().await;
    let doc = h.req(Method::GET, "/openapi.json", None, None).await.json();
    let paths = doc["paths"].as_object().unwrap();
    for p in [
        "/v1/sovereigns",
        "/v1/sovereigns/{id}",
        "/v1/sovereigns/{id}/destroy",
        "/v1/sovereigns/{id}/regions",
        "/v1/sovereigns/{id}/escrow",
        "/v1/jobs",
        "/v1/jobs/{id}",
        "/v1/jobs/{id}/events",
        "/v1/jobs/{id}/retry",
        "/v1/jobs/{id}/skip",
        "/v1/jobs/{id}/resume",
        "/v1/jobs/{id}/abandon",
        "/v1/jobs/{id}/cancel",
        "/healthz",
        "/readyz",
        "/metrics",
        "/openapi.json",
    ] {
        assert!(paths.contains_key(p), "{p} missing from the OpenAPI document");
    }
    assert!(paths["/v1/sovereigns/{id}/destroy"].get("post").is_some());
    assert!(paths["/v1/sovereigns/{id}"].get("delete").is_none());
    let schemas = doc["components"]["schemas"].as_object().unwrap();
    assert!(schemas.contains_key("ProvisionRequest"));
    assert!(doc["components"]["securitySchemes"]["bearer"].is_object());
}

/// Named operators from a tokens file: the audit trail names the person,
/// the verb, the target and the outcome (a refused verb too); the audit is
/// operator-only.
#[tokio::test]
async fn the_audit_names_the_person_the_verb_the_target_and_the_outcome() {
    use sha2::Digest as _;
    let mut h = harness().await;
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("tokens.toml");
    let entry = |name: &str, role: &str, token: &str| {
        format!(
            "[[token]]\nname = \"{name}\"\nrole = \"{role}\"\nsha256 = \"{}\"\n",
            hex::encode(sha2::Sha256::digest(token.as_bytes()))
        )
    };
    let (alice, bob) = ("alice-token-0123456789abcdef", "bob-token-0123456789abcdef00");
    std::fs::write(&file, entry("alice", "operator", alice) + &entry("bob", "wizard", bob))
        .unwrap();
    h.state.people = Some(Arc::new(super::tokens::TokenFile::load(&file).unwrap()));
    h.app = router(h.state.clone());

    let r = h.req(Method::POST, "/v1/sovereigns", Some(bob), Some(&body("named"))).await;
    assert_eq!(r.status, StatusCode::ACCEPTED, "{}", r.text);
    let job = r.json()["job_id"].as_str().unwrap().to_owned();
    h.wait_status(&job, "succeeded").await;
    // Alice tries to resume a finished job: refused, and audited as such.
    let r = h.req(Method::POST, &format!("/v1/jobs/{job}/resume"), Some(alice), None).await;
    assert_eq!(r.status, StatusCode::CONFLICT, "{}", r.text);
    // Bob (a wizard) may not read the audit; nobody without a token may.
    let r = h.req(Method::GET, "/v1/audit", Some(bob), None).await;
    assert_eq!(r.status, StatusCode::FORBIDDEN, "{}", r.text);
    let r = h.req(Method::GET, "/v1/audit", None, None).await;
    assert_eq!(r.status, StatusCode::UNAUTHORIZED, "{}", r.text);

    let r = h.req(Method::GET, &format!("/v1/audit?job={job}"), Some(alice), None).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text);
    let entries = r.json()["entries"].as_array().cloned().unwrap();
    let submit = entries.iter().find(|e| e["action"] == "submit").expect("the submit");
    assert_eq!(submit["actor"], "bob");
    let refused = entries.iter().find(|e| e["action"] == "resume.refused").expect("the refusal");
    assert_eq!(refused["actor"], "alice");
    assert_eq!(refused["job_id"], job.as_str());
    assert!(refused["detail"]["reason"].as_str().is_some_and(|r| !r.is_empty()), "{refused}");
}

/// Fault plans are for drills: off unless the config enables them, and on
/// the hetzner backend only with their own switch. A refused plan stores
/// nothing.
#[tokio::test]
async fn fault_plans_are_refused_unless_the_daemon_enables_them() {
    let plan = [("x-catalyst-fault-plan", r#"{"slow_ms": 1}"#)];
    let off = harness_with(|c| c.drills = Default::default()).await;
    let r = off.submit_with(&body("drill-off"), &plan).await;
    assert_eq!(r.status, StatusCode::FORBIDDEN, "{}", r.text);
    assert_eq!(r.json()["error"]["code"], "disabled", "{}", r.text);
    assert!(r.text.contains("fault_plans"), "{}", r.text);
    assert!(off.state.store.list_jobs(None).await.unwrap().is_empty());
    // Without the header the same daemon takes the request.
    assert_eq!(off.submit_with(&body("drill-off"), &[]).await.status, StatusCode::ACCEPTED);

    let hetzner = harness_with(|c| c.backend = crate::config::BackendKind::Hetzner).await;
    let r = hetzner.submit_with(&body("drill-h"), &plan).await;
    assert_eq!(r.status, StatusCode::FORBIDDEN, "{}", r.text);
    assert!(r.text.contains("hetzner"), "{}", r.text);

    let allowed = harness_with(|c| {
        c.backend = crate::config::BackendKind::Hetzner;
        c.drills.fault_plans_on_hetzner = true;
    })
    .await;
    let r = allowed.submit_with(&body("drill-h"), &plan).await;
    assert_eq!(r.status, StatusCode::ACCEPTED, "{}", r.text);
}

/// The console's sessions: an operator token opens one (a wizard token and
/// a wrong one do not); the cookie reads the API, every verb needs the
/// CSRF header and a same-site origin, and the audit names the person.
/// Sign-out, and a revoked token, end it. The store keeps no secret.
#[tokio::test]
async fn console_sessions_check_csrf_and_end_on_sign_out_and_revocation() {
    use sha2::Digest as _;
    let mut h = harness().await;
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("tokens.toml");
    let alice = "alice-token-0123456789abcdef";
    let entry = |token: &str| {
        format!(
            "[[token]]\nname = \"alice\"\nrole = \"operator\"\nsha256 = \"{}\"\n",
            hex::encode(sha2::Sha256::digest(token.as_bytes()))
        )
    };
    std::fs::write(&file, entry(alice)).unwrap();
    let people = Arc::new(super::tokens::TokenFile::load(&file).unwrap());
    h.state.people = Some(people.clone());
    h.app = router(h.state.clone());

    let sign_in = |token: &str| {
        Request::builder()
            .method(Method::POST)
            .uri("/ui/session")
            .header("content-type", "application/json")
            .body(Body::from(json!({ "token": token }).to_string()))
            .unwrap()
    };
    // A wizard token sees no console; a wrong token is unknown.
    let r = h.call(sign_in(WIZ)).await;
    assert_eq!(r.status, StatusCode::FORBIDDEN, "{}", r.text);
    let r = h.call(sign_in("not-a-token")).await;
    assert_eq!(r.status, StatusCode::UNAUTHORIZED, "{}", r.text);
    // Nor is a browser signed in from another site (login CSRF).
    let mut forged = sign_in(alice);
    forged.headers_mut().insert("sec-fetch-site", "cross-site".parse().unwrap());
    let r = h.call(forged).await;
    assert_eq!(r.status, StatusCode::FORBIDDEN, "{}", r.text);

    let resp = h.app.clone().oneshot(sign_in(alice)).await.unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    let set = resp.headers()["set-cookie"].to_str().unwrap().to_owned();
    for attr in ["HttpOnly", "SameSite=Strict", "Path=/"] {
        assert!(set.contains(attr), "{set}");
    }
    let secret = set.split(';').next().unwrap().strip_prefix("cz_session=").unwrap().to_owned();
    let bytes = axum::body::to_bytes(resp.into_body(), usize::MAX).await.unwrap();
    let who: Value = serde_json::from_slice(&bytes).unwrap();
    assert_eq!(who["actor"], "alice");
    let csrf = who["csrf"].as_str().unwrap().to_owned();
    let cookie = format!("cz_session={secret}");

    let with_cookie = |method: Method, uri: &str, extra: &[(&str, &str)]| {
        let mut b = Request::builder().method(method).uri(uri).header("cookie", &cookie);
        for (k, v) in extra {
            b = b.header(*k, *v);
        }
        b.header("content-type", "application/json").body(Body::from("{}")).unwrap()
    };
    let r = h.call(with_cookie(Method::GET, "/ui/session", &[])).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text);
    assert_eq!(r.json()["csrf"], csrf.as_str());
    let r = h.call(with_cookie(Method::GET, "/v1/jobs", &[])).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text);

    let (sov, job) = h.submit(&body("consoled")).await;
    h.wait_status(&job, "succeeded").await;
    let resume = format!("/v1/jobs/{job}/resume");
    // A verb without the CSRF header, with a forged one, or from another
    // site: refused before the handler runs (no audit entry).
    for extra in [
        vec![],
        vec![("x-csrf-token", "0000")],
        vec![("x-csrf-token", csrf.as_str()), ("origin", "https://evil.example")],
        vec![("x-csrf-token", csrf.as_str()), ("sec-fetch-site", "cross-site")],
    ] {
        let r = h.call(with_cookie(Method::POST, &resume, &extra)).await;
        assert_eq!(r.status, StatusCode::FORBIDDEN, "{extra:?}: {}", r.text);
        assert_eq!(r.json()["error"]["code"], "csrf");
    }
    let audit = h.state.store.audit(Some(job.parse().unwrap())).await.unwrap();
    assert!(!audit.iter().any(|a| a.action.starts_with("resume")), "{audit:?}");
    // With it, the verb reaches the handler, and the audit names Alice.
    let r = h.call(with_cookie(Method::POST, &resume, &[("x-csrf-token", &csrf)])).await;
    assert_eq!(r.status, StatusCode::CONFLICT, "{}", r.text);
    let audit = h.state.store.audit(Some(job.parse().unwrap())).await.unwrap();
    let refused = audit.iter().find(|a| a.action == "resume.refused").expect("audited");
    assert_eq!(refused.actor, "alice");

    // The Sovereign page's data: regions with addressed nodes, DNS, API.
    let s = h.get(&format!("/v1/sovereigns/{sov}")).await;
    assert_eq!(s["org_name"], "Acme", "{s:#}");
    let nodes = s["regions"][0]["nodes"].as_array().unwrap();
    assert_eq!(nodes.len(), 2, "{s:#}");
    assert!(nodes.iter().all(|n| n["stage"] == "ready" && n["ipv4"].is_string()), "{s:#}");
    assert!(s["regions"][0]["load_balancer"].is_string(), "{s:#}");
    assert_eq!(s["dns"]["state"], "propagated", "{s:#}");
    assert!(s["api_endpoint"].as_str().unwrap().starts_with("https://api."), "{s:#}");
    assert!(s["custody"]["custodians"].as_array().is_some_and(|c| !c.is_empty()), "{s:#}");
    assert!(!s.to_string().contains("BEGIN AGE"), "no blob on the page: {s:#}");
    let d = h.get(&format!("/v1/jobs/{job}")).await;
    assert!(d["last_event_id"].as_i64().unwrap() > 10, "{d:#}");
    assert_eq!(d["nodes"].as_array().unwrap().len(), 2);

    // The store holds digests, never the session secret.
    let snap = h.snapshot().await;
    assert!(!snap.contains(&secret));

    // Sign-out needs the CSRF header too, then the cookie is dead.
    let r = h.call(with_cookie(Method::DELETE, "/ui/session", &[])).await;
    assert_eq!(r.status, StatusCode::FORBIDDEN, "{}", r.text);
    let r = h.call(with_cookie(Method::DELETE, "/ui/session", &[("x-csrf-token", &csrf)])).await;
    assert_eq!(r.status, StatusCode::NO_CONTENT, "{}", r.text);
    let r = h.call(with_cookie(Method::GET, "/v1/jobs", &[])).await;
    assert_eq!(r.status, StatusCode::UNAUTHORIZED, "{}", r.text);

    // A new session ends when Alice's token is revoked.
    let resp = h.app.clone().oneshot(sign_in(alice)).await.unwrap();
    let set = resp.headers()["set-cookie"].to_str().unwrap().to_owned();
    let cookie2 = set.split(';').next().unwrap().to_owned();
    let get = |c: &str| {
        Request::builder().uri("/v1/jobs").header("cookie", c).body(Body::empty()).unwrap()
    };
    assert_eq!(h.call(get(&cookie2)).await.status, StatusCode::OK);
    std::fs::write(&file, entry("a-new-token-for-alice-000")).unwrap();
    tokio::time::sleep(Duration::from_millis(1100)).await;
    assert_eq!(h.call(get(&cookie2)).await.status, StatusCode::UNAUTHORIZED);
}

/// The console's assets carry a strict CSP; a runbook renders as HTML.
#[tokio::test]
async fn console_assets_carry_a_strict_csp_and_runbooks_render() {
    let h = harness().await;
    for uri in ["/ui", "/ui/app.js", "/ui/app.css", "/ui/runbooks/needs-operator-quota.md"] {
        let resp = h.app.clone().oneshot(Request::get(uri).body(Body::empty()).unwrap()).await;
        let resp = resp.unwrap();
        assert_eq!(resp.status(), StatusCode::OK, "{uri}");
        let csp = resp.headers()["content-security-policy"].to_str().unwrap();
        assert!(csp.contains("script-src 'self'") && !csp.contains("unsafe"), "{csp}");
        assert_eq!(resp.headers()["x-content-type-options"], "nosniff");
    }
    let r = h.req(Method::GET, "/ui/runbooks/needs-operator-quota.md", None, None).await;
    assert!(r.text.contains("<h1>") || r.text.contains("<h2>"), "{}", r.text);
    let r = h.req(Method::GET, "/ui/runbooks/..%2Fsecret.md", None, None).await;
    assert_eq!(r.status, StatusCode::NOT_FOUND);
    let disabled = harness_with(|c| c.console.enabled = false).await;
    assert_eq!(disabled.req(Method::GET, "/ui", None, None).await.status, StatusCode::NOT_FOUND);
}

/// The jobs list names the phase an unfinished job is on (without loading
/// any plan); a finished job has none.
#[tokio::test]
async fn the_jobs_list_names_the_current_phase() {
    let h = harness().await;
    let plan = [(
        "x-catalyst-fault-plan",
        r#"{"until_retry": {"custody/sealing-key": "needs-operator"}}"#,
    )];
    let r = h.submit_with(&body("phased"), &plan).await;
    assert_eq!(r.status, StatusCode::ACCEPTED, "{}", r.text);
    let job = r.json()["job_id"].as_str().unwrap().to_owned();
    h.wait_status(&job, "paused").await;
    let list = h.get("/v1/jobs").await;
    let row = list["jobs"].as_array().unwrap().iter().find(|j| j["id"] == job.as_str()).unwrap();
    assert_eq!(row["current_phase"], "custody", "{row}");
    assert!(row.get("plan").is_none() && row.get("request").is_none(), "{row}");
    assert_eq!(h.get(&format!("/v1/jobs/{job}")).await["current_phase"], "custody");
    let r = h.req(Method::POST, &format!("/v1/jobs/{job}/retry"), Some(OP), None).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text);
    h.wait_status(&job, "succeeded").await;
    let list = h.get("/v1/jobs").await;
    let row = list["jobs"].as_array().unwrap().iter().find(|j| j["id"] == job.as_str()).unwrap();
    assert!(row.get("current_phase").is_none(), "{row}");
}
