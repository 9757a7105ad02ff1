//! Bounds on what a client may hold or send: header read timeout, body limits on every HTTP
//! version (with and without a declared length), and JSON errors for the gateway's own refusals.

use bytes::Bytes;
use haberci_testkit::{Backend, Stack, TIMEOUT, tls};
use http_body_util::Full;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::support::{self, ALL_VERSIONS};

/// A raw TLS connection speaking HTTP/1.1 by hand.
async fn raw_tls(stack: &Stack) -> tokio_rustls::client::TlsStream<tokio::net::TcpStream> {
    tls::connect(stack.gateway_tcp, support::roots(stack), b"http/1.1")
        .await
        .unwrap()
}

/// Reads until the server closes the connection; returns what it sent.
async fn read_to_close(
    stream: &mut tokio_rustls::client::TlsStream<tokio::net::TcpStream>,
) -> String {
    let mut seen = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        match stream.read(&mut buf).await {
            Ok(0) | Err(_) => break,
            Ok(n) => seen.extend_from_slice(&buf[..n]),
        }
    }
    String::from_utf8_lossy(&seen).into_owned()
}

#[tokio::test]
async fn a_client_that_never_finishes_its_headers_is_disconnected() {
    let stack = Stack::builder()
        .backend(Backend::Down)
        .configure(|config| {
            config.http.header_read_timeout = std::time::Duration::from_millis(300);
        })
        .start()
        .await;
    let mut stream = raw_tls(&stack).await;
    stream
        .write_all(b"GET /healthz HTTP/1.1\r\nHost: localhost\r\nX-Slow: ")
        .await
        .unwrap();
    stream.flush().await.unwrap();
    let answer = tokio::time::timeout(TIMEOUT, read_to_close(&mut stream))
        .await
        .expect("the gateway closes a connection whose headers never end");
    assert!(!answer.contains("200 OK"), "{answer}");
}

#[tokio::test]
async fn a_chunked_body_over_the_limit_is_refused_with_413() {
    let echo = support::serve_router(axum::Router::new().fallback(|| async { "seen" })).await;
    let stack = Stack::builder()
        .backend(Backend::At(echo))
        .configure(|config| config.http.max_body_bytes = 1_000)
        .start()
        .await;
    let mut stream = raw_tls(&stack).await;
    let chunk = vec![b'x'; 1_500];
    let mut request = b"POST /v1/upload HTTP/1.1\r\nHost: localhost\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n".to_vec();
    request.extend_from_slice(format!("{:x}\r\n", chunk.len()).as_bytes());
    request.extend_from_slice(&chunk);
    request.extend_from_slice(b"\r\n0\r\n\r\n");
    stream.write_all(&request).await.unwrap();
    let answer = tokio::time::timeout(TIMEOUT, read_to_close(&mut stream))
        .await
        .expect("an answer in time");
    assert!(answer.starts_with("HTTP/1.1 413"), "{answer}");
    assert!(answer.contains("body_too_large"), "{answer}");
}

#[tokio::test]
async fn the_configured_body_limit_holds_on_every_http_version() {
    let echo = support::serve_router(axum::Router::new().fallback(|| async { "seen" })).await;
    let stack = Stack::builder()
        .backend(Backend::At(echo))
        .configure(|config| config.http.max_body_bytes = 1_000)
        .start()
        .await;
    for version in ALL_VERSIONS {
        for (size, status) in [(1_000, 200), (1_001, 413)] {
            let request = http::Request::post("https://localhost/v1/upload")
                .body(Full::new(Bytes::from(vec![b'x'; size])))
                .unwrap();
            let reply = support::request(&stack, version, request).await;
            assert_eq!(reply.status, status, "{version:?} with {size} bytes");
        }
    }
}

#[tokio::test]
async fn a_wrong_method_gets_a_json_405_on_every_http_version() {
    let stack = Stack::start(Backend::Down).await;
    for version in ALL_VERSIONS {
        let request = http::Request::post("https://localhost/healthz")
            .body(Full::new(Bytes::new()))
            .unwrap();
        let reply = support::request(&stack, version, request).await;
        assert_eq!(reply.status, 405, "{version:?}");
        assert_eq!(reply.json()["error"]["code"], "method_not_allowed");
        assert_eq!(reply.headers["x-content-type-options"], "nosniff");
    }
}

