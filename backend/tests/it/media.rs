//! Media over the API router, against real Postgres, real ffmpeg, and both stores: a local
//! directory and the S3 server `./dev test` starts. Every refused upload is checked to leave
//! nothing behind (no row, no staging file).

use std::io::Cursor;
use std::time::Duration;

use axum::body::Body;
use http::{Request, StatusCode};
use serde_json::json;
use sha2::{Digest, Sha256};

use haberci_backend::config::ApiSettings;
use haberci_backend::media::storage::ObjectKey;
use haberci_backend::media::{S3Config, Storage, StoreConfig};

use crate::env;
use crate::support::{Api, TempDir, User, roomy_settings};

/// The two stores every media test runs on.
fn stores(dir: &TempDir) -> Vec<(&'static str, StoreConfig)> {
    vec![
        ("file", StoreConfig::Local(dir.0.join("objects"))),
        (
            "s3",
            StoreConfig::S3(S3Config {
                bucket: env("HABERCI_TEST_S3_BUCKET"),
                endpoint: Some(env("HABERCI_TEST_S3_ENDPOINT")),
                region: env("HABERCI_TEST_S3_REGION"),
                access_key_id: env("HABERCI_TEST_S3_ACCESS_KEY_ID"),
                secret_access_key: env("HABERCI_TEST_S3_SECRET_ACCESS_KEY"),
            }),
        ),
    ]
}

fn settings(dir: &TempDir, store: StoreConfig) -> ApiSettings {
    haberci_kit::crypto::install_crypto_provider();
    let mut settings = roomy_settings();
    settings.media.store = store;
    settings.media.staging_dir = dir.0.join("staging");
    settings
}

fn staging_files(dir: &TempDir) -> usize {
    std::fs::read_dir(dir.0.join("staging"))
        .map(|d| d.count())
        .unwrap_or(0)
}

async fn media_rows(api: &Api, user: &User) -> i64 {
    sqlx::query_scalar("SELECT count(*) FROM media WHERE owner_id = $1")
        .bind(user.id)
        .fetch_one(&api.state.db)
        .await
        .unwrap()
}

/// A photo-like JPEG: a gradient, `w`×`h`.
fn jpeg(w: u32, h: u32) -> Vec<u8> {
    let img = image::RgbImage::from_fn(w, h, |x, y| {
        image::Rgb([
            (x * 255 / w) as u8,
            (y * 255 / h) as u8,
            ((x + y) % 256) as u8,
        ])
    });
    let mut out = Cursor::new(Vec::new());
    image::DynamicImage::ImageRgb8(img)
        .write_to(&mut out, image::ImageFormat::Jpeg)
        .unwrap();
    out.into_inner()
}

/// A PNG whose header claims 100000×100000 pixels in a few bytes: a decompression bomb.
fn png_bomb() -> Vec<u8> {
    let mut png = Cursor::new(Vec::new());
    image::DynamicImage::new_rgb8(1, 1)
        .write_to(&mut png, image::ImageFormat::Png)
        .unwrap();
    let mut png = png.into_inner();
    // IHDR data starts at 16: width, height (big endian); its CRC follows the 13 data bytes.
    png[16..20].copy_from_slice(&100_000u32.to_be_bytes());
    png[20..24].copy_from_slice(&100_000u32.to_be_bytes());
    let crc = crc32(&png[12..29]);
    png[29..33].copy_from_slice(&crc.to_be_bytes());
    png
}

fn crc32(bytes: &[u8]) -> u32 {
    let mut crc = 0xffff_ffffu32;
    for &b in bytes {
        crc ^= u32::from(b);
        for _ in 0..8 {
            crc = if crc & 1 == 1 {
                (crc >> 1) ^ 0xedb8_8320
            } else {
                crc >> 1
            };
        }
    }
    !crc
}

/// Stores a file message from `from` to `to` carrying `media`, as the worker would.
async fn attach_to_message(api: &Api, from: &User, to: &User, media: uuid::Uuid) {
    let conversation = crate::support::direct_conversation(&api.state.db, from.id, to.id).await;
    sqlx::query(
        "INSERT INTO messages (conversation_id, seq, id, sender_id, client_msg_id, type, content, media_id)
         VALUES ($1, 1, $2, $3, $4, 'file', '', $5)",
    )
    .bind(conversation)
    .bind(uuid::Uuid::now_v7())
    .bind(from.id)
    .bind(uuid::Uuid::new_v4())
    .bind(media)
    .execute(&api.state.db)
    .await
    .unwrap();
}

async fn upload(api: &Api, token: &str, query: &str, bytes: Vec<u8>) -> crate::support::Reply {
    let request = Request::post(format!("/v1/media{query}"))
        .header("authorization", format!("Bearer {token}"))
        .header("content-type", "application/octet-stream")
        .body(Body::from(bytes))
        .unwrap();
    api.send(request).await
}

async fn fetch(
    api: &Api,
    path: &str,
    token: Option<&str>,
    headers: &[(&str, &str)],
) -> (StatusCode, http::HeaderMap, Vec<u8>) {
    let mut request = Request::get(path);
    if let Some(token) = token {
        request = request.header("authorization", format!("Bearer {token}"));
    }
    for (name, value) in headers {
        request = request.header(*name, *value);
    }
    api.send_raw(request.body(Body::empty()).unwrap()).await
}

