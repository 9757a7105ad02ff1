//! A Socket.IO v5 / Engine.IO v4 client over WebSocket, just what the bench needs to load the
//! Socket.IO peer (`bench/peers/socketio/`) the way its browsers would: connect with a JWT,
//! emit `message` events with an ack, receive `message` events, answer pings.
//!
//! The protocol is text frames: Engine.IO packet type first (`0` open, `1` close, `2` ping,
//! `3` pong, `4` message), and inside a message a Socket.IO packet (`0` connect, `1`
//! disconnect, `2` event, `3` ack, `4` connect error), then an optional namespace
//! (`/chat,`), an optional ack id (digits), and JSON. The parsers are plain functions of the
//! frame text, unit-tested; the client is a thin driver around them. Binary packets are not
//! spoken (the peer never sends them).

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::{SinkExt, StreamExt};
use rustls_pki_types::ServerName;
use serde_json::{Value, json};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpSocket;
use tokio::sync::{mpsc, oneshot};
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use tokio_tungstenite::tungstenite::{self, Message};

/// tungstenite's read buffer (its 128 KiB default is for bulk transfer).
const READ_BUFFER_SIZE: usize = 16 * 1024;

// ---- Engine.IO / Socket.IO frames (sans-IO) ---------------------------------------------------

/// What the server's Engine.IO `open` packet says.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Open {
    pub sid: String,
    pub ping_interval_ms: u64,
    pub ping_timeout_ms: u64,
    pub max_payload: u64,
}

/// One Engine.IO packet (text frames only).
#[derive(Clone, Debug, PartialEq)]
pub enum Engine<'a> {
    Open(Open),
    Close,
    Ping,
    Pong,
    /// A Socket.IO packet, still text.
    Message(&'a str),
    Upgrade,
    Noop,
}

/// One Socket.IO packet.
#[derive(Clone, Debug, PartialEq)]
pub enum Packet {
    /// `0`: connected; the data is `{"sid": …}`.
    Connect(Value),
    Disconnect,
    /// `2`: an event `[name, args…]`, with an ack id when the sender wants an answer.
    Event {
        id: Option<u64>,
        name: String,
        args: Vec<Value>,
    },
    /// `3`: the answer to the event with this ack id.
    Ack {
        id: u64,
        args: Vec<Value>,
    },
    /// `4`: the middleware refused the connection; the data is `{"message": …}`.
    ConnectError(Value),
}

#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum FrameError {
    #[error("empty frame")]
    Empty,
    #[error("unknown Engine.IO packet type {0:?}")]
    EngineType(char),
    #[error("unknown Socket.IO packet type {0:?}")]
    PacketType(char),
    #[error("binary Socket.IO packets are not spoken here")]
    Binary,
    #[error("bad JSON in {what}: {why}")]
    Json { what: &'static str, why: String },
    #[error("{0} without its data")]
    Missing(&'static str),
}

fn json_of(what: &'static str, text: &str) -> Result<Value, FrameError> {
    serde_json::from_str(text).map_err(|err| FrameError::Json {
        what,
        why: err.to_string(),
    })
}

/// Parses one Engine.IO text frame.
pub fn parse_engine(text: &str) -> Result<Engine<'_>, FrameError> {
    let mut chars = text.chars();
    let kind = chars.next().ok_or(FrameError::Empty)?;
    let rest = &text[kind.len_utf8()..];
    Ok(match kind {
        '0' => {
            let v = json_of("open", rest)?;
            let number = |key: &str| v[key].as_u64().unwrap_or(0);
            Engine::Open(Open {
                sid: v["sid"]
                    .as_str()
                    .ok_or(FrameError::Missing("open sid"))?
                    .to_owned(),
                ping_interval_ms: number("pingInterval"),
                ping_timeout_ms: number("pingTimeout"),
                max_payload: number("maxPayload"),
            })
        }
        '1' => Engine::Close,
        '2' => Engine::Ping,
        '3' => Engine::Pong,
        '4' => Engine::Message(rest),
        '5' => Engine::Upgrade,
        '6' => Engine::Noop,
        other => return Err(FrameError::EngineType(other)),
    })
}

