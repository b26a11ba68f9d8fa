//! Phase 3, `cluster`: K3s and Cilium over SSH, kubeconfig verified.
//!
//! The phase overlaps `infra` (a pipelined bring-up): a server's steps start
//! as soon as `infra/apply-<loc>` releases that server (`infra/server-<s>`,
//! when the cloud reports it created), while the rest of the fleet is still
//! being created; the K3s installs also wait for the region's load balancer
//! (`infra/load-balancer-<loc>`: its address is in the servers' TLS SANs).
//!
//! Per region:
//! 1. `join-token-<loc>` (undo: forget it): a random join token, held
//!    age-encrypted in the store, never derived from inputs;
//! 2. `ssh-<server>`, one per server, once the server is released: a
//!    bounded, reasoned wait while the host boots, then its host key pinned
//!    on first contact (every later call checks it). A server with no SSH
//!    within the bound is asked about: `off` is powered on, anything else
//!    gets one hard reset, and the wait runs once more. Still nothing,
//!    while another server of the region answered: the server is deleted
//!    and the step waits for an operator, whose `retry --phase infra`
//!    makes it again (this step runs again with it). When no server of
//!    the region answered, the daemon's reach is as likely at fault:
//!    nothing is deleted. The other nodes go on meanwhile;
//! 3. `k3s-<server>` (undo: K3s's uninstall script): the first server with
//!    `cluster-init`, the other servers joining it one at a time, agents
//!    joining in parallel. Air-gap artifacts are uploaded where a node's
//!    copy differs, each checked against the release's `SHA256SUMS`. The
//!    install wrapper ([`render::install_script`]) takes a lock on the
//!    node and writes a version marker last, so a re-run after a crash
//!    installs nothing twice;
//! 4. `cilium-<loc>`: Cilium as a K3s HelmChart on the first server, at the
//!    version the kit's bp-cilium pins (one installer, one version);
//! 5. `kubeconfig-<loc>` (undo: forget it): K3s's kubeconfig rewritten to
//!    the load balancer on 6443, checked over TLS against the cluster's CA
//!    before it is stored (encrypted);
//! 6. `verify-<loc>`: every node Ready, one etcd member per server, CoreDNS
//!    available;
//! 7. `cilium-settled-<loc>` (undo: remove the marker): `cilium.yaml.skip`
//!    so a K3s restart cannot bring the Cilium HelmChart back after the kit
//!    handed Cilium to Flux.

pub mod render;

use cz_adapters::{CloudObject, Host, K3sSource, ProvisionerKey, ServerAction};
use cz_engine::{ActionId, Cause, PhaseBuilder, PhaseDef, StepError, StepResult, System};
use cz_engine::{action, no_undo};
use cz_state::SecretString;
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

use self::render::{ARTIFACTS, cilium_manifest, install_script, k3s_config, marker};
use crate::common::{RegionParams, SecretRef, command_failed, fqdn, precondition};
use crate::infra::{LoadBalancer, Outputs, PROVISIONER_KEY, Server};
use crate::request::Region;
use crate::{Registry, StepCtx, release};

pub const PHASE: &str = "cluster";
const KUBECONFIG_PATH: &str = "/etc/rancher/k3s/k3s.yaml";
const K3S: &str = "/usr/local/bin/k3s";
/// The Cilium HelmChart manifest on the first server, and its `.skip`.
const CILIUM_MANIFEST: &str = "/var/lib/rancher/k3s/server/manifests/cilium.yaml";
const CILIUM_SKIP: &str = "/var/lib/rancher/k3s/server/manifests/cilium.yaml.skip";

// --- params and outputs --------------------------------------------------

/// `ssh-<server>`'s params: which server (`<location>-cp1`, ...).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct NodeParams {
    pub location: String,
    /// The server's name without the Sovereign's prefix (`fsn1-cp1`).
    pub suffix: String,
    /// `control-plane` or `worker`.
    pub role: String,
}

/// `k3s-<server>`'s params.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct K3sParams {
    pub location: String,
    pub suffix: String,
    /// `server` or `agent`.
    pub role: String,
    /// The region's first server (`--cluster-init`).
    pub first: bool,
}

/// `verify-<loc>`'s params: what the region must have.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct VerifyParams {
    pub location: String,
    pub servers: u32,
    pub agents: u32,
}

/// `ssh-<server>`'s output: the host, its key pinned on first contact.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Pinned {
    pub host: Host,
    /// The host key's `SHA256:` fingerprint; every later call checks it.
    pub fingerprint: String,
    pub server: Server,
}

