//! Certificates for both listeners, reloadable without a restart.
//!
//! The TCP listener presents `server.pem`; the QUIC endpoint presents `wt.pem`, the short-lived
//! ECDSA P-256 leaf that browsers accept by hash for WebTransport (see the `haberci-certs`
//! crate). Each lives in an [`ArcSwap`] behind a rustls [`ResolvesServerCert`], so a reload
//! swaps what *new* handshakes see while established connections keep their sessions.
//!
//! With `HABERCI_QUIC_CERT=tls` the QUIC endpoint presents `server.pem` too (a CA-issued
//! certificate, e.g. from `haberci-acme`).
//!
//! [`watch`] polls the files' metadata and also reloads on SIGHUP. A half-written or invalid
//! pair is logged and skipped: the previous certificate stays in service. [`rotate`] renews the
//! WebTransport leaf and announces its successor, so a gateway left alone keeps a valid one.

use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use arc_swap::ArcSwap;
use haberci_certs::CertPaths;
use haberci_kit::shutdown::Shutdown;

use crate::config::QuicCert;
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};

#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("cannot read {path}: {source}")]
    Read {
        path: PathBuf,
        #[source]
        source: rustls_pki_types::pem::Error,
    },
    #[error("{path} holds no certificate")]
    NoCertificate { path: PathBuf },
    #[error("unusable private key in {path}: {source}")]
    Key {
        path: PathBuf,
        #[source]
        source: rustls::Error,
    },
    #[error("cannot make session ticket keys: {0}")]
    Tickets(#[source] rustls::Error),
    #[error("{cert} and {key} do not belong together: {source}")]
    Mismatch {
        cert: PathBuf,
        key: PathBuf,
        #[source]
        source: rustls::Error,
    },
}

/// One certificate slot: what the next handshake will present.
pub struct Slot(ArcSwap<CertifiedKey>);

impl fmt::Debug for Slot {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Slot").finish_non_exhaustive()
    }
}

impl ResolvesServerCert for Slot {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.0.load_full())
    }
}

/// Both listeners' certificates and where they come from.
#[derive(Debug)]
pub struct CertStore {
    paths: CertPaths,
    quic_cert: QuicCert,
    /// Presented on TCP.
    pub tcp: Arc<Slot>,
    /// Presented on QUIC (HTTP/3, WebTransport, native).
    pub quic: Arc<Slot>,
    /// Seals the TCP listener's session tickets, so a reconnecting client resumes instead of
    /// a full handshake (no certificate signature, no chain to send or verify). Stateless:
    /// the server keeps nothing per session. Keys are random per process and rotate every 6
    /// hours, so a ticket resumes only at the gateway that issued it. TLS 1.2 (for old
    /// WebSocket clients) resumes from the ticket alone: such a session's secrecy rests on
    /// the ticket key, which therefore lives only in this process's memory, 12 hours at
    /// most. QUIC's tickets (TLS 1.3 only) use the fleet's keys instead (`super::tickets`).
    pub tickets: Arc<dyn rustls::server::ProducesTickets>,
    stamp: std::sync::Mutex<Stamp>,
    /// Counts reloads that swapped something in; tests and operators can wait on it.
    generation: tokio::sync::watch::Sender<u64>,
}

/// Metadata of the four files (inode, change time, modification time, length); a change in
/// any of them triggers a reload. The inode and ctime catch a same-size replacement that keeps
/// the modification time (`cp -p`, a restore from an archive).
type Stamp = Vec<Option<(u64, i64, SystemTime, u64)>>;

impl CertStore {
    pub fn load(paths: CertPaths, quic_cert: QuicCert) -> Result<Self, TlsError> {
        let stamp = stamp(&paths);
        let tcp = load_pair(&paths.server_cert(), &paths.server_key())?;
        let (cert, key) = quic_files(&paths, quic_cert);
        let quic = load_pair(&cert, &key)?;
        Ok(CertStore {
            paths,
            quic_cert,
            tcp: Arc::new(Slot(ArcSwap::from_pointee(tcp))),
            quic: Arc::new(Slot(ArcSwap::from_pointee(quic))),
            tickets: rustls::crypto::ring::Ticketer::new().map_err(TlsError::Tickets)?,
            stamp: std::sync::Mutex::new(stamp),
            generation: tokio::sync::watch::Sender::new(0),
        })
    }

