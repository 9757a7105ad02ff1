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

use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use bytes::BytesMut;
use haberci_kit::shutdown::Shutdown;
use haberci_wire::{ClientFrame, ErrorCode, ErrorFrame, Frame, FrameDecoder, ServerFrame};
use quinn::VarInt;

use crate::auth::TokenKeys;
use crate::session::{Now, Output, Relay, Session, SessionConfig};

/// How long the Closing frame gets to reach the client before the connection is closed.
pub const CLOSE_LINGER: Duration = Duration::from_secs(2);
/// Largest chunk read from the stream at once.
const READ_CHUNK: usize = 64 * 1024;

pub fn now() -> Now {
    Now {
        instant: Instant::now(),
        unix_ms: SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
            .unwrap_or(0),
    }
}

pub async fn serve_connection(
    connection: quinn::Connection,
    keys: Arc<TokenKeys>,
    config: SessionConfig,
    shutdown: Shutdown,
) {
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

        let deadline = session.next_timeout();
        tokio::select! {
            _ = shutdown.cancelled(), if !draining => {
                draining = true;
                session.drain();
            }
            _ = sleep_until(deadline) => session.handle_timeout(now()),
            chunk = recv.read_chunk(READ_CHUNK, true) => match chunk {
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
                    connection.close(VarInt::from_u64(haberci_wire::QUIC_NO_ERROR).unwrap_or(VarInt::from_u32(0)), b"");
                    return;
                }
                Err(err) => {
                    tracing::debug!(%peer, %err, "native stream ended");
                    return;
                }
            },
        }
    }
}

/// What the client hears about relay work while the relay is not built (#6).
fn unserved(relay: &Relay) -> Option<ServerFrame> {
    let client_msg_id = match relay {
        Relay::Send(_, send) => Some(send.client_msg_id),
        Relay::Ack(..) | Relay::Read(..) => None,
        Relay::Opened { .. } | Relay::Typing(..) | Relay::PresenceWatch(..) => return None,
    };
    Some(ServerFrame::Error(ErrorFrame {
        code: ErrorCode::Unavailable,
        message: "messaging is not served by this gateway yet".into(),
        client_msg_id,
    }))
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

async fn sleep_until(deadline: Option<Instant>) {
    match deadline {
        Some(at) => tokio::time::sleep_until(tokio::time::Instant::from_std(at)).await,
        None => std::future::pending().await,
    }
}
