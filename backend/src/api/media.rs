//! Media over HTTP: uploads (`POST /v1/media`, and resumable tus 1.0 uploads under
//! `/v1/media/uploads`), what an upload is (`GET /v1/media/{id}/info`, with signed links),
//! and its bytes (`GET /v1/media/{id}`, `/thumb`, `/preview`, with ranges and ETags).
//!
//! API boundary: media the caller may not read answers 404 exactly like media that never
//! existed; a refused upload (too large, wrong type, corrupt, over quota) keeps nothing.

use axum::body::Body;
use axum::extract::{Request, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use haberci_wire::MediaId;
use serde::Serialize;
use time::OffsetDateTime;
use utoipa::ToSchema;

use super::extract::{ApiPath, ApiQuery, Authenticated, MaybeAuthenticated};
use super::{ApiError, AppState};
use crate::media::links::{Check, Variant};
use crate::media::process::MediaError;
use crate::media::store::{self, MediaRow};
use crate::media::upload::{self, Declared, UploadError};
use crate::media::{Media, MediaKind};

// ---------------------------------------------------------------- schemas

/// An upload as its readers see it. The links work without an `Authorization` header until
/// `linksExpireAt`; fetch `GET /v1/media/{id}/info` again for fresh ones.
#[derive(Debug, Clone, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct MediaView {
    #[schema(value_type = String, format = Uuid)]
    pub id: MediaId,
    /// `image`, `video`, `audio` or `file`.
    pub kind: String,
    /// What the bytes are (decided from the bytes, not from the uploader's header).
    pub content_type: String,
    pub size: i64,
    /// Hex SHA-256 of the stored bytes (also the `ETag`).
    pub sha256: String,
    /// Images and video, after EXIF orientation.
    pub width: Option<i32>,
    pub height: Option<i32>,
    /// Video and audio.
    pub duration_ms: Option<i64>,
    /// A placeholder to paint while the thumbnail loads (<https://blurha.sh>).
    pub blurhash: Option<String>,
    /// As uploaded (files).
    pub filename: Option<String>,
    #[serde(with = "time::serde::rfc3339")]
    #[schema(value_type = String, format = DateTime)]
    pub created_at: OffsetDateTime,
    /// Signed link to the bytes.
    pub url: String,
    /// Signed link to a JPEG at most 320 px on a side (images and video).
    pub thumb_url: Option<String>,
    /// Signed link to a JPEG at most 1280 px on a side (images and video larger than that).
    pub preview_url: Option<String>,
    #[serde(with = "time::serde::rfc3339")]
    #[schema(value_type = String, format = DateTime)]
    pub links_expire_at: OffsetDateTime,
}

impl MediaView {
    /// The view of `row` with links signed now.
    pub fn new(media: &Media, row: MediaRow) -> MediaView {
        let now = OffsetDateTime::now_utc();
        let expires = now + media.settings.url_ttl;
        let exp = expires.unix_timestamp();
        let key = &media.settings.url_key;
        MediaView {
            id: row.id,
            url: key.sign(row.id, Variant::Original, exp),
            thumb_url: row
                .thumb_sha256
                .is_some()
                .then(|| key.sign(row.id, Variant::Thumb, exp)),
            preview_url: row
                .preview_sha256
                .is_some()
                .then(|| key.sign(row.id, Variant::Preview, exp)),
            links_expire_at: expires,
            kind: row.kind,
            content_type: row.content_type,
            size: row.size,
            sha256: hex::encode(&row.sha256),
            width: row.width,
            height: row.height,
            duration_ms: row.duration_ms,
            blurhash: row.blurhash,
            filename: row.filename,
            created_at: row.created_at,
        }
    }
}

// ---------------------------------------------------------------- errors

pub(super) fn refused(
    status: StatusCode,
    code: &'static str,
    message: impl Into<String>,
) -> ApiError {
    ApiError::Refused {
        status,
        code,
        message: message.into(),
    }
}

