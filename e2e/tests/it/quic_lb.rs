//! Gateways behind one address, as a deployment puts them: a balancer that routes QUIC by the
//! server id inside each connection ID ([`QuicBalancer`], QUIC-LB's plaintext mode). A client
//! that changes address stays on its gateway; the clients of a gateway that dies hear so from
//! another gateway at their next packet (a stateless reset) and come back at once.

use std::collections::BTreeSet;
use std::time::Duration;

use haberci_client::{Disconnect, Transport};
use haberci_testkit::TransportKind;

use crate::balancer::QuicBalancer;
use crate::peer::{Peer, Retry};

use crate::support::{Cluster, GatewayProcess, text_to};

async fn balancer_for(cluster: &Cluster) -> QuicBalancer {
    QuicBalancer::start(
        cluster
            .gateways
            .iter()
            .enumerate()
            .map(|(i, g)| (GatewayProcess::server_id(i), g.udp))
            .collect(),
    )
    .await
}

fn through(balancer: &QuicBalancer) -> Transport {
    Transport::Quic {
        addr: balancer.addr.to_string(),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_changes_address_stays_on_its_gateway_behind_a_cid_balancer() {
    let cluster = Cluster::start(1, 2).await;
    let balancer = balancer_for(&cluster).await;
    let home = GatewayProcess::server_id(1);
    balancer.send_new_connections_to(home);
    let alice_user = cluster.register("alice").await;
    let bob_user = cluster.register("bob").await;
    let bob = Peer::connect(
        &bob_user,
        cluster.client_config(0, TransportKind::WebSocket, &bob_user.token),
    )
    .await;
    let endpoint =
        quinn::Endpoint::client("127.0.0.1:0".parse().expect("addr")).expect("client endpoint");
    let mut config = cluster.client_config(1, TransportKind::Quic, &alice_user.token);
    config.transport = through(&balancer);
    config.quic_endpoint = Some(endpoint.clone());
    let alice = Peer::connect(&alice_user, config).await;
    let first = alice.send_reliably(text_to(&bob_user, "from home")).await;
    // From now on, whatever the balancer cannot route by CID goes to the other gateway.
    balancer.send_new_connections_to(GatewayProcess::server_id(0));
    let before = endpoint.local_addr().expect("address");

    // The client's address changes (a phone moving from Wi-Fi to mobile data).
    endpoint
        .rebind(std::net::UdpSocket::bind("127.0.0.1:0").expect("new socket"))
        .expect("rebind");
    let after = endpoint.local_addr().expect("address");
    assert_ne!(before, after);
    let second = alice.send_reliably(text_to(&bob_user, "on the move")).await;
    bob.wait_for_seq(first.conversation_id, 2).await;

    assert_eq!(second.seq.get(), first.seq.get() + 1);
    let log = alice.log();
    assert_eq!(log.connections, 1, "the same connection throughout");
    assert_eq!(log.disconnects, vec![]);
    assert_eq!(log.retries, vec![]);
    let routed = balancer.routed_by_cid();
    let home_only = BTreeSet::from([home]);
    assert_eq!(routed.get(&before), Some(&home_only), "{routed:?}");
    assert_eq!(routed.get(&after), Some(&home_only), "{routed:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_clients_of_a_dead_gateway_are_reset_by_another_behind_the_balancer() {
    let mut cluster = Cluster::start(1, 2).await;
    let balancer = balancer_for(&cluster).await;
    let doomed = GatewayProcess::server_id(1);
    balancer.send_new_connections_to(doomed);
    let alice_user = cluster.register("alice").await;
    let bob_user = cluster.register("bob").await;
    let mut config = cluster.client_config(1, TransportKind::Quic, &alice_user.token);
    config.transport = through(&balancer);
    // No heartbeat: only the reset can tell this client its gateway is gone.
    config.ping_interval = Duration::ZERO;
    let alice = Peer::connect(&alice_user, config).await;
    alice.reconnect_automatically(vec![through(&balancer)]);
    let first = alice.send_reliably(text_to(&bob_user, "before")).await;

    cluster.kill_gateway(1).await;
    // Its health check fails: its connections' packets now reach the first gateway.
    balancer.mark_down(doomed);
    let second = alice.send_reliably(text_to(&bob_user, "after")).await;

    assert_eq!(second.seq.get(), first.seq.get() + 1);
    let log = alice.log();
    assert_eq!(
        log.disconnects,
        vec![Disconnect::Transport(
            quinn::ConnectionError::Reset.to_string()
        )],
        "the first gateway reset the dead one's connection"
    );
    assert!(
        log.retries
            .iter()
            .all(|retry| *retry == Retry::Disconnected),
        "answered by the reset, not by a timeout: {:?}",
        log.retries
    );
    assert_eq!(log.connections, 2);
    let survivor = GatewayProcess::server_id(0);
    assert!(
        balancer
            .routed_by_cid()
            .values()
            .any(|ids| ids.contains(&survivor)),
        "the new connection is on the surviving gateway"
    );
}
