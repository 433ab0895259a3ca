//! The VM lifecycle: create, start, stop, restart, kill, delete, set, stats,
//! and reconciling with the host when bangerd starts.
//!
//! Every action runs under its VM's lock and is blocking code (the daemon
//! runs it on the blocking pool). Every step that changes the host has an
//! undo; a failure runs the undos in reverse, so nothing is left behind.

use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use banger_host::{Paths, procfs};
use banger_proto::validate::{self, ValidationError, format_size};
use banger_proto::{CreateVmParams, DiskUsage, Image, PingResult, SetVmParams, VmState, VmStats};
use banger_vmm::process::{ExitReason, send_signal, wait_child, wait_foreign};
use banger_vmm::{Drive, LaunchSpec, Launched, Prepared, Vmm};
use thiserror::Error;

use crate::capability::{self, Capability, CapabilityError, VmContext};
use crate::exits::ExitBoard;
use crate::locks::VmLocks;
use crate::namegen::{self, NamegenError};
use crate::service::vm_files;
use crate::store::{Store, StoreError, VmRecord};

pub const DEFAULT_IMAGE: &str = "default";
pub const DEFAULT_VCPU: u32 = 2;
pub const DEFAULT_MEMORY_MIB: u64 = 2048;
pub const DEFAULT_DISK_SIZE: u64 = 16 << 30;
/// The initrd finds its disks by label; `net.ifnames=0` keeps the NIC `eth0`.
pub const BOOT_ARGS: &str = "console=ttyS0 reboot=k panic=1 net.ifnames=0";

#[derive(Debug, Error)]
pub enum LifecycleError {
    #[error(transparent)]
    Invalid(#[from] ValidationError),
    #[error("a VM named {0:?} already exists: pick another --name")]
    NameTaken(String),
    #[error("no VM named {0:?} and no VM ID starts with it: see `banger vm list`")]
    NotFound(String),
    #[error("{vm_ref:?} matches several VMs ({}): use a longer ID prefix or the full ID", .candidates.join(", "))]
    Ambiguous {
        vm_ref: String,
        candidates: Vec<String>,
    },
    #[error(
        "no image named {0:?}: see `banger image list`, or run `make runtime` for the default image"
    )]
    NoImage(String),
    #[error("image {image:?} is unusable: its {what} {path} is missing")]
    ImageFileMissing {
        image: String,
        what: &'static str,
        path: PathBuf,
    },
    #[error("cannot {action} {name}: the host is not ready:\n  {}", .failures.join("\n  "))]
    NotReady {
        action: &'static str,
        name: String,
        failures: Vec<String>,
    },
    #[error("unknown VMM backend {0:?}: use firecracker or qemu")]
    UnknownVmm(String),
    #[error("{name} is running: stop it first with `banger vm stop {name}`")]
    MustBeStopped { name: String },
    #[error(
        "{action} needs at least {} free in {} for the disks and the guest's first writes, and {} is free: free space there first",
        format_size(*.needed), .dir.display(), format_size(*.free)
    )]
    NoSpace {
        action: &'static str,
        dir: PathBuf,
        free: u64,
        needed: u64,
    },
    #[error("{name} is not running: start it with `banger vm start {name}`")]
    NotRunning { name: String },
    #[error(
        "refusing to shrink {name}'s work disk from {} to {}: work disks only grow",
        format_size(*.current), format_size(*.requested)
    )]
    Shrink {
        name: String,
        current: u64,
        requested: u64,
    },
    #[error("{action} {name}: {step} failed")]
    Step {
        action: &'static str,
        name: String,
        step: String,
        #[source]
        source: Option<Box<dyn std::error::Error + Send + Sync + 'static>>,
    },
    #[error("{0}")]
    Reserve(
        String,
        #[source] Option<Box<dyn std::error::Error + Send + Sync + 'static>>,
    ),
    #[error("sending {signal} to {name}'s VMM (pid {pid})")]
    Signal {
        name: String,
        signal: String,
        pid: u32,
        source: std::io::Error,
    },
    #[error(transparent)]
    Namegen(#[from] NamegenError),
    #[error(transparent)]
    Store(#[from] StoreError),
}

impl LifecycleError {
    pub fn kind(&self) -> banger_proto::ErrorKind {
        use banger_proto::ErrorKind as K;
        match self {
            Self::Invalid(_)
            | Self::Ambiguous { .. }
            | Self::Shrink { .. }
            | Self::UnknownVmm(_) => K::InvalidInput,
            Self::NoSpace { .. } => K::Unavailable,
            Self::NameTaken(_) | Self::MustBeStopped { .. } | Self::NotRunning { .. } => {
                K::Conflict
            }
            Self::NotFound(_) | Self::NoImage(_) => K::NotFound,
            Self::ImageFileMissing { .. } | Self::Namegen(_) => K::InvalidInput,
            Self::Reserve(..) | Self::NotReady { .. } => K::Unavailable,
            Self::Step { .. } | Self::Signal { .. } => K::HostFailure,
            Self::Store(_) => K::Internal,
        }
    }
}

impl LifecycleError {
    /// A failed step whose cause is a capability's (its own message is the step).
    fn capability(action: &'static str, name: &str, err: CapabilityError) -> Self {
        Self::Step {
            action,
            name: name.to_owned(),
            step: err.message,
            source: err.source,
        }
    }

    fn step(
        action: &'static str,
        name: &str,
        step: &str,
        source: impl std::error::Error + Send + Sync + 'static,
    ) -> Self {
        Self::Step {
            action,
            name: name.to_owned(),
            step: step.to_owned(),
            source: Some(Box::new(source)),
        }
    }
}

pub type Result<T, E = LifecycleError> = std::result::Result<T, E>;

/// How long each phase of a stop may take.
#[derive(Debug, Clone, Copy)]
pub struct StopTimeouts {
    /// For the guest to power off after Ctrl-Alt-Del.
    pub graceful: Duration,
    /// For the VMM to exit after SIGTERM.
    pub term: Duration,
}

impl Default for StopTimeouts {
    fn default() -> Self {
        Self {
            graceful: Duration::from_secs(20),
            term: Duration::from_secs(5),
        }
    }
}

/// What to undo, newest first, when a later step fails.
#[derive(Default)]
struct Undo {
    steps: Vec<(&'static str, UndoFn)>,
}

type UndoFn = Box<dyn FnOnce() + Send>;

impl Undo {
    fn push(&mut self, what: &'static str, f: impl FnOnce() + Send + 'static) {
        self.steps.push((what, Box::new(f)));
    }

    fn run(self) {
        for (what, f) in self.steps.into_iter().rev() {
            tracing::debug!(undo = what, "rolling back");
            f();
        }
    }
}

#[derive(Debug)]
pub struct Lifecycle {
    paths: Paths,
    store: Arc<Store>,
    backends: Vec<Arc<dyn Vmm>>,
    /// In pipeline order; undone in reverse.
    capabilities: Vec<Arc<dyn Capability>>,
    namegen_path: Option<PathBuf>,
    locks: VmLocks,
    exits: ExitBoard,
    /// Serializes choosing names and identifiers with inserting the row.
    allocation: Mutex<()>,
    /// Set when this daemon stops: its watchers then leave exits to the
    /// next daemon, which adopts the VMs.
    retired: std::sync::atomic::AtomicBool,
    pub stop_timeouts: StopTimeouts,
    /// Free space a create or a disk growth needs in the state directory.
    min_free_bytes: u64,
    crash: Option<Crash>,
}

/// What creating or growing disks needs free: the templates' copies are a
/// few MiB, the rest is room for the guest's first writes, so that a new
/// VM does not start on a disk that is already full.
pub const MIN_FREE_BYTES: u64 = 1 << 30;

fn now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX))
        .unwrap_or(0)
}

