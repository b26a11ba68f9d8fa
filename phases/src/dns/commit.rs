//! Phase 7, `dns-commit`: the Sovereign's records, visible to the world
//! before the job may call it ready.
//!
//! 1. `records` (undo: delete those records): the record set (apex, `*`,
//!    `console`, `api`, `gitea`, `harbor` → the load balancer; add-region:
//!    `<location>.<fqdn>` per new region) in one REPLACE; a provision's
//!    commit marks the zone committed and ends the reservation's lease;
//! 2. `verify-records`: every record answers over DNS from the
//!    authoritative server (a wildcard through a name it must cover);
//! 3. `propagation`: the gate. Nothing may declare the Sovereign ready, nor
//!    request certificates for it, before the world sees it: the parent
//!    delegates it (pool mode), then every public resolver answers the NS
//!    set and every record. Each resolver's view is streamed when it
//!    changes; past the bound (`Bounds::dns_propagation`, 30 min by
//!    default: parent NS TTLs are an hour) the job pauses with what each
//!    one last said.

use std::time::Duration;

use cz_adapters::{Rrset, absolute_name as abs};
use cz_engine::{ActionId, Cause, PhaseBuilder, PhaseDef, StepError, StepResult, System};
use cz_engine::{action, no_undo};
use serde::{Deserialize, Serialize};

use super::lease::{commit, uncommit};
use super::{Check, NAMESERVERS, RECORD_NAMES, RECORD_TTL, await_resolvers, nameservers};
use super::{ns_matches, parent};
use crate::common::fqdn;
use crate::infra::Outputs;
use crate::request::Region;
use crate::{Registry, StepCtx};

pub const PHASE: &str = "dns-commit";

// --- params and outputs --------------------------------------------------

/// `records`' params.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct RecordParams {
    /// The regions whose load balancers the records point at.
    pub locations: Vec<String>,
    /// add-region: `<location>.<fqdn>` records only.
    pub regional: bool,
}

/// `records`' output: what was written.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Records {
    pub rrsets: Vec<Rrset>,
}

/// `verify-records`' output: how many RRsets answered.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct RecordsVerified {
    pub verified: usize,
}

/// `propagation`'s output.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Propagated {
    pub delegated: bool,
    pub nameservers: Vec<String>,
    /// The public resolvers that answered everything.
    pub resolvers: Vec<String>,
}

// --- actions and the DAG -------------------------------------------------

const RECORDS: ActionId<RecordParams> = ActionId::new("dns-commit.records");
const VERIFY_RECORDS: ActionId<()> = ActionId::new("dns-commit.verify-records");
const PROPAGATION: ActionId<()> = ActionId::new("dns-commit.propagation");

pub fn register(r: &mut Registry) {
    r.register(RECORDS, action!(records, records_undo));
    r.register(VERIFY_RECORDS, action!(verify_records, no_undo));
    r.register(PROPAGATION, action!(propagation, no_undo));
}

/// `regional`: add-region writes `<location>.<fqdn>` records only.
pub fn phase(regions: &[Region], regional: bool) -> PhaseDef {
    let mut b = PhaseBuilder::new(PHASE);
    let locations = regions.iter().map(|r| r.location.clone()).collect();
    b.step("records", RECORDS, &[], RecordParams { locations, regional });
    b.step("verify-records", VERIFY_RECORDS, &["records"], ());
    b.step("propagation", PROPAGATION, &["verify-records"], ());
    b.build()
}

// --- steps ---------------------------------------------------------------

fn record_set(fqdn: &str, p: &RecordParams, lbs: &[(String, String)]) -> Vec<Rrset> {
    let a = |name: String, ip: &str| Rrset {
        name,
        rtype: "A".into(),
        ttl: RECORD_TTL,
        records: vec![ip.to_owned()],
    };
    if p.regional {
        return lbs.iter().map(|(loc, ip)| a(abs(&format!("{loc}.{fqdn}")), ip)).collect();
    }
    let ip = &lbs[0].1;
    RECORD_NAMES
        .iter()
        .map(|n| a(if *n == "@" { abs(fqdn) } else { abs(&format!("{n}.{fqdn}")) }, ip))
        .collect()
}

/// (location, load balancer IPv4) of each region the records point at.
fn lb_ips(cx: &StepCtx, p: &RecordParams) -> StepResult<Vec<(String, String)>> {
    p.locations
        .iter()
        .map(|loc| {
            let out: Outputs = cx.lookup(&format!("infra/outputs-{loc}"))?;
            Ok((loc.clone(), out.load_balancer.ipv4))
        })
        .collect()
}

