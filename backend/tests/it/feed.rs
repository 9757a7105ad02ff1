//! The home feed on the real Postgres and Redis: fan-out on write through the worker's outbox
//! loop, read-time merge of large authors, rebuild after Redis loses everything, removal on
//! delete and block, and every page equal to the reference query over Postgres while authors
//! post and followers follow and unfollow concurrently.

use http::StatusCode;
use serde_json::json;
use uuid::Uuid;

use haberci_backend::social::feed::{reference_page, timeline_key};
use haberci_backend::social::store::MAX_ID;

use crate::env;
use crate::social::{act, all_pages, fanned_out, follow, ids, ok, say};
use crate::support::{Api, User, roomy_settings, state_with};

/// The reference: every page of the viewer's home by the definition, from Postgres.
async fn reference(api: &Api, viewer: &User) -> Vec<Uuid> {
    let rows = reference_page(
        &api.state.db,
        haberci_wire::UserId::new(viewer.id).unwrap(),
        MAX_ID,
        100_000,
    )
    .await
    .unwrap();
    rows.into_iter().map(|r| r.id.as_uuid()).collect()
}

async fn source(api: &Api, viewer: &User, query: &str) -> String {
    let reply = api
        .get(&format!("/v1/feed/home{query}"), Some(&viewer.token))
        .await;
    assert_eq!(reply.status, StatusCode::OK, "{}", reply.json);
    reply.headers["x-haberci-feed-source"]
        .to_str()
        .unwrap()
        .to_owned()
}

async fn timeline_len(api: &Api, user: &User) -> i64 {
    use fred::prelude::*;
    api.state
        .redis
        .zcard(timeline_key(haberci_wire::UserId::new(user.id).unwrap()))
        .await
        .unwrap()
}

#[tokio::test]
async fn posts_fan_out_to_followers_and_pages_never_repeat_or_skip() {
    let api = Api::new();
    let (reader, a, b) = (api.user().await, api.user().await, api.user().await);
    ok(&follow(&api, &reader, &a).await);
    ok(&follow(&api, &reader, &b).await);
    // The first read builds the (empty) timeline; fan-out then adds to it.
    assert_eq!(source(&api, &reader, "").await, "rebuilt");
    let mut posted = Vec::new();
    for n in 0..7 {
        posted.push(say(&api, &a, &format!("a {n}")).await);
        posted.push(say(&api, &b, &format!("b {n}")).await);
    }
    posted.push(say(&api, &reader, "my own").await);
    fanned_out(&api, &posted).await;
    assert_eq!(
        timeline_len(&api, &reader).await,
        1 + 15,
        "marker + 15 posts"
    );
    assert_eq!(source(&api, &reader, "").await, "cache");

    // Page through while new posts arrive: the pages hold exactly the posts that existed.
    let mut seen = Vec::new();
    let mut cursor: Option<String> = None;
    loop {
        let url = match &cursor {
            Some(c) => format!("/v1/feed/home?limit=4&cursor={c}"),
            None => "/v1/feed/home?limit=4".to_owned(),
        };
        let page = api.get(&url, Some(&reader.token)).await;
        seen.extend(ids(&page));
        let newer = say(&api, &a, "arrives meanwhile").await;
        fanned_out(&api, &[newer]).await;
        match page.json["nextCursor"].as_str() {
            Some(c) => cursor = Some(c.to_owned()),
            None => break,
        }
    }
    posted.reverse();
    assert_eq!(seen, posted, "newest first, once each");
}

