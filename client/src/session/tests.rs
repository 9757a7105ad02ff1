//! The session core with scripted frames and a hand-moved clock.
#![allow(clippy::unwrap_used)]

use std::num::NonZeroU32;

use haberci_wire::{
    ErrorCode, Frame, Limits, MessageId, MessageKind, MessageStatus, Pong, Recipient, SessionId,
    Timestamp,
};

use super::*;

type Tag = &'static str;
type TestSession = Session<Tag, Tag>;

fn uuid(n: u128) -> uuid::Uuid {
    uuid::Uuid::from_u128(n)
}
fn conv(n: u128) -> ConversationId {
    ConversationId::new(uuid(0xc0de_0000 + n)).unwrap()
}
fn user(n: u128) -> UserId {
    UserId::new(uuid(0xa11c_0000 + n)).unwrap()
}
fn msg_id(n: u128) -> ClientMsgId {
    ClientMsgId::new(uuid(0x5e4d_0000 + n)).unwrap()
}
fn seq(n: u64) -> Seq {
    Seq::new(n).unwrap()
}
fn ms(n: u64) -> Duration {
    Duration::from_millis(n)
}

fn welcome(idle_timeout_ms: u32, max_frame_size: u32) -> ServerFrame {
    ServerFrame::Welcome(Welcome {
        session_id: SessionId::new(uuid(0x5e55)).unwrap(),
        user_id: user(1),
        protocol_version: 1,
        server_time: Timestamp::UNIX_EPOCH,
        token_expires_at: Timestamp::UNIX_EPOCH,
        limits: Limits {
            max_frame_size,
            send_rate_per_sec: 20,
            send_burst: 40,
            idle_timeout_ms,
        },
    })
}

fn message(conversation: ConversationId, n: u64) -> ServerFrame {
    ServerFrame::Message(Message {
        id: MessageId::new(uuid(0xe55_0000 + u128::from(n))).unwrap(),
        sender_id: user(2),
        recipient_id: user(1).into(),
        kind: MessageKind::Text,
        content: format!("message {n}"),
        timestamp: Timestamp::UNIX_EPOCH,
        status: MessageStatus::Sent,
        conversation_id: conversation,
        seq: seq(n),
        media: None,
    })
}

fn sent_frame(id: ClientMsgId, conversation: ConversationId, n: u64) -> Sent {
    Sent {
        client_msg_id: id,
        message_id: MessageId::new(uuid(0xe55_1000 + u128::from(n))).unwrap(),
        conversation_id: conversation,
        seq: seq(n),
        timestamp: Timestamp::UNIX_EPOCH,
    }
}

fn send(id: ClientMsgId, content: &str) -> SendMessage {
    SendMessage {
        client_msg_id: id,
        recipient: Recipient::User(user(2)),
        kind: MessageKind::Text,
        content: content.into(),
        media: None,
    }
}

fn error(code: ErrorCode, id: Option<ClientMsgId>) -> ServerFrame {
    ServerFrame::Error(ErrorFrame {
        code,
        message: code.name().into(),
        client_msg_id: id,
    })
}

fn closing(code: ErrorCode) -> ServerFrame {
    ServerFrame::Closing(Closing {
        code,
        reason: code.name().into(),
        retry_after_ms: NonZeroU32::new(1000),
        supported_versions: vec![1],
    })
}

fn settings() -> SessionSettings {
    SessionSettings {
        auto_ack: true,
        ack_delay: ms(50),
        ping_interval: Duration::from_secs(15),
        pong_timeout: Duration::from_secs(10),
    }
}

/// A session past `Welcome` (idle timeout 45 s), with `Hello` already taken off the queue.
fn open(settings: SessionSettings, resume: &[ResumePosition]) -> (TestSession, Instant) {
    let t0 = Instant::now();
    let mut s = TestSession::new(settings, resume, t0);
    s.hello("token".into(), "test".into(), "0".into(), t0)
        .unwrap();
    s.handle_frame(welcome(45_000, 65_536), t0);
    assert!(s.is_open());
    assert!(matches!(sent_frames(&mut s)[..], [ClientFrame::Hello(_)]));
    (s, t0)
}

