//! TLS 1.3 session resumption: a client that reconnects with the ticket of its last connection
//! skips the certificate (no signature made, no chain sent or checked). 0-RTT stays refused.

use std::sync::Arc;

use haberci_testkit::{Backend, Stack, TIMEOUT, tls};
use rustls::HandshakeKind;
use rustls_pki_types::ServerName;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::support;

/// One HTTP/1.1 request on a new TLS connection; returns how the handshake went. Reading the
/// answer to its end also reads the tickets the server sent after the handshake.
async fn get_healthz(stack: &Stack, config: &Arc<rustls::ClientConfig>) -> HandshakeKind {
    let tcp = tokio::net::TcpStream::connect(stack.gateway_tcp)
        .await
        .unwrap();
    let mut tls = tokio_rustls::TlsConnector::from(config.clone())
        .connect(ServerName::try_from("localhost").unwrap(), tcp)
        .await
        .unwrap();
    let kind = tls.get_ref().1.handshake_kind().expect("handshake done");
    tls.write_all(b"GET /healthz HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")
        .await
        .unwrap();
    let mut answer = Vec::new();
    tokio::time::timeout(TIMEOUT, tls.read_to_end(&mut answer))
        .await
        .expect("answer in time")
        .unwrap();
    assert!(answer.starts_with(b"HTTP/1.1 "), "{answer:?}");
    kind
}

/// More clients than a server-side session cache would hold (rustls's default keeps 256
/// sessions, two per connection) come between a client's connections: a stateless ticket
/// still resumes, since the server keeps nothing per session.
const OTHER_CLIENTS: usize = 300;

#[tokio::test]
async fn a_tcp_client_that_reconnects_resumes_its_tls_session_however_many_came_between() {
    let stack = Stack::start(Backend::Down).await;
    let config = Arc::new(tls::client_config(support::roots(&stack), &[b"http/1.1"]));
    assert_eq!(get_healthz(&stack, &config).await, HandshakeKind::Full);
    assert_eq!(get_healthz(&stack, &config).await, HandshakeKind::Resumed);
    for _ in 0..OTHER_CLIENTS {
        // Another device, without the ticket: a full handshake.
        let other = Arc::new(tls::client_config(support::roots(&stack), &[b"http/1.1"]));
        let tcp = tokio::net::TcpStream::connect(stack.gateway_tcp)
            .await
            .unwrap();
        let tls = tokio_rustls::TlsConnector::from(other)
            .connect(ServerName::try_from("localhost").unwrap(), tcp)
            .await
            .unwrap();
        assert_eq!(tls.get_ref().1.handshake_kind(), Some(HandshakeKind::Full));
    }
    assert_eq!(get_healthz(&stack, &config).await, HandshakeKind::Resumed);
}

/// QUIC carries the same TLS 1.3 handshake: a client that reconnects with its ticket checks
/// no certificate, however many other clients came between.
#[tokio::test]
async fn a_quic_client_that_reconnects_resumes_however_many_came_between() {
    let stack = Stack::start(Backend::Down).await;
    let verifier = tls::CountingVerifier::new(support::roots(&stack));
    let mut tls = tls::client_config(support::roots(&stack), &[b"h3"]);
    tls.dangerous().set_certificate_verifier(verifier.clone());
    let endpoint = tls::quic_endpoint(tls, None);
    let target = std::net::SocketAddr::from(([127, 0, 0, 1], stack.gateway_udp.port()));
    let connect = |endpoint: &quinn::Endpoint| {
        let connecting = endpoint.connect(target, "localhost").unwrap();
        async move {
            tokio::time::timeout(TIMEOUT, connecting)
                .await
                .expect("handshake in time")
                .expect("handshake")
        }
    };
    // The tickets come after the handshake: an open stream's round trip waits for them.
    let hold = |connection: quinn::Connection| async move {
        let (mut send, mut recv) = connection.open_bi().await.unwrap();
        send.write_all(b"x").await.unwrap();
        send.finish().unwrap();
        // The h3 endpoint answers an unknown stream by closing; either way the round trip is
        // done once the read ends.
        let _ = tokio::time::timeout(TIMEOUT, recv.read_to_end(64)).await;
        connection.close(0u32.into(), b"bye");
    };
    hold(connect(&endpoint).await).await;
    assert_eq!(verifier.checked(), 1, "a full handshake");
    for _ in 0..OTHER_CLIENTS {
        let other = tls::quic_endpoint(tls::client_config(support::roots(&stack), &[b"h3"]), None);
        let connection = connect(&other).await;
        connection.close(0u32.into(), b"bye");
    }
    hold(connect(&endpoint).await).await;
    assert_eq!(
        verifier.checked(),
        1,
        "the reconnect resumed: no certificate to check"
    );
    endpoint.wait_idle().await;
}
