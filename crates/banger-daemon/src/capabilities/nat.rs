//! Outbound network access for VMs with `--nat`: rules in banger's own
//! iptables chains, derived from the guest IP, live while the VM runs.

use std::net::Ipv4Addr;
use std::sync::Arc;

use banger_host::net::{HostNetwork, NatRule};
use banger_vmm::LaunchSpec;

use crate::capability::{Capability, CapabilityError, Result, VmContext};
use crate::store::VmRecord;

#[derive(Debug)]
pub struct NatCapability {
    net: Arc<dyn HostNetwork>,
}

impl NatCapability {
    pub fn new(net: Arc<dyn HostNetwork>) -> Self {
        Self { net }
    }

    fn add(&self, vm: &VmRecord) -> Result<()> {
        let guest_ip: Ipv4Addr = vm
            .guest_ip
            .as_deref()
            .and_then(|ip| ip.parse().ok())
            .ok_or_else(|| {
                CapabilityError::new("nat", format!("{} has no guest IP recorded", vm.name))
            })?;
        self.net
            .add_nat(&NatRule {
                vm_id: vm.id.clone(),
                guest_ip,
            })
            .map_err(|e| CapabilityError::caused("nat", "adding NAT rules", e))
    }

    fn remove(&self, vm_id: &str) -> Result<()> {
        self.net
            .remove_nat(vm_id)
            .map_err(|e| CapabilityError::caused("nat", "removing NAT rules", e))
    }
}

impl Capability for NatCapability {
    fn name(&self) -> &'static str {
        "nat"
    }

    fn checks(&self, vm: &VmRecord) -> Vec<banger_proto::check::Check> {
        if vm.nat {
            self.net.nat_checks()
        } else {
            Vec::new()
        }
    }

    fn attach(&self, vm: &VmRecord, _spec: &mut LaunchSpec) -> Result<()> {
        if vm.nat { self.add(vm) } else { Ok(()) }
    }

    fn detach(&self, vm: &VmRecord) -> Result<()> {
        self.remove(&vm.id)
    }

    fn update(
        &self,
        old: &VmRecord,
        new: &VmRecord,
        _ctx: &VmContext,
        running: bool,
    ) -> Result<()> {
        match (running, old.nat, new.nat) {
            (true, false, true) => self.add(new),
            (true, true, false) => self.remove(&new.id),
            _ => Ok(()),
        }
    }

    fn reconcile(&self, _vms: &[VmRecord], running: &[&VmRecord]) -> Result<()> {
        let wanted: Vec<&VmRecord> = running.iter().copied().filter(|vm| vm.nat).collect();
        for vm in &wanted {
            self.add(vm)?;
        }
        let present = self
            .net
            .nat_vms()
            .map_err(|e| CapabilityError::caused("nat", "listing NAT rules", e))?;
        for id in present {
            if !wanted.iter().any(|vm| vm.id == id) {
                tracing::info!(vm_id = %id, "removing NAT rules no running VM owns");
                self.remove(&id)?;
            }
        }
        Ok(())
    }
}
