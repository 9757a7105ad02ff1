//! Native QUIC (ALPN `haberci/1`): one client-opened bidirectional stream of varint
//! length-delimited frames. The server closes the connection with QUIC application code =
//! protocol code; a client closing normally uses code 0.

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::{BufMut, Bytes, BytesMut};
use haberci_wire::{ErrorCode, Frame, FrameDecoder, ServerFrame, WireError};
use quinn::{ConnectionError, ReadError, VarInt};

use crate::error::{ConnectError, Disconnect};

/// Largest chunk read from the stream at once.
const READ_CHUNK: usize = 64 * 1024;
/// After the server finishes its stream, how long its connection close may take to arrive
/// (the gateway lingers up to 2 s for the Closing frame to be read first).
const CLOSE_REASON_WAIT: Duration = Duration::from_secs(3);
/// The QUIC idle timeout this client offers (the lower of both ends' applies).
const QUIC_IDLE_TIMEOUT_MS: u32 = 60_000;
/// How long closing waits for the close to reach the server (an owned endpoint only).
const CLOSE_DRAIN_WAIT: Duration = Duration::from_secs(1);

/// `host:port` → (host, port). IPv6 literals come bracketed: `[::1]:4433`.
pub(crate) fn split_host_port(addr: &str) -> Result<(&str, u16), ConnectError> {
    let bad = || ConnectError::Config(format!("QUIC address {addr:?} is not host:port"));
    let (host, port) = addr.rsplit_once(':').ok_or_else(bad)?;
    let port = port.parse().map_err(|_| bad())?;
    let host = host.trim_start_matches('[').trim_end_matches(']');
    if host.is_empty() {
        return Err(bad());
    }
    Ok((host, port))
}

pub(crate) async fn connect(
    addr: &str,
    server_name: &str,
    tls: rustls::ClientConfig,
    dial_with: Dial,
) -> Result<(Sink, Stream), ConnectError> {
    let (host, port) = split_host_port(addr)?;
    let dialed = dial(host, port, server_name, tls, dial_with).await?;
    // The stream exists for the server once Hello is written on it.
    let (send, recv) = dialed
        .connection
        .open_bi()
        .await
        .map_err(|err| ConnectError::transport("cannot open the QUIC stream", err))?;
    let (sink, mut stream) = dialed.into_halves(send, recv);
    // Native QUIC: the server may send typing and presence as bare datagrams (one frame body
    // each). WebTransport reads its own datagrams (they carry an HTTP/3 header).
    stream.native_datagrams = true;
    Ok((sink, stream))
}

/// A QUIC connection, handshake done, and the endpoint it lives on.
pub(crate) struct Dialed {
    pub(crate) connection: quinn::Connection,
    pub(crate) endpoint: quinn::Endpoint,
    /// The endpoint was bound for this connection alone.
    pub(crate) owned: bool,
}

impl Dialed {
    /// The two halves over the connection's frame stream (`send`, `recv`).
    pub(crate) fn into_halves(
        self,
        send: quinn::SendStream,
        recv: quinn::RecvStream,
    ) -> (Sink, Stream) {
        let sink = Sink {
            send,
            connection: self.connection.clone(),
            owned_endpoint: self.owned.then(|| self.endpoint.clone()),
            buf: BytesMut::new(),
        };
        let stream = Stream {
            recv,
            connection: self.connection,
            _endpoint: self.endpoint,
            decoder: FrameDecoder::new(haberci_wire::DEFAULT_MAX_FRAME_SIZE),
            ready: VecDeque::new(),
            finished: false,
            ended: None,
            native_datagrams: false,
        };
        (sink, stream)
    }
}

/// What [`dial`] takes from the client's configuration.
pub(crate) struct Dial {
    /// A UDP socket shared with other connections, if any.
    pub shared_endpoint: Option<quinn::Endpoint>,
    pub keep_alive: Option<Duration>,
}

impl Dial {
    pub(crate) fn of(config: &crate::ClientConfig) -> Dial {
        Dial {
            shared_endpoint: config.quic_endpoint.clone(),
            keep_alive: config.quic_keep_alive,
        }
    }
}

