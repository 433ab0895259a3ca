//! bangerd and the CLI over a real Unix socket in a temp dir.

// An integration test crate is compiled only for tests; there is no module to wrap.
#![allow(clippy::tests_outside_test_module)]

mod support;

use std::os::unix::fs::{FileTypeExt, PermissionsExt};
use std::process::Stdio;

use serde_json::{Value, json};
use support::{BANGERD, World, stderr, stdout};

#[test]
fn cli_starts_the_daemon_and_status_reports_it() {
    let world = World::new();
    let out = world.banger(&["daemon", "status"]);
    assert_eq!(
        out.status.code(),
        Some(3),
        "status before start: {}",
        stdout(&out)
    );
    assert!(stdout(&out).contains("not running"));

    assert_eq!(
        world.ok(&["vm", "list"]),
        "No VMs. Create one with `banger vm create`.\n"
    );

    let text = world.ok(&["daemon", "status"]);
    let pid = world.daemon_pid().expect("the daemon wrote its PID");
    assert!(text.contains(&format!("pid:        {pid}")), "{text}");
    assert!(
        text.contains(&world.socket().display().to_string()),
        "{text}"
    );
    assert!(
        text.contains(&world.log_file().display().to_string()),
        "{text}"
    );
    assert!(text.contains("dns:        127.0.0.1:"), "{text}");
    assert!(!text.contains("not serving"), "{text}");

    let status: Value = serde_json::from_str(&world.ok(&["daemon", "status", "--json"])).unwrap();
    assert_eq!(status["running"], true);
    assert_eq!(status["pid"], pid);
    let dns: std::net::SocketAddr = status["dns_listen"].as_str().unwrap().parse().unwrap();
    assert_ne!(dns.port(), 0, "the bound port is reported");
    // The backend and why it was chosen are separate fields, nothing to parse.
    let vmm = status["vmm"].as_str().unwrap();
    assert!(["firecracker", "qemu"].contains(&vmm), "{status}");
    let reason = status["vmm_reason"].as_str().unwrap();
    assert!(!reason.is_empty() && !reason.starts_with(vmm), "{status}");
    assert!(text.contains(&format!("{vmm} ({reason})")), "{text}");

    assert_eq!(
        world.ok(&["daemon", "socket"]).trim(),
        world.socket().display().to_string()
    );

    // The daemon runs in its own session, detached from ours.
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
    let fields: Vec<&str> = stat
        .rsplit_once(')')
        .unwrap()
        .1
        .split_whitespace()
        .collect();
    assert_eq!(
        fields[3],
        pid.to_string(),
        "session id is the daemon's own PID"
    );

    // Logs are JSON lines.
    let log = std::fs::read_to_string(world.log_file()).unwrap();
    let first: Value = serde_json::from_str(log.lines().next().unwrap()).unwrap();
    assert!(
        first["level"].is_string() && first["fields"]["message"].is_string(),
        "{first}"
    );
}