fn sent_frames(s: &mut TestSession) -> Vec<ClientFrame> {
    std::iter::from_fn(|| s.poll_transmit())
        .map(|body| ClientFrame::decode(body).unwrap())
        .collect()
}

fn outputs(s: &mut TestSession) -> Vec<Output<Tag, Tag>> {
    std::iter::from_fn(|| s.poll_output()).collect()
}

fn ack(conversation_id: ConversationId, n: u64) -> ClientFrame {
    ClientFrame::Ack(Ack {
        conversation_id,
        seq: seq(n),
    })
}

// ---------------------------------------------------------------- handshake

#[test]
fn hello_carries_the_resume_positions_and_welcome_opens() {
    let t0 = Instant::now();
    let resume = [ResumePosition {
        conversation_id: conv(1),
        last_seq: Some(seq(41)),
    }];
    let mut s = TestSession::new(settings(), &resume, t0);
    s.hello("token".into(), "test".into(), "0.1".into(), t0)
        .unwrap();
    let [ClientFrame::Hello(hello)] = &sent_frames(&mut s)[..] else {
        panic!("expected Hello")
    };
    assert_eq!(hello.resume, resume);
    assert_eq!(hello.protocol_version, haberci_wire::PROTOCOL_VERSION);
    assert_eq!(s.phase(), &Phase::AwaitingWelcome);
    assert_eq!(s.poll_timeout(), None, "no timers before Welcome");

    s.handle_frame(welcome(45_000, 65_536), t0);
    assert!(s.is_open());
    assert_eq!(s.welcome().unwrap().user_id, user(1));
}

#[test]
fn closing_before_welcome_refuses_the_session() {
    let t0 = Instant::now();
    let mut s = TestSession::new(settings(), &[], t0);
    s.hello("bad".into(), "test".into(), "0".into(), t0)
        .unwrap();
    s.handle_frame(closing(ErrorCode::Unauthenticated), t0);
    let Phase::Closing(c) = s.phase() else {
        panic!("expected Closing")
    };
    assert_eq!(c.code, ErrorCode::Unauthenticated);
    assert!(!s.is_open());
}

#[test]
fn requests_before_welcome_are_refused() {
    let t0 = Instant::now();
    let mut s = TestSession::new(settings(), &[], t0);
    s.hello("t".into(), "test".into(), "0".into(), t0).unwrap();
    let (waiter, err) = s.send(send(msg_id(1), "x"), "a", t0).unwrap_err();
    assert_eq!((waiter, err), ("a", SendError::Disconnected));
    assert_eq!(s.read(conv(1), seq(1), t0), Err(ClientError::Disconnected));
}

// ---------------------------------------------------------------- sends

#[test]
fn concurrent_sends_resolve_by_client_msg_id_in_any_order() {
    let (mut s, t0) = open(settings(), &[]);
    s.send(send(msg_id(1), "one"), "a", t0).unwrap();
    s.send(send(msg_id(2), "two"), "b", t0).unwrap();
    let frames = sent_frames(&mut s);
    assert!(
        matches!(&frames[..], [ClientFrame::Send(x), ClientFrame::Send(y)]
            if x.client_msg_id == msg_id(1) && y.client_msg_id == msg_id(2))
    );
    assert_eq!(s.in_flight(), 2);

    let (b, a) = (
        sent_frame(msg_id(2), conv(1), 8),
        sent_frame(msg_id(1), conv(1), 7),
    );
    s.handle_frame(ServerFrame::Sent(b), t0);
    s.handle_frame(ServerFrame::Sent(a), t0);
    assert_eq!(
        outputs(&mut s),
        vec![Output::SendDone("b", Ok(b)), Output::SendDone("a", Ok(a))]
    );
    assert_eq!(s.in_flight(), 0);
}

