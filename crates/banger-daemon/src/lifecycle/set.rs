//! `vm set`: vCPUs, memory and disk size while stopped; NAT and published
//! ports at any time.

use super::*;
use banger_proto::PortMapping;

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
            if needs_stopped && old.state == VmState::Suspended {
                return Err(LifecycleError::SuspendedNeedsSameShape {
                    name: old.name.to_string(),
                });
            }
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
            new.publish = published(&old.publish, params);
            // Another VM's create or set must not take the same host port
            // between this check and the write.
            let _allocation = (new.publish != old.publish)
                .then(|| self.allocation.lock().unwrap_or_else(|p| p.into_inner()));
            if new.publish != old.publish {
                crate::capabilities::publish::check_clashes(&new, &self.store.list_vms()?)
                    .map_err(|e| LifecycleError::capability("updating", &old.name, e))?;
            }
            let ctx = self.context(&old);
            crate::capability::forward(
                self.capabilities.iter().map(|c| c.as_ref()),
                |c| c.update(&old, &new, &ctx, running),
                |c| self.undo_quietly(c.name(), c.update(&new, &old, &ctx, running)),
            )
            .map_err(|e| LifecycleError::capability("updating", &old.name, e))?;
            self.crash_point("set:applied");
            if let Err(e) = self.store.update_vm(&new) {
                for c in &self.capabilities {
                    self.undo_quietly(c.name(), c.update(&new, &old, &ctx, running));
                }
                return Err(e.into());
            }
            Ok(new)
        })
    }
}

/// The published ports after `params`: all cleared first when asked, then
/// the named host addresses removed, then the new ones added (a mapping on
/// the same host address replaces the old one).
fn published(current: &[PortMapping], params: &SetVmParams) -> Vec<PortMapping> {
    let mut list: Vec<PortMapping> = if params.no_publish {
        Vec::new()
    } else {
        current.to_vec()
    };
    list.retain(|m| !params.unpublish.contains(&m.host));
    for mapping in &params.publish {
        list.retain(|m| m.host != mapping.host);
        list.push(*mapping);
    }
    list
}
