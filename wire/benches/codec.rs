//! Encode and decode of a server `Message` frame with 200 bytes of text content, the
//! hottest path of the gateway (fan-out encodes it, clients decode it).
//!
//! `cargo bench -p haberci-wire --bench codec`
//!
//! Decode runs the whole receive path: `FrameDecoder` slices the body out of a `Bytes`
//! chunk (no copy), prost decodes it (ids as `Bytes` slices of the chunk; `content` is the
//! one allocation), and proto → domain checks every field.

// The bench's inputs are its own, not a peer's: unwrap is fine here.
#![allow(clippy::unwrap_used)]

use bytes::{Bytes, BytesMut};
use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use haberci_wire::*;
use std::hint::black_box;
use uuid::Uuid;

fn message() -> ServerFrame {
    let id = |n: u128| Uuid::from_u128(n);
    ServerFrame::Message(Message {
        id: MessageId::new(id(0x0192_0000_0000_7000_8000_0000_0000_0e55)).unwrap(),
        sender_id: UserId::new(id(0xa11c)).unwrap(),
        recipient_id: RecipientId::new(id(0x0b0b)).unwrap(),
        kind: MessageKind::Text,
        content: "x".repeat(200),
        timestamp: Timestamp::from_unix_millis(1_795_600_800_000).unwrap(),
        status: MessageStatus::Sent,
        conversation_id: ConversationId::new(id(0xc0de)).unwrap(),
        seq: Seq::new(123_456).unwrap(),
        media: None,
    })
}

fn codec(c: &mut Criterion) {
    let frame = message();
    let mut encoded = BytesMut::new();
    encode_delimited(&frame, DEFAULT_MAX_FRAME_SIZE, &mut encoded).unwrap();
    let encoded = encoded.freeze();
    println!(
        "frame on the wire: {} bytes (200 bytes of content)",
        encoded.len()
    );

    let mut group = c.benchmark_group("message_200b");
    group.throughput(Throughput::Elements(1));
    group.bench_function("encode", |b| {
        let mut dst = BytesMut::with_capacity(4096);
        b.iter(|| {
            dst.clear();
            encode_delimited(black_box(&frame), DEFAULT_MAX_FRAME_SIZE, &mut dst).unwrap();
            black_box(&dst);
        });
    });
    group.bench_function("decode", |b| {
        let mut decoder = FrameDecoder::default();
        b.iter(|| {
            let mut chunk: Bytes = black_box(encoded.clone());
            let body = decoder.decode(&mut chunk).unwrap().unwrap();
            black_box(ServerFrame::decode(body).unwrap())
        });
    });
    group.finish();
}

criterion_group!(benches, codec);
criterion_main!(benches);
