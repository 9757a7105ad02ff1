//! Media: uploads streamed to a staging file ([`upload`]), checked and processed
//! ([`process`]), stored content-addressed in object storage ([`storage`]), recorded in
//! Postgres ([`store`]), read back by owners, conversation members, post viewers, or anyone
//! holding a short-lived signed link ([`links`]), and collected once nothing uses them
//! ([`gc`]).
//!
//! Invariant: a `media` row exists only for bytes that were fully received, passed
//! [`process::process`], and are in the store; a refused upload leaves nothing behind.

pub mod gc;
pub mod links;
pub mod process;
pub mod storage;
pub mod store;
pub mod upload;

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use haberci_kit::config::Env;

pub use process::{Limits, MediaKind};
pub use storage::{S3Config, Storage, StoreConfig};

pub const DEFAULT_URL_TTL_SECS: u64 = 15 * 60;
pub const DEFAULT_QUOTA_BYTES: u64 = 2 * 1024 * 1024 * 1024;
pub const DEFAULT_GC_GRACE_SECS: u64 = 24 * 3600;
pub const DEFAULT_UPLOAD_TTL_SECS: u64 = 24 * 3600;

/// The media settings, read by the API and the worker (which collects).
#[derive(Debug, Clone)]
pub struct MediaSettings {
    /// `HABERCI_MEDIA_STORE`: `file:///dir` (default `/var/lib/haberci/media`) or
    /// `s3://bucket` with `HABERCI_S3_ENDPOINT`, `_REGION`, `_ACCESS_KEY_ID`,
    /// `_SECRET_ACCESS_KEY`.
    pub store: StoreConfig,
    /// `HABERCI_MEDIA_STAGING_DIR`: uploads in progress, on this machine's disk. Resumable
    /// uploads continue only on an API process that sees the same directory.
    pub staging_dir: PathBuf,
    /// `HABERCI_MEDIA_URL_KEY`: the secret signed links are made with (hex, ≥ 32 bytes);
    /// every API process must share it. Unset: a random key per process (links break on
    /// restart and across processes; fine for tests only).
    pub url_key: links::UrlKey,
    /// `HABERCI_MEDIA_URL_TTL_SECS`: how long a signed link works.
    pub url_ttl: Duration,
    /// `HABERCI_MEDIA_QUOTA_BYTES`: what one account may have stored (and in progress).
    pub quota_bytes: u64,
    /// `HABERCI_MEDIA_GC_GRACE_SECS`: how long an upload nothing uses is kept (to be
    /// attached to a message or post), and how long released media lingers.
    pub gc_grace: Duration,
    /// `HABERCI_MEDIA_UPLOAD_TTL_SECS`: how long an unfinished resumable upload can resume.
    pub upload_ttl: Duration,
    /// `HABERCI_FFMPEG`, `HABERCI_FFPROBE`: the programs video and audio go through.
    pub ffmpeg: PathBuf,
    pub ffprobe: PathBuf,
    pub limits: Limits,
}

impl Default for MediaSettings {
    /// For tests: stores under the system's temporary directory.
    fn default() -> Self {
        let base = std::env::temp_dir().join("haberci-media");
        MediaSettings {
            store: StoreConfig::Local(base.join("objects")),
            staging_dir: base.join("staging"),
            url_key: links::UrlKey::random(),
            url_ttl: Duration::from_secs(DEFAULT_URL_TTL_SECS),
            quota_bytes: DEFAULT_QUOTA_BYTES,
            gc_grace: Duration::from_secs(DEFAULT_GC_GRACE_SECS),
            upload_ttl: Duration::from_secs(DEFAULT_UPLOAD_TTL_SECS),
            ffmpeg: PathBuf::from("ffmpeg"),
            ffprobe: PathBuf::from("ffprobe"),
            limits: Limits::default(),
        }
    }
}

