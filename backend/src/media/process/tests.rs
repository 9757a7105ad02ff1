//! The pipeline through [`process`], on files made here: images with the `image` crate,
//! audio and video with the real ffmpeg (required: these tests fail, not skip, without it).

use std::path::Path;
use std::process::Command;

use super::picture::tests::{exif_with_gps, png_claiming, two_tone_jpeg, with_segment};
use super::*;

fn tools() -> Tools {
    Tools::new(DEFAULT_FFMPEG.into(), DEFAULT_FFPROBE.into(), 2)
}

fn stage(dir: &tempfile::TempDir, name: &str, bytes: &[u8]) -> PathBuf {
    let path = dir.path().join(name);
    std::fs::write(&path, bytes).expect("write staging file");
    path
}

/// Runs ffmpeg to make a test input; panics (the test fails) when ffmpeg is missing.
fn ffmpeg(args: &[&str]) {
    let output = Command::new(DEFAULT_FFMPEG)
        .args(["-nostdin", "-v", "error", "-y"])
        .args(args)
        .output()
        .expect("ffmpeg must be installed for these tests (./dev installs it)");
    assert!(
        output.status.success(),
        "ffmpeg {args:?}: {}",
        String::from_utf8_lossy(&output.stderr)
    );
}

/// ffprobe's JSON report of a file, as text.
fn ffprobe(path: &Path) -> String {
    let output = Command::new(DEFAULT_FFPROBE)
        .args([
            "-v",
            "error",
            "-print_format",
            "json",
            "-show_format",
            "-show_streams",
        ])
        .arg(path)
        .output()
        .expect("ffprobe must be installed for these tests");
    assert!(output.status.success(), "ffprobe {}", path.display());
    String::from_utf8_lossy(&output.stdout).into_owned()
}

fn replacement_file(processed: &Processed) -> &Path {
    match &processed.replacement {
        Some(Replacement::File(path)) => path,
        other => panic!("expected a remuxed file, got {other:?}"),
    }
}

fn elf() -> Vec<u8> {
    let mut elf = b"\x7fELF\x02\x01\x01\0".to_vec();
    elf.resize(120, 0);
    elf
}

#[test]
fn media_kind_names() {
    for kind in [
        MediaKind::Image,
        MediaKind::Video,
        MediaKind::Audio,
        MediaKind::File,
    ] {
        assert_eq!(MediaKind::parse(kind.as_str()), Some(kind));
        let json = serde_json::to_string(&kind).expect("serializes");
        assert_eq!(json, format!("\"{kind}\""));
    }
    assert_eq!(MediaKind::parse("Image"), None);
}

#[test]
fn default_limits() {
    let limits = Limits::default();
    assert_eq!(limits.bytes_for(MediaKind::Image), 20_000_000);
    assert_eq!(limits.bytes_for(MediaKind::Video), 200_000_000);
    assert_eq!(limits.bytes_for(MediaKind::Audio), 50_000_000);
    assert_eq!(limits.bytes_for(MediaKind::File), 100_000_000);
    assert_eq!(limits.max_pixels, 50_000_000);
    assert_eq!(limits.max_side, 16_384);
}

#[test]
fn plan_table() {
    use super::picture::Format;
    let s = |mime, family| Sniffed { mime, family };
    let cases: &[(MediaKind, Sniffed, Result<&str, &str>)] = &[
        (
            MediaKind::Image,
            s("image/jpeg", Family::Image),
            Ok("still"),
        ),
        (
            MediaKind::Image,
            s("image/heif", Family::Image),
            Err("media_unsupported"),
        ),
        (
            MediaKind::Image,
            s("video/mp4", Family::Video),
            Err("media_type_mismatch"),
        ),
        (
            MediaKind::Image,
            s("application/pdf", Family::Other),
            Err("media_type_mismatch"),
        ),
        (
            MediaKind::Image,
            s("application/x-executable", Family::Executable),
            Err("media_type_mismatch"),
        ),
        (
            MediaKind::File,
            s("application/x-executable", Family::Executable),
            Err("media_executable"),
        ),
        (
            MediaKind::File,
            s("application/pdf", Family::Other),
            Ok("file"),
        ),
        (MediaKind::File, s("image/png", Family::Image), Ok("file")),
        (MediaKind::Video, s("video/mp4", Family::Video), Ok("av")),
        (MediaKind::Audio, s("video/webm", Family::Video), Ok("av")),
        (MediaKind::Audio, s("audio/mpeg", Family::Audio), Ok("av")),
        (
            MediaKind::Video,
            s("audio/mpeg", Family::Audio),
            Err("media_type_mismatch"),
        ),
        (
            MediaKind::Audio,
            s("video/quicktime", Family::Video),
            Err("media_type_mismatch"),
        ),
        (
            MediaKind::Video,
            s("video/x-msvideo", Family::Video),
            Err("media_unsupported"),
        ),
        (
            MediaKind::Audio,
            s("image/png", Family::Image),
            Err("media_type_mismatch"),
        ),
    ];
    for (declared, sniffed, expected) in cases {
        let got = match plan(*declared, *sniffed) {
            Ok(Plan::Still { format, .. }) => {
                assert_eq!(format, Format::Jpeg);
                Ok("still")
            }
            Ok(Plan::File { mime }) => {
                assert_eq!(mime, sniffed.mime);
                Ok("file")
            }
            Ok(Plan::Av { .. }) => Ok("av"),
            Err(e) => Err(e.code()),
        };
        assert_eq!(&got, expected, "{declared} {sniffed:?}");
    }
}

