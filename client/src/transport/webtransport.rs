//! WebTransport (`https://host:port/v1/rt`, HTTP/3 with ALPN `h3`), opened as a browser opens
//! it: HTTP/3 SETTINGS enabling extended CONNECT, HTTP datagrams and WebTransport; an extended
//! `CONNECT` with `:protocol = webtransport`; then one client-opened bidirectional stream of
//! varint length-delimited frames (as native QUIC), and datagrams for ephemeral frames (typing
//! out; typing and presence in). docs/PROTOCOL.md, "Transports" and "Datagrams".
//!
//! Driven by hand on quinn, with web-transport-quinn's protocol encoding (`proto`), rather than
//! through its `Session`: `Session` closes the QUIC connection itself as soon as the CONNECT
//! stream ends, and quinn then reports that local close instead of the server's close code.
//! Here nothing closes the connection but the server or [`Sink::close`], so the code the
//! server closes with (its protocol code as the QUIC application code) is what the caller sees.
//! The server also writes `Closing` on the stream first, which the session reads either way.

use bytes::{Bytes, BytesMut};
use haberci_wire::{ServerFrame, WireError};
use quinn::VarInt;
use web_transport_quinn::proto;

use crate::error::{ConnectError, Disconnect};
use crate::transport::quic;

/// Largest datagram payload a server frame may carry here; larger is not a datagram we take.
const MAX_DATAGRAM: usize = 64 * 1024;

pub(crate) async fn connect(
    url: &str,
    server_name: &str,
    tls: rustls::ClientConfig,
    dial_with: quic::Dial,
) -> Result<(Sink, Stream), ConnectError> {
    let url = parse_url(url)?;
    let host = url
        .host_str()
        .ok_or_else(|| ConnectError::Config(format!("WebTransport URL {url} has no host")))?
        .trim_start_matches('[')
        .trim_end_matches(']')
        .to_owned();
    let port = url.port_or_known_default().unwrap_or(443);
    let dialed = quic::dial(&host, port, server_name, tls, dial_with).await?;
    let connection = dialed.connection.clone();
    let h3 = H3Streams::open(&connection, url).await?;
    let session_id = h3.session_id;

    // The session's stream: the WebTransport bidi stream header, then frames.
    let (mut send, recv) = connection
        .open_bi()
        .await
        .map_err(|err| ConnectError::transport("cannot open the WebTransport stream", err))?;
    let mut header = BytesMut::new();
    proto::Frame::WEBTRANSPORT.encode(&mut header);
    varint(session_id).encode(&mut header);
    send.write_all(&header)
        .await
        .map_err(|err| ConnectError::transport("cannot open the WebTransport stream", err))?;

    let (stream_sink, stream_stream) = dialed.into_halves(send, recv);
    // RFC 9297: a datagram starts with the CONNECT stream's quarter stream id.
    let mut datagram_header = BytesMut::new();
    varint(session_id / 4).encode(&mut datagram_header);
    Ok((
        Sink {
            stream: stream_sink,
            connection: connection.clone(),
            datagram_header: datagram_header.freeze(),
        },
        Stream {
            stream: stream_stream,
            connection,
            quarter_id: session_id / 4,
            welcomed: false,
            max_frame_size: haberci_wire::DEFAULT_MAX_FRAME_SIZE,
            _h3: h3,
        },
    ))
}

fn parse_url(text: &str) -> Result<url::Url, ConnectError> {
    let url = url::Url::parse(text)
        .map_err(|err| ConnectError::Config(format!("WebTransport URL {text:?}: {err}")))?;
    if url.scheme() != "https" {
        return Err(ConnectError::Config(format!(
            "WebTransport URL {text:?} must be https://"
        )));
    }
    Ok(url)
}

fn varint(value: u64) -> proto::VarInt {
    // Stream ids and their quarters are QUIC varints, so they always fit.
    proto::VarInt::from_u64(value).unwrap_or_default()
}

/// The HTTP/3 streams a session needs for its whole life: both control streams and the
/// CONNECT stream. Dropping one would end the session (a closed critical stream is an HTTP/3
/// connection error; the CONNECT stream ending ends the session).
struct H3Streams {
    _control: quinn::SendStream,
    _server_control: quinn::RecvStream,
    _connect: (quinn::SendStream, quinn::RecvStream),
    /// The CONNECT stream's id.
    session_id: u64,
}

