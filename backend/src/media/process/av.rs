//! Audio and video: ffprobe's report reduced to what we need, the rules deciding whether a
//! file holds what the client declared, the ffmpeg command lines, and the bounded runner.
//!
//! The parsing, the rules and the command lines are pure (unit-tested without ffmpeg); only
//! [`run`] and [`process_av`] do I/O.

use std::collections::HashMap;
use std::ffi::OsString;
use std::path::Path;
use std::process::Stdio;
use std::time::Duration;

use serde::Deserialize;

use super::picture;
use super::sniff::Container;
use super::{Limits, MediaError, MediaKind, Processed, Replacement, Tools, trim_message};

/// What ffprobe found, reduced to what we store and decide on.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub(super) struct Probe {
    /// The first video stream that is not cover art, as displayed (rotation applied).
    pub video: Option<(u32, u32)>,
    /// How many audio streams there are.
    pub audio_streams: usize,
    pub duration_ms: Option<u64>,
}

/// `ffprobe -print_format json -show_format -show_streams`, the parts we read. Every field is
/// optional: ffprobe omits what it does not know.
#[derive(Deserialize)]
struct ProbeJson {
    #[serde(default)]
    streams: Vec<StreamJson>,
    format: Option<FormatJson>,
}

#[derive(Deserialize)]
struct StreamJson {
    codec_type: Option<String>,
    width: Option<u32>,
    height: Option<u32>,
    duration: Option<String>,
    #[serde(default)]
    disposition: HashMap<String, i64>,
    #[serde(default)]
    tags: HashMap<String, String>,
    #[serde(default)]
    side_data_list: Vec<SideDataJson>,
}

#[derive(Deserialize)]
struct SideDataJson {
    rotation: Option<f64>,
}

#[derive(Deserialize)]
struct FormatJson {
    duration: Option<String>,
}

/// Reads ffprobe's JSON report.
pub(super) fn parse_probe(json: &[u8]) -> Result<Probe, MediaError> {
    let report: ProbeJson = serde_json::from_slice(json)
        .map_err(|e| MediaError::Tool(format!("unreadable ffprobe output: {e}")))?;
    let mut probe = Probe::default();
    let mut stream_duration: Option<u64> = None;
    for stream in &report.streams {
        match stream.codec_type.as_deref() {
            // Cover art in MP3/M4A/FLAC shows up as a one-frame video stream.
            Some("video") if stream.disposition.get("attached_pic").copied() != Some(1) => {
                if probe.video.is_none() {
                    let (Some(width), Some(height)) = (stream.width, stream.height) else {
                        return Err(MediaError::Corrupt(
                            "the video stream has no dimensions".into(),
                        ));
                    };
                    probe.video = Some(if quarter_turned(stream) {
                        (height, width)
                    } else {
                        (width, height)
                    });
                }
            }
            Some("audio") => probe.audio_streams += 1,
            _ => continue,
        }
        let d = stream.duration.as_deref().and_then(seconds_to_ms);
        stream_duration = stream_duration.max(d);
    }
    probe.duration_ms = report
        .format
        .and_then(|f| f.duration.as_deref().and_then(seconds_to_ms))
        .or(stream_duration);
    Ok(probe)
}

/// Whether the stream is displayed turned by ±90° (phones record portrait video as landscape
/// frames plus a display matrix), so that width and height swap.
fn quarter_turned(stream: &StreamJson) -> bool {
    let degrees = stream
        .side_data_list
        .iter()
        .find_map(|s| s.rotation)
        // Older muxers and ffmpeg versions: a `rotate` tag instead of side data.
        .or_else(|| {
            stream
                .tags
                .get("rotate")
                .and_then(|r| r.trim().parse().ok())
        })
        .unwrap_or(0.0);
    let quarter_turns = (degrees / 90.0).round().rem_euclid(4.0);
    quarter_turns == 1.0 || quarter_turns == 3.0
}

/// "12.345000" → 12345. `None` for "N/A", negative or absurd values.
fn seconds_to_ms(seconds: &str) -> Option<u64> {
    let seconds: f64 = seconds.trim().parse().ok()?;
    // Under 10⁹ s (31 years): anything else is a broken header, not a duration.
    (seconds.is_finite() && (0.0..1e9).contains(&seconds))
        .then(|| (seconds * 1000.0).round() as u64)
}

