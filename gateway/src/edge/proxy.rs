//! Forwards public API requests to the backend over its pooled keep-alive HTTP/1.1 client
//! ([`Backend`]).
//!
//! Bodies stream both ways; nothing is buffered whole. Media uploads ([`RequestClass`]) get a
//! larger body limit and, instead of one deadline for the whole exchange, an idle timeout
//! while their body flows, so a 200 MB video on a slow link is not cut at a fixed time.
//!
//! API boundary: the backend trusts `x-haberci-client-ip` only because it can be set by a
//! gateway alone. The proxy therefore drops every incoming `x-haberci-*` header and sets the
//! client IP from the connection itself. Hop-by-hop headers are not forwarded.

use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use axum::body::Body;
use axum::extract::Request;
use axum::http::{HeaderMap, HeaderName, HeaderValue, StatusCode, header};
use axum::response::Response;
use haberci_seam::internal::{
    CLIENT_IP_HEADER, HEADER as INTERNAL_HEADER, InternalToken, PRIVATE_HEADER_PREFIX,
};
use http_body_util::{BodyExt, LengthLimitError, Limited};
use tokio::sync::Notify;

use super::h3::IdleBody;
use super::{ClientAddr, error_response};
use crate::relay::backend::Backend;

/// Headers that describe one hop and must not be forwarded (RFC 9110 §7.6.1).
const HOP_BY_HOP: [HeaderName; 8] = [
    header::CONNECTION,
    HeaderName::from_static("keep-alive"),
    header::PROXY_AUTHENTICATE,
    header::PROXY_AUTHORIZATION,
    header::TE,
    header::TRAILER,
    header::TRANSFER_ENCODING,
    header::UPGRADE,
];

/// Limits of media uploads, which differ from every other request's (see [`RequestClass`]).
#[derive(Debug, Clone, Copy)]
pub struct UploadLimits {
    /// `HABERCI_GATEWAY_MAX_UPLOAD_BYTES`.
    pub max_bytes: usize,
    /// `HABERCI_GATEWAY_BODY_IDLE_TIMEOUT_MS`: how long no chunk may pass while the body flows.
    pub idle_timeout: Duration,
}

impl Default for UploadLimits {
    fn default() -> Self {
        UploadLimits {
            max_bytes: crate::config::DEFAULT_MAX_UPLOAD_BYTES,
            idle_timeout: crate::config::DEFAULT_BODY_IDLE_TIMEOUT,
        }
    }
}

/// What a forwarded request is, which decides its body limit and its deadlines.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RequestClass {
    /// Every request but media uploads: at most `HABERCI_MAX_BODY_BYTES` of body, and one
    /// deadline (`HABERCI_BACKEND_TIMEOUT_MS`) from sending the request to the answer's headers.
    Api,
    /// A media upload (`POST /v1/media`, `POST|PATCH /v1/media/uploads[/{id}]`): at most
    /// `HABERCI_GATEWAY_MAX_UPLOAD_BYTES`, no deadline while the body flows (only the idle
    /// timeout between chunks), then the usual deadline for the answer.
    Upload,
}

impl RequestClass {
    /// API boundary: decided on the path as the backend routes it. Only exact upload paths
    /// qualify (one plain id segment, no `.`/`..`, no empty segment), so a client cannot
    /// borrow the upload limit for another route with a path the backend would resolve
    /// differently.
    pub fn of(method: &http::Method, path: &str) -> RequestClass {
        let body_method = *method == http::Method::POST || *method == http::Method::PATCH;
        let upload = match path.strip_prefix("/v1/media") {
            Some("") => *method == http::Method::POST,
            Some("/uploads") => body_method,
            Some(rest) => rest.strip_prefix("/uploads/").is_some_and(|id| {
                body_method && !id.is_empty() && !id.contains('/') && id != "." && id != ".."
            }),
            None => false,
        };
        if upload {
            RequestClass::Upload
        } else {
            RequestClass::Api
        }
    }
}

/// Forwards public API requests to the [`Backend`] with the limits of their [`RequestClass`].
#[derive(Clone)]
pub struct Proxy {
    backend: Backend,
    /// Sent with the client's address, which the API believes only with it.
    internal_token: Option<InternalToken>,
    /// `HABERCI_MAX_BODY_BYTES`.
    max_body_bytes: usize,
    uploads: UploadLimits,
}

impl Proxy {
    pub fn new(
        backend: Backend,
        internal_token: Option<InternalToken>,
        max_body_bytes: usize,
        uploads: UploadLimits,
    ) -> Proxy {
        Proxy {
            backend,
            internal_token,
            max_body_bytes,
            uploads,
        }
    }

