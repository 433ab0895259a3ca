//! Published ports: a host TCP listener whose connections go, over vsock
//! and the guest agent's `Connect`, to a port inside the guest. The daemon
//! keeps them open while a VM runs ([`PortPublisher`]); `vm port-forward`
//! uses the same [`listen`] and [`tunnel`] in the foreground.

use std::collections::HashMap;
use std::fmt;
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::os::fd::AsRawFd;
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

use banger_proto::PortMapping;
use banger_proto::agent::{AGENT_PORT, ConnectRequest, Kind, read_frame, write_frame};
use thiserror::Error;

use crate::agent::AgentError;

#[derive(Debug, Error)]
pub enum PublishError {
    #[error("{addr} is already in use{holder}: pick another host port")]
    InUse { addr: SocketAddr, holder: String },
    #[error("listening on {addr}")]
    Listen {
        addr: SocketAddr,
        #[source]
        source: std::io::Error,
    },
}

/// Binds `addr`; a port in use names the process holding it when `/proc`
/// shows one.
pub fn listen(addr: SocketAddr) -> Result<TcpListener, PublishError> {
    TcpListener::bind(addr).map_err(|source| {
        if source.kind() == std::io::ErrorKind::AddrInUse {
            let holder = crate::procfs::tcp_port_holder(addr.port())
                .map(|(pid, name)| format!(" by {name} (pid {pid})"))
                .unwrap_or_default();
            PublishError::InUse { addr, holder }
        } else {
            PublishError::Listen { addr, source }
        }
    })
}

/// One connection: through the agent behind `vsock` to the guest's
/// `guest_port`, then bytes both ways until both sides finish.
pub fn tunnel(client: TcpStream, vsock: &Path, guest_port: u16) -> Result<(), AgentError> {
    let mut guest = crate::vsock::connect(vsock, AGENT_PORT, Duration::from_secs(5))?;
    let request =
        serde_json::to_vec(&ConnectRequest { port: guest_port }).expect("a port serializes");
    write_frame(&mut guest, Kind::Connect, &request).map_err(AgentError::Io)?;
    let answer = read_frame(&mut guest)
        .map_err(AgentError::Frame)?
        .ok_or(AgentError::Closed)?;
    match answer.kind {
        Kind::Connected => {}
        Kind::Error => {
            return Err(AgentError::Refused(
                String::from_utf8_lossy(&answer.payload).into_owned(),
            ));
        }
        other => return Err(AgentError::Unexpected(format!("{other:?}"))),
    }
    guest.set_read_timeout(None).map_err(AgentError::Io)?;
    guest.set_write_timeout(None).map_err(AgentError::Io)?;
    splice(client, guest).map_err(AgentError::Io)
}

/// Copies both ways, passing on each side's end of file.
fn splice(client: TcpStream, guest: UnixStream) -> std::io::Result<()> {
    let (mut client_in, mut client_out) = (client.try_clone()?, client);
    let (mut guest_in, mut guest_out) = (guest.try_clone()?, guest);
    let up = std::thread::spawn(move || {
        let _ = std::io::copy(&mut client_in, &mut guest_out);
        let _ = guest_out.shutdown(Shutdown::Write);
    });
    let _ = std::io::copy(&mut guest_in, &mut client_out);
    let _ = client_out.shutdown(Shutdown::Write);
    let _ = up.join();
    Ok(())
}

/// Accepts on `listener` until `stop`, tunnelling each connection on a
/// thread of its own.
pub fn serve(listener: &TcpListener, vsock: &Path, guest_port: u16, stop: &AtomicBool) {
    for client in listener.incoming() {
        if stop.load(Ordering::SeqCst) {
            return;
        }
        match client {
            Ok(client) => {
                let vsock = vsock.to_owned();
                std::thread::spawn(move || {
                    if let Err(e) = tunnel(client, &vsock, guest_port) {
                        tracing::debug!(vsock = %vsock.display(), guest_port, error = %banger_proto::rpc::error_text(&e), "a forwarded connection failed");
                    }
                });
            }
            // Out of descriptors and the like: wait rather than spin.
            Err(_) => std::thread::sleep(Duration::from_millis(100)),
        }
    }
}

/// The daemon's published ports, by owner (a VM ID).
pub trait PortPublisher: Send + Sync + fmt::Debug {
    /// Listens on `mapping.host` and forwards to the guest behind `vsock`.
    fn open(&self, owner: &str, mapping: PortMapping, vsock: &Path) -> Result<(), PublishError>;

