//! `SshClient`: the real [`SshApi`] over `ssh2` (libssh2, vendored; links the
//! system OpenSSL).
//!
//! - **One connection per call**, made on the blocking pool: a step's calls
//!   are few and seconds apart, and a fresh connection per call has no state
//!   to lose when the daemon is killed. Calls to different hosts run in
//!   parallel (the engine runs the nodes' steps concurrently).
//! - **Host-key pinning**: [`SshApi::probe`] connects, completes the key
//!   exchange and returns the host key's `SHA256:` fingerprint (OpenSSH's
//!   format), which the `cluster.ssh` step records as its output on first
//!   contact. Every later call checks the key against that pin *before*
//!   authenticating and refuses a change as `Conflict` (a reinstalled server
//!   or a man in the middle: an operator decides, never the daemon).
//! - **Authentication**: public key only, from the per-Sovereign provisioner
//!   key held age-encrypted in the store ([`ProvisionerKey`]); the private key
//!   goes to libssh2 from memory and is never written to disk.
//! - **Uploads** stream the contents over the channel's stdin into a
//!   temporary file in the target directory (created if missing, umask 077),
//!   set the mode, then rename it over the target: a crash never leaves a
//!   half-written config file. Paths are rooted at `$CZ_NODE_ROOT` when the
//!   node's sshd sets it ([`NODE_ROOT_VAR`]).
//! - **Bounded**: connect timeout, and a per-call timeout on every blocking
//!   libssh2 operation; output captured up to [`MAX_OUTPUT`] per stream.
//!
//! Causes: TCP refused/unreachable/timeout and a failed key exchange
//! (a host still booting) → `Network`; a changed host key → `Conflict`;
//! authentication refused → `Unauthorized`; a timed-out command →
//! `Unavailable`; a command that exits non-zero is `Ok` with its status
//! (callers decide).

use std::io::{Read, Write};
use std::net::{TcpStream, ToSocketAddrs};
use std::path::Path;
use std::time::Duration;

use async_trait::async_trait;
use ssh2::{ErrorCode, HashType, Session};

use crate::{AdapterResult, CommandOutput, Host, ProvisionerKey, SshApi};
use cz_engine::{Cause, StepError, System};

/// The environment variable a node's sshd may set to root the paths the
/// phases use (`${CZ_NODE_ROOT:-}/etc/rancher/...`): unset on real nodes; a
/// test host running several "nodes" gives each its own directory.
pub const NODE_ROOT_VAR: &str = "CZ_NODE_ROOT";

/// Output kept per stream (the rest is dropped, with a marker).
pub const MAX_OUTPUT: usize = 4 << 20;

/// The real SSH adapter.
#[derive(Clone, Debug)]
pub struct SshClient {
    connect_timeout: Duration,
    call_timeout: Duration,
}

impl Default for SshClient {
    fn default() -> Self {
        SshClient::new(Duration::from_secs(10), Duration::from_secs(15 * 60))
    }
}

fn err(op: &str, cause: Cause, message: impl Into<String>) -> StepError {
    StepError::adapter(System::Ssh, op, cause, message)
}

/// OpenSSH's fingerprint format: `SHA256:` + unpadded base64.
pub fn fingerprint_sha256(digest: &[u8]) -> String {
    use base64::Engine as _;
    format!("SHA256:{}", base64::engine::general_purpose::STANDARD_NO_PAD.encode(digest))
}

/// A connected, key-exchanged session and the host key's fingerprint.
struct Connected {
    session: Session,
    fingerprint: String,
}

impl SshClient {
    pub fn new(connect_timeout: Duration, call_timeout: Duration) -> SshClient {
        SshClient { connect_timeout, call_timeout }
    }

    fn connect(&self, host: &Host, op: &str) -> AdapterResult<Connected> {
        let target = format!("{}:{}", host.address, host.port);
        let addrs: Vec<_> = target
            .to_socket_addrs()
            .map_err(|e| err(op, Cause::Network, format!("{} ({target}): {e}", host.name)))?
            .collect();
        let mut last = None;
        let mut tcp = None;
        for a in addrs {
            match TcpStream::connect_timeout(&a, self.connect_timeout) {
                Ok(s) => {
                    tcp = Some(s);
                    break;
                }
                Err(e) => last = Some(e),
            }
        }
        let tcp = tcp.ok_or_else(|| {
            let why = last.map_or("no address".to_owned(), |e| e.to_string());
            err(op, Cause::Network, format!("{} ({target}): {why}", host.name))
        })?;
        let mut session = Session::new()
            .map_err(|e| err(op, Cause::Unavailable, format!("libssh2 session: {e}")))?;
        session.set_timeout(self.connect_timeout.as_millis().min(u128::from(u32::MAX)) as u32);
        session.set_tcp_stream(tcp);
        session.handshake().map_err(|e| {
            err(op, Cause::Network, format!("{} ({target}): SSH handshake failed: {e}", host.name))
        })?;
        let digest = session.host_key_hash(HashType::Sha256).ok_or_else(|| {
            err(op, Cause::Network, format!("{} ({target}): no host key offered", host.name))
        })?;
        let fingerprint = fingerprint_sha256(digest);
        Ok(Connected { session, fingerprint })
    }

