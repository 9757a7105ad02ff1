//! Rate limits live in Redis, so every backend process shares them: here two independently
//! built routers (two `AppState`s, two Redis clients) stand for two processes. Each test uses
//! its own client IP and usernames, so parallel tests never share a bucket.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use http::StatusCode;
use serde_json::json;

use haberci_backend::config::{ApiSettings, Rate};

use crate::support::{Api, roomy_settings, unique_ip, unique_name};

fn with(change: impl FnOnce(&mut ApiSettings)) -> ApiSettings {
    let mut settings = roomy_settings();
    change(&mut settings);
    settings
}

fn login_body(name: &str) -> serde_json::Value {
    json!({ "usernameOrEmail": name, "password": "wrong password" })
}

fn retry_after(reply: &crate::support::Reply) -> u64 {
    reply
        .headers
        .get("retry-after")
        .expect("Retry-After on 429")
        .to_str()
        .unwrap()
        .parse()
        .unwrap()
}

#[tokio::test]
async fn the_n_plus_first_login_from_one_ip_is_refused_by_every_process() {
    let settings = with(|s| s.auth.limits.login_ip = Rate::new(3, Duration::from_secs(60)));
    let first = Api::with_settings(settings.clone());
    let second = first.second_process(settings);
    // Three attempts (different accounts, so only the IP bucket fills), spread over both.
    for (api, n) in [(&first, 1), (&second, 2), (&first, 3)] {
        let reply = api
            .post("/v1/auth/login", login_body(&unique_name("rl")))
            .await;
        assert_eq!(reply.code(), "invalid_credentials", "attempt {n}");
    }
    for api in [&second, &first] {
        let reply = api
            .post("/v1/auth/login", login_body(&unique_name("rl")))
            .await;
        assert_eq!(reply.status, StatusCode::TOO_MANY_REQUESTS);
        assert_eq!(reply.code(), "rate_limited");
        let wait = retry_after(&reply);
        assert!((1..=60).contains(&wait), "Retry-After {wait}");
    }
    // Another address is not affected.
    let elsewhere = Api {
        client_ip: unique_ip(),
        ..first
    };
    let reply = elsewhere
        .post("/v1/auth/login", login_body(&unique_name("rl")))
        .await;
    assert_eq!(reply.code(), "invalid_credentials");
}

#[tokio::test]
async fn one_account_is_limited_whatever_the_address() {
    let settings = with(|s| s.auth.limits.login_account = Rate::new(2, Duration::from_secs(60)));
    let target = unique_name("victim");
    let mut api = Api::with_settings(settings);
    for _ in 0..2 {
        api.client_ip = unique_ip();
        assert_eq!(
            api.post("/v1/auth/login", login_body(&target)).await.code(),
            "invalid_credentials"
        );
    }
    api.client_ip = unique_ip();
    // The same account under another spelling is the same bucket.
    let reply = api
        .post("/v1/auth/login", login_body(&target.to_uppercase()))
        .await;
    assert_eq!(
        (reply.status, reply.code()),
        (StatusCode::TOO_MANY_REQUESTS, "rate_limited")
    );
}

#[tokio::test]
async fn registrations_and_refreshes_are_limited_per_ip() {
    let settings = with(|s| {
        s.auth.limits.register_ip = Rate::new(1, Duration::from_secs(3600));
        s.auth.limits.refresh_ip = Rate::new(2, Duration::from_secs(60));
    });
    let api = Api::with_settings(settings);
    api.register().await;
    let again = api
        .post(
            "/v1/auth/register",
            json!({ "username": unique_name("r"), "email": "r@example.com", "password": "long enough", "displayName": "R" }),
        )
        .await;
    assert_eq!(
        (again.status, again.code()),
        (StatusCode::TOO_MANY_REQUESTS, "rate_limited")
    );
    assert!(retry_after(&again) > 60, "one per hour");

    for _ in 0..2 {
        let reply = api
            .post(
                "/v1/auth/refresh",
                json!({ "refreshToken": "B".repeat(43) }),
            )
            .await;
        assert_eq!(reply.code(), "invalid_refresh_token");
    }
    let reply = api
        .post(
            "/v1/auth/refresh",
            json!({ "refreshToken": "B".repeat(43) }),
        )
        .await;
    assert_eq!(reply.code(), "rate_limited");
}

#[tokio::test]
async fn the_client_ip_header_is_ignored_from_an_untrusted_peer() {
    let settings = with(|s| s.auth.limits.login_ip = Rate::new(2, Duration::from_secs(60)));
    let mut api = Api::with_settings(settings);
    // Not a gateway: the connection itself comes from an address outside the trusted ranges.
    api.peer = std::net::SocketAddr::new(unique_ip(), 5555);
    for n in 0..3 {
        // A new spoofed client IP each time; were it believed, no bucket would fill.
        api.client_ip = unique_ip();
        let reply = api
            .post("/v1/auth/login", login_body(&unique_name("sp")))
            .await;
        let want = if n < 2 {
            "invalid_credentials"
        } else {
            "rate_limited"
        };
        assert_eq!(reply.code(), want, "attempt {}", n + 1);
    }
}

/// Collects log output.
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

