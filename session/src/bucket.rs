//! [`TokenBucket`]: a rate on the caller's clock, for sends and receipts.

use std::time::{Duration, Instant};

/// `rate` tokens per second, at most `burst` saved; starts full.
#[derive(Debug)]
pub struct TokenBucket {
    rate_per_sec: f64,
    burst: f64,
    tokens: f64,
    at: Instant,
}

impl TokenBucket {
    pub fn new(rate_per_sec: u32, burst: u32, now: Instant) -> Self {
        let burst = f64::from(burst.max(1));
        TokenBucket {
            rate_per_sec: f64::from(rate_per_sec),
            burst,
            tokens: burst,
            at: now,
        }
    }

    /// Takes a token if one is there at `now`.
    pub fn take(&mut self, now: Instant) -> bool {
        let elapsed = now.saturating_duration_since(self.at).as_secs_f64();
        self.tokens = (self.tokens + elapsed * self.rate_per_sec).min(self.burst);
        self.at = now.max(self.at);
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            true
        } else {
            false
        }
    }

    /// When the next token is there (`None` at a rate of 0 with none left).
    pub fn next_token_at(&self) -> Option<Instant> {
        let missing = 1.0 - self.tokens;
        if missing <= 0.0 {
            return Some(self.at);
        }
        (self.rate_per_sec > 0.0)
            .then(|| self.at + Duration::from_secs_f64(missing / self.rate_per_sec))
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn a_bucket_gives_its_burst_then_its_rate_and_says_when() {
        let t0 = Instant::now();
        let mut bucket = TokenBucket::new(10, 2, t0);
        assert!(bucket.take(t0) && bucket.take(t0));
        assert!(!bucket.take(t0));
        let next = bucket.next_token_at().unwrap();
        assert_eq!(next, t0 + Duration::from_millis(100));
        assert!(!bucket.take(next - Duration::from_millis(1)));
        assert!(bucket.take(next));
        assert_eq!(TokenBucket::new(0, 1, t0).next_token_at(), Some(t0));
    }
}
