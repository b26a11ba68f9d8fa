//! External Secrets' controller for the TLS [`FakeKube`], against a real
//! OpenBao: the rules of [`crate::eso`], with every remote call made for
//! real.
//!
//! Once External Secrets' chart runs in the fake (its `external-secrets`
//! Deployment available), each pass:
//! - **logs in** for every `ClusterSecretStore`: a token for the store's
//!   `serviceAccountRef` from the fake's `TokenRequest`, then
//!   `POST <server>/v1/auth/<mountPath>/login` on the OpenBao the store's
//!   `server` Service leads to ([`FakeKube::route_service`]). OpenBao
//!   reviews that token with the fake's `TokenReview` over TLS, using the
//!   host and CA it was configured with; a refusal anywhere is the store's
//!   `Ready=False` message. A login is reused until it is a minute old or
//!   the store changes.
//! - **syncs** every `ExternalSecret` that is due: `GET
//!   <server>/v1/<path>/data/<key>` with the store's token, the target
//!   Secret written, the status set.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use serde_json::{Map, Value, json};

use super::kube::FakeKube;
use crate::eso::{Vault, due, entries, target_secret, value_of, vault_of};

const GROUP: &str = "external-secrets.io";

/// A login, reused while fresh.
struct Session {
    base: String,
    vault: Vault,
    token: String,
    store_rv: String,
    at: Instant,
}

impl FakeKube {
    /// Runs External Secrets' controller, a pass every `tick`.
    pub fn run_external_secrets(&self, tick: Duration) -> tokio::task::JoinHandle<()> {
        let fake = self.clone();
        tokio::spawn(async move {
            let http = reqwest::Client::builder()
                .timeout(Duration::from_secs(10))
                .build()
                .expect("an HTTP client");
            let mut sessions: HashMap<String, Session> = HashMap::new();
            loop {
                pass(&fake, &http, &mut sessions).await;
                tokio::time::sleep(tick).await;
            }
        })
    }
}

/// The controller runs: its Deployment is available.
fn running(fake: &FakeKube) -> bool {
    fake.objects("apps", "deployments").iter().any(|d| {
        d.pointer("/metadata/name").and_then(Value::as_str) == Some("external-secrets")
            && d.pointer("/status/availableReplicas").and_then(Value::as_i64).unwrap_or(0) >= 1
    })
}

fn s<'a>(v: &'a Value, ptr: &str) -> &'a str {
    v.pointer(ptr).and_then(Value::as_str).unwrap_or_default()
}

/// OpenBao's `errors`, joined.
fn errors(text: &str) -> String {
    serde_json::from_str::<Value>(text)
        .ok()
        .and_then(|v| v["errors"].as_array().cloned())
        .map(|e| e.iter().filter_map(Value::as_str).collect::<Vec<_>>().join("; "))
        .unwrap_or_else(|| text.chars().take(200).collect())
}

async fn login(fake: &FakeKube, http: &reqwest::Client, store: &Value) -> Result<Session, String> {
    let vault = vault_of(store)?;
    let host = vault.server.split_once("://").map_or(vault.server.as_str(), |(_, r)| r);
    let host = host.split([':', '/']).next().unwrap_or_default().to_owned();
    let mut labels = host.split('.');
    let (svc, ns) = (labels.next().unwrap_or_default(), labels.next().unwrap_or_default());
    let base = fake
        .service_route(ns, svc)
        .ok_or_else(|| format!("dial tcp: lookup {host}: no such host"))?;
    let jwt = fake.issue_token(&vault.namespace, &vault.service_account, &[], 600)?;
    let url = format!("{}/v1/auth/{}/login", base.trim_end_matches('/'), vault.mount);
    let resp = http
        .post(&url)
        .json(&json!({ "role": vault.role, "jwt": jwt }))
        .send()
        .await
        .map_err(|e| format!("unable to log in to {}: {e}", vault.server))?;
    let code = resp.status().as_u16();
    let text = resp.text().await.unwrap_or_default();
    if code != 200 {
        return Err(format!("Error making API request. Code: {code}. Errors: {}", errors(&text)));
    }
    let v: Value = serde_json::from_str(&text).map_err(|e| e.to_string())?;
    let token = s(&v, "/auth/client_token").to_owned();
    if token.is_empty() {
        return Err("the login answer has no client_token".into());
    }
    Ok(Session {
        base,
        vault,
        token,
        store_rv: s(store, "/metadata/resourceVersion").to_owned(),
        at: Instant::now(),
    })
}

