//! WebSocket (`wss://host:port/v1/ws`, subprotocol `haberci.v1`): one binary message per
//! frame body, no length prefix. The server closes with WebSocket code 4000 + protocol code;
//! a client closing normally uses 1000.
//!
//! TLS is tokio-rustls with the ring provider (see `tls.rs`); tokio-tungstenite is built
//! with its `handshake` feature only, so it brings no TLS stack of its own.

use std::sync::Arc;

use bytes::Bytes;
use futures::stream::{SplitSink, SplitStream};
use futures::{SinkExt, StreamExt};
use haberci_wire::websocket::MessageType;
use haberci_wire::{ErrorCode, ServerFrame, WireError};
use rustls_pki_types::ServerName;
use tokio::net::TcpStream;
use tokio_rustls::client::TlsStream;
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::http::HeaderValue;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::protocol::{CloseFrame, WebSocketConfig};
use tokio_tungstenite::tungstenite::{self, Message};

use crate::error::{ConnectError, Disconnect};

type Socket = WebSocketStream<TlsStream<TcpStream>>;

/// tungstenite's read buffer: small, since frames are small (its 128 KiB default is sized
/// for bulk transfer, and a load generator holds thousands of these).
const READ_BUFFER_SIZE: usize = 16 * 1024;
/// tungstenite's own message limit. `Welcome` may announce a max frame size above the
/// default; bodies are checked against the announced one in [`Stream::recv_frame`].
const MAX_MESSAGE_SIZE: usize = 16 * haberci_wire::DEFAULT_MAX_FRAME_SIZE;

pub(crate) async fn connect(
    url: &str,
    server_name: &str,
    tls: rustls::ClientConfig,
) -> Result<(Sink, Stream), ConnectError> {
    let mut request = url
        .into_client_request()
        .map_err(|err| ConnectError::Config(format!("WebSocket URL {url:?}: {err}")))?;
    let uri = request.uri();
    if uri.scheme_str() != Some("wss") {
        return Err(ConnectError::Config(format!(
            "WebSocket URL {url:?} must be wss://"
        )));
    }
    let host = uri
        .host()
        .ok_or_else(|| ConnectError::Config(format!("WebSocket URL {url:?} has no host")))?
        .trim_start_matches('[')
        .trim_end_matches(']')
        .to_owned();
    let port = uri.port_u16().unwrap_or(443);
    request.headers_mut().insert(
        "sec-websocket-protocol",
        HeaderValue::from_static(haberci_wire::WEBSOCKET_SUBPROTOCOL),
    );

    let tcp = TcpStream::connect((host.as_str(), port))
        .await
        .map_err(|err| ConnectError::transport("cannot connect over TCP", err))?;
    // Frames are small and latency matters more than packet count.
    let _ = tcp.set_nodelay(true);
    let name = ServerName::try_from(server_name.to_owned())
        .map_err(|err| ConnectError::Config(format!("TLS server name {server_name:?}: {err}")))?;
    let tls = tokio_rustls::TlsConnector::from(Arc::new(tls))
        .connect(name, tcp)
        .await
        .map_err(|err| ConnectError::transport("TLS handshake failed", err))?;
    let config = WebSocketConfig::default()
        .read_buffer_size(READ_BUFFER_SIZE)
        .max_message_size(Some(MAX_MESSAGE_SIZE))
        .max_frame_size(Some(MAX_MESSAGE_SIZE));
    let (socket, response) =
        tokio_tungstenite::client_async_with_config(request, tls, Some(config))
            .await
            .map_err(|err| match err {
                tungstenite::Error::Http(response) => ConnectError::Upgrade {
                    status: response.status().as_u16(),
                },
                other => ConnectError::transport("WebSocket upgrade failed", other),
            })?;
    let chosen = response.headers().get("sec-websocket-protocol");
    if chosen.map(HeaderValue::as_bytes) != Some(haberci_wire::WEBSOCKET_SUBPROTOCOL.as_bytes()) {
        return Err(ConnectError::transport(
            "WebSocket upgrade failed",
            format!("the server chose subprotocol {chosen:?}, not haberci.v1"),
        ));
    }
    let (sink, stream) = socket.split();
    Ok((
        Sink { sink },
        Stream {
            stream,
            max_frame_size: haberci_wire::DEFAULT_MAX_FRAME_SIZE,
        },
    ))
}

pub(crate) struct Sink {
    sink: SplitSink<Socket, Message>,
}

impl Sink {
    pub(crate) async fn send_body(&mut self, body: Bytes) -> Result<(), Disconnect> {
        self.sink
            .send(Message::Binary(body))
            .await
            .map_err(|err| Disconnect::Transport(err.to_string()))
    }

    pub(crate) async fn close(mut self) {
        let _ = self
            .sink
            .send(Message::Close(Some(CloseFrame {
                code: CloseCode::Normal,
                reason: "".into(),
            })))
            .await;
    }
}

pub(crate) struct Stream {
    stream: SplitStream<Socket>,
    max_frame_size: usize,
}

impl Stream {
    pub(crate) fn set_max_frame_size(&mut self, max: usize) {
        self.max_frame_size = max.min(MAX_MESSAGE_SIZE);
    }

    /// Cancel-safe: `StreamExt::next` on the split stream is.
    pub(crate) async fn recv_frame(&mut self) -> Result<ServerFrame, Disconnect> {
        loop {
            let message = match self.stream.next().await {
                Some(Ok(message)) => message,
                Some(Err(err)) => return Err(Disconnect::Transport(err.to_string())),
                None => {
                    return Err(Disconnect::Transport(
                        "connection closed without a close frame".into(),
                    ));
                }
            };
            let payload = match message {
                Message::Binary(payload) => payload,
                Message::Text(_) => return Err(Disconnect::Protocol(WireError::TextMessage)),
                // tungstenite answers pings itself.
                Message::Ping(_) | Message::Pong(_) | Message::Frame(_) => continue,
                Message::Close(frame) => return Err(disconnect_from(frame)),
            };
            match haberci_wire::websocket::decode(MessageType::Binary, payload, self.max_frame_size)
            {
                Ok(frame) => return Ok(frame),
                Err(WireError::UnknownFrameKind) => {
                    tracing::debug!("unknown server frame kind skipped");
                }
                Err(err) => return Err(Disconnect::Protocol(err)),
            }
        }
    }
}

fn disconnect_from(frame: Option<CloseFrame>) -> Disconnect {
    let Some(frame) = frame else {
        return Disconnect::Server {
            code: None,
            reason: String::new(),
        };
    };
    let code = u16::from(frame.code);
    Disconnect::Server {
        code: if code == haberci_wire::WEBSOCKET_NORMAL_CLOSURE {
            None
        } else {
            ErrorCode::from_websocket_close_code(code)
        },
        reason: frame.reason.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn close_codes_map_to_protocol_codes() {
        let close = |code: u16| {
            disconnect_from(Some(CloseFrame {
                code: CloseCode::from(code),
                reason: "why".into(),
            }))
        };
        assert_eq!(
            close(4006),
            Disconnect::Server {
                code: Some(ErrorCode::Unauthenticated),
                reason: "why".into()
            }
        );
        assert_eq!(
            close(1000),
            Disconnect::Server {
                code: None,
                reason: "why".into()
            }
        );
        assert!(matches!(close(4999), Disconnect::Server { code: None, .. }));
        assert!(matches!(
            disconnect_from(None),
            Disconnect::Server { code: None, .. }
        ));
    }
}
