//! What the backend counts, in one place (docs/OPERATIONS.md, "Metrics"): every metric the API
//! and the worker record is a function here. HTTP requests are counted by
//! `haberci_kit::metrics::track_http`; stream lag and pending entries come from Redis itself
//! (the Redis exporter's `redis_stream_*`), so they are there when no worker is.

use std::time::Duration;

use metrics::{counter, describe_counter, describe_histogram, histogram};

/// Gives every metric its help text and unit; called once at start.
pub fn describe() {
    metrics::describe_gauge!(
        "haberci_db_replica_staleness_seconds",
        metrics::Unit::Seconds,
        "How old the read replica's data may be: since the newest moment all of whose primary commits it has replayed (+Inf: never fresh yet). Above HABERCI_REPLICA_MAX_STALENESS_MS reads go to the primary."
    );
    describe_counter!(
        "haberci_db_stale_reads_total",
        "Reads that may lag, by the server that served them (replica, primary)."
    );
    describe_counter!(
        "haberci_api_rate_limited_total",
        "Requests refused by a rate limit (429), by action (login, register, refresh, post, comment, like, follow)."
    );
    describe_counter!(
        "haberci_api_logins_failed_total",
        "Failed logins, by reason (bad_credentials, rate_limited); each also writes the fail2ban line."
    );
    describe_counter!(
        "haberci_api_refresh_reuse_total",
        "Spent refresh tokens presented again (their session is revoked)."
    );
    describe_counter!(
        "haberci_api_sessions_revoked_total",
        "Login sessions revoked, by reason (logout, revoked, logout_all, refresh_reuse, other)."
    );
    describe_histogram!(
        "haberci_worker_batch_entries",
        "Stream entries in one worker batch (sends and receipts)."
    );
    describe_histogram!(
        "haberci_worker_transaction_seconds",
        metrics::Unit::Seconds,
        "Time to commit one batch in Postgres, retries included."
    );
    describe_counter!(
        "haberci_worker_entries_total",
        "Stream entries processed, by outcome (stored, duplicate, refused, poison, receipt)."
    );
    describe_counter!(
        "haberci_worker_publish_failures_total",
        "Committed batches whose publish failed (their entries stay pending and are reclaimed)."
    );
    describe_counter!(
        "haberci_worker_postgres_retries_total",
        "Batch commits run again, by cause (conflict, outage)."
    );
}

/// A request refused by the rate-limit bucket `key` (`rl:{<action>}:…`).
pub fn rate_limited(key: &str) {
    counter!("haberci_api_rate_limited_total", "action" => action_label(key)).increment(1);
}

/// The action of a rate-limit key as a label: one of the known actions, else `other`.
fn action_label(key: &str) -> &'static str {
    match key
        .split(':')
        .nth(1)
        .map(|tag| tag.trim_start_matches('{').trim_end_matches('}'))
    {
        Some("login") => "login",
        Some("register") => "register",
        Some("refresh") => "refresh",
        Some("post") => "post",
        Some("comment") => "comment",
        Some("like") => "like",
        Some("follow") => "follow",
        _ => "other",
    }
}

pub fn login_failed(reason: &'static str) {
    counter!("haberci_api_logins_failed_total", "reason" => reason).increment(1);
}

pub fn refresh_reused() {
    counter!("haberci_api_refresh_reuse_total").increment(1);
}

pub fn sessions_revoked(reason: &'static str, count: usize) {
    counter!("haberci_api_sessions_revoked_total", "reason" => reason).increment(count as u64);
}

/// One committed batch of the worker.
pub struct Batch {
    pub entries: usize,
    pub took: Duration,
    pub stored: usize,
    pub duplicates: usize,
    pub refused: usize,
    pub poison: usize,
    pub receipts: usize,
}

pub fn batch_committed(batch: &Batch) {
    histogram!("haberci_worker_batch_entries").record(batch.entries as f64);
    histogram!("haberci_worker_transaction_seconds").record(batch.took.as_secs_f64());
    for (outcome, count) in [
        ("stored", batch.stored),
        ("duplicate", batch.duplicates),
        ("refused", batch.refused),
        ("poison", batch.poison),
        ("receipt", batch.receipts),
    ] {
        if count > 0 {
            counter!("haberci_worker_entries_total", "outcome" => outcome).increment(count as u64);
        }
    }
}

pub fn publish_failed() {
    counter!("haberci_worker_publish_failures_total").increment(1);
}

pub fn postgres_retry(cause: &'static str) {
    counter!("haberci_worker_postgres_retries_total", "cause" => cause).increment(1);
}

#[cfg(test)]
mod tests {
    #[test]
    fn rate_limit_actions_come_from_the_key_and_unknown_ones_are_other() {
        for (key, label) in [
            ("rl:{login}:ip:10/60s:203.0.113.7", "login"),
            ("rl:{post}:account:60/3600s:user:x", "post"),
            ("rl:{follow}:account:400/86400s:user:x", "follow"),
            ("rl:{something-new}:ip:1/1s:x", "other"),
            ("garbage", "other"),
        ] {
            assert_eq!(super::action_label(key), label, "{key}");
        }
    }
}
