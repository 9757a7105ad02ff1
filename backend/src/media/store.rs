//! The media tables' SQL (migrations/20261204000003_media.sql).

use haberci_wire::{MediaId, UserId};
use sqlx::{PgExecutor, PgPool};
use time::OffsetDateTime;
use uuid::Uuid;

use super::process::MediaKind;
use super::storage::ObjectKey;

/// A media row as the API reads it.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct MediaRow {
    pub id: MediaId,
    pub owner_id: UserId,
    pub kind: String,
    pub content_type: String,
    pub size: i64,
    pub sha256: Vec<u8>,
    pub thumb_sha256: Option<Vec<u8>>,
    pub preview_sha256: Option<Vec<u8>>,
    pub width: Option<i32>,
    pub height: Option<i32>,
    pub duration_ms: Option<i64>,
    pub blurhash: Option<String>,
    pub filename: Option<String>,
    pub created_at: OffsetDateTime,
}

impl MediaRow {
    pub fn kind(&self) -> Option<MediaKind> {
        MediaKind::parse(&self.kind)
    }
    pub fn key(&self) -> Option<ObjectKey> {
        ObjectKey::from_slice(&self.sha256)
    }
}

pub const COLUMNS: &str = "m.id, m.owner_id, m.kind, m.content_type, m.size, m.sha256, \
     m.thumb_sha256, m.preview_sha256, m.width, m.height, m.duration_ms, m.blurhash, \
     m.filename, m.created_at";

pub struct NewMedia {
    pub id: MediaId,
    pub owner: UserId,
    pub kind: MediaKind,
    pub content_type: String,
    pub size: u64,
    pub sha256: ObjectKey,
    pub thumb: Option<ObjectKey>,
    pub preview: Option<ObjectKey>,
    pub width: Option<u32>,
    pub height: Option<u32>,
    pub duration_ms: Option<u64>,
    pub blurhash: Option<String>,
    pub filename: Option<String>,
}

/// Bytes `owner` has stored, plus those promised by resumable uploads in progress.
pub async fn used_bytes(db: impl PgExecutor<'_>, owner: UserId) -> sqlx::Result<u64> {
    let used: i64 = sqlx::query_scalar(
        "SELECT (SELECT coalesce(sum(size), 0) FROM media WHERE owner_id = $1)::bigint
              + (SELECT coalesce(sum(length), 0) FROM media_uploads
                 WHERE owner_id = $1 AND media_id IS NULL AND expires_at > now())::bigint",
    )
    .bind(owner)
    .fetch_one(db)
    .await?;
    Ok(u64::try_from(used).unwrap_or(0))
}

/// Marks an object as just used; false when it is not recorded (so not stored).
pub async fn touch_object(db: impl PgExecutor<'_>, key: ObjectKey) -> sqlx::Result<bool> {
    let touched = sqlx::query("UPDATE media_objects SET used_at = now() WHERE sha256 = $1")
        .bind(key.0.as_slice())
        .execute(db)
        .await?;
    Ok(touched.rows_affected() == 1)
}

/// Records an object just written to the store.
pub async fn record_object(db: impl PgExecutor<'_>, key: ObjectKey, size: u64) -> sqlx::Result<()> {
    sqlx::query(
        "INSERT INTO media_objects (sha256, size) VALUES ($1, $2)
         ON CONFLICT (sha256) DO UPDATE SET used_at = now()",
    )
    .bind(key.0.as_slice())
    .bind(i64::try_from(size).unwrap_or(i64::MAX))
    .execute(db)
    .await?;
    Ok(())
}

/// Inserts the row unless it would take the owner past `quota` (then `None`).
pub async fn insert(db: &PgPool, new: &NewMedia, quota: u64) -> sqlx::Result<Option<MediaRow>> {
    let to_i32 = |v: Option<u32>| v.and_then(|v| i32::try_from(v).ok());
    sqlx::query_as::<_, MediaRow>(&format!(
        "INSERT INTO media AS m (id, owner_id, kind, content_type, size, sha256, thumb_sha256,
                                 preview_sha256, width, height, duration_ms, blurhash, filename)
         SELECT $1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13
         WHERE (SELECT coalesce(sum(size), 0) FROM media WHERE owner_id = $2) + $5 <= $14
         RETURNING {COLUMNS}"
    ))
    .bind(new.id)
    .bind(new.owner)
    .bind(new.kind.as_str())
    .bind(&new.content_type)
    .bind(i64::try_from(new.size).unwrap_or(i64::MAX))
    .bind(new.sha256.0.as_slice())
    .bind(new.thumb.map(|k| k.0.to_vec()))
    .bind(new.preview.map(|k| k.0.to_vec()))
    .bind(to_i32(new.width))
    .bind(to_i32(new.height))
    .bind(new.duration_ms.and_then(|v| i64::try_from(v).ok()))
    .bind(&new.blurhash)
    .bind(&new.filename)
    .bind(i64::try_from(quota).unwrap_or(i64::MAX))
    .fetch_optional(db)
    .await
}

