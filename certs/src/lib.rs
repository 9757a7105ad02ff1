//! Development certificates for a local Haberci stack.
//!
//! Three things live in one directory (`.dev/certs` under `./dev`):
//!
//! | file | what |
//! |---|---|
//! | `ca.pem`, `ca-key.pem` | a local CA (ECDSA P-256, 10 years); trust it with `curl --cacert` |
//! | `server.pem`, `server-key.pem` | the TCP (HTTP/1.1, HTTP/2, WebSocket) leaf for `localhost`, `127.0.0.1`, `::1`, signed by the CA, 1 year |
//! | `wt.pem`, `wt-key.pem`, `wt.sha256` | the QUIC leaf (HTTP/3, WebTransport, native QUIC): ECDSA P-256, valid from now − 1 h to now + 13 days, signed by the CA; `wt.sha256` is the hex SHA-256 of its DER, the value a browser passes in `serverCertificateHashes` |
//! | `wt-next.pem`, `wt-next-key.pem`, `wt-next.sha256` | the QUIC leaf that replaces `wt.pem` at its renewal, issued ahead and valid from then on for 13 days, so its hash can be published (`GET /v1/realtime` on the gateway) before it is presented |
//!
//! Invariant: the QUIC leaf's validity never exceeds [`WT_MAX_VALIDITY`] (13 days); Chromium
//! refuses hash-pinned certificates valid for more than 14 days. [`ensure`] re-issues it once it
//! has less than [`WT_RENEW_BEFORE`] left, so a daily `ensure` keeps it valid; the gateway picks
//! up the new files without a restart. The renewal promotes the `wt-next` leaf (whose hash pages
//! already hold) and issues a new next one.
//!
//! [`ensure`] is idempotent: it only writes what is missing, unreadable or due for renewal, and
//! reports what it did.

use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};

use rcgen::{
    BasicConstraints, CertificateParams, CidrSubnet, DistinguishedName, DnType,
    ExtendedKeyUsagePurpose, GeneralSubtree, IsCa, Issuer, KeyPair, KeyUsagePurpose,
    NameConstraints, SanType,
};
use sha2::{Digest, Sha256};
use time::{Duration, OffsetDateTime};

/// Longest validity given to the WebTransport (QUIC) leaf.
pub const WT_MAX_VALIDITY: Duration = Duration::days(13);
/// The WebTransport leaf is re-issued when less than this is left.
pub const WT_RENEW_BEFORE: Duration = Duration::days(4);
/// Backdating of every new certificate, for clocks that are slightly behind.
pub const BACKDATE: Duration = Duration::hours(1);
/// Longest validity a browser accepts for a certificate pinned by `serverCertificateHashes`.
pub const BROWSER_MAX_VALIDITY: Duration = Duration::days(14);
/// Validity of the TCP leaf.
pub const SERVER_VALIDITY: Duration = Duration::days(365);
/// The TCP leaf is re-issued when less than this is left.
pub const SERVER_RENEW_BEFORE: Duration = Duration::days(30);
/// Validity of the local CA.
pub const CA_VALIDITY: Duration = Duration::days(3650);

/// Names every leaf is valid for.
pub const LEAF_NAMES: [&str; 3] = ["localhost", "127.0.0.1", "::1"];

#[derive(Debug, thiserror::Error)]
pub enum CertError {
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{what}: {source}")]
    Rcgen {
        what: &'static str,
        #[source]
        source: rcgen::Error,
    },
}

/// The file layout of a certificate directory.
#[derive(Debug, Clone)]
pub struct CertPaths {
    pub dir: PathBuf,
}