/// What the streams make of an upload declared as `declared` (Audio or Video): its MIME type
/// and displayed size, or why it is refused.
///
/// The rules: a video needs a video stream (cover art does not count); an audio file needs an
/// audio stream and no real video stream.
pub(super) fn judge(
    declared: MediaKind,
    container: &Container,
    probe: &Probe,
    limits: &Limits,
) -> Result<&'static str, MediaError> {
    let mismatch = |detected: Option<&'static str>, fallback: &str| MediaError::TypeMismatch {
        declared,
        detected: detected.unwrap_or(fallback).to_owned(),
    };
    match declared {
        MediaKind::Video => {
            let Some((width, height)) = probe.video else {
                return Err(if probe.audio_streams > 0 {
                    mismatch(container.audio_mime, "audio")
                } else {
                    MediaError::Corrupt("no video stream found".into())
                });
            };
            picture::check_dimensions(width, height, limits)?;
            container.video_mime.ok_or_else(|| MediaError::Unsupported {
                detected: format!("video in {}", container.extension),
            })
        }
        _ => {
            if probe.video.is_some() {
                return Err(mismatch(container.video_mime, "video"));
            }
            if probe.audio_streams == 0 {
                return Err(MediaError::Corrupt("no audio stream found".into()));
            }
            container.audio_mime.ok_or_else(|| MediaError::Unsupported {
                detected: format!("audio in {}", container.extension),
            })
        }
    }
}

/// `file:` + path: ffmpeg then never reads the path as another protocol (`http:…`,
/// `concat:…`) nor an option.
fn file_url(path: &Path) -> OsString {
    let mut url = OsString::from("file:");
    url.push(path.as_os_str());
    url
}

/// The options every invocation starts with: quiet but for errors, local files only, and the
/// demuxer we sniffed (see [`Container::demuxer`]).
fn input_args(input: &Path, container: &Container) -> Vec<OsString> {
    let options = [
        "-v",
        "error",
        "-protocol_whitelist",
        "file",
        "-f",
        container.demuxer,
        "-i",
    ];
    let mut args = Vec::from(options.map(OsString::from));
    args.push(file_url(input));
    args
}

/// `ffprobe` arguments: a JSON report of the container and its streams.
pub(super) fn probe_args(input: &Path, container: &Container) -> Vec<OsString> {
    let mut args = input_args(input, container);
    args.extend(
        ["-print_format", "json", "-show_format", "-show_streams"]
            .into_iter()
            .map(OsString::from),
    );
    args
}

/// `ffmpeg` arguments: one frame at `at_ms`, scaled into `side`×`side` (never up), as a JPEG
/// on stdout. ffmpeg applies the display rotation itself, so the frame comes out upright.
pub(super) fn poster_args(
    input: &Path,
    container: &Container,
    at_ms: u64,
    side: u32,
) -> Vec<OsString> {
    let mut args: Vec<OsString> = vec!["-nostdin".into(), "-ss".into(), seconds(at_ms).into()];
    args.extend(input_args(input, container));
    let scale =
        format!("scale='min({side},iw)':'min({side},ih)':force_original_aspect_ratio=decrease");
    for arg in [
        "-map",
        "0:V:0",
        "-frames:v",
        "1",
        "-an",
        "-sn",
        "-dn",
        "-vf",
        &scale,
        "-f",
        "image2pipe",
        "-c:v",
        "mjpeg",
        "-q:v",
        "3",
        "pipe:1",
    ] {
        args.push(arg.into());
    }
    args
}

