//! The `qemu` backend: software emulation (TCG) for hosts whose KVM cannot
//! boot guests. The same drives, TAP and guest as Firecracker; vsock through
//! `vhost-device-vsock`, which speaks the same `CONNECT`/`OK` protocol on the
//! VM's vsock socket; graceful stop through QMP's `system_powerdown`.

use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use banger_proto::check::Check;

use crate::process::{self, detach};
use crate::{LaunchSpec, Launched, Prepared, Result, Vmm, VmmError};

const START_TIMEOUT: Duration = Duration::from_secs(10);

#[derive(Debug, Clone)]
pub struct Qemu {
    binary: PathBuf,
    vsock_helper: PathBuf,
}

impl Qemu {
    pub fn new(binary: PathBuf, vsock_helper: PathBuf) -> Self {
        Self {
            binary,
            vsock_helper,
        }
    }

    /// QEMU boots the compressed kernel; a `bzImage` beside the image's
    /// `vmlinux` is preferred when the bundle has one.
    pub fn kernel_for(spec: &LaunchSpec) -> PathBuf {
        spec.kernel
            .parent()
            .map(|dir| dir.join("bzImage"))
            .filter(|p| p.is_file())
            .unwrap_or_else(|| spec.kernel.clone())
    }

    /// The QEMU command line for `spec`.
    pub fn args(spec: &LaunchSpec) -> Vec<String> {
        let dir = &spec.vm_dir;
        let mut args: Vec<String> = vec![
            "-name".into(),
            format!("banger-{}", spec.vm_id),
            "-machine".into(),
            "pc,accel=tcg,memory-backend=mem".into(),
            "-cpu".into(),
            "max".into(),
            "-smp".into(),
            spec.vcpu.to_string(),
            "-m".into(),
            format!("{}M", spec.memory_mib),
            // vhost-user needs guest memory the helper can map.
            "-object".into(),
            format!(
                "memory-backend-memfd,id=mem,size={}M,share=on",
                spec.memory_mib
            ),
            "-nodefaults".into(),
            "-no-user-config".into(),
            "-display".into(),
            "none".into(),
            "-no-reboot".into(),
            "-kernel".into(),
            Self::kernel_for(spec).display().to_string(),
            "-append".into(),
            spec.boot_args.clone(),
            "-chardev".into(),
            format!("file,id=console,path={},append=on", spec.log_path.display()),
            "-serial".into(),
            "chardev:console".into(),
            "-qmp".into(),
            format!(
                "unix:{},server=on,wait=off",
                banger_host::VmDir::new(dir).qmp().display()
            ),
        ];
        if let Some(initrd) = &spec.initrd {
            args.extend(["-initrd".into(), initrd.display().to_string()]);
        }
        for drive in &spec.drives {
            let mut value = format!(
                "file={},if=virtio,format=raw,id={}",
                drive.path.display(),
                drive.id
            );
            if drive.read_only {
                value.push_str(",readonly=on");
            }
            args.extend(["-drive".into(), value]);
        }
        if let Some(net) = &spec.net {
            args.extend([
                "-netdev".into(),
                format!("tap,id=net0,ifname={},script=no,downscript=no", net.tap),
                "-device".into(),
                format!("virtio-net-pci,netdev=net0,mac={}", net.mac),
            ]);
        }
        args.extend([
            "-chardev".into(),
            format!(
                "socket,id=vsock,path={}",
                banger_host::VmDir::new(dir).vhost_vsock().display()
            ),
            "-device".into(),
            "vhost-user-vsock-pci,chardev=vsock".into(),
        ]);
        args
    }

    fn start_vsock_helper(&self, spec: &LaunchSpec) -> Result<std::process::Child> {
        let socket = banger_host::VmDir::new(&spec.vm_dir).vhost_vsock();
        let _ = std::fs::remove_file(&socket);
        let _ = std::fs::remove_file(&spec.vsock_path);
        let (out, err) = process::log_files(&spec.log_path)?;
        let mut command = Command::new(&self.vsock_helper);
        command
            .arg("--guest-cid")
            .arg(spec.vsock_cid.to_string())
            .arg("--socket")
            .arg(&socket)
            .arg("--uds-path")
            .arg(&spec.vsock_path)
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(err);
        detach(&mut command);
        let mut child = process::spawn_recorded(
            &mut command,
            &banger_host::VmDir::new(&spec.vm_dir).vhost_vsock_pid(),
        )
        .map_err(|e| VmmError::Spawn(self.vsock_helper.clone(), e))?;
        if let Err(err) = process::await_ready(
            &mut child,
            &socket,
            &self.vsock_helper,
            &spec.log_path,
            START_TIMEOUT,
        ) {
            process::kill_child(&mut child);
            return Err(err);
        }
        Ok(child)
    }
}

