//! Opening a realtime session, as one table of cases run on each transport: native QUIC,
//! WebTransport and WebSocket. A row is a script (what the client sends, what it must see next)
//! and the transports it applies to; each transport's module holds its client.
//!
//! A close is checked twice: the `Closing` frame's code, then the transport's own close (QUIC
//! application code = protocol code, WebSocket close code = 4000 + protocol code), whose reason
//! is the code's name.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use futures::SinkExt;
use haberci_testkit::TransportKind::{self, Quic, WebSocket, WebTransport};
use haberci_testkit::{Backend, Stack, users};
use haberci_wire::{
    ClientFrame, ClientMsgId, ErrorCode, MessageKind, Recipient, SendMessage, ServerFrame, UserId,
};
use tokio_tungstenite::tungstenite::Message;

use crate::native::Native;
use crate::support::{self, QuicClient, Version};
use crate::websocket;
use crate::webtransport::{Wt, WtStream};

/// The stack behind a row. Rows with the same one share it; each row has a user of its own.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
enum Setup {
    /// The real API, whose keys the gateway has loaded. Messages are not relayed, so a Send
    /// is answered `unavailable`.
    Api,
    /// As [`Setup::Api`], and the gateway follows revocations on the test Redis.
    Revocations,
    /// No backend, and a session's stream and Hello are due within [`SHORT_HELLO_TIMEOUT`].
    ShortHelloTimeout,
}

/// Short, so the rows that wait for it end soon; long enough for a loaded machine to open a
/// stream in time.
const SHORT_HELLO_TIMEOUT: Duration = Duration::from_secs(1);

/// What the client opens before a row's steps.
#[derive(Clone, Copy, Debug)]
enum Open {
    /// The session's stream (native QUIC, WebTransport), or the upgraded socket.
    Stream,
    /// The QUIC connection (native) or the WebTransport session, and no stream.
    NoStream,
}

#[derive(Clone, Copy, Debug)]
enum Token {
    /// The row's user's access token.
    User,
    /// Not a token at all.
    Garbage,
}

