//! A client whose bodies stream both ways, over HTTP/1.1, HTTP/2 and HTTP/3: the request body
//! goes out chunk by chunk as a stream yields it (so a test decides when each chunk leaves),
//! the answer's body is read as it arrives. `support::request` buffers both, which suits small
//! JSON, not 100 MB.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::pin::Pin;
use std::time::Duration;

use bytes::{Buf, Bytes};
use futures::{Stream, StreamExt};
use haberci_testkit::{Stack, TIMEOUT, env, tls};
use http_body_util::{BodyExt, StreamBody};
use hyper::body::Frame;

use crate::support::{self, Version};

/// A streamed request or answer body.
pub type Chunks = Pin<Box<dyn Stream<Item = Bytes> + Send>>;

/// Where a gateway listens, and the CA its certificates chain to.
#[derive(Clone)]
pub struct Target {
    pub tcp: SocketAddr,
    pub udp: SocketAddr,
    pub ca: PathBuf,
}

impl Target {
    /// The in-process gateway of `stack`.
    pub fn of(stack: &Stack) -> Target {
        Target {
            tcp: stack.gateway_tcp,
            udp: stack.gateway_udp,
            ca: stack.ca(),
        }
    }

    /// The gateway `./dev up` runs (`HABERCI_TEST_GATEWAY_URL`, `_UDP`, `HABERCI_TEST_CA`).
    pub fn dev_stack() -> Target {
        let dev = env::dev_gateway();
        Target {
            tcp: dev.tcp,
            udp: dev.udp,
            ca: dev.ca,
        }
    }
}

/// An answer whose body has not been read yet.
pub struct Answer {
    pub status: http::StatusCode,
    pub headers: http::HeaderMap,
    pub body: Pin<Box<dyn Stream<Item = Result<Bytes, String>> + Send>>,
}

impl Answer {
    /// The whole body; panics when it fails midway.
    pub async fn bytes(mut self) -> Bytes {
        let mut all = Vec::new();
        while let Some(chunk) = tokio::time::timeout(TIMEOUT, self.body.next())
            .await
            .expect("the answer's body keeps coming")
        {
            all.extend_from_slice(&chunk.expect("the answer's body arrives whole"));
        }
        Bytes::from(all)
    }

    pub async fn json(self) -> serde_json::Value {
        let status = self.status;
        let body = self.bytes().await;
        serde_json::from_slice(&body).unwrap_or_else(|err| {
            panic!(
                "{status}, not JSON ({err}): {}",
                String::from_utf8_lossy(&body)
            )
        })
    }
}

/// Sends `head` with the body `chunks` yields, on a new connection of `version`, and returns
/// as soon as the answer's headers arrive (which may be before the body is all sent: an early
/// refusal), within [`TIMEOUT`]. A request body the server stops taking ends quietly.
pub async fn send(
    target: &Target,
    version: Version,
    head: http::Request<()>,
    chunks: Chunks,
) -> Answer {
    send_within(target, version, head, chunks, TIMEOUT).await
}

/// [`send`], with the answer's headers due within `wait` (a large upload is answered once it
/// is stored).
pub async fn send_within(
    target: &Target,
    version: Version,
    head: http::Request<()>,
    chunks: Chunks,
    wait: Duration,
) -> Answer {
    let roots = tls::roots(&[&target.ca]);
    match version {
        Version::Http3 => send_h3(target.udp, roots, head, chunks, wait).await,
        tcp => send_tcp(target.tcp, roots, tcp, head, chunks, wait).await,
    }
}

/// One body of `Bytes` chunks, as [`send`] takes it.
pub fn chunks(parts: Vec<Bytes>) -> Chunks {
    Box::pin(futures::stream::iter(parts))
}

/// A request body on TCP: anything that yields `Bytes`.
type TcpBody = http_body_util::combinators::UnsyncBoxBody<Bytes, Infallible>;

/// A TLS connection to `addr` speaking `alpn`, for hyper.
async fn tls(
    addr: SocketAddr,
    roots: rustls::RootCertStore,
    alpn: &[u8],
) -> hyper_util::rt::TokioIo<tokio_rustls::client::TlsStream<tokio::net::TcpStream>> {
    hyper_util::rt::TokioIo::new(tls::connect(addr, roots, alpn).await.unwrap())
}

