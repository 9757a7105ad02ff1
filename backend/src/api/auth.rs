//! `/v1/auth/*`: register, login, refresh (rotation), logout, sessions, JWKS.

use axum::Json;
use axum::extract::State;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use haberci_wire::SessionId;
use serde::{Deserialize, Deserializer, Serialize};
use time::OffsetDateTime;
use utoipa::ToSchema;

use super::extract::{ApiJson, ApiPath, Authenticated, ClientIp, UserAgent};
use super::users::UserView;
use super::{ApiError, AppState};
use crate::accounts::store::{self, InsertError, NewUser};
use crate::accounts::{DisplayName, Email, LoginName, Password, Username};
use crate::auth::audit::{self, LoginFailure};
use crate::auth::rate_limit::{Account, Bucket, Decision};
use crate::auth::sessions::{self, Issued, Origin, RefreshToken, Rotation};

/// `POST /v1/auth/register`.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct RegisterRequest {
    /// 3–32 of `a-z 0-9 _`, starting with a letter; case-insensitive (stored lowercase).
    #[schema(value_type = String, min_length = 3, max_length = 32, pattern = "^[A-Za-z][A-Za-z0-9_]{2,31}$", example = "ada_l")]
    pub username: Username,
    #[schema(value_type = String, format = Email, max_length = 254, example = "ada@example.com")]
    pub email: Email,
    /// 8–128 characters.
    #[schema(value_type = String, format = Password, min_length = 8, max_length = 128)]
    pub password: Password,
    /// 1–64 characters after trimming; no control characters, no bidirectional controls (U+202A–U+202E, U+2066–U+2069, LRM, RLM, ALM) and no invisible characters (zero-width space, word joiner, BOM, soft hyphen, Hangul fillers, tags); the zero-width joiner and non-joiner only between two non-ASCII characters (scripts and emoji sequences need them).
    #[schema(value_type = String, min_length = 1, max_length = 64, example = "Ada Lovelace")]
    pub display_name: DisplayName,
}

/// A password as typed at login: checked against the stored hash, not against today's policy.
#[derive(Debug)]
pub struct SubmittedPassword(String);

impl SubmittedPassword {
    pub const MAX: usize = 1024;
}

impl<'de> Deserialize<'de> for SubmittedPassword {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let text = String::deserialize(deserializer)?;
        if text.is_empty() || text.chars().count() > Self::MAX {
            return Err(serde::de::Error::custom(
                "password must be 1-1024 characters",
            ));
        }
        Ok(SubmittedPassword(text))
    }
}

/// `POST /v1/auth/login`.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct LoginRequest {
    /// A username, or an email (anything containing `@`).
    #[schema(value_type = String, min_length = 3, max_length = 254, pattern = "^([A-Za-z][A-Za-z0-9_]{2,31}|[^@ ]+@[A-Za-z0-9.-]+[.][A-Za-z]{2,})$", example = "ada_l")]
    pub username_or_email: LoginName,
    #[schema(value_type = String, format = Password, min_length = 1, max_length = 1024)]
    pub password: SubmittedPassword,
}

/// `POST /v1/auth/refresh`.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct RefreshRequest {
    /// The refresh token from the last login or refresh; spent by this call.
    #[schema(min_length = 1, max_length = 128)]
    pub refresh_token: String,
}

/// A fresh pair of tokens.
#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct Tokens {
    /// Always `Bearer`.
    pub token_type: &'static str,
    /// An EdDSA-signed JWT (`sub`, `sid`, `iat`, `exp`; `kid` in the header).
    pub access_token: String,
    /// Seconds until the access token expires.
    pub expires_in: i64,
    /// Opaque, single use: present it once to `/v1/auth/refresh`.
    pub refresh_token: String,
    /// When the refresh token (and, unless refreshed, the session) expires.
    #[serde(with = "time::serde::rfc3339")]
    #[schema(value_type = String, format = DateTime)]
    pub refresh_expires_at: OffsetDateTime,
    #[schema(value_type = String, format = Uuid)]
    pub session_id: SessionId,
}

/// `201` of `POST /v1/auth/register`.
#[derive(Debug, Serialize, ToSchema)]
pub struct Registered {
    pub user: UserView,
    pub tokens: Tokens,
}

/// One of my sessions (devices).
#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct SessionView {
    #[schema(value_type = String, format = Uuid)]
    pub id: SessionId,
    pub user_agent: Option<String>,
    /// The client address of the last login or refresh.
    pub ip: Option<String>,
    #[serde(with = "time::serde::rfc3339")]
    #[schema(value_type = String, format = DateTime)]
    pub created_at: OffsetDateTime,
    #[serde(with = "time::serde::rfc3339")]
    #[schema(value_type = String, format = DateTime)]
    pub last_used_at: OffsetDateTime,
    #[serde(with = "time::serde::rfc3339")]
    #[schema(value_type = String, format = DateTime)]
    pub expires_at: OffsetDateTime,
    /// Whether this is the session of the token making the request.
    pub current: bool,
}