/// `k3s-<server>`'s output.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct K3sInstalled {
    pub host: String,
    pub role: String,
    pub version: String,
    pub already_installed: bool,
    /// Air-gap artifacts this run uploaded (the node lacked them).
    #[serde(default)]
    pub artifacts_uploaded: Vec<String>,
}

/// `cilium-<loc>`'s output.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct CiliumChart {
    pub chart_version: String,
    pub k8s_service_host: String,
}

/// `kubeconfig-<loc>`'s output.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Kubeconfig {
    /// The endpoint the stored kubeconfig points at (the load balancer).
    pub endpoint: String,
    /// The secret holding it.
    pub secret: String,
    pub server_version: String,
}

/// `verify-<loc>`'s output.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ClusterVerified {
    pub ready_servers: u32,
    pub ready_nodes: u32,
    pub etcd_members: u32,
    pub coredns_available: u64,
}

/// `cilium-settled-<loc>`'s output.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Settled {
    pub suppressed: String,
    pub marker: String,
}

// --- actions and the DAG -------------------------------------------------

const SSH: ActionId<NodeParams> = ActionId::new("cluster.ssh");
const JOIN_TOKEN: ActionId<RegionParams> = ActionId::new("cluster.join-token");
const K3S_STEP: ActionId<K3sParams> = ActionId::new("cluster.k3s");
const CILIUM: ActionId<RegionParams> = ActionId::new("cluster.cilium");
const KUBECONFIG: ActionId<RegionParams> = ActionId::new("cluster.kubeconfig");
const VERIFY: ActionId<VerifyParams> = ActionId::new("cluster.verify");
const CILIUM_SETTLED: ActionId<RegionParams> = ActionId::new("cluster.cilium-settled");

pub fn register(r: &mut Registry) {
    r.register(SSH, action!(ssh, no_undo));
    r.register(JOIN_TOKEN, action!(join_token, join_token_undo));
    r.register(K3S_STEP, action!(k3s, k3s_undo));
    r.register(CILIUM, action!(cilium, no_undo));
    r.register(KUBECONFIG, action!(kubeconfig, kubeconfig_undo));
    r.register(VERIFY, action!(verify, no_undo));
    r.register(CILIUM_SETTLED, action!(cilium_settled, cilium_settled_undo));
}

pub fn phase(regions: &[Region]) -> PhaseDef {
    let mut b = PhaseBuilder::overlapping(PHASE);
    for r in regions {
        let l = &r.location;
        let mut cps: Vec<String> = crate::infra::server_suffixes(r).collect();
        let ws = cps.split_off(r.control_plane.count as usize);
        let tok = format!("join-token-{l}");
        let lb = crate::infra::load_balancer_node(l);
        b.step(&tok, JOIN_TOKEN, &[], RegionParams::new(l));
        for (i, s) in cps.iter().chain(ws.iter()).enumerate() {
            let role = if i < cps.len() { "control-plane" } else { "worker" };
            let p = NodeParams { location: l.clone(), suffix: s.clone(), role: role.into() };
            b.step(&format!("ssh-{s}"), SSH, &[&crate::infra::server_node(s)], p);
        }
        let mut servers: Vec<String> = Vec::new();
        for (i, s) in cps.iter().enumerate() {
            let name = format!("k3s-{s}");
            let ssh = format!("ssh-{s}");
            let mut after = vec![ssh.as_str(), tok.as_str(), lb.as_str()];
            let prev: Option<String> = servers.last().cloned();
            if let Some(p) = &prev {
                after.push(p.as_str());
            }
            let p = K3sParams {
                location: l.clone(),
                suffix: s.clone(),
                role: "server".into(),
                first: i == 0,
            };
            b.step(&name, K3S_STEP, &after, p);
            servers.push(name);
        }
        let first = servers[0].clone();
        let mut agents = Vec::new();
        for s in &ws {
            let name = format!("k3s-{s}");
            let ssh = format!("ssh-{s}");
            let p = K3sParams {
                location: l.clone(),
                suffix: s.clone(),
                role: "agent".into(),
                first: false,
            };
            b.step(&name, K3S_STEP, &[ssh.as_str(), first.as_str(), lb.as_str()], p);
            agents.push(name);
        }
        let cil = format!("cilium-{l}");
        b.step(&cil, CILIUM, &[first.as_str()], RegionParams::new(l));
        let kc = format!("kubeconfig-{l}");
        let mut after: Vec<&str> = servers.iter().map(String::as_str).collect();
        after.push(&cil);
        b.step(&kc, KUBECONFIG, &after, RegionParams::new(l));
        let mut after: Vec<&str> = agents.iter().map(String::as_str).collect();
        after.push(&kc);
        let verify = format!("verify-{l}");
        let p = VerifyParams {
            location: l.clone(),
            servers: r.control_plane.count,
            agents: r.workers.count,
        };
        b.step(&verify, VERIFY, &after, p);
        b.step(
            &format!("cilium-settled-{l}"),
            CILIUM_SETTLED,
            &[verify.as_str()],
            RegionParams::new(l),
        );
    }
    b.build()
}

