//! `SimDns`: a fake PowerDNS Authoritative server (API and queries).
//!
//! Zones live under system `dns`, kind `zones`, keyed by the zone's FQDN.
//! Names are normalized to lowercase FQDNs with the trailing dot PowerDNS
//! requires. `query` answers like the authoritative server would: from the
//! zone with the longest matching suffix, with delegations (an NS rrset
//! below the apex answers NS queries for that name and hides what is below
//! it), CNAME following, and wildcards (`*.x` matches one or more labels in
//! front of `x` when the name itself has no records).

use std::net::Ipv4Addr;
use std::sync::Arc;

use async_trait::async_trait;
use serde::{Deserialize, Serialize};

use super::world::SimWorld;
use cz_adapters::{AdapterResult, DnsApi, Rrset};
use cz_engine::{Cause, StepError, System};

const SYS: &str = "dns";
const KIND: &str = "zones";

fn err(op: &str, cause: Cause, msg: impl Into<String>) -> StepError {
    StepError::adapter(System::Dns, op, cause, msg)
}

/// Lowercase FQDN with a trailing dot; `None` when it is not a name.
pub fn normalize_name(name: &str) -> Option<String> {
    let n = name.trim().to_ascii_lowercase();
    let n = n.strip_suffix('.').unwrap_or(&n);
    if n.is_empty() || n.len() > 253 {
        return None;
    }
    let ok = n.split('.').all(|l| {
        !l.is_empty()
            && l.len() <= 63
            && l.chars().all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_' || c == '*')
    });
    ok.then(|| format!("{n}."))
}

fn in_zone(name: &str, zone: &str) -> bool {
    name == zone || name.ends_with(&format!(".{zone}"))
}

