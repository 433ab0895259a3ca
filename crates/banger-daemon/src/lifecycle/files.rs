//! What suspend, snapshots and branches do to files: directories written
//! whole or not at all, sparse copies, and a VM's two disks copied out of
//! and moved into its directory.

use std::path::Path;

use banger_host::{VmDir, procfs};

/// Makes `partial` durable and renames it to `done`: a crash before the
/// rename leaves only the partial directory, which is discarded.
pub(super) fn commit_dir(partial: &Path, done: &Path) -> std::io::Result<()> {
    sync_tree(partial)?;
    std::fs::rename(partial, done)?;
    if let Some(parent) = done.parent() {
        std::fs::File::open(parent)?.sync_all()?;
    }
    Ok(())
}

/// `fsync` of every file and directory under `dir`, and of `dir`.
fn sync_tree(dir: &Path) -> std::io::Result<()> {
    for entry in std::fs::read_dir(dir)? {
        let path = entry?.path();
        if path.is_dir() {
            sync_tree(&path)?;
        } else {
            std::fs::File::open(&path)?.sync_all()?;
        }
    }
    std::fs::File::open(dir)?.sync_all()
}

/// Bytes the files under `dir` take on disk.
pub(super) fn dir_bytes(dir: &Path) -> u64 {
    use std::os::unix::fs::MetadataExt;
    std::fs::read_dir(dir)
        .into_iter()
        .flatten()
        .filter_map(|entry| entry.ok())
        .map(|entry| match entry.metadata() {
            Ok(meta) if meta.is_dir() => dir_bytes(&entry.path()),
            Ok(meta) => meta.blocks() * 512,
            Err(_) => 0,
        })
        .sum()
}

/// Copies every file under `from` into `to` (made here), keeping holes.
pub(super) fn copy_tree(from: &Path, to: &Path) -> std::io::Result<()> {
    std::fs::create_dir(to)?;
    for entry in std::fs::read_dir(from)? {
        let entry = entry?;
        let target = to.join(entry.file_name());
        if entry.file_type()?.is_dir() {
            copy_tree(&entry.path(), &target)?;
        } else {
            banger_host::disk::sparse_copy(&entry.path(), &target)?;
        }
    }
    Ok(())
}

/// A VM's overlay and work disk, as its directory names them.
fn disks(files: &VmDir) -> [std::path::PathBuf; 2] {
    [files.overlay(), files.work_disk()]
}

fn file_name(path: &Path) -> &std::ffi::OsStr {
    path.file_name()
        .expect("a VM's disk is a file in its directory")
}

/// Sparse (or reflink) copies of the VM's disks into `into`, under their
/// own file names.
pub(super) fn copy_disks(files: &VmDir, into: &Path) -> std::io::Result<()> {
    for disk in disks(files) {
        banger_host::disk::sparse_copy(&disk, &into.join(file_name(&disk)))?;
    }
    Ok(())
}

/// The copy of the overlay that [`copy_disks`] made in `dir`.
pub(super) fn copied_overlay(files: &VmDir, dir: &Path) -> std::path::PathBuf {
    dir.join(file_name(&files.overlay()))
}

/// Moves copies that [`copy_disks`] made in `from` over the VM's disks.
pub(super) fn move_disks_in(from: &Path, files: &VmDir) -> std::io::Result<()> {
    for disk in disks(files) {
        std::fs::rename(from.join(file_name(&disk)), &disk)?;
    }
    Ok(())
}

/// Bytes the VM's disks take on the host.
pub(super) fn disks_allocated(files: &VmDir) -> u64 {
    disks(files)
        .iter()
        .map(|disk| procfs::disk_usage(disk).map_or(0, |(allocated, _)| allocated))
        .sum()
}

/// Whether a disk of the VM was written after `created_at` (Unix seconds).
pub(super) fn disks_changed_since(files: &VmDir, created_at: i64) -> bool {
    disks(files).iter().any(|disk| {
        std::fs::metadata(disk)
            .and_then(|m| m.modified())
            .ok()
            .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
            .is_some_and(|t| i64::try_from(t.as_secs()).unwrap_or(i64::MAX) > created_at)
    })
}
