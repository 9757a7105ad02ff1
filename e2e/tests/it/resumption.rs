//! QUIC's TLS session tickets open at every gateway of the fleet (gateway `edge::tickets`):
//! a client that reconnects to another gateway, or to its gateway restarted after a crash,
//! resumes instead of making a full handshake, so a reconnect storm checks no certificates.

use std::net::SocketAddr;
use std::sync::Arc;

use haberci_testkit::{TIMEOUT, tls};

use crate::support::Cluster;

/// A QUIC client endpoint whose certificates are counted by `verifier`.
fn endpoint(cluster: &Cluster, verifier: Arc<tls::CountingVerifier>) -> quinn::Endpoint {
    let mut config = tls::client_config(tls::roots(&[&cluster.certs.ca_cert()]), &[b"h3"]);
    config.dangerous().set_certificate_verifier(verifier);
    let crypto = quinn::crypto::rustls::QuicClientConfig::try_from(config).unwrap();
    let mut endpoint = quinn::Endpoint::client("127.0.0.1:0".parse().unwrap()).unwrap();
    endpoint.set_default_client_config(quinn::ClientConfig::new(Arc::new(crypto)));
    endpoint
}

/// A connection to `gateway`, held for one stream's round trip: the tickets come after the
/// handshake, and the round trip waits for them.
async fn visit(endpoint: &quinn::Endpoint, gateway: SocketAddr) {
    let connecting = endpoint.connect(gateway, "localhost").unwrap();
    let connection = tokio::time::timeout(TIMEOUT, connecting)
        .await
        .expect("handshake in time")
        .expect("handshake");
    let (mut send, mut recv) = connection.open_bi().await.unwrap();
    send.write_all(b"x").await.unwrap();
    send.finish().unwrap();
    // The h3 endpoint answers an unknown stream by closing; either way the round trip is done
    // once the read ends.
    let _ = tokio::time::timeout(TIMEOUT, recv.read_to_end(64)).await;
    connection.close(0u32.into(), b"bye");
}

#[tokio::test]
async fn a_quic_ticket_resumes_at_another_gateway_and_after_a_crash() {
    let mut cluster = Cluster::start(0, 2).await;
    let verifier = tls::CountingVerifier::new(tls::roots(&[&cluster.certs.ca_cert()]));
    let client = endpoint(&cluster, verifier.clone());

    visit(&client, cluster.gateways[0].udp).await;
    assert_eq!(
        verifier.checked(),
        1,
        "the first connection is a full handshake"
    );

    visit(&client, cluster.gateways[1].udp).await;
    assert_eq!(
        verifier.checked(),
        1,
        "gateway 2 opened gateway 1's ticket: no certificate to check"
    );

    cluster.kill_gateway(0).await;
    cluster.restart_gateway(0).await;
    visit(&client, cluster.gateways[0].udp).await;
    assert_eq!(
        verifier.checked(),
        1,
        "the restarted gateway opened its previous life's ticket"
    );

    // A client without a ticket still makes a full handshake.
    let stranger = tls::CountingVerifier::new(tls::roots(&[&cluster.certs.ca_cert()]));
    visit(
        &endpoint(&cluster, stranger.clone()),
        cluster.gateways[1].udp,
    )
    .await;
    assert_eq!(stranger.checked(), 1);
    client.wait_idle().await;
}
