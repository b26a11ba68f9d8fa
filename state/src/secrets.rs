//! Secrets at rest: the daemon's at-rest key, the custodians' age helpers,
//! and the `SecretString` type.
//!
//! Every secret the daemon holds while it works (cloud tokens, join tokens,
//! kubeconfigs, SSH keys, OpenBao's root token until it is revoked) is
//! stored as an age-encrypted blob in the `secrets` table, encrypted to the
//! daemon's own X25519 identity, its **at-rest key**. The key file is
//! created on first start with mode 0600 (its directory 0700), refused when
//! group or others can read it, and read again on every start, so a resumed
//! job still has its secrets after a restart. Where it lives is the
//! daemon's configuration (`at_rest_key`): by default not in the data
//! directory, so a copy of the data directory alone opens nothing. The
//! format is age's own (`age -d -i` works).
//!
//! What custodians hold is not encrypted to this key but to theirs
//! ([`encrypt_armored_to`]); the daemon cannot open it.
//!
//! `SecretString` is how plaintext travels in memory: its `Debug`, `Display`
//! and `Serialize` print `<redacted>`, so a secret that slips into a log line,
//! an event or an API response shows up as a redaction, not as the value.

use std::fmt;
use std::io::Write;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::str::FromStr;

use age::secrecy::ExposeSecret;
use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// A string that must never be printed, logged or serialized in the clear.
#[derive(Clone, PartialEq, Eq)]
pub struct SecretString(String);

impl SecretString {
    pub fn new(s: impl Into<String>) -> Self {
        SecretString(s.into())
    }
    /// The plaintext. Call sites are the places that really need it
    /// (encryption, an outgoing request's auth header).
    pub fn expose(&self) -> &str {
        &self.0
    }
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

impl fmt::Debug for SecretString {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("<redacted>")
    }
}

impl fmt::Display for SecretString {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("<redacted>")
    }
}

impl Serialize for SecretString {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str("<redacted>")
    }
}

impl<'de> Deserialize<'de> for SecretString {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        String::deserialize(d).map(SecretString)
    }
}

/// Errors of the identity file and of sealing/unsealing.
#[derive(Debug, thiserror::Error)]
pub enum SealError {
    #[error("cannot create the daemon's at-rest key {path}")]
    CreateIdentity {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot read the daemon's at-rest key {path}")]
    ReadIdentity {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error(
        "the daemon's at-rest key {path} has mode {mode:o}; it must not be readable by group or others (chmod 600)"
    )]
    IdentityPermissions { path: PathBuf, mode: u32 },
    #[error("the daemon's at-rest key {path} holds no AGE-SECRET-KEY line")]
    ParseIdentity { path: PathBuf },
    #[error("age encryption failed: {0}")]
    Encrypt(String),
    #[error("age decryption failed (wrong identity or corrupted blob): {0}")]
    Decrypt(String),
}

/// The daemon's age identity: encrypts secrets for storage and decrypts them.
pub struct Sealer {
    path: PathBuf,
    identity: age::x25519::Identity,
    recipient: age::x25519::Recipient,
}

impl Sealer {
    /// Loads the identity at `path`, creating it (mode 0600) if absent.
    pub fn load_or_create(path: &Path) -> Result<Sealer, SealError> {
        if !path.exists() {
            let identity = age::x25519::Identity::generate();
            let body = format!(
                "# catalyst-zero daemon identity (age X25519), created {}\n# public key: {}\n{}\n",
                chrono::Utc::now().to_rfc3339(),
                identity.to_public(),
                identity.to_string().expose_secret()
            );
            // Written to a file of its own, then linked into place: a link
            // never replaces, so of two daemons starting at once on one key
            // path, one key wins and both read it.
            let create = |path: &Path| -> std::io::Result<bool> {
                if let Some(dir) = path.parent() {
                    std::fs::DirBuilder::new().recursive(true).mode(0o700).create(dir)?;
                }
                let tmp =
                    path.with_extension(format!("tmp.{}.{}", std::process::id(), rand_suffix()));
                let mut f = std::fs::OpenOptions::new()
                    .write(true)
                    .create_new(true)
                    .mode(0o600)
                    .open(&tmp)?;
                f.write_all(body.as_bytes())?;
                f.sync_all()?;
                let linked = std::fs::hard_link(&tmp, path);
                let _ = std::fs::remove_file(&tmp);
                match linked {
                    Ok(()) => {}
                    Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => return Ok(false),
                    Err(e) => return Err(e),
                }
                if let Some(dir) = path.parent() {
                    std::fs::File::open(dir)?.sync_all()?;
                }
                Ok(true)
            };
            let created = create(path)
                .map_err(|source| SealError::CreateIdentity { path: path.to_owned(), source })?;
            if created {
                tracing::info!(path = %path.display(), "Created the daemon's at-rest key.");
            }
        }
        Sealer::load(path)
    }