/// One line from QMP: a command's answer, or an event, which can arrive
/// before the answer at any time.
#[derive(Debug, serde::Deserialize)]
struct QmpLine {
    #[serde(rename = "return")]
    answer: Option<serde_json::Value>,
    error: Option<QmpError>,
}

#[derive(Debug, serde::Deserialize)]
struct QmpError {
    class: String,
    desc: String,
}

/// `query-status`'s answer.
#[derive(Debug, serde::Deserialize)]
struct QmpStatus {
    status: String,
}

/// Runs one QMP command after the capabilities handshake and returns its
/// `return` value. Events are skipped; an `error` answer is an error.
/// Kept by hand rather than the `qapi` crate: banger sends a few commands
/// without arguments (`query-status`, `system_powerdown`, `stop`, `cont`),
/// each one line of JSON, and `qapi`
/// brings types generated for every command of QEMU's schema.
fn qmp(socket: &Path, command: &str) -> std::io::Result<serde_json::Value> {
    let stream = UnixStream::connect(socket)?;
    stream.set_read_timeout(Some(Duration::from_secs(3)))?;
    let mut writer = stream.try_clone()?;
    let mut reader = BufReader::new(stream);
    let mut line = String::new();
    reader.read_line(&mut line)?; // greeting
    for execute in ["qmp_capabilities", command] {
        writer.write_all(
            serde_json::json!({ "execute": execute })
                .to_string()
                .as_bytes(),
        )?;
        writer.write_all(b"\n")?;
        let answer = loop {
            line.clear();
            if reader.read_line(&mut line)? == 0 {
                return Err(std::io::ErrorKind::UnexpectedEof.into());
            }
            let parsed: QmpLine = serde_json::from_str(&line).map_err(std::io::Error::other)?;
            if let Some(error) = parsed.error {
                return Err(std::io::Error::other(format!(
                    "QMP {execute}: {} ({})",
                    error.desc, error.class
                )));
            }
            if let Some(answer) = parsed.answer {
                break answer;
            }
        };
        if execute == command {
            return Ok(answer);
        }
    }
    unreachable!("the loop returns at the command's answer")
}

impl Vmm for Qemu {
    fn kind(&self) -> banger_proto::Backend {
        banger_proto::Backend::Qemu
    }

    fn checks(&self) -> Vec<Check> {
        let present = |name: &str, path: &Path, fix: &str| {
            if path.is_file() {
                Check::pass(name, path.display().to_string())
            } else {
                Check::fail(name, format!("{} not found", path.display()), fix)
            }
        };
        vec![
            present("qemu", &self.binary, "install qemu-system-x86"),
            present(
                "vhost-device-vsock",
                &self.vsock_helper,
                "cargo install vhost-device-vsock",
            ),
        ]
    }

    /// Nothing starts ahead: QEMU's command line needs the drives and TAP.
    fn launch_prepared(&self, spec: &LaunchSpec, _prepared: Prepared) -> Result<Launched> {
        if !self.binary.is_file() {
            return Err(VmmError::BinaryMissing(self.binary.clone()));
        }
        let qmp_socket = banger_host::VmDir::new(&spec.vm_dir).qmp();
        let _ = std::fs::remove_file(&qmp_socket);
        let mut helper = self.start_vsock_helper(spec)?;
        let (out, err) = process::log_files(&spec.log_path)?;
        let mut command = Command::new(&self.binary);
        command
            .args(Self::args(spec))
            .current_dir(&spec.vm_dir)
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(err);
        detach(&mut command);
        let mut child = match process::spawn_recorded(
            &mut command,
            &banger_host::VmDir::new(&spec.vm_dir).vmm_pid(),
        ) {
            Ok(child) => child,
            Err(e) => {
                process::kill_child(&mut helper);
                return Err(VmmError::Spawn(self.binary.clone(), e));
            }
        };
        if let Err(err) = process::await_ready(
            &mut child,
            &qmp_socket,
            &self.binary,
            &spec.log_path,
            START_TIMEOUT,
        ) {
            process::kill_child(&mut child);
            process::kill_child(&mut helper);
            self.cleanup(&spec.vm_dir);
            return Err(err);
        }
        // The helper is supervised by pid file from here on; reap it when it exits.
        crate::supervisor::Supervisor::shared().reap(helper);
        Ok(process::launched(child))
    }

