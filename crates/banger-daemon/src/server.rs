//! The Unix-socket server: one JSON-RPC message per line, each connection in
//! its own task. A bad client gets an error response and never reaches the
//! accept loop or another connection. Shutdown follows mini-redis: a watch
//! tells every task to stop, and dropping their `done` senders tells the
//! accept loop that all have finished.

use std::sync::Arc;
use std::time::Duration;

use banger_proto::{ErrorKind, MAX_MESSAGE_BYTES, Request, Response, RpcError};
use serde_json::Value;
use tokio::io::{AsyncBufRead, AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::{UnixListener, UnixStream};
use tokio::sync::{mpsc, watch};

use crate::service::Daemon;

/// How long shutdown waits for requests in flight before giving up on them.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(30);

pub async fn serve(listener: UnixListener, daemon: Arc<Daemon>) {
    let mut shutdown = daemon.shutdown_receiver();
    let (done_tx, mut done_rx) = mpsc::channel::<()>(1);
    loop {
        tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => {
                    let daemon = daemon.clone();
                    let shutdown = daemon.shutdown_receiver();
                    let done = done_tx.clone();
                    tokio::spawn(async move {
                        handle_connection(stream, daemon, shutdown).await;
                        drop(done);
                    });
                }
                Err(e) => {
                    // Out of descriptors or similar: back off instead of spinning.
                    tracing::warn!(error = %e, "accepting a connection failed");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            },
            _ = shutdown.changed() => break,
        }
    }
    drop(listener);
    drop(done_tx);
    if tokio::time::timeout(DRAIN_TIMEOUT, done_rx.recv())
        .await
        .is_err()
    {
        tracing::warn!("requests still running after {DRAIN_TIMEOUT:?}; shutting down anyway");
    }
}

/// One newline-terminated message, or the news that it was too long (its
/// bytes are discarded up to the next newline, so the connection stays usable).
#[derive(Debug, PartialEq)]
enum Frame {
    Line(Vec<u8>),
    TooLong,
}

async fn read_frame<R: AsyncBufRead + Unpin>(
    reader: &mut R,
    max: usize,
) -> std::io::Result<Option<Frame>> {
    let mut line = Vec::new();
    let mut too_long = false;
    loop {
        let available = reader.fill_buf().await?;
        if available.is_empty() {
            // EOF: a partial last line without newline is dropped.
            return Ok(None);
        }
        let (chunk, found_newline) = match available.iter().position(|b| *b == b'\n') {
            Some(i) => (&available[..i], true),
            None => (available, false),
        };
        if !too_long {
            if line.len() + chunk.len() > max {
                too_long = true;
                line = Vec::new();
            } else {
                line.extend_from_slice(chunk);
            }
        }
        let used = chunk.len() + usize::from(found_newline);
        reader.consume(used);
        if found_newline {
            return Ok(Some(if too_long {
                Frame::TooLong
            } else {
                Frame::Line(line)
            }));
        }
    }
}

async fn handle_connection(
    stream: UnixStream,
    daemon: Arc<Daemon>,
    mut shutdown: watch::Receiver<bool>,
) {
    let (read, mut write) = stream.into_split();
    let mut reader = BufReader::new(read);
    loop {
        let response = tokio::select! {
            frame = read_frame(&mut reader, MAX_MESSAGE_BYTES) => match frame {
                Ok(None) => return,
                Ok(Some(Frame::Line(line))) if line.iter().all(u8::is_ascii_whitespace) => continue,
                Ok(Some(Frame::Line(line))) => respond(&daemon, &line).await,
                Ok(Some(Frame::TooLong)) => Response::failure(
                    Value::Null,
                    RpcError::new(
                        ErrorKind::InvalidRequest,
                        format!("request is larger than {MAX_MESSAGE_BYTES} bytes: send smaller messages"),
                    ),
                ),
                Err(e) => {
                    tracing::debug!(error = %e, "connection read failed");
                    return;
                }
            },
            _ = shutdown.changed() => return,
        };
        // Sized for the result up front: a thousand-VM list is one copy.
        let size = response.result.as_ref().map_or(256, |r| r.get().len() + 64);
        let mut text = Vec::with_capacity(size);
        let encoded = serde_json::to_writer(&mut text, &response).map(|()| text);
        let mut text = encoded.unwrap_or_else(|e| {
            let error = RpcError::new(ErrorKind::Internal, format!("encoding the response: {e}"));
            serde_json::to_vec(&Response::failure(response.id.clone(), error))
                .expect("an error response always encodes")
        });
        text.push(b'\n');
        if let Err(e) = write.write_all(&text).await {
            tracing::debug!(error = %e, "client went away before its response");
            return;
        }
    }
}

async fn respond(daemon: &Arc<Daemon>, line: &[u8]) -> Response {
    let value: Value = match serde_json::from_slice(line) {
        Ok(v) => v,
        Err(e) => {
            return Response::failure(
                Value::Null,
                RpcError::new(
                    ErrorKind::ParseError,
                    format!("request is not valid JSON: {e}"),
                ),
            );
        }
    };
    let id = value.get("id").cloned().unwrap_or(Value::Null);
    let request: Request = match serde_json::from_value(value) {
        Ok(r) => r,
        Err(e) => {
            return Response::failure(
                id,
                RpcError::new(
                    ErrorKind::InvalidRequest,
                    format!("request is not a JSON-RPC 2.0 request object: {e}"),
                ),
            );
        }
    };
    if request.jsonrpc != banger_proto::rpc::JSONRPC_VERSION {
        return Response::failure(
            id,
            RpcError::new(
                ErrorKind::InvalidRequest,
                format!(
                    "jsonrpc is {:?}; only \"2.0\" is spoken here",
                    request.jsonrpc
                ),
            ),
        );
    }
    match daemon.dispatch(&request.method, request.params).await {
        Ok(result) => Response::success(request.id, result),
        Err(error) => Response::failure(request.id, error),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn frames_are_bounded_and_the_stream_recovers() {
        let input: &[u8] = b"short\nthis-one-is-too-long\nok\npartial";
        let mut reader = BufReader::with_capacity(4, input);
        assert_eq!(
            read_frame(&mut reader, 10).await.unwrap(),
            Some(Frame::Line(b"short".to_vec()))
        );
        assert_eq!(
            read_frame(&mut reader, 10).await.unwrap(),
            Some(Frame::TooLong)
        );
        assert_eq!(
            read_frame(&mut reader, 10).await.unwrap(),
            Some(Frame::Line(b"ok".to_vec()))
        );
        assert_eq!(read_frame(&mut reader, 10).await.unwrap(), None);
    }
}
