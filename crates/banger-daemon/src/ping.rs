//! `vm.ping`: reach the guest's `banger-vsock-pingd` through the VM's
//! hybrid-vsock Unix socket (`CONNECT <port>` / `OK <n>`, as Firecracker
//! and vhost-device-vsock both speak it), with tight timeouts.

use std::io::{BufRead, BufReader, Read, Write};
use std::path::Path;
use std::time::{Duration, Instant};

use banger_host::vsock::VsockError;
use banger_proto::ping::{self, Pong};
use thiserror::Error;

/// The whole exchange must finish within this.
pub const PING_TIMEOUT: Duration = Duration::from_secs(2);

#[derive(Debug, Error)]
pub enum PingError {
    #[error("the guest did not answer within {}s (is banger-vsock-pingd running in it?)", PING_TIMEOUT.as_secs())]
    Timeout,
    #[error("the vsock connection failed")]
    Io(#[source] std::io::Error),
    #[error(transparent)]
    Vsock(VsockError),
    #[error("{0}")]
    Protocol(String),
}

/// Pings the guest; returns its answer and the round-trip time.
pub fn ping(vsock_path: &Path) -> Result<(Pong, Duration), PingError> {
    let started = Instant::now();
    let stream = banger_host::vsock::connect(vsock_path, ping::PING_PORT, PING_TIMEOUT).map_err(
        |e| match e {
            VsockError::Timeout(_) => PingError::Timeout,
            other => PingError::Vsock(other),
        },
    )?;
    let io = |e: std::io::Error| match e.kind() {
        std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut => PingError::Timeout,
        _ => PingError::Io(e),
    };
    let mut writer = stream.try_clone().map_err(PingError::Io)?;
    let mut reader = BufReader::new(stream);
    writer.write_all(ping::request().as_bytes()).map_err(io)?;
    let answer = read_line(&mut reader).map_err(io)?;
    if answer.is_empty() {
        return Err(PingError::Protocol(
            "the guest closed the connection without answering".into(),
        ));
    }
    let pong = ping::parse_pong(&answer).map_err(PingError::Protocol)?;
    Ok((pong, started.elapsed()))
}

fn read_line(reader: &mut impl BufRead) -> std::io::Result<String> {
    let mut line = Vec::new();
    reader
        .take(ping::MAX_LINE as u64)
        .read_until(b'\n', &mut line)?;
    Ok(String::from_utf8_lossy(&line).into_owned())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::net::{UnixListener, UnixStream};

    /// A stand-in for the VMM's vsock muxer: answers the handshake, then
    /// hands the stream to `guest`.
    fn muxer(
        path: &Path,
        guest: impl Fn(UnixStream) + Send + 'static,
    ) -> std::thread::JoinHandle<()> {
        let listener = UnixListener::bind(path).unwrap();
        std::thread::spawn(move || {
            let (stream, _) = listener.accept().unwrap();
            guest(stream);
        })
    }

    fn handshake(stream: &UnixStream) -> String {
        let mut line = String::new();
        BufReader::new(stream).read_line(&mut line).unwrap();
        line
    }

    #[test]
    fn pings_the_real_responder_through_the_handshake() {
        let tmp = tempfile::tempdir().unwrap();
        let path = tmp.path().join("vsock.sock");
        let server = muxer(&path, |mut stream| {
            assert_eq!(handshake(&stream), "CONNECT 10789\n");
            stream.write_all(b"OK 1073741824\n").unwrap();
            let status = Pong {
                uptime_secs: 3600,
                hostname: "calm-otter".into(),
                state: Some("running".into()),
            };
            banger_guest::serve_connection(stream, &status).unwrap();
        });
        let (pong, rtt) = ping(&path).unwrap();
        assert_eq!(
            pong,
            Pong {
                uptime_secs: 3600,
                hostname: "calm-otter".into(),
                state: Some("running".into()),
            }
        );
        assert!(rtt < PING_TIMEOUT);
        server.join().unwrap();
    }

    #[test]
    fn garbage_slow_and_silent_peers_fail_fast_and_clearly() {
        let tmp = tempfile::tempdir().unwrap();
        let garbage = tmp.path().join("garbage.sock");
        let server = muxer(&garbage, |mut stream| {
            handshake(&stream);
            stream.write_all(b"HTTP/1.1 400 Bad Request\n").unwrap();
        });
        let err = ping(&garbage).unwrap_err();
        assert!(
            err.to_string().contains("nothing in the guest accepted"),
            "{err}"
        );
        server.join().unwrap();

        let slow = tmp.path().join("slow.sock");
        let server = muxer(&slow, |mut stream| {
            handshake(&stream);
            stream.write_all(b"OK 1\n").unwrap();
            std::thread::sleep(PING_TIMEOUT + Duration::from_millis(500));
        });
        let started = Instant::now();
        let err = ping(&slow).unwrap_err();
        assert!(matches!(err, PingError::Timeout), "{err}");
        assert!(
            started.elapsed() < PING_TIMEOUT + Duration::from_millis(400),
            "bounded wait"
        );
        server.join().unwrap();

        let silent = tmp.path().join("silent.sock");
        let server = muxer(&silent, |stream| {
            handshake(&stream);
            drop(stream);
        });
        let err = ping(&silent).unwrap_err();
        assert!(
            matches!(err, PingError::Vsock(VsockError::Refused { .. })),
            "{err}"
        );
        server.join().unwrap();

        let err = ping(&tmp.path().join("none.sock")).unwrap_err();
        assert!(err.to_string().contains("no vsock socket"), "{err}");
    }
}
