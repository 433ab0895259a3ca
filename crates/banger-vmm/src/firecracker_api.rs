//! A minimal HTTP/1.1 client for Firecracker's API on its Unix socket: JSON
//! bodies, `Content-Length` framing, one request per connection or a
//! keep-alive [`Session`] for a sequence.

use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::time::Duration;

use serde_json::Value;
use thiserror::Error;

/// Responses larger than this are not Firecracker's.
const MAX_BODY: usize = 1 << 20;

#[derive(Debug, Error)]
pub enum ApiError {
    #[error("connecting to the API socket {socket}")]
    Connect {
        socket: String,
        source: std::io::Error,
    },
    #[error("{method} {path}: I/O on the API socket")]
    Io {
        method: &'static str,
        path: String,
        source: std::io::Error,
    },
    #[error("{method} {path}: malformed HTTP response ({0})", .detail)]
    Malformed {
        method: &'static str,
        path: String,
        detail: String,
    },
    #[error("{method} {path} was refused with HTTP {status}: {fault}")]
    Refused {
        method: &'static str,
        path: String,
        status: u16,
        fault: String,
    },
}

#[derive(Debug, Clone, PartialEq)]
pub struct ApiResponse {
    pub status: u16,
    pub body: String,
}

/// Sends one request on a connection of its own and requires a 2xx answer.
pub fn call(
    socket: &Path,
    method: &'static str,
    path: &str,
    body: Option<&Value>,
    timeout: Duration,
) -> Result<ApiResponse, ApiError> {
    let response = send(socket, method, path, body, timeout)?;
    accepted(response, method, path)
}

/// Sends one request on a connection of its own.
pub fn send(
    socket: &Path,
    method: &'static str,
    path: &str,
    body: Option<&Value>,
    timeout: Duration,
) -> Result<ApiResponse, ApiError> {
    Session::connect(socket, timeout)?.exchange(method, path, body, false)
}

/// One connection kept open for a sequence of requests (HTTP/1.1
/// keep-alive): configuring a VM costs one connect instead of eight.
#[derive(Debug)]
pub struct Session {
    stream: BufReader<UnixStream>,
}

impl Session {
    pub fn connect(socket: &Path, timeout: Duration) -> Result<Self, ApiError> {
        let connect = |source| ApiError::Connect {
            socket: socket.display().to_string(),
            source,
        };
        let stream = UnixStream::connect(socket).map_err(connect)?;
        stream.set_read_timeout(Some(timeout)).map_err(connect)?;
        stream.set_write_timeout(Some(timeout)).map_err(connect)?;
        Ok(Self {
            stream: BufReader::new(stream),
        })
    }

    /// How long the next answers may take.
    pub fn set_timeout(&mut self, timeout: Duration) -> std::io::Result<()> {
        self.stream.get_ref().set_read_timeout(Some(timeout))
    }

    /// Sends a request, keeping the connection open, and requires a 2xx answer.
    pub fn call(
        &mut self,
        method: &'static str,
        path: &str,
        body: Option<&Value>,
    ) -> Result<ApiResponse, ApiError> {
        let response = self.exchange(method, path, body, true)?;
        accepted(response, method, path)
    }

    fn request(method: &str, path: &str, body: Option<&Value>, keep_alive: bool) -> String {
        let payload = body.map(Value::to_string).unwrap_or_default();
        let mut request =
            format!("{method} {path} HTTP/1.1\r\nHost: localhost\r\nAccept: application/json\r\n");
        if body.is_some() {
            request.push_str("Content-Type: application/json\r\n");
        }
        if !keep_alive {
            request.push_str("Connection: close\r\n");
        }
        request.push_str(&format!(
            "Content-Length: {}\r\n\r\n{payload}",
            payload.len()
        ));
        request
    }

    fn response(&mut self, method: &'static str, path: &str) -> Result<ApiResponse, ApiError> {
        read_response(&mut self.stream).map_err(|e| match e {
            ReadError::Io(source) => ApiError::Io {
                method,
                path: path.to_owned(),
                source,
            },
            ReadError::Malformed(detail) => ApiError::Malformed {
                method,
                path: path.to_owned(),
                detail,
            },
        })
    }

    fn exchange(
        &mut self,
        method: &'static str,
        path: &str,
        body: Option<&Value>,
        keep_alive: bool,
    ) -> Result<ApiResponse, ApiError> {
        let request = Self::request(method, path, body, keep_alive);
        self.stream
            .get_mut()
            .write_all(request.as_bytes())
            .map_err(|source| ApiError::Io {
                method,
                path: path.to_owned(),
                source,
            })?;
        self.response(method, path)
    }
}

