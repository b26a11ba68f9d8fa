//! Registrar adapters for `byo-api` domains: the customer's registrar (or
//! DNS host) is told, through its own API, to delegate the Sovereign's
//! domain to our nameservers.
//!
//! One trait, [`RegistrarApi`] (validate the token, read and set a domain's
//! nameservers), with an implementation per registrar of the wizard's list:
//!
//! | registrar | API | token (as the customer pastes it) | what "nameservers" means |
//! |---|---|---|---|
//! | Cloudflare | REST v4, bearer token | an API token (Zone:Read, DNS:Edit) | NS records for a **subdomain** in the customer's Cloudflare zone: a Cloudflare zone apex always answers with Cloudflare's nameservers, so an apex is refused |
//! | Namecheap | XML API (`namecheap.domains.dns.*`) | `apiUser:apiKey:clientIP` | the registered domain's nameservers (`setCustom`) |
//! | GoDaddy | REST `v1/domains` | `key:secret` | the registered domain's `nameServers` |
//! | OVH | REST 1.0, signed requests | `appKey:appSecret:consumerKey` | the domain's external nameservers (a task) |
//! | Dynadot | `api3.json` | an API key | the domain's name servers (`set_ns`) |
//!
//! Errors are classified like the old pool-domain-manager's: an invalid
//! token is `Unauthorized`, a domain not in the account `NotFound`, a
//! rate limit `RateLimited`, the registrar down `Unavailable`, an
//! unsupported request (a Cloudflare apex, a nameserver the registrar
//! refuses) `Invalid`. Messages name the registrar and quote its own error
//! text, never a credential: reqwest errors are stripped of their URL,
//! since Namecheap and Dynadot take keys as parameters.
//!
//! Nameservers cross this trait lowercase, without the trailing dot, in
//! the order given; comparisons sort them.
//!
//! DS records of a signed zone: Cloudflare publishes them as DS records in
//! the customer's zone, beside the NS records; the registrar adapters do
//! not publish DS records (the job tells the customer to add them).
//!
//! The sim crate's wire fake of the registrars serves all five APIs from
//! one in-process HTTP server, with their error bodies, for the tests.

pub mod cloudflare;
pub mod dynadot;
pub mod godaddy;
pub mod namecheap;
pub mod ovh;

use std::net::Ipv4Addr;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use cz_state::SecretString;
use reqwest::StatusCode;
use serde::{Deserialize, Serialize};

use cz_engine::{Cause, StepError, System};

use crate::AdapterResult;

/// Registrars whose API can manage a bring-your-own domain.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum Registrar {
    Cloudflare,
    Namecheap,
    Godaddy,
    Ovh,
    Dynadot,
}

/// One registrar account, reached with the customer's token.
#[async_trait]
pub trait RegistrarApi: Send + Sync {
    fn registrar(&self) -> Registrar;
    /// The token is accepted and may manage `domain`.
    async fn validate_token(&self, domain: &str) -> AdapterResult<()>;
    /// The nameservers `domain` is delegated to, as the registrar has them.
    async fn get_nameservers(&self, domain: &str) -> AdapterResult<Vec<String>>;
    /// Delegates `domain` to `nameservers` (idempotent). An empty set
    /// removes a delegation where that exists (a Cloudflare subdomain);
    /// registrars refuse it.
    async fn set_nameservers(&self, domain: &str, nameservers: &[String]) -> AdapterResult<()>;
    /// Publishes the DS records (`<tag> <alg> <digest type> <digest>`) of
    /// a signed `domain` beside its delegation, idempotently; an empty set
    /// removes ours. `Ok(false)`: this adapter cannot, and the customer
    /// adds them by hand.
    async fn set_ds(&self, domain: &str, ds: &[String]) -> AdapterResult<bool> {
        let _ = (domain, ds);
        Ok(false)
    }
}