// --- steps ---------------------------------------------------------------

/// This node's region (every step of this phase names it in its params,
/// under `location`).
fn location(cx: &StepCtx) -> StepResult<String> {
    Ok(cx.params::<RegionParams>()?.location)
}

/// The server `suffix` as `infra/apply-<loc>` released it; a job planned
/// before the bring-up was pipelined reads the region's outputs instead.
fn released_server(cx: &StepCtx, suffix: &str) -> StepResult<Server> {
    if let Ok(s) = cx.lookup::<Server>(&crate::infra::server_node(suffix)) {
        return Ok(s);
    }
    let out: Outputs = cx.lookup(&format!("infra/outputs-{}", location(cx)?))?;
    out.servers
        .iter()
        .find(|s| s.name.ends_with(&format!("-{suffix}")))
        .cloned()
        .ok_or_else(|| StepError::MissingOutput { name: format!("{}: server *-{suffix}", cx.node) })
}

/// The region's load balancer as `infra/apply-<loc>` released it (or, for
/// a job planned before, its outputs).
fn load_balancer(cx: &StepCtx) -> StepResult<LoadBalancer> {
    let loc = location(cx)?;
    if let Ok(lb) = cx.lookup::<LoadBalancer>(&crate::infra::load_balancer_node(&loc)) {
        return Ok(lb);
    }
    let out: Outputs = cx.lookup(&format!("infra/outputs-{loc}"))?;
    Ok(out.load_balancer)
}

fn host(cx: &StepCtx, s: &Server) -> Host {
    Host {
        name: s.name.clone(),
        address: s.ipv4.clone(),
        port: cx.env.ssh_port,
        user: "root".into(),
    }
}

/// A node's absolute path as a shell word, rooted at `$CZ_NODE_ROOT` (unset
/// on real nodes; see [`crate::exec::ssh::NODE_ROOT_VAR`]).
fn at(path: &str) -> String {
    format!("\"${{CZ_NODE_ROOT:-}}{path}\"")
}

/// The files of the artifact directory, in upload order.
pub const ARTIFACT_FILES: [&str; 2] = ["k3s", "install.sh"];
pub const SUMS_FILE: &str = "SHA256SUMS";

async fn ssh(cx: &StepCtx) -> StepResult<Pinned> {
    let NodeParams { suffix, .. } = cx.params()?;
    let s = released_server(cx, &suffix)?;
    let h = host(cx, &s);
    let fp = match wait_ssh(cx, &s, &h).await {
        Err(waited @ StepError::Timeout { .. }) => {
            // No SSH within the bound: ask the cloud why, and act once.
            let loc = location(cx)?;
            let token = crate::common::region_token(cx, &loc).await?;
            let (obj, action) = revive(cx, &token, &s, &waited).await?;
            match wait_ssh(cx, &s, &h).await {
                Err(again @ StepError::Timeout { .. }) => {
                    return Err(replace(cx, &token, &loc, &obj, action, &again).await?);
                }
                r => r?,
            }
        }
        r => r?,
    };
    Ok(Pinned { host: h, fingerprint: fp, server: s })
}

/// Waits (bounded by `host_boot`) for SSH on `s`; its host key.
async fn wait_ssh(cx: &StepCtx, s: &Server, h: &Host) -> StepResult<String> {
    cx.wait_for(
        &format!("SSH on {} ({}) to accept connections", s.name, s.ipv4),
        cx.env.bounds.host_boot,
        || async {
            match cx.env.ssh.probe(h).await {
                Ok(fp) => Ok(Some(fp)),
                Err(StepError::Adapter { cause: Cause::Network | Cause::Unavailable, .. }) => {
                    Ok(None)
                }
                Err(e) => Err(e),
            }
        },
    )
    .await
}

