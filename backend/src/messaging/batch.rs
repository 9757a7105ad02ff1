//! The sans-IO half of a batch: decoding entries, the checks that need no database, and
//! coalescing receipts. Everything here is a plain function of its inputs.

use std::collections::BTreeMap;

use haberci_seam::sends;
use haberci_seam::streams::{self, Inbound};
use haberci_wire::{ConversationId, SendMessage, Seq, SessionId, UserId};

/// A `Send` that passed the checks below, with whom it goes to.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SendRequest {
    pub sender: UserId,
    pub session: SessionId,
    pub conversation: ConversationId,
    pub target: Target,
    pub send: SendMessage,
}

pub use haberci_seam::sends::{Refusal, Target};

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

/// Decodes one entry's [`streams::ENTRY_FIELD`] (`None`: the field is missing) and checks a
/// `Send` as far as that is possible without the database: the rules of
/// [`haberci_seam::sends`], the same the gateway checked (the stream is a trust boundary too).
pub fn decode(payload: Option<&[u8]>) -> Decoded {
    let Some(payload) = payload else {
        return Decoded::Poison(format!("no {:?} field", streams::ENTRY_FIELD));
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
        }) => match sends::check_entry(sender, conversation, &send) {
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
    use uuid::Uuid;

    use super::*;

    fn user(n: u128) -> UserId {
        UserId::new(Uuid::from_u128(n)).unwrap_or_else(|| unreachable!())
    }

    fn seq(n: u64) -> Seq {
        Seq::new(n).unwrap_or(Seq::FIRST)
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
        let c = streams::direct_conversation(alice, bob);
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