/// Parses the Socket.IO packet inside an Engine.IO message (namespace ignored: the bench
/// speaks the main one).
pub fn parse_packet(text: &str) -> Result<Packet, FrameError> {
    let kind = text.chars().next().ok_or(FrameError::Empty)?;
    let mut rest = &text[kind.len_utf8()..];
    if matches!(kind, '5' | '6') {
        return Err(FrameError::Binary);
    }
    if rest.starts_with('/') {
        rest = rest.split_once(',').map_or("", |(_, after)| after);
    }
    let digits = rest.bytes().take_while(u8::is_ascii_digit).count();
    let id = if digits > 0 {
        rest[..digits].parse::<u64>().ok()
    } else {
        None
    };
    rest = &rest[digits..];
    let array = |what| -> Result<Vec<Value>, FrameError> {
        match json_of(what, rest)? {
            Value::Array(items) => Ok(items),
            _ => Err(FrameError::Json {
                what,
                why: "not an array".into(),
            }),
        }
    };
    Ok(match kind {
        '0' => Packet::Connect(if rest.is_empty() {
            Value::Null
        } else {
            json_of("connect", rest)?
        }),
        '1' => Packet::Disconnect,
        '2' => {
            let mut items = array("event")?.into_iter();
            let name = match items.next() {
                Some(Value::String(name)) => name,
                _ => return Err(FrameError::Missing("event name")),
            };
            Packet::Event {
                id,
                name,
                args: items.collect(),
            }
        }
        '3' => Packet::Ack {
            id: id.ok_or(FrameError::Missing("ack id"))?,
            args: array("ack")?,
        },
        '4' => Packet::ConnectError(json_of("connect error", rest)?),
        other => return Err(FrameError::PacketType(other)),
    })
}

/// `40{auth}`: connect to the main namespace with this auth payload.
pub fn connect_frame(auth: &Value) -> String {
    format!("40{auth}")
}

/// `42<id>["name", data]`: an event that wants an ack.
pub fn event_frame(id: u64, name: &str, data: &Value) -> String {
    format!("42{id}{}", json!([name, data]))
}

/// `3`: the answer to the server's ping.
pub const PONG: &str = "3";

// ---- HS256 tokens for the peer -----------------------------------------------------------------

