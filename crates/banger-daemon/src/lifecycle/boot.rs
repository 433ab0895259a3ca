//! Booting a VM (create and start share it), and watching its VMM until
//! it exits.

use super::*;

impl Lifecycle {
    pub(super) fn launch_spec(&self, record: &VmRecord, image: &Image) -> LaunchSpec {
        let dir = self.vm_dir(&record.id);
        let files = banger_host::VmDir::new(&dir);
        LaunchSpec {
            vm_id: record.id.to_string(),
            vcpu: record.vcpu,
            memory_mib: record.memory_mib.0,
            kernel: image.kernel.clone().unwrap_or_default(),
            initrd: image.initrd.clone(),
            boot_args: BOOT_ARGS.to_owned(),
            drives: vec![
                Drive {
                    id: "base".into(),
                    path: image.rootfs.clone(),
                    read_only: true,
                },
                Drive {
                    id: "overlay".into(),
                    path: files.overlay(),
                    read_only: false,
                },
                Drive {
                    id: "work".into(),
                    path: files.work_disk(),
                    read_only: false,
                },
                Drive {
                    id: "config".into(),
                    path: files.config_drive(),
                    read_only: true,
                },
            ]
            .into_iter()
            // A builder VM's image under construction (see `image_build`).
            .chain(files.build_target().exists().then(|| Drive {
                id: "build".into(),
                path: files.build_target(),
                read_only: false,
            }))
            .collect(),
            net: None,
            vsock_cid: record.vsock_cid.unwrap_or(0),
            vsock_path: record.vsock_path.clone().unwrap_or_else(|| files.vsock()),
            log_path: files.console_log(),
            restore: files.saved_state().is_dir().then(|| files.saved_state()),
            restore_as_another_vm: files.identity_pending().exists(),
            vm_dir: dir,
        }
    }

    /// What the guest is told at boot: every capability's part.
    pub(super) fn guest_config(&self, record: &VmRecord) -> crate::guest::GuestConfig {
        let mut guest = crate::guest::GuestConfig {
            hostname: record.name.to_string(),
            ..Default::default()
        };
        for c in &self.capabilities {
            c.guest_config(record, &mut guest);
        }
        guest
    }

    /// Attaches every capability, launches the VMM and starts watching it;
    /// the record gets its PID. On failure nothing stays attached.
    pub(super) fn boot(
        self: &Arc<Self>,
        record: &mut VmRecord,
        image: &Image,
        action: &'static str,
        prepared: Option<Prepared>,
    ) -> Result<u32> {
        let backend = self.backend(record.vmm)?;
        // Started before the guest config and the TAP, so they overlap.
        let prepared = match prepared {
            Some(prepared) => prepared,
            None => self.prepare_vmm(record, action)?,
        };
        let ctx = VmContext {
            dir: self.vm_dir(&record.id),
            base_rootfs: image.rootfs.clone(),
        };
        let files = self.guest_config(record).render();
        for c in &self.capabilities {
            c.write_guest(record, &ctx, &files)
                .map_err(|e| LifecycleError::capability(action, &record.name, e))?;
        }
        let launched = self
            .attach_and_launch(record, image, backend.as_ref(), action, prepared)
            .inspect_err(|_| {
                // The config drive exists only while the VM runs.
                let _ = std::fs::remove_file(banger_host::VmDir::new(&ctx.dir).config_drive());
            })?;
        self.crash_point("boot:launched");
        let pid = launched.pid;
        record.pid = Some(pid);
        record.pid_start_time = Some(launched.start_time);
        record.started_at = Some(now());
        record.stopped_at = None;
        record.exit_reason = None;
        self.watch(record, launched);
        Ok(pid)
    }

    /// Every capability's attachment, then the VMM; on failure nothing
    /// stays attached and no process remains.
    pub(super) fn attach_and_launch(
        &self,
        record: &VmRecord,
        image: &Image,
        backend: &dyn Vmm,
        action: &'static str,
        prepared: Prepared,
    ) -> Result<Launched> {
        let mut spec = self.launch_spec(record, image);
        capability::forward(
            self.capabilities.iter().map(AsRef::as_ref),
            |c| c.attach(record, &mut spec),
            |c| self.undo_quietly(c.name(), c.detach(record)),
        )
        .map_err(|e| LifecycleError::capability(action, &record.name, e))?;
        backend.launch_prepared(&spec, prepared).map_err(|e| {
            self.detach_all(record);
            LifecycleError::step(action, &record.name, "starting the VMM", e)
        })
    }

    pub(super) fn prepare_vmm(&self, record: &VmRecord, action: &'static str) -> Result<Prepared> {
        let dir = self.vm_dir(&record.id);
        self.backend(record.vmm)?
            .prepare(
                &dir,
                &record.id,
                &banger_host::VmDir::new(&dir).console_log(),
            )
            .map_err(|e| LifecycleError::step(action, &record.name, "starting the VMM", e))
    }

    /// Records the VMM's exit, whenever it happens: the supervisor (one
    /// thread for every VMM) calls back when its pidfd says it is gone.
    pub(super) fn watch(self: &Arc<Self>, record: &VmRecord, launched: Launched) {
        let Launched {
            pid,
            start_time,
            child,
        } = launched;
        self.exits.register(pid);
        let this = self.clone();
        let id = record.id.to_string();
        let backend = self.backend(record.vmm).ok();
        // What the VMM logs from here on explains its exit (see `explain_exit`).
        let log = banger_host::VmDir::new(self.vm_dir(&record.id)).console_log();
        let log_offset = std::fs::metadata(&log).map_or(0, |m| m.len());
        self.supervisor
            .watch(pid, Some(start_time), child, move |status| {
                let reason = match &backend {
                    Some(backend) => backend.explain_exit(status, &log_since(&log, log_offset)),
                    None => status,
                };
                this.exits.post(pid, reason.clone());
                this.record_exit(&id, pid, &reason);
                this.exits.mark_handled(pid);
            });
    }

    /// A VMM exited on its own (guest powered off, crash, signal from
    /// outside): the VM becomes stopped with the reason and releases what
    /// it held. Exits that an action already recorded are left alone.
    pub(super) fn record_exit(&self, id: &str, pid: u32, reason: &ExitReason) {
        if self.retired.load(std::sync::atomic::Ordering::SeqCst) {
            return;
        }
        self.locks.with(id, || {
            let Ok(Some(mut record)) = self.store.get_vm(id) else {
                return;
            };
            if record.pid != Some(pid) {
                return;
            }
            tracing::info!(vm = %record.name, pid, reason = %reason.describe(), "VMM exited");
            self.remove_runtime_files(&record);
            self.detach_all(&record);
            if let Err(e) = self.record_stopped(&mut record, reason.describe()) {
                tracing::error!(vm = %record.name, error = %e, "recording the VMM's exit");
            }
        });
    }
}

/// What a VMM appended to its log after `offset` (at most the last 64 KiB).
pub(super) fn log_since(log: &std::path::Path, offset: u64) -> String {
    use std::io::{Read, Seek, SeekFrom};
    let Ok(mut file) = std::fs::File::open(log) else {
        return String::new();
    };
    let len = file.metadata().map_or(0, |m| m.len());
    let start = offset.max(len.saturating_sub(64 << 10));
    let mut text = String::new();
    if file.seek(SeekFrom::Start(start)).is_ok() {
        let mut bytes = Vec::new();
        let _ = file.read_to_end(&mut bytes);
        text = String::from_utf8_lossy(&bytes).into_owned();
    }
    text
}
