//! Still images (JPEG, PNG, GIF, WebP): header checks, decoding under limits, EXIF
//! orientation, metadata stripping, and the derived thumbnail, preview and blurhash.
//!
//! Everything here is synchronous and CPU-bound: the caller runs it in `spawn_blocking`.
//! Nothing here touches the file system.

use std::io::Cursor;

use image::codecs::jpeg::JpegEncoder;
use image::codecs::png::PngEncoder;
use image::codecs::webp::WebPEncoder;
use image::metadata::Orientation;
use image::{DynamicImage, ImageDecoder, ImageEncoder, ImageError, ImageFormat, ImageReader};
use image::{Limits as DecodeLimits, RgbImage};
use img_parts::{Bytes, ImageEXIF};

use super::{Limits, MediaError, trim_message};

/// JPEG quality of a re-encoded original (only when EXIF orientation had to be applied).
const REENCODE_QUALITY: u8 = 90;
/// JPEG quality of the preview (seen full screen).
const PREVIEW_QUALITY: u8 = 85;
/// JPEG quality of the thumbnail (seen small, in lists).
const THUMB_QUALITY: u8 = 80;
/// The blurhash is computed on a copy of the thumbnail shrunk to this box: a blurhash keeps only
/// the lowest frequencies, so more pixels cost time and change nothing visible.
const BLURHASH_SIDE: u32 = 64;
/// Bytes per pixel of the widest decoded layout (16-bit RGBA PNG): sizes the decoder's
/// allocation budget from `Limits::max_pixels`.
const MAX_BYTES_PER_PIXEL: u64 = 8;

/// The still image formats we accept and decode.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Format {
    Jpeg,
    Png,
    Gif,
    WebP,
}

impl Format {
    /// The format for a sniffed MIME type; `None`: not one we decode.
    pub fn from_mime(mime: &str) -> Option<Self> {
        match mime {
            "image/jpeg" => Some(Self::Jpeg),
            "image/png" => Some(Self::Png),
            "image/gif" => Some(Self::Gif),
            "image/webp" => Some(Self::WebP),
            _ => None,
        }
    }

    fn image_format(self) -> ImageFormat {
        match self {
            Self::Jpeg => ImageFormat::Jpeg,
            Self::Png => ImageFormat::Png,
            Self::Gif => ImageFormat::Gif,
            Self::WebP => ImageFormat::WebP,
        }
    }
}

/// Thumbnail, preview and blurhash of a picture (an image or a video poster).
#[derive(Debug)]
pub(super) struct Derived {
    /// JPEG, fits in `thumb_side`².
    pub thumb: Vec<u8>,
    /// JPEG, fits in `preview_side`²; `None` when the picture already fits (see [`derive`]).
    pub preview: Option<Vec<u8>>,
    pub blurhash: String,
}

/// What processing an uploaded still image yields.
#[derive(Debug)]
pub(super) struct Still {
    /// As displayed: after the EXIF orientation is applied.
    pub width: u32,
    pub height: u32,
    /// The bytes to store instead of the upload; `None`: the upload is stored as it is.
    pub replacement: Option<Vec<u8>>,
    pub derived: Derived,
}

/// Checks, cleans and derives from an uploaded image whose magic number said `format`.
///
/// Order matters: the header's dimensions are checked before anything is decoded (a 100 kB
/// PNG can claim 100000×100000 pixels), and a JPEG's structure is walked before decoding
/// (the decoder fills a truncated JPEG with gray rather than failing).
pub(super) fn process_still(
    bytes: &[u8],
    format: Format,
    limits: &Limits,
) -> Result<Still, MediaError> {
    let (width, height) = header_dimensions(bytes, format, limits)?;
    check_dimensions(width, height, limits)?;
    let stripped = strip_metadata(bytes, format)?;
    let (mut picture, orientation, icc) = decode(bytes, format, limits, (width, height))?;

    // GIF has no EXIF; an animated WebP would lose its animation if re-encoded, so it keeps
    // its (rare) orientation tag's effect to the viewer and is only stripped.
    let reorient = orientation != Orientation::NoTransforms
        && format != Format::Gif
        && !(format == Format::WebP && is_animated_webp(bytes));
    let replacement = if reorient {
        picture.apply_orientation(orientation);
        Some(reencode(&picture, format, icc)?)
    } else {
        stripped
    };
    let derived = derive(&picture, limits, false)?;
    Ok(Still {
        width: picture.width(),
        height: picture.height(),
        replacement,
        derived,
    })
}

