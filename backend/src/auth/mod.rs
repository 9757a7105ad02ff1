//! Authentication: passwords, access tokens, sessions and refresh tokens, rate limits, and the
//! client address they are keyed by.
//!
//! - [`password`]: argon2id hashing on a bounded blocking pool.
//! - [`sessions`]: sessions and rotating refresh tokens in Postgres, the Redis session cache,
//!   revocation announcements on Redis.
//! - [`rate_limit`]: GCRA buckets in Redis, shared by every backend process.
//! - [`audit`]: the fixed-format log lines fail2ban matches.
//! - [`keys`]: the access-token key set, reloaded on SIGHUP and when its directory changes.
//!
//! Access tokens are signed and verified by the `haberci-token` crate (which the gateway can use
//! without the database); [`Auth`] holds the keys.

pub mod audit;
pub mod keys;
pub mod password;
pub mod rate_limit;
pub mod sessions;

use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::http::HeaderMap;
use haberci_token::Claims;
use haberci_wire::{SessionId, UserId};
use time::OffsetDateTime;

use crate::config::{AuthSettings, TrustedProxies};

/// The header a gateway puts the client's address in.
pub use haberci_seam::internal::CLIENT_IP_HEADER;

/// Everything the auth endpoints share.
pub struct Auth {
    pub settings: AuthSettings,
    /// Signs and verifies access tokens; swapped on reload ([`keys::watch`]).
    pub keys: Arc<keys::KeyStore>,
    pub passwords: password::PasswordHasher,
    pub limiter: rate_limit::RateLimiter,
}

impl Auth {
    pub fn new(settings: AuthSettings, keys: Arc<keys::KeyStore>) -> Auth {
        let passwords = password::PasswordHasher::with_queue_timeout(
            settings.hash_concurrency,
            settings.hash_queue_timeout,
        );
        Auth {
            settings,
            keys,
            passwords,
            limiter: rate_limit::RateLimiter::default(),
        }
    }

    /// A signed access token for `session` of `user`, and its lifetime in seconds.
    pub fn access_token(&self, user: UserId, session: SessionId) -> (String, i64) {
        let ttl = i64::try_from(self.settings.access_ttl.as_secs()).unwrap_or(900);
        let claims = Claims::new(user.as_uuid(), session.as_uuid(), unix_now(), ttl);
        (self.keys.current().set.sign(&claims), ttl)
    }

    /// How long a revoked session stays marked in the cache: as long as one of its access
    /// tokens can still verify.
    pub fn revoked_marker_ttl(&self) -> Duration {
        self.settings.access_ttl
            + Duration::from_secs(haberci_token::CLOCK_SKEW_LEEWAY_SECS.unsigned_abs() + 60)
    }
}

pub fn unix_now() -> i64 {
    OffsetDateTime::now_utc().unix_timestamp()
}

/// The client's address: the gateway's `x-haberci-client-ip` when the request comes from a
/// trusted address (`HABERCI_TRUSTED_PROXIES`) **and** carries the internal secret
/// (`x-haberci-internal`, which the gateway adds and strips from clients), else the
/// connection's own peer address.
///
/// API boundary: anything else on a trusted host (another local process) could write that
/// header, so without the secret it is ignored; with no secret configured it never counts.
pub fn client_ip(
    peer: IpAddr,
    headers: &HeaderMap,
    trusted: &TrustedProxies,
    secret: Option<&haberci_seam::internal::InternalToken>,
) -> IpAddr {
    let peer = peer.to_canonical();
    let from_gateway = secret.is_some_and(|secret| {
        headers
            .get(haberci_seam::internal::HEADER)
            .is_some_and(|presented| secret.admits(presented.as_bytes()))
    });
    if !trusted.contains(peer) || !from_gateway {
        return peer;
    }
    headers
        .get(CLIENT_IP_HEADER)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse::<IpAddr>().ok())
        .map_or(peer, |ip| ip.to_canonical())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_client_ip_header_is_believed_only_from_trusted_peers_with_the_secret() {
        let trusted: TrustedProxies = "127.0.0.0/8,::1".parse().unwrap_or_default();
        let secret = haberci_seam::internal::InternalToken::new("s".repeat(32))
            .unwrap_or_else(|_| unreachable!("32 characters make a secret"));
        let mut headers = HeaderMap::new();
        headers.insert(
            CLIENT_IP_HEADER,
            axum::http::HeaderValue::from_static("198.51.100.4"),
        );
        let ip = |s: &str| s.parse::<IpAddr>().unwrap_or(IpAddr::from([0, 0, 0, 0]));
        // Another local process writing the header without the secret is not believed, nor
        // is anyone when no secret is configured.
        assert_eq!(
            client_ip(ip("127.0.0.1"), &headers, &trusted, Some(&secret)),
            ip("127.0.0.1")
        );
        let mut wrong = headers.clone();
        wrong.insert(
            haberci_seam::internal::HEADER,
            axum::http::HeaderValue::from_static("not-the-secret"),
        );
        assert_eq!(
            client_ip(ip("127.0.0.1"), &wrong, &trusted, Some(&secret)),
            ip("127.0.0.1")
        );
        headers.insert(
            haberci_seam::internal::HEADER,
            axum::http::HeaderValue::from_str(secret.as_str()).unwrap_or_else(|_| unreachable!()),
        );
        assert_eq!(
            client_ip(ip("127.0.0.1"), &headers, &trusted, None),
            ip("127.0.0.1")
        );
        let client_ip = |peer, headers: &HeaderMap, trusted: &TrustedProxies| {
            client_ip(peer, headers, trusted, Some(&secret))
        };
        assert_eq!(
            client_ip(ip("127.0.0.1"), &headers, &trusted),
            ip("198.51.100.4")
        );
        assert_eq!(client_ip(ip("::1"), &headers, &trusted), ip("198.51.100.4"));
        assert_eq!(
            client_ip(ip("::ffff:127.0.0.1"), &headers, &trusted),
            ip("198.51.100.4")
        );
        assert_eq!(
            client_ip(ip("203.0.113.9"), &headers, &trusted),
            ip("203.0.113.9")
        );
        let mut junk = HeaderMap::new();
        junk.insert(
            CLIENT_IP_HEADER,
            axum::http::HeaderValue::from_static("not-an-ip"),
        );
        assert_eq!(client_ip(ip("127.0.0.1"), &junk, &trusted), ip("127.0.0.1"));
    }
}