/// Public keys verifying access tokens (RFC 7517).
#[derive(Debug, Serialize, ToSchema)]
pub struct JwksView {
    pub keys: Vec<JwkView>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct JwkView {
    /// `OKP`.
    pub kty: String,
    /// `Ed25519`.
    pub crv: String,
    /// The public key, base64url.
    pub x: String,
    pub kid: String,
    /// `EdDSA`.
    pub alg: Option<String>,
    /// `sig`.
    #[serde(rename = "use")]
    pub use_: Option<String>,
}

/// What a rate-limit check does when Redis cannot answer (docs/OPERATIONS.md, "Redis outage").
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum WhenRedisIsDown {
    /// Fail closed: `503 unavailable` with `Retry-After`. For login and registration, whose
    /// limits are what stops password guessing and account-creation floods.
    Refuse,
    /// Fail open, with a warning. For refresh: refresh tokens are 256-bit random (nothing to
    /// guess), so its limits only shed load, and refusing would log every client out once its
    /// access token expired.
    Allow,
}

async fn limit(
    state: &AppState,
    buckets: &[Bucket],
    when_down: WhenRedisIsDown,
) -> Result<(), ApiError> {
    match state.auth.limiter.check(&state.redis, buckets).await {
        Ok(Decision::Allowed) => Ok(()),
        Ok(Decision::Limited { retry_after }) => Err(ApiError::RateLimited { retry_after }),
        Err(err) => match when_down {
            WhenRedisIsDown::Refuse => {
                tracing::warn!(%err, "rate limiter unavailable (redis); refusing the request");
                Err(ApiError::Unavailable("rate limiter"))
            }
            WhenRedisIsDown::Allow => {
                tracing::warn!(%err, "rate limiter unavailable (redis); allowing the request");
                Ok(())
            }
        },
    }
}

fn tokens(state: &AppState, issued: &Issued) -> Tokens {
    let (access_token, expires_in) = state.auth.access_token(issued.user, issued.session);
    Tokens {
        token_type: "Bearer",
        access_token,
        expires_in,
        refresh_token: issued.refresh_token.as_str().to_owned(),
        refresh_expires_at: issued.expires_at,
        session_id: issued.session,
    }
}

/// Tokens must not be cached by anything between the API and the client.
fn no_store(mut response: Response) -> Response {
    response
        .headers_mut()
        .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    response
}

/// Create an account and log it in.
#[utoipa::path(post, path = "/v1/auth/register", tag = "auth",
    request_body = RegisterRequest,
    responses(
        (status = 201, description = "Registered and logged in", body = Registered),
        (status = 409, description = "Username or email taken (`field` says which)", body = super::ErrorBody),
        (status = 429, description = "Too many registrations from this address or for this username or email", body = super::ErrorBody),
        (status = 503, description = "`unavailable`: a dependency is down or password hashing is saturated; retry after `Retry-After`", body = super::ErrorBody),
    ))]
pub async fn register(
    State(state): State<AppState>,
    ClientIp(ip): ClientIp,
    UserAgent(user_agent): UserAgent,
    ApiJson(request): ApiJson<RegisterRequest>,
) -> Result<Response, ApiError> {
    let rates = &state.auth.settings.limits;
    limit(
        &state,
        &[
            Bucket::ip("register", ip, rates.register_ip),
            Bucket::account(
                "register",
                Account::Name(request.username.as_str()),
                rates.register_account,
            ),
            Bucket::account(
                "register",
                Account::Name(request.email.as_str()),
                rates.register_account,
            ),
        ],
        WhenRedisIsDown::Refuse,
    )
    .await?;
    let password_hash = state.auth.passwords.hash(&request.password).await?;
    let mut tx = state.db.begin().await?;
    let new = NewUser {
        id: crate::db::new_id(),
        username: &request.username,
        email: &request.email,
        display_name: &request.display_name,
        password_hash: &password_hash,
    };
    let user = match store::insert_user(&mut tx, &new).await {
        Ok(user) => user,
        Err(InsertError::Taken(field)) => return Err(ApiError::Conflict { field }),
        Err(InsertError::Db(err)) => return Err(err.into()),
    };
    let origin = Origin {
        ip,
        user_agent: user_agent.as_deref(),
    };
    let issued =
        sessions::create(&mut tx, user.id, &origin, state.auth.settings.refresh_ttl).await?;
    tx.commit().await?;
    let body = Registered {
        user: UserView::from(user),
        tokens: tokens(&state, &issued),
    };
    Ok(no_store((StatusCode::CREATED, Json(body)).into_response()))
}

