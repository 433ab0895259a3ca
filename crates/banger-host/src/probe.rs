//! Looking at the host for `banger doctor` and for preflight: programs on
//! PATH, device nodes, kernel modules, our user. Every location comes from
//! a [`Probe`], so tests point it at a temp tree.

use std::ffi::CString;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

use banger_proto::check::Check;

use crate::process::package_of;

pub const TUN_FIX: &str = "load the tun module (sudo modprobe tun)";

// The checks the network code asks for at preflight live here, beside the
// probe, so `net` needs no part of `doctor` (which needs `config`, which
// needs `net`).
/// What a VM's network needs: `ip`, `/dev/net/tun`, and root or sudo.
pub fn network_checks(probe: &Probe) -> Vec<Check> {
    vec![
        probe.tool("ip", "TAP devices"),
        probe.device("net/tun", TUN_FIX, TUN_FIX),
        privilege(probe),
    ]
}

pub fn nat_checks(probe: &Probe) -> Vec<Check> {
    vec![probe.tool("iptables", "NAT"), probe.tool("sysctl", "NAT")]
}

/// Root, or sudo without a password.
pub fn privilege(probe: &Probe) -> Check {
    if probe.euid == 0 {
        return Check::pass("privileges", "running as root");
    }
    let Some(sudo) = probe.find("sudo") else {
        return Check::fail(
            "privileges",
            "not root and sudo is missing",
            "install sudo, or run bangerd as root",
        );
    };
    let ok = std::process::Command::new(sudo)
        .args(["-n", "true"])
        .output()
        .is_ok_and(|o| o.status.success());
    if ok {
        Check::pass("privileges", "sudo works without a password")
    } else {
        Check::fail(
            "privileges",
            "sudo asks for a password",
            "allow ip, iptables and sysctl without a password in sudoers, or run bangerd as root",
        )
    }
}

#[derive(Debug, Clone)]
pub struct Probe {
    pub path: Vec<PathBuf>,
    /// `/dev`
    pub dev: PathBuf,
    /// `/sys`
    pub sys: PathBuf,
    /// `/proc`
    pub proc_dir: PathBuf,
    pub euid: u32,
    /// How file access is decided: the kernel's `access(2)` on the real
    /// host; the mode bits for a given user in tests, since the tests run
    /// as root (CI), for whom `access(2)` allows nearly everything.
    pub access: Access,
}

/// Who decides whether this user may read, write or run a file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Access {
    /// `access(2)` for the real user of this process.
    Kernel,
    /// The owner, group and other bits, for `uid` with the groups `gids`.
    ModeBits { uid: u32, gids: Vec<u32> },
}

impl Access {
    /// Whether `mode` (`R_OK | W_OK | X_OK` bits) is allowed on `path`.
    pub fn allows(&self, path: &Path, mode: libc::c_int) -> bool {
        match self {
            Self::Kernel => {
                let Ok(c_path) = CString::new(path.as_os_str().as_bytes()) else {
                    return false;
                };
                // SAFETY: c_path is a valid NUL-terminated string for the duration of the call.
                unsafe { libc::access(c_path.as_ptr(), mode) == 0 }
            }
            Self::ModeBits { uid, gids } => {
                use std::os::unix::fs::MetadataExt;
                let Ok(meta) = std::fs::metadata(path) else {
                    return false;
                };
                let shift = if meta.uid() == *uid {
                    6
                } else if gids.contains(&meta.gid()) {
                    3
                } else {
                    0
                };
                let granted = (meta.mode() >> shift) & 0o7;
                let wanted = u32::try_from(mode & 0o7).unwrap_or(0o7);
                granted & wanted == wanted
            }
        }
    }
}

