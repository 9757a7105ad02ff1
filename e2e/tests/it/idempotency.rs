//! A retried `Send` is stored once: the same `client_msg_id` three times — twice on one
//! connection, once more on another transport after a reconnect — is one row in `messages`,
//! one message in the history, one delivery, and every answer names the same message and seq.

use haberci_client::{ErrorCode, SendError};
use haberci_testkit::TransportKind;

use crate::peer::Peer;
use crate::support::{self, Cluster, TIMEOUT};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_same_client_msg_id_three_times_is_stored_and_answered_once() {
    let cluster = Cluster::start(1, 1).await;
    let alice_user = cluster.register("alice").await;
    let bob_user = cluster.register("bob").await;
    let carol_user = cluster.register("carol").await;
    let alice = Peer::connect(
        &alice_user,
        cluster.client_config(0, TransportKind::Quic, &alice_user.token),
    )
    .await;
    let bob = Peer::connect(
        &bob_user,
        cluster.client_config(0, TransportKind::WebSocket, &bob_user.token),
    )
    .await;

    let message = haberci_client::text_to(bob.id, "once, whatever happens");
    let first = alice.send_reliably(message.clone()).await;
    let second = alice.send_reliably(message.clone()).await;
    alice
        .reconnect_to(cluster.gateways[0].transport(TransportKind::WebSocket))
        .await;
    let third = alice.send_reliably(message.clone()).await;
    for again in [second, third] {
        assert_eq!(again.message_id, first.message_id);
        assert_eq!(again.seq, first.seq);
        assert_eq!(again.conversation_id, first.conversation_id);
        assert_eq!(again.timestamp, first.timestamp);
    }

    // The same id for another conversation is a client bug, refused; nothing is stored.
    let mut elsewhere = message.clone();
    elsewhere.recipient = haberci_client::Recipient::User(carol_user.id);
    match tokio::time::timeout(TIMEOUT, alice.client().send(elsewhere)).await {
        Ok(Err(SendError::Refused { code, .. })) => assert_eq!(code, ErrorCode::InvalidField),
        other => panic!("expected invalid_field, got {other:?}"),
    }

    // A later message follows at the next seq: nothing was stored in between.
    let next = alice
        .send_reliably(haberci_client::text_to(bob.id, "and then this"))
        .await;
    assert_eq!(next.seq.get(), first.seq.get() + 1);
    let conversation = first.conversation_id;
    bob.wait_for_seq(conversation, next.seq.get()).await;
    let history = [
        (first.seq.get(), first.message_id),
        (next.seq.get(), next.message_id),
    ]
    .into_iter()
    .collect();
    bob.assert_exactly_once(conversation, &history);

    let stored = support::stored_per_client_msg_id(&cluster.db().await, alice.id).await;
    assert_eq!(stored.get(&message.client_msg_id.as_uuid()), Some(&1));
    assert_eq!(stored.len(), 2, "{stored:?}");
    let (status, page) = cluster
        .api(
            http::Method::GET,
            &format!("/v1/conversations/{conversation}/messages"),
            Some(&bob_user.token),
            serde_json::Value::Null,
        )
        .await;
    assert_eq!(status, 200, "{page}");
    let seqs: Vec<u64> = page["messages"]
        .as_array()
        .expect("messages")
        .iter()
        .map(|m| m["seq"].as_u64().expect("seq"))
        .collect();
    assert_eq!(seqs, vec![2, 1], "newest first, each once");
}
