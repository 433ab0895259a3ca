//! `--wait`: block until a VM's guest answers SSH, with progress, a bound,
//! and the console log's path when it does not.

use std::io::Read;
use std::net::{SocketAddr, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use banger_proto::Vm;

/// Waits until the guest behind this VM's own vsock device names itself
/// `vm.name`, and its SSH server has sent its banner: an SSH answer at the
/// VM's address proves nothing alone (another guest could hold it), the
/// vsock device belongs to this VM's VMM. The two are asked side by side:
/// after a resume each takes a guest under TCG some tenths of a second
/// (sshd forks and re-executes itself, the agent's device is plugged back),
/// and asked one after the other they added up. Port 22 is polled, which
/// costs a refused connection until sshd listens.
pub fn until_ssh(vm: &Vm, timeout: Duration, ctx: &super::Context) -> anyhow::Result<()> {
    let ip = vm
        .guest_ip
        .ok_or_else(|| anyhow::anyhow!("{} has no guest IP to wait for", vm.name))?;
    let addr: SocketAddr = format!("{ip}:22").parse()?;
    eprintln!(
        "waiting for {} to answer SSH at {ip} (up to {}s)...",
        vm.name,
        timeout.as_secs()
    );
    let started = Instant::now();
    let banner_seen = AtomicBool::new(false);
    let stop_polling = AtomicBool::new(false);
    let keep_polling = || started.elapsed() < timeout && !stop_polling.load(Ordering::Relaxed);
    let (confirmed, last_identity, not_running) = std::thread::scope(|scope| {
        scope.spawn(|| {
            while keep_polling() {
                if ssh_banner(addr, keep_polling) {
                    banner_seen.store(true, Ordering::Relaxed);
                    return;
                }
                // A refused connection answers at once, so polling often
                // is cheap and readiness is seen within 0.1 s.
                std::thread::sleep(Duration::from_millis(100));
            }
        });
        let mut confirmed = false;
        let mut last_identity = None;
        let mut not_running = None;
        while started.elapsed() < timeout {
            if !confirmed {
                match identity(ctx, &vm.name) {
                    Ok(hostname) if vm.name == hostname.as_str() => confirmed = true,
                    Ok(other) => {
                        last_identity = Some(format!("the guest over vsock is {other:?}"));
                    }
                    Err(e) => {
                        last_identity = Some(e);
                        // A guest that stopped, or that its VMM paused on
                        // a failed disk write, will not answer: say so now
                        // rather than at the deadline.
                        not_running = stopped_running(ctx, &vm.name);
                        if not_running.is_some() {
                            break;
                        }
                    }
                }
            }
            if confirmed && banner_seen.load(Ordering::Relaxed) {
                break;
            }
            std::thread::sleep(Duration::from_millis(if confirmed { 10 } else { 100 }));
        }
        stop_polling.store(true, Ordering::Relaxed);
        (confirmed, last_identity, not_running)
    });
    if confirmed && banner_seen.load(Ordering::Relaxed) {
        eprintln!(
            "{} is ready (answered SSH after {:.1}s, confirmed over vsock)",
            vm.name,
            started.elapsed().as_secs_f64()
        );
        return Ok(());
    }
    if let Some(why) = not_running {
        anyhow::bail!(
            "{} stopped booting after {:.1}s: {why}; its console is in {}",
            vm.name,
            started.elapsed().as_secs_f64(),
            vm.vmm_log_path.display()
        );
    }
    let detail = if confirmed {
        format!(" (its guest answered over vsock, but nothing answered SSH at {ip})")
    } else {
        last_identity
            .map(|why| format!(" ({why})"))
            .unwrap_or_default()
    };
    anyhow::bail!(
        "{} did not answer SSH within {}s{detail}; its console is in {}",
        vm.name,
        timeout.as_secs(),
        vm.vmm_log_path.display()
    )
}

/// Why the VM can no longer come up, if it left the states a booting VM
/// passes through: stopped, failed, or paused by its VMM (`last_error`
/// says why, e.g. a full host disk).
fn stopped_running(ctx: &super::Context, name: &str) -> Option<String> {
    use banger_proto::{VmRef, VmState, api::method};
    let vm = ctx
        .client()
        .and_then(|mut client| {
            Ok(client.call::<method::VmShow>(VmRef {
                vm: name.to_owned(),
            })?)
        })
        .ok()?;
    if matches!(vm.state, VmState::Running | VmState::Starting) {
        return None;
    }
    let reason = vm.last_error.as_deref().or(vm.exit_reason.as_deref());
    Some(match reason {
        Some(reason) => format!("it is {} ({reason})", vm.state),
        None => format!("it is {}", vm.state),
    })
}

/// The hostname the guest behind the VM's vsock reports.
fn identity(ctx: &super::Context, name: &str) -> Result<String, String> {
    let ping: banger_proto::PingResult = ctx
        .client()
        .and_then(|mut client| {
            Ok(
                client.call::<banger_proto::method::VmPing>(banger_proto::VmRef {
                    vm: name.to_owned(),
                })?,
            )
        })
        .map_err(|e| format!("asking over vsock failed: {e:#}"))?;
    match (ping.reachable, ping.guest_hostname) {
        (true, Some(hostname)) => Ok(hostname),
        (true, None) => Err("the guest over vsock gave no hostname".into()),
        (false, _) => Err(format!(
            "its guest does not answer over vsock yet{}",
            ping.detail.map(|d| format!(": {d}")).unwrap_or_default()
        )),
    }
}

/// Whether the server at `addr` greets as SSH. A connection it accepts is
/// kept, and read for as long as `keep_waiting` says, rather than dropped
/// after a few seconds and made again: each connection costs the guest an
/// sshd fork and re-exec, and on a one-vCPU guest still booting, a new one
/// every few seconds can keep sshd slower than the interval.
fn ssh_banner(addr: SocketAddr, keep_waiting: impl Fn() -> bool) -> bool {
    // The guest is on a local bridge: it answers a SYN (or refuses it) in
    // milliseconds once up. A connect sent before its address exists waits
    // for ARP instead, and a long timeout there held readiness back by up
    // to 2 s per try.
    let Ok(mut stream) = TcpStream::connect_timeout(&addr, Duration::from_millis(500)) else {
        return false;
    };
    let _ = stream.set_read_timeout(Some(Duration::from_millis(200)));
    let mut banner = [0u8; 4];
    let mut filled = 0;
    while filled < banner.len() {
        match stream.read(&mut banner[filled..]) {
            Ok(0) => return false,
            Ok(n) => filled += n,
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock
                        | std::io::ErrorKind::TimedOut
                        | std::io::ErrorKind::Interrupted
                ) =>
            {
                if !keep_waiting() {
                    return false;
                }
            }
            Err(_) => return false,
        }
    }
    &banner == b"SSH-"
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    #[test]
    fn a_listener_that_speaks_ssh_counts_and_silence_does_not() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let server = std::thread::spawn(move || {
            let (mut stream, _) = listener.accept().unwrap();
            stream.write_all(b"SSH-2.0-OpenSSH_9.2\r\n").unwrap();
        });
        assert!(ssh_banner(addr, || true));
        server.join().unwrap();
        let silent = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = silent.local_addr().unwrap();
        let server = std::thread::spawn(move || {
            let (mut stream, _) = silent.accept().unwrap();
            stream.write_all(b"HTTP/1.1").unwrap();
        });
        assert!(!ssh_banner(addr, || true));
        server.join().unwrap();
        // A server that accepts and says nothing yet is waited for, on
        // the same connection, until the caller stops waiting.
        let slow = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = slow.local_addr().unwrap();
        let server = std::thread::spawn(move || {
            let (mut stream, _) = slow.accept().unwrap();
            std::thread::sleep(Duration::from_millis(700));
            stream.write_all(b"SSH-2.0-late\r\n").unwrap();
            slow.set_nonblocking(true).unwrap();
            slow.accept().is_err() // no second connection was made
        });
        assert!(ssh_banner(addr, || true));
        assert!(server.join().unwrap(), "one connection, kept");
        let mute = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = mute.local_addr().unwrap();
        let started = Instant::now();
        assert!(!ssh_banner(addr, || started.elapsed() < Duration::from_millis(300)));
        drop(mute);
    }
}
