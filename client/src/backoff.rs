//! When to try again after a connection is lost or refused. The same policy as the web SDK
//! (`web/sdk/src/session.ts`, `#retry`): the ceiling doubles from 500 ms to 30 s, each pause is
//! drawn between half the ceiling and all of it ("equal jitter"), and it is never shorter than
//! the server asked for (`Closing.retry_after_ms`, see [`ConnectError::retry_after`]).
//!
//! Without the growth and the jitter, every client of a gateway that died comes back in the
//! same instant and again every couple of seconds: 100,000 bench clients retrying every
//! 0.1–2 s made 1.2 million attempts in four minutes and took the surviving gateway down with
//! them (docs/BENCHMARKS.md, "Reconnect storm").
//!
//! [`ConnectError::retry_after`]: crate::ConnectError::retry_after

use std::time::Duration;

/// The first ceiling.
pub const DEFAULT_RECONNECT_DELAY: Duration = Duration::from_millis(500);
/// The ceiling stops growing here.
pub const DEFAULT_MAX_RECONNECT_DELAY: Duration = Duration::from_secs(30);

/// The reconnect policy.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Backoff {
    pub base: Duration,
    pub max: Duration,
}

impl Default for Backoff {
    fn default() -> Backoff {
        Backoff {
            base: DEFAULT_RECONNECT_DELAY,
            max: DEFAULT_MAX_RECONNECT_DELAY,
        }
    }
}

impl Backoff {
    /// The most the pause before retry number `retry` (0: the first) may be.
    pub fn ceiling(&self, retry: u32) -> Duration {
        self.base.saturating_mul(1 << retry.min(16)).min(self.max)
    }

    /// The pause before retry number `retry` (0: the first, right after the loss), at least
    /// `retry_after` when the server gave one.
    pub fn delay(&self, retry: u32, retry_after: Option<Duration>) -> Duration {
        let ceiling = self.ceiling(retry);
        let jittered = ceiling / 2 + ceiling.mul_f64(fastrand::f64()) / 2;
        jittered.max(retry_after.unwrap_or_default())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_ceiling_doubles_up_to_the_maximum() {
        let backoff = Backoff::default();
        let ceilings: Vec<u64> = (0..8)
            .map(|n| backoff.ceiling(n).as_millis() as u64)
            .collect();
        assert_eq!(
            ceilings,
            [500, 1_000, 2_000, 4_000, 8_000, 16_000, 30_000, 30_000]
        );
        assert_eq!(backoff.ceiling(u32::MAX), DEFAULT_MAX_RECONNECT_DELAY);
    }

    #[test]
    fn each_pause_is_between_half_the_ceiling_and_all_of_it_and_they_differ() {
        let backoff = Backoff::default();
        for retry in 0..10 {
            let ceiling = backoff.ceiling(retry);
            let pauses: Vec<Duration> = (0..200).map(|_| backoff.delay(retry, None)).collect();
            assert!(
                pauses.iter().all(|p| *p >= ceiling / 2 && *p <= ceiling),
                "retry {retry}: {pauses:?} outside {:?}..={ceiling:?}",
                ceiling / 2
            );
            let first = pauses[0];
            assert!(
                pauses.iter().any(|p| *p != first),
                "retry {retry}: 200 equal pauses, no jitter"
            );
        }
    }

    #[test]
    fn the_servers_advice_is_a_floor() {
        let backoff = Backoff::default();
        let asked = Duration::from_secs(45);
        assert_eq!(backoff.delay(0, Some(asked)), asked);
        assert!(backoff.delay(0, Some(Duration::from_millis(1))) >= Duration::from_millis(250));
    }
}
