//! Dealing secrets to the custodians: every escrowed blob is age-encrypted
//! (ASCII armor) to one custodian's recipient alone, and stored in the
//! Sovereign's escrow ([`cz_state::EscrowItem`]), which the daemon hands
//! out but cannot open.
//!
//! Three ways to deal, by what the secret is:
//! - [`deal`]: secrets already split by their owner (OpenBao's unseal
//!   shares or recovery keys): part `i` to custodian `i mod n`;
//! - [`split_and_deal`]: a secret the daemon splits itself, k of n with
//!   Shamir ([`cz_state::shamir`]), dealt the same way: the sealed-secrets
//!   key, a static-seal key;
//! - [`copies`]: a whole copy per custodian, any one of whom can open it:
//!   the admin kubeconfig (access to the cluster, not a key to its secrets).
//!
//! The request's validation guarantees no custodian is dealt `threshold`
//! parts, so k-of-n holds for whatever is split.

use cz_engine::{StepError, StepResult};
use cz_state::{EscrowItem, SecretString};

use crate::request::Custody;

/// OpenBao's unseal shares (`shamir` seal).
pub const OPENBAO_SHARE: &str = "openbao-share";
/// OpenBao's recovery keys (`static` seal).
pub const OPENBAO_RECOVERY_KEY: &str = "openbao-recovery-key";
/// The static seal's key, split.
pub const STATIC_SEAL_KEY: &str = "static-seal-key";
/// The sealed-secrets controller's private key (PEM), split.
pub const SEALED_SECRETS_KEY: &str = "sealed-secrets-key";
/// The cluster-admin kubeconfig, one copy each.
pub const ADMIN_KUBECONFIG: &str = "admin-kubeconfig";

/// SHA-256, hex.
pub fn sha256_hex(bytes: &[u8]) -> String {
    hex::encode(<sha2::Sha256 as sha2::Digest>::digest(bytes))
}

fn encrypt(custody: &Custody, custodian: usize, plaintext: &[u8]) -> StepResult<String> {
    let to = &custody.custodians[custodian].recipient;
    cz_state::secrets::encrypt_armored_to(to, plaintext).map_err(|e| StepError::InvalidInput {
        path: format!("custody.custodians[{custodian}].recipient"),
        message: e.to_string(),
    })
}

#[allow(clippy::too_many_arguments)]
fn item(
    custody: &Custody,
    kind: &str,
    index: usize,
    custodian: usize,
    plaintext: &[u8],
    threshold: u8,
    parts: u8,
    fingerprint: Option<&str>,
) -> StepResult<EscrowItem> {
    Ok(EscrowItem {
        kind: kind.to_owned(),
        index: index as u32,
        custodian: custodian as u32,
        label: custody.custodians[custodian].name(custodian),
        recipient: custody.custodians[custodian].recipient.clone(),
        armored: encrypt(custody, custodian, plaintext)?,
        threshold,
        parts,
        fingerprint: fingerprint.map(str::to_owned),
        created_at: 0,
    })
}

/// Part `i` of `parts` (already split, `threshold` of them needed) to
/// custodian `i mod n`.
pub fn deal(
    custody: &Custody,
    kind: &str,
    parts: &[SecretString],
    threshold: u8,
    fingerprint: Option<&str>,
) -> StepResult<Vec<EscrowItem>> {
    let n = parts.len().min(255) as u8;
    parts
        .iter()
        .enumerate()
        .map(|(i, p)| {
            let holder = i % custody.custodians.len();
            item(custody, kind, i, holder, p.expose().as_bytes(), threshold, n, fingerprint)
        })
        .collect()
}

/// `secret` split `openbao_threshold` of `shares()` with Shamir, each part
/// dealt as [`deal`] deals; `fingerprint` identifies the whole.
pub fn split_and_deal(
    custody: &Custody,
    kind: &str,
    secret: &[u8],
    fingerprint: &str,
) -> StepResult<Vec<EscrowItem>> {
    let (threshold, n) = (custody.openbao_threshold, custody.shares());
    let parts = cz_state::shamir::split(secret, threshold, n)
        .map_err(|e| StepError::internal(format!("splitting the {kind}: {e}")))?;
    let texts: Vec<SecretString> = parts.iter().map(|p| SecretString::new(p.encode())).collect();
    deal(custody, kind, &texts, threshold, Some(fingerprint))
}

/// One whole copy of `secret` per custodian.
pub fn copies(
    custody: &Custody,
    kind: &str,
    secret: &[u8],
    fingerprint: &str,
) -> StepResult<Vec<EscrowItem>> {
    let n = custody.custodians.len().min(255) as u8;
    (0..custody.custodians.len())
        .map(|c| item(custody, kind, c, c, secret, 1, n, Some(fingerprint)))
        .collect()
}

/// Whether `items` is a complete escrow of the secret `fingerprint`.
pub fn holds(items: &[EscrowItem], fingerprint: &str) -> bool {
    !items.is_empty()
        && items.len() == usize::from(items[0].parts)
        && items.iter().all(|i| i.fingerprint.as_deref() == Some(fingerprint))
}
