//! The OpenTofu module of one region, rendered from `cloud-templates/hetzner/`.
//!
//! The infra phase keeps one tofu workspace per region. [`render_hetzner`]
//! turns a [`RenderInput`] (one region of the request plus the release pins)
//! into the files of that workspace: `versions.tf`, `variables.tf`,
//! `main.tf`, `outputs.tf` and `cloud-init.yaml`. It sits beside the JSON
//! manifest of [`super::desired`] and describes the same objects under
//! the same addresses and names (`hcloud_server.cp[0]` is `<slug>-<loc>-cp1`
//! in both), so the import-by-label adoption of `infra.apply` works on either.
//!
//! Why it is built the way it is:
//!
//! - **Pure.** Input in, file contents out; no clock, no environment, no
//!   cloud. The contract tests (`phases/tests/all/hetzner_templates.rs`) parse
//!   every render against the offline provider schema and compare golden
//!   files, so a template change is reviewed as a diff of real HCL.
//! - **Templates loaded at run time** from a directory the caller passes, so
//!   operators read (and review) the HCL as files, not as Rust strings.
//! - **Strict.** Tera 2 fails on any undefined variable, and after rendering
//!   any surviving `{{`, `{%` or `{#` is an error: a typo in a template must
//!   fail the render, never reach tofu as literal text that happens to parse.
//! - **No secret is an input.** The cloud token is not a field of
//!   [`RenderInput`]; tofu receives it through `TF_VAR_hcloud_token` only, and
//!   cloud-init carries host hardening and public keys, nothing else (K3s is
//!   installed later over SSH). User data is readable from the cloud API.
//! - **Injection-safe.** Values interpolated bare into HCL strings must match a
//!   conservative character set (they come from a validated request and the
//!   release manifest, so this only fails on a bug); free text (SSH keys) goes
//!   through the `hcl` and `yaml` quoting filters.

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::path::{Path, PathBuf};

use crate::release;
use crate::request::Region;

/// The private network of a region and the subnet its servers live in; the
/// same values as the manifest of [`super::desired`].
pub const NETWORK_IP_RANGE: &str = "10.0.0.0/16";
pub const SUBNET_IP_RANGE: &str = "10.0.1.0/24";
/// Host numbers in the subnet: control plane N (1-based) is 10.0.1.(1+N),
/// worker N is 10.0.1.(10+N), the load balancer is 10.0.1.254.
pub const CP_IP_OFFSET: u32 = 2;
pub const WORKER_IP_OFFSET: u32 = 11;
pub const LB_PRIVATE_IP: &str = "10.0.1.254";
pub use cz_adapters::cloud::catalogue::SERVERS_PER_PLACEMENT_GROUP;
/// What the `<prefix>-nodes` firewall opens to the region's own servers when
/// they talk over their public interfaces: the Kubernetes API (agents), etcd
/// between control planes, the kubelet, Cilium's health checks and Hubble's
/// peer service, WireGuard (Cilium's encryption) and VXLAN (its tunnel).
pub const NODE_PORTS: [(&str, &str); 8] = [
    ("tcp", "6443"),
    ("tcp", "2379-2380"),
    ("tcp", "10250"),
    ("tcp", "4240"),
    ("tcp", "4244"),
    ("udp", "51871"),
    ("udp", "8472"),
    ("icmp", ""),
];
/// The load balancer's TCP services, all targeting the control planes.
pub const LB_PORTS: [u16; 3] = [80, 443, 6443];
/// File name suffix of a template; the rendered file drops it.
pub const TEMPLATE_SUFFIX: &str = ".tera";