impl H3Streams {
    /// SETTINGS both ways, then `CONNECT` → `200`.
    async fn open(connection: &quinn::Connection, url: url::Url) -> Result<Self, ConnectError> {
        let settings = |err: &dyn std::fmt::Display| {
            ConnectError::transport("HTTP/3 SETTINGS exchange failed", err.to_string())
        };
        let ours = async {
            let mut control = connection.open_uni().await.map_err(|e| settings(&e))?;
            let mut ours = proto::Settings::default();
            ours.enable_webtransport(1);
            ours.write(&mut control).await.map_err(|e| settings(&e))?;
            Ok::<_, ConnectError>(control)
        };
        let theirs = async {
            // The server's first unidirectional stream is its control stream (h3 opens it
            // first; QPACK streams, if any, follow).
            let mut control = connection.accept_uni().await.map_err(|e| settings(&e))?;
            let theirs = proto::Settings::read(&mut control)
                .await
                .map_err(|e| settings(&e))?;
            if theirs.supports_webtransport() == 0 {
                return Err(settings(&"the server does not offer WebTransport"));
            }
            Ok(control)
        };
        let (control, server_control) = futures::try_join!(ours, theirs)?;

        let connect_failed = |err: &dyn std::fmt::Display| {
            ConnectError::transport("WebTransport CONNECT failed", err.to_string())
        };
        let (mut send, mut recv) = connection.open_bi().await.map_err(|e| connect_failed(&e))?;
        proto::ConnectRequest::new(url)
            .write(&mut send)
            .await
            .map_err(|e| connect_failed(&e))?;
        match proto::ConnectResponse::read(&mut recv).await {
            Ok(response) if response.status == http_status_ok() => {}
            Ok(response) => {
                return Err(ConnectError::Upgrade {
                    status: response.status.as_u16(),
                });
            }
            Err(proto::ConnectError::WrongStatus(Some(status))) => {
                return Err(ConnectError::Upgrade {
                    status: status.as_u16(),
                });
            }
            Err(err) => return Err(connect_failed(&err)),
        }
        let session_id = VarInt::from(send.id()).into_inner();
        Ok(H3Streams {
            _control: control,
            _server_control: server_control,
            _connect: (send, recv),
            session_id,
        })
    }
}

fn http_status_ok() -> proto::http::StatusCode {
    proto::http::StatusCode::OK
}

pub(crate) struct Sink {
    stream: quic::Sink,
    connection: quinn::Connection,
    datagram_header: Bytes,
}

impl Sink {
    pub(crate) async fn send_body(&mut self, body: Bytes) -> Result<(), Disconnect> {
        self.stream.send_body(body).await
    }

    /// An ephemeral frame goes as one datagram when it fits; otherwise on the stream (a
    /// sender MAY always use the stream).
    pub(crate) async fn send_ephemeral(&mut self, body: Bytes) -> Result<(), Disconnect> {
        let len = self.datagram_header.len() + body.len();
        if self
            .connection
            .max_datagram_size()
            .is_some_and(|max| len <= max)
        {
            let mut datagram = BytesMut::with_capacity(len);
            datagram.extend_from_slice(&self.datagram_header);
            datagram.extend_from_slice(&body);
            match self.connection.send_datagram(datagram.freeze()) {
                Ok(()) => return Ok(()),
                Err(quinn::SendDatagramError::ConnectionLost(err)) => {
                    return Err(quic::disconnect_from(err));
                }
                // Too large after all, or datagrams turned off: the stream carries it.
                Err(err) => tracing::debug!(%err, "typing goes on the stream"),
            }
        }
        self.send_body(body).await
    }

    /// Finishing the stream and closing the connection with code 0: a normal close.
    pub(crate) async fn close(self) {
        self.stream.close().await;
    }
}

pub(crate) struct Stream {
    stream: quic::Stream,
    connection: quinn::Connection,
    /// Datagrams of this session carry this quarter stream id.
    quarter_id: u64,
    /// `Welcome` was returned: datagrams count from then on.
    welcomed: bool,
    max_frame_size: usize,
    _h3: H3Streams,
}

impl Stream {
    pub(crate) fn set_max_frame_size(&mut self, max: usize) {
        self.welcomed = true;
        self.max_frame_size = max;
        self.stream.set_max_frame_size(max);
    }

    /// Cancel-safe: the stream half is, and quinn's `read_datagram` loses nothing when
    /// dropped before it completes.
    pub(crate) async fn recv_frame(&mut self) -> Result<ServerFrame, Disconnect> {
        loop {
            tokio::select! {
                // The stream first: it says why the session ends.
                biased;
                frame = self.stream.recv_frame() => return frame,
                datagram = self.connection.read_datagram() => {
                    // A failed read means the connection is gone: the stream half says how.
                    let Ok(datagram) = datagram else {
                        return self.stream.recv_frame().await;
                    };
                    if let Some(frame) = self.datagram(datagram)? {
                        return Ok(frame);
                    }
                }
            }
        }
    }

    /// One datagram: `None` when it is to be dropped.
    fn datagram(&self, mut payload: Bytes) -> Result<Option<ServerFrame>, Disconnect> {
        let Ok(quarter_id) = proto::VarInt::decode(&mut payload) else {
            tracing::debug!("datagram without an HTTP/3 datagram header dropped");
            return Ok(None);
        };
        if quarter_id.into_inner() != self.quarter_id {
            tracing::debug!("datagram for another session dropped");
            return Ok(None);
        }
        // Datagrams may overtake the stream: one before Welcome is dropped, as the server does.
        if !self.welcomed {
            tracing::debug!("datagram before Welcome dropped");
            return Ok(None);
        }
        match haberci_wire::datagram::decode::<ServerFrame>(
            payload,
            self.max_frame_size.min(MAX_DATAGRAM),
        ) {
            Ok(frame) => Ok(Some(frame)),
            Err(WireError::UnknownFrameKind) => {
                tracing::debug!("unknown server frame kind skipped");
                Ok(None)
            }
            Err(err) => Err(Disconnect::Protocol(err)),
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    #[test]
    fn urls_must_be_https() {
        assert!(parse_url("https://localhost:4433/v1/rt").is_ok());
        for bad in [
            "http://localhost:4433/v1/rt",
            "wss://localhost/v1/rt",
            "localhost:4433",
        ] {
            assert!(
                matches!(parse_url(bad), Err(ConnectError::Config(_))),
                "{bad}"
            );
        }
    }
}
