//! What each chart of the kit puts in a cluster, as far as the simulated
//! controllers need it: its workloads, its CRDs and the Services whose API
//! is probed. Written from the upstream charts the blueprints wrap
//! (`bootstrap-kit/release.toml`'s `upstream`), not from the kit's probes,
//! so a probe naming a workload the chart does not have fails against the
//! fake as it would against a cluster.

use serde_json::{Value, json};

/// A workload a chart creates.
#[derive(Clone, Copy, Debug)]
pub struct Workload {
    pub kind: &'static str,
    pub name: &'static str,
    pub replicas: i64,
    /// The pods run but are never Ready (OpenBao while sealed).
    pub not_ready: Option<&'static str>,
}

/// A CRD a chart ships.
#[derive(Clone, Copy, Debug)]
pub struct Crd {
    pub group: &'static str,
    pub version: &'static str,
    pub kind: &'static str,
    pub plural: &'static str,
    pub namespaced: bool,
}

/// A Service in front of a workload, and what its application answers on
/// any path (status, body) when it has ready endpoints.
#[derive(Clone, Copy, Debug)]
pub struct Service {
    pub name: &'static str,
    pub port: u16,
    pub workload: &'static str,
    pub answer: (u16, &'static str),
}

#[derive(Clone, Copy, Debug)]
pub struct Chart {
    pub workloads: &'static [Workload],
    pub crds: &'static [Crd],
    pub services: &'static [Service],
}

const fn w(kind: &'static str, name: &'static str, replicas: i64) -> Workload {
    Workload { kind, name, replicas, not_ready: None }
}

const fn crd(
    group: &'static str,
    version: &'static str,
    kind: &'static str,
    plural: &'static str,
    namespaced: bool,
) -> Crd {
    Crd { group, version, kind, plural, namespaced }
}

const CILIUM: Chart = Chart {
    workloads: &[w("DaemonSet", "cilium", 0), w("Deployment", "cilium-operator", 1)],
    crds: &[
        crd("cilium.io", "v2", "CiliumNetworkPolicy", "ciliumnetworkpolicies", true),
        crd("cilium.io", "v2", "CiliumEnvoyConfig", "ciliumenvoyconfigs", true),
    ],
    services: &[],
};

const FLUX: Chart = Chart {
    workloads: &[
        w("Deployment", "source-controller", 1),
        w("Deployment", "helm-controller", 1),
        w("Deployment", "kustomize-controller", 1),
        w("Deployment", "notification-controller", 1),
    ],
    crds: &[
        crd("helm.toolkit.fluxcd.io", "v2", "HelmRelease", "helmreleases", true),
        crd("source.toolkit.fluxcd.io", "v1", "HelmRepository", "helmrepositories", true),
        crd("source.toolkit.fluxcd.io", "v1", "HelmChart", "helmcharts", true),
        crd("source.toolkit.fluxcd.io", "v1", "GitRepository", "gitrepositories", true),
        crd("source.toolkit.fluxcd.io", "v1beta2", "OCIRepository", "ocirepositories", true),
        crd("kustomize.toolkit.fluxcd.io", "v1", "Kustomization", "kustomizations", true),
    ],
    services: &[],
};

/// What Crossplane installs for the `provider-hetzner` package (a
/// `pkg.crossplane.io` Provider, not a Helm chart; the sim renders it the
/// same way): the provider's deployment and its namespaced CRDs
/// (`../shared/upstream/crds/provider-hetzner/`).
pub const PROVIDER_HETZNER: Chart = Chart {
    workloads: &[w("Deployment", "provider-hetzner", 1)],
    crds: &[
        crd("hetzner.m.crossplane.io", "v1beta1", "ProviderConfig", "providerconfigs", true),
        crd(
            "hetzner.m.crossplane.io",
            "v1beta1",
            "ClusterProviderConfig",
            "clusterproviderconfigs",
            false,
        ),
        crd("server.hetzner.m.crossplane.io", "v1alpha1", "Server", "servers", true),
        crd("server.hetzner.m.crossplane.io", "v1alpha1", "Network", "networks", true),
        crd("server.hetzner.m.crossplane.io", "v1alpha1", "Key", "keys", true),
        crd("server.hetzner.m.crossplane.io", "v1alpha1", "Group", "groups", true),
        crd(
            "server.hetzner.m.crossplane.io",
            "v1alpha1",
            "FirewallAttachment",
            "firewallattachments",
            true,
        ),
        crd("network.hetzner.m.crossplane.io", "v1alpha1", "Network", "networks", true),
        crd("network.hetzner.m.crossplane.io", "v1alpha1", "Subnet", "subnets", true),
        crd("network.hetzner.m.crossplane.io", "v1alpha1", "Firewall", "firewalls", true),
        crd("loadbalancer.hetzner.m.crossplane.io", "v1alpha1", "Balancer", "balancers", true),
        crd(
            "loadbalancer.hetzner.m.crossplane.io",
            "v1alpha1",
            "BalancerNetwork",
            "balancernetworks",
            true,
        ),
        crd(
            "loadbalancer.hetzner.m.crossplane.io",
            "v1alpha1",
            "BalancerService",
            "balancerservices",
            true,
        ),
        crd(
            "loadbalancer.hetzner.m.crossplane.io",
            "v1alpha1",
            "BalancerTarget",
            "balancertargets",
            true,
        ),
    ],
    services: &[],
};

const CATALOG: &[(&str, Chart)] = &[
    ("cilium", CILIUM),
    ("bp-cilium", CILIUM),
    ("flux2", FLUX),
    ("bp-flux", FLUX),
    (
        "bp-cert-manager",
        Chart {
            workloads: &[
                w("Deployment", "cert-manager", 1),
                w("Deployment", "cert-manager-cainjector", 1),
                w("Deployment", "cert-manager-webhook", 1),
            ],
            crds: &[
                crd("cert-manager.io", "v1", "Certificate", "certificates", true),
                crd("cert-manager.io", "v1", "Issuer", "issuers", true),
                crd("cert-manager.io", "v1", "ClusterIssuer", "clusterissuers", false),
            ],
            services: &[],
        },
    ),
    (
        "bp-crossplane",
        Chart {
            workloads: &[
                w("Deployment", "crossplane", 1),
                w("Deployment", "crossplane-rbac-manager", 1),
            ],
            crds: &[
                crd("pkg.crossplane.io", "v1", "Provider", "providers", false),
                crd("apiextensions.crossplane.io", "v1", "Composition", "compositions", false),
                crd(
                    "apiextensions.crossplane.io",
                    "v2",
                    "CompositeResourceDefinition",
                    "compositeresourcedefinitions",
                    false,
                ),
                // Crossplane v2: a provider's CRDs are served once a
                // ManagedResourceActivationPolicy activates them.
                crd(
                    "apiextensions.crossplane.io",
                    "v1alpha1",
                    "ManagedResourceDefinition",
                    "managedresourcedefinitions",
                    false,
                ),
                crd(
                    "apiextensions.crossplane.io",
                    "v1alpha1",
                    "ManagedResourceActivationPolicy",
                    "managedresourceactivationpolicies",
                    false,
                ),
            ],
            services: &[],
        },
    ),
    (
        "bp-sealed-secrets",
        Chart {
            workloads: &[w("Deployment", "sealed-secrets-controller", 1)],
            crds: &[crd("bitnami.com", "v1alpha1", "SealedSecret", "sealedsecrets", true)],
            services: &[],
        },
    ),
    (
        "bp-spire",
        Chart {
            workloads: &[w("StatefulSet", "spire-server", 1), w("DaemonSet", "spire-agent", 0)],
            crds: &[crd(
                "spire.spiffe.io",
                "v1alpha1",
                "ClusterSPIFFEID",
                "clusterspiffeids",
                false,
            )],
            services: &[],
        },
    ),
    (
        "bp-nats-jetstream",
        Chart { workloads: &[w("StatefulSet", "nats", 3)], crds: &[], services: &[] },
    ),
    (
        "bp-openbao",
        Chart {
            workloads: &[Workload {
                kind: "StatefulSet",
                name: "openbao",
                replicas: 3,
                not_ready: Some("Vault is sealed"),
            }],
            crds: &[],
            services: &[],
        },
    ),
    (
        "bp-external-secrets",
        Chart {
            workloads: &[
                w("Deployment", "external-secrets", 1),
                w("Deployment", "external-secrets-webhook", 1),
                w("Deployment", "external-secrets-cert-controller", 1),
            ],
            crds: &[
                crd("external-secrets.io", "v1", "ExternalSecret", "externalsecrets", true),
                crd("external-secrets.io", "v1", "SecretStore", "secretstores", true),
                crd(
                    "external-secrets.io",
                    "v1",
                    "ClusterSecretStore",
                    "clustersecretstores",
                    false,
                ),
            ],
            services: &[],
        },
    ),
    (
        "bp-keycloak",
        Chart {
            workloads: &[
                w("StatefulSet", "keycloak", 1),
                w("StatefulSet", "keycloak-postgresql", 1),
            ],
            crds: &[],
            services: &[],
        },
    ),
    (
        "bp-gitea",
        Chart {
            workloads: &[w("Deployment", "gitea", 1), w("StatefulSet", "gitea-postgresql", 1)],
            crds: &[],
            services: &[],
        },
    ),
    (
        "bp-powerdns",
        Chart {
            workloads: &[w("Deployment", "powerdns", 3)],
            crds: &[],
            // PowerDNS's webserver refuses an API call without X-API-Key.
            services: &[Service {
                name: "powerdns-api",
                port: 8081,
                workload: "powerdns",
                answer: (401, r#"{"error": "Unauthorized"}"#),
            }],
        },
    ),
    (
        "bp-catalyst-platform",
        Chart {
            workloads: &[
                w("Deployment", "catalyst-console", 2),
                w("Deployment", "catalyst-api", 2),
            ],
            crds: &[],
            services: &[],
        },
    ),
];

/// The chart named `name` (a HelmChart's `spec.chart`, a HelmRelease's
/// `spec.chart.spec.chart`).
pub fn chart(name: &str) -> Option<&'static Chart> {
    CATALOG.iter().find(|(n, _)| *n == name).map(|(_, c)| c)
}

/// The objects `chart` renders as Helm release `release` in `ns`: its CRDs
/// (cluster-scoped), workloads and Services, as (group, plural, object),
/// carrying Helm's ownership annotations.
pub fn manifests(
    chart: &Chart,
    release: &str,
    ns: &str,
) -> Vec<(&'static str, &'static str, Value)> {
    let annotations =
        json!({"meta.helm.sh/release-name": release, "meta.helm.sh/release-namespace": ns});
    let mut objs = Vec::new();
    for c in chart.crds {
        let schema = json!({"openAPIV3Schema": {"type": "object", "x-kubernetes-preserve-unknown-fields": true}});
        objs.push((
            "apiextensions.k8s.io",
            "customresourcedefinitions",
            json!({
                "apiVersion": "apiextensions.k8s.io/v1", "kind": "CustomResourceDefinition",
                "metadata": {"name": format!("{}.{}", c.plural, c.group)},
                "spec": {
                    "group": c.group,
                    "scope": if c.namespaced { "Namespaced" } else { "Cluster" },
                    "names": {"kind": c.kind, "plural": c.plural,
                              "singular": c.kind.to_lowercase(), "listKind": format!("{}List", c.kind)},
                    "versions": [{"name": c.version, "served": true, "storage": true, "schema": schema}],
                }
            }),
        ));
    }
    for w in chart.workloads {
        // Each component runs as its own service account, as charts do.
        objs.push((
            "",
            "serviceaccounts",
            json!({"apiVersion": "v1", "kind": "ServiceAccount",
                   "metadata": {"name": w.name, "namespace": ns, "annotations": annotations.clone()}}),
        ));
        let sel = json!({"app.kubernetes.io/name": w.name, "app.kubernetes.io/instance": release});
        let mut spec = json!({
            "selector": {"matchLabels": sel},
            "template": {"metadata": {"labels": sel},
                         "spec": {"serviceAccountName": w.name, "containers": [{"name": w.name, "image": format!("{}:pinned", w.name)}]}},
        });
        if w.kind != "DaemonSet" {
            spec["replicas"] = json!(w.replicas);
        }
        let mut ann = annotations.clone();
        if let Some(why) = w.not_ready {
            ann["sim.catalyst-zero.io/not-ready"] = json!(why);
        }
        let plural = match w.kind {
            "Deployment" => "deployments",
            "StatefulSet" => "statefulsets",
            _ => "daemonsets",
        };
        objs.push((
            "apps",
            plural,
            json!({"apiVersion": "apps/v1", "kind": w.kind,
                   "metadata": {"name": w.name, "namespace": ns, "annotations": ann}, "spec": spec}),
        ));
    }
    for svc in chart.services {
        let mut ann = annotations.clone();
        ann["sim.catalyst-zero.io/answer"] =
            json!(json!({"status": svc.answer.0, "body": svc.answer.1}).to_string());
        objs.push((
            "",
            "services",
            json!({"apiVersion": "v1", "kind": "Service",
                   "metadata": {"name": svc.name, "namespace": ns, "annotations": ann},
                   "spec": {"selector": {"app.kubernetes.io/name": svc.workload,
                                         "app.kubernetes.io/instance": release},
                            "ports": [{"port": svc.port, "targetPort": svc.port}]}}),
        ));
    }
    objs
}

/// The name of a workload's `i`th pod.
pub fn pod_name(kind: &str, workload: &str, i: i64) -> String {
    if kind == "StatefulSet" { format!("{workload}-{i}") } else { format!("{workload}-7d9f8-{i}") }
}

/// A running pod of `workload` (a Deployment/StatefulSet/DaemonSet
/// object): Ready unless the workload is annotated not-ready (the reason
/// becomes the readiness probe's failure) or `crash_restarts` says it
/// crash-loops.
pub fn pod(kind: &str, workload: &Value, name: &str, crash_restarts: Option<i64>) -> Value {
    let wname = workload.pointer("/metadata/name").and_then(Value::as_str).unwrap_or_default();
    let ns = workload.pointer("/metadata/namespace").and_then(Value::as_str).unwrap_or_default();
    let not_ready = workload
        .pointer("/metadata/annotations/sim.catalyst-zero.io~1not-ready")
        .and_then(Value::as_str);
    let ready = crash_restarts.is_none() && not_ready.is_none();
    let state = match crash_restarts {
        Some(_) => json!({"waiting": {"reason": "CrashLoopBackOff",
            "message": format!("back-off 5m0s restarting failed container={wname} pod={name}")}}),
        None => json!({"running": {"startedAt": "2026-01-01T00:00:00Z"}}),
    };
    let mut ready_cond = json!({"type": "Ready", "status": if ready { "True" } else { "False" }});
    if let Some(why) = not_ready {
        ready_cond["reason"] = json!("ContainersNotReady");
        ready_cond["message"] = json!(format!("readiness probe failed: {why}"));
    }
    let mut labels = workload.pointer("/spec/selector/matchLabels").cloned().unwrap_or(json!({}));
    labels["sim.catalyst-zero.io/owner"] = json!(format!("{kind}.{wname}"));
    json!({
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": name, "namespace": ns, "labels": labels,
                     "ownerReferences": [{"kind": kind, "name": wname}]},
        "spec": workload.pointer("/spec/template/spec").cloned().unwrap_or(json!({})),
        "status": {"phase": "Running", "conditions": [ready_cond],
                   "containerStatuses": [{"name": wname, "ready": ready,
                                          "restartCount": crash_restarts.unwrap_or(0), "state": state}]}
    })
}
