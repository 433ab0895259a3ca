//! Runs in the guest (as the `banger-vsock-pingd` systemd unit): answers
//! the host's ping on AF_VSOCK port 10789, and runs `banger vm exec`'s
//! commands on port 10790 (the agent).

use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use banger_proto::agent::AGENT_PORT;
use banger_proto::ping::PING_PORT;

/// Set by SIGTERM: systemd is stopping this unit, so the guest is on its
/// way down (or it was stopped by hand, which this also reports).
static STOPPING: AtomicBool = AtomicBool::new(false);

/// How long the responder goes on answering after SIGTERM, so a `vm ssh`
/// that ended with `poweroff` or `reboot` hears that, not silence.
const LINGER: Duration = Duration::from_secs(3);

extern "C" fn on_sigterm(_: libc::c_int) {
    STOPPING.store(true, Ordering::SeqCst);
}

fn main() -> ExitCode {
    // SAFETY: the handler only stores to an atomic, which is async-signal-safe.
    unsafe { libc::signal(libc::SIGTERM, on_sigterm as *const () as libc::sighandler_t) };
    std::thread::spawn(|| {
        while !STOPPING.load(Ordering::SeqCst) {
            std::thread::sleep(Duration::from_millis(100));
        }
        std::thread::sleep(LINGER);
        std::process::exit(0);
    });
    let (ping, agent) = match (
        banger_guest::listen_vsock(PING_PORT),
        banger_guest::listen_vsock(AGENT_PORT),
    ) {
        (Ok(ping), Ok(agent)) => (ping, agent),
        (Err(e), _) | (_, Err(e)) => {
            eprintln!(
                "banger-vsock-pingd: cannot listen on vsock ports {PING_PORT} and {AGENT_PORT}: {e} (is the vsock device present?)"
            );
            return ExitCode::FAILURE;
        }
    };
    eprintln!("banger-vsock-pingd: ping on vsock port {PING_PORT}, agent on {AGENT_PORT}");
    std::thread::spawn(move || {
        serve_forever(&agent, |stream| {
            // No timeouts: a command may run, and stay silent, for hours.
            if let Err(e) = banger_guest::agent::serve(stream) {
                eprintln!("banger-vsock-pingd: exec session: {e}");
            }
        });
    });
    serve_forever(&ping, |stream| {
        let _ = stream.set_read_timeout(Some(banger_guest::CLIENT_TIMEOUT));
        let _ = stream.set_write_timeout(Some(banger_guest::CLIENT_TIMEOUT));
        let mut status = banger_guest::status();
        if STOPPING.load(Ordering::SeqCst) && status.state.as_deref() != Some("rebooting") {
            status.state = Some("stopping".into());
        }
        let _ = banger_guest::serve_connection(stream, &status);
    });
}

/// Accepts forever, each connection on a thread of its own.
fn serve_forever(listener: &std::os::fd::OwnedFd, handle: fn(std::net::TcpStream)) -> ! {
    loop {
        match banger_guest::accept(listener) {
            Ok(stream) => {
                std::thread::spawn(move || handle(stream));
            }
            Err(e) => {
                eprintln!("banger-vsock-pingd: accept failed: {e}");
                std::thread::sleep(std::time::Duration::from_millis(100));
            }
        }
    }
}
