//! What the first bytes of an upload say it is: magic numbers (via `infer`), plus our own
//! executable check, plus the table of containers we accept for audio and video.
//!
//! Pure functions over a byte prefix: no I/O, so every rule here is a plain unit test.

/// The broad class the magic numbers put a file in.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Family {
    Image,
    Video,
    Audio,
    /// Something an operating system would run: refused for every kind, even as a plain file.
    Executable,
    Other,
}

/// What the first bytes of an upload say it is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Sniffed {
    /// The detected MIME type; `application/octet-stream` when nothing matched.
    pub mime: &'static str,
    pub family: Family,
}

/// The MIME type for bytes no magic number matched.
pub const OCTET_STREAM: &str = "application/octet-stream";

/// Classifies `head`, the first bytes of a file (give at least 8 KiB: some signatures sit past
/// the first few bytes).
pub fn sniff(head: &[u8]) -> Sniffed {
    if let Some(mime) = executable(head) {
        return Sniffed {
            mime,
            family: Family::Executable,
        };
    }
    let Some(kind) = infer::get(head) else {
        return Sniffed {
            mime: OCTET_STREAM,
            family: Family::Other,
        };
    };
    // `infer` calls any file starting 00 02, 4C 01 or 64 86 a COFF object: far too weak a
    // signature to name (and object files are not runnable anyway), so those stay unknown.
    // Its executable matchers are covered by `executable` above.
    if kind.matcher_type() == infer::MatcherType::App
        && matches!(kind.extension(), "obj" | "elf" | "exe" | "dll" | "mach")
    {
        return Sniffed {
            mime: OCTET_STREAM,
            family: Family::Other,
        };
    }
    let family = match kind.matcher_type() {
        infer::MatcherType::Image => Family::Image,
        infer::MatcherType::Video => Family::Video,
        infer::MatcherType::Audio => Family::Audio,
        _ => Family::Other,
    };
    Sniffed {
        mime: kind.mime_type(),
        family,
    }
}

/// The MIME type of a file an operating system would execute, judged by its first bytes:
/// ELF, PE (DOS "MZ" header: EXE, DLL, SYS), Mach-O (thin and fat), and scripts with `#!`.
///
/// Our own check rather than `infer`'s, which needs more than 52 bytes before it calls a file
/// ELF (a truncated ELF is still an ELF to us) and has no shebang rule.
fn executable(head: &[u8]) -> Option<&'static str> {
    match head {
        [0x7f, b'E', b'L', b'F', ..] => Some("application/x-executable"),
        [b'M', b'Z', ..] => Some("application/vnd.microsoft.portable-executable"),
        [0xfe, 0xed, 0xfa, 0xce | 0xcf, ..] | [0xce | 0xcf, 0xfa, 0xed, 0xfe, ..] => {
            Some("application/x-mach-binary")
        }
        // Fat Mach-O shares CAFEBABE with Java class files; a fat binary's next word is its
        // architecture count (small), a class file's is its version (45 or more).
        [0xca, 0xfe, 0xba, 0xbe, a, b, c, d, ..] if u32::from_be_bytes([*a, *b, *c, *d]) < 45 => {
            Some("application/x-mach-binary")
        }
        [b'#', b'!', ..] => Some("text/x-shellscript"),
        _ => None,
    }
}

/// How ffmpeg reads and writes one accepted audio/video container, and the MIME type we
/// store for it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) struct Container {
    /// ffmpeg's demuxer (`-f` before `-i`). Forcing the demuxer we sniffed keeps ffmpeg from
    /// probing the bytes as something else (an HLS playlist or concat list pointing at other
    /// files or URLs, the classic ffmpeg upload attack).
    pub demuxer: &'static str,
    /// ffmpeg's muxer for the metadata-free copy (same container as the upload).
    pub muxer: &'static str,
    /// File name extension for the remuxed temp file.
    pub extension: &'static str,
    /// What we store when the file holds video; `None`: not accepted as video.
    pub video_mime: Option<&'static str>,
    /// What we store when the file holds only audio; `None`: not accepted as audio.
    pub audio_mime: Option<&'static str>,
}

impl Container {
    /// Whether the muxer is an MP4/QuickTime one, which takes `-movflags +faststart`.
    pub fn is_mov_family(&self) -> bool {
        matches!(self.muxer, "mp4" | "mov")
    }
}

