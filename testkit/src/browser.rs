//! A real headless Chromium, driven over the W3C WebDriver protocol by
//! `chromedriver` (Debian's `chromium` and `chromium-driver`), for the
//! console's tests.
//!
//! One `chromedriver` per test binary ([`Driver::shared`], tied to the
//! binary); one browser session per [`Browser`], each with its own empty
//! profile. The client is the protocol's plain JSON over HTTP (a dozen
//! endpoints), kept here rather than pulling a WebDriver crate with its own
//! TLS stack (see DEPENDENCIES.md's trap of two rustls providers).
//!
//! Chromium runs as the probe of this machine kind found it must: headless,
//! no sandbox (root in a container), and none of its background
//! networking, which this closed network refuses.

use std::path::{Path, PathBuf};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, anyhow, bail};
use serde_json::{Value, json};

use crate::free_port;
use crate::process::{Tied, spawn_tied};

/// The W3C element reference key.
const ELEMENT: &str = "element-6066-11e4-a52e-4f735466cecf";

fn chromium() -> PathBuf {
    std::env::var_os("CZ_CHROMIUM").map(PathBuf::from).unwrap_or_else(|| "/usr/bin/chromium".into())
}

fn chromedriver() -> PathBuf {
    std::env::var_os("CZ_CHROMEDRIVER")
        .map(PathBuf::from)
        .unwrap_or_else(|| "/usr/bin/chromedriver".into())
}

/// Whether Chromium and chromedriver are installed (`.ci/run` installs
/// them; elsewhere the console tests say they skip).
pub fn available() -> bool {
    chromium().is_file() && chromedriver().is_file()
}

/// A `chromedriver` on a loopback port.
pub struct Driver {
    _tied: Tied,
    url: String,
    _logs: tempfile::TempDir,
}

impl Driver {
    /// The binary's one driver, started on first use.
    pub fn shared() -> &'static Driver {
        static D: OnceLock<Driver> = OnceLock::new();
        D.get_or_init(|| Driver::start().expect("chromedriver starts"))
    }

    fn start() -> Result<Driver> {
        let port = free_port();
        let logs = tempfile::tempdir()?;
        let log = logs.path().join("chromedriver.log");
        let tied = spawn_tied(&chromedriver(), &[format!("--port={port}")], &log);
        let url = format!("http://127.0.0.1:{port}");
        let http = Http::new();
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if http
                .call("GET", &format!("{url}/status"), None)
                .is_ok_and(|v| v["value"]["ready"] == true)
            {
                break;
            }
            if Instant::now() > deadline {
                bail!(
                    "chromedriver not ready in 20 s: {}",
                    std::fs::read_to_string(&log).unwrap_or_default()
                );
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        Ok(Driver { _tied: tied, url, _logs: logs })
    }
}

/// The smallest synchronous JSON-over-HTTP client (reqwest on its own
/// current-thread runtime).
struct Http {
    rt: tokio::runtime::Runtime,
    client: reqwest::Client,
}

impl Http {
    fn new() -> Http {
        crate::crypto();
        Http {
            rt: tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("a runtime"),
            client: reqwest::Client::builder()
                .timeout(Duration::from_secs(120))
                .build()
                .expect("a client"),
        }
    }

    /// `method url [body]` → the JSON answer; a WebDriver error
    /// (`{"value": {"error", "message"}}`) is an `Err`.
    fn call(&self, method: &str, url: &str, body: Option<&Value>) -> Result<Value> {
        let m = reqwest::Method::from_bytes(method.as_bytes())?;
        let mut req = self.client.request(m, url);
        if let Some(b) = body {
            req = req.json(b);
        }
        self.rt.block_on(async {
            let resp = req.send().await?;
            let status = resp.status();
            let v: Value = resp.json().await.unwrap_or(Value::Null);
            if status.is_success() {
                Ok(v)
            } else {
                Err(anyhow!(
                    "{method} {url}: {status} {} {}",
                    v["value"]["error"].as_str().unwrap_or_default(),
                    v["value"]["message"].as_str().unwrap_or_default()
                ))
            }
        })
    }
}

/// One browser window (a WebDriver session with its own empty profile).
pub struct Browser {
    http: Http,
    session: String,
    _profile: tempfile::TempDir,
}

impl Browser {
    /// A new headless Chromium, 1280×900.
    pub fn new() -> Result<Browser> {
        let driver = Driver::shared();
        let profile = tempfile::tempdir()?;
        let args = [
            "--headless=new".to_owned(),
            "--no-sandbox".into(),
            "--disable-gpu".into(),
            "--disable-dev-shm-usage".into(),
            "--disable-quic".into(),
            "--no-first-run".into(),
            "--disable-background-networking".into(),
            "--disable-component-update".into(),
            "--disable-sync".into(),
            "--window-size=1280,900".into(),
            format!("--user-data-dir={}", profile.path().display()),
        ];
        let caps = json!({ "capabilities": { "alwaysMatch": {
            "browserName": "chrome",
            "goog:chromeOptions": { "binary": chromium(), "args": args },
            "goog:loggingPrefs": { "browser": "ALL" },
        }}});
        let http = Http::new();
        let v = http.call("POST", &format!("{}/session", driver.url), Some(&caps))?;
        let session =
            v["value"]["sessionId"].as_str().ok_or_else(|| anyhow!("no session: {v}"))?.to_owned();
        Ok(Browser { http, session, _profile: profile })
    }

    fn at(&self, path: &str) -> String {
        format!("{}/session/{}{path}", Driver::shared().url, self.session)
    }

    fn call(&self, method: &str, path: &str, body: Option<Value>) -> Result<Value> {
        let v = self.http.call(method, &self.at(path), body.as_ref())?;
        Ok(v["value"].clone())
    }