impl Lifecycle {
    /// `backends[0]` runs new VMs; the others can still stop and adopt VMs
    /// made with them. `capabilities` run in order.
    pub fn new(
        paths: Paths,
        store: Arc<Store>,
        backends: Vec<Arc<dyn Vmm>>,
        capabilities: Vec<Arc<dyn Capability>>,
        namegen_path: Option<PathBuf>,
    ) -> Arc<Self> {
        assert!(!backends.is_empty(), "at least one VMM backend");
        Arc::new(Self {
            paths,
            store,
            backends,
            capabilities,
            namegen_path,
            locks: VmLocks::default(),
            exits: ExitBoard::default(),
            allocation: Mutex::new(()),
            retired: std::sync::atomic::AtomicBool::new(false),
            stop_timeouts: StopTimeouts::default(),
            min_free_bytes: MIN_FREE_BYTES,
            crash: std::env::var(CRASH_AT_VAR).ok().map(Crash::Kill),
        })
    }

    /// Crashes at `step` (tests; see [`Crash`]).
    pub fn with_crash(mut self: Arc<Self>, crash: Crash) -> Arc<Self> {
        Arc::get_mut(&mut self)
            .expect("configured before use")
            .crash = Some(crash);
        self
    }

    fn crash_point(&self, step: &str) {
        match &self.crash {
            Some(Crash::Kill(at)) if at == step => {
                tracing::warn!(step, "{CRASH_AT_VAR}: killing bangerd here");
                let _ = send_signal(std::process::id(), libc::SIGKILL);
                std::thread::sleep(Duration::from_secs(60));
            }
            Some(Crash::Park(at, parked)) if at == step => {
                parked.store(true, std::sync::atomic::Ordering::SeqCst);
                loop {
                    std::thread::park();
                }
            }
            _ => {}
        }
    }

    /// Changes the free space creates and disk growth need (tests).
    pub fn with_min_free_bytes(mut self: Arc<Self>, bytes: u64) -> Arc<Self> {
        Arc::get_mut(&mut self)
            .expect("configured before use")
            .min_free_bytes = bytes;
        self
    }

    /// Refuses `action` when the state directory's filesystem has less
    /// than [`MIN_FREE_BYTES`] free, naming both figures.
    fn check_free_space(&self, action: &'static str) -> Result<()> {
        let dir = self.paths.vms_dir.clone();
        let Ok(free) = banger_host::disk::free_bytes(&dir) else {
            return Ok(()); // unknown: mkfs or the copy will say what failed
        };
        if free < self.min_free_bytes {
            return Err(LifecycleError::NoSpace {
                action,
                dir,
                free,
                needed: self.min_free_bytes,
            });
        }
        Ok(())
    }

    pub fn with_stop_timeouts(mut self: Arc<Self>, timeouts: StopTimeouts) -> Arc<Self> {
        Arc::get_mut(&mut self)
            .expect("configured before use")
            .stop_timeouts = timeouts;
        self
    }

    /// Stops recording VMM exits: another daemon owns the VMs from now on.
    pub fn retire(&self) {
        self.retired
            .store(true, std::sync::atomic::Ordering::SeqCst);
    }

    pub fn store(&self) -> &Store {
        &self.store
    }

    fn backend(&self, name: &str) -> Arc<dyn Vmm> {
        self.backends
            .iter()
            .find(|b| b.name() == name)
            .unwrap_or(&self.backends[0])
            .clone()
    }

    fn vm_dir(&self, id: &str) -> PathBuf {
        self.paths.vm_dir(id)
    }

    fn context(&self, record: &VmRecord) -> VmContext {
        let base_rootfs = self
            .store
            .get_image(&record.image)
            .ok()
            .flatten()
            .map(|i| i.rootfs)
            .unwrap_or_default();
        VmContext {
            dir: self.vm_dir(&record.id),
            base_rootfs,
        }
    }

