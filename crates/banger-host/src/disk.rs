//! VM disks as sparse ext4 image files, made and changed with e2fsprogs on
//! unmounted files: no root, no loop devices, no device-mapper.
//!
//! Files put into an image are owned by root inside it even when banger runs
//! as an ordinary user (`mkfs.ext4 -d` copies the caller's uid, and sshd's
//! StrictModes would then reject root's files), so ownership is set
//! explicitly with debugfs after every seeding.

use std::fmt;
use std::io::Write;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use thiserror::Error;

use crate::config_drive::{self, ConfigDriveError, GuestFile};
use crate::process::{Cmd, ProcessError, Runner};

pub const OVERLAY_LABEL: &str = "banger-overlay";
pub const WORK_LABEL: &str = "banger-work";
/// Part of every template's name; bumped when the way disks are made changes.
const TEMPLATE_VERSION: &str = "v2";

#[derive(Debug, Error)]
pub enum DiskError {
    #[error("creating disk file {0}")]
    Create(PathBuf, #[source] std::io::Error),
    #[error("preparing scratch directory {0}")]
    Scratch(PathBuf, #[source] std::io::Error),
    #[error("formatting {0} as ext4")]
    Format(PathBuf, #[source] ProcessError),
    #[error("copying /root out of base image {0}")]
    Extract(PathBuf, #[source] ProcessError),
    #[error("setting root ownership inside {0}")]
    Ownership(PathBuf, #[source] ProcessError),
    #[error("removing the guest's machine-id and SSH host keys from {0}")]
    ForgetIdentity(PathBuf, #[source] ProcessError),
    #[error("checking filesystem {0} before resizing")]
    Check(PathBuf, #[source] ProcessError),
    #[error("resizing filesystem {0}")]
    Resize(PathBuf, #[source] ProcessError),
    #[error("changing the length of {0}")]
    Length(PathBuf, #[source] std::io::Error),
    #[error("copying {0} to {1}")]
    Copy(PathBuf, PathBuf, #[source] ProcessError),
    #[error("labelling {0}")]
    Label(PathBuf, #[source] ProcessError),
    #[error("reading the filesystem size of {0}: {1}")]
    FsSize(PathBuf, String),
    #[error(transparent)]
    ConfigDrive(#[from] ConfigDriveError),
    #[error("injected failure: {0}")]
    Injected(String),
}

pub type Result<T, E = DiskError> = std::result::Result<T, E>;

pub trait Disks: Send + Sync + fmt::Debug {
    /// A sparse ext4 file of `size` bytes holding empty `upper/` and `work/`
    /// directories for the guest's overlayfs root.
    fn create_overlay(&self, path: &Path, size: u64) -> Result<()>;
    /// A sparse ext4 file of `size` bytes, seeded with `/root` of `seed_image`.
    fn create_work_disk(&self, path: &Path, size: u64, seed_image: Option<&Path>) -> Result<()>;
    /// Grows the file and its filesystem to `size` bytes.
    fn grow(&self, path: &Path, size: u64) -> Result<()>;

    /// Copies an image to a new file: a reflink where the filesystem
    /// shares blocks, else a sparse copy.
    fn copy_image(&self, from: &Path, to: &Path) -> Result<()>;

    /// Sets the filesystem label of the ext4 image at `path`.
    fn set_label(&self, path: &Path, label: &str) -> Result<()>;

    /// Checks the filesystem, shrinks it to its content and cuts the file
    /// to match. Returns the new length.
    fn shrink_to_fit(&self, path: &Path) -> Result<u64>;

    /// Removes from a copied overlay what makes its guest that one host:
    /// the machine-id and the SSH host keys. The guest makes new ones at its
    /// next boot (the images regenerate missing host keys).
    fn forget_identity(&self, overlay: &Path) -> Result<()>;

    /// Writes the guest's configuration for its next boot as the config
    /// drive at `path` (see [`crate::config_drive`]).
    fn write_config_drive(&self, path: &Path, files: &[GuestFile]) -> Result<()>;

    /// What the host needs for these operations (preflight and doctor).
    fn checks(&self) -> Vec<banger_proto::check::Check> {
        Vec::new()
    }
}

/// The real thing: e2fsprogs through a [`Runner`].
#[derive(Debug)]
pub struct Ext4Disks {
    runner: Arc<dyn Runner>,
    scratch: PathBuf,
    templates: PathBuf,
}

impl Ext4Disks {
    /// `cache` holds short-lived staging trees (`scratch/`) and disk
    /// templates (`templates/`).
    pub fn new(runner: Arc<dyn Runner>, cache: PathBuf) -> Self {
        Self {
            runner,
            scratch: cache.join("scratch"),
            templates: cache.join("templates"),
        }
    }

    /// A template disk, built once by `build` and then reused: every VM's
    /// disk of that kind is a sparse copy of it. Built under a temporary
    /// name and renamed, so a half-built template is never used.
    fn template(&self, name: &str, build: impl FnOnce(&Path) -> Result<()>) -> Result<PathBuf> {
        let path = self.templates.join(name);
        if path.is_file() {
            return Ok(path);
        }
        std::fs::create_dir_all(&self.templates)
            .map_err(|e| DiskError::Scratch(self.templates.clone(), e))?;
        let building = self.templates.join(format!(
            "{name}.{}.{}.tmp",
            std::process::id(),
            rand_suffix()
        ));
        build(&building)?;
        std::fs::rename(&building, &path).map_err(|e| DiskError::Create(path.clone(), e))?;
        self.prune_old_templates();
        Ok(path)
    }

    /// Templates of an earlier layout are never used again.
    fn prune_old_templates(&self) {
        let Ok(entries) = std::fs::read_dir(&self.templates) else {
            return;
        };
        let current = format!("-{TEMPLATE_VERSION}-");
        for entry in entries.flatten() {
            let name = entry.file_name().to_string_lossy().into_owned();
            if name.ends_with(".ext4") && !name.contains(&current) {
                remove_quietly(&entry.path());
            }
        }
    }

    fn copy_of(template: &Path, path: &Path) -> Result<()> {
        sparse_copy(template, path).map_err(|e| {
            remove_quietly(path);
            DiskError::Create(path.into(), e)
        })
    }

    fn build_overlay(&self, path: &Path, size: u64) -> Result<()> {
        let stage = self.staging()?;
        for dir in ["upper", "work"] {
            // `upper/` becomes the guest's `/`: 0755 whatever the daemon's
            // umask (077), or the guest's services cannot reach any file.
            let path = stage.0.join(dir);
            std::fs::create_dir(&path)
                .and_then(|()| {
                    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755))
                })
                .map_err(|e| DiskError::Scratch(stage.0.clone(), e))?;
        }
        self.format(path, size, OVERLAY_LABEL, &stage.0)
            .inspect_err(|_| remove_quietly(path))
    }

    fn staging(&self) -> Result<Staging> {
        std::fs::create_dir_all(&self.scratch)
            .map_err(|e| DiskError::Scratch(self.scratch.clone(), e))?;
        let dir = self
            .scratch
            .join(format!("stage-{}-{}", std::process::id(), rand_suffix()));
        // The staging dir is a filesystem's root: its mode, not the umask's.
        std::fs::create_dir(&dir)
            .and_then(|()| std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o755)))
            .map_err(|e| DiskError::Scratch(dir.clone(), e))?;
        Ok(Staging(dir))
    }

    fn format(&self, path: &Path, size: u64, label: &str, tree: &Path) -> Result<()> {
        let file = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(path)
            .map_err(|e| DiskError::Create(path.into(), e))?;
        file.set_len(size)
            .map_err(|e| DiskError::Create(path.into(), e))?;
        drop(file);
        let cmd = Cmd::new("mkfs.ext4")
            .args([
                "-F",
                "-q",
                "-L",
                label,
                "-E",
                "lazy_itable_init=1,lazy_journal_init=1",
                // The blocks reserved for online growth are most of a fresh
                // filesystem's data (4.3 of 4.6 MiB at 16 GiB), and every VM
                // disk copies them. banger only grows disks offline, where
                // resize2fs does not need them.
                "-O",
                "^resize_inode",
                "-d",
            ])
            .arg(tree.to_string_lossy())
            .arg(path.to_string_lossy());
        self.runner
            .run(&cmd)
            .map_err(|e| DiskError::Format(path.into(), e))?;
        self.set_root_owner(path, tree)
    }

    /// Every inode copied from `tree` (and the filesystem root) becomes 0:0.
    fn set_root_owner(&self, image: &Path, tree: &Path) -> Result<()> {
        let mut script = String::from("set_inode_field / uid 0\nset_inode_field / gid 0\n");
        for entry in walk(tree).map_err(|e| DiskError::Scratch(tree.into(), e))? {
            let inside = Path::new("/").join(entry.strip_prefix(tree).unwrap_or(&entry));
            let quoted = debugfs_quote(&inside);
            script.push_str(&format!(
                "set_inode_field {quoted} uid 0\nset_inode_field {quoted} gid 0\n"
            ));
        }
        self.debugfs_write(image, &script)
            .map_err(|e| DiskError::Ownership(image.into(), e))
    }

    fn debugfs_write(&self, image: &Path, script: &str) -> Result<(), ProcessError> {
        self.debugfs_write_tolerating(image, script, &[])
    }

    /// [`Ext4Disks::debugfs_write`], where complaints containing one of
    /// `tolerated` are not failures.
    fn debugfs_write_tolerating(
        &self,
        image: &Path,
        script: &str,
        tolerated: &[&str],
    ) -> Result<(), ProcessError> {
        let mut file =
            tempfile_in(&self.scratch).map_err(|e| ProcessError::Spawn("debugfs".into(), e))?;
        file.1
            .write_all(script.as_bytes())
            .map_err(|e| ProcessError::Spawn("debugfs".into(), e))?;
        let cmd = Cmd::new("debugfs")
            .arg("-w")
            .arg("-f")
            .arg(file.0.to_string_lossy())
            .arg(image.to_string_lossy());
        let result = self.runner.output(&cmd);
        let _ = std::fs::remove_file(&file.0);
        let out = result?;
        // debugfs exits 0 even when a request fails; its complaints are on stderr.
        let complaints: Vec<&str> = out
            .stderr
            .lines()
            .filter(|l| !l.starts_with("debugfs ") && !l.trim().is_empty())
            .filter(|l| !tolerated.iter().any(|t| l.contains(t)))
            .collect();
        if out.code != Some(0) || !complaints.is_empty() {
            return Err(ProcessError::Reported {
                cmd: cmd.to_string(),
                message: complaints.join("; "),
            });
        }
        Ok(())
    }
}

/// What [`Disks::forget_identity`] removes, as the overlay's upper layer
/// holds it (the initrd mounts it at `upper/`).
const IDENTITY_FILES: &[&str] = &[
    "/upper/etc/machine-id",
    "/upper/var/lib/dbus/machine-id",
    "/upper/etc/ssh/ssh_host_rsa_key",
    "/upper/etc/ssh/ssh_host_rsa_key.pub",
    "/upper/etc/ssh/ssh_host_ecdsa_key",
    "/upper/etc/ssh/ssh_host_ecdsa_key.pub",
    "/upper/etc/ssh/ssh_host_ed25519_key",
    "/upper/etc/ssh/ssh_host_ed25519_key.pub",
    "/upper/etc/ssh/ssh_host_dsa_key",
    "/upper/etc/ssh/ssh_host_dsa_key.pub",
];

impl Disks for Ext4Disks {
    fn forget_identity(&self, overlay: &Path) -> Result<()> {
        // A copy of a live disk has recent files only in its journal, which
        // debugfs does not read: replayed first, they are there to remove.
        self.check_filesystem(overlay)?;
        let script: String = IDENTITY_FILES
            .iter()
            .map(|file| format!("rm {file}\n"))
            .collect();
        // A file the guest never made is not there to remove.
        self.debugfs_write_tolerating(overlay, &script, &["File not found by ext2_lookup"])
            .map_err(|e| DiskError::ForgetIdentity(overlay.into(), e))
    }

    fn write_config_drive(&self, path: &Path, files: &[GuestFile]) -> Result<()> {
        Ok(config_drive::write(path, files)?)
    }

    fn checks(&self) -> Vec<banger_proto::check::Check> {
        crate::doctor::storage_checks(&crate::probe::Probe::host())
    }

    fn create_overlay(&self, path: &Path, size: u64) -> Result<()> {
        let template = self.template(&format!("overlay-{TEMPLATE_VERSION}-{size}.ext4"), |t| {
            self.build_overlay(t, size)
        })?;
        Self::copy_of(&template, path)
    }

    fn create_work_disk(&self, path: &Path, size: u64, seed_image: Option<&Path>) -> Result<()> {
        // The template depends on the seed image's identity and the size.
        let seed_key = match seed_image {
            Some(image) => {
                let meta = std::fs::metadata(image).map_err(|e| {
                    DiskError::Extract(image.into(), ProcessError::Spawn("stat".into(), e))
                })?;
                let mtime = meta
                    .modified()
                    .ok()
                    .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
                    .map_or(0, |d| d.as_nanos());
                format!("{}:{}:{mtime}", image.display(), meta.len())
            }
            None => "empty".to_owned(),
        };
        use sha2::Digest;
        let digest = sha2::Sha256::digest(seed_key.as_bytes());
        let key: String = digest.iter().take(8).map(|b| format!("{b:02x}")).collect();
        let template = self
            .template(&format!("work-{TEMPLATE_VERSION}-{size}-{key}.ext4"), |t| {
                self.build_work_disk(t, size, seed_image)
            })?;
        Self::copy_of(&template, path)
    }

    fn grow(&self, path: &Path, size: u64) -> Result<()> {
        self.grow_disk(path, size)
    }

    fn copy_image(&self, from: &Path, to: &Path) -> Result<()> {
        let cmd = Cmd::new("cp")
            .args(["--reflink=auto", "--sparse=always", "--"])
            .arg(from.to_string_lossy())
            .arg(to.to_string_lossy());
        self.runner
            .run(&cmd)
            .map(drop)
            .map_err(|e| DiskError::Copy(from.into(), to.into(), e))
    }

    fn set_label(&self, path: &Path, label: &str) -> Result<()> {
        let cmd = Cmd::new("e2label").arg(path.to_string_lossy()).arg(label);
        self.runner
            .run(&cmd)
            .map(drop)
            .map_err(|e| DiskError::Label(path.into(), e))
    }

    fn shrink_to_fit(&self, path: &Path) -> Result<u64> {
        self.check_filesystem(path)?;
        let resize = Cmd::new("resize2fs").arg("-M").arg(path.to_string_lossy());
        self.runner
            .run(&resize)
            .map_err(|e| DiskError::Resize(path.into(), e))?;
        let header = Cmd::new("dumpe2fs").arg("-h").arg(path.to_string_lossy());
        let text = self
            .runner
            .run(&header)
            .map_err(|e| DiskError::Check(path.into(), e))?;
        let field = |name: &str| -> Option<u64> {
            text.lines()
                .find_map(|l| l.strip_prefix(name))
                .and_then(|v| v.trim().parse().ok())
        };
        let (Some(blocks), Some(block_size)) = (field("Block count:"), field("Block size:")) else {
            return Err(DiskError::FsSize(
                path.into(),
                "dumpe2fs printed no block count or block size".into(),
            ));
        };
        let bytes = blocks * block_size;
        set_len(path, bytes)?;
        Ok(bytes)
    }
}

impl Ext4Disks {
    fn build_work_disk(&self, path: &Path, size: u64, seed_image: Option<&Path>) -> Result<()> {
        let stage = self.staging()?;
        let tree = match seed_image {
            Some(image) => {
                let cmd = Cmd::new("debugfs")
                    .arg("-R")
                    .arg(format!("rdump /root {}", stage.0.display()))
                    .arg(image.to_string_lossy());
                let out = self
                    .runner
                    .output(&cmd)
                    .map_err(|e| DiskError::Extract(image.into(), e))?;
                if out.code != Some(0) {
                    return Err(DiskError::Extract(
                        image.into(),
                        ProcessError::Reported {
                            cmd: cmd.to_string(),
                            message: out.stderr.trim().to_owned(),
                        },
                    ));
                }
                // An image without /root seeds an empty disk.
                let root = stage.0.join("root");
                if root.is_dir() { root } else { stage.0.clone() }
            }
            None => stage.0.clone(),
        };
        self.format(path, size, WORK_LABEL, &tree)
            .inspect_err(|_| remove_quietly(path))
    }

    /// `e2fsck -f -y`: 0 (clean) and 1 (errors fixed) are fine; anything
    /// else means the disk needs a human.
    fn check_filesystem(&self, path: &Path) -> Result<()> {
        let check = Cmd::new("e2fsck")
            .args(["-f", "-y"])
            .arg(path.to_string_lossy());
        let out = self
            .runner
            .output(&check)
            .map_err(|e| DiskError::Check(path.into(), e))?;
        if !matches!(out.code, Some(0 | 1)) {
            return Err(DiskError::Check(
                path.into(),
                ProcessError::Failed {
                    cmd: check.to_string(),
                    status: format!("{:?}", out.code),
                    stderr: format!("{}{}", out.stdout.trim(), out.stderr.trim()),
                },
            ));
        }
        Ok(())
    }

    fn grow_disk(&self, path: &Path, size: u64) -> Result<()> {
        self.check_filesystem(path)?;
        let old = std::fs::metadata(path)
            .map_err(|e| DiskError::Length(path.into(), e))?
            .len();
        set_len(path, size)?;
        let resize = Cmd::new("resize2fs").arg(path.to_string_lossy());
        if let Err(e) = self.runner.run(&resize) {
            // The filesystem is still its old size: give the file its old length back.
            let _ = set_len(path, old);
            return Err(DiskError::Resize(path.into(), e));
        }
        Ok(())
    }
}

/// Bytes an unprivileged writer can still use on the filesystem of `path`.
pub fn free_bytes(path: &Path) -> std::io::Result<u64> {
    use std::os::unix::ffi::OsStrExt;
    let c_path = std::ffi::CString::new(path.as_os_str().as_bytes())
        .map_err(|_| std::io::Error::from(std::io::ErrorKind::InvalidInput))?;
    // SAFETY: statvfs is plain data; zeroed is a valid value to be filled in.
    let mut stat: libc::statvfs = unsafe { std::mem::zeroed() };
    // SAFETY: c_path is NUL-terminated and stat is a valid out-pointer for the call.
    if unsafe { libc::statvfs(c_path.as_ptr(), &mut stat) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(stat.f_bavail.saturating_mul(stat.f_frsize))
}

const PAGE: usize = 4096;
/// How much of a file the page scans read at a time.
const SCAN_CHUNK: usize = 1 << 20;

/// The runs of `buffer` as `(start, end, zero)` indices into it: whole
/// 4 KiB pages of zeros, or not (a short last page is never zero).
fn page_runs(buffer: &[u8]) -> Vec<(usize, usize, bool)> {
    let mut runs: Vec<(usize, usize, bool)> = Vec::new();
    for (index, page) in buffer.chunks(PAGE).enumerate() {
        let at = index * PAGE;
        let zero = page.len() == PAGE && page.iter().all(|b| *b == 0);
        let end = at + page.len();
        match runs.last_mut() {
            Some(run) if run.2 == zero => run.1 = end,
            _ => runs.push((at, end, zero)),
        }
    }
    runs
}

/// `file`'s data extents (`SEEK_DATA`/`SEEK_HOLE`) within its first `len`
/// bytes, in order: what a copy must read. Holes read as zeros.
fn data_extents(file: &std::fs::File, len: u64) -> std::io::Result<Vec<(u64, u64)>> {
    use std::os::fd::AsRawFd;
    let end =
        i64::try_from(len).map_err(|_| std::io::Error::from(std::io::ErrorKind::InvalidInput))?;
    let fd = file.as_raw_fd();
    let mut extents = Vec::new();
    let mut offset: i64 = 0;
    while offset < end {
        // SAFETY: lseek on a descriptor the caller owns; results are checked.
        let data = unsafe { libc::lseek(fd, offset, libc::SEEK_DATA) };
        if data < 0 {
            let err = std::io::Error::last_os_error();
            if err.raw_os_error() == Some(libc::ENXIO) {
                break; // only a hole remains
            }
            return Err(err);
        }
        // SAFETY: as above.
        let hole = unsafe { libc::lseek(fd, data, libc::SEEK_HOLE) };
        if hole < 0 {
            return Err(std::io::Error::last_os_error());
        }
        let hole = hole.min(end);
        extents.push((data as u64, hole as u64));
        offset = hole;
    }
    Ok(extents)
}

/// Turns every all-zero 4 KiB page of `path` into a hole, so a file
/// written whole (a guest's memory dump) takes only what is not zero.
pub fn punch_zero_pages(path: &Path) -> std::io::Result<()> {
    use std::io::Read;
    use std::os::fd::AsRawFd;
    let mut file = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(path)?;
    let mut buffer = vec![0u8; SCAN_CHUNK];
    let mut offset: u64 = 0;
    loop {
        let mut filled = 0;
        while filled < SCAN_CHUNK {
            match file.read(&mut buffer[filled..])? {
                0 => break,
                n => filled += n,
            }
        }
        if filled == 0 {
            return Ok(());
        }
        for (start, end, zero) in page_runs(&buffer[..filled]) {
            if !zero {
                continue;
            }
            let (Ok(start), Ok(len)) = (
                i64::try_from(offset + start as u64),
                i64::try_from(end - start),
            ) else {
                return Err(std::io::ErrorKind::InvalidInput.into());
            };
            // SAFETY: fallocate on a descriptor we own; the result is checked.
            let rc = unsafe {
                libc::fallocate(
                    file.as_raw_fd(),
                    libc::FALLOC_FL_PUNCH_HOLE | libc::FALLOC_FL_KEEP_SIZE,
                    start,
                    len,
                )
            };
            if rc != 0 {
                return Err(std::io::Error::last_os_error());
            }
        }
        offset += filled as u64;
    }
}

/// Writes `source`'s pages that are not all zeros into a new file `to` of
/// the same length, leaving holes for the rest; reads only `source`'s data
/// extents. For a guest's memory, most of which is untouched or zero.
/// Returns the bytes written.
pub fn copy_nonzero_pages(source: &std::fs::File, to: &Path) -> std::io::Result<u64> {
    use std::os::unix::fs::FileExt;
    let len = source.metadata()?.len();
    let target = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(to)?;
    target.set_len(len)?;
    let mut buffer = vec![0u8; SCAN_CHUNK];
    let mut written = 0;
    for (start, end) in data_extents(source, len)? {
        let mut offset = start;
        while offset < end {
            let want = usize::try_from(end - offset).map_or(SCAN_CHUNK, |n| n.min(SCAN_CHUNK));
            source.read_exact_at(&mut buffer[..want], offset)?;
            for (run_start, run_end, zero) in page_runs(&buffer[..want]) {
                if !zero {
                    target.write_all_at(&buffer[run_start..run_end], offset + run_start as u64)?;
                    written += (run_end - run_start) as u64;
                }
            }
            offset += want as u64;
        }
    }
    Ok(written)
}

/// A new memory-backed file (`memfd_create`, closed on exec), for a
/// guest's memory that a VMM maps.
pub fn memory_file(name: &str) -> std::io::Result<std::fs::File> {
    use std::os::fd::FromRawFd;
    let name = std::ffi::CString::new(name)
        .map_err(|_| std::io::Error::from(std::io::ErrorKind::InvalidInput))?;
    // SAFETY: name is NUL-terminated; the result is checked.
    let fd = unsafe { libc::memfd_create(name.as_ptr(), libc::MFD_CLOEXEC) };
    if fd < 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: fd is a new descriptor nothing else owns.
    Ok(unsafe { std::fs::File::from_raw_fd(fd) })
}

/// Copies a sparse file: a reflink where the filesystem shares blocks,
/// else data extents only (`SEEK_DATA`/`SEEK_HOLE` with `copy_file_range`),
/// so a 64 GiB disk with 4 MiB written copies 4 MiB.
pub fn sparse_copy(from: &Path, to: &Path) -> std::io::Result<()> {
    use std::os::fd::AsRawFd;
    let source = std::fs::File::open(from)?;
    let target = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(to)?;
    // SAFETY: FICLONE takes the source descriptor; both descriptors are open.
    if unsafe { libc::ioctl(target.as_raw_fd(), libc::FICLONE, source.as_raw_fd()) } == 0 {
        return Ok(()); // btrfs and XFS share the blocks: nothing to copy
    }
    copy_data_into(&source, &target)
}

/// Copies `source`'s data extents into `target` at the same offsets, after
/// setting `target`'s length to `source`'s: `target`'s holes stay holes
/// (a new file, or a fresh memfd for a guest's memory).
pub fn copy_data_into(source: &std::fs::File, target: &std::fs::File) -> std::io::Result<()> {
    let len = source.metadata()?.len();
    target.set_len(len)?;
    for (start, end) in data_extents(source, len)? {
        let invalid = |_| std::io::Error::from(std::io::ErrorKind::InvalidInput);
        copy_extent(
            source,
            target,
            i64::try_from(start).map_err(invalid)?,
            i64::try_from(end).map_err(invalid)?,
        )?;
    }
    Ok(())
}

/// Copies bytes `start..end` of `source` to the same offsets of `target`,
/// each way taking over where the one before cannot go on:
/// - `copy_file_range`, in the kernel;
/// - `sendfile`, in the kernel too, where the two files sit on filesystems
///   `copy_file_range` cannot copy between (`EXDEV`: from ext4 into a memfd,
///   0.12 s for 327 MiB here against 0.16 s through a buffer; or state and
///   cache dirs on different mounts); it writes at `target`'s position;
/// - a buffer, where neither is supported.
fn copy_extent(
    source: &std::fs::File,
    target: &std::fs::File,
    start: i64,
    end: i64,
) -> std::io::Result<()> {
    use std::os::fd::AsRawFd;
    let (src, dst) = (source.as_raw_fd(), target.as_raw_fd());
    let buffered = |from| copy_extent_buffered(source, target, from, end);
    let sendfile = |from| {
        // SAFETY: lseek on a descriptor the caller owns; the result is checked.
        if unsafe { libc::lseek(dst, from, libc::SEEK_SET) } < 0 {
            return buffered(from);
        }
        in_kernel(
            from,
            end,
            // SAFETY: both descriptors are open; the kernel updates the offset.
            |offset, chunk| unsafe { libc::sendfile(dst, src, offset, chunk) },
            &[libc::ENOSYS, libc::EINVAL],
            buffered,
        )
    };
    in_kernel(
        start,
        end,
        |from, chunk| {
            let mut to = *from; // the same offsets on both sides
            // SAFETY: both descriptors are open; the offsets are ours and updated by the kernel.
            unsafe { libc::copy_file_range(src, from, dst, &mut to, chunk, 0) }
        },
        &[libc::EXDEV, libc::ENOSYS, libc::EOPNOTSUPP, libc::EINVAL],
        sendfile,
    )
}

/// Runs `copy(offset, chunk)`, a kernel copy that advances `offset`, until
/// `end`; on an error in `unsupported` goes on with `fallback(offset)`.
fn in_kernel(
    start: i64,
    end: i64,
    mut copy: impl FnMut(&mut i64, usize) -> isize,
    unsupported: &[i32],
    fallback: impl FnOnce(i64) -> std::io::Result<()>,
) -> std::io::Result<()> {
    let mut offset = start;
    while offset < end {
        let chunk = usize::try_from(end - offset).unwrap_or(usize::MAX);
        let copied = copy(&mut offset, chunk);
        if copied < 0 {
            let err = std::io::Error::last_os_error();
            return match err.raw_os_error() {
                Some(code) if unsupported.contains(&code) => fallback(offset),
                _ => Err(err),
            };
        }
        if copied == 0 {
            return Err(std::io::Error::from(std::io::ErrorKind::UnexpectedEof));
        }
    }
    Ok(())
}

fn copy_extent_buffered(
    source: &std::fs::File,
    target: &std::fs::File,
    start: i64,
    end: i64,
) -> std::io::Result<()> {
    use std::os::unix::fs::FileExt;
    let invalid = |_| std::io::Error::from(std::io::ErrorKind::InvalidInput);
    let (mut offset, end) = (
        u64::try_from(start).map_err(invalid)?,
        u64::try_from(end).map_err(invalid)?,
    );
    let mut buf = vec![0u8; 1 << 20];
    while offset < end {
        let want = usize::try_from((end - offset).min(buf.len() as u64)).unwrap_or(buf.len());
        let read = source.read_at(&mut buf[..want], offset)?;
        if read == 0 {
            return Err(std::io::Error::from(std::io::ErrorKind::UnexpectedEof));
        }
        target.write_all_at(&buf[..read], offset)?;
        offset += read as u64;
    }
    Ok(())
}

fn set_len(path: &Path, size: u64) -> Result<()> {
    std::fs::OpenOptions::new()
        .write(true)
        .open(path)
        .and_then(|f| f.set_len(size))
        .map_err(|e| DiskError::Length(path.into(), e))
}

fn remove_quietly(path: &Path) {
    let _ = std::fs::remove_file(path);
}

/// Removed with everything in it when dropped.
struct Staging(PathBuf);

impl Drop for Staging {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn rand_suffix() -> String {
    use std::time::{SystemTime, UNIX_EPOCH};
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or(0);
    static COUNTER: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let n = COUNTER.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    format!("{nanos:x}{n}")
}

fn tempfile_in(dir: &Path) -> std::io::Result<(PathBuf, std::fs::File)> {
    std::fs::create_dir_all(dir)?;
    let path = dir.join(format!(
        "debugfs-{}-{}.cmd",
        std::process::id(),
        rand_suffix()
    ));
    let file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(&path)?;
    Ok((path, file))
}

/// Every path below `root`, parents before children; links are not followed.
fn walk(root: &Path) -> std::io::Result<Vec<PathBuf>> {
    let mut out = Vec::new();
    let mut pending = vec![root.to_path_buf()];
    while let Some(dir) = pending.pop() {
        let mut entries: Vec<_> = std::fs::read_dir(&dir)?.collect::<std::io::Result<_>>()?;
        entries.sort_by_key(|e| e.file_name());
        for entry in entries {
            let path = entry.path();
            if entry.file_type()?.is_dir() {
                pending.push(path.clone());
            }
            out.push(path);
        }
    }
    Ok(out)
}

/// debugfs takes one argument per word; a path with spaces goes in quotes.
fn debugfs_quote(path: &Path) -> String {
    let text = path.to_string_lossy();
    if text.contains(|c: char| c.is_whitespace() || c == '"') {
        format!("\"{}\"", text.replace('"', "\\\""))
    } else {
        text.into_owned()
    }
}

#[cfg(any(test, feature = "testing"))]
pub use fakes::*;

/// Disks in memory-light sparse files, failing on demand: compiled for tests and the `testing` feature only.
#[cfg(any(test, feature = "testing"))]
mod fakes {
    use super::*;
    use std::collections::HashSet;
    use std::sync::Mutex;

    /// Which operation a [`FakeDisks`] should fail.
    #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
    pub enum DiskOp {
        CreateOverlay,
        CreateWorkDisk,
        Grow,
        WriteConfigDrive,
        CopyImage,
        ShrinkToFit,
        ForgetIdentity,
    }

    /// Writes small sparse files instead of filesystems, and fails on demand.
    #[derive(Debug, Default)]
    pub struct FakeDisks {
        fail: Mutex<HashSet<DiskOp>>,
        written: Mutex<Vec<(PathBuf, Vec<GuestFile>)>>,
        forgotten: Mutex<Vec<PathBuf>>,
    }

    impl FakeDisks {
        pub fn new() -> Self {
            Self::default()
        }

        pub fn fail_on(&self, op: DiskOp) {
            self.fail.lock().expect("fail lock").insert(op);
        }

        pub fn clear_failures(&self) {
            self.fail.lock().expect("fail lock").clear();
        }

        /// Every overlay `forget_identity` was asked to scrub.
        pub fn forgotten(&self) -> Vec<PathBuf> {
            self.forgotten.lock().expect("forgotten lock").clone()
        }

        /// Every `write_config_drive` call: the drive and the files.
        pub fn written(&self) -> Vec<(PathBuf, Vec<GuestFile>)> {
            self.written.lock().expect("written lock").clone()
        }

        fn check(&self, op: DiskOp) -> Result<()> {
            if self.fail.lock().expect("fail lock").contains(&op) {
                Err(DiskError::Injected(format!("{op:?}")))
            } else {
                Ok(())
            }
        }

        fn sparse(path: &Path, size: u64) -> Result<()> {
            let file = std::fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .open(path)
                .map_err(|e| DiskError::Create(path.into(), e))?;
            file.set_len(size)
                .map_err(|e| DiskError::Create(path.into(), e))
        }
    }

    impl Disks for FakeDisks {
        fn create_overlay(&self, path: &Path, size: u64) -> Result<()> {
            self.check(DiskOp::CreateOverlay)?;
            Self::sparse(path, size)
        }

        fn create_work_disk(
            &self,
            path: &Path,
            size: u64,
            _seed_image: Option<&Path>,
        ) -> Result<()> {
            self.check(DiskOp::CreateWorkDisk)?;
            Self::sparse(path, size)
        }

        fn grow(&self, path: &Path, size: u64) -> Result<()> {
            self.check(DiskOp::Grow)?;
            set_len(path, size)
        }

        fn copy_image(&self, from: &Path, to: &Path) -> Result<()> {
            self.check(DiskOp::CopyImage)?;
            std::fs::copy(from, to)
                .map(drop)
                .map_err(|e| DiskError::Create(to.into(), e))
        }

        fn set_label(&self, _path: &Path, _label: &str) -> Result<()> {
            Ok(())
        }

        /// Keeps the file as it is: fake images have no filesystem.
        fn shrink_to_fit(&self, path: &Path) -> Result<u64> {
            self.check(DiskOp::ShrinkToFit)?;
            std::fs::metadata(path)
                .map(|m| m.len())
                .map_err(|e| DiskError::Length(path.into(), e))
        }

        fn forget_identity(&self, overlay: &Path) -> Result<()> {
            self.check(DiskOp::ForgetIdentity)?;
            self.forgotten
                .lock()
                .expect("forgotten lock")
                .push(overlay.to_path_buf());
            Ok(())
        }

        /// Writes the real drive (it is only memory and one file) and records it.
        fn write_config_drive(&self, path: &Path, files: &[GuestFile]) -> Result<()> {
            self.check(DiskOp::WriteConfigDrive)?;
            config_drive::write(path, files)?;
            self.written
                .lock()
                .expect("written lock")
                .push((path.to_path_buf(), files.to_vec()));
            Ok(())
        }
    }
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::{MetadataExt, PermissionsExt};

    use super::*;
    use crate::process::HostRunner;

    fn debugfs(image: &Path, request: &str) -> String {
        let out = std::process::Command::new("debugfs")
            .args(["-R", request])
            .arg(image)
            .output()
            .unwrap();
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    fn have_e2fsprogs() -> bool {
        banger_testkit::require(
            banger_testkit::missing_tool(&["mkfs.ext4", "debugfs", "e2fsck", "resize2fs"])
                .is_none(),
            "e2fsprogs disk tests",
            "e2fsprogs is not installed (apt-get install e2fsprogs; .ci/run installs it)",
        )
    }

    /// A base image whose /root holds files owned by uid 1000, as `mkfs.ext4 -d`
    /// run by an ordinary user would leave them.
    fn base_image(dir: &Path, size: u64) -> PathBuf {
        let tree = dir.join("base-tree");
        std::fs::create_dir_all(tree.join("root/.ssh")).unwrap();
        std::fs::write(tree.join("root/.bashrc"), "export BANGER=1\n").unwrap();
        std::fs::write(
            tree.join("root/.ssh/authorized_keys"),
            "ssh-ed25519 AAAA test\n",
        )
        .unwrap();
        std::fs::set_permissions(
            tree.join("root/.ssh"),
            std::fs::Permissions::from_mode(0o700),
        )
        .unwrap();
        for path in [
            "root",
            "root/.bashrc",
            "root/.ssh",
            "root/.ssh/authorized_keys",
        ] {
            std::os::unix::fs::lchown(tree.join(path), Some(1000), Some(1000)).ok();
        }
        let image = dir.join(format!("base-{size}.ext4"));
        let file = std::fs::File::create(&image).unwrap();
        file.set_len(size).unwrap();
        let status = std::process::Command::new("mkfs.ext4")
            .args([
                "-F",
                "-q",
                "-E",
                "lazy_itable_init=1,lazy_journal_init=1",
                "-d",
            ])
            .arg(&tree)
            .arg(&image)
            .status()
            .unwrap();
        assert!(status.success());
        image
    }

    fn disks(dir: &Path) -> Ext4Disks {
        Ext4Disks::new(Arc::new(HostRunner), dir.join("cache"))
    }

    #[test]
    fn a_copied_overlay_forgets_the_machine_id_and_host_keys_and_keeps_the_rest() {
        if !have_e2fsprogs() {
            return;
        }
        let tmp = tempfile::tempdir().unwrap();
        let tree = tmp.path().join("tree");
        std::fs::create_dir_all(tree.join("upper/etc/ssh")).unwrap();
        std::fs::write(tree.join("upper/etc/machine-id"), "0123\n").unwrap();
        std::fs::write(tree.join("upper/etc/hostname"), "source\n").unwrap();
        for key in ["ssh_host_ed25519_key", "ssh_host_ed25519_key.pub"] {
            std::fs::write(tree.join("upper/etc/ssh").join(key), "key").unwrap();
        }
        std::fs::write(tree.join("upper/etc/ssh/sshd_config"), "Port 22").unwrap();
        let image = tmp.path().join("overlay.ext4");
        std::fs::File::create(&image)
            .unwrap()
            .set_len(64 << 20)
            .unwrap();
        let made = std::process::Command::new("mkfs.ext4")
            .args(["-F", "-q", "-d"])
            .arg(&tree)
            .arg(&image)
            .status()
            .unwrap();
        assert!(made.success());
        disks(tmp.path()).forget_identity(&image).unwrap();
        let etc = debugfs(&image, "ls /upper/etc");
        assert!(
            !etc.contains("machine-id") && etc.contains("hostname"),
            "{etc}"
        );
        let ssh = debugfs(&image, "ls /upper/etc/ssh");
        assert!(
            !ssh.contains("ssh_host") && ssh.contains("sshd_config"),
            "{ssh}"
        );
    }

    #[test]
    fn overlay_has_upper_and_work_and_is_sparse() {
        if !have_e2fsprogs() {
            return;
        }
        let tmp = tempfile::tempdir().unwrap();
        let path = tmp.path().join("overlay.ext4");
        disks(tmp.path()).create_overlay(&path, 16 << 30).unwrap();
        let meta = std::fs::metadata(&path).unwrap();
        assert_eq!(meta.len(), 16 << 30);
        assert!(
            meta.blocks() * 512 < 64 << 20,
            "allocated {} bytes",
            meta.blocks() * 512
        );
        let listing = debugfs(&path, "ls -l /");
        assert!(
            listing.contains("upper") && listing.contains("work"),
            "{listing}"
        );
        assert!(debugfs(&path, "stat /upper").contains("User:     0   Group:     0"));
        let label = std::process::Command::new("e2label")
            .arg(&path)
            .output()
            .unwrap();
        assert_eq!(String::from_utf8_lossy(&label.stdout).trim(), OVERLAY_LABEL);
        assert!(
            !tmp.path()
                .join("cache/scratch")
                .read_dir()
                .unwrap()
                .any(|_| true),
            "staging cleaned up"
        );
    }

    #[test]
    fn work_disk_is_seeded_from_base_root_and_owned_by_root() {
        if !have_e2fsprogs() {
            return;
        }
        let tmp = tempfile::tempdir().unwrap();
        let base = base_image(tmp.path(), 256 << 20);
        let path = tmp.path().join("work.ext4");
        disks(tmp.path())
            .create_work_disk(&path, 1 << 30, Some(&base))
            .unwrap();
        assert_eq!(debugfs(&path, "cat /.bashrc"), "export BANGER=1\n");
        assert!(debugfs(&path, "cat /.ssh/authorized_keys").contains("ssh-ed25519"));
        for inside in ["/", "/.bashrc", "/.ssh", "/.ssh/authorized_keys"] {
            let stat = debugfs(&path, &format!("stat {inside}"));
            assert!(
                stat.contains("User:     0   Group:     0"),
                "{inside}: {stat}"
            );
        }
        assert!(
            debugfs(&path, "stat /.ssh").contains("Mode:  0700"),
            "modes are kept"
        );
    }

    #[test]
    fn work_disk_without_seed_is_empty_ext4() {
        if !have_e2fsprogs() {
            return;
        }
        let tmp = tempfile::tempdir().unwrap();
        let path = tmp.path().join("work.ext4");
        disks(tmp.path())
            .create_work_disk(&path, 512 << 20, None)
            .unwrap();
        let check = std::process::Command::new("e2fsck")
            .arg("-fn")
            .arg(&path)
            .output()
            .unwrap();
        assert!(
            check.status.success(),
            "{}",
            String::from_utf8_lossy(&check.stdout)
        );
    }

    #[test]
    fn overlay_creation_never_copies_the_base() {
        if !have_e2fsprogs() {
            return;
        }
        let tmp = tempfile::tempdir().unwrap();
        let mut allocated = Vec::new();
        for base_size in [1u64 << 30, 16 << 30] {
            let base = base_image(tmp.path(), base_size);
            let dir = tmp.path().join(format!("vm-{base_size}"));
            std::fs::create_dir(&dir).unwrap();
            let disks = disks(tmp.path());
            disks
                .create_overlay(&dir.join("overlay.ext4"), 16 << 30)
                .unwrap();
            disks
                .create_work_disk(&dir.join("work.ext4"), 8 << 30, Some(&base))
                .unwrap();
            let total: u64 = std::fs::read_dir(&dir)
                .unwrap()
                .map(|e| e.unwrap().metadata().unwrap().blocks() * 512)
                .sum();
            allocated.push(total);
        }
        assert_eq!(
            allocated[0], allocated[1],
            "VM files allocate the same for a 1 GiB and a 16 GiB base"
        );
    }

    #[test]
    fn grow_extends_file_and_filesystem() {
        if !have_e2fsprogs() {
            return;
        }
        let tmp = tempfile::tempdir().unwrap();
        let path = tmp.path().join("work.ext4");
        let disks = disks(tmp.path());
        disks.create_work_disk(&path, 512 << 20, None).unwrap();
        disks.grow(&path, 1 << 30).unwrap();
        assert_eq!(std::fs::metadata(&path).unwrap().len(), 1 << 30);
        let stats = debugfs(&path, "stats");
        let blocks: u64 = stats
            .lines()
            .find_map(|l| l.strip_prefix("Block count:"))
            .unwrap()
            .trim()
            .parse()
            .unwrap();
        let block_size: u64 = stats
            .lines()
            .find_map(|l| l.strip_prefix("Block size:"))
            .unwrap()
            .trim()
            .parse()
            .unwrap();
        assert_eq!(blocks * block_size, 1 << 30);
    }

    #[test]
    fn disks_are_sparse_copies_of_one_template() {
        if !have_e2fsprogs() {
            return;
        }
        let tmp = tempfile::tempdir().unwrap();
        let base = base_image(tmp.path(), 256 << 20);
        let disks = disks(tmp.path());
        let stale = tmp
            .path()
            .join("cache/templates/overlay-v1-17179869184.ext4");
        std::fs::create_dir_all(stale.parent().unwrap()).unwrap();
        std::fs::write(&stale, "an earlier layout").unwrap();
        for vm in ["a", "b"] {
            disks
                .create_overlay(&tmp.path().join(format!("{vm}-overlay.ext4")), 16 << 30)
                .unwrap();
            disks
                .create_work_disk(
                    &tmp.path().join(format!("{vm}-work.ext4")),
                    1 << 30,
                    Some(&base),
                )
                .unwrap();
        }
        let templates: Vec<_> = std::fs::read_dir(tmp.path().join("cache/templates"))
            .unwrap()
            .collect();
        assert_eq!(
            templates.len(),
            2,
            "one overlay and one work template, built once; the stale one pruned"
        );
        assert!(!stale.exists());
        for file in ["a-overlay.ext4", "b-work.ext4"] {
            let meta = std::fs::metadata(tmp.path().join(file)).unwrap();
            assert!(
                meta.blocks() * 512 < 64 << 20,
                "{file} stays sparse: {} bytes",
                meta.blocks() * 512
            );
        }
        assert_eq!(
            debugfs(&tmp.path().join("b-work.ext4"), "cat /.bashrc"),
            "export BANGER=1\n"
        );
        // A copy is a disk of its own: writing one leaves the other alone.
        let a = tmp.path().join("a-overlay.ext4");
        let out = std::process::Command::new("debugfs")
            .args(["-w", "-R", "mkdir /upper/only-a"])
            .arg(&a)
            .output()
            .unwrap();
        assert!(out.status.success());
        assert!(debugfs(&a, "ls /upper").contains("only-a"));
        assert!(
            debugfs(&tmp.path().join("b-overlay.ext4"), "ls /upper")
                .find("only-a")
                .is_none()
        );
        // A different size is a different template.
        disks
            .create_work_disk(&tmp.path().join("c-work.ext4"), 2 << 30, Some(&base))
            .unwrap();
        assert_eq!(
            std::fs::metadata(tmp.path().join("c-work.ext4"))
                .unwrap()
                .len(),
            2 << 30
        );
    }

    #[test]
    fn zero_pages_become_holes_and_data_stays() {
        use std::os::unix::fs::FileExt;
        let tmp = tempfile::tempdir().unwrap();
        let path = tmp.path().join("memory");
        let mut data = vec![0u8; 3 << 20];
        data[5000] = 7; // page 1
        data[(2 << 20) + 10] = 9; // a page in the third chunk
        std::fs::write(&path, &data).unwrap();
        punch_zero_pages(&path).unwrap();
        let file = std::fs::File::open(&path).unwrap();
        let meta = file.metadata().unwrap();
        assert_eq!(meta.len(), 3 << 20, "the size stays");
        assert!(
            meta.blocks() * 512 <= 16 << 10,
            "{} bytes allocated",
            meta.blocks() * 512
        );
        let mut read = vec![0u8; 3 << 20];
        file.read_exact_at(&mut read, 0).unwrap();
        assert!(read == data, "the content is unchanged");
    }

    #[test]
    fn sparse_copy_keeps_holes_and_data() {
        let tmp = tempfile::tempdir().unwrap();
        let from = tmp.path().join("from");
        let file = std::fs::File::create(&from).unwrap();
        file.set_len(8 << 30).unwrap();
        use std::os::unix::fs::FileExt;
        file.write_all_at(b"start", 0).unwrap();
        file.write_all_at(b"middle", 4 << 30).unwrap();
        drop(file);
        let to = tmp.path().join("to");
        sparse_copy(&from, &to).unwrap();
        let copied = std::fs::File::open(&to).unwrap();
        let mut buf = [0u8; 6];
        copied.read_exact_at(&mut buf, 4 << 30).unwrap();
        assert_eq!(&buf, b"middle");
        let meta = copied.metadata().unwrap();
        assert_eq!(meta.len(), 8 << 30);
        assert!(meta.blocks() * 512 < 1 << 20, "holes stay holes");
    }

    /// A guest's memory: a memfd with untouched holes, touched zero pages
    /// and two written pages; only the two pages are written out.
    #[test]
    fn copy_nonzero_pages_writes_only_pages_with_data() {
        use std::os::unix::fs::FileExt;
        let memory = memory_file("test-guest-ram").unwrap();
        memory.set_len(64 << 20).unwrap();
        memory.write_all_at(b"start", 0).unwrap();
        memory.write_all_at(&vec![0u8; 1 << 20], 16 << 20).unwrap();
        memory.write_all_at(b"middle", (32 << 20) + 100).unwrap();
        let tmp = tempfile::tempdir().unwrap();
        let to = tmp.path().join("ram");
        let written = copy_nonzero_pages(&memory, &to).unwrap();
        assert_eq!(written, 2 * 4096);
        let copied = std::fs::File::open(&to).unwrap();
        let mut buf = [0u8; 6];
        copied.read_exact_at(&mut buf, (32 << 20) + 100).unwrap();
        assert_eq!(&buf, b"middle");
        copied.read_exact_at(&mut buf[..5], 0).unwrap();
        assert_eq!(&buf[..5], b"start");
        let meta = copied.metadata().unwrap();
        assert_eq!(meta.len(), 64 << 20);
        assert!(meta.blocks() * 512 <= 64 << 10, "zero pages stay holes");
    }

    /// The way back: a sparse file's data into a fresh memfd, whose holes
    /// stay unallocated.
    #[test]
    fn copy_data_into_fills_a_memory_file() {
        use std::os::unix::fs::FileExt;
        let tmp = tempfile::tempdir().unwrap();
        let from = tmp.path().join("ram");
        let file = std::fs::File::create(&from).unwrap();
        file.set_len(256 << 20).unwrap();
        file.write_all_at(b"middle", 128 << 20).unwrap();
        drop(file);
        let memory = memory_file("test-guest-ram").unwrap();
        copy_data_into(&std::fs::File::open(&from).unwrap(), &memory).unwrap();
        let mut buf = [0u8; 6];
        memory.read_exact_at(&mut buf, 128 << 20).unwrap();
        assert_eq!(&buf, b"middle");
        let meta = memory.metadata().unwrap();
        assert_eq!(meta.len(), 256 << 20);
        assert!(meta.blocks() * 512 < 4 << 20, "holes stay holes");
    }

    /// State and cache on different filesystems: `copy_file_range` says
    /// `EXDEV` there, and the buffered fallback copies the data extents.
    #[test]
    fn sparse_copy_crosses_filesystems() {
        let shm = tempfile::tempdir_in("/dev/shm");
        let tmp = tempfile::tempdir().unwrap();
        let other_device = shm.as_ref().is_ok_and(|shm| {
            shm.path().metadata().unwrap().dev() != tmp.path().metadata().unwrap().dev()
        });
        if !banger_testkit::require(
            other_device,
            "sparse_copy_crosses_filesystems",
            "needs /dev/shm on another filesystem than the temp dir",
        ) {
            return;
        }
        let shm = shm.unwrap();
        let from = shm.path().join("from");
        let file = std::fs::File::create(&from).unwrap();
        file.set_len(1 << 30).unwrap();
        use std::os::unix::fs::FileExt;
        file.write_all_at(b"start", 0).unwrap();
        file.write_all_at(b"middle", 512 << 20).unwrap();
        drop(file);
        let to = tmp.path().join("to");
        sparse_copy(&from, &to).unwrap();
        let copied = std::fs::File::open(&to).unwrap();
        let mut buf = [0u8; 6];
        copied.read_exact_at(&mut buf, 512 << 20).unwrap();
        assert_eq!(&buf, b"middle");
        copied.read_exact_at(&mut buf[..5], 0).unwrap();
        assert_eq!(&buf[..5], b"start");
        let meta = copied.metadata().unwrap();
        assert_eq!(meta.len(), 1 << 30);
        assert!(meta.blocks() * 512 < 1 << 20, "holes stay holes");
    }

    #[test]
    fn buffered_extent_copy_writes_only_the_extent() {
        let tmp = tempfile::tempdir().unwrap();
        use std::os::unix::fs::FileExt;
        let source = std::fs::File::create(tmp.path().join("s")).unwrap();
        source.write_all_at(&vec![7u8; 3 << 20], 0).unwrap();
        let source = std::fs::File::open(tmp.path().join("s")).unwrap();
        let target = std::fs::File::options()
            .read(true)
            .write(true)
            .create_new(true)
            .open(tmp.path().join("t"))
            .unwrap();
        target.set_len(3 << 20).unwrap();
        copy_extent_buffered(&source, &target, 1 << 20, (2 << 20) + 5).unwrap();
        let mut buf = vec![0u8; 3 << 20];
        target.read_exact_at(&mut buf, 0).unwrap();
        assert!(buf[..1 << 20].iter().all(|b| *b == 0));
        assert!(buf[1 << 20..(2 << 20) + 5].iter().all(|b| *b == 7));
        assert!(buf[(2 << 20) + 5..].iter().all(|b| *b == 0));
    }

    #[test]
    fn failed_format_leaves_no_file() {
        let tmp = tempfile::tempdir().unwrap();
        let runner = crate::process::RecordingRunner::new();
        runner.answer("mkfs.ext4", None, 1, "", "no space");
        let cache = tmp.path().join("cache");
        let disks = Ext4Disks::new(Arc::new(runner), cache.clone());
        let path = tmp.path().join("overlay.ext4");
        let err = disks.create_overlay(&path, 1 << 30).unwrap_err();
        assert!(err.to_string().contains("formatting"), "{err}");
        assert!(!path.exists());
        // The failed build happened in the template cache: neither the
        // half-built template nor its staging tree may stay there.
        for dir in ["templates", "scratch"] {
            let left: Vec<_> = std::fs::read_dir(cache.join(dir))
                .map(|entries| entries.flatten().map(|e| e.file_name()).collect())
                .unwrap_or_default();
            assert!(left.is_empty(), "{dir}/ keeps {left:?}");
        }
    }
}
