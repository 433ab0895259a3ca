//! Running host commands: one seam, so tests can record or fail them.

use std::fmt;
use std::process::{Command, Stdio};

use thiserror::Error;

#[derive(Debug, Error)]
pub enum ProcessError {
    #[error("{program} is not installed or not on PATH: install {package}")]
    NotFound {
        program: String,
        package: &'static str,
    },
    #[error("running `{0}`")]
    Spawn(String, #[source] std::io::Error),
    #[error("`{cmd}` failed ({status}){}", stderr_suffix(.stderr))]
    Failed {
        cmd: String,
        status: String,
        stderr: String,
    },
    #[error("`{cmd}` reported: {message}")]
    Reported { cmd: String, message: String },
}

fn stderr_suffix(stderr: &str) -> String {
    let text = stderr.trim();
    if text.is_empty() {
        String::new()
    } else {
        format!(": {text}")
    }
}

impl ProcessError {
    /// A command that ran and exited non-zero (or was killed).
    pub fn failed(cmd: &Cmd, out: CmdOutput) -> Self {
        Self::Failed {
            cmd: cmd.to_string(),
            status: out
                .code
                .map(|c| format!("exit status {c}"))
                .unwrap_or_else(|| "killed by a signal".into()),
            stderr: out.stderr,
        }
    }
}

/// The Debian package that provides a program, for "install X" hints.
pub fn package_of(program: &str) -> &'static str {
    match program {
        "mkfs.ext4" | "mke2fs" | "e2fsck" | "resize2fs" | "debugfs" => "e2fsprogs",
        "ip" => "iproute2",
        "iptables" | "iptables-save" | "iptables-restore" => "iptables",
        "sysctl" => "procps",
        "ssh" | "ssh-keygen" => "openssh-client",
        "qemu-system-x86_64" => "qemu-system-x86",
        "sudo" => "sudo",
        "mmdebstrap" => "mmdebstrap",
        "busybox" => "busybox-static",
        "lz4" => "lz4",
        "cpio" => "cpio",
        "depmod" | "modprobe" => "kmod",
        "vhost-device-vsock" => "vhost-device-vsock (cargo install vhost-device-vsock)",
        "firecracker" => "Firecracker (not packaged in Debian)",
        _ => "the package that provides it",
    }
}

/// A command line, printable for error messages.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Cmd {
    pub program: String,
    pub args: Vec<String>,
}

impl Cmd {
    pub fn new(program: &str) -> Self {
        Self {
            program: program.to_owned(),
            args: Vec::new(),
        }
    }

    pub fn arg(mut self, arg: impl Into<String>) -> Self {
        self.args.push(arg.into());
        self
    }

    pub fn args<I, S>(mut self, args: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        self.args.extend(args.into_iter().map(Into::into));
        self
    }
}

impl fmt::Display for Cmd {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.program)?;
        for arg in &self.args {
            if arg.is_empty() || arg.contains(|c: char| c.is_whitespace() || c == '"') {
                write!(f, " {arg:?}")?;
            } else {
                write!(f, " {arg}")?;
            }
        }
        Ok(())
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CmdOutput {
    pub code: Option<i32>,
    pub stdout: String,
    pub stderr: String,
}

pub trait Runner: Send + Sync + fmt::Debug {
    /// Runs to completion; only a failure to start is an error.
    fn output(&self, cmd: &Cmd) -> Result<CmdOutput, ProcessError>;

    /// Runs and requires exit status 0, returning stdout.
    fn run(&self, cmd: &Cmd) -> Result<String, ProcessError> {
        let out = self.output(cmd)?;
        if out.code == Some(0) {
            Ok(out.stdout)
        } else {
            Err(ProcessError::failed(cmd, out))
        }
    }
}

/// Runs commands on this host.
#[derive(Debug, Default)]
pub struct HostRunner;

