//! Postgres statements per request, from `pg_stat_statements` (the dev cluster preloads it,
//! `deploy/postgres/haberci.conf`, with `track = top`: a statement the API sends counts once,
//! whatever functions it calls). A snapshot is the cumulative `calls` and time per statement
//! of this database; a measurement is the difference of two snapshots, less what the same
//! database did meanwhile without the bench (an idle window of its own: the worker polls its
//! outbox, other clients may query).

use std::collections::BTreeMap;

use serde::Serialize;
use sqlx::PgConnection;

/// Cumulative figures of one statement.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Counter {
    pub calls: i64,
    pub exec_ms: f64,
    pub query: String,
}

/// `(userid, queryid)` → counter.
pub type Snapshot = BTreeMap<(i64, i64), Counter>;

pub async fn snapshot(conn: &mut PgConnection) -> sqlx::Result<Snapshot> {
    /// userid, queryid, calls, total_exec_time, query.
    type Row = (i64, Option<i64>, i64, f64, Option<String>);
    let rows: Vec<Row> = sqlx::query_as(
        "SELECT s.userid::bigint, s.queryid, s.calls, s.total_exec_time, s.query
         FROM pg_stat_statements s JOIN pg_database d ON d.oid = s.dbid
         WHERE d.datname = current_database()",
    )
    .fetch_all(conn)
    .await?;
    Ok(rows
        .into_iter()
        .filter_map(|(user, id, calls, exec_ms, query)| {
            Some((
                (user, id?),
                Counter {
                    calls,
                    exec_ms,
                    query: query.unwrap_or_default(),
                },
            ))
        })
        .collect())
}

/// One statement's share of a measured window.
#[derive(Clone, Debug, Serialize, PartialEq)]
pub struct PerRequest {
    /// The statement, on one line, shortened.
    pub statement: String,
    /// Calls per request, after subtracting the idle rate.
    pub per_request: f64,
    /// Mean execution time in the measured window, ms.
    pub mean_ms: f64,
    /// Raw calls in the measured window and in the idle window.
    pub calls: i64,
    pub idle_calls: i64,
}

/// Statements per request: `busy` (over `busy_s` seconds, `requests` requests) less the
/// idle rate of `idle` (over `idle_s` seconds), per statement, those that round to at least
/// 0.005 per request, most frequent first; and their total.
pub fn per_request(
    busy: (&Snapshot, &Snapshot, f64),
    idle: (&Snapshot, &Snapshot, f64),
    requests: u64,
) -> (f64, Vec<PerRequest>) {
    let delta = |before: &Snapshot, after: &Snapshot, key: &(i64, i64)| -> (i64, f64) {
        let a = after.get(key).cloned().unwrap_or_default();
        let b = before.get(key).cloned().unwrap_or_default();
        (a.calls - b.calls, a.exec_ms - b.exec_ms)
    };
    let (busy_before, busy_after, busy_s) = busy;
    let (idle_before, idle_after, idle_s) = idle;
    let scale = if idle_s > 0.0 { busy_s / idle_s } else { 0.0 };
    let mut rows = Vec::new();
    for (key, counter) in busy_after {
        let (calls, ms) = delta(busy_before, busy_after, key);
        if calls <= 0 {
            continue;
        }
        let (idle_calls, _) = delta(idle_before, idle_after, key);
        let net = (calls as f64 - idle_calls as f64 * scale).max(0.0);
        let per_request = net / requests.max(1) as f64;
        if per_request < 0.005 {
            continue;
        }
        rows.push(PerRequest {
            statement: one_line(&counter.query, 160),
            per_request,
            mean_ms: ms / calls as f64,
            calls,
            idle_calls,
        });
    }
    rows.sort_by(|a, b| b.per_request.total_cmp(&a.per_request));
    let total = rows.iter().map(|r| r.per_request).sum();
    (total, rows)
}

/// The statements that took the most time between two snapshots: (statement, calls, mean ms,
/// total ms), at most `n`.
pub fn heaviest(before: &Snapshot, after: &Snapshot, n: usize) -> Vec<(String, i64, f64, f64)> {
    let mut rows: Vec<(String, i64, f64, f64)> = after
        .iter()
        .filter_map(|(key, a)| {
            let b = before.get(key).cloned().unwrap_or_default();
            let calls = a.calls - b.calls;
            let ms = a.exec_ms - b.exec_ms;
            (calls > 0).then(|| (one_line(&a.query, 160), calls, ms / calls as f64, ms))
        })
        .collect();
    rows.sort_by(|a, b| b.3.total_cmp(&a.3));
    rows.truncate(n);
    rows
}

