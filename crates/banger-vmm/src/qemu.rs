//! The `qemu` backend: software emulation (TCG) for hosts whose KVM cannot
//! boot guests. The same drives, TAP and guest as Firecracker; vsock through
//! `vhost-device-vsock`, which speaks the same `CONNECT`/`OK` protocol on the
//! VM's vsock socket; graceful stop through QMP's `system_powerdown` and Ctrl-Alt-Del.

use std::io::{BufRead, BufReader, Write};
use std::os::fd::{AsRawFd, RawFd};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use banger_proto::check::Check;

use crate::process::{self, detach};
use crate::{LaunchSpec, Launched, Prepared, Result, Vmm, VmmError};

const START_TIMEOUT: Duration = Duration::from_secs(10);
/// PCI slots: 0 and 1 are the host bridge and the PIIX3 of `-M pc`.
const NET_SLOT: u32 = 2;
const VSOCK_SLOT: u32 = 3;
const FIRST_DRIVE_SLOT: u32 = 4;
const VSOCK_CHARDEV: &str = "vsock";
const VSOCK_DEVICE: &str = "vsock0";
/// The migration stream in a saved state's directory: the devices, and
/// the guest's memory too in states saved before [`RAM_FILE`].
const STATE_FILE: &str = "qemu-state";
/// The guest's memory in a saved state's directory, page for page, with
/// holes for zero pages. A resume copies it into a memfd that QEMU maps,
/// so QEMU loads only the devices from the stream (`x-ignore-shared`):
/// parsing the memory out of the stream took 2 to 3 s for 156 MiB here.
const RAM_FILE: &str = "qemu-ram";
/// The memfd a resumed guest's memory is in (QEMU's own is named after
/// its backend type).
const LOADED_RAM_NAME: &str = "banger-guest-ram";
const BOOTED_RAM_NAME: &str = "memory-backend-memfd";
/// For the guest to let go of the vsock device (ACPI hot-unplug): about
/// 2 s under TCG here.
const UNPLUG_TIMEOUT: Duration = Duration::from_secs(30);
/// For the migration stream to be written or read: 3 s for a 768 MiB
/// guest here; large guests on slow disks take longer.
const MIGRATION_TIMEOUT: Duration = Duration::from_secs(600);

