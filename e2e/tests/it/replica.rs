//! A streaming read replica behind the api (`HABERCI_REPLICA_DATABASE_URL`): reads that may
//! lag go there while it is fresh, never staler than the bound, and never with a hole; when
//! it stops or falls behind, the same reads come from the primary.
//!
//! Which server answered is told by what it knows: the test pauses the replica's WAL replay
//! (`pg_wal_replay_pause()`), writes on the primary, and reads. An answer without the write
//! came from the replica.

use std::time::Duration;

use haberci_client::{MessageKind, Recipient};
use haberci_testkit::{TransportKind, User};
use serde_json::Value;

use crate::peer::Peer;
use crate::private_pg::Postgres;
use crate::support::{Cluster, REPLICA_MAX_STALENESS, TIMEOUT};

fn replica(cluster: &Cluster) -> &Postgres {
    cluster
        .private_db
        .as_ref()
        .and_then(|p| p.replica.as_ref())
        .expect("a cluster with a replica")
}

async fn follow(cluster: &Cluster, who: &User, whom: &User) {
    let (status, body) = cluster
        .api(
            http::Method::POST,
            &format!("/v1/users/{}/follow", whom.username),
            Some(&who.token),
            Value::Null,
        )
        .await;
    assert!((200..300).contains(&status), "follow: {status} {body}");
}

/// The usernames `viewer` sees following `of` (another user: a read that may lag).
async fn followers(cluster: &Cluster, viewer: &User, of: &User) -> Vec<String> {
    let (status, body) = cluster
        .api(
            http::Method::GET,
            &format!("/v1/users/{}/followers?limit=100", of.username),
            Some(&viewer.token),
            Value::Null,
        )
        .await;
    assert_eq!(status, 200, "followers: {body}");
    body["users"]
        .as_array()
        .expect("users")
        .iter()
        .map(|u| u["username"].as_str().expect("username").to_owned())
        .collect()
}

async fn replica_has_follow(replica: &Postgres, who: &User, whom: &User) -> bool {
    replica
        .query(&format!(
            "SELECT count(*)::text FROM follows WHERE follower_id = '{}' AND followee_id = '{}'",
            who.id, whom.id
        ))
        .await
        .as_deref()
        == Some("1")
}

async fn pause_replay(replica: &Postgres) {
    replica.query("SELECT pg_wal_replay_pause()::text").await;
}

async fn resume_replay(replica: &Postgres) {
    replica.query("SELECT pg_wal_replay_resume()::text").await;
}