/// The parent of a name (`a.b.c.` → `b.c.`), None at the top.
fn parent(name: &str) -> Option<&str> {
    let (_, rest) = name.split_once('.')?;
    (!rest.is_empty()).then_some(rest)
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
struct Zone {
    name: String,
    kind: String,
    serial: u64,
    nameservers: Vec<String>,
    rrsets: Vec<Rrset>,
    #[serde(default)]
    account: String,
    #[serde(default)]
    metadata: std::collections::BTreeMap<String, Vec<String>>,
}

impl Zone {
    fn rrset(&self, name: &str, rtype: &str) -> Option<&Rrset> {
        self.rrsets.iter().find(|r| r.name == name && r.rtype == rtype)
    }

    fn node_exists(&self, name: &str) -> bool {
        self.rrsets.iter().any(|r| r.name == name)
    }
}

/// The fake PowerDNS.
#[derive(Clone, Debug)]
pub struct SimDns {
    world: Arc<SimWorld>,
}

impl SimDns {
    pub fn new(world: Arc<SimWorld>) -> SimDns {
        SimDns { world }
    }

    async fn load(&self, zone: &str) -> Result<Option<Zone>, StepError> {
        match self.world.get(SYS, KIND, zone).await? {
            Some(v) => serde_json::from_value(v).map(Some).map_err(|e| {
                StepError::internal(format!("sim dns zone {zone} does not decode: {e}"))
            }),
            None => Ok(None),
        }
    }

    async fn save(&self, z: &Zone) -> Result<(), StepError> {
        self.world.put(SYS, KIND, &z.name, &serde_json::to_value(z).expect("zones encode")).await
    }

    async fn zones(&self) -> Result<Vec<Zone>, StepError> {
        self.world
            .list(SYS, KIND)
            .await?
            .into_iter()
            .map(|v| {
                serde_json::from_value(v)
                    .map_err(|e| StepError::internal(format!("sim dns zone does not decode: {e}")))
            })
            .collect()
    }

    fn zone_name(zone: &str, op: &str) -> Result<String, StepError> {
        normalize_name(zone)
            .ok_or_else(|| err(op, Cause::Invalid, format!("invalid zone name `{zone}`")))
    }

    /// The authoritative answer for (name, type), following CNAMEs.
    fn answer(zones: &[Zone], name: &str, rtype: &str, depth: u8) -> Vec<String> {
        // A DS record lives on the parent's side of a cut: it is answered
        // by the zone above, even when the child zone is here too.
        let Some(zone) = zones
            .iter()
            .filter(|z| in_zone(name, &z.name) && !(rtype == "DS" && z.name == name))
            .max_by_key(|z| z.name.len())
        else {
            return Vec::new(); // REFUSED: not authoritative
        };
        // Delegations between the apex and the name.
        let mut cur = Some(name);
        while let Some(n) = cur {
            if n == zone.name {
                break;
            }
            if let Some(ns) = zone.rrset(n, "NS") {
                // A referral; only the cut's own NS (and DS) answer.
                return match rtype {
                    "NS" if n == name => ns.records.clone(),
                    "DS" if n == name => {
                        zone.rrset(n, "DS").map(|r| r.records.clone()).unwrap_or_default()
                    }
                    _ => Vec::new(),
                };
            }
            cur = parent(n);
        }
        if let Some(r) = zone.rrset(name, rtype) {
            return r.records.clone();
        }
        if rtype != "CNAME"
            && let Some(c) = zone.rrset(name, "CNAME")
        {
            return match (c.records.first(), depth) {
                (Some(target), d) if d < 8 => Self::answer(zones, target, rtype, d + 1),
                _ => Vec::new(),
            };
        }
        if zone.node_exists(name) {
            return Vec::new(); // NODATA
        }
        // Wildcards: from the closest ancestor towards the apex.
        let mut anc = parent(name);
        while let Some(a) = anc {
            if !in_zone(a, &zone.name) {
                break;
            }
            let wc = format!("*.{a}");
            if zone.node_exists(&wc) {
                return zone.rrset(&wc, rtype).map(|r| r.records.clone()).unwrap_or_default();
            }
            if zone.node_exists(a) || a == zone.name {
                break; // the closest encloser has no wildcard: NXDOMAIN
            }
            anc = parent(a);
        }
        Vec::new()
    }
}

fn normalize_rrset(zone: &str, r: &Rrset, op: &str) -> Result<Rrset, StepError> {
    let name = normalize_name(&r.name).ok_or_else(|| {
        err(op, Cause::Invalid, format!("RRset {} IN {}: invalid name", r.name, r.rtype))
    })?;
    if !in_zone(&name, zone) {
        return Err(err(
            op,
            Cause::Invalid,
            format!("RRset {name} IN {}: Name is out of zone", r.rtype),
        ));
    }
    let rtype = r.rtype.trim().to_ascii_uppercase();
    if rtype.is_empty() || !rtype.chars().all(|c| c.is_ascii_alphanumeric()) {
        return Err(err(op, Cause::Invalid, format!("RRset {name}: invalid type `{}`", r.rtype)));
    }
    let mut records = Vec::new();
    for c in &r.records {
        let c = c.trim();
        let c = match rtype.as_str() {
            "A" => {
                c.parse::<Ipv4Addr>().map_err(|_| {
                    err(
                        op,
                        Cause::Invalid,
                        format!("Record {name}/A '{c}': Not in expected format (parsed as '')"),
                    )
                })?;
                c.to_owned()
            }
            "NS" | "CNAME" => normalize_name(c).ok_or_else(|| {
                err(
                    op,
                    Cause::Invalid,
                    format!("Record {name}/{rtype} '{c}': Not in expected format"),
                )
            })?,
            _ => c.to_owned(),
        };
        if !records.contains(&c) {
            records.push(c);
        }
    }
    if rtype == "CNAME" && records.len() > 1 {
        return Err(err(
            op,
            Cause::Invalid,
            format!("RRset {name} IN CNAME: only one CNAME record is allowed"),
        ));
    }
    Ok(Rrset { name, rtype, ttl: r.ttl, records })
}

#[async_trait]
impl DnsApi for SimDns {
    async fn zone_exists(&self, zone: &str) -> AdapterResult<bool> {
        self.world.op("dns.zone_exists", 100).await?;
        let z = Self::zone_name(zone, "zone_exists")?;
        Ok(self.load(&z).await?.is_some())
    }

    async fn zone_account(&self, zone: &str) -> AdapterResult<Option<String>> {
        self.world.op("dns.zone_exists", 100).await?;
        let z = Self::zone_name(zone, "zone_account")?;
        Ok(self.load(&z).await?.map(|z| z.account))
    }

    async fn zone_meta(&self, zone: &str, kind: &str) -> AdapterResult<Vec<String>> {
        self.world.op("dns.zone_meta", 50).await?;
        let z = Self::zone_name(zone, "zone_meta")?;
        let zone = self.load(&z).await?.ok_or_else(|| {
            err("zone_meta", Cause::NotFound, format!("Could not find domain '{z}'"))
        })?;
        Ok(zone.metadata.get(kind).cloned().unwrap_or_default())
    }

    async fn set_zone_meta(&self, zone: &str, kind: &str, values: &[String]) -> AdapterResult<()> {
        self.world.op("dns.set_zone_meta", 50).await?;
        if !kind.starts_with("X-") {
            return Err(err(
                "set_zone_meta",
                Cause::Invalid,
                format!("Unsupported metadata kind '{kind}'"),
            ));
        }
        let z = Self::zone_name(zone, "set_zone_meta")?;
        let _g = self.world.lock(SYS, KIND).await;
        let mut zone = self.load(&z).await?.ok_or_else(|| {
            err("set_zone_meta", Cause::NotFound, format!("Could not find domain '{z}'"))
        })?;
        if values.is_empty() {
            zone.metadata.remove(kind);
        } else {
            zone.metadata.insert(kind.to_owned(), values.to_vec());
        }
        self.save(&zone).await
    }

    async fn secure_zone(&self, zone: &str) -> AdapterResult<Vec<String>> {
        use sha2::{Digest, Sha256};
        self.world.op("dns.secure_zone", 100).await?;
        let z = Self::zone_name(zone, "secure_zone")?;
        let _g = self.world.lock(SYS, KIND).await;
        let mut zone = self.load(&z).await?.ok_or_else(|| {
            err("secure_zone", Cause::NotFound, format!("Could not find domain '{z}'"))
        })?;
        // A stand-in key (a real one is PowerDNS's): stable per zone, so
        // securing twice changes nothing.
        let digest = Sha256::digest(format!("sim-ksk:{z}").as_bytes());
        let tag = u16::from_be_bytes([digest[0], digest[1]]);
        if zone.rrset(&z, "DNSKEY").is_none() {
            zone.rrsets.push(Rrset {
                name: z.clone(),
                rtype: "DNSKEY".into(),
                ttl: 3600,
                records: vec![format!("257 3 13 {}", super::b64(&digest))],
            });
            self.save(&zone).await?;
        }
        Ok(vec![format!("{tag} 13 2 {}", hex::encode(digest))])
    }

    async fn list_zones(&self) -> AdapterResult<Vec<String>> {
        self.world.op("dns.list_zones", 50).await?;
        Ok(self.zones().await?.into_iter().map(|z| z.name).collect())
    }

    async fn create_zone(
        &self,
        zone: &str,
        nameservers: &[String],
        account: &str,
    ) -> AdapterResult<()> {
        self.world.op("dns.create_zone", 100).await?;
        let z = Self::zone_name(zone, "create_zone")?;
        let mut ns: Vec<String> = nameservers
            .iter()
            .map(|n| {
                normalize_name(n).ok_or_else(|| {
                    err("create_zone", Cause::Invalid, format!("invalid nameserver `{n}`"))
                })
            })
            .collect::<Result<_, _>>()?;
        ns.sort();
        ns.dedup();
        let _g = self.world.lock(SYS, KIND).await;
        if let Some(existing) = self.load(&z).await? {
            let mut have = existing.nameservers.clone();
            have.sort();
            return if have == ns {
                Ok(())
            } else {
                Err(err(
                    "create_zone",
                    Cause::Conflict,
                    format!(
                        "Conflict: domain '{z}' already exists with nameservers {have:?}, not {ns:?}"
                    ),
                ))
            };
        }
        let serial =
            chrono::Utc::now().format("%Y%m%d").to_string().parse::<u64>().unwrap_or(1) * 100 + 1;
        let mut rrsets = vec![Rrset {
            name: z.clone(),
            rtype: "SOA".into(),
            ttl: 3600,
            records: vec![format!(
                "a.misconfigured.dns.server.invalid. hostmaster.{z} {serial} 10800 3600 604800 3600"
            )],
        }];
        if !ns.is_empty() {
            rrsets.push(Rrset {
                name: z.clone(),
                rtype: "NS".into(),
                ttl: 3600,
                records: ns.clone(),
            });
        }
        self.save(&Zone {
            name: z,
            kind: "Native".into(),
            serial,
            nameservers: ns,
            rrsets,
            account: account.to_owned(),
            metadata: Default::default(),
        })
        .await
    }

    async fn delete_zone(&self, zone: &str) -> AdapterResult<()> {
        self.world.op("dns.delete_zone", 100).await?;
        let z = Self::zone_name(zone, "delete_zone")?;
        let _g = self.world.lock(SYS, KIND).await;
        // Absent is success: undo must be idempotent.
        self.world.delete(SYS, KIND, &z).await?;
        Ok(())
    }

    async fn replace_rrsets(&self, zone: &str, rrsets: &[Rrset]) -> AdapterResult<()> {
        self.world.op("dns.replace_rrsets", 100).await?;
        let z = Self::zone_name(zone, "replace_rrsets")?;
        let _g = self.world.lock(SYS, KIND).await;
        let mut zone = self.load(&z).await?.ok_or_else(|| {
            err("replace_rrsets", Cause::NotFound, format!("Could not find domain '{z}'"))
        })?;
        // One transaction: validate everything before changing anything.
        let new: Vec<Rrset> = rrsets
            .iter()
            .map(|r| normalize_rrset(&z, r, "replace_rrsets"))
            .collect::<Result<_, _>>()?;
        for r in new {
            zone.rrsets.retain(|x| !(x.name == r.name && x.rtype == r.rtype));
            if r.records.is_empty() {
                continue;
            }
            let clash = zone
                .rrsets
                .iter()
                .any(|x| x.name == r.name && (x.rtype == "CNAME" || r.rtype == "CNAME"));
            if clash {
                return Err(err(
                    "replace_rrsets",
                    Cause::Invalid,
                    format!("RRset {} IN {}: Conflicts with pre-existing RRset", r.name, r.rtype),
                ));
            }
            zone.rrsets.push(r);
        }
        zone.serial += 1;
        self.save(&zone).await
    }

    async fn delete_rrsets(&self, zone: &str, names: &[(String, String)]) -> AdapterResult<()> {
        self.world.op("dns.delete_rrsets", 100).await?;
        let z = Self::zone_name(zone, "delete_rrsets")?;
        let _g = self.world.lock(SYS, KIND).await;
        let mut zone = self.load(&z).await?.ok_or_else(|| {
            err("delete_rrsets", Cause::NotFound, format!("Could not find domain '{z}'"))
        })?;
        for (name, rtype) in names {
            let n = normalize_name(name).ok_or_else(|| {
                err("delete_rrsets", Cause::Invalid, format!("invalid name `{name}`"))
            })?;
            let t = rtype.trim().to_ascii_uppercase();
            zone.rrsets.retain(|x| !(x.name == n && x.rtype == t));
        }
        zone.serial += 1;
        self.save(&zone).await
    }

    /// The sim's world has one DNS: every resolver sees the zones.
    async fn query_via(
        &self,
        _server: std::net::SocketAddr,
        name: &str,
        rtype: &str,
    ) -> AdapterResult<Vec<String>> {
        self.query(name, rtype).await
    }

    async fn query(&self, name: &str, rtype: &str) -> AdapterResult<Vec<String>> {
        self.world.op("dns.query", 20).await?;
        let n = normalize_name(name)
            .ok_or_else(|| err("query", Cause::Invalid, format!("invalid name `{name}`")))?;
        let zones = self.zones().await?;
        Ok(Self::answer(&zones, &n, &rtype.trim().to_ascii_uppercase(), 0))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backend::world::SimConfig;

    fn rr(name: &str, t: &str, recs: &[&str]) -> Rrset {
        Rrset {
            name: name.into(),
            rtype: t.into(),
            ttl: 300,
            records: recs.iter().map(|s| (*s).to_owned()).collect(),
        }
    }

    fn dns() -> (tempfile::TempDir, SimDns) {
        let dir = tempfile::tempdir().unwrap();
        let dns = SimDns::new(Arc::new(SimWorld::new(dir.path(), SimConfig::instant())));
        (dir, dns)
    }

    fn ns() -> Vec<String> {
        vec!["ns1.openova.io".into(), "ns2.openova.io.".into()]
    }

    #[tokio::test]
    async fn a_signed_zone_has_a_key_and_its_ds_is_answered_by_the_parent() {
        let (_d, dns) = dns();
        dns.create_zone("pool.io", &ns(), "").await.unwrap();
        dns.create_zone("a.pool.io", &ns(), "").await.unwrap();
        let ds = dns.secure_zone("a.pool.io").await.unwrap();
        assert_eq!(dns.secure_zone("a.pool.io.").await.unwrap(), ds, "the same keys twice");
        assert_eq!(dns.query("a.pool.io", "DNSKEY").await.unwrap().len(), 1);
        assert!(dns.query("a.pool.io", "DS").await.unwrap().is_empty(), "no DS yet");
        let cut = |t: &str, r: Vec<String>| Rrset {
            name: "a.pool.io.".into(),
            rtype: t.into(),
            ttl: 3600,
            records: r,
        };
        dns.replace_rrsets("pool.io", &[cut("NS", ns()), cut("DS", ds.clone())]).await.unwrap();
        assert_eq!(dns.query("a.pool.io", "DS").await.unwrap(), ds);
        assert!(dns.secure_zone("missing.io").await.is_err());
    }

    #[tokio::test]
    async fn zones_are_idempotent_and_ns_checked() {
        let (_d, dns) = dns();
        assert!(!dns.zone_exists("pool.openova.io").await.unwrap());
        dns.create_zone("pool.openova.io", &ns(), "").await.unwrap();
        dns.create_zone(
            "Pool.OpenOva.io.",
            &["ns2.openova.io.".into(), "ns1.openova.io.".into()],
            "",
        )
        .await
        .unwrap();
        assert!(dns.zone_exists("pool.openova.io.").await.unwrap());
        let e =
            dns.create_zone("pool.openova.io.", &["ns9.other.net.".into()], "").await.unwrap_err();
        assert!(matches!(
            e,
            StepError::Adapter { system: System::Dns, cause: Cause::Conflict, .. }
        ));
        assert_eq!(
            dns.query("pool.openova.io", "NS").await.unwrap(),
            vec!["ns1.openova.io.", "ns2.openova.io."]
        );
        assert_eq!(dns.query("pool.openova.io", "soa").await.unwrap().len(), 1);
        let e = dns
            .replace_rrsets("missing.io", &[rr("a.missing.io.", "A", &["1.2.3.4"])])
            .await
            .unwrap_err();
        assert!(matches!(e, StepError::Adapter { cause: Cause::NotFound, .. }));
        let e = dns
            .replace_rrsets("pool.openova.io", &[rr("a.elsewhere.io.", "A", &["1.2.3.4"])])
            .await
            .unwrap_err();
        assert!(matches!(e, StepError::Adapter { cause: Cause::Invalid, .. }));
        let e = dns
            .replace_rrsets("pool.openova.io", &[rr("a.pool.openova.io.", "A", &["not-an-ip"])])
            .await
            .unwrap_err();
        assert!(matches!(e, StepError::Adapter { cause: Cause::Invalid, .. }));
        dns.delete_zone("pool.openova.io").await.unwrap();
        dns.delete_zone("pool.openova.io").await.unwrap();
        assert!(!dns.zone_exists("pool.openova.io").await.unwrap());
    }

    #[tokio::test]
    async fn records_wildcards_and_delegations() {
        let (_d, dns) = dns();
        dns.create_zone("pool.openova.io.", &ns(), "").await.unwrap();
        dns.replace_rrsets(
            "pool.openova.io.",
            &[
                rr("*.acme.pool.openova.io", "A", &["203.0.113.10"]),
                rr("api.acme.pool.openova.io.", "A", &["203.0.113.11", "203.0.113.12"]),
                rr("txt.acme.pool.openova.io.", "TXT", &["\"hello\""]),
                rr("www.acme.pool.openova.io.", "CNAME", &["api.acme.pool.openova.io"]),
                // Delegation of a sub-pool to other nameservers.
                rr("beta.pool.openova.io.", "NS", &["ns1.beta.example.", "ns2.beta.example."]),
            ],
        )
        .await
        .unwrap();
        // Exact beats wildcard.
        assert_eq!(
            dns.query("api.acme.pool.openova.io", "A").await.unwrap(),
            vec!["203.0.113.11", "203.0.113.12"]
        );
        // The wildcard covers one or more labels.
        assert_eq!(
            dns.query("console.acme.pool.openova.io.", "A").await.unwrap(),
            vec!["203.0.113.10"]
        );
        assert_eq!(
            dns.query("a.b.acme.pool.openova.io.", "A").await.unwrap(),
            vec!["203.0.113.10"]
        );
        // A name with other records does not fall back to the wildcard.
        assert!(dns.query("txt.acme.pool.openova.io.", "A").await.unwrap().is_empty());
        // The wildcard does not cover the parent itself, nor other branches.
        assert!(dns.query("acme.pool.openova.io.", "A").await.unwrap().is_empty());
        assert!(dns.query("x.other.pool.openova.io.", "A").await.unwrap().is_empty());
        // CNAMEs are followed.
        assert_eq!(
            dns.query("www.acme.pool.openova.io.", "A").await.unwrap(),
            vec!["203.0.113.11", "203.0.113.12"]
        );
        // NS at the delegation point answers from the parent zone; below it is a referral.
        assert_eq!(
            dns.query("beta.pool.openova.io.", "NS").await.unwrap(),
            vec!["ns1.beta.example.", "ns2.beta.example."]
        );
        assert!(dns.query("x.beta.pool.openova.io.", "A").await.unwrap().is_empty());
        // Once the child zone exists here too, it answers for itself.
        dns.create_zone(
            "beta.pool.openova.io",
            &["ns1.beta.example.".into(), "ns2.beta.example.".into()],
            "",
        )
        .await
        .unwrap();
        dns.replace_rrsets(
            "beta.pool.openova.io",
            &[rr("x.beta.pool.openova.io", "A", &["203.0.113.20"])],
        )
        .await
        .unwrap();
        assert_eq!(dns.query("x.beta.pool.openova.io.", "A").await.unwrap(), vec!["203.0.113.20"]);
        // Not authoritative: nothing.
        assert!(dns.query("example.com.", "A").await.unwrap().is_empty());
        // Deletion (absent is fine) and REPLACE with no records both remove.
        dns.delete_rrsets(
            "pool.openova.io",
            &[
                ("*.acme.pool.openova.io".into(), "a".into()),
                ("nope.pool.openova.io.".into(), "A".into()),
            ],
        )
        .await
        .unwrap();
        assert!(dns.query("console.acme.pool.openova.io.", "A").await.unwrap().is_empty());
        dns.replace_rrsets("pool.openova.io", &[rr("api.acme.pool.openova.io", "A", &[])])
            .await
            .unwrap();
        assert!(dns.query("api.acme.pool.openova.io", "A").await.unwrap().is_empty());
        // CNAME exclusivity.
        let e = dns
            .replace_rrsets("pool.openova.io", &[rr("www.acme.pool.openova.io", "A", &["1.1.1.1"])])
            .await
            .unwrap_err();
        assert!(matches!(e, StepError::Adapter { cause: Cause::Invalid, .. }));
    }
}
