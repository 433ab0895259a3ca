//! Method names and the typed payloads of banger's RPC.

use std::path::PathBuf;

use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

use crate::rpc::RpcError;
use crate::vm::{Backend, Vm, VmId, VmName, VmSummary};

/// One RPC method, declared once: its wire name, the params it takes and
/// the answer it gives. The CLI can call only a declared method
/// (`Client::call::<M>`), and the daemon's dispatch matches on
/// [`method::Name`], so a method cannot exist on one side only.
pub trait Method {
    const NAME: &'static str;
    type Params: Serialize + DeserializeOwned + Send + 'static;
    type Result: Serialize + DeserializeOwned;
}

/// Declares each method's type, its `Method` impl, and the `Name` enum.
macro_rules! methods {
    ($($(#[$doc:meta])* $ty:ident = $name:literal : $params:ty => $result:ty;)*) => {
        $(
            $(#[$doc])*
            #[derive(Debug)]
            pub struct $ty;
            impl Method for $ty {
                const NAME: &'static str = $name;
                type Params = $params;
                type Result = $result;
            }
        )*
        /// Every method by name: a `match` over it is checked to be complete.
        #[derive(Debug, Clone, Copy, PartialEq, Eq)]
        pub enum Name {
            $($ty,)*
        }
        impl Name {
            pub const ALL: &'static [Name] = &[$(Name::$ty,)*];

            pub fn parse(name: &str) -> Option<Self> {
                match name {
                    $($name => Some(Self::$ty),)*
                    _ => None,
                }
            }

            pub fn as_str(self) -> &'static str {
                match self {
                    $(Self::$ty => $name,)*
                }
            }
        }
    };
}

/// Every method bangerd answers, with its params and answer types.
pub mod method {
    use super::*;
    use crate::check::Check;

    methods! {
        DaemonStatus = "daemon.status": () => super::DaemonStatus;
        /// Ends the daemon; running VMs keep running.
        DaemonStop = "daemon.stop": () => Stopping;
        VmCreate = "vm.create": CreateVmParams => Vm;
        /// The summaries, answered from a cache until a VM changes.
        VmList = "vm.list": () => Vec<VmSummary>;
        VmShow = "vm.show": VmRef => Vm;
        VmStats = "vm.stats": VmRef => super::VmStats;
        VmStart = "vm.start": VmRefs => BatchResult;
        /// `force` is needed to stop a suspended VM: that discards its
        /// saved memory state.
        VmStop = "vm.stop": StopParams => BatchResult;
        /// Saves each guest's whole state into its directory and ends its
        /// VMM; `vm.start` resumes it.
        VmSuspend = "vm.suspend": VmRefs => BatchResult;
        /// Resumes suspended VMs (and only those; `vm.start` also boots).
        VmResume = "vm.resume": VmRefs => BatchResult;
        VmRestart = "vm.restart": VmRefs => BatchResult;
        VmKill = "vm.kill": KillParams => BatchResult;
        /// Freezes the guests' vCPUs in place (no file is written).
        VmPause = "vm.pause": VmRefs => BatchResult;
        VmUnpause = "vm.unpause": VmRefs => BatchResult;
        VmDelete = "vm.delete": VmRefs => BatchResult;
        /// Saves the VM's disks, and its memory when it runs or is
        /// suspended, under a name.
        VmSnapshotCreate = "vm.snapshot_create": CreateSnapshotParams => Snapshot;
        VmSnapshotList = "vm.snapshot_list": VmRef => Vec<Snapshot>;
        /// Puts the VM back to a snapshot: a running VM runs on from it.
        VmSnapshotRestore = "vm.snapshot_restore": RestoreSnapshotParams => Vm;
        VmSnapshotDelete = "vm.snapshot_delete": SnapshotRef => Snapshot;
        /// A new VM from another's disks, with an identity of its own.
        VmBranch = "vm.branch": BranchVmParams => Vm;
        VmSet = "vm.set": SetVmParams => BatchResult;
        /// A new name for a VM; its ID, disks and IP stay.
        VmRename = "vm.rename": RenameVmParams => Vm;
        VmPing = "vm.ping": VmRef => PingResult;
        /// A free name from the name generator, as `vm create` without
        /// `--name` would pick now (the TUI's create form shows it).
        VmSuggestName = "vm.suggest_name": () => VmName;
        ImageList = "image.list": () => Vec<super::Image>;
        /// The image and the VMs made from it.
        ImageShow = "image.show": ImageRef => ImageDetail;
        /// Starts a build and answers at once; `image.build_status` follows it.
        ImageBuild = "image.build": BuildImageParams => super::ImageBuild;
        /// The build of that image name, running or last finished.
        ImageBuildStatus = "image.build_status": ImageRef => super::ImageBuild;
        /// Stops a running build; nothing of it stays.
        ImageBuildCancel = "image.build_cancel": ImageRef => super::ImageBuild;
        /// Ends an `--interactive` build's shell step: seal what the shell
        /// changed, or discard the build.
        ImageBuildContinue = "image.build_continue": ContinueBuildParams => super::ImageBuild;
        ImageDelete = "image.delete": ImageRef => Image;
        Doctor = "doctor": () => Vec<Check>;
    }
}

/// `daemon.stop`'s answer.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Stopping {
    pub stopping: bool,
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
    /// The backend new VMs get.
    pub vmm: Backend,
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
#[serde(deny_unknown_fields)]
pub struct VmRef {
    pub vm: String,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct CreateSnapshotParams {
    pub vm: String,
    /// A name for it; the time of day when absent (`snap-20261129-120405`).
    #[serde(default)]
    pub snapshot: Option<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct SnapshotRef {
    pub vm: String,
    pub snapshot: String,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct RestoreSnapshotParams {
    pub vm: String,
    pub snapshot: String,
    /// Needed when the restore would lose memory or disk changes made
    /// since the snapshot.
    #[serde(default)]
    pub force: bool,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct BranchVmParams {
    /// The VM to branch from (name or ID prefix).
    pub source: String,
    /// The new VM's name.
    pub name: String,
    /// Cold-boot the branch from the copied disks rather than resume it
    /// from the source's memory.
    #[serde(default)]
    pub no_memory: bool,
}

/// A saved point of a VM.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Snapshot {
    pub name: String,
    pub vm: VmName,
    /// Unix seconds.
    pub created_at: i64,
    /// Whether it holds the guest's memory (taken while the VM ran or was
    /// suspended): a restore then resumes the guest where it was.
    pub memory: bool,
    /// What it takes on the host.
    pub allocated_bytes: u64,
    /// The VM's shape when it was taken; a restore brings it back.
    pub vcpu: u32,
    pub memory_mib: u64,
    pub disk_size_bytes: u64,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct StopParams {
    pub vms: Vec<String>,
    #[serde(default)]
    pub force: bool,
}

/// Several VMs, each named by a ref; the daemon acts on them concurrently.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct VmRefs {
    pub vms: Vec<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct RenameVmParams {
    /// The VM's name or ID prefix.
    pub vm: String,
    /// Its new name.
    pub name: String,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct KillParams {
    pub vms: Vec<String>,
    /// A signal name (`TERM`, `SIGKILL`) or number (`9`).
    pub signal: String,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct CreateVmParams {
    pub name: Option<String>,
    pub image: Option<String>,
    pub vcpu: Option<u32>,
    pub memory_mib: Option<u64>,
    /// Work disk size as the user wrote it (`16G`).
    pub disk_size: Option<String>,
    #[serde(default)]
    pub nat: bool,
    /// The daemon's default when absent.
    #[serde(default)]
    pub vmm: Option<Backend>,
    #[serde(default)]
    pub publish: Vec<crate::PortMapping>,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct SetVmParams {
    pub vms: Vec<String>,
    pub vcpu: Option<u32>,
    pub memory_mib: Option<u64>,
    pub disk_size: Option<String>,
    pub nat: Option<bool>,
    /// Published ports to add (after the removals below).
    #[serde(default)]
    pub publish: Vec<crate::PortMapping>,
    /// Host addresses whose published ports go.
    #[serde(default)]
    pub unpublish: Vec<std::net::SocketAddr>,
    /// Remove every published port first.
    #[serde(default)]
    pub no_publish: bool,
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
    /// `vm suspend` is saving the guest's state; the VMM still runs.
    Suspending,
    /// The guest's whole state is saved in the VM's directory and no VMM
    /// runs: `vm start` resumes it where it was.
    Suspended,
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
            Self::Suspending => "suspending",
            Self::Suspended => "suspended",
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
            Self::Suspending,
            Self::Suspended,
            Self::Stopping,
            Self::Stopped,
            Self::Failed,
        ]
        .into_iter()
        .find(|s| s.as_str() == text)
    }
}

/// The VM state machine: which states a VM may move to from each, and
/// what each state allows. The daemon persists every move through one
/// function that checks it here.
impl VmState {
    /// Whether a VM in this state may move to `next`.
    pub fn can_become(self, next: VmState) -> bool {
        use VmState::*;
        matches!(
            (self, next),
            (Creating, Running)
                | (Stopped | Failed, Starting | Stopped)
                | (Starting, Running | Stopped)
                | (Running, Stopping | Stopped | Paused | Suspending)
                | (Paused, Running | Stopping | Stopped | Suspending)
                // A save that failed lets the guest run on; one whose VMM
                // died leaves it stopped.
                | (Suspending, Suspended | Running | Stopped)
                // Resuming starts a VMM; discarding the state stops the VM.
                | (Suspended, Starting | Stopped)
                // A snapshot with memory put back.
                | (Stopped | Failed, Suspended)
                // A resume that failed before the guest ran keeps the state.
                | (Starting, Suspended)
                // A stop cut short by a daemon's death: the next daemon
                // adopts the VMM that still runs, or records it stopped.
                | (Stopping, Stopped | Running)
        )
    }

    /// A VMM process may run in this state: stop, kill and the guest
    /// channel need one; resizing needs there to be none.
    pub fn has_vmm(self) -> bool {
        matches!(
            self,
            Self::Starting | Self::Running | Self::Paused | Self::Suspending | Self::Stopping
        )
    }
}

impl std::fmt::Display for VmState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct VmStats {
    pub vm: VmName,
    pub id: VmId,
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
    /// systemd's state in the guest (`running`, `stopping`, `rebooting`,
    /// ...), from guests whose responder reports it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub guest_state: Option<String>,
    pub detail: Option<String>,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
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
    /// What `image build` installed from apt (built images only).
    #[serde(default)]
    pub packages: Vec<String>,
    /// SHA-256 of the package list, one name per line, as built.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub packages_sha256: Option<String>,
    /// The image or file it was built from.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub base: Option<String>,
    /// The build's full output.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub build_log: Option<PathBuf>,
    /// Seconds the build took.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub build_secs: Option<u64>,
}

/// `image show`'s answer: the image, and the VMs that use it (which
/// `image delete` waits for).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct ImageDetail {
    #[serde(flatten)]
    pub image: Image,
    pub used_by: Vec<VmName>,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct ImageRef {
    pub image: String,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct BuildImageParams {
    pub name: String,
    /// A registered image's name or an ext4 file; the default base when absent.
    #[serde(default)]
    pub base: Option<String>,
    #[serde(default)]
    pub docker: bool,
    /// apt packages; the configured packages file's when absent.
    #[serde(default)]
    pub packages: Option<Vec<String>>,
    /// The builder's disk size, as the user wrote it (`8G`).
    #[serde(default)]
    pub size: Option<String>,
    /// Stop after the scripted steps for a shell in the image
    /// (`image.build_continue` ends it).
    #[serde(default)]
    pub interactive: bool,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct ContinueBuildParams {
    pub image: String,
    /// Seal what the shell changed; `false` discards the build.
    pub keep: bool,
}

/// A build: its steps as they go, and how it ended.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct ImageBuild {
    pub name: String,
    pub state: BuildState,
    pub steps: Vec<BuildStep>,
    pub log_path: PathBuf,
    /// Unix seconds.
    pub started_at: i64,
    /// Why it failed, and the log's last lines.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub log_tail: Vec<String>,
    /// The registered image, once it succeeded.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub image: Option<Image>,
    /// While an `--interactive` build waits for its shell: the builder VM
    /// to open it in, and the command (the image is mounted there).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub shell: Option<BuildShell>,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct BuildShell {
    pub vm: String,
    pub argv: Vec<String>,
}

#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum BuildState {
    Running,
    Succeeded,
    Failed,
    Cancelled,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct BuildStep {
    pub name: String,
    pub state: StepState,
    /// Milliseconds spent, once it started.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub elapsed_ms: Option<u64>,
}

#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum StepState {
    Pending,
    Running,
    Done,
    Skipped,
    Failed,
}

#[cfg(test)]
mod tests {
    use super::method::Name;
    use super::*;

    #[test]
    fn every_method_is_named_once_and_parses_back() {
        let mut seen = std::collections::HashSet::new();
        for name in Name::ALL {
            assert!(seen.insert(name.as_str()), "{} twice", name.as_str());
            assert_eq!(Name::parse(name.as_str()), Some(*name));
        }
        assert_eq!(Name::parse("vm.explode"), None);
        assert_eq!(method::VmCreate::NAME, "vm.create");
    }

    #[test]
    fn the_state_machine_allows_only_the_lifecycle_s_moves() {
        use VmState::*;
        let all = [
            Creating, Starting, Running, Paused, Suspending, Suspended, Stopping, Stopped, Failed,
        ];
        let allowed: Vec<(VmState, VmState)> = all
            .iter()
            .flat_map(|from| all.iter().map(move |to| (*from, *to)))
            .filter(|(from, to)| from.can_become(*to))
            .collect();
        for (from, to) in [
            (Creating, Running),
            (Stopped, Starting),
            (Starting, Running),
            (Running, Stopping),
            (Stopping, Stopped),
            (Running, Paused),
            (Paused, Running),
            (Running, Suspending),
            (Suspending, Suspended),
            (Suspending, Running),
            (Suspended, Starting),
            (Suspended, Stopped),
            (Starting, Suspended),
            (Stopped, Suspended),
        ] {
            assert!(allowed.contains(&(from, to)), "{from} -> {to}");
        }
        for (from, to) in [
            (Stopped, Running),
            (Creating, Starting),
            (Stopped, Paused),
            (Failed, Running),
            (Suspended, Running),
            (Running, Suspended),
        ] {
            assert!(!from.can_become(to), "{from} -> {to} skips a step");
        }
        assert!(
            all.iter().all(|s| !s.can_become(Creating)),
            "only create makes Creating"
        );
        let with_vmm: Vec<_> = all.iter().filter(|s| s.has_vmm()).collect();
        assert_eq!(
            with_vmm,
            [&Starting, &Running, &Paused, &Suspending, &Stopping]
        );
    }

    #[test]
    fn params_refuse_unknown_fields() {
        let err = serde_json::from_str::<CreateVmParams>(r#"{"name":"a","memroy_mib":1}"#)
            .unwrap_err()
            .to_string();
        assert!(err.contains("memroy_mib"), "{err}");
    }
}
