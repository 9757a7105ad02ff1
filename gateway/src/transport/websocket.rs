//! The WebSocket transport (`GET /v1/ws`, subprotocol `haberci.v1`, over TLS on TCP): one
//! binary message per frame, driven through the shared [`Session`] machine. A text message is
//! refused with `text_message_refused`; close codes are 4000 + the protocol code.
//!
//! Memory per idle connection is kept small: tungstenite's read buffer is 4 KiB instead of its
//! 128 KiB default, and nothing is buffered for writing.

use axum::extract::ws::{CloseFrame, Message, WebSocket};
use haberci_kit::shutdown::Shutdown;
use haberci_wire::websocket::MessageType;
use haberci_wire::{ClientFrame, ErrorCode, ServerFrame, WireError};

use super::Realtime;
use super::drive::{Link, drive};
use crate::metrics::Transport;

/// How long the answer to a client's Close gets to leave.
pub const CLOSE_REPLY_WAIT: std::time::Duration = std::time::Duration::from_secs(1);
/// tungstenite's read buffer per connection.
pub const READ_BUFFER_SIZE: usize = 4 * 1024;

/// Runs a realtime session on an upgraded WebSocket (`edge::router` upgrades it).
pub async fn serve(socket: WebSocket, realtime: Realtime, shutdown: Shutdown) {
    let max = realtime.session.max_frame_size as usize;
    drive(
        WebSocketLink { socket, max },
        Transport::WebSocket,
        realtime,
        shutdown,
    )
    .await;
}

/// One WebSocket connection: a binary message per frame.
struct WebSocketLink {
    socket: WebSocket,
    max: usize,
}

impl Link for WebSocketLink {
    async fn recv(&mut self) -> Option<Result<ClientFrame, WireError>> {
        loop {
            let frame = match self.socket.recv().await {
                Some(Ok(Message::Binary(payload))) => {
                    haberci_wire::websocket::decode(MessageType::Binary, payload, self.max)
                }
                Some(Ok(Message::Text(text))) => haberci_wire::websocket::decode(
                    MessageType::Text,
                    bytes::Bytes::copy_from_slice(text.as_bytes()),
                    self.max,
                ),
                // tungstenite answers pings itself.
                Some(Ok(Message::Ping(_) | Message::Pong(_))) => continue,
                Some(Ok(Message::Close(_))) => {
                    // tungstenite has queued the answering Close (RFC 6455 5.5.1); reading on
                    // writes it out and then ends.
                    let _ = tokio::time::timeout(CLOSE_REPLY_WAIT, self.socket.recv()).await;
                    return None;
                }
                None => return None,
                Some(Err(err)) => return too_large(err, self.max).map(Err),
            };
            return Some(frame);
        }
    }

    async fn send(&mut self, frames: &[ServerFrame]) -> bool {
        for frame in frames {
            if let Some(message) = binary(frame, self.max) {
                if self.socket.send(message).await.is_err() {
                    return false;
                }
            }
        }
        true
    }

    async fn close(mut self, code: ErrorCode) {
        let _ = self
            .socket
            .send(Message::Close(Some(CloseFrame {
                code: code.websocket_close_code(),
                reason: code.name().into(),
            })))
            .await;
    }
}

/// A failed read that is the client's oversized message: tungstenite refuses a message, or a
/// frame header announcing one, above `max_message_size` (max + 1) before buffering it. That
/// is `frame_too_large`, answered with `Closing` and close code 4002; any other failure is
/// the end of the connection.
fn too_large(err: axum::Error, max: usize) -> Option<WireError> {
    use tungstenite::error::{CapacityError, Error};
    match err.into_inner().downcast_ref::<Error>() {
        Some(Error::Capacity(CapacityError::MessageTooLong { size, .. })) => {
            Some(WireError::FrameTooLarge {
                declared: *size as u64,
                max,
            })
        }
        other => {
            tracing::debug!(err = ?other, "websocket read failed");
            None
        }
    }
}

fn binary(frame: &ServerFrame, max: usize) -> Option<Message> {
    match haberci_wire::websocket::encode(frame, max) {
        Ok(bytes) => Some(Message::Binary(bytes)),
        Err(err) => {
            // Our own frames always fit; a failure here is a bug, not the peer's doing.
            tracing::error!(%err, kind = frame.kind(), code = ?ErrorCode::Internal, "cannot encode a server frame");
            None
        }
    }
}
