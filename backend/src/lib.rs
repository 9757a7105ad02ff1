//! Haberci's backend tier. One binary, `haberci-backend`, with three subcommands:
//!
//! - `api` ([`api`]): the HTTP JSON API, built as [`api::app`] so tests drive the router without
//!   a socket. Reached by clients only through a gateway, which proxies `/v1/*` to it.
//! - `worker` ([`worker`]): consumes the message streams from Redis, stores messages and
//!   receipts, and publishes deliveries ([`messaging`]); also prunes ended sessions and spent
//!   refresh tokens ([`auth::sessions::prune`]).
//! - `migrate` ([`db::migrate`]): applies `migrations/` directly to Postgres (never through
//!   PgBouncer: DDL and advisory locks need a real session).
//!
//! Invariant: the backend is the only Postgres user, and it never terminates a client
//! connection. Its pool goes through PgBouncer ([`db::connect_pool`]).
//!
//! Other modules: [`config`] (settings from `HABERCI_*` env vars), [`redis`] (the fred client),
//! [`accounts`] (users: validated names and profile fields, their table queries), [`auth`]
//! (passwords, sessions and refresh tokens, the session cache, rate limits, audit lines),
//! [`conversations`] (groups, members, roles; reading messages for history and resume; the
//! membership events gateways follow), [`social`] (follows, blocks, posts, comments, likes,
//! the home feed and its fan-out, notifications).

pub mod accounts;
pub mod api;
pub mod auth;
pub mod config;
pub mod conversations;
pub mod db;
pub mod media;
pub mod messaging;
pub mod redis;
pub mod social;
pub mod worker;