#[tokio::test]
async fn every_failed_login_logs_one_fail2ban_line() {
    let captured = Captured::default();
    let writer = captured.clone();
    // Each test runs in its own process under nextest, so this subscriber sees only this test.
    tracing_subscriber::fmt()
        .with_writer(move || writer.clone())
        .with_ansi(false)
        .init();
    let settings = with(|s| s.auth.limits.login_account = Rate::new(2, Duration::from_secs(60)));
    let api = Api::with_settings(settings);
    let (account, _) = api.register().await;
    let wrong = json!({ "usernameOrEmail": account.username, "password": "wrong password" });
    for _ in 0..3 {
        api.post("/v1/auth/login", wrong.clone()).await;
    }
    let log = String::from_utf8(captured.0.lock().unwrap().clone()).unwrap();
    let ip = api.client_ip;
    let name = &account.username;
    let lines: Vec<&str> = log
        .lines()
        .filter(|l| l.contains("haberci-auth: login failed"))
        .collect();
    assert_eq!(lines.len(), 3, "{log}");
    let bad = format!(r#"haberci-auth: login failed ip={ip} user="{name}" reason=bad_credentials"#);
    let limited =
        format!(r#"haberci-auth: login failed ip={ip} user="{name}" reason=rate_limited"#);
    assert!(lines[0].ends_with(&bad), "{}", lines[0]);
    assert!(lines[1].ends_with(&bad), "{}", lines[1]);
    assert!(lines[2].ends_with(&limited), "{}", lines[2]);
}

#[tokio::test]
async fn ipv6_clients_in_one_64_share_a_bucket() {
    let settings = with(|s| s.auth.limits.login_ip = Rate::new(2, Duration::from_secs(60)));
    let mut api = Api::with_settings(settings);
    let std::net::IpAddr::V6(base) = unique_ip() else {
        unreachable!("unique_ip is IPv6")
    };
    let prefix = u128::from(base) & (u128::MAX << 64);
    let in_prefix = |low: u128| std::net::IpAddr::V6((prefix | low).into());
    for (n, low) in [(1, 1u128), (2, 0xdead_beef), (3, u128::from(u64::MAX))] {
        api.client_ip = in_prefix(low);
        let reply = api
            .post("/v1/auth/login", login_body(&unique_name("v6")))
            .await;
        let want = if n < 3 {
            "invalid_credentials"
        } else {
            "rate_limited"
        };
        assert_eq!(reply.code(), want, "attempt {n} from {}", api.client_ip);
    }
    // The neighbouring /64 has its own bucket.
    api.client_ip = std::net::IpAddr::V6((prefix ^ (1 << 64)).into());
    let reply = api
        .post("/v1/auth/login", login_body(&unique_name("v6")))
        .await;
    assert_eq!(reply.code(), "invalid_credentials");
}

#[tokio::test]
async fn an_accounts_username_and_email_share_one_login_budget() {
    let settings = with(|s| s.auth.limits.login_account = Rate::new(2, Duration::from_secs(60)));
    let mut api = Api::with_settings(settings);
    let (account, _) = api.register().await;
    for name in [&account.username, &account.email] {
        api.client_ip = unique_ip();
        let reply = api.post("/v1/auth/login", login_body(name)).await;
        assert_eq!(reply.code(), "invalid_credentials", "{name}");
    }
    for name in [&account.username, &account.email] {
        api.client_ip = unique_ip();
        let reply = api.post("/v1/auth/login", login_body(name)).await;
        assert_eq!(
            (reply.status, reply.code()),
            (StatusCode::TOO_MANY_REQUESTS, "rate_limited"),
            "{name}: no second budget under the other name"
        );
    }
}

#[tokio::test]
async fn registrations_are_limited_per_username_and_per_email() {
    let settings = with(|s| {
        s.auth.limits.register_account = Rate::new(1, Duration::from_secs(3600));
    });
    let mut api = Api::with_settings(settings);
    let (account, _) = api.register().await;
    // From other addresses: the same username (another email), then the same email (another
    // username), each refused before any hashing or database work.
    for (username, email) in [
        (
            account.username.clone(),
            format!("{}@example.org", unique_name("e")),
        ),
        (unique_name("u"), account.email.clone()),
    ] {
        api.client_ip = unique_ip();
        let reply = api
            .post(
                "/v1/auth/register",
                json!({ "username": username, "email": email, "password": "long enough", "displayName": "R" }),
            )
            .await;
        assert_eq!(
            (reply.status, reply.code()),
            (StatusCode::TOO_MANY_REQUESTS, "rate_limited"),
            "{username} {email}"
        );
    }
}

#[tokio::test]
async fn a_saturated_hashing_pool_answers_503_with_retry_after() {
    // One hashing slot and a short queue: of many concurrent logins, one gets the slot and the
    // ones still queued when the wait runs out get 503 (before any gateway would time out).
    let settings = with(|s| {
        s.auth.hash_concurrency = 1;
        s.auth.hash_queue_timeout = Duration::from_millis(200);
    });
    let api = Api::with_settings(settings);
    let replies = futures::future::join_all(
        (0..16).map(|_| api.post("/v1/auth/login", login_body(&unique_name("flood")))),
    )
    .await;
    let mut busy = 0;
    for reply in &replies {
        match reply.status {
            StatusCode::UNAUTHORIZED => assert_eq!(reply.code(), "invalid_credentials"),
            StatusCode::SERVICE_UNAVAILABLE => {
                assert_eq!(reply.code(), "unavailable", "{}", reply.json);
                assert_eq!(reply.headers["retry-after"], "1");
                busy += 1;
            }
            other => panic!("unexpected {other}: {}", reply.json),
        }
    }
    assert!(busy >= 1, "no 503 among {} logins", replies.len());
    assert!(busy < replies.len(), "the slot served someone");
}