#[test]
fn an_error_naming_a_send_refuses_it_and_any_other_error_is_an_event() {
    let (mut s, t0) = open(settings(), &[]);
    s.send(send(msg_id(1), "one"), "a", t0).unwrap();
    s.handle_frame(error(ErrorCode::Unavailable, Some(msg_id(1))), t0);
    s.handle_frame(error(ErrorCode::Unavailable, None), t0);
    // An id with no send in flight (e.g. answered already) is not lost either.
    s.handle_frame(error(ErrorCode::RateLimited, Some(msg_id(9))), t0);
    let out = outputs(&mut s);
    assert_eq!(
        out[0],
        Output::SendDone(
            "a",
            Err(SendError::Refused {
                code: ErrorCode::Unavailable,
                message: "unavailable".into()
            })
        )
    );
    assert!(
        matches!(&out[1], Output::Event(Event::Error(e)) if e.code == ErrorCode::Unavailable && e.client_msg_id.is_none())
    );
    assert!(
        matches!(&out[2], Output::Event(Event::Error(e)) if e.client_msg_id == Some(msg_id(9)))
    );
    assert_eq!(out.len(), 3);
}

#[test]
fn a_disconnect_fails_every_send_in_flight_and_is_the_last_event() {
    let (mut s, t0) = open(settings(), &[]);
    s.send(send(msg_id(1), "one"), "a", t0).unwrap();
    s.send(send(msg_id(2), "two"), "b", t0).unwrap();
    s.handle_disconnect(Disconnect::Transport("reset".into()));
    let out = outputs(&mut s);
    assert_eq!(out.len(), 3);
    let mut failed: Vec<_> = out[..2]
        .iter()
        .map(|o| match o {
            Output::SendDone(w, Err(SendError::Disconnected)) => *w,
            other => panic!("unexpected {other:?}"),
        })
        .collect();
    failed.sort();
    assert_eq!(failed, ["a", "b"]);
    assert_eq!(
        out[2],
        Output::Event(Event::Disconnected(Disconnect::Transport("reset".into())))
    );
    assert_eq!(
        s.poll_transmit(),
        None,
        "nothing is written after a disconnect"
    );
    let (_, err) = s.send(send(msg_id(3), "three"), "c", t0).unwrap_err();
    assert_eq!(err, SendError::Disconnected);
    // A second report changes nothing.
    s.handle_disconnect(Disconnect::Local);
    assert!(outputs(&mut s).is_empty());
}

#[test]
fn a_client_msg_id_in_flight_twice_is_refused() {
    let (mut s, t0) = open(settings(), &[]);
    s.send(send(msg_id(1), "one"), "a", t0).unwrap();
    let (waiter, err) = s.send(send(msg_id(1), "again"), "b", t0).unwrap_err();
    assert_eq!((waiter, err), ("b", SendError::AlreadyInFlight));
    assert_eq!(sent_frames(&mut s).len(), 1);
}

#[test]
fn a_send_above_the_max_frame_size_is_refused_before_it_is_queued() {
    let t0 = Instant::now();
    let mut s = TestSession::new(settings(), &[], t0);
    s.hello("t".into(), "test".into(), "0".into(), t0).unwrap();
    s.handle_frame(welcome(45_000, 64), t0);
    sent_frames(&mut s);
    let (_, err) = s
        .send(send(msg_id(1), &"x".repeat(100)), "a", t0)
        .unwrap_err();
    assert!(matches!(err, SendError::TooLarge(_)), "{err:?}");
    assert!(sent_frames(&mut s).is_empty());
    assert_eq!(s.in_flight(), 0);
}

// ---------------------------------------------------------------- positions

#[test]
fn duplicate_messages_are_dropped() {
    let (mut s, t0) = open(settings(), &[]);
    s.handle_frame(message(conv(1), 5), t0);
    s.handle_frame(message(conv(1), 5), t0);
    s.handle_frame(message(conv(1), 4), t0);
    let out = outputs(&mut s);
    assert_eq!(
        out,
        vec![Output::Event(Event::Message(match message(conv(1), 5) {
            ServerFrame::Message(m) => m,
            _ => unreachable!(),
        }))]
    );
}

