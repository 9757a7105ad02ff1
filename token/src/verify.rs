//! The checking side. A token is accepted only when all of these hold, in this order:
//! it is at most [`MAX_TOKEN_BYTES`](crate::MAX_TOKEN_BYTES) long and has three base64url parts;
//! its header says `alg: EdDSA` (pinned: `none`, `HS256` and everything else are refused before
//! any key is looked at) and names a `kid` this verifier knows, with no `crit`; the Ed25519
//! signature over the first two parts verifies with that key; the claims parse; and `now` is
//! within `[iat, exp)` (and after `nbf` when present), give or take
//! [`CLOCK_SKEW_LEEWAY_SECS`](crate::CLOCK_SKEW_LEEWAY_SECS).

use std::collections::HashMap;

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use ring::signature::{ED25519, UnparsedPublicKey};
use serde::Deserialize;

use crate::claims::Claims;
use crate::jwks::Jwks;
use crate::keys::Kid;
use crate::{ALGORITHM, CLOCK_SKEW_LEEWAY_SECS, MAX_TOKEN_BYTES};

/// Why a token was refused. Callers answer every variant the same way (401); the variant is
/// for logs and tests.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum VerifyError {
    #[error("token is not a compact JWS")]
    Malformed,
    #[error("algorithm {0:?} is not accepted")]
    Algorithm(String),
    #[error("token names no key id")]
    MissingKid,
    #[error("unknown key id")]
    UnknownKid,
    #[error("signature does not verify")]
    BadSignature,
    #[error("token has expired")]
    Expired,
    #[error("token is not valid yet")]
    NotYetValid,
}

