//! Extractors whose every failure is an [`ApiError`], so no request can get axum's plain-text
//! rejections: [`ApiJson`] (bodies), [`ApiPath`] (path parameters), [`ApiQuery`] (query
//! parameters), [`ClientIp`], [`UserAgent`], and [`Authenticated`] (a verified access token of
//! a live session).

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};

use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::{ConnectInfo, FromRequest, FromRequestParts, Path, Query, Request};
use axum::http::request::Parts;
use axum::http::{HeaderMap, header};
use haberci_wire::{SessionId, UserId};
use serde::de::DeserializeOwned;

use super::{ApiError, AppState};
use crate::auth::sessions::{self, NotUsable};

/// A JSON body. Wrong content type → 415, too large → 413, not JSON → 400 `malformed_json`,
/// a missing, unknown or invalid field → 422 `invalid_field` naming the field.
pub struct ApiJson<T>(pub T);

impl<T, S> FromRequest<S> for ApiJson<T>
where
    T: DeserializeOwned,
    S: Send + Sync,
{
    type Rejection = ApiError;

    async fn from_request(request: Request, state: &S) -> Result<Self, ApiError> {
        if !is_json(request.headers()) {
            return Err(ApiError::UnsupportedMediaType);
        }
        let bytes =
            Bytes::from_request(request, state)
                .await
                .map_err(|rejection| match rejection {
                    BytesRejection::FailedToBufferBody(failed)
                        if failed.status() == axum::http::StatusCode::PAYLOAD_TOO_LARGE =>
                    {
                        ApiError::BodyTooLarge
                    }
                    _ => ApiError::MalformedJson("the body could not be read".into()),
                })?;
        parse_json(&bytes).map(ApiJson)
    }
}

fn is_json(headers: &HeaderMap) -> bool {
    let Some(value) = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
    else {
        return false;
    };
    let essence = value
        .split(';')
        .next()
        .unwrap_or("")
        .trim()
        .to_ascii_lowercase();
    essence == "application/json"
        || (essence.starts_with("application/") && essence.ends_with("+json"))
}

/// Parses a JSON body into `T`, classifying failures as the API reports them.
pub fn parse_json<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, ApiError> {
    let mut deserializer = serde_json::Deserializer::from_slice(bytes);
    let value = match serde_path_to_error::deserialize(&mut deserializer) {
        Ok(value) => value,
        Err(err) => {
            let path = err.path().to_string();
            let inner = err.into_inner();
            let message = without_position(&inner.to_string());
            return Err(match inner.classify() {
                serde_json::error::Category::Data => {
                    // The path ends at the parent for a missing field, at the field otherwise.
                    let field = missing_field(&message)
                        .map(|name| join_path(&path, name))
                        .or_else(|| (path != ".").then_some(path));
                    ApiError::InvalidField { field, message }
                }
                _ => ApiError::MalformedJson(message),
            });
        }
    };
    deserializer
        .end()
        .map_err(|err| ApiError::MalformedJson(without_position(&err.to_string())))?;
    Ok(value)
}

/// serde_json appends " at line L column C"; the client does not need it.
fn without_position(message: &str) -> String {
    match message.rfind(" at line ") {
        Some(at) => message[..at].to_owned(),
        None => message.to_owned(),
    }
}

/// The field named in "missing field `x`".
fn missing_field(message: &str) -> Option<&str> {
    message.strip_prefix("missing field `")?.split('`').next()
}

fn join_path(path: &str, name: &str) -> String {
    if path.is_empty() || path == "." {
        name.to_owned()
    } else {
        format!("{path}.{name}")
    }
}

/// A path parameter, parsed: a `String`, an id newtype (`ApiPath<UserId>`), or a tuple of
/// them for a route with several. One that does not parse (not a UUID, or the nil UUID)
/// names nothing that exists: 404, like an id that names nothing.
pub struct ApiPath<T>(pub T);

impl<T, S> FromRequestParts<S> for ApiPath<T>
where
    T: DeserializeOwned + Send,
    S: Send + Sync,
{
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, ApiError> {
        Path::<T>::from_request_parts(parts, state)
            .await
            .map(|Path(value)| ApiPath(value))
            .map_err(|_| ApiError::NotFound)
    }
}

/// The query parameters, read by name so that each bad value is reported with its name (422
/// `invalid_field`). Unknown parameters are ignored; a repeated one keeps its last value.
pub struct ApiQuery(pub HashMap<String, String>);

impl<S: Send + Sync> FromRequestParts<S> for ApiQuery {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, ApiError> {
        Query::<HashMap<String, String>>::from_request_parts(parts, state)
            .await
            .map(|Query(params)| ApiQuery(params))
            .map_err(|_| ApiError::InvalidField {
                field: None,
                message: "the query string is not valid".into(),
            })
    }
}

impl ApiQuery {
    /// The text of `name`, if present.
    pub fn text(&self, name: &str) -> Option<&str> {
        self.0.get(name).map(String::as_str)
    }

    /// `name` as an integer in `min..=max`, if present.
    pub fn integer(&self, name: &str, min: u64, max: u64) -> Result<Option<u64>, ApiError> {
        let Some(text) = self.text(name) else {
            return Ok(None);
        };
        match text.parse::<u64>() {
            Ok(value) if (min..=max).contains(&value) => Ok(Some(value)),
            _ => Err(ApiError::invalid(
                name,
                format!("{name} must be an integer from {min} to {max}"),
            )),
        }
    }
}

