//! The WebTransport transport (`CONNECT /v1/rt` over HTTP/3) through real sockets: the same
//! session as native QUIC on one bidirectional stream, typing as datagrams, close codes = the
//! protocol's QUIC codes, and plain HTTP/3 still served on the same endpoint. Its handshake
//! cases are rows of [`crate::handshake`].
//!
//! Two clients: web-transport-quinn's `Session` (a real WebTransport client library) for the
//! handshake and refusals, and a client driven by hand on raw quinn with the same library's
//! protocol encoding where a test checks the QUIC close code: `Session` closes the connection
//! itself as soon as the CONNECT stream fails, which races the server's close code.

use bytes::BytesMut;
use haberci_testkit::{Backend, Stack, TIMEOUT, User, users};
use haberci_wire::{
    ClientFrame, ClientTyping, ConversationId, ErrorCode, Frame, FrameDecoder, Ping, Pong,
    ServerFrame, TypingState,
};
use quinn::VarInt;
use web_transport_quinn::{ClientError, ConnectError, proto};

use crate::support::{self, H3Client, QuicClient};

fn url(stack: &Stack, path: &str) -> url::Url {
    url::Url::parse(&format!(
        "https://localhost:{}{path}",
        stack.gateway_udp.port()
    ))
    .unwrap()
}

/// Opens a session on `path` with web-transport-quinn's client over a fresh QUIC connection
/// (ALPN h3) that trusts the test CA.
async fn connect(
    stack: &Stack,
    path: &str,
) -> Result<(QuicClient, web_transport_quinn::Session), ClientError> {
    let roots = support::roots(stack);
    let quic = QuicClient::connect(stack.gateway_udp, roots, b"h3")
        .await
        .unwrap();
    let session = tokio::time::timeout(
        TIMEOUT,
        web_transport_quinn::Session::connect(quic.connection.clone(), url(stack, path)),
    )
    .await
    .expect("CONNECT answered in time")?;
    Ok((quic, session))
}

/// Sends an extended CONNECT (`:protocol = webtransport`) on a new request stream; returns the
/// stream and the response status.
async fn send_connect(
    connection: &quinn::Connection,
    url: url::Url,
) -> (quinn::SendStream, quinn::RecvStream, http::StatusCode) {
    tokio::time::timeout(TIMEOUT, async {
        let (mut send, mut recv) = connection.open_bi().await.unwrap();
        proto::ConnectRequest::new(url)
            .write(&mut send)
            .await
            .unwrap();
        let status = match proto::ConnectResponse::read(&mut recv).await {
            Ok(response) => response.status,
            Err(proto::ConnectError::WrongStatus(Some(status))) => status,
            Err(err) => panic!("no CONNECT response: {err:?}"),
        };
        (send, recv, status)
    })
    .await
    .expect("CONNECT answered in time")
}

/// A session driven by hand: its QUIC connection is left for the server to close.
pub struct Wt {
    pub quic: QuicClient,
    session_id: u64,
    // Closing either would end the session: kept for its life.
    _control: quinn::SendStream,
    _connect: (quinn::SendStream, quinn::RecvStream),
}

/// A session's one bidirectional stream.
pub struct WtStream {
    wt: Wt,
    send: quinn::SendStream,
    recv: quinn::RecvStream,
    decoder: FrameDecoder,
    pending: Vec<ServerFrame>,
}

impl Wt {
    /// SETTINGS (WebTransport, datagrams), then `CONNECT /v1/rt` → 200.
    pub async fn connect(stack: &Stack) -> Wt {
        let roots = support::roots(stack);
        let quic = QuicClient::connect(stack.gateway_udp, roots, b"h3")
            .await
            .unwrap();
        let mut control = quic.connection.open_uni().await.unwrap();
        let mut settings = proto::Settings::default();
        settings.enable_webtransport(1);
        settings.write(&mut control).await.unwrap();
        let (send, recv, status) = send_connect(
            &quic.connection,
            url(stack, haberci_wire::WEBTRANSPORT_PATH),
        )
        .await;
        assert_eq!(status, 200);
        Wt {
            session_id: VarInt::from(send.id()).into_inner(),
            quic,
            _control: control,
            _connect: (send, recv),
        }
    }

