//! The social API at the HTTP boundary on the real Postgres and Redis: follows and requests,
//! blocks and mutes, posts (mentions, Turkish hashtags, edits, deletes), likes and reposts
//! (exact under concurrency, idempotent), comments and threads, notifications, search,
//! moderation, anti-spam limits, and every bad input answered with a clear error and nothing
//! stored.

use std::time::Duration;

use http::StatusCode;
use serde_json::{Value, json};
use uuid::Uuid;

use haberci_backend::config::{Rate, SocialSettings};
use haberci_backend::social::{fanout, feed::Feed};

use crate::support::{Api, Reply, TIMEOUT, User, roomy_settings};

pub fn expect(reply: &Reply, status: StatusCode, code: &str) {
    assert_eq!(
        (reply.status, reply.code()),
        (status, code),
        "{}",
        reply.json
    );
}

pub fn ok(reply: &Reply) {
    assert!(reply.status.is_success(), "{} {}", reply.status, reply.json);
}

pub async fn post(api: &Api, by: &User, body: Value) -> Reply {
    api.call("POST", "/v1/posts", body, Some(&by.token)).await
}

/// Posts `content` publicly; its id.
pub async fn say(api: &Api, by: &User, content: &str) -> Uuid {
    let reply = post(api, by, json!({ "content": content })).await;
    assert_eq!(reply.status, StatusCode::CREATED, "{}", reply.json);
    reply.str("/id").parse().unwrap()
}

pub async fn follow(api: &Api, who: &User, whom: &User) -> Reply {
    api.call(
        "POST",
        &format!("/v1/users/{}/follow", whom.username),
        Value::Null,
        Some(&who.token),
    )
    .await
}

pub async fn act(api: &Api, method: &str, path: &str, by: &User) -> Reply {
    api.call(method, path, Value::Null, Some(&by.token)).await
}

pub async fn profile(api: &Api, viewer: &User, of: &User) -> Reply {
    api.get(&format!("/v1/users/{}", of.username), Some(&viewer.token))
        .await
}

/// The ids of a page of posts.
pub fn ids(reply: &Reply) -> Vec<Uuid> {
    reply.json["posts"]
        .as_array()
        .unwrap_or_else(|| panic!("no posts in {}", reply.json))
        .iter()
        .map(|p| p["id"].as_str().unwrap().parse().unwrap())
        .collect()
}

/// Every page of a post list, following `nextCursor`.
pub async fn all_pages(api: &Api, viewer: &User, path: &str, limit: u32) -> Vec<Uuid> {
    let mut out = Vec::new();
    let mut cursor: Option<String> = None;
    for _ in 0..1000 {
        let sep = if path.contains('?') { '&' } else { '?' };
        let mut url = format!("{path}{sep}limit={limit}");
        if let Some(c) = &cursor {
            url.push_str(&format!("&cursor={c}"));
        }
        let reply = api.get(&url, Some(&viewer.token)).await;
        assert_eq!(reply.status, StatusCode::OK, "{}", reply.json);
        out.extend(ids(&reply));
        match reply.json["nextCursor"].as_str() {
            Some(next) => cursor = Some(next.to_owned()),
            None => return out,
        }
    }
    panic!("more than 1000 pages");
}

/// Runs the worker's fan-out until the outbox holds nothing for `posts`.
pub async fn fanned_out(api: &Api, posts: &[Uuid]) {
    let feed = Feed::new(api.state.settings.social.feed);
    let deadline = tokio::time::Instant::now() + TIMEOUT;
    loop {
        fanout::once(&api.state.db, &api.state.redis, &feed)
            .await
            .unwrap();
        let left: i64 =
            sqlx::query_scalar("SELECT count(*) FROM feed_outbox WHERE post_id = ANY($1)")
                .bind(posts)
                .fetch_one(&api.state.db)
                .await
                .unwrap();
        if left == 0 {
            return;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "fan-out not done within the timeout"
        );
        // Another test's worker call holds our jobs: let it finish its batch.
        tokio::task::yield_now().await;
    }
}

pub async fn make_admin(api: &Api, user: &User) {
    sqlx::query("UPDATE users SET is_admin = true WHERE id = $1")
        .bind(user.id)
        .execute(&api.state.db)
        .await
        .unwrap();
}

fn count(reply: &Reply, field: &str) -> i64 {
    reply.json[field]
        .as_i64()
        .unwrap_or_else(|| panic!("no {field} in {}", reply.json))
}

