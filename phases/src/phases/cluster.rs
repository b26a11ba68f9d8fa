//! Phase 3, `cluster`: K3s and Cilium over SSH, kubeconfig verified.
//!
//! Per region: one `ssh-<server>` node per server (connect with a bounded,
//! reasoned wait while the host boots, pin the host key on first contact);
//! a random join token held encrypted in the store (never derived from
//! inputs, F-13); the first server with `--cluster-init`, the others joining
//! it one at a time with `--server`, agents joining in parallel with
//! `K3S_URL`; Cilium as a K3s HelmChart manifest at the release manifest's
//! version (F-35); the kubeconfig rewritten to the load balancer on 6443,
//! stored encrypted; and a verification that counts Ready nodes and servers.
//!
//! Every remote command is guarded by a marker file so a re-run after a
//! crash installs nothing twice.
//!
//! TODO(cluster issue): ssh2 adapter, artifact directory (air-gap) upload
//! with checksum verification, TLS-verified API check through the LB (F-12),
//! etcd member count via etcdctl, CoreDNS readiness.

use cz_state::SecretString;
use serde_json::{Value, json};

use super::infra::{Outputs, Server};
use super::{action, command_failed, fqdn, no_undo, precondition, release};
use crate::adapters::{Host, K3sSource, ProvisionerKey};
use crate::exec::ssh::shell_quote;
use crate::plan::{PhaseBuilder, PhaseDef};
use crate::request::Region;
use crate::step::{Registry, StepCtx, StepResult};
use crate::{Cause, StepError, System};

pub const PHASE: &str = "cluster";
const KUBECONFIG_PATH: &str = "/etc/rancher/k3s/k3s.yaml";
const K3S: &str = "/usr/local/bin/k3s";
/// The Cilium HelmChart manifest on the first server, and its `.skip`.
const CILIUM_MANIFEST: &str = "/var/lib/rancher/k3s/server/manifests/cilium.yaml";
const CILIUM_SKIP: &str = "/var/lib/rancher/k3s/server/manifests/cilium.yaml.skip";

pub fn register(r: &mut Registry) {
    r.register("cluster.ssh", action!(ssh, no_undo));
    r.register("cluster.join-token", action!(join_token, join_token_undo));
    r.register("cluster.k3s", action!(k3s, k3s_undo));
    r.register("cluster.cilium", action!(cilium, no_undo));
    r.register("cluster.kubeconfig", action!(kubeconfig, kubeconfig_undo));
    r.register("cluster.verify", action!(verify, no_undo));
    r.register("cluster.cilium-settled", action!(cilium_settled, cilium_settled_undo));
}

fn server_names(slug_loc: &str, r: &Region) -> (Vec<String>, Vec<String>) {
    let cps = (1..=r.control_plane.count).map(|i| format!("{slug_loc}-cp{i}")).collect();
    let ws = (1..=r.workers.count).map(|i| format!("{slug_loc}-w{i}")).collect();
    (cps, ws)
}

