//! Phase 0, `preflight`: everything checked before anything is spent.
//!
//! No step here has a side effect, so none has an undo:
//! 1. `validate`: the stored request still decodes (a schema change
//!    between submit and a resume after an upgrade shows here, not
//!    mid-infra);
//! 2. `catalog`: every location exists and takes servers, every server type
//!    exists, is not deprecated and is offered there; the prices;
//! 3. `quotas`: the project's limits hold for the whole request;
//! 4. `names-free`: the DNS name (a new Sovereign only) and every object
//!    name the job will create are free;
//! 5. `cost-preview`: the cost, from the API's prices, streamed before any
//!    object exists;
//! 6. `artifacts`: the tofu CLI and module this job will run, and every
//!    pinned component of the release manifest;
//! 7. `registrar`: a `byo-api` registrar token can manage its domain, and
//!    where the domain points now (what `dns-reserve` records to give back);
//! 8. `token-scope`: the cloud token proves **write** scope. It runs last:
//!    it is the only write (a create the API refuses on its content), so a
//!    request doomed by its SKU, quota or names makes no write call at all.

use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;

use cz_adapters::cloud::catalogue::{PLACEMENT_GROUPS_PER_PROJECT, SERVERS_PER_NETWORK};
use cz_adapters::labels::LABEL_JOB;
use cz_adapters::{InfraModule, ProjectLimits, TokenScope};
use cz_engine::{ActionId, Cause, PhaseBuilder, PhaseDef, StepError, StepResult, System};
use cz_engine::{action, no_undo};
use serde::{Deserialize, Serialize};

use crate::common::{fqdn, job_token, precondition, regions, slug};
use crate::infra::layout::RegionLayout;
use crate::request::{Region, Registrar};
use crate::{Registry, StepCtx, release};

pub const PHASE: &str = "preflight";

// --- params and outputs --------------------------------------------------

/// Params of `names-free` and `registrar`: whether the job makes a new
/// Sovereign (provision), so its DNS name must be free and its domain
/// delegated; add-region has both already.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct NewSovereign {
    pub dns: bool,
}

/// `validate`'s output.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Validated {
    pub fqdn: String,
    pub regions: usize,
}

/// `token-scope`'s output.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Scope {
    pub scope: String,
}

/// `quotas`' output: what the job needs, and the limits it was checked
/// against.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Quotas {
    pub servers: u32,
    pub placement_groups: u32,
    pub limits: ProjectLimits,
}

/// `catalog`'s output: `<location>/<type>` → (hourly, monthly) EUR.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Catalog {
    pub prices: BTreeMap<String, (f64, f64)>,
}

/// `cost-preview`'s output, also streamed as a `cost` event.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct CostPreview {
    pub currency: String,
    pub hourly: f64,
    pub monthly: f64,
    pub regions: Vec<RegionCost>,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct RegionCost {
    pub location: String,
    pub control_plane: GroupCost,
    pub workers: GroupCost,
    pub load_balancer: LoadBalancerCost,
    pub hourly_eur: f64,
    pub monthly_eur: f64,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct GroupCost {
    pub sku: String,
    pub count: u32,
    pub monthly_eur: f64,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct LoadBalancerCost {
    #[serde(rename = "type")]
    pub kind: String,
    pub monthly_eur: f64,
}

/// `artifacts`' output: what this job will run, pinned.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Artifacts {
    /// The tofu CLI's name and version.
    pub tofu: String,
    pub module: Module,
    pub k3s: String,
    pub cilium: String,
    pub flux: String,
    /// component → pinned chart version.
    pub components: BTreeMap<String, String>,
}

/// The tofu module a job renders.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum Module {
    /// The cloud templates, with the SHA-256 of their files.
    Templates { templates: PathBuf, sha256: String },
    /// The sim backend's resource manifest (`kind: manifest`).
    Manifest { kind: String },
}

/// `names-free`'s output.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct NamesFree {
    pub fqdn: String,
}

/// `registrar`'s output: a `byo-api` domain's registrar and where the
/// domain was delegated before us, or why there was nothing to check.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct RegistrarSeen {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub skipped: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub registrar: Option<Registrar>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub domain: Option<String>,
    #[serde(default)]
    pub nameservers: Vec<String>,
}

