//! The one subprocess helper (omicron's `execute_async`, with a timeout).
//!
//! Every external command the daemon runs goes through [`run`]:
//! - the environment is **cleared** and pinned: `PATH` (a fixed system path),
//!   `HOME` (the daemon's, else `/`), `LC_ALL=C`, plus the spec's explicit
//!   variables. Nothing else leaks in from the daemon, and secrets travel
//!   only as explicit env values, which are never printed: [`CommandSpec`]'s
//!   `Debug` shows env *names* only and [`CommandError`] carries no env;
//! - the child is the leader of its own process group (`process_group(0)`),
//!   so on timeout — or when the future running it is dropped — the whole
//!   group (the tool and anything it forked: providers, `local-exec`
//!   shells) is killed, not only the direct child. The kill goes through
//!   `/bin/kill` (`unsafe` is forbidden in this workspace, so no `libc`):
//!   `SIGTERM` to the group, a grace period for the tool to persist what it
//!   can (tofu writes its state on `SIGTERM`), then `SIGKILL` to the group.
//!   A drop guard sends `SIGKILL` to the group if the future is cancelled;
//! - stdout is read line by line and each line handed to the optional sink
//!   as it arrives (streamed job events); stdout and stderr are also
//!   collected and returned;
//! - an exit code outside `ok_codes` is a [`CommandError::Failed`] carrying
//!   the argv, the status and the tails of stdout and stderr.

use std::ffi::OsString;
use std::fmt;
use std::path::{Path, PathBuf};
use std::process::{ExitStatus, Stdio};
use std::time::{Duration, Instant};

use tokio::io::{AsyncBufReadExt, AsyncRead, AsyncReadExt, BufReader};
use tokio::process::Command;

/// The `PATH` every child gets.
pub const PINNED_PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

/// How long a timed-out group gets between `SIGTERM` and `SIGKILL`.
pub const KILL_GRACE: Duration = Duration::from_secs(3);

/// How much of stdout/stderr an error keeps.
const TAIL_BYTES: usize = 4096;

/// A callback receiving each stdout line (without its newline) as it comes.
pub type LineSink = Box<dyn FnMut(&str) + Send>;

/// What to run.
pub struct CommandSpec {
    pub program: PathBuf,
    pub args: Vec<OsString>,
    pub cwd: Option<PathBuf>,
    /// Explicit environment, on top of the pinned `PATH`, `HOME`, `LC_ALL`.
    /// Values may be secrets: they are never logged or put in errors.
    pub env: Vec<(String, String)>,
    /// `None`: no bound (avoid; every daemon command should have one).
    pub timeout: Option<Duration>,
    /// Exit codes that count as success (default `[0]`).
    pub ok_codes: Vec<i32>,
    /// Streams stdout lines as they arrive.
    pub line_sink: Option<LineSink>,
    /// If set, the child's pid is written here after spawn and the file is
    /// removed when the child is reaped. A file left behind means the
    /// daemon died while the child ran; whether that pid is still alive
    /// tells a stale lock from a held one.
    pub pid_file: Option<PathBuf>,
}

impl CommandSpec {
    pub fn new(program: impl Into<PathBuf>) -> CommandSpec {
        CommandSpec {
            program: program.into(),
            args: Vec::new(),
            cwd: None,
            env: Vec::new(),
            timeout: None,
            ok_codes: vec![0],
            line_sink: None,
            pid_file: None,
        }
    }

    pub fn arg(mut self, a: impl Into<OsString>) -> Self {
        self.args.push(a.into());
        self
    }

