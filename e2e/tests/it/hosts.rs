//! The stack on several hosts (`./dev hosts up`, tests/hosts/hosts.sh): network namespaces
//! for the database, Redis and two app hosts, and the kernel's balancer (nftables) in front of
//! the gateways. This test is the client host. It runs from tests/dev/hosts.sh, which brings
//! the hosts up and names the balancer's address in `HABERCI_TEST_HOSTS_VIP`; `./dev test`'s
//! main run leaves it out.

use haberci_client::{ClientConfig, Roots, Transport};
use haberci_testkit::users::User;
use haberci_wire::UserId;
use serde_json::json;

use crate::peer::Peer;
use crate::support::text_to;

/// Where tests/dev/hosts.sh put the hosts: `VIP`, `UDP port`, `TCP port`, CA file.
struct Hosts {
    vip: String,
    udp: u16,
    tcp: u16,
    ca: String,
}

impl Hosts {
    fn from_env() -> Hosts {
        let var = |key: &str| {
            std::env::var(key).unwrap_or_else(|_| {
                panic!("{key} is not set: this test runs through tests/dev/hosts.sh")
            })
        };
        Hosts {
            vip: var("HABERCI_TEST_HOSTS_VIP"),
            udp: var("HABERCI_TEST_HOSTS_UDP_PORT").parse().expect("port"),
            tcp: var("HABERCI_TEST_HOSTS_TCP_PORT").parse().expect("port"),
            ca: var("HABERCI_TEST_CA"),
        }
    }

    /// Registers a user through the balancer (a gateway proxies to its host's api).
    async fn register(&self, prefix: &str) -> User {
        let roots = haberci_bench::target::ca_file_store(self.ca.as_ref()).expect("CA file");
        let api = haberci_bench::api::ApiTarget::named(
            &format!("https://{}:{}", self.vip, self.tcp),
            roots,
            "localhost",
        )
        .await
        .expect("API target");
        let mut conn = api
            .connect([0, 0, 0, 0].into())
            .await
            .expect("connect to the API");
        let username = haberci_testkit::unique::name(prefix);
        let answer = conn
            .post_json(
                "/v1/auth/register",
                &json!({
                    "username": username,
                    "email": format!("{username}@example.com"),
                    "password": haberci_testkit::users::PASSWORD,
                    "displayName": username,
                }),
            )
            .await
            .expect("register");
        assert_eq!(answer.status, 201, "register: {}", answer.body);
        let text = |v: &serde_json::Value| v.as_str().expect("string").to_owned();
        User {
            id: UserId::new(text(&answer.body["user"]["id"]).parse().expect("uuid")).expect("id"),
            username,
            token: text(&answer.body["tokens"]["accessToken"]),
            refresh_token: text(&answer.body["tokens"]["refreshToken"]),
        }
    }

    fn config(&self, transport: Transport, user: &User) -> ClientConfig {
        let mut config = ClientConfig::new(
            transport,
            Roots::PemFile(self.ca.clone().into()),
            &user.token,
        );
        config.server_name = Some("localhost".into());
        config.client_name = "haberci-e2e-hosts".into();
        config
    }
}

/// A QUIC client that changes its address (a new UDP port, six times) keeps its connection:
/// the balancer sends each new flow's first packet, a short-header packet, to the gateway
/// whose server id its connection ID carries. Hashed by address and port instead, as new
/// connections are, six moves would all land on the same gateway one time in 64.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_quic_client_that_changes_address_keeps_its_connection_through_the_kernel_balancer() {
    let hosts = Hosts::from_env();
    let alice_user = hosts.register("alice").await;
    let bob_user = hosts.register("bob").await;
    let bob = Peer::connect(
        &bob_user,
        hosts.config(
            Transport::WebSocket {
                url: format!("wss://{}:{}/v1/ws", hosts.vip, hosts.tcp),
            },
            &bob_user,
        ),
    )
    .await;
    let endpoint = quinn::Endpoint::client("0.0.0.0:0".parse().expect("addr")).expect("endpoint");
    let mut config = hosts.config(
        Transport::Quic {
            addr: format!("{}:{}", hosts.vip, hosts.udp),
        },
        &alice_user,
    );
    config.quic_endpoint = Some(endpoint.clone());
    let alice = Peer::connect(&alice_user, config).await;
    let first = alice
        .send_reliably(text_to(&bob_user, "before moving"))
        .await;

    let mut ports = vec![endpoint.local_addr().expect("address").port()];
    for n in 1..=6u64 {
        endpoint
            .rebind(std::net::UdpSocket::bind("0.0.0.0:0").expect("new socket"))
            .expect("rebind");
        ports.push(endpoint.local_addr().expect("address").port());
        let sent = alice
            .send_reliably(text_to(&bob_user, format!("move {n}")))
            .await;
        assert_eq!(sent.seq.get(), first.seq.get() + n);
    }
    bob.wait_for_seq(first.conversation_id, first.seq.get() + 6)
        .await;

    ports.dedup();
    assert_eq!(ports.len(), 7, "every move is a new port: {ports:?}");
    let log = alice.log();
    assert_eq!(log.connections, 1, "the same connection throughout");
    assert_eq!(log.disconnects, vec![]);
    assert_eq!(log.retries, vec![]);
}
