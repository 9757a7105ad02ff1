//! Security events as single log lines in a fixed format, for fail2ban and for people. The
//! formats are documented in docs/OPERATIONS.md; changing one breaks deployed filters.
//!
//! The prefix `haberci-auth:` starts the message; fields are `key=value`, the user field is a
//! double-quoted, escaped string (only normalized login names reach it, which hold no quotes or
//! spaces), and the IP is bare so a filter's `<HOST>` matches it.

use std::net::IpAddr;

use crate::accounts::{SessionId, UserId};

/// Why a login failed, as logged.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LoginFailure {
    /// Unknown user or wrong password (never distinguished, not even here).
    BadCredentials,
    /// Refused by a rate limit before the password was checked.
    RateLimited,
}

impl LoginFailure {
    pub fn as_str(self) -> &'static str {
        match self {
            LoginFailure::BadCredentials => "bad_credentials",
            LoginFailure::RateLimited => "rate_limited",
        }
    }
}

/// `haberci-auth: login failed ip=203.0.113.7 user="alice" reason=bad_credentials`
pub fn login_failed_line(ip: IpAddr, user: &str, reason: LoginFailure) -> String {
    format!(
        "haberci-auth: login failed ip={ip} user={user:?} reason={}",
        reason.as_str()
    )
}

pub fn login_failed(ip: IpAddr, user: &str, reason: LoginFailure) {
    tracing::warn!(target: "haberci_auth", "{}", login_failed_line(ip, user, reason));
}

/// `haberci-auth: refresh token reused ip=203.0.113.7 user_id=… session=…`
pub fn refresh_reused(ip: IpAddr, user: UserId, session: SessionId) {
    tracing::warn!(
        target: "haberci_auth",
        "haberci-auth: refresh token reused ip={ip} user_id={user} session={session}"
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_failed_login_line_has_the_documented_format() {
        let line = login_failed_line(
            IpAddr::from([203, 0, 113, 7]),
            "alice",
            LoginFailure::BadCredentials,
        );
        assert_eq!(
            line,
            r#"haberci-auth: login failed ip=203.0.113.7 user="alice" reason=bad_credentials"#
        );
        let v6 = login_failed_line(
            "2001:db8::1".parse().unwrap_or(IpAddr::from([0, 0, 0, 0])),
            "a\"b",
            LoginFailure::RateLimited,
        );
        assert_eq!(
            v6,
            r#"haberci-auth: login failed ip=2001:db8::1 user="a\"b" reason=rate_limited"#
        );
    }
}
