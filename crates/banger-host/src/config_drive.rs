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
    #[error("{0:?} is too large for a ustar entry")]
    TooLarge(String),
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
/// blocks that end a tar archive.
pub fn archive(files: &[GuestFile], mtime: u64) -> Result<Vec<u8>> {
    let mut out = Vec::with_capacity(BLOCK * (2 * files.len() + 4));
    append_file(&mut out, MARKER, 0o644, FORMAT_VERSION.as_bytes(), mtime)?;
    for file in files {
        let name = archive_name(&file.path)?;
        match &file.content {
            GuestContent::File { data, mode } => {
                append_file(&mut out, name, *mode, data.as_bytes(), mtime)?;
            }
            GuestContent::Symlink(target) => {
                if target.len() > 100 {
                    return Err(ConfigDriveError::LinkTooLong {
                        path: file.path.clone(),
                        target: target.clone(),
                    });
                }
                let header = Header {
                    name,
                    kind: b'2',
                    mode: 0o777,
                    size: 0,
                    mtime,
                    link: target,
                };
                out.extend_from_slice(&header.encode()?);
            }
        }
    }
    out.resize(out.len() + 2 * BLOCK, 0);
    Ok(out)
}

fn append_file(out: &mut Vec<u8>, name: &str, mode: u32, data: &[u8], mtime: u64) -> Result<()> {
    let header = Header {
        name,
        kind: b'0',
        mode,
        size: data.len() as u64,
        mtime,
        link: "",
    };
    out.extend_from_slice(&header.encode()?);
    out.extend_from_slice(data);
    out.resize(out.len().div_ceil(BLOCK) * BLOCK, 0);
    Ok(())
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

struct Header<'a> {
    name: &'a str,
    kind: u8,
    mode: u32,
    size: u64,
    mtime: u64,
    link: &'a str,
}

impl Header<'_> {
    fn encode(&self) -> Result<[u8; BLOCK]> {
        let mut block = [0u8; BLOCK];
        let (prefix, name) = split_name(self.name)?;
        let too_large = || ConfigDriveError::TooLarge(self.name.to_owned());
        put(&mut block[0..100], name.as_bytes());
        octal(&mut block[100..108], u64::from(self.mode & 0o7777)).ok_or_else(too_large)?;
        octal(&mut block[108..116], 0).ok_or_else(too_large)?; // uid
        octal(&mut block[116..124], 0).ok_or_else(too_large)?; // gid
        octal(&mut block[124..136], self.size).ok_or_else(too_large)?;
        octal(&mut block[136..148], self.mtime).ok_or_else(too_large)?;
        block[148..156].fill(b' ');
        block[156] = self.kind;
        put(&mut block[157..257], self.link.as_bytes());
        block[257..263].copy_from_slice(b"ustar\0");
        block[263..265].copy_from_slice(b"00");
        put(&mut block[265..297], b"root");
        put(&mut block[297..329], b"root");
        put(&mut block[345..500], prefix.as_bytes());
        let sum: u64 = block.iter().map(|b| u64::from(*b)).sum();
        octal(&mut block[148..155], sum).ok_or_else(too_large)?;
        block[155] = b' ';
        Ok(block)
    }
}

/// ustar keeps long paths as a directory prefix plus a name.
fn split_name(path: &str) -> Result<(&str, &str)> {
    if path.len() <= 100 {
        return Ok(("", path));
    }
    path.match_indices('/')
        .map(|(i, _)| (&path[..i], &path[i + 1..]))
        .find(|(prefix, name)| prefix.len() <= 155 && name.len() <= 100)
        .ok_or_else(|| ConfigDriveError::PathTooLong(path.to_owned()))
}

fn put(field: &mut [u8], value: &[u8]) {
    field[..value.len()].copy_from_slice(value);
}

/// Zero-padded octal filling all but the field's last byte, which stays NUL.
/// `None` when the value needs more digits than the field has.
fn octal(field: &mut [u8], value: u64) -> Option<()> {
    let digits = field.len() - 1;
    let text = format!("{value:0digits$o}");
    if text.len() > digits {
        return None;
    }
    field[..digits].copy_from_slice(text.as_bytes());
    field[digits] = 0;
    Some(())
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
        let stored =
            u64::from_str_radix(std::str::from_utf8(&first[148..154]).unwrap(), 8).unwrap();
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
