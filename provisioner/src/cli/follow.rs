//! `follow`: live progress of a job from its SSE stream.
//!
//! One progress bar per phase (lengths from the job's plan), the bar's
//! message the step running now or the last tofu/wait/log line; the cost
//! preview is printed as a small table. When stdout is not a terminal, one
//! plain line per phase and step transition is printed instead (CI and
//! tests read these).
//!
//! The stream is resumed with `Last-Event-ID` after a disconnect (bounded
//! retries), so a daemon restart mid-run costs nothing. Because a stream
//! replays history, `paused` and `end` events are checked against the job's
//! current status before exiting: an old pause that was since resumed is not
//! a reason to stop.
//!
//! Exit codes: 0 succeeded; 1 failed, cancelled or abandoned; 2 paused (an
//! operator must act; the pause's step, remediation and runbook are printed).

use std::collections::{BTreeSet, HashMap};
use std::io::IsTerminal;
use std::time::Duration;

use futures::StreamExt;
use indicatif::{MultiProgress, ProgressBar, ProgressDrawTarget, ProgressStyle};
use reqwest::Method;
use serde_json::Value;

use super::client::Client;

/// Consecutive reconnects without receiving anything before giving up.
const MAX_RECONNECTS: u32 = 10;

/// One parsed SSE frame.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Frame {
    pub id: Option<i64>,
    pub event: String,
    pub data: String,
}

/// Incremental `text/event-stream` parser.
#[derive(Default)]
pub struct SseParser {
    buf: String,
    cur: Frame,
}

impl SseParser {
    /// Feeds bytes; returns the frames completed by them.
    pub fn push(&mut self, chunk: &str) -> Vec<Frame> {
        self.buf.push_str(chunk);
        let mut out = Vec::new();
        while let Some(pos) = self.buf.find('\n') {
            let line: String = self.buf.drain(..=pos).collect();
            let line = line.trim_end_matches(['\n', '\r']);
            if line.is_empty() {
                let f = std::mem::take(&mut self.cur);
                if !f.data.is_empty() || !f.event.is_empty() {
                    out.push(f);
                }
                continue;
            }
            if line.starts_with(':') {
                continue; // comment (heartbeat)
            }
            let (field, value) = match line.split_once(':') {
                Some((f, v)) => (f, v.strip_prefix(' ').unwrap_or(v)),
                None => (line, ""),
            };
            match field {
                "id" => self.cur.id = value.parse().ok(),
                "event" => self.cur.event = value.to_owned(),
                "data" => {
                    if !self.cur.data.is_empty() {
                        self.cur.data.push('\n');
                    }
                    self.cur.data.push_str(value);
                }
                _ => {}
            }
        }
        out
    }
}

/// How a follow ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Outcome {
    Succeeded,
    Failed,
    Paused,
}

impl Outcome {
    pub fn exit_code(self) -> u8 {
        match self {
            Outcome::Succeeded => 0,
            Outcome::Failed => 1,
            Outcome::Paused => 2,
        }
    }
}

fn outcome_of(status: &str) -> Option<Outcome> {
    match status {
        "succeeded" => Some(Outcome::Succeeded),
        "failed" | "cancelled" | "abandoned" => Some(Outcome::Failed),
        "paused" => Some(Outcome::Paused),
        _ => None,
    }
}

trait Render {
    fn event(&mut self, kind: &str, ev: &Value);
    fn println(&self, line: &str);
    fn finish(&mut self);
}

/// Plain lines (stdout not a terminal).
struct Plain;

fn s<'a>(v: &'a Value, k: &str) -> &'a str {
    v.get(k).and_then(Value::as_str).unwrap_or_default()
}

/// A kit component's state change: `kit powerdns failing: CrashLoopBackOff: …`.
fn kit_line(ev: &Value) -> String {
    let what = match s(ev, "component") {
        "" => format!("{} {}", s(ev, "kind"), s(ev, "name")),
        c => c.to_owned(),
    };
    let mut line = format!("kit {what} {}", s(ev, "state"));
    if !s(ev, "condition").is_empty() {
        line.push_str(&format!(": {}: {}", s(ev, "condition"), s(ev, "message")));
    }
    line
}

