//! Authentication on the TLS fake ([`super::kube_tls`]), as the API server
//! does it for the two kinds of caller the tests have:
//!
//! - **the admin**: a client certificate from the cluster CA (the
//!   kubeconfig's), allowed everything;
//! - **a service account**: a bearer token the fake issued through the
//!   `TokenRequest` API (`POST .../serviceaccounts/{name}/token`), a real
//!   RS256 JWT with the claims Kubernetes puts in one (`iss`, `sub`,
//!   `aud`, `exp`, `kubernetes.io`), valid until it expires. Such a caller
//!   may create `TokenReview`s only when a `ClusterRoleBinding` binds it to
//!   `system:auth-delegator`, as RBAC says; anything else is 403.
//!
//! `POST /apis/authentication.k8s.io/v1/tokenreviews` answers as the API
//! server does: `status.authenticated`, the user
//! (`system:serviceaccount:<ns>:<name>`, its uid and groups) and the
//! audiences, or `authenticated: false` with an error. This is what
//! OpenBao's Kubernetes auth calls to check the token a client logs in
//! with.

use std::collections::BTreeMap;

use base64::Engine as _;
use rcgen::SigningKey as _;
use serde_json::{Value, json};

use super::kube_tls::Pki;

/// The issuer and default audience of the fake's tokens.
pub const ISSUER: &str = "https://kubernetes.default.svc.cluster.local";

/// What a token says.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SaToken {
    pub namespace: String,
    pub name: String,
    pub uid: String,
    pub audiences: Vec<String>,
    /// Unix seconds.
    pub expires: i64,
}

impl SaToken {
    pub fn username(&self) -> String {
        format!("system:serviceaccount:{}:{}", self.namespace, self.name)
    }
}

/// The caller of a request.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Caller {
    Admin,
    ServiceAccount(SaToken),
}

fn b64url(bytes: &[u8]) -> String {
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
}

/// Signs a token for `sa` (RS256 with the PKI's service-account key).
pub fn sign(pki: &Pki, sa: &SaToken) -> String {
    let now = chrono::Utc::now().timestamp();
    let header = json!({ "alg": "RS256", "kid": "catalyst-zero-fake", "typ": "JWT" });
    let claims = json!({
        "aud": sa.audiences,
        "exp": sa.expires,
        "iat": now,
        "nbf": now,
        "iss": ISSUER,
        "sub": sa.username(),
        "kubernetes.io": {
            "namespace": sa.namespace,
            "serviceaccount": { "name": sa.name, "uid": sa.uid },
        },
    });
    let signing_input = format!(
        "{}.{}",
        b64url(header.to_string().as_bytes()),
        b64url(claims.to_string().as_bytes())
    );
    let sig = pki.sa_key.sign(signing_input.as_bytes()).expect("RS256 signing");
    format!("{signing_input}.{}", b64url(&sig))
}

/// The tokens issued so far (a real API server verifies the signature
/// instead; the fake remembers what it signed).
#[derive(Debug, Default)]
pub struct Issued {
    tokens: BTreeMap<String, SaToken>,
}

impl Issued {
    pub fn insert(&mut self, jwt: String, sa: SaToken) {
        self.tokens.insert(jwt, sa);
    }

    /// The token's claims, if the fake issued it and it has not expired.
    pub fn valid(&self, jwt: &str) -> Option<SaToken> {
        let sa = self.tokens.get(jwt)?;
        (sa.expires > chrono::Utc::now().timestamp()).then(|| sa.clone())
    }
}

/// The bearer token of an `Authorization` header.
pub fn bearer(header: Option<&str>) -> Option<&str> {
    header?.strip_prefix("Bearer ").map(str::trim).filter(|t| !t.is_empty())
}

