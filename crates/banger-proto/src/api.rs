//! Method names and the typed payloads of banger's RPC.

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use crate::rpc::RpcError;

/// Every method bangerd answers. The CLI and the daemon share these names.
pub mod method {
    pub const DAEMON_STATUS: &str = "daemon.status";
    pub const DAEMON_STOP: &str = "daemon.stop";
    pub const VM_CREATE: &str = "vm.create";
    pub const VM_LIST: &str = "vm.list";
    pub const VM_SHOW: &str = "vm.show";
    pub const VM_STATS: &str = "vm.stats";
    pub const VM_START: &str = "vm.start";
    pub const VM_STOP: &str = "vm.stop";
    pub const VM_RESTART: &str = "vm.restart";
    pub const VM_KILL: &str = "vm.kill";
    pub const VM_DELETE: &str = "vm.delete";
    pub const VM_SET: &str = "vm.set";
    pub const VM_PING: &str = "vm.ping";
    pub const IMAGE_LIST: &str = "image.list";
    pub const IMAGE_SHOW: &str = "image.show";
    pub const IMAGE_BUILD: &str = "image.build";
    pub const IMAGE_DELETE: &str = "image.delete";
    pub const DOCTOR: &str = "doctor";
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct DaemonStatus {
    pub pid: u32,
    pub version: String,
    pub socket: PathBuf,
    pub log_path: PathBuf,
    pub dns_listen: String,
    /// Why the DNS server is not serving, when it is not.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dns_error: Option<String>,
    /// The backend new VMs get (`firecracker`, `qemu`).
    #[serde(default)]
    pub vmm: String,
    /// Why the daemon chose that backend on this host.
    #[serde(default)]
    pub vmm_reason: String,
    /// The guest IP pool in use (`guest_ip_pool`, or the free one the
    /// daemon took when the default overlapped a host route).
    #[serde(default)]
    pub guest_ip_pool: String,
    /// Why the pool is not the configured one, when it is not.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub guest_ip_pool_reason: Option<String>,
    pub state_dir: PathBuf,
    pub uptime_secs: u64,
    pub vm_count: u64,
}

/// One VM named by a ref: its name or a unique prefix of its ID.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct VmRef {
    pub vm: String,
}

/// Several VMs, each named by a ref; the daemon acts on them concurrently.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct VmRefs {
    pub vms: Vec<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct KillParams {
    pub vms: Vec<String>,
    /// A signal name (`TERM`, `SIGKILL`) or number (`9`).
    pub signal: String,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct CreateVmParams {
    pub name: Option<String>,
    pub image: Option<String>,
    pub vcpu: Option<u32>,
    pub memory_mib: Option<u64>,
    /// Work disk size as the user wrote it (`16G`).
    pub disk_size: Option<String>,
    #[serde(default)]
    pub nat: bool,
    /// `firecracker` or `qemu`; the daemon's default when absent.
    #[serde(default)]
    pub vmm: Option<String>,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct SetVmParams {
    pub vms: Vec<String>,
    pub vcpu: Option<u32>,
    pub memory_mib: Option<u64>,
    pub disk_size: Option<String>,
    pub nat: Option<bool>,
}

/// The outcome of an action on several VMs: one item per ref, in the order given.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct BatchResult {
    pub items: Vec<BatchItem>,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct BatchItem {
    pub vm_ref: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub vm: Option<Vm>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<RpcError>,
}

#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq, Hash)]
#[serde(rename_all = "snake_case")]
pub enum VmState {
    Creating,
    Starting,
    Running,
    /// The VMM is alive but holds the guest still: QEMU pauses a guest
    /// whose disk write failed (a full host disk); `last_error` says why.
    Paused,
    Stopping,
    Stopped,
    Failed,
}

impl VmState {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Creating => "creating",
            Self::Starting => "starting",
            Self::Running => "running",
            Self::Paused => "paused",
            Self::Stopping => "stopping",
            Self::Stopped => "stopped",
            Self::Failed => "failed",
        }
    }

    pub fn parse(text: &str) -> Option<Self> {
        [
            Self::Creating,
            Self::Starting,
            Self::Running,
            Self::Paused,
            Self::Stopping,
            Self::Stopped,
            Self::Failed,
        ]
        .into_iter()
        .find(|s| s.as_str() == text)
    }
}

impl std::fmt::Display for VmState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One VM in `vm list`: the table's columns and what scripts select on.
/// `vm show` has every field; keeping the list to these keeps `vm list
/// --json` fast with a thousand VMs.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct VmSummary {
    pub id: String,
    pub name: String,
    pub state: VmState,
    pub image: String,
    pub vmm: String,
    pub vcpu: u32,
    pub memory_mib: u64,
    pub disk_size_bytes: u64,
    pub nat: bool,
    pub guest_ip: Option<String>,
    pub pid: Option<u32>,
    /// Unix seconds.
    pub created_at: i64,
    pub started_at: Option<i64>,
}

/// Everything the daemon stores about a VM, plus the paths derived from its directory.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Vm {
    pub id: String,
    pub name: String,
    pub state: VmState,
    pub image: String,
    pub vmm: String,
    pub vcpu: u32,
    pub memory_mib: u64,
    pub disk_size_bytes: u64,
    pub nat: bool,
    pub guest_ip: Option<String>,
    pub tap: Option<String>,
    pub vsock_cid: Option<u32>,
    pub vsock_path: Option<PathBuf>,
    pub pid: Option<u32>,
    /// Unix seconds.
    pub created_at: i64,
    pub started_at: Option<i64>,
    pub stopped_at: Option<i64>,
    /// Why the VMM last exited (clean shutdown, signal, error exit).
    pub exit_reason: Option<String>,
    /// The last failed action's error, cleared by the next success.
    pub last_error: Option<String>,
    pub dir: PathBuf,
    pub overlay_path: PathBuf,
    pub work_disk_path: PathBuf,
    pub vmm_log_path: PathBuf,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct VmStats {
    pub vm: String,
    pub id: String,
    pub state: VmState,
    pub pid: Option<u32>,
    /// CPU time the VMM process used, user plus system.
    pub cpu_seconds: Option<f64>,
    pub rss_bytes: Option<u64>,
    pub uptime_secs: Option<u64>,
    pub overlay: DiskUsage,
    pub work_disk: DiskUsage,
}

#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
pub struct DiskUsage {
    /// Bytes actually allocated on the host filesystem.
    pub allocated_bytes: u64,
    /// The file's length, as the guest sees the disk.
    pub apparent_bytes: u64,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct PingResult {
    pub vm: String,
    /// The VM's state as the daemon sees it.
    pub state: VmState,
    pub reachable: bool,
    pub rtt_ms: Option<f64>,
    pub guest_uptime_secs: Option<u64>,
    pub guest_hostname: Option<String>,
    pub detail: Option<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Image {
    pub name: String,
    pub rootfs: PathBuf,
    pub kernel: Option<PathBuf>,
    pub initrd: Option<PathBuf>,
    pub modules_dir: Option<PathBuf>,
    pub docker: bool,
    /// Built and owned by banger (deleting it removes its files), as opposed
    /// to registered from the runtime bundle.
    pub managed: bool,
    pub created_at: i64,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct ImageRef {
    pub image: String,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct BuildImageParams {
    pub name: String,
    pub docker: bool,
    pub base_rootfs: Option<PathBuf>,
}