/// Derives thumbnail, preview and blurhash from a video poster frame (a JPEG from ffmpeg,
/// already rotated and scaled into the preview box). The preview is always made: a video has
/// no stored original that could serve as one.
pub(super) fn process_poster(jpeg: &[u8], limits: &Limits) -> Result<Derived, MediaError> {
    let (width, height) = header_dimensions(jpeg, Format::Jpeg, limits)?;
    check_dimensions(width, height, limits)?;
    let (picture, _, _) = decode(jpeg, Format::Jpeg, limits, (width, height))?;
    derive(&picture, limits, true)
}

/// Refuses pictures too large to decode safely: more than `max_side` on a side or more than
/// `max_pixels` in all. Also used for video frames.
pub(super) fn check_dimensions(width: u32, height: u32, limits: &Limits) -> Result<(), MediaError> {
    if width == 0 || height == 0 {
        return Err(MediaError::Corrupt(format!(
            "the picture claims to be {width}×{height} pixels"
        )));
    }
    if width > limits.max_side
        || height > limits.max_side
        || u64::from(width) * u64::from(height) > limits.max_pixels
    {
        return Err(MediaError::DimensionsTooLarge { width, height });
    }
    Ok(())
}

/// The decoder's own limits: a second line of defence behind [`check_dimensions`].
fn decode_limits(limits: &Limits) -> DecodeLimits {
    let mut decode = DecodeLimits::default();
    decode.max_image_width = Some(limits.max_side);
    decode.max_image_height = Some(limits.max_side);
    decode.max_alloc = Some(limits.max_pixels.saturating_mul(MAX_BYTES_PER_PIXEL));
    decode
}

/// Width and height from the header alone: nothing is decoded and no pixel buffer allocated.
fn header_dimensions(
    bytes: &[u8],
    format: Format,
    limits: &Limits,
) -> Result<(u32, u32), MediaError> {
    // No width/height caps here: the point is to learn the claimed size and refuse it with
    // the numbers in the error (the caps would fail without them).
    let mut header_limits = DecodeLimits::default();
    header_limits.max_alloc = Some(limits.max_pixels.saturating_mul(MAX_BYTES_PER_PIXEL));
    let mut reader = ImageReader::with_format(Cursor::new(bytes), format.image_format());
    reader.limits(header_limits);
    reader.into_dimensions().map_err(|e| decode_error(e, None))
}

/// Decodes the first frame, with the EXIF orientation and ICC profile it carries.
fn decode(
    bytes: &[u8],
    format: Format,
    limits: &Limits,
    dimensions: (u32, u32),
) -> Result<(DynamicImage, Orientation, Option<Vec<u8>>), MediaError> {
    let mut reader = ImageReader::with_format(Cursor::new(bytes), format.image_format());
    reader.limits(decode_limits(limits));
    let mut decoder = reader
        .into_decoder()
        .map_err(|e| decode_error(e, Some(dimensions)))?;
    // A garbled EXIF block or ICC profile does not make the picture unreadable: ignore it.
    let orientation = decoder.orientation().unwrap_or(Orientation::NoTransforms);
    let icc = decoder.icc_profile().ok().flatten();
    let picture =
        DynamicImage::from_decoder(decoder).map_err(|e| decode_error(e, Some(dimensions)))?;
    Ok((picture, orientation, icc))
}

fn decode_error(error: ImageError, dimensions: Option<(u32, u32)>) -> MediaError {
    match (error, dimensions) {
        (ImageError::Limits(_), Some((width, height))) => {
            MediaError::DimensionsTooLarge { width, height }
        }
        (ImageError::Unsupported(e), _) => MediaError::Unsupported {
            detected: trim_message(&format!("an image variant ({e})")),
        },
        (e, _) => MediaError::Corrupt(trim_message(&format!("the image cannot be decoded: {e}"))),
    }
}