impl CertPaths {
    pub fn new(dir: impl Into<PathBuf>) -> Self {
        CertPaths { dir: dir.into() }
    }
    pub fn ca_cert(&self) -> PathBuf {
        self.dir.join("ca.pem")
    }
    pub fn ca_key(&self) -> PathBuf {
        self.dir.join("ca-key.pem")
    }
    pub fn server_cert(&self) -> PathBuf {
        self.dir.join("server.pem")
    }
    pub fn server_key(&self) -> PathBuf {
        self.dir.join("server-key.pem")
    }
    pub fn wt_cert(&self) -> PathBuf {
        self.dir.join("wt.pem")
    }
    pub fn wt_key(&self) -> PathBuf {
        self.dir.join("wt-key.pem")
    }
    pub fn wt_hash(&self) -> PathBuf {
        self.dir.join("wt.sha256")
    }
    pub fn wt_next_cert(&self) -> PathBuf {
        self.dir.join("wt-next.pem")
    }
    pub fn wt_next_key(&self) -> PathBuf {
        self.dir.join("wt-next-key.pem")
    }
    pub fn wt_next_hash(&self) -> PathBuf {
        self.dir.join("wt-next.sha256")
    }
}

/// What [`ensure`] did to each certificate.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    Kept,
    Created,
    Renewed,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Report {
    pub ca: Action,
    pub server: Action,
    pub wt: Action,
    pub wt_next: Action,
}

impl Report {
    pub fn changed(&self) -> bool {
        [self.ca, self.server, self.wt, self.wt_next]
            .iter()
            .any(|a| *a != Action::Kept)
    }
}

/// Makes sure every certificate in `paths` exists and is not due for renewal at `now`.
pub fn ensure(paths: &CertPaths, now: OffsetDateTime) -> Result<Report, CertError> {
    fs::create_dir_all(&paths.dir).map_err(|source| CertError::Io {
        path: paths.dir.clone(),
        source,
    })?;
    let _lock = lock(paths)?;

    let ca_state = validity(&paths.ca_cert(), &paths.ca_key());
    let ca = match ca_state {
        Some(not_after) if not_after - now > SERVER_VALIDITY => Action::Kept,
        Some(_) => Action::Renewed,
        None => Action::Created,
    };
    if ca != Action::Kept {
        let (cert_pem, key_pem) = issue_ca(now)?;
        write_pair(&paths.ca_cert(), &cert_pem, &paths.ca_key(), &key_pem)?;
    }
    let issuer = load_issuer(paths)?;

    // A new CA invalidates every leaf it signed before. A certificate haberci-acme installed
    // is not this CA's to renew.
    let acme = paths.dir.join(ACME_RECORD).exists();
    let server = if acme {
        Action::Kept
    } else {
        renewal(
            ca,
            &paths.server_cert(),
            validity(&paths.server_cert(), &paths.server_key()),
            now,
            SERVER_RENEW_BEFORE,
        )
    };
    if server != Action::Kept {
        let (cert_pem, key_pem, _) = issue_leaf(
            &issuer,
            now - BACKDATE,
            now + SERVER_VALIDITY - BACKDATE,
            "haberci dev",
        )?;
        write_pair(
            &paths.server_cert(),
            &cert_pem,
            &paths.server_key(),
            &key_pem,
        )?;
    }

    let (wt, wt_next) = ensure_wt(paths, &issuer, ca, now)?;
    Ok(Report {
        ca,
        server,
        wt,
        wt_next,
    })
}

/// Renews only the WebTransport leaves (`wt`, `wt-next`) with the CA already in `paths`: what
/// the gateway runs itself, hourly, so the short-lived certificate rotates with no `./dev up`
/// or timer. Returns what it did to each; an error when the CA is missing or unreadable.
pub fn ensure_webtransport(
    paths: &CertPaths,
    now: OffsetDateTime,
) -> Result<(Action, Action), CertError> {
    let _lock = lock(paths)?;
    let issuer = load_issuer(paths)?;
    ensure_wt(paths, &issuer, Action::Kept, now)
}

/// The file `haberci-acme` keeps beside a certificate it installed; with it, [`ensure`]
/// leaves `server.pem` alone (it is the ACME CA's, not the dev CA's).
pub const ACME_RECORD: &str = "acme-certificate.json";

