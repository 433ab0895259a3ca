//! `banger doctor`: every readiness check, each with a fix. The same check
//! functions back the preflight that create and start run (see the
//! `checks` methods of the host implementations).

use std::net::{SocketAddr, UdpSocket};
use std::path::{Path, PathBuf};
use std::process::Command;

use banger_proto::check::Check;

use crate::config::{Config, VmmChoice};
use crate::probe::{Probe, nat_checks, network_checks};
use crate::runtime_dir;

pub const KVM_MISSING_FIX: &str = "load kvm_intel or kvm_amd, or set vmm = \"qemu\" in config.toml";
pub const KVM_ACCESS_FIX: &str =
    "add your user to group kvm (sudo usermod -aG kvm $USER) and log in again";

/// The storage tools every VM needs.
pub fn storage_checks(probe: &Probe) -> Vec<Check> {
    ["mkfs.ext4", "e2fsck", "resize2fs", "debugfs"]
        .iter()
        .map(|t| probe.tool(t, "VM disks"))
        .collect()
}

pub fn kvm_check(probe: &Probe) -> Check {
    probe.device("kvm", KVM_MISSING_FIX, KVM_ACCESS_FIX)
}

/// The Firecracker binary banger would use: config, bundle, then PATH.
pub fn firecracker_binary(
    probe: &Probe,
    config: &Config,
    bundle: Option<&Path>,
) -> Option<PathBuf> {
    config
        .firecracker_bin
        .clone()
        .or_else(|| {
            bundle
                .map(|b| b.join("firecracker"))
                .filter(|p| p.is_file())
        })
        .or_else(|| probe.find("firecracker"))
}

/// The `vhost-device-vsock` the qemu backend runs (`cargo install` puts
/// it in `~/.cargo/bin`, which the probe's PATH includes).
pub fn vsock_helper_binary(probe: &Probe) -> Option<PathBuf> {
    probe.find("vhost-device-vsock")
}

fn version_of(binary: &Path) -> Option<String> {
    let child = Command::new(binary).arg("--version").output().ok()?;
    let text = String::from_utf8_lossy(&child.stdout);
    text.lines()
        .next()
        .map(|l| l.trim().to_owned())
        .filter(|l| !l.is_empty())
}

#[derive(Debug)]
pub struct DoctorInput<'a> {
    pub probe: &'a Probe,
    pub config: &'a Config,
    /// The running binary, for locating the runtime bundle.
    pub exe: &'a Path,
    /// Where this user's running bangerd serves DNS, if one runs.
    pub daemon_dns: Option<SocketAddr>,
    /// This daemon's tag, which marks the bridge it owns.
    pub instance_tag: &'a str,
    /// The host's links and routes ([`IpOutput`] on the real host).
    pub ip: &'a dyn IpQuery,
}

/// Every check on this host, as this process sees it: what the daemon
/// answers `doctor` with, and what the CLI runs when no daemon can start.
pub fn doctor_here(
    config: &Config,
    daemon_dns: Option<SocketAddr>,
    instance_tag: &str,
) -> Vec<Check> {
    let exe = std::env::current_exe().unwrap_or_default();
    doctor(&DoctorInput {
        probe: &Probe::host(),
        config,
        exe: &exe,
        daemon_dns,
        instance_tag,
        ip: &IpOutput,
    })
}

pub fn doctor(input: &DoctorInput<'_>) -> Vec<Check> {
    let mut checks = Vec::new();
    let bundle = bundle_checks(input, &mut checks);
    backend_checks(input, bundle.as_deref(), &mut checks);
    host_checks(input, &mut checks);
    checks
}

