//! `vm start`: boot a stopped VM again, from its disks as they were.

use super::*;

impl Lifecycle {
    #[tracing::instrument(skip(self), fields(vm = %id))]
    pub fn start(self: &Arc<Self>, id: &str) -> Result<VmRecord> {
        self.locks.with(id, || self.start_locked(id))
    }

    pub(super) fn start_locked(self: &Arc<Self>, id: &str) -> Result<VmRecord> {
        let mut record = self.record(id)?;
        if let Some(pid) = Self::running_pid(&record)
            && procfs::is_running(pid, record.pid_start_time)
        {
            return Ok(record);
        }
        let image = self.usable_image(&record.image)?;
        self.preflight("start", &record.name, &record)?;
        let resuming = record.state == VmState::Suspended;
        if !resuming {
            self.forget_pending_identity(&record)?;
        }
        let action = if resuming { "resuming" } else { "starting" };
        self.transition(&mut record, VmState::Starting)?;
        match self.boot(&mut record, &image, action, None) {
            Ok(_) => {
                record.last_error = None;
                self.transition(&mut record, VmState::Running)?;
                if resuming {
                    self.step_guest_clock(&record);
                }
                tracing::info!(vm = %record.name, pid = ?record.pid, resumed = resuming, "VM started");
                Ok(record)
            }
            Err(err) => {
                record.last_error = Some(error_text(&err));
                // The backend takes the state away only once the guest can
                // run: while it is there, the VM is still suspended.
                let state = banger_host::VmDir::new(self.vm_dir(&record.id)).saved_state();
                if resuming && state.is_dir() {
                    record.pid = None;
                    record.pid_start_time = None;
                    self.transition(&mut record, VmState::Suspended)?;
                } else {
                    self.record_stopped(&mut record, format!("{action} failed"))?;
                }
                Err(err)
            }
        }
    }
}
