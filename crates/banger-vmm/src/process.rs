//! What every backend shares: spawning a VMM detached from bangerd, and
//! learning when and why it exits.

use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::process::{CommandExt, ExitStatusExt};
use std::path::Path;
use std::process::{Child, Command, ExitStatus};
use std::time::{Duration, Instant};

use banger_host::procfs;

/// Why a VMM process ended, in words for `vm show`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ExitReason {
    /// Exit status 0: the guest powered off or rebooted (Firecracker exits on reboot).
    Clean,
    Signal(i32),
    Code(i32),
    /// Not our child (adopted after a daemon restart): the status is not ours to read.
    Unknown,
}

impl ExitReason {
    pub fn from_status(status: ExitStatus) -> Self {
        match (status.code(), status.signal()) {
            (Some(0), _) => Self::Clean,
            (Some(code), _) => Self::Code(code),
            (None, Some(signal)) => Self::Signal(signal),
            (None, None) => Self::Unknown,
        }
    }

    pub fn describe(&self) -> String {
        match self {
            Self::Clean => "clean shutdown".into(),
            Self::Signal(s) => format!("killed by {}", signal_name(*s)),
            Self::Code(c) => format!("exited with status {c} (see the VMM log)"),
            Self::Unknown => "exited while bangerd was not its parent (status unknown)".into(),
        }
    }
}

fn signal_name(signal: i32) -> String {
    let name = match signal {
        libc::SIGHUP => "SIGHUP",
        libc::SIGINT => "SIGINT",
        libc::SIGQUIT => "SIGQUIT",
        libc::SIGABRT => "SIGABRT",
        libc::SIGKILL => "SIGKILL",
        libc::SIGSEGV => "SIGSEGV",
        libc::SIGTERM => "SIGTERM",
        _ => return format!("signal {signal}"),
    };
    name.to_owned()
}

/// Puts the child in a process group of its own, so signals aimed at
/// bangerd's group (a Ctrl-C where it runs in the foreground) never reach the
/// VM. bangerd itself has no terminal (the CLI starts it with `setsid`).
/// A process group rather than a session keeps `posix_spawn`, which starts
/// Firecracker about 1.3 ms sooner than fork and exec.
pub fn detach(command: &mut Command) {
    command.process_group(0);
}

/// Lets the process `command` starts inherit descriptor `fd` at the same
/// number (it is close-on-exec in the daemon, so no other child gets it).
pub fn inherit_fd(command: &mut Command, fd: RawFd) {
    // SAFETY: fcntl is async-signal-safe, and the closure touches nothing
    // but the descriptor number it owns.
    unsafe {
        command.pre_exec(move || {
            if libc::fcntl(fd, libc::F_SETFD, 0) == 0 {
                Ok(())
            } else {
                Err(std::io::Error::last_os_error())
            }
        });
    }
}

/// Spawns `command` and, before anything else can happen, writes its
/// identity (`<pid> <start time>`) to `pid_file`. A bangerd killed at any
/// later step leaves that identity on disk, so the next one can find and
/// end the process. If the identity cannot be written, the process is
/// killed: nothing runs that a restarted daemon could not find.
pub fn spawn_recorded(command: &mut Command, pid_file: &Path) -> std::io::Result<Child> {
    let mut child = command.spawn()?;
    if let Err(e) = record_pid(pid_file, child.id()) {
        kill_child(&mut child);
        return Err(e);
    }
    Ok(child)
}

/// Writes `<pid> <start time>` to `path` under a temporary name and renames
/// it, so a reader never sees half a line.
pub fn record_pid(path: &Path, pid: u32) -> std::io::Result<()> {
    let start_time = procfs::stat(pid).map(|s| s.start_time).unwrap_or(0);
    let tmp = path.with_extension("pid.tmp");
    std::fs::write(&tmp, format!("{pid} {start_time}\n"))?;
    std::fs::rename(&tmp, path)
}

/// The process `path` names, if it still runs as that same process (its
/// start time matches; a file with only a PID is trusted as it is).
pub fn recorded_process(path: &Path) -> Option<(u32, Option<u64>)> {
    let text = std::fs::read_to_string(path).ok()?;
    let mut words = text.split_whitespace();
    let pid: u32 = words.next()?.parse().ok()?;
    let start_time = words
        .next()
        .and_then(|w| w.parse().ok())
        .filter(|t| *t != 0);
    procfs::is_running(pid, start_time).then_some((pid, start_time))
}

/// Ends the process `path` names (SIGKILL) if it still runs, waits up to
/// five seconds for it to go, and removes the file. Returns the PID ended.
pub fn end_recorded(path: &Path) -> Option<u32> {
    let ended = recorded_process(path).map(|(pid, start_time)| {
        let _ = send_signal(pid, libc::SIGKILL);
        let deadline = std::time::Instant::now() + Duration::from_secs(5);
        while procfs::is_running(pid, start_time) && std::time::Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(10));
        }
        pid
    });
    let _ = std::fs::remove_file(path);
    ended
}

pub fn send_signal(pid: u32, signal: i32) -> std::io::Result<()> {
    let pid = libc::pid_t::try_from(pid)
        .map_err(|_| std::io::Error::from(std::io::ErrorKind::InvalidInput))?;
    // SAFETY: kill has no memory-safety preconditions.
    if unsafe { libc::kill(pid, signal) } == 0 {
        Ok(())
    } else {
        Err(std::io::Error::last_os_error())
    }
}

/// Blocks until `child` exits.
pub fn wait_child(mut child: Child) -> ExitReason {
    match child.wait() {
        Ok(status) => ExitReason::from_status(status),
        Err(_) => ExitReason::Unknown,
    }
}