/// Connects to a registrar with a customer's token.
pub trait Registrars: Send + Sync {
    fn connect(
        &self,
        registrar: Registrar,
        token: &SecretString,
    ) -> AdapterResult<Arc<dyn RegistrarApi>>;
}

impl Registrar {
    /// The registrar's own name, for messages.
    pub fn title(self) -> &'static str {
        match self {
            Registrar::Cloudflare => "Cloudflare",
            Registrar::Namecheap => "Namecheap",
            Registrar::Godaddy => "GoDaddy",
            Registrar::Ovh => "OVH",
            Registrar::Dynadot => "Dynadot",
        }
    }

    /// The token format the registrar's adapter expects.
    pub fn token_format(self) -> &'static str {
        match self {
            Registrar::Cloudflare => "a Cloudflare API token with Zone:Read and DNS:Edit",
            Registrar::Namecheap => {
                "`apiUser:apiKey:clientIP` (the IPv4 address Namecheap whitelists)"
            }
            Registrar::Godaddy => "`key:secret` (a GoDaddy production API key)",
            Registrar::Ovh => "`applicationKey:applicationSecret:consumerKey`",
            Registrar::Dynadot => "a Dynadot API key",
        }
    }

    pub fn all() -> [Registrar; 5] {
        [
            Registrar::Cloudflare,
            Registrar::Namecheap,
            Registrar::Godaddy,
            Registrar::Ovh,
            Registrar::Dynadot,
        ]
    }
}

/// A registrar token, split into its parts.
#[derive(Clone, Debug)]
pub enum Credentials {
    Cloudflare { token: SecretString },
    Namecheap { api_user: String, api_key: SecretString, client_ip: Ipv4Addr },
    Godaddy { key: String, secret: SecretString },
    Ovh { app_key: String, app_secret: SecretString, consumer_key: SecretString },
    Dynadot { key: SecretString },
}

impl Credentials {
    /// Splits `token` as `registrar` expects it; the error says what is
    /// wrong without repeating the token.
    pub fn parse(registrar: Registrar, token: &str) -> Result<Credentials, String> {
        let token = token.trim();
        let bad = |why: &str| {
            Err(format!("{why}; {} expects {}", registrar.title(), registrar.token_format()))
        };
        if token.is_empty() {
            return bad("is empty");
        }
        if token.chars().any(|c| c.is_whitespace() || c.is_control()) {
            return bad("contains whitespace");
        }
        let parts: Vec<&str> = token.split(':').collect();
        let want = match registrar {
            Registrar::Cloudflare | Registrar::Dynadot => 1,
            Registrar::Godaddy => 2,
            Registrar::Namecheap | Registrar::Ovh => 3,
        };
        if parts.len() != want || parts.iter().any(|p| p.is_empty()) {
            return bad(&format!(
                "has {} non-empty `:`-separated parts, not {want}",
                parts.iter().filter(|p| !p.is_empty()).count()
            ));
        }
        let s = |i: usize| SecretString::new(parts[i]);
        Ok(match registrar {
            Registrar::Cloudflare => Credentials::Cloudflare { token: s(0) },
            Registrar::Dynadot => Credentials::Dynadot { key: s(0) },
            Registrar::Godaddy => Credentials::Godaddy { key: parts[0].to_owned(), secret: s(1) },
            Registrar::Ovh => Credentials::Ovh {
                app_key: parts[0].to_owned(),
                app_secret: s(1),
                consumer_key: s(2),
            },
            Registrar::Namecheap => {
                let Ok(client_ip) = parts[2].parse::<Ipv4Addr>() else {
                    return bad("its third part is not an IPv4 address");
                };
                Credentials::Namecheap { api_user: parts[0].to_owned(), api_key: s(1), client_ip }
            }
        })
    }
}

/// Where each registrar's API is; the defaults are the production APIs.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Endpoints {
    pub cloudflare: String,
    pub namecheap: String,
    pub godaddy: String,
    /// OVH Europe; `https://ca.api.ovh.com/1.0` for OVH Canada.
    pub ovh: String,
    pub dynadot: String,
}

