//! Media through the whole stack: an upload over the gateway's HTTPS API ([`Api`]) sent as an
//! image message over native QUIC, delivered with the `MediaInfo` the server stored; the
//! recipient may read it once the message names it (not before); media that is not the
//! sender's own is refused with `media_refused`; bytes that are not what the kind says are
//! refused by the upload.

use std::num::NonZeroU32;

use haberci_client::{
    Api, ApiError, Client, ErrorCode, Event, MediaKind, MediaView, Recipient, Roots, SendError,
};
use haberci_testkit::{Stack, TIMEOUT, TransportKind, User};

use crate::support;

/// A 16 × 12 JPEG (a colour gradient, so the server's BlurHash has something to say).
fn tiny_jpeg() -> Vec<u8> {
    let pixels =
        image::RgbImage::from_fn(16, 12, |x, y| image::Rgb([x as u8 * 16, y as u8 * 20, 128]));
    let mut out = std::io::Cursor::new(Vec::new());
    image::DynamicImage::ImageRgb8(pixels)
        .write_to(&mut out, image::ImageFormat::Jpeg)
        .unwrap();
    out.into_inner()
}

fn api(stack: &Stack) -> Api {
    Api::new(
        &format!("https://localhost:{}", stack.gateway_tcp.port()),
        &Roots::PemFile(stack.ca()),
    )
    .unwrap()
}

async fn upload_image(api: &Api, user: &User) -> MediaView {
    api.upload_media(&user.token, MediaKind::Image, Some("tiny.jpg"), tiny_jpeg())
        .await
        .unwrap()
}

/// A one-second voice clip as a browser records it (Opus in WebM), made by ffmpeg.
fn voice_clip() -> Vec<u8> {
    let path = std::env::temp_dir().join(format!("haberci-voice-{}.webm", uuid::Uuid::new_v4()));
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
        .arg(&path)
        .status()
        .expect("ffmpeg (installed by ./dev)");
    assert!(status.success());
    let bytes = std::fs::read(&path).unwrap();
    let _ = std::fs::remove_file(&path);
    bytes
}

#[tokio::test]
async fn an_uploaded_image_sent_over_quic_reaches_the_peer_with_what_the_upload_stored() {
    let stack = support::start().await;
    let alice = support::register(&stack).await;
    let view = upload_image(&api(&stack), &alice).await;
    assert_eq!(view.kind, MediaKind::Image);
    assert_eq!(view.content_type, "image/jpeg");
    assert_eq!((view.width, view.height), (Some(16), Some(12)));
    assert!(view.blurhash.is_some(), "{view:?}");
    assert!(
        view.url.starts_with(&format!("/v1/media/{}?exp=", view.id)),
        "{}",
        view.url
    );
    let media = travels(&stack, TransportKind::Quic, &alice, view.clone()).await;
    assert_eq!(
        (media.width, media.height),
        (NonZeroU32::new(16), NonZeroU32::new(12))
    );
    assert_eq!(media.blurhash, view.blurhash);
}

#[tokio::test]
async fn a_voice_clip_sent_over_webtransport_arrives_with_its_duration() {
    let stack = support::start().await;
    let alice = support::register(&stack).await;
    let view = api(&stack)
        .upload_media(
            &alice.token,
            MediaKind::Audio,
            Some("voice.webm"),
            voice_clip(),
        )
        .await
        .unwrap();
    assert_eq!(view.content_type, "audio/webm");
    let media = travels(&stack, TransportKind::WebTransport, &alice, view).await;
    let duration = media.duration_ms.expect("audio has a duration").get();
    assert!((900..=1100).contains(&duration), "{duration}");
}

#[tokio::test]
async fn a_file_sent_over_websocket_arrives_with_its_name() {
    let stack = support::start().await;
    let alice = support::register(&stack).await;
    let view = api(&stack)
        .upload_media(
            &alice.token,
            MediaKind::File,
            Some("notlar.txt"),
            "alışveriş listesi".as_bytes().to_vec(),
        )
        .await
        .unwrap();
    let media = travels(&stack, TransportKind::WebSocket, &alice, view).await;
    assert_eq!(media.filename.as_deref(), Some("notlar.txt"));
}

