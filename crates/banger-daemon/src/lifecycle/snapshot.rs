//! `vm snapshot create|list|restore|delete`: a VM's disks, and its memory
//! when it runs or is suspended, kept under a name in the VM's directory
//! (`snapshots/NAME/`), and put back on demand.
//!
//! A snapshot is written under `NAME.partial` and renamed when whole; the
//! directory is the only record of it (no row in the store), so a crash
//! leaves a snapshot whole or absent.

use banger_proto::Snapshot;

use super::files::{
    commit_dir, copy_disks, copy_tree, dir_bytes, disks_allocated, disks_changed_since,
    move_disks_in,
};
use super::suspend::CAPTURED_STATE;
use super::*;

/// The snapshot's description, beside its files.
const META_FILE: &str = "snapshot.json";
/// Where a restore stages its copies before anything of the VM changes.
const RESTORE_STAGING: &str = "restoring.partial";
/// Ends the name of a snapshot still being written.
const PARTIAL: &str = ".partial";

/// What an interrupted snapshot or restore left in a VM's directory.
pub(super) fn remove_partial_snapshots(files: &banger_host::VmDir) {
    let _ = std::fs::remove_dir_all(files.path().join(RESTORE_STAGING));
    for entry in std::fs::read_dir(files.snapshots())
        .into_iter()
        .flatten()
        .flatten()
    {
        if entry.file_name().to_string_lossy().ends_with(PARTIAL) {
            tracing::warn!(dir = %entry.path().display(), "removed an interrupted snapshot");
            let _ = std::fs::remove_dir_all(entry.path());
        }
    }
}

impl Lifecycle {
    #[tracing::instrument(skip(self), fields(vm = %id))]
    pub fn snapshot_create(self: &Arc<Self>, id: &str, name: Option<&str>) -> Result<Snapshot> {
        if let Some(name) = name {
            validate::snapshot_name(name)?;
        }
        self.locks.with(id, || {
            let mut record = self.record(id)?;
            let dir = self.vm_dir(&record.id);
            let files = banger_host::VmDir::new(&dir);
            let name = match name {
                Some(name) => name.to_owned(),
                None => default_snapshot_name(&files.snapshots()),
            };
            let done = files.snapshots().join(&name);
            if done.exists() {
                return Err(LifecycleError::SnapshotExists {
                    vm: record.name.to_string(),
                    snapshot: name,
                });
            }
            let running = Self::runs_or_rests(&record)?;
            if record.state == VmState::Paused && record.last_error.is_some() {
                return Err(LifecycleError::PausedOnError {
                    name: record.name.to_string(),
                });
            }
            let memory = if running { record.memory_mib.0 << 20 } else { 0 };
            let needed = disks_allocated(&files) + memory;
            self.check_free_space_for("taking a snapshot", needed)?;
            let partial = files.snapshots().join(format!("{name}{PARTIAL}"));
            let _ = std::fs::remove_dir_all(&partial);
            std::fs::create_dir_all(&partial).map_err(|e| {
                LifecycleError::step("snapshotting", &record.name, "making its directory", e)
            })?;
            let started = std::time::Instant::now();
            let written = if running {
                self.capture_running(&mut record, &partial, "snapshotting", "snapshot:saved")
            } else {
                copy_disks(&files, &partial)
                    .and_then(|()| {
                        if record.state == VmState::Suspended {
                            copy_tree(&files.saved_state(), &partial.join(CAPTURED_STATE))
                        } else {
                            Ok(())
                        }
                    })
                    .map_err(|e| {
                        LifecycleError::step("snapshotting", &record.name, "copying the disks", e)
                    })
            };
            let snapshot = Snapshot {
                name: name.clone(),
                vm: record.name.clone(),
                created_at: now(),
                memory: partial.join(CAPTURED_STATE).is_dir(),
                allocated_bytes: 0,
                vcpu: record.vcpu,
                memory_mib: record.memory_mib.0,
                disk_size_bytes: record.disk_size_bytes.bytes(),
            };
            let committed = written.and_then(|()| {
                let meta = serde_json::to_vec_pretty(&snapshot).map_err(std::io::Error::other);
                meta.and_then(|meta| std::fs::write(partial.join(META_FILE), meta))
                    .and_then(|()| commit_dir(&partial, &done))
                    .map_err(|e| {
                        LifecycleError::step("snapshotting", &record.name, "writing it", e)
                    })
            });
            if let Err(err) = committed {
                let _ = std::fs::remove_dir_all(&partial);
                return Err(err);
            }
            let snapshot = read_snapshot(&done).unwrap_or(snapshot);
            tracing::info!(vm = %record.name, snapshot = %name, memory = snapshot.memory, secs = started.elapsed().as_secs_f64(), bytes = snapshot.allocated_bytes, "snapshot taken");
            Ok(snapshot)
        })
    }

    pub fn snapshot_list(&self, id: &str) -> Result<Vec<Snapshot>> {
        let record = self.record(id)?;
        let mut list: Vec<Snapshot> =
            std::fs::read_dir(banger_host::VmDir::new(self.vm_dir(&record.id)).snapshots())
                .into_iter()
                .flatten()
                .filter_map(|entry| entry.ok())
                .filter(|entry| !entry.file_name().to_string_lossy().ends_with(PARTIAL))
                .filter_map(|entry| read_snapshot(&entry.path()))
                .collect();
        list.sort_by(|a, b| (a.created_at, &a.name).cmp(&(b.created_at, &b.name)));
        Ok(list)
    }

