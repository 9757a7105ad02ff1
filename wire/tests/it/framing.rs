//! The stream decoder's edge cases, the encoder's limit, WebSocket and datagram rules.

use bytes::{Bytes, BytesMut};
use haberci_wire::*;

use crate::fixtures;

fn encoded_stream(frames: &[ServerFrame]) -> Bytes {
    let mut dst = BytesMut::new();
    for frame in frames {
        encode_delimited(frame, DEFAULT_MAX_FRAME_SIZE, &mut dst).unwrap();
    }
    dst.freeze()
}

fn all_server_frames() -> Vec<ServerFrame> {
    fixtures::server_frames()
        .into_iter()
        .map(|(_, f)| f)
        .collect()
}

#[test]
fn encode_matches_prost_length_delimited() {
    use prost::Message as _;
    let frame = ServerFrame::Message(fixtures::message());
    let mut ours = BytesMut::new();
    encode_delimited(&frame, DEFAULT_MAX_FRAME_SIZE, &mut ours).unwrap();
    let theirs = proto::ServerFrame::from(frame).encode_length_delimited_to_vec();
    assert_eq!(&ours[..], &theirs[..]);
}

#[test]
fn many_frames_in_one_chunk() {
    let frames = all_server_frames();
    assert_eq!(
        decode_stream::<ServerFrame>(encoded_stream(&frames), DEFAULT_MAX_FRAME_SIZE).unwrap(),
        frames
    );
}

#[test]
fn one_byte_at_a_time() {
    let frames = all_server_frames();
    let stream = encoded_stream(&frames);
    let mut decoder = FrameDecoder::default();
    let mut got = Vec::new();
    for i in 0..stream.len() {
        let mut chunk = stream.slice(i..i + 1);
        while let Some(body) = decoder.decode(&mut chunk).unwrap() {
            got.push(ServerFrame::decode(body).unwrap());
        }
        assert!(chunk.is_empty());
    }
    decoder.finish().unwrap();
    assert_eq!(got, frames);
}

#[test]
fn a_whole_frame_in_one_chunk_is_not_copied() {
    let stream = encoded_stream(&all_server_frames());
    let range = stream.as_ptr_range();
    let mut src = stream.clone();
    let mut decoder = FrameDecoder::default();
    while let Some(body) = decoder.decode(&mut src).unwrap() {
        assert!(
            range.contains(&body.as_ptr()),
            "body was copied out of the chunk"
        );
    }
}

#[test]
fn declared_length_above_max_is_refused_before_any_body_byte() {
    let mut decoder = FrameDecoder::new(1024);
    // 1025 = 0x81 0x08, and no body at all.
    let mut src = Bytes::from_static(&[0x81, 0x08]);
    assert_eq!(
        decoder.decode(&mut src),
        Err(WireError::FrameTooLarge {
            declared: 1025,
            max: 1024
        })
    );
    assert_eq!(decoder.buffered(), 0);
    // Exactly the limit is fine.
    let mut decoder = FrameDecoder::new(1024);
    let mut src = Bytes::from_static(&[0x80, 0x08]);
    assert_eq!(decoder.decode(&mut src), Ok(None));
}

#[test]
fn declared_length_above_max_is_refused_when_the_prefix_is_split() {
    let mut decoder = FrameDecoder::new(DEFAULT_MAX_FRAME_SIZE);
    // 2^32 declared, fed one byte at a time.
    let prefix = [0x80, 0x80, 0x80, 0x80, 0x10];
    for b in &prefix[..4] {
        assert_eq!(decoder.decode(&mut Bytes::copy_from_slice(&[*b])), Ok(None));
    }
    let err = decoder
        .decode(&mut Bytes::copy_from_slice(&prefix[4..]))
        .unwrap_err();
    assert_eq!(
        err,
        WireError::FrameTooLarge {
            declared: 1 << 32,
            max: DEFAULT_MAX_FRAME_SIZE
        }
    );
    assert_eq!(err.code(), ErrorCode::FrameTooLarge);
}

