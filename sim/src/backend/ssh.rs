//! `SimSsh`: hosts are the sim cloud's servers, reached by public IPv4.
//!
//! A host answers only while a SimCloud server has that `ipv4` (otherwise
//! "connection refused", so bounded waits can time out). Its host key is
//! stable (`SHA256:<hex sha256(address)>`) and stored on first contact; a
//! server recreated at the same address presents a new key. Each host has a
//! persistent file map and command log, and `run` is a tiny deterministic
//! shell (see [`SimSsh`]). A script containing the marker line
//! `# sim:k3s-install role=<server|agent> version=<v> [cluster=<c>] [server=<url>]`
//! installs a fake k3s node when run with `sh`.

use std::collections::BTreeMap;
use std::sync::Arc;

use async_trait::async_trait;
use serde_json::{Value, json};
use sha2::{Digest, Sha256};

use super::b64;
use super::cloud::SimCloud;
use super::world::SimWorld;
use cz_adapters::ProvisionerKey;
use cz_adapters::{AdapterResult, CloudObject, CommandOutput, Host, SshApi};
use cz_engine::{Cause, StepError, System};

const SYS: &str = "ssh";
pub const KUBECONFIG_PATH: &str = "/etc/rancher/k3s/k3s.yaml";
pub const K3S_BIN: &str = "/usr/local/bin/k3s";
pub const K3S_TOKEN_PATH: &str = "/var/lib/rancher/k3s/server/token";
pub const K3S_CONFIG_PATH: &str = "/etc/rancher/k3s/config.yaml";
const MARKER: &str = "# sim:k3s-install";
const UNINSTALL_MARKER: &str = "# sim:k3s-uninstall";
/// What the k3s uninstall scripts remove.
const K3S_PREFIXES: [&str; 3] = ["/etc/rancher/", "/var/lib/rancher/", "/usr/local/bin/k3s"];

/// What the sim keeps of a secret on a simulated host's disk: its digest.
/// The world directory lives under the daemon's data dir, which must never
/// hold a secret in clear; the k3s token check compares digests.
fn at_rest(path: &str, contents: &[u8]) -> Vec<u8> {
    if path != K3S_CONFIG_PATH {
        return contents.to_vec();
    }
    let text = String::from_utf8_lossy(contents);
    text.lines()
        .map(|l| match l.trim_start().strip_prefix("token:") {
            Some(v) => format!("token: \"sha256:{}\"", sha_hex(&unquote(v.trim()))),
            None => l.to_owned(),
        })
        .collect::<Vec<_>>()
        .join("\n")
        .into_bytes()
}

/// The digest of a token as configured (clear, or already a digest).
fn token_digest(t: &str) -> String {
    t.strip_prefix("sha256:").map_or_else(|| sha_hex(t), str::to_owned)
}

fn sha_hex(s: &str) -> String {
    hex::encode(Sha256::digest(s.as_bytes()))
}

fn out(status: i32, stdout: impl Into<String>, stderr: impl Into<String>) -> CommandOutput {
    CommandOutput { status, stdout: stdout.into(), stderr: stderr.into() }
}

/// Splits a command line into words (single and double quotes group).
fn words(s: &str) -> Vec<String> {
    let mut v = Vec::new();
    let mut cur = String::new();
    let mut quote: Option<char> = None;
    let mut any = false;
    for c in s.chars() {
        match quote {
            Some(q) if c == q => quote = None,
            Some(_) => cur.push(c),
            None if c == '\'' || c == '"' => {
                quote = Some(c);
                any = true;
            }
            None if c.is_whitespace() => {
                if any || !cur.is_empty() {
                    v.push(std::mem::take(&mut cur));
                    any = false;
                }
            }
            None => cur.push(c),
        }
    }
    if any || !cur.is_empty() {
        v.push(cur);
    }
    // A sim host's node root is `/` (real nodes leave $CZ_NODE_ROOT unset too).
    v.into_iter().map(|w| w.replace("${CZ_NODE_ROOT:-}", "")).collect()
}

/// A k3s install marker found in a script.
#[derive(Clone, Debug, PartialEq)]
struct K3sMarker {
    role: String,
    version: String,
    cluster: Option<String>,
    server: Option<String>,
}

fn parse_marker(script: &str) -> Option<K3sMarker> {
    let line = script.lines().map(str::trim).find(|l| l.starts_with(MARKER))?;
    let kv: BTreeMap<&str, &str> =
        line[MARKER.len()..].split_whitespace().filter_map(|p| p.split_once('=')).collect();
    Some(K3sMarker {
        role: kv.get("role").copied().unwrap_or("").to_owned(),
        version: kv.get("version").copied().unwrap_or("v0.0.0+k3s1").to_owned(),
        cluster: kv.get("cluster").map(|s| (*s).to_owned()),
        server: kv.get("server").map(|s| (*s).to_owned()),
    })
}

/// The keys of `/etc/rancher/k3s/config.yaml` the sim honours.
#[derive(Clone, Debug, Default, PartialEq)]
struct K3sConfig {
    server: Option<String>,
    token: Option<String>,
    node_name: Option<String>,
    node_labels: Vec<(String, String)>,
}

fn unquote(s: &str) -> String {
    let s = s.trim();
    s.strip_prefix('"')
        .and_then(|x| x.strip_suffix('"'))
        .or_else(|| s.strip_prefix('\'').and_then(|x| x.strip_suffix('\'')))
        .unwrap_or(s)
        .to_owned()
}

/// A minimal reader of k3s's flat config YAML (`key: value` and
/// `key:` followed by `- item` lines).
fn parse_k3s_config(text: &str) -> K3sConfig {
    let mut c = K3sConfig::default();
    let mut list_key: Option<String> = None;
    for line in text.lines() {
        let t = line.trim();
        if t.is_empty() || t.starts_with('#') {
            continue;
        }
        if let Some(item) = t.strip_prefix("- ") {
            if list_key.as_deref() == Some("node-label")
                && let Some((k, v)) = unquote(item).split_once('=')
            {
                c.node_labels.push((k.to_owned(), v.to_owned()));
            }
            continue;
        }
        let Some((k, v)) = t.split_once(':') else { continue };
        let (k, v) = (k.trim(), v.trim());
        if v.is_empty() {
            list_key = Some(k.to_owned());
            continue;
        }
        list_key = None;
        match k {
            "server" => c.server = Some(unquote(v)),
            "token" => c.token = Some(unquote(v)),
            "node-name" => c.node_name = Some(unquote(v)),
            _ => {}
        }
    }
    c
}

