//! Bodies stream through the gateway on every HTTP version, seen by a backend standing in for
//! the real one (these are properties of the gateway alone): a request body reaches the
//! backend while the client is still sending it, an answer reaches the client while the
//! backend is still writing it, media uploads have their own body limit and deadlines, and
//! download headers pass unchanged.

use std::sync::Arc;
use std::time::Duration;

use axum::extract::{Request, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, patch, post};
use bytes::Bytes;
use futures::StreamExt;
use haberci_testkit::{Backend, Stack, TIMEOUT};
use http_body_util::Full;
use serde_json::json;
use tokio::sync::Notify;

use crate::client::{self, Chunks, H2Connection, Target};
use crate::memory::{Peak, Process, RSS_GROWTH_LIMIT, mib};
use crate::support::{self, ALL_VERSIONS, Version};

/// Told by the backend when the first chunk of a body has arrived.
#[derive(Clone, Default)]
struct FirstChunk(Arc<Notify>);

/// Reads the body as it comes and answers its size; tells `FirstChunk` at the first bytes.
async fn count(State(first): State<FirstChunk>, request: Request) -> Response {
    let mut body = request.into_body().into_data_stream();
    let mut size = 0;
    while let Some(chunk) = body.next().await {
        let Ok(chunk) = chunk else {
            return (StatusCode::BAD_REQUEST, "body failed").into_response();
        };
        if size == 0 && !chunk.is_empty() {
            first.0.notify_one();
        }
        size += chunk.len();
    }
    axum::Json(json!({ "size": size })).into_response()
}

async fn counting_backend(first: FirstChunk) -> std::net::SocketAddr {
    let router = axum::Router::new()
        .route("/v1/media", post(count))
        .route("/v1/media/uploads/{id}", patch(count))
        .route("/v1/posts", post(count))
        .with_state(first);
    support::serve_router(router).await
}

fn head(method: http::Method, path: &str) -> http::Request<()> {
    http::Request::builder()
        .method(method)
        .uri(format!("https://localhost{path}"))
        .header(header::CONTENT_TYPE, "application/octet-stream")
        .body(())
        .unwrap()
}

/// `parts` chunks of `size` bytes with `pause` before each but the first. The pauses make a
/// slow client; they synchronize nothing.
fn paced(parts: usize, size: usize, pause: Duration) -> Chunks {
    Box::pin(futures::stream::iter(0..parts).then(move |i| async move {
        if i > 0 {
            tokio::time::sleep(pause).await;
        }
        Bytes::from(vec![b'x'; size])
    }))
}

#[tokio::test]
async fn request_bodies_reach_the_backend_while_the_client_is_still_sending() {
    let first = FirstChunk::default();
    let stack = Stack::start(Backend::At(counting_backend(first.clone()).await)).await;
    let target = Target::of(&stack);
    // An upload and an ordinary API request alike.
    for path in ["/v1/media", "/v1/posts"] {
        for version in ALL_VERSIONS {
            let arrived = first.0.clone();
            // Invariant: the second chunk leaves only once the backend holds the first, so a
            // gateway that read the whole body before forwarding it would never answer.
            let body = futures::stream::once(async { Bytes::from(vec![b'a'; 16 * 1024]) }).chain(
                futures::stream::once(async move {
                    tokio::time::timeout(TIMEOUT, arrived.notified())
                        .await
                        .expect("the backend sees the first chunk before the second is sent");
                    Bytes::from(vec![b'b'; 16 * 1024])
                }),
            );
            let answer = client::send(
                &target,
                version,
                head(http::Method::POST, path),
                Box::pin(body),
            )
            .await;
            assert_eq!(answer.status, 200, "{path} over {version:?}");
            assert_eq!(
                answer.json().await["size"],
                32 * 1024,
                "{path} over {version:?}"
            );
        }
    }
}

#[tokio::test]
async fn an_upload_may_outlast_the_backend_timeout_while_its_body_flows() {
    let backend = counting_backend(FirstChunk::default()).await;
    let stack = Stack::builder()
        .backend(Backend::At(backend))
        .configure(|config| {
            config.http.backend_timeout = Duration::from_millis(300);
        })
        .start()
        .await;
    let target = Target::of(&stack);
    let pause = Duration::from_millis(250);
    for version in ALL_VERSIONS {
        // Four chunks over 750 ms: over the backend timeout, never idle for long.
        let answer = client::send(
            &target,
            version,
            head(http::Method::POST, "/v1/media"),
            paced(4, 1024, pause),
        )
        .await;
        assert_eq!(answer.status, 200, "{version:?}");
        assert_eq!(answer.json().await["size"], 4096, "{version:?}");
        // Every other request keeps the one deadline for the whole exchange.
        let answer = client::send(
            &target,
            version,
            head(http::Method::POST, "/v1/posts"),
            paced(4, 1024, pause),
        )
        .await;
        assert_eq!(answer.status, 504, "{version:?}");
        assert_eq!(answer.json().await["error"]["code"], "backend_timeout");
    }
}

