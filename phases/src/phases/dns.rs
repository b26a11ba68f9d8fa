//! Phases 1 and 7, `dns-reserve` and `dns-commit`: the Sovereign's zone.
//!
//! Pool mode: the child zone `<sub>.<pool>` and the NS delegation in the
//! parent pool zone, one step each with its undo, then a check that the
//! delegation answers over DNS. BYO modes record the NS set the customer (or
//! the registrar adapter) must point at. `dns-commit` writes the record set
//! in one REPLACE and verifies it by DNS queries before the job may finish.
//!
//! **The reservation** is the zone itself, made with its owner in the
//! zone's `account` (`catalyst-zero:<sovereign id>`, atomically with the
//! zone, so a crash cannot leave an ownerless zone), plus a **lease**
//! (zone metadata `X-CATALYST-LEASE`: the job and an expiry). The daemon
//! renews the lease of every live job between `dns-reserve/zone` and
//! `dns-commit/records` ([`renew_leases`]); commit ends it. A lease that
//! ran out (its job gone) lets [`sweep_expired`] remove the zone and its
//! delegation. A slow `infra` therefore cannot lose the zone (F-43), and a
//! swept zone makes commit fail loudly (404 → not found), never "ready".
//!
//!
//! **DNSSEC on request** (`dnssec: true`): the zone step signs the zone
//! (PowerDNS's default keys, ECDSA P-256) and records its DS; pool mode
//! writes the DS with the NS delegation in one PATCH, and verify-delegation
//! waits until the zone's DNSKEY and the parent's DS answer over DNS.
//! Every removal of a delegation (undo, sweep, destroy) removes NS and DS
//! together. The propagation gate needs no DS check of its own: a
//! validating public resolver answers SERVFAIL for a broken chain, so the
//! A records it must see would not pass. Bring-your-own domains: `byo-api`
//! at Cloudflare publishes the DS beside the NS records (and removes it
//! first on undo); otherwise the DS is logged for the customer to add at
//! the registrar.
//!
//! **Bring-your-own domains.** `byo-manual`: the customer changes the NS at
//! their registrar; `verify-delegation` waits, bounded, streaming what the
//! public resolvers see. `byo-api`: `preflight/registrar` proved the token
//! can manage the domain and noted its nameservers; `delegation` records
//! them on the zone ([`PREVIOUS_NS_META`]) and has the registrar point the
//! domain at ours; its undo, and destroy, put the recorded ones back, but
//! only while the domain still points at us (a change the customer made
//! since is theirs to keep).

use std::time::Duration;

use serde_json::{Value, json};

use std::sync::Arc;

use super::{action, fqdn, no_undo};
use crate::adapters::{Rrset, absolute_name as abs};
use crate::plan::{PhaseBuilder, PhaseDef};
use crate::registrar::{RegistrarApi, bare, sorted};
use crate::request::{Domain, Region, Registrar};
use crate::step::{Registry, StepCtx, StepResult};
use crate::{Cause, StepError, System};

/// The nameservers of Sovereign zones (config in a later issue).
pub const NAMESERVERS: &[&str] = &["ns1.openova.io.", "ns2.openova.io.", "ns3.openova.io."];
/// Names `dns-commit` points at the load balancer.
pub const RECORD_NAMES: &[&str] = &["@", "*", "console", "api", "gitea", "harbor"];
pub const RECORD_TTL: u32 = 300;

pub fn register(r: &mut Registry) {
    r.register("dns.zone", action!(zone, zone_undo));
    r.register("dns.delegation", action!(delegation, delegation_undo));
    r.register("dns.verify-delegation", action!(verify_delegation, no_undo));
    r.register("dns.records", action!(records, records_undo));
    r.register("dns.verify-records", action!(verify_records, no_undo));
    r.register("dns.propagation", action!(propagation, no_undo));
}

pub fn reserve_phase() -> PhaseDef {
    let mut b = PhaseBuilder::new("dns-reserve");
    b.step("zone", "dns.zone", &[], Value::Null);
    b.step("delegation", "dns.delegation", &["zone"], Value::Null);
    b.step("verify-delegation", "dns.verify-delegation", &["delegation"], Value::Null);
    b.build()
}