/// A server that did not boot in time (`waited` says how long), by what
/// the cloud says of it: `off` is powered on; any other state (a boot that
/// hung) gets one hard reset. A server gone from the cloud is an
/// operator's: the region's apply makes it again. The server as the
/// cloud showed it, and the action taken.
async fn revive(
    cx: &StepCtx,
    token: &SecretString,
    s: &Server,
    waited: &StepError,
) -> StepResult<(CloudObject, ServerAction)> {
    let Some(obj) = cx.env.cloud.object(token, "server", s.id).await? else {
        return Err(gone(cx, s, waited));
    };
    let status = obj.attrs.get("status").and_then(Value::as_str).unwrap_or("unknown");
    let action = if status == "off" { ServerAction::Poweron } else { ServerAction::Reset };
    let doing = match action {
        ServerAction::Poweron => "powering it on",
        ServerAction::Reset => "resetting it once",
    };
    cx.event(
        "server",
        json!({ "server": s.name, "id": s.id, "status": status, "action": action,
                "message": format!("{} ({}) is `{status}` and did not answer: {waited}; {doing}",
                                   s.name, s.id) }),
    )
    .await?;
    match cx.env.cloud.server_action(token, s.id, action).await {
        Err(StepError::Adapter { cause: Cause::NotFound, .. }) => Err(gone(cx, s, waited)),
        r => r.map(|()| (obj, action)),
    }
}

/// A server (`obj`) that did not boot even after [`revive`]'s `action`,
/// when another server of its region (`loc`) did: deleted (gone already
/// is done), so the region's next apply makes a new one (tofu's refresh,
/// and the offline module's drift check, see it gone). The job then waits
/// for an operator: a retry of `infra` replaces it, and this step runs
/// again on the new one.
async fn replace(
    cx: &StepCtx,
    token: &SecretString,
    loc: &str,
    obj: &CloudObject,
    action: ServerAction,
    again: &StepError,
) -> StepResult<StepError> {
    // Deleting takes evidence that the fault is this server's: another
    // server of the region answered SSH. When none did, the daemon's
    // reach (a firewall, the SSH port) is as likely at fault, and nothing
    // is deleted.
    let prefix = format!("{PHASE}/ssh-{loc}-");
    let answered =
        cx.node_states_now().await?.into_iter().any(|(node, state)| {
            node.starts_with(&prefix) && node != cx.node && state.is_satisfied()
        });
    if !answered {
        return Ok(StepError::Precondition {
            message: format!(
                "no server of region {loc} answered SSH on port {}: after a {} of {} ({}) it \
                 still {again}",
                cx.env.ssh_port,
                action.as_str(),
                obj.name,
                obj.id
            ),
            remediation: format!(
                "Check that this daemon reaches the region's servers on SSH port {} (the \
                 servers' firewall, the `ssh_port` setting, routes), then `catalyst-zero retry \
                 {}`. Nothing was deleted.",
                cx.env.ssh_port, cx.job_id
            ),
        });
    }
    cx.env.cloud.delete(token, obj).await?;
    let message = format!(
        "server {} ({}) never booted: after a {} it still {again}; it was deleted",
        obj.name,
        obj.id,
        action.as_str()
    );
    cx.event(
        "server",
        json!({ "server": obj.name, "id": obj.id, "action": "delete", "message": message }),
    )
    .await?;
    Ok(StepError::Precondition {
        message,
        remediation: format!("{} The other nodes went on without it.", retry_infra(cx)),
    })
}

fn gone(cx: &StepCtx, s: &Server, waited: &StepError) -> StepError {
    StepError::Precondition {
        message: format!("{waited}, and the cloud has no server {} ({}): it is gone", s.name, s.id),
        remediation: retry_infra(cx),
    }
}

/// The remedy for a server that is gone: the region's apply again.
fn retry_infra(cx: &StepCtx) -> String {
    format!(
        "`catalyst-zero retry {} --phase infra`: the region's apply creates the server again \
         and this step runs on the new one.",
        cx.job_id
    )
}

/// A server's host with its pinned host key.
fn pinned(cx: &StepCtx, suffix: &str) -> StepResult<(Host, String, Server)> {
    let p: Pinned = cx.lookup(&format!("cluster/ssh-{suffix}"))?;
    Ok((p.host, p.fingerprint, p.server))
}

/// The region's first control plane (`<loc>-cp1`) with its pinned SSH host.
fn first_server(cx: &StepCtx) -> StepResult<(Host, String, Server)> {
    pinned(cx, &format!("{}-cp1", location(cx)?))
}

fn token_name(loc: &str) -> String {
    format!("k3s-token-{loc}")
}

