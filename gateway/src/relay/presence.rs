//! Presence: a user is online while at least one of their sessions is open on a live gateway.
//!
//! Kept in Redis, never in Postgres (ephemeral):
//! - `presence:{user}` is a hash with one field per gateway holding a session of the user,
//!   whose value is how many sessions of the user that gateway holds: written when one opens
//!   or closes, removed when the last one closes. The sum over live gateways is what the
//!   per-user session limit counts ([`Presence::sessions_of`]).
//! - [`streams::GATEWAYS_KEY`] (a sorted set) says until when each gateway is alive. A gateway
//!   pushes its own score [`Timing::ttl`] ahead every [`Timing::refresh`]: one command, however
//!   many users it holds. A field of a gateway whose time has passed does not count, so the
//!   users of a gateway that died read as offline within the TTL, while users it shares with
//!   live gateways stay online.
//! - `presence:gateway:{id}:users` lists a gateway's users. Once a gateway is dead, the first
//!   live gateway to notice takes its users offline (removes the dead gateway's fields, records
//!   when they were last seen, announces the change) and forgets the dead gateway.
//! - `seen:{user}` holds when the user was last seen (Unix ms), written when they go offline.
//! - Transitions are published as [`Event::Presence`] on `p:{user}`; sessions that sent
//!   `PresenceWatch` listen there (see [`crate::transport`]).
//!
//! Renewing every user's claim instead (two commands per user every 20 s) was 10 % of an idle
//! gateway's CPU at 100,000 sessions, in bursts of 200,000 commands (docs/BENCHMARKS.md).

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use fred::prelude::*;
use fred::types::{Expiration, SetOptions};
use haberci_kit::shutdown::Shutdown;
use haberci_seam::streams::{self, Event};
use haberci_wire::{Presence as PresenceFrame, SessionId, Timestamp, UserId};

use super::Relay;

/// Users of a dead gateway taken offline per Redis round.
const REAP_BATCH: usize = 500;
/// Every this many renewals a gateway also reconciles Redis with its sessions, so that a
/// write lost without an error (none known) heals within minutes: 15 × 20 s.
const RECONCILE_EVERY: u64 = 15;
/// Dead gateways looked at per refresh.
const REAP_GATEWAYS: i64 = 16;
/// A `presence:{user}` value above this is not a count but the claim time (Unix ms) a gateway
/// of an earlier release wrote: it counts as one session.
const MAX_COUNT_VALUE: i64 = 1_000_000;

/// How often a gateway renews its liveness, and how long it lasts.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Timing {
    pub refresh: Duration,
    /// Three refreshes: two in a row may fail before the gateway's users read as offline.
    pub ttl: Duration,
}

impl Timing {
    pub fn every(refresh: Duration) -> Timing {
        Timing {
            refresh,
            ttl: refresh * 3,
        }
    }
}

impl Default for Timing {
    fn default() -> Timing {
        Timing::every(crate::config::DEFAULT_PRESENCE_REFRESH)
    }
}

/// The users with sessions on this gateway.
pub struct Presence {
    relay: Arc<Relay>,
    /// This gateway's member in [`streams::GATEWAYS_KEY`] and field in every `presence:{user}`.
    gateway: String,
    timing: Timing,
    sessions: Mutex<HashMap<UserId, usize>>,
    /// Whether this gateway has been in [`streams::GATEWAYS_KEY`] since it started.
    registered: AtomicBool,
    /// Redis may disagree with the sessions: a write failed (Redis away), or another gateway
    /// took this one for dead and its users offline. Set right: at the next renewal.
    reconcile: AtomicBool,
    /// Renewals so far; every [`RECONCILE_EVERY`]th also reconciles, whatever happened.
    renewals: std::sync::atomic::AtomicU64,
}

/// Held while a session is open; dropping it may take its user offline.
pub struct Online {
    presence: Arc<Presence>,
    user: UserId,
}

impl Presence {
    pub fn new(relay: Arc<Relay>, timing: Timing) -> Arc<Presence> {
        Arc::new(Presence {
            relay,
            gateway: SessionId::new(uuid::Uuid::now_v7())
                .map(|id| id.to_string())
                .unwrap_or_default(),
            timing,
            sessions: Mutex::new(HashMap::new()),
            registered: AtomicBool::new(false),
            reconcile: AtomicBool::new(false),
            renewals: Default::default(),
        })
    }

