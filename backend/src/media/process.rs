//! The media pipeline: given an upload staged in a local file and the kind the client declared,
//! decide what the bytes are and derive what we store. No HTTP, no database, no object storage:
//! the API streams the upload (enforcing [`Limits::bytes_for`] as it goes), calls [`process`],
//! and stores the [`Processed`] result.
//!
//! - [`sniff`](sniff()) (module `sniff`): magic numbers, executables, accepted containers. Pure.
//! - module `picture`: JPEG/PNG/GIF/WebP: header checks before decoding, EXIF orientation,
//!   lossless metadata stripping, thumbnail, preview, blurhash. Pure, CPU-bound: run in
//!   `spawn_blocking`.
//! - module `av`: audio and video through ffprobe and ffmpeg, as bounded, time-limited
//!   subprocesses (never a shell): stream rules, poster frame, metadata-free remux.
//!
//! Invariant: what we store never carries the uploader's metadata: EXIF (GPS, camera serial),
//! XMP, IPTC, PNG text, container tags (MP4 `location`), chapters, GPS data tracks. Either the
//! upload is stored unchanged because there was none, or [`Processed::replacement`] holds a
//! clean copy.
//!
//! Invariant: every failure a client can cause is a [`MediaError`], never a panic.

mod av;
mod picture;
mod sniff;

use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use tokio::io::AsyncReadExt;
use tokio::sync::Semaphore;

pub use sniff::{Family, OCTET_STREAM, Sniffed, sniff};

/// Image uploads: 20 MB (decimal).
pub const DEFAULT_IMAGE_BYTES: u64 = 20_000_000;
/// Video uploads: 200 MB.
pub const DEFAULT_VIDEO_BYTES: u64 = 200_000_000;
/// Audio uploads: 50 MB.
pub const DEFAULT_AUDIO_BYTES: u64 = 50_000_000;
/// Any other file: 100 MB.
pub const DEFAULT_FILE_BYTES: u64 = 100_000_000;
/// 50 megapixels: above any phone camera, and a 16-bit RGBA decode of it is 400 MB.
pub const DEFAULT_MAX_PIXELS: u64 = 50_000_000;
/// Longest side of an image or video frame.
pub const DEFAULT_MAX_SIDE: u32 = 16_384;
/// Thumbnails fit in 320×320.
pub const DEFAULT_THUMB_SIDE: u32 = 320;
/// Previews fit in 1280×1280.
pub const DEFAULT_PREVIEW_SIDE: u32 = 1280;
/// ffprobe reads headers only: seconds are plenty.
pub const DEFAULT_PROBE_TIMEOUT: Duration = Duration::from_secs(10);
/// A remux copies up to 200 MB without re-encoding; a poster decodes a few frames.
pub const DEFAULT_FFMPEG_TIMEOUT: Duration = Duration::from_secs(60);
/// ffmpeg, unless `HABERCI_FFMPEG` says otherwise.
pub const DEFAULT_FFMPEG: &str = "ffmpeg";
/// ffprobe, unless `HABERCI_FFPROBE` says otherwise.
pub const DEFAULT_FFPROBE: &str = "ffprobe";
/// Media jobs (subprocesses, image decodes) running at once, each.
pub const DEFAULT_CONCURRENCY: usize = 2;
/// How much of the file [`sniff`] sees: enough for every signature `infer` knows that matters
/// here (the MP4 `ftyp` box, Matroska's DocType, ZIP-based office formats' first entry).
const SNIFF_BYTES: u64 = 64 * 1024;

/// What the client says it uploads; decides the size limit, the checks and the derivatives.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum MediaKind {
    Image,
    Video,
    Audio,
    File,
}

impl MediaKind {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Image => "image",
            Self::Video => "video",
            Self::Audio => "audio",
            Self::File => "file",
        }
    }

    /// The inverse of [`MediaKind::as_str`]; `None` for anything else (case-sensitive, like
    /// the serde form).
    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "image" => Some(Self::Image),
            "video" => Some(Self::Video),
            "audio" => Some(Self::Audio),
            "file" => Some(Self::File),
            _ => None,
        }
    }
}