/// The full text of the statement whose text holds `marker`, if it ran.
pub fn find<'a>(snapshot: &'a Snapshot, marker: &str) -> Option<&'a str> {
    snapshot
        .values()
        .find(|c| c.query.contains(marker))
        .map(|c| c.query.as_str())
}

/// Collapses whitespace and cuts at `max` characters.
pub fn one_line(text: &str, max: usize) -> String {
    let flat = text.split_whitespace().collect::<Vec<_>>().join(" ");
    if flat.chars().count() <= max {
        flat
    } else {
        let cut: String = flat.chars().take(max).collect();
        format!("{cut}…")
    }
}

/// The highest `$n` in a statement's text.
pub fn parameters(statement: &str) -> usize {
    statement
        .split('$')
        .skip(1)
        .filter_map(|rest| {
            let digits: String = rest.chars().take_while(char::is_ascii_digit).collect();
            digits.parse().ok()
        })
        .max()
        .unwrap_or(0)
}

/// `EXPLAIN (ANALYZE, BUFFERS)` of a statement as `pg_stat_statements` holds it (with `$n`
/// parameters), run once with `args` (SQL literals) through `PREPARE`/`EXECUTE`.
/// `pg_stat_statements` also turns the statement's own constants into parameters numbered
/// after the real ones; those get `1` (in the feed's statements they are all `SELECT 1`).
pub async fn explain(conn: &mut PgConnection, statement: &str, args: &[String]) -> String {
    let mut args = args.to_vec();
    while args.len() < parameters(statement) {
        args.push("1".into());
    }
    use sqlx::Row;
    // The simple query protocol: the `$n` belong to the prepared statement, not to this call.
    let _ = sqlx::raw_sql("DEALLOCATE bench_explain")
        .execute(&mut *conn)
        .await;
    let run = async {
        sqlx::raw_sql(&format!("PREPARE bench_explain AS {statement}"))
            .execute(&mut *conn)
            .await?;
        let rows = sqlx::raw_sql(&format!(
            "EXPLAIN (ANALYZE, BUFFERS) EXECUTE bench_explain({})",
            args.join(", ")
        ))
        .fetch_all(&mut *conn)
        .await?;
        let lines: Vec<String> = rows
            .iter()
            .map(|row| row.try_get::<String, _>(0))
            .collect::<Result<_, _>>()?;
        sqlx::raw_sql("DEALLOCATE bench_explain")
            .execute(&mut *conn)
            .await?;
        Ok::<String, sqlx::Error>(lines.join("\n"))
    };
    match run.await {
        Ok(plan) => plan,
        Err(err) => format!("(no plan: {err})"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn snap(entries: &[(i64, i64, &str)]) -> Snapshot {
        entries
            .iter()
            .map(|&(id, calls, q)| {
                (
                    (10, id),
                    Counter {
                        calls,
                        exec_ms: calls as f64 * 0.5,
                        query: q.into(),
                    },
                )
            })
            .collect()
    }

    #[test]
    fn idle_traffic_is_subtracted_at_its_rate() {
        // Idle: 10 s, the outbox poll 200 times. Busy: 5 s, 1,000 pages.
        let idle_a = snap(&[(1, 0, "SELECT … FROM feed_outbox")]);
        let idle_b = snap(&[(1, 200, "SELECT … FROM feed_outbox")]);
        let busy_a = idle_b.clone();
        let busy_b = snap(&[
            (1, 300, "SELECT … FROM feed_outbox"),
            (2, 1000, "WITH cand(id) AS ( … )"),
            (3, 3, "SELECT  1"),
        ]);
        let (total, rows) = per_request((&busy_a, &busy_b, 5.0), (&idle_a, &idle_b, 10.0), 1000);
        assert_eq!(rows.len(), 1, "{rows:?}");
        assert_eq!(rows[0].statement, "WITH cand(id) AS ( … )");
        assert!((total - 1.0).abs() < 1e-9);
        assert!((rows[0].mean_ms - 0.5).abs() < 1e-9);
    }

    #[test]
    fn parameters_are_counted_by_their_highest_number() {
        assert_eq!(parameters("SELECT $1, $12 FROM t WHERE a = $3"), 12);
        assert_eq!(parameters("SELECT 1"), 0);
        assert_eq!(parameters("SELECT '$' || $2"), 2);
    }

    #[test]
    fn statements_are_flattened_and_cut() {
        assert_eq!(
            one_line("SELECT a,\n   b\tFROM t", 100),
            "SELECT a, b FROM t"
        );
        assert_eq!(one_line("abcdef", 3), "abc…");
        let s = snap(&[(1, 5, "SELECT x FROM tl")]);
        assert_eq!(find(&s, "FROM tl"), Some("SELECT x FROM tl"));
        assert_eq!(heaviest(&Snapshot::new(), &s, 5)[0].1, 5);
    }
}