/// `path` in single quotes for `sh -c` (QEMU runs `exec:` URIs so).
fn shell_quoted(path: &Path) -> String {
    format!("'{}'", path.display().to_string().replace('\'', "'\\''"))
}

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

    /// The QEMU command line for `spec`; `loaded_ram` is the descriptor
    /// (inherited) of a memfd that holds a resumed guest's memory.
    pub fn args(spec: &LaunchSpec, loaded_ram: Option<RawFd>) -> Vec<String> {
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
            match loaded_ram {
                Some(fd) => format!(
                    "memory-backend-file,id=mem,size={}M,share=on,mem-path=/proc/self/fd/{fd}",
                    spec.memory_mib
                ),
                None => format!(
                    "memory-backend-memfd,id=mem,size={}M,share=on",
                    spec.memory_mib
                ),
            },
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
        // Every device at a fixed PCI slot: a saved state loads only into
        // the same slots, and the vsock device, unplugged for the save,
        // must not let the disks move up into its slot.
        for (slot, drive) in (FIRST_DRIVE_SLOT..).zip(&spec.drives) {
            let mut value = format!(
                "file={},if=none,format=raw,id={}",
                drive.path.display(),
                drive.id
            );
            if drive.read_only {
                value.push_str(",readonly=on");
            }
            args.extend([
                "-drive".into(),
                value,
                "-device".into(),
                format!(
                    "virtio-blk-pci,drive={},id=blk-{},addr={slot:#x}",
                    drive.id, drive.id
                ),
            ]);
        }
        if let Some(net) = &spec.net {
            args.extend([
                "-netdev".into(),
                format!("tap,id=net0,ifname={},script=no,downscript=no", net.tap),
                "-device".into(),
                format!(
                    "virtio-net-pci,netdev=net0,mac={},addr={NET_SLOT:#x}",
                    net.mac
                ),
            ]);
        }
        match &spec.restore {
            // vhost-user-vsock cannot migrate: the state was saved without
            // it, and it is plugged back once the guest runs.
            // With the memory loaded already, the stream is given once
            // x-ignore-shared is set (see `finish_restore`).
            Some(_) if loaded_ram.is_some() => {
                args.extend(["-S".into(), "-incoming".into(), "defer".into()]);
            }
            Some(state) => args.extend([
                "-S".into(),
                "-incoming".into(),
                format!("exec:cat {}", shell_quoted(&state.join(STATE_FILE))),
            ]),
            None => args.extend([
                "-chardev".into(),
                format!(
                    "socket,id={VSOCK_CHARDEV},path={}",
                    banger_host::VmDir::new(dir).vhost_vsock().display()
                ),
                "-device".into(),
                format!(
                    "vhost-user-vsock-pci,chardev={VSOCK_CHARDEV},id={VSOCK_DEVICE},addr={VSOCK_SLOT:#x}"
                ),
            ]),
        }
        args
    }

    /// Waits for QEMU to load the saved state, discards it (stale from the
    /// guest's first instruction on: renamed aside, deleted behind), lets
    /// the guest run and plugs the vsock device back in.
    fn finish_restore(
        &self,
        child: &mut std::process::Child,
        spec: &LaunchSpec,
        state: &Path,
        memory_loaded: bool,
    ) -> Result<()> {
        let socket = banger_host::VmDir::new(&spec.vm_dir).qmp();
        let exited = |child: &mut std::process::Child| {
            let status = child.try_wait().ok().flatten()?;
            Some(VmmError::RestoreExit {
                binary: self.binary.display().to_string(),
                status: status.to_string(),
                log: spec.log_path.clone(),
                tail: process::tail(&spec.log_path, 5),
            })
        };
        let failed = |what: &'static str, child: &mut std::process::Child, source| {
            // A QEMU that refused the stream exits: its log says why.
            std::thread::sleep(Duration::from_millis(200));
            exited(child).unwrap_or_else(|| qmp_failed(what, &socket)(source))
        };
        // The socket file exists from QEMU's bind, but a connect is
        // refused until its listen: under load that gap was seen (CI-like
        // e2e run), so a refused connect is retried while QEMU lives.
        let connect_by = Instant::now() + START_TIMEOUT;
        let mut qmp = loop {
            // While QEMU loads the stream its main loop answers nothing for
            // seconds at a time (13 s seen with two QEMUs on two cores): a
            // QEMU that dies instead ends the session, so waiting is safe.
            match Qmp::connect_waiting(&socket, MIGRATION_TIMEOUT) {
                Ok(qmp) => break qmp,
                Err(e)
                    if e.kind() == std::io::ErrorKind::ConnectionRefused
                        && Instant::now() < connect_by
                        && matches!(child.try_wait(), Ok(None)) =>
                {
                    std::thread::sleep(Duration::from_millis(10));
                }
                Err(e) => return Err(failed("connecting", child, e)),
            }
        };
        let started = Instant::now();
        if memory_loaded {
            let stream = format!("exec:cat {}", shell_quoted(&state.join(STATE_FILE)));
            if let Err(e) = ignore_shared_memory(&mut qmp).and_then(|()| {
                qmp.execute(
                    "migrate-incoming",
                    Some(serde_json::json!({ "uri": stream })),
                )
                .map(|_| ())
            }) {
                return Err(failed("loading the saved state", child, e));
            }
        }
        let deadline = started + MIGRATION_TIMEOUT;
        loop {
            match qmp.status() {
                Ok(status) if status == "paused" => break,
                Ok(_) if Instant::now() < deadline => {
                    std::thread::sleep(Duration::from_millis(20));
                }
                Ok(status) => {
                    let source = std::io::Error::new(
                        std::io::ErrorKind::TimedOut,
                        format!("still {status} after {}s", MIGRATION_TIMEOUT.as_secs()),
                    );
                    return Err(failed("loading the saved state", child, source));
                }
                Err(e) => return Err(failed("loading the saved state", child, e)),
            }
        }
        let loaded = started.elapsed();
        banger_host::vm_dir::discard_state(state)
            .map_err(|e| VmmError::StateWrite(state.into(), e))?;
        let qmp_error = |what| qmp_failed(what, &socket);
        if spec.restore_as_another_vm {
            qmp.execute("set_link", Some(link(false)))
                .map_err(qmp_error("taking the network link down"))?;
        }
        qmp.execute("cont", None)
            .map_err(qmp_error("resuming the guest"))?;
        plug_vsock(&mut qmp, &spec.vm_dir).map_err(qmp_error("plugging the vsock device back"))?;
        tracing::info!(load_secs = loaded.as_secs_f64(), "guest state restored");
        Ok(())
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
    event: Option<String>,
    data: Option<serde_json::Value>,
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

