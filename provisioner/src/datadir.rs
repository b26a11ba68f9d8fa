//! One daemon per data directory.
//!
//! Two daemons on one store would both drive its jobs: the second one
//! meets the first one's tofu lock and leaves the job `paused`, or worse,
//! both run a step. So the daemon takes an exclusive lock
//! (`flock(2)`, through `File::try_lock`) on `<data-dir>/daemon.lock` before
//! it opens the store, and holds it for its whole life. The kernel drops
//! the lock when the process ends, however it ends: a daemon killed with
//! SIGKILL leaves the file, but not the lock, so the next start succeeds.
//! The file names the holder (its pid and start time), for the error a
//! second daemon prints. The descriptor is close-on-exec, so a tofu or ssh
//! child outliving a killed daemon does not keep the lock.

use std::fs::{File, OpenOptions, TryLockError};
use std::io::{Read, Seek, Write};
use std::path::{Path, PathBuf};

/// The lock file's name in the data directory.
pub const LOCK_FILE: &str = "daemon.lock";

/// Why the data directory could not be locked.
#[derive(Debug, thiserror::Error)]
pub enum DataDirLockError {
    #[error(
        "another catalyst-zero daemon{holder} holds the data directory {dir} (lock {lock}): \
         stop it, or give this one another --data-dir"
    )]
    Held { dir: PathBuf, lock: PathBuf, holder: String },
    #[error("cannot lock the data directory {dir} ({lock}): {source}")]
    Io {
        dir: PathBuf,
        lock: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

/// The held lock; released when dropped (or when the process ends).
#[derive(Debug)]
pub struct DataDirLock {
    _file: File,
    pub path: PathBuf,
}

impl DataDirLock {
    /// Takes the lock on `dir` (which must exist), or says who holds it.
    pub fn acquire(dir: &Path) -> Result<DataDirLock, DataDirLockError> {
        let lock = dir.join(LOCK_FILE);
        let io = |source| DataDirLockError::Io { dir: dir.to_owned(), lock: lock.clone(), source };
        let mut file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(&lock)
            .map_err(io)?;
        match file.try_lock() {
            Ok(()) => {}
            Err(TryLockError::WouldBlock) => {
                let mut text = String::new();
                let _ = file.read_to_string(&mut text);
                let holder = text
                    .lines()
                    .find_map(|l| l.strip_prefix("pid "))
                    .map(|pid| format!(" (pid {})", pid.trim()))
                    .unwrap_or_default();
                return Err(DataDirLockError::Held { dir: dir.to_owned(), lock, holder });
            }
            Err(TryLockError::Error(e)) => return Err(io(e)),
        }
        // Ours now: say who holds it.
        let started = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        file.set_len(0).map_err(io)?;
        file.rewind().map_err(io)?;
        writeln!(file, "pid {}\nstarted {started}", std::process::id()).map_err(io)?;
        file.sync_all().map_err(io)?;
        Ok(DataDirLock { _file: file, path: lock })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_second_holder_is_refused_with_the_pid_and_the_path_then_let_in() {
        let dir = tempfile::tempdir().unwrap();
        let first = DataDirLock::acquire(dir.path()).unwrap();
        let e = DataDirLock::acquire(dir.path()).unwrap_err().to_string();
        assert!(e.contains(&format!("pid {}", std::process::id())), "{e}");
        assert!(e.contains(&dir.path().join(LOCK_FILE).display().to_string()), "{e}");
        drop(first);
        let again = DataDirLock::acquire(dir.path()).unwrap();
        let text = std::fs::read_to_string(&again.path).unwrap();
        assert!(text.starts_with(&format!("pid {}\n", std::process::id())), "{text}");
    }
}