async fn join_token(cx: &StepCtx) -> StepResult<SecretRef> {
    let name = token_name(&location(cx)?);
    if cx.secret_opt(&name).await?.is_none() {
        let bytes: [u8; 32] = rand::random();
        cx.put_secret(&name, &SecretString::new(hex::encode(bytes))).await?;
    }
    Ok(SecretRef { secret: name })
}

async fn join_token_undo(cx: &StepCtx) -> StepResult<()> {
    cx.delete_secret(&token_name(&location(cx)?)).await
}

/// The artifacts the release manifest pins no sha256 for (yet).
pub fn unpinned_artifacts() -> Vec<&'static str> {
    ARTIFACT_FILES.into_iter().filter(|n| release::k3s_pin(n).is_none()).collect()
}

/// Reads the artifact directory and checks every file against its
/// `SHA256SUMS` line; a missing, unlisted or altered file stops the step
/// before anything is uploaded.
pub fn verified_artifacts(dir: &std::path::Path) -> StepResult<Vec<(String, Vec<u8>, String)>> {
    verified_artifacts_pinned(dir, &|name| release::k3s_pin(name).map(str::to_owned))
}

/// [`verified_artifacts`], then each file against `pin(name)`, the
/// release manifest's sha256 when it has one: a directory whose
/// SHA256SUMS agrees with a replaced file still fails here.
pub fn verified_artifacts_pinned(
    dir: &std::path::Path,
    pin: &dyn Fn(&str) -> Option<String>,
) -> StepResult<Vec<(String, Vec<u8>, String)>> {
    let out = self_consistent_artifacts(dir)?;
    for (name, _, got) in &out {
        if let Some(want) = pin(name)
            && !want.eq_ignore_ascii_case(got)
        {
            return Err(precondition(
                format!(
                    "{} has sha256 {got}; the release manifest pins {want} for k3s {}: not the \
                     release's {name}",
                    dir.join(name).display(),
                    release::k3s_version()
                ),
                "Replace the artifact directory with the pinned release's files (see \
                 docs/configuration.md, Air-gap artifacts); nothing was copied to a node.",
            ));
        }
    }
    Ok(out)
}

#[cfg(test)]
fn sha256_hex(bytes: &[u8]) -> String {
    hex::encode(<sha2::Sha256 as sha2::Digest>::digest(bytes))
}

/// Every artifact against its own directory's SHA256SUMS.
fn self_consistent_artifacts(dir: &std::path::Path) -> StepResult<Vec<(String, Vec<u8>, String)>> {
    let bad = |m: String| {
        precondition(
            m,
            "Populate the artifact directory with the release's k3s binary, install.sh and their SHA256SUMS (see docs/configuration.md, Air-gap artifacts).",
        )
    };
    let sums = std::fs::read_to_string(dir.join(SUMS_FILE))
        .map_err(|e| bad(format!("{}: {e}", dir.join(SUMS_FILE).display())))?;
    let mut out = Vec::new();
    for name in ARTIFACT_FILES {
        let want = sums
            .lines()
            .filter_map(|l| l.split_once(char::is_whitespace))
            .find(|(_, f)| f.trim().trim_start_matches('*') == name)
            .map(|(h, _)| h.to_ascii_lowercase())
            .ok_or_else(|| {
                bad(format!("{SUMS_FILE} in {} has no line for `{name}`", dir.display()))
            })?;
        let body = std::fs::read(dir.join(name))
            .map_err(|e| bad(format!("{}: {e}", dir.join(name).display())))?;
        let got = hex::encode(<sha2::Sha256 as sha2::Digest>::digest(&body));
        if got != want {
            return Err(bad(format!(
                "{} has sha256 {got}, {SUMS_FILE} says {want}: corrupted or replaced",
                dir.join(name).display()
            )));
        }
        out.push((name.to_owned(), body, got));
    }
    Ok(out)
}

/// Uploads the verified artifacts a node lacks (by remote checksum).
async fn upload_artifacts(
    cx: &StepCtx,
    h: &Host,
    fp: &str,
    k: &ProvisionerKey,
) -> StepResult<Vec<String>> {
    let K3sSource::AirGap { dir } = &cx.env.k3s else { return Ok(Vec::new()) };
    let unpinned = unpinned_artifacts();
    if !unpinned.is_empty() {
        let message = format!(
            "the release manifest pins no sha256 for {}: checked against the directory's own \
             SHA256SUMS only",
            unpinned.join(", ")
        );
        cx.event("ssh", json!({ "host": h.name, "message": message })).await?;
    }
    let mut sent = Vec::new();
    for (name, body, sha) in verified_artifacts(dir)? {
        let dest = format!("{ARTIFACTS}/{name}");
        let have = cx.env.ssh.run(h, fp, k, &format!("sha256sum {}", at(&dest))).await?;
        if have.status == 0 && have.stdout.starts_with(&sha) {
            continue;
        }
        cx.env.ssh.upload(h, fp, k, &dest, &body, 0o755).await?;
        sent.push(name);
    }
    Ok(sent)
}