#[test]
fn error_codes_and_faults() {
    let cases = [
        (
            MediaError::TypeMismatch {
                declared: MediaKind::Image,
                detected: "application/pdf".into(),
            },
            "media_type_mismatch",
            true,
        ),
        (MediaError::Executable, "media_executable", true),
        (
            MediaError::Unsupported {
                detected: "image/heif".into(),
            },
            "media_unsupported",
            true,
        ),
        (
            MediaError::DimensionsTooLarge {
                width: 1,
                height: 2,
            },
            "media_dimensions_too_large",
            true,
        ),
        (MediaError::Corrupt("x".into()), "media_corrupt", true),
        (
            MediaError::TooLarge {
                kind: MediaKind::Image,
                limit: 1,
            },
            "media_too_large",
            true,
        ),
        (MediaError::Timeout, "media_timeout", false),
        (MediaError::Tool("x".into()), "media_tool_failed", false),
        (
            MediaError::Io(std::io::Error::other("x")),
            "media_io",
            false,
        ),
    ];
    for (error, code, client) in cases {
        assert_eq!(error.code(), code);
        assert_eq!(error.is_client_fault(), client, "{code}");
        assert!(!error.to_string().is_empty());
    }
    let mismatch = MediaError::TypeMismatch {
        declared: MediaKind::Image,
        detected: "application/pdf".into(),
    };
    assert_eq!(
        mismatch.to_string(),
        "the file was sent as image but it is application/pdf"
    );
}

#[test]
fn messages_are_trimmed() {
    let long = "word ".repeat(100);
    let trimmed = trim_message(&long);
    assert_eq!(trimmed.chars().count(), 200);
    assert!(trimmed.ends_with('…'));
    assert_eq!(trim_message("  a\n\n b  "), "a b");
}

#[tokio::test]
async fn jpeg_with_gps_and_orientation_is_rotated_and_cleaned() {
    let dir = tempfile::tempdir().expect("tempdir");
    let jpeg = with_segment(&two_tone_jpeg(600, 400), 0xe1, &exif_with_gps(6));
    let path = stage(&dir, "upload", &jpeg);
    let p = process(&path, MediaKind::Image, &Limits::default(), &tools())
        .await
        .expect("processed");
    assert_eq!(p.kind, MediaKind::Image);
    assert_eq!(p.mime, "image/jpeg");
    assert_eq!((p.width, p.height), (Some(400), Some(600)));
    let Some(Replacement::Bytes(stored)) = &p.replacement else {
        panic!("expected replacement bytes, got {p:?}");
    };
    assert!(!stored.windows(4).any(|w| w == b"Exif"));
    let thumb = image::load_from_memory(p.thumb.as_deref().expect("thumb")).expect("thumb");
    assert_eq!((thumb.width(), thumb.height()), (213, 320));
    assert_eq!(
        p.preview, None,
        "600×400 fits the preview box: the original serves"
    );
    assert!(p.blurhash.is_some());
}

