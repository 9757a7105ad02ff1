//! Prometheus metrics. Each process installs one global [`metrics`] recorder ([`install`]) and
//! serves it in the Prometheus text format on an internal listener ([`serve`],
//! `HABERCI_METRICS_ADDR`), beside process CPU, memory and open files (`process_*`, read from
//! /proc on every scrape).
//!
//! Conventions (docs/OPERATIONS.md, "Metrics"): names start with `haberci_<role>_`, counters end
//! in `_total`, durations are `_seconds` histograms, sizes are plain numbers; labels take a small
//! fixed set of values (a transport, a frame kind, a close code, a route template, a shard) and
//! never a user, session or conversation id.
//!
//! Recording is cheap and lock-free (`metrics` handles are atomics); with no recorder installed
//! (tests that build a router or a session without a process around them) it is a no-op.

use std::net::SocketAddr;
use std::sync::OnceLock;
use std::time::Duration;

use axum::Router;
use axum::extract::{MatchedPath, Request};
use axum::http::header;
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use metrics::{counter, describe_counter, describe_histogram, histogram};
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};

use crate::config::Env;
use crate::shutdown::Shutdown;

/// Where a process serves `/metrics` unless `HABERCI_METRICS_ADDR` says otherwise; `off`
/// serves nothing.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MetricsConfig {
    pub addr: Option<SocketAddr>,
}

impl MetricsConfig {
    /// Reads `HABERCI_METRICS_ADDR` (`host:port`, or `off`); `default` when unset.
    pub fn from_env(env: &mut Env, default: SocketAddr) -> MetricsConfig {
        match env.raw("HABERCI_METRICS_ADDR").as_deref() {
            Some("off") => MetricsConfig { addr: None },
            _ => MetricsConfig {
                addr: Some(env.parse_or("HABERCI_METRICS_ADDR", default)),
            },
        }
    }
}

/// Latency buckets in seconds, from half a millisecond (a local Redis call) to 10 s (a stalled
/// transaction).
pub const LATENCY_BUCKETS: &[f64] = &[
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
];
/// Buckets of counts (entries in a batch, frames in a write): powers of two up to 4,096.
pub const COUNT_BUCKETS: &[f64] = &[
    1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0, 128.0, 256.0, 512.0, 1024.0, 4096.0,
];

/// The rendered form of every metric recorded in this process.
#[derive(Clone)]
pub struct Metrics {
    handle: PrometheusHandle,
    samplers: Vec<std::sync::Arc<dyn Fn() + Send + Sync>>,
}

impl Metrics {
    /// Adds a function run before every render, to read a value kept elsewhere (a kernel
    /// counter) into its metric.
    pub fn sampled_by(mut self, sampler: impl Fn() + Send + Sync + 'static) -> Metrics {
        self.samplers.push(std::sync::Arc::new(sampler));
        self
    }

    /// The Prometheus text exposition of everything recorded so far, process metrics included.
    pub fn render(&self) -> String {
        metrics_process::Collector::default().collect();
        for sample in &self.samplers {
            sample();
        }
        self.handle.render()
    }
}

/// Installs the process-wide recorder: histograms whose name ends in `_seconds` get
/// [`LATENCY_BUCKETS`], the others [`COUNT_BUCKETS`]. Call once, from `main` (a second call
/// fails: a process has one recorder).
pub fn install() -> Result<Metrics, MetricsError> {
    let recorder = PrometheusBuilder::new()
        .set_buckets(COUNT_BUCKETS)
        .and_then(|b| b.set_buckets_for_metric(Matcher::Suffix("_seconds".into()), LATENCY_BUCKETS))
        .map_err(|err| MetricsError(err.to_string()))?
        .build_recorder();
    let handle = recorder.handle();
    metrics::set_global_recorder(recorder).map_err(|err| MetricsError(err.to_string()))?;
    let _ = INSTALLED.set(handle.clone());
    // Histogram samples wait in per-metric queues until drained into buckets: drain them
    // whether or not anything scrapes (`HABERCI_METRICS_ADDR=off`), so memory stays flat.
    let upkeep = handle.clone();
    std::thread::Builder::new()
        .name("metrics-upkeep".into())
        .spawn(move || {
            loop {
                std::thread::sleep(UPKEEP_EVERY);
                upkeep.run_upkeep();
            }
        })
        .map_err(|err| MetricsError(err.to_string()))?;
    metrics_process::Collector::default().describe();
    describe_counter!(
        "haberci_http_requests_total",
        "HTTP requests answered, by method, route template (`unmatched` for none) and status."
    );
    describe_histogram!(
        "haberci_http_request_duration_seconds",
        metrics::Unit::Seconds,
        "Time to the response head of an HTTP request, by route template."
    );
    Ok(Metrics {
        handle,
        samplers: Vec::new(),
    })
}