    /// Finds a VM by exact name, else by unique ID prefix.
    pub fn resolve(&self, vm_ref: &str) -> Result<VmRecord> {
        let vms = self.store.list_vms()?;
        if vm_ref.is_empty() {
            return Err(LifecycleError::NotFound(String::new()));
        }
        // A full ID is unambiguous. A name that is also the start of
        // another VM's ID is not: saying which was meant beats guessing.
        let mut by_name = None;
        let mut by_prefix = Vec::new();
        for vm in vms {
            if vm.id == vm_ref {
                return Ok(vm);
            }
            if vm.name == vm_ref {
                by_name = Some(vm);
            } else if vm.id.starts_with(vm_ref) {
                by_prefix.push(vm);
            }
        }
        let label = |vm: &VmRecord, how: &str| {
            format!("{} ({how} {})", vm.name, &vm.id[..8.min(vm.id.len())])
        };
        match (by_name, by_prefix.len()) {
            (Some(vm), 0) => Ok(vm),
            (None, 0) => Err(LifecycleError::NotFound(validate::clip(vm_ref))),
            (None, 1) => Ok(by_prefix.remove(0)),
            (named, _) => Err(LifecycleError::Ambiguous {
                vm_ref: validate::clip(vm_ref),
                candidates: named
                    .iter()
                    .map(|vm| label(vm, "its name; ID"))
                    .chain(by_prefix.iter().map(|vm| label(vm, "ID")))
                    .collect(),
            }),
        }
    }

    fn record(&self, id: &str) -> Result<VmRecord> {
        self.store
            .get_vm(id)?
            .ok_or_else(|| LifecycleError::NotFound(id.to_owned()))
    }