    pub fn args<I, S>(mut self, args: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<OsString>,
    {
        self.args.extend(args.into_iter().map(Into::into));
        self
    }

    pub fn cwd(mut self, dir: impl Into<PathBuf>) -> Self {
        self.cwd = Some(dir.into());
        self
    }

    pub fn env(mut self, key: impl Into<String>, value: impl Into<String>) -> Self {
        self.env.push((key.into(), value.into()));
        self
    }

    pub fn timeout(mut self, t: Duration) -> Self {
        self.timeout = Some(t);
        self
    }

    pub fn ok_codes(mut self, codes: &[i32]) -> Self {
        self.ok_codes = codes.to_vec();
        self
    }

    pub fn line_sink(mut self, sink: impl FnMut(&str) + Send + 'static) -> Self {
        self.line_sink = Some(Box::new(sink));
        self
    }

    pub fn pid_file(mut self, path: impl Into<PathBuf>) -> Self {
        self.pid_file = Some(path.into());
        self
    }

    /// The argv as one printable string (program and args; never env).
    pub fn argv(&self) -> String {
        argv_string(&self.program, &self.args)
    }
}

impl fmt::Debug for CommandSpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CommandSpec")
            .field("argv", &self.argv())
            .field("cwd", &self.cwd)
            .field("env_names", &self.env.iter().map(|(k, _)| k.as_str()).collect::<Vec<_>>())
            .field("timeout", &self.timeout)
            .field("ok_codes", &self.ok_codes)
            .finish_non_exhaustive()
    }
}

fn argv_string(program: &Path, args: &[OsString]) -> String {
    let mut s = program.display().to_string();
    for a in args {
        s.push(' ');
        s.push_str(&a.to_string_lossy());
    }
    s
}

/// What a finished command produced.
#[derive(Clone, Debug)]
pub struct Output {
    pub status: ExitStatus,
    /// `status.code()`, or `None` when killed by a signal.
    pub code: Option<i32>,
    pub stdout: String,
    pub stderr: String,
    pub elapsed: Duration,
}

#[derive(Debug, thiserror::Error)]
pub enum CommandError {
    #[error("could not start `{argv}`: {source}")]
    Spawn {
        argv: String,
        #[source]
        source: std::io::Error,
    },
    #[error("`{argv}` failed ({status}); stderr: {stderr_tail}; stdout: {stdout_tail}")]
    Failed {
        argv: String,
        /// `exit status: N` or `signal: N`.
        status: String,
        code: Option<i32>,
        stdout_tail: String,
        stderr_tail: String,
    },
    #[error(
        "`{argv}` timed out after {}s and its process group was killed; stderr: {stderr_tail}; stdout: {stdout_tail}",
        timeout.as_secs()
    )]
    Timeout { argv: String, timeout: Duration, stdout_tail: String, stderr_tail: String },
    #[error("i/o with `{argv}`: {source}")]
    Io {
        argv: String,
        #[source]
        source: std::io::Error,
    },
}

impl CommandError {
    /// The program could not be found (binary missing).
    pub fn is_not_found(&self) -> bool {
        matches!(self, CommandError::Spawn { source, .. }
            if source.kind() == std::io::ErrorKind::NotFound)
    }

    /// Full-ish stdout of a failed or timed-out command (its tail).
    pub fn stdout_tail(&self) -> &str {
        match self {
            CommandError::Failed { stdout_tail, .. }
            | CommandError::Timeout { stdout_tail, .. } => stdout_tail,
            _ => "",
        }
    }

    pub fn stderr_tail(&self) -> &str {
        match self {
            CommandError::Failed { stderr_tail, .. }
            | CommandError::Timeout { stderr_tail, .. } => stderr_tail,
            _ => "",
        }
    }
}

/// The last `TAIL_BYTES` of `s`, cut at a char boundary.
pub fn tail(s: &str) -> String {
    if s.len() <= TAIL_BYTES {
        return s.trim_end().to_owned();
    }
    let mut start = s.len() - TAIL_BYTES;
    while !s.is_char_boundary(start) {
        start += 1;
    }
    format!("…{}", s[start..].trim_end())
}

/// Sends `signal` to the whole process group `pgid` via `/bin/kill`.
/// Errors (the group is already gone) are ignored.
pub(crate) fn kill_group_blocking(pgid: u32, signal: &str) {
    let _ = std::process::Command::new("/bin/kill")
        .arg("-s")
        .arg(signal)
        .arg("--")
        .arg(format!("-{pgid}"))
        .env_clear()
        .env("PATH", PINNED_PATH)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status();
}

async fn kill_group(pgid: u32, signal: &'static str) {
    let _ = tokio::task::spawn_blocking(move || kill_group_blocking(pgid, signal)).await;
}

