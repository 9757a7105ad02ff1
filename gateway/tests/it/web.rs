//! The browser surface: `/v1/realtime` (realtime endpoints and WebTransport certificate hashes)
//! and the static files of `HABERCI_WEB_DIR`, on every HTTP version.

use bytes::Bytes;
use haberci_testkit::{Backend, Stack};
use http_body_util::Full;

use crate::support::{self, ALL_VERSIONS, Version, get};

#[tokio::test]
async fn realtime_publishes_the_current_and_next_certificate_hashes() {
    let stack = Stack::builder()
        .backend(Backend::Down)
        .configure(|_| {})
        .start()
        .await;
    let current = haberci_certs::sha256_hex(&stack.gateway.certs.quic_cert_der());
    let next = std::fs::read_to_string(stack.certs.wt_next_hash()).unwrap();
    for version in ALL_VERSIONS {
        let reply = support::request(&stack, version, get("/v1/realtime")).await;
        assert_eq!(reply.status, 200, "{version:?}");
        assert_eq!(reply.headers["cache-control"], "no-store");
        let body = reply.json();
        assert_eq!(body["protocolVersions"], serde_json::json!([1]));
        let wt = &body["webTransport"];
        assert_eq!(wt["port"], stack.gateway_udp.port(), "{body}");
        assert_eq!(wt["path"], "/v1/rt");
        let hashes = wt["certificateHashes"].as_array().unwrap();
        assert_eq!(hashes.len(), 2, "{body}");
        assert_eq!(hashes[0]["algorithm"], "sha-256");
        assert_eq!(hashes[0]["value"], current.as_str());
        assert_eq!(hashes[0]["presented"], true);
        assert_eq!(hashes[1]["value"], next.trim());
        assert_eq!(hashes[1]["presented"], false);
        // The next certificate starts before the current one ends: no gap to fall into.
        assert!(hashes[1]["notBefore"].as_str() < hashes[0]["notAfter"].as_str());
        assert_eq!(body["quic"]["port"], stack.gateway_udp.port(), "{body}");
        assert_eq!(body["quic"]["alpn"], "haberci/1");
        assert_eq!(body["webSocket"]["path"], "/v1/ws");
        assert_eq!(body["webSocket"]["subprotocol"], "haberci.v1");
    }
}

#[tokio::test]
async fn a_renewed_certificate_is_published_without_a_restart() {
    let stack = Stack::builder()
        .backend(Backend::Down)
        .configure(|_| {})
        .start()
        .await;
    let next = std::fs::read_to_string(stack.certs.wt_next_hash()).unwrap();
    let mut reloads = stack.gateway.certs.reloads();
    let later = time::OffsetDateTime::now_utc() + haberci_certs::WT_MAX_VALIDITY
        - haberci_certs::WT_RENEW_BEFORE
        + time::Duration::hours(1);
    haberci_certs::ensure(&stack.certs, later).unwrap();
    tokio::time::timeout(std::time::Duration::from_secs(10), reloads.changed())
        .await
        .expect("the gateway reloads the promoted certificate")
        .unwrap();
    let reply = support::request(&stack, Version::Http1, get("/v1/realtime")).await;
    let body = reply.json();
    let hashes = body["webTransport"]["certificateHashes"]
        .as_array()
        .unwrap();
    assert_eq!(
        hashes[0]["value"],
        next.trim(),
        "the old next one is presented now"
    );
    let new_next = std::fs::read_to_string(stack.certs.wt_next_hash()).unwrap();
    assert_eq!(hashes[1]["value"], new_next.trim());
}

#[tokio::test]
async fn the_gateway_rotates_the_webtransport_certificate_itself() {
    // Certificates made ten days ago: the WebTransport leaf has under four days left (due),
    // and its successor has been valid since yesterday.
    let dir = tempfile::tempdir().unwrap();
    let old = haberci_certs::CertPaths::new(dir.path());
    let ten_days_ago = time::OffsetDateTime::now_utc() - time::Duration::days(10);
    haberci_certs::ensure(&old, ten_days_ago).unwrap();
    let announced = std::fs::read_to_string(old.wt_next_hash()).unwrap();
    let cert_dir = old.dir.clone();
    let stack = Stack::builder()
        .backend(Backend::Down)
        .configure(move |config| {
            config.tls.cert_paths = haberci_certs::CertPaths::new(cert_dir);
            config.tls.rotate_interval = std::time::Duration::from_millis(100);
        })
        .start()
        .await;

    // Nobody runs `haberci-certs`: the gateway promotes the announced leaf on its own.
    let mut reloads = stack.gateway.certs.reloads();
    tokio::time::timeout(haberci_testkit::TIMEOUT, async {
        while haberci_certs::sha256_hex(&stack.gateway.certs.quic_cert_der()) != announced.trim() {
            reloads.changed().await.unwrap();
        }
    })
    .await
    .expect("the announced certificate is presented within the timeout");

    let roots = haberci_testkit::tls::roots(&[&old.ca_cert()]);
    let mut client = support::TcpClient::connect(stack.gateway_tcp, roots, Version::Http1).await;
    let body = client.send(get("/v1/realtime")).await.json();
    let hashes = body["webTransport"]["certificateHashes"]
        .as_array()
        .unwrap();
    assert_eq!(hashes.len(), 2, "{body}");
    assert_eq!(hashes[0]["value"], announced.trim());
    assert_eq!(hashes[0]["presented"], true);
    // A new successor is announced, valid before the promoted one is due.
    let successor = std::fs::read_to_string(old.wt_next_hash()).unwrap();
    assert_ne!(successor, announced);
    assert_eq!(hashes[1]["value"], successor.trim());
    assert!(hashes[1]["notBefore"].as_str() < hashes[0]["notAfter"].as_str());
}

