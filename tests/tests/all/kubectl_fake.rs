//! The fake Kubernetes API server held to the client every operator uses:
//! `kubectl` (1.32 on these machines) against `catalyst-zero kube-fake`
//! (TLS, its own CA, an admin client certificate). Discovery and short
//! names, a CRD registering its kind, server-side apply with a
//! field-manager conflict and `--force-conflicts`, set-based label
//! selectors, a live watch and one resumed from a `resourceVersion`,
//! `wait --for=condition` and `--for=delete`, deletion held by a finalizer
//! until it is removed, and a `NotFound` as the real server words it.

use std::io::Read as _;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use cz_testkit::daemon::binary;

struct KubeFake {
    child: Child,
    kubeconfig: PathBuf,
    _dir: tempfile::TempDir,
}

impl Drop for KubeFake {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl KubeFake {
    fn start() -> KubeFake {
        let dir = tempfile::tempdir().unwrap();
        let kubeconfig = dir.path().join("kubeconfig");
        let child = Command::new(binary())
            .args(["kube-fake", "--kubeconfig"])
            .arg(&kubeconfig)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("the binary runs");
        let started = Instant::now();
        while !kubeconfig.exists() {
            assert!(started.elapsed() < Duration::from_secs(20), "kube-fake never started");
            std::thread::sleep(Duration::from_millis(50));
        }
        std::thread::sleep(Duration::from_millis(200));
        KubeFake { child, kubeconfig, _dir: dir }
    }

    fn cmd(&self, args: &[&str]) -> Command {
        let mut c = Command::new("kubectl");
        c.env("KUBECONFIG", &self.kubeconfig).args(args);
        c
    }

    /// Runs kubectl: (success, stdout, stderr).
    fn run(&self, args: &[&str]) -> (bool, String, String) {
        let out = self.cmd(args).output().expect("kubectl runs");
        let text = |b: &[u8]| String::from_utf8_lossy(b).into_owned();
        (out.status.success(), text(&out.stdout), text(&out.stderr))
    }

    fn ok(&self, args: &[&str]) -> String {
        let (ok, out, err) = self.run(args);
        assert!(ok, "kubectl {args:?} failed:\n{out}\n{err}");
        out
    }

    fn apply(&self, manager: &str, file: &Path, force: bool) -> (bool, String, String) {
        let f = file.to_str().unwrap();
        let mut args = vec!["apply", "--server-side", "--field-manager", manager, "-f", f];
        if force {
            args.push("--force-conflicts");
        }
        self.run(&args)
    }

