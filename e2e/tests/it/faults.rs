//! Processes die mid-stream — a worker (SIGKILL), a gateway (SIGKILL), Redis (SIGKILL and
//! restart on its AOF) — and nothing a client was told is stored gets lost or doubled: every
//! `Sent` is one row, delivered once, in seq order, with no gap.
//!
//! Each test watches the recipient twice: through the SDK (what an app sees) and through a
//! bare WebSocket session ([`raw_ws::observe`]) that records `Message` frames as they come
//! off the wire, since the SDK would quietly drop a duplicate the server sent.

use std::collections::BTreeMap;
use std::time::Duration;

use futures::StreamExt;
use haberci_client::{ConversationId, MessageKind, Recipient, Sent};
use haberci_testkit::TransportKind;
use haberci_wire::MessageId;
use tokio::sync::watch;

use crate::peer::Peer;
use crate::raw_ws::{self, Seen};
use crate::support::{self, Cluster, TIMEOUT};

/// Sends in flight at once from one streaming sender.
const PIPELINE: usize = 16;

/// Sends `n` messages to `to`, `PIPELINE` at a time, each until stored; `progress` counts the
/// `Sent`s.
fn stream(
    sender: Peer,
    to: Recipient,
    n: usize,
    progress: watch::Sender<usize>,
) -> tokio::task::JoinHandle<Vec<Sent>> {
    tokio::spawn(async move {
        futures::stream::iter(0..n)
            .map(|i| {
                let sender = sender.clone();
                async move {
                    let message =
                        haberci_client::message(to, MessageKind::Text, format!("message {i}"));
                    sender.send_reliably(message).await
                }
            })
            .buffer_unordered(PIPELINE)
            .inspect(|_| progress.send_modify(|count| *count += 1))
            .collect()
            .await
    })
}

async fn wait_for_progress(progress: &mut watch::Receiver<usize>, at_least: usize) {
    tokio::time::timeout(TIMEOUT, progress.wait_for(|&count| count >= at_least))
        .await
        .unwrap_or_else(|_| panic!("fewer than {at_least} messages stored within {TIMEOUT:?}"))
        .expect("the stream runs");
}

/// One conversation's history as its `Sent`s tell it: seq → message id (each seq once).
fn history(sents: &[Sent]) -> (ConversationId, BTreeMap<u64, MessageId>) {
    let conversation = sents[0].conversation_id;
    let mut history = BTreeMap::new();
    for sent in sents {
        assert_eq!(sent.conversation_id, conversation);
        assert!(
            history.insert(sent.seq.get(), sent.message_id).is_none(),
            "seq {} answered for two sends",
            sent.seq
        );
    }
    (conversation, history)
}

/// Every `client_msg_id` of `sender` is stored exactly once, and there are `n` of them.
async fn assert_stored_once(cluster: &Cluster, sender: &Peer, n: usize) {
    let stored = support::stored_per_client_msg_id(&cluster.db().await, sender.id).await;
    let doubled: Vec<_> = stored.iter().filter(|(_, count)| **count != 1).collect();
    assert!(doubled.is_empty(), "stored more than once: {doubled:?}");
    assert_eq!(stored.len(), n, "rows for {}", sender.name());
}

