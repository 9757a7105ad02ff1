//! The message worker's consumer: inbound stream entries in, stored messages, receipts and
//! answers out. The protocol it implements is [`haberci_seam::streams`].
//!
//! - [`batch`] (sans-IO): decode entries, check sends as far as possible without the
//!   database, coalesce receipts.
//! - [`plan`] (sans-IO): what a batch's sends need read, and what each becomes given what
//!   was read (dedupe, refusals, numbering), down to the rows to insert.
//! - [`store`]: one Postgres transaction per batch: the plan's reads and writes, and the
//!   watermarks.
//! - [`linger`] (sans-IO): how long a small batch waits for more entries under load.
//! - [`streams`]: the Redis side (groups, `XREADGROUP`, `XAUTOCLAIM`, `XACK`, trimming).
//! - [`consumer`]: the loop that ties them together.
//!
//! # A batch
//!
//! The worker reads up to `HABERCI_BATCH_SIZE` entries across all shards (`XREADGROUP …
//! BLOCK`, on a Redis client of its own), commits them in **one transaction** (see
//! [`store`] for the steps), and only **after the commit** publishes (`SPUBLISH`, one
//! pipeline, in entry order) and acknowledges (`XACK`). Per conversation, seqs are given in
//! entry order and published in that order.
//!
//! Guarantees: `Sent` only after commit; a send is stored at most once (unique
//! `(sender_id, client_msg_id)`; a retry, a reclaim or a second worker is answered with the
//! original); an entry is acknowledged only after its effects committed, so a worker killed at
//! any moment loses nothing: its entries stay pending and another worker reclaims them. Pub/sub
//! may lose events; correctness rests on seqs in Postgres and the gateways' resume.
//!
//! Failures: an entry that does not decode is poison (acknowledged, logged once at error);
//! a lost race (unique violation, serialization failure, deadlock) runs the batch again; an
//! unreachable Postgres holds the batch unacknowledged with bounded backoff (one warning per
//! outage); a batch Postgres refuses as data is stored entry by entry so that only the bad
//! entry is refused (`internal`). A consumer group lost with Redis's data (`NOGROUP`) is
//! recreated.
//!
//! # Reclaim
//!
//! Every `HABERCI_CLAIM_INTERVAL` each shard is swept with `XAUTOCLAIM <key> workers <me>
//! <HABERCI_CLAIM_IDLE> …`: entries another consumer read and did not acknowledge in time
//! become ours and are processed like new ones. At start, a consumer first re-reads its own
//! pending entries (ID `0`).
//!
//! # Stream trimming
//!
//! Gateways `XADD` without `MAXLEN`. Every `HABERCI_TRIM_INTERVAL` the worker trims each
//! shard with `XTRIM <key> MINID <id>`, where `id` is the smaller of the group's oldest
//! pending entry (`XPENDING` summary) and the entry after the group's last-delivered id
//! (`XINFO GROUPS`), read in that order ([`streams::Shards::trim_point`] says why). So an
//! entry is removed only once it was delivered and acknowledged: nothing unacknowledged is
//! ever trimmed.

pub mod batch;
pub mod consumer;
pub mod linger;
pub mod plan;
pub mod shard_readers;
pub mod store;
pub mod streams;

use haberci_kit::shutdown::Shutdown;
use sqlx::PgPool;

pub use consumer::{Consumer, consumer_name};

use crate::config::MessagingSettings;

/// Runs a consumer named [`consumer_name`] until `shutdown`, with Redis clients of its own.
pub async fn run(
    db: PgPool,
    redis_url: &str,
    settings: MessagingSettings,
    shutdown: Shutdown,
) -> Result<(), fred::error::Error> {
    run_named(db, redis_url, settings, &consumer_name(), shutdown).await
}

/// [`run`] with a given consumer name (tests; a restart under the same name re-reads its
/// pending entries first).
pub async fn run_named(
    db: PgPool,
    redis_url: &str,
    settings: MessagingSettings,
    name: &str,
    shutdown: Shutdown,
) -> Result<(), fred::error::Error> {
    use fred::interfaces::ClientLike;
    let redis = crate::redis::connect(redis_url)?;
    let blocking = crate::redis::connect_blocking(redis_url, settings.block)?;
    Consumer::new(db, redis.clone(), blocking.clone(), settings, name)
        .run(shutdown)
        .await;
    let _ = redis.quit().await;
    let _ = blocking.quit().await;
    Ok(())
}