/// A JWT (HS256) for `user`, valid `valid_for` from now: what the seed's login handed out and
/// the peer checks on connect.
pub fn hs256_token(secret: &[u8], user: &str, now_unix: u64, valid_for: Duration) -> String {
    use base64::Engine as _;
    let b64 = base64::engine::general_purpose::URL_SAFE_NO_PAD;
    let header = b64.encode(br#"{"alg":"HS256","typ":"JWT"}"#);
    let claims = json!({ "sub": user, "iat": now_unix, "exp": now_unix + valid_for.as_secs() });
    let payload = b64.encode(claims.to_string());
    let signing_input = format!("{header}.{payload}");
    let key = ring::hmac::Key::new(ring::hmac::HMAC_SHA256, secret);
    let signature = b64.encode(ring::hmac::sign(&key, signing_input.as_bytes()).as_ref());
    format!("{signing_input}.{signature}")
}

// ---- the client --------------------------------------------------------------------------------

/// What a connection hears that the bench cares about.
#[derive(Debug)]
pub enum Incoming {
    /// A `message` event's content.
    Message(String),
    /// The connection ended (the text says why).
    Disconnected(String),
}

/// Where and how to connect.
#[derive(Clone)]
pub struct SioConfig {
    /// The node's TCP address.
    pub addr: SocketAddr,
    /// The source address to connect from (127.0.0.x spreads the ephemeral ports).
    pub source: Option<IpAddr>,
    /// TLS, when the peer serves it.
    pub tls: Option<(tokio_rustls::TlsConnector, ServerName<'static>)>,
    pub token: String,
}

trait Io: AsyncRead + AsyncWrite + Unpin + Send {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send> Io for T {}

type Socket = tokio_tungstenite::WebSocketStream<Box<dyn Io>>;
type AckWaiter = oneshot::Sender<Result<(), String>>;

/// A connected Socket.IO session. Cheap to clone; [`SioClient::close`] ends it.
#[derive(Clone)]
pub struct SioClient {
    out: mpsc::UnboundedSender<Message>,
    pending: Arc<Mutex<HashMap<u64, AckWaiter>>>,
    next_id: Arc<AtomicU64>,
    closed: Arc<tokio::sync::Notify>,
    done: tokio::sync::watch::Receiver<bool>,
}

impl SioClient {
    /// TCP (from `source`), TLS, WebSocket upgrade on `/socket.io/?EIO=4&transport=websocket`,
    /// Engine.IO open, Socket.IO connect with `{token}`. Fails with the server's words when the
    /// connect is refused.
    pub async fn connect(
        config: &SioConfig,
    ) -> Result<(SioClient, mpsc::UnboundedReceiver<Incoming>), String> {
        let socket = match config.addr {
            SocketAddr::V4(_) => TcpSocket::new_v4(),
            SocketAddr::V6(_) => TcpSocket::new_v6(),
        }
        .map_err(|e| format!("socket: {e}"))?;
        if let Some(source) = config.source {
            socket
                .bind(SocketAddr::new(source, 0))
                .map_err(|e| format!("cannot bind {source}: {e}"))?;
        }
        let tcp = socket
            .connect(config.addr)
            .await
            .map_err(|e| format!("cannot connect over TCP: {e}"))?;
        let _ = tcp.set_nodelay(true);
        let (io, scheme): (Box<dyn Io>, &str) = match &config.tls {
            Some((connector, name)) => (
                Box::new(
                    connector
                        .connect(name.clone(), tcp)
                        .await
                        .map_err(|e| format!("TLS handshake failed: {e}"))?,
                ),
                "wss",
            ),
            None => (Box::new(tcp), "ws"),
        };
        let host = match &config.tls {
            Some((_, ServerName::DnsName(name))) => name.as_ref().to_owned(),
            _ => config.addr.ip().to_string(),
        };
        let url = format!(
            "{scheme}://{host}:{}/socket.io/?EIO=4&transport=websocket",
            config.addr.port()
        );
        let request = url
            .as_str()
            .into_client_request()
            .map_err(|e| format!("URL {url}: {e}"))?;
        let ws_config = WebSocketConfig::default().read_buffer_size(READ_BUFFER_SIZE);
        let (mut socket, _) =
            tokio_tungstenite::client_async_with_config(request, io, Some(ws_config))
                .await
                .map_err(|e| match e {
                    tungstenite::Error::Http(r) => {
                        format!("WebSocket upgrade refused: HTTP {}", r.status())
                    }
                    other => format!("WebSocket upgrade failed: {other}"),
                })?;
        // Engine.IO open, then the Socket.IO connect and its answer.
        let mut opened = false;
        let auth = json!({ "token": config.token });
        loop {
            let text = next_text(&mut socket).await?;
            match parse_engine(&text).map_err(|e| e.to_string())? {
                Engine::Open(_) if !opened => {
                    opened = true;
                    socket
                        .send(Message::text(connect_frame(&auth)))
                        .await
                        .map_err(|e| format!("cannot send connect: {e}"))?;
                }
                Engine::Ping => {
                    let _ = socket.send(Message::text(PONG)).await;
                }
                Engine::Message(inner) => match parse_packet(inner).map_err(|e| e.to_string())? {
                    Packet::Connect(_) => break,
                    Packet::ConnectError(data) => {
                        return Err(format!(
                            "refused: {}",
                            data["message"].as_str().unwrap_or("?")
                        ));
                    }
                    other => return Err(format!("unexpected before connect: {other:?}")),
                },
                Engine::Close => return Err("closed before connect".into()),
                other => return Err(format!("unexpected before connect: {other:?}")),
            }
        }
        let (out, queued) = mpsc::unbounded_channel();
        let (incoming, events) = mpsc::unbounded_channel();
        let (done_tx, done) = tokio::sync::watch::channel(false);
        let client = SioClient {
            out,
            pending: Arc::new(Mutex::new(HashMap::new())),
            next_id: Arc::new(AtomicU64::new(1)),
            closed: Arc::new(tokio::sync::Notify::new()),
            done,
        };
        tokio::spawn(drive(socket, queued, client.clone(), incoming, done_tx));
        Ok((client, events))
    }

    /// Emits `message` {to, id, content}; resolves when the server acks it. The frame is
    /// queued before the first poll returns, so sends leave in call order.
    pub fn send(
        &self,
        to: &str,
        id: &str,
        content: String,
    ) -> impl Future<Output = Result<(), String>> + Send + 'static {
        let ack = self.next_id.fetch_add(1, Ordering::Relaxed);
        let (waiter, answer) = oneshot::channel();
        if let Ok(mut pending) = self.pending.lock() {
            pending.insert(ack, waiter);
        }
        let frame = event_frame(
            ack,
            "message",
            &json!({ "to": to, "id": id, "content": content }),
        );
        let queued = self.out.send(Message::text(frame)).is_ok();
        async move {
            if !queued {
                return Err("the connection has ended".into());
            }
            answer
                .await
                .unwrap_or_else(|_| Err("the connection ended before the ack".into()))
        }
    }

    /// Closes the WebSocket and waits until the driver is gone.
    pub async fn close(&self) {
        self.closed.notify_one();
        let mut done = self.done.clone();
        let _ = done.wait_for(|d| *d).await;
    }

    fn answer(&self, id: u64, result: Result<(), String>) {
        let waiter = self.pending.lock().ok().and_then(|mut p| p.remove(&id));
        if let Some(waiter) = waiter {
            let _ = waiter.send(result);
        }
    }

    fn fail_all(&self) {
        let waiters: Vec<AckWaiter> = self
            .pending
            .lock()
            .map(|mut p| p.drain().map(|(_, w)| w).collect())
            .unwrap_or_default();
        for w in waiters {
            let _ = w.send(Err("the connection ended before the ack".into()));
        }
    }
}

async fn next_text(socket: &mut Socket) -> Result<String, String> {
    loop {
        match socket.next().await {
            Some(Ok(Message::Text(text))) => return Ok(text.as_str().to_owned()),
            Some(Ok(Message::Close(frame))) => return Err(format!("closed: {frame:?}")),
            Some(Ok(_)) => continue,
            Some(Err(err)) => return Err(format!("read failed: {err}")),
            None => return Err("the connection ended".into()),
        }
    }
}

async fn drive(
    socket: Socket,
    mut queued: mpsc::UnboundedReceiver<Message>,
    client: SioClient,
    incoming: mpsc::UnboundedSender<Incoming>,
    done: tokio::sync::watch::Sender<bool>,
) {
    let (mut sink, mut stream) = socket.split();
    let why = loop {
        tokio::select! {
            message = queued.recv() => {
                let Some(message) = message else { break "closed by this client".to_owned() };
                if let Err(err) = sink.send(message).await {
                    break format!("write failed: {err}");
                }
            }
            () = client.closed.notified() => {
                let _ = sink.send(Message::Close(None)).await;
                break "closed by this client".to_owned();
            }
            frame = stream.next() => {
                let text = match frame {
                    Some(Ok(Message::Text(text))) => text,
                    Some(Ok(Message::Close(frame))) => break format!("closed by the server: {frame:?}"),
                    Some(Ok(_)) => continue,
                    Some(Err(err)) => break format!("read failed: {err}"),
                    None => break "the connection ended".to_owned(),
                };
                match parse_engine(text.as_str()) {
                    Ok(Engine::Ping) => {
                        if let Err(err) = sink.send(Message::text(PONG)).await {
                            break format!("write failed: {err}");
                        }
                    }
                    Ok(Engine::Message(inner)) => match parse_packet(inner) {
                        Ok(Packet::Event { name, args, .. }) if name == "message" => {
                            let content = args
                                .first()
                                .and_then(|m| m["content"].as_str())
                                .unwrap_or_default()
                                .to_owned();
                            let _ = incoming.send(Incoming::Message(content));
                        }
                        Ok(Packet::Ack { id, args }) => {
                            let result = match args.first() {
                                Some(a) if a["ok"] == true => Ok(()),
                                Some(a) => Err(format!("refused: {a}")),
                                None => Err("an empty ack".into()),
                            };
                            client.answer(id, result);
                        }
                        Ok(Packet::Disconnect) => break "disconnected by the server".to_owned(),
                        Ok(_) => {}
                        Err(err) => break format!("bad packet: {err}"),
                    },
                    Ok(Engine::Close) => break "closed by the server".to_owned(),
                    Ok(_) => {}
                    Err(err) => break format!("bad frame: {err}"),
                }
            }
        }
    };
    client.fail_all();
    let _ = incoming.send(Incoming::Disconnected(why));
    let _ = tokio::time::timeout(Duration::from_secs(2), sink.close()).await;
    let _ = done.send(true);
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    #[test]
    fn engine_packets_parse() {
        let open = r#"0{"sid":"lv_VI97HAXpY6yYWAAAC","upgrades":[],"pingInterval":25000,"pingTimeout":20000,"maxPayload":1000000}"#;
        assert_eq!(
            parse_engine(open).unwrap(),
            Engine::Open(Open {
                sid: "lv_VI97HAXpY6yYWAAAC".into(),
                ping_interval_ms: 25_000,
                ping_timeout_ms: 20_000,
                max_payload: 1_000_000,
            })
        );
        assert_eq!(parse_engine("2").unwrap(), Engine::Ping);
        assert_eq!(parse_engine("3").unwrap(), Engine::Pong);
        assert_eq!(parse_engine("1").unwrap(), Engine::Close);
        assert_eq!(parse_engine("6").unwrap(), Engine::Noop);
        assert_eq!(
            parse_engine("42[\"a\"]").unwrap(),
            Engine::Message("2[\"a\"]")
        );
        assert_eq!(parse_engine(""), Err(FrameError::Empty));
        assert_eq!(parse_engine("9"), Err(FrameError::EngineType('9')));
        assert!(matches!(parse_engine("0{}"), Err(FrameError::Missing(_))));
        assert!(matches!(
            parse_engine("0nope"),
            Err(FrameError::Json { .. })
        ));
    }

    #[test]
    fn socketio_packets_parse() {
        assert_eq!(
            parse_packet(r#"0{"sid":"abc"}"#).unwrap(),
            Packet::Connect(json!({"sid": "abc"}))
        );
        assert_eq!(
            parse_packet(r#"4{"message":"unauthorized"}"#).unwrap(),
            Packet::ConnectError(json!({"message": "unauthorized"}))
        );
        assert_eq!(
            parse_packet(r#"2["message",{"content":"hi"}]"#).unwrap(),
            Packet::Event {
                id: None,
                name: "message".into(),
                args: vec![json!({"content": "hi"})]
            }
        );
        assert_eq!(
            parse_packet(r#"212["ping"]"#).unwrap(),
            Packet::Event {
                id: Some(12),
                name: "ping".into(),
                args: vec![]
            }
        );
        assert_eq!(
            parse_packet(r#"3/chat,7[{"ok":true}]"#).unwrap(),
            Packet::Ack {
                id: 7,
                args: vec![json!({"ok": true})]
            }
        );
        assert_eq!(parse_packet("1").unwrap(), Packet::Disconnect);
        assert_eq!(parse_packet("3[1]"), Err(FrameError::Missing("ack id")));
        assert_eq!(parse_packet("51-[\"x\"]"), Err(FrameError::Binary));
        assert!(matches!(parse_packet("2{}"), Err(FrameError::Json { .. })));
        assert_eq!(parse_packet("2[1]"), Err(FrameError::Missing("event name")));
        assert_eq!(parse_packet("x"), Err(FrameError::PacketType('x')));
    }

    #[test]
    fn frames_are_encoded_as_the_server_reads_them() {
        assert_eq!(connect_frame(&json!({"token": "t"})), r#"40{"token":"t"}"#);
        let frame = event_frame(3, "message", &json!({"to": "u"}));
        assert_eq!(frame, r#"423["message",{"to":"u"}]"#);
        // What we send parses back as the event it is.
        let Engine::Message(inner) = parse_engine(&frame).unwrap() else {
            panic!("not a message")
        };
        assert_eq!(
            parse_packet(inner).unwrap(),
            Packet::Event {
                id: Some(3),
                name: "message".into(),
                args: vec![json!({"to": "u"})]
            }
        );
    }

    #[test]
    fn hs256_tokens_verify_with_the_secret() {
        use base64::Engine as _;
        let token = hs256_token(b"secret", "user-1", 1_700_000_000, Duration::from_secs(60));
        let parts: Vec<&str> = token.split('.').collect();
        assert_eq!(parts.len(), 3);
        let b64 = base64::engine::general_purpose::URL_SAFE_NO_PAD;
        let claims: Value = serde_json::from_slice(&b64.decode(parts[1]).unwrap()).unwrap();
        assert_eq!(claims["sub"], "user-1");
        assert_eq!(claims["exp"], 1_700_000_060);
        let key = ring::hmac::Key::new(ring::hmac::HMAC_SHA256, b"secret");
        let signed = format!("{}.{}", parts[0], parts[1]);
        ring::hmac::verify(&key, signed.as_bytes(), &b64.decode(parts[2]).unwrap()).unwrap();
        let other = ring::hmac::Key::new(ring::hmac::HMAC_SHA256, b"other");
        assert!(
            ring::hmac::verify(&other, signed.as_bytes(), &b64.decode(parts[2]).unwrap()).is_err()
        );
    }
}
