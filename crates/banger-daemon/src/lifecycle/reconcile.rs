//! Daemon start: adopting, stopping or removing each VM as the host finds
//! it; the watch for guests paused on an I/O error; and the console logs'
//! cap.

use super::*;
use delete::deleting_dir;

impl Lifecycle {
    /// At daemon start: adopt VMs whose VMM still runs (same PID and start
    /// time, and it answers); mark the rest stopped with the reason; remove
    /// VMs whose creation never finished; then let every capability restore
    /// what running VMs need and remove what no VM owns.
    pub fn reconcile(self: &Arc<Self>) -> Result<ReconcileReport> {
        let mut report = ReconcileReport::default();
        for record in self.store.list_vms()? {
            self.reconcile_vm(record, &mut report)?;
        }
        self.remove_deleted_dirs();
        let vms = self.store.list_vms()?;
        let running: Vec<&VmRecord> = vms
            .iter()
            .filter(|vm| matches!(vm.state, VmState::Running | VmState::Paused))
            .collect();
        for c in &self.capabilities {
            if let Err(e) = c.reconcile(&vms, &running) {
                tracing::error!(capability = c.name(), error = %error_text(&e), "reconcile failed");
                report
                    .failed
                    .push(format!("{}: {}", c.name(), error_text(&e)));
            }
        }
        Ok(report)
    }

    fn reconcile_vm(
        self: &Arc<Self>,
        mut record: VmRecord,
        report: &mut ReconcileReport,
    ) -> Result<()> {
        let files = banger_host::VmDir::new(self.vm_dir(&record.id));
        // Half-written states and snapshots are never used: the writer died.
        let _ = std::fs::remove_dir_all(files.saved_state_partial());
        for discarded in files.discarded_states() {
            let _ = std::fs::remove_dir_all(discarded);
        }
        snapshot::remove_partial_snapshots(&files);
        let pid_file = files.vmm_pid();
        // The stored PID, or, when a daemon died between starting the VMM
        // and storing its PID, the identity written at its spawn.
        let recorded = banger_vmm::process::recorded_process(&pid_file);
        let alive = record
            .pid
            .filter(|pid| procfs::is_running(*pid, record.pid_start_time))
            .or_else(|| {
                let (pid, start_time) = recorded?;
                record.pid = Some(pid);
                record.pid_start_time = start_time;
                Some(pid)
            });
        match record.state {
            VmState::Stopped | VmState::Failed => {
                let dir = self.vm_dir(&record.id);
                if !dir.exists() && deleting_dir(&dir).exists() {
                    self.store.delete_vm(&record.id)?;
                    tracing::warn!(vm = %record.name, "finished a delete that was interrupted");
                    report.removed.push(record.name.to_string());
                }
            }
            VmState::Creating => {
                self.undo_interrupted_create(&record, &pid_file, alive)?;
                report.removed.push(record.name.to_string());
            }
            VmState::Suspended => self.reconcile_suspended(record, report)?,
            VmState::Suspending | VmState::Starting
                if banger_host::VmDir::new(self.vm_dir(&record.id))
                    .saved_state()
                    .is_dir() =>
            {
                // A whole state on disk is the truth: the save finished (or
                // the resume never let the guest run). Any VMM goes.
                self.end_vmm_of(&record, &pid_file, alive);
                record.pid = None;
                record.pid_start_time = None;
                self.transition(&mut record, VmState::Suspended)?;
                tracing::warn!(vm = %record.name, "found suspended after an interrupted suspend or resume");
                report.stopped.push(record.name.to_string());
            }
            VmState::Suspending => {
                // The save did not finish: the guest runs on, if its VMM does.
                let dir = self.vm_dir(&record.id);
                if let (Some(_), Ok(backend)) = (alive, self.backend(record.vmm))
                    && let Err(e) = backend.resume_after_save(&dir)
                {
                    tracing::warn!(vm = %record.name, error = %error_text(&e), "letting the guest of an interrupted suspend run on");
                }
                self.reconcile_live(record, &pid_file, alive, report)?;
            }
            VmState::Running | VmState::Paused | VmState::Starting | VmState::Stopping => {
                self.reconcile_live(record, &pid_file, alive, report)?;
            }
        }
        Ok(())
    }

    /// A suspended VM needs its saved state; without it, it is stopped.
    fn reconcile_suspended(
        &self,
        mut record: VmRecord,
        report: &mut ReconcileReport,
    ) -> Result<()> {
        if !banger_host::VmDir::new(self.vm_dir(&record.id))
            .saved_state()
            .is_dir()
        {
            record.exit_reason = Some("its saved state is gone".into());
            self.transition(&mut record, VmState::Stopped)?;
            tracing::warn!(vm = %record.name, "suspended VM without a saved state; now stopped");
            report.stopped.push(record.name.to_string());
        }
        Ok(())
    }

    /// Ends the VMM of `record`, if one runs, and what it left.
    fn end_vmm_of(&self, record: &VmRecord, pid_file: &std::path::Path, alive: Option<u32>) {
        banger_vmm::process::end_recorded(pid_file);
        if let Some(pid) = alive.filter(|pid| procfs::is_running(*pid, record.pid_start_time)) {
            let _ = send_signal(pid, libc::SIGKILL);
        }
        self.remove_runtime_files(record);
        self.detach_all(record);
    }

