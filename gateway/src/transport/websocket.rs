//! The WebSocket transport (`GET /v1/ws`, subprotocol `haberci.v1`, over TLS on TCP): one
//! binary message per frame, driven through the shared [`Session`] machine. A text message is
//! refused with `text_message_refused`; close codes are 4000 + the protocol code.
//!
//! Memory per idle connection is kept small: tungstenite's read buffer is 4 KiB instead of its
//! 128 KiB default, and nothing is buffered for writing.
//!
//! A client that stops reading is found with WebSocket pings: the kernel takes megabytes
//! before a write blocks, so the write timeout alone would let such a client hold them for
//! ever. After frames are written, a Ping follows (at most one every half write timeout); a
//! client that reads answers it (every WebSocket stack does, browsers included), and one whose
//! Pong has not come within the write timeout is closed as `slow_consumer`.
//!
//! [`Session`]: haberci_session::Session

use std::time::{Duration, Instant};

use axum::extract::ws::{CloseFrame, Message, WebSocket};
use haberci_kit::shutdown::Shutdown;
use haberci_wire::websocket::MessageType;
use haberci_wire::{ClientFrame, ErrorCode, ServerFrame, WireError};

use super::Realtime;
use super::drive::{Link, drive, sleep_until};
use crate::metrics::Transport;

/// How long the answer to a client's Close, or our own Close, gets to leave.
pub const CLOSE_REPLY_WAIT: Duration = Duration::from_secs(1);
/// tungstenite's read buffer per connection.
pub const READ_BUFFER_SIZE: usize = 4 * 1024;

