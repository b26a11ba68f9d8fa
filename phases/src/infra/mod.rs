//! Phase 2, `infra`: cloud objects by OpenTofu, one workspace per region.
//!
//! 1. `provisioner-key` (undo: forget it, provision only): the Sovereign's
//!    SSH key pair, made once, held age-encrypted in the store;
//!
//! then per region:
//! 2. `render-<loc>` (undo: remove the workspace once its state is empty):
//!    the desired resources and the tofu module into the region's
//!    workspace;
//! 3. `init-<loc>`, 4. `plan-<loc>` (the plan's summary is streamed);
//! 5. `apply-<loc>` (undo: `tofu destroy`, then a sweep by label): every
//!    tofu event streamed into the job's stream. It *releases*
//!    `server-<server>` for each server and `load-balancer-<loc>` as tofu
//!    reports each created (`apply_complete` with its id; one `GET` of the
//!    object gives its addresses), so the `cluster` phase, which overlaps
//!    this one, starts that node's bring-up while the others are still being
//!    created (a pipelined bring-up). When the apply ends, whatever it has not
//!    released yet (objects adopted after a crash, objects an earlier run
//!    made, the offline module's objects, a `GET` that failed) is released
//!    from tofu's outputs, so every run ends with all of them released;
//! 6. `outputs-<loc>`: ids and IPs, persisted for the later phases.
//!
//! Workspaces and state live under the data directory, never a temp dir:
//! a crash mid-apply must not lose the state.
//!
//! What `render` writes depends on the backend's [`InfraModule`]: always the
//! JSON manifest of [`desired`] (names, labels, addresses: the pre-flight
//! collision check and the adoption below read it), plus
//! - `hcloud` (production): `cloud-templates/hetzner/` rendered for the
//!   region ([`render::render_hetzner`]), applied by the real tofu with the
//!   hcloud provider;
//! - `offline`: `cloud-templates/hetzner-offline/` ([`render::render_offline`]),
//!   built-in `terraform_data` whose provisioners call the Hetzner API through
//!   `catalyst-zero hcloud-shim`, for machines that cannot download the
//!   provider;
//! - `manifest` (the sim backend): nothing else; the sim tofu applies the
//!   manifest to the sim cloud.
//!
//! Crash safety: tofu writes its state when it stops and periodically, not
//! after every resource, so a process killed between "the cloud created it"
//! and "state written" leaves an object tofu does not know, and a plain
//! re-apply would then fail on the name (or, for nameless objects, duplicate
//! it). So `apply` first lists the region's objects by label and
//! `tofu import`s every one that is missing from state (the offline module
//! adopts by name in its own create instead): the crash is resolved by
//! adoption, not duplication. The reverse — a `terraform_data` of the
//! offline module in the state while its object is not in the cloud (tofu
//! stopped during the create provisioner) — is replaced (`-replace`), as
//! the provider's refresh would. A tofu left running by a killed daemon is
//! stopped first (see `cz_adapters::tofu::cli`).

pub mod layout;
pub mod render;

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;

use cz_adapters::labels::{LABEL_REGION, LABEL_ROLE, LABEL_SOVEREIGN};
use cz_adapters::{
    CloudObject, InfraModule, PlanSummary, ProvisionerKey, TofuEvent, TofuSink, Workspace,
};
use cz_engine::{ActionId, Cause, PhaseBuilder, PhaseDef, StepError, StepResult, System};
use cz_engine::{action, no_undo};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

use self::render::RenderInput;
use crate::common::{
    RegionParams, fqdn, job_request, labels, precondition, region, region_token, slug,
};
use crate::request::Region;
use crate::{Registry, StepCtx, release};

pub const PHASE: &str = "infra";
pub const MANIFEST: &str = "catalyst-resources.json";
/// The secret holding this Sovereign's provisioner SSH key (OpenSSH format).
pub const PROVISIONER_KEY: &str = "provisioner-ssh-key";

// --- params and outputs --------------------------------------------------

/// `provisioner-key`'s output: the public half (authorized on every server).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ProvisionerPublicKey {
    pub public_key: String,
}

/// `render-<loc>`'s output.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Rendered {
    pub workspace: PathBuf,
    /// How many objects the manifest lists.
    pub resources: usize,
    /// SHA-256 of the manifest.
    pub sha256: String,
    /// `manifest`, `hcloud` or `offline`.
    pub module: String,
    /// The module files written beside the manifest.
    pub files: Vec<String>,
}

/// `init-<loc>`'s output.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Initialized {
    pub initialized: bool,
}

/// `apply-<loc>`'s output.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Applied {
    /// Objects in the state after the apply.
    pub resources: usize,
    /// tofu events streamed.
    pub events: u64,
    /// Objects an interrupted apply had created, imported into the state.
    pub adopted: Vec<String>,
    /// Servers and load balancers released as tofu created them (the rest
    /// were released from the outputs when the apply ended).
    #[serde(default)]
    pub released_early: usize,
    /// Objects tofu created at once (`-parallelism`).
    #[serde(default)]
    pub parallelism: u32,
}

/// The manifest `render` writes beside the module ([`MANIFEST`]).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Manifest {
    pub resources: Vec<Resource>,
}

// --- actions and the DAG -------------------------------------------------