#[tokio::test]
async fn an_upload_whose_client_goes_quiet_is_answered_408() {
    let backend = counting_backend(FirstChunk::default()).await;
    let stack = Stack::builder()
        .backend(Backend::At(backend))
        .configure(|config| {
            config.http.body_idle_timeout = Duration::from_millis(300);
        })
        .start()
        .await;
    let target = Target::of(&stack);
    // One chunk, then nothing, with the request still open.
    let quiet = || -> Chunks {
        Box::pin(
            futures::stream::once(async { Bytes::from_static(b"started") })
                .chain(futures::stream::pending()),
        )
    };
    for (method, path) in [
        (http::Method::POST, "/v1/media"),
        (http::Method::PATCH, "/v1/media/uploads/0192f0c4"),
    ] {
        for version in ALL_VERSIONS {
            let answer = client::send(&target, version, head(method.clone(), path), quiet()).await;
            assert_eq!(answer.status, 408, "{path} over {version:?}");
            assert_eq!(answer.json().await["error"]["code"], "body_timeout");
        }
    }
    // On HTTP/3 the transport ends a quiet body on any path, before the backend timeout.
    let answer = client::send(
        &target,
        Version::Http3,
        head(http::Method::POST, "/v1/posts"),
        quiet(),
    )
    .await;
    assert_eq!(answer.status, 408);
    assert_eq!(answer.json().await["error"]["code"], "body_timeout");
}

#[tokio::test]
async fn an_upload_the_backend_stops_reading_is_answered_504() {
    // Takes the request and never reads its body: the backend's buffers fill, then nothing
    // moves.
    let stalled = axum::Router::new().route(
        "/v1/media",
        post(|_request: Request| futures::future::pending::<()>()),
    );
    let backend = support::serve_router(stalled).await;
    let stack = Stack::builder()
        .backend(Backend::At(backend))
        .configure(|config| {
            config.http.body_idle_timeout = Duration::from_millis(300);
        })
        .start()
        .await;
    let target = Target::of(&stack);
    for version in ALL_VERSIONS {
        // As much as the gateway takes (the upload limit ends it otherwise).
        let endless = futures::stream::repeat(Bytes::from(vec![b'x'; 64 * 1024]));
        let answer = client::send(
            &target,
            version,
            head(http::Method::POST, "/v1/media"),
            Box::pin(endless),
        )
        .await;
        assert_eq!(answer.status, 504, "{version:?}");
        assert_eq!(answer.json().await["error"]["code"], "backend_timeout");
    }
}

#[tokio::test]
async fn uploads_have_their_own_body_limit_and_other_paths_keep_theirs() {
    let backend = counting_backend(FirstChunk::default()).await;
    let stack = Stack::builder()
        .backend(Backend::At(backend))
        .configure(|config| {
            config.http.max_body_bytes = 1_000;
            config.http.max_upload_bytes = 10_000;
        })
        .start()
        .await;
    let target = Target::of(&stack);
    let cases = [
        (http::Method::POST, "/v1/media", 10_000, 200),
        (http::Method::POST, "/v1/media", 10_001, 413),
        (
            http::Method::PATCH,
            "/v1/media/uploads/0192f0c4",
            10_000,
            200,
        ),
        (
            http::Method::PATCH,
            "/v1/media/uploads/0192f0c4",
            10_001,
            413,
        ),
        (http::Method::POST, "/v1/posts", 1_000, 200),
        (http::Method::POST, "/v1/posts", 1_001, 413),
        (http::Method::POST, "/v1/posts", 10_000, 413),
    ];
    for version in ALL_VERSIONS {
        for (method, path, size, status) in cases.clone() {
            // With a declared length (refused before the backend is asked) …
            let declared = http::Request::builder()
                .method(method.clone())
                .uri(format!("https://localhost{path}"))
                .header(header::CONTENT_LENGTH, size)
                .body(Full::new(Bytes::from(vec![b'x'; size])))
                .unwrap();
            let reply = support::request(&stack, version, declared).await;
            assert_eq!(
                reply.status, status,
                "{method} {path} {size} B over {version:?}"
            );
            // … and without one (counted as it flows), in 1,000-byte chunks.
            let parts = (0..size.div_ceil(1_000))
                .map(|i| Bytes::from(vec![b'x'; 1_000.min(size - i * 1_000)]))
                .collect();
            let answer = client::send(
                &target,
                version,
                head(method.clone(), path),
                client::chunks(parts),
            )
            .await;
            assert_eq!(
                answer.status, status,
                "{method} {path} {size} B streamed over {version:?}"
            );
            if status == 413 {
                assert_eq!(answer.json().await["error"]["code"], "body_too_large");
            } else {
                assert_eq!(answer.json().await["size"], size);
            }
        }
    }
}

