//! The Sovereign's DNS: its zone, the delegation to it, its records.
//!
//! Two phases and the daemon's lease keeper:
//! - [`reserve`] (`dns-reserve`, phase 1): the zone, made with its owner,
//!   and leased; the delegation to it; the check that the delegation
//!   answers;
//! - [`commit`] (`dns-commit`, phase 7): the record set, checked by DNS
//!   queries, then the propagation gate through public resolvers;
//! - [`lease`]: the reservation's lease, renewed by the daemon while the
//!   job lives, and the sweep of reservations whose job is gone.
//!
//! **Bring-your-own domains.** `byo-manual`: the customer changes the NS at
//! their registrar; `dns-reserve/verify-delegation` waits, bounded,
//! streaming what the public resolvers see. `byo-api`:
//! `preflight/registrar` proved the token can manage the domain and noted
//! its nameservers; `dns-reserve/delegation` records them on the zone
//! ([`PREVIOUS_NS_META`]) and has the registrar point the domain at ours;
//! its undo, and destroy, put the recorded ones back, but only while the
//! domain still points at us (a change the customer made since is theirs
//! to keep).
//!
//! **DNSSEC on request** (`dnssec: true`): the zone step signs the zone and
//! records its DS; pool mode writes the DS with the NS delegation in one
//! PATCH. Every removal of a delegation (undo, sweep, destroy) removes NS
//! and DS together ([`cut_of`]).

pub mod commit;
pub mod lease;
pub mod reserve;

use std::sync::Arc;
use std::time::Duration;

use cz_adapters::absolute_name as abs;
use cz_adapters::registrar::{RegistrarApi, bare, sorted};
use cz_engine::{Cause, StepError, StepResult};
use serde::{Deserialize, Serialize};
use serde_json::json;

use crate::StepCtx;
use crate::common::{fqdn, job_request};
use crate::request::Registrar;

/// The nameservers of Sovereign zones.
pub const NAMESERVERS: &[&str] = &["ns1.openova.io.", "ns2.openova.io.", "ns3.openova.io."];
/// Names `dns-commit` points at the load balancer.
pub const RECORD_NAMES: &[&str] = &["@", "*", "console", "api", "gitea", "harbor"];
pub const RECORD_TTL: u32 = 300;
/// Zone metadata holding where a `byo-api` domain was delegated before us.
pub const PREVIOUS_NS_META: &str = "X-CATALYST-PREVIOUS-NS";

fn nameservers() -> Vec<String> {
    NAMESERVERS.iter().map(|s| s.to_string()).collect()
}

/// Our nameservers as registrars take them.
fn ours_bare() -> Vec<String> {
    NAMESERVERS.iter().map(|n| bare(n)).collect()
}

/// The parent zone that delegates to the Sovereign (pool mode only).
fn parent(cx: &StepCtx) -> StepResult<Option<String>> {
    Ok(job_request(cx)?.pool_domain())
}

/// What a delegation of `name` consists of in the parent zone, to remove
/// it: NS, and DS when the child is signed (absent is fine).
pub fn cut_of(name: &str) -> Vec<(String, String)> {
    ["NS", "DS"].iter().map(|t| (abs(name), t.to_string())).collect()
}

/// `byo-api`: the registrar of the Sovereign's domain, connected with its
/// token, and the domain. None for the other modes.
pub(crate) async fn registrar_of(
    cx: &StepCtx,
) -> StepResult<Option<(Arc<dyn RegistrarApi>, String)>> {
    let Some(registrar) = job_request(cx)?.registrar() else { return Ok(None) };
    let token = cx.secret("registrar_token").await?;
    Ok(Some((cx.env.registrars.connect(registrar, &token)?, fqdn(cx)?)))
}

/// What [`PREVIOUS_NS_META`] holds.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
struct PreviousNs {
    registrar: Registrar,
    nameservers: Vec<String>,
}

/// What [`restore_registrar`] did.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Restored {
    pub restored: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub why: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub nameservers: Option<Vec<String>>,
}

impl Restored {
    fn not(why: &str) -> Restored {
        Restored { restored: false, why: Some(why.into()), nameservers: None }
    }
}

/// Puts a `byo-api` domain's delegation back as [`PREVIOUS_NS_META`]
/// recorded it, if the zone recorded one and the domain still points at
/// us. `None`: not a `byo-api` domain.
pub(crate) async fn restore_registrar(cx: &StepCtx) -> StepResult<Option<Restored>> {
    let Some((api, fqdn)) = registrar_of(cx).await? else { return Ok(None) };
    let zone = abs(&fqdn);
    if cx.env.dns.zone_account(&zone).await?.is_none() {
        return Ok(Some(Restored::not("no zone: nothing was recorded")));
    }
    let recorded = cx.env.dns.zone_meta(&zone, PREVIOUS_NS_META).await?;
    let Some(before) = recorded.first().and_then(|v| serde_json::from_str::<PreviousNs>(v).ok())
    else {
        // The delegation step never got as far as changing anything.
        return Ok(Some(Restored::not("the registrar was not changed")));
    };
    let before = before.nameservers;
    let now = sorted(&api.get_nameservers(&fqdn).await?);
    if now != sorted(&ours_bare()) {
        cx.log(format!(
            "{}: {fqdn} points at {} now, not at us: left as it is",
            api.registrar().title(),
            now.join(", ")
        ))
        .await?;
        return Ok(Some(Restored {
            restored: false,
            why: Some("changed since".into()),
            nameservers: Some(now),
        }));
    }
    // Our DS first: a DS left without our keys behind it would make
    // validating resolvers reject the domain.
    api.set_ds(&fqdn, &[]).await?;
    api.set_nameservers(&fqdn, &before).await?;
    let to = if before.is_empty() {
        "nothing (NS records removed)".to_owned()
    } else {
        before.join(", ")
    };
    let message = format!("{}: {fqdn} delegated back to {to}", api.registrar().title());
    cx.event("dns", json!({ "registrar": api.registrar(), "message": message })).await?;
    Ok(Some(Restored { restored: true, why: None, nameservers: Some(before) }))
}

/// Whether the authoritative server answers our NS set for `fqdn`: the set
/// (sorted) when it does.
async fn ns_matches(cx: &StepCtx, fqdn: &str) -> StepResult<Option<Vec<String>>> {
    let mut got = cx.env.dns.query(&abs(fqdn), "NS").await?;
    got.sort();
    let mut want = nameservers();
    want.sort();
    Ok((got == want).then_some(got))
}

/// (name, type, expected answer, sorted).
pub(crate) type Check = (String, String, Vec<String>);

/// Asks every public resolver for `checks` until all of them answer as
/// expected, within `bound`. Each resolver's view (what is still wrong
/// through it) is a `dns` event when it changes; past the bound, the
/// timeout says what each one last answered. A resolver that refuses or
/// does not answer is "not yet", never an error of its own.
pub(crate) async fn await_resolvers(
    cx: &StepCtx,
    what: &str,
    bound: Duration,
    checks: &[Check],
) -> StepResult<()> {
    let resolvers = cx.env.public_resolvers.clone();
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
                        let got = match cx.env.dns.query_via(*r, name, t).await {
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
