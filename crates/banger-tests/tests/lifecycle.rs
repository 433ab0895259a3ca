//! The VM lifecycle as a user drives it: the real `banger` binary against
//! a daemon with a fake VMM and fake disks.

// An integration test crate is compiled only for tests; there is no module to wrap.
#![allow(clippy::tests_outside_test_module)]

mod support;

use serde_json::Value;
use support::{World, process_alive, stderr, stdout};

fn pid(vm: &Value) -> u32 {
    u32::try_from(vm["pid"].as_u64().expect("a running VM has a pid")).expect("PIDs fit in u32")
}

fn json(text: &str) -> Value {
    serde_json::from_str(text).unwrap_or_else(|e| panic!("not JSON ({e}): {text}"))
}

#[test]
fn create_inspect_stop_start_set_and_delete() {
    let world = World::new();
    world.write_fake_image();
    let daemon = world.start_fake_daemon();

    let vm = json(&world.ok(&[
        "vm",
        "create",
        "--name",
        "calm-otter",
        "--disk-size",
        "2G",
        "--json",
    ]));
    assert_eq!(vm["name"], "calm-otter");
    assert_eq!(vm["state"], "running");
    assert_eq!(vm["disk_size_bytes"], 2u64 << 30);
    assert_eq!(vm["vsock_cid"], 3);
    let vm_pid = pid(&vm);
    assert!(process_alive(vm_pid));
    let id = vm["id"].as_str().unwrap().to_owned();

    let text = world.ok(&[
        "vm", "create", "--name", "buildbox", "--vcpu", "4", "--memory", "4096",
    ]);
    assert!(
        text.contains("backend firecracker: fake VMM for tests"),
        "create says which backend and why: {text}"
    );
    assert!(
        text.starts_with("created buildbox (") && text.contains("banger vm ssh buildbox"),
        "{text}"
    );

    let list = world.ok(&["vm", "list"]);
    let header = list.lines().next().unwrap();
    assert_eq!(
        header.split_whitespace().collect::<Vec<_>>(),
        [
            "NAME", "ID", "STATE", "IMAGE", "VCPU", "MEMORY", "IP", "NAT", "AGE"
        ]
    );
    assert!(
        list.contains("calm-otter") && list.contains(&id[..8]) && list.contains("running"),
        "{list}"
    );
    let image = json(&world.ok(&["image", "show", "default", "--json"]));
    assert_eq!(image["name"], "default");
    assert_eq!(
        image["used_by"],
        serde_json::json!(["buildbox", "calm-otter"])
    );
    let shown = world.ok(&["image", "show", "default"]);
    assert!(
        shown.contains("used by:     buildbox, calm-otter"),
        "{shown}"
    );
    let listed = json(&world.ok(&["vm", "list", "--json"]));
    let listed = listed.as_array().unwrap();
    assert_eq!(listed.len(), 2);
    let mut keys: Vec<&str> = listed[0]
        .as_object()
        .unwrap()
        .keys()
        .map(String::as_str)
        .collect();
    keys.sort_unstable();
    assert_eq!(
        keys,
        [
            "created_at",
            "disk_size_bytes",
            "guest_ip",
            "id",
            "image",
            "memory_mib",
            "name",
            "nat",
            "pid",
            "publish",
            "started_at",
            "state",
            "vcpu",
            "vmm"
        ],
        "the list is a summary; `vm show` has the rest"
    );

    // By name and by ID prefix.
    let show = world.ok(&["vm", "show", &id[..6]]);
    for field in [
        "name:",
        "vsock cid:",
        "vsock path:",
        "overlay:",
        "work disk:",
        "vmm log:",
        "pid:",
    ] {
        assert!(show.contains(field), "{field} missing from:\n{show}");
    }
    assert!(
        show.contains("calm-otter") && show.contains(&vm_pid.to_string()),
        "{show}"
    );
    let stats = json(&world.ok(&["vm", "stats", "calm-otter", "--json"]));
    assert_eq!(stats["pid"], vm_pid);
    assert!(stats["rss_bytes"].as_u64().unwrap() > 0);
    assert_eq!(stats["work_disk"]["apparent_bytes"], 2u64 << 30);
    assert!(
        world
            .ok(&["vm", "stats", "calm-otter"])
            .contains("allocated of 2G")
    );

    // Settings that need a stopped VM say so and change nothing.
    let out = world.banger(&["vm", "set", "calm-otter", "--memory", "4096"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        stderr(&out)
            .contains("calm-otter is running: stop it first with `banger vm stop calm-otter`"),
        "{}",
        stderr(&out)
    );

    let text = world.ok(&["vm", "stop", "calm-otter"]);
    assert_eq!(text, "calm-otter: stopped, now stopped, clean shutdown\n");
    assert!(!process_alive(vm_pid));
    let listed = json(&world.ok(&["vm", "list", "--json"]));
    let calm = listed
        .as_array()
        .unwrap()
        .iter()
        .find(|v| v["name"] == "calm-otter")
        .unwrap();
    assert_eq!(
        calm["state"], "stopped",
        "a change reaches the list at once"
    );
    let text = world.ok(&[
        "vm",
        "set",
        "calm-otter",
        "--memory",
        "4096",
        "--vcpu",
        "4",
        "--disk-size",
        "3G",
    ]);
    assert_eq!(text, "calm-otter: updated, now stopped, clean shutdown\n");
    let out = world.banger(&["vm", "set", "calm-otter", "--disk-size", "1G"]);
    assert!(
        stderr(&out).contains("refusing to shrink calm-otter's work disk from 3G to 1G"),
        "{}",
        stderr(&out)
    );
    let shown = json(&world.ok(&["vm", "show", "calm-otter", "--json"]));
    assert_eq!(
        (shown["memory_mib"].as_u64(), shown["vcpu"].as_u64()),
        (Some(4096), Some(4))
    );

    assert!(
        world
            .ok(&["vm", "start", "calm-otter"])
            .contains("now running")
    );
    assert!(
        world
            .ok(&["vm", "restart", "calm-otter"])
            .contains("now running")
    );
    let text = world.ok(&["vm", "kill", "--signal", "KILL", "calm-otter"]);
    assert_eq!(
        text,
        "calm-otter: sent KILL, now stopped, killed by SIGKILL\n"
    );

    assert_eq!(
        world.ok(&["vm", "delete", "calm-otter", "buildbox"]),
        "calm-otter: deleted\nbuildbox: deleted\n"
    );
    assert_eq!(
        world.ok(&["vm", "list"]),
        "No VMs. Create one with `banger vm create`.\n"
    );
    assert!(
        std::fs::read_dir(world.state_dir().join("vms"))
            .unwrap()
            .next()
            .is_none()
    );
    daemon.stop(&world);
}

#[test]
fn a_batch_reports_each_vm_and_fails_if_any_failed() {
    let world = World::new();
    world.write_fake_image();
    let daemon = world.start_fake_daemon();
    world.ok(&["vm", "create", "--name", "good"]);
    let out = world.banger(&["vm", "stop", "good", "missing"]);
    assert_eq!(out.status.code(), Some(1));
    assert_eq!(stdout(&out), "good: stopped, now stopped, clean shutdown\n");
    assert!(
        stderr(&out).contains("missing: error: no VM named \"missing\""),
        "{}",
        stderr(&out)
    );
    let batch = json(&stdout(
        &world.banger(&["vm", "start", "good", "missing", "--json"]),
    ));
    assert_eq!(batch["items"][0]["vm"]["state"], "running");
    assert_eq!(batch["items"][1]["error"]["data"]["kind"], "not_found");
    daemon.stop(&world);
}

#[test]
fn wait_gives_up_at_once_on_a_guest_its_vmm_paused() {
    let world = World::new();
    world.write_fake_image();
    let daemon = world.start_fake_daemon();
    // The VMM holds the guest on a failed disk write from its first
    // seconds: nothing will answer, and --wait says why within the
    // daemon's next look (every 5 s), not at its 120 s deadline.
    daemon.vmm.pause_on_io_error(true);
    let started = std::time::Instant::now();
    let out = world.banger(&[
        "vm",
        "create",
        "--name",
        "stuck",
        "--wait",
        "--wait-timeout",
        "120",
    ]);
    let took = started.elapsed();
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    let said = stderr(&out);
    assert!(
        said.contains("stuck stopped booting after")
            && said.contains("it is paused (the VMM paused the guest after a disk write failed")
            && said.contains("its console is in"),
        "{said}"
    );
    assert!(
        took < std::time::Duration::from_secs(30),
        "gave up after {took:?}"
    );
    daemon.stop(&world);
}

#[test]
fn generated_names_and_create_errors() {
    let world = World::new();
    world.write_fake_image();
    let daemon = world.start_fake_daemon();
    let vm = json(&world.ok(&["vm", "create", "--json"]));
    let name = vm["name"].as_str().unwrap();
    assert!(
        name.contains('-') && banger_proto::validate::vm_name(name).is_ok(),
        "{name}"
    );
    let out = world.banger(&["vm", "create", "--name", name]);
    assert!(stderr(&out).contains("already exists"), "{}", stderr(&out));
    assert_eq!(out.status.code(), Some(1), "a conflict is no bad input");
    let out = world.banger(&["vm", "create", "--image", "nope"]);
    assert!(
        stderr(&out).contains("no image named \"nope\""),
        "{}",
        stderr(&out)
    );
    let out = world.banger(&["image", "delete", "default"]);
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("cannot be deleted: set default_rootfs in config.toml"),
        "{}",
        stderr(&out)
    );
    assert!(
        world.ok(&["image", "list"]).contains("default"),
        "nothing changed"
    );
    // Bad input the daemon finds (an image whose file is gone) exits 2,
    // as the CLI's own refusals do.
    let rootfs = world.home().join("bundle/rootfs.ext4");
    std::fs::rename(&rootfs, rootfs.with_extension("moved")).unwrap();
    let out = world.banger(&["vm", "create", "--name", "orphan"]);
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    std::fs::rename(rootfs.with_extension("moved"), &rootfs).unwrap();
    daemon
        .disks
        .fail_on(banger_host::disk::DiskOp::CreateWorkDisk);
    let out = world.banger(&["vm", "create", "--name", "doomed"]);
    let err = stderr(&out);
    assert!(
        err.contains("error: creating doomed: creating the work disk failed"),
        "{err}"
    );
    assert!(
        err.contains("caused by: injected failure"),
        "the cause chain is printed: {err}"
    );
    assert_eq!(
        json(&world.ok(&["vm", "list", "--json"]))
            .as_array()
            .unwrap()
            .len(),
        1
    );
    daemon.stop(&world);
}

