//! The relay through real sockets, with the real API, an in-process worker and the test Redis
//! ([`haberci_testkit::stack::Builder::relay`]): typing reaches the peer, presence follows
//! sessions, and a client that stops reading is closed as a slow consumer while its peer is
//! untouched.

use std::time::Duration;

use haberci_testkit::{Stack, TIMEOUT, User, env, users};
use haberci_wire::{
    ClientFrame, ClientMsgId, ClientTyping, ErrorCode, MessageKind, MessageStatus, PresenceWatch,
    Recipient, SendMessage, ServerFrame, TypingState, UserId,
};
use quinn::{ConnectionError, VarInt};

use crate::native::Native;
use crate::support::hello;

async fn register(stack: &Stack) -> User {
    users::register(stack.backend, "relay").await
}

fn text(to: UserId, content: &str) -> ClientFrame {
    ClientFrame::Send(SendMessage {
        client_msg_id: ClientMsgId::new(uuid::Uuid::now_v7()).unwrap(),
        recipient: Recipient::User(to),
        kind: MessageKind::Text,
        content: content.into(),
        media: None,
    })
}

/// Opens a native session for `token` and reads its Welcome.
async fn session(stack: &Stack, token: &str) -> Native {
    session_with(stack, token, quinn::TransportConfig::default()).await
}

async fn session_with(stack: &Stack, token: &str, transport: quinn::TransportConfig) -> Native {
    let mut native = Native::open_with(stack, transport).await;
    native.write(&hello(token, 1)).await;
    match native.read().await {
        ServerFrame::Welcome(_) => native,
        other => panic!("expected Welcome, got {other:?}"),
    }
}

/// Reads until the next `Presence` frame.
async fn next_presence(native: &mut Native) -> haberci_wire::Presence {
    until(native, |f| match f {
        ServerFrame::Presence(p) => Some(p),
        _ => None,
    })
    .await
}

/// Reads until `pick` takes a frame.
async fn until<T>(native: &mut Native, mut pick: impl FnMut(ServerFrame) -> Option<T>) -> T {
    loop {
        if let Some(found) = pick(native.read().await) {
            return found;
        }
    }
}

#[tokio::test]
async fn typing_reaches_the_peer_of_a_direct_conversation() {
    let stack = Stack::builder().relay().start().await;
    let User {
        id: alice_id,
        token: alice_token,
        ..
    } = register(&stack).await;
    let User {
        id: bob_id,
        token: bob_token,
        ..
    } = register(&stack).await;
    let mut alice = session(&stack, &alice_token).await;
    let mut bob = session(&stack, &bob_token).await;

    alice.write(&text(bob_id, "hi")).await;
    // Both sessions follow the new conversation once its first message reached them.
    let conversation = until(&mut alice, |f| match f {
        ServerFrame::Message(m) => Some(m.conversation_id),
        _ => None,
    })
    .await;
    until(&mut bob, |f| {
        matches!(f, ServerFrame::Message(_)).then_some(())
    })
    .await;

    alice
        .write(&ClientFrame::Typing(ClientTyping {
            conversation_id: conversation,
            state: TypingState::Started,
        }))
        .await;
    let typing = until(&mut bob, |f| match f {
        ServerFrame::Typing(t) => Some(t),
        _ => None,
    })
    .await;
    assert_eq!(typing.conversation_id, conversation);
    assert_eq!(typing.user_id, alice_id);
    assert_eq!(typing.state, TypingState::Started);

    // The same over a QUIC datagram, the way ephemeral frames may travel on native QUIC.
    let stopped = haberci_wire::datagram::encode(
        &ClientFrame::Typing(ClientTyping {
            conversation_id: conversation,
            state: TypingState::Stopped,
        }),
        haberci_wire::DEFAULT_MAX_FRAME_SIZE,
    )
    .unwrap();
    alice.client.connection.send_datagram(stopped).unwrap();
    let typing = until(&mut bob, |f| match f {
        ServerFrame::Typing(t) => Some(t),
        _ => None,
    })
    .await;
    assert_eq!(typing.state, TypingState::Stopped);
}

