//! Child processes that cannot outlive the test binary.
//!
//! A server shared by every test of a binary lives in a `static`, whose
//! destructor never runs; a killed test binary runs none at all. So a
//! shared server is started by a small shell that watches this process and
//! stops the server when this process is gone, or when the shell itself is
//! asked to stop ([`Tied::stop`]).

use std::ffi::{OsStr, OsString};
use std::path::Path;
use std::process::{Child, Command, Stdio};

/// A server started by [`spawn_tied`].
pub struct Tied {
    shell: Child,
}

impl Tied {
    /// Stops the server (SIGTERM to the watching shell, which forwards it)
    /// and reaps the shell.
    pub fn stop(&mut self) {
        let _ = Command::new("kill")
            .args(["-TERM", &self.shell.id().to_string()])
            .stderr(Stdio::null())
            .status();
        let _ = self.shell.wait();
    }

    /// The watching shell's pid.
    pub fn id(&self) -> u32 {
        self.shell.id()
    }
}

impl Drop for Tied {
    fn drop(&mut self) {
        self.stop();
    }
}

/// A shell function that stops the shell's last background child (`$!`)
/// with SIGTERM and reaps it. The signal is sent again every half second
/// until the child is gone: a SIGTERM that lands between the shell's fork
/// and the child's `exec` is caught by the handler the child inherited
/// from the shell's own trap, and is lost when it execs (dash loses about
/// one in three such signals; a CI run caught a server that outlived its
/// stop that way).
const STOP_CHILD: &str = r#"stop_child() {
  c=$!
  kill -TERM $c 2>/dev/null
  (while sleep 0.5; do kill -TERM $c 2>/dev/null || exit 0; done) &
  r=$!
  wait $c
  kill $r 2>/dev/null
}"#;

/// Starts `program args`, its output appended to `log`, under a shell that
/// stops it when this process exits (checked five times a second) or when
/// the shell gets SIGTERM.
pub fn spawn_tied<S: AsRef<OsStr>>(program: &Path, args: &[S], log: &Path) -> Tied {
    // The trap is set before the program starts and names it by `$!`: a
    // SIGTERM that lands between the fork and a later `trap` would kill the
    // shell by default and orphan the program (a CI run caught that). If
    // the signal lands before the fork, `$!` is empty and nothing starts.
    let watch = format!(
        r#"{STOP_CHILD}
parent="$1"; shift
trap 'stop_child; exit 0' TERM INT
"$@" &
child=$!
while kill -0 "$parent" 2>/dev/null && kill -0 "$child" 2>/dev/null; do sleep 0.2; done
stop_child"#
    );
    let out = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(log)
        .unwrap_or_else(|e| panic!("{}: {e}", log.display()));
    let err = out.try_clone().expect("a second handle on the log");
    let shell = Command::new("sh")
        .arg("-c")
        .arg(watch)
        .arg("tied")
        .arg(std::process::id().to_string())
        .arg(program)
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::from(out))
        .stderr(Stdio::from(err))
        .spawn()
        .unwrap_or_else(|e| panic!("cannot start {}: {e}", program.display()));
    Tied { shell }
}

/// [`spawn_tied`], and `dir` is removed once the program has exited, for
/// a server whose `TempDir` lives in a `static`: its destructor never
/// runs, and nextest runs each test in a process of its own, so each test
/// would leave one such directory behind (a PostgreSQL cluster's is about
/// 40 MB; 25 GB of them had piled up in one machine's `/tmp`).
pub fn spawn_tied_removing<S: AsRef<OsStr>>(
    program: &Path,
    args: &[S],
    log: &Path,
    dir: &Path,
) -> Tied {
    // As in `spawn_tied`: the trap comes first and names the program by `$!`.
    let removing = format!(
        r#"{STOP_CHILD}
dir="$1"; shift
trap 'stop_child; rm -rf "$dir"; exit 0' TERM INT
"$@" &
wait $!
rm -rf "$dir""#
    );
    let mut all: Vec<OsString> =
        vec!["-c".into(), removing.into(), "sh".into(), dir.into(), program.into()];
    all.extend(args.iter().map(|a| a.as_ref().to_owned()));
    spawn_tied(Path::new("sh"), &all, log)
}
