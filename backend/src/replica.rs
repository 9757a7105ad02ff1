//! Reads that may lag, served by a streaming read replica while it is fresh enough.
//!
//! The api sends reads that may lag to the replica: older pages of a conversation's history,
//! whose messages never change once stored (docs/OPERATIONS.md, "Read replica"). Every write,
//! and every read that may show the user's own recent writes (lists filtered by blocks,
//! `liked` flags, statuses), stays on the primary: a replica cannot tell whose writes it
//! has not replayed yet.
//!
//! **Freshness is measured, not assumed.** Every [`CHECK_INTERVAL`] the watcher reads the
//! primary's WAL position and remembers when it read it; it then reads how far the replica
//! has replayed. Once the replica has replayed past a position sampled at time `t`, it holds
//! every transaction the primary had committed by `t` (a commit's record is written before
//! the commit returns). So the replica is known fresh as of the newest such `t`, and a read
//! goes there only while `now - t` is within [`Replicas::max_staleness`]. A replica that stops
//! replaying, falls behind or goes down stops advancing `t`, and within the bound every read
//! is back on the primary without a failed request. Nothing is read staler than the bound.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use haberci_kit::shutdown::Shutdown;
use sqlx::PgPool;

/// How often the watcher samples both servers.
pub const CHECK_INTERVAL: Duration = Duration::from_millis(250);
/// How long one sample may take before it counts as failed.
pub const CHECK_TIMEOUT: Duration = Duration::from_secs(2);
/// How long a read may take on the replica before it is asked of the primary instead. The
/// reads sent there are small pages, answered in milliseconds by a healthy replica.
pub const REPLICA_READ_TIMEOUT: Duration = Duration::from_secs(2);
/// `HABERCI_REPLICA_MAX_STALENESS_MS` by default.
pub const DEFAULT_MAX_STALENESS: Duration = Duration::from_secs(2);

/// The primary, and a replica if one is configured.
#[derive(Clone)]
pub struct Replicas {
    primary: PgPool,
    replica: Option<Arc<Replica>>,
}

struct Replica {
    pool: PgPool,
    freshness: Mutex<Freshness>,
}

/// What is known of a replica's freshness: the decision alone, fed by [`Replicas::watch`]
/// (no I/O, no clock of its own).
#[derive(Debug)]
struct Freshness {
    max_staleness: Duration,
    /// Primary positions and when they were read, oldest first; older than the bound they can
    /// no longer make the replica fresh, so they are dropped.
    samples: VecDeque<(Instant, u64)>,
    /// Everything the primary committed before this instant is on the replica.
    fresh_as_of: Option<Instant>,
}

impl Freshness {
    fn new(max_staleness: Duration) -> Freshness {
        Freshness {
            max_staleness,
            samples: VecDeque::new(),
            fresh_as_of: None,
        }
    }

    /// The primary's WAL position `lsn`, read at `at`.
    fn primary_at(&mut self, at: Instant, lsn: u64) {
        self.samples.push_back((at, lsn));
        while self
            .samples
            .front()
            .is_some_and(|(t, _)| at.saturating_duration_since(*t) > self.max_staleness)
        {
            self.samples.pop_front();
        }
    }

    /// The replica has replayed up to `lsn`: it holds what the primary had committed when it
    /// was at any sampled position up to there.
    fn replayed(&mut self, lsn: u64) {
        if let Some((t, _)) = self.samples.iter().rev().find(|(_, at)| *at <= lsn)
            && self.fresh_as_of.is_none_or(|old| *t > old)
        {
            self.fresh_as_of = Some(*t);
        }
    }

    /// A read of the replica failed: no more reads until it is seen fresh again.
    fn failed(&mut self) {
        self.fresh_as_of = None;
    }

    /// How old the replica's data may be at `now` (`None`: unknown, never fresh).
    fn staleness(&self, now: Instant) -> Option<Duration> {
        self.fresh_as_of.map(|t| now.saturating_duration_since(t))
    }

    fn fresh(&self, now: Instant) -> bool {
        self.staleness(now).is_some_and(|s| s <= self.max_staleness)
    }
}

/// Which server answered a read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Server {
    Primary,
    Replica,
}

impl Server {
    fn label(self) -> &'static str {
        match self {
            Server::Primary => "primary",
            Server::Replica => "replica",
        }
    }
}

