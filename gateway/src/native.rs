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

use bytes::BytesMut;
use haberci_kit::shutdown::Shutdown;
use haberci_wire::{ClientFrame, ErrorCode, Frame, FrameDecoder, ServerFrame};
use quinn::VarInt;

use crate::session::{Output, Session};
use crate::transport::{Realtime, Revocable, Wake, next, now, unserved};

/// How long the Closing frame gets to reach the client before the connection is closed.
pub const CLOSE_LINGER: Duration = Duration::from_secs(2);
/// Largest chunk read from the stream at once.
const READ_CHUNK: usize = 64 * 1024;

pub async fn serve_connection(
    connection: quinn::Connection,
    realtime: Realtime,
    shutdown: Shutdown,
) {
    let Realtime {
        keys,
        session: config,
        revocations,
    } = realtime;
    let mut revocable = Revocable::default();
    let peer = connection.remote_address();
    let mut session = Session::new(config, now());
    let accepted = tokio::select! {
        _ = shutdown.cancelled() => {
            close(&connection, ErrorCode::ServerDraining);
            return;
        }
        accepted = tokio::time::timeout(config.hello_timeout, connection.accept_bi()) => accepted,
    };
    let (mut send, mut recv) = match accepted {
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
    let max_frame = config.max_frame_size as usize;
    let mut decoder = FrameDecoder::new(max_frame);
    let mut outbound = BytesMut::new();
    let mut draining = false;
    loop {
        // Watch for revocation before Welcome is written, so no revocation announced after the
        // client saw Welcome can be missed.
        revocable.update(&session, &revocations);
        // Flush what the session produced.
        let mut close_with = None;
        while let Some(output) = session.poll_output() {
            match output {
                Output::Frame(frame) => encode(&frame, max_frame, &mut outbound),
                Output::Relay(relay) => {
                    if let Some(frame) = unserved(&relay) {
                        encode(&frame, max_frame, &mut outbound);
                    }
                }
                Output::Close(code) => close_with = Some(code),
            }
        }
        if !outbound.is_empty() {
            if send.write_all(&outbound).await.is_err() {
                return;
            }
            outbound.clear();
        }
        if let Some(code) = close_with {
            // Let the Closing frame arrive before the connection (and its stream data) goes.
            let _ = send.finish();
            let _ = tokio::time::timeout(CLOSE_LINGER, send.stopped()).await;
            close(&connection, code);
            return;
        }

        let input = recv.read_chunk(READ_CHUNK, true);
        let chunk = match next(&mut session, &revocable, &shutdown, &mut draining, input).await {
            Wake::Input(chunk) => chunk,
            Wake::Handled => continue,
        };
        match chunk {
            Ok(Some(chunk)) => {
                let mut bytes = chunk.bytes;
                let verifier = keys.current();
                loop {
                    match decoder.decode(&mut bytes) {
                        Ok(Some(body)) => {
                            session.handle_frame(ClientFrame::decode(body), &verifier, now())
                        }
                        Ok(None) => break,
                        Err(err) => {
                            session.handle_frame(Err(err), &verifier, now());
                            break;
                        }
                    }
                }
            }
            Ok(None) => {
                // The client finished its stream: a clean goodbye.
                connection.close(VarInt::from_u32(0), b"");
                return;
            }
            Err(err) => {
                tracing::debug!(%peer, %err, "native stream ended");
                return;
            }
        }
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
