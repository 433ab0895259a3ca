//! `vm create`: validate, reserve a name and identifiers, make the disks,
//! boot; on failure every step is undone.

use super::*;

impl Lifecycle {
    #[tracing::instrument(skip_all, fields(name = params.name.as_deref().unwrap_or("(generated)")))]
    pub fn create(self: &Arc<Self>, params: &CreateVmParams) -> Result<VmRecord> {
        self.create_with(params, |_| Ok(()))
    }

    /// `create`, with `before_boot` run on the new VM's directory once its
    /// disks exist and before its first boot (an image build puts the image
    /// it builds there). A failure there rolls the create back.
    pub fn create_with(
        self: &Arc<Self>,
        params: &CreateVmParams,
        before_boot: impl FnOnce(&std::path::Path) -> Result<()>,
    ) -> Result<VmRecord> {
        let name = params.name.as_deref().map(VmName::parse).transpose()?;
        let vcpu = params.vcpu.unwrap_or(DEFAULT_VCPU);
        validate::vcpu(vcpu)?;
        let memory_mib = params.memory_mib.unwrap_or(DEFAULT_MEMORY_MIB);
        validate::memory_mib(memory_mib)?;
        let disk_size = match &params.disk_size {
            Some(text) => validate::disk_size(text)?,
            None => DEFAULT_DISK_SIZE,
        };
        let image_name = params
            .image
            .clone()
            .unwrap_or_else(|| DEFAULT_IMAGE.to_owned());
        let image = self.usable_image(&image_name)?;

        // The ID and name are placeholders until `reserve` picks them.
        let template = VmRecord {
            id: VmId::new(String::new()),
            name: VmName::parse("new-vm").expect("a valid name"),
            state: VmState::Creating,
            image: image_name.clone(),
            vmm: params.vmm.unwrap_or_else(|| self.backends[0].kind()),
            vcpu,
            memory_mib: MemoryMib(memory_mib),
            disk_size_bytes: DiskSize(disk_size),
            nat: params.nat,
            guest_ip: None,
            tap: None,
            vsock_cid: None,
            vsock_path: None,
            pid: None,
            pid_start_time: None,
            created_at: now(),
            started_at: None,
            stopped_at: None,
            exit_reason: None,
            last_error: None,
            publish: params.publish.clone(),
        };
        let shown = name.as_ref().map_or("the new VM", |n| n.as_ref());
        self.preflight("create", shown, &template)?;
        self.check_free_space("creating a VM")?;
        let mut record = self.reserve(name, template)?;
        let id = record.id.clone();
        let name = record.name.clone();
        self.locks.with(&id, || {
            let mut undo = Undo::default();
            match self.build_and_boot(&mut record, &image, &mut undo, before_boot) {
                Ok(()) => {
                    tracing::info!(vm = %name, id = %id, pid = ?record.pid, ip = ?record.guest_ip, "VM created");
                    Ok(record)
                }
                Err(err) => {
                    undo.run();
                    if let Err(e) = self.store.delete_vm(&id) {
                        tracing::error!(vm = %name, error = %e, "removing the row of a failed create");
                    }
                    tracing::warn!(vm = %name, error = %error_text(&err), "create failed and was rolled back");
                    Err(err)
                }
            }
        })
    }

    /// A name the generator would give a VM created now. Another create
    /// may take it first; that create's reserve then picks another.
    pub fn suggest_name(&self) -> Result<VmName> {
        let existing = self.store.list_vms()?;
        let taken = |n: &str| existing.iter().any(|vm| vm.name == n);
        Ok(VmName::parse(&namegen::generate(
            self.namegen_path.as_deref(),
            &taken,
        )?)?)
    }