#[tokio::test]
async fn both_stores_put_get_range_and_delete_the_same_way() {
    let dir = TempDir::new("haberci-media-store");
    haberci_kit::crypto::install_crypto_provider();
    for (name, config) in stores(&dir) {
        let storage = Storage::open(&config).unwrap();
        // Above the multipart part size, so the S3 path uploads in parts.
        let big: Vec<u8> = (0..20 * 1024 * 1024u32).map(|i| (i % 251) as u8).collect();
        let key = ObjectKey(Sha256::digest(&big).into());
        let path = dir.0.join(format!("{name}.bin"));
        std::fs::create_dir_all(&dir.0).unwrap();
        std::fs::write(&path, &big).unwrap();
        storage.put_file(key, &path).await.unwrap();
        assert!(storage.exists(key).await.unwrap(), "{name}");
        let part = storage.get(key, Some(1000..2000)).await.unwrap();
        assert_eq!(
            (part.size, part.range.clone()),
            (big.len() as u64, 1000..2000),
            "{name}"
        );
        let parts: Vec<bytes::Bytes> = futures::TryStreamExt::try_collect(part.body).await.unwrap();
        let bytes = parts.concat();
        assert_eq!(bytes, big[1000..2000], "{name}");
        assert_eq!(storage.read(key).await.unwrap().len(), big.len(), "{name}");

        let small = ObjectKey(Sha256::digest(b"small").into());
        storage.put_bytes(small, b"small".to_vec()).await.unwrap();
        assert_eq!(&storage.read(small).await.unwrap()[..], b"small", "{name}");

        storage.delete(key).await.unwrap();
        storage.delete(small).await.unwrap();
        assert!(!storage.exists(key).await.unwrap(), "{name}");
        storage.delete(key).await.unwrap(); // deleting what is gone succeeds
        assert!(storage.get(key, None).await.is_err(), "{name}");
    }
}

#[tokio::test]
async fn an_image_is_stored_processed_and_served_with_ranges_etags_and_signed_links() {
    let dir = TempDir::new("haberci-media-image");
    for (name, store) in stores(&dir) {
        let api = Api::with_settings(settings(&dir, store));
        let alice = api.user().await;
        let photo = jpeg(1600, 900);
        let reply = upload(
            &api,
            &alice.token,
            "?kind=image&filename=../beach.jpg",
            photo,
        )
        .await;
        assert_eq!(reply.status, StatusCode::CREATED, "{name}: {}", reply.json);
        let m = &reply.json;
        assert_eq!(m["kind"], "image", "{name}");
        assert_eq!(m["contentType"], "image/jpeg", "{name}");
        assert_eq!(
            (m["width"].as_i64(), m["height"].as_i64()),
            (Some(1600), Some(900))
        );
        assert_eq!(m["filename"], "beach.jpg", "{name}: the path is dropped");
        assert!(
            m["blurhash"].as_str().is_some_and(|b| b.len() >= 6),
            "{name}"
        );
        let id = m["id"].as_str().unwrap().to_owned();

        // The owner reads it with a token; the bytes are what the sha256 says.
        let (status, headers, bytes) =
            fetch(&api, &format!("/v1/media/{id}"), Some(&alice.token), &[]).await;
        assert_eq!(status, StatusCode::OK, "{name}");
        assert_eq!(
            hex::encode(Sha256::digest(&bytes)),
            m["sha256"].as_str().unwrap()
        );
        assert_eq!(bytes.len() as i64, m["size"].as_i64().unwrap());
        let etag = headers["etag"].to_str().unwrap().to_owned();
        assert_eq!(headers["accept-ranges"], "bytes");
        assert!(
            headers["cache-control"]
                .to_str()
                .unwrap()
                .contains("immutable")
        );

        // A range; a suffix range; beyond the end; If-None-Match.
        let (status, headers, part) = fetch(
            &api,
            &format!("/v1/media/{id}"),
            Some(&alice.token),
            &[("range", "bytes=10-19")],
        )
        .await;
        assert_eq!(status, StatusCode::PARTIAL_CONTENT, "{name}");
        assert_eq!(part, bytes[10..20]);
        assert_eq!(
            headers["content-range"].to_str().unwrap(),
            format!("bytes 10-19/{}", bytes.len())
        );
        let beyond = format!("bytes={}-", bytes.len());
        let (status, headers, _) = fetch(
            &api,
            &format!("/v1/media/{id}"),
            Some(&alice.token),
            &[("range", beyond.as_str())],
        )
        .await;
        assert_eq!(status, StatusCode::RANGE_NOT_SATISFIABLE, "{name}");
        assert_eq!(
            headers["content-range"].to_str().unwrap(),
            format!("bytes */{}", bytes.len())
        );
        let (status, _, body) = fetch(
            &api,
            &format!("/v1/media/{id}"),
            Some(&alice.token),
            &[("if-none-match", etag.as_str())],
        )
        .await;
        assert_eq!(
            (status, body.len()),
            (StatusCode::NOT_MODIFIED, 0),
            "{name}"
        );

        // The signed links work without a header; the thumbnail is a small JPEG.
        let thumb_url = m["thumbUrl"].as_str().unwrap();
        let (status, headers, thumb) = fetch(&api, thumb_url, None, &[]).await;
        assert_eq!(status, StatusCode::OK, "{name}");
        assert_eq!(headers["content-type"], "image/jpeg");
        let decoded = image::load_from_memory(&thumb).unwrap();
        assert!(decoded.width() <= 320 && decoded.height() <= 320);
        let (status, _, full) = fetch(&api, m["url"].as_str().unwrap(), None, &[]).await;
        assert_eq!((status, full), (StatusCode::OK, bytes.clone()), "{name}");
        let preview = m["previewUrl"].as_str().unwrap();
        let (status, _, preview) = fetch(&api, preview, None, &[]).await;
        assert_eq!(status, StatusCode::OK, "{name}");
        assert!(image::load_from_memory(&preview).unwrap().width() <= 1280);

        // The same bytes again: a new media row, one object.
        let again = upload(&api, &alice.token, "?kind=image", jpeg(1600, 900)).await;
        assert_eq!(again.status, StatusCode::CREATED);
        assert_eq!(again.json["sha256"], m["sha256"]);
        assert_ne!(again.json["id"], m["id"]);
        let objects: i64 =
            sqlx::query_scalar("SELECT count(*) FROM media_objects WHERE sha256 = $1")
                .bind(hex::decode(m["sha256"].as_str().unwrap()).unwrap())
                .fetch_one(&api.state.db)
                .await
                .unwrap();
        assert_eq!(objects, 1, "{name}");
        assert_eq!(staging_files(&dir), 0, "{name}: staging is emptied");
    }
}

