//! The gateway's TLS certificate from an ACME CA (RFC 8555): Let's Encrypt in production,
//! Pebble in development and tests.
//!
//! [`ensure`] looks at the certificate the gateway serves (`server.pem` in its certificate
//! directory) and orders a new one when it is missing, not from this CA, not for these names,
//! or in the last third of its lifetime (a 90-day certificate is renewed 30 days ahead). The
//! order is proven with HTTP-01: for the order's duration this process answers
//! `GET /.well-known/acme-challenge/<token>` on the addresses given (port 80 in production).
//! The key and chain are installed through renames, key first; the gateway's file watcher
//! swaps them into new handshakes and open connections keep theirs (`edge::tls`).
//!
//! [`run`] repeats [`ensure`] until shutdown, waking when the next renewal is due and
//! retrying a failure with a growing delay.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use haberci_certs::CertPaths;
use haberci_kit::shutdown::Shutdown;
use instant_acme::{
    Account, AccountCredentials, AuthorizationStatus, ChallengeType, Identifier, NewAccount,
    NewOrder, OrderStatus, RetryPolicy,
};
use serde::{Deserialize, Serialize};
use time::OffsetDateTime;

/// Where HTTP-01 challenges are fetched from (RFC 8555 §8.3).
pub const CHALLENGE_PATH: &str = "/.well-known/acme-challenge/";
/// A failed attempt is retried after this, doubling up to [`MAX_RETRY_DELAY`].
pub const FIRST_RETRY_DELAY: Duration = Duration::from_secs(60);
pub const MAX_RETRY_DELAY: Duration = Duration::from_secs(3600);
/// The longest [`run`] sleeps between checks, so a certificate replaced by hand (or a clock
/// jump) is looked at again within this.
pub const MAX_CHECK_INTERVAL: Duration = Duration::from_secs(12 * 3600);

