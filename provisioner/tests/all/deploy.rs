//! `deploy/`: the Dockerfile, the Kubernetes manifests and the systemd unit
//! pass only flags and `CATALYST_ZERO_*` variables the daemon really has,
//! and hold together (probes, selectors, mounts, a non-root image).
//!
//! What `serve` accepts is read from the CLI itself: its clap arguments
//! (long names and `env`), the global ones, and every variable
//! [`Config::apply_env`] looks up. Nothing here builds an image, runs a
//! cluster or starts systemd: none of them exists where the tests run.

use std::cell::RefCell;
use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

use catalyst_zero::Config;
use catalyst_zero::cli::Cli;
use clap::CommandFactory;
use serde_json::Value;

/// The prefix of the daemon's own variables.
const PREFIX: &str = "CATALYST_ZERO_";

fn deploy_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy")
}

fn read(rel: &str) -> String {
    std::fs::read_to_string(deploy_dir().join(rel)).unwrap_or_else(|e| panic!("deploy/{rel}: {e}"))
}

/// What `catalyst-zero serve` accepts.
struct Serve {
    flags: BTreeSet<String>,
    env: BTreeSet<String>,
}

impl Serve {
    fn from_cli() -> Serve {
        let cli = Cli::command();
        let serve = cli.find_subcommand("serve").expect("the CLI has `serve`");
        let mut flags = BTreeSet::new();
        let mut env = BTreeSet::new();
        // Global arguments (--log-format) are declared on the top command.
        for a in cli.get_arguments().filter(|a| a.is_global_set()).chain(serve.get_arguments()) {
            flags.extend(a.get_long().map(str::to_owned));
            env.extend(a.get_env().map(|e| e.to_string_lossy().into_owned()));
        }
        // Variables the config reads that are no clap argument (the TLS
        // pair, the tokens file, the at-rest key, ...): every name it asks
        // for when none is set.
        let asked = RefCell::new(BTreeSet::new());
        Config::default()
            .apply_env(&|k| {
                asked.borrow_mut().insert(k.to_owned());
                None
            })
            .expect("no variable set, nothing to refuse");
        env.extend(asked.into_inner());
        assert!(flags.contains("data-dir") && env.contains("CATALYST_ZERO_TLS_CERT"));
        Serve { flags, env }
    }

    /// `args` must be `serve` followed by known `--flag`s (`--f v` or
    /// `--f=v`). Returns the flags and their values.
    fn check_args(
        &self,
        place: &str,
        args: &[String],
        errors: &mut Vec<String>,
    ) -> BTreeMap<String, String> {
        if args.first().map(String::as_str) != Some("serve") {
            errors.push(format!("{place}: the arguments do not start with `serve`: {args:?}"));
        }
        let mut given = BTreeMap::new();
        for (i, a) in args.iter().enumerate() {
            let Some(flag) = a.strip_prefix("--") else { continue };
            let (name, value) = match flag.split_once('=') {
                Some((n, v)) => (n, v.to_owned()),
                None => (flag, args.get(i + 1).cloned().unwrap_or_default()),
            };
            if !self.flags.contains(name) {
                errors.push(format!(
                    "{place}: `serve` has no flag --{name} (it has: {})",
                    self.flags.iter().map(|f| format!("--{f}")).collect::<Vec<_>>().join(" ")
                ));
            }
            given.insert(name.to_owned(), value);
        }
        given
    }

    fn check_env<'a>(
        &self,
        place: &str,
        names: impl IntoIterator<Item = &'a str>,
        errors: &mut Vec<String>,
    ) {
        for n in names {
            if n.starts_with(PREFIX) && !self.env.contains(n) {
                errors.push(format!("{place}: the daemon reads no variable {n}"));
            }
        }
    }
}

fn finish(errors: Vec<String>) {
    assert!(errors.is_empty(), "{} problem(s):\n{}", errors.len(), errors.join("\n"));
}

fn port_of(listen: &str) -> u16 {
    let addr: std::net::SocketAddr = listen.parse().unwrap_or_else(|e| panic!("{listen}: {e}"));
    addr.port()
}

fn strings(v: &Value) -> Vec<String> {
    v.as_array()
        .map(|a| a.iter().map(|s| s.as_str().expect("a string").to_owned()).collect())
        .unwrap_or_default()
}

fn str_at<'a>(v: &'a Value, pointer: &str) -> &'a str {
    v.pointer(pointer).and_then(Value::as_str).unwrap_or_else(|| panic!("no string at {pointer}"))
}