/// Our own message, as every session of the sender gets it (PROTOCOL "Sending messages" 5).
fn own_message(conversation: ConversationId, n: u64) -> ServerFrame {
    match message(conversation, n) {
        ServerFrame::Message(mut m) => {
            m.sender_id = user(1);
            m.recipient_id = user(2).into();
            ServerFrame::Message(m)
        }
        _ => unreachable!(),
    }
}

#[test]
fn positions_follow_messages_our_own_included_not_sents() {
    let resume = [ResumePosition {
        conversation_id: conv(1),
        last_seq: Some(seq(10)),
    }];
    let (mut s, t0) = open(settings(), &resume);
    s.handle_frame(message(conv(1), 11), t0);
    s.send(send(msg_id(1), "mine"), "a", t0).unwrap();
    s.handle_frame(ServerFrame::Sent(sent_frame(msg_id(1), conv(1), 12)), t0);
    s.handle_frame(message(conv(2), 3), t0);
    assert_eq!(
        s.position(conv(1)),
        Some(seq(11)),
        "a Sent does not move the position"
    );
    s.handle_frame(own_message(conv(1), 12), t0);
    assert_eq!(
        s.positions(),
        vec![
            ResumePosition {
                conversation_id: conv(1),
                last_seq: Some(seq(12))
            },
            ResumePosition {
                conversation_id: conv(2),
                last_seq: Some(seq(3))
            },
        ]
    );
}

#[test]
fn our_own_message_after_its_sent_is_an_event_not_a_duplicate() {
    // Regression: the Sent used to move the position, so the Message that followed it was
    // dropped as a duplicate and the sender's Events never showed its own message.
    let (mut s, t0) = open(settings(), &[]);
    s.send(send(msg_id(1), "mine"), "a", t0).unwrap();
    let sent = sent_frame(msg_id(1), conv(1), 1);
    s.handle_frame(ServerFrame::Sent(sent), t0);
    s.handle_frame(own_message(conv(1), 1), t0);
    let ServerFrame::Message(own) = own_message(conv(1), 1) else {
        unreachable!()
    };
    assert_eq!(
        outputs(&mut s),
        vec![
            Output::SendDone("a", Ok(sent)),
            Output::Event(Event::Message(own))
        ]
    );
    // Before its Sent, too: the Sent still resolves the send.
    s.send(send(msg_id(2), "again"), "b", t0).unwrap();
    s.handle_frame(own_message(conv(1), 2), t0);
    let sent = sent_frame(msg_id(2), conv(1), 2);
    s.handle_frame(ServerFrame::Sent(sent), t0);
    let out = outputs(&mut s);
    assert!(
        matches!(&out[..], [Output::Event(Event::Message(m)), Output::SendDone("b", Ok(_))] if m.seq == seq(2)),
        "{out:?}"
    );
    assert_eq!(s.position(conv(1)), Some(seq(2)));
}

/// Regression: in a conversation that began after `Welcome`, our `Sent` may arrive before the
/// earlier messages the server is still writing; the `Sent` must not become the starting point
/// (the earlier messages were then dropped as duplicates, and acked unseen).
#[test]
fn a_sent_ahead_of_a_new_conversations_first_messages_does_not_hide_them() {
    let (mut s, t0) = open(settings(), &[]);
    s.send(send(msg_id(1), "mine"), "a", t0).unwrap();
    s.handle_frame(ServerFrame::Sent(sent_frame(msg_id(1), conv(1), 3)), t0);
    for n in 1..=3 {
        // 1 and 2 are the peer's, 3 our own Message.
        s.handle_frame(message(conv(1), n), t0);
    }
    let delivered: Vec<u64> = outputs(&mut s)
        .into_iter()
        .filter_map(|o| match o {
            Output::Event(Event::Message(m)) => Some(m.seq.get()),
            _ => None,
        })
        .collect();
    assert_eq!(delivered, vec![1, 2, 3]);
    assert_eq!(s.position(conv(1)), Some(seq(3)));
    s.handle_frame(message(conv(1), 3), t0);
    assert!(outputs(&mut s).is_empty(), "a repeat is still a duplicate");
}

// ---------------------------------------------------------------- auto-ack