    pub fn backend(&self) -> &Backend {
        &self.backend
    }

    /// Sends `request` to the backend and relays its answer. Both bodies stream: the request
    /// body is forwarded as it arrives (its size limit enforced as it flows), the answer's
    /// body is relayed as the backend writes it, byte for byte (no compression, so ranges
    /// stay exact).
    pub async fn forward(&self, request: Request) -> Response {
        let client_ip = request.extensions().get::<ClientAddr>().map(|a| a.0.ip());
        let (parts, body) = request.into_parts();
        let path = parts
            .uri
            .path_and_query()
            .map(|pq| pq.as_str())
            .unwrap_or("/");
        let uri = match self.backend.uri(path) {
            Ok(uri) => uri,
            Err(_) => {
                return error_response(StatusCode::BAD_REQUEST, "bad_request", "invalid path");
            }
        };
        let class = RequestClass::of(&parts.method, parts.uri.path());
        let max_body_bytes = match class {
            RequestClass::Api => self.max_body_bytes,
            RequestClass::Upload => self.uploads.max_bytes,
        };
        if declared_length(&parts.headers).is_some_and(|n| n > max_body_bytes as u64) {
            return too_large();
        }

        let mut headers = parts.headers;
        strip_hop_by_hop(&mut headers);
        headers.remove(header::HOST);
        let private: Vec<HeaderName> = headers
            .keys()
            .filter(|name| name.as_str().starts_with(PRIVATE_HEADER_PREFIX))
            .cloned()
            .collect();
        for name in private {
            headers.remove(name);
        }
        if let Some(ip) = client_ip.and_then(|ip| HeaderValue::from_str(&ip.to_string()).ok()) {
            headers.insert(CLIENT_IP_HEADER, ip);
            // The API believes the address only from a request that carries the secret.
            if let Some(secret) = self
                .internal_token
                .as_ref()
                .and_then(|t| HeaderValue::from_str(t.as_str()).ok())
            {
                headers.insert(INTERNAL_HEADER, secret);
            }
        }

        // The body is streamed, with the size limit enforced as it flows.
        let (body, flow) = Watched::new(Limited::new(body, max_body_bytes));
        let mut outbound = http::Request::new(Body::new(body));
        *outbound.method_mut() = parts.method;
        *outbound.uri_mut() = uri;
        *outbound.headers_mut() = headers;

        let answer = match class {
            RequestClass::Api => {
                match tokio::time::timeout(
                    self.backend.timeout(),
                    self.backend.client().request(outbound),
                )
                .await
                {
                    Ok(result) => result.map_err(Failure::Backend),
                    Err(_) => Err(Failure::Timeout),
                }
            }
            RequestClass::Upload => self.upload(outbound, &flow).await,
        };
        match answer {
            Ok(response) => {
                let (mut parts, body) = response.into_parts();
                strip_hop_by_hop(&mut parts.headers);
                detach_values(&mut parts.headers);
                Response::from_parts(parts, Body::new(body.map_err(axum::Error::new)))
            }
            Err(failure) => failure.into_response(&flow),
        }
    }

    /// The exchange of a media upload: no deadline while its body flows, as long as a chunk
    /// passes at least every `idle_timeout` (whoever stalls, client or backend, ends it); once
    /// the body has ended, the usual deadline for the answer. The backend may answer before
    /// the body ends (a refusal): that answer is relayed at once.
    async fn upload(
        &self,
        request: http::Request<Body>,
        flow: &Flow,
    ) -> Result<http::Response<hyper::body::Incoming>, Failure> {
        let idle = self.uploads.idle_timeout;
        let response = self.backend.client().request(request);
        tokio::pin!(response);
        while !flow.ended() {
            let deadline = flow.last_chunk() + idle;
            tokio::select! {
                result = &mut response => return result.map_err(Failure::Backend),
                () = flow.end.notified() => {}
                () = tokio::time::sleep_until(deadline.into()) => {
                    if flow.last_chunk() + idle <= Instant::now() && !flow.ended() {
                        return Err(if flow.waiting_on_client.load(Ordering::Acquire) {
                            Failure::ClientIdle
                        } else {
                            Failure::Timeout
                        });
                    }
                }
            }
        }
        match tokio::time::timeout(self.backend.timeout(), response).await {
            Ok(result) => result.map_err(Failure::Backend),
            Err(_) => Err(Failure::Timeout),
        }
    }
}

