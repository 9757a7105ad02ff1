//! Presence: a user is online while at least one of their sessions is open on any gateway.
//!
//! Kept in Redis, never in Postgres (ephemeral):
//! - `presence:{user}` is a hash with one field per gateway holding a session of the user; its
//!   value is when that claim expires (Unix ms). A gateway refreshes the claims of all its users
//!   every [`REFRESH_INTERVAL`] in one pipeline, so a gateway that dies stops claiming and its
//!   users read as offline within [`CLAIM_TTL`], while users it shares with live gateways stay
//!   online.
//! - `seen:{user}` holds when the user was last seen (Unix ms), written when they go offline.
//! - Transitions are published as [`Event::Presence`] on `p:{user}`; sessions that sent
//!   `PresenceWatch` listen there (see [`crate::transport`]).

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use fred::prelude::*;
use haberci_kit::shutdown::Shutdown;
use haberci_wire::relay::{self, Event};
use haberci_wire::{Presence as PresenceFrame, SessionId, Timestamp, UserId};

use crate::relay::Relay;

/// How long a gateway's claim that a user is online lasts without a refresh.
pub const CLAIM_TTL: Duration = Duration::from_secs(60);
/// How often a gateway renews its claims (a third of the TTL: two renewals may fail).
pub const REFRESH_INTERVAL: Duration = Duration::from_secs(20);

/// The users with sessions on this gateway.
pub struct Presence {
    relay: Arc<Relay>,
    /// This gateway's field in every `presence:{user}` hash.
    gateway: String,
    sessions: Mutex<HashMap<UserId, usize>>,
}

/// Held while a session is open; dropping it may take its user offline.
pub struct Online {
    presence: Arc<Presence>,
    user: UserId,
}

impl Presence {
    pub fn new(relay: Arc<Relay>) -> Arc<Presence> {
        Arc::new(Presence {
            relay,
            gateway: SessionId::new(uuid::Uuid::now_v7())
                .map(|id| id.to_string())
                .unwrap_or_default(),
            sessions: Mutex::new(HashMap::new()),
        })
    }

    /// A session of `user` opened.
    pub async fn online(self: &Arc<Self>, user: UserId) -> Online {
        let first = {
            let mut sessions = self.sessions.lock().unwrap_or_else(|p| p.into_inner());
            let count = sessions.entry(user).or_default();
            *count += 1;
            *count == 1
        };
        if first {
            if let Err(err) = self.claim(&[user]).await {
                tracing::debug!(%err, %user, "presence claim failed");
            }
            self.announce(user, true, None).await;
        }
        Online {
            presence: self.clone(),
            user,
        }
    }

    async fn offline(&self, user: UserId) {
        let last = {
            let mut sessions = self.sessions.lock().unwrap_or_else(|p| p.into_inner());
            match sessions.get_mut(&user) {
                Some(count) if *count > 1 => {
                    *count -= 1;
                    false
                }
                Some(_) => {
                    sessions.remove(&user);
                    true
                }
                None => false,
            }
        };
        if !last {
            return;
        }
        let redis = self.relay.redis();
        let key = relay::presence_key(user);
        let _: Result<i64, _> = redis.hdel(&key, &self.gateway).await;
        // Another gateway may still hold a session of the user.
        if self.state(user).await.online {
            return;
        }
        let now = now_ms();
        let _: Result<(), _> = redis
            .set(relay::last_seen_key(user), now, None, None, false)
            .await;
        self.announce(user, false, Timestamp::from_unix_millis(now))
            .await;
    }

    async fn claim(&self, users: &[UserId]) -> Result<(), fred::error::Error> {
        let until = now_ms() + i64::try_from(CLAIM_TTL.as_millis()).unwrap_or(i64::MAX);
        let pipeline = self.relay.redis().pipeline();
        for user in users {
            let key = relay::presence_key(*user);
            let _: () = pipeline.hset(&key, (self.gateway.as_str(), until)).await?;
            let _: () = pipeline
                .expire(&key, CLAIM_TTL.as_secs() as i64, None)
                .await?;
        }
        let _: Vec<Value> = pipeline.all().await?;
        Ok(())
    }

    async fn announce(&self, user: UserId, online: bool, last_seen: Option<Timestamp>) {
        let event = Event::Presence(PresenceFrame {
            user_id: user,
            online,
            last_seen,
        });
        if let Err(err) = self
            .relay
            .publish(relay::presence_channel(user), &event)
            .await
        {
            tracing::debug!(%err, %user, "presence not published");
        }
    }

    /// What Redis says about `user` now.
    pub async fn state(&self, user: UserId) -> PresenceFrame {
        let redis = self.relay.redis();
        let claims: HashMap<String, i64> = redis
            .hgetall(relay::presence_key(user))
            .await
            .unwrap_or_default();
        let now = now_ms();
        let online = claims.values().any(|until| *until > now);
        let last_seen = if online {
            Timestamp::from_unix_millis(now)
        } else {
            let seen: Option<i64> = redis.get(relay::last_seen_key(user)).await.unwrap_or(None);
            seen.and_then(Timestamp::from_unix_millis)
        };
        PresenceFrame {
            user_id: user,
            online,
            last_seen,
        }
    }

    /// Renews this gateway's claims until shutdown.
    pub async fn refresh(self: Arc<Self>, shutdown: Shutdown) {
        let mut tick = tokio::time::interval(REFRESH_INTERVAL);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = tick.tick() => {}
            }
            let users: Vec<UserId> = self
                .sessions
                .lock()
                .map(|s| s.keys().copied().collect())
                .unwrap_or_default();
            for batch in users.chunks(1_000) {
                if let Err(err) = self.claim(batch).await {
                    tracing::warn!(%err, users = batch.len(), "presence refresh failed");
                    break;
                }
            }
        }
    }
}

impl Drop for Online {
    fn drop(&mut self) {
        let presence = self.presence.clone();
        let user = self.user;
        tokio::spawn(async move { presence.offline(user).await });
    }
}

fn now_ms() -> i64 {
    crate::transport::now().unix_ms
}
