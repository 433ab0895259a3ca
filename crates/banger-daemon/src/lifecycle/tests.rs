use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use banger_host::Paths;
use banger_host::disk::{DiskOp, FakeDisks};
use banger_host::net::{FakeNetwork, NetOp};
use banger_host::procfs;
use banger_host::publish::{FakePublisher, PortPublisher};
use banger_proto::{CreateVmParams, Image, SetVmParams, VmState};
use banger_vmm::fake::{FakeOp, FakeVmm};

use super::*;
use crate::store::{Store, VmRecord};

/// A lifecycle on fakes over a store in a temporary home, with the
/// default image registered (other modules' tests use it too).
pub(crate) struct Fixture {
    pub(crate) _tmp: tempfile::TempDir,
    pub(crate) paths: Paths,
    pub(crate) store: Arc<Store>,
    pub(crate) vmm: Arc<FakeVmm>,
    pub(crate) disks: Arc<FakeDisks>,
    pub(crate) network: Arc<FakeNetwork>,
    pub(crate) dns: crate::capabilities::DnsTable,
    pub(crate) lifecycle: Arc<Lifecycle>,
}

const QUICK: StopTimeouts = StopTimeouts {
    graceful: Duration::from_secs(2),
    term: Duration::from_secs(2),
};

pub(crate) fn fixture() -> Fixture {
    let tmp = tempfile::tempdir().unwrap();
    let home = tmp.path().to_path_buf();
    let paths = Paths::under(&home).unwrap();
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
            ..Default::default()
        })
        .unwrap();
    let vmm = Arc::new(FakeVmm::new());
    let disks = Arc::new(FakeDisks::new());
    let network = Arc::new(FakeNetwork::new());
    let dns = crate::capabilities::DnsTable::default();
    let lifecycle = build(&paths, &store, &vmm, &disks, &network, &dns);
    Fixture {
        _tmp: tmp,
        paths,
        store,
        vmm,
        disks,
        network,
        dns,
        lifecycle,
    }
}

fn build(
    paths: &Paths,
    store: &Arc<Store>,
    vmm: &Arc<FakeVmm>,
    disks: &Arc<FakeDisks>,
    network: &Arc<impl banger_host::net::HostNetwork + 'static>,
    dns: &crate::capabilities::DnsTable,
) -> Arc<Lifecycle> {
    let config = banger_host::Config::default();
    build_with(paths, store, &config, fake_deps(vmm, disks, network), dns)
}

fn fake_deps(
    vmm: &Arc<FakeVmm>,
    disks: &Arc<FakeDisks>,
    network: &Arc<impl banger_host::net::HostNetwork + 'static>,
) -> crate::Deps {
    crate::Deps {
        backends: vec![vmm.clone()],
        disks: disks.clone(),
        network: network.clone(),
        stop_timeouts: QUICK,
        public_keys: vec!["ssh-ed25519 AAAAtest banger-test".into()],
        vmm_reason: "fake VMM for tests".into(),
        // A new daemon's listeners: none open.
        ports: Arc::new(FakePublisher::default()),
    }
}

fn build_with(
    paths: &Paths,
    store: &Arc<Store>,
    config: &banger_host::Config,
    deps: crate::Deps,
    dns: &crate::capabilities::DnsTable,
) -> Arc<Lifecycle> {
    let capabilities = crate::pipeline(paths, config, &deps, dns.clone()).unwrap();
    Lifecycle::new(
        paths.clone(),
        store.clone(),
        deps.backends,
        deps.disks,
        capabilities,
        None,
    )
    .with_stop_timeouts(QUICK)
}

impl Fixture {
    /// A new daemon's lifecycle over the same store and host.
    fn new_lifecycle(&self) -> Arc<Lifecycle> {
        build(
            &self.paths,
            &self.store,
            &self.vmm,
            &self.disks,
            &self.network,
            &self.dns,
        )
    }

    fn create(&self, name: &str) -> VmRecord {
        create_on(&self.lifecycle, name)
    }