#[tokio::test]
async fn follows_move_counts_once_and_private_accounts_approve_them() {
    let api = Api::new();
    let (a, b, c) = (api.user().await, api.user().await, api.user().await);

    let reply = follow(&api, &a, &b).await;
    assert_eq!(reply.str("/state"), "following");
    // Following again is the same answer and changes nothing.
    assert_eq!(follow(&api, &a, &b).await.str("/state"), "following");
    let pb = profile(&api, &a, &b).await;
    assert_eq!(count(&pb, "followersCount"), 1);
    assert_eq!(pb.json["relationship"]["following"], true);
    assert_eq!(count(&profile(&api, &a, &a).await, "followingCount"), 1);
    assert_eq!(
        profile(&api, &b, &a).await.json["relationship"]["followedBy"],
        true
    );

    // Lists.
    let followers = api
        .get(
            &format!("/v1/users/{}/followers", b.username),
            Some(&c.token),
        )
        .await;
    assert_eq!(followers.json["users"][0]["username"], a.username.as_str());

    // Unfollow twice: one change.
    ok(&act(
        &api,
        "DELETE",
        &format!("/v1/users/{}/follow", b.username),
        &a,
    )
    .await);
    ok(&act(
        &api,
        "DELETE",
        &format!("/v1/users/{}/follow", b.username),
        &a,
    )
    .await);
    assert_eq!(count(&profile(&api, &a, &b).await, "followersCount"), 0);
    assert_eq!(count(&profile(&api, &a, &a).await, "followingCount"), 0);

    // A private account turns a follow into a request.
    ok(&api
        .call(
            "PATCH",
            "/v1/me",
            json!({ "private": true }),
            Some(&b.token),
        )
        .await);
    assert_eq!(follow(&api, &a, &b).await.str("/state"), "requested");
    assert_eq!(follow(&api, &c, &b).await.str("/state"), "requested");
    let pb = profile(&api, &a, &b).await;
    assert_eq!(pb.json["private"], true);
    assert_eq!(pb.json["relationship"]["requested"], true);
    assert_eq!(count(&pb, "followersCount"), 0);
    // Its lists are closed to non-followers.
    expect(
        &api.get(
            &format!("/v1/users/{}/followers", b.username),
            Some(&a.token),
        )
        .await,
        StatusCode::FORBIDDEN,
        "forbidden",
    );
    let requests = api.get("/v1/me/follow-requests", Some(&b.token)).await;
    assert_eq!(requests.json["users"].as_array().unwrap().len(), 2);
    ok(&act(
        &api,
        "POST",
        &format!("/v1/me/follow-requests/{}/approve", a.username),
        &b,
    )
    .await);
    ok(&act(
        &api,
        "POST",
        &format!("/v1/me/follow-requests/{}/deny", c.username),
        &b,
    )
    .await);
    expect(
        &act(
            &api,
            "POST",
            &format!("/v1/me/follow-requests/{}/approve", c.username),
            &b,
        )
        .await,
        StatusCode::NOT_FOUND,
        "not_found",
    );
    let pb = profile(&api, &a, &b).await;
    assert_eq!(count(&pb, "followersCount"), 1);
    assert_eq!(pb.json["relationship"]["following"], true);
    assert_eq!(
        profile(&api, &c, &b).await.json["relationship"]["requested"],
        false
    );

    // Oneself, and nobody.
    expect(
        &follow(&api, &a, &a).await,
        StatusCode::FORBIDDEN,
        "forbidden",
    );
    expect(
        &act(&api, "POST", "/v1/users/nobody_here_at_all/follow", &a).await,
        StatusCode::NOT_FOUND,
        "not_found",
    );
}

