//! The native QUIC transport (ALPN `haberci/1`): one client-opened bidirectional stream of
//! varint length-delimited frames, driven through the shared [`Session`] machine.
//!
//! This adapter only moves bytes: it decodes frames into the session, writes the session's
//! frames back, sleeps until the session's next deadline, and closes the connection with the
//! code the session chose (QUIC application code = protocol code).
//!
//! Status (#6): the Redis relay is not built yet, so a `Send`, `Ack` or `Read` is answered with
//! `Error{unavailable}` (retryable; nothing is stored), and `Typing`, `PresenceWatch` and resume
//! are dropped.

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
}

impl Link for NativeLink {
    async fn recv(&mut self) -> Option<Result<ClientFrame, WireError>> {
        loop {
            if !self.broken {
                match self.decoder.decode(&mut self.buffered) {
                    Ok(Some(body)) => return Some(ClientFrame::decode(body)),
                    Ok(None) => {}
                    Err(err) => {
                        self.broken = true;
                        return Some(Err(err));
                    }
                }
            }
            // Cancel-safe: quinn's read_chunk loses nothing when dropped before it completes.
            match self.recv.read_chunk(READ_CHUNK, true).await {
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
            encode(frame, self.max_frame, &mut self.outbound);
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
