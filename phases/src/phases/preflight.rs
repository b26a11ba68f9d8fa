//! Phase 0, `preflight`: everything checked before anything is spent.
//!
//! No step here has a side effect (their undo is a no-op): the request is
//! re-validated, the cloud token must prove **write** scope, project limits
//! must hold for the whole request, every location and server type must
//! exist and be offered there, the cost is previewed from the API's prices
//! and streamed before any object exists, every pinned artifact resolves, and
//! the DNS name and the object names must be free, and a `byo-api`
//! registrar token must be able to manage its domain.

use std::collections::BTreeMap;

use serde_json::{Value, json};

use super::{action, cloud_token, fqdn, no_undo, precondition, regions, release, slug};
use crate::adapters::{InfraModule, TokenScope};
use crate::plan::{PhaseBuilder, PhaseDef};
use crate::request::Region;
use crate::step::{Registry, StepCtx, StepResult};
use crate::{Cause, StepError, System};

pub const PHASE: &str = "preflight";

pub fn register(r: &mut Registry) {
    r.register("preflight.validate", action!(validate, no_undo));
    r.register("preflight.token-scope", action!(token_scope, no_undo));
    r.register("preflight.quotas", action!(quotas, no_undo));
    r.register("preflight.catalog", action!(catalog, no_undo));
    r.register("preflight.cost-preview", action!(cost_preview, no_undo));
    r.register("preflight.artifacts", action!(artifacts, no_undo));
    r.register("preflight.names-free", action!(names_free, no_undo));
    r.register("preflight.registrar", action!(registrar, no_undo));
}

/// `new_sovereign`: also check the DNS name (provision); add-region skips it.
pub fn phase(_regions: &[Region], new_sovereign: bool) -> PhaseDef {
    let mut b = PhaseBuilder::new(PHASE);
    // Reads first; the scope probe, the only write (a create that the API
    // refuses on its content), runs last: a request doomed by its SKU, quota
    // or names makes no write call at all.
    b.step("validate", "preflight.validate", &[], Value::Null);
    b.step("catalog", "preflight.catalog", &["validate"], Value::Null);
    b.step("quotas", "preflight.quotas", &["validate"], Value::Null);
    b.step("names-free", "preflight.names-free", &["validate"], json!({ "dns": new_sovereign }));
    b.step("cost-preview", "preflight.cost-preview", &["catalog"], Value::Null);
    b.step("artifacts", "preflight.artifacts", &["validate"], Value::Null);
    b.step("registrar", "preflight.registrar", &["validate"], json!({ "dns": new_sovereign }));
    b.step(
        "token-scope",
        "preflight.token-scope",
        &["catalog", "quotas", "names-free", "cost-preview", "artifacts", "registrar"],
        Value::Null,
    );
    b.build()
}

async fn validate(cx: &StepCtx) -> StepResult<Value> {
    // The API validated the full request before accepting it; this checks
    // the stored copy still decodes (a schema change between submit and a
    // resume after upgrade would show here, not mid-infra).
    let regions = regions(cx)?;
    if regions.is_empty() {
        return Err(StepError::InvalidInput {
            path: "regions".into(),
            message: "no region".into(),
        });
    }
    Ok(json!({ "fqdn": fqdn(cx)?, "regions": regions.len() }))
}

async fn token_scope(cx: &StepCtx) -> StepResult<Value> {
    let token = cloud_token(cx).await?;
    match cx.backend.cloud.token_scope(&token).await? {
        TokenScope::ReadWrite => Ok(json!({ "scope": "read-write" })),
        TokenScope::Read => Err(StepError::adapter(
            System::Cloud,
            "token_scope",
            Cause::Unauthorized,
            "the cloud token is read-only; provisioning needs a read & write token",
        )),
    }
}

fn servers_in(r: &Region) -> u32 {
    r.control_plane.count + r.workers.count
}

