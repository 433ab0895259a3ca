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
use banger_proto::{MAX_MESSAGE_BYTES, Request, Response, RpcError};
use serde::Serialize;
use serde::de::DeserializeOwned;
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
    pub fn call_raw(&mut self, method: &str, params: impl Serialize) -> Result<String> {
        let params = serde_json::to_value(params).map_err(ClientError::Decode)?;
        let id = self.next_id;
        self.next_id += 1;
        let mut line =
            serde_json::to_vec(&Request::new(id, method, params)).map_err(ClientError::Decode)?;
        line.push(b'\n');
        self.writer.write_all(&line).map_err(ClientError::Io)?;
        let mut buf = Vec::new();
        let read = (&mut self.reader)
            .take(MAX_MESSAGE_BYTES as u64 * 64)
            .read_until(b'\n', &mut buf)
            .map_err(ClientError::Io)?;
        if read == 0 {
            return Err(ClientError::Closed);
        }
        if let Some(result) = Response::success_result(&buf, id) {
            return String::from_utf8(result.to_vec()).map_err(|_| ClientError::NotUtf8);
        }
        let response: Response = serde_json::from_slice(&buf).map_err(ClientError::Decode)?;
        if let Some(error) = response.error {
            return Err(ClientError::Rpc(error));
        }
        let raw = response
            .result
            .map(|r| r.get().to_owned())
            .unwrap_or_else(|| "null".to_owned());
        Ok(raw)
    }

    pub fn call<T: DeserializeOwned>(&mut self, method: &str, params: impl Serialize) -> Result<T> {
        let raw = self.call_raw(method, params)?;
        serde_json::from_str(&raw).map_err(ClientError::Decode)
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