/// The fake kubeconfig k3s writes on a server node.
pub fn fake_kubeconfig(cluster: &str) -> String {
    let h = sha_hex(&format!("sim-k3s-ca:{cluster}"));
    let ca = format!(
        "-----BEGIN CERTIFICATE-----\n{}\n-----END CERTIFICATE-----\n",
        b64(format!("sim-k3s-ca {h}").as_bytes())
    );
    let cert = format!(
        "-----BEGIN CERTIFICATE-----\n{}\n-----END CERTIFICATE-----\n",
        b64(format!("sim-k3s-admin {h}").as_bytes())
    );
    let key = format!(
        "-----BEGIN EC PRIVATE KEY-----\n{}\n-----END EC PRIVATE KEY-----\n",
        b64(format!("sim-k3s-admin-key {h}").as_bytes())
    );
    format!(
        "apiVersion: v1\nclusters:\n- cluster:\n    certificate-authority-data: {}\n    server: https://127.0.0.1:6443\n  name: default\ncontexts:\n- context:\n    cluster: default\n    user: default\n  name: default\ncurrent-context: default\nkind: Config\npreferences: {{}}\nusers:\n- name: default\n  user:\n    client-certificate-data: {}\n    client-key-data: {}\n",
        b64(ca.as_bytes()),
        b64(cert.as_bytes()),
        b64(key.as_bytes())
    )
}

/// A host's disk: path → (mode, contents), tied to the server instance.
#[derive(Clone, Debug, Default)]
struct Disk {
    server_id: i64,
    files: BTreeMap<String, (u32, Vec<u8>)>,
}

impl Disk {
    fn from_json(v: &Value) -> Disk {
        let mut d =
            Disk { server_id: v["server_id"].as_i64().unwrap_or(0), files: BTreeMap::new() };
        if let Some(files) = v["files"].as_object() {
            for (p, f) in files {
                let mode = f["mode"].as_u64().unwrap_or(0o644) as u32;
                let bytes = if let Some(t) = f["text"].as_str() {
                    t.as_bytes().to_vec()
                } else {
                    hex::decode(f["hex"].as_str().unwrap_or("")).unwrap_or_default()
                };
                d.files.insert(p.clone(), (mode, bytes));
            }
        }
        d
    }

    fn to_json(&self) -> Value {
        let files: serde_json::Map<String, Value> = self
            .files
            .iter()
            .map(|(p, (mode, bytes))| {
                let v = match std::str::from_utf8(bytes) {
                    Ok(t) => json!({"mode": mode, "text": t}),
                    Err(_) => json!({"mode": mode, "hex": hex::encode(bytes)}),
                };
                (p.clone(), v)
            })
            .collect();
        json!({"server_id": self.server_id, "files": files})
    }
}

/// The fake SSH client. `run` understands, with an optional `sudo` prefix
/// and `&&` chains: `test -f P`, `test -e P`, `cat P`, `touch P`,
/// `rm -f P`, `sh P` / `bash P` (127 when P is absent; a script line
/// `# sim:exit=N` makes it exit N; the k3s marker installs k3s),
/// `k3s kubectl get nodes -o json` / `kubectl get nodes -o json`,
/// `hostname`, `true`, `false`; anything else exits 0 with no output.
#[derive(Clone, Debug)]
pub struct SimSsh {
    world: Arc<SimWorld>,
}

impl SimSsh {
    pub fn new(world: Arc<SimWorld>) -> SimSsh {
        SimSsh { world }
    }

    /// Every command and upload this host received, oldest first.
    pub async fn command_log(&self, address: &str) -> Vec<String> {
        self.world
            .get(SYS, "log", address)
            .await
            .ok()
            .flatten()
            .and_then(|v| serde_json::from_value(v["entries"].clone()).ok())
            .unwrap_or_default()
    }

    /// A file's contents on a host (tests).
    pub async fn file(&self, address: &str, path: &str) -> Option<Vec<u8>> {
        let v = self.world.get(SYS, "files", address).await.ok()??;
        Disk::from_json(&v).files.remove(path).map(|(_, b)| b)
    }

    /// Gives a host a new host key (a reinstall), as the next contact sees it.
    pub async fn rotate_host_key(&self, address: &str) -> Result<String, StepError> {
        let _g = self.world.lock(SYS, &format!("host:{address}")).await;
        let fp = format!("SHA256:{}", sha_hex(&format!("{address}#{}", uuid::Uuid::new_v4())));
        let server_id = match SimCloud::new(self.world.clone()).by_ipv4("server", address).await? {
            Some(s) => s.id,
            None => 0,
        };
        self.world
            .put(SYS, "hostkeys", address, &json!({"fingerprint": fp, "server_id": server_id}))
            .await?;
        Ok(fp)
    }

    /// The k3s node records (tests, and `get nodes`).
    pub async fn k3s_nodes(&self) -> Result<Vec<Value>, StepError> {
        self.world.list(SYS, "k3s_nodes").await
    }

