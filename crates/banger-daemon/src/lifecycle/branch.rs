//! `vm branch SRC NEW --no-memory`: a new VM booted from a copy of
//! another's disks (`/root` included), with an identity of its own: ID,
//! name and hostname, IP, MAC, TAP and vsock CID from the create pipeline,
//! and a new machine-id and SSH host keys at its first boot.
//!
//! The copy is staged beside the VMs (`.<id>.branching`) under the
//! source's lock, then handed to an ordinary create: a failure or a crash
//! anywhere leaves the source as it was and no half VM (a daemon start
//! removes a leftover staging directory).

use super::*;

/// How long the guest has to flush its writes before a running source's
/// copy (it runs on the agent: an image without one is copied unsynced,
/// as after a power cut, which ext4's journal recovers).
const SYNC_WAIT: Duration = Duration::from_secs(10);

impl Lifecycle {
    #[tracing::instrument(skip(self), fields(vm = %source_id))]
    pub fn branch(
        self: &Arc<Self>,
        source_id: &str,
        name: &str,
        no_memory: bool,
    ) -> Result<VmRecord> {
        let name = VmName::parse(name)?;
        if self.store.list_vms()?.iter().any(|vm| vm.name == name) {
            return Err(LifecycleError::NameTaken(name.to_string()));
        }
        let staging = self
            .paths
            .vms_dir
            .join(format!(".{}{BRANCH_STAGING_SUFFIX}", create::new_id()));
        let started = std::time::Instant::now();
        let result = self
            .stage_branch(source_id, no_memory, &staging)
            .and_then(|source| {
                self.crash_point("branch:copied");
                let source_files = banger_host::VmDir::new(self.vm_dir(&source.id));
                let overlay = files::copied_overlay(&source_files, &staging);
                self.disks.forget_identity(&overlay).map_err(|e| {
                    LifecycleError::step("branching", &source.name, "giving the copy a new identity", e)
                })?;
                let copied = started.elapsed();
                let params = CreateVmParams {
                    name: Some(name.to_string()),
                    image: Some(source.image.clone()),
                    vmm: Some(source.vmm),
                    vcpu: Some(source.vcpu),
                    memory_mib: Some(source.memory_mib.0),
                    disk_size: Some(format!("{}K", source.disk_size_bytes.bytes() >> 10)),
                    nat: source.nat,
                    ..Default::default()
                };
                let branch = self.create_with(&params, |dir| {
                    files::move_disks_in(&staging, &banger_host::VmDir::new(dir)).map_err(|e| {
                        LifecycleError::step("branching", &source.name, "moving the copy into place", e)
                    })
                })?;
                tracing::info!(source = %source.name, branch = %branch.name, copy_secs = copied.as_secs_f64(), "VM branched");
                Ok(branch)
            });
        if let Err(e) = std::fs::remove_dir_all(&staging)
            && e.kind() != std::io::ErrorKind::NotFound
        {
            tracing::warn!(dir = %staging.display(), error = %e, "removing a branch's staging directory; the next daemon start removes it");
        }
        result
    }

    /// Copies the source's disks into `staging`, under its lock. A running
    /// source is asked to flush its writes, and is frozen only for the copy.
    fn stage_branch(
        &self,
        source_id: &str,
        no_memory: bool,
        staging: &std::path::Path,
    ) -> Result<VmRecord> {
        self.locks.with(source_id, || {
            let source = self.record(source_id)?;
            let running = Self::runs_or_rests(&source)?;
            if (running || source.state == VmState::Suspended) && !no_memory {
                return Err(LifecycleError::BranchWithMemory {
                    vm: source.name.to_string(),
                });
            }
            let files = banger_host::VmDir::new(self.vm_dir(&source.id));
            self.check_free_space_for("branching a VM", files::disks_allocated(&files))?;
            std::fs::create_dir(staging).map_err(|e| {
                LifecycleError::step("branching", &source.name, "making the staging directory", e)
            })?;
            let copy = || {
                files::copy_disks(&files, staging).map_err(|e| {
                    LifecycleError::step("branching", &source.name, "copying its disks", e)
                })
            };
            if !running {
                copy()?;
                return Ok(source);
            }
            if let Some(vsock) = &source.vsock_path
                && let Err(e) = banger_host::agent::run(vsock, &["sync"], SYNC_WAIT)
            {
                tracing::warn!(vm = %source.name, error = %error_text(&e), "the guest did not flush its writes; copying as they are");
            }
            let backend = self.backend(source.vmm)?;
            let dir = self.vm_dir(&source.id);
            // A guest the user paused stays paused; one that runs is
            // frozen for the copy only.
            let freeze = source.state == VmState::Running;
            if freeze {
                backend.set_paused(&dir, true).map_err(|e| {
                    LifecycleError::step("branching", &source.name, "pausing it for the copy", e)
                })?;
            }
            let copied = copy();
            if freeze && let Err(e) = backend.set_paused(&dir, false) {
                tracing::error!(vm = %source.name, error = %error_text(&e), "could not let the source run on after the copy");
            }
            copied.map(|()| source)
        })
    }
}

/// Ends a branch's staging directory in the VMs' directory.
pub(super) const BRANCH_STAGING_SUFFIX: &str = ".branching";