impl Replicas {
    /// Every read on the primary.
    pub fn primary_only(primary: PgPool) -> Replicas {
        Replicas {
            primary,
            replica: None,
        }
    }

    /// Reads that may lag go to `replica` while it is at most `max_staleness` behind. Nothing
    /// goes there until [`Replicas::watch`] has seen it fresh.
    pub fn with_replica(primary: PgPool, replica: PgPool, max_staleness: Duration) -> Replicas {
        Replicas {
            primary,
            replica: Some(Arc::new(Replica {
                pool: replica,
                freshness: Mutex::new(Freshness::new(max_staleness)),
            })),
        }
    }

    /// The replica, if it is fresh now; `None` sends the read to the primary.
    fn fresh_replica(&self) -> Option<(&Replica, &PgPool)> {
        let replica = self.replica.as_deref()?;
        replica
            .freshness()
            .fresh(Instant::now())
            .then_some((replica, &replica.pool))
    }

    /// Runs `read` on the replica if it is fresh and `complete` (a check of what the read
    /// needs, e.g. a conversation's messages up to a seq) holds there; else on the primary.
    /// A read that fails on the replica (it went down) runs again on the primary, and the
    /// replica gets no more reads until the watcher sees it fresh again. Counted by the
    /// server that answered.
    pub async fn on_replica_if<T, C, CFut, F, Fut>(
        &self,
        complete: C,
        read: F,
    ) -> Result<T, sqlx::Error>
    where
        C: FnOnce(PgPool) -> CFut,
        CFut: std::future::Future<Output = Result<bool, sqlx::Error>>,
        F: Fn(PgPool) -> Fut,
        Fut: std::future::Future<Output = Result<T, sqlx::Error>>,
    {
        if let Some((replica, pool)) = self.fresh_replica() {
            // A replica that went down can hold a read for as long as its pool retries
            // connecting: bounded, then the primary answers.
            let attempt = async {
                match complete(pool.clone()).await {
                    Ok(true) => Some(read(pool.clone()).await),
                    Ok(false) => None,
                    Err(err) => Some(Err(err)),
                }
            };
            let answer = tokio::time::timeout(REPLICA_READ_TIMEOUT, attempt)
                .await
                .unwrap_or(Some(Err(sqlx::Error::PoolTimedOut)));
            match answer {
                Some(Ok(value)) => {
                    count(Server::Replica);
                    return Ok(value);
                }
                Some(Err(err)) => {
                    tracing::warn!(error = %err, "a replica read failed; reading the primary");
                    replica.freshness().failed();
                }
                None => {}
            }
        }
        count(Server::Primary);
        read(self.primary.clone()).await
    }

    /// Samples both servers every [`CHECK_INTERVAL`] until `shutdown`, keeping the replica's
    /// freshness (and its gauge) current. Does nothing without a replica.
    pub async fn watch(self, shutdown: Shutdown) {
        let Some(replica) = self.replica.clone() else {
            return;
        };
        let mut tick = tokio::time::interval(CHECK_INTERVAL);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = tick.tick() => {}
                () = shutdown.cancelled() => return,
            }
            let sampled_at = Instant::now();
            match tokio::time::timeout(CHECK_TIMEOUT, wal_position(&self.primary, PRIMARY_LSN))
                .await
            {
                Ok(Ok(lsn)) => replica.freshness().primary_at(sampled_at, lsn),
                Ok(Err(err)) => tracing::debug!(error = %err, "primary WAL position"),
                Err(_) => tracing::debug!("primary WAL position: timed out"),
            }
            match tokio::time::timeout(CHECK_TIMEOUT, wal_position(&replica.pool, REPLAY_LSN)).await
            {
                Ok(Ok(lsn)) => replica.freshness().replayed(lsn),
                Ok(Err(err)) => tracing::debug!(error = %err, "replica replay position"),
                Err(_) => tracing::debug!("replica replay position: timed out"),
            }
            let staleness = replica
                .freshness()
                .staleness(Instant::now())
                .map_or(f64::INFINITY, |s| s.as_secs_f64());
            metrics::gauge!("haberci_db_replica_staleness_seconds").set(staleness);
        }
    }
}

impl Replica {
    fn freshness(&self) -> std::sync::MutexGuard<'_, Freshness> {
        self.freshness
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }
}