/// Re-encodes an image after its orientation was applied, in its own format (JPEG at
/// quality 90, PNG and WebP lossless), keeping the ICC profile and nothing else.
fn reencode(
    picture: &DynamicImage,
    format: Format,
    icc: Option<Vec<u8>>,
) -> Result<Vec<u8>, MediaError> {
    let mut out = Vec::new();
    let result = match format {
        Format::Jpeg => {
            let mut encoder = JpegEncoder::new_with_quality(&mut out, REENCODE_QUALITY);
            set_icc(&mut encoder, icc, picture.color().has_color());
            // JPEG has no alpha; keep gray images gray.
            let opaque = if picture.color().has_color() {
                DynamicImage::ImageRgb8(picture.to_rgb8())
            } else {
                DynamicImage::ImageLuma8(picture.to_luma8())
            };
            opaque.write_with_encoder(encoder)
        }
        Format::Png => {
            let mut encoder = PngEncoder::new(&mut out);
            set_icc(&mut encoder, icc, picture.color().has_color());
            picture.write_with_encoder(encoder)
        }
        Format::WebP | Format::Gif => {
            // Only WebP gets here (GIF has no orientation tag); the lossless encoder is the
            // one WebP encoder the `image` crate has: larger, never worse.
            let mut encoder = WebPEncoder::new_lossless(&mut out);
            set_icc(&mut encoder, icc, true);
            let rgb = if picture.color().has_alpha() {
                DynamicImage::ImageRgba8(picture.to_rgba8())
            } else {
                DynamicImage::ImageRgb8(picture.to_rgb8())
            };
            rgb.write_with_encoder(encoder)
        }
    };
    result.map_err(|e| MediaError::Tool(format!("re-encoding the image: {e}")))?;
    Ok(out)
}

/// Embeds the original's ICC profile if it describes the pixels we write: a CMYK JPEG is
/// decoded to RGB, and its CMYK profile would make viewers misread the new file.
fn set_icc(encoder: &mut impl ImageEncoder, icc: Option<Vec<u8>>, rgb: bool) {
    if let Some(icc) = icc.filter(|icc| icc_color_space_is(icc, rgb)) {
        // Every encoder we use supports ICC; if one did not, the colors shift slightly,
        // which is no reason to refuse the upload.
        let _ = encoder.set_icc_profile(icc);
    }
}

/// Whether an ICC profile's header says RGB (`rgb`) or gray (`!rgb`) data.
fn icc_color_space_is(icc: &[u8], rgb: bool) -> bool {
    // ICC.1 header: the data colour space signature is bytes 16..20.
    let expected: &[u8] = if rgb { b"RGB " } else { b"GRAY" };
    icc.get(16..20) == Some(expected)
}

/// Whether an (extended) WebP has its animation flag set.
fn is_animated_webp(bytes: &[u8]) -> bool {
    const ANIMATION_FLAG: u8 = 0x02;
    bytes.get(12..16) == Some(b"VP8X") && bytes.get(20).is_some_and(|f| f & ANIMATION_FLAG != 0)
}

/// Removes metadata without touching the pixels. `None`: there was nothing to remove.
///
/// Invariant: stripping only deletes segments or chunks, so an output as long as the input
/// means nothing was removed.
fn strip_metadata(bytes: &[u8], format: Format) -> Result<Option<Vec<u8>>, MediaError> {
    let stripped = match format {
        Format::Jpeg => strip_jpeg(bytes).map_err(|e| MediaError::Corrupt(e.to_owned()))?,
        Format::Png => {
            let mut png = img_parts::png::Png::from_bytes(Bytes::copy_from_slice(bytes))
                .map_err(|e| MediaError::Corrupt(format!("the PNG structure is damaged: {e}")))?;
            for chunk in STRIPPED_PNG_CHUNKS {
                png.remove_chunks_by_type(*chunk);
            }
            png.encoder().bytes().to_vec()
        }
        Format::WebP => {
            let mut webp = img_parts::webp::WebP::from_bytes(Bytes::copy_from_slice(bytes))
                .map_err(|e| MediaError::Corrupt(format!("the WebP structure is damaged: {e}")))?;
            webp.remove_chunks_by_id(*b"XMP ");
            // Also recomputes the VP8X feature flags for the chunks that are left.
            webp.set_exif(None);
            webp.encoder().bytes().to_vec()
        }
        // GIFs are stored as uploaded: they carry no EXIF, and rewriting one would mean
        // re-encoding every frame.
        Format::Gif => return Ok(None),
    };
    Ok((stripped.len() != bytes.len()).then_some(stripped))
}

/// PNG chunks that carry metadata rather than pixels or color: text (which is where tools put
/// XMP and legacy EXIF), EXIF, and the modification time. Color chunks (iCCP, sRGB, gAMA, cHRM)
/// stay.
const STRIPPED_PNG_CHUNKS: &[[u8; 4]] = &[*b"tEXt", *b"iTXt", *b"zTXt", *b"eXIf", *b"tIME"];