/// Why a forwarded request got no answer from the backend.
#[derive(Debug)]
enum Failure {
    /// The client (or the backend connection) failed; [`Failure::into_response`] tells which.
    Backend(hyper_util::client::legacy::Error),
    /// The backend did not answer in time, or stopped reading an upload's body.
    Timeout,
    /// An upload's client sent nothing for the idle timeout.
    ClientIdle,
}

impl Failure {
    fn into_response(self, flow: &Flow) -> Response {
        match self {
            Failure::Backend(err) if caused_by::<LengthLimitError>(&err) => too_large(),
            // The client's HTTP/3 body went quiet (`edge::h3`'s own idle timeout).
            Failure::Backend(err) if caused_by::<IdleBody>(&err) => body_timeout(),
            Failure::Backend(err) if flow.client_failed.load(Ordering::Acquire) => {
                // Whose fault: the client's (it reset the stream or broke the framing);
                // it will rarely read this answer.
                tracing::debug!(%err, "request body failed midway");
                error_response(
                    StatusCode::BAD_REQUEST,
                    "body_incomplete",
                    "the request body ended before it was complete",
                )
            }
            Failure::Backend(err) => {
                tracing::warn!(%err, "backend request failed");
                error_response(
                    StatusCode::BAD_GATEWAY,
                    "backend_unavailable",
                    "the API backend is unavailable; retry shortly",
                )
            }
            Failure::Timeout => error_response(
                StatusCode::GATEWAY_TIMEOUT,
                "backend_timeout",
                "the API backend did not answer in time",
            ),
            Failure::ClientIdle => body_timeout(),
        }
    }
}

/// The progress of one forwarded request body, shared by [`Watched`] (which the backend
/// connection polls) and the proxy waiting for the answer.
struct Flow {
    /// When the body was handed over, or when its last chunk passed.
    last_chunk: Mutex<Instant>,
    /// The backend connection asked for the next chunk and the client has not sent it yet:
    /// a stall now is the client's.
    waiting_on_client: AtomicBool,
    /// The body failed on the client's side (reset, over the limit, idle on HTTP/3).
    client_failed: AtomicBool,
    /// Whether the body ended (complete, failed, or dropped by the backend connection);
    /// `end` wakes the proxy when it does.
    ended: AtomicBool,
    end: Notify,
}

