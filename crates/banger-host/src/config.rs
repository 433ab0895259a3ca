//! `~/.config/banger/config.toml`: every key the seed names, plus banger's own.
//! Unknown keys and bad values are errors naming the key, the line and the
//! expected form; environment variables override the file.

use std::ffi::OsString;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use serde::Deserialize;
use thiserror::Error;

pub const DEFAULT_DNS_LISTEN: &str = "127.0.0.1:42069";
/// Private, and clear of Docker's and libvirt's usual networks.
pub const DEFAULT_GUEST_IP_POOL: &str = "10.219.0.0/24";
pub const ENV_RUNTIME_DIR: &str = "BANGER_RUNTIME_DIR";
pub const ENV_LOG_LEVEL: &str = "BANGER_LOG_LEVEL";

#[derive(Debug, Error)]
pub enum ConfigError {
    #[error("reading {0}")]
    Read(PathBuf, #[source] std::io::Error),
    #[error("{path} line {line}{key}: {message}", key = key.as_deref().map(|k| format!(", key `{k}`")).unwrap_or_default())]
    Parse {
        path: PathBuf,
        line: usize,
        key: Option<String>,
        message: String,
    },
    #[error("{var}={value:?} is not valid: {expected}")]
    Env {
        var: &'static str,
        value: String,
        expected: &'static str,
    },
}

pub type Result<T, E = ConfigError> = std::result::Result<T, E>;

#[derive(Debug, Clone, Copy, Default, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum LogLevel {
    Debug,
    #[default]
    Info,
    Warn,
    Error,
}

impl LogLevel {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Debug => "debug",
            Self::Info => "info",
            Self::Warn => "warn",
            Self::Error => "error",
        }
    }

    pub fn parse(text: &str) -> Option<Self> {
        [Self::Debug, Self::Info, Self::Warn, Self::Error]
            .into_iter()
            .find(|l| l.as_str().eq_ignore_ascii_case(text.trim()))
    }
}

/// Which VMM runs new VMs. `auto` picks Firecracker where it can boot guests.
#[derive(Debug, Clone, Copy, Default, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum VmmChoice {
    #[default]
    Auto,
    Firecracker,
    Qemu,
}

/// The file as written. Every field is optional; [`Config`] holds the result.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct ConfigFile {
    log_level: Option<LogLevel>,
    runtime_dir: Option<PathBuf>,
    firecracker_bin: Option<PathBuf>,
    ssh_key_path: Option<PathBuf>,
    namegen_path: Option<PathBuf>,
    customize_script: Option<PathBuf>,
    vsock_ping_helper_path: Option<PathBuf>,
    default_rootfs: Option<PathBuf>,
    default_base_rootfs: Option<PathBuf>,
    default_kernel: Option<PathBuf>,
    default_initrd: Option<PathBuf>,
    default_modules_dir: Option<PathBuf>,
    default_packages_file: Option<PathBuf>,
    #[serde(default)]
    image_sources: std::collections::BTreeMap<String, SourceSettingFile>,
    vmm: Option<VmmChoice>,
    dns_listen: Option<String>,
    guest_ip_pool: Option<String>,
    bridge: Option<String>,
}

/// An `image_sources` entry as written: a URL or path, or a table that
/// also pins what is there (for a mirror of another version).
#[derive(Debug, Deserialize)]
#[serde(untagged)]
enum SourceSettingFile {
    Place(String),
    Pinned { place: String, sha256: String },
}

/// Where one pinned source comes from instead of its upstream.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SourceOverride {
    /// A URL, or a local file (resolved like every path here).
    pub place: String,
    /// The SHA-256 of its tar, replacing banger's pin; `None` keeps it.
    pub sha256: Option<String>,
}

/// Why banger refuses a key of the Go original that it does not use, rather
/// than ignore it: a setting that silently does nothing is worse than an
/// error that names it.
const UNUSED_BY_NATIVE_BUILDS: &str =
    "banger runs no customize script (image builds are native): remove the key";