const PROVISIONER_KEY_STEP: ActionId<()> = ActionId::new("infra.provisioner-key");
const RENDER: ActionId<RegionParams> = ActionId::new("infra.render");
const INIT: ActionId<RegionParams> = ActionId::new("infra.init");
const PLAN: ActionId<RegionParams> = ActionId::new("infra.plan");
const APPLY: ActionId<RegionParams> = ActionId::new("infra.apply");
const OUTPUTS: ActionId<RegionParams> = ActionId::new("infra.outputs");
const SERVER: ActionId<ServerParams> = ActionId::new("infra.server");
const LOAD_BALANCER: ActionId<RegionParams> = ActionId::new("infra.load-balancer");

/// `server-<server>`'s params: which server (`fsn1-cp1`) of which region.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ServerParams {
    pub location: String,
    pub suffix: String,
}

/// The node `apply-<loc>` releases when server `suffix` (`fsn1-w3`) exists.
pub fn server_node(suffix: &str) -> String {
    format!("{PHASE}/server-{suffix}")
}

/// The node `apply-<loc>` releases when the region's load balancer exists.
pub fn load_balancer_node(location: &str) -> String {
    format!("{PHASE}/load-balancer-{location}")
}

pub fn register(r: &mut Registry) {
    r.register(PROVISIONER_KEY_STEP, action!(provisioner_key, provisioner_key_undo));
    r.register(RENDER, action!(render, render_undo));
    r.register(INIT, action!(init, no_undo));
    r.register(PLAN, action!(plan, no_undo));
    r.register(APPLY, action!(apply, apply_undo));
    r.register(OUTPUTS, action!(outputs, no_undo));
    // Released by the apply, never run; the apply's undo removes the objects.
    r.register(SERVER, action!(released_server, no_undo));
    r.register(LOAD_BALANCER, action!(released_load_balancer, no_undo));
}

/// A region's servers by name without the Sovereign's prefix, control
/// planes first: `fsn1-cp1`, ..., `fsn1-w1`, ...
pub fn server_suffixes(r: &Region) -> impl Iterator<Item = String> + '_ {
    let l = &r.location;
    let cps = (1..=r.control_plane.count).map(move |i| format!("{l}-cp{i}"));
    cps.chain((1..=r.workers.count).map(move |i| format!("{l}-w{i}")))
}

pub fn phase(regions: &[Region]) -> PhaseDef {
    let mut b = PhaseBuilder::new(PHASE);
    b.step("provisioner-key", PROVISIONER_KEY_STEP, &[], ());
    for r in regions {
        let l = &r.location;
        let p = || RegionParams::new(l);
        b.step(&format!("render-{l}"), RENDER, &["provisioner-key"], p());
        b.step(&format!("init-{l}"), INIT, &[&format!("render-{l}")], p());
        b.step(&format!("plan-{l}"), PLAN, &[&format!("init-{l}")], p());
        let (plan, apply) = (format!("plan-{l}"), format!("apply-{l}"));
        b.step(&apply, APPLY, &[&plan], p());
        b.released(&format!("load-balancer-{l}"), LOAD_BALANCER, &apply, &[&plan], p());
        for suffix in server_suffixes(r) {
            let params = ServerParams { location: l.clone(), suffix: suffix.clone() };
            b.released(&format!("server-{suffix}"), SERVER, &apply, &[&plan], params);
        }
        b.step(&format!("outputs-{l}"), OUTPUTS, &[&apply], p());
    }
    b.build()
}

// --- the desired objects -------------------------------------------------

/// One desired cloud object.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Resource {
    pub address: String,
    pub kind: String,
    pub name: String,
    pub labels: BTreeMap<String, String>,
    pub attrs: Value,
}

/// Every object name a region uses (pre-flight collision check).
pub fn object_names(slug: &str, r: &Region) -> Vec<String> {
    desired(slug, r, None).into_iter().map(|x| x.name).collect()
}

