//! Phase 1, `dns-reserve`: the Sovereign's name is held before anything
//! is spent on it.
//!
//! 1. `zone` (undo: delete the zone, only if it is this Sovereign's): the
//!    child zone, made with its owner, and its lease ([`super::lease`]); a
//!    signed zone on request (its DS recorded in the output);
//! 2. `delegation` (undo: remove the NS and DS from the pool zone, or give
//!    a `byo-api` registrar its delegation back): pool mode writes NS (and
//!    DS) into the parent pool zone in one PATCH; `byo-api` has the
//!    customer's registrar point the domain at us; `byo-manual` asks the
//!    customer to;
//! 3. `verify-delegation`: the delegation answers over DNS (pool: the
//!    authoritative server, and the DNSKEY and DS of a signed zone;
//!    bring-your-own: the registrar reports it, then public resolvers see
//!    it, within a bound).

use std::time::Duration;

use cz_adapters::registrar::{RegistrarApi, sorted};
use cz_adapters::{Rrset, absolute_name as abs};
use cz_engine::{ActionId, Cause, PhaseBuilder, PhaseDef, StepError, StepResult, System};
use cz_engine::{action, no_undo};
use serde::{Deserialize, Serialize};
use serde_json::json;

use super::lease::{owner, set_lease};
use super::{
    NAMESERVERS, PREVIOUS_NS_META, PreviousNs, await_resolvers, cut_of, nameservers, ns_matches,
    ours_bare, parent, registrar_of, restore_registrar,
};
use crate::common::{fqdn, job_request};
use crate::preflight::RegistrarSeen;
use crate::request::Registrar;
use crate::{Registry, StepCtx};

pub const PHASE: &str = "dns-reserve";

// --- params and outputs --------------------------------------------------

/// `zone`'s output.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Zone {
    pub zone: String,
    pub nameservers: Vec<String>,
    /// The zone's `account`: `catalyst-zero:<sovereign id>`.
    pub owner: String,
    pub lease_s: u64,
    /// The DS records the parent must publish (empty: not signed).
    #[serde(default)]
    pub ds: Vec<String>,
}

/// `delegation`'s output, by domain mode.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "mode", rename_all = "kebab-case")]
pub enum Delegation {
    /// NS (and DS) written into the pool zone.
    Pool { parent: String, nameservers: Vec<String>, ds: Vec<String> },
    /// `byo-manual`: the customer points the NS at these.
    Byo { expected_nameservers: Vec<String>, ds: Vec<String> },
    /// `byo-api`: the registrar delegates to `nameservers`, and delegated
    /// to `previous_nameservers` before.
    ByoApi {
        registrar: Registrar,
        nameservers: Vec<String>,
        previous_nameservers: Vec<String>,
        ds: Vec<String>,
        /// Whether the registrar published the DS itself.
        ds_published: bool,
    },
}

/// `verify-delegation`'s output.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Verified {
    pub verified: bool,
    /// `byo-api` or `byo-manual`; absent in pool mode.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mode: Option<String>,
    pub nameservers: Vec<String>,
    /// Pool mode: whether the DNSSEC chain was checked.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dnssec: Option<bool>,
}

// --- actions and the DAG -------------------------------------------------

const ZONE: ActionId<()> = ActionId::new("dns-reserve.zone");
const DELEGATION: ActionId<()> = ActionId::new("dns-reserve.delegation");
const VERIFY_DELEGATION: ActionId<()> = ActionId::new("dns-reserve.verify-delegation");

pub fn register(r: &mut Registry) {
    r.register(ZONE, action!(zone, zone_undo));
    r.register(DELEGATION, action!(delegation, delegation_undo));
    r.register(VERIFY_DELEGATION, action!(verify_delegation, no_undo));
}

pub fn phase() -> PhaseDef {
    let mut b = PhaseBuilder::new(PHASE);
    b.step("zone", ZONE, &[], ());
    b.step("delegation", DELEGATION, &["zone"], ());
    b.step("verify-delegation", VERIFY_DELEGATION, &["delegation"], ());
    b.build()
}

// --- steps ---------------------------------------------------------------

async fn zone(cx: &StepCtx) -> StepResult<Zone> {
    let fqdn = fqdn(cx)?;
    let zone = abs(&fqdn);
    let me = owner(&cx.sovereign_id.to_string());
    let dns = &cx.env.dns;
    match dns.zone_account(&zone).await? {
        Some(account) if account != me => {
            return Err(StepError::adapter(
                System::Dns,
                "reserve zone",
                Cause::Conflict,
                format!(
                    "{zone} exists and is not this Sovereign's (account `{account}`): the name \
                     was taken after pre-flight"
                ),
            ));
        }
        Some(_) => {} // ours, from an earlier attempt
        None => dns.create_zone(&zone, &nameservers(), &me).await?,
    }
    let lease = cx.env.bounds.dns_lease;
    set_lease(dns.as_ref(), &zone, &cx.job_id.to_string(), lease).await?;
    let ds = if job_request(cx)?.dnssec() { dns.secure_zone(&zone).await? } else { vec![] };
    Ok(Zone { zone, nameservers: nameservers(), owner: me, lease_s: lease.as_secs(), ds })
}

