//! The message worker. It waits until Postgres (through PgBouncer) and Redis answer, then runs
//! three loops until shutdown: the message consumer ([`crate::messaging`]: inbound streams →
//! Postgres → pub/sub), the feed fan-out ([`crate::social::fanout`]: outbox → Redis
//! timelines), and the pruning of spent auth rows ([`crate::auth::sessions::prune`])
//! every [`PruneSettings::interval`]. On shutdown the consumer finishes its batch first.

use std::time::Duration;

use fred::prelude::*;
use haberci_kit::shutdown::Shutdown;
use sqlx::PgPool;
use time::OffsetDateTime;

use crate::auth::sessions::{self, PruneCutoffs};
use crate::config::{PruneSettings, WorkerConfig};

/// Pause between two dependency checks while waiting for Postgres and Redis.
pub const DEFAULT_DEPENDENCY_RETRY: Duration = Duration::from_millis(500);

/// Runs until `shutdown` is cancelled.
pub async fn run(config: WorkerConfig, shutdown: Shutdown) -> anyhow::Result<()> {
    // The consumer and the fan-out run key and array lookups, planned once per connection.
    // Pruning deletes by a cutoff time, whose selectivity only a custom plan sees (a generic
    // plan would scan `sessions` instead of its prune indexes): it keeps Postgres's default.
    let db = crate::db::connect_worker_pool(&config.store.database_url, config.store.db_pool_size)?;
    let prune_db = crate::db::connect_pool(&config.store.database_url, 1)?;
    let redis = crate::redis::connect(&config.store.redis_url)?;
    haberci_kit::metrics::serve_if_configured(config.metrics, shutdown.clone())
        .await
        .map_err(|err| anyhow::anyhow!("metrics listener (HABERCI_METRICS_ADDR): {err}"))?;
    // Wait until both dependencies answer, retrying, so "ready" means ready.
    // Invariant: every wait here is inside a `select!` with shutdown, so SIGTERM is honoured
    // while Postgres or Redis is down (each probe is bounded too, but not by shutdown).
    loop {
        let probe = async {
            tokio::join!(
                sqlx::query_scalar::<_, i32>("SELECT 1").fetch_one(&db),
                redis.ping::<String>(None)
            )
        };
        let (pg, rd) = tokio::select! {
            _ = shutdown.cancelled() => return Ok(()),
            results = probe => results,
        };
        match (pg, rd) {
            (Ok(_), Ok(_)) => break,
            (pg, rd) => {
                tracing::warn!(postgres = ?pg.err(), redis = ?rd.err(), "worker waiting for dependencies");
            }
        }
        tokio::select! {
            _ = shutdown.cancelled() => return Ok(()),
            _ = tokio::time::sleep(DEFAULT_DEPENDENCY_RETRY) => {}
        }
    }
    tracing::info!("worker ready");
    let consumer = tokio::spawn({
        let (db, url, settings, shutdown) = (
            db.clone(),
            config.store.redis_url.clone(),
            config.messaging.clone(),
            shutdown.clone(),
        );
        async move { crate::messaging::run(db, &url, settings, shutdown).await }
    });
    let fanout = tokio::spawn(crate::social::fanout::run(
        db.clone(),
        redis.clone(),
        crate::social::feed::Feed::new(config.feed),
        shutdown.clone(),
    ));
    let mut prune_tick = tokio::time::interval(config.prune.interval);
    prune_tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => break,
            _ = prune_tick.tick() => {
                // A pass finishes its current batch even when shutdown arrives meanwhile: each
                // batch is one short DELETE.
                prune_once(&prune_db, &config.prune).await;
            }
        }
    }
    tracing::info!("worker stopping");
    if let Err(err) = fanout.await {
        tracing::error!(%err, "fan-out loop failed");
    }
    match consumer.await {
        Ok(Ok(())) => {}
        Ok(Err(err)) => tracing::error!(%err, "message consumer could not start"),
        Err(err) => tracing::error!(%err, "message consumer failed"),
    }
    db.close().await;
    prune_db.close().await;
    let _ = redis.quit().await;
    Ok(())
}

async fn prune_once(db: &PgPool, settings: &PruneSettings) {
    let cutoffs = PruneCutoffs::at(
        OffsetDateTime::now_utc(),
        settings.token_grace,
        settings.session_retention,
    );
    match sessions::prune(db, cutoffs, sessions::DEFAULT_PRUNE_BATCH).await {
        Ok(pruned) if pruned.is_empty() => tracing::debug!("prune: nothing to delete"),
        Ok(pruned) => tracing::info!(
            refresh_tokens = pruned.refresh_tokens,
            sessions = pruned.sessions,
            "pruned spent refresh tokens and ended sessions"
        ),
        Err(err) => tracing::warn!(%err, "prune failed; retrying next interval"),
    }
}
