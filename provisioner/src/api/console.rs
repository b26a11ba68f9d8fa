//! The operator console at `/ui`: a browser front end on the same `/v1`
//! API, served from assets built into the binary (`provisioner/ui/`).
//!
//! **Sign-in.** `POST /ui/session` takes an operator token (the shared one
//! or a named operator's) and opens a session: a random secret in an
//! `HttpOnly; SameSite=Strict` cookie. The store keeps only the secret's
//! SHA-256 and the SHA-256 of the token it was opened with, so a session
//! survives a restart of the daemon (kill -9 included), and ends when the
//! token is revoked or rotated, when it expires (`console.session_secs`)
//! or on sign-out. A wizard token opens no session.
//!
//! **Every verb checks CSRF.** With the session cookie, [`Caller`] accepts
//! a request that changes anything only with the `X-CSRF-Token` header
//! (derived from the session secret; the page reads it from `GET
//! /ui/session`, a cross-site page cannot) and without a cross-site
//! `Origin` or `Sec-Fetch-Site`. The verbs are the API's own handlers, so
//! the audit trail records the signed-in person.
//!
//! **The page trusts nothing it shows.** The assets carry a strict
//! Content-Security-Policy with no inline script or style; the page builds
//! its DOM with `textContent` only. The one HTML it inserts is a runbook,
//! rendered here from `runbooks/` with every raw HTML tag of the Markdown
//! escaped and only runbook, anchor and http(s) links kept.

use axum::Json;
use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::request::Parts;
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode, header};
use axum::response::{IntoResponse, Response};
use cz_state::{ConsoleSession, NewAudit, now_ms};
use serde::{Deserialize, Serialize};
use serde_json::json;

use super::views::rfc3339;
use super::{
    ApiError, ApiState, Caller, caller_of_digest, hex_sha256, require_json, token_eq, tokens,
};

/// The session cookie.
pub const COOKIE: &str = "cz_session";
/// The header every changing request of the console carries.
pub const CSRF_HEADER: &str = "x-csrf-token";

const INDEX_HTML: &str = include_str!("../../ui/index.html");
const APP_JS: &str = include_str!("../../ui/app.js");
const APP_CSS: &str = include_str!("../../ui/app.css");

mod embedded {
    include!(concat!(env!("OUT_DIR"), "/runbooks.rs"));
}

/// The Content-Security-Policy of every console response: nothing inline,
/// nothing from another origin, no framing.
pub const CSP: &str = "default-src 'none'; script-src 'self'; style-src 'self'; \
    img-src 'self' data:; connect-src 'self'; form-action 'self'; \
    frame-ancestors 'none'; base-uri 'none'";

/// The CSRF token of a session: a digest of its secret, so nothing more is
/// stored and only a holder of the cookie's value can know it.
fn csrf_of(secret: &str) -> String {
    hex_sha256(format!("catalyst-zero console csrf\0{secret}").as_bytes())
}

/// A console response: the body, its type and the security headers.
fn asset(content_type: &'static str, body: impl Into<axum::body::Body>) -> Response {
    let mut resp = Response::new(body.into());
    let h = resp.headers_mut();
    h.insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    secure_headers(h);
    resp
}

fn secure_headers(h: &mut HeaderMap) {
    h.insert(header::CONTENT_SECURITY_POLICY, HeaderValue::from_static(CSP));
    h.insert(header::X_CONTENT_TYPE_OPTIONS, HeaderValue::from_static("nosniff"));
    h.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    h.insert(header::REFERRER_POLICY, HeaderValue::from_static("no-referrer"));
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
}

pub async fn index() -> Response {
    asset("text/html; charset=utf-8", INDEX_HTML)
}

pub async fn app_js() -> Response {
    asset("text/javascript; charset=utf-8", APP_JS)
}

pub async fn app_css() -> Response {
    asset("text/css; charset=utf-8", APP_CSS)
}

/// `GET /`: to the console.
pub async fn root() -> Response {
    let mut resp = StatusCode::SEE_OTHER.into_response();
    resp.headers_mut().insert(header::LOCATION, HeaderValue::from_static("/ui"));
    resp
}

/// The runbook `name` (`needs-operator-quota.md`), if there is one.
pub fn runbook_text(name: &str) -> Option<&'static str> {
    embedded::RUNBOOKS.iter().find(|(n, _)| *n == name).map(|(_, text)| *text)
}

