//! Messages through the whole stack — client → gateway → Redis stream → worker → Postgres →
//! pub/sub → gateway → client — on each transport: `Sent` after commit, delivery to the peer
//! and to the sender's own session, receipts, resume after time away, idempotent resends,
//! refusals, groups across transports, and typing.

use haberci_client::{
    Client, ConversationId, ErrorCode, Event, Events, Message, MessageKind, Recipient, SendError,
    Sent, Seq, Status, TypingState, UserId,
};
use haberci_testkit::{Stack, TIMEOUT, TransportKind, User, users};

use crate::support;

/// The next `Message` event of `conversation` (other events are skipped).
async fn next_message(events: &mut Events, conversation: ConversationId) -> Message {
    next_matching(events, |event| match event {
        Event::Message(m) if m.conversation_id == conversation => Some(m),
        _ => None,
    })
    .await
}

/// The next `n` messages of `conversation`.
async fn messages(events: &mut Events, conversation: ConversationId, n: usize) -> Vec<Message> {
    let mut out = Vec::with_capacity(n);
    for _ in 0..n {
        out.push(next_message(events, conversation).await);
    }
    out
}

/// The first `Status` about `user` in `conversation` that satisfies `done`.
async fn status_until(
    events: &mut Events,
    conversation: ConversationId,
    user: UserId,
    done: impl Fn(&Status) -> bool,
) -> Status {
    next_matching(events, |event| match event {
        Event::Status(s) if s.conversation_id == conversation && s.user_id == user && done(&s) => {
            Some(s)
        }
        _ => None,
    })
    .await
}

/// Skips events until `pick` takes one; fails on a disconnect or after the test timeout.
async fn next_matching<T>(events: &mut Events, pick: impl Fn(Event) -> Option<T>) -> T {
    tokio::time::timeout(TIMEOUT, async {
        loop {
            match events.recv().await {
                Some(Event::Disconnected(reason)) => panic!("disconnected: {reason}"),
                None => panic!("events ended"),
                Some(event) => {
                    if let Some(found) = pick(event) {
                        return found;
                    }
                }
            }
        }
    })
    .await
    .expect("the event in time")
}

async fn connect(stack: &Stack, kind: TransportKind, user: &User) -> (Client, Events) {
    Client::connect(stack.client_config(kind, &user.token))
        .await
        .unwrap_or_else(|err| panic!("{kind:?}: {err}"))
}

async fn send(client: &Client, message: haberci_client::SendMessage) -> Sent {
    tokio::time::timeout(TIMEOUT, client.send(message))
        .await
        .expect("an answer in time")
        .expect("Sent")
}

fn seq(n: u64) -> Seq {
    Seq::new(n).unwrap()
}

fn seqs(messages: &[Message]) -> Vec<u64> {
    messages.iter().map(|m| m.seq.get()).collect()
}

async fn direct_messages_flow_with_receipts(kind: TransportKind) {
    let stack = support::start().await;
    let (alice, bob) = (
        support::register(&stack).await,
        support::register(&stack).await,
    );
    let (a, mut a_events) = connect(&stack, kind, &alice).await;
    let (b, mut b_events) = connect(&stack, kind, &bob).await;

    let sent = send(&a, haberci_client::text_to(bob.id, "Merhaba Bob! 👋")).await;
    assert_eq!(sent.seq, seq(1));
    let conversation = sent.conversation_id;

    let got = next_message(&mut b_events, conversation).await;
    assert_eq!(
        (got.id, got.seq, got.sender_id, got.content.as_str()),
        (sent.message_id, sent.seq, alice.id, "Merhaba Bob! 👋")
    );
    // The sending session gets its own message too (PROTOCOL "Sending messages" 5).
    let own = next_message(&mut a_events, conversation).await;
    assert_eq!((own.id, own.seq), (sent.message_id, sent.seq));
    assert_eq!(a.positions()[0].last_seq, Some(sent.seq));

    // Bob's client acks by itself: Alice sees it delivered, then read once Bob reads it.
    let delivered = status_until(&mut a_events, conversation, bob.id, |s| {
        s.delivered >= Some(sent.seq)
    })
    .await;
    assert_eq!(delivered.read, None);
    b.read(conversation, sent.seq).unwrap();
    let read = status_until(&mut a_events, conversation, bob.id, |s| {
        s.read >= Some(sent.seq)
    })
    .await;
    assert_eq!(read.delivered, Some(sent.seq));

    // And back the other way, on the same conversation.
    let reply = send(&b, haberci_client::text_to(alice.id, "Selam Alice")).await;
    assert_eq!((reply.conversation_id, reply.seq), (conversation, seq(2)));
    assert_eq!(next_message(&mut a_events, conversation).await.seq, seq(2));
}