#[tokio::test]
async fn large_authors_are_merged_at_read_time_and_never_fanned_out() {
    let mut settings = roomy_settings();
    settings.social.feed.fanout_limit = 2;
    let api = Api::with_settings(settings);
    let (star, f1, f2, small) = (
        api.user().await,
        api.user().await,
        api.user().await,
        api.user().await,
    );
    ok(&follow(&api, &f1, &star).await);
    ok(&follow(&api, &f2, &star).await);
    ok(&follow(&api, &f1, &small).await);
    assert_eq!(source(&api, &f1, "").await, "rebuilt");

    let big = say(&api, &star, "to my many followers").await;
    let little = say(&api, &small, "to my one follower").await;
    // Visible at once, before any fan-out ran: merged from Postgres at read time.
    let home = api.get("/v1/feed/home", Some(&f1.token)).await;
    assert!(ids(&home).contains(&big), "{}", home.json);
    fanned_out(&api, &[big, little]).await;
    let home = api.get("/v1/feed/home", Some(&f1.token)).await;
    assert_eq!(ids(&home), vec![little, big]);
    // The star's post was not copied into followers' timelines (only the author's own).
    use fred::prelude::*;
    let score: Option<f64> = api
        .state
        .redis
        .zscore(
            timeline_key(haberci_wire::UserId::new(f1.id).unwrap()),
            big.to_string(),
        )
        .await
        .unwrap();
    assert_eq!(score, None);
    assert_eq!(
        all_pages(&api, &f1, "/v1/feed/home", 1).await,
        reference(&api, &f1).await
    );
}

#[tokio::test]
async fn a_flushed_redis_gives_back_the_same_feed_rebuilt_from_postgres() {
    // This test owns Redis database 7: it flushes it whole.
    let url = format!("{}/7", env("HABERCI_TEST_REDIS_URL"));
    let state = state_with(
        roomy_settings(),
        &url,
        std::sync::Arc::new(haberci_backend::auth::keys::KeyStore::fixed(
            haberci_token::KeySet::generate("feed-flush").unwrap(),
        )),
    );
    let api = Api::from_state(state);
    let (reader, a, b) = (api.user().await, api.user().await, api.user().await);
    ok(&follow(&api, &reader, &a).await);
    ok(&follow(&api, &reader, &b).await);
    // Posted before the first read, so the timeline is built from Postgres; no fan-out is
    // awaited here: the outbox is shared with the other tests, whose fan-out calls write to
    // database 0, not 7.
    for n in 0..6 {
        say(&api, &a, &format!("a {n}")).await;
        say(&api, &b, &format!("b {n}")).await;
    }
    assert_eq!(source(&api, &reader, "?limit=5").await, "rebuilt");
    assert_eq!(source(&api, &reader, "?limit=5").await, "cache");
    let before = all_pages(&api, &reader, "/v1/feed/home", 5).await;
    assert_eq!(before.len(), 12);

    use fred::prelude::*;
    // FLUSHDB, not FLUSHALL: other tests use database 0 meanwhile.
    let _: () = api
        .state
        .redis
        .custom(
            fred::types::CustomCommand::new_static("FLUSHDB", None, false),
            Vec::<String>::new(),
        )
        .await
        .unwrap();
    assert_eq!(timeline_len(&api, &reader).await, 0);
    assert_eq!(source(&api, &reader, "?limit=5").await, "rebuilt");
    let after = all_pages(&api, &reader, "/v1/feed/home", 5).await;
    assert_eq!(after, before);
    assert_eq!(source(&api, &reader, "?limit=5").await, "cache");
}

#[tokio::test]
async fn deleting_a_post_or_blocking_its_author_takes_it_out_of_timelines() {
    let api = Api::new();
    let (reader, a, b) = (api.user().await, api.user().await, api.user().await);
    ok(&follow(&api, &reader, &a).await);
    ok(&follow(&api, &reader, &b).await);
    source(&api, &reader, "").await;
    let gone = say(&api, &a, "regret").await;
    let kept = say(&api, &a, "fine").await;
    let blocked = say(&api, &b, "from b").await;
    fanned_out(&api, &[gone, kept, blocked]).await;
    assert_eq!(timeline_len(&api, &reader).await, 4);

    ok(&act(&api, "DELETE", &format!("/v1/posts/{gone}"), &a).await);
    fanned_out(&api, &[gone]).await;
    use fred::prelude::*;
    let score: Option<f64> = api
        .state
        .redis
        .zscore(
            timeline_key(haberci_wire::UserId::new(reader.id).unwrap()),
            gone.to_string(),
        )
        .await
        .unwrap();
    assert_eq!(score, None, "removed from the materialised timeline");
    let home = api.get("/v1/feed/home", Some(&reader.token)).await;
    assert_eq!(ids(&home), vec![blocked, kept]);

    // Blocking drops the follow and invalidates the timeline; b's post is gone from it.
    ok(&act(
        &api,
        "POST",
        &format!("/v1/users/{}/block", b.username),
        &reader,
    )
    .await);
    assert_eq!(timeline_len(&api, &reader).await, 0, "invalidated");
    let home = api.get("/v1/feed/home", Some(&reader.token)).await;
    assert_eq!(ids(&home), vec![kept]);
    assert_eq!(timeline_len(&api, &reader).await, 2, "rebuilt without b");
}

