//! The signing side: Ed25519 private keys, one PKCS#8 PEM file per key in a directory, the file
//! stem being the key id (`kid`). Every key in the directory is published in the JWKS; one of
//! them signs. Rotation: add a key (published), later make it the signing key, and remove the
//! old one once every token it signed has expired (docs/OPERATIONS.md).

use std::fmt;
use std::path::{Path, PathBuf};

use base64::Engine;
use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use ring::rand::SystemRandom;
use ring::signature::{Ed25519KeyPair, KeyPair};
use rustls_pki_types::PrivatePkcs8KeyDer;
use rustls_pki_types::pem::PemObject;

use crate::claims::Claims;
use crate::jwks::{Jwk, Jwks};
use crate::verify::Verifier;

/// File extension of key files in a key directory.
pub const KEY_FILE_EXTENSION: &str = "pem";

#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    #[error("cannot read key directory {path}: {source}")]
    ReadDir {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("key directory {0} holds no *.pem key")]
    NoKeys(PathBuf),
    #[error("{path}: not a PKCS#8 PEM private key: {reason}")]
    BadPem { path: PathBuf, reason: String },
    #[error("{path}: not an Ed25519 key: {reason}")]
    NotEd25519 { path: PathBuf, reason: String },
    #[error("invalid key id {0:?}: use 1-64 of A-Z a-z 0-9 . _ -")]
    BadKid(String),
    #[error("signing key id {0:?} is not in the key directory")]
    UnknownSigningKid(String),
    #[error("cannot write key file {path}: {source}")]
    Write {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("key generation failed")]
    Generate,
}

/// A key id: 1–64 characters of `A-Z a-z 0-9 . _ -`, so it is safe in file names, headers and
/// logs.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Kid(String);