impl fmt::Display for MediaKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Sizes, limits and time budgets. [`Default`] holds the product's values (`DEFAULT_*`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Limits {
    pub image_bytes: u64,
    pub video_bytes: u64,
    pub audio_bytes: u64,
    pub file_bytes: u64,
    /// Width × height above which an image (or video frame) is refused before decoding.
    pub max_pixels: u64,
    /// Width or height above which an image (or video frame) is refused before decoding.
    pub max_side: u32,
    pub thumb_side: u32,
    pub preview_side: u32,
    pub probe_timeout: Duration,
    pub ffmpeg_timeout: Duration,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            image_bytes: DEFAULT_IMAGE_BYTES,
            video_bytes: DEFAULT_VIDEO_BYTES,
            audio_bytes: DEFAULT_AUDIO_BYTES,
            file_bytes: DEFAULT_FILE_BYTES,
            max_pixels: DEFAULT_MAX_PIXELS,
            max_side: DEFAULT_MAX_SIDE,
            thumb_side: DEFAULT_THUMB_SIDE,
            preview_side: DEFAULT_PREVIEW_SIDE,
            probe_timeout: DEFAULT_PROBE_TIMEOUT,
            ffmpeg_timeout: DEFAULT_FFMPEG_TIMEOUT,
        }
    }
}

impl Limits {
    /// The largest upload accepted for `kind`, in bytes.
    pub fn bytes_for(&self, kind: MediaKind) -> u64 {
        match kind {
            MediaKind::Image => self.image_bytes,
            MediaKind::Video => self.video_bytes,
            MediaKind::Audio => self.audio_bytes,
            MediaKind::File => self.file_bytes,
        }
    }
}

/// The external programs and the two semaphores that bound the pipeline's appetite: one for
/// ffmpeg/ffprobe subprocesses, one for in-process image decodes (a 50 Mpx decode holds
/// hundreds of MB). Cheap to clone; clones share the semaphores.
#[derive(Clone, Debug)]
pub struct Tools {
    ffmpeg: PathBuf,
    ffprobe: PathBuf,
    subprocesses: Arc<Semaphore>,
    decodes: Arc<Semaphore>,
}

impl Tools {
    /// `concurrency` bounds subprocesses and, separately, image decodes (0 counts as 1).
    pub fn new(ffmpeg: PathBuf, ffprobe: PathBuf, concurrency: usize) -> Self {
        let concurrency = concurrency.max(1);
        Self {
            ffmpeg,
            ffprobe,
            subprocesses: Arc::new(Semaphore::new(concurrency)),
            decodes: Arc::new(Semaphore::new(concurrency)),
        }
    }

    /// Runs `ffmpeg -version` and `ffprobe -version`: for a readiness check at startup, so a
    /// missing ffmpeg shows before the first video upload.
    pub async fn check(&self) -> Result<(), MediaError> {
        av::check_tool(self, &self.ffmpeg).await?;
        av::check_tool(self, &self.ffprobe).await
    }
}

/// What to store instead of the upload.
pub enum Replacement {
    /// A cleaned or re-oriented image, in the upload's format.
    Bytes(Vec<u8>),
    /// A remuxed audio/video file, in the upload's container, in the upload's directory (same
    /// file system: it can be renamed). The caller owns it and deletes it.
    File(PathBuf),
}

impl fmt::Debug for Replacement {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Bytes(bytes) => write!(f, "Bytes({} bytes)", bytes.len()),
            Self::File(path) => f.debug_tuple("File").field(path).finish(),
        }
    }
}

/// What [`process`] derived from an upload.
pub struct Processed {
    pub kind: MediaKind,
    /// The detected type of what is stored, e.g. `image/jpeg`, `video/mp4`, `audio/webm`.
    pub mime: String,
    /// As displayed: after EXIF orientation (images) or the display matrix (video).
    pub width: Option<u32>,
    pub height: Option<u32>,
    pub duration_ms: Option<u64>,
    /// For images and video posters.
    pub blurhash: Option<String>,
    /// The bytes to store instead of the upload; `None`: store the staged file as it is.
    pub replacement: Option<Replacement>,
    /// JPEG, fits in `thumb_side`×`thumb_side` (images and video posters).
    pub thumb: Option<Vec<u8>>,
    /// JPEG, fits in `preview_side`×`preview_side`, never larger than the original. Images
    /// that already fit get none: the stored original is their preview. Videos always get one
    /// (from the poster frame).
    pub preview: Option<Vec<u8>>,
}

