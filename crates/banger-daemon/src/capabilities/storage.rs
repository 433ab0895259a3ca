//! The VM's own disks: a sparse overlay for `/` and a work disk for `/root`.

use std::sync::Arc;

use banger_host::config_drive::GuestFile;
use banger_host::disk::{Disks, WORK_LABEL};

use crate::capability::{Capability, CapabilityError, Result, VmContext};
use crate::guest::{GuestConfig, GuestMount};
use crate::store::VmRecord;

/// The overlay holds every change to `/` (and Docker's data); it is sparse,
/// so its size costs nothing until the guest writes.
pub const OVERLAY_SIZE: u64 = 64 << 30;

#[derive(Debug)]
pub struct StorageCapability {
    disks: Arc<dyn Disks>,
}

impl StorageCapability {
    pub fn new(disks: Arc<dyn Disks>) -> Self {
        Self { disks }
    }
}

impl Capability for StorageCapability {
    fn name(&self) -> &'static str {
        "storage"
    }

    fn checks(&self, _vm: &VmRecord) -> Vec<banger_proto::check::Check> {
        self.disks.checks()
    }

    fn guest_config(&self, _vm: &VmRecord, config: &mut GuestConfig) {
        config.mounts.push(GuestMount {
            what: format!("LABEL={WORK_LABEL}"),
            at: "/root".into(),
            fs_type: "ext4".into(),
        });
    }

    fn write_guest(&self, _vm: &VmRecord, ctx: &VmContext, files: &[GuestFile]) -> Result<()> {
        self.disks
            .write_config_drive(&banger_host::VmDir::new(&ctx.dir).config_drive(), files)
            .map_err(|e| CapabilityError::caused("storage", "writing the guest configuration", e))
    }

    fn provision(&self, vm: &VmRecord, ctx: &VmContext) -> Result<()> {
        self.disks
            .create_overlay(&banger_host::VmDir::new(&ctx.dir).overlay(), OVERLAY_SIZE)
            .map_err(|e| CapabilityError::caused("storage", "creating the overlay disk", e))?;
        self.disks
            .create_work_disk(
                &banger_host::VmDir::new(&ctx.dir).work_disk(),
                vm.disk_size_bytes.bytes(),
                Some(&ctx.base_rootfs),
            )
            .map_err(|e| CapabilityError::caused("storage", "creating the work disk", e))
    }

    fn deprovision(&self, _vm: &VmRecord, ctx: &VmContext) -> Result<()> {
        let dir = banger_host::VmDir::new(&ctx.dir);
        for file in [dir.overlay(), dir.work_disk()] {
            match std::fs::remove_file(&file) {
                Ok(()) => {}
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => {
                    return Err(CapabilityError::caused(
                        "storage",
                        format!("removing {}", file.display()),
                        e,
                    ));
                }
            }
        }
        Ok(())
    }

    fn update(
        &self,
        old: &VmRecord,
        new: &VmRecord,
        ctx: &VmContext,
        _running: bool,
    ) -> Result<()> {
        if new.disk_size_bytes > old.disk_size_bytes {
            self.disks
                .grow(
                    &banger_host::VmDir::new(&ctx.dir).work_disk(),
                    new.disk_size_bytes.bytes(),
                )
                .map_err(|e| CapabilityError::caused("storage", "growing the work disk", e))?;
        }
        Ok(())
    }
}
