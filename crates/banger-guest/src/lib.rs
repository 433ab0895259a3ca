//! `banger-vsock-pingd`: answers the host's ping over AF_VSOCK with the
//! guest's uptime and hostname. It serves every connection on its own
//! thread with short timeouts, so a bad or silent client never blocks
//! another, and nothing a client sends stops it.

pub mod agent;

use std::io::{BufRead, BufReader, Read, Write};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::time::Duration;

use banger_proto::ping;

/// How long a client may take to send its request.
pub const CLIENT_TIMEOUT: Duration = Duration::from_secs(2);

/// Reads one request line (bounded) and writes the answer.
pub fn serve_connection<S: Read + Write>(stream: S, status: &ping::Pong) -> std::io::Result<()> {
    let mut reader = BufReader::new(stream);
    let mut line = Vec::new();
    (&mut reader)
        .take(ping::MAX_LINE as u64)
        .read_until(b'\n', &mut line)?;
    let answer = ping::respond(&String::from_utf8_lossy(&line), status);
    let stream = reader.get_mut();
    stream.write_all(answer.as_bytes())?;
    stream.flush()
}

/// Seconds since boot, from `/proc/uptime`.
pub fn uptime_secs() -> u64 {
    std::fs::read_to_string("/proc/uptime")
        .ok()
        .and_then(|t| t.split('.').next().and_then(|s| s.trim().parse().ok()))
        .unwrap_or(0)
}

/// The guest's status for a ping: uptime, hostname, and systemd's state.
pub fn status() -> ping::Pong {
    ping::Pong {
        uptime_secs: uptime_secs(),
        hostname: hostname(),
        state: system_state(),
    }
}

/// How long systemctl may take: the whole ping has two seconds.
const SYSTEMCTL_TIMEOUT: Duration = Duration::from_millis(800);

/// `systemctl is-system-running`'s answer, with `stopping` told apart
/// into `rebooting` when the reboot target is on its way.
pub fn system_state() -> Option<String> {
    let state = systemctl(&["is-system-running"])?;
    let state = state.lines().next()?.trim().to_owned();
    if state == "stopping" {
        let targets =
            systemctl(&["is-active", "reboot.target", "kexec.target"]).unwrap_or_default();
        if targets
            .lines()
            .any(|l| matches!(l.trim(), "active" | "activating"))
        {
            return Some("rebooting".into());
        }
    }
    (!state.is_empty()).then_some(state)
}

/// systemctl's stdout, or nothing if it is missing or slow.
fn systemctl(args: &[&str]) -> Option<String> {
    let mut child = std::process::Command::new("systemctl")
        .args(args)
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .spawn()
        .ok()?;
    let deadline = std::time::Instant::now() + SYSTEMCTL_TIMEOUT;
    loop {
        match child.try_wait() {
            Ok(Some(_)) => break,
            Ok(None) if std::time::Instant::now() < deadline => {
                std::thread::sleep(Duration::from_millis(10));
            }
            _ => {
                let _ = child.kill();
                let _ = child.wait();
                return None;
            }
        }
    }
    let mut out = String::new();
    child.stdout.take()?.read_to_string(&mut out).ok()?;
    Some(out)
}

pub fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_owned())
        .unwrap_or_default()
}

/// A listening AF_VSOCK socket on `port` for any CID.
pub fn listen_vsock(port: u32) -> std::io::Result<OwnedFd> {
    // SAFETY: socket() with constant arguments; the result is checked.
    let fd = unsafe { libc::socket(libc::AF_VSOCK, libc::SOCK_STREAM | libc::SOCK_CLOEXEC, 0) };
    if fd < 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: fd is a fresh descriptor we own.
    let socket = unsafe { OwnedFd::from_raw_fd(fd) };
    // SAFETY: sockaddr_vm is plain data; zeroed is a valid starting value.
    let mut addr: libc::sockaddr_vm = unsafe { std::mem::zeroed() };
    addr.svm_family =
        libc::sa_family_t::try_from(libc::AF_VSOCK).expect("AF_VSOCK fits sa_family_t");
    addr.svm_port = port;
    addr.svm_cid = libc::VMADDR_CID_ANY;
    let len =
        libc::socklen_t::try_from(std::mem::size_of::<libc::sockaddr_vm>()).expect("small struct");
    // SAFETY: addr is a valid sockaddr_vm of the length given.
    let rc = unsafe { libc::bind(socket.as_raw_fd(), (&raw const addr).cast(), len) };
    if rc < 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: listen on a bound socket we own.
    if unsafe { libc::listen(socket.as_raw_fd(), 16) } < 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(socket)
}

/// Accepts one connection as a std stream (vsock streams behave like TCP's).
pub fn accept(listener: &OwnedFd) -> std::io::Result<std::net::TcpStream> {
    loop {
        // SAFETY: accepting on a listening socket we own; peer address not wanted.
        let fd = unsafe {
            libc::accept4(
                listener.as_raw_fd(),
                std::ptr::null_mut(),
                std::ptr::null_mut(),
                libc::SOCK_CLOEXEC,
            )
        };
        if fd >= 0 {
            // SAFETY: a new connected descriptor we now own; TcpStream only
            // uses read, write, shutdown and socket options on it.
            return Ok(unsafe { std::net::TcpStream::from_raw_fd(fd) });
        }
        let err = std::io::Error::last_os_error();
        if err.kind() != std::io::ErrorKind::Interrupted {
            return Err(err);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn answers_one_request_and_refuses_garbage() {
        let (mut host, guest) = std::os::unix::net::UnixStream::pair().unwrap();
        let status = ping::Pong {
            uptime_secs: 77,
            hostname: "calm-otter".into(),
            state: None,
        };
        let server = std::thread::spawn(move || serve_connection(guest, &status));
        host.write_all(ping::request().as_bytes()).unwrap();
        let mut answer = String::new();
        BufReader::new(&host).read_line(&mut answer).unwrap();
        assert_eq!(answer, "BANGER-PONG 1 uptime=77 hostname=calm-otter\n");
        server.join().unwrap().unwrap();

        let (mut host, guest) = std::os::unix::net::UnixStream::pair().unwrap();
        let server = std::thread::spawn(move || {
            let status = ping::Pong {
                uptime_secs: 1,
                hostname: "x".into(),
                state: None,
            };
            serve_connection(guest, &status)
        });
        host.write_all(&[0xff; 2000]).unwrap();
        let mut answer = String::new();
        BufReader::new(&host).read_line(&mut answer).unwrap();
        assert!(answer.starts_with("ERR "), "{answer}");
        server.join().unwrap().unwrap();
    }
}