/// Copies a JPEG's primary image keeping only the segments needed to show it right: JFIF
/// (APP0), ICC profile (APP2) and Adobe (APP14, it says how to read the color channels), plus
/// the frame, tables and scans. Everything else goes: EXIF and XMP (APP1, with GPS and the
/// camera's embedded thumbnail), IPTC (APP13), MPF and other APPn, comments, and whatever
/// follows the end-of-image marker (MPF secondary images and gain maps carry their own
/// EXIF; trailers can make a file a valid ZIP too).
///
/// Errors (a message for `Corrupt`) when the structure is broken, notably when the end-of-image
/// marker is missing: a truncated upload.
pub(super) fn strip_jpeg(bytes: &[u8]) -> Result<Vec<u8>, &'static str> {
    const TRUNCATED: &str = "the JPEG is truncated (no end-of-image marker)";
    if !bytes.starts_with(&[0xff, 0xd8]) {
        return Err("not a JPEG (no start-of-image marker)");
    }
    let mut out = Vec::with_capacity(bytes.len());
    out.extend_from_slice(&[0xff, 0xd8]);
    let mut at = 2;
    loop {
        // A marker: 0xFF, possibly more 0xFF fill bytes, then the marker code. Decoders skip
        // stray bytes before a marker; so do we.
        let start = bytes
            .get(at..)
            .and_then(|rest| rest.iter().position(|&b| b == 0xff))
            .ok_or(TRUNCATED)?;
        at += start;
        while bytes.get(at) == Some(&0xff) {
            at += 1;
        }
        let marker = *bytes.get(at).ok_or(TRUNCATED)?;
        at += 1;
        match marker {
            0xd9 => {
                out.extend_from_slice(&[0xff, 0xd9]);
                return Ok(out);
            }
            // Standalone markers: no length, no payload.
            0x01 | 0xd0..=0xd7 => out.extend_from_slice(&[0xff, marker]),
            0x00 => return Err("the JPEG structure is damaged (stuffed byte outside a scan)"),
            _ => {
                let length = bytes
                    .get(at..at + 2)
                    .map(|l| usize::from(u16::from_be_bytes([l[0], l[1]])))
                    .ok_or(TRUNCATED)?;
                if length < 2 {
                    return Err("the JPEG structure is damaged (bad segment length)");
                }
                let segment = bytes.get(at..at + length).ok_or(TRUNCATED)?;
                if keep_jpeg_segment(marker, &segment[2..]) {
                    out.extend_from_slice(&[0xff, marker]);
                    out.extend_from_slice(segment);
                }
                at += length;
                if marker == 0xda {
                    // Start of scan: entropy-coded data follows, up to the next marker that is
                    // neither a stuffed 0xFF00 nor a restart marker.
                    let end = scan_end(bytes, at).ok_or(TRUNCATED)?;
                    out.extend_from_slice(&bytes[at..end]);
                    at = end;
                }
            }
        }
    }
}

/// Where the entropy-coded data that starts at `from` ends: the offset of the 0xFF of the
/// next real marker. `None`: the file ends inside the scan.
fn scan_end(bytes: &[u8], from: usize) -> Option<usize> {
    let mut at = from;
    loop {
        at += bytes.get(at..)?.iter().position(|&b| b == 0xff)?;
        match bytes.get(at + 1)? {
            0x00 | 0xd0..=0xd7 => at += 2,
            // A marker, possibly after 0xFF fill bytes (which the main loop skips).
            _ => return Some(at),
        }
    }
}

/// Whether a JPEG segment is needed to display the image (see [`strip_jpeg`]).
fn keep_jpeg_segment(marker: u8, payload: &[u8]) -> bool {
    match marker {
        0xe0 => payload.starts_with(b"JFIF\0"),
        0xe2 => payload.starts_with(b"ICC_PROFILE\0"),
        0xee => payload.starts_with(b"Adobe"),
        0xe1 | 0xe3..=0xed | 0xef | 0xfe => false,
        _ => true,
    }
}

/// Thumbnail, preview and blurhash of a decoded picture.
///
/// The preview is made only when the picture is larger than the preview box (or when
/// `always_preview`, for video posters): a picture that already fits is its own preview, and
/// `None` tells the caller to serve the stored original instead.
fn derive(
    picture: &DynamicImage,
    limits: &Limits,
    always_preview: bool,
) -> Result<Derived, MediaError> {
    let fits_preview =
        picture.width() <= limits.preview_side && picture.height() <= limits.preview_side;
    let preview = (always_preview || !fits_preview).then(|| shrink(picture, limits.preview_side));
    // Shrinking the preview rather than the original: far fewer pixels to average.
    let thumb = flatten(&shrink(
        preview.as_ref().unwrap_or(picture),
        limits.thumb_side,
    ));
    let blurhash = blurhash_of(&thumb)?;
    Ok(Derived {
        thumb: encode_jpeg(&thumb, THUMB_QUALITY)?,
        preview: preview
            .map(|p| encode_jpeg(&flatten(&p), PREVIEW_QUALITY))
            .transpose()?,
        blurhash,
    })
}

