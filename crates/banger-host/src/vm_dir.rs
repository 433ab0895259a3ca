//! A VM's directory and every file banger keeps in it, each named here
//! and nowhere else. The VMM backends, the daemon, the CLI and the bench
//! all go through it.

use std::path::{Path, PathBuf};

/// `~/.local/state/banger/vms/<vm-id>/`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VmDir {
    path: PathBuf,
}

impl VmDir {
    pub fn new(path: impl AsRef<Path>) -> Self {
        Self {
            path: path.as_ref().to_path_buf(),
        }
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The VM's writable layer over the image (ext4, labelled banger-overlay).
    pub fn overlay(&self) -> PathBuf {
        self.path.join("overlay.ext4")
    }

    /// `/root` in the guest (ext4, labelled banger-work).
    pub fn work_disk(&self) -> PathBuf {
        self.path.join("work.ext4")
    }

    /// An image being built, attached read-write to the builder VM whose
    /// directory holds it (labelled banger-build while it is built).
    pub fn build_target(&self) -> PathBuf {
        self.path.join("build-target.ext4")
    }

    /// The guest's configuration for the current boot; exists while it runs.
    pub fn config_drive(&self) -> PathBuf {
        self.path.join("config.tar")
    }

    /// The host end of the guest's vsock (Firecracker's, or vhost-device-vsock's).
    pub fn vsock(&self) -> PathBuf {
        self.path.join("vsock.sock")
    }

    /// The guest console and the VMM's own output, on either backend. The
    /// seed documents this name for it, so it stays.
    pub fn console_log(&self) -> PathBuf {
        self.path.join("firecracker.log")
    }

    /// What [`trim_console_log`] kept of a console log that grew past its
    /// cap: its first and its latest part.
    pub fn console_log_trimmed(&self) -> PathBuf {
        self.path.join("firecracker.log.trimmed")
    }

    /// The guest's SSH host key, as `vm ssh` first saw it.
    pub fn known_hosts(&self) -> PathBuf {
        self.path.join("known_hosts")
    }

    /// "pid start_time" of the VMM process, for adoption after a restart.
    pub fn vmm_pid(&self) -> PathBuf {
        self.path.join("vmm.pid")
    }

    /// Firecracker's API socket.
    pub fn firecracker_api(&self) -> PathBuf {
        self.path.join("firecracker.sock")
    }

    /// QEMU's QMP socket.
    pub fn qmp(&self) -> PathBuf {
        self.path.join("qmp.sock")
    }

    /// The vhost-user socket between QEMU and vhost-device-vsock.
    pub fn vhost_vsock(&self) -> PathBuf {
        self.path.join("vhost-vsock.sock")
    }

    /// "pid start_time" of vhost-device-vsock.
    pub fn vhost_vsock_pid(&self) -> PathBuf {
        self.path.join("vhost-vsock.pid")
    }

    /// A suspended VM's whole state (memory and devices), as its backend
    /// wrote it: present only while the VM is suspended, since the guest's
    /// disks move on as soon as it runs again.
    pub fn saved_state(&self) -> PathBuf {
        self.path.join("suspended")
    }

    /// The VM's snapshots, one directory each.
    pub fn snapshots(&self) -> PathBuf {
        self.path.join("snapshots")
    }

    /// Present while a VM branched with its source's memory still holds the
    /// source's identity (address, MAC, hostname, machine-id, host keys):
    /// its network stays down until the daemon has given it its own.
    pub fn identity_pending(&self) -> PathBuf {
        self.path.join("identity.pending")
    }

    /// Present when the VM's VMM opened its own disks by paths relative to
    /// this directory (its working directory), so that a state it saves
    /// names no directory and restores in another one (a branch).
    pub fn relative_drives(&self) -> PathBuf {
        self.path.join("drives-relative")
    }

    /// Where a suspend writes before it is complete; renamed to
    /// [`VmDir::saved_state`] only then, so a crash never leaves half a state.
    pub fn saved_state_partial(&self) -> PathBuf {
        self.path.join("suspended.partial")
    }

    /// States [`discard_state`] took out of use whose deletion was cut
    /// short (a daemon killed meanwhile): nothing reads them.
    pub fn discarded_states(&self) -> Vec<PathBuf> {
        std::fs::read_dir(&self.path)
            .into_iter()
            .flatten()
            .filter_map(|entry| entry.ok())
            .filter(|entry| entry.file_name().to_string_lossy().contains(DISCARDED))
            .map(|entry| entry.path())
            .collect()
    }
}

/// What [`discard_state`] adds to a state's name.
const DISCARDED: &str = ".discarded-";

/// Takes the saved state at `state` out of use at once and deletes it in
/// the background: a rename to `<state>.discarded-<nanos>` (a name of its
/// own, so it never lands on one still being deleted), where deleting a
/// guest's memory file took 0.16 s of a 0.4 s resume. Falls back to
/// deleting it here when the rename fails.
pub fn discard_state(state: &Path) -> std::io::Result<()> {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos());
    let mut name = state.file_name().unwrap_or_default().to_os_string();
    name.push(format!("{DISCARDED}{nanos}"));
    let discarded = state.with_file_name(name);
    if std::fs::rename(state, &discarded).is_err() {
        return std::fs::remove_dir_all(state);
    }
    std::thread::spawn(move || {
        if let Err(e) = std::fs::remove_dir_all(&discarded) {
            tracing::warn!(path = %discarded.display(), error = %e, "could not delete a discarded state");
        }
    });
    Ok(())
}