#[tokio::test]
async fn bad_uploads_are_refused_with_their_code_and_leave_nothing() {
    let dir = TempDir::new("haberci-media-bad");
    let mut settings = settings(&dir, StoreConfig::Local(dir.0.join("objects")));
    settings.media.limits.image_bytes = 200_000;
    let api = Api::with_settings(settings);
    let alice = api.user().await;
    let mut elf = b"\x7fELF\x02\x01\x01\0\0\0\0\0\0\0\0\0".to_vec();
    elf.resize(4096, 0);
    let mut truncated = jpeg(400, 300);
    truncated.truncate(truncated.len() / 3);
    let cases: Vec<(&str, Vec<u8>, StatusCode, &str)> = vec![
        (
            "?kind=image",
            elf.clone(),
            StatusCode::UNPROCESSABLE_ENTITY,
            "media_type_mismatch",
        ),
        (
            "?kind=file",
            elf,
            StatusCode::UNPROCESSABLE_ENTITY,
            "media_executable",
        ),
        (
            "?kind=image",
            png_bomb(),
            StatusCode::UNPROCESSABLE_ENTITY,
            "media_dimensions_too_large",
        ),
        (
            "?kind=image",
            truncated,
            StatusCode::UNPROCESSABLE_ENTITY,
            "media_corrupt",
        ),
        (
            "?kind=image",
            vec![0xff; 300_000],
            StatusCode::PAYLOAD_TOO_LARGE,
            "media_too_large",
        ),
        (
            "?kind=video",
            jpeg(64, 64),
            StatusCode::UNPROCESSABLE_ENTITY,
            "media_type_mismatch",
        ),
        (
            "?kind=sticker",
            jpeg(64, 64),
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid_field",
        ),
    ];
    for (query, bytes, status, code) in cases {
        let reply = upload(&api, &alice.token, query, bytes).await;
        assert_eq!(
            (reply.status, reply.code()),
            (status, code),
            "{query}: {}",
            reply.json
        );
        assert!(!reply.json["error"]["message"].as_str().unwrap().is_empty());
    }
    assert_eq!(media_rows(&api, &alice).await, 0);
    assert_eq!(staging_files(&dir), 0);

    // Without a token: 401, nothing read.
    let request = Request::post("/v1/media?kind=image")
        .body(Body::from(jpeg(10, 10)))
        .unwrap();
    assert_eq!(api.send(request).await.status, StatusCode::UNAUTHORIZED);
}

#[tokio::test]
async fn the_quota_counts_what_an_account_stored() {
    let dir = TempDir::new("haberci-media-quota");
    let mut settings = settings(&dir, StoreConfig::Local(dir.0.join("objects")));
    let photo = jpeg(300, 200);
    settings.media.quota_bytes = photo.len() as u64 * 3 / 2;
    let api = Api::with_settings(settings);
    let alice = api.user().await;
    assert_eq!(
        upload(&api, &alice.token, "?kind=file", photo.clone())
            .await
            .status,
        StatusCode::CREATED
    );
    let reply = upload(&api, &alice.token, "?kind=file", photo.clone()).await;
    assert_eq!(
        (reply.status, reply.code()),
        (StatusCode::PAYLOAD_TOO_LARGE, "media_quota_exceeded")
    );
    assert_eq!(media_rows(&api, &alice).await, 1);

    // A resumable upload that fits is counted once when it finishes, not twice (as stored
    // and as still in progress); one that does not fit is refused at creation.
    let bob = api.user().await;
    let create = |token: &str, length: usize| {
        Request::post("/v1/media/uploads")
            .header("authorization", format!("Bearer {token}"))
            .header("tus-resumable", "1.0.0")
            .header("upload-length", length.to_string())
            .body(Body::empty())
            .unwrap()
    };
    let (status, headers, _) = api.send_raw(create(&bob.token, photo.len())).await;
    assert_eq!(status, StatusCode::CREATED);
    let location = headers["location"].to_str().unwrap().to_owned();
    let finish = Request::patch(&location)
        .header("authorization", format!("Bearer {}", bob.token))
        .header("tus-resumable", "1.0.0")
        .header("upload-offset", "0")
        .header("content-type", "application/offset+octet-stream")
        .body(Body::from(photo.clone()))
        .unwrap();
    let (status, headers, _) = api.send_raw(finish).await;
    assert_eq!(status, StatusCode::NO_CONTENT);
    assert!(headers.contains_key("haberci-media-id"));
    let reply = api.send(create(&bob.token, photo.len())).await;
    assert_eq!(
        (reply.status, reply.code()),
        (StatusCode::PAYLOAD_TOO_LARGE, "media_quota_exceeded")
    );
}

