//! Notifications pushed live: an action over the HTTP API reaches the recipient's open QUIC
//! and WebSocket sessions as a `Notification` frame and is in `GET /v1/notifications`
//! afterwards; blocked and muted users cause none.

use haberci_client::{Event, Events, Notification, NotificationKind};
use haberci_testkit::{Stack, TIMEOUT, TransportKind, User, api};
use http::Method;
use serde_json::{Value, json};

use crate::support;

async fn call(stack: &Stack, method: Method, path: &str, body: Value, by: &User) -> Value {
    let (status, json) =
        api::call(stack.backend, method.clone(), path, body, Some(&by.token)).await;
    assert!(
        (200..300).contains(&status),
        "{method} {path}: {status} {json}"
    );
    json
}

/// The next notification on `events` (other events are skipped).
async fn next_notification(events: &mut Events) -> Notification {
    tokio::time::timeout(TIMEOUT, async {
        loop {
            match events.recv().await {
                Some(Event::Notification(n)) => return n,
                Some(Event::Disconnected(reason)) => panic!("disconnected: {reason}"),
                None => panic!("events ended"),
                Some(_) => {}
            }
        }
    })
    .await
    .expect("a notification in time")
}

#[tokio::test]
async fn a_like_reaches_open_quic_and_websocket_sessions_and_blocked_or_muted_users_cause_none() {
    let stack = support::start().await;
    let author = support::register(&stack).await;
    let fan = support::register(&stack).await;
    let muted = support::register(&stack).await;
    let blocked = support::register(&stack).await;
    let last = support::register(&stack).await;
    let (_quic, mut on_quic) =
        haberci_client::Client::connect(stack.client_config(TransportKind::Quic, &author.token))
            .await
            .unwrap();
    let (_ws, mut on_ws) = haberci_client::Client::connect(
        stack.client_config(TransportKind::WebSocket, &author.token),
    )
    .await
    .unwrap();

    let post = call(
        &stack,
        Method::POST,
        "/v1/posts",
        json!({ "content": "hello" }),
        &author,
    )
    .await;
    let post_id = post["id"].as_str().unwrap().to_owned();
    call(
        &stack,
        Method::POST,
        &format!("/v1/posts/{post_id}/like"),
        Value::Null,
        &fan,
    )
    .await;

    for events in [&mut on_quic, &mut on_ws] {
        let n = next_notification(events).await;
        assert_eq!(n.kind, NotificationKind::Like);
        assert_eq!(n.actor_id.as_uuid(), fan.id.as_uuid());
        assert_eq!(n.actor_username, fan.username);
        assert_eq!(
            n.post_id.map(|p| p.as_uuid().to_string()),
            Some(post_id.clone())
        );
        assert_eq!(n.unread_count, 1);
    }
    let list = call(
        &stack,
        Method::GET,
        "/v1/notifications",
        Value::Null,
        &author,
    )
    .await;
    assert_eq!(list["notifications"][0]["kind"], "like");
    assert_eq!(list["unreadCount"], 1);

    // A muted user's like and a blocked user's mention cause nothing: the next frame on both
    // sessions is the comment that came after them (one channel, published in order).
    call(
        &stack,
        Method::POST,
        &format!("/v1/users/{}/mute", muted.username),
        Value::Null,
        &author,
    )
    .await;
    call(
        &stack,
        Method::POST,
        &format!("/v1/users/{}/block", blocked.username),
        Value::Null,
        &author,
    )
    .await;
    call(
        &stack,
        Method::POST,
        &format!("/v1/posts/{post_id}/like"),
        Value::Null,
        &muted,
    )
    .await;
    call(
        &stack,
        Method::POST,
        "/v1/posts",
        json!({ "content": format!("hey @{}", author.username) }),
        &blocked,
    )
    .await;
    call(
        &stack,
        Method::POST,
        &format!("/v1/posts/{post_id}/comments"),
        json!({ "content": "nice" }),
        &last,
    )
    .await;
    for events in [&mut on_quic, &mut on_ws] {
        let n = next_notification(events).await;
        assert_eq!(n.kind, NotificationKind::Comment);
        assert_eq!(n.actor_username, last.username);
        assert_eq!(n.unread_count, 2);
    }
}