#[tokio::test]
async fn routes_the_gateway_serves_itself_keep_the_body_limit() {
    let stack = Stack::builder()
        .backend(Backend::Down)
        .configure(|config| {
            config.http.max_body_bytes = 1_000;
        })
        .start()
        .await;
    for version in ALL_VERSIONS {
        for (size, status) in [(1_000, 404), (1_001, 413)] {
            let request = http::Request::post("https://localhost/no/such/page")
                .header(header::CONTENT_LENGTH, size)
                .body(Full::new(Bytes::from(vec![b'x'; size])))
                .unwrap();
            let reply = support::request(&stack, version, request).await;
            assert_eq!(reply.status, status, "{size} B over {version:?}");
            if status == 413 {
                assert_eq!(reply.json()["error"]["code"], "body_too_large");
            }
        }
    }
}

/// The bytes the download backend serves.
fn media_bytes() -> Bytes {
    Bytes::from((0..1_000u32).map(|i| (i % 251) as u8).collect::<Vec<_>>())
}

const ETAG: &str = "\"5d41402abc4b2a76b9719d911017c592\"";
const CACHE_CONTROL: &str = "private, max-age=31536000, immutable";
const DISPOSITION: &str = "attachment; filename=\"a b.bin\"; filename*=UTF-8''a%20b.bin";

/// Answers like the media download route: `Range` of one `bytes=a-b`, `If-Range`,
/// `If-None-Match`. Echoes the conditional headers it got in `x-seen-*`.
async fn download(headers: HeaderMap) -> Response {
    let bytes = media_bytes();
    let seen = |name: header::HeaderName| {
        headers
            .get(&name)
            .map_or_else(String::new, |v| v.to_str().unwrap_or_default().to_owned())
    };
    let common = [
        (header::ETAG, ETAG.to_owned()),
        (header::ACCEPT_RANGES, "bytes".to_owned()),
        (header::CACHE_CONTROL, CACHE_CONTROL.to_owned()),
        (
            header::HeaderName::from_static("x-seen-range"),
            seen(header::RANGE),
        ),
        (
            header::HeaderName::from_static("x-seen-if-range"),
            seen(header::IF_RANGE),
        ),
    ];
    if seen(header::IF_NONE_MATCH) == ETAG {
        return (StatusCode::NOT_MODIFIED, common).into_response();
    }
    let range = seen(header::RANGE)
        .strip_prefix("bytes=")
        .and_then(|r| r.split_once('-'))
        .and_then(|(a, b)| Some((a.parse::<usize>().ok()?, b.parse::<usize>().ok()?)))
        .filter(|_| seen(header::IF_RANGE).is_empty() || seen(header::IF_RANGE) == ETAG);
    let disposition = [
        (header::CONTENT_TYPE, "application/octet-stream"),
        (header::CONTENT_DISPOSITION, DISPOSITION),
    ];
    match range {
        Some((first, last)) => (
            StatusCode::PARTIAL_CONTENT,
            common,
            disposition,
            [(
                header::CONTENT_RANGE,
                format!("bytes {first}-{last}/{}", bytes.len()),
            )],
            bytes.slice(first..=last),
        )
            .into_response(),
        None => (StatusCode::OK, common, disposition, bytes).into_response(),
    }
}