async fn zone_undo(cx: &StepCtx) -> StepResult<()> {
    let zone = abs(&fqdn(cx)?);
    // Only ever this Sovereign's zone; already gone is done.
    match cx.env.dns.zone_account(&zone).await? {
        Some(a) if a == owner(&cx.sovereign_id.to_string()) => cx.env.dns.delete_zone(&zone).await,
        _ => Ok(()),
    }
}

/// The DS records the zone step computed (none: the zone is not signed).
pub(crate) fn zone_ds(cx: &StepCtx) -> StepResult<Vec<String>> {
    Ok(cx.lookup::<Zone>("dns-reserve/zone")?.ds)
}

async fn delegation(cx: &StepCtx) -> StepResult<Delegation> {
    let fqdn = fqdn(cx)?;
    let ds = zone_ds(cx)?;
    if let Some(pool) = parent(cx)? {
        return delegate_in_pool(cx, &fqdn, &pool, ds).await;
    }
    match registrar_of(cx).await? {
        Some((api, fqdn)) => delegate_at_registrar(cx, api.as_ref(), &fqdn, ds).await,
        None => {
            cx.log(format!(
                "Bring-your-own domain: point the NS records of {fqdn} at {}",
                NAMESERVERS.join(", ")
            ))
            .await?;
            ask_for_ds(cx, &fqdn, &ds).await?;
            Ok(Delegation::Byo { expected_nameservers: nameservers(), ds })
        }
    }
}

/// A signed zone whose DS nobody here can publish: the customer adds it.
async fn ask_for_ds(cx: &StepCtx, fqdn: &str, ds: &[String]) -> StepResult<()> {
    if ds.is_empty() {
        return Ok(());
    }
    cx.log(format!(
        "DNSSEC: add these DS records for {fqdn} at the registrar, after the NS change: {}",
        ds.join(" | ")
    ))
    .await
}

/// Pool mode: NS and DS in the pool zone, in one PATCH, so a signed child
/// is never delegated without its chain of trust, nor the reverse.
async fn delegate_in_pool(
    cx: &StepCtx,
    fqdn: &str,
    pool: &str,
    ds: Vec<String>,
) -> StepResult<Delegation> {
    let rr = |rtype: &str, records: Vec<String>| Rrset {
        name: abs(fqdn),
        rtype: rtype.into(),
        ttl: 3600,
        records,
    };
    let mut cut = vec![rr("NS", nameservers())];
    if !ds.is_empty() {
        cut.push(rr("DS", ds.clone()));
    }
    cx.env.dns.replace_rrsets(&abs(pool), &cut).await?;
    Ok(Delegation::Pool { parent: abs(pool), nameservers: nameservers(), ds })
}

/// byo-api: where the domain pointed before pre-flight spent anything is
/// kept on our zone (undo and destroy read it there), then the registrar
/// points it at us, unless it already does.
async fn delegate_at_registrar(
    cx: &StepCtx,
    api: &dyn RegistrarApi,
    fqdn: &str,
    ds: Vec<String>,
) -> StepResult<Delegation> {
    let before = cx.lookup::<RegistrarSeen>("preflight/registrar")?.nameservers;
    let zone = abs(fqdn);
    if cx.env.dns.zone_meta(&zone, PREVIOUS_NS_META).await?.is_empty() {
        let previous = PreviousNs { registrar: api.registrar(), nameservers: before.clone() };
        let v = serde_json::to_string(&previous).expect("metadata encodes");
        cx.env.dns.set_zone_meta(&zone, PREVIOUS_NS_META, &[v]).await?;
    }
    let want = ours_bare();
    if sorted(&api.get_nameservers(fqdn).await?) != sorted(&want) {
        api.set_nameservers(fqdn, &want).await?;
        let was = if before.is_empty() { "nothing".to_owned() } else { before.join(", ") };
        let message = format!(
            "{}: {fqdn} delegated to {} (was {was})",
            api.registrar().title(),
            want.join(", ")
        );
        cx.event("dns", json!({ "registrar": api.registrar(), "message": message })).await?;
    }
    // A signed zone's DS beside the delegation, where the adapter can.
    let ds_published = !ds.is_empty() && api.set_ds(fqdn, &ds).await?;
    if !ds_published {
        ask_for_ds(cx, fqdn, &ds).await?;
    }
    Ok(Delegation::ByoApi {
        registrar: api.registrar(),
        nameservers: want,
        previous_nameservers: before,
        ds,
        ds_published,
    })
}