#[tokio::test]
async fn quic_connections_over_the_handshake_limit_are_refused_and_tcp_still_answers() {
    let stack = Stack::builder()
        .backend(Backend::Down)
        .configure(|config| config.quic.max_handshakes = 0)
        .start()
        .await;
    let roots = support::roots(&stack);
    let refused = support::QuicClient::connect_with(
        stack.gateway_udp,
        roots,
        haberci_wire::ALPN,
        quinn::TransportConfig::default(),
    )
    .await;
    match refused {
        Err(quinn::ConnectionError::ConnectionClosed(close)) => assert_eq!(
            close.error_code,
            quinn::TransportErrorCode::CONNECTION_REFUSED,
            "{close:?}"
        ),
        Err(other) => panic!("expected CONNECTION_REFUSED, got {other:?}"),
        Ok(_) => panic!("a handshake over the limit was accepted"),
    }
    // The endpoint is unharmed and HTTPS over TCP serves as before.
    let request = http::Request::get("https://localhost/healthz")
        .body(Full::new(Bytes::new()))
        .unwrap();
    let reply = support::request(&stack, support::Version::Http2, request).await;
    assert_eq!(reply.status, 200);
}

/// A TLS connection that asks nothing is not held: it is dropped at the first-request
/// deadline (the handshake has its own).
#[tokio::test]
async fn a_connection_that_asks_nothing_is_dropped_at_the_first_request_deadline() {
    let stack = Stack::builder()
        .backend(Backend::Down)
        .configure(|config| {
            config.http.first_request_timeout = std::time::Duration::from_millis(300);
        })
        .start()
        .await;
    let mut idle = raw_tls(&stack).await;
    let answer = tokio::time::timeout(TIMEOUT, read_to_close(&mut idle))
        .await
        .expect("the gateway drops a connection that asks nothing");
    assert_eq!(answer, "");
    // One that asks in time is served.
    let mut asking = raw_tls(&stack).await;
    asking
        .write_all(b"GET /healthz HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")
        .await
        .unwrap();
    let answer = tokio::time::timeout(TIMEOUT, read_to_close(&mut asking))
        .await
        .unwrap();
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
}

/// A connection that asked and then went quiet is dropped at the idle timeout, over HTTP/1.1
/// keep-alive and HTTP/2 alike.
#[tokio::test]
async fn a_connection_quiet_after_its_requests_is_dropped_at_the_idle_timeout() {
    let stack = Stack::builder()
        .backend(Backend::Down)
        .configure(|config| {
            config.http.idle_timeout = std::time::Duration::from_millis(300);
        })
        .start()
        .await;
    // HTTP/1.1, kept alive: the answer, then the close.
    let mut quiet = raw_tls(&stack).await;
    quiet
        .write_all(b"GET /healthz HTTP/1.1\r\nHost: localhost\r\n\r\n")
        .await
        .unwrap();
    let answer = tokio::time::timeout(TIMEOUT, read_to_close(&mut quiet))
        .await
        .expect("the gateway drops a keep-alive connection gone quiet");
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");

    // HTTP/2: the connection ends by itself after its one request.
    let tls = tls::connect(stack.gateway_tcp, support::roots(&stack), b"h2")
        .await
        .unwrap();
    let (mut sender, connection) = hyper::client::conn::http2::handshake(
        hyper_util::rt::TokioExecutor::new(),
        hyper_util::rt::TokioIo::new(tls),
    )
    .await
    .unwrap();
    let connection = tokio::spawn(connection);
    let request = http::Request::get(format!(
        "https://localhost:{}/healthz",
        stack.gateway_tcp.port()
    ))
    .body(Full::new(Bytes::new()))
    .unwrap();
    let response = sender.send_request(request).await.unwrap();
    assert_eq!(response.status(), 200);
    drop(response);
    tokio::time::timeout(TIMEOUT, connection)
        .await
        .expect("the gateway closes an HTTP/2 connection gone quiet")
        .unwrap()
        .ok();
}