impl fmt::Debug for Processed {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Processed")
            .field("kind", &self.kind)
            .field("mime", &self.mime)
            .field("width", &self.width)
            .field("height", &self.height)
            .field("duration_ms", &self.duration_ms)
            .field("blurhash", &self.blurhash)
            .field("replacement", &self.replacement)
            .field("thumb_bytes", &self.thumb.as_ref().map(Vec::len))
            .field("preview_bytes", &self.preview.as_ref().map(Vec::len))
            .finish()
    }
}

/// Why an upload was refused or could not be processed. Messages are written for the uploader;
/// [`MediaError::code`] is the stable machine form.
#[derive(Debug, thiserror::Error)]
pub enum MediaError {
    /// The bytes are not the kind the client declared (an "image" that is a PDF, a "video"
    /// that is a voice note). Client's fault.
    #[error("the file was sent as {declared} but it is {detected}")]
    TypeMismatch {
        declared: MediaKind,
        detected: String,
    },
    /// A program (ELF, PE, Mach-O, `#!` script): refused for every kind. Client's fault.
    #[error("executable files are not accepted")]
    Executable,
    /// The right kind, in a format we do not handle (HEIC, TIFF, AVI, …). Client's fault.
    #[error("this format is not supported: {detected}")]
    Unsupported { detected: String },
    /// More pixels than we decode (a decompression bomb, or just huge). Client's fault.
    #[error("the picture is {width}×{height} pixels, more than we accept")]
    DimensionsTooLarge { width: u32, height: u32 },
    /// Truncated or garbled: the decoder or ffprobe/ffmpeg gave up. Client's fault.
    #[error("the file is damaged or incomplete: {0}")]
    Corrupt(String),
    /// Over the kind's size limit (the API enforces it while streaming; this is the backstop
    /// for the in-memory image path). Client's fault.
    #[error("the file is larger than the {limit}-byte limit for {kind} uploads")]
    TooLarge { kind: MediaKind, limit: u64 },
    /// ffprobe/ffmpeg ran out of time. Counted as ours: it may be load, not the file.
    #[error("processing the file took too long")]
    Timeout,
    /// A tool is missing or an encoder failed. Ours.
    #[error("media processing failed on the server: {0}")]
    Tool(String),
    /// The staged file could not be read or the copy written. Ours.
    #[error("media storage I/O failed: {0}")]
    Io(#[from] std::io::Error),
}

impl MediaError {
    /// Stable error code for API responses.
    pub fn code(&self) -> &'static str {
        match self {
            Self::TypeMismatch { .. } => "media_type_mismatch",
            Self::Executable => "media_executable",
            Self::Unsupported { .. } => "media_unsupported",
            Self::DimensionsTooLarge { .. } => "media_dimensions_too_large",
            Self::Corrupt(_) => "media_corrupt",
            Self::TooLarge { .. } => "media_too_large",
            Self::Timeout => "media_timeout",
            Self::Tool(_) => "media_tool_failed",
            Self::Io(_) => "media_io",
        }
    }

    /// Whether the upload itself is to blame (a 4xx), rather than the server (a 5xx).
    pub fn is_client_fault(&self) -> bool {
        match self {
            Self::TypeMismatch { .. }
            | Self::Executable
            | Self::Unsupported { .. }
            | Self::DimensionsTooLarge { .. }
            | Self::Corrupt(_)
            | Self::TooLarge { .. } => true,
            Self::Timeout | Self::Tool(_) | Self::Io(_) => false,
        }
    }
}

