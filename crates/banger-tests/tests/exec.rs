//! `banger vm exec` as a user runs it: the real `banger` against a daemon
//! with a fake VMM, whose vsock socket is served by a stand-in for the
//! VMM's muxer in front of the real guest agent (running on this host).

// An integration test crate is compiled only for tests; there is no module to wrap.
#![allow(clippy::tests_outside_test_module)]

mod support;

use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::UnixListener;
use std::process::{Command, Stdio};
use std::time::Duration;

use support::{BANGER, World, stderr, stdout};

/// A daemon with one running VM, `box`, whose vsock socket leads to the
/// guest agent (each connection on a thread of its own).
fn world_with_agent() -> (World, support::FakeDaemon) {
    let world = World::new();
    world.write_fake_image();
    let daemon = world.start_fake_daemon();
    let vm: serde_json::Value =
        serde_json::from_str(&world.ok(&["vm", "create", "--name", "box", "--json"])).unwrap();
    let listener = UnixListener::bind(vm["vsock_path"].as_str().unwrap()).unwrap();
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(mut stream) = stream else { return };
            std::thread::spawn(move || {
                let mut line = String::new();
                BufReader::new(&stream).read_line(&mut line).unwrap();
                assert_eq!(line, "CONNECT 10790\n");
                stream.write_all(b"OK 1073741824\n").unwrap();
                let reader = stream.try_clone().unwrap();
                let _ = banger_guest::agent::serve(reader, stream);
            });
        }
    });
    (world, daemon)
}

#[test]
fn exit_codes_streams_env_and_workdir_come_through() {
    let (world, daemon) = world_with_agent();
    let out = world.banger(&[
        "vm",
        "exec",
        "box",
        "-e",
        "GREETING=hello there",
        "-w",
        "/tmp",
        "--",
        "sh",
        "-c",
        "echo \"$GREETING\"; pwd; echo oops >&2; exit 3",
    ]);
    assert_eq!(out.status.code(), Some(3), "{}", stderr(&out));
    assert_eq!(stdout(&out), "hello there\n/tmp\n");
    assert_eq!(stderr(&out), "oops\n");

    let missing = world.banger(&["vm", "exec", "box", "--", "/no/such/tool"]);
    assert_eq!(missing.status.code(), Some(127));
    assert!(stderr(&missing).contains("cannot run /no/such/tool"));
    daemon.stop(&world);
}

#[test]
fn stdin_is_streamed_and_large_output_arrives_whole() {
    let (world, daemon) = world_with_agent();
    let data: Vec<u8> = (0..5_000_000u32).map(|i| (i % 251) as u8).collect();
    let mut child = world
        .command(&*BANGER)
        .args(["vm", "exec", "box", "--", "sha256sum"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut stdin = child.stdin.take().unwrap();
    let feed = data.clone();
    let writer = std::thread::spawn(move || stdin.write_all(&feed).unwrap());
    let out = child.wait_with_output().unwrap();
    writer.join().unwrap();
    let expected = Command::new("sha256sum")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .and_then(|mut c| {
            c.stdin.take().unwrap().write_all(&data)?;
            c.wait_with_output()
        })
        .unwrap();
    assert!(out.status.success());
    assert_eq!(out.stdout, expected.stdout);

    let big = world.banger(&[
        "vm",
        "exec",
        "box",
        "--",
        "head",
        "-c",
        "20000000",
        "/dev/zero",
    ]);
    assert!(big.status.success());
    assert_eq!(big.stdout.len(), 20_000_000);
    daemon.stop(&world);
}

#[test]
fn ctrl_c_reaches_the_command_in_the_guest() {
    let (world, daemon) = world_with_agent();
    let child = world
        .command(&*BANGER)
        .args([
            "vm",
            "exec",
            "box",
            "--",
            "sh",
            "-c",
            "trap 'echo got INT; kill $!; exit 7' INT; sleep 30 & wait",
        ])
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    std::thread::sleep(Duration::from_millis(700));
    // SAFETY: SIGINT to the banger this test started.
    unsafe { libc::kill(child.id() as libc::pid_t, libc::SIGINT) };
    let out = child.wait_with_output().unwrap();
    assert_eq!(String::from_utf8_lossy(&out.stdout), "got INT\n");
    assert_eq!(out.status.code(), Some(7));
    daemon.stop(&world);
}

#[test]
fn a_guest_without_the_agent_gets_the_reason_and_the_way_around() {
    let world = World::new();
    world.write_fake_image();
    let daemon = world.start_fake_daemon();
    world.ok(&["vm", "create", "--name", "old"]);
    let out = world.banger(&["vm", "exec", "old", "--", "true"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        stderr(&out).contains("reaching old's guest agent")
            && stderr(&out).contains("no vsock socket"),
        "{}",
        stderr(&out)
    );
    world.ok(&["vm", "stop", "old"]);
    let out = world.banger(&["vm", "exec", "old", "--", "true"]);
    assert!(
        stderr(&out).contains("old is stopped: start it with `banger vm start old`"),
        "{}",
        stderr(&out)
    );
    daemon.stop(&world);
}
