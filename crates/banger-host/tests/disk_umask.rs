//! bangerd runs with umask 077 (its files are private), and the disks it
//! builds become guests' filesystems: their roots must keep the modes a
//! guest needs. A process of its own, since the umask is process-wide.

// An integration test crate is compiled only for tests; there is no module to wrap.
#![allow(clippy::tests_outside_test_module)]

use std::path::Path;
use std::sync::Arc;

use banger_host::disk::{Disks, Ext4Disks};
use banger_host::process::HostRunner;

fn mode_in_image(image: &Path, inode: &str) -> String {
    let out = std::process::Command::new("debugfs")
        .args(["-R", &format!("stat {inode}")])
        .arg(image)
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    text.split_whitespace()
        .skip_while(|w| *w != "Mode:")
        .nth(1)
        .unwrap_or_default()
        .to_owned()
}

#[test]
fn guest_filesystem_roots_keep_their_modes_under_the_daemons_umask() {
    let missing = banger_testkit::missing_tool(&["mkfs.ext4", "debugfs"]);
    if !banger_testkit::require(
        missing.is_none(),
        "guest_filesystem_roots_keep_their_modes_under_the_daemons_umask",
        "e2fsprogs is not installed (apt-get install e2fsprogs)",
    ) {
        return;
    }
    banger_host::privacy::restrict_umask();
    let tmp = tempfile::tempdir().unwrap();
    let disks = Ext4Disks::new(Arc::new(HostRunner), tmp.path().join("cache"));
    let overlay = tmp.path().join("overlay.ext4");
    disks.create_overlay(&overlay, 1 << 30).unwrap();
    // overlayfs takes the merged root's mode from upper/.
    assert_eq!(mode_in_image(&overlay, "/upper"), "0755");
    assert_eq!(mode_in_image(&overlay, "/work"), "0755");
    assert_eq!(mode_in_image(&overlay, "/"), "0755");
    let work = tmp.path().join("work.ext4");
    disks.create_work_disk(&work, 1 << 30, None).unwrap();
    assert_eq!(mode_in_image(&work, "/"), "0755");
    // The disk files themselves are private.
    use std::os::unix::fs::PermissionsExt;
    assert_eq!(
        overlay.metadata().unwrap().permissions().mode() & 0o777,
        0o600
    );
}
