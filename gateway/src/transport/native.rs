//! The native QUIC transport (ALPN `haberci/1`): one client-opened bidirectional stream of
//! varint length-delimited frames, and datagrams (one frame body each) for ephemeral frames:
//! typing in, typing and presence out (on the stream when the client takes no datagrams).
//!
//! This adapter only moves bytes ([`super::link`] frames them): it reads the stream and
//! datagrams, writes back, and closes the connection with the code the session chose (QUIC
//! application code = protocol code).

use std::net::SocketAddr;
use std::time::Duration;

use bytes::Bytes;
use haberci_kit::shutdown::Shutdown;
use haberci_wire::{ErrorCode, ServerFrame};
use quinn::VarInt;

use super::Realtime;
use super::drive::drive;
use super::link::{Inbound, Pipe, StreamLink};
use crate::metrics::Transport;

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
    let pipe = NativePipe {
        connection,
        send,
        recv,
    };
    drive(
        StreamLink::new(pipe, max_frame),
        Transport::Quic,
        realtime,
        shutdown,
    )
    .await;
}

/// One native connection: its bidirectional stream and its datagrams.
struct NativePipe {
    connection: quinn::Connection,
    send: quinn::SendStream,
    recv: quinn::RecvStream,
}

impl NativePipe {
    fn stream_read(
        read: Result<Option<quinn::Chunk>, quinn::ReadError>,
        peer: SocketAddr,
    ) -> Inbound {
        match read {
            Ok(Some(chunk)) => Inbound::Stream(chunk.bytes),
            Ok(None) => Inbound::Finished,
            Err(err) => {
                tracing::debug!(%peer, %err, "native stream ended");
                Inbound::Failed
            }
        }
    }
}

impl Pipe for NativePipe {
    async fn read(&mut self) -> Inbound {
        let peer = self.connection.remote_address();
        // Cancel-safe: quinn's read_chunk and read_datagram lose nothing when dropped before
        // they complete.
        tokio::select! {
            read = self.recv.read_chunk(READ_CHUNK, true) => Self::stream_read(read, peer),
            datagram = self.connection.read_datagram() => match datagram {
                Ok(payload) => Inbound::Datagram(payload),
                // The connection is gone; the stream read says so too.
                Err(_) => Self::stream_read(self.recv.read_chunk(READ_CHUNK, true).await, peer),
            },
        }
    }

    async fn write(&mut self, bytes: Bytes) -> bool {
        self.send.write_all(&bytes).await.is_ok()
    }

    fn datagram(&mut self, frame: &ServerFrame, max_frame: usize) -> bool {
        let Ok(payload) = haberci_wire::datagram::encode(frame, max_frame) else {
            return false;
        };
        match self.connection.send_datagram(payload) {
            Ok(()) => true,
            Err(quinn::SendDatagramError::ConnectionLost(_)) => true,
            Err(_) => false,
        }
    }

    fn finished(&mut self) {
        self.connection.close(VarInt::from_u32(0), b"");
    }

    async fn close(mut self, code: ErrorCode) {
        // Let the Closing frame arrive before the connection (and its stream data) goes.
        let _ = self.send.finish();
        let _ = tokio::time::timeout(CLOSE_LINGER, self.send.stopped()).await;
        close(&self.connection, code);
    }

    fn peer(&self) -> SocketAddr {
        self.connection.remote_address()
    }
}

fn close(connection: &quinn::Connection, code: ErrorCode) {
    let code_var = VarInt::from_u64(code.quic_code()).unwrap_or(VarInt::from_u32(0));
    connection.close(code_var, code.name().as_bytes());
}
