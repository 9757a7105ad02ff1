//! The bodies of the cargo-fuzz targets (`wire/fuzz/`), kept here so the integration tests
//! replay the committed seed corpus and the malformed vectors through exactly the same code
//! without a nightly toolchain.
//!
//! Each function takes arbitrary bytes and panics only if an invariant breaks.

use bytes::{Bytes, BytesMut};

use crate::framing::{Frame, FrameDecoder, datagram, encode_delimited, websocket};
use crate::{ClientFrame, ServerFrame, WireError};

/// Stream decoder: the first input byte picks a chunk size and the second a max frame size;
/// the rest is a stream. Decoding it whole and in chunks must give the same frames and the
/// same error; every body must respect the limit; nothing may panic. Bodies then go through
/// the server's receive path (`ClientFrame::decode`); the deeper checks of every body are
/// `frame_to_domain`'s job.
pub fn stream_decoder(data: &[u8]) {
    let [chunk, max, stream @ ..] = data else {
        return;
    };
    let chunk = usize::from(*chunk).max(1);
    // Small limits exercise `FrameTooLarge`; 0 maps to the default.
    let max = if *max == 0 {
        crate::DEFAULT_MAX_FRAME_SIZE
    } else {
        usize::from(*max) * 4
    };
    let whole = run_stream(stream, stream.len().max(1), max);
    let split = run_stream(stream, chunk, max);
    assert_eq!(whole, split, "decoding depends on how the stream is split");
    let (bodies, _) = whole;
    for body in bodies {
        assert!(
            !body.is_empty() && body.len() <= max,
            "body of {} bytes escaped the limit {max}",
            body.len()
        );
        frame_to_domain(&body);
    }
}

/// The bodies and the outcome (error, or whether the stream ended cleanly) of decoding
/// `stream` fed in `chunk`-sized pieces.
fn run_stream(stream: &[u8], chunk: usize, max: usize) -> (Vec<Bytes>, Result<(), WireError>) {
    let mut decoder = FrameDecoder::new(max);
    let mut bodies = Vec::new();
    let stream = Bytes::copy_from_slice(stream);
    for start in (0..stream.len()).step_by(chunk) {
        let mut src = stream.slice(start..(start + chunk).min(stream.len()));
        loop {
            match decoder.decode(&mut src) {
                Ok(Some(body)) => bodies.push(body),
                Ok(None) => {
                    assert!(src.is_empty(), "decoder returned None with input left");
                    break;
                }
                Err(e) => return (bodies, Err(e)),
            }
        }
        assert!(
            decoder.buffered() <= max + 10,
            "decoder buffered more than one frame"
        );
    }
    let end = decoder.finish();
    (bodies, end)
}

/// Frame → domain: the bytes as a frame body of each direction, on each transport. Whatever
/// decodes must re-encode and decode to itself.
pub fn frame_to_domain(body: &[u8]) {
    check_direction::<ClientFrame>(body);
    check_direction::<ServerFrame>(body);
}

fn check_direction<F>(body: &[u8])
where
    F: Frame + PartialEq + std::fmt::Debug,
{
    let bytes = Bytes::copy_from_slice(body);
    let decoded = F::decode(bytes.clone());
    if let Err(e) = &decoded {
        // Every error maps to a code and a message without panicking.
        let _ = (e.code().info(), e.to_string(), e.client_msg_id());
    }
    let as_ws = websocket::decode::<F>(websocket::MessageType::Binary, bytes.clone(), usize::MAX);
    assert_eq!(
        decoded, as_ws,
        "WebSocket decoding differs from stream decoding"
    );
    let as_datagram = datagram::decode::<F>(bytes, usize::MAX);
    if let Ok(frame) = &as_datagram {
        assert!(frame.datagram_ok());
    }
    let Ok(frame) = decoded else {
        return;
    };
    let mut encoded = BytesMut::new();
    let encoded_ok = encode_delimited(&frame, usize::MAX, &mut encoded);
    assert!(encoded_ok.is_ok());
    let again = crate::decode_stream::<F>(encoded.freeze(), usize::MAX);
    assert_eq!(
        again.as_deref(),
        Ok(std::slice::from_ref(&frame)),
        "encode → decode is not the identity"
    );
}
