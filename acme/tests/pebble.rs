//! `haberci-acme` against the dev stack's Pebble (Let's Encrypt's test CA): a certificate is
//! ordered over HTTP-01, installed in a running gateway's directory and served by both of its
//! listeners while the sessions opened on the old certificate keep carrying messages, then
//! renewed before it expires.
//!
//! One test orders for real: Pebble validates HTTP-01 on one fixed port, so two of them could
//! not listen side by side. The failing order listens nowhere.

#![allow(clippy::unwrap_used)]

use std::net::SocketAddr;
use std::time::Duration;

use haberci_acme::{Outcome, Settings};
use haberci_client::{Client, Event, Roots, text_to};
use haberci_gateway::config::QuicCert;
use haberci_testkit::{Stack, TIMEOUT, TransportKind, env, tls, users};
use rustls_pki_types::CertificateDer;
use rustls_pki_types::pem::PemObject;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// Pebble issues certificates valid 60 s in the dev stack, so a renewal is due 40 s after an
/// issue; this bounds the wait for it.
const RENEWAL_TIMEOUT: Duration = Duration::from_secs(120);

fn settings(stack: &Stack) -> Settings {
    let port: u16 = env::var("HABERCI_TEST_ACME_HTTP_PORT").parse().unwrap();
    Settings {
        directory: env::var("HABERCI_TEST_ACME_DIRECTORY"),
        domains: vec!["localhost".into()],
        contact: vec!["mailto:ops@example.com".into()],
        cert_dir: stack.certs.dir.clone(),
        // Pebble resolves `localhost` to both loopback addresses.
        http_listen: vec![
            SocketAddr::from(([127, 0, 0, 1], port)),
            SocketAddr::from((std::net::Ipv6Addr::LOCALHOST, port)),
        ],
        // Pebble's own HTTPS certificate is the dev CA's.
        ca_roots: Some(env::var("HABERCI_TEST_CA").into()),
    }
}

fn leaf(stack: &Stack) -> CertificateDer<'static> {
    CertificateDer::pem_file_iter(stack.certs.server_cert())
        .unwrap()
        .next()
        .unwrap()
        .unwrap()
}

/// `GET path` over HTTPS/1.1 with `roots`: the body of a 200.
async fn get(addr: SocketAddr, roots: rustls::RootCertStore, path: &str) -> String {
    let mut stream = tls::connect(addr, roots, b"http/1.1").await.unwrap();
    let request = format!("GET {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n");
    stream.write_all(request.as_bytes()).await.unwrap();
    let mut response = String::new();
    // A server may end the TLS stream without close_notify after `Connection: close`.
    let _ = stream.read_to_string(&mut response).await;
    assert!(response.starts_with("HTTP/1.1 200"), "{response}");
    let (_, body) = response.split_once("\r\n\r\n").unwrap();
    body.to_owned()
}

/// Pebble makes a new root at every start and serves it on its management port.
async fn pebble_root(dir: &std::path::Path) -> std::path::PathBuf {
    let url = env::var("HABERCI_TEST_ACME_ROOTS_URL");
    let rest = url.strip_prefix("https://").unwrap();
    let (authority, path) = rest.split_at(rest.find('/').unwrap());
    // `./dev` runs Pebble on 127.0.0.1 only; `localhost` may resolve to ::1 first.
    let port: u16 = authority.rsplit_once(':').unwrap().1.parse().unwrap();
    let addr = SocketAddr::from(([127, 0, 0, 1], port));
    let dev_ca = tls::roots(&[std::path::Path::new(&env::var("HABERCI_TEST_CA"))]);
    let file = dir.join("pebble-root.pem");
    std::fs::write(&file, get(addr, dev_ca, path).await).unwrap();
    file
}

/// Waits until both listeners present `cert` (the gateway's file watcher polls every 100 ms
/// in tests).
async fn served(stack: &Stack, cert: &CertificateDer<'static>) {
    let mut reloads = stack.gateway.certs.reloads();
    tokio::time::timeout(TIMEOUT, async {
        while stack.gateway.certs.tcp_cert_der() != *cert
            || stack.gateway.certs.quic_cert_der() != *cert
        {
            reloads.changed().await.unwrap();
        }
    })
    .await
    .expect("the gateway serves the new certificate within the timeout");
}

/// Sends from `from` to `to` and waits for it to arrive.
async fn carries(from: &Client, to: &mut haberci_client::Events, to_user: haberci_wire::UserId) {
    let sent = from.send(text_to(to_user, "still here")).await.unwrap();
    tokio::time::timeout(TIMEOUT, async {
        loop {
            match to.recv().await {
                Some(Event::Message(message)) if message.seq == sent.seq => return,
                Some(Event::Disconnected(why)) => panic!("session dropped: {why:?}"),
                Some(_) => {}
                None => panic!("events ended"),
            }
        }
    })
    .await
    .expect("the message arrives within the timeout");
}

