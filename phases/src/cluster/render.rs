//! What the `cluster` phase writes onto the nodes, rendered from the
//! release manifest: the K3s config, the install wrapper, and the Cilium
//! HelmChart. Pure functions, golden-tested.

use cz_adapters::K3sSource;
use cz_adapters::ssh::shell_quote;
use cz_engine::{StepError, StepResult};

use crate::release;

/// Where the air-gap artifacts go on a node.
pub const ARTIFACTS: &str = "/var/lib/catalyst/artifacts";

/// The K3s config file (0600 on the node; carries the join token).
pub fn k3s_config(
    role: &str,
    first: bool,
    token: &str,
    first_ip: &str,
    node_ip: &str,
    lb_ip: &str,
    fqdn: &str,
) -> String {
    let mut c = format!("token: \"{token}\"\n");
    // The address the node registers and Cilium's tunnel and WireGuard use:
    // the private one where the region has a network, else the public one
    // (K3s would otherwise pick the default route's, the public interface,
    // even beside a private network).
    c.push_str(&format!("node-ip: \"{node_ip}\"\n"));
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

/// The Cilium HelmChart, same chart version as bp-cilium, with
/// `k8sServiceHost` the first server's private IP so agents reach the API
/// too (127.0.0.1 only exists on servers), and `bootstrap: true` so
/// the helm-controller runs its install job on the host network with the
/// not-ready tolerations: the CNI must install while there is no pod
/// network yet.
pub fn cilium_manifest(api_host: &str) -> StepResult<String> {
    let values = crate::bootstrap_kit::render::cilium_values(api_host)
        .map_err(|e| StepError::internal(format!("the release's Cilium values: {e}")))?;
    let indented: String = values.lines().map(|l| format!("    {l}\n")).collect();
    Ok(format!(
        "apiVersion: helm.cattle.io/v1\nkind: HelmChart\nmetadata:\n  name: cilium\n  namespace: kube-system\nspec:\n  repo: {repo}\n  chart: {chart}\n  version: \"{v}\"\n  targetNamespace: kube-system\n  bootstrap: true\n  valuesContent: |-\n{indented}",
        repo = release::cilium_repo(),
        chart = release::cilium_chart(),
        v = release::cilium_chart_version()
    ))
}

/// The file whose presence says K3s is installed at the release's version.
pub fn marker() -> String {
    format!("/var/lib/catalyst/k3s-{}.installed", release::k3s_version())
}
