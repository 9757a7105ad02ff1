//! One place turns errors into responses. Every error body has the same shape:
//! `{"error": {"code": "...", "message": "...", "field": null}}`.

use axum::Json;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde::Serialize;

/// An error a handler returns. Each variant says whose fault it is.
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    /// Client: no such route or resource.
    #[error("not found")]
    NotFound,
    /// Us: a dependency (Postgres, Redis) is down or slow; the client may retry.
    #[error("{0} unavailable")]
    Unavailable(&'static str),
    /// Us: a bug or an unexpected failure. Logged with detail; the client sees no detail.
    #[error("internal error")]
    Internal(#[source] anyhow::Error),
}

#[derive(Serialize)]
struct Body<'a> {
    error: Detail<'a>,
}

#[derive(Serialize)]
struct Detail<'a> {
    code: &'a str,
    message: String,
    field: Option<&'a str>,
}

impl ApiError {
    pub fn status(&self) -> StatusCode {
        match self {
            ApiError::NotFound => StatusCode::NOT_FOUND,
            ApiError::Unavailable(_) => StatusCode::SERVICE_UNAVAILABLE,
            ApiError::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    pub fn code(&self) -> &'static str {
        match self {
            ApiError::NotFound => "not_found",
            ApiError::Unavailable(_) => "unavailable",
            ApiError::Internal(_) => "internal",
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        if let ApiError::Internal(err) = &self {
            // API boundary: the detail stays in the log; the response carries none of it.
            tracing::error!(error = format!("{err:#}"), "internal error");
        }
        let body = Body {
            error: Detail {
                code: self.code(),
                message: self.to_string(),
                field: None,
            },
        };
        (self.status(), Json(body)).into_response()
    }
}