/// One client address holds at most its share of connections, TCP and QUIC counted together;
/// a closed one frees its place.
#[tokio::test]
async fn one_address_holds_at_most_its_connections_over_tcp_and_quic() {
    // The API's token keys, so a Hello is answered at once (without keys it waits for them).
    let stack = Stack::builder()
        .backend(Backend::Api)
        .configure(|config| {
            config.listen.max_connections_per_address = 2;
            // Loopback is exempt by default; here it is an ordinary client.
            config.listen.address_limit_exempt = Vec::new();
        })
        .start()
        .await;
    let quic = || {
        support::QuicClient::connect(
            stack.gateway_udp,
            support::roots(&stack),
            haberci_wire::ALPN,
        )
    };
    let first = raw_tls(&stack).await;
    let second = quic().await.unwrap();

    // A third over TCP is closed at once, before or during its handshake.
    let third = tls::connect(stack.gateway_tcp, support::roots(&stack), b"http/1.1").await;
    if let Ok(mut stream) = third {
        let answer = tokio::time::timeout(TIMEOUT, read_to_close(&mut stream))
            .await
            .expect("closed");
        assert_eq!(answer, "");
    }
    // Over QUIC, once its handshake proved the address, with `too_many_sessions`.
    let third = quic().await.unwrap();
    match tokio::time::timeout(TIMEOUT, third.connection.closed()).await {
        Ok(quinn::ConnectionError::ApplicationClosed(close)) => assert_eq!(
            close.error_code,
            quinn::VarInt::from_u64(haberci_wire::ErrorCode::TooManySessions.quic_code()).unwrap()
        ),
        other => panic!("expected an application close, got {other:?}"),
    }

    // The TCP connection goes: its place is free again (as soon as the gateway notices). A
    // connection is in when its session answers: a Hello with no valid token gets Closing.
    drop(first);
    let served = |client: support::QuicClient| async move {
        let Ok((mut send, mut recv)) = client.connection.open_bi().await else {
            return false;
        };
        let hello = crate::support::hello("not.a.token", haberci_wire::PROTOCOL_VERSION);
        let mut bytes = bytes::BytesMut::new();
        haberci_wire::encode_delimited(&hello, haberci_wire::DEFAULT_MAX_FRAME_SIZE, &mut bytes)
            .unwrap();
        if send.write_all(&bytes).await.is_err() {
            return false;
        }
        matches!(recv.read_chunk(1024, true).await, Ok(Some(_)))
    };
    tokio::time::timeout(TIMEOUT, async {
        while !served(quic().await.unwrap()).await {}
    })
    .await
    .expect("a freed place is taken again");
    drop(second);
}

/// One half-open QUIC handshake from an address that never answers, as a spoofed Initial
/// makes: a real client's first packet, captured on a relay socket and sent on to the gateway
/// from another socket, which never reads what comes back. Returns that socket (kept open, so
/// the gateway hears no ICMP error) and the client's task.
async fn half_open(stack: &Stack) -> (tokio::net::UdpSocket, tokio::task::JoinHandle<()>) {
    let relay = tokio::net::UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let relay_addr = relay.local_addr().unwrap();
    let roots = support::roots(stack);
    let client = tokio::spawn(async move {
        let _ = support::QuicClient::connect(relay_addr, roots, haberci_wire::ALPN).await;
    });
    let mut initial = vec![0u8; 2048];
    let (n, _) = tokio::time::timeout(TIMEOUT, relay.recv_from(&mut initial))
        .await
        .expect("the client's Initial")
        .unwrap();
    let spoofed = tokio::net::UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let gateway = std::net::SocketAddr::from(([127, 0, 0, 1], stack.gateway_udp.port()));
    spoofed.send_to(&initial[..n], gateway).await.unwrap();
    (spoofed, client)
}

/// Initials from addresses that never answer used to hold the handshake places until they
/// timed out, refusing real clients. Past the Retry threshold an unproven address gets a
/// Retry instead, which costs the gateway no state: the places stay free and a real client
/// (which echoes the token) connects.
#[tokio::test]
async fn half_open_handshakes_from_silent_addresses_do_not_keep_real_clients_out() {
    let stack = Stack::builder()
        .backend(Backend::Down)
        .configure(|config| {
            config.quic.max_handshakes = 8;
            config.quic.retry_above = 2;
        })
        .start()
        .await;
    let mut flood = Vec::new();
    for _ in 0..24 {
        flood.push(half_open(&stack).await);
    }
    for _ in 0..3 {
        let client = support::QuicClient::connect(
            stack.gateway_udp,
            support::roots(&stack),
            haberci_wire::ALPN,
        )
        .await
        .expect("a real client connects through the flood");
        assert!(client.connection.close_reason().is_none());
    }
    for (_, task) in flood {
        task.abort();
    }
}