    /// This gateway's id in Redis.
    pub fn gateway(&self) -> &str {
        &self.gateway
    }

    /// A session of `user` opened.
    pub async fn online(self: &Arc<Self>, user: UserId) -> Online {
        let count = {
            let mut sessions = self.sessions.lock().unwrap_or_else(|p| p.into_inner());
            let count = sessions.entry(user).or_default();
            *count += 1;
            *count
        };
        if count == 1 {
            if let Err(err) = self.claim(&[user]).await {
                tracing::debug!(%err, %user, "presence claim failed");
                self.reconcile.store(true, Ordering::Relaxed);
            }
            self.announce(user, true, None).await;
        } else {
            self.count(user, count).await;
        }
        Online {
            presence: self.clone(),
            user,
        }
    }

    async fn offline(&self, user: UserId) {
        let left = {
            let mut sessions = self.sessions.lock().unwrap_or_else(|p| p.into_inner());
            match sessions.get_mut(&user) {
                Some(count) if *count > 1 => {
                    *count -= 1;
                    Some(*count)
                }
                Some(_) => {
                    sessions.remove(&user);
                    Some(0)
                }
                None => None,
            }
        };
        match left {
            Some(0) => {}
            Some(count) => return self.count(user, count).await,
            None => return,
        }
        let pipeline = self.relay.redis().pipeline();
        let _: Result<(), _> = pipeline
            .hdel(streams::presence_key(user), self.gateway.as_str())
            .await;
        let _: Result<(), _> = pipeline
            .srem(streams::gateway_users_key(&self.gateway), user.to_string())
            .await;
        let removed: Result<Vec<Value>, _> = pipeline.all().await;
        if removed.is_err() {
            self.reconcile.store(true, Ordering::Relaxed);
        }
        self.went_offline(user).await;
    }

    /// `user` lost a claim: unless another live gateway holds one, records when they were
    /// last seen and tells their watchers.
    async fn went_offline(&self, user: UserId) {
        if self.state(user).await.online {
            return;
        }
        let now = now_ms();
        let _: Result<(), _> = self
            .relay
            .redis()
            .set(streams::last_seen_key(user), now, None, None, false)
            .await;
        self.announce(user, false, Timestamp::from_unix_millis(now))
            .await;
    }

    /// Writes how many sessions of `user` this gateway holds, for the per-user limit.
    async fn count(&self, user: UserId, count: usize) {
        let written: Result<(), _> = self
            .relay
            .redis()
            .hset(streams::presence_key(user), (self.gateway.as_str(), count))
            .await;
        if let Err(err) = written {
            tracing::debug!(%err, %user, "presence count not written");
        }
    }

    /// How many realtime sessions `user` has open: here, and on every live gateway as its
    /// field of `presence:{user}` says. If Redis cannot tell, only the ones here count.
    pub async fn sessions_of(&self, user: UserId) -> u64 {
        let here = self
            .sessions
            .lock()
            .map(|s| s.get(&user).copied().unwrap_or(0))
            .unwrap_or(0) as u64;
        let redis = self.relay.redis();
        let claims: HashMap<String, i64> = redis
            .hgetall(streams::presence_key(user))
            .await
            .unwrap_or_default();
        let (gateways, counts): (Vec<String>, Vec<i64>) = claims
            .into_iter()
            .filter(|(gateway, _)| *gateway != self.gateway)
            .unzip();
        if gateways.is_empty() {
            return here;
        }
        let alive: Vec<Option<f64>> = redis
            .zmscore(streams::GATEWAYS_KEY, gateways)
            .await
            .unwrap_or_default();
        let now = now_ms() as f64;
        let elsewhere: u64 = alive
            .iter()
            .zip(counts)
            .filter(|(until, _)| until.is_some_and(|until| until > now))
            .map(|(_, count)| match count {
                c if c > MAX_COUNT_VALUE => 1,
                c => u64::try_from(c).unwrap_or(0),
            })
            .sum();
        here + elsewhere
    }