/// The runtime bundle, its manifest and each file VMs boot from; the
/// bundle's directory when one was found.
fn bundle_checks(input: &DoctorInput<'_>, checks: &mut Vec<Check>) -> Option<PathBuf> {
    let DoctorInput { config, exe, .. } = *input;
    let bundle = match runtime_dir::resolve(config.runtime_dir.as_deref(), exe) {
        Ok(found) => {
            checks.push(Check::pass(
                "runtime bundle",
                format!("{} ({:?})", found.path.display(), found.source),
            ));
            Some(found.path)
        }
        Err(e) => {
            checks.push(Check::fail("runtime bundle", "not found", e.to_string()));
            None
        }
    };
    if let Some(dir) = &bundle {
        checks.push(
            match crate::bundle::Bundle::load(dir).and_then(|b| b.verify().map(|()| b)) {
                Ok(b) => Check::pass(
                    "bundle.json",
                    format!(
                        "schema {}, {} files, checksums match, kernel {}",
                        b.manifest.schema,
                        b.manifest.files.len(),
                        b.manifest.kernel_version
                    ),
                ),
                Err(e) => Check::fail(
                    "bundle.json",
                    e.to_string(),
                    "rebuild the bundle with `make runtime` or reinstall it",
                ),
            },
        );
    }
    if let Some(dir) = &bundle {
        bundle_file_checks(config, dir, checks);
    }
    bundle
}

/// The kernel, initrd, rootfs, SSH key and guest helper VMs get: the
/// configured paths, else the bundle's.
fn bundle_file_checks(config: &Config, bundle: &Path, checks: &mut Vec<Check>) {
    use crate::bundle::BundleFile;
    let file = |which: BundleFile, configured: &Option<PathBuf>| {
        configured
            .clone()
            .unwrap_or_else(|| bundle.join(which.file_name()))
    };
    // The missing file is named, and the fix with it.
    let present =
        |what: &str, path: PathBuf, missing: fn(&str, String, String) -> Check, fix: &str| {
            if path.is_file() {
                Check::pass(what, path.display().to_string())
            } else {
                missing(
                    what,
                    format!("{} is missing", path.display()),
                    fix.to_owned(),
                )
            }
        };
    for (what, which, configured) in [
        ("kernel", BundleFile::Kernel, &config.default_kernel),
        ("initrd", BundleFile::Initrd, &config.default_initrd),
    ] {
        checks.push(present(
            what,
            file(which, configured),
            fail,
            "run `make runtime` (or set default_kernel/default_initrd)",
        ));
    }
    let rootfs = config.default_rootfs.clone().or_else(|| {
        [BundleFile::RootfsDocker, BundleFile::Rootfs]
            .into_iter()
            .find_map(|f| f.locate(bundle, None))
    });
    checks.push(match rootfs {
        Some(path) if path.is_file() => Check::pass("rootfs", path.display().to_string()),
        _ => Check::fail(
            "rootfs",
            format!(
                "no {} or {} in the bundle",
                BundleFile::RootfsDocker.file_name(),
                BundleFile::Rootfs.file_name()
            ),
            "run `make runtime` (or set default_rootfs)",
        ),
    });
    checks.push(present(
        "ssh key",
        file(BundleFile::SshKey, &config.ssh_key_path),
        fail,
        "run `make runtime` (or set ssh_key_path)",
    ));
    checks.push(present(
        "guest helper",
        file(BundleFile::VsockPingHelper, &config.vsock_ping_helper_path),
        warn,
        "run `make build` to put banger-vsock-pingd in the bundle; without it the post-SSH reminder cannot reach guests",
    ));
}

fn fail(name: &str, detail: String, fix: String) -> Check {
    Check::fail(name, detail, fix)
}

fn warn(name: &str, detail: String, fix: String) -> Check {
    Check::warn(name, detail, fix)
}

