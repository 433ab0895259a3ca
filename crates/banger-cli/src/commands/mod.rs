//! One function per command; `run` is the single exhaustive dispatch.

mod cp;
mod daemon;
pub(crate) mod exec;
mod image;
mod image_build;
mod port_forward;
mod snapshot;
pub mod ssh;
mod vm;
mod wait;

use std::process::ExitCode;

use anyhow::Context as _;
use banger_host::Paths;
use clap::CommandFactory;

use crate::args::{Cli, Command};
use crate::client::Client;

/// What every command needs: where things live.
#[derive(Debug)]
pub struct Context {
    pub paths: Paths,
}

impl Context {
    pub fn from_env() -> anyhow::Result<Self> {
        Ok(Self {
            paths: Paths::from_env().context("working out banger's directories")?,
        })
    }

    /// A client to a running daemon, started on demand.
    pub fn client(&self) -> anyhow::Result<Client> {
        Ok(Client::connect_or_start(&self.paths)?)
    }

    /// `vm show` of a VM that must be running (for ssh and exec).
    pub fn running_vm(&self, vm_ref: &str) -> anyhow::Result<banger_proto::Vm> {
        use banger_proto::{VmRef, VmState, api::method};
        let vm = self.client()?.call::<method::VmShow>(VmRef {
            vm: vm_ref.to_owned(),
        })?;
        anyhow::ensure!(
            vm.state == VmState::Running,
            "{} is {}: start it with `banger vm start {}`",
            vm.name,
            vm.state,
            vm.name
        );
        Ok(vm)
    }
}

pub fn run(cli: Cli) -> anyhow::Result<ExitCode> {
    match cli.command {
        Command::Completions { shell } => {
            // Generated into memory first: clap_complete panics on a write
            // error, and `banger completions bash | head` closes the pipe.
            let mut script = Vec::new();
            clap_complete::generate(shell, &mut Cli::command(), "banger", &mut script);
            match std::io::Write::write_all(&mut std::io::stdout().lock(), &script) {
                Err(e) if e.kind() != std::io::ErrorKind::BrokenPipe => Err(e.into()),
                _ => Ok(ExitCode::SUCCESS),
            }
        }
        Command::Vm(command) => vm::run(command, &Context::from_env()?),
        Command::Image(command) => image::run(command, &Context::from_env()?),
        Command::Daemon(command) => daemon::run(command, &Context::from_env()?),
        Command::Doctor(flags) => doctor(flags.json, &Context::from_env()?),
        Command::Tui => crate::tui::run(Context::from_env()?),
    }
}

/// Doctor's checks, run by the daemon (started if need be) so they see
/// what the daemon that boots VMs sees. When no daemon can start, the
/// checks run here instead, in the environment a daemon would inherit,
/// and the CLI says so: that is when doctor is needed most.
fn doctor(json: bool, ctx: &Context) -> anyhow::Result<ExitCode> {
    use banger_proto::check::CheckStatus;
    let answered = ctx
        .client()
        .and_then(|mut client| Ok(client.call::<banger_proto::method::Doctor>(())?));
    let checks = match answered {
        Ok(checks) => checks,
        Err(err) => {
            eprintln!(
                "note: no daemon could start ({err:#}); these checks ran in this banger instead"
            );
            local_doctor(ctx)?
        }
    };
    if json {
        crate::output::print_json(&checks)?;
    } else {
        print!("{}", crate::output::checks(&checks));
    }
    let failed = checks.iter().any(|c| c.status == CheckStatus::Fail);
    Ok(if failed {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    })
}

/// Doctor without a daemon: the same checks, with this user's config.
fn local_doctor(ctx: &Context) -> anyhow::Result<Vec<banger_proto::check::Check>> {
    let config = banger_host::Config::load(&ctx.paths.config_file, &ctx.paths.home, |v| {
        std::env::var_os(v)
    })
    .context("loading configuration")?;
    Ok(banger_host::doctor::doctor_here(
        &config,
        None,
        &ctx.paths.instance_tag(),
    ))
}

/// Commands whose behaviour has not landed yet say so and fail.
pub fn not_implemented(what: &str) -> anyhow::Result<ExitCode> {
    anyhow::bail!("{what} is not implemented yet in this version of banger")
}