async fn records(cx: &StepCtx) -> StepResult<Records> {
    let fqdn = fqdn(cx)?;
    let p: RecordParams = cx.params()?;
    let set = record_set(&fqdn, &p, &lb_ips(cx, &p)?);
    cx.env.dns.replace_rrsets(&abs(&fqdn), &set).await?;
    // Committed: the zone is the Sovereign's for good, no longer leased.
    if !p.regional {
        commit(cx.env.dns.as_ref(), &abs(&fqdn), &cx.job_id.to_string()).await?;
    }
    Ok(Records { rrsets: set })
}

async fn records_undo(cx: &StepCtx) -> StepResult<()> {
    let fqdn = fqdn(cx)?;
    let p: RecordParams = cx.params()?;
    let zone = abs(&fqdn);
    // Back to a reservation (its zone's own undo removes it next).
    if !p.regional && cx.env.dns.zone_exists(&zone).await? {
        let lease = cx.env.bounds.dns_lease;
        uncommit(cx.env.dns.as_ref(), &zone, &cx.job_id.to_string(), lease).await?;
    }
    let Ok(lbs) = lb_ips(cx, &p) else { return Ok(()) };
    let names: Vec<(String, String)> =
        record_set(&fqdn, &p, &lbs).into_iter().map(|r| (r.name, r.rtype)).collect();
    cx.env.dns.delete_rrsets(&zone, &names).await
}

/// A wildcard is checked through a name it must cover.
fn probe_name(name: &str) -> String {
    name.replacen("*.", "catalyst-probe.", 1)
}

async fn verify_records(cx: &StepCtx) -> StepResult<RecordsVerified> {
    let Records { rrsets } = cx.lookup("dns-commit/records")?;
    for rr in &rrsets {
        let probe = probe_name(&rr.name);
        cx.wait_for(
            &format!("{probe} A to answer {:?}", rr.records),
            Duration::from_secs(300),
            || async {
                let got = cx.env.dns.query(&probe, &rr.rtype).await?;
                Ok((got == rr.records).then_some(()))
            },
        )
        .await?;
    }
    Ok(RecordsVerified { verified: rrsets.len() })
}

async fn propagation(cx: &StepCtx) -> StepResult<Propagated> {
    let fqdn = fqdn(cx)?;
    let bound = cx.env.bounds.dns_propagation;
    let ns = if parent(cx)?.is_some() {
        cx.wait_for(&format!("the parent zone to delegate {fqdn}"), bound, || ns_matches(cx, &fqdn))
            .await?
    } else {
        // Bring-your-own: the customer's registrar must delegate to us.
        ns_matches(cx, &fqdn).await?.ok_or_else(|| {
            StepError::adapter(
                System::Dns,
                "propagation",
                Cause::NotFound,
                format!("{fqdn} is not delegated to {} yet", NAMESERVERS.join(", ")),
            )
        })?
    };
    let Records { rrsets } = cx.lookup("dns-commit/records")?;
    let mut want_ns = nameservers();
    want_ns.sort();
    // The delegation, and every record committed (add-region's are the
    // regional names).
    let mut checks: Vec<Check> = vec![(abs(&fqdn), "NS".into(), want_ns)];
    for rr in &rrsets {
        let mut want = rr.records.clone();
        want.sort();
        checks.push((probe_name(&rr.name), rr.rtype.clone(), want));
    }
    await_resolvers(cx, &format!("{fqdn} to be visible"), bound, &checks).await?;
    let resolvers = cx.env.public_resolvers.iter().map(|r| r.to_string()).collect();
    Ok(Propagated { delegated: true, nameservers: ns, resolvers })
}

#[cfg(test)]
mod tests {
    use crate::request::Registrar;
    use crate::testing::{PhaseScenario, byo_api_request, phase_tests, sample_request};

    /// Signed, so the unwind also takes the DS out of the pool zone.
    fn signed() -> crate::request::ProvisionRequest {
        let mut req = sample_request("com", 1, 0);
        req.dnssec = true;
        req
    }

    phase_tests!(super::PHASE, signed());

    /// On a `byo-api` domain, the unwind gives the registrar back too.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn every_step_failure_unwinds_a_byo_api_domain() {
        let req = byo_api_request("acme-commit.com", Registrar::Namecheap, "u:k:203.0.113.7");
        let s = PhaseScenario::provision(req, super::PHASE);
        cz_engine::testing::every_step_failure_unwinds(&s).await;
    }
}