/// This Sovereign's provisioner key (made by `infra/provisioner-key`).
async fn key(cx: &StepCtx) -> StepResult<ProvisionerKey> {
    ProvisionerKey::from_private(cx.secret(PROVISIONER_KEY).await?)
}

async fn run_ok(
    cx: &StepCtx,
    h: &Host,
    fp: &str,
    k: &ProvisionerKey,
    cmd: &str,
) -> StepResult<String> {
    let out = cx.env.ssh.run(h, fp, k, cmd).await?;
    if out.status != 0 {
        return Err(command_failed(cmd, &out));
    }
    Ok(out.stdout)
}

async fn k3s(cx: &StepCtx) -> StepResult<K3sInstalled> {
    let K3sParams { location: loc, suffix, role, first } = cx.params()?;
    let (h, fp, me) = pinned(cx, &suffix)?;
    let lb = load_balancer(cx)?;
    let k = key(cx).await?;
    let first_ip = first_server(cx)?.2.node_ip().to_owned();
    // Guard: installed at this version already? Then nothing to do.
    if cx.env.ssh.run(&h, &fp, &k, &format!("test -f {}", at(&marker()))).await?.status == 0 {
        return Ok(K3sInstalled {
            host: h.name,
            role,
            version: release::k3s_version().into(),
            already_installed: true,
            artifacts_uploaded: Vec::new(),
        });
    }
    let sent = upload_artifacts(cx, &h, &fp, &k).await?;
    let token = cx.secret(&token_name(&loc)).await?;
    let cfg =
        k3s_config(&role, first, token.expose(), &first_ip, me.node_ip(), &lb.ipv4, &fqdn(cx)?);
    cx.env.ssh.upload(&h, &fp, &k, "/etc/rancher/k3s/config.yaml", cfg.as_bytes(), 0o600).await?;
    cx.env
        .ssh
        .upload(
            &h,
            &fp,
            &k,
            "/var/lib/catalyst/k3s-install.sh",
            install_script(&role, &cx.env.k3s).as_bytes(),
            0o700,
        )
        .await?;
    run_ok(cx, &h, &fp, &k, &format!("sh {}", at("/var/lib/catalyst/k3s-install.sh"))).await?;
    run_ok(cx, &h, &fp, &k, &format!("touch {}", at(&marker()))).await?;
    cx.event("ssh", json!({ "host": h.name, "message": format!("k3s {} installed as {role}", release::k3s_version()), "artifacts_uploaded": sent })).await?;
    Ok(K3sInstalled {
        host: h.name,
        role,
        version: release::k3s_version().into(),
        already_installed: false,
        artifacts_uploaded: sent,
    })
}

async fn k3s_undo(cx: &StepCtx) -> StepResult<()> {
    let K3sParams { suffix, role, .. } = cx.params()?;
    let Ok((h, fp, _)) = pinned(cx, &suffix) else { return Ok(()) };
    let script = if role == "server" {
        "/usr/local/bin/k3s-uninstall.sh"
    } else {
        "/usr/local/bin/k3s-agent-uninstall.sh"
    };
    // Absent script = never installed or already uninstalled.
    let k = key(cx).await?;
    if cx.env.ssh.run(&h, &fp, &k, &format!("test -f {}", at(script))).await?.status == 0 {
        run_ok(cx, &h, &fp, &k, &format!("sh {}", at(script))).await?;
    }
    run_ok(cx, &h, &fp, &k, &format!("rm -f {}", at(&marker()))).await?;
    Ok(())
}

async fn cilium(cx: &StepCtx) -> StepResult<CiliumChart> {
    let (h, fp, first) = first_server(cx)?;
    let body = cilium_manifest(first.node_ip())?;
    cx.env.ssh.upload(&h, &fp, &key(cx).await?, CILIUM_MANIFEST, body.as_bytes(), 0o600).await?;
    Ok(CiliumChart {
        chart_version: release::cilium_chart_version().into(),
        k8s_service_host: first.node_ip().to_owned(),
    })
}