impl Probe {
    pub fn host() -> Self {
        let mut path: Vec<PathBuf> = std::env::var_os("PATH")
            .map(|p| std::env::split_paths(&p).collect())
            .unwrap_or_default();
        // Root's tools (e2fsprogs, iptables) live in sbin, which a user's PATH
        // may lack; `cargo install` (vhost-device-vsock) puts tools in ~/.cargo/bin.
        path.extend(["/usr/sbin", "/sbin"].map(PathBuf::from));
        path.extend(std::env::var_os("HOME").map(|home| PathBuf::from(home).join(".cargo/bin")));
        Self {
            path,
            dev: "/dev".into(),
            sys: "/sys".into(),
            proc_dir: "/proc".into(),
            // SAFETY: geteuid has no preconditions and cannot fail.
            euid: unsafe { libc::geteuid() },
            access: Access::Kernel,
        }
    }

    /// The first executable `name` on the probe's PATH.
    pub fn find(&self, name: &str) -> Option<PathBuf> {
        self.path
            .iter()
            .map(|dir| dir.join(name))
            .find(|p| p.is_file() && self.access.allows(p, libc::X_OK))
    }

    /// A program a feature needs.
    pub fn tool(&self, name: &str, needed_for: &str) -> Check {
        match self.find(name) {
            Some(path) => Check::pass(name, path.display().to_string()),
            None => Check::fail(
                name,
                format!("not found on PATH (needed for {needed_for})"),
                format!("install {}", package_of(name)),
            ),
        }
    }

    /// A device node this user must read and write.
    pub fn device(&self, node: &str, missing_fix: &str, access_fix: &str) -> Check {
        let path = self.dev.join(node.trim_start_matches("/dev/"));
        let name = format!("/dev/{}", node.trim_start_matches("/dev/"));
        if !path.exists() {
            return Check::fail(name, "does not exist", missing_fix);
        }
        if self.access.allows(&path, libc::R_OK | libc::W_OK) {
            Check::pass(name, "readable and writable")
        } else {
            Check::fail(
                name,
                format!("not readable and writable by uid {}", self.euid),
                access_fix,
            )
        }
    }

    /// Whether the loaded KVM is PVM (paravirtualized nested KVM), on which
    /// ordinary guest kernels fail with KVM_EXIT_INTERNAL_ERROR.
    pub fn kvm_is_pvm(&self) -> bool {
        self.sys.join("module/kvm_pvm").exists()
    }