/// The VMM backends: Firecracker and KVM, then QEMU and its vsock helper.
fn backend_checks(input: &DoctorInput<'_>, bundle: Option<&Path>, checks: &mut Vec<Check>) {
    let DoctorInput { probe, config, .. } = *input;
    let kvm = kvm_check(probe);
    let kvm_usable = kvm.status == banger_proto::check::CheckStatus::Pass && !probe.kvm_is_pvm();
    match firecracker_binary(probe, config, bundle) {
        Some(path) if path.is_file() => {
            let version = version_of(&path).unwrap_or_else(|| "version unknown".into());
            checks.push(Check::pass(
                "firecracker",
                format!("{version} at {}", path.display()),
            ));
        }
        other => {
            let detail = match other {
                Some(path) => format!("{} does not exist", path.display()),
                None => "not found in the bundle or on PATH".to_owned(),
            };
            let fix =
                "put a firecracker binary in the runtime bundle or on PATH, or set firecracker_bin";
            checks.push(if config.vmm == VmmChoice::Firecracker {
                Check::fail("firecracker", detail, fix)
            } else {
                Check::warn(
                    "firecracker",
                    detail,
                    format!("{fix}; until then VMs use the qemu backend"),
                )
            });
        }
    }
    checks.push(kvm);
    checks.push(if probe.kvm_is_pvm() {
        Check::warn(
            "hardware virtualization",
            "/dev/kvm is PVM (paravirtualized nested KVM): Firecracker starts but guests do not boot",
            "use the qemu backend (vmm = \"qemu\" or \"auto\")",
        )
    } else if probe.hardware_virtualization() {
        Check::pass(
            "hardware virtualization",
            match probe.kvm_vendor_module() {
                Some(module) => format!("CPU has vmx/svm; /dev/kvm is real KVM ({module}), not PVM"),
                None => "CPU has vmx/svm".to_owned(),
            },
        )
    } else {
        Check::warn("hardware virtualization", "CPU shows no vmx/svm flags", "enable virtualization in firmware, or use the qemu backend")
    });
    // The qemu backend: its binary and its vsock helper. Needed (fail)
    // where KVM cannot boot guests, a fallback (warn) where it can.
    let qemu_need = |check: Check| {
        if kvm_usable && check.status == banger_proto::check::CheckStatus::Fail {
            Check::warn(
                check.name,
                format!("{} (only the qemu backend needs it)", check.detail),
                check.fix.unwrap_or_default(),
            )
        } else {
            check
        }
    };
    checks.push(qemu_need(match probe.find("qemu-system-x86_64") {
        Some(path) => Check::pass("qemu", path.display().to_string()),
        None => Check::fail(
            "qemu",
            "qemu-system-x86_64 not found and KVM cannot boot guests here",
            "install qemu-system-x86",
        ),
    }));
    checks.push(qemu_need(match vsock_helper_binary(probe) {
        Some(path) => Check::pass("vhost-device-vsock", path.display().to_string()),
        None => Check::fail(
            "vhost-device-vsock",
            "not found on PATH or in ~/.cargo/bin (the qemu backend's vsock)",
            "cargo install vhost-device-vsock (make deps does)",
        ),
    }));
}

/// Host tools and privileges for storage, network, NAT, SSH and image builds.
fn host_checks(input: &DoctorInput<'_>, checks: &mut Vec<Check>) {
    let DoctorInput {
        probe,
        config,
        daemon_dns,
        instance_tag,
        ip,
        ..
    } = *input;
    checks.extend(storage_checks(probe));
    checks.extend(network_checks(probe));
    // NAT is per VM and optional: its tools are a warning here; a create
    // with --nat refuses without them (preflight).
    checks.extend(nat_checks(probe).into_iter().map(|mut check| {
        if check.status == banger_proto::check::CheckStatus::Fail {
            check.status = banger_proto::check::CheckStatus::Warn;
            check.detail = format!("{} (only VMs with --nat need it)", check.detail);
        }
        check
    }));
    checks.push(probe.tool("ssh", "banger vm ssh"));
    let forwarding =
        std::fs::read_to_string(probe.proc_dir.join("sys/net/ipv4/ip_forward")).unwrap_or_default();
    checks.push(if forwarding.trim() == "1" {
        Check::pass("ip forwarding", "enabled")
    } else {
        Check::warn(
            "ip forwarding",
            "disabled",
            "banger enables it when a VM uses --nat (needs root or sudo)",
        )
    });
    checks.push(dns_port(config.dns_listen, daemon_dns));
    if probe.find("ip").is_some() {
        checks.push(bridge_check(&config.bridge, instance_tag, ip));
        checks.push(pool_check(config, ip));
    }
    // Only `make runtime` needs these: a warning, never a failure.
    for (tool, purpose) in [
        ("mmdebstrap", "make runtime: the images"),
        ("busybox", "make runtime: the initrd"),
        ("cpio", "make runtime: the initrd"),
        ("lz4", "make runtime: unpacking the kernel"),
        ("depmod", "make runtime: the kernel modules"),
    ] {
        let mut check = probe.tool(tool, purpose);
        if check.status == banger_proto::check::CheckStatus::Fail {
            check.status = banger_proto::check::CheckStatus::Warn;
        }
        checks.push(check);
    }
}