    /// Connects, checks the pin, authenticates.
    fn open(
        &self,
        host: &Host,
        pinned: &str,
        key: &ProvisionerKey,
        op: &str,
    ) -> AdapterResult<Session> {
        let Connected { session, fingerprint } = self.connect(host, op)?;
        if fingerprint != pinned {
            return Err(err(
                op,
                Cause::Conflict,
                format!(
                    "the host key of {} ({}:{}) changed: pinned {pinned}, offered {fingerprint}. \
                     Refusing to connect (reinstalled server, or someone in the middle)",
                    host.name, host.address, host.port
                ),
            ));
        }
        session
            .userauth_pubkey_memory(&host.user, Some(&key.public), key.private.expose(), None)
            .map_err(|e| {
            err(
                op,
                Cause::Unauthorized,
                format!(
                    "{}@{} ({}): public key authentication refused: {}",
                    host.user,
                    host.name,
                    host.address,
                    e.message()
                ),
            )
        })?;
        if !session.authenticated() {
            return Err(err(
                op,
                Cause::Unauthorized,
                format!("{}@{}: not authenticated", host.user, host.name),
            ));
        }
        session.set_timeout(self.call_timeout.as_millis().min(u128::from(u32::MAX)) as u32);
        Ok(session)
    }

    fn io_err(
        &self,
        op: &str,
        host: &Host,
        e: impl std::fmt::Display,
        timed_out: bool,
    ) -> StepError {
        let cause = if timed_out { Cause::Unavailable } else { Cause::Network };
        let what = if timed_out {
            format!("timed out after {}s", self.call_timeout.as_secs())
        } else {
            e.to_string()
        };
        err(op, cause, format!("{} ({}): {what}", host.name, host.address))
    }

    fn run_blocking(
        &self,
        host: &Host,
        pinned: &str,
        key: &ProvisionerKey,
        command: &str,
    ) -> AdapterResult<CommandOutput> {
        let op = "run";
        let session = self.open(host, pinned, key, op)?;
        let ssh_err = |e: ssh2::Error| {
            let timed_out = e.code() == ErrorCode::Session(-9);
            self.io_err(op, host, e, timed_out)
        };
        let mut ch = session.channel_session().map_err(ssh_err)?;
        ch.exec(command).map_err(ssh_err)?;
        // Drain both streams together (non-blocking), so a command that
        // fills its stderr window while stdout is read cannot stall.
        let mut stdout = Vec::new();
        let mut stderr = Vec::new();
        let mut buf = vec![0u8; 32 * 1024];
        let deadline = std::time::Instant::now() + self.call_timeout;
        session.set_blocking(false);
        loop {
            let mut progressed = false;
            for (stream, out) in [(0, &mut stdout), (1, &mut stderr)] {
                let r = if stream == 0 { ch.read(&mut buf) } else { ch.stderr().read(&mut buf) };
                match r {
                    Ok(0) => {}
                    Ok(n) => {
                        append_capped(out, &buf[..n]);
                        progressed = true;
                    }
                    Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
                    Err(e) => return Err(self.io_err(op, host, e, false)),
                }
            }
            if progressed {
                continue;
            }
            if ch.eof() {
                break;
            }
            if std::time::Instant::now() > deadline {
                return Err(self.io_err(op, host, "", true));
            }
            std::thread::sleep(Duration::from_millis(5));
        }
        session.set_blocking(true);
        ch.wait_close().map_err(ssh_err)?;
        let status = ch.exit_status().map_err(ssh_err)?;
        Ok(CommandOutput { status, stdout: capped_string(stdout), stderr: capped_string(stderr) })
    }

