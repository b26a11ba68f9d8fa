//! The reservation's lease. The zone `dns-reserve/zone` makes is the
//! reservation, with its owner in the zone's `account`
//! (`catalyst-zero:<sovereign id>`, set atomically with the zone, so a
//! crash cannot leave an ownerless zone), plus a **lease**: zone metadata
//! [`LEASE_META`] naming the job and an expiry.
//!
//! The daemon renews the lease of every live job between `dns-reserve/zone`
//! and `dns-commit/records` ([`renew_leases`]); commit ends it. A lease
//! that ran out (its job gone) lets [`sweep_expired`] remove the zone and
//! its delegation. A slow `infra` therefore cannot lose the zone, and a
//! swept zone makes commit fail loudly (404 → not found), never "ready".
//! [`keep_leases`] is one round of both, which the daemon's reconciler runs.

use std::time::Duration;

use cz_adapters::{DnsApi, absolute_name as abs};
use cz_engine::StepResult;
use cz_state::{Job, JobStatus};
use serde::{Deserialize, Serialize};

use super::cut_of;
use crate::jobs::JobRequest;

/// Zone metadata holding a reservation's lease.
pub const LEASE_META: &str = "X-CATALYST-LEASE";

/// A reservation's lease, as stored in [`LEASE_META`].
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Lease {
    pub job: String,
    /// Unix seconds.
    pub expires: i64,
}

fn now_unix() -> i64 {
    chrono::Utc::now().timestamp()
}

/// The `account` a Sovereign's zone is made with.
pub fn owner(sovereign: &str) -> String {
    format!("catalyst-zero:{sovereign}")
}

/// Writes `job`'s lease on `zone`, `ttl` from now.
pub(crate) async fn set_lease(
    dns: &dyn DnsApi,
    zone: &str,
    job: &str,
    ttl: Duration,
) -> StepResult<()> {
    let lease = Lease { job: job.to_owned(), expires: now_unix() + ttl.as_secs() as i64 };
    let v = serde_json::to_string(&lease).expect("leases encode");
    dns.set_zone_meta(zone, LEASE_META, &[v]).await
}

/// Ends the lease: the zone is the Sovereign's for good.
pub(crate) async fn end_lease(dns: &dyn DnsApi, zone: &str) -> StepResult<()> {
    dns.set_zone_meta(zone, LEASE_META, &[]).await
}

/// The lease a zone's metadata holds, if any (unreadable is none).
async fn lease_of(dns: &dyn DnsApi, zone: &str) -> StepResult<Option<Lease>> {
    Ok(dns
        .zone_meta(zone, LEASE_META)
        .await?
        .first()
        .and_then(|v| serde_json::from_str::<Lease>(v).ok()))
}

/// Renews the lease of every live job (`jobs`: id and Sovereign FQDN)
/// holding a reservation not committed yet. Returns the zones renewed.
pub async fn renew_leases(
    dns: &dyn DnsApi,
    jobs: &[(String, String)],
    ttl: Duration,
) -> StepResult<Vec<String>> {
    let mut renewed = Vec::new();
    for (job, fqdn) in jobs {
        let zone = abs(fqdn);
        // Only a lease this job holds (not a committed zone, not another's).
        let ours = lease_of(dns, &zone).await.ok().flatten().is_some_and(|l| l.job == *job);
        if ours {
            set_lease(dns, &zone, job, ttl).await?;
            renewed.push(zone);
        }
    }
    Ok(renewed)
}

/// Removes every reservation whose lease ran out more than `grace` ago and
/// whose job is not among `live`: its delegation in `pools`' zone, then
/// the zone. Committed zones (no lease) are never touched. Returns the
/// zones removed.
pub async fn sweep_expired(
    dns: &dyn DnsApi,
    pools: &[&str],
    live: &[String],
    grace: Duration,
) -> StepResult<Vec<String>> {
    let mut swept = Vec::new();
    for zone in dns.list_zones().await? {
        let Some(lease) = lease_of(dns, &zone).await? else { continue };
        if lease.expires + grace.as_secs() as i64 > now_unix() || live.contains(&lease.job) {
            continue;
        }
        if let Some(pool) =
            pools.iter().find(|p| zone.strip_suffix(*p).is_some_and(|s| s.ends_with('.')))
        {
            dns.delete_rrsets(pool, &cut_of(&zone)).await?;
        }
        dns.delete_zone(&zone).await?;
        swept.push(zone);
    }
    Ok(swept)
}

/// The Sovereign FQDN of a stored job request.
pub fn fqdn_of_request(request: &serde_json::Value) -> Option<String> {
    JobRequest::decode(request).ok().map(|r| r.fqdn())
}

/// One round of the daemon's lease keeper over the store's `jobs`: renew
/// the leases of the live ones (pending, running or paused: a paused job
/// waits for its operator, it is not gone), then sweep the reservations
/// whose lease ran out more than `grace` ago. Returns (renewed, swept).
pub async fn keep_leases(
    dns: &dyn DnsApi,
    jobs: &[Job],
    pools: &[&str],
    ttl: Duration,
    grace: Duration,
) -> StepResult<(Vec<String>, Vec<String>)> {
    let live: Vec<(String, String)> = jobs
        .iter()
        .filter(|j| matches!(j.status, JobStatus::Pending | JobStatus::Running | JobStatus::Paused))
        .filter_map(|j| fqdn_of_request(&j.request).map(|f| (j.id.to_string(), f)))
        .collect();
    let renewed = renew_leases(dns, &live, ttl).await?;
    let ids: Vec<String> = live.into_iter().map(|(j, _)| j).collect();
    let swept = sweep_expired(dns, pools, &ids, grace).await?;
    Ok((renewed, swept))
}
