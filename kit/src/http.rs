//! The HTTP surface rules every Haberci response follows, applied the same way by the gateway
//! (all HTTP versions) and the backend API: security headers ([`harden`]), CORS with an
//! allow-list of origins ([`CorsOrigins`], `HABERCI_CORS_ORIGINS`), and a request id in every
//! log line of a request and in its answer ([`with_request_ids`]).

use std::time::Duration;

use axum::Router;
use axum::http::{HeaderMap, HeaderName, HeaderValue, Method, header};
use axum::response::Response;
use tower_http::cors::{AllowOrigin, CorsLayer};

use crate::config::Env;

/// Headers set on every response that does not already carry them.
///
/// - HSTS: two years, subdomains included (the gateway only speaks TLS).
/// - `nosniff`: responses are JSON; never let a browser guess otherwise.
/// - `no-referrer`: API URLs can hold ids; do not leak them.
/// - CSP: API responses are data, never documents: nothing may load, nothing may frame them.
pub const SECURITY_HEADERS: [(HeaderName, &str); 4] = [
    (
        header::STRICT_TRANSPORT_SECURITY,
        "max-age=63072000; includeSubDomains",
    ),
    (header::X_CONTENT_TYPE_OPTIONS, "nosniff"),
    (header::REFERRER_POLICY, "no-referrer"),
    (
        header::CONTENT_SECURITY_POLICY,
        "default-src 'none'; frame-ancestors 'none'",
    ),
];

/// How long browsers may cache a CORS preflight answer.
pub const CORS_MAX_AGE: Duration = Duration::from_secs(600);

/// Adds [`SECURITY_HEADERS`] to `headers` where absent.
pub fn set_security_headers(headers: &mut HeaderMap) {
    for (name, value) in SECURITY_HEADERS {
        headers
            .entry(name)
            .or_insert_with(|| HeaderValue::from_static(value));
    }
}

/// Origins allowed to call the API from a browser. Credentials (cookies, `Authorization`) are
/// allowed for these origins, so `*` is refused at config time.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CorsOrigins(Vec<HeaderValue>);

impl CorsOrigins {
    /// `HABERCI_CORS_ORIGINS`: comma-separated `scheme://host[:port]` origins; empty (default)
    /// allows no cross-origin browser calls.
    pub fn read(env: &mut Env<'_>) -> CorsOrigins {
        let Some(raw) = env.raw("HABERCI_CORS_ORIGINS") else {
            return CorsOrigins::default();
        };
        let mut origins = Vec::new();
        for origin in raw.split(',').map(str::trim).filter(|o| !o.is_empty()) {
            match parse_origin(origin) {
                Ok(value) => origins.push(value),
                Err(why) => env.problem(format!("HABERCI_CORS_ORIGINS: {origin:?} {why}")),
            }
        }
        CorsOrigins(origins)
    }

    pub fn list(origins: &[&str]) -> Result<CorsOrigins, String> {
        origins
            .iter()
            .map(|o| parse_origin(o).map_err(|why| format!("{o:?} {why}")))
            .collect::<Result<_, _>>()
            .map(CorsOrigins)
    }

    /// Whether a browser page of `origin` may call across origins (it is on the list).
    pub fn allows(&self, origin: &HeaderValue) -> bool {
        self.0.iter().any(|allowed| allowed == origin)
    }

    fn layer(&self) -> CorsLayer {
        CorsLayer::new()
            .allow_origin(AllowOrigin::list(self.0.iter().cloned()))
            .allow_credentials(true)
            .allow_methods([
                Method::GET,
                Method::HEAD,
                Method::POST,
                Method::PATCH,
                Method::DELETE,
                Method::OPTIONS,
            ])
            // Media: ranges and revalidation on downloads; the tus headers of resumable
            // uploads (docs/MEDIA.md), which a browser client must both send and read.
            .allow_headers([
                header::AUTHORIZATION,
                header::CONTENT_TYPE,
                header::RANGE,
                header::IF_NONE_MATCH,
                header::IF_RANGE,
                HeaderName::from_static("tus-resumable"),
                HeaderName::from_static("upload-length"),
                HeaderName::from_static("upload-offset"),
                HeaderName::from_static("upload-metadata"),
            ])
            .expose_headers([
                REQUEST_ID,
                header::RETRY_AFTER,
                header::LOCATION,
                header::CONTENT_RANGE,
                header::ETAG,
                HeaderName::from_static("tus-resumable"),
                HeaderName::from_static("tus-version"),
                HeaderName::from_static("upload-offset"),
                HeaderName::from_static("upload-length"),
                HeaderName::from_static("upload-expires"),
                HeaderName::from_static("haberci-media-id"),
            ])
            .max_age(CORS_MAX_AGE)
    }
}

