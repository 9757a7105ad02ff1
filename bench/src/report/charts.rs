//! The charts several scenarios draw: latency over the run and its percentiles, server CPU
//! per role and per 1,000 of what a phase counts.

use std::collections::BTreeMap;

use crate::report::latency::{Latency, Window};
use crate::report::plots::{self, Chart};
use crate::sampling::ServerSample;

/// Server CPU per 1,000 of what the samples count, per sample interval (total of all roles).
pub fn cpu_per_1000(samples: &[ServerSample]) -> Vec<(f64, f64)> {
    let mut prev = 0;
    let mut out = Vec::new();
    for s in samples {
        let done = s.done.saturating_sub(prev);
        prev = s.done;
        if done > 0 {
            let cpu: f64 = s.cpu_ms.values().sum();
            out.push((s.t_s, cpu * 1000.0 / done as f64));
        }
    }
    out
}

/// The latency-over-time chart of a timeline.
pub(crate) fn latency_chart(title: &str, windows: &[Window]) -> Chart {
    let pick = |f: fn(&Window) -> f64| {
        windows
            .iter()
            .map(|w| (w.t_s as f64, f(w)))
            .collect::<Vec<_>>()
    };
    Chart::new(title, "second of sending", "send → deliver, ms")
        .line("p50", pick(|w| w.p50_ms))
        .line("p90", pick(|w| w.p90_ms))
        .line("p99", pick(|w| w.p99_ms))
        .line("max", pick(|w| w.max_ms))
}

pub(crate) fn cdf_points(h: &Latency) -> Vec<(f64, f64)> {
    h.cdf()
        .into_iter()
        .filter(|(q, _)| *q < 1.0)
        .map(|(q, ms)| (plots::nines(q), ms))
        .collect()
}

/// Server CPU per role over time (ms of CPU per second of wall time).
pub(crate) fn cpu_chart(title: &str, samples: &[ServerSample]) -> Chart {
    let mut roles: BTreeMap<&str, Vec<(f64, f64)>> = BTreeMap::new();
    let mut prev_t = 0.0;
    for s in samples {
        let dt = (s.t_s - prev_t).max(1e-3);
        prev_t = s.t_s;
        for (role, ms) in &s.cpu_ms {
            // Postgres backends and roles with a number share one line per kind.
            roles
                .entry(role.as_str())
                .or_default()
                .push((s.t_s, ms / dt / 10.0));
        }
    }
    let mut chart = Chart::new(title, "second", "server CPU, % of one core");
    for (role, points) in roles {
        chart = chart.line(role, points);
    }
    chart
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cpu_per_1000_divides_each_interval_by_its_own_deliveries() {
        let sample = |t_s: f64, done: u64, ms: f64| ServerSample {
            t_s,
            done,
            cpu_ms: [
                ("gateway".to_owned(), ms / 2.0),
                ("worker".to_owned(), ms / 2.0),
            ]
            .into(),
            edge_rss_kib: 0,
        };
        let samples = vec![
            sample(1.0, 500, 100.0),
            sample(2.0, 500, 30.0),
            sample(3.0, 1500, 400.0),
        ];
        // The second interval delivered nothing: no point rather than a division by zero.
        assert_eq!(cpu_per_1000(&samples), vec![(1.0, 200.0), (3.0, 400.0)]);
    }
}
