//! Test support shared by the gateway, client and e2e suites (dev-only, never published).
//!
//! - [`env`]: the `HABERCI_TEST_*` settings `./dev test` exports (Postgres, Redis, the dev gateway).
//! - [`stack`]: the backend API, a message worker and a gateway in this process, on ephemeral ports.
//! - [`users`]: users registered through the backend API, their tokens, groups.
//! - [`api`]: one JSON request to the backend API over plain HTTP/1.1.
//! - [`transport`]: the three realtime transports, as a client reaches each.
//! - [`tls`]: client TLS that trusts a test CA.
//! - [`unique`]: names, stream prefixes and secrets no other test shares; free ports.
//!
//! And [`init`] (crypto provider, test logs), [`labelled`] (names the case or transport a
//! failure in a loop came from), [`TIMEOUT`].
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::fmt::Display;
use std::future::Future;
use std::time::Duration;

pub mod api;
pub mod env;
pub mod stack;
pub mod tls;
pub mod transport;
pub mod unique;
pub mod users;

pub use stack::{Backend, Stack};
pub use transport::TransportKind;
pub use users::User;

/// Bounds every network wait on an in-process stack.
pub const TIMEOUT: Duration = Duration::from_secs(10);

/// Once per process: the workspace's rustls crypto provider (ring), and logs to the test's
/// output filtered by `HABERCI_LOG`.
pub fn init() {
    haberci_kit::crypto::install_crypto_provider();
    let _ = tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::from_env("HABERCI_LOG"))
        .with_test_writer()
        .try_init();
}

/// Runs `future` in a task of its own; a panic in it panics again with `label` in front, so a
/// failure in a loop over cases or transports says which one failed.
pub async fn labelled(label: impl Display, future: impl Future<Output = ()> + Send + 'static) {
    if let Err(err) = tokio::spawn(future).await {
        let panic = err.into_panic();
        let message = panic
            .downcast_ref::<String>()
            .map(String::as_str)
            .or_else(|| panic.downcast_ref::<&str>().copied())
            .unwrap_or("(no message)");
        panic!("{label}: {message}");
    }
}