/// Settings in force: file values, environment overrides applied, relative
/// paths resolved against the config directory, `~/` against HOME.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Config {
    pub log_level: LogLevel,
    /// Set explicitly (file or `BANGER_RUNTIME_DIR`); otherwise found next to the binary.
    pub runtime_dir: Option<PathBuf>,
    pub firecracker_bin: Option<PathBuf>,
    pub ssh_key_path: Option<PathBuf>,
    pub namegen_path: Option<PathBuf>,
    /// Where doctor looks for the guest helper (images carry their own copy).
    pub vsock_ping_helper_path: Option<PathBuf>,
    pub default_rootfs: Option<PathBuf>,
    pub default_kernel: Option<PathBuf>,
    pub default_initrd: Option<PathBuf>,
    pub default_modules_dir: Option<PathBuf>,
    /// `image build`'s base when `--base` is not given.
    pub default_base_rootfs: Option<PathBuf>,
    /// `image build`'s apt packages when `--packages` is not given.
    pub default_packages_file: Option<PathBuf>,
    /// Where `image build` downloads a pinned source from instead of its
    /// upstream, by source key (see `banger_host::image_sources`).
    pub image_sources: std::collections::BTreeMap<String, SourceOverride>,
    pub vmm: VmmChoice,
    pub dns_listen: SocketAddr,
    /// IPv4 CIDR: the bridge takes the first address, guests the rest.
    /// Parsed once, here; everything downstream takes the `Pool`.
    pub guest_ip_pool: crate::net::Pool,
    /// Whether config.toml names the pool. The default gives way to a host
    /// route (see `net::choose_pool`); a pool the user chose never does.
    pub guest_ip_pool_explicit: bool,
    /// The bridge this daemon's TAPs join; it is this daemon's alone.
    pub bridge: String,
}

impl Default for Config {
    fn default() -> Self {
        Self::from_file(ConfigFile::default(), Path::new("/"), Path::new("/"))
    }
}

impl Config {
    /// Loads `path` (a missing file means defaults) and applies the environment.
    pub fn load(path: &Path, home: &Path, env: impl Fn(&str) -> Option<OsString>) -> Result<Self> {
        let text = match std::fs::read_to_string(path) {
            Ok(text) => text,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => String::new(),
            Err(e) => return Err(ConfigError::Read(path.into(), e)),
        };
        let mut config = Self::parse(&text, path, home)?;
        config.apply_env(env)?;
        Ok(config)
    }

    pub fn parse(text: &str, path: &Path, home: &Path) -> Result<Self> {
        let file: ConfigFile = toml::from_str(text).map_err(|e| toml_error(text, path, &e))?;
        let key_error = |key: &str, message: String| {
            let line = text
                .lines()
                .position(|l| l.trim_start().trim_start_matches('"').starts_with(key))
                .map_or(1, |i| i + 1);
            ConfigError::Parse {
                path: path.into(),
                line,
                key: Some(key.into()),
                message,
            }
        };
        if let Some((key, why)) = file.unused_key() {
            return Err(key_error(key, why.to_owned()));
        }
        let guest_ip_pool = match &file.guest_ip_pool {
            Some(text) => Some(
                crate::net::Pool::parse(text)
                    .map_err(|e| key_error("guest_ip_pool", e.to_string()))?,
            ),
            None => None,
        };
        if let Some(bridge) = &file.bridge
            && !valid_interface_name(bridge)
        {
            return Err(key_error(
                "bridge",
                format!(
                    "invalid interface name {:?}: use 1 to 15 characters from a-z, 0-9, '-' and '_' (like banger1)",
                    banger_proto::validate::clip(bridge)
                ),
            ));
        }
        let dns_listen = match &file.dns_listen {
            Some(text) => Some(text.parse::<SocketAddr>().map_err(|_| {
                key_error(
                    "dns_listen",
                    format!(
                        "invalid address {text:?}: use IP:PORT, like {DEFAULT_DNS_LISTEN} (port 0 picks a free port)"
                    ),
                )
            })?),
            None => None,
        };
        let base = path.parent().unwrap_or(Path::new("/"));
        let mut config = Self::from_file(file, base, home);
        if let Some(addr) = dns_listen {
            config.dns_listen = addr;
        }
        if let Some(pool) = guest_ip_pool {
            config.guest_ip_pool = pool;
        }
        Ok(config)
    }

