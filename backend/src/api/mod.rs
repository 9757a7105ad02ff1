//! The HTTP API. [`app`] builds the whole router from an [`AppState`]; `main` binds it, tests
//! call it directly.
//!
//! Routes today: `GET /healthz` (alive), `GET /readyz` (Postgres through PgBouncer and Redis
//! answer), `GET /v1/version`. Errors leave through [`error::ApiError`] only.

pub mod error;

use std::time::Duration;

use axum::extract::State;
use axum::http::StatusCode;
use axum::response::IntoResponse;
use axum::routing::get;
use axum::{Json, Router};
use fred::prelude::*;
use serde::Serialize;
use sqlx::PgPool;

pub use error::ApiError;

/// How long a readiness probe waits for each dependency.
pub const READINESS_TIMEOUT: Duration = Duration::from_secs(2);

/// What every handler can reach.
#[derive(Clone)]
pub struct AppState {
    pub db: PgPool,
    pub redis: fred::clients::Client,
}

/// The API router.
pub fn app(state: AppState) -> Router {
    Router::new()
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .route("/v1/version", get(version))
        .fallback(not_found)
        .with_state(state)
}

#[derive(Debug, Serialize, PartialEq, Eq)]
pub struct Version {
    pub name: &'static str,
    pub version: &'static str,
    pub api: &'static str,
}

pub const VERSION: Version = Version {
    name: "haberci",
    version: env!("CARGO_PKG_VERSION"),
    api: "v1",
};

async fn healthz() -> impl IntoResponse {
    Json(serde_json::json!({ "status": "ok" }))
}

async fn version() -> Json<Version> {
    Json(VERSION)
}

async fn not_found() -> ApiError {
    ApiError::NotFound
}

#[derive(Debug, Serialize)]
struct Readiness {
    status: &'static str,
    postgres: &'static str,
    redis: &'static str,
}

async fn readyz(State(state): State<AppState>) -> impl IntoResponse {
    let (postgres, redis) = tokio::join!(postgres_ready(&state.db), redis_ready(&state.redis));
    let word = |ok: bool| if ok { "ok" } else { "unavailable" };
    let body = Readiness {
        status: word(postgres && redis),
        postgres: word(postgres),
        redis: word(redis),
    };
    let status = if postgres && redis {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (status, Json(body))
}

async fn postgres_ready(db: &PgPool) -> bool {
    let probe = sqlx::query_scalar::<_, i32>("SELECT 1").fetch_one(db);
    match tokio::time::timeout(READINESS_TIMEOUT, probe).await {
        Ok(Ok(1)) => true,
        Ok(Ok(_)) => false,
        Ok(Err(err)) => {
            tracing::warn!(%err, "readiness: postgres");
            false
        }
        Err(_) => {
            tracing::warn!("readiness: postgres timed out");
            false
        }
    }
}

async fn redis_ready(redis: &fred::clients::Client) -> bool {
    let probe = redis.ping::<String>(None);
    match tokio::time::timeout(READINESS_TIMEOUT, probe).await {
        Ok(Ok(_)) => true,
        Ok(Err(err)) => {
            tracing::warn!(%err, "readiness: redis");
            false
        }
        Err(_) => {
            tracing::warn!("readiness: redis timed out");
            false
        }
    }
}