#[tokio::test]
async fn download_headers_ranges_and_bytes_pass_unchanged_on_every_http_version() {
    let backend =
        support::serve_router(axum::Router::new().route("/v1/media/{id}", get(download))).await;
    let stack = Stack::start(Backend::At(backend)).await;
    let target = Target::of(&stack);
    let all = media_bytes();
    let request = |method: http::Method, headers: &[(&str, &str)]| {
        let mut request = head(method, "/v1/media/0192f0c4?exp=1700000000&sig=abc");
        request.headers_mut().remove(header::CONTENT_TYPE);
        for (name, value) in headers {
            let name = http::HeaderName::from_bytes(name.as_bytes()).unwrap();
            request.headers_mut().insert(name, value.parse().unwrap());
        }
        request
    };
    for version in ALL_VERSIONS {
        let send = |request| client::send(&target, version, request, client::chunks(Vec::new()));

        let range = send(request(http::Method::GET, &[("range", "bytes=100-199")])).await;
        assert_eq!(range.status, 206, "{version:?}");
        let expect = [
            ("content-range", "bytes 100-199/1000"),
            ("content-length", "100"),
            ("accept-ranges", "bytes"),
            ("etag", ETAG),
            ("cache-control", CACHE_CONTROL),
            ("content-disposition", DISPOSITION),
            ("content-type", "application/octet-stream"),
            ("x-seen-range", "bytes=100-199"),
        ];
        for (name, value) in expect {
            assert_eq!(range.headers[name], value, "{name} over {version:?}");
        }
        assert!(
            range.headers.get("content-encoding").is_none(),
            "{version:?}"
        );
        assert_eq!(range.bytes().await, all.slice(100..200), "{version:?}");

        // If-Range with the current tag: the range; with another: everything.
        let current = send(request(
            http::Method::GET,
            &[("range", "bytes=0-9"), ("if-range", ETAG)],
        ))
        .await;
        assert_eq!(current.status, 206, "{version:?}");
        assert_eq!(current.headers["x-seen-if-range"], ETAG, "{version:?}");
        assert_eq!(current.bytes().await, all.slice(0..10), "{version:?}");
        let stale = send(request(
            http::Method::GET,
            &[("range", "bytes=0-9"), ("if-range", "\"old\"")],
        ))
        .await;
        assert_eq!(stale.status, 200, "{version:?}");
        assert_eq!(stale.bytes().await, all, "{version:?}");

        let cached = send(request(http::Method::GET, &[("if-none-match", ETAG)])).await;
        assert_eq!(cached.status, 304, "{version:?}");
        assert_eq!(cached.headers["etag"], ETAG, "{version:?}");
        assert_eq!(
            cached.headers["cache-control"], CACHE_CONTROL,
            "{version:?}"
        );
        assert!(cached.bytes().await.is_empty(), "{version:?}");

        let headed = send(request(http::Method::HEAD, &[])).await;
        assert_eq!(headed.status, 200, "{version:?}");
        assert_eq!(headed.headers["content-length"], "1000", "{version:?}");
        assert_eq!(headed.headers["etag"], ETAG, "{version:?}");
        assert!(headed.bytes().await.is_empty(), "{version:?}");
    }
}

