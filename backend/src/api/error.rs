//! One place turns errors into responses. Every error body has the same shape:
//! `{"error": {"code": "...", "message": "...", "field": null}}` ([`ErrorBody`]).
//!
//! API boundary: no response carries SQL, a stack trace, or an internal message; those go to the
//! log ([`ApiError::Internal`]).

use std::time::Duration;

use axum::Json;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::Serialize;
use utoipa::ToSchema;

use crate::auth::password::HashError;
use crate::auth::sessions::SessionError;

/// An error a handler returns. Each variant says whose fault it is.
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    /// Client: no such route or resource.
    #[error("not found")]
    NotFound,
    /// Client: the route exists, not with this method.
    #[error("method not allowed")]
    MethodNotAllowed,
    /// Client: the body is not valid JSON.
    #[error("malformed JSON: {0}")]
    MalformedJson(String),
    /// Client: the body was not declared `application/json`.
    #[error("expected content-type application/json")]
    UnsupportedMediaType,
    /// Client: the body is larger than the API reads.
    #[error("request body is larger than the server accepts")]
    BodyTooLarge,
    /// Client: a field is missing, has the wrong type, or holds an invalid value.
    #[error("{message}")]
    InvalidField {
        field: Option<String>,
        message: String,
    },
    /// Client: no `Authorization: Bearer` access token.
    #[error("authentication required")]
    Unauthenticated,
    /// Client: the access token is forged, expired, or otherwise refused.
    #[error("invalid access token")]
    InvalidToken,
    /// Client: the access token's session was revoked or has ended.
    #[error("session revoked")]
    SessionRevoked,
    /// Peer (a gateway): the internal API's shared secret is missing or wrong.
    #[error("missing or wrong x-haberci-internal token")]
    InternalUnauthorized,
    /// Client: unknown user or wrong password (never said which).
    #[error("invalid username, email or password")]
    InvalidCredentials,
    /// Client: the refresh token is unknown, expired, or its session is over.
    #[error("invalid refresh token")]
    InvalidRefreshToken,
    /// Client (or a thief): a spent refresh token was presented; its session is now revoked.
    #[error("refresh token reused; the session has been revoked")]
    RefreshTokenReused,
    /// Client: the caller is signed in but their role does not allow this (the message says
    /// which rule).
    #[error("{0}")]
    Forbidden(&'static str),
    /// Client: the user is already a member of the group.
    #[error("the user is already a member of this group")]
    AlreadyMember,
    /// Client: the group has as many members as a group may have.
    #[error("the group is full ({max} members)")]
    GroupFull { max: usize },
    /// Client: a unique value (the field) is taken.
    #[error("{field} is already taken")]
    Conflict { field: &'static str },
    /// Client: too many requests; retry after the given time.
    #[error("too many requests; retry later")]
    RateLimited { retry_after: Duration },
    /// Client: a request the media API refuses for a reason with its own status and code
    /// (e.g. 413 `media_too_large`, 422 `media_type_mismatch`, 409 `upload_offset_mismatch`,
    /// 403 `link_expired`); docs/MEDIA.md lists them.
    #[error("{message}")]
    Refused {
        status: StatusCode,
        code: &'static str,
        message: String,
    },
    /// Client: a `Range` outside an object of `size` bytes (416 with `Content-Range: */size`).
    #[error("the range is outside the {size} bytes of this media")]
    RangeNotSatisfiable { size: u64 },
    /// Us: a dependency (Postgres, Redis, the hashing pool) is down, slow or saturated; the
    /// client may retry.
    #[error("{0} unavailable")]
    Unavailable(&'static str),
    /// Us: a bug or an unexpected failure. Logged with detail; the client sees no detail.
    #[error("internal error")]
    Internal(#[source] anyhow::Error),
}

/// The body of every error response.
#[derive(Debug, Serialize, ToSchema)]
pub struct ErrorBody {
    pub error: ErrorDetail,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct ErrorDetail {
    /// A stable machine-readable code, e.g. `invalid_field`, `rate_limited`.
    pub code: String,
    /// A human-readable explanation.
    pub message: String,
    /// The request field at fault, when there is one.
    pub field: Option<String>,
}

impl ApiError {
    pub fn invalid(field: &str, message: impl Into<String>) -> ApiError {
        ApiError::InvalidField {
            field: Some(field.to_owned()),
            message: message.into(),
        }
    }

    pub fn status(&self) -> StatusCode {
        match self {
            ApiError::NotFound => StatusCode::NOT_FOUND,
            ApiError::MethodNotAllowed => StatusCode::METHOD_NOT_ALLOWED,
            ApiError::MalformedJson(_) => StatusCode::BAD_REQUEST,
            ApiError::UnsupportedMediaType => StatusCode::UNSUPPORTED_MEDIA_TYPE,
            ApiError::BodyTooLarge => StatusCode::PAYLOAD_TOO_LARGE,
            ApiError::InvalidField { .. } => StatusCode::UNPROCESSABLE_ENTITY,
            ApiError::Unauthenticated
            | ApiError::InvalidToken
            | ApiError::SessionRevoked
            | ApiError::InternalUnauthorized
            | ApiError::InvalidCredentials
            | ApiError::InvalidRefreshToken
            | ApiError::RefreshTokenReused => StatusCode::UNAUTHORIZED,
            ApiError::Forbidden(_) => StatusCode::FORBIDDEN,
            ApiError::Conflict { .. } | ApiError::AlreadyMember | ApiError::GroupFull { .. } => {
                StatusCode::CONFLICT
            }
            ApiError::RateLimited { .. } => StatusCode::TOO_MANY_REQUESTS,
            ApiError::Refused { status, .. } => *status,
            ApiError::RangeNotSatisfiable { .. } => StatusCode::RANGE_NOT_SATISFIABLE,
            ApiError::Unavailable(_) => StatusCode::SERVICE_UNAVAILABLE,
            ApiError::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    pub fn code(&self) -> &'static str {
        match self {
            ApiError::NotFound => "not_found",
            ApiError::MethodNotAllowed => "method_not_allowed",
            ApiError::MalformedJson(_) => "malformed_json",
            ApiError::UnsupportedMediaType => "unsupported_media_type",
            ApiError::BodyTooLarge => "body_too_large",
            ApiError::InvalidField { .. } => "invalid_field",
            ApiError::Unauthenticated => "unauthenticated",
            ApiError::InvalidToken => "invalid_token",
            ApiError::SessionRevoked => "session_revoked",
            ApiError::InternalUnauthorized => "invalid_internal_token",
            ApiError::InvalidCredentials => "invalid_credentials",
            ApiError::InvalidRefreshToken => "invalid_refresh_token",
            ApiError::RefreshTokenReused => "refresh_token_reused",
            ApiError::Forbidden(_) => "forbidden",
            ApiError::AlreadyMember => "already_member",
            ApiError::GroupFull { .. } => "group_full",
            ApiError::Conflict { .. } => "conflict",
            ApiError::RateLimited { .. } => "rate_limited",
            ApiError::Refused { code, .. } => code,
            ApiError::RangeNotSatisfiable { .. } => "range_not_satisfiable",
            ApiError::Unavailable(_) => "unavailable",
            ApiError::Internal(_) => "internal",
        }
    }

    fn field(&self) -> Option<String> {
        match self {
            ApiError::InvalidField { field, .. } => field.clone(),
            ApiError::Conflict { field } => Some((*field).to_owned()),
            _ => None,
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        if let ApiError::Internal(err) = &self {
            // API boundary: the detail stays in the log; the response carries none of it.
            tracing::error!(error = format!("{err:#}"), "internal error");
        }
        let body = ErrorBody {
            error: ErrorDetail {
                code: self.code().to_owned(),
                message: self.to_string(),
                field: self.field(),
            },
        };
        let mut response = (self.status(), Json(body)).into_response();
        let headers = response.headers_mut();
        match &self {
            ApiError::RateLimited { retry_after } => {
                // Whole seconds, rounded up, at least 1 (RFC 9110 §10.2.3).
                let secs = retry_after.as_millis().div_ceil(1000).max(1);
                if let Ok(value) = HeaderValue::from_str(&secs.to_string()) {
                    headers.insert(header::RETRY_AFTER, value);
                }
            }
            ApiError::Unavailable(_) => {
                headers.insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
            }
            ApiError::RangeNotSatisfiable { size } => {
                if let Ok(value) = HeaderValue::from_str(&format!("bytes */{size}")) {
                    headers.insert(header::CONTENT_RANGE, value);
                }
            }
            ApiError::Unauthenticated => {
                headers.insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
            }
            ApiError::InvalidToken | ApiError::SessionRevoked => {
                headers.insert(
                    header::WWW_AUTHENTICATE,
                    HeaderValue::from_static("Bearer error=\"invalid_token\""),
                );
            }
            _ => {}
        }
        response
    }
}

impl From<sqlx::Error> for ApiError {
    fn from(err: sqlx::Error) -> Self {
        match err {
            sqlx::Error::PoolTimedOut | sqlx::Error::Io(_) | sqlx::Error::PoolClosed => {
                tracing::warn!(%err, "postgres unavailable");
                ApiError::Unavailable("database")
            }
            err => ApiError::Internal(err.into()),
        }
    }
}

impl From<fred::error::Error> for ApiError {
    fn from(err: fred::error::Error) -> Self {
        tracing::warn!(%err, "redis unavailable");
        ApiError::Unavailable("cache")
    }
}

impl From<HashError> for ApiError {
    fn from(err: HashError) -> Self {
        match err {
            HashError::Busy => ApiError::Unavailable("password hashing"),
            HashError::Failed(why) => ApiError::Internal(anyhow::anyhow!(why)),
        }
    }
}

impl From<SessionError> for ApiError {
    fn from(err: SessionError) -> Self {
        match err {
            SessionError::Db(err) => err.into(),
            SessionError::Random => ApiError::Internal(anyhow::anyhow!("no randomness")),
        }
    }
}
