//! Gateway integration tests: a real gateway in-process on ephemeral ports, real TLS, real QUIC,
//! and a real backend API against the Postgres, PgBouncer and Redis that `./dev test` started.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod client;
mod memory;
mod support;

mod accounts;
mod alpn;
mod certs_reload;
mod handshake;
mod http_versions;
mod limits;
mod logs;
mod media;
mod native;
mod proxy;
mod relay;
mod resumption;
mod shutdown;
mod streaming;
mod tickets;
mod web;
mod websocket;
mod webtransport;
