//! `vm set`: vCPUs, memory and disk size while stopped, NAT at any time.

use super::*;

impl Lifecycle {
    #[tracing::instrument(skip(self, params), fields(vm = %id))]
    pub fn set(self: &Arc<Self>, id: &str, params: &SetVmParams) -> Result<VmRecord> {
        if let Some(vcpu) = params.vcpu {
            validate::vcpu(vcpu)?;
        }
        if let Some(memory) = params.memory_mib {
            validate::memory_mib(memory)?;
        }
        let disk_size = params
            .disk_size
            .as_deref()
            .map(validate::disk_size)
            .transpose()?
            .map(DiskSize);
        self.locks.with(id, || {
            let old = self.record(id)?;
            let running = Self::running_pid(&old).is_some();
            let needs_stopped =
                params.vcpu.is_some() || params.memory_mib.is_some() || disk_size.is_some();
            if needs_stopped && running {
                return Err(LifecycleError::MustBeStopped {
                    name: old.name.to_string(),
                });
            }
            if let Some(size) = disk_size.filter(|size| *size < old.disk_size_bytes) {
                return Err(LifecycleError::Shrink {
                    name: old.name.to_string(),
                    current: old.disk_size_bytes.bytes(),
                    requested: size.bytes(),
                });
            }
            if disk_size.is_some_and(|size| size > old.disk_size_bytes) {
                self.check_free_space("growing a work disk")?;
            }
            let mut new = old.clone();
            new.vcpu = params.vcpu.unwrap_or(old.vcpu);
            new.memory_mib = params.memory_mib.map_or(old.memory_mib, MemoryMib);
            new.disk_size_bytes = disk_size.unwrap_or(old.disk_size_bytes);
            new.nat = params.nat.unwrap_or(old.nat);
            let ctx = self.context(&old);
            for c in &self.capabilities {
                c.update(&old, &new, &ctx, running)
                    .map_err(|e| LifecycleError::capability("updating", &old.name, e))?;
            }
            self.crash_point("set:applied");
            self.store.update_vm(&new)?;
            Ok(new)
        })
    }
}