    /// Connects: the server behind the address and the key it presents.
    async fn connect(&self, host: &Host, op: &str) -> Result<(CloudObject, String), StepError> {
        let server = SimCloud::new(self.world.clone())
            .by_ipv4("server", &host.address)
            .await?
            // A server that is off, or whose boot hung, answers nothing.
            .filter(|s| s.attrs["status"] == "running" && s.attrs.get("boot").is_none())
            .ok_or_else(|| {
                StepError::adapter(
                    System::Ssh,
                    op,
                    Cause::Network,
                    format!(
                        "ssh: connect to host {} port {}: Connection refused",
                        host.address, host.port
                    ),
                )
            })?;
        let stored = self.world.get(SYS, "hostkeys", &host.address).await?;
        let fp = match stored {
            Some(v) if v["server_id"].as_i64() == Some(server.id) => {
                return Ok((server, v["fingerprint"].as_str().unwrap_or("").to_owned()));
            }
            // The server at this address was recreated: a new host key.
            Some(_) => format!("SHA256:{}", sha_hex(&format!("{}#{}", host.address, server.id))),
            None => format!("SHA256:{}", sha_hex(&host.address)),
        };
        let key = json!({"fingerprint": fp, "server_id": server.id});
        self.world.put(SYS, "hostkeys", &host.address, &key).await?;
        Ok((server, fp))
    }

    async fn verified(
        &self,
        host: &Host,
        fingerprint: &str,
        op: &str,
    ) -> Result<CloudObject, StepError> {
        let (server, fp) = self.connect(host, op).await?;
        if fp != fingerprint {
            return Err(StepError::adapter(
                System::Ssh,
                op,
                Cause::Conflict,
                format!(
                    "host key changed for {} (REMOTE HOST IDENTIFICATION HAS CHANGED): expected {fingerprint}, host presents {fp}",
                    host.address
                ),
            ));
        }
        Ok(server)
    }

    async fn load_disk(&self, address: &str, server_id: i64) -> Result<Disk, StepError> {
        Ok(match self.world.get(SYS, "files", address).await? {
            Some(v) => {
                let d = Disk::from_json(&v);
                // A recreated server has a fresh disk.
                if d.server_id == server_id { d } else { Disk { server_id, ..Disk::default() } }
            }
            None => Disk { server_id, ..Disk::default() },
        })
    }

    async fn append_log(&self, address: &str, line: String) -> Result<(), StepError> {
        let mut entries = self.command_log(address).await;
        entries.push(line);
        self.world.put(SYS, "log", address, &json!({"entries": entries})).await
    }

    /// The node record of an installed k3s on this server instance.
    async fn node_of(&self, address: &str, server_id: i64) -> Result<Option<Value>, StepError> {
        Ok(self
            .world
            .get(SYS, "k3s_nodes", address)
            .await?
            .filter(|n| n["server_id"].as_i64() == Some(server_id)))
    }

    /// Node records whose server still exists, optionally of one cluster.
    async fn live_nodes(&self, cluster: Option<&str>) -> Result<Vec<Value>, StepError> {
        let servers = SimCloud::new(self.world.clone()).objects_of("server").await?;
        let mut nodes: Vec<Value> = self
            .k3s_nodes()
            .await?
            .into_iter()
            .filter(|n| {
                servers.iter().any(|s| Some(s.id) == n["server_id"].as_i64())
                    && cluster.is_none_or(|c| n["cluster"].as_str() == Some(c))
            })
            .collect();
        nodes.sort_by(|a, b| a["name"].as_str().cmp(&b["name"].as_str()));
        Ok(nodes)
    }

    /// The node's K3s config file, as K3s reads it.
    fn k3s_config(disk: &Disk) -> K3sConfig {
        disk.files
            .get(K3S_CONFIG_PATH)
            .map(|(_, b)| parse_k3s_config(&String::from_utf8_lossy(b)))
            .unwrap_or_default()
    }

    /// The cluster this server instance joined by an installer of `m`'s
    /// role and version, if its join is on record.
    async fn joined_at_version(
        &self,
        host: &Host,
        server: &CloudObject,
        m: &K3sMarker,
    ) -> Result<Option<String>, StepError> {
        Ok(self.node_of(&host.address, server.id).await?.and_then(|n| {
            let same = n["role"].as_str() == Some(m.role.as_str())
                && n["version"].as_str() == Some(m.version.as_str());
            same.then(|| n["cluster"].as_str().map(str::to_owned)).flatten()
        }))
    }

    async fn install_k3s(
        &self,
        host: &Host,
        server: &CloudObject,
        disk: &mut Disk,
        m: &K3sMarker,
    ) -> Result<CommandOutput, StepError> {
        if m.role != "server" && m.role != "agent" {
            return Ok(out(1, "", format!("sim: k3s-install marker has bad role `{}`", m.role)));
        }
        let base = if m.role == "server" { 45_000 } else { 30_000 };
        let d = self.world.latency(base);
        if !d.is_zero() {
            tokio::time::sleep(d).await;
        }
        let cfg = Self::k3s_config(disk);
        let join_url = m.server.clone().or(cfg.server.clone());
        let cluster = match (&m.cluster, &join_url) {
            (Some(c), _) => c.clone(),
            (None, Some(url)) => {
                // Joining: the cluster of the node behind the server URL.
                let h = url.trim_start_matches("https://").trim_start_matches("http://");
                let h = h.split([':', '/']).next().unwrap_or("");
                let found = self.live_nodes(None).await?.into_iter().find(|n| {
                    n["role"] == "server"
                        && (n["address"].as_str() == Some(h) || n["private_ip"].as_str() == Some(h))
                });
                match found.and_then(|n| n["cluster"].as_str().map(str::to_owned)) {
                    Some(c) => c,
                    None => {
                        let msg =
                            format!("[ERROR] failed to join: cannot reach the k3s server at {url}");
                        return Ok(out(1, "", msg));
                    }
                }
            }
            (None, None) if m.role == "agent" => {
                return Ok(out(1, "", "[ERROR] an agent needs a server URL (K3S_URL or server:)"));
            }
            (None, None) => host.address.clone(),
        };
        // The cluster token: set by the first server, checked on joins.
        let token_sha = cfg.token.as_deref().map(token_digest);
        match self.world.get(SYS, "k3s_clusters", &cluster).await? {
            Some(c) => {
                if let (Some(have), Some(want)) = (token_sha.as_deref(), c["token_sha256"].as_str())
                    && have != want
                {
                    let msg =
                        "[ERROR] failed to validate token: the cluster CA hash does not match";
                    return Ok(out(1, "", msg));
                }
            }
            None => {
                let rec = json!({"cluster": cluster, "token_sha256": token_sha});
                self.world.put(SYS, "k3s_clusters", &cluster, &rec).await?;
            }
        }
        Self::lay_k3s_files(disk, m, &cluster);
        let labels: serde_json::Map<String, Value> =
            cfg.node_labels.iter().map(|(k, v)| (k.clone(), json!(v))).collect();
        // How often this server instance ran the K3s installer: once, unless
        // something installed twice.
        let joins = self
            .node_of(&host.address, server.id)
            .await?
            .and_then(|n| n["joins"].as_u64())
            .unwrap_or(0)
            + 1;
        let node = json!({
            "joins": joins,
            "address": host.address,
            "name": cfg.node_name.clone().unwrap_or_else(|| host.name.clone()),
            "role": m.role,
            "version": m.version,
            "cluster": cluster,
            "server_id": server.id,
            "private_ip": server.attrs.get("private_ip").cloned().unwrap_or(Value::Null),
            "labels": labels,
            "joined_at": chrono::Utc::now().to_rfc3339(),
        });
        self.world.put(SYS, "k3s_nodes", &host.address, &node).await?;
        let unit = if m.role == "agent" { "k3s-agent" } else { "k3s" };
        Ok(out(0, format!("[INFO]  systemd: Starting {unit}\n"), ""))
    }

