//! The gateways' internal API: the shared-secret guard, a user's conversations at session
//! start, and resume sync (positions, `more`, non-members, statuses, limits).

use http::StatusCode;
use serde_json::{Value, json};
use uuid::Uuid;

use crate::support::{
    Api, INTERNAL_TOKEN, Reply, direct_conversation, roomy_settings, set_watermarks, store_messages,
};

async fn create_group(api: &Api, token: &str, members: &[Uuid]) -> Uuid {
    let reply = api
        .call(
            "POST",
            "/v1/groups",
            json!({ "name": "sync", "memberIds": members }),
            Some(token),
        )
        .await;
    assert_eq!(reply.status, StatusCode::CREATED, "{}", reply.json);
    reply.str("/id").parse().unwrap()
}

async fn sync(api: &Api, body: Value) -> Reply {
    api.internal(
        "POST",
        "/internal/v1/sync",
        Some(body),
        Some(INTERNAL_TOKEN),
    )
    .await
}

fn seqs(conversation: &Value) -> Vec<u64> {
    conversation["messages"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["seq"].as_u64().unwrap())
        .collect()
}

#[tokio::test]
async fn internal_routes_need_the_shared_token_and_stay_out_of_the_public_document() {
    let api = Api::new();
    let user = api.user().await;
    let path = format!("/internal/v1/users/{}/conversations", user.id);
    let body = json!({ "userId": user.id, "positions": [] });

    for token in [None, Some("wrong"), Some(&INTERNAL_TOKEN[1..]), Some("")] {
        let reply = api.internal("GET", &path, None, token).await;
        assert_eq!(
            (reply.status, reply.code()),
            (StatusCode::UNAUTHORIZED, "invalid_internal_token"),
            "{token:?}"
        );
        let reply = api
            .internal("POST", "/internal/v1/sync", Some(body.clone()), token)
            .await;
        assert_eq!(reply.status, StatusCode::UNAUTHORIZED, "{token:?}");
    }
    // An access token is not the internal token.
    let reply = api.internal("GET", &path, None, Some(&user.token)).await;
    assert_eq!(reply.status, StatusCode::UNAUTHORIZED);
    assert_eq!(
        api.internal("GET", &path, None, Some(INTERNAL_TOKEN))
            .await
            .status,
        StatusCode::OK
    );

    // No token configured: the routes do not exist.
    let mut settings = roomy_settings();
    settings.internal_token = None;
    let closed = Api::with_settings(settings);
    for token in [None, Some(INTERNAL_TOKEN)] {
        let reply = closed.internal("GET", &path, None, token).await;
        assert_eq!(
            (reply.status, reply.code()),
            (StatusCode::NOT_FOUND, "not_found")
        );
    }

    let document = api.get("/v1/openapi.json", None).await;
    let paths = document.json["paths"].as_object().unwrap();
    assert!(
        paths.keys().all(|p| !p.contains("internal")),
        "{:?}",
        paths.keys()
    );
}

#[tokio::test]
async fn user_conversations_list_kind_peer_and_positions() {
    let api = Api::new();
    let db = &api.state.db;
    let (a, b) = (api.user().await, api.user().await);
    let group = create_group(&api, &b.token, &[]).await;
    store_messages(db, group, &[b.id, b.id]).await;
    let added = api
        .call(
            "POST",
            &format!("/v1/groups/{group}/members"),
            json!({ "userId": a.id }),
            Some(&b.token),
        )
        .await;
    assert_eq!(added.status, StatusCode::CREATED, "{}", added.json);
    store_messages(db, group, &[b.id]).await;
    let direct = direct_conversation(db, a.id, b.id).await;
    store_messages(db, direct, &[a.id]).await;
    set_watermarks(db, direct, a.id, 1, 1).await;

    let reply = api
        .internal(
            "GET",
            &format!("/internal/v1/users/{}/conversations", a.id),
            None,
            Some(INTERNAL_TOKEN),
        )
        .await;
    assert_eq!(reply.status, StatusCode::OK, "{}", reply.json);
    let mut got = reply.json["conversations"].as_array().unwrap().clone();
    got.sort_by_key(|c| c["kind"].as_str().unwrap().to_owned());
    assert_eq!(
        got,
        vec![
            json!({ "id": direct, "kind": "direct", "peer": b.id, "lastSeq": 1,
                    "joinedSeq": 0, "deliveredSeq": 1, "readSeq": 1 }),
            json!({ "id": group, "kind": "group", "peer": null, "lastSeq": 3,
                    "joinedSeq": 2, "deliveredSeq": 2, "readSeq": 2 }),
        ]
    );

    let nobody = api
        .internal(
            "GET",
            &format!("/internal/v1/users/{}/conversations", Uuid::now_v7()),
            None,
            Some(INTERNAL_TOKEN),
        )
        .await;
    assert_eq!(nobody.json, json!({ "conversations": [] }));
    let bad = api
        .internal(
            "GET",
            "/internal/v1/users/nope/conversations",
            None,
            Some(INTERNAL_TOKEN),
        )
        .await;
    assert_eq!(bad.status, StatusCode::NOT_FOUND);
}