/// `query-migrate`'s answer (the fields banger reads).
#[derive(Debug, serde::Deserialize)]
struct QmpMigration {
    status: Option<String>,
    #[serde(rename = "error-desc")]
    error: Option<String>,
}

/// One QMP connection, past the capabilities handshake. Kept by hand
/// rather than the `qapi` crate: banger sends a dozen commands, each one
/// line of JSON, and `qapi` brings types generated for every command of
/// QEMU's schema.
struct Qmp {
    writer: UnixStream,
    reader: BufReader<UnixStream>,
    /// Events read while waiting for an answer: (name, data).
    events: Vec<(String, serde_json::Value)>,
}

const QMP_TIMEOUT: Duration = Duration::from_secs(3);

impl Qmp {
    fn connect(socket: &Path) -> std::io::Result<Self> {
        Self::connect_waiting(socket, QMP_TIMEOUT)
    }

    /// A session whose answers may take up to `wait` each.
    fn connect_waiting(socket: &Path, wait: Duration) -> std::io::Result<Self> {
        let stream = UnixStream::connect(socket)?;
        stream.set_read_timeout(Some(wait))?;
        let mut qmp = Self {
            writer: stream.try_clone()?,
            reader: BufReader::new(stream),
            events: Vec::new(),
        };
        let mut greeting = String::new();
        qmp.reader.read_line(&mut greeting)?;
        qmp.execute("qmp_capabilities", None)?;
        Ok(qmp)
    }

    fn read_line(&mut self) -> std::io::Result<QmpLine> {
        let mut line = String::new();
        if self.reader.read_line(&mut line)? == 0 {
            return Err(std::io::ErrorKind::UnexpectedEof.into());
        }
        serde_json::from_str(&line).map_err(std::io::Error::other)
    }

    /// Runs `command` and returns its `return` value; events that come
    /// first are kept for [`Qmp::wait_event`]. An `error` answer is an error.
    fn execute(
        &mut self,
        command: &str,
        arguments: Option<serde_json::Value>,
    ) -> std::io::Result<serde_json::Value> {
        let mut request = serde_json::json!({ "execute": command });
        if let Some(arguments) = arguments {
            request["arguments"] = arguments;
        }
        self.writer.write_all(request.to_string().as_bytes())?;
        self.writer.write_all(b"\n")?;
        loop {
            let line = self.read_line()?;
            if let Some(error) = line.error {
                return Err(std::io::Error::other(format!(
                    "QMP {command}: {} ({})",
                    error.desc, error.class
                )));
            }
            if let Some(answer) = line.answer {
                return Ok(answer);
            }
            if let Some(event) = line.event {
                self.events
                    .push((event, line.data.unwrap_or(serde_json::Value::Null)));
            }
        }
    }