    /// Navigates (a full page load).
    pub fn goto(&self, url: &str) -> Result<()> {
        self.call("POST", "/url", Some(json!({ "url": url }))).map(drop)
    }

    /// Runs `script` (a function body: `return ...`) with `args`.
    pub fn script(&self, script: &str, args: Value) -> Result<Value> {
        self.call("POST", "/execute/sync", Some(json!({ "script": script, "args": args })))
    }

    /// The element matching `css`, if any.
    fn element(&self, css: &str) -> Result<Option<String>> {
        let v =
            self.call("POST", "/elements", Some(json!({ "using": "css selector", "value": css })))?;
        Ok(v.as_array()
            .and_then(|a| a.first())
            .and_then(|e| e[ELEMENT].as_str())
            .map(str::to_owned))
    }

    fn must(&self, css: &str) -> Result<String> {
        self.element(css)?.ok_or_else(|| anyhow!("no element matches `{css}`"))
    }

    /// Clicks the element (a real pointer click, as a person would).
    pub fn click(&self, css: &str) -> Result<()> {
        let e = self.must(css)?;
        self.call("POST", &format!("/element/{e}/click"), Some(json!({}))).map(drop)
    }

    /// Types `text` into the element.
    pub fn type_into(&self, css: &str, text: &str) -> Result<()> {
        let e = self.must(css)?;
        self.call("POST", &format!("/element/{e}/value"), Some(json!({ "text": text }))).map(drop)
    }

    /// The element's rendered text (`None`: no such element).
    pub fn text(&self, css: &str) -> Result<Option<String>> {
        let v = self.script(
            "const e = document.querySelector(arguments[0]); return e ? e.textContent : null;",
            json!([css]),
        )?;
        Ok(v.as_str().map(str::to_owned))
    }

    /// An attribute of every element matching `css`, in document order.
    pub fn attrs(&self, css: &str, attr: &str) -> Result<Vec<String>> {
        let v = self.script(
            "return Array.from(document.querySelectorAll(arguments[0])).map(e => e.getAttribute(arguments[1]));",
            json!([css, attr]),
        )?;
        Ok(v.as_array()
            .map(|a| a.iter().filter_map(|x| x.as_str().map(str::to_owned)).collect())
            .unwrap_or_default())
    }

    /// How many elements match `css`.
    pub fn count(&self, css: &str) -> Result<usize> {
        let v =
            self.script("return document.querySelectorAll(arguments[0]).length;", json!([css]))?;
        Ok(v.as_u64().unwrap_or(0) as usize)
    }

    /// Polls `check` every 100 ms until it answers `Some`, at most `bound`;
    /// the error says what was awaited and what the page showed last.
    pub fn wait_for<T>(
        &self,
        what: &str,
        bound: Duration,
        mut check: impl FnMut(&Browser) -> Result<Option<T>>,
    ) -> Result<T> {
        let deadline = Instant::now() + bound;
        let mut last = String::new();
        loop {
            match check(self) {
                Ok(Some(v)) => return Ok(v),
                Ok(None) => {}
                Err(e) => last = e.to_string(),
            }
            if Instant::now() > deadline {
                let body = self.text("body").ok().flatten().unwrap_or_default();
                let shown: String = body.chars().take(2000).collect();
                bail!("waited {bound:?} for {what}; last error: {last}; the page shows: {shown}");
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// Waits until the element matching `css` has exactly `want` as text.
    pub fn wait_text(&self, css: &str, want: &str, bound: Duration) -> Result<()> {
        self.wait_for(&format!("`{css}` to read `{want}`"), bound, |b| {
            Ok(b.text(css)?.is_some_and(|t| t.trim() == want).then_some(()))
        })
    }

    /// The cookie `name` of the current page's origin (`None`: not set),
    /// with its flags (`httpOnly`, `sameSite`, ...).
    pub fn cookie(&self, name: &str) -> Result<Option<Value>> {
        match self.call("GET", &format!("/cookie/{name}"), None) {
            Ok(v) => Ok(Some(v)),
            Err(e) if e.to_string().contains("no such cookie") => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// Waits until exactly `n` elements match `css`.
    pub fn wait_count(&self, css: &str, n: usize, bound: Duration) -> Result<()> {
        self.wait_for(&format!("{n} of `{css}`"), bound, |b| Ok((b.count(css)? == n).then_some(())))
    }

    /// Waits until at least one element matches `css`.
    pub fn wait_any(&self, css: &str, bound: Duration) -> Result<()> {
        self.wait_for(&format!("`{css}`"), bound, |b| Ok((b.count(css)? > 0).then_some(())))
    }

    /// Saves a PNG of the viewport.
    pub fn screenshot(&self, path: &Path) -> Result<()> {
        let v = self.call("GET", "/screenshot", None)?;
        let b64 = v.as_str().ok_or_else(|| anyhow!("no screenshot"))?;
        use base64::Engine as _;
        let png = base64::engine::general_purpose::STANDARD.decode(b64).context("screenshot")?;
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir)?;
        }
        std::fs::write(path, png)?;
        Ok(())
    }

    /// The browser console's messages since the last call (level, text).
    pub fn console_log(&self) -> Result<Vec<(String, String)>> {
        let v = self.call("POST", "/se/log", Some(json!({ "type": "browser" })))?;
        Ok(v.as_array()
            .map(|a| {
                a.iter()
                    .map(|e| {
                        (
                            e["level"].as_str().unwrap_or_default().to_owned(),
                            e["message"].as_str().unwrap_or_default().to_owned(),
                        )
                    })
                    .collect()
            })
            .unwrap_or_default())
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        let _ = self.call("DELETE", "", None);
    }
}
