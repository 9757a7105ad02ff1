//! Signed links: `GET /v1/media/{id}[/thumb|/preview]?exp=…&sig=…` works without an
//! `Authorization` header until `exp`, so a browser's `<img src>` or `<video src>` can load
//! media. Whoever holds a link may read those bytes until it expires: links are handed only
//! to a caller who passed the access check, and live [`super::MediaSettings::url_ttl`].
//!
//! `sig` = base64url(HMAC-SHA256(key, "haberci-media-v1\n{id}\n{variant}\n{exp}")).

use std::fmt;

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use haberci_wire::MediaId;
use ring::hmac;
use uuid::Uuid;

/// Which bytes of a media item.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Variant {
    Original,
    Thumb,
    Preview,
}

impl Variant {
    pub fn as_str(self) -> &'static str {
        match self {
            Variant::Original => "original",
            Variant::Thumb => "thumb",
            Variant::Preview => "preview",
        }
    }
    /// The path of this variant's bytes.
    pub fn path(self, id: MediaId) -> String {
        match self {
            Variant::Original => format!("/v1/media/{id}"),
            Variant::Thumb => format!("/v1/media/{id}/thumb"),
            Variant::Preview => format!("/v1/media/{id}/preview"),
        }
    }
}

/// The signing secret. `Debug` never prints it.
#[derive(Clone)]
pub struct UrlKey(hmac::Key);

impl fmt::Debug for UrlKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("UrlKey(..)")
    }
}

/// Shortest secret accepted.
pub const MIN_KEY_BYTES: usize = 32;

impl UrlKey {
    pub fn from_hex(text: &str) -> Result<UrlKey, &'static str> {
        let bytes = hex::decode(text.trim()).map_err(|_| "must be hex")?;
        if bytes.len() < MIN_KEY_BYTES {
            return Err("must be at least 32 bytes (64 hex digits)");
        }
        Ok(UrlKey(hmac::Key::new(hmac::HMAC_SHA256, &bytes)))
    }

    pub fn random() -> UrlKey {
        let rng = ring::rand::SystemRandom::new();
        // Invariant: the system RNG does not fail on a supported OS.
        let key = hmac::Key::generate(hmac::HMAC_SHA256, &rng)
            .unwrap_or_else(|_| hmac::Key::new(hmac::HMAC_SHA256, Uuid::new_v4().as_bytes()));
        UrlKey(key)
    }

    fn tag(&self, id: MediaId, variant: Variant, expires: i64) -> hmac::Tag {
        let message = format!("haberci-media-v1\n{id}\n{}\n{expires}", variant.as_str());
        hmac::sign(&self.0, message.as_bytes())
    }

    /// The link to `variant` of `id`, valid until `expires` (Unix seconds).
    pub fn sign(&self, id: MediaId, variant: Variant, expires: i64) -> String {
        let sig = URL_SAFE_NO_PAD.encode(self.tag(id, variant, expires).as_ref());
        format!("{}?exp={expires}&sig={sig}", variant.path(id))
    }

    /// Whether `sig` signs (`id`, `variant`, `expires`) and `expires` is not before `now`.
    pub fn verify(
        &self,
        id: MediaId,
        variant: Variant,
        expires: i64,
        sig: &str,
        now: i64,
    ) -> Check {
        let Ok(sig) = URL_SAFE_NO_PAD.decode(sig) else {
            return Check::Forged;
        };
        let message = format!("haberci-media-v1\n{id}\n{}\n{expires}", variant.as_str());
        if hmac::verify(&self.0, message.as_bytes(), &sig).is_err() {
            return Check::Forged;
        }
        if expires < now {
            return Check::Expired;
        }
        Check::Valid
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Check {
    Valid,
    Expired,
    Forged,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn media(n: u128) -> MediaId {
        MediaId::new(Uuid::from_u128(n)).unwrap_or_else(|| unreachable!())
    }

    fn parts(link: &str) -> (i64, String) {
        let query = link.split_once('?').map(|(_, q)| q).unwrap_or_default();
        let mut exp = 0;
        let mut sig = String::new();
        for pair in query.split('&') {
            match pair.split_once('=') {
                Some(("exp", v)) => exp = v.parse().unwrap_or(0),
                Some(("sig", v)) => sig = v.to_owned(),
                _ => {}
            }
        }
        (exp, sig)
    }

    #[test]
    fn a_link_verifies_until_it_expires_and_only_for_its_media_and_variant() {
        let key = UrlKey::random();
        let id = media(7);
        let link = key.sign(id, Variant::Thumb, 1_000);
        assert!(link.starts_with(&format!("/v1/media/{id}/thumb?exp=1000&sig=")));
        let (exp, sig) = parts(&link);
        assert_eq!(key.verify(id, Variant::Thumb, exp, &sig, 999), Check::Valid);
        assert_eq!(
            key.verify(id, Variant::Thumb, exp, &sig, 1_000),
            Check::Valid
        );
        assert_eq!(
            key.verify(id, Variant::Thumb, exp, &sig, 1_001),
            Check::Expired
        );
        assert_eq!(
            key.verify(id, Variant::Original, exp, &sig, 0),
            Check::Forged
        );
        assert_eq!(
            key.verify(media(8), Variant::Thumb, exp, &sig, 0),
            Check::Forged
        );
        assert_eq!(
            key.verify(id, Variant::Thumb, exp + 1, &sig, 0),
            Check::Forged
        );
        assert_eq!(key.verify(id, Variant::Thumb, exp, "!!", 0), Check::Forged);
        assert_eq!(
            UrlKey::random().verify(id, Variant::Thumb, exp, &sig, 0),
            Check::Forged
        );
    }

    #[test]
    fn keys_shorter_than_32_bytes_or_not_hex_are_refused() {
        assert!(UrlKey::from_hex(&"ab".repeat(31)).is_err());
        assert!(UrlKey::from_hex(&"zz".repeat(32)).is_err());
        assert!(UrlKey::from_hex(&"ab".repeat(32)).is_ok());
    }
}
