//! `image delete`: forget a built image and remove its files, never while
//! a VM uses it. The default image is registered from the bundle (or
//! `default_rootfs`) at every daemon start, so it is not deletable.

use super::*;

impl Lifecycle {
    #[tracing::instrument(skip(self))]
    pub fn delete_image(&self, name: &str) -> Result<Image> {
        // Under the allocation lock, as `reserve` checks the image and
        // inserts a VM's row: no VM can start using it halfway through.
        let _allocation = self.allocation.lock().unwrap_or_else(|p| p.into_inner());
        let image = self
            .store
            .get_image(name)?
            .ok_or_else(|| LifecycleError::NoImage(name.to_owned()))?;
        if name == DEFAULT_IMAGE || !image.managed {
            return Err(LifecycleError::ImageNotDeletable(name.to_owned()));
        }
        let users = self.image_users(name)?;
        if !users.is_empty() {
            return Err(LifecycleError::ImageInUse {
                image: name.to_owned(),
                vms: users.iter().map(ToString::to_string).collect(),
            });
        }
        // As for a VM: the directory leaves in one rename before the row
        // goes, and the next daemon start removes a `.deleting` left over.
        let dir = self.paths.images_dir.join(name);
        let doomed = super::delete::deleting_dir(&dir);
        match std::fs::rename(&dir, &doomed) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => {
                return Err(LifecycleError::step(
                    "deleting",
                    name,
                    "moving the image directory aside",
                    e,
                ));
            }
        }
        self.store.delete_image(name)?;
        if let Err(e) = std::fs::remove_dir_all(&doomed)
            && e.kind() != std::io::ErrorKind::NotFound
        {
            tracing::warn!(image = name, dir = %doomed.display(), error = %e, "the deleted image's directory stays; the next daemon start removes it");
        }
        tracing::info!(image = name, "image deleted");
        Ok(image)
    }

    /// Registers a built image whose files are staged in `staged` (a
    /// directory holding its rootfs.ext4) under its name. An image of that
    /// name that VMs use stays theirs: it is renamed `NAME-<its build
    /// time>`, files and row, and they follow it in the same transaction,
    /// so only VMs created afterwards get the new build. Under the
    /// allocation lock: no VM starts using the old image halfway through.
    pub fn register_built_image(&self, image: Image, staged: &std::path::Path) -> Result<Image> {
        let _allocation = self.allocation.lock().unwrap_or_else(|p| p.into_inner());
        if image.name == DEFAULT_IMAGE {
            return Err(LifecycleError::ImageNotDeletable(image.name.clone()));
        }
        let dir = self.paths.images_dir.join(&image.name);
        let moved =
            |e| LifecycleError::step("building", &image.name, "moving the image into place", e);
        let old = self.store.get_image(&image.name)?;
        let kept = match &old {
            Some(old) if !self.image_users(&old.name)?.is_empty() => {
                let name = format!("{}-{}", old.name, old.created_at);
                let kept_dir = self.paths.images_dir.join(&name);
                Some((name, kept_dir))
            }
            _ => None,
        };
        // The old files leave the name first: kept for their VMs, or aside
        // to be removed.
        let aside = match &kept {
            Some((_, kept_dir)) => kept_dir.clone(),
            None => super::delete::deleting_dir(&dir),
        };
        match std::fs::rename(&dir, &aside) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(moved(e)),
        }
        let put_back = || {
            let _ = std::fs::rename(&aside, &dir);
        };
        if let Err(e) = std::fs::rename(staged, &dir) {
            put_back();
            return Err(moved(e));
        }
        let image = Image {
            rootfs: dir.join("rootfs.ext4"),
            ..image
        };
        let written = self.store.write(|w| {
            if let (Some(old), Some((name, kept_dir))) = (&old, &kept) {
                w.put_image(&Image {
                    name: name.clone(),
                    rootfs: kept_dir.join("rootfs.ext4"),
                    ..old.clone()
                })?;
                w.retarget_vms(&old.name, name)?;
            }
            w.put_image(&image)
        });
        if let Err(e) = written {
            let _ = std::fs::rename(&dir, staged);
            put_back();
            return Err(e.into());
        }
        if kept.is_none() {
            let _ = std::fs::remove_dir_all(&aside);
        }
        if let Some((name, _)) = &kept {
            tracing::info!(image = %image.name, kept = %name, "the previous build stays for the VMs that use it");
        }
        tracing::info!(image = %image.name, rootfs = %image.rootfs.display(), "built image registered");
        Ok(image)
    }

    /// The VMs made from image `name`, which keep it from being deleted.
    pub fn image_users(&self, name: &str) -> Result<Vec<VmName>> {
        Ok(self
            .store
            .list_vms()?
            .into_iter()
            .filter(|vm| vm.image == name)
            .map(|vm| vm.name)
            .collect())
    }
}