/// Kills the group with `SIGKILL` if dropped while armed (the future
/// running the command was cancelled, e.g. by the engine's own timeout).
struct GroupGuard {
    pgid: Option<u32>,
    pid_file: Option<PathBuf>,
}

impl GroupGuard {
    fn disarm(&mut self) {
        self.pgid = None;
        if let Some(p) = self.pid_file.take() {
            let _ = std::fs::remove_file(p);
        }
    }
}

impl Drop for GroupGuard {
    fn drop(&mut self) {
        if let Some(pgid) = self.pgid.take() {
            kill_group_blocking(pgid, "KILL");
        }
        if let Some(p) = self.pid_file.take() {
            let _ = std::fs::remove_file(p);
        }
    }
}

async fn read_all<R: AsyncRead + Unpin>(mut r: R) -> String {
    let mut buf = Vec::new();
    let _ = r.read_to_end(&mut buf).await;
    String::from_utf8_lossy(&buf).into_owned()
}

async fn read_lines<R: AsyncRead + Unpin>(r: R, mut sink: Option<LineSink>) -> String {
    let mut reader = BufReader::new(r);
    let mut all = String::new();
    let mut buf = Vec::new();
    loop {
        buf.clear();
        match reader.read_until(b'\n', &mut buf).await {
            Ok(0) | Err(_) => break,
            Ok(_) => {
                let line = String::from_utf8_lossy(&buf);
                all.push_str(&line);
                if let Some(s) = sink.as_mut() {
                    s(line.trim_end_matches(['\n', '\r']));
                }
            }
        }
    }
    all
}

/// Runs `spec` to completion (or its timeout). See the module docs.
#[tracing::instrument(
    name = "adapter",
    level = "info",
    skip_all,
    fields(
        system = "command",
        // The program's name only: arguments may carry what no trace should.
        op = %spec.program.file_name().map(|n| n.to_string_lossy()).unwrap_or_default(),
    )
)]
pub async fn run(spec: CommandSpec) -> Result<Output, CommandError> {
    let CommandSpec { program, args, cwd, env, timeout, ok_codes, line_sink, pid_file } = spec;
    let argv = argv_string(&program, &args);
    let mut cmd = Command::new(&program);
    cmd.args(&args)
        .env_clear()
        .env("PATH", PINNED_PATH)
        .env("HOME", std::env::var_os("HOME").unwrap_or_else(|| "/".into()))
        .env("LC_ALL", "C")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .process_group(0)
        .kill_on_drop(true);
    for (k, v) in &env {
        cmd.env(k, v);
    }
    if let Some(dir) = &cwd {
        cmd.current_dir(dir);
    }
    let started = Instant::now();
    let mut child =
        cmd.spawn().map_err(|source| CommandError::Spawn { argv: argv.clone(), source })?;
    let pid = child.id();
    let mut guard = GroupGuard { pgid: pid, pid_file: None };
    if let (Some(path), Some(pid)) = (&pid_file, pid) {
        if let Err(source) = tokio::fs::write(path, format!("{pid}\n")).await {
            return Err(CommandError::Io { argv, source });
        }
        guard.pid_file = Some(path.clone());
    }
    tracing::debug!(argv = %argv, pid, "command started");

    let stdout = child.stdout.take().expect("piped stdout");
    let stderr = child.stderr.take().expect("piped stderr");
    let out_task = tokio::spawn(read_lines(stdout, line_sink));
    let err_task = tokio::spawn(read_all(stderr));

    let waited = match timeout {
        Some(t) => tokio::time::timeout(t, child.wait()).await.ok(),
        None => Some(child.wait().await),
    };
    let status = match waited {
        Some(Ok(status)) => status,
        Some(Err(source)) => return Err(CommandError::Io { argv, source }),
        None => {
            let t = timeout.unwrap_or_default();
            tracing::warn!(argv = %argv, pid, timeout_s = t.as_secs(), "command timed out; killing its process group");
            if let Some(pgid) = pid {
                kill_group(pgid, "TERM").await;
                if tokio::time::timeout(KILL_GRACE, child.wait()).await.is_err() {
                    kill_group(pgid, "KILL").await;
                }
                // Whatever else is left in the group (children that ignored
                // TERM while the leader exited) gets KILL too.
                kill_group(pgid, "KILL").await;
            }
            let _ = child.start_kill();
            let _ = child.wait().await;
            guard.disarm();
            let stdout = collect(out_task).await;
            let stderr = collect(err_task).await;
            return Err(CommandError::Timeout {
                argv,
                timeout: t,
                stdout_tail: tail(&stdout),
                stderr_tail: tail(&stderr),
            });
        }
    };
    // The leader is gone; its group may still hold stragglers that keep the
    // pipes open. Reap them so reading finishes and nothing outlives us.
    if let Some(pgid) = pid {
        kill_group(pgid, "KILL").await;
    }
    guard.disarm();
    let stdout = collect(out_task).await;
    let stderr = collect(err_task).await;
    let code = status.code();
    let out = Output { status, code, stdout, stderr, elapsed: started.elapsed() };
    if code.is_some_and(|c| ok_codes.contains(&c)) {
        tracing::debug!(argv = %argv, ?code, elapsed_ms = out.elapsed.as_millis() as u64, "command finished");
        Ok(out)
    } else {
        Err(CommandError::Failed {
            argv,
            status: status.to_string(),
            code,
            stdout_tail: tail(&out.stdout),
            stderr_tail: tail(&out.stderr),
        })
    }
}