impl From<UploadError> for ApiError {
    fn from(err: UploadError) -> ApiError {
        match err {
            UploadError::TooLarge { .. } => refused(
                StatusCode::PAYLOAD_TOO_LARGE,
                "media_too_large",
                err.to_string(),
            ),
            UploadError::QuotaExceeded { .. } => refused(
                StatusCode::PAYLOAD_TOO_LARGE,
                "media_quota_exceeded",
                err.to_string(),
            ),
            UploadError::Incomplete(_) => refused(
                StatusCode::BAD_REQUEST,
                "upload_incomplete",
                err.to_string(),
            ),
            UploadError::Media(media) => media.into(),
            UploadError::Staging(err) => ApiError::Internal(err.into()),
            UploadError::Storage(err) => {
                tracing::error!(%err, "media store failed");
                ApiError::Unavailable("media storage")
            }
            UploadError::Database(err) => err.into(),
        }
    }
}

impl From<MediaError> for ApiError {
    fn from(err: MediaError) -> ApiError {
        if !err.is_client_fault() {
            tracing::error!(%err, "media processing failed");
            return ApiError::Unavailable("media processing");
        }
        let status = match err {
            MediaError::Unsupported { .. } => StatusCode::UNSUPPORTED_MEDIA_TYPE,
            MediaError::TooLarge { .. } => StatusCode::PAYLOAD_TOO_LARGE,
            _ => StatusCode::UNPROCESSABLE_ENTITY,
        };
        refused(status, err.code(), err.to_string())
    }
}

// ---------------------------------------------------------------- upload

/// The kind an upload declares: `kind` when given (`?kind=`, tus metadata), else the family
/// of its MIME type (`image/*` → image, …, anything else → file).
pub(super) fn declared_kind(kind: Option<&str>, mime: Option<&str>) -> Result<MediaKind, ApiError> {
    if let Some(kind) = kind {
        return MediaKind::parse(kind)
            .ok_or_else(|| ApiError::invalid("kind", "kind must be image, video, audio or file"));
    }
    let family = mime.and_then(|m| m.split('/').next()).map(str::trim);
    Ok(match family {
        Some(f) if f.eq_ignore_ascii_case("image") => MediaKind::Image,
        Some(f) if f.eq_ignore_ascii_case("video") => MediaKind::Video,
        Some(f) if f.eq_ignore_ascii_case("audio") => MediaKind::Audio,
        _ => MediaKind::File,
    })
}

/// A file name safe to keep and to echo in `Content-Disposition`: no path, no control
/// characters, no quotes, no bidirectional controls or invisible characters (U+202E would
/// show "fdp.exe" as "exe.pdf"), at most 255 bytes (cut on a character boundary).
pub fn clean_filename(name: &str) -> Option<String> {
    let base = name.rsplit(['/', '\\']).next().unwrap_or("");
    let base = crate::accounts::names::replace_deceptive(base, '_');
    let mut clean = String::new();
    for c in base.chars() {
        let c = if c.is_control() || c == '"' { '_' } else { c };
        if clean.len() + c.len_utf8() > 255 {
            break;
        }
        clean.push(c);
    }
    let clean = clean.trim().to_owned();
    (!clean.is_empty() && clean != "." && clean != "..").then_some(clean)
}

/// A header holding a whole number of bytes (`Content-Length`, `Upload-Length`, …).
pub(super) fn header_u64(headers: &HeaderMap, name: &str) -> Result<Option<u64>, ApiError> {
    match headers.get(name) {
        None => Ok(None),
        Some(value) => value
            .to_str()
            .ok()
            .filter(|v| !v.is_empty() && v.bytes().all(|b| b.is_ascii_digit()))
            .and_then(|v| v.parse().ok())
            .map(Some)
            .ok_or_else(|| ApiError::invalid(name, format!("{name} must be a whole number"))),
    }
}