    /// The loaded KVM vendor module (`kvm_amd`, `kvm_intel`), if any.
    pub fn kvm_vendor_module(&self) -> Option<&'static str> {
        ["kvm_amd", "kvm_intel"]
            .into_iter()
            .find(|m| self.sys.join("module").join(m).exists())
    }

    pub fn hardware_virtualization(&self) -> bool {
        std::fs::read_to_string(self.proc_dir.join("cpuinfo"))
            .map(|t| {
                t.lines()
                    .any(|l| l.starts_with("flags") && (l.contains(" vmx") || l.contains(" svm")))
            })
            .unwrap_or(false)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use banger_proto::check::CheckStatus;
    use std::os::unix::fs::PermissionsExt;

    fn probe(dir: &Path) -> Probe {
        Probe {
            path: vec![dir.join("bin")],
            dev: dir.join("dev"),
            sys: dir.join("sys"),
            proc_dir: dir.join("proc"),
            euid: 1000,
            access: Access::ModeBits {
                uid: 1000,
                gids: vec![1000],
            },
        }
    }

    /// A probe for a user who owns none of the test's files, whoever runs
    /// the tests.
    fn stranger_probe(dir: &Path) -> Probe {
        Probe {
            euid: 4242,
            access: Access::ModeBits {
                uid: 4242,
                gids: vec![4242],
            },
            ..probe(dir)
        }
    }

    #[test]
    fn tools_are_found_on_path_or_named_with_their_package() {
        let tmp = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(tmp.path().join("bin")).unwrap();
        let probe = probe(tmp.path());
        let missing = probe.tool("mkfs.ext4", "VM disks");
        assert_eq!(missing.status, CheckStatus::Fail);
        assert_eq!(
            missing.message(),
            "mkfs.ext4: not found on PATH (needed for VM disks): install e2fsprogs"
        );
        let tool = tmp.path().join("bin/mkfs.ext4");
        std::fs::write(&tool, "#!/bin/sh\n").unwrap();
        std::fs::set_permissions(&tool, std::fs::Permissions::from_mode(0o755)).unwrap();
        assert_eq!(
            probe.tool("mkfs.ext4", "VM disks").status,
            CheckStatus::Pass
        );
    }

    #[test]
    fn devices_must_exist_and_be_usable() {
        let tmp = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(tmp.path().join("dev")).unwrap();
        let probe = probe(tmp.path());
        let check = probe.device("kvm", "enable KVM", "add the user to group kvm");
        assert_eq!(check.message(), "/dev/kvm: does not exist: enable KVM");
        std::fs::write(tmp.path().join("dev/kvm"), "").unwrap();
        std::fs::set_permissions(
            tmp.path().join("dev/kvm"),
            std::fs::Permissions::from_mode(0o666),
        )
        .unwrap();
        assert_eq!(probe.device("kvm", "x", "y").status, CheckStatus::Pass);
    }

    /// Debian's /dev/kvm is root:kvm 0660: a user outside group kvm gets
    /// the access fix, one in it passes. Decided from the mode bits for uid
    /// 1000, so it holds when the tests run as root.
    #[test]
    fn a_device_this_user_cannot_use_names_the_fix() {
        let tmp = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(tmp.path().join("dev")).unwrap();
        let kvm = tmp.path().join("dev/kvm");
        std::fs::write(&kvm, "").unwrap();
        std::fs::set_permissions(&kvm, std::fs::Permissions::from_mode(0o660)).unwrap();
        let mut probe = stranger_probe(tmp.path());
        let check = probe.device("kvm", "enable KVM", "add the user to group kvm");
        assert_eq!(check.status, CheckStatus::Fail);
        assert_eq!(
            check.message(),
            "/dev/kvm: not readable and writable by uid 4242: add the user to group kvm"
        );
        let group = std::os::unix::fs::MetadataExt::gid(&kvm.metadata().unwrap());
        probe.access = Access::ModeBits {
            uid: 4242,
            gids: vec![4242, group],
        };
        assert_eq!(probe.device("kvm", "x", "y").status, CheckStatus::Pass);
        std::fs::set_permissions(&kvm, std::fs::Permissions::from_mode(0o640)).unwrap();
        assert_eq!(
            probe.device("kvm", "x", "y").status,
            CheckStatus::Fail,
            "read-only for the group is not enough"
        );
    }

    #[test]
    fn a_tool_this_user_cannot_run_is_not_found() {
        let tmp = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(tmp.path().join("bin")).unwrap();
        let tool = tmp.path().join("bin/ip");
        std::fs::write(&tool, "#!/bin/sh\n").unwrap();
        std::fs::set_permissions(&tool, std::fs::Permissions::from_mode(0o744)).unwrap();
        let probe = stranger_probe(tmp.path());
        assert_eq!(probe.find("ip"), None, "only the owner's bit is executable");
        std::fs::set_permissions(&tool, std::fs::Permissions::from_mode(0o755)).unwrap();
        assert_eq!(probe.find("ip"), Some(tool));
    }

    #[test]
    fn pvm_and_virtualization_flags() {
        let tmp = tempfile::tempdir().unwrap();
        let probe = probe(tmp.path());
        assert!(!probe.kvm_is_pvm() && !probe.hardware_virtualization());
        std::fs::create_dir_all(tmp.path().join("sys/module/kvm_pvm")).unwrap();
        std::fs::create_dir_all(tmp.path().join("proc")).unwrap();
        std::fs::write(
            tmp.path().join("proc/cpuinfo"),
            "flags\t: fpu vme vmx sse\n",
        )
        .unwrap();
        assert!(probe.kvm_is_pvm() && probe.hardware_virtualization());
    }
}