pub fn phase(regions: &[Region]) -> PhaseDef {
    let mut b = PhaseBuilder::new(PHASE);
    for r in regions {
        let l = &r.location;
        let (cps, ws) = server_names(l, r);
        let tok = format!("join-token-{l}");
        b.step(&tok, "cluster.join-token", &[], json!({ "location": l }));
        for (i, s) in cps.iter().chain(ws.iter()).enumerate() {
            let role = if i < cps.len() { "control-plane" } else { "worker" };
            b.step(
                &format!("ssh-{s}"),
                "cluster.ssh",
                &[],
                json!({ "location": l, "suffix": s, "role": role }),
            );
        }
        let mut servers: Vec<String> = Vec::new();
        for (i, s) in cps.iter().enumerate() {
            let name = format!("k3s-{s}");
            let ssh = format!("ssh-{s}");
            let mut after = vec![ssh.as_str(), tok.as_str()];
            let prev: Option<String> = servers.last().cloned();
            if let Some(p) = &prev {
                after.push(p.as_str());
            }
            let p = json!({ "location": l, "suffix": s, "role": "server", "first": i == 0 });
            b.step(&name, "cluster.k3s", &after, p);
            servers.push(name);
        }
        let first = servers[0].clone();
        let mut agents = Vec::new();
        for s in &ws {
            let name = format!("k3s-{s}");
            let ssh = format!("ssh-{s}");
            b.step(
                &name,
                "cluster.k3s",
                &[ssh.as_str(), first.as_str()],
                json!({ "location": l, "suffix": s, "role": "agent", "first": false }),
            );
            agents.push(name);
        }
        let cil = format!("cilium-{l}");
        b.step(&cil, "cluster.cilium", &[first.as_str()], json!({ "location": l }));
        let kc = format!("kubeconfig-{l}");
        let mut after: Vec<&str> = servers.iter().map(String::as_str).collect();
        after.push(&cil);
        b.step(&kc, "cluster.kubeconfig", &after, json!({ "location": l }));
        let mut after: Vec<&str> = agents.iter().map(String::as_str).collect();
        after.push(&kc);
        let verify = format!("verify-{l}");
        b.step(
            &verify,
            "cluster.verify",
            &after,
            json!({ "location": l, "servers": r.control_plane.count, "agents": r.workers.count }),
        );
        b.step(
            &format!("cilium-settled-{l}"),
            "cluster.cilium-settled",
            &[verify.as_str()],
            json!({ "location": l }),
        );
    }
    b.build()
}

fn outputs(cx: &StepCtx) -> StepResult<Outputs> {
    let loc: String = cx.param("location")?;
    cx.lookup(&format!("infra/outputs-{loc}"))
}

fn server_by_suffix(cx: &StepCtx, out: &Outputs, suffix: &str) -> StepResult<Server> {
    out.servers
        .iter()
        .find(|s| s.name.ends_with(&format!("-{suffix}")))
        .cloned()
        .ok_or_else(|| StepError::MissingOutput { name: format!("{}: server *-{suffix}", cx.node) })
}

fn host(cx: &StepCtx, s: &Server) -> Host {
    Host {
        name: s.name.clone(),
        address: s.ipv4.clone(),
        port: cx.backend.ssh_port,
        user: "root".into(),
    }
}

/// A node's absolute path as a shell word, rooted at `$CZ_NODE_ROOT` (unset
/// on real nodes; see [`crate::exec::ssh::NODE_ROOT_VAR`]).
fn at(path: &str) -> String {
    format!("\"${{CZ_NODE_ROOT:-}}{path}\"")
}

/// Where the air-gap artifacts go on a node.
const ARTIFACTS: &str = "/var/lib/catalyst/artifacts";
/// The files of the artifact directory, in upload order.
pub const ARTIFACT_FILES: [&str; 2] = ["k3s", "install.sh"];
pub const SUMS_FILE: &str = "SHA256SUMS";

async fn ssh(cx: &StepCtx) -> StepResult<Value> {
    let out = outputs(cx)?;
    let suffix: String = cx.param("suffix")?;
    let s = server_by_suffix(cx, &out, &suffix)?;
    let h = host(cx, &s);
    let fp = cx
        .wait_for(
            &format!("SSH on {} ({}) to accept connections", s.name, s.ipv4),
            cx.backend.bounds.host_boot,
            || async {
                match cx.backend.ssh.probe(&h).await {
                    Ok(fp) => Ok(Some(fp)),
                    Err(StepError::Adapter {
                        cause: Cause::Network | Cause::Unavailable, ..
                    }) => Ok(None),
                    Err(e) => Err(e),
                }
            },
        )
        .await?;
    Ok(json!({ "host": h, "fingerprint": fp, "server": s }))
}

