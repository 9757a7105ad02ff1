//! Login throughput with the production argon2id parameters, through the real router, on the
//! real Postgres (through PgBouncer) and Redis of `./dev up`:
//!
//! ```sh
//! HABERCI_TEST_DATABASE_URL=postgres://…@127.0.0.1:56432/haberci_test \
//! HABERCI_TEST_REDIS_URL=redis://127.0.0.1:56379 \
//!   cargo run --release -p haberci-backend --example login_bench -- [seconds] [concurrency]
//! ```
//!
//! Prints raw argon2id verifications per second (the bound) and end-to-end logins per second.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use axum::body::Body;
use axum::extract::ConnectInfo;
use haberci_backend::api::{self, AppState};
use haberci_backend::config::{ApiSettings, Rate, RateLimits};
use tower::ServiceExt;

fn env(key: &str) -> String {
    std::env::var(key).unwrap_or_else(|_| panic!("{key} is not set"))
}

fn request(path: &str, body: serde_json::Value) -> http::Request<Body> {
    let mut request = http::Request::post(path)
        .header("content-type", "application/json")
        .body(Body::from(body.to_string()))
        .unwrap();
    let peer = SocketAddr::from(([127, 0, 0, 1], 40_000));
    request.extensions_mut().insert(ConnectInfo(peer));
    request
}

#[tokio::main]
async fn main() {
    let mut args = std::env::args().skip(1);
    let seconds: u64 = args.next().and_then(|a| a.parse().ok()).unwrap_or(10);
    let concurrency: usize = args.next().and_then(|a| a.parse().ok()).unwrap_or(8);

    let mut settings = ApiSettings::default();
    settings.auth.limits = RateLimits::uniform(Rate::new(u32::MAX, Duration::from_secs(1)));
    let hash_slots = settings.auth.hash_concurrency;
    let state = AppState::new(
        haberci_backend::db::connect_pool(&env("HABERCI_TEST_DATABASE_URL"), 16).unwrap(),
        haberci_backend::redis::connect(&env("HABERCI_TEST_REDIS_URL")).unwrap(),
        settings,
        haberci_token::KeySet::generate("bench").unwrap(),
    );
    let app = api::app(state.clone());

    let name = format!("bench_{}", &uuid::Uuid::new_v4().simple().to_string()[..16]);
    let password = "benchmark password";
    let registered = app
        .clone()
        .oneshot(request(
            "/v1/auth/register",
            serde_json::json!({"username": name, "email": format!("{name}@example.com"), "password": password, "displayName": "Bench"}),
        ))
        .await
        .unwrap();
    assert_eq!(registered.status(), 201);

    // The bound: argon2id verifications alone, on the same bounded pool.
    let phc = state
        .auth
        .passwords
        .hash(&haberci_backend::accounts::Password::parse(password).unwrap())
        .await
        .unwrap();
    let passwords = state.auth.passwords.clone();
    let verifications = run(seconds, concurrency, move || {
        let passwords = passwords.clone();
        let phc = phc.clone();
        async move { passwords.verify(password, Some(phc)).await.unwrap() }
    })
    .await;

    let login_name = name.clone();
    let logins = run(seconds, concurrency, move || {
        let app = app.clone();
        let name = login_name.clone();
        let body = serde_json::json!({"usernameOrEmail": name, "password": password});
        async move {
            let response = app.oneshot(request("/v1/auth/login", body)).await.unwrap();
            response.status() == 200
        }
    })
    .await;

    println!(
        "argon2id m=19456 KiB t=2 p=1, {hash_slots} hashing slots, {concurrency} concurrent clients, {seconds} s each"
    );
    println!("verifications: {verifications:.1}/s");
    println!("logins (router + Postgres via PgBouncer + Redis): {logins:.1}/s");
}

/// Runs `op` from `concurrency` tasks for `seconds`; returns successes per second.
async fn run<F, Fut>(seconds: u64, concurrency: usize, op: F) -> f64
where
    F: Fn() -> Fut + Clone + Send + 'static,
    Fut: std::future::Future<Output = bool> + Send,
{
    let start = Instant::now();
    let deadline = start + Duration::from_secs(seconds);
    let tasks: Vec<_> = (0..concurrency)
        .map(|_| {
            let op = op.clone();
            tokio::spawn(async move {
                let mut ok = 0u64;
                while Instant::now() < deadline {
                    if op().await {
                        ok += 1;
                    }
                }
                ok
            })
        })
        .collect();
    let mut total = 0;
    for task in tasks {
        total += task.await.unwrap();
    }
    total as f64 / start.elapsed().as_secs_f64()
}
