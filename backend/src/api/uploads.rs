//! Resumable uploads: the tus 1.0 protocol (<https://tus.io/protocols/resumable-upload>),
//! core plus the creation, termination and expiration extensions (not discovery: `OPTIONS`
//! is the CORS layer's; creation's answer carries `Tus-Version`, `Tus-Extension`, `Tus-Max-Size`), under
//! `/v1/media/uploads`. A phone that loses its connection asks `HEAD` where the server
//! stopped and sends the rest with `PATCH` from there.
//!
//! The bytes so far live in the API's staging directory; the row in `media_uploads` holds
//! how many are good (`received`). A `PATCH` holds a lease on the row while it writes, so
//! two never interleave. When the last byte arrives the upload is processed like
//! `POST /v1/media`; on success the `PATCH` answers with `Haberci-Media-Id`, on refusal the
//! upload is gone and nothing is kept.

use axum::extract::{Request, State};
use axum::http::{HeaderMap, HeaderName, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use base64::Engine;
use haberci_wire::MediaId;
use serde::Serialize;
use time::OffsetDateTime;
use utoipa::ToSchema;
use uuid::Uuid;

use super::extract::{ApiPath, Authenticated};
use super::media::{MediaView, clean_filename, declared_kind, header_u64, refused};
use super::{ApiError, AppState};
use crate::media::MediaKind;
use crate::media::store;
use crate::media::upload::{self, Declared, Staged, StagedFile, UploadError};

pub const TUS_VERSION: &str = "1.0.0";
const TUS_RESUMABLE: HeaderName = HeaderName::from_static("tus-resumable");
const UPLOAD_OFFSET: HeaderName = HeaderName::from_static("upload-offset");
const UPLOAD_LENGTH: HeaderName = HeaderName::from_static("upload-length");
const UPLOAD_EXPIRES: HeaderName = HeaderName::from_static("upload-expires");
const MEDIA_ID: HeaderName = HeaderName::from_static("haberci-media-id");
/// How long a `PATCH` may hold an upload; a request that outlives it loses the lease.
const LEASE_SECS: f64 = 15.0 * 60.0;

/// A resumable upload.
#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct UploadView {
    #[schema(format = Uuid)]
    pub id: Uuid,
    /// Bytes received so far.
    pub offset: i64,
    pub length: i64,
    #[serde(with = "time::serde::rfc3339")]
    #[schema(value_type = String, format = DateTime)]
    pub expires_at: OffsetDateTime,
    /// Set once the last byte arrived and the media was stored.
    pub media: Option<MediaView>,
}

#[derive(Debug, sqlx::FromRow)]
struct UploadRow {
    id: Uuid,
    kind: String,
    length: i64,
    received: i64,
    filename: Option<String>,
    media_id: Option<MediaId>,
    expires_at: OffsetDateTime,
}

fn tus_headers(response: &mut Response) {
    response
        .headers_mut()
        .insert(TUS_RESUMABLE, HeaderValue::from_static(TUS_VERSION));
}

/// Every request but `OPTIONS` names the protocol version it speaks.
fn check_version(headers: &HeaderMap) -> Result<(), ApiError> {
    match headers.get(TUS_RESUMABLE).and_then(|v| v.to_str().ok()) {
        Some(TUS_VERSION) => Ok(()),
        _ => Err(refused(
            StatusCode::PRECONDITION_FAILED,
            "tus_version",
            "send Tus-Resumable: 1.0.0 (the only tus version served)",
        )),
    }
}