/// The bare session saw each conversation as 1..=n exactly, in order.
fn assert_seen_exactly_once(seen: &Seen, expected: &[(ConversationId, u64)]) {
    for (conversation, n) in expected {
        let want: Vec<u64> = (1..=*n).collect();
        assert_eq!(
            seen.get(conversation),
            Some(&want),
            "Message frames on the wire for {conversation}"
        );
    }
    assert_eq!(seen.len(), expected.len(), "conversations seen: {seen:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worker_killed_mid_stream_loses_and_doubles_nothing() {
    const N: usize = 300;
    // One worker: whatever it read and did not acknowledge when it dies can only be finished
    // by its replacement, through XAUTOCLAIM.
    let mut cluster = Cluster::start(1, 1).await;
    let alice_user = cluster.register("alice").await;
    let bob_user = cluster.register("bob").await;
    let alice = Peer::connect(
        &alice_user,
        cluster.client_config(0, TransportKind::Quic, &alice_user.token),
    )
    .await;
    // No reconnecting for Alice: a send the dead worker had read but not acknowledged must
    // be answered by its replacement reclaiming the entry, not by a resend
    // (`Peer::send_reliably` fails a send unanswered for `SEND_ATTEMPT`).
    let bob = Peer::connect(
        &bob_user,
        cluster.client_config(0, TransportKind::WebSocket, &bob_user.token),
    )
    .await;
    let observer = raw_ws::observe(
        cluster.certs.ca_cert(),
        vec![cluster.gateways[0].tcp],
        bob_user.token.clone(),
        N,
    );

    let (progress, mut stored) = watch::channel(0);
    let sending = stream(alice.clone(), Recipient::User(bob.id), N, progress);
    wait_for_progress(&mut stored, N / 3).await;
    cluster.workers[0].kill().await;
    cluster.add_worker().await;
    let sents = tokio::time::timeout(TIMEOUT * 2, sending)
        .await
        .expect("every message stored in time")
        .expect("the stream finishes");

    let (conversation, history) = history(&sents);
    assert_eq!(history.len(), N);
    bob.wait_for_seq(conversation, N as u64).await;
    bob.assert_exactly_once(conversation, &history);
    assert_stored_once(&cluster, &alice, N).await;
    let seen = tokio::time::timeout(TIMEOUT, observer)
        .await
        .expect("the observer saw every message")
        .expect("observer");
    assert_seen_exactly_once(&seen, &[(conversation, N as u64)]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn clients_of_a_killed_gateway_resume_on_another_with_no_gap_and_no_duplicate() {
    const PER_PHASE: usize = 5;
    let mut cluster = Cluster::start(1, 2).await;
    let alice_user = cluster.register("alice").await;
    let bob_user = cluster.register("bob").await;
    let carol_user = cluster.register("carol").await;
    let dave_user = cluster.register("dave").await;
    // The sender lives on the gateway that survives.
    let alice = Peer::connect(
        &alice_user,
        cluster.client_config(1, TransportKind::Quic, &alice_user.token),
    )
    .await;
    // Bob and Carol on the gateway that dies, one per transport. A killed QUIC server sends
    // no close: a short heartbeat finds the dead connection in about a second.
    let mut on_doomed = Vec::new();
    for (user, kind) in [
        (&bob_user, TransportKind::Quic),
        (&carol_user, TransportKind::WebSocket),
    ] {
        let mut config = cluster.client_config(0, kind, &user.token);
        config.ping_interval = Duration::from_millis(300);
        config.pong_timeout = Duration::from_secs(1);
        on_doomed.push((Peer::connect(user, config).await, kind));
    }
    let group = cluster
        .create_group(&alice_user, &[&bob_user, &carol_user, &dave_user])
        .await;
    // Dave, bare, on the doomed gateway too; he fails over to the other by himself.
    let observer = raw_ws::observe(
        cluster.certs.ca_cert(),
        vec![cluster.gateways[0].tcp, cluster.gateways[1].tcp],
        dave_user.token.clone(),
        3 * PER_PHASE * 2,
    );

    let targets = [
        Recipient::User(bob_user.id),
        Recipient::User(carol_user.id),
        Recipient::User(dave_user.id),
        Recipient::Group(group),
    ];
    let mut sents: Vec<Vec<Sent>> = vec![Vec::new(); targets.len()];
    let send_phase = |phase: &'static str| {
        let alice = alice.clone();
        async move {
            let mut out = Vec::new();
            for (t, to) in targets.iter().enumerate() {
                for i in 0..PER_PHASE {
                    let message =
                        haberci_client::message(*to, MessageKind::Text, format!("{phase} {i}"));
                    out.push((t, alice.send_reliably(message).await));
                }
            }
            out
        }
    };
    let record = |sents: &mut Vec<Vec<Sent>>, phase: Vec<(usize, Sent)>| {
        for (t, sent) in phase {
            sents[t].push(sent);
        }
    };

    record(&mut sents, send_phase("before").await);
    let (bob_dm, carol_dm) = (sents[0][0].conversation_id, sents[1][0].conversation_id);
    let group_conversation = sents[3][0].conversation_id;
    for ((peer, _), dm) in on_doomed.iter().zip([bob_dm, carol_dm]) {
        peer.wait_for_seq(dm, PER_PHASE as u64).await;
        peer.wait_for_seq(group_conversation, PER_PHASE as u64)
            .await;
    }

    cluster.gateways[0].process.kill().await;
    for (peer, _) in &on_doomed {
        peer.wait("disconnected from the killed gateway", |log| {
            !log.disconnects.is_empty()
        })
        .await;
    }
    // Sent while Bob, Carol (and maybe Dave) are away.
    record(&mut sents, send_phase("away").await);
    for (peer, kind) in &on_doomed {
        peer.reconnect_to(cluster.gateways[1].transport(*kind))
            .await;
    }
    record(&mut sents, send_phase("after").await);

    let total = (3 * PER_PHASE) as u64;
    for ((peer, _), dm) in on_doomed.iter().zip([bob_dm, carol_dm]) {
        for (conversation, t) in [
            (dm, if dm == bob_dm { 0 } else { 1 }),
            (group_conversation, 3),
        ] {
            peer.wait_for_seq(conversation, total).await;
            peer.assert_exactly_once(conversation, &history(&sents[t]).1);
        }
        assert_eq!(peer.log().connections, 2, "{}", peer.name());
    }
    let seen = tokio::time::timeout(TIMEOUT, observer)
        .await
        .expect("Dave saw every message")
        .expect("observer");
    assert_seen_exactly_once(
        &seen,
        &[
            (sents[2][0].conversation_id, total),
            (group_conversation, total),
        ],
    );
    assert_stored_once(&cluster, &alice, 4 * 3 * PER_PHASE).await;
}

/// A gateway that crashes and comes back on its address holds none of its old connections, but
/// it knows their connection IDs for its fleet's and answers their packets with a stateless
/// reset (RFC 9000 §10.3). A client that sends learns at once that its connection is gone,
/// instead of waiting for its heartbeat: here it has none, so only the reset can end it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_gateway_restarted_after_a_crash_resets_the_quic_connections_it_lost() {
    let mut cluster = Cluster::start(1, 1).await;
    let alice_user = cluster.register("alice").await;
    let bob_user = cluster.register("bob").await;
    let mut config = cluster.client_config(0, TransportKind::Quic, &alice_user.token);
    config.ping_interval = Duration::ZERO;
    let alice = Peer::connect(&alice_user, config).await;
    alice.reconnect_automatically(vec![cluster.gateways[0].transport(TransportKind::Quic)]);
    let first = alice
        .send_reliably(support::text_to(&bob_user, "before the crash"))
        .await;

    cluster.kill_gateway(0).await;
    // Without it the next life would reset Alice unprompted, before her packet.
    cluster.forget_roster(0);
    cluster.restart_gateway(0).await;
    // Goes out on the old connection; the answer is the reset, then the same send again on a
    // new connection.
    let second = alice
        .send_reliably(support::text_to(&bob_user, "after the restart"))
        .await;

    let log = alice.log();
    assert_eq!(
        log.disconnects,
        vec![haberci_client::Disconnect::Transport(
            quinn::ConnectionError::Reset.to_string()
        )],
        "the old connection ended by a stateless reset"
    );
    assert!(
        log.retries
            .iter()
            .all(|retry| matches!(retry, crate::peer::Retry::Disconnected)),
        "the send was answered by the reset, not by a timeout: {:?}",
        log.retries
    );
    assert_eq!(log.connections, 2);
    assert_eq!(second.conversation_id, first.conversation_id);
    assert_eq!(second.seq.get(), first.seq.get() + 1);
}

/// A client that sends nothing learns of the crash from its QUIC keep-alive
/// (`ClientConfig::quic_keep_alive`): the restarted gateway resets the PING's connection.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_idle_client_with_a_quic_keep_alive_hears_of_a_restarted_gateway() {
    let mut cluster = Cluster::start(1, 1).await;
    let alice_user = cluster.register("alice").await;
    let mut config = cluster.client_config(0, TransportKind::Quic, &alice_user.token);
    config.ping_interval = Duration::ZERO;
    config.quic_keep_alive = Some(Duration::from_millis(200));
    let alice = Peer::connect(&alice_user, config).await;

    cluster.kill_gateway(0).await;
    // Else the next life's unprompted reset would come first.
    cluster.forget_roster(0);
    cluster.restart_gateway(0).await;
    alice
        .wait("the keep-alive's reset", |log| !log.disconnects.is_empty())
        .await;
    assert_eq!(
        alice.log().disconnects,
        vec![haberci_client::Disconnect::Transport(
            quinn::ConnectionError::Reset.to_string()
        )]
    );
}

