//! The guest's configuration for one boot, on a small read-only drive: a
//! ustar archive that the initrd finds by its first member and extracts over
//! the assembled root before systemd starts.
//!
//! Writing it is a few kilobytes from memory, where writing the same files
//! into the overlay's ext4 took two debugfs runs (about 9 ms each on a
//! 64 GiB overlay). Every entry is owned by root with an explicit mode,
//! whoever runs banger, because sshd's StrictModes checks root's keys.

use std::io::Write;
use std::path::{Path, PathBuf};

use thiserror::Error;

/// The archive's first member. The initrd compares a drive's first bytes
/// (the ustar name field) with this path to recognise the config drive.
pub const MARKER: &str = "etc/banger/config-version";
/// What the marker file holds: the layout of this archive.
pub const FORMAT_VERSION: &str = "1\n";

const BLOCK: usize = 512;
/// Drives are padded to whole pages: VMMs size virtio disks in sectors.
const DRIVE_ALIGN: usize = 4096;

/// A file or symlink for the guest, owned by root.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GuestFile {
    /// Absolute path as the guest sees it.
    pub path: String,
    pub content: GuestContent,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum GuestContent {
    File { data: String, mode: u32 },
    Symlink(String),
}

#[derive(Debug, Error)]
pub enum ConfigDriveError {
    #[error("guest path {0:?} must be absolute, with no empty, `.` or `..` component")]
    BadPath(String),
    #[error(
        "guest path {0:?} does not fit a ustar header (a name of at most 100 bytes after a directory prefix of at most 155)"
    )]
    PathTooLong(String),
    #[error("the symlink target {target:?} of {path:?} is longer than ustar's 100 bytes")]
    LinkTooLong { path: String, target: String },
    #[error("adding {0:?} to the config drive")]
    Archive(String, #[source] std::io::Error),
    #[error("writing the config drive {0}")]
    Write(PathBuf, #[source] std::io::Error),
}

pub type Result<T, E = ConfigDriveError> = std::result::Result<T, E>;

/// Writes `files` as the config drive at `path`, replacing it atomically.
pub fn write(path: &Path, files: &[GuestFile]) -> Result<()> {
    let mtime = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    let mut bytes = archive(files, mtime)?;
    bytes.resize(bytes.len().div_ceil(DRIVE_ALIGN) * DRIVE_ALIGN, 0);
    let partial = path.with_extension("tar.partial");
    let written = std::fs::File::create(&partial)
        .and_then(|mut file| file.write_all(&bytes))
        .and_then(|()| std::fs::rename(&partial, path));
    written.map_err(|e| {
        let _ = std::fs::remove_file(&partial);
        ConfigDriveError::Write(path.to_path_buf(), e)
    })
}

/// The archive: the marker first, then `files` in order, then the two zero
/// blocks that end a tar archive. Headers are plain ustar (no GNU or PAX
/// extensions): busybox tar in the initrd reads them.
pub fn archive(files: &[GuestFile], mtime: u64) -> Result<Vec<u8>> {
    let mut builder = tar::Builder::new(Vec::with_capacity(BLOCK * (2 * files.len() + 4)));
    append(
        &mut builder,
        MARKER,
        &GuestContent::File {
            data: FORMAT_VERSION.to_owned(),
            mode: 0o644,
        },
        mtime,
    )?;
    for file in files {
        append(
            &mut builder,
            archive_name(&file.path)?,
            &file.content,
            mtime,
        )
        .map_err(|e| e.for_path(&file.path))?;
    }
    builder
        .into_inner()
        .map_err(|e| ConfigDriveError::Archive(MARKER.to_owned(), e))
}

/// One root-owned entry. The `tar` crate splits a long path into ustar's
/// prefix and name fields, and refuses what fits neither.
fn append(
    builder: &mut tar::Builder<Vec<u8>>,
    name: &str,
    content: &GuestContent,
    mtime: u64,
) -> Result<()> {
    let mut header = tar::Header::new_ustar();
    header
        .set_path(name)
        .map_err(|_| ConfigDriveError::PathTooLong(name.to_owned()))?;
    header.set_uid(0);
    header.set_gid(0);
    header.set_mtime(mtime);
    let _ = header.set_username("root");
    let _ = header.set_groupname("root");
    let data: &[u8] = match content {
        GuestContent::File { data, mode } => {
            header.set_entry_type(tar::EntryType::Regular);
            header.set_mode(mode & 0o7777);
            header.set_size(data.len() as u64);
            data.as_bytes()
        }
        GuestContent::Symlink(target) => {
            header.set_entry_type(tar::EntryType::Symlink);
            header.set_mode(0o777);
            header.set_size(0);
            header
                .set_link_name(target)
                .map_err(|_| ConfigDriveError::LinkTooLong {
                    path: name.to_owned(),
                    target: target.clone(),
                })?;
            &[]
        }
    };
    header.set_cksum();
    builder
        .append(&header, data)
        .map_err(|e| ConfigDriveError::Archive(name.to_owned(), e))
}

impl ConfigDriveError {
    /// Errors name the guest's absolute path, not the archive's relative one.
    fn for_path(self, path: &str) -> Self {
        match self {
            Self::PathTooLong(_) => Self::PathTooLong(path.to_owned()),
            Self::LinkTooLong { target, .. } => Self::LinkTooLong {
                path: path.to_owned(),
                target,
            },
            other => other,
        }
    }
}

/// `/etc/hostname` as `etc/hostname`, refusing anything that could land
/// outside the root or mean something else to tar.
fn archive_name(path: &str) -> Result<&str> {
    let relative = path
        .strip_prefix('/')
        .ok_or_else(|| ConfigDriveError::BadPath(path.to_owned()))?;
    let clean = relative
        .split('/')
        .all(|part| !matches!(part, "" | "." | ".."));
    if clean {
        Ok(relative)
    } else {
        Err(ConfigDriveError::BadPath(path.to_owned()))
    }
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::PermissionsExt;
    use std::process::Command;

    use super::*;

    fn file(path: &str, data: &str, mode: u32) -> GuestFile {
        GuestFile {
            path: path.into(),
            content: GuestContent::File {
                data: data.into(),
                mode,
            },
        }
    }

    fn sample() -> Vec<GuestFile> {
        vec![
            file("/etc/hostname", "web\n", 0o644),
            file("/etc/banger/authorized_keys", "ssh-ed25519 A\n", 0o600),
            GuestFile {
                path: "/etc/systemd/system/multi-user.target.wants/x.service".into(),
                content: GuestContent::Symlink("/etc/systemd/system/x.service".into()),
            },
        ]
    }

    fn have_tar() -> bool {
        banger_testkit::require(
            banger_testkit::have_tool("tar"),
            "config drive tests with GNU tar",
            "GNU tar is not installed (apt-get install tar)",
        )
    }

    #[test]
    fn the_marker_is_the_first_name_and_headers_check_out() {
        let bytes = archive(&sample(), 1_700_000_000).unwrap();
        assert_eq!(&bytes[..MARKER.len()], MARKER.as_bytes());
        assert_eq!(bytes[MARKER.len()], 0);
        assert_eq!(bytes.len() % BLOCK, 0);
        assert!(bytes[bytes.len() - 2 * BLOCK..].iter().all(|b| *b == 0));
        // Every header's checksum is the byte sum with the field as spaces.
        let first: &[u8] = &bytes[..BLOCK];
        let field = std::str::from_utf8(&first[148..156]).unwrap();
        let stored = u64::from_str_radix(field.trim_end_matches(['\0', ' ']), 8).unwrap();
        let mut blank = first.to_vec();
        blank[148..156].fill(b' ');
        assert_eq!(stored, blank.iter().map(|b| u64::from(*b)).sum::<u64>());
    }

    #[test]
    fn tar_lists_root_owned_entries_with_their_modes() {
        if !have_tar() {
            return;
        }
        let tmp = tempfile::tempdir().unwrap();
        let drive = tmp.path().join("config.tar");
        write(&drive, &sample()).unwrap();
        assert_eq!(std::fs::metadata(&drive).unwrap().len() % 4096, 0);
        let out = Command::new("tar")
            .args(["--numeric-owner", "-tvf"])
            .arg(&drive)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let listing = String::from_utf8(out.stdout).unwrap();
        let lines: Vec<&str> = listing.lines().collect();
        assert_eq!(lines.len(), 4, "{listing}");
        assert!(lines[0].starts_with("-rw-r--r-- 0/0") && lines[0].ends_with(MARKER));
        assert!(lines[2].starts_with("-rw------- 0/0"), "{}", lines[2]);
        assert!(
            lines[3].starts_with("lrwxrwxrwx 0/0")
                && lines[3].ends_with("x.service -> /etc/systemd/system/x.service"),
            "{}",
            lines[3]
        );
    }

    #[test]
    fn extraction_replaces_earlier_files_and_keeps_modes() {
        if !have_tar() {
            return;
        }
        let tmp = tempfile::tempdir().unwrap();
        let root = tmp.path().join("root");
        std::fs::create_dir_all(root.join("etc")).unwrap();
        std::fs::write(root.join("etc/hostname"), "image\n").unwrap();
        let drive = tmp.path().join("config.tar");
        let mut files = sample();
        write(&drive, &files).unwrap();
        files[0] = file("/etc/hostname", "renamed\n", 0o644);
        write(&drive, &files).unwrap();
        let status = Command::new("tar")
            .args(["--no-same-owner", "-xf"])
            .arg(&drive)
            .arg("-C")
            .arg(&root)
            .status()
            .unwrap();
        assert!(status.success());
        assert_eq!(
            std::fs::read_to_string(root.join("etc/hostname")).unwrap(),
            "renamed\n"
        );
        let keys = std::fs::metadata(root.join("etc/banger/authorized_keys")).unwrap();
        assert_eq!(keys.permissions().mode() & 0o777, 0o600);
        assert_eq!(
            std::fs::read_to_string(root.join(MARKER)).unwrap(),
            FORMAT_VERSION
        );
        let link = root.join("etc/systemd/system/multi-user.target.wants/x.service");
        assert_eq!(
            std::fs::read_link(&link).unwrap(),
            Path::new("/etc/systemd/system/x.service")
        );
        assert!(!drive.with_extension("tar.partial").exists());
    }

    #[test]
    fn long_paths_use_the_prefix_field_and_impossible_ones_are_refused() {
        let deep = format!("/{}/{}", "d".repeat(120), "f".repeat(90));
        let bytes = archive(&[file(&deep, "x", 0o644)], 0).unwrap();
        let header = &bytes[BLOCK * 2..BLOCK * 3];
        assert_eq!(&header[..90], "f".repeat(90).as_bytes());
        assert_eq!(&header[345..465], "d".repeat(120).as_bytes());

        let err = archive(&[file(&format!("/{}", "n".repeat(101)), "x", 0o644)], 0).unwrap_err();
        assert!(matches!(err, ConfigDriveError::PathTooLong(_)), "{err}");
        for bad in ["etc/hostname", "/etc/../shadow", "/etc//x", "/"] {
            let err = archive(&[file(bad, "x", 0o644)], 0).unwrap_err();
            assert!(
                err.to_string().contains(&format!("{bad:?}")),
                "{bad}: {err}"
            );
        }
    }
}
