//! Groups (creation, roles and what each may do, leaving and ownership hand-over), the
//! membership events on the user channel, message history with statuses from watermarks, and
//! the conversation list. Messages and watermarks are written with SQL, standing in for the
//! worker.

use haberci_seam::streams::Event;
use http::StatusCode;
use serde_json::{Value, json};
use uuid::Uuid;

use crate::support::{
    Api, Reply, User, UserChannel, direct_conversation, set_watermarks, store_messages,
};

async fn create_group(api: &Api, owner: &User, name: &str, members: &[&User]) -> Uuid {
    let ids: Vec<String> = members.iter().map(|m| m.id.to_string()).collect();
    let reply = api
        .call(
            "POST",
            "/v1/groups",
            json!({ "name": name, "memberIds": ids }),
            Some(&owner.token),
        )
        .await;
    assert_eq!(reply.status, StatusCode::CREATED, "{}", reply.json);
    reply.str("/id").parse().unwrap()
}

async fn add(api: &Api, group: Uuid, by: &User, who: &User, role: Option<&str>) -> Reply {
    let mut body = json!({ "userId": who.id });
    if let Some(role) = role {
        body["role"] = json!(role);
    }
    api.call(
        "POST",
        &format!("/v1/groups/{group}/members"),
        body,
        Some(&by.token),
    )
    .await
}

async fn remove(api: &Api, group: Uuid, by: &User, who: &User) -> Reply {
    api.call(
        "DELETE",
        &format!("/v1/groups/{group}/members/{}", who.id),
        Value::Null,
        Some(&by.token),
    )
    .await
}

async fn set_role(api: &Api, group: Uuid, by: &User, who: &User, role: &str) -> Reply {
    api.call(
        "PATCH",
        &format!("/v1/groups/{group}/members/{}", who.id),
        json!({ "role": role }),
        Some(&by.token),
    )
    .await
}

fn roles(group: &Reply) -> Vec<(String, String)> {
    group.json["members"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| {
            (
                m["userId"].as_str().unwrap().to_owned(),
                m["role"].as_str().unwrap().to_owned(),
            )
        })
        .collect()
}

fn expect(reply: &Reply, status: StatusCode, code: &str) {
    assert_eq!(
        (reply.status, reply.code()),
        (status, code),
        "{}",
        reply.json
    );
}

