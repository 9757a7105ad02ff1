//! Redis down (a URL where nothing listens, as when Redis is down at start-up): nothing hangs.
//! Sessions are checked in Postgres, login and registration answer 503 with `Retry-After`
//! (their rate limits fail closed), refresh works (its limits fail open), and revocations
//! still take effect. Every call is bounded by `TIMEOUT`: a hang fails the test.

use std::sync::Arc;

use http::StatusCode;
use serde_json::json;

use haberci_backend::auth::keys::KeyStore;
use haberci_backend::config::WorkerConfig;
use haberci_kit::config::Env;
use haberci_kit::shutdown::Shutdown;

use crate::env;
use crate::support::{Api, TIMEOUT, dead_redis_url, roomy_settings, state_with};

async fn bounded<T>(what: &str, call: impl std::future::Future<Output = T>) -> T {
    tokio::time::timeout(TIMEOUT, call)
        .await
        .unwrap_or_else(|_| panic!("{what} hung with Redis down"))
}

#[tokio::test]
async fn with_redis_down_sessions_come_from_postgres_and_login_gets_a_clear_503() {
    let keys = Arc::new(KeyStore::fixed(
        haberci_token::KeySet::generate("outage").unwrap(),
    ));
    let healthy = Api::from_state(state_with(
        roomy_settings(),
        &env("HABERCI_TEST_REDIS_URL"),
        keys.clone(),
    ));
    let (account, registered) = healthy.register().await;
    let access = registered.str("/tokens/accessToken");
    let refresh = registered.str("/tokens/refreshToken");

    // Another process sharing the database and keys, whose Redis is unreachable.
    let down = Api {
        client_ip: healthy.client_ip,
        ..Api::from_state(state_with(roomy_settings(), &dead_redis_url(), keys))
    };

    let me = bounded("GET /v1/me", down.get("/v1/me", Some(&access))).await;
    assert_eq!(me.status, StatusCode::OK, "{}", me.json);
    assert_eq!(me.str("/username"), account.username);

    let login = bounded("login", down.login(&account)).await;
    assert_eq!(
        (login.status, login.code()),
        (StatusCode::SERVICE_UNAVAILABLE, "unavailable"),
        "{}",
        login.json
    );
    assert_eq!(login.headers["retry-after"], "1");

    let register = bounded(
        "register",
        down.post(
            "/v1/auth/register",
            json!({ "username": crate::support::unique_name("down"), "email": "down@example.com",
                    "password": "long enough", "displayName": "D" }),
        ),
    )
    .await;
    assert_eq!(
        (register.status, register.code()),
        (StatusCode::SERVICE_UNAVAILABLE, "unavailable")
    );

    let refreshed = bounded(
        "refresh",
        down.post("/v1/auth/refresh", json!({ "refreshToken": refresh })),
    )
    .await;
    assert_eq!(refreshed.status, StatusCode::OK, "{}", refreshed.json);
    let access = refreshed.str("/accessToken");

    // A revocation reaches Postgres even though it cannot be cached or announced.
    let logout = bounded(
        "logout",
        down.call(
            "POST",
            "/v1/auth/logout",
            serde_json::Value::Null,
            Some(&access),
        ),
    )
    .await;
    assert_eq!(logout.status, StatusCode::NO_CONTENT, "{}", logout.json);
    let me = bounded("GET /v1/me", down.get("/v1/me", Some(&access))).await;
    assert_eq!(
        (me.status, me.code()),
        (StatusCode::UNAUTHORIZED, "session_revoked")
    );
}

#[tokio::test]
async fn the_worker_stops_on_shutdown_while_redis_is_down() {
    let redis_url = dead_redis_url();
    let database_url = env("HABERCI_TEST_DATABASE_URL");
    let pairs = [
        ("HABERCI_DATABASE_URL", database_url.as_str()),
        ("HABERCI_REDIS_URL", redis_url.as_str()),
    ];
    let config = WorkerConfig::from_env(Env::from_pairs(&pairs)).unwrap();
    let shutdown = Shutdown::new();
    let worker = tokio::spawn(haberci_backend::worker::run(config, shutdown.clone()));
    shutdown.cancel();
    bounded("the worker's shutdown", worker)
        .await
        .unwrap()
        .unwrap();
}
