//! The worker's fan-out loop: takes jobs from `feed_outbox` (written in the transaction that
//! created or deleted a post) and applies them to the Redis timelines ([`super::feed`]).
//!
//! Invariant: a job is deleted in the same transaction that locked it (`FOR UPDATE SKIP
//! LOCKED`, so workers share the outbox), after its Redis writes succeeded. A worker that dies
//! or a Redis that fails midway leaves the job to be done again; applying a job twice is
//! harmless (ZADD and ZREM are idempotent).

use std::time::Duration;

use fred::clients::Client;
use haberci_kit::shutdown::Shutdown;
use haberci_wire::{PostId, UserId};
use sqlx::PgPool;

use super::feed::{Feed, fanout_targets};

/// How often an idle worker looks at the outbox.
pub const DEFAULT_POLL: Duration = Duration::from_millis(50);
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
pub async fn run(db: PgPool, redis: Client, feed: Feed, poll: Duration, shutdown: Shutdown) {
    loop {
        let done = match once(&db, &redis, &feed).await {
            Ok(done) => done,
            Err(err) => {
                tracing::warn!(%err, "fan-out batch failed; retrying");
                0
            }
        };
        if done > 0 {
            continue;
        }
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tokio::time::sleep(poll) => {}
        }
    }
}

/// Applies one batch of jobs; how many.
pub async fn once(db: &PgPool, redis: &Client, feed: &Feed) -> anyhow::Result<usize> {
    let mut tx = db.begin().await?;
    let jobs = sqlx::query_as::<_, Job>(
        "SELECT id, post_id, author_id, action FROM feed_outbox
         ORDER BY id LIMIT $1 FOR UPDATE SKIP LOCKED",
    )
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
