//! `vm delete`: the directory moves aside before the row goes, so a
//! daemon killed halfway leaves the whole VM or nothing of it.

use super::*;

impl Lifecycle {
    #[tracing::instrument(skip(self), fields(vm = %id))]
    pub fn delete(self: &Arc<Self>, id: &str) -> Result<VmRecord> {
        let record = self.locks.with(id, || {
            let mut record = self.record(id)?;
            if let Some(pid) = Self::running_pid(&record) {
                let reason = self.shut_down(&record, pid);
                self.record_stopped(&mut record, reason)?;
            }
            // The directory leaves its place in one rename before the row
            // goes: a daemon killed at any point leaves either the whole VM
            // or a `.deleting` directory that the next one removes.
            let mut ctx = self.context(&record);
            let doomed = deleting_dir(&ctx.dir);
            match std::fs::rename(&ctx.dir, &doomed) {
                Ok(()) => ctx.dir = doomed,
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => {
                    return Err(LifecycleError::step(
                        "deleting",
                        &record.name,
                        "moving the VM directory aside",
                        e,
                    ));
                }
            }
            self.crash_point("delete:moved");
            self.store.delete_vm(id)?;
            self.crash_point("delete:forgotten");
            for c in self.capabilities.iter().rev() {
                self.undo_quietly(c.name(), c.deprovision(&record, &ctx));
            }
            if let Err(e) = std::fs::remove_dir_all(&ctx.dir)
                && e.kind() != std::io::ErrorKind::NotFound
            {
                tracing::warn!(vm = %record.name, dir = %ctx.dir.display(), error = %e, "the deleted VM's directory stays; the next daemon start removes it");
            }
            tracing::info!(vm = %record.name, "VM deleted");
            Ok(record)
        })?;
        self.locks.forget(id);
        Ok(record)
    }

    /// The `.deleting` directories an interrupted VM or image delete left,
    /// and the staging directories of interrupted branches.
    pub(super) fn remove_deleted_dirs(&self) {
        for parent in [&self.paths.vms_dir, &self.paths.images_dir] {
            let Ok(entries) = std::fs::read_dir(parent) else {
                continue;
            };
            for entry in entries.flatten() {
                let name = entry.file_name().to_string_lossy().into_owned();
                if name.ends_with(".deleting")
                    || name.ends_with(super::branch::BRANCH_STAGING_SUFFIX)
                {
                    match std::fs::remove_dir_all(entry.path()) {
                        Ok(()) => {
                            tracing::warn!(dir = %entry.path().display(), "removed what a delete left")
                        }
                        Err(e) => {
                            tracing::error!(dir = %entry.path().display(), error = %e, "removing what a delete left")
                        }
                    }
                }
            }
        }
    }
}

/// Where a VM's or an image's directory goes while it is deleted.
pub(super) fn deleting_dir(dir: &std::path::Path) -> PathBuf {
    let mut name = dir.file_name().unwrap_or_default().to_os_string();
    name.push(".deleting");
    dir.with_file_name(name)
}
