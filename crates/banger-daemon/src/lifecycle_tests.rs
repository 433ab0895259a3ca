use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use banger_host::Paths;
use banger_host::disk::{DiskOp, FakeDisks};
use banger_host::procfs;
use banger_proto::{CreateVmParams, Image, SetVmParams, VmState};
use banger_vmm::fake::{FakeOp, FakeVmm};

use super::*;
use crate::store::{Store, VmRecord};

struct Fixture {
    _tmp: tempfile::TempDir,
    paths: Paths,
    store: Arc<Store>,
    vmm: Arc<FakeVmm>,
    disks: Arc<FakeDisks>,
    lifecycle: Arc<Lifecycle>,
}

const QUICK: StopTimeouts = StopTimeouts {
    graceful: Duration::from_secs(2),
    term: Duration::from_secs(2),
};

fn fixture() -> Fixture {
    let tmp = tempfile::tempdir().unwrap();
    let home = tmp.path().to_path_buf();
    let paths = Paths::from_vars(
        |name| match name {
            "HOME" => Some(home.clone().into()),
            "XDG_RUNTIME_DIR" => Some(home.join("run").into()),
            _ => None,
        },
        0,
    )
    .unwrap();
    paths.ensure_daemon_dirs().unwrap();
    let store = Arc::new(Store::open(&paths.db_file).unwrap());
    let bundle = tmp.path().join("bundle");
    std::fs::create_dir_all(&bundle).unwrap();
    for file in ["rootfs.ext4", "vmlinux", "initrd.img"] {
        std::fs::write(bundle.join(file), "image").unwrap();
    }
    store
        .put_image(&Image {
            name: "default".into(),
            rootfs: bundle.join("rootfs.ext4"),
            kernel: Some(bundle.join("vmlinux")),
            initrd: Some(bundle.join("initrd.img")),
            modules_dir: None,
            docker: false,
            managed: false,
            created_at: 0,
        })
        .unwrap();
    let vmm = Arc::new(FakeVmm::new());
    let disks = Arc::new(FakeDisks::new());
    let lifecycle = new_lifecycle(&paths, &store, &vmm, &disks);
    Fixture {
        _tmp: tmp,
        paths,
        store,
        vmm,
        disks,
        lifecycle,
    }
}

fn new_lifecycle(
    paths: &Paths,
    store: &Arc<Store>,
    vmm: &Arc<FakeVmm>,
    disks: &Arc<FakeDisks>,
) -> Arc<Lifecycle> {
    Lifecycle::new(
        paths.clone(),
        store.clone(),
        vec![vmm.clone()],
        disks.clone(),
        None,
    )
    .with_stop_timeouts(QUICK)
}

impl Fixture {
    fn create(&self, name: &str) -> VmRecord {
        self.lifecycle
            .create(&CreateVmParams {
                name: Some(name.into()),
                ..Default::default()
            })
            .unwrap()
    }

    /// Everything a failed action must leave untouched.
    fn snapshot(&self) -> (Vec<VmRecord>, Vec<PathBuf>) {
        let mut files = Vec::new();
        let mut pending = vec![self.paths.vms_dir.clone()];
        while let Some(dir) = pending.pop() {
            for entry in std::fs::read_dir(&dir).unwrap() {
                let path = entry.unwrap().path();
                if path.is_dir() {
                    pending.push(path.clone());
                }
                files.push(path);
            }
        }
        files.sort();
        (self.store.list_vms().unwrap(), files)
    }
}

impl Drop for Fixture {
    fn drop(&mut self) {
        for vm in self.store.list_vms().unwrap_or_default() {
            if let Some(pid) = vm.pid {
                let _ = banger_vmm::process::send_signal(pid, libc::SIGKILL);
            }
        }
    }
}