/// Upload media: the body is the file's bytes, streamed to storage as it arrives.
///
/// The kind comes from `?kind=` (or the `Content-Type` family) and must agree with the bytes;
/// executables are refused for every kind. Images lose their metadata (EXIF, GPS) and are
/// turned upright; video and audio lose their metadata too. Limits: image 20 MB, video 200 MB,
/// audio 50 MB, file 100 MB; an account's stored media count against its quota.
#[utoipa::path(
    post,
    path = "/v1/media",
    tag = "media",
    params(
        ("kind" = Option<String>, Query, description = "`image`, `video`, `audio` or `file`. Absent: from the `Content-Type` header's type (`image/*` → image, …, anything else → file). The bytes must agree."),
        ("filename" = Option<String>, Query, description = "Kept with the file (at most 255 bytes; path separators, control, bidirectional and invisible characters are dropped or replaced)"),
    ),
    request_body(content = Vec<u8>, content_type = "application/octet-stream",
                 description = "The file's bytes"),
    responses(
        (status = 201, description = "Stored", body = MediaView),
        (status = 400, description = "The body ended early", body = super::ErrorBody),
        (status = 401, description = "No or invalid access token", body = super::ErrorBody),
        (status = 413, description = "Over the kind's limit (`media_too_large`) or the quota (`media_quota_exceeded`)", body = super::ErrorBody),
        (status = 415, description = "An image format that cannot be read (`media_unsupported`)", body = super::ErrorBody),
        (status = 422, description = "Bytes that are not what the kind says (`media_type_mismatch`), an executable (`media_executable`), too many pixels (`media_dimensions_too_large`), a corrupt file (`media_corrupt`), or an invalid `kind`", body = super::ErrorBody),
    ),
    security(("bearer" = []))
)]
pub async fn upload(
    State(state): State<AppState>,
    me: Authenticated,
    query: ApiQuery,
    request: Request,
) -> Result<Response, ApiError> {
    let media = &state.media;
    let content_type = request
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok());
    let kind = declared_kind(query.0.get("kind").map(String::as_str), content_type)?;
    let limit = media.settings.limits.bytes_for(kind);
    let declared_size = header_u64(request.headers(), "content-length")?;
    if declared_size.is_some_and(|n| n > limit) {
        return Err(UploadError::TooLarge {
            kind: kind.as_str(),
            limit,
        }
        .into());
    }
    // Refused before a byte is read when the declared size cannot fit; the insert holds the
    // quota in any case.
    let quota = media.settings.quota_bytes;
    if let Some(size) = declared_size {
        if store::used_bytes(&state.db, me.user).await? + size > quota {
            return Err(UploadError::QuotaExceeded { quota }.into());
        }
    }
    let declared = Declared {
        owner: me.user,
        kind,
        filename: query.0.get("filename").and_then(|f| clean_filename(f)),
    };
    let body = request.into_body().into_data_stream();
    let staged = upload::stage(&media.settings.staging_dir, body, kind, limit).await?;
    let row = upload::ingest(media, &state.db, &declared, staged).await?;
    Ok((StatusCode::CREATED, axum::Json(MediaView::new(media, row))).into_response())
}

// ---------------------------------------------------------------- read

/// What an upload is, with fresh signed links.
#[utoipa::path(
    get,
    path = "/v1/media/{id}/info",
    tag = "media",
    params(("id" = String, Path, format = Uuid, description = "Media id")),
    responses(
        (status = 200, description = "The media", body = MediaView),
        (status = 401, description = "No or invalid access token", body = super::ErrorBody),
        (status = 404, description = "No such media, or not readable by you", body = super::ErrorBody),
        (status = 422, description = "Invalid id", body = super::ErrorBody),
    ),
    security(("bearer" = []))
)]
pub async fn info(
    State(state): State<AppState>,
    me: Authenticated,
    ApiPath(id): ApiPath<MediaId>,
) -> Result<axum::Json<MediaView>, ApiError> {
    match store::readable(&state.db, id, Some(me.user)).await? {
        Some((row, true)) => Ok(axum::Json(MediaView::new(&state.media, row))),
        _ => Err(ApiError::NotFound),
    }
}

/// Delete an upload of mine that nothing uses (no message, post or avatar); its quota is
/// freed at once, its bytes are collected later.
#[utoipa::path(
    delete,
    path = "/v1/media/{id}",
    tag = "media",
    params(("id" = String, Path, format = Uuid, description = "Media id")),
    responses(
        (status = 204, description = "Deleted"),
        (status = 401, description = "No or invalid access token", body = super::ErrorBody),
        (status = 404, description = "No such upload of mine", body = super::ErrorBody),
        (status = 409, description = "`media_in_use`: a message, post or avatar uses it", body = super::ErrorBody),
    ),
    security(("bearer" = []))
)]
pub async fn delete(
    State(state): State<AppState>,
    me: Authenticated,
    ApiPath(id): ApiPath<MediaId>,
) -> Result<StatusCode, ApiError> {
    match store::delete_unused(&state.db, me.user, id).await? {
        store::Deleted::Gone => Ok(StatusCode::NO_CONTENT),
        store::Deleted::NotFound => Err(ApiError::NotFound),
        store::Deleted::InUse => Err(refused(
            StatusCode::CONFLICT,
            "media_in_use",
            "a message, post or avatar uses this media",
        )),
    }
}

