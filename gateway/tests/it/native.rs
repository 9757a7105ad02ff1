//! A native QUIC (`haberci/1`) client written from docs/PROTOCOL.md: one bidirectional stream of
//! length-delimited frames, and datagrams for ephemeral frames. Its handshake cases are rows of
//! [`crate::handshake`]; the relay tests drive sessions with it.

use bytes::BytesMut;
use haberci_testkit::{Stack, TIMEOUT};
use haberci_wire::{ClientFrame, Closing, ErrorCode, Frame, FrameDecoder, ServerFrame};

use crate::support::{self, QuicClient};

/// A native session's stream.
pub struct Native {
    pub client: QuicClient,
    send: quinn::SendStream,
    recv: quinn::RecvStream,
    decoder: FrameDecoder,
    pending: Vec<ServerFrame>,
}

impl Native {
    pub async fn open(stack: &Stack) -> Native {
        Self::open_with(stack, quinn::TransportConfig::default()).await
    }

    /// A session whose client has its own QUIC transport settings.
    pub async fn open_with(stack: &Stack, transport: quinn::TransportConfig) -> Native {
        let roots = support::roots(stack);
        let client =
            QuicClient::connect_with(stack.gateway_udp, roots, haberci_wire::ALPN, transport)
                .await
                .unwrap();
        let (send, recv) = client.connection.open_bi().await.unwrap();
        Native {
            client,
            send,
            recv,
            decoder: FrameDecoder::new(haberci_wire::DEFAULT_MAX_FRAME_SIZE),
            pending: Vec::new(),
        }
    }

    pub async fn write(&mut self, frame: &ClientFrame) {
        let mut buf = BytesMut::new();
        haberci_wire::encode_delimited(frame, haberci_wire::DEFAULT_MAX_FRAME_SIZE, &mut buf)
            .unwrap();
        self.write_bytes(&buf).await;
    }

    /// Bytes on the stream, then its end (FIN).
    pub async fn finish_with(&mut self, bytes: &[u8]) {
        self.send.write_all(bytes).await.unwrap();
        self.send.finish().unwrap();
    }

    /// Bytes on the stream as they are, framed or not.
    pub async fn write_bytes(&mut self, bytes: &[u8]) {
        self.send.write_all(bytes).await.unwrap();
    }

    pub async fn read(&mut self) -> ServerFrame {
        tokio::time::timeout(TIMEOUT, async {
            loop {
                if !self.pending.is_empty() {
                    return self.pending.remove(0);
                }
                // Ephemeral frames may come as datagrams.
                let chunk = tokio::select! {
                    chunk = self.recv.read_chunk(64 * 1024, true) => chunk,
                    datagram = self.client.connection.read_datagram() => {
                        let frame = haberci_wire::datagram::decode::<ServerFrame>(
                            datagram.unwrap(),
                            haberci_wire::DEFAULT_MAX_FRAME_SIZE,
                        );
                        self.pending.push(frame.unwrap());
                        continue;
                    }
                };
                let chunk = chunk
                    .unwrap()
                    .expect("the server sends a frame before finishing");
                let mut bytes = chunk.bytes;
                while let Some(body) = self.decoder.decode(&mut bytes).unwrap() {
                    self.pending.push(ServerFrame::decode(body).unwrap());
                }
            }
        })
        .await
        .expect("a frame in time")
    }

    /// A Closing frame with `code`, then the QUIC close that matches it.
    pub async fn expect_closing(&mut self, code: ErrorCode) -> Closing {
        let closing = match self.read().await {
            ServerFrame::Closing(closing) => closing,
            other => panic!("expected Closing({code:?}), got {other:?}"),
        };
        assert_eq!(closing.code, code);
        support::expect_quic_close(&self.client.connection, code).await;
        closing
    }
}
