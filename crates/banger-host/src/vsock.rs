//! The host's end of a guest's vsock port. Firecracker's hybrid vsock and
//! vhost-device-vsock both take `CONNECT <port>\n` on the VM's Unix socket
//! and answer `OK <n>\n` once the guest accepted; anything else is a
//! refusal (nothing listens on that port in the guest).

use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::time::Duration;

use thiserror::Error;

#[derive(Debug, Error)]
pub enum VsockError {
    #[error("no vsock socket at {0}")]
    NoSocket(PathBuf),
    #[error("connecting to the vsock socket {0}")]
    Connect(PathBuf, #[source] std::io::Error),
    #[error("nothing in the guest accepted vsock port {port} (the VMM answered {answer:?})")]
    Refused { port: u32, answer: String },
    #[error("the guest did not answer within {}s", .0.as_secs())]
    Timeout(Duration),
    #[error("the vsock connection failed")]
    Io(#[source] std::io::Error),
}

/// Longest handshake answer read.
const MAX_ANSWER: usize = 64;

/// A stream to the guest's `port`, through the VM's vsock socket at
/// `path`. The handshake must finish within `timeout`, which stays set
/// on the stream for the caller to change.
pub fn connect(path: &Path, port: u32, timeout: Duration) -> Result<UnixStream, VsockError> {
    if !path.exists() {
        return Err(VsockError::NoSocket(path.into()));
    }
    let mut stream = UnixStream::connect(path).map_err(|e| VsockError::Connect(path.into(), e))?;
    // A VMM closes the connection when no guest listener takes the port.
    let io = |e: std::io::Error| match e.kind() {
        std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut => {
            VsockError::Timeout(timeout)
        }
        std::io::ErrorKind::BrokenPipe | std::io::ErrorKind::ConnectionReset => {
            VsockError::Refused {
                port,
                answer: String::new(),
            }
        }
        _ => VsockError::Io(e),
    };
    stream.set_read_timeout(Some(timeout)).map_err(io)?;
    stream.set_write_timeout(Some(timeout)).map_err(io)?;
    stream
        .write_all(format!("CONNECT {port}\n").as_bytes())
        .map_err(io)?;
    // Byte by byte: what follows the line is the guest's, not ours to read.
    let mut answer = Vec::new();
    let mut byte = [0u8; 1];
    while answer.len() < MAX_ANSWER {
        match stream.read(&mut byte).map_err(io)? {
            0 => break,
            _ if byte[0] == b'\n' => break,
            _ => answer.push(byte[0]),
        }
    }
    let answer = String::from_utf8_lossy(&answer).into_owned();
    if !answer.starts_with("OK ") {
        return Err(VsockError::Refused { port, answer });
    }
    Ok(stream)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{BufRead, BufReader};
    use std::os::unix::net::UnixListener;

    #[test]
    fn the_handshake_leaves_the_guests_bytes_unread() {
        let tmp = tempfile::tempdir().unwrap();
        let path = tmp.path().join("vsock.sock");
        let listener = UnixListener::bind(&path).unwrap();
        let server = std::thread::spawn(move || {
            let (mut stream, _) = listener.accept().unwrap();
            let mut line = String::new();
            BufReader::new(&stream).read_line(&mut line).unwrap();
            assert_eq!(line, "CONNECT 10790\n");
            stream.write_all(b"OK 1073741824\nguest says hi").unwrap();
        });
        let mut stream = connect(&path, 10790, Duration::from_secs(2)).unwrap();
        let mut rest = String::new();
        stream.read_to_string(&mut rest).unwrap();
        assert_eq!(rest, "guest says hi");
        server.join().unwrap();

        let listener = UnixListener::bind(tmp.path().join("closed.sock")).unwrap();
        let server = std::thread::spawn(move || drop(listener.accept().unwrap()));
        let err = connect(
            &tmp.path().join("closed.sock"),
            10790,
            Duration::from_secs(2),
        )
        .unwrap_err();
        assert!(
            matches!(err, VsockError::Refused { port: 10790, .. }),
            "{err}"
        );
        server.join().unwrap();
        assert!(matches!(
            connect(&tmp.path().join("none.sock"), 1, Duration::from_secs(1)),
            Err(VsockError::NoSocket(_))
        ));
    }
}