/// Holds `.lock` in the directory (an exclusive `flock`, released when the file closes):
/// gateways sharing it, `haberci-certs ensure` and `haberci-acme` take turns, so one next leaf
/// is issued, not one per process. Opened read-only when it exists (a lock needs no write
/// access, so a `.lock` another user created does not stop a gateway), created 0644 otherwise.
pub fn lock(paths: &CertPaths) -> Result<fs::File, CertError> {
    use std::os::unix::fs::OpenOptionsExt;
    let path = paths.dir.join(".lock");
    let io = |source| CertError::Io {
        path: path.clone(),
        source,
    };
    let file = match fs::File::open(&path) {
        Ok(file) => file,
        Err(err) if err.kind() == std::io::ErrorKind::NotFound => fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .mode(PUBLIC_MODE)
            .open(&path)
            .map_err(io)?,
        Err(err) => return Err(io(err)),
    };
    rustix::fs::flock(&file, rustix::fs::FlockOperation::LockExclusive)
        .map_err(|errno| io(errno.into()))?;
    Ok(file)
}

/// The WebTransport part of [`ensure`]: `ca` says whether the CA was just replaced.
fn ensure_wt(
    paths: &CertPaths,
    issuer: &Issuer<'static, KeyPair>,
    ca: Action,
    now: OffsetDateTime,
) -> Result<(Action, Action), CertError> {
    let wt = renewal(
        ca,
        &paths.wt_cert(),
        validity(&paths.wt_cert(), &paths.wt_key()),
        now,
        WT_RENEW_BEFORE,
    );
    let next_window = validity(&paths.wt_next_cert(), &paths.wt_next_key())
        .and_then(|_| validity_window(&paths.wt_next_cert()));
    // The next leaf takes over when it is valid now and not itself due; otherwise (a new CA,
    // a next leaf missing, or a renewal so late that it is unusable too) a fresh leaf is issued.
    let promote = wt != Action::Kept
        && ca == Action::Kept
        && next_window.is_some_and(|(nb, na)| nb <= now && na - now > WT_RENEW_BEFORE);
    let mut issued_fresh = false;
    if promote {
        // Key first, as in `write_pair`: a reader that sees the new certificate finds its key.
        rename(&paths.wt_next_key(), &paths.wt_key())?;
        rename(&paths.wt_next_cert(), &paths.wt_cert())?;
        let _ = fs::remove_file(paths.wt_next_hash());
        write_hash(&paths.wt_cert(), &paths.wt_hash())?;
    } else if wt != Action::Kept || !paths.wt_hash().exists() {
        let (cert_pem, key_pem, der) = issue_leaf(
            issuer,
            now - BACKDATE,
            now + WT_MAX_VALIDITY - BACKDATE,
            "haberci webtransport",
        )?;
        write_pair(&paths.wt_cert(), &cert_pem, &paths.wt_key(), &key_pem)?;
        write_atomic(
            &paths.wt_hash(),
            format!("{}\n", sha256_hex(&der)).as_bytes(),
        )?;
        issued_fresh = true;
    }

    // Invariant: the next leaf starts where the current one is due for renewal, so at any
    // moment one of the two published hashes is the presented certificate's.
    let current_not_after = not_after(&paths.wt_cert()).unwrap_or(now);
    let rotation = current_not_after - WT_RENEW_BEFORE;
    let next_window = validity(&paths.wt_next_cert(), &paths.wt_next_key())
        .and_then(|_| validity_window(&paths.wt_next_cert()));
    let wt_next = match next_window {
        None if !paths.wt_next_cert().exists() => Action::Created,
        Some((nb, _)) if ca == Action::Kept && !issued_fresh && nb == rotation - BACKDATE => {
            Action::Kept
        }
        _ => Action::Renewed,
    };
    if wt_next != Action::Kept || !paths.wt_next_hash().exists() {
        let (cert_pem, key_pem, der) = issue_leaf(
            issuer,
            rotation - BACKDATE,
            rotation + WT_MAX_VALIDITY - BACKDATE,
            "haberci webtransport (next)",
        )?;
        write_pair(
            &paths.wt_next_cert(),
            &cert_pem,
            &paths.wt_next_key(),
            &key_pem,
        )?;
        write_atomic(
            &paths.wt_next_hash(),
            format!("{}\n", sha256_hex(&der)).as_bytes(),
        )?;
    }

    Ok((wt, wt_next))
}