/// Scales down to fit in `side`×`side`, keeping the aspect ratio; never scales up.
fn shrink(picture: &DynamicImage, side: u32) -> DynamicImage {
    if picture.width() <= side && picture.height() <= side {
        picture.clone()
    } else {
        // `thumbnail` averages every source pixel (no aliasing) with integer math: faster
        // than a resampling filter and as good when only shrinking.
        picture.thumbnail(side, side)
    }
}

/// Drops alpha by compositing onto white: JPEG has no alpha, and transparent pixels are
/// often black underneath.
fn flatten(picture: &DynamicImage) -> RgbImage {
    if !picture.color().has_alpha() {
        return picture.to_rgb8();
    }
    let rgba = picture.to_rgba8();
    RgbImage::from_fn(rgba.width(), rgba.height(), |x, y| {
        let [r, g, b, a] = rgba.get_pixel(x, y).0;
        let over_white = |c: u8| {
            let (c, a) = (u16::from(c), u16::from(a));
            // (c·a + 255·(255−a)) / 255 ≤ 255, so the cast cannot truncate.
            ((c * a + 255 * (255 - a) + 127) / 255) as u8
        };
        image::Rgb([over_white(r), over_white(g), over_white(b)])
    })
}

/// Blurhash with 4×3 components for landscape pictures and 3×4 for portrait ones (the
/// components follow the long side).
fn blurhash_of(thumb: &RgbImage) -> Result<String, MediaError> {
    let small = DynamicImage::ImageRgb8(thumb.clone())
        .thumbnail(BLURHASH_SIDE, BLURHASH_SIDE)
        .to_rgba8();
    let (x, y) = if small.width() >= small.height() {
        (4, 3)
    } else {
        (3, 4)
    };
    blurhash::encode(x, y, small.width(), small.height(), small.as_raw())
        .map_err(|e| MediaError::Tool(format!("blurhash: {e}")))
}

fn encode_jpeg(picture: &RgbImage, quality: u8) -> Result<Vec<u8>, MediaError> {
    let mut out = Vec::new();
    JpegEncoder::new_with_quality(&mut out, quality)
        .encode_image(picture)
        .map_err(|e| MediaError::Tool(format!("encoding a JPEG: {e}")))?;
    Ok(out)
}

#[cfg(test)]
pub(super) mod tests {
    use super::*;

    /// A JPEG of `width`×`height`: left half red, right half blue.
    pub fn two_tone_jpeg(width: u32, height: u32) -> Vec<u8> {
        let picture = RgbImage::from_fn(width, height, |x, _| {
            if x < width / 2 {
                image::Rgb([255, 0, 0])
            } else {
                image::Rgb([0, 0, 255])
            }
        });
        encode_jpeg(&picture, 95).expect("encode")
    }

    /// An EXIF block (APP1 payload) with an orientation tag and a GPS IFD (latitude N 40°).
    pub fn exif_with_gps(orientation: u16) -> Vec<u8> {
        let mut tiff = Vec::new();
        tiff.extend_from_slice(b"II*\0");
        tiff.extend_from_slice(&8u32.to_le_bytes()); // IFD0 at 8
        // IFD0: 2 entries.
        tiff.extend_from_slice(&2u16.to_le_bytes());
        // Orientation (0x0112), SHORT, 1 value.
        tiff.extend_from_slice(&0x0112u16.to_le_bytes());
        tiff.extend_from_slice(&3u16.to_le_bytes());
        tiff.extend_from_slice(&1u32.to_le_bytes());
        tiff.extend_from_slice(&orientation.to_le_bytes());
        tiff.extend_from_slice(&[0, 0]);
        // GPSInfo IFD pointer (0x8825), LONG, 1 value: offset 38.
        tiff.extend_from_slice(&0x8825u16.to_le_bytes());
        tiff.extend_from_slice(&4u16.to_le_bytes());
        tiff.extend_from_slice(&1u32.to_le_bytes());
        tiff.extend_from_slice(&38u32.to_le_bytes());
        tiff.extend_from_slice(&0u32.to_le_bytes()); // no IFD1
        assert_eq!(tiff.len(), 38);
        // GPS IFD: 2 entries.
        tiff.extend_from_slice(&2u16.to_le_bytes());
        // GPSLatitudeRef (1), ASCII, 2: "N\0".
        tiff.extend_from_slice(&1u16.to_le_bytes());
        tiff.extend_from_slice(&2u16.to_le_bytes());
        tiff.extend_from_slice(&2u32.to_le_bytes());
        tiff.extend_from_slice(b"N\0\0\0");
        // GPSLatitude (2), RATIONAL, 3 values at offset 68.
        tiff.extend_from_slice(&2u16.to_le_bytes());
        tiff.extend_from_slice(&5u16.to_le_bytes());
        tiff.extend_from_slice(&3u32.to_le_bytes());
        tiff.extend_from_slice(&68u32.to_le_bytes());
        tiff.extend_from_slice(&0u32.to_le_bytes());
        assert_eq!(tiff.len(), 68);
        for (n, d) in [(40u32, 1u32), (44, 1), (5555, 100)] {
            tiff.extend_from_slice(&n.to_le_bytes());
            tiff.extend_from_slice(&d.to_le_bytes());
        }
        let mut app1 = b"Exif\0\0".to_vec();
        app1.extend_from_slice(&tiff);
        app1
    }

