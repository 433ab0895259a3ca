use std::io::IsTerminal;
use std::process::ExitCode;

use banger_proto::Method;
use banger_proto::api::method;
use banger_proto::{
    BatchResult, CreateVmParams, KillParams, RenameVmParams, SetVmParams, StopParams, Vm, VmRef,
    VmRefs, VmStats, VmSummary,
};

use super::Context;
use crate::args::{
    CreateArgs, KillArgs, RenameArgs, SetArgs, StartArgs, StopArgs, VmCommand, VmTargets,
};
use crate::client::Client;
use crate::output;

pub fn run(command: VmCommand, ctx: &Context) -> anyhow::Result<ExitCode> {
    match command {
        VmCommand::Create(args) => create(args, ctx),
        VmCommand::List(flags) => {
            if flags.json {
                output::print_raw_json_of::<method::VmList>(&mut ctx.client()?, ())?;
            } else {
                let vms: Vec<VmSummary> = ctx.client()?.call::<method::VmList>(())?;
                print!("{}", output::vm_table(&vms, output::now()));
            }
            Ok(ExitCode::SUCCESS)
        }
        VmCommand::Show(target) => {
            let vm: Vm = ctx
                .client()?
                .call::<method::VmShow>(VmRef { vm: target.vm })?;
            if target.output.json {
                output::print_json(&vm)?;
            } else {
                print!("{}", output::vm_details(&vm, output::now()));
            }
            Ok(ExitCode::SUCCESS)
        }
        VmCommand::Stats(target) => {
            let stats: VmStats = ctx
                .client()?
                .call::<method::VmStats>(VmRef { vm: target.vm })?;
            if target.output.json {
                output::print_json(&stats)?;
            } else {
                print!("{}", output::vm_stats(&stats));
            }
            Ok(ExitCode::SUCCESS)
        }
        VmCommand::Ssh(args) => super::ssh::run(args, ctx),
        VmCommand::Exec(args) => super::exec::run(args, ctx),
        VmCommand::Cp(args) => super::cp::run(args, ctx),
        VmCommand::PortForward(args) => super::port_forward::run(args, ctx),
        VmCommand::Stop(args) => stop(args, ctx),
        VmCommand::Start(args) => start(args, ctx),
        VmCommand::Restart(targets) => batch::<method::VmRestart>(ctx, targets, "restarted"),
        VmCommand::Delete(targets) => batch::<method::VmDelete>(ctx, targets, "deleted"),
        VmCommand::Kill(args) => kill(args, ctx),
        VmCommand::Pause(targets) => batch::<method::VmPause>(ctx, targets, "paused"),
        VmCommand::Unpause(targets) => batch::<method::VmUnpause>(ctx, targets, "unpaused"),
        VmCommand::Suspend(targets) => batch::<method::VmSuspend>(ctx, targets, "suspended"),
        VmCommand::Resume(targets) => batch::<method::VmResume>(ctx, targets, "resumed"),
        VmCommand::Set(args) => set(args, ctx),
        VmCommand::Rename(args) => rename(args, ctx),
        VmCommand::Snapshot(command) => super::snapshot::run(command, ctx),
        VmCommand::Branch(args) => super::snapshot::branch(args, ctx),
    }
}

fn rename(args: RenameArgs, ctx: &Context) -> anyhow::Result<ExitCode> {
    let vm: Vm = ctx.client()?.call::<method::VmRename>(RenameVmParams {
        vm: args.vm.clone(),
        name: args.new_name.clone(),
    })?;
    if args.output.json {
        output::print_json(&vm)?;
    } else if vm.state.has_vmm() {
        let live = ctx
            .client()?
            .call::<method::VmPing>(VmRef {
                vm: vm.name.to_string(),
            })
            .is_ok_and(|ping| ping.guest_hostname.as_deref() == Some(vm.name.as_ref()));
        let hostname = if live {
            format!("the guest's hostname is {} now", vm.name)
        } else {
            format!(
                "the guest's hostname changes at its next boot (banger vm restart {})",
                vm.name
            )
        };
        println!(
            "renamed {} to {}: {}.vm answers now; {hostname}",
            args.vm, vm.name, vm.name
        );
    } else {
        println!(
            "renamed {} to {}: {}.vm answers now, and the guest boots with the new hostname",
            args.vm, vm.name, vm.name
        );
    }
    Ok(ExitCode::SUCCESS)
}

