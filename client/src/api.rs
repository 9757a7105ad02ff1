//! The HTTP API calls the SDK makes beside the realtime session: media uploads
//! (`POST /v1/media`) and what an upload is (`GET /v1/media/{id}/info`). HTTPS/1.1 to the
//! gateway's TCP port, trusting the same [`Roots`] as the realtime transports; one connection
//! per request (uploads are rare and large, so a pool would buy nothing).
//!
//! API boundary: the JSON the server answers is read into [`MediaView`] here and nowhere else;
//! a media message is then built from it with [`media_to`](crate::media_to).

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use haberci_wire::{MediaId, MediaRef, MessageKind};
use http_body_util::{BodyExt, Full};
use rustls_pki_types::ServerName;
use serde::Deserialize;
use url::Url;

use crate::config::Roots;
use crate::error::{ApiError, BoxError};
use crate::transport::tls;

/// How long one API request may take, connecting and the whole body included.
pub const DEFAULT_API_TIMEOUT: Duration = Duration::from_secs(120);

/// What an upload is stored as; also the [`MessageKind`] that carries it.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum MediaKind {
    Image,
    Video,
    Audio,
    File,
}

impl MediaKind {
    /// The `?kind=` of an upload.
    pub const fn as_str(self) -> &'static str {
        match self {
            MediaKind::Image => "image",
            MediaKind::Video => "video",
            MediaKind::Audio => "audio",
            MediaKind::File => "file",
        }
    }

    /// The message type that carries media of this kind.
    pub const fn message_kind(self) -> MessageKind {
        match self {
            MediaKind::Image => MessageKind::Image,
            MediaKind::Video => MessageKind::Video,
            MediaKind::Audio => MessageKind::Audio,
            MediaKind::File => MessageKind::File,
        }
    }
}

/// An upload as the API returns it (`MediaView` in the OpenAPI document). The links are
/// relative to the gateway's origin, signed, and work without a token until
/// `links_expire_at`; [`Api::media_info`] gives fresh ones.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct MediaView {
    pub id: MediaId,
    pub kind: MediaKind,
    /// What the bytes are, decided by the server from the bytes.
    pub content_type: String,
    pub size: u64,
    /// Hex SHA-256 of the stored bytes.
    pub sha256: String,
    pub width: Option<u32>,
    pub height: Option<u32>,
    pub duration_ms: Option<u64>,
    pub blurhash: Option<String>,
    pub filename: Option<String>,
    /// RFC 3339.
    pub created_at: String,
    pub url: String,
    pub thumb_url: Option<String>,
    pub preview_url: Option<String>,
    /// RFC 3339.
    pub links_expire_at: String,
}

impl MediaView {
    /// The `MediaRef` a `Send` carries for this upload.
    pub fn media_ref(&self) -> MediaRef {
        MediaRef {
            media_id: self.id,
            content_type: self.content_type.clone(),
            size_bytes: self.size,
        }
    }
}

/// The gateway's HTTP API. Cheap to clone.
#[derive(Clone)]
pub struct Api {
    origin: Url,
    host: String,
    port: u16,
    server_name: ServerName<'static>,
    tls: tokio_rustls::TlsConnector,
    /// Bounds each request (connect, send, answer).
    pub timeout: Duration,
}

impl std::fmt::Debug for Api {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Api")
            .field("origin", &self.origin.as_str())
            .finish_non_exhaustive()
    }
}

impl Api {
    /// The API at `origin` (`https://host[:port]`, the gateway's TCP port), trusting `roots`.
    pub fn new(origin: &str, roots: &Roots) -> Result<Api, ApiError> {
        let bad = |why: &str| ApiError::Config(format!("API origin {origin:?}: {why}"));
        let origin = Url::parse(origin).map_err(|err| bad(&err.to_string()))?;
        if origin.scheme() != "https" {
            return Err(bad("must be https"));
        }
        let host = origin
            .host_str()
            .ok_or_else(|| bad("has no host"))?
            .trim_matches(['[', ']'])
            .to_owned();
        let port = origin.port_or_known_default().unwrap_or(443);
        let server_name =
            ServerName::try_from(host.clone()).map_err(|err| bad(&err.to_string()))?;
        let roots = tls::root_store(roots).map_err(|err| ApiError::Config(err.to_string()))?;
        // One connector for the API's life: its requests resume each other's TLS sessions.
        let tickets = Arc::new(rustls::client::ClientSessionMemoryCache::new(4));
        let config = tls::client_config(roots, b"http/1.1", false, tickets)
            .map_err(|err| ApiError::Config(err.to_string()))?;
        Ok(Api {
            origin,
            host,
            port,
            server_name,
            tls: tokio_rustls::TlsConnector::from(Arc::new(config)),
            timeout: DEFAULT_API_TIMEOUT,
        })
    }

