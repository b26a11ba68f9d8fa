//! Namecheap's XML API: one endpoint, the command in `Command`, the
//! credentials (`ApiUser`, `ApiKey`, `UserName`, `ClientIp`) beside it.
//! They go in a POST form body, never the URL. Every answer is HTTP 200
//! with `<ApiResponse Status="OK|ERROR">`; errors carry a `Number`:
//!
//! - 1010101/1011101/1011102: API user or key invalid, or API access not
//!   enabled; 1011150: the client IP is not whitelisted → unauthorized;
//! - 2019166 (domain not found), 2016166 (not associated with the
//!   account) → not found;
//! - 500000 (too many requests) → rate limited;
//! - 2011xxx (a parameter the command refuses) → invalid;
//! - 3xxxxxx (the registry behind Namecheap failed) → unavailable.

use std::net::Ipv4Addr;

use async_trait::async_trait;
use cz_state::SecretString;

use super::Registrar;
use super::{Http, RegistrarApi, bare, cause_of, err, sld_tld};
use crate::AdapterResult;
use cz_engine::Cause;

const R: Registrar = Registrar::Namecheap;

pub struct Namecheap {
    http: Http,
    url: String,
    api_user: String,
    api_key: SecretString,
    client_ip: Ipv4Addr,
}

/// Classifies a Namecheap error number.
pub fn cause_of_error(number: u64) -> Cause {
    match number {
        1010101 | 1011101 | 1011102 | 1011150 => Cause::Unauthorized,
        2019166 | 2016166 => Cause::NotFound,
        500000 => Cause::RateLimited,
        3_000_000..=3_999_999 => Cause::Unavailable,
        _ => Cause::Invalid,
    }
}

impl Namecheap {
    pub(crate) fn new(
        http: Http,
        url: &str,
        api_user: String,
        api_key: SecretString,
        client_ip: Ipv4Addr,
    ) -> Namecheap {
        Namecheap { http, url: url.to_owned(), api_user, api_key, client_ip }
    }

    /// Runs `command`; calls `read` on the `CommandResponse` element.
    async fn call<T>(
        &self,
        op: &str,
        command: &str,
        params: &[(&str, &str)],
        read: impl FnOnce(roxmltree::Node) -> Option<T>,
    ) -> AdapterResult<T> {
        let ip = self.client_ip.to_string();
        let mut form: Vec<(&str, &str)> = vec![
            ("ApiUser", &self.api_user),
            ("ApiKey", self.api_key.expose()),
            ("UserName", &self.api_user),
            ("ClientIp", &ip),
            ("Command", command),
        ];
        form.extend_from_slice(params);
        let req = self
            .http
            .client
            .post(&self.url)
            .header("Content-Type", "application/x-www-form-urlencoded")
            .body(serde_urlencoded::to_string(&form).expect("string pairs encode"));
        let (status, body) = self.http.send(op, req).await?;
        let garbled = |why: &str| {
            let cause = if status.is_success() { Cause::Unavailable } else { cause_of(status) };
            err(
                R,
                op,
                cause,
                format!("HTTP {status}, {why}: {}", body.chars().take(200).collect::<String>()),
            )
        };
        let doc = roxmltree::Document::parse(&body).map_err(|_| garbled("not XML"))?;
        let root = doc.root_element();
        if root.tag_name().name() != "ApiResponse" {
            return Err(garbled("no ApiResponse"));
        }
        if root.attribute("Status") != Some("OK") {
            let e = root
                .descendants()
                .find(|n| n.has_tag_name("Error"))
                .ok_or_else(|| garbled("an error without an Error element"))?;
            let number: u64 = e.attribute("Number").and_then(|n| n.parse().ok()).unwrap_or(0);
            let text = e.text().unwrap_or("").trim();
            return Err(err(R, op, cause_of_error(number), format!("{text} (error {number})")));
        }
        root.descendants()
            .find(|n| n.has_tag_name("CommandResponse"))
            .and_then(read)
            .ok_or_else(|| garbled("an answer without the expected result"))
    }

    fn split(op: &str, domain: &str) -> AdapterResult<(String, String)> {
        sld_tld(domain).map(|(s, t)| (s.to_owned(), t.to_owned())).ok_or_else(|| {
            err(R, op, Cause::Invalid, format!("{domain} is not a registered domain name"))
        })
    }
}

fn child<'a>(n: roxmltree::Node<'a, 'a>, tag: &str) -> Option<roxmltree::Node<'a, 'a>> {
    n.descendants().find(|c| c.has_tag_name(tag))
}

#[async_trait]
impl RegistrarApi for Namecheap {
    fn registrar(&self) -> Registrar {
        R
    }

    async fn validate_token(&self, domain: &str) -> AdapterResult<()> {
        let op = "validate_token";
        let status = self
            .call(op, "namecheap.domains.getInfo", &[("DomainName", domain)], |n| {
                child(n, "DomainGetInfoResult")
                    .map(|r| r.attribute("Status").unwrap_or("").to_ascii_lowercase())
            })
            .await?;
        if status != "ok" {
            return Err(err(R, op, Cause::Invalid, format!("{domain} has status `{status}`")));
        }
        Ok(())
    }

    async fn get_nameservers(&self, domain: &str) -> AdapterResult<Vec<String>> {
        let op = "get_nameservers";
        let (sld, tld) = Self::split(op, domain)?;
        self.call(op, "namecheap.domains.dns.getList", &[("SLD", &sld), ("TLD", &tld)], |n| {
            child(n, "DomainDNSGetListResult").map(|r| {
                r.children()
                    .filter(|c| c.has_tag_name("Nameserver"))
                    .filter_map(|c| c.text().map(bare))
                    .collect()
            })
        })
        .await
    }

    async fn set_nameservers(&self, domain: &str, nameservers: &[String]) -> AdapterResult<()> {
        let op = "set_nameservers";
        let (sld, tld) = Self::split(op, domain)?;
        let list: Vec<String> = nameservers.iter().map(|n| bare(n)).collect();
        let updated = self
            .call(
                op,
                "namecheap.domains.dns.setCustom",
                &[("SLD", &sld), ("TLD", &tld), ("Nameservers", &list.join(","))],
                |n| {
                    child(n, "DomainDNSSetCustomResult")
                        .map(|r| r.attribute("Updated") == Some("true"))
                },
            )
            .await?;
        if !updated {
            return Err(err(R, op, Cause::Unavailable, format!("{domain}: Updated=\"false\"")));
        }
        Ok(())
    }
}