/// `Upload-Metadata`: comma-separated `key base64(value)` pairs. Reads `kind`, `filename`,
/// and `filetype` (a MIME type, what tus-js-client sends).
fn metadata(headers: &HeaderMap) -> Result<Metadata, ApiError> {
    let Some(text) = headers.get("upload-metadata") else {
        return Ok(Metadata::default());
    };
    let text = text
        .to_str()
        .map_err(|_| ApiError::invalid("upload-metadata", "Upload-Metadata must be ASCII"))?;
    let (mut kind, mut filename, mut filetype) = (None, None, None);
    for pair in text.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        let (key, value) = pair.split_once(' ').unwrap_or((pair, ""));
        let value = base64::engine::general_purpose::STANDARD
            .decode(value.trim())
            .ok()
            .and_then(|v| String::from_utf8(v).ok())
            .ok_or_else(|| {
                ApiError::invalid(
                    "upload-metadata",
                    format!("Upload-Metadata value of {key:?} is not base64 of UTF-8"),
                )
            })?;
        match key {
            "kind" => kind = Some(value),
            "filename" | "name" => filename = Some(value),
            "filetype" | "type" => filetype = Some(value),
            _ => {}
        }
    }
    Ok(Metadata {
        kind,
        filename,
        filetype,
    })
}

/// What `Upload-Metadata` said.
#[derive(Debug, Default)]
struct Metadata {
    kind: Option<String>,
    filename: Option<String>,
    filetype: Option<String>,
}

/// Start a resumable upload (tus creation): `Tus-Resumable: 1.0.0`, `Upload-Length`, and
/// `Upload-Metadata` with `kind` (or `filetype`) and `filename`. Answers 201 with
/// `Location`; send the bytes with `PATCH` there.
#[utoipa::path(post, path = "/v1/media/uploads", tag = "media",
    security(("bearer" = [])),
    params(
        ("Tus-Resumable" = String, Header, description = "`1.0.0`"),
        ("Upload-Length" = u64, Header, description = "The file's size in bytes"),
        ("Upload-Metadata" = Option<String>, Header, description = "`kind <base64>,filename <base64>` (tus metadata)"),
    ),
    responses(
        (status = 201, description = "Created: `Location`, `Upload-Expires`"),
        (status = 401, description = "No or invalid access token", body = super::ErrorBody),
        (status = 412, description = "`tus_version`: no or another `Tus-Resumable`", body = super::ErrorBody),
        (status = 413, description = "`media_too_large` or `media_quota_exceeded`", body = super::ErrorBody),
        (status = 422, description = "`invalid_field`: no `Upload-Length`, bad metadata or kind", body = super::ErrorBody),
    ))]
pub async fn create(
    State(state): State<AppState>,
    me: Authenticated,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    check_version(&headers)?;
    let media = &state.media;
    let length = header_u64(&headers, UPLOAD_LENGTH.as_str())?
        .ok_or_else(|| ApiError::invalid("upload-length", "Upload-Length is required"))?;
    let Metadata {
        kind,
        filename,
        filetype,
    } = metadata(&headers)?;
    let kind = declared_kind(kind.as_deref(), filetype.as_deref())?;
    let limit = media.settings.limits.bytes_for(kind);
    if length > limit {
        return Err(UploadError::TooLarge {
            kind: kind.as_str(),
            limit,
        }
        .into());
    }
    let quota = media.settings.quota_bytes;
    if store::used_bytes(&state.db, me.user).await? + length > quota {
        return Err(UploadError::QuotaExceeded { quota }.into());
    }
    let id = Uuid::now_v7();
    let expires_at: OffsetDateTime = sqlx::query_scalar(
        "INSERT INTO media_uploads (id, owner_id, kind, length, filename, expires_at)
         VALUES ($1, $2, $3, $4, $5, now() + make_interval(secs => $6))
         RETURNING expires_at",
    )
    .bind(id)
    .bind(me.user)
    .bind(kind.as_str())
    .bind(i64::try_from(length).unwrap_or(i64::MAX))
    .bind(filename.as_deref().and_then(clean_filename))
    .bind(media.settings.upload_ttl.as_secs_f64())
    .fetch_one(&state.db)
    .await?;
    tokio::fs::File::create(upload::resumable_path(media, id))
        .await
        .map_err(|err| ApiError::Internal(err.into()))?;
    let mut response = StatusCode::CREATED.into_response();
    let h = response.headers_mut();
    if let Ok(value) = HeaderValue::from_str(&format!("/v1/media/uploads/{id}")) {
        h.insert(header::LOCATION, value);
    }
    insert_expires(h, expires_at);
    // Discovery (tus `OPTIONS`) is not served: the CORS layer answers `OPTIONS` for every
    // path. What it would say travels here instead.
    h.insert("tus-version", HeaderValue::from_static(TUS_VERSION));
    h.insert(
        "tus-extension",
        HeaderValue::from_static("creation,termination,expiration"),
    );
    let limits = &media.settings.limits;
    let max = limits
        .bytes_for(MediaKind::Video)
        .max(limits.bytes_for(MediaKind::File));
    h.insert("tus-max-size", HeaderValue::from(max));
    tus_headers(&mut response);
    Ok(response)
}