/// Every embedded runbook's file name.
pub fn runbook_names() -> impl Iterator<Item = &'static str> {
    embedded::RUNBOOKS.iter().map(|(n, _)| *n)
}

/// Markdown to HTML for the console: raw HTML in the source is shown as
/// text, and a link is kept only to another runbook (rewritten to the
/// console's route), to an anchor or over http(s); any other link (a
/// repository path the browser cannot open) becomes its text.
pub fn render_markdown(md: &str) -> String {
    use pulldown_cmark::{CowStr, Event, Options, Parser, Tag, TagEnd};
    let mut dropped_link = false;
    let events = Parser::new_ext(md, Options::ENABLE_TABLES | Options::ENABLE_STRIKETHROUGH)
        .filter_map(|e| match e {
            Event::Html(h) | Event::InlineHtml(h) => Some(Event::Text(h)),
            Event::Start(Tag::Link { link_type, dest_url, title, id }) => {
                let dest = dest_url.as_ref();
                let file = dest.strip_prefix("./").unwrap_or(dest);
                let file = file.strip_prefix("../runbooks/").unwrap_or(file);
                let (file, anchor) = file.split_once('#').unwrap_or((file, ""));
                let to = if dest.starts_with("https://")
                    || dest.starts_with("http://")
                    || dest.starts_with('#')
                {
                    Some(dest.to_owned())
                } else if runbook_text(file).is_some() {
                    let anchor =
                        if anchor.is_empty() { String::new() } else { format!("#{anchor}") };
                    Some(format!("/ui/runbooks/{file}{anchor}"))
                } else {
                    None
                };
                match to {
                    Some(to) => Some(Event::Start(Tag::Link {
                        link_type,
                        dest_url: CowStr::from(to),
                        title,
                        id,
                    })),
                    None => {
                        dropped_link = true;
                        None
                    }
                }
            }
            Event::End(TagEnd::Link) if dropped_link => {
                dropped_link = false;
                None
            }
            Event::Start(Tag::Image { .. }) | Event::End(TagEnd::Image) => None,
            other => Some(other),
        });
    let mut out = String::with_capacity(md.len() * 3 / 2);
    pulldown_cmark::html::push_html(&mut out, events);
    out
}

/// `GET /ui/runbooks/{name}`: a runbook as an HTML fragment (what the page
/// fetches), or as a whole page when the browser navigates to it.
pub async fn runbook(Path(name): Path<String>, headers: HeaderMap) -> Result<Response, ApiError> {
    let text =
        runbook_text(&name).ok_or_else(|| ApiError::NotFound(format!("runbook `{name}`")))?;
    let html = render_markdown(text);
    let navigated = headers.get("sec-fetch-dest").is_some_and(|v| v.as_bytes() == b"document");
    let body = if navigated {
        format!(
            "<!doctype html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">\
             <title>Runbook: {}</title><link rel=\"stylesheet\" href=\"/ui/app.css\"></head>\
             <body><main class=\"runbook-page\"><p><a href=\"/ui\">Console</a></p>{html}</main>\
             </body></html>\n",
            escape_html(&name)
        )
    } else {
        html
    };
    Ok(asset("text/html; charset=utf-8", body))
}

/// HTML-escapes text (the name is one of ours, matched above; escaped
/// all the same).
fn escape_html(s: &str) -> String {
    s.chars().fold(String::with_capacity(s.len()), |mut out, c| {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
        out
    })
}

// === sessions ===

/// What `/ui/session` answers.
#[derive(Debug, Serialize, Deserialize)]
pub struct SessionView {
    pub actor: String,
    pub role: String,
    /// Send as `X-CSRF-Token` with every request that changes anything.
    pub csrf: String,
    pub expires_at: String,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct SignIn {
    token: String,
}

/// A session presented by cookie, checked: live in the store, and its
/// token still valid.
pub struct Presented {
    pub caller: Caller,
    pub session: ConsoleSession,
    pub csrf: String,
}

/// The session cookie's value, if the request has one.
fn cookie_secret(headers: &HeaderMap) -> Option<&str> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|kv| kv.trim().split_once('='))
        .find(|(k, _)| *k == COOKIE)
        .map(|(_, v)| v.trim())
        .filter(|v| !v.is_empty())
}

/// Whether the request carries a session cookie at all.
pub fn has_session_cookie(headers: &HeaderMap) -> bool {
    cookie_secret(headers).is_some()
}

