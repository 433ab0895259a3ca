//! What a lifecycle action can fail with, and the kind each failure is
//! reported as over RPC.

use super::*;

#[derive(Debug, Error)]
pub enum LifecycleError {
    #[error(transparent)]
    Invalid(#[from] ValidationError),
    #[error("a VM named {0:?} already exists: pick another --name")]
    NameTaken(String),
    #[error(
        "{name:?} begins the ID of {other}, so it would make that ID prefix ambiguous: pick another name"
    )]
    NameIsIdPrefix { name: String, other: String },
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
    #[error("this bangerd has no {0} backend")]
    NoBackend(banger_proto::Backend),
    #[error(
        "image {0:?} is registered from the runtime bundle (or default_rootfs) at every bangerd start and cannot be deleted: set default_rootfs in config.toml to use another rootfs"
    )]
    ImageNotDeletable(String),
    #[error(
        "image {image:?} is used by {}: delete those VMs first (`banger vm delete {}`)",
        .vms.join(", "),
        .vms.join(" ")
    )]
    ImageInUse { image: String, vms: Vec<String> },
    #[error("{name} cannot go from {from} to {to}")]
    Transition {
        name: String,
        from: VmState,
        to: VmState,
    },
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
    #[error("{name} is {state}, not suspended: `banger vm start {name}` boots a stopped VM")]
    NotSuspended { name: String, state: VmState },
    #[error(
        "{name} is suspended: stopping it discards its saved memory (running processes, open editors; the disks stay): resume it with `banger vm start {name}`, or discard with `banger vm stop --force {name}`"
    )]
    WouldDiscardState { name: String },
    #[error(
        "{name} is suspended, and its saved state needs the vCPUs, memory and disks it was saved with: resume it with `banger vm start {name}` and stop it, or discard the state with `banger vm stop --force {name}`"
    )]
    SuspendedNeedsSameShape { name: String },
    #[error(
        "{vm} already has a snapshot named {snapshot:?}: pick another name, or delete it with `banger vm snapshot delete {vm} {snapshot}`"
    )]
    SnapshotExists { vm: String, snapshot: String },
    #[error("{vm} has no snapshot named {snapshot:?}: see `banger vm snapshot list {vm}`")]
    NoSnapshot { vm: String, snapshot: String },
    #[error(
        "restoring {snapshot} discards {vm}'s {what}: take a snapshot of it first if you want to keep them, then run again with --force"
    )]
    RestoreLoses {
        vm: String,
        snapshot: String,
        what: &'static str,
    },
    #[error(
        "branching {vm} with its memory is not implemented yet on the {backend} backend: add --no-memory to boot the branch from a copy of its disks ({vm} keeps running)"
    )]
    BranchWithMemory {
        vm: String,
        backend: banger_proto::Backend,
    },
    #[error("{name} is {state}: try again once it is running, stopped or suspended")]
    Busy { name: String, state: VmState },
    #[error(
        "{name} is paused on a disk error (its VMM could not write): free space on the host, `banger vm unpause {name}`, then suspend it"
    )]
    PausedOnError { name: String },
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
            | Self::NoBackend(_)
            | Self::ImageNotDeletable(_) => K::InvalidInput,
            Self::NoSpace { .. } => K::Unavailable,
            Self::NameTaken(_)
            | Self::NameIsIdPrefix { .. }
            | Self::MustBeStopped { .. }
            | Self::NotRunning { .. }
            | Self::NotSuspended { .. }
            | Self::WouldDiscardState { .. }
            | Self::SuspendedNeedsSameShape { .. }
            | Self::PausedOnError { .. }
            | Self::SnapshotExists { .. }
            | Self::RestoreLoses { .. }
            | Self::Busy { .. }
            | Self::BranchWithMemory { .. }
            | Self::Transition { .. }
            | Self::ImageInUse { .. } => K::Conflict,
            Self::NotFound(_) | Self::NoImage(_) | Self::NoSnapshot { .. } => K::NotFound,
            Self::ImageFileMissing { .. } | Self::Namegen(_) => K::InvalidInput,
            Self::Reserve(..) | Self::NotReady { .. } => K::Unavailable,
            Self::Step { .. } | Self::Signal { .. } => K::HostFailure,
            Self::Store(_) => K::Internal,
        }
    }
}

impl LifecycleError {
    /// A failed step whose cause is a capability's (its own message is the step).
    pub(super) fn capability(action: &'static str, name: &str, err: CapabilityError) -> Self {
        Self::Step {
            action,
            name: name.to_owned(),
            step: err.message,
            source: err.source,
        }
    }

    pub(crate) fn step(
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

pub use banger_proto::rpc::error_text;
