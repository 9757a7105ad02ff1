//! Receiving bytes: a request body streamed to a staging file (never whole in memory), its
//! SHA-256 computed on the way, its size held to the kind's limit as it flows; then
//! [`ingest`]: process, store the objects, record the row.

use std::path::{Path, PathBuf};

use bytes::Bytes;
use futures::{Stream, StreamExt};
use haberci_wire::UserId;
use sha2::{Digest, Sha256};
use sqlx::PgPool;
use tokio::io::{AsyncReadExt, AsyncSeekExt, AsyncWriteExt};
use uuid::Uuid;

use super::Media;
use super::process::{self, MediaError, MediaKind, Processed, Replacement};
use super::storage::{ObjectKey, StorageError};
use super::store::{self, MediaRow, NewMedia};

/// Why an upload was not kept.
#[derive(Debug, thiserror::Error)]
pub enum UploadError {
    /// Client: more bytes than the kind allows.
    #[error("a {kind} upload may be at most {limit} bytes")]
    TooLarge { kind: &'static str, limit: u64 },
    /// Client: the account's stored media would pass its quota.
    #[error("your media quota ({quota} bytes) is used up")]
    QuotaExceeded { quota: u64 },
    /// Client: the body ended or broke before the declared length.
    #[error("the upload ended early: {0}")]
    Incomplete(String),
    /// Client (mostly): what the bytes are, or are not (see [`MediaError`]).
    #[error(transparent)]
    Media(#[from] MediaError),
    /// Us: the staging disk.
    #[error("staging: {0}")]
    Staging(#[from] std::io::Error),
    /// Us: the object store.
    #[error(transparent)]
    Storage(#[from] StorageError),
    /// Us: Postgres.
    #[error("database: {0}")]
    Database(#[from] sqlx::Error),
}

/// A file in the staging directory, removed when dropped (a refused or finished upload
/// leaves nothing behind).
#[derive(Debug)]
pub struct StagedFile {
    path: PathBuf,
}

impl StagedFile {
    pub fn new(path: PathBuf) -> StagedFile {
        StagedFile { path }
    }
    pub fn path(&self) -> &Path {
        &self.path
    }
}

impl Drop for StagedFile {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
    }
}

/// Bytes received whole.
#[derive(Debug)]
pub struct Staged {
    pub file: StagedFile,
    pub size: u64,
    pub sha256: [u8; 32],
}

/// Streams `body` into a new file in `dir`, refusing it once it passes `limit` bytes.
pub async fn stage<S, E>(
    dir: &Path,
    body: S,
    kind: MediaKind,
    limit: u64,
) -> Result<Staged, UploadError>
where
    S: Stream<Item = Result<Bytes, E>>,
    E: std::fmt::Display,
{
    let file = StagedFile::new(dir.join(format!("{}.upload", Uuid::new_v4())));
    let mut out = tokio::fs::File::create(file.path()).await?;
    let mut hasher = Sha256::new();
    let mut size: u64 = 0;
    let mut body = std::pin::pin!(body);
    while let Some(chunk) = body.next().await {
        let chunk = chunk.map_err(|err| UploadError::Incomplete(err.to_string()))?;
        size += chunk.len() as u64;
        if size > limit {
            return Err(UploadError::TooLarge {
                kind: kind.as_str(),
                limit,
            });
        }
        hasher.update(&chunk);
        out.write_all(&chunk).await?;
    }
    out.flush().await?;
    Ok(Staged {
        file,
        size,
        sha256: hasher.finalize().into(),
    })
}

/// Appends `body` to a resumable upload's staging file, which holds `received` good bytes
/// (anything after them, from a request that broke mid-write, is cut first); stops at
/// `length`. Returns the bytes now held. A body that breaks keeps what arrived.
pub async fn append<S, E>(
    path: &Path,
    received: u64,
    length: u64,
    body: S,
) -> Result<(u64, Option<String>), UploadError>
where
    S: Stream<Item = Result<Bytes, E>>,
    E: std::fmt::Display,
{
    let mut out = tokio::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(path)
        .await?;
    out.set_len(received).await?;
    out.seek(std::io::SeekFrom::Start(received)).await?;
    let mut held = received;
    let mut body = std::pin::pin!(body);
    let mut broke = None;
    while let Some(chunk) = body.next().await {
        let chunk = match chunk {
            Ok(chunk) => chunk,
            Err(err) => {
                broke = Some(err.to_string());
                break;
            }
        };
        if held + chunk.len() as u64 > length {
            out.flush().await?;
            return Err(UploadError::TooLarge {
                kind: "resumable",
                limit: length,
            });
        }
        out.write_all(&chunk).await?;
        held += chunk.len() as u64;
    }
    out.flush().await?;
    out.sync_data().await?;
    Ok((held, broke))
}

/// The SHA-256 of a file, read in blocks.
pub async fn hash_file(path: &Path) -> std::io::Result<[u8; 32]> {
    let mut file = tokio::fs::File::open(path).await?;
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; 256 * 1024];
    loop {
        let n = file.read(&mut buf).await?;
        if n == 0 {
            return Ok(hasher.finalize().into());
        }
        hasher.update(&buf[..n]);
    }
}

/// What an upload is, as the client said it.
#[derive(Debug, Clone)]
pub struct Declared {
    pub owner: UserId,
    pub kind: MediaKind,
    pub filename: Option<String>,
}

/// Turns received bytes into stored media: checks and processes them, puts the objects in
/// the store (each once: an object already there is only touched), then records the row if
/// the owner's quota allows. On any error nothing new is referenced; objects written before
/// a late refusal are left for the collector.
pub async fn ingest(
    media: &Media,
    db: &PgPool,
    declared: &Declared,
    staged: Staged,
) -> Result<MediaRow, UploadError> {
    let processed: Processed = process::process(
        staged.file.path(),
        declared.kind,
        &media.settings.limits,
        &media.tools,
    )
    .await?;
    // The original as stored: the upload itself, or what processing made of it.
    let replacement_file;
    let (original, size) = match &processed.replacement {
        None => (Source::File(staged.file.path()), staged.size),
        Some(Replacement::Bytes(bytes)) => (Source::Bytes(bytes), bytes.len() as u64),
        Some(Replacement::File(path)) => {
            replacement_file = StagedFile::new(path.clone());
            let size = tokio::fs::metadata(replacement_file.path()).await?.len();
            (Source::File(replacement_file.path()), size)
        }
    };
    let sha256 = match (&processed.replacement, &original) {
        (None, _) => staged.sha256,
        (_, Source::Bytes(bytes)) => Sha256::digest(bytes).into(),
        (_, Source::File(path)) => hash_file(path).await?,
    };
    // The quota is held by the row's insert, atomically with it. (A check here would count
    // a finishing resumable upload twice: as stored and as still in progress.)
    let quota = media.settings.quota_bytes;
    let original_key = ObjectKey(sha256);
    ensure_object(media, db, original_key, size, original).await?;
    let thumb = derivative(media, db, processed.thumb.as_deref()).await?;
    let preview = derivative(media, db, processed.preview.as_deref()).await?;
    let row = store::insert(
        db,
        &NewMedia {
            id: crate::db::new_id(),
            owner: declared.owner,
            kind: processed.kind,
            content_type: processed.mime.clone(),
            size,
            sha256: original_key,
            thumb,
            preview,
            width: processed.width,
            height: processed.height,
            duration_ms: processed.duration_ms,
            blurhash: processed.blurhash.clone(),
            filename: declared.filename.clone(),
        },
        quota,
    )
    .await?;
    row.ok_or(UploadError::QuotaExceeded { quota })
}

enum Source<'a> {
    File(&'a Path),
    Bytes(&'a [u8]),
}

async fn derivative(
    media: &Media,
    db: &PgPool,
    bytes: Option<&[u8]>,
) -> Result<Option<ObjectKey>, UploadError> {
    let Some(bytes) = bytes else {
        return Ok(None);
    };
    let key = ObjectKey(Sha256::digest(bytes).into());
    ensure_object(media, db, key, bytes.len() as u64, Source::Bytes(bytes)).await?;
    Ok(Some(key))
}

/// Makes sure `key` is stored and recorded. Touching the row first means the collector,
/// which deletes only objects untouched for the grace period, cannot take these bytes away
/// between this check and the row that will reference them. A recorded object is still
/// looked for in the store (one HEAD): a store restored from an older backup, or replaced,
/// heals on the next upload of the same bytes instead of serving errors for ever.
async fn ensure_object(
    media: &Media,
    db: &PgPool,
    key: ObjectKey,
    size: u64,
    source: Source<'_>,
) -> Result<(), UploadError> {
    if store::touch_object(db, key).await? && media.storage.exists(key).await? {
        return Ok(());
    }
    match source {
        Source::File(path) => media.storage.put_file(key, path).await?,
        Source::Bytes(bytes) => media.storage.put_bytes(key, bytes.to_vec()).await?,
    }
    store::record_object(db, key, size).await?;
    Ok(())
}

/// Where a resumable upload's bytes so far are kept.
pub fn resumable_path(media: &Media, id: Uuid) -> PathBuf {
    media.settings.staging_dir.join(format!("{id}.tus"))
}
