//! What browsers need besides the API:
//!
//! - `GET /v1/realtime`: where the realtime endpoints are, and the hashes of the WebTransport
//!   certificates a page may pin with `serverCertificateHashes` (the one presented now and the
//!   one that replaces it at renewal; none when the certificate is CA-issued, as in
//!   production). docs/PROTOCOL.md, "Discovery".
//! - Static files from `HABERCI_WEB_DIR` (the demo chat page, `web/dist`): `GET`/`HEAD` of any
//!   path that is not a route; `/` is `index.html`. Only known file types are served, with
//!   their content type, and pages get a Content-Security-Policy that lets them load their own
//!   scripts and styles and connect to this gateway's realtime endpoints, nothing else.

use std::path::{Component, Path, PathBuf};
use std::sync::Arc;

use axum::extract::{Request, State};
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode, header};
use axum::response::{IntoResponse, Response};
use rustls_pki_types::CertificateDer;
use rustls_pki_types::pem::PemObject;
use serde_json::json;

use super::tls::CertStore;
use super::{GatewayState, error_response};

/// What the browser surface needs from the gateway.
#[derive(Clone)]
pub struct Web {
    /// `HABERCI_WEB_DIR`; `None`: no static files.
    pub dir: Option<Arc<Path>>,
    pub certs: Arc<CertStore>,
    /// The UDP port browsers reach WebTransport on (the one `Alt-Svc` advertises).
    pub webtransport_port: u16,
}

/// Content types of the files served; anything else is 404.
const CONTENT_TYPES: [(&str, &str); 10] = [
    ("html", "text/html; charset=utf-8"),
    ("js", "text/javascript; charset=utf-8"),
    ("mjs", "text/javascript; charset=utf-8"),
    ("css", "text/css; charset=utf-8"),
    ("json", "application/json"),
    ("map", "application/json"),
    ("svg", "image/svg+xml"),
    ("png", "image/png"),
    ("ico", "image/x-icon"),
    ("txt", "text/plain; charset=utf-8"),
];

/// `GET /v1/realtime`.
pub async fn realtime(State(state): State<GatewayState>) -> Response {
    let web = &state.web;
    let mut hashes = Vec::new();
    // A CA-issued certificate is verified the usual way: nothing to pin.
    if web.certs.quic_cert() == crate::config::QuicCert::Tls {
        return realtime_body(web, hashes);
    }
    let current = web.certs.quic_cert_der();
    if let Some(cert) = haberci_certs::pinnable(&current) {
        hashes.push(hash_json(&cert, true));
    }
    // The next certificate is only on disk until it is presented; a missing or unreadable file
    // just means there is nothing to announce ahead.
    if let Ok(pem) = tokio::fs::read(web.certs.paths().wt_next_cert()).await
        && let Ok(der) = CertificateDer::from_pem_slice(&pem)
        && der != current
        && let Some(cert) = haberci_certs::pinnable(&der)
    {
        hashes.push(hash_json(&cert, false));
    }
    realtime_body(web, hashes)
}

fn realtime_body(web: &Web, hashes: Vec<serde_json::Value>) -> Response {
    let body = json!({
        "protocolVersions": [haberci_wire::PROTOCOL_VERSION],
        "webTransport": {
            "port": web.webtransport_port,
            "path": haberci_wire::WEBTRANSPORT_PATH,
            "certificateHashes": hashes,
        },
        // Native QUIC shares the UDP port with HTTP/3 and WebTransport.
        "quic": {
            "port": web.webtransport_port,
            "alpn": String::from_utf8_lossy(haberci_wire::ALPN),
        },
        "webSocket": {
            "path": haberci_wire::WEBSOCKET_PATH,
            "subprotocol": haberci_wire::WEBSOCKET_SUBPROTOCOL,
        },
    });
    // The hashes change at every renewal: never cached.
    (
        [(header::CACHE_CONTROL, HeaderValue::from_static("no-store"))],
        axum::Json(body),
    )
        .into_response()
}

fn hash_json(cert: &haberci_certs::PinnableCert, presented: bool) -> serde_json::Value {
    let rfc3339 = |t: time::OffsetDateTime| {
        t.format(&time::format_description::well_known::Rfc3339)
            .unwrap_or_default()
    };
    json!({
        "algorithm": "sha-256",
        "value": cert.sha256,
        "notBefore": rfc3339(cert.not_before),
        "notAfter": rfc3339(cert.not_after),
        "presented": presented,
    })
}