    /// Uploads `bytes` as media of `kind` (`POST /v1/media`). The server decides what the
    /// bytes are and refuses (`ApiError::Refused`) bytes that are not of `kind`
    /// (`media_type_mismatch`), too large (`media_too_large`), over the quota, or corrupt.
    pub async fn upload_media(
        &self,
        token: &str,
        kind: MediaKind,
        filename: Option<&str>,
        bytes: impl Into<Bytes>,
    ) -> Result<MediaView, ApiError> {
        let path = upload_path(kind, filename);
        self.call(
            "POST",
            &path,
            token,
            Some(("application/octet-stream", bytes.into())),
        )
        .await
    }

    /// Uploads the file at `path`, under its file name.
    pub async fn upload_media_file(
        &self,
        token: &str,
        kind: MediaKind,
        path: &Path,
    ) -> Result<MediaView, ApiError> {
        let bytes = tokio::fs::read(path)
            .await
            .map_err(|source| ApiError::File {
                path: path.to_owned(),
                source,
            })?;
        let name = path.file_name().and_then(|n| n.to_str());
        self.upload_media(token, kind, name, bytes).await
    }

    /// What an upload is, with fresh signed links (`GET /v1/media/{id}/info`). Media the
    /// caller may not read is `Refused { status: 404, .. }`, as if it did not exist.
    pub async fn media_info(&self, token: &str, id: MediaId) -> Result<MediaView, ApiError> {
        self.call("GET", &format!("/v1/media/{id}/info"), token, None)
            .await
    }

    async fn call<T: serde::de::DeserializeOwned>(
        &self,
        method: &str,
        path_and_query: &str,
        token: &str,
        body: Option<(&str, Bytes)>,
    ) -> Result<T, ApiError> {
        let (status, bytes) = tokio::time::timeout(
            self.timeout,
            self.request(method, path_and_query, token, body),
        )
        .await
        .map_err(|_| ApiError::Timeout(self.timeout))??;
        if !(200..300).contains(&status) {
            return Err(refusal(status, &bytes));
        }
        serde_json::from_slice(&bytes).map_err(|err| ApiError::Unexpected {
            status,
            detail: format!("unreadable JSON: {err}"),
        })
    }

    async fn request(
        &self,
        method: &str,
        path_and_query: &str,
        token: &str,
        body: Option<(&str, Bytes)>,
    ) -> Result<(u16, Bytes), ApiError> {
        let transport = |context: &'static str| {
            move |err: BoxError| ApiError::Transport {
                context,
                source: err,
            }
        };
        let tcp = tokio::net::TcpStream::connect((self.host.as_str(), self.port))
            .await
            .map_err(|e| transport("TCP connect")(e.into()))?;
        let stream = self
            .tls
            .connect(self.server_name.clone(), tcp)
            .await
            .map_err(|e| transport("TLS handshake")(e.into()))?;
        let (mut sender, connection) =
            hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(stream))
                .await
                .map_err(|e| transport("HTTP handshake")(e.into()))?;
        // Ends with the request: the sender is dropped when this function returns.
        tokio::spawn(connection);
        let authority = match self.origin.port() {
            Some(port) => format!("{}:{port}", self.origin.host_str().unwrap_or(&self.host)),
            None => self.origin.host_str().unwrap_or(&self.host).to_owned(),
        };
        let mut request = http::Request::builder()
            .method(method)
            .uri(path_and_query)
            .header(http::header::HOST, authority)
            .header(http::header::AUTHORIZATION, format!("Bearer {token}"))
            .header(http::header::ACCEPT, "application/json");
        let body = match body {
            Some((content_type, bytes)) => {
                request = request.header(http::header::CONTENT_TYPE, content_type);
                bytes
            }
            None => Bytes::new(),
        };
        let request = request
            .body(Full::new(body))
            .map_err(|err| ApiError::Config(format!("request {path_and_query}: {err}")))?;
        let response = sender
            .send_request(request)
            .await
            .map_err(|e| transport("HTTP request")(e.into()))?;
        let status = response.status().as_u16();
        let bytes = response
            .into_body()
            .collect()
            .await
            .map_err(|e| transport("HTTP response body")(e.into()))?
            .to_bytes();
        Ok((status, bytes))
    }
}