#[tokio::test]
async fn groups_are_created_with_the_caller_as_owner_and_validated() {
    let api = Api::new();
    let (owner, a, b, stranger) = (
        api.user().await,
        api.user().await,
        api.user().await,
        api.user().await,
    );

    // Duplicates and the caller are ignored.
    let ids = json!([a.id, b.id, a.id, owner.id]);
    let reply = api
        .call(
            "POST",
            "/v1/groups",
            json!({ "name": "  Book club ", "memberIds": ids }),
            Some(&owner.token),
        )
        .await;
    assert_eq!(reply.status, StatusCode::CREATED, "{}", reply.json);
    assert_eq!(reply.str("/name"), "Book club");
    assert_eq!(reply.str("/role"), "owner");
    let id: Uuid = reply.str("/id").parse().unwrap();
    assert_eq!(id.get_version_num(), 7, "group ids are UUIDv7");
    let members = roles(&reply);
    assert_eq!(members.len(), 3);
    assert_eq!(members[0], (owner.id.to_string(), "owner".to_owned()));
    assert!(members[1..].iter().all(|(_, role)| role == "member"));

    // Members see it with their own role; others cannot tell it exists.
    let seen = api.get(&format!("/v1/groups/{id}"), Some(&a.token)).await;
    assert_eq!(seen.status, StatusCode::OK, "{}", seen.json);
    assert_eq!(seen.str("/role"), "member");
    assert_eq!(roles(&seen), members);
    assert_eq!(seen.json["members"][0]["username"], owner.username.as_str());
    for path in [
        format!("/v1/groups/{id}"),
        format!("/v1/groups/{}", Uuid::now_v7()),
        "/v1/groups/not-a-uuid".to_owned(),
    ] {
        expect(
            &api.get(&path, Some(&stranger.token)).await,
            StatusCode::NOT_FOUND,
            "not_found",
        );
    }
    expect(
        &api.get(&format!("/v1/groups/{id}"), None).await,
        StatusCode::UNAUTHORIZED,
        "unauthenticated",
    );

    // A member list with an unknown id, too many members, a bad name.
    let unknown = Uuid::now_v7();
    let reply = api
        .call(
            "POST",
            "/v1/groups",
            json!({ "name": "x", "memberIds": [a.id, unknown] }),
            Some(&owner.token),
        )
        .await;
    expect(&reply, StatusCode::UNPROCESSABLE_ENTITY, "invalid_field");
    assert_eq!(reply.field(), Some("memberIds"));
    assert!(
        reply.str("/error/message").contains(&unknown.to_string()),
        "{}",
        reply.json
    );
    let many: Vec<Uuid> = (0..257).map(|_| Uuid::now_v7()).collect();
    let reply = api
        .call(
            "POST",
            "/v1/groups",
            json!({ "name": "x", "memberIds": many }),
            Some(&owner.token),
        )
        .await;
    expect(&reply, StatusCode::UNPROCESSABLE_ENTITY, "invalid_field");
    assert_eq!(reply.field(), Some("memberIds"));
    for (body, field) in [
        (json!({ "name": "   " }), "name"),
        (json!({ "name": "x".repeat(65) }), "name"),
        (json!({}), "name"),
        (
            json!({ "name": "x", "memberIds": ["nope"] }),
            "memberIds[0]",
        ),
        (json!({ "name": "x", "extra": 1 }), "extra"),
    ] {
        let reply = api
            .call("POST", "/v1/groups", body.clone(), Some(&owner.token))
            .await;
        expect(&reply, StatusCode::UNPROCESSABLE_ENTITY, "invalid_field");
        assert_eq!(reply.field(), Some(field), "{body}");
    }

    // A group of one is fine.
    let alone = api
        .call(
            "POST",
            "/v1/groups",
            json!({ "name": "just me" }),
            Some(&stranger.token),
        )
        .await;
    assert_eq!(alone.status, StatusCode::CREATED, "{}", alone.json);
    assert_eq!(roles(&alone).len(), 1);
}

