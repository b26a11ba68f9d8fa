//! The custodians' commands: everything that needs a custodian's identity
//! runs here, on the custodian's machine; the daemon never sees one.
//!
//! - `escrow SOVEREIGN --out DIR`: the Sovereign's escrow (operator token)
//!   as files: `escrow.json` (the API's answer, ciphertext only) and one
//!   `<kind>-<index>.<custodian>.age` per blob, which its custodian opens
//!   with `age -d -i`.
//! - `unseal SOVEREIGN --identity FILE`: a custodian's turn at unsealing.
//!   It takes the escrow (from the daemon, or `--escrow DIR`), decrypts the
//!   shares dealt to this identity (and this custodian's copy of the admin
//!   kubeconfig) locally, gives each sealed OpenBao pod those shares
//!   through the API server's pod proxy (or `--endpoint` URLs, e.g. a
//!   port-forward), and reports each pod's progress: `k` of `n`.
//! - `combine PART... --out FILE`: a split key (the sealed-secrets key, the
//!   static-seal key) back from `threshold` custodians' parts, each opened
//!   by its custodian with `age -d`.

use std::io::Write as _;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

use anyhow::{Context, bail};
use cz_adapters::openbao::{BaoApi, BaoEndpoint, BaoStatus};
use cz_phases::custody::escrow::{ADMIN_KUBECONFIG, OPENBAO_SHARE};
use cz_phases::handoff::join::admin_kubeconfig_kind;
use cz_phases::handoff::secrets::{NAMESPACE, PORT, REPLICAS};
use cz_state::SecretString;
use cz_state::secrets::decrypt_with_identity;
use cz_state::shamir::{self, Part};

use super::client::Client;

/// The escrow as the API hands it out (and `escrow --out` stores it).
pub use crate::api::views::{EscrowBlob as Blob, EscrowView as Escrow};

const MANIFEST: &str = "escrow.json";

/// Creates `path` with mode 0600, refusing to replace a file.
fn write_private(path: &Path, bytes: &[u8]) -> anyhow::Result<()> {
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
        .with_context(|| format!("cannot create {} (it must not exist yet)", path.display()))?;
    f.write_all(bytes).with_context(|| format!("cannot write {}", path.display()))?;
    f.sync_all().with_context(|| format!("cannot sync {}", path.display()))
}

fn slug(label: &str) -> String {
    let s: String = label
        .chars()
        .map(|c| if c.is_ascii_alphanumeric() || c == '-' || c == '_' { c } else { '-' })
        .collect();
    s.trim_matches('-').to_owned()
}

/// The file a blob is written to.
pub fn blob_file(b: &Blob) -> String {
    format!("{}-{}.{}.age", b.kind, b.index, slug(&b.label))
}

/// `escrow SOVEREIGN --out DIR`.
pub async fn escrow_out(c: &Client, sovereign: &str, out: &Path) -> anyhow::Result<u8> {
    let answer = c.get(&format!("/v1/sovereigns/{sovereign}/escrow")).await?;
    let escrow: Escrow =
        serde_json::from_value(answer.clone()).context("the daemon's escrow answer")?;
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(out)
        .with_context(|| format!("cannot create {}", out.display()))?;
    write_private(&out.join(MANIFEST), serde_json::to_string_pretty(&answer)?.as_bytes())?;
    for b in &escrow.items {
        write_private(&out.join(blob_file(b)), b.age.as_bytes())?;
    }
    println!("Escrow of {} ({}) in {}:", escrow.fqdn, escrow.sovereign_id, out.display());
    let mut kinds: Vec<&str> = escrow.items.iter().map(|b| b.kind.as_str()).collect();
    kinds.dedup();
    for k in kinds {
        let of: Vec<&Blob> = escrow.items.iter().filter(|b| b.kind == k).collect();
        let who: Vec<String> =
            of.iter().map(|b| format!("{} ({})", blob_file(b), b.label)).collect();
        let need = of[0].threshold;
        println!("  {k}: {need} of {} needed: {}", of[0].parts, who.join(", "));
    }
    println!("Each file opens only with its custodian's identity: age -d -i IDENTITY FILE");
    Ok(0)
}

