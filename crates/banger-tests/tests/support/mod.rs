//! A private banger world per test: HOME and every XDG directory in a temp
//! dir, the real `banger` and `bangerd` binaries, and a daemon that is
//! stopped when the test ends.

#![allow(dead_code)]

use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::Duration;

/// The workspace's `banger` and `bangerd`, beside this test's `deps/` dir
/// (cargo sets `CARGO_BIN_EXE_*` only for a package's own binaries).
pub static BANGER: std::sync::LazyLock<PathBuf> = std::sync::LazyLock::new(|| binary("banger"));
pub static BANGERD: std::sync::LazyLock<PathBuf> = std::sync::LazyLock::new(|| binary("bangerd"));

fn binary(name: &str) -> PathBuf {
    let exe = std::env::current_exe().expect("the test binary's path");
    let path = exe
        .parent()
        .and_then(Path::parent)
        .map(|dir| dir.join(name))
        .expect("the test binary sits in target/<profile>/deps");
    assert!(
        path.is_file(),
        "{} is missing: run `cargo build --bins` before these tests (make unit does)",
        path.display()
    );
    path
}

#[derive(Debug)]
pub struct World {
    pub tmp: tempfile::TempDir,
}

impl World {
    /// Tests run in parallel, so each daemon's DNS takes any free port.
    pub const BASE_CONFIG: &str = "dns_listen = \"127.0.0.1:0\"\n";

    pub fn new() -> Self {
        let tmp = tempfile::Builder::new()
            .prefix("banger-test-")
            .tempdir()
            .unwrap();
        std::fs::create_dir_all(tmp.path().join("run")).unwrap();
        let world = Self { tmp };
        world.write_config("");
        world
    }

    pub fn home(&self) -> &Path {
        self.tmp.path()
    }

    pub fn socket(&self) -> PathBuf {
        self.home().join("run/banger/bangerd.sock")
    }

    pub fn pid_file(&self) -> PathBuf {
        self.home().join("run/banger/bangerd.pid")
    }

    pub fn state_dir(&self) -> PathBuf {
        self.home().join(".local/state/banger")
    }

    pub fn log_file(&self) -> PathBuf {
        self.state_dir().join("bangerd.log")
    }

    pub fn config_file(&self) -> PathBuf {
        self.home().join(".config/banger/config.toml")
    }

    /// Writes config.toml: [`World::BASE_CONFIG`] plus `text`.
    pub fn write_config(&self, text: &str) {
        std::fs::create_dir_all(self.config_file().parent().unwrap()).unwrap();
        std::fs::write(self.config_file(), format!("{}{text}", Self::BASE_CONFIG)).unwrap();
    }

    /// A command with this world's environment and nothing of the caller's.
    pub fn command(&self, program: impl AsRef<std::ffi::OsStr>) -> Command {
        let mut command = Command::new(program);
        command
            .env_clear()
            .env("PATH", std::env::var_os("PATH").unwrap_or_default())
            .env("HOME", self.home())
            .env("XDG_RUNTIME_DIR", self.home().join("run"));
        command
    }

    pub fn banger(&self, args: &[&str]) -> Output {
        self.command(&*BANGER).args(args).output().unwrap()
    }

    /// Runs banger and asserts success, returning stdout.
    pub fn ok(&self, args: &[&str]) -> String {
        let out = self.banger(args);
        assert!(
            out.status.success(),
            "banger {args:?} failed ({}):\nstdout: {}\nstderr: {}",
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).unwrap()
    }

    pub fn daemon_pid(&self) -> Option<u32> {
        std::fs::read_to_string(self.pid_file())
            .ok()?
            .trim()
            .parse()
            .ok()
    }

    pub fn rpc(&self) -> RawClient {
        RawClient::connect(&self.socket())
    }
}

impl Drop for World {
    fn drop(&mut self) {
        if self.socket().exists() {
            let _ = self.banger(&["daemon", "stop"]);
        }
        // An in-process daemon's PID is ours: never kill it.
        if let Some(pid) = self.daemon_pid().filter(|pid| *pid != std::process::id()) {
            // SAFETY: kill with a PID read from our own test daemon's PID file.
            unsafe { libc::kill(pid as libc::pid_t, libc::SIGKILL) };
        }
        // No VM process outlives its test.
        let db = self.state_dir().join("banger.db");
        if let Ok(store) = banger_daemon::store::Store::open(&db) {
            for vm in store.list_vms().unwrap_or_default() {
                if let Some(pid) = vm.pid {
                    // SAFETY: a PID this test's daemon recorded for its own fake VM.
                    unsafe { libc::kill(pid as libc::pid_t, libc::SIGKILL) };
                }
            }
        }
    }
}

