//! `banger vm port-forward NAME [HOST_ADDR:]HOST_PORT:GUEST_PORT`: a host
//! TCP port whose connections go, over vsock and the guest agent, to the
//! guest's 127.0.0.1:GUEST_PORT (its 0.0.0.0 listeners answer there too).
//! No NAT and no guest network are needed. Runs until Ctrl-C.

use std::io::Write;
use std::net::{Shutdown, TcpListener, TcpStream};
use std::path::Path;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context as _;
use banger_proto::agent::{AGENT_PORT, ConnectRequest, Kind, read_frame, write_frame};

use super::Context;
use crate::args::PortForwardArgs;

pub fn run(args: PortForwardArgs, ctx: &Context) -> anyhow::Result<ExitCode> {
    let vm = ctx.running_vm(&args.vm)?;
    let path = vm
        .vsock_path
        .clone()
        .with_context(|| format!("{} has no vsock device", vm.name))?;
    let forward = args.forward;
    let listener = TcpListener::bind(forward.host).map_err(|e| {
        if e.kind() == std::io::ErrorKind::AddrInUse {
            let holder = banger_host::procfs::tcp_port_holder(forward.host.port())
                .map(|(pid, name)| format!(" by {name} (pid {pid})"))
                .unwrap_or_default();
            anyhow::anyhow!(
                "{} is already in use{holder}: pick another host port",
                forward.host
            )
        } else {
            anyhow::Error::new(e).context(format!("listening on {}", forward.host))
        }
    })?;
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
                eprintln!("{name}:{}: {e:#}", forward.guest_port);
            }
        });
    }
    Ok(ExitCode::SUCCESS)
}

/// One connection: through the agent to the guest port, bytes both ways.
fn tunnel(client: TcpStream, vsock: &Path, guest_port: u16) -> anyhow::Result<()> {
    let mut guest = banger_host::vsock::connect(vsock, AGENT_PORT, Duration::from_secs(5))
        .context("reaching the guest agent")?;
    let request = serde_json::to_vec(&ConnectRequest { port: guest_port })?;
    write_frame(&mut guest, Kind::Connect, &request)?;
    let answer = read_frame(&mut guest)?.context("the guest agent closed the connection")?;
    match answer.kind {
        Kind::Connected => {}
        Kind::Error => anyhow::bail!("{}", String::from_utf8_lossy(&answer.payload)),
        other => anyhow::bail!("the guest agent answered {other:?}"),
    }
    guest.set_read_timeout(None)?;
    guest.set_write_timeout(None)?;
    splice(client, guest)
}

/// Copies both ways, passing on each side's end of file.
fn splice(client: TcpStream, guest: std::os::unix::net::UnixStream) -> anyhow::Result<()> {
    let (mut client_in, mut client_out) = (client.try_clone()?, client);
    let (mut guest_in, mut guest_out) = (guest.try_clone()?, guest);
    let up = std::thread::spawn(move || {
        let _ = std::io::copy(&mut client_in, &mut guest_out);
        let _ = guest_out.shutdown(Shutdown::Write);
    });
    let _ = std::io::copy(&mut guest_in, &mut client_out);
    let _ = client_out.shutdown(Shutdown::Write);
    let _ = up.join();
    Ok(())
}