/// Middleware counting every request by method, route template and status, and timing it to
/// its response head (`haberci_http_requests_total`, `haberci_http_request_duration_seconds`).
/// Add it with `Router::layer` so the route template is known; requests no route matched
/// count as `unmatched` (never their path: a path is unbounded).
pub async fn track_http(request: Request, next: Next) -> Response {
    let started = std::time::Instant::now();
    let route = request
        .extensions()
        .get::<MatchedPath>()
        .map_or_else(|| "unmatched".to_owned(), |path| path.as_str().to_owned());
    let method = http_method(request.method());
    let response = next.run(request).await;
    let status = response.status().as_u16().to_string();
    histogram!("haberci_http_request_duration_seconds", "route" => route.clone())
        .record(started.elapsed().as_secs_f64());
    counter!("haberci_http_requests_total", "method" => method, "route" => route, "status" => status)
        .increment(1);
    response
}

/// A method as a label: the standard ones by name, anything else as `other`.
fn http_method(method: &axum::http::Method) -> &'static str {
    use axum::http::Method;
    match *method {
        Method::GET => "GET",
        Method::HEAD => "HEAD",
        Method::POST => "POST",
        Method::PUT => "PUT",
        Method::PATCH => "PATCH",
        Method::DELETE => "DELETE",
        Method::OPTIONS => "OPTIONS",
        Method::CONNECT => "CONNECT",
        _ => "other",
    }
}

/// Why the recorder could not be installed.
#[derive(Debug, thiserror::Error)]
#[error("cannot install the metrics recorder: {0}")]
pub struct MetricsError(String);

static INSTALLED: OnceLock<PrometheusHandle> = OnceLock::new();

/// The recorder [`install`] set up in this process, if any (none in tests that run a library
/// function without a `main` around it).
pub fn installed() -> Option<Metrics> {
    INSTALLED.get().map(|handle| Metrics {
        handle: handle.clone(),
        samplers: Vec::new(),
    })
}

/// Serves `/metrics` on `config`'s address when it has one and a recorder is installed.
pub async fn serve_if_configured(config: MetricsConfig, shutdown: Shutdown) -> std::io::Result<()> {
    if let (Some(addr), Some(metrics)) = (config.addr, installed()) {
        let router = router(metrics, Router::new());
        serve(addr, router, shutdown).await?;
    }
    Ok(())
}

/// The internal router: `GET /metrics` and whatever `extra` adds (the gateway's status page).
pub fn router(metrics: Metrics, extra: Router) -> Router {
    let shared = metrics;
    extra.route(
        "/metrics",
        get(move || {
            let metrics = shared.clone();
            async move {
                (
                    [(
                        header::CONTENT_TYPE,
                        "text/plain; version=0.0.4; charset=utf-8",
                    )],
                    metrics.render(),
                )
                    .into_response()
            }
        }),
    )
}

/// Binds `addr` and serves `router` until `shutdown`; returns the bound address.
pub async fn serve(
    addr: SocketAddr,
    router: Router,
    shutdown: Shutdown,
) -> std::io::Result<SocketAddr> {
    let listener = tokio::net::TcpListener::bind(addr).await?;
    let bound = listener.local_addr()?;
    tokio::spawn(async move {
        let serve =
            axum::serve(listener, router).with_graceful_shutdown(shutdown.cancelled_owned());
        if let Err(err) = serve.await {
            tracing::error!(%err, "metrics listener failed");
        }
    });
    tracing::info!(addr = %bound, "serving metrics");
    Ok(bound)
}

const UPKEEP_EVERY: Duration = Duration::from_secs(5);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_metrics_address_is_a_socket_address_or_off() {
        let default: SocketAddr = "127.0.0.1:9601".parse().unwrap_or_else(|_| unreachable!());
        let read = |pairs: &[(&str, &str)]| {
            let mut env = Env::from_pairs(pairs);
            let config = MetricsConfig::from_env(&mut env, default);
            (config, env.finish())
        };
        assert_eq!(read(&[]).0.addr, Some(default));
        assert_eq!(read(&[("HABERCI_METRICS_ADDR", "off")]).0.addr, None);
        let (config, result) = read(&[("HABERCI_METRICS_ADDR", "10.0.0.5:9700")]);
        assert_eq!(
            config.addr,
            Some("10.0.0.5:9700".parse().unwrap_or(default))
        );
        assert!(result.is_ok());
        let (_, result) = read(&[("HABERCI_METRICS_ADDR", "9700")]);
        let err = result.expect_err("a port alone is not an address");
        assert!(err.to_string().contains("HABERCI_METRICS_ADDR"), "{err}");
    }
}