/// The desired resources of a region. Pure: the plan-execute split makes
/// the render testable without a cloud.
pub fn desired(slug: &str, r: &Region, cx: Option<(&StepCtx, &str)>) -> Vec<Resource> {
    let l = &r.location;
    let plan = layout::RegionLayout::of(r);
    let lab = |role: &str| match cx {
        Some((cx, fqdn)) => labels(cx, fqdn, role, l),
        None => Default::default(),
    };
    let res = |address: String, kind: &str, name: String, role: &str, attrs: Value| Resource {
        address,
        kind: kind.into(),
        name,
        labels: lab(role),
        attrs,
    };
    let network = format!("{slug}-{l}-net");
    let mut out = Vec::new();
    if plan.private_network {
        out.push(res(
            "hcloud_network.main".into(),
            "network",
            network.clone(),
            "network",
            json!({ "ip_range": render::NETWORK_IP_RANGE, "subnet": render::SUBNET_IP_RANGE,
                    "network_zone": render::network_zone(l) }),
        ));
    }
    out.push(res(
        "hcloud_firewall.main".into(),
        "firewall",
        format!("{slug}-{l}-fw"),
        "firewall",
        json!({ "open": [80, 443], "restricted": [22, 6443] }),
    ));
    if !plan.private_network {
        // The cluster's ports, open to the region's own servers only.
        out.push(res(
            "hcloud_firewall.nodes".into(),
            "firewall",
            format!("{slug}-{l}-nodes"),
            "firewall",
            json!({ "nodes": render::NODE_PORTS.iter().map(|(p, port)| format!("{p}/{port}")).collect::<Vec<_>>() }),
        ));
    }
    out.push(res(
        "hcloud_ssh_key.main".into(),
        "ssh_key",
        format!("{slug}-{l}-key"),
        "ssh-key",
        json!({}),
    ));
    let group = |g: u32| format!("{slug}-{l}-pg{}", g + 1);
    for g in 0..plan.placement_groups {
        out.push(res(
            format!("hcloud_placement_group.spread[{g}]"),
            "placement_group",
            group(g),
            "placement-group",
            json!({ "type": "spread" }),
        ));
    }
    let net = if plan.private_network { json!(network) } else { Value::Null };
    // (address name, server name, role, server type, count, position of
    // the first: the control planes fill the groups first).
    let groups = [
        ("cp", "cp", "control-plane", &r.control_plane.sku, r.control_plane.count, 0),
        ("worker", "w", "worker", &r.workers.sku, r.workers.count, r.control_plane.count),
    ];
    for (address, short, role, sku, count, first) in groups {
        for i in 0..count {
            out.push(res(
                format!("hcloud_server.{address}[{i}]"),
                "server",
                format!("{slug}-{l}-{short}{}", i + 1),
                role,
                json!({ "server_type": sku, "location": l, "image": release::server_image(),
                        "role": role, "index": i, "placement_group": group(plan.group_at(first + i)),
                        "network": net }),
            ));
        }
    }
    out.push(res(
        "hcloud_load_balancer.main".into(),
        "load_balancer",
        format!("{slug}-{l}-lb"),
        "load-balancer",
        json!({ "type": plan.load_balancer_type, "services": render::LB_PORTS,
                "targets": r.load_balancer.targets.as_str(), "target_count": plan.load_balancer_targets }),
    ));
    out
}

pub fn workspace(cx: &StepCtx, location: &str) -> Workspace {
    Workspace { dir: cx.env.workspace_root.join(cx.sovereign_id.to_string()).join(location) }
}

/// This node's region (its params name it).
fn region_of(cx: &StepCtx) -> StepResult<Region> {
    region(cx, &cx.params::<RegionParams>()?.location)
}

/// This node's region's workspace.
fn workspace_of(cx: &StepCtx) -> StepResult<Workspace> {
    Ok(workspace(cx, &cx.params::<RegionParams>()?.location))
}

/// The store secret holding a region's archived tofu workspace.
pub fn archive_name(location: &str) -> String {
    format!("tofu-state-archive-{location}")
}

/// Whether `infra-handoff` archived this region's tofu workspace: its
/// objects belong to Crossplane.
pub async fn handed_off(cx: &StepCtx, location: &str) -> StepResult<bool> {
    cx.has_secret(&archive_name(location)).await
}

/// Refuses any tofu run against a region Crossplane owns.
async fn refuse_if_handed_off(cx: &StepCtx, location: &str) -> StepResult<()> {
    if handed_off(cx, location).await? {
        return Err(precondition(
            format!(
                "region {location} of this Sovereign was handed off to Crossplane; its tofu state \
                 is archived and no tofu run may touch its objects"
            ),
            "Change these cloud objects through their Crossplane managed resources \
             (namespace crossplane-system), never by tofu.",
        ));
    }
    Ok(())
}

// --- steps ---------------------------------------------------------------

/// The Sovereign's provisioner SSH key: made once (an add-region reuses
/// it), held age-encrypted in the store, its public half authorized on every
/// server by the module. Never derived from inputs, never on disk in clear.
async fn provisioner_key(cx: &StepCtx) -> StepResult<ProvisionerPublicKey> {
    // The job now waits minutes on the cloud: custody's sealing key is
    // made meanwhile, off its critical path (a provision's only).
    if job_request(cx)?.provision().is_some() {
        crate::custody::make_sealing_key_ahead(cx.job_id);
    }
    let key = match cx.secret_opt(PROVISIONER_KEY).await? {
        Some(private) => ProvisionerKey::from_private(private)?,
        None => {
            let k = ProvisionerKey::generate(&format!("catalyst-zero@{}", slug(&fqdn(cx)?)))?;
            cx.put_secret(PROVISIONER_KEY, &k.private).await?;
            k
        }
    };
    Ok(ProvisionerPublicKey { public_key: key.public })
}

async fn provisioner_key_undo(cx: &StepCtx) -> StepResult<()> {
    // Only a provision owns the key; an add-region borrowed the Sovereign's.
    if job_request(cx)?.provision().is_some() {
        crate::custody::forget_sealing_key_ahead(cx.job_id);
        cx.delete_secret(PROVISIONER_KEY).await?;
    }
    Ok(())
}

