//! The load side of `social`: a few HTTP/2 connections to the gateway shared by every request
//! (each request a stream, each carrying its user's token), and what a request's outcome adds
//! to a tally.

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use http::{Method, StatusCode};
use serde::Serialize;

use crate::api::{ApiTarget, H2Answer, H2Connection};
use crate::report::latency::{Latency, Summary};

/// A driven (registered) user: its node in the graph and its access token.
#[derive(Clone, Debug)]
pub struct Driver {
    pub node: usize,
    pub id: uuid::Uuid,
    pub username: String,
    pub token: String,
}

/// HTTP/2 connections, used in turn; one that closed is opened again on its next use.
pub struct Client {
    api: ApiTarget,
    sources: Vec<IpAddr>,
    conns: tokio::sync::Mutex<Vec<Option<H2Connection>>>,
    next: AtomicUsize,
    timeout: Duration,
}

impl Client {
    pub async fn new(
        api: ApiTarget,
        sources: Vec<IpAddr>,
        connections: usize,
        timeout: Duration,
    ) -> anyhow::Result<Arc<Client>> {
        let mut conns = Vec::new();
        for i in 0..connections.max(1) {
            conns.push(Some(api.connect_h2(sources[i % sources.len()]).await?));
        }
        Ok(Arc::new(Client {
            api,
            sources,
            conns: tokio::sync::Mutex::new(conns),
            next: AtomicUsize::new(0),
            timeout,
        }))
    }

    async fn conn(&self) -> anyhow::Result<H2Connection> {
        let mut conns = self.conns.lock().await;
        let i = self.next.fetch_add(1, Ordering::Relaxed) % conns.len();
        if let Some(conn) = conns[i].as_ref().filter(|c| c.is_usable()) {
            return Ok(conn.clone());
        }
        let conn = self
            .api
            .connect_h2(self.sources[i % self.sources.len()])
            .await?;
        conns[i] = Some(conn.clone());
        Ok(conn)
    }

    pub async fn call(
        &self,
        token: &str,
        method: Method,
        path: &str,
        body: Option<&serde_json::Value>,
    ) -> anyhow::Result<H2Answer> {
        let conn = self.conn().await?;
        conn.call(token, method, path, body, self.timeout).await
    }

    /// `GET /v1/feed/home?limit=20` as `token`; a non-200 answer is an error.
    pub async fn home(&self, token: &str) -> Result<H2Answer, String> {
        expect(
            self.call(token, Method::GET, HOME_PATH, None).await,
            "home",
            &[StatusCode::OK],
        )
    }
}

/// The page the home timeline figures are about: 20 hydrated posts.
pub const HOME_PATH: &str = "/v1/feed/home?limit=20";

/// The answer if its status is one of `ok`, else a short reason (the tally's key).
pub fn expect(
    answer: anyhow::Result<H2Answer>,
    what: &str,
    ok: &[StatusCode],
) -> Result<H2Answer, String> {
    match answer {
        Ok(a) if ok.contains(&a.status) => Ok(a),
        Ok(a) => {
            let code = serde_json::from_slice::<serde_json::Value>(&a.body)
                .ok()
                .and_then(|b| b["error"]["code"].as_str().map(str::to_owned))
                .unwrap_or_default();
            Err(format!("{what}: HTTP {} {code}", a.status.as_u16())
                .trim_end()
                .to_owned())
        }
        Err(err) => {
            let text = format!("{err:#}");
            Err(format!(
                "{what}: {}",
                text.chars().take(120).collect::<String>()
            ))
        }
    }
}

/// Latencies, where pages came from, and errors by reason.
#[derive(Default)]
pub struct Tally {
    pub latency: Latency,
    pub sources: BTreeMap<String, u64>,
    pub errors: BTreeMap<String, u64>,
}

impl Tally {
    pub fn record(&mut self, took: Duration, outcome: &Result<H2Answer, String>) {
        match outcome {
            Ok(answer) => {
                self.latency.record(took);
                if let Some(source) = &answer.feed_source {
                    *self.sources.entry(source.clone()).or_default() += 1;
                }
            }
            Err(why) => *self.errors.entry(why.clone()).or_default() += 1,
        }
    }

    pub fn merge(&mut self, other: Tally) {
        self.latency.merge(&other.latency.buckets());
        for (k, v) in other.sources {
            *self.sources.entry(k).or_default() += v;
        }
        for (k, v) in other.errors {
            *self.errors.entry(k).or_default() += v;
        }
    }

    pub fn errors(&self) -> u64 {
        self.errors.values().sum()
    }
}

/// A latency distribution for the report: its summary and its CDF points (nines axis).
#[derive(Clone, Debug, Default, Serialize)]
pub struct Distribution {
    pub summary: Summary,
    pub cdf: Vec<(f64, f64)>,
}

impl Distribution {
    pub fn of(latency: &Latency) -> Distribution {
        Distribution {
            summary: latency.summary(),
            cdf: crate::report::charts::cdf_points(latency),
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use bytes::Bytes;

    use super::*;

    fn answer(status: u16, body: &str, source: Option<&str>) -> anyhow::Result<H2Answer> {
        Ok(H2Answer {
            status: StatusCode::from_u16(status).unwrap(),
            feed_source: source.map(str::to_owned),
            body: Bytes::from(body.to_owned()),
        })
    }

    #[test]
    fn outcomes_are_tallied_by_source_and_reason() {
        let mut t = Tally::default();
        let ok = [StatusCode::OK];
        t.record(
            Duration::from_millis(3),
            &expect(answer(200, "{}", Some("cache")), "home", &ok),
        );
        t.record(
            Duration::from_millis(9),
            &expect(
                answer(429, r#"{"error":{"code":"rate_limited"}}"#, None),
                "post",
                &ok,
            ),
        );
        t.record(
            Duration::from_millis(9),
            &expect(Err(anyhow::anyhow!("reset")), "like", &ok),
        );
        assert_eq!(t.latency.len(), 1);
        assert_eq!(t.sources["cache"], 1);
        assert_eq!(t.errors["post: HTTP 429 rate_limited"], 1);
        assert_eq!(t.errors["like: reset"], 1);
        let mut all = Tally::default();
        all.merge(t);
        assert_eq!(all.errors(), 2);
    }
}
