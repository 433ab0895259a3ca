//! The Firecracker backend: `firecracker --api-sock <vm dir>/firecracker.sock`,
//! configured over its API, then `InstanceStart`.

#[path = "firecracker_api.rs"]
pub mod api;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::{Value, json};

use crate::process::{self, detach};
use crate::{LaunchSpec, Launched, Prepared, Result, Vmm, VmmError};

const SOCKET_TIMEOUT: Duration = Duration::from_secs(5);
const API_TIMEOUT: Duration = Duration::from_secs(5);
/// InstanceStart answers once guest memory is set up and the kernel is
/// loaded. Under nested virtualization (a banger VM as the KVM host) a
/// 2 GiB guest took over 5 s for that, measured; 60 s leaves room for
/// large guests on loaded hosts.
const INSTANCE_START_TIMEOUT: Duration = Duration::from_secs(60);
/// Writing or loading a full snapshot: the whole guest memory to or from
/// a file.
const SNAPSHOT_TIMEOUT: Duration = Duration::from_secs(600);
/// A saved state's files: the device state and the guest memory.
const SNAPSHOT_FILE: &str = "firecracker-vmstate";
const MEMORY_FILE: &str = "firecracker-memory";
/// In a saved state: its disks are named relative to the VM's directory
/// (see [`banger_host::VmDir::relative_drives`]).
const RELATIVE_DRIVES: &str = "drives-relative";

fn ignore_missing(e: std::io::Error) -> std::io::Result<()> {
    if e.kind() == std::io::ErrorKind::NotFound {
        Ok(())
    } else {
        Err(e)
    }
}

#[derive(Debug, Clone)]
pub struct Firecracker {
    binary: PathBuf,
}

impl Firecracker {
    pub fn new(binary: PathBuf) -> Self {
        Self { binary }
    }

    pub fn binary(&self) -> &Path {
        &self.binary
    }

    /// The requests that configure and boot a VM, in the order they are sent.
    pub fn requests(spec: &LaunchSpec) -> Vec<(&'static str, String, Value)> {
        let mut requests = vec![
            ("logger", "/logger".to_owned(), logger_config()),
            (
                "machine config",
                "/machine-config".to_owned(),
                json!({ "vcpu_count": spec.vcpu, "mem_size_mib": spec.memory_mib }),
            ),
        ];
        let mut boot = json!({
            "kernel_image_path": spec.kernel,
            "boot_args": spec.boot_args,
        });
        if let Some(initrd) = &spec.initrd {
            boot["initrd_path"] = json!(initrd);
        }
        requests.push(("boot source", "/boot-source".to_owned(), boot));
        for drive in &spec.drives {
            // The VM's own disks by paths relative to its directory, which
            // is Firecracker's working directory: a state it saves then
            // opens another VM's disks when restored in that VM's directory.
            let path = drive.path.strip_prefix(&spec.vm_dir).unwrap_or(&drive.path);
            requests.push((
                "drive",
                format!("/drives/{}", drive.id),
                json!({
                    "drive_id": drive.id,
                    "path_on_host": path,
                    "is_root_device": false,
                    "is_read_only": drive.read_only,
                }),
            ));
        }
        if let Some(net) = &spec.net {
            requests.push((
                "network interface",
                "/network-interfaces/eth0".to_owned(),
                json!({ "iface_id": "eth0", "host_dev_name": net.tap, "guest_mac": net.mac }),
            ));
        }
        requests.push((
            "vsock device",
            "/vsock".to_owned(),
            json!({ "guest_cid": spec.vsock_cid, "uds_path": spec.vsock_path }),
        ));
        requests.push((
            "instance start",
            "/actions".to_owned(),
            json!({ "action_type": "InstanceStart" }),
        ));
        requests
    }
}