    /// The files the K3s installer leaves on the node: the binary, its
    /// uninstall script and, on a server, the kubeconfig and the token
    /// (the config file's token, as K3s keeps it, when there is one).
    fn lay_k3s_files(disk: &mut Disk, m: &K3sMarker, cluster: &str) {
        let token_sha = Self::k3s_config(disk).token.as_deref().map(token_digest);
        disk.files.insert(
            K3S_BIN.into(),
            (0o755, format!("#!/bin/sh\n# sim k3s {}\n", m.version).into_bytes()),
        );
        let uninstall = if m.role == "server" {
            "/usr/local/bin/k3s-uninstall.sh"
        } else {
            "/usr/local/bin/k3s-agent-uninstall.sh"
        };
        disk.files.insert(
            uninstall.into(),
            (0o755, format!("#!/bin/sh\n{UNINSTALL_MARKER}\n").into_bytes()),
        );
        if m.role == "server" {
            disk.files
                .entry(KUBECONFIG_PATH.into())
                .or_insert_with(|| (0o600, fake_kubeconfig(cluster).into_bytes()));
            let t = sha_hex(&format!("sim-k3s-token:{cluster}"));
            let token = match token_sha.as_deref() {
                Some(d) => format!("sha256:{d}"),
                None => format!("K10{}::server:{}", &t[..32], &t[32..]),
            };
            disk.files
                .entry(K3S_TOKEN_PATH.into())
                .or_insert_with(|| (0o600, format!("{token}\n").into_bytes()));
        }
    }

    /// What the k3s uninstall scripts do: the node leaves, k3s files go.
    async fn uninstall_k3s(
        &self,
        host: &Host,
        server: &CloudObject,
        disk: &mut Disk,
    ) -> Result<(), StepError> {
        if self.node_of(&host.address, server.id).await?.is_some() {
            self.world.delete(SYS, "k3s_nodes", &host.address).await?;
        }
        disk.files.retain(|p, _| !K3S_PREFIXES.iter().any(|pre| p.starts_with(pre)));
        Ok(())
    }

    async fn get_nodes(
        &self,
        server: &CloudObject,
        address: &str,
    ) -> Result<CommandOutput, StepError> {
        let Some(me) = self.node_of(address, server.id).await? else {
            return Ok(out(127, "", "sh: 1: k3s: not found"));
        };
        if me["role"] != "server" {
            return Ok(out(
                1,
                "",
                "The connection to the server localhost:8080 was refused - did you specify the right host or port?",
            ));
        }
        let items: Vec<Value> = self
            .live_nodes(me["cluster"].as_str())
            .await?
            .iter()
            .map(|n| {
                let mut labels = json!({
                    "kubernetes.io/hostname": n["name"],
                    "kubernetes.io/os": "linux",
                    "node.kubernetes.io/instance-type": "k3s",
                });
                if let Some(extra) = n["labels"].as_object() {
                    for (k, v) in extra {
                        labels[k] = v.clone();
                    }
                }
                if n["role"] == "server" {
                    labels["node-role.kubernetes.io/control-plane"] = json!("true");
                    labels["node-role.kubernetes.io/etcd"] = json!("true");
                    labels["node-role.kubernetes.io/master"] = json!("true");
                }
                json!({
                    "apiVersion": "v1",
                    "kind": "Node",
                    "metadata": {"name": n["name"], "labels": labels, "creationTimestamp": n["joined_at"]},
                    "status": {
                        "conditions": [{"type": "Ready", "status": "True", "reason": "KubeletReady", "message": "kubelet is posting ready status"}],
                        "nodeInfo": {"kubeletVersion": n["version"]},
                        "addresses": [
                            {"type": "InternalIP", "address": n["private_ip"]},
                            {"type": "ExternalIP", "address": n["address"]},
                            {"type": "Hostname", "address": n["name"]},
                        ],
                    },
                })
            })
            .collect();
        let list = json!({"apiVersion": "v1", "kind": "NodeList", "metadata": {"resourceVersion": ""}, "items": items});
        Ok(out(0, serde_json::to_string_pretty(&list).expect("json"), ""))
    }