#[test]
fn the_largest_varint_is_too_large_not_malformed() {
    let mut src = Bytes::from_static(&[0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x01]);
    assert_eq!(
        FrameDecoder::default().decode(&mut src),
        Err(WireError::FrameTooLarge {
            declared: u64::MAX,
            max: DEFAULT_MAX_FRAME_SIZE
        })
    );
}

#[test]
fn malformed_varints() {
    // Eleven continuation bytes: longer than any u64 varint.
    let long = [0x80u8; 11];
    // Ten bytes whose last carries more than the u64's top bit.
    let overflow = [0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x02];
    for bytes in [&long[..], &overflow[..]] {
        let mut whole = Bytes::copy_from_slice(bytes);
        assert_eq!(
            FrameDecoder::default().decode(&mut whole),
            Err(WireError::MalformedLength)
        );
        // Split: the same answer, from the slow path.
        let mut decoder = FrameDecoder::default();
        let mut result = Ok(None);
        for b in bytes {
            result = decoder.decode(&mut Bytes::copy_from_slice(&[*b]));
            if result.is_err() {
                break;
            }
        }
        assert_eq!(result, Err(WireError::MalformedLength));
        assert_eq!(WireError::MalformedLength.code(), ErrorCode::BadFrame);
    }
}

#[test]
fn zero_length_frame_is_refused() {
    let err = FrameDecoder::default()
        .decode(&mut Bytes::from_static(&[0x00]))
        .unwrap_err();
    assert_eq!(err, WireError::EmptyFrame);
    assert_eq!(err.code(), ErrorCode::BadFrame);
    assert_eq!(
        ClientFrame::decode(Bytes::new()),
        Err(WireError::EmptyFrame)
    );
}

#[test]
fn stream_ending_inside_a_frame_is_truncated() {
    let stream = encoded_stream(&[ServerFrame::Message(fixtures::message())]);
    let mut decoder = FrameDecoder::default();
    let mut src = stream.slice(..stream.len() - 1);
    assert_eq!(decoder.decode(&mut src), Ok(None));
    assert_eq!(
        decoder.finish(),
        Err(WireError::Truncated {
            buffered: stream.len() - 2
        })
    );
    // Inside the prefix too.
    let mut decoder = FrameDecoder::default();
    assert_eq!(decoder.decode(&mut Bytes::from_static(&[0x80])), Ok(None));
    assert_eq!(decoder.finish(), Err(WireError::Truncated { buffered: 1 }));
    // A clean end is fine.
    assert_eq!(FrameDecoder::default().finish(), Ok(()));
}

#[test]
fn after_an_error_the_decoder_stays_failed() {
    let mut decoder = FrameDecoder::default();
    assert_eq!(
        decoder.decode(&mut Bytes::from_static(&[0x00])),
        Err(WireError::EmptyFrame)
    );
    let mut good = encoded_stream(&[ServerFrame::Pong(Pong { nonce: 1 })]);
    assert_eq!(decoder.decode(&mut good), Err(WireError::EmptyFrame));
    assert_eq!(decoder.finish(), Err(WireError::EmptyFrame));
}

#[test]
fn body_that_is_not_protobuf_is_a_bad_frame() {
    let err = ClientFrame::decode(Bytes::from_static(&[0xff, 0xff])).unwrap_err();
    assert!(matches!(err, WireError::Protobuf(_)), "{err:?}");
    assert_eq!(err.code(), ErrorCode::BadFrame);
}

#[test]
fn unknown_frame_kind_is_its_own_error() {
    // Field 99, varint 1: a frame kind from a newer peer.
    let err = ClientFrame::decode(Bytes::from_static(&[0x98, 0x06, 0x01])).unwrap_err();
    assert_eq!(err, WireError::UnknownFrameKind);
    assert_eq!(err.code(), ErrorCode::UnknownFrameKind);
    assert!(!err.code().is_fatal());
}