    /// Inserts an APPn segment right after SOI.
    pub fn with_segment(jpeg: &[u8], marker: u8, payload: &[u8]) -> Vec<u8> {
        let mut out = jpeg[..2].to_vec();
        out.extend_from_slice(&[0xff, marker]);
        let length = u16::try_from(payload.len() + 2).expect("segment fits");
        out.extend_from_slice(&length.to_be_bytes());
        out.extend_from_slice(payload);
        out.extend_from_slice(&jpeg[2..]);
        out
    }

    fn contains(haystack: &[u8], needle: &[u8]) -> bool {
        haystack.windows(needle.len()).any(|w| w == needle)
    }

    fn limits() -> Limits {
        Limits::default()
    }

    #[test]
    fn orientation_6_is_applied_and_exif_with_gps_removed() {
        // An RGB ICC profile (only its header matters here) that must survive re-encoding.
        let mut icc = b"ICC_PROFILE\0\x01\x01".to_vec();
        let mut profile = vec![0u8; 128];
        profile[16..20].copy_from_slice(b"RGB ");
        profile[36..40].copy_from_slice(b"acsp");
        icc.extend_from_slice(&profile);
        let jpeg = with_segment(&two_tone_jpeg(64, 32), 0xe2, &icc);
        let jpeg = with_segment(&jpeg, 0xe1, &exif_with_gps(6));
        let still = process_still(&jpeg, Format::Jpeg, &limits()).expect("processed");
        // Orientation 6: rotate 90° clockwise to display, so 64×32 shows as 32×64.
        assert_eq!((still.width, still.height), (32, 64));
        let stored = still.replacement.expect("re-encoded");
        assert!(!contains(&stored, b"Exif"));
        assert!(!contains(&stored, b"II*\0"));
        assert!(contains(&stored, &icc), "the ICC profile is kept");
        let shown = image::load_from_memory(&stored).expect("decodes").to_rgb8();
        assert_eq!(shown.dimensions(), (32, 64));
        // The left (red) half is now on top, the right (blue) half below.
        let top = shown.get_pixel(16, 4).0;
        let bottom = shown.get_pixel(16, 60).0;
        assert!(top[0] > 200 && top[2] < 60, "top {top:?}");
        assert!(bottom[2] > 200 && bottom[0] < 60, "bottom {bottom:?}");
        let thumb = image::load_from_memory(&still.derived.thumb).expect("thumb");
        assert_eq!((thumb.width(), thumb.height()), (32, 64));
        assert_eq!(still.derived.preview, None);
    }

    #[test]
    fn upright_jpeg_is_stripped_losslessly() {
        let plain = two_tone_jpeg(48, 40);
        let jpeg = with_segment(&plain, 0xe1, &exif_with_gps(1));
        let jpeg = with_segment(&jpeg, 0xfe, b"a comment with secrets");
        let jpeg = with_segment(&jpeg, 0xed, b"Photoshop 3.0\0IPTC");
        let icc = b"ICC_PROFILE\0\x01\x01not really a profile";
        let mut jpeg = with_segment(&jpeg, 0xe2, icc);
        jpeg.extend_from_slice(b"PK\x03\x04 trailing zip");
        let still = process_still(&jpeg, Format::Jpeg, &limits()).expect("processed");
        let stored = still.replacement.expect("stripped");
        assert!(!contains(&stored, b"Exif"));
        assert!(!contains(&stored, b"secrets"));
        assert!(!contains(&stored, b"IPTC"));
        assert!(!contains(&stored, b"PK\x03\x04"));
        assert!(contains(&stored, b"ICC_PROFILE\0"), "the ICC profile stays");
        // Lossless: exactly the original encoder output plus the kept ICC segment.
        let without_icc = strip_jpeg(&plain).expect("plain");
        assert_eq!(without_icc, plain);
        assert_eq!(stored.len(), plain.len() + 4 + icc.len());
        assert_eq!((still.width, still.height), (48, 40));
    }