    fn request_shutdown(&self, vm_dir: &Path, _pid: u32) -> Result<()> {
        qmp(&banger_host::VmDir::new(vm_dir).qmp(), "system_powerdown")
            .map(|_| ())
            .map_err(|e| VmmError::Qmp(banger_host::VmDir::new(vm_dir).qmp(), e))
    }

    fn set_paused(&self, vm_dir: &Path, paused: bool) -> Result<()> {
        let (command, what) = if paused {
            ("stop", "pausing the guest")
        } else {
            ("cont", "resuming the guest")
        };
        let socket = banger_host::VmDir::new(vm_dir).qmp();
        qmp(&socket, command)
            .map(|_| ())
            .map_err(|source| VmmError::QmpCommand {
                what,
                socket,
                source,
            })
    }

    /// `query-status` answers `io-error` while QEMU holds a guest on a
    /// failed disk write (werror=enospc, its default, on ENOSPC).
    fn io_error_pause(&self, vm_dir: &Path) -> Option<bool> {
        let answer = qmp(&banger_host::VmDir::new(vm_dir).qmp(), "query-status").ok()?;
        let status: QmpStatus = serde_json::from_value(answer).ok()?;
        Some(status.status == "io-error")
    }

    fn responds(&self, vm_dir: &Path, _pid: u32) -> bool {
        qmp(&banger_host::VmDir::new(vm_dir).qmp(), "query-status").is_ok()
    }

    /// QEMU catches SIGTERM, SIGINT and SIGHUP, logs `terminating on
    /// signal N from pid P` and exits 0: that is a kill from outside, not a
    /// clean shutdown of the guest.
    fn explain_exit(&self, reason: process::ExitReason, output: &str) -> process::ExitReason {
        if reason != process::ExitReason::Clean {
            return reason;
        }
        output
            .lines()
            .rev()
            .find_map(|line| {
                let rest = line.split("terminating on signal ").nth(1)?;
                rest.split_whitespace().next()?.parse().ok()
            })
            .map_or(reason, process::ExitReason::Signal)
    }

