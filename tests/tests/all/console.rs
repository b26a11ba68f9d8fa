//! The operator console (`/ui`) in a real headless Chromium, against the
//! real daemon on the `sim` backend: sign-in, a job followed live through a
//! kill -9 of the daemon, a paused step acted on from the page, hostile
//! names shown as text, and the refusals (a wizard token, a forged CSRF
//! request, a revoked token).
//!
//! The screenshots the README shows are written by these tests: to
//! `target/console-screenshots/`, or to `$CZ_SCREENSHOTS` (relative to the
//! repository); `CZ_SCREENSHOTS=docs/console` refreshes the README's.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::Result;
use cz_testkit::browser::{self, Browser};
use cz_testkit::daemon::{Api, Daemon, TOKEN, files_containing};
use cz_testkit::requests::{CLOUD_TOKEN, request};
use serde_json::{Value, json};

/// Page waits: generous, the machine runs other tests beside these.
const PAGE: Duration = Duration::from_secs(60);
const JOB: Duration = Duration::from_secs(300);

/// Where the screenshots go: `$CZ_SCREENSHOTS`, else
/// `target/console-screenshots/` (a test run leaves the repository's copies
/// in `docs/console/` alone; `CZ_SCREENSHOTS=docs/console` refreshes them).
fn screenshots() -> PathBuf {
    let repo = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..");
    match std::env::var_os("CZ_SCREENSHOTS").map(PathBuf::from) {
        Some(dir) if dir.is_relative() => repo.join(dir),
        Some(dir) => dir,
        None => repo.join("target/console-screenshots"),
    }
}

/// Without Chromium these tests fail (`.ci/run` installs it), unless
/// `CZ_ALLOW_NO_BROWSER=1` says to skip them with a banner.
fn no_browser(test: &str) -> bool {
    if browser::available() {
        return false;
    }
    let why =
        "no /usr/bin/chromium + /usr/bin/chromedriver (apt-get install chromium chromium-driver)";
    assert!(std::env::var_os("CZ_ALLOW_NO_BROWSER").is_some(), "{test}: {why}");
    cz_testkit::skip(test, why)
}

const ALICE: &str = "alice-console-token-0123456789";
const WIZARD: &str = "wizard-console-token-012345678";

/// A daemon on the `sim` backend with fault plans on and a tokens file
/// (`alice`, an operator; `wiz`, a wizard), and a client of its API.
struct Console {
    dir: tempfile::TempDir,
    d: Daemon,
    api: Api,
}

impl Console {
    fn start(latency: f64) -> Console {
        let dir = tempfile::tempdir().unwrap();
        let data = dir.path().join("data");
        std::fs::create_dir(&data).unwrap();
        let people = dir.path().join("tokens.toml");
        tokens_file(&people, &[("alice", "operator", ALICE), ("wiz", "wizard", WIZARD)]);
        let mut d = Daemon::new(&data, latency);
        d.backend_args.push("--fault-plans".into());
        d.env.push(("CATALYST_ZERO_TOKENS_FILE".into(), people.display().to_string()));
        d.start().unwrap();
        let api = Api::new(d.port);
        Console { dir, d, api }
    }

    fn people(&self) -> PathBuf {
        self.dir.path().join("tokens.toml")
    }
}

/// Opens the console and submits `token` on its sign-in screen.
fn enter_token(b: &Browser, d: &Daemon, token: &str) -> Result<()> {
    b.goto(&d.url("/ui"))?;
    b.wait_count("#token", 1, PAGE)?;
    b.type_into("#token", token)?;
    b.click("#sign-in")
}

/// Signs in on the sign-in screen and waits for the person's name.
fn sign_in(b: &Browser, d: &Daemon, token: &str, who: &str) -> Result<()> {
    enter_token(b, d, token)?;
    b.wait_text("#whoami", who, PAGE)
}

/// Moves the single-page app to `route` without a page load.
fn route(b: &Browser, route: &str) -> Result<()> {
    b.script("location.hash = arguments[0];", json!([route])).map(drop)
}