#[tokio::test]
async fn feed_pages_equal_the_reference_query_while_authors_post_and_followers_change() {
    let api = Api::new();
    let mut authors = Vec::new();
    for _ in 0..6 {
        authors.push(api.user().await);
    }
    let mut readers = Vec::new();
    for _ in 0..4 {
        readers.push(api.user().await);
    }
    // Readers start following the first three authors; their timelines are built.
    for reader in &readers {
        for author in &authors[..3] {
            ok(&follow(&api, reader, author).await);
        }
        source(&api, reader, "").await;
    }
    // Concurrently: every author posts 5 times while every reader follows the last three and
    // unfollows the first one, and the worker fans out.
    let posting = futures::future::join_all(authors.iter().map(|author| {
        let api = &api;
        async move {
            let mut mine = Vec::new();
            for n in 0..5 {
                let reply = api
                    .call(
                        "POST",
                        "/v1/posts",
                        json!({ "content": format!("post {n}") }),
                        Some(&author.token),
                    )
                    .await;
                assert_eq!(reply.status, StatusCode::CREATED, "{}", reply.json);
                mine.push(reply.str("/id").parse::<Uuid>().unwrap());
            }
            mine
        }
    }));
    let changing = futures::future::join_all(readers.iter().map(|reader| {
        let (api, authors) = (&api, &authors);
        async move {
            for author in &authors[3..] {
                ok(&follow(api, reader, author).await);
                // Read in between: rebuilds race the follows and the fan-out.
                api.get("/v1/feed/home?limit=3", Some(&reader.token)).await;
            }
            ok(&act(
                api,
                "DELETE",
                &format!("/v1/users/{}/follow", authors[0].username),
                reader,
            )
            .await);
            api.get("/v1/feed/home?limit=3", Some(&reader.token)).await;
        }
    }));
    let (posted, ()) = tokio::join!(posting, async {
        changing.await;
    });
    let all: Vec<Uuid> = posted.into_iter().flatten().collect();
    fanned_out(&api, &all).await;

    for reader in &readers {
        let want = reference(&api, reader).await;
        assert_eq!(want.len(), 25, "five authors × five posts");
        for limit in [1, 7, 20] {
            let got = all_pages(&api, reader, "/v1/feed/home", limit).await;
            assert_eq!(got, want, "reader {} limit {limit}", reader.username);
        }
    }
}

/// The fan-out loop does not poll an empty outbox: the trigger's `NOTIFY` wakes it. The
/// listener wakes once when it begins listening; after that, only a notification can wake it
/// again (its fallback is the loop's ten-second look, which this does not run).
#[tokio::test]
async fn a_new_post_wakes_the_fan_out_listener() {
    use std::sync::Arc;
    use std::time::Duration;

    use haberci_backend::social::fanout;
    use tokio::sync::Notify;

    let api = Api::new();
    let author = api.user().await;
    let wake = Arc::new(Notify::new());
    let listener = tokio::spawn(fanout::listen(api.state.db.clone(), wake.clone()));
    tokio::time::timeout(Duration::from_secs(30), wake.notified())
        .await
        .expect("the listener listens");
    let post = say(&api, &author, "wake up").await;
    tokio::time::timeout(Duration::from_secs(30), wake.notified())
        .await
        .expect("the outbox insert notified the listener");
    listener.abort();
    fanned_out(&api, &[post]).await;
}
