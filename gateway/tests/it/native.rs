//! The native QUIC transport (`haberci/1`) through real sockets: a user registered through the
//! real API opens a session with its access token; bad tokens, versions and bytes get their
//! codes from the code table, both as a `Closing` frame and as the QUIC close code.

use bytes::{Bytes, BytesMut};
use haberci_wire::{
    ClientFrame, ClientMsgId, ErrorCode, Frame, FrameDecoder, Hello, MessageKind, Ping, Recipient,
    SendMessage, ServerFrame, UserId,
};
use http_body_util::Full;
use quinn::{ConnectionError, VarInt};
use serde_json::json;

use crate::support::{self, QuicClient, Stack, TIMEOUT, Version};

/// A native session's stream.
pub struct Native {
    pub client: QuicClient,
    send: quinn::SendStream,
    recv: quinn::RecvStream,
    decoder: FrameDecoder,
    pending: Vec<ServerFrame>,
}

impl Native {
    pub async fn open(stack: &Stack) -> Native {
        Self::open_with(stack, quinn::TransportConfig::default()).await
    }

    /// A session whose client has its own QUIC transport settings.
    pub async fn open_with(stack: &Stack, transport: quinn::TransportConfig) -> Native {
        let roots = support::ca_roots(&[&stack.certs.ca_cert()]);
        let client =
            QuicClient::connect_with(stack.gateway_udp, roots, haberci_wire::ALPN, transport)
                .await
                .unwrap();
        let (send, recv) = client.connection.open_bi().await.unwrap();
        Native {
            client,
            send,
            recv,
            decoder: FrameDecoder::new(haberci_wire::DEFAULT_MAX_FRAME_SIZE),
            pending: Vec::new(),
        }
    }

    pub async fn write(&mut self, frame: &ClientFrame) {
        let mut buf = BytesMut::new();
        haberci_wire::encode_delimited(frame, haberci_wire::DEFAULT_MAX_FRAME_SIZE, &mut buf)
            .unwrap();
        self.send.write_all(&buf).await.unwrap();
    }

