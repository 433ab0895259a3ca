//! Every host path banger uses, derived once from the XDG variables so that
//! tests (and users) can move the whole tree by setting them.

use std::ffi::OsString;
use std::os::unix::fs::{DirBuilderExt, MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};

use thiserror::Error;

#[derive(Debug, Error)]
pub enum PathsError {
    #[error("HOME is not set and {0} is not set either: set HOME or {0}")]
    NoHome(&'static str),
    #[error("{var} is {value:?}, which is not an absolute path: unset it or give an absolute path")]
    Relative { var: &'static str, value: PathBuf },
    #[error("creating directory {0}")]
    CreateDir(PathBuf, #[source] std::io::Error),
    #[error(
        "runtime directory {path} is owned by uid {owner}, not by you (uid {uid}): remove it or set XDG_RUNTIME_DIR"
    )]
    ForeignRuntimeDir { path: PathBuf, owner: u32, uid: u32 },
    #[error("securing runtime directory {0}")]
    SecureDir(PathBuf, #[source] std::io::Error),
}

pub type Result<T, E = PathsError> = std::result::Result<T, E>;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Paths {
    pub home: PathBuf,
    /// `~/.config/banger`
    pub config_dir: PathBuf,
    pub config_file: PathBuf,
    /// `~/.local/state/banger`
    pub state_dir: PathBuf,
    /// `~/.cache/banger`
    pub cache_dir: PathBuf,
    /// `$XDG_RUNTIME_DIR/banger`, or `/tmp/banger-<uid>` without XDG_RUNTIME_DIR.
    pub runtime_dir: PathBuf,
    pub socket: PathBuf,
    /// Held locked by the running daemon; holds its PID.
    pub pid_file: PathBuf,
    pub log_file: PathBuf,
    pub db_file: PathBuf,
    pub vms_dir: PathBuf,
    pub images_dir: PathBuf,
    pub image_build_logs_dir: PathBuf,
}

impl Paths {
    /// Paths from this process's environment.
    pub fn from_env() -> Result<Self> {
        // SAFETY: getuid has no preconditions and cannot fail.
        let uid = unsafe { libc::getuid() };
        Self::from_vars(|name| std::env::var_os(name), uid)
    }

    /// Paths from any variable lookup, so tests never touch the real environment.
    pub fn from_vars(var: impl Fn(&str) -> Option<OsString>, uid: u32) -> Result<Self> {
        let absolute = |name: &'static str| -> Result<Option<PathBuf>> {
            match var(name).filter(|v| !v.is_empty()) {
                None => Ok(None),
                Some(v) => {
                    let path = PathBuf::from(v);
                    if path.is_absolute() {
                        Ok(Some(path))
                    } else {
                        Err(PathsError::Relative {
                            var: name,
                            value: path,
                        })
                    }
                }
            }
        };
        let home = absolute("HOME")?;
        let xdg = |name: &'static str, fallback: &str| -> Result<PathBuf> {
            match absolute(name)? {
                Some(dir) => Ok(dir),
                None => home
                    .as_ref()
                    .map(|h| h.join(fallback))
                    .ok_or(PathsError::NoHome(name)),
            }
        };
        let config_dir = xdg("XDG_CONFIG_HOME", ".config")?.join("banger");
        let state_dir = xdg("XDG_STATE_HOME", ".local/state")?.join("banger");
        let cache_dir = xdg("XDG_CACHE_HOME", ".cache")?.join("banger");
        let runtime_dir = match absolute("XDG_RUNTIME_DIR")? {
            Some(dir) => dir.join("banger"),
            None => PathBuf::from(format!("/tmp/banger-{uid}")),
        };
        Ok(Self {
            home: home.unwrap_or_else(|| PathBuf::from("/")),
            config_file: config_dir.join("config.toml"),
            config_dir,
            socket: runtime_dir.join("bangerd.sock"),
            pid_file: runtime_dir.join("bangerd.pid"),
            runtime_dir,
            log_file: state_dir.join("bangerd.log"),
            db_file: state_dir.join("banger.db"),
            vms_dir: state_dir.join("vms"),
            images_dir: state_dir.join("images"),
            image_build_logs_dir: state_dir.join("image-build"),
            state_dir,
            cache_dir,
        })
    }

    /// A short, stable tag for this state directory: marks host resources
    /// (iptables rules) as this daemon's, so two daemons on one host never
    /// prune each other's.
    pub fn instance_tag(&self) -> String {
        // FNV-1a: stable across runs and Rust versions, unlike std's hasher.
        let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
        for byte in self.state_dir.to_string_lossy().bytes() {
            hash ^= u64::from(byte);
            hash = hash.wrapping_mul(0x0100_0000_01b3);
        }
        format!("{:08x}", hash >> 32)
    }