/// A client that neither sends nor pings gives the restarted gateway no packet to answer: only
/// the roster tells the gateway's next life whom to reset (`HABERCI_QUIC_ROSTER`).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restarted_gateway_resets_its_idle_clients_unprompted() {
    let mut cluster = Cluster::start(1, 1).await;
    let alice_user = cluster.register("alice").await;
    let mut config = cluster.client_config(0, TransportKind::Quic, &alice_user.token);
    config.ping_interval = Duration::ZERO;
    let alice = Peer::connect(&alice_user, config).await;
    // The roster is written within a second of the connect.
    let roster = cluster.roster(0);
    let deadline = tokio::time::Instant::now() + TIMEOUT;
    while !std::fs::read_to_string(&roster).is_ok_and(|text| text.starts_with("+ ")) {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the gateway never listed the connection in {}",
            roster.display()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    cluster.kill_gateway(0).await;
    cluster.restart_gateway(0).await;
    alice
        .wait("the restarted gateway's reset", |log| {
            !log.disconnects.is_empty()
        })
        .await;
    assert_eq!(
        alice.log().disconnects,
        vec![haberci_client::Disconnect::Transport(
            quinn::ConnectionError::Reset.to_string()
        )],
        "ended by a stateless reset, not by the idle timeout"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_redis_restart_pauses_sending_and_loses_nothing_that_was_sent() {
    const N: usize = 150;
    let mut cluster = Cluster::start(1, 1).await;
    let alice_user = cluster.register("alice").await;
    let bob_user = cluster.register("bob").await;
    let alice = Peer::connect(
        &alice_user,
        cluster.client_config(0, TransportKind::WebSocket, &alice_user.token),
    )
    .await;
    alice.reconnect_automatically(vec![
        cluster.gateways[0].transport(TransportKind::WebSocket),
    ]);
    let bob = Peer::connect(
        &bob_user,
        cluster.client_config(0, TransportKind::Quic, &bob_user.token),
    )
    .await;
    bob.reconnect_automatically(vec![cluster.gateways[0].transport(TransportKind::Quic)]);
    let observer = raw_ws::observe(
        cluster.certs.ca_cert(),
        vec![cluster.gateways[0].tcp],
        bob_user.token.clone(),
        N,
    );

    let (progress, mut stored) = watch::channel(0);
    let sending = stream(alice.clone(), Recipient::User(bob.id), N, progress);
    wait_for_progress(&mut stored, N / 3).await;
    let logs = cluster.logs();
    cluster.redis.restart(&logs).await;
    let sents = tokio::time::timeout(TIMEOUT * 3, sending)
        .await
        .expect("every message stored in time")
        .expect("the stream finishes");

    let (conversation, history) = history(&sents);
    assert_eq!(history.len(), N);
    bob.wait_for_seq(conversation, N as u64).await;
    bob.assert_exactly_once(conversation, &history);
    assert_stored_once(&cluster, &alice, N).await;
    let seen = tokio::time::timeout(TIMEOUT, observer)
        .await
        .expect("the observer saw every message")
        .expect("observer");
    assert_seen_exactly_once(&seen, &[(conversation, N as u64)]);
}

/// Regression: after Redis came back, the gateway's pub/sub subscriber reconnected but did
/// not subscribe again to its sharded channels (fred's automatic resubscription stops at an
/// empty `SUBSCRIBE`), so open sessions got nothing live any more: a message stored after the
/// restart never reached a recipient who stayed connected.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn after_a_redis_restart_open_sessions_get_live_messages_again() {
    let mut cluster = Cluster::start(1, 1).await;
    let alice_user = cluster.register("alice").await;
    let bob_user = cluster.register("bob").await;
    let alice = Peer::connect(
        &alice_user,
        cluster.client_config(0, TransportKind::Quic, &alice_user.token),
    )
    .await;
    alice.reconnect_automatically(vec![cluster.gateways[0].transport(TransportKind::Quic)]);
    let bob = Peer::connect(
        &bob_user,
        cluster.client_config(0, TransportKind::WebSocket, &bob_user.token),
    )
    .await;
    let first = alice
        .send_reliably(haberci_client::text_to(bob.id, "before"))
        .await;
    bob.wait_for_seq(first.conversation_id, 1).await;

    let logs = cluster.logs();
    cluster.redis.restart(&logs).await;
    // The first line is the subscriber's first connect; the second, its reconnect (after
    // which the gateway has subscribed again and resynced).
    cluster.gateways[0]
        .process
        .wait_for_nth_log(
            "relay subscriber reconnected; sessions resync from the backend",
            2,
        )
        .await;
    let second = alice
        .send_reliably(haberci_client::text_to(bob.id, "after"))
        .await;
    assert_eq!(second.seq.get(), 2);
    bob.wait_for_seq(first.conversation_id, 2).await;
    assert_eq!(
        bob.log().connections,
        1,
        "Bob stayed on his first connection"
    );
    assert!(bob.log().disconnects.is_empty());
}
