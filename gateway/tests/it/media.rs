//! Media through the stack `./dev up` runs (release gateway, the real backend and its media
//! store): a 100 MB upload streams through on HTTP/1.1, HTTP/2 and HTTP/3 without the gateway
//! or the backend holding it in memory, is stored whole (size and SHA-256), and comes back
//! byte-exact by range on every version, with a token or a signed link.
//!
//! The memory bound is measured on the real processes (their pids are in `.dev/run`), not on
//! this test process, which holds an in-process gateway for other tests.

use std::time::Duration;

use bytes::Bytes;
use futures::StreamExt;
use serde_json::json;

use crate::client::{self, Chunks, Target};
use crate::memory::{Peak, Process, RSS_GROWTH_LIMIT, mib};
use crate::support::{ALL_VERSIONS, Version};

/// The backend's limit for `kind=file`, the one kind that takes arbitrary bytes.
const UPLOAD_BYTES: u64 = haberci_backend::media::process::DEFAULT_FILE_BYTES;
/// A bound on one upload's answer, far above what loopback needs: a hung stack fails the
/// test instead of holding it.
const UPLOAD_TIMEOUT: Duration = Duration::from_secs(300);
/// Upload chunks: what a client's write calls might hand over.
const CHUNK_BYTES: u64 = 256 * 1024;