/// A `dns` event: a registrar's change, or what a public resolver sees
/// (sent only when it changes, so every one is worth a line).
fn dns_line(ev: &Value) -> String {
    format!("dns {}", s(ev, "message"))
}

fn step_line(ev: &Value) -> String {
    let state = s(ev, "state");
    let mut line = format!("step {} {state}", s(ev, "step"));
    if let Some(a) = ev.get("attempt").and_then(Value::as_u64) {
        line.push_str(&format!(" (attempt {a}"));
        if let Some(ms) = ev.get("elapsed_ms").and_then(Value::as_u64) {
            line.push_str(&format!(", {ms} ms"));
        }
        line.push(')');
    }
    if let Some(err) = ev.get("error") {
        line.push_str(&format!(" [{}] {}", s(err, "class"), s(err, "message")));
    }
    line
}

pub fn cost_table(ev: &Value) -> String {
    let mut out = format!(
        "Cost preview: {:.2} {cur}/hour, {:.2} {cur}/month",
        ev.get("hourly").and_then(Value::as_f64).unwrap_or_default(),
        ev.get("monthly").and_then(Value::as_f64).unwrap_or_default(),
        cur = s(ev, "currency"),
    );
    for r in ev.get("regions").and_then(Value::as_array).into_iter().flatten() {
        let group = |k: &str| {
            let g = r.get(k).cloned().unwrap_or_default();
            format!(
                "{} x {}",
                g.get("count").and_then(Value::as_u64).unwrap_or_default(),
                s(&g, "sku")
            )
        };
        out.push_str(&format!(
            "\n  {:<6} control plane {:<12} workers {:<12} lb {:<6} {:>9.2}/month",
            s(r, "location"),
            group("control_plane"),
            group("workers"),
            r.pointer("/load_balancer/type").and_then(Value::as_str).unwrap_or_default(),
            r.get("monthly_eur").and_then(Value::as_f64).unwrap_or_default(),
        ));
    }
    out
}

impl Render for Plain {
    fn event(&mut self, kind: &str, ev: &Value) {
        match kind {
            "phase" => println!("phase {} {}", s(ev, "phase"), s(ev, "state")),
            "step" => println!("{}", step_line(ev)),
            "job" => println!("job {} ({})", s(ev, "status"), s(ev, "mode")),
            "cost" => println!("{}", cost_table(ev)),
            "operator" => println!("operator {} by {}", s(ev, "action"), s(ev, "actor")),
            // Installing → healthy is the common path; failures and
            // hand-overs are worth a line each.
            "kit" if !matches!(s(ev, "state"), "installing" | "healthy") => {
                println!("{}", kit_line(ev))
            }
            "dns" => println!("{}", dns_line(ev)),
            _ => {}
        }
    }
    fn println(&self, line: &str) {
        println!("{line}");
    }
    fn finish(&mut self) {}
}

/// One bar per phase (stdout is a terminal).
struct Bars {
    multi: MultiProgress,
    bars: HashMap<String, ProgressBar>,
    done: HashMap<String, BTreeSet<String>>,
}

impl Bars {
    fn new(phases: &[(String, Vec<String>, Vec<String>)]) -> Bars {
        let multi = MultiProgress::with_draw_target(ProgressDrawTarget::stdout());
        let style = ProgressStyle::with_template("{prefix:>20} [{bar:30}] {pos:>3}/{len:<3} {msg}")
            .expect("valid template")
            .progress_chars("=> ");
        let mut bars = HashMap::new();
        let mut done = HashMap::new();
        for (phase, steps, finished) in phases {
            let bar = multi.add(ProgressBar::new(steps.len() as u64));
            bar.set_style(style.clone());
            bar.set_prefix(phase.clone());
            bar.set_position(finished.len() as u64);
            bars.insert(phase.clone(), bar);
            done.insert(phase.clone(), finished.iter().cloned().collect());
        }
        Bars { multi, bars, done }
    }

    fn bar(&self, phase: &str) -> Option<&ProgressBar> {
        self.bars.get(phase)
    }
}