/// `regional`: add-region writes `<location>.<fqdn>` records only.
pub fn commit_phase(regions: &[Region], regional: Option<()>) -> PhaseDef {
    let mut b = PhaseBuilder::new("dns-commit");
    let locs: Vec<&str> = regions.iter().map(|r| r.location.as_str()).collect();
    b.step(
        "records",
        "dns.records",
        &[],
        json!({ "locations": locs, "regional": regional.is_some() }),
    );
    b.step("verify-records", "dns.verify-records", &["records"], Value::Null);
    b.step("propagation", "dns.propagation", &["verify-records"], Value::Null);
    b.build()
}

fn nameservers() -> Vec<String> {
    NAMESERVERS.iter().map(|s| s.to_string()).collect()
}

/// The parent zone that delegates to the Sovereign (pool mode only).
fn parent(cx: &StepCtx) -> StepResult<Option<String>> {
    if cx.request.pointer("/sovereign").is_some() {
        return Ok(cx
            .request
            .pointer("/sovereign/pool_domain")
            .and_then(Value::as_str)
            .map(str::to_owned));
    }
    Ok(match super::request(cx)?.domain {
        Domain::Pool { pool_domain, .. } => Some(pool_domain),
        Domain::ByoManual { .. } | Domain::ByoApi { .. } => None,
    })
}

/// Whether the request asks for a signed zone (provision jobs only).
fn dnssec_requested(cx: &StepCtx) -> StepResult<bool> {
    if cx.request.pointer("/sovereign").is_some() {
        return Ok(false);
    }
    Ok(super::request(cx)?.dnssec)
}

/// What a delegation of `name` consists of in the parent zone, to remove
/// it: NS, and DS when the child is signed (absent is fine).
pub(crate) fn cut_of(name: &str) -> Vec<(String, String)> {
    ["NS", "DS"].iter().map(|t| (abs(name), t.to_string())).collect()
}

/// The DS records the zone step computed (none: the zone is not signed).
fn zone_ds(cx: &StepCtx) -> StepResult<Vec<String>> {
    let zone_out: Value = cx.lookup("dns-reserve/zone")?;
    Ok(serde_json::from_value(zone_out["ds"].clone()).unwrap_or_default())
}

/// Zone metadata holding what a `byo-api` domain was delegated to before
/// (`{"registrar", "nameservers"}`, one JSON value), for its undo and
/// destroy.
pub const PREVIOUS_NS_META: &str = "X-CATALYST-PREVIOUS-NS";

/// `byo-api`: the registrar of the Sovereign's domain, connected with its
/// token, and the domain. None for the other modes.
pub(crate) async fn registrar_of(
    cx: &StepCtx,
) -> StepResult<Option<(Arc<dyn RegistrarApi>, String)>> {
    let registrar: Registrar = if cx.request.pointer("/sovereign").is_some() {
        match cx.request.pointer("/sovereign/registrar") {
            Some(r) => serde_json::from_value(r.clone())
                .map_err(|e| StepError::internal(format!("sovereign.registrar: {e}")))?,
            None => return Ok(None),
        }
    } else {
        match super::request(cx)?.domain {
            Domain::ByoApi { registrar, .. } => registrar,
            Domain::Pool { .. } | Domain::ByoManual { .. } => return Ok(None),
        }
    };
    let token = cx.secret("registrar_token").await?;
    Ok(Some((cx.backend.registrars.connect(registrar, &token)?, fqdn(cx)?)))
}

/// Our nameservers as registrars take them.
fn ours_bare() -> Vec<String> {
    NAMESERVERS.iter().map(|n| bare(n)).collect()
}

