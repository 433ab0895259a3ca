//! banger's state holds guest disks (with their SSH host keys), the store
//! and logs: readable by the daemon's user only. New files are private by
//! the daemon's umask; [`make_private`] tightens what an older banger (or a
//! copy) left readable to others.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

/// The daemon's file-creation mask: no access for group or others, for
/// bangerd and every VMM and helper it starts.
pub const DAEMON_UMASK: libc::mode_t = 0o077;

/// Sets the process umask to [`DAEMON_UMASK`].
pub fn restrict_umask() {
    // SAFETY: umask only swaps the process's mask and cannot fail.
    unsafe { libc::umask(DAEMON_UMASK) };
}

/// Removes group and other access from `root` and everything below it
/// (links are not followed). Returns the paths it changed.
pub fn make_private(root: &Path) -> std::io::Result<Vec<PathBuf>> {
    let mut changed = Vec::new();
    let mut pending = vec![root.to_path_buf()];
    while let Some(path) = pending.pop() {
        let meta = match std::fs::symlink_metadata(&path) {
            Ok(meta) => meta,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
            Err(e) => return Err(e),
        };
        if meta.file_type().is_symlink() {
            continue;
        }
        let mode = meta.permissions().mode();
        if mode & 0o077 != 0 {
            std::fs::set_permissions(&path, std::fs::Permissions::from_mode(mode & !0o077))?;
            changed.push(path.clone());
        }
        if meta.is_dir() {
            for entry in std::fs::read_dir(&path)? {
                pending.push(entry?.path());
            }
        }
    }
    Ok(changed)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn mode(path: &Path) -> u32 {
        std::fs::symlink_metadata(path)
            .unwrap()
            .permissions()
            .mode()
            & 0o777
    }

    #[test]
    fn everything_below_becomes_owner_only() {
        let tmp = tempfile::tempdir().unwrap();
        let state = tmp.path().join("state");
        let vm = state.join("vms/abc");
        std::fs::create_dir_all(&vm).unwrap();
        std::fs::write(state.join("banger.db"), "db").unwrap();
        std::fs::write(vm.join("overlay.ext4"), "disk").unwrap();
        std::fs::write(vm.join("already.ext4"), "disk").unwrap();
        for (path, m) in [
            (&state, 0o755),
            (&state.join("vms"), 0o755),
            (&vm, 0o755),
            (&state.join("banger.db"), 0o644),
            (&vm.join("overlay.ext4"), 0o644),
            (&vm.join("already.ext4"), 0o600),
        ] {
            std::fs::set_permissions(path, std::fs::Permissions::from_mode(m)).unwrap();
        }
        let outside = tmp.path().join("outside");
        std::fs::write(&outside, "x").unwrap();
        std::fs::set_permissions(&outside, std::fs::Permissions::from_mode(0o644)).unwrap();
        std::os::unix::fs::symlink(&outside, vm.join("link")).unwrap();

        let mut changed = make_private(&state).unwrap();
        changed.sort();
        assert_eq!(changed.len(), 5, "{changed:?}");
        assert_eq!(mode(&state), 0o700);
        assert_eq!(mode(&vm), 0o700);
        assert_eq!(mode(&state.join("banger.db")), 0o600);
        assert_eq!(mode(&vm.join("overlay.ext4")), 0o600);
        assert_eq!(mode(&vm.join("already.ext4")), 0o600);
        assert_eq!(mode(&outside), 0o644, "links are not followed");
        assert!(
            make_private(&state).unwrap().is_empty(),
            "a second pass changes nothing"
        );
        assert!(
            make_private(&tmp.path().join("missing"))
                .unwrap()
                .is_empty()
        );
    }
}