/// The client's address (see [`crate::auth::client_ip`]).
#[derive(Debug, Clone, Copy)]
pub struct ClientIp(pub IpAddr);

impl FromRequestParts<AppState> for ClientIp {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, ApiError> {
        let Some(ConnectInfo(peer)) = parts.extensions.get::<ConnectInfo<SocketAddr>>() else {
            return Err(ApiError::Internal(anyhow::anyhow!(
                "the API is served without ConnectInfo; use api::serve"
            )));
        };
        Ok(ClientIp(crate::auth::client_ip(
            peer.ip(),
            &parts.headers,
            &state.auth.settings.trusted_proxies,
            state.settings.internal_token.as_ref(),
        )))
    }
}

/// The `User-Agent` header, if any and printable.
pub struct UserAgent(pub Option<String>);

impl<S: Send + Sync> FromRequestParts<S> for UserAgent {
    type Rejection = std::convert::Infallible;

    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<Self, Self::Rejection> {
        Ok(UserAgent(
            parts
                .headers
                .get(header::USER_AGENT)
                .and_then(|v| v.to_str().ok())
                .map(str::to_owned),
        ))
    }
}

/// A request with a valid access token whose session is live.
#[derive(Debug, Clone, Copy)]
pub struct Authenticated {
    pub user: UserId,
    pub session: SessionId,
}

impl FromRequestParts<AppState> for Authenticated {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, ApiError> {
        let token = parts
            .headers
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| {
                let (scheme, token) = v.trim().split_once(' ')?;
                scheme.eq_ignore_ascii_case("bearer").then(|| token.trim())
            })
            .filter(|token| !token.is_empty())
            .ok_or(ApiError::Unauthenticated)?;
        let claims = state
            .auth
            .keys
            .current()
            .verifier
            .verify(token, crate::auth::unix_now())
            .map_err(|err| {
                tracing::debug!(reason = err.reason(), "access token refused");
                ApiError::InvalidToken
            })?;
        // Our own keys never sign a nil id; a token that holds one names nobody.
        let (Some(user), Some(session)) = (UserId::new(claims.sub), SessionId::new(claims.sid))
        else {
            return Err(ApiError::InvalidToken);
        };
        // Invariant: a verified token is not enough; its session must still be live. The
        // cache answers on the hot path; Postgres when the cache has no entry.
        match sessions::usable_by(
            &state.db,
            &state.redis,
            session,
            user,
            state.auth.settings.session_cache_ttl,
        )
        .await?
        {
            Ok(()) => Ok(Authenticated { user, session }),
            Err(NotUsable::OtherUser) => Err(ApiError::InvalidToken),
            Err(NotUsable::NotActive) => Err(ApiError::SessionRevoked),
        }
    }
}

/// [`Authenticated`] when the request carries an `Authorization` header (and then it must be
/// valid: a bad token is refused, never treated as anonymous); `None` without one.
#[derive(Debug, Clone, Copy)]
pub struct MaybeAuthenticated(pub Option<Authenticated>);

impl FromRequestParts<AppState> for MaybeAuthenticated {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, ApiError> {
        if !parts.headers.contains_key(header::AUTHORIZATION) {
            return Ok(MaybeAuthenticated(None));
        }
        Authenticated::from_request_parts(parts, state)
            .await
            .map(|auth| MaybeAuthenticated(Some(auth)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, serde::Deserialize)]
    #[serde(deny_unknown_fields)]
    #[allow(dead_code)]
    struct Body {
        name: crate::accounts::Username,
        inner: Option<Inner>,
    }

    #[derive(Debug, serde::Deserialize)]
    #[allow(dead_code)]
    struct Inner {
        count: u32,
    }

    fn err(json: &str) -> (u16, &'static str, Option<String>) {
        match parse_json::<Body>(json.as_bytes()) {
            Ok(body) => panic!("parsed: {body:?}"),
            Err(e) => (e.status().as_u16(), e.code(), e_field(&e)),
        }
    }

    fn e_field(e: &ApiError) -> Option<String> {
        match e {
            ApiError::InvalidField { field, .. } => field.clone(),
            _ => None,
        }
    }

    #[test]
    fn json_failures_are_classified_with_their_field() {
        assert_eq!(err("{"), (400, "malformed_json", None));
        assert_eq!(err(r#"{"name":"abc"} x"#), (400, "malformed_json", None));
        assert_eq!(err("{}"), (422, "invalid_field", Some("name".into())));
        assert_eq!(
            err(r#"{"name":"a"}"#),
            (422, "invalid_field", Some("name".into()))
        );
        assert_eq!(
            err(r#"{"name":7}"#),
            (422, "invalid_field", Some("name".into()))
        );
        assert_eq!(
            err(r#"{"name":"abc","x":1}"#),
            (422, "invalid_field", Some("x".into()))
        );
        assert_eq!(
            err(r#"{"name":"abc","inner":{"count":-1}}"#),
            (422, "invalid_field", Some("inner.count".into()))
        );
        assert_eq!(err("[]"), (422, "invalid_field", None));
    }

    #[test]
    fn json_content_types() {
        let mut headers = HeaderMap::new();
        assert!(!is_json(&headers));
        for (value, ok) in [
            ("application/json", true),
            ("Application/JSON; charset=utf-8", true),
            ("application/merge-patch+json", true),
            ("text/plain", false),
            ("application/x-www-form-urlencoded", false),
        ] {
            headers.insert(
                header::CONTENT_TYPE,
                axum::http::HeaderValue::from_static(value),
            );
            assert_eq!(is_json(&headers), ok, "{value}");
        }
    }
}