/// Puts a `byo-api` domain's delegation back as [`PREVIOUS_NS_META`]
/// recorded it, if the zone recorded one and the domain still points at
/// us. Returns what was done, for the step's output.
pub(crate) async fn restore_registrar(cx: &StepCtx) -> StepResult<Value> {
    let Some((api, fqdn)) = registrar_of(cx).await? else { return Ok(Value::Null) };
    let zone = abs(&fqdn);
    if cx.backend.dns.zone_account(&zone).await?.is_none() {
        return Ok(json!({ "restored": false, "why": "no zone: nothing was recorded" }));
    }
    let recorded = cx.backend.dns.zone_meta(&zone, PREVIOUS_NS_META).await?;
    let Some(before) = recorded
        .first()
        .and_then(|v| serde_json::from_str::<Value>(v).ok())
        .and_then(|v| serde_json::from_value::<Vec<String>>(v["nameservers"].clone()).ok())
    else {
        // The delegation step never got as far as changing anything.
        return Ok(json!({ "restored": false, "why": "the registrar was not changed" }));
    };
    let now = sorted(&api.get_nameservers(&fqdn).await?);
    if now != sorted(&ours_bare()) {
        cx.log(format!(
            "{}: {fqdn} points at {} now, not at us: left as it is",
            api.registrar().title(),
            now.join(", ")
        ))
        .await?;
        return Ok(json!({ "restored": false, "why": "changed since", "nameservers": now }));
    }
    // Our DS first: a DS left without our keys behind it would make
    // validating resolvers reject the domain.
    api.set_ds(&fqdn, &[]).await?;
    api.set_nameservers(&fqdn, &before).await?;
    cx.event(
        "dns",
        json!({ "registrar": api.registrar(), "message": format!(
            "{}: {fqdn} delegated back to {}", api.registrar().title(),
            if before.is_empty() { "nothing (NS records removed)".to_owned() } else { before.join(", ") }) }),
    )
    .await?;
    Ok(json!({ "restored": true, "nameservers": before }))
}

/// Zone metadata holding a reservation's lease.
pub const LEASE_META: &str = "X-CATALYST-LEASE";

/// A reservation's lease, as stored in [`LEASE_META`].
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
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

async fn set_lease(
    dns: &dyn crate::adapters::DnsApi,
    zone: &str,
    job: &str,
    ttl: Duration,
) -> StepResult<()> {
    let lease = Lease { job: job.to_owned(), expires: now_unix() + ttl.as_secs() as i64 };
    let v = serde_json::to_string(&lease).expect("leases encode");
    dns.set_zone_meta(zone, LEASE_META, &[v]).await
}

async fn zone(cx: &StepCtx) -> StepResult<Value> {
    let fqdn = fqdn(cx)?;
    let zone = abs(&fqdn);
    let me = owner(&cx.sovereign_id.to_string());
    match cx.backend.dns.zone_account(&zone).await? {
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
        None => cx.backend.dns.create_zone(&zone, &nameservers(), &me).await?,
    }
    set_lease(cx.backend.dns.as_ref(), &zone, &cx.job_id.to_string(), cx.backend.bounds.dns_lease)
        .await?;
    let ds = if dnssec_requested(cx)? { cx.backend.dns.secure_zone(&zone).await? } else { vec![] };
    Ok(json!({ "zone": zone, "nameservers": nameservers(), "owner": me,
               "lease_s": cx.backend.bounds.dns_lease.as_secs(), "ds": ds }))
}

async fn zone_undo(cx: &StepCtx) -> StepResult<()> {
    let zone = abs(&fqdn(cx)?);
    // Only ever this Sovereign's zone; already gone is done.
    match cx.backend.dns.zone_account(&zone).await? {
        Some(a) if a == owner(&cx.sovereign_id.to_string()) => {
            cx.backend.dns.delete_zone(&zone).await
        }
        _ => Ok(()),
    }
}

/// The Sovereign FQDN of a stored job request (a provision request, or the
/// `sovereign` block of add-region and destroy requests).
pub fn fqdn_of_request(request: &Value) -> Option<String> {
    if let Some(f) = request.pointer("/sovereign/fqdn").and_then(Value::as_str) {
        return Some(f.to_owned());
    }
    serde_json::from_value::<crate::request::ProvisionRequest>(request.clone())
        .ok()
        .map(|r| r.fqdn())
}

/// The lease a zone's metadata holds, if any (unreadable is none).
async fn lease_of(dns: &dyn crate::adapters::DnsApi, zone: &str) -> StepResult<Option<Lease>> {
    Ok(dns
        .zone_meta(zone, LEASE_META)
        .await?
        .first()
        .and_then(|v| serde_json::from_str::<Lease>(v).ok()))
}

