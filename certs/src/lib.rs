//! Development certificates for a local Haberci stack.
//!
//! Three things live in one directory (`.dev/certs` under `./dev`):
//!
//! | file | what |
//! |---|---|
//! | `ca.pem`, `ca-key.pem` | a local CA (ECDSA P-256, 10 years); trust it with `curl --cacert` |
//! | `server.pem`, `server-key.pem` | the TCP (HTTP/1.1, HTTP/2, WebSocket) leaf for `localhost`, `127.0.0.1`, `::1`, signed by the CA, 1 year |
//! | `wt.pem`, `wt-key.pem`, `wt.sha256` | the QUIC leaf (HTTP/3, WebTransport, native QUIC): ECDSA P-256, valid from now − 1 h to now + 13 days, signed by the CA; `wt.sha256` is the hex SHA-256 of its DER, the value a browser passes in `serverCertificateHashes` |
//!
//! Invariant: the QUIC leaf's validity never exceeds [`WT_MAX_VALIDITY`] (13 days); Chromium
//! refuses hash-pinned certificates valid for more than 14 days. [`ensure`] re-issues it once it
//! has less than [`WT_RENEW_BEFORE`] left, so a daily `ensure` keeps it valid; the gateway picks
//! up the new files without a restart.
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
}

impl Report {
    pub fn changed(&self) -> bool {
        [self.ca, self.server, self.wt]
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

    // A new CA invalidates every leaf it signed before.
    let server = renewal(
        ca,
        &paths.server_cert(),
        validity(&paths.server_cert(), &paths.server_key()),
        now,
        SERVER_RENEW_BEFORE,
    );
    if server != Action::Kept {
        let (cert_pem, key_pem, _) = issue_leaf(&issuer, now, SERVER_VALIDITY, "haberci dev")?;
        write_pair(
            &paths.server_cert(),
            &cert_pem,
            &paths.server_key(),
            &key_pem,
        )?;
    }

    let wt = renewal(
        ca,
        &paths.wt_cert(),
        validity(&paths.wt_cert(), &paths.wt_key()),
        now,
        WT_RENEW_BEFORE,
    );
    if wt != Action::Kept || !paths.wt_hash().exists() {
        let (cert_pem, key_pem, der) =
            issue_leaf(&issuer, now, WT_MAX_VALIDITY, "haberci webtransport")?;
        write_pair(&paths.wt_cert(), &cert_pem, &paths.wt_key(), &key_pem)?;
        write_atomic(
            &paths.wt_hash(),
            format!("{}\n", sha256_hex(&der)).as_bytes(),
        )?;
    }

    Ok(Report { ca, server, wt })
}

/// Hex SHA-256 of a DER certificate: the form `serverCertificateHashes` takes (as bytes).
pub fn sha256_hex(der: &[u8]) -> String {
    hex::encode(Sha256::digest(der))
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

/// Issues an ECDSA P-256 server leaf for [`LEAF_NAMES`]; returns (cert PEM, key PEM, cert DER).
fn issue_leaf(
    issuer: &Issuer<'_, KeyPair>,
    now: OffsetDateTime,
    validity: Duration,
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
    // Backdated by an hour; the total span stays within `validity` so the WebTransport leaf
    // never exceeds the browser's 14-day ceiling.
    params.not_before = now - BACKDATE;
    params.not_after = now + validity - BACKDATE;
    let cert = params
        .signed_by(&key, issuer)
        .map_err(rcgen_err("sign leaf"))?;
    Ok((cert.pem(), key.serialize_pem(), cert.der().to_vec()))
}

/// Permissions of a certificate (anyone may read it) and of a private key (only the owner).
const PUBLIC_MODE: u32 = 0o644;
const PRIVATE_MODE: u32 = 0o600;

fn write_pair(cert: &Path, cert_pem: &str, key: &Path, key_pem: &str) -> Result<(), CertError> {
    // Key first: a reader that sees a new certificate must find its key already in place.
    write_file(key, key_pem.as_bytes(), PRIVATE_MODE)?;
    write_atomic(cert, cert_pem.as_bytes())
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
    use super::*;

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
                wt: Action::Created
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
    fn private_keys_are_readable_by_the_owner_only() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let paths = CertPaths::new(dir.path());
        ensure(&paths, OffsetDateTime::now_utc()).unwrap();
        for key in [paths.ca_key(), paths.server_key(), paths.wt_key()] {
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