#[tokio::test]
async fn roles_decide_who_may_add_remove_and_promote() {
    let api = Api::new();
    let owner = api.user().await;
    let admin = api.user().await;
    let admin2 = api.user().await;
    let member = api.user().await;
    let newcomer = api.user().await;
    let outsider = api.user().await;
    let group = create_group(&api, &owner, "roles", &[&member]).await;

    // Adding.
    let reply = add(&api, group, &owner, &admin, Some("admin")).await;
    assert_eq!(reply.status, StatusCode::CREATED, "{}", reply.json);
    assert_eq!(reply.str("/role"), "admin");
    assert_eq!(reply.str("/userId"), admin.id.to_string());
    expect(
        &add(&api, group, &member, &newcomer, None).await,
        StatusCode::FORBIDDEN,
        "forbidden",
    );
    let reply = add(&api, group, &admin, &admin2, Some("admin")).await;
    expect(&reply, StatusCode::FORBIDDEN, "forbidden");
    assert_eq!(
        reply.str("/error/message"),
        "only the owner may add an admin"
    );
    expect(
        &add(&api, group, &outsider, &newcomer, None).await,
        StatusCode::NOT_FOUND,
        "not_found",
    );
    let reply = add(&api, group, &admin, &newcomer, None).await;
    assert_eq!(reply.status, StatusCode::CREATED, "{}", reply.json);
    assert_eq!(reply.str("/role"), "member");
    expect(
        &add(&api, group, &owner, &newcomer, None).await,
        StatusCode::CONFLICT,
        "already_member",
    );
    let ghost = User {
        id: Uuid::now_v7(),
        token: String::new(),
        username: String::new(),
    };
    let reply = add(&api, group, &owner, &ghost, None).await;
    expect(&reply, StatusCode::UNPROCESSABLE_ENTITY, "invalid_field");
    assert_eq!(reply.field(), Some("userId"));
    let reply = add(&api, group, &owner, &admin2, Some("owner")).await;
    expect(&reply, StatusCode::UNPROCESSABLE_ENTITY, "invalid_field");
    assert_eq!(reply.field(), Some("role"));
    assert_eq!(
        add(&api, group, &owner, &admin2, Some("admin"))
            .await
            .status,
        StatusCode::CREATED
    );

    // Changing roles: the owner only, never their own.
    expect(
        &set_role(&api, group, &admin, &member, "admin").await,
        StatusCode::FORBIDDEN,
        "forbidden",
    );
    expect(
        &set_role(&api, group, &owner, &owner, "member").await,
        StatusCode::FORBIDDEN,
        "forbidden",
    );
    expect(
        &set_role(&api, group, &owner, &outsider, "admin").await,
        StatusCode::NOT_FOUND,
        "not_found",
    );
    expect(
        &set_role(&api, group, &outsider, &member, "admin").await,
        StatusCode::NOT_FOUND,
        "not_found",
    );
    let reply = set_role(&api, group, &owner, &owner, "owner").await;
    assert_eq!(reply.field(), Some("role"), "{}", reply.json);
    let reply = set_role(&api, group, &owner, &member, "admin").await;
    assert_eq!(reply.status, StatusCode::OK, "{}", reply.json);
    assert_eq!(reply.str("/role"), "admin");
    let reply = set_role(&api, group, &owner, &member, "member").await;
    assert_eq!(reply.str("/role"), "member");

    // Removing.
    let reply = remove(&api, group, &admin, &admin2).await;
    expect(&reply, StatusCode::FORBIDDEN, "forbidden");
    assert_eq!(
        reply.str("/error/message"),
        "an admin may remove only plain members"
    );
    expect(
        &remove(&api, group, &admin, &owner).await,
        StatusCode::FORBIDDEN,
        "forbidden",
    );
    expect(
        &remove(&api, group, &member, &newcomer).await,
        StatusCode::FORBIDDEN,
        "forbidden",
    );
    expect(
        &remove(&api, group, &outsider, &member).await,
        StatusCode::NOT_FOUND,
        "not_found",
    );
    expect(
        &remove(&api, group, &owner, &outsider).await,
        StatusCode::NOT_FOUND,
        "not_found",
    );
    assert_eq!(
        remove(&api, group, &admin, &newcomer).await.status,
        StatusCode::NO_CONTENT
    );
    expect(
        &remove(&api, group, &admin, &newcomer).await,
        StatusCode::NOT_FOUND,
        "not_found",
    );
    assert_eq!(
        remove(&api, group, &owner, &admin2).await.status,
        StatusCode::NO_CONTENT
    );
    // Anyone may remove themselves.
    assert_eq!(
        remove(&api, group, &member, &member).await.status,
        StatusCode::NO_CONTENT
    );
    expect(
        &api.get(&format!("/v1/groups/{group}"), Some(&member.token))
            .await,
        StatusCode::NOT_FOUND,
        "not_found",
    );

    let left = api
        .get(&format!("/v1/groups/{group}"), Some(&owner.token))
        .await;
    assert_eq!(
        roles(&left),
        vec![
            (owner.id.to_string(), "owner".to_owned()),
            (admin.id.to_string(), "admin".to_owned()),
        ]
    );
}