/// Decides what `path` holds, checks it against `declared` (what the client said it uploads)
/// and derives the rest: see [`Processed`]. `path` is the staged upload; it is only read. A
/// [`Replacement::File`] is created next to it.
pub async fn process(
    path: &Path,
    declared: MediaKind,
    limits: &Limits,
    tools: &Tools,
) -> Result<Processed, MediaError> {
    let size = tokio::fs::metadata(path).await?.len();
    let limit = limits.bytes_for(declared);
    if size > limit {
        return Err(MediaError::TooLarge {
            kind: declared,
            limit,
        });
    }
    let mut head = Vec::new();
    tokio::fs::File::open(path)
        .await?
        .take(SNIFF_BYTES)
        .read_to_end(&mut head)
        .await?;

    match plan(declared, sniff(&head))? {
        Plan::File { mime } => Ok(Processed {
            kind: MediaKind::File,
            mime: mime.to_owned(),
            width: None,
            height: None,
            duration_ms: None,
            blurhash: None,
            replacement: None,
            thumb: None,
            preview: None,
        }),
        Plan::Still { format, mime } => {
            let bytes = tokio::fs::read(path).await?;
            let limits = *limits;
            let still = blocking(tools, move || {
                picture::process_still(&bytes, format, &limits)
            })
            .await?;
            Ok(Processed {
                kind: MediaKind::Image,
                mime: mime.to_owned(),
                width: Some(still.width),
                height: Some(still.height),
                duration_ms: None,
                blurhash: Some(still.derived.blurhash),
                replacement: still.replacement.map(Replacement::Bytes),
                thumb: Some(still.derived.thumb),
                preview: still.derived.preview,
            })
        }
        Plan::Av { container } => av::process_av(path, declared, container, limits, tools).await,
    }
}

/// How an upload will be handled, decided from the declared kind and the first bytes alone.
#[derive(Debug, PartialEq, Eq)]
enum Plan {
    File {
        mime: &'static str,
    },
    Still {
        format: picture::Format,
        mime: &'static str,
    },
    /// Audio or video; ffprobe has the last word.
    Av {
        container: sniff::Container,
    },
}

/// The decision table from declared kind and magic numbers to a [`Plan`] or a refusal.
fn plan(declared: MediaKind, sniffed: Sniffed) -> Result<Plan, MediaError> {
    let mismatch = || MediaError::TypeMismatch {
        declared,
        detected: sniffed.mime.to_owned(),
    };
    let unsupported = || MediaError::Unsupported {
        detected: sniffed.mime.to_owned(),
    };
    match declared {
        MediaKind::File if sniffed.family == Family::Executable => Err(MediaError::Executable),
        MediaKind::File => Ok(Plan::File { mime: sniffed.mime }),
        MediaKind::Image => match picture::Format::from_mime(sniffed.mime) {
            Some(format) => Ok(Plan::Still {
                format,
                mime: sniffed.mime,
            }),
            None if sniffed.family == Family::Image => Err(unsupported()),
            None => Err(mismatch()),
        },
        MediaKind::Video | MediaKind::Audio => match sniff::container(sniffed.mime) {
            Some(container) => {
                let accepted = if declared == MediaKind::Video {
                    container.video_mime
                } else {
                    container.audio_mime
                };
                // A container only ever used for the other kind (MP3 sent as video, QuickTime
                // sent as audio).
                accepted
                    .map(|_| Plan::Av { container })
                    .ok_or_else(mismatch)
            }
            None if matches!(sniffed.family, Family::Video | Family::Audio) => Err(unsupported()),
            None => Err(mismatch()),
        },
    }
}

/// Runs CPU-heavy work on the blocking pool, at most `Tools::concurrency` at once.
async fn blocking<T: Send + 'static>(
    tools: &Tools,
    work: impl FnOnce() -> Result<T, MediaError> + Send + 'static,
) -> Result<T, MediaError> {
    let turn = Arc::clone(&tools.decodes)
        .acquire_owned()
        .await
        .map_err(|_| MediaError::Tool("decode semaphore closed".into()))?;
    tokio::task::spawn_blocking(move || {
        let _turn = turn;
        work()
    })
    .await
    .map_err(|e| {
        // A decoder panic on hostile input is our bug, but the input triggered it: refuse the
        // file, and make sure someone looks.
        tracing::error!(error = %e, "media decode task failed");
        MediaError::Corrupt("the file could not be decoded".into())
    })?
}

/// Collapses whitespace and cuts to at most 200 characters (an ellipsis marks a cut): tool
/// and decoder messages end up in API responses.
fn trim_message(message: &str) -> String {
    const MAX_CHARS: usize = 200;
    let collapsed = message.split_whitespace().collect::<Vec<_>>().join(" ");
    if collapsed.chars().count() <= MAX_CHARS {
        return collapsed;
    }
    let mut cut: String = collapsed.chars().take(MAX_CHARS - 1).collect();
    cut.push('…');
    cut
}

#[cfg(test)]
mod tests;