// --- Kubernetes -------------------------------------------------------------

/// Every document of every resource the kustomization lists, by kind.
fn manifests() -> (Value, BTreeMap<String, Value>) {
    let kustomization: Value =
        serde_saphyr::from_str(&read("kubernetes/kustomization.yaml")).expect("kustomization");
    let resources = strings(&kustomization["resources"]);
    let on_disk: BTreeSet<String> = std::fs::read_dir(deploy_dir().join("kubernetes"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.ends_with(".yaml") && n != "kustomization.yaml")
        .collect();
    assert_eq!(
        on_disk,
        resources.iter().cloned().collect(),
        "every manifest is in kustomization.yaml"
    );
    let mut by_kind = BTreeMap::new();
    for r in &resources {
        let docs: Vec<Value> = serde_saphyr::from_multiple(&read(&format!("kubernetes/{r}")))
            .unwrap_or_else(|e| panic!("kubernetes/{r}: {e}"));
        for d in docs {
            let kind = str_at(&d, "/kind").to_owned();
            str_at(&d, "/apiVersion");
            str_at(&d, "/metadata/name");
            if kind != "Namespace" {
                assert_eq!(
                    d.pointer("/metadata/namespace"),
                    kustomization.get("namespace"),
                    "{r}: {kind} in the kustomization's namespace"
                );
            }
            assert!(by_kind.insert(kind.clone(), d).is_none(), "one {kind}");
        }
    }
    (kustomization, by_kind)
}

/// Labels `selector` picks must all be on `labels`.
fn selects(selector: &Value, labels: &Value) -> bool {
    let s = selector.as_object().expect("a selector");
    !s.is_empty() && s.iter().all(|(k, v)| labels.get(k) == Some(v))
}

#[test]
fn kubernetes_manifests_use_real_flags_and_hold_together() {
    let serve = Serve::from_cli();
    let (_, m) = manifests();
    let mut errors = Vec::new();
    for kind in [
        "Namespace",
        "ServiceAccount",
        "ConfigMap",
        "Deployment",
        "Service",
        "PodDisruptionBudget",
        "PersistentVolumeClaim",
    ] {
        assert!(m.contains_key(kind), "no {kind}");
    }
    let deploy = &m["Deployment"];
    let pod = &deploy["spec"]["template"];
    let spec = &pod["spec"];
    let match_labels = &deploy["spec"]["selector"]["matchLabels"];
    assert!(selects(match_labels, &pod["metadata"]["labels"]), "selector picks the pods");
    let replicas = deploy["spec"]["replicas"].as_u64().expect("replicas");
    assert!(replicas >= 2, "N replicas");

    // The pod: never root.
    let psc = &spec["securityContext"];
    assert_eq!(psc["runAsNonRoot"], true);
    assert!(psc["runAsUser"].as_u64().is_some_and(|u| u != 0), "a fixed non-root UID");

    let volumes: BTreeMap<&str, &Value> = spec["volumes"]
        .as_array()
        .expect("volumes")
        .iter()
        .map(|v| (str_at(v, "/name"), v))
        .collect();
    let config_map = &m["ConfigMap"];

    let all = spec["initContainers"]
        .as_array()
        .into_iter()
        .flatten()
        .chain(spec["containers"].as_array().expect("containers"));
    let mut daemons = 0;
    for c in all {
        let name = str_at(c, "/name");
        let place = format!("deployment.yaml container {name}");
        let sc = &c["securityContext"];
        if sc["allowPrivilegeEscalation"] != false || sc["readOnlyRootFilesystem"] != true {
            errors.push(format!(
                "{place}: allowPrivilegeEscalation false, readOnlyRootFilesystem true"
            ));
        }
        let env: Vec<&Value> = c["env"].as_array().into_iter().flatten().collect();
        serve.check_env(&place, env.iter().map(|e| str_at(e, "/name")), &mut errors);
        // A Secret's value never sits in the manifest.
        for e in &env {
            let n = str_at(e, "/name");
            if (n.ends_with("_TOKEN") || n.ends_with("_API_KEY") || n.ends_with("_DATABASE_URL"))
                && e.get("valueFrom").is_none()
            {
                errors.push(format!("{place}: {n} is not from a Secret"));
            }
        }
        // The image's ENTRYPOINT runs the daemon unless `command` replaces it.
        let command = strings(&c["command"]);
        if !(command.is_empty() || command[0].ends_with("catalyst-zero")) {
            continue;
        }
        daemons += 1;
        let args = strings(&c["args"]);
        let given = serve.check_args(&place, &args, &mut errors);

        // Every file the daemon is pointed at is on a mount (the root file
        // system is read-only), and a config file is a key of its ConfigMap.
        let mounts: Vec<(&str, &str)> = c["volumeMounts"]
            .as_array()
            .into_iter()
            .flatten()
            .map(|v| (str_at(v, "/mountPath"), str_at(v, "/name")))
            .collect();
        let env_paths = env
            .iter()
            .filter(|e| str_at(e, "/name").ends_with("_FILE"))
            .filter_map(|e| e["value"].as_str());
        // Replicas share the tofu workspaces: --shared-dir on a volume
        // claim every replica can write (ReadWriteMany).
        match given.get("shared-dir") {
            None if replicas > 1 => errors.push(format!("{place}: replicas without --shared-dir")),
            None => {}
            Some(dir) => {
                let vol = mounts.iter().find(|(d, _)| Path::new(dir).starts_with(d)).map(|m| m.1);
                let claim = vol
                    .and_then(|v| volumes.get(v))
                    .and_then(|v| v.pointer("/persistentVolumeClaim/claimName"))
                    .and_then(Value::as_str);
                let rwx = claim
                    .and_then(|c| {
                        m.get("PersistentVolumeClaim").filter(|p| str_at(p, "/metadata/name") == c)
                    })
                    .is_some_and(|p| {
                        strings(&p["spec"]["accessModes"]).iter().any(|a| a == "ReadWriteMany")
                    });
                if !rwx {
                    errors.push(format!("{place}: --shared-dir is not on a ReadWriteMany claim"));
                }
            }
        }
        let flag_paths = ["config", "data-dir", "tls-cert", "tls-key", "at-rest-key", "shared-dir"]
            .iter()
            .filter_map(|f| given.get(*f).map(String::as_str));
        for path in flag_paths.chain(env_paths) {
            let Some((dir, vol)) =
                mounts.iter().find(|(dir, _)| Path::new(path).starts_with(dir)).copied()
            else {
                errors.push(format!("{place}: {path} is on no volume mount"));
                continue;
            };
            let Some(volume) = volumes.get(vol) else {
                errors.push(format!("{place}: mount {vol} has no volume"));
                continue;
            };
            if let Some(cm) = volume.pointer("/configMap/name") {
                assert_eq!(cm, &config_map["metadata"]["name"]);
                let key = Path::new(path).strip_prefix(dir).unwrap().to_string_lossy();
                if config_map["data"].get(key.as_ref()).is_none() {
                    errors.push(format!("{place}: the ConfigMap has no key {key}"));
                }
            }
        }
        // The daemon refuses an at-rest key group or others can read, and
        // Kubernetes makes Secret files group-readable under fsGroup.
        if let Some(key) = given.get("at-rest-key")
            && let Some((_, vol)) = mounts.iter().find(|(dir, _)| Path::new(key).starts_with(dir))
            && volumes.get(vol).is_some_and(|v| v.get("secret").is_some())
            && psc.get("fsGroup").is_some()
        {
            errors.push(format!("{place}: --at-rest-key on a Secret volume is 0440: refused"));
        }

        // Probes: alive at /healthz, ready at /readyz, on the API port, with
        // the API's scheme.
        let listen = port_of(given.get("listen").expect("--listen"));
        let ports = c["ports"].as_array().expect("ports");
        let api = ports
            .iter()
            .find(|p| p["containerPort"].as_u64() == Some(u64::from(listen)))
            .unwrap_or_else(|| panic!("{place}: no containerPort {listen}"));
        let scheme = if given.contains_key("tls-cert") { "HTTPS" } else { "HTTP" };
        for (probe, path) in [
            ("livenessProbe", "/healthz"),
            ("readinessProbe", "/readyz"),
            ("startupProbe", "/healthz"),
        ] {
            let p = &c[probe]["httpGet"];
            if p.is_null() && probe == "startupProbe" {
                continue;
            }
            if p["path"] != path {
                errors.push(format!("{place}: {probe} is not on {path}"));
            }
            if p["port"] != api["name"] && p["port"] != api["containerPort"] {
                errors.push(format!("{place}: {probe} is not on the API port"));
            }
            if p["scheme"] != scheme {
                errors.push(format!("{place}: {probe} scheme is not {scheme}"));
            }
        }
        // Several replicas share one store: PostgreSQL (SQLite is one
        // daemon's), its URL from a Secret.
        if replicas > 1
            && !env.iter().any(|e| {
                str_at(e, "/name") == "CATALYST_ZERO_DATABASE_URL"
                    && e.pointer("/valueFrom/secretKeyRef").is_some()
            })
        {
            errors.push(format!("{place}: {replicas} replicas without the PostgreSQL store"));
        }
        let service = &m["Service"]["spec"];
        assert!(selects(&service["selector"], &pod["metadata"]["labels"]), "service selects");
        assert!(
            service["ports"]
                .as_array()
                .unwrap()
                .iter()
                .all(|p| p["targetPort"] == api["name"] || p["targetPort"] == api["containerPort"]),
            "the Service targets the API port"
        );
    }
    assert_eq!(daemons, 1, "one container runs the daemon");

    // The config file parses as the daemon's (unknown keys are an error).
    let toml = str_at(config_map, "/data/config.toml");
    if let Err(e) = Config::from_toml(toml) {
        errors.push(format!("configmap.yaml config.toml: {e}"));
    }

    // The PodDisruptionBudget guards these pods and leaves some up.
    let pdb = &m["PodDisruptionBudget"]["spec"];
    assert_eq!(&pdb["selector"]["matchLabels"], match_labels, "PDB selector = Deployment's");
    let down = pdb["maxUnavailable"]
        .as_u64()
        .or_else(|| pdb["minAvailable"].as_u64().map(|min| replicas.saturating_sub(min)))
        .expect("maxUnavailable or minAvailable, a number");
    assert!((1..replicas).contains(&down), "a drain may take 1..{replicas} pods, not {down}");
    finish(errors);
}

// --- Dockerfile -------------------------------------------------------------

/// The logical lines of a file whose lines continue with a trailing `\`
/// (Dockerfile, systemd): continuations joined, blank lines and lines
/// starting with one of `comments` dropped (a comment inside a
/// continuation is kept as text, as both formats read it).
fn logical_lines(text: &str, comments: &[char]) -> Vec<String> {
    let mut out = Vec::new();
    let mut cur = String::new();
    for line in text.lines() {
        let t = line.trim();
        if cur.is_empty() && (t.is_empty() || t.starts_with(comments)) {
            continue;
        }
        match t.strip_suffix('\\') {
            Some(head) => {
                cur.push_str(head);
                cur.push(' ');
            }
            None => {
                cur.push_str(t);
                out.push(std::mem::take(&mut cur));
            }
        }
    }
    out
}

/// The Dockerfile's instructions, continuations joined, comments dropped.
fn dockerfile() -> Vec<(String, String)> {
    logical_lines(&read("Dockerfile"), &['#'])
        .into_iter()
        .map(|l| {
            let (k, v) = l.split_once(char::is_whitespace).unwrap_or((&l, ""));
            (k.to_uppercase(), v.trim().to_owned())
        })
        .collect()
}

#[test]
fn dockerfile_is_multi_stage_non_root_and_uses_real_flags() {
    let serve = Serve::from_cli();
    let mut errors = Vec::new();
    let ins = dockerfile();
    let froms = ins.iter().filter(|(k, _)| k == "FROM").count();
    assert!(froms >= 2, "a builder stage and a runtime stage, not {froms}");
    let last_from = ins.iter().rposition(|(k, _)| k == "FROM").unwrap();
    let runtime = &ins[last_from..];
    let one = |k: &str| -> &str {
        let v: Vec<&str> =
            runtime.iter().filter(|(i, _)| i == k).map(|(_, v)| v.as_str()).collect();
        v.last().copied().unwrap_or_else(|| panic!("the runtime stage has no {k}"))
    };
    let builder = ins[..last_from].iter().filter(|(k, _)| k == "RUN").map(|(_, v)| v.as_str());
    assert!(
        builder.clone().any(|r| r.contains("cargo build --release --locked -p catalyst-zero")),
        "the builder builds the package"
    );
    assert_eq!(env!("CARGO_PKG_NAME"), "catalyst-zero");

    let user = one("USER");
    let uid = user.split(':').next().unwrap();
    assert!(uid.parse::<u32>().is_ok_and(|u| u != 0), "USER is a fixed non-root UID: {user}");

    let exec_form = |k: &str| -> Vec<String> {
        serde_json::from_str(one(k)).unwrap_or_else(|e| panic!("{k} in exec form: {e}"))
    };
    let entrypoint = exec_form("ENTRYPOINT");
    assert!(entrypoint.last().is_some_and(|b| b.ends_with("/catalyst-zero")), "{entrypoint:?}");
    let cmd = exec_form("CMD");
    let given = serve.check_args("Dockerfile CMD", &cmd, &mut errors);
    let listen = port_of(given.get("listen").expect("CMD --listen"));
    assert_eq!(one("EXPOSE"), listen.to_string(), "EXPOSE the API port");

    let env_names = runtime
        .iter()
        .filter(|(k, _)| k == "ENV")
        .flat_map(|(_, v)| v.split_whitespace())
        .filter_map(|kv| kv.split_once('=').map(|(k, _)| k));
    serve.check_env("Dockerfile ENV", env_names, &mut errors);
    finish(errors);
}

// --- systemd ----------------------------------------------------------------

/// The unit's `[Service]` settings, continuations joined, in order.
fn unit_service() -> Vec<(String, String)> {
    let mut out = Vec::new();
    let mut section = String::new();
    for l in logical_lines(&read("systemd/catalyst-zero.service"), &['#', ';']) {
        if l.starts_with('[') {
            section = l;
        } else if section == "[Service]" {
            let (k, v) = l.split_once('=').expect("Key=Value");
            out.push((k.trim().to_owned(), v.trim().to_owned()));
        }
    }
    out
}

#[test]
fn systemd_unit_uses_real_flags_and_is_hardened() {
    let serve = Serve::from_cli();
    let mut errors = Vec::new();
    let service = unit_service();
    let all = |k: &str| -> Vec<&str> {
        service.iter().filter(|(x, _)| x == k).map(|(_, v)| v.as_str()).collect()
    };
    let one = |k: &str| -> &str {
        let v = all(k);
        assert_eq!(v.len(), 1, "one {k}=");
        v[0]
    };

    let exec: Vec<String> = one("ExecStart")
        .trim_start_matches(['-', '@', ':', '+', '!'])
        .split_whitespace()
        .map(str::to_owned)
        .collect();
    assert!(exec[0].starts_with('/') && exec[0].ends_with("/catalyst-zero"), "{exec:?}");
    let given = serve.check_args("catalyst-zero.service ExecStart", &exec[1..], &mut errors);

    let mut names: Vec<&str> = all("Environment")
        .into_iter()
        .flat_map(|v| v.split_whitespace())
        .filter_map(|kv| kv.trim_matches('"').split_once('=').map(|(k, _)| k))
        .collect();
    // The example EnvironmentFile, commented-out lines too.
    let example = read("systemd/catalyst-zero.env.example");
    names.extend(
        example
            .lines()
            .map(|l| l.trim().trim_start_matches('#'))
            .filter_map(|l| l.split_once('=').map(|(k, _)| k))
            .filter(|k| !k.contains(char::is_whitespace)),
    );
    serve.check_env("catalyst-zero.service Environment", names, &mut errors);

    // SQLite in the state directory, one daemon on it.
    let state = one("StateDirectory");
    assert_eq!(given.get("data-dir").map(String::as_str), Some(&*format!("/var/lib/{state}")));
    assert!(!all("EnvironmentFile").is_empty(), "secrets from an EnvironmentFile");
    // The at-rest key: the credential the daemon looks for by itself.
    let key = Config { data_dir: "/nonexistent/cz".into(), ..Config::default() }
        .at_rest_key_path(&|k| (k == "CREDENTIALS_DIRECTORY").then(|| "/creds".to_owned()))
        .expect("a key path");
    let id = key.strip_prefix("/creds").unwrap().to_string_lossy().into_owned();
    assert!(
        all("LoadCredential").iter().any(|c| c.split(':').next() == Some(&*id)),
        "LoadCredential={id}:…"
    );
    for (k, v) in [
        ("Restart", "on-failure"),
        ("NoNewPrivileges", "yes"),
        ("ProtectSystem", "strict"),
        ("PrivateTmp", "yes"),
        ("ProtectHome", "yes"),
    ] {
        if one(k) != v {
            errors.push(format!("catalyst-zero.service: {k}={v}"));
        }
    }
    let user = one("User");
    assert!(user != "root" && user != "0", "a dedicated user");
    finish(errors);
}
