//! The WebSocket transport (`/v1/ws`, subprotocol `haberci.v1`) through real TLS sockets: the
//! same session as native QUIC, with close codes 4000 + the protocol code.

use std::sync::Arc;

use bytes::Bytes;
use futures::{SinkExt, StreamExt};
use haberci_wire::websocket::MessageType;
use haberci_wire::{ClientFrame, ErrorCode, Hello, Ping, Pong, ServerFrame};
use rustls_pki_types::ServerName;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;

use crate::support::{self, Stack, TIMEOUT};

pub type Socket =
    tokio_tungstenite::WebSocketStream<tokio_rustls::client::TlsStream<tokio::net::TcpStream>>;

pub async fn connect(
    stack: &Stack,
    subprotocol: Option<&str>,
) -> Result<Socket, tokio_tungstenite::tungstenite::Error> {
    let roots = support::ca_roots(&[&stack.certs.ca_cert()]);
    let config = Arc::new(support::client_tls(roots, &[b"http/1.1"]));
    let tcp = tokio::net::TcpStream::connect(stack.gateway_tcp)
        .await
        .unwrap();
    let tls = tokio_rustls::TlsConnector::from(config)
        .connect(ServerName::try_from("localhost").unwrap(), tcp)
        .await
        .unwrap();
    let mut request = "wss://localhost/v1/ws".into_client_request().unwrap();
    if let Some(protocol) = subprotocol {
        request
            .headers_mut()
            .insert("sec-websocket-protocol", protocol.parse().unwrap());
    }
    let (socket, response) = tokio_tungstenite::client_async(request, tls).await?;
    assert_eq!(
        response.headers()["sec-websocket-protocol"],
        haberci_wire::WEBSOCKET_SUBPROTOCOL
    );
    Ok(socket)
}

pub async fn write(socket: &mut Socket, frame: &ClientFrame) {
    let bytes =
        haberci_wire::websocket::encode(frame, haberci_wire::DEFAULT_MAX_FRAME_SIZE).unwrap();
    socket.send(Message::Binary(bytes)).await.unwrap();
}

/// The next server frame, or the close frame's code.
pub async fn read(socket: &mut Socket) -> Result<ServerFrame, Option<u16>> {
    let message = tokio::time::timeout(TIMEOUT, socket.next())
        .await
        .expect("a message in time");
    match message {
        Some(Ok(Message::Binary(payload))) => Ok(haberci_wire::websocket::decode(
            MessageType::Binary,
            payload,
            haberci_wire::DEFAULT_MAX_FRAME_SIZE,
        )
        .unwrap()),
        Some(Ok(Message::Close(frame))) => Err(frame.map(|f| u16::from(f.code))),
        other => panic!("unexpected {other:?}"),
    }
}

/// A Closing frame with `code`, then a close with the matching WebSocket code.
async fn expect_closing(socket: &mut Socket, code: ErrorCode) {
    match read(socket).await {
        Ok(ServerFrame::Closing(closing)) => assert_eq!(closing.code, code),
        other => panic!("expected Closing({code:?}), got {other:?}"),
    }
    assert_eq!(
        read(socket).await.unwrap_err(),
        Some(code.websocket_close_code())
    );
}

pub fn hello(token: &str) -> ClientFrame {
    ClientFrame::Hello(Hello {
        access_token: token.to_owned(),
        protocol_version: haberci_wire::PROTOCOL_VERSION,
        client_name: "ws-test".into(),
        client_version: "0".into(),
        resume: Vec::new(),
        max_error_code: haberci_wire::LAST_CODE,
    })
}

#[tokio::test]
async fn a_registered_user_opens_a_session_and_pings() {
    let stack = crate::native::stack_with_keys().await;
    let (user_id, token) = crate::native::register(&stack).await;
    let mut socket = connect(&stack, Some("haberci.v1")).await.unwrap();
    write(&mut socket, &hello(&token)).await;
    let Ok(ServerFrame::Welcome(welcome)) = read(&mut socket).await else {
        panic!("expected Welcome")
    };
    assert_eq!(welcome.user_id.to_string(), user_id);
    write(&mut socket, &ClientFrame::Ping(Ping { nonce: 3 })).await;
    assert_eq!(
        read(&mut socket).await.unwrap(),
        ServerFrame::Pong(Pong { nonce: 3 })
    );
}

/// Regression: a client's Close was met with a dropped TCP connection instead of the answering
/// Close that RFC 6455 5.5.1 requires.
#[tokio::test]
async fn a_client_close_is_answered_with_a_close() {
    let stack = crate::native::stack_with_keys().await;
    let (_, token) = crate::native::register(&stack).await;
    let mut socket = connect(&stack, Some("haberci.v1")).await.unwrap();
    write(&mut socket, &hello(&token)).await;
    assert!(matches!(
        read(&mut socket).await,
        Ok(ServerFrame::Welcome(_))
    ));
    socket.close(None).await.unwrap();
    assert_eq!(
        read(&mut socket).await.unwrap_err(),
        None,
        "the server's Close comes back"
    );
}

#[tokio::test]
async fn a_text_message_is_refused_with_its_close_code() {
    let stack = crate::native::stack_with_keys().await;
    let mut socket = connect(&stack, Some("haberci.v1")).await.unwrap();
    socket.send(Message::Text("hello".into())).await.unwrap();
    expect_closing(&mut socket, ErrorCode::TextMessageRefused).await;
}

#[tokio::test]
async fn a_bad_token_is_closed_with_unauthenticated() {
    let stack = crate::native::stack_with_keys().await;
    let mut socket = connect(&stack, Some("haberci.v1")).await.unwrap();
    write(&mut socket, &hello("not.a.token")).await;
    expect_closing(&mut socket, ErrorCode::Unauthenticated).await;
}

#[tokio::test]
async fn an_oversized_frame_is_closed_with_frame_too_large() {
    let stack = crate::native::stack_with_keys().await;
    let mut socket = connect(&stack, Some("haberci.v1")).await.unwrap();
    let big = Bytes::from(vec![0u8; haberci_wire::DEFAULT_MAX_FRAME_SIZE + 1]);
    socket.send(Message::Binary(big)).await.unwrap();
    expect_closing(&mut socket, ErrorCode::FrameTooLarge).await;
}

#[tokio::test]
async fn an_upgrade_without_the_subprotocol_is_refused() {
    let stack = crate::native::stack_with_keys().await;
    match connect(&stack, None).await {
        Err(tokio_tungstenite::tungstenite::Error::Http(response)) => {
            assert_eq!(response.status(), 400);
        }
        Err(other) => panic!("expected an HTTP refusal, got {other}"),
        Ok(_) => panic!("the upgrade must be refused"),
    }
}

#[tokio::test]
async fn a_revoked_session_is_closed_with_unauthenticated() {
    let stack = crate::native::stack_with_revocations().await;
    let (_, token) = crate::native::register(&stack).await;
    let mut socket = connect(&stack, Some("haberci.v1")).await.unwrap();
    write(&mut socket, &hello(&token)).await;
    assert!(matches!(
        read(&mut socket).await,
        Ok(ServerFrame::Welcome(_))
    ));
    crate::native::logout(&stack, &token).await;
    expect_closing(&mut socket, ErrorCode::Unauthenticated).await;
}