    fn cleanup(&self, vm_dir: &Path) {
        // The helper recorded at its spawn, if it is still that process.
        if let Some((pid, start_time)) =
            process::recorded_process(&banger_host::VmDir::new(vm_dir).vhost_vsock_pid())
        {
            // Wait for it, so nothing of the VM outlives its delete.
            let _ = process::send_signal(pid, libc::SIGTERM);
            let deadline = std::time::Instant::now() + Duration::from_secs(2);
            while banger_host::procfs::is_running(pid, start_time)
                && std::time::Instant::now() < deadline
            {
                std::thread::sleep(Duration::from_millis(20));
            }
            if banger_host::procfs::is_running(pid, start_time) {
                let _ = process::send_signal(pid, libc::SIGKILL);
            }
        }
        let dir = banger_host::VmDir::new(vm_dir);
        for file in [dir.vhost_vsock_pid(), dir.vhost_vsock(), dir.qmp()] {
            let _ = std::fs::remove_file(file);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{Drive, NetSpec};

    /// A QMP server that greets, answers the handshake, sends an event,
    /// then answers `query-status` with `status`.
    fn fake_qmp(dir: &Path, status: &'static str) -> std::thread::JoinHandle<Vec<String>> {
        let listener = std::os::unix::net::UnixListener::bind(dir.join("qmp.sock")).unwrap();
        std::thread::spawn(move || {
            let (stream, _) = listener.accept().unwrap();
            let mut writer = stream.try_clone().unwrap();
            let mut reader = BufReader::new(stream);
            let mut seen = Vec::new();
            writer.write_all(b"{\"QMP\": {\"version\": {}}}\n").unwrap();
            for answer in [
                "{\"return\": {}}\n".to_owned(),
                format!(
                    "{{\"event\": \"BLOCK_IO_ERROR\", \"data\": {{}}}}\n{{\"return\": {{\"status\": \"{status}\", \"running\": false}}}}\n"
                ),
            ] {
                let mut line = String::new();
                reader.read_line(&mut line).unwrap();
                seen.push(line.trim().to_owned());
                writer.write_all(answer.as_bytes()).unwrap();
            }
            seen
        })
    }

    #[test]
    fn qmp_answers_are_read_past_events() {
        let tmp = tempfile::tempdir().unwrap();
        let qemu = Qemu::new(PathBuf::from("qemu"), PathBuf::from("vhost"));
        let server = fake_qmp(tmp.path(), "io-error");
        assert_eq!(qemu.io_error_pause(tmp.path()), Some(true));
        assert_eq!(
            server.join().unwrap(),
            [
                r#"{"execute":"qmp_capabilities"}"#,
                r#"{"execute":"query-status"}"#
            ]
        );
        std::fs::remove_file(tmp.path().join("qmp.sock")).unwrap();
        let server = fake_qmp(tmp.path(), "running");
        assert_eq!(qemu.io_error_pause(tmp.path()), Some(false));
        server.join().unwrap();
    }

    #[test]
    fn a_signal_qemu_turned_into_exit_0_is_reported_as_the_signal() {
        use process::ExitReason;
        let qemu = Qemu::new("q".into(), "v".into());
        let output = "char device redirected\nqemu-system-x86_64: terminating on signal 15 from pid 4242 (bash)\n";
        assert_eq!(
            qemu.explain_exit(ExitReason::Clean, output),
            ExitReason::Signal(15)
        );
        assert_eq!(
            qemu.explain_exit(ExitReason::Clean, output).describe(),
            "killed by SIGTERM"
        );
        assert_eq!(
            qemu.explain_exit(ExitReason::Clean, "guest powered off\n"),
            ExitReason::Clean
        );
        assert_eq!(
            qemu.explain_exit(ExitReason::Signal(9), output),
            ExitReason::Signal(9),
            "a real signal exit stays as it is"
        );
    }

    #[test]
    fn a_failed_power_off_request_says_so() {
        let tmp = tempfile::tempdir().unwrap();
        let qemu = Qemu::new(
            "/usr/bin/qemu-system-x86_64".into(),
            "vhost-device-vsock".into(),
        );
        let err = qemu
            .request_shutdown(tmp.path(), 1)
            .unwrap_err()
            .to_string();
        assert!(
            err.starts_with("asking the guest to power off through QEMU's QMP socket"),
            "{err}"
        );
        assert!(!qemu.responds(tmp.path(), 1), "no QMP socket, no answer");
    }

    #[test]
    fn command_line_has_the_drives_tap_vsock_and_console() {
        let spec = LaunchSpec {
            vm_id: "aa12".into(),
            vm_dir: "/s/vms/aa12".into(),
            vcpu: 2,
            memory_mib: 1024,
            kernel: "/nonexistent/vmlinux".into(),
            initrd: Some("/r/initrd.img".into()),
            boot_args: "console=ttyS0".into(),
            drives: vec![Drive {
                id: "base".into(),
                path: "/r/rootfs.ext4".into(),
                read_only: true,
            }],
            net: Some(NetSpec {
                tap: "bg-aa12".into(),
                mac: "06:00:0a:db:00:02".into(),
            }),
            vsock_cid: 3,
            vsock_path: "/s/vms/aa12/vsock.sock".into(),
            log_path: "/s/vms/aa12/firecracker.log".into(),
        };
        let line = Qemu::args(&spec).join(" ");
        for part in [
            "-machine pc,accel=tcg,memory-backend=mem",
            "-object memory-backend-memfd,id=mem,size=1024M,share=on",
            "-kernel /nonexistent/vmlinux",
            "-initrd /r/initrd.img",
            "-drive file=/r/rootfs.ext4,if=virtio,format=raw,id=base,readonly=on",
            "-netdev tap,id=net0,ifname=bg-aa12,script=no,downscript=no",
            "-device virtio-net-pci,netdev=net0,mac=06:00:0a:db:00:02",
            "-chardev socket,id=vsock,path=/s/vms/aa12/vhost-vsock.sock",
            "-device vhost-user-vsock-pci,chardev=vsock",
            "-chardev file,id=console,path=/s/vms/aa12/firecracker.log,append=on",
            "-qmp unix:/s/vms/aa12/qmp.sock,server=on,wait=off",
        ] {
            assert!(line.contains(part), "missing {part:?} in {line}");
        }
    }
}