    /// The file's paths resolved; `dns_listen` and `guest_ip_pool` (checked
    /// in `parse`) are the defaults.
    fn from_file(file: ConfigFile, base: &Path, home: &Path) -> Self {
        let resolve = |p: Option<PathBuf>| p.map(|p| resolve_path(&p, base, home));
        Self {
            log_level: file.log_level.unwrap_or_default(),
            runtime_dir: resolve(file.runtime_dir),
            firecracker_bin: resolve(file.firecracker_bin),
            ssh_key_path: resolve(file.ssh_key_path),
            namegen_path: resolve(file.namegen_path),
            vsock_ping_helper_path: resolve(file.vsock_ping_helper_path),
            default_rootfs: resolve(file.default_rootfs),
            default_kernel: resolve(file.default_kernel),
            default_initrd: resolve(file.default_initrd),
            default_modules_dir: resolve(file.default_modules_dir),
            default_base_rootfs: resolve(file.default_base_rootfs),
            default_packages_file: resolve(file.default_packages_file),
            image_sources: file
                .image_sources
                .into_iter()
                .map(|(key, setting)| {
                    let (place, sha256) = match setting {
                        SourceSettingFile::Place(place) => (place, None),
                        SourceSettingFile::Pinned { place, sha256 } => (place, Some(sha256)),
                    };
                    let place = if place.contains("://") {
                        place
                    } else {
                        resolve_path(Path::new(&place), base, home)
                            .to_string_lossy()
                            .into_owned()
                    };
                    (key, SourceOverride { place, sha256 })
                })
                .collect(),
            vmm: file.vmm.unwrap_or_default(),
            dns_listen: DEFAULT_DNS_LISTEN
                .parse()
                .expect("the default DNS address parses"),
            guest_ip_pool_explicit: file.guest_ip_pool.is_some(),
            guest_ip_pool: crate::net::Pool::parse(DEFAULT_GUEST_IP_POOL)
                .expect("the default pool parses"),
            bridge: file.bridge.unwrap_or_else(|| crate::net::BRIDGE.to_owned()),
        }
    }

    fn apply_env(&mut self, env: impl Fn(&str) -> Option<OsString>) -> Result<()> {
        if let Some(value) = env(ENV_LOG_LEVEL).filter(|v| !v.is_empty()) {
            let text = value.to_string_lossy().into_owned();
            self.log_level = LogLevel::parse(&text).ok_or(ConfigError::Env {
                var: ENV_LOG_LEVEL,
                value: text,
                expected: "use one of debug, info, warn, error",
            })?;
        }
        if let Some(value) = env(ENV_RUNTIME_DIR).filter(|v| !v.is_empty()) {
            let path = PathBuf::from(&value);
            if !path.is_absolute() {
                return Err(ConfigError::Env {
                    var: ENV_RUNTIME_DIR,
                    value: value.to_string_lossy().into_owned(),
                    expected: "use an absolute path to a runtime bundle directory",
                });
            }
            self.runtime_dir = Some(path);
        }
        Ok(())
    }
}

/// A TOML error as a config error: the line, and the key on it if any.
fn toml_error(text: &str, path: &Path, e: &toml::de::Error) -> ConfigError {
    let offset = e.span().map(|s| s.start).unwrap_or(0).min(text.len());
    let line = text[..offset].matches('\n').count() + 1;
    let key = text
        .lines()
        .nth(line - 1)
        .and_then(|l| l.split_once('='))
        .map(|(k, _)| k.trim().trim_matches('"').to_owned())
        .filter(|k| !k.is_empty());
    ConfigError::Parse {
        path: path.into(),
        line,
        key,
        message: e.message().trim().to_owned(),
    }
}