/// Everything one region's module is rendered from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RenderInput {
    /// The Sovereign's slug (its FQDN with dots as dashes).
    pub slug: String,
    pub location: String,
    pub job_id: String,
    pub network_zone: String,
    /// (server type, count).
    pub control_plane: (String, u32),
    /// (server type, count).
    pub workers: (String, u32),
    pub ssh_public_keys: Vec<String>,
    /// Where the provisioner connects from: SSH and the Kubernetes API.
    pub provisioner_cidrs: Vec<String>,
    pub image: String,
    pub load_balancer_type: String,
    /// `control-plane` or `all-nodes`.
    pub load_balancer_targets: String,
    /// Whether the servers share a private network ([`super::layout`]).
    pub private_network: bool,
}

impl RenderInput {
    /// The input of one region of a request, with the pinned server image and
    /// load balancer type of the release manifest.
    pub fn from_region(
        slug: &str,
        job_id: &str,
        region: &Region,
        ssh_public_keys: &[String],
        provisioner_cidrs: &[String],
    ) -> Result<Self, RenderError> {
        let network_zone = network_zone(&region.location)
            .ok_or_else(|| RenderError::UnknownLocation(region.location.clone()))?;
        Ok(Self {
            slug: slug.to_owned(),
            location: region.location.clone(),
            job_id: job_id.to_owned(),
            network_zone: network_zone.to_owned(),
            control_plane: (region.control_plane.sku.clone(), region.control_plane.count),
            workers: (region.workers.sku.clone(), region.workers.count),
            ssh_public_keys: ssh_public_keys.to_vec(),
            provisioner_cidrs: provisioner_cidrs.to_vec(),
            image: release::server_image().to_owned(),
            load_balancer_type: region.load_balancer_type().to_owned(),
            load_balancer_targets: region.load_balancer.targets.as_str().to_owned(),
            private_network: super::layout::RegionLayout::of(region).private_network,
        })
    }
}

/// The Hetzner network zone of a location.
pub fn network_zone(location: &str) -> Option<&'static str> {
    Some(match location {
        "fsn1" | "nbg1" | "hel1" => "eu-central",
        "ash" => "us-east",
        "hil" => "us-west",
        "sin" => "ap-southeast",
        _ => return None,
    })
}

