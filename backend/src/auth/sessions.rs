//! Sessions and refresh tokens: Postgres is the truth, Redis a cache of it, and revocations
//! are announced on Redis pub/sub.
//!
//! - A session is created at login/registration with a refresh-token family. Refresh tokens are
//!   256 bits from the system CSPRNG, given to the client once and stored only as SHA-256.
//! - [`rotate`] spends a refresh token and issues the next one of its family. Presenting a token
//!   that was already spent means it was copied: the whole family (the session) is revoked.
//! - Cache: `sess:{session_id}` → JSON `{"user_id","revoked","expires_at"}`. Active entries
//!   live `min(session cache TTL, session expiry)`; a revocation overwrites the entry with
//!   `revoked: true` for as long as an access token of that session can still verify. A missing
//!   entry (expired, evicted, `FLUSHALL`) or an unreachable Redis falls back to Postgres.
//!   Invariant: a reader fills the cache only with `SET NX`, a revoker always overwrites, so a
//!   reader racing a revocation can never put "active" back over "revoked".
//! - Every revocation is published on [`REVOCATION_CHANNEL`] as
//!   `{"session_id","user_id","reason"}` so gateways can close that session's connections.

use std::net::IpAddr;
use std::time::Duration;

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use fred::clients::Client;
use fred::interfaces::{KeysInterface, PubsubInterface};
use fred::types::{Expiration, SetOptions};
use haberci_seam::revocation::{self, Announcement};
use haberci_wire::{SessionId, UserId};
use ring::rand::{SecureRandom, SystemRandom};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use sqlx::PgPool;
use time::OffsetDateTime;

use crate::accounts::FamilyId;

/// Redis key of a session's cache entry.
pub fn cache_key(session: SessionId) -> String {
    format!("sess:{session}")
}

/// A refresh token as handed to the client: 32 random bytes, base64url (43 characters).
pub struct RefreshToken(String);

impl RefreshToken {
    pub const LEN: usize = 43;

    fn generate() -> Result<RefreshToken, ring::error::Unspecified> {
        let mut bytes = [0u8; 32];
        SystemRandom::new().fill(&mut bytes)?;
        Ok(RefreshToken(URL_SAFE_NO_PAD.encode(bytes)))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    fn hash(text: &str) -> Vec<u8> {
        Sha256::digest(text.as_bytes()).to_vec()
    }
}

pub use haberci_seam::revocation::RevokeReason;

/// Where a session came from.
pub struct Origin<'a> {
    pub ip: IpAddr,
    pub user_agent: Option<&'a str>,
}

/// A session just created or refreshed, with the refresh token to hand out.
pub struct Issued {
    pub session: SessionId,
    pub user: UserId,
    pub refresh_token: RefreshToken,
    pub expires_at: OffsetDateTime,
}