#[tokio::test]
async fn quic_direct_messages_flow_with_receipts() {
    direct_messages_flow_with_receipts(TransportKind::Quic).await;
}

#[tokio::test]
async fn webtransport_direct_messages_flow_with_receipts() {
    direct_messages_flow_with_receipts(TransportKind::WebTransport).await;
}

#[tokio::test]
async fn websocket_direct_messages_flow_with_receipts() {
    direct_messages_flow_with_receipts(TransportKind::WebSocket).await;
}

async fn reconnect_resumes_what_was_missed_without_gap_or_duplicate(kind: TransportKind) {
    let stack = support::start().await;
    let (alice, bob) = (
        support::register(&stack).await,
        support::register(&stack).await,
    );
    let (a, _a_events) = connect(&stack, kind, &alice).await;
    let (b, mut b_events) = connect(&stack, kind, &bob).await;
    let first = send(&a, haberci_client::text_to(bob.id, "1")).await;
    let conversation = first.conversation_id;
    assert_eq!(next_message(&mut b_events, conversation).await.seq, seq(1));

    // Bob goes away; Alice goes on writing.
    b.close().await;
    for n in 2..=4 {
        let sent = send(&a, haberci_client::text_to(bob.id, n.to_string())).await;
        assert_eq!(sent.seq, seq(n));
    }
    let (b, mut b_events) = tokio::time::timeout(TIMEOUT, b.reconnect())
        .await
        .expect("reconnected in time")
        .unwrap();
    // Then one more, live: it comes after the backlog, with nothing between.
    let live = send(&a, haberci_client::text_to(bob.id, "5")).await;
    let got = messages(&mut b_events, conversation, 4).await;
    assert_eq!(seqs(&got), vec![2, 3, 4, 5], "{kind:?}");
    assert_eq!(
        got.iter().map(|m| m.content.as_str()).collect::<Vec<_>>(),
        vec!["2", "3", "4", "5"]
    );
    assert_eq!(got[3].id, live.message_id);
    assert_eq!(b.positions()[0].last_seq, Some(seq(5)));
}

#[tokio::test]
async fn quic_reconnect_resumes_what_was_missed_without_gap_or_duplicate() {
    reconnect_resumes_what_was_missed_without_gap_or_duplicate(TransportKind::Quic).await;
}

#[tokio::test]
async fn webtransport_reconnect_resumes_what_was_missed_without_gap_or_duplicate() {
    reconnect_resumes_what_was_missed_without_gap_or_duplicate(TransportKind::WebTransport).await;
}

#[tokio::test]
async fn websocket_reconnect_resumes_what_was_missed_without_gap_or_duplicate() {
    reconnect_resumes_what_was_missed_without_gap_or_duplicate(TransportKind::WebSocket).await;
}

async fn a_send_to_an_unknown_user_is_refused(kind: TransportKind) {
    let stack = support::start().await;
    let alice = support::register(&stack).await;
    let (a, _events) = connect(&stack, kind, &alice).await;
    let nobody = UserId::new(uuid::Uuid::now_v7()).unwrap();
    let answer = tokio::time::timeout(TIMEOUT, a.send(haberci_client::text_to(nobody, "?")))
        .await
        .expect("an answer in time");
    assert!(
        matches!(
            answer,
            Err(SendError::Refused {
                code: ErrorCode::UnknownRecipient,
                ..
            })
        ),
        "{kind:?}: {answer:?}"
    );
    assert!(a.is_open(), "a refusal is not fatal");
    a.ping().await.unwrap();
}

#[tokio::test]
async fn quic_a_send_to_an_unknown_user_is_refused() {
    a_send_to_an_unknown_user_is_refused(TransportKind::Quic).await;
}

#[tokio::test]
async fn webtransport_a_send_to_an_unknown_user_is_refused() {
    a_send_to_an_unknown_user_is_refused(TransportKind::WebTransport).await;
}

#[tokio::test]
async fn websocket_a_send_to_an_unknown_user_is_refused() {
    a_send_to_an_unknown_user_is_refused(TransportKind::WebSocket).await;
}

async fn the_same_client_msg_id_is_stored_once(kind: TransportKind) {
    let stack = support::start().await;
    let (alice, bob) = (
        support::register(&stack).await,
        support::register(&stack).await,
    );
    let (a, _a_events) = connect(&stack, kind, &alice).await;
    let (_b, mut b_events) = connect(&stack, kind, &bob).await;
    let message = haberci_client::text_to(bob.id, "once");
    let first = send(&a, message.clone()).await;
    for _ in 0..2 {
        assert_eq!(send(&a, message.clone()).await, first, "{kind:?}");
    }
    // Bob got it once: the next message he gets is the next seq.
    let next = send(&a, haberci_client::text_to(bob.id, "twice?")).await;
    assert_eq!(next.seq, seq(2));
    let got = messages(&mut b_events, first.conversation_id, 2).await;
    assert_eq!(seqs(&got), vec![1, 2]);
    assert_eq!(got[0].id, first.message_id);
}