/// The escrow from `--escrow DIR`, or from the daemon.
pub async fn load_escrow(
    dir: Option<&Path>,
    client: impl FnOnce() -> anyhow::Result<Client>,
    sovereign: &str,
) -> anyhow::Result<Escrow> {
    let v = match dir {
        Some(d) => {
            let f = d.join(MANIFEST);
            let text = std::fs::read_to_string(&f)
                .with_context(|| format!("cannot read {}", f.display()))?;
            serde_json::from_str(&text)
                .with_context(|| format!("{} is not an escrow", f.display()))?
        }
        None => client()?.get(&format!("/v1/sovereigns/{sovereign}/escrow")).await?,
    };
    let e: Escrow = serde_json::from_value(v).context("not an escrow")?;
    if e.sovereign_id != sovereign && e.fqdn != sovereign {
        bail!("the escrow is of {} ({}), not of {sovereign}", e.fqdn, e.sovereign_id);
    }
    Ok(e)
}

/// The blobs of `kind` dealt to `identity` (its recipient), decrypted.
pub fn open_mine(
    escrow: &Escrow,
    kind: &str,
    identity: &str,
) -> anyhow::Result<Vec<(Blob, SecretString)>> {
    let me = cz_state::secrets::identity_recipient(identity)
        .context("the identity file holds no AGE-SECRET-KEY line")?;
    escrow
        .items
        .iter()
        .filter(|b| b.kind == kind && b.recipient == me)
        .map(|b| {
            let plain = decrypt_with_identity(identity, b.age.as_bytes())
                .with_context(|| format!("cannot open {}", blob_file(b)))?;
            let text = String::from_utf8(plain).context("the blob is not text")?;
            Ok((b.clone(), SecretString::new(text.trim().to_owned())))
        })
        .collect()
}

/// What one pod said before and after this custodian's shares.
#[derive(Clone, Debug)]
pub struct PodReport {
    pub name: String,
    pub before: Option<BaoStatus>,
    pub given: usize,
    pub after: Option<BaoStatus>,
    pub error: Option<String>,
}

impl PodReport {
    pub fn line(&self) -> String {
        match (&self.before, &self.after, &self.error) {
            (_, _, Some(e)) => format!("{}: {e}", self.name),
            (Some(b), _, None) if !b.initialized => format!("{}: not initialized", self.name),
            (Some(b), _, None) if !b.sealed => format!("{}: unsealed already", self.name),
            (_, Some(a), None) if !a.sealed => {
                format!("{}: unsealed ({} of your shares given)", self.name, self.given)
            }
            (_, Some(a), None) => format!(
                "{}: sealed, {} of {} shares given ({} yours); {} more needed",
                self.name,
                a.progress,
                a.threshold,
                self.given,
                a.threshold.saturating_sub(a.progress)
            ),
            _ => format!("{}: no answer", self.name),
        }
    }
}

/// Gives `shares` to every sealed replica at `pods`, one share at a time
/// until it unseals.
pub async fn unseal_pods(
    bao: &dyn BaoApi,
    pods: &[(String, BaoEndpoint)],
    shares: &[SecretString],
) -> Vec<PodReport> {
    let mut out = Vec::new();
    for (name, at) in pods {
        let mut r =
            PodReport { name: name.clone(), before: None, given: 0, after: None, error: None };
        match bao.status(at).await {
            Err(e) => r.error = Some(format!("no answer: {e}")),
            Ok(st) => {
                let todo = st.initialized && st.sealed;
                r.before = Some(st.clone());
                r.after = Some(st);
                if todo {
                    for share in shares {
                        match bao.unseal(at, share).await {
                            Ok(st) => {
                                r.given += 1;
                                let done = !st.sealed;
                                r.after = Some(st);
                                if done {
                                    break;
                                }
                            }
                            Err(e) => {
                                r.error = Some(format!("share refused: {e}"));
                                break;
                            }
                        }
                    }
                    // A replica joining its cluster reports unsealed a moment
                    // after the last share.
                    if r.error.is_none()
                        && let Ok(st) = bao.status(at).await
                    {
                        r.after = Some(st);
                    }
                }
            }
        }
        out.push(r);
    }
    out
}

