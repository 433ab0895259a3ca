//! Outbound network access for VMs with `--nat`: rules in banger's own
//! iptables chains, derived from the guest IP, live while the VM runs.

use std::net::Ipv4Addr;
use std::sync::Arc;

use banger_host::net::{HostNetwork, NatRule};
use banger_vmm::LaunchSpec;

use crate::capability::{Capability, CapabilityError, Result, VmContext};
use crate::guest::GuestConfig;
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
        let guest_ip = vm.guest_ip.ok_or_else(|| {
            CapabilityError::new("nat", format!("{} has no guest IP recorded", vm.name))
        })?;
        self.net
            .add_nat(&NatRule {
                vm_id: vm.id.to_string(),
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

    fn guest_config(&self, vm: &VmRecord, config: &mut GuestConfig) {
        if vm.nat {
            config.nameservers.extend(upstream_nameservers());
        }
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
            if !wanted.iter().any(|vm| *vm.id == *id) {
                tracing::info!(vm_id = %id, "removing NAT rules no running VM owns");
                self.remove(&id)?;
            }
        }
        Ok(())
    }
}

/// The host's upstream resolvers (not loopback ones, which a guest cannot
/// reach); systemd-resolved's real list when the host uses its stub.
pub fn upstream_nameservers() -> Vec<Ipv4Addr> {
    ["/etc/resolv.conf", "/run/systemd/resolve/resolv.conf"]
        .iter()
        .filter_map(|path| std::fs::read_to_string(path).ok())
        .map(|text| parse_nameservers(&text))
        .find(|list| !list.is_empty())
        .unwrap_or_default()
}

fn parse_nameservers(text: &str) -> Vec<Ipv4Addr> {
    text.lines()
        .filter_map(|l| l.trim().strip_prefix("nameserver"))
        .filter_map(|v| v.trim().parse::<Ipv4Addr>().ok())
        .filter(|ip| !ip.is_loopback())
        .collect()
}

#[cfg(test)]
mod tests {
    #[test]
    fn loopback_resolvers_are_skipped() {
        let text =
            "nameserver 127.0.0.53\nnameserver 192.0.2.1\n# nameserver 10.0.0.1\nnameserver ::1\n";
        assert_eq!(
            super::parse_nameservers(text),
            ["192.0.2.1".parse::<std::net::Ipv4Addr>().unwrap()]
        );
    }
}
