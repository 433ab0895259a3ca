//! A published port: a host address and port whose TCP connections lead,
//! over vsock and the guest agent, to a port inside a VM. Written and
//! stored as `[HOST_ADDR:]HOST_PORT:GUEST_PORT`.

use std::fmt;
use std::net::{IpAddr, SocketAddr};
use std::str::FromStr;

use serde::{Deserialize, Serialize};

use crate::validate::{ValidationError, clip};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct PortMapping {
    /// Where the host listens; 127.0.0.1 unless the user named an address.
    pub host: SocketAddr,
    pub guest_port: u16,
}

impl PortMapping {
    /// Whether both cannot listen at once: the same port on the same
    /// address, or on any address when either listens on all of them.
    pub fn clashes_with(&self, other: &PortMapping) -> bool {
        self.host.port() == other.host.port()
            && (self.host.ip() == other.host.ip()
                || self.host.ip().is_unspecified()
                || other.host.ip().is_unspecified())
    }
}

impl FromStr for PortMapping {
    type Err = ValidationError;

    fn from_str(text: &str) -> Result<Self, ValidationError> {
        let bad = |why: String| ValidationError::PortMapping {
            text: clip(text),
            why,
        };
        let (rest, guest) = text
            .rsplit_once(':')
            .ok_or_else(|| bad("no guest port".into()))?;
        let host = parse_host(rest).map_err(bad)?;
        Ok(Self {
            host,
            guest_port: parse_port(guest, "guest").map_err(bad)?,
        })
    }
}

/// `[HOST_ADDR:]HOST_PORT`, the host side of a mapping (`vm set
/// --unpublish` names a published port by it).
pub fn host_addr(text: &str) -> Result<SocketAddr, ValidationError> {
    parse_host(text).map_err(|why| ValidationError::HostPort {
        text: clip(text),
        why,
    })
}

fn parse_host(text: &str) -> Result<SocketAddr, String> {
    let (addr, port) = match text.rsplit_once(':') {
        Some((addr, port)) => (addr.trim_start_matches('[').trim_end_matches(']'), port),
        // Only this host reaches a port published without an address.
        None => ("127.0.0.1", text),
    };
    let addr: IpAddr = addr
        .parse()
        .map_err(|_| format!("{:?} is not an IP address", clip(addr)))?;
    Ok(SocketAddr::new(addr, parse_port(port, "host")?))
}

fn parse_port(text: &str, which: &str) -> Result<u16, String> {
    text.parse::<u16>()
        .ok()
        .filter(|p| *p > 0)
        .ok_or_else(|| format!("{which} port {:?} is not 1 to 65535", clip(text)))
}

impl fmt::Display for PortMapping {
    /// The form it was written in, address always included.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}", self.host, self.guest_port)
    }
}

impl TryFrom<String> for PortMapping {
    type Error = ValidationError;

    fn try_from(text: String) -> Result<Self, ValidationError> {
        text.parse()
    }
}

impl From<PortMapping> for String {
    fn from(mapping: PortMapping) -> Self {
        mapping.to_string()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_written_forms_parse_and_print_back_with_their_address() {
        for (text, shown) in [
            ("8080:80", "127.0.0.1:8080:80"),
            ("0.0.0.0:8080:80", "0.0.0.0:8080:80"),
            ("[::1]:2222:22", "[::1]:2222:22"),
            ("::1:2222:22", "[::1]:2222:22"),
        ] {
            let mapping: PortMapping = text.parse().unwrap();
            assert_eq!(mapping.to_string(), shown, "{text}");
            assert_eq!(shown.parse::<PortMapping>().unwrap(), mapping);
        }
    }

    #[test]
    fn bad_forms_name_the_value_and_the_fix() {
        for (text, says) in [
            ("80", "no guest port"),
            ("70000:80", "host port \"70000\" is not 1 to 65535"),
            ("8080:0", "guest port \"0\""),
            ("localhost:8080:80", "\"localhost\" is not an IP address"),
        ] {
            let err = text.parse::<PortMapping>().unwrap_err().to_string();
            assert!(err.contains(says), "{text}: {err}");
            assert!(err.contains(text) && err.contains("like 8080:80"), "{err}");
        }
    }

    #[test]
    fn a_host_side_alone_names_a_published_port() {
        assert_eq!(host_addr("8080").unwrap().to_string(), "127.0.0.1:8080");
        assert_eq!(
            host_addr("0.0.0.0:8080").unwrap().to_string(),
            "0.0.0.0:8080"
        );
        let err = host_addr("808x").unwrap_err().to_string();
        assert!(
            err.contains("\"808x\"") && err.contains("like 8080"),
            "{err}"
        );
    }

    #[test]
    fn clashes_are_the_same_port_on_a_shared_address() {
        let m = |t: &str| t.parse::<PortMapping>().unwrap();
        assert!(m("8080:80").clashes_with(&m("127.0.0.1:8080:22")));
        assert!(m("0.0.0.0:8080:80").clashes_with(&m("8080:22")));
        assert!(!m("8080:80").clashes_with(&m("127.0.0.2:8080:80")));
        assert!(!m("8080:80").clashes_with(&m("8081:80")));
    }

    #[test]
    fn the_wire_form_is_the_text() {
        let m: PortMapping = "8080:80".parse().unwrap();
        assert_eq!(serde_json::to_string(&m).unwrap(), "\"127.0.0.1:8080:80\"");
        assert!(serde_json::from_str::<PortMapping>("\"8080\"").is_err());
    }
}