/// The primary's WAL write position: every committed transaction's record is before it.
/// Invariant: commits are synchronous (`synchronous_commit = on`, deploy/postgres): a
/// transaction becomes visible only once its commit record is written, so before this
/// position. A session with `synchronous_commit = off` would break the freshness argument.
const PRIMARY_LSN: &str = "SELECT pg_current_wal_lsn()::text";
/// How far a replica has replayed (NULL on a primary, which is then never fresh).
const REPLAY_LSN: &str = "SELECT pg_last_wal_replay_lsn()::text";

async fn wal_position(pool: &PgPool, sql: &str) -> Result<u64, sqlx::Error> {
    let text: Option<String> = sqlx::query_scalar(sql).fetch_one(pool).await?;
    text.as_deref()
        .and_then(parse_lsn)
        .ok_or_else(|| sqlx::Error::Protocol(format!("no WAL position from {sql:?}")))
}

/// A `pg_lsn` as text (`16/B374D848`) as one number.
fn parse_lsn(text: &str) -> Option<u64> {
    let (high, low) = text.split_once('/')?;
    Some((u64::from_str_radix(high, 16).ok()? << 32) | u64::from_str_radix(low, 16).ok()?)
}

fn count(server: Server) {
    metrics::counter!("haberci_db_stale_reads_total", "server" => server.label()).increment(1);
}

#[cfg(test)]
mod tests {
    use super::*;

    const BOUND: Duration = Duration::from_secs(2);

    fn ms(t0: Instant, ms: u64) -> Instant {
        t0 + Duration::from_millis(ms)
    }

    #[test]
    fn a_replica_is_fresh_as_of_the_newest_primary_position_it_has_replayed() {
        let t0 = Instant::now();
        let mut f = Freshness::new(BOUND);
        assert!(!f.fresh(t0), "unknown until seen");
        f.primary_at(t0, 100);
        f.primary_at(ms(t0, 250), 200);
        f.replayed(150);
        assert_eq!(f.staleness(ms(t0, 500)), Some(Duration::from_millis(500)));
        f.replayed(200);
        assert_eq!(f.staleness(ms(t0, 500)), Some(Duration::from_millis(250)));
        // A lower replay position later (a restarted replica) never moves it back.
        f.replayed(100);
        assert_eq!(f.staleness(ms(t0, 500)), Some(Duration::from_millis(250)));
    }

    #[test]
    fn an_idle_primary_keeps_a_caught_up_replica_fresh() {
        let t0 = Instant::now();
        let mut f = Freshness::new(BOUND);
        for i in 0..20 {
            f.primary_at(ms(t0, 250 * i), 100);
            f.replayed(100);
        }
        assert!(f.fresh(ms(t0, 250 * 19)));
    }

    #[test]
    fn a_replica_that_stops_replaying_is_fresh_until_the_bound_and_not_beyond() {
        let t0 = Instant::now();
        let mut f = Freshness::new(BOUND);
        f.primary_at(t0, 100);
        f.replayed(100);
        for i in 1..=12 {
            f.primary_at(ms(t0, 250 * i), 100 + i);
            f.replayed(100);
        }
        assert!(f.fresh(ms(t0, 2_000)));
        assert!(!f.fresh(ms(t0, 2_001)));
        // Samples past the bound are dropped: only recent ones can make it fresh again.
        assert!(f.samples.iter().all(|(t, _)| *t >= ms(t0, 1_000)));
        f.replayed(112);
        assert!(f.fresh(ms(t0, 3_000)));
    }

    #[test]
    fn a_failed_read_distrusts_the_replica_until_it_is_seen_fresh_again() {
        let t0 = Instant::now();
        let mut f = Freshness::new(BOUND);
        f.primary_at(t0, 100);
        f.replayed(100);
        f.failed();
        assert!(!f.fresh(t0));
        assert_eq!(f.staleness(t0), None);
        f.primary_at(ms(t0, 250), 100);
        f.replayed(100);
        assert!(f.fresh(ms(t0, 250)));
    }

    #[test]
    fn wal_positions_compare_as_numbers() {
        assert_eq!(parse_lsn("0/0"), Some(0));
        assert_eq!(parse_lsn("16/B374D848"), Some((0x16 << 32) | 0xB374_D848));
        assert!(parse_lsn("1/FFFFFFFF") < parse_lsn("2/0"));
        assert_eq!(parse_lsn("nonsense"), None);
        assert_eq!(parse_lsn("1/zz"), None);
    }
}
