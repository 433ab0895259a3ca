//! `banger vm port-forward NAME [HOST_ADDR:]HOST_PORT:GUEST_PORT`: a host
//! TCP port whose connections go, over vsock and the guest agent, to the
//! guest's 127.0.0.1:GUEST_PORT (its 0.0.0.0 listeners answer there too).
//! No NAT and no guest network are needed. Runs until Ctrl-C; `vm create
//! --publish` is the daemon-kept kind.

use std::io::Write;
use std::process::ExitCode;

use anyhow::Context as _;
use banger_host::publish::{listen, tunnel};

use super::Context;
use crate::args::PortForwardArgs;

pub fn run(args: PortForwardArgs, ctx: &Context) -> anyhow::Result<ExitCode> {
    let vm = ctx.running_vm(&args.vm)?;
    let path = vm
        .vsock_path
        .clone()
        .with_context(|| format!("{} has no vsock device", vm.name))?;
    let forward = args.forward;
    let listener = listen(forward.host)?;
    println!(
        "forwarding {} -> {}:{} over vsock (Ctrl-C stops)",
        forward.host, vm.name, forward.guest_port
    );
    let _ = std::io::stdout().flush();
    for client in listener.incoming() {
        let Ok(client) = client else { continue };
        let path = path.clone();
        let name = vm.name.to_string();
        std::thread::spawn(move || {
            if let Err(e) = tunnel(client, &path, forward.guest_port) {
                eprintln!(
                    "{name}:{}: {}",
                    forward.guest_port,
                    banger_proto::rpc::error_text(&e)
                );
            }
        });
    }
    Ok(ExitCode::SUCCESS)
}