fn insert_expires(h: &mut HeaderMap, at: OffsetDateTime) {
    // RFC 9110 date (IMF-fixdate), as tus's expiration extension asks.
    let format = time::macros::format_description!(
        "[weekday repr:short], [day] [month repr:short] [year] [hour]:[minute]:[second] GMT"
    );
    if let Some(value) = at
        .to_offset(time::UtcOffset::UTC)
        .format(&format)
        .ok()
        .and_then(|v| HeaderValue::from_str(&v).ok())
    {
        h.insert(UPLOAD_EXPIRES, value);
    }
}

async fn find(state: &AppState, me: Authenticated, id: Uuid) -> Result<UploadRow, ApiError> {
    sqlx::query_as::<_, UploadRow>(
        "SELECT id, kind, length, received, filename, media_id, expires_at FROM media_uploads
         WHERE id = $1 AND owner_id = $2 AND expires_at > now()",
    )
    .bind(id)
    .bind(me.user)
    .fetch_optional(&state.db)
    .await?
    .ok_or(ApiError::NotFound)
}

fn offset_headers(response: &mut Response, row: &UploadRow) {
    let h = response.headers_mut();
    h.insert(UPLOAD_OFFSET, HeaderValue::from(row.received));
    h.insert(UPLOAD_LENGTH, HeaderValue::from(row.length));
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    if let Some(media) = row
        .media_id
        .and_then(|m| HeaderValue::from_str(&m.to_string()).ok())
    {
        h.insert(MEDIA_ID, media);
    }
    insert_expires(h, row.expires_at);
    tus_headers(response);
}

/// Where an upload stands (tus `HEAD`): `Upload-Offset`, `Upload-Length`, and
/// `Haberci-Media-Id` once stored.
#[utoipa::path(head, path = "/v1/media/uploads/{id}", tag = "media",
    security(("bearer" = [])),
    params(
        ("id" = String, Path, format = Uuid, description = "Upload id"),
        ("Tus-Resumable" = String, Header, description = "`1.0.0`"),
    ),
    responses(
        (status = 200, description = "`Upload-Offset`, `Upload-Length`"),
        (status = 401, description = "No or invalid access token"),
        (status = 404, description = "No such upload (or expired, or not yours)"),
        (status = 412, description = "`tus_version`"),
    ))]
pub async fn status(
    State(state): State<AppState>,
    me: Authenticated,
    ApiPath(id): ApiPath<Uuid>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    check_version(&headers)?;
    let row = find(&state, me, id).await?;
    let mut response = StatusCode::OK.into_response();
    offset_headers(&mut response, &row);
    Ok(response)
}

/// An upload and, once complete, its media.
#[utoipa::path(get, path = "/v1/media/uploads/{id}", tag = "media",
    security(("bearer" = [])),
    params(("id" = String, Path, format = Uuid, description = "Upload id")),
    responses(
        (status = 200, description = "The upload", body = UploadView),
        (status = 401, description = "No or invalid access token", body = super::ErrorBody),
        (status = 404, description = "No such upload (or expired, or not yours)", body = super::ErrorBody),
    ))]