    /// Picks a name (given or generated) and every capability's identifiers,
    /// and inserts the row, atomically.
    pub(super) fn reserve(&self, name: Option<VmName>, template: VmRecord) -> Result<VmRecord> {
        let _allocation = self.allocation.lock().unwrap_or_else(|p| p.into_inner());
        // The image may have been deleted since the caller looked it up.
        if self.store.get_image(&template.image)?.is_none() {
            return Err(LifecycleError::NoImage(template.image));
        }
        let existing = self.store.list_vms()?;
        let taken = |n: &str| existing.iter().any(|vm| vm.name == n);
        let name = match name {
            Some(name) if taken(&name) => return Err(LifecycleError::NameTaken(name.to_string())),
            Some(name) => name,
            None => VmName::parse(&namegen::generate(self.namegen_path.as_deref(), &taken)?)?,
        };
        let id = loop {
            let id = new_id();
            if !existing.iter().any(|vm| vm.id.starts_with(id.short())) {
                break id;
            }
        };
        let mut record = VmRecord {
            id,
            name,
            ..template
        };
        for capability in &self.capabilities {
            capability
                .reserve(&mut record, &existing)
                .map_err(|e| LifecycleError::Reserve(e.message, e.source))?;
        }
        self.store.insert_vm(&record)?;
        self.crash_point("create:reserved");
        Ok(record)
    }

    pub(super) fn build_and_boot(
        self: &Arc<Self>,
        record: &mut VmRecord,
        image: &Image,
        undo: &mut Undo,
        before_boot: impl FnOnce(&std::path::Path) -> Result<()>,
    ) -> Result<()> {
        let name = record.name.clone();
        let dir = self.vm_dir(&record.id);
        std::fs::create_dir_all(&dir)
            .map_err(|e| LifecycleError::step("creating", &name, "creating the VM directory", e))?;
        let removal = dir.clone();
        undo.push("remove the VM directory", move || {
            if let Err(e) = std::fs::remove_dir_all(&removal) {
                tracing::error!(dir = %removal.display(), error = %e, "rollback could not remove the VM directory");
            }
        });
        // The VMM starts up while the disks are made; if they fail, dropping
        // `prepared` kills it before the directory goes.
        let prepared = self.prepare_vmm(record, "creating")?;
        let ctx = VmContext {
            dir,
            base_rootfs: image.rootfs.clone(),
        };
        let provisioned = record.clone();
        capability::forward(
            self.capabilities.iter().map(AsRef::as_ref),
            |c| c.provision(&provisioned, &ctx),
            |c| self.undo_quietly(c.name(), c.deprovision(&provisioned, &ctx)),
        )
        .map_err(|e| LifecycleError::capability("creating", &name, e))?;
        self.crash_point("create:provisioned");
        let this = self.clone();
        let (deprovision, ctx_copy) = (record.clone(), ctx.clone());
        undo.push("deprovision", move || {
            for c in this.capabilities.iter().rev() {
                this.undo_quietly(c.name(), c.deprovision(&deprovision, &ctx_copy));
            }
        });
        before_boot(&ctx.dir)?;
        let pid = self.boot(record, image, "creating", Some(prepared))?;
        let this = self.clone();
        let booted = record.clone();
        undo.push("stop the VMM", move || {
            this.force_stop(pid);
            this.detach_all(&booted);
        });
        self.transition(record, VmState::Running)
            .map_err(|e| LifecycleError::step("creating", &name, "recording the running VM", e))?;
        Ok(())
    }

    /// The backend's and every capability's checks; any failure stops the
    /// action before it changes anything, with doctor's messages.
    /// `shown` names the VM in the error (a VM being created has no name yet).
    pub(super) fn preflight(
        &self,
        action: &'static str,
        shown: &str,
        record: &VmRecord,
    ) -> Result<()> {
        let mut checks = self.backend(record.vmm)?.checks();
        for c in &self.capabilities {
            checks.extend(c.checks(record));
        }
        let failures: Vec<String> = checks
            .iter()
            .filter(|c| c.status == banger_proto::check::CheckStatus::Fail)
            .map(banger_proto::check::Check::message)
            .collect();
        if failures.is_empty() {
            Ok(())
        } else {
            Err(LifecycleError::NotReady {
                action,
                name: shown.to_owned(),
                failures,
            })
        }
    }
}

pub(super) fn new_id() -> VmId {
    use rand::Rng;
    let bytes: [u8; 16] = rand::rng().random();
    VmId::new(bytes.iter().map(|b| format!("{b:02x}")).collect::<String>())
}