#[test]
fn unknown_fields_are_ignored() {
    let mut body = BytesMut::new();
    encode_body(
        &ClientFrame::Ping(Ping { nonce: 5 }),
        DEFAULT_MAX_FRAME_SIZE,
        &mut body,
    )
    .unwrap();
    // Append field 15 (length-delimited, 2 bytes) at the top level…
    body.extend_from_slice(&[0x7a, 0x02, 0xab, 0xcd]);
    assert_eq!(
        ClientFrame::decode(body.freeze()),
        Ok(ClientFrame::Ping(Ping { nonce: 5 }))
    );
    // …and inside Ping: ClientFrame{ping(8): Ping{nonce: 5, field 9: 1}}.
    let nested = Bytes::from_static(&[0x42, 0x04, 0x08, 0x05, 0x48, 0x01]);
    assert_eq!(
        ClientFrame::decode(nested),
        Ok(ClientFrame::Ping(Ping { nonce: 5 }))
    );
}

#[test]
fn encoder_refuses_frames_above_the_peers_limit() {
    let frame = ServerFrame::Message(fixtures::message());
    let mut dst = BytesMut::new();
    let err = encode_delimited(&frame, 10, &mut dst).unwrap_err();
    assert!(matches!(err, WireError::FrameTooLarge { max: 10, .. }));
    assert!(dst.is_empty(), "nothing written on error");
    assert!(encode_body(&frame, 10, &mut dst).is_err());
}

#[test]
fn configurable_max() {
    let frame = ServerFrame::Message(fixtures::message());
    let stream = encoded_stream(std::slice::from_ref(&frame));
    let body_len = stream.len() - 1;
    assert_eq!(
        decode_stream::<ServerFrame>(stream.clone(), body_len),
        Ok(vec![frame])
    );
    assert!(matches!(
        decode_stream::<ServerFrame>(stream, body_len - 1),
        Err(WireError::FrameTooLarge { .. })
    ));
}

#[test]
fn websocket_binary_and_text() {
    let frame = ClientFrame::Ping(Ping { nonce: 9 });
    let payload = websocket::encode(&frame, DEFAULT_MAX_FRAME_SIZE).unwrap();
    assert_eq!(
        websocket::decode::<ClientFrame>(
            websocket::MessageType::Binary,
            payload.clone(),
            DEFAULT_MAX_FRAME_SIZE
        ),
        Ok(frame)
    );
    let err = websocket::decode::<ClientFrame>(
        websocket::MessageType::Text,
        payload.clone(),
        DEFAULT_MAX_FRAME_SIZE,
    )
    .unwrap_err();
    assert_eq!(err, WireError::TextMessage);
    assert_eq!(err.code(), ErrorCode::TextMessageRefused);
    assert_eq!(err.code().websocket_close_code(), 4016);
    let err =
        websocket::decode::<ClientFrame>(websocket::MessageType::Binary, payload, 1).unwrap_err();
    assert_eq!(err.code(), ErrorCode::FrameTooLarge);
    let err = websocket::decode::<ClientFrame>(websocket::MessageType::Binary, Bytes::new(), 1)
        .unwrap_err();
    assert_eq!(err, WireError::EmptyFrame);
}

#[test]
fn only_ephemeral_frames_travel_as_datagrams() {
    for (name, frame) in fixtures::client_frames() {
        let ok = matches!(frame, ClientFrame::Typing(_));
        assert_eq!(frame.may_travel_as_datagram(), ok, "{name}");
        let encoded = datagram::encode(&frame, DEFAULT_MAX_FRAME_SIZE);
        assert_eq!(encoded.is_ok(), ok, "{name}");
        // A peer sending it as a datagram anyway is refused.
        let body = websocket::encode(&frame, DEFAULT_MAX_FRAME_SIZE).unwrap();
        match datagram::decode::<ClientFrame>(body, DEFAULT_MAX_FRAME_SIZE) {
            Ok(decoded) => assert!(ok && decoded == frame, "{name}"),
            Err(e) => {
                assert!(!ok, "{name}");
                assert_eq!(e, WireError::NotDatagram { kind: frame.kind() });
                assert_eq!(e.code(), ErrorCode::BadFrame);
            }
        }
    }
    for (name, frame) in fixtures::server_frames() {
        let ok = matches!(frame, ServerFrame::Typing(_) | ServerFrame::Presence(_));
        assert_eq!(frame.may_travel_as_datagram(), ok, "{name}");
        assert_eq!(
            datagram::encode(&frame, DEFAULT_MAX_FRAME_SIZE).is_ok(),
            ok,
            "{name}"
        );
    }
}