#[tokio::test]
async fn answer_bodies_reach_the_client_while_the_backend_is_still_writing() {
    let taken = Arc::new(Notify::new());
    let backend_taken = taken.clone();
    let router = axum::Router::new().route(
        "/v1/media/{id}",
        get(move || {
            let taken = backend_taken.clone();
            async move {
                // Invariant: the second chunk is written only once the client holds the
                // first, so a gateway that buffered the answer would never deliver it.
                let body = futures::stream::once(async { Bytes::from(vec![b'a'; 1024]) }).chain(
                    futures::stream::once(async move {
                        tokio::time::timeout(TIMEOUT, taken.notified())
                            .await
                            .expect("the client sees the first chunk before the second");
                        Bytes::from(vec![b'b'; 1024])
                    }),
                );
                axum::body::Body::from_stream(body.map(Ok::<_, std::convert::Infallible>))
            }
        }),
    );
    let stack = Stack::start(Backend::At(support::serve_router(router).await)).await;
    let target = Target::of(&stack);
    for version in ALL_VERSIONS {
        let mut answer = client::send(
            &target,
            version,
            head(http::Method::GET, "/v1/media/0192f0c4"),
            client::chunks(Vec::new()),
        )
        .await;
        assert_eq!(answer.status, 200, "{version:?}");
        let mut seen = Vec::new();
        while seen.len() < 1024 {
            let chunk = tokio::time::timeout(TIMEOUT, answer.body.next())
                .await
                .expect("the first chunk in time")
                .expect("a first chunk")
                .expect("a whole chunk");
            seen.extend_from_slice(&chunk);
        }
        taken.notify_one();
        seen.extend_from_slice(&answer.bytes().await);
        assert_eq!(seen.len(), 2048, "{version:?}");
        assert!(seen[..1024].iter().all(|&b| b == b'a'), "{version:?}");
        assert!(seen[1024..].iter().all(|&b| b == b'b'), "{version:?}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_100_mib_upload_passes_through_without_the_gateway_holding_it() {
    const CHUNK: usize = 256 * 1024;
    const CHUNKS: usize = 400;
    let backend = counting_backend(FirstChunk::default()).await;
    let stack = Stack::start(Backend::At(backend)).await;
    let target = Target::of(&stack);
    for version in ALL_VERSIONS {
        // This test process holds client, gateway and backend: the backend counts and drops
        // each chunk, the client sends one shared chunk again and again, so what grows is
        // what the gateway (or a transport) holds.
        let peak = Peak::start(Process::current());
        let body = futures::stream::repeat(Bytes::from(vec![b'x'; CHUNK])).take(CHUNKS);
        let answer = client::send_within(
            &target,
            version,
            head(http::Method::POST, "/v1/media"),
            Box::pin(body),
            Duration::from_secs(300),
        )
        .await;
        assert_eq!(answer.status, 200, "{version:?}");
        assert_eq!(answer.json().await["size"], CHUNK * CHUNKS, "{version:?}");
        let (baseline, peak) = peak.stop().await;
        eprintln!(
            "{version:?}: RSS {:.1} -> peak {:.1} MiB (+{:.1})",
            mib(baseline),
            mib(peak),
            mib(peak - baseline)
        );
        assert!(
            peak - baseline < RSS_GROWTH_LIMIT,
            "{version:?}: grew by {:.1} MiB",
            mib(peak - baseline)
        );
    }
}

/// 8 MiB served by ranges, with the headers the media route sends.
async fn ranges(State(file): State<Bytes>, headers: HeaderMap) -> Response {
    let range = headers
        .get(header::RANGE)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("bytes="))
        .and_then(|r| r.split_once('-'))
        .and_then(|(a, b)| Some((a.parse::<usize>().ok()?, b.parse::<usize>().ok()?)));
    let Some((first, last)) = range else {
        return StatusCode::BAD_REQUEST.into_response();
    };
    (
        StatusCode::PARTIAL_CONTENT,
        [
            (header::ETAG, ETAG.to_owned()),
            (header::ACCEPT_RANGES, "bytes".to_owned()),
            (header::CACHE_CONTROL, CACHE_CONTROL.to_owned()),
            (header::CONTENT_TYPE, "application/octet-stream".to_owned()),
            (header::CONTENT_DISPOSITION, DISPOSITION.to_owned()),
            (
                header::CONTENT_RANGE,
                format!("bytes {first}-{last}/{}", file.len()),
            ),
        ],
        file.slice(first..=last),
    )
        .into_response()
}

/// Regression: clients that hold one HTTP/2 connection and read range after range (browsers,
/// the app). HPACK's table kept the header values of past answers, each a slice of a backend
/// read buffer of up to ~400 KiB, so every reader pinned megabytes: 32 of them held 500 MiB
/// in the gateway.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn range_reads_on_long_lived_http2_connections_do_not_pin_memory() {
    const READERS: usize = 16;
    const READS: usize = 24;
    const RANGE: usize = 1 << 20;
    let file = Bytes::from(
        (0..8 << 20)
            .map(|i: u32| (i % 253) as u8)
            .collect::<Vec<_>>(),
    );
    let router = axum::Router::new()
        .route("/v1/media/{id}", get(ranges))
        .with_state(file.clone());
    let stack = Stack::start(Backend::At(support::serve_router(router).await)).await;
    let target = Target::of(&stack);
    let peak = Peak::start(Process::current());
    let mut connections = Vec::new();
    for _ in 0..READERS {
        connections.push(H2Connection::open(&target).await);
    }
    let readers: Vec<_> = connections
        .into_iter()
        .enumerate()
        .map(|(reader, mut connection)| {
            let file = file.clone();
            tokio::spawn(async move {
                for read in 0..READS {
                    let first = (reader * READS + read) * 99_991 % (file.len() - RANGE);
                    let range = format!("bytes={first}-{}", first + RANGE - 1);
                    let mut request = head(http::Method::GET, "/v1/media/0192f0c4");
                    request
                        .headers_mut()
                        .insert(header::RANGE, range.parse().unwrap());
                    let answer = connection.send(request).await;
                    assert_eq!(answer.status, 206, "{range}");
                    assert!(
                        answer.bytes().await == file.slice(first..first + RANGE),
                        "{range}"
                    );
                }
                // Still open: what the connection holds is counted.
                connection
            })
        })
        .collect();
    let mut open = Vec::new();
    for reader in readers {
        open.push(reader.await.unwrap());
    }
    let (baseline, peak) = peak.stop().await;
    eprintln!(
        "{READERS} readers x {READS} ranges of {RANGE} B: RSS {:.1} -> peak {:.1} MiB (+{:.1})",
        mib(baseline),
        mib(peak),
        mib(peak - baseline)
    );
    assert!(
        peak - baseline < RSS_GROWTH_LIMIT,
        "grew by {:.1} MiB",
        mib(peak - baseline)
    );
    drop(open);
}