/// Checks the request's session cookie.
pub async fn presented(st: &ApiState, headers: &HeaderMap) -> Result<Presented, ApiError> {
    let secret = cookie_secret(headers).ok_or(ApiError::Unauthorized)?;
    let session = st
        .store
        .console_session(&hex_sha256(secret.as_bytes()), now_ms())
        .await
        .map_err(ApiError::store("read a console session"))?
        .ok_or(ApiError::Unauthorized)?;
    // A revoked or rotated token ends its sessions.
    let caller = caller_of_digest(st, &session.token_sha256)
        .filter(|c| c.role == tokens::Role::Operator && c.actor() == session.actor)
        .ok_or(ApiError::Unauthorized)?;
    Ok(Presented { caller, csrf: csrf_of(secret), session })
}

/// The checks of a changing request made with the session cookie: the
/// CSRF header, and no cross-site origin.
pub fn check_csrf(parts: &Parts, p: &Presented) -> Result<(), ApiError> {
    if matches!(parts.method, Method::GET | Method::HEAD | Method::OPTIONS) {
        return Ok(());
    }
    let h = &parts.headers;
    let foreign = from_another_site(h);
    let token_ok = h
        .get(CSRF_HEADER)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|t| token_eq(t.trim(), &p.csrf));
    if foreign || !token_ok {
        tracing::warn!(actor = p.caller.actor(), method = %parts.method, path = parts.uri.path(),
            from_another_site = foreign, "Refused a console request without a valid CSRF token.");
        return Err(ApiError::Csrf);
    }
    Ok(())
}

/// Whether the browser says the request comes from another site: a
/// cross-site `Sec-Fetch-Site`, or an `Origin` other than this host.
fn from_another_site(h: &HeaderMap) -> bool {
    let cross_site = h.get("sec-fetch-site").is_some_and(|v| v.as_bytes() == b"cross-site");
    let host = h.get(header::HOST).and_then(|v| v.to_str().ok());
    let foreign_origin = h.get(header::ORIGIN).and_then(|v| v.to_str().ok()).is_some_and(|o| {
        let authority = o.split_once("://").map(|(_, a)| a).unwrap_or(o);
        Some(authority) != host
    });
    cross_site || foreign_origin
}

fn session_cookie(st: &ApiState, value: &str, max_age: u64) -> HeaderValue {
    // Secure wherever the browser reaches us over TLS: our own, or a
    // terminating proxy's (which is why a non-loopback plain listen exists).
    let secure = st.config.tls.is_some() || st.config.insecure_listen;
    let c = format!(
        "{COOKIE}={value}; Path=/; HttpOnly; SameSite=Strict; Max-Age={max_age}{}",
        if secure { "; Secure" } else { "" }
    );
    HeaderValue::from_str(&c).expect("cookie is ASCII")
}

fn session_view(p: &Presented) -> SessionView {
    SessionView {
        actor: p.caller.actor().to_owned(),
        role: p.session.role.clone(),
        csrf: p.csrf.clone(),
        expires_at: rfc3339(p.session.expires_at),
    }
}

fn no_store(mut resp: Response) -> Response {
    secure_headers(resp.headers_mut());
    resp.headers_mut().insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    resp
}

/// `GET /ui/session`: who is signed in, and the CSRF token.
pub async fn whoami(State(st): State<ApiState>, headers: HeaderMap) -> Result<Response, ApiError> {
    let p = presented(&st, &headers).await?;
    Ok(no_store(Json(session_view(&p)).into_response()))
}

