//! The driver over an in-memory transport on tokio's paused clock: the tests play the server,
//! and timers fire as virtual time advances (no real waiting).
#![allow(clippy::unwrap_used)]

use bytes::Bytes;
use haberci_wire::{
    ClientFrame, ConversationId, Frame, Limits, Message, MessageId, MessageKind, MessageStatus,
    Pong, ServerFrame, SessionId, Timestamp,
};

use super::*;
use crate::config::{Roots, Transport};
use crate::transport::memory;

const IDLE_TIMEOUT_MS: u32 = 75_000;

struct Server {
    from_client: mpsc::UnboundedReceiver<Bytes>,
    to_client: mpsc::UnboundedSender<Result<haberci_wire::ServerFrame, Disconnect>>,
}

impl Server {
    /// The next frame the client writes, within `within` of virtual time.
    async fn next(&mut self, within: Duration) -> ClientFrame {
        let body = tokio::time::timeout(within, self.from_client.recv())
            .await
            .expect("a frame in time")
            .expect("the client is writing");
        ClientFrame::decode(body).unwrap()
    }

    fn send(&self, frame: ServerFrame) {
        self.to_client.send(Ok(frame)).unwrap();
    }
}

fn id(n: u128) -> uuid::Uuid {
    uuid::Uuid::from_u128(n)
}

/// A client connected through channels, past Welcome.
async fn connected() -> (Client, Events, Server) {
    let (to_server, from_client) = mpsc::unbounded_channel();
    let (to_client, from_server) = mpsc::unbounded_channel();
    let server = Server {
        from_client,
        to_client,
    };
    server.send(ServerFrame::Welcome(Welcome {
        session_id: SessionId::new(id(1)).unwrap(),
        user_id: UserId::new(id(2)).unwrap(),
        protocol_version: 1,
        server_time: Timestamp::UNIX_EPOCH,
        token_expires_at: Timestamp::UNIX_EPOCH,
        limits: Limits {
            max_frame_size: 65_536,
            send_rate_per_sec: 20,
            send_burst: 40,
            idle_timeout_ms: IDLE_TIMEOUT_MS,
        },
    }));
    let config = ClientConfig::new(
        Transport::Quic {
            addr: "localhost:4433".into(),
        },
        Roots::Store(rustls::RootCertStore::empty()),
        "token",
    );
    let (client, events) = open(
        config,
        FrameSink::Memory(memory::Sink(to_server)),
        FrameStream::Memory(memory::Stream(from_server)),
    )
    .await
    .unwrap();
    let mut server = server;
    assert!(matches!(
        server.next(Duration::ZERO).await,
        ClientFrame::Hello(_)
    ));
    (client, events, server)
}

#[tokio::test(start_paused = true)]
async fn the_driver_pings_on_schedule_and_gives_up_without_a_pong() {
    let (_client, mut events, mut server) = connected().await;
    let start = Instant::now();
    let ClientFrame::Ping(ping) = server.next(Duration::from_secs(60)).await else {
        panic!("expected Ping")
    };
    assert_eq!(start.elapsed(), crate::DEFAULT_PING_INTERVAL);
    server.send(ServerFrame::Pong(Pong { nonce: ping.nonce }));

    // The next one goes unanswered.
    let ClientFrame::Ping(_) = server.next(Duration::from_secs(60)).await else {
        panic!("expected Ping")
    };
    assert_eq!(start.elapsed(), 2 * crate::DEFAULT_PING_INTERVAL);
    let event = tokio::time::timeout(Duration::from_secs(60), events.recv())
        .await
        .unwrap();
    assert_eq!(event, Some(Event::Disconnected(Disconnect::PongTimeout)));
    assert_eq!(
        start.elapsed(),
        2 * crate::DEFAULT_PING_INTERVAL + crate::DEFAULT_PONG_TIMEOUT
    );
}

#[tokio::test(start_paused = true)]
async fn the_driver_acks_what_arrives_and_answers_each_send() {
    let (client, mut events, mut server) = connected().await;
    let conversation = ConversationId::new(id(3)).unwrap();
    for n in 1..=3 {
        server.send(ServerFrame::Message(Message {
            id: MessageId::new(id(100 + u128::from(n))).unwrap(),
            sender_id: UserId::new(id(4)).unwrap(),
            recipient_id: UserId::new(id(2)).unwrap().into(),
            kind: MessageKind::Text,
            content: format!("{n}"),
            timestamp: Timestamp::UNIX_EPOCH,
            status: MessageStatus::Sent,
            conversation_id: conversation,
            seq: Seq::new(n).unwrap(),
            media: None,
        }));
    }
    for _ in 1..=3 {
        assert!(matches!(events.recv().await, Some(Event::Message(_))));
    }
    // One cumulative Ack for the three, after the ack delay.
    let start = Instant::now();
    assert_eq!(
        server.next(Duration::from_secs(1)).await,
        ClientFrame::Ack(haberci_wire::Ack {
            conversation_id: conversation,
            seq: Seq::new(3).unwrap()
        })
    );
    assert!(start.elapsed() <= crate::DEFAULT_ACK_DELAY);
    assert_eq!(client.positions()[0].last_seq, Seq::new(3));

    let message = crate::text_to(UserId::new(id(4)).unwrap(), "hi");
    let pending = tokio::spawn({
        let client = client.clone();
        let message = message.clone();
        async move { client.send(message).await }
    });
    let ClientFrame::Send(send) = server.next(Duration::from_secs(1)).await else {
        panic!("expected Send")
    };
    assert_eq!(send, message);
    let sent = Sent {
        client_msg_id: send.client_msg_id,
        message_id: MessageId::new(id(200)).unwrap(),
        conversation_id: conversation,
        seq: Seq::new(4).unwrap(),
        timestamp: Timestamp::UNIX_EPOCH,
    };
    server.send(ServerFrame::Sent(sent));
    assert_eq!(pending.await.unwrap(), Ok(sent));
    // The position moves with our own Message, which the sending session gets too.
    server.send(ServerFrame::Message(Message {
        id: sent.message_id,
        sender_id: client.user_id(),
        recipient_id: UserId::new(id(4)).unwrap().into(),
        kind: MessageKind::Text,
        content: "hi".into(),
        timestamp: Timestamp::UNIX_EPOCH,
        status: MessageStatus::Sent,
        conversation_id: conversation,
        seq: sent.seq,
        media: None,
    }));
    assert!(matches!(events.recv().await, Some(Event::Message(m)) if m.seq == sent.seq));
    assert_eq!(client.positions()[0].last_seq, Seq::new(4));
}

#[tokio::test(start_paused = true)]
async fn a_transport_failure_fails_sends_in_flight() {
    let (client, mut events, mut server) = connected().await;
    let pending = tokio::spawn({
        let client = client.clone();
        async move {
            client
                .send(crate::text_to(UserId::new(id(4)).unwrap(), "hi"))
                .await
        }
    });
    assert!(matches!(
        server.next(Duration::from_secs(1)).await,
        ClientFrame::Send(_)
    ));
    server
        .to_client
        .send(Err(Disconnect::Transport("reset".into())))
        .unwrap();
    assert_eq!(pending.await.unwrap(), Err(SendError::Disconnected));
    assert_eq!(
        events.recv().await,
        Some(Event::Disconnected(Disconnect::Transport("reset".into())))
    );
    client.closed().await;
    assert_eq!(events.recv().await, None);
}