#[tokio::test]
async fn only_those_who_may_see_media_can_read_it_and_links_expire() {
    let dir = TempDir::new("haberci-media-access");
    let api = Api::with_settings(settings(&dir, StoreConfig::Local(dir.0.join("objects"))));
    let (alice, bob, eve) = (api.user().await, api.user().await, api.user().await);
    let reply = upload(
        &api,
        &alice.token,
        "?kind=file&filename=notes.txt",
        b"hello bob".to_vec(),
    )
    .await;
    assert_eq!(reply.status, StatusCode::CREATED, "{}", reply.json);
    let id: uuid::Uuid = reply.str("/id").parse().unwrap();
    let path = format!("/v1/media/{id}");

    // Not attached: only alice.
    assert_eq!(
        fetch(&api, &path, Some(&bob.token), &[]).await.0,
        StatusCode::NOT_FOUND
    );
    assert_eq!(
        api.get(&format!("{path}/info"), Some(&bob.token))
            .await
            .status,
        StatusCode::NOT_FOUND
    );
    assert_eq!(
        fetch(&api, &path, None, &[]).await.0,
        StatusCode::UNAUTHORIZED
    );

    // In a direct message to bob: bob reads it, eve does not. A file downloads, sandboxed.
    attach_to_message(&api, &alice, &bob, id).await;
    let (status, headers, body) = fetch(&api, &path, Some(&bob.token), &[]).await;
    assert_eq!(
        (status, body.as_slice()),
        (StatusCode::OK, &b"hello bob"[..])
    );
    assert!(
        headers["content-disposition"]
            .to_str()
            .unwrap()
            .starts_with("attachment")
    );
    assert!(
        headers["content-security-policy"]
            .to_str()
            .unwrap()
            .contains("sandbox")
    );
    assert_eq!(
        fetch(&api, &path, Some(&eve.token), &[]).await.0,
        StatusCode::NOT_FOUND
    );

    // Links: bob's fresh link works for anyone until it expires; a forged or expired one
    // is refused with its own code; half a link is a bad request.
    let info = api.get(&format!("{path}/info"), Some(&bob.token)).await;
    assert_eq!(info.status, StatusCode::OK);
    let url = info.str("/url");
    assert_eq!(fetch(&api, &url, None, &[]).await.0, StatusCode::OK);
    let forged = format!("{}x", url);
    let reply = api.get(&forged, None).await;
    assert_eq!(
        (reply.status, reply.code()),
        (StatusCode::FORBIDDEN, "invalid_link")
    );
    let key = &api.state.media.settings.url_key;
    let id = haberci_wire::MediaId::new(id).unwrap();
    let expired = key.sign(id, haberci_backend::media::links::Variant::Original, 1_000);
    let reply = api.get(&expired, None).await;
    assert_eq!(
        (reply.status, reply.code()),
        (StatusCode::FORBIDDEN, "link_expired")
    );
    let thumb_link = key.sign(
        id,
        haberci_backend::media::links::Variant::Thumb,
        i64::MAX / 2,
    );
    let as_original = thumb_link.replace("/thumb?", "?");
    assert_eq!(api.get(&as_original, None).await.code(), "invalid_link");
    let reply = api.get(&format!("{path}?exp=1"), None).await;
    assert_eq!(
        (reply.status, reply.code()),
        (StatusCode::UNPROCESSABLE_ENTITY, "invalid_field")
    );
    // A file has no thumbnail.
    assert_eq!(
        fetch(&api, &format!("{path}/thumb"), Some(&alice.token), &[])
            .await
            .0,
        StatusCode::NOT_FOUND
    );
}