#[test]
fn stop_is_graceful_and_removes_the_socket() {
    let world = World::new();
    world.ok(&["vm", "list"]);
    let pid = world.daemon_pid().unwrap();
    let text = world.ok(&["daemon", "stop"]);
    assert!(text.contains(&format!("pid {pid}")), "{text}");
    // The daemon released its lock before returning; its process ends right after.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
    while support::process_alive(pid) {
        assert!(
            std::time::Instant::now() < deadline,
            "daemon process is gone"
        );
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
    assert!(!world.socket().exists(), "socket removed");
    assert_eq!(world.ok(&["daemon", "stop"]), "bangerd is not running.\n");
    let log = std::fs::read_to_string(world.log_file()).unwrap();
    assert!(log.contains("bangerd stopped"), "{log}");
}

#[test]
fn socket_and_runtime_dir_are_private() {
    let world = World::new();
    world.ok(&["vm", "list"]);
    let socket = std::fs::metadata(world.socket()).unwrap();
    assert!(socket.file_type().is_socket());
    assert_eq!(socket.permissions().mode() & 0o777, 0o600);
    let dir = std::fs::metadata(world.socket().parent().unwrap()).unwrap();
    assert_eq!(dir.permissions().mode() & 0o777, 0o700);
}

#[test]
fn second_daemon_is_refused_with_the_holders_pid() {
    let world = World::new();
    world.ok(&["vm", "list"]);
    let pid = world.daemon_pid().unwrap();
    let out = world.command(&*BANGERD).output().unwrap();
    assert!(!out.status.success());
    let err = stderr(&out);
    assert!(
        err.contains(&format!("already running (pid {pid})")),
        "{err}"
    );
    assert!(err.contains("bangerd.sock"), "{err}");
    // The first daemon is unharmed.
    world.ok(&["daemon", "status"]);
}

#[test]
fn stale_socket_from_a_dead_daemon_is_replaced() {
    let world = World::new();
    world.ok(&["vm", "list"]);
    let pid = world.daemon_pid().unwrap();
    // SAFETY: killing our own test daemon.
    unsafe { libc::kill(pid as libc::pid_t, libc::SIGKILL) };
    while support::process_alive(pid) {
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
    assert!(world.socket().exists(), "SIGKILL leaves the socket behind");
    world.ok(&["vm", "list"]);
    assert_ne!(world.daemon_pid().unwrap(), pid, "a new daemon serves");
}

#[test]
fn bad_requests_get_errors_and_the_daemon_keeps_serving() {
    let world = World::new();
    world.ok(&["vm", "list"]);
    let mut client = world.rpc();

    let reply = client.send_raw(b"{not json\n");
    assert_eq!(reply["error"]["code"], -32700, "{reply}");
    assert_eq!(reply["id"], Value::Null);

    let reply = client.send_raw(b"[1,2,3]\n");
    assert_eq!(reply["error"]["code"], -32600, "{reply}");

    let reply = client.send_raw(b"{\"jsonrpc\":\"1.0\",\"id\":4,\"method\":\"vm.list\"}\n");
    assert_eq!(reply["error"]["code"], -32600, "{reply}");
    assert_eq!(reply["id"], 4);

    let reply = client.call("vm.explode", json!({}));
    assert_eq!(reply["error"]["code"], -32601, "{reply}");
    assert!(
        reply["error"]["message"]
            .as_str()
            .unwrap()
            .contains("vm.explode")
    );

    let reply = client.call("vm.show", json!({"wrong": 1}));
    assert_eq!(reply["error"]["code"], -32602, "{reply}");
    assert_eq!(reply["error"]["data"]["kind"], "invalid_params");
    assert!(
        !reply["error"]["data"]["causes"]
            .as_array()
            .unwrap()
            .is_empty(),
        "{reply}"
    );

    let reply = client.call("vm.show", json!({"vm": "nope"}));
    assert_eq!(reply["error"]["data"]["kind"], "not_found", "{reply}");

    // A misspelt field is refused, not ignored: the typo would do nothing.
    let reply = client.call("vm.create", json!({"name": "x", "memroy_mib": 512}));
    assert_eq!(reply["error"]["code"], -32602, "{reply}");
    let said = reply["error"].to_string();
    assert!(
        said.contains("vm.create") && said.contains("memroy_mib"),
        "{reply}"
    );

    let mut huge = vec![b'x'; banger_proto::MAX_MESSAGE_BYTES + 10];
    huge.push(b'\n');
    let reply = client.send_raw(&huge);
    assert_eq!(reply["error"]["code"], -32600, "{reply}");
    assert!(
        reply["error"]["message"]
            .as_str()
            .unwrap()
            .contains("larger than"),
        "{reply}"
    );

    // Invalid UTF-8 is a parse error, not a dropped connection.
    let reply = client.send_raw(b"\xff\xfe\n");
    assert_eq!(reply["error"]["code"], -32700, "{reply}");

    // The same connection, and a new one, still work.
    let reply = client.call("vm.list", Value::Null);
    assert_eq!(reply["result"], json!([]), "{reply}");
    world.ok(&["daemon", "status"]);
}

#[test]
fn a_client_that_hangs_up_mid_request_harms_no_one() {
    let world = World::new();
    world.ok(&["vm", "list"]);
    for _ in 0..20 {
        use std::io::Write;
        let mut stream = std::os::unix::net::UnixStream::connect(world.socket()).unwrap();
        stream
            .write_all(b"{\"jsonrpc\":\"2.0\",\"id\":1,\"meth")
            .unwrap();
    }
    world.ok(&["vm", "list"]);
}

#[test]
fn fifty_concurrent_clients_all_succeed() {
    let world = World::new();
    world.ok(&["vm", "list"]);
    let socket = world.socket();
    let threads: Vec<_> = (0..50)
        .map(|i| {
            let socket = socket.clone();
            std::thread::spawn(move || {
                let mut client = support::RawClient::connect(&socket);
                for _ in 0..10 {
                    let method = if i % 2 == 0 {
                        "vm.list"
                    } else {
                        "daemon.status"
                    };
                    let reply = client.call(method, Value::Null);
                    assert!(
                        reply["result"].is_object() || reply["result"].is_array(),
                        "{reply}"
                    );
                }
            })
        })
        .collect();
    for thread in threads {
        thread.join().unwrap();
    }
}

#[test]
fn concurrent_first_commands_share_one_daemon() {
    let world = World::new();
    let children: Vec<_> = (0..6)
        .map(|_| {
            world
                .command(&*support::BANGER)
                .args(["vm", "list"])
                .stdout(Stdio::piped())
                .stderr(Stdio::piped())
                .spawn()
                .unwrap()
        })
        .collect();
    for child in children {
        let out = child.wait_with_output().unwrap();
        assert!(out.status.success(), "{}", stderr(&out));
    }
    let pid = world.daemon_pid().unwrap();
    assert!(support::process_alive(pid));
    // A daemon that replaced another would log its own "bangerd ready"
    // line: exactly one may have become ready, and it is the one serving.
    let log = std::fs::read_to_string(world.log_file()).unwrap();
    let ready: Vec<serde_json::Value> = log
        .lines()
        .filter_map(|line| serde_json::from_str::<serde_json::Value>(line).ok())
        .filter(|entry| entry["fields"]["message"] == "bangerd ready")
        .collect();
    assert_eq!(ready.len(), 1, "one daemon became ready:\n{log}");
    assert_eq!(ready[0]["fields"]["pid"], pid, "{log}");
}

#[test]
fn a_daemon_that_cannot_start_is_reported_with_its_log() {
    let world = World::new();
    world.write_config("log_level = \"chatty\"\n");
    let out = world.banger(&["vm", "list"]);
    assert!(!out.status.success());
    let err = stderr(&out);
    assert!(err.contains("bangerd exited"), "{err}");
    assert!(
        err.contains(&world.log_file().display().to_string()),
        "{err}"
    );
    assert!(err.contains("log_level"), "the reason is shown: {err}");
}

#[test]
fn an_ssh_key_without_its_public_half_stops_the_daemon_with_the_fix() {
    let world = World::new();
    let key = world.home().join("id_test");
    std::fs::write(&key, "private\n").unwrap();
    world.write_config(&format!("ssh_key_path = \"{}\"\n", key.display()));
    let out = world.banger(&["vm", "list"]);
    assert!(!out.status.success());
    let err = stderr(&out);
    assert!(
        err.contains(&format!("has no readable public key {}.pub", key.display()))
            && err.contains("ssh-keygen -y -f"),
        "{err}"
    );
    std::fs::write(world.home().join("id_test.pub"), "ssh-ed25519 AAAA t\n").unwrap();
    world.ok(&["vm", "list"]);
}

#[test]
fn the_state_is_private_to_the_daemon_user() {
    use std::os::unix::fs::PermissionsExt;
    let world = World::new();
    // As an older banger left it: readable by everyone.
    let disk = world.state_dir().join("vms/0123abcd/overlay.ext4");
    std::fs::create_dir_all(disk.parent().unwrap()).unwrap();
    std::fs::write(&disk, "guest disk").unwrap();
    for (path, mode) in [
        (world.state_dir(), 0o755),
        (disk.parent().unwrap().to_path_buf(), 0o755),
        (disk.clone(), 0o644),
    ] {
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).unwrap();
    }
    world.ok(&["vm", "list"]);
    let mode = |p: &std::path::Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode(&world.state_dir()), 0o700);
    assert_eq!(mode(disk.parent().unwrap()), 0o700);
    assert_eq!(mode(&disk), 0o600);
    // Files the daemon made itself are private from the start.
    assert_eq!(mode(&world.state_dir().join("banger.db")), 0o600);
    assert_eq!(mode(&world.log_file()), 0o600);
    let log = std::fs::read_to_string(world.log_file()).unwrap();
    assert!(log.contains("removed group and other access"), "{log}");
}