    /// The image and a check that its files are still there.
    pub fn usable_image(&self, name: &str) -> Result<Image> {
        let image = self
            .store
            .get_image(name)?
            .ok_or_else(|| LifecycleError::NoImage(name.to_owned()))?;
        let missing = |what: &'static str, path: PathBuf| LifecycleError::ImageFileMissing {
            image: name.to_owned(),
            what,
            path,
        };
        if !image.rootfs.exists() {
            return Err(missing("rootfs", image.rootfs.clone()));
        }
        match &image.kernel {
            Some(kernel) if !kernel.exists() => return Err(missing("kernel", kernel.clone())),
            None => return Err(missing("kernel", PathBuf::from("(none recorded)"))),
            _ => {}
        }
        if let Some(initrd) = image.initrd.as_ref().filter(|p| !p.exists()) {
            return Err(missing("initrd", initrd.clone()));
        }
        Ok(image)
    }

    #[tracing::instrument(skip_all, fields(name = params.name.as_deref().unwrap_or("(generated)")))]
    pub fn create(self: &Arc<Self>, params: &CreateVmParams) -> Result<VmRecord> {
        if let Some(name) = &params.name {
            validate::vm_name(name)?;
        }
        let vcpu = params.vcpu.unwrap_or(DEFAULT_VCPU);
        validate::vcpu(vcpu)?;
        let memory_mib = params.memory_mib.unwrap_or(DEFAULT_MEMORY_MIB);
        validate::memory_mib(memory_mib)?;
        let disk_size = match &params.disk_size {
            Some(text) => validate::disk_size(text)?,
            None => DEFAULT_DISK_SIZE,
        };
        let image_name = params
            .image
            .clone()
            .unwrap_or_else(|| DEFAULT_IMAGE.to_owned());
        let image = self.usable_image(&image_name)?;

        let template = VmRecord {
            id: String::new(),
            name: params.name.clone().unwrap_or_else(|| "the new VM".into()),
            state: VmState::Creating,
            image: image_name.clone(),
            vmm: match params.vmm.as_deref() {
                Some(name) if self.backends.iter().any(|b| b.name() == name) => name.to_owned(),
                Some(other) => return Err(LifecycleError::UnknownVmm(other.to_owned())),
                None => self.backends[0].name().to_owned(),
            },
            vcpu,
            memory_mib,
            disk_size_bytes: disk_size,
            nat: params.nat,
            guest_ip: None,
            tap: None,
            vsock_cid: None,
            vsock_path: None,
            pid: None,
            pid_start_time: None,
            created_at: now(),
            started_at: None,
            stopped_at: None,
            exit_reason: None,
            last_error: None,
        };
        self.preflight("create", &template)?;
        self.check_free_space("creating a VM")?;
        let mut record = self.reserve(params.name.as_deref(), template)?;
        let id = record.id.clone();
        let name = record.name.clone();
        self.locks.with(&id, || {
            let mut undo = Undo::default();
            match self.build_and_boot(&mut record, &image, &mut undo) {
                Ok(()) => {
                    tracing::info!(vm = %name, id = %id, pid = ?record.pid, ip = ?record.guest_ip, "VM created");
                    Ok(record)
                }
                Err(err) => {
                    undo.run();
                    if let Err(e) = self.store.delete_vm(&id) {
                        tracing::error!(vm = %name, error = %e, "removing the row of a failed create");
                    }
                    tracing::warn!(vm = %name, error = %error_text(&err), "create failed and was rolled back");
                    Err(err)
                }
            }
        })
    }

    /// Picks a name (given or generated) and every capability's identifiers,
    /// and inserts the row, atomically.
    fn reserve(&self, name: Option<&str>, template: VmRecord) -> Result<VmRecord> {
        let _allocation = self.allocation.lock().unwrap_or_else(|p| p.into_inner());
        let existing = self.store.list_vms()?;
        let taken = |n: &str| existing.iter().any(|vm| vm.name == n);
        let name = match name {
            Some(name) if taken(name) => return Err(LifecycleError::NameTaken(name.to_owned())),
            Some(name) => name.to_owned(),
            None => namegen::generate(self.namegen_path.as_deref(), &taken)?,
        };
        let id = loop {
            let id = new_id();
            if !existing.iter().any(|vm| vm.id.starts_with(&id[..8])) {
                break id;
            }
        };
        let mut record = VmRecord {
            id,
            name,
            ..template
        };
        for capability in &self.capabilities {
            capability
                .reserve(&mut record, &existing)
                .map_err(|e| LifecycleError::Reserve(e.message, e.source))?;
        }
        self.store.insert_vm(&record)?;
        self.crash_point("create:reserved");
        Ok(record)
    }

    fn build_and_boot(
        self: &Arc<Self>,
        record: &mut VmRecord,
        image: &Image,
        undo: &mut Undo,
    ) -> Result<()> {
        let name = record.name.clone();
        let dir = self.vm_dir(&record.id);
        std::fs::create_dir_all(&dir)
            .map_err(|e| LifecycleError::step("creating", &name, "creating the VM directory", e))?;
        let removal = dir.clone();
        undo.push("remove the VM directory", move || {
            if let Err(e) = std::fs::remove_dir_all(&removal) {
                tracing::error!(dir = %removal.display(), error = %e, "rollback could not remove the VM directory");
            }
        });
        // The VMM starts up while the disks are made; if they fail, dropping
        // `prepared` kills it before the directory goes.
        let prepared = self.prepare_vmm(record, "creating")?;
        let ctx = VmContext {
            dir,
            base_rootfs: image.rootfs.clone(),
        };
        let provisioned = record.clone();
        capability::forward(
            self.capabilities.iter().map(AsRef::as_ref),
            |c| c.provision(&provisioned, &ctx),
            |c| self.undo_quietly(c.name(), c.deprovision(&provisioned, &ctx)),
        )
        .map_err(|e| LifecycleError::capability("creating", &name, e))?;
        self.crash_point("create:provisioned");
        let this = self.clone();
        let (deprovision, ctx_copy) = (record.clone(), ctx.clone());
        undo.push("deprovision", move || {
            for c in this.capabilities.iter().rev() {
                this.undo_quietly(c.name(), c.deprovision(&deprovision, &ctx_copy));
            }
        });
        let pid = self.boot(record, image, "creating", Some(prepared))?;
        let this = self.clone();
        let booted = record.clone();
        undo.push("stop the VMM", move || {
            this.force_stop(pid);
            this.detach_all(&booted);
        });
        record.state = VmState::Running;
        self.store
            .update_vm(record)
            .map_err(|e| LifecycleError::step("creating", &name, "recording the running VM", e))?;
        Ok(())
    }

    /// The backend's and every capability's checks; any failure stops the
    /// action before it changes anything, with doctor's messages.
    fn preflight(&self, action: &'static str, record: &VmRecord) -> Result<()> {
        let mut checks = self.backend(&record.vmm).checks();
        for c in &self.capabilities {
            checks.extend(c.checks(record));
        }
        let failures: Vec<String> = checks
            .iter()
            .filter(|c| c.status == banger_proto::check::CheckStatus::Fail)
            .map(banger_proto::check::Check::message)
            .collect();
        if failures.is_empty() {
            Ok(())
        } else {
            Err(LifecycleError::NotReady {
                action,
                name: record.name.clone(),
                failures,
            })
        }
    }

    fn undo_quietly(&self, capability: &str, result: capability::Result<()>) {
        if let Err(e) = result {
            tracing::error!(capability, error = %error_text(&e), "undo failed");
        }
    }

    fn launch_spec(&self, record: &VmRecord, image: &Image) -> LaunchSpec {
        let dir = self.vm_dir(&record.id);
        LaunchSpec {
            vm_id: record.id.clone(),
            vcpu: record.vcpu,
            memory_mib: record.memory_mib,
            kernel: image.kernel.clone().unwrap_or_default(),
            initrd: image.initrd.clone(),
            boot_args: BOOT_ARGS.to_owned(),
            drives: vec![
                Drive {
                    id: "base".into(),
                    path: image.rootfs.clone(),
                    read_only: true,
                },
                Drive {
                    id: "overlay".into(),
                    path: dir.join(vm_files::OVERLAY),
                    read_only: false,
                },
                Drive {
                    id: "work".into(),
                    path: dir.join(vm_files::WORK_DISK),
                    read_only: false,
                },
                Drive {
                    id: "config".into(),
                    path: dir.join(vm_files::CONFIG_DRIVE),
                    read_only: true,
                },
            ],
            net: None,
            vsock_cid: record.vsock_cid.unwrap_or(0),
            vsock_path: record
                .vsock_path
                .clone()
                .unwrap_or_else(|| dir.join(vm_files::VSOCK)),
            log_path: dir.join(vm_files::VMM_LOG),
            vm_dir: dir,
        }
    }

    /// Attaches every capability, launches the VMM and starts watching it;
    /// the record gets its PID. On failure nothing stays attached.
    fn boot(
        self: &Arc<Self>,
        record: &mut VmRecord,
        image: &Image,
        action: &'static str,
        prepared: Option<Prepared>,
    ) -> Result<u32> {
        let backend = self.backend(&record.vmm);
        record.vmm = backend.name().to_owned();
        // Started before the guest config and the TAP, so they overlap.
        let prepared = match prepared {
            Some(prepared) => prepared,
            None => self.prepare_vmm(record, action)?,
        };
        let ctx = VmContext {
            dir: self.vm_dir(&record.id),
            base_rootfs: image.rootfs.clone(),
        };
        let mut guest = crate::guest::GuestConfig {
            hostname: record.name.clone(),
            ..Default::default()
        };
        for c in &self.capabilities {
            c.guest_config(record, &mut guest);
        }
        let files = guest.render();
        for c in &self.capabilities {
            c.write_guest(record, &ctx, &files)
                .map_err(|e| LifecycleError::capability(action, &record.name, e))?;
        }
        let launched = self
            .attach_and_launch(record, image, backend.as_ref(), action, prepared)
            .inspect_err(|_| {
                // The config drive exists only while the VM runs.
                let _ = std::fs::remove_file(ctx.dir.join(vm_files::CONFIG_DRIVE));
            })?;
        self.crash_point("boot:launched");
        let pid = launched.pid;
        record.pid = Some(pid);
        record.pid_start_time = Some(launched.start_time);
        record.started_at = Some(now());
        record.stopped_at = None;
        record.exit_reason = None;
        self.watch(record, launched);
        Ok(pid)
    }

    /// Every capability's attachment, then the VMM; on failure nothing
    /// stays attached and no process remains.
    fn attach_and_launch(
        &self,
        record: &VmRecord,
        image: &Image,
        backend: &dyn Vmm,
        action: &'static str,
        prepared: Prepared,
    ) -> Result<Launched> {
        let mut spec = self.launch_spec(record, image);
        capability::forward(
            self.capabilities.iter().map(AsRef::as_ref),
            |c| c.attach(record, &mut spec),
            |c| self.undo_quietly(c.name(), c.detach(record)),
        )
        .map_err(|e| LifecycleError::capability(action, &record.name, e))?;
        backend.launch_prepared(&spec, prepared).map_err(|e| {
            self.detach_all(record);
            LifecycleError::step(action, &record.name, "starting the VMM", e)
        })
    }

    fn prepare_vmm(&self, record: &VmRecord, action: &'static str) -> Result<Prepared> {
        let dir = self.vm_dir(&record.id);
        self.backend(&record.vmm)
            .prepare(&dir, &record.id, &dir.join(vm_files::VMM_LOG))
            .map_err(|e| LifecycleError::step(action, &record.name, "starting the VMM", e))
    }

    /// Releases what a running VM held, newest first; failures are logged,
    /// never fatal (the next daemon start reconciles what is left).
    fn detach_all(&self, record: &VmRecord) {
        for c in self.capabilities.iter().rev() {
            self.undo_quietly(c.name(), c.detach(record));
        }
    }

    /// A thread per running VMM that records its exit, whenever it happens.
    fn watch(self: &Arc<Self>, record: &VmRecord, launched: Launched) {
        let Launched {
            pid,
            start_time,
            child,
        } = launched;
        self.exits.register(pid);
        let this = self.clone();
        let id = record.id.clone();
        let backend = self.backend(&record.vmm);
        // What the VMM logs from here on explains its exit (see `explain_exit`).
        let log = self.vm_dir(&record.id).join(vm_files::VMM_LOG);
        let log_offset = std::fs::metadata(&log).map_or(0, |m| m.len());
        let spawned = std::thread::Builder::new()
            .name(format!("vm-exit-{pid}"))
            .spawn(move || {
                let status = match child {
                    Some(child) => wait_child(child),
                    None => wait_foreign(pid, Some(start_time)),
                };
                let reason = backend.explain_exit(status, &log_since(&log, log_offset));
                this.exits.post(pid, reason.clone());
                this.record_exit(&id, pid, &reason);
                this.exits.mark_handled(pid);
            });
        if let Err(e) = spawned {
            tracing::error!(pid, error = %e, "could not start the exit watcher thread");
        }
    }

    /// A VMM exited on its own (guest powered off, crash, signal from
    /// outside): the VM becomes stopped with the reason and releases what
    /// it held. Exits that an action already recorded are left alone.
    fn record_exit(&self, id: &str, pid: u32, reason: &ExitReason) {
        if self.retired.load(std::sync::atomic::Ordering::SeqCst) {
            return;
        }
        self.locks.with(id, || {
            let Ok(Some(mut record)) = self.store.get_vm(id) else {
                return;
            };
            if record.pid != Some(pid) {
                return;
            }
            tracing::info!(vm = %record.name, pid, reason = %reason.describe(), "VMM exited");
            self.remove_runtime_files(&record);
            self.detach_all(&record);
            mark_stopped(&mut record, reason.describe());
            if let Err(e) = self.store.update_vm(&record) {
                tracing::error!(vm = %record.name, error = %e, "recording the VMM's exit");
            }
        });
    }

    /// SIGKILL and wait: for rollbacks, where the guest's state is worthless.
    fn force_stop(&self, pid: u32) {
        let _ = send_signal(pid, libc::SIGKILL);
        if self.exits.wait_exit(pid, Duration::from_secs(10)).is_none() {
            tracing::error!(pid, "VMM did not exit 10s after SIGKILL");
        }
    }

    /// Ctrl-Alt-Del, a bounded wait, then SIGTERM, then SIGKILL; then the
    /// VM's attachments are released. Returns how the VMM ended, in words.
    fn shut_down(&self, record: &VmRecord, pid: u32) -> String {
        let dir = self.vm_dir(&record.id);
        let graceful = self.stop_timeouts.graceful;
        let why = match self.backend(&record.vmm).request_shutdown(&dir, pid) {
            Ok(()) => match self.exits.wait_exit(pid, graceful) {
                Some(reason) => {
                    self.remove_runtime_files(record);
                    self.detach_all(record);
                    return reason.describe();
                }
                None => {
                    tracing::warn!(vm = %record.name, timeout = ?graceful, "guest did not power off; sending SIGTERM");
                    format!("the guest did not power off within {}s", graceful.as_secs())
                }
            },
            Err(e) => {
                tracing::warn!(vm = %record.name, error = %e, "graceful shutdown request failed; sending SIGTERM");
                "the shutdown request failed".to_owned()
            }
        };
        let _ = send_signal(pid, libc::SIGTERM);
        let reason = match self.exits.wait_exit(pid, self.stop_timeouts.term) {
            Some(_) => format!("{why}; stopped with SIGTERM"),
            None => {
                tracing::warn!(vm = %record.name, "VMM ignored SIGTERM; sending SIGKILL");
                let _ = send_signal(pid, libc::SIGKILL);
                let _ = self.exits.wait_exit(pid, Duration::from_secs(10));
                format!("{why} and the VMM ignored SIGTERM; stopped with SIGKILL")
            }
        };
        self.remove_runtime_files(record);
        self.detach_all(record);
        reason
    }

    /// Sockets and helpers a dead VMM leaves behind.
    fn remove_runtime_files(&self, record: &VmRecord) {
        let dir = self.vm_dir(&record.id);
        self.backend(&record.vmm).cleanup(&dir);
        let mut files = vec![
            dir.join(banger_vmm::firecracker::API_SOCKET),
            dir.join(vm_files::CONFIG_DRIVE),
            dir.join(banger_vmm::process::VMM_PID_FILE),
        ];
        files.extend(record.vsock_path.clone());
        for file in files {
            let _ = std::fs::remove_file(file);
        }
    }

    fn running_pid(record: &VmRecord) -> Option<u32> {
        match record.state {
            VmState::Running | VmState::Paused | VmState::Starting | VmState::Stopping => {
                record.pid
            }
            _ => None,
        }
    }

    /// Marks running VMs whose VMM holds the guest on an I/O error as
    /// paused, saying why, and paused ones that run again as running. The
    /// daemon calls it every few seconds.
    pub fn watch_io_errors(&self) {
        let Ok(vms) = self.store.list_vms() else {
            return;
        };
        for vm in vms
            .iter()
            .filter(|vm| matches!(vm.state, VmState::Running | VmState::Paused))
        {
            let dir = self.vm_dir(&vm.id);
            let Some(paused) = self.backend(&vm.vmm).io_error_pause(&dir) else {
                continue;
            };
            let _ = self.locks.with(&vm.id, || -> Result<()> {
                let mut record = self.record(&vm.id)?;
                match (record.state, paused) {
                    (VmState::Running, true) => {
                        let free = banger_host::disk::free_bytes(&dir)
                            .map_or_else(|_| "an unknown amount".to_owned(), format_size);
                        record.state = VmState::Paused;
                        record.last_error = Some(format!(
                            "the VMM paused the guest after a disk write failed: the host filesystem holding {} has {free} free; free space there, then `banger vm restart {}`",
                            dir.display(),
                            record.name
                        ));
                        tracing::error!(vm = %record.name, free = %free, "guest paused on an I/O error");
                    }
                    (VmState::Paused, false) => {
                        record.state = VmState::Running;
                        record.last_error = None;
                        tracing::info!(vm = %record.name, "guest runs again");
                    }
                    _ => return Ok(()),
                }
                self.store.update_vm(&record)?;
                Ok(())
            });
        }
    }

    #[tracing::instrument(skip(self), fields(vm = %id))]
    pub fn start(self: &Arc<Self>, id: &str) -> Result<VmRecord> {
        self.locks.with(id, || self.start_locked(id))
    }

    fn start_locked(self: &Arc<Self>, id: &str) -> Result<VmRecord> {
        let mut record = self.record(id)?;
        if let Some(pid) = Self::running_pid(&record)
            && procfs::is_running(pid, record.pid_start_time)
        {
            return Ok(record);
        }
        let image = self.usable_image(&record.image)?;
        self.preflight("start", &record)?;
        record.state = VmState::Starting;
        self.store.update_vm(&record)?;
        match self.boot(&mut record, &image, "starting", None) {
            Ok(_) => {
                record.state = VmState::Running;
                record.last_error = None;
                self.store.update_vm(&record)?;
                tracing::info!(vm = %record.name, pid = ?record.pid, "VM started");
                Ok(record)
            }
            Err(err) => {
                mark_stopped(&mut record, "start failed".into());
                record.last_error = Some(error_text(&err));
                self.store.update_vm(&record)?;
                Err(err)
            }
        }
    }

    #[tracing::instrument(skip(self), fields(vm = %id))]
    pub fn stop(self: &Arc<Self>, id: &str) -> Result<VmRecord> {
        self.locks.with(id, || self.stop_locked(id))
    }

    fn stop_locked(&self, id: &str) -> Result<VmRecord> {
        let mut record = self.record(id)?;
        let Some(pid) = Self::running_pid(&record) else {
            if record.state != VmState::Stopped {
                record.state = VmState::Stopped;
                self.store.update_vm(&record)?;
            }
            return Ok(record);
        };
        record.state = VmState::Stopping;
        self.store.update_vm(&record)?;
        self.crash_point("stop:stopping");
        let reason = self.shut_down(&record, pid);
        tracing::info!(vm = %record.name, reason = %reason, "VM stopped");
        mark_stopped(&mut record, reason);
        record.last_error = None;
        self.store.update_vm(&record)?;
        Ok(record)
    }

    #[tracing::instrument(skip(self), fields(vm = %id))]
    pub fn restart(self: &Arc<Self>, id: &str) -> Result<VmRecord> {
        self.locks.with(id, || {
            self.stop_locked(id)?;
            self.start_locked(id)
        })
    }

    #[tracing::instrument(skip(self), fields(vm = %id))]
    pub fn kill(self: &Arc<Self>, id: &str, signal: i32) -> Result<VmRecord> {
        let pid = self.locks.with(id, || -> Result<u32> {
            let record = self.record(id)?;
            let pid = Self::running_pid(&record)
                .ok_or_else(|| LifecycleError::NotRunning { name: record.name.clone() })?;
            send_signal(pid, signal).map_err(|source| LifecycleError::Signal {
                name: record.name.clone(),
                signal: validate::signal_name(signal),
                pid,
                source,
            })?;
            tracing::info!(vm = %record.name, pid, signal = %validate::signal_name(signal), "signal sent");
            Ok(pid)
        })?;
        // A fatal signal is recorded by the watcher; give it a moment so the
        // answer shows the VM stopped.
        self.exits.wait_handled(pid, Duration::from_secs(3));
        self.record(id)
    }

    #[tracing::instrument(skip(self), fields(vm = %id))]
    pub fn delete(self: &Arc<Self>, id: &str) -> Result<VmRecord> {
        let record = self.locks.with(id, || {
            let mut record = self.record(id)?;
            if let Some(pid) = Self::running_pid(&record) {
                let reason = self.shut_down(&record, pid);
                mark_stopped(&mut record, reason);
                self.store.update_vm(&record)?;
            }
            // The directory leaves its place in one rename before the row
            // goes: a daemon killed at any point leaves either the whole VM
            // or a `.deleting` directory that the next one removes.
            let mut ctx = self.context(&record);
            let doomed = deleting_dir(&ctx.dir);
            match std::fs::rename(&ctx.dir, &doomed) {
                Ok(()) => ctx.dir = doomed,
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => {
                    return Err(LifecycleError::step(
                        "deleting",
                        &record.name,
                        "moving the VM directory aside",
                        e,
                    ));
                }
            }
            self.crash_point("delete:moved");
            self.store.delete_vm(id)?;
            self.crash_point("delete:forgotten");
            for c in self.capabilities.iter().rev() {
                self.undo_quietly(c.name(), c.deprovision(&record, &ctx));
            }
            if let Err(e) = std::fs::remove_dir_all(&ctx.dir)
                && e.kind() != std::io::ErrorKind::NotFound
            {
                tracing::warn!(vm = %record.name, dir = %ctx.dir.display(), error = %e, "the deleted VM's directory stays; the next daemon start removes it");
            }
            tracing::info!(vm = %record.name, "VM deleted");
            Ok(record)
        })?;
        self.locks.forget(id);
        Ok(record)
    }

    #[tracing::instrument(skip(self, params), fields(vm = %id))]
    pub fn set(self: &Arc<Self>, id: &str, params: &SetVmParams) -> Result<VmRecord> {
        if let Some(vcpu) = params.vcpu {
            validate::vcpu(vcpu)?;
        }
        if let Some(memory) = params.memory_mib {
            validate::memory_mib(memory)?;
        }
        let disk_size = params
            .disk_size
            .as_deref()
            .map(validate::disk_size)
            .transpose()?;
        self.locks.with(id, || {
            let old = self.record(id)?;
            let running = Self::running_pid(&old).is_some();
            let needs_stopped =
                params.vcpu.is_some() || params.memory_mib.is_some() || disk_size.is_some();
            if needs_stopped && running {
                return Err(LifecycleError::MustBeStopped {
                    name: old.name.clone(),
                });
            }
            if let Some(size) = disk_size.filter(|size| *size < old.disk_size_bytes) {
                return Err(LifecycleError::Shrink {
                    name: old.name.clone(),
                    current: old.disk_size_bytes,
                    requested: size,
                });
            }
            if disk_size.is_some_and(|size| size > old.disk_size_bytes) {
                self.check_free_space("growing a work disk")?;
            }
            let mut new = old.clone();
            new.vcpu = params.vcpu.unwrap_or(old.vcpu);
            new.memory_mib = params.memory_mib.unwrap_or(old.memory_mib);
            new.disk_size_bytes = disk_size.unwrap_or(old.disk_size_bytes);
            new.nat = params.nat.unwrap_or(old.nat);
            let ctx = self.context(&old);
            for c in &self.capabilities {
                c.update(&old, &new, &ctx, running)
                    .map_err(|e| LifecycleError::capability("updating", &old.name, e))?;
            }
            self.crash_point("set:applied");
            self.store.update_vm(&new)?;
            Ok(new)
        })
    }

    /// Asks the guest's ping responder whether it is alive.
    pub fn ping(&self, id: &str) -> Result<PingResult> {
        let record = self.record(id)?;
        let running = Self::running_pid(&record)
            .is_some_and(|pid| procfs::is_running(pid, record.pid_start_time));
        let mut result = PingResult {
            vm: record.name.clone(),
            state: record.state,
            reachable: false,
            rtt_ms: None,
            guest_uptime_secs: None,
            guest_hostname: None,
            detail: None,
        };
        if !running {
            result.detail = record.exit_reason.clone();
            return Ok(result);
        }
        let Some(path) = record.vsock_path.as_deref() else {
            result.detail = Some("no vsock device recorded for this VM".into());
            return Ok(result);
        };
        match crate::ping::ping(path) {
            Ok((pong, rtt)) => {
                result.reachable = true;
                result.rtt_ms = Some(rtt.as_secs_f64() * 1000.0);
                result.guest_uptime_secs = Some(pong.uptime_secs);
                result.guest_hostname = Some(pong.hostname);
            }
            Err(e) => result.detail = Some(error_text(&e)),
        }
        Ok(result)
    }

    pub fn stats(&self, id: &str) -> Result<VmStats> {
        let record = self.record(id)?;
        let dir = self.vm_dir(id);
        let usage = |file: &str| {
            let (allocated_bytes, apparent_bytes) =
                procfs::disk_usage(&dir.join(file)).unwrap_or((0, 0));
            DiskUsage {
                allocated_bytes,
                apparent_bytes,
            }
        };
        let pid = Self::running_pid(&record)
            .filter(|pid| procfs::is_running(*pid, record.pid_start_time));
        let stat = pid.and_then(procfs::stat);
        let ticks = procfs::clock_ticks_per_second() as f64;
        Ok(VmStats {
            vm: record.name.clone(),
            id: record.id.clone(),
            state: record.state,
            pid,
            cpu_seconds: stat.map(|s| (s.utime + s.stime) as f64 / ticks),
            rss_bytes: pid.and_then(procfs::rss_bytes),
            uptime_secs: pid
                .and(record.started_at)
                .map(|started| u64::try_from(now() - started).unwrap_or(0)),
            overlay: usage(vm_files::OVERLAY),
            work_disk: usage(vm_files::WORK_DISK),
        })
    }

    /// At daemon start: adopt VMs whose VMM still runs (same PID and start
    /// time, and it answers); mark the rest stopped with the reason; remove
    /// VMs whose creation never finished; then let every capability restore
    /// what running VMs need and remove what no VM owns.
    pub fn reconcile(self: &Arc<Self>) -> Result<ReconcileReport> {
        let mut report = ReconcileReport::default();
        for mut record in self.store.list_vms()? {
            let pid_file = self
                .vm_dir(&record.id)
                .join(banger_vmm::process::VMM_PID_FILE);
            // The stored PID, or, when a daemon died between starting the
            // VMM and storing its PID, the identity written at its spawn.
            let recorded = banger_vmm::process::recorded_process(&pid_file);
            let alive = record
                .pid
                .filter(|pid| procfs::is_running(*pid, record.pid_start_time))
                .or_else(|| {
                    let (pid, start_time) = recorded?;
                    record.pid = Some(pid);
                    record.pid_start_time = start_time;
                    Some(pid)
                });
            match record.state {
                VmState::Stopped | VmState::Failed => {
                    let dir = self.vm_dir(&record.id);
                    if !dir.exists() && deleting_dir(&dir).exists() {
                        self.store.delete_vm(&record.id)?;
                        tracing::warn!(vm = %record.name, "finished a delete that was interrupted");
                        report.removed.push(record.name);
                    }
                }
                VmState::Creating => {
                    // Its VMM (if one started) ends before its disks go.
                    if let Some(pid) = banger_vmm::process::end_recorded(&pid_file) {
                        tracing::warn!(vm = %record.name, pid, "killed the VMM of an interrupted create");
                    }
                    if let Some(pid) =
                        alive.filter(|pid| procfs::is_running(*pid, record.pid_start_time))
                    {
                        let _ = send_signal(pid, libc::SIGKILL);
                    }
                    self.remove_runtime_files(&record);
                    self.detach_all(&record);
                    let ctx = self.context(&record);
                    for c in self.capabilities.iter().rev() {
                        self.undo_quietly(c.name(), c.deprovision(&record, &ctx));
                    }
                    let _ = std::fs::remove_dir_all(&ctx.dir);
                    self.store.delete_vm(&record.id)?;
                    tracing::warn!(vm = %record.name, "removed a VM whose creation was interrupted");
                    report.removed.push(record.name);
                }
                VmState::Running | VmState::Paused | VmState::Starting | VmState::Stopping => {
                    let backend = self.backend(&record.vmm);
                    match alive {
                        Some(pid) if backend.responds(&self.vm_dir(&record.id), pid) => {
                            record.state = VmState::Running;
                            self.store.update_vm(&record)?;
                            let start_time = record.pid_start_time.unwrap_or(0);
                            self.watch(
                                &record,
                                Launched {
                                    pid,
                                    start_time,
                                    child: None,
                                },
                            );
                            tracing::info!(vm = %record.name, pid, "adopted running VM");
                            report.adopted.push(record.name);
                        }
                        Some(pid) => {
                            let _ = send_signal(pid, libc::SIGKILL);
                            banger_vmm::process::end_recorded(&pid_file);
                            self.remove_runtime_files(&record);
                            self.detach_all(&record);
                            mark_stopped(
                                &mut record,
                                "VMM did not answer when bangerd started; killed".into(),
                            );
                            self.store.update_vm(&record)?;
                            report.stopped.push(record.name);
                        }
                        None => {
                            self.remove_runtime_files(&record);
                            self.detach_all(&record);
                            mark_stopped(
                                &mut record,
                                "VMM exited while bangerd was not running".into(),
                            );
                            self.store.update_vm(&record)?;
                            tracing::info!(vm = %record.name, "VM found stopped");
                            report.stopped.push(record.name);
                        }
                    }
                }
            }
        }
        self.remove_deleted_dirs();
        let vms = self.store.list_vms()?;
        let running: Vec<&VmRecord> = vms
            .iter()
            .filter(|vm| matches!(vm.state, VmState::Running | VmState::Paused))
            .collect();
        for c in &self.capabilities {
            if let Err(e) = c.reconcile(&vms, &running) {
                tracing::error!(capability = c.name(), error = %error_text(&e), "reconcile failed");
                report
                    .failed
                    .push(format!("{}: {}", c.name(), error_text(&e)));
            }
        }
        Ok(report)
    }
}