#[tokio::test]
async fn a_group_is_full_at_its_documented_size() {
    let api = Api::new();
    let owner = api.user().await;
    let newcomer = api.user().await;
    let group = create_group(&api, &owner, "full", &[]).await;
    // Fill the group up to the maximum with SQL (registering 10,000 users would be slow):
    // members that are real users, reusing one account per row is impossible (primary key),
    // so insert synthetic users.
    sqlx::query(
        "WITH u AS (
             INSERT INTO users (id, username, email, display_name)
             SELECT gen_random_uuid(), 'fill_' || substr(md5(random()::text), 1, 20),
                    'fill_' || substr(md5(random()::text), 1, 20) || '@example.com', 'Filler'
             FROM generate_series(1, $2)
             RETURNING id)
         INSERT INTO members (conversation_id, user_id, role) SELECT $1, id, 'member' FROM u",
    )
    .bind(group)
    .bind(i32::try_from(haberci_backend::conversations::MAX_GROUP_MEMBERS - 1).unwrap())
    .execute(&api.state.db)
    .await
    .unwrap();
    // The count the worker reads (conversations.member_count, kept by triggers) follows
    // bulk inserts, refused adds, cascaded deletes and single adds.
    let count = || async {
        sqlx::query_scalar::<_, i32>("SELECT member_count FROM conversations WHERE id = $1")
            .bind(group)
            .fetch_one(&api.state.db)
            .await
            .unwrap()
    };
    let full = i32::try_from(haberci_backend::conversations::MAX_GROUP_MEMBERS).unwrap();
    assert_eq!(count().await, full);
    let reply = add(&api, group, &owner, &newcomer, None).await;
    expect(&reply, StatusCode::CONFLICT, "group_full");
    assert_eq!(count().await, full);
    sqlx::query("DELETE FROM users WHERE id IN (SELECT user_id FROM members WHERE conversation_id = $1 AND role = 'member')")
        .bind(group)
        .execute(&api.state.db)
        .await
        .unwrap();
    assert_eq!(count().await, 1, "only the owner is left");
    assert_eq!(
        add(&api, group, &owner, &newcomer, None).await.status,
        StatusCode::CREATED
    );
    assert_eq!(count().await, 2);
}

#[tokio::test]
async fn leaving_hands_ownership_to_the_oldest_admin_else_the_oldest_member() {
    let api = Api::new();
    let owner = api.user().await;
    let first = api.user().await;
    let second = api.user().await;
    let admin = api.user().await;
    let group = create_group(&api, &owner, "heirs", &[]).await;
    for who in [&first, &second] {
        assert_eq!(
            add(&api, group, &owner, who, None).await.status,
            StatusCode::CREATED
        );
    }
    assert_eq!(
        add(&api, group, &owner, &admin, Some("admin")).await.status,
        StatusCode::CREATED
    );

    let leave = |who: &User| {
        let token = who.token.clone();
        let api = &api;
        async move {
            api.call(
                "POST",
                &format!("/v1/groups/{group}/leave"),
                Value::Null,
                Some(&token),
            )
            .await
        }
    };
    // The admin inherits although two members joined before them.
    assert_eq!(leave(&owner).await.status, StatusCode::NO_CONTENT);
    let seen = api
        .get(&format!("/v1/groups/{group}"), Some(&admin.token))
        .await;
    assert_eq!(seen.str("/role"), "owner", "{}", seen.json);
    // With no admin left, the longest-standing member inherits.
    assert_eq!(leave(&admin).await.status, StatusCode::NO_CONTENT);
    let seen = api
        .get(&format!("/v1/groups/{group}"), Some(&first.token))
        .await;
    assert_eq!(seen.str("/role"), "owner", "{}", seen.json);
    assert_eq!(roles(&seen).len(), 2);
    expect(&leave(&owner).await, StatusCode::NOT_FOUND, "not_found");

    // The last member leaving keeps the conversation and its history stored.
    store_messages(&api.state.db, group, &[first.id]).await;
    assert_eq!(leave(&second).await.status, StatusCode::NO_CONTENT);
    assert_eq!(leave(&first).await.status, StatusCode::NO_CONTENT);
    let (conversations, messages): (i64, i64) = sqlx::query_as(
        "SELECT (SELECT count(*) FROM conversations WHERE id = $1),
                (SELECT count(*) FROM messages WHERE conversation_id = $1)",
    )
    .bind(group)
    .fetch_one(&api.state.db)
    .await
    .unwrap();
    assert_eq!((conversations, messages), (1, 1));
    expect(
        &api.get(&format!("/v1/groups/{group}"), Some(&first.token))
            .await,
        StatusCode::NOT_FOUND,
        "not_found",
    );
}

