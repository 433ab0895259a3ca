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
                let _ = banger_guest::agent::serve(stream);
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

/// What `stat` says of a path: mode, and for files their allocated blocks.
fn mode(path: &std::path::Path) -> u32 {
    use std::os::unix::fs::PermissionsExt;
    std::fs::symlink_metadata(path)
        .unwrap()
        .permissions()
        .mode()
        & 0o7777
}

#[test]
fn cp_copies_trees_both_ways_with_modes_links_times_and_holes() {
    use std::os::unix::fs::MetadataExt;
    let (world, daemon) = world_with_agent();
    let src = world.home().join("src/tree");
    std::fs::create_dir_all(src.join("sub")).unwrap();
    std::fs::write(src.join("sub/secret"), "s3cret").unwrap();
    std::fs::set_permissions(
        src.join("sub/secret"),
        std::os::unix::fs::PermissionsExt::from_mode(0o640),
    )
    .unwrap();
    std::os::unix::fs::symlink("sub/secret", src.join("link")).unwrap();
    let sparse = std::fs::File::create(src.join("sparse.img")).unwrap();
    sparse.set_len(64 << 20).unwrap();
    drop(sparse);
    let old = filetime_of(&src.join("sub/secret"));

    // Into the "guest" (the agent runs on this host): an existing
    // directory receives the tree inside it.
    let guest_dir = world.home().join("guest");
    std::fs::create_dir_all(&guest_dir).unwrap();
    world.ok(&[
        "vm",
        "cp",
        src.to_str().unwrap(),
        &format!("box:{}", guest_dir.display()),
    ]);
    let arrived = guest_dir.join("tree");
    assert_eq!(
        std::fs::read_to_string(arrived.join("sub/secret")).unwrap(),
        "s3cret"
    );
    assert_eq!(mode(&arrived.join("sub/secret")), 0o640);
    assert_eq!(filetime_of(&arrived.join("sub/secret")), old, "times kept");
    assert_eq!(
        std::fs::read_link(arrived.join("link")).unwrap(),
        std::path::PathBuf::from("sub/secret"),
        "a symlink stays a link"
    );
    let img = std::fs::metadata(arrived.join("sparse.img")).unwrap();
    assert_eq!(img.len(), 64 << 20);
    assert!(
        img.blocks() * 512 < 1 << 20,
        "holes stay holes ({} blocks)",
        img.blocks()
    );

    // And back out, to a new name.
    let back = world.home().join("back");
    world.ok(&[
        "vm",
        "cp",
        &format!("box:{}", arrived.display()),
        back.to_str().unwrap(),
    ]);
    assert_eq!(
        std::fs::read_to_string(back.join("sub/secret")).unwrap(),
        "s3cret"
    );
    assert_eq!(mode(&back.join("sub/secret")), 0o640);
    assert!(
        std::fs::symlink_metadata(back.join("link"))
            .unwrap()
            .is_symlink()
    );
    assert!(std::fs::metadata(back.join("sparse.img")).unwrap().blocks() * 512 < 1 << 20);

    // A missing path is named, and nothing appears.
    let out = world.banger(&[
        "vm",
        "cp",
        "box:/no/such/path",
        back.join("x").to_str().unwrap(),
    ]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        stderr(&out).contains("/no/such/path: no such file or directory in the guest"),
        "{}",
        stderr(&out)
    );
    assert!(!back.join("x").exists());
    let leftovers: Vec<_> = std::fs::read_dir(&back)
        .unwrap()
        .flatten()
        .filter(|e| e.file_name().to_string_lossy().starts_with(".banger-cp"))
        .collect();
    assert!(leftovers.is_empty(), "no staging directory is left");

    let out = world.banger(&["vm", "cp", "a", "b"]);
    assert!(
        stderr(&out).contains("neither a nor b names a VM"),
        "{}",
        stderr(&out)
    );
    daemon.stop(&world);
}

