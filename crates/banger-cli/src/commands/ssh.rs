//! `banger vm ssh`: the system `ssh` as root to the guest, then a reminder
//! if the VM is still running.

use std::path::PathBuf;
use std::process::{Command, ExitCode};

use anyhow::Context as _;
use banger_host::Config;
use banger_proto::api::method;
use banger_proto::{PingResult, VmRef, VmState};

use super::Context;
use crate::args::SshArgs;
use crate::output;

/// The key banger logs in with: `ssh_key_path`, else the runtime bundle's.
pub fn ssh_key(ctx: &Context) -> anyhow::Result<PathBuf> {
    let config = Config::load(&ctx.paths.config_file, &ctx.paths.home, |v| {
        std::env::var_os(v)
    })
    .context("loading configuration")?;
    if let Some(key) = config.ssh_key_path {
        anyhow::ensure!(
            key.is_file(),
            "ssh_key_path {} does not exist: fix it in {}",
            key.display(),
            ctx.paths.config_file.display()
        );
        return Ok(key);
    }
    let exe = std::env::current_exe().unwrap_or_default();
    let runtime = banger_host::runtime_dir::resolve(config.runtime_dir.as_deref(), &exe)
        .context("finding the runtime bundle's SSH key (or set ssh_key_path)")?;
    let name = banger_host::bundle::BundleFile::SshKey.file_name();
    let key = runtime.path.join(name);
    anyhow::ensure!(
        key.is_file(),
        "the runtime bundle at {} has no {name}: run `make runtime`, or set ssh_key_path",
        runtime.path.display()
    );
    Ok(key)
}

pub fn run(args: SshArgs, ctx: &Context) -> anyhow::Result<ExitCode> {
    let (code, reminder) = session(args, ctx)?;
    eprintln!("{reminder}");
    Ok(code)
}