/// Log in with a username or email and a password.
#[utoipa::path(post, path = "/v1/auth/login", tag = "auth",
    request_body = LoginRequest,
    responses(
        (status = 200, description = "Logged in: a new session", body = Tokens),
        (status = 401, description = "`invalid_credentials`: unknown user or wrong password", body = super::ErrorBody),
        (status = 429, description = "Too many attempts from this address or for this account", body = super::ErrorBody),
        (status = 503, description = "`unavailable`: a dependency is down or password hashing is saturated; retry after `Retry-After`", body = super::ErrorBody),
    ))]
pub async fn login(
    State(state): State<AppState>,
    ClientIp(ip): ClientIp,
    UserAgent(user_agent): UserAgent,
    ApiJson(request): ApiJson<LoginRequest>,
) -> Result<Response, ApiError> {
    let rates = &state.auth.settings.limits;
    let name = request.username_or_email.as_str();
    // Resolved before the limit so that an account's username and email draw on one budget.
    let found = store::credentials(&state.db, &request.username_or_email).await?;
    let account = match &found {
        Some((user, _)) => Account::User(*user),
        None => Account::Name(name),
    };
    let buckets = [
        Bucket::ip("login", ip, rates.login_ip),
        Bucket::account("login", account, rates.login_account),
    ];
    if let Err(err) = limit(&state, &buckets, WhenRedisIsDown::Refuse).await {
        if matches!(err, ApiError::RateLimited { .. }) {
            audit::login_failed(ip, name, LoginFailure::RateLimited);
        }
        return Err(err);
    }
    let (user, stored) = match found {
        Some((user, hash)) => (Some(user), Some(hash)),
        None => (None, None),
    };
    // Invariant: an unknown user costs a full verification too, and both failures give the
    // same answer, so neither timing nor response tells whether the account exists.
    let matched = state
        .auth
        .passwords
        .verify(&request.password.0, stored)
        .await?;
    let Some(user) = user.filter(|_| matched) else {
        audit::login_failed(ip, name, LoginFailure::BadCredentials);
        return Err(ApiError::InvalidCredentials);
    };
    let origin = Origin {
        ip,
        user_agent: user_agent.as_deref(),
    };
    let mut tx = state.db.begin().await?;
    let issued = sessions::create(&mut tx, user, &origin, state.auth.settings.refresh_ttl).await?;
    tx.commit().await?;
    Ok(no_store(Json(tokens(&state, &issued)).into_response()))
}

/// Spend a refresh token for a new access token and the next refresh token. Presenting a spent
/// refresh token revokes its whole session (`refresh_token_reused`).
#[utoipa::path(post, path = "/v1/auth/refresh", tag = "auth",
    request_body = RefreshRequest,
    responses(
        (status = 200, description = "Rotated", body = Tokens),
        (status = 401, description = "`invalid_refresh_token`, or `refresh_token_reused` (the session is now revoked)", body = super::ErrorBody),
        (status = 429, description = "Too many refreshes from this address or for this account", body = super::ErrorBody),
    ))]
pub async fn refresh(
    State(state): State<AppState>,
    ClientIp(ip): ClientIp,
    UserAgent(user_agent): UserAgent,
    ApiJson(request): ApiJson<RefreshRequest>,
) -> Result<Response, ApiError> {
    let rates = &state.auth.settings.limits;
    limit(
        &state,
        &[Bucket::ip("refresh", ip, rates.refresh_ip)],
        WhenRedisIsDown::Allow,
    )
    .await?;
    let token = request.refresh_token.as_str();
    if token.len() != RefreshToken::LEN {
        return Err(ApiError::InvalidRefreshToken);
    }
    let Some(owner) = sessions::token_owner(&state.db, token).await? else {
        return Err(ApiError::InvalidRefreshToken);
    };
    limit(
        &state,
        &[Bucket::account(
            "refresh",
            Account::User(owner),
            rates.refresh_account,
        )],
        WhenRedisIsDown::Allow,
    )
    .await?;
    let origin = Origin {
        ip,
        user_agent: user_agent.as_deref(),
    };
    match sessions::rotate(&state.db, token, &origin, state.auth.settings.refresh_ttl).await? {
        Rotation::Rotated(issued) => Ok(no_store(Json(tokens(&state, &issued)).into_response())),
        Rotation::Reused(revoked) => {
            for &(session, user) in &revoked.sessions {
                audit::refresh_reused(ip, user, session);
            }
            sessions::announce(&state.redis, &revoked, state.auth.revoked_marker_ttl()).await;
            Err(ApiError::RefreshTokenReused)
        }
        Rotation::Invalid => Err(ApiError::InvalidRefreshToken),
    }
}

