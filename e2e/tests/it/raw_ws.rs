//! The message path through real processes with a bare WebSocket client written from
//! docs/PROTOCOL.md (no SDK): a direct message is stored (`Sent`), delivered to the peer and
//! echoed to the sender's session, and receipts come back as `Status`.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use futures::{SinkExt, StreamExt};
use haberci_testkit::tls;
use haberci_wire::websocket::MessageType;
use haberci_wire::{
    Ack, ClientFrame, ClientMsgId, ConversationId, Hello, MessageKind, Read, Recipient,
    ResumePosition, SendMessage, Seq, ServerFrame,
};
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;

use crate::support::{Cluster, TIMEOUT};

type Socket =
    tokio_tungstenite::WebSocketStream<tokio_rustls::client::TlsStream<tokio::net::TcpStream>>;

pub struct Raw {
    socket: Socket,
}

impl Raw {
    /// A WebSocket to gateway number `gateway`, upgraded, with nothing sent yet.
    pub async fn open(cluster: &Cluster, gateway: usize) -> Raw {
        Raw::open_at(&cluster.certs.ca_cert(), cluster.gateways[gateway].tcp)
            .await
            .expect("WebSocket upgrade")
    }

    /// A WebSocket to the gateway at `addr` (TCP), trusting the CA in `ca`.
    pub async fn open_at(ca: &Path, addr: SocketAddr) -> std::io::Result<Raw> {
        let tls = tls::connect(addr, tls::roots(&[ca]), b"http/1.1").await?;
        let mut request = "wss://localhost/v1/ws".into_client_request().unwrap();
        request
            .headers_mut()
            .insert("sec-websocket-protocol", "haberci.v1".parse().unwrap());
        let (socket, _) = tokio_tungstenite::client_async(request, tls)
            .await
            .map_err(std::io::Error::other)?;
        Ok(Raw { socket })
    }

    /// `Hello` on an open socket; `true` once `Welcome` came.
    async fn hello(&mut self, token: &str, resume: Vec<ResumePosition>) -> bool {
        self.write(&ClientFrame::Hello(Hello {
            access_token: token.to_owned(),
            protocol_version: 1,
            client_name: "e2e-raw".into(),
            client_version: "0".into(),
            resume,
            max_error_code: 0,
        }))
        .await;
        matches!(self.next_frame().await, Some(ServerFrame::Welcome(_)))
    }

    /// A session: `Hello` (resuming from `resume`), then `Welcome`.
    pub async fn connect_resuming(
        cluster: &Cluster,
        gateway: usize,
        token: &str,
        resume: Vec<ResumePosition>,
    ) -> Raw {
        let mut raw = Raw::open(cluster, gateway).await;
        assert!(raw.hello(token, resume).await, "expected Welcome");
        raw
    }

    pub async fn connect(cluster: &Cluster, gateway: usize, token: &str) -> Raw {
        Raw::connect_resuming(cluster, gateway, token, Vec::new()).await
    }

    /// Sends `bytes` as one binary WebSocket message, whatever they are.
    pub async fn write_binary(&mut self, bytes: Vec<u8>) {
        self.socket
            .send(Message::Binary(bytes.into()))
            .await
            .unwrap();
    }

    pub async fn write(&mut self, frame: &ClientFrame) {
        let bytes =
            haberci_wire::websocket::encode(frame, haberci_wire::DEFAULT_MAX_FRAME_SIZE).unwrap();
        // A write to a connection the server already closed is not the test's concern: the
        // next read says how it ended.
        let _ = self.socket.send(Message::Binary(bytes)).await;
    }

    pub async fn read(&mut self) -> ServerFrame {
        self.next_frame()
            .await
            .expect("a frame, not the end of the connection")
    }

    /// The next frame; `None` once the connection closed (a close message, a reset, the end).
    pub async fn next_frame(&mut self) -> Option<ServerFrame> {
        loop {
            let message = tokio::time::timeout(TIMEOUT, self.socket.next())
                .await
                .expect("a frame in time");
            match message {
                Some(Ok(Message::Binary(payload))) => {
                    let raw = payload.clone();
                    return Some(
                        haberci_wire::websocket::decode(
                            MessageType::Binary,
                            payload,
                            haberci_wire::DEFAULT_MAX_FRAME_SIZE,
                        )
                        .unwrap_or_else(|e| panic!("{e:?}: {:?}", String::from_utf8_lossy(&raw))),
                    );
                }
                Some(Ok(Message::Ping(_) | Message::Pong(_))) => continue,
                Some(Ok(Message::Close(_)) | Err(_)) | None => return None,
                other => panic!("unexpected {other:?}"),
            }
        }
    }