#[tokio::test]
async fn a_certificate_is_issued_served_without_dropping_sessions_and_renewed_before_expiry() {
    let stack = Stack::builder()
        .relay()
        .configure(|config| config.tls.quic_cert = QuicCert::Tls)
        .start()
        .await;
    let alice = users::register(stack.backend, "acme").await;
    let bob = users::register(stack.backend, "acme").await;
    // Sessions on the dev CA's certificate: Alice over WebSocket (TCP), Bob over QUIC.
    let (alice_ws, _alice_events) =
        Client::connect(stack.client_config(TransportKind::WebSocket, &alice.token))
            .await
            .unwrap();
    let (_bob_quic, mut bob_events) =
        Client::connect(stack.client_config(TransportKind::Quic, &bob.token))
            .await
            .unwrap();

    let settings = settings(&stack);
    let Outcome::Issued {
        not_before,
        not_after,
        ..
    } = haberci_acme::ensure(&settings).await.unwrap()
    else {
        panic!("the dev CA's certificate is replaced by an ACME one");
    };
    // Looked at again before it is due: kept.
    let again = haberci_acme::ensure(&settings).await.unwrap();
    assert_eq!(
        again,
        Outcome::Kept {
            renew_at: haberci_acme::renew_at(not_before, not_after)
        }
    );
    let first = leaf(&stack);
    served(&stack, &first).await;

    // New connections on both listeners verify against Pebble's root alone.
    let dir = tempfile::tempdir().unwrap();
    let pebble_root = pebble_root(dir.path()).await;
    for kind in [TransportKind::WebSocket, TransportKind::Quic] {
        let mut config = stack.client_config(kind, &alice.token);
        config.roots = Roots::PemFile(pebble_root.clone());
        let (client, _) = Client::connect(config).await.unwrap_or_else(|err| {
            panic!("{kind:?} with the ACME certificate: {err}");
        });
        client.close().await;
    }
    // The sessions opened on the old certificate were not dropped.
    carries(&alice_ws, &mut bob_events, bob.id).await;
    // Discovery announces no hash to pin: browsers verify the CA-issued certificate.
    let discovery = get(
        stack.gateway_tcp,
        tls::roots(&[&pebble_root]),
        "/v1/realtime",
    )
    .await;
    let discovery: serde_json::Value = serde_json::from_str(&discovery).unwrap();
    assert_eq!(
        discovery["webTransport"]["certificateHashes"],
        serde_json::json!([]),
        "{discovery}"
    );

    // The renewal loop replaces it while it is still valid.
    let (outcomes, mut seen) = tokio::sync::mpsc::unbounded_channel();
    let shutdown = haberci_kit::shutdown::Shutdown::new();
    let renewals = tokio::spawn(haberci_acme::run(
        settings.clone(),
        shutdown.clone(),
        Some(outcomes),
    ));
    let renewed_from = tokio::time::timeout(RENEWAL_TIMEOUT, async {
        loop {
            match seen.recv().await.unwrap() {
                Outcome::Kept { .. } => continue,
                Outcome::Issued { not_before, .. } => return not_before,
            }
        }
    })
    .await
    .expect("renewed within the timeout");
    shutdown.cancel();
    renewals.await.unwrap();
    assert!(
        renewed_from < not_after,
        "renewed at {renewed_from}, after the first expired at {not_after}"
    );
    let second = leaf(&stack);
    assert_ne!(second, first);
    served(&stack, &second).await;
    carries(&alice_ws, &mut bob_events, bob.id).await;
}

#[tokio::test]
async fn a_failed_order_is_a_clear_error_and_the_certificate_in_place_stays() {
    let stack = Stack::start(haberci_testkit::Backend::Down).await;
    let before = leaf(&stack);
    let settings = Settings {
        // Nothing answers the challenge: Pebble finds no server (or one that does not know
        // this token) and marks the authorization invalid.
        http_listen: Vec::new(),
        ..settings(&stack)
    };
    let err = haberci_acme::ensure(&settings).await.unwrap_err();
    assert!(
        matches!(err, haberci_acme::AcmeError::Order { .. }),
        "{err}"
    );
    assert!(
        err.to_string().contains("localhost"),
        "names the domain: {err}"
    );
    assert_eq!(leaf(&stack), before, "the served certificate is untouched");
    assert_eq!(stack.gateway.certs.tcp_cert_der(), before);
}