/// Resolves `host`, binds a UDP socket unless one is shared, and completes the QUIC
/// handshake (ALPN as `tls` offers it). Shared by native QUIC and WebTransport.
pub(crate) async fn dial(
    host: &str,
    port: u16,
    server_name: &str,
    tls: rustls::ClientConfig,
    Dial {
        shared_endpoint,
        keep_alive,
    }: Dial,
) -> Result<Dialed, ConnectError> {
    let target: SocketAddr = tokio::net::lookup_host((host, port))
        .await
        .map_err(|err| ConnectError::transport("cannot resolve the QUIC address", err))?
        .next()
        .ok_or_else(|| ConnectError::Config(format!("{host}:{port} resolves to no address")))?;
    let crypto = quinn::crypto::rustls::QuicClientConfig::try_from(tls)
        .map_err(|err| ConnectError::Config(format!("TLS settings unusable for QUIC: {err}")))?;
    let mut client_config = quinn::ClientConfig::new(Arc::new(crypto));
    let mut transport = quinn::TransportConfig::default();
    // quinn's default (30 s) would leave 5 s past the 25 s ping; the server's is 60 s and the
    // lower of the two applies.
    transport.max_idle_timeout(Some(VarInt::from_u32(QUIC_IDLE_TIMEOUT_MS).into()));
    transport.keep_alive_interval(keep_alive);
    client_config.transport_config(Arc::new(transport));
    let (endpoint, owned) = match shared_endpoint {
        Some(endpoint) => (endpoint, false),
        None => {
            let bind: SocketAddr = if target.is_ipv6() {
                (std::net::Ipv6Addr::UNSPECIFIED, 0).into()
            } else {
                (std::net::Ipv4Addr::UNSPECIFIED, 0).into()
            };
            let endpoint = quinn::Endpoint::client(bind)
                .map_err(|err| ConnectError::transport("cannot bind a UDP socket", err))?;
            (endpoint, true)
        }
    };
    let connection = endpoint
        .connect_with(client_config, target, server_name)
        .map_err(|err| ConnectError::transport("cannot start the QUIC handshake", err))?
        .await
        .map_err(|err| ConnectError::transport("QUIC handshake failed", err))?;
    Ok(Dialed {
        connection,
        endpoint,
        owned,
    })
}

pub(crate) struct Sink {
    send: quinn::SendStream,
    connection: quinn::Connection,
    /// Set when this connection bound its own socket: closing waits for it to go idle, so
    /// the CONNECTION_CLOSE leaves before the socket does.
    owned_endpoint: Option<quinn::Endpoint>,
    buf: BytesMut,
}

impl Sink {
    pub(crate) async fn send_body(&mut self, body: Bytes) -> Result<(), Disconnect> {
        self.buf.clear();
        put_varint(&mut self.buf, body.len() as u64);
        let prefix = self.buf.split().freeze();
        self.send
            .write_all_chunks(&mut [prefix, body])
            .await
            .map_err(|err| match err {
                quinn::WriteError::ConnectionLost(err) => disconnect_from(err),
                other => Disconnect::Transport(other.to_string()),
            })
    }

    pub(crate) async fn close(mut self) {
        let _ = self.send.finish();
        // Code 0 (`haberci_wire::QUIC_NO_ERROR`): a normal close.
        self.connection.close(VarInt::from_u32(0), b"");
        if let Some(endpoint) = self.owned_endpoint {
            let _ = tokio::time::timeout(CLOSE_DRAIN_WAIT, endpoint.wait_idle()).await;
        }
    }
}

pub(crate) struct Stream {
    recv: quinn::RecvStream,
    connection: quinn::Connection,
    // Keeps the socket's driver alive for as long as this half reads.
    _endpoint: quinn::Endpoint,
    decoder: FrameDecoder,
    /// Frames decoded from the last chunk, not yet returned.
    ready: VecDeque<ServerFrame>,
    /// The server finished its stream; waiting for its connection close.
    finished: bool,
    /// Why no more frames will come, once known (frames in `ready` still go first).
    ended: Option<Disconnect>,
    /// Read the connection's datagrams as frames too (native QUIC only).
    native_datagrams: bool,
}

impl Stream {
    pub(crate) fn set_max_frame_size(&mut self, max: usize) {
        // Only between frames (the decoder is empty right after Welcome was returned).
        if self.decoder.buffered() == 0 {
            self.decoder = FrameDecoder::new(max);
        }
    }