macro_rules! download_route {
    ($name:ident, $path:literal, $variant:expr, $what:literal) => {
        #[doc = concat!("The ", $what, " bytes. Authorized by a signed link (`exp`, `sig`) or an access token; an avatar needs neither. Supports `Range` (one range), `If-Range` and `If-None-Match`; the bytes never change, so they may be cached for a year.")]
        #[utoipa::path(
            get,
            path = $path,
            tag = "media",
            params(
                ("id" = String, Path, format = Uuid, description = "Media id"),
                ("exp" = Option<i64>, Query, description = "Signed link: expiry, Unix seconds"),
                ("sig" = Option<String>, Query, description = "Signed link: signature"),
            ),
            responses(
                (status = 200, description = "The bytes", content_type = "application/octet-stream"),
                (status = 206, description = "The range asked for", content_type = "application/octet-stream"),
                (status = 304, description = "Not modified (`If-None-Match`)"),
                (status = 401, description = "Neither a link nor a token, and not an avatar", body = super::ErrorBody),
                (status = 403, description = "An expired (`link_expired`) or forged (`invalid_link`) link", body = super::ErrorBody),
                (status = 404, description = "No such media (or variant), or not readable by you", body = super::ErrorBody),
                (status = 416, description = "A range outside the bytes", body = super::ErrorBody),
                (status = 422, description = "Invalid id or link parameters", body = super::ErrorBody),
            ),
            security((), ("bearer" = []))
        )]
        pub async fn $name(
            State(state): State<AppState>,
            me: MaybeAuthenticated,
            ApiPath(id): ApiPath<MediaId>,
            query: ApiQuery,
            headers: HeaderMap,
        ) -> Result<Response, ApiError> {
            download(&state, me, id, $variant, &query, &headers).await
        }
    };
}

download_route!(original, "/v1/media/{id}", Variant::Original, "uploaded");
download_route!(
    thumb,
    "/v1/media/{id}/thumb",
    Variant::Thumb,
    "thumbnail's (JPEG, ≤ 320 px)"
);
download_route!(
    preview,
    "/v1/media/{id}/preview",
    Variant::Preview,
    "preview's (JPEG, ≤ 1280 px)"
);

