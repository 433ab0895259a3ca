//! VMM backends. A backend starts a VM's VMM process fully configured and
//! asks it to shut down; waiting, signalling and exit detection work on the
//! process and are the same for every backend (see [`process`]).

#[cfg(any(test, feature = "testing"))]
pub mod fake;
pub mod firecracker;
pub mod process;
pub mod qemu;
pub mod supervisor;
#[cfg(any(test, feature = "testing"))]
pub mod testkit;

use std::fmt;
use std::path::{Path, PathBuf};

use thiserror::Error;

#[derive(Debug, Error)]
pub enum VmmError {
    #[error(
        "VMM binary {0} not found: set firecracker_bin in config.toml or put firecracker in the runtime bundle"
    )]
    BinaryMissing(PathBuf),
    #[error("starting {0}")]
    Spawn(PathBuf, #[source] std::io::Error),
    #[error("opening VMM log {0}")]
    Log(PathBuf, #[source] std::io::Error),
    #[error("{binary} exited ({status}) before its API socket appeared; see {log}{tail}", tail = process::tail_suffix(.tail))]
    EarlyExit {
        binary: String,
        status: String,
        log: PathBuf,
        tail: Vec<String>,
    },
    #[error("API socket {socket} did not appear within {seconds}s; see {log}")]
    SocketTimeout {
        socket: PathBuf,
        seconds: u64,
        log: PathBuf,
    },
    #[error("configuring the VMM: {step}")]
    Configure {
        step: &'static str,
        #[source]
        source: firecracker::api::ApiError,
    },
    #[error("asking the guest to shut down")]
    Shutdown(#[source] firecracker::api::ApiError),
    #[error("asking the guest to power off through QEMU's QMP socket {0}")]
    Qmp(PathBuf, #[source] std::io::Error),
    #[error("{what} through QEMU's QMP socket {socket}")]
    QmpCommand {
        what: &'static str,
        socket: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{what} through Firecracker's API")]
    Api {
        what: &'static str,
        #[source]
        source: firecracker::api::ApiError,
    },
    #[error("the saved state in {0} is incomplete: {1} is missing")]
    StateMissing(PathBuf, &'static str),
    #[error("writing the saved state into {0}")]
    StateWrite(PathBuf, #[source] std::io::Error),
    #[error("reading the saved state from {0}")]
    StateRead(PathBuf, #[source] std::io::Error),
    #[error("finding the guest's memory among the descriptors of QEMU (PID {0})")]
    GuestMemory(u32, #[source] std::io::Error),
    #[error("{binary} exited ({status}) while restoring the saved state; see {log}{tail}", tail = process::tail_suffix(.tail))]
    RestoreExit {
        binary: String,
        status: String,
        log: PathBuf,
        tail: Vec<String>,
    },
    #[error(
        "the saved state in {0} names its VM's disks by absolute path (saved by an older banger), so it cannot restore as another VM: branch with --no-memory, or restart the source and branch again"
    )]
    NotRelocatable(PathBuf),
    #[error("{0} is not supported by this VMM")]
    Unsupported(&'static str),
    #[error("injected failure: {0}")]
    Injected(String),
}

pub type Result<T, E = VmmError> = std::result::Result<T, E>;

/// A block device as the guest sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Drive {
    pub id: String,
    pub path: PathBuf,
    pub read_only: bool,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NetSpec {
    pub tap: String,
    pub mac: String,
}

/// Everything a backend needs to start one VM.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LaunchSpec {
    pub vm_id: String,
    pub vm_dir: PathBuf,
    pub vcpu: u32,
    pub memory_mib: u64,
    pub kernel: PathBuf,
    pub initrd: Option<PathBuf>,
    pub boot_args: String,
    /// In the order the guest should see them (vda, vdb, ...).
    pub drives: Vec<Drive>,
    pub net: Option<NetSpec>,
    pub vsock_cid: u32,
    pub vsock_path: PathBuf,
    /// The VMM's stdout and stderr are appended here.
    pub log_path: PathBuf,
    /// A state [`Vmm::save_state`] wrote: the guest resumes from it instead
    /// of booting. The backend consumes it (removes the directory) before
    /// the guest runs, since the disks move on from then.
    pub restore: Option<PathBuf>,
    /// `restore` was saved by another VM (a branch with memory): the
    /// backend points it at this VM's disks, TAP and vsock, and the guest,
    /// which still holds that VM's address and MAC, starts off the network
    /// until the daemon has given it its own ([`Vmm::set_link`]).
    pub restore_as_another_vm: bool,
}

/// A started VMM process.
#[derive(Debug)]
pub struct Launched {
    pub pid: u32,
    /// Clock ticks since boot, from `/proc/<pid>/stat`.
    pub start_time: u64,
    /// Present when this process is the VMM's parent, so its exit status can be read.
    pub child: Option<std::process::Child>,
}

/// A VMM process started ahead of its configuration (see [`Vmm::prepare`]).
/// Dropped unused, as when a later step of a create fails, it kills and
/// reaps the process and removes the files it made.
#[derive(Debug, Default)]
pub struct Prepared {
    child: Option<std::process::Child>,
    files: Vec<PathBuf>,
}

impl Prepared {
    pub fn started(child: std::process::Child, files: Vec<PathBuf>) -> Self {
        Self {
            child: Some(child),
            files,
        }
    }

    /// The process, now the caller's to configure or to kill; when nothing
    /// was started ahead (a plain [`Vmm::launch`]), the one `start` starts.
    pub fn into_child_or(
        mut self,
        start: impl FnOnce() -> Result<Prepared>,
    ) -> Result<std::process::Child> {
        let mut prepared = if self.child.is_some() {
            std::mem::take(&mut self)
        } else {
            start()?
        };
        prepared.files.clear();
        Ok(prepared
            .child
            .take()
            .expect("a backend's prepare that launch relies on starts a process"))
    }
}

impl Drop for Prepared {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            process::kill_child(&mut child);
            for file in &self.files {
                let _ = std::fs::remove_file(file);
            }
        }
    }
}

pub trait Vmm: Send + Sync + fmt::Debug {
    /// Which VMM this is: stored on each VM it runs.
    fn kind(&self) -> banger_proto::Backend;

    /// Starts what needs neither the VM's disks nor its network
    /// (Firecracker: its process, up to its API socket), so that starting
    /// overlaps banger's own work on them. The default starts nothing.
    fn prepare(&self, _vm_dir: &Path, _vm_id: &str, _log_path: &Path) -> Result<Prepared> {
        Ok(Prepared::default())
    }

    /// Starts and configures the VMM and boots the guest, taking over what
    /// [`Vmm::prepare`] started. On error no process of this VM remains.
    fn launch_prepared(&self, spec: &LaunchSpec, prepared: Prepared) -> Result<Launched>;

    /// [`Vmm::launch_prepared`] with nothing started ahead.
    fn launch(&self, spec: &LaunchSpec) -> Result<Launched> {
        self.launch_prepared(spec, Prepared::default())
    }

    /// Asks the guest to power off; returns without waiting.
    fn request_shutdown(&self, vm_dir: &Path, pid: u32) -> Result<()>;

    /// Whether a VMM found running at daemon start is really this VM's and
    /// answers (used to adopt it).
    fn responds(&self, vm_dir: &Path, pid: u32) -> bool;

    /// Removes what the backend left in the VM's directory after its VMM
    /// exited (helper processes, sockets).
    fn cleanup(&self, _vm_dir: &Path) {}

    /// The exit as the backend knows it, given what the VMM wrote to its
    /// log while it ran: a VMM that turns a signal into a clean exit says
    /// so there. The default trusts the exit status.
    fn explain_exit(&self, reason: process::ExitReason, _output: &str) -> process::ExitReason {
        reason
    }

    /// Freezes (`true`) or thaws the guest's vCPUs in place; the VMM and
    /// the guest's memory stay as they are.
    fn set_paused(&self, vm_dir: &Path, paused: bool) -> Result<()>;

    /// Saves the running guest's whole state (memory and devices) into
    /// `state_dir`, an empty directory, and leaves the guest stopped, its
    /// disks flushed, for the caller to end the VMM or to let it go on
    /// ([`Vmm::resume_after_save`]). On error the guest runs again as it was.
    fn save_state(&self, vm_dir: &Path, state_dir: &Path) -> Result<()>;

    /// Lets a guest that [`Vmm::save_state`] stopped run on in the same VMM.
    fn resume_after_save(&self, vm_dir: &Path) -> Result<()>;

    /// Whether a state saved from one VM restores as another: in another
    /// directory, on other disks, TAP and vsock (a branch with memory).
    fn restores_as_another_vm(&self) -> bool {
        false
    }

    /// Connects (`true`) or disconnects the guest's network link, as a
    /// cable would; the guest sees its carrier come and go.
    fn set_link(&self, _vm_dir: &Path, _up: bool) -> Result<()> {
        Err(VmmError::Unsupported("switching the network link"))
    }

    /// Whether the VMM holds its guest still on an I/O error (QEMU pauses
    /// a guest whose disk write failed). `None` when the backend cannot
    /// tell or the guest runs.
    fn io_error_pause(&self, _vm_dir: &Path) -> Option<bool> {
        None
    }

    /// What the host needs to run this backend (preflight and doctor).
    fn checks(&self) -> Vec<banger_proto::check::Check> {
        Vec::new()
    }
}