    /// Stops listening on `host` for `owner`; connections already made
    /// run on until either end closes. Nothing open is not an error.
    fn close(&self, owner: &str, host: SocketAddr);

    /// What `owner` has open now, in no particular order.
    fn open_for(&self, owner: &str) -> Vec<PortMapping>;
}

/// Real listeners, one accept thread each.
#[derive(Debug, Default)]
pub struct TcpPublisher {
    open: Mutex<HashMap<(String, SocketAddr), Listening>>,
}

#[derive(Debug)]
struct Listening {
    mapping: PortMapping,
    listener: Arc<TcpListener>,
    stop: Arc<AtomicBool>,
    accepter: JoinHandle<()>,
}

impl Listening {
    fn end(self) {
        self.stop.store(true, Ordering::SeqCst);
        // SAFETY: the descriptor is open: `listener` is still held here.
        // On Linux, shutting a listening socket down wakes a blocked accept().
        unsafe { libc::shutdown(self.listener.as_raw_fd(), libc::SHUT_RDWR) };
        let _ = self.accepter.join();
    }
}

impl PortPublisher for TcpPublisher {
    fn open(&self, owner: &str, mapping: PortMapping, vsock: &Path) -> Result<(), PublishError> {
        let key = (owner.to_owned(), mapping.host);
        let mut open = self.open.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(current) = open.remove(&key) {
            if current.mapping == mapping {
                open.insert(key, current);
                return Ok(());
            }
            current.end();
        }
        let listener = Arc::new(listen(mapping.host)?);
        let stop = Arc::new(AtomicBool::new(false));
        let accepter = {
            let (listener, stop, vsock) = (listener.clone(), stop.clone(), PathBuf::from(vsock));
            std::thread::Builder::new()
                .name(format!("publish {}", mapping.host))
                .spawn(move || serve(&listener, &vsock, mapping.guest_port, &stop))
                .map_err(|source| PublishError::Listen {
                    addr: mapping.host,
                    source,
                })?
        };
        open.insert(
            key,
            Listening {
                mapping,
                listener,
                stop,
                accepter,
            },
        );
        Ok(())
    }

    fn close(&self, owner: &str, host: SocketAddr) {
        let found = self
            .open
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(&(owner.to_owned(), host));
        if let Some(listening) = found {
            listening.end();
        }
    }

    fn open_for(&self, owner: &str) -> Vec<PortMapping> {
        self.open
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .iter()
            .filter(|((o, _), _)| o == owner)
            .map(|(_, l)| l.mapping)
            .collect()
    }
}

/// Published ports in memory, with host addresses made "in use" on
/// demand: compiled for tests and the `testing` feature only.
#[cfg(any(test, feature = "testing"))]
#[derive(Debug, Default)]
pub struct FakePublisher {
    open: Mutex<Vec<(String, PortMapping)>>,
    taken: Mutex<Vec<SocketAddr>>,
}

#[cfg(any(test, feature = "testing"))]
impl FakePublisher {
    /// Someone else listens on `addr` from now on.
    pub fn take(&self, addr: SocketAddr) {
        self.taken.lock().unwrap().push(addr);
    }

    /// Every open port, by owner.
    pub fn all_open(&self) -> Vec<(String, PortMapping)> {
        self.open.lock().unwrap().clone()
    }
}

#[cfg(any(test, feature = "testing"))]
impl PortPublisher for FakePublisher {
    fn open(&self, owner: &str, mapping: PortMapping, _vsock: &Path) -> Result<(), PublishError> {
        let mut open = self.open.lock().unwrap();
        let busy = self.taken.lock().unwrap().contains(&mapping.host)
            || open
                .iter()
                .any(|(o, m)| (o != owner || m.host != mapping.host) && m.clashes_with(&mapping));
        if busy {
            return Err(PublishError::InUse {
                addr: mapping.host,
                holder: " by someone-else (pid 1)".into(),
            });
        }
        open.retain(|(o, m)| !(o == owner && m.host == mapping.host));
        open.push((owner.to_owned(), mapping));
        Ok(())
    }

    fn close(&self, owner: &str, host: SocketAddr) {
        self.open
            .lock()
            .unwrap()
            .retain(|(o, m)| !(o == owner && m.host == host));
    }