fn answer(response: http::Response<hyper::body::Incoming>) -> Answer {
    let (parts, body) = response.into_parts();
    Answer {
        status: parts.status,
        headers: parts.headers,
        body: Box::pin(
            body.into_data_stream()
                .map(|chunk| chunk.map_err(|err| err.to_string())),
        ),
    }
}

async fn send_tcp(
    addr: SocketAddr,
    roots: rustls::RootCertStore,
    version: Version,
    head: http::Request<()>,
    chunks: Chunks,
    wait: Duration,
) -> Answer {
    let alpn: &[u8] = if version == Version::Http1 {
        b"http/1.1"
    } else {
        b"h2"
    };
    let io = tls(addr, roots, alpn).await;
    let body: TcpBody = BodyExt::boxed_unsync(StreamBody::new(
        chunks.map(|chunk| Ok::<_, Infallible>(Frame::data(chunk))),
    ));
    let request = head.map(|()| body);
    let response = tokio::time::timeout(wait, async {
        if version == Version::Http1 {
            let (mut sender, conn) = hyper::client::conn::http1::handshake(io).await.unwrap();
            tokio::spawn(conn);
            sender.send_request(request).await
        } else {
            let (mut sender, conn) =
                hyper::client::conn::http2::handshake(hyper_util::rt::TokioExecutor::new(), io)
                    .await
                    .unwrap();
            tokio::spawn(conn);
            sender.send_request(request).await
        }
    })
    .await
    .expect("an answer in time")
    .expect("an answer");
    answer(response)
}

/// One HTTP/2 connection carrying request after request, as a browser or an app holds it
/// (what connection-level state, like HPACK's table, needs to be seen).
pub struct H2Connection {
    sender: hyper::client::conn::http2::SendRequest<TcpBody>,
}

impl H2Connection {
    pub async fn open(target: &Target) -> H2Connection {
        let io = tls(target.tcp, tls::roots(&[&target.ca]), b"h2").await;
        let (sender, conn) =
            hyper::client::conn::http2::handshake(hyper_util::rt::TokioExecutor::new(), io)
                .await
                .unwrap();
        tokio::spawn(conn);
        H2Connection { sender }
    }

    /// Sends `head` without a body; the answer's headers are due within [`TIMEOUT`].
    pub async fn send(&mut self, head: http::Request<()>) -> Answer {
        let body: TcpBody = BodyExt::boxed_unsync(http_body_util::Empty::<Bytes>::new());
        let response = tokio::time::timeout(TIMEOUT, async {
            self.sender.ready().await?;
            self.sender.send_request(head.map(|()| body)).await
        })
        .await
        .expect("an answer in time")
        .expect("an answer");
        answer(response)
    }
}

async fn send_h3(
    addr: SocketAddr,
    roots: rustls::RootCertStore,
    head: http::Request<()>,
    mut chunks: Chunks,
    wait: Duration,
) -> Answer {
    let quic = support::QuicClient::connect(addr, roots, b"h3")
        .await
        .unwrap();
    let (mut driver, mut sender) =
        h3::client::new(h3_quinn::Connection::new(quic.connection.clone()))
            .await
            .unwrap();
    tokio::spawn(async move {
        let _ = futures::future::poll_fn(|cx| driver.poll_close(cx)).await;
    });
    let stream = sender.send_request(head).await.unwrap();
    let (mut out, mut answer) = stream.split();
    tokio::spawn(async move {
        while let Some(chunk) = chunks.next().await {
            // A server that answered early asks us to stop (STOP_SENDING): the answer counts
            // (RFC 9114 §4.1.1), the rest of the body is dropped.
            if out.send_data(chunk).await.is_err() {
                return;
            }
        }
        let _ = out.finish().await;
    });
    let response = tokio::time::timeout(wait, answer.recv_response())
        .await
        .expect("an h3 answer in time")
        .expect("an h3 answer");
    // The connection lives as long as the body is read; the first error ends the body.
    let body = futures::stream::unfold(Some((answer, quic, sender)), |state| async move {
        let (mut answer, quic, sender) = state?;
        match answer.recv_data().await {
            Ok(Some(mut chunk)) => {
                let data = chunk.copy_to_bytes(chunk.remaining());
                Some((Ok(data), Some((answer, quic, sender))))
            }
            Ok(None) => None,
            Err(err) => Some((Err(err.to_string()), None)),
        }
    });
    Answer {
        status: response.status(),
        headers: response.headers().clone(),
        body: Box::pin(body),
    }
}