    /// Reloads both pairs if any file changed since the last load. Returns whether anything
    /// was swapped in.
    pub fn reload_if_changed(&self) -> bool {
        let now = stamp(&self.paths);
        {
            let Ok(mut last) = self.stamp.lock() else {
                return false;
            };
            if *last == now {
                return false;
            }
            *last = now;
        }
        self.reload()
    }

    /// Loads both pairs from disk and swaps in each one that is valid.
    pub fn reload(&self) -> bool {
        let mut swapped = false;
        let (quic_cert, quic_key) = quic_files(&self.paths, self.quic_cert);
        for (slot, cert, key) in [
            (&self.tcp, self.paths.server_cert(), self.paths.server_key()),
            (&self.quic, quic_cert, quic_key),
        ] {
            match load_pair(&cert, &key) {
                Ok(pair) => {
                    if slot.0.load().cert != pair.cert {
                        slot.0.store(Arc::new(pair));
                        tracing::info!(cert = %cert.display(), "certificate reloaded");
                        swapped = true;
                    }
                }
                Err(err) => {
                    tracing::warn!(%err, "certificate reload skipped; keeping the current one")
                }
            }
        }
        if swapped {
            self.generation.send_modify(|g| *g += 1);
        }
        swapped
    }

    /// A receiver that sees the reload generation change each time a certificate is swapped in.
    pub fn reloads(&self) -> tokio::sync::watch::Receiver<u64> {
        self.generation.subscribe()
    }

    /// Where the certificates are read from.
    pub fn paths(&self) -> &CertPaths {
        &self.paths
    }

    /// What the QUIC endpoint presents.
    pub fn quic_cert(&self) -> QuicCert {
        self.quic_cert
    }

    /// The DER of the certificate the QUIC endpoint presents now.
    pub fn quic_cert_der(&self) -> CertificateDer<'static> {
        self.quic.0.load().cert[0].clone()
    }

    /// The DER of the certificate the TCP listener presents now.
    pub fn tcp_cert_der(&self) -> CertificateDer<'static> {
        self.tcp.0.load().cert[0].clone()
    }
}

/// The certificate and key files the QUIC endpoint presents.
fn quic_files(paths: &CertPaths, quic_cert: QuicCert) -> (PathBuf, PathBuf) {
    match quic_cert {
        QuicCert::WebTransport => (paths.wt_cert(), paths.wt_key()),
        QuicCert::Tls => (paths.server_cert(), paths.server_key()),
    }
}

fn stamp(paths: &CertPaths) -> Stamp {
    [
        paths.server_cert(),
        paths.server_key(),
        paths.wt_cert(),
        paths.wt_key(),
    ]
    .iter()
    .map(|p| {
        use std::os::unix::fs::MetadataExt;
        std::fs::metadata(p).ok().and_then(|m| {
            Some((
                m.ino(),
                m.ctime_nsec() + m.ctime() * 1_000_000_000,
                m.modified().ok()?,
                m.len(),
            ))
        })
    })
    .collect()
}

fn load_pair(cert: &Path, key: &Path) -> Result<CertifiedKey, TlsError> {
    let chain = CertificateDer::pem_file_iter(cert)
        .and_then(|iter| iter.collect::<Result<Vec<_>, _>>())
        .map_err(|source| TlsError::Read {
            path: cert.to_path_buf(),
            source,
        })?;
    if chain.is_empty() {
        return Err(TlsError::NoCertificate {
            path: cert.to_path_buf(),
        });
    }
    let key_der = PrivateKeyDer::from_pem_file(key).map_err(|source| TlsError::Read {
        path: key.to_path_buf(),
        source,
    })?;
    let signing_key =
        rustls::crypto::ring::sign::any_supported_type(&key_der).map_err(|source| {
            TlsError::Key {
                path: key.to_path_buf(),
                source,
            }
        })?;
    let pair = CertifiedKey::new(chain, signing_key);
    pair.keys_match().map_err(|source| TlsError::Mismatch {
        cert: cert.to_path_buf(),
        key: key.to_path_buf(),
        source,
    })?;
    Ok(pair)
}

