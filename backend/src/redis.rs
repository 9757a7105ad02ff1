//! The Redis client (fred). One client per purpose: a blocking `XREADGROUP` needs a connection
//! of its own, and pub/sub subscribers are separate clients too (#6).

use std::time::Duration;

use fred::prelude::*;

/// Connect timeout for each attempt.
pub const DEFAULT_CONNECT_TIMEOUT: Duration = Duration::from_secs(2);

/// Builds a client that reconnects forever with capped backoff, and starts connecting it.
/// Returns before the first connection succeeds, so readiness can report a Redis that is down.
pub fn connect(url: &str) -> Result<Client, fred::error::Error> {
    let config = Config::from_url(url)?;
    let client = Builder::from_config(config)
        .with_connection_config(|c| {
            c.connection_timeout = DEFAULT_CONNECT_TIMEOUT;
        })
        .set_policy(ReconnectPolicy::new_exponential(0, 100, 2_000, 2))
        .build()?;
    // The connection task runs in the background; its handle ends when the client quits.
    let _connection = client.connect();
    Ok(client)
}