async fn download(
    state: &AppState,
    me: MaybeAuthenticated,
    id: MediaId,
    variant: Variant,
    query: &ApiQuery,
    headers: &HeaderMap,
) -> Result<Response, ApiError> {
    let media = &state.media;
    let exp = query.0.get("exp");
    let sig = query.0.get("sig");
    let by_link = match (exp, sig) {
        (Some(exp), Some(sig)) => {
            let exp: i64 = exp
                .parse()
                .map_err(|_| ApiError::invalid("exp", "exp must be Unix seconds"))?;
            let now = OffsetDateTime::now_utc().unix_timestamp();
            match media.settings.url_key.verify(id, variant, exp, sig, now) {
                Check::Valid => true,
                Check::Expired => {
                    return Err(refused(
                        StatusCode::FORBIDDEN,
                        "link_expired",
                        "this media link has expired; ask for a new one",
                    ));
                }
                Check::Forged => {
                    return Err(refused(
                        StatusCode::FORBIDDEN,
                        "invalid_link",
                        "this media link is not valid",
                    ));
                }
            }
        }
        (None, None) => false,
        _ => {
            return Err(ApiError::invalid(
                "sig",
                "a signed link needs both exp and sig",
            ));
        }
    };
    let viewer = me.0.map(|a| a.user);
    let Some((row, allowed)) = store::readable(&state.db, id, viewer).await? else {
        return Err(ApiError::NotFound);
    };
    if !(by_link || allowed) {
        return Err(if viewer.is_none() {
            ApiError::Unauthenticated
        } else {
            ApiError::NotFound
        });
    }
    let key = match variant {
        Variant::Original => Some(row.sha256.as_slice()),
        Variant::Thumb => row.thumb_sha256.as_deref(),
        Variant::Preview => row.preview_sha256.as_deref(),
    }
    .and_then(crate::media::storage::ObjectKey::from_slice)
    .ok_or(ApiError::NotFound)?;
    let etag = format!("\"{}\"", key.hex());
    let size = match variant {
        Variant::Original => u64::try_from(row.size).unwrap_or(0),
        _ => 0, // derivatives: the store says
    };
    if let Some(tags) = headers
        .get(header::IF_NONE_MATCH)
        .and_then(|v| v.to_str().ok())
    {
        if tags.split(',').any(|t| t.trim() == etag || t.trim() == "*") {
            let mut response = StatusCode::NOT_MODIFIED.into_response();
            set_cache_headers(response.headers_mut(), &etag);
            return Ok(response);
        }
    }
    let if_range_ok = headers
        .get(header::IF_RANGE)
        .and_then(|v| v.to_str().ok())
        .is_none_or(|v| v.trim() == etag);
    let range_header = headers
        .get(header::RANGE)
        .and_then(|v| v.to_str().ok())
        .filter(|_| if_range_ok);
    // The size of a derivative is known only to the store: ask it for the whole object
    // when a range must be checked against it.
    let total = if size == 0 && range_header.is_some() {
        media
            .storage
            .get(key, None)
            .await
            .map_err(storage_error)?
            .size
    } else {
        size
    };
    let range = match range_header.map(|h| parse_range(h, total)) {
        None | Some(RangeAsk::Whole) => None,
        Some(RangeAsk::Part(range)) => Some(range),
        Some(RangeAsk::Unsatisfiable) => {
            return Err(ApiError::RangeNotSatisfiable { size: total });
        }
    };
    let object = media
        .storage
        .get(key, range.clone())
        .await
        .map_err(storage_error)?;
    let mut response = Response::new(Body::from_stream(object.body));
    let h = response.headers_mut();
    set_cache_headers(h, &etag);
    let content_type = match variant {
        Variant::Original => row.content_type.as_str(),
        _ => "image/jpeg",
    };
    if let Ok(value) = HeaderValue::from_str(content_type) {
        h.insert(header::CONTENT_TYPE, value);
    }
    h.insert(
        header::CONTENT_LENGTH,
        HeaderValue::from(object.range.end - object.range.start),
    );
    if variant == Variant::Original && row.kind == MediaKind::File.as_str() {
        // A file is never rendered by the browser as a page of ours (an uploaded HTML or
        // SVG could script the origin): it downloads, sandboxed.
        h.insert(
            header::CONTENT_DISPOSITION,
            content_disposition(row.filename.as_deref().unwrap_or("file")),
        );
        h.insert(
            header::CONTENT_SECURITY_POLICY,
            HeaderValue::from_static("default-src 'none'; sandbox"),
        );
    }
    if range.is_some() {
        *response.status_mut() = StatusCode::PARTIAL_CONTENT;
        if let Ok(value) = HeaderValue::from_str(&format!(
            "bytes {}-{}/{}",
            object.range.start,
            object.range.end - 1,
            object.size
        )) {
            response.headers_mut().insert(header::CONTENT_RANGE, value);
        }
    }
    Ok(response)
}

fn storage_error(err: crate::media::storage::StorageError) -> ApiError {
    tracing::error!(%err, "media read failed");
    ApiError::Unavailable("media storage")
}

fn set_cache_headers(h: &mut HeaderMap, etag: &str) {
    if let Ok(value) = HeaderValue::from_str(etag) {
        h.insert(header::ETAG, value);
    }
    h.insert(header::ACCEPT_RANGES, HeaderValue::from_static("bytes"));
    // Content-addressed bytes never change; `private`: readable by some users only.
    h.insert(
        header::CACHE_CONTROL,
        HeaderValue::from_static("private, max-age=31536000, immutable"),
    );
}

