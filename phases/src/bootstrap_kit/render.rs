//! `bootstrap-kit/` rendered into Kubernetes objects.
//!
//! Per component of the release manifest: a `Namespace` (not for the
//! namespaces K3s and Flux own), a Flux `HelmRepository` for its blueprint
//! chart and a `HelmRelease` (`helm.toolkit.fluxcd.io/v2`) with the
//! manifest's pinned version, its `dependsOn`, and the component's values
//! from `bootstrap-kit/<component>/values.yaml.tera`.
//!
//! - **Compiled in**: the templates are part of the release, like the
//!   manifest; the daemon carries them, an operator reads them as files.
//! - **Strict**: an undefined variable fails the render, and no `{{`, `{%`,
//!   `${` or `PLACEHOLDER` may survive it (a literal
//!   `SOVEREIGN_FQDN_PLACEHOLDER` once reached live clusters).
//! - **One Cilium**: [`cilium_values`] is also what the `cluster` phase puts
//!   in its K3s HelmChart, so bp-cilium adopts the running datapath.

use serde_json::Value;

use crate::release::{self, Pin};

/// Namespaces that exist before the kit (K3s's and Flux's own).
const PREEXISTING: [&str; 2] = ["kube-system", "flux-system"];

const NAMESPACE: &str = include_str!("../../../bootstrap-kit/_shared/namespace.yaml.tera");
const SOURCE: &str = include_str!("../../../bootstrap-kit/_shared/source.yaml.tera");
const HELM_RELEASE: &str = include_str!("../../../bootstrap-kit/_shared/helmrelease.yaml.tera");

/// The values template of a component.
pub fn values_template(component: &str) -> Option<&'static str> {
    Some(match component {
        "cilium" => include_str!("../../../bootstrap-kit/cilium/values.yaml.tera"),
        "cert-manager" => include_str!("../../../bootstrap-kit/cert-manager/values.yaml.tera"),
        "flux" => include_str!("../../../bootstrap-kit/flux/values.yaml.tera"),
        "crossplane" => include_str!("../../../bootstrap-kit/crossplane/values.yaml.tera"),
        "sealed-secrets" => include_str!("../../../bootstrap-kit/sealed-secrets/values.yaml.tera"),
        "spire" => include_str!("../../../bootstrap-kit/spire/values.yaml.tera"),
        "nats-jetstream" => include_str!("../../../bootstrap-kit/nats-jetstream/values.yaml.tera"),
        "openbao" => include_str!("../../../bootstrap-kit/openbao/values.yaml.tera"),
        "keycloak" => include_str!("../../../bootstrap-kit/keycloak/values.yaml.tera"),
        "gitea" => include_str!("../../../bootstrap-kit/gitea/values.yaml.tera"),
        "powerdns" => include_str!("../../../bootstrap-kit/powerdns/values.yaml.tera"),
        "external-secrets" => {
            include_str!("../../../bootstrap-kit/external-secrets/values.yaml.tera")
        }
        "catalyst-platform" => {
            include_str!("../../../bootstrap-kit/catalyst-platform/values.yaml.tera")
        }
        _ => return None,
    })
}

/// What the kit is rendered for.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct KitInput {
    pub fqdn: String,
    /// The Sovereign label value (FQDN with dots as dashes).
    pub sovereign: String,
    /// Where Cilium reaches the API from every node.
    pub api_host: String,
    /// OpenBao's seal (`shamir` or `static`).
    pub seal: String,
}

/// The key id OpenBao's static seal is configured with (the key itself is
/// the Secret `openbao/openbao-static-seal`, made by the custody phase).
pub const STATIC_SEAL_KEY_ID: &str = "catalyst-zero-1";

/// One component's objects.
#[derive(Clone, Debug, PartialEq)]
pub struct Rendered {
    pub component: String,
    pub namespace: Option<Value>,
    pub source: Value,
    pub helm_release: Value,
}

impl Rendered {
    /// Every object, in apply order.
    pub fn objects(&self) -> Vec<Value> {
        let mut v: Vec<Value> = self.namespace.iter().cloned().collect();
        v.push(self.source.clone());
        v.push(self.helm_release.clone());
        v
    }
}

