//! The Firecracker contract: the exact request sequence banger sends is
//! accepted by a real Firecracker, `InstanceStart` succeeds, the vsock
//! socket appears, a stop falls back to signals when the guest does not
//! answer, kill and exit detection work, and `firecracker.log` fills.
//!
//! Needs a Firecracker binary named by `BANGER_TEST_FIRECRACKER` and a
//! usable `/dev/kvm`, so every test here is `#[ignore]`d with that reason:
//! libtest lists them as ignored, and `make unit` runs them with
//! `--ignored` when the variable is set. The guest is a spinning stub
//! kernel (`banger_vmm::testkit`), so no image is needed.

// An integration test crate is compiled only for tests; there is no module to wrap.
#![allow(clippy::tests_outside_test_module)]

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use banger_vmm::firecracker::Firecracker;
use banger_vmm::process::{ExitReason, send_signal, wait_child};
use banger_vmm::{Drive, LaunchSpec, Vmm};

const NEEDS_FIRECRACKER: &str =
    "needs a Firecracker binary: BANGER_TEST_FIRECRACKER=/path/to/firecracker make unit";

fn firecracker() -> PathBuf {
    match std::env::var_os("BANGER_TEST_FIRECRACKER") {
        Some(path) => PathBuf::from(path),
        None => panic!(
            "run with --ignored only when BANGER_TEST_FIRECRACKER is set: {NEEDS_FIRECRACKER}"
        ),
    }
}

fn spec(dir: &Path) -> LaunchSpec {
    let kernel = dir.join("vmlinux");
    std::fs::write(&kernel, banger_vmm::testkit::spin_kernel()).unwrap();
    let mut drives = Vec::new();
    for (id, read_only) in [("base", true), ("overlay", false), ("work", false)] {
        let path = dir.join(format!("{id}.ext4"));
        std::fs::File::create(&path)
            .unwrap()
            .set_len(64 << 20)
            .unwrap();
        drives.push(Drive {
            id: id.into(),
            path,
            read_only,
        });
    }
    LaunchSpec {
        vm_id: "contract0123456789abcdef01234567".into(),
        vm_dir: dir.to_path_buf(),
        vcpu: 1,
        memory_mib: 128,
        kernel,
        initrd: None,
        boot_args: "console=ttyS0 reboot=k panic=1".into(),
        drives,
        net: None,
        vsock_cid: 3,
        vsock_path: dir.join("vsock.sock"),
        log_path: dir.join("firecracker.log"),
        restore: None,
        restore_as_another_vm: false,
    }
}

fn wait_for(what: &str, timeout: Duration, mut condition: impl FnMut() -> bool) {
    let deadline = Instant::now() + timeout;
    while !condition() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(10));
    }
}

#[test]
#[ignore = "needs a Firecracker binary: BANGER_TEST_FIRECRACKER=/path/to/firecracker make unit"]
fn configuration_is_accepted_and_instance_starts() {
    let binary = firecracker();
    let tmp = tempfile::tempdir().unwrap();
    let spec = spec(tmp.path());
    let backend = Firecracker::new(binary);
    let launched = backend.launch(&spec).unwrap_or_else(|e| {
        let log = std::fs::read_to_string(&spec.log_path).unwrap_or_default();
        panic!("launch failed: {e:?}\nfirecracker.log:\n{log}")
    });
    assert!(launched.pid > 0 && launched.start_time > 0);
    wait_for("the vsock socket", Duration::from_secs(5), || {
        spec.vsock_path.exists()
    });
    assert!(
        backend.responds(&spec.vm_dir, launched.pid),
        "GET / answers while the VM runs"
    );
    let log = std::fs::read_to_string(&spec.log_path).unwrap();
    assert!(!log.trim().is_empty(), "firecracker.log fills");

    // The stub guest ignores Ctrl-Alt-Del: the request is accepted, the VMM
    // keeps running, and SIGTERM then ends it. Firecracker installs no
    // SIGTERM handler, so the default action ends it by that signal.
    let mut child = launched.child.unwrap();
    backend
        .request_shutdown(&spec.vm_dir, launched.pid)
        .unwrap();
    std::thread::sleep(Duration::from_millis(500));
    assert!(
        child.try_wait().unwrap().is_none(),
        "a guest that does not answer keeps running"
    );
    send_signal(launched.pid, libc::SIGTERM).unwrap();
    let reason = wait_child(child);
    assert_eq!(reason, ExitReason::Signal(libc::SIGTERM));
}

#[test]
#[ignore = "needs a Firecracker binary: BANGER_TEST_FIRECRACKER=/path/to/firecracker make unit"]
fn kill_is_detected_with_its_signal() {
    let binary = firecracker();
    let tmp = tempfile::tempdir().unwrap();
    let spec = spec(tmp.path());
    let launched = Firecracker::new(binary).launch(&spec).unwrap();
    send_signal(launched.pid, libc::SIGKILL).unwrap();
    assert_eq!(
        wait_child(launched.child.unwrap()),
        ExitReason::Signal(libc::SIGKILL)
    );
}

#[test]
#[ignore = "needs a Firecracker binary: BANGER_TEST_FIRECRACKER=/path/to/firecracker make unit"]
fn a_refused_request_names_the_step_and_leaves_no_process() {
    let binary = firecracker();
    let tmp = tempfile::tempdir().unwrap();
    let mut spec = spec(tmp.path());
    spec.kernel = tmp.path().join("no-such-kernel");
    let err = Firecracker::new(binary).launch(&spec).unwrap_err();
    let text = format!(
        "{err}: {}",
        std::error::Error::source(&err)
            .map(ToString::to_string)
            .unwrap_or_default()
    );
    assert!(
        text.contains("boot source") && text.contains("HTTP 400"),
        "{text}"
    );
    assert!(
        !tmp.path().join("firecracker.sock").exists(),
        "the API socket is cleaned up"
    );
    let ours = std::process::Command::new("pgrep")
        .args(["-f", &tmp.path().display().to_string()])
        .output()
        .unwrap();
    assert!(ours.stdout.is_empty(), "no firecracker of this VM remains");
}