impl Default for Endpoints {
    fn default() -> Self {
        Endpoints {
            cloudflare: "https://api.cloudflare.com/client/v4".into(),
            namecheap: "https://api.namecheap.com/xml.response".into(),
            godaddy: "https://api.godaddy.com".into(),
            ovh: "https://eu.api.ovh.com/1.0".into(),
            dynadot: "https://api.dynadot.com/api3.json".into(),
        }
    }
}

impl Endpoints {
    /// Every API under one base URL, as [`fake::FakeRegistrars`] serves them.
    pub fn under(base: &str) -> Endpoints {
        let b = base.trim_end_matches('/');
        Endpoints {
            cloudflare: format!("{b}/cloudflare/client/v4"),
            namecheap: format!("{b}/namecheap/xml.response"),
            godaddy: format!("{b}/godaddy"),
            ovh: format!("{b}/ovh/1.0"),
            dynadot: format!("{b}/dynadot/api3.json"),
        }
    }

    /// Each endpoint must be an http(s) URL.
    pub fn validate(&self) -> Result<(), String> {
        for (name, url) in [
            ("cloudflare", &self.cloudflare),
            ("namecheap", &self.namecheap),
            ("godaddy", &self.godaddy),
            ("ovh", &self.ovh),
            ("dynadot", &self.dynadot),
        ] {
            if !(url.starts_with("https://") || url.starts_with("http://")) {
                return Err(format!("registrars.{name} `{url}` is not an http(s) URL"));
            }
        }
        Ok(())
    }
}

/// The real registrars, over HTTP.
#[derive(Clone, Debug)]
pub struct HttpRegistrars {
    endpoints: Endpoints,
    client: reqwest::Client,
}

impl HttpRegistrars {
    pub fn new(endpoints: Endpoints, timeout: Duration) -> HttpRegistrars {
        let client = reqwest::Client::builder()
            .timeout(timeout)
            .user_agent(concat!("catalyst-zero/", env!("CARGO_PKG_VERSION")))
            .build()
            .expect("a reqwest client with a timeout builds");
        HttpRegistrars { endpoints, client }
    }
}

impl Registrars for HttpRegistrars {
    fn connect(
        &self,
        registrar: Registrar,
        token: &SecretString,
    ) -> AdapterResult<Arc<dyn RegistrarApi>> {
        let creds = Credentials::parse(registrar, token.expose()).map_err(|m| {
            StepError::InvalidInput { path: "domain.registrar_token".into(), message: m }
        })?;
        let http = Http { registrar, client: self.client.clone() };
        let e = &self.endpoints;
        Ok(match creds {
            Credentials::Cloudflare { token } => {
                Arc::new(cloudflare::Cloudflare::new(http, &e.cloudflare, token))
            }
            Credentials::Namecheap { api_user, api_key, client_ip } => Arc::new(
                namecheap::Namecheap::new(http, &e.namecheap, api_user, api_key, client_ip),
            ),
            Credentials::Godaddy { key, secret } => {
                Arc::new(godaddy::Godaddy::new(http, &e.godaddy, key, secret))
            }
            Credentials::Ovh { app_key, app_secret, consumer_key } => {
                Arc::new(ovh::Ovh::new(http, &e.ovh, app_key, app_secret, consumer_key))
            }
            Credentials::Dynadot { key } => Arc::new(dynadot::Dynadot::new(http, &e.dynadot, key)),
        })
    }
}

/// A registrar error: the registrar's name, then the message.
pub(crate) fn err(registrar: Registrar, op: &str, cause: Cause, msg: impl AsRef<str>) -> StepError {
    StepError::adapter(
        System::Registrar,
        op,
        cause,
        format!("{}: {}", registrar.title(), msg.as_ref()),
    )
}