    /// Opens the session's stream (its header: WEBTRANSPORT_STREAM, session id).
    pub async fn open(self) -> WtStream {
        let (mut send, recv) = self.quic.connection.open_bi().await.unwrap();
        let mut header = BytesMut::new();
        proto::Frame::WEBTRANSPORT.encode(&mut header);
        proto::VarInt::from_u64(self.session_id)
            .unwrap()
            .encode(&mut header);
        send.write_all(&header).await.unwrap();
        WtStream {
            wt: self,
            send,
            recv,
            decoder: FrameDecoder::new(haberci_wire::DEFAULT_MAX_FRAME_SIZE),
            pending: Vec::new(),
        }
    }
}

impl WtStream {
    pub async fn open(stack: &Stack) -> WtStream {
        Wt::connect(stack).await.open().await
    }

    pub async fn write(&mut self, frame: &ClientFrame) {
        let mut buf = BytesMut::new();
        haberci_wire::encode_delimited(frame, haberci_wire::DEFAULT_MAX_FRAME_SIZE, &mut buf)
            .unwrap();
        self.write_bytes(&buf).await;
    }

    /// Bytes on the stream, then its end (FIN).
    pub async fn finish_with(&mut self, bytes: &[u8]) {
        self.send.write_all(bytes).await.unwrap();
        self.send.finish().unwrap();
    }

    /// Bytes on the session's stream as they are, framed or not.
    pub async fn write_bytes(&mut self, bytes: &[u8]) {
        self.send.write_all(bytes).await.unwrap();
    }

    /// Sends a frame as one datagram: RFC 9297's quarter stream id of the CONNECT stream, then
    /// the frame body with no length prefix (docs/PROTOCOL.md).
    fn datagram(&self, frame: &ClientFrame) {
        let mut datagram = BytesMut::new();
        proto::VarInt::from_u64(self.wt.session_id / 4)
            .unwrap()
            .encode(&mut datagram);
        haberci_wire::encode_body(frame, haberci_wire::DEFAULT_MAX_FRAME_SIZE, &mut datagram)
            .unwrap();
        self.wt
            .quic
            .connection
            .send_datagram(datagram.freeze())
            .unwrap();
    }

    pub async fn read(&mut self) -> ServerFrame {
        tokio::time::timeout(TIMEOUT, async {
            loop {
                if !self.pending.is_empty() {
                    return self.pending.remove(0);
                }
                let chunk = self
                    .recv
                    .read_chunk(64 * 1024, true)
                    .await
                    .unwrap()
                    .expect("the server sends a frame before finishing");
                let mut bytes = chunk.bytes;
                while let Some(body) = self.decoder.decode(&mut bytes).unwrap() {
                    self.pending.push(ServerFrame::decode(body).unwrap());
                }
            }
        })
        .await
        .expect("a frame in time")
    }

    async fn hello(&mut self, token: &str) -> haberci_wire::Welcome {
        self.write(&support::hello(token, haberci_wire::PROTOCOL_VERSION))
            .await;
        match self.read().await {
            ServerFrame::Welcome(welcome) => welcome,
            other => panic!("expected Welcome, got {other:?}"),
        }
    }

    async fn ping(&mut self, nonce: u32) {
        self.write(&ClientFrame::Ping(Ping { nonce })).await;
        assert_eq!(self.read().await, ServerFrame::Pong(Pong { nonce }));
    }

    /// The Closing frame, then the QUIC close code it matches.
    pub async fn expect_closing(&mut self, code: ErrorCode) -> haberci_wire::Closing {
        let closing = match self.read().await {
            ServerFrame::Closing(closing) => closing,
            other => panic!("expected Closing({code:?}), got {other:?}"),
        };
        assert_eq!(closing.code, code);
        support::expect_quic_close(&self.wt.quic.connection, code).await;
        closing
    }
}

fn typing() -> ClientFrame {
    ClientFrame::Typing(ClientTyping {
        conversation_id: ConversationId::new(uuid::Uuid::now_v7()).unwrap(),
        state: TypingState::Started,
    })
}