/// A certificate a browser may pin by hash (`serverCertificateHashes`): its SHA-256 and
/// validity window.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PinnableCert {
    /// Hex SHA-256 of the DER.
    pub sha256: String,
    pub not_before: OffsetDateTime,
    pub not_after: OffsetDateTime,
}

/// `Some` when browsers accept `der` by hash: an ECDSA P-256 key and a validity of at most
/// [`BROWSER_MAX_VALIDITY`]. A CA-issued production certificate (90 days) gives `None`: it
/// is verified the usual way and needs no hash.
pub fn pinnable(der: &[u8]) -> Option<PinnableCert> {
    use x509_parser::oid_registry::{OID_EC_P256, OID_KEY_TYPE_EC_PUBLIC_KEY};
    let (_, cert) = x509_parser::parse_x509_certificate(der).ok()?;
    let key = &cert.public_key().algorithm;
    let curve = key.parameters.as_ref().and_then(|p| p.as_oid().ok());
    if key.algorithm != OID_KEY_TYPE_EC_PUBLIC_KEY || curve != Some(OID_EC_P256) {
        return None;
    }
    let validity = cert.validity();
    let (not_before, not_after) = (
        validity.not_before.to_datetime(),
        validity.not_after.to_datetime(),
    );
    (not_after - not_before <= BROWSER_MAX_VALIDITY).then(|| PinnableCert {
        sha256: sha256_hex(der),
        not_before,
        not_after,
    })
}

/// The DER of the first certificate in a PEM file.
pub fn read_der(cert_path: &Path) -> Option<Vec<u8>> {
    use rustls_pki_types::pem::PemObject;
    rustls_pki_types::CertificateDer::from_pem_file(cert_path)
        .ok()
        .map(|der| der.to_vec())
}

fn rename(from: &Path, to: &Path) -> Result<(), CertError> {
    fs::rename(from, to).map_err(|source| CertError::Io {
        path: from.to_path_buf(),
        source,
    })
}

fn write_hash(cert: &Path, hash: &Path) -> Result<(), CertError> {
    let der = read_der(cert).ok_or_else(|| CertError::Io {
        path: cert.to_path_buf(),
        source: std::io::Error::new(std::io::ErrorKind::InvalidData, "no certificate"),
    })?;
    write_atomic(hash, format!("{}\n", sha256_hex(&der)).as_bytes())
}

/// Hex SHA-256 of a DER certificate: the form `serverCertificateHashes` takes (as bytes).
pub fn sha256_hex(der: &[u8]) -> String {
    hex::encode(Sha256::digest(der))
}

/// The names a certificate is valid for (its subject alternative names: DNS names, wildcards
/// included, and IP addresses, IPv6 in brackets), as a URL would carry them.
pub fn host_names(der: &[u8]) -> Vec<String> {
    use x509_parser::extensions::GeneralName;
    let Ok((_, cert)) = x509_parser::parse_x509_certificate(der) else {
        return Vec::new();
    };
    let Ok(Some(san)) = cert.subject_alternative_name() else {
        return Vec::new();
    };
    san.value
        .general_names
        .iter()
        .filter_map(|name| match *name {
            GeneralName::DNSName(dns) => Some(dns.to_ascii_lowercase()),
            GeneralName::IPAddress(&[a, b, c, d]) => {
                Some(std::net::Ipv4Addr::new(a, b, c, d).to_string())
            }
            GeneralName::IPAddress(bytes) => <[u8; 16]>::try_from(bytes)
                .ok()
                .map(|v6| format!("[{}]", std::net::Ipv6Addr::from(v6))),
            _ => None,
        })
        .collect()
}

