//! One daemon per user: an exclusive `flock` on the PID file in the runtime
//! directory. The lock dies with the process, so a socket left behind by a
//! killed daemon is recognised as stale and replaced.

use std::fs::{File, OpenOptions};
use std::io::{Read, Seek, SeekFrom, Write};
use std::os::fd::AsRawFd;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use thiserror::Error;

#[derive(Debug, Error)]
pub enum InstanceError {
    #[error(
        "bangerd is already running (pid {pid}) and holds socket {socket}: use it, or stop it with `banger daemon stop`"
    )]
    AlreadyRunning { pid: String, socket: PathBuf },
    #[error("opening PID file {0}")]
    Open(PathBuf, #[source] std::io::Error),
    #[error("locking PID file {0}")]
    Lock(PathBuf, #[source] std::io::Error),
    #[error("writing PID file {0}")]
    Write(PathBuf, #[source] std::io::Error),
    #[error("removing stale socket {0}")]
    StaleSocket(PathBuf, #[source] std::io::Error),
}

/// How long a new daemon waits for one that is letting go of the lock.
const EXITING_HOLDER_WAIT: std::time::Duration = std::time::Duration::from_secs(3);

/// Held for the daemon's whole life. The PID file is never unlinked: a
/// second daemon could otherwise lock an orphaned inode while a third
/// locks the new file.
#[derive(Debug)]
pub struct InstanceLock {
    file: File,
    pid_file: PathBuf,
}

impl InstanceLock {
    pub fn acquire(pid_file: &Path, socket: &Path) -> Result<Self, InstanceError> {
        let mut file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .mode(0o600)
            .open(pid_file)
            .map_err(|e| InstanceError::Open(pid_file.into(), e))?;
        // A holder empties the PID file as it lets go (see `Drop`): a locked,
        // empty file is a daemon on its way out, worth a short wait (as when
        // `banger daemon stop` is followed at once by another command).
        let deadline = std::time::Instant::now() + EXITING_HOLDER_WAIT;
        loop {
            // SAFETY: the descriptor is valid for the life of `file`; flock does not retain it.
            let rc = unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) };
            if rc == 0 {
                break;
            }
            let err = std::io::Error::last_os_error();
            if err.raw_os_error() != Some(libc::EWOULDBLOCK) {
                return Err(InstanceError::Lock(pid_file.into(), err));
            }
            let mut pid = String::new();
            let _ = file.seek(SeekFrom::Start(0));
            let _ = file.read_to_string(&mut pid);
            let pid = pid.trim().to_owned();
            if pid.is_empty() && std::time::Instant::now() < deadline {
                std::thread::sleep(std::time::Duration::from_millis(10));
                continue;
            }
            return Err(InstanceError::AlreadyRunning {
                pid: if pid.is_empty() {
                    "unknown, stopping".into()
                } else {
                    pid
                },
                socket: socket.into(),
            });
        }
        let write = |file: &mut File| -> std::io::Result<()> {
            file.set_len(0)?;
            file.seek(SeekFrom::Start(0))?;
            writeln!(file, "{}", std::process::id())?;
            file.sync_all()
        };
        write(&mut file).map_err(|e| InstanceError::Write(pid_file.into(), e))?;
        match std::fs::remove_file(socket) {
            Ok(()) => tracing::info!(socket = %socket.display(), "removed stale socket"),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(InstanceError::StaleSocket(socket.into(), e)),
        }
        Ok(Self {
            file,
            pid_file: pid_file.into(),
        })
    }
}

impl Drop for InstanceLock {
    fn drop(&mut self) {
        // Empty the file so a reader never sees a dead PID; the lock itself
        // is released when the descriptor closes.
        if let Err(e) = self.file.set_len(0) {
            tracing::warn!(pid_file = %self.pid_file.display(), error = %e, "emptying PID file");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn second_holder_is_refused_with_the_pid_and_the_first_release_frees_it() {
        let tmp = tempfile::tempdir().unwrap();
        let pid_file = tmp.path().join("bangerd.pid");
        let socket = tmp.path().join("bangerd.sock");
        std::fs::write(&socket, "stale").unwrap();
        let first = InstanceLock::acquire(&pid_file, &socket).unwrap();
        assert!(
            !socket.exists(),
            "a stale socket is removed by the lock holder"
        );
        let err = InstanceLock::acquire(&pid_file, &socket).unwrap_err();
        let msg = err.to_string();
        assert!(msg.contains(&std::process::id().to_string()), "{msg}");
        assert!(msg.contains("bangerd.sock"), "{msg}");
        drop(first);
        InstanceLock::acquire(&pid_file, &socket).unwrap();
    }

    /// `daemon stop` then another command at once: the old daemon has
    /// emptied its PID file but not yet closed it. The new one waits for it.
    #[test]
    fn a_holder_on_its_way_out_is_waited_for() {
        let tmp = tempfile::tempdir().unwrap();
        let pid_file = tmp.path().join("bangerd.pid");
        let socket = tmp.path().join("bangerd.sock");
        let first = InstanceLock::acquire(&pid_file, &socket).unwrap();
        first.file.set_len(0).unwrap(); // what Drop does before the descriptor closes
        let releaser = std::thread::spawn(move || {
            std::thread::sleep(std::time::Duration::from_millis(300));
            drop(first);
        });
        let started = std::time::Instant::now();
        let second = InstanceLock::acquire(&pid_file, &socket).unwrap();
        assert!(started.elapsed() >= std::time::Duration::from_millis(250));
        releaser.join().unwrap();
        assert_eq!(
            std::fs::read_to_string(&pid_file).unwrap().trim(),
            std::process::id().to_string(),
            "the new holder's PID is written, not erased by the old one"
        );
        drop(second);
    }
}