#[derive(Debug, thiserror::Error)]
pub enum KitError {
    #[error("no component `{0}` in the release manifest or bootstrap-kit/")]
    Unknown(String),
    #[error("bootstrap-kit/{file}: {message}")]
    Template { file: String, message: String },
    #[error("bootstrap-kit/{file} rendered `{marker}`: an unsubstituted placeholder")]
    Leftover { file: String, marker: &'static str },
    #[error("bootstrap-kit/{file} does not render to YAML: {message}")]
    Yaml { file: String, message: String },
}

fn context(pin: &Pin, input: &KitInput) -> tera::Context {
    let src = release::source();
    let mut cx = tera::Context::new();
    cx.insert("component", &pin.component);
    cx.insert("release", &pin.release);
    cx.insert("namespace", &pin.namespace);
    cx.insert("version", &pin.version);
    cx.insert("upstream", &pin.upstream);
    let deps: Vec<&str> =
        pin.depends_on.iter().filter_map(|d| release::pin(d)).map(|d| d.release.as_str()).collect();
    cx.insert("depends_on", &deps);
    cx.insert("source_url", &src.url);
    cx.insert("interval", &src.interval);
    cx.insert("pull_secret", &src.pull_secret);
    cx.insert("fqdn", &input.fqdn);
    cx.insert("sovereign", &input.sovereign);
    cx.insert("api_host", &input.api_host);
    cx.insert("seal", &input.seal);
    cx.insert("static_seal_key_id", STATIC_SEAL_KEY_ID);
    cx
}

/// Renders one template to text, strictly.
fn render_text(file: &str, template: &str, cx: &tera::Context) -> Result<String, KitError> {
    let mut tera = tera::Tera::default();
    tera.autoescape_on(Vec::<&str>::new());
    let err = |e: tera::Error| KitError::Template {
        file: file.to_owned(),
        message: cz_engine::chain(&e),
    };
    tera.add_raw_template(file, template).map_err(err)?;
    let out = tera.render(file, cx).map_err(err)?;
    for marker in ["{{", "{%", "${", "PLACEHOLDER"] {
        if out.contains(marker) {
            return Err(KitError::Leftover { file: file.to_owned(), marker });
        }
    }
    Ok(out)
}

fn yaml(file: &str, text: &str) -> Result<Value, KitError> {
    serde_saphyr::from_str(text)
        .map_err(|e| KitError::Yaml { file: file.to_owned(), message: e.to_string() })
}

/// Renders one component.
pub fn render_component(pin: &Pin, input: &KitInput) -> Result<Rendered, KitError> {
    let cx = context(pin, input);
    let values_file = format!("{}/values.yaml.tera", pin.component);
    let values_tpl =
        values_template(&pin.component).ok_or_else(|| KitError::Unknown(pin.component.clone()))?;
    let values = yaml(&values_file, &render_text(&values_file, values_tpl, &cx)?)?;
    let namespace = if PREEXISTING.contains(&pin.namespace.as_str()) {
        None
    } else {
        let f = "_shared/namespace.yaml.tera";
        Some(yaml(f, &render_text(f, NAMESPACE, &cx)?)?)
    };
    let f = "_shared/source.yaml.tera";
    let source = yaml(f, &render_text(f, SOURCE, &cx)?)?;
    let f = "_shared/helmrelease.yaml.tera";
    let mut helm_release = yaml(f, &render_text(f, HELM_RELEASE, &cx)?)?;
    helm_release["spec"]["values"] = values;
    Ok(Rendered { component: pin.component.clone(), namespace, source, helm_release })
}

/// Renders the selected components (all when `components` is empty), in the
/// manifest's order.
pub fn render_kit(components: &[String], input: &KitInput) -> Result<Vec<Rendered>, KitError> {
    for c in components {
        if release::pin(c).is_none() {
            return Err(KitError::Unknown(c.clone()));
        }
    }
    release::pins()
        .iter()
        .filter(|p| components.is_empty() || components.contains(&p.component))
        .map(|p| render_component(p, input))
        .collect()
}

/// Cilium's values as YAML text: the `cluster` phase's HelmChart
/// `valuesContent` and bp-cilium's values are this one render.
pub fn cilium_values(api_host: &str) -> Result<String, KitError> {
    let input = KitInput {
        fqdn: String::new(),
        sovereign: String::new(),
        api_host: api_host.to_owned(),
        seal: "shamir".into(),
    };
    values_text("cilium", &input)
}

/// A component's values as YAML text (comments dropped), for a K3s
/// HelmChart's `valuesContent` that must equal what its HelmRelease gets.
pub fn values_text(component: &str, input: &KitInput) -> Result<String, KitError> {
    let pin = release::pin(component).ok_or_else(|| KitError::Unknown(component.into()))?;
    let tpl = values_template(component).ok_or_else(|| KitError::Unknown(component.into()))?;
    let file = format!("{component}/values.yaml.tera");
    let text = render_text(&file, tpl, &context(pin, input))?;
    // Comments carry nothing for Helm; keep the content.
    Ok(text.lines().filter(|l| !l.trim_start().starts_with('#')).collect::<Vec<_>>().join("\n"))
}
