//! `banger vm ssh` with a stand-in `ssh` on PATH that records its arguments
//! and exits with a chosen status, and the reminder as a user sees it.

// An integration test crate is compiled only for tests; there is no module to wrap.
#![allow(clippy::tests_outside_test_module)]

mod support;

use std::io::{BufRead, BufReader, Write};
use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::UnixListener;
use std::path::Path;

use support::{BANGER, World, stderr};

/// Writes the stand-in `ssh` and a key; returns the bin dir.
fn stand_in(world: &World) -> std::path::PathBuf {
    let bin = world.home().join("fake-bin");
    std::fs::create_dir_all(&bin).unwrap();
    let script =
        "#!/bin/sh\nprintf '%s\\n' \"$@\" > \"$HOME/ssh-args\"\nexit \"${FAKE_SSH_EXIT:-0}\"\n";
    std::fs::write(bin.join("ssh"), script).unwrap();
    std::fs::set_permissions(bin.join("ssh"), std::fs::Permissions::from_mode(0o755)).unwrap();
    std::fs::write(world.home().join("key"), "not a real key").unwrap();
    bin
}

fn ssh(world: &World, bin: &Path, exit: i32, args: &[&str]) -> std::process::Output {
    let path = format!(
        "{}:{}",
        bin.display(),
        std::env::var("PATH").unwrap_or_default()
    );
    world
        .command(&*BANGER)
        .env("PATH", path)
        .env("FAKE_SSH_EXIT", exit.to_string())
        .args(["vm", "ssh"])
        .args(args)
        .output()
        .unwrap()
}

fn setup() -> (
    World,
    support::FakeDaemon,
    std::path::PathBuf,
    serde_json::Value,
) {
    let world = World::new();
    world.write_fake_image();
    let config = std::fs::read_to_string(world.config_file()).unwrap();
    std::fs::write(
        world.config_file(),
        format!(
            "{config}ssh_key_path = \"{}/key\"\n",
            world.home().display()
        ),
    )
    .unwrap();
    let daemon = world.start_fake_daemon();
    let bin = stand_in(&world);
    let vm = serde_json::from_str(&world.ok(&["vm", "create", "--name", "calm-otter", "--json"]))
        .unwrap();
    (world, daemon, bin, vm)
}

#[test]
fn ssh_runs_as_root_with_the_key_and_known_hosts_and_passes_the_exit_status() {
    let (world, daemon, bin, vm) = setup();
    let out = ssh(&world, &bin, 0, &["calm-otter", "--", "uname", "-a"]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let args = std::fs::read_to_string(world.home().join("ssh-args")).unwrap();
    let known_hosts = format!(
        "UserKnownHostsFile={}/known_hosts",
        vm["dir"].as_str().unwrap()
    );
    let expected = [
        "-i",
        &format!("{}/key", world.home().display()),
        "-o",
        "IdentitiesOnly=yes",
        "-o",
        "StrictHostKeyChecking=accept-new",
        "-o",
        "LogLevel=ERROR",
        "-o",
        "ServerAliveInterval=15",
        "-o",
        "ServerAliveCountMax=4",
        "-o",
        &known_hosts,
        &format!("root@{}", vm["guest_ip"].as_str().unwrap()),
        "--",
        "uname",
        "-a",
    ];
    assert_eq!(args.lines().collect::<Vec<_>>(), expected);

    for code in [130, 255] {
        let out = ssh(&world, &bin, code, &["calm-otter"]);
        assert_eq!(out.status.code(), Some(code));
        assert!(
            stderr(&out).contains("calm-otter is still running"),
            "exit {code}: {}",
            stderr(&out)
        );
    }
    daemon.stop(&world);
}

#[test]
fn ssh_ends_when_banger_is_killed() {
    let (world, daemon, bin, _vm) = setup();
    // A session that would last: the stand-in writes its PID and waits.
    std::fs::write(
        bin.join("ssh"),
        "#!/bin/sh\necho $$ > \"$HOME/ssh-pid\"\nexec sleep 600\n",
    )
    .unwrap();
    let path = format!(
        "{}:{}",
        bin.display(),
        std::env::var("PATH").unwrap_or_default()
    );
    let mut banger = world
        .command(&*BANGER)
        .env("PATH", path)
        .args(["vm", "ssh", "calm-otter"])
        .spawn()
        .unwrap();
    let pid_file = world.home().join("ssh-pid");
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while !pid_file.exists() && std::time::Instant::now() < deadline {
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    let ssh_pid: i32 = std::fs::read_to_string(&pid_file)
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    // SAFETY: kill on a PID this test started.
    unsafe { libc::kill(banger.id() as i32, libc::SIGTERM) };
    banger.wait().unwrap();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
    while support::process_alive(ssh_pid as u32) && std::time::Instant::now() < deadline {
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    let outlived = support::process_alive(ssh_pid as u32);
    if outlived {
        // SAFETY: kill on the stand-in this test started.
        unsafe { libc::kill(ssh_pid, libc::SIGKILL) };
    }
    assert!(!outlived, "ssh (pid {ssh_pid}) outlived banger");
    daemon.stop(&world);
}

#[test]
fn the_reminder_says_what_the_guest_answered() {
    let (world, daemon, bin, vm) = setup();
    // Without a responder: still running, and says the guest did not answer.
    let out = ssh(&world, &bin, 0, &["calm-otter"]);
    assert_eq!(
        stderr(&out).lines().last().unwrap(),
        format!(
            "calm-otter is still running, but its guest did not answer the ping (no vsock socket at {}). Stop it with: banger vm stop calm-otter",
            vm["vsock_path"].as_str().unwrap()
        )
    );

    // With the real responder behind a stand-in for the VMM's vsock muxer.
    let listener = UnixListener::bind(vm["vsock_path"].as_str().unwrap()).unwrap();
    let guest = std::thread::spawn(move || {
        let (mut stream, _) = listener.accept().unwrap();
        let mut line = String::new();
        BufReader::new(&stream).read_line(&mut line).unwrap();
        assert_eq!(line, "CONNECT 10789\n");
        stream.write_all(b"OK 1\n").unwrap();
        let status = banger_proto::ping::Pong {
            uptime_secs: 7500,
            hostname: "calm-otter".into(),
            state: Some("running".into()),
        };
        banger_guest::serve_connection(stream, &status).unwrap();
    });
    let out = ssh(&world, &bin, 0, &["calm-otter"]);
    guest.join().unwrap();
    assert_eq!(
        stderr(&out).lines().last().unwrap(),
        "calm-otter is still running (up 2h05m). Stop it with: banger vm stop calm-otter"
    );

    // A stopped VM is refused before ssh runs.
    world.ok(&["vm", "stop", "calm-otter"]);
    std::fs::remove_file(world.home().join("ssh-args")).unwrap();
    let out = ssh(&world, &bin, 0, &["calm-otter"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        stderr(&out).contains("calm-otter is stopped: start it with `banger vm start calm-otter`"),
        "{}",
        stderr(&out)
    );
    assert!(!world.home().join("ssh-args").exists(), "ssh was not run");
    daemon.stop(&world);
}
