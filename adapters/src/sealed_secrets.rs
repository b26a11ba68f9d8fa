//! Sealed Secrets, as the bitnami controller (v0.36) and `kubeseal` do
//! them: the controller's key pair, which the daemon brings itself so that
//! Git-held SealedSecrets survive a rebuild, and the value format, so that
//! the daemon can seal offline with the public key.
//!
//! One sealed value is `base64(len(rsa_ct) as u16 BE ‖ rsa_ct ‖ aes_ct)`:
//! - a fresh 32-byte session key per value, RSA-OAEP encrypted (SHA-256
//!   for the hash and MGF1) under a label that binds the scope;
//! - the value under AES-256-GCM with that key, a zero nonce (the key is
//!   used once) and no associated data, the 16-byte tag appended.
//!
//! The label: `<namespace>/<name>` (strict, the default), `<namespace>`
//! (namespace-wide), empty (cluster-wide). The randomness is read in
//! kubeseal's order (session key, then the OAEP seed), so [`seal_with`]
//! reproduces its output byte for byte given both.
//!
//! The key is RSA-4096 with a self-signed certificate (random 128-bit
//! serial, CA, key usage encipher-only, ten years), installed as a
//! `kubernetes.io/tls` Secret labelled
//! `sealedsecrets.bitnami.com/sealed-secrets-key=active`.

use aes_gcm::aead::{Aead, KeyInit};
use aes_gcm::{Aes256Gcm, Nonce};
use base64::Engine as _;
use cz_state::SecretString;
use rsa::pkcs8::{DecodePrivateKey, DecodePublicKey, EncodePublicKey};
use rsa::rand_core::{CryptoRng, RngCore};
use rsa::sha2::Sha256;
use rsa::{Oaep, RsaPrivateKey, RsaPublicKey};

/// The label of the Secret the controller finds its keys by.
pub const KEY_LABEL: &str = "sealedsecrets.bitnami.com/sealed-secrets-key";
/// Its value for a key in use.
pub const KEY_LABEL_ACTIVE: &str = "active";

/// What a sealing or unsealing refuses.
#[derive(Debug, thiserror::Error)]
pub enum SealError {
    #[error("the key is not an RSA private key in PEM: {0}")]
    Key(String),
    #[error("the certificate cannot be made: {0}")]
    Certificate(String),
    #[error("the public key does not encrypt: {0}")]
    Encrypt(String),
    #[error("the value is not a sealed value: {0}")]
    Format(&'static str),
    #[error("the value does not decrypt with this key and scope")]
    Decrypt,
}

/// Which SealedSecrets may carry a value: the OAEP label.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Scope {
    /// Only the SealedSecret of this name in this namespace.
    Strict,
    /// Any SealedSecret in this namespace.
    NamespaceWide,
    /// Any SealedSecret anywhere.
    ClusterWide,
}

impl Scope {
    /// The OAEP label of a value sealed for `namespace`/`name`.
    pub fn label(self, namespace: &str, name: &str) -> String {
        match self {
            Scope::Strict => format!("{namespace}/{name}"),
            Scope::NamespaceWide => namespace.to_owned(),
            Scope::ClusterWide => String::new(),
        }
    }

    /// The annotation kubeseal puts on a SealedSecret of this scope.
    pub fn annotation(self) -> Option<&'static str> {
        match self {
            Scope::Strict => None,
            Scope::NamespaceWide => Some("sealedsecrets.bitnami.com/namespace-wide"),
            Scope::ClusterWide => Some("sealedsecrets.bitnami.com/cluster-wide"),
        }
    }
}

/// The controller's key pair: the private key (PKCS#8 PEM, secret) and its
/// self-signed certificate (PEM).
#[derive(Clone)]
pub struct SealingKey {
    pub private_pem: SecretString,
    pub certificate_pem: String,
}

impl std::fmt::Debug for SealingKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SealingKey").finish_non_exhaustive()
    }
}

impl SealingKey {
    /// A new RSA-4096 key and its certificate, valid from today for ten
    /// years, with the common name `cn` (the controller's default is empty).
    pub fn generate(cn: &str) -> Result<SealingKey, SealError> {
        use rcgen::{
            BasicConstraints, CertificateParams, DistinguishedName, DnType, IsCa, KeyPair,
            KeyUsagePurpose, PKCS_RSA_SHA256, RsaKeySize, SerialNumber,
        };
        let cert_err = |e: rcgen::Error| SealError::Certificate(e.to_string());
        let key =
            KeyPair::generate_rsa_for(&PKCS_RSA_SHA256, RsaKeySize::_4096).map_err(cert_err)?;
        let mut params = CertificateParams::default();
        let mut dn = DistinguishedName::new();
        dn.push(DnType::CommonName, cn);
        params.distinguished_name = dn;
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.key_usages = vec![KeyUsagePurpose::EncipherOnly];
        params.serial_number = Some(SerialNumber::from_slice(&rand::random::<[u8; 16]>()));
        let today = chrono::Utc::now().date_naive();
        use chrono::Datelike as _;
        let (y, m, d) = (today.year(), today.month() as u8, today.day() as u8);
        params.not_before = rcgen::date_time_ymd(y, m, d);
        params.not_after = rcgen::date_time_ymd(y + 10, m, d.min(28));
        let cert = params.self_signed(&key).map_err(cert_err)?;
        Ok(SealingKey {
            private_pem: SecretString::new(key.serialize_pem()),
            certificate_pem: cert.pem(),
        })
    }

