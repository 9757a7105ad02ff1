//! Process plumbing shared by every Haberci binary. Nothing here knows about messaging.
//!
//! - [`config`]: reads `HABERCI_*` environment variables into typed settings and collects
//!   *every* bad setting into one error, so a misconfigured process says everything wrong at once
//!   and exits with [`config::EXIT_BAD_CONFIG`] (64, `EX_USAGE`).
//! - [`telemetry`]: structured logs (`tracing`), human or JSON.
//! - [`crypto`]: installs the one rustls crypto provider (ring) as the process default.
//! - [`http`]: the rules every HTTP response follows (security headers, CORS allow-list), shared
//!   by the gateway and the backend API.
//! - [`metrics`]: the Prometheus recorder and the internal `/metrics` listener.
//! - [`shutdown`]: a cancellation token tripped by SIGINT/SIGTERM, passed down to every task.
//! - [`udp`]: UDP sockets with kernel buffers sized for many QUIC connections on one socket.

pub mod config;
pub mod crypto;
pub mod http;
pub mod metrics;
pub mod runtime;
pub mod shutdown;
pub mod telemetry;
pub mod udp;