async fn delegation_undo(cx: &StepCtx) -> StepResult<()> {
    if let Some(pool) = parent(cx)? {
        cx.env.dns.delete_rrsets(&abs(&pool), &cut_of(&fqdn(cx)?)).await?;
    } else {
        restore_registrar(cx).await?;
    }
    Ok(())
}

async fn verify_delegation(cx: &StepCtx) -> StepResult<Verified> {
    let fqdn = fqdn(cx)?;
    if parent(cx)?.is_none() {
        let mut want = nameservers();
        want.sort();
        // byo-api: the registrar says so first (OVH applies a change as a
        // task, so this may take a moment); byo-manual: the customer must.
        let byo_api = registrar_of(cx).await?;
        let ask = match &byo_api {
            Some((api, _)) => {
                let ours = sorted(&ours_bare());
                cx.wait_for(
                    &format!("{} to report {fqdn} delegated to us", api.registrar().title()),
                    Duration::from_secs(600),
                    || async {
                        Ok((sorted(&api.get_nameservers(&fqdn).await?) == ours).then_some(()))
                    },
                )
                .await?;
                format!("{} delegates {fqdn} to us", api.registrar().title())
            }
            None => format!("Point the NS records of {fqdn} at {}", want.join(", ")),
        };
        // Then the world must see it (the TLD's servers, then resolvers'
        // caches); the job waits, bounded, and streams what public
        // resolvers see meanwhile.
        let checks = vec![(abs(&fqdn), "NS".to_owned(), want.clone())];
        cx.log(format!("{ask}; waiting for the world to see it.")).await?;
        let bound = cx.env.bounds.byo_delegation;
        await_resolvers(cx, &format!("the NS of {fqdn} to point here"), bound, &checks).await?;
        let mode = if byo_api.is_some() { "byo-api" } else { "byo-manual" };
        return Ok(Verified {
            verified: true,
            mode: Some(mode.into()),
            nameservers: want,
            dnssec: None,
        });
    }
    let ns = cx
        .wait_for(
            &format!("the NS delegation of {fqdn} to answer"),
            Duration::from_secs(300),
            || ns_matches(cx, &fqdn),
        )
        .await?;
    let signed = verify_chain(cx, &fqdn).await?;
    Ok(Verified { verified: true, mode: None, nameservers: ns, dnssec: Some(signed) })
}

/// A signed zone: its DNSKEY answers over DNS, and (pool) the parent
/// answers the DS the zone step computed. Returns whether it is signed.
async fn verify_chain(cx: &StepCtx, fqdn: &str) -> StepResult<bool> {
    let ds = zone_ds(cx)?;
    if ds.is_empty() {
        return Ok(false);
    }
    let norm = |v: Vec<String>| {
        let mut v: Vec<String> = v.into_iter().map(|d| d.to_ascii_lowercase()).collect();
        v.sort();
        v
    };
    let ds = norm(ds);
    cx.wait_for(
        &format!("{fqdn} DNSKEY and its DS to answer"),
        Duration::from_secs(300),
        || async {
            let keys = cx.env.dns.query(&abs(fqdn), "DNSKEY").await?;
            let parent_ds = norm(cx.env.dns.query(&abs(fqdn), "DS").await?);
            Ok((!keys.is_empty() && parent_ds == ds).then_some(()))
        },
    )
    .await?;
    Ok(true)
}

#[cfg(test)]
mod tests {
    use crate::request::Registrar;
    use crate::testing::{PhaseScenario, byo_api_request, phase_tests, sample_request};

    /// Signed, so the unwind also takes the DS out of the pool zone.
    fn signed() -> crate::request::ProvisionRequest {
        let mut req = sample_request("res", 1, 1);
        req.dnssec = true;
        req
    }

    phase_tests!(super::PHASE, signed());

    /// The same on a `byo-api` domain: the registrar is given back too.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn every_step_failure_unwinds_a_byo_api_domain() {
        let req = byo_api_request("acme-unwind.com", Registrar::Godaddy, "key:secret");
        let s = PhaseScenario::provision(req, super::PHASE);
        cz_engine::testing::every_step_failure_unwinds(&s).await;
    }

    /// On a `byo-api` domain, twice is one delegation to us.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn every_step_runs_twice_on_a_byo_api_domain() {
        let req = byo_api_request("k8s.acme-twice.com", Registrar::Cloudflare, "cf-token");
        let s = PhaseScenario::provision(req.clone(), super::PHASE);
        cz_engine::testing::every_step_runs_twice(&s).await;
        let ns = s.registrar_nameservers_after_a_run().await;
        assert_eq!(ns, ["ns1.openova.io", "ns2.openova.io", "ns3.openova.io"]);
    }
}