#[tokio::test]
async fn posts_read_mentions_and_turkish_hashtags_and_keep_their_edit_history() {
    let api = Api::new();
    let (a, b) = (api.user().await, api.user().await);
    let text = format!(
        "Merhaba @{} #İstanbul #ILIK #ilik",
        b.username.to_uppercase()
    );
    let reply = post(&api, &a, json!({ "content": text })).await;
    assert_eq!(reply.status, StatusCode::CREATED, "{}", reply.json);
    let id = reply.str("/id");
    assert_eq!(reply.json["mentions"], json!([b.username]));
    assert_eq!(reply.json["hashtags"], json!(["ilik", "istanbul", "ılık"]));
    assert_eq!(reply.str("/visibility"), "public");
    assert_eq!(count(&profile(&api, &b, &a).await, "postsCount"), 1);

    // One tag, however it is cased.
    for tag in ["istanbul", "%23%C4%B0STANBUL", "İstanbul"] {
        let page = api
            .get(&format!("/v1/tags/{tag}/posts"), Some(&b.token))
            .await;
        assert_eq!(page.status, StatusCode::OK, "{tag}: {}", page.json);
        assert!(
            ids(&page).contains(&id.parse().unwrap()),
            "{tag}: {}",
            page.json
        );
    }
    expect(
        &api.get("/v1/tags/%20/posts", Some(&b.token)).await,
        StatusCode::UNPROCESSABLE_ENTITY,
        "invalid_field",
    );

    // b was told.
    let notes = api.get("/v1/notifications", Some(&b.token)).await;
    assert_eq!(notes.json["notifications"][0]["kind"], "mention");

    // Edit: the old text is kept, the new one parsed again.
    let edited = api
        .call(
            "PATCH",
            &format!("/v1/posts/{id}"),
            json!({ "content": "düzeltme #yeni" }),
            Some(&a.token),
        )
        .await;
    assert_eq!(edited.status, StatusCode::OK, "{}", edited.json);
    assert_eq!(edited.json["hashtags"], json!(["yeni"]));
    assert!(edited.json["editedAt"].is_string());
    let history = api
        .get(&format!("/v1/posts/{id}/edits"), Some(&b.token))
        .await;
    assert_eq!(history.json["edits"][0]["version"], 1);
    assert_eq!(history.json["edits"][0]["content"], text.as_str());
    // Only the author edits.
    expect(
        &api.call(
            "PATCH",
            &format!("/v1/posts/{id}"),
            json!({ "content": "mine now" }),
            Some(&b.token),
        )
        .await,
        StatusCode::FORBIDDEN,
        "forbidden",
    );

    // Delete: gone, and uncounted.
    expect(
        &act(&api, "DELETE", &format!("/v1/posts/{id}"), &b).await,
        StatusCode::FORBIDDEN,
        "forbidden",
    );
    ok(&act(&api, "DELETE", &format!("/v1/posts/{id}"), &a).await);
    expect(
        &api.get(&format!("/v1/posts/{id}"), Some(&a.token)).await,
        StatusCode::NOT_FOUND,
        "not_found",
    );
    assert_eq!(count(&profile(&api, &b, &a).await, "postsCount"), 0);
    let page = api.get("/v1/tags/yeni/posts", Some(&a.token)).await;
    assert!(!ids(&page).contains(&id.parse().unwrap()));
}

#[tokio::test]
async fn bad_posts_are_refused_with_the_field_at_fault_and_nothing_stored() {
    let api = Api::new();
    let a = api.user().await;
    let stranger_media = Uuid::now_v7();
    let cases: Vec<(Value, &str)> = vec![
        (json!({ "content": "ğ".repeat(1001) }), "content"),
        (json!({ "content": "   " }), "content"),
        (json!({ "content": "a\u{0}b" }), "content"),
        (json!({ "content": 42 }), "content"),
        (json!({}), "content"),
        (json!({ "content": "hi @nobody_by_this_name_x" }), "content"),
        (
            json!({ "content": "hi", "visibility": "friends" }),
            "visibility",
        ),
        (
            json!({ "content": "hi", "mediaIds": [stranger_media] }),
            "mediaIds",
        ),
        (
            json!({ "content": "hi", "mediaIds": [Uuid::now_v7(), Uuid::now_v7(), Uuid::now_v7(), Uuid::now_v7(), Uuid::now_v7()] }),
            "mediaIds",
        ),
        (
            json!({ "content": "hi", "mediaIds": ["not-a-uuid"] }),
            "mediaIds[0]",
        ),
        (json!({ "content": "hi", "extra": 1 }), "extra"),
    ];
    for (body, field) in cases {
        let reply = post(&api, &a, body.clone()).await;
        expect(&reply, StatusCode::UNPROCESSABLE_ENTITY, "invalid_field");
        assert_eq!(reply.field(), Some(field), "{body}: {}", reply.json);
    }
    // Exactly the limit is fine.
    let at_limit = post(&api, &a, json!({ "content": "ğ".repeat(1000) })).await;
    assert_eq!(at_limit.status, StatusCode::CREATED, "{}", at_limit.json);
    let stored: i64 = sqlx::query_scalar("SELECT count(*) FROM posts WHERE author_id = $1")
        .bind(a.id)
        .fetch_one(&api.state.db)
        .await
        .unwrap();
    assert_eq!(stored, 1, "only the valid post is stored");

    // A tampered or foreign cursor is refused, on every paged list.
    let page = api
        .get(
            &format!("/v1/users/{}/posts?limit=1", a.username),
            Some(&a.token),
        )
        .await;
    assert_eq!(ids(&page).len(), 1);
    for cursor in ["abc", "0190a0b0c0d0e0f00000000000000000.00000000", ""] {
        for path in [
            format!("/v1/users/{}/posts", a.username),
            "/v1/feed/home".to_owned(),
            format!("/v1/users/{}/followers", a.username),
            "/v1/notifications".to_owned(),
        ] {
            let reply = api
                .get(&format!("{path}?cursor={cursor}"), Some(&a.token))
                .await;
            expect(&reply, StatusCode::UNPROCESSABLE_ENTITY, "invalid_field");
            assert_eq!(reply.field(), Some("cursor"), "{path}");
        }
    }
    expect(
        &api.get("/v1/feed/home?limit=0", Some(&a.token)).await,
        StatusCode::UNPROCESSABLE_ENTITY,
        "invalid_field",
    );
    expect(
        &api.get("/v1/search/posts?q=", Some(&a.token)).await,
        StatusCode::UNPROCESSABLE_ENTITY,
        "invalid_field",
    );
}