/// Byte `offset` of the deterministic test file number `seed`: position-addressable, so any
/// range can be checked without keeping the file.
fn word(seed: u64, index: u64) -> u64 {
    // splitmix64
    let mut z = seed
        .wrapping_mul(0x9E37_79B9_7F4A_7C15)
        .wrapping_add(index.wrapping_mul(0xBF58_476D_1CE4_E5B9));
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// The bytes `range` of test file `seed`.
fn file_bytes(seed: u64, range: std::ops::Range<u64>) -> Vec<u8> {
    // The file starts with plain text, so no signature sniffing can take it for an
    // executable.
    const HEADER: &[u8] = b"haberci gateway streaming test file\n";
    range
        .map(|offset| match HEADER.get(offset as usize) {
            Some(&byte) => byte,
            None => word(seed, offset / 8).to_le_bytes()[(offset % 8) as usize],
        })
        .collect()
}

/// Test file `seed`, `size` bytes, as upload chunks, generated as they are sent.
fn file_chunks(seed: u64, size: u64) -> Chunks {
    Box::pin(
        futures::stream::iter((0..size).step_by(CHUNK_BYTES as usize)).map(move |start| {
            Bytes::from(file_bytes(seed, start..(start + CHUNK_BYTES).min(size)))
        }),
    )
}

fn sha256_hex(seed: u64, size: u64) -> String {
    let mut digest = ring::digest::Context::new(&ring::digest::SHA256);
    let mut start = 0;
    while start < size {
        let end = (start + 4 * CHUNK_BYTES).min(size);
        digest.update(&file_bytes(seed, start..end));
        start = end;
    }
    digest
        .finish()
        .as_ref()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// A new account on the dev stack; its access token.
async fn register(target: &Target) -> String {
    let name = format!("gwm_{}", &uuid::Uuid::new_v4().simple().to_string()[..16]);
    let body = json!({
        "username": name,
        "email": format!("{name}@example.com"),
        "password": "correct horse battery staple",
        "displayName": "Media",
    });
    let request = http::Request::post("https://localhost/v1/auth/register")
        .header("content-type", "application/json")
        .body(())
        .unwrap();
    let answer = client::send(
        target,
        Version::Http2,
        request,
        client::chunks(vec![Bytes::from(body.to_string())]),
    )
    .await;
    assert_eq!(answer.status, 201, "register");
    let json = answer.json().await;
    json["tokens"]["accessToken"]
        .as_str()
        .expect("an access token")
        .to_owned()
}

fn get(path: &str, token: Option<&str>, range: &str) -> http::Request<()> {
    let mut request = http::Request::get(format!("https://localhost{path}"))
        .header("range", range)
        .body(())
        .unwrap();
    if let Some(token) = token {
        request
            .headers_mut()
            .insert("authorization", format!("Bearer {token}").parse().unwrap());
    }
    request
}

#[tokio::test]
async fn a_100_mb_upload_streams_through_every_http_version_and_comes_back_by_range() {
    let target = Target::dev_stack();
    let token = register(&target).await;
    for (seed, version) in (1u64..).zip(ALL_VERSIONS) {
        let mut upload = http::Request::post(format!(
            "https://localhost/v1/media?kind=file&filename=stream-{seed}.bin"
        ))
        .header("authorization", format!("Bearer {token}"))
        .header("content-type", "application/octet-stream")
        .body(())
        .unwrap();
        // HTTP/2 goes without a declared length (the gateway forwards it chunked); the
        // others declare it, as browsers do.
        if version != Version::Http2 {
            upload
                .headers_mut()
                .insert("content-length", UPLOAD_BYTES.into());
        }
        let gateway = Peak::start(Process::dev_service("gateway", "haberci-gateway"));
        let api = Peak::start(Process::dev_service("api", "haberci-backend"));
        // Printed for the record, never asserted on.
        let started = std::time::Instant::now();
        let answer = client::send_within(
            &target,
            version,
            upload,
            file_chunks(seed, UPLOAD_BYTES),
            UPLOAD_TIMEOUT,
        )
        .await;
        let status = answer.status;
        let stored = answer.json().await;
        let took = started.elapsed();
        let (gateway, api) = (gateway.stop().await, api.stop().await);
        eprintln!(
            "{version:?}: {UPLOAD_BYTES} B in {took:.1?}; gateway RSS {:.1} -> peak {:.1} MiB (+{:.1}); api RSS {:.1} -> peak {:.1} MiB (+{:.1})",
            mib(gateway.0),
            mib(gateway.1),
            mib(gateway.1 - gateway.0),
            mib(api.0),
            mib(api.1),
            mib(api.1 - api.0),
        );
        assert_eq!(status, 201, "{version:?}: {stored}");
        assert_eq!(stored["size"], UPLOAD_BYTES, "{version:?}");
        assert_eq!(
            stored["sha256"],
            sha256_hex(seed, UPLOAD_BYTES),
            "{version:?}"
        );
        assert!(
            gateway.1 - gateway.0 < RSS_GROWTH_LIMIT,
            "{version:?}: the gateway grew by {:.1} MiB",
            mib(gateway.1 - gateway.0)
        );
        assert!(
            api.1 - api.0 < RSS_GROWTH_LIMIT,
            "{version:?}: the api grew by {:.1} MiB",
            mib(api.1 - api.0)
        );

        // Back by range on every version: with the token, and by the signed link alone.
        let id = stored["id"].as_str().expect("an id").to_owned();
        let link = stored["url"].as_str().expect("a signed link").to_owned();
        let ranges = [
            (0, 1 << 20),
            (UPLOAD_BYTES / 2 - 12_345, UPLOAD_BYTES / 2 + (3 << 20)),
            (UPLOAD_BYTES - 1_000, UPLOAD_BYTES),
        ];
        let etag = format!("\"{}\"", stored["sha256"].as_str().unwrap_or_default());
        for reader in ALL_VERSIONS {
            // HEAD: the headers of the whole file, no body.
            let mut head = get(&link, None, "");
            *head.method_mut() = http::Method::HEAD;
            head.headers_mut().remove("range");
            let answer = client::send(&target, reader, head, client::chunks(Vec::new())).await;
            assert_eq!(answer.status, 200, "HEAD over {reader:?}");
            assert_eq!(
                answer.headers["content-length"],
                UPLOAD_BYTES.to_string().as_str(),
                "HEAD over {reader:?}"
            );
            assert_eq!(
                answer.headers["etag"],
                etag.as_str(),
                "HEAD over {reader:?}"
            );
            assert!(answer.bytes().await.is_empty(), "HEAD over {reader:?}");
            // A cached copy is confirmed without the bytes.
            let mut cached = get(&format!("/v1/media/{id}"), Some(&token), "");
            cached.headers_mut().remove("range");
            cached
                .headers_mut()
                .insert("if-none-match", etag.parse().unwrap());
            let answer = client::send(&target, reader, cached, client::chunks(Vec::new())).await;
            assert_eq!(answer.status, 304, "If-None-Match over {reader:?}");
            assert!(answer.bytes().await.is_empty(), "304 over {reader:?}");
            for (i, &(first, end)) in ranges.iter().enumerate() {
                let range = format!("bytes={first}-{}", end - 1);
                let request = if i % 2 == 0 {
                    get(&format!("/v1/media/{id}"), Some(&token), &range)
                } else {
                    get(&link, None, &range)
                };
                let answer =
                    client::send(&target, reader, request, client::chunks(Vec::new())).await;
                let what = format!("{range} of the {version:?} upload over {reader:?}");
                assert_eq!(answer.status, 206, "{what}");
                assert_eq!(
                    answer.headers["content-range"],
                    format!("bytes {first}-{}/{UPLOAD_BYTES}", end - 1).as_str(),
                    "{what}"
                );
                assert_eq!(answer.headers["accept-ranges"], "bytes", "{what}");
                assert_eq!(answer.headers["etag"], etag.as_str(), "{what}");
                assert!(answer.headers.get("content-encoding").is_none(), "{what}");
                let bytes = answer.bytes().await;
                assert!(
                    bytes[..] == file_bytes(seed, first..end)[..],
                    "{what}: other bytes"
                );
            }
        }
    }
}