// --- actions and the DAG -------------------------------------------------

const VALIDATE: ActionId<()> = ActionId::new("preflight.validate");
/// Also the first step of a `destroy` job.
pub const TOKEN_SCOPE: ActionId<()> = ActionId::new("preflight.token-scope");
const QUOTAS: ActionId<()> = ActionId::new("preflight.quotas");
const CATALOG: ActionId<()> = ActionId::new("preflight.catalog");
const COST_PREVIEW: ActionId<()> = ActionId::new("preflight.cost-preview");
const ARTIFACTS: ActionId<()> = ActionId::new("preflight.artifacts");
const NAMES_FREE: ActionId<NewSovereign> = ActionId::new("preflight.names-free");
const REGISTRAR: ActionId<NewSovereign> = ActionId::new("preflight.registrar");

pub fn register(r: &mut Registry) {
    r.register(VALIDATE, action!(validate, no_undo));
    r.register(TOKEN_SCOPE, action!(token_scope, no_undo));
    r.register(QUOTAS, action!(quotas, no_undo));
    r.register(CATALOG, action!(catalog, no_undo));
    r.register(COST_PREVIEW, action!(cost_preview, no_undo));
    r.register(ARTIFACTS, action!(artifacts, no_undo));
    r.register(NAMES_FREE, action!(names_free, no_undo));
    r.register(REGISTRAR, action!(registrar, no_undo));
}

/// `new_sovereign`: also check the DNS name and the registrar (provision);
/// add-region skips them.
pub fn phase(_regions: &[Region], new_sovereign: bool) -> PhaseDef {
    let mut b = PhaseBuilder::new(PHASE);
    let dns = NewSovereign { dns: new_sovereign };
    b.step("validate", VALIDATE, &[], ());
    b.step("catalog", CATALOG, &["validate"], ());
    b.step("quotas", QUOTAS, &["validate"], ());
    b.step("names-free", NAMES_FREE, &["validate"], dns.clone());
    b.step("cost-preview", COST_PREVIEW, &["catalog"], ());
    b.step("artifacts", ARTIFACTS, &["validate"], ());
    b.step("registrar", REGISTRAR, &["validate"], dns);
    b.step(
        "token-scope",
        TOKEN_SCOPE,
        &["catalog", "quotas", "names-free", "cost-preview", "artifacts", "registrar"],
        (),
    );
    b.build()
}

// --- steps ---------------------------------------------------------------

async fn validate(cx: &StepCtx) -> StepResult<Validated> {
    let regions = regions(cx)?;
    if regions.is_empty() {
        return Err(StepError::InvalidInput {
            path: "regions".into(),
            message: "no region".into(),
        });
    }
    Ok(Validated { fqdn: fqdn(cx)?, regions: regions.len() })
}