fn dns_port(addr: SocketAddr, daemon_dns: Option<SocketAddr>) -> Check {
    let name = format!("DNS {addr}");
    match UdpSocket::bind(addr) {
        Ok(_) => Check::pass(name, "free"),
        Err(_) if daemon_dns == Some(addr) => Check::pass(name, "served by this user's bangerd"),
        Err(e) => Check::warn(
            name,
            match daemon_dns {
                Some(ours) => format!(
                    "cannot listen: {e}; another process holds it (this user's bangerd serves {ours})"
                ),
                None => {
                    format!("cannot listen: {e}; another process (another banger daemon?) holds it")
                }
            },
            "free the port or set dns_listen in config.toml",
        ),
    }
}

/// What doctor asks `ip`; a seam so the conflict checks are testable.
pub trait IpQuery: std::fmt::Debug {
    /// `ip -o -d link show dev NAME`, or `None` when there is no such link.
    fn link(&self, name: &str) -> Option<String>;
    /// `ip -4 route show`.
    fn routes(&self) -> String;
    /// The interfaces attached to bridge `name`.
    fn ports(&self, name: &str) -> Vec<String>;
}

/// The real `ip`.
#[derive(Debug)]
pub struct IpOutput;

impl IpQuery for IpOutput {
    fn link(&self, name: &str) -> Option<String> {
        let out = Command::new("ip")
            .args(["-o", "-d", "link", "show", "dev", name])
            .output()
            .ok()?;
        out.status
            .success()
            .then(|| String::from_utf8_lossy(&out.stdout).into_owned())
    }

    fn ports(&self, name: &str) -> Vec<String> {
        Command::new("ip")
            .args(["-o", "link", "show", "master", name])
            .output()
            .map(|o| crate::net::link_names(&String::from_utf8_lossy(&o.stdout)))
            .unwrap_or_default()
    }

    fn routes(&self) -> String {
        Command::new("ip")
            .args(["-4", "route", "show"])
            .output()
            .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
            .unwrap_or_default()
    }
}

/// Whether the bridge is free or this daemon's (see `net::BRIDGE_ALIAS_PREFIX`).
pub fn bridge_check(bridge: &str, instance_tag: &str, ip: &dyn IpQuery) -> Check {
    let name = format!("bridge {bridge}");
    let Some(shown) = ip.link(bridge) else {
        return Check::pass(name, "not there yet; made at the first VM start");
    };
    match crate::net::bridge_owner_in(&shown) {
        Some(owner) if owner == instance_tag => Check::pass(name, "this daemon's"),
        Some(owner) if ip.ports(bridge).is_empty() => Check::pass(
            name,
            format!(
                "another daemon's ({owner}) but unused: this daemon takes it over at its first VM start"
            ),
        ),
        Some(owner) => Check::fail(
            name,
            format!("belongs to another banger daemon ({owner}): its VMs would share your IPs"),
            "set your own bridge and guest_ip_pool in config.toml (like bridge = \"banger1\", guest_ip_pool = \"10.220.0.0/24\")",
        ),
        None => Check::pass(
            name,
            "exists, unclaimed (this daemon claims it at its first VM start)",
        ),
    }
}

/// Whether the guest IP pool is clear of the host's other routes (another
/// daemon's bridge among them), or, for the default pool, which pool the
/// daemon takes instead.
pub fn pool_check(config: &Config, ip: &dyn IpQuery) -> Check {
    let name = format!("guest_ip_pool {}", config.guest_ip_pool);
    match daemon_pool(config, ip) {
        Ok(choice) if choice.moved_from.is_none() => {
            Check::pass(name, "clear of the host's routes")
        }
        Ok(choice) => Check::pass(name, format!("the daemon uses {}", choice.describe())),
        Err(e) => Check::fail(
            name,
            e.to_string(),
            "pick another guest_ip_pool in config.toml",
        ),
    }
}

/// The pool the daemon uses on this host (see `net::choose_pool`): the one
/// place the daemon and doctor make that choice.
pub fn daemon_pool(
    config: &Config,
    ip: &dyn IpQuery,
) -> crate::net::Result<crate::net::PoolChoice> {
    let configured = config.guest_ip_pool;
    let routes = crate::net::routes_off_bridge(&ip.routes(), &config.bridge);
    crate::net::choose_pool(&configured, config.guest_ip_pool_explicit, &routes)
}