impl Firecracker {
    /// Loads a saved state into a fresh Firecracker (which takes the
    /// drives, TAP and vsock socket from it), discards the state, stale
    /// from the guest's first instruction on, then lets the guest run.
    fn restore(session: &mut api::Session, spec: &LaunchSpec, state: &Path) -> Result<()> {
        for file in [SNAPSHOT_FILE, MEMORY_FILE] {
            if !state.join(file).is_file() {
                return Err(VmmError::StateMissing(state.into(), file));
            }
        }
        let relative = state.join(RELATIVE_DRIVES).is_file();
        // Restoring as another VM (a branch) needs a state that names no
        // directory; its TAP and vsock socket are this VM's.
        if spec.restore_as_another_vm && !relative {
            return Err(VmmError::NotRelocatable(state.into()));
        }
        let api_error = |what| move |source| VmmError::Api { what, source };
        session
            .call("PUT", "/logger", Some(&logger_config()))
            .map_err(api_error("configuring the logger"))?;
        session
            .set_timeout(SNAPSHOT_TIMEOUT)
            .map_err(|source| VmmError::StateWrite(state.into(), source))?;
        // Memory is mapped from the file (MAP_PRIVATE): removing the file
        // below leaves the mapping whole.
        let mut load = json!({
            "snapshot_path": state.join(SNAPSHOT_FILE),
            "mem_backend": { "backend_type": "File", "backend_path": state.join(MEMORY_FILE) },
            "resume_vm": false,
        });
        if spec.restore_as_another_vm {
            load["vsock_override"] = json!({ "uds_path": spec.vsock_path });
            if let Some(net) = &spec.net {
                load["network_overrides"] =
                    json!([{ "iface_id": "eth0", "host_dev_name": net.tap }]);
            }
        }
        session
            .call("PUT", "/snapshot/load", Some(&load))
            .map_err(api_error("loading the saved state"))?;
        // The restored guest opened its disks as the state names them.
        let marker = banger_host::VmDir::new(&spec.vm_dir).relative_drives();
        let marked = if relative {
            std::fs::write(&marker, "")
        } else {
            std::fs::remove_file(&marker).or_else(ignore_missing)
        };
        marked.map_err(|e| VmmError::StateWrite(state.into(), e))?;
        banger_host::vm_dir::discard_state(state)
            .map_err(|e| VmmError::StateWrite(state.into(), e))?;
        session
            .call("PATCH", "/vm", Some(&json!({ "state": "Resumed" })))
            .map_err(api_error("resuming the guest"))?;
        Ok(())
    }
}

/// The logger every Firecracker of banger's gets, booted or restored.
fn logger_config() -> Value {
    json!({ "level": "Info", "show_level": true })
}

/// The socket file exists from Firecracker's `bind`, but connections are
/// refused until its `listen`: a refused connect is retried briefly.
fn open_api(socket: &Path, child: &mut Child) -> std::result::Result<api::Session, api::ApiError> {
    let deadline = Instant::now() + SOCKET_TIMEOUT;
    loop {
        match api::Session::connect(socket, API_TIMEOUT) {
            Err(api::ApiError::Connect { source, .. })
                if source.kind() == std::io::ErrorKind::ConnectionRefused
                    && Instant::now() < deadline
                    && matches!(child.try_wait(), Ok(None)) =>
            {
                std::thread::sleep(Duration::from_micros(100));
            }
            other => return other,
        }
    }
}

impl Vmm for Firecracker {
    fn kind(&self) -> banger_proto::Backend {
        banger_proto::Backend::Firecracker
    }

    /// Firecracker leaves its API socket behind when it is killed.
    fn cleanup(&self, vm_dir: &Path) {
        let _ = std::fs::remove_file(banger_host::VmDir::new(vm_dir).firecracker_api());
    }

    fn checks(&self) -> Vec<banger_proto::check::Check> {
        use banger_proto::check::Check;
        let binary = if self.binary.is_file() {
            Check::pass("firecracker", self.binary.display().to_string())
        } else {
            Check::fail(
                "firecracker",
                format!("{} not found", self.binary.display()),
                "put firecracker in the runtime bundle or on PATH, set firecracker_bin, or set vmm = \"qemu\"",
            )
        };
        vec![
            binary,
            banger_host::doctor::kvm_check(&banger_host::probe::Probe::host()),
        ]
    }

    /// Spawns Firecracker on its API socket, without waiting for it.
    fn prepare(&self, vm_dir: &Path, vm_id: &str, log_path: &Path) -> Result<Prepared> {
        if !self.binary.is_file() {
            return Err(VmmError::BinaryMissing(self.binary.clone()));
        }
        let socket = banger_host::VmDir::new(vm_dir).firecracker_api();
        // Firecracker refuses to start on an existing socket path; a leftover
        // one can only be from a dead VMM of this VM.
        let _ = std::fs::remove_file(&socket);
        let (log, log_err) = process::log_files(log_path)?;
        let mut command = Command::new(&self.binary);
        command
            .arg("--api-sock")
            .arg(&socket)
            .arg("--id")
            .arg(vm_id)
            .current_dir(vm_dir)
            .stdin(Stdio::null())
            .stdout(log)
            .stderr(log_err);
        detach(&mut command);
        let child =
            process::spawn_recorded(&mut command, &banger_host::VmDir::new(vm_dir).vmm_pid())
                .map_err(|e| VmmError::Spawn(self.binary.clone(), e))?;
        Ok(Prepared::started(child, vec![socket]))
    }

