//! Runs in the guest (as the `banger-vsock-pingd` systemd unit): answers
//! the host's ping on AF_VSOCK port 10789.

use std::process::ExitCode;

fn main() -> ExitCode {
    let port = banger_proto::ping::PING_PORT;
    let listener = match banger_guest::listen_vsock(port) {
        Ok(listener) => listener,
        Err(e) => {
            eprintln!(
                "banger-vsock-pingd: cannot listen on vsock port {port}: {e} (is the vsock device present?)"
            );
            return ExitCode::FAILURE;
        }
    };
    eprintln!("banger-vsock-pingd: listening on vsock port {port}");
    loop {
        match banger_guest::accept(&listener) {
            Ok(stream) => {
                std::thread::spawn(move || {
                    let _ = stream.set_read_timeout(Some(banger_guest::CLIENT_TIMEOUT));
                    let _ = stream.set_write_timeout(Some(banger_guest::CLIENT_TIMEOUT));
                    let _ = banger_guest::serve_connection(
                        stream,
                        banger_guest::uptime_secs(),
                        &banger_guest::hostname(),
                    );
                });
            }
            Err(e) => {
                eprintln!("banger-vsock-pingd: accept failed: {e}");
                std::thread::sleep(std::time::Duration::from_millis(100));
            }
        }
    }
}
