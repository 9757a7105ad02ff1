//! What is uploaded, made before any clock starts: random bytes (each upload different, so
//! the store's deduplication never shortcuts one), JPEGs of a given size, and which bench
//! user each upload is charged to (the quota plan).

use bytes::Bytes;

/// How many bytes at the start of a file say which upload it is (at most).
const STAMP_LEN: usize = 64;

/// `len` pseudo-random bytes from `seed` (SplitMix64: fast, and incompressible enough that
/// nothing on the way can shrink them).
pub fn random_bytes(len: usize, seed: u64) -> Vec<u8> {
    let mut state = seed;
    let mut out = Vec::with_capacity(len + 8);
    while out.len() < len {
        out.extend_from_slice(&splitmix(&mut state).to_le_bytes());
    }
    out.truncate(len);
    out
}

/// The next number of a SplitMix64 sequence whose state is `state`.
pub fn splitmix(state: &mut u64) -> u64 {
    *state = state.wrapping_add(0x9E37_79B9_7F4A_7C15);
    let mut z = *state;
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// `base` with its first bytes replaced by a text naming upload `n` of run `run`: a file of
/// its own (another SHA-256), which starts with text, so no sniffer takes it for an
/// executable.
pub fn stamped(base: &[u8], run: u64, n: usize) -> Bytes {
    let mut bytes = base.to_vec();
    let stamp = format!("haberci-bench media {run:016x} {n:08}\n");
    let len = stamp.len().min(STAMP_LEN).min(bytes.len());
    bytes[..len].copy_from_slice(&stamp.as_bytes()[..len]);
    Bytes::from(bytes)
}

/// A `width`×`height` JPEG (quality 85) that looks like a photo to an encoder: smooth
/// gradients with some texture, different for each `seed`.
pub fn jpeg(width: u32, height: u32, seed: u64) -> anyhow::Result<Vec<u8>> {
    let noise = random_bytes((width as usize) * (height as usize), seed);
    let pixels = image::RgbImage::from_fn(width, height, |x, y| {
        let n = noise[(y as usize) * (width as usize) + (x as usize)] / 8;
        let fx = x * 255 / width.max(1);
        let fy = y * 255 / height.max(1);
        let wave = ((x / 37 + y / 53).wrapping_add(seed as u32) % 64) as u8;
        image::Rgb([
            (fx as u8).wrapping_add(n),
            (fy as u8).wrapping_add(wave),
            ((fx + fy) / 2) as u8 ^ n,
        ])
    });
    let mut out = Vec::new();
    let encoder = image::codecs::jpeg::JpegEncoder::new_with_quality(&mut out, 85);
    pixels.write_with_encoder(encoder)?;
    Ok(out)
}

/// Which bench user each upload goes to: `room[u]` is what user `u` may still store, `sizes`
/// the uploads in order. Each upload goes to the first user with room for it (so the same
/// users fill up run after run, and later users stay free). `None`: not enough room in all.
pub fn assign(room: &[u64], sizes: &[u64]) -> Option<Vec<usize>> {
    let mut room = room.to_vec();
    let mut owners = Vec::with_capacity(sizes.len());
    for &size in sizes {
        let user = room.iter().position(|r| *r >= size)?;
        room[user] -= size;
        owners.push(user);
    }
    Some(owners)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    #[test]
    fn stamps_make_distinct_files_of_the_same_size() {
        let base = random_bytes(1000, 7);
        assert_eq!(base.len(), 1000);
        let (a, b) = (stamped(&base, 1, 0), stamped(&base, 1, 1));
        assert_eq!(a.len(), 1000);
        assert_ne!(a, b);
        assert_eq!(a[STAMP_LEN..], base[STAMP_LEN..]);
        assert!(a.starts_with(b"haberci-bench media"));
        assert_eq!(stamped(&base[..10], 1, 0).len(), 10);
        // The whole stamp fits: uploads of one run differ.
        assert_ne!(stamped(&base, u64::MAX, 0), stamped(&base, u64::MAX, 1));
    }

    #[test]
    fn uploads_go_to_the_first_user_with_room() {
        assert_eq!(
            assign(&[150, 0, 300], &[100, 100, 100, 50]),
            Some(vec![0, 2, 2, 0])
        );
        assert_eq!(assign(&[150, 150], &[200]), None);
        assert_eq!(assign(&[], &[]), Some(vec![]));
    }

    #[test]
    fn jpegs_decode_at_their_size() {
        let bytes = jpeg(64, 48, 3).unwrap();
        let img = image::load_from_memory(&bytes).unwrap();
        assert_eq!((img.width(), img.height()), (64, 48));
        assert_ne!(bytes, jpeg(64, 48, 4).unwrap());
    }
}