    async fn exec_one(
        &self,
        host: &Host,
        server: &CloudObject,
        disk: &mut Disk,
        cmd: &str,
    ) -> Result<CommandOutput, StepError> {
        let mut w = words(cmd);
        if w.first().map(String::as_str) == Some("sudo") {
            w.remove(0);
            while w.first().is_some_and(|a| a.starts_with('-')) {
                w.remove(0);
            }
        }
        let args: Vec<&str> = w.iter().map(String::as_str).collect();
        Ok(match args.as_slice() {
            [] | ["true"] | [":"] => out(0, "", ""),
            ["false"] => out(1, "", ""),
            ["hostname"] => out(0, format!("{}\n", host.name), ""),
            ["test", "-f" | "-e", p] | ["[", "-f" | "-e", p, "]"] => {
                out(i32::from(!disk.files.contains_key(*p)), "", "")
            }
            ["cat", p] => match disk.files.get(*p) {
                Some((_, b)) => out(0, String::from_utf8_lossy(b), ""),
                None => out(1, "", format!("cat: {p}: No such file or directory")),
            },
            ["touch", p] => {
                disk.files.entry((*p).to_owned()).or_insert((0o644, Vec::new()));
                out(0, "", "")
            }
            ["rm", "-f" | "-rf", p] => {
                disk.files.remove(*p);
                out(0, "", "")
            }
            ["sh" | "bash", p, ..] => {
                let Some((_, script)) = disk.files.get(*p).cloned() else {
                    return Ok(out(127, "", format!("sh: 0: cannot open {p}: No such file")));
                };
                let text = String::from_utf8_lossy(&script).into_owned();
                self.append_log(&host.address, format!("exec {p}")).await?;
                if text.lines().any(|l| l.trim() == UNINSTALL_MARKER) {
                    self.uninstall_k3s(host, server, disk).await?;
                }
                if let Some(m) = parse_marker(&text) {
                    // The wrapper's guard and its last act: the version
                    // marker (`cz_phases::cluster::render::install_script`).
                    let installed = format!("/var/lib/catalyst/k3s-{}.installed", m.version);
                    if !disk.files.contains_key(&installed) {
                        match self.joined_at_version(host, server, &m).await? {
                            // The installer joined, then the daemon died
                            // before this disk was saved: the sim's remote
                            // side dies with it, but the real script
                            // ignores SIGHUP and runs to its end. Finish
                            // it as it would have, without a second join.
                            Some(cluster) => Self::lay_k3s_files(disk, &m, &cluster),
                            None => {
                                let o = self.install_k3s(host, server, disk, &m).await?;
                                if o.status != 0 {
                                    return Ok(o);
                                }
                            }
                        }
                        disk.files.insert(installed, (0o644, Vec::new()));
                    }
                }
                let exit = text
                    .lines()
                    .find_map(|l| l.trim().strip_prefix("# sim:exit="))
                    .and_then(|n| n.trim().parse::<i32>().ok())
                    .unwrap_or(0);
                if exit != 0 {
                    out(exit, "", format!("sim: {p} exited with status {exit}"))
                } else {
                    out(0, "", "")
                }
            }
            ["k3s" | "/usr/local/bin/k3s", "kubectl", "get", "nodes", ..]
            | ["kubectl", "get", "nodes", ..] => self.get_nodes(server, &host.address).await?,
            // K3s's packaged CoreDNS: available once the cluster has a
            // Ready node (the sim's CNI is always up).
            [
                "k3s" | "/usr/local/bin/k3s",
                "kubectl",
                "-n",
                "kube-system",
                "get",
                "deployment",
                "coredns",
                ..,
            ] => {
                let nodes = self.get_nodes(server, &host.address).await?;
                if nodes.status != 0 {
                    nodes
                } else {
                    let ready = nodes.stdout.contains("\"Ready\"");
                    let n = i32::from(ready);
                    out(0, json!({"kind": "Deployment", "metadata": {"name": "coredns", "namespace": "kube-system"}, "status": {"replicas": 1, "readyReplicas": n, "availableReplicas": n}}).to_string(), "")
                }
            }
            _ => out(0, "", ""),
        })
    }
}

#[async_trait]
impl SshApi for SimSsh {
    async fn probe(&self, host: &Host) -> AdapterResult<String> {
        self.world.op("ssh.probe", 1_000).await?;
        let _g = self.world.lock(SYS, &format!("host:{}", host.address)).await;
        Ok(self.connect(host, "probe").await?.1)
    }

    async fn run(
        &self,
        host: &Host,
        fingerprint: &str,
        _key: &ProvisionerKey,
        command: &str,
    ) -> AdapterResult<CommandOutput> {
        self.world.op("ssh.run", 2_000).await?;
        let _g = self.world.lock(SYS, &format!("host:{}", host.address)).await;
        let server = self.verified(host, fingerprint, "run").await?;
        self.append_log(&host.address, command.to_owned()).await?;
        let mut disk = self.load_disk(&host.address, server.id).await?;
        let before = disk.to_json();
        let mut acc = out(0, "", "");
        for part in command.split("&&") {
            let o = self.exec_one(host, &server, &mut disk, part.trim()).await?;
            acc.stdout.push_str(&o.stdout);
            acc.stderr.push_str(&o.stderr);
            acc.status = o.status;
            if o.status != 0 {
                break;
            }
        }
        let after = disk.to_json();
        if after != before {
            self.world.put(SYS, "files", &host.address, &after).await?;
        }
        Ok(acc)
    }

    async fn upload(
        &self,
        host: &Host,
        fingerprint: &str,
        _key: &ProvisionerKey,
        path: &str,
        contents: &[u8],
        mode: u32,
    ) -> AdapterResult<()> {
        self.world.op("ssh.upload", 1_000).await?;
        let _g = self.world.lock(SYS, &format!("host:{}", host.address)).await;
        let server = self.verified(host, fingerprint, "upload").await?;
        self.append_log(
            &host.address,
            format!("upload {path} ({} bytes, mode {mode:o})", contents.len()),
        )
        .await?;
        let mut disk = self.load_disk(&host.address, server.id).await?;
        disk.files.insert(path.to_owned(), (mode, at_rest(path, contents)));
        self.world.put(SYS, "files", &host.address, &disk.to_json()).await
    }
}

#[cfg(test)]
mod tests {
    fn k() -> cz_adapters::ProvisionerKey {
        static K: std::sync::OnceLock<cz_adapters::ProvisionerKey> = std::sync::OnceLock::new();
        K.get_or_init(|| cz_adapters::ProvisionerKey::generate("test").unwrap()).clone()
    }

    use super::*;
    use crate::backend::world::SimConfig;