impl ConfigFile {
    /// The first seed key this banger does not use yet, and why.
    fn unused_key(&self) -> Option<(&'static str, &'static str)> {
        [(
            "customize_script",
            self.customize_script.is_some(),
            UNUSED_BY_NATIVE_BUILDS,
        )]
        .into_iter()
        .find(|(_, set, _)| *set)
        .map(|(key, _, why)| (key, why))
    }
}

/// A Linux interface name banger accepts: short enough for IFNAMSIZ, and
/// nothing `ip` would read as an option or a path.
fn valid_interface_name(name: &str) -> bool {
    (1..=15).contains(&name.len())
        && !name.starts_with('-')
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'_')
}

fn resolve_path(path: &Path, base: &Path, home: &Path) -> PathBuf {
    if let Ok(rest) = path.strip_prefix("~") {
        home.join(rest)
    } else if path.is_absolute() {
        path.to_path_buf()
    } else {
        base.join(path)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn no_env(_: &str) -> Option<OsString> {
        None
    }

    fn parse(text: &str) -> Result<Config> {
        Config::parse(
            text,
            Path::new("/home/u/.config/banger/config.toml"),
            Path::new("/home/u"),
        )
    }

    #[test]
    fn every_used_seed_key_is_accepted() {
        let config = parse(
            r#"
log_level = "debug"
runtime_dir = "/opt/banger"
firecracker_bin = "/usr/bin/firecracker"
ssh_key_path = "~/.ssh/id_ed25519"
namegen_path = "names.txt"
vsock_ping_helper_path = "/opt/pingd"
default_rootfs = "/r/rootfs-docker.ext4"
default_kernel = "/r/vmlinux"
default_initrd = "/r/initrd.img"
default_modules_dir = "/r/modules"
vmm = "qemu"
dns_listen = "127.0.0.1:5353"
guest_ip_pool = "10.50.0.0/24"
bridge = "banger-ci"
"#,
        )
        .unwrap();
        assert_eq!(config.log_level, LogLevel::Debug);
        assert_eq!(
            config.runtime_dir.as_deref(),
            Some(Path::new("/opt/banger"))
        );
        assert_eq!(
            config.ssh_key_path.as_deref(),
            Some(Path::new("/home/u/.ssh/id_ed25519"))
        );
        assert_eq!(
            config.namegen_path.as_deref(),
            Some(Path::new("/home/u/.config/banger/names.txt"))
        );
        assert_eq!(config.vmm, VmmChoice::Qemu);
        assert_eq!(config.dns_listen.to_string(), "127.0.0.1:5353");
        assert_eq!(config.guest_ip_pool.to_string(), "10.50.0.0/24");
        assert_eq!(config.bridge, "banger-ci");
        assert_eq!(parse("").unwrap().bridge, "banger0");
        assert_eq!(
            config.default_kernel.as_deref(),
            Some(Path::new("/r/vmlinux"))
        );
    }

    #[test]
    fn the_seed_key_banger_does_not_use_is_refused_with_the_reason() {
        let msg = parse("log_level = \"info\"\ncustomize_script = \"/x\"\n")
            .unwrap_err()
            .to_string();
        assert!(
            msg.contains("line 2")
                && msg.contains("key `customize_script`")
                && msg.contains("image builds are native")
                && msg.contains("remove the key"),
            "{msg}"
        );
    }

    #[test]
    fn image_build_keys_resolve_paths_and_keep_urls() {
        let config = parse(
            "default_base_rootfs = \"base.ext4\"\ndefault_packages_file = \"~/pk.apt\"\n\
             [image_sources]\nmise = \"https://mirror.example/mise.tgz\"\n\
             tmux_resurrect = { place = \"plugins/r.tar.gz\", sha256 = \"ab\" }\n",
        )
        .unwrap();
        assert_eq!(
            config.default_base_rootfs.as_deref(),
            Some(Path::new("/home/u/.config/banger/base.ext4"))
        );
        assert_eq!(
            config.default_packages_file.as_deref(),
            Some(Path::new("/home/u/pk.apt"))
        );
        assert_eq!(
            config.image_sources["mise"],
            SourceOverride {
                place: "https://mirror.example/mise.tgz".into(),
                sha256: None
            }
        );
        assert_eq!(
            config.image_sources["tmux_resurrect"],
            SourceOverride {
                place: "/home/u/.config/banger/plugins/r.tar.gz".into(),
                sha256: Some("ab".into())
            }
        );
    }

    #[test]
    fn empty_file_means_defaults() {
        let config = parse("").unwrap();
        assert_eq!(config.log_level, LogLevel::Info);
        assert_eq!(config.vmm, VmmChoice::Auto);
        assert_eq!(config.dns_listen.to_string(), DEFAULT_DNS_LISTEN);
        assert_eq!(config.runtime_dir, None);
    }

    #[test]
    fn unknown_key_names_key_and_line() {
        let err = parse("log_level = \"info\"\n\nfirecraker_bin = \"/x\"\n").unwrap_err();
        let msg = err.to_string();
        assert!(msg.contains("line 3"), "{msg}");
        assert!(msg.contains("key `firecraker_bin`"), "{msg}");
        assert!(
            msg.contains("firecracker_bin"),
            "the expected keys are listed: {msg}"
        );
    }

    #[test]
    fn bad_value_names_key_line_and_expected_form() {
        let msg = parse("\nlog_level = \"verbose\"\n")
            .unwrap_err()
            .to_string();
        assert!(
            msg.contains("line 2") && msg.contains("key `log_level`"),
            "{msg}"
        );
        assert!(msg.contains("debug") && msg.contains("error"), "{msg}");
        let msg = parse("\ndns_listen = \"localhost\"\n")
            .unwrap_err()
            .to_string();
        assert_eq!(
            msg,
            "/home/u/.config/banger/config.toml line 2, key `dns_listen`: invalid address \"localhost\": use IP:PORT, like 127.0.0.1:42069 (port 0 picks a free port)"
        );
        for bad in ["a-name-far-too-long", "-x", "Br0", "br 0", ""] {
            let msg = parse(&format!("bridge = \"{bad}\"\n"))
                .unwrap_err()
                .to_string();
            assert!(
                msg.contains("key `bridge`") && msg.contains("1 to 15 characters"),
                "{bad}: {msg}"
            );
        }
        let msg = parse("vmm = 3\n").unwrap_err().to_string();
        assert!(msg.contains("key `vmm`"), "{msg}");
        let msg = parse("log_level = \"info\"\nguest_ip_pool = \"10.0.0.1/24\"\n")
            .unwrap_err()
            .to_string();
        assert!(
            msg.contains("line 2") && msg.contains("guest_ip_pool") && msg.contains("CIDR"),
            "{msg}"
        );
    }

    #[test]
    fn environment_overrides_the_file() {
        let tmp = tempfile::tempdir().unwrap();
        let path = tmp.path().join("config.toml");
        std::fs::write(
            &path,
            "log_level = \"error\"\nruntime_dir = \"/from/file\"\n",
        )
        .unwrap();
        let env = |name: &str| match name {
            ENV_LOG_LEVEL => Some(OsString::from("warn")),
            ENV_RUNTIME_DIR => Some(OsString::from("/from/env")),
            _ => None,
        };
        let config = Config::load(&path, Path::new("/h"), env).unwrap();
        assert_eq!(config.log_level, LogLevel::Warn);
        assert_eq!(config.runtime_dir.as_deref(), Some(Path::new("/from/env")));

        let config = Config::load(&path, Path::new("/h"), no_env).unwrap();
        assert_eq!(config.log_level, LogLevel::Error);
    }

    #[test]
    fn bad_environment_values_name_the_variable() {
        let env = |name: &str| (name == ENV_LOG_LEVEL).then(|| OsString::from("loud"));
        let msg = Config::load(Path::new("/nonexistent"), Path::new("/h"), env)
            .unwrap_err()
            .to_string();
        assert!(
            msg.contains("BANGER_LOG_LEVEL") && msg.contains("\"loud\""),
            "{msg}"
        );
    }
}