async fn render(cx: &StepCtx) -> StepResult<Rendered> {
    refuse_if_handed_off(cx, &cx.params::<RegionParams>()?.location).await?;
    let r = region_of(cx)?;
    let fqdn = fqdn(cx)?;
    let ws = workspace(cx, &r.location);
    let mut resources = desired(&slug(&fqdn), &r, Some((cx, &fqdn)));
    // The key's public half is the provisioner key's (the provider records
    // it, and Crossplane's Key requires it once managed).
    let provisioner: ProvisionerPublicKey = cx.lookup("infra/provisioner-key")?;
    for res in resources.iter_mut().filter(|x| x.kind == "ssh_key") {
        res.attrs["public_key"] = json!(provisioner.public_key);
    }
    let manifest = Manifest { resources };
    let body = serde_json::to_vec_pretty(&manifest).expect("manifests serialize");
    let digest = hex::encode(<sha2::Sha256 as sha2::Digest>::digest(&body));
    let files = module_files(cx, &r, &fqdn, &manifest.resources)?;
    for (name, text) in &files {
        write_atomic(&ws.dir, name, text.as_bytes()).await?;
    }
    write_atomic(&ws.dir, MANIFEST, &body).await?;
    let module = match &cx.env.infra {
        InfraModule::Manifest => "manifest",
        InfraModule::Hcloud { .. } => "hcloud",
        InfraModule::Offline { .. } => "offline",
    };
    Ok(Rendered {
        workspace: ws.dir,
        resources: manifest.resources.len(),
        sha256: digest,
        module: module.into(),
        files: files.into_keys().collect(),
    })
}

/// The tofu module files of the backend's [`InfraModule`] for one region.
fn module_files(
    cx: &StepCtx,
    r: &Region,
    fqdn: &str,
    resources: &[Resource],
) -> StepResult<BTreeMap<String, String>> {
    let input = || -> StepResult<RenderInput> {
        let mut keys = job_request(cx)?.ssh_public_keys().to_vec();
        let provisioner: ProvisionerPublicKey = cx.lookup("infra/provisioner-key")?;
        keys.push(provisioner.public_key);
        let cidrs = match &cx.env.infra {
            InfraModule::Hcloud { provisioner_cidrs, .. } => provisioner_cidrs.clone(),
            // The stand-in renders firewall rules from them too; the
            // loopback is where the shim and the fake API live.
            _ => vec!["127.0.0.1/32".to_owned()],
        };
        RenderInput::from_region(&slug(fqdn), &cx.job_id.to_string(), r, &keys, &cidrs)
            .map_err(render_error)
    };
    match &cx.env.infra {
        InfraModule::Manifest => Ok(Default::default()),
        InfraModule::Hcloud { templates, .. } => {
            render::render_hetzner(&input()?, templates).map_err(render_error)
        }
        InfraModule::Offline { templates, shim, endpoint } => {
            render::render_offline(&input()?, resources, shim, endpoint, templates)
                .map_err(render_error)
        }
    }
}

fn render_error(e: render::RenderError) -> StepError {
    match e {
        render::RenderError::Input { field, reason } => {
            StepError::InvalidInput { path: field.to_owned(), message: reason }
        }
        e @ render::RenderError::UnknownLocation(_) => {
            StepError::InvalidInput { path: "regions.location".into(), message: e.to_string() }
        }
        e => precondition(
            format!("the cloud templates do not render: {e}"),
            "Check the templates directory in the daemon's config (hetzner.templates_dir) and the release's templates.",
        ),
    }
}

async fn write_atomic(dir: &std::path::Path, name: &str, body: &[u8]) -> StepResult<()> {
    let io = |e: std::io::Error| {
        StepError::adapter(
            System::Tofu,
            "render",
            Cause::Unavailable,
            format!("{}: {e}", dir.display()),
        )
    };
    tokio::fs::create_dir_all(dir).await.map_err(io)?;
    let tmp = dir.join(format!(".{name}.tmp"));
    tokio::fs::write(&tmp, body).await.map_err(io)?;
    tokio::fs::rename(&tmp, dir.join(name)).await.map_err(io)?;
    Ok(())
}

async fn render_undo(cx: &StepCtx) -> StepResult<()> {
    let ws = workspace_of(cx)?;
    // Runs after apply's undo (reverse order): state is empty by now. A
    // workspace whose state still lists objects is kept for the operator.
    let state_left = cx.env.tofu.state(&ws).await.map(|s| !s.is_empty()).unwrap_or(false);
    if state_left {
        return Err(precondition(
            format!("workspace {} still has objects in its tofu state", ws.dir.display()),
            "Run `destroy` for this Sovereign, then retry the rollback.",
        ));
    }
    match tokio::fs::remove_dir_all(&ws.dir).await {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(StepError::adapter(
            System::Tofu,
            "remove workspace",
            Cause::Unavailable,
            e.to_string(),
        )),
    }
}

async fn init(cx: &StepCtx) -> StepResult<Initialized> {
    refuse_if_handed_off(cx, &cx.params::<RegionParams>()?.location).await?;
    let ws = workspace_of(cx)?;
    cx.env.tofu.init(&ws).await?;
    Ok(Initialized { initialized: true })
}

async fn plan(cx: &StepCtx) -> StepResult<PlanSummary> {
    refuse_if_handed_off(cx, &cx.params::<RegionParams>()?.location).await?;
    let ws = workspace_of(cx)?;
    let token = region_token(cx, &cx.params::<RegionParams>()?.location).await?;
    let s = cx.env.tofu.plan(&ws, &token).await?;
    cx.event(
        "tofu",
        json!({ "type": "plan", "add": s.add, "change": s.change, "destroy": s.destroy }),
    )
    .await?;
    Ok(s)
}

