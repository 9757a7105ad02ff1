//! Transports, normalized at the edge: each one is a small module whose `connect` yields a
//! [`FrameSink`] half (frame bodies out) and a [`FrameStream`] half ([`ServerFrame`]s in), so
//! the rest of the client never sees QUIC streams or WebSocket messages.
//!
//! The sink takes frame *bodies*: the [`Session`](crate::Session) encodes each frame once,
//! against the server's max frame size, so an oversized frame is refused to its caller before
//! anything is queued. A transport only adds its framing (a varint length prefix on streams,
//! one binary message each on WebSocket).
//!
//! The halves are separate so that a writer task can block on flow control while the reader
//! keeps draining the server: a client that stops reading while it writes can deadlock
//! against a server doing the same.
//!
//! Adding a transport (WebTransport is next: the gateway's `/v1/rt` is being built): write
//! `webtransport.rs` with `connect(config) -> Result<(Sink, Stream), ConnectError>`, add a
//! variant to [`FrameSink`], [`FrameStream`] and `config::Transport`, and one arm to each
//! `match` below. Its stream half reads varint length-delimited frames exactly as
//! `quic::Stream` does; the session close code is the QUIC application code.

use bytes::Bytes;
use haberci_wire::ServerFrame;

use crate::config::{ClientConfig, Transport};
use crate::error::{ConnectError, Disconnect};

#[cfg(test)]
pub(crate) mod memory;
pub(crate) mod quic;
mod tls;
pub(crate) mod websocket;
// WebTransport: `mod webtransport;` goes here.

/// Frame bodies out, in order.
pub(crate) enum FrameSink {
    Quic(quic::Sink),
    WebSocket(websocket::Sink),
    /// Unit tests of the driver: frames through channels, on tokio's paused clock.
    #[cfg(test)]
    Memory(memory::Sink),
}

/// Server frames in.
pub(crate) enum FrameStream {
    // Boxed: the QUIC half carries its decoder and quinn handles inline.
    Quic(Box<quic::Stream>),
    WebSocket(websocket::Stream),
    #[cfg(test)]
    Memory(memory::Stream),
}

/// Opens the configured transport (TLS included), ready for `Hello`.
pub(crate) async fn connect(
    config: &ClientConfig,
) -> Result<(FrameSink, FrameStream), ConnectError> {
    let server_name = config
        .tls_server_name()
        .ok_or_else(|| ConnectError::Config("no TLS server name: set server_name".into()))?;
    let roots = tls::root_store(&config.roots)?;
    match &config.transport {
        Transport::Quic { addr } => {
            let tls = tls::client_config(roots, haberci_wire::ALPN, true)?;
            let (sink, stream) =
                quic::connect(addr, &server_name, tls, config.quic_endpoint.clone()).await?;
            Ok((FrameSink::Quic(sink), FrameStream::Quic(Box::new(stream))))
        }
        Transport::WebSocket { url } => {
            let tls = tls::client_config(roots, b"http/1.1", false)?;
            let (sink, stream) = websocket::connect(url, &server_name, tls).await?;
            Ok((FrameSink::WebSocket(sink), FrameStream::WebSocket(stream)))
        }
    }
}

impl FrameSink {
    /// Writes one frame body. Not cancel-safe: only the writer task calls it.
    pub(crate) async fn send_body(&mut self, body: Bytes) -> Result<(), Disconnect> {
        match self {
            FrameSink::Quic(sink) => sink.send_body(body).await,
            FrameSink::WebSocket(sink) => sink.send_body(body).await,
            #[cfg(test)]
            FrameSink::Memory(sink) => sink.send_body(body),
        }
    }

    /// Ends the connection normally (QUIC code 0, WebSocket 1000), after what was written.
    pub(crate) async fn close(self) {
        match self {
            FrameSink::Quic(sink) => sink.close().await,
            FrameSink::WebSocket(sink) => sink.close().await,
            #[cfg(test)]
            FrameSink::Memory(_) => {}
        }
    }
}

impl FrameStream {
    /// The next server frame, or why there will be none. Cancel-safe: the driver polls it in
    /// a `select!`. Server frame kinds this client does not know are skipped (PROTOCOL.md:
    /// servers add kinds compatibly).
    pub(crate) async fn recv_frame(&mut self) -> Result<ServerFrame, Disconnect> {
        match self {
            FrameStream::Quic(stream) => stream.recv_frame().await,
            FrameStream::WebSocket(stream) => stream.recv_frame().await,
            #[cfg(test)]
            FrameStream::Memory(stream) => stream.recv_frame().await,
        }
    }

    /// After `Welcome`: the frame limit the server announced (it binds both directions).
    pub(crate) fn set_max_frame_size(&mut self, max: usize) {
        match self {
            FrameStream::Quic(stream) => stream.set_max_frame_size(max),
            FrameStream::WebSocket(stream) => stream.set_max_frame_size(max),
            #[cfg(test)]
            FrameStream::Memory(_) => {}
        }
    }
}