    /// Marks `users` as held by this gateway, with how many sessions of each it holds.
    async fn claim(&self, users: &[UserId]) -> Result<(), fred::error::Error> {
        let counts: Vec<usize> = {
            let sessions = self.sessions.lock().unwrap_or_else(|p| p.into_inner());
            users
                .iter()
                .map(|u| sessions.get(u).copied().unwrap_or(1).max(1))
                .collect()
        };
        let pipeline = self.relay.redis().pipeline();
        for (user, count) in users.iter().zip(counts) {
            let _: () = pipeline
                .hset(streams::presence_key(*user), (self.gateway.as_str(), count))
                .await?;
        }
        let members: Vec<String> = users.iter().map(|u| u.to_string()).collect();
        let _: () = pipeline
            .sadd(streams::gateway_users_key(&self.gateway), members)
            .await?;
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
            .publish(streams::presence_channel(user), &event)
            .await
        {
            tracing::debug!(%err, %user, "presence not published");
        }
    }

    /// What Redis says about `user` now.
    pub async fn state(&self, user: UserId) -> PresenceFrame {
        let redis = self.relay.redis();
        let claims: HashMap<String, i64> = redis
            .hgetall(streams::presence_key(user))
            .await
            .unwrap_or_default();
        let now = now_ms();
        let online = if claims.is_empty() {
            false
        } else {
            let gateways: Vec<String> = claims.into_keys().collect();
            let alive: Vec<Option<f64>> = redis
                .zmscore(streams::GATEWAYS_KEY, gateways)
                .await
                .unwrap_or_default();
            alive.into_iter().flatten().any(|until| until > now as f64)
        };
        let last_seen = if online {
            Timestamp::from_unix_millis(now)
        } else {
            let seen: Option<i64> = redis
                .get(streams::last_seen_key(user))
                .await
                .unwrap_or(None);
            seen.and_then(Timestamp::from_unix_millis)
        };
        PresenceFrame {
            user_id: user,
            online,
            last_seen,
        }
    }

    /// Says this gateway is alive for another [`Timing::ttl`] ([`Presence::run`] does, first
    /// thing and then every [`Timing::refresh`]).
    pub async fn keep_alive(&self) {
        let until = now_ms() + i64::try_from(self.timing.ttl.as_millis()).unwrap_or(i64::MAX);
        let added: Result<i64, _> = self
            .relay
            .redis()
            .zadd(
                streams::GATEWAYS_KEY,
                None,
                None,
                false,
                false,
                (until as f64, self.gateway.as_str()),
            )
            .await;
        match added {
            Ok(added) => {
                let before = self.registered.swap(true, Ordering::Relaxed);
                if added > 0 && before {
                    tracing::warn!(
                        gateway = %self.gateway,
                        "this gateway was taken for dead (no renewal for {:?}); claiming its users again",
                        self.timing.ttl
                    );
                    self.reconcile.store(true, Ordering::Relaxed);
                }
            }
            Err(err) => {
                tracing::warn!(%err, "presence renewal failed");
                self.reconcile.store(true, Ordering::Relaxed);
                return;
            }
        }
        let renewals = self.renewals.fetch_add(1, Ordering::Relaxed) + 1;
        if self.reconcile.load(Ordering::Relaxed) || renewals % RECONCILE_EVERY == 0 {
            self.reconcile().await;
        }
    }

    /// Makes Redis agree with the sessions: this gateway's users that have no session here
    /// any more go offline, and users with a session here that Redis lacks are claimed and
    /// announced. Waits while another gateway is reaping this one (its lock is there).
    async fn reconcile(&self) {
        match self.try_reconcile().await {
            Ok(true) => self.reconcile.store(false, Ordering::Relaxed),
            Ok(false) => {}
            Err(err) => tracing::warn!(%err, "presence reconcile failed; next renewal"),
        }
    }