    /// Loads the identity at `path`, which must exist, be private to its
    /// owner and hold an age X25519 secret key (`age-keygen` writes one).
    pub fn load(path: &Path) -> Result<Sealer, SealError> {
        let meta = std::fs::metadata(path)
            .map_err(|source| SealError::ReadIdentity { path: path.to_owned(), source })?;
        let mode = meta.permissions().mode() & 0o777;
        if mode & 0o077 != 0 {
            return Err(SealError::IdentityPermissions { path: path.to_owned(), mode });
        }
        let text = std::fs::read_to_string(path)
            .map_err(|source| SealError::ReadIdentity { path: path.to_owned(), source })?;
        let identity = text
            .lines()
            .map(str::trim)
            .find(|l| l.starts_with("AGE-SECRET-KEY-"))
            .and_then(|l| age::x25519::Identity::from_str(l).ok())
            .ok_or_else(|| SealError::ParseIdentity { path: path.to_owned() })?;
        let recipient = identity.to_public();
        Ok(Sealer { path: path.to_owned(), identity, recipient })
    }

    /// Where the key was read from.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The public half, for display (`age1…`).
    pub fn recipient(&self) -> String {
        self.recipient.to_string()
    }

    pub fn seal(&self, plaintext: &[u8]) -> Result<Vec<u8>, SealError> {
        age::encrypt(&self.recipient, plaintext).map_err(|e| SealError::Encrypt(e.to_string()))
    }

    pub fn unseal(&self, ciphertext: &[u8]) -> Result<Vec<u8>, SealError> {
        age::decrypt(&self.identity, ciphertext).map_err(|e| SealError::Decrypt(e.to_string()))
    }
}

fn rand_suffix() -> String {
    use std::time::{SystemTime, UNIX_EPOCH};
    let nanos = SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.subsec_nanos());
    format!("{nanos:08x}")
}

/// Encrypts `plaintext` to a set of external age recipients (`age1…`), e.g.
/// the operators who take custody of OpenBao shares. The output decrypts with
/// the real `age` CLI and any one of the matching identities.
pub fn encrypt_to_recipients(
    recipients: &[String],
    plaintext: &[u8],
) -> Result<Vec<u8>, SealError> {
    let parsed: Vec<age::x25519::Recipient> = recipients
        .iter()
        .map(|r| age::x25519::Recipient::from_str(r).map_err(|e| SealError::Encrypt(e.to_string())))
        .collect::<Result<_, _>>()?;
    let encryptor =
        age::Encryptor::with_recipients(parsed.iter().map(|r| r as &dyn age::Recipient))
            .map_err(|e| SealError::Encrypt(e.to_string()))?;
    let mut out = Vec::new();
    let mut w = encryptor.wrap_output(&mut out).map_err(|e| SealError::Encrypt(e.to_string()))?;
    w.write_all(plaintext).map_err(|e| SealError::Encrypt(e.to_string()))?;
    w.finish().map_err(|e| SealError::Encrypt(e.to_string()))?;
    Ok(out)
}

/// Encrypts `plaintext` to the one age recipient `recipient`, ASCII-armored
/// (`-----BEGIN AGE ENCRYPTED FILE-----`): what a custodian receives, and
/// opens with `age -d -i their-identity`.
pub fn encrypt_armored_to(recipient: &str, plaintext: &[u8]) -> Result<String, SealError> {
    use age::armor::{ArmoredWriter, Format};
    let to = age::x25519::Recipient::from_str(recipient)
        .map_err(|e| SealError::Encrypt(e.to_string()))?;
    let encryptor = age::Encryptor::with_recipients(std::iter::once(&to as &dyn age::Recipient))
        .map_err(|e| SealError::Encrypt(e.to_string()))?;
    let mut out = Vec::new();
    let armor = ArmoredWriter::wrap_output(&mut out, Format::AsciiArmor)
        .map_err(|e| SealError::Encrypt(e.to_string()))?;
    let mut w = encryptor.wrap_output(armor).map_err(|e| SealError::Encrypt(e.to_string()))?;
    w.write_all(plaintext).map_err(|e| SealError::Encrypt(e.to_string()))?;
    w.finish().and_then(|armor| armor.finish()).map_err(|e| SealError::Encrypt(e.to_string()))?;
    String::from_utf8(out).map_err(|e| SealError::Encrypt(e.to_string()))
}

