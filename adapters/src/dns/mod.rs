//! DNS: the authoritative server's API (zones, RRsets, metadata, DNSSEC)
//! and queries over DNS itself, to the authoritative server and to public
//! resolvers. The real client is [`PowerDns`].

pub mod powerdns;

use async_trait::async_trait;

use serde::{Deserialize, Serialize};

use crate::AdapterResult;

pub use powerdns::PowerDns;

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Rrset {
    pub name: String,
    pub rtype: String,
    pub ttl: u32,
    pub records: Vec<String>,
}

/// A DNS name in absolute form, with its trailing dot (as PowerDNS wants
/// zone and RRset names).
pub fn absolute_name(name: &str) -> String {
    if name.ends_with('.') { name.to_owned() } else { format!("{name}.") }
}

#[async_trait]
pub trait DnsApi: Send + Sync {
    async fn zone_exists(&self, zone: &str) -> AdapterResult<bool>;
    /// The zone's `account` (who made it; empty for none), `None` when the
    /// zone does not exist.
    async fn zone_account(&self, zone: &str) -> AdapterResult<Option<String>>;
    /// Creates a Native zone with these NS and `account`, in one call (so a
    /// crash cannot leave a zone without its owner); an existing zone is
    /// success.
    async fn create_zone(
        &self,
        zone: &str,
        nameservers: &[String],
        account: &str,
    ) -> AdapterResult<()>;
    /// The values of a zone metadata kind (`X-…`); empty when unset.
    async fn zone_meta(&self, zone: &str, kind: &str) -> AdapterResult<Vec<String>>;
    /// Replaces a zone metadata kind; no values removes it.
    async fn set_zone_meta(&self, zone: &str, kind: &str, values: &[String]) -> AdapterResult<()>;
    /// Signs the zone with DNSSEC (idempotent: a signed zone keeps its
    /// keys) and returns the DS records (SHA-256 digests) its parent must
    /// publish, as `<key tag> <algorithm> 2 <digest>`.
    async fn secure_zone(&self, zone: &str) -> AdapterResult<Vec<String>>;
    /// Every zone the server has.
    async fn list_zones(&self) -> AdapterResult<Vec<String>>;
    async fn delete_zone(&self, zone: &str) -> AdapterResult<()>;
    /// PATCH with changetype REPLACE for each rrset.
    async fn replace_rrsets(&self, zone: &str, rrsets: &[Rrset]) -> AdapterResult<()>;
    /// PATCH with changetype DELETE; absent is success.
    async fn delete_rrsets(&self, zone: &str, names: &[(String, String)]) -> AdapterResult<()>;
    /// A DNS query (not the API) to the authoritative server.
    async fn query(&self, name: &str, rtype: &str) -> AdapterResult<Vec<String>>;
    /// The same query to another server: a public resolver (recursion
    /// desired), as the world will see the Sovereign.
    async fn query_via(
        &self,
        server: std::net::SocketAddr,
        name: &str,
        rtype: &str,
    ) -> AdapterResult<Vec<String>>;
}

/// Cloudflare, Google and Quad9: where most of the world resolves.
pub fn default_public_resolvers() -> Vec<std::net::SocketAddr> {
    ["1.1.1.1:53", "8.8.8.8:53", "9.9.9.9:53"]
        .iter()
        .map(|a| a.parse().expect("literal addresses"))
        .collect()
}
