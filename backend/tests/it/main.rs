//! Backend integration tests against the real Postgres (through PgBouncer) and Redis started by
//! `./dev test`.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

mod api;
mod auth_key_rotation;
mod auth_lifecycle;
mod auth_prune;
mod auth_rate_limits;
mod auth_sessions;
mod auth_tokens;
mod auth_validation;
mod conversations;
mod feed;
mod http_surface;
mod ids;
mod internal_sync;
mod media;
mod migrations;
mod partitioning;
mod pgbouncer_safety;
mod redis_outage;
mod social;
mod social_authz;
mod worker_messages;

pub fn env(key: &str) -> String {
    std::env::var(key).unwrap_or_else(|_| {
        panic!("{key} is not set: run the tests through `./dev test`, which starts the stack")
    })
}
