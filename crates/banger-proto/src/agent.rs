//! The guest agent's protocol, spoken over vsock between `banger vm exec`
//! and the agent in `banger-vsock-pingd` (its own port beside the ping's).
//!
//! Every message is a frame: one kind byte, a big-endian `u32` payload
//! length, then the payload. A session starts with one [`Kind::Exec`]
//! frame from the host; then stdin, window sizes and signals flow to the
//! guest, and stdout, stderr and finally one [`Kind::Exit`] flow back.
//!
//! ```text
//! host → guest: Exec(json ExecRequest) Stdin(bytes)* StdinEof Resize(rows,cols) Signal(i32)
//! guest → host: Stdout(bytes)* Stderr(bytes)* Exit(json ExitStatus) | Error(text)
//! ```
//!
//! Port forwarding opens with [`Kind::Connect`] instead; once the guest
//! answers [`Kind::Connected`], the connection carries the TCP bytes as
//! they are.

use std::io::{self, Read, Write};

use serde::{Deserialize, Serialize};
use thiserror::Error;

/// The agent's AF_VSOCK port (the ping's is 10789).
pub const AGENT_PORT: u32 = 10790;
/// The largest payload either side sends or accepts.
pub const MAX_PAYLOAD: usize = 1 << 20;
/// How much output or input goes into one frame.
pub const CHUNK: usize = 64 << 10;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum Kind {
    Exec = 1,
    Stdin = 2,
    StdinEof = 3,
    Resize = 4,
    Signal = 5,
    /// Instead of Exec: a TCP connection to a guest port (port forwarding).
    Connect = 6,
    Stdout = 10,
    Stderr = 11,
    Exit = 12,
    Error = 13,
    /// The guest port accepted: from here on the stream is the TCP
    /// connection's bytes, unframed, both ways.
    Connected = 14,
}