/// A flood of idle connections gets a clear refusal past the cap, and
/// costs the daemon nothing once they go.
#[test]
fn connections_past_the_cap_are_refused_and_the_daemon_recovers() {
    use std::io::{BufRead, BufReader};
    let world = World::new();
    world.ok(&["vm", "list"]);
    let held: Vec<std::os::unix::net::UnixStream> = (0..banger_daemon::server::MAX_CONNECTIONS)
        .map(|_| {
            let stream = std::os::unix::net::UnixStream::connect(world.socket()).unwrap();
            // Served once, so it surely holds a slot; then a partial
            // message, as a slow or hostile client leaves it.
            std::io::Write::write_all(
                &mut &stream,
                b"{\"jsonrpc\":\"2.0\",\"id\":1,\"method\":\"daemon.status\"}\n",
            )
            .unwrap();
            let mut answer = String::new();
            BufReader::new(&stream).read_line(&mut answer).unwrap();
            assert!(answer.contains("\"result\""), "{answer}");
            std::io::Write::write_all(&mut &stream, b"{\"jsonrpc\":").unwrap();
            stream
        })
        .collect();
    let extra = std::os::unix::net::UnixStream::connect(world.socket()).unwrap();
    extra
        .set_read_timeout(Some(std::time::Duration::from_secs(5)))
        .unwrap();
    let mut line = String::new();
    BufReader::new(&extra)
        .read_line(&mut line)
        .expect("the refusal arrives");
    assert!(line.contains("connections already"), "{line}");
    drop(held);
    std::thread::sleep(std::time::Duration::from_millis(300));
    world.ok(&["vm", "list"]);
}