    /// Cancel-safe: state lives in `self`; `read_chunk` and `closed` are cancel-safe.
    pub(crate) async fn recv_frame(&mut self) -> Result<ServerFrame, Disconnect> {
        loop {
            if let Some(frame) = self.ready.pop_front() {
                return Ok(frame);
            }
            if let Some(reason) = &self.ended {
                return Err(reason.clone());
            }
            if self.finished {
                // The gateway finishes its stream after `Closing`, then closes the
                // connection with the code: wait for it to learn the code.
                let reason = tokio::time::timeout(CLOSE_REASON_WAIT, self.connection.closed())
                    .await
                    .map_or_else(
                        |_| Disconnect::Server {
                            code: None,
                            reason: "stream finished".into(),
                        },
                        disconnect_from,
                    );
                self.ended = Some(reason);
                continue;
            }
            let read = tokio::select! {
                read = self.recv.read_chunk(READ_CHUNK, true) => read,
                datagram = self.connection.read_datagram(), if self.native_datagrams => {
                    match datagram {
                        Ok(payload) => {
                            // Ephemeral: one that does not decode is dropped, not fatal.
                            match haberci_wire::datagram::decode::<ServerFrame>(payload, self.decoder.max_frame_size()) {
                                Ok(frame) => return Ok(frame),
                                Err(err) => tracing::debug!(%err, "undecodable datagram dropped"),
                            }
                            continue;
                        }
                        // The connection is gone: the stream read reports how.
                        Err(_) => self.recv.read_chunk(READ_CHUNK, true).await,
                    }
                }
            };
            match read {
                Ok(Some(chunk)) => self.decode(chunk.bytes),
                Ok(None) => {
                    if let Err(err) = self.decoder.finish() {
                        self.ended = Some(Disconnect::Protocol(err));
                    } else {
                        self.finished = true;
                    }
                }
                Err(ReadError::ConnectionLost(err)) => self.ended = Some(disconnect_from(err)),
                Err(err) => self.ended = Some(Disconnect::Transport(err.to_string())),
            }
        }
    }

    fn decode(&mut self, mut bytes: Bytes) {
        loop {
            match self.decoder.decode(&mut bytes) {
                Ok(Some(body)) => match ServerFrame::decode(body) {
                    Ok(frame) => self.ready.push_back(frame),
                    Err(WireError::UnknownFrameKind) => {
                        tracing::debug!("unknown server frame kind skipped");
                    }
                    Err(err) => {
                        self.ended = Some(Disconnect::Protocol(err));
                        return;
                    }
                },
                Ok(None) => return,
                Err(err) => {
                    self.ended = Some(Disconnect::Protocol(err));
                    return;
                }
            }
        }
    }
}

/// How a QUIC connection ended, in the protocol's terms.
pub(crate) fn disconnect_from(err: ConnectionError) -> Disconnect {
    match err {
        ConnectionError::ApplicationClosed(close) => {
            let code = close.error_code.into_inner();
            Disconnect::Server {
                code: if code == haberci_wire::QUIC_NO_ERROR {
                    None
                } else {
                    ErrorCode::from_quic_code(code)
                },
                reason: String::from_utf8_lossy(&close.reason).into_owned(),
            }
        }
        ConnectionError::LocallyClosed => Disconnect::Local,
        other => Disconnect::Transport(other.to_string()),
    }
}

/// Protobuf's base-128 varint, as the length prefix of a stream frame.
pub(crate) fn put_varint(buf: &mut BytesMut, mut value: u64) {
    while value >= 0x80 {
        buf.put_u8((value as u8 & 0x7f) | 0x80);
        value >>= 7;
    }
    buf.put_u8(value as u8);
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    #[test]
    fn addresses_split_into_host_and_port() {
        assert_eq!(
            split_host_port("localhost:4433").unwrap(),
            ("localhost", 4433)
        );
        assert_eq!(split_host_port("[::1]:4433").unwrap(), ("::1", 4433));
        assert_eq!(split_host_port("127.0.0.1:1").unwrap(), ("127.0.0.1", 1));
        for bad in ["localhost", "localhost:http", ":4433", "[]:1"] {
            assert!(
                matches!(split_host_port(bad), Err(ConnectError::Config(_))),
                "{bad}"
            );
        }
    }

    #[test]
    fn the_length_prefix_is_the_wire_crates_varint() {
        // Whatever the length, prefix + body decodes back through the wire crate's decoder.
        for len in [1usize, 127, 128, 300, 16_383, 16_384, 65_536] {
            let mut buf = BytesMut::new();
            put_varint(&mut buf, len as u64);
            buf.extend_from_slice(&vec![7u8; len]);
            let mut bytes = buf.freeze();
            let mut decoder = FrameDecoder::new(1 << 20);
            let body = decoder.decode(&mut bytes).unwrap().unwrap();
            assert_eq!(body.len(), len);
            assert!(bytes.is_empty());
        }
    }
}
