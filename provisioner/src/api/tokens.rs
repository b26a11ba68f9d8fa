//! Named operators: a tokens file of `name`, `role` and the SHA-256 of each
//! person's token (never the token), so the audit trail names a person,
//! not a role.
//!
//! ```toml
//! [[token]]
//! name = "alice"
//! role = "operator"      # or "wizard"
//! sha256 = "…64 hex digits: sha256sum of the token…"
//! ```
//!
//! The file is read at start (a bad file stops the daemon) and again
//! whenever its modification time or size changes, checked at most once a
//! second on an authenticated request: adding or revoking a person needs no
//! restart. A file that turns bad while running keeps the last good set and
//! says so in the log. Every comparison is constant-time over every entry.

use std::path::{Path, PathBuf};
use std::sync::RwLock;
use std::time::{Instant, SystemTime};

use serde::Deserialize;

/// What a token may do.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Role {
    /// Every verb.
    Operator,
    /// Submit and read (the public wizard's backend).
    Wizard,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct FileEntry {
    name: String,
    role: Role,
    sha256: String,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct File {
    #[serde(default)]
    token: Vec<FileEntry>,
}

struct Entry {
    name: String,
    role: Role,
    digest: [u8; 32],
}

struct Loaded {
    stamp: Option<(SystemTime, u64)>,
    checked: Instant,
    entries: Vec<Entry>,
}

/// The tokens file, reloaded on change.
pub struct TokenFile {
    path: PathBuf,
    loaded: RwLock<Loaded>,
}

impl std::fmt::Debug for TokenFile {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TokenFile").field("path", &self.path).finish_non_exhaustive()
    }
}

fn stamp(path: &Path) -> Option<(SystemTime, u64)> {
    let m = std::fs::metadata(path).ok()?;
    Some((m.modified().ok()?, m.len()))
}

fn parse(path: &Path) -> Result<Vec<Entry>, String> {
    let text = std::fs::read_to_string(path).map_err(|e| format!("{}: {e}", path.display()))?;
    let file: File = toml::from_str(&text).map_err(|e| format!("{}: {e}", path.display()))?;
    let mut out: Vec<Entry> = Vec::new();
    for (i, t) in file.token.into_iter().enumerate() {
        let at = format!("{} token[{i}]", path.display());
        let name_ok = !t.name.is_empty()
            && t.name.len() <= 64
            && t.name.chars().all(|c| c.is_ascii_alphanumeric() || "._@-".contains(c));
        if !name_ok {
            return Err(format!(
                "{at}.name `{}`: 1 to 64 of a-z, A-Z, 0-9, `.`, `_`, `@`, `-`",
                t.name.escape_debug()
            ));
        }
        if out.iter().any(|e| e.name == t.name) {
            return Err(format!("{at}.name `{}` is given twice", t.name));
        }
        let digest: [u8; 32] = hex::decode(t.sha256.trim())
            .ok()
            .and_then(|b| b.try_into().ok())
            .ok_or_else(|| format!("{at}.sha256: 64 hex digits (sha256sum of the token)"))?;
        out.push(Entry { name: t.name, role: t.role, digest });
    }
    Ok(out)
}

impl TokenFile {
    /// Reads `path`; an unreadable or invalid file is an error.
    pub fn load(path: &Path) -> Result<TokenFile, String> {
        let entries = parse(path)?;
        Ok(TokenFile {
            path: path.to_owned(),
            loaded: RwLock::new(Loaded { stamp: stamp(path), checked: Instant::now(), entries }),
        })
    }

    fn refresh(&self) {
        {
            let l = self.loaded.read().expect("tokens lock");
            if l.checked.elapsed() < std::time::Duration::from_secs(1) {
                return;
            }
        }
        let mut l = self.loaded.write().expect("tokens lock");
        l.checked = Instant::now();
        let now = stamp(&self.path);
        if now == l.stamp {
            return;
        }
        match parse(&self.path) {
            Ok(entries) => {
                tracing::info!(file = %self.path.display(), people = entries.len(), "Reloaded the tokens file.");
                l.entries = entries;
                l.stamp = now;
            }
            Err(e) => {
                tracing::error!(error = %e, "The tokens file is invalid; keeping the last good one.");
                l.stamp = now;
            }
        }
    }

    /// The person and role whose token has this SHA-256 (hex). Callers
    /// hold only the digest: of the bearer token presented, or of the
    /// token a console session was opened with.
    pub fn find_digest(&self, sha256_hex: &str) -> Option<(String, Role)> {
        let digest: [u8; 32] = hex::decode(sha256_hex).ok()?.try_into().ok()?;
        self.refresh();
        let l = self.loaded.read().expect("tokens lock");
        let mut found = None;
        // Every entry is compared, found or not.
        for e in &l.entries {
            let same =
                e.digest.iter().zip(digest.iter()).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0;
            if same && found.is_none() {
                found = Some((e.name.clone(), e.role));
            }
        }
        found
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use sha2::{Digest, Sha256};

    /// The person `token` belongs to (as the API looks it up: by digest).
    fn find(t: &TokenFile, token: &str) -> Option<(String, Role)> {
        t.find_digest(&hex::encode(Sha256::digest(token.as_bytes())))
    }

    fn line(name: &str, role: &str, token: &str) -> String {
        format!(
            "[[token]]\nname = \"{name}\"\nrole = \"{role}\"\nsha256 = \"{}\"\n",
            hex::encode(Sha256::digest(token.as_bytes()))
        )
    }

    #[test]
    fn people_are_found_by_token_and_the_file_is_reloaded_on_change() {
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("tokens.toml");
        std::fs::write(&f, line("alice", "operator", "alice-secret-token-1")).unwrap();
        let t = TokenFile::load(&f).unwrap();
        assert_eq!(find(&t, "alice-secret-token-1"), Some(("alice".into(), Role::Operator)));
        assert_eq!(find(&t, "nope"), None);
        // Bob is added, Alice revoked: no restart.
        std::fs::write(&f, line("bob", "wizard", "bob-secret-token-22")).unwrap();
        t.loaded.write().unwrap().checked -= std::time::Duration::from_secs(2);
        assert_eq!(find(&t, "bob-secret-token-22"), Some(("bob".into(), Role::Wizard)));
        assert_eq!(find(&t, "alice-secret-token-1"), None);
        // A broken file keeps the last good set.
        std::fs::write(&f, "[[token]]\nname = \"x y\"\nrole = \"operator\"\nsha256 = \"00\"\n")
            .unwrap();
        t.loaded.write().unwrap().checked -= std::time::Duration::from_secs(2);
        assert_eq!(find(&t, "bob-secret-token-22"), Some(("bob".into(), Role::Wizard)));
        assert!(TokenFile::load(&f).unwrap_err().contains("name `x y`"));
        let dup = line("a", "operator", "one-token-aaaa") + &line("a", "wizard", "two-token-bbbb");
        std::fs::write(&f, dup).unwrap();
        assert!(TokenFile::load(&f).unwrap_err().contains("twice"));
    }
}