#[tokio::test]
async fn quic_the_same_client_msg_id_is_stored_once() {
    the_same_client_msg_id_is_stored_once(TransportKind::Quic).await;
}

#[tokio::test]
async fn webtransport_the_same_client_msg_id_is_stored_once() {
    the_same_client_msg_id_is_stored_once(TransportKind::WebTransport).await;
}

#[tokio::test]
async fn websocket_the_same_client_msg_id_is_stored_once() {
    the_same_client_msg_id_is_stored_once(TransportKind::WebSocket).await;
}

#[tokio::test]
async fn a_group_reaches_every_member_on_every_transport_once_in_order() {
    let stack = support::start().await;
    let owner = support::register(&stack).await;
    let members = [
        support::register(&stack).await,
        support::register(&stack).await,
    ];
    // Everyone is connected before the group exists: a group you are added to is followed
    // from its start.
    let (o, mut o_events) = connect(&stack, TransportKind::Quic, &owner).await;
    let (_m1, mut m1_events) = connect(&stack, TransportKind::WebTransport, &members[0]).await;
    let (_m2, mut m2_events) = connect(&stack, TransportKind::WebSocket, &members[1]).await;
    let group = users::create_group(stack.backend, &owner, &[&members[0], &members[1]]).await;

    let mut sent = Vec::new();
    for n in 1..=5 {
        let message =
            haberci_client::message(Recipient::Group(group), MessageKind::Text, n.to_string());
        sent.push(send(&o, message).await);
    }
    let conversation = sent[0].conversation_id;
    assert_eq!(
        sent.iter().map(|s| s.seq.get()).collect::<Vec<_>>(),
        vec![1, 2, 3, 4, 5]
    );
    for (who, events) in [
        ("owner (QUIC)", &mut o_events),
        ("member (WebTransport)", &mut m1_events),
        ("member (WebSocket)", &mut m2_events),
    ] {
        let got = messages(events, conversation, 5).await;
        assert_eq!(seqs(&got), vec![1, 2, 3, 4, 5], "{who}");
        assert!(got.iter().all(|m| m.sender_id == owner.id), "{who}");
        assert!(
            got.iter().zip(&sent).all(|(m, s)| m.id == s.message_id),
            "{who}"
        );
        // Nothing else of this conversation is waiting (a duplicate would be).
        while let Some(event) = events.try_recv() {
            assert!(
                !matches!(&event, Event::Message(m) if m.conversation_id == conversation),
                "{who}: {event:?}"
            );
        }
    }
}

async fn typing_reaches_the_peer(kind: TransportKind) {
    let stack = support::start().await;
    let (alice, bob) = (
        support::register(&stack).await,
        support::register(&stack).await,
    );
    let (a, mut a_events) = connect(&stack, kind, &alice).await;
    let (b, mut b_events) = connect(&stack, kind, &bob).await;
    // Typing goes to conversations a session follows: start one.
    let sent = send(&a, haberci_client::text_to(bob.id, "hi")).await;
    let conversation = sent.conversation_id;
    next_message(&mut b_events, conversation).await;
    next_message(&mut a_events, conversation).await;

    // Over WebTransport both directions travel as datagrams.
    a.typing(conversation, TypingState::Started).unwrap();
    let typing = next_matching(&mut b_events, |event| match event {
        Event::Typing(t) => Some(t),
        _ => None,
    })
    .await;
    assert_eq!(
        (typing.conversation_id, typing.user_id, typing.state),
        (conversation, alice.id, TypingState::Started)
    );
    b.typing(conversation, TypingState::Stopped).unwrap();
    let typing = next_matching(&mut a_events, |event| match event {
        Event::Typing(t) => Some(t),
        _ => None,
    })
    .await;
    assert_eq!(
        (typing.user_id, typing.state),
        (bob.id, TypingState::Stopped)
    );
}

#[tokio::test]
async fn quic_typing_reaches_the_peer() {
    typing_reaches_the_peer(TransportKind::Quic).await;
}

#[tokio::test]
async fn webtransport_typing_reaches_the_peer() {
    typing_reaches_the_peer(TransportKind::WebTransport).await;
}

#[tokio::test]
async fn websocket_typing_reaches_the_peer() {
    typing_reaches_the_peer(TransportKind::WebSocket).await;
}
