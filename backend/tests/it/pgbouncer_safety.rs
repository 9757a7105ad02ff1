//! PgBouncer 1.18 in transaction mode has answered one client's query with *another client's*
//! rows. This test is the guard: 64 concurrent tasks share a pool through PgBouncer, each asking
//! many times for its own distinct value, with named (cached) and unnamed statements, in and
//! out of explicit transactions. Every answer must be the asker's own.

use std::collections::HashSet;

use futures::future::join_all;
use sqlx::{Connection, Row};

use crate::env;

const TASKS: i64 = 64;
const ROUNDS: i64 = 40;

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn every_task_gets_only_its_own_rows() {
    // Fewer connections than tasks: connections are handed from task to task between queries,
    // which is when a mixed-up pooler shows.
    let pool = haberci_backend::db::connect_pool(&env("HABERCI_TEST_DATABASE_URL"), 24).unwrap();
    let tasks = (0..TASKS).map(|task| {
        let pool = pool.clone();
        tokio::spawn(async move {
            let mut wrong = Vec::new();
            for round in 0..ROUNDS {
                let value = task * 1_000_000 + round;
                // Named, cached prepared statement outside a transaction.
                let got: i64 = sqlx::query_scalar("SELECT $1::int8")
                    .bind(value)
                    .fetch_one(&pool)
                    .await
                    .unwrap();
                if got != value {
                    wrong.push(("named", value, got));
                }
                // Unnamed statement outside a transaction.
                let got: i64 = sqlx::query_scalar("SELECT $1::int8 + 0")
                    .bind(value)
                    .persistent(false)
                    .fetch_one(&pool)
                    .await
                    .unwrap();
                if got != value {
                    wrong.push(("unnamed", value, got));
                }
                // Inside an explicit transaction, with a row set rather than a scalar.
                let mut tx = pool.begin().await.unwrap();
                let rows = sqlx::query("SELECT $1::int8 + g FROM generate_series(0, 2) AS g")
                    .bind(value)
                    .fetch_all(&mut *tx)
                    .await
                    .unwrap();
                let got: Vec<i64> = rows.iter().map(|r| r.get::<i64, _>(0)).collect();
                if got != [value, value + 1, value + 2] {
                    wrong.push(("transaction", value, got[0]));
                }
                tx.commit().await.unwrap();
            }
            wrong
        })
    });
    let results = join_all(tasks).await;
    let wrong: Vec<_> = results.into_iter().flat_map(|r| r.unwrap()).collect();
    assert!(wrong.is_empty(), "rows crossed between clients: {wrong:?}");
    pool.close().await;
}

#[tokio::test]
async fn pgbouncer_runs_in_session_mode_and_backends_are_distinct_per_connection() {
    // In session mode two simultaneously open client connections are two server sessions.
    let url = env("HABERCI_TEST_DATABASE_URL");
    let mut a = sqlx::PgConnection::connect(&url).await.unwrap();
    let mut b = sqlx::PgConnection::connect(&url).await.unwrap();
    let mut pids = HashSet::new();
    for _ in 0..5 {
        for conn in [&mut a, &mut b] {
            let pid: i32 = sqlx::query_scalar("SELECT pg_backend_pid()")
                .fetch_one(&mut *conn)
                .await
                .unwrap();
            pids.insert(pid);
        }
    }
    assert_eq!(
        pids.len(),
        2,
        "each client connection keeps its own server session"
    );
}
