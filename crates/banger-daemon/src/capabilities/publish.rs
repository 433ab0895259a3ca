//! Published ports (`vm create|set --publish`): host listeners the daemon
//! keeps open while a VM runs, each connection carried over vsock to the
//! guest agent. They are opened before each boot, closed when the VMM
//! exits, changed live by `vm set`, and opened again for running VMs when
//! a daemon starts (a killed daemon's listeners died with it).

use std::sync::Arc;

use banger_host::publish::PortPublisher;
use banger_proto::PortMapping;
use banger_vmm::LaunchSpec;

use crate::capability::{Capability, CapabilityError, Result, VmContext};
use crate::store::VmRecord;

#[derive(Debug)]
pub struct PublishCapability {
    ports: Arc<dyn PortPublisher>,
}

impl PublishCapability {
    pub fn new(ports: Arc<dyn PortPublisher>) -> Self {
        Self { ports }
    }

    /// Opens each of `mappings`; on a failure closes the ones it opened.
    fn open_all(&self, vm: &VmRecord, mappings: &[PortMapping]) -> Result<()> {
        let vsock = vm.vsock_path.as_deref().ok_or_else(|| {
            CapabilityError::new("publish", format!("{} has no vsock device", vm.name))
        })?;
        for (i, mapping) in mappings.iter().enumerate() {
            if let Err(e) = self.ports.open(&vm.id, *mapping, vsock) {
                for opened in &mappings[..i] {
                    self.ports.close(&vm.id, opened.host);
                }
                return Err(CapabilityError::caused(
                    "publish",
                    format!("publishing {mapping}"),
                    e,
                ));
            }
        }
        Ok(())
    }

    fn close_all(&self, vm: &VmRecord, mappings: &[PortMapping]) {
        for mapping in mappings {
            self.ports.close(&vm.id, mapping.host);
        }
    }
}

/// Refuses mappings that clash with each other or with another VM's.
pub fn check_clashes(vm: &VmRecord, others: &[VmRecord]) -> Result<()> {
    for (i, mapping) in vm.publish.iter().enumerate() {
        if let Some(twin) = vm.publish[..i].iter().find(|m| m.clashes_with(mapping)) {
            return Err(CapabilityError::new(
                "publish",
                format!(
                    "{mapping} and {twin} both listen on host port {}: give each a different host port",
                    mapping.host.port()
                ),
            ));
        }
        let holder = others.iter().filter(|o| o.id != vm.id).find_map(|o| {
            o.publish
                .iter()
                .find(|m| m.clashes_with(mapping))
                .map(|m| (o, m))
        });
        if let Some((other, theirs)) = holder {
            return Err(CapabilityError::new(
                "publish",
                format!(
                    "host port {} is already published by VM {} ({theirs}): pick another host port, or remove it there with `banger vm set {} --unpublish {}`",
                    mapping.host, other.name, other.name, theirs.host
                ),
            ));
        }
    }
    Ok(())
}

impl Capability for PublishCapability {
    fn name(&self) -> &'static str {
        "publish"
    }

    fn reserve(&self, vm: &mut VmRecord, others: &[VmRecord]) -> Result<()> {
        check_clashes(vm, others)
    }

    fn attach(&self, vm: &VmRecord, _spec: &mut LaunchSpec) -> Result<()> {
        self.open_all(vm, &vm.publish)
    }

    fn detach(&self, vm: &VmRecord) -> Result<()> {
        // What is open, not what the record says: a `vm set` may have
        // changed the record since.
        let open = self.ports.open_for(&vm.id);
        self.close_all(vm, &open);
        Ok(())
    }

    fn update(
        &self,
        old: &VmRecord,
        new: &VmRecord,
        _ctx: &VmContext,
        running: bool,
    ) -> Result<()> {
        if !running {
            return Ok(());
        }
        let gone: Vec<PortMapping> = old
            .publish
            .iter()
            .filter(|m| !new.publish.contains(m))
            .copied()
            .collect();
        let added: Vec<PortMapping> = new
            .publish
            .iter()
            .filter(|m| !old.publish.contains(m))
            .copied()
            .collect();
        self.close_all(old, &gone);
        if let Err(e) = self.open_all(new, &added) {
            // Put back what was closed; a port lost meanwhile is logged.
            if let Err(again) = self.open_all(old, &gone) {
                tracing::error!(vm = %old.name, error = %crate::lifecycle::error_text(&again), "could not reopen published ports after a failed change");
            }
            return Err(e);
        }
        Ok(())
    }

    fn reconcile(&self, _vms: &[VmRecord], running: &[&VmRecord]) -> Result<()> {
        let mut failed = Vec::new();
        for vm in running {
            if let Err(e) = self.open_all(vm, &vm.publish) {
                tracing::warn!(vm = %vm.name, error = %crate::lifecycle::error_text(&e), "a published port could not be reopened");
                failed.push(format!("{}: {}", vm.name, crate::lifecycle::error_text(&e)));
            }
        }
        if failed.is_empty() {
            Ok(())
        } else {
            Err(CapabilityError::new("publish", failed.join("; ")))
        }
    }
}
