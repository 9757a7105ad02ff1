//! Object storage: one interface over the `object_store` crate, with two backends that pass
//! the same tests — a directory on the local filesystem (the embedded default, nothing to
//! install) and any S3-compatible server (what a deployment that outgrows one machine uses).
//!
//! Objects are content-addressed: an object's key is the hex SHA-256 of its bytes
//! ([`ObjectKey`]), so the same bytes are stored once and an object never changes after it is
//! written.

use std::fmt;
use std::ops::Range;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use bytes::Bytes;
use futures::stream::BoxStream;
use futures::{StreamExt, TryStreamExt};
use object_store::aws::AmazonS3Builder;
use object_store::local::LocalFileSystem;
use object_store::path::Path as StorePath;
use object_store::{
    GetOptions, GetRange, GetResultPayload, ObjectStore, ObjectStoreExt, PutPayload, WriteMultipart,
};
use tokio::io::{AsyncReadExt, AsyncSeekExt};
use tokio_util::io::ReaderStream;

/// Where media objects live (`HABERCI_MEDIA_STORE`).
#[derive(Clone, PartialEq, Eq)]
pub enum StoreConfig {
    /// `file:///absolute/dir`: a local directory (created when missing).
    Local(PathBuf),
    /// `s3://bucket`, with the `HABERCI_S3_*` connection settings.
    S3(S3Config),
}

/// An S3-compatible endpoint. `Debug` never prints the secret.
#[derive(Clone, PartialEq, Eq)]
pub struct S3Config {
    pub bucket: String,
    /// `HABERCI_S3_ENDPOINT`, e.g. `http://127.0.0.1:53900`; `None`: AWS itself.
    pub endpoint: Option<String>,
    /// `HABERCI_S3_REGION`.
    pub region: String,
    /// `HABERCI_S3_ACCESS_KEY_ID`, `HABERCI_S3_SECRET_ACCESS_KEY`.
    pub access_key_id: String,
    pub secret_access_key: String,
}

impl fmt::Debug for StoreConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            StoreConfig::Local(dir) => write!(f, "file://{}", dir.display()),
            StoreConfig::S3(s3) => write!(
                f,
                "s3://{} at {} ({})",
                s3.bucket,
                s3.endpoint.as_deref().unwrap_or("AWS"),
                s3.region
            ),
        }
    }
}

impl fmt::Debug for S3Config {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:?}", StoreConfig::S3(self.clone()))
    }
}

/// The SHA-256 of an object's bytes: its name in the store.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct ObjectKey(pub [u8; 32]);

impl ObjectKey {
    pub fn from_slice(bytes: &[u8]) -> Option<ObjectKey> {
        bytes.try_into().ok().map(ObjectKey)
    }
    pub fn hex(&self) -> String {
        hex::encode(self.0)
    }
    /// `objects/ab/abcdef…`: two hex digits of fan-out keep a directory store's folders small.
    fn path(&self) -> StorePath {
        let hex = self.hex();
        StorePath::from(format!("objects/{}/{hex}", &hex[..2]))
    }
}

impl fmt::Debug for ObjectKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.hex())
    }
}

/// What went wrong talking to the store. Always the server's fault.
#[derive(Debug, thiserror::Error)]
pub enum StorageError {
    #[error("object {0:?} is not in the store")]
    NotFound(ObjectKey),
    #[error("object store: {0}")]
    Store(#[from] object_store::Error),
    #[error("reading the staged upload: {0}")]
    Io(#[from] std::io::Error),
}

/// Part size of multipart uploads: above S3's 5 MiB minimum, and the most a put holds in
/// memory at once per part in flight.
const PART_BYTES: usize = 8 * 1024 * 1024;
/// Parts uploaded at once by one put.
const PARTS_IN_FLIGHT: usize = 2;
/// Chunk of a local object read at once. `object_store`'s own stream of a local file reads
/// 8 KiB per blocking task: 128 of them per MiB made range reads cost ~4 ms of CPU per MiB
/// (docs/BENCHMARKS.md, "Media").
const READ_CHUNK: usize = 256 * 1024;

/// A byte range of an object as it streams out of the store.
pub struct ObjectStream {
    /// The object's whole size.
    pub size: u64,
    /// The bytes served (the range asked for, or all of them).
    pub range: Range<u64>,
    pub body: BoxStream<'static, Result<Bytes, StorageError>>,
}

/// The media store. Cheap to clone.
#[derive(Clone)]
pub struct Storage {
    store: Arc<dyn ObjectStore>,
    describe: Arc<str>,
}

impl fmt::Debug for Storage {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.describe)
    }
}

