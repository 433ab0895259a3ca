//! `vm pause` and `vm unpause`: the guest's vCPUs frozen and thawed in
//! place. The VMM process, the guest's memory and every host resource stay;
//! nothing is written to disk (`vm suspend` is the kind that is).

use super::*;

impl Lifecycle {
    #[tracing::instrument(skip(self), fields(vm = %id))]
    pub fn pause(self: &Arc<Self>, id: &str) -> Result<VmRecord> {
        self.set_paused(id, true)
    }

    #[tracing::instrument(skip(self), fields(vm = %id))]
    pub fn unpause(self: &Arc<Self>, id: &str) -> Result<VmRecord> {
        self.set_paused(id, false)
    }

    fn set_paused(self: &Arc<Self>, id: &str, paused: bool) -> Result<VmRecord> {
        let (action, next) = if paused {
            ("pausing", VmState::Paused)
        } else {
            ("unpausing", VmState::Running)
        };
        self.locks.with(id, || {
            let mut record = self.record(id)?;
            if Self::running_pid(&record).is_none() {
                return Err(LifecycleError::NotRunning {
                    name: record.name.to_string(),
                });
            }
            if record.state == next {
                // Already there: nothing to do, and nothing to undo.
                return Ok(record);
            }
            if !record.state.can_become(next) {
                return Err(LifecycleError::Transition {
                    name: record.name.to_string(),
                    from: record.state,
                    to: next,
                });
            }
            let dir = self.vm_dir(&record.id);
            self.backend(record.vmm)?
                .set_paused(&dir, paused)
                .map_err(|e| LifecycleError::step(action, &record.name, "asking the VMM", e))?;
            // A pause after a disk error clears with the resume, as a
            // user's pause carries none.
            record.last_error = None;
            if let Err(e) = self.transition(&mut record, next) {
                // The store refused: the guest goes back to how it was.
                let _ = self.backend(record.vmm).map(|b| b.set_paused(&dir, !paused));
                return Err(e);
            }
            tracing::info!(vm = %record.name, paused, "vCPUs {}", if paused { "frozen" } else { "thawed" });
            Ok(record)
        })
    }
}