    fn launch_prepared(&self, spec: &LaunchSpec, prepared: Prepared) -> Result<Launched> {
        let mut child =
            prepared.into_child_or(|| self.prepare(&spec.vm_dir, &spec.vm_id, &spec.log_path))?;
        let socket = banger_host::VmDir::new(&spec.vm_dir).firecracker_api();
        let _ = std::fs::remove_file(&spec.vsock_path);
        let fail = |child: &mut std::process::Child, err: VmmError| {
            process::kill_child(child);
            let _ = std::fs::remove_file(&socket);
            let _ = std::fs::remove_file(&spec.vsock_path);
            Err(err)
        };
        if let Err(err) = process::await_ready(
            &mut child,
            &socket,
            &self.binary,
            &spec.log_path,
            SOCKET_TIMEOUT,
        ) {
            return fail(&mut child, err);
        }
        let mut session = match open_api(&socket, &mut child) {
            Ok(session) => session,
            Err(source) => {
                let step = "opening its API";
                return fail(&mut child, VmmError::Configure { step, source });
            }
        };
        // One request at a time, InstanceStart only once every part of the
        // configuration was accepted. Pipelining them saved 0.08 ms of a
        // 12 ms create (`make bench BENCH=create`, 0.36 ms against 0.43 ms
        // for six requests), so the simpler exchange stays.
        if let Some(state) = &spec.restore {
            return match Self::restore(&mut session, spec, state) {
                Ok(()) => Ok(process::launched(child)),
                Err(err) => fail(&mut child, err),
            };
        }
        if let Err(e) = std::fs::write(banger_host::VmDir::new(&spec.vm_dir).relative_drives(), "")
        {
            return fail(&mut child, VmmError::StateWrite(spec.vm_dir.clone(), e));
        }
        let requests = Self::requests(spec);
        let Some(((start_step, start_path, start_body), configure)) = requests.split_last() else {
            unreachable!("the request sequence ends with InstanceStart");
        };
        for (step, path, body) in configure {
            if let Err(source) = session.call("PUT", path, Some(body)) {
                return fail(&mut child, VmmError::Configure { step, source });
            }
        }
        let started = session
            .set_timeout(INSTANCE_START_TIMEOUT)
            .map_err(|source| api::ApiError::Io {
                method: "PUT",
                path: start_path.clone(),
                source,
            })
            .and_then(|()| session.call("PUT", start_path, Some(start_body)));
        if let Err(source) = started {
            let step = *start_step;
            return fail(&mut child, VmmError::Configure { step, source });
        }
        Ok(process::launched(child))
    }

    fn request_shutdown(&self, vm_dir: &Path, _pid: u32) -> Result<()> {
        let body = json!({ "action_type": "SendCtrlAltDel" });
        api::call(
            &banger_host::VmDir::new(vm_dir).firecracker_api(),
            "PUT",
            "/actions",
            Some(&body),
            API_TIMEOUT,
        )
        .map(|_| ())
        .map_err(VmmError::Shutdown)
    }

    fn set_paused(&self, vm_dir: &Path, paused: bool) -> Result<()> {
        let (state, what) = if paused {
            ("Paused", "pausing the guest")
        } else {
            ("Resumed", "resuming the guest")
        };
        api::call(
            &banger_host::VmDir::new(vm_dir).firecracker_api(),
            "PATCH",
            "/vm",
            Some(&json!({ "state": state })),
            API_TIMEOUT,
        )
        .map(|_| ())
        .map_err(|source| VmmError::Api { what, source })
    }