    fn upload_blocking(
        &self,
        host: &Host,
        pinned: &str,
        key: &ProvisionerKey,
        path: &str,
        contents: &[u8],
        mode: u32,
    ) -> AdapterResult<()> {
        let op = "upload";
        let target = Path::new(path);
        let (Some(dir), Some(name)) = (target.parent(), target.file_name()) else {
            return Err(err(op, Cause::Invalid, format!("`{path}` is not a file path")));
        };
        let plain = |p: &str| p.bytes().all(|b| b.is_ascii_alphanumeric() || b"/._-".contains(&b));
        if !target.is_absolute() || !plain(path) || path.contains("/../") {
            return Err(err(
                op,
                Cause::Invalid,
                format!("`{path}` is not an absolute path of [A-Za-z0-9/._-]"),
            ));
        }
        let session = self.open(host, pinned, key, op)?;
        let root = format!("${{{NODE_ROOT_VAR}:-}}");
        let dir = format!("{root}{}", dir.display());
        let tmp = format!("{dir}/.{}.catalyst-tmp", name.to_string_lossy());
        let dest = format!("{root}{path}");
        // Contents go through stdin into a temporary file in the target
        // directory (never readable by others: umask 077), get their mode,
        // and replace the target by rename(2): a crash leaves the old file
        // or the new one, never half of either.
        let command = format!(
            "umask 077 && mkdir -p -- \"{dir}\" && cat > \"{tmp}\" && chmod {mode:o} -- \"{tmp}\" && mv -f -- \"{tmp}\" \"{dest}\""
        );
        let ssh_err = |e: ssh2::Error| {
            let timed_out = e.code() == ErrorCode::Session(-9);
            self.io_err(op, host, format!("{path}: {e}"), timed_out)
        };
        let mut ch = session.channel_session().map_err(ssh_err)?;
        ch.exec(&command).map_err(ssh_err)?;
        ch.write_all(contents).map_err(|e| self.io_err(op, host, &e, is_timeout(&e)))?;
        ch.send_eof().map_err(ssh_err)?;
        let mut out = String::new();
        let _ = ch.stderr().read_to_string(&mut out);
        ch.wait_close().map_err(ssh_err)?;
        let status = ch.exit_status().map_err(ssh_err)?;
        if status != 0 {
            return Err(err(
                op,
                Cause::CommandFailed,
                format!("{}: writing {path} exited {status}: {}", host.name, out.trim()),
            ));
        }
        Ok(())
    }
}

/// A single-quoted POSIX shell word.
pub fn shell_quote(s: &str) -> String {
    format!("'{}'", s.replace('\'', r"'\''"))
}

fn is_timeout(e: &std::io::Error) -> bool {
    matches!(e.kind(), std::io::ErrorKind::TimedOut | std::io::ErrorKind::WouldBlock)
}

fn append_capped(out: &mut Vec<u8>, more: &[u8]) {
    let room = MAX_OUTPUT.saturating_sub(out.len());
    out.extend_from_slice(&more[..more.len().min(room)]);
}

fn capped_string(b: Vec<u8>) -> String {
    let cut = b.len() >= MAX_OUTPUT;
    let mut s = String::from_utf8_lossy(&b).into_owned();
    if cut {
        s.push_str("\n[output truncated]");
    }
    s
}

/// Runs a blocking libssh2 call on the blocking pool.
async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> AdapterResult<T> + Send + 'static,
) -> AdapterResult<T> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| StepError::internal(format!("ssh task: {e}")))?
}

#[async_trait]
impl SshApi for SshClient {
    #[tracing::instrument(
        name = "adapter",
        level = "info",
        skip_all,
        fields(system = "ssh", op = "probe")
    )]
    async fn probe(&self, host: &Host) -> AdapterResult<String> {
        let (me, host) = (self.clone(), host.clone());
        blocking(move || me.connect(&host, "probe").map(|c| c.fingerprint)).await
    }

    #[tracing::instrument(
        name = "adapter",
        level = "info",
        skip_all,
        fields(system = "ssh", op = "run")
    )]
    async fn run(
        &self,
        host: &Host,
        fingerprint: &str,
        key: &ProvisionerKey,
        command: &str,
    ) -> AdapterResult<CommandOutput> {
        let (me, host, fp, key, cmd) =
            (self.clone(), host.clone(), fingerprint.to_owned(), key.clone(), command.to_owned());
        blocking(move || me.run_blocking(&host, &fp, &key, &cmd)).await
    }

    #[tracing::instrument(
        name = "adapter",
        level = "info",
        skip_all,
        fields(system = "ssh", op = "upload")
    )]
    async fn upload(
        &self,
        host: &Host,
        fingerprint: &str,
        key: &ProvisionerKey,
        path: &str,
        contents: &[u8],
        mode: u32,
    ) -> AdapterResult<()> {
        let (me, host, fp, key, path, body) = (
            self.clone(),
            host.clone(),
            fingerprint.to_owned(),
            key.clone(),
            path.to_owned(),
            contents.to_vec(),
        );
        blocking(move || me.upload_blocking(&host, &fp, &key, &path, &body, mode)).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shell_words_are_quoted() {
        assert_eq!(shell_quote("/a b/it's"), r"'/a b/it'\''s'");
    }

    #[test]
    fn fingerprints_are_openssh_format() {
        // sha256("") in OpenSSH's format.
        let d = <sha2::Sha256 as sha2::Digest>::digest(b"");
        assert_eq!(fingerprint_sha256(&d), "SHA256:47DEQpj8HBSa+/TImW+5JCeuQeRkm5NMpJWZG3hSuFU");
    }
}