    /// Everything a create made before the daemon died goes: its VMM (if
    /// one started) before its disks, then its directory and row.
    fn undo_interrupted_create(
        &self,
        record: &VmRecord,
        pid_file: &std::path::Path,
        alive: Option<u32>,
    ) -> Result<()> {
        self.end_vmm_of(record, pid_file, alive);
        let ctx = self.context(record);
        for c in self.capabilities.iter().rev() {
            self.undo_quietly(c.name(), c.deprovision(record, &ctx));
        }
        let _ = std::fs::remove_dir_all(&ctx.dir);
        self.store.delete_vm(&record.id)?;
        tracing::warn!(vm = %record.name, "removed a VM whose creation was interrupted");
        Ok(())
    }

    /// A VM that should have a VMM: adopted when it answers, else stopped
    /// with the reason.
    fn reconcile_live(
        self: &Arc<Self>,
        mut record: VmRecord,
        pid_file: &std::path::Path,
        alive: Option<u32>,
        report: &mut ReconcileReport,
    ) -> Result<()> {
        let backend = self.backend(record.vmm).ok();
        let reason = match alive {
            Some(pid)
                if backend
                    .as_ref()
                    .is_some_and(|b| b.responds(&self.vm_dir(&record.id), pid)) =>
            {
                self.transition(&mut record, VmState::Running)?;
                let start_time = record.pid_start_time.unwrap_or(0);
                let launched = Launched {
                    pid,
                    start_time,
                    child: None,
                };
                self.watch(&record, launched);
                tracing::info!(vm = %record.name, pid, "adopted running VM");
                report.adopted.push(record.name.to_string());
                if banger_host::VmDir::new(self.vm_dir(&record.id))
                    .identity_pending()
                    .exists()
                {
                    self.finish_identity_later(&record);
                }
                return Ok(());
            }
            Some(pid) => {
                let _ = send_signal(pid, libc::SIGKILL);
                banger_vmm::process::end_recorded(pid_file);
                "VMM did not answer when bangerd started; killed"
            }
            None => "VMM exited while bangerd was not running",
        };
        self.remove_runtime_files(&record);
        self.detach_all(&record);
        self.record_stopped(&mut record, reason.into())?;
        tracing::info!(vm = %record.name, reason, "VM found stopped");
        report.stopped.push(record.name.to_string());
        Ok(())
    }

    /// The daemon's look at its VMs every few seconds, over one listing:
    /// a guest its VMM paused on a disk error, or that runs again, and
    /// each console log's cap.
    pub fn watch_running_vms(&self, console_cap: banger_host::vm_dir::ConsoleCap) {
        let Ok(vms) = self.store.list_vms() else {
            return;
        };
        for vm in &vms {
            if matches!(vm.state, VmState::Running | VmState::Paused) {
                self.follow_io_error_pause(vm);
            }
            // Whatever the state, a VMM that runs may still write.
            if vm.pid.is_some() {
                self.trim_console_log(vm, console_cap);
            }
        }
    }

    /// Marks a running VM whose VMM holds the guest on an I/O error as
    /// paused, saying why, and a VM so paused that runs again as running.
    fn follow_io_error_pause(&self, vm: &VmRecord) {
        let dir = self.vm_dir(&vm.id);
        let Some(paused) = self
            .backend(vm.vmm)
            .ok()
            .and_then(|b| b.io_error_pause(&dir))
        else {
            return;
        };
        let _ = self.locks.with(&vm.id, || -> Result<()> {
            let mut record = self.record(&vm.id)?;
            let next = match (record.state, paused) {
                (VmState::Running, true) => {
                    let free = banger_host::disk::free_bytes(&dir)
                        .map_or_else(|_| "an unknown amount".to_owned(), format_size);
                    record.last_error = Some(format!(
                        "the VMM paused the guest after a disk write failed: the host filesystem holding {} has {free} free; free space there, then `banger vm restart {}`",
                        dir.display(),
                        record.name
                    ));
                    tracing::error!(vm = %record.name, free = %free, "guest paused on an I/O error");
                    VmState::Paused
                }
                // Only a pause the watcher saw come from a disk error
                // (it left the reason): a `vm pause` stays paused.
                (VmState::Paused, false) if record.last_error.is_some() => {
                    record.last_error = None;
                    tracing::info!(vm = %record.name, "guest runs again");
                    VmState::Running
                }
                _ => return Ok(()),
            };
            self.transition(&mut record, next)
        });
    }

    /// Keeps the VM's console log under `cap`
    /// ([`banger_host::vm_dir::trim_console_log`]): a guest printing in a
    /// loop would otherwise fill the disk that holds the VM's state, and
    /// QEMU then pauses the guest on its next disk write.
    fn trim_console_log(&self, vm: &VmRecord, cap: banger_host::vm_dir::ConsoleCap) {
        let dir = banger_host::VmDir::new(self.vm_dir(&vm.id));
        let trimmed = dir.console_log_trimmed();
        match banger_host::vm_dir::trim_console_log(&dir.console_log(), &trimmed, cap) {
            Ok(Some(dropped)) => tracing::warn!(
                vm = %vm.name,
                dropped,
                kept = %trimmed.display(),
                "console log passed its cap; its middle was dropped"
            ),
            Ok(None) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => {
                tracing::warn!(vm = %vm.name, error = %e, "could not trim the console log")
            }
        }
    }
}

#[derive(Debug, Default, PartialEq, Eq)]
pub struct ReconcileReport {
    pub adopted: Vec<String>,
    pub stopped: Vec<String>,
    pub removed: Vec<String>,
    /// Capabilities that could not reconcile, with why.
    pub failed: Vec<String>,
}