/// K3s applies its manifests directory at every start, not once (as K3s
/// documents it): left active, `cilium.yaml` would re-create the Cilium
/// HelmChart at the first server's next restart, after the kit handed
/// Cilium to bp-cilium, and two installers would manage one release. Once
/// the nodes are Ready the manifest has done its work (its HelmChart
/// exists and installed the CNI), so `cilium.yaml.skip` suppresses it from
/// then on. Skipping (or removing) a manifest deletes none of its objects.
async fn cilium_settled(cx: &StepCtx) -> StepResult<Settled> {
    let (h, fp, _) = first_server(cx)?;
    run_ok(cx, &h, &fp, &key(cx).await?, &format!("touch {}", at(CILIUM_SKIP))).await?;
    Ok(Settled { suppressed: CILIUM_MANIFEST.into(), marker: CILIUM_SKIP.into() })
}

async fn cilium_settled_undo(cx: &StepCtx) -> StepResult<()> {
    // A host that is gone has no marker left.
    let Ok((h, fp, _)) = first_server(cx) else { return Ok(()) };
    run_ok(cx, &h, &fp, &key(cx).await?, &format!("rm -f {}", at(CILIUM_SKIP))).await?;
    Ok(())
}

pub(crate) fn kubeconfig_secret(loc: &str) -> String {
    format!("kubeconfig-{loc}")
}

async fn kubeconfig(cx: &StepCtx) -> StepResult<Kubeconfig> {
    let loc = location(cx)?;
    let (h, fp, _) = first_server(cx)?;
    let k = key(cx).await?;
    let raw = run_ok(cx, &h, &fp, &k, &format!("cat {}", at(KUBECONFIG_PATH))).await?;
    if !raw.contains("https://127.0.0.1:6443") {
        return Err(StepError::adapter(
            System::Ssh,
            "kubeconfig",
            Cause::Invalid,
            "k3s.yaml does not point at https://127.0.0.1:6443",
        ));
    }
    let endpoint = format!("https://{}:6443", load_balancer(cx)?.ipv4);
    let rewritten = SecretString::new(raw.replace("https://127.0.0.1:6443", &endpoint));
    // the endpoint we hand over must answer, over TLS verified with
    // the cluster's CA for that address, before it is stored as the
    // Sovereign's kubeconfig. Not up yet (the LB's health checks) is waited
    // for; a certificate without the SAN is an operator's to fix.
    let version = cx
        .wait_for(
            &format!("the Kubernetes API to answer at {endpoint} with a verified certificate"),
            cx.env.bounds.api_endpoint,
            || async {
                match cx.env.kube.server_version(&rewritten).await {
                    Ok(v) => Ok(Some(v)),
                    Err(StepError::Adapter {
                        cause: Cause::Network | Cause::Unavailable, ..
                    }) => Ok(None),
                    Err(e) => Err(e),
                }
            },
        )
        .await?;
    cx.put_secret(&kubeconfig_secret(&loc), &rewritten).await?;
    Ok(Kubeconfig { endpoint, secret: kubeconfig_secret(&loc), server_version: version })
}

async fn kubeconfig_undo(cx: &StepCtx) -> StepResult<()> {
    cx.delete_secret(&kubeconfig_secret(&location(cx)?)).await
}

/// The region's kubeconfig, for later phases.
pub async fn kubeconfig_for(cx: &StepCtx, loc: &str) -> StepResult<SecretString> {
    cx.secret(&kubeconfig_secret(loc)).await
}