pub async fn get(
    State(state): State<AppState>,
    me: Authenticated,
    ApiPath(id): ApiPath<Uuid>,
) -> Result<axum::Json<UploadView>, ApiError> {
    let row = find(&state, me, id).await?;
    let media = match row.media_id {
        Some(media_id) => store::by_ids(&state.db, &[media_id])
            .await?
            .into_iter()
            .next()
            .map(|m| MediaView::new(&state.media, m)),
        None => None,
    };
    Ok(axum::Json(UploadView {
        id: row.id,
        offset: row.received,
        length: row.length,
        expires_at: row.expires_at,
        media,
    }))
}

/// Send bytes from `Upload-Offset` (which must be where the server stands; `HEAD` says).
/// The body is `application/offset+octet-stream`. The last bytes store the media.
#[utoipa::path(patch, path = "/v1/media/uploads/{id}", tag = "media",
    security(("bearer" = [])),
    params(
        ("id" = String, Path, format = Uuid, description = "Upload id"),
        ("Tus-Resumable" = String, Header, description = "`1.0.0`"),
        ("Upload-Offset" = u64, Header, description = "Where these bytes start"),
    ),
    request_body(content = Vec<u8>, content_type = "application/offset+octet-stream"),
    responses(
        (status = 204, description = "Taken: `Upload-Offset`; `Haberci-Media-Id` when complete"),
        (status = 400, description = "`upload_incomplete`: the body broke (what arrived is kept)", body = super::ErrorBody),
        (status = 401, description = "No or invalid access token", body = super::ErrorBody),
        (status = 404, description = "No such upload (or expired, or not yours)", body = super::ErrorBody),
        (status = 409, description = "`upload_offset_mismatch`, `upload_busy` (another PATCH is writing) or `upload_complete`", body = super::ErrorBody),
        (status = 412, description = "`tus_version`", body = super::ErrorBody),
        (status = 413, description = "More bytes than `Upload-Length`, or the quota", body = super::ErrorBody),
        (status = 415, description = "Not `application/offset+octet-stream`, or an unreadable image format", body = super::ErrorBody),
        (status = 422, description = "The finished file is refused (see `POST /v1/media`); the upload is gone", body = super::ErrorBody),
    ))]
pub async fn patch(
    State(state): State<AppState>,
    me: Authenticated,
    ApiPath(id): ApiPath<Uuid>,
    request: Request,
) -> Result<Response, ApiError> {
    let headers = request.headers();
    check_version(headers)?;
    let offset_ok = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| {
            v.trim()
                .eq_ignore_ascii_case("application/offset+octet-stream")
        });
    if !offset_ok {
        return Err(ApiError::UnsupportedMediaType);
    }
    let offset = header_u64(headers, UPLOAD_OFFSET.as_str())?
        .ok_or_else(|| ApiError::invalid("upload-offset", "Upload-Offset is required"))?;
    let row = find(&state, me, id).await?;
    if row.media_id.is_some() {
        return Err(refused(
            StatusCode::CONFLICT,
            "upload_complete",
            "this upload is complete",
        ));
    }
    if offset != row.received as u64 {
        return Err(refused(
            StatusCode::CONFLICT,
            "upload_offset_mismatch",
            format!(
                "Upload-Offset must be {} (HEAD says where the upload stands)",
                row.received
            ),
        ));
    }
    let leased = sqlx::query(
        "UPDATE media_uploads SET leased_until = now() + make_interval(secs => $3)
         WHERE id = $1 AND owner_id = $2 AND received = $4
           AND (leased_until IS NULL OR leased_until < now())",
    )
    .bind(id)
    .bind(me.user)
    .bind(LEASE_SECS)
    .bind(row.received)
    .execute(&state.db)
    .await?;
    if leased.rows_affected() != 1 {
        return Err(refused(
            StatusCode::CONFLICT,
            "upload_busy",
            "another PATCH is writing this upload, or it moved on; HEAD and retry",
        ));
    }
    let path = upload::resumable_path(&state.media, id);
    let body = request.into_body().into_data_stream();
    let appended = upload::append(&path, offset, row.length as u64, body).await;
    let (held, broke) = match appended {
        Ok(done) => done,
        Err(err) => {
            release(&state, id, None).await?;
            return Err(err.into());
        }
    };
    release(&state, id, Some(held)).await?;
    if let Some(why) = broke {
        return Err(UploadError::Incomplete(why).into());
    }
    let mut row = UploadRow {
        received: held as i64,
        ..row
    };
    if held == row.length as u64 {
        let media_id = finish(&state, me, &row, &path).await?;
        row.media_id = Some(media_id);
    }
    let mut response = StatusCode::NO_CONTENT.into_response();
    offset_headers(&mut response, &row);
    Ok(response)
}

