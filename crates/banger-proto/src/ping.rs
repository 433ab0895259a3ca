//! The guest ping protocol, spoken over vsock between `vm.ping` on the host
//! and `banger-vsock-pingd` in the guest. One request line, one answer line:
//!
//! ```text
//! host:  BANGER-PING 1\n
//! guest: BANGER-PONG 1 uptime=<seconds> hostname=<name> [state=<systemd state>]\n
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

/// The guest's answer to one request line, from its status. The state
/// word is optional: hosts that predate it ignore it, and guests that
/// predate it leave it out.
pub fn respond(line: &str, status: &Pong) -> String {
    let word = |text: &str| -> String { text.chars().filter(|c| c.is_ascii_graphic()).collect() };
    match line.trim_end().split_once(' ') {
        Some(("BANGER-PING", version)) if version.trim() == VERSION.to_string() => {
            let state = status
                .state
                .as_deref()
                .map(|s| format!(" state={}", word(s)))
                .unwrap_or_default();
            format!(
                "BANGER-PONG {VERSION} uptime={} hostname={}{state}\n",
                status.uptime_secs,
                word(&status.hostname)
            )
        }
        Some(("BANGER-PING", version)) => format!("ERR unsupported version {:?}\n", version.trim()),
        _ => "ERR expected BANGER-PING\n".to_owned(),
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Pong {
    pub uptime_secs: u64,
    pub hostname: String,
    /// systemd's state (`running`, `degraded`, `stopping`, ...), or
    /// `rebooting` while a reboot is under way.
    pub state: Option<String>,
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
    let mut state = None;
    for word in words {
        match word.split_once('=') {
            Some(("uptime", v)) => uptime = v.parse().ok(),
            Some(("hostname", v)) => hostname = Some(v.to_owned()),
            Some(("state", v)) => state = Some(v.to_owned()),
            _ => {}
        }
    }
    match (uptime, hostname) {
        (Some(uptime_secs), Some(hostname)) => Ok(Pong {
            uptime_secs,
            hostname,
            state,
        }),
        _ => Err(format!("incomplete answer {line:?}")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn status(uptime_secs: u64, hostname: &str, state: Option<&str>) -> Pong {
        Pong {
            uptime_secs,
            hostname: hostname.into(),
            state: state.map(str::to_owned),
        }
    }

    #[test]
    fn round_trip() {
        let answer = respond(&request(), &status(42, "calm-otter", None));
        assert_eq!(answer, "BANGER-PONG 1 uptime=42 hostname=calm-otter\n");
        assert_eq!(parse_pong(&answer), Ok(status(42, "calm-otter", None)));
        let stopping = respond(&request(), &status(42, "calm-otter", Some("stopping")));
        assert_eq!(
            stopping,
            "BANGER-PONG 1 uptime=42 hostname=calm-otter state=stopping\n"
        );
        assert_eq!(
            parse_pong(&stopping),
            Ok(status(42, "calm-otter", Some("stopping")))
        );
    }

    #[test]
    fn bad_requests_and_answers() {
        let any = status(1, "x", None);
        assert_eq!(respond("HELLO\n", &any), "ERR expected BANGER-PING\n");
        assert_eq!(
            respond("BANGER-PING 9\n", &any),
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
            respond("BANGER-PING 1", &status(5, "bad name\n", Some("odd state"))),
            "BANGER-PONG 1 uptime=5 hostname=badname state=oddstate\n"
        );
    }
}