    fn open_for(&self, owner: &str) -> Vec<PortMapping> {
        self.open
            .lock()
            .unwrap()
            .iter()
            .filter(|(o, _)| o == owner)
            .map(|(_, m)| *m)
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{Read, Write};
    use std::os::unix::net::UnixListener;

    /// A guest agent stand-in behind a Unix socket: answers the vsock
    /// `CONNECT` handshake and one `Connect` frame, then echoes in upper case.
    fn fake_agent(dir: &Path) -> PathBuf {
        let path = dir.join("vsock.sock");
        let listener = UnixListener::bind(&path).unwrap();
        std::thread::spawn(move || {
            for stream in listener.incoming() {
                let mut stream = stream.unwrap();
                std::thread::spawn(move || {
                    let mut line = Vec::new();
                    let mut byte = [0u8];
                    while stream.read(&mut byte).unwrap() == 1 && byte[0] != b'\n' {
                        line.push(byte[0]);
                    }
                    assert_eq!(line, format!("CONNECT {AGENT_PORT}").as_bytes());
                    stream.write_all(b"OK 1073741824\n").unwrap();
                    let frame = read_frame(&mut stream).unwrap().unwrap();
                    assert_eq!(frame.kind, Kind::Connect);
                    let request: ConnectRequest = serde_json::from_slice(&frame.payload).unwrap();
                    if request.port != 80 {
                        write_frame(&mut stream, Kind::Error, b"nothing listens on 127.0.0.1:81")
                            .unwrap();
                        return;
                    }
                    write_frame(&mut stream, Kind::Connected, b"").unwrap();
                    let mut text = String::new();
                    stream.read_to_string(&mut text).unwrap();
                    stream.write_all(text.to_uppercase().as_bytes()).unwrap();
                });
            }
        });
        path
    }

    fn free_port() -> SocketAddr {
        TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
    }

    fn exchange(addr: SocketAddr, text: &str) -> String {
        // A refused tunnel may close (or reset) the client before it has
        // written, so only what comes back counts.
        let mut client = TcpStream::connect(addr).unwrap();
        let _ = client.write_all(text.as_bytes());
        let _ = client.shutdown(Shutdown::Write);
        let mut answer = String::new();
        let _ = client.read_to_string(&mut answer);
        answer
    }

    #[test]
    fn a_published_port_reaches_the_guest_port_until_closed() {
        let tmp = tempfile::tempdir().unwrap();
        let vsock = fake_agent(tmp.path());
        let publisher = TcpPublisher::default();
        let host = free_port();
        let mapping = PortMapping {
            host,
            guest_port: 80,
        };
        publisher.open("vm1", mapping, &vsock).unwrap();
        assert_eq!(exchange(host, "hello"), "HELLO");
        assert_eq!(exchange(host, "again"), "AGAIN");
        assert_eq!(publisher.open_for("vm1"), [mapping]);
        assert!(publisher.open_for("vm2").is_empty());

        publisher.close("vm1", host);
        assert!(publisher.open_for("vm1").is_empty());
        assert!(
            TcpStream::connect(host).is_err(),
            "nothing listens after close"
        );
        // The port is free again, for this publisher or anyone.
        publisher.open("vm1", mapping, &vsock).unwrap();
        assert_eq!(exchange(host, "back"), "BACK");
        publisher.close("vm1", host);
    }

    #[test]
    fn a_port_in_use_is_refused_naming_its_holder() {
        let taken = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = taken.local_addr().unwrap();
        let publisher = TcpPublisher::default();
        let err = publisher
            .open(
                "vm1",
                PortMapping {
                    host: addr,
                    guest_port: 80,
                },
                Path::new("/nonexistent"),
            )
            .unwrap_err()
            .to_string();
        let me = format!("(pid {})", std::process::id());
        assert!(
            err.contains(&addr.to_string()) && err.contains(&me) && err.contains("pick another"),
            "{err}"
        );
        assert!(publisher.open_for("vm1").is_empty());
    }

    #[test]
    fn a_guest_port_nobody_listens_on_closes_the_client() {
        let tmp = tempfile::tempdir().unwrap();
        let vsock = fake_agent(tmp.path());
        let host = free_port();
        let publisher = TcpPublisher::default();
        publisher
            .open(
                "vm1",
                PortMapping {
                    host,
                    guest_port: 81,
                },
                &vsock,
            )
            .unwrap();
        assert_eq!(exchange(host, "hello"), "", "closed without an answer");
        publisher.close("vm1", host);
    }
}