/// Tofu events in one commit to the job's stream, at most.
pub const EVENTS_PER_COMMIT: usize = 1000;

/// Forwards tofu events to the job's stream in batches (one commit per
/// batch: 100k lines must not be 100k fsyncs).
async fn forward_events(
    cx: StepCtx,
    mut rx: tokio::sync::mpsc::UnboundedReceiver<cz_state::NewJobEvent>,
) -> StepResult<u64> {
    let mut n = 0u64;
    while let Some(batch) = cz_adapters::tofu::next_batch(&mut rx, EVENTS_PER_COMMIT).await {
        n += batch.len() as u64;
        cx.append(batch).await?;
    }
    Ok(n)
}

/// Runs a tofu operation that streams events, forwarding them durably.
pub async fn with_events<F, Fut>(cx: &StepCtx, f: F) -> StepResult<u64>
where
    F: FnOnce(TofuSink) -> Fut,
    Fut: std::future::Future<Output = StepResult<()>>,
{
    with_events_tapped(cx, |_| {}, f).await
}

/// [`with_events`], with `tap` seeing each event as tofu emits it.
async fn with_events_tapped<T, F, Fut>(cx: &StepCtx, tap: T, f: F) -> StepResult<u64>
where
    T: Fn(&TofuEvent),
    F: FnOnce(TofuSink) -> Fut,
    Fut: std::future::Future<Output = StepResult<()>>,
{
    let (tx, mut from_tofu) = tokio::sync::mpsc::unbounded_channel::<TofuEvent>();
    let (to_store, rx) = tokio::sync::mpsc::unbounded_channel();
    let fwd = tokio::spawn(forward_events(cx.clone(), rx));
    let run = f(tx);
    tokio::pin!(run);
    let mut result = None;
    // Until tofu is done and its last event is passed on.
    loop {
        tokio::select! {
            r = &mut run, if result.is_none() => result = Some(r),
            ev = from_tofu.recv() => match ev {
                Some(ev) => {
                    tap(&ev);
                    // Serialized here, while the forwarder's last batch
                    // commits.
                    let _ = to_store.send(cx.tagged("tofu", &ev)?);
                }
                None => break,
            },
        }
    }
    let result = match result {
        Some(r) => r,
        None => run.await,
    };
    drop(to_store);
    let n = fwd.await.map_err(|e| StepError::internal(e.to_string()))??;
    result.map(|()| n)
}

/// The label selector of this Sovereign's objects in `location` (in the
/// cloud, and on its managed resources in the cluster).
pub fn region_selector(cx: &StepCtx, location: &str) -> StepResult<String> {
    Ok(format!("{LABEL_SOVEREIGN}={},{LABEL_REGION}={location}", slug(&fqdn(cx)?)))
}

/// This Sovereign's live cloud objects in `location`, with its token.
pub async fn region_objects(cx: &StepCtx, location: &str) -> StepResult<Vec<CloudObject>> {
    let token = region_token(cx, location).await?;
    cx.env.cloud.list(&token, &region_selector(cx, location)?).await
}

/// The resources the region's module was rendered from.
async fn read_manifest(ws: &Workspace) -> StepResult<Vec<Resource>> {
    let text = tokio::fs::read(ws.dir.join(MANIFEST)).await.map_err(|e| {
        StepError::adapter(System::Tofu, "read manifest", Cause::NotFound, e.to_string())
    })?;
    let Manifest { resources } = serde_json::from_slice(&text)
        .map_err(|e| StepError::internal(format!("{MANIFEST}: {e}")))?;
    Ok(resources)
}

/// Imports labelled objects of this region that the tofu state lacks.
async fn adopt_orphans(cx: &StepCtx, ws: &Workspace, location: &str) -> StepResult<Vec<String>> {
    if !cx.env.infra.adopts_by_import() {
        // The offline stand-in adopts by name inside its own create.
        return Ok(Vec::new());
    }
    let token = region_token(cx, location).await?;
    let desired = read_manifest(ws).await?;
    let state = cx.env.tofu.state(ws).await?;
    let mut adopted = Vec::new();
    for obj in cx.env.cloud.list(&token, &region_selector(cx, location)?).await? {
        if state.iter().any(|s| s.id == obj.id && s.kind == obj.kind) {
            continue;
        }
        if let Some(want) = desired.iter().find(|d| d.kind == obj.kind && d.name == obj.name)
            && !state.iter().any(|s| s.address == want.address)
        {
            cx.env.tofu.import(ws, &token, &want.address, obj.id).await?;
            adopted.push(format!("{} <- {} {}", want.address, obj.kind, obj.id));
        }
    }
    if !adopted.is_empty() {
        cx.event("tofu", json!({ "type": "adopted", "message": format!("imported {} object(s) created by an interrupted apply", adopted.len()), "objects": adopted })).await?;
    }
    Ok(adopted)
}

