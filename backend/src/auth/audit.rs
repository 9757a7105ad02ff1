//! Security events as single log lines in a fixed format, for fail2ban and for people. The
//! formats are documented in docs/OPERATIONS.md; changing one breaks deployed filters.
//!
//! The prefix `haberci-auth:` starts the message; fields are `key=value`, the user field is a
//! double-quoted, escaped string (only normalized login names reach it, which hold no quotes or
//! spaces), and the IP is bare so a filter's `<HOST>` matches it.

use std::net::IpAddr;

use haberci_wire::{SessionId, UserId};

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
    crate::metrics::login_failed(reason.as_str());
    tracing::warn!(target: "haberci_auth", "{}", login_failed_line(ip, user, reason));
}

/// `haberci-auth: refresh token reused ip=203.0.113.7 user_id=… session=…`
pub fn refresh_reused(ip: IpAddr, user: UserId, session: SessionId) {
    crate::metrics::refresh_reused();
    tracing::warn!(
        target: "haberci_auth",
        "haberci-auth: refresh token reused ip={ip} user_id={user} session={session}"
    );
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use std::sync::{Arc, Mutex};

    use super::*;

    /// The `failregex` docs/OPERATIONS.md documents, as written there.
    fn documented_failregex() -> &'static str {
        include_str!("../../../docs/OPERATIONS.md")
            .lines()
            .find_map(|line| line.strip_prefix("failregex = "))
            .expect("docs/OPERATIONS.md documents a failregex")
    }

    /// fail2ban's regex with `<HOST>` as a capture of an IPv4 or IPv6 address.
    fn as_rust_regex(failregex: &str) -> regex::Regex {
        regex::Regex::new(&failregex.replace("<HOST>", r"(?P<host>[0-9A-Fa-f:.]+)")).unwrap()
    }

    #[derive(Clone, Default)]
    struct Captured(Arc<Mutex<Vec<u8>>>);

    impl std::io::Write for Captured {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(buf);
            Ok(buf.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    /// The line `login_failed` writes, formatted as `haberci_kit::telemetry` formats it:
    /// human-readable, or JSON (`HABERCI_LOG_FORMAT=json`).
    fn logged(json: bool, ip: IpAddr, user: &str) -> String {
        let captured = Captured::default();
        let writer = captured.clone();
        let builder = tracing_subscriber::fmt()
            .with_writer(move || writer.clone())
            .with_ansi(false)
            .with_target(true);
        let log = || login_failed(ip, user, LoginFailure::BadCredentials);
        if json {
            tracing::subscriber::with_default(builder.json().flatten_event(true).finish(), log);
        } else {
            tracing::subscriber::with_default(builder.finish(), log);
        }
        let text = String::from_utf8(captured.0.lock().unwrap().clone()).unwrap();
        assert_eq!(text.lines().count(), 1, "{text}");
        text
    }

    #[test]
    fn the_documented_failregex_matches_plain_and_json_logs_and_finds_the_ip() {
        let failregex = documented_failregex();
        let regex = as_rust_regex(failregex);
        // The old filter ended in `user="`, which the JSON log writes as `user=\"`.
        let old = as_rust_regex(r#"haberci-auth: login failed ip=<HOST> user=""#);
        for ip in ["203.0.113.7", "2001:db8::1", "::1"] {
            let addr: IpAddr = ip.parse().unwrap();
            for json in [false, true] {
                let line = logged(json, addr, "alice");
                let found = regex
                    .captures(&line)
                    .unwrap_or_else(|| panic!("{failregex:?} does not match {line:?}"));
                assert_eq!(&found["host"], ip, "{line}");
                if json {
                    assert!(line.contains(r#"user=\"alice\""#), "{line}");
                    assert!(!old.is_match(&line), "{line}");
                }
            }
        }
    }

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