fn pinned(cx: &StepCtx, suffix: &str) -> StepResult<(Host, String, Server)> {
    let v: Value = cx.lookup(&format!("cluster/ssh-{suffix}"))?;
    let h: Host = serde_json::from_value(v["host"].clone())
        .map_err(|e| StepError::internal(e.to_string()))?;
    let s: Server = serde_json::from_value(v["server"].clone())
        .map_err(|e| StepError::internal(e.to_string()))?;
    let fp = v["fingerprint"].as_str().unwrap_or_default().to_owned();
    Ok((h, fp, s))
}

/// The region's first control plane with its pinned SSH host.
fn first_server(cx: &StepCtx, out: &Outputs) -> StepResult<(Host, String, Server)> {
    let first = out
        .servers
        .iter()
        .find(|s| s.role == "control-plane")
        .ok_or_else(|| StepError::MissingOutput { name: "control plane".into() })?;
    let suffix = format!("{}-{}", out.location, first.name.rsplit('-').next().unwrap_or_default());
    pinned(cx, &suffix)
}

fn token_name(loc: &str) -> String {
    format!("k3s-token-{loc}")
}

async fn join_token(cx: &StepCtx) -> StepResult<Value> {
    let loc: String = cx.param("location")?;
    let name = token_name(&loc);
    if cx.secret_opt(&name).await?.is_none() {
        let bytes: [u8; 32] = rand::random();
        cx.put_secret(&name, &SecretString::new(hex::encode(bytes))).await?;
    }
    Ok(json!({ "secret": name }))
}

async fn join_token_undo(cx: &StepCtx) -> StepResult<()> {
    cx.delete_secret(&token_name(&cx.param::<String>("location")?)).await
}

/// The K3s config file (0600 on the node; carries the join token).
pub fn k3s_config(
    role: &str,
    first: bool,
    token: &str,
    first_ip: &str,
    lb_ip: &str,
    fqdn: &str,
) -> String {
    let mut c = format!("token: \"{token}\"\n");
    if role == "server" {
        // The K3s settings the release pins (identical on every server: K3s
        // refuses a join on a "critical configuration value mismatch").
        for (k, v) in release::k3s_server_settings() {
            c.push_str(&format!("{k}: {v}\n"));
        }
        c.push_str("disable:\n");
        for d in release::k3s_disable() {
            c.push_str(&format!("  - {d}\n"));
        }
        c.push_str(&format!("tls-san:\n  - \"{lb_ip}\"\n  - \"api.{fqdn}\"\n"));
        c.push_str("node-label:\n  - \"catalyst.openova.io/role=control-plane\"\n");
        if first {
            c.push_str("cluster-init: true\n");
        } else {
            c.push_str(&format!("server: \"https://{first_ip}:6443\"\n"));
        }
    } else {
        c.push_str(&format!("server: \"https://{first_ip}:6443\"\n"));
        c.push_str("node-label:\n  - \"catalyst.openova.io/role=worker\"\n");
    }
    c
}

