//! Opening a session: Welcome, ping, and every way a connect fails that a user can hit.

use haberci_client::{Client, ConnectError, ErrorCode, Roots};
use haberci_testkit::{TIMEOUT, TransportKind, labelled};

use crate::support;

async fn is_welcomed_and_pongs(kind: TransportKind) {
    let stack = support::start().await;
    let user = support::register(&stack).await;
    let (client, _events) = Client::connect(stack.client_config(kind, &user.token))
        .await
        .unwrap();
    assert_eq!(client.user_id(), user.id);
    assert_eq!(
        client.welcome().protocol_version,
        haberci_wire::PROTOCOL_VERSION
    );
    assert!(client.is_open());
    let rtt = tokio::time::timeout(TIMEOUT, client.ping())
        .await
        .expect("a Pong in time")
        .unwrap();
    assert!(rtt < TIMEOUT, "{rtt:?}");
    assert!(client.positions().is_empty());
}

#[tokio::test]
async fn connects_is_welcomed_and_pongs() {
    for kind in TransportKind::ALL {
        labelled(kind, is_welcomed_and_pongs(kind)).await;
    }
}

async fn bad_token_is_refused(kind: TransportKind) {
    let stack = support::start().await;
    let err = Client::connect(stack.client_config(kind, "not.a.token"))
        .await
        .unwrap_err();
    match err {
        ConnectError::Closed { code, .. } => assert_eq!(code, ErrorCode::Unauthenticated),
        other => panic!("expected Closed(unauthenticated), got {other:?}"),
    }
}

#[tokio::test]
async fn a_bad_token_is_refused_with_unauthenticated() {
    for kind in TransportKind::ALL {
        labelled(kind, bad_token_is_refused(kind)).await;
    }
}

#[tokio::test]
async fn an_untrusted_certificate_fails_the_transport_handshake() {
    let stack = support::start().await;
    let user = support::register(&stack).await;
    for kind in TransportKind::ALL {
        let mut config = stack.client_config(kind, &user.token);
        // A CA that never signed the gateway's certificate.
        let other = tempfile::tempdir().unwrap();
        let certs = haberci_certs::CertPaths::new(other.path());
        haberci_certs::ensure(&certs, time::OffsetDateTime::now_utc()).unwrap();
        config.roots = Roots::PemFile(certs.ca_cert());
        match Client::connect(config).await {
            Err(ConnectError::Transport { context, source }) => {
                assert!(
                    source.to_string().contains("certificate"),
                    "{kind:?}: {context}: {source}"
                );
            }
            other => panic!("{kind:?}: expected a transport error, got {other:?}"),
        }
    }
}

#[tokio::test]
async fn unreadable_roots_are_a_config_error() {
    let stack = support::start().await;
    let mut config = stack.client_config(TransportKind::Quic, "token");
    config.roots = Roots::PemFile("/nonexistent/ca.pem".into());
    let err = Client::connect(config).await.unwrap_err();
    assert!(
        matches!(&err, ConnectError::Config(m) if m.contains("/nonexistent/ca.pem")),
        "{err:?}"
    );
}

#[tokio::test]
async fn a_quic_address_without_a_port_is_a_config_error() {
    let stack = support::start().await;
    let mut config = stack.client_config(TransportKind::Quic, "token");
    config.transport = haberci_client::Transport::Quic {
        addr: "localhost".into(),
    };
    let err = Client::connect(config).await.unwrap_err();
    assert!(matches!(err, ConnectError::Config(_)), "{err:?}");
}

#[tokio::test]
async fn a_webtransport_connect_to_another_path_is_refused_with_its_http_status() {
    let stack = support::start().await;
    let user = support::register(&stack).await;
    let mut config = stack.client_config(TransportKind::WebTransport, &user.token);
    config.transport = haberci_client::Transport::WebTransport {
        url: format!(
            "https://localhost:{}/v1/elsewhere",
            stack.gateway_udp.port()
        ),
    };
    let err = Client::connect(config).await.unwrap_err();
    assert!(
        matches!(err, ConnectError::Upgrade { status: 404 }),
        "{err:?}"
    );
}

#[tokio::test]
async fn a_webtransport_url_that_is_not_https_is_a_config_error() {
    let stack = support::start().await;
    let mut config = stack.client_config(TransportKind::WebTransport, "token");
    config.transport = haberci_client::Transport::WebTransport {
        url: format!("http://localhost:{}/v1/rt", stack.gateway_udp.port()),
    };
    let err = Client::connect(config).await.unwrap_err();
    assert!(matches!(err, ConnectError::Config(_)), "{err:?}");
}