/// Offline module only: state addresses whose object is gone from the
/// cloud, to be replaced. The hcloud provider's refresh finds these itself;
/// a `terraform_data` cannot, and it can be in the state without its object
/// (a tofu stopped while the create provisioner ran, or an object deleted
/// by hand), which a plain apply would report as "no changes".
async fn offline_drift(cx: &StepCtx, ws: &Workspace, location: &str) -> StepResult<Vec<String>> {
    if cx.env.infra.adopts_by_import() {
        return Ok(Vec::new());
    }
    let desired = read_manifest(ws).await?;
    let state = cx.env.tofu.state(ws).await?;
    if state.is_empty() {
        return Ok(Vec::new());
    }
    let live = region_objects(cx, location).await?;
    let mut replace = Vec::new();
    for d in &desired {
        let address = format!("terraform_data.{}", render::offline_id(&d.address));
        let in_state = state.iter().any(|s| s.address == address);
        if in_state && !live.iter().any(|o| o.kind == d.kind && o.name == d.name) {
            replace.push(address);
        }
    }
    if !replace.is_empty() {
        cx.event("tofu", json!({ "type": "resource_drift", "message": format!("{} object(s) in the tofu state are gone from the cloud and will be created again", replace.len()), "objects": replace })).await?;
    }
    Ok(replace)
}

async fn apply(cx: &StepCtx) -> StepResult<Applied> {
    let loc = cx.params::<RegionParams>()?.location;
    let ws = workspace(cx, &loc);
    refuse_if_handed_off(cx, &loc).await?;
    let token = region_token(cx, &loc).await?;
    let adopted = adopt_orphans(cx, &ws, &loc).await?;
    let replace = offline_drift(cx, &ws, &loc).await?;
    let tofu = cx.env.tofu.clone();
    let slug = slug(&fqdn(cx)?);
    let releases = Releases::of(cx, &slug, &read_manifest(&ws).await?, &token);
    let parallelism = layout::RegionLayout::of(&region_of(cx)?).apply_parallelism();
    let lines = with_events_tapped(
        cx,
        |e| releases.created(e),
        |sink| {
            let (ws, token) = (ws.clone(), token.clone());
            async move { tofu.apply(&ws, &token, &replace, parallelism, sink).await }
        },
    )
    .await;
    let early = releases.finish().await;
    let lines = lines?;
    // Whatever was not released as it was created, from tofu's outputs
    // (read once per apply: `outputs-<loc>` takes what is released here).
    let out = read_outputs(cx, &loc).await?;
    cx.release(&load_balancer_node(&loc), &out.load_balancer).await?;
    for s in &out.servers {
        let suffix = unprefixed(&s.name, &slug).ok_or_else(|| {
            output_error("servers", format!("`{}` is not named `{slug}-...`", s.name))
        })?;
        cx.release(&server_node(suffix), s).await?;
    }
    let state = cx.env.tofu.state(&ws).await?;
    Ok(Applied {
        resources: state.len(),
        events: lines,
        adopted,
        released_early: early,
        parallelism,
    })
}

/// A cloud object's name without the Sovereign's prefix (`<slug>-`):
/// `fsn1-w3` for a server, `fsn1-lb` for a load balancer.
fn unprefixed<'a>(name: &'a str, slug: &str) -> Option<&'a str> {
    name.strip_prefix(slug)?.strip_prefix('-')
}

/// What `apply` releases as tofu creates it: the objects' addresses mapped
/// to their released nodes, and the releases in flight (each needs one
/// `GET` of the new object for its addresses).
struct Releases {
    cx: StepCtx,
    token: cz_state::SecretString,
    /// tofu address → (released node, kind, role).
    nodes: BTreeMap<String, (String, String, String)>,
    tasks: std::sync::Mutex<tokio::task::JoinSet<bool>>,
    /// At most this many `GET`s at once.
    gets: Arc<tokio::sync::Semaphore>,
}

impl Releases {
    fn of(
        cx: &StepCtx,
        slug: &str,
        manifest: &[Resource],
        token: &cz_state::SecretString,
    ) -> Releases {
        let nodes = manifest
            .iter()
            .filter_map(|r| {
                let node = match r.kind.as_str() {
                    "server" => server_node(unprefixed(&r.name, slug)?),
                    "load_balancer" => {
                        load_balancer_node(unprefixed(&r.name, slug)?.strip_suffix("-lb")?)
                    }
                    _ => return None,
                };
                let role = r.attrs.get("role").and_then(Value::as_str).unwrap_or_default();
                Some((r.address.clone(), (node, r.kind.clone(), role.to_owned())))
            })
            .collect();
        Releases {
            cx: cx.clone(),
            token: token.clone(),
            nodes,
            tasks: Default::default(),
            gets: Arc::new(tokio::sync::Semaphore::new(RELEASE_GETS)),
        }
    }

    /// A tofu event: a create of a released object starts its release.
    fn created(&self, e: &TofuEvent) {
        if e.kind != "apply_complete" || e.action.as_deref() != Some("create") {
            return;
        }
        let (Some(address), Some(id)) = (&e.address, e.id.as_deref().and_then(|i| i.parse().ok()))
        else {
            return;
        };
        let Some((node, kind, role)) = self.nodes.get(address).cloned() else { return };
        let (cx, token, gets) = (self.cx.clone(), self.token.clone(), self.gets.clone());
        let task = async move {
            let _permit = gets.acquire().await.expect("semaphore open");
            match release_created(&cx, &token, &node, &kind, &role, id).await {
                Ok(released) => released,
                Err(e) => {
                    // The end of the apply releases it from the outputs.
                    tracing::warn!(job_id = %cx.job_id, node = %node, error = &e as &dyn std::error::Error, "Could not release a created object early.");
                    false
                }
            }
        };
        self.tasks.lock().expect("release tasks").spawn(task);
    }