fn wait_until(what: &str, mut condition: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while !condition() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn create_boots_with_disks_vsock_and_a_live_process() {
    let fx = fixture();
    let vm = fx.create("calm-otter");
    assert_eq!(vm.state, VmState::Running);
    assert_eq!(vm.vsock_cid, Some(3));
    let dir = fx.paths.vm_dir(&vm.id);
    assert_eq!(
        vm.vsock_path.as_deref(),
        Some(dir.join("vsock.sock").as_path())
    );
    assert!(dir.join("overlay.ext4").exists() && dir.join("work.ext4").exists());
    assert_eq!(
        std::fs::metadata(dir.join("work.ext4")).unwrap().len(),
        DEFAULT_DISK_SIZE
    );
    let pid = vm.pid.unwrap();
    assert!(procfs::is_running(pid, vm.pid_start_time));
    let launch = &fx.vmm.launches()[0];
    let drives: Vec<&str> = launch.drives.iter().map(|d| d.id.as_str()).collect();
    assert_eq!(drives, ["base", "overlay", "work"]);
    assert!(launch.drives[0].read_only && !launch.drives[1].read_only);
    assert_eq!(fx.store.get_vm(&vm.id).unwrap().unwrap(), vm);
    let second = fx.create("buildbox");
    assert_eq!(second.vsock_cid, Some(4), "CIDs are unique");
}

#[test]
fn bad_input_is_refused_and_changes_nothing() {
    let fx = fixture();
    fx.create("taken");
    let before = fx.snapshot();
    let cases: Vec<(CreateVmParams, &str)> = vec![
        (
            CreateVmParams {
                name: Some("Bad_Name".into()),
                ..Default::default()
            },
            "Bad_Name",
        ),
        (
            CreateVmParams {
                name: Some("taken".into()),
                ..Default::default()
            },
            "already exists",
        ),
        (
            CreateVmParams {
                disk_size: Some("0G".into()),
                ..Default::default()
            },
            "\"0G\"",
        ),
        (
            CreateVmParams {
                disk_size: Some("99999999999T".into()),
                ..Default::default()
            },
            "99999999999T",
        ),
        (
            CreateVmParams {
                vcpu: Some(33),
                ..Default::default()
            },
            "33",
        ),
        (
            CreateVmParams {
                memory_mib: Some(64),
                ..Default::default()
            },
            "64 MiB",
        ),
        (
            CreateVmParams {
                image: Some("nope".into()),
                ..Default::default()
            },
            "no image named \"nope\"",
        ),
    ];
    for (params, needle) in cases {
        let err = fx.lifecycle.create(&params).unwrap_err();
        assert!(
            error_text(&err).contains(needle),
            "{needle}: {}",
            error_text(&err)
        );
        assert_eq!(fx.snapshot(), before, "{needle} changed something");
    }
}

#[test]
fn a_failure_at_each_create_step_rolls_everything_back() {
    let fx = fixture();
    fx.create("existing");
    let before = fx.snapshot();
    type Inject = Box<dyn Fn(&Fixture)>;
    let injections: Vec<(&str, Inject)> = vec![
        (
            "creating the overlay disk",
            Box::new(|fx| fx.disks.fail_on(DiskOp::CreateOverlay)),
        ),
        (
            "creating the work disk",
            Box::new(|fx| fx.disks.fail_on(DiskOp::CreateWorkDisk)),
        ),
        (
            "starting the VMM",
            Box::new(|fx| fx.vmm.fail_on(FakeOp::Launch)),
        ),
    ];
    for (step, inject) in injections {
        inject(&fx);
        let err = fx
            .lifecycle
            .create(&CreateVmParams {
                name: Some("doomed".into()),
                ..Default::default()
            })
            .unwrap_err();
        let text = error_text(&err);
        assert!(
            text.starts_with(&format!("creating doomed: {step} failed")),
            "{text}"
        );
        assert!(text.contains("injected failure"), "{text}");
        assert_eq!(fx.snapshot(), before, "after a failure at {step:?}");
        fx.disks.clear_failures();
        fx.vmm.clear_failures();
    }
    // With nothing injected, the same create works.
    fx.create("doomed");
}

#[test]
fn a_missing_image_file_is_named_before_anything_happens() {
    let fx = fixture();
    let image = fx.store.get_image("default").unwrap().unwrap();
    std::fs::remove_file(image.kernel.as_ref().unwrap()).unwrap();
    let before = fx.snapshot();
    let err = fx.lifecycle.create(&CreateVmParams::default()).unwrap_err();
    assert!(
        error_text(&err).contains("kernel") && error_text(&err).contains("vmlinux"),
        "{}",
        error_text(&err)
    );
    assert_eq!(fx.snapshot(), before);
}

#[test]
fn stop_is_graceful_and_keeps_the_disks() {
    let fx = fixture();
    let vm = fx.create("calm-otter");
    let pid = vm.pid.unwrap();
    let stopped = fx.lifecycle.stop(&vm.id).unwrap();
    assert_eq!(stopped.state, VmState::Stopped);
    assert_eq!(stopped.exit_reason.as_deref(), Some("clean shutdown"));
    assert_eq!(stopped.pid, None);
    assert!(!procfs::is_running(pid, None));
    let dir = fx.paths.vm_dir(&vm.id);
    assert!(dir.join("overlay.ext4").exists() && dir.join("work.ext4").exists());
    // Stopping again is a no-op, and start brings it back.
    assert_eq!(fx.lifecycle.stop(&vm.id).unwrap().state, VmState::Stopped);
    let started = fx.lifecycle.start(&vm.id).unwrap();
    assert_eq!(started.state, VmState::Running);
    assert_ne!(started.pid, Some(pid));
    assert_eq!(started.exit_reason, None);
}

#[test]
fn stop_falls_back_to_signals_when_the_guest_ignores_shutdown() {
    let fx = fixture();
    let vm = fx.create("stubborn");
    fx.vmm.ignore_shutdown(true);
    let started = Instant::now();
    let stopped = fx.lifecycle.stop(&vm.id).unwrap();
    assert!(
        started.elapsed() >= QUICK.graceful,
        "waited for the guest first"
    );
    assert_eq!(stopped.state, VmState::Stopped);
    assert!(!procfs::is_running(vm.pid.unwrap(), None));
}

#[test]
fn kill_sends_the_signal_and_the_exit_is_recorded() {
    let fx = fixture();
    let vm = fx.create("victim");
    let killed = fx.lifecycle.kill(&vm.id, libc::SIGKILL).unwrap();
    assert_eq!(killed.state, VmState::Stopped);
    assert_eq!(killed.exit_reason.as_deref(), Some("killed by SIGKILL"));
    let err = fx.lifecycle.kill(&vm.id, libc::SIGTERM).unwrap_err();
    assert!(err.to_string().contains("victim is not running"), "{err}");
}

#[test]
fn an_exit_from_outside_is_detected_and_recorded() {
    let fx = fixture();
    let vm = fx.create("crashy");
    banger_vmm::process::send_signal(vm.pid.unwrap(), libc::SIGSEGV).unwrap();
    wait_until("the exit to be recorded", || {
        fx.store.get_vm(&vm.id).unwrap().unwrap().state == VmState::Stopped
    });
    let record = fx.store.get_vm(&vm.id).unwrap().unwrap();
    assert_eq!(record.exit_reason.as_deref(), Some("killed by SIGSEGV"));
    assert_eq!(record.pid, None);
}

#[test]
fn restart_gives_a_new_process() {
    let fx = fixture();
    let vm = fx.create("phoenix");
    let again = fx.lifecycle.restart(&vm.id).unwrap();
    assert_eq!(again.state, VmState::Running);
    assert_ne!(again.pid, vm.pid);
    assert!(!procfs::is_running(vm.pid.unwrap(), None));
}

#[test]
fn set_needs_a_stopped_vm_and_never_shrinks() {
    let fx = fixture();
    let vm = fx
        .lifecycle
        .create(&CreateVmParams {
            name: Some("box".into()),
            disk_size: Some("2G".into()),
            ..Default::default()
        })
        .unwrap();
    let grow = SetVmParams {
        vms: vec![],
        disk_size: Some("3G".into()),
        vcpu: Some(4),
        memory_mib: Some(4096),
        nat: None,
    };
    let err = fx.lifecycle.set(&vm.id, &grow).unwrap_err();
    assert_eq!(
        err.to_string(),
        "box is running: stop it first with `banger vm stop box`"
    );
    let nat_only = SetVmParams {
        nat: Some(true),
        ..Default::default()
    };
    assert!(
        fx.lifecycle.set(&vm.id, &nat_only).unwrap().nat,
        "NAT changes on a running VM"
    );

    fx.lifecycle.stop(&vm.id).unwrap();
    let changed = fx.lifecycle.set(&vm.id, &grow).unwrap();
    assert_eq!(
        (changed.vcpu, changed.memory_mib, changed.disk_size_bytes),
        (4, 4096, 3 << 30)
    );
    let work = fx.paths.vm_dir(&vm.id).join("work.ext4");
    assert_eq!(std::fs::metadata(&work).unwrap().len(), 3 << 30);

    let before = fx.snapshot();
    let shrink = SetVmParams {
        disk_size: Some("1G".into()),
        ..Default::default()
    };
    let err = fx.lifecycle.set(&vm.id, &shrink).unwrap_err();
    assert_eq!(
        err.to_string(),
        "refusing to shrink box's work disk from 3G to 1G: work disks only grow"
    );
    fx.disks.fail_on(DiskOp::Grow);
    let err = fx
        .lifecycle
        .set(
            &vm.id,
            &SetVmParams {
                disk_size: Some("4G".into()),
                vcpu: Some(8),
                ..Default::default()
            },
        )
        .unwrap_err();
    assert!(err.to_string().contains("growing the work disk"), "{err}");
    assert_eq!(fx.snapshot(), before, "failed set changed nothing");
}

#[test]
fn delete_removes_every_file_and_record() {
    let fx = fixture();
    let vm = fx.create("gone");
    let pid = vm.pid.unwrap();
    fx.lifecycle.delete(&vm.id).unwrap();
    assert!(!procfs::is_running(pid, None));
    assert!(!fx.paths.vm_dir(&vm.id).exists());
    assert!(fx.store.get_vm(&vm.id).unwrap().is_none());
    let err = fx.lifecycle.resolve("gone").unwrap_err();
    assert!(err.to_string().contains("no VM named \"gone\""), "{err}");
}

#[test]
fn reconcile_adopts_live_vms_and_stops_dead_ones() {
    let fx = fixture();
    let alive = fx.create("alive");
    let dead = fx.create("dead");
    // The daemon dies: it records nothing more; VMs keep running.
    fx.lifecycle.retire();
    banger_vmm::process::send_signal(dead.pid.unwrap(), libc::SIGKILL).unwrap();
    wait_until("the dead VM's process to go", || {
        !procfs::is_running(dead.pid.unwrap(), None)
    });
    // A half-created VM, as a daemon killed during create leaves it.
    let mut half = fx.store.get_vm(&alive.id).unwrap().unwrap();
    half.id = "ffffffffffffffffffffffffffffffff".into();
    half.name = "half".into();
    half.state = VmState::Creating;
    half.pid = None;
    half.vsock_cid = Some(99);
    fx.store.insert_vm(&half).unwrap();
    std::fs::create_dir_all(fx.paths.vm_dir(&half.id)).unwrap();

    // The new daemon's lifecycle, over the same store.
    let fresh = new_lifecycle(&fx.paths, &fx.store, &fx.vmm, &fx.disks);
    let report = fresh.reconcile().unwrap();
    assert_eq!(report.adopted, ["alive"]);
    assert_eq!(report.removed, ["half"]);
    assert!(report.stopped.contains(&"dead".to_owned()));
    let dead_now = fx.store.get_vm(&dead.id).unwrap().unwrap();
    assert_eq!(dead_now.state, VmState::Stopped);
    assert_eq!(
        dead_now.exit_reason.as_deref(),
        Some("VMM exited while bangerd was not running")
    );
    assert!(!fx.paths.vm_dir(&half.id).exists());

    // The adopted VM is watched: stopping it works, and so does an exit from outside.
    let adopted = fx.store.get_vm(&alive.id).unwrap().unwrap();
    assert_eq!(adopted.pid, alive.pid, "same process, not restarted");
    let stopped = fresh.stop(&alive.id).unwrap();
    assert_eq!(stopped.state, VmState::Stopped);
    let again = fresh.start(&alive.id).unwrap();
    fresh.retire();
    let fresh2 = new_lifecycle(&fx.paths, &fx.store, &fx.vmm, &fx.disks);
    fresh2.reconcile().unwrap();
    banger_vmm::process::send_signal(again.pid.unwrap(), libc::SIGKILL).unwrap();
    wait_until("the adopted VM's exit to be recorded", || {
        fx.store.get_vm(&alive.id).unwrap().unwrap().state == VmState::Stopped
    });
    let record = fx.store.get_vm(&alive.id).unwrap().unwrap();
    assert!(record.exit_reason.unwrap().contains("status unknown"));
}

#[test]
fn twenty_vms_in_parallel_without_error_or_leak() {
    let fx = fixture();
    let names: Vec<String> = (0..20).map(|i| format!("par-{i}")).collect();
    let handles: Vec<_> = names
        .iter()
        .map(|name| {
            let lifecycle = fx.lifecycle.clone();
            let name = name.clone();
            std::thread::spawn(move || {
                lifecycle
                    .create(&CreateVmParams {
                        name: Some(name),
                        ..Default::default()
                    })
                    .unwrap()
            })
        })
        .collect();
    let vms: Vec<VmRecord> = handles.into_iter().map(|h| h.join().unwrap()).collect();
    let mut cids: Vec<u32> = vms.iter().filter_map(|v| v.vsock_cid).collect();
    cids.sort();
    cids.dedup();
    assert_eq!(cids.len(), 20, "unique CIDs");
    let stops: Vec<_> = vms
        .iter()
        .map(|vm| {
            let lifecycle = fx.lifecycle.clone();
            let id = vm.id.clone();
            std::thread::spawn(move || lifecycle.delete(&id).unwrap())
        })
        .collect();
    for stop in stops {
        stop.join().unwrap();
    }
    for vm in &vms {
        assert!(
            !procfs::is_running(vm.pid.unwrap(), None),
            "{} leaked its process",
            vm.name
        );
    }
    assert_eq!(fx.snapshot(), (vec![], vec![]), "no record or file left");
}