impl MediaSettings {
    pub fn read(env: &mut Env<'_>) -> Self {
        let d = MediaSettings::default();
        let store_text = env.string_or("HABERCI_MEDIA_STORE", "file:///var/lib/haberci/media");
        let store = match parse_store(&store_text, env) {
            Ok(store) => store,
            Err(why) => {
                env.problem(format!("HABERCI_MEDIA_STORE {store_text:?}: {why}"));
                d.store.clone()
            }
        };
        let staging_dir = PathBuf::from(env.string_or(
            "HABERCI_MEDIA_STAGING_DIR",
            "/var/lib/haberci/media-staging",
        ));
        let url_key = match env.raw("HABERCI_MEDIA_URL_KEY") {
            Some(text) => links::UrlKey::from_hex(&text).unwrap_or_else(|why| {
                env.problem(format!("HABERCI_MEDIA_URL_KEY: {why}"));
                links::UrlKey::random()
            }),
            None => {
                tracing::warn!(
                    "HABERCI_MEDIA_URL_KEY is unset: signed media links are made with a random \
                     key and stop working when this process restarts or on other API processes"
                );
                links::UrlKey::random()
            }
        };
        let secs = |env: &mut Env<'_>, key: &str, default: Duration| {
            Duration::from_secs(env.parse_or(key, default.as_secs()))
        };
        let url_ttl = secs(env, "HABERCI_MEDIA_URL_TTL_SECS", d.url_ttl);
        if url_ttl.is_zero() {
            env.problem("HABERCI_MEDIA_URL_TTL_SECS must be at least 1");
        }
        MediaSettings {
            store,
            staging_dir,
            url_key,
            url_ttl,
            quota_bytes: env.parse_or("HABERCI_MEDIA_QUOTA_BYTES", d.quota_bytes),
            gc_grace: secs(env, "HABERCI_MEDIA_GC_GRACE_SECS", d.gc_grace),
            upload_ttl: secs(env, "HABERCI_MEDIA_UPLOAD_TTL_SECS", d.upload_ttl),
            ffmpeg: PathBuf::from(env.string_or("HABERCI_FFMPEG", "ffmpeg")),
            ffprobe: PathBuf::from(env.string_or("HABERCI_FFPROBE", "ffprobe")),
            limits: d.limits,
        }
    }
}

/// `file:///dir` or `s3://bucket` (+ the `HABERCI_S3_*` variables).
fn parse_store(text: &str, env: &mut Env<'_>) -> Result<StoreConfig, String> {
    if let Some(dir) = text.strip_prefix("file://") {
        if !dir.starts_with('/') {
            return Err("a file:// store needs an absolute path (file:///dir)".into());
        }
        return Ok(StoreConfig::Local(PathBuf::from(dir)));
    }
    if let Some(bucket) = text.strip_prefix("s3://") {
        if bucket.is_empty() || bucket.contains('/') {
            return Err("an s3:// store names one bucket (s3://bucket)".into());
        }
        let access_key_id = env.required("HABERCI_S3_ACCESS_KEY_ID", "the S3 access key id");
        let secret_access_key =
            env.required("HABERCI_S3_SECRET_ACCESS_KEY", "the S3 secret access key");
        return Ok(StoreConfig::S3(S3Config {
            bucket: bucket.to_owned(),
            endpoint: env.raw("HABERCI_S3_ENDPOINT"),
            region: env.string_or("HABERCI_S3_REGION", "us-east-1"),
            access_key_id,
            secret_access_key,
        }));
    }
    Err("expected file:///dir or s3://bucket".into())
}

/// What the API and the collector share: the settings, the store, and the tools.
#[derive(Clone)]
pub struct Media {
    pub settings: Arc<MediaSettings>,
    pub storage: Storage,
    pub tools: Arc<process::Tools>,
}

impl std::fmt::Debug for Media {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Media({:?})", self.storage)
    }
}

/// Subprocesses (ffprobe, ffmpeg) one API process runs at once.
const TOOL_CONCURRENCY: usize = 2;

impl Media {
    pub fn open(settings: MediaSettings) -> Result<Media, storage::StorageError> {
        let storage = Storage::open(&settings.store)?;
        std::fs::create_dir_all(&settings.staging_dir)?;
        let tools = process::Tools::new(
            settings.ffmpeg.clone(),
            settings.ffprobe.clone(),
            TOOL_CONCURRENCY,
        );
        Ok(Media {
            settings: Arc::new(settings),
            storage,
            tools: Arc::new(tools),
        })
    }
}