fn create(args: CreateArgs, ctx: &Context) -> anyhow::Result<ExitCode> {
    let params = CreateVmParams {
        name: args.name,
        image: args.image,
        vcpu: args.vcpu,
        memory_mib: args.memory,
        disk_size: args.disk_size,
        nat: args.nat,
        vmm: args.vmm,
        publish: args.publish,
    };
    let vm: Vm = ctx.client()?.call::<method::VmCreate>(params)?;
    if args.output.json {
        output::print_json(&vm)?;
    } else {
        println!(
            "created {} ({}): {} on {}, ip {}; connect with `banger vm ssh {}`",
            vm.name,
            vm.id.short(),
            vm.state,
            vm.vmm,
            vm.guest_ip.map_or_else(|| "-".into(), |ip| ip.to_string()),
            vm.name
        );
    }
    if !args.output.json && args.vmm.is_none() {
        // Say why this backend: the daemon chose it for this host.
        let status: banger_proto::DaemonStatus = ctx.client()?.call::<method::DaemonStatus>(())?;
        if status.vmm == vm.vmm {
            println!("backend {}: {}", vm.vmm, status.vmm_reason);
        }
    }
    if args.wait.wait {
        super::wait::until_ssh(
            &vm,
            std::time::Duration::from_secs(args.wait.wait_timeout),
            ctx,
        )?;
    }
    Ok(ExitCode::SUCCESS)
}

fn start(args: StartArgs, ctx: &Context) -> anyhow::Result<ExitCode> {
    let code = batch::<method::VmStart>(ctx, args.targets.clone(), "started")?;
    if args.wait.wait && code == ExitCode::SUCCESS {
        for name in &args.targets.vms {
            let vm: Vm = ctx
                .client()?
                .call::<method::VmShow>(VmRef { vm: name.clone() })?;
            super::wait::until_ssh(
                &vm,
                std::time::Duration::from_secs(args.wait.wait_timeout),
                ctx,
            )?;
        }
    }
    Ok(code)
}

fn stop(args: StopArgs, ctx: &Context) -> anyhow::Result<ExitCode> {
    let mut client: Client = ctx.client()?;
    say_progress(method::VmStop::NAME, &args.targets.vms);
    let result = client.call::<method::VmStop>(StopParams {
        vms: args.targets.vms,
        force: args.force,
    })?;
    report(&result, "stopped", args.targets.output.json)
}

fn kill(args: KillArgs, ctx: &Context) -> anyhow::Result<ExitCode> {
    let params = KillParams {
        vms: args.targets.vms.clone(),
        signal: args.signal.clone(),
    };
    let verb = format!("sent {}", args.signal.to_ascii_uppercase());
    let result: BatchResult = ctx.client()?.call::<method::VmKill>(params)?;
    report(&result, &verb, args.targets.output.json)
}

fn set(args: SetArgs, ctx: &Context) -> anyhow::Result<ExitCode> {
    if !args.changes_anything() {
        anyhow::bail!(
            "nothing to change: give at least one of --memory, --vcpu, --disk-size, --nat, --no-nat, --publish, --unpublish, --no-publish"
        );
    }
    let params = SetVmParams {
        vms: args.targets.vms.clone(),
        vcpu: args.vcpu,
        memory_mib: args.memory,
        disk_size: args.disk_size.clone(),
        nat: args.nat_change(),
        publish: args.publish.clone(),
        unpublish: args.unpublish.clone(),
        no_publish: args.no_publish,
    };
    let result: BatchResult = ctx.client()?.call::<method::VmSet>(params)?;
    report(&result, "updated", args.targets.output.json)
}

/// An action on several VMs: every batch method takes refs and answers per VM.
fn batch<M: Method<Params = VmRefs, Result = BatchResult>>(
    ctx: &Context,
    targets: VmTargets,
    verb: &str,
) -> anyhow::Result<ExitCode> {
    let mut client: Client = ctx.client()?;
    say_progress(M::NAME, &targets.vms);
    let result = client.call::<M>(VmRefs { vms: targets.vms })?;
    report(&result, verb, targets.output.json)
}

/// What a slow batch action waits for, on a terminal, rather than sit silent.
fn say_progress(method: &str, vms: &[String]) {
    if !std::io::stderr().is_terminal() {
        return;
    }
    let vms = vms.join(", ");
    let waiting = match method {
        method::VmStop::NAME | method::VmRestart::NAME | method::VmDelete::NAME => {
            format!("waiting for {vms} to power off")
        }
        method::VmSuspend::NAME => format!("saving the memory of {vms}"),
        _ => return,
    };
    eprintln!("{}: {waiting}...", verb_ing(method));
}

fn report(result: &BatchResult, verb: &str, json: bool) -> anyhow::Result<ExitCode> {
    let (text, all_ok) = output::batch_lines(result, verb);
    if json {
        output::print_json(result)?;
    } else if all_ok {
        print!("{text}");
    } else {
        // Successes stay on stdout; the failed lines go to stderr.
        for line in text.lines() {
            if line.contains(": error: ") || line.starts_with("    ") {
                eprintln!("{line}");
            } else {
                println!("{line}");
            }
        }
    }
    Ok(if all_ok {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}

fn verb_ing(method: &str) -> &'static str {
    match method {
        method::VmStop::NAME => "stopping",
        method::VmRestart::NAME => "restarting",
        method::VmDelete::NAME => "deleting",
        method::VmPause::NAME => "pausing",
        method::VmUnpause::NAME => "unpausing",
        method::VmSuspend::NAME => "suspending",
        _ => "working",
    }
}
