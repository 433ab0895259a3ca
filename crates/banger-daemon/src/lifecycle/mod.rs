//! The VM lifecycle: create, start, stop, restart, kill, delete, set, stats,
//! and reconciling with the host when bangerd starts. One file per
//! operation; this one holds the lifecycle itself and what they share.
//!
//! Every action runs under its VM's lock and is blocking code (the daemon
//! runs it on the blocking pool). Every step that changes the host has an
//! undo; a failure runs the undos in reverse, so nothing is left behind.

use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use banger_host::{Paths, procfs};
use banger_proto::validate::{self, ValidationError, format_size};
use banger_proto::{
    Backend, CreateVmParams, DiskSize, DiskUsage, Image, MemoryMib, PingResult, SetVmParams, VmId,
    VmName, VmState, VmStats,
};
use banger_vmm::process::{ExitReason, send_signal};
use banger_vmm::{Drive, LaunchSpec, Launched, Prepared, Vmm};
use thiserror::Error;

use crate::capability::{self, Capability, CapabilityError, VmContext};
use crate::exits::ExitBoard;
use crate::locks::VmLocks;
use crate::namegen::{self, NamegenError};
use crate::store::{Store, StoreError, VmRecord};

mod boot;
mod branch;
mod crash;
mod create;
mod delete;
mod error;
mod files;
mod identity;
mod image_delete;
mod inspect;
mod kill;
mod pause;
mod reconcile;
mod rename;
mod restart;
mod set;
mod snapshot;
mod start;
mod stop;
mod suspend;

pub use crash::{CRASH_AT_VAR, Crash};
pub use error::{LifecycleError, error_text};
pub use reconcile::ReconcileReport;

pub const DEFAULT_IMAGE: &str = "default";
pub const DEFAULT_VCPU: u32 = 2;
pub const DEFAULT_MEMORY_MIB: u64 = 2048;
pub const DEFAULT_DISK_SIZE: u64 = 16 << 30;
/// The initrd finds its disks by label; `net.ifnames=0` keeps the NIC `eth0`.
/// `cryptomgr.notests` skips the kernel's crypto self-tests: under QEMU's
/// TCG a guest once spun in a soft lockup in `alg_test` for minutes (CI).
/// Boot time is unchanged within noise (`make bench BENCH=boot`: 16.0 s
/// median with the tests, 17.0 s without; by hand 18.0 s and 15.6 s).
pub const BOOT_ARGS: &str = "console=ttyS0 reboot=k panic=1 net.ifnames=0 cryptomgr.notests";

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
    /// For what the lifecycle does to disks beyond the storage capability
    /// (a branch's copied overlay forgets its guest's identity).
    disks: Arc<dyn banger_host::disk::Disks>,
    /// Commands into running guests (a memory branch's new identity).
    agent: Arc<dyn crate::guest_agent::GuestAgent>,
    /// In pipeline order; undone in reverse.
    capabilities: Vec<Arc<dyn Capability>>,
    namegen_path: Option<PathBuf>,
    locks: VmLocks,
    exits: ExitBoard,
    /// Waits on every VMM process, one thread for all.
    supervisor: Arc<banger_vmm::supervisor::Supervisor>,
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