impl Kid {
    pub fn parse(text: &str) -> Result<Kid, KeyError> {
        let ok = !text.is_empty()
            && text.len() <= 64
            && text
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'));
        if ok {
            Ok(Kid(text.to_owned()))
        } else {
            Err(KeyError::BadKid(text.to_owned()))
        }
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for Kid {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

struct SigningKey {
    kid: Kid,
    pair: Ed25519KeyPair,
}

/// Every key of a key directory, and which one signs.
pub struct KeySet {
    // Invariant: non-empty, sorted by kid, kids unique; `current` indexes into it.
    keys: Vec<SigningKey>,
    current: usize,
}

impl fmt::Debug for KeySet {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Never prints key material.
        f.debug_struct("KeySet")
            .field("kids", &self.kids())
            .field("signing", &self.signing_kid().as_str())
            .finish()
    }
}

impl KeySet {
    /// Loads every `*.pem` in `dir`. The signing key is `signing_kid` when given, else the key
    /// whose id sorts last (ids made by [`new_kid`]-style timestamps sort by age).
    pub fn load_dir(dir: &Path, signing_kid: Option<&str>) -> Result<KeySet, KeyError> {
        let entries = std::fs::read_dir(dir).map_err(|source| KeyError::ReadDir {
            path: dir.to_owned(),
            source,
        })?;
        let mut keys = Vec::new();
        for entry in entries {
            let path = entry
                .map_err(|source| KeyError::ReadDir {
                    path: dir.to_owned(),
                    source,
                })?
                .path();
            if path.extension().and_then(|e| e.to_str()) != Some(KEY_FILE_EXTENSION) {
                continue;
            }
            let stem = path.file_stem().and_then(|s| s.to_str()).unwrap_or("");
            let kid = Kid::parse(stem)?;
            let der = PrivatePkcs8KeyDer::from_pem_file(&path).map_err(|err| KeyError::BadPem {
                path: path.clone(),
                reason: err.to_string(),
            })?;
            // `maybe_unchecked` also accepts PKCS#8 v1 (no public key inside), which is what
            // `openssl genpkey -algorithm ed25519` writes.
            let pair = Ed25519KeyPair::from_pkcs8_maybe_unchecked(der.secret_pkcs8_der()).map_err(
                |err| KeyError::NotEd25519 {
                    path: path.clone(),
                    reason: err.to_string(),
                },
            )?;
            keys.push(SigningKey { kid, pair });
        }
        if keys.is_empty() {
            return Err(KeyError::NoKeys(dir.to_owned()));
        }
        KeySet::from_keys(keys, signing_kid)
    }

    /// A key set with one fresh key held only in memory (tests, benchmarks).
    pub fn generate(kid: &str) -> Result<KeySet, KeyError> {
        let kid = Kid::parse(kid)?;
        let pkcs8 = generate_pkcs8()?;
        let pair = Ed25519KeyPair::from_pkcs8(&pkcs8).map_err(|_| KeyError::Generate)?;
        KeySet::from_keys(vec![SigningKey { kid, pair }], None)
    }

    fn from_keys(mut keys: Vec<SigningKey>, signing_kid: Option<&str>) -> Result<KeySet, KeyError> {
        keys.sort_by(|a, b| a.kid.cmp(&b.kid));
        let current = match signing_kid {
            Some(wanted) => keys
                .iter()
                .position(|k| k.kid.as_str() == wanted)
                .ok_or_else(|| KeyError::UnknownSigningKid(wanted.to_owned()))?,
            None => keys.len().saturating_sub(1),
        };
        Ok(KeySet { keys, current })
    }

    pub fn signing_kid(&self) -> &Kid {
        &self.keys[self.current].kid
    }

    pub fn kids(&self) -> Vec<&str> {
        self.keys.iter().map(|k| k.kid.as_str()).collect()
    }

    /// A compact JWS: `base64url(header).base64url(claims).base64url(signature)`.
    pub fn sign(&self, claims: &Claims) -> String {
        let key = &self.keys[self.current];
        let header =
            serde_json::json!({ "alg": crate::ALGORITHM, "typ": "JWT", "kid": key.kid.as_str() });
        // Invariant: serializing a `Value` and our plain claims struct cannot fail.
        let header = serde_json::to_vec(&header).unwrap_or_default();
        let payload = serde_json::to_vec(claims).unwrap_or_default();
        let mut token = URL_SAFE_NO_PAD.encode(header);
        token.push('.');
        token.push_str(&URL_SAFE_NO_PAD.encode(payload));
        let signature = key.pair.sign(token.as_bytes());
        token.push('.');
        token.push_str(&URL_SAFE_NO_PAD.encode(signature.as_ref()));
        token
    }

    /// Signs arbitrary bytes with the signing key; only for forging test tokens.
    #[cfg(test)]
    pub(crate) fn sign_raw_for_tests(&self, message: &[u8]) -> Vec<u8> {
        self.keys[self.current].pair.sign(message).as_ref().to_vec()
    }

    /// Every public key, for `GET /v1/auth/jwks`.
    pub fn jwks(&self) -> Jwks {
        Jwks {
            keys: self
                .keys
                .iter()
                .map(|k| Jwk {
                    kty: "OKP".into(),
                    crv: "Ed25519".into(),
                    x: URL_SAFE_NO_PAD.encode(k.pair.public_key().as_ref()),
                    kid: k.kid.to_string(),
                    alg: Some(crate::ALGORITHM.into()),
                    use_: Some("sig".into()),
                })
                .collect(),
        }
    }

    /// A verifier for every key of this set.
    pub fn verifier(&self) -> Verifier {
        Verifier::from_public_keys(
            self.keys
                .iter()
                .map(|k| (k.kid.clone(), k.pair.public_key().as_ref().to_vec())),
        )
    }
}

fn generate_pkcs8() -> Result<Vec<u8>, KeyError> {
    Ed25519KeyPair::generate_pkcs8(&SystemRandom::new())
        .map(|doc| doc.as_ref().to_vec())
        .map_err(|_| KeyError::Generate)
}

/// Writes a new Ed25519 key as `dir/<kid>.pem` (mode 0600; the directory is created 0700).
/// Refuses to overwrite an existing file.
pub fn write_new_key(dir: &Path, kid: &str) -> Result<PathBuf, KeyError> {
    use std::io::Write;
    use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};

    let kid = Kid::parse(kid)?;
    let path = dir.join(format!("{kid}.{KEY_FILE_EXTENSION}"));
    let write_err = |source| KeyError::Write {
        path: path.clone(),
        source,
    };
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
        .map_err(write_err)?;
    let der = generate_pkcs8()?;
    let mut pem = String::from("-----BEGIN PRIVATE KEY-----\n");
    let body = STANDARD.encode(&der);
    for line in body.as_bytes().chunks(64) {
        pem.push_str(std::str::from_utf8(line).unwrap_or_default());
        pem.push('\n');
    }
    pem.push_str("-----END PRIVATE KEY-----\n");
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(&path)
        .map_err(write_err)?;
    file.write_all(pem.as_bytes()).map_err(write_err)?;
    Ok(path)
}

/// Whether `dir` holds at least one key file.
pub fn has_keys(dir: &Path) -> bool {
    std::fs::read_dir(dir).is_ok_and(|entries| {
        entries
            .flatten()
            .any(|e| e.path().extension().and_then(|x| x.to_str()) == Some(KEY_FILE_EXTENSION))
    })
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    struct TempDir(PathBuf);

    impl Drop for TempDir {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }

    fn temp_dir() -> TempDir {
        TempDir(std::env::temp_dir().join(format!("haberci-token-{}", uuid::Uuid::new_v4())))
    }

    #[test]
    fn keys_written_to_a_directory_load_and_the_newest_signs() {
        let dir = temp_dir();
        assert!(!has_keys(&dir.0));
        write_new_key(&dir.0, "20260101T000000Z").unwrap();
        write_new_key(&dir.0, "20270101T000000Z").unwrap();
        assert!(has_keys(&dir.0));
        assert!(
            write_new_key(&dir.0, "20270101T000000Z").is_err(),
            "never overwrites"
        );

        let keys = KeySet::load_dir(&dir.0, None).unwrap();
        assert_eq!(keys.kids(), ["20260101T000000Z", "20270101T000000Z"]);
        assert_eq!(keys.signing_kid().as_str(), "20270101T000000Z");
        assert_eq!(keys.jwks().keys.len(), 2);

        let pinned = KeySet::load_dir(&dir.0, Some("20260101T000000Z")).unwrap();
        assert_eq!(pinned.signing_kid().as_str(), "20260101T000000Z");
        // A token signed by the old key still verifies with the set's verifier.
        let claims = Claims::new(uuid::Uuid::now_v7(), uuid::Uuid::now_v7(), 100, 900);
        assert!(keys.verifier().verify(&pinned.sign(&claims), 100).is_ok());

        assert!(matches!(
            KeySet::load_dir(&dir.0, Some("nope")),
            Err(KeyError::UnknownSigningKid(_))
        ));
    }

    #[test]
    fn an_openssl_generated_key_loads() {
        // `openssl genpkey -algorithm ed25519` writes PKCS#8 v1 (no public key inside); the
        // public key below is what `openssl pkey -pubout` derives from it.
        let dir = temp_dir();
        std::fs::create_dir_all(&dir.0).unwrap();
        std::fs::write(
            dir.0.join("openssl.pem"),
            "-----BEGIN PRIVATE KEY-----\n\
             MC4CAQAwBQYDK2VwBCIEIL60lTSTDrrHRsZQeFZY5LoJud54BWx3tTDNuQbpsux6\n\
             -----END PRIVATE KEY-----\n",
        )
        .unwrap();
        let keys = KeySet::load_dir(&dir.0, None).unwrap();
        assert_eq!(
            keys.jwks().keys[0].x,
            "_3rfe27i7ccTsSBdN8991OQyBaDEYkmXDWHkz5PY7eo"
        );
    }

    #[test]
    fn bad_directories_and_files_are_reported() {
        let dir = temp_dir();
        assert!(matches!(
            KeySet::load_dir(&dir.0, None),
            Err(KeyError::ReadDir { .. })
        ));
        std::fs::create_dir_all(&dir.0).unwrap();
        assert!(matches!(
            KeySet::load_dir(&dir.0, None),
            Err(KeyError::NoKeys(_))
        ));
        std::fs::write(dir.0.join("k.pem"), "not a key").unwrap();
        assert!(matches!(
            KeySet::load_dir(&dir.0, None),
            Err(KeyError::BadPem { .. })
        ));
        assert!(Kid::parse("../etc").is_err());
    }
}