/// Renews the lease of every live job (`jobs`: id and Sovereign FQDN)
/// holding a reservation not committed yet. Returns the zones renewed.
pub async fn renew_leases(
    dns: &dyn crate::adapters::DnsApi,
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
    dns: &dyn crate::adapters::DnsApi,
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

/// One round of the daemon's lease keeper over the store's `jobs`: renew
/// the leases of the live ones (pending, running or paused: a paused job
/// waits for its operator, it is not gone), then sweep the reservations
/// whose lease ran out more than `grace` ago. Returns (renewed, swept).
pub async fn keep_leases(
    dns: &dyn crate::adapters::DnsApi,
    jobs: &[cz_state::Job],
    pools: &[&str],
    ttl: Duration,
    grace: Duration,
) -> StepResult<(Vec<String>, Vec<String>)> {
    use cz_state::JobStatus;
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

async fn delegation(cx: &StepCtx) -> StepResult<Value> {
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
            Ok(json!({ "mode": "byo", "expected_nameservers": nameservers(), "ds": ds }))
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
) -> StepResult<Value> {
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
    cx.backend.dns.replace_rrsets(&abs(pool), &cut).await?;
    Ok(json!({ "mode": "pool", "parent": abs(pool), "nameservers": nameservers(), "ds": ds }))
}

/// byo-api: where the domain pointed before pre-flight spent anything is
/// kept on our zone (undo and destroy read it there), then the registrar
/// points it at us, unless it already does.
async fn delegate_at_registrar(
    cx: &StepCtx,
    api: &dyn RegistrarApi,
    fqdn: &str,
    ds: Vec<String>,
) -> StepResult<Value> {
    let pre: Value = cx.lookup("preflight/registrar")?;
    let before: Vec<String> = serde_json::from_value(pre["nameservers"].clone())
        .map_err(|e| StepError::internal(format!("preflight/registrar.nameservers: {e}")))?;
    let zone = abs(fqdn);
    if cx.backend.dns.zone_meta(&zone, PREVIOUS_NS_META).await?.is_empty() {
        let v = json!({ "registrar": api.registrar(), "nameservers": before }).to_string();
        cx.backend.dns.set_zone_meta(&zone, PREVIOUS_NS_META, &[v]).await?;
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
    Ok(json!({ "mode": "byo-api", "registrar": api.registrar(), "nameservers": want,
               "previous_nameservers": before, "ds": ds, "ds_published": ds_published }))
}

async fn delegation_undo(cx: &StepCtx) -> StepResult<()> {
    if let Some(pool) = parent(cx)? {
        cx.backend.dns.delete_rrsets(&abs(&pool), &cut_of(&fqdn(cx)?)).await?;
    } else {
        restore_registrar(cx).await?;
    }
    Ok(())
}

async fn ns_matches(cx: &StepCtx, fqdn: &str) -> StepResult<Option<Vec<String>>> {
    let mut got = cx.backend.dns.query(&abs(fqdn), "NS").await?;
    got.sort();
    let mut want = nameservers();
    want.sort();
    Ok((got == want).then_some(got))
}

async fn verify_delegation(cx: &StepCtx) -> StepResult<Value> {
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
        let bound = cx.backend.bounds.byo_delegation;
        await_resolvers(cx, &format!("the NS of {fqdn} to point here"), bound, &checks).await?;
        let mode = if byo_api.is_some() { "byo-api" } else { "byo-manual" };
        return Ok(json!({ "verified": true, "mode": mode, "nameservers": want }));
    }
    let ns = cx
        .wait_for(
            &format!("the NS delegation of {fqdn} to answer"),
            Duration::from_secs(300),
            || ns_matches(cx, &fqdn),
        )
        .await?;
    let signed = verify_chain(cx, &fqdn).await?;
    Ok(json!({ "verified": true, "nameservers": ns, "dnssec": signed }))
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
            let keys = cx.backend.dns.query(&abs(fqdn), "DNSKEY").await?;
            let parent_ds = norm(cx.backend.dns.query(&abs(fqdn), "DS").await?);
            Ok((!keys.is_empty() && parent_ds == ds).then_some(()))
        },
    )
    .await?;
    Ok(true)
}

