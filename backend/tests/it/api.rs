//! The API router, driven without a socket, on real Postgres (through PgBouncer) and Redis.

use axum::body::Body;
use http::{Request, StatusCode};
use http_body_util::BodyExt;
use tower::ServiceExt;

use haberci_backend::api::{self, AppState};

use crate::env;

fn state(redis_url: &str) -> AppState {
    AppState::new(
        haberci_backend::db::connect_pool(&env("HABERCI_TEST_DATABASE_URL"), 2).unwrap(),
        haberci_backend::redis::connect(redis_url).unwrap(),
        haberci_backend::config::ApiSettings::default(),
        haberci_token::KeySet::generate("test").unwrap(),
    )
}

async fn call(state: AppState, path: &str) -> (StatusCode, serde_json::Value) {
    let response = api::app(state)
        .oneshot(Request::get(path).body(Body::empty()).unwrap())
        .await
        .unwrap();
    let status = response.status();
    let body = response.into_body().collect().await.unwrap().to_bytes();
    (status, serde_json::from_slice(&body).unwrap())
}

#[tokio::test]
async fn ready_when_postgres_and_redis_answer() {
    let (status, body) = call(state(&env("HABERCI_TEST_REDIS_URL")), "/readyz").await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["postgres"], "ok");
    assert_eq!(body["redis"], "ok");
}

#[tokio::test]
async fn not_ready_when_redis_is_down() {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    drop(listener);
    let (status, body) = call(state(&format!("redis://127.0.0.1:{port}")), "/readyz").await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(body["postgres"], "ok");
    assert_eq!(body["redis"], "unavailable");
}

#[tokio::test]
async fn version_and_health() {
    let (status, body) = call(state(&env("HABERCI_TEST_REDIS_URL")), "/v1/version").await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(body, serde_json::to_value(api::VERSION).unwrap());
    let (status, body) = call(state(&env("HABERCI_TEST_REDIS_URL")), "/healthz").await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(body["status"], "ok");
}

#[tokio::test]
async fn unknown_routes_get_the_json_error_shape() {
    let (status, body) = call(state(&env("HABERCI_TEST_REDIS_URL")), "/v1/nothing-here").await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    assert_eq!(
        body,
        serde_json::json!({"error": {"code": "not_found", "message": "not found", "field": null}})
    );
}

/// A small body is read in full before any answer, even one that does not need it (here the
/// 404 of an unknown route): hyper closes an HTTP/1.1 connection whose request body went unread,
/// and the gateway, still forwarding that body, met a closed connection and answered
/// `502 backend_unavailable` instead of the API's answer.
#[tokio::test(flavor = "current_thread")]
async fn an_early_answer_waits_for_a_small_body_to_arrive_in_full() {
    use futures::SinkExt;
    let (mut sender, body) =
        futures::channel::mpsc::channel::<Result<bytes::Bytes, std::io::Error>>(1);
    let content = br#"{"usernameOrEmail":"ada_l","password":"x"}"#;
    let request = Request::post("/v1/no-such-route")
        .header("content-type", "application/json")
        .header("content-length", content.len())
        .body(Body::from_stream(body))
        .unwrap();
    let answer = tokio::spawn(api::app(state(&env("HABERCI_TEST_REDIS_URL"))).oneshot(request));
    // On this one-thread runtime each yield lets the call run until it waits on something:
    // the only thing it can wait on is the body.
    for _ in 0..100 {
        tokio::task::yield_now().await;
    }
    assert!(!answer.is_finished(), "answered before the body arrived");
    sender
        .send(Ok(bytes::Bytes::from_static(content)))
        .await
        .unwrap();
    drop(sender);
    let response = answer.await.unwrap().unwrap();
    assert_eq!(response.status(), StatusCode::NOT_FOUND);
}
