//! `banger vm exec`: a command in the guest through its agent over vsock,
//! without SSH or the guest network. Its stdin, stdout and stderr are
//! this process's; signals are passed on; its exit status is banger's.

use std::io::{IsTerminal, Read, Write};
use std::os::unix::net::UnixStream;
use std::process::ExitCode;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::Context as _;
use banger_host::vsock::VsockError;
use banger_proto::agent::{
    self, AGENT_PORT, ExecRequest, ExitStatus, Kind, WindowSize, read_frame, write_frame,
};

use super::Context;
use crate::args::ExecArgs;

/// How long the guest agent gets to accept the connection.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

pub fn run(args: ExecArgs, ctx: &Context) -> anyhow::Result<ExitCode> {
    let terminal = args.tty && std::io::stdin().is_terminal();
    let mut env = args.env.clone();
    if args.tty
        && let Ok(term) = std::env::var("TERM")
        && !env.iter().any(|(k, _)| k == "TERM")
    {
        env.push(("TERM".into(), term));
    }
    let request = ExecRequest {
        argv: args.command.clone(),
        env,
        workdir: args.workdir.clone(),
        tty: args.tty.then(window_size),
    };
    let session = AgentSession::open(ctx, &args.vm, &request)?;
    // Raw mode: keys (Ctrl-C included) go to the guest's terminal as typed.
    let _raw = terminal.then(RawMode::enter).transpose()?;
    forward_signals(Arc::clone(&session.writer), args.tty)?;
    session.feed(std::io::stdin());
    let status = session.relay(&mut std::io::stdout().lock(), &mut |_| {})?;
    Ok(ExitCode::from(
        u8::try_from(status.shell_code().rem_euclid(256)).unwrap_or(1),
    ))
}

/// One command running in a VM through its guest agent.
pub struct AgentSession {
    stream: UnixStream,
    writer: Arc<Mutex<UnixStream>>,
}

impl AgentSession {
    /// Connects to the running VM's agent and starts `request`.
    pub fn open(ctx: &Context, vm_ref: &str, request: &ExecRequest) -> anyhow::Result<Self> {
        let vm = ctx.running_vm(vm_ref)?;
        let path = vm
            .vsock_path
            .clone()
            .with_context(|| format!("{} has no vsock device", vm.name))?;
        let stream =
            banger_host::vsock::connect(&path, AGENT_PORT, CONNECT_TIMEOUT).map_err(|e| match e {
                VsockError::Refused { .. } | VsockError::Timeout(_) => anyhow::anyhow!(
                    "{name}'s guest agent does not answer on vsock port {AGENT_PORT} ({e}): the guest may \
                     still be booting, or its image predates `vm exec` (rebuild it with `make runtime`, then \
                     recreate the VM); `banger vm ssh {name} -- CMD` works meanwhile",
                    name = vm.name
                ),
                other => {
                    anyhow::Error::new(other).context(format!("reaching {}'s guest agent", vm.name))
                }
            })?;
        // A command may run, silent, for as long as it likes.
        stream.set_read_timeout(None)?;
        stream.set_write_timeout(None)?;
        let writer = Arc::new(Mutex::new(stream.try_clone()?));
        send(&writer, Kind::Exec, &serde_json::to_vec(request)?)?;
        Ok(Self { stream, writer })
    }

    /// Copies `input` to the command's stdin on a thread, then ends it.
    pub fn feed(&self, mut input: impl Read + Send + 'static) {
        let writer = Arc::clone(&self.writer);
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
    /// `progress`) and its stderr to ours, until its exit status arrives.
    pub fn relay(
        mut self,
        stdout: &mut dyn Write,
        progress: &mut dyn FnMut(u64),
    ) -> anyhow::Result<ExitStatus> {
        loop {
            let frame = read_frame(&mut self.stream)
                .context("reading from the guest agent")?
                .context("the guest agent closed the connection before the command finished")?;
            match frame.kind {
                Kind::Stdout => {
                    if let Err(e) = stdout
                        .write_all(&frame.payload)
                        .and_then(|()| stdout.flush())
                    {
                        if e.kind() == std::io::ErrorKind::BrokenPipe {
                            // As a shell reports SIGPIPE; closing hangs the guest's command up.
                            return Ok(ExitStatus {
                                code: None,
                                signal: Some(libc::SIGPIPE),
                            });
                        }
                        return Err(e.into());
                    }
                    progress(frame.payload.len() as u64);
                }
                Kind::Stderr => {
                    let mut stderr = std::io::stderr().lock();
                    let _ = stderr
                        .write_all(&frame.payload)
                        .and_then(|()| stderr.flush());
                }
                Kind::Exit => {
                    return serde_json::from_slice(&frame.payload)
                        .context("the guest agent sent an exit status this banger cannot read");
                }
                Kind::Error => anyhow::bail!(
                    "the guest agent refused the command: {}",
                    String::from_utf8_lossy(&frame.payload)
                ),
                other => anyhow::bail!("the guest agent sent an unexpected {other:?} frame"),
            }
        }
    }
}

fn send(writer: &Mutex<UnixStream>, kind: Kind, payload: &[u8]) -> std::io::Result<()> {
    write_frame(
        &mut *writer.lock().unwrap_or_else(|p| p.into_inner()),
        kind,
        payload,
    )
}

/// This terminal's size, or 80x24 when there is none.
fn window_size() -> WindowSize {
    let (cols, rows) = ratatui::crossterm::terminal::size().unwrap_or((80, 24));
    WindowSize { rows, cols }
}

/// Window changes become resizes (with a terminal); INT, TERM, HUP and
/// QUIT go to the guest's command instead of ending banger.
fn forward_signals(writer: Arc<Mutex<UnixStream>>, tty: bool) -> anyhow::Result<()> {
    use signal_hook::consts::{SIGHUP, SIGINT, SIGQUIT, SIGTERM, SIGWINCH};
    let mut signals =
        signal_hook::iterator::Signals::new([SIGWINCH, SIGINT, SIGTERM, SIGHUP, SIGQUIT])
            .context("watching for signals")?;
    std::thread::spawn(move || {
        for signal in signals.forever() {
            let sent = if signal == SIGWINCH {
                !tty || send(&writer, Kind::Resize, &window_size().to_payload()).is_ok()
            } else {
                send(&writer, Kind::Signal, &agent::signal_payload(signal)).is_ok()
            };
            if !sent {
                return;
            }
        }
    });
    Ok(())
}

/// The local terminal in raw mode for as long as this lives.
struct RawMode;

impl RawMode {
    fn enter() -> anyhow::Result<Self> {
        ratatui::crossterm::terminal::enable_raw_mode()
            .context("putting the terminal in raw mode")?;
        Ok(Self)
    }
}

impl Drop for RawMode {
    fn drop(&mut self) {
        let _ = ratatui::crossterm::terminal::disable_raw_mode();
    }
}
