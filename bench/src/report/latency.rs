//! Latency histograms (HDR, microseconds, 3 significant digits) and their summaries. Shards
//! hand their recorded buckets to the coordinator, which merges them exactly.

use std::time::Duration;

use hdrhistogram::Histogram;
use serde::{Deserialize, Serialize};

/// The largest latency recorded as itself; anything slower counts as this (1 hour).
const HIGHEST_US: u64 = 3_600_000_000;

#[derive(Clone, Debug)]
pub struct Latency(Histogram<u64>);

/// Where a CDF is sampled: evenly to the median, then ever closer to 1.
const CDF_QUANTILES: &[f64] = &[
    0.0, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.75, 0.8, 0.85, 0.9, 0.925, 0.95, 0.975, 0.99, 0.995,
    0.999, 0.9995, 0.9999, 0.99999,
];

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

    /// The distribution as (quantile, ms) points, densest in the tail: what a CDF plot
    /// draws. Empty for an empty histogram; the last point is the maximum (quantile 1).
    pub fn cdf(&self) -> Vec<(f64, f64)> {
        if self.0.is_empty() {
            return Vec::new();
        }
        let mut points: Vec<(f64, f64)> = CDF_QUANTILES
            .iter()
            .map(|&q| (q, self.0.value_at_quantile(q) as f64 / 1000.0))
            .collect();
        points.push((1.0, self.0.max() as f64 / 1000.0));
        points
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

/// Latency percentiles per second of sending, from the shards' per-second buckets.
#[derive(Clone, Debug, Serialize)]
pub struct Window {
    /// Seconds since the first second of sending.
    pub t_s: u64,
    pub count: u64,
    pub p50_ms: f64,
    pub p90_ms: f64,
    pub p99_ms: f64,
    pub max_ms: f64,
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

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
    fn the_cdf_rises_to_the_maximum() {
        let mut h = Latency::new();
        assert!(h.cdf().is_empty());
        for ms in 1..=1000u64 {
            h.record(Duration::from_millis(ms));
        }
        let cdf = h.cdf();
        assert!(
            cdf.windows(2).all(|w| w[0].0 < w[1].0 && w[0].1 <= w[1].1),
            "{cdf:?}"
        );
        assert_eq!(cdf.last().map(|p| p.0), Some(1.0));
        let median = cdf.iter().find(|p| p.0 == 0.5).unwrap().1;
        assert!((median - 500.0).abs() < 1.0, "{median}");
        assert!((cdf.last().unwrap().1 - 1000.0).abs() < 1.0);
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
