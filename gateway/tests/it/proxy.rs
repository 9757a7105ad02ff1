//! What the proxy sends to the backend, seen by an echo server standing in for it: the real
//! backend has no endpoint that reflects headers, and these are properties of the proxy alone.

use axum::Json;
use axum::body::Bytes;
use axum::http::{HeaderMap, Method, Uri};
use bytes::Bytes as RawBytes;
use haberci_testkit::{Backend, Stack};
use http_body_util::Full;
use serde_json::json;

use crate::support::{self, ALL_VERSIONS, Version};

async fn echo(
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Json<serde_json::Value> {
    let headers: serde_json::Map<String, serde_json::Value> = headers
        .iter()
        .map(|(k, v)| (k.to_string(), json!(v.to_str().unwrap_or("<binary>"))))
        .collect();
    Json(json!({
        "method": method.as_str(),
        "uri": uri.to_string(),
        "headers": headers,
        "body": String::from_utf8_lossy(&body),
    }))
}

async fn echo_stack() -> Stack {
    let backend = support::serve_router(axum::Router::new().fallback(echo)).await;
    Stack::start(Backend::At(backend)).await
}

#[tokio::test]
async fn method_path_query_and_body_arrive_intact() {
    let stack = echo_stack().await;
    for version in ALL_VERSIONS {
        let request = http::Request::post("https://localhost/v1/things/7?x=1&y=%20z")
            .header("content-type", "application/json")
            .body(Full::new(RawBytes::from_static(br#"{"a":1}"#)))
            .unwrap();
        let reply = support::request(&stack, version, request).await;
        assert_eq!(reply.status, 200, "{version:?}");
        let seen = reply.json();
        assert_eq!(seen["method"], "POST");
        assert_eq!(seen["uri"], "/v1/things/7?x=1&y=%20z");
        assert_eq!(seen["body"], r#"{"a":1}"#);
        assert_eq!(seen["headers"]["content-type"], "application/json");
    }
}

#[tokio::test]
async fn client_ip_comes_from_the_connection_and_cannot_be_spoofed() {
    let stack = echo_stack().await;
    for version in ALL_VERSIONS {
        let request = http::Request::get("https://localhost/v1/whoami")
            .header("x-haberci-client-ip", "6.6.6.6")
            .header("x-haberci-user", "admin")
            .header("x-haberci-internal", "forged")
            .body(Full::new(RawBytes::new()))
            .unwrap();
        let reply = support::request(&stack, version, request).await;
        let headers = &reply.json()["headers"];
        let ip = headers["x-haberci-client-ip"].as_str().unwrap();
        assert!(
            ip == "127.0.0.1" || ip == "::ffff:127.0.0.1",
            "{version:?}: {ip}"
        );
        assert!(headers.get("x-haberci-user").is_none(), "{version:?}");
        // The secret that makes the API believe the address is the gateway's own, never one a
        // client sent (this stack has none configured, so none goes).
        assert!(headers.get("x-haberci-internal").is_none(), "{version:?}");
    }
}

#[tokio::test]
async fn hop_by_hop_headers_are_not_forwarded() {
    let stack = echo_stack().await;
    let request = http::Request::get("https://localhost/v1/x")
        .header("connection", "keep-alive, x-secret-hop")
        .header("x-secret-hop", "1")
        .header("x-end-to-end", "2")
        .body(Full::new(RawBytes::new()))
        .unwrap();
    let reply = support::request(&stack, Version::Http1, request).await;
    let headers = &reply.json()["headers"];
    assert!(headers.get("x-secret-hop").is_none(), "{headers}");
    assert_eq!(headers["x-end-to-end"], "2");
}

#[tokio::test]
async fn oversized_bodies_are_refused_with_413() {
    let stack = echo_stack().await;
    let big = RawBytes::from(vec![
        b'x';
        haberci_gateway::config::DEFAULT_MAX_BODY_BYTES + 1
    ]);
    for version in ALL_VERSIONS {
        let request = http::Request::post("https://localhost/v1/upload")
            .body(Full::new(big.clone()))
            .unwrap();
        let reply = support::request(&stack, version, request).await;
        assert_eq!(reply.status, 413, "{version:?}");
        assert_eq!(reply.json()["error"]["code"], "body_too_large");
    }
}

#[tokio::test]
async fn a_dead_backend_gives_502_with_a_json_error() {
    let stack = Stack::start(Backend::Down).await;
    for version in ALL_VERSIONS {
        let reply = support::request(&stack, version, support::get("/v1/version")).await;
        assert_eq!(reply.status, 502, "{version:?}");
        assert_eq!(reply.json()["error"]["code"], "backend_unavailable");
    }
}