/// Sends `view` (alice's upload) to a new user over `transport`; checks the delivered message
/// carries what the upload stored, and that the recipient may read the media only once a
/// message names it. Returns the delivered media.
async fn travels(
    stack: &Stack,
    transport: TransportKind,
    alice: &User,
    view: MediaView,
) -> haberci_client::MediaInfo {
    let bob = support::register(stack).await;
    let api = api(stack);
    // Before any message names it, Bob cannot read it: as if it did not exist.
    match api.media_info(&bob.token, view.id).await {
        Err(ApiError::Refused { status: 404, .. }) => {}
        other => panic!("expected 404, got {other:?}"),
    }

    let (sender, _alice_events) = Client::connect(stack.client_config(transport, &alice.token))
        .await
        .unwrap();
    let (_receiver, mut bob_events) = Client::connect(stack.client_config(transport, &bob.token))
        .await
        .unwrap();
    let message = haberci_client::media_to(Recipient::User(bob.id), &view, "gün batımı");
    let sent = tokio::time::timeout(TIMEOUT, sender.send(message))
        .await
        .expect("an answer in time")
        .unwrap();

    let got = tokio::time::timeout(TIMEOUT, async {
        loop {
            match bob_events.recv().await {
                Some(Event::Message(m)) if m.conversation_id == sent.conversation_id => return m,
                Some(Event::Disconnected(why)) => panic!("disconnected: {why}"),
                None => panic!("events ended"),
                Some(_) => {}
            }
        }
    })
    .await
    .expect("Bob receives it in time");
    assert_eq!(got.content, "gün batımı");
    let media = got.media.expect("a media message carries its media");
    assert_eq!(media.media_id, view.id);
    assert_eq!(media.content_type, view.content_type);
    assert_eq!(media.size_bytes, view.size);

    // Now a member of a conversation that holds it, Bob reads it, with fresh links.
    let seen = api.media_info(&bob.token, view.id).await.unwrap();
    assert_eq!(
        (seen.id, seen.size, seen.sha256),
        (view.id, view.size, view.sha256)
    );
    media
}

#[tokio::test]
async fn sending_someone_elses_upload_is_refused_as_media_refused() {
    let stack = support::start().await;
    let (alice, bob) = (
        support::register(&stack).await,
        support::register(&stack).await,
    );
    let bobs = upload_image(&api(&stack), &bob).await;

    let (client, _events) = Client::connect(stack.client_config(TransportKind::Quic, &alice.token))
        .await
        .unwrap();
    let answer = tokio::time::timeout(
        TIMEOUT,
        client.send(haberci_client::media_to(Recipient::User(bob.id), &bobs, "")),
    )
    .await
    .expect("an answer in time");
    match answer {
        Err(SendError::Refused { code, .. }) => assert_eq!(code, ErrorCode::MediaRefused),
        other => panic!("expected media_refused, got {other:?}"),
    }
    // A refusal of one send does not end the session.
    assert!(client.is_open());
    client.ping().await.unwrap();
}

#[tokio::test]
async fn an_upload_whose_bytes_are_not_its_kind_is_refused_with_the_servers_code() {
    let stack = support::start().await;
    let alice = support::register(&stack).await;
    let answer = api(&stack)
        .upload_media(
            &alice.token,
            MediaKind::Image,
            Some("not.jpg"),
            &b"just some text"[..],
        )
        .await;
    match answer {
        Err(ApiError::Refused { status, code, .. }) => {
            assert_eq!((status, code.as_str()), (422, "media_type_mismatch"));
        }
        other => panic!("expected a refusal, got {other:?}"),
    }
    // Without a valid token, nothing is stored and the API says why.
    match api(&stack)
        .upload_media("not.a.token", MediaKind::File, None, &b"x"[..])
        .await
    {
        Err(ApiError::Refused { status: 401, .. }) => {}
        other => panic!("expected 401, got {other:?}"),
    }
}