async fn read(
    http: &reqwest::Client,
    sess: &Session,
    key: &str,
    prop: Option<&str>,
) -> Result<String, String> {
    let url = format!(
        "{}/v1/{}/data/{}",
        sess.base.trim_end_matches('/'),
        sess.vault.path,
        key.trim_start_matches('/')
    );
    let resp = http
        .get(&url)
        .header("X-Vault-Token", &sess.token)
        .send()
        .await
        .map_err(|e| e.to_string())?;
    let code = resp.status().as_u16();
    let text = resp.text().await.unwrap_or_default();
    match code {
        200 => {
            let v: Value = serde_json::from_str(&text).map_err(|e| e.to_string())?;
            value_of(&v["data"]["data"], prop, key)
        }
        404 => Err(format!("Secret does not exist: {key}")),
        _ => Err(format!("Code: {code}. Errors: {}", errors(&text))),
    }
}

/// `Ready` with `extra` status fields, written only when it changes.
fn set_ready(
    fake: &FakeKube,
    plural: &str,
    obj: &Value,
    ok: bool,
    reason: &str,
    message: &str,
    extra: Value,
) {
    let old = obj.get("status").cloned().unwrap_or(json!({}));
    let status = if ok { "True" } else { "False" };
    let same = s(&old, "/conditions/0/status") == status
        && s(&old, "/conditions/0/reason") == reason
        && s(&old, "/conditions/0/message") == message;
    let since = if same {
        old.pointer("/conditions/0/lastTransitionTime").cloned().unwrap_or(Value::Null)
    } else {
        json!(chrono::Utc::now().to_rfc3339())
    };
    let mut new = json!({ "conditions": [{ "type": "Ready", "status": status, "reason": reason,
                                            "message": message, "lastTransitionTime": since }] });
    if let (Some(n), Some(e)) = (new.as_object_mut(), extra.as_object()) {
        n.extend(e.clone());
    }
    if new != old {
        fake.set_status(
            GROUP,
            plural,
            s(obj, "/metadata/namespace"),
            s(obj, "/metadata/name"),
            new,
        );
    }
}

async fn pass(fake: &FakeKube, http: &reqwest::Client, sessions: &mut HashMap<String, Session>) {
    if !running(fake) {
        return;
    }
    let mut failures: HashMap<String, String> = HashMap::new();
    for store in fake.objects(GROUP, "clustersecretstores") {
        let name = s(&store, "/metadata/name").to_owned();
        let fresh = sessions.get(&name).is_some_and(|x| {
            x.store_rv == s(&store, "/metadata/resourceVersion")
                && x.at.elapsed() < Duration::from_secs(60)
        });
        if fresh {
            continue;
        }
        match login(fake, http, &store).await {
            Ok(sess) => {
                sessions.insert(name, sess);
                set_ready(
                    fake,
                    "clustersecretstores",
                    &store,
                    true,
                    "Valid",
                    "store validated",
                    json!({}),
                );
            }
            Err(e) => {
                sessions.remove(&name);
                let message = format!("unable to validate store: {e}");
                set_ready(
                    fake,
                    "clustersecretstores",
                    &store,
                    false,
                    "InvalidProviderConfig",
                    &message,
                    json!({}),
                );
                failures.insert(name, message);
            }
        }
    }
    let now = chrono::Utc::now();
    for es in fake.objects(GROUP, "externalsecrets") {
        if !due(&es, now) {
            continue;
        }
        let store = s(&es, "/spec/secretStoreRef/name").to_owned();
        let version = crate::eso::resource_version(&es);
        let synced = match sessions.get(&store) {
            None => Err(failures
                .get(&store)
                .cloned()
                .unwrap_or_else(|| format!("could not get ClusterSecretStore \"{store}\""))),
            Some(sess) => {
                let mut data = Map::new();
                let mut failed = None;
                for (sk, key, prop) in entries(&es) {
                    match read(http, sess, &key, prop.as_deref()).await {
                        Ok(v) => {
                            use base64::Engine as _;
                            data.insert(
                                sk,
                                json!(base64::engine::general_purpose::STANDARD.encode(v)),
                            );
                        }
                        Err(e) => {
                            failed = Some(e);
                            break;
                        }
                    }
                }
                failed.map_or(Ok(data), Err)
            }
        };
        let mut extra =
            json!({ "refreshTime": now.to_rfc3339(), "syncedResourceVersion": version });
        match synced {
            Ok(data) => {
                let secret = target_secret(&es, data);
                extra["binding"] = json!({ "name": secret["metadata"]["name"] });
                fake.put("", "secrets", secret);
                set_ready(
                    fake,
                    "externalsecrets",
                    &es,
                    true,
                    "SecretSynced",
                    "secret synced",
                    extra,
                );
            }
            Err(e) => {
                let message = format!("error processing spec.data[0]: {e}");
                set_ready(
                    fake,
                    "externalsecrets",
                    &es,
                    false,
                    "SecretSyncedError",
                    &message,
                    extra,
                );
            }
        }
    }
}