/// Presence reaches a watcher with a relationship (here a follow both ways) as it changes;
/// a stranger reads as offline and never seen even while online (docs/PROTOCOL.md).
#[tokio::test]
async fn presence_follows_the_watched_users_sessions() {
    let stack = Stack::builder().relay().start().await;
    let alice = register(&stack).await;
    let bob = register(&stack).await;
    let carol = register(&stack).await;
    befriend(&stack, &alice, &bob).await;
    let _carol_session = session(&stack, &carol.token).await;
    let mut watcher = session(&stack, &bob.token).await;
    watcher
        .write(&ClientFrame::PresenceWatch(PresenceWatch {
            user_ids: vec![alice.id, carol.id],
        }))
        .await;
    let mut now = [
        next_presence(&mut watcher).await,
        next_presence(&mut watcher).await,
    ];
    now.sort_by_key(|p| p.user_id != alice.id);
    assert_eq!(
        (now[0].user_id, now[0].online),
        (alice.id, false),
        "{now:?}"
    );
    assert_eq!(
        (now[1].user_id, now[1].online, now[1].last_seen),
        (carol.id, false, None),
        "a stranger's presence is not shown: {now:?}"
    );

    let alice_session = session(&stack, &alice.token).await;
    let online = next_presence(&mut watcher).await;
    assert_eq!(
        (online.user_id, online.online),
        (alice.id, true),
        "{online:?}"
    );

    alice_session
        .client
        .connection
        .close(VarInt::from_u32(0), b"bye");
    let offline = next_presence(&mut watcher).await;
    assert_eq!(
        (offline.user_id, offline.online),
        (alice.id, false),
        "{offline:?}"
    );
    assert!(offline.last_seen.is_some(), "last seen is recorded");
}

/// `a` and `b` follow each other: each may watch the other's presence.
async fn befriend(stack: &Stack, a: &User, b: &User) {
    for (who, whom) in [(a, b), (b, a)] {
        let (status, body) = haberci_testkit::api::call(
            stack.backend,
            http::Method::POST,
            &format!("/v1/users/{}/follow", whom.username),
            serde_json::Value::Null,
            Some(&who.token),
        )
        .await;
        assert!((200..300).contains(&status), "{body}");
    }
}

/// A Redis client of the test's own, to play another gateway.
async fn redis() -> fred::clients::Client {
    use fred::prelude::*;
    let config = Config::from_url(&env::redis_url()).unwrap();
    let client = Builder::from_config(config).build().unwrap();
    client.init().await.unwrap();
    client
}

/// A relay stack whose presence renews (and reconciles, every 15th time) every 100 ms.
async fn presence_stack() -> Stack {
    Stack::builder()
        .relay()
        .configure(|config| {
            config.relay.presence_refresh = Duration::from_millis(100);
        })
        .start()
        .await
}

/// Says in Redis that `gateway` is alive until `until` (Unix ms), as a gateway renews itself.
async fn alive_until(redis: &fred::clients::Client, gateway: &str, until: i64) {
    use fred::prelude::*;
    let _: i64 = redis
        .zadd(
            haberci_seam::streams::GATEWAYS_KEY,
            None,
            None,
            false,
            false,
            (until as f64, gateway),
        )
        .await
        .unwrap();
}

/// Writes what a gateway's claim of `user` leaves in Redis, as a gateway of the previous
/// release would (its claim time as the value, which now counts as one session).
async fn claim(redis: &fred::clients::Client, gateway: &str, user: UserId) {
    use fred::prelude::*;
    use haberci_seam::streams;
    let _: i64 = redis
        .hset(streams::presence_key(user), (gateway, now_ms()))
        .await
        .unwrap();
    let _: i64 = redis
        .sadd(streams::gateway_users_key(gateway), user.to_string())
        .await
        .unwrap();
}

fn now_ms() -> i64 {
    let since = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap();
    i64::try_from(since.as_millis()).unwrap()
}