    #[test]
    fn clean_jpeg_needs_no_replacement() {
        let jpeg = two_tone_jpeg(16, 16);
        let still = process_still(&jpeg, Format::Jpeg, &limits()).expect("processed");
        assert_eq!(still.replacement, None);
    }

    #[test]
    fn truncated_jpeg_is_corrupt() {
        let jpeg = two_tone_jpeg(64, 64);
        for cut in [jpeg.len() / 2, jpeg.len() - 2, 10, 3] {
            let err = process_still(&jpeg[..cut], Format::Jpeg, &limits()).expect_err("corrupt");
            assert!(matches!(err, MediaError::Corrupt(_)), "cut {cut}: {err:?}");
        }
    }

    #[test]
    fn progressive_scans_are_walked() {
        // Markers between scans (tables, a second SOS) and restart markers inside a scan.
        let mut jpeg = vec![0xff, 0xd8];
        jpeg.extend_from_slice(&[0xff, 0xda, 0, 3, 1]);
        jpeg.extend_from_slice(&[0x12, 0xff, 0x00, 0x34, 0xff, 0xd0, 0x56]);
        jpeg.extend_from_slice(&[0xff, 0xc4, 0, 4, 9, 9]);
        jpeg.extend_from_slice(&[0xff, 0xfe, 0, 4, b'h', b'i']);
        jpeg.extend_from_slice(&[0xff, 0xda, 0, 3, 2, 0x78, 0xff, 0xff, 0xd9, b'x']);
        let out = strip_jpeg(&jpeg).expect("walks");
        let mut expected = vec![0xff, 0xd8];
        expected.extend_from_slice(&[0xff, 0xda, 0, 3, 1]);
        expected.extend_from_slice(&[0x12, 0xff, 0x00, 0x34, 0xff, 0xd0, 0x56]);
        expected.extend_from_slice(&[0xff, 0xc4, 0, 4, 9, 9]);
        // The comment is gone, fill bytes and the trailer too.
        expected.extend_from_slice(&[0xff, 0xda, 0, 3, 2, 0x78, 0xff, 0xd9]);
        assert_eq!(out, expected);
    }

    #[test]
    fn icc_profiles_must_match_the_written_pixels() {
        let mut profile = vec![0u8; 128];
        profile[16..20].copy_from_slice(b"CMYK");
        assert!(!icc_color_space_is(&profile, true));
        profile[16..20].copy_from_slice(b"RGB ");
        assert!(icc_color_space_is(&profile, true));
        assert!(!icc_color_space_is(&profile, false));
        profile[16..20].copy_from_slice(b"GRAY");
        assert!(icc_color_space_is(&profile, false));
        assert!(!icc_color_space_is(b"short", true));
    }

    #[test]
    fn png_text_chunks_are_stripped() {
        let mut png = Vec::new();
        DynamicImage::ImageRgba8(image::RgbaImage::from_pixel(
            20,
            10,
            image::Rgba([10, 20, 30, 128]),
        ))
        .write_to(&mut Cursor::new(&mut png), ImageFormat::Png)
        .expect("png");
        let mut parsed = img_parts::png::Png::from_bytes(Bytes::from(png)).expect("parse");
        let text = img_parts::png::PngChunk::new(*b"tEXt", Bytes::from_static(b"Comment\0GPS 40N"));
        parsed.chunks_mut().insert(1, text);
        let png = parsed.encoder().bytes().to_vec();
        assert!(contains(&png, b"GPS 40N"));
        let still = process_still(&png, Format::Png, &limits()).expect("processed");
        let stored = still.replacement.expect("stripped");
        assert!(!contains(&stored, b"tEXt"));
        assert!(!contains(&stored, b"GPS 40N"));
        let back = image::load_from_memory(&stored).expect("decodes");
        assert_eq!((back.width(), back.height()), (20, 10));
        // Alpha is flattened onto white in the thumbnail: 128/255 of (10,20,30) over white.
        let thumb = image::load_from_memory(&still.derived.thumb)
            .expect("thumb")
            .to_rgb8();
        let [r, _, b] = thumb.get_pixel(5, 5).0;
        assert!(
            (125..=140).contains(&r) && (135..=150).contains(&b),
            "{r} {b}"
        );
    }