#[derive(Debug, thiserror::Error)]
pub enum AcmeError {
    #[error("ACME: {0}")]
    Acme(#[from] instant_acme::Error),
    #[error("ACME order for {names} ended {status:?}: {detail}")]
    Order {
        names: String,
        status: String,
        detail: String,
    },
    #[error("the CA offers no http-01 challenge for {0}")]
    NoHttpChallenge(String),
    #[error("cannot listen for HTTP-01 challenges on {addr}: {source}")]
    Listen {
        addr: SocketAddr,
        #[source]
        source: std::io::Error,
    },
    #[error("{path}: {source}")]
    File {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error(transparent)]
    Install(#[from] haberci_certs::CertError),
    #[error("the CA returned no usable certificate: {0}")]
    BadCertificate(String),
}

/// What [`ensure`] is asked to keep in place.
#[derive(Debug, Clone)]
pub struct Settings {
    /// The CA's directory URL (`https://acme-v02.api.letsencrypt.org/directory`).
    pub directory: String,
    /// The names the certificate is for (the first is its subject); at least one.
    pub domains: Vec<String>,
    /// Contact URIs for the account (`mailto:ops@example.com`); may be empty.
    pub contact: Vec<String>,
    /// The gateway's certificate directory: `server.pem`, `server-key.pem`, and this
    /// crate's `acme-account.json` and `acme-certificate.json`.
    pub cert_dir: PathBuf,
    /// Where HTTP-01 challenges are answered (the CA connects to each name on port 80).
    pub http_listen: Vec<SocketAddr>,
    /// Trust these roots (PEM) for the CA's own HTTPS instead of the system's (Pebble).
    pub ca_roots: Option<PathBuf>,
}

/// What [`ensure`] did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// The certificate in place is from this CA, for these names, and not due.
    Kept { renew_at: OffsetDateTime },
    /// A new certificate was installed.
    Issued {
        not_before: OffsetDateTime,
        not_after: OffsetDateTime,
        renew_at: OffsetDateTime,
    },
}

impl Outcome {
    pub fn renew_at(&self) -> OffsetDateTime {
        match self {
            Outcome::Kept { renew_at } | Outcome::Issued { renew_at, .. } => *renew_at,
        }
    }
}

/// When a certificate valid from `not_before` to `not_after` is renewed: with a third of its
/// lifetime left (what Let's Encrypt advises), so a failing CA leaves weeks to notice.
pub fn renew_at(not_before: OffsetDateTime, not_after: OffsetDateTime) -> OffsetDateTime {
    not_after - (not_after - not_before) / 3
}

/// What this crate remembers of the certificate it installed: a `server.pem` that is not
/// this one (the dev CA's, one copied by hand) is replaced.
#[derive(Debug, Serialize, Deserialize, PartialEq, Eq)]
struct Installed {
    directory: String,
    domains: Vec<String>,
    /// Hex SHA-256 of the leaf's DER.
    sha256: String,
}

/// The account's credentials and the CA they belong to.
#[derive(Serialize, Deserialize)]
struct StoredAccount {
    directory: String,
    credentials: AccountCredentials,
}

fn account_path(dir: &Path) -> PathBuf {
    dir.join("acme-account.json")
}

fn installed_path(dir: &Path) -> PathBuf {
    dir.join(haberci_certs::ACME_RECORD)
}

/// `Some(renewal time)` while the certificate in place needs nothing; `None` when one must
/// be ordered.
pub fn current(settings: &Settings, now: OffsetDateTime) -> Option<OffsetDateTime> {
    let paths = CertPaths::new(&settings.cert_dir);
    let der = haberci_certs::read_der(&paths.server_cert())?;
    let installed: Installed =
        serde_json::from_slice(&std::fs::read(installed_path(&settings.cert_dir)).ok()?).ok()?;
    let wanted = Installed {
        directory: settings.directory.clone(),
        domains: settings.domains.clone(),
        sha256: haberci_certs::sha256_hex(&der),
    };
    if installed != wanted {
        return None;
    }
    let (not_before, not_after) = haberci_certs::validity_window(&paths.server_cert())?;
    let due = renew_at(not_before, not_after);
    (due > now).then_some(due)
}

/// Orders a certificate when the one in place is missing, foreign or due; see the crate
/// documentation.
pub async fn ensure(settings: &Settings) -> Result<Outcome, AcmeError> {
    if let Some(renew_at) = current(settings, OffsetDateTime::now_utc()) {
        return Ok(Outcome::Kept { renew_at });
    }
    // A certificate that could not be written would be ordered again at every retry, and a
    // CA allows few per week for the same names: know the directory takes files first.
    writable(&settings.cert_dir)?;
    let (chain_pem, key_pem) = order(settings).await?;
    install(settings, &chain_pem, &key_pem)
}

/// Fails unless a private file can be written (and removed) in `dir`.
fn writable(dir: &Path) -> Result<(), AcmeError> {
    let probe = dir.join(".acme-probe");
    haberci_certs::write_secret(&probe, b"")?;
    std::fs::remove_file(&probe).map_err(|source| AcmeError::File {
        path: probe,
        source,
    })
}

/// Checks the chain, writes key then chain, then the record that marks it as ours, holding
/// the directory's lock (`haberci-certs` and rotating gateways take turns with it).
fn install(settings: &Settings, chain_pem: &str, key_pem: &str) -> Result<Outcome, AcmeError> {
    use rustls_pki_types::CertificateDer;
    use rustls_pki_types::pem::PemObject;
    let leaf = CertificateDer::pem_slice_iter(chain_pem.as_bytes())
        .next()
        .and_then(Result::ok)
        .ok_or_else(|| AcmeError::BadCertificate("no PEM certificate in the chain".into()))?;
    let (_, parsed) = x509_parser::parse_x509_certificate(&leaf)
        .map_err(|err| AcmeError::BadCertificate(err.to_string()))?;
    let validity = parsed.validity();
    let (not_before, not_after) = (
        validity.not_before.to_datetime(),
        validity.not_after.to_datetime(),
    );
    let paths = CertPaths::new(&settings.cert_dir);
    haberci_certs::write_pair(
        &paths.server_cert(),
        chain_pem,
        &paths.server_key(),
        key_pem,
    )?;
    let record = Installed {
        directory: settings.directory.clone(),
        domains: settings.domains.clone(),
        sha256: haberci_certs::sha256_hex(&leaf),
    };
    let json = serde_json::to_vec_pretty(&record).map_err(|err| AcmeError::File {
        path: installed_path(&settings.cert_dir),
        source: err.into(),
    })?;
    haberci_certs::write_secret(&installed_path(&settings.cert_dir), &json)?;
    tracing::info!(
        domains = ?settings.domains,
        %not_after,
        "ACME certificate installed"
    );
    Ok(Outcome::Issued {
        not_before,
        not_after,
        renew_at: renew_at(not_before, not_after),
    })
}

/// One order, start to finish: `(chain PEM, private key PEM)`.
async fn order(settings: &Settings) -> Result<(String, String), AcmeError> {
    let identifiers: Vec<Identifier> = settings
        .domains
        .iter()
        .map(|name| match name.parse() {
            Ok(ip) => Identifier::Ip(ip),
            Err(_) => Identifier::Dns(name.clone()),
        })
        .collect();
    let stored = account(settings, false).await?;
    let mut order = match stored.new_order(&NewOrder::new(&identifiers)).await {
        // A CA that forgot the account (Pebble restarted; an account deactivated by hand)
        // gets a new one.
        Err(instant_acme::Error::Api(problem))
            if problem.r#type.as_deref()
                == Some("urn:ietf:params:acme:error:accountDoesNotExist") =>
        {
            tracing::warn!("the CA does not know the stored ACME account; registering again");
            account(settings, true)
                .await?
                .new_order(&NewOrder::new(&identifiers))
                .await?
        }
        other => other?,
    };

    let responses = Responses::default();
    let _servers = responses.serve(&settings.http_listen).await?;
    let mut authorizations = order.authorizations();
    while let Some(authorization) = authorizations.next().await {
        let mut authorization = authorization?;
        if authorization.status == AuthorizationStatus::Valid {
            continue;
        }
        let name = authorization.identifier().to_string();
        let mut challenge = authorization
            .challenge(ChallengeType::Http01)
            .ok_or(AcmeError::NoHttpChallenge(name))?;
        responses.put(
            challenge.token.clone(),
            challenge.key_authorization().as_str().to_owned(),
        );
        challenge.set_ready().await?;
    }
    let patience = RetryPolicy::new()
        .initial_delay(Duration::from_millis(250))
        .timeout(Duration::from_secs(120));
    let names = || settings.domains.join(", ");
    let status = match order.poll_ready(&patience).await {
        Ok(status) => status,
        // The CA's reason a challenge failed (no answer, a wrong one) comes as a problem.
        Err(instant_acme::Error::Api(problem)) => {
            return Err(AcmeError::Order {
                names: names(),
                status: "Invalid".into(),
                detail: problem.to_string(),
            });
        }
        Err(err) => return Err(err.into()),
    };
    if status != OrderStatus::Ready {
        let detail = order
            .state()
            .error
            .as_ref()
            .map(|problem| problem.to_string())
            .unwrap_or_else(|| "no reason given".into());
        return Err(AcmeError::Order {
            names: names(),
            status: format!("{status:?}"),
            detail,
        });
    }
    let key_pem = order.finalize().await?;
    let chain_pem = order.poll_certificate(&patience).await?;
    Ok((chain_pem, key_pem))
}

/// The stored account for this CA, or a new one (stored for next time) when there is none
/// or `fresh` asks for it.
async fn account(settings: &Settings, fresh: bool) -> Result<Account, AcmeError> {
    let builder = || match &settings.ca_roots {
        Some(pem) => Account::builder_with_root(pem),
        None => Account::builder(),
    };
    let path = account_path(&settings.cert_dir);
    if !fresh
        && let Ok(bytes) = std::fs::read(&path)
        && let Ok(stored) = serde_json::from_slice::<StoredAccount>(&bytes)
        && stored.directory == settings.directory
    {
        return Ok(builder()?.from_credentials(stored.credentials).await?);
    }
    let contact: Vec<&str> = settings.contact.iter().map(String::as_str).collect();
    let (account, credentials) = builder()?
        .create(
            &NewAccount {
                contact: &contact,
                terms_of_service_agreed: true,
                only_return_existing: false,
            },
            settings.directory.clone(),
            None,
        )
        .await?;
    let stored = StoredAccount {
        directory: settings.directory.clone(),
        credentials,
    };
    let json = serde_json::to_vec(&stored).map_err(|err| AcmeError::File {
        path: path.clone(),
        source: err.into(),
    })?;
    haberci_certs::write_secret(&path, &json)?;
    tracing::info!(account = account.id(), "ACME account registered");
    Ok(account)
}

/// Key authorizations by token, answered over plain HTTP while an order is open.
#[derive(Clone, Default)]
struct Responses(Arc<Mutex<HashMap<String, String>>>);

impl Responses {
    fn put(&self, token: String, key_authorization: String) {
        if let Ok(mut map) = self.0.lock() {
            map.insert(token, key_authorization);
        }
    }