#[tokio::test]
async fn the_users_of_a_dead_gateway_go_offline_for_their_watchers() {
    use fred::prelude::*;
    use haberci_seam::streams;

    let stack = presence_stack().await;
    let alice_user = register(&stack).await;
    let bob_user = register(&stack).await;
    befriend(&stack, &alice_user, &bob_user).await;
    let (alice, bob_token) = (alice_user.id, bob_user.token);
    // Another gateway holds Alice's session and is alive for a minute, as far as Redis knows.
    let redis = redis().await;
    let ghost = format!("ghost-{}", uuid::Uuid::new_v4().simple());
    alive_until(&redis, &ghost, now_ms() + 60_000).await;
    claim(&redis, &ghost, alice).await;

    let mut bob = session(&stack, &bob_token).await;
    bob.write(&ClientFrame::PresenceWatch(PresenceWatch {
        user_ids: vec![alice],
    }))
    .await;
    let before = next_presence(&mut bob).await;
    assert_eq!((before.user_id, before.online), (alice, true), "{before:?}");

    // That gateway stops renewing and its time runs out: the live gateway takes its users
    // offline, tells the watchers, and forgets it.
    alive_until(&redis, &ghost, now_ms() - 1).await;
    let after = next_presence(&mut bob).await;
    assert_eq!((after.user_id, after.online), (alice, false), "{after:?}");
    assert!(after.last_seen.is_some(), "last seen is recorded");
    let left: i64 = redis
        .exists(vec![
            streams::presence_key(alice),
            streams::gateway_users_key(&ghost),
        ])
        .await
        .unwrap();
    assert_eq!(left, 0, "the dead gateway's claim and user list are gone");
    let score: Option<f64> = redis.zscore(streams::GATEWAYS_KEY, &ghost).await.unwrap();
    assert_eq!(score, None, "the dead gateway is forgotten");
}

#[tokio::test]
async fn a_user_redis_still_lists_after_their_session_closed_is_set_right() {
    use fred::prelude::*;
    use haberci_seam::streams;

    let stack = presence_stack().await;
    let carol_user = register(&stack).await;
    let bob_user = register(&stack).await;
    befriend(&stack, &carol_user, &bob_user).await;
    let (carol, bob_id, bob_token) = (carol_user.id, bob_user.id, bob_user.token);
    // Bob's session claims him on the gateway: that names the gateway in Redis.
    let mut bob = session(&stack, &bob_token).await;
    let redis = redis().await;
    let gateways: Vec<String> = redis.hkeys(streams::presence_key(bob_id)).await.unwrap();
    let [gateway] = gateways.as_slice() else {
        panic!("one gateway holds Bob: {gateways:?}");
    };
    // Carol's session closed while Redis was away (as far as Redis knows, she is still on
    // this live gateway).
    claim(&redis, gateway, carol).await;
    bob.write(&ClientFrame::PresenceWatch(PresenceWatch {
        user_ids: vec![carol],
    }))
    .await;
    // Bob hears her online (the stale claim) until the gateway's periodic reconcile finds no
    // session of hers and takes her offline; if it ran before his watch, he hears offline at
    // once. Without it, he would hear `online` and nothing more.
    let after = loop {
        let heard = next_presence(&mut bob).await;
        assert_eq!(heard.user_id, carol);
        if !heard.online {
            break heard;
        }
    };
    assert!(after.last_seen.is_some(), "last seen is recorded");
    let left: i64 = redis.exists(streams::presence_key(carol)).await.unwrap();
    assert_eq!(left, 0, "her stale claim is gone");
    let listed: bool = redis
        .sismember(streams::gateway_users_key(gateway), carol.to_string())
        .await
        .unwrap();
    assert!(!listed, "and she is no longer listed on the gateway");
}

/// A relay stack where one client may flood another, and a client that takes no bytes for a
/// second is slow.
async fn flood_stack() -> Stack {
    Stack::builder()
        .relay()
        .configure(|config| {
            config.session.send_rate_per_sec = 100_000;
            config.session.send_burst = 100_000;
            config.session.write_timeout = Duration::from_secs(1);
        })
        .start()
        .await
}