#[test]
fn auto_ack_coalesces_a_batch_into_one_ack_per_conversation() {
    let (mut s, t0) = open(settings(), &[]);
    for n in 1..=3 {
        s.handle_frame(message(conv(1), n), t0);
    }
    s.handle_frame(message(conv(2), 7), t0 + ms(10));
    s.handle_frame(message(conv(2), 8), t0 + ms(20));
    assert!(
        sent_frames(&mut s).is_empty(),
        "acks wait for the ack delay"
    );
    let due = s.poll_timeout().unwrap();
    assert_eq!(due, t0 + ms(50), "the first message starts the delay");

    s.handle_timeout(due);
    assert_eq!(sent_frames(&mut s), vec![ack(conv(1), 3), ack(conv(2), 8)]);
    s.handle_timeout(due + ms(100));
    assert!(sent_frames(&mut s).is_empty(), "nothing new to ack");

    s.handle_frame(message(conv(1), 4), due + ms(200));
    s.handle_timeout(due + ms(250));
    assert_eq!(sent_frames(&mut s), vec![ack(conv(1), 4)]);
}

#[test]
fn auto_ack_acks_only_the_contiguous_position() {
    let (mut s, t0) = open(settings(), &[]);
    s.handle_frame(message(conv(1), 1), t0);
    s.handle_frame(message(conv(1), 3), t0); // 2 is our own message, still to come
    s.handle_timeout(t0 + ms(50));
    assert_eq!(sent_frames(&mut s), vec![ack(conv(1), 1)]);

    s.handle_frame(own_message(conv(1), 2), t0 + ms(70));
    s.handle_timeout(t0 + ms(120));
    assert_eq!(
        sent_frames(&mut s),
        vec![ack(conv(1), 3)],
        "our own message released 3"
    );
}

#[test]
fn our_own_messages_are_not_acked() {
    let (mut s, t0) = open(settings(), &[]);
    s.send(send(msg_id(1), "mine"), "a", t0).unwrap();
    sent_frames(&mut s);
    s.handle_frame(ServerFrame::Sent(sent_frame(msg_id(1), conv(1), 1)), t0);
    s.handle_frame(own_message(conv(1), 1), t0);
    // The only timer left is the heartbeat.
    assert_eq!(s.poll_timeout(), Some(t0 + Duration::from_secs(15)));
}

#[test]
fn without_auto_ack_only_the_callers_acks_go_out() {
    let mut manual = settings();
    manual.auto_ack = false;
    let (mut s, t0) = open(manual, &[]);
    s.handle_frame(message(conv(1), 1), t0);
    s.handle_frame(message(conv(1), 2), t0);
    assert_eq!(s.poll_timeout(), Some(t0 + Duration::from_secs(15)));
    s.ack(conv(1), seq(2), t0).unwrap();
    assert_eq!(sent_frames(&mut s), vec![ack(conv(1), 2)]);
}

#[test]
fn auto_ack_does_not_repeat_a_callers_ack() {
    let (mut s, t0) = open(settings(), &[]);
    s.handle_frame(message(conv(1), 1), t0);
    s.ack(conv(1), seq(1), t0).unwrap();
    s.handle_timeout(t0 + ms(50));
    assert_eq!(sent_frames(&mut s), vec![ack(conv(1), 1)]);
}

#[test]
fn closing_locally_flushes_the_coalesced_acks_first() {
    let (mut s, t0) = open(settings(), &[]);
    s.handle_frame(message(conv(1), 1), t0);
    s.close(t0);
    assert_eq!(sent_frames(&mut s), vec![ack(conv(1), 1)]);
    assert!(outputs(&mut s).contains(&Output::Event(Event::Disconnected(Disconnect::Local))));
}

// ---------------------------------------------------------------- heartbeat

fn presence_frame() -> ServerFrame {
    ServerFrame::Presence(Presence {
        user_id: user(2),
        online: true,
        last_seen: None,
    })
}

