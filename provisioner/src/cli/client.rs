//! A thin HTTP client for the daemon's API, used by every client subcommand.
//!
//! API errors are turned into [`ApiFailure`] with the field paths of a 422,
//! so the CLI prints `regions[0].control_plane.count: must be 1 or 3` rather
//! than a JSON blob.

use std::fmt;
use std::path::Path;

use anyhow::Context;
use reqwest::{Method, StatusCode};
use serde_json::Value;

/// The daemon answered with an error.
#[derive(Debug)]
pub struct ApiFailure {
    pub status: StatusCode,
    pub message: String,
    /// `(path, message)` of a 422.
    pub fields: Vec<(String, String)>,
}

impl fmt::Display for ApiFailure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "the daemon answered {}: {}", self.status, self.message)?;
        for (p, m) in &self.fields {
            write!(f, "\n  {p}: {m}")?;
        }
        Ok(())
    }
}

impl std::error::Error for ApiFailure {}

#[derive(Clone)]
pub struct Client {
    pub base: String,
    token: String,
    pub http: reqwest::Client,
}

impl Client {
    pub fn new(base: &str, token: String) -> anyhow::Result<Client> {
        Client::with_ca(base, token, None)
    }

    /// As [`Client::new`], also trusting the CA certificate(s) in `ca`
    /// (PEM) for an `https` daemon.
    pub fn with_ca(
        base: &str,
        token: String,
        ca: Option<&std::path::Path>,
    ) -> anyhow::Result<Client> {
        let mut builder =
            reqwest::Client::builder().connect_timeout(std::time::Duration::from_secs(10));
        if let Some(path) = ca {
            let pem = std::fs::read(path)
                .with_context(|| format!("cannot read the CA certificate {}", path.display()))?;
            for cert in reqwest::Certificate::from_pem_bundle(&pem)
                .with_context(|| format!("{} is not a PEM certificate", path.display()))?
            {
                builder = builder.add_root_certificate(cert);
            }
        }
        let http = builder.build().context("cannot build the HTTP client")?;
        Ok(Client { base: base.trim_end_matches('/').to_owned(), token, http })
    }

    pub fn url(&self, path: &str) -> String {
        format!("{}{}", self.base, path)
    }

    pub fn request(&self, method: Method, path: &str) -> reqwest::RequestBuilder {
        self.http.request(method, self.url(path)).bearer_auth(&self.token)
    }

    /// Sends and decodes a JSON answer, turning error answers into
    /// [`ApiFailure`].
    pub async fn send(&self, req: reqwest::RequestBuilder) -> anyhow::Result<Value> {
        let resp = req
            .send()
            .await
            .with_context(|| format!("cannot reach the daemon at {}", self.base))?;
        let status = resp.status();
        let text = resp.text().await.context("cannot read the daemon's answer")?;
        let body: Value = serde_json::from_str(&text).unwrap_or(Value::String(text));
        if status.is_success() {
            return Ok(body);
        }
        let fields = body
            .get("errors")
            .and_then(Value::as_array)
            .map(|errs| {
                errs.iter()
                    .map(|e| {
                        let s = |k| e.get(k).and_then(Value::as_str).unwrap_or_default().to_owned();
                        (s("path"), s("message"))
                    })
                    .collect()
            })
            .unwrap_or_default();
        let message = body
            .pointer("/error/message")
            .and_then(Value::as_str)
            .map(str::to_owned)
            .unwrap_or_else(|| body.as_str().unwrap_or("no details").to_owned());
        Err(ApiFailure { status, message, fields }.into())
    }

    pub async fn get(&self, path: &str) -> anyhow::Result<Value> {
        self.send(self.request(Method::GET, path)).await
    }

    pub async fn post(&self, path: &str, body: Option<&Value>) -> anyhow::Result<Value> {
        let mut req = self.request(Method::POST, path);
        if let Some(b) = body {
            req = req.json(b);
        }
        self.send(req).await
    }
}

/// Reads a request file: TOML (`.toml`) is converted to JSON; `.json` is
/// sent as is; anything else is tried as JSON, then TOML.
pub fn read_request(path: &Path) -> anyhow::Result<Value> {
    let text =
        std::fs::read_to_string(path).with_context(|| format!("cannot read {}", path.display()))?;
    let ext = path.extension().and_then(|e| e.to_str()).unwrap_or_default().to_ascii_lowercase();
    let from_toml = |t: &str| -> anyhow::Result<Value> {
        let v: toml::Value =
            toml::from_str(t).with_context(|| format!("{} is not valid TOML", path.display()))?;
        serde_json::to_value(v).context("TOML value does not convert to JSON")
    };
    match ext.as_str() {
        "toml" => from_toml(&text),
        "json" => serde_json::from_str(&text)
            .with_context(|| format!("{} is not valid JSON", path.display())),
        _ => serde_json::from_str(&text).or_else(|_| from_toml(&text)),
    }
}
