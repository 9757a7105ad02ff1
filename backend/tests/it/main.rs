//! Backend integration tests against the real Postgres (through PgBouncer) and Redis started by
//! `./dev test`.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod api;
mod migrations;
mod pgbouncer_safety;

pub fn env(key: &str) -> String {
    std::env::var(key).unwrap_or_else(|_| {
        panic!("{key} is not set: run the tests through `./dev test`, which starts the stack")
    })
}