/// A 2xx response as is; anything else as a refusal with Firecracker's
/// `fault_message`.
fn accepted(
    response: ApiResponse,
    method: &'static str,
    path: &str,
) -> Result<ApiResponse, ApiError> {
    if (200..300).contains(&response.status) {
        return Ok(response);
    }
    let fault = serde_json::from_str::<Value>(&response.body)
        .ok()
        .and_then(|v| {
            v.get("fault_message")
                .and_then(Value::as_str)
                .map(str::to_owned)
        })
        .unwrap_or_else(|| response.body.trim().to_owned());
    Err(ApiError::Refused {
        method,
        path: path.to_owned(),
        status: response.status,
        fault,
    })
}

#[derive(Debug)]
enum ReadError {
    Io(std::io::Error),
    Malformed(String),
}

fn read_response(mut reader: impl BufRead) -> Result<ApiResponse, ReadError> {
    let mut status_line = String::new();
    reader.read_line(&mut status_line).map_err(ReadError::Io)?;
    let status: u16 = status_line
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| ReadError::Malformed(format!("status line {:?}", status_line.trim())))?;
    let mut content_length = None;
    loop {
        let mut line = String::new();
        if reader.read_line(&mut line).map_err(ReadError::Io)? == 0 {
            return Err(ReadError::Malformed("headers ended early".into()));
        }
        let line = line.trim_end();
        if line.is_empty() {
            break;
        }
        if let Some((name, value)) = line.split_once(':')
            && name.eq_ignore_ascii_case("content-length")
        {
            let length: usize = value
                .trim()
                .parse()
                .map_err(|_| ReadError::Malformed(format!("Content-Length {value:?}")))?;
            content_length = Some(length);
        }
    }
    let length = content_length.unwrap_or(0);
    if length > MAX_BODY {
        return Err(ReadError::Malformed(format!("body of {length} bytes")));
    }
    let mut body = vec![0; length];
    reader.read_exact(&mut body).map_err(ReadError::Io)?;
    Ok(ApiResponse {
        status,
        body: String::from_utf8_lossy(&body).into_owned(),
    })
}

#[cfg(test)]
mod tests {
    use std::io::Read;

    use super::*;

    #[test]
    fn parses_no_content_and_json_errors() {
        let ok = read_response(&b"HTTP/1.1 204 \r\nServer: Firecracker API\r\n\r\n"[..]).unwrap();
        assert_eq!(
            ok,
            ApiResponse {
                status: 204,
                body: String::new()
            }
        );
        let body = r#"{"fault_message":"Invalid kernel path"}"#;
        let text = format!(
            "HTTP/1.1 400 \r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
            body.len()
        );
        let bad = read_response(text.as_bytes()).unwrap();
        assert_eq!(bad.status, 400);
        assert_eq!(bad.body, body);
        assert!(read_response(&b"garbage\r\n\r\n"[..]).is_err());
    }

    #[test]
    fn refusals_carry_firecrackers_fault_message() {
        let tmp = tempfile::tempdir().unwrap();
        let socket = tmp.path().join("api.sock");
        let listener = std::os::unix::net::UnixListener::bind(&socket).unwrap();
        let server = std::thread::spawn(move || {
            let (mut stream, _) = listener.accept().unwrap();
            let mut reader = BufReader::new(stream.try_clone().unwrap());
            let mut request = String::new();
            loop {
                let mut line = String::new();
                reader.read_line(&mut line).unwrap();
                request.push_str(&line);
                if line == "\r\n" {
                    break;
                }
            }
            let length: usize = request
                .lines()
                .find_map(|l| l.strip_prefix("Content-Length: "))
                .unwrap()
                .trim()
                .parse()
                .unwrap();
            let mut body = vec![0; length];
            reader.read_exact(&mut body).unwrap();
            let fault = r#"{"fault_message":"The kernel file cannot be opened"}"#;
            write!(
                stream,
                "HTTP/1.1 400 \r\nContent-Length: {}\r\n\r\n{fault}",
                fault.len()
            )
            .unwrap();
            (request, String::from_utf8(body).unwrap())
        });
        let body = serde_json::json!({"kernel_image_path": "/nope"});
        let err = call(
            &socket,
            "PUT",
            "/boot-source",
            Some(&body),
            Duration::from_secs(2),
        )
        .unwrap_err();
        assert_eq!(
            err.to_string(),
            "PUT /boot-source was refused with HTTP 400: The kernel file cannot be opened"
        );
        let (request, sent) = server.join().unwrap();
        assert!(
            request.starts_with("PUT /boot-source HTTP/1.1\r\n"),
            "{request}"
        );
        assert_eq!(sent, body.to_string());
    }
}