/// The SSH session on this terminal, then the reminder line to show after
/// it (the CLI prints it; the TUI puts it in its status line).
pub fn session(args: SshArgs, ctx: &Context) -> anyhow::Result<(ExitCode, String)> {
    let vm = ctx.running_vm(&args.vm)?;
    let ip = vm
        .guest_ip
        .with_context(|| format!("{} has no guest IP", vm.name))?;
    let key = ssh_key(ctx)?;
    let known_hosts = banger_host::VmDir::new(&vm.dir).known_hosts();
    let mut ssh = Command::new("ssh");
    ssh.arg("-i")
        .arg(&key)
        .args([
            "-o",
            "IdentitiesOnly=yes",
            "-o",
            "StrictHostKeyChecking=accept-new",
            "-o",
            "LogLevel=ERROR",
            // A guest that stops answering (stopped, deleted, crashed) ends
            // the session within a minute instead of freezing the terminal.
            "-o",
            "ServerAliveInterval=15",
            "-o",
            "ServerAliveCountMax=4",
        ])
        .arg("-o")
        .arg(format!("UserKnownHostsFile={}", known_hosts.display()))
        .arg(format!("root@{ip}"));
    if !args.command.is_empty() {
        ssh.arg("--").args(&args.command);
    }
    // ssh ends with banger: a `banger vm ssh` killed by SIGTERM (a script's
    // timeout, kill) leaves no ssh behind holding the session.
    // SAFETY: prctl is async-signal-safe and touches only the child.
    unsafe {
        use std::os::unix::process::CommandExt;
        ssh.pre_exec(|| {
            if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGTERM) == -1 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    let status = ssh.status().map_err(|e| {
        if e.kind() == std::io::ErrorKind::NotFound {
            anyhow::anyhow!("ssh is not installed: install openssh-client")
        } else {
            anyhow::Error::new(e).context("running ssh")
        }
    })?;
    let reminder = remind(ctx, &vm.name, shutdown_grace(&args.command));
    let code = status.code().unwrap_or_else(|| {
        use std::os::unix::process::ExitStatusExt;
        128 + status.signal().unwrap_or(0)
    });
    Ok((ExitCode::from(u8::try_from(code).unwrap_or(1)), reminder))
}

/// Never stays silent about a running VM.
/// How long the reminder keeps looking for a shutdown after SSH returns:
/// `systemctl poweroff` returns once logind has the request, which may
/// be before systemd has queued the shutdown (seconds later in a nested
/// guest). A command that names a way down gets the longest look; an
/// interactive session (which `poweroff` typed in it ends only once the
/// shutdown runs) a short one; any other command none, so `vm ssh NAME
/// -- make` in a script returns at once.
fn shutdown_grace(command: &[String]) -> std::time::Duration {
    const WORDS: [&str; 5] = ["poweroff", "reboot", "shutdown", "halt", "kexec"];
    if command
        .iter()
        .any(|arg| WORDS.iter().any(|word| arg.contains(word)))
    {
        std::time::Duration::from_secs(5)
    } else if command.is_empty() {
        std::time::Duration::from_millis(700)
    } else {
        std::time::Duration::ZERO
    }
}

fn remind(ctx: &Context, name: &str, grace: std::time::Duration) -> String {
    let ping = || {
        ctx.client().and_then(|mut c| {
            Ok(c.call::<method::VmPing>(VmRef {
                vm: name.to_owned(),
            })?)
        })
    };
    let going = |p: &PingResult| {
        p.state != VmState::Running
            || matches!(p.guest_state.as_deref(), Some("stopping" | "rebooting"))
    };
    let mut answer = ping();
    // A guest that still says "running" is asked again until the grace
    // runs out; only news of it going down replaces the first answer.
    let deadline = std::time::Instant::now() + grace;
    while answer.as_ref().is_ok_and(|p| p.reachable && !going(p))
        && std::time::Instant::now() < deadline
    {
        std::thread::sleep(std::time::Duration::from_millis(250));
        if let Ok(later) = ping()
            && going(&later)
        {
            answer = Ok(later);
        }
    }
    reminder(name, answer.as_ref().map_err(|e| format!("{e:#}")))
}

/// The line printed after SSH returns.
pub fn reminder(name: &str, answer: Result<&PingResult, String>) -> String {
    match answer {
        // `systemctl poweroff` or `reboot` typed in the session: the guest
        // still answers on its way down, but it is not "still running".
        Ok(ping) if ping.reachable && ping.guest_state.as_deref() == Some("rebooting") => {
            format!("{name} is rebooting; it will be back in a moment.")
        }
        Ok(ping) if ping.reachable && ping.guest_state.as_deref() == Some("stopping") => {
            format!("{name} is shutting down.")
        }
        Ok(ping) if ping.state == VmState::Running && ping.reachable => format!(
            "{name} is still running (up {}). Stop it with: banger vm stop {name}",
            output::duration(ping.guest_uptime_secs.unwrap_or(0))
        ),
        Ok(ping) if ping.state == VmState::Running => format!(
            "{name} is still running, but its guest did not answer the ping ({}). Stop it with: banger vm stop {name}",
            ping.detail.as_deref().unwrap_or("no answer")
        ),
        Ok(ping) => match &ping.detail {
            Some(reason) => format!("{name} has stopped ({reason})."),
            None => format!("{name} has stopped."),
        },
        Err(e) => format!(
            "could not check {name} after SSH ({e}); it may still be running: see `banger vm show {name}`"
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ping(state: VmState, reachable: bool, detail: Option<&str>) -> PingResult {
        PingResult {
            vm: "calm-otter".into(),
            state,
            reachable,
            rtt_ms: None,
            guest_uptime_secs: Some(65),
            guest_hostname: None,
            guest_state: None,
            detail: detail.map(str::to_owned),
        }
    }

    #[test]
    fn only_sessions_that_may_end_the_guest_wait_for_it() {
        use std::time::Duration;
        let args = |a: &[&str]| a.iter().map(|s| (*s).to_owned()).collect::<Vec<_>>();
        assert_eq!(shutdown_grace(&[]), Duration::from_millis(700));
        assert_eq!(
            shutdown_grace(&args(&["systemctl", "poweroff"])),
            Duration::from_secs(5)
        );
        assert_eq!(
            shutdown_grace(&args(&["sudo reboot now"])),
            Duration::from_secs(5)
        );
        assert_eq!(shutdown_grace(&args(&["make", "test"])), Duration::ZERO);
    }

    #[test]
    fn every_outcome_says_something() {
        assert_eq!(
            reminder("calm-otter", Ok(&ping(VmState::Running, true, None))),
            "calm-otter is still running (up 1m05s). Stop it with: banger vm stop calm-otter"
        );
        assert_eq!(
            reminder(
                "calm-otter",
                Ok(&ping(VmState::Stopped, false, Some("clean shutdown")))
            ),
            "calm-otter has stopped (clean shutdown)."
        );
        assert!(reminder("calm-otter", Err("daemon gone".into())).contains("may still be running"));
        let mut going = ping(VmState::Running, true, None);
        going.guest_state = Some("stopping".into());
        assert_eq!(
            reminder("calm-otter", Ok(&going)),
            "calm-otter is shutting down."
        );
        going.guest_state = Some("rebooting".into());
        assert_eq!(
            reminder("calm-otter", Ok(&going)),
            "calm-otter is rebooting; it will be back in a moment."
        );
    }
}