#[tokio::test]
async fn sync_returns_missed_messages_ascending_with_more_and_marks_non_members() {
    let api = Api::new();
    let db = &api.state.db;
    let (a, b, c) = (api.user().await, api.user().await, api.user().await);
    let group = create_group(&api, &b.token, &[]).await;
    store_messages(db, group, &[b.id, b.id]).await; // before a joins
    let added = api
        .call(
            "POST",
            &format!("/v1/groups/{group}/members"),
            json!({ "userId": a.id }),
            Some(&b.token),
        )
        .await;
    assert_eq!(added.status, StatusCode::CREATED);
    store_messages(db, group, &[b.id, a.id, b.id, a.id, b.id]).await; // 3..=7
    set_watermarks(db, group, a.id, 7, 4).await;
    set_watermarks(db, group, b.id, 6, 4).await;
    let direct = direct_conversation(db, a.id, b.id).await;
    store_messages(db, direct, &[b.id, a.id, b.id]).await;
    let theirs = direct_conversation(db, b.id, c.id).await;
    store_messages(db, theirs, &[b.id]).await;
    let unknown = Uuid::now_v7();

    let reply = sync(
        &api,
        json!({
            "userId": a.id,
            "limit": 3,
            "positions": [
                { "conversationId": group, "after": 0 },
                { "conversationId": direct, "after": 1 },
                { "conversationId": theirs, "after": 0 },
                { "conversationId": unknown },
            ],
        }),
    )
    .await;
    assert_eq!(reply.status, StatusCode::OK, "{}", reply.json);
    assert_eq!(reply.json["limit"], 3);
    let answer = reply.json["conversations"].as_array().unwrap();
    assert_eq!(answer.len(), 4);

    // From after joining (seq 2), ascending, three of five, more to come.
    assert_eq!(answer[0]["conversationId"], group.to_string());
    assert_eq!(seqs(&answer[0]), vec![3, 4, 5]);
    assert_eq!(answer[0]["more"], true);
    assert_eq!(answer[0]["forbidden"], false);
    let statuses: Vec<&str> = answer[0]["messages"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["status"].as_str().unwrap())
        .collect();
    // 3: b's, a read 4 → read; 4: a's, b read 4 → read; 5: b's, a read 4 → delivered.
    assert_eq!(statuses, ["read", "read", "delivered"]);
    assert_eq!(answer[0]["messages"][0]["recipientId"], group.to_string());

    assert_eq!(seqs(&answer[1]), vec![2, 3]);
    assert_eq!(answer[1]["more"], false);
    // 2 is a's own, b has no receipts yet.
    assert_eq!(answer[1]["messages"][0]["status"], "sent");
    assert_eq!(answer[1]["messages"][0]["recipientId"], b.id.to_string());

    for (entry, id) in [(&answer[2], theirs), (&answer[3], unknown)] {
        assert_eq!(
            entry,
            &json!({ "conversationId": id, "messages": [], "more": false, "forbidden": true })
        );
    }

    // The next round resumes after the last seq returned; nothing new is not an error.
    let reply = sync(
        &api,
        json!({ "userId": a.id, "positions": [
            { "conversationId": group, "after": 5 },
            { "conversationId": direct, "after": 3 },
        ] }),
    )
    .await;
    let answer = reply.json["conversations"].as_array().unwrap();
    assert_eq!(reply.json["limit"], 100);
    assert_eq!(seqs(&answer[0]), vec![6, 7]);
    // 6 is a's own: b delivered 6, read 4.
    assert_eq!(answer[0]["messages"][0]["status"], "delivered");
    assert_eq!(answer[0]["more"], false);
    assert_eq!(seqs(&answer[1]), Vec::<u64>::new());
    assert_eq!(answer[1]["forbidden"], false);

    // Statuses agree with the history endpoint.
    let history = api
        .get(
            &format!("/v1/conversations/{group}/messages"),
            Some(&a.token),
        )
        .await;
    let mut from_history: Vec<Value> = history.json["messages"].as_array().unwrap().clone();
    from_history.reverse();
    assert_eq!(
        &from_history[3..],
        answer[0]["messages"].as_array().unwrap()
    );
}

