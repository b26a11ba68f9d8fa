//! Sealing as kubeseal does, held to the upstream test vectors (an RSA-4096
//! key; values across the three scopes; byte-exact cases with their
//! session key and OAEP seed; values unsealed under a wrong label), and a
//! generated key checked as the controller would read it.

use base64::Engine as _;
use cz_adapters::sealed_secrets::{
    Scope, SealError, SealingKey, private_key, public_key, public_key_pem, seal, seal_with, unseal,
};
use rsa::rand_core::{CryptoRng, RngCore};
use serde_json::Value;

const VECTORS: &str =
    concat!(env!("CARGO_MANIFEST_DIR"), "/../../shared/upstream/sealed-secrets/vectors.json");

fn vectors() -> Value {
    serde_json::from_str(&std::fs::read_to_string(VECTORS).expect("the sealed-secrets vectors"))
        .expect("JSON")
}

fn b64(s: &Value) -> Vec<u8> {
    base64::engine::general_purpose::STANDARD.decode(s.as_str().unwrap()).unwrap()
}

fn hex(s: &Value) -> Vec<u8> {
    hex::decode(s.as_str().unwrap()).unwrap()
}

fn scope(case: &Value) -> Scope {
    match case["scope"].as_str().unwrap() {
        "strict" => Scope::Strict,
        "namespace-wide" => Scope::NamespaceWide,
        "cluster-wide" => Scope::ClusterWide,
        other => panic!("scope {other}"),
    }
}

/// The label a case's scope gives, checked against the vector's own.
fn label(case: &Value) -> String {
    let l = scope(case)
        .label(case["namespace"].as_str().unwrap_or(""), case["name"].as_str().unwrap_or(""));
    assert_eq!(l.as_bytes(), hex(&case["oaep_label_hex"]), "{}", case["id"]);
    l
}

/// Hands out fixed bytes: the OAEP seed a deterministic case gives.
struct Fixed(Vec<u8>);

impl RngCore for Fixed {
    fn next_u32(&mut self) -> u32 {
        unimplemented!("only fill_bytes is used")
    }
    fn next_u64(&mut self) -> u64 {
        unimplemented!("only fill_bytes is used")
    }
    fn fill_bytes(&mut self, dest: &mut [u8]) {
        assert!(dest.len() <= self.0.len(), "more randomness asked than the case gives");
        let rest = self.0.split_off(dest.len());
        dest.copy_from_slice(&self.0);
        self.0 = rest;
    }
    fn try_fill_bytes(&mut self, dest: &mut [u8]) -> Result<(), rsa::rand_core::Error> {
        self.fill_bytes(dest);
        Ok(())
    }
}

impl CryptoRng for Fixed {}

#[test]
fn every_vector_unseals_and_a_sealed_value_round_trips() {
    let v = vectors();
    for pem in ["private_key_pem", "private_key_pkcs8_pem"] {
        let key = private_key(v[pem].as_str().unwrap()).unwrap();
        for case in
            v["cases"].as_array().unwrap().iter().chain(v["decrypt_only_cases"].as_array().unwrap())
        {
            let label = label(case);
            let plain = unseal(&key, &label, case["ciphertext_b64"].as_str().unwrap())
                .unwrap_or_else(|e| panic!("{}: {e}", case["id"]));
            assert_eq!(plain, b64(&case["plaintext_b64"]), "{}", case["id"]);
            let sealed = seal(&key.to_public_key(), &label, &plain).unwrap();
            assert_eq!(unseal(&key, &label, &sealed).unwrap(), plain);
            let rsa_len =
                u16::from_be_bytes(b64(&Value::from(sealed.clone()))[..2].try_into().unwrap());
            assert_eq!(u64::from(rsa_len), case["rsa_ciphertext_len"].as_u64().unwrap());
        }
    }
}

#[test]
fn deterministic_vectors_reproduce_byte_for_byte() {
    let v = vectors();
    let public = public_key(v["public_key_pem"].as_str().unwrap()).unwrap();
    assert_eq!(
        public_key_pem(&public).unwrap().trim(),
        v["public_key_pem"].as_str().unwrap().trim()
    );
    let cases = v["deterministic_cases"].as_array().unwrap();
    assert!(!cases.is_empty());
    for case in cases {
        let session: [u8; 32] = hex(&case["session_key_hex"]).try_into().unwrap();
        let sealed = seal_with(
            &public,
            &label(case),
            &b64(&case["plaintext_b64"]),
            session,
            &mut Fixed(hex(&case["oaep_seed_hex"])),
        )
        .unwrap();
        assert_eq!(sealed, case["ciphertext_b64"].as_str().unwrap(), "{}", case["id"]);
    }
}

#[test]
fn a_value_under_another_label_is_refused() {
    let v = vectors();
    let key = private_key(v["private_key_pem"].as_str().unwrap()).unwrap();
    let cases = v["negative_cases"].as_array().unwrap();
    assert_eq!(cases.len(), 4);
    for case in cases {
        let wrong = case["decrypt_with"]["oaep_label"]
            .as_str()
            .or_else(|| case["decrypt_with"].as_str())
            .unwrap_or_else(|| panic!("{}: decrypt_with {}", case["id"], case["decrypt_with"]));
        let e = unseal(&key, wrong, case["ciphertext_b64"].as_str().unwrap()).unwrap_err();
        assert!(matches!(e, SealError::Decrypt), "{}: {e}", case["id"]);
        // Under its own label it opens.
        assert_eq!(
            unseal(&key, &label(case), case["ciphertext_b64"].as_str().unwrap()).unwrap(),
            b64(&case["plaintext_b64"])
        );
    }
}

/// A generated key is RSA-4096 with a self-signed CA certificate for the
/// same public key, ten years long, and seals what it unseals.
#[test]
fn a_generated_key_is_what_the_controller_expects() {
    let k = SealingKey::generate("").unwrap();
    assert!(k.private_pem.expose().starts_with("-----BEGIN PRIVATE KEY-----"));
    let private = k.private_key().unwrap();
    use rsa::traits::PublicKeyParts as _;
    assert_eq!(private.size() * 8, 4096);
    let der = rustls_pemfile_cert(&k.certificate_pem);
    let (_, cert) = x509_parser::parse_x509_certificate(&der).expect("a valid X.509 certificate");
    assert!(cert.is_ca(), "a CA certificate");
    assert_eq!(cert.subject(), cert.issuer(), "self-signed");
    let spki = cert.public_key().raw;
    let ours = rsa::pkcs8::EncodePublicKey::to_public_key_der(&private.to_public_key()).unwrap();
    assert_eq!(spki, ours.as_bytes(), "the certificate is for the key");
    let years = (cert.validity().not_after.timestamp() - cert.validity().not_before.timestamp())
        / (365 * 24 * 3600);
    assert!((9..=10).contains(&years), "{years} years");
    assert!(!format!("{k:?}").contains("PRIVATE"), "Debug shows no key");
    let sealed = seal(&k.public_key().unwrap(), "ns/name", b"hello").unwrap();
    assert_eq!(unseal(&private, "ns/name", &sealed).unwrap(), b"hello");
    assert!(unseal(&private, "ns/other", &sealed).is_err());
}

/// The DER of the first certificate in a PEM.
fn rustls_pemfile_cert(pem: &str) -> Vec<u8> {
    let body: String = pem.lines().filter(|l| !l.starts_with("-----")).collect();
    base64::engine::general_purpose::STANDARD.decode(body).unwrap()
}