/// End the session of this access token.
#[utoipa::path(post, path = "/v1/auth/logout", tag = "auth",
    security(("bearer" = [])),
    responses((status = 204, description = "The session is revoked")))]
pub async fn logout(
    State(state): State<AppState>,
    me: Authenticated,
) -> Result<StatusCode, ApiError> {
    let revoked = sessions::revoke_one(
        &state.db,
        me.user,
        me.session,
        sessions::RevokeReason::Logout,
    )
    .await?;
    sessions::announce(&state.redis, &revoked, state.auth.revoked_marker_ttl()).await;
    Ok(StatusCode::NO_CONTENT)
}

/// End every session of this user, this one included.
#[utoipa::path(post, path = "/v1/auth/logout-all", tag = "auth",
    security(("bearer" = [])),
    responses((status = 204, description = "Every session is revoked")))]
pub async fn logout_all(
    State(state): State<AppState>,
    me: Authenticated,
) -> Result<StatusCode, ApiError> {
    let revoked = sessions::revoke_all(&state.db, me.user).await?;
    sessions::announce(&state.redis, &revoked, state.auth.revoked_marker_ttl()).await;
    Ok(StatusCode::NO_CONTENT)
}

/// My live sessions, newest first.
#[utoipa::path(get, path = "/v1/auth/sessions", tag = "auth",
    security(("bearer" = [])),
    responses((status = 200, description = "Live sessions", body = Vec<SessionView>)))]
pub async fn list_sessions(
    State(state): State<AppState>,
    me: Authenticated,
) -> Result<Json<Vec<SessionView>>, ApiError> {
    let rows = sessions::list(&state.db, me.user).await?;
    Ok(Json(
        rows.into_iter()
            .map(|row| SessionView {
                current: row.id == me.session,
                id: row.id,
                user_agent: row.user_agent,
                ip: row.ip,
                created_at: row.created_at,
                last_used_at: row.last_used_at,
                expires_at: row.expires_at,
            })
            .collect(),
    ))
}

/// Revoke one of my sessions.
#[utoipa::path(delete, path = "/v1/auth/sessions/{id}", tag = "auth",
    security(("bearer" = [])),
    params(("id" = String, Path, format = Uuid, description = "A session id from GET /v1/auth/sessions")),
    responses(
        (status = 204, description = "Revoked"),
        (status = 404, description = "No live session of mine has this id", body = super::ErrorBody),
    ))]
pub async fn revoke_session(
    State(state): State<AppState>,
    me: Authenticated,
    ApiPath(id): ApiPath<SessionId>,
) -> Result<StatusCode, ApiError> {
    let revoked =
        sessions::revoke_one(&state.db, me.user, id, sessions::RevokeReason::Revoked).await?;
    if revoked.sessions.is_empty() {
        return Err(ApiError::NotFound);
    }
    sessions::announce(&state.redis, &revoked, state.auth.revoked_marker_ttl()).await;
    Ok(StatusCode::NO_CONTENT)
}

/// The public keys that verify access tokens: every key in this backend's key directory
/// (`HABERCI_JWT_KEY_DIR`), as loaded now. The set is reloaded without a restart, on SIGHUP and
/// when the directory changes (polled every few seconds), so a key added there is published
/// here within one poll interval; an invalid directory keeps the previous set.
///
/// Today only backends verify access tokens, each with its own key directory; nothing fetches
/// this document yet. Gateways verifying tokens themselves (#6) will fetch it and refetch it on
/// an unknown `kid` (it is cacheable for 60 s). See docs/OPERATIONS.md for rotation.
#[utoipa::path(get, path = "/v1/auth/jwks", tag = "auth",
    responses((status = 200, description = "JSON Web Key Set", body = JwksView)))]
pub async fn jwks(State(state): State<AppState>) -> Response {
    let jwks = state.auth.keys.current().set.jwks();
    let body = JwksView {
        keys: jwks
            .keys
            .into_iter()
            .map(|k| JwkView {
                kty: k.kty,
                crv: k.crv,
                x: k.x,
                kid: k.kid,
                alg: k.alg,
                use_: k.use_,
            })
            .collect(),
    };
    let mut response = Json(body).into_response();
    response.headers_mut().insert(
        header::CACHE_CONTROL,
        HeaderValue::from_static("public, max-age=60"),
    );
    response
}
