//! The release manifest, `bootstrap-kit/release.toml`: one pinned version
//! for every chart and binary.
//!
//! The `cluster` phase (K3s, Cilium) and the `bootstrap-kit` phase (bp-cilium,
//! bp-flux, …) read the same pins from here, so nothing is installed twice at
//! different versions. The file is compiled into the daemon and parsed
//! once; a malformed manifest is a build that fails its first test, never a
//! job that fails half-way.

use std::sync::LazyLock;

use serde::Deserialize;

/// The manifest as text (what `release_digest` hashes).
pub const MANIFEST: &str = include_str!("../../bootstrap-kit/release.toml");

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Release {
    release: Meta,
    k3s: K3s,
    cilium: Chart,
    flux: Flux,
    hetzner: Hetzner,
    source: Source,
    components: Vec<Pin>,
    handoff: Vec<Pin>,
    crossplane_provider: CrossplaneProvider,
}

/// The Crossplane provider `infra-handoff` installs (`[crossplane_provider]`).
#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CrossplaneProvider {
    pub name: String,
    pub source: String,
    pub source_commit: String,
    pub package: String,
    pub tag: String,
    /// `sha256:<64 hex>`, or empty until the release pipeline fills it.
    pub digest: String,
    pub terraform_provider: String,
    pub crds: Vec<String>,
}

impl CrossplaneProvider {
    /// The package reference a `Provider` names: by digest when pinned,
    /// else by tag (and [`Self::unpinned`] says so).
    pub fn package_ref(&self) -> String {
        if self.digest.is_empty() {
            format!("{}:{}", self.package, self.tag)
        } else {
            format!("{}@{}", self.package, self.digest)
        }
    }

    /// Why the package is not pinned by digest, if it is not.
    pub fn unpinned(&self) -> Option<String> {
        self.digest.is_empty().then(|| {
            format!(
                "{} is installed by tag `{}`, not by digest: the release manifest's \
                 [crossplane_provider].digest is empty (filled by the release pipeline)",
                self.package, self.tag
            )
        })
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Meta {
    name: String,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct K3s {
    version: String,
    server_settings: Vec<(String, String)>,
    disable: Vec<String>,
    /// Artifact name → sha256 (empty: not pinned yet).
    #[serde(default)]
    sha256: std::collections::BTreeMap<String, String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Chart {
    chart: String,
    repo: String,
    version: String,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Flux {
    version: String,
    chart: String,
    repo: String,
    chart_version: String,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Hetzner {
    server_image: String,
    load_balancer_type: String,
    hcloud_provider: String,
}

/// Where the blueprint charts come from.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Source {
    pub url: String,
    pub interval: String,
    pub pull_secret: String,
}

/// A pinned component of the kit.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Pin {
    #[serde(rename = "name")]
    pub component: String,
    /// The Flux HelmRelease name (and blueprint chart name).
    pub release: String,
    pub namespace: String,
    /// The blueprint chart version.
    pub version: String,
    /// Upstream chart and version it wraps.
    pub upstream: String,
    /// Components that must be Ready first.
    pub depends_on: Vec<String>,
    /// Also installed in every region an add-region job creates.
    pub regional: bool,
    /// What healthy means for it, beyond its HelmRelease being Ready.
    pub probe: Probe,
}

/// A component's readiness probe (`[components.probe]`).
#[derive(Clone, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Probe {
    /// `Kind/name` in the component's namespace: Deployment, StatefulSet
    /// or DaemonSet, each fully rolled out and available.
    #[serde(default)]
    pub workloads: Vec<String>,
    /// CRD names (`plural.group`) that must be Established.
    #[serde(default)]
    pub crds: Vec<String>,
    /// Pods that must run (not necessarily be Ready).
    #[serde(default)]
    pub pods: Option<PodsProbe>,
    /// A service that must answer through the API server's proxy.
    #[serde(default)]
    pub http: Option<HttpProbe>,
}

#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PodsProbe {
    /// A label selector, in the component's namespace.
    pub selector: String,
    pub min: usize,
}

#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HttpProbe {
    pub service: String,
    pub port: u16,
    pub path: String,
    pub expect: Vec<u16>,
}

static RELEASE: LazyLock<Release> = LazyLock::new(|| {
    toml::from_str(MANIFEST).unwrap_or_else(|e| panic!("bootstrap-kit/release.toml: {e}"))
});

pub fn name() -> &'static str {
    &RELEASE.release.name
}

pub fn k3s_version() -> &'static str {
    &RELEASE.k3s.version
}

/// The release's pin of K3s artifact `name` (`k3s`, `install.sh`), if it
/// has one.
pub fn k3s_pin(name: &str) -> Option<&'static str> {
    RELEASE.k3s.sha256.get(name).map(String::as_str).filter(|s| !s.is_empty())
}

/// K3s server config-file settings, in order.
pub fn k3s_server_settings() -> &'static [(String, String)] {
    &RELEASE.k3s.server_settings
}

