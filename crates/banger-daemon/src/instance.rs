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
        // SAFETY: the descriptor is valid for the life of `file`; flock does not retain it.
        let rc = unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) };
        if rc != 0 {
            let err = std::io::Error::last_os_error();
            if err.raw_os_error() == Some(libc::EWOULDBLOCK) {
                let mut pid = String::new();
                let _ = file.read_to_string(&mut pid);
                let pid = match pid.trim() {
                    "" => "unknown".to_owned(),
                    p => p.to_owned(),
                };
                return Err(InstanceError::AlreadyRunning {
                    pid,
                    socket: socket.into(),
                });
            }
            return Err(InstanceError::Lock(pid_file.into(), err));
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
}
