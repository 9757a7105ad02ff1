//! The same requests over HTTP/1.1, HTTP/2 and HTTP/3 get the same answers.

use haberci_testkit::{Backend, Stack};

use crate::support::{self, ALL_VERSIONS, Version, get};

#[tokio::test]
async fn healthz_answers_on_every_http_version() {
    let stack = Stack::start(Backend::Api).await;
    for version in ALL_VERSIONS {
        let reply = support::request(&stack, version, get("/healthz")).await;
        assert_eq!(reply.status, 200, "{version:?}");
        assert_eq!(reply.json()["status"], "ok", "{version:?}");
    }
}

#[tokio::test]
async fn version_is_proxied_to_the_backend_on_every_http_version() {
    let stack = Stack::start(Backend::Api).await;
    let expected = serde_json::to_value(haberci_backend::api::VERSION).unwrap();
    for version in ALL_VERSIONS {
        let reply = support::request(&stack, version, get("/v1/version")).await;
        assert_eq!(reply.status, 200, "{version:?}");
        assert_eq!(reply.json(), expected, "{version:?}");
    }
}

#[tokio::test]
async fn readyz_reports_the_backend_on_every_http_version() {
    let up = Stack::start(Backend::Api).await;
    let down = Stack::start(Backend::Down).await;
    for version in ALL_VERSIONS {
        let reply = support::request(&up, version, get("/readyz")).await;
        assert_eq!(reply.status, 200, "{version:?}");
        let reply = support::request(&down, version, get("/readyz")).await;
        assert_eq!(reply.status, 503, "{version:?}");
        assert_eq!(reply.json()["backend"], "unavailable");
    }
}

#[tokio::test]
async fn tcp_responses_advertise_http3() {
    let stack = Stack::start(Backend::Api).await;
    for version in [Version::Http1, Version::Http2] {
        for path in ["/healthz", "/v1/version", "/no/such/page"] {
            let reply = support::request(&stack, version, get(path)).await;
            let alt_svc = reply
                .headers
                .get(http::header::ALT_SVC)
                .unwrap_or_else(|| panic!("no Alt-Svc on {path} over {version:?}"));
            let expected = format!("h3=\":{}\"; ma=86400", stack.gateway_udp.port());
            assert_eq!(alt_svc, expected.as_str());
        }
    }
}

#[tokio::test]
async fn unknown_paths_get_a_json_404_on_every_http_version() {
    let stack = Stack::start(Backend::Api).await;
    for version in ALL_VERSIONS {
        let reply = support::request(&stack, version, get("/nope")).await;
        assert_eq!(reply.status, 404, "{version:?}");
        assert_eq!(reply.json()["error"]["code"], "not_found");
        // A /v1 path the backend does not know comes back from the backend, same shape.
        let reply = support::request(&stack, version, get("/v1/nope")).await;
        assert_eq!(reply.status, 404, "{version:?}");
        assert_eq!(reply.json()["error"]["code"], "not_found");
    }
}
