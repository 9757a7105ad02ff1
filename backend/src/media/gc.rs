//! The collector: unfinished resumable uploads past their expiry, media nothing uses (no
//! message, post or avatar) once the grace period has passed, then objects no media row
//! points at and no upload touched within the grace period. Every API process runs it
//! (each row is deleted by one `DELETE … RETURNING`, so concurrent sweeps never collide).
//!
//! Releasing: deleting a post (or a message) leaves its media unreferenced; the next sweep
//! after the grace period since the upload takes it.

use std::time::Duration;

use sqlx::PgPool;
use uuid::Uuid;

use super::Media;
use super::storage::ObjectKey;

/// How often a sweep runs.
pub const INTERVAL: Duration = Duration::from_secs(600);
/// Rows one statement takes at most, so a sweep never holds long locks.
const BATCH: i64 = 1000;

/// What one sweep removed.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Swept {
    pub uploads: u64,
    /// Staging files of plain uploads a crash left behind.
    pub staged: u64,
    pub media: u64,
    pub objects: u64,
}

/// One full sweep.
pub async fn sweep(media: &Media, db: &PgPool) -> anyhow::Result<Swept> {
    let mut swept = Swept::default();
    let grace = i64::try_from(media.settings.gc_grace.as_secs()).unwrap_or(i64::MAX);
    loop {
        let expired: Vec<Uuid> = sqlx::query_scalar(
            "DELETE FROM media_uploads WHERE id IN (
                 SELECT id FROM media_uploads WHERE expires_at < now() LIMIT $1)
             RETURNING id",
        )
        .bind(BATCH)
        .fetch_all(db)
        .await?;
        for id in &expired {
            let _ = tokio::fs::remove_file(super::upload::resumable_path(media, *id)).await;
        }
        swept.uploads += expired.len() as u64;
        if (expired.len() as i64) < BATCH {
            break;
        }
    }
    swept.staged = sweep_staging(media).await;
    loop {
        let gone: Vec<Uuid> = sqlx::query_scalar(
            "DELETE FROM media WHERE id IN (
                 SELECT m.id FROM media m
                 WHERE m.created_at < now() - make_interval(secs => $1)
                   AND NOT EXISTS (SELECT 1 FROM messages g WHERE g.media_id = m.id)
                   AND NOT EXISTS (SELECT 1 FROM posts p
                                   WHERE p.media_ids @> ARRAY[m.id]
                                     AND cardinality(p.media_ids) > 0
                                     AND p.deleted_at IS NULL)
                   AND NOT EXISTS (SELECT 1 FROM users u WHERE u.avatar_media_id = m.id)
                   AND NOT EXISTS (SELECT 1 FROM media_uploads up WHERE up.media_id = m.id
                                   AND up.expires_at > now())
                 LIMIT $2)
             RETURNING id",
        )
        .bind(grace as f64)
        .bind(BATCH)
        .fetch_all(db)
        .await?;
        swept.media += gone.len() as u64;
        if (gone.len() as i64) < BATCH {
            break;
        }
    }
    loop {
        let gone: Vec<Vec<u8>> = sqlx::query_scalar(
            "DELETE FROM media_objects WHERE sha256 IN (
                 SELECT o.sha256 FROM media_objects o
                 WHERE o.used_at < now() - make_interval(secs => $1)
                   AND NOT EXISTS (SELECT 1 FROM media m WHERE m.sha256 = o.sha256)
                   AND NOT EXISTS (SELECT 1 FROM media m WHERE m.thumb_sha256 = o.sha256)
                   AND NOT EXISTS (SELECT 1 FROM media m WHERE m.preview_sha256 = o.sha256)
                 LIMIT $2)
             RETURNING sha256",
        )
        .bind(grace as f64)
        .bind(BATCH)
        .fetch_all(db)
        .await?;
        for key in gone.iter().filter_map(|k| ObjectKey::from_slice(k)) {
            // A failed delete leaves orphaned bytes (no row points at them), never a row
            // without bytes.
            if let Err(err) = media.storage.delete(key).await {
                tracing::warn!(?key, %err, "media object not deleted");
            }
        }
        swept.objects += gone.len() as u64;
        if (gone.len() as i64) < BATCH {
            break;
        }
    }
    Ok(swept)
}

/// Plain uploads stage as `<uuid>.upload` and remove their file when they end; a process
/// that died mid-upload leaves it. Those older than a day go (no upload lasts that long).
async fn sweep_staging(media: &Media) -> u64 {
    let Ok(mut dir) = tokio::fs::read_dir(&media.settings.staging_dir).await else {
        return 0;
    };
    let mut removed = 0;
    while let Ok(Some(entry)) = dir.next_entry().await {
        let stale = entry
            .metadata()
            .await
            .ok()
            .and_then(|m| m.modified().ok())
            .and_then(|t| t.elapsed().ok())
            .is_some_and(|age| age > STALE_STAGING);
        let ours = entry.file_name().to_string_lossy().ends_with(".upload");
        if ours && stale && tokio::fs::remove_file(entry.path()).await.is_ok() {
            removed += 1;
        }
    }
    removed
}

const STALE_STAGING: Duration = Duration::from_secs(24 * 3600);

/// Sweeps every [`INTERVAL`] until the process ends.
pub async fn run(media: Media, db: PgPool) {
    let mut tick = tokio::time::interval(INTERVAL);
    loop {
        tick.tick().await;
        match sweep(&media, &db).await {
            Ok(swept) if swept != Swept::default() => {
                tracing::info!(?swept, "media collected");
            }
            Ok(_) => {}
            Err(err) => tracing::warn!(error = format!("{err:#}"), "media sweep failed"),
        }
    }
}