/// `ffmpeg` arguments: the same streams and container without metadata (global, per-stream,
/// chapters), copied, not re-encoded.
///
/// Video keeps its video streams (cover art aside) and audio; data streams go, since that is
/// where GoPro and iPhone record GPS tracks, and so do subtitles. Audio keeps audio only (cover
/// art is a JPEG that may carry its own EXIF).
pub(super) fn remux_args(
    input: &Path,
    output: &Path,
    container: &Container,
    kind: MediaKind,
) -> Vec<OsString> {
    let mut args: Vec<OsString> = vec!["-nostdin".into(), "-y".into()];
    args.extend(input_args(input, container));
    let maps: &[&str] = match kind {
        MediaKind::Video => &["-map", "0:V", "-map", "0:a?"],
        _ => &["-map", "0:a"],
    };
    args.extend(maps.iter().map(OsString::from));
    for arg in [
        "-map_metadata",
        "-1",
        "-map_chapters",
        "-1",
        "-c",
        "copy",
        // No "encoder: Lavf…" tag either.
        "-fflags",
        "+bitexact",
    ] {
        args.push(arg.into());
    }
    if container.is_mov_family() {
        // The index first, so browsers can start playing before the download ends.
        args.extend(["-movflags", "+faststart"].map(OsString::from));
    }
    args.extend(["-f", container.muxer].map(OsString::from));
    args.push(file_url(output));
    args
}

fn seconds(ms: u64) -> String {
    format!("{}.{:03}", ms / 1000, ms % 1000)
}

/// How a tool run ended, when it did not end well.
#[derive(Debug)]
pub(super) enum RunError {
    /// It could not be started (not installed, not executable): our fault.
    Spawn(std::io::Error),
    Timeout,
    /// It ran and failed: usually the input's fault. Its stderr, trimmed.
    Failed(String),
}

impl RunError {
    /// The error for the API, for a tool reading the client's upload (a failure means the
    /// upload is bad).
    fn on_input(self, program: &Path) -> MediaError {
        match self {
            Self::Spawn(e) => MediaError::Tool(format!("cannot run {}: {e}", program.display())),
            Self::Timeout => MediaError::Timeout,
            Self::Failed(stderr) => MediaError::Corrupt(stderr),
        }
    }
}

/// Runs `program args` with no shell, no stdin, killed when `timeout` passes (or when the
/// caller's future is dropped). At most `Tools::concurrency` run at once; waiting for a turn
/// does not count against the timeout. Returns stdout. `redact` is replaced by `<upload>` in
/// error messages: they reach the client, our paths should not.
pub(super) async fn run(
    tools: &Tools,
    program: &Path,
    args: &[OsString],
    timeout: Duration,
    redact: &[&Path],
) -> Result<Vec<u8>, RunError> {
    let _turn = tools
        .subprocesses
        .acquire()
        .await
        .map_err(|_| RunError::Spawn(std::io::Error::other("tool semaphore closed")))?;
    let child = tokio::process::Command::new(program)
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .map_err(RunError::Spawn)?;
    let output = match tokio::time::timeout(timeout, child.wait_with_output()).await {
        // Dropping the `wait_with_output` future drops the child: kill_on_drop kills it.
        Err(_) => return Err(RunError::Timeout),
        Ok(output) => output.map_err(RunError::Spawn)?,
    };
    if output.status.success() {
        return Ok(output.stdout);
    }
    let stderr = String::from_utf8_lossy(&output.stderr);
    let mut stderr = stderr
        .lines()
        .map(without_context)
        .collect::<Vec<_>>()
        .join("\n");
    for path in redact {
        let path = path.to_string_lossy();
        if !path.is_empty() {
            stderr = stderr
                .replace(&format!("file:{path}"), "<upload>")
                .replace(&*path, "<upload>");
        }
    }
    if stderr.trim().is_empty() {
        stderr = format!("{} exited with {}", program.display(), output.status);
    }
    Err(RunError::Failed(trim_message(&stderr)))
}

/// Drops the `[mov,mp4,m4a,3gp,3g2,mj2 @ 0x55d0c1a2b3c0] ` prefix ffmpeg puts on log lines: a
/// pointer and a demuxer list mean nothing to the uploader.
fn without_context(line: &str) -> &str {
    match line.split_once("] ") {
        Some((context, rest)) if context.starts_with('[') && context.contains(" @ 0x") => rest,
        _ => line,
    }
}

/// Runs `program -version`: whether the tool is there and starts.
pub(super) async fn check_tool(tools: &Tools, program: &Path) -> Result<(), MediaError> {
    run(
        tools,
        program,
        &[OsString::from("-version")],
        Duration::from_secs(10),
        &[],
    )
    .await
    .map(drop)
    .map_err(|e| match e {
        RunError::Failed(stderr) => {
            MediaError::Tool(format!("{} -version failed: {stderr}", program.display()))
        }
        e => e.on_input(program),
    })
}