/// Every request no route took: a static file for `GET`/`HEAD`, else the JSON 404.
pub async fn fallback(State(state): State<GatewayState>, request: Request) -> Response {
    let (Some(dir), true) = (
        state.web.dir.as_deref(),
        matches!(*request.method(), Method::GET | Method::HEAD),
    ) else {
        return super::not_found().await;
    };
    let Some((path, content_type)) = file_for(dir, request.uri().path()) else {
        return super::not_found().await;
    };
    let contents = match tokio::fs::read(&path).await {
        Ok(contents) => contents,
        Err(err) if err.kind() == std::io::ErrorKind::NotFound => {
            return super::not_found().await;
        }
        // A directory whose name looks like a file's (`old.js/`): nothing to serve.
        Err(err) if err.kind() == std::io::ErrorKind::IsADirectory => {
            return super::not_found().await;
        }
        Err(err) => {
            tracing::warn!(path = %path.display(), %err, "cannot read a static file");
            return error_response(
                StatusCode::INTERNAL_SERVER_ERROR,
                "internal",
                "cannot read the file",
            );
        }
    };
    let mut headers = HeaderMap::new();
    headers.insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    // Rebuilt files must show up at the next load; the files are small.
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    if content_type.starts_with("text/html")
        && let Ok(csp) = HeaderValue::from_str(&page_policy(&state.web))
    {
        headers.insert(header::CONTENT_SECURITY_POLICY, csp);
    }
    if request.method() == Method::HEAD {
        headers.insert(header::CONTENT_LENGTH, HeaderValue::from(contents.len()));
        return (headers, ()).into_response();
    }
    (headers, contents).into_response()
}

/// The file a URL path names under `dir`, with its content type; `None` for anything that
/// could leave `dir` (`..`, absolute or odd components), hidden files and unknown types.
fn file_for(dir: &Path, url_path: &str) -> Option<(PathBuf, &'static str)> {
    let relative = url_path.strip_prefix('/')?;
    let relative = if relative.is_empty() || relative.ends_with('/') {
        format!("{relative}index.html")
    } else {
        relative.to_owned()
    };
    let mut path = dir.to_path_buf();
    for component in Path::new(&relative).components() {
        match component {
            Component::Normal(part) if !part.to_string_lossy().starts_with('.') => path.push(part),
            _ => return None,
        }
    }
    let extension = path.extension()?.to_str()?;
    let content_type = CONTENT_TYPES
        .iter()
        .find(|(ext, _)| *ext == extension)
        .map(|(_, content_type)| *content_type)?;
    Some((path, content_type))
}

/// The Content-Security-Policy of a page: its own scripts, styles and images; connections to
/// this origin (the API and WebSocket) and to WebTransport on the UDP port of every name the
/// gateway's TLS certificate holds. Built from configuration (the certificate), never from
/// the request: a `Host` header is the client's to choose.
fn page_policy(web: &Web) -> String {
    let webtransport: String = haberci_certs::host_names(&web.certs.tcp_cert_der())
        .iter()
        .filter(|name| safe_in_header(name))
        .map(|name| format!(" https://{name}:{}", web.webtransport_port))
        .collect();
    format!(
        "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; \
         media-src 'self'; connect-src 'self'{webtransport}; base-uri 'none'; form-action 'none'; \
         frame-ancestors 'none'"
    )
}

/// Whether a certificate name can go into a CSP source as it is: a DNS name (a leading `*.`
/// wildcard included) or an IP literal.
fn safe_in_header(name: &str) -> bool {
    let allowed = |c: char| c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | ':' | '[' | ']');
    let name = name.strip_prefix("*.").unwrap_or(name);
    !name.is_empty() && name.chars().all(allowed)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn paths_stay_inside_the_directory() {
        let dir = Path::new("/srv/web");
        let cases: [(&str, Option<&str>); 10] = [
            ("/", Some("/srv/web/index.html")),
            ("/app.js", Some("/srv/web/app.js")),
            ("/sub/", Some("/srv/web/sub/index.html")),
            ("/../etc/passwd.txt", None),
            ("/sub/../../x.js", None),
            ("/.git/config.json", None),
            ("//etc/x.js", None),
            ("/Cargo.toml", None),
            ("/noextension", None),
            ("relative.js", None),
        ];
        for (url, expected) in cases {
            let got = file_for(dir, url).map(|(p, _)| p.display().to_string());
            assert_eq!(got.as_deref(), expected, "{url}");
        }
        assert_eq!(
            file_for(dir, "/style.css").map(|(_, t)| t),
            Some("text/css; charset=utf-8")
        );
    }

    #[test]
    fn only_plain_host_names_reach_the_policy() {
        for name in [
            "localhost",
            "127.0.0.1",
            "[::1]",
            "*.example.com",
            "chat.example.com",
        ] {
            assert!(safe_in_header(name), "{name}");
        }
        for name in ["evil; script-src *", "", "*.", "a b", "x'y"] {
            assert!(!safe_in_header(name), "{name}");
        }
    }
}
