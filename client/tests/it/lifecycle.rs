//! How connections end — the server draining, the client closing or dropping — and starting
//! again from where the last one stopped.

use haberci_client::{
    Client, ConversationId, Disconnect, ErrorCode, Event, ResumePosition, SendError, Seq,
};
use haberci_testkit::{TIMEOUT, TransportKind, labelled, users};

use crate::support::{self, next_event};

async fn server_shutdown(kind: TransportKind) {
    let stack = support::start().await;
    let user = support::register(&stack).await;
    let (client, mut events) = Client::connect(stack.client_config(kind, &user.token))
        .await
        .unwrap();
    stack.begin_shutdown();
    match next_event(&mut events).await {
        Some(Event::Closing(closing)) => {
            assert_eq!(closing.code, ErrorCode::ServerDraining);
            // 1 s plus this session's share of the default 10 s spread.
            let wait = closing
                .retry_after_ms
                .expect("a drain says when to come back")
                .get();
            assert!((1_000..11_000).contains(&wait), "{wait}");
        }
        other => panic!("expected Closing, got {other:?}"),
    }
    match next_event(&mut events).await {
        Some(Event::Disconnected(Disconnect::Server { code, reason })) => {
            assert_eq!(code, Some(ErrorCode::ServerDraining));
            // The transport's own close carried the code (its reason is the code's name),
            // not only the Closing frame (whose reason is a sentence).
            assert_eq!(reason, "server_draining", "{kind:?}");
        }
        other => panic!("expected Disconnected, got {other:?}"),
    }
    assert_eq!(next_event(&mut events).await, None, "Disconnected is last");
    tokio::time::timeout(TIMEOUT, client.closed())
        .await
        .expect("the client notices");
    assert!(!client.is_open());
    let late = client.send(haberci_client::text_to(user.id, "late")).await;
    assert_eq!(late, Err(SendError::Disconnected));
}

#[tokio::test]
async fn server_shutdown_yields_closing_then_disconnected() {
    for kind in TransportKind::ALL {
        labelled(kind, server_shutdown(kind)).await;
    }
}

async fn local_close(kind: TransportKind) {
    let stack = support::start().await;
    let user = support::register(&stack).await;
    let (client, mut events) = Client::connect(stack.client_config(kind, &user.token))
        .await
        .unwrap();
    tokio::time::timeout(TIMEOUT, client.close())
        .await
        .expect("closed in time");
    assert_eq!(
        next_event(&mut events).await,
        Some(Event::Disconnected(Disconnect::Local))
    );
    assert_eq!(next_event(&mut events).await, None);
    assert_eq!(
        client.ping().await,
        Err(haberci_client::ClientError::Disconnected)
    );
}

#[tokio::test]
async fn close_ends_events_with_a_local_disconnect() {
    for kind in TransportKind::ALL {
        labelled(kind, local_close(kind)).await;
    }
}

#[tokio::test]
async fn dropping_every_handle_closes_the_connection() {
    let stack = support::start().await;
    let user = support::register(&stack).await;
    let (client, mut events) =
        Client::connect(stack.client_config(TransportKind::Quic, &user.token))
            .await
            .unwrap();
    let clone = client.clone();
    drop(client);
    clone
        .ping()
        .await
        .expect("a clone keeps the connection open");
    drop(clone);
    assert_eq!(
        next_event(&mut events).await,
        Some(Event::Disconnected(Disconnect::Local))
    );
}

#[tokio::test]
async fn reconnect_resumes_from_the_tracked_positions() {
    let stack = support::start().await;
    let user = support::register(&stack).await;
    let resume = vec![ResumePosition {
        conversation_id: ConversationId::new(uuid::Uuid::now_v7()).unwrap(),
        last_seq: Seq::new(5),
    }];
    let mut config = stack.client_config(TransportKind::Quic, &user.token);
    config.resume = resume.clone();
    let (client, _events) = Client::connect(config).await.unwrap();
    assert_eq!(client.positions(), resume);
    assert_eq!(client.resume_config().resume, resume);

    let (again, _events) = tokio::time::timeout(TIMEOUT, client.reconnect())
        .await
        .expect("reconnected in time")
        .unwrap();
    assert!(!client.is_open(), "reconnect closes the old connection");
    assert!(again.is_open());
    assert_eq!(again.user_id(), user.id);
    assert_eq!(again.positions(), resume);
}

#[tokio::test]
async fn a_reconnect_after_refresh_auth_uses_the_new_token() {
    let stack = support::start().await;
    let user = support::register(&stack).await;
    let (client, _events) =
        Client::connect(stack.client_config(TransportKind::WebSocket, &user.token))
            .await
            .unwrap();
    let session = client.welcome().session_id;
    let token = users::refresh(stack.backend, &user).await;
    client.refresh_auth(token.clone()).unwrap();
    // A refused RefreshAuth closes the session; a Pong after it says it was accepted.
    client.ping().await.unwrap();
    assert!(client.is_open());
    assert_eq!(client.resume_config().access_token, token);

    let (again, _events) = client.reconnect().await.unwrap();
    assert_eq!(again.user_id(), user.id);
    assert_eq!(
        again.welcome().session_id,
        session,
        "the same login session"
    );
}

async fn refresh_auth_with_another_sessions_token(kind: TransportKind) {
    let stack = support::start().await;
    let user = support::register(&stack).await;
    let (client, mut events) = Client::connect(stack.client_config(kind, &user.token))
        .await
        .unwrap();
    // Another login: a token for the same user, but another session.
    let other = users::login(stack.backend, &user).await;
    client.refresh_auth(other).unwrap();
    match next_event(&mut events).await {
        Some(Event::Closing(closing)) => assert_eq!(closing.code, ErrorCode::Unauthenticated),
        other => panic!("expected Closing, got {other:?}"),
    }
    assert!(matches!(
        next_event(&mut events).await,
        Some(Event::Disconnected(Disconnect::Server {
            code: Some(ErrorCode::Unauthenticated),
            ..
        }))
    ));
}

#[tokio::test]
async fn refresh_auth_with_another_sessions_token_closes_with_unauthenticated() {
    for kind in TransportKind::ALL {
        labelled(kind, refresh_auth_with_another_sessions_token(kind)).await;
    }
}