#[test]
fn twenty_vms_created_stopped_and_deleted_in_batches() {
    let world = World::new();
    world.write_fake_image();
    let daemon = world.start_fake_daemon();
    let names: Vec<String> = (0..20).map(|i| format!("batch-{i:02}")).collect();
    let creates: Vec<_> = names
        .iter()
        .map(|name| {
            world
                .command(&*support::BANGER)
                .args(["vm", "create", "--name", name, "--json"])
                .stdout(std::process::Stdio::piped())
                .stderr(std::process::Stdio::piped())
                .spawn()
                .unwrap()
        })
        .collect();
    let mut pids = Vec::new();
    for child in creates {
        let out = child.wait_with_output().unwrap();
        assert!(out.status.success(), "{}", stderr(&out));
        pids.push(pid(&json(&stdout(&out))));
    }
    let refs: Vec<&str> = names.iter().map(String::as_str).collect();
    let stop = world.ok(&[&["vm", "stop"][..], &refs].concat());
    assert_eq!(stop.lines().count(), 20);
    assert!(
        pids.iter().all(|pid| !process_alive(*pid)),
        "every VMM is gone"
    );
    let delete = world.ok(&[&["vm", "delete"][..], &refs].concat());
    assert_eq!(delete.lines().count(), 20);
    assert_eq!(
        json(&world.ok(&["vm", "list", "--json"])),
        Value::Array(vec![])
    );
    assert!(
        std::fs::read_dir(world.state_dir().join("vms"))
            .unwrap()
            .next()
            .is_none(),
        "no VM files left"
    );
    daemon.stop(&world);
}