/// The sync statement is planned once per connection: planned per call (Postgres's choice
/// for it as a prepared statement) it cost ≈ 1 ms, four times its execution
/// (docs/BENCHMARKS.md, "Fifth round"). The application calls the function that pins it.
#[tokio::test]
async fn the_sync_statement_keeps_its_generic_plan() {
    let api = Api::new();
    let config: Option<Vec<String>> =
        sqlx::query_scalar("SELECT proconfig FROM pg_proc WHERE proname = 'conversation_sync'")
            .fetch_one(&api.state.db)
            .await
            .expect("the function conversation_sync exists");
    assert_eq!(
        config,
        Some(vec!["plan_cache_mode=force_generic_plan".to_owned()])
    );
    assert!(
        haberci_backend::conversations::store::SYNC_SQL
            .contains("FROM conversation_sync($1, $2, $3, $4)"),
        "the application's sync statement calls the function"
    );
}

#[tokio::test]
async fn sync_refuses_bad_requests_naming_the_field() {
    let api = Api::new();
    let user = api.user().await;
    let id = Uuid::now_v7();
    let many: Vec<Value> = (0..1001)
        .map(|_| json!({ "conversationId": Uuid::now_v7() }))
        .collect();
    for (body, field) in [
        (
            json!({ "userId": user.id, "positions": [], "limit": 0 }),
            "limit",
        ),
        (
            json!({ "userId": user.id, "positions": [], "limit": 501 }),
            "limit",
        ),
        (json!({ "userId": user.id, "positions": many }), "positions"),
        (
            json!({ "userId": user.id, "positions": [{ "conversationId": id }, { "conversationId": id, "after": 3 }] }),
            "positions[1].conversationId",
        ),
        (
            json!({ "userId": user.id, "positions": [{ "conversationId": id, "after": 9_007_199_254_740_992_u64 }] }),
            "positions[0].after",
        ),
        (
            json!({ "userId": user.id, "positions": [{ "conversationId": id, "after": -1 }] }),
            "positions[0].after",
        ),
        (json!({ "positions": [] }), "userId"),
        (
            json!({ "userId": user.id, "positions": [], "extra": true }),
            "extra",
        ),
    ] {
        let reply = sync(&api, body.clone()).await;
        assert_eq!(
            (reply.status, reply.code()),
            (StatusCode::UNPROCESSABLE_ENTITY, "invalid_field"),
            "{body}"
        );
        assert_eq!(reply.field(), Some(field), "{}", reply.json);
    }
    // Many positions lower the per-conversation limit so one answer stays bounded.
    let positions: Vec<Value> = (0..1000)
        .map(|_| json!({ "conversationId": Uuid::now_v7() }))
        .collect();
    let reply = sync(
        &api,
        json!({ "userId": user.id, "positions": positions, "limit": 500 }),
    )
    .await;
    assert_eq!(reply.status, StatusCode::OK, "{}", reply.json);
    assert_eq!(reply.json["limit"], 10);
    assert_eq!(reply.json["conversations"].as_array().unwrap().len(), 1000);
}