#[tokio::test]
async fn executables_are_refused() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = stage(&dir, "upload", &elf());
    let limits = Limits::default();
    let err = process(&path, MediaKind::Image, &limits, &tools())
        .await
        .expect_err("refused");
    assert!(
        matches!(&err, MediaError::TypeMismatch { declared: MediaKind::Image, detected } if detected == "application/x-executable"),
        "{err:?}"
    );
    let err = process(&path, MediaKind::File, &limits, &tools())
        .await
        .expect_err("refused");
    assert!(matches!(err, MediaError::Executable), "{err:?}");
    let script = stage(&dir, "script", b"#!/bin/sh\necho hi\n");
    let err = process(&script, MediaKind::File, &limits, &tools())
        .await
        .expect_err("refused");
    assert_eq!(err.code(), "media_executable");
}

#[tokio::test]
async fn plain_files_keep_their_detected_type() {
    let dir = tempfile::tempdir().expect("tempdir");
    let pdf = stage(&dir, "doc", b"%PDF-1.7\n1 0 obj\n");
    let limits = Limits::default();
    let p = process(&pdf, MediaKind::File, &limits, &tools())
        .await
        .expect("file");
    assert_eq!(p.mime, "application/pdf");
    assert!(p.replacement.is_none() && p.thumb.is_none() && p.width.is_none());
    let text = stage(&dir, "notes", b"just some text");
    let p = process(&text, MediaKind::File, &limits, &tools())
        .await
        .expect("file");
    assert_eq!(p.mime, "application/octet-stream");
    let err = process(&pdf, MediaKind::Image, &limits, &tools())
        .await
        .expect_err("not an image");
    assert!(
        matches!(&err, MediaError::TypeMismatch { detected, .. } if detected == "application/pdf"),
        "{err:?}"
    );
}

#[tokio::test]
async fn decompression_bomb_and_truncation_are_refused() {
    let dir = tempfile::tempdir().expect("tempdir");
    let limits = Limits::default();
    let bomb = stage(&dir, "bomb", &png_claiming(100_000, 100_000));
    let err = process(&bomb, MediaKind::Image, &limits, &tools())
        .await
        .expect_err("bomb");
    assert!(
        matches!(
            err,
            MediaError::DimensionsTooLarge {
                width: 100_000,
                height: 100_000
            }
        ),
        "{err:?}"
    );
    let jpeg = two_tone_jpeg(100, 100);
    let truncated = stage(&dir, "truncated", &jpeg[..jpeg.len() * 2 / 3]);
    let err = process(&truncated, MediaKind::Image, &limits, &tools())
        .await
        .expect_err("truncated");
    assert_eq!(err.code(), "media_corrupt", "{err:?}");
}

#[tokio::test]
async fn oversized_uploads_are_refused() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = stage(&dir, "upload", &two_tone_jpeg(16, 16));
    let limits = Limits {
        image_bytes: 100,
        ..Limits::default()
    };
    let err = process(&path, MediaKind::Image, &limits, &tools())
        .await
        .expect_err("too large");
    assert!(
        matches!(
            err,
            MediaError::TooLarge {
                kind: MediaKind::Image,
                limit: 100
            }
        ),
        "{err:?}"
    );
}

#[tokio::test]
async fn video_is_probed_postered_and_stripped_of_location() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("clip.mp4");
    let path_str = path.to_str().expect("utf-8 temp path");
    ffmpeg(&[
        "-f",
        "lavfi",
        "-i",
        "testsrc=size=320x240:rate=10",
        "-t",
        "2",
        "-pix_fmt",
        "yuv420p",
        "-metadata",
        "location=+40.0-074.0/",
        "-metadata",
        "title=secret title",
        path_str,
    ]);
    assert!(
        ffprobe(&path).contains("\"location\": \"+40.0"),
        "the fixture has a location"
    );

    let p = process(&path, MediaKind::Video, &Limits::default(), &tools())
        .await
        .expect("processed");
    assert_eq!(p.kind, MediaKind::Video);
    assert_eq!(p.mime, "video/mp4");
    assert_eq!((p.width, p.height), (Some(320), Some(240)));
    let duration = p.duration_ms.expect("duration");
    assert!((1900..=2100).contains(&duration), "{duration}");
    let thumb = image::load_from_memory(p.thumb.as_deref().expect("thumb")).expect("thumb");
    assert_eq!((thumb.width(), thumb.height()), (320, 240));
    let preview = image::load_from_memory(p.preview.as_deref().expect("preview")).expect("jpeg");
    assert_eq!((preview.width(), preview.height()), (320, 240));
    assert!(p.blurhash.is_some());

    let remuxed = replacement_file(&p);
    assert_eq!(remuxed.parent(), path.parent(), "next to the upload");
    let report = ffprobe(remuxed);
    // As a key: `chroma_location` is a stream property, not a tag.
    assert!(!report.contains("\"location"), "{report}");
    assert!(!report.contains("+40.0"), "{report}");
    assert!(!report.contains("secret title"), "{report}");
    assert!(report.contains("\"codec_type\": \"video\""), "{report}");
    std::fs::remove_file(remuxed).expect("caller deletes the copy");
}