/// Blocks until a process that is not our child exits, using a pidfd so no
/// polling is needed; falls back to polling `/proc` if pidfds are missing.
pub fn wait_foreign(pid: u32, start_time: Option<u64>) -> ExitReason {
    match pidfd_open(pid) {
        Some(fd) => {
            let mut pfd = libc::pollfd {
                fd: fd.as_raw_fd(),
                events: libc::POLLIN,
                revents: 0,
            };
            loop {
                // SAFETY: pfd points at one valid pollfd for the duration of the call.
                let rc = unsafe { libc::poll(&mut pfd, 1, -1) };
                if rc >= 0
                    || std::io::Error::last_os_error().kind() != std::io::ErrorKind::Interrupted
                {
                    break;
                }
            }
        }
        None => {
            while procfs::is_running(pid, start_time) {
                std::thread::sleep(Duration::from_millis(200));
            }
        }
    }
    ExitReason::Unknown
}

pub(crate) fn pidfd_open(pid: u32) -> Option<OwnedFd> {
    let pid = libc::pid_t::try_from(pid).ok()?;
    // SAFETY: pidfd_open takes a pid and flags and returns a new descriptor or -1.
    let fd = unsafe { libc::syscall(libc::SYS_pidfd_open, pid, 0) };
    let fd = i32::try_from(fd).ok().filter(|fd| *fd >= 0)?;
    // SAFETY: the kernel just gave us this descriptor; nothing else owns it.
    Some(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// Waits up to `timeout` for `path` to exist while `child` still runs.
/// Returns the child's exit status if it died first.
pub fn wait_for_path(
    path: &Path,
    child: &mut Child,
    timeout: Duration,
) -> Result<bool, ExitStatus> {
    let start = Instant::now();
    loop {
        if path.exists() {
            return Ok(true);
        }
        if let Ok(Some(status)) = child.try_wait() {
            return Err(status);
        }
        let waited = start.elapsed();
        if waited > timeout {
            return Ok(false);
        }
        // Firecracker's socket appears about 1 ms after spawn: polls start
        // at 100 µs and back off to 5 ms, so at most a quarter of the wait
        // is spent asleep after the path appeared.
        std::thread::sleep(
            (waited / 4).clamp(Duration::from_micros(100), Duration::from_millis(5)),
        );
    }
}

/// Waits until `child` creates `ready` (the sign it can be used), or says
/// why not: it exited first (with its log's tail) or took longer than `timeout`.
/// The caller kills the child on error.
pub fn await_ready(
    child: &mut Child,
    ready: &Path,
    binary: &Path,
    log: &Path,
    timeout: Duration,
) -> crate::Result<()> {
    match wait_for_path(ready, child, timeout) {
        Ok(true) => Ok(()),
        Ok(false) => Err(crate::VmmError::SocketTimeout {
            socket: ready.to_path_buf(),
            seconds: timeout.as_secs(),
            log: log.to_path_buf(),
        }),
        Err(status) => Err(crate::VmmError::EarlyExit {
            binary: binary.display().to_string(),
            status: status.to_string(),
            log: log.to_path_buf(),
            tail: tail(log, 5),
        }),
    }
}

/// The record of a started VMM: its PID, start time and the child handle.
pub fn launched(child: Child) -> crate::Launched {
    let pid = child.id();
    let start_time = banger_host::procfs::stat(pid)
        .map(|s| s.start_time)
        .unwrap_or(0);
    crate::Launched {
        pid,
        start_time,
        child: Some(child),
    }
}

/// Kills and reaps a child we gave up on.
pub fn kill_child(child: &mut Child) {
    let _ = child.kill();
    let _ = child.wait();
}

pub use banger_host::procfs::{log_tail as tail, tail_suffix};

/// The VMM's log, opened for appending twice: its stdout and its stderr.
pub fn log_files(path: &Path) -> crate::Result<(std::fs::File, std::fs::File)> {
    let file = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
        .map_err(|e| crate::VmmError::Log(path.into(), e))?;
    let copy = file
        .try_clone()
        .map_err(|e| crate::VmmError::Log(path.into(), e))?;
    Ok((file, copy))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exit_reasons_describe_themselves() {
        assert_eq!(
            ExitReason::from_status(ExitStatus::from_raw(0)),
            ExitReason::Clean
        );
        assert_eq!(
            ExitReason::from_status(ExitStatus::from_raw(3 << 8)),
            ExitReason::Code(3)
        );
        assert_eq!(
            ExitReason::from_status(ExitStatus::from_raw(9)),
            ExitReason::Signal(9)
        );
        assert_eq!(ExitReason::Signal(9).describe(), "killed by SIGKILL");
        assert_eq!(ExitReason::Clean.describe(), "clean shutdown");
    }

    #[test]
    fn detached_children_lead_their_own_process_group() {
        let mut command = Command::new("sleep");
        command.arg("5");
        detach(&mut command);
        let mut child = command.spawn().unwrap();
        let pid = libc::pid_t::try_from(child.id()).unwrap();
        // SAFETY: getpgid has no memory-safety preconditions.
        let group = unsafe { libc::getpgid(pid) };
        kill_child(&mut child);
        assert_eq!(group, pid);
    }

    #[test]
    fn foreign_waits_end_when_the_process_does() {
        let mut child = Command::new("sleep").arg("0.2").spawn().unwrap();
        let pid = child.id();
        let waiter = std::thread::spawn(move || wait_foreign(pid, None));
        child.wait().unwrap();
        assert_eq!(waiter.join().unwrap(), ExitReason::Unknown);
    }
}
