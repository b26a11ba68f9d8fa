//! SSH to the nodes: the provisioner's key pair, hosts, commands and
//! atomic uploads; the real client is [`SshClient`] (ssh2).

pub mod client;

use async_trait::async_trait;
use cz_state::SecretString;
use serde::{Deserialize, Serialize};

use crate::AdapterResult;

pub use client::{NODE_ROOT_VAR, SshClient, fingerprint_sha256, shell_quote};

/// The per-Sovereign key pair the provisioner logs in with.
#[derive(Clone)]
pub struct ProvisionerKey {
    /// OpenSSH private key (`-----BEGIN OPENSSH PRIVATE KEY-----`).
    pub private: SecretString,
    /// `ssh-ed25519 AAAA… catalyst-zero@<sovereign>`.
    pub public: String,
}

impl std::fmt::Debug for ProvisionerKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ProvisionerKey").field("public", &self.public).finish_non_exhaustive()
    }
}

impl ProvisionerKey {
    /// A new Ed25519 key pair from the OS RNG.
    pub fn generate(comment: &str) -> Result<ProvisionerKey, cz_engine::StepError> {
        use ssh_key::rand_core::OsRng;
        let mut key = ssh_key::PrivateKey::random(&mut OsRng, ssh_key::Algorithm::Ed25519)
            .map_err(|e| cz_engine::StepError::internal(format!("generating an SSH key: {e}")))?;
        key.set_comment(comment);
        let private = key
            .to_openssh(ssh_key::LineEnding::LF)
            .map_err(|e| cz_engine::StepError::internal(format!("encoding the SSH key: {e}")))?;
        let public = key.public_key().to_openssh().map_err(|e| {
            cz_engine::StepError::internal(format!("encoding the SSH public key: {e}"))
        })?;
        Ok(ProvisionerKey { private: SecretString::new(private.to_string()), public })
    }

    /// The public half of an OpenSSH private key.
    pub fn from_private(private: SecretString) -> Result<ProvisionerKey, cz_engine::StepError> {
        let key = ssh_key::PrivateKey::from_openssh(private.expose()).map_err(|e| {
            cz_engine::StepError::internal(format!("the stored SSH key does not parse: {e}"))
        })?;
        let public = key.public_key().to_openssh().map_err(|e| {
            cz_engine::StepError::internal(format!("encoding the SSH public key: {e}"))
        })?;
        Ok(ProvisionerKey { private, public })
    }
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Host {
    /// Name for logs and events (the server name).
    pub name: String,
    pub address: String,
    pub port: u16,
    pub user: String,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct CommandOutput {
    pub status: i32,
    pub stdout: String,
    pub stderr: String,
}

#[async_trait]
pub trait SshApi: Send + Sync {
    /// Connects once; returns the host key fingerprint (SHA256:…).
    async fn probe(&self, host: &Host) -> AdapterResult<String>;
    /// Runs a command as `host.user`, authenticated with `key`, after
    /// checking the host key against the pinned `fingerprint`; a non-zero
    /// exit is an `Ok` with the status (callers decide); connection problems,
    /// a changed host key and refused authentication are errors.
    async fn run(
        &self,
        host: &Host,
        fingerprint: &str,
        key: &ProvisionerKey,
        command: &str,
    ) -> AdapterResult<CommandOutput>;
    /// Writes `contents` to `path` atomically (temporary name, then rename),
    /// creating its directory, with `mode`.
    async fn upload(
        &self,
        host: &Host,
        fingerprint: &str,
        key: &ProvisionerKey,
        path: &str,
        contents: &[u8],
        mode: u32,
    ) -> AdapterResult<()>;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generated_keys_round_trip_and_redact() {
        let k = ProvisionerKey::generate("catalyst-zero@test").unwrap();
        assert!(k.public.starts_with("ssh-ed25519 ") && k.public.ends_with("catalyst-zero@test"));
        assert!(k.private.expose().starts_with("-----BEGIN OPENSSH PRIVATE KEY-----"));
        let again = ProvisionerKey::from_private(k.private.clone()).unwrap();
        assert_eq!(again.public, k.public);
        assert!(!format!("{k:?}").contains("PRIVATE"));
    }
}
