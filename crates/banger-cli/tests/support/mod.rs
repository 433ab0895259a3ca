//! A private banger world per test: HOME and every XDG directory in a temp
//! dir, the real `banger` and `bangerd` binaries, and a daemon that is
//! stopped when the test ends.

#![allow(dead_code)]

use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::Duration;

pub const BANGER: &str = env!("CARGO_BIN_EXE_banger");
pub const BANGERD: &str = env!("CARGO_BIN_EXE_bangerd");

#[derive(Debug)]
pub struct World {
    pub tmp: tempfile::TempDir,
}

impl World {
    pub fn new() -> Self {
        let tmp = tempfile::Builder::new()
            .prefix("banger-test-")
            .tempdir()
            .unwrap();
        std::fs::create_dir_all(tmp.path().join("run")).unwrap();
        Self { tmp }
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

    pub fn write_config(&self, text: &str) {
        std::fs::create_dir_all(self.config_file().parent().unwrap()).unwrap();
        std::fs::write(self.config_file(), text).unwrap();
    }

    /// A command with this world's environment and nothing of the caller's.
    pub fn command(&self, program: &str) -> Command {
        let mut command = Command::new(program);
        command
            .env_clear()
            .env("PATH", std::env::var_os("PATH").unwrap_or_default())
            .env("HOME", self.home())
            .env("XDG_RUNTIME_DIR", self.home().join("run"));
        command
    }

    pub fn banger(&self, args: &[&str]) -> Output {
        self.command(BANGER).args(args).output().unwrap()
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
        if let Some(pid) = self.daemon_pid() {
            // SAFETY: kill with a PID read from our own test daemon's PID file.
            unsafe { libc::kill(pid as libc::pid_t, libc::SIGKILL) };
        }
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
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .ok()
        .and_then(|s| {
            s.rsplit_once(')')
                .map(|(_, rest)| !rest.trim_start().starts_with('Z'))
        })
        .unwrap_or(false)
}
