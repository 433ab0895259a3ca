//! `banger-vsock-pingd`: answers the host's ping over AF_VSOCK with the
//! guest's uptime and hostname. It serves every connection on its own
//! thread with short timeouts, so a bad or silent client never blocks
//! another, and nothing a client sends stops it.

use std::io::{BufRead, BufReader, Read, Write};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::time::Duration;

use banger_proto::ping;

/// How long a client may take to send its request.
pub const CLIENT_TIMEOUT: Duration = Duration::from_secs(2);

/// Reads one request line (bounded) and writes the answer.
pub fn serve_connection<S: Read + Write>(
    stream: S,
    uptime_secs: u64,
    hostname: &str,
) -> std::io::Result<()> {
    let mut reader = BufReader::new(stream);
    let mut line = Vec::new();
    (&mut reader)
        .take(ping::MAX_LINE as u64)
        .read_until(b'\n', &mut line)?;
    let answer = ping::respond(&String::from_utf8_lossy(&line), uptime_secs, hostname);
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
        let server = std::thread::spawn(move || serve_connection(guest, 77, "calm-otter"));
        host.write_all(ping::request().as_bytes()).unwrap();
        let mut answer = String::new();
        BufReader::new(&host).read_line(&mut answer).unwrap();
        assert_eq!(answer, "BANGER-PONG 1 uptime=77 hostname=calm-otter\n");
        server.join().unwrap().unwrap();

        let (mut host, guest) = std::os::unix::net::UnixStream::pair().unwrap();
        let server = std::thread::spawn(move || serve_connection(guest, 1, "x"));
        host.write_all(&[0xff; 2000]).unwrap();
        let mut answer = String::new();
        BufReader::new(&host).read_line(&mut answer).unwrap();
        assert!(answer.starts_with("ERR "), "{answer}");
        server.join().unwrap().unwrap();
    }
}
