//! `vm kill`: a signal to the VMM, whose exit the supervisor records.

use super::*;

impl Lifecycle {
    #[tracing::instrument(skip(self), fields(vm = %id))]
    pub fn kill(self: &Arc<Self>, id: &str, signal: i32) -> Result<VmRecord> {
        let pid = self.locks.with(id, || -> Result<u32> {
            let record = self.record(id)?;
            let pid = Self::running_pid(&record)
                .ok_or_else(|| LifecycleError::NotRunning { name: record.name.to_string() })?;
            send_signal(pid, signal).map_err(|source| LifecycleError::Signal {
                name: record.name.to_string(),
                signal: validate::signal_name(signal),
                pid,
                source,
            })?;
            tracing::info!(vm = %record.name, pid, signal = %validate::signal_name(signal), "signal sent");
            Ok(pid)
        })?;
        // A fatal signal is recorded by the watcher; give it a moment so the
        // answer shows the VM stopped.
        self.exits.wait_handled(pid, Duration::from_secs(3));
        self.record(id)
    }
}
