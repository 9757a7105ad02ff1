//! Latency histograms (HDR, microseconds, 3 significant digits) and their summaries. Shards
//! hand their recorded buckets to the coordinator, which merges them exactly.

use std::time::Duration;

use hdrhistogram::Histogram;
use serde::{Deserialize, Serialize};

/// The largest latency recorded as itself; anything slower counts as this (1 hour).
const HIGHEST_US: u64 = 3_600_000_000;

#[derive(Clone, Debug)]
pub struct Latency(Histogram<u64>);

/// A histogram's recorded buckets: `(value µs, count)`.
pub type Buckets = Vec<(u64, u64)>;

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Summary {
    pub count: u64,
    pub mean_ms: f64,
    pub p50_ms: f64,
    pub p90_ms: f64,
    pub p99_ms: f64,
    pub p999_ms: f64,
    pub max_ms: f64,
}

impl Default for Latency {
    fn default() -> Self {
        Self::new()
    }
}

impl Latency {
    pub fn new() -> Latency {
        // Invariant: these bounds are valid (low ≥ 1, high ≥ 2 × low, sigfig ≤ 5).
        match Histogram::new_with_bounds(1, HIGHEST_US, 3) {
            Ok(h) => Latency(h),
            Err(err) => unreachable!("constant histogram bounds: {err}"),
        }
    }

    pub fn record(&mut self, latency: Duration) {
        let us = u64::try_from(latency.as_micros()).unwrap_or(u64::MAX);
        self.0.saturating_record(us.max(1));
    }

    pub fn len(&self) -> u64 {
        self.0.len()
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    pub fn buckets(&self) -> Buckets {
        self.0
            .iter_recorded()
            .map(|v| (v.value_iterated_to(), v.count_at_value()))
            .collect()
    }

    pub fn merge(&mut self, buckets: &[(u64, u64)]) {
        for &(value, count) in buckets {
            self.0
                .saturating_record_n(value.clamp(1, HIGHEST_US), count);
        }
    }

    pub fn summary(&self) -> Summary {
        if self.0.is_empty() {
            return Summary::default();
        }
        let ms = |us: u64| us as f64 / 1000.0;
        Summary {
            count: self.0.len(),
            mean_ms: self.0.mean() / 1000.0,
            p50_ms: ms(self.0.value_at_quantile(0.50)),
            p90_ms: ms(self.0.value_at_quantile(0.90)),
            p99_ms: ms(self.0.value_at_quantile(0.99)),
            p999_ms: ms(self.0.value_at_quantile(0.999)),
            max_ms: ms(self.0.max()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn merged_buckets_give_the_same_percentiles() {
        let mut a = Latency::new();
        let mut b = Latency::new();
        let mut whole = Latency::new();
        for i in 1..=10_000u64 {
            let d = Duration::from_micros(i * 7);
            if i % 3 == 0 { &mut a } else { &mut b }.record(d);
            whole.record(d);
        }
        let mut merged = Latency::new();
        merged.merge(&a.buckets());
        merged.merge(&b.buckets());
        assert_eq!(merged.summary(), whole.summary());
        assert_eq!(merged.len(), 10_000);
        let s = whole.summary();
        assert!((s.p50_ms - 35.0).abs() < 0.1, "{s:?}");
        assert!((s.max_ms - 70.0).abs() < 0.1, "{s:?}");
    }

    #[test]
    fn empty_and_extreme_values_are_safe() {
        let mut h = Latency::new();
        assert_eq!(h.summary(), Summary::default());
        h.record(Duration::ZERO);
        h.record(Duration::from_secs(10 * 3600));
        assert_eq!(h.len(), 2);
    }
}
