//! The WebSocket transport (`/v1/ws`, subprotocol `haberci.v1`) through real TLS sockets: a
//! client written from docs/PROTOCOL.md, whose handshake cases are rows of [`crate::handshake`],
//! and what only a WebSocket has (the upgrade, the closing handshake).

use futures::{SinkExt, StreamExt};
use haberci_testkit::{Stack, TIMEOUT, User, tls, users};
use haberci_wire::websocket::MessageType;
use haberci_wire::{ClientFrame, Closing, ErrorCode, ServerFrame};
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;

use crate::support;

pub type Socket =
    tokio_tungstenite::WebSocketStream<tokio_rustls::client::TlsStream<tokio::net::TcpStream>>;

/// A close frame's code and reason.
pub type Close = (u16, String);

pub async fn connect(
    stack: &Stack,
    subprotocol: Option<&str>,
) -> Result<Socket, tokio_tungstenite::tungstenite::Error> {
    connect_from(stack, subprotocol, None).await
}

/// As [`connect`], from a browser page of `origin` when given.
pub async fn connect_from(
    stack: &Stack,
    subprotocol: Option<&str>,
    origin: Option<&str>,
) -> Result<Socket, tokio_tungstenite::tungstenite::Error> {
    let tls = tls::connect(stack.gateway_tcp, support::roots(stack), b"http/1.1")
        .await
        .unwrap();
    let mut request = format!("wss://localhost:{}/v1/ws", stack.gateway_tcp.port())
        .into_client_request()
        .unwrap();
    if let Some(origin) = origin {
        request
            .headers_mut()
            .insert("origin", origin.parse().unwrap());
    }
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

/// An upgraded socket with the protocol's subprotocol, nothing sent yet.
pub async fn open(stack: &Stack) -> Socket {
    connect(stack, Some(haberci_wire::WEBSOCKET_SUBPROTOCOL))
        .await
        .unwrap()
}

pub async fn write(socket: &mut Socket, frame: &ClientFrame) {
    let bytes =
        haberci_wire::websocket::encode(frame, haberci_wire::DEFAULT_MAX_FRAME_SIZE).unwrap();
    socket.send(Message::Binary(bytes)).await.unwrap();
}

/// The next server frame, or the close frame (`None` when it has no code).
pub async fn read(socket: &mut Socket) -> Result<ServerFrame, Option<Close>> {
    // The server's Pings (its probe of a reader) are answered by tungstenite as it reads.
    let message = loop {
        let message = tokio::time::timeout(TIMEOUT, socket.next())
            .await
            .expect("a message in time");
        if !matches!(message, Some(Ok(Message::Ping(_) | Message::Pong(_)))) {
            break message;
        }
    };
    match message {
        Some(Ok(Message::Binary(payload))) => Ok(haberci_wire::websocket::decode(
            MessageType::Binary,
            payload,
            haberci_wire::DEFAULT_MAX_FRAME_SIZE,
        )
        .unwrap()),
        Some(Ok(Message::Close(frame))) => {
            Err(frame.map(|f| (u16::from(f.code), f.reason.to_string())))
        }
        other => panic!("unexpected {other:?}"),
    }
}

/// A Closing frame with `code`, then a close with the matching WebSocket code (4000 + the
/// protocol code) and the code's name as the reason.
pub async fn expect_closing(socket: &mut Socket, code: ErrorCode) -> Closing {
    let closing = match read(socket).await {
        Ok(ServerFrame::Closing(closing)) => closing,
        other => panic!("expected Closing({code:?}), got {other:?}"),
    };
    assert_eq!(closing.code, code);
    assert_eq!(
        read(socket).await.unwrap_err(),
        Some((code.websocket_close_code(), code.name().to_owned()))
    );
    closing
}

/// Regression: a client's Close was met with a dropped TCP connection instead of the answering
/// Close that RFC 6455 5.5.1 requires.
#[tokio::test]
async fn a_client_close_is_answered_with_a_close() {
    let stack = Stack::start(haberci_testkit::Backend::Api).await;
    let User { token, .. } = users::register(stack.backend, "ws").await;
    let mut socket = open(&stack).await;
    write(
        &mut socket,
        &support::hello(&token, haberci_wire::PROTOCOL_VERSION),
    )
    .await;
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

/// WebSockets are not under CORS: a page of another site could open a session with its
/// visitor's token. The gateway's own pages and the CORS allow-list may; others get 403.
#[tokio::test]
async fn an_upgrade_from_a_foreign_page_is_refused_and_from_allowed_ones_accepted() {
    let stack = Stack::builder()
        .configure(|config| {
            config.http.cors =
                haberci_kit::http::CorsOrigins::list(&["https://app.example"]).unwrap()
        })
        .start()
        .await;
    let own = format!("https://localhost:{}", stack.gateway_tcp.port());
    let protocol = Some(haberci_wire::WEBSOCKET_SUBPROTOCOL);
    for origin in [None, Some(own.as_str()), Some("https://app.example")] {
        assert!(
            connect_from(&stack, protocol, origin).await.is_ok(),
            "{origin:?}"
        );
    }
    for origin in ["https://evil.example", "http://localhost", "null"] {
        match connect_from(&stack, protocol, Some(origin)).await {
            Err(tokio_tungstenite::tungstenite::Error::Http(response)) => {
                assert_eq!(response.status(), 403, "{origin}");
            }
            Err(other) => panic!("{origin}: expected an HTTP refusal, got {other}"),
            Ok(_) => panic!("{origin}: the upgrade must be refused"),
        }
    }
}

#[tokio::test]
async fn an_upgrade_without_the_subprotocol_is_refused() {
    let stack = Stack::start(haberci_testkit::Backend::Api).await;
    match connect(&stack, None).await {
        Err(tokio_tungstenite::tungstenite::Error::Http(response)) => {
            assert_eq!(response.status(), 400);
        }
        Err(other) => panic!("expected an HTTP refusal, got {other}"),
        Ok(_) => panic!("the upgrade must be refused"),
    }
}