/// Reads the validity end of the first certificate in a PEM file.
pub fn not_after(cert_path: &Path) -> Option<OffsetDateTime> {
    validity_window(cert_path).map(|(_, not_after)| not_after)
}

/// Reads `(not_before, not_after)` of the first certificate in a PEM file.
pub fn validity_window(cert_path: &Path) -> Option<(OffsetDateTime, OffsetDateTime)> {
    use rustls_pki_types::pem::PemObject;
    let der = rustls_pki_types::CertificateDer::from_pem_file(cert_path).ok()?;
    let (_, cert) = x509_parser::parse_x509_certificate(&der).ok()?;
    let validity = cert.validity();
    Some((
        validity.not_before.to_datetime(),
        validity.not_after.to_datetime(),
    ))
}

/// What to do with a leaf: create it when its file is missing, renew it when it is unusable,
/// expiring, or signed by a CA that was just replaced.
fn renewal(
    ca: Action,
    cert: &Path,
    leaf_not_after: Option<OffsetDateTime>,
    now: OffsetDateTime,
    renew_before: Duration,
) -> Action {
    match (ca, leaf_not_after) {
        (_, None) if !cert.exists() => Action::Created,
        (Action::Kept, Some(t)) if t - now > renew_before => Action::Kept,
        _ => Action::Renewed,
    }
}

/// `Some(not_after)` when both files exist and parse; `None` otherwise.
fn validity(cert: &Path, key: &Path) -> Option<OffsetDateTime> {
    let key_pem = fs::read_to_string(key).ok()?;
    KeyPair::from_pem(&key_pem).ok()?;
    not_after(cert)
}

fn dn(common_name: &str) -> DistinguishedName {
    let mut dn = DistinguishedName::new();
    dn.push(DnType::OrganizationName, "Haberci development");
    dn.push(DnType::CommonName, common_name);
    dn
}

fn rcgen_err(what: &'static str) -> impl FnOnce(rcgen::Error) -> CertError {
    move |source| CertError::Rcgen { what, source }
}

fn issue_ca(now: OffsetDateTime) -> Result<(String, String), CertError> {
    let key = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256)
        .map_err(rcgen_err("generate CA key"))?;
    let mut params = CertificateParams::default();
    params.distinguished_name = dn("Haberci development CA");
    params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    // A developer who trusts this CA trusts it for the loopback names only: a leaked CA key
    // cannot be used to impersonate other sites.
    params.name_constraints = Some(NameConstraints {
        permitted_subtrees: vec![
            GeneralSubtree::DnsName("localhost".into()),
            GeneralSubtree::IpAddress(CidrSubnet::V4([127, 0, 0, 0], [255, 0, 0, 0])),
            GeneralSubtree::IpAddress(CidrSubnet::V6(
                std::net::Ipv6Addr::LOCALHOST.octets(),
                [0xff; 16],
            )),
        ],
        excluded_subtrees: Vec::new(),
    });
    params.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    params.not_before = now - BACKDATE;
    params.not_after = now + CA_VALIDITY;
    let cert = params.self_signed(&key).map_err(rcgen_err("sign CA"))?;
    Ok((cert.pem(), key.serialize_pem()))
}

fn load_issuer(paths: &CertPaths) -> Result<Issuer<'static, KeyPair>, CertError> {
    let read =
        |path: PathBuf| fs::read_to_string(&path).map_err(|source| CertError::Io { path, source });
    let key = KeyPair::from_pem(&read(paths.ca_key())?).map_err(rcgen_err("read CA key"))?;
    Issuer::from_ca_cert_pem(&read(paths.ca_cert())?, key).map_err(rcgen_err("read CA"))
}