    /// Runs kubectl in the background for `secs` while `during` runs,
    /// then stops it and returns what it printed.
    fn streaming(&self, args: &[&str], secs: f64, during: impl FnOnce()) -> String {
        let mut child = self.cmd(args).stdout(Stdio::piped()).spawn().expect("kubectl runs");
        std::thread::sleep(Duration::from_millis(700));
        during();
        std::thread::sleep(Duration::from_secs_f64(secs));
        let _ = child.kill();
        let mut out = String::new();
        child.stdout.take().unwrap().read_to_string(&mut out).unwrap();
        let _ = child.wait();
        out
    }
}

fn kubectl_available() -> bool {
    Command::new("kubectl").args(["version", "--client"]).output().is_ok_and(|o| o.status.success())
}

const CM: &str = "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: c1\n  namespace: default\n  \
                  labels: {app: a, tier: web}\ndata: {k: VALUE}\n";
const OTHER: &str = "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: c2\n  namespace: default\n  \
                     labels: {app: a, tier: db}\ndata: {k: v}\n";
const CRD: &str = "apiVersion: apiextensions.k8s.io/v1\nkind: CustomResourceDefinition\nmetadata:\n  \
    name: widgets.example.com\nspec:\n  group: example.com\n  scope: Namespaced\n  names:\n    \
    plural: widgets\n    singular: widget\n    kind: Widget\n    shortNames: [wg]\n  versions:\n  \
    - name: v1\n    served: true\n    storage: true\n    schema:\n      openAPIV3Schema:\n        \
    type: object\n        x-kubernetes-preserve-unknown-fields: true\n";
const WIDGET: &str = "apiVersion: example.com/v1\nkind: Widget\nmetadata:\n  name: w1\n  \
    namespace: default\n  finalizers: [example.com/hold]\nspec: {size: 3}\n";

#[test]
fn kubectl_works_against_the_fake_api_server() {
    if !kubectl_available() {
        if std::env::var("CZ_ALLOW_NO_KUBECTL").as_deref() == Ok("1") {
            cz_testkit::skip("kubectl_fake", "no kubectl on this machine");
            return;
        }
        panic!("NO kubectl: install it or set CZ_ALLOW_NO_KUBECTL=1 to skip loudly");
    }
    let k = KubeFake::start();
    let dir = tempfile::tempdir().unwrap();
    let file = |name: &str, body: &str| {
        let f = dir.path().join(name);
        std::fs::write(&f, body).unwrap();
        f
    };

    // Discovery, short names.
    let resources = k.ok(&["api-resources", "-o", "name"]);
    for r in [
        "configmaps",
        "namespaces",
        "deployments.apps",
        "customresourcedefinitions.apiextensions.k8s.io",
    ] {
        assert!(resources.lines().any(|l| l == r), "no {r} in\n{resources}");
    }
    assert!(k.ok(&["get", "ns", "-o", "name"]).contains("namespace/default"));

    // A CRD registers its kind, short name included.
    let (ok, out, err) = k.apply("cz", &file("crd.yaml", CRD), false);
    assert!(ok, "{out}{err}");
    k.ok(&["wait", "--for=condition=Established", "crd/widgets.example.com", "--timeout=10s"]);
    assert!(k.ok(&["api-resources", "-o", "name"]).contains("widgets.example.com"));

    // Server-side apply: a second manager changing alice's field is a
    // conflict, unless it forces, which takes the field over.
    let (ok, out, err) = k.apply("alice", &file("c1.yaml", &CM.replace("VALUE", "v1")), false);
    assert!(ok && out.contains("serverside-applied"), "{out}{err}");
    let (ok, out, err) = k.apply("bob", &file("c1b.yaml", &CM.replace("VALUE", "v2")), false);
    assert!(!ok && err.contains("conflict") && err.contains("alice"), "{out}{err}");
    let (ok, out, err) = k.apply("bob", &file("c1b.yaml", &CM.replace("VALUE", "v2")), true);
    assert!(ok, "{out}{err}");
    let got =
        k.ok(&["get", "cm", "c1", "-o", "jsonpath={.data.k} {.metadata.managedFields[*].manager}"]);
    assert!(got.starts_with("v2 ") && got.contains("bob"), "{got}");
    let (ok, out, err) = k.apply("alice", &file("c2.yaml", OTHER), false);
    assert!(ok, "{out}{err}");

    // Set-based selectors.
    let sel = k.ok(&["get", "cm", "-l", "app in (a,b),tier!=db", "-o", "name"]);
    assert_eq!(sel.trim(), "configmap/c1", "{sel}");
    let sel = k.ok(&["get", "cm", "-l", "tier notin (web),app", "-o", "name"]);
    assert_eq!(sel.trim(), "configmap/c2", "{sel}");

    // A live watch sees the change; a watch resumed from the
    // resourceVersion before it replays it.
    let rv = k.ok(&["get", "cm", "c1", "-o", "jsonpath={.metadata.resourceVersion}"]);
    let live = k.streaming(
        &["get", "cm", "c1", "--watch", "-o", "jsonpath={.data.k}{\"\\n\"}"],
        1.0,
        || {
            let (ok, out, err) =
                k.apply("bob", &file("c1c.yaml", &CM.replace("VALUE", "v3")), true);
            assert!(ok, "{out}{err}");
        },
    );
    assert!(live.lines().any(|l| l == "v3"), "the live watch missed the change: {live}");
    let path = format!("/api/v1/namespaces/default/configmaps?watch=true&resourceVersion={rv}");
    let resumed = k.streaming(&["get", "--raw", &path], 0.5, || {});
    // Every event since that version, in order: c2 made, then c1 changed.
    let events: Vec<serde_json::Value> =
        resumed.lines().filter_map(|l| serde_json::from_str(l).ok()).collect();
    let seen: Vec<(String, String)> = events
        .iter()
        .map(|e| {
            (
                e["type"].as_str().unwrap_or("").into(),
                e["object"]["metadata"]["name"].as_str().unwrap_or("").into(),
            )
        })
        .collect();
    let c1 = seen.iter().position(|(t, n)| t == "MODIFIED" && n == "c1");
    assert!(c1.is_some_and(|i| events[i]["object"]["data"]["k"] == "v3"), "{resumed}");
    assert_eq!(seen.first(), Some(&("ADDED".into(), "c2".into())), "{resumed}");

    // wait --for=condition, once a controller (here: kubectl on the
    // status subresource) reports it.
    let (ok, out, err) = k.apply("cz", &file("w1.yaml", WIDGET), false);
    assert!(ok, "{out}{err}");
    let waiter = k.cmd(&["wait", "--for=condition=Ready", "widget/w1", "--timeout=20s"]).spawn();
    let mut waiter = waiter.expect("kubectl runs");
    std::thread::sleep(Duration::from_millis(500));
    k.ok(&[
        "patch",
        "wg",
        "w1",
        "--subresource=status",
        "--type=merge",
        "-p",
        r#"{"status":{"conditions":[{"type":"Ready","status":"True"}]}}"#,
    ]);
    assert!(waiter.wait().unwrap().success(), "wait --for=condition never saw Ready");

    // Deletion waits for the finalizer; removing it deletes the object.
    assert!(k.ok(&["delete", "wg", "w1", "--wait=false"]).contains("deleted"));
    let marked = k.ok(&["get", "wg", "w1", "-o", "jsonpath={.metadata.deletionTimestamp}"]);
    assert!(!marked.trim().is_empty(), "no deletionTimestamp");
    let mut gone = k.cmd(&["wait", "--for=delete", "widget/w1", "--timeout=20s"]).spawn().unwrap();
    std::thread::sleep(Duration::from_millis(500));
    k.ok(&["patch", "wg", "w1", "--type=merge", "-p", r#"{"metadata":{"finalizers":null}}"#]);
    assert!(gone.wait().unwrap().success(), "wait --for=delete never saw it go");

    // Errors as the real server words them.
    let (ok, _, err) = k.run(&["get", "cm", "nope"]);
    assert!(
        !ok && err.contains(r#"Error from server (NotFound): configmaps "nope" not found"#),
        "{err}"
    );
    let (ok, _, err) = k.run(&["get", "widgets", "-n", "no-such-ns", "w1"]);
    assert!(!ok && err.contains("NotFound"), "{err}");
}