/// The disk under the log is full (here: the log is `/dev/full`, which
/// fails every write with ENOSPC, and so is the daemon's stderr). The
/// daemon still answers, and still stops when asked.
#[test]
fn a_full_disk_under_the_log_never_wedges_the_daemon() {
    let world = World::new();
    std::fs::create_dir_all(world.state_dir()).unwrap();
    std::os::unix::fs::symlink("/dev/full", world.log_file()).unwrap();
    for _ in 0..3 {
        world.ok(&["vm", "list"]);
        let out = world.banger(&["vm", "show", "nope"]);
        assert!(
            stderr(&out).contains("no VM named \"nope\""),
            "{}",
            stderr(&out)
        );
    }
    let pid = world.daemon_pid().unwrap();
    let stopped = world.ok(&["daemon", "stop"]);
    assert!(stopped.contains("stopped"), "{stopped}");
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
    while support::process_alive(pid) {
        assert!(std::time::Instant::now() < deadline, "the daemon exited");
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
}

#[test]
fn image_build_without_a_base_or_with_bad_input_says_what_to_do() {
    let world = World::new();
    // No bundle, so no default image to build from, even in a checkout
    // where `make runtime` made one beside the binaries.
    let empty = world.home().join("no-bundle");
    std::fs::create_dir_all(&empty).unwrap();
    let out = world
        .command(&*support::BANGER)
        .env("BANGER_RUNTIME_DIR", &empty)
        .args(["image", "build", "--name", "x"])
        .output()
        .unwrap();
    assert_eq!(
        out.status.code(),
        Some(2),
        "bad input, as for usage errors: {}",
        stderr(&out)
    );
    assert!(
        stderr(&out).contains("no base to build from: give --base IMAGE|PATH"),
        "{}",
        stderr(&out)
    );
    let out = world.banger(&["image", "build", "--name", "Bad_Name"]);
    assert_eq!(out.status.code(), Some(2), "refused by the CLI");
    assert!(
        stderr(&out).contains("invalid VM name \"Bad_Name\""),
        "{}",
        stderr(&out)
    );
    let out = world.banger(&[
        "image",
        "build",
        "--name",
        "x",
        "--packages",
        "/no/such.apt",
    ]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        stderr(&out).contains("reading the package list /no/such.apt"),
        "{}",
        stderr(&out)
    );
}

#[test]
fn version_and_completions() {
    let world = World::new();
    assert_eq!(
        world.ok(&["--version"]),
        format!("banger {}\n", env!("CARGO_PKG_VERSION"))
    );
    // Each shell's script registers banger's completer and knows the
    // command tree down to the flags of a nested command.
    let bash = world.ok(&["completions", "bash"]);
    assert!(bash.contains("_banger()"), "a completion function");
    assert!(
        bash.lines()
            .any(|l| l.trim_start().starts_with("complete -F _banger ")
                && l.trim_end().ends_with(" banger")),
        "registered for banger"
    );
    for word in [
        "create",
        "ssh",
        "--wait-timeout",
        "--disk-size",
        "--no-nat",
        "completions",
    ] {
        assert!(bash.contains(word), "bash completes {word}");
    }
    let zsh = world.ok(&["completions", "zsh"]);
    assert!(
        zsh.starts_with("#compdef banger"),
        "{}",
        &zsh[..zsh.len().min(80)]
    );
    assert!(zsh.contains("--wait-timeout") && zsh.contains("restart"));
    let fish = world.ok(&["completions", "fish"]);
    assert!(
        fish.lines()
            .filter(|l| l.starts_with("complete "))
            .all(|l| l.starts_with("complete -c banger ")),
        "every fish completion is for banger"
    );
    assert!(fish.contains("-l wait-timeout") && fish.contains("-a \"create\""));
    // A reader that goes away (`| head`) is no crash.
    let mut child = world
        .command(&*support::BANGER)
        .args(["completions", "bash"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    drop(child.stdout.take());
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(!stderr(&out).contains("panicked"), "{}", stderr(&out));
    let out = world.banger(&["completions", "tcsh"]);
    assert_eq!(out.status.code(), Some(2), "an unknown shell is bad input");
    assert!(stderr(&out).contains("tcsh"), "{}", stderr(&out));
    assert!(!world.socket().exists(), "neither starts the daemon");
}

#[test]
fn cli_refuses_bad_input_before_contacting_the_daemon() {
    let world = World::new();
    let out = world.banger(&["vm", "create", "--disk-size", "0G"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(stderr(&out).contains("\"0G\""), "{}", stderr(&out));
    assert!(!world.socket().exists(), "nothing was started");
}

#[test]
fn doctor_reports_json_and_fails_without_a_bundle() {
    let world = World::new();
    let missing = world.home().join("no-bundle");
    let doctor = |args: &[&str]| {
        world
            .command(&*support::BANGER)
            .env("BANGER_RUNTIME_DIR", &missing)
            .args(args)
            .output()
            .unwrap()
    };
    let out = doctor(&["doctor", "--json"]);
    assert_eq!(out.status.code(), Some(1), "a missing bundle is a failure");
    let checks: Vec<serde_json::Value> = serde_json::from_str(&stdout(&out)).unwrap();
    let bundle = checks
        .iter()
        .find(|c| c["name"] == "runtime bundle")
        .unwrap();
    assert_eq!(bundle["status"], "fail");
    let fix = bundle["fix"].as_str().unwrap();
    assert!(
        fix.contains("no-bundle") && fix.contains("BANGER_RUNTIME_DIR"),
        "{bundle}"
    );
    let text = stdout(&doctor(&["doctor"]));
    assert!(
        text.lines().any(|l| l.starts_with("fail  runtime bundle")),
        "{text}"
    );
    assert!(text.lines().last().unwrap().ends_with("failed"), "{text}");
    assert!(world.socket().exists(), "the daemon ran the checks");
}

#[test]
fn doctor_runs_the_checks_itself_when_no_daemon_can_start_and_says_so() {
    let world = World::new();
    // A banger with no bangerd beside it or on PATH cannot start one.
    let lone = world.home().join("lone-bin");
    std::fs::create_dir_all(&lone).unwrap();
    std::fs::copy(&*support::BANGER, lone.join("banger")).unwrap();
    let out = world
        .command(lone.join("banger"))
        .env("PATH", "/usr/sbin:/usr/bin:/sbin:/bin")
        .env("BANGER_RUNTIME_DIR", world.home().join("no-bundle"))
        .args(["doctor", "--json"])
        .output()
        .unwrap();
    assert!(
        stderr(&out).contains("note: no daemon could start (could not find the bangerd binary")
            && stderr(&out).contains("these checks ran in this banger instead"),
        "{}",
        stderr(&out)
    );
    let checks: Vec<serde_json::Value> = serde_json::from_str(&stdout(&out)).unwrap();
    assert!(
        checks.iter().any(|c| c["name"] == "runtime bundle"),
        "{checks:?}"
    );
    assert_eq!(out.status.code(), Some(1), "the missing bundle still fails");
    assert!(!world.socket().exists(), "nothing was started");
}