#[tokio::test]
async fn sixty_four_concurrent_likers_make_an_exact_count_and_likes_are_idempotent() {
    let api = Api::new();
    let author = api.user().await;
    let id = say(&api, &author, "like me").await;
    let mut likers = Vec::new();
    for _ in 0..64 {
        likers.push(api.user().await);
    }
    let path = format!("/v1/posts/{id}/like");
    let tasks: Vec<_> = likers
        .iter()
        .map(|u| {
            let (api, path, token) = (&api, path.clone(), u.token.clone());
            async move {
                // Each likes twice, concurrently with everyone.
                let (r1, r2) = tokio::join!(
                    api.call("POST", &path, Value::Null, Some(&token)),
                    api.call("POST", &path, Value::Null, Some(&token))
                );
                (r1.status, r2.status)
            }
        })
        .collect();
    for (s1, s2) in futures::future::join_all(tasks).await {
        assert_eq!((s1, s2), (StatusCode::OK, StatusCode::OK));
    }
    let read = api
        .get(&format!("/v1/posts/{id}"), Some(&author.token))
        .await;
    assert_eq!(count(&read, "likesCount"), 64);
    let rows: i64 = sqlx::query_scalar("SELECT count(*) FROM likes WHERE post_id = $1")
        .bind(id)
        .fetch_one(&api.state.db)
        .await
        .unwrap();
    assert_eq!(rows, 64);

    // The author's notifications group them: one entry, 64 people, the newest 3 named.
    let notes = api.get("/v1/notifications", Some(&author.token)).await;
    let group = &notes.json["notifications"][0];
    assert_eq!(group["kind"], "like");
    assert_eq!(group["actorCount"], 64);
    assert_eq!(group["actors"].as_array().unwrap().len(), 3);
    assert_eq!(notes.json["notifications"].as_array().unwrap().len(), 1);
    assert_eq!(count(&notes, "unreadCount"), 64);

    // Unlike concurrently, twice each: back to zero.
    let tasks: Vec<_> = likers
        .iter()
        .map(|u| {
            let (api, path, token) = (&api, path.clone(), u.token.clone());
            async move {
                tokio::join!(
                    api.call("DELETE", &path, Value::Null, Some(&token)),
                    api.call("DELETE", &path, Value::Null, Some(&token))
                )
            }
        })
        .collect();
    futures::future::join_all(tasks).await;
    let read = api
        .get(&format!("/v1/posts/{id}"), Some(&author.token))
        .await;
    assert_eq!(count(&read, "likesCount"), 0);
    assert_eq!(read.json["liked"], false);
}

#[tokio::test]
async fn reposts_are_idempotent_public_only_and_reach_the_reposters_followers() {
    let api = Api::new();
    let (author, reposter, reader) = (api.user().await, api.user().await, api.user().await);
    ok(&follow(&api, &reader, &reposter).await);
    let id = say(&api, &author, "worth sharing").await;
    let path = format!("/v1/posts/{id}/repost");
    let first = act(&api, "POST", &path, &reposter).await;
    assert_eq!(first.status, StatusCode::OK, "{}", first.json);
    assert_eq!(first.json["reposted"], true);
    let again = act(&api, "POST", &path, &reposter).await;
    assert_eq!(count(&again, "repostsCount"), 1);

    let repost_id: Uuid = sqlx::query_scalar(
        "SELECT id FROM posts WHERE repost_of = $1 AND author_id = $2 AND deleted_at IS NULL",
    )
    .bind(id)
    .bind(reposter.id)
    .fetch_one(&api.state.db)
    .await
    .unwrap();
    fanned_out(&api, &[repost_id]).await;
    let home = api.get("/v1/feed/home", Some(&reader.token)).await;
    assert_eq!(ids(&home), vec![repost_id], "{}", home.json);
    assert_eq!(home.json["posts"][0]["repostOf"]["id"], id.to_string());
    assert_eq!(
        home.json["posts"][0]["repostOf"]["content"],
        "worth sharing"
    );

    // Undo: gone from the count and the feed.
    let undone = act(&api, "DELETE", &path, &reposter).await;
    assert_eq!(count(&undone, "repostsCount"), 0);
    fanned_out(&api, &[repost_id]).await;
    let home = api.get("/v1/feed/home", Some(&reader.token)).await;
    assert!(ids(&home).is_empty(), "{}", home.json);

    // Followers-only posts cannot be reposted.
    let private = post(
        &api,
        &author,
        json!({ "content": "for followers", "visibility": "followers" }),
    )
    .await;
    let pid = private.str("/id");
    ok(&follow(&api, &reposter, &author).await);
    expect(
        &act(&api, "POST", &format!("/v1/posts/{pid}/repost"), &reposter).await,
        StatusCode::FORBIDDEN,
        "forbidden",
    );
}

