//! rustls client settings. Invariant: ring is the only crypto provider in the workspace, and
//! it is passed explicitly here, so the client works whether or not the process installed a
//! default provider.

use std::sync::Arc;

use rustls_pki_types::CertificateDer;
use rustls_pki_types::pem::PemObject;

use crate::config::Roots;
use crate::error::ConnectError;

pub(crate) fn root_store(roots: &Roots) -> Result<rustls::RootCertStore, ConnectError> {
    match roots {
        Roots::Store(store) => Ok(store.clone()),
        Roots::PemFile(path) => {
            let bad = |err: &dyn std::fmt::Display| {
                ConnectError::Config(format!("root certificates {}: {err}", path.display()))
            };
            let mut store = rustls::RootCertStore::empty();
            for cert in CertificateDer::pem_file_iter(path).map_err(|e| bad(&e))? {
                store.add(cert.map_err(|e| bad(&e))?).map_err(|e| bad(&e))?;
            }
            if store.is_empty() {
                return Err(bad(&"no certificate in the file"));
            }
            Ok(store)
        }
    }
}

/// A TLS client config offering exactly `alpn`, resuming with the tickets in `tickets`. QUIC
/// needs TLS 1.3 only.
pub(crate) fn client_config(
    roots: rustls::RootCertStore,
    alpn: &[u8],
    tls13_only: bool,
    tickets: Arc<dyn rustls::client::ClientSessionStore>,
) -> Result<rustls::ClientConfig, ConnectError> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = rustls::ClientConfig::builder_with_provider(provider);
    let builder = if tls13_only {
        builder.with_protocol_versions(&[&rustls::version::TLS13])
    } else {
        builder.with_safe_default_protocol_versions()
    }
    .map_err(|err| ConnectError::Config(format!("TLS settings: {err}")))?;
    let mut config = builder.with_root_certificates(roots).with_no_client_auth();
    config.alpn_protocols = vec![alpn.to_vec()];
    config.resumption = rustls::client::Resumption::store(tickets);
    Ok(config)
}