/// A daemon running inside the test process with a fake VMM and fake
/// disks, serving the real socket the `banger` binary talks to.
pub struct FakeDaemon {
    thread: Option<std::thread::JoinHandle<anyhow::Result<()>>>,
    pub vmm: std::sync::Arc<banger_vmm::fake::FakeVmm>,
    pub disks: std::sync::Arc<banger_host::disk::FakeDisks>,
    pub network: std::sync::Arc<banger_host::net::FakeNetwork>,
}

impl World {
    /// Image files and a config naming them as the default image.
    pub fn write_fake_image(&self) {
        let bundle = self.home().join("bundle");
        std::fs::create_dir_all(&bundle).unwrap();
        for file in ["rootfs.ext4", "vmlinux", "initrd.img"] {
            std::fs::write(bundle.join(file), "image").unwrap();
        }
        self.write_config(&format!(
            "default_rootfs = \"{0}/rootfs.ext4\"\ndefault_kernel = \"{0}/vmlinux\"\ndefault_initrd = \"{0}/initrd.img\"\n",
            bundle.display()
        ));
    }

    pub fn start_fake_daemon(&self) -> FakeDaemon {
        let home = self.home().to_path_buf();
        let paths = banger_host::Paths::under(&home).unwrap();
        paths.ensure_daemon_dirs().unwrap();
        let config = banger_host::Config::load(&paths.config_file, &home, |_| None).unwrap();
        let vmm = std::sync::Arc::new(banger_vmm::fake::FakeVmm::new());
        let disks = std::sync::Arc::new(banger_host::disk::FakeDisks::new());
        let network = std::sync::Arc::new(banger_host::net::FakeNetwork::new());
        let deps = banger_daemon::Deps {
            backends: vec![vmm.clone()],
            disks: disks.clone(),
            network: network.clone(),
            public_keys: vec!["ssh-ed25519 AAAAtest banger-test".into()],
            ports: std::sync::Arc::new(banger_host::publish::TcpPublisher::default()),
            vmm_reason: "fake VMM for tests".into(),
            stop_timeouts: banger_daemon::lifecycle::StopTimeouts {
                graceful: Duration::from_secs(2),
                term: Duration::from_secs(2),
            },
        };
        let thread = std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_multi_thread()
                .enable_all()
                .build()?;
            runtime.block_on(banger_daemon::run(paths, config, None, deps))
        });
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        while UnixStream::connect(self.socket()).is_err() {
            assert!(
                !thread.is_finished(),
                "the in-process daemon failed to start"
            );
            assert!(
                std::time::Instant::now() < deadline,
                "the in-process daemon did not answer"
            );
            std::thread::sleep(Duration::from_millis(10));
        }
        FakeDaemon {
            thread: Some(thread),
            vmm,
            disks,
            network,
        }
    }
}

impl FakeDaemon {
    /// `banger daemon stop`, then waits for the daemon to finish.
    pub fn stop(mut self, world: &World) {
        world.ok(&["daemon", "stop"]);
        self.thread.take().unwrap().join().unwrap().unwrap();
    }
}

/// A line-level client for protocol tests.
#[derive(Debug)]
pub struct RawClient {
    stream: UnixStream,
    reader: BufReader<UnixStream>,
}

impl RawClient {
    pub fn connect(socket: &Path) -> Self {
        let stream = UnixStream::connect(socket).unwrap();
        stream
            .set_read_timeout(Some(Duration::from_secs(10)))
            .unwrap();
        let reader = BufReader::new(stream.try_clone().unwrap());
        Self { stream, reader }
    }

    pub fn send_raw(&mut self, bytes: &[u8]) -> serde_json::Value {
        self.stream.write_all(bytes).unwrap();
        let mut line = String::new();
        self.reader.read_line(&mut line).unwrap();
        serde_json::from_str(&line).unwrap_or_else(|e| panic!("bad response {line:?}: {e}"))
    }

    pub fn call(&mut self, method: &str, params: serde_json::Value) -> serde_json::Value {
        let request =
            serde_json::json!({"jsonrpc": "2.0", "id": 1, "method": method, "params": params});
        self.send_raw(format!("{request}\n").as_bytes())
    }
}

pub fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

pub fn stdout(out: &Output) -> String {
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Running, as opposed to gone or a zombie awaiting its reaper.
pub fn process_alive(pid: u32) -> bool {
    banger_host::procfs::is_running(pid, None)
}
