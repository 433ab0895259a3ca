//! `banger tui` in a real terminal: tmux runs it against a real daemon
//! (fake VMM), keys go in with `send-keys`, and the screen is read with
//! `capture-pane`, as a person would see it.

// An integration test crate is compiled only for tests; there is no module to wrap.
#![allow(clippy::tests_outside_test_module)]

mod support;

use std::path::PathBuf;
use std::process::Command;
use std::time::{Duration, Instant};

use support::{BANGER, World};

/// A tmux server of this test's own (its socket in the world's temp dir),
/// so no one's sessions are touched; killed on drop.
struct Tmux<'w> {
    world: &'w World,
    socket: PathBuf,
}

impl<'w> Tmux<'w> {
    /// Starts `banger tui` in a 140x40 pane that stays after the TUI exits.
    fn start_tui(world: &'w World) -> Self {
        // A fresh server each time: the last one may still be exiting.
        static STARTED: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
        let n = STARTED.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let tmux = Self {
            world,
            socket: world.home().join(format!("tmux-{n}.sock")),
        };
        // A shell runs the TUI and prints its exit status after it: tmux
        // itself sometimes marks a pane dead without ever learning it.
        let command = format!("{} tui; echo TUI-EXIT=$?; sleep 600", BANGER.display());
        tmux.run(&["new-session", "-d", "-x", "140", "-y", "40", &command]);
        tmux.run(&["set-option", "-g", "remain-on-exit", "on"]);
        tmux
    }

    fn run(&self, args: &[&str]) -> String {
        let out = self
            .world
            .command("tmux")
            .env("TERM", "xterm-256color")
            .arg("-S")
            .arg(&self.socket)
            .args(args)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "tmux {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    fn keys(&self, keys: &[&str]) {
        let mut args = vec!["send-keys", "-t", "0"];
        args.extend_from_slice(keys);
        self.run(&args);
    }

    fn screen(&self) -> String {
        self.run(&["capture-pane", "-p", "-t", "0"])
    }

    fn format(&self, format: &str) -> String {
        self.run(&["display-message", "-p", "-t", "0", format])
            .trim()
            .to_owned()
    }