#[tokio::test]
async fn membership_changes_are_published_on_the_user_channel() {
    let api = Api::new();
    let owner = api.user().await;
    let joiner = api.user().await;
    let mut owner_channel = UserChannel::open(owner.id).await;
    let mut joiner_channel = UserChannel::open(joiner.id).await;

    let group = create_group(&api, &owner, "events", &[]).await;
    let conversation = haberci_wire::ConversationId::new(group).unwrap();
    assert_eq!(
        owner_channel.next().await,
        Event::Joined {
            conversation,
            group: true,
            after: None
        }
    );

    store_messages(&api.state.db, group, &[owner.id, owner.id, owner.id]).await;
    assert_eq!(
        add(&api, group, &owner, &joiner, None).await.status,
        StatusCode::CREATED
    );
    assert_eq!(
        joiner_channel.next().await,
        Event::Joined {
            conversation,
            group: true,
            after: haberci_wire::Seq::new(3)
        }
    );
    assert_eq!(
        remove(&api, group, &owner, &joiner).await.status,
        StatusCode::NO_CONTENT
    );
    assert_eq!(joiner_channel.next().await, Event::Left { conversation });

    assert_eq!(
        api.call(
            "POST",
            &format!("/v1/groups/{group}/leave"),
            Value::Null,
            Some(&owner.token)
        )
        .await
        .status,
        StatusCode::NO_CONTENT
    );
    assert_eq!(owner_channel.next().await, Event::Left { conversation });
    owner_channel.close().await;
    joiner_channel.close().await;
}

fn seqs(reply: &Reply) -> Vec<u64> {
    reply.json["messages"]
        .as_array()
        .unwrap_or_else(|| panic!("no messages in {}", reply.json))
        .iter()
        .map(|m| m["seq"].as_u64().unwrap())
        .collect()
}

fn statuses(reply: &Reply) -> Vec<(u64, String)> {
    reply.json["messages"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| {
            (
                m["seq"].as_u64().unwrap(),
                m["status"].as_str().unwrap().to_owned(),
            )
        })
        .collect()
}