fn parse_origin(origin: &str) -> Result<HeaderValue, &'static str> {
    if origin == "*" {
        return Err("is a wildcard; list origins explicitly (credentials are allowed)");
    }
    let rest = origin
        .strip_prefix("https://")
        .or_else(|| origin.strip_prefix("http://"))
        .ok_or("must start with https:// or http://")?;
    if rest.is_empty() || rest.contains(['/', '?', '#', '*', ' ']) {
        return Err("must be scheme://host[:port] with no path");
    }
    HeaderValue::from_str(origin).map_err(|_| "is not a valid header value")
}

/// Wraps `router` so every response carries the security headers and CORS answers follow the
/// allow-list. Applied outermost, so fallbacks and errors get them too.
pub fn harden<S>(router: Router<S>, cors: &CorsOrigins) -> Router<S>
where
    S: Clone + Send + Sync + 'static,
{
    router
        .layer(cors.layer())
        .layer(axum::middleware::map_response(
            |mut response: Response| async move {
                set_security_headers(response.headers_mut());
                dedupe_vary(response.headers_mut());
                response
            },
        ))
}

/// `x-request-id`: one id per HTTP request, made by the gateway (the edge), forwarded with the
/// request to the backend, in the span `request{id=…}` of every log line either writes while
/// serving it, and in the answer, so a user's report can name it.
pub const REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");

/// Where a request's id comes from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RequestIds {
    /// The edge: always a new id; a client's own `x-request-id` is replaced (a client must
    /// not write what lands in the operators' logs).
    Assign,
    /// Behind the gateway (only gateways reach the backend): the gateway's id when it sent a
    /// well-formed one, a new one otherwise.
    Accept,
}

/// The longest id accepted from a gateway.
pub const MAX_REQUEST_ID_LEN: usize = 64;

/// Wraps `router` (outermost) so every request gets an id as `mode` says: set on the request
/// (a proxy forwards it), in a span around its handling, and on the answer.
pub fn with_request_ids<S>(router: Router<S>, mode: RequestIds) -> Router<S>
where
    S: Clone + Send + Sync + 'static,
{
    router.layer(axum::middleware::from_fn(
        move |mut request: axum::extract::Request, next: axum::middleware::Next| async move {
            use tracing::Instrument;
            let id = request
                .headers()
                .get(&REQUEST_ID)
                .filter(|_| mode == RequestIds::Accept)
                .filter(|value| well_formed_request_id(value.as_bytes()))
                .cloned()
                .unwrap_or_else(new_request_id);
            request.headers_mut().insert(REQUEST_ID, id.clone());
            let span = tracing::info_span!(
                "request",
                id = id.to_str().unwrap_or_default(),
                method = %request.method(),
            );
            let mut response = next.run(request).instrument(span).await;
            response.headers_mut().insert(REQUEST_ID, id);
            response
        },
    ))
}

/// 1–64 characters of `[A-Za-z0-9._-]`.
fn well_formed_request_id(id: &[u8]) -> bool {
    (1..=MAX_REQUEST_ID_LEN).contains(&id.len())
        && id
            .iter()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
}

/// A UUIDv7 in 32 hex digits: unique, and sorts by time.
fn new_request_id() -> HeaderValue {
    let id = uuid::Uuid::now_v7().simple().to_string();
    HeaderValue::from_str(&id).unwrap_or_else(|_| HeaderValue::from_static("unknown"))
}

/// A gateway and the backend behind it both apply CORS, and each adds its `Vary`; keep one
/// copy of each value. (`Access-Control-Allow-*` values are replaced, never doubled.)
fn dedupe_vary(headers: &mut HeaderMap) {
    let values: Vec<HeaderValue> = headers.get_all(header::VARY).iter().cloned().collect();
    if values.len() < 2 {
        return;
    }
    headers.remove(header::VARY);
    let mut seen: Vec<HeaderValue> = Vec::new();
    for value in values {
        if !seen.contains(&value) {
            headers.append(header::VARY, value.clone());
            seen.push(value);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_short_plain_request_ids_are_accepted() {
        assert!(well_formed_request_id(b"0191c2d4e5f6789a0b1c2d3e4f5a6b7c"));
        assert!(well_formed_request_id(b"a.b_c-D"));
        assert!(!well_formed_request_id(b""));
        assert!(!well_formed_request_id(&[b'a'; MAX_REQUEST_ID_LEN + 1]));
        assert!(!well_formed_request_id(b"a b"));
        assert!(!well_formed_request_id(b"id\nforged log line"));
        assert!(well_formed_request_id(new_request_id().as_bytes()));
    }

    #[test]
    fn origins_are_checked() {
        let pairs = [(
            "HABERCI_CORS_ORIGINS",
            "https://app.example, http://localhost:3000,*,ftp://x,https://a.example/path",
        )];
        let mut env = Env::from_pairs(&pairs);
        let origins = CorsOrigins::read(&mut env);
        assert_eq!(origins.0.len(), 2);
        let err = env.finish().expect_err("three bad origins");
        assert_eq!(err.problems.len(), 3, "{err}");
        assert!(err.problems[0].contains("wildcard"));
    }
}
