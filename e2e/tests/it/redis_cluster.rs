//! Every process on a real Redis Cluster (3 masters, 3 replicas, Debian's redis-server in
//! cluster mode), through fred's cluster client: the multi-key paths (rate-limit buckets,
//! feed fan-out to timelines in many slots), the worker reading shards that live on different
//! nodes, sharded pub/sub — and a chat that goes on while a master is killed and its replica
//! takes over, then while every master hands its slots to its replica (a planned failover),
//! checked by the chaos ledger: nothing lost, doubled or reordered.

use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use haberci_bench::sampling::resp::Redis as RespClient;
use haberci_testkit::{TransportKind, users};
use serde_json::json;

use crate::chaos::{self, Traffic};
use crate::ledger::Database;
use crate::support::{Cluster, TIMEOUT};

/// Runs `args` on whichever master serves its key (the others answer `MOVED`).
async fn on_owner(cluster: &Cluster, args: &[&str]) -> haberci_bench::sampling::resp::Value {
    let mut last = String::new();
    for node in cluster.redis.live_nodes() {
        let mut redis = RespClient::connect(&cluster.redis.node_url(node))
            .await
            .expect("connect to a node");
        match redis.command(args).await {
            Ok(value) => return value,
            Err(err) => last = err.to_string(),
        }
    }
    panic!("no node answered {args:?}: {last}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_process_runs_on_a_redis_cluster_and_a_chat_survives_a_master_failover() {
    // A database of its own: the feed outbox is a queue that any worker on the same database
    // takes jobs from, and other tests' workers write to other Redis servers.
    let database = Database::create().await;
    let mut cluster =
        Cluster::start_on_redis_cluster(database.pooled_url(), database.direct_url(), 2, 2).await;

    // Rate limits: registration and login check several buckets in one script.
    let author = cluster.register("rc_author").await;
    users::login(cluster.api_addr, &author).await;

    // Fan-out on write into followers' timelines, which hash to many slots.
    let mut followers = Vec::new();
    for i in 0..6 {
        let follower = cluster.register(&format!("rc_follower{i}")).await;
        let (status, body) = cluster
            .api(
                http::Method::POST,
                &format!("/v1/users/{}/follow", author.username),
                Some(&follower.token),
                json!({}),
            )
            .await;
        assert!(status < 300, "follow: {status} {body}");
        followers.push(follower);
    }
    let (status, post) = cluster
        .api(
            http::Method::POST,
            "/v1/posts",
            Some(&author.token),
            json!({ "content": "to every slot" }),
        )
        .await;
    assert_eq!(status, 201, "{post}");
    let post_id = post["id"].as_str().expect("post id").to_owned();
    let deadline = tokio::time::Instant::now() + TIMEOUT;
    for follower in &followers {
        let key = format!("tl:{{{}}}", follower.id);
        loop {
            let score = on_owner(&cluster, &["ZSCORE", &key, &post_id]).await;
            if score.text().is_ok() {
                break;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "the post never reached {key}"
            );
            // The fan-out is the worker's, from its outbox: poll the timeline it fills.
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    // A chat across both gateways, and the master of the first stream shard killed mid-way.
    let target =
        |cluster: &Cluster, g: usize, kind: TransportKind| cluster.gateways[g].transport(kind);
    let (pairs, _) = chaos::chat_pairs(&cluster, 4, &target).await;
    let mut traffic = Traffic::start(pairs);
    traffic.wait_for(0, 8).await;
    traffic.phase.store(1, Ordering::Relaxed);
    traffic.wait_for(1, 4).await;
    let shard0 = format!("{}{{0}}", cluster.prefix);
    let victim = cluster.redis.master_of(&shard0).await;
    cluster.redis.kill_node(victim).await;
    let killed = Instant::now();
    // Its replica is promoted once the others have missed it for the node timeout.
    let recovery = traffic.recovery(1, killed).await;
    cluster.redis.wait_until_healthy().await;
    assert_ne!(
        cluster.redis.master_of(&shard0).await,
        victim,
        "a replica took over"
    );
    traffic.wait_for(1, 12).await;

    // A planned failover of every master: slots move without a disconnect, and Redis tells a
    // subscriber of the moved channels only by an unsubscribe message.
    traffic.phase.store(2, Ordering::Relaxed);
    traffic.wait_for(2, 4).await;
    cluster.redis.fail_over_every_master().await;
    let moved = Instant::now();
    let after_move = traffic.recovery(2, moved).await;
    traffic.wait_for(2, 12).await;
    let pairs = traffic.stop().await;

    let rows = chaos::ledger(&cluster, &pairs, 3).await;
    eprintln!(
        "master killed: recovered after {recovery:?}; planned failover: after {after_move:?}; \
         ledger {rows:?}"
    );
    for (phase, row) in rows.iter().enumerate() {
        assert!(row.sent > 0, "phase {phase}: nothing sent");
        assert_eq!(
            (row.lost, row.duplicated, row.out_of_order),
            (0, 0, 0),
            "phase {phase}: {row:?}"
        );
    }
    drop(cluster);
    database.drop().await;
}
