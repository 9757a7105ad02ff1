//! The Redis users of deploy/redis/users.acl refuse what their process must not do. That they
//! allow all it must do is what every other test here shows: each process runs as its user.
//!
//! The rule that matters most: only the gateway may append to the message streams, because the
//! worker stores each entry's sender id as given. A worker, the api or an anonymous client
//! that could XADD could send as anyone.

use haberci_bench::sampling::resp::Redis;

use crate::support::Cluster;

async fn as_user(cluster: &Cluster, user: &str) -> Redis {
    Redis::connect(&cluster.redis.url_as(user))
        .await
        .unwrap_or_else(|e| panic!("{user}: {e}"))
}

/// The error Redis answered `args` with; panics if it was allowed.
async fn refused(redis: &mut Redis, who: &str, args: &[&str]) -> String {
    match redis.command(args).await {
        Ok(value) => panic!("{who} was allowed {args:?}: {value:?}"),
        Err(e) => e.to_string(),
    }
}

/// Redis replays its AOF as the default user and re-checks each MULTI/EXEC against that user's
/// rights (scripts' writes are in the AOF as MULTI/EXEC). With a default user stripped of
/// rights, a restart silently dropped them (deploy/redis/users.acl says more).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn transactions_survive_a_restart_on_the_aof() {
    let mut cluster = Cluster::start(0, 0).await;
    // The worker's road: a loaded script writing a timeline (the feed fan-out).
    let mut worker = as_user(&cluster, "haberci-worker").await;
    let sha = worker
        .command(&[
            "SCRIPT",
            "LOAD",
            "redis.call('ZADD', KEYS[1], 7, 'post'); redis.call('EXPIRE', KEYS[1], 600)",
        ])
        .await
        .expect("SCRIPT LOAD")
        .text()
        .expect("a sha");
    worker
        .command(&["EVALSHA", &sha, "1", "tl:{acl-aof}"])
        .await
        .expect("the script runs");
    drop(worker);
    let logs = cluster.logs();
    cluster.redis.restart(&logs).await;
    let mut admin = Redis::connect(&cluster.redis.url()).await.expect("admin");
    let score = admin
        .command(&["ZSCORE", "tl:{acl-aof}", "post"])
        .await
        .expect("ZSCORE");
    assert_eq!(score.text().ok().as_deref(), Some("7"), "{score:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_process_is_refused_what_it_must_not_do() {
    let cluster = Cluster::start(0, 0).await;
    let stream = format!("{}{{0}}", cluster.prefix);
    let entry = ["XADD", &stream, "*", "e", "{}"];

    // Anonymous: nothing at all.
    let mut anonymous = Redis::connect(&cluster.redis.anonymous_url())
        .await
        .expect("connect");
    assert!(
        refused(&mut anonymous, "anonymous", &["PING"])
            .await
            .contains("NOAUTH")
    );
    assert!(
        refused(&mut anonymous, "anonymous", &entry)
            .await
            .contains("NOAUTH")
    );

    // The gateway appends; it cannot delete, read or trim the streams.
    let mut gateway = as_user(&cluster, "haberci-gateway").await;
    gateway.command(&entry).await.expect("the gateway appends");
    for args in [
        vec!["DEL", &stream],
        vec!["XRANGE", &stream, "-", "+"],
        vec!["XTRIM", &stream, "MAXLEN", "0"],
        vec!["SET", &stream, "x"],
    ] {
        refused(&mut gateway, "gateway", &args).await;
    }
    // Nor anyone's login session.
    refused(&mut gateway, "gateway", &["GET", "sess:anything"]).await;

    // The worker reads as the group and acknowledges; it never appends, by any road.
    let mut worker = as_user(&cluster, "haberci-worker").await;
    worker
        .command(&["XGROUP", "CREATE", &stream, "workers", "0", "MKSTREAM"])
        .await
        .expect("the worker makes its group");
    worker
        .command(&[
            "XREADGROUP",
            "GROUP",
            "workers",
            "w1",
            "COUNT",
            "10",
            "STREAMS",
            &stream,
            ">",
        ])
        .await
        .expect("the worker reads");
    assert!(
        refused(&mut worker, "worker", &entry)
            .await
            .contains("NOPERM")
    );
    refused(
        &mut worker,
        "worker",
        &["XGROUP", "SETID", &stream, "workers", "0"],
    )
    .await;
    refused(&mut worker, "worker", &["XDEL", &stream, "0-1"]).await;
    refused(
        &mut worker,
        "worker",
        &[
            "EVAL",
            "return redis.call('XADD', KEYS[1], '*', 'e', '{}')",
            "1",
            &stream,
        ],
    )
    .await;
    // A script it may load still runs with its rights.
    let sha = worker
        .command(&[
            "SCRIPT",
            "LOAD",
            "return redis.call('XADD', KEYS[1], '*', 'e', '{}')",
        ])
        .await
        .expect("the worker loads scripts")
        .text()
        .expect("a sha");
    assert!(
        refused(&mut worker, "worker", &["EVALSHA", &sha, "1", &stream])
            .await
            .contains("permission"),
        "XADD inside a script"
    );
    refused(&mut worker, "worker", &["ZADD", &stream, "1", "x"]).await;
    refused(&mut worker, "worker", &["SPUBLISH", "p:{x}", "x"]).await;

    // The api: no stream, no presence.
    let mut api = as_user(&cluster, "haberci-api").await;
    assert!(refused(&mut api, "api", &entry).await.contains("NOPERM"));
    refused(&mut api, "api", &["HGETALL", "presence:{x}"]).await;
    refused(
        &mut api,
        "api",
        &[
            "XREADGROUP",
            "GROUP",
            "workers",
            "a",
            "STREAMS",
            &stream,
            ">",
        ],
    )
    .await;

    // Only the gateways hold the keys that open QUIC's TLS session tickets.
    let ticket_key = haberci_seam::streams::ticket_key(1);
    refused(&mut api, "api", &["GET", &ticket_key]).await;

    // The exporter reads and nothing else.
    let mut exporter = as_user(&cluster, "haberci-exporter").await;
    exporter
        .command(&["XINFO", "GROUPS", &stream])
        .await
        .expect("the exporter reads stream lag");
    refused(&mut exporter, "exporter", &entry).await;
    refused(&mut exporter, "exporter", &["SET", "sess:x", "y"]).await;
    for read in [
        vec!["GET", ticket_key.as_str()],
        vec!["GETRANGE", &ticket_key, "0", "-1"],
        vec!["DUMP", &ticket_key],
    ] {
        refused(&mut exporter, "exporter", &read).await;
    }

    // Nothing a refused command tried is in the stream: only the gateway's entry.
    let mut admin = Redis::connect(&cluster.redis.url()).await.expect("admin");
    let length = admin.command(&["XLEN", &stream]).await.expect("XLEN");
    assert_eq!(length.int().expect("a number"), 1);
}