/// The wrapper the k3s step runs on a node: the pinned binary into place,
/// then the official installer in air-gap mode (no download), as `server`
/// or `agent`; everything else comes from `/etc/rancher/k3s/config.yaml`.
///
/// It is safe to run twice, even at once, and it survives the daemon:
/// - it ignores SIGHUP and SIGPIPE and writes the installer's output to
///   `k3s-install.log` on the node, so a dropped SSH connection (the daemon
///   killed with SIGKILL) does not kill an install half-way;
/// - it holds a lock on the node for the whole install and writes the
///   version marker as its last act, so a retry while the first run is
///   still going waits for it, then finds the marker and does nothing.
///
/// The marker line is what the sim backend's hosts interpret.
pub fn install_script(role: &str, source: &K3sSource) -> String {
    let exec = if role == "server" { "server" } else { "agent" };
    let v = release::k3s_version();
    let env = format!(
        "INSTALL_K3S_VERSION='{v}' INSTALL_K3S_EXEC='{exec}' INSTALL_K3S_BIN_DIR=\"$R/usr/local/bin\""
    );
    let install = match source {
        K3sSource::Download { script_url, script_sha256, release_url } => {
            let dl = "$R/var/lib/catalyst/k3s-install-online.sh";
            format!(
                "curl -sfL --retry 5 -o \"{dl}\" {url} && \\\n\
                 echo {sha}'  '\"{dl}\" | sha256sum -c - && \\\n\
                 GITHUB_URL={rel} {env} sh \"{dl}\"",
                url = shell_quote(script_url),
                sha = shell_quote(script_sha256),
                rel = shell_quote(release_url),
            )
        }
        K3sSource::AirGap { .. } | K3sSource::Simulated => format!(
            "install -D -m 0755 \"$R{ARTIFACTS}/k3s\" \"$R/usr/local/bin/k3s\" && \\\n\
             INSTALL_K3S_SKIP_DOWNLOAD=true {env} sh \"$R{ARTIFACTS}/install.sh\""
        ),
    };
    format!(
        "#!/bin/sh\n# sim:k3s-install role={role} version={v}\nset -eu\ntrap '' HUP PIPE\n\
         R=\"${{CZ_NODE_ROOT:-}}\"\n\
         mkdir -p \"$R/var/lib/catalyst\"\n\
         exec 9>\"$R/var/lib/catalyst/k3s-install.lock\"\n\
         flock 9\n\
         if [ -f \"$R{marker}\" ]; then echo 'k3s {v} is already installed'; exit 0; fi\n\
         log=\"$R/var/lib/catalyst/k3s-install.log\"\n\
         if ! {{ {install}; }} >\"$log\" 2>&1; then\n\
         \x20 tail -n 40 \"$log\" >&2\n\
         \x20 exit 1\n\
         fi\n\
         touch \"$R{marker}\"\n",
        marker = marker(),
    )
}