    /// Every path under `home`, the runtime directory at `home/run`: a
    /// self-contained tree for tests and benchmarks.
    pub fn under(home: &Path) -> Result<Self> {
        let home = home.to_path_buf();
        // SAFETY: getuid has no preconditions and cannot fail.
        let uid = unsafe { libc::getuid() };
        Self::from_vars(
            |name| match name {
                "HOME" => Some(home.clone().into()),
                "XDG_RUNTIME_DIR" => Some(home.join("run").into()),
                _ => None,
            },
            uid,
        )
    }

    pub fn vm_dir(&self, vm_id: &str) -> PathBuf {
        self.vms_dir.join(vm_id)
    }

    /// Creates the state directories (mode 0755 per umask) and the runtime
    /// directory (0700, owned by us), as the daemon needs them.
    pub fn ensure_daemon_dirs(&self) -> Result<()> {
        for dir in [
            &self.state_dir,
            &self.vms_dir,
            &self.images_dir,
            &self.cache_dir,
        ] {
            std::fs::create_dir_all(dir).map_err(|e| PathsError::CreateDir(dir.clone(), e))?;
        }
        ensure_private_dir(&self.runtime_dir)
    }
}

/// Creates `dir` with mode 0700, or tightens an existing one we own. A
/// directory owned by someone else is refused: they could swap our socket.
pub fn ensure_private_dir(dir: &Path) -> Result<()> {
    if let Some(parent) = dir.parent() {
        std::fs::create_dir_all(parent).map_err(|e| PathsError::CreateDir(parent.into(), e))?;
    }
    match std::fs::DirBuilder::new().mode(0o700).create(dir) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {}
        Err(e) => return Err(PathsError::CreateDir(dir.into(), e)),
    }
    let meta = std::fs::metadata(dir).map_err(|e| PathsError::SecureDir(dir.into(), e))?;
    // SAFETY: getuid has no preconditions and cannot fail.
    let uid = unsafe { libc::getuid() };
    if meta.uid() != uid {
        return Err(PathsError::ForeignRuntimeDir {
            path: dir.into(),
            owner: meta.uid(),
            uid,
        });
    }
    if meta.permissions().mode() & 0o777 != 0o700 {
        std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700))
            .map_err(|e| PathsError::SecureDir(dir.into(), e))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    fn lookup(vars: &[(&str, &str)]) -> impl Fn(&str) -> Option<OsString> {
        let map: HashMap<String, String> = vars
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        move |name| map.get(name).map(OsString::from)
    }

    #[test]
    fn defaults_follow_the_seed_layout() {
        let paths = Paths::from_vars(
            lookup(&[("HOME", "/home/u"), ("XDG_RUNTIME_DIR", "/run/user/1000")]),
            1000,
        )
        .unwrap();
        assert_eq!(
            paths.config_file,
            Path::new("/home/u/.config/banger/config.toml")
        );
        assert_eq!(paths.state_dir, Path::new("/home/u/.local/state/banger"));
        assert_eq!(paths.cache_dir, Path::new("/home/u/.cache/banger"));
        assert_eq!(
            paths.socket,
            Path::new("/run/user/1000/banger/bangerd.sock")
        );
        assert_eq!(
            paths.log_file,
            Path::new("/home/u/.local/state/banger/bangerd.log")
        );
        assert_eq!(
            paths.vm_dir("abc"),
            Path::new("/home/u/.local/state/banger/vms/abc")
        );
    }

    #[test]
    fn xdg_variables_win_and_runtime_falls_back_to_tmp() {
        let paths = Paths::from_vars(
            lookup(&[
                ("HOME", "/home/u"),
                ("XDG_CONFIG_HOME", "/c"),
                ("XDG_STATE_HOME", "/s"),
                ("XDG_CACHE_HOME", "/k"),
            ]),
            42,
        )
        .unwrap();
        assert_eq!(paths.config_dir, Path::new("/c/banger"));
        assert_eq!(paths.state_dir, Path::new("/s/banger"));
        assert_eq!(paths.cache_dir, Path::new("/k/banger"));
        assert_eq!(paths.socket, Path::new("/tmp/banger-42/bangerd.sock"));
    }

    #[test]
    fn relative_xdg_values_are_refused_by_name() {
        let err =
            Paths::from_vars(lookup(&[("HOME", "/h"), ("XDG_STATE_HOME", "rel")]), 1).unwrap_err();
        assert!(err.to_string().contains("XDG_STATE_HOME"), "{err}");
    }

    #[test]
    fn private_dir_is_0700() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("rt");
        std::fs::create_dir(&dir).unwrap();
        std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o755)).unwrap();
        ensure_private_dir(&dir).unwrap();
        let mode = std::fs::metadata(&dir).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o700);
    }
}