/// `GET /internal/v1/users/{user}/conversations?session=` answers only for an active session of
/// that user: a gateway welcomes a `Hello` on that answer alone.
#[tokio::test]
async fn a_session_start_is_refused_unless_the_session_is_the_users_and_active() {
    let api = Api::new();
    let (a, b) = (api.user().await, api.user().await);
    let (sa, sb) = (session_of(&api, a.id).await, session_of(&api, b.id).await);
    assert_eq!(
        start(&api, a.id, sa.to_string()).await.status,
        StatusCode::OK
    );
    for (what, session) in [
        ("another user's session", sb.to_string()),
        ("a session that never existed", Uuid::now_v7().to_string()),
    ] {
        let reply = start(&api, a.id, session).await;
        assert_eq!(
            (reply.status, reply.code()),
            (StatusCode::FORBIDDEN, "forbidden"),
            "{what}: {}",
            reply.json
        );
    }
    let bad = start(&api, a.id, "nope".into()).await;
    assert_eq!(bad.status, StatusCode::UNPROCESSABLE_ENTITY, "{}", bad.json);

    let out = api
        .call("POST", "/v1/auth/logout", Value::Null, Some(&a.token))
        .await;
    assert_eq!(out.status, StatusCode::NO_CONTENT, "{}", out.json);
    let revoked = start(&api, a.id, sa.to_string()).await;
    assert_eq!(revoked.status, StatusCode::FORBIDDEN, "{}", revoked.json);
}

async fn session_of(api: &Api, user: Uuid) -> Uuid {
    sqlx::query_scalar::<_, Uuid>("SELECT id FROM sessions WHERE user_id = $1")
        .bind(user)
        .fetch_one(&api.state.db)
        .await
        .unwrap()
}

async fn start(api: &Api, user: Uuid, session: String) -> Reply {
    let path = format!("/internal/v1/users/{user}/conversations?session={session}");
    api.internal("GET", &path, None, Some(INTERNAL_TOKEN)).await
}

/// Presence is shown only to people with a relationship — a shared conversation, or a follow
/// both ways — and not at all by someone who hides it; a viewer always sees themselves.
#[tokio::test]
async fn presence_is_visible_only_with_a_relationship_and_when_shown() {
    let api = Api::new();
    let viewer = api.user().await;
    let [in_group, mutual, followed, stranger, hidden] = [
        api.user().await,
        api.user().await,
        api.user().await,
        api.user().await,
        api.user().await,
    ];
    create_group(&api, &viewer.token, &[in_group.id, hidden.id]).await;
    let follow = |who: &crate::support::User, whom: &crate::support::User| {
        let path = format!("/v1/users/{}/follow", whom.username);
        let token = who.token.clone();
        let api = &api;
        async move {
            let reply = api.call("POST", &path, Value::Null, Some(&token)).await;
            assert!(reply.status.is_success(), "{}", reply.json);
        }
    };
    follow(&viewer, &mutual).await;
    follow(&mutual, &viewer).await;
    follow(&viewer, &followed).await;
    let reply = api
        .call(
            "PATCH",
            "/v1/me",
            json!({ "showPresence": false }),
            Some(&hidden.token),
        )
        .await;
    assert_eq!(reply.status, StatusCode::OK, "{}", reply.json);
    assert_eq!(reply.json["showPresence"], false);

    let everyone = [&viewer, &in_group, &mutual, &followed, &stranger, &hidden];
    let reply = api
        .internal(
            "POST",
            "/internal/v1/presence/visible",
            Some(json!({
                "viewer": viewer.id,
                "userIds": everyone.iter().map(|u| u.id).chain([Uuid::now_v7()]).collect::<Vec<_>>(),
            })),
            Some(INTERNAL_TOKEN),
        )
        .await;
    assert_eq!(reply.status, StatusCode::OK, "{}", reply.json);
    let mut visible: Vec<Uuid> = serde_json::from_value(reply.json["userIds"].clone()).unwrap();
    visible.sort();
    let mut expected = vec![viewer.id, in_group.id, mutual.id];
    expected.sort();
    assert_eq!(visible, expected);

    // More than a PresenceWatch may name is refused.
    let reply = api
        .internal(
            "POST",
            "/internal/v1/presence/visible",
            Some(json!({ "viewer": viewer.id, "userIds": vec![viewer.id; 257] })),
            Some(INTERNAL_TOKEN),
        )
        .await;
    assert_eq!(
        reply.status,
        StatusCode::UNPROCESSABLE_ENTITY,
        "{}",
        reply.json
    );
}