fn submit(api: &Api, body: &Value, fault_plan: Option<&str>) -> (String, String) {
    let headers: Vec<(&str, &str)> =
        fault_plan.map(|p| vec![("X-Catalyst-Fault-Plan", p)]).unwrap_or_default();
    let (status, resp) = api.post_with("/v1/sovereigns", body, &headers).unwrap();
    assert_eq!(status, 202, "{resp}");
    (resp["sovereign_id"].as_str().unwrap().to_owned(), resp["job_id"].as_str().unwrap().to_owned())
}

/// The event ids the page shows, in order.
fn shown_event_ids(b: &Browser) -> Vec<i64> {
    b.attrs("#events .event", "data-id").unwrap().iter().map(|s| s.parse().unwrap()).collect()
}

/// Submit a job, watch its phases advance without a reload, kill -9 the
/// daemon mid-job, restart it, and see the page reconnect and finish the
/// job with a gap-free, duplicate-free event log. Also the jobs list and
/// the Sovereign page, and nothing secret anywhere.
#[test]
fn the_console_follows_a_job_live_through_a_kill9_and_a_restart() {
    if no_browser("the_console_follows_a_job_live_through_a_kill9_and_a_restart") {
        return;
    }
    let Console { dir, mut d, api } = Console::start(0.02);
    let b = Browser::new().unwrap();
    sign_in(&b, &d, TOKEN, "operator").unwrap();

    // Slow motion so the job is still running when the daemon is killed.
    let (sov, job) = submit(&api, &request("live", 1, 2), Some(r#"{"slow_ms": 60}"#));
    b.script("window.__sameDocument = 'yes';", json!([])).unwrap();
    route(&b, &format!("#/jobs/{job}")).unwrap();
    b.wait_for("a phase to succeed while the job runs", JOB, |b| {
        let done = b.count("#phases .phase[data-state='succeeded']")?;
        let running = b.text("#job-status")?.is_some_and(|s| s.trim() == "running");
        Ok((done >= 2 && running).then_some(()))
    })
    .unwrap();
    b.wait_any("#events .event", PAGE).unwrap();
    b.screenshot(&screenshots().join("job-running.png")).unwrap();

    d.kill9();
    b.wait_text("#stream-state", "reconnecting", PAGE).unwrap();
    std::thread::sleep(Duration::from_millis(500));
    d.start().unwrap();
    b.wait_text("#job-status", "succeeded", JOB).unwrap();
    b.wait_text("#stream-state", "ended", PAGE).unwrap();

    // The same document all along: no reload.
    assert_eq!(b.script("return window.__sameDocument;", json!([])).unwrap(), "yes");
    // A new client: the old one's pooled connection died with the daemon.
    let api = Api::new(d.port);
    let last = api.get(&format!("/v1/jobs/{job}")).unwrap()["last_event_id"].as_i64().unwrap();
    b.wait_for("the last event in the log", PAGE, |b| {
        Ok(shown_event_ids(b).last().is_some_and(|l| *l == last).then_some(()))
    })
    .unwrap();
    let ids = shown_event_ids(&b);
    assert!(ids.windows(2).all(|w| w[1] == w[0] + 1), "a gap or a duplicate in the log: {ids:?}");
    // Every node reached `ready`, one chip each.
    let stages = b.attrs("#nodes .node", "data-stage").unwrap();
    assert_eq!(stages, vec!["ready"; 3], "{stages:?}");
    let steps = b.attrs("#phases .chip", "data-state").unwrap();
    assert!(steps.len() > 20 && steps.iter().all(|s| s == "succeeded"), "{steps:?}");

    // Two more jobs for the list: one paused in the cluster phase, one
    // running (its current phase shown without opening it).
    let paused = r#"{"until_retry": {"cluster/cilium-fsn1": "needs-operator"}}"#;
    let (_, held) = submit(&api, &request("held", 1, 1), Some(paused));
    let (_, moving) = submit(&api, &request("moving", 1, 1), Some(r#"{"slow_ms": 400}"#));
    route(&b, "#/jobs").unwrap();
    b.wait_text(&format!("#jobs tr[data-job='{job}'] .status"), "succeeded", PAGE).unwrap();
    b.wait_text(&format!("#jobs tr[data-job='{held}'] .status"), "paused", JOB).unwrap();
    b.wait_text(&format!("#jobs tr[data-job='{held}'] .phase"), "cluster", PAGE).unwrap();
    b.wait_for("the running job's phase", PAGE, |b| {
        let row = format!("#jobs tr[data-job='{moving}']");
        let running = b.text(&format!("{row} .status"))?.is_some_and(|s| s.trim() == "running");
        let phase = b.text(&format!("{row} .phase"))?.unwrap_or_default();
        Ok((running && !phase.trim().is_empty() && phase.trim() != "—").then_some(()))
    })
    .unwrap();
    b.screenshot(&screenshots().join("jobs.png")).unwrap();

    route(&b, &format!("#/sovereigns/{sov}")).unwrap();
    b.wait_count("#regions .node", 3, PAGE).unwrap();
    let page = b.text("body").unwrap().unwrap_or_default();
    assert!(page.contains("live.omani.works"), "{page}");
    b.screenshot(&screenshots().join("sovereign.png")).unwrap();

    // No secret on the page, and the session's secret nowhere on disk.
    let html = b.script("return document.documentElement.outerHTML;", json!([])).unwrap();
    assert!(!html.as_str().unwrap().contains(CLOUD_TOKEN));
    assert!(!html.as_str().unwrap().contains("BEGIN AGE"));
    let cookie = session_cookie(&b);
    assert!(files_containing(dir.path(), cookie.as_bytes()).is_empty());
    assert!(files_containing(dir.path(), CLOUD_TOKEN.as_bytes()).is_empty());
}

/// The browser's session cookie, as WebDriver sees it (the page cannot:
/// it is HttpOnly).
fn session_cookie(b: &Browser) -> String {
    let v = b.script("return document.cookie;", json!([])).unwrap();
    assert_eq!(v, "", "the session cookie is HttpOnly: scripts see no cookie");
    let c = b.cookie("cz_session").unwrap().expect("a session cookie");
    assert_eq!(c["httpOnly"], true, "{c}");
    assert_eq!(c["sameSite"], "Strict", "{c}");
    c["value"].as_str().unwrap().to_owned()
}

fn tokens_file(path: &std::path::Path, people: &[(&str, &str, &str)]) {
    use sha2::Digest as _;
    let text: String = people
        .iter()
        .map(|(name, role, token)| {
            format!(
                "[[token]]\nname = \"{name}\"\nrole = \"{role}\"\nsha256 = \"{}\"\n",
                hex::encode(sha2::Sha256::digest(token.as_bytes()))
            )
        })
        .collect();
    std::fs::write(path, text).unwrap();
}

/// A job paused by a fault shows its class, remediation and rendered
/// runbook; retry, confirmed in the page, finishes it, and the audit names
/// the person. Revoking her token sends the page back to sign-in with
/// nothing of the job left in it.
#[test]
fn a_paused_step_is_explained_and_retried_from_the_page() {
    if no_browser("a_paused_step_is_explained_and_retried_from_the_page") {
        return;
    }
    let c = Console::start(0.0);
    let (d, api) = (&c.d, &c.api);
    let b = Browser::new().unwrap();
    sign_in(&b, d, ALICE, "alice").unwrap();

    let plan = r#"{"until_retry": {"custody/sealing-key": "needs-operator"}}"#;
    let (_, job) = submit(api, &request("paused", 1, 1), Some(plan));
    route(&b, &format!("#/jobs/{job}")).unwrap();
    b.wait_text("#job-status", "paused", JOB).unwrap();
    b.wait_text("#pause .error-class", "needs-operator", PAGE).unwrap();
    let remediation = b.text("#pause .remediation").unwrap().unwrap_or_default();
    assert!(!remediation.trim().is_empty());
    // The runbook is rendered (headings, a table), not a file path.
    b.wait_any("#pause .runbook h1, #pause .runbook h2", PAGE).unwrap();
    assert!(b.count("#pause .runbook table").unwrap() > 0);
    let chip = b.attrs("#phases .chip[data-step='custody/sealing-key']", "data-state").unwrap();
    assert_eq!(chip, ["paused"]);
    b.screenshot(&screenshots().join("job-paused.png")).unwrap();

    // Cancel in the dialog does nothing; OK retries.
    b.click("button[data-verb='retry']").unwrap();
    b.wait_count("#confirm[open]", 1, PAGE).unwrap();
    b.click("#confirm-cancel").unwrap();
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(api.status(&job).as_deref(), Some("paused"));
    b.click("button[data-verb='retry']").unwrap();
    b.wait_count("#confirm[open]", 1, PAGE).unwrap();
    b.click("#confirm-ok").unwrap();
    b.wait_for("the verb's outcome", PAGE, |b| {
        Ok(b.text("#verb-outcome")?.filter(|t| !t.trim().is_empty()))
    })
    .unwrap();
    b.wait_text("#job-status", "succeeded", JOB).unwrap();
    let audit = api.get(&format!("/v1/audit?job={job}")).unwrap();
    let retry = audit["entries"]
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["action"] == "retry")
        .cloned()
        .unwrap_or_else(|| panic!("no retry in the audit: {audit}"));
    assert_eq!(retry["actor"], "alice", "{retry}");

    // Alice's token is revoked: the page goes back to sign-in, and nothing
    // of the job stays in it.
    tokens_file(&c.people(), &[("wiz", "wizard", WIZARD)]);
    b.wait_count("#sign-in-form", 1, PAGE).unwrap();
    let page = b.text("body").unwrap().unwrap_or_default();
    assert!(!page.contains(&job), "the job is still on the page: {page}");
    assert_eq!(b.count("#job-status, #events .event").unwrap(), 0);
}

/// A wizard token opens no console; a request without the CSRF token, or
/// with a forged one, or from another site, changes nothing.
#[test]
fn a_wizard_token_and_forged_requests_are_refused() {
    if no_browser("a_wizard_token_and_forged_requests_are_refused") {
        return;
    }
    let c = Console::start(0.0);
    let (d, api) = (&c.d, &c.api);
    // A paused job: a cancel would change it.
    let plan = r#"{"until_retry": {"preflight/quotas": "needs-operator"}}"#;
    let (_, job) = submit(api, &request("forged", 1, 0), Some(plan));
    api.wait_status(&job, &["paused"], JOB);

    let b = Browser::new().unwrap();
    enter_token(&b, d, WIZARD).unwrap();
    b.wait_for("the refusal", PAGE, |b| {
        Ok(b.text("#sign-in-error")?.filter(|t| !t.trim().is_empty()))
    })
    .unwrap();
    assert_eq!(b.count("#whoami").unwrap() + b.count("#jobs").unwrap(), 0);
    assert!(b.cookie("cz_session").unwrap().is_none(), "no session for a wizard");

    sign_in(&b, d, TOKEN, "operator").unwrap();
    // From the console's own origin, but without the CSRF header or with a
    // forged one: refused.
    let post = |csrf: Option<&str>| -> Value {
        b.script(
            "const [url, csrf, done] = [arguments[0], arguments[1], arguments[2]];
             const h = {'content-type': 'application/json'};
             if (csrf) h['x-csrf-token'] = csrf;
             return fetch(url, {method: 'POST', headers: h, body: '{}', credentials: 'same-origin'})
               .then(async r => ({status: r.status, body: await r.text()}));",
            json!([format!("/v1/jobs/{job}/cancel"), csrf]),
        )
        .unwrap()
    };
    for forged in [None, Some("0123456789abcdef")] {
        let r = post(forged);
        assert_eq!(r["status"], 403, "{r}");
        assert!(r["body"].as_str().unwrap().contains("csrf"), "{r}");
    }
    // From another site (a page of another origin posting a form): the
    // SameSite=Strict cookie is not sent, so it is not even signed in.
    let form = format!(
        "data:text/html,<form method=post enctype=text/plain action='{}'>\
         <input name='x' value='y'></form>",
        d.url(&format!("/v1/jobs/{job}/cancel"))
    );
    b.goto(&form).unwrap();
    b.script("document.forms[0].submit();", json!([])).unwrap();
    b.wait_for("the other site's post to be answered", PAGE, |b| {
        Ok(b.text("body")?.filter(|t| t.contains("error")))
    })
    .unwrap();
    let answer = b.text("body").unwrap().unwrap_or_default();
    assert!(answer.contains("unauthorized"), "{answer}");
    assert_eq!(api.status(&job).as_deref(), Some("paused"), "nothing was cancelled");
    let audit = api.get(&format!("/v1/audit?job={job}")).unwrap();
    assert!(
        !audit["entries"].as_array().unwrap().iter().any(|e| e["action"] == "cancel"),
        "{audit}"
    );
}

/// Org names come from the public wizard: `<script>`, an `<img onerror>`
/// and quotes are shown as text and run nothing; control characters are
/// refused at the API with the field named.
#[test]
fn hostile_org_names_are_text_and_run_nothing() {
    if no_browser("hostile_org_names_are_text_and_run_nothing") {
        return;
    }
    let c = Console::start(0.0);
    let (d, api) = (&c.d, &c.api);
    let hostile = r#"<script>window.__pwned=1</script>"><img src=x onerror="window.__pwned=2">'"#;
    let mut body = request("hostile", 1, 0);
    body["org"]["name"] = json!(hostile);
    let (sov, job) = submit(api, &body, None);
    let mut controls = request("controls", 1, 0);
    controls["org"]["name"] = json!("Acme\u{1b}[31m\u{7}\u{202e}");
    let (status, resp) = api.post("/v1/sovereigns", &controls).unwrap();
    assert_eq!(status, 422, "{resp}");
    assert!(resp.to_string().contains("org.name"), "{resp}");
    api.wait_status(&job, &["succeeded"], JOB);

    let b = Browser::new().unwrap();
    sign_in(&b, d, TOKEN, "operator").unwrap();
    route(&b, &format!("#/sovereigns/{sov}")).unwrap();
    b.wait_text("#sovereign-org", hostile, PAGE).unwrap();
    route(&b, &format!("#/jobs/{job}")).unwrap();
    b.wait_text("#job-status", "succeeded", PAGE).unwrap();
    route(&b, "#/jobs").unwrap();
    b.wait_any("#jobs tr[data-job]", PAGE).unwrap();
    assert_eq!(b.script("return window.__pwned;", json!([])).unwrap(), Value::Null);
    assert_eq!(b.count("img, script:not([src])").unwrap(), 0, "no element was injected");
    let refused: Vec<(String, String)> = b
        .console_log()
        .unwrap()
        .into_iter()
        .filter(|(_, m)| m.contains("Content Security Policy") || m.contains("onerror"))
        .collect();
    assert!(refused.is_empty(), "the page tried to run something: {refused:?}");
}

/// A job with a long log opens on its newest page, not its whole
/// log; "Load older" pages back, gap-free. (How fast it opens is printed,
/// not asserted: speed belongs to benchmarks.)
#[test]
fn a_long_event_log_is_paged_not_loaded_whole() {
    if no_browser("a_long_event_log_is_paged_not_loaded_whole") {
        return;
    }
    let c = Console::start(0.0);
    let (d, api) = (&c.d, &c.api);
    // 23 servers: within the sim project's quota of 25.
    let (_, job) = submit(api, &request("long", 3, 20), None);
    let status = api.wait_status(&job, &["succeeded", "paused", "failed"], JOB);
    assert_eq!(status, "succeeded");
    let last = api.get(&format!("/v1/jobs/{job}")).unwrap()["last_event_id"].as_i64().unwrap();
    assert!(last > 400, "a long log: {last} events");

    let b = Browser::new().unwrap();
    sign_in(&b, d, TOKEN, "operator").unwrap();
    let started = std::time::Instant::now();
    route(&b, &format!("#/jobs/{job}")).unwrap();
    b.wait_for("the newest event", PAGE, |b| {
        Ok(shown_event_ids(b).last().is_some_and(|l| *l == last).then_some(()))
    })
    .unwrap();
    eprintln!("a job of {last} events opened in {:?}", started.elapsed());
    let first = shown_event_ids(&b);
    assert!(first.len() < 400 && first[0] > 1, "not the whole log: {} shown", first.len());
    assert!(first.windows(2).all(|w| w[1] == w[0] + 1), "{first:?}");

    b.click("#events-older").unwrap();
    b.wait_for("an older page", PAGE, |b| {
        Ok(shown_event_ids(b).first().is_some_and(|f| *f < first[0]).then_some(()))
    })
    .unwrap();
    let more = shown_event_ids(&b);
    assert!(more.windows(2).all(|w| w[1] == w[0] + 1), "a gap or a duplicate: {more:?}");
    assert!(more.len() <= 1000, "{}", more.len());
    assert_eq!(*more.last().unwrap(), last);
}
