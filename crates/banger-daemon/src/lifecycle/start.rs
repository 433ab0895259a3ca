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
        self.transition(&mut record, VmState::Starting)?;
        match self.boot(&mut record, &image, "starting", None) {
            Ok(_) => {
                record.last_error = None;
                self.transition(&mut record, VmState::Running)?;
                tracing::info!(vm = %record.name, pid = ?record.pid, "VM started");
                Ok(record)
            }
            Err(err) => {
                record.last_error = Some(error_text(&err));
                self.record_stopped(&mut record, "start failed".into())?;
                Err(err)
            }
        }
    }
}