    /// Reads until `pick` accepts a frame; other frames are skipped.
    pub async fn until<T>(&mut self, mut pick: impl FnMut(&ServerFrame) -> Option<T>) -> T {
        loop {
            let frame = self.read().await;
            if let Some(found) = pick(&frame) {
                return found;
            }
        }
    }
}

/// What a bare session saw: every `Message` frame as it came off the wire (no SDK in between
/// to drop duplicates), per conversation, in arrival order.
pub type Seen = BTreeMap<ConversationId, Vec<u64>>;

/// Watches `token`'s messages on a bare WebSocket session until `total` `Message` frames
/// arrived. When a connection ends it reconnects (to the next of `gateways`, TCP addresses)
/// resuming from the highest seq seen per conversation, as docs/PROTOCOL.md tells a client to.
pub fn observe(
    ca: PathBuf,
    gateways: Vec<SocketAddr>,
    token: String,
    total: usize,
) -> tokio::task::JoinHandle<Seen> {
    tokio::spawn(async move {
        let mut seen = Seen::new();
        let count = |seen: &Seen| seen.values().map(Vec::len).sum::<usize>();
        let deadline = tokio::time::Instant::now() + TIMEOUT * 2;
        for addr in gateways.iter().cycle() {
            assert!(
                tokio::time::Instant::now() < deadline,
                "observer: {} of {total} messages, then no session: {seen:?}",
                count(&seen)
            );
            let resume = seen
                .iter()
                .filter_map(|(c, seqs)| {
                    Some(ResumePosition {
                        conversation_id: *c,
                        last_seq: Seq::new(*seqs.iter().max()?),
                    })
                })
                .collect();
            if let Ok(mut raw) = Raw::open_at(&ca, *addr).await
                && raw.hello(&token, resume).await
            {
                while let Some(frame) = raw.next_frame().await {
                    if let ServerFrame::Message(m) = frame {
                        seen.entry(m.conversation_id).or_default().push(m.seq.get());
                        if count(&seen) >= total {
                            return seen;
                        }
                    }
                }
            }
            // Reconnect backoff (the server is down or refusing), not a wait for an event.
            tokio::time::sleep(std::time::Duration::from_millis(200)).await;
        }
        unreachable!("cycle never ends")
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_direct_message_is_stored_delivered_and_receipted_across_gateways() {
    let cluster = Cluster::start(1, 2).await;
    let alice_user = cluster.register("alice").await;
    let bob_user = cluster.register("bob").await;
    let mut alice = Raw::connect(&cluster, 0, &alice_user.token).await;
    let mut bob = Raw::connect(&cluster, 1, &bob_user.token).await;

    let client_msg_id = ClientMsgId::new(uuid::Uuid::now_v7()).unwrap();
    alice
        .write(&ClientFrame::Send(SendMessage {
            client_msg_id,
            recipient: Recipient::User(bob_user.id),
            kind: MessageKind::Text,
            content: "merhaba".into(),
            media: None,
        }))
        .await;
    let sent = alice
        .until(|f| match f {
            ServerFrame::Sent(sent) => Some(*sent),
            ServerFrame::Error(e) => panic!("send refused: {e:?}"),
            _ => None,
        })
        .await;
    assert_eq!(sent.client_msg_id, client_msg_id);
    assert_eq!(sent.seq.get(), 1);

    let message = bob
        .until(|f| match f {
            ServerFrame::Message(m) => Some(m.clone()),
            _ => None,
        })
        .await;
    assert_eq!(message.id, sent.message_id);
    assert_eq!(message.content, "merhaba");
    assert_eq!(message.sender_id, alice_user.id);
    assert_eq!(message.conversation_id, sent.conversation_id);

    bob.write(&ClientFrame::Ack(Ack {
        conversation_id: message.conversation_id,
        seq: message.seq,
    }))
    .await;
    bob.write(&ClientFrame::Read(Read {
        conversation_id: message.conversation_id,
        seq: message.seq,
    }))
    .await;
    let status = alice
        .until(|f| match f {
            ServerFrame::Status(s) if s.read.is_some() => Some(*s),
            _ => None,
        })
        .await;
    assert_eq!(status.user_id, bob_user.id);
    assert_eq!(status.read, Some(message.seq));
    assert_eq!(status.delivered, Some(message.seq));
}
