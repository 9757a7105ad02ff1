//! The HTTP surface rules every Haberci response follows, applied the same way by the gateway
//! (all HTTP versions) and the backend API: security headers ([`harden`]) and CORS with an
//! allow-list of origins ([`CorsOrigins`], `HABERCI_CORS_ORIGINS`).

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
