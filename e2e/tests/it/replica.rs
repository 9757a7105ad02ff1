//! A streaming read replica behind the api (`HABERCI_REPLICA_DATABASE_URL`): older history
//! pages go there while it is fresh, never when it is staler than the bound, never with a
//! hole; when it stops or falls behind, the same reads come from the primary.
//!
//! Which server answered, the api's own counter says (`haberci_db_stale_reads_total`, read
//! from its `/metrics`). The test makes the replica fall behind by pausing its WAL replay
//! (`pg_wal_replay_pause()`).

use haberci_client::ConversationId;
use haberci_testkit::{TransportKind, User};
use serde_json::Value;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::peer::Peer;
use crate::private_pg::Postgres;
use crate::support::{Cluster, REPLICA_MAX_STALENESS, TIMEOUT, text_to};

fn replica(cluster: &Cluster) -> &Postgres {
    cluster
        .private_db
        .as_ref()
        .and_then(|p| p.replica.as_ref())
        .expect("a cluster with a replica")
}

async fn pause_replay(replica: &Postgres) {
    replica.query("SELECT pg_wal_replay_pause()::text").await;
}

async fn resume_replay(replica: &Postgres) {
    replica.query("SELECT pg_wal_replay_resume()::text").await;
}

/// The api's `/metrics` text.
async fn api_metrics(cluster: &mut Cluster) -> String {
    let line = cluster
        .api
        .as_mut()
        .expect("api")
        .wait_for_log("serving metrics")
        .await;
    let addr = line["addr"].as_str().expect("metrics addr").to_owned();
    let mut stream = tokio::net::TcpStream::connect(&addr)
        .await
        .expect("connect to /metrics");
    stream
        .write_all(b"GET /metrics HTTP/1.0\r\nHost: api\r\n\r\n")
        .await
        .expect("request /metrics");
    let mut text = String::new();
    stream
        .read_to_string(&mut text)
        .await
        .expect("read /metrics");
    text
}

fn metric(text: &str, name: &str) -> f64 {
    text.lines()
        .find_map(|line| line.strip_prefix(name)?.trim().parse().ok())
        .unwrap_or(0.0)
}

/// Reads that may lag, answered by (replica, primary) so far.
async fn stale_reads(cluster: &mut Cluster) -> (f64, f64) {
    let text = api_metrics(cluster).await;
    (
        metric(&text, "haberci_db_stale_reads_total{server=\"replica\"}"),
        metric(&text, "haberci_db_stale_reads_total{server=\"primary\"}"),
    )
}

/// The seqs of `conversation`'s history page below `before`, as `user` reads it.
async fn page(
    cluster: &Cluster,
    user: &User,
    conversation: ConversationId,
    before: u64,
) -> Vec<u64> {
    let (status, body) = cluster
        .api(
            http::Method::GET,
            &format!("/v1/conversations/{conversation}/messages?before={before}&limit=50"),
            Some(&user.token),
            Value::Null,
        )
        .await;
    assert_eq!(status, 200, "{body}");
    body["messages"]
        .as_array()
        .expect("messages")
        .iter()
        .map(|m| m["seq"].as_u64().expect("seq"))
        .collect()
}

/// Alice has sent Bob `n` messages; returns Bob and their conversation, once the replica
/// holds them all.
async fn conversation_of(cluster: &Cluster, n: u32) -> (Peer, User, ConversationId) {
    let alice_user = cluster.register("alice").await;
    let bob_user = cluster.register("bob").await;
    let alice = Peer::connect(
        &alice_user,
        cluster.client_config(0, TransportKind::Quic, &alice_user.token),
    )
    .await;
    let mut conversation = None;
    for i in 1..=n {
        let message = text_to(&bob_user, format!("message {i}"));
        conversation = Some(alice.send_reliably(message).await.conversation_id);
    }
    let conversation = conversation.expect("a conversation");
    until("the replica replays the messages", || async {
        replica(cluster)
            .query(&format!(
                "SELECT last_seq::text FROM conversations WHERE id = '{conversation}'"
            ))
            .await
            .as_deref()
            == Some(&n.to_string())
    })
    .await;
    (alice, bob_user, conversation)
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
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
}

