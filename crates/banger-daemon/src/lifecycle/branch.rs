//! `vm branch SRC NEW [--no-memory]`: a new VM from a copy of another's
//! disks (`/root` included), with an identity of its own: ID, name and
//! hostname, IP, MAC, TAP and vsock CID from the create pipeline, and a
//! new machine-id and SSH host keys.
//!
//! With memory (the default for a running or suspended source), NEW
//! resumes from SRC's saved state: its processes and tmux sessions go on
//! in both. It comes up with its link down and is given its identity
//! through the agent (see `identity.rs`) before it joins the network.
//! Without memory it cold-boots from the copied disks, which forget the
//! source's identity first.
//!
//! The copy is staged beside the VMs (`.<id>.branching`) under the
//! source's lock, then handed to an ordinary create: a failure or a crash
//! anywhere leaves the source as it was and no half VM (a daemon start
//! removes a leftover staging directory).

use super::files::{copied_overlay, copy_disks, copy_tree, disks_allocated, move_disks_in};
use super::suspend::CAPTURED_STATE;
use super::*;

/// How long the guest has to flush its writes before a running source's
/// copy (it runs on the agent: an image without one is copied unsynced,
/// as after a power cut, which ext4's journal recovers).
const SYNC_WAIT: Duration = Duration::from_secs(10);

/// What [`Lifecycle::stage_branch`] copied.
struct Staged {
    source: VmRecord,
    /// The staging directory holds the source's memory (`state/`).
    with_memory: bool,
}

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
            .and_then(|staged| {
                self.crash_point("branch:copied");
                let copied = started.elapsed();
                let branch = self.create_branch(&staged, &name, &staging)?;
                tracing::info!(source = %staged.source.name, branch = %branch.name, memory = staged.with_memory, copy_secs = copied.as_secs_f64(), secs = started.elapsed().as_secs_f64(), "VM branched");
                Ok(branch)
            });
        if let Err(e) = std::fs::remove_dir_all(&staging)
            && e.kind() != std::io::ErrorKind::NotFound
        {
            tracing::warn!(dir = %staging.display(), error = %e, "removing a branch's staging directory; the next daemon start removes it");
        }
        result
    }

    /// Creates NEW from the staged copy. One with memory resumes as its
    /// source and is then given its own identity; a failure there deletes
    /// it again.
    fn create_branch(
        self: &Arc<Self>,
        staged: &Staged,
        name: &VmName,
        staging: &std::path::Path,
    ) -> Result<VmRecord> {
        let source = &staged.source;
        if !staged.with_memory {
            self.disks
                .forget_identity(&copied_overlay(
                    &banger_host::VmDir::new(self.vm_dir(&source.id)),
                    staging,
                ))
                .map_err(|e| {
                    LifecycleError::step(
                        "branching",
                        &source.name,
                        "giving the copy a new identity",
                        e,
                    )
                })?;
        }
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
            let files = banger_host::VmDir::new(dir);
            move_disks_in(staging, &files)
                .and_then(|()| {
                    if !staged.with_memory {
                        return Ok(());
                    }
                    std::fs::write(files.identity_pending(), source.name.as_bytes())?;
                    std::fs::rename(staging.join(CAPTURED_STATE), files.saved_state())
                })
                .map_err(|e| {
                    LifecycleError::step("branching", &source.name, "moving the copy into place", e)
                })
        })?;
        if !staged.with_memory {
            return Ok(branch);
        }
        self.crash_point("branch:resumed");
        if let Err(err) = self
            .locks
            .with(&branch.id, || self.take_own_identity(&branch))
        {
            tracing::warn!(branch = %branch.name, error = %error_text(&err), "the branch could not take its own identity; deleting it");
            let _ = self.kill(&branch.id, libc::SIGKILL);
            if let Err(e) = self.delete(&branch.id) {
                tracing::error!(branch = %branch.name, error = %error_text(&e), "deleting a branch that failed");
            }
            return Err(err);
        }
        self.record(&branch.id)
    }

    /// Copies the source's disks, and its memory unless `no_memory`, into
    /// `staging`, under its lock. A running source is stopped for the
    /// save and the copy (with memory) or frozen for the copy only.
    fn stage_branch(
        &self,
        source_id: &str,
        no_memory: bool,
        staging: &std::path::Path,
    ) -> Result<Staged> {
        self.locks.with(source_id, || {
            let mut source = self.record(source_id)?;
            let running = Self::runs_or_rests(&source)?;
            let has_memory = running || source.state == VmState::Suspended;
            let with_memory = has_memory && !no_memory;
            if with_memory && !self.backend(source.vmm)?.restores_as_another_vm() {
                return Err(LifecycleError::BranchWithMemory {
                    vm: source.name.to_string(),
                    backend: source.vmm,
                });
            }
            if running && source.state == VmState::Paused && source.last_error.is_some() {
                return Err(LifecycleError::PausedOnError {
                    name: source.name.to_string(),
                });
            }
            let files = banger_host::VmDir::new(self.vm_dir(&source.id));
            let memory = if with_memory {
                source.memory_mib.0 << 20
            } else {
                0
            };
            self.check_free_space_for("branching a VM", disks_allocated(&files) + memory)?;
            std::fs::create_dir(staging).map_err(|e| {
                LifecycleError::step("branching", &source.name, "making the staging directory", e)
            })?;
            let copy = || {
                copy_disks(&files, staging).map_err(|e| {
                    LifecycleError::step("branching", &source.name, "copying its disks", e)
                })
            };
            if with_memory && running {
                self.capture_running(&mut source, staging, "branching", "branch:saved")?;
            } else if with_memory {
                copy()?;
                copy_tree(&files.saved_state(), &staging.join(CAPTURED_STATE)).map_err(|e| {
                    LifecycleError::step("branching", &source.name, "copying its saved state", e)
                })?;
            } else if running {
                self.copy_frozen(&source, copy)?;
            } else {
                copy()?;
            }
            Ok(Staged {
                source,
                with_memory,
            })
        })
    }

    /// A running source, asked to flush its writes, then frozen for `copy`
    /// only (a guest the user paused stays paused).
    fn copy_frozen(&self, source: &VmRecord, copy: impl FnOnce() -> Result<()>) -> Result<()> {
        if let Some(vsock) = &source.vsock_path
            && let Err(e) = self.agent.run(vsock, &["sync"], SYNC_WAIT)
        {
            tracing::warn!(vm = %source.name, error = %error_text(&e), "the guest did not flush its writes; copying as they are");
        }
        let backend = self.backend(source.vmm)?;
        let dir = self.vm_dir(&source.id);
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
        copied
    }
}

/// Ends a branch's staging directory in the VMs' directory.
pub(super) const BRANCH_STAGING_SUFFIX: &str = ".branching";