/// `unseal SOVEREIGN --identity FILE [--region LOC]`: the shares go to
/// the pods through `bao` (OpenBao's HTTP API; a simulated Sovereign's
/// world for `--sim-world`).
pub async fn unseal(
    bao: &dyn BaoApi,
    escrow: &Escrow,
    identity_file: &Path,
    region: Option<&str>,
    kubeconfig: Option<&Path>,
    endpoints: &[String],
) -> anyhow::Result<u8> {
    let identity = std::fs::read_to_string(identity_file)
        .with_context(|| format!("cannot read {}", identity_file.display()))?;
    let shares = open_mine(escrow, OPENBAO_SHARE, &identity)?;
    if shares.is_empty() {
        bail!(
            "this identity holds no OpenBao share of {} (the shares are dealt to: {})",
            escrow.fqdn,
            escrow
                .items
                .iter()
                .filter(|b| b.kind == OPENBAO_SHARE)
                .map(|b| b.label.as_str())
                .collect::<Vec<_>>()
                .join(", ")
        );
    }
    let (threshold, total) = (shares[0].0.threshold, shares[0].0.parts);
    let pods: Vec<(String, BaoEndpoint)> = if endpoints.is_empty() {
        let kc = match kubeconfig {
            Some(f) => SecretString::new(
                std::fs::read_to_string(f)
                    .with_context(|| format!("cannot read {}", f.display()))?,
            ),
            None => {
                let kind = region.map_or(ADMIN_KUBECONFIG.to_owned(), admin_kubeconfig_kind);
                open_mine(escrow, &kind, &identity)?.pop().map(|(_, kc)| kc).with_context(|| {
                    format!(
                        "no kubeconfig: pass --kubeconfig (no `{kind}` is escrowed to this \
                         identity)"
                    )
                })?
            }
        };
        (0..REPLICAS)
            .map(|i| {
                let name = match region {
                    Some(loc) => format!("{loc}/openbao-{i}"),
                    None => format!("openbao-{i}"),
                };
                let at = BaoEndpoint::pod(&kc, NAMESPACE, &format!("openbao-{i}"), PORT)
                    .map_err(|e| anyhow::anyhow!("{e}"))?;
                Ok((name, at))
            })
            .collect::<anyhow::Result<_>>()?
    } else {
        endpoints.iter().map(|u| (u.clone(), BaoEndpoint::direct(u.clone()))).collect()
    };
    println!("{}: you hold {} of {total} shares; {threshold} unseal.", escrow.fqdn, shares.len());
    let keys: Vec<SecretString> = shares.into_iter().map(|(_, s)| s).collect();
    let reports = unseal_pods(bao, &pods, &keys).await;
    for r in &reports {
        println!("  {}", r.line());
    }
    let sealed = reports.iter().filter(|r| r.after.as_ref().is_none_or(|a| a.sealed)).count();
    if sealed == 0 {
        println!("Every replica is unsealed.");
        Ok(0)
    } else {
        println!("{sealed} replica(s) still sealed: the next custodian runs the same command.");
        // Not an error: this custodian did their part.
        Ok(0)
    }
}

/// `combine PART... --out FILE`: `threshold` parts back into the secret.
pub fn combine(parts: &[PathBuf], out: &Path, fingerprint: Option<&str>) -> anyhow::Result<u8> {
    let parsed: Vec<Part> = parts
        .iter()
        .map(|p| {
            let text = std::fs::read_to_string(p)
                .with_context(|| format!("cannot read {}", p.display()))?;
            Part::decode(&text).with_context(|| {
                format!("{} is not an opened part (open it with `age -d -i IDENTITY`)", p.display())
            })
        })
        .collect::<anyhow::Result<_>>()?;
    let secret = shamir::combine(&parsed).map_err(|e| anyhow::anyhow!("{e}"))?;
    let digest = hex::encode(<sha2::Sha256 as sha2::Digest>::digest(&secret));
    if let Some(want) = fingerprint
        && !want.eq_ignore_ascii_case(&digest)
    {
        bail!("the combined secret's SHA-256 is {digest}, not {want}: a part is wrong");
    }
    write_private(out, &secret)?;
    println!("Combined {} parts into {} (sha256 {digest}).", parsed.len(), out.display());
    Ok(0)
}