/// Reads the page below seq 3 until the replica answers one (the api trusts it from its
/// watcher's first fresh sample on).
async fn until_the_replica_answers(
    cluster: &mut Cluster,
    bob: &User,
    conversation: ConversationId,
) {
    let deadline = tokio::time::Instant::now() + TIMEOUT;
    loop {
        let (before, _) = stale_reads(cluster).await;
        assert_eq!(page(cluster, bob, conversation, 3).await, vec![2, 1]);
        if stale_reads(cluster).await.0 > before {
            return;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the api never read the replica"
        );
        // Pacing the reads.
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_older_history_page_comes_from_a_fresh_replica_and_never_with_a_hole() {
    let mut cluster = Cluster::start_private_with_replica(1, 1).await;
    let (alice, bob, conversation) = conversation_of(&cluster, 3).await;
    until_the_replica_answers(&mut cluster, &bob, conversation).await;

    pause_replay(replica(&cluster)).await;
    for i in 4..=6 {
        alice
            .send_reliably(text_to(&bob, format!("message {i}")))
            .await;
    }
    // The page below seq 6 holds 5 and 4, which only the primary has: the primary answers.
    let (replica_before, primary_before) = stale_reads(&mut cluster).await;
    assert_eq!(
        page(&cluster, &bob, conversation, 6).await,
        vec![5, 4, 3, 2, 1]
    );
    let (replica_after, primary_after) = stale_reads(&mut cluster).await;
    assert_eq!(
        (replica_after, primary_after),
        (replica_before, primary_before + 1.0),
        "the primary answered the page the replica has a hole in"
    );
    resume_replay(replica(&cluster)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replica_that_stops_replaying_answers_within_the_bound_and_not_beyond() {
    let mut cluster = Cluster::start_private_with_replica(1, 1).await;
    let (alice, bob, conversation) = conversation_of(&cluster, 3).await;
    until_the_replica_answers(&mut cluster, &bob, conversation).await;

    pause_replay(replica(&cluster)).await;
    // A write the replica does not replay: from here on it falls behind (a replica of a
    // primary that writes nothing is never stale).
    alice.send_reliably(text_to(&bob, "not replayed")).await;
    // Until the replica's data is older than the bound the replica answers, then the primary.
    let deadline = tokio::time::Instant::now() + REPLICA_MAX_STALENESS + TIMEOUT;
    loop {
        let (_, primary_before) = stale_reads(&mut cluster).await;
        assert_eq!(page(&cluster, &bob, conversation, 3).await, vec![2, 1]);
        let text = api_metrics(&mut cluster).await;
        if metric(&text, "haberci_db_stale_reads_total{server=\"primary\"}") > primary_before {
            // The api's own measure of the replica's staleness says why.
            let staleness = metric(&text, "haberci_db_replica_staleness_seconds");
            // The gauge is the watcher's, up to one sample (250 ms) older than the decision.
            assert!(
                staleness >= REPLICA_MAX_STALENESS.as_secs_f64() - 1.0,
                "the primary answered while the replica was {staleness} s behind"
            );
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the replica still answers"
        );
        // Pacing the reads.
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    }
    resume_replay(replica(&cluster)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reads_go_on_when_the_replica_goes_down_and_back_to_it_when_it_returns() {
    let mut cluster = Cluster::start_private_with_replica(1, 1).await;
    let (_alice, bob, conversation) = conversation_of(&cluster, 3).await;
    until_the_replica_answers(&mut cluster, &bob, conversation).await;

    let logs = cluster.logs();
    let private = cluster.private_db.as_mut().expect("private database");
    private.replica.as_mut().expect("replica").stop().await;
    let (_, primary_before) = stale_reads(&mut cluster).await;
    assert_eq!(page(&cluster, &bob, conversation, 3).await, vec![2, 1]);
    cluster
        .api
        .as_mut()
        .expect("api")
        .wait_for_log("a replica read failed; reading the primary")
        .await;
    assert_eq!(stale_reads(&mut cluster).await.1, primary_before + 1.0);

    let private = cluster.private_db.as_mut().expect("private database");
    private
        .replica
        .as_mut()
        .expect("replica")
        .start_again(&logs)
        .await;
    until_the_replica_answers(&mut cluster, &bob, conversation).await;
}
