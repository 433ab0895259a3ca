//! The default image, registered from config or the runtime bundle each time
//! bangerd starts, so a rebuilt bundle is picked up without a migration.

use std::path::{Path, PathBuf};

use banger_host::Config;
use banger_host::bundle::BundleFile;
use banger_proto::Image;

use crate::lifecycle::DEFAULT_IMAGE;
use crate::store::{Store, StoreError};

/// The files of the default image: config keys first, else the bundle's
/// conventional names (`rootfs-docker.ext4`, falling back to `rootfs.ext4`).
pub fn default_image(config: &Config, runtime_dir: Option<&Path>) -> Option<Image> {
    let manifest = runtime_dir.and_then(bundle_manifest);
    let in_bundle = |file: BundleFile| file.locate(runtime_dir?, manifest.as_ref());
    let rootfs = config
        .default_rootfs
        .clone()
        .or_else(|| in_bundle(BundleFile::RootfsDocker))
        .or_else(|| in_bundle(BundleFile::Rootfs))?;
    let kernel: Option<PathBuf> = config
        .default_kernel
        .clone()
        .or_else(|| in_bundle(BundleFile::Kernel));
    let initrd = config
        .default_initrd
        .clone()
        .or_else(|| in_bundle(BundleFile::Initrd));
    let modules_dir = config
        .default_modules_dir
        .clone()
        .or_else(|| in_bundle(BundleFile::Modules));
    let docker = rootfs
        .file_name()
        .is_some_and(|n| n.to_string_lossy().contains("docker"));
    Some(Image {
        name: DEFAULT_IMAGE.to_owned(),
        rootfs,
        kernel,
        initrd,
        modules_dir,
        docker,
        managed: false,
        created_at: 0,
        ..Default::default()
    })
}

/// The bundle's `bundle.json`, which says where everything is; `None`
/// (logged) when it is unusable, and the conventional file names serve.
pub fn bundle_manifest(dir: &Path) -> Option<banger_host::bundle::Bundle> {
    match banger_host::bundle::Bundle::load(dir) {
        Ok(bundle) => Some(bundle),
        Err(e) => {
            tracing::warn!(error = %e, "runtime bundle manifest unusable; using conventional file names");
            None
        }
    }
}

/// Registers (or refreshes) the default image when its rootfs exists.
pub fn register_default(
    store: &Store,
    config: &Config,
    runtime_dir: Option<&Path>,
) -> Result<Option<Image>, StoreError> {
    let Some(mut image) = default_image(config, runtime_dir) else {
        return Ok(None);
    };
    if !image.rootfs.exists() {
        tracing::warn!(rootfs = %image.rootfs.display(), "default rootfs is missing; default image not registered");
        return Ok(None);
    }
    image.created_at = store
        .get_image(DEFAULT_IMAGE)?
        .map(|i| i.created_at)
        .unwrap_or_else(crate::lifecycle::now);
    store.put_image(&image)?;
    Ok(Some(image))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn config_keys_win_over_bundle_names() {
        let tmp = tempfile::tempdir().unwrap();
        for f in ["rootfs.ext4", "vmlinux", "initrd.img"] {
            std::fs::write(tmp.path().join(f), "x").unwrap();
        }
        let image = default_image(&Config::default(), Some(tmp.path())).unwrap();
        assert_eq!(image.rootfs, tmp.path().join("rootfs.ext4"));
        assert_eq!(image.kernel, Some(tmp.path().join("vmlinux")));
        assert!(!image.docker);
        std::fs::write(tmp.path().join("rootfs-docker.ext4"), "x").unwrap();
        let image = default_image(&Config::default(), Some(tmp.path())).unwrap();
        assert!(image.docker);
        let config = Config {
            default_kernel: Some("/k/vmlinux".into()),
            ..Config::default()
        };
        assert_eq!(
            default_image(&config, Some(tmp.path())).unwrap().kernel,
            Some("/k/vmlinux".into())
        );
        assert!(default_image(&Config::default(), None).is_none());
    }

    #[test]
    fn registration_needs_the_rootfs() {
        let tmp = tempfile::tempdir().unwrap();
        let store = Store::open_in_memory().unwrap();
        let config = Config {
            default_rootfs: Some(tmp.path().join("missing.ext4")),
            ..Config::default()
        };
        assert_eq!(register_default(&store, &config, None).unwrap(), None);
        std::fs::write(tmp.path().join("missing.ext4"), "x").unwrap();
        assert!(register_default(&store, &config, None).unwrap().is_some());
        assert_eq!(store.list_images().unwrap().len(), 1);
    }
}