/// Reads the artifact directory and checks every file against its
/// `SHA256SUMS` line; a missing, unlisted or altered file stops the step
/// before anything is uploaded.
pub fn verified_artifacts(dir: &std::path::Path) -> StepResult<Vec<(String, Vec<u8>, String)>> {
    let bad = |m: String| {
        precondition(
            m,
            "Populate the artifact directory with the release's k3s binary, install.sh and their SHA256SUMS (see README, Air-gap artifacts).",
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
    let K3sSource::AirGap { dir } = &cx.backend.k3s else { return Ok(Vec::new()) };
    let mut sent = Vec::new();
    for (name, body, sha) in verified_artifacts(dir)? {
        let dest = format!("{ARTIFACTS}/{name}");
        let have = cx.backend.ssh.run(h, fp, k, &format!("sha256sum {}", at(&dest))).await?;
        if have.status == 0 && have.stdout.starts_with(&sha) {
            continue;
        }
        cx.backend.ssh.upload(h, fp, k, &dest, &body, 0o755).await?;
        sent.push(name);
    }
    Ok(sent)
}

/// This Sovereign's provisioner key (made by `infra/provisioner-key`).
async fn key(cx: &StepCtx) -> StepResult<ProvisionerKey> {
    ProvisionerKey::from_private(cx.secret(super::infra::PROVISIONER_KEY).await?)
}

async fn run_ok(
    cx: &StepCtx,
    h: &Host,
    fp: &str,
    k: &ProvisionerKey,
    cmd: &str,
) -> StepResult<String> {
    let out = cx.backend.ssh.run(h, fp, k, cmd).await?;
    if out.status != 0 {
        return Err(command_failed(cmd, &out));
    }
    Ok(out.stdout)
}

fn marker() -> String {
    format!("/var/lib/catalyst/k3s-{}.installed", release::k3s_version())
}

async fn k3s(cx: &StepCtx) -> StepResult<Value> {
    let suffix: String = cx.param("suffix")?;
    let role: String = cx.param("role")?;
    let first: bool = cx.param("first")?;
    let (h, fp, _) = pinned(cx, &suffix)?;
    let loc: String = cx.param("location")?;
    let out = outputs(cx)?;
    let k = key(cx).await?;
    let first_ip = out
        .servers
        .iter()
        .find(|s| s.role == "control-plane")
        .map(|s| s.private_ip.clone())
        .unwrap_or_default();
    // Guard: installed at this version already? Then nothing to do.
    if cx.backend.ssh.run(&h, &fp, &k, &format!("test -f {}", at(&marker()))).await?.status == 0 {
        return Ok(
            json!({ "host": h.name, "role": role, "version": release::k3s_version(), "already_installed": true }),
        );
    }
    let sent = upload_artifacts(cx, &h, &fp, &k).await?;
    let token = cx.secret(&token_name(&loc)).await?;
    let cfg =
        k3s_config(&role, first, token.expose(), &first_ip, &out.load_balancer.ipv4, &fqdn(cx)?);
    cx.backend
        .ssh
        .upload(&h, &fp, &k, "/etc/rancher/k3s/config.yaml", cfg.as_bytes(), 0o600)
        .await?;
    cx.backend
        .ssh
        .upload(
            &h,
            &fp,
            &k,
            "/var/lib/catalyst/k3s-install.sh",
            install_script(&role, &cx.backend.k3s).as_bytes(),
            0o700,
        )
        .await?;
    run_ok(cx, &h, &fp, &k, &format!("sh {}", at("/var/lib/catalyst/k3s-install.sh"))).await?;
    run_ok(cx, &h, &fp, &k, &format!("touch {}", at(&marker()))).await?;
    cx.event("ssh", json!({ "host": h.name, "message": format!("k3s {} installed as {role}", release::k3s_version()), "artifacts_uploaded": sent })).await?;
    Ok(
        json!({ "host": h.name, "role": role, "version": release::k3s_version(), "already_installed": false, "artifacts_uploaded": sent }),
    )
}

async fn k3s_undo(cx: &StepCtx) -> StepResult<()> {
    let suffix: String = cx.param("suffix")?;
    let role: String = cx.param("role")?;
    let Ok((h, fp, _)) = pinned(cx, &suffix) else { return Ok(()) };
    let script = if role == "server" {
        "/usr/local/bin/k3s-uninstall.sh"
    } else {
        "/usr/local/bin/k3s-agent-uninstall.sh"
    };
    // Absent script = never installed or already uninstalled.
    let k = key(cx).await?;
    if cx.backend.ssh.run(&h, &fp, &k, &format!("test -f {}", at(script))).await?.status == 0 {
        run_ok(cx, &h, &fp, &k, &format!("sh {}", at(script))).await?;
    }
    run_ok(cx, &h, &fp, &k, &format!("rm -f {}", at(&marker()))).await?;
    Ok(())
}

/// The Cilium HelmChart, same chart version as bp-cilium (F-35), with
/// `k8sServiceHost` the first server's private IP so agents reach the API
/// too (F-16: 127.0.0.1 only exists on servers), and `bootstrap: true` so
/// the helm-controller runs its install job on the host network with the
/// not-ready tolerations: the CNI must install while there is no pod
/// network yet (F-15).
pub fn cilium_manifest(api_host: &str) -> StepResult<String> {
    let values = super::kit_render::cilium_values(api_host)
        .map_err(|e| StepError::internal(format!("the release's Cilium values: {e}")))?;
    let indented: String = values.lines().map(|l| format!("    {l}\n")).collect();
    Ok(format!(
        "apiVersion: helm.cattle.io/v1\nkind: HelmChart\nmetadata:\n  name: cilium\n  namespace: kube-system\nspec:\n  repo: {repo}\n  chart: {chart}\n  version: \"{v}\"\n  targetNamespace: kube-system\n  bootstrap: true\n  valuesContent: |-\n{indented}",
        repo = release::cilium_repo(),
        chart = release::cilium_chart(),
        v = release::cilium_chart_version()
    ))
}

async fn cilium(cx: &StepCtx) -> StepResult<Value> {
    let out = outputs(cx)?;
    let (h, fp, first) = first_server(cx, &out)?;
    let body = cilium_manifest(&first.private_ip)?;
    cx.backend
        .ssh
        .upload(&h, &fp, &key(cx).await?, CILIUM_MANIFEST, body.as_bytes(), 0o600)
        .await?;
    Ok(
        json!({ "chart_version": release::cilium_chart_version(), "k8s_service_host": first.private_ip }),
    )
}

/// K3s applies its manifests directory at every start, not once (K3s
/// digest §4): left active, `cilium.yaml` would re-create the Cilium
/// HelmChart at the first server's next restart, after the kit handed
/// Cilium to bp-cilium, and two installers would manage one release. Once
/// the nodes are Ready the manifest has done its work (its HelmChart
/// exists and installed the CNI), so `cilium.yaml.skip` suppresses it from
/// then on. Skipping (or removing) a manifest deletes none of its objects.
async fn cilium_settled(cx: &StepCtx) -> StepResult<Value> {
    let out = outputs(cx)?;
    let (h, fp, _) = first_server(cx, &out)?;
    run_ok(cx, &h, &fp, &key(cx).await?, &format!("touch {}", at(CILIUM_SKIP))).await?;
    Ok(json!({ "suppressed": CILIUM_MANIFEST, "marker": CILIUM_SKIP }))
}

async fn cilium_settled_undo(cx: &StepCtx) -> StepResult<()> {
    // A host that is gone has no marker left.
    let Ok(out) = outputs(cx) else { return Ok(()) };
    let Ok((h, fp, _)) = first_server(cx, &out) else { return Ok(()) };
    run_ok(cx, &h, &fp, &key(cx).await?, &format!("rm -f {}", at(CILIUM_SKIP))).await?;
    Ok(())
}

fn kubeconfig_secret(loc: &str) -> String {
    format!("kubeconfig-{loc}")
}

async fn kubeconfig(cx: &StepCtx) -> StepResult<Value> {
    let loc: String = cx.param("location")?;
    let out = outputs(cx)?;
    let (h, fp, _) = first_server(cx, &out)?;
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
    let endpoint = format!("https://{}:6443", out.load_balancer.ipv4);
    let rewritten = SecretString::new(raw.replace("https://127.0.0.1:6443", &endpoint));
    // F-12: the endpoint we hand over must answer, over TLS verified with
    // the cluster's CA for that address, before it is stored as the
    // Sovereign's kubeconfig. Not up yet (the LB's health checks) is waited
    // for; a certificate without the SAN is an operator's to fix.
    let version = cx
        .wait_for(
            &format!("the Kubernetes API to answer at {endpoint} with a verified certificate"),
            cx.backend.bounds.api_endpoint,
            || async {
                match cx.backend.kube.server_version(&rewritten).await {
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
    Ok(
        json!({ "endpoint": endpoint, "secret": kubeconfig_secret(&loc), "server_version": version }),
    )
}

async fn kubeconfig_undo(cx: &StepCtx) -> StepResult<()> {
    cx.delete_secret(&kubeconfig_secret(&cx.param::<String>("location")?)).await
}

/// The region's kubeconfig, for later phases.
pub async fn kubeconfig_for(cx: &StepCtx, loc: &str) -> StepResult<SecretString> {
    cx.secret(&kubeconfig_secret(loc)).await
}

async fn verify(cx: &StepCtx) -> StepResult<Value> {
    let out = outputs(cx)?;
    let want_servers: u32 = cx.param("servers")?;
    let want_agents: u32 = cx.param("agents")?;
    let (h, fp, _) = first_server(cx, &out)?;
    let k = key(cx).await?;
    let counts = cx
        .wait_for(
            &format!(
                "{} nodes Ready ({want_servers} servers, {want_agents} agents)",
                want_servers + want_agents
            ),
            cx.backend.bounds.nodes_ready,
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
    // joined the embedded etcd (F-13: three servers must be one cluster).
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
        .wait_for("CoreDNS to have an available replica", cx.backend.bounds.coredns, || async {
            let o = cx
                .backend
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
    Ok(json!({
        "ready_servers": counts.0,
        "ready_nodes": counts.1,
        "etcd_members": etcd,
        "coredns_available": coredns,
    }))
}