/// A media row and whether `viewer` may read it: the owner; anyone for an avatar; a member
/// of a conversation a message carries it in; a viewer of a post (not deleted) it is on.
/// `viewer` `None`: an anonymous request, which may read avatars only.
pub async fn readable(
    db: impl PgExecutor<'_>,
    id: MediaId,
    viewer: Option<UserId>,
) -> sqlx::Result<Option<(MediaRow, bool)>> {
    #[derive(sqlx::FromRow)]
    struct Found {
        #[sqlx(flatten)]
        row: MediaRow,
        allowed: bool,
    }
    let visible = crate::social::store::visible("p", "u");
    let found = sqlx::query_as::<_, Found>(&format!(
        "SELECT {COLUMNS},
                (m.owner_id = $1
                 OR EXISTS (SELECT 1 FROM users a WHERE a.avatar_media_id = m.id)
                 OR EXISTS (SELECT 1 FROM messages g
                            JOIN members mb ON mb.conversation_id = g.conversation_id
                                           AND mb.user_id = $1
                            WHERE g.media_id = m.id)
                 OR EXISTS (SELECT 1 FROM posts p JOIN users u ON u.id = p.author_id
                            WHERE p.media_ids @> ARRAY[m.id] AND cardinality(p.media_ids) > 0
                              AND p.deleted_at IS NULL AND {visible})) AS allowed
         FROM media m WHERE m.id = $2"
    ))
    // Anonymous: the nil UUID, which owns nothing and is no member of anything.
    .bind(viewer.map_or(Uuid::nil(), |v| v.as_uuid()))
    .bind(id)
    .fetch_optional(db)
    .await?;
    Ok(found.map(|f| (f.row, f.allowed)))
}

/// Rows by id (any owner), for attaching to messages and posts.
pub async fn by_ids(db: impl PgExecutor<'_>, ids: &[MediaId]) -> sqlx::Result<Vec<MediaRow>> {
    if ids.is_empty() {
        return Ok(Vec::new());
    }
    sqlx::query_as::<_, MediaRow>(&format!(
        "SELECT {COLUMNS} FROM media m WHERE m.id = ANY($1)"
    ))
    .bind(ids)
    .fetch_all(db)
    .await
}

/// What deleting an upload found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Deleted {
    Gone,
    /// No such media of this owner.
    NotFound,
    /// A message, a post (not deleted) or an avatar uses it.
    InUse,
}

/// Deletes `owner`'s upload `id` unless something uses it. Its objects are left to the
/// collector (another upload may share the bytes).
pub async fn delete_unused(db: &PgPool, owner: UserId, id: MediaId) -> sqlx::Result<Deleted> {
    let (exists, gone): (bool, bool) = sqlx::query_as(
        "WITH target AS (SELECT m.id FROM media m WHERE m.id = $1 AND m.owner_id = $2),
              gone AS (
                  DELETE FROM media m USING target t
                  WHERE m.id = t.id
                    AND NOT EXISTS (SELECT 1 FROM messages g WHERE g.media_id = m.id)
                    AND NOT EXISTS (SELECT 1 FROM posts p
                                    WHERE p.media_ids @> ARRAY[m.id]
                                      AND cardinality(p.media_ids) > 0
                                      AND p.deleted_at IS NULL)
                    AND NOT EXISTS (SELECT 1 FROM users u WHERE u.avatar_media_id = m.id)
                  RETURNING m.id)
         SELECT EXISTS (SELECT 1 FROM target), EXISTS (SELECT 1 FROM gone)",
    )
    .bind(id)
    .bind(owner)
    .fetch_one(db)
    .await?;
    Ok(match (exists, gone) {
        (_, true) => Deleted::Gone,
        (false, _) => Deleted::NotFound,
        (true, false) => Deleted::InUse,
    })
}