#[derive(Debug, thiserror::Error)]
pub enum RenderError {
    #[error("location `{0}` has no known Hetzner network zone")]
    UnknownLocation(String),
    #[error("invalid render input `{field}`: {reason}")]
    Input { field: &'static str, reason: String },
    #[error("cannot read the templates in {dir}: {source}")]
    Io {
        dir: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("no `*{TEMPLATE_SUFFIX}` template in {0}")]
    NoTemplates(PathBuf),
    #[error("template {name}: {message}")]
    Template { name: String, message: String },
    #[error("rendered {file} still contains `{marker}`: an unrendered template expression")]
    Leftover { file: String, marker: &'static str },
}

/// Renders every `*.tera` file of `templates_dir` for one region; the map
/// goes from the output file name (the template's name without `.tera`) to
/// its content.
pub fn render_hetzner(
    input: &RenderInput,
    templates_dir: &Path,
) -> Result<BTreeMap<String, String>, RenderError> {
    validate(input)?;
    render_dir(templates_dir, &context(input))
}

/// One object of the offline stand-in module, as its template sees it.
#[derive(Clone, Debug, serde::Serialize)]
struct OfflineObject {
    /// The `terraform_data` name (`server_cp_0` for `hcloud_server.cp[0]`).
    id: String,
    address: String,
    kind: String,
    name: String,
    /// The [`cz_adapters::cloud::shim::ShimObject`] as JSON.
    spec: String,
    depends_on: Vec<String>,
}

/// The `terraform_data` name of a resource address.
pub fn offline_id(address: &str) -> String {
    let a = address.strip_prefix("hcloud_").unwrap_or(address);
    a.chars()
        .map(|c| if c.is_ascii_alphanumeric() { c } else { '_' })
        .collect::<String>()
        .trim_end_matches('_')
        .to_owned()
}

/// Renders `cloud-templates/hetzner-offline/` for one region: one
/// `terraform_data` per object of `resources` (the manifest of
/// [`super::desired`]), created and deleted through `shim`
/// (`catalyst-zero`, subcommand `hcloud-shim`) against the API at
/// `endpoint`. Same names and labels as the hcloud module; the attributes the
/// API needs (IDs of referenced objects are looked up by name at create).
pub fn render_offline(
    input: &RenderInput,
    resources: &[super::Resource],
    shim: &Path,
    endpoint: &str,
    templates_dir: &Path,
) -> Result<BTreeMap<String, String>, RenderError> {
    use serde_json::json;
    validate(input)?;
    if !input.private_network {
        // Its nodes firewall needs the servers' addresses in its rules,
        // which the stand-in's create-time lookups do not resolve.
        return Err(RenderError::Input {
            field: "private_network",
            reason: "the offline stand-in module builds private-network regions only (at most \
                     100 servers); a public-interface region needs the hcloud provider"
                .into(),
        });
    }
    let prefix = format!("{}-{}", input.slug, input.location);
    let id_of_kind = |kind: &str| {
        resources
            .iter()
            .find(|r| r.kind == kind)
            .map(|r| offline_id(&r.address))
            .unwrap_or_default()
    };
    let open = json!(["0.0.0.0/0", "::/0"]);
    // The production module's rules, descriptions included.
    let rule = |port: u16, sources: &serde_json::Value, description: &str| json!({"direction": "in", "protocol": "tcp", "port": port.to_string(), "source_ips": sources, "description": description});
    // Servers get the production module's cloud-init as their user_data:
    // the same keys (the provisioner's among them) and the same hardening.
    let cloud_init = render_cloud_init(input, templates_dir)?;
    let mut objects = Vec::new();
    for r in resources {
        let mut attrs = r.attrs.clone();
        let mut depends_on = Vec::new();
        match r.kind.as_str() {
            "network" => attrs["network_zone"] = json!(input.network_zone),
            "ssh_key" => attrs["public_key"] = json!(input.ssh_public_keys[0]),
            "firewall" => {
                let cidrs = json!(input.provisioner_cidrs);
                attrs["rules"] = json!([
                    rule(22, &cidrs, "ssh from the provisioner"),
                    rule(6443, &cidrs, "kube-apiserver from the provisioner and the load balancer"),
                    rule(80, &open, "http"),
                    rule(443, &open, "https")
                ]);
            }
            "server" => {
                // The manifest names the server's group.
                let pg = r.attrs.get("placement_group").and_then(serde_json::Value::as_str);
                depends_on.extend(
                    resources
                        .iter()
                        .filter(|g| g.kind == "placement_group" && Some(g.name.as_str()) == pg)
                        .map(|g| offline_id(&g.address)),
                );
                attrs["user_data"] = json!(cloud_init);
                attrs["network"] = json!(format!("{prefix}-net"));
                attrs["firewall"] = json!(format!("{prefix}-fw"));
                attrs["ssh_key"] = json!(format!("{prefix}-key"));
                depends_on.extend(["network", "firewall", "ssh_key"].map(id_of_kind));
            }
            "load_balancer" => {
                attrs["load_balancer_type"] = json!(input.load_balancer_type);
                attrs["location"] = json!(input.location);
                attrs["network"] = json!(format!("{prefix}-net"));
                attrs["services"] = LB_PORTS
                    .iter()
                    .map(|p| json!({"protocol": "tcp", "listen_port": p, "destination_port": p}))
                    .collect();
                attrs["targets"] = json!([{"type": "label_selector",
                                           "label_selector": {"selector": lb_selector(input)}}]);
                depends_on.push(id_of_kind("network"));
                depends_on.extend(
                    resources
                        .iter()
                        .filter(|s| {
                            s.attrs.get("role").and_then(serde_json::Value::as_str)
                                == Some("control-plane")
                        })
                        .map(|s| offline_id(&s.address)),
                );
            }
            _ => {}
        }
        let spec = cz_adapters::cloud::shim::ShimObject {
            endpoint: endpoint.to_owned(),
            kind: r.kind.clone(),
            name: r.name.clone(),
            labels: r.labels.clone(),
            attrs,
        };
        depends_on.retain(|d| !d.is_empty());
        objects.push(OfflineObject {
            id: offline_id(&r.address),
            address: r.address.clone(),
            kind: r.kind.clone(),
            name: r.name.clone(),
            spec: serde_json::to_string(&spec).expect("serializable"),
            depends_on,
        });
    }
    let mut cx = context(input);
    cx.insert("objects", &objects);
    cx.insert("shim", &shim.to_string_lossy());
    cx.insert("endpoint", endpoint);
    render_dir(templates_dir, &cx)
}

/// `cloud-init.yaml` of the production module beside `offline_dir`
/// (`<templates>/hetzner/` next to `<templates>/hetzner-offline/`).
fn render_cloud_init(input: &RenderInput, offline_dir: &Path) -> Result<String, RenderError> {
    let dir = offline_dir.with_file_name("hetzner");
    let file = format!("cloud-init.yaml{TEMPLATE_SUFFIX}");
    let tera = load(&dir)?;
    let body = tera.render(&file, &context(input)).map_err(|e| template_error(&file, &e))?;
    Ok(body)
}

fn render_dir(
    templates_dir: &Path,
    cx: &tera::Context,
) -> Result<BTreeMap<String, String>, RenderError> {
    let tera = load(templates_dir)?;
    let mut out = BTreeMap::new();
    for name in tera.get_template_names().map(str::to_owned).collect::<Vec<_>>() {
        let body = tera.render(&name, cx).map_err(|e| template_error(&name, &e))?;
        let file = name.strip_suffix(TEMPLATE_SUFFIX).unwrap_or(&name).to_owned();
        for marker in ["{{", "{%", "{#"] {
            if body.contains(marker) {
                return Err(RenderError::Leftover { file, marker });
            }
        }
        out.insert(file, body);
    }
    Ok(out)
}

/// SHA-256 over the `*.tera` files of `dir` (names and contents, in name
/// order): the module version a job ran with, recorded by pre-flight.
pub fn templates_digest(dir: &Path) -> Result<String, RenderError> {
    use sha2::Digest;
    let mut h = sha2::Sha256::new();
    for (name, body) in read_templates(dir)? {
        h.update(name.as_bytes());
        h.update([0]);
        h.update((body.len() as u64).to_le_bytes());
        h.update(&body);
    }
    Ok(hex::encode(h.finalize()))
}

/// The `*.tera` files of `dir`, sorted by name; none is an error.
fn read_templates(dir: &Path) -> Result<Vec<(String, Vec<u8>)>, RenderError> {
    let io = |source| RenderError::Io { dir: dir.to_owned(), source };
    let mut files = Vec::new();
    for entry in std::fs::read_dir(dir).map_err(io)? {
        let path = entry.map_err(io)?.path();
        let Some(name) = path.file_name().and_then(|n| n.to_str()) else { continue };
        if name.ends_with(TEMPLATE_SUFFIX) && path.is_file() {
            files.push((name.to_owned(), std::fs::read(&path).map_err(io)?));
        }
    }
    if files.is_empty() {
        return Err(RenderError::NoTemplates(dir.to_owned()));
    }
    files.sort();
    Ok(files)
}

fn template_error(name: &str, e: &tera::Error) -> RenderError {
    // The chain carries the position and the undefined name.
    RenderError::Template { name: name.to_owned(), message: cz_engine::chain(e) }
}

fn load(dir: &Path) -> Result<tera::Tera, RenderError> {
    let files = read_templates(dir)?
        .into_iter()
        .map(|(name, body)| {
            String::from_utf8(body).map(|text| (name, text)).map_err(|e| RenderError::Io {
                dir: dir.to_owned(),
                source: std::io::Error::new(std::io::ErrorKind::InvalidData, e),
            })
        })
        .collect::<Result<Vec<_>, _>>()?;
    let mut tera = tera::Tera::default();
    // HCL and YAML, not HTML: quoting is done by the `hcl`/`yaml` filters.
    tera.autoescape_on(Vec::<&str>::new());
    tera.register_filter("hcl", |s: &str, _: tera::Kwargs, _: &tera::State| hcl_quote(s));
    tera.register_filter("yaml", |s: &str, _: tera::Kwargs, _: &tera::State| yaml_quote(s));
    tera.add_raw_templates(files.iter().map(|(n, c)| (n.as_str(), c.as_str())))
        .map_err(|e| template_error("(parse)", &e))?;
    Ok(tera)
}

fn context(i: &RenderInput) -> tera::Context {
    let mut cx = tera::Context::new();
    cx.insert("slug", &i.slug);
    cx.insert("location", &i.location);
    cx.insert("prefix", &format!("{}-{}", i.slug, i.location));
    cx.insert("job_id", &i.job_id);
    cx.insert("network_zone", &i.network_zone);
    cx.insert("cp_sku", &i.control_plane.0);
    cx.insert("cp_count", &i.control_plane.1);
    cx.insert("worker_sku", &i.workers.0);
    cx.insert("worker_count", &i.workers.1);
    cx.insert(
        "placement_groups",
        &(i.control_plane.1 + i.workers.1).div_ceil(SERVERS_PER_PLACEMENT_GROUP),
    );
    cx.insert("private_network", &i.private_network);
    cx.insert("lb_selector", &lb_selector(i));
    cx.insert("lb_all_nodes", &(i.load_balancer_targets == "all-nodes"));
    cx.insert(
        "node_ports",
        &NODE_PORTS
            .iter()
            .map(|(p, port)| serde_json::json!({"protocol": p, "port": port}))
            .collect::<Vec<_>>(),
    );
    cx.insert("servers_per_placement_group", &SERVERS_PER_PLACEMENT_GROUP);
    cx.insert("ssh_public_keys", &i.ssh_public_keys);
    cx.insert("ssh_key", &i.ssh_public_keys[0]);
    cx.insert("provisioner_cidrs", &i.provisioner_cidrs);
    cx.insert("image", &i.image);
    cx.insert("load_balancer_type", &i.load_balancer_type);
    cx.insert("network_ip_range", NETWORK_IP_RANGE);
    cx.insert("subnet_ip_range", SUBNET_IP_RANGE);
    cx.insert("cp_ip_offset", &CP_IP_OFFSET);
    cx.insert("worker_ip_offset", &WORKER_IP_OFFSET);
    cx.insert("lb_private_ip", LB_PRIVATE_IP);
    cx.insert("lb_ports", &LB_PORTS);
    // The provider version whose schema the templates are written and
    // tested against, pinned in the release.
    cx.insert("hcloud_provider_version", release::hcloud_provider_version());
    cx
}

/// The load balancer's label selector: the region's control planes, or
/// all its servers.
fn lb_selector(i: &RenderInput) -> String {
    use cz_adapters::labels::{LABEL_REGION, LABEL_ROLE, LABEL_SOVEREIGN};
    let role = match i.load_balancer_targets.as_str() {
        "all-nodes" => String::new(),
        _ => format!(",{LABEL_ROLE}=control-plane"),
    };
    format!("{LABEL_SOVEREIGN}={},{LABEL_REGION}={}{role}", i.slug, i.location)
}

/// A double-quoted HCL string literal: JSON escaping plus HCL's template
/// sequences (`${`, `%{`) doubled so they stay literal.
pub fn hcl_quote(s: &str) -> String {
    serde_json::to_string(s).expect("a string serializes").replace("${", "$${").replace("%{", "%%{")
}

/// A double-quoted YAML scalar (JSON strings are valid YAML).
pub fn yaml_quote(s: &str) -> String {
    serde_json::to_string(s).expect("a string serializes")
}

fn validate(i: &RenderInput) -> Result<(), RenderError> {
    let bad = |field, reason: String| Err(RenderError::Input { field, reason });
    // Interpolated bare into HCL strings, names and label values.
    let plain = |field, v: &str| {
        let ok = !v.is_empty()
            && v.len() <= 63
            && v.bytes().all(|b| b.is_ascii_alphanumeric() || b"-._".contains(&b));
        if ok {
            Ok(())
        } else {
            bad(field, format!("`{v}` is not a plain name ([A-Za-z0-9._-], 1-63)"))
        }
    };
    plain("slug", &i.slug)?;
    plain("location", &i.location)?;
    plain("job_id", &i.job_id)?;
    plain("network_zone", &i.network_zone)?;
    plain("control_plane.sku", &i.control_plane.0)?;
    plain("workers.sku", &i.workers.0)?;
    plain("image", &i.image)?;
    plain("load_balancer_type", &i.load_balancer_type)?;
    if !matches!(i.control_plane.1, 1 | 3) {
        return bad("control_plane.count", format!("{} (1 or 3)", i.control_plane.1));
    }
    if i.workers.1 > crate::request::MAX_WORKERS {
        return bad(
            "workers.count",
            format!("{} (at most {})", i.workers.1, crate::request::MAX_WORKERS),
        );
    }
    if i.private_network
        && i.control_plane.1 + i.workers.1 > cz_adapters::cloud::catalogue::SERVERS_PER_NETWORK
    {
        return bad("private_network", "a private network holds at most 100 servers".into());
    }
    if !matches!(i.load_balancer_targets.as_str(), "control-plane" | "all-nodes") {
        return bad(
            "load_balancer_targets",
            format!("`{}` (control-plane or all-nodes)", i.load_balancer_targets),
        );
    }
    if i.ssh_public_keys.is_empty() {
        return bad("ssh_public_keys", "at least one key is needed".into());
    }
    if let Some(k) =
        i.ssh_public_keys.iter().find(|k| k.trim().is_empty() || k.chars().any(char::is_control))
    {
        return bad("ssh_public_keys", format!("`{}` is not a one-line key", k.escape_debug()));
    }
    if i.provisioner_cidrs.is_empty() {
        return bad("provisioner_cidrs", "SSH and the API would be closed to everyone".into());
    }
    for c in &i.provisioner_cidrs {
        if !is_cidr(c) {
            return bad("provisioner_cidrs", format!("`{c}` is not an IP network (a.b.c.d/n)"));
        }
    }
    Ok(())
}

fn is_cidr(s: &str) -> bool {
    let Some((ip, len)) = s.split_once('/') else { return false };
    if len.is_empty() || !len.bytes().all(|b| b.is_ascii_digit()) {
        return false;
    }
    let (Ok(ip), Ok(len)) = (ip.parse::<IpAddr>(), len.parse::<u8>()) else { return false };
    len <= if ip.is_ipv4() { 32 } else { 128 }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_request_location_has_a_network_zone() {
        for l in cz_adapters::cloud::catalogue::LOCATIONS {
            assert!(network_zone(l).is_some(), "{l}");
        }
        assert_eq!(network_zone("hil"), Some("us-west"));
        assert_eq!(network_zone("mars1"), None);
    }

    #[test]
    fn quoting_keeps_hcl_templates_and_quotes_literal() {
        assert_eq!(hcl_quote(r#"a "b" ${c} %{d} \e"#), r#""a \"b\" $${c} %%{d} \\e""#);
        assert_eq!(yaml_quote("ssh-ed25519 AAA x@y"), r#""ssh-ed25519 AAA x@y""#);
    }

    #[test]
    fn cidrs_are_checked() {
        assert!(is_cidr("203.0.113.7/32"));
        assert!(is_cidr("2001:db8::/48"));
        assert!(!is_cidr("203.0.113.7"));
        assert!(!is_cidr("203.0.113.7/33"));
        assert!(!is_cidr("0.0.0.0/0\"]"));
    }
}
