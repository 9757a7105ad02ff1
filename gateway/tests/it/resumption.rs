//! TLS 1.3 session resumption: a client that reconnects with the ticket of its last connection
//! skips the certificate (no signature made, no chain sent or checked). 0-RTT stays refused.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use haberci_testkit::{Backend, Stack, TIMEOUT, tls};
use rustls::HandshakeKind;
use rustls::client::{ClientSessionMemoryCache, ClientSessionStore};
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

/// A client ticket store that counts the TLS 1.3 tickets it is given and hands out.
#[derive(Debug)]
struct Counting {
    inner: ClientSessionMemoryCache,
    received: tokio::sync::watch::Sender<usize>,
    offered: AtomicUsize,
}

impl ClientSessionStore for Counting {
    fn set_kx_hint(&self, server_name: ServerName<'static>, group: rustls::NamedGroup) {
        self.inner.set_kx_hint(server_name, group)
    }
    fn kx_hint(&self, server_name: &ServerName<'_>) -> Option<rustls::NamedGroup> {
        self.inner.kx_hint(server_name)
    }
    fn set_tls12_session(
        &self,
        server_name: ServerName<'static>,
        value: rustls::client::Tls12ClientSessionValue,
    ) {
        self.inner.set_tls12_session(server_name, value)
    }
    fn tls12_session(
        &self,
        server_name: &ServerName<'_>,
    ) -> Option<rustls::client::Tls12ClientSessionValue> {
        self.inner.tls12_session(server_name)
    }
    fn remove_tls12_session(&self, server_name: &ServerName<'static>) {
        self.inner.remove_tls12_session(server_name)
    }
    fn insert_tls13_ticket(
        &self,
        server_name: ServerName<'static>,
        value: rustls::client::Tls13ClientSessionValue,
    ) {
        self.received.send_modify(|n| *n += 1);
        self.inner.insert_tls13_ticket(server_name, value)
    }
    fn take_tls13_ticket(
        &self,
        server_name: &ServerName<'static>,
    ) -> Option<rustls::client::Tls13ClientSessionValue> {
        let ticket = self.inner.take_tls13_ticket(server_name);
        if ticket.is_some() {
            self.offered.fetch_add(1, Ordering::SeqCst);
        }
        ticket
    }
}

/// QUIC carries the same TLS 1.3 handshake: the endpoint issues tickets, a reconnecting client
/// offers one, and the connection works. (quinn does not say whether the server took the
/// ticket; the TCP test above shows that this server's tickets resume.)
#[tokio::test]
async fn the_quic_endpoint_issues_session_tickets_a_reconnecting_client_uses() {
    let stack = Stack::start(Backend::Down).await;
    let store = Arc::new(Counting {
        inner: ClientSessionMemoryCache::new(16),
        received: tokio::sync::watch::Sender::new(0),
        offered: AtomicUsize::new(0),
    });
    let mut tls = tls::client_config(support::roots(&stack), &[b"h3"]);
    tls.resumption = rustls::client::Resumption::store(store.clone());
    let crypto = quinn::crypto::rustls::QuicClientConfig::try_from(tls).unwrap();
    let mut endpoint = quinn::Endpoint::client("127.0.0.1:0".parse().unwrap()).unwrap();
    endpoint.set_default_client_config(quinn::ClientConfig::new(Arc::new(crypto)));
    let target = std::net::SocketAddr::from(([127, 0, 0, 1], stack.gateway_udp.port()));
    for round in 0..2 {
        let connection =
            tokio::time::timeout(TIMEOUT, endpoint.connect(target, "localhost").unwrap())
                .await
                .expect("handshake in time")
                .expect("handshake");
        // The tickets come after the handshake.
        let mut received = store.received.subscribe();
        tokio::time::timeout(TIMEOUT, received.wait_for(|n| *n > round))
            .await
            .expect("a ticket in time")
            .unwrap();
        assert_eq!(store.offered.load(Ordering::SeqCst), round, "round {round}");
        connection.close(0u32.into(), b"bye");
    }
    endpoint.wait_idle().await;
}