    /// Recomputes a PNG chunk's CRC (ISO 3309, as in the PNG spec's sample code).
    fn crc32(data: &[u8]) -> u32 {
        let mut crc = 0xffff_ffffu32;
        for &byte in data {
            crc ^= u32::from(byte);
            for _ in 0..8 {
                crc = if crc & 1 != 0 {
                    0xedb8_8320 ^ (crc >> 1)
                } else {
                    crc >> 1
                };
            }
        }
        !crc
    }

    /// A 1×1 PNG whose IHDR is patched to claim `width`×`height` (with a valid CRC).
    pub fn png_claiming(width: u32, height: u32) -> Vec<u8> {
        let mut png = Vec::new();
        DynamicImage::ImageRgb8(RgbImage::new(1, 1))
            .write_to(&mut Cursor::new(&mut png), ImageFormat::Png)
            .expect("png");
        // Signature (8), length (4), "IHDR" (4), then width and height.
        assert_eq!(&png[12..16], b"IHDR");
        png[16..20].copy_from_slice(&width.to_be_bytes());
        png[20..24].copy_from_slice(&height.to_be_bytes());
        let crc = crc32(&png[12..29]);
        png[29..33].copy_from_slice(&crc.to_be_bytes());
        png
    }

    #[test]
    fn decompression_bombs_are_refused_from_the_header() {
        for (w, h) in [(100_000, 100_000), (20_000, 10), (10_000, 10_000)] {
            let err = process_still(&png_claiming(w, h), Format::Png, &limits()).expect_err("bomb");
            assert!(
                matches!(err, MediaError::DimensionsTooLarge { width, height } if (width, height) == (w, h)),
                "{w}×{h}: {err:?}"
            );
        }
        // Within limits, the same patched file is merely corrupt (its pixels are missing).
        let err = process_still(&png_claiming(100, 100), Format::Png, &limits()).expect_err("bad");
        assert!(matches!(err, MediaError::Corrupt(_)), "{err:?}");
    }

    #[test]
    fn large_images_get_a_preview_within_the_box() {
        let jpeg = two_tone_jpeg(2000, 500);
        let still = process_still(&jpeg, Format::Jpeg, &limits()).expect("processed");
        let preview =
            image::load_from_memory(&still.derived.preview.expect("preview")).expect("decodes");
        assert_eq!((preview.width(), preview.height()), (1280, 320));
        let thumb = image::load_from_memory(&still.derived.thumb).expect("decodes");
        assert_eq!((thumb.width(), thumb.height()), (320, 80));
        assert_eq!(still.derived.blurhash.len(), 6 + 2 * (4 * 3 - 1));
    }

    #[test]
    fn gif_first_frame_makes_the_thumbnail() {
        let mut gif = Vec::new();
        DynamicImage::ImageRgba8(image::RgbaImage::from_pixel(
            30,
            40,
            image::Rgba([0, 255, 0, 255]),
        ))
        .write_to(&mut Cursor::new(&mut gif), ImageFormat::Gif)
        .expect("gif");
        let still = process_still(&gif, Format::Gif, &limits()).expect("processed");
        assert_eq!(still.replacement, None);
        assert_eq!((still.width, still.height), (30, 40));
        // Portrait: 3×4 components, size flag (3−1) + (4−1)·9 = 29, base83 'T'.
        assert!(
            still.derived.blurhash.starts_with('T'),
            "{}",
            still.derived.blurhash
        );
    }

    #[test]
    fn webp_exif_is_stripped() {
        let mut webp = Vec::new();
        DynamicImage::ImageRgb8(RgbImage::from_pixel(8, 8, image::Rgb([1, 2, 3])))
            .write_to(&mut Cursor::new(&mut webp), ImageFormat::WebP)
            .expect("webp");
        let mut parsed = img_parts::webp::WebP::from_bytes(Bytes::from(webp)).expect("parse");
        parsed.set_exif(Some(Bytes::from(exif_with_gps(1)[6..].to_vec())));
        let webp = parsed.encoder().bytes().to_vec();
        assert!(contains(&webp, b"EXIF"));
        let still = process_still(&webp, Format::WebP, &limits()).expect("processed");
        let stored = still.replacement.expect("stripped");
        assert!(!contains(&stored, b"EXIF"));
        assert!(!contains(&stored, b"II*\0"));
        image::load_from_memory(&stored).expect("still a valid WebP");
    }
}