impl Kind {
    fn from_byte(byte: u8) -> Option<Self> {
        Some(match byte {
            1 => Self::Exec,
            2 => Self::Stdin,
            3 => Self::StdinEof,
            4 => Self::Resize,
            5 => Self::Signal,
            6 => Self::Connect,
            10 => Self::Stdout,
            11 => Self::Stderr,
            12 => Self::Exit,
            13 => Self::Error,
            14 => Self::Connected,
            _ => return None,
        })
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Frame {
    pub kind: Kind,
    pub payload: Vec<u8>,
}

#[derive(Debug, Error)]
pub enum FrameError {
    #[error("the connection ended in the middle of a frame")]
    Truncated,
    #[error("a frame of {0} bytes is larger than the {MAX_PAYLOAD}-byte limit")]
    TooLarge(u64),
    #[error("unknown frame kind {0}")]
    UnknownKind(u8),
    #[error("reading a frame")]
    Io(#[source] io::Error),
}

/// Writes one frame; payloads over [`MAX_PAYLOAD`] are refused.
pub fn write_frame(out: &mut impl Write, kind: Kind, payload: &[u8]) -> io::Result<()> {
    let len = u32::try_from(payload.len())
        .ok()
        .filter(|len| *len as usize <= MAX_PAYLOAD)
        .ok_or_else(|| io::Error::other(format!("a {}-byte frame is too large", payload.len())))?;
    let mut header = [0u8; 5];
    header[0] = kind as u8;
    header[1..].copy_from_slice(&len.to_be_bytes());
    out.write_all(&header)?;
    out.write_all(payload)?;
    out.flush()
}

/// Reads one frame; `None` when the peer closed between frames.
pub fn read_frame(input: &mut impl Read) -> Result<Option<Frame>, FrameError> {
    let mut header = [0u8; 5];
    let mut filled = 0;
    while filled < header.len() {
        match input.read(&mut header[filled..]) {
            Ok(0) if filled == 0 => return Ok(None),
            Ok(0) => return Err(FrameError::Truncated),
            Ok(n) => filled += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(FrameError::Io(e)),
        }
    }
    let kind = Kind::from_byte(header[0]).ok_or(FrameError::UnknownKind(header[0]))?;
    let len = u32::from_be_bytes([header[1], header[2], header[3], header[4]]);
    if len as usize > MAX_PAYLOAD {
        return Err(FrameError::TooLarge(u64::from(len)));
    }
    let mut payload = vec![0u8; len as usize];
    input.read_exact(&mut payload).map_err(|e| match e.kind() {
        io::ErrorKind::UnexpectedEof => FrameError::Truncated,
        _ => FrameError::Io(e),
    })?;
    Ok(Some(Frame { kind, payload }))
}

/// What to run, in the first frame.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ExecRequest {
    pub argv: Vec<String>,
    /// Added to the agent's base environment (PATH, HOME=/root, ...).
    #[serde(default)]
    pub env: Vec<(String, String)>,
    /// Default: `/root`.
    #[serde(default)]
    pub workdir: Option<String>,
    /// A PTY of this size; none means pipes.
    #[serde(default)]
    pub tty: Option<WindowSize>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct WindowSize {
    pub rows: u16,
    pub cols: u16,
}

impl WindowSize {
    pub fn to_payload(self) -> [u8; 4] {
        let mut bytes = [0u8; 4];
        bytes[..2].copy_from_slice(&self.rows.to_be_bytes());
        bytes[2..].copy_from_slice(&self.cols.to_be_bytes());
        bytes
    }

    pub fn from_payload(payload: &[u8]) -> Option<Self> {
        let bytes: [u8; 4] = payload.try_into().ok()?;
        Some(Self {
            rows: u16::from_be_bytes([bytes[0], bytes[1]]),
            cols: u16::from_be_bytes([bytes[2], bytes[3]]),
        })
    }
}

/// The guest port to connect to, in a Connect frame.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct ConnectRequest {
    pub port: u16,
}

/// How the command ended, in the last frame.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct ExitStatus {
    pub code: Option<i32>,
    pub signal: Option<i32>,
}

impl ExitStatus {
    /// The status a shell would report: the code, or 128 + the signal.
    pub fn shell_code(self) -> i32 {
        match (self.code, self.signal) {
            (Some(code), _) => code,
            (None, Some(signal)) => 128 + signal,
            (None, None) => 1,
        }
    }
}

/// A signal number as a frame payload.
pub fn signal_payload(signal: i32) -> [u8; 4] {
    signal.to_be_bytes()
}

pub fn signal_from_payload(payload: &[u8]) -> Option<i32> {
    Some(i32::from_be_bytes(payload.try_into().ok()?))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn encoded(frames: &[(Kind, &[u8])]) -> Vec<u8> {
        let mut bytes = Vec::new();
        for (kind, payload) in frames {
            write_frame(&mut bytes, *kind, payload).unwrap();
        }
        bytes
    }

    #[test]
    fn frames_round_trip_and_end_cleanly() {
        let bytes = encoded(&[(Kind::Stdout, b"hello"), (Kind::StdinEof, b"")]);
        let mut input = &bytes[..];
        assert_eq!(
            read_frame(&mut input).unwrap(),
            Some(Frame {
                kind: Kind::Stdout,
                payload: b"hello".to_vec()
            })
        );
        assert_eq!(
            read_frame(&mut input).unwrap().unwrap().kind,
            Kind::StdinEof
        );
        assert!(read_frame(&mut input).unwrap().is_none());
    }

    #[test]
    fn truncated_oversized_and_unknown_frames_are_errors() {
        let bytes = encoded(&[(Kind::Stdout, b"hello")]);
        for cut in 1..bytes.len() {
            assert!(
                matches!(read_frame(&mut &bytes[..cut]), Err(FrameError::Truncated)),
                "cut at {cut}"
            );
        }
        let mut huge = vec![Kind::Stdout as u8];
        huge.extend_from_slice(&u32::MAX.to_be_bytes());
        assert!(matches!(
            read_frame(&mut &huge[..]),
            Err(FrameError::TooLarge(_))
        ));
        assert!(matches!(
            read_frame(&mut &[99u8, 0, 0, 0, 0][..]),
            Err(FrameError::UnknownKind(99))
        ));
        assert!(write_frame(&mut Vec::new(), Kind::Stdin, &vec![0; MAX_PAYLOAD + 1]).is_err());
    }

    #[test]
    fn sizes_signals_and_exit_codes() {
        let size = WindowSize {
            rows: 40,
            cols: 132,
        };
        assert_eq!(WindowSize::from_payload(&size.to_payload()), Some(size));
        assert_eq!(WindowSize::from_payload(b"abc"), None);
        assert_eq!(signal_from_payload(&signal_payload(15)), Some(15));
        assert_eq!(
            ExitStatus {
                code: None,
                signal: Some(9)
            }
            .shell_code(),
            137
        );
    }
}