#[derive(Clone, Copy, Debug)]
enum Step {
    // What the client does.
    /// A Hello with a token and a protocol version.
    Hello(Token, u32),
    Ping(u32),
    /// A text message to a user nobody registered.
    SendText,
    /// Bytes as they are: on the stream, or as one binary WebSocket message.
    Raw(&'static [u8]),
    /// A frame one byte over the limit: on a stream its length prefix alone (the declared
    /// length is refused before any body is buffered), on a WebSocket the whole message.
    Oversized,
    /// A WebSocket binary message of this many bytes.
    Binary(usize),
    /// A binary WebSocket message of this many bytes in three fragments, each under the limit.
    Fragmented(usize),
    /// A WebSocket frame header announcing a binary message of this many bytes, and no body.
    Announce(u64),
    /// The first bytes of a frame (a Ping missing its last byte), then the end of the stream.
    Truncated,
    /// A WebSocket text message.
    Text(&'static str),
    /// A Hello with no access token.
    EmptyHello,
    /// The user logs out through the API, which announces the revocation.
    Logout,
    // What the client must see next.
    /// `Welcome` for the row's user, in the current protocol version.
    Welcome,
    Pong(u32),
    /// `Error(unavailable)` naming the last [`Step::SendText`]: retryable, and nothing closes.
    Unavailable,
    /// A `Closing` frame with `code` whose reason contains `reason` (and which lists the
    /// supported versions when `versions`), then the transport's close with `code`.
    Closing {
        code: ErrorCode,
        reason: &'static str,
        versions: bool,
    },
    /// The transport's close with the code, and no frame: there was no stream to carry one.
    Closed(ErrorCode),
}

use Step::*;

const fn closing(code: ErrorCode) -> Step {
    Closing {
        code,
        reason: "",
        versions: false,
    }
}

struct Case {
    name: &'static str,
    setup: Setup,
    open: Open,
    on: &'static [TransportKind],
    steps: &'static [Step],
}

const ALL: &[TransportKind] = &TransportKind::ALL;
const VERSION: u32 = haberci_wire::PROTOCOL_VERSION;

const CASES: &[Case] = &[
    Case {
        name: "a registered user is welcomed, pongs, and a Send is answered unavailable",
        setup: Setup::Api,
        open: Open::Stream,
        on: ALL,
        steps: &[
            Hello(Token::User, VERSION),
            Welcome,
            Ping(7),
            Pong(7),
            SendText,
            Unavailable,
            Ping(8),
            Pong(8),
        ],
    },
    Case {
        name: "a bad token is closed with unauthenticated",
        setup: Setup::Api,
        open: Open::Stream,
        on: ALL,
        steps: &[
            Hello(Token::Garbage, VERSION),
            closing(ErrorCode::Unauthenticated),
        ],
    },
    Case {
        name: "an unsupported version is closed with the versions spoken",
        setup: Setup::Api,
        open: Open::Stream,
        on: ALL,
        steps: &[
            Hello(Token::User, 99),
            Closing {
                code: ErrorCode::UnsupportedVersion,
                reason: "",
                versions: true,
            },
        ],
    },
    Case {
        name: "a frame before Hello is closed with unauthenticated",
        setup: Setup::Api,
        open: Open::Stream,
        on: ALL,
        steps: &[Ping(1), closing(ErrorCode::Unauthenticated)],
    },
    Case {
        // On a stream, a length prefix that never ends (11 continuation bytes); on a
        // WebSocket, a message that is no frame.
        name: "malformed bytes are closed with bad_frame",
        setup: Setup::Api,
        open: Open::Stream,
        on: ALL,
        steps: &[Raw(&[0xff; 11]), closing(ErrorCode::BadFrame)],
    },
    Case {
        name: "an oversized frame is closed with frame_too_large",
        setup: Setup::Api,
        open: Open::Stream,
        on: ALL,
        steps: &[Oversized, closing(ErrorCode::FrameTooLarge)],
    },
    Case {
        name: "a WebSocket message far over the limit is closed with frame_too_large",
        setup: Setup::Api,
        open: Open::Stream,
        on: &[WebSocket],
        steps: &[Binary(1 << 20), closing(ErrorCode::FrameTooLarge)],
    },
    Case {
        name: "a WebSocket message over the limit in fragments under it is closed with frame_too_large",
        setup: Setup::Api,
        open: Open::Stream,
        on: &[WebSocket],
        steps: &[Fragmented(3 * 30_000), closing(ErrorCode::FrameTooLarge)],
    },
    Case {
        // Refused from the header: the 4 GiB never have to arrive.
        name: "a WebSocket frame header announcing too much is closed with frame_too_large",
        setup: Setup::Api,
        open: Open::Stream,
        on: &[WebSocket],
        steps: &[Announce(1 << 32), closing(ErrorCode::FrameTooLarge)],
    },
    Case {
        name: "a stream that ends inside a frame is closed with bad_frame",
        setup: Setup::Api,
        open: Open::Stream,
        on: &[Quic, WebTransport],
        steps: &[Truncated, closing(ErrorCode::BadFrame)],
    },
    Case {
        // Before Welcome nothing is answered with Error.
        name: "a Hello without a token is closed with unauthenticated",
        setup: Setup::Api,
        open: Open::Stream,
        on: ALL,
        steps: &[EmptyHello, closing(ErrorCode::Unauthenticated)],
    },
    Case {
        // Only a WebSocket has text messages.
        name: "a text message is refused with text_message_refused",
        setup: Setup::Api,
        open: Open::Stream,
        on: &[WebSocket],
        steps: &[Text("hello"), closing(ErrorCode::TextMessageRefused)],
    },
    Case {
        // The session's handshake deadline. Native QUIC is the next row: a stream its client
        // has not written to is not announced to the server.
        name: "a stream without Hello is closed with idle_timeout",
        setup: Setup::ShortHelloTimeout,
        open: Open::Stream,
        on: &[WebTransport, WebSocket],
        steps: &[closing(ErrorCode::IdleTimeout)],
    },
    Case {
        // The adapter's wait for the stream. A WebSocket's stream is its upgrade.
        name: "a connection without a stream is closed with idle_timeout",
        setup: Setup::ShortHelloTimeout,
        open: Open::NoStream,
        on: &[Quic, WebTransport],
        steps: &[Closed(ErrorCode::IdleTimeout)],
    },
    Case {
        // No backend, so no token keys ever: the Hello waits for them (a few seconds, here
        // the short handshake deadline), then is told to come back; never refused
        // `unauthenticated`, which a client would not retry.
        name: "a Hello to a gateway without token keys is told to come back, not refused",
        setup: Setup::ShortHelloTimeout,
        open: Open::Stream,
        on: ALL,
        steps: &[
            Hello(Token::Garbage, VERSION),
            Closing {
                code: ErrorCode::ServerDraining,
                reason: "starting",
                versions: false,
            },
        ],
    },
    Case {
        name: "a revoked session is closed with unauthenticated",
        setup: Setup::Revocations,
        open: Open::Stream,
        on: ALL,
        steps: &[
            Hello(Token::User, VERSION),
            Welcome,
            Logout,
            Closing {
                code: ErrorCode::Unauthenticated,
                reason: "revoked",
                versions: false,
            },
        ],
    },
];

#[tokio::test]
async fn native_quic() {
    run(Quic).await;
}

#[tokio::test]
async fn webtransport() {
    run(WebTransport).await;
}

#[tokio::test]
async fn websocket() {
    run(WebSocket).await;
}

/// A gateway that has just started has not loaded the backend's token keys yet: a Hello that
/// comes then waits for them and is welcomed (a browser reconnecting to a restarted gateway
/// was refused `unauthenticated` here, and gave up for good).
#[tokio::test]
async fn a_hello_before_the_token_keys_load_waits_for_them() {
    for kind in TransportKind::ALL {
        let label = format!("{kind}: a Hello before the keys load");
        haberci_testkit::labelled(label, hello_before_keys(kind)).await;
    }
}

async fn hello_before_keys(kind: TransportKind) {
    let keys = Arc::new(haberci_token::KeySet::generate("later").unwrap());
    let jwks = Arc::new(LateJwks::default());
    let router = axum::Router::new()
        .route(
            "/v1/auth/jwks",
            axum::routing::get({
                let (keys, jwks) = (keys.clone(), jwks.clone());
                move || async move { jwks.answer(&keys) }
            }),
        )
        .route("/readyz", axum::routing::get(|| async { "ok" }));
    let backend = support::serve_router(router).await;
    let stack = Stack::builder()
        .backend(Backend::At(backend))
        .configure(|config| config.session.hello_timeout = Duration::from_secs(30))
        .start()
        .await;
    let user = uuid::Uuid::now_v7();
    let now = time::OffsetDateTime::now_utc().unix_timestamp();
    let token = keys.sign(&haberci_token::Claims::new(
        user,
        uuid::Uuid::now_v7(),
        now,
        600,
    ));
    let mut conn = Conn::open(&stack, kind, Open::Stream).await;
    conn.write(&support::hello(&token, VERSION)).await;
    // The Hello is read and waits for the keys, which the backend does not give yet.
    let held = async {
        while stack.gateway.keys.waiting() == 0 {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    };
    tokio::time::timeout(haberci_testkit::TIMEOUT, held)
        .await
        .expect("the Hello waits for the keys");
    assert!(jwks.asked() > 0);
    assert!(!stack.gateway.keys.is_loaded());
    // Not ready meanwhile, though its backend is: a balancer sends nobody here yet.
    let ready = support::request(&stack, Version::Http1, support::get("/readyz")).await;
    assert_eq!(ready.status, 503);
    assert_eq!(ready.json()["backend"], "ok");
    assert_eq!(ready.json()["keys"], "loading");
    jwks.release();
    match conn.read().await {
        ServerFrame::Welcome(welcome) => assert_eq!(welcome.user_id.as_uuid(), user),
        other => panic!("expected Welcome, got {other:?}"),
    }
    let ready = support::request(&stack, Version::Http1, support::get("/readyz")).await;
    assert_eq!(ready.status, 200);
    assert_eq!(ready.json()["keys"], "ok");
}

/// A backend's JWKS route that answers `503` until released.
#[derive(Default)]
struct LateJwks {
    released: std::sync::atomic::AtomicBool,
    asked: tokio::sync::watch::Sender<u32>,
}

impl LateJwks {
    fn answer(&self, keys: &haberci_token::KeySet) -> axum::response::Response {
        use axum::response::IntoResponse;
        self.asked.send_modify(|n| *n += 1);
        if self.released.load(std::sync::atomic::Ordering::SeqCst) {
            axum::Json(keys.jwks()).into_response()
        } else {
            http::StatusCode::SERVICE_UNAVAILABLE.into_response()
        }
    }

    /// How many times the JWKS was asked for.
    fn asked(&self) -> u32 {
        *self.asked.borrow()
    }

    fn release(&self) {
        self.released
            .store(true, std::sync::atomic::Ordering::SeqCst);
    }
}

/// Every row that applies to `kind`, one after another, each on a connection of its own.
async fn run(kind: TransportKind) {
    let mut stacks: HashMap<Setup, Arc<Stack>> = HashMap::new();
    for case in CASES.iter().filter(|case| case.on.contains(&kind)) {
        let stack = match stacks.get(&case.setup) {
            Some(stack) => stack.clone(),
            None => {
                let stack = Arc::new(case.setup.start().await);
                stacks.insert(case.setup, stack.clone());
                stack
            }
        };
        let label = format!("{kind}: {}", case.name);
        haberci_testkit::labelled(label, play(case, kind, stack)).await;
    }
}

impl Setup {
    async fn start(self) -> Stack {
        match self {
            Setup::Api => Stack::start(Backend::Api).await,
            Setup::Revocations => Stack::builder().revocations().start().await,
            Setup::ShortHelloTimeout => {
                Stack::builder()
                    .backend(Backend::Down)
                    .configure(|config| config.session.hello_timeout = SHORT_HELLO_TIMEOUT)
                    .start()
                    .await
            }
        }
    }
}

async fn play(case: &'static Case, kind: TransportKind, stack: Arc<Stack>) {
    let needs_user = case
        .steps
        .iter()
        .any(|step| matches!(step, Hello(Token::User, _) | Logout | Welcome));
    let registered = match needs_user {
        true => Some(users::register(stack.backend, "hs").await),
        false => None,
    };
    let user = || registered.as_ref().expect("a registered user");
    let mut conn = Conn::open(&stack, kind, case.open).await;
    let mut last_send = None;
    for step in case.steps {
        match *step {
            Hello(token, version) => {
                let token = match token {
                    Token::User => user().token.as_str(),
                    Token::Garbage => "not.a.token",
                };
                conn.write(&support::hello(token, version)).await;
            }
            Ping(nonce) => {
                conn.write(&ClientFrame::Ping(haberci_wire::Ping { nonce }))
                    .await
            }
            SendText => {
                let client_msg_id = ClientMsgId::new(uuid::Uuid::now_v7()).unwrap();
                last_send = Some(client_msg_id);
                conn.write(&ClientFrame::Send(SendMessage {
                    client_msg_id,
                    recipient: Recipient::User(UserId::new(uuid::Uuid::now_v7()).unwrap()),
                    kind: MessageKind::Text,
                    content: "hello".into(),
                    media: None,
                }))
                .await;
            }
            Raw(bytes) => conn.write_raw(bytes).await,
            Oversized => conn.write_oversized().await,
            Binary(size) => conn.write_raw(&vec![0u8; size]).await,
            Fragmented(size) => conn.write_fragmented(size).await,
            Announce(size) => conn.announce(size).await,
            Truncated => conn.write_truncated().await,
            EmptyHello => conn.write_raw(&empty_hello(&conn)).await,
            Text(text) => conn.write_text(text).await,
            Logout => users::logout(stack.backend, &user().token).await,
            Welcome => match conn.read().await {
                ServerFrame::Welcome(welcome) => {
                    assert_eq!(welcome.user_id, user().id);
                    assert_eq!(welcome.protocol_version, VERSION);
                }
                other => panic!("expected Welcome, got {other:?}"),
            },
            Pong(nonce) => assert_eq!(
                conn.read().await,
                ServerFrame::Pong(haberci_wire::Pong { nonce })
            ),
            Unavailable => match conn.read().await {
                ServerFrame::Error(error) => {
                    assert_eq!(error.code, ErrorCode::Unavailable);
                    assert_eq!(error.client_msg_id, last_send);
                }
                other => panic!("expected Error(unavailable), got {other:?}"),
            },
            Closing {
                code,
                reason,
                versions,
            } => {
                let closing = conn.expect_closing(code).await;
                assert!(closing.reason.contains(reason), "{}", closing.reason);
                if versions {
                    assert_eq!(closing.supported_versions, haberci_wire::SUPPORTED_VERSIONS);
                }
            }
            Closed(code) => conn.expect_closed(code).await,
        }
    }
}

/// A Hello with an empty access token, as the transport carries it: the golden vector.
fn empty_hello(conn: &Conn) -> Vec<u8> {
    let stream = include_bytes!("../../../wire/tests/vectors/malformed_hello_empty_token.bin");
    match conn {
        // A WebSocket message is the body without its one-byte length prefix.
        Conn::WebSocket(_) => stream[1..].to_vec(),
        _ => stream.to_vec(),
    }
}

/// One transport's client, as a row's steps drive it.
enum Conn {
    Quic(Native),
    QuicNoStream(QuicClient),
    WebTransport(WtStream),
    WebTransportNoStream(Wt),
    // Boxed: a WebSocket stream is several times the size of the others.
    WebSocket(Box<websocket::Socket>),
}

impl Conn {
    async fn open(stack: &Stack, kind: TransportKind, open: Open) -> Conn {
        match (kind, open) {
            (Quic, Open::Stream) => Conn::Quic(Native::open(stack).await),
            (Quic, Open::NoStream) => Conn::QuicNoStream(
                QuicClient::connect(stack.gateway_udp, support::roots(stack), haberci_wire::ALPN)
                    .await
                    .unwrap(),
            ),
            (WebTransport, Open::Stream) => Conn::WebTransport(WtStream::open(stack).await),
            (WebTransport, Open::NoStream) => Conn::WebTransportNoStream(Wt::connect(stack).await),
            (WebSocket, Open::Stream) => Conn::WebSocket(Box::new(websocket::open(stack).await)),
            (WebSocket, Open::NoStream) => panic!("a WebSocket is its stream"),
        }
    }

    async fn write(&mut self, frame: &ClientFrame) {
        match self {
            Conn::Quic(native) => native.write(frame).await,
            Conn::WebTransport(wt) => wt.write(frame).await,
            Conn::WebSocket(socket) => websocket::write(socket, frame).await,
            _ => panic!("no stream to write on"),
        }
    }

    async fn write_raw(&mut self, bytes: &[u8]) {
        match self {
            Conn::Quic(native) => native.write_bytes(bytes).await,
            Conn::WebTransport(wt) => wt.write_bytes(bytes).await,
            Conn::WebSocket(socket) => socket
                .send(Message::Binary(Bytes::copy_from_slice(bytes)))
                .await
                .unwrap(),
            _ => panic!("no stream to write on"),
        }
    }

    async fn write_oversized(&mut self) {
        let size = haberci_wire::DEFAULT_MAX_FRAME_SIZE + 1;
        match self {
            Conn::WebSocket(_) => self.write_raw(&vec![0u8; size]).await,
            _ => {
                let mut prefix = BytesMut::new();
                let mut value = size as u64;
                while value >= 0x80 {
                    prefix.extend_from_slice(&[(value as u8) | 0x80]);
                    value >>= 7;
                }
                prefix.extend_from_slice(&[value as u8]);
                self.write_raw(&prefix).await;
            }
        }
    }

    async fn write_fragmented(&mut self, size: usize) {
        use tokio_tungstenite::tungstenite::protocol::frame::Frame;
        use tokio_tungstenite::tungstenite::protocol::frame::coding::{Data, OpCode};
        let Conn::WebSocket(socket) = self else {
            panic!("only a WebSocket has fragments")
        };
        let piece = size / 3;
        for (i, opcode) in [Data::Binary, Data::Continue, Data::Continue]
            .into_iter()
            .enumerate()
        {
            let frame = Frame::message(vec![0u8; piece], OpCode::Data(opcode), i == 2);
            socket.send(Message::Frame(frame)).await.unwrap();
        }
    }

    /// RFC 6455 5.2: FIN + binary, masked, a 64-bit length, the mask key; no payload.
    async fn announce(&mut self, size: u64) {
        use tokio::io::AsyncWriteExt;
        let Conn::WebSocket(socket) = self else {
            panic!("only a WebSocket has frame headers")
        };
        let mut header = vec![0x82, 0x80 | 127];
        header.extend_from_slice(&size.to_be_bytes());
        header.extend_from_slice(&[1, 2, 3, 4]);
        let tls = socket.get_mut();
        tls.write_all(&header).await.unwrap();
        tls.flush().await.unwrap();
    }

    async fn write_truncated(&mut self) {
        let mut ping = BytesMut::new();
        let frame = ClientFrame::Ping(haberci_wire::Ping { nonce: 1 });
        haberci_wire::encode_delimited(&frame, haberci_wire::DEFAULT_MAX_FRAME_SIZE, &mut ping)
            .unwrap();
        let cut = &ping[..ping.len() - 1];
        match self {
            Conn::Quic(native) => native.finish_with(cut).await,
            Conn::WebTransport(wt) => wt.finish_with(cut).await,
            _ => panic!("only a stream can end inside a frame"),
        }
    }

    async fn write_text(&mut self, text: &str) {
        match self {
            Conn::WebSocket(socket) => socket.send(Message::Text(text.into())).await.unwrap(),
            _ => panic!("only a WebSocket has text messages"),
        }
    }

    async fn read(&mut self) -> ServerFrame {
        match self {
            Conn::Quic(native) => native.read().await,
            Conn::WebTransport(wt) => wt.read().await,
            Conn::WebSocket(socket) => match websocket::read(socket).await {
                Ok(frame) => frame,
                Err(close) => panic!("expected a frame, got the close {close:?}"),
            },
            _ => panic!("no stream to read from"),
        }
    }

    async fn expect_closing(&mut self, code: ErrorCode) -> haberci_wire::Closing {
        match self {
            Conn::Quic(native) => native.expect_closing(code).await,
            Conn::WebTransport(wt) => wt.expect_closing(code).await,
            Conn::WebSocket(socket) => websocket::expect_closing(socket, code).await,
            _ => panic!("no stream to read a Closing from"),
        }
    }

    async fn expect_closed(&mut self, code: ErrorCode) {
        match self {
            Conn::QuicNoStream(client) => {
                support::expect_quic_close(&client.connection, code).await
            }
            Conn::WebTransportNoStream(wt) => {
                support::expect_quic_close(&wt.quic.connection, code).await
            }
            _ => panic!("a close without a frame is for connections without a stream"),
        }
    }
}