#[test]
fn a_daemon_restart_never_stops_a_vm() {
    let world = World::new();
    world.write_fake_image();
    let daemon = world.start_fake_daemon();
    let a = json(&world.ok(&["vm", "create", "--name", "keeper", "--json"]));
    let b = json(&world.ok(&["vm", "create", "--name", "goner", "--json"]));
    let (pid_a, pid_b) = (pid(&a), pid(&b));
    daemon.stop(&world);
    assert!(
        process_alive(pid_a) && process_alive(pid_b),
        "VMs outlive the daemon"
    );
    // SAFETY: killing our own fake VM while no daemon watches it.
    unsafe { libc::kill(pid_b as libc::pid_t, libc::SIGKILL) };
    while process_alive(pid_b) {
        std::thread::sleep(std::time::Duration::from_millis(10));
    }

    let daemon = world.start_fake_daemon();
    let vms = json(&world.ok(&["vm", "list", "--json"]));
    let keeper = vms
        .as_array()
        .unwrap()
        .iter()
        .find(|v| v["name"] == "keeper")
        .unwrap();
    assert_eq!(keeper["state"], "running");
    assert_eq!(keeper["pid"], pid_a, "adopted, not restarted");
    let goner = vms
        .as_array()
        .unwrap()
        .iter()
        .find(|v| v["name"] == "goner")
        .unwrap();
    assert_eq!(goner["state"], "stopped");
    assert_eq!(
        json(&world.ok(&["vm", "show", "goner", "--json"]))["exit_reason"],
        "VMM exited while bangerd was not running"
    );
    assert!(world.ok(&["vm", "stop", "keeper"]).contains("now stopped"));
    assert!(!process_alive(pid_a));
    daemon.stop(&world);
}