/// How an HTTP status is classified when the body says nothing better.
pub(crate) fn cause_of(status: StatusCode) -> Cause {
    Cause::from_http_status(status.as_u16())
}

/// The HTTP client of one adapter.
#[derive(Clone, Debug)]
pub(crate) struct Http {
    pub registrar: Registrar,
    pub client: reqwest::Client,
}

impl Http {
    /// Sends `req`; the status and the body as text. A request that gets
    /// no answer is `Network`, described without its URL.
    pub async fn send(
        &self,
        op: &str,
        req: reqwest::RequestBuilder,
    ) -> AdapterResult<(StatusCode, String)> {
        let resp = req.send().await.map_err(|e| self.network(op, e))?;
        let status = resp.status();
        let body = resp.text().await.map_err(|e| self.network(op, e))?;
        Ok((status, body))
    }

    fn network(&self, op: &str, e: reqwest::Error) -> StepError {
        let what = if e.is_timeout() { "timed out" } else { "no answer" };
        err(self.registrar, op, Cause::Network, format!("{what}: {}", e.without_url()))
    }
}

/// `url` with `query` appended, form-encoded.
pub(crate) fn with_query(url: &str, query: &[(&str, &str)]) -> String {
    if query.is_empty() {
        return url.to_owned();
    }
    format!("{url}?{}", serde_urlencoded::to_string(query).expect("string pairs encode"))
}

/// A nameserver as this module passes it: lowercase, no trailing dot.
pub fn bare(ns: &str) -> String {
    ns.trim().trim_end_matches('.').to_ascii_lowercase()
}

/// `a`, sorted, for comparing sets.
pub fn sorted(a: &[String]) -> Vec<String> {
    let mut v: Vec<String> = a.iter().map(|s| bare(s)).collect();
    v.sort();
    v.dedup();
    v
}

/// A registered domain's two halves, as Namecheap wants them
/// (`acme.co.uk` → `acme`, `co.uk`).
pub(crate) fn sld_tld(domain: &str) -> Option<(&str, &str)> {
    domain.split_once('.').filter(|(s, t)| !s.is_empty() && !t.is_empty())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_parse_per_registrar_and_errors_never_repeat_them() {
        assert!(matches!(
            Credentials::parse(Registrar::Namecheap, "me:abc123:203.0.113.7"),
            Ok(Credentials::Namecheap { client_ip, .. }) if client_ip == Ipv4Addr::new(203, 0, 113, 7)
        ));
        assert!(matches!(
            Credentials::parse(Registrar::Godaddy, "k:s"),
            Ok(Credentials::Godaddy { key, .. }) if key == "k"
        ));
        assert!(Credentials::parse(Registrar::Ovh, "a:b:c").is_ok());
        assert!(Credentials::parse(Registrar::Cloudflare, "cf-token").is_ok());
        assert!(Credentials::parse(Registrar::Dynadot, "dyn-key").is_ok());
        for (r, t) in [
            (Registrar::Namecheap, "me:secretkey99"),
            (Registrar::Namecheap, "me:secretkey99:not-an-ip"),
            (Registrar::Godaddy, "secretkey99"),
            (Registrar::Godaddy, "k:"),
            (Registrar::Ovh, "a:secretkey99"),
            (Registrar::Cloudflare, "secret key99"),
            (Registrar::Dynadot, "a:secretkey99"),
            (Registrar::Dynadot, "  "),
        ] {
            let e = Credentials::parse(r, t).expect_err(t);
            assert!(!e.contains("secretkey99"), "{e}");
            assert!(e.contains(r.token_format()), "{e}");
        }
    }

    #[test]
    fn names_compare_bare_and_sorted() {
        assert_eq!(sorted(&["NS2.x.io.".into(), "ns1.x.io".into()]), ["ns1.x.io", "ns2.x.io"]);
        assert_eq!(sld_tld("acme.co.uk"), Some(("acme", "co.uk")));
        assert_eq!(sld_tld("localhost"), None);
    }
}