#[tokio::test]
async fn a_client_that_stops_reading_is_closed_as_slow_and_its_peer_goes_on() {
    let stack = flood_stack().await;
    let User {
        id: alice_id,
        token: alice_token,
        ..
    } = register(&stack).await;
    let User {
        id: bob_id,
        token: bob_token,
        ..
    } = register(&stack).await;
    let User {
        id: carol_id,
        token: carol_token,
        ..
    } = register(&stack).await;
    let mut alice = session(&stack, &alice_token).await;
    // Bob's client takes at most 8 KiB on its stream and then reads nothing more.
    let mut transport = quinn::TransportConfig::default();
    transport.stream_receive_window(VarInt::from_u32(8 * 1024));
    let bob = session_with(&stack, &bob_token, transport).await;

    // Far more than the stream window plus the session's mailbox holds.
    for n in 0..1_500 {
        alice.write(&text(bob_id, &format!("flood {n}"))).await;
    }
    let closed = tokio::time::timeout(TIMEOUT, bob.client.connection.closed())
        .await
        .expect("the slow client is closed in time");
    match closed {
        ConnectionError::ApplicationClosed(close) => assert_eq!(
            close.error_code,
            VarInt::from_u64(ErrorCode::SlowConsumer.quic_code()).unwrap()
        ),
        other => panic!("expected an application close, got {other:?}"),
    }

    // Alice's session is untouched: she still sends, and a new peer hears from her.
    let mut carol = session(&stack, &carol_token).await;
    alice.write(&text(carol_id, "still here")).await;
    let heard = until(&mut carol, |f| match f {
        ServerFrame::Message(m) => Some(m),
        _ => None,
    })
    .await;
    assert_eq!(heard.content, "still here");
    assert_eq!(heard.sender_id, alice_id);
}

/// Over WebSocket the kernel takes megabytes before a write blocks, so a client that stops
/// reading is found by the server's WebSocket Ping going unanswered: it is closed as slow
/// (its watchers see it go offline) and its peer goes on.
#[tokio::test]
async fn a_websocket_client_that_stops_reading_is_closed_as_slow() {
    use crate::websocket as ws;
    let stack = flood_stack().await;
    let alice = register(&stack).await;
    let bob = register(&stack).await;
    let carol = register(&stack).await;
    befriend(&stack, &bob, &carol).await;
    let mut sender = session(&stack, &alice.token).await;
    let mut watcher = session(&stack, &carol.token).await;

    // Bob reads his Welcome, then nothing more.
    let mut reader = ws::open(&stack).await;
    ws::write(&mut reader, &hello(&bob.token, 1)).await;
    assert!(matches!(
        ws::read(&mut reader).await,
        Ok(ServerFrame::Welcome(_))
    ));
    watcher
        .write(&ClientFrame::PresenceWatch(PresenceWatch {
            user_ids: vec![bob.id],
        }))
        .await;
    let now = next_presence(&mut watcher).await;
    assert_eq!((now.user_id, now.online), (bob.id, true), "{now:?}");

    for n in 0..200 {
        sender.write(&text(bob.id, &format!("flood {n}"))).await;
    }
    let gone = next_presence(&mut watcher).await;
    assert_eq!(
        (gone.user_id, gone.online),
        (bob.id, false),
        "the reader that stopped is closed: {gone:?}"
    );
    drop(reader);

    // Alice goes on.
    sender.write(&text(carol.id, "still here")).await;
    let heard = until(&mut watcher, |f| match f {
        ServerFrame::Message(m) => Some(m),
        _ => None,
    })
    .await;
    assert_eq!(heard.content, "still here");
}

