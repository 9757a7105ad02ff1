//! Haberci's backend tier. One binary, `haberci-backend`, with five subcommands:
//!
//! - `api` ([`api::run`]): the HTTP JSON API, built as [`api::app`] so tests drive the router
//!   without a socket. Reached by clients only through a gateway, which proxies `/v1/*` to it.
//! - `worker` ([`worker::run`]): consumes the message streams from Redis, stores messages and
//!   receipts, and publishes deliveries ([`messaging`]); also prunes ended sessions and spent
//!   refresh tokens ([`auth::sessions::prune`]).
//! - `migrate` ([`db::migrate`]): applies `migrations/` directly to Postgres (never through
//!   PgBouncer: DDL and advisory locks need a real session).
//! - `partition-messages` ([`partitioning::run`]): the online copy and swap that finish the
//!   move of `messages` to a partitioned table on a database that already holds messages.
//! - `keys` ([`auth::keys::ensure_key`], [`auth::keys::add_key`]): the access-token signing keys.
//!
//! Ids are `haberci_wire`'s newtypes (`UserId`, `ConversationId`, `PostId`, …) everywhere, in
//! Postgres too (the wire crate's `sqlx` feature); new rows get [`db::new_id`]. A bare `Uuid`
//! in a signature is a position (a page cursor), an id no other tier has (an upload, a
//! report), or a request body's value before the handler checks it.
//!
//! Invariant: the backend is the only Postgres user, and it never terminates a client
//! connection. Its pool goes through PgBouncer ([`db::connect_pool`]).
//!
//! Other modules: [`config`] (settings from `HABERCI_*` env vars), [`redis`] (the fred client),
//! [`accounts`] (users: validated names and profile fields, their table queries), [`auth`]
//! (passwords, sessions and refresh tokens, the session cache, rate limits, audit lines),
//! [`conversations`] (groups, members, roles; reading messages for history and resume; the
//! membership events gateways follow), [`social`] (follows, blocks, posts, comments, likes,
//! the home feed and its fan-out, notifications), [`metrics`] (every metric the API and the
//! worker record).

pub mod accounts;
pub mod api;
pub mod auth;
pub mod config;
pub mod conversations;
pub mod db;
pub mod media;
pub mod messaging;
pub mod metrics;
pub mod migration_rules;
pub mod partitioning;
pub mod redis;
pub mod replica;
pub mod social;
pub mod worker;