#[tokio::test]
async fn a_resumable_upload_continues_where_it_stopped() {
    let dir = TempDir::new("haberci-media-tus");
    let api = Api::with_settings(settings(&dir, StoreConfig::Local(dir.0.join("objects"))));
    let alice = api.user().await;
    let photo = jpeg(800, 600);
    let half = photo.len() / 2;
    let b64 = |s: &str| base64::Engine::encode(&base64::engine::general_purpose::STANDARD, s);
    let tus = |method: &str, path: &str| {
        Request::builder()
            .method(method)
            .uri(path)
            .header("authorization", format!("Bearer {}", alice.token))
            .header("tus-resumable", "1.0.0")
    };

    let (status, headers, _) = api
        .send_raw(
            tus("POST", "/v1/media/uploads")
                .header("upload-length", photo.len().to_string())
                .header(
                    "upload-metadata",
                    format!("kind {},filename {}", b64("image"), b64("cat.jpg")),
                )
                .body(Body::empty())
                .unwrap(),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED);
    let location = headers["location"].to_str().unwrap().to_owned();
    assert!(headers.contains_key("upload-expires"));
    assert_eq!(headers["tus-version"], "1.0.0");

    let patch = |offset: usize, bytes: Vec<u8>| {
        tus("PATCH", &location)
            .header("upload-offset", offset.to_string())
            .header("content-type", "application/offset+octet-stream")
            .body(Body::from(bytes))
            .unwrap()
    };
    let (status, headers, _) = api.send_raw(patch(0, photo[..half].to_vec())).await;
    assert_eq!(status, StatusCode::NO_CONTENT);
    assert_eq!(headers["upload-offset"].to_str().unwrap(), half.to_string());

    // "The connection dropped": ask where it stands.
    let (status, headers, _) = api
        .send_raw(tus("HEAD", &location).body(Body::empty()).unwrap())
        .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(headers["upload-offset"].to_str().unwrap(), half.to_string());
    assert_eq!(
        headers["upload-length"].to_str().unwrap(),
        photo.len().to_string()
    );

    // From the wrong offset: 409, nothing changes. Without the version header: 412. Not
    // offset+octet-stream: 415. More than Upload-Length: 413.
    let reply = api.send(patch(0, photo[..10].to_vec())).await;
    assert_eq!(
        (reply.status, reply.code()),
        (StatusCode::CONFLICT, "upload_offset_mismatch")
    );
    let reply = api
        .send(
            Request::patch(&location)
                .header("authorization", format!("Bearer {}", alice.token))
                .header("upload-offset", half.to_string())
                .header("content-type", "application/offset+octet-stream")
                .body(Body::empty())
                .unwrap(),
        )
        .await;
    assert_eq!(
        (reply.status, reply.code()),
        (StatusCode::PRECONDITION_FAILED, "tus_version")
    );
    let reply = api
        .send(
            tus("PATCH", &location)
                .header("upload-offset", half.to_string())
                .header("content-type", "application/octet-stream")
                .body(Body::empty())
                .unwrap(),
        )
        .await;
    assert_eq!(reply.status, StatusCode::UNSUPPORTED_MEDIA_TYPE);
    let mut too_much = photo[half..].to_vec();
    too_much.extend_from_slice(b"extra");
    let reply = api.send(patch(half, too_much)).await;
    assert_eq!(
        (reply.status, reply.code()),
        (StatusCode::PAYLOAD_TOO_LARGE, "media_too_large")
    );

    // The rest: stored, with its media id.
    let (status, headers, _) = api.send_raw(patch(half, photo[half..].to_vec())).await;
    assert_eq!(status, StatusCode::NO_CONTENT);
    let media_id = headers["haberci-media-id"].to_str().unwrap().to_owned();
    let state = api.get(&location, Some(&alice.token)).await;
    assert_eq!(state.str("/media/id"), media_id);
    assert_eq!(state.json["media"]["filename"], "cat.jpg");
    assert_eq!(state.json["offset"], json!(photo.len()));
    let (_, _, bytes) = fetch(
        &api,
        &format!("/v1/media/{media_id}"),
        Some(&alice.token),
        &[],
    )
    .await;
    assert_eq!(bytes, photo, "a JPEG without metadata is stored as sent");

    // Someone else's upload does not exist for them.
    let bob = api.user().await;
    assert_eq!(
        api.get(&location, Some(&bob.token)).await.status,
        StatusCode::NOT_FOUND
    );

    // Termination.
    let (status, _, _) = api
        .send_raw(tus("DELETE", &location).body(Body::empty()).unwrap())
        .await;
    assert_eq!(status, StatusCode::NO_CONTENT);
    assert_eq!(
        api.get(&location, Some(&alice.token)).await.status,
        StatusCode::NOT_FOUND
    );
}

#[tokio::test]
async fn a_refused_resumable_upload_is_forgotten() {
    let dir = TempDir::new("haberci-media-tus-bad");
    let api = Api::with_settings(settings(&dir, StoreConfig::Local(dir.0.join("objects"))));
    let alice = api.user().await;
    let mut elf = b"\x7fELF\x02\x01\x01\0".to_vec();
    elf.resize(1000, 7);
    let create = Request::post("/v1/media/uploads")
        .header("authorization", format!("Bearer {}", alice.token))
        .header("tus-resumable", "1.0.0")
        .header("upload-length", "1000")
        .body(Body::empty())
        .unwrap();
    let (_, headers, _) = api.send_raw(create).await;
    let location = headers["location"].to_str().unwrap().to_owned();
    let reply = api
        .send(
            Request::patch(&location)
                .header("authorization", format!("Bearer {}", alice.token))
                .header("tus-resumable", "1.0.0")
                .header("upload-offset", "0")
                .header("content-type", "application/offset+octet-stream")
                .body(Body::from(elf))
                .unwrap(),
        )
        .await;
    assert_eq!(
        (reply.status, reply.code()),
        (StatusCode::UNPROCESSABLE_ENTITY, "media_executable")
    );
    assert_eq!(
        api.get(&location, Some(&alice.token)).await.status,
        StatusCode::NOT_FOUND
    );
    assert_eq!(media_rows(&api, &alice).await, 0);
    assert_eq!(staging_files(&dir), 0);
}