#[derive(Debug, Default, PartialEq, Eq)]
pub struct ReconcileReport {
    pub adopted: Vec<String>,
    pub stopped: Vec<String>,
    pub removed: Vec<String>,
    /// Capabilities that could not reconcile, with why.
    pub failed: Vec<String>,
}

/// Crash injection for the tests: with `BANGER_TEST_CRASH_AT=<step>`,
/// bangerd SIGKILLs itself when it reaches that step, as a `kill -9` or a
/// power cut there would. Steps: `create:reserved` (record written),
/// `create:provisioned` (disks made), `boot:launched` (VMM running, its PID
/// not yet stored; create and start), `stop:stopping` (state written, the
/// guest not yet asked), `set:applied` (the change made, not yet stored),
/// `delete:moved` (directory moved aside, row still there),
/// `delete:forgotten` (row gone, files still there).
pub const CRASH_AT_VAR: &str = "BANGER_TEST_CRASH_AT";

/// What reaching the crash step does.
#[derive(Debug, Clone)]
pub enum Crash {
    /// SIGKILL this process (the daemon, from `BANGER_TEST_CRASH_AT`).
    Kill(String),
    /// Park the calling thread for good and raise the flag: in-process
    /// tests then start another lifecycle, as a restarted daemon would.
    Park(String, Arc<std::sync::atomic::AtomicBool>),
}

