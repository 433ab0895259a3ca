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