/// Decrypts an armored (or binary) age file with `identity` (an
/// `AGE-SECRET-KEY-1…` line or a file's text holding one): what a
/// custodian's tool does locally.
pub fn decrypt_with_identity(identity_text: &str, ciphertext: &[u8]) -> Result<Vec<u8>, SealError> {
    let identity = identity_text
        .lines()
        .map(str::trim)
        .find(|l| l.starts_with("AGE-SECRET-KEY-"))
        .and_then(|l| age::x25519::Identity::from_str(l).ok())
        .ok_or_else(|| SealError::Decrypt("no AGE-SECRET-KEY line in the identity".into()))?;
    let reader = age::armor::ArmoredReader::new(ciphertext);
    let decryptor = age::Decryptor::new(reader).map_err(|e| SealError::Decrypt(e.to_string()))?;
    let mut r = decryptor
        .decrypt(std::iter::once(&identity as &dyn age::Identity))
        .map_err(|e| SealError::Decrypt(e.to_string()))?;
    let mut out = Vec::new();
    std::io::Read::read_to_end(&mut r, &mut out).map_err(|e| SealError::Decrypt(e.to_string()))?;
    Ok(out)
}

/// The recipient (`age1…`) of the identity in `identity_text` (an
/// `AGE-SECRET-KEY-1…` line, or a file's text holding one).
pub fn identity_recipient(identity_text: &str) -> Option<String> {
    identity_text
        .lines()
        .map(str::trim)
        .find(|l| l.starts_with("AGE-SECRET-KEY-"))
        .and_then(|l| age::x25519::Identity::from_str(l).ok())
        .map(|i| i.to_public().to_string())
}

/// True when `s` parses as an age X25519 recipient.
pub fn is_age_recipient(s: &str) -> bool {
    age::x25519::Recipient::from_str(s).is_ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secret_string_never_prints() {
        let s = SecretString::new("hunter2");
        assert_eq!(format!("{s:?} {s}"), "<redacted> <redacted>");
        assert_eq!(serde_json::to_string(&s).unwrap(), "\"<redacted>\"");
        let back: SecretString = serde_json::from_str("\"hunter2\"").unwrap();
        assert_eq!(back.expose(), "hunter2");
    }

    #[test]
    fn identity_is_created_0600_and_survives_reload() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("identity.txt");
        let a = Sealer::load_or_create(&path).unwrap();
        let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        let blob = a.seal(b"token").unwrap();
        assert!(!blob.windows(5).any(|w| w == b"token"));
        let b = Sealer::load_or_create(&path).unwrap();
        assert_eq!(b.recipient(), a.recipient());
        assert_eq!(b.unseal(&blob).unwrap(), b"token");
    }

    /// Daemons starting at once on one key path end up with one key.
    #[test]
    fn concurrent_first_starts_agree_on_one_key() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("nested").join("at-rest-key.txt");
        let keys: Vec<String> = std::thread::scope(|s| {
            let handles: Vec<_> = (0..8)
                .map(|_| s.spawn(|| Sealer::load_or_create(&path).unwrap().recipient()))
                .collect();
            handles.into_iter().map(|h| h.join().unwrap()).collect()
        });
        assert!(keys.windows(2).all(|w| w[0] == w[1]), "{keys:?}");
        let mode = std::fs::metadata(path.parent().unwrap()).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o700);
        let left: Vec<_> = std::fs::read_dir(path.parent().unwrap()).unwrap().collect();
        assert_eq!(left.len(), 1, "no temporary file left");
    }

    #[test]
    fn refuses_world_readable_identity() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("identity.txt");
        Sealer::load_or_create(&path).unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
        assert!(matches!(
            Sealer::load_or_create(&path),
            Err(SealError::IdentityPermissions { .. })
        ));
    }
}