#[tokio::test]
async fn visibility_decides_who_sees_a_post() {
    let api = Api::new();
    let (author, follower, mentioned, stranger) = (
        api.user().await,
        api.user().await,
        api.user().await,
        api.user().await,
    );
    ok(&follow(&api, &follower, &author).await);
    let public = say(&api, &author, "for all").await;
    let followers = post(
        &api,
        &author,
        json!({ "content": "for followers", "visibility": "followers" }),
    )
    .await
    .str("/id");
    let only = post(
        &api,
        &author,
        json!({ "content": format!("psst @{}", mentioned.username), "visibility": "mentioned" }),
    )
    .await
    .str("/id");
    let sees = |viewer: &User, id: String| {
        let (api, token) = (&api, viewer.token.clone());
        async move {
            api.get(&format!("/v1/posts/{id}"), Some(&token))
                .await
                .status
                == StatusCode::OK
        }
    };
    let public = public.to_string();
    let table = [
        (&author, [true, true, true]),
        (&follower, [true, true, false]),
        (&mentioned, [true, false, true]),
        (&stranger, [true, false, false]),
    ];
    for (viewer, want) in table {
        let got = [
            sees(viewer, public.clone()).await,
            sees(viewer, followers.clone()).await,
            sees(viewer, only.clone()).await,
        ];
        assert_eq!(got, want, "viewer {}", viewer.username);
    }
    // The profile timeline shows each viewer exactly what they may see.
    let mine = all_pages(
        &api,
        &stranger,
        &format!("/v1/users/{}/posts", author.username),
        2,
    )
    .await;
    assert_eq!(mine, vec![public.parse::<Uuid>().unwrap()]);

    // A private account: public posts are for followers only.
    ok(&api
        .call(
            "PATCH",
            "/v1/me",
            json!({ "private": true }),
            Some(&author.token),
        )
        .await);
    assert!(!sees(&stranger, public.clone()).await);
    assert!(sees(&follower, public.clone()).await);
}

#[tokio::test]
async fn a_block_ends_follows_and_hides_each_from_the_other_everywhere() {
    let api = Api::new();
    let (a, b, c) = (api.user().await, api.user().await, api.user().await);
    ok(&follow(&api, &a, &b).await);
    ok(&follow(&api, &b, &a).await);
    let b_post = say(&api, &b, "b's post").await;
    let a_post = say(&api, &a, "a's post").await;
    ok(&act(&api, "POST", &format!("/v1/posts/{a_post}/like"), &b).await);
    ok(&api
        .call(
            "POST",
            &format!("/v1/posts/{a_post}/comments"),
            json!({ "content": "b was here" }),
            Some(&b.token),
        )
        .await);
    ok(&act(&api, "POST", &format!("/v1/posts/{a_post}/like"), &c).await);

    ok(&act(&api, "POST", &format!("/v1/users/{}/block", b.username), &a).await);

    // Follows are gone both ways, with their counts.
    assert_eq!(count(&profile(&api, &a, &a).await, "followersCount"), 0);
    assert_eq!(count(&profile(&api, &a, &a).await, "followingCount"), 0);
    // Each is hidden from the other.
    for (viewer, other, post) in [(&a, &b, b_post), (&b, &a, a_post)] {
        expect(
            &profile(&api, viewer, other).await,
            StatusCode::NOT_FOUND,
            "not_found",
        );
        expect(
            &api.get(&format!("/v1/posts/{post}"), Some(&viewer.token))
                .await,
            StatusCode::NOT_FOUND,
            "not_found",
        );
        expect(
            &follow(&api, viewer, other).await,
            StatusCode::NOT_FOUND,
            "not_found",
        );
        expect(
            &act(&api, "POST", &format!("/v1/posts/{post}/like"), viewer).await,
            StatusCode::NOT_FOUND,
            "not_found",
        );
        let found = api
            .get(
                &format!("/v1/search/users?q={}", other.username),
                Some(&viewer.token),
            )
            .await;
        assert!(
            !found.json["users"]
                .as_array()
                .unwrap()
                .iter()
                .any(|u| u["username"] == other.username.as_str()),
            "{}",
            found.json
        );
    }
    // a no longer sees b in likes or comments of a's post.
    let likes = api
        .get(&format!("/v1/posts/{a_post}/likes"), Some(&a.token))
        .await;
    let likers: Vec<&str> = likes.json["users"]
        .as_array()
        .unwrap()
        .iter()
        .map(|u| u["username"].as_str().unwrap())
        .collect();
    assert_eq!(likers, vec![c.username.as_str()]);
    let thread = api
        .get(&format!("/v1/posts/{a_post}/thread"), Some(&a.token))
        .await;
    assert_eq!(thread.json["comments"], json!([]));
    // Nor b's like among a's notifications, nor b's follow, like and comment in the unread
    // count: c's like is all that is left.
    let notes = api.get("/v1/notifications", Some(&a.token)).await;
    assert_eq!(count(&notes, "unreadCount"), 1, "{}", notes.json);
    for n in notes.json["notifications"].as_array().unwrap() {
        assert!(
            !n["actors"]
                .as_array()
                .unwrap()
                .iter()
                .any(|x| x["username"] == b.username.as_str()),
            "{}",
            notes.json
        );
    }
    // New events across the block are not stored: b may still mention a, a is not told.
    say(&api, &b, &format!("hey @{}", a.username)).await;
    let stored: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM notifications WHERE user_id = $1 AND actor_id = $2 AND kind = 'mention'",
    )
    .bind(a.id)
    .bind(b.id)
    .fetch_one(&api.state.db)
    .await
    .unwrap();
    assert_eq!(stored, 0);

    // The blocker sees them in the block list and can undo; follows do not come back.
    let blocks = api.get("/v1/me/blocks", Some(&a.token)).await;
    assert_eq!(blocks.json["users"][0]["username"], b.username.as_str());
    ok(&act(
        &api,
        "DELETE",
        &format!("/v1/users/{}/block", b.username),
        &a,
    )
    .await);
    let pb = profile(&api, &a, &b).await;
    assert_eq!(pb.status, StatusCode::OK);
    assert_eq!(pb.json["relationship"]["following"], false);
}