    /// `Ok(false)`: not now (being reaped).
    async fn try_reconcile(&self) -> Result<bool, fred::error::Error> {
        let redis = self.relay.redis();
        let reaping: i64 = redis
            .exists(streams::gateway_reaper_key(&self.gateway))
            .await?;
        if reaping > 0 {
            return Ok(false);
        }
        let users_key = streams::gateway_users_key(&self.gateway);
        let listed: Vec<String> = redis.smembers(&users_key).await?;
        let listed: HashSet<UserId> = listed.iter().filter_map(|u| u.parse().ok()).collect();
        // Asked of the sessions at each step, not from a snapshot: a session opening meanwhile
        // is counted before it claims, so it is never taken for stale.
        let here = |user: &UserId| {
            self.sessions
                .lock()
                .map(|s| s.contains_key(user))
                .unwrap_or(true)
        };
        let stale: Vec<UserId> = listed.iter().filter(|u| !here(u)).copied().collect();
        for batch in stale.chunks(REAP_BATCH) {
            let pipeline = redis.pipeline();
            for user in batch {
                let _: () = pipeline
                    .hdel(streams::presence_key(*user), self.gateway.as_str())
                    .await?;
            }
            let members: Vec<String> = batch.iter().map(|u| u.to_string()).collect();
            let _: () = pipeline.srem(&users_key, members).await?;
            let _: Vec<Value> = pipeline.all().await?;
            for user in batch {
                self.went_offline(*user).await;
            }
        }
        let missing: Vec<UserId> = self
            .sessions
            .lock()
            .map(|s| s.keys().filter(|u| !listed.contains(u)).copied().collect())
            .unwrap_or_default();
        for batch in missing.chunks(REAP_BATCH) {
            self.claim(batch).await?;
            for user in batch {
                self.announce(*user, true, None).await;
            }
        }
        if !stale.is_empty() || !missing.is_empty() {
            tracing::info!(
                gateway = %self.gateway,
                offline = stale.len(),
                claimed = missing.len(),
                "presence reconciled with this gateway's sessions"
            );
        }
        Ok(true)
    }

    /// Takes the users of gateways that stopped renewing offline.
    pub async fn reap(&self) {
        let now = now_ms();
        let dead: Vec<String> = match self
            .relay
            .redis()
            .zrangebyscore(
                streams::GATEWAYS_KEY,
                f64::NEG_INFINITY,
                now as f64,
                false,
                Some((0, REAP_GATEWAYS)),
            )
            .await
        {
            Ok(dead) => dead,
            Err(err) => {
                tracing::debug!(%err, "cannot list dead gateways");
                return;
            }
        };
        for gateway in dead.iter().filter(|g| **g != self.gateway) {
            if let Err(err) = self.reap_one(gateway).await {
                tracing::warn!(%err, dead = %gateway, "taking a dead gateway's users offline failed; next renewal");
            }
        }
    }

    async fn reap_one(&self, dead: &str) -> Result<(), fred::error::Error> {
        let redis = self.relay.redis();
        let ttl = i64::try_from(self.timing.ttl.as_millis()).unwrap_or(i64::MAX);
        let lock = streams::gateway_reaper_key(dead);
        let taken: Option<String> = redis
            .set(
                &lock,
                self.gateway.as_str(),
                Some(Expiration::PX(ttl)),
                Some(SetOptions::NX),
                false,
            )
            .await?;
        if taken.is_none() {
            return Ok(()); // another gateway is at it
        }
        // Forgotten first: if the dead gateway comes back, it finds itself new and claims
        // its users again once the lock is gone.
        let _: i64 = redis.zrem(streams::GATEWAYS_KEY, dead).await?;
        let users_key = streams::gateway_users_key(dead);
        let mut total = 0usize;
        loop {
            let batch: Vec<String> = redis.spop(&users_key, Some(REAP_BATCH)).await?;
            if batch.is_empty() {
                break;
            }
            let users: Vec<UserId> = batch.iter().filter_map(|u| u.parse().ok()).collect();
            total += users.len();
            let pipeline = redis.pipeline();
            for user in &users {
                let _: () = pipeline.hdel(streams::presence_key(*user), dead).await?;
            }
            let _: Vec<Value> = pipeline.all().await?;
            for user in users {
                self.went_offline(user).await;
            }
        }
        let _: i64 = redis.del(&lock).await?;
        tracing::info!(dead = %dead, users = total, "took a dead gateway's users offline");
        Ok(())
    }

    /// Renews this gateway's liveness and reaps dead gateways until shutdown. At shutdown the
    /// sessions close and take their users offline themselves; whatever is left (a session
    /// killed after the drain timeout) is reaped by another gateway once this one's time runs
    /// out.
    pub async fn run(self: Arc<Self>, shutdown: Shutdown) {
        let mut tick = tokio::time::interval(self.timing.refresh);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = tick.tick() => {}
            }
            self.keep_alive().await;
            self.reap().await;
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

/// Unix time in ms, for liveness scores and last-seen stamps written to Redis (wall clock by
/// nature; a session's own clock is read in `transport::drive`).
fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
        .unwrap_or(0)
}
