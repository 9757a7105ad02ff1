//! The HTTP API. [`app`] builds the whole router from an [`AppState`]; [`run`] (what
//! `haberci-backend api` does) opens the API's connections and serves it with [`serve`] (which
//! records each connection's peer address, needed to trust a gateway's client-IP header);
//! tests call [`app`] or [`serve`] directly.
//!
//! Routes: `GET /healthz` (alive), `GET /readyz` (Postgres through PgBouncer and Redis answer),
//! `GET /v1/version`, the account and auth endpoints ([`auth`], [`users`]), and
//! groups and conversations ([`conversations`]), and `GET /v1/openapi.json`, the OpenAPI 3.1
//! document generated from the handlers' annotations. The gateways' internal API
//! (`/internal/v1/*`, [`internal`]) is outside `/v1` and outside the document.
//!
//! The HTTP surface: every response carries the security headers and CORS allow-list of
//! `haberci_kit::http`; bodies are capped at `max_body_bytes`; errors (including unknown routes,
//! wrong methods and bad bodies) leave through [`error::ApiError`] only.

pub mod auth;
pub mod conversations;
pub mod cursor;
pub mod error;
pub mod extract;
pub mod internal;
pub mod media;
pub mod notifications;
pub mod openapi;
pub mod posts;
pub mod social;
pub mod uploads;
pub mod users;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::body::Body;
use axum::extract::{DefaultBodyLimit, State};
use axum::http::{HeaderValue, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use fred::prelude::*;
use haberci_kit::shutdown::Shutdown;
use haberci_token::KeySet;
use serde::Serialize;
use sqlx::PgPool;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use crate::auth::keys::{DEFAULT_KEY_POLL_INTERVAL, KeyStore};
use crate::config::{ApiConfig, ApiSettings};
pub use error::{ApiError, ErrorBody};

/// How long a readiness probe waits for each dependency.
pub const READINESS_TIMEOUT: Duration = Duration::from_secs(2);

/// What every handler can reach.
#[derive(Clone)]
pub struct AppState {
    pub db: PgPool,
    /// Reads that may lag: a fresh replica's, else `db`'s ([`crate::replica`]).
    pub reads: crate::replica::Replicas,
    pub redis: fred::clients::Client,
    pub auth: Arc<crate::auth::Auth>,
    pub settings: Arc<ApiSettings>,
    pub feed: crate::social::feed::Feed,
    pub profiles: crate::accounts::cache::Profiles,
    pub media: crate::media::Media,
}

impl AppState {
    /// State with a fixed key set (tests, benchmarks).
    pub fn new(
        db: PgPool,
        redis: fred::clients::Client,
        settings: ApiSettings,
        keys: KeySet,
    ) -> AppState {
        AppState::with_keys(
            db,
            redis,
            settings,
            Arc::new(crate::auth::keys::KeyStore::fixed(keys)),
        )
    }

    /// State whose keys can be reloaded through `keys` ([`crate::auth::keys::watch`]).
    pub fn with_keys(
        db: PgPool,
        redis: fred::clients::Client,
        settings: ApiSettings,
        keys: Arc<crate::auth::keys::KeyStore>,
    ) -> AppState {
        AppState {
            reads: crate::replica::Replicas::primary_only(db.clone()),
            db,
            redis,
            auth: Arc::new(crate::auth::Auth::new(settings.auth.clone(), keys)),
            feed: crate::social::feed::Feed::new(settings.social.feed),
            profiles: crate::accounts::cache::Profiles::default(),
            // Invariant: the settings were checked at start-up (`MediaSettings::read`); a store
            // that cannot open is a start-up failure, not something a request can meet.
            media: crate::media::Media::open(settings.media.clone())
                .unwrap_or_else(|err| panic!("media store {:?}: {err}", settings.media.store)),
            settings: Arc::new(settings),
        }
    }
}

/// The routes and the OpenAPI document describing them, from one list.
fn routes() -> (Router<AppState>, utoipa::openapi::OpenApi) {
    OpenApiRouter::with_openapi(openapi::base())
        .routes(routes!(auth::register))
        .routes(routes!(auth::login))
        .routes(routes!(auth::refresh))
        .routes(routes!(auth::logout))
        .routes(routes!(auth::logout_all))
        .routes(routes!(auth::list_sessions))
        .routes(routes!(auth::revoke_session))
        .routes(routes!(auth::jwks))
        .routes(routes!(users::me, users::update_me))
        .routes(routes!(users::profile))
        .routes(routes!(conversations::create_group))
        .routes(routes!(conversations::group))
        .routes(routes!(conversations::add_member))
        .routes(routes!(
            conversations::remove_member,
            conversations::update_member
        ))
        .routes(routes!(conversations::leave))
        .routes(routes!(conversations::list_conversations))
        .routes(routes!(conversations::history))
        .routes(routes!(social::follow, social::unfollow))
        .routes(routes!(social::followers))
        .routes(routes!(social::following))
        .routes(routes!(social::follow_requests))
        .routes(routes!(social::approve_request))
        .routes(routes!(social::deny_request))
        .routes(routes!(social::block, social::unblock))
        .routes(routes!(social::mute, social::unmute))
        .routes(routes!(social::blocks))
        .routes(routes!(social::mutes))
        .routes(routes!(posts::create_post))
        .routes(routes!(posts::post, posts::edit_post, posts::delete_post))
        .routes(routes!(posts::post_edits))
        .routes(routes!(posts::like, posts::unlike))
        .routes(routes!(posts::likes))
        .routes(routes!(posts::repost, posts::unrepost))
        .routes(routes!(posts::create_comment))
        .routes(routes!(posts::delete_comment))
        .routes(routes!(posts::thread))
        .routes(routes!(posts::home))
        .routes(routes!(posts::user_posts))
        .routes(routes!(posts::tag_posts))
        .routes(routes!(posts::search_posts))
        .routes(routes!(posts::search_users))
        .routes(routes!(notifications::list))
        .routes(routes!(notifications::unread_count))
        .routes(routes!(notifications::mark_read))
        .routes(routes!(notifications::report))
        .routes(routes!(notifications::suspend))
        .routes(routes!(media::upload))
        .routes(routes!(media::info))
        .routes(routes!(media::original, media::delete))
        .routes(routes!(media::thumb))
        .routes(routes!(media::preview))
        .routes(routes!(uploads::create))
        .routes(routes!(
            uploads::status,
            uploads::get,
            uploads::patch,
            uploads::terminate
        ))
        .split_for_parts()
}

/// The OpenAPI document of the API (what `GET /v1/openapi.json` serves).
pub fn openapi_document() -> utoipa::openapi::OpenApi {
    let (_, mut document) = routes();
    openapi::finish(&mut document);
    document
}

/// The API router.
pub fn app(state: AppState) -> Router {
    let (api, mut document) = routes();
    openapi::finish(&mut document);
    let document = Arc::new(document);
    let settings = state.settings.clone();
    let router = api
        .merge(internal::router())
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .route("/v1/version", get(version))
        .route(
            "/v1/openapi.json",
            get(move || {
                let document = document.clone();
                async move { Json(document.as_ref().clone()) }
            }),
        )
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        .layer(DefaultBodyLimit::max(settings.max_body_bytes))
        .layer(axum::middleware::from_fn(read_small_bodies_first))
        .layer(axum::middleware::from_fn(haberci_kit::metrics::track_http))
        .layer(axum::middleware::map_response(no_store_by_default))
        .with_state(state);
    haberci_kit::http::with_request_ids(
        haberci_kit::http::harden(router, &settings.cors),
        haberci_kit::http::RequestIds::Accept,
    )
}

/// Bodies up to this size (by `Content-Length`) are read to their end before the request is
/// routed.
pub const READ_FIRST_MAX_BYTES: u64 = 64 * 1024;

/// Reads a small request body to its end before routing it, so that an answer given without
/// looking at the body (415 for a content type, 401, 404, 429, …) never leaves it unread.
///
/// Why: hyper closes an HTTP/1.1 connection whose request body was not read when the answer
/// went out. The gateway forwards a client's body as it arrives, so when the API answered
/// early, the gateway's write of the rest of the body met a closed connection and the client
/// got `502 backend_unavailable` instead of the API's answer (schemathesis found it:
/// `multipart/form-data` on `POST /v1/auth/login`). A larger body (an upload) is read by its
/// handler as it streams.
async fn read_small_bodies_first(request: axum::extract::Request, next: Next) -> Response {
    let length = request
        .headers()
        .get(header::CONTENT_LENGTH)
        .and_then(|value| value.to_str().ok())
        .and_then(|value| value.parse::<u64>().ok());
    let Some(length) = length.filter(|&n| n > 0 && n <= READ_FIRST_MAX_BYTES) else {
        return next.run(request).await;
    };
    let (parts, body) = request.into_parts();
    // `length` bounds the read (hyper enforces Content-Length framing as well).
    let limit = usize::try_from(length).unwrap_or(usize::MAX);
    match axum::body::to_bytes(body, limit).await {
        Ok(bytes) => {
            next.run(axum::extract::Request::from_parts(parts, Body::from(bytes)))
                .await
        }
        Err(_) => ApiError::InvalidField {
            field: None,
            message: "the request body ended before its Content-Length".into(),
        }
        .into_response(),
    }
}

/// API answers are per-user data: not cached unless a handler says otherwise.
async fn no_store_by_default(mut response: Response) -> Response {
    response
        .headers_mut()
        .entry(header::CACHE_CONTROL)
        .or_insert(HeaderValue::from_static("no-store"));
    response
}

/// Runs the API until `shutdown`: loads the access-token keys (and reloads them as they
/// change), opens the pool, Redis and the media store, binds `config.listen` and serves, with
/// the media collector alongside. A start-up failure (keys, media store, address) is an error
/// that says which.
pub async fn run(config: ApiConfig, shutdown: Shutdown) -> anyhow::Result<()> {
    let keys = KeyStore::load_dir(&config.jwt_key_dir, config.jwt_signing_kid.as_deref())
        .map_err(|err| anyhow::anyhow!("access-token keys (HABERCI_JWT_KEY_DIR): {err}"))?;
    let keys = Arc::new(keys);
    {
        let current = keys.current();
        tracing::info!(kids = ?current.set.kids(), signing = %current.set.signing_kid(), "access-token keys loaded");
    }
    tokio::spawn(crate::auth::keys::watch(
        keys.clone(),
        DEFAULT_KEY_POLL_INTERVAL,
        shutdown.clone(),
    ));
    if config.settings.internal_token.is_none() {
        tracing::warn!(
            "HABERCI_INTERNAL_TOKEN is not set: the gateways' internal API (/internal/v1/*) answers 404"
        );
    }
    let db = crate::db::connect_pool(&config.store.database_url, config.store.db_pool_size)?;
    let redis = crate::redis::connect(&config.store.redis_url)?;
    haberci_kit::metrics::serve_if_configured(config.metrics, shutdown.clone())
        .await
        .map_err(|err| anyhow::anyhow!("metrics listener (HABERCI_METRICS_ADDR): {err}"))?;
    let listener = tokio::net::TcpListener::bind(config.listen).await?;
    tracing::info!(addr = %listener.local_addr()?, "api listening");
    // A media store that cannot open (an unwritable directory, a malformed S3 setting) stops
    // start-up here, with its reason, rather than at the first upload.
    crate::media::Media::open(config.settings.media.clone())
        .map_err(|err| anyhow::anyhow!("media store {:?}: {err}", config.settings.media.store))?;
    let mut state = AppState::with_keys(db.clone(), redis, config.settings, keys);
    if let Some(replica) = &config.replica {
        let pool = crate::db::connect_pool(&replica.url, config.store.db_pool_size)?;
        state.reads = crate::replica::Replicas::with_replica(db, pool, replica.max_staleness);
        tokio::spawn(state.reads.clone().watch(shutdown.clone()));
        tracing::info!(
            max_staleness_ms = replica.max_staleness.as_millis() as u64,
            "reads that may lag go to the replica while it is fresh"
        );
    }
    tokio::spawn(crate::media::gc::run(state.media.clone(), state.db.clone()));
    let app = app(state);
    serve(listener, app, shutdown).await?;
    tracing::info!("api stopped");
    Ok(())
}

/// Serves `app` on `listener` until `shutdown`, recording each connection's peer address.
pub async fn serve(
    listener: tokio::net::TcpListener,
    app: Router,
    shutdown: Shutdown,
) -> std::io::Result<()> {
    axum::serve(
        listener,
        app.into_make_service_with_connect_info::<SocketAddr>(),
    )
    .with_graceful_shutdown(async move { shutdown.cancelled().await })
    .await
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

async fn method_not_allowed() -> ApiError {
    ApiError::MethodNotAllowed
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