    /// Waits up to `timeout` for the event `name` whose data matches `wanted`.
    fn wait_event(
        &mut self,
        name: &str,
        wanted: impl Fn(&serde_json::Value) -> bool,
        timeout: Duration,
    ) -> std::io::Result<()> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(at) = self
                .events
                .iter()
                .position(|(event, data)| event == name && wanted(data))
            {
                self.events.remove(at);
                return Ok(());
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Err(std::io::Error::new(
                    std::io::ErrorKind::TimedOut,
                    format!("no {name} event within {}s", timeout.as_secs()),
                ));
            }
            self.reader.get_ref().set_read_timeout(Some(left))?;
            let line = self.read_line();
            self.reader.get_ref().set_read_timeout(Some(QMP_TIMEOUT))?;
            match line {
                Ok(QmpLine {
                    event: Some(event),
                    data,
                    ..
                }) => self
                    .events
                    .push((event, data.unwrap_or(serde_json::Value::Null))),
                Ok(_) => {}
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
                Err(e) => return Err(e),
            }
        }
    }

    fn status(&mut self) -> std::io::Result<String> {
        let answer = self.execute("query-status", None)?;
        let status: QmpStatus = serde_json::from_value(answer).map_err(std::io::Error::other)?;
        Ok(status.status)
    }
}

/// `set_link`'s arguments: the NIC's netdev (the one it has).
fn link(up: bool) -> serde_json::Value {
    serde_json::json!({ "name": "net0", "up": up })
}

/// Puts the vsock device back at its slot, on a new connection to the
/// vhost-user helper (which keeps listening while QEMU is away).
fn plug_vsock(qmp: &mut Qmp, vm_dir: &Path) -> std::io::Result<()> {
    let plugged = qmp.execute(
        "qom-get",
        Some(serde_json::json!({
            "path": format!("/machine/peripheral/{VSOCK_DEVICE}"),
            "property": "type",
        })),
    );
    if plugged.is_ok() {
        return Ok(()); // a save interrupted before the unplug
    }
    let helper = banger_host::VmDir::new(vm_dir).vhost_vsock();
    qmp.execute(
        "chardev-add",
        Some(serde_json::json!({
            "id": VSOCK_CHARDEV,
            "backend": { "type": "socket", "data": {
                "addr": { "type": "unix", "data": { "path": helper } },
                "server": false,
            }},
        })),
    )?;
    qmp.execute(
        "device_add",
        Some(serde_json::json!({
            "driver": "vhost-user-vsock-pci",
            "id": VSOCK_DEVICE,
            "chardev": VSOCK_CHARDEV,
            "addr": format!("{VSOCK_SLOT:#x}"),
        })),
    )?;
    Ok(())
}

/// Leaves shared memory (the guest's, a memfd) out of the migration
/// stream, on the saving and on the loading side.
fn ignore_shared_memory(qmp: &mut Qmp) -> std::io::Result<()> {
    qmp.execute(
        "migrate-set-capabilities",
        Some(serde_json::json!({ "capabilities": [
            { "capability": "x-ignore-shared", "state": true },
        ]})),
    )
    .map(|_| ())
}

/// The guest's memory: the largest memfd QEMU holds under one of the two
/// names banger's command lines give it.
fn guest_ram_of(pid: u32) -> std::io::Result<std::fs::File> {
    let names = [LOADED_RAM_NAME, BOOTED_RAM_NAME].map(|name| format!("/memfd:{name} (deleted)"));
    let mut largest: Option<(u64, std::fs::File)> = None;
    for entry in std::fs::read_dir(format!("/proc/{pid}/fd"))? {
        let path = entry?.path();
        let Ok(target) = std::fs::read_link(&path) else {
            continue; // closed meanwhile
        };
        if !names.iter().any(|name| target.as_os_str() == name.as_str()) {
            continue;
        }
        let file = std::fs::File::open(&path)?;
        let len = file.metadata()?.len();
        if largest.as_ref().is_none_or(|(most, _)| len > *most) {
            largest = Some((len, file));
        }
    }
    largest.map(|(_, file)| file).ok_or_else(|| {
        std::io::Error::new(std::io::ErrorKind::NotFound, "no memfd of guest memory")
    })
}