/// `POST /ui/session` `{"token"}`: opens a session for an operator token.
pub async fn sign_in(
    State(st): State<ApiState>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Response, ApiError> {
    require_json(&headers)?;
    // Nobody signs a browser in from another site (login CSRF).
    if from_another_site(&headers) {
        return Err(ApiError::Csrf);
    }
    let SignIn { token } = serde_json::from_slice(&body)
        .map_err(|e| ApiError::invalid("token", format!("expected {{\"token\": \"...\"}}: {e}")))?;
    let token = token.trim();
    if token.is_empty() {
        return Err(ApiError::invalid("token", "is required"));
    }
    let digest = hex_sha256(token.as_bytes());
    let actor = match caller_of_digest(&st, &digest) {
        Some(c) if c.role == tokens::Role::Operator => c.actor().to_owned(),
        Some(_) => {
            tracing::warn!("A wizard token tried to sign in to the console.");
            return Err(ApiError::Forbidden("sign in to the console"));
        }
        None => {
            tracing::warn!("A console sign-in with an unknown token was refused.");
            return Err(ApiError::Unauthorized);
        }
    };
    let secret = hex::encode(rand::random::<[u8; 32]>());
    let now = now_ms();
    let ttl = st.config.console.session_secs;
    let session = ConsoleSession {
        id_sha256: hex_sha256(secret.as_bytes()),
        actor: actor.clone(),
        role: "operator".into(),
        token_sha256: digest,
        created_at: now,
        expires_at: now + i64::try_from(ttl).unwrap_or(i64::MAX / 2) * 1000,
    };
    st.store
        .open_console_session(session.clone())
        .await
        .map_err(ApiError::store("open a console session"))?;
    st.store
        .record_audit(NewAudit {
            actor: actor.clone(),
            action: "console.sign-in".into(),
            job_id: None,
            sovereign_id: None,
            detail: json!({ "expires_at": rfc3339(session.expires_at) }),
        })
        .await
        .map_err(ApiError::store("audit a console sign-in"))?;
    tracing::info!(actor = %actor, "Signed in to the console.");
    let p = Presented { caller: Caller::operator(&actor), csrf: csrf_of(&secret), session };
    let mut resp = no_store(Json(session_view(&p)).into_response());
    resp.headers_mut().insert(header::SET_COOKIE, session_cookie(&st, &secret, ttl));
    Ok(resp)
}

/// `DELETE /ui/session`: signs out (with the CSRF header).
pub async fn sign_out(State(st): State<ApiState>, parts: Parts) -> Result<Response, ApiError> {
    let p = presented(&st, &parts.headers).await?;
    check_csrf(&parts, &p)?;
    st.store
        .end_console_session(&p.session.id_sha256)
        .await
        .map_err(ApiError::store("end a console session"))?;
    st.store
        .record_audit(NewAudit {
            actor: p.caller.actor().to_owned(),
            action: "console.sign-out".into(),
            job_id: None,
            sovereign_id: None,
            detail: json!({}),
        })
        .await
        .map_err(ApiError::store("audit a console sign-out"))?;
    let mut resp = no_store(StatusCode::NO_CONTENT.into_response());
    resp.headers_mut().insert(header::SET_COOKIE, session_cookie(&st, "", 0));
    Ok(resp)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn markdown_keeps_no_raw_html_and_only_safe_links() {
        let html = render_markdown(
            "# Title\n\n<script>alert(1)</script>\n\nText <img src=x onerror=alert(1)> \
             [quota](needs-operator-quota.md#steps) [docs](../docs/operations.md) \
             [bad](javascript:alert(1)) [web](https://docs.hetzner.com/)\n",
        );
        assert!(html.contains("<h1>Title</h1>"), "{html}");
        assert!(!html.contains("<script"), "{html}");
        assert!(html.contains("&lt;script&gt;"), "{html}");
        assert!(!html.contains("<img"), "{html}");
        assert!(html.contains("href=\"/ui/runbooks/needs-operator-quota.md#steps\""), "{html}");
        assert!(!html.contains("operations.md"), "{html}");
        assert!(html.contains("docs"), "{html}");
        assert!(!html.contains("javascript:"), "{html}");
        assert!(html.contains("href=\"https://docs.hetzner.com/\""), "{html}");
    }

    #[test]
    fn every_runbook_the_engine_names_is_embedded() {
        let names: Vec<&str> = runbook_names().collect();
        assert!(names.len() >= 10, "{names:?}");
        // The engine names a runbook per error class and cause.
        let engine = include_str!("../../../engine/src/error.rs");
        let named: Vec<&str> = engine
            .split("\"runbooks/")
            .skip(1)
            .filter_map(|rest| rest.split_once('"').map(|(file, _)| file))
            .collect();
        assert!(named.len() >= 10, "{named:?}");
        for file in named {
            assert!(runbook_text(file).is_some(), "runbooks/{file} is not embedded");
        }
    }

    #[test]
    fn the_session_cookie_is_read_among_others() {
        let mut h = HeaderMap::new();
        h.insert(header::COOKIE, HeaderValue::from_static("a=1; cz_session=abc ; b=2"));
        assert_eq!(cookie_secret(&h), Some("abc"));
        h.insert(header::COOKIE, HeaderValue::from_static("cz_session="));
        assert_eq!(cookie_secret(&h), None);
        assert_ne!(csrf_of("abc"), csrf_of("abd"));
    }
}