/// Issues an ECDSA P-256 server leaf for [`LEAF_NAMES`], valid from `not_before` to
/// `not_after`; returns (cert PEM, key PEM, cert DER).
fn issue_leaf(
    issuer: &Issuer<'_, KeyPair>,
    not_before: OffsetDateTime,
    not_after: OffsetDateTime,
    common_name: &str,
) -> Result<(String, String, Vec<u8>), CertError> {
    let key = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256)
        .map_err(rcgen_err("generate leaf key"))?;
    let mut params = CertificateParams::default();
    params.distinguished_name = dn(common_name);
    params.subject_alt_names = vec![
        SanType::DnsName("localhost".try_into().map_err(rcgen_err("SAN"))?),
        SanType::IpAddress(std::net::Ipv4Addr::LOCALHOST.into()),
        SanType::IpAddress(std::net::Ipv6Addr::LOCALHOST.into()),
    ];
    // NoCa, not ExplicitNoCa: DER forbids encoding the default `cA: FALSE`, and strict parsers
    // (Python `cryptography`, used by aioquic) refuse such certificates.
    params.is_ca = IsCa::NoCa;
    params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
    // Callers backdate by an hour and keep the total span within the validity, so the
    // WebTransport leaf never exceeds the browser's 14-day ceiling.
    params.not_before = not_before;
    params.not_after = not_after;
    let cert = params
        .signed_by(&key, issuer)
        .map_err(rcgen_err("sign leaf"))?;
    Ok((cert.pem(), key.serialize_pem(), cert.der().to_vec()))
}

/// Permissions of a certificate (anyone may read it) and of a private key (only the owner).
const PUBLIC_MODE: u32 = 0o644;
const PRIVATE_MODE: u32 = 0o600;

/// Installs a certificate and its key, each through a temporary file and a rename.
pub fn write_pair(cert: &Path, cert_pem: &str, key: &Path, key_pem: &str) -> Result<(), CertError> {
    // Key first: a reader that sees a new certificate must find its key already in place.
    write_file(key, key_pem.as_bytes(), PRIVATE_MODE)?;
    write_atomic(cert, cert_pem.as_bytes())
}

/// Writes a secret (a private key, ACME account credentials) readable only by its owner,
/// through a temporary file and a rename.
pub fn write_secret(path: &Path, contents: &[u8]) -> Result<(), CertError> {
    write_file(path, contents, PRIVATE_MODE)
}

/// Writes through a temporary file and a rename, so a watcher never reads half a file.
fn write_atomic(path: &Path, contents: &[u8]) -> Result<(), CertError> {
    write_file(path, contents, PUBLIC_MODE)
}