#[tokio::test]
async fn portrait_phone_video_reports_displayed_dimensions() {
    let dir = tempfile::tempdir().expect("tempdir");
    let landscape = dir.path().join("landscape.mp4");
    ffmpeg(&[
        "-f",
        "lavfi",
        "-i",
        "testsrc=size=320x240:rate=10",
        "-t",
        "1",
        "-pix_fmt",
        "yuv420p",
        landscape.to_str().expect("utf-8 temp path"),
    ]);
    // A phone's portrait video: landscape frames plus a display matrix turning them by 90°.
    // ffmpeg ≥ 6 sets it with `-display_rotation`; 5.x (Debian 12) with a `rotate` tag on a
    // stream copy.
    let path = dir.path().join("portrait.mp4");
    let (input, output) = (
        landscape.to_str().expect("utf-8"),
        path.to_str().expect("utf-8"),
    );
    let modern = Command::new(DEFAULT_FFMPEG)
        .args([
            "-nostdin",
            "-v",
            "error",
            "-y",
            "-display_rotation:v:0",
            "90",
            "-i",
        ])
        .args([input, "-c", "copy", output])
        .status()
        .expect("ffmpeg must be installed for these tests");
    if !modern.success() {
        ffmpeg(&[
            "-i",
            input,
            "-c",
            "copy",
            "-metadata:s:v:0",
            "rotate=90",
            output,
        ]);
    }
    let p = process(&path, MediaKind::Video, &Limits::default(), &tools())
        .await
        .expect("processed");
    assert_eq!((p.width, p.height), (Some(240), Some(320)));
    // ffmpeg rotates the poster itself.
    let thumb = image::load_from_memory(p.thumb.as_deref().expect("thumb")).expect("thumb");
    assert_eq!((thumb.width(), thumb.height()), (240, 320));
    // The remux keeps the display matrix: stripping metadata must not turn the video.
    let remuxed = replacement_file(&p).to_owned();
    let report = ffprobe(&remuxed);
    let probe = av::parse_probe(report.as_bytes()).expect("parses");
    assert_eq!(probe.video, Some((240, 320)), "{report}");
    std::fs::remove_file(remuxed).expect("delete");
}

#[tokio::test]
async fn browser_voice_note_is_audio_not_video() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("voice.webm");
    ffmpeg(&[
        "-f",
        "lavfi",
        "-i",
        "sine=f=440:d=1",
        "-c:a",
        "libopus",
        "-metadata",
        "title=secret title",
        path.to_str().expect("utf-8 temp path"),
    ]);
    let limits = Limits::default();
    let p = process(&path, MediaKind::Audio, &limits, &tools())
        .await
        .expect("processed");
    assert_eq!(p.kind, MediaKind::Audio);
    assert_eq!(p.mime, "audio/webm");
    let duration = p.duration_ms.expect("duration");
    assert!((950..=1100).contains(&duration), "{duration}");
    assert_eq!(
        (p.width, p.height, &p.thumb, &p.blurhash),
        (None, None, &None, &None)
    );
    let remuxed = replacement_file(&p).to_owned();
    let report = ffprobe(&remuxed);
    assert!(!report.contains("secret title"), "{report}");
    assert!(report.contains("opus"), "{report}");
    std::fs::remove_file(remuxed).expect("delete");

    let err = process(&path, MediaKind::Video, &limits, &tools())
        .await
        .expect_err("not a video");
    assert!(
        matches!(&err, MediaError::TypeMismatch { declared: MediaKind::Video, detected } if detected == "audio/webm"),
        "{err:?}"
    );
    assert_remux_leftovers_gone(dir.path());
}

