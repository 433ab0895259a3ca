//! `vm restart`: a stop and a start under one hold of the VM's lock.

use super::*;

impl Lifecycle {
    #[tracing::instrument(skip(self), fields(vm = %id))]
    pub fn restart(self: &Arc<Self>, id: &str) -> Result<VmRecord> {
        self.locks.with(id, || {
            self.stop_locked(id, false)?;
            self.start_locked(id)
        })
    }
}