#[cfg(test)]
mod tests {
    use super::*;
    use banger_proto::check::CheckStatus;
    use std::os::unix::fs::PermissionsExt;

    struct Machine {
        tmp: tempfile::TempDir,
    }

    impl Machine {
        /// A machine with every tool and device, and a complete bundle.
        fn complete() -> Self {
            let tmp = tempfile::tempdir().unwrap();
            let root = tmp.path();
            for dir in [
                "bin",
                "dev/net",
                "sys/module",
                "proc/sys/net/ipv4",
                "runtime",
            ] {
                std::fs::create_dir_all(root.join(dir)).unwrap();
            }
            for tool in [
                "mkfs.ext4",
                "e2fsck",
                "resize2fs",
                "debugfs",
                "ip",
                "iptables",
                "sysctl",
                "ssh",
                "mmdebstrap",
                "busybox",
                "cpio",
                "lz4",
                "depmod",
                "qemu-system-x86_64",
                "vhost-device-vsock",
                "firecracker",
            ] {
                let path = root.join("bin").join(tool);
                std::fs::write(&path, "#!/bin/sh\necho 'Firecracker v1.16.1'\n").unwrap();
                std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).unwrap();
            }
            for dev in ["dev/kvm", "dev/net/tun"] {
                std::fs::write(root.join(dev), "").unwrap();
                std::fs::set_permissions(root.join(dev), std::fs::Permissions::from_mode(0o666))
                    .unwrap();
            }
            std::fs::write(root.join("proc/cpuinfo"), "flags\t: fpu vmx\n").unwrap();
            std::fs::write(root.join("proc/sys/net/ipv4/ip_forward"), "1\n").unwrap();
            let mut files = std::collections::BTreeMap::new();
            for (entry, file) in [
                ("kernel", "vmlinux"),
                ("initrd", "initrd.img"),
                ("rootfs", "rootfs.ext4"),
                ("ssh_key", "id_ed25519"),
                ("vsock_ping_helper", "banger-vsock-pingd"),
            ] {
                let path = root.join("runtime").join(file);
                std::fs::write(&path, "x").unwrap();
                let sha256 = crate::bundle::sha256_file(&path).unwrap();
                files.insert(
                    entry.to_owned(),
                    crate::bundle::FileEntry {
                        path: file.to_owned(),
                        sha256,
                    },
                );
            }
            let manifest = crate::bundle::Manifest {
                schema: 1,
                kernel_version: "6.1.0".into(),
                modules_dir: "modules/6.1.0".into(),
                files,
            };
            std::fs::write(
                root.join("runtime/bundle.json"),
                serde_json::to_string(&manifest).unwrap(),
            )
            .unwrap();
            Self { tmp }
        }

        fn root(&self) -> &Path {
            self.tmp.path()
        }

        fn run(&self) -> Vec<Check> {
            let probe = Probe {
                path: vec![self.root().join("bin")],
                dev: self.root().join("dev"),
                sys: self.root().join("sys"),
                proc_dir: self.root().join("proc"),
                euid: 0,
                // File access as an ordinary user decides it, even when the
                // tests run as root.
                access: crate::probe::Access::ModeBits {
                    uid: 4242,
                    gids: vec![4242],
                },
            };
            let config = Config {
                runtime_dir: Some(self.root().join("runtime")),
                dns_listen: "127.0.0.1:0".parse().unwrap(),
                ..Config::default()
            };
            doctor(&DoctorInput {
                probe: &probe,
                config: &config,
                exe: &self.root().join("bin/banger"),
                daemon_dns: None,
                instance_tag: "t1",
                ip: &FakeIp {
                    link: None,
                    routes: "default via 10.0.0.1 dev eth0\n",
                    ports: &[],
                },
            })
        }