/// Copies the stopped guest's memory from QEMU's memfd into `to`, zero
/// pages left as holes; returns the bytes written.
fn save_guest_ram(vm_dir: &Path, to: &Path) -> Result<u64> {
    let pid_file = banger_host::VmDir::new(vm_dir).vmm_pid();
    let Some((pid, _)) = process::recorded_process(&pid_file) else {
        return Err(VmmError::StateWrite(
            to.to_path_buf(),
            std::io::Error::new(
                std::io::ErrorKind::NotFound,
                format!("no running QEMU recorded in {}", pid_file.display()),
            ),
        ));
    };
    let memory = guest_ram_of(pid).map_err(|e| VmmError::GuestMemory(pid, e))?;
    banger_host::disk::copy_nonzero_pages(&memory, to)
        .map_err(|e| VmmError::StateWrite(to.to_path_buf(), e))
}

/// A memfd holding the memory saved in `ram`, for QEMU to map.
fn load_guest_ram(ram: &Path) -> std::io::Result<std::fs::File> {
    let memory = banger_host::disk::memory_file(LOADED_RAM_NAME)?;
    banger_host::disk::copy_data_into(&std::fs::File::open(ram)?, &memory)?;
    Ok(memory)
}

/// How a QMP command that failed is reported.
fn qmp_failed(what: &'static str, socket: &Path) -> impl FnOnce(std::io::Error) -> VmmError {
    let socket = socket.to_path_buf();
    move |source| VmmError::QmpCommand {
        what,
        socket,
        source,
    }
}

/// Polls `query-migrate` until the outgoing migration ends.
fn await_migration(qmp: &mut Qmp) -> std::io::Result<()> {
    let deadline = Instant::now() + MIGRATION_TIMEOUT;
    loop {
        let answer = qmp.execute("query-migrate", None)?;
        let migration: QmpMigration =
            serde_json::from_value(answer).map_err(std::io::Error::other)?;
        match migration.status.as_deref() {
            Some("completed") => return Ok(()),
            Some(status @ ("failed" | "cancelled")) => {
                return Err(std::io::Error::other(format!(
                    "migration {status}: {}",
                    migration.error.as_deref().unwrap_or("QEMU gave no reason")
                )));
            }
            _ if Instant::now() >= deadline => {
                return Err(std::io::Error::new(
                    std::io::ErrorKind::TimedOut,
                    format!("not done after {}s", MIGRATION_TIMEOUT.as_secs()),
                ));
            }
            _ => std::thread::sleep(Duration::from_millis(20)),
        }
    }
}

