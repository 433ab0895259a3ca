//! A guest IPv4 address from the pool, kept for the VM's life, and a TAP on
//! banger's bridge while it runs.

use std::net::Ipv4Addr;
use std::sync::Arc;

use banger_host::net::{HostNetwork, Pool, check_pool_against_routes, guest_mac, tap_name};
use banger_vmm::{LaunchSpec, NetSpec};

use crate::capability::{Capability, CapabilityError, Result};
use crate::guest::{GuestConfig, GuestNetwork};
use crate::store::VmRecord;

#[derive(Debug)]
pub struct NetworkCapability {
    net: Arc<dyn HostNetwork>,
    pool: Pool,
    /// Owner of the TAPs, so the VMM opens them without root.
    uid: u32,
}

impl NetworkCapability {
    pub fn new(net: Arc<dyn HostNetwork>, pool: Pool, uid: u32) -> Self {
        Self { net, pool, uid }
    }

    fn fail(message: &str, e: impl std::error::Error + Send + Sync + 'static) -> CapabilityError {
        CapabilityError::caused("network", message.to_owned(), e)
    }
}

impl Capability for NetworkCapability {
    fn name(&self) -> &'static str {
        "network"
    }

    fn guest_config(&self, vm: &VmRecord, config: &mut GuestConfig) {
        if let Some(address) = vm.guest_ip {
            config.network = Some(GuestNetwork {
                address,
                prefix: self.pool.prefix,
                gateway: self.pool.gateway(),
            });
            // bangerd answers .vm on the gateway; other names fall through to the next server.
            config.nameservers.insert(0, self.pool.gateway());
            config.enable(
                "systemd-networkd.service",
                "multi-user.target",
                "/lib/systemd/system/systemd-networkd.service",
            );
        }
    }

    fn checks(&self, _vm: &VmRecord) -> Vec<banger_proto::check::Check> {
        self.net.checks()
    }

    fn reserve(&self, vm: &mut VmRecord, others: &[VmRecord]) -> Result<()> {
        let used: Vec<Ipv4Addr> = others.iter().filter_map(|o| o.guest_ip).collect();
        let ip = self
            .pool
            .allocate(&used)
            .map_err(|e| Self::fail("leasing a guest IP", e))?;
        vm.guest_ip = Some(ip);
        vm.tap = Some(tap_name(&vm.id));
        Ok(())
    }

    fn attach(&self, vm: &VmRecord, spec: &mut LaunchSpec) -> Result<()> {
        let (Some(ip), Some(tap)) = (vm.guest_ip, vm.tap.as_deref()) else {
            return Err(CapabilityError::new(
                "network",
                format!("{} has no guest IP or TAP recorded", vm.name),
            ));
        };
        if !self.pool.contains(ip) {
            // The pool changed since the lease (config.toml, or the default
            // moved off a new host route): the guest would get no route.
            return Err(CapabilityError::new(
                "network",
                format!(
                    "{} has the guest IP {ip}, outside this daemon's pool {}: set guest_ip_pool back to the pool that holds {ip}, or delete the VM",
                    vm.name, self.pool
                ),
            ));
        }
        let routes = self
            .net
            .host_routes()
            .map_err(|e| Self::fail("reading host routes", e))?;
        check_pool_against_routes(&self.pool, &routes)
            .map_err(|e| Self::fail("checking the guest IP pool", e))?;
        self.net
            .ensure_bridge(&self.pool)
            .map_err(|e| Self::fail("setting up the bridge", e))?;
        // A guest resumed from another VM's memory would speak with that
        // VM's address and MAC: its TAP stays off the bridge until `connect`.
        if spec.restore_as_another_vm {
            self.net.hold_tap(tap, self.uid)
        } else {
            self.net.create_tap(tap, self.uid)
        }
        .map_err(|e| Self::fail("creating the TAP device", e))?;
        spec.net = Some(NetSpec {
            tap: tap.to_owned(),
            mac: guest_mac(ip),
        });
        Ok(())
    }

    fn connect(&self, vm: &VmRecord) -> Result<()> {
        match vm.tap.as_deref() {
            Some(tap) => self
                .net
                .create_tap(tap, self.uid)
                .map_err(|e| Self::fail("connecting the TAP device to the bridge", e)),
            None => Ok(()),
        }
    }

    fn detach(&self, vm: &VmRecord) -> Result<()> {
        match vm.tap.as_deref() {
            Some(tap) => self
                .net
                .delete_tap(tap)
                .map_err(|e| Self::fail("removing the TAP device", e)),
            None => Ok(()),
        }
    }

    /// Removes TAPs of this daemon's VMs that are not running. TAPs it has
    /// no record of may be another daemon's, and are left alone; every TAP
    /// this daemon makes is recorded on its VM before it exists.
    fn reconcile(&self, vms: &[VmRecord], running: &[&VmRecord]) -> Result<()> {
        let present = self
            .net
            .list_taps()
            .map_err(|e| Self::fail("listing TAP devices", e))?;
        for tap in vms.iter().filter_map(|vm| vm.tap.as_deref()) {
            let in_use = running.iter().any(|vm| vm.tap.as_deref() == Some(tap));
            if !in_use && present.iter().any(|p| p == tap) {
                tracing::info!(tap = %tap, "removing the TAP of a VM that is not running");
                self.net
                    .delete_tap(tap)
                    .map_err(|e| Self::fail("removing an orphan TAP", e))?;
            }
        }
        Ok(())
    }
}
