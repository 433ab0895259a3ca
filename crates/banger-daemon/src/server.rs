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
/// Connections served at once; one more is told so and closed. The CLI
/// uses one per command, so this only bites a flood.
pub const MAX_CONNECTIONS: usize = 64;
/// A connection that sends no complete message for this long is closed.
pub const IDLE_TIMEOUT: Duration = Duration::from_secs(60);
/// Bytes of unfinished messages held across all connections: a flood of
/// partial lines costs at most this much memory.
pub const MAX_BUFFERED: usize = 16 << 20;

/// The bytes of partial messages that connections hold, together.
#[derive(Debug, Default)]
pub(crate) struct Buffered(std::sync::atomic::AtomicUsize);

impl Buffered {
    /// Takes `bytes` from the budget, or says there is no room.
    fn charge(&self, bytes: usize) -> bool {
        use std::sync::atomic::Ordering;
        self.0
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |held| {
                (held + bytes <= MAX_BUFFERED).then_some(held + bytes)
            })
            .is_ok()
    }

    fn release(&self, bytes: usize) {
        self.0.fetch_sub(bytes, std::sync::atomic::Ordering::SeqCst);
    }

    /// Bytes of partial messages held now.
    #[cfg(test)]
    pub(crate) fn held(&self) -> usize {
        self.0.load(std::sync::atomic::Ordering::SeqCst)
    }
}

pub async fn serve(listener: UnixListener, daemon: Arc<Daemon>) {
    let mut shutdown = daemon.shutdown_receiver();
    let (done_tx, mut done_rx) = mpsc::channel::<()>(1);
    let slots = Arc::new(tokio::sync::Semaphore::new(MAX_CONNECTIONS));
    let buffered = Arc::new(Buffered::default());
    loop {
        tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => {
                    let Ok(slot) = slots.clone().try_acquire_owned() else {
                        tokio::spawn(refuse(stream));
                        continue;
                    };
                    let daemon = daemon.clone();
                    let shutdown = daemon.shutdown_receiver();
                    let done = done_tx.clone();
                    let buffered = buffered.clone();
                    tokio::spawn(async move {
                        handle_connection(stream, daemon, shutdown, &buffered).await;
                        drop(slot);
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

/// Tells a connection over [`MAX_CONNECTIONS`] why it is closed.
async fn refuse(mut stream: UnixStream) {
    let text = error_line(
        ErrorKind::Unavailable,
        format!("bangerd is serving {MAX_CONNECTIONS} connections already: try again shortly"),
    );
    let _ = tokio::time::timeout(Duration::from_secs(1), stream.write_all(&text)).await;
}

/// A whole error response line, for a connection about to be closed.
fn error_line(kind: ErrorKind, message: String) -> Vec<u8> {
    let mut text = serde_json::to_vec(&Response::failure(
        Value::Null,
        RpcError::new(kind, message),
    ))
    .expect("an error response always encodes");
    text.push(b'\n');
    text
}

/// One newline-terminated message, or the news that it was too long (its
/// bytes are discarded up to the next newline, so the connection stays
/// usable), or that all connections together hold too much unfinished.
#[derive(Debug, PartialEq)]
pub(crate) enum Frame {
    Line(Vec<u8>),
    TooLong,
    Busy,
}

/// Releases what a message in progress took from the shared budget.
struct Charge<'a> {
    budget: &'a Buffered,
    bytes: usize,
}

impl Drop for Charge<'_> {
    fn drop(&mut self) {
        self.budget.release(self.bytes);
    }
}

pub(crate) async fn read_frame<R: AsyncBufRead + Unpin>(
    reader: &mut R,
    max: usize,
    budget: &Buffered,
) -> std::io::Result<Option<Frame>> {
    let mut line = Vec::new();
    let mut too_long = false;
    let mut charge = Charge { budget, bytes: 0 };
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
            } else if !found_newline && !budget.charge(chunk.len()) {
                return Ok(Some(Frame::Busy));
            } else {
                if !found_newline {
                    charge.bytes += chunk.len();
                }
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
    buffered: &Buffered,
) {
    let (read, mut write) = stream.into_split();
    let mut reader = BufReader::new(read);
    loop {
        let frame = tokio::time::timeout(
            IDLE_TIMEOUT,
            read_frame(&mut reader, MAX_MESSAGE_BYTES, buffered),
        );
        let response = tokio::select! {
            frame = frame => match frame {
                Err(_) => {
                    tracing::debug!("closing a connection idle for {IDLE_TIMEOUT:?}");
                    return;
                }
                Ok(frame) => match frame {
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
                Ok(Some(Frame::Busy)) => {
                    let text = error_line(
                        ErrorKind::Unavailable,
                        format!("bangerd holds {MAX_BUFFERED} bytes of unfinished requests: try again shortly"),
                    );
                    let _ = write.write_all(&text).await;
                    return;
                }
                Err(e) => {
                    tracing::debug!(error = %e, "connection read failed");
                    return;
                }
                },
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
        let budget = Buffered::default();
        assert_eq!(
            read_frame(&mut reader, 10, &budget).await.unwrap(),
            Some(Frame::Line(b"short".to_vec()))
        );
        assert_eq!(
            read_frame(&mut reader, 10, &budget).await.unwrap(),
            Some(Frame::TooLong)
        );
        assert_eq!(
            read_frame(&mut reader, 10, &budget).await.unwrap(),
            Some(Frame::Line(b"ok".to_vec()))
        );
        assert_eq!(read_frame(&mut reader, 10, &budget).await.unwrap(), None);
        assert_eq!(
            budget.0.load(std::sync::atomic::Ordering::SeqCst),
            0,
            "all released"
        );
    }

    #[tokio::test]
    async fn partial_messages_share_one_bounded_budget() {
        let budget = Buffered::default();
        // Another connection already holds all but 8 bytes.
        assert!(budget.charge(MAX_BUFFERED - 8));
        let input: &[u8] = b"0123456789abcdef";
        let mut reader = BufReader::with_capacity(4, input);
        assert_eq!(
            read_frame(&mut reader, MAX_MESSAGE_BYTES, &budget)
                .await
                .unwrap(),
            Some(Frame::Busy)
        );
        assert_eq!(
            budget.0.load(std::sync::atomic::Ordering::SeqCst),
            MAX_BUFFERED - 8,
            "the refused frame holds nothing"
        );
        budget.release(MAX_BUFFERED - 8);
        let mut reader = BufReader::with_capacity(4, &b"{\"a\":1}\n"[..]);
        assert_eq!(
            read_frame(&mut reader, MAX_MESSAGE_BYTES, &budget)
                .await
                .unwrap(),
            Some(Frame::Line(b"{\"a\":1}".to_vec()))
        );
    }
}
