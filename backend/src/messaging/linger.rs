//! How long a small batch waits for company before it goes to Postgres.
//!
//! Postgres's cost per batch is mostly per *transaction* (the row locks, the WAL flush, the
//! round trips through PgBouncer), and a worker that starts a transaction as soon as one entry
//! is there runs as many transactions as its cycle time allows: the faster each one, the more
//! of them (docs/BENCHMARKS.md, "Second round"). So after a read that came back small, while
//! entries are arriving fast enough that more are expected within [`Linger::max`], the worker
//! waits that long and reads again, and the batch goes with what came meanwhile. When traffic
//! is sparse (fewer than one entry expected in the wait) nothing waits: a lone message is not
//! held back for nobody.
//!
//! Receipts wait longer, by another rule ([`Hold`]): a batch of receipts alone (`Ack`,
//! `Read`) is held until a send arrives to share its transaction, for at most
//! `HABERCI_RECEIPT_HOLD`. Nobody waits on a receipt the way a sender waits on its `Sent`.
//!
//! Pure: fed the reads' sizes and times, it answers with a wait. The consumer does the waiting.

use std::time::{Duration, Instant};

/// The arrival rate is the ratio of two moving averages over reads, of the entries read and
/// of the time they took to come; each read weighs this much. (An average of per-read rates
/// would overrate sparse traffic: a blocking read returns at the first arrival, so one entry
/// over a short wait reads as a high rate.)
const RATE_WEIGHT: f64 = 0.25;

#[derive(Debug, Clone)]
pub struct Linger {
    /// The longest a batch waits (`HABERCI_BATCH_LINGER`); zero: never.
    max: Duration,
    /// A batch of at least this many entries goes at once.
    enough: usize,
    /// Entries per read, averaged.
    entries: f64,
    /// Seconds between reads, averaged.
    elapsed: f64,
    last_read: Option<Instant>,
}

impl Linger {
    /// `max`: the longest wait; `capacity`: the most entries one batch takes.
    pub fn new(max: Duration, capacity: usize) -> Linger {
        Linger {
            max,
            enough: (capacity / 2).max(1),
            entries: 0.0,
            elapsed: 0.0,
            last_read: None,
        }
    }

    /// A read (the first of a batch) returned `entries` at `now`. Returns how long to wait
    /// for more before the batch goes (zero: go now). Call it once per batch, before the wait.
    pub fn after_read(&mut self, entries: usize, now: Instant) -> Duration {
        if let Some(last) = self.last_read {
            let elapsed = now.saturating_duration_since(last).as_secs_f64();
            self.entries += RATE_WEIGHT * (entries as f64 - self.entries);
            self.elapsed += RATE_WEIGHT * (elapsed - self.elapsed);
        }
        self.last_read = Some(now);
        if self.max.is_zero() || entries == 0 || entries >= self.enough || self.elapsed <= 0.0 {
            return Duration::ZERO;
        }
        let expected = self.entries / self.elapsed * self.max.as_secs_f64();
        if expected >= 1.0 {
            self.max
        } else {
            Duration::ZERO
        }
    }

    /// The wait is over and the batch read again at `now`: arrivals from here on count toward
    /// the next read's rate.
    pub fn read_again(&mut self, now: Instant) {
        self.last_read = Some(now);
    }
}

/// What to do with the entries in hand.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Held {
    /// Commit them now.
    Go,
    /// Receipts alone: read again, blocking no later than this, and decide again.
    Until(Instant),
}

/// Holds receipts alone until sends come to share their transaction, or for at most `max`.
#[derive(Debug, Clone)]
pub struct Hold {
    /// The longest receipts wait (`HABERCI_RECEIPT_HOLD`); zero: never.
    max: Duration,
    /// This many entries go at once.
    capacity: usize,
    /// When the receipts in hand began to wait.
    since: Option<Instant>,
}

impl Hold {
    pub fn new(max: Duration, capacity: usize) -> Hold {
        Hold {
            max,
            capacity: capacity.max(1),
            since: None,
        }
    }

    /// After a read at `now`, `entries` are in hand (held ones included); `receipts_only`:
    /// none of them is a send. Call only with entries in hand.
    pub fn decide(&mut self, entries: usize, receipts_only: bool, now: Instant) -> Held {
        let since = *self.since.get_or_insert(now);
        let until = since + self.max;
        if !receipts_only || entries >= self.capacity || now >= until {
            self.since = None;
            return Held::Go;
        }
        Held::Until(until)
    }