/// A web directory with a page, a script and a stylesheet, and a file outside it.
fn web_dir() -> tempfile::TempDir {
    let root = tempfile::tempdir().unwrap();
    let dir = root.path().join("dist");
    std::fs::create_dir(&dir).unwrap();
    std::fs::write(
        dir.join("index.html"),
        "<!doctype html><title>Haberci</title>",
    )
    .unwrap();
    std::fs::write(dir.join("app.js"), "console.log('hi')").unwrap();
    std::fs::write(dir.join("style.css"), "body{}").unwrap();
    std::fs::write(dir.join("notes.md"), "unknown type").unwrap();
    std::fs::write(root.path().join("secret.txt"), "outside").unwrap();
    root
}

#[tokio::test]
async fn the_web_directory_is_served_with_content_types_and_a_page_policy() {
    let root = web_dir();
    let dir = root.path().join("dist");
    let stack = Stack::builder()
        .backend(Backend::Down)
        .configure(|c| c.http.web_dir = Some(dir))
        .start()
        .await;
    for version in ALL_VERSIONS {
        let page = support::request(&stack, version, get("/")).await;
        assert_eq!(page.status, 200, "{version:?}");
        assert_eq!(page.headers["content-type"], "text/html; charset=utf-8");
        assert_eq!(&page.body[..], b"<!doctype html><title>Haberci</title>");
        let csp = page.headers["content-security-policy"].to_str().unwrap();
        assert!(csp.contains("script-src 'self'"), "{csp}");
        // From the certificate's names (localhost, 127.0.0.1, ::1), not from the request.
        let port = stack.gateway_udp.port();
        let webtransport = format!(
            "connect-src 'self' https://localhost:{port} https://127.0.0.1:{port} https://[::1]:{port};"
        );
        assert!(csp.contains(&webtransport), "{csp}");
        assert!(csp.contains("frame-ancestors 'none'"), "{csp}");
        // The project's other security headers are there too.
        assert_eq!(page.headers["x-content-type-options"], "nosniff");
        assert!(page.headers.contains_key("strict-transport-security"));

        let script = support::request(&stack, version, get("/app.js")).await;
        assert_eq!(script.status, 200);
        assert_eq!(
            script.headers["content-type"],
            "text/javascript; charset=utf-8"
        );
        assert_eq!(&script.body[..], b"console.log('hi')");
        let style = support::request(&stack, version, get("/style.css")).await;
        assert_eq!(style.headers["content-type"], "text/css; charset=utf-8");

        for path in [
            "/missing.js",
            "/notes.md",
            "/../secret.txt",
            "/%2e%2e/secret.txt",
            "/dist",
        ] {
            let reply = support::request(&stack, version, get(path)).await;
            assert_eq!(reply.status, 404, "{path} over {version:?}");
            assert_eq!(reply.json()["error"]["code"], "not_found", "{path}");
        }
    }
    // A Host header of the client's choosing does not reach the policy.
    let forged = http::Request::get("https://localhost/")
        .header("host", "evil.example")
        .body(Full::new(Bytes::new()))
        .unwrap();
    let page = support::request(&stack, Version::Http1, forged).await;
    let csp = page.headers["content-security-policy"].to_str().unwrap();
    assert!(!csp.contains("evil"), "{csp}");
    let head = http::Request::head("https://localhost/app.js")
        .body(Full::new(Bytes::new()))
        .unwrap();
    let reply = support::request(&stack, Version::Http1, head).await;
    assert_eq!(reply.status, 200);
    assert_eq!(reply.headers["content-length"], "17");
    assert!(reply.body.is_empty());
    let post = http::Request::post("https://localhost/index.html")
        .body(Full::new(Bytes::from_static(b"x")))
        .unwrap();
    assert_eq!(
        support::request(&stack, Version::Http1, post).await.status,
        404
    );
}

#[tokio::test]
async fn without_a_web_directory_the_root_is_a_json_404() {
    let stack = Stack::builder()
        .backend(Backend::Down)
        .configure(|_| {})
        .start()
        .await;
    let reply = support::request(&stack, Version::Http2, get("/")).await;
    assert_eq!(reply.status, 404);
    assert_eq!(reply.json()["error"]["code"], "not_found");
}

#[test]
fn a_missing_web_directory_is_a_config_error() {
    let pairs = [("HABERCI_WEB_DIR", "/nonexistent/haberci-web")];
    let err =
        haberci_gateway::GatewayConfig::from_env(haberci_kit::config::Env::from_pairs(&pairs))
            .expect_err("not a directory");
    assert!(err.to_string().contains("HABERCI_WEB_DIR"), "{err}");
}
