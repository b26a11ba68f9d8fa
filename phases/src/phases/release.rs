//! The release manifest: one pinned version for every chart and binary.
//!
//! The `cluster` phase (K3s, Cilium) and the `bootstrap-kit` phase (bp-cilium,
//! bp-flux, …) read the same pins from here, so nothing is installed twice at
//! different versions (F-35).
//!
//! TODO(bootstrap-kit issue): move this table to `bootstrap-kit/release.toml`
//! with image digests and binary checksums, verified in `preflight`.

/// A pinned component of the kit.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Pin {
    pub component: &'static str,
    /// The Flux HelmRelease name.
    pub release: &'static str,
    pub namespace: &'static str,
    /// The blueprint chart version.
    pub version: &'static str,
    /// Upstream chart and version it wraps.
    pub upstream: &'static str,
}

pub const K3S_VERSION: &str = "v1.31.4+k3s1";
/// K3s server settings (config-file keys) every server gets: Cilium is the
/// CNI, enforces network policy and replaces kube-proxy
/// (K3S-DIGEST §3; the Cilium K3s guide).
pub const K3S_SERVER_SETTINGS: &[(&str, &str)] = &[
    ("flannel-backend", "none"),
    ("disable-network-policy", "true"),
    ("disable-kube-proxy", "true"),
];
/// Packaged K3s add-ons not deployed: the kit brings its own ingress and
/// load balancing.
pub const K3S_DISABLE: &[&str] = &["traefik", "servicelb"];
pub const CILIUM_CHART_VERSION: &str = "1.16.5";
pub const FLUX_VERSION: &str = "v2.4.0";
pub const LOAD_BALANCER_TYPE: &str = "lb11";
pub const SERVER_IMAGE: &str = "ubuntu-24.04";

/// The 12 components, in install order (CATALYST-REFERENCE.md §4.2).
pub const PINS: &[Pin] = &[
    Pin {
        component: "cilium",
        release: "bp-cilium",
        namespace: "kube-system",
        version: "1.1.1",
        upstream: "cilium 1.16.5",
    },
    Pin {
        component: "cert-manager",
        release: "bp-cert-manager",
        namespace: "cert-manager",
        version: "1.1.1",
        upstream: "cert-manager v1.16.2",
    },
    Pin {
        component: "flux",
        release: "bp-flux",
        namespace: "flux-system",
        version: "1.1.2",
        upstream: "flux2 2.14.1 (Flux 2.4.0)",
    },
    Pin {
        component: "crossplane",
        release: "bp-crossplane",
        namespace: "crossplane-system",
        version: "1.1.3",
        upstream: "crossplane 1.18.0",
    },
    Pin {
        component: "sealed-secrets",
        release: "bp-sealed-secrets",
        namespace: "kube-system",
        version: "1.1.1",
        upstream: "sealed-secrets 2.16.1",
    },
    Pin {
        component: "spire",
        release: "bp-spire",
        namespace: "spire-system",
        version: "1.1.4",
        upstream: "spire-crds 0.5.0 + spire 0.21.0",
    },
    Pin {
        component: "nats-jetstream",
        release: "bp-nats-jetstream",
        namespace: "nats-system",
        version: "1.1.1",
        upstream: "nats 1.2.0",
    },
    Pin {
        component: "openbao",
        release: "bp-openbao",
        namespace: "openbao",
        version: "1.1.1",
        upstream: "openbao 0.16.0",
    },
    Pin {
        component: "keycloak",
        release: "bp-keycloak",
        namespace: "keycloak",
        version: "1.1.2",
        upstream: "keycloak 25.2.0",
    },
    Pin {
        component: "gitea",
        release: "bp-gitea",
        namespace: "gitea",
        version: "1.1.2",
        upstream: "gitea 10.5.0",
    },
    Pin {
        component: "powerdns",
        release: "bp-powerdns",
        namespace: "powerdns",
        version: "1.1.3",
        upstream: "powerdns 0.10.0",
    },
    Pin {
        component: "catalyst-platform",
        release: "bp-catalyst-platform",
        namespace: "catalyst-system",
        version: "1.1.8",
        upstream: "catalyst chart",
    },
];

/// Components an added region gets (ARCHITECTURE.md §1, add-region).
pub const REGIONAL: &[&str] = &["cilium", "cert-manager", "flux", "crossplane", "spire", "openbao"];

pub fn pin(component: &str) -> Option<&'static Pin> {
    PINS.iter().find(|p| p.component == component)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_component_is_pinned_once_and_cilium_matches_the_cluster_phase() {
        for c in crate::request::COMPONENTS {
            assert_eq!(PINS.iter().filter(|p| p.component == *c).count(), 1, "{c}");
        }
        assert!(pin("cilium").unwrap().upstream.ends_with(CILIUM_CHART_VERSION));
        assert!(pin("flux").unwrap().upstream.contains(&FLUX_VERSION[1..]));
    }
}
