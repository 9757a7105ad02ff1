//! The sans-IO half of a batch: decoding entries, the checks that need no database, and
//! coalescing receipts. Everything here is a plain function of its inputs.

use std::collections::BTreeMap;

use haberci_wire::relay::{self, Inbound};
use haberci_wire::{
    ConversationId, ErrorCode, GroupId, MessageKind, Recipient, SendMessage, Seq, SessionId, UserId,
};

/// A `Send` that passed the checks below, with whom it goes to.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SendRequest {
    pub sender: UserId,
    pub session: SessionId,
    pub conversation: ConversationId,
    pub target: Target,
    pub send: SendMessage,
}

/// Whom a checked `Send` goes to.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Target {
    /// A direct message to another user.
    Direct(UserId),
    Group(GroupId),
}

/// Why a `Send` is not stored: the `Error` its session hears.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Refusal {
    pub code: ErrorCode,
    pub message: &'static str,
}

impl Refusal {
    /// Invariant: `code` is non-fatal — a refusal travels in `Error`, which the client's
    /// decoder rejects with a fatal code (checked at compile time for the constants).
    pub const fn new(code: ErrorCode, message: &'static str) -> Refusal {
        assert!(
            !code.is_fatal(),
            "a refusal travels in Error: non-fatal codes only"
        );
        Refusal { code, message }
    }
}

/// A receipt entry (`Ack` or `Read`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Receipt {
    pub user: UserId,
    pub conversation: ConversationId,
    pub seq: Seq,
    pub read: bool,
}

/// What one stream entry asks for.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Decoded {
    Send(SendRequest),
    /// A `Send` refused before the database: answered, never stored.
    Refused {
        sender: UserId,
        session: SessionId,
        send: SendMessage,
        refusal: Refusal,
    },
    Receipt(Receipt),
    /// Not an entry this worker understands: acknowledged and logged, never retried.
    Poison(String),
}

/// Decodes one entry's [`relay::ENTRY_FIELD`] (`None`: the field is missing) and checks a
/// `Send` as far as that is possible without the database.
pub fn decode(payload: Option<&[u8]>) -> Decoded {
    let Some(payload) = payload else {
        return Decoded::Poison(format!("no {:?} field", relay::ENTRY_FIELD));
    };
    match Inbound::from_json(payload) {
        Err(err) => Decoded::Poison(err.to_string()),
        Ok(Inbound::Ack {
            user,
            conversation,
            seq,
        }) => Decoded::Receipt(Receipt {
            user,
            conversation,
            seq,
            read: false,
        }),
        Ok(Inbound::Read {
            user,
            conversation,
            seq,
        }) => Decoded::Receipt(Receipt {
            user,
            conversation,
            seq,
            read: true,
        }),
        Ok(Inbound::Send {
            sender,
            session,
            conversation,
            send,
        }) => match check_send(sender, conversation, &send) {
            Ok(target) => Decoded::Send(SendRequest {
                sender,
                session,
                conversation,
                target,
                send,
            }),
            Err(refusal) => Decoded::Refused {
                sender,
                session,
                send,
                refusal,
            },
        },
    }
}

/// The checks a gateway already made (the same rules as its session's), made again because
/// the stream is a trust boundary too, plus what only holds for stored rows: Postgres `text`
/// cannot hold NUL, and the conversation must be the one the recipient names.
pub fn check_send(
    sender: UserId,
    conversation: ConversationId,
    send: &SendMessage,
) -> Result<Target, Refusal> {
    let (target, expected) = match send.recipient {
        Recipient::User(user) if user == sender => {
            return Err(Refusal::new(
                ErrorCode::InvalidField,
                "a direct message needs another user",
            ));
        }
        Recipient::User(user) => (
            Target::Direct(user),
            relay::direct_conversation(sender, user),
        ),
        Recipient::Group(group) => (Target::Group(group), relay::group_conversation(group)),
    };
    if conversation != expected {
        return Err(Refusal::new(
            ErrorCode::InvalidField,
            "the conversation is not the recipient's",
        ));
    }
    if send.content.len() > haberci_wire::MAX_CONTENT_BYTES {
        return Err(Refusal::new(
            ErrorCode::ContentTooLarge,
            "content is above the content limit",
        ));
    }
    if send.kind == MessageKind::Text && send.content.is_empty() {
        return Err(Refusal::new(
            ErrorCode::InvalidField,
            "a text message needs content",
        ));
    }
    if send.kind != MessageKind::Text && send.media.is_none() {
        return Err(Refusal::new(
            ErrorCode::InvalidField,
            "a media message needs media",
        ));
    }
    if send.content.contains('\0') {
        return Err(Refusal::new(
            ErrorCode::InvalidField,
            "content must not contain NUL characters",
        ));
    }
    if let Some(media) = &send.media {
        if media.content_type.contains('\0') {
            return Err(Refusal::new(
                ErrorCode::InvalidField,
                "media content type must not contain NUL characters",
            ));
        }
        if i64::try_from(media.size_bytes).is_err() {
            return Err(Refusal::new(
                ErrorCode::InvalidField,
                "media size is out of range",
            ));
        }
    }
    Ok(target)
}

/// One member's receipts of a batch, coalesced: the highest delivered and read positions.
/// Invariant: `read <= delivered` (a read implies delivered).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Watermarks {
    pub user: UserId,
    pub conversation: ConversationId,
    pub delivered: Seq,
    pub read: Option<Seq>,
}

