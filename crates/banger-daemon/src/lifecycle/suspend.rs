//! `vm suspend` and resuming: the guest's whole state (memory and
//! devices) saved into the VM's directory and its VMM ended; `vm start`
//! restores it, and the guest goes on where it was.
//!
//! The state is written under a temporary name and renamed when complete,
//! and taken away by the backend (renamed aside, deleted behind) before the
//! resumed guest runs: a saved state that exists is always whole and
//! always matches the disks.

use super::files::{commit_dir, copy_disks, dir_bytes};
use super::*;

/// Where [`Lifecycle::capture_running`] puts the guest's state, beside
/// the disk copies.
pub(super) const CAPTURED_STATE: &str = "state";

/// How long a resumed guest's agent has to answer the clock step.
const CLOCK_STEP_WAIT: Duration = Duration::from_secs(20);

impl Lifecycle {
    #[tracing::instrument(skip(self), fields(vm = %id))]
    pub fn suspend(self: &Arc<Self>, id: &str) -> Result<VmRecord> {
        self.locks.with(id, || self.suspend_locked(id))
    }

    fn suspend_locked(self: &Arc<Self>, id: &str) -> Result<VmRecord> {
        let mut record = self.record(id)?;
        if record.state == VmState::Suspended {
            return Ok(record);
        }
        let Some(pid) = Self::running_pid(&record) else {
            return Err(LifecycleError::NotRunning {
                name: record.name.to_string(),
            });
        };
        if record.state == VmState::Paused && record.last_error.is_some() {
            return Err(LifecycleError::PausedOnError {
                name: record.name.to_string(),
            });
        }
        if !record.state.can_become(VmState::Suspending) {
            return Err(LifecycleError::Transition {
                name: record.name.to_string(),
                from: record.state,
                to: VmState::Suspending,
            });
        }
        let backend = self.backend(record.vmm)?;
        let dir = self.vm_dir(&record.id);
        let files = banger_host::VmDir::new(&dir);
        // The state is at most the guest's memory (QEMU skips zero pages).
        self.check_free_space_for("suspending", record.memory_mib.0 << 20)?;
        let partial = files.saved_state_partial();
        let _ = std::fs::remove_dir_all(&partial);
        std::fs::create_dir(&partial).map_err(|e| {
            LifecycleError::step("suspending", &record.name, "making the state directory", e)
        })?;
        self.thaw_user_pause(&record);
        self.transition(&mut record, VmState::Suspending)?;
        self.crash_point("suspend:saving");
        let started = std::time::Instant::now();
        let saved = backend
            .save_state(&dir, &partial)
            .map_err(|e| {
                LifecycleError::step("suspending", &record.name, "saving the guest's state", e)
            })
            .and_then(|()| {
                commit_dir(&partial, &files.saved_state()).map_err(|e| {
                    // The guest was stopped for the save: it runs on.
                    if let Err(undo) = backend.resume_after_save(&dir) {
                        tracing::error!(vm = %record.name, error = %error_text(&undo), "could not let the guest run on");
                    }
                    LifecycleError::step("suspending", &record.name, "writing the state", e)
                })
            });
        if let Err(err) = saved {
            let _ = std::fs::remove_dir_all(&partial);
            self.transition(&mut record, VmState::Running)?;
            return Err(err);
        }
        self.crash_point("suspend:saved");
        // The state is whole: the VMM can go. The record lets go of its
        // PID first, so the VMM's exit is not taken for a crash.
        record.pid = None;
        record.pid_start_time = None;
        record.stopped_at = Some(now());
        record.exit_reason = Some("suspended".into());
        self.transition(&mut record, VmState::Suspended)?;
        self.force_stop(pid);
        self.remove_runtime_files(&record);
        self.detach_all(&record);
        let bytes = dir_bytes(&files.saved_state());
        tracing::info!(vm = %record.name, secs = started.elapsed().as_secs_f64(), allocated = bytes, "VM suspended");
        Ok(record)
    }

    #[tracing::instrument(skip(self), fields(vm = %id))]
    pub fn resume(self: &Arc<Self>, id: &str) -> Result<VmRecord> {
        self.locks.with(id, || {
            let record = self.record(id)?;
            match record.state {
                VmState::Suspended => self.start_locked(id),
                VmState::Running => Ok(record),
                _ => Err(LifecycleError::NotSuspended {
                    name: record.name.to_string(),
                    state: record.state,
                }),
            }
        })
    }

    /// The guest's state (into `into/state`) and its disks (into `into`)
    /// at one instant, for a snapshot or a branch: the guest stays stopped
    /// from the save to the end of the disk copies, then runs on. Its
    /// state is `suspending` meanwhile, so a daemon killed here lets the
    /// guest run on at the next start.
    pub(super) fn capture_running(
        &self,
        record: &mut VmRecord,
        into: &std::path::Path,
        action: &'static str,
        crash_point: &'static str,
    ) -> Result<()> {
        let backend = self.backend(record.vmm)?;
        let dir = self.vm_dir(&record.id);
        let files = banger_host::VmDir::new(&dir);
        self.thaw_user_pause(record);
        self.transition(record, VmState::Suspending)?;
        let state = into.join(CAPTURED_STATE);
        let result = std::fs::create_dir(&state)
            .map_err(|e| LifecycleError::step(action, &record.name, "making its directory", e))
            .and_then(|()| {
                backend.save_state(&dir, &state).map_err(|e| {
                    LifecycleError::step(action, &record.name, "saving the guest's state", e)
                })
            })
            .and_then(|()| {
                self.crash_point(crash_point);
                let copied = copy_disks(&files, into).map_err(|e| {
                    LifecycleError::step(action, &record.name, "copying the disks", e)
                });
                let resumed = backend.resume_after_save(&dir).map_err(|e| {
                    LifecycleError::step(action, &record.name, "letting the guest run on", e)
                });
                copied.and(resumed)
            });
        self.transition(record, VmState::Running)?;
        result
    }

    /// After a resume: the guest's clock stood still while it was
    /// suspended, so it is stepped to the host's through the agent, in the
    /// background (the agent answers a moment after the vsock device is
    /// back). Best effort: an image without the agent keeps its clock
    /// until chrony or NTP steps it.
    pub(super) fn step_guest_clock(&self, record: &VmRecord) {
        let Some(vsock) = record.vsock_path.clone() else {
            return;
        };
        let name = record.name.to_string();
        let agent = self.agent.clone();
        std::thread::spawn(move || {
            let argv = || {
                ["date", "-u", "-s", &crate::guest_agent::host_clock_arg()]
                    .map(str::to_owned)
                    .to_vec()
            };
            let per_try = Duration::from_secs(3);
            match crate::guest_agent::run_when_up(&*agent, &vsock, argv, per_try, CLOCK_STEP_WAIT) {
                Ok((_, status)) if status.shell_code() == 0 => {
                    tracing::info!(vm = %name, "guest clock stepped after resume");
                }
                Ok((_, status)) => {
                    tracing::warn!(vm = %name, ?status, "the guest refused the clock step");
                }
                Err(e) => {
                    tracing::warn!(vm = %name, error = %error_text(&e), "could not step the guest clock after resume");
                }
            }
        });
    }
}