#[test]
fn a_ping_goes_out_after_the_ping_interval_without_traffic() {
    let (mut s, t0) = open(settings(), &[]);
    let interval = Duration::from_secs(15);
    assert_eq!(s.poll_timeout(), Some(t0 + interval));
    // A frame each way pushes the ping back.
    s.read(conv(1), seq(1), t0 + ms(5_000)).unwrap();
    sent_frames(&mut s);
    s.handle_frame(presence_frame(), t0 + ms(6_000));
    outputs(&mut s);
    assert_eq!(s.poll_timeout(), Some(t0 + ms(5_000) + interval));
    s.handle_timeout(t0 + ms(5_000) + interval);
    assert!(matches!(sent_frames(&mut s)[..], [ClientFrame::Ping(_)]));
}

#[test]
fn a_client_that_keeps_sending_but_hears_nothing_pings_and_gives_up() {
    // The server died: what this client sends goes nowhere, and nothing comes back.
    let (mut s, t0) = open(settings(), &[]);
    for at in [5_000, 10_000, 14_000] {
        s.read(conv(1), seq(1), t0 + ms(at)).unwrap();
    }
    sent_frames(&mut s);
    assert_eq!(s.poll_timeout(), Some(t0 + Duration::from_secs(15)));
    s.handle_timeout(t0 + Duration::from_secs(15));
    assert!(matches!(sent_frames(&mut s)[..], [ClientFrame::Ping(_)]));
    // One ping out is enough: sending more does not add pings or move its deadline.
    s.read(conv(1), seq(2), t0 + ms(20_000)).unwrap();
    assert!(matches!(sent_frames(&mut s)[..], [ClientFrame::Read(_)]));
    assert_eq!(s.poll_timeout(), Some(t0 + Duration::from_secs(25)));
    s.handle_timeout(t0 + Duration::from_secs(25));
    assert_eq!(s.phase(), &Phase::Closed(Disconnect::PongTimeout));
}

#[test]
fn the_ping_interval_is_capped_at_a_third_of_the_servers_idle_timeout() {
    let t0 = Instant::now();
    let mut s = TestSession::new(settings(), &[], t0);
    s.hello("t".into(), "test".into(), "0".into(), t0).unwrap();
    s.handle_frame(welcome(6_000, 65_536), t0);
    assert_eq!(s.poll_timeout(), Some(t0 + ms(2_000)));
}

#[test]
fn a_late_pong_disconnects_and_a_timely_one_does_not() {
    let (mut s, t0) = open(settings(), &[]);
    let ping_at = t0 + Duration::from_secs(15);
    s.handle_timeout(ping_at);
    let [ClientFrame::Ping(ping)] = sent_frames(&mut s)[..] else {
        panic!("expected Ping")
    };
    s.handle_frame(
        ServerFrame::Pong(Pong { nonce: ping.nonce }),
        ping_at + ms(30),
    );
    assert!(outputs(&mut s).is_empty(), "a keepalive Pong has no waiter");
    assert_eq!(s.poll_timeout(), Some(ping_at + Duration::from_secs(15)));

    let ping_at = ping_at + Duration::from_secs(15);
    s.handle_timeout(ping_at);
    sent_frames(&mut s);
    let deadline = s.poll_timeout().unwrap();
    assert_eq!(deadline, ping_at + Duration::from_secs(10));
    s.handle_timeout(deadline);
    assert_eq!(
        s.phase(),
        &Phase::Closed(Disconnect::PongTimeout),
        "no Pong within the pong timeout"
    );
}

#[test]
fn a_callers_ping_resolves_with_its_round_trip() {
    let (mut s, t0) = open(settings(), &[]);
    s.ping("p", t0).unwrap();
    let [ClientFrame::Ping(ping)] = sent_frames(&mut s)[..] else {
        panic!("expected Ping")
    };
    s.handle_frame(ServerFrame::Pong(Pong { nonce: 12345 }), t0 + ms(1));
    s.handle_frame(ServerFrame::Pong(Pong { nonce: ping.nonce }), t0 + ms(7));
    assert_eq!(outputs(&mut s), vec![Output::PingDone("p", ms(7))]);
}

// ---------------------------------------------------------------- closing