/// Runs a realtime session on an upgraded WebSocket (`edge::router` upgrades it).
pub async fn serve(socket: WebSocket, realtime: Realtime, shutdown: Shutdown) {
    let max = realtime.session.max_frame_size as usize;
    let write_timeout = realtime.session.write_timeout;
    drive(
        WebSocketLink {
            socket,
            max,
            probe: Probe::new(write_timeout),
        },
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
    probe: Probe,
}

/// Whether the client still takes bytes: a Ping after written frames, and its Pong.
#[derive(Debug)]
struct Probe {
    /// A Pong later than this after a Ping: the client stopped reading.
    timeout: Duration,
    /// The Ping in flight: its payload and when it left.
    outstanding: Option<(u64, Instant)>,
    /// When the last Pong came (`None`: none yet, so the first frames are probed at once).
    answered: Option<Instant>,
    /// Frames were written since the last Ping, which was too recent to follow them at once.
    unprobed: bool,
    sent: u64,
    stalled: bool,
}

/// What a [`Probe`] deadline means.
#[derive(Debug, PartialEq, Eq)]
enum Due {
    /// The Ping in flight went unanswered: the client stopped reading.
    Stalled,
    /// Frames written a while ago are not probed yet: send this Ping.
    Ping(u64),
}

impl Probe {
    fn new(timeout: Duration) -> Probe {
        Probe {
            timeout,
            outstanding: None,
            answered: None,
            unprobed: false,
            sent: 0,
            stalled: false,
        }
    }

    /// After frames were written: the payload of a Ping to send now, if one is due (at most
    /// one in flight, and one every half timeout; later frames wait for [`Probe::deadline`]).
    fn after_write(&mut self, now: Instant) -> Option<u64> {
        if self.outstanding.is_some() {
            return None;
        }
        if self.answered.is_some_and(|at| now < at + self.timeout / 2) {
            self.unprobed = true;
            return None;
        }
        Some(self.ping(now))
    }

    fn ping(&mut self, now: Instant) -> u64 {
        self.sent += 1;
        self.outstanding = Some((self.sent, now));
        self.unprobed = false;
        self.sent
    }

    fn pong(&mut self, payload: &[u8], now: Instant) {
        if let Some((sent, _)) = self.outstanding
            && payload == sent.to_be_bytes()
        {
            self.outstanding = None;
            self.answered = Some(now);
        }
    }

    /// When [`Probe::due`] has something to say.
    fn deadline(&self) -> Option<Instant> {
        match (self.outstanding, self.unprobed, self.answered) {
            (Some((_, at)), _, _) => Some(at + self.timeout),
            (None, true, Some(at)) => Some(at + self.timeout / 2),
            _ => None,
        }
    }

    fn due(&mut self, now: Instant) -> Option<Due> {
        match self.outstanding {
            Some((_, at)) if now >= at + self.timeout => {
                self.stalled = true;
                Some(Due::Stalled)
            }
            Some(_) => None,
            None if self.deadline().is_some_and(|at| now >= at) => Some(Due::Ping(self.ping(now))),
            None => None,
        }
    }
}

impl Link for WebSocketLink {
    async fn recv(&mut self) -> Option<Result<ClientFrame, WireError>> {
        loop {
            let read = tokio::select! {
                read = self.socket.recv() => read,
                _ = sleep_until(self.probe.deadline()) => {
                    match self.probe.due(Instant::now()) {
                        Some(Due::Stalled) => return None,
                        Some(Due::Ping(ping)) => {
                            let payload = bytes::Bytes::copy_from_slice(&ping.to_be_bytes());
                            if self.socket.send(Message::Ping(payload)).await.is_err() {
                                return None;
                            }
                        }
                        None => {}
                    }
                    continue;
                }
            };
            let frame = match read {
                Some(Ok(Message::Binary(payload))) => {
                    haberci_wire::websocket::decode(MessageType::Binary, payload, self.max)
                }
                Some(Ok(Message::Text(text))) => haberci_wire::websocket::decode(
                    MessageType::Text,
                    bytes::Bytes::copy_from_slice(text.as_bytes()),
                    self.max,
                ),
                Some(Ok(Message::Pong(payload))) => {
                    self.probe.pong(&payload, Instant::now());
                    continue;
                }
                // tungstenite answers pings itself.
                Some(Ok(Message::Ping(_))) => continue,
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
        // After `Closing` only the close follows: nothing more to probe.
        let closing = frames.iter().any(|f| matches!(f, ServerFrame::Closing(_)));
        if let Some(ping) = (!closing)
            .then(|| self.probe.after_write(Instant::now()))
            .flatten()
        {
            let payload = bytes::Bytes::copy_from_slice(&ping.to_be_bytes());
            if self.socket.send(Message::Ping(payload)).await.is_err() {
                return false;
            }
        }
        true
    }

    async fn close(mut self, code: ErrorCode) {
        // A client that takes no bytes would hold this write for ever: it gets a while, then
        // the connection is dropped.
        let close = self.socket.send(Message::Close(Some(CloseFrame {
            code: code.websocket_close_code(),
            reason: code.name().into(),
        })));
        let _ = tokio::time::timeout(CLOSE_REPLY_WAIT, close).await;
    }

    fn stalled(&self) -> bool {
        self.probe.stalled
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_ping_follows_writes_at_most_every_half_timeout_and_is_due_within_the_timeout() {
        let t0 = Instant::now();
        let ms = Duration::from_millis;
        let mut probe = Probe::new(ms(1_000));
        assert_eq!(probe.deadline(), None, "nothing written, nothing to probe");
        assert_eq!(
            probe.after_write(t0),
            Some(1),
            "the first frames are probed"
        );
        assert_eq!(probe.after_write(t0 + ms(10)), None, "one Ping in flight");
        assert_eq!(probe.deadline(), Some(t0 + ms(1_000)));
        probe.pong(&7u64.to_be_bytes(), t0 + ms(20));
        assert!(probe.deadline().is_some(), "only its own Pong answers it");
        probe.pong(&1u64.to_be_bytes(), t0 + ms(20));
        assert_eq!(probe.deadline(), None);
        // Frames soon after an answer are probed half a timeout after it.
        assert_eq!(probe.after_write(t0 + ms(100)), None);
        assert_eq!(probe.deadline(), Some(t0 + ms(520)));
        assert_eq!(probe.due(t0 + ms(519)), None);
        assert_eq!(probe.due(t0 + ms(520)), Some(Due::Ping(2)));
        // Unanswered for the timeout: stalled.
        assert_eq!(probe.due(t0 + ms(1_519)), None);
        assert_eq!(probe.due(t0 + ms(1_520)), Some(Due::Stalled));
        assert!(probe.stalled);
    }
}