    pub async fn read(&mut self) -> ServerFrame {
        tokio::time::timeout(TIMEOUT, async {
            loop {
                if !self.pending.is_empty() {
                    return self.pending.remove(0);
                }
                // Ephemeral frames may come as datagrams.
                let chunk = tokio::select! {
                    chunk = self.recv.read_chunk(64 * 1024, true) => chunk,
                    datagram = self.client.connection.read_datagram() => {
                        let frame = haberci_wire::datagram::decode::<ServerFrame>(
                            datagram.unwrap(),
                            haberci_wire::DEFAULT_MAX_FRAME_SIZE,
                        );
                        self.pending.push(frame.unwrap());
                        continue;
                    }
                };
                let chunk = chunk
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

    /// The Closing frame, then the QUIC close code it matches.
    async fn expect_closing(&mut self, code: ErrorCode) -> haberci_wire::Closing {
        let ServerFrame::Closing(closing) = self.read().await else {
            panic!("expected Closing({code:?})")
        };
        assert_eq!(closing.code, code);
        let closed = tokio::time::timeout(TIMEOUT, self.client.connection.closed())
            .await
            .expect("closed in time");
        match closed {
            ConnectionError::ApplicationClosed(close) => {
                assert_eq!(
                    close.error_code,
                    VarInt::from_u64(code.quic_code()).unwrap()
                )
            }
            other => panic!("expected an application close, got {other:?}"),
        }
        closing
    }
}

pub fn hello(token: &str, version: u32) -> ClientFrame {
    ClientFrame::Hello(Hello {
        access_token: token.to_owned(),
        protocol_version: version,
        client_name: "gateway-test".into(),
        client_version: "0".into(),
        resume: Vec::new(),
        max_error_code: haberci_wire::LAST_CODE,
    })
}

/// Registers a fresh user through the gateway; returns (user id, access token).
pub async fn register(stack: &Stack) -> (String, String) {
    let random = uuid::Uuid::new_v4().simple().to_string();
    let username = format!("qn_{}", &random[..16]);
    let body = json!({
        "username": username,
        "email": format!("{username}@example.com"),
        "password": "correct horse battery staple",
        "displayName": "Native",
    });
    let request = http::Request::post("https://localhost/v1/auth/register")
        .header("content-type", "application/json")
        .body(Full::new(Bytes::from(body.to_string())))
        .unwrap();
    let reply = support::request(stack, Version::Http1, request).await;
    assert_eq!(reply.status, 201, "{}", reply.json());
    let json = reply.json();
    (
        json["user"]["id"].as_str().unwrap().to_owned(),
        json["tokens"]["accessToken"].as_str().unwrap().to_owned(),
    )
}

pub async fn stack_with_keys() -> Stack {
    let stack = support::start_real_with(|_| {}).await;
    tokio::time::timeout(TIMEOUT, stack.keys.loaded())
        .await
        .expect("the gateway loads the backend's JWKS");
    stack
}

#[tokio::test]
async fn a_registered_user_opens_a_session_and_pings() {
    let stack = stack_with_keys().await;
    let (user_id, token) = register(&stack).await;
    let mut native = Native::open(&stack).await;
    native
        .write(&hello(&token, haberci_wire::PROTOCOL_VERSION))
        .await;
    let ServerFrame::Welcome(welcome) = native.read().await else {
        panic!("expected Welcome")
    };
    assert_eq!(welcome.user_id.to_string(), user_id);
    assert_eq!(welcome.protocol_version, haberci_wire::PROTOCOL_VERSION);

    native.write(&ClientFrame::Ping(Ping { nonce: 7 })).await;
    assert_eq!(
        native.read().await,
        ServerFrame::Pong(haberci_wire::Pong { nonce: 7 })
    );

    // Messaging is not relayed yet (#6): a Send is answered, retryable, and nothing closes.
    let client_msg_id = ClientMsgId::new(uuid::Uuid::now_v7()).unwrap();
    native
        .write(&ClientFrame::Send(SendMessage {
            client_msg_id,
            recipient: Recipient::User(UserId::new(uuid::Uuid::now_v7()).unwrap()),
            kind: MessageKind::Text,
            content: "hello".into(),
            media: None,
        }))
        .await;
    let ServerFrame::Error(error) = native.read().await else {
        panic!("expected Error")
    };
    assert_eq!(error.code, ErrorCode::Unavailable);
    assert_eq!(error.client_msg_id, Some(client_msg_id));
    native.write(&ClientFrame::Ping(Ping { nonce: 8 })).await;
    assert_eq!(
        native.read().await,
        ServerFrame::Pong(haberci_wire::Pong { nonce: 8 })
    );
}

#[tokio::test]
async fn a_bad_token_is_closed_with_unauthenticated() {
    let stack = stack_with_keys().await;
    let mut native = Native::open(&stack).await;
    native.write(&hello("not.a.token", 1)).await;
    native.expect_closing(ErrorCode::Unauthenticated).await;
}

#[tokio::test]
async fn an_unsupported_version_is_closed_with_the_versions_spoken() {
    let stack = stack_with_keys().await;
    let (_, token) = register(&stack).await;
    let mut native = Native::open(&stack).await;
    native.write(&hello(&token, 99)).await;
    let closing = native.expect_closing(ErrorCode::UnsupportedVersion).await;
    assert_eq!(closing.supported_versions, haberci_wire::SUPPORTED_VERSIONS);
}

#[tokio::test]
async fn malformed_bytes_are_closed_with_bad_frame() {
    let stack = stack_with_keys().await;
    let mut native = Native::open(&stack).await;
    // A length prefix that never ends (11 continuation bytes).
    native.send.write_all(&[0xff; 11]).await.unwrap();
    native.expect_closing(ErrorCode::BadFrame).await;
}

#[tokio::test]
async fn a_frame_before_hello_is_closed_with_unauthenticated() {
    let stack = stack_with_keys().await;
    let mut native = Native::open(&stack).await;
    native.write(&ClientFrame::Ping(Ping { nonce: 1 })).await;
    native.expect_closing(ErrorCode::Unauthenticated).await;
}

/// A gateway that also follows revocations on the test Redis, with keys loaded and the
/// revocation subscription in place.
pub async fn stack_with_revocations() -> Stack {
    let stack = support::start_real_with(|config| {
        config.relay.redis_url = Some(support::env("HABERCI_TEST_REDIS_URL"));
    })
    .await;
    tokio::time::timeout(TIMEOUT, async {
        stack.keys.loaded().await;
        stack.revocations.subscribed().await;
    })
    .await
    .expect("keys loaded and revocations subscribed");
    stack
}

/// Logs the session out through the API (the backend announces the revocation).
pub async fn logout(stack: &Stack, token: &str) {
    let request = http::Request::post("https://localhost/v1/auth/logout")
        .header("authorization", format!("Bearer {token}"))
        .body(Full::new(Bytes::new()))
        .unwrap();
    let reply = support::request(stack, Version::Http1, request).await;
    assert_eq!(reply.status, 204, "{:?}", reply.body);
}

#[tokio::test]
async fn a_revoked_session_is_closed_with_unauthenticated() {
    let stack = stack_with_revocations().await;
    let (_, token) = register(&stack).await;
    let mut native = Native::open(&stack).await;
    native
        .write(&hello(&token, haberci_wire::PROTOCOL_VERSION))
        .await;
    assert!(matches!(native.read().await, ServerFrame::Welcome(_)));
    logout(&stack, &token).await;
    let closing = native.expect_closing(ErrorCode::Unauthenticated).await;
    assert!(closing.reason.contains("revoked"), "{}", closing.reason);
}