    /// A full snapshot of the paused guest; its memory file is then made
    /// sparse, since Firecracker writes every page, zero or not.
    fn save_state(&self, vm_dir: &Path, state_dir: &Path) -> Result<()> {
        self.set_paused(vm_dir, true)?;
        let body = json!({
            "snapshot_type": "Full",
            "snapshot_path": state_dir.join(SNAPSHOT_FILE),
            "mem_file_path": state_dir.join(MEMORY_FILE),
        });
        let saved = api::call(
            &banger_host::VmDir::new(vm_dir).firecracker_api(),
            "PUT",
            "/snapshot/create",
            Some(&body),
            SNAPSHOT_TIMEOUT,
        )
        .map_err(|source| VmmError::Api {
            what: "saving the guest's state",
            source,
        })
        .and_then(|_| {
            let memory = state_dir.join(MEMORY_FILE);
            banger_host::disk::punch_zero_pages(&memory)
                .map_err(|e| VmmError::StateWrite(memory, e))
        })
        .and_then(|()| {
            // Whether the state names the disks relative to the VM's directory.
            if !banger_host::VmDir::new(vm_dir).relative_drives().is_file() {
                return Ok(());
            }
            std::fs::write(state_dir.join(RELATIVE_DRIVES), "")
                .map_err(|e| VmmError::StateWrite(state_dir.into(), e))
        });
        if let Err(err) = saved {
            if let Err(undo) = self.set_paused(vm_dir, false) {
                tracing::error!(error = %undo, "could not let the guest run on after a failed save");
            }
            return Err(err);
        }
        Ok(())
    }

    fn resume_after_save(&self, vm_dir: &Path) -> Result<()> {
        self.set_paused(vm_dir, false)
    }

    /// With its disks by relative path and `network_overrides` and
    /// `vsock_override` (Firecracker 1.12 and later) at the load. The
    /// guest keeps the vsock CID it was saved with: Firecracker's vsock is
    /// a Unix socket on the host, where a CID means nothing.
    fn restores_as_another_vm(&self) -> bool {
        true
    }

    /// Firecracker's NIC has no link state: the daemon holds the TAP off
    /// the bridge instead, so there is nothing to switch here.
    fn set_link(&self, _vm_dir: &Path, _up: bool) -> Result<()> {
        Ok(())
    }

    fn responds(&self, vm_dir: &Path, _pid: u32) -> bool {
        api::send(
            &banger_host::VmDir::new(vm_dir).firecracker_api(),
            "GET",
            "/",
            None,
            Duration::from_secs(2),
        )
        .is_ok_and(|r| r.status == 200)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{Drive, NetSpec};

    fn spec() -> LaunchSpec {
        LaunchSpec {
            vm_id: "aa12bb34".into(),
            vm_dir: "/s/vms/aa12bb34".into(),
            vcpu: 2,
            memory_mib: 1024,
            kernel: "/r/vmlinux".into(),
            initrd: Some("/r/initrd.img".into()),
            boot_args: "console=ttyS0".into(),
            drives: vec![
                Drive {
                    id: "base".into(),
                    path: "/r/rootfs.ext4".into(),
                    read_only: true,
                },
                Drive {
                    id: "overlay".into(),
                    path: "/s/vms/aa12bb34/overlay.ext4".into(),
                    read_only: false,
                },
            ],
            net: Some(NetSpec {
                tap: "bg-aa12bb34".into(),
                mac: "06:00:0a:00:00:02".into(),
            }),
            vsock_cid: 3,
            vsock_path: "/s/vms/aa12bb34/vsock.sock".into(),
            log_path: "/s/vms/aa12bb34/firecracker.log".into(),
            restore: None,
            restore_as_another_vm: false,
        }
    }

    #[test]
    fn request_sequence_is_complete_and_ordered() {
        let paths: Vec<String> = Firecracker::requests(&spec())
            .into_iter()
            .map(|(_, p, _)| p)
            .collect();
        assert_eq!(
            paths,
            [
                "/logger",
                "/machine-config",
                "/boot-source",
                "/drives/base",
                "/drives/overlay",
                "/network-interfaces/eth0",
                "/vsock",
                "/actions"
            ]
        );
        let requests = Firecracker::requests(&spec());
        assert_eq!(requests[2].2["initrd_path"], "/r/initrd.img");
        assert_eq!(requests[3].2["is_read_only"], true);
        assert_eq!(requests[3].2["path_on_host"], "/r/rootfs.ext4");
        assert_eq!(
            requests[4].2["path_on_host"], "overlay.ext4",
            "the VM's own disks by path relative to its directory"
        );
        assert_eq!(
            requests[6].2,
            json!({"guest_cid": 3, "uds_path": "/s/vms/aa12bb34/vsock.sock"})
        );
        assert_eq!(requests[7].2, json!({"action_type": "InstanceStart"}));
    }

    #[test]
    fn missing_binary_is_named() {
        let err = Firecracker::new("/nowhere/firecracker".into())
            .launch(&spec())
            .unwrap_err();
        assert!(
            err.to_string().contains("/nowhere/firecracker")
                && err.to_string().contains("firecracker_bin")
        );
    }
}
