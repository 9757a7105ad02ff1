//! Property tests. Case counts are kept moderate so the suite stays in seconds; the fuzz
//! targets do the long runs.

use bytes::{Bytes, BytesMut};
use haberci_wire::*;
use proptest::prelude::*;

use crate::fixtures::*;

fn config(cases: u32) -> ProptestConfig {
    ProptestConfig {
        cases,
        failure_persistence: None,
        ..ProptestConfig::default()
    }
}

fn stream_of<F: Frame>(frames: &[F]) -> Bytes {
    let mut dst = BytesMut::new();
    for frame in frames {
        encode_delimited(frame, usize::MAX, &mut dst).unwrap();
    }
    dst.freeze()
}

proptest! {
    #![proptest_config(config(256))]

    #[test]
    fn client_frames_encode_then_decode_to_themselves(frame in any_client_frame()) {
        let stream = stream_of(std::slice::from_ref(&frame));
        prop_assert_eq!(decode_stream::<ClientFrame>(stream, usize::MAX), Ok(vec![frame.clone()]));
        let body = websocket::encode(&frame, usize::MAX).unwrap();
        prop_assert_eq!(websocket::decode::<ClientFrame>(websocket::MessageType::Binary, body, usize::MAX), Ok(frame));
    }

    #[test]
    fn server_frames_encode_then_decode_to_themselves(frame in any_server_frame()) {
        let stream = stream_of(std::slice::from_ref(&frame));
        prop_assert_eq!(decode_stream::<ServerFrame>(stream, usize::MAX), Ok(vec![frame.clone()]));
    }

    #[test]
    fn frames_json_round_trips(client in any_client_frame(), server in any_server_frame()) {
        let json = serde_json::to_string(&client).unwrap();
        prop_assert_eq!(serde_json::from_str::<ClientFrame>(&json).unwrap(), client);
        let json = serde_json::to_string(&server).unwrap();
        prop_assert_eq!(serde_json::from_str::<ServerFrame>(&json).unwrap(), server);
    }

    /// proto ↔ domain ↔ JSON (the HTTP API form) without loss.
    #[test]
    fn message_proto_domain_json_round_trip(message in any_message()) {
        let proto = proto::Message::from(message.clone());
        let from_proto = Message::try_from(proto.clone()).unwrap();
        prop_assert_eq!(&from_proto, &message);
        let json = serde_json::to_string(&from_proto).unwrap();
        let from_json: Message = serde_json::from_str(&json).unwrap();
        prop_assert_eq!(&from_json, &message);
        prop_assert_eq!(proto::Message::from(from_json), proto);
    }

    #[test]
    fn any_split_of_a_stream_decodes_the_same_frames(
        frames in proptest::collection::vec(any_server_frame(), 1..8),
        cuts in proptest::collection::vec(any::<prop::sample::Index>(), 0..12),
    ) {
        let stream = stream_of(&frames);
        let mut cuts: Vec<usize> = cuts.iter().map(|i| i.index(stream.len() + 1)).collect();
        cuts.push(0);
        cuts.push(stream.len());
        cuts.sort_unstable();
        let mut decoder = FrameDecoder::new(usize::MAX);
        let mut got = Vec::new();
        for pair in cuts.windows(2) {
            let mut chunk = stream.slice(pair[0]..pair[1]);
            while let Some(body) = decoder.decode(&mut chunk).unwrap() {
                got.push(ServerFrame::decode(body).unwrap());
            }
            prop_assert!(chunk.is_empty());
        }
        prop_assert_eq!(decoder.finish(), Ok(()));
        prop_assert_eq!(got, frames);
    }

    #[test]
    fn timestamps_round_trip_through_text(ts in any_timestamp()) {
        prop_assert_eq!(Timestamp::parse_rfc3339(&ts.to_string()), Ok(ts));
        prop_assert_eq!(ts.to_string().len(), 24);
        prop_assert_eq!(Timestamp::from_datetime(ts.to_datetime()), Some(ts));
    }
}

proptest! {
    #![proptest_config(config(1024))]

    /// The fuzz targets' bodies, on proptest's inputs: arbitrary bytes never panic, and
    /// decoding never depends on how the stream is split.
    #[test]
    fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..512)) {
        haberci_wire::fuzzing::stream_decoder(&bytes);
        haberci_wire::fuzzing::frame_to_domain(&bytes);
    }

    /// Valid streams with a byte flipped: the mutations most likely to reach deep code.
    #[test]
    fn corrupted_streams_never_panic(frames in proptest::collection::vec(any_client_frame(), 1..4), flip in any::<(prop::sample::Index, u8)>()) {
        let mut bytes = stream_of(&frames).to_vec();
        let at = flip.0.index(bytes.len());
        bytes[at] ^= flip.1;
        let mut input = vec![7, 0];
        input.extend_from_slice(&bytes);
        haberci_wire::fuzzing::stream_decoder(&input);
    }
}