/// Whether `sa` is bound to `system:auth-delegator` by one of `bindings`
/// (ClusterRoleBinding objects).
pub fn may_review(sa: &SaToken, bindings: &[Value]) -> bool {
    bindings.iter().any(|b| {
        b.pointer("/roleRef/kind").and_then(Value::as_str) == Some("ClusterRole")
            && b.pointer("/roleRef/name").and_then(Value::as_str) == Some("system:auth-delegator")
            && b["subjects"].as_array().is_some_and(|subs| {
                subs.iter().any(|s| {
                    s["kind"] == "ServiceAccount"
                        && s["name"].as_str() == Some(sa.name.as_str())
                        && s["namespace"].as_str() == Some(sa.namespace.as_str())
                })
            })
    })
}

/// The TokenReview answer for `review` (the request body).
pub fn review(issued: &Issued, review: &Value) -> Value {
    let token = review.pointer("/spec/token").and_then(Value::as_str).unwrap_or_default();
    let wanted: Vec<String> = review
        .pointer("/spec/audiences")
        .and_then(Value::as_array)
        .map(|a| a.iter().filter_map(Value::as_str).map(str::to_owned).collect())
        .unwrap_or_default();
    let status = match issued.valid(token) {
        None => {
            json!({ "authenticated": false, "error": "[invalid bearer token, token lookup failed]" })
        }
        Some(sa) => {
            let audiences: Vec<String> = if wanted.is_empty() {
                sa.audiences.clone()
            } else {
                wanted.iter().filter(|a| sa.audiences.contains(a)).cloned().collect()
            };
            if audiences.is_empty() {
                json!({ "authenticated": false, "error": "[invalid bearer token, token audiences is invalid]" })
            } else {
                json!({
                    "authenticated": true,
                    "user": {
                        "username": sa.username(),
                        "uid": sa.uid,
                        "groups": ["system:serviceaccounts",
                                   format!("system:serviceaccounts:{}", sa.namespace),
                                   "system:authenticated"],
                    },
                    "audiences": audiences,
                })
            }
        }
    };
    json!({
        "kind": "TokenReview",
        "apiVersion": "authentication.k8s.io/v1",
        "metadata": { "creationTimestamp": null },
        "spec": review.get("spec").cloned().unwrap_or(json!({})),
        "status": status,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_signed_token_reviews_as_its_service_account() {
        let pki = Pki::new();
        let sa = SaToken {
            namespace: "eso".into(),
            name: "external-secrets".into(),
            uid: "u-1".into(),
            audiences: vec![ISSUER.into()],
            expires: chrono::Utc::now().timestamp() + 600,
        };
        let jwt = sign(&pki, &sa);
        assert_eq!(jwt.split('.').count(), 3);
        let claims: Value = serde_json::from_slice(
            &base64::engine::general_purpose::URL_SAFE_NO_PAD
                .decode(jwt.split('.').nth(1).unwrap())
                .unwrap(),
        )
        .unwrap();
        assert_eq!(claims["sub"], "system:serviceaccount:eso:external-secrets");
        let mut issued = Issued::default();
        issued.insert(jwt.clone(), sa.clone());
        let r = review(&issued, &json!({"spec": {"token": jwt}}));
        assert_eq!(r["status"]["authenticated"], true, "{r}");
        assert_eq!(r["status"]["user"]["username"], "system:serviceaccount:eso:external-secrets");
        let r = review(&issued, &json!({"spec": {"token": "forged"}}));
        assert_eq!(r["status"]["authenticated"], false);
        let r = review(&issued, &json!({"spec": {"token": jwt, "audiences": ["vault"]}}));
        assert_eq!(r["status"]["authenticated"], false, "another audience: {r}");
        let binding = json!({"roleRef": {"kind": "ClusterRole", "name": "system:auth-delegator"},
            "subjects": [{"kind": "ServiceAccount", "name": "external-secrets", "namespace": "eso"}]});
        assert!(may_review(&sa, &[binding]));
        assert!(!may_review(&sa, &[]));
    }
}
