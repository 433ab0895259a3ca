//! `vm rename`: a new name for a VM, running or not. Its ID, disks, IP,
//! TAP and rules stay (they are keyed by ID); `<name>.vm` answers for the
//! new name at once. A running guest's hostname is changed live through
//! its agent when it answers; every boot's config drive has the new name.

use super::*;

impl Lifecycle {
    #[tracing::instrument(skip(self), fields(vm = %id))]
    pub fn rename(self: &Arc<Self>, id: &str, name: &str) -> Result<VmRecord> {
        let name = VmName::parse(name)?;
        // Names are unique: taken and checked under the lock that create's
        // reserve holds while it picks one.
        let _allocation = self.allocation.lock().unwrap_or_else(|p| p.into_inner());
        self.locks.with(id, || {
            let old = self.record(id)?;
            if old.name == name {
                return Ok(old);
            }
            let existing = self.store.list_vms()?;
            if existing.iter().any(|vm| vm.name == name) {
                return Err(LifecycleError::NameTaken(name.to_string()));
            }
            // A name that is another VM's ID prefix would make that VM's
            // short ID ambiguous.
            if let Some(other) = existing
                .iter()
                .find(|vm| vm.id != old.id && vm.id.starts_with(name.as_ref() as &str))
            {
                return Err(LifecycleError::NameIsIdPrefix {
                    name: name.to_string(),
                    other: other.name.to_string(),
                });
            }
            let new = VmRecord {
                name,
                ..old.clone()
            };
            let running = Self::running_pid(&old).is_some();
            let ctx = self.context(&old);
            for c in &self.capabilities {
                c.update(&old, &new, &ctx, running)
                    .map_err(|e| LifecycleError::capability("renaming", &old.name, e))?;
            }
            self.crash_point("rename:applied");
            if let Err(e) = self.store.update_vm(&new) {
                // The table must not answer for a name the store never took.
                for c in &self.capabilities {
                    self.undo_quietly(c.name(), c.update(&new, &old, &ctx, running));
                }
                return Err(e.into());
            }
            tracing::info!(from = %old.name, to = %new.name, "renamed");
            if running && let Some(vsock) = new.vsock_path.as_deref() {
                rename_guest(vsock, &old.name, &new.name);
            }
            Ok(new)
        })
    }
}

/// Sets the running guest's hostname (and its `/etc/hostname` and
/// `/etc/hosts` lines) through the agent. Best effort: an older image or
/// a busy guest gets the name at its next boot instead.
fn rename_guest(vsock: &std::path::Path, old: &str, new: &str) {
    const SCRIPT: &str = r#"old=$1 new=$2
hostname "$new" && echo "$new" > /etc/hostname && sed -i "s/\([[:space:]]\)$old\([[:space:]]\|\$\)/\1$new\2/g" /etc/hosts"#;
    let argv = ["sh", "-c", SCRIPT, "banger-rename", old, new];
    match banger_host::agent::run(vsock, &argv, std::time::Duration::from_secs(3)) {
        Ok((_, status)) if status.shell_code() == 0 => {
            tracing::info!(hostname = new, "guest hostname changed live");
        }
        Ok((_, status)) => {
            tracing::warn!(
                code = status.shell_code(),
                "the guest could not change its hostname"
            );
        }
        Err(e) => tracing::info!(error = %error_text(&e), "hostname left for the next boot"),
    }
}