    /// Waits for the releases in flight; how many released a node.
    async fn finish(&self) -> usize {
        let mut tasks = std::mem::take(&mut *self.tasks.lock().expect("release tasks"));
        let mut n = 0;
        while let Some(r) = tasks.join_next().await {
            n += usize::from(r.unwrap_or(false));
        }
        n
    }
}

/// How many `GET`s of new objects run at once.
const RELEASE_GETS: usize = 16;

/// Releases `node` with the object `id` as the API shows it now.
async fn release_created(
    cx: &StepCtx,
    token: &cz_state::SecretString,
    node: &str,
    kind: &str,
    role: &str,
    id: i64,
) -> StepResult<bool> {
    let Some(o) = cx.env.cloud.object(token, kind, id).await? else { return Ok(false) };
    let text = |k: &str| o.attrs.get(k).and_then(Value::as_str).unwrap_or_default().to_owned();
    if kind == "load_balancer" {
        return cx.release(node, &LoadBalancer { id: o.id, ipv4: text("ipv4") }).await;
    }
    let server = Server {
        name: o.name.clone(),
        id: o.id,
        role: role.to_owned(),
        ipv4: text("ipv4"),
        private_ip: text("private_ip"),
    };
    cx.release(node, &server).await
}

/// Never runs: `apply-<loc>` releases these nodes.
async fn released_server(cx: &StepCtx) -> StepResult<Server> {
    Err(not_released(cx))
}

async fn released_load_balancer(cx: &StepCtx) -> StepResult<LoadBalancer> {
    Err(not_released(cx))
}

fn not_released(cx: &StepCtx) -> StepError {
    StepError::internal(format!("`{}` is released by its region's apply, not run", cx.node))
}

async fn apply_undo(cx: &StepCtx) -> StepResult<()> {
    let loc = cx.params::<RegionParams>()?.location;
    let ws = workspace(cx, &loc);
    refuse_if_handed_off(cx, &loc).await?;
    if !ws.dir.join(MANIFEST).exists() {
        return sweep_region(cx, &loc).await;
    }
    let token = region_token(cx, &loc).await?;
    // Objects an interrupted apply created but never recorded must go too.
    adopt_orphans(cx, &ws, &loc).await?;
    let tofu = cx.env.tofu.clone();
    with_events(cx, |sink| {
        let (ws, token) = (ws.clone(), token.clone());
        async move { tofu.destroy(&ws, &token, sink).await }
    })
    .await?;
    sweep_region(cx, &loc).await
}

/// Deletes every object labelled for this Sovereign and region.
pub async fn sweep_region(cx: &StepCtx, location: &str) -> StepResult<()> {
    let token = region_token(cx, location).await?;
    let mut objs = cx.env.cloud.list(&token, &region_selector(cx, location)?).await?;
    objs.sort_by_key(|o| cz_adapters::cloud::deletion_rank(&o.kind));
    for obj in objs {
        cx.env.cloud.delete(&token, &obj).await?;
    }
    Ok(())
}

/// What `outputs` persists and later phases read.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Outputs {
    pub location: String,
    pub servers: Vec<Server>,
    pub load_balancer: LoadBalancer,
    pub workspace: PathBuf,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Server {
    pub name: String,
    pub id: i64,
    pub role: String,
    pub ipv4: String,
    /// Empty where the region has no private network (tofu's `null`).
    #[serde(default, deserialize_with = "null_as_empty")]
    pub private_ip: String,
}

fn null_as_empty<'de, D: serde::Deserializer<'de>>(d: D) -> Result<String, D::Error> {
    Ok(Option::<String>::deserialize(d)?.unwrap_or_default())
}