async fn quotas(cx: &StepCtx) -> StepResult<Value> {
    let token = cloud_token(cx).await?;
    let regions = regions(cx)?;
    let limits = cx.backend.cloud.limits(&token).await?;
    let servers: u32 = regions.iter().map(servers_in).sum();
    let groups: u32 = regions.iter().map(|r| 1 + r.workers.count.div_ceil(10)).sum();
    let n = regions.len() as u32;
    let mut short = Vec::new();
    for (what, need, l) in [
        ("servers", servers, limits.servers),
        ("load balancers", n, limits.load_balancers),
        ("networks", n, limits.networks),
        ("placement groups", groups, limits.placement_groups),
    ] {
        if l.used + need > l.max {
            short.push(format!("{what}: need {need}, {} of {} in use", l.used, l.max));
        }
    }
    for r in &regions {
        if servers_in(r) > 100 {
            short.push(format!(
                "region {}: {} servers exceed 100 per network",
                r.location,
                servers_in(r)
            ));
        }
    }
    if !short.is_empty() {
        return Err(StepError::adapter(
            System::Cloud,
            "limits",
            Cause::QuotaExceeded,
            short.join("; "),
        ));
    }
    Ok(json!({ "servers": servers, "placement_groups": groups, "limits": limits }))
}

async fn catalog(cx: &StepCtx) -> StepResult<Value> {
    let token = cloud_token(cx).await?;
    let regions = regions(cx)?;
    let locations = cx.backend.cloud.locations(&token).await?;
    let mut prices = BTreeMap::new();
    let mut missing = Vec::new();
    for (i, r) in regions.iter().enumerate() {
        if !locations.contains(&r.location) {
            missing.push(format!("regions[{i}].location: `{}` is not available", r.location));
            continue;
        }
        for (what, sku) in [("control_plane", &r.control_plane.sku), ("workers", &r.workers.sku)] {
            match cx.backend.cloud.server_type(&token, sku).await? {
                Some(t) if t.deprecated => {
                    missing.push(format!("regions[{i}].{what}.sku: `{sku}` is deprecated"))
                }
                Some(t) => match t.prices.get(&r.location) {
                    Some(p) => {
                        prices.insert(format!("{}/{sku}", r.location), *p);
                    }
                    None => missing.push(format!(
                        "regions[{i}].{what}.sku: `{sku}` is not offered in {}",
                        r.location
                    )),
                },
                None => {
                    missing.push(format!("regions[{i}].{what}.sku: unknown server type `{sku}`"))
                }
            }
        }
        match cx.backend.cloud.load_balancer_type(&token, release::load_balancer_type()).await? {
            Some(t) => match t.prices.get(&r.location) {
                Some(p) => {
                    prices.insert(format!("{}/{}", r.location, release::load_balancer_type()), *p);
                }
                None => missing.push(format!(
                    "load balancer type {} not offered in {}",
                    release::load_balancer_type(),
                    r.location
                )),
            },
            None => missing.push(format!(
                "load balancer type {} does not exist",
                release::load_balancer_type()
            )),
        }
    }
    if !missing.is_empty() {
        return Err(StepError::InvalidInput {
            path: "regions".into(),
            message: missing.join("; "),
        });
    }
    Ok(json!({ "prices": prices }))
}

async fn cost_preview(cx: &StepCtx) -> StepResult<Value> {
    let prices: BTreeMap<String, (f64, f64)> =
        serde_json::from_value(cx.lookup::<Value>("preflight/catalog")?["prices"].clone())
            .map_err(|e| StepError::internal(e.to_string()))?;
    let regions = regions(cx)?;
    let mut per_region = Vec::new();
    let (mut hourly, mut monthly) = (0.0, 0.0);
    for r in &regions {
        let p =
            |sku: &str| prices.get(&format!("{}/{sku}", r.location)).copied().unwrap_or((0.0, 0.0));
        let cp = p(&r.control_plane.sku);
        let w = p(&r.workers.sku);
        let lb = p(release::load_balancer_type());
        let h = cp.0 * f64::from(r.control_plane.count) + w.0 * f64::from(r.workers.count) + lb.0;
        let m = cp.1 * f64::from(r.control_plane.count) + w.1 * f64::from(r.workers.count) + lb.1;
        hourly += h;
        monthly += m;
        per_region.push(json!({
            "location": r.location,
            "control_plane": { "sku": r.control_plane.sku, "count": r.control_plane.count, "monthly_eur": cp.1 },
            "workers": { "sku": r.workers.sku, "count": r.workers.count, "monthly_eur": w.1 },
            "load_balancer": { "type": release::load_balancer_type(), "monthly_eur": lb.1 },
            "hourly_eur": round2(h), "monthly_eur": round2(m),
        }));
    }
    let out = json!({ "currency": "EUR", "hourly": round2(hourly), "monthly": round2(monthly), "regions": per_region });
    cx.event("cost", out.clone()).await?;
    Ok(out)
}