impl Flow {
    fn last_chunk(&self) -> Instant {
        *self
            .last_chunk
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    fn ended(&self) -> bool {
        self.ended.load(Ordering::Acquire)
    }

    fn finish(&self) {
        self.waiting_on_client.store(false, Ordering::Release);
        if !self.ended.swap(true, Ordering::AcqRel) {
            self.end.notify_one();
        }
    }
}

/// A request body that reports its progress to a [`Flow`].
struct Watched<B> {
    inner: B,
    flow: Arc<Flow>,
}

impl<B> Watched<B> {
    fn new(inner: B) -> (Watched<B>, Arc<Flow>) {
        let flow = Arc::new(Flow {
            last_chunk: Mutex::new(Instant::now()),
            waiting_on_client: AtomicBool::new(false),
            client_failed: AtomicBool::new(false),
            ended: AtomicBool::new(false),
            end: Notify::new(),
        });
        (
            Watched {
                inner,
                flow: flow.clone(),
            },
            flow,
        )
    }
}

impl<B> http_body::Body for Watched<B>
where
    B: http_body::Body + Unpin,
{
    type Data = B::Data;
    type Error = B::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<http_body::Frame<B::Data>, B::Error>>> {
        let polled = Pin::new(&mut self.inner).poll_frame(cx);
        let flow = &self.flow;
        match &polled {
            Poll::Pending => flow.waiting_on_client.store(true, Ordering::Release),
            Poll::Ready(Some(Ok(_))) => {
                flow.waiting_on_client.store(false, Ordering::Release);
                *flow
                    .last_chunk
                    .lock()
                    .unwrap_or_else(|poisoned| poisoned.into_inner()) = Instant::now();
            }
            Poll::Ready(Some(Err(_))) => {
                flow.client_failed.store(true, Ordering::Release);
                flow.finish();
            }
            Poll::Ready(None) => flow.finish(),
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.inner.size_hint()
    }
}

impl<B> Drop for Watched<B> {
    fn drop(&mut self) {
        // An empty body may never be polled; the backend connection drops it instead.
        self.flow.finish();
    }
}

fn body_timeout() -> Response {
    error_response(
        StatusCode::REQUEST_TIMEOUT,
        "body_timeout",
        "the request body stopped arriving",
    )
}

fn too_large() -> Response {
    error_response(
        StatusCode::PAYLOAD_TOO_LARGE,
        "body_too_large",
        "request body is larger than the server accepts",
    )
}

fn declared_length(headers: &HeaderMap) -> Option<u64> {
    headers
        .get(header::CONTENT_LENGTH)?
        .to_str()
        .ok()?
        .parse()
        .ok()
}

/// Whether `E` is among the causes of `err`: a body error reaches us wrapped by hyper.
fn caused_by<E: std::error::Error + 'static>(err: &hyper_util::client::legacy::Error) -> bool {
    let mut source: Option<&(dyn std::error::Error + 'static)> = Some(err);
    while let Some(e) = source {
        if e.is::<E>() {
            return true;
        }
        source = e.source();
    }
    false
}

/// Gives every value its own allocation. hyper parses a backend answer's header values as
/// slices of the connection's read buffer (up to ~400 KiB), and HTTP/2's HPACK table keeps
/// values of past answers: one 30-byte `ETag` would keep a whole buffer alive for the life of
/// the client's connection. 32 HTTP/2 readers of media ranges held 500 MiB that way.
fn detach_values(headers: &mut HeaderMap) {
    for value in headers.values_mut() {
        if let Ok(mut copy) = HeaderValue::from_bytes(value.as_bytes()) {
            copy.set_sensitive(value.is_sensitive());
            *value = copy;
        }
    }
}

fn strip_hop_by_hop(headers: &mut HeaderMap) {
    // Headers named in `Connection` are hop-by-hop too.
    let named: Vec<HeaderName> = headers
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .filter_map(|name| HeaderName::from_bytes(name.trim().as_bytes()).ok())
        .collect();
    for name in named.iter().chain(HOP_BY_HOP.iter()) {
        headers.remove(name);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::Method;

    #[test]
    fn answer_header_values_stop_sharing_the_read_buffer() {
        // As hyper parses an answer: values are slices of one buffer.
        let buffer = bytes::Bytes::from(vec![b'a'; 64 * 1024]);
        let mut headers = HeaderMap::new();
        let etag = HeaderValue::from_maybe_shared(buffer.slice(0..34)).expect("valid");
        headers.insert(header::ETAG, etag);
        let mut token = HeaderValue::from_maybe_shared(buffer.slice(100..110)).expect("valid");
        token.set_sensitive(true);
        headers.insert(header::SET_COOKIE, token);
        detach_values(&mut headers);
        let held = buffer.as_ptr_range();
        for value in headers.values() {
            assert_eq!(value.as_bytes(), &buffer[..value.len()]);
            assert!(
                !held.contains(&value.as_bytes().as_ptr()),
                "{value:?} still in the buffer"
            );
        }
        assert!(headers[header::SET_COOKIE].is_sensitive());
    }

    #[test]
    fn only_media_upload_requests_are_uploads() {
        let cases = [
            (Method::POST, "/v1/media", RequestClass::Upload),
            (Method::POST, "/v1/media/uploads", RequestClass::Upload),
            (
                Method::PATCH,
                "/v1/media/uploads/0192f0c4",
                RequestClass::Upload,
            ),
            (
                Method::POST,
                "/v1/media/uploads/0192f0c4",
                RequestClass::Upload,
            ),
            // Downloads and tus bookkeeping carry no body worth a larger limit.
            (Method::GET, "/v1/media/0192f0c4", RequestClass::Api),
            (Method::GET, "/v1/media", RequestClass::Api),
            (
                Method::HEAD,
                "/v1/media/uploads/0192f0c4",
                RequestClass::Api,
            ),
            (
                Method::DELETE,
                "/v1/media/uploads/0192f0c4",
                RequestClass::Api,
            ),
            (Method::OPTIONS, "/v1/media/uploads", RequestClass::Api),
            (Method::PATCH, "/v1/media/0192f0c4", RequestClass::Api),
            // Nothing else borrows the upload limit.
            (Method::POST, "/v1/posts", RequestClass::Api),
            (Method::POST, "/v1/media/", RequestClass::Api),
            (Method::POST, "/v1/mediax", RequestClass::Api),
            (Method::POST, "/v1/media/uploadsx", RequestClass::Api),
            (Method::PATCH, "/v1/media/uploads/", RequestClass::Api),
            (Method::PATCH, "/v1/media/uploads/a/b", RequestClass::Api),
            (Method::PATCH, "/v1/media/uploads/..", RequestClass::Api),
            (Method::PATCH, "/v1/media/uploads/.", RequestClass::Api),
            (Method::POST, "/v2/media", RequestClass::Api),
        ];
        for (method, path, class) in cases {
            assert_eq!(RequestClass::of(&method, path), class, "{method} {path}");
        }
    }
}