fn write_file(path: &Path, contents: &[u8], mode: u32) -> Result<(), CertError> {
    use std::os::unix::fs::OpenOptionsExt;
    let io = |source| CertError::Io {
        path: path.to_path_buf(),
        source,
    };
    let tmp = path.with_extension("tmp");
    let _ = fs::remove_file(&tmp);
    // Invariant: a private key is never readable by others, not even for an instant.
    let mut file = fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(mode)
        .open(&tmp)
        .map_err(io)?;
    file.write_all(contents).map_err(io)?;
    file.sync_all().map_err(io)?;
    fs::rename(&tmp, path).map_err(io)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    #[test]
    fn a_certificate_installed_by_haberci_acme_is_left_alone() {
        let dir = tempfile::tempdir().unwrap();
        let paths = CertPaths::new(dir.path());
        let now = OffsetDateTime::now_utc();
        ensure(&paths, now).unwrap();
        std::fs::write(dir.path().join(ACME_RECORD), "{}").unwrap();
        let before = std::fs::read(paths.server_cert()).unwrap();
        // A new CA would renew every leaf it signs; not the ACME CA's.
        std::fs::remove_file(paths.ca_cert()).unwrap();
        let report = ensure(&paths, now).unwrap();
        assert_eq!(report.ca, Action::Created);
        assert_eq!(report.server, Action::Kept);
        assert_eq!(std::fs::read(paths.server_cert()).unwrap(), before);
    }
    use super::*;

    #[test]
    fn host_names_are_the_leafs_alternative_names() {
        use rustls_pki_types::pem::PemObject;
        let dir = tempfile::tempdir().unwrap();
        let paths = CertPaths::new(dir.path());
        ensure(&paths, OffsetDateTime::now_utc()).unwrap();
        let der = rustls_pki_types::CertificateDer::from_pem_file(paths.server_cert()).unwrap();
        assert_eq!(host_names(&der), ["localhost", "127.0.0.1", "[::1]"]);
        assert!(host_names(b"not a certificate").is_empty());
    }

    /// Regression: leaves were issued with an explicit `cA: FALSE`, which DER forbids (a
    /// default value must be left out) and Python's `cryptography` refuses.
    #[test]
    fn leaves_are_strict_der_without_an_explicit_ca_false() {
        let dir = tempfile::tempdir().unwrap();
        let paths = CertPaths::new(dir.path());
        ensure(&paths, OffsetDateTime::now_utc()).unwrap();
        for leaf in [paths.server_cert(), paths.wt_cert()] {
            let pem = std::fs::read(&leaf).unwrap();
            let (_, pem) = x509_parser::pem::parse_x509_pem(&pem).unwrap();
            let (_, cert) = x509_parser::parse_x509_certificate(&pem.contents).unwrap();
            // basicConstraints, if present, must be an empty SEQUENCE for a non-CA.
            if let Some(ext) = cert
                .extensions()
                .iter()
                .find(|e| e.oid == x509_parser::oid_registry::OID_X509_EXT_BASIC_CONSTRAINTS)
            {
                assert_eq!(ext.value, [0x30, 0x00], "{}", leaf.display());
            }
        }
    }

    #[test]
    fn ensure_creates_then_keeps() {
        let dir = tempfile::tempdir().unwrap();
        let paths = CertPaths::new(dir.path());
        let now = OffsetDateTime::now_utc();
        let first = ensure(&paths, now).unwrap();
        assert_eq!(
            first,
            Report {
                ca: Action::Created,
                server: Action::Created,
                wt: Action::Created,
                wt_next: Action::Created,
            }
        );
        let hash = fs::read_to_string(paths.wt_hash()).unwrap();
        let second = ensure(&paths, now + Duration::hours(1)).unwrap();
        assert!(!second.changed(), "{second:?}");
        assert_eq!(hash, fs::read_to_string(paths.wt_hash()).unwrap());
    }

    #[test]
    fn webtransport_leaf_is_short_lived_and_renewed_before_expiry() {
        let dir = tempfile::tempdir().unwrap();
        let paths = CertPaths::new(dir.path());
        let now = OffsetDateTime::now_utc();
        ensure(&paths, now).unwrap();
        let (nb, na) = validity_window(&paths.wt_cert()).unwrap();
        assert!(na - nb <= Duration::days(14), "browsers refuse > 14 days");
        assert!(nb <= now - Duration::minutes(59));
        let old_hash = fs::read_to_string(paths.wt_hash()).unwrap();

        let later = now + WT_MAX_VALIDITY - WT_RENEW_BEFORE + Duration::hours(1);
        let report = ensure(&paths, later).unwrap();
        assert_eq!(report.wt, Action::Renewed);
        assert_eq!(report.server, Action::Kept);
        let new_hash = fs::read_to_string(paths.wt_hash()).unwrap();
        assert_ne!(old_hash, new_hash);
        let der = rustls_pki_types::CertificateDer::from(pem_der(
            &fs::read_to_string(paths.wt_cert()).unwrap(),
        ));
        assert_eq!(new_hash.trim(), sha256_hex(&der));
    }

    #[test]
    fn the_next_leaf_is_published_ahead_and_takes_over_at_renewal() {
        let dir = tempfile::tempdir().unwrap();
        let paths = CertPaths::new(dir.path());
        let now = OffsetDateTime::now_utc();
        ensure(&paths, now).unwrap();
        let (_, current_end) = validity_window(&paths.wt_cert()).unwrap();
        let (next_start, next_end) = validity_window(&paths.wt_next_cert()).unwrap();
        assert_eq!(next_start, current_end - WT_RENEW_BEFORE - BACKDATE);
        assert!(next_end - next_start <= BROWSER_MAX_VALIDITY);
        let next_hash = fs::read_to_string(paths.wt_next_hash()).unwrap();
        assert_ne!(next_hash, fs::read_to_string(paths.wt_hash()).unwrap());
        // Kept while nothing is due.
        assert!(!ensure(&paths, now + Duration::days(2)).unwrap().changed());

        let later = now + WT_MAX_VALIDITY - WT_RENEW_BEFORE + Duration::hours(1);
        let report = ensure(&paths, later).unwrap();
        assert_eq!(
            (report.wt, report.wt_next),
            (Action::Renewed, Action::Created)
        );
        assert_eq!(fs::read_to_string(paths.wt_hash()).unwrap(), next_hash);
        let der = read_der(&paths.wt_cert()).unwrap();
        assert_eq!(next_hash.trim(), sha256_hex(&der));
        let key = fs::read_to_string(paths.wt_key()).unwrap();
        let cert = fs::read_to_string(paths.wt_cert()).unwrap();
        assert!(
            CertifiedPair::matches(&cert, &key),
            "the promoted key is the cert's key"
        );
        assert_ne!(fs::read_to_string(paths.wt_next_hash()).unwrap(), next_hash);
    }

    #[test]
    fn only_short_lived_p256_certificates_are_pinnable() {
        let dir = tempfile::tempdir().unwrap();
        let paths = CertPaths::new(dir.path());
        ensure(&paths, OffsetDateTime::now_utc()).unwrap();
        let wt = pinnable(&read_der(&paths.wt_cert()).unwrap()).expect("the wt leaf");
        assert_eq!(
            wt.sha256,
            fs::read_to_string(paths.wt_hash()).unwrap().trim()
        );
        assert!(wt.not_after - wt.not_before <= BROWSER_MAX_VALIDITY);
        // A year-long leaf (like a CA-issued production certificate) is verified, not pinned.
        assert_eq!(pinnable(&read_der(&paths.server_cert()).unwrap()), None);
        assert_eq!(pinnable(b"not a certificate"), None);
    }

    /// Whether a certificate and a key belong together (same public key).
    struct CertifiedPair;
    impl CertifiedPair {
        fn matches(cert_pem: &str, key_pem: &str) -> bool {
            let key = KeyPair::from_pem(key_pem).unwrap();
            let der = pem_der(cert_pem);
            let (_, cert) = x509_parser::parse_x509_certificate(&der).unwrap();
            cert.public_key().subject_public_key.data.as_ref() == key.public_key_raw()
        }
    }

    #[test]
    fn private_keys_are_readable_by_the_owner_only() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let paths = CertPaths::new(dir.path());
        ensure(&paths, OffsetDateTime::now_utc()).unwrap();
        for key in [
            paths.ca_key(),
            paths.server_key(),
            paths.wt_key(),
            paths.wt_next_key(),
        ] {
            let mode = fs::metadata(&key).unwrap().permissions().mode() & 0o777;
            assert_eq!(mode, 0o600, "{}", key.display());
        }
        let mode = fs::metadata(paths.ca_cert()).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o644);
    }

    #[test]
    fn a_corrupt_key_is_replaced() {
        let dir = tempfile::tempdir().unwrap();
        let paths = CertPaths::new(dir.path());
        let now = OffsetDateTime::now_utc();
        ensure(&paths, now).unwrap();
        fs::write(paths.server_key(), "garbage").unwrap();
        assert_eq!(ensure(&paths, now).unwrap().server, Action::Renewed);
    }

    fn pem_der(pem: &str) -> Vec<u8> {
        use rustls_pki_types::pem::PemObject;
        rustls_pki_types::CertificateDer::from_pem_slice(pem.as_bytes())
            .unwrap()
            .to_vec()
    }
}