impl Storage {
    pub fn open(config: &StoreConfig) -> Result<Storage, StorageError> {
        let store: Arc<dyn ObjectStore> = match config {
            StoreConfig::Local(dir) => {
                std::fs::create_dir_all(dir)?;
                Arc::new(LocalFileSystem::new_with_prefix(dir)?)
            }
            StoreConfig::S3(s3) => {
                let mut builder = AmazonS3Builder::new()
                    .with_bucket_name(&s3.bucket)
                    .with_region(&s3.region)
                    .with_access_key_id(&s3.access_key_id)
                    .with_secret_access_key(&s3.secret_access_key);
                if let Some(endpoint) = &s3.endpoint {
                    // A self-hosted server: path-style URLs, plain HTTP only when the
                    // endpoint says so (a loopback or private-network server).
                    builder = builder
                        .with_endpoint(endpoint)
                        .with_allow_http(endpoint.starts_with("http://"))
                        .with_virtual_hosted_style_request(false);
                }
                Arc::new(builder.build()?)
            }
        };
        Ok(Storage {
            store,
            describe: format!("{config:?}").into(),
        })
    }

    /// Stores `bytes` under `key`.
    pub async fn put_bytes(&self, key: ObjectKey, bytes: Vec<u8>) -> Result<(), StorageError> {
        self.store.put(&key.path(), PutPayload::from(bytes)).await?;
        Ok(())
    }

    /// Streams the file at `path` into the store under `key`, a part at a time: memory stays
    /// at most [`PART_BYTES`] × ([`PARTS_IN_FLIGHT`] + 1) whatever the file's size.
    pub async fn put_file(&self, key: ObjectKey, path: &Path) -> Result<(), StorageError> {
        let mut file = tokio::fs::File::open(path).await?;
        let size = file.metadata().await?.len();
        if size <= PART_BYTES as u64 {
            let mut bytes = Vec::with_capacity(size as usize);
            file.read_to_end(&mut bytes).await?;
            return self.put_bytes(key, bytes).await;
        }
        let upload = self.store.put_multipart(&key.path()).await?;
        let mut writer = WriteMultipart::new_with_chunk_size(upload, PART_BYTES);
        let mut buf = vec![0u8; 256 * 1024];
        loop {
            let n = match file.read(&mut buf).await {
                Ok(n) => n,
                Err(err) => {
                    let _ = writer.abort().await;
                    return Err(err.into());
                }
            };
            if n == 0 {
                break;
            }
            if let Err(err) = writer.wait_for_capacity(PARTS_IN_FLIGHT).await {
                let _ = writer.abort().await;
                return Err(err.into());
            }
            writer.write(&buf[..n]);
        }
        writer.finish().await?;
        Ok(())
    }

    /// Whether `key` is stored.
    pub async fn exists(&self, key: ObjectKey) -> Result<bool, StorageError> {
        match self.store.head(&key.path()).await {
            Ok(_) => Ok(true),
            Err(object_store::Error::NotFound { .. }) => Ok(false),
            Err(err) => Err(err.into()),
        }
    }

    /// Streams `key`, or the bytes `range` of it (already checked against its size).
    pub async fn get(
        &self,
        key: ObjectKey,
        range: Option<Range<u64>>,
    ) -> Result<ObjectStream, StorageError> {
        let options = GetOptions {
            range: range.map(GetRange::Bounded),
            ..GetOptions::default()
        };
        let result = match self.store.get_opts(&key.path(), options).await {
            Ok(result) => result,
            Err(object_store::Error::NotFound { .. }) => return Err(StorageError::NotFound(key)),
            Err(err) => return Err(err.into()),
        };
        let size = result.meta.size;
        let range = result.range.clone();
        let body = match result.payload {
            GetResultPayload::File(file, _) => {
                let mut file = tokio::fs::File::from_std(file);
                file.seek(std::io::SeekFrom::Start(range.start)).await?;
                let part = file.take(range.end - range.start);
                ReaderStream::with_capacity(part, READ_CHUNK)
                    .map_err(StorageError::from)
                    .boxed()
            }
            GetResultPayload::Stream(stream) => stream.map_err(StorageError::from).boxed(),
        };
        Ok(ObjectStream { size, range, body })
    }

    /// Reads all of `key` (small objects: thumbnails in tests and tools).
    pub async fn read(&self, key: ObjectKey) -> Result<Bytes, StorageError> {
        let stream = self.get(key, None).await?;
        let parts: Vec<Bytes> = stream.body.try_collect().await?;
        Ok(parts.concat().into())
    }

    /// Removes `key`; removing what is not there succeeds.
    pub async fn delete(&self, key: ObjectKey) -> Result<(), StorageError> {
        match self.store.delete(&key.path()).await {
            Ok(()) | Err(object_store::Error::NotFound { .. }) => Ok(()),
            Err(err) => Err(err.into()),
        }
    }
}
