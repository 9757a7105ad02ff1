//! Sending: the answer to each `Send` reaches the caller that sent it. A message to a user
//! that does not exist is answered `Error{unknown_recipient}` naming its `client_msg_id`
//! (by the worker, through the relay): it resolves that send, and only that one, as
//! `SendError::Refused` with the code. The `Sent` path is in `messaging.rs`.

use futures::future::join_all;
use haberci_client::{Client, ErrorCode, SendError, UserId};
use haberci_testkit::{TIMEOUT, TransportKind};

use crate::support;

/// A user id nobody has.
fn nobody() -> UserId {
    UserId::new(uuid::Uuid::now_v7()).unwrap()
}

fn assert_refused(result: Result<haberci_client::Sent, SendError>) {
    match result {
        Err(SendError::Refused { code, .. }) => assert_eq!(code, ErrorCode::UnknownRecipient),
        other => panic!("expected Refused, got {other:?}"),
    }
}

async fn an_error_naming_a_send_resolves_it_as_refused(kind: TransportKind) {
    let stack = support::start().await;
    let user = support::register(&stack).await;
    let (client, _events) = Client::connect(stack.client_config(kind, &user.token))
        .await
        .unwrap();
    let answer = tokio::time::timeout(
        TIMEOUT,
        client.send(haberci_client::text_to(nobody(), "merhaba")),
    )
    .await
    .expect("an answer in time");
    assert_refused(answer);
    // A refused send is not fatal: the session goes on.
    assert!(client.is_open());
    client.ping().await.unwrap();
}

#[tokio::test]
async fn quic_an_error_naming_a_send_resolves_it_as_refused() {
    an_error_naming_a_send_resolves_it_as_refused(TransportKind::Quic).await;
}

#[tokio::test]
async fn webtransport_an_error_naming_a_send_resolves_it_as_refused() {
    an_error_naming_a_send_resolves_it_as_refused(TransportKind::WebTransport).await;
}

#[tokio::test]
async fn websocket_an_error_naming_a_send_resolves_it_as_refused() {
    an_error_naming_a_send_resolves_it_as_refused(TransportKind::WebSocket).await;
}

#[tokio::test]
async fn concurrent_sends_each_get_their_own_answer() {
    let stack = support::start().await;
    let user = support::register(&stack).await;
    let (client, _events) = Client::connect(stack.client_config(TransportKind::Quic, &user.token))
        .await
        .unwrap();
    // Within the gateway's send burst (40), so none is rate limited.
    let messages: Vec<_> = (0..10)
        .map(|i| haberci_client::text_to(nobody(), format!("message {i}")))
        .collect();
    let answers = tokio::time::timeout(
        TIMEOUT,
        join_all(messages.iter().cloned().map(|m| client.send(m))),
    )
    .await
    .expect("every send answered in time");
    assert_eq!(answers.len(), messages.len());
    for answer in answers {
        assert_refused(answer);
    }
}

#[tokio::test]
async fn the_same_client_msg_id_twice_in_flight_is_refused_locally() {
    let stack = support::start().await;
    let user = support::register(&stack).await;
    let (client, _events) =
        Client::connect(stack.client_config(TransportKind::WebSocket, &user.token))
            .await
            .unwrap();
    let message = haberci_client::text_to(nobody(), "once");
    // `join!` polls the first send (which queues it) before the second: the second finds the
    // id in flight and never leaves the client.
    let (first, second) = tokio::join!(client.send(message.clone()), client.send(message));
    assert_eq!(second, Err(SendError::AlreadyInFlight));
    assert_refused(first);
}