/// How far a console log may grow before [`trim_console_log`] cuts it,
/// and how much of its start and its end is kept.
#[derive(Debug, Clone, Copy)]
pub struct ConsoleCap {
    pub max_bytes: u64,
    pub keep_bytes: u64,
}

impl ConsoleCap {
    /// A guest printing in a loop filled a host disk through its console
    /// (or a VM's own small state disk); 64 MiB is far past any boot's
    /// output (about 40 KiB), and the start and the latest megabyte are
    /// what a reader of a runaway console needs.
    pub const DEFAULT: Self = Self {
        max_bytes: 64 << 20,
        keep_bytes: 1 << 20,
    };
}

/// Keeps the console log at `log` under `cap`: past it, its first and
/// latest `keep_bytes` go to `trimmed` (the first part of an earlier trim
/// kept as it was, so a boot's start survives any number of trims), and
/// the log, which the VMM writes in append mode, is emptied in place and
/// says where the rest went. Returns the bytes dropped, if it cut. Output
/// the VMM writes between the copy and the cut is lost: at most what a
/// guest prints in that instant.
pub fn trim_console_log(
    log: &Path,
    trimmed: &Path,
    cap: ConsoleCap,
) -> std::io::Result<Option<u64>> {
    use std::io::{Read, Seek, SeekFrom, Write};
    // Called for every running VM every few seconds: a log under its cap
    // costs one stat, and is opened only to be cut.
    let len = std::fs::metadata(log)?.len();
    if len <= cap.max_bytes {
        return Ok(None);
    }
    let mut file = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(log)?;
    let keep = cap.keep_bytes.min(len / 2);
    let mut head = Vec::new();
    // The first part kept by an earlier trim is the boot's start; only
    // without one is the head this log's own, and so not dropped.
    let head_kept_from_log = match std::fs::File::open(trimmed) {
        Ok(earlier) => {
            earlier.take(keep).read_to_end(&mut head)?;
            0
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            (&mut file).take(keep).read_to_end(&mut head)?;
            head.len() as u64
        }
        Err(e) => return Err(e),
    };
    let mut tail = Vec::new();
    file.seek(SeekFrom::Start(len - keep))?;
    (&mut file).take(keep).read_to_end(&mut tail)?;
    let dropped = len - tail.len() as u64 - head_kept_from_log;
    let mut partial = trimmed.as_os_str().to_os_string();
    partial.push(".partial");
    let partial = PathBuf::from(partial);
    {
        let mut out = std::fs::File::create(&partial)?;
        out.write_all(&head)?;
        writeln!(
            out,
            "\n[banger: console output cut here; the log passed {} MiB]",
            cap.max_bytes >> 20
        )?;
        out.write_all(&tail)?;
    }
    std::fs::rename(&partial, trimmed)?;
    file.set_len(0)?;
    let mut appender = std::fs::OpenOptions::new().append(true).open(log)?;
    writeln!(
        appender,
        "[banger: the console log passed {} MiB; its start and its latest part are in {}]",
        cap.max_bytes >> 20,
        trimmed.file_name().unwrap_or_default().to_string_lossy()
    )?;
    Ok(Some(dropped))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_console_log_past_its_cap_keeps_its_start_and_its_latest_part() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = VmDir::new(tmp.path());
        let (log, trimmed) = (dir.console_log(), dir.console_log_trimmed());
        let cap = ConsoleCap {
            max_bytes: 1000,
            keep_bytes: 100,
        };
        std::fs::write(&log, "boot\n".repeat(100)).unwrap();
        assert_eq!(
            trim_console_log(&log, &trimmed, cap).unwrap(),
            None,
            "under the cap"
        );
        assert!(!trimmed.exists());
        // A runaway guest, printing through an append-mode descriptor
        // as the VMM's is.
        let mut vmm = std::fs::OpenOptions::new().append(true).open(&log).unwrap();
        use std::io::Write;
        vmm.write_all(&b"x".repeat(2000)).unwrap();
        vmm.write_all(b"LATEST").unwrap();
        let dropped = trim_console_log(&log, &trimmed, cap).unwrap().unwrap();
        assert_eq!(dropped, 2506 - 200);
        let kept = std::fs::read_to_string(&trimmed).unwrap();
        assert!(kept.starts_with("boot\nboot\n"), "{kept}");
        assert!(kept.contains("[banger: console output cut here"), "{kept}");
        assert!(kept.ends_with("LATEST"), "{kept}");
        let now = std::fs::read_to_string(&log).unwrap();
        assert!(now.contains("firecracker.log.trimmed"), "{now}");
        // The VMM goes on appending after the cut, at the new end.
        vmm.write_all(b"after\n").unwrap();
        let now = std::fs::read_to_string(&log).unwrap();
        assert!(now.ends_with("]\nafter\n"), "{now:?}");
        // A second trim keeps the boot's start from the first.
        vmm.write_all(&b"y".repeat(2000)).unwrap();
        let before = std::fs::metadata(&log).unwrap().len();
        let dropped = trim_console_log(&log, &trimmed, cap).unwrap().unwrap();
        assert_eq!(
            dropped,
            before - 100,
            "only the latest part kept from the log"
        );
        let kept = std::fs::read_to_string(&trimmed).unwrap();
        assert!(kept.starts_with("boot\nboot\n"), "{kept}");
        assert!(kept.ends_with(&"y".repeat(100)), "{kept}");
        assert!(std::fs::metadata(&log).unwrap().len() < 200);
    }

    #[test]
    fn every_file_is_inside_the_directory_and_distinct() {
        let dir = VmDir::new("/s/vms/aa12");
        let files = [
            dir.overlay(),
            dir.work_disk(),
            dir.config_drive(),
            dir.vsock(),
            dir.console_log(),
            dir.console_log_trimmed(),
            dir.known_hosts(),
            dir.vmm_pid(),
            dir.firecracker_api(),
            dir.qmp(),
            dir.vhost_vsock(),
            dir.vhost_vsock_pid(),
            dir.saved_state(),
            dir.saved_state_partial(),
            dir.snapshots(),
            dir.identity_pending(),
            dir.relative_drives(),
        ];
        let unique: std::collections::HashSet<_> = files.iter().collect();
        assert_eq!(unique.len(), files.len());
        assert!(files.iter().all(|f| f.parent() == Some(dir.path())));
    }

    /// The state is out of use at once; its deletion finishes behind,
    /// and what a cut-short deletion leaves is listed for the sweep.
    #[test]
    fn a_discarded_state_is_gone_at_once_and_deleted_behind() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = VmDir::new(tmp.path());
        std::fs::create_dir(dir.saved_state()).unwrap();
        std::fs::write(dir.saved_state().join("qemu-ram"), b"memory").unwrap();
        discard_state(&dir.saved_state()).unwrap();
        assert!(!dir.saved_state().exists());
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        while !dir.discarded_states().is_empty() && std::time::Instant::now() < deadline {
            std::thread::sleep(std::time::Duration::from_millis(10));
        }
        assert_eq!(dir.discarded_states(), Vec::<PathBuf>::new());

        // A daemon killed before the deletion ran leaves one; a later
        // discard gets a name of its own beside it.
        let left = tmp.path().join("suspended.discarded-1");
        std::fs::create_dir(&left).unwrap();
        std::fs::create_dir(dir.saved_state()).unwrap();
        std::fs::create_dir(dir.snapshots()).unwrap();
        assert_eq!(dir.discarded_states(), vec![left.clone()]);
        discard_state(&dir.saved_state()).unwrap();
        assert!(!dir.saved_state().exists());
        assert!(left.is_dir(), "the earlier one is the sweep's, untouched");
    }
}