/// Unix seconds.
pub(crate) fn now() -> i64 {
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
        disks: Arc<dyn banger_host::disk::Disks>,
        capabilities: Vec<Arc<dyn Capability>>,
        namegen_path: Option<PathBuf>,
    ) -> Arc<Self> {
        assert!(!backends.is_empty(), "at least one VMM backend");
        Arc::new(Self {
            paths,
            store,
            backends,
            disks,
            agent: Arc::new(crate::guest_agent::VsockAgent),
            capabilities,
            namegen_path,
            locks: VmLocks::default(),
            exits: ExitBoard::default(),
            supervisor: banger_vmm::supervisor::Supervisor::shared(),
            allocation: Mutex::new(()),
            retired: std::sync::atomic::AtomicBool::new(false),
            stop_timeouts: StopTimeouts::default(),
            min_free_bytes: MIN_FREE_BYTES,
            crash: std::env::var(CRASH_AT_VAR).ok().map(Crash::Kill),
        })
    }

    /// Talks to guests through `agent` instead of their vsock (tests).
    pub fn with_agent(
        mut self: Arc<Self>,
        agent: Arc<dyn crate::guest_agent::GuestAgent>,
    ) -> Arc<Self> {
        Arc::get_mut(&mut self)
            .expect("configured before use")
            .agent = agent;
        self
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
        self.check_free_space_for(action, 0)
    }

    /// [`Lifecycle::check_free_space`] for an action that writes `bytes`
    /// on top (a saved state).
    fn check_free_space_for(&self, action: &'static str, bytes: u64) -> Result<()> {
        let dir = self.paths.vms_dir.clone();
        let Ok(free) = banger_host::disk::free_bytes(&dir) else {
            return Ok(()); // unknown: mkfs or the copy will say what failed
        };
        let needed = self.min_free_bytes.saturating_add(bytes);
        if free < needed {
            return Err(LifecycleError::NoSpace {
                action,
                dir,
                free,
                needed,
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

    /// The backend that runs `kind`'s VMs. bangerd has both; a test
    /// daemon may have one, and then a VM of the other is refused by name.
    fn backend(&self, kind: Backend) -> Result<Arc<dyn Vmm>> {
        self.backends
            .iter()
            .find(|b| b.kind() == kind)
            .cloned()
            .ok_or(LifecycleError::NoBackend(kind))
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

    fn record(&self, id: &str) -> Result<VmRecord> {
        self.store
            .get_vm(id)?
            .ok_or_else(|| LifecycleError::NotFound(id.to_owned()))
    }

    fn undo_quietly(&self, capability: &str, result: capability::Result<()>) {
        if let Err(e) = result {
            tracing::error!(capability, error = %error_text(&e), "undo failed");
        }
    }

    /// Releases what a running VM held, newest first; failures are logged,
    /// never fatal (the next daemon start reconciles what is left).
    fn detach_all(&self, record: &VmRecord) {
        for c in self.capabilities.iter().rev() {
            self.undo_quietly(c.name(), c.detach(record));
        }
    }

    /// Sockets and helpers a dead VMM leaves behind.
    fn remove_runtime_files(&self, record: &VmRecord) {
        let dir = self.vm_dir(&record.id);
        if let Ok(backend) = self.backend(record.vmm) {
            backend.cleanup(&dir);
        }
        // The backend's own files (sockets, helpers) went with cleanup.
        let files_of = banger_host::VmDir::new(&dir);
        let mut files = vec![files_of.config_drive(), files_of.vmm_pid()];
        files.extend(record.vsock_path.clone());
        for file in files {
            let _ = std::fs::remove_file(file);
        }
    }

    /// Whether the VM runs (`true`) or rests, stopped or suspended
    /// (`false`); one on its way between the two is busy.
    fn runs_or_rests(record: &VmRecord) -> Result<bool> {
        match record.state {
            VmState::Running | VmState::Paused => Ok(true),
            VmState::Stopped | VmState::Failed | VmState::Suspended => Ok(false),
            other => Err(LifecycleError::Busy {
                name: record.name.to_string(),
                state: other,
            }),
        }
    }

    fn running_pid(record: &VmRecord) -> Option<u32> {
        record.pid.filter(|_| record.state.has_vmm())
    }

    /// Moves `record` to `next` and stores it, with whatever else the
    /// caller changed on it: the one place a VM's state is written. A move
    /// the state machine ([`VmState::can_become`]) does not allow is
    /// refused, and nothing is stored.
    fn transition(&self, record: &mut VmRecord, next: VmState) -> Result<()> {
        if record.state != next && !record.state.can_become(next) {
            return Err(LifecycleError::Transition {
                name: record.name.to_string(),
                from: record.state,
                to: next,
            });
        }
        record.state = next;
        self.store.update_vm(record)?;
        Ok(())
    }

    /// The VMM is gone: the record says how, and holds no process.
    fn record_stopped(&self, record: &mut VmRecord, reason: String) -> Result<()> {
        record.pid = None;
        record.pid_start_time = None;
        record.stopped_at = Some(now());
        record.exit_reason = Some(reason);
        self.transition(record, VmState::Stopped)
    }
}

#[cfg(test)]
pub(crate) mod tests;