/// A notification the backend publishes on `u:{user}` (`social::live::publish`) reaches
/// every open session of the user: here one over WebSocket and one over native QUIC.
#[tokio::test]
async fn a_published_notification_reaches_every_session_of_the_user() {
    use crate::websocket as ws;
    use haberci_wire::{Notification, NotificationId, NotificationKind, PostId, Timestamp};

    let stack = Stack::builder().relay().start().await;
    let User {
        id: alice_id,
        token: alice_token,
        ..
    } = register(&stack).await;
    let User { id: bob_id, .. } = register(&stack).await;
    let mut quic = session(&stack, &alice_token).await;
    let mut socket = ws::connect(&stack, Some(haberci_wire::WEBSOCKET_SUBPROTOCOL))
        .await
        .unwrap();
    ws::write(
        &mut socket,
        &hello(&alice_token, haberci_wire::PROTOCOL_VERSION),
    )
    .await;
    assert!(matches!(
        ws::read(&mut socket).await,
        Ok(ServerFrame::Welcome(_))
    ));
    // Synchronisation, not a sleep: a session lists (and fetches) conversations only after
    // it subscribed `u:{user}`, so once both sessions hold this message — live or fetched —
    // both listen on the channel the notification goes to.
    quic.write(&text(bob_id, "hi")).await;
    until(&mut quic, |f| {
        matches!(f, ServerFrame::Message(_)).then_some(())
    })
    .await;
    loop {
        match ws::read(&mut socket).await {
            Ok(ServerFrame::Message(_)) => break,
            Ok(_) => {}
            Err(code) => panic!("closed: {code:?}"),
        }
    }

    let notification = Notification {
        id: NotificationId::new(uuid::Uuid::now_v7()).unwrap(),
        kind: NotificationKind::Like,
        actor_id: bob_id,
        actor_username: "bob".into(),
        post_id: Some(PostId::new(uuid::Uuid::now_v7()).unwrap()),
        comment_id: None,
        created_at: Timestamp::from_unix_millis(1_795_600_800_000).unwrap(),
        unread_count: 4,
    };
    let redis = redis().await;
    haberci_backend::social::live::publish(&redis, alice_id, notification.clone()).await;

    let on_quic = until(&mut quic, |f| match f {
        ServerFrame::Notification(n) => Some(n),
        _ => None,
    })
    .await;
    assert_eq!(on_quic, notification);
    let on_socket = loop {
        match ws::read(&mut socket).await {
            Ok(ServerFrame::Notification(n)) => break n,
            Ok(_) => {}
            Err(code) => panic!("closed: {code:?}"),
        }
    };
    assert_eq!(on_socket, notification);
}

/// A revoked session's token still verifies (signed, unexpired). A gateway that missed the
/// revocation's announcement (it was not running; Redis lost the message) must still refuse
/// its Hello, on every transport, and a Send pipelined behind that Hello goes nowhere.
#[tokio::test]
async fn a_revoked_sessions_token_is_refused_at_hello_and_nothing_behind_it_is_stored() {
    use fred::interfaces::KeysInterface;
    let stack = Stack::builder().relay().start().await;
    let alice = register(&stack).await;
    let bob = register(&stack).await;
    let (first, _) = haberci_client::Client::connect(
        stack.client_config(haberci_testkit::TransportKind::WebSocket, &alice.token),
    )
    .await
    .unwrap();
    let session = first.welcome().session_id;
    first.close().await;

    // Revoked in Postgres only: no announcement, and the cached "active" entry gone, as after
    // a missed message and the cache entry's expiry.
    let db = haberci_backend::db::connect_pool(&env::database_url(), 1).unwrap();
    let revoked = haberci_backend::auth::sessions::revoke_one(
        &db,
        alice.id,
        session,
        haberci_seam::revocation::RevokeReason::Logout,
    )
    .await
    .unwrap();
    assert_eq!(revoked.sessions.len(), 1);
    let redis = haberci_backend::redis::connect(&env::redis_url()).unwrap();
    let _: i64 = redis
        .del(haberci_backend::auth::sessions::cache_key(session))
        .await
        .unwrap();

    for kind in haberci_testkit::TransportKind::ALL {
        let refused = haberci_client::Client::connect(stack.client_config(kind, &alice.token))
            .await
            .map(|_| ())
            .expect_err("a revoked session's token opens nothing");
        assert_eq!(
            refused.code(),
            Some(ErrorCode::Unauthenticated),
            "{kind:?}: {refused}"
        );
    }

    // Hello and a Send written together, on native QUIC.
    let mut native = Native::open_with(&stack, quinn::TransportConfig::default()).await;
    native.write(&hello(&alice.token, 1)).await;
    native.write(&text(bob.id, "behind a revoked hello")).await;
    match native.read().await {
        ServerFrame::Closing(closing) => assert_eq!(closing.code, ErrorCode::Unauthenticated),
        other => panic!("expected Closing, got {other:?}"),
    }
    // Had it been stored, Bob would have a conversation with Alice.
    let (status, body) = haberci_testkit::api::call(
        stack.backend,
        http::Method::GET,
        "/v1/conversations",
        serde_json::Value::Null,
        Some(&bob.token),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["conversations"], serde_json::json!([]), "{body}");
}