#[derive(serde::Deserialize)]
struct RecordParams {
    locations: Vec<String>,
    regional: bool,
}

fn record_set(fqdn: &str, p: &RecordParams, lbs: &[(String, String)]) -> Vec<Rrset> {
    if p.regional {
        return lbs
            .iter()
            .map(|(loc, ip)| Rrset {
                name: abs(&format!("{loc}.{fqdn}")),
                rtype: "A".into(),
                ttl: RECORD_TTL,
                records: vec![ip.clone()],
            })
            .collect();
    }
    let ip = lbs[0].1.clone();
    RECORD_NAMES
        .iter()
        .map(|n| {
            let name = if *n == "@" { abs(fqdn) } else { abs(&format!("{n}.{fqdn}")) };
            Rrset { name, rtype: "A".into(), ttl: RECORD_TTL, records: vec![ip.clone()] }
        })
        .collect()
}

fn lb_ips(cx: &StepCtx, p: &RecordParams) -> StepResult<Vec<(String, String)>> {
    p.locations
        .iter()
        .map(|loc| {
            let out: Value = cx.lookup(&format!("infra/outputs-{loc}"))?;
            let ip =
                out.pointer("/load_balancer/ipv4").and_then(Value::as_str).ok_or_else(|| {
                    StepError::MissingOutput {
                        name: format!("infra/outputs-{loc}.load_balancer.ipv4"),
                    }
                })?;
            Ok((loc.clone(), ip.to_owned()))
        })
        .collect()
}

async fn records(cx: &StepCtx) -> StepResult<Value> {
    let fqdn = fqdn(cx)?;
    let p: RecordParams = serde_json::from_value(cx.params.clone())
        .map_err(|e| StepError::internal(e.to_string()))?;
    let set = record_set(&fqdn, &p, &lb_ips(cx, &p)?);
    cx.backend.dns.replace_rrsets(&abs(&fqdn), &set).await?;
    // Committed: the zone is the Sovereign's for good, no longer leased.
    if !p.regional {
        cx.backend.dns.set_zone_meta(&abs(&fqdn), LEASE_META, &[]).await?;
    }
    Ok(json!({ "rrsets": set }))
}

async fn records_undo(cx: &StepCtx) -> StepResult<()> {
    let fqdn = fqdn(cx)?;
    let p: RecordParams = serde_json::from_value(cx.params.clone())
        .map_err(|e| StepError::internal(e.to_string()))?;
    let Ok(lbs) = lb_ips(cx, &p) else { return Ok(()) };
    let names: Vec<(String, String)> =
        record_set(&fqdn, &p, &lbs).into_iter().map(|r| (r.name, r.rtype)).collect();
    cx.backend.dns.delete_rrsets(&abs(&fqdn), &names).await
}

async fn verify_records(cx: &StepCtx) -> StepResult<Value> {
    let out: Value = cx.lookup("dns-commit/records")?;
    let set: Vec<Rrset> = serde_json::from_value(out["rrsets"].clone())
        .map_err(|e| StepError::internal(e.to_string()))?;
    for rr in &set {
        // A wildcard is checked through a name it must cover.
        let probe = rr.name.replacen("*.", "catalyst-probe.", 1);
        cx.wait_for(
            &format!("{probe} A to answer {:?}", rr.records),
            Duration::from_secs(300),
            || async {
                let got = cx.backend.dns.query(&probe, &rr.rtype).await?;
                Ok((got == rr.records).then_some(()))
            },
        )
        .await?;
    }
    Ok(json!({ "verified": set.len() }))
}

/// Cloudflare, Google and Quad9: where most of the world resolves.
pub fn default_public_resolvers() -> Vec<std::net::SocketAddr> {
    ["1.1.1.1:53", "8.8.8.8:53", "9.9.9.9:53"]
        .iter()
        .map(|a| a.parse().expect("literal addresses"))
        .collect()
}

