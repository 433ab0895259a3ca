//! A blocking JSON-RPC client for bangerd's socket, and the auto-start that
//! launches bangerd when nothing answers.

use std::fs::OpenOptions;
use std::io::{BufRead, BufReader, Read, Write};
use std::os::unix::net::UnixStream;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use banger_host::Paths;
use banger_proto::{MAX_MESSAGE_BYTES, Method, Request, Response, RpcError};
use serde::Serialize;
use thiserror::Error;

/// How long the CLI waits for a freshly started daemon to answer.
const START_TIMEOUT: Duration = Duration::from_secs(15);

#[derive(Debug, Error)]
pub enum ClientError {
    #[error("bangerd is not running (no daemon answers on {0})")]
    NotRunning(PathBuf),
    #[error("connecting to bangerd at {0}")]
    Connect(PathBuf, #[source] std::io::Error),
    #[error(
        "could not find the bangerd binary next to {exe} or on PATH: reinstall banger (`make install`)"
    )]
    DaemonBinaryMissing { exe: PathBuf },
    #[error("starting {0}")]
    Spawn(PathBuf, #[source] std::io::Error),
    #[error("opening daemon log {0}")]
    Log(PathBuf, #[source] std::io::Error),
    #[error(
        "bangerd exited ({status}) before it was ready; see {log}{tail}",
        tail = banger_host::procfs::tail_suffix(.log_tail)
    )]
    DaemonExited {
        status: std::process::ExitStatus,
        log: PathBuf,
        log_tail: Vec<String>,
    },
    #[error(
        "bangerd did not answer on {socket} within {timeout:?}; see {log}{tail}",
        tail = banger_host::procfs::tail_suffix(.log_tail)
    )]
    StartTimeout {
        socket: PathBuf,
        timeout: Duration,
        log: PathBuf,
        log_tail: Vec<String>,
    },
    #[error("talking to bangerd")]
    Io(#[source] std::io::Error),
    #[error(
        "bangerd closed the connection without answering (see `banger daemon status` and its log)"
    )]
    Closed,
    #[error("bangerd sent a response this banger cannot read")]
    Decode(#[source] serde_json::Error),
    #[error("bangerd sent a response that is not UTF-8")]
    NotUtf8,
    #[error(transparent)]
    Rpc(#[from] RpcError),
}

pub type Result<T, E = ClientError> = std::result::Result<T, E>;

#[derive(Debug)]
pub struct Client {
    writer: UnixStream,
    reader: BufReader<UnixStream>,
    next_id: u64,
}

impl Client {
    /// Connects to a running daemon; never starts one.
    pub fn connect(socket: &Path) -> Result<Self> {
        let stream = UnixStream::connect(socket).map_err(|e| match e.kind() {
            std::io::ErrorKind::NotFound | std::io::ErrorKind::ConnectionRefused => {
                ClientError::NotRunning(socket.into())
            }
            _ => ClientError::Connect(socket.into(), e),
        })?;
        // Large enough that a thousand-VM list arrives in a few reads.
        let reader =
            BufReader::with_capacity(64 << 10, stream.try_clone().map_err(ClientError::Io)?);
        Ok(Self {
            writer: stream,
            reader,
            next_id: 1,
        })
    }

    /// Connects, starting bangerd first when nothing answers.
    pub fn connect_or_start(paths: &Paths) -> Result<Self> {
        match Self::connect(&paths.socket) {
            Err(ClientError::NotRunning(_)) => start_daemon(paths),
            other => other,
        }
    }

    /// The result's JSON text as the daemon wrote it.
    pub fn call_raw<M: Method>(&mut self, params: M::Params) -> Result<String> {
        let id = self.send(M::NAME, params)?;
        let mut line = Vec::new();
        self.read_line_into(&mut line)?;
        self.result_of(&line, id)
    }

    /// Sends a request; returns its id.
    fn send(&mut self, method: &str, params: impl Serialize) -> Result<u64> {
        let params = serde_json::to_value(params).map_err(ClientError::Decode)?;
        let id = self.next_id;
        self.next_id += 1;
        let mut line =
            serde_json::to_vec(&Request::new(id, method, params)).map_err(ClientError::Decode)?;
        line.push(b'\n');
        self.writer.write_all(&line).map_err(ClientError::Io)?;
        Ok(id)
    }

    fn read_line_into(&mut self, buf: &mut Vec<u8>) -> Result<()> {
        let read = (&mut self.reader)
            .take(MAX_MESSAGE_BYTES as u64 * 64)
            .read_until(b'\n', buf)
            .map_err(ClientError::Io)?;
        if read == 0 {
            return Err(ClientError::Closed);
        }
        Ok(())
    }

    /// The result of a whole response line, or its error.
    fn result_of(&self, line: &[u8], id: u64) -> Result<String> {
        if let Some(result) = Response::success_result(line, id) {
            return String::from_utf8(result.to_vec()).map_err(|_| ClientError::NotUtf8);
        }
        let response: Response = serde_json::from_slice(line).map_err(ClientError::Decode)?;
        if let Some(error) = response.error {
            return Err(ClientError::Rpc(error));
        }
        let raw = response
            .result
            .map(|r| r.get().to_owned())
            .unwrap_or_else(|| "null".to_owned());
        Ok(raw)
    }

    /// Like [`Client::call_raw`], but a successful result is copied to `out`
    /// as it arrives, never held whole: `vm list --json` with a thousand
    /// VMs costs one 64 KiB buffer instead of three copies of the list.
    pub fn call_raw_to<M: Method>(
        &mut self,
        params: M::Params,
        out: &mut impl Write,
    ) -> Result<()> {
        let id = self.send(M::NAME, params)?;
        let prefix = Response::success_prefix(id);
        let mut head = Vec::new();
        while head.len() < prefix.len() && !head.contains(&b'\n') {
            let chunk = self.reader.fill_buf().map_err(ClientError::Io)?;
            if chunk.is_empty() {
                return Err(ClientError::Closed);
            }
            let take = chunk.len().min(prefix.len() - head.len());
            head.extend_from_slice(&chunk[..take]);
            self.reader.consume(take);
        }
        if head == prefix.as_bytes() {
            return copy_rest_of_result(&mut self.reader, out).map_err(|e| match e {
                StreamError::Io(e) => ClientError::Io(e),
                StreamError::Closed => ClientError::Closed,
            });
        }
        if !head.contains(&b'\n') {
            self.read_line_into(&mut head)?;
        }
        let raw = self.result_of(&head, id)?;
        out.write_all(raw.as_bytes()).map_err(ClientError::Io)
    }

    /// Calls a method declared in `banger_proto::method`, with its params, for its answer.
    pub fn call<M: Method>(&mut self, params: M::Params) -> Result<M::Result> {
        let raw = self.call_raw::<M>(params)?;
        serde_json::from_str(&raw).map_err(ClientError::Decode)
    }
}

#[derive(Debug)]
enum StreamError {
    Io(std::io::Error),
    Closed,
}

/// Copies the rest of a success line (after its prefix) to `out`, less the
/// envelope's closing `}` and the newline. Compact JSON has no raw newline,
/// so the first one ends the line; the last byte seen is held back until
/// the next chunk shows whether it was that `}`.
fn copy_rest_of_result(reader: &mut impl BufRead, out: &mut impl Write) -> Result<(), StreamError> {
    let mut held: Option<u8> = None;
    let mut copied: u64 = 0;
    loop {
        let chunk = reader.fill_buf().map_err(StreamError::Io)?;
        if chunk.is_empty() {
            return Err(StreamError::Closed);
        }
        let end = chunk.iter().position(|b| *b == b'\n');
        let body = &chunk[..end.unwrap_or(chunk.len())];
        if let Some((last, rest)) = body.split_last() {
            if let Some(byte) = held.replace(*last) {
                out.write_all(&[byte]).map_err(StreamError::Io)?;
            }
            out.write_all(rest).map_err(StreamError::Io)?;
        }
        copied += body.len() as u64;
        let used = end.map_or(chunk.len(), |e| e + 1);
        reader.consume(used);
        if end.is_some() {
            // What is held is the envelope's `}`.
            return if held == Some(b'}') {
                Ok(())
            } else {
                Err(StreamError::Closed)
            };
        }
        if copied > MAX_MESSAGE_BYTES as u64 * 64 {
            return Err(StreamError::Io(std::io::Error::other(
                "bangerd's answer is larger than 64 MiB",
            )));
        }
    }
}

/// The `bangerd` beside this `banger`, else the one on PATH.
pub fn daemon_binary() -> Result<PathBuf> {
    let exe = std::env::current_exe().unwrap_or_else(|_| PathBuf::from("banger"));
    if let Some(sibling) = exe
        .parent()
        .map(|d| d.join("bangerd"))
        .filter(|p| p.is_file())
    {
        return Ok(sibling);
    }
    std::env::var_os("PATH")
        .iter()
        .flat_map(std::env::split_paths)
        .map(|dir| dir.join("bangerd"))
        .find(|p| p.is_file())
        .ok_or(ClientError::DaemonBinaryMissing { exe })
}

fn start_daemon(paths: &Paths) -> Result<Client> {
    let binary = daemon_binary()?;
    std::fs::create_dir_all(&paths.state_dir)
        .map_err(|e| ClientError::Log(paths.state_dir.clone(), e))?;
    let log = OpenOptions::new()
        .create(true)
        .append(true)
        .open(&paths.log_file)
        .map_err(|e| ClientError::Log(paths.log_file.clone(), e))?;
    let log_err = log
        .try_clone()
        .map_err(|e| ClientError::Log(paths.log_file.clone(), e))?;
    let mut command = Command::new(&binary);
    command.stdin(Stdio::null()).stdout(log).stderr(log_err);
    // SAFETY: setsid is async-signal-safe and only detaches the child from
    // our session, so closing the terminal never signals the daemon.
    unsafe {
        command.pre_exec(|| {
            if libc::setsid() < 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    let mut child = command
        .spawn()
        .map_err(|e| ClientError::Spawn(binary.clone(), e))?;
    let deadline = Instant::now() + START_TIMEOUT;
    loop {
        match Client::connect(&paths.socket) {
            Ok(client) => return Ok(client),
            Err(ClientError::NotRunning(_)) => {}
            Err(other) => return Err(other),
        }
        if let Ok(Some(status)) = child.try_wait() {
            // Another banger may have started a daemon at the same moment;
            // ours then exits because the lock is taken. Use theirs.
            if let Ok(client) = Client::connect(&paths.socket) {
                return Ok(client);
            }
            if let Ok(client) = wait_for_other_daemon(paths) {
                return Ok(client);
            }
            return Err(ClientError::DaemonExited {
                status,
                log: paths.log_file.clone(),
                log_tail: banger_host::procfs::log_tail(&paths.log_file, 5),
            });
        }
        if Instant::now() > deadline {
            return Err(ClientError::StartTimeout {
                socket: paths.socket.clone(),
                timeout: START_TIMEOUT,
                log: paths.log_file.clone(),
                log_tail: banger_host::procfs::log_tail(&paths.log_file, 5),
            });
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// When our daemon lost the race for the lock, the winner may still be
/// binding its socket: give it a moment.
fn wait_for_other_daemon(paths: &Paths) -> Result<Client> {
    let deadline = Instant::now() + Duration::from_secs(2);
    loop {
        match Client::connect(&paths.socket) {
            Ok(client) => return Ok(client),
            Err(e) if Instant::now() > deadline => return Err(e),
            Err(_) => std::thread::sleep(Duration::from_millis(20)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn streamed(line: &[u8], capacity: usize) -> Result<Vec<u8>, StreamError> {
        let mut reader = BufReader::with_capacity(capacity, line);
        let mut out = Vec::new();
        copy_rest_of_result(&mut reader, &mut out).map(|()| out)
    }

    #[test]
    fn a_streamed_result_is_the_result_whatever_the_chunks() {
        let result = br#"[{"name":"a}b","id":"x"},{"name":"c"}]"#;
        let mut line = result.to_vec();
        line.extend_from_slice(b"}\n");
        for capacity in [1, 2, 3, 7, 64, 4096] {
            assert_eq!(
                streamed(&line, capacity).unwrap(),
                result,
                "chunks of {capacity}"
            );
        }
    }

    #[test]
    fn a_cut_or_malformed_line_is_an_error() {
        assert!(matches!(streamed(b"[1,2", 3), Err(StreamError::Closed)));
        assert!(matches!(streamed(b"[1,2]\n", 3), Err(StreamError::Closed)));
    }
}
