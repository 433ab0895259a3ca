use std::process::ExitCode;

use banger_proto::DaemonStatus;
use banger_proto::api::method;
use serde_json::Value;

use super::Context;
use crate::args::DaemonCommand;
use crate::client::{Client, ClientError};
use crate::output;

/// Exit status of `daemon status` when no daemon runs, as `systemctl status` does.
const EXIT_NOT_RUNNING: u8 = 3;

pub fn run(command: DaemonCommand, ctx: &Context) -> anyhow::Result<ExitCode> {
    match command {
        DaemonCommand::Socket => {
            println!("{}", ctx.paths.socket.display());
            Ok(ExitCode::SUCCESS)
        }
        DaemonCommand::Status(flags) => {
            let status: DaemonStatus = match Client::connect(&ctx.paths.socket) {
                Ok(mut client) => client.call::<method::DaemonStatus>(())?,
                Err(ClientError::NotRunning(socket)) => {
                    if flags.json {
                        output::print_json(&serde_json::json!({
                            "running": false,
                            "socket": socket,
                            "log_path": ctx.paths.log_file,
                        }))?;
                    } else {
                        println!(
                            "bangerd is not running (socket {}); the vm and image commands start it (doctor, completions and daemon do not).",
                            socket.display()
                        );
                    }
                    return Ok(ExitCode::from(EXIT_NOT_RUNNING));
                }
                Err(e) => return Err(e.into()),
            };
            if flags.json {
                let mut value = serde_json::to_value(&status)?;
                value["running"] = Value::Bool(true);
                output::print_json(&value)?;
            } else {
                println!("bangerd is running");
                println!("pid:        {}", status.pid);
                println!("version:    {}", status.version);
                println!("socket:     {}", status.socket.display());
                println!("log:        {}", status.log_path.display());
                match &status.dns_error {
                    None => println!("dns:        {}", status.dns_listen),
                    Some(why) => println!("dns:        {} (not serving: {why})", status.dns_listen),
                }
                println!("vmm:        {} ({})", status.vmm, status.vmm_reason);
                match &status.guest_ip_pool_reason {
                    None => println!("ip pool:    {}", status.guest_ip_pool),
                    Some(why) => println!("ip pool:    {why}"),
                }
                println!("state dir:  {}", status.state_dir.display());
                println!("uptime:     {}", output::duration(status.uptime_secs));
                println!("vms:        {}", status.vm_count);
            }
            Ok(ExitCode::SUCCESS)
        }
        DaemonCommand::Stop => {
            match Client::connect(&ctx.paths.socket) {
                Ok(mut client) => {
                    let status: DaemonStatus = client.call::<method::DaemonStatus>(())?;
                    client.call::<method::DaemonStop>(())?;
                    wait_for_exit(status.pid, &ctx.paths.pid_file)?;
                    println!(
                        "bangerd (pid {}) stopped; running VMs keep running.",
                        status.pid
                    );
                }
                Err(ClientError::NotRunning(_)) => println!("bangerd is not running."),
                Err(e) => return Err(e.into()),
            }
            Ok(ExitCode::SUCCESS)
        }
    }
}

/// Waits until the daemon has let go of its instance lock (its PID file's
/// `flock`), which it does as its very last act, or its process is gone:
/// then "stopped" is true, and a following command never races it.
fn wait_for_exit(pid: u32, pid_file: &std::path::Path) -> anyhow::Result<()> {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(35);
    while banger_host::procfs::is_running(pid, None) && !lock_is_free(pid_file) {
        if std::time::Instant::now() > deadline {
            anyhow::bail!(
                "bangerd (pid {pid}) is still running 35s after it was asked to stop: check its log, or kill it"
            );
        }
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    Ok(())
}

/// Whether no process holds the daemon's instance lock: taken and at once
/// released again when free.
fn lock_is_free(pid_file: &std::path::Path) -> bool {
    use std::os::fd::AsRawFd;
    let Ok(file) = std::fs::File::open(pid_file) else {
        return true;
    };
    // SAFETY: the descriptor is valid for the life of `file`; flock does not retain it.
    let taken = unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } == 0;
    // Closing `file` releases the lock just taken.
    taken
}