#[tokio::test]
async fn a_mute_hides_from_my_feed_and_notifications_only() {
    let api = Api::new();
    let (me, loud) = (api.user().await, api.user().await);
    ok(&follow(&api, &me, &loud).await);
    let mine = say(&api, &me, "my post").await;
    ok(&act(
        &api,
        "POST",
        &format!("/v1/users/{}/mute", loud.username),
        &me,
    )
    .await);
    let theirs = say(&api, &loud, "noise").await;
    ok(&act(&api, "POST", &format!("/v1/posts/{mine}/like"), &loud).await);
    fanned_out(&api, &[mine, theirs]).await;
    let home = api.get("/v1/feed/home", Some(&me.token)).await;
    assert_eq!(ids(&home), vec![mine]);
    let notes = api.get("/v1/notifications", Some(&me.token)).await;
    assert_eq!(count(&notes, "unreadCount"), 0, "{}", notes.json);
    // Still visible elsewhere, and still followed.
    ok(&api
        .get(&format!("/v1/posts/{theirs}"), Some(&me.token))
        .await);
    let p = profile(&api, &me, &loud).await;
    assert_eq!(p.json["relationship"]["muting"], true);
    assert_eq!(p.json["relationship"]["following"], true);
    // Unmute: back in the feed.
    ok(&act(
        &api,
        "DELETE",
        &format!("/v1/users/{}/mute", loud.username),
        &me,
    )
    .await);
    let home = api.get("/v1/feed/home", Some(&me.token)).await;
    assert_eq!(ids(&home), vec![theirs, mine]);
}

