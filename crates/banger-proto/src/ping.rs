//! The guest ping protocol, spoken over vsock between `vm.ping` on the host
//! and `banger-vsock-pingd` in the guest. One request line, one answer line:
//!
//! ```text
//! host:  BANGER-PING 1\n
//! guest: BANGER-PONG 1 uptime=<seconds> hostname=<name>\n
//! guest: ERR <reason>\n          (for anything else)
//! ```
//!
//! Over Firecracker's hybrid vsock (and vhost-device-vsock) the host first
//! writes `CONNECT <port>\n` to the VM's vsock Unix socket and reads `OK <n>\n`.

/// The guest's AF_VSOCK port.
pub const PING_PORT: u32 = 10789;
pub const VERSION: u32 = 1;
/// Longest line either side reads.
pub const MAX_LINE: usize = 512;

pub fn request() -> String {
    format!("BANGER-PING {VERSION}\n")
}

/// The guest's answer to one request line.
pub fn respond(line: &str, uptime_secs: u64, hostname: &str) -> String {
    match line.trim_end().split_once(' ') {
        Some(("BANGER-PING", version)) if version.trim() == VERSION.to_string() => {
            let hostname: String = hostname.chars().filter(|c| c.is_ascii_graphic()).collect();
            format!("BANGER-PONG {VERSION} uptime={uptime_secs} hostname={hostname}\n")
        }
        Some(("BANGER-PING", version)) => format!("ERR unsupported version {:?}\n", version.trim()),
        _ => "ERR expected BANGER-PING\n".to_owned(),
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Pong {
    pub uptime_secs: u64,
    pub hostname: String,
}

/// Parses the guest's answer.
pub fn parse_pong(line: &str) -> Result<Pong, String> {
    let line = line.trim_end();
    if let Some(reason) = line.strip_prefix("ERR ") {
        return Err(format!("the guest refused the ping: {reason}"));
    }
    let mut words = line.split(' ');
    if words.next() != Some("BANGER-PONG") || words.next() != Some("1") {
        return Err(format!("unexpected answer {line:?}"));
    }
    let mut uptime = None;
    let mut hostname = None;
    for word in words {
        match word.split_once('=') {
            Some(("uptime", v)) => uptime = v.parse().ok(),
            Some(("hostname", v)) => hostname = Some(v.to_owned()),
            _ => {}
        }
    }
    match (uptime, hostname) {
        (Some(uptime_secs), Some(hostname)) => Ok(Pong {
            uptime_secs,
            hostname,
        }),
        _ => Err(format!("incomplete answer {line:?}")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip() {
        let answer = respond(&request(), 42, "calm-otter");
        assert_eq!(answer, "BANGER-PONG 1 uptime=42 hostname=calm-otter\n");
        assert_eq!(
            parse_pong(&answer),
            Ok(Pong {
                uptime_secs: 42,
                hostname: "calm-otter".into()
            })
        );
    }

    #[test]
    fn bad_requests_and_answers() {
        assert_eq!(respond("HELLO\n", 1, "x"), "ERR expected BANGER-PING\n");
        assert_eq!(
            respond("BANGER-PING 9\n", 1, "x"),
            "ERR unsupported version \"9\"\n"
        );
        assert!(
            parse_pong("ERR expected BANGER-PING")
                .unwrap_err()
                .contains("refused")
        );
        assert!(parse_pong("garbage").is_err());
        assert!(parse_pong("BANGER-PONG 1 uptime=x hostname=y").is_err());
        assert_eq!(
            respond("BANGER-PING 1", 5, "bad name\n"),
            "BANGER-PONG 1 uptime=5 hostname=badname\n"
        );
    }
}
