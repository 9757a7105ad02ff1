//! The worker's fan-out loop: takes jobs from `feed_outbox` (written in the transaction that
//! created or deleted a post) and applies them to the Redis timelines ([`super::feed`]).
//!
//! It does not poll an empty outbox: a trigger on `feed_outbox` sends `NOTIFY feed_outbox`
//! with each insert (delivered at commit), and the loop sleeps until one arrives. Before, an
//! idle worker ran three statements every 50 ms, 20 of the 225 Postgres transactions per
//! 1,000 deliveries of a chat (docs/BENCHMARKS.md, "Fourth round"). A notification is lost
//! only while the listening connection is down; the listener then wakes the loop once it is
//! back, and the loop looks at the outbox every [`FALLBACK_POLL`] regardless. A batch that
//! failed is retried on a backoff of its own (nothing would notify again).
//!
//! Invariant: a job is deleted in the same transaction that locked it (`FOR UPDATE SKIP
//! LOCKED`, so workers share the outbox), after its Redis writes succeeded. A worker that dies
//! or a Redis that fails midway leaves the job to be done again; applying a job twice is
//! harmless (ZADD and ZREM are idempotent).

use std::sync::Arc;
use std::time::Duration;

use fred::clients::Client;
use haberci_kit::shutdown::Shutdown;
use haberci_wire::{PostId, UserId};
use sqlx::PgPool;
use sqlx::postgres::PgListener;
use tokio::sync::Notify;

use super::feed::{Feed, fanout_targets};

/// The channel the outbox's trigger notifies (migration `20261206000001`).
pub const CHANNEL: &str = "feed_outbox";
/// How often an idle worker looks at the outbox without being told: the safety net for a
/// notification lost while the listening connection was down.
pub const FALLBACK_POLL: Duration = Duration::from_secs(10);
/// Takes up to [`BATCH`] jobs (`$1`), skipping those another worker holds.
pub const OUTBOX_SQL: &str = "SELECT id, post_id, author_id, action FROM feed_outbox
ORDER BY id LIMIT $1 FOR UPDATE SKIP LOCKED";
/// Pause before listening again after the listener failed.
const LISTEN_RETRY: Duration = Duration::from_secs(1);
/// After a failed batch the loop tries again this soon, doubling up to [`RETRY_MAX`].
const RETRY_MIN: Duration = Duration::from_millis(100);
const RETRY_MAX: Duration = Duration::from_secs(5);
/// Jobs taken in one transaction.
pub const BATCH: i64 = 32;

#[derive(Debug, Clone, sqlx::FromRow)]
struct Job {
    id: i64,
    post_id: PostId,
    author_id: UserId,
    action: String,
}

/// Runs until `shutdown`; finishes the batch in hand first.
pub async fn run(db: PgPool, redis: Client, feed: Feed, shutdown: Shutdown) {
    let wake = Arc::new(Notify::new());
    let listener = tokio::spawn(listen(db.clone(), wake.clone()));
    let mut retry = RETRY_MIN;
    loop {
        let done = match once(&db, &redis, &feed).await {
            Ok(done) => {
                retry = RETRY_MIN;
                done
            }
            Err(err) => {
                // The jobs are still there and nobody will be told about them again: retry on
                // a schedule of our own, not at the next notification.
                tracing::warn!(%err, ?retry, "fan-out batch failed; retrying");
                tokio::select! {
                    _ = shutdown.cancelled() => break,
                    _ = tokio::time::sleep(retry) => {}
                }
                retry = (retry * 2).min(RETRY_MAX);
                continue;
            }
        };
        if done > 0 {
            continue;
        }
        // A notification that came while the batch ran left a permit: no wake-up is lost.
        tokio::select! {
            _ = shutdown.cancelled() => break,
            _ = wake.notified() => {}
            _ = tokio::time::sleep(FALLBACK_POLL) => {}
        }
    }
    listener.abort();
}

/// Listens on [`CHANNEL`] on a connection of its own (taken from the pool for good; PgBouncer
/// runs in session mode, so `LISTEN` holds) and wakes the loop once it listens, for each
/// notification, and once whenever the connection was lost (what came meanwhile was not
/// heard). Runs until aborted.
pub async fn listen(db: PgPool, wake: Arc<Notify>) {
    let mut listener: Option<PgListener> = None;
    loop {
        let Some(active) = listener.as_mut() else {
            match listening(&db).await {
                Ok(fresh) => {
                    listener = Some(fresh);
                    // Listening now: whatever was inserted before is looked at.
                    wake.notify_one();
                }
                Err(err) => {
                    tracing::debug!(%err, "fan-out cannot listen yet; the fallback poll covers");
                    tokio::time::sleep(LISTEN_RETRY).await;
                }
            }
            continue;
        };
        match active.try_recv().await {
            Ok(Some(_)) => wake.notify_one(),
            // Lost and reconnected on the next call: look, in case something came meanwhile.
            Ok(None) => wake.notify_one(),
            Err(err) => {
                tracing::debug!(%err, "fan-out listener failed; listening again");
                listener = None;
                tokio::time::sleep(LISTEN_RETRY).await;
            }
        }
    }
}

async fn listening(db: &PgPool) -> Result<PgListener, sqlx::Error> {
    let mut listener = PgListener::connect_with(db).await?;
    listener.listen(CHANNEL).await?;
    Ok(listener)
}

/// Applies one batch of jobs; how many.
pub async fn once(db: &PgPool, redis: &Client, feed: &Feed) -> anyhow::Result<usize> {
    let mut tx = db.begin().await?;
    let jobs = sqlx::query_as::<_, Job>(OUTBOX_SQL)
        .bind(BATCH)
        .fetch_all(&mut *tx)
        .await?;
    if jobs.is_empty() {
        return Ok(0);
    }
    for job in &jobs {
        let Some(targets) = fanout_targets(db, job.author_id, feed.settings).await? else {
            // A large author: read time merges their posts; their own timeline still gets
            // them so their home is complete like everyone's.
            apply(feed, redis, job, &[job.author_id]).await?;
            continue;
        };
        apply(feed, redis, job, &targets).await?;
    }
    let ids: Vec<i64> = jobs.iter().map(|j| j.id).collect();
    sqlx::query("DELETE FROM feed_outbox WHERE id = ANY($1)")
        .bind(&ids)
        .execute(&mut *tx)
        .await?;
    tx.commit().await?;
    Ok(jobs.len())
}

async fn apply(feed: &Feed, redis: &Client, job: &Job, users: &[UserId]) -> anyhow::Result<()> {
    match job.action.as_str() {
        "add" => feed.add(redis, users, job.post_id).await?,
        _ => feed.remove(redis, users, job.post_id).await?,
    }
    Ok(())
}
