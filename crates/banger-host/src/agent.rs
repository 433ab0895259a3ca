//! The host's end of a guest agent session: starts a command in the guest
//! over vsock (`banger_proto::agent`), feeds its stdin, and relays its
//! output until its exit status arrives. `vm exec` and `vm cp` use it, and
//! the daemon for a live hostname change.

use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use banger_proto::agent::{
    self, AGENT_PORT, ExecRequest, ExitStatus, Kind, read_frame, write_frame,
};
use thiserror::Error;

use crate::vsock::VsockError;

#[derive(Debug, Error)]
pub enum AgentError {
    #[error(transparent)]
    Vsock(#[from] VsockError),
    #[error("talking to the guest agent")]
    Io(#[source] std::io::Error),
    #[error("reading from the guest agent")]
    Frame(#[source] agent::FrameError),
    #[error("the guest agent closed the connection before the command finished")]
    Closed,
    #[error("the guest agent refused the command: {0}")]
    Refused(String),
    #[error("the guest agent sent {0}")]
    Unexpected(String),
}

/// One command running in a guest.
#[derive(Debug)]
pub struct AgentSession {
    stream: UnixStream,
    writer: Arc<Mutex<UnixStream>>,
}

/// Writes one frame through a shared writer.
pub fn send(writer: &Mutex<UnixStream>, kind: Kind, payload: &[u8]) -> std::io::Result<()> {
    write_frame(
        &mut *writer.lock().unwrap_or_else(|p| p.into_inner()),
        kind,
        payload,
    )
}

impl AgentSession {
    /// Connects to the agent behind the VM's vsock socket and starts
    /// `request`. `timeout` bounds the handshake and, when given, every
    /// later read and write (`None`: a command may stay silent for hours).
    pub fn start(
        vsock: &Path,
        request: &ExecRequest,
        connect_timeout: Duration,
        timeout: Option<Duration>,
    ) -> Result<Self, AgentError> {
        let stream = crate::vsock::connect(vsock, AGENT_PORT, connect_timeout)?;
        stream.set_read_timeout(timeout).map_err(AgentError::Io)?;
        stream.set_write_timeout(timeout).map_err(AgentError::Io)?;
        let writer = Arc::new(Mutex::new(stream.try_clone().map_err(AgentError::Io)?));
        let json = serde_json::to_vec(request).map_err(|e| AgentError::Io(e.into()))?;
        send(&writer, Kind::Exec, &json).map_err(AgentError::Io)?;
        Ok(Self { stream, writer })
    }

    /// The writing half, for signals and window sizes.
    pub fn writer(&self) -> Arc<Mutex<UnixStream>> {
        Arc::clone(&self.writer)
    }

    /// Copies `input` to the command's stdin on a thread, then ends it.
    pub fn feed(&self, mut input: impl Read + Send + 'static) {
        let writer = self.writer();
        std::thread::spawn(move || {
            let mut buf = vec![0u8; agent::CHUNK];
            loop {
                match input.read(&mut buf) {
                    Ok(0) | Err(_) => {
                        let _ = send(&writer, Kind::StdinEof, b"");
                        return;
                    }
                    Ok(n) => {
                        if send(&writer, Kind::Stdin, &buf[..n]).is_err() {
                            return;
                        }
                    }
                }
            }
        });
    }

    /// Writes the command's stdout to `stdout` (counting bytes into
    /// `progress`) and its stderr to `stderr`, until its exit status
    /// arrives. A closed `stdout` ends the session as SIGPIPE would.
    pub fn relay(
        mut self,
        stdout: &mut dyn Write,
        stderr: &mut dyn Write,
        progress: &mut dyn FnMut(u64),
    ) -> Result<ExitStatus, AgentError> {
        loop {
            let frame = read_frame(&mut self.stream)
                .map_err(AgentError::Frame)?
                .ok_or(AgentError::Closed)?;
            match frame.kind {
                Kind::Stdout => {
                    if let Err(e) = stdout
                        .write_all(&frame.payload)
                        .and_then(|()| stdout.flush())
                    {
                        if e.kind() == std::io::ErrorKind::BrokenPipe {
                            // Closing hangs the guest's command up.
                            return Ok(ExitStatus {
                                code: None,
                                signal: Some(libc::SIGPIPE),
                            });
                        }
                        return Err(AgentError::Io(e));
                    }
                    progress(frame.payload.len() as u64);
                }
                Kind::Stderr => {
                    let _ = stderr
                        .write_all(&frame.payload)
                        .and_then(|()| stderr.flush());
                }
                Kind::Exit => {
                    return serde_json::from_slice(&frame.payload).map_err(|e| {
                        AgentError::Unexpected(format!("an unreadable exit status ({e})"))
                    });
                }
                Kind::Error => {
                    return Err(AgentError::Refused(
                        String::from_utf8_lossy(&frame.payload).into_owned(),
                    ));
                }
                other => {
                    return Err(AgentError::Unexpected(format!(
                        "an unexpected {other:?} frame"
                    )));
                }
            }
        }
    }
}

/// Runs a short command to completion: its stdout, and its status.
pub fn run(
    vsock: &Path,
    argv: &[&str],
    timeout: Duration,
) -> Result<(Vec<u8>, ExitStatus), AgentError> {
    let request = ExecRequest {
        argv: argv.iter().map(|a| (*a).to_owned()).collect(),
        ..ExecRequest::default()
    };
    let session = AgentSession::start(vsock, &request, timeout, Some(timeout))?;
    session.feed(std::io::empty());
    let mut out = Vec::new();
    let status = session.relay(&mut out, &mut std::io::sink(), &mut |_| {})?;
    Ok((out, status))
}