/// Reloads certificates when their files change or on SIGHUP, until shutdown.
pub async fn watch(store: Arc<CertStore>, interval: Duration, shutdown: Shutdown) {
    #[cfg(unix)]
    let mut hangup = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup()).ok();
    let mut tick = tokio::time::interval(interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        #[cfg(unix)]
        let sighup = async {
            match hangup.as_mut() {
                Some(signal) => signal.recv().await,
                None => std::future::pending().await,
            }
        };
        #[cfg(not(unix))]
        let sighup = std::future::pending::<Option<()>>();
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tick.tick() => { store.reload_if_changed(); }
            _ = sighup => {
                tracing::info!("SIGHUP: reloading certificates");
                store.reload();
            }
        }
    }
}

/// Renews the WebTransport leaf every `interval` (and once at start) until shutdown, when the
/// QUIC endpoint presents it and the directory holds the CA key that signs it; a renewal is
/// swapped in at once. Without the CA key the files are left to whoever provides them.
pub async fn rotate(store: Arc<CertStore>, interval: Duration, shutdown: Shutdown) {
    if store.quic_cert != QuicCert::WebTransport {
        return;
    }
    if !store.paths.ca_key().exists() {
        tracing::info!(
            dir = %store.paths.dir.display(),
            "no CA key beside the certificates: the WebTransport certificate is not rotated here"
        );
        return;
    }
    let mut tick = tokio::time::interval(interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tick.tick() => {}
        }
        let paths = store.paths.clone();
        let now = time::OffsetDateTime::now_utc();
        let renewed =
            tokio::task::spawn_blocking(move || haberci_certs::ensure_webtransport(&paths, now))
                .await;
        match renewed {
            Ok(Ok((wt, next))) => {
                if wt != haberci_certs::Action::Kept || next != haberci_certs::Action::Kept {
                    tracing::info!(?wt, ?next, "WebTransport certificate rotated");
                    store.reload();
                }
            }
            Ok(Err(err)) => tracing::warn!(%err, "WebTransport certificate rotation failed"),
            Err(err) => tracing::warn!(%err, "WebTransport certificate rotation panicked"),
        }
    }
}

/// rustls config for TLS over TCP: ALPN `h2`, then `http/1.1`.
pub fn tcp_server_config(store: &CertStore) -> rustls::ServerConfig {
    let mut config = rustls::ServerConfig::builder()
        .with_no_client_auth()
        .with_cert_resolver(store.tcp.clone());
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    config.ticketer = store.tickets.clone();
    config
}

/// rustls config for QUIC: TLS 1.3 only, ALPN `h3` and `haberci/1`. A client offering neither
/// fails the handshake with `no_application_protocol`. Session tickets resume; 0-RTT is
/// refused (`max_early_data_size` 0): early data can be replayed by anyone who captured it, and
/// a session's first frames (`Hello`, then `Send`s) are not all safe to run twice.
pub fn quic_server_config(
    store: &CertStore,
    tickets: Arc<dyn rustls::server::ProducesTickets>,
) -> rustls::ServerConfig {
    let mut config =
        rustls::ServerConfig::builder_with_protocol_versions(&[&rustls::version::TLS13])
            .with_no_client_auth()
            .with_cert_resolver(store.quic.clone());
    config.alpn_protocols = vec![crate::ALPN_H3.to_vec(), crate::ALPN_NATIVE.to_vec()];
    config.max_early_data_size = 0;
    config.ticketer = tickets;
    config
}