#[tokio::test]
async fn video_and_audio_get_their_duration_poster_and_lose_their_metadata() {
    let dir = TempDir::new("haberci-media-av");
    std::fs::create_dir_all(&dir.0).unwrap();
    let api = Api::with_settings(settings(&dir, StoreConfig::Local(dir.0.join("objects"))));
    let alice = api.user().await;
    let video = dir.0.join("clip.mp4");
    let status = std::process::Command::new("ffmpeg")
        .args([
            "-v",
            "error",
            "-f",
            "lavfi",
            "-i",
            "testsrc=size=320x240:rate=10",
            "-t",
            "2",
        ])
        .args([
            "-metadata",
            "location=+40.0000-074.0000/",
            "-pix_fmt",
            "yuv420p",
            "-y",
        ])
        .arg(&video)
        .status()
        .expect("ffmpeg (installed by ./dev)");
    assert!(status.success());
    let reply = upload(
        &api,
        &alice.token,
        "?kind=video",
        std::fs::read(&video).unwrap(),
    )
    .await;
    assert_eq!(reply.status, StatusCode::CREATED, "{}", reply.json);
    assert_eq!(
        (reply.json["width"].as_i64(), reply.json["height"].as_i64()),
        (Some(320), Some(240))
    );
    let duration = reply.json["durationMs"].as_i64().unwrap();
    assert!((1900..=2100).contains(&duration), "{duration}");
    assert!(reply.json["thumbUrl"].is_string() && reply.json["blurhash"].is_string());
    let (_, _, stored) = fetch(&api, reply.json["url"].as_str().unwrap(), None, &[]).await;
    assert!(
        !stored.windows(8).any(|w| w == b"+40.0000"),
        "the location tag is gone from the stored video"
    );

    let audio = dir.0.join("voice.webm");
    let status = std::process::Command::new("ffmpeg")
        .args([
            "-v",
            "error",
            "-f",
            "lavfi",
            "-i",
            "sine=f=440:d=1",
            "-c:a",
            "libopus",
            "-y",
        ])
        .arg(&audio)
        .status()
        .unwrap();
    assert!(status.success());
    let voice = std::fs::read(&audio).unwrap();
    let reply = upload(&api, &alice.token, "?kind=audio", voice.clone()).await;
    assert_eq!(reply.status, StatusCode::CREATED, "{}", reply.json);
    let duration = reply.json["durationMs"].as_i64().unwrap();
    assert!((900..=1100).contains(&duration), "{duration}");
    let reply = upload(&api, &alice.token, "?kind=video", voice).await;
    assert_eq!(reply.code(), "media_type_mismatch", "{}", reply.json);
    let mut corrupt = std::fs::read(&video).unwrap();
    corrupt.truncate(64);
    corrupt.extend((0..5000u32).map(|i| (i * 7 % 256) as u8));
    let reply = upload(&api, &alice.token, "?kind=video", corrupt).await;
    assert_eq!(reply.code(), "media_corrupt", "{}", reply.json);
}

#[tokio::test]
async fn the_collector_takes_unused_media_after_the_grace_period_and_keeps_used_media() {
    let dir = TempDir::new("haberci-media-gc");
    let api = Api::with_settings(settings(&dir, StoreConfig::Local(dir.0.join("objects"))));
    let (alice, bob) = (api.user().await, api.user().await);
    let unused = upload(&api, &alice.token, "?kind=image", jpeg(50, 40)).await;
    let used = upload(&api, &alice.token, "?kind=file", b"attached".to_vec()).await;
    let used_id: uuid::Uuid = used.str("/id").parse().unwrap();
    attach_to_message(&api, &alice, &bob, used_id).await;
    let media = &api.state.media;
    let unused_key = ObjectKey::from_slice(&hex::decode(unused.str("/sha256")).unwrap()).unwrap();
    let used_key = ObjectKey::from_slice(&hex::decode(used.str("/sha256")).unwrap()).unwrap();
    assert!(media.storage.exists(unused_key).await.unwrap());

    // A crash's leftover staging file (two days old) goes; a fresh one stays.
    let staging = dir.0.join("staging");
    let (stale, fresh) = (staging.join("a.upload"), staging.join("b.upload"));
    std::fs::write(&stale, b"x").unwrap();
    std::fs::write(&fresh, b"x").unwrap();
    let touched = std::process::Command::new("touch")
        .args(["-d", "2 days ago"])
        .arg(&stale)
        .status()
        .unwrap();
    assert!(touched.success());

    // Within the grace period nothing goes; then alice's uploads "are two days old" (only
    // hers: other tests share this database).
    let swept = haberci_backend::media::gc::sweep(media, &api.state.db)
        .await
        .unwrap();
    assert_eq!(swept.staged, 1);
    assert!(!stale.exists() && fresh.exists());
    assert!(media.storage.exists(unused_key).await.unwrap());
    let grace = media.settings.gc_grace + Duration::from_secs(3600);
    sqlx::query(
        "WITH aged AS (
             UPDATE media SET created_at = created_at - make_interval(secs => $2)
             WHERE owner_id = $1 RETURNING sha256, thumb_sha256, preview_sha256)
         UPDATE media_objects SET used_at = used_at - make_interval(secs => $2)
         WHERE sha256 IN (SELECT sha256 FROM aged UNION SELECT thumb_sha256 FROM aged
                          UNION SELECT preview_sha256 FROM aged)",
    )
    .bind(alice.id)
    .bind(grace.as_secs_f64())
    .execute(&api.state.db)
    .await
    .unwrap();
    haberci_backend::media::gc::sweep(media, &api.state.db)
        .await
        .unwrap();
    assert_eq!(
        api.get(
            &format!("/v1/media/{}/info", unused.str("/id")),
            Some(&alice.token)
        )
        .await
        .status,
        StatusCode::NOT_FOUND
    );
    assert!(
        !media.storage.exists(unused_key).await.unwrap(),
        "its bytes are deleted"
    );
    assert_eq!(
        api.get(&format!("/v1/media/{used_id}/info"), Some(&bob.token))
            .await
            .status,
        StatusCode::OK
    );
    assert!(media.storage.exists(used_key).await.unwrap());

    // Its owner may delete an upload nothing uses, not one a message uses; nobody else may.
    let spare = upload(&api, &alice.token, "?kind=file", b"spare".to_vec())
        .await
        .str("/id");
    let delete = |id: String, token: String| {
        Request::delete(format!("/v1/media/{id}"))
            .header("authorization", format!("Bearer {token}"))
            .body(Body::empty())
            .unwrap()
    };
    let reply = api
        .send(delete(used_id.to_string(), alice.token.clone()))
        .await;
    assert_eq!(
        (reply.status, reply.code()),
        (StatusCode::CONFLICT, "media_in_use")
    );
    let reply = api.send(delete(spare.clone(), bob.token.clone())).await;
    assert_eq!(reply.status, StatusCode::NOT_FOUND);
    let (status, _, _) = api
        .send_raw(delete(spare.clone(), alice.token.clone()))
        .await;
    assert_eq!(status, StatusCode::NO_CONTENT);
    let info = api
        .get(&format!("/v1/media/{spare}/info"), Some(&alice.token))
        .await;
    assert_eq!(info.status, StatusCode::NOT_FOUND);
}

