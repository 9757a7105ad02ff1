//! The Redis client (fred). One client per purpose: a blocking `XREADGROUP` needs a connection
//! of its own, and pub/sub subscribers are separate clients too (#6).
//!
//! Invariant: Redis is never on the critical path of correctness, and never allowed to stall a
//! request. The client keeps reconnecting in the background (also when Redis is down at
//! start-up: `fail_fast = false`), and every command fails after
//! [`DEFAULT_COMMAND_TIMEOUT`] instead of waiting for a reconnection. Callers degrade as
//! docs/OPERATIONS.md ("Redis outage") says: the session check reads Postgres, revocation
//! announcements are logged and skipped, login and registration answer 503.

use std::time::Duration;

use fred::prelude::*;

/// Connect timeout for each attempt.
pub const DEFAULT_CONNECT_TIMEOUT: Duration = Duration::from_secs(2);
/// How long any one command may take, queueing during a reconnection included. A healthy
/// Redis answers in well under a millisecond; this only bounds an outage.
pub const DEFAULT_COMMAND_TIMEOUT: Duration = Duration::from_millis(500);

/// Builds a client that reconnects forever with capped backoff, and starts connecting it.
/// Returns before the first connection succeeds, so readiness can report a Redis that is down.
pub fn connect(url: &str) -> Result<Client, fred::error::Error> {
    connect_with_timeout(url, DEFAULT_COMMAND_TIMEOUT)
}

/// A client of its own for blocking reads (`XREADGROUP BLOCK`): a blocked connection can
/// serve nothing else, and its commands need a timeout longer than the block.
pub fn connect_blocking(url: &str, block: Duration) -> Result<Client, fred::error::Error> {
    connect_with_timeout(url, block + DEFAULT_CONNECT_TIMEOUT)
}

fn connect_with_timeout(
    url: &str,
    command_timeout: Duration,
) -> Result<Client, fred::error::Error> {
    let mut config = Config::from_url(url)?;
    // fred's default (`true`) gives up for good when the first connection fails, leaving a
    // client that never reconnects if Redis was down when the process started.
    config.fail_fast = false;
    let client = Builder::from_config(config)
        .with_connection_config(|c| {
            c.connection_timeout = DEFAULT_CONNECT_TIMEOUT;
            c.internal_command_timeout = DEFAULT_CONNECT_TIMEOUT;
        })
        .with_performance_config(|p| {
            p.default_command_timeout = command_timeout;
        })
        .set_policy(ReconnectPolicy::new_exponential(0, 100, 2_000, 2))
        .build()?;
    // The connection task runs in the background; its handle ends when the client quits.
    let _connection = client.connect();
    Ok(client)
}

/// `DEL` of `keys`: one command on a single Redis; on a Redis Cluster, one per hash slot
/// (a multi-key command must stay in one slot), pipelined.
pub async fn del_each(redis: &Client, keys: Vec<String>) -> Result<(), fred::error::Error> {
    if !redis.is_clustered() {
        let _: i64 = redis.del(keys).await?;
        return Ok(());
    }
    let pipeline = redis.pipeline();
    for (_, keys) in fred::util::group_by_hash_slot(keys)? {
        let _: () = pipeline.del(Vec::from(keys)).await?;
    }
    let _: Vec<Value> = pipeline.all().await?;
    Ok(())
}

/// `keys` as the groups one multi-key command (or script) may take: all of them on a single
/// Redis, one group per hash slot on a Redis Cluster.
pub fn slot_groups(redis: &Client, keys: Vec<String>) -> Result<Vec<Vec<Key>>, fred::error::Error> {
    if !redis.is_clustered() {
        return Ok(vec![keys.into_iter().map(Key::from).collect()]);
    }
    Ok(fred::util::group_by_hash_slot(keys)?
        .into_values()
        .map(Vec::from)
        .collect())
}
