//! Access-token verification keys, fetched from the backend's JWKS (`GET /v1/auth/jwks`).
//!
//! The gateway verifies realtime sessions' tokens with the public keys alone ([`Verifier`]);
//! it never sees a signing key. [`refresh`] loads the JWKS at start (retrying every second until
//! the backend answers) and then every [`DEFAULT_JWKS_REFRESH`], so a key published by the
//! backend is accepted here within that interval. Until the first load there is nothing to
//! verify a token with: a session's `Hello` waits for the load (a few seconds at most,
//! `transport::drive`), then is told to come back (`server_draining`, retryable), never
//! `unauthenticated`: a client that reconnects to a gateway just started would otherwise give
//! up for good.

use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwap;
use haberci_kit::shutdown::Shutdown;
use haberci_token::Verifier;

use super::backend::Backend;

/// How often the JWKS is fetched again once loaded.
pub const DEFAULT_JWKS_REFRESH: Duration = Duration::from_secs(30);
/// How often a failed fetch is retried.
pub const JWKS_RETRY: Duration = Duration::from_secs(1);

/// The verifier sessions use now.
pub struct TokenKeys {
    current: ArcSwap<Verifier>,
    loaded: tokio::sync::watch::Sender<bool>,
}

impl Default for TokenKeys {
    fn default() -> Self {
        TokenKeys {
            current: ArcSwap::from_pointee(Verifier::from_public_keys(std::iter::empty())),
            loaded: tokio::sync::watch::Sender::new(false),
        }
    }
}

impl TokenKeys {
    pub fn current(&self) -> Arc<Verifier> {
        self.current.load_full()
    }

    pub fn replace(&self, verifier: Verifier) {
        self.current.store(Arc::new(verifier));
        self.loaded.send_replace(true);
    }

    /// Whether keys have been loaded at least once.
    pub fn is_loaded(&self) -> bool {
        *self.loaded.borrow()
    }

    /// How many are waiting in [`TokenKeys::loaded`] (tests: a `Hello` is held).
    pub fn waiting(&self) -> usize {
        self.loaded.receiver_count()
    }

    /// Resolves once keys have been loaded at least once.
    pub async fn loaded(&self) {
        let mut loaded = self.loaded.subscribe();
        let _ = loaded.wait_for(|loaded| *loaded).await;
    }
}

/// Keeps `keys` in step with the backend's JWKS until shutdown.
pub async fn refresh(keys: Arc<TokenKeys>, backend: Backend, shutdown: Shutdown) {
    loop {
        let next = match backend.jwks().await {
            Some(jwks) => match Verifier::from_jwks(&jwks) {
                Ok(verifier) => {
                    keys.replace(verifier);
                    DEFAULT_JWKS_REFRESH
                }
                Err(err) => {
                    tracing::warn!(%err, "backend JWKS refused; keeping the current keys");
                    JWKS_RETRY
                }
            },
            None => {
                tracing::debug!("backend JWKS unavailable; retrying");
                JWKS_RETRY
            }
        };
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tokio::time::sleep(next) => {}
        }
    }
}
