//! The native QUIC transport (ALPN `haberci/1`): one client-opened bidirectional stream of
//! varint length-delimited frames, and datagrams (one frame body each) for ephemeral frames:
//! typing in, typing and presence out (on the stream when the client takes no datagrams).
//!
//! This adapter only moves bytes: it decodes frames into the session, writes the session's
//! frames back, sleeps until the session's next deadline, and closes the connection with the
//! code the session chose (QUIC application code = protocol code).

use std::time::Duration;

use bytes::{Bytes, BytesMut};
use haberci_kit::shutdown::Shutdown;
use haberci_wire::{ClientFrame, ErrorCode, Frame, FrameDecoder, ServerFrame, WireError};
use quinn::VarInt;

use crate::transport::{Link, Realtime, drive};

/// How long the Closing frame gets to reach the client before the connection is closed.
pub const CLOSE_LINGER: Duration = Duration::from_secs(2);
/// Largest chunk read from the stream at once.
const READ_CHUNK: usize = 64 * 1024;

pub async fn serve_connection(
    connection: quinn::Connection,
    realtime: Realtime,
    shutdown: Shutdown,
) {
    let peer = connection.remote_address();
    let accepted = tokio::select! {
        _ = shutdown.cancelled() => {
            close(&connection, ErrorCode::ServerDraining);
            return;
        }
        accepted = tokio::time::timeout(realtime.session.hello_timeout, connection.accept_bi()) => accepted,
    };
    let (send, recv) = match accepted {
        Ok(Ok(pair)) => pair,
        Ok(Err(err)) => {
            tracing::debug!(%peer, %err, "native connection ended before its stream");
            return;
        }
        Err(_) => {
            close(&connection, ErrorCode::IdleTimeout);
            return;
        }
    };
    let max_frame = realtime.session.max_frame_size as usize;
    let link = NativeLink {
        connection,
        send,
        recv,
        decoder: FrameDecoder::new(max_frame),
        buffered: Bytes::new(),
        max_frame,
        outbound: BytesMut::new(),
        broken: false,
        hello_seen: false,
    };
    drive(link, realtime, shutdown).await;
}

/// One native connection: frames on its bidirectional stream.
struct NativeLink {
    connection: quinn::Connection,
    send: quinn::SendStream,
    recv: quinn::RecvStream,
    decoder: FrameDecoder,
    /// Bytes read but not decoded yet.
    buffered: Bytes,
    max_frame: usize,
    outbound: BytesMut,
    /// The stream is out of sync after a framing error: nothing more is decoded.
    broken: bool,
    /// A frame came on the stream (the first one is `Hello`).
    hello_seen: bool,
}

impl NativeLink {
    /// Sends an ephemeral frame as a datagram; `false` when it must go on the stream (the
    /// client takes no datagrams, or it does not fit in one).
    fn datagram(&self, frame: &ServerFrame) -> bool {
        let Ok(payload) = haberci_wire::datagram::encode(frame, self.max_frame) else {
            return false;
        };
        match self.connection.send_datagram(payload) {
            Ok(()) => true,
            Err(quinn::SendDatagramError::ConnectionLost(_)) => true,
            Err(_) => false,
        }
    }
}

impl Link for NativeLink {
    async fn recv(&mut self) -> Option<Result<ClientFrame, WireError>> {
        loop {
            if !self.broken {
                match self.decoder.decode(&mut self.buffered) {
                    Ok(Some(body)) => {
                        self.hello_seen = true;
                        return Some(ClientFrame::decode(body));
                    }
                    Ok(None) => {}
                    Err(err) => {
                        self.broken = true;
                        return Some(Err(err));
                    }
                }
            }
            // Cancel-safe: quinn's read_chunk and read_datagram lose nothing when dropped before
            // they complete.
            let read = tokio::select! {
                read = self.recv.read_chunk(READ_CHUNK, true) => read,
                datagram = self.connection.read_datagram() => match datagram {
                    // Datagrams may overtake the stream: one before Hello is dropped (it is
                    // ephemeral), not taken as "a frame before Hello".
                    Ok(_) if !self.hello_seen => continue,
                    Ok(payload) => {
                        let frame = haberci_wire::datagram::decode::<ClientFrame>(payload, self.max_frame);
                        if let Err(err) = &frame {
                            // docs/PROTOCOL.md: a datagram that is not an ephemeral frame is bad_frame.
                            tracing::debug!(peer = %self.connection.remote_address(), %err, "bad datagram");
                        }
                        return Some(frame);
                    }
                    // The connection is gone; the stream read says so too.
                    Err(_) => self.recv.read_chunk(READ_CHUNK, true).await,
                },
            };
            match read {
                Ok(Some(chunk)) => self.buffered = chunk.bytes,
                Ok(None) => {
                    // The client finished its stream: a clean goodbye.
                    self.connection.close(VarInt::from_u32(0), b"");
                    return None;
                }
                Err(err) => {
                    tracing::debug!(peer = %self.connection.remote_address(), %err, "native stream ended");
                    return None;
                }
            }
        }
    }

    async fn send(&mut self, frames: &[ServerFrame]) -> bool {
        for frame in frames {
            if !(frame.may_travel_as_datagram() && self.datagram(frame)) {
                encode(frame, self.max_frame, &mut self.outbound);
            }
        }
        if self.outbound.is_empty() {
            return true;
        }
        let ok = self.send.write_all(&self.outbound).await.is_ok();
        self.outbound.clear();
        ok
    }

    async fn close(mut self, code: ErrorCode) {
        // Let the Closing frame arrive before the connection (and its stream data) goes.
        let _ = self.send.finish();
        let _ = tokio::time::timeout(CLOSE_LINGER, self.send.stopped()).await;
        close(&self.connection, code);
    }
}
fn encode(frame: &ServerFrame, max_frame: usize, outbound: &mut BytesMut) {
    if let Err(err) = haberci_wire::encode_delimited(frame, max_frame, outbound) {
        // Our own frames always fit; a failure here is a bug, not the peer's doing.
        tracing::error!(%err, kind = frame.kind(), "cannot encode a server frame");
    }
}

fn close(connection: &quinn::Connection, code: ErrorCode) {
    let code_var = VarInt::from_u64(code.quic_code()).unwrap_or(VarInt::from_u32(0));
    connection.close(code_var, code.name().as_bytes());
}