#[test]
fn a_closing_frame_names_the_code_of_the_disconnect_that_follows() {
    let (mut s, t0) = open(settings(), &[]);
    s.send(send(msg_id(1), "one"), "a", t0).unwrap();
    s.handle_frame(closing(ErrorCode::ServerDraining), t0);
    assert!(!s.is_open());
    assert_eq!(s.poll_timeout(), None);
    s.handle_disconnect(Disconnect::Server {
        code: None,
        reason: String::new(),
    });
    let out = outputs(&mut s);
    assert!(
        matches!(&out[0], Output::Event(Event::Closing(c)) if c.code == ErrorCode::ServerDraining)
    );
    assert_eq!(out[1], Output::SendDone("a", Err(SendError::Disconnected)));
    assert_eq!(
        out[2],
        Output::Event(Event::Disconnected(Disconnect::Server {
            code: Some(ErrorCode::ServerDraining),
            reason: "server_draining".into()
        }))
    );
}

#[test]
fn receipts_typing_and_presence_are_events() {
    let (mut s, t0) = open(settings(), &[]);
    let status = Status {
        conversation_id: conv(1),
        user_id: user(2),
        delivered: Some(seq(3)),
        read: Some(seq(2)),
    };
    let typing = Typing {
        conversation_id: conv(1),
        user_id: user(2),
        state: TypingState::Started,
    };
    let presence = Presence {
        user_id: user(2),
        online: true,
        last_seen: None,
    };
    s.handle_frame(ServerFrame::Status(status), t0);
    s.handle_frame(ServerFrame::Typing(typing), t0);
    s.handle_frame(ServerFrame::Presence(presence), t0);
    assert_eq!(
        outputs(&mut s),
        vec![
            Output::Event(Event::Status(status)),
            Output::Event(Event::Typing(typing)),
            Output::Event(Event::Presence(presence)),
        ]
    );
}

/// The golden vector `server_notification` decodes and reaches the application as an event.
#[test]
fn a_notification_is_an_event() {
    let bin = std::fs::read(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../wire/tests/vectors/server_notification.bin"
    ))
    .unwrap();
    let frames: Vec<ServerFrame> =
        haberci_wire::decode_stream(bin.into(), haberci_wire::DEFAULT_MAX_FRAME_SIZE).unwrap();
    let [ServerFrame::Notification(notification)] = &frames[..] else {
        panic!("{frames:?}")
    };
    assert_eq!(notification.kind, haberci_wire::NotificationKind::Comment);
    assert_eq!(notification.unread_count, 3);
    let (mut s, t0) = open(settings(), &[]);
    s.handle_frame(frames[0].clone(), t0);
    assert_eq!(
        outputs(&mut s),
        vec![Output::Event(Event::Notification(notification.clone()))]
    );
}

#[test]
fn a_transport_failure_after_closing_reports_the_closing_code() {
    // WebTransport stacks may fail the connection their own way after the server's Closing;
    // the code the server gave is still what the caller sees.
    let (mut s, t0) = open(settings(), &[]);
    s.handle_frame(closing(ErrorCode::Unauthenticated), t0);
    s.handle_disconnect(Disconnect::Transport("connection lost".into()));
    let out = outputs(&mut s);
    assert_eq!(
        out.last(),
        Some(&Output::Event(Event::Disconnected(Disconnect::Server {
            code: Some(ErrorCode::Unauthenticated),
            reason: "unauthenticated".into()
        })))
    );
}

#[test]
fn only_typing_is_an_ephemeral_transmit() {
    let (mut s, t0) = open(settings(), &[]);
    s.typing(conv(1), TypingState::Started, t0).unwrap();
    s.send(send(msg_id(1), "one"), "a", t0).unwrap();
    s.read(conv(1), seq(1), t0).unwrap();
    let kinds: Vec<_> = std::iter::from_fn(|| s.poll_transmit_frame())
        .map(|t| (ClientFrame::decode(t.body).unwrap().kind(), t.ephemeral))
        .collect();
    assert_eq!(
        kinds,
        vec![("typing", true), ("send", false), ("read", false)]
    );
}
