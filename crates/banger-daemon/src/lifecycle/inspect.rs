//! Finding VMs and images, and what `vm ping` and `vm stats` report.

use super::*;

impl Lifecycle {
    /// Finds a VM by exact name, else by unique ID prefix.
    pub fn resolve(&self, vm_ref: &str) -> Result<VmRecord> {
        let vms = self.store.list_vms()?;
        if vm_ref.is_empty() {
            return Err(LifecycleError::NotFound(String::new()));
        }
        // A full ID is unambiguous. A name that is also the start of
        // another VM's ID is not: saying which was meant beats guessing.
        let mut by_name = None;
        let mut by_prefix = Vec::new();
        for vm in vms {
            if vm.id == vm_ref {
                return Ok(vm);
            }
            if vm.name == vm_ref {
                by_name = Some(vm);
            } else if vm.id.starts_with(vm_ref) {
                by_prefix.push(vm);
            }
        }
        let label = |vm: &VmRecord, how: &str| {
            format!("{} ({how} {})", vm.name, &vm.id[..8.min(vm.id.len())])
        };
        match (by_name, by_prefix.len()) {
            (Some(vm), 0) => Ok(vm),
            (None, 0) => Err(LifecycleError::NotFound(validate::clip(vm_ref))),
            (None, 1) => Ok(by_prefix.remove(0)),
            (named, _) => Err(LifecycleError::Ambiguous {
                vm_ref: validate::clip(vm_ref),
                candidates: named
                    .iter()
                    .map(|vm| label(vm, "its name; ID"))
                    .chain(by_prefix.iter().map(|vm| label(vm, "ID")))
                    .collect(),
            }),
        }
    }

    /// The image and a check that its files are still there.
    pub fn usable_image(&self, name: &str) -> Result<Image> {
        let image = self
            .store
            .get_image(name)?
            .ok_or_else(|| LifecycleError::NoImage(name.to_owned()))?;
        let missing = |what: &'static str, path: PathBuf| LifecycleError::ImageFileMissing {
            image: name.to_owned(),
            what,
            path,
        };
        if !image.rootfs.exists() {
            return Err(missing("rootfs", image.rootfs.clone()));
        }
        match &image.kernel {
            Some(kernel) if !kernel.exists() => return Err(missing("kernel", kernel.clone())),
            None => return Err(missing("kernel", PathBuf::from("(none recorded)"))),
            _ => {}
        }
        if let Some(initrd) = image.initrd.as_ref().filter(|p| !p.exists()) {
            return Err(missing("initrd", initrd.clone()));
        }
        Ok(image)
    }

    /// Asks the guest's ping responder whether it is alive.
    pub fn ping(&self, id: &str) -> Result<PingResult> {
        let record = self.record(id)?;
        let running = Self::running_pid(&record)
            .is_some_and(|pid| procfs::is_running(pid, record.pid_start_time));
        let mut result = PingResult {
            vm: record.name.to_string(),
            state: record.state,
            reachable: false,
            rtt_ms: None,
            guest_uptime_secs: None,
            guest_hostname: None,
            guest_state: None,
            detail: None,
        };
        if !running {
            result.detail = record.exit_reason.clone();
            return Ok(result);
        }
        let Some(path) = record.vsock_path.as_deref() else {
            result.detail = Some("no vsock device recorded for this VM".into());
            return Ok(result);
        };
        match crate::ping::ping(path) {
            Ok((pong, rtt)) => {
                result.reachable = true;
                result.rtt_ms = Some(rtt.as_secs_f64() * 1000.0);
                result.guest_uptime_secs = Some(pong.uptime_secs);
                result.guest_hostname = Some(pong.hostname);
                result.guest_state = pong.state;
            }
            Err(e) => result.detail = Some(error_text(&e)),
        }
        Ok(result)
    }

    pub fn stats(&self, id: &str) -> Result<VmStats> {
        let record = self.record(id)?;
        let dir = self.vm_dir(id);
        let files = banger_host::VmDir::new(&dir);
        let usage = |file: std::path::PathBuf| {
            let (allocated_bytes, apparent_bytes) = procfs::disk_usage(&file).unwrap_or((0, 0));
            DiskUsage {
                allocated_bytes,
                apparent_bytes,
            }
        };
        let pid = Self::running_pid(&record)
            .filter(|pid| procfs::is_running(*pid, record.pid_start_time));
        let stat = pid.and_then(procfs::stat);
        let ticks = procfs::clock_ticks_per_second() as f64;
        Ok(VmStats {
            vm: record.name.clone(),
            id: record.id.clone(),
            state: record.state,
            pid,
            cpu_seconds: stat.map(|s| (s.utime + s.stime) as f64 / ticks),
            rss_bytes: pid.and_then(procfs::rss_bytes),
            uptime_secs: pid
                .and(record.started_at)
                .map(|started| u64::try_from(now() - started).unwrap_or(0)),
            overlay: usage(files.overlay()),
            work_disk: usage(files.work_disk()),
        })
    }
}
