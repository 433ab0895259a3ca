//! `bundle.json`: what the runtime bundle holds, each file with its
//! SHA-256. Loading checks the schema, the required entries and that every
//! file is there; `verify` also checks the contents.

use std::collections::BTreeMap;
use std::io::Read;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use thiserror::Error;

pub const SCHEMA: u32 = 1;
pub const MANIFEST: &str = "bundle.json";
/// Entries every bundle has; one of `rootfs` and `rootfs_docker` too.
pub const REQUIRED: &[BundleFile] = &[
    BundleFile::Kernel,
    BundleFile::Initrd,
    BundleFile::SshKey,
    BundleFile::VsockPingHelper,
];

#[derive(Debug, Error)]
pub enum BundleError {
    #[error("{0} is missing: run `make runtime` or `make runtime-bundle`")]
    NoManifest(PathBuf),
    #[error("reading {0}")]
    Read(PathBuf, #[source] std::io::Error),
    #[error("{0} is not a valid bundle manifest")]
    Parse(PathBuf, #[source] serde_json::Error),
    #[error(
        "{path} has schema {found}; this banger reads schema {SCHEMA}: rebuild the bundle with `make runtime`"
    )]
    Schema { path: PathBuf, found: u32 },
    #[error("bundle.json has no {0:?} entry: rebuild the bundle with `make runtime`")]
    MissingEntry(String),
    #[error(
        "bundle.json has neither a rootfs nor a rootfs_docker entry: rebuild the bundle with `make runtime`"
    )]
    NoRootfs,
    #[error(
        "bundle.json entry {entry:?} names {path}, which does not exist: rebuild the bundle with `make runtime`"
    )]
    FileMissing { entry: String, path: PathBuf },
    #[error(
        "bundle.json entry {entry:?}: {path} has SHA-256 {actual}, not {expected}: the file changed; rebuild with `make runtime`"
    )]
    Checksum {
        entry: String,
        path: PathBuf,
        expected: String,
        actual: String,
    },
}

pub type Result<T, E = BundleError> = std::result::Result<T, E>;

/// A file of the runtime bundle: its `bundle.json` entry and the name
/// `make runtime` gives it, each spelled here only.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BundleFile {
    Kernel,
    Initrd,
    Rootfs,
    RootfsDocker,
    SshKey,
    SshPublicKey,
    VsockPingHelper,
    Modules,
}