        fn status(&self, name: &str) -> (CheckStatus, String) {
            let checks = self.run();
            let check = checks
                .iter()
                .find(|c| c.name == name)
                .unwrap_or_else(|| panic!("no check {name}: {checks:#?}"));
            (check.status, check.message())
        }
    }

    #[test]
    fn a_complete_machine_passes_everything() {
        let machine = Machine::complete();
        let checks = machine.run();
        let bad: Vec<_> = checks
            .iter()
            .filter(|c| c.status != CheckStatus::Pass)
            .collect();
        assert!(bad.is_empty(), "{bad:#?}");
        let firecracker = checks.iter().find(|c| c.name == "firecracker").unwrap();
        assert!(
            firecracker.detail.starts_with("Firecracker v1.16.1 at "),
            "{firecracker:?}"
        );
    }

    #[test]
    fn each_missing_prerequisite_is_named_with_its_fix() {
        let cases: &[(&str, &str, CheckStatus, &str)] = &[
            (
                "bin/mkfs.ext4",
                "mkfs.ext4",
                CheckStatus::Fail,
                "install e2fsprogs",
            ),
            (
                "bin/debugfs",
                "debugfs",
                CheckStatus::Fail,
                "install e2fsprogs",
            ),
            ("bin/ip", "ip", CheckStatus::Fail, "install iproute2"),
            (
                "bin/iptables",
                "iptables",
                CheckStatus::Warn,
                "install iptables",
            ),
            (
                "bin/ssh",
                "ssh",
                CheckStatus::Fail,
                "install openssh-client",
            ),
            ("bin/mmdebstrap", "mmdebstrap", CheckStatus::Warn, "install"),
            (
                "bin/firecracker",
                "firecracker",
                CheckStatus::Warn,
                "qemu backend",
            ),
            (
                "bin/qemu-system-x86_64",
                "qemu",
                CheckStatus::Warn,
                "install qemu-system-x86",
            ),
            ("dev/kvm", "/dev/kvm", CheckStatus::Fail, "vmm = \"qemu\""),
            (
                "dev/net/tun",
                "/dev/net/tun",
                CheckStatus::Fail,
                "modprobe tun",
            ),
            (
                "bin/vhost-device-vsock",
                "vhost-device-vsock",
                CheckStatus::Warn,
                "cargo install vhost-device-vsock",
            ),
            ("bin/cpio", "cpio", CheckStatus::Warn, "install cpio"),
            ("bin/lz4", "lz4", CheckStatus::Warn, "install lz4"),
            ("bin/depmod", "depmod", CheckStatus::Warn, "install kmod"),
            (
                "runtime/vmlinux",
                "kernel",
                CheckStatus::Fail,
                "make runtime",
            ),
            (
                "runtime/id_ed25519",
                "ssh key",
                CheckStatus::Fail,
                "make runtime",
            ),
            (
                "runtime/banger-vsock-pingd",
                "guest helper",
                CheckStatus::Warn,
                "make build",
            ),
            (
                "runtime/bundle.json",
                "bundle.json",
                CheckStatus::Fail,
                "make runtime",
            ),
        ];
        for (remove, name, status, fix) in cases {
            let machine = Machine::complete();
            std::fs::remove_file(machine.root().join(remove)).unwrap();
            let (found, message) = machine.status(name);
            assert_eq!(found, *status, "{remove}: {message}");
            assert!(message.contains(fix), "{remove}: {message}");
        }
    }

    #[test]
    fn real_kvm_is_named_by_its_module() {
        let machine = Machine::complete();
        let (status, message) = machine.status("hardware virtualization");
        assert_eq!(status, CheckStatus::Pass);
        assert!(!message.contains("real KVM"), "no module loaded: {message}");
        std::fs::create_dir_all(machine.root().join("sys/module/kvm_intel")).unwrap();
        let (status, message) = machine.status("hardware virtualization");
        assert_eq!(status, CheckStatus::Pass);
        assert!(
            message.contains("real KVM (kvm_intel), not PVM"),
            "{message}"
        );
    }

    #[test]
    fn unusable_kvm_and_pvm_are_explained() {
        let machine = Machine::complete();
        std::fs::set_permissions(
            machine.root().join("dev/kvm"),
            std::fs::Permissions::from_mode(0o000),
        )
        .unwrap();
        let (status, message) = machine.status("/dev/kvm");
        assert_eq!(status, CheckStatus::Fail);
        assert!(message.contains("group kvm"), "{message}");
        // KVM unusable: the qemu backend's pieces are needed, not optional.
        std::fs::remove_file(machine.root().join("bin/vhost-device-vsock")).unwrap();
        assert_eq!(machine.status("vhost-device-vsock").0, CheckStatus::Fail);
        std::fs::create_dir_all(machine.root().join("sys/module/kvm_pvm")).unwrap();
        let (status, message) = machine.status("hardware virtualization");
        assert_eq!(status, CheckStatus::Warn);
        assert!(
            message.contains("PVM") && message.contains("qemu"),
            "{message}"
        );
        // Without qemu on a PVM host, nothing can boot: that is a fail.
        std::fs::remove_file(machine.root().join("bin/qemu-system-x86_64")).unwrap();
        assert_eq!(machine.status("qemu").0, CheckStatus::Fail);
    }

    #[derive(Debug)]
    struct FakeIp {
        link: Option<&'static str>,
        routes: &'static str,
        ports: &'static [&'static str],
    }

    impl IpQuery for FakeIp {
        fn link(&self, _name: &str) -> Option<String> {
            self.link.map(str::to_owned)
        }
        fn routes(&self) -> String {
            self.routes.to_owned()
        }
        fn ports(&self, _name: &str) -> Vec<String> {
            self.ports.iter().map(|p| (*p).to_owned()).collect()
        }
    }

    #[test]
    fn another_daemons_bridge_and_pool_are_named_as_conflicts() {
        let ip = |link, routes| FakeIp {
            link,
            routes,
            ports: &["bg-0011223344"],
        };
        let check = bridge_check("banger0", "t1", &ip(None, ""));
        assert_eq!(check.status, CheckStatus::Pass);
        let ours = "5: banger0: <BROADCAST> mtu 1500\\    link/ether 1e:1e brd ff\\    alias banger:t1 bridge";
        assert_eq!(
            bridge_check("banger0", "t1", &ip(Some(ours), "")).status,
            CheckStatus::Pass
        );
        let theirs = "5: banger0: <BROADCAST> mtu 1500\\    alias banger:t2 bridge";
        let check = bridge_check("banger0", "t1", &ip(Some(theirs), ""));
        assert_eq!(check.status, CheckStatus::Fail);
        assert!(
            check.message().contains("another banger daemon (t2)")
                && check.message().contains("guest_ip_pool"),
            "{}",
            check.message()
        );
        let unused = FakeIp {
            link: Some(theirs),
            routes: "",
            ports: &[],
        };
        let check = bridge_check("banger0", "t1", &unused);
        assert_eq!(check.status, CheckStatus::Pass, "{}", check.message());
        assert!(check.message().contains("unused"), "{}", check.message());
        let config = Config {
            bridge: "banger1".into(),
            guest_ip_pool: crate::net::Pool::parse("10.219.0.0/24").unwrap(),
            guest_ip_pool_explicit: true,
            ..Config::default()
        };
        let routes = "default via 10.0.0.1 dev eth0\n10.219.0.0/24 dev banger0 proto kernel scope link src 10.219.0.1\n";
        let check = pool_check(&config, &ip(None, routes));
        assert_eq!(check.status, CheckStatus::Fail, "{}", check.message());
        assert!(check.message().contains("banger0"), "{}", check.message());
        // The same pool by default gives way, and doctor says to which.
        let defaulted = Config {
            guest_ip_pool_explicit: false,
            ..config.clone()
        };
        let check = pool_check(&defaulted, &ip(None, routes));
        assert_eq!(check.status, CheckStatus::Pass, "{}", check.message());
        assert!(
            check.message().contains("the daemon uses 10.219.1.0/24"),
            "{}",
            check.message()
        );
        let own = Config {
            bridge: "banger0".into(),
            ..config
        };
        assert_eq!(
            pool_check(&own, &ip(None, routes)).status,
            CheckStatus::Pass
        );
    }

    #[test]
    fn no_bundle_fails_with_where_it_looked() {
        let machine = Machine::complete();
        std::fs::remove_dir_all(machine.root().join("runtime")).unwrap();
        let (status, message) = machine.status("runtime bundle");
        assert_eq!(status, CheckStatus::Fail);
        assert!(message.contains("runtime"), "{message}");
    }
}