/// A `Send` of `kind` from `sender` to `peer` carrying `media`.
fn media_send(
    sender: uuid::Uuid,
    peer: uuid::Uuid,
    kind: haberci_wire::MessageKind,
    media: uuid::Uuid,
) -> haberci_backend::messaging::batch::SendRequest {
    use haberci_wire::{ClientMsgId, MediaId, MediaRef, Recipient, SendMessage, SessionId, UserId};
    let (sender, peer) = (UserId::new(sender).unwrap(), UserId::new(peer).unwrap());
    haberci_backend::messaging::batch::SendRequest {
        sender,
        session: SessionId::new(uuid::Uuid::new_v4()).unwrap(),
        conversation: haberci_seam::streams::direct_conversation(sender, peer),
        target: haberci_backend::messaging::batch::Target::Direct(peer),
        send: SendMessage {
            client_msg_id: ClientMsgId::new(uuid::Uuid::new_v4()).unwrap(),
            recipient: Recipient::User(peer),
            kind,
            content: String::new(),
            media: Some(MediaRef {
                media_id: MediaId::new(media).unwrap(),
                // Hints the server does not trust: what it stored wins.
                content_type: "application/x-lie".into(),
                size_bytes: 1,
            }),
        },
    }
}

#[tokio::test]
async fn a_message_carries_the_senders_upload_of_its_type_or_is_refused_with_media_refused() {
    use haberci_backend::messaging::store::{self, SendOutcome};
    use haberci_wire::{ErrorCode, MessageKind};
    let dir = TempDir::new("haberci-media-messages");
    let api = Api::with_settings(settings(&dir, StoreConfig::Local(dir.0.join("objects"))));
    let (alice, bob) = (api.user().await, api.user().await);
    let photo = upload(&api, &alice.token, "?kind=image", jpeg(640, 480)).await;
    let photo_id: uuid::Uuid = photo.str("/id").parse().unwrap();
    let bobs = upload(&api, &bob.token, "?kind=image", jpeg(64, 48)).await;
    let bobs_id: uuid::Uuid = bobs.str("/id").parse().unwrap();

    let sends = [
        media_send(alice.id, bob.id, MessageKind::Image, photo_id),
        media_send(alice.id, bob.id, MessageKind::Image, bobs_id),
        media_send(alice.id, bob.id, MessageKind::Video, photo_id),
        media_send(alice.id, bob.id, MessageKind::File, uuid::Uuid::new_v4()),
    ];
    let committed = store::commit(&api.state.db, &sends, &[]).await.unwrap();
    let SendOutcome::Stored(message) = &committed.sends[0] else {
        panic!("{:?}", committed.sends[0]);
    };
    let media = message
        .media
        .as_ref()
        .expect("the delivered message carries its media");
    assert_eq!(media.media_id.as_uuid(), photo_id);
    assert_eq!(media.content_type, "image/jpeg");
    assert_eq!(media.size_bytes, photo.json["size"].as_u64().unwrap());
    assert_eq!(media.width.map(|w| w.get()), Some(640));
    assert_eq!(media.blurhash.as_deref(), photo.json["blurhash"].as_str());
    for refused in &committed.sends[1..] {
        let SendOutcome::Refused(refusal) = refused else {
            panic!("{refused:?}");
        };
        assert_eq!(refusal.code, ErrorCode::MediaRefused);
    }
    let stored: i64 = sqlx::query_scalar("SELECT count(*) FROM messages WHERE sender_id = $1")
        .bind(alice.id)
        .fetch_one(&api.state.db)
        .await
        .unwrap();
    assert_eq!(stored, 1, "refused sends store nothing");

    // History carries it (with what the server stored, not the Send's hints), and bob, a
    // member, may read the bytes.
    let conversation = message.conversation_id.as_uuid();
    let history = api
        .get(
            &format!("/v1/conversations/{conversation}/messages"),
            Some(&bob.token),
        )
        .await;
    assert_eq!(history.status, StatusCode::OK, "{}", history.json);
    let item = &history.json["messages"][0]["media"];
    assert_eq!(item["mediaId"], photo_id.to_string(), "{}", history.json);
    assert_eq!(item["contentType"], "image/jpeg");
    assert_eq!(item["width"], 640);
    let (status, _, _) = fetch(
        &api,
        &format!("/v1/media/{photo_id}/thumb"),
        Some(&bob.token),
        &[],
    )
    .await;
    assert_eq!(status, StatusCode::OK);
}

