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
//!
//! The keeper and the commit race: the keeper reads a lease, commit ends
//! it, the keeper writes it back. PowerDNS's metadata has no
//! compare-and-set, so commit first marks the zone committed
//! ([`COMMITTED_META`], never removed but by the commit's undo), then ends
//! the lease; the keeper neither renews nor sweeps a committed zone, so a
//! lease written back after the commit is inert.

use std::time::Duration;

use cz_adapters::{DnsApi, absolute_name as abs};
use cz_engine::StepResult;
use cz_state::{Job, JobStatus};
use serde::{Deserialize, Serialize};

use super::cut_of;
use crate::jobs::JobRequest;

/// Zone metadata holding a reservation's lease.
pub const LEASE_META: &str = "X-CATALYST-LEASE";

/// Zone metadata marking a reservation committed: the Sovereign's for good.
pub const COMMITTED_META: &str = "X-CATALYST-COMMITTED";

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

/// Commits the reservation: the zone is the Sovereign's for good. The mark
/// goes first, so the keeper cannot revive the lease (see the module doc).
pub(crate) async fn commit(dns: &dyn DnsApi, zone: &str, job: &str) -> StepResult<()> {
    dns.set_zone_meta(zone, COMMITTED_META, &[job.to_owned()]).await?;
    dns.set_zone_meta(zone, LEASE_META, &[]).await
}

/// Undoes [`commit`]: the zone is a reservation of `job` again, leased.
pub(crate) async fn uncommit(
    dns: &dyn DnsApi,
    zone: &str,
    job: &str,
    ttl: Duration,
) -> StepResult<()> {
    set_lease(dns, zone, job, ttl).await?;
    dns.set_zone_meta(zone, COMMITTED_META, &[]).await
}

/// Whether the zone was committed.
async fn committed(dns: &dyn DnsApi, zone: &str) -> StepResult<bool> {
    Ok(!dns.zone_meta(zone, COMMITTED_META).await?.is_empty())
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
        if ours && !committed(dns, &zone).await? {
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
        // A lease the keeper wrote back just after the commit: inert.
        if committed(dns, &zone).await? {
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::sim_rig;

    /// The keeper's read-then-write racing the commit: a lease written back
    /// after the commit is neither renewed nor swept.
    #[tokio::test]
    async fn a_lease_written_back_after_the_commit_is_inert() {
        let rig = sim_rig().await;
        let dns = rig.env().dns.clone();
        let zone = "race.omani.works.";
        dns.create_zone(zone, &["ns1.openova.io.".into()], &owner("s-1")).await.unwrap();
        set_lease(dns.as_ref(), zone, "job-1", Duration::from_secs(600)).await.unwrap();
        // The keeper read the live lease; the commit runs; the keeper writes
        // it back, already expired.
        commit(dns.as_ref(), zone, "job-1").await.unwrap();
        set_lease(dns.as_ref(), zone, "job-1", Duration::ZERO).await.unwrap();
        let jobs = [("job-1".to_owned(), "race.omani.works".to_owned())];
        let renewed = renew_leases(dns.as_ref(), &jobs, Duration::from_secs(600)).await.unwrap();
        assert!(renewed.is_empty(), "a committed zone is not renewed");
        let swept =
            sweep_expired(dns.as_ref(), &["omani.works."], &[], Duration::ZERO).await.unwrap();
        assert!(swept.is_empty(), "a committed zone is not swept: {swept:?}");
        assert!(dns.zone_exists(zone).await.unwrap());
        // Uncommitted (the commit's undo), an expired lease is swept.
        uncommit(dns.as_ref(), zone, "job-1", Duration::ZERO).await.unwrap();
        let swept =
            sweep_expired(dns.as_ref(), &["omani.works."], &[], Duration::ZERO).await.unwrap();
        assert_eq!(swept, [zone]);
    }
}