/// Polls `done` until it holds (a condition on the servers, not a wait for time to pass).
async fn until<F, Fut>(what: &str, mut done: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = tokio::time::Instant::now() + TIMEOUT;
    while !done().await {
        assert!(tokio::time::Instant::now() < deadline, "{what}");
        // Pacing the polls.
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Pauses the replica's replay and returns a user whose follow of `followee` the primary has
/// and `viewer`'s read did not show: the api read it from the replica. Replay stays paused.
async fn a_read_served_by_the_replica(cluster: &Cluster, viewer: &User, followee: &User) -> User {
    let replica = replica(cluster);
    for _ in 0..40 {
        let follower = cluster.register("follower").await;
        pause_replay(replica).await;
        follow(cluster, &follower, followee).await;
        if !followers(cluster, viewer, followee)
            .await
            .contains(&follower.username)
        {
            assert!(
                !replica_has_follow(replica, &follower, followee).await,
                "the replica does not have what it did not show"
            );
            return follower;
        }
        // The api did not trust the replica yet (or replay paused too late): catch up, again.
        resume_replay(replica).await;
        until("the replica replays the follow", || {
            replica_has_follow(replica, &follower, followee)
        })
        .await;
    }
    panic!("the api never read from the replica");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replica_that_stops_replaying_is_read_within_the_bound_and_not_beyond() {
    let cluster = Cluster::start_private_with_replica(0, 0).await;
    let alice = cluster.register("alice").await;
    let carol = cluster.register("carol").await;
    let follower = a_read_served_by_the_replica(&cluster, &alice, &carol).await;

    // Replay stays paused: the replica's answer ages, and once it is older than the bound
    // the same read comes from the primary, with the follow.
    let started = tokio::time::Instant::now();
    let mut stale_reads = 0;
    while !followers(&cluster, &alice, &carol)
        .await
        .contains(&follower.username)
    {
        stale_reads += 1;
        assert!(
            started.elapsed() < REPLICA_MAX_STALENESS + TIMEOUT,
            "still stale after {stale_reads} reads"
        );
        // Pacing the reads.
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert!(
        !replica_has_follow(replica(&cluster), &follower, &carol).await,
        "the replica still lacks the follow: the answer was the primary's"
    );
    resume_replay(replica(&cluster)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reads_go_on_when_the_replica_goes_down_and_back_to_it_when_it_returns() {
    let mut cluster = Cluster::start_private_with_replica(0, 0).await;
    let alice = cluster.register("alice").await;
    let carol = cluster.register("carol").await;
    // The api trusts the replica now.
    let follower = a_read_served_by_the_replica(&cluster, &alice, &carol).await;

    let logs = cluster.logs();
    let private = cluster.private_db.as_mut().expect("private database");
    private.replica.as_mut().expect("replica").stop().await;
    assert!(
        followers(&cluster, &alice, &carol)
            .await
            .contains(&follower.username),
        "read from the primary when the replica failed"
    );
    cluster
        .api
        .as_mut()
        .expect("api")
        .wait_for_log("a replica read failed; reading the primary")
        .await;
    assert!(
        followers(&cluster, &alice, &carol)
            .await
            .contains(&follower.username)
    );

    let private = cluster.private_db.as_mut().expect("private database");
    private
        .replica
        .as_mut()
        .expect("replica")
        .start_again(&logs)
        .await;
    until("the replica replays what it missed", || {
        replica_has_follow(replica(&cluster), &follower, &carol)
    })
    .await;
    // And the api reads from it again.
    a_read_served_by_the_replica(&cluster, &alice, &carol).await;
    resume_replay(replica(&cluster)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_older_history_page_never_has_a_hole_the_replica_has_not_replayed() {
    let cluster = Cluster::start_private_with_replica(1, 1).await;
    let alice_user = cluster.register("alice").await;
    let bob_user = cluster.register("bob").await;
    let alice = Peer::connect(
        &alice_user,
        cluster.client_config(0, TransportKind::Quic, &alice_user.token),
    )
    .await;
    let to_bob = |i: u32| {
        haberci_client::message(
            Recipient::User(bob_user.id),
            MessageKind::Text,
            format!("message {i}"),
        )
    };
    let mut conversation = None;
    for i in 1..=3 {
        conversation = Some(alice.send_reliably(to_bob(i)).await.conversation_id);
    }
    let conversation = conversation.expect("a conversation");
    // The api trusts the replica, and its replay is paused from here on.
    a_read_served_by_the_replica(&cluster, &alice_user, &bob_user).await;
    for i in 4..=6 {
        alice.send_reliably(to_bob(i)).await;
    }

    // The page below seq 6 holds 5 and 4, which only the primary has.
    let (status, body) = cluster
        .api(
            http::Method::GET,
            &format!("/v1/conversations/{conversation}/messages?before=6&limit=50"),
            Some(&bob_user.token),
            Value::Null,
        )
        .await;
    assert_eq!(status, 200, "{body}");
    let seqs: Vec<u64> = body["messages"]
        .as_array()
        .expect("messages")
        .iter()
        .map(|m| m["seq"].as_u64().expect("seq"))
        .collect();
    assert_eq!(seqs, vec![5, 4, 3, 2, 1], "{body}");
    let replayed = replica(&cluster)
        .query(&format!(
            "SELECT last_seq::text FROM conversations WHERE id = '{conversation}'"
        ))
        .await;
    assert_ne!(
        replayed.as_deref(),
        Some("6"),
        "the replica had not replayed the new messages"
    );
    resume_replay(replica(&cluster)).await;
}