fn round2(x: f64) -> f64 {
    (x * 100.0).round() / 100.0
}

async fn artifacts(cx: &StepCtx) -> StepResult<Value> {
    let components: Vec<String> =
        cx.request_field::<Option<Vec<String>>>("/components")?.unwrap_or_default();
    let mut pins = BTreeMap::new();
    for c in &components {
        let p = release::pin(c).ok_or_else(|| StepError::InvalidInput {
            path: "components".into(),
            message: format!("component `{c}` has no pin in the release manifest"),
        })?;
        pins.insert(c.clone(), p.version.clone());
    }
    // The tofu CLI and the module this job will run (F-02: a missing binary
    // or module must stop the job here, before anything is spent).
    let tofu = cx.backend.tofu.version().await?;
    let module = match &cx.backend.infra {
        InfraModule::Manifest => json!({ "kind": "manifest" }),
        InfraModule::Hcloud { templates, .. } | InfraModule::Offline { templates, .. } => {
            let digest = super::render::templates_digest(templates).map_err(|e| {
                precondition(
                    format!("the cloud templates cannot be read: {e}"),
                    "Point hetzner.templates_dir at the release's cloud-templates directory.",
                )
            })?;
            json!({ "templates": templates, "sha256": digest })
        }
    };
    // TODO(bootstrap-kit issue): resolve every chart ref, image digest and
    // binary checksum against the artifact directory / registry (F-21, F-32).
    Ok(json!({
        "tofu": tofu,
        "module": module,
        "k3s": release::k3s_version(),
        "cilium": release::cilium_chart_version(),
        "flux": release::flux_version(),
        "components": pins,
    }))
}

async fn names_free(cx: &StepCtx) -> StepResult<Value> {
    let token = cloud_token(cx).await?;
    let fqdn = fqdn(cx)?;
    if cx.param::<bool>("dns")? && cx.backend.dns.zone_exists(&fqdn).await? {
        return Err(precondition(
            format!("the DNS zone {fqdn} already exists"),
            "Another Sovereign or a leftover run holds this name: destroy it, or choose another name.",
        ));
    }
    let mut wanted = std::collections::BTreeSet::new();
    for r in regions(cx)? {
        wanted.extend(super::infra::object_names(&slug(&fqdn), &r));
    }
    // One listing of the project (a request per kind, paginated) rather than
    // a lookup per name and kind: 11 names would be 88 requests.
    let mut taken = Vec::new();
    for o in cx.backend.cloud.list(&token, "").await? {
        // Ours from an earlier attempt of this very job is fine.
        if wanted.contains(&o.name)
            && o.labels.get(super::LABEL_JOB) != Some(&cx.job_id.to_string())
        {
            taken.push(format!("{} {} (id {})", o.kind, o.name, o.id));
        }
    }
    if !taken.is_empty() {
        return Err(StepError::adapter(
            System::Cloud,
            "find_by_name",
            Cause::Conflict,
            format!("names already used in the project: {}", taken.join(", ")),
        ));
    }
    Ok(json!({ "fqdn": fqdn }))
}

/// `byo-api`: the registrar token is accepted and can manage the domain
/// (a Cloudflare zone apex is refused here, with the way out), and what
/// the domain points at now: `dns-reserve/delegation` records it, and its
/// undo and destroy put it back. Other modes: nothing to check.
async fn registrar(cx: &StepCtx) -> StepResult<Value> {
    if !cx.param::<bool>("dns")? {
        return Ok(json!({ "skipped": "not a new Sovereign" }));
    }
    let Some((api, fqdn)) = super::dns::registrar_of(cx).await? else {
        return Ok(json!({ "skipped": "not a byo-api domain" }));
    };
    api.validate_token(&fqdn).await?;
    let nameservers = api.get_nameservers(&fqdn).await?;
    cx.log(format!(
        "{}: the token manages {fqdn}, delegated to {} now",
        api.registrar().title(),
        if nameservers.is_empty() { "nothing".to_owned() } else { nameservers.join(", ") }
    ))
    .await?;
    Ok(json!({ "registrar": api.registrar(), "domain": fqdn, "nameservers": nameservers }))
}