    /// The private key, parsed.
    pub fn private_key(&self) -> Result<RsaPrivateKey, SealError> {
        private_key(self.private_pem.expose())
    }

    /// The public key, parsed.
    pub fn public_key(&self) -> Result<RsaPublicKey, SealError> {
        Ok(self.private_key()?.to_public_key())
    }
}

/// An RSA private key from PEM, PKCS#8 or PKCS#1 (both are what the
/// controller accepts).
pub fn private_key(pem: &str) -> Result<RsaPrivateKey, SealError> {
    use rsa::pkcs1::DecodeRsaPrivateKey;
    RsaPrivateKey::from_pkcs8_pem(pem)
        .or_else(|_| RsaPrivateKey::from_pkcs1_pem(pem))
        .map_err(|e| SealError::Key(e.to_string()))
}

/// An RSA public key from an SPKI PEM (`-----BEGIN PUBLIC KEY-----`).
pub fn public_key(pem: &str) -> Result<RsaPublicKey, SealError> {
    RsaPublicKey::from_public_key_pem(pem).map_err(|e| SealError::Key(e.to_string()))
}

/// The SPKI PEM of a public key.
pub fn public_key_pem(key: &RsaPublicKey) -> Result<String, SealError> {
    key.to_public_key_pem(rsa::pkcs8::LineEnding::LF).map_err(|e| SealError::Key(e.to_string()))
}

/// Seals `value` for `label` (see [`Scope::label`]) with fresh randomness.
pub fn seal(key: &RsaPublicKey, label: &str, value: &[u8]) -> Result<String, SealError> {
    seal_with(key, label, value, rand::random(), &mut ThreadRng06)
}

/// Seals `value` with the given session key, drawing the OAEP seed from
/// `rng`: what kubeseal does with its random source.
pub fn seal_with(
    key: &RsaPublicKey,
    label: &str,
    value: &[u8],
    session: [u8; 32],
    rng: &mut (impl RngCore + CryptoRng),
) -> Result<String, SealError> {
    let rsa_ct = key
        .encrypt(rng, Oaep::new_with_label::<Sha256, _>(label), &session)
        .map_err(|e| SealError::Encrypt(e.to_string()))?;
    let aes = Aes256Gcm::new((&session).into());
    let aes_ct = aes
        .encrypt(Nonce::from_slice(&[0u8; 12]), value)
        .map_err(|e| SealError::Encrypt(e.to_string()))?;
    let len = u16::try_from(rsa_ct.len()).map_err(|_| SealError::Encrypt("key too long".into()))?;
    let mut out = Vec::with_capacity(2 + rsa_ct.len() + aes_ct.len());
    out.extend_from_slice(&len.to_be_bytes());
    out.extend_from_slice(&rsa_ct);
    out.extend_from_slice(&aes_ct);
    Ok(base64::engine::general_purpose::STANDARD.encode(out))
}

/// Unseals a sealed value for `label`: what the controller does.
pub fn unseal(key: &RsaPrivateKey, label: &str, sealed: &str) -> Result<Vec<u8>, SealError> {
    let bytes = base64::engine::general_purpose::STANDARD
        .decode(sealed.trim())
        .map_err(|_| SealError::Format("not base64"))?;
    let (len, rest) = bytes.split_at_checked(2).ok_or(SealError::Format("too short"))?;
    let len = usize::from(u16::from_be_bytes([len[0], len[1]]));
    let (rsa_ct, aes_ct) = rest.split_at_checked(len).ok_or(SealError::Format("cut short"))?;
    let session = key
        .decrypt(Oaep::new_with_label::<Sha256, _>(label), rsa_ct)
        .map_err(|_| SealError::Decrypt)?;
    let session: [u8; 32] = session.try_into().map_err(|_| SealError::Decrypt)?;
    Aes256Gcm::new((&session).into())
        .decrypt(Nonce::from_slice(&[0u8; 12]), aes_ct)
        .map_err(|_| SealError::Decrypt)
}

/// The thread's CSPRNG (seeded from the operating system), behind the RSA
/// crate's RNG traits.
struct ThreadRng06;

impl RngCore for ThreadRng06 {
    fn next_u32(&mut self) -> u32 {
        rand::random()
    }
    fn next_u64(&mut self) -> u64 {
        rand::random()
    }
    fn fill_bytes(&mut self, dest: &mut [u8]) {
        rand::fill(dest);
    }
    fn try_fill_bytes(&mut self, dest: &mut [u8]) -> Result<(), rsa::rand_core::Error> {
        self.fill_bytes(dest);
        Ok(())
    }
}

impl CryptoRng for ThreadRng06 {}