    async fn setup() -> (tempfile::TempDir, Arc<SimWorld>, SimSsh, Vec<Host>) {
        let dir = tempfile::tempdir().unwrap();
        let world = Arc::new(SimWorld::new(dir.path(), SimConfig::instant()));
        let cloud = SimCloud::new(world.clone());
        let mut hosts = Vec::new();
        for name in ["cp-0", "cp-1", "w-0"] {
            let s = cloud.create("server", name, BTreeMap::new(), json!({})).await.unwrap();
            hosts.push(Host {
                name: name.into(),
                address: s.attrs["ipv4"].as_str().unwrap().into(),
                port: 22,
                user: "root".into(),
            });
        }
        (dir, world.clone(), SimSsh::new(world), hosts)
    }

    #[tokio::test]
    async fn unknown_host_is_refused_and_host_key_is_stable() {
        let (_d, world, ssh, hosts) = setup().await;
        let ghost = Host {
            name: "x".into(),
            address: "203.0.113.200".into(),
            port: 22,
            user: "root".into(),
        };
        let e = ssh.probe(&ghost).await.unwrap_err();
        assert!(matches!(e, StepError::Adapter { system: System::Ssh, cause: Cause::Network, .. }));
        let fp = ssh.probe(&hosts[0]).await.unwrap();
        assert_eq!(fp, format!("SHA256:{}", sha_hex(&hosts[0].address)));
        assert_eq!(
            SimSsh::new(world.clone()).probe(&hosts[0]).await.unwrap(),
            fp,
            "stable across instances"
        );
        let o = ssh.run(&hosts[0], &fp, &k(), "hostname").await.unwrap();
        assert_eq!(o.stdout, "cp-0\n");
    }

    #[tokio::test]
    async fn host_key_change_is_refused() {
        let (_d, world, ssh, hosts) = setup().await;
        let fp = ssh.probe(&hosts[0]).await.unwrap();
        let e = ssh.run(&hosts[0], "SHA256:deadbeef", &k(), "true").await.unwrap_err();
        assert!(matches!(e, StepError::Adapter { cause: Cause::Conflict, .. }));
        let e = ssh
            .upload(&hosts[0], "SHA256:deadbeef", &k(), "/tmp/x", b"x", 0o644)
            .await
            .unwrap_err();
        assert!(
            matches!(&e, StepError::Adapter { cause: Cause::Conflict, message, .. } if message.contains("host key changed"))
        );
        // The server is recreated at the same address: a new key.
        let cloud = SimCloud::new(world.clone());
        let old = cloud.by_ipv4("server", &hosts[0].address).await.unwrap().unwrap();
        cloud.remove("server", old.id).await.unwrap();
        let new = cloud.create("server", "cp-0", BTreeMap::new(), json!({})).await.unwrap();
        assert_eq!(new.attrs["ipv4"].as_str(), Some(hosts[0].address.as_str()));
        let e = ssh.run(&hosts[0], &fp, &k(), "true").await.unwrap_err();
        assert!(matches!(e, StepError::Adapter { cause: Cause::Conflict, .. }));
        let fp2 = ssh.probe(&hosts[0]).await.unwrap();
        assert_ne!(fp2, fp);
        assert_eq!(ssh.run(&hosts[0], &fp2, &k(), "true").await.unwrap().status, 0);
        let fp3 = ssh.rotate_host_key(&hosts[0].address).await.unwrap();
        assert!(ssh.run(&hosts[0], &fp2, &k(), "true").await.is_err());
        assert!(ssh.run(&hosts[0], &fp3, &k(), "true").await.is_ok());
    }

    #[tokio::test]
    async fn tiny_shell_and_persistent_files() {
        let (_d, world, ssh, hosts) = setup().await;
        let h = &hosts[0];
        let fp = ssh.probe(h).await.unwrap();
        assert_eq!(ssh.run(h, &fp, &k(), "test -f /etc/marker").await.unwrap().status, 1);
        assert_eq!(ssh.run(h, &fp, &k(), "sudo touch /etc/marker").await.unwrap().status, 0);
        assert_eq!(ssh.run(h, &fp, &k(), "test -f /etc/marker").await.unwrap().status, 0);
        ssh.upload(h, &fp, &k(), "/etc/motd", b"hello\n", 0o644).await.unwrap();
        // A new SimSsh over the same world (a daemon restart) sees the file.
        let ssh2 = SimSsh::new(world.clone());
        let o = ssh2.run(h, &fp, &k(), "cat /etc/motd").await.unwrap();
        assert_eq!((o.status, o.stdout.as_str()), (0, "hello\n"));
        assert_eq!(ssh2.run(h, &fp, &k(), "cat /nope").await.unwrap().status, 1);
        assert_eq!(
            ssh2.run(h, &fp, &k(), "rm -f /etc/motd && test -f /etc/motd").await.unwrap().status,
            1
        );
        assert_eq!(ssh2.run(h, &fp, &k(), "sh /tmp/missing.sh").await.unwrap().status, 127);
        ssh2.upload(h, &fp, &k(), "/tmp/fail.sh", b"#!/bin/sh\n# sim:exit=3\n", 0o755)
            .await
            .unwrap();
        assert_eq!(ssh2.run(h, &fp, &k(), "sh /tmp/fail.sh").await.unwrap().status, 3);
        assert_eq!(ssh2.run(h, &fp, &k(), "k3s etcd-snapshot ls").await.unwrap(), out(0, "", ""));
        // Other hosts have their own disks.
        let fp1 = ssh.probe(&hosts[1]).await.unwrap();
        assert_eq!(ssh.run(&hosts[1], &fp1, &k(), "test -f /etc/marker").await.unwrap().status, 1);
        let log = ssh.command_log(&h.address).await;
        assert_eq!(log[0], "test -f /etc/marker");
        assert!(log.contains(&"exec /tmp/fail.sh".to_owned()));
        assert!(log.iter().any(|l| l.starts_with("upload /etc/motd (6 bytes")));
    }