#[tokio::test]
async fn comments_thread_in_creation_order_and_tell_the_authors() {
    let api = Api::new();
    let (author, a, b) = (api.user().await, api.user().await, api.user().await);
    let id = say(&api, &author, "discuss").await;
    let path = format!("/v1/posts/{id}/comments");
    let first = api
        .call("POST", &path, json!({ "content": "first" }), Some(&a.token))
        .await;
    assert_eq!(first.status, StatusCode::CREATED, "{}", first.json);
    let first_id = first.str("/id");
    let reply = api
        .call(
            "POST",
            &path,
            json!({ "content": "reply to a", "parentId": first_id }),
            Some(&b.token),
        )
        .await;
    assert_eq!(reply.str("/parentId"), first_id);
    for n in 0..5 {
        ok(&api
            .call(
                "POST",
                &path,
                json!({ "content": format!("more {n}") }),
                Some(&a.token),
            )
            .await);
    }
    // A reply to a comment of another post, or to nothing, is refused.
    let other = say(&api, &author, "other").await;
    let bad = api
        .call(
            "POST",
            &format!("/v1/posts/{other}/comments"),
            json!({ "content": "x", "parentId": first_id }),
            Some(&b.token),
        )
        .await;
    expect(&bad, StatusCode::UNPROCESSABLE_ENTITY, "invalid_field");
    assert_eq!(bad.field(), Some("parentId"));

    // Pages of 3, in creation order, no repeats, no gaps.
    let mut seen = Vec::new();
    let mut cursor: Option<String> = None;
    loop {
        let url = match &cursor {
            Some(c) => format!("/v1/posts/{id}/thread?limit=3&cursor={c}"),
            None => format!("/v1/posts/{id}/thread?limit=3"),
        };
        let page = api.get(&url, Some(&author.token)).await;
        assert_eq!(page.json["post"]["commentsCount"], 7);
        for c in page.json["comments"].as_array().unwrap() {
            seen.push(c["content"].as_str().unwrap().to_owned());
        }
        match page.json["nextCursor"].as_str() {
            Some(c) => cursor = Some(c.to_owned()),
            None => break,
        }
    }
    assert_eq!(
        seen,
        [
            "first",
            "reply to a",
            "more 0",
            "more 1",
            "more 2",
            "more 3",
            "more 4"
        ]
    );
    // The post's author and the replied-to comment's author were told.
    let notes = api.get("/v1/notifications", Some(&a.token)).await;
    assert_eq!(notes.json["notifications"][0]["kind"], "comment");
    let notes = api
        .get("/v1/notifications?limit=100", Some(&author.token))
        .await;
    assert_eq!(count(&notes, "unreadCount"), 7);
    // Mark read up to the newest: nothing unread.
    let newest = notes.json["notifications"][0]["id"].as_str().unwrap();
    let read = api
        .call(
            "POST",
            "/v1/notifications/read",
            json!({ "upTo": newest }),
            Some(&author.token),
        )
        .await;
    assert_eq!(count(&read, "unreadCount"), 0);
}

#[tokio::test]
async fn posting_liking_commenting_and_following_are_rate_limited_per_account() {
    let mut settings = roomy_settings();
    settings.social = SocialSettings::uniform(Rate::new(2, Duration::from_secs(3600)));
    let api = Api::with_settings(settings);
    let (a, b) = (api.user().await, api.user().await);
    let id = say(&api, &a, "one").await;
    say(&api, &a, "two").await;
    let third = post(&api, &a, json!({ "content": "three" })).await;
    expect(&third, StatusCode::TOO_MANY_REQUESTS, "rate_limited");
    assert!(third.headers.contains_key("retry-after"));
    // Another account has its own budget.
    say(&api, &b, "b one").await;
    let stored: i64 = sqlx::query_scalar("SELECT count(*) FROM posts WHERE author_id = $1")
        .bind(a.id)
        .fetch_one(&api.state.db)
        .await
        .unwrap();
    assert_eq!(stored, 2, "the refused post is not stored");
    // Likes, comments and follows draw from their own buckets.
    let c = api.user().await;
    for (method, path, body) in [
        ("POST", format!("/v1/posts/{id}/like"), Value::Null),
        (
            "POST",
            format!("/v1/posts/{id}/comments"),
            json!({ "content": "hi" }),
        ),
        (
            "POST",
            format!("/v1/users/{}/follow", a.username),
            Value::Null,
        ),
    ] {
        // Two allowed (idempotent calls still draw), the third refused.
        for _ in 0..2 {
            ok(&api.call(method, &path, body.clone(), Some(&c.token)).await);
        }
        expect(
            &api.call(method, &path, body.clone(), Some(&c.token)).await,
            StatusCode::TOO_MANY_REQUESTS,
            "rate_limited",
        );
    }
}

#[tokio::test]
async fn people_and_post_search_fold_turkish_letters_and_tolerate_typos() {
    let api = Api::new();
    let (me, target) = (api.user().await, api.user().await);
    let name = format!("Çağrı Işıkoğlu {}", &target.username[5..11]);
    ok(&api
        .call(
            "PATCH",
            "/v1/me",
            json!({ "displayName": name }),
            Some(&target.token),
        )
        .await);
    for q in ["cagri isikoglu", "ÇAĞRI", "Isıkoğlu", "cagri isikolgu"] {
        let found = api
            .get(
                &format!("/v1/search/users?q={}", urlencoding(q)),
                Some(&me.token),
            )
            .await;
        assert_eq!(found.status, StatusCode::OK, "{}", found.json);
        assert!(
            found.json["users"]
                .as_array()
                .unwrap()
                .iter()
                .any(|u| u["username"] == target.username.as_str()),
            "{q}: {}",
            found.json
        );
    }
    let marker = Uuid::new_v4().simple().to_string();
    let id = say(&api, &target, &format!("kitapları okuyoruz {marker}")).await;
    for q in [marker.clone(), format!("kitap {marker}")] {
        let found = api
            .get(
                &format!("/v1/search/posts?q={}", urlencoding(&q)),
                Some(&me.token),
            )
            .await;
        assert_eq!(ids(&found), vec![id], "{q}: {}", found.json);
    }
}