impl Render for Bars {
    fn event(&mut self, kind: &str, ev: &Value) {
        let phase = s(ev, "phase").to_owned();
        match kind {
            "phase" => {
                if let Some(b) = self.bar(&phase) {
                    b.set_message(s(ev, "state").to_owned());
                }
            }
            "step" => {
                let step = s(ev, "step").to_owned();
                let state = s(ev, "state");
                let set = self.done.entry(phase.clone()).or_default();
                match state {
                    "succeeded" | "skipped" => {
                        set.insert(step.clone());
                    }
                    "undone" | "undo_started" => {
                        set.remove(&step);
                    }
                    _ => {}
                }
                let n = set.len() as u64;
                if let Some(b) = self.bar(&phase) {
                    b.set_position(n);
                    let short = step.split_once('/').map_or(step.as_str(), |(_, x)| x);
                    b.set_message(format!("{short} {state}"));
                }
                if state == "failed" || state == "undo_failed" {
                    let line = step_line(ev);
                    self.println(&line);
                }
            }
            "tofu" | "wait" | "log" | "ssh" | "cloud" | "custody" => {
                let msg = [s(ev, "message"), s(ev, "reason"), s(ev, "type")]
                    .into_iter()
                    .find(|m| !m.is_empty())
                    .unwrap_or(kind)
                    .to_owned();
                if let Some(b) = self.bar(&phase) {
                    b.set_message(msg);
                }
            }
            "kit" => {
                if let Some(b) = self.bar(&phase) {
                    b.set_message(kit_line(ev));
                }
                if !matches!(s(ev, "state"), "installing" | "healthy") {
                    self.println(&kit_line(ev));
                }
            }
            "dns" => {
                if let Some(b) = self.bar(&phase) {
                    b.set_message(s(ev, "message").to_owned());
                }
                self.println(&dns_line(ev));
            }
            "cost" => self.println(&cost_table(ev)),
            "operator" => {
                self.println(&format!("operator {} by {}", s(ev, "action"), s(ev, "actor")))
            }
            _ => {}
        }
    }
    fn println(&self, line: &str) {
        let _ = self.multi.println(line);
    }
    fn finish(&mut self) {
        for b in self.bars.values() {
            b.abandon();
        }
    }
}

/// Phases of a job: `(phase, step ids, done step ids)`.
fn phases_of(detail: &Value) -> Vec<(String, Vec<String>, Vec<String>)> {
    detail
        .get("phases")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .map(|p| {
            let steps: Vec<&Value> =
                p.get("steps").and_then(Value::as_array).into_iter().flatten().collect();
            let ids = steps.iter().map(|st| s(st, "step").to_owned()).collect();
            let done = steps
                .iter()
                .filter(|st| matches!(s(st, "state"), "succeeded" | "skipped"))
                .map(|st| s(st, "step").to_owned())
                .collect();
            (s(p, "phase").to_owned(), ids, done)
        })
        .collect()
}

/// Prints why a job is paused.
pub fn describe_pause(detail: &Value) -> String {
    let pause = detail.get("pause").cloned().unwrap_or_default();
    let err = pause.get("error").cloned().unwrap_or_default();
    let mut out = format!("Job {} is paused at step {}", s(detail, "id"), s(&pause, "step"));
    if pause.get("unwinding").and_then(Value::as_bool) == Some(true) {
        out.push_str(" (while rolling back)");
    }
    out.push_str(&format!("\n  error [{}]: {}", s(&err, "class"), s(&err, "message")));
    out.push_str(&format!("\n  remediation: {}", s(&err, "remediation")));
    out.push_str(&format!("\n  runbook: {}", s(&err, "runbook")));
    out.push_str(&format!(
        "\n  then: catalyst-zero resume {id} | retry {id} --step <STEP> | skip {id} --step <STEP> --reason <TEXT> | cancel {id}",
        id = s(detail, "id")
    ));
    out
}

/// Follows `job` to its end; returns how it ended.
pub async fn follow(client: &Client, job: &str) -> anyhow::Result<Outcome> {
    let path = format!("/v1/jobs/{job}");
    let detail = client.get(&path).await?;
    let mut render: Box<dyn Render> = if std::io::stdout().is_terminal() {
        Box::new(Bars::new(&phases_of(&detail)))
    } else {
        Box::new(Plain)
    };
    render.println(&format!(
        "Following job {job} ({} of {})",
        s(&detail, "kind"),
        s(&detail, "sovereign_id")
    ));
    let result = stream(client, job, render.as_mut()).await;
    render.finish();
    let outcome = result?;
    let detail = client.get(&path).await?;
    match outcome {
        Outcome::Paused => eprintln!("{}", describe_pause(&detail)),
        Outcome::Failed => {
            eprintln!("Job {job} ended {}", s(&detail, "status"));
            if let Some(e) = detail.get("error").filter(|e| !e.is_null()) {
                eprintln!("  error: {e}");
            }
        }
        Outcome::Succeeded => println!("Job {job} succeeded."),
    }
    Ok(outcome)
}