/// Probes, judges, extracts a poster (video) and writes a metadata-free copy of an audio or
/// video upload.
pub(super) async fn process_av(
    path: &Path,
    declared: MediaKind,
    container: Container,
    limits: &Limits,
    tools: &Tools,
) -> Result<Processed, MediaError> {
    let report = run(
        tools,
        &tools.ffprobe,
        &probe_args(path, &container),
        limits.probe_timeout,
        &[path],
    )
    .await
    .map_err(|e| e.on_input(&tools.ffprobe))?;
    let probe = parse_probe(&report)?;
    let mime = judge(declared, &container, &probe, limits)?;

    let derived = match declared {
        MediaKind::Video => Some(poster(path, &container, &probe, limits, tools).await?),
        _ => None,
    };

    // The copy goes next to the upload (same file system: the caller can rename it), under a
    // name that cannot collide; it is deleted on every error path until `keep` below.
    let dir = path
        .parent()
        .filter(|dir| !dir.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    let output = tempfile::Builder::new()
        .prefix(".haberci-remux-")
        .suffix(&format!(".{}", container.extension))
        .tempfile_in(dir)?
        .into_temp_path();
    run(
        tools,
        &tools.ffmpeg,
        &remux_args(path, &output, &container, declared),
        limits.ffmpeg_timeout,
        &[path, &output],
    )
    .await
    .map_err(|e| e.on_input(&tools.ffmpeg))?;
    let output = output.keep().map_err(|e| MediaError::Io(e.error))?;

    let (width, height) = probe.video.unzip();
    let (thumb, preview, blurhash) = match derived {
        Some(d) => (Some(d.thumb), d.preview, Some(d.blurhash)),
        None => (None, None, None),
    };
    Ok(Processed {
        kind: declared,
        mime: mime.to_owned(),
        width,
        height,
        duration_ms: probe.duration_ms,
        blurhash,
        replacement: Some(Replacement::File(output)),
        thumb,
        preview,
    })
}

/// The poster frame at min(1 s, half the duration), and what derives from it.
async fn poster(
    path: &Path,
    container: &Container,
    probe: &Probe,
    limits: &Limits,
    tools: &Tools,
) -> Result<picture::Derived, MediaError> {
    let at_ms = probe.duration_ms.map_or(0, |d| (d / 2).min(1000));
    let mut frame = Vec::new();
    // A seek past the last decodable frame yields no output and success: then try the start.
    for at in [at_ms, 0] {
        frame = run(
            tools,
            &tools.ffmpeg,
            &poster_args(path, container, at, limits.preview_side),
            limits.ffmpeg_timeout,
            &[path],
        )
        .await
        .map_err(|e| e.on_input(&tools.ffmpeg))?;
        if !frame.is_empty() || at == 0 {
            break;
        }
    }
    if frame.is_empty() {
        return Err(MediaError::Corrupt(
            "no video frame could be decoded".into(),
        ));
    }
    let limits = *limits;
    super::blocking(tools, move || picture::process_poster(&frame, &limits)).await
}

#[cfg(test)]
mod tests {
    use std::ffi::OsStr;

    use super::*;
    use crate::media::process::sniff::container;

    fn probe(json: &str) -> Probe {
        parse_probe(json.as_bytes()).expect("parses")
    }

    #[test]
    fn video_with_rotation_side_data_swaps_dimensions() {
        let p = probe(
            r#"{"streams":[
                {"codec_type":"video","width":1920,"height":1080,
                 "side_data_list":[{"side_data_type":"Display Matrix","rotation":-90}]},
                {"codec_type":"audio","duration":"3.000000"}],
              "format":{"duration":"3.021000"}}"#,
        );
        assert_eq!(
            p,
            Probe {
                video: Some((1080, 1920)),
                audio_streams: 1,
                duration_ms: Some(3021)
            }
        );
    }

    #[test]
    fn rotate_tag_and_half_turns() {
        let p = probe(
            r#"{"streams":[{"codec_type":"video","width":640,"height":480,"tags":{"rotate":"270"}}]}"#,
        );
        assert_eq!(p.video, Some((480, 640)));
        let p = probe(
            r#"{"streams":[{"codec_type":"video","width":640,"height":480,
                "side_data_list":[{"rotation":180}]}]}"#,
        );
        assert_eq!(p.video, Some((640, 480)));
    }

    #[test]
    fn cover_art_is_not_video() {
        let p = probe(
            r#"{"streams":[
                {"codec_type":"audio","duration":"N/A"},
                {"codec_type":"video","width":600,"height":600,"disposition":{"default":0,"attached_pic":1}}],
              "format":{"duration":"N/A"}}"#,
        );
        assert_eq!(p.video, None);
        assert_eq!(p.audio_streams, 1);
        assert_eq!(p.duration_ms, None);
    }

    #[test]
    fn judge_rules() {
        let limits = Limits::default();
        let webm = container("video/webm").expect("webm");
        let voice = Probe {
            video: None,
            audio_streams: 1,
            duration_ms: Some(1000),
        };
        let clip = Probe {
            video: Some((320, 240)),
            ..voice.clone()
        };
        assert_eq!(
            judge(MediaKind::Audio, &webm, &voice, &limits).ok(),
            Some("audio/webm")
        );
        assert_eq!(
            judge(MediaKind::Video, &webm, &clip, &limits).ok(),
            Some("video/webm")
        );
        assert!(matches!(
            judge(MediaKind::Video, &webm, &voice, &limits),
            Err(MediaError::TypeMismatch { detected, .. }) if detected == "audio/webm"
        ));
        assert!(matches!(
            judge(MediaKind::Audio, &webm, &clip, &limits),
            Err(MediaError::TypeMismatch { detected, .. }) if detected == "video/webm"
        ));
        let nothing = Probe::default();
        assert!(matches!(
            judge(MediaKind::Audio, &webm, &nothing, &limits),
            Err(MediaError::Corrupt(_))
        ));
        assert!(matches!(
            judge(MediaKind::Video, &webm, &nothing, &limits),
            Err(MediaError::Corrupt(_))
        ));
        let huge = Probe {
            video: Some((20_000, 100)),
            ..voice
        };
        assert!(matches!(
            judge(MediaKind::Video, &webm, &huge, &limits),
            Err(MediaError::DimensionsTooLarge { .. })
        ));
    }

    #[test]
    fn command_lines_force_the_demuxer_and_local_files() {
        let mp4 = container("video/mp4").expect("mp4");
        let input = Path::new("/staging/-evil name.mp4");
        let args = probe_args(input, &mp4);
        let args: Vec<_> = args.iter().map(|a| a.to_string_lossy()).collect();
        assert_eq!(
            args,
            [
                "-v",
                "error",
                "-protocol_whitelist",
                "file",
                "-f",
                "mov",
                "-i",
                "file:/staging/-evil name.mp4",
                "-print_format",
                "json",
                "-show_format",
                "-show_streams"
            ]
        );
        let remux = remux_args(input, Path::new("/staging/out.mp4"), &mp4, MediaKind::Video);
        let remux: Vec<_> = remux
            .iter()
            .map(|a| a.to_string_lossy().into_owned())
            .collect();
        let joined = remux.join(" ");
        assert!(
            joined.contains("-map 0:V -map 0:a? -map_metadata -1"),
            "{joined}"
        );
        assert!(
            joined.ends_with("-movflags +faststart -f mp4 file:/staging/out.mp4"),
            "{joined}"
        );
        let poster = poster_args(input, &mp4, 1500, 1280);
        assert_eq!(poster[2], OsStr::new("1.500"));
    }

    #[test]
    fn log_context_is_dropped() {
        assert_eq!(
            without_context("[mov,mp4,m4a,3gp,3g2,mj2 @ 0x556173d241c0] moov atom not found"),
            "moov atom not found"
        );
        assert_eq!(without_context("[x] is fine"), "[x] is fine");
    }

    #[test]
    fn durations() {
        assert_eq!(seconds_to_ms("2.000000"), Some(2000));
        assert_eq!(seconds_to_ms("0.9995"), Some(1000));
        assert_eq!(seconds_to_ms("N/A"), None);
        assert_eq!(seconds_to_ms("-1"), None);
        assert_eq!(seconds_to_ms("inf"), None);
        assert_eq!(seconds(1005), "1.005");
    }
}