    /// How long the next read may block: `block` while nothing is held, else what is left of
    /// the hold (`None`: do not block at all).
    pub fn read_block(&self, block: Duration, now: Instant) -> Option<Duration> {
        match self.since {
            None => Some(block),
            Some(since) => {
                let left = (since + self.max).saturating_duration_since(now).min(block);
                (!left.is_zero()).then_some(left)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MAX: Duration = Duration::from_millis(2);
    const HOLD: Duration = Duration::from_millis(50);
    const BLOCK: Duration = Duration::from_secs(1);

    #[test]
    fn receipts_alone_wait_for_a_send_or_the_hold_and_anything_else_goes() {
        let start = Instant::now();
        let ms = |n: u64| start + Duration::from_millis(n);
        let mut hold = Hold::new(HOLD, 256);
        assert_eq!(hold.read_block(BLOCK, start), Some(BLOCK), "nothing held");
        assert_eq!(hold.decide(3, true, start), Held::Until(ms(50)));
        // The next read blocks only for what is left of the hold.
        assert_eq!(
            hold.read_block(BLOCK, ms(20)),
            Some(Duration::from_millis(30))
        );
        // More receipts: still held, the deadline unchanged.
        assert_eq!(hold.decide(5, true, ms(20)), Held::Until(ms(50)));
        // A send came: all go with it, and the next receipts start a fresh hold.
        assert_eq!(hold.decide(6, false, ms(30)), Held::Go);
        assert_eq!(hold.read_block(BLOCK, ms(30)), Some(BLOCK));
        assert_eq!(hold.decide(1, true, ms(40)), Held::Until(ms(90)));
        // The hold is over: they go alone, and a read in between does not block.
        assert_eq!(hold.read_block(BLOCK, ms(90)), None);
        assert_eq!(hold.decide(1, true, ms(90)), Held::Go);
        // A full batch goes at once; a hold of zero never holds.
        assert_eq!(Hold::new(HOLD, 4).decide(4, true, start), Held::Go);
        assert_eq!(
            Hold::new(Duration::ZERO, 256).decide(1, true, start),
            Held::Go
        );
        // A hold never blocks a read longer than the configured block.
        let mut long = Hold::new(Duration::from_secs(1), 256);
        long.decide(1, true, start);
        assert_eq!(
            long.read_block(Duration::from_millis(100), start),
            Some(Duration::from_millis(100))
        );
    }

    /// Feeds reads of `entries` every `every`, returning the last answer.
    fn steady(linger: &mut Linger, start: Instant, entries: usize, every: Duration) -> Duration {
        let mut answer = Duration::ZERO;
        for i in 1..=40 {
            answer = linger.after_read(entries, start + every * i);
        }
        answer
    }

    #[test]
    fn waits_only_while_more_entries_are_expected_within_the_wait() {
        let start = Instant::now();
        // (entries per read, read every, waits?)
        let cases = [
            // 4 entries per 2 ms: 2,000/s, four more expected in 2 ms.
            (4, Duration::from_millis(2), true),
            // One entry every 10 ms: 100/s, 0.2 expected: a lone message goes at once.
            (1, Duration::from_millis(10), false),
            // One per second: idle traffic never waits.
            (1, Duration::from_secs(1), false),
            // One entry every 3 ms: 333/s, 0.67 expected in 2 ms: no wait.
            (1, Duration::from_millis(3), false),
            // Two every 3 ms: 1.3 expected: wait.
            (2, Duration::from_millis(3), true),
            // A batch already half full goes at once, however busy.
            (128, Duration::from_millis(2), false),
            (127, Duration::from_millis(2), true),
        ];
        for (entries, every, waits) in cases {
            let mut linger = Linger::new(MAX, 256);
            let answer = steady(&mut linger, start, entries, every);
            assert_eq!(
                answer,
                if waits { MAX } else { Duration::ZERO },
                "{entries} entries every {every:?}"
            );
        }
    }

    #[test]
    fn the_first_read_and_an_empty_one_never_wait_and_zero_means_never() {
        let start = Instant::now();
        let mut linger = Linger::new(MAX, 256);
        assert_eq!(linger.after_read(5, start), Duration::ZERO, "no rate yet");
        let mut busy = Linger::new(MAX, 256);
        steady(&mut busy, start, 4, Duration::from_millis(2));
        assert_eq!(
            busy.after_read(0, start + Duration::from_millis(90)),
            Duration::ZERO
        );
        let mut off = Linger::new(Duration::ZERO, 256);
        assert_eq!(
            steady(&mut off, start, 4, Duration::from_millis(2)),
            Duration::ZERO
        );
    }

    #[test]
    fn the_rate_follows_a_drop_in_traffic() {
        let start = Instant::now();
        let mut linger = Linger::new(MAX, 256);
        assert_eq!(steady(&mut linger, start, 4, Duration::from_millis(2)), MAX);
        // Traffic falls to one entry every 50 ms: within a few reads, no more waiting.
        let later = start + Duration::from_secs(1);
        let answers: Vec<Duration> = (1..=10)
            .map(|i| linger.after_read(1, later + Duration::from_millis(50) * i))
            .collect();
        assert_eq!(answers.last(), Some(&Duration::ZERO), "{answers:?}");
    }
}
