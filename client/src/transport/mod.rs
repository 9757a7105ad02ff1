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
//! Three transports: `quic` (native, ALPN `haberci/1`), `webtransport` (HTTP/3 CONNECT on
//! `/v1/rt`; the same stream framing as `quic`, whose connection and stream halves it reuses,
//! plus datagrams) and `websocket`. Adding one: a module with
//! `connect(..) -> Result<(Sink, Stream), ConnectError>`, a variant in [`FrameSink`],
//! [`FrameStream`] and `config::Transport`, and one arm in each `match` below.
//!
//! Ephemeral frames ([`Transmit::ephemeral`]: typing) go as datagrams where the transport has
//! them (WebTransport); everywhere else they are ordinary frames on the stream.

use bytes::Bytes;
use haberci_wire::ServerFrame;

use crate::config::{ClientConfig, Transport};
use crate::error::{ConnectError, Disconnect};
use crate::session::Transmit;

#[cfg(test)]
pub(crate) mod memory;
pub(crate) mod quic;
pub(crate) mod tls;
pub(crate) mod websocket;
pub(crate) mod webtransport;

/// Frame bodies out, in order.
pub(crate) enum FrameSink {
    Quic(quic::Sink),
    WebTransport(webtransport::Sink),
    WebSocket(websocket::Sink),
    /// Unit tests of the driver: frames through channels, on tokio's paused clock.
    #[cfg(test)]
    Memory(memory::Sink),
}

/// Server frames in.
pub(crate) enum FrameStream {
    // Boxed: the QUIC half carries its decoder and quinn handles inline.
    Quic(Box<quic::Stream>),
    WebTransport(Box<webtransport::Stream>),
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
            let tls = tls::client_config(roots, haberci_wire::ALPN, true, config.tickets.clone())?;
            let (sink, stream) =
                quic::connect(addr, &server_name, tls, quic::Dial::of(config)).await?;
            Ok((FrameSink::Quic(sink), FrameStream::Quic(Box::new(stream))))
        }
        Transport::WebTransport { url } => {
            let tls = tls::client_config(roots, b"h3", true, config.tickets.clone())?;
            let (sink, stream) =
                webtransport::connect(url, &server_name, tls, quic::Dial::of(config)).await?;
            Ok((
                FrameSink::WebTransport(sink),
                FrameStream::WebTransport(Box::new(stream)),
            ))
        }
        Transport::WebSocket { url } => {
            let tls = tls::client_config(roots, b"http/1.1", false, config.tickets.clone())?;
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
            FrameSink::WebTransport(sink) => sink.send_body(body).await,
            FrameSink::WebSocket(sink) => sink.send_body(body).await,
            #[cfg(test)]
            FrameSink::Memory(sink) => sink.send_body(body),
        }
    }

    /// Writes one frame: an ephemeral one as a datagram where the transport has them.
    pub(crate) async fn send(&mut self, transmit: Transmit) -> Result<(), Disconnect> {
        match self {
            FrameSink::WebTransport(sink) if transmit.ephemeral => {
                sink.send_ephemeral(transmit.body).await
            }
            _ => self.send_body(transmit.body).await,
        }
    }

    /// Ends the connection normally (QUIC code 0, WebSocket 1000), after what was written.
    pub(crate) async fn close(self) {
        match self {
            FrameSink::Quic(sink) => sink.close().await,
            FrameSink::WebTransport(sink) => sink.close().await,
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
            FrameStream::WebTransport(stream) => stream.recv_frame().await,
            FrameStream::WebSocket(stream) => stream.recv_frame().await,
            #[cfg(test)]
            FrameStream::Memory(stream) => stream.recv_frame().await,
        }
    }

    /// After `Welcome`: the frame limit the server announced (it binds both directions).
    pub(crate) fn set_max_frame_size(&mut self, max: usize) {
        match self {
            FrameStream::Quic(stream) => stream.set_max_frame_size(max),
            FrameStream::WebTransport(stream) => stream.set_max_frame_size(max),
            FrameStream::WebSocket(stream) => stream.set_max_frame_size(max),
            #[cfg(test)]
            FrameStream::Memory(_) => {}
        }
    }
}