#[tokio::test]
async fn history_pages_newest_first_from_after_joining_with_statuses_from_watermarks() {
    let api = Api::new();
    let db = &api.state.db;
    let (a, b, c) = (api.user().await, api.user().await, api.user().await);
    let group = create_group(&api, &a, "history", &[&b]).await;
    store_messages(db, group, &[a.id, b.id, a.id, b.id, a.id]).await; // 1..=5
    assert_eq!(
        add(&api, group, &a, &c, None).await.status,
        StatusCode::CREATED
    );
    store_messages(db, group, &[a.id, c.id, a.id, b.id]).await; // 6..=9
    // b has 8 and read 6; c has 9 and read 7.
    set_watermarks(db, group, b.id, 8, 6).await;
    set_watermarks(db, group, c.id, 9, 7).await;

    let path = format!("/v1/conversations/{group}/messages");
    let page = api.get(&path, Some(&a.token)).await;
    assert_eq!(page.status, StatusCode::OK, "{}", page.json);
    assert_eq!(seqs(&page), vec![9, 8, 7, 6, 5, 4, 3, 2, 1]);
    assert!(page.json["nextBefore"].is_null());
    // a's own messages: 1, 3, 5 are before c joined (c does not count for them; b read them);
    // 6 read by both others; 8 delivered to b and c, read by neither.
    let by_seq: std::collections::HashMap<u64, String> = statuses(&page).into_iter().collect();
    assert_eq!(by_seq[&1], "read");
    assert_eq!(by_seq[&5], "read");
    assert_eq!(by_seq[&6], "read");
    assert_eq!(by_seq[&8], "delivered");
    // Others' messages, as a sees them: a's read watermark is 0.
    assert_eq!(by_seq[&2], "delivered");
    let message = &page.json["messages"][0];
    assert_eq!(message["senderId"], b.id.to_string());
    assert_eq!(message["recipientId"], group.to_string());
    assert_eq!(message["conversationId"], group.to_string());
    assert_eq!(message["type"], "text");
    assert_eq!(message["content"], "message 9");
    assert!(message["timestamp"].as_str().unwrap().ends_with('Z'));
    assert!(message["id"].as_str().unwrap().parse::<Uuid>().is_ok());

    // c sees only what was sent after joining; pages of 2, with statuses for c.
    let first = api.get(&format!("{path}?limit=2"), Some(&c.token)).await;
    assert_eq!(
        statuses(&first),
        vec![(9, "delivered".into()), (8, "delivered".into())]
    );
    assert_eq!(first.json["nextBefore"], 8);
    let second = api
        .get(&format!("{path}?limit=2&before=8"), Some(&c.token))
        .await;
    // 7 is c's own: b has only delivered it (b read 6), a has nothing.
    assert_eq!(
        statuses(&second),
        vec![(7, "sent".into()), (6, "read".into())]
    );
    assert!(second.json["nextBefore"].is_null(), "{}", second.json);
    assert_eq!(
        seqs(&api.get(&format!("{path}?before=6"), Some(&c.token)).await),
        Vec::<u64>::new()
    );
    set_watermarks(db, group, a.id, 7, 0).await;
    let third = api
        .get(&format!("{path}?before=8&limit=1"), Some(&c.token))
        .await;
    assert_eq!(statuses(&third), vec![(7, "delivered".into())]);
    assert_eq!(third.json["nextBefore"], 7);

    // A direct conversation: the recipient is the peer.
    let direct = direct_conversation(db, a.id, b.id).await;
    store_messages(db, direct, &[a.id, b.id]).await;
    set_watermarks(db, direct, b.id, 1, 1).await;
    let page = api
        .get(
            &format!("/v1/conversations/{direct}/messages"),
            Some(&a.token),
        )
        .await;
    assert_eq!(
        statuses(&page),
        vec![(2, "delivered".into()), (1, "read".into())]
    );
    assert_eq!(page.json["messages"][0]["recipientId"], a.id.to_string());
    assert_eq!(page.json["messages"][1]["recipientId"], b.id.to_string());
}

#[tokio::test]
async fn history_refuses_bad_parameters_and_hides_other_conversations() {
    let api = Api::new();
    let (a, b, outsider) = (api.user().await, api.user().await, api.user().await);
    let group = create_group(&api, &a, "hidden", &[&b]).await;
    let direct = direct_conversation(&api.state.db, a.id, b.id).await;
    let path = format!("/v1/conversations/{group}/messages");
    for (query, field) in [
        ("limit=0", "limit"),
        ("limit=201", "limit"),
        ("limit=abc", "limit"),
        ("before=0", "before"),
        ("before=-3", "before"),
        ("before=9007199254740992", "before"),
    ] {
        let reply = api.get(&format!("{path}?{query}"), Some(&a.token)).await;
        expect(&reply, StatusCode::UNPROCESSABLE_ENTITY, "invalid_field");
        assert_eq!(reply.field(), Some(field), "{query}");
    }
    assert_eq!(
        api.get(&format!("{path}?limit=200"), Some(&a.token))
            .await
            .status,
        StatusCode::OK
    );
    for conversation in [group, direct, Uuid::now_v7()] {
        let reply = api
            .get(
                &format!("/v1/conversations/{conversation}/messages"),
                Some(&outsider.token),
            )
            .await;
        expect(&reply, StatusCode::NOT_FOUND, "not_found");
    }
    expect(
        &api.get("/v1/conversations/nope/messages", Some(&a.token))
            .await,
        StatusCode::NOT_FOUND,
        "not_found",
    );
    expect(
        &api.get(&path, None).await,
        StatusCode::UNAUTHORIZED,
        "unauthenticated",
    );
}