/// Coalesces receipts per (user, conversation) to the highest seq; a `Read` raises both
/// marks. Receipts are cumulative, so only the maximum matters. Sorted by (conversation,
/// user), the order rows are locked in.
pub fn coalesce(receipts: impl IntoIterator<Item = Receipt>) -> Vec<Watermarks> {
    let mut marks: BTreeMap<(ConversationId, UserId), Watermarks> = BTreeMap::new();
    for receipt in receipts {
        let read = receipt.read.then_some(receipt.seq);
        marks
            .entry((receipt.conversation, receipt.user))
            .and_modify(|mark| {
                mark.delivered = mark.delivered.max(receipt.seq);
                mark.read = mark.read.max(read);
            })
            .or_insert(Watermarks {
                user: receipt.user,
                conversation: receipt.conversation,
                delivered: receipt.seq,
                read,
            });
    }
    marks.into_values().collect()
}

#[cfg(test)]
mod tests {
    use haberci_wire::{ClientMsgId, MediaId, MediaRef};
    use uuid::Uuid;

    use super::*;

    fn user(n: u128) -> UserId {
        UserId::new(Uuid::from_u128(n)).unwrap_or_else(|| unreachable!())
    }

    fn seq(n: u64) -> Seq {
        Seq::new(n).unwrap_or(Seq::FIRST)
    }

    fn text(to: Recipient, content: &str) -> SendMessage {
        SendMessage {
            client_msg_id: ClientMsgId::new(Uuid::from_u128(99)).unwrap_or_else(|| unreachable!()),
            recipient: to,
            kind: MessageKind::Text,
            content: content.into(),
            media: None,
        }
    }

    #[test]
    fn sends_are_checked_like_the_gateway_checks_them_and_more() {
        let (alice, bob) = (user(1), user(2));
        let direct = relay::direct_conversation(alice, bob);
        let group = GroupId::new(Uuid::from_u128(3)).unwrap_or_else(|| unreachable!());
        let ok = text(Recipient::User(bob), "hi");
        assert_eq!(check_send(alice, direct, &ok), Ok(Target::Direct(bob)));
        let to_group = text(Recipient::Group(group), "hi");
        assert_eq!(
            check_send(alice, relay::group_conversation(group), &to_group),
            Ok(Target::Group(group))
        );
        let too_big = "x".repeat(haberci_wire::MAX_CONTENT_BYTES + 1);
        let media = SendMessage {
            kind: MessageKind::Image,
            media: Some(MediaRef {
                media_id: MediaId::new(Uuid::from_u128(5)).unwrap_or_else(|| unreachable!()),
                content_type: "image/png".into(),
                size_bytes: 10,
            }),
            ..text(Recipient::User(bob), "")
        };
        assert_eq!(check_send(alice, direct, &media), Ok(Target::Direct(bob)));
        let cases = [
            (
                text(Recipient::User(alice), "me"),
                direct,
                ErrorCode::InvalidField,
            ),
            (
                ok.clone(),
                relay::group_conversation(group),
                ErrorCode::InvalidField,
            ),
            (
                text(Recipient::User(bob), &too_big),
                direct,
                ErrorCode::ContentTooLarge,
            ),
            (
                text(Recipient::User(bob), ""),
                direct,
                ErrorCode::InvalidField,
            ),
            (
                text(Recipient::User(bob), "a\0b"),
                direct,
                ErrorCode::InvalidField,
            ),
            (
                SendMessage {
                    media: None,
                    ..media.clone()
                },
                direct,
                ErrorCode::InvalidField,
            ),
        ];
        for (send, conversation, code) in cases {
            assert_eq!(
                check_send(alice, conversation, &send).map_err(|r| r.code),
                Err(code),
                "{send:?}"
            );
        }
        let limit = "x".repeat(haberci_wire::MAX_CONTENT_BYTES);
        assert!(check_send(alice, direct, &text(Recipient::User(bob), &limit)).is_ok());
    }

    #[test]
    fn bad_entries_are_poison() {
        assert!(matches!(decode(None), Decoded::Poison(_)));
        assert!(matches!(decode(Some(b"not json")), Decoded::Poison(_)));
        assert!(matches!(
            decode(Some(br#"{"op":"nope"}"#)),
            Decoded::Poison(_)
        ));
    }

    #[test]
    fn receipts_coalesce_to_the_highest_marks() {
        let (alice, bob) = (user(1), user(2));
        let c = relay::direct_conversation(alice, bob);
        let r = |u, s, read| Receipt {
            user: u,
            conversation: c,
            seq: seq(s),
            read,
        };
        let marks = coalesce([
            r(alice, 3, false),
            r(alice, 5, true),
            r(alice, 4, false),
            r(bob, 2, false),
        ]);
        assert_eq!(marks.len(), 2);
        let alice_marks = marks.iter().find(|m| m.user == alice).copied();
        assert_eq!(
            alice_marks.map(|m| (m.delivered, m.read)),
            Some((seq(5), Some(seq(5))))
        );
        let bob_marks = marks.iter().find(|m| m.user == bob).copied();
        assert_eq!(
            bob_marks.map(|m| (m.delivered, m.read)),
            Some((seq(2), None))
        );
        // A read below an ack keeps the ack as delivered.
        let marks = coalesce([r(alice, 9, false), r(alice, 4, true)]);
        assert_eq!(marks[0].delivered, seq(9));
        assert_eq!(marks[0].read, Some(seq(4)));
    }
}