/// The path and query of an upload, the file name escaped.
pub(crate) fn upload_path(kind: MediaKind, filename: Option<&str>) -> String {
    let mut query = url::form_urlencoded::Serializer::new(String::new());
    query.append_pair("kind", kind.as_str());
    if let Some(name) = filename {
        query.append_pair("filename", name);
    }
    format!("/v1/media?{}", query.finish())
}

/// The API's error body (`{"error": {"code", "message"}}`) as an [`ApiError::Refused`].
fn refusal(status: u16, body: &[u8]) -> ApiError {
    #[derive(Deserialize)]
    struct Body {
        error: Detail,
    }
    #[derive(Deserialize)]
    struct Detail {
        code: String,
        #[serde(default)]
        message: String,
    }
    match serde_json::from_slice::<Body>(body) {
        Ok(Body { error }) => ApiError::Refused {
            status,
            code: error.code,
            message: error.message,
        },
        Err(_) => ApiError::Unexpected {
            status,
            detail: String::from_utf8_lossy(&body[..body.len().min(200)]).into_owned(),
        },
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn an_upload_path_escapes_the_file_name() {
        assert_eq!(upload_path(MediaKind::Image, None), "/v1/media?kind=image");
        assert_eq!(
            upload_path(MediaKind::File, Some("rapor & özet.pdf")),
            "/v1/media?kind=file&filename=rapor+%26+%C3%B6zet.pdf"
        );
    }

    #[test]
    fn a_refusal_carries_the_servers_code_or_what_came_instead() {
        let body = br#"{"error":{"code":"media_too_large","message":"over 20 MB"}}"#;
        match refusal(413, body) {
            ApiError::Refused {
                status,
                code,
                message,
            } => assert_eq!(
                (status, code.as_str(), message.as_str()),
                (413, "media_too_large", "over 20 MB")
            ),
            other => panic!("{other:?}"),
        }
        assert!(matches!(
            refusal(502, b"<html>bad gateway</html>"),
            ApiError::Unexpected { status: 502, detail } if detail.contains("bad gateway")
        ));
    }

    #[test]
    fn origins_must_be_https_with_a_host() {
        let roots = Roots::Store(rustls::RootCertStore::empty());
        for bad in ["http://localhost:8443", "not a url", "https://"] {
            assert!(
                matches!(Api::new(bad, &roots), Err(ApiError::Config(_))),
                "{bad}"
            );
        }
    }

    #[test]
    fn a_media_view_reads_the_apis_json_and_names_its_bytes() {
        let json = r#"{"id":"01920000-0000-7000-8000-00000000d1a0","kind":"image",
            "contentType":"image/jpeg","size":1234,"sha256":"ab","width":8,"height":6,
            "durationMs":null,"blurhash":"LEHV6nWB2yk8pyo0adR*.7kCMdnj","filename":null,
            "createdAt":"2025-01-01T00:00:00Z","url":"/v1/media/x?exp=1&sig=s",
            "thumbUrl":null,"previewUrl":null,"linksExpireAt":"2025-01-01T00:15:00Z"}"#;
        let view: MediaView = serde_json::from_str(json).unwrap();
        assert_eq!(view.kind.message_kind(), MessageKind::Image);
        let media_ref = view.media_ref();
        assert_eq!(media_ref.media_id, view.id);
        assert_eq!(
            (media_ref.content_type.as_str(), media_ref.size_bytes),
            ("image/jpeg", 1234)
        );
    }
}