#[derive(Debug, thiserror::Error)]
pub enum SessionError {
    #[error(transparent)]
    Db(#[from] sqlx::Error),
    #[error("no randomness")]
    Random,
}

fn user_agent(origin: &Origin<'_>) -> Option<String> {
    // Stored for the user's device list only; capped to the column's limit.
    origin.user_agent.map(|ua| ua.chars().take(256).collect())
}

/// Creates a session and its first refresh token (call inside the transaction that needs it).
pub async fn create(
    tx: &mut sqlx::PgConnection,
    user: UserId,
    origin: &Origin<'_>,
    ttl: Duration,
) -> Result<Issued, SessionError> {
    let session: SessionId = crate::db::new_id();
    let family = FamilyId::generate();
    let expires_at = OffsetDateTime::now_utc() + ttl;
    let token = RefreshToken::generate().map_err(|_| SessionError::Random)?;
    sqlx::query(
        "INSERT INTO sessions (id, user_id, family_id, user_agent, ip, expires_at)
         VALUES ($1, $2, $3, $4, $5::inet, $6)",
    )
    .bind(session)
    .bind(user)
    .bind(family)
    .bind(user_agent(origin))
    .bind(origin.ip.to_string())
    .bind(expires_at)
    .execute(&mut *tx)
    .await?;
    insert_token(tx, &token, session, family, expires_at).await?;
    Ok(Issued {
        session,
        user,
        refresh_token: token,
        expires_at,
    })
}

async fn insert_token(
    tx: &mut sqlx::PgConnection,
    token: &RefreshToken,
    session: SessionId,
    family: FamilyId,
    expires_at: OffsetDateTime,
) -> Result<(), sqlx::Error> {
    sqlx::query(
        "INSERT INTO refresh_tokens (token_hash, session_id, family_id, expires_at)
         VALUES ($1, $2, $3, $4)",
    )
    .bind(RefreshToken::hash(&token.0))
    .bind(session)
    .bind(family)
    .bind(expires_at)
    .execute(&mut *tx)
    .await?;
    Ok(())
}

/// The user a refresh token belongs to, without spending it (for per-account rate limits).
pub async fn token_owner(db: &PgPool, token: &str) -> Result<Option<UserId>, sqlx::Error> {
    sqlx::query_scalar::<_, UserId>(
        "SELECT s.user_id FROM refresh_tokens t JOIN sessions s ON s.id = t.session_id
         WHERE t.token_hash = $1",
    )
    .bind(RefreshToken::hash(token))
    .fetch_optional(db)
    .await
}

pub enum Rotation {
    /// The token was live: here is the next one.
    Rotated(Issued),
    /// The token had been spent already: its family is now revoked.
    Reused(Revoked),
    /// Unknown, expired, or its session is over.
    Invalid,
}

#[derive(sqlx::FromRow)]
struct TokenRow {
    session_id: SessionId,
    family_id: FamilyId,
    user_id: UserId,
    token_expires_at: OffsetDateTime,
    used_at: Option<OffsetDateTime>,
    session_expires_at: OffsetDateTime,
    revoked_at: Option<OffsetDateTime>,
}

/// Spends `token` and issues the next of its family, in one transaction. The token row is
/// locked (`FOR UPDATE`), so of two concurrent uses one rotates and the other is a reuse.
pub async fn rotate(
    db: &PgPool,
    token: &str,
    origin: &Origin<'_>,
    ttl: Duration,
) -> Result<Rotation, SessionError> {
    let mut tx = db.begin().await?;
    let row = sqlx::query_as::<_, TokenRow>(
        "SELECT t.session_id, t.family_id, s.user_id, t.expires_at AS token_expires_at, t.used_at,
                s.expires_at AS session_expires_at, s.revoked_at
         FROM refresh_tokens t JOIN sessions s ON s.id = t.session_id
         WHERE t.token_hash = $1
         FOR UPDATE OF t, s",
    )
    .bind(RefreshToken::hash(token))
    .fetch_optional(&mut *tx)
    .await?;
    let Some(row) = row else {
        return Ok(Rotation::Invalid);
    };
    let now = OffsetDateTime::now_utc();
    if row.used_at.is_some() {
        // Invariant: a spent token presented again revokes its family, even when the session
        // was revoked already (then there is nothing left to revoke, and nothing to announce).
        let revoked = revoke_where(
            &mut tx,
            "family_id = $1",
            row.family_id.0,
            RevokeReason::RefreshReuse,
        )
        .await?;
        tx.commit().await?;
        return Ok(Rotation::Reused(revoked));
    }
    if row.revoked_at.is_some() || row.session_expires_at <= now || row.token_expires_at <= now {
        return Ok(Rotation::Invalid);
    }
    sqlx::query("UPDATE refresh_tokens SET used_at = now() WHERE token_hash = $1")
        .bind(RefreshToken::hash(token))
        .execute(&mut *tx)
        .await?;
    // Sliding expiry: each refresh extends the session by the full refresh lifetime.
    let expires_at = now + ttl;
    sqlx::query(
        "UPDATE sessions SET last_used_at = now(), expires_at = $2, ip = $3::inet,
                user_agent = COALESCE($4, user_agent)
         WHERE id = $1",
    )
    .bind(row.session_id)
    .bind(expires_at)
    .bind(origin.ip.to_string())
    .bind(user_agent(origin))
    .execute(&mut *tx)
    .await?;
    let next = RefreshToken::generate().map_err(|_| SessionError::Random)?;
    insert_token(&mut tx, &next, row.session_id, row.family_id, expires_at).await?;
    tx.commit().await?;
    Ok(Rotation::Rotated(Issued {
        session: row.session_id,
        user: row.user_id,
        refresh_token: next,
        expires_at,
    }))
}

/// Sessions that a revocation ended (already committed in Postgres), to announce.
#[derive(Debug, Default)]
pub struct Revoked {
    pub sessions: Vec<(SessionId, UserId)>,
    pub reason: Option<RevokeReason>,
}

async fn revoke_where(
    tx: &mut sqlx::PgConnection,
    condition: &str,
    value: uuid::Uuid,
    reason: RevokeReason,
) -> Result<Revoked, sqlx::Error> {
    let sessions = sqlx::query_as::<_, (SessionId, UserId)>(&format!(
        "UPDATE sessions SET revoked_at = now(), revoked_reason = $2
         WHERE {condition} AND revoked_at IS NULL
         RETURNING id, user_id"
    ))
    .bind(value)
    .bind(reason.as_str())
    .fetch_all(&mut *tx)
    .await?;
    Ok(Revoked {
        sessions,
        reason: Some(reason),
    })
}

/// Revokes one session of `user`. Empty when it is not theirs or already over.
pub async fn revoke_one(
    db: &PgPool,
    user: UserId,
    session: SessionId,
    reason: RevokeReason,
) -> Result<Revoked, sqlx::Error> {
    let sessions = sqlx::query_as::<_, (SessionId, UserId)>(
        "UPDATE sessions SET revoked_at = now(), revoked_reason = $3
         WHERE id = $1 AND user_id = $2 AND revoked_at IS NULL
         RETURNING id, user_id",
    )
    .bind(session)
    .bind(user)
    .bind(reason.as_str())
    .fetch_all(db)
    .await?;
    Ok(Revoked {
        sessions,
        reason: Some(reason),
    })
}

/// Revokes every live session of `user`.
pub async fn revoke_all(db: &PgPool, user: UserId) -> Result<Revoked, sqlx::Error> {
    let mut conn = db.acquire().await?;
    revoke_where(
        &mut conn,
        "user_id = $1",
        user.as_uuid(),
        RevokeReason::LogoutAll,
    )
    .await
}

/// Revokes every session of a suspended account (reason `revoked`).
pub async fn revoke_suspended(db: &PgPool, user: UserId) -> Result<Revoked, sqlx::Error> {
    let mut conn = db.acquire().await?;
    revoke_where(
        &mut conn,
        "user_id = $1",
        user.as_uuid(),
        RevokeReason::Revoked,
    )
    .await
}

/// Marks revoked sessions in the cache and publishes them. Postgres already holds the
/// revocation; a Redis failure here is logged, and the cache's TTL bounds how long a stale
/// "active" entry can outlive it.
///
/// Invariant: never waits on an unreachable Redis for more than one command timeout
/// ([`crate::redis::DEFAULT_COMMAND_TIMEOUT`]): at the first failure the remaining sessions are
/// skipped (and counted in one log line) instead of each timing out in turn.
pub async fn announce(redis: &Client, revoked: &Revoked, marker_ttl: Duration) {
    let Some(reason) = revoked.reason else {
        return;
    };
    crate::metrics::sessions_revoked(reason.as_str(), revoked.sessions.len());
    let px = i64::try_from(marker_ttl.as_millis())
        .unwrap_or(i64::MAX)
        .max(1);
    for (done, &(session_id, user_id)) in revoked.sessions.iter().enumerate() {
        let entry = Cached {
            user_id,
            revoked: true,
            expires_at: 0,
        };
        let set: Result<(), _> = redis
            .set(
                cache_key(session_id),
                entry.to_json(),
                Some(Expiration::PX(px)),
                None,
                false,
            )
            .await;
        let published = match set {
            Ok(()) => {
                let message = announcement(session_id, user_id, reason);
                redis
                    .publish::<i64, _, _>(revocation::CHANNEL, message)
                    .await
                    .map(|_| ())
            }
            Err(err) => Err(err),
        };
        if let Err(err) = published {
            tracing::error!(
                %err,
                session = %session_id,
                skipped = revoked.sessions.len() - done - 1,
                "redis unavailable: revocation not cached or not published (Postgres has it)"
            );
            return;
        }
    }
}

/// The JSON announced on [`revocation::CHANNEL`].
fn announcement(session_id: SessionId, user_id: UserId, reason: RevokeReason) -> String {
    Announcement {
        session_id,
        user_id,
        reason,
    }
    .to_json()
}

#[derive(Debug, Serialize, Deserialize)]
struct Cached {
    user_id: UserId,
    revoked: bool,
    /// Unix seconds.
    expires_at: i64,
}

impl Cached {
    fn to_json(&self) -> String {
        serde_json::to_string(self).unwrap_or_default()
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Status {
    Active(UserId),
    Revoked,
    Expired,
    Unknown,
}

/// Why a session may not act for a user.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NotUsable {
    /// Active, but another user's.
    OtherUser,
    /// Revoked, expired, or unknown.
    NotActive,
}

/// Whether `session` may act for `user` now ([`status`], and its owner checked).
pub async fn usable_by(
    db: &PgPool,
    redis: &Client,
    session: SessionId,
    user: UserId,
    cache_ttl: Duration,
) -> Result<Result<(), NotUsable>, sqlx::Error> {
    Ok(match status(db, redis, session, cache_ttl).await? {
        Status::Active(owner) if owner == user => Ok(()),
        Status::Active(_) => Err(NotUsable::OtherUser),
        Status::Revoked | Status::Expired | Status::Unknown => Err(NotUsable::NotActive),
    })
}

/// Whether `session` may be used now: from the cache, else from Postgres (then cached).
pub async fn status(
    db: &PgPool,
    redis: &Client,
    session: SessionId,
    cache_ttl: Duration,
) -> Result<Status, sqlx::Error> {
    let key = cache_key(session);
    let now = OffsetDateTime::now_utc().unix_timestamp();
    // Whether to fill the cache after asking Postgres: not when Redis just failed, so an
    // outage costs one command timeout per request, not two.
    let mut fill = true;
    match redis.get::<Option<String>, _>(&key).await {
        Ok(Some(json)) => match serde_json::from_str::<Cached>(&json) {
            Ok(entry) if entry.revoked => return Ok(Status::Revoked),
            Ok(entry) if entry.expires_at <= now => return Ok(Status::Expired),
            Ok(entry) => return Ok(Status::Active(entry.user_id)),
            Err(err) => tracing::warn!(%err, %key, "unreadable session cache entry"),
        },
        Ok(None) => {}
        Err(err) => {
            fill = false;
            tracing::warn!(%err, "session cache unavailable; asking Postgres");
        }
    }
    let row = sqlx::query_as::<_, (UserId, OffsetDateTime, Option<OffsetDateTime>)>(
        "SELECT user_id, expires_at, revoked_at FROM sessions WHERE id = $1",
    )
    .bind(session)
    .fetch_optional(db)
    .await?;
    let Some((user_id, expires_at, revoked_at)) = row else {
        return Ok(Status::Unknown);
    };
    let expires_at = expires_at.unix_timestamp();
    let status = if revoked_at.is_some() {
        Status::Revoked
    } else if expires_at <= now {
        Status::Expired
    } else {
        Status::Active(user_id)
    };
    if let (Status::Active(_), true) = (status, fill) {
        let ttl = cache_ttl
            .as_secs()
            .min(u64::try_from(expires_at - now).unwrap_or(1))
            .max(1);
        let entry = Cached {
            user_id,
            revoked: false,
            expires_at,
        };
        let set: Result<Option<String>, _> = redis
            .set(
                &key,
                entry.to_json(),
                Some(Expiration::EX(i64::try_from(ttl).unwrap_or(1))),
                Some(SetOptions::NX),
                false,
            )
            .await;
        if let Err(err) = set {
            tracing::warn!(%err, "could not fill the session cache");
        }
    }
    Ok(status)
}

/// One row of `GET /auth/sessions`.
#[derive(Debug, sqlx::FromRow)]
pub struct SessionRecord {
    pub id: SessionId,
    pub user_agent: Option<String>,
    pub ip: Option<String>,
    pub created_at: OffsetDateTime,
    pub last_used_at: OffsetDateTime,
    pub expires_at: OffsetDateTime,
}

/// The live sessions of `user`, newest first.
pub async fn list(db: &PgPool, user: UserId) -> Result<Vec<SessionRecord>, sqlx::Error> {
    sqlx::query_as::<_, SessionRecord>(
        "SELECT id, user_agent, host(ip) AS ip, created_at, last_used_at, expires_at
         FROM sessions
         WHERE user_id = $1 AND revoked_at IS NULL AND expires_at > now()
         ORDER BY created_at DESC",
    )
    .bind(user)
    .fetch_all(db)
    .await
}

/// How often the worker prunes (docs/OPERATIONS.md, "Pruning").
pub const DEFAULT_PRUNE_INTERVAL: Duration = Duration::from_secs(5 * 60);
/// How long a refresh token is kept after it expired or its session ended: a spent token
/// presented within this time still counts as reuse (logged, family revoked) rather than
/// unknown.
pub const DEFAULT_REFRESH_TOKEN_GRACE: Duration = Duration::from_secs(7 * 24 * 3600);
/// How long a revoked or expired session row is kept (for the user's and the operator's
/// history) before it is deleted with its remaining refresh tokens.
pub const DEFAULT_SESSION_RETENTION: Duration = Duration::from_secs(30 * 24 * 3600);
/// Rows one `DELETE` removes at most, so a pass never holds many locks or a long transaction.
pub const DEFAULT_PRUNE_BATCH: u32 = 1000;
/// Batches per table and pass; what is left waits for the next pass.
pub const MAX_PRUNE_BATCHES: u32 = 100;

/// What a pruning pass may delete: rows that ended before these instants.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PruneCutoffs {
    /// Refresh tokens that expired, or whose session was revoked or expired, before this.
    pub tokens_before: OffsetDateTime,
    /// Sessions revoked or expired before this (their remaining tokens go with them).
    pub sessions_before: OffsetDateTime,
}

impl PruneCutoffs {
    pub fn at(now: OffsetDateTime, token_grace: Duration, session_retention: Duration) -> Self {
        PruneCutoffs {
            tokens_before: now - token_grace,
            sessions_before: now - session_retention,
        }
    }
}

/// Rows a pruning pass deleted.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Pruned {
    pub refresh_tokens: u64,
    pub sessions: u64,
}