#[tokio::test]
async fn the_conversation_list_orders_by_activity_with_unread_counts_and_pages() {
    let api = Api::new();
    let db = &api.state.db;
    let (me, peer, other) = (api.user().await, api.user().await, api.user().await);
    let empty = api.get("/v1/conversations", Some(&me.token)).await;
    assert_eq!(empty.status, StatusCode::OK, "{}", empty.json);
    assert_eq!(
        empty.json,
        json!({ "conversations": [], "nextCursor": null })
    );

    let quiet = create_group(&api, &other, "quiet", &[&me]).await;
    let direct = direct_conversation(db, me.id, peer.id).await;
    store_messages(db, direct, &[peer.id, me.id, peer.id, peer.id]).await;
    set_watermarks(db, direct, me.id, 4, 2).await;
    let busy = create_group(&api, &other, "busy", &[&me, &peer]).await;
    store_messages(db, busy, &[other.id, me.id]).await;
    set_watermarks(db, busy, other.id, 2, 2).await;
    set_watermarks(db, busy, peer.id, 2, 1).await;

    let list = api.get("/v1/conversations", Some(&me.token)).await;
    assert_eq!(list.status, StatusCode::OK, "{}", list.json);
    let items = list.json["conversations"].as_array().unwrap();
    let ids: Vec<&str> = items.iter().map(|c| c["id"].as_str().unwrap()).collect();
    assert_eq!(
        ids,
        [busy.to_string(), direct.to_string(), quiet.to_string()]
    );

    let busy_item = &items[0];
    assert_eq!(busy_item["kind"], "group");
    assert_eq!(busy_item["name"], "busy");
    assert!(busy_item["peer"].is_null());
    assert_eq!(busy_item["lastSeq"], 2);
    assert_eq!(busy_item["unreadCount"], 1, "my own message is not unread");
    assert_eq!(busy_item["lastMessage"]["seq"], 2);
    // Mine: other read it, peer only has it.
    assert_eq!(busy_item["lastMessage"]["status"], "delivered");

    let direct_item = &items[1];
    assert_eq!(direct_item["kind"], "direct");
    assert!(direct_item["name"].is_null());
    assert_eq!(
        direct_item["peer"],
        json!({ "id": peer.id, "username": peer.username, "displayName": "Test User" })
    );
    assert_eq!(
        (
            &direct_item["deliveredSeq"],
            &direct_item["readSeq"],
            &direct_item["unreadCount"]
        ),
        (&json!(4), &json!(2), &json!(2))
    );
    assert_eq!(direct_item["lastMessage"]["content"], "message 4");
    assert_eq!(direct_item["lastMessage"]["status"], "delivered");

    let quiet_item = &items[2];
    assert_eq!(
        (&quiet_item["lastSeq"], &quiet_item["unreadCount"]),
        (&json!(0), &json!(0))
    );
    assert!(quiet_item["lastMessage"].is_null());

    // Pages of one, following the cursor.
    let mut seen = Vec::new();
    let mut cursor: Option<String> = None;
    loop {
        let path = match &cursor {
            Some(c) => format!("/v1/conversations?limit=1&cursor={c}"),
            None => "/v1/conversations?limit=1".to_owned(),
        };
        let page = api.get(&path, Some(&me.token)).await;
        assert_eq!(page.status, StatusCode::OK, "{}", page.json);
        let items = page.json["conversations"].as_array().unwrap();
        assert!(items.len() <= 1);
        seen.extend(items.iter().map(|c| c["id"].as_str().unwrap().to_owned()));
        match page.json["nextCursor"].as_str() {
            Some(next) => cursor = Some(next.to_owned()),
            None => break,
        }
    }
    assert_eq!(seen, ids);

    for (query, field) in [
        ("limit=0", "limit"),
        ("limit=101", "limit"),
        ("cursor=garbage", "cursor"),
        ("cursor=1_nope", "cursor"),
    ] {
        let reply = api
            .get(&format!("/v1/conversations?{query}"), Some(&me.token))
            .await;
        expect(&reply, StatusCode::UNPROCESSABLE_ENTITY, "invalid_field");
        assert_eq!(reply.field(), Some(field), "{query}");
    }
}