/// Runs one QMP command without arguments on a connection of its own.
fn qmp(socket: &Path, command: &str) -> std::io::Result<serde_json::Value> {
    Qmp::connect(socket)?.execute(command, None)
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
        if let Some(state) = &spec.restore
            && !state.join(STATE_FILE).is_file()
        {
            return Err(VmmError::StateMissing(state.clone(), STATE_FILE));
        }
        let fill_started = Instant::now();
        let loaded_ram = match &spec.restore {
            Some(state) if state.join(RAM_FILE).is_file() => {
                let ram = state.join(RAM_FILE);
                let memory = load_guest_ram(&ram).map_err(|e| VmmError::StateRead(ram, e))?;
                tracing::info!(
                    secs = fill_started.elapsed().as_secs_f64(),
                    "guest memory loaded into a memfd"
                );
                Some(memory)
            }
            _ => None,
        };
        let qmp_socket = banger_host::VmDir::new(&spec.vm_dir).qmp();
        let _ = std::fs::remove_file(&qmp_socket);
        let mut helper = self.start_vsock_helper(spec)?;
        let (out, err) = process::log_files(&spec.log_path)?;
        let mut command = Command::new(&self.binary);
        command
            .args(Self::args(spec, loaded_ram.as_ref().map(|f| f.as_raw_fd())))
            .current_dir(&spec.vm_dir)
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(err);
        detach(&mut command);
        if let Some(ram) = &loaded_ram {
            process::inherit_fd(&mut command, ram.as_raw_fd());
        }
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
        // QEMU has its own descriptor of the memory now.
        let memory_loaded = loaded_ram.is_some();
        drop(loaded_ram);
        if let Err(err) = process::await_ready(
            &mut child,
            &qmp_socket,
            &self.binary,
            &spec.log_path,
            START_TIMEOUT,
        )
        .and_then(|()| match &spec.restore {
            Some(state) => self.finish_restore(&mut child, spec, state, memory_loaded),
            None => Ok(()),
        }) {
            process::kill_child(&mut child);
            process::kill_child(&mut helper);
            self.cleanup(&spec.vm_dir);
            return Err(err);
        }
        // The helper is supervised by pid file from here on; reap it when it exits.
        crate::supervisor::Supervisor::shared().reap(helper);
        Ok(process::launched(child))
    }

    /// The ACPI power button, then Ctrl-Alt-Del too: the button needs
    /// logind, which starts after SSH answers (the trimmed boot), so a stop
    /// right after `vm create --wait` lost it and ended in SIGTERM after
    /// 20 s. systemd takes Ctrl-Alt-Del from its first moment (a reboot,
    /// which ends QEMU under -no-reboot); once a shutdown runs, it ignores it.
    fn request_shutdown(&self, vm_dir: &Path, _pid: u32) -> Result<()> {
        let socket = banger_host::VmDir::new(vm_dir).qmp();
        let failed = |e| VmmError::Qmp(socket.clone(), e);
        let mut qmp = Qmp::connect(&socket).map_err(failed)?;
        qmp.execute("system_powerdown", None).map_err(failed)?;
        let keys = ["ctrl", "alt", "delete"]
            .map(|key| serde_json::json!({ "type": "qcode", "data": key }));
        qmp.execute("send-key", Some(serde_json::json!({ "keys": keys })))
            .map(|_| ())
            .map_err(failed)
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
            .map_err(qmp_failed(what, &socket))
    }

    /// A saved state names no paths: the disks, TAP and vsock helper are
    /// the restoring command line's.
    fn restores_as_another_vm(&self) -> bool {
        true
    }

    fn set_link(&self, vm_dir: &Path, up: bool) -> Result<()> {
        let socket = banger_host::VmDir::new(vm_dir).qmp();
        let mut qmp = Qmp::connect(&socket).map_err(qmp_failed("connecting", &socket))?;
        qmp.execute("set_link", Some(link(up)))
            .map(|_| ())
            .map_err(qmp_failed("switching the network link", &socket))
    }

    /// vhost-user-vsock cannot migrate (its backend lacks
    /// `VHOST_USER_PROTOCOL_F_LOG_SHMFD`): it is unplugged, the guest
    /// stopped and its state migrated into a file; on any failure the
    /// guest runs on with the device back in.
    fn save_state(&self, vm_dir: &Path, state_dir: &Path) -> Result<()> {
        let socket = banger_host::VmDir::new(vm_dir).qmp();
        let qmp_error = |what| qmp_failed(what, &socket);
        let mut qmp = Qmp::connect(&socket).map_err(qmp_error("connecting"))?;
        let started = Instant::now();
        qmp.execute(
            "device_del",
            Some(serde_json::json!({ "id": VSOCK_DEVICE })),
        )
        .map_err(qmp_error("unplugging the vsock device"))?;
        qmp.wait_event(
            "DEVICE_DELETED",
            |data| data["device"] == VSOCK_DEVICE,
            UNPLUG_TIMEOUT,
        )
        .map_err(qmp_error(
            "waiting for the guest to release the vsock device",
        ))?;
        let unplugged = started.elapsed();
        let saved = (|| {
            qmp.execute(
                "chardev-remove",
                Some(serde_json::json!({ "id": VSOCK_CHARDEV })),
            )
            .map_err(qmp_error("removing the vsock connection"))?;
            qmp.execute("stop", None)
                .map_err(qmp_error("stopping the guest"))?;
            // QEMU's default cap (32 MiB/s) is for live links, not files.
            qmp.execute(
                "migrate-set-parameters",
                Some(serde_json::json!({ "max-bandwidth": u64::MAX >> 2 })),
            )
            .map_err(qmp_error("lifting the migration bandwidth cap"))?;
            // The stream takes the devices; the memory is copied beside it.
            ignore_shared_memory(&mut qmp)
                .map_err(qmp_error("leaving the memory out of the stream"))?;
            let uri = format!("exec:cat > {}", shell_quoted(&state_dir.join(STATE_FILE)));
            qmp.execute("migrate", Some(serde_json::json!({ "uri": uri })))
                .map_err(qmp_error("saving the guest's state"))?;
            await_migration(&mut qmp).map_err(qmp_error("saving the guest's state"))?;
            save_guest_ram(vm_dir, &state_dir.join(RAM_FILE))
        })();
        let memory_bytes = match saved {
            Ok(bytes) => bytes,
            Err(err) => {
                let _ = qmp.execute("migrate_cancel", None);
                if let Err(undo) = qmp
                    .execute("cont", None)
                    .and_then(|_| plug_vsock(&mut qmp, vm_dir))
                {
                    tracing::error!(error = %undo, "could not let the guest run on after a failed save");
                }
                return Err(err);
            }
        };
        tracing::info!(
            unplug_secs = unplugged.as_secs_f64(),
            save_secs = (started.elapsed() - unplugged).as_secs_f64(),
            memory_bytes,
            "guest state saved"
        );
        Ok(())
    }

    fn resume_after_save(&self, vm_dir: &Path) -> Result<()> {
        let socket = banger_host::VmDir::new(vm_dir).qmp();
        let qmp_error = |what| qmp_failed(what, &socket);
        let mut qmp = Qmp::connect(&socket).map_err(qmp_error("connecting"))?;
        // After a daemon died mid-save a migration may still run.
        let _ = qmp.execute("migrate_cancel", None);
        qmp.execute("cont", None)
            .map_err(qmp_error("resuming the guest"))?;
        plug_vsock(&mut qmp, vm_dir).map_err(qmp_error("plugging the vsock device back"))
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
            restore: None,
            restore_as_another_vm: false,
        };
        let line = Qemu::args(&spec, None).join(" ");
        assert!(!line.contains("-incoming"), "{line}");
        for part in [
            "-machine pc,accel=tcg,memory-backend=mem",
            "-object memory-backend-memfd,id=mem,size=1024M,share=on",
            "-kernel /nonexistent/vmlinux",
            "-initrd /r/initrd.img",
            "-drive file=/r/rootfs.ext4,if=none,format=raw,id=base,readonly=on",
            "-device virtio-blk-pci,drive=base,id=blk-base,addr=0x4",
            "-netdev tap,id=net0,ifname=bg-aa12,script=no,downscript=no",
            "-device virtio-net-pci,netdev=net0,mac=06:00:0a:db:00:02,addr=0x2",
            "-chardev socket,id=vsock,path=/s/vms/aa12/vhost-vsock.sock",
            "-device vhost-user-vsock-pci,chardev=vsock,id=vsock0,addr=0x3",
            "-chardev file,id=console,path=/s/vms/aa12/firecracker.log,append=on",
            "-qmp unix:/s/vms/aa12/qmp.sock,server=on,wait=off",
        ] {
            assert!(line.contains(part), "missing {part:?} in {line}");
        }
        let restoring = LaunchSpec {
            restore: Some("/s/vms/aa12/suspended".into()),
            ..spec
        };
        // A state saved before qemu-ram: the memory is in the stream.
        let line = Qemu::args(&restoring, None).join(" ");
        assert!(
            line.contains("-S -incoming exec:cat '/s/vms/aa12/suspended/qemu-state'"),
            "{line}"
        );
        // The memory loaded into a memfd QEMU inherits: the stream waits
        // for x-ignore-shared.
        let mapped = Qemu::args(&restoring, Some(7)).join(" ");
        assert!(mapped.contains("-S -incoming defer"), "{mapped}");
        assert!(
            mapped.contains(
                "-object memory-backend-file,id=mem,size=1024M,share=on,mem-path=/proc/self/fd/7"
            ),
            "{mapped}"
        );
        assert!(
            !line.contains("vhost-user-vsock-pci"),
            "the state was saved without the vsock device: {line}"
        );
        assert!(line.contains("virtio-blk-pci,drive=base,id=blk-base,addr=0x4"));
    }

    #[test]
    fn a_quote_in_a_path_stays_inside_its_quotes() {
        assert_eq!(shell_quoted(Path::new("/a b/it's")), r"'/a b/it'\''s'");
    }
}
