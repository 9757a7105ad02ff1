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
///
/// rustls offers a stored ticket only to a config with the very certificate verifier and
/// client-certificate resolver (the same `Arc`s) that the ticket's connection had, so every
/// connection of this process with the same roots and settings clones one base config:
/// building a fresh one per connection would make every reconnect a full handshake.
pub(crate) fn client_config(
    roots: rustls::RootCertStore,
    alpn: &[u8],
    tls13_only: bool,
    tickets: Arc<dyn rustls::client::ClientSessionStore>,
) -> Result<rustls::ClientConfig, ConnectError> {
    let key = BaseKey::of(&roots, alpn, tls13_only);
    let mut bases = BASES.lock().unwrap_or_else(|e| e.into_inner());
    let mut config = match bases.iter().find(|(k, _)| *k == key) {
        Some((_, base)) => base.clone(),
        None => {
            let base = base_config(roots, alpn, tls13_only)?;
            if bases.len() == MAX_BASES {
                bases.remove(0);
            }
            bases.push((key, base.clone()));
            base
        }
    };
    drop(bases);
    config.resumption = rustls::client::Resumption::store(tickets);
    Ok(config)
}

/// Base configs kept: one per set of roots and settings a process uses (a handful).
const MAX_BASES: usize = 16;
static BASES: std::sync::Mutex<Vec<(BaseKey, rustls::ClientConfig)>> =
    std::sync::Mutex::new(Vec::new());

/// What a base config is built from: the trust anchors' bytes, the ALPN, the versions.
#[derive(PartialEq, Eq)]
struct BaseKey {
    anchors: Vec<u8>,
    alpn: Vec<u8>,
    tls13_only: bool,
}

impl BaseKey {
    fn of(roots: &rustls::RootCertStore, alpn: &[u8], tls13_only: bool) -> BaseKey {
        let mut anchors = Vec::new();
        for anchor in &roots.roots {
            let constraints = anchor.name_constraints.as_deref().unwrap_or_default();
            for part in [
                anchor.subject.as_ref(),
                anchor.subject_public_key_info.as_ref(),
                constraints,
            ] {
                anchors.extend_from_slice(&(part.len() as u64).to_be_bytes());
                anchors.extend_from_slice(part);
            }
        }
        BaseKey {
            anchors,
            alpn: alpn.to_vec(),
            tls13_only,
        }
    }
}

fn base_config(
    roots: rustls::RootCertStore,
    alpn: &[u8],
    tls13_only: bool,
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
    Ok(config)
}