/// The propagation gate (F-44): the job may not declare the Sovereign
/// ready (nor anything request certificates for it) before the world sees
/// it. Pool mode: the parent's authoritative server delegates it. Then
/// every public resolver answers the Sovereign's NS set and every record
/// `dns-commit/records` wrote. Until then each
/// resolver's view is reported when it changes; a resolver that refuses,
/// times out or answers stale data is "not yet", and past the bound
/// (`Bounds::dns_propagation`, 30 min by default: parent NS TTLs are an
/// hour) the job pauses with what each one last said.
async fn propagation(cx: &StepCtx) -> StepResult<Value> {
    let fqdn = fqdn(cx)?;
    let bound = cx.backend.bounds.dns_propagation;
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
    let out: Value = cx.lookup("dns-commit/records")?;
    let set: Vec<Rrset> = serde_json::from_value(out["rrsets"].clone())
        .map_err(|e| StepError::internal(e.to_string()))?;
    let mut want_ns = nameservers();
    want_ns.sort();
    // The delegation, and every record committed (a wildcard through a
    // name it must cover; add-region's are the regional names).
    let mut checks: Vec<Check> = vec![(abs(&fqdn), "NS".into(), want_ns)];
    for rr in &set {
        let mut want = rr.records.clone();
        want.sort();
        checks.push((rr.name.replacen("*.", "catalyst-probe.", 1), rr.rtype.clone(), want));
    }
    await_resolvers(cx, &format!("{fqdn} to be visible"), bound, &checks).await?;
    let resolvers: Vec<String> =
        cx.backend.public_resolvers.iter().map(|r| r.to_string()).collect();
    Ok(json!({ "delegated": true, "nameservers": ns, "resolvers": resolvers }))
}

/// (name, type, expected answer, sorted).
type Check = (String, String, Vec<String>);

/// Asks every public resolver for `checks` until all of them answer as
/// expected, within `bound`. Each resolver's view (what is still wrong
/// through it) is a `dns` event when it changes; past the bound, the
/// timeout says what each one last answered. A resolver that refuses or
/// does not answer is "not yet", never an error of its own.
async fn await_resolvers(
    cx: &StepCtx,
    what: &str,
    bound: Duration,
    checks: &[Check],
) -> StepResult<()> {
    let resolvers = cx.backend.public_resolvers.clone();
    let seen = std::sync::Mutex::new(std::collections::BTreeMap::<String, String>::new());
    let res = cx
        .wait_for(
            &format!("{what} through {} public resolvers", resolvers.len()),
            bound,
            || async {
                let mut all = true;
                for r in &resolvers {
                    let mut view = Vec::new();
                    let mut ok = true;
                    for (name, t, want) in checks {
                        let got = match cx.backend.dns.query_via(*r, name, t).await {
                            Ok(mut v) => {
                                v.sort();
                                format!("[{}]", v.join(" "))
                            }
                            Err(StepError::Adapter { cause: Cause::NotFound, .. }) => {
                                "refused".to_owned()
                            }
                            Err(e) => format!("no answer ({})", e.class()),
                        };
                        if got != format!("[{}]", want.join(" ")) {
                            ok = false;
                            view.push(format!("{name} {t} {got}"));
                        }
                    }
                    all &= ok;
                    // What is still wrong through this resolver.
                    let view = if ok { "all records".to_owned() } else { view.join(", ") };
                    let key = r.to_string();
                    let changed = seen.lock().expect("lock").get(&key) != Some(&view);
                    if changed {
                        cx.event(
                            "dns",
                            json!({ "resolver": key, "propagated": ok, "message": format!("{key}: {view}") }),
                        )
                        .await?;
                        seen.lock().expect("lock").insert(key, view);
                    }
                }
                Ok(all.then_some(()))
            },
        )
        .await;
    match res {
        Err(StepError::Timeout { reason, bound_s }) => {
            let views: Vec<String> = seen
                .into_inner()
                .expect("lock")
                .into_iter()
                .map(|(r, v)| format!("{r}: {v}"))
                .collect();
            Err(StepError::Timeout {
                reason: format!("{reason} (last seen: {})", views.join(" | ")),
                bound_s,
            })
        }
        other => other,
    }
}