impl BundleFile {
    /// The key in `bundle.json`'s `files`.
    pub fn entry(self) -> &'static str {
        match self {
            Self::Kernel => "kernel",
            Self::Initrd => "initrd",
            Self::Rootfs => "rootfs",
            Self::RootfsDocker => "rootfs_docker",
            Self::SshKey => "ssh_key",
            Self::SshPublicKey => "ssh_public_key",
            Self::VsockPingHelper => "vsock_ping_helper",
            Self::Modules => "modules",
        }
    }

    /// Its name in a bundle `make runtime` built.
    pub fn file_name(self) -> &'static str {
        match self {
            Self::Kernel => "vmlinux",
            Self::Initrd => "initrd.img",
            Self::Rootfs => "rootfs.ext4",
            Self::RootfsDocker => "rootfs-docker.ext4",
            Self::SshKey => "id_ed25519",
            Self::SshPublicKey => "id_ed25519.pub",
            Self::VsockPingHelper => "banger-vsock-pingd",
            Self::Modules => "modules",
        }
    }

    /// Where it is in the bundle at `dir`: where `manifest` says, else its
    /// conventional name; `None` when there is no such file.
    pub fn locate(self, dir: &Path, manifest: Option<&Bundle>) -> Option<PathBuf> {
        let path = manifest
            .and_then(|b| b.file(self.entry()))
            .unwrap_or_else(|| dir.join(self.file_name()));
        path.exists().then_some(path)
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FileEntry {
    pub path: String,
    pub sha256: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Manifest {
    pub schema: u32,
    pub kernel_version: String,
    pub modules_dir: String,
    pub files: BTreeMap<String, FileEntry>,
}

/// A loaded bundle: its directory and manifest.
#[derive(Debug, Clone)]
pub struct Bundle {
    pub dir: PathBuf,
    pub manifest: Manifest,
}

impl Bundle {
    /// Reads and checks `dir/bundle.json`: schema, required entries, files present.
    pub fn load(dir: &Path) -> Result<Self> {
        let path = dir.join(MANIFEST);
        let text = match std::fs::read_to_string(&path) {
            Ok(text) => text,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                return Err(BundleError::NoManifest(path));
            }
            Err(e) => return Err(BundleError::Read(path, e)),
        };
        Self::parse(dir, &text)
    }

    /// Checks `text` as `dir`'s manifest: schema, required entries, files present.
    pub fn parse(dir: &Path, text: &str) -> Result<Self> {
        let path = dir.join(MANIFEST);
        let manifest: Manifest =
            serde_json::from_str(text).map_err(|e| BundleError::Parse(path.clone(), e))?;
        if manifest.schema != SCHEMA {
            return Err(BundleError::Schema {
                path,
                found: manifest.schema,
            });
        }
        for file in REQUIRED {
            if !manifest.files.contains_key(file.entry()) {
                return Err(BundleError::MissingEntry(file.entry().to_owned()));
            }
        }
        if !manifest.files.contains_key(BundleFile::Rootfs.entry())
            && !manifest
                .files
                .contains_key(BundleFile::RootfsDocker.entry())
        {
            return Err(BundleError::NoRootfs);
        }
        let bundle = Self {
            dir: dir.to_path_buf(),
            manifest,
        };
        for (entry, file) in &bundle.manifest.files {
            let path = bundle.dir.join(&file.path);
            if !path.exists() {
                return Err(BundleError::FileMissing {
                    entry: entry.clone(),
                    path,
                });
            }
        }
        Ok(bundle)
    }

    pub fn file(&self, entry: &str) -> Option<PathBuf> {
        self.manifest
            .files
            .get(entry)
            .map(|f| self.dir.join(&f.path))
    }

    /// The image new VMs boot by default: the Docker one when present.
    pub fn default_rootfs(&self) -> Option<PathBuf> {
        self.file(BundleFile::RootfsDocker.entry())
            .or_else(|| self.file(BundleFile::Rootfs.entry()))
    }

    /// Checks every file's SHA-256.
    pub fn verify(&self) -> Result<()> {
        for (entry, file) in &self.manifest.files {
            let path = self.dir.join(&file.path);
            let actual = sha256_file(&path).map_err(|e| BundleError::Read(path.clone(), e))?;
            if actual != file.sha256 {
                return Err(BundleError::Checksum {
                    entry: entry.clone(),
                    path,
                    expected: file.sha256.clone(),
                    actual,
                });
            }
        }
        Ok(())
    }
}

pub fn sha256_file(path: &Path) -> std::io::Result<String> {
    let mut file = std::fs::File::open(path)?;
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = file.read(&mut buf)?;
        if n == 0 {
            break;
        }
        hasher.update(&buf[..n]);
    }
    Ok(hasher
        .finalize()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn bundle(dir: &Path) -> Manifest {
        let mut files = BTreeMap::new();
        for (entry, name) in [
            BundleFile::Kernel,
            BundleFile::Initrd,
            BundleFile::Rootfs,
            BundleFile::SshKey,
            BundleFile::VsockPingHelper,
        ]
        .map(|f| (f.entry(), f.file_name()))
        {
            std::fs::write(dir.join(name), format!("contents of {name}")).unwrap();
            let sha256 = sha256_file(&dir.join(name)).unwrap();
            files.insert(
                entry.to_owned(),
                FileEntry {
                    path: name.to_owned(),
                    sha256,
                },
            );
        }
        let manifest = Manifest {
            schema: 1,
            kernel_version: "6.1.0".into(),
            modules_dir: "modules/6.1.0".into(),
            files,
        };
        std::fs::write(
            dir.join(MANIFEST),
            serde_json::to_string_pretty(&manifest).unwrap(),
        )
        .unwrap();
        manifest
    }

    #[test]
    fn round_trip_and_verify() {
        let tmp = tempfile::tempdir().unwrap();
        let written = bundle(tmp.path());
        let loaded = Bundle::load(tmp.path()).unwrap();
        assert_eq!(loaded.manifest, written);
        loaded.verify().unwrap();
        assert_eq!(
            loaded.default_rootfs(),
            Some(tmp.path().join("rootfs.ext4"))
        );
        assert_eq!(sha256_file(&tmp.path().join("vmlinux")).unwrap().len(), 64);
    }

    #[test]
    fn every_validation_error_names_the_entry_and_the_fix() {
        type Break = Box<dyn Fn(&Path, &mut Manifest)>;
        let cases: Vec<(&str, Break)> = vec![
            (
                "bundle.json is missing",
                Box::new(|dir, _| std::fs::remove_file(dir.join(MANIFEST)).unwrap()),
            ),
            ("schema 2", Box::new(|_, m| m.schema = 2)),
            (
                "no \"initrd\" entry",
                Box::new(|_, m| {
                    m.files.remove("initrd");
                }),
            ),
            (
                "neither a rootfs",
                Box::new(|_, m| {
                    m.files.remove("rootfs");
                }),
            ),
            (
                "vmlinux, which does not exist",
                Box::new(|dir, _| std::fs::remove_file(dir.join("vmlinux")).unwrap()),
            ),
        ];
        for (needle, break_it) in cases {
            let tmp = tempfile::tempdir().unwrap();
            let mut manifest = bundle(tmp.path());
            break_it(tmp.path(), &mut manifest);
            if tmp.path().join(MANIFEST).exists() {
                std::fs::write(
                    tmp.path().join(MANIFEST),
                    serde_json::to_string(&manifest).unwrap(),
                )
                .unwrap();
            }
            let err = Bundle::load(tmp.path()).unwrap_err().to_string();
            assert!(
                err.contains(needle) && err.contains("make runtime"),
                "{needle}: {err}"
            );
        }
        let tmp = tempfile::tempdir().unwrap();
        bundle(tmp.path());
        std::fs::write(tmp.path().join(MANIFEST), "{ not json").unwrap();
        assert!(
            Bundle::load(tmp.path())
                .unwrap_err()
                .to_string()
                .contains("not a valid bundle manifest")
        );
        bundle(tmp.path());
        std::fs::write(tmp.path().join("initrd.img"), "tampered").unwrap();
        let err = Bundle::load(tmp.path())
            .unwrap()
            .verify()
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("\"initrd\"") && err.contains("changed"),
            "{err}"
        );
    }
}
