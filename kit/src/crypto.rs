//! Invariant: the process uses exactly one rustls crypto provider, ring. rustls panics when it
//! has to choose between two compiled-in providers and none was installed, so every binary calls
//! [`install_crypto_provider`] first thing in `main` (tests call it too; it is idempotent).

/// Installs ring as rustls' process-wide default provider. Safe to call more than once.
pub fn install_crypto_provider() {
    // `install_default` fails only when a provider is already installed, which is the state we
    // want either way.
    let _ = rustls::crypto::ring::default_provider().install_default();
}
