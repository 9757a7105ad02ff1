//! Receipts (`Ack`, `Read`) on their way to the stream. Each one the worker stores costs a
//! transaction, so a session's receipts are coalesced per conversation — the latest watermark
//! wins — and leave at most `rate` per second: one that moves nothing is dropped, one over the
//! rate waits, merged with whatever follows it for its conversation, until a token frees.
//! Whether the conversation is one the session follows is the caller's check.

use std::collections::{HashMap, VecDeque};
use std::time::Instant;

use haberci_wire::{Ack, ConversationId, Read, Seq};

use crate::bucket::TokenBucket;

/// Sustained receipts per second per session, and the burst above it.
pub const DEFAULT_RECEIPT_RATE_PER_SEC: u32 = 10;
pub const DEFAULT_RECEIPT_BURST: u32 = 40;

/// One conversation's watermarks.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
struct Marks {
    delivered: u64,
    read: u64,
}

/// A receipt ready for the stream.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Receipt {
    Ack(Ack),
    Read(Read),
}

#[derive(Debug)]
pub struct Receipts {
    /// What was relayed, per conversation.
    relayed: HashMap<ConversationId, Marks>,
    /// What waits for a token (above `relayed`), and the order the conversations came in.
    waiting: HashMap<ConversationId, Marks>,
    queue: VecDeque<ConversationId>,
    bucket: TokenBucket,
}

impl Receipts {
    pub fn new(rate_per_sec: u32, burst: u32, now: Instant) -> Receipts {
        Receipts {
            relayed: HashMap::new(),
            waiting: HashMap::new(),
            queue: VecDeque::new(),
            bucket: TokenBucket::new(rate_per_sec, burst, now),
        }
    }

    /// Takes an `Ack` (`read = false`) or a `Read` of a followed conversation.
    pub fn add(&mut self, conversation: ConversationId, seq: Seq, read: bool) {
        let seq = seq.get();
        let relayed = self.relayed.get(&conversation).copied().unwrap_or_default();
        let marks = self.waiting.get(&conversation).copied().unwrap_or(relayed);
        // Reading implies delivery.
        let next = Marks {
            delivered: marks.delivered.max(seq),
            read: if read {
                marks.read.max(seq)
            } else {
                marks.read
            },
        };
        if next == marks || (next.delivered <= relayed.delivered && next.read <= relayed.read) {
            return;
        }
        if self.waiting.insert(conversation, next).is_none() {
            self.queue.push_back(conversation);
        }
    }

    /// The receipts that may leave at `now`: per conversation a `Read` if its read mark
    /// moved, and an `Ack` if delivery moved past it. Each takes a token; what gets none waits.
    pub fn ready(&mut self, now: Instant) -> Vec<Receipt> {
        let mut out = Vec::new();
        while let Some(&conversation) = self.queue.front() {
            let Some(&marks) = self.waiting.get(&conversation) else {
                self.queue.pop_front();
                continue;
            };
            let relayed = self.relayed.entry(conversation).or_default();
            let needs_read = marks.read > relayed.read;
            let needs_ack = marks.delivered > relayed.delivered.max(marks.read);
            let cost = usize::from(needs_read) + usize::from(needs_ack);
            let mut taken = 0;
            while taken < cost && self.bucket.take(now) {
                taken += 1;
            }
            let seq = |n| Seq::new(n).unwrap_or_else(|| unreachable!("marks above 0 are seqs"));
            if needs_read && taken > 0 {
                out.push(Receipt::Read(Read {
                    conversation_id: conversation,
                    seq: seq(marks.read),
                }));
                relayed.read = marks.read;
                relayed.delivered = relayed.delivered.max(marks.read);
                taken -= 1;
            }
            if needs_ack && taken > 0 {
                out.push(Receipt::Ack(Ack {
                    conversation_id: conversation,
                    seq: seq(marks.delivered),
                }));
                relayed.delivered = marks.delivered;
            }
            if relayed.delivered >= marks.delivered && relayed.read >= marks.read {
                self.waiting.remove(&conversation);
                self.queue.pop_front();
            } else {
                // Out of tokens: the rest waits, in order.
                break;
            }
        }
        out
    }

    /// When waiting receipts can next leave.
    pub fn next_timeout(&self) -> Option<Instant> {
        if self.queue.is_empty() {
            return None;
        }
        self.bucket.next_token_at()
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use std::time::Duration;
    use uuid::Uuid;

    fn conv(n: u128) -> ConversationId {
        ConversationId::new(Uuid::from_u128(n)).unwrap()
    }

    fn ack(c: u128, seq: u64) -> Receipt {
        Receipt::Ack(Ack {
            conversation_id: conv(c),
            seq: Seq::new(seq).unwrap(),
        })
    }

    fn read(c: u128, seq: u64) -> Receipt {
        Receipt::Read(Read {
            conversation_id: conv(c),
            seq: Seq::new(seq).unwrap(),
        })
    }

    #[test]
    fn receipts_that_move_nothing_are_dropped_and_the_latest_wins() {
        let t0 = Instant::now();
        let mut r = Receipts::new(10, 10, t0);
        for seq in [3, 5, 4] {
            r.add(conv(1), Seq::new(seq).unwrap(), false);
        }
        assert_eq!(r.ready(t0), vec![ack(1, 5)], "one Ack, the latest");
        r.add(conv(1), Seq::new(5).unwrap(), false);
        r.add(conv(1), Seq::new(2).unwrap(), false);
        assert_eq!(r.ready(t0), vec![], "nothing moved");
        // A Read moves both marks; an Ack at or below it adds nothing.
        r.add(conv(1), Seq::new(7).unwrap(), true);
        r.add(conv(1), Seq::new(6).unwrap(), false);
        assert_eq!(r.ready(t0), vec![read(1, 7)]);
        // Delivery past the read mark takes both.
        r.add(conv(1), Seq::new(8).unwrap(), true);
        r.add(conv(1), Seq::new(9).unwrap(), false);
        assert_eq!(r.ready(t0), vec![read(1, 8), ack(1, 9)]);
        assert_eq!(r.next_timeout(), None);
    }

    #[test]
    fn over_the_rate_receipts_wait_merged_in_order() {
        let t0 = Instant::now();
        let mut r = Receipts::new(10, 2, t0);
        for c in 1..=3 {
            r.add(conv(c), Seq::new(1).unwrap(), false);
        }
        assert_eq!(r.ready(t0), vec![ack(1, 1), ack(2, 1)]);
        // Conversation 3 waits; more receipts for it merge into one.
        for seq in 2..=50 {
            r.add(conv(3), Seq::new(seq).unwrap(), seq % 10 == 0);
        }
        let at = r.next_timeout().unwrap();
        assert_eq!(at, t0 + Duration::from_millis(100));
        assert_eq!(r.ready(at), vec![read(3, 50)]);
        assert_eq!(r.next_timeout(), None);
    }
}
