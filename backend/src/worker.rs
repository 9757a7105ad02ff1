//! The message worker. #6 makes it consume `msg:in:{shard}` streams; today it connects to
//! Postgres (through PgBouncer) and Redis, says it is ready, and waits for shutdown.

use std::time::Duration;

use fred::prelude::*;
use haberci_kit::shutdown::Shutdown;

use crate::config::WorkerConfig;

/// Runs until `shutdown` is cancelled.
pub async fn run(config: WorkerConfig, shutdown: Shutdown) -> anyhow::Result<()> {
    let db = crate::db::connect_pool(&config.store.database_url, 2)?;
    let redis = crate::redis::connect(&config.store.redis_url)?;
    // Wait until both dependencies answer, retrying, so "ready" means ready.
    loop {
        let pg = sqlx::query_scalar::<_, i32>("SELECT 1")
            .fetch_one(&db)
            .await;
        let rd = redis.ping::<String>(None).await;
        match (pg, rd) {
            (Ok(_), Ok(_)) => break,
            (pg, rd) => {
                tracing::warn!(postgres = ?pg.err(), redis = ?rd.err(), "worker waiting for dependencies");
            }
        }
        tokio::select! {
            _ = shutdown.cancelled() => return Ok(()),
            _ = tokio::time::sleep(Duration::from_millis(500)) => {}
        }
    }
    tracing::info!("worker ready");
    shutdown.cancelled().await;
    tracing::info!("worker stopping");
    db.close().await;
    let _ = redis.quit().await;
    Ok(())
}