    /// Everything a failed action must leave untouched.
    /// Every VMM `prepare` started since `before` was taken has ended.
    fn assert_early_vmms_gone(&self, before: &[u32], after: &str) {
        for pid in self.vmm.prepared() {
            assert!(
                before.contains(&pid) || !procfs::is_running(pid, None),
                "a VMM started ahead (pid {pid}) is still running after {after}"
            );
        }
    }

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

/// A VM named `name`, created by `lifecycle` with the defaults.
fn create_on(lifecycle: &Arc<Lifecycle>, name: &str) -> VmRecord {
    lifecycle
        .create(&CreateVmParams {
            name: Some(name.into()),
            ..Default::default()
        })
        .unwrap()
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
    assert_eq!(drives, ["base", "overlay", "work", "config"]);
    assert!(
        launch.drives[3].read_only,
        "the guest cannot change its config drive"
    );
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
            "writing the guest configuration",
            Box::new(|fx| fx.disks.fail_on(DiskOp::WriteConfigDrive)),
        ),
        (
            "creating the TAP device",
            Box::new(|fx| fx.network.fail_on(NetOp::CreateTap)),
        ),
        (
            "adding NAT rules",
            Box::new(|fx| fx.network.fail_on(NetOp::AddNat)),
        ),
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
        (
            "starting the VMM",
            Box::new(|fx| fx.vmm.fail_on(FakeOp::Prepare)),
        ),
    ];
    let existing: Vec<u32> = fx.vmm.prepared();
    for (step, inject) in injections {
        inject(&fx);
        let err = fx
            .lifecycle
            .create(&CreateVmParams {
                name: Some("doomed".into()),
                nat: true,
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
        assert_eq!(
            fx.network.state().nat.len(),
            0,
            "no NAT rule left after {step:?}"
        );
        assert_eq!(
            fx.network.state().taps.len(),
            1,
            "only the existing VM's TAP after {step:?}"
        );
        assert!(
            fx.dns.lookup("doomed").is_none(),
            "no DNS record left after {step:?}"
        );
        fx.assert_early_vmms_gone(&existing, step);
        fx.disks.clear_failures();
        fx.vmm.clear_failures();
        fx.network.clear_failures();
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
    let stopped = fx.lifecycle.stop(&vm.id, false).unwrap();
    assert_eq!(stopped.state, VmState::Stopped);
    assert_eq!(stopped.exit_reason.as_deref(), Some("clean shutdown"));
    assert_eq!(stopped.pid, None);
    assert!(!procfs::is_running(pid, None));
    let dir = fx.paths.vm_dir(&vm.id);
    assert!(dir.join("overlay.ext4").exists() && dir.join("work.ext4").exists());
    // Stopping again is a no-op, and start brings it back.
    assert_eq!(
        fx.lifecycle.stop(&vm.id, false).unwrap().state,
        VmState::Stopped
    );
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
    let stopped = fx.lifecycle.stop(&vm.id, false).unwrap();
    assert!(
        started.elapsed() >= QUICK.graceful,
        "waited for the guest first"
    );
    assert_eq!(stopped.state, VmState::Stopped);
    assert_eq!(
        stopped.exit_reason.as_deref(),
        Some("the guest did not power off within 2s; stopped with SIGTERM")
    );
    assert!(!procfs::is_running(vm.pid.unwrap(), None));
    let stored = fx.store.get_vm(&vm.id).unwrap().unwrap();
    assert_eq!(stored.exit_reason, stopped.exit_reason);
}

#[test]
fn stop_ends_with_sigkill_when_the_vmm_ignores_sigterm() {
    let fx = fixture();
    fx.vmm.ignore_shutdown(true);
    fx.vmm.ignore_sigterm(true);
    let vm = fx.create("wedged");
    let started = Instant::now();
    let stopped = fx.lifecycle.stop(&vm.id, false).unwrap();
    assert!(
        started.elapsed() >= QUICK.graceful + QUICK.term,
        "both earlier rungs were waited for"
    );
    assert_eq!(stopped.state, VmState::Stopped);
    assert_eq!(
        stopped.exit_reason.as_deref(),
        Some(
            "the guest did not power off within 2s and the VMM ignored SIGTERM; stopped with SIGKILL"
        )
    );
    assert!(!procfs::is_running(vm.pid.unwrap(), None));
}

#[test]
fn stop_of_a_guest_that_powers_off_is_clean() {
    let fx = fixture();
    let vm = fx.create("polite");
    let stopped = fx.lifecycle.stop(&vm.id, false).unwrap();
    assert_eq!(stopped.exit_reason.as_deref(), Some("clean shutdown"));
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
        ..Default::default()
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

    fx.lifecycle.stop(&vm.id, false).unwrap();
    let changed = fx.lifecycle.set(&vm.id, &grow).unwrap();
    assert_eq!(
        (changed.vcpu, changed.memory_mib, changed.disk_size_bytes),
        (4, MemoryMib(4096), DiskSize(3 << 30))
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
    half.id = VmId::new("ffffffffffffffffffffffffffffffff");
    half.name = VmName::parse("half").unwrap();
    half.state = VmState::Creating;
    half.pid = None;
    half.vsock_cid = Some(99);
    half.tap = None;
    half.guest_ip = None;
    fx.store.insert_vm(&half).unwrap();
    std::fs::create_dir_all(fx.paths.vm_dir(&half.id)).unwrap();

    // The new daemon's lifecycle, over the same store.
    let fresh = fx.new_lifecycle();
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
    let stopped = fresh.stop(&alive.id, false).unwrap();
    assert_eq!(stopped.state, VmState::Stopped);
    let again = fresh.start(&alive.id).unwrap();
    fresh.retire();
    let fresh2 = fx.new_lifecycle();
    fresh2.reconcile().unwrap();
    banger_vmm::process::send_signal(again.pid.unwrap(), libc::SIGKILL).unwrap();
    wait_until("the adopted VM's exit to be recorded", || {
        fx.store.get_vm(&alive.id).unwrap().unwrap().state == VmState::Stopped
    });
    let record = fx.store.get_vm(&alive.id).unwrap().unwrap();
    assert!(record.exit_reason.unwrap().contains("status unknown"));
}

/// A record as a daemon killed after starting the VMM, but before storing
/// its PID, leaves it: the VMM runs, named only by its pid file.
fn interrupted(fx: &Fixture, like: &VmRecord, name: &str, state: VmState) -> (VmRecord, u32) {
    use banger_vmm::Vmm;
    let mut record = like.clone();
    record.id = VmId::new(format!("{:0>32}", name.len().to_string() + name));
    record.name = VmName::parse(name).unwrap();
    record.state = state;
    record.pid = None;
    record.pid_start_time = None;
    record.vsock_cid = Some(90 + u32::try_from(name.len()).unwrap());
    record.guest_ip = Some(std::net::Ipv4Addr::new(
        10,
        219,
        0,
        200 + u8::try_from(name.len()).unwrap(),
    ));
    record.tap = Some(banger_host::net::tap_name(&record.id));
    fx.store.insert_vm(&record).unwrap();
    let dir = fx.paths.vm_dir(&record.id);
    std::fs::create_dir_all(&dir).unwrap();
    let prepared = fx
        .vmm
        .prepare(&dir, &record.id, &dir.join("vmm.log"))
        .unwrap();
    let pid = *fx.vmm.prepared().last().unwrap();
    // The daemon that started it is gone: nothing will kill it on drop.
    std::mem::forget(prepared);
    banger_host::net::HostNetwork::create_tap(
        fx.network.as_ref(),
        record.tap.as_deref().unwrap(),
        0,
    )
    .unwrap();
    // Exec'd, so its command line is the fake VMM's (as `responds` checks).
    wait_until("the VMM to run", || fx.vmm.responds(&dir, pid));
    (record, pid)
}

#[test]
fn an_interrupted_create_leaves_no_vmm_tap_or_file() {
    let fx = fixture();
    let template = fx.create("template");
    fx.lifecycle.retire();
    let (half, pid) = interrupted(&fx, &template, "crash1", VmState::Creating);

    let report = fx.new_lifecycle().reconcile().unwrap();
    assert_eq!(report.removed, ["crash1"]);
    assert!(
        !procfs::is_running(pid, None),
        "the VMM of the create is gone"
    );
    assert!(fx.store.get_vm(&half.id).unwrap().is_none());
    assert!(!fx.paths.vm_dir(&half.id).exists());
    let taps = banger_host::net::HostNetwork::list_taps(fx.network.as_ref()).unwrap();
    assert!(!taps.contains(half.tap.as_ref().unwrap()), "{taps:?}");
}

/// A daemon killed while a restored state was being deleted behind the
/// resume leaves it renamed aside; the next daemon deletes it.
#[test]
fn the_next_daemon_deletes_a_restored_state_left_aside() {
    let fx = fixture();
    let vm = fx.create("resumed");
    let files = banger_host::VmDir::new(fx.paths.vm_dir(&vm.id));
    let left = files.path().join("suspended.discarded-1");
    std::fs::create_dir(&left).unwrap();
    std::fs::write(left.join("qemu-ram"), b"memory").unwrap();
    fx.lifecycle.retire();
    fx.new_lifecycle().reconcile().unwrap();
    assert!(!left.exists());
    assert!(files.overlay().exists(), "the VM's own files stay");
    assert_eq!(fx.lifecycle.record(&vm.id).unwrap().state, VmState::Running);
}

#[test]
fn an_interrupted_start_is_adopted_from_its_pid_file() {
    let fx = fixture();
    let template = fx.create("template");
    fx.lifecycle.retire();
    let (half, pid) = interrupted(&fx, &template, "booting", VmState::Starting);

    let fresh = fx.new_lifecycle();
    let report = fresh.reconcile().unwrap();
    assert!(report.adopted.contains(&"booting".to_owned()), "{report:?}");
    let adopted = fx.store.get_vm(&half.id).unwrap().unwrap();
    assert_eq!((adopted.state, adopted.pid), (VmState::Running, Some(pid)));
    let stopped = fresh.stop(&half.id, false).unwrap();
    assert_eq!(stopped.state, VmState::Stopped);
    assert!(!procfs::is_running(pid, None));
}

#[test]
fn a_name_that_is_another_vms_id_prefix_is_ambiguous() {
    let fx = fixture();
    let first = fx.create("first");
    let clash = fx.create(&first.id[..6]);
    let err = fx.lifecycle.resolve(&first.id[..6]).unwrap_err();
    assert!(matches!(err, LifecycleError::Ambiguous { .. }), "{err}");
    let text = err.to_string();
    assert!(
        text.contains(&format!("{} (its name; ID {})", clash.name, &clash.id[..8]))
            && text.contains(&format!("first (ID {})", &first.id[..8]))
            && text.contains("full ID"),
        "{text}"
    );
    assert_eq!(fx.lifecycle.resolve(&first.id).unwrap().name, "first");
    assert_eq!(fx.lifecycle.resolve(&clash.id).unwrap().name, clash.name);
    assert_eq!(fx.lifecycle.resolve("first").unwrap().id, first.id);
    let huge = "f".repeat(900_000);
    let text = fx.lifecycle.resolve(&huge).unwrap_err().to_string();
    assert!(
        text.len() < 200 && text.contains("(900000 bytes)"),
        "{}",
        &text[..200.min(text.len())]
    );
}

#[test]
fn no_room_for_disks_refuses_create_and_growth_with_the_figures() {
    let fx = fixture();
    let vm = fx.create("roomy");
    fx.lifecycle.stop(&vm.id, false).unwrap();
    let cramped = fx.new_lifecycle().with_min_free_bytes(u64::MAX);
    let err = cramped
        .create(&CreateVmParams {
            name: Some("cramped".into()),
            ..Default::default()
        })
        .unwrap_err();
    let text = err.to_string();
    assert!(matches!(err, LifecycleError::NoSpace { .. }), "{text}");
    assert!(
        text.starts_with("creating a VM needs at least ")
            && text.contains(&fx.paths.vms_dir.display().to_string())
            && text.contains(" is free: free space there first"),
        "{text}"
    );
    assert_eq!(fx.store.vm_count().unwrap(), 1, "nothing was created");
    let err = cramped
        .set(
            &vm.id,
            &SetVmParams {
                disk_size: Some("32G".into()),
                ..Default::default()
            },
        )
        .unwrap_err()
        .to_string();
    assert!(
        err.starts_with("growing a work disk needs at least "),
        "{err}"
    );
    let unchanged = fx.store.get_vm(&vm.id).unwrap().unwrap();
    assert_eq!(unchanged.disk_size_bytes, vm.disk_size_bytes);
    // Changes that need no space still work.
    let set = cramped
        .set(
            &vm.id,
            &SetVmParams {
                vcpu: Some(1),
                ..Default::default()
            },
        )
        .unwrap();
    assert_eq!(set.vcpu, 1);
}

#[test]
fn a_guest_paused_on_an_io_error_shows_paused_with_the_reason() {
    let fx = fixture();
    let vm = fx.create("writer");
    fx.lifecycle
        .watch_running_vms(banger_host::vm_dir::ConsoleCap::DEFAULT);
    assert_eq!(
        fx.store.get_vm(&vm.id).unwrap().unwrap().state,
        VmState::Running
    );
    fx.vmm.pause_on_io_error(true);
    fx.lifecycle
        .watch_running_vms(banger_host::vm_dir::ConsoleCap::DEFAULT);
    let paused = fx.store.get_vm(&vm.id).unwrap().unwrap();
    assert_eq!(paused.state, VmState::Paused);
    let why = paused.last_error.unwrap();
    assert!(
        why.contains("disk write failed")
            && why.contains(&fx.paths.vm_dir(&vm.id).display().to_string())
            && why.contains(" free;")
            && why.contains("banger vm restart writer"),
        "{why}"
    );
    fx.vmm.pause_on_io_error(false);
    fx.lifecycle
        .watch_running_vms(banger_host::vm_dir::ConsoleCap::DEFAULT);
    let again = fx.store.get_vm(&vm.id).unwrap().unwrap();
    assert_eq!((again.state, again.last_error), (VmState::Running, None));
    // A paused VM still stops (and its VMM ends).
    fx.vmm.pause_on_io_error(true);
    fx.lifecycle
        .watch_running_vms(banger_host::vm_dir::ConsoleCap::DEFAULT);
    let stopped = fx.lifecycle.stop(&vm.id, false).unwrap();
    assert_eq!(stopped.state, VmState::Stopped);
    assert!(!procfs::is_running(vm.pid.unwrap(), None));
}

#[test]
fn a_running_guests_console_log_is_kept_under_its_cap() {
    let fx = fixture();
    let loud = fx.create("loud");
    let quiet = fx.create("quiet");
    fx.lifecycle.stop(&quiet.id, false).unwrap();
    let cap = banger_host::vm_dir::ConsoleCap {
        max_bytes: 4096,
        keep_bytes: 512,
    };
    let loud_dir = banger_host::VmDir::new(fx.paths.vm_dir(&loud.id));
    let quiet_dir = banger_host::VmDir::new(fx.paths.vm_dir(&quiet.id));
    for dir in [&loud_dir, &quiet_dir] {
        std::fs::write(dir.console_log(), "x".repeat(10_000)).unwrap();
    }
    fx.lifecycle.watch_running_vms(cap);
    assert!(std::fs::metadata(loud_dir.console_log()).unwrap().len() < 512);
    assert!(loud_dir.console_log_trimmed().exists());
    // A stopped VM's log no longer grows; it is left as it is.
    assert_eq!(
        std::fs::metadata(quiet_dir.console_log()).unwrap().len(),
        10_000
    );
    assert!(!quiet_dir.console_log_trimmed().exists());
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

#[test]
fn rename_keeps_the_identity_and_moves_the_dns_name() {
    let fx = fixture();
    let web = fx.create("web");
    let other = fx.create("api");
    let renamed = fx.lifecycle.rename(&web.id, "web-2").unwrap();
    assert_eq!(renamed.name, "web-2");
    assert_eq!(
        (&renamed.id, renamed.guest_ip, &renamed.tap, renamed.pid),
        (&web.id, web.guest_ip, &web.tap, web.pid),
        "ID, IP, TAP and process stay"
    );
    assert_eq!(fx.dns.lookup("web-2"), web.guest_ip);
    assert_eq!(fx.dns.lookup("web"), None, "the old name no longer answers");
    assert_eq!(fx.store.get_vm(&web.id).unwrap().unwrap().name, "web-2");
    assert_eq!(fx.lifecycle.resolve("web-2").unwrap().id, web.id);

    // Refusals change nothing.
    let before = fx.snapshot();
    for (name, says) in [
        ("api", "already exists"),
        ("Web_2", "invalid VM name"),
        (&other.id[..4], "begins the ID of api"),
    ] {
        let err = fx.lifecycle.rename(&web.id, name).unwrap_err();
        assert!(err.to_string().contains(says), "{name}: {err}");
    }
    assert_eq!(fx.snapshot(), before);
    assert_eq!(fx.dns.lookup("web-2"), web.guest_ip);

    // The next boot's config drive has the new hostname.
    fx.lifecycle.stop(&web.id, false).unwrap();
    fx.lifecycle.start(&web.id).unwrap();
    let (_, files) = fx.disks.written().pop().unwrap();
    let hostname = files.iter().find(|f| f.path == "/etc/hostname").unwrap();
    assert!(
        matches!(&hostname.content, banger_host::config_drive::GuestContent::File { data, .. } if data == "web-2\n"),
        "the next boot's hostname: {hostname:?}"
    );
}

#[test]
fn network_nat_and_dns_follow_the_vm() {
    let fx = fixture();
    let vm = fx
        .lifecycle
        .create(&CreateVmParams {
            name: Some("web".into()),
            nat: true,
            ..Default::default()
        })
        .unwrap();
    assert_eq!(
        vm.guest_ip.map(|ip| ip.to_string()).as_deref(),
        Some("10.219.0.2")
    );
    let tap = vm.tap.clone().unwrap();
    assert_eq!(tap, format!("bg-{}", &vm.id[..10]));
    let state = fx.network.state();
    assert_eq!(state.bridge.as_deref(), Some("10.219.0.1/24"));
    assert!(state.taps.contains_key(&tap));
    assert_eq!(
        state
            .nat
            .get(vm.id.as_ref() as &str)
            .map(ToString::to_string)
            .as_deref(),
        Some("10.219.0.2")
    );
    assert_eq!(
        fx.dns.lookup("web").map(|ip| ip.to_string()).as_deref(),
        Some("10.219.0.2")
    );
    let launch = fx.vmm.launches().pop().unwrap();
    let net = launch.net.unwrap();
    assert_eq!(
        (net.tap.as_str(), net.mac.as_str()),
        (tap.as_str(), "06:00:0a:db:00:02")
    );

    // NAT toggles live on a running VM.
    fx.lifecycle
        .set(
            &vm.id,
            &SetVmParams {
                nat: Some(false),
                ..Default::default()
            },
        )
        .unwrap();
    assert!(fx.network.state().nat.is_empty());
    fx.lifecycle
        .set(
            &vm.id,
            &SetVmParams {
                nat: Some(true),
                ..Default::default()
            },
        )
        .unwrap();
    assert_eq!(fx.network.state().nat.len(), 1);

    // Stopped: no TAP, no rule; the IP and the DNS record stay.
    fx.lifecycle.stop(&vm.id, false).unwrap();
    assert!(fx.network.state().taps.is_empty() && fx.network.state().nat.is_empty());
    assert_eq!(
        fx.store
            .get_vm(&vm.id)
            .unwrap()
            .unwrap()
            .guest_ip
            .map(|ip| ip.to_string())
            .as_deref(),
        Some("10.219.0.2")
    );
    assert!(fx.dns.lookup("web").is_some());
    // A second VM gets the next address; the first keeps its own across restarts.
    let other = fx.create("db");
    assert_eq!(
        other.guest_ip.map(|ip| ip.to_string()).as_deref(),
        Some("10.219.0.3")
    );
    let again = fx.lifecycle.start(&vm.id).unwrap();
    assert_eq!(
        again.guest_ip.map(|ip| ip.to_string()).as_deref(),
        Some("10.219.0.2")
    );
    assert_eq!(
        fx.network.state().nat.len(),
        1,
        "NAT comes back with the VM"
    );

    // An exit from outside releases the TAP and the rules.
    banger_vmm::process::send_signal(again.pid.unwrap(), libc::SIGKILL).unwrap();
    wait_until("the exit to be recorded", || {
        fx.store.get_vm(&vm.id).unwrap().unwrap().state == VmState::Stopped
    });
    assert!(!fx.network.state().taps.contains_key(&tap));
    assert!(fx.network.state().nat.is_empty());

    // Delete frees the address and the name.
    fx.lifecycle.delete(&vm.id).unwrap();
    assert!(fx.dns.lookup("web").is_none());
    let reuse = fx.create("web2");
    assert_eq!(
        reuse.guest_ip.map(|ip| ip.to_string()).as_deref(),
        Some("10.219.0.2")
    );
}

#[test]
fn reconcile_repairs_rules_and_removes_orphans() {
    let fx = fixture();
    let vm = fx
        .lifecycle
        .create(&CreateVmParams {
            name: Some("keep".into()),
            nat: true,
            ..Default::default()
        })
        .unwrap();
    let idle = fx.create("idle");
    fx.lifecycle.stop(&idle.id, false).unwrap();
    let idle_tap = idle.tap.clone().unwrap();
    fx.lifecycle.retire();
    fx.network.with_state(|state| {
        state.nat.clear(); // a rule deleted by hand
        state
            .nat
            .insert("ghost".into(), "10.219.0.99".parse().unwrap()); // an orphan rule
        state.taps.insert(idle_tap.clone(), 0); // a stopped VM's TAP left behind
        state.taps.insert("bg-f0reign000".into(), 0); // another daemon's TAP
    });
    let dns = crate::capabilities::DnsTable::default();
    let fresh = build(&fx.paths, &fx.store, &fx.vmm, &fx.disks, &fx.network, &dns);
    let report = fresh.reconcile().unwrap();
    assert_eq!(report.adopted, ["keep"]);
    assert!(report.failed.is_empty(), "{:?}", report.failed);
    let state = fx.network.state();
    assert_eq!(
        state.nat.keys().collect::<Vec<_>>(),
        [&vm.id.to_string()],
        "missing rule back, orphan gone"
    );
    assert!(
        !state.taps.contains_key(&idle_tap),
        "the stopped VM's TAP is gone"
    );
    assert!(
        state.taps.contains_key(vm.tap.as_ref().unwrap()),
        "the running VM keeps its TAP"
    );
    assert!(
        state.taps.contains_key("bg-f0reign000"),
        "a TAP this daemon never made is left alone"
    );
    assert_eq!(
        dns.lookup("keep").map(|ip| ip.to_string()).as_deref(),
        Some("10.219.0.2"),
        "DNS rebuilt"
    );
}

#[test]
fn refs_resolve_by_name_then_unique_prefix() {
    let fx = fixture();
    for (id, name) in [
        ("aa12bb34cc", "calm-otter"),
        ("aa12ff00dd", "buildbox"),
        ("cc56dd78ee", "api-1"),
    ] {
        let mut vm = crate::store::tests::sample_vm(id, name);
        vm.vsock_cid = None;
        fx.store.insert_vm(&vm).unwrap();
    }
    assert_eq!(fx.lifecycle.resolve("calm-otter").unwrap().id, "aa12bb34cc");
    assert_eq!(fx.lifecycle.resolve("cc5").unwrap().name, "api-1");
    let msg = fx.lifecycle.resolve("aa12").unwrap_err().to_string();
    assert!(
        msg.contains("calm-otter (ID aa12bb34)") && msg.contains("buildbox (ID aa12ff00)"),
        "{msg}"
    );
}

/// The lifecycle with the real `ip`/`iptables` in a throwaway network
/// namespace (root only): devices and rules exist exactly while they should.
#[test]
fn real_network_follows_the_vm_lifecycle() {
    if !banger_testkit::require(
        banger_testkit::is_root() && banger_testkit::have_tool("iptables"),
        "real_network_follows_the_vm_lifecycle",
        "needs root and iptables (CI has both)",
    ) {
        return;
    }
    use banger_host::net::HostNetwork;
    use banger_host::process::{Cmd, NetnsRunner, Runner};
    let namespace = format!("banger-lc-{}", std::process::id());
    let runner = Arc::new(NetnsRunner::create(&namespace).unwrap());
    let real = Arc::new(banger_host::net::IpTablesNetwork::new(
        runner.clone(),
        false,
    ));
    let fx = fixture();
    let lifecycle = build(&fx.paths, &fx.store, &fx.vmm, &fx.disks, &real, &fx.dns);
    let taps = || real.list_taps().unwrap();
    let banger_rules = || -> Vec<String> {
        let text = runner.run(&Cmd::new("iptables-save")).unwrap();
        text.lines()
            .filter(|l| l.contains("banger:"))
            .map(str::to_owned)
            .collect()
    };

    let vm = lifecycle
        .create(&CreateVmParams {
            name: Some("web".into()),
            nat: true,
            ..Default::default()
        })
        .unwrap();
    let tap = vm.tap.clone().unwrap();
    assert_eq!(taps(), std::slice::from_ref(&tap));
    assert_eq!(banger_rules().len(), 3, "{:?}", banger_rules());
    lifecycle
        .set(
            &vm.id,
            &SetVmParams {
                nat: Some(false),
                ..Default::default()
            },
        )
        .unwrap();
    assert!(banger_rules().is_empty(), "--no-nat leaves no rule");
    lifecycle
        .set(
            &vm.id,
            &SetVmParams {
                nat: Some(true),
                ..Default::default()
            },
        )
        .unwrap();
    lifecycle.stop(&vm.id, false).unwrap();
    assert!(
        taps().is_empty() && banger_rules().is_empty(),
        "stop leaves no TAP and no rule"
    );
    lifecycle.start(&vm.id).unwrap();
    assert_eq!((taps().len(), banger_rules().len()), (1, 3));

    // A rule deleted by hand comes back, and an orphan goes, on daemon restart.
    lifecycle.retire();
    runner
        .run(&Cmd::new("iptables").args(["-t", "nat", "-F", "BANGER-POSTROUTING"]))
        .unwrap();
    runner
        .run(&Cmd::new("iptables").args([
            "-t",
            "nat",
            "-A",
            "BANGER-POSTROUTING",
            "-s",
            "10.219.0.99/32",
            "-m",
            "comment",
            "--comment",
            "banger:default:ghost",
            "-j",
            "MASQUERADE",
        ]))
        .unwrap();
    // Another daemon's rule and TAP on the same host: never this one's to prune.
    let foreign = [
        "-t",
        "nat",
        "-A",
        "BANGER-POSTROUTING",
        "-s",
        "10.219.0.98/32",
        "-m",
        "comment",
        "--comment",
        "banger:otherdaemon:x",
        "-j",
        "MASQUERADE",
    ];
    runner.run(&Cmd::new("iptables").args(foreign)).unwrap();
    runner
        .run(&Cmd::new("ip").args(["tuntap", "add", "dev", "bg-f0reign000", "mode", "tap"]))
        .unwrap();
    assert_eq!(banger_rules().len(), 4);
    let restarted = build(&fx.paths, &fx.store, &fx.vmm, &fx.disks, &real, &fx.dns);
    let report = restarted.reconcile().unwrap();
    assert!(report.failed.is_empty(), "{:?}", report.failed);
    let rules = banger_rules();
    let ours: Vec<&String> = rules
        .iter()
        .filter(|r| r.contains("banger:default:"))
        .collect();
    assert_eq!(
        ours.len(),
        3,
        "the hand-deleted rule is back and the orphan gone: {rules:?}"
    );
    assert!(
        ours.iter().all(|r| r.contains(&*vm.id)) && ours.iter().any(|r| r.contains("MASQUERADE")),
        "{rules:?}"
    );
    assert!(
        rules.iter().any(|r| r.contains("banger:otherdaemon:x")),
        "another daemon's rule stays: {rules:?}"
    );
    assert!(
        taps().contains(&"bg-f0reign000".to_owned()),
        "another daemon's TAP stays"
    );

    restarted.delete(&vm.id).unwrap();
    assert_eq!(
        taps(),
        ["bg-f0reign000"],
        "delete leaves no TAP of this daemon's"
    );
    assert!(
        banger_rules()
            .iter()
            .all(|r| !r.contains("banger:default:")),
        "delete leaves no rule of this daemon's"
    );
}

#[test]
fn preflight_refuses_create_and_start_before_any_change() {
    use banger_proto::check::Check;
    let fx = fixture();
    let vm = fx.create("ready");
    fx.lifecycle.stop(&vm.id, false).unwrap();
    fx.vmm.set_checks(vec![Check::fail(
        "/dev/kvm",
        "does not exist",
        "load kvm_intel or kvm_amd",
    )]);
    let before = fx.snapshot();
    let err = fx
        .lifecycle
        .create(&CreateVmParams {
            name: Some("blocked".into()),
            ..Default::default()
        })
        .unwrap_err();
    assert_eq!(
        err.to_string(),
        "cannot create blocked: the host is not ready:\n  /dev/kvm: does not exist: load kvm_intel or kvm_amd"
    );
    let err = fx.lifecycle.start(&vm.id).unwrap_err();
    assert!(
        err.to_string()
            .starts_with("cannot start ready: the host is not ready"),
        "{err}"
    );
    assert_eq!(fx.snapshot(), before, "nothing changed");
    assert!(fx.network.state().taps.is_empty());
}

#[test]
fn guest_config_is_written_to_the_config_drive_before_each_boot() {
    use banger_host::config_drive::GuestContent;
    let fx = fixture();
    let vm = fx.create("web");
    let text = |files: &[banger_host::config_drive::GuestFile], path: &str| -> Option<String> {
        files
            .iter()
            .find(|f| f.path == path)
            .map(|f| match &f.content {
                GuestContent::File { data, .. } => data.clone(),
                GuestContent::Symlink(target) => format!("-> {target}"),
            })
    };
    let written = fx.disks.written();
    assert_eq!(written.len(), 1);
    let (image, files) = &written[0];
    let drive = fx.paths.vm_dir(&vm.id).join("config.tar");
    assert_eq!(image, &drive);
    assert!(drive.is_file(), "the drive exists while the VM runs");
    assert_eq!(text(files, "/etc/hostname").as_deref(), Some("web\n"));
    assert!(
        text(files, "/etc/systemd/network/10-banger-eth0.network")
            .unwrap()
            .contains("Address=10.219.0.2/24")
    );
    assert_eq!(
        text(files, "/etc/banger/authorized_keys").as_deref(),
        Some("ssh-ed25519 AAAAtest banger-test\n")
    );
    assert!(
        text(files, "/etc/systemd/system/root.mount")
            .unwrap()
            .contains("What=LABEL=banger-work")
    );
    assert!(
        text(
            files,
            "/etc/systemd/system/multi-user.target.wants/banger-vsock-pingd.service"
        )
        .is_some()
    );

    // A changed setting reaches the guest at its next start.
    fx.lifecycle.stop(&vm.id, false).unwrap();
    assert!(!drive.exists(), "a stopped VM has no config drive");
    fx.lifecycle
        .set(
            &vm.id,
            &SetVmParams {
                nat: Some(true),
                ..Default::default()
            },
        )
        .unwrap();
    fx.lifecycle.start(&vm.id).unwrap();
    assert_eq!(
        fx.disks.written().len(),
        2,
        "rendered again for the new boot"
    );
}

#[test]
fn a_failed_start_leaves_no_config_drive_and_no_early_vmm() {
    let fx = fixture();
    let vm = fx.create("web");
    fx.lifecycle.stop(&vm.id, false).unwrap();
    let drive = fx.paths.vm_dir(&vm.id).join("config.tar");
    let earlier = fx.vmm.prepared();
    for inject in [
        Box::new(|fx: &Fixture| fx.network.fail_on(NetOp::CreateTap)) as Box<dyn Fn(&Fixture)>,
        Box::new(|fx: &Fixture| fx.vmm.fail_on(FakeOp::Launch)),
    ] {
        inject(&fx);
        fx.lifecycle.start(&vm.id).unwrap_err();
        assert!(
            !drive.exists(),
            "the config drive went with the failed boot"
        );
        fx.assert_early_vmms_gone(&earlier, "a failed start");
        fx.network.clear_failures();
        fx.vmm.clear_failures();
    }
    fx.lifecycle.start(&vm.id).unwrap();
    assert!(drive.is_file());
}

/// A daemon "killed" at `step` while running `op` (its thread parks there,
/// holding what it started, as a SIGKILLed process leaves it), then a new
/// daemon's lifecycle over the same store and host.
fn crash_then_restart(
    fx: &Fixture,
    daemon: &dyn Fn() -> Arc<Lifecycle>,
    step: &str,
    op: impl FnOnce(Arc<Lifecycle>) + Send + 'static,
) -> ReconcileReport {
    let parked = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let doomed = daemon().with_crash(Crash::Park(step.to_owned(), parked.clone()));
    // The doomed daemon owns the VMs (it watches their exits) before it acts.
    fx.lifecycle.retire();
    doomed.reconcile().unwrap();
    let worker = doomed.clone();
    std::thread::spawn(move || op(worker));
    wait_until(&format!("the crash at {step}"), || {
        parked.load(std::sync::atomic::Ordering::SeqCst)
    });
    doomed.retire();
    daemon().reconcile().unwrap()
}

/// What every crash must leave: each VM whole (running with a live,
/// answering VMM and its TAP, or stopped with neither) or gone without a
/// trace, and an intact store.
fn assert_consistent(fx: &Fixture, taps: &[String], step: &str) {
    use banger_vmm::Vmm;
    let rows = fx.store.list_vms().unwrap();
    assert_eq!(fx.store.integrity_check().unwrap(), "ok", "{step}");
    let mut dirs: Vec<String> = std::fs::read_dir(&fx.paths.vms_dir)
        .unwrap()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    dirs.sort();
    let mut ids: Vec<String> = rows.iter().map(|vm| vm.id.to_string()).collect();
    ids.sort();
    assert_eq!(dirs, ids, "{step}: a directory for each VM, and no other");
    for vm in &rows {
        let dir = fx.paths.vm_dir(&vm.id);
        let files = banger_host::VmDir::new(&dir);
        for disk in [files.overlay(), files.work_disk()] {
            assert!(disk.exists(), "{step}: {} lost {}", vm.name, disk.display());
        }
        assert!(
            !files.saved_state_partial().exists(),
            "{step}: {} keeps half a saved state",
            vm.name
        );
        assert!(
            files.discarded_states().is_empty(),
            "{step}: {} keeps a restored state",
            vm.name
        );
        if vm.state != VmState::Suspended {
            assert!(
                !files.saved_state().exists(),
                "{step}: {} is {} with a saved state",
                vm.name,
                vm.state
            );
        }
        match vm.state {
            VmState::Running => {
                let pid = vm.pid.unwrap();
                assert!(fx.vmm.responds(&dir, pid), "{step}: {} runs", vm.name);
                assert!(
                    taps.contains(vm.tap.as_ref().unwrap()),
                    "{step}: {}'s TAP",
                    vm.name
                );
            }
            VmState::Suspended => {
                assert!(vm.pid.is_none(), "{step}: {}", vm.name);
                assert!(files.saved_state().is_dir(), "{step}: {}'s state", vm.name);
                assert!(
                    !taps.contains(vm.tap.as_ref().unwrap()),
                    "{step}: {}'s TAP",
                    vm.name
                );
            }
            VmState::Stopped => {
                assert!(vm.pid.is_none(), "{step}: {}", vm.name);
                assert!(
                    !taps.contains(vm.tap.as_ref().unwrap()),
                    "{step}: {}'s TAP",
                    vm.name
                );
            }
            other => panic!("{step}: {} is left {other:?}", vm.name),
        }
    }
    // Every VMM ever started is a running VM's, or gone.
    for pid in fx.vmm.prepared() {
        let owned = rows
            .iter()
            .any(|vm| vm.state == VmState::Running && vm.pid == Some(pid));
        if !owned {
            wait_until(&format!("{step}: VMM {pid} to be gone"), || {
                !procfs::is_running(pid, None)
            });
        }
    }
    // No TAP without a running VM.
    for tap in taps {
        assert!(
            rows.iter()
                .any(|vm| vm.state == VmState::Running && vm.tap.as_ref() == Some(tap)),
            "{step}: TAP {tap} has no running VM"
        );
    }
}

type CrashOp = fn(Arc<Lifecycle>, String);

/// How the existing VM is before the crashing action.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Before {
    Running,
    Stopped,
    Suspended,
}

/// (step, op, how the existing VM is first, whether the crashed
/// create's VM must be gone, the state the existing VM must end in when
/// the step decides it)
fn crash_cases() -> Vec<(&'static str, CrashOp, Before, bool, Option<VmState>)> {
    type Op = CrashOp;
    let create: Op = |lc, _| {
        let _ = lc.create(&CreateVmParams {
            name: Some("victim".into()),
            ..Default::default()
        });
    };
    let start: Op = |lc, id| {
        let _ = lc.start(&id);
    };
    let stop: Op = |lc, id| {
        let _ = lc.stop(&id, false);
    };
    let set: Op = |lc, id| {
        let _ = lc.set(
            &id,
            &SetVmParams {
                disk_size: Some("32G".into()),
                ..Default::default()
            },
        );
    };
    let delete: Op = |lc, id| {
        let _ = lc.delete(&id);
    };
    let rename: Op = |lc, id| {
        let _ = lc.rename(&id, "renamed");
    };
    let suspend: Op = |lc, id| {
        let _ = lc.suspend(&id);
    };
    let snapshot: Op = |lc, id| {
        let _ = lc.snapshot_create(&id, Some("mid"));
    };
    let branch: Op = |lc, id| {
        let _ = lc.branch(&id, "offshoot", true);
    };
    let branch_with_memory: Op = |lc, id| {
        let _ = lc.branch(&id, "offshoot", false);
    };
    use Before::*;
    vec![
        ("create:reserved", create, Running, true, None),
        ("create:provisioned", create, Running, true, None),
        ("boot:launched", create, Running, true, None),
        ("boot:launched", start, Stopped, false, None),
        ("stop:stopping", stop, Running, false, None),
        ("set:applied", set, Stopped, false, None),
        ("rename:applied", rename, Running, false, None),
        ("delete:moved", delete, Running, false, None),
        ("delete:forgotten", delete, Running, false, None),
        // Before the save: the guest runs on.
        (
            "suspend:saving",
            suspend,
            Running,
            false,
            Some(VmState::Running),
        ),
        // The state is whole but the VMM not yet ended: suspended.
        (
            "suspend:saved",
            suspend,
            Running,
            false,
            Some(VmState::Suspended),
        ),
        // A resume whose guest was let run (the state consumed): running.
        (
            "boot:launched",
            start,
            Suspended,
            false,
            Some(VmState::Running),
        ),
        // Mid-snapshot, the guest stopped for the copy: it runs on.
        (
            "snapshot:saved",
            snapshot,
            Running,
            false,
            Some(VmState::Running),
        ),
        // Mid-branch, the copy staged: the source runs on, no branch.
        (
            "branch:copied",
            branch,
            Running,
            false,
            Some(VmState::Running),
        ),
        // A branch with memory, its source stopped for the save and the
        // copy: the source runs on, no branch.
        (
            "branch:saved",
            branch_with_memory,
            Running,
            false,
            Some(VmState::Running),
        ),
    ]
}

/// Runs every crash case on a fresh fixture; `host` gives the network a
/// daemon of that fixture uses and the TAPs that exist on it.
/// A fresh daemon of a fixture, and the TAPs that exist on its host.
type CrashHost = (
    Box<dyn Fn() -> Arc<Lifecycle>>,
    Box<dyn Fn() -> Vec<String>>,
);

fn crash_matrix(host: &dyn Fn(&Fixture) -> CrashHost) {
    for (step, op, before, victim_removed, ends_as) in crash_cases() {
        let fx = fixture();
        let (daemon, taps) = host(&fx);
        let first = daemon();
        fx.lifecycle.retire();
        let existing = create_on(&first, "existing");
        match before {
            Before::Running => {}
            Before::Stopped => {
                first.stop(&existing.id, false).unwrap();
            }
            Before::Suspended => {
                first.suspend(&existing.id).unwrap();
            }
        }
        first.retire();
        let id = existing.id.to_string();
        let report = crash_then_restart(&fx, &*daemon, step, move |lc| op(lc, id));
        assert!(report.failed.is_empty(), "{step}: {report:?}");
        assert_consistent(&fx, &taps(), step);
        if victim_removed {
            assert_eq!(report.removed, ["victim"], "{step}");
        }
        if let Some(state) = ends_as {
            let found = fx.store.get_vm(&existing.id).unwrap().unwrap().state;
            assert_eq!(found, state, "{step} from {before:?}");
        }
        match step {
            "delete:moved" | "delete:forgotten" => assert!(
                fx.store.get_vm(&existing.id).unwrap().is_none(),
                "{step}: the delete is finished"
            ),
            _ => {}
        }
    }
}

#[test]
fn a_daemon_killed_at_any_step_leaves_every_vm_whole_or_gone() {
    crash_matrix(&|fx| {
        let (paths, store, vmm, disks, network, dns) = (
            fx.paths.clone(),
            fx.store.clone(),
            fx.vmm.clone(),
            fx.disks.clone(),
            fx.network.clone(),
            fx.dns.clone(),
        );
        let seen = fx.network.clone();
        (
            Box::new(move || build(&paths, &store, &vmm, &disks, &network, &dns)),
            Box::new(move || seen.state().taps.keys().cloned().collect()),
        )
    });
}

/// The same crashes with real TAPs and iptables rules, as root, in a
/// throwaway network namespace.
#[test]
fn a_daemon_killed_at_any_step_leaks_no_real_tap_or_rule() {
    use banger_host::net::HostNetwork;
    use banger_host::process::{Cmd, NetnsRunner, Runner};
    if !banger_testkit::require(
        banger_testkit::is_root() && banger_testkit::have_tool("iptables"),
        "a_daemon_killed_at_any_step_leaks_no_real_tap_or_rule",
        "needs root and iptables (CI has both)",
    ) {
        return;
    }
    let counter = std::sync::atomic::AtomicU32::new(0);
    let names = std::sync::Mutex::new(Vec::new());
    crash_matrix(&|fx| {
        let n = counter.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        let name = format!("banger-crash-{}-{n}", std::process::id());
        names.lock().unwrap().push(name.clone());
        let runner = Arc::new(NetnsRunner::create(&name).unwrap());
        let real = Arc::new(banger_host::net::IpTablesNetwork::new(
            runner.clone(),
            false,
        ));
        let (paths, store, vmm, disks, dns) = (
            fx.paths.clone(),
            fx.store.clone(),
            fx.vmm.clone(),
            fx.disks.clone(),
            fx.dns.clone(),
        );
        let (net, rules_runner) = (real.clone(), runner.clone());
        (
            Box::new(move || build(&paths, &store, &vmm, &disks, &real, &dns)),
            Box::new(move || {
                let rules = rules_runner.run(&Cmd::new("iptables-save")).unwrap();
                assert!(
                    !rules
                        .lines()
                        .any(|l| l.contains("banger:") && l.contains("victim")),
                    "{rules}"
                );
                net.list_taps().unwrap()
            }),
        )
    });
    // The parked "killed" daemons still hold their runners: remove the
    // namespaces by name.
    for name in names.into_inner().unwrap() {
        let _ = std::process::Command::new("ip")
            .args(["netns", "del", &name])
            .status();
    }
}

#[test]
fn a_vm_whose_ip_left_the_pool_is_refused_with_the_fix() {
    let fx = fixture();
    let vm = fx.create("moved");
    fx.lifecycle.stop(&vm.id, false).unwrap();
    // The next daemon runs with another pool (the default moved off a new
    // host route, or config.toml changed).
    let config = banger_host::Config {
        guest_ip_pool: banger_host::net::Pool::parse("10.219.1.0/24").unwrap(),
        ..Default::default()
    };
    let deps = fake_deps(&fx.vmm, &fx.disks, &fx.network);
    let moved = build_with(&fx.paths, &fx.store, &config, deps, &fx.dns);
    let err = format!(
        "{:#}",
        anyhow::Error::from(moved.start(&vm.id).unwrap_err())
    );
    assert!(
        err.contains("outside this daemon's pool 10.219.1.0/24")
            && err.contains("set guest_ip_pool back"),
        "{err}"
    );
    assert_eq!(
        fx.store.get_vm(&vm.id).unwrap().unwrap().state,
        VmState::Stopped
    );
}

#[test]
fn a_move_the_state_machine_forbids_is_refused_and_stores_nothing() {
    let fx = fixture();
    let vm = fx.create("steady");
    let mut stopped = fx.lifecycle.stop(&vm.id, false).unwrap();
    let err = fx
        .lifecycle
        .transition(&mut stopped, VmState::Running)
        .unwrap_err();
    assert_eq!(err.to_string(), "steady cannot go from stopped to running");
    assert_eq!(err.kind(), banger_proto::ErrorKind::Conflict);
    assert_eq!(stopped.state, VmState::Stopped);
    assert_eq!(
        fx.store.get_vm(&vm.id).unwrap().unwrap().state,
        VmState::Stopped
    );
}

/// A built image, as `image build` will register it: its files in its own
/// directory under the state dir.
fn put_built_image(fx: &Fixture, name: &str) -> PathBuf {
    let dir = fx.paths.images_dir.join(name);
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join("rootfs.ext4"), "built").unwrap();
    let default = fx.store.get_image("default").unwrap().unwrap();
    fx.store
        .put_image(&Image {
            name: name.into(),
            rootfs: dir.join("rootfs.ext4"),
            managed: true,
            ..default
        })
        .unwrap();
    dir
}

#[test]
fn the_default_image_cannot_be_deleted() {
    let fx = fixture();
    let err = fx.lifecycle.delete_image("default").unwrap_err();
    assert_eq!(err.kind(), banger_proto::ErrorKind::InvalidInput);
    assert!(
        err.to_string()
            .contains("cannot be deleted: set default_rootfs"),
        "{err}"
    );
    assert!(fx.store.get_image("default").unwrap().is_some());
    let err = fx.lifecycle.delete_image("nope").unwrap_err();
    assert!(err.to_string().contains("no image named \"nope\""), "{err}");
}

#[test]
fn an_image_in_use_is_refused_naming_its_vms_and_deleted_once_free() {
    let fx = fixture();
    let dir = put_built_image(&fx, "dev-img");
    let on_image = |name: &str| {
        fx.lifecycle
            .create(&CreateVmParams {
                name: Some(name.into()),
                image: Some("dev-img".into()),
                ..Default::default()
            })
            .unwrap()
    };
    let (a, b) = (on_image("user-a"), on_image("user-b"));
    let err = fx.lifecycle.delete_image("dev-img").unwrap_err();
    assert_eq!(err.kind(), banger_proto::ErrorKind::Conflict);
    assert_eq!(
        err.to_string(),
        "image \"dev-img\" is used by user-a, user-b: delete those VMs first (`banger vm delete user-a user-b`)"
    );
    assert!(dir.join("rootfs.ext4").exists(), "files stay under the VMs");
    fx.lifecycle.delete(&a.id).unwrap();
    fx.lifecycle.delete(&b.id).unwrap();
    let deleted = fx.lifecycle.delete_image("dev-img").unwrap();
    assert_eq!(deleted.name, "dev-img");
    assert!(!dir.exists() && !dir.with_extension("deleting").exists());
    assert!(fx.store.get_image("dev-img").unwrap().is_none());
    let err = fx
        .lifecycle
        .create(&CreateVmParams {
            name: Some("late".into()),
            image: Some("dev-img".into()),
            ..Default::default()
        })
        .unwrap_err();
    assert!(
        err.to_string().contains("no image named \"dev-img\""),
        "{err}"
    );
}

#[test]
fn a_create_that_looked_up_a_since_deleted_image_stops_at_reserve() {
    let fx = fixture();
    put_built_image(&fx, "gone-img");
    let template = fx.create("template");
    fx.store.delete_image("gone-img").unwrap();
    let mut record = template.clone();
    record.image = "gone-img".into();
    let err = fx
        .lifecycle
        .reserve(Some(VmName::parse("orphan").unwrap()), record)
        .unwrap_err();
    assert!(
        err.to_string().contains("no image named \"gone-img\""),
        "{err}"
    );
    assert!(
        fx.store
            .list_vms()
            .unwrap()
            .iter()
            .all(|vm| vm.name != "orphan"),
        "no row was inserted"
    );
}

#[test]
fn what_an_interrupted_image_delete_left_goes_at_the_next_start() {
    let fx = fixture();
    let left = fx.paths.images_dir.join("half.deleting");
    std::fs::create_dir_all(&left).unwrap();
    std::fs::write(left.join("rootfs.ext4"), "x").unwrap();
    fx.new_lifecycle().reconcile().unwrap();
    assert!(!left.exists());
}

/// A lifecycle over the fixture's store and host whose published ports
/// are visible: a daemon (re)started with no listeners open.
fn publishing_daemon(fx: &Fixture) -> (Arc<Lifecycle>, Arc<FakePublisher>) {
    let ports = Arc::new(FakePublisher::default());
    let deps = crate::Deps {
        ports: ports.clone(),
        ..fake_deps(&fx.vmm, &fx.disks, &fx.network)
    };
    let config = banger_host::Config::default();
    let lifecycle = build_with(&fx.paths, &fx.store, &config, deps, &fx.dns);
    lifecycle.reconcile().unwrap();
    (lifecycle, ports)
}

fn mapping(text: &str) -> banger_proto::PortMapping {
    text.parse().unwrap()
}

#[test]
fn published_ports_are_open_exactly_while_the_vm_runs() {
    let fx = fixture();
    let (lc, ports) = publishing_daemon(&fx);
    let vm = lc
        .create(&CreateVmParams {
            name: Some("web".into()),
            publish: vec![mapping("8080:80"), mapping("0.0.0.0:2222:22")],
            ..Default::default()
        })
        .unwrap();
    let mut open = ports.open_for(&vm.id);
    open.sort_by_key(|m| m.host.port());
    assert_eq!(open, [mapping("0.0.0.0:2222:22"), mapping("8080:80")]);
    assert_eq!(
        fx.store.get_vm(&vm.id).unwrap().unwrap().publish,
        vm.publish
    );

    lc.stop(&vm.id, false).unwrap();
    assert!(ports.all_open().is_empty(), "stopped: nothing listens");
    lc.start(&vm.id).unwrap();
    assert_eq!(ports.open_for(&vm.id).len(), 2);
    lc.delete(&vm.id).unwrap();
    assert!(ports.all_open().is_empty(), "deleted: nothing listens");
}

#[test]
fn a_host_port_another_vm_publishes_is_refused_naming_it() {
    let fx = fixture();
    let (lc, ports) = publishing_daemon(&fx);
    lc.create(&CreateVmParams {
        name: Some("web".into()),
        publish: vec![mapping("0.0.0.0:8080:80")],
        ..Default::default()
    })
    .unwrap();
    let before = fx.snapshot();
    let err = lc
        .create(&CreateVmParams {
            name: Some("api".into()),
            publish: vec![mapping("8080:3000")],
            ..Default::default()
        })
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("127.0.0.1:8080 is already published by VM web")
            && err.contains("banger vm set web --unpublish 0.0.0.0:8080"),
        "{err}"
    );
    let err = lc
        .create(&CreateVmParams {
            name: Some("api".into()),
            publish: vec![mapping("9000:80"), mapping("9000:81")],
            ..Default::default()
        })
        .unwrap_err()
        .to_string();
    assert!(err.contains("both listen on host port 9000"), "{err}");
    assert_eq!(fx.snapshot(), before, "refused creates changed nothing");
    assert_eq!(ports.all_open().len(), 1);
}

#[test]
fn a_host_port_in_use_fails_the_start_and_leaves_nothing_open() {
    let fx = fixture();
    let (lc, ports) = publishing_daemon(&fx);
    let vm = lc
        .create(&CreateVmParams {
            name: Some("web".into()),
            publish: vec![mapping("8080:80"), mapping("8443:443")],
            ..Default::default()
        })
        .unwrap();
    lc.stop(&vm.id, false).unwrap();
    ports.take(mapping("8443:443").host);
    let err = lc.start(&vm.id).unwrap_err();
    let text = error_text(&err);
    assert!(
        text.contains("publishing 127.0.0.1:8443:443")
            && text.contains("127.0.0.1:8443 is already in use by someone-else (pid 1)"),
        "{text}"
    );
    assert!(ports.all_open().is_empty(), "8080 was closed again");
    let after = fx.store.get_vm(&vm.id).unwrap().unwrap();
    assert_eq!(after.state, VmState::Stopped);
    assert!(after.pid.is_none());
}

#[test]
fn set_changes_published_ports_live_and_undoes_a_failed_change() {
    let fx = fixture();
    let (lc, ports) = publishing_daemon(&fx);
    let vm = lc
        .create(&CreateVmParams {
            name: Some("web".into()),
            publish: vec![mapping("8080:80")],
            ..Default::default()
        })
        .unwrap();
    let changed = lc
        .set(
            &vm.id,
            &SetVmParams {
                publish: vec![mapping("2222:22")],
                unpublish: vec![mapping("8080:80").host],
                ..Default::default()
            },
        )
        .unwrap();
    assert_eq!(changed.publish, [mapping("2222:22")]);
    assert_eq!(ports.open_for(&vm.id), [mapping("2222:22")]);

    // Adding a taken port and NAT at once: neither happens.
    ports.take(mapping("9000:90").host);
    let before = fx.store.get_vm(&vm.id).unwrap().unwrap();
    let err = lc
        .set(
            &vm.id,
            &SetVmParams {
                nat: Some(true),
                no_publish: true,
                publish: vec![mapping("9000:90")],
                ..Default::default()
            },
        )
        .unwrap_err();
    assert!(
        error_text(&err).contains("127.0.0.1:9000 is already in use"),
        "{err}"
    );
    assert_eq!(fx.store.get_vm(&vm.id).unwrap().unwrap(), before);
    assert_eq!(
        ports.open_for(&vm.id),
        [mapping("2222:22")],
        "the old port is back"
    );
    assert!(
        fx.network.state().nat.is_empty(),
        "NAT was undone: {:?}",
        fx.network.state().nat
    );

    let cleared = lc
        .set(
            &vm.id,
            &SetVmParams {
                no_publish: true,
                ..Default::default()
            },
        )
        .unwrap();
    assert!(cleared.publish.is_empty() && ports.all_open().is_empty());
}

#[test]
fn a_restarted_daemon_reopens_the_ports_of_running_vms() {
    let fx = fixture();
    let (first, _gone_with_it) = publishing_daemon(&fx);
    let vm = first
        .create(&CreateVmParams {
            name: Some("web".into()),
            publish: vec![mapping("8080:80")],
            ..Default::default()
        })
        .unwrap();
    let stopped = first
        .create(&CreateVmParams {
            name: Some("idle".into()),
            publish: vec![mapping("8081:80")],
            ..Default::default()
        })
        .unwrap();
    first.stop(&stopped.id, false).unwrap();
    drop(first);
    let (_second, ports) = publishing_daemon(&fx);
    assert_eq!(ports.all_open(), [(vm.id.to_string(), mapping("8080:80"))]);
}

#[test]
fn pause_freezes_in_place_and_the_io_watcher_leaves_it_paused() {
    let fx = fixture();
    let vm = fx.create("frozen");
    let dir = fx.paths.vm_dir(&vm.id);
    let paused = fx.lifecycle.pause(&vm.id).unwrap();
    assert_eq!(paused.state, VmState::Paused);
    assert_eq!(paused.pid, vm.pid, "the VMM process stays");
    fx.lifecycle
        .watch_running_vms(banger_host::vm_dir::ConsoleCap::DEFAULT);
    assert_eq!(fx.lifecycle.record(&vm.id).unwrap().state, VmState::Paused);
    // Twice is once.
    fx.lifecycle.pause(&vm.id).unwrap();
    assert_eq!(fx.vmm.pauses(), [(dir.clone(), true)]);

    let running = fx.lifecycle.unpause(&vm.id).unwrap();
    assert_eq!(running.state, VmState::Running);
    assert_eq!(fx.vmm.pauses(), [(dir.clone(), true), (dir.clone(), false)]);

    // A VMM that refuses changes nothing.
    fx.vmm.fail_on(FakeOp::Pause);
    let err = fx.lifecycle.pause(&vm.id).unwrap_err();
    assert!(
        error_text(&err).contains("pausing frozen"),
        "{}",
        error_text(&err)
    );
    assert_eq!(fx.lifecycle.record(&vm.id).unwrap().state, VmState::Running);
    fx.vmm.clear_failures();

    // A paused guest is thawed so it can power off.
    fx.lifecycle.pause(&vm.id).unwrap();
    let stopped = fx.lifecycle.stop(&vm.id, false).unwrap();
    assert_eq!(stopped.state, VmState::Stopped);
    assert_eq!(fx.vmm.pauses().last(), Some(&(dir, false)));
    let err = fx.lifecycle.pause(&vm.id).unwrap_err();
    assert_eq!(
        err.to_string(),
        "frozen is not running: start it with `banger vm start frozen`"
    );

    // Paused by the VMM on a failed disk write: stopped without a thaw,
    // which would retry the write on a full disk.
    fx.lifecycle.start(&vm.id).unwrap();
    fx.vmm.pause_on_io_error(true);
    fx.lifecycle
        .watch_running_vms(banger_host::vm_dir::ConsoleCap::DEFAULT);
    assert_eq!(fx.lifecycle.record(&vm.id).unwrap().state, VmState::Paused);
    let before = fx.vmm.pauses().len();
    fx.lifecycle.stop(&vm.id, false).unwrap();
    assert_eq!(fx.vmm.pauses().len(), before, "no thaw");
}

#[test]
fn suspend_saves_ends_the_vmm_and_start_resumes_from_the_state() {
    let fx = fixture();
    let vm = fx.create("napper");
    let dir = fx.paths.vm_dir(&vm.id);
    let files = banger_host::VmDir::new(&dir);
    let pid = vm.pid.unwrap();
    let suspended = fx.lifecycle.suspend(&vm.id).unwrap();
    assert_eq!(suspended.state, VmState::Suspended);
    assert_eq!(suspended.pid, None);
    wait_until("the VMM to end", || !procfs::is_running(pid, None));
    assert!(
        files
            .saved_state()
            .join(banger_vmm::fake::STATE_FILE)
            .is_file()
    );
    assert!(!files.saved_state_partial().exists());
    assert!(
        fx.network.state().taps.is_empty(),
        "the TAP went with the VMM"
    );
    // Twice is once.
    assert_eq!(
        fx.lifecycle.suspend(&vm.id).unwrap().state,
        VmState::Suspended
    );
    // The shape a saved state needs cannot change.
    let err = fx
        .lifecycle
        .set(
            &vm.id,
            &SetVmParams {
                memory_mib: Some(4096),
                ..Default::default()
            },
        )
        .unwrap_err();
    assert!(
        error_text(&err).contains("napper is suspended"),
        "{}",
        error_text(&err)
    );

    let resumed = fx.lifecycle.start(&vm.id).unwrap();
    assert_eq!(resumed.state, VmState::Running);
    let launch = fx.vmm.launches().pop().unwrap();
    assert_eq!(
        launch.restore.as_deref(),
        Some(files.saved_state().as_path())
    );
    assert!(!files.saved_state().exists(), "the state is consumed");
    assert_eq!(fx.network.state().taps.len(), 1);

    // `vm resume` only resumes.
    fx.lifecycle.stop(&vm.id, false).unwrap();
    let err = fx.lifecycle.resume(&vm.id).unwrap_err();
    assert_eq!(
        err.to_string(),
        "napper is stopped, not suspended: `banger vm start napper` boots a stopped VM"
    );
    let started = fx.lifecycle.start(&vm.id).unwrap();
    assert_eq!(
        fx.vmm.launches().pop().unwrap().restore,
        None,
        "a cold boot"
    );
    fx.lifecycle.suspend(&started.id).unwrap();
    assert_eq!(fx.lifecycle.resume(&vm.id).unwrap().state, VmState::Running);
}

#[test]
fn stopping_a_suspended_vm_asks_for_force_and_then_discards_the_state() {
    let fx = fixture();
    let vm = fx.create("keeper");
    let files = banger_host::VmDir::new(fx.paths.vm_dir(&vm.id));
    fx.lifecycle.suspend(&vm.id).unwrap();
    let err = fx.lifecycle.stop(&vm.id, false).unwrap_err();
    assert!(
        error_text(&err).contains("banger vm stop --force keeper"),
        "{}",
        error_text(&err)
    );
    assert_eq!(
        fx.lifecycle.record(&vm.id).unwrap().state,
        VmState::Suspended
    );
    assert!(files.saved_state().is_dir(), "nothing changed");
    let err = fx.lifecycle.restart(&vm.id).unwrap_err();
    assert!(error_text(&err).contains("--force"), "{}", error_text(&err));

    let stopped = fx.lifecycle.stop(&vm.id, true).unwrap();
    assert_eq!(stopped.state, VmState::Stopped);
    assert_eq!(
        stopped.exit_reason.as_deref(),
        Some("suspended state discarded")
    );
    assert!(!files.saved_state().exists());
    fx.lifecycle.start(&vm.id).unwrap();
    assert_eq!(
        fx.vmm.launches().pop().unwrap().restore,
        None,
        "a cold boot"
    );

    // A suspended VM can be deleted; nothing of it stays.
    fx.lifecycle.suspend(&vm.id).unwrap();
    fx.lifecycle.delete(&vm.id).unwrap();
    assert!(!fx.paths.vm_dir(&vm.id).exists());
}

#[test]
fn a_failed_save_leaves_the_vm_running_with_no_state_on_disk() {
    let fx = fixture();
    let vm = fx.create("steady");
    let files = banger_host::VmDir::new(fx.paths.vm_dir(&vm.id));
    fx.vmm.fail_on(FakeOp::Save);
    let err = fx.lifecycle.suspend(&vm.id).unwrap_err();
    assert!(
        error_text(&err).starts_with("suspending steady: saving the guest's state failed"),
        "{}",
        error_text(&err)
    );
    let record = fx.lifecycle.record(&vm.id).unwrap();
    assert_eq!(record.state, VmState::Running);
    assert_eq!(record.pid, vm.pid, "the same VMM runs on");
    assert!(procfs::is_running(vm.pid.unwrap(), None));
    assert!(!files.saved_state().exists());
    assert!(
        !files.saved_state_partial().exists(),
        "the partial state is removed"
    );
    fx.vmm.clear_failures();

    // Not running: nothing to save.
    fx.lifecycle.stop(&vm.id, false).unwrap();
    let err = fx.lifecycle.suspend(&vm.id).unwrap_err();
    assert!(matches!(err, LifecycleError::NotRunning { .. }), "{err}");

    // A user's pause is thawed first; a disk-error pause is refused.
    fx.lifecycle.start(&vm.id).unwrap();
    fx.lifecycle.pause(&vm.id).unwrap();
    assert_eq!(
        fx.lifecycle.suspend(&vm.id).unwrap().state,
        VmState::Suspended
    );
    let dir = fx.paths.vm_dir(&vm.id);
    assert_eq!(fx.vmm.pauses().last(), Some(&(dir, false)));
    fx.lifecycle.start(&vm.id).unwrap();
    fx.vmm.pause_on_io_error(true);
    fx.lifecycle
        .watch_running_vms(banger_host::vm_dir::ConsoleCap::DEFAULT);
    let err = fx.lifecycle.suspend(&vm.id).unwrap_err();
    assert!(matches!(err, LifecycleError::PausedOnError { .. }), "{err}");
}

#[test]
fn a_resume_that_fails_before_the_guest_runs_stays_suspended() {
    let fx = fixture();
    let vm = fx.create("sleeper");
    let files = banger_host::VmDir::new(fx.paths.vm_dir(&vm.id));
    fx.lifecycle.suspend(&vm.id).unwrap();
    fx.vmm.fail_on(FakeOp::Launch);
    fx.lifecycle.start(&vm.id).unwrap_err();
    let record = fx.lifecycle.record(&vm.id).unwrap();
    assert_eq!(record.state, VmState::Suspended);
    assert!(record.last_error.is_some());
    assert!(files.saved_state().is_dir(), "the state is kept");
    assert!(fx.network.state().taps.is_empty(), "the TAP was undone");
    fx.vmm.clear_failures();
    assert_eq!(fx.lifecycle.start(&vm.id).unwrap().state, VmState::Running);

    // A suspended VM whose state vanished is found stopped.
    fx.lifecycle.suspend(&vm.id).unwrap();
    std::fs::remove_dir_all(files.saved_state()).unwrap();
    fx.lifecycle.retire();
    let report = fx.new_lifecycle().reconcile().unwrap();
    assert_eq!(report.stopped, ["sleeper"]);
    assert_eq!(
        fx.store.get_vm(&vm.id).unwrap().unwrap().state,
        VmState::Stopped
    );
}

#[test]
fn a_snapshot_of_a_running_vm_holds_its_memory_and_restore_resumes_it() {
    let fx = fixture();
    let vm = fx.create("snappy");
    let dir = fx.paths.vm_dir(&vm.id);
    let files = banger_host::VmDir::new(&dir);
    std::fs::write(files.work_disk(), "before").unwrap();
    let taken = fx.lifecycle.snapshot_create(&vm.id, None).unwrap();
    assert_eq!(taken.name, "snapshot1");
    assert!(taken.memory);
    let record = fx.lifecycle.record(&vm.id).unwrap();
    assert_eq!(record.state, VmState::Running);
    assert_eq!(record.pid, vm.pid, "the same VMM runs on");
    assert_eq!(fx.vmm.resumed_after_save(), std::slice::from_ref(&dir));
    let err = fx
        .lifecycle
        .snapshot_create(&vm.id, Some("snapshot1"))
        .unwrap_err();
    assert!(
        matches!(err, LifecycleError::SnapshotExists { .. }),
        "{err}"
    );
    let err = fx
        .lifecycle
        .snapshot_create(&vm.id, Some("Bad Name"))
        .unwrap_err();
    assert!(
        error_text(&err).starts_with("invalid snapshot name"),
        "{}",
        error_text(&err)
    );

    std::fs::write(files.work_disk(), "after").unwrap();
    let err = fx
        .lifecycle
        .snapshot_restore(&vm.id, "snapshot1", false)
        .unwrap_err();
    assert!(error_text(&err).contains("--force"), "{}", error_text(&err));
    assert_eq!(
        std::fs::read_to_string(files.work_disk()).unwrap(),
        "after",
        "nothing changed"
    );
    let err = fx
        .lifecycle
        .snapshot_restore(&vm.id, "nope", true)
        .unwrap_err();
    assert_eq!(
        err.to_string(),
        "snappy has no snapshot named \"nope\": see `banger vm snapshot list snappy`"
    );

    let restored = fx
        .lifecycle
        .snapshot_restore(&vm.id, "snapshot1", true)
        .unwrap();
    assert_eq!(restored.state, VmState::Running);
    assert_ne!(restored.pid, vm.pid, "a new VMM, resumed from the snapshot");
    assert!(
        !procfs::is_running(vm.pid.unwrap(), None),
        "the old VMM is gone"
    );
    let launch = fx.vmm.launches().pop().unwrap();
    assert_eq!(
        launch.restore.as_deref(),
        Some(files.saved_state().as_path())
    );
    assert_eq!(
        std::fs::read_to_string(files.work_disk()).unwrap(),
        "before"
    );
    assert!(
        !files.saved_state().exists(),
        "the restored state was consumed"
    );
    assert!(!dir.join("restoring.partial").exists());

    // The snapshot stays for another restore; list and delete.
    let list = fx.lifecycle.snapshot_list(&vm.id).unwrap();
    assert_eq!(
        list.iter().map(|s| s.name.as_str()).collect::<Vec<_>>(),
        ["snapshot1"]
    );
    assert!(list[0].allocated_bytes > 0);
    fx.lifecycle.snapshot_delete(&vm.id, "snapshot1").unwrap();
    assert!(fx.lifecycle.snapshot_list(&vm.id).unwrap().is_empty());
}

#[test]
fn a_snapshot_of_a_stopped_vm_holds_its_disks_and_a_failed_one_leaves_nothing() {
    let fx = fixture();
    let vm = fx.create("coldsnap");
    let files = banger_host::VmDir::new(fx.paths.vm_dir(&vm.id));
    fx.lifecycle.stop(&vm.id, false).unwrap();
    std::fs::write(files.overlay(), "one").unwrap();
    let taken = fx.lifecycle.snapshot_create(&vm.id, Some("one")).unwrap();
    assert!(!taken.memory);
    // Unchanged since: no --force needed, and the VM stays stopped.
    let restored = fx.lifecycle.snapshot_restore(&vm.id, "one", false).unwrap();
    assert_eq!(restored.state, VmState::Stopped);
    std::thread::sleep(Duration::from_millis(1100));
    std::fs::write(files.overlay(), "two").unwrap();
    let err = fx
        .lifecycle
        .snapshot_restore(&vm.id, "one", false)
        .unwrap_err();
    assert!(
        error_text(&err).contains("the disk changes made since"),
        "{}",
        error_text(&err)
    );
    fx.lifecycle.snapshot_restore(&vm.id, "one", true).unwrap();
    assert_eq!(std::fs::read_to_string(files.overlay()).unwrap(), "one");

    // A save that fails leaves no snapshot and the VM running.
    fx.lifecycle.start(&vm.id).unwrap();
    fx.vmm.fail_on(FakeOp::Save);
    fx.lifecycle
        .snapshot_create(&vm.id, Some("broken"))
        .unwrap_err();
    fx.vmm.clear_failures();
    assert_eq!(fx.lifecycle.record(&vm.id).unwrap().state, VmState::Running);
    let names: Vec<String> = std::fs::read_dir(files.snapshots())
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    assert_eq!(names, ["one"], "no partial snapshot stays");

    // A suspended VM's snapshot holds its saved memory.
    fx.lifecycle.suspend(&vm.id).unwrap();
    assert!(
        fx.lifecycle
            .snapshot_create(&vm.id, Some("asleep"))
            .unwrap()
            .memory
    );
    assert_eq!(
        fx.lifecycle.record(&vm.id).unwrap().state,
        VmState::Suspended
    );
}

#[test]
fn a_branch_boots_from_a_copy_with_an_identity_of_its_own() {
    let fx = fixture();
    let source = fx.create("trunk");
    let source_files = banger_host::VmDir::new(fx.paths.vm_dir(&source.id));
    std::fs::write(source_files.work_disk(), "root files").unwrap();
    fx.vmm.restore_in_place_only();
    let err = fx.lifecycle.branch(&source.id, "limb", false).unwrap_err();
    assert!(
        error_text(&err).contains("--no-memory"),
        "{}",
        error_text(&err)
    );
    assert_eq!(fx.store.list_vms().unwrap().len(), 1, "nothing made");

    let branch = fx.lifecycle.branch(&source.id, "limb", true).unwrap();
    assert_eq!(branch.state, VmState::Running);
    assert_ne!(branch.id, source.id);
    assert_ne!(branch.guest_ip, source.guest_ip);
    assert_ne!(branch.tap, source.tap);
    assert_ne!(branch.vsock_cid, source.vsock_cid);
    assert_eq!(
        (branch.vcpu, branch.memory_mib),
        (source.vcpu, source.memory_mib)
    );
    let branch_files = banger_host::VmDir::new(fx.paths.vm_dir(&branch.id));
    assert_eq!(
        std::fs::read_to_string(branch_files.work_disk()).unwrap(),
        "root files"
    );
    assert_eq!(
        fx.disks.forgotten().len(),
        1,
        "the copy's identity was scrubbed"
    );
    let source_now = fx.lifecycle.record(&source.id).unwrap();
    assert_eq!(
        (source_now.state, source_now.pid),
        (VmState::Running, source.pid)
    );
    let dir = fx.paths.vm_dir(&source.id);
    assert_eq!(
        fx.vmm.pauses(),
        [(dir.clone(), true), (dir, false)],
        "frozen for the copy only"
    );

    // A name in use is refused before any copy; a failed create leaves no staging.
    let err = fx.lifecycle.branch(&source.id, "limb", true).unwrap_err();
    assert!(matches!(err, LifecycleError::NameTaken(_)), "{err}");
    fx.disks.fail_on(DiskOp::ForgetIdentity);
    fx.lifecycle.branch(&source.id, "twig", true).unwrap_err();
    let leftovers: Vec<_> = std::fs::read_dir(&fx.paths.vms_dir)
        .unwrap()
        .flatten()
        .filter(|e| e.file_name().to_string_lossy().starts_with('.'))
        .collect();
    assert!(leftovers.is_empty(), "{leftovers:?}");
    assert_eq!(fx.store.list_vms().unwrap().len(), 2);
}

/// A fake agent that answers `ip addr show` with the address the store
/// gives the VM behind the vsock socket, as a guest that took it would;
/// and refuses the identity script unless that VM's TAP is held off the
/// bridge meanwhile, as it must be.
fn agent_with_addresses(fx: &Fixture) -> Arc<crate::guest_agent::RecordingAgent> {
    let agent = Arc::new(crate::guest_agent::RecordingAgent::default());
    let (store, network) = (fx.store.clone(), fx.network.clone());
    agent.answer_with(Box::new(move |vsock, argv| {
        let vm = store
            .list_vms()
            .unwrap()
            .into_iter()
            .find(|vm| vm.vsock_path.as_deref() == Some(vsock));
        match argv.first().map(String::as_str) {
            Some("ip") => {
                let address = vm.and_then(|vm| vm.guest_ip);
                let text = address.map_or(String::new(), |ip| {
                    format!("2: eth0    inet {ip}/24 scope global eth0\n")
                });
                (text.into_bytes(), 0)
            }
            _ if argv.get(3).map(String::as_str) == Some(identity::SCRIPT_NAME) => {
                let tap = vm.and_then(|vm| vm.tap).unwrap_or_default();
                if network.state().held.contains(&tap) {
                    (Vec::new(), 0)
                } else {
                    (format!("TAP {tap} is on the bridge").into_bytes(), 99)
                }
            }
            _ => (Vec::new(), 0),
        }
    }));
    agent
}

/// A daemon that talks to guests through [`agent_with_addresses`], and a
/// running VM "trunk" to branch.
fn source_with_agent(
    fx: &Fixture,
) -> (
    Arc<crate::guest_agent::RecordingAgent>,
    Arc<Lifecycle>,
    VmRecord,
) {
    let agent = agent_with_addresses(fx);
    let lifecycle = fx.new_lifecycle().with_agent(agent.clone());
    fx.lifecycle.retire();
    let source = create_on(&lifecycle, "trunk");
    (agent, lifecycle, source)
}

#[test]
fn a_branch_with_memory_resumes_off_the_network_until_it_has_its_own_identity() {
    let fx = fixture();
    let (agent, lifecycle, source) = source_with_agent(&fx);
    let source_dir = fx.paths.vm_dir(&source.id);
    std::fs::write(
        banger_host::VmDir::new(&source_dir).work_disk(),
        "root files",
    )
    .unwrap();

    let branch = lifecycle.branch(&source.id, "limb", false).unwrap();
    assert_eq!(branch.state, VmState::Running);
    assert_ne!(branch.guest_ip, source.guest_ip);
    let dir = fx.paths.vm_dir(&branch.id);
    let files = banger_host::VmDir::new(&dir);
    let launch = fx.vmm.launches().pop().unwrap();
    assert_eq!(launch.vm_dir, dir);
    assert_eq!(
        launch.restore.as_deref(),
        Some(files.saved_state().as_path())
    );
    assert!(
        launch.restore_as_another_vm,
        "restored as another VM, off the network"
    );
    assert!(!files.saved_state().exists(), "the state was consumed");
    assert_eq!(
        std::fs::read_to_string(files.work_disk()).unwrap(),
        "root files"
    );
    assert!(
        fx.disks.forgotten().is_empty(),
        "disks under saved memory are never edited offline"
    );

    // Its identity went in through its own agent, then its link came up.
    let (vsock, argv) = agent
        .calls()
        .into_iter()
        .find(|(_, argv)| argv.get(3).map(String::as_str) == Some(identity::SCRIPT_NAME))
        .expect("the identity script ran");
    assert_eq!(Some(vsock.as_path()), branch.vsock_path.as_deref());
    let mac = banger_host::net::guest_mac(branch.guest_ip.unwrap());
    assert_eq!(argv[4..6], ["limb".to_owned(), mac]);
    assert!(
        argv.iter()
            .any(|a| a.contains(&format!("Address={}/", branch.guest_ip.unwrap())))
    );
    assert_eq!(fx.vmm.links(), [(dir.clone(), true)]);
    let net = fx.network.state();
    assert!(net.held.is_empty() && net.taps.contains_key(branch.tap.as_deref().unwrap()));
    assert!(!files.identity_pending().exists());

    // The source was stopped for the save and the copy, then ran on.
    let source_now = lifecycle.record(&source.id).unwrap();
    assert_eq!(
        (source_now.state, source_now.pid),
        (VmState::Running, source.pid)
    );
    assert_eq!(
        fx.vmm.resumed_after_save(),
        std::slice::from_ref(&source_dir)
    );

    // A guest that refuses its identity takes the branch away again.
    agent.answer_with(Box::new(|_, argv| {
        let refused = argv.get(3).map(String::as_str) == Some(identity::SCRIPT_NAME);
        (b"hostname: permission denied".to_vec(), i32::from(refused))
    }));
    let err = lifecycle.branch(&source.id, "twig", false).unwrap_err();
    assert!(
        error_text(&err).contains("permission denied"),
        "{}",
        error_text(&err)
    );
    let names: Vec<String> = fx
        .store
        .list_vms()
        .unwrap()
        .iter()
        .map(|vm| vm.name.to_string())
        .collect();
    assert_eq!(names.len(), 2, "{names:?}");
    assert!(!names.contains(&"twig".to_owned()));
    let leftovers: Vec<_> = std::fs::read_dir(&fx.paths.vms_dir)
        .unwrap()
        .flatten()
        .filter(|e| e.file_name().to_string_lossy().starts_with('.'))
        .collect();
    assert!(leftovers.is_empty(), "{leftovers:?}");
    assert_eq!(
        lifecycle.record(&source.id).unwrap().state,
        VmState::Running
    );

    // A suspended source stays suspended; its branch resumes from a copy.
    let agent = agent_with_addresses(&fx);
    let lifecycle2 = fx.new_lifecycle().with_agent(agent);
    lifecycle.retire();
    lifecycle2.suspend(&source.id).unwrap();
    let sprout = lifecycle2.branch(&source.id, "sprout", false).unwrap();
    assert_eq!(sprout.state, VmState::Running);
    assert_eq!(
        lifecycle2.record(&source.id).unwrap().state,
        VmState::Suspended
    );
    assert!(banger_host::VmDir::new(&source_dir).saved_state().is_dir());
}

#[test]
fn a_daemon_killed_before_a_branch_took_its_identity_finishes_it_at_restart() {
    let fx = fixture();
    let (agent, first, source) = source_with_agent(&fx);
    first.retire();
    let source_id = source.id.to_string();
    let daemon = || fx.new_lifecycle().with_agent(agent.clone());
    let report = crash_then_restart(&fx, &daemon, "branch:resumed", move |lc| {
        let _ = lc.branch(&source_id, "limb", false);
    });
    assert_eq!(report.adopted.len(), 2, "{report:?}");
    let branch = fx
        .store
        .list_vms()
        .unwrap()
        .into_iter()
        .find(|vm| vm.name == "limb")
        .expect("the branch was kept");
    let dir = fx.paths.vm_dir(&branch.id);
    let files = banger_host::VmDir::new(&dir);
    wait_until("the branch to take its identity", || {
        !files.identity_pending().exists()
    });
    assert!(
        fx.vmm.links().contains(&(dir, true)),
        "{:?}",
        fx.vmm.links()
    );
    assert!(agent.calls().iter().any(|(vsock, argv)| {
        Some(vsock.as_path()) == branch.vsock_path.as_deref()
            && argv.get(3).map(String::as_str) == Some(identity::SCRIPT_NAME)
    }));
    assert_eq!(
        fx.store.get_vm(&branch.id).unwrap().unwrap().state,
        VmState::Running
    );
}

#[test]
fn a_resume_steps_the_guest_clock_through_its_agent_to_the_host_time_of_the_try() {
    let fx = fixture();
    let (agent, lifecycle, vm) = source_with_agent(&fx);
    lifecycle.suspend(&vm.id).unwrap();
    let before = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    lifecycle.start(&vm.id).unwrap();
    wait_until("the clock step", || {
        agent.calls().iter().any(|(_, argv)| argv[0] == "date")
    });
    let (vsock, argv) = agent
        .calls()
        .into_iter()
        .find(|(_, argv)| argv[0] == "date")
        .unwrap();
    assert_eq!(Some(vsock.as_path()), vm.vsock_path.as_deref());
    assert_eq!(argv[..3], ["date", "-u", "-s"]);
    let secs: u64 = argv[3]
        .strip_prefix('@')
        .and_then(|t| t.split('.').next())
        .and_then(|t| t.parse().ok())
        .unwrap_or_else(|| panic!("a clock argument, not {:?}", argv[3]));
    assert!(
        secs >= before && secs <= before + 10,
        "{secs} against {before}"
    );
}