impl VerifyError {
    /// A fixed word for logs.
    pub fn reason(&self) -> &'static str {
        match self {
            VerifyError::Malformed => "malformed",
            VerifyError::Algorithm(_) => "algorithm",
            VerifyError::MissingKid => "missing_kid",
            VerifyError::UnknownKid => "unknown_kid",
            VerifyError::BadSignature => "bad_signature",
            VerifyError::Expired => "expired",
            VerifyError::NotYetValid => "not_yet_valid",
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum JwksError {
    #[error("key {kid:?}: {reason}")]
    BadKey { kid: String, reason: &'static str },
}

#[derive(Deserialize)]
struct Header {
    alg: String,
    #[serde(default)]
    kid: Option<String>,
    #[serde(default)]
    crit: Option<serde_json::Value>,
}

/// Public keys by `kid`.
#[derive(Debug, Clone, Default)]
pub struct Verifier {
    keys: HashMap<String, Vec<u8>>,
}

impl Verifier {
    pub fn from_public_keys(keys: impl IntoIterator<Item = (Kid, Vec<u8>)>) -> Verifier {
        Verifier {
            keys: keys
                .into_iter()
                .map(|(kid, key)| (kid.as_str().to_owned(), key))
                .collect(),
        }
    }

    /// A verifier for the Ed25519 keys of a JWKS. Keys of other types are skipped (a set may
    /// grow new kinds of keys); an Ed25519 key that is malformed is an error.
    pub fn from_jwks(jwks: &Jwks) -> Result<Verifier, JwksError> {
        let mut keys = HashMap::new();
        for jwk in &jwks.keys {
            if jwk.kty != "OKP" || jwk.crv != "Ed25519" {
                continue;
            }
            if jwk.alg.as_deref().is_some_and(|alg| alg != ALGORITHM) {
                continue;
            }
            let bad = |reason| JwksError::BadKey {
                kid: jwk.kid.clone(),
                reason,
            };
            let kid = Kid::parse(&jwk.kid).map_err(|_| bad("invalid kid"))?;
            let x = URL_SAFE_NO_PAD
                .decode(&jwk.x)
                .map_err(|_| bad("x is not base64url"))?;
            if x.len() != 32 {
                return Err(bad("x is not 32 bytes"));
            }
            keys.insert(kid.as_str().to_owned(), x);
        }
        Ok(Verifier { keys })
    }

    pub fn kids(&self) -> Vec<&str> {
        let mut kids: Vec<&str> = self.keys.keys().map(String::as_str).collect();
        kids.sort_unstable();
        kids
    }

    /// Checks `token` at Unix time `now` (seconds).
    pub fn verify(&self, token: &str, now: i64) -> Result<Claims, VerifyError> {
        if token.len() > MAX_TOKEN_BYTES {
            return Err(VerifyError::Malformed);
        }
        let mut parts = token.split('.');
        let (Some(header_b64), Some(payload_b64), Some(signature_b64), None) =
            (parts.next(), parts.next(), parts.next(), parts.next())
        else {
            return Err(VerifyError::Malformed);
        };
        let header: Header = decode_json(header_b64)?;
        // Invariant: the algorithm is pinned before anything else in the header is trusted.
        if header.alg != ALGORITHM {
            return Err(VerifyError::Algorithm(header.alg));
        }
        if header.crit.is_some() {
            return Err(VerifyError::Malformed);
        }
        let kid = header.kid.ok_or(VerifyError::MissingKid)?;
        let key = self.keys.get(&kid).ok_or(VerifyError::UnknownKid)?;
        let signature = URL_SAFE_NO_PAD
            .decode(signature_b64)
            .map_err(|_| VerifyError::Malformed)?;
        let signed_len = header_b64.len() + 1 + payload_b64.len();
        UnparsedPublicKey::new(&ED25519, key)
            .verify(&token.as_bytes()[..signed_len], &signature)
            .map_err(|_| VerifyError::BadSignature)?;
        let claims: Claims = decode_json(payload_b64)?;
        if now >= claims.exp.saturating_add(CLOCK_SKEW_LEEWAY_SECS) {
            return Err(VerifyError::Expired);
        }
        let not_before = claims.nbf.unwrap_or(claims.iat).max(claims.iat);
        if not_before > now.saturating_add(CLOCK_SKEW_LEEWAY_SECS) {
            return Err(VerifyError::NotYetValid);
        }
        Ok(claims)
    }
}

fn decode_json<T: serde::de::DeserializeOwned>(part: &str) -> Result<T, VerifyError> {
    let bytes = URL_SAFE_NO_PAD
        .decode(part)
        .map_err(|_| VerifyError::Malformed)?;
    serde_json::from_slice(&bytes).map_err(|_| VerifyError::Malformed)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;
    use crate::KeySet;
    use ring::hmac;
    use uuid::Uuid;

    const NOW: i64 = 1_800_000_000;

    fn b64(bytes: &[u8]) -> String {
        URL_SAFE_NO_PAD.encode(bytes)
    }

    fn claims() -> Claims {
        Claims::new(Uuid::now_v7(), Uuid::now_v7(), NOW, 900)
    }

    /// Signs `header.payload` with `keys`' signing key, whatever the header says.
    fn ed25519(keys: &KeySet, header: serde_json::Value, claims: &serde_json::Value) -> String {
        // Borrow the real signer's key by re-signing through a token whose parts we replace.
        let unsigned = format!(
            "{}.{}",
            b64(header.to_string().as_bytes()),
            b64(claims.to_string().as_bytes())
        );
        let signature = keys.sign_raw_for_tests(unsigned.as_bytes());
        format!("{unsigned}.{}", b64(&signature))
    }

    struct Case {
        name: &'static str,
        token: Box<dyn Fn(&KeySet) -> String>,
        want: Result<(), VerifyError>,
    }

    fn with_claims(f: impl Fn(&mut serde_json::Value) + 'static) -> Box<dyn Fn(&KeySet) -> String> {
        Box::new(move |keys| {
            let mut c = serde_json::to_value(claims()).unwrap();
            f(&mut c);
            let header = serde_json::json!({"alg": "EdDSA", "typ": "JWT", "kid": "k1"});
            ed25519(keys, header, &c)
        })
    }

    #[test]
    fn the_attack_table() {
        let cases = vec![
            Case {
                name: "a token we signed is accepted",
                token: Box::new(|keys| keys.sign(&claims())),
                want: Ok(()),
            },
            Case {
                name: "alg none with no signature",
                token: Box::new(|_| {
                    let header = serde_json::json!({"alg": "none", "typ": "JWT", "kid": "k1"});
                    let c = serde_json::to_value(claims()).unwrap();
                    format!(
                        "{}.{}.",
                        b64(header.to_string().as_bytes()),
                        b64(c.to_string().as_bytes())
                    )
                }),
                want: Err(VerifyError::Algorithm("none".into())),
            },
            Case {
                name: "HS256 signed with the public key as the HMAC secret",
                token: Box::new(|keys| {
                    let header = serde_json::json!({"alg": "HS256", "typ": "JWT", "kid": "k1"});
                    let c = serde_json::to_value(claims()).unwrap();
                    let unsigned = format!(
                        "{}.{}",
                        b64(header.to_string().as_bytes()),
                        b64(c.to_string().as_bytes())
                    );
                    let x = URL_SAFE_NO_PAD.decode(&keys.jwks().keys[0].x).unwrap();
                    let tag =
                        hmac::sign(&hmac::Key::new(hmac::HMAC_SHA256, &x), unsigned.as_bytes());
                    format!("{unsigned}.{}", b64(tag.as_ref()))
                }),
                want: Err(VerifyError::Algorithm("HS256".into())),
            },
            Case {
                name: "expired",
                token: with_claims(|c| {
                    c["iat"] = (NOW - 7200).into();
                    c["exp"] = (NOW - 3600).into();
                }),
                want: Err(VerifyError::Expired),
            },
            Case {
                name: "issued in the future",
                token: with_claims(|c| {
                    c["iat"] = (NOW + 3600).into();
                    c["exp"] = (NOW + 4500).into();
                }),
                want: Err(VerifyError::NotYetValid),
            },
            Case {
                name: "nbf in the future",
                token: with_claims(|c| c["nbf"] = (NOW + 3600).into()),
                want: Err(VerifyError::NotYetValid),
            },
            Case {
                name: "unknown kid",
                token: Box::new(|keys| {
                    let header = serde_json::json!({"alg": "EdDSA", "typ": "JWT", "kid": "k2"});
                    ed25519(keys, header, &serde_json::to_value(claims()).unwrap())
                }),
                want: Err(VerifyError::UnknownKid),
            },
            Case {
                name: "no kid",
                token: Box::new(|keys| {
                    let header = serde_json::json!({"alg": "EdDSA", "typ": "JWT"});
                    ed25519(keys, header, &serde_json::to_value(claims()).unwrap())
                }),
                want: Err(VerifyError::MissingKid),
            },
            Case {
                name: "signed by another key under our kid",
                token: Box::new(|_| KeySet::generate("k1").unwrap().sign(&claims())),
                want: Err(VerifyError::BadSignature),
            },
            Case {
                name: "tampered payload (sub swapped)",
                token: Box::new(|keys| {
                    let token = keys.sign(&claims());
                    let parts: Vec<&str> = token.split('.').collect();
                    let mut c = claims();
                    c.sub = Uuid::now_v7();
                    let payload = b64(&serde_json::to_vec(&c).unwrap());
                    format!("{}.{payload}.{}", parts[0], parts[2])
                }),
                want: Err(VerifyError::BadSignature),
            },
            Case {
                name: "tampered signature (one bit flipped)",
                token: Box::new(|keys| {
                    let token = keys.sign(&claims());
                    let (unsigned, sig) = token.rsplit_once('.').unwrap();
                    let mut sig = URL_SAFE_NO_PAD.decode(sig).unwrap();
                    sig[10] ^= 1;
                    format!("{unsigned}.{}", b64(&sig))
                }),
                want: Err(VerifyError::BadSignature),
            },
            Case {
                name: "crit header",
                token: Box::new(|keys| {
                    let header = serde_json::json!({"alg": "EdDSA", "kid": "k1", "crit": ["exp"]});
                    ed25519(keys, header, &serde_json::to_value(claims()).unwrap())
                }),
                want: Err(VerifyError::Malformed),
            },
            Case {
                name: "two parts only",
                token: Box::new(|keys| {
                    let token = keys.sign(&claims());
                    token.rsplit_once('.').unwrap().0.to_owned()
                }),
                want: Err(VerifyError::Malformed),
            },
            Case {
                name: "oversized",
                token: Box::new(|keys| {
                    with_claims(|c| c["pad"] = "x".repeat(MAX_TOKEN_BYTES).into())(keys)
                }),
                want: Err(VerifyError::Malformed),
            },
        ];
        let keys = KeySet::generate("k1").unwrap();
        let verifier = keys.verifier();
        for case in cases {
            let token = (case.token)(&keys);
            let got = verifier.verify(&token, NOW).map(|_| ());
            assert_eq!(got, case.want, "{}", case.name);
        }
    }

    #[test]
    fn a_verifier_from_the_jwks_accepts_what_the_key_set_signs() {
        let keys = KeySet::generate("k1").unwrap();
        let jwks: Jwks =
            serde_json::from_str(&serde_json::to_string(&keys.jwks()).unwrap()).unwrap();
        let verifier = Verifier::from_jwks(&jwks).unwrap();
        assert_eq!(verifier.kids(), ["k1"]);
        let c = claims();
        assert_eq!(verifier.verify(&keys.sign(&c), NOW).unwrap(), c);
    }

    #[test]
    fn leeway_is_applied_on_both_ends() {
        let keys = KeySet::generate("k1").unwrap();
        let verifier = keys.verifier();
        let c = Claims::new(Uuid::now_v7(), Uuid::now_v7(), NOW, 900);
        let token = keys.sign(&c);
        assert!(
            verifier
                .verify(&token, NOW - CLOCK_SKEW_LEEWAY_SECS)
                .is_ok()
        );
        assert_eq!(
            verifier.verify(&token, NOW - CLOCK_SKEW_LEEWAY_SECS - 1),
            Err(VerifyError::NotYetValid)
        );
        assert!(
            verifier
                .verify(&token, NOW + 900 + CLOCK_SKEW_LEEWAY_SECS - 1)
                .is_ok()
        );
        assert_eq!(
            verifier.verify(&token, NOW + 900 + CLOCK_SKEW_LEEWAY_SECS),
            Err(VerifyError::Expired)
        );
    }
}