/// `attachment; filename="ascii"; filename*=UTF-8''percent-encoded` (RFC 6266).
fn content_disposition(name: &str) -> HeaderValue {
    let ascii: String = name
        .chars()
        .map(|c| {
            if c.is_ascii_graphic() && c != '"' && c != '\\' || c == ' ' {
                c
            } else {
                '_'
            }
        })
        .collect();
    let encoded: String = name
        .bytes()
        .map(|b| {
            if b.is_ascii_alphanumeric() || b"-._~".contains(&b) {
                (b as char).to_string()
            } else {
                format!("%{b:02X}")
            }
        })
        .collect();
    HeaderValue::from_str(&format!(
        "attachment; filename=\"{ascii}\"; filename*=UTF-8''{encoded}"
    ))
    .unwrap_or(HeaderValue::from_static("attachment"))
}

/// What a `Range` header asks of an object of `size` bytes.
#[derive(Debug, PartialEq, Eq)]
pub enum RangeAsk {
    /// No usable single byte range: serve everything (several ranges, other units, or a
    /// malformed header are ignored, as RFC 9110 §14.2 allows).
    Whole,
    Part(std::ops::Range<u64>),
    Unsatisfiable,
}

pub fn parse_range(header: &str, size: u64) -> RangeAsk {
    let Some(spec) = header.trim().strip_prefix("bytes=") else {
        return RangeAsk::Whole;
    };
    if spec.contains(',') {
        return RangeAsk::Whole;
    }
    let Some((first, last)) = spec.trim().split_once('-') else {
        return RangeAsk::Whole;
    };
    let (first, last) = (first.trim(), last.trim());
    if first.is_empty() {
        // A suffix: the last `n` bytes.
        let Ok(n) = last.parse::<u64>() else {
            return RangeAsk::Whole;
        };
        if n == 0 || size == 0 {
            return RangeAsk::Unsatisfiable;
        }
        return RangeAsk::Part(size.saturating_sub(n)..size);
    }
    let Ok(start) = first.parse::<u64>() else {
        return RangeAsk::Whole;
    };
    let end = if last.is_empty() {
        size
    } else {
        match last.parse::<u64>() {
            Ok(last) if last >= start => last.saturating_add(1).min(size),
            _ => return RangeAsk::Whole,
        }
    };
    if start >= size {
        return RangeAsk::Unsatisfiable;
    }
    RangeAsk::Part(start..end)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ranges() {
        assert_eq!(parse_range("bytes=0-99", 1000), RangeAsk::Part(0..100));
        assert_eq!(parse_range("bytes=900-", 1000), RangeAsk::Part(900..1000));
        assert_eq!(parse_range("bytes=-100", 1000), RangeAsk::Part(900..1000));
        assert_eq!(parse_range("bytes=-5000", 1000), RangeAsk::Part(0..1000));
        assert_eq!(
            parse_range("bytes=990-5000", 1000),
            RangeAsk::Part(990..1000)
        );
        assert_eq!(parse_range("bytes=1000-", 1000), RangeAsk::Unsatisfiable);
        assert_eq!(parse_range("bytes=-0", 1000), RangeAsk::Unsatisfiable);
        assert_eq!(parse_range("bytes=0-0", 0), RangeAsk::Unsatisfiable);
        assert_eq!(parse_range("bytes=5-3", 1000), RangeAsk::Whole);
        assert_eq!(parse_range("bytes=0-1,5-6", 1000), RangeAsk::Whole);
        assert_eq!(parse_range("items=0-1", 1000), RangeAsk::Whole);
        assert_eq!(parse_range("bytes=x-1", 1000), RangeAsk::Whole);
    }

    #[test]
    fn filenames_lose_paths_controls_and_quotes_and_keep_255_bytes() {
        assert_eq!(
            clean_filename("../../etc/passwd").as_deref(),
            Some("passwd")
        );
        assert_eq!(
            clean_filename("C:\\x\\a\"b\n.txt").as_deref(),
            Some("a_b_.txt")
        );
        assert_eq!(
            clean_filename("invoice\u{202E}fdp.exe").as_deref(),
            Some("invoice_fdp.exe")
        );
        assert_eq!(clean_filename(".."), None);
        assert_eq!(clean_filename("  "), None);
        let long = "ş".repeat(200);
        let clean = clean_filename(&long).unwrap_or_default();
        assert!(clean.len() <= 255 && clean.chars().all(|c| c == 'ş'));
    }
}
