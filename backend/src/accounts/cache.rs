//! The profile cache: `GET /v1/users/{username}` reads a user's row through Redis
//! (`profile:{username}`, JSON, [`TTL`]) instead of Postgres.
//!
//! Invalidation: every change to what a profile shows deletes the key after its commit —
//! `PATCH /v1/me`, a follow, unfollow, approval or block (both users' counts), a post or a
//! deleted post (the author's count), a suspension ([`Profiles::forget`]). A read racing an
//! invalidation can store the row it read before the change; the TTL bounds how long.
//! Redis being away is no error: reads go to Postgres, and the TTL bounds what a failed delete
//! leaves behind.
//!
//! The hit ratio is measurable: every answer says `x-haberci-cache: hit|miss`, and the
//! process counts both ([`Profiles::stats`], `GET /internal/v1/stats`).

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use fred::clients::Client;
use fred::interfaces::KeysInterface;
use fred::types::Expiration;
use haberci_wire::UserId;
use sqlx::PgPool;

use super::Username;
use super::store::{self, UserRecord};

/// How long a cached profile lives: also the longest a racing read can keep a stale one.
pub const TTL: Duration = Duration::from_secs(60);

fn key(username: &str) -> String {
    format!("profile:{username}")
}

/// Hits and misses since the process started.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq, serde::Serialize)]
pub struct Stats {
    pub hits: u64,
    pub misses: u64,
}

#[derive(Clone, Default)]
pub struct Profiles {
    hits: Arc<AtomicU64>,
    misses: Arc<AtomicU64>,
}

/// Whether an answer came from the cache.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Source {
    Hit,
    Miss,
}

impl Profiles {
    pub fn stats(&self) -> Stats {
        Stats {
            hits: self.hits.load(Ordering::Relaxed),
            misses: self.misses.load(Ordering::Relaxed),
        }
    }

    /// The user named `username`, from the cache or else Postgres (then cached).
    pub async fn by_username(
        &self,
        db: &PgPool,
        redis: &Client,
        username: &Username,
    ) -> sqlx::Result<(Option<UserRecord>, Source)> {
        let cached: Option<String> = redis.get(key(username.as_str())).await.unwrap_or(None);
        if let Some(user) = cached.and_then(|json| serde_json::from_str::<UserRecord>(&json).ok()) {
            self.hits.fetch_add(1, Ordering::Relaxed);
            return Ok((Some(user), Source::Hit));
        }
        self.misses.fetch_add(1, Ordering::Relaxed);
        let user = store::by_username(db, username).await?;
        if let Some(user) = &user
            && let Ok(json) = serde_json::to_string(user)
        {
            let ttl = i64::try_from(TTL.as_secs()).unwrap_or(60);
            let stored: Result<(), _> = redis
                .set(
                    key(username.as_str()),
                    json,
                    Some(Expiration::EX(ttl)),
                    None,
                    false,
                )
                .await;
            if let Err(err) = stored {
                tracing::debug!(%err, "profile not cached");
            }
        }
        Ok((user, Source::Miss))
    }

    /// Forgets the cached profiles of `users` (after the change committed).
    pub async fn forget(&self, db: &PgPool, redis: &Client, users: &[UserId]) {
        let names: Vec<String> =
            match sqlx::query_scalar("SELECT username::text FROM users WHERE id = ANY($1)")
                .bind(users)
                .fetch_all(db)
                .await
            {
                Ok(names) => names,
                Err(err) => {
                    tracing::warn!(%err, "profile cache: names not read; entries expire by TTL");
                    return;
                }
            };
        let keys: Vec<String> = names.iter().map(|n| key(n)).collect();
        if keys.is_empty() {
            return;
        }
        let deleted = crate::redis::del_each(redis, keys).await;
        if let Err(err) = deleted {
            tracing::warn!(%err, "profile cache: not invalidated; entries expire by TTL");
        }
    }
}