#[tokio::test]
async fn mp3_tags_and_cover_art_are_removed() {
    let dir = tempfile::tempdir().expect("tempdir");
    let cover = dir.path().join("cover.jpg");
    std::fs::write(&cover, two_tone_jpeg(64, 64)).expect("cover");
    let path = dir.path().join("song.mp3");
    ffmpeg(&[
        "-f",
        "lavfi",
        "-i",
        "sine=f=440:d=1",
        "-i",
        cover.to_str().expect("utf-8"),
        "-map",
        "0:a",
        "-map",
        "1:v",
        "-c:a",
        "libmp3lame",
        "-c:v",
        "copy",
        "-disposition:v",
        "attached_pic",
        "-metadata",
        "artist=secret artist",
        path.to_str().expect("utf-8"),
    ]);
    assert!(ffprobe(&path).contains("secret artist"));
    let p = process(&path, MediaKind::Audio, &Limits::default(), &tools())
        .await
        .expect("cover art is not a video");
    assert_eq!(p.mime, "audio/mpeg");
    let remuxed = replacement_file(&p).to_owned();
    let report = ffprobe(&remuxed);
    assert!(!report.contains("secret artist"), "{report}");
    assert!(!report.contains("\"codec_type\": \"video\""), "{report}");
    std::fs::remove_file(remuxed).expect("delete");
}

#[tokio::test]
async fn a_video_is_not_audio() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("clip.webm");
    ffmpeg(&[
        "-f",
        "lavfi",
        "-i",
        "testsrc=size=64x48:rate=5",
        "-t",
        "1",
        "-c:v",
        "libvpx",
        path.to_str().expect("utf-8"),
    ]);
    let err = process(&path, MediaKind::Audio, &Limits::default(), &tools())
        .await
        .expect_err("not audio");
    assert!(
        matches!(&err, MediaError::TypeMismatch { declared: MediaKind::Audio, detected } if detected == "video/webm"),
        "{err:?}"
    );
}

#[tokio::test]
async fn corrupt_mp4_is_refused() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut mp4 = b"\0\0\0\x20ftypisom\0\0\x02\0isomiso2avc1mp41".to_vec();
    // Deterministic garbage (an LCG), not a valid box structure.
    let mut x: u32 = 12345;
    for _ in 0..4096 {
        x = x.wrapping_mul(1_103_515_245).wrapping_add(12345);
        mp4.push((x >> 16) as u8);
    }
    let path = stage(&dir, "upload", &mp4);
    let err = process(&path, MediaKind::Video, &Limits::default(), &tools())
        .await
        .expect_err("corrupt");
    assert_eq!(err.code(), "media_corrupt", "{err:?}");
    assert!(err.is_client_fault());
    assert!(
        !err.to_string()
            .contains(dir.path().to_str().expect("utf-8")),
        "{err}"
    );
    assert_remux_leftovers_gone(dir.path());
}

#[tokio::test]
async fn missing_tools_and_timeouts_are_server_side() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("clip.mp4");
    ffmpeg(&[
        "-f",
        "lavfi",
        "-i",
        "testsrc=size=64x48:rate=5",
        "-t",
        "1",
        "-pix_fmt",
        "yuv420p",
        path.to_str().expect("utf-8"),
    ]);
    let missing = Tools::new(
        "/nonexistent/ffmpeg".into(),
        "/nonexistent/ffprobe".into(),
        1,
    );
    let err = process(&path, MediaKind::Video, &Limits::default(), &missing)
        .await
        .expect_err("no ffprobe");
    assert_eq!(err.code(), "media_tool_failed", "{err:?}");
    assert!(!err.is_client_fault());
    assert!(missing.check().await.is_err());
    tools().check().await.expect("ffmpeg and ffprobe run");

    // A zero budget: the deadline has passed before ffprobe can answer.
    let rushed = Limits {
        probe_timeout: Duration::ZERO,
        ..Limits::default()
    };
    let err = process(&path, MediaKind::Video, &rushed, &tools())
        .await
        .expect_err("timeout");
    assert!(matches!(err, MediaError::Timeout), "{err:?}");
}

/// No `.haberci-remux-*` file is left behind after a failure.
fn assert_remux_leftovers_gone(dir: &Path) {
    let leftovers: Vec<_> = std::fs::read_dir(dir)
        .expect("read dir")
        .filter_map(Result::ok)
        .filter(|e| {
            e.file_name()
                .to_string_lossy()
                .starts_with(".haberci-remux-")
        })
        .collect();
    assert!(leftovers.is_empty(), "{leftovers:?}");
}