impl Server {
    /// The address the cluster uses between nodes: the private one, or the
    /// public one in a region without a private network.
    pub fn node_ip(&self) -> &str {
        if self.private_ip.is_empty() { &self.ipv4 } else { &self.private_ip }
    }
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct LoadBalancer {
    pub id: i64,
    pub ipv4: String,
}

fn output_error(what: &str, e: impl std::fmt::Display) -> StepError {
    StepError::adapter(System::Tofu, "output", Cause::Invalid, format!("{what}: {e}"))
}

/// The hcloud module's `control_planes`/`workers` entries as [`Server`]s.
fn hcl_servers(out: &Value, key: &str, role: &str) -> StepResult<Vec<Server>> {
    #[derive(Deserialize)]
    struct Entry {
        id: Value,
        name: String,
        ipv4_address: String,
        private_ip: Option<String>,
    }
    let entries: Vec<Entry> =
        serde_json::from_value(out[key].clone()).map_err(|e| output_error(key, e))?;
    entries
        .into_iter()
        .map(|e| {
            Ok(Server {
                id: id_value(&e.id).ok_or_else(|| output_error(key, "an id is not a number"))?,
                name: e.name,
                role: role.to_owned(),
                ipv4: e.ipv4_address,
                private_ip: e.private_ip.unwrap_or_default(),
            })
        })
        .collect()
}

/// The provider gives ids as strings in some versions, numbers in others.
fn id_value(v: &Value) -> Option<i64> {
    v.as_i64().or_else(|| v.as_str()?.parse().ok())
}

/// The offline stand-in's `objects` output, resolved by name in the API.
async fn resolve_objects(cx: &StepCtx, out: &Value) -> StepResult<(Vec<Server>, LoadBalancer)> {
    #[derive(Deserialize)]
    struct Entry {
        kind: String,
        name: String,
    }
    let entries: Vec<Entry> =
        serde_json::from_value(out["objects"].clone()).map_err(|e| output_error("objects", e))?;
    let loc = cx.params::<RegionParams>()?.location;
    let live = region_objects(cx, &loc).await?;
    let find = |e: &Entry| -> StepResult<&CloudObject> {
        live.iter().find(|o| o.kind == e.kind && o.name == e.name).ok_or_else(|| {
            output_error(
                "objects",
                format!("{} `{}` is in the tofu state but not in the cloud", e.kind, e.name),
            )
        })
    };
    let text = |o: &CloudObject, k: &str| -> String {
        o.attrs.get(k).and_then(Value::as_str).unwrap_or_default().to_owned()
    };
    let mut servers = Vec::new();
    let mut lb = None;
    for e in &entries {
        match e.kind.as_str() {
            "server" => {
                let o = find(e)?;
                servers.push(Server {
                    name: o.name.clone(),
                    id: o.id,
                    role: o.labels.get(LABEL_ROLE).cloned().unwrap_or_default(),
                    ipv4: text(o, "ipv4"),
                    private_ip: text(o, "private_ip"),
                });
            }
            "load_balancer" => {
                let o = find(e)?;
                lb = Some(LoadBalancer { id: o.id, ipv4: text(o, "ipv4") });
            }
            _ => {
                find(e)?;
            }
        }
    }
    let lb = lb.ok_or_else(|| output_error("objects", "no load balancer"))?;
    Ok((servers, lb))
}

/// `outputs-<loc>`: the region's servers and load balancer as the apply
/// released them (tofu's outputs are read, and on the offline module each
/// object fetched, once per apply). A plan from before released nodes has
/// none, and reads tofu's outputs.
async fn outputs(cx: &StepCtx) -> StepResult<Outputs> {
    let loc = cx.params::<RegionParams>()?.location;
    let region = region_of(cx)?;
    let released = || -> StepResult<Outputs> {
        Ok(Outputs {
            location: loc.clone(),
            servers: server_suffixes(&region)
                .map(|s| cx.lookup::<Server>(&server_node(&s)))
                .collect::<StepResult<_>>()?,
            load_balancer: cx.lookup(&load_balancer_node(&loc))?,
            workspace: workspace(cx, &loc).dir,
        })
    };
    match released() {
        Err(StepError::MissingOutput { .. }) => read_outputs(cx, &loc).await,
        other => other,
    }
}

/// The region's servers and load balancer from tofu's outputs, checked
/// against the request.
async fn read_outputs(cx: &StepCtx, loc: &str) -> StepResult<Outputs> {
    let loc = loc.to_owned();
    let ws = workspace(cx, &loc);
    let out = cx.env.tofu.output(&ws).await?;
    let (servers, load_balancer) = if out.get("servers").is_some() {
        // The sim tofu's shape.
        let servers: Vec<Server> = serde_json::from_value(out["servers"].clone())
            .map_err(|e| output_error("servers", e))?;
        let lb: LoadBalancer = serde_json::from_value(out["load_balancer"].clone())
            .map_err(|e| output_error("load_balancer", e))?;
        (servers, lb)
    } else if out.get("control_planes").is_some() {
        // cloud-templates/hetzner/outputs.tf.
        let mut servers = hcl_servers(&out, "control_planes", "control-plane")?;
        servers.extend(hcl_servers(&out, "workers", "worker")?);
        let lb = &out["load_balancer"];
        let lb = LoadBalancer {
            id: lb
                .get("id")
                .and_then(id_value)
                .ok_or_else(|| output_error("load_balancer", "no id"))?,
            ipv4: lb.get("ipv4").and_then(Value::as_str).unwrap_or_default().to_owned(),
        };
        (servers, lb)
    } else if out.get("objects").is_some() {
        resolve_objects(cx, &out).await?
    } else {
        return Err(output_error("outputs", "none of `servers`, `control_planes`, `objects`"));
    };
    let want = region_of(cx)?;
    let cps = servers.iter().filter(|s| s.role == "control-plane").count() as u32;
    if cps != want.control_plane.count || servers.len() as u32 != cps + want.workers.count {
        return Err(StepError::adapter(
            System::Tofu,
            "output",
            Cause::Invalid,
            format!(
                "state has {} servers ({cps} control planes); the request wants {} + {}",
                servers.len(),
                want.control_plane.count,
                want.workers.count
            ),
        ));
    }
    Ok(Outputs { location: loc, servers, load_balancer, workspace: ws.dir })
}

#[cfg(test)]
mod tests {
    use crate::testing::{phase_tests, sample_request};

    phase_tests!(super::PHASE, sample_request("infra", 3, 1));
}