    /// Waits until the screen shows every one of `texts`.
    fn wait_for(&self, texts: &[&str]) -> String {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let screen = self.screen();
            if texts.iter().all(|t| screen.contains(t)) {
                return screen;
            }
            assert!(
                Instant::now() < deadline,
                "the screen never showed {texts:?}:\n{screen}"
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// The row of `vm` in the table.
    fn row(&self, vm: &str) -> Option<String> {
        self.screen()
            .lines()
            .find(|l| l.starts_with('│') && l.contains(&format!(" {vm} ")))
            .map(str::to_owned)
    }

    fn wait_for_row(&self, vm: &str, state: &str) -> String {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if let Some(row) = self.row(vm).filter(|r| r.contains(&format!(" {state} "))) {
                return row;
            }
            assert!(
                Instant::now() < deadline,
                "{vm} never showed {state}:\n{}",
                self.screen()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// Waits for the TUI to exit; its exit status, as the shell saw it.
    fn wait_exit(&self) -> String {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let screen = self.screen();
            if let Some(status) = screen
                .lines()
                .find_map(|l| l.trim().strip_prefix("TUI-EXIT="))
            {
                return status.to_owned();
            }
            assert!(Instant::now() < deadline, "the TUI did not exit:\n{screen}");
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// The TUI's PID: the `banger tui` process whose HOME is this world's.
    fn tui_pid(&self) -> i32 {
        let home = format!("HOME={}", self.world.home().display());
        let command = format!("{}\0tui\0", BANGER.display());
        std::fs::read_dir("/proc")
            .unwrap()
            .filter_map(|entry| entry.ok()?.file_name().to_str()?.parse::<i32>().ok())
            .find(|pid| {
                std::fs::read(format!("/proc/{pid}/cmdline")).is_ok_and(|c| c == command.as_bytes())
                    && std::fs::read(format!("/proc/{pid}/environ"))
                        .is_ok_and(|e| e.split(|b| *b == 0).any(|v| v == home.as_bytes()))
            })
            .expect("the TUI runs")
    }
}

impl Drop for Tmux<'_> {
    fn drop(&mut self) {
        let _ = self
            .world
            .command("tmux")
            .arg("-S")
            .arg(&self.socket)
            .arg("kill-server")
            .output();
    }
}

fn have_tmux(test: &str) -> bool {
    banger_testkit::require(
        banger_testkit::have_tool("tmux"),
        test,
        "tmux is not installed (apt-get install tmux)",
    )
}

#[test]
fn create_stop_start_and_delete_from_the_tui() {
    if !have_tmux("create_stop_start_and_delete_from_the_tui") {
        return;
    }
    let world = World::new();
    world.write_fake_image();
    let daemon = world.start_fake_daemon();
    let tmux = Tmux::start_tui(&world);
    tmux.wait_for(&["No VMs. Press c to create one.", "c new"]);

    // The form opens with a generated name; replace it with ours.
    tmux.keys(&["c"]);
    tmux.wait_for(&["create a VM", "< default image >"]);
    for _ in 0..40 {
        tmux.keys(&["BSpace"]);
    }
    tmux.keys(&["-l", "tui-vm"]);
    tmux.keys(&["Tab", "Tab"]);
    tmux.keys(&["-l", "3"]);
    tmux.wait_for(&["name         tui-vm", "vcpu         3_"]);
    tmux.keys(&["Enter"]);
    tmux.wait_for(&["created tui-vm (running)"]);
    let row = tmux.wait_for_row("tui-vm", "running");
    assert!(row.contains(" 3 "), "three vCPUs: {row}");

    tmux.keys(&["x"]);
    tmux.wait_for(&["stopped tui-vm"]);
    tmux.wait_for_row("tui-vm", "stopped");
    assert!(
        world.ok(&["vm", "list"]).contains("stopped"),
        "the daemon agrees"
    );

    tmux.keys(&["u"]);
    tmux.wait_for(&["started tui-vm"]);
    tmux.wait_for_row("tui-vm", "running");

    tmux.keys(&["d"]);
    tmux.wait_for(&["Delete tui-vm?", "every file they own", "y  yes"]);
    tmux.keys(&["y"]);
    tmux.wait_for(&["deleted tui-vm", "No VMs. Press c to create one."]);
    assert!(world.ok(&["vm", "list"]).starts_with("No VMs"));

    tmux.keys(&["q"]);
    assert_eq!(tmux.wait_exit(), "0");
    assert_eq!(
        tmux.format("#{alternate_on}"),
        "0",
        "the terminal left the alternate screen"
    );
    drop(tmux);
    daemon.stop(&world);
}

#[test]
fn sigterm_and_ctrl_c_restore_the_terminal() {
    if !have_tmux("sigterm_and_ctrl_c_restore_the_terminal") {
        return;
    }
    let world = World::new();
    world.write_fake_image();
    let daemon = world.start_fake_daemon();
    for how in ["SIGTERM", "Ctrl-C"] {
        let tmux = Tmux::start_tui(&world);
        tmux.wait_for(&["No VMs."]);
        assert_eq!(tmux.format("#{alternate_on}"), "1");
        if how == "SIGTERM" {
            let pid = tmux.tui_pid().to_string();
            let killed = Command::new("kill").args(["-TERM", &pid]).status().unwrap();
            assert!(killed.success());
        } else {
            tmux.keys(&["C-c"]);
        }
        assert_eq!(tmux.wait_exit(), "0", "{how}");
        assert_eq!(
            tmux.format("#{alternate_on}"),
            "0",
            "{how}: alternate screen left"
        );
    }
    daemon.stop(&world);
}

#[test]
fn a_tui_whose_terminal_goes_away_exits() {
    if !have_tmux("a_tui_whose_terminal_goes_away_exits") {
        return;
    }
    let world = World::new();
    world.write_fake_image();
    let daemon = world.start_fake_daemon();
    let tmux = Tmux::start_tui(&world);
    tmux.wait_for(&["No VMs."]);
    let pid = tmux.tui_pid();
    // The terminal's other end closes, as when tmux or an SSH link dies.
    drop(tmux);
    let deadline = Instant::now() + Duration::from_secs(5);
    // SAFETY: signal 0 only asks whether our own TUI's PID still exists.
    while unsafe { libc::kill(pid, 0) } == 0 {
        if Instant::now() > deadline {
            // SAFETY: the TUI this test started, by its PID.
            unsafe { libc::kill(pid, libc::SIGKILL) };
            panic!("the TUI kept running after its terminal closed");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    daemon.stop(&world);
}

#[test]
fn without_a_terminal_the_tui_says_what_to_use_instead() {
    let world = World::new();
    let out = world.banger(&["tui"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        support::stderr(&out).contains("banger tui needs a terminal"),
        "{}",
        support::stderr(&out)
    );
}