/// What a VMM appended to its log after `offset` (at most the last 64 KiB).
fn log_since(log: &std::path::Path, offset: u64) -> String {
    use std::io::{Read, Seek, SeekFrom};
    let Ok(mut file) = std::fs::File::open(log) else {
        return String::new();
    };
    let len = file.metadata().map_or(0, |m| m.len());
    let start = offset.max(len.saturating_sub(64 << 10));
    let mut text = String::new();
    if file.seek(SeekFrom::Start(start)).is_ok() {
        let mut bytes = Vec::new();
        let _ = file.read_to_end(&mut bytes);
        text = String::from_utf8_lossy(&bytes).into_owned();
    }
    text
}

impl Lifecycle {
    /// The `.deleting` directories an interrupted delete left.
    fn remove_deleted_dirs(&self) {
        let Ok(entries) = std::fs::read_dir(&self.paths.vms_dir) else {
            return;
        };
        for entry in entries.flatten() {
            if entry.file_name().to_string_lossy().ends_with(".deleting") {
                match std::fs::remove_dir_all(entry.path()) {
                    Ok(()) => {
                        tracing::warn!(dir = %entry.path().display(), "removed what a delete left")
                    }
                    Err(e) => {
                        tracing::error!(dir = %entry.path().display(), error = %e, "removing what a delete left")
                    }
                }
            }
        }
    }
}

/// Where a VM's directory goes while it is deleted.
fn deleting_dir(dir: &std::path::Path) -> PathBuf {
    let mut name = dir.file_name().unwrap_or_default().to_os_string();
    name.push(".deleting");
    dir.with_file_name(name)
}

fn mark_stopped(record: &mut VmRecord, reason: String) {
    record.state = VmState::Stopped;
    record.pid = None;
    record.pid_start_time = None;
    record.stopped_at = Some(now());
    record.exit_reason = Some(reason);
}

/// The whole chain, for storing on the VM and for logs.
pub fn error_text(err: &(dyn std::error::Error + 'static)) -> String {
    let mut text = err.to_string();
    let mut next = err.source();
    while let Some(cause) = next {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        next = cause.source();
    }
    text
}

fn new_id() -> String {
    use rand::Rng;
    let bytes: [u8; 16] = rand::rng().random();
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

#[cfg(test)]
#[path = "lifecycle_tests.rs"]
mod tests;