#[tokio::test]
async fn posts_carry_up_to_four_of_my_uploads_and_follow_the_posts_visibility() {
    let dir = TempDir::new("haberci-media-posts");
    let api = Api::with_settings(settings(&dir, StoreConfig::Local(dir.0.join("objects"))));
    let (alice, bob, carol) = (api.user().await, api.user().await, api.user().await);
    let mut ids = Vec::new();
    for i in 0..5 {
        let reply = upload(&api, &alice.token, "?kind=image", jpeg(100 + i, 80)).await;
        ids.push(reply.str("/id"));
    }
    let bobs = upload(&api, &bob.token, "?kind=image", jpeg(30, 30))
        .await
        .str("/id");

    let post = |media: Vec<String>, visibility: &str| json!({ "content": "holiday", "mediaIds": media, "visibility": visibility });
    for (media, why) in [
        (ids.clone(), "five"),
        (vec![bobs.clone()], "someone else's"),
        (vec![ids[0].clone(), ids[0].clone()], "twice"),
    ] {
        let reply = api
            .call(
                "POST",
                "/v1/posts",
                post(media, "public"),
                Some(&alice.token),
            )
            .await;
        assert_eq!(
            (reply.status, reply.field()),
            (StatusCode::UNPROCESSABLE_ENTITY, Some("mediaIds")),
            "{why}: {}",
            reply.json
        );
    }
    let reply = api
        .call(
            "POST",
            "/v1/posts",
            post(ids[..2].to_vec(), "followers"),
            Some(&alice.token),
        )
        .await;
    assert_eq!(reply.status, StatusCode::CREATED, "{}", reply.json);
    assert_eq!(reply.json["media"].as_array().unwrap().len(), 2);
    assert_eq!(reply.json["media"][1]["id"], ids[1].as_str());
    assert!(reply.json["media"][0]["thumbUrl"].is_string());

    // Bob follows alice and sees the post's media; carol does not.
    let follow = api
        .call(
            "POST",
            &format!("/v1/users/{}/follow", alice.username),
            json!({}),
            Some(&bob.token),
        )
        .await;
    assert!(follow.status.is_success(), "{}", follow.json);
    let path = format!("/v1/media/{}", ids[0]);
    assert_eq!(
        fetch(&api, &path, Some(&bob.token), &[]).await.0,
        StatusCode::OK
    );
    assert_eq!(
        fetch(&api, &path, Some(&carol.token), &[]).await.0,
        StatusCode::NOT_FOUND
    );
    let post_id = reply.str("/id");
    let seen = api
        .get(&format!("/v1/posts/{post_id}"), Some(&bob.token))
        .await;
    assert_eq!(
        seen.json["media"].as_array().unwrap().len(),
        2,
        "{}",
        seen.json
    );
}

#[tokio::test]
async fn an_avatar_is_my_image_upload_and_public() {
    let dir = TempDir::new("haberci-media-avatar");
    let api = Api::with_settings(settings(&dir, StoreConfig::Local(dir.0.join("objects"))));
    let (alice, bob) = (api.user().await, api.user().await);
    let face = upload(&api, &alice.token, "?kind=image", jpeg(200, 200))
        .await
        .str("/id");
    let doc = upload(&api, &alice.token, "?kind=file", b"not a face".to_vec())
        .await
        .str("/id");
    let bobs = upload(&api, &bob.token, "?kind=image", jpeg(20, 20))
        .await
        .str("/id");
    for id in [&doc, &bobs] {
        let reply = api
            .call(
                "PATCH",
                "/v1/me",
                json!({ "avatarMediaId": id }),
                Some(&alice.token),
            )
            .await;
        assert_eq!(
            (reply.status, reply.field()),
            (StatusCode::UNPROCESSABLE_ENTITY, Some("avatarMediaId"))
        );
    }
    let path = format!("/v1/media/{face}");
    assert_eq!(
        fetch(&api, &path, None, &[]).await.0,
        StatusCode::UNAUTHORIZED
    );
    let me = api
        .call(
            "PATCH",
            "/v1/me",
            json!({ "avatarMediaId": face }),
            Some(&alice.token),
        )
        .await;
    assert_eq!(me.status, StatusCode::OK, "{}", me.json);
    assert_eq!(me.json["avatarUrl"], path.as_str());
    let profile = api
        .get(&format!("/v1/users/{}", alice.username), Some(&bob.token))
        .await;
    assert_eq!(profile.json["avatarThumbUrl"], format!("{path}/thumb"));
    // Anyone, without a token.
    assert_eq!(fetch(&api, &path, None, &[]).await.0, StatusCode::OK);
    assert_eq!(
        fetch(&api, &format!("{path}/thumb"), None, &[]).await.0,
        StatusCode::OK
    );
    let cleared = api
        .call(
            "PATCH",
            "/v1/me",
            json!({ "avatarMediaId": null }),
            Some(&alice.token),
        )
        .await;
    assert!(cleared.json["avatarUrl"].is_null());
    assert_eq!(
        fetch(&api, &path, None, &[]).await.0,
        StatusCode::UNAUTHORIZED
    );
}