/// Ends a `PATCH`'s lease, recording the bytes it left (`None`: unchanged).
async fn release(state: &AppState, id: Uuid, held: Option<u64>) -> Result<(), ApiError> {
    sqlx::query(
        "UPDATE media_uploads SET leased_until = NULL, received = coalesce($2, received)
         WHERE id = $1",
    )
    .bind(id)
    .bind(held.map(|h| h as i64))
    .execute(&state.db)
    .await?;
    Ok(())
}

/// The last byte arrived: process and store, or forget the upload entirely.
async fn finish(
    state: &AppState,
    me: Authenticated,
    row: &UploadRow,
    path: &std::path::Path,
) -> Result<MediaId, ApiError> {
    let kind = MediaKind::parse(&row.kind).unwrap_or(MediaKind::File);
    let staged = async {
        let sha256 = upload::hash_file(path).await?;
        Ok::<_, std::io::Error>(Staged {
            file: StagedFile::new(path.to_owned()),
            size: row.length as u64,
            sha256,
        })
    }
    .await
    .map_err(|err| ApiError::Internal(err.into()))?;
    let declared = Declared {
        owner: me.user,
        kind,
        filename: row.filename.clone(),
    };
    match upload::ingest(&state.media, &state.db, &declared, staged).await {
        Ok(media) => {
            sqlx::query("UPDATE media_uploads SET media_id = $2 WHERE id = $1")
                .bind(row.id)
                .bind(media.id)
                .execute(&state.db)
                .await?;
            Ok(media.id)
        }
        Err(err) => {
            sqlx::query("DELETE FROM media_uploads WHERE id = $1")
                .bind(row.id)
                .execute(&state.db)
                .await?;
            Err(err.into())
        }
    }
}

/// Abandon an upload (tus termination); a stored media stays.
#[utoipa::path(delete, path = "/v1/media/uploads/{id}", tag = "media",
    security(("bearer" = [])),
    params(
        ("id" = String, Path, format = Uuid, description = "Upload id"),
        ("Tus-Resumable" = String, Header, description = "`1.0.0`"),
    ),
    responses(
        (status = 204, description = "Gone"),
        (status = 401, description = "No or invalid access token", body = super::ErrorBody),
        (status = 404, description = "No such upload (or expired, or not yours)", body = super::ErrorBody),
        (status = 412, description = "`tus_version`", body = super::ErrorBody),
    ))]
pub async fn terminate(
    State(state): State<AppState>,
    me: Authenticated,
    ApiPath(id): ApiPath<Uuid>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    check_version(&headers)?;
    let gone = sqlx::query("DELETE FROM media_uploads WHERE id = $1 AND owner_id = $2")
        .bind(id)
        .bind(me.user)
        .execute(&state.db)
        .await?;
    if gone.rows_affected() == 0 {
        return Err(ApiError::NotFound);
    }
    let _ = tokio::fs::remove_file(upload::resumable_path(&state.media, id)).await;
    let mut response = StatusCode::NO_CONTENT.into_response();
    tus_headers(&mut response);
    Ok(response)
}