/// Interop with a WebTransport client library (the handshake cases, the Send included, run on
/// the hand-driven client in [`crate::handshake`]).
#[tokio::test]
async fn a_webtransport_library_client_opens_a_session_and_pings() {
    let stack = Stack::start(Backend::Api).await;
    let User {
        id: user_id, token, ..
    } = users::register(stack.backend, "wt").await;
    let (_quic, session) = connect(&stack, haberci_wire::WEBTRANSPORT_PATH)
        .await
        .unwrap();
    assert!(
        session.max_datagram_size() > 0,
        "the gateway takes datagrams"
    );
    let (mut send, mut recv) = session.open_bi().await.unwrap();
    let mut decoder = FrameDecoder::new(haberci_wire::DEFAULT_MAX_FRAME_SIZE);
    let mut pending = Vec::new();
    let mut exchange = async |frame: ClientFrame| -> ServerFrame {
        let mut buf = BytesMut::new();
        haberci_wire::encode_delimited(&frame, haberci_wire::DEFAULT_MAX_FRAME_SIZE, &mut buf)
            .unwrap();
        send.write_all(&buf).await.unwrap();
        tokio::time::timeout(TIMEOUT, async {
            while pending.is_empty() {
                let chunk = recv.read_chunk(64 * 1024, true).await.unwrap().unwrap();
                let mut bytes = chunk.bytes;
                while let Some(body) = decoder.decode(&mut bytes).unwrap() {
                    pending.push(ServerFrame::decode(body).unwrap());
                }
            }
            pending.remove(0)
        })
        .await
        .expect("a frame in time")
    };
    let ServerFrame::Welcome(welcome) =
        exchange(support::hello(&token, haberci_wire::PROTOCOL_VERSION)).await
    else {
        panic!("expected Welcome")
    };
    assert_eq!(welcome.user_id, user_id);
    assert_eq!(welcome.protocol_version, haberci_wire::PROTOCOL_VERSION);
    assert_eq!(
        exchange(ClientFrame::Ping(Ping { nonce: 7 })).await,
        ServerFrame::Pong(Pong { nonce: 7 })
    );
}

#[tokio::test]
async fn a_typing_datagram_is_taken_and_a_reliable_one_is_bad_frame() {
    let stack = Stack::start(Backend::Api).await;
    let User { token, .. } = users::register(stack.backend, "wt").await;
    let mut wt = WtStream::open(&stack).await;
    wt.hello(&token).await;
    wt.datagram(&typing());
    wt.ping(1).await;
    // docs/PROTOCOL.md: a frame that must arrive reliably is refused as a datagram. Sent after
    // the typing datagram, it also shows that one was read and taken without a close.
    wt.datagram(&ClientFrame::Ping(Ping { nonce: 2 }));
    let closing = wt.expect_closing(ErrorCode::BadFrame).await;
    assert!(closing.reason.contains("datagram"), "{}", closing.reason);
}

#[tokio::test]
async fn plain_http3_is_served_alongside_and_on_a_session_connection() {
    let stack = Stack::start(Backend::Api).await;
    let User { token, .. } = users::register(stack.backend, "wt").await;
    let mut wt = WtStream::open(&stack).await;
    wt.hello(&token).await;
    // Another connection on the same endpoint.
    let roots = support::roots(&stack);
    let mut h3 = H3Client::connect(stack.gateway_udp, roots).await;
    let reply = h3.send(support::get("/healthz")).await;
    assert_eq!(reply.status, 200);
    assert_eq!(reply.json()["status"], "ok");
    // A second WebTransport session on the session's own connection: one per connection.
    let (_, _, status) = send_connect(
        &wt.wt.quic.connection,
        url(&stack, haberci_wire::WEBTRANSPORT_PATH),
    )
    .await;
    assert_eq!(status, 429);
    wt.ping(1).await;
}

#[tokio::test]
async fn connect_to_another_path_is_404() {
    let stack = Stack::start(Backend::Down).await;
    match connect(&stack, "/v1/elsewhere").await {
        Err(ClientError::HttpError(ConnectError::ProtoError(
            proto::ConnectError::WrongStatus(status),
        ))) => assert_eq!(status, Some(http::StatusCode::NOT_FOUND)),
        Err(other) => panic!("expected 404, got {other:?}"),
        Ok(_) => panic!("a session on another path must be refused"),
    }
}