async fn verify(cx: &StepCtx) -> StepResult<ClusterVerified> {
    let VerifyParams { servers: want_servers, agents: want_agents, .. } = cx.params()?;
    let (h, fp, _) = first_server(cx)?;
    let k = key(cx).await?;
    let counts = cx
        .wait_for(
            &format!(
                "{} nodes Ready ({want_servers} servers, {want_agents} agents)",
                want_servers + want_agents
            ),
            cx.env.bounds.nodes_ready,
            || async {
                let text =
                    run_ok(cx, &h, &fp, &k, &format!("{} kubectl get nodes -o json", at(K3S)))
                        .await?;
                let list: Value = serde_json::from_str(&text).map_err(|e| {
                    StepError::adapter(
                        System::Kubernetes,
                        "get nodes",
                        Cause::Invalid,
                        e.to_string(),
                    )
                })?;
                let nodes = list["items"].as_array().cloned().unwrap_or_default();
                let ready = |n: &Value| {
                    n.pointer("/status/conditions").and_then(Value::as_array).is_some_and(|cs| {
                        cs.iter().any(|c| c["type"] == "Ready" && c["status"] == "True")
                    })
                };
                let servers = nodes
                    .iter()
                    .filter(|n| {
                        ready(n)
                            && n.pointer("/metadata/labels/catalyst.openova.io~1role")
                                .and_then(Value::as_str)
                                == Some("control-plane")
                    })
                    .count() as u32;
                let total = nodes.iter().filter(|n| ready(n)).count() as u32;
                Ok((servers == want_servers && total == want_servers + want_agents)
                    .then_some((servers, total)))
            },
        )
        .await?;
    // Etcd members: every server carries K3s's etcd role label once it has
    // joined the embedded etcd (three servers must be one cluster).
    let nodes: Value = serde_json::from_str(
        &run_ok(cx, &h, &fp, &k, &format!("{} kubectl get nodes -o json", at(K3S))).await?,
    )
    .map_err(|e| {
        StepError::adapter(System::Kubernetes, "get nodes", Cause::Invalid, e.to_string())
    })?;
    let etcd = nodes["items"]
        .as_array()
        .map(|items| {
            items
                .iter()
                .filter(|n| {
                    n.pointer("/metadata/labels/node-role.kubernetes.io~1etcd")
                        .and_then(Value::as_str)
                        == Some("true")
                })
                .count() as u32
        })
        .unwrap_or(0);
    if etcd != want_servers {
        return Err(StepError::adapter(
            System::Kubernetes,
            "etcd members",
            Cause::Invalid,
            format!(
                "{etcd} etcd members, {want_servers} servers: the servers did not join one cluster"
            ),
        ));
    }
    let coredns = cx
        .wait_for("CoreDNS to have an available replica", cx.env.bounds.coredns, || async {
            let o = cx
                .env
                .ssh
                .run(
                    &h,
                    &fp,
                    &k,
                    &format!("{} kubectl -n kube-system get deployment coredns -o json", at(K3S)),
                )
                .await?;
            if o.status != 0 {
                return Ok(None);
            }
            let d: Value = serde_json::from_str(&o.stdout).unwrap_or(Value::Null);
            let available =
                d.pointer("/status/availableReplicas").and_then(Value::as_u64).unwrap_or(0);
            Ok((available >= 1).then_some(available))
        })
        .await?;
    Ok(ClusterVerified {
        ready_servers: counts.0,
        ready_nodes: counts.1,
        etcd_members: etcd,
        coredns_available: coredns,
    })
}

#[cfg(test)]
mod tests {
    use crate::testing::{phase_tests, sample_request};

    phase_tests!(super::PHASE, sample_request("cluster", 3, 1));

    /// An air-gap directory of `files` with a SHA256SUMS that agrees.
    fn dir_of(files: &[(&str, &str)]) -> tempfile::TempDir {
        let d = tempfile::tempdir().unwrap();
        let mut sums = String::new();
        for (name, body) in files {
            std::fs::write(d.path().join(name), body).unwrap();
            sums.push_str(&format!("{}  {name}\n", super::sha256_hex(body.as_bytes())));
        }
        std::fs::write(d.path().join(super::SUMS_FILE), sums).unwrap();
        d
    }

    /// A replaced file whose SHA256SUMS line was replaced with it passes
    /// the directory's own check, and fails against the release's pin.
    #[test]
    fn artifacts_are_checked_against_the_release_pins() {
        let d = dir_of(&[("k3s", "the binary"), ("install.sh", "#!/bin/sh\n")]);
        let real = super::sha256_hex(b"the binary");
        let none = |_: &str| None::<String>;
        assert_eq!(super::verified_artifacts_pinned(d.path(), &none).unwrap().len(), 2);
        let pinned = |n: &str| (n == "k3s").then(|| real.clone());
        assert!(super::verified_artifacts_pinned(d.path(), &pinned).is_ok());
        let other = "0".repeat(64);
        let wrong = |n: &str| (n == "k3s").then(|| other.clone());
        let e = super::verified_artifacts_pinned(d.path(), &wrong).unwrap_err().to_string();
        assert!(e.contains("release manifest pins") && e.contains("k3s"), "{e}");
        // The shipped manifest names both artifacts (empty until the
        // release pipeline fills them).
        let manifest = crate::release::MANIFEST;
        assert!(manifest.contains("[k3s.sha256]") && manifest.contains("\"install.sh\""));
    }
}
