//! One JSON request to the backend API over plain HTTP/1.1, as a gateway on loopback sends it.

use std::net::SocketAddr;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use serde_json::Value;

use crate::TIMEOUT;

/// `method path` on the API at `addr`, with `body` as JSON (none when `Null`) and `token` as
/// the bearer when given; the status and the JSON answer (`Null` when there is none). Within
/// [`TIMEOUT`].
pub async fn call(
    addr: SocketAddr,
    method: http::Method,
    path: &str,
    body: Value,
    token: Option<&str>,
) -> (u16, Value) {
    tokio::time::timeout(TIMEOUT, async {
        let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
        let (mut sender, conn) =
            hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(tcp))
                .await
                .unwrap();
        tokio::spawn(conn);
        let mut request = http::Request::builder()
            .method(method)
            .uri(format!("http://{addr}{path}"))
            .header("host", addr.to_string());
        if let Some(token) = token {
            request = request.header("authorization", format!("Bearer {token}"));
        }
        let body = if body.is_null() {
            Bytes::new()
        } else {
            request = request.header("content-type", "application/json");
            Bytes::from(body.to_string())
        };
        let response = sender
            .send_request(request.body(Full::new(body)).unwrap())
            .await
            .unwrap();
        let status = response.status().as_u16();
        let bytes = response.into_body().collect().await.unwrap().to_bytes();
        (
            status,
            serde_json::from_slice(&bytes).unwrap_or(Value::Null),
        )
    })
    .await
    .expect("the API answers in time")
}

/// `POST path` with a JSON body.
pub async fn post(addr: SocketAddr, path: &str, body: Value, token: Option<&str>) -> (u16, Value) {
    call(addr, http::Method::POST, path, body, token).await
}