impl Pruned {
    pub fn is_empty(&self) -> bool {
        self.refresh_tokens == 0 && self.sessions == 0
    }
}

/// Deletes refresh tokens and sessions that ended before `cutoffs`, in `DELETE`s of at most
/// `batch` rows (up to [`MAX_PRUNE_BATCHES`] each). Rows locked by a concurrent refresh are
/// skipped (`SKIP LOCKED`), so several workers may prune at once.
///
/// Invariant: only rows that can no longer authenticate anything are deleted. A token is
/// deleted only once it expired, or its session ended, more than the grace period ago; a
/// session only once it was revoked or expired more than the retention period ago.
pub async fn prune(db: &PgPool, cutoffs: PruneCutoffs, batch: u32) -> Result<Pruned, sqlx::Error> {
    let batch = i64::from(batch.max(1));
    let mut pruned = Pruned::default();
    for _ in 0..MAX_PRUNE_BATCHES {
        let deleted = sqlx::query(
            "DELETE FROM refresh_tokens WHERE token_hash IN (
                 SELECT t.token_hash FROM refresh_tokens t JOIN sessions s ON s.id = t.session_id
                 WHERE t.expires_at < $1 OR s.revoked_at < $1 OR s.expires_at < $1
                 LIMIT $2
                 FOR UPDATE OF t SKIP LOCKED)",
        )
        .bind(cutoffs.tokens_before)
        .bind(batch)
        .execute(db)
        .await?
        .rows_affected();
        pruned.refresh_tokens += deleted;
        if deleted < batch.unsigned_abs() {
            break;
        }
    }
    for _ in 0..MAX_PRUNE_BATCHES {
        let deleted = sqlx::query(
            "DELETE FROM sessions WHERE id IN (
                 SELECT id FROM sessions
                 WHERE revoked_at < $1 OR expires_at < $1
                 LIMIT $2
                 FOR UPDATE SKIP LOCKED)",
        )
        .bind(cutoffs.sessions_before)
        .bind(batch)
        .execute(db)
        .await?
        .rows_affected();
        pruned.sessions += deleted;
        if deleted < batch.unsigned_abs() {
            break;
        }
    }
    Ok(pruned)
}