/// `Message.status` is the viewer's, by one rule on every path (docs/PROTOCOL.md,
/// "Receipts"): live, Bob gets Alice's message as `delivered` and Alice's other session as
/// `sent`; the history says the same to each of them.
#[tokio::test]
async fn a_messages_status_is_the_viewers_on_live_and_history_paths_alike() {
    let stack = Stack::builder().relay().start().await;
    let alice = register(&stack).await;
    let bob = register(&stack).await;
    // No acks: the watermarks stay where they are, so each view is known.
    let connect = |token: &str| {
        let mut config = stack.client_config(haberci_testkit::TransportKind::Quic, token);
        config.auto_ack = false;
        async move { haberci_client::Client::connect(config).await.unwrap() }
    };
    let (sender, _sender_events) = connect(&alice.token).await;
    let (_other, mut other_events) = connect(&alice.token).await;
    let (_bob_client, mut bob_events) = connect(&bob.token).await;
    let ClientFrame::Send(send) = text(bob.id, "whose status?") else {
        unreachable!()
    };
    let sent = sender.send(send).await.unwrap();
    assert_eq!(
        live_status(&mut bob_events, sent.message_id).await,
        MessageStatus::Delivered
    );
    assert_eq!(
        live_status(&mut other_events, sent.message_id).await,
        MessageStatus::Sent
    );
    // Nobody acked or read: the history tells each viewer what the live frame told them.
    let conversation = haberci_seam::streams::direct_conversation(alice.id, bob.id);
    for (viewer, expected) in [(&bob, "delivered"), (&alice, "sent")] {
        let (status, body) = haberci_testkit::api::call(
            stack.backend,
            http::Method::GET,
            &format!("/v1/conversations/{conversation}/messages"),
            serde_json::Value::Null,
            Some(&viewer.token),
        )
        .await;
        assert_eq!(status, 200, "{body}");
        assert_eq!(body["messages"][0]["status"], expected, "{body}");
    }
}

/// The status of the live `Message` with this id.
async fn live_status(
    events: &mut haberci_client::Events,
    id: haberci_wire::MessageId,
) -> MessageStatus {
    loop {
        match tokio::time::timeout(haberci_testkit::TIMEOUT, events.recv()).await {
            Ok(Some(haberci_client::Event::Message(m))) if m.id == id => return m.status,
            Ok(Some(_)) => continue,
            other => panic!("no message {id}: {other:?}"),
        }
    }
}

/// A user's realtime sessions are capped across every gateway: one more than the limit is
/// refused `too_many_sessions` before Welcome, counting the sessions another live gateway
/// holds (its field of `presence:{user}`), and a freed place can be taken again.
#[tokio::test]
async fn one_session_more_than_the_limit_is_refused_across_gateways() {
    use fred::prelude::*;
    use haberci_seam::streams;

    let stack = Stack::builder()
        .relay()
        .configure(|config| config.relay.max_sessions_per_user = 2)
        .start()
        .await;
    let alice = register(&stack).await;
    let connect = || {
        haberci_client::Client::connect(
            stack.client_config(haberci_testkit::TransportKind::Quic, &alice.token),
        )
    };
    let refused = |result: Result<_, haberci_client::ConnectError>| match result {
        Ok(_) => panic!("a session over the limit was welcomed"),
        Err(err) => assert_eq!(err.code(), Some(ErrorCode::TooManySessions), "{err}"),
    };

    // Another gateway, alive as far as Redis knows, holds two of Alice's sessions.
    let redis = redis().await;
    let ghost = format!("ghost-{}", uuid::Uuid::new_v4().simple());
    alive_until(&redis, &ghost, now_ms() + 60_000).await;
    let _: () = redis
        .hset(streams::presence_key(alice.id), (ghost.as_str(), 2))
        .await
        .unwrap();
    refused(connect().await.map(|_| ()));

    // It closes one of them: one place here.
    let _: () = redis
        .hset(streams::presence_key(alice.id), (ghost.as_str(), 1))
        .await
        .unwrap();
    let (first, _events) = connect().await.unwrap();
    refused(connect().await.map(|_| ()));

    // That gateway is gone: a second place here, and no third.
    let _: i64 = redis
        .zrem(streams::GATEWAYS_KEY, ghost.as_str())
        .await
        .unwrap();
    let (_second, _events2) = connect().await.unwrap();
    refused(connect().await.map(|_| ()));
    drop(first);
}
