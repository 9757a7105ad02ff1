//! One QUIC endpoint, dispatched by ALPN: `h3` is HTTP/3 (tested in `http_versions`),
//! `haberci/1` reaches the native path, anything else is refused in the TLS handshake.

use haberci_testkit::{Backend, Stack, TIMEOUT};
use haberci_wire::ErrorCode;
use quinn::{ConnectionError, VarInt};

use crate::support::{self, QuicClient};

#[tokio::test]
async fn native_alpn_reaches_the_native_path() {
    // The native path waits for the client's stream; opening none ends in `idle_timeout`.
    let stack = Stack::builder()
        .backend(Backend::Down)
        .configure(|config| {
            config.session.hello_timeout = std::time::Duration::from_millis(200);
        })
        .start()
        .await;
    let roots = support::roots(&stack);
    let client = QuicClient::connect(stack.gateway_udp, roots, b"haberci/1")
        .await
        .expect("handshake with haberci/1 succeeds");
    let alpn = haberci_gateway::edge::quic::negotiated_alpn(&client.connection);
    assert_eq!(alpn.as_deref(), Some(&b"haberci/1"[..]));
    let closed = tokio::time::timeout(TIMEOUT, client.connection.closed())
        .await
        .expect("closed in time");
    match closed {
        ConnectionError::ApplicationClosed(close) => {
            assert_eq!(
                close.error_code,
                VarInt::from_u64(ErrorCode::IdleTimeout.quic_code()).unwrap()
            );
        }
        other => panic!("expected an application close, got {other:?}"),
    }
}

#[tokio::test]
async fn unknown_alpn_is_refused_in_the_handshake() {
    let stack = Stack::start(Backend::Down).await;
    let roots = support::roots(&stack);
    let err = match QuicClient::connect(stack.gateway_udp, roots, b"bogus/9").await {
        Ok(_) => panic!("a handshake offering only an unknown ALPN must fail"),
        Err(err) => err,
    };
    match err {
        ConnectionError::ConnectionClosed(close) => {
            // TLS alert 120 (no_application_protocol) carried as QUIC CRYPTO_ERROR 0x100 + 120.
            assert_eq!(
                close.error_code,
                quinn::TransportErrorCode::crypto(120),
                "{close:?}"
            );
        }
        other => panic!("expected the server to close the handshake, got {other:?}"),
    }
}