    fn get(&self, token: &str) -> Option<String> {
        self.0.lock().ok()?.get(token).cloned()
    }

    /// Listens on every address; the servers stop when the returned guard drops.
    async fn serve(&self, addrs: &[SocketAddr]) -> Result<Servers, AcmeError> {
        use axum::extract::{Path, State};
        use axum::http::StatusCode;
        let router = axum::Router::new()
            .route(
                &format!("{CHALLENGE_PATH}{{token}}"),
                axum::routing::get(
                    |State(responses): State<Responses>, Path(token): Path<String>| async move {
                        match responses.get(&token) {
                            Some(answer) => (StatusCode::OK, answer),
                            None => (StatusCode::NOT_FOUND, "unknown token".to_owned()),
                        }
                    },
                ),
            )
            .with_state(self.clone());
        // The guard first: a later address that fails to bind stops those already serving.
        let servers = Servers(Shutdown::new());
        for &addr in addrs {
            let listener = listen(addr).map_err(|source| AcmeError::Listen { addr, source })?;
            let router = router.clone();
            let stop = servers.0.clone();
            tokio::spawn(async move {
                let _ = axum::serve(listener, router)
                    .with_graceful_shutdown(async move { stop.cancelled().await })
                    .await;
            });
        }
        Ok(servers)
    }
}

/// A listener on `addr`. An IPv6 one is IPv6 only, so `0.0.0.0:80` and `[::]:80` can both be
/// bound (Linux's default `bindv6only=0` would have `[::]` take the IPv4 port too).
fn listen(addr: SocketAddr) -> std::io::Result<tokio::net::TcpListener> {
    use socket2::{Domain, Socket, Type};
    let socket = Socket::new(Domain::for_address(addr), Type::STREAM, None)?;
    if addr.is_ipv6() {
        socket.set_only_v6(true)?;
    }
    socket.set_reuse_address(true)?;
    socket.set_nonblocking(true)?;
    socket.bind(&addr.into())?;
    socket.listen(128)?;
    tokio::net::TcpListener::from_std(socket.into())
}

/// Stops the challenge servers when dropped.
struct Servers(Shutdown);

impl Drop for Servers {
    fn drop(&mut self) {
        self.0.cancel();
    }
}

/// [`ensure`] until `shutdown`: sleeps until the next renewal is due (at most
/// [`MAX_CHECK_INTERVAL`]); after a failure, retries after [`FIRST_RETRY_DELAY`], doubling up
/// to [`MAX_RETRY_DELAY`]. Each outcome is also sent on `outcomes` (tests wait on it).
pub async fn run(
    settings: Settings,
    shutdown: Shutdown,
    outcomes: Option<tokio::sync::mpsc::UnboundedSender<Outcome>>,
) {
    let mut retry = FIRST_RETRY_DELAY;
    loop {
        let wait = match ensure(&settings).await {
            Ok(outcome) => {
                retry = FIRST_RETRY_DELAY;
                let until = outcome.renew_at() - OffsetDateTime::now_utc();
                if let Some(outcomes) = &outcomes {
                    let _ = outcomes.send(outcome.clone());
                }
                tracing::info!(renew_at = %outcome.renew_at(), "next ACME renewal");
                Duration::try_from(until)
                    .unwrap_or_default()
                    .min(MAX_CHECK_INTERVAL)
            }
            Err(err) => {
                tracing::error!(%err, retry_in = ?retry, "ACME certificate renewal failed");
                let wait = retry;
                retry = (retry * 2).min(MAX_RETRY_DELAY);
                wait
            }
        };
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tokio::time::sleep(wait) => {}
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use time::macros::datetime;

    #[tokio::test]
    async fn both_wildcard_addresses_can_listen_on_one_port() {
        let v4 = listen(SocketAddr::from(([0, 0, 0, 0], 0))).unwrap();
        let port = v4.local_addr().unwrap().port();
        let v6 = listen(SocketAddr::from((std::net::Ipv6Addr::UNSPECIFIED, port)));
        assert!(v6.is_ok(), "{v6:?}");
    }

    #[test]
    fn renewal_is_due_with_a_third_of_the_lifetime_left() {
        let issued = datetime!(2026-01-01 0:00 UTC);
        assert_eq!(
            renew_at(issued, issued + time::Duration::days(90)),
            issued + time::Duration::days(60)
        );
        assert_eq!(
            renew_at(issued, issued + time::Duration::seconds(30)),
            issued + time::Duration::seconds(20)
        );
    }

    #[test]
    fn a_certificate_this_crate_did_not_install_is_replaced() {
        let dir = tempfile::tempdir().unwrap();
        let paths = CertPaths::new(dir.path());
        // The dev CA's leaf: valid for a year, for localhost, but not from the ACME CA.
        haberci_certs::ensure(&paths, OffsetDateTime::now_utc()).unwrap();
        let settings = Settings {
            directory: "https://localhost:14000/dir".into(),
            domains: vec!["localhost".into()],
            contact: Vec::new(),
            cert_dir: dir.path().to_path_buf(),
            http_listen: Vec::new(),
            ca_roots: None,
        };
        assert_eq!(current(&settings, OffsetDateTime::now_utc()), None);

        // Recorded as ours: kept until two thirds of its year are over.
        let der = haberci_certs::read_der(&paths.server_cert()).unwrap();
        let record = Installed {
            directory: settings.directory.clone(),
            domains: settings.domains.clone(),
            sha256: haberci_certs::sha256_hex(&der),
        };
        std::fs::write(
            installed_path(dir.path()),
            serde_json::to_vec(&record).unwrap(),
        )
        .unwrap();
        let (nb, na) = haberci_certs::validity_window(&paths.server_cert()).unwrap();
        assert_eq!(current(&settings, nb), Some(renew_at(nb, na)));
        assert_eq!(current(&settings, renew_at(nb, na)), None, "due");

        // Another CA, or other names: ordered again.
        let other_ca = Settings {
            directory: "https://acme.example/dir".into(),
            ..settings.clone()
        };
        assert_eq!(current(&other_ca, nb), None);
        let more_names = Settings {
            domains: vec!["localhost".into(), "chat.example".into()],
            ..settings.clone()
        };
        assert_eq!(current(&more_names, nb), None);
    }
}