    #[tokio::test]
    async fn k3s_install_marker_makes_nodes() {
        let (_d, _world, ssh, hosts) = setup().await;
        let fps: Vec<String> = futures::future::join_all(hosts.iter().map(|h| ssh.probe(h)))
            .await
            .into_iter()
            .map(Result::unwrap)
            .collect();
        let script = |role: &str| {
            format!(
                "#!/bin/sh\nset -eu\n# sim:k3s-install role={role} version=v1.33.4+k3s1\ncurl -sfL https://get.k3s.io | sh -\n"
            )
        };
        // Before install: no k3s.
        assert_eq!(
            ssh.run(&hosts[0], &fps[0], &k(), "k3s kubectl get nodes -o json")
                .await
                .unwrap()
                .status,
            127
        );
        ssh.upload(
            &hosts[0],
            &fps[0],
            &k(),
            "/root/install.sh",
            script("server").as_bytes(),
            0o700,
        )
        .await
        .unwrap();
        assert_eq!(
            ssh.run(&hosts[0], &fps[0], &k(), "sh /root/install.sh").await.unwrap().status,
            0
        );
        let kc =
            ssh.run(&hosts[0], &fps[0], &k(), &format!("cat {KUBECONFIG_PATH}")).await.unwrap();
        assert_eq!(kc.status, 0);
        assert!(kc.stdout.contains("server: https://127.0.0.1:6443"));
        assert!(kc.stdout.contains("certificate-authority-data: "));
        assert_eq!(
            ssh.run(&hosts[0], &fps[0], &k(), &format!("test -f {K3S_BIN}")).await.unwrap().status,
            0
        );
        // A second server joins through the first; the agent too.
        let join = |role: &str| {
            format!(
                "# sim:k3s-install role={role} version=v1.33.4+k3s1 server=https://{}:6443\n",
                hosts[0].address
            )
        };
        ssh.upload(&hosts[1], &fps[1], &k(), "/root/install.sh", join("server").as_bytes(), 0o700)
            .await
            .unwrap();
        ssh.upload(&hosts[2], &fps[2], &k(), "/root/install.sh", join("agent").as_bytes(), 0o700)
            .await
            .unwrap();
        assert_eq!(
            ssh.run(&hosts[1], &fps[1], &k(), "sh /root/install.sh").await.unwrap().status,
            0
        );
        assert_eq!(
            ssh.run(&hosts[2], &fps[2], &k(), "sh /root/install.sh").await.unwrap().status,
            0
        );
        assert_eq!(
            ssh.run(&hosts[2], &fps[2], &k(), &format!("test -f {KUBECONFIG_PATH}"))
                .await
                .unwrap()
                .status,
            1,
            "agents get no kubeconfig"
        );
        let kc1 =
            ssh.run(&hosts[1], &fps[1], &k(), &format!("cat {KUBECONFIG_PATH}")).await.unwrap();
        assert_eq!(kc1.stdout, kc.stdout, "servers of one cluster share the CA");

        let o = ssh.run(&hosts[0], &fps[0], &k(), "k3s kubectl get nodes -o json").await.unwrap();
        assert_eq!(o.status, 0);
        let list: Value = serde_json::from_str(&o.stdout).unwrap();
        assert_eq!(list["kind"], "NodeList");
        let items = list["items"].as_array().unwrap();
        assert_eq!(items.len(), 3);
        for n in items {
            assert_eq!(n["status"]["conditions"][0]["type"], "Ready");
            assert_eq!(n["status"]["conditions"][0]["status"], "True");
            assert_eq!(n["status"]["nodeInfo"]["kubeletVersion"], "v1.33.4+k3s1");
        }
        let cps = items
            .iter()
            .filter(|n| n["metadata"]["labels"]["node-role.kubernetes.io/control-plane"] == "true")
            .count();
        assert_eq!(cps, 2);
        assert_eq!(
            ssh.run(&hosts[2], &fps[2], &k(), "k3s kubectl get nodes -o json")
                .await
                .unwrap()
                .status,
            1
        );
    }

    /// A daemon killed after the installer joined but before the node's
    /// disk was saved: the real script ignores SIGHUP and finishes, so
    /// the next run finds it done, with its files, and joins no second
    /// time.
    #[tokio::test]
    async fn an_installer_cut_off_after_its_join_finishes_without_a_second() {
        let (_d, world, ssh, hosts) = setup().await;
        let h = &hosts[0];
        let fp = ssh.probe(h).await.unwrap();
        let script = "#!/bin/sh\n# sim:k3s-install role=server version=v1.33.4+k3s1\n";
        ssh.upload(h, &fp, &k(), "/root/install.sh", script.as_bytes(), 0o700).await.unwrap();
        let disk_before = world.get(SYS, "files", &h.address).await.unwrap().unwrap();
        assert_eq!(ssh.run(h, &fp, &k(), "sh /root/install.sh").await.unwrap().status, 0);
        let disk_after = world.get(SYS, "files", &h.address).await.unwrap().unwrap();
        // The kill: the join is on record, the disk is as it was.
        world.put(SYS, "files", &h.address, &disk_before).await.unwrap();
        let marker = "/var/lib/catalyst/k3s-v1.33.4+k3s1.installed";
        let test_f = |p: &str| format!("test -f {p}");
        assert_eq!(ssh.run(h, &fp, &k(), &test_f(marker)).await.unwrap().status, 1);

        assert_eq!(ssh.run(h, &fp, &k(), "sh /root/install.sh").await.unwrap().status, 0);
        let nodes = ssh.k3s_nodes().await.unwrap();
        assert_eq!(nodes.len(), 1);
        assert_eq!(nodes[0]["joins"], 1, "{nodes:?}");
        assert_eq!(
            world.get(SYS, "files", &h.address).await.unwrap().unwrap(),
            disk_after,
            "the node's disk as the uncut run left it"
        );
        // A run after that is the script's guard: still one join.
        assert_eq!(ssh.run(h, &fp, &k(), "sh /root/install.sh").await.unwrap().status, 0);
        assert_eq!(ssh.k3s_nodes().await.unwrap()[0]["joins"], 1);
    }

