//! A vsock device per VM: a unique guest CID and a Unix socket in the VM's
//! directory, through which the host reaches the guest's ping responder.

use std::collections::HashSet;
use std::path::PathBuf;

use crate::capability::{Capability, CapabilityError, Result};
use crate::guest::{GuestConfig, PINGD_UNIT};
use crate::store::VmRecord;

/// 0 to 2 are reserved (hypervisor, local, host).
pub const FIRST_CID: u32 = 3;

#[derive(Debug)]
pub struct VsockCapability {
    vms_dir: PathBuf,
}

impl VsockCapability {
    pub fn new(vms_dir: PathBuf) -> Self {
        Self { vms_dir }
    }
}

impl Capability for VsockCapability {
    fn name(&self) -> &'static str {
        "vsock"
    }

    fn guest_config(&self, _vm: &VmRecord, config: &mut GuestConfig) {
        config.enable(
            PINGD_UNIT,
            "multi-user.target",
            &format!("/etc/systemd/system/{PINGD_UNIT}"),
        );
    }

    fn reserve(&self, vm: &mut VmRecord, others: &[VmRecord]) -> Result<()> {
        let used: HashSet<u32> = others.iter().filter_map(|o| o.vsock_cid).collect();
        let cid = (FIRST_CID..u32::MAX)
            .find(|c| !used.contains(c))
            .ok_or_else(|| CapabilityError::new("vsock", "no free guest CID is left"))?;
        vm.vsock_cid = Some(cid);
        vm.vsock_path = Some(banger_host::VmDir::new(self.vms_dir.join(&vm.id)).vsock());
        Ok(())
    }
}
