//! Looking at the host for `banger doctor` and for preflight: programs on
//! PATH, device nodes, kernel modules, our user. Every location comes from
//! a [`Probe`], so tests point it at a temp tree.

use std::ffi::CString;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

use banger_proto::check::Check;

use crate::process::package_of;

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
}

impl Probe {
    pub fn host() -> Self {
        let mut path: Vec<PathBuf> = std::env::var_os("PATH")
            .map(|p| std::env::split_paths(&p).collect())
            .unwrap_or_default();
        // Root's tools (e2fsprogs, iptables) live in sbin, which a user's PATH may lack.
        path.extend(["/usr/sbin", "/sbin"].map(PathBuf::from));
        Self {
            path,
            dev: "/dev".into(),
            sys: "/sys".into(),
            proc_dir: "/proc".into(),
            // SAFETY: geteuid has no preconditions and cannot fail.
            euid: unsafe { libc::geteuid() },
        }
    }

    /// The first executable `name` on the probe's PATH.
    pub fn find(&self, name: &str) -> Option<PathBuf> {
        self.path
            .iter()
            .map(|dir| dir.join(name))
            .find(|p| is_executable(p))
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
        if accessible(&path, libc::R_OK | libc::W_OK) {
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

    pub fn hardware_virtualization(&self) -> bool {
        std::fs::read_to_string(self.proc_dir.join("cpuinfo"))
            .map(|t| {
                t.lines()
                    .any(|l| l.starts_with("flags") && (l.contains(" vmx") || l.contains(" svm")))
            })
            .unwrap_or(false)
    }
}

fn is_executable(path: &Path) -> bool {
    path.is_file() && accessible(path, libc::X_OK)
}

fn accessible(path: &Path, mode: libc::c_int) -> bool {
    let Ok(c_path) = CString::new(path.as_os_str().as_bytes()) else {
        return false;
    };
    // SAFETY: c_path is a valid NUL-terminated string for the duration of the call.
    unsafe { libc::access(c_path.as_ptr(), mode) == 0 }
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