    /// The way the cluster phase drives it: join URL, token and node labels
    /// in `/etc/rancher/k3s/config.yaml`, a bare marker in the script.
    #[tokio::test]
    async fn k3s_config_yaml_join_labels_token_and_uninstall() {
        let (_d, _world, ssh, hosts) = setup().await;
        let fps: Vec<String> = futures::future::join_all(hosts.iter().map(|h| ssh.probe(h)))
            .await
            .into_iter()
            .map(Result::unwrap)
            .collect();
        let cp_private = SimCloud::new(_world.clone())
            .by_ipv4("server", &hosts[0].address)
            .await
            .unwrap()
            .unwrap()
            .attrs["private_ip"]
            .as_str()
            .unwrap()
            .to_owned();
        let config = |join: bool, token: &str, role: &str| {
            let mut c = format!(
                "token: \"{token}\"\nnode-label:\n  - \"catalyst.openova.io/role={role}\"\n"
            );
            if join {
                c.push_str(&format!("server: \"https://{cp_private}:6443\"\n"));
            } else {
                c.push_str("cluster-init: true\n");
            }
            c
        };
        let script = |role: &str| {
            format!("#!/bin/sh\n# sim:k3s-install role={role} version=v1.33.4+k3s1\nset -eu\n")
        };
        let install = |i: usize, cfg: String, role: &'static str| {
            let (ssh, h, fp) = (ssh.clone(), hosts[i].clone(), fps[i].clone());
            async move {
                ssh.upload(&h, &fp, &k(), K3S_CONFIG_PATH, cfg.as_bytes(), 0o600).await.unwrap();
                ssh.upload(
                    &h,
                    &fp,
                    &k(),
                    "/var/lib/catalyst/k3s-install.sh",
                    script(role).as_bytes(),
                    0o700,
                )
                .await
                .unwrap();
                ssh.run(&h, &fp, &k(), "sh /var/lib/catalyst/k3s-install.sh").await.unwrap()
            }
        };
        assert_eq!(install(0, config(false, "tok", "control-plane"), "server").await.status, 0);
        // A joiner with the wrong token is refused; with the right one it joins.
        let bad = install(2, config(true, "wrong", "worker"), "agent").await;
        assert_eq!(bad.status, 1);
        assert!(bad.stderr.contains("token"));
        assert_eq!(install(1, config(true, "tok", "control-plane"), "server").await.status, 0);
        assert_eq!(install(2, config(true, "tok", "worker"), "agent").await.status, 0);
        let o = ssh.run(&hosts[1], &fps[1], &k(), "k3s kubectl get nodes -o json").await.unwrap();
        let list: Value = serde_json::from_str(&o.stdout).unwrap();
        let roles: Vec<&str> = list["items"]
            .as_array()
            .unwrap()
            .iter()
            .map(|n| {
                n.pointer("/metadata/labels/catalyst.openova.io~1role")
                    .and_then(Value::as_str)
                    .unwrap()
            })
            .collect();
        assert_eq!(roles, vec!["control-plane", "control-plane", "worker"]);
        // The uninstall script the installer left removes the node and k3s.
        let agent_uninstall = "/usr/local/bin/k3s-agent-uninstall.sh";
        assert_eq!(
            ssh.run(&hosts[2], &fps[2], &k(), &format!("test -f {agent_uninstall}"))
                .await
                .unwrap()
                .status,
            0
        );
        assert_eq!(
            ssh.run(&hosts[2], &fps[2], &k(), &format!("sh {agent_uninstall}"))
                .await
                .unwrap()
                .status,
            0
        );
        assert_eq!(
            ssh.run(&hosts[2], &fps[2], &k(), &format!("test -f {K3S_BIN}")).await.unwrap().status,
            1
        );
        assert_eq!(
            ssh.run(&hosts[2], &fps[2], &k(), &format!("test -f {K3S_CONFIG_PATH}"))
                .await
                .unwrap()
                .status,
            1
        );
        let o = ssh.run(&hosts[0], &fps[0], &k(), "k3s kubectl get nodes -o json").await.unwrap();
        let list: Value = serde_json::from_str(&o.stdout).unwrap();
        assert_eq!(list["items"].as_array().unwrap().len(), 2);
        // The sim keeps only the token's digest on its simulated disks.
        assert_eq!(
            ssh.run(&hosts[0], &fps[0], &k(), &format!("cat {K3S_TOKEN_PATH}"))
                .await
                .unwrap()
                .stdout,
            format!("sha256:{}\n", sha_hex("tok"))
        );
        let cfg =
            ssh.run(&hosts[0], &fps[0], &k(), &format!("cat {K3S_CONFIG_PATH}")).await.unwrap();
        assert!(!cfg.stdout.contains("\"tok\""), "{}", cfg.stdout);
    }

    #[test]
    fn k3s_config_parses() {
        let c = parse_k3s_config(
            "# c\ntoken: \"abc\"\nnode-label:\n  - \"a=b\"\n  - c=d\ntls-san:\n  - \"x=y\"\nserver: 'https://10.0.1.2:6443'\nnode-name: n1\n",
        );
        assert_eq!(c.token.as_deref(), Some("abc"));
        assert_eq!(c.server.as_deref(), Some("https://10.0.1.2:6443"));
        assert_eq!(c.node_name.as_deref(), Some("n1"));
        assert_eq!(
            c.node_labels,
            vec![("a".to_owned(), "b".to_owned()), ("c".to_owned(), "d".to_owned())]
        );
    }

    #[test]
    fn words_and_marker_parse() {
        assert_eq!(words("sh  '/tmp/a b.sh' \"x\" ''"), vec!["sh", "/tmp/a b.sh", "x", ""]);
        let m = parse_marker("x\n  # sim:k3s-install role=agent version=v1 cluster=c1\n").unwrap();
        assert_eq!(
            m,
            K3sMarker {
                role: "agent".into(),
                version: "v1".into(),
                cluster: Some("c1".into()),
                server: None
            }
        );
        assert!(parse_marker("# nothing").is_none());
    }
}