async fn stream(client: &Client, job: &str, render: &mut dyn Render) -> anyhow::Result<Outcome> {
    let events = format!("/v1/jobs/{job}/events");
    let mut last: i64 = 0;
    let mut failures = 0u32;
    loop {
        let mut req = client.request(Method::GET, &events).header("accept", "text/event-stream");
        if last > 0 {
            req = req.header("last-event-id", last.to_string());
        }
        let resp = match req.send().await {
            Ok(r) if r.status().is_success() => r,
            Ok(r) if r.status().is_client_error() => {
                let err = client
                    .send(client.request(Method::GET, &format!("{events}?format=json")))
                    .await;
                return Err(err
                    .err()
                    .unwrap_or_else(|| anyhow::anyhow!("the daemon answered {}", r.status())));
            }
            Ok(r) => {
                failures += 1;
                tracing::debug!(status = %r.status(), "Event stream refused; reconnecting.");
                backoff(&mut failures).await?;
                continue;
            }
            Err(e) => {
                failures += 1;
                tracing::debug!(
                    error = &e as &dyn std::error::Error,
                    "Event stream unreachable; reconnecting."
                );
                backoff(&mut failures).await?;
                continue;
            }
        };
        let mut parser = SseParser::default();
        let mut body = resp.bytes_stream();
        while let Some(chunk) = body.next().await {
            let Ok(chunk) = chunk else { break };
            for f in parser.push(&String::from_utf8_lossy(&chunk)) {
                failures = 0;
                if let Some(id) = f.id {
                    last = last.max(id);
                }
                let ev: Value = serde_json::from_str(&f.data).unwrap_or_default();
                render.event(&f.event, &ev);
                let decisive =
                    f.event == "end" || (f.event == "job" && s(&ev, "status") == "paused");
                if decisive {
                    // History replays: trust only the job's current status.
                    let now = client.get(&format!("/v1/jobs/{job}")).await?;
                    if let Some(o) = outcome_of(s(&now, "status")) {
                        return Ok(o);
                    }
                }
            }
        }
        // The stream closed (end already consumed, daemon restart, proxy).
        let now = client.get(&format!("/v1/jobs/{job}")).await?;
        if let Some(o) = outcome_of(s(&now, "status")) {
            let total =
                client.get(&format!("/v1/jobs/{job}/events?format=json&after={last}")).await?;
            if total.get("events").and_then(Value::as_array).is_none_or(|e| e.is_empty()) {
                return Ok(o);
            }
        }
        failures += 1;
        backoff(&mut failures).await?;
    }
}

async fn backoff(failures: &mut u32) -> anyhow::Result<()> {
    if *failures > MAX_RECONNECTS {
        anyhow::bail!("lost the event stream {MAX_RECONNECTS} times in a row; giving up");
    }
    let ms = (250u64 << (*failures).min(5)).min(5_000);
    tokio::time::sleep(Duration::from_millis(ms)).await;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parser_handles_split_frames_comments_and_crlf() {
        let mut p = SseParser::default();
        assert!(p.push(": heartbeat\n\nid: 3\nevent: st").is_empty());
        let fs = p.push("ep\r\ndata: {\"a\":1}\r\n\r\nid: 4\nevent: end\ndata: {}\n\n");
        assert_eq!(fs.len(), 2);
        assert_eq!(fs[0], Frame { id: Some(3), event: "step".into(), data: "{\"a\":1}".into() });
        assert_eq!(fs[1].event, "end");
    }

    #[test]
    fn outcomes_map_to_exit_codes() {
        assert_eq!(outcome_of("succeeded").map(Outcome::exit_code), Some(0));
        assert_eq!(outcome_of("cancelled").map(Outcome::exit_code), Some(1));
        assert_eq!(outcome_of("paused").map(Outcome::exit_code), Some(2));
        assert_eq!(outcome_of("running"), None);
    }
}
