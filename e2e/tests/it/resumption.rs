//! QUIC's TLS session tickets open at every gateway of the fleet (gateway `edge::tickets`):
//! a client that reconnects to another gateway, or to its gateway restarted after a crash,
//! resumes instead of making a full handshake, so a reconnect storm checks no certificates.

use std::net::SocketAddr;
use std::sync::Arc;

use haberci_client::Client;
use haberci_testkit::{TIMEOUT, TransportKind, tls};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::support::Cluster;

/// A QUIC client endpoint whose certificates are counted by `verifier`.
fn endpoint(cluster: &Cluster, verifier: Arc<tls::CountingVerifier>) -> quinn::Endpoint {
    let mut config = tls::client_config(tls::roots(&[&cluster.certs.ca_cert()]), &[b"h3"]);
    config.dangerous().set_certificate_verifier(verifier);
    tls::quic_endpoint(config, None)
}

/// Waits until every gateway of `cluster` holds the fleet's ticket keys (a start waits for them
/// a second at most, then goes on with keys of its own).
async fn keys_ready(cluster: &mut Cluster) {
    for gateway in &mut cluster.gateways {
        gateway
            .process
            .wait_for_log("fleet TLS ticket keys ready")
            .await;
    }
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
    keys_ready(&mut cluster).await;
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
    keys_ready(&mut cluster).await;
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

/// `haberci_gateway_tls_tickets_total{outcome="opened"}` of gateway `index`: the QUIC handshakes
/// it resumed.
async fn tickets_opened(cluster: &mut Cluster, index: usize) -> u64 {
    let line = cluster.gateways[index]
        .process
        .wait_for_log("serving metrics")
        .await;
    let addr: SocketAddr = line["addr"]
        .as_str()
        .or(line["fields"]["addr"].as_str())
        .expect("the metrics address")
        .parse()
        .expect("an address");
    let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    stream
        .write_all(b"GET /metrics HTTP/1.0\r\nHost: gateway\r\n\r\n")
        .await
        .unwrap();
    let mut page = String::new();
    tokio::time::timeout(TIMEOUT, stream.read_to_string(&mut page))
        .await
        .expect("the metrics in time")
        .unwrap();
    page.lines()
        .find_map(|l| l.strip_prefix("haberci_gateway_tls_tickets_total{outcome=\"opened\"} "))
        .map_or(0, |n| n.trim().parse().expect("a count"))
}

/// The SDK keeps its tickets across reconnects and offers them: a reconnect resumes, at its
/// gateway and at another (rustls offers a ticket only to a client config with the verifier
/// the ticket's connection had, which the SDK keeps per process).
#[tokio::test]
async fn the_sdk_resumes_when_it_reconnects_over_quic() {
    let mut cluster = Cluster::start(0, 2).await;
    keys_ready(&mut cluster).await;
    let user = cluster.register("resume").await;
    let config = cluster.client_config(0, TransportKind::Quic, &user.token);
    let (client, _events) = Client::connect(config.clone()).await.expect("connect");
    client.close().await;
    assert_eq!(
        tickets_opened(&mut cluster, 0).await,
        0,
        "a first connection"
    );

    let (client, _events) = Client::connect(client.resume_config())
        .await
        .expect("reconnect");
    client.close().await;
    assert_eq!(
        tickets_opened(&mut cluster, 0).await,
        1,
        "the reconnect resumed"
    );

    let mut elsewhere = cluster.client_config(1, TransportKind::Quic, &user.token);
    elsewhere.tickets = config.tickets.clone();
    let (client, _events) = Client::connect(elsewhere).await.expect("connect elsewhere");
    client.close().await;
    assert_eq!(
        tickets_opened(&mut cluster, 1).await,
        1,
        "another gateway resumed the device's session"
    );
}
