//! `vm stop`: the stop ladder (ask the guest, then SIGTERM, then SIGKILL)
//! and how each exit is recorded.

use super::*;

impl Lifecycle {
    /// SIGKILL and wait: for rollbacks, where the guest's state is worthless.
    pub(super) fn force_stop(&self, pid: u32) {
        let _ = send_signal(pid, libc::SIGKILL);
        if self.exits.wait_exit(pid, Duration::from_secs(10)).is_none() {
            tracing::error!(pid, "VMM did not exit 10s after SIGKILL");
        }
    }

    /// Ctrl-Alt-Del, a bounded wait, then SIGTERM, then SIGKILL; then the
    /// VM's attachments are released. Returns how the VMM ended, in words.
    pub(super) fn shut_down(&self, record: &VmRecord, pid: u32) -> String {
        let dir = self.vm_dir(&record.id);
        let graceful = self.stop_timeouts.graceful;
        let requested = match self.backend(record.vmm) {
            Ok(backend) => {
                self.thaw_user_pause(record);
                backend
                    .request_shutdown(&dir, pid)
                    .map_err(|e| e.to_string())
            }
            Err(e) => Err(e.to_string()),
        };
        let why = match requested {
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

    /// A frozen guest cannot hear the power button (nor let go of a
    /// device for a suspend): a VM paused by `vm pause` is thawed first. One the VMM paused
    /// on a failed disk write (it carries the reason) stays frozen: thawed,
    /// it would retry the write and take the last free bytes the store needs.
    pub(super) fn thaw_user_pause(&self, record: &VmRecord) {
        if record.state != VmState::Paused || record.last_error.is_some() {
            return;
        }
        let thawed = match self.backend(record.vmm) {
            Ok(backend) => backend
                .set_paused(&self.vm_dir(&record.id), false)
                .map_err(|e| error_text(&e)),
            Err(e) => Err(error_text(&e)),
        };
        if let Err(e) = thawed {
            tracing::warn!(vm = %record.name, error = %e, "could not resume the paused guest before its shutdown");
        }
    }

    /// `force` lets a suspended VM's saved state go.
    #[tracing::instrument(skip(self), fields(vm = %id))]
    pub fn stop(self: &Arc<Self>, id: &str, force: bool) -> Result<VmRecord> {
        self.locks.with(id, || self.stop_locked(id, force))
    }

    pub(super) fn stop_locked(&self, id: &str, force: bool) -> Result<VmRecord> {
        let mut record = self.record(id)?;
        if record.state == VmState::Suspended {
            return self.discard_saved_state(record, force);
        }
        let Some(pid) = Self::running_pid(&record) else {
            self.transition(&mut record, VmState::Stopped)?;
            return Ok(record);
        };
        self.thaw_user_pause(&record);
        self.transition(&mut record, VmState::Stopping)?;
        self.crash_point("stop:stopping");
        let reason = self.shut_down(&record, pid);
        tracing::info!(vm = %record.name, reason = %reason, "VM stopped");
        record.last_error = None;
        self.record_stopped(&mut record, reason)?;
        Ok(record)
    }

    /// A suspended VM stops by losing its saved state; its disks stay as
    /// the save left them (consistent, as after a power cut).
    fn discard_saved_state(&self, mut record: VmRecord, force: bool) -> Result<VmRecord> {
        if !force {
            return Err(LifecycleError::WouldDiscardState {
                name: record.name.to_string(),
            });
        }
        let state = banger_host::VmDir::new(self.vm_dir(&record.id)).saved_state();
        match std::fs::remove_dir_all(&state) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => {
                return Err(LifecycleError::step(
                    "stopping",
                    &record.name,
                    "discarding the saved state",
                    e,
                ));
            }
        }
        record.exit_reason = Some("suspended state discarded".into());
        self.transition(&mut record, VmState::Stopped)?;
        tracing::info!(vm = %record.name, "saved state discarded");
        Ok(record)
    }
}