async fn catalog(cx: &StepCtx) -> StepResult<Catalog> {
    let token = job_token(cx).await?;
    let regions = regions(cx)?;
    let cloud = &cx.env.cloud;
    let locations = cloud.locations(&token).await?;
    let mut prices = BTreeMap::new();
    let mut missing = Vec::new();
    for (i, r) in regions.iter().enumerate() {
        if !locations.contains(&r.location) {
            missing.push(format!("regions[{i}].location: `{}` is not available", r.location));
            continue;
        }
        for (what, sku) in [("control_plane", &r.control_plane.sku), ("workers", &r.workers.sku)] {
            match cloud.server_type(&token, sku).await? {
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
        let lb_type = r.load_balancer_type();
        match cloud.load_balancer_type(&token, lb_type).await? {
            Some(t) => match t.prices.get(&r.location) {
                Some(_) if RegionLayout::of(r).load_balancer_targets > t.max_targets => missing
                    .push(format!(
                        "regions[{i}].load_balancer.type: {lb_type} takes at most {} targets, \
                         the region has {}",
                        t.max_targets,
                        RegionLayout::of(r).load_balancer_targets
                    )),
                Some(p) => {
                    prices.insert(format!("{}/{lb_type}", r.location), *p);
                }
                None => missing
                    .push(format!("load balancer type {lb_type} not offered in {}", r.location)),
            },
            None => missing.push(format!("load balancer type {lb_type} does not exist")),
        }
    }
    if !missing.is_empty() {
        return Err(StepError::InvalidInput {
            path: "regions".into(),
            message: missing.join("; "),
        });
    }
    Ok(Catalog { prices })
}

async fn quotas(cx: &StepCtx) -> StepResult<Quotas> {
    let token = job_token(cx).await?;
    let regions = regions(cx)?;
    let limits = cx.env.cloud.limits(&token).await?;
    let layouts: Vec<RegionLayout> = regions.iter().map(RegionLayout::of).collect();
    let servers: u32 = layouts.iter().map(RegionLayout::servers).sum();
    let groups: u32 = layouts.iter().map(|l| l.placement_groups).sum();
    let networks = layouts.iter().filter(|l| l.private_network).count() as u32;
    let n = regions.len() as u32;
    let mut short = Vec::new();
    // The project's placement groups are capped at 50 whatever its quota.
    let mut group_limit = limits.placement_groups;
    group_limit.max = group_limit.max.min(PLACEMENT_GROUPS_PER_PROJECT);
    for (what, field, need, l) in [
        ("servers", "regions[*].workers.count", servers, limits.servers),
        ("load balancers", "regions", n, limits.load_balancers),
        ("networks", "regions[*].network", networks, limits.networks),
        ("placement groups", "regions[*].workers.count", groups, group_limit),
    ] {
        if l.used + need > l.max {
            short.push(format!("{field}: {what}: need {need}, {} of {} in use", l.used, l.max));
        }
    }
    for (i, (r, l)) in regions.iter().zip(&layouts).enumerate() {
        if l.private_network && l.servers() > SERVERS_PER_NETWORK {
            short.push(format!(
                "regions[{i}].network: region {}: {} servers exceed {SERVERS_PER_NETWORK} per \
                 private network",
                r.location,
                l.servers()
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
    Ok(Quotas { servers, placement_groups: groups, limits })
}

async fn names_free(cx: &StepCtx) -> StepResult<NamesFree> {
    let token = job_token(cx).await?;
    let fqdn = fqdn(cx)?;
    if cx.params::<NewSovereign>()?.dns && cx.env.dns.zone_exists(&fqdn).await? {
        return Err(precondition(
            format!("the DNS zone {fqdn} already exists"),
            "Another Sovereign or a leftover run holds this name: destroy it, or choose another name.",
        ));
    }
    let mut wanted = BTreeSet::new();
    for r in regions(cx)? {
        wanted.extend(crate::infra::object_names(&slug(&fqdn), &r));
    }
    // One listing of the project (a request per kind, paginated) rather than
    // a lookup per name and kind: 11 names would be 88 requests.
    let mut taken = Vec::new();
    for o in cx.env.cloud.list(&token, "").await? {
        // Ours from an earlier attempt of this very job is fine.
        if wanted.contains(&o.name) && o.labels.get(LABEL_JOB) != Some(&cx.job_id.to_string()) {
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
    Ok(NamesFree { fqdn })
}

async fn cost_preview(cx: &StepCtx) -> StepResult<CostPreview> {
    let Catalog { prices } = cx.lookup("preflight/catalog")?;
    let mut per_region = Vec::new();
    let (mut hourly, mut monthly) = (0.0, 0.0);
    for r in regions(cx)? {
        let lb_type = r.load_balancer_type();
        let p =
            |sku: &str| prices.get(&format!("{}/{sku}", r.location)).copied().unwrap_or((0.0, 0.0));
        let cp = p(&r.control_plane.sku);
        let w = p(&r.workers.sku);
        let lb = p(lb_type);
        let h = cp.0 * f64::from(r.control_plane.count) + w.0 * f64::from(r.workers.count) + lb.0;
        let m = cp.1 * f64::from(r.control_plane.count) + w.1 * f64::from(r.workers.count) + lb.1;
        hourly += h;
        monthly += m;
        let group = |g: &crate::request::NodeGroup, monthly_eur| GroupCost {
            sku: g.sku.clone(),
            count: g.count,
            monthly_eur,
        };
        per_region.push(RegionCost {
            control_plane: group(&r.control_plane, cp.1),
            workers: group(&r.workers, w.1),
            load_balancer: LoadBalancerCost { kind: lb_type.to_owned(), monthly_eur: lb.1 },
            hourly_eur: round2(h),
            monthly_eur: round2(m),
            location: r.location,
        });
    }
    let out = CostPreview {
        currency: "EUR".into(),
        hourly: round2(hourly),
        monthly: round2(monthly),
        regions: per_region,
    };
    let event = serde_json::to_value(&out).map_err(|e| StepError::internal(e.to_string()))?;
    cx.event("cost", event).await?;
    Ok(out)
}

fn round2(x: f64) -> f64 {
    (x * 100.0).round() / 100.0
}

async fn artifacts(cx: &StepCtx) -> StepResult<Artifacts> {
    let request = crate::common::job_request(cx)?;
    let mut components = BTreeMap::new();
    for c in request.components() {
        let p = release::pin(c).ok_or_else(|| StepError::InvalidInput {
            path: "components".into(),
            message: format!("component `{c}` has no pin in the release manifest"),
        })?;
        components.insert(c.clone(), p.version.clone());
    }
    // The tofu CLI and the module this job will run: a missing binary or
    // module must stop the job here, before anything is spent.
    let tofu = cx.env.tofu.version().await?;
    let module = match &cx.env.infra {
        InfraModule::Manifest => Module::Manifest { kind: "manifest".into() },
        InfraModule::Hcloud { templates, .. } | InfraModule::Offline { templates, .. } => {
            let sha256 = crate::infra::render::templates_digest(templates).map_err(|e| {
                precondition(
                    format!("the cloud templates cannot be read: {e}"),
                    "Point hetzner.templates_dir at the release's cloud-templates directory.",
                )
            })?;
            Module::Templates { templates: templates.clone(), sha256 }
        }
    };
    // TODO-design: resolve every chart reference, image digest and binary
    // checksum against the artifact directory or registry here; today the
    // versions are checked against the release manifest only.
    Ok(Artifacts {
        tofu,
        module,
        k3s: release::k3s_version().to_owned(),
        cilium: release::cilium_chart_version().to_owned(),
        flux: release::flux_version().to_owned(),
        components,
    })
}

/// `byo-api`: the registrar token is accepted and can manage the domain
/// (a Cloudflare zone apex is refused here, with the way out), and what
/// the domain points at now: `dns-reserve/delegation` records it, and its
/// undo and destroy put it back. Other modes: nothing to check.
async fn registrar(cx: &StepCtx) -> StepResult<RegistrarSeen> {
    if !cx.params::<NewSovereign>()?.dns {
        return Ok(RegistrarSeen {
            skipped: Some("not a new Sovereign".into()),
            ..Default::default()
        });
    }
    let Some((api, fqdn)) = crate::dns::registrar_of(cx).await? else {
        return Ok(RegistrarSeen {
            skipped: Some("not a byo-api domain".into()),
            ..Default::default()
        });
    };
    api.validate_token(&fqdn).await?;
    let nameservers = api.get_nameservers(&fqdn).await?;
    cx.log(format!(
        "{}: the token manages {fqdn}, delegated to {} now",
        api.registrar().title(),
        if nameservers.is_empty() { "nothing".to_owned() } else { nameservers.join(", ") }
    ))
    .await?;
    Ok(RegistrarSeen {
        skipped: None,
        registrar: Some(api.registrar()),
        domain: Some(fqdn),
        nameservers,
    })
}

async fn token_scope(cx: &StepCtx) -> StepResult<Scope> {
    let token = job_token(cx).await?;
    match cx.env.cloud.token_scope(&token).await? {
        TokenScope::ReadWrite => Ok(Scope { scope: "read-write".into() }),
        TokenScope::Read => Err(StepError::adapter(
            System::Cloud,
            "token_scope",
            Cause::Unauthorized,
            "the cloud token is read-only; provisioning needs a read & write token",
        )),
    }
}

#[cfg(test)]
mod tests {
    use crate::testing::{phase_tests, sample_request};

    phase_tests!(super::PHASE, sample_request("pre", 1, 1));
}