fn urlencoding(text: &str) -> String {
    text.bytes()
        .map(|b| {
            if b.is_ascii_alphanumeric() {
                (b as char).to_string()
            } else {
                format!("%{b:02X}")
            }
        })
        .collect()
}

#[tokio::test]
async fn an_admin_removes_posts_and_suspends_accounts_whose_sessions_end() {
    let api = Api::new();
    let (admin, bad, reader) = (api.user().await, api.user().await, api.user().await);
    make_admin(&api, &admin).await;
    let id = say(&api, &bad, "spam").await;
    // Anyone may report; only an admin acts.
    let report = api
        .call(
            "POST",
            "/v1/reports",
            json!({ "postId": id, "reason": "spam" }),
            Some(&reader.token),
        )
        .await;
    assert_eq!(report.status, StatusCode::CREATED, "{}", report.json);
    expect(
        &api.call(
            "POST",
            "/v1/reports",
            json!({ "reason": "x" }),
            Some(&reader.token),
        )
        .await,
        StatusCode::UNPROCESSABLE_ENTITY,
        "invalid_field",
    );
    expect(
        &act(
            &api,
            "POST",
            &format!("/v1/admin/users/{}/suspend", bad.username),
            &reader,
        )
        .await,
        StatusCode::FORBIDDEN,
        "forbidden",
    );
    ok(&act(&api, "DELETE", &format!("/v1/posts/{id}"), &admin).await);
    expect(
        &api.get(&format!("/v1/posts/{id}"), Some(&bad.token)).await,
        StatusCode::NOT_FOUND,
        "not_found",
    );

    let other = say(&api, &bad, "more spam").await;
    ok(&act(
        &api,
        "POST",
        &format!("/v1/admin/users/{}/suspend", bad.username),
        &admin,
    )
    .await);
    // Their session is over, their profile and posts are gone.
    expect(
        &api.get("/v1/me", Some(&bad.token)).await,
        StatusCode::UNAUTHORIZED,
        "session_revoked",
    );
    expect(
        &profile(&api, &reader, &bad).await,
        StatusCode::NOT_FOUND,
        "not_found",
    );
    expect(
        &api.get(&format!("/v1/posts/{other}"), Some(&reader.token))
            .await,
        StatusCode::NOT_FOUND,
        "not_found",
    );
}

#[tokio::test]
async fn profiles_are_served_from_the_cache_until_a_change_invalidates_them() {
    let api = Api::new();
    let (viewer, user) = (api.user().await, api.user().await);
    let cache = |reply: &Reply| {
        reply.headers["x-haberci-cache"]
            .to_str()
            .unwrap()
            .to_owned()
    };
    let stats = || async {
        api.internal(
            "GET",
            "/internal/v1/stats",
            None,
            Some(crate::support::INTERNAL_TOKEN),
        )
        .await
        .json["profileCache"]
            .clone()
    };
    let before = stats().await;
    assert_eq!(cache(&profile(&api, &viewer, &user).await), "miss");
    let hit = profile(&api, &viewer, &user).await;
    assert_eq!(cache(&hit), "hit");
    assert_eq!(count(&hit, "followersCount"), 0);
    let after = stats().await;
    assert_eq!(
        after["hits"].as_u64().unwrap(),
        before["hits"].as_u64().unwrap() + 1
    );
    assert_eq!(
        after["misses"].as_u64().unwrap(),
        before["misses"].as_u64().unwrap() + 1
    );

    // Each change that shows on the profile invalidates it: the next read is fresh.
    ok(&follow(&api, &viewer, &user).await);
    let read = profile(&api, &viewer, &user).await;
    assert_eq!(
        (cache(&read), count(&read, "followersCount")),
        ("miss".to_owned(), 1)
    );
    say(&api, &user, "counted").await;
    let read = profile(&api, &viewer, &user).await;
    assert_eq!(
        (cache(&read), count(&read, "postsCount")),
        ("miss".to_owned(), 1)
    );
    ok(&api
        .call(
            "PATCH",
            "/v1/me",
            json!({ "displayName": "Renamed" }),
            Some(&user.token),
        )
        .await);
    let read = profile(&api, &viewer, &user).await;
    assert_eq!(cache(&read), "miss");
    assert_eq!(read.str("/displayName"), "Renamed");
    assert_eq!(cache(&profile(&api, &viewer, &user).await), "hit");
    // The viewer's own relation is never cached.
    ok(&act(
        &api,
        "DELETE",
        &format!("/v1/users/{}/follow", user.username),
        &viewer,
    )
    .await);
    let read = profile(&api, &viewer, &user).await;
    assert_eq!(read.json["relationship"]["following"], false);
    assert_eq!(count(&read, "followersCount"), 0);
}