#[test]
fn a_copy_cut_off_midway_leaves_nothing_at_the_destination() {
    let (world, daemon) = world_with_agent();
    let big = world.home().join("big.bin");
    // 256 MiB of a non-zero pattern (zeros would travel as holes).
    let pattern: Vec<u8> = (0..(1u32 << 20) / 4).flat_map(u32::to_le_bytes).collect();
    let mut file = std::fs::File::create(&big).unwrap();
    for _ in 0..256 {
        file.write_all(&pattern).unwrap();
    }
    drop(file);
    let guest_dir = world.home().join("guest");
    std::fs::create_dir_all(&guest_dir).unwrap();
    let mut child = world
        .command(&*BANGER)
        .args([
            "vm",
            "cp",
            big.to_str().unwrap(),
            &format!("box:{}/", guest_dir.display()),
        ])
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    // Once the staging directory exists the copy is under way; cut it.
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while !staging_in(&guest_dir) {
        assert!(
            std::time::Instant::now() < deadline,
            "the copy never started"
        );
        std::thread::sleep(Duration::from_millis(5));
    }
    child.kill().unwrap();
    child.wait().unwrap();
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while staging_in(&guest_dir) {
        assert!(
            std::time::Instant::now() < deadline,
            "the guest side never cleaned up"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    assert!(
        !guest_dir.join("big.bin").exists(),
        "no partial file at the name"
    );
    daemon.stop(&world);
}

fn staging_in(dir: &std::path::Path) -> bool {
    std::fs::read_dir(dir)
        .unwrap()
        .flatten()
        .any(|e| e.file_name().to_string_lossy().starts_with(".banger-cp"))
}

fn filetime_of(path: &std::path::Path) -> i64 {
    use std::os::unix::fs::MetadataExt;
    std::fs::symlink_metadata(path).unwrap().mtime()
}

#[test]
fn port_forward_carries_tcp_to_the_guest_port_and_names_a_port_holder() {
    let (world, daemon) = world_with_agent();
    let guest_port = doubling_service();
    let host_port = free_port();
    let spec = format!("127.0.0.1:{host_port}:{guest_port}");
    let mut forwarder = world
        .command(&*BANGER)
        .args(["vm", "port-forward", "box", &spec])
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut banner = String::new();
    BufReader::new(forwarder.stdout.as_mut().unwrap())
        .read_line(&mut banner)
        .unwrap();
    assert_eq!(
        banner,
        format!("forwarding 127.0.0.1:{host_port} -> box:{guest_port} over vsock (Ctrl-C stops)\n")
    );
    for round in 0..3 {
        let hello = format!("hello {round}");
        assert_eq!(ask(host_port, &hello).unwrap(), hello.repeat(2));
    }

    let taken = world.banger(&["vm", "port-forward", "box", &spec]);
    assert_eq!(taken.status.code(), Some(1));
    assert!(
        stderr(&taken).contains(&format!(
            "127.0.0.1:{host_port} is already in use by banger (pid {})",
            forwarder.id()
        )),
        "{}",
        stderr(&taken)
    );
    forwarder.kill().unwrap();
    forwarder.wait().unwrap();
    daemon.stop(&world);
}

/// A "guest" service on this host (the agent runs here): answers each
/// connection with what it sent, twice. Returns its port.
fn doubling_service() -> u16 {
    use std::io::Read;
    let service = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = service.local_addr().unwrap().port();
    std::thread::spawn(move || {
        for conn in service.incoming() {
            let mut conn = conn.unwrap();
            let mut request = Vec::new();
            conn.read_to_end(&mut request).unwrap();
            conn.write_all(&request.repeat(2)).unwrap();
        }
    });
    port
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn ask(port: u16, text: &str) -> std::io::Result<String> {
    use std::io::Read;
    let mut conn = std::net::TcpStream::connect(("127.0.0.1", port))?;
    conn.write_all(text.as_bytes())?;
    conn.shutdown(std::net::Shutdown::Write)?;
    let mut answer = String::new();
    conn.read_to_string(&mut answer)?;
    Ok(answer)
}

#[test]
fn a_published_port_is_kept_by_the_daemon_shown_and_removable() {
    let (world, daemon) = world_with_agent();
    let guest_port = doubling_service();
    let host_port = free_port();
    let spec = format!("{host_port}:{guest_port}");
    world.ok(&["vm", "set", "box", "--publish", &spec]);
    assert_eq!(ask(host_port, "hi").unwrap(), "hihi");
    assert_eq!(ask(host_port, "again").unwrap(), "againagain");

    let show = world.ok(&["vm", "show", "box"]);
    assert!(
        show.contains(&format!(
            "publish:     127.0.0.1:{host_port} -> {guest_port}"
        )),
        "{show}"
    );
    let list: serde_json::Value =
        serde_json::from_str(&world.ok(&["vm", "list", "--json"])).unwrap();
    assert_eq!(
        list[0]["publish"],
        serde_json::json!([format!("127.0.0.1:{host_port}:{guest_port}")])
    );

    // A second VM cannot take the same host port.
    let taken = world.banger(&["vm", "create", "--name", "other", "--publish", &spec]);
    assert_eq!(taken.status.code(), Some(1));
    assert!(
        stderr(&taken).contains(&format!(
            "host port 127.0.0.1:{host_port} is already published by VM box"
        )),
        "{}",
        stderr(&taken)
    );
    let bad = world.banger(&["vm", "set", "box", "--publish", "80"]);
    assert_eq!(bad.status.code(), Some(2));
    assert!(
        stderr(&bad).contains("invalid port mapping \"80\": no guest port"),
        "{}",
        stderr(&bad)
    );

    world.ok(&["vm", "set", "box", "--unpublish", &host_port.to_string()]);
    assert!(ask(host_port, "gone").is_err(), "nothing listens any more");
    assert!(world.ok(&["vm", "show", "box"]).contains("publish:     -"));
    daemon.stop(&world);
}