    #[tracing::instrument(skip(self), fields(vm = %id))]
    pub fn snapshot_delete(&self, id: &str, name: &str) -> Result<Snapshot> {
        self.locks.with(id, || {
            let record = self.record(id)?;
            let (snapshot, dir) = self.find_snapshot(&record, name)?;
            std::fs::remove_dir_all(&dir).map_err(|e| {
                LifecycleError::step("deleting a snapshot of", &record.name, "removing it", e)
            })?;
            tracing::info!(vm = %record.name, snapshot = %name, "snapshot deleted");
            Ok(snapshot)
        })
    }

    /// Puts the VM's disks (and memory, when the snapshot has it) back as
    /// they were. Copies are staged first, so a failure before the swap
    /// changes nothing; a VM that ran runs again, resumed from the
    /// snapshot's memory or booted from its disks.
    #[tracing::instrument(skip(self), fields(vm = %id))]
    pub fn snapshot_restore(
        self: &Arc<Self>,
        id: &str,
        name: &str,
        force: bool,
    ) -> Result<VmRecord> {
        self.locks.with(id, || {
            let mut record = self.record(id)?;
            let (snapshot, source) = self.find_snapshot(&record, name)?;
            let dir = self.vm_dir(&record.id);
            let files = banger_host::VmDir::new(&dir);
            let was_running = Self::runs_or_rests(&record)?;
            if !force {
                let loses = if was_running || record.state == VmState::Suspended {
                    Some("memory and every disk change since")
                } else if disks_changed_since(&files, snapshot.created_at) {
                    Some("the disk changes made since")
                } else {
                    None
                };
                if let Some(what) = loses {
                    return Err(LifecycleError::RestoreLoses {
                        vm: record.name.to_string(),
                        snapshot: snapshot.name,
                        what,
                    });
                }
            }
            self.check_free_space_for("restoring a snapshot", dir_bytes(&source))?;
            let staging = dir.join(RESTORE_STAGING);
            let _ = std::fs::remove_dir_all(&staging);
            if let Err(e) = copy_tree(&source, &staging) {
                let _ = std::fs::remove_dir_all(&staging);
                return Err(LifecycleError::step(
                    "restoring a snapshot of",
                    &record.name,
                    "copying it",
                    e,
                ));
            }
            // From here the VM's current state goes.
            let reason = format!("restored snapshot {}", snapshot.name);
            if let Some(pid) = Self::running_pid(&record) {
                // The row lets go of the PID first, so the exit is not taken for a crash.
                self.record_stopped(&mut record, reason.clone())?;
                self.force_stop(pid);
                self.remove_runtime_files(&record);
                self.detach_all(&record);
            }
            let _ = std::fs::remove_dir_all(files.saved_state());
            let swapped = (|| {
                move_disks_in(&staging, &files)?;
                if staging.join(CAPTURED_STATE).is_dir() {
                    std::fs::rename(staging.join(CAPTURED_STATE), files.saved_state())?;
                }
                std::fs::remove_dir_all(&staging)
            })();
            record.vcpu = snapshot.vcpu;
            record.memory_mib = MemoryMib(snapshot.memory_mib);
            record.disk_size_bytes = DiskSize(snapshot.disk_size_bytes);
            record.last_error = None;
            let resumable = files.saved_state().is_dir();
            if resumable {
                record.pid_start_time = None;
                record.exit_reason = Some(reason);
                self.transition(&mut record, VmState::Suspended)?;
            } else {
                self.record_stopped(&mut record, reason)?;
            }
            if let Err(e) = swapped {
                return Err(LifecycleError::step(
                    "restoring a snapshot of",
                    &record.name,
                    "putting its disks in place",
                    e,
                ));
            }
            tracing::info!(vm = %record.name, snapshot = %snapshot.name, memory = resumable, "snapshot restored");
            if was_running {
                return self.start_locked(id);
            }
            Ok(record)
        })
    }

    fn find_snapshot(&self, record: &VmRecord, name: &str) -> Result<(Snapshot, PathBuf)> {
        let dir = banger_host::VmDir::new(self.vm_dir(&record.id))
            .snapshots()
            .join(name);
        match validate::snapshot_name(name)
            .ok()
            .and_then(|()| read_snapshot(&dir))
        {
            Some(snapshot) => Ok((snapshot, dir)),
            None => Err(LifecycleError::NoSnapshot {
                vm: record.name.to_string(),
                snapshot: validate::clip(name),
            }),
        }
    }
}

/// The snapshot in `dir`, when it is a whole one.
fn read_snapshot(dir: &std::path::Path) -> Option<Snapshot> {
    let meta = std::fs::read(dir.join(META_FILE)).ok()?;
    let mut snapshot: Snapshot = serde_json::from_slice(&meta).ok()?;
    snapshot.allocated_bytes = dir_bytes(dir);
    Some(snapshot)
}

/// `snapshot1`, `snapshot2`, ...: the first number no snapshot of the
/// VM has (Multipass names them so).
fn default_snapshot_name(snapshots: &std::path::Path) -> String {
    (1u32..)
        .map(|n| format!("snapshot{n}"))
        .find(|name| !snapshots.join(name).exists())
        .expect("a free number")
}