async fn collect(task: tokio::task::JoinHandle<String>) -> String {
    // Bounded: a grandchild outside the group could hold the pipe open.
    match tokio::time::timeout(Duration::from_secs(5), task).await {
        Ok(Ok(s)) => s,
        _ => String::new(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn env_is_cleared_and_secrets_are_not_printed() {
        let spec = CommandSpec::new("/bin/sh")
            .args(["-c", "echo \"$SECRET_X|$LC_ALL|${CARGO:-unset}\"; exit 3"])
            .env("SECRET_X", "hunter2")
            .timeout(Duration::from_secs(10));
        assert!(!format!("{spec:?}").contains("hunter2"));
        let e = run(spec).await.unwrap_err();
        match &e {
            CommandError::Failed { code, stdout_tail, .. } => {
                assert_eq!(*code, Some(3));
                assert_eq!(stdout_tail, "hunter2|C|unset");
            }
            other => panic!("{other}"),
        }
    }

    #[tokio::test]
    async fn lines_stream_and_missing_binary_is_not_found() {
        let seen = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let s2 = seen.clone();
        let out = run(CommandSpec::new("/bin/sh")
            .args(["-c", "echo a; echo b"])
            .line_sink(move |l| s2.lock().unwrap().push(l.to_owned()))
            .timeout(Duration::from_secs(10)))
        .await
        .unwrap();
        assert_eq!(out.stdout, "a\nb\n");
        assert_eq!(*seen.lock().unwrap(), vec!["a", "b"]);
        let e = run(CommandSpec::new("/nonexistent/tofu")).await.unwrap_err();
        assert!(e.is_not_found(), "{e}");
    }

    #[tokio::test]
    async fn timeout_kills_the_whole_group() {
        let dir = tempfile::tempdir().unwrap();
        let marker = dir.path().join("grandchild.pid");
        let started = Instant::now();
        let e = run(CommandSpec::new("/bin/sh")
            .args(["-c", &format!("sleep 30 & echo $! > {}; wait", marker.display())])
            .timeout(Duration::from_millis(500)))
        .await
        .unwrap_err();
        assert!(matches!(e, CommandError::Timeout { .. }), "{e}");
        assert!(started.elapsed() < Duration::from_secs(5));
        let gc: u32 = std::fs::read_to_string(&marker).unwrap().trim().parse().unwrap();
        std::thread::sleep(Duration::from_millis(200));
        let alive =
            std::fs::read_to_string(format!("/proc/{gc}/stat")).is_ok_and(|s| !s.contains(") Z "));
        assert!(!alive, "the grandchild sleep {gc} survived the timeout");
    }
}
