//! `banger vm exec`: a command in the guest through its agent over vsock,
//! without SSH or the guest network. Its stdin, stdout and stderr are
//! this process's; signals are passed on; its exit status is banger's.

use std::io::IsTerminal;
use std::os::unix::net::UnixStream;
use std::process::ExitCode;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::Context as _;
use banger_host::agent::{AgentError, AgentSession, send};
use banger_host::vsock::VsockError;
use banger_proto::agent::{self, AGENT_PORT, ExecRequest, Kind, WindowSize};

use super::Context;
use crate::args::ExecArgs;

/// How long the guest agent gets to accept the connection.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

pub fn run(args: ExecArgs, ctx: &Context) -> anyhow::Result<ExitCode> {
    let code = status(&args, ctx)?;
    Ok(ExitCode::from(
        u8::try_from(code.rem_euclid(256)).unwrap_or(1),
    ))
}

/// Runs the command as `vm exec` does; returns its status as a shell
/// reports it (128 + N for a signal).
pub fn status(args: &ExecArgs, ctx: &Context) -> anyhow::Result<i32> {
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
    let session = open(ctx, &args.vm, &request)?;
    // Raw mode: keys (Ctrl-C included) go to the guest's terminal as typed.
    let _raw = terminal.then(RawMode::enter).transpose()?;
    forward_signals(session.writer(), args.tty)?;
    session.feed(std::io::stdin());
    let status = session.relay(
        &mut std::io::stdout().lock(),
        &mut std::io::stderr(),
        &mut |_| {},
    )?;
    Ok(status.shell_code())
}

/// Starts `request` in the running VM's guest agent, with the fix when
/// the agent does not answer.
pub fn open(ctx: &Context, vm_ref: &str, request: &ExecRequest) -> anyhow::Result<AgentSession> {
    let vm = ctx.running_vm(vm_ref)?;
    let path = vm
        .vsock_path
        .clone()
        .with_context(|| format!("{} has no vsock device", vm.name))?;
    // No timeout after the handshake: a command may stay silent for hours.
    AgentSession::start(&path, request, CONNECT_TIMEOUT, None).map_err(|e| match e {
        AgentError::Vsock(e @ (VsockError::Refused { .. } | VsockError::Timeout(_))) => anyhow::anyhow!(
            "{name}'s guest agent does not answer on vsock port {AGENT_PORT} ({e}): the guest may \
             still be booting, or its image predates `vm exec` (rebuild it with `make runtime`, then \
             recreate the VM); `banger vm ssh {name} -- CMD` works meanwhile",
            name = vm.name
        ),
        other => anyhow::Error::new(other).context(format!("reaching {}'s guest agent", vm.name)),
    })
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