/// Nobody is put in a group against their setting (`groupAdds`), and nobody is in more than
/// `MAX_GROUPS_PER_USER` groups: each is a channel and a backlog every session of theirs pays.
#[tokio::test]
async fn group_adds_need_consent_and_an_account_joins_a_bounded_number_of_groups() {
    let api = Api::new();
    let (owner, private, picky, newcomer) = (
        api.user().await,
        api.user().await,
        api.user().await,
        api.user().await,
    );
    let group = create_group(&api, &owner, "consent", &[]).await;
    let set = |who: &User, value: &'static str| {
        let token = who.token.clone();
        let api = &api;
        async move {
            let reply = api
                .call(
                    "PATCH",
                    "/v1/me",
                    json!({ "groupAdds": value }),
                    Some(&token),
                )
                .await;
            assert_eq!(reply.status, StatusCode::OK, "{}", reply.json);
            assert_eq!(reply.json["groupAdds"], value);
        }
    };
    set(&private, "nobody").await;
    set(&picky, "following").await;
    expect(
        &add(&api, group, &owner, &private, None).await,
        StatusCode::FORBIDDEN,
        "not_addable",
    );
    expect(
        &add(&api, group, &owner, &picky, None).await,
        StatusCode::FORBIDDEN,
        "not_addable",
    );
    let reply = api
        .call(
            "POST",
            "/v1/groups",
            json!({ "name": "x", "memberIds": [private.id] }),
            Some(&owner.token),
        )
        .await;
    expect(&reply, StatusCode::FORBIDDEN, "not_addable");
    // Once Picky follows the owner, the owner may add her.
    let reply = api
        .call(
            "POST",
            &format!("/v1/users/{}/follow", owner.username),
            Value::Null,
            Some(&picky.token),
        )
        .await;
    assert!(reply.status.is_success(), "{}", reply.json);
    assert_eq!(
        add(&api, group, &owner, &picky, None).await.status,
        StatusCode::CREATED
    );
    let reply = api
        .call(
            "PATCH",
            "/v1/me",
            json!({ "groupAdds": "sometimes" }),
            Some(&picky.token),
        )
        .await;
    assert_eq!(
        reply.status,
        StatusCode::UNPROCESSABLE_ENTITY,
        "{}",
        reply.json
    );

    // The newcomer is in as many groups as an account may be (made with SQL: creating 500
    // groups through the API would be slow): one more is refused, creating one too.
    let max = haberci_backend::conversations::MAX_GROUPS_PER_USER;
    sqlx::query(
        "WITH g AS (
             INSERT INTO conversations (id, kind, name, created_by)
             SELECT gen_random_uuid(), 'group', 'filler', $1 FROM generate_series(1, $2)
             RETURNING id)
         INSERT INTO members (conversation_id, user_id, role) SELECT id, $1, 'owner' FROM g",
    )
    .bind(newcomer.id)
    .bind(i32::try_from(max).unwrap())
    .execute(&api.state.db)
    .await
    .unwrap();
    expect(
        &add(&api, group, &owner, &newcomer, None).await,
        StatusCode::CONFLICT,
        "too_many_groups",
    );
    let reply = api
        .call(
            "POST",
            "/v1/groups",
            json!({ "name": "one more" }),
            Some(&newcomer.token),
        )
        .await;
    expect(&reply, StatusCode::CONFLICT, "too_many_groups");
}