pub fn k3s_disable() -> &'static [String] {
    &RELEASE.k3s.disable
}

pub fn cilium_chart() -> &'static str {
    &RELEASE.cilium.chart
}

pub fn cilium_repo() -> &'static str {
    &RELEASE.cilium.repo
}

pub fn cilium_chart_version() -> &'static str {
    &RELEASE.cilium.version
}

pub fn flux_version() -> &'static str {
    &RELEASE.flux.version
}

/// The chart Flux is first installed from (`bp-flux` wraps the same).
pub fn flux_chart() -> (&'static str, &'static str, &'static str) {
    (&RELEASE.flux.chart, &RELEASE.flux.repo, &RELEASE.flux.chart_version)
}

pub fn server_image() -> &'static str {
    &RELEASE.hetzner.server_image
}

pub fn load_balancer_type() -> &'static str {
    &RELEASE.hetzner.load_balancer_type
}

pub fn hcloud_provider_version() -> &'static str {
    &RELEASE.hetzner.hcloud_provider
}

pub fn source() -> &'static Source {
    &RELEASE.source
}

/// The components, in install order.
pub fn pins() -> &'static [Pin] {
    &RELEASE.components
}

pub fn pin(component: &str) -> Option<&'static Pin> {
    pins().iter().find(|p| p.component == component)
}

/// The components a hand-off phase installs (External Secrets), rendered
/// and probed like the kit's.
pub fn handoff_pins() -> &'static [Pin] {
    &RELEASE.handoff
}

pub fn handoff_pin(component: &str) -> Option<&'static Pin> {
    handoff_pins().iter().find(|p| p.component == component)
}

pub fn crossplane_provider() -> &'static CrossplaneProvider {
    &RELEASE.crossplane_provider
}

/// What `component` depends on (unknown names: nothing).
pub fn depends_on(component: &str) -> &'static [String] {
    pin(component).map(|p| p.depends_on.as_slice()).unwrap_or_default()
}

/// Components an added region gets (`docs/architecture.md`, add-region).
pub fn regional() -> Vec<&'static str> {
    pins().iter().filter(|p| p.regional).map(|p| p.component.as_str()).collect()
}

/// SHA-256 of the manifest: which release a job ran with.
pub fn digest() -> String {
    hex::encode(<sha2::Sha256 as sha2::Digest>::digest(MANIFEST.as_bytes()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_component_is_pinned_once_and_cilium_matches_the_cluster_phase() {
        for c in crate::request::COMPONENTS {
            assert_eq!(pins().iter().filter(|p| p.component == *c).count(), 1, "{c}");
        }
        assert_eq!(pins().len(), crate::request::COMPONENTS.len());
        assert!(pin("cilium").unwrap().upstream.ends_with(cilium_chart_version()));
        assert!(pin("flux").unwrap().upstream.contains(&flux_version()[1..]));
        let (chart, _, chart_version) = flux_chart();
        assert!(pin("flux").unwrap().upstream.starts_with(&format!("{chart} {chart_version}")));
        assert!(!name().is_empty() && digest().len() == 64);
    }

    #[test]
    fn dependencies_name_components_and_come_first() {
        let order: Vec<&str> = pins().iter().map(|p| p.component.as_str()).collect();
        for (i, p) in pins().iter().enumerate() {
            for d in &p.depends_on {
                let at = order.iter().position(|c| c == d);
                assert!(
                    at.is_some_and(|at| at < i),
                    "{} depends on {d}, not before it",
                    p.component
                );
            }
        }
        for p in pins() {
            let pr = &p.probe;
            assert!(
                !pr.workloads.is_empty() || pr.pods.is_some(),
                "{}: a probe must look at something running",
                p.component
            );
            for w in &pr.workloads {
                let (kind, name) = w.split_once('/').expect("Kind/name");
                assert!(["Deployment", "StatefulSet", "DaemonSet"].contains(&kind), "{w}");
                assert!(!name.is_empty() && !name.contains('/'), "{w}");
            }
            for c in &pr.crds {
                assert!(c.split_once('.').is_some_and(|(_, g)| g.contains('.')), "{c}");
            }
        }
        let cp = crossplane_provider();
        assert!(
            cp.digest.is_empty()
                || cp
                    .digest
                    .strip_prefix("sha256:")
                    .is_some_and(|h| h.len() == 64 && h.bytes().all(|b| b.is_ascii_hexdigit())),
            "digest {}",
            cp.digest
        );
        assert_eq!(cp.source_commit.len(), 40);
        assert!(cp.source_commit.starts_with(&cp.tag));
        assert!(pin("crossplane").unwrap().upstream.starts_with("crossplane 2."));
        assert_eq!(
            regional(),
            vec!["cilium", "cert-manager", "flux", "crossplane", "spire", "openbao"]
        );
    }
}