/// The containers we accept for audio and video, by the MIME type `infer` reports.
///
/// `infer` is only a first filter for audio and video: browsers record voice notes as
/// WebM/Opus, which `infer` calls `video/webm`, so a container may be accepted as either kind
/// and ffprobe's streams decide. Containers browsers cannot play (AVI, WMV, FLV, MPEG-PS, AMR,
/// AIFF, …) are not listed: we store what we received and do not transcode.
pub(super) fn container(sniffed_mime: &str) -> Option<Container> {
    let c = |demuxer, muxer, extension, video_mime, audio_mime| Container {
        demuxer,
        muxer,
        extension,
        video_mime,
        audio_mime,
    };
    Some(match sniffed_mime {
        "video/mp4" | "video/x-m4v" => c("mov", "mp4", "mp4", Some("video/mp4"), Some("audio/mp4")),
        "audio/m4a" => c("mov", "mp4", "m4a", None, Some("audio/mp4")),
        "video/quicktime" => c("mov", "mov", "mov", Some("video/quicktime"), None),
        "video/webm" => c(
            "matroska",
            "webm",
            "webm",
            Some("video/webm"),
            Some("audio/webm"),
        ),
        "video/x-matroska" => c(
            "matroska",
            "matroska",
            "mkv",
            Some("video/x-matroska"),
            Some("audio/x-matroska"),
        ),
        "audio/ogg" | "audio/opus" => c("ogg", "ogg", "ogg", None, Some("audio/ogg")),
        "audio/mpeg" => c("mp3", "mp3", "mp3", None, Some("audio/mpeg")),
        "audio/x-flac" => c("flac", "flac", "flac", None, Some("audio/flac")),
        "audio/x-wav" => c("wav", "wav", "wav", None, Some("audio/wav")),
        "audio/aac" => c("aac", "adts", "aac", None, Some("audio/aac")),
        _ => return None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn executables_by_magic() {
        let cases: &[(&[u8], &str)] = &[
            (b"\x7fELF\x02\x01\x01", "application/x-executable"),
            (
                b"MZ\x90\x00\x03\x00",
                "application/vnd.microsoft.portable-executable",
            ),
            (b"\xcf\xfa\xed\xfe\x07\x00", "application/x-mach-binary"),
            (b"\xfe\xed\xfa\xce\x00", "application/x-mach-binary"),
            (
                b"\xca\xfe\xba\xbe\x00\x00\x00\x02",
                "application/x-mach-binary",
            ),
            (b"#!/bin/sh\nrm -rf /\n", "text/x-shellscript"),
        ];
        for (head, mime) in cases {
            assert_eq!(
                sniff(head),
                Sniffed {
                    mime,
                    family: Family::Executable
                },
                "{head:?}"
            );
        }
    }

    #[test]
    fn java_class_is_not_a_fat_mach_o() {
        let s = sniff(b"\xca\xfe\xba\xbe\x00\x00\x00\x34rest");
        assert_ne!(s.family, Family::Executable);
    }

    #[test]
    fn media_families() {
        let png = b"\x89PNG\r\n\x1a\n\0\0\0\rIHDR";
        assert_eq!(sniff(png).mime, "image/png");
        assert_eq!(sniff(png).family, Family::Image);
        let mp4 = b"\0\0\0\x20ftypisom\0\0\x02\0isomiso2avc1mp41";
        assert_eq!(sniff(mp4).mime, "video/mp4");
        assert_eq!(sniff(mp4).family, Family::Video);
        assert_eq!(sniff(b"ID3\x04\0\0\0\0\0\0").family, Family::Audio);
        assert_eq!(sniff(b"%PDF-1.7\n").mime, "application/pdf");
        assert_eq!(sniff(b"%PDF-1.7\n").family, Family::Other);
    }

    #[test]
    fn weak_coff_signature_is_not_named() {
        assert_eq!(sniff(b"\x00\x02hello").mime, OCTET_STREAM);
        assert_eq!(sniff(b"plain text").mime, OCTET_STREAM);
        assert_eq!(sniff(b"").family, Family::Other);
    }

    #[test]
    fn every_accepted_container_is_accepted_as_something() {
        for mime in [
            "video/mp4",
            "video/x-m4v",
            "audio/m4a",
            "video/quicktime",
            "video/webm",
            "video/x-matroska",
            "audio/ogg",
            "audio/opus",
            "audio/mpeg",
            "audio/x-flac",
            "audio/x-wav",
            "audio/aac",
        ] {
            let c = container(mime).expect(mime);
            assert!(c.video_mime.is_some() || c.audio_mime.is_some(), "{mime}");
        }
        assert_eq!(container("video/x-msvideo"), None);
    }
}