impl Runner for HostRunner {
    fn output(&self, cmd: &Cmd) -> Result<CmdOutput, ProcessError> {
        use std::os::unix::process::CommandExt;
        let mut command = Command::new(&cmd.program);
        command.args(&cmd.args).stdin(Stdio::null());
        // A tool (a copy, an fsck) ends with the thread waiting on it: a
        // killed daemon leaves none writing into what the next one removes.
        // SAFETY: prctl is async-signal-safe and touches only this child.
        unsafe {
            command.pre_exec(|| {
                if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) != 0 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
        let out = command.output().map_err(|e| {
            if e.kind() == std::io::ErrorKind::NotFound {
                ProcessError::NotFound {
                    program: cmd.program.clone(),
                    package: package_of(&cmd.program),
                }
            } else {
                ProcessError::Spawn(cmd.to_string(), e)
            }
        })?;
        Ok(CmdOutput {
            code: out.status.code(),
            stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
        })
    }
}

#[cfg(any(test, feature = "testing"))]
pub use fakes::*;

/// Runners for tests: in a network namespace, and recording: compiled for tests and the `testing` feature only.
#[cfg(any(test, feature = "testing"))]
mod fakes {
    use super::*;
    use std::sync::Mutex;

    /// Runs every command inside a network namespace (`ip netns exec NAME ...`):
    /// real devices and rules, isolated from the host's. For root tests.
    #[derive(Debug)]
    pub struct NetnsRunner {
        namespace: String,
    }

    impl NetnsRunner {
        /// Creates the namespace; it is deleted when the runner is dropped.
        pub fn create(namespace: &str) -> Result<Self, ProcessError> {
            HostRunner.run(&Cmd::new("ip").args(["netns", "add", namespace]))?;
            let runner = Self {
                namespace: namespace.to_owned(),
            };
            runner.run(&Cmd::new("ip").args(["link", "set", "lo", "up"]))?;
            Ok(runner)
        }

        pub fn namespace(&self) -> &str {
            &self.namespace
        }
    }

    impl Runner for NetnsRunner {
        fn output(&self, cmd: &Cmd) -> Result<CmdOutput, ProcessError> {
            let wrapped = Cmd::new("ip")
                .args(["netns", "exec", self.namespace.as_str()])
                .arg(cmd.program.clone())
                .args(cmd.args.iter().cloned());
            HostRunner.output(&wrapped)
        }
    }

    impl Drop for NetnsRunner {
        fn drop(&mut self) {
            let _ = HostRunner.run(&Cmd::new("ip").args(["netns", "del", self.namespace.as_str()]));
        }
    }

    /// Records every command and answers from a script: the first rule whose
    /// program and argument fragment match decides the outcome.
    #[derive(Debug, Default)]
    pub struct RecordingRunner {
        calls: Mutex<Vec<Cmd>>,
        rules: Mutex<Vec<Rule>>,
    }

    #[derive(Debug, Clone)]
    struct Rule {
        program: String,
        contains: Option<String>,
        output: CmdOutput,
    }

    impl RecordingRunner {
        pub fn new() -> Self {
            Self::default()
        }

        /// Makes `program` (with an argument containing `contains`, if given) exit with `code`.
        pub fn answer(
            &self,
            program: &str,
            contains: Option<&str>,
            code: i32,
            stdout: &str,
            stderr: &str,
        ) {
            self.rules.lock().expect("rules lock").push(Rule {
                program: program.to_owned(),
                contains: contains.map(str::to_owned),
                output: CmdOutput {
                    code: Some(code),
                    stdout: stdout.to_owned(),
                    stderr: stderr.to_owned(),
                },
            });
        }

        pub fn calls(&self) -> Vec<Cmd> {
            self.calls.lock().expect("calls lock").clone()
        }

        /// The recorded command lines, as text.
        pub fn lines(&self) -> Vec<String> {
            self.calls().iter().map(ToString::to_string).collect()
        }
    }

    impl Runner for RecordingRunner {
        fn output(&self, cmd: &Cmd) -> Result<CmdOutput, ProcessError> {
            self.calls.lock().expect("calls lock").push(cmd.clone());
            let rules = self.rules.lock().expect("rules lock");
            let rule = rules.iter().find(|r| {
                r.program == cmd.program
                    && r.contains
                        .as_ref()
                        .is_none_or(|c| cmd.args.iter().any(|a| a.contains(c.as_str())))
            });
            Ok(rule.map(|r| r.output.clone()).unwrap_or(CmdOutput {
                code: Some(0),
                stdout: String::new(),
                stderr: String::new(),
            }))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn host_runner_reports_missing_programs_with_the_package() {
        let err = HostRunner.run(&Cmd::new("mkfs.ext4-not-here")).unwrap_err();
        assert!(err.to_string().contains("not installed"), "{err}");
        let err = HostRunner
            .run(&Cmd::new("sh").args(["-c", "echo oops >&2; exit 3"]))
            .unwrap_err();
        assert_eq!(
            err.to_string(),
            "`sh -c \"echo oops >&2; exit 3\"` failed (exit status 3): oops"
        );
    }

    #[test]
    fn recording_runner_scripts_answers() {
        let runner = RecordingRunner::new();
        runner.answer("ip", Some("tap-x"), 2, "", "busy");
        assert!(
            runner
                .run(&Cmd::new("ip").args(["link", "del", "tap-x"]))
                .is_err()
        );
        assert!(
            runner
                .run(&Cmd::new("ip").args(["link", "del", "tap-y"]))
                .is_ok()
        );
        assert_eq!(runner.lines(), ["ip link del tap-x", "ip link del tap-y"]);
    }
}
