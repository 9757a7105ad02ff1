//! One session's sends in flight: at most one per conversation.
//!
//! A conversation's messages live in one stream shard, but a consumer group hands the
//! entries of one stream to every worker, and `XAUTOCLAIM` hands a slow worker's entries to
//! another. Two sends of one conversation in the stream together can therefore be stored in
//! the other order (the bench saw it under saturation). So a `Send` goes to the stream only
//! once the one before it in the same conversation was answered (`Sent` or refused): then
//! the conversation's order is the order in which the client sent.
//!
//! The cost is one stream→worker→Postgres round trip between two sends of one session to one
//! conversation; sends to different conversations still go out at once.
//!
//! An answer can be lost (pub/sub is at most once; the relay says so with a resync). The send
//! in flight is then sent again, which is safe: the worker stores a `client_msg_id` once and
//! answers a repeat with the same `Sent`.

use std::collections::{HashMap, VecDeque};
use std::time::{Duration, Instant};

use haberci_wire::{ClientMsgId, ConversationId, SendMessage};

/// Sends a session may have in flight or waiting, all conversations together; the next one
/// is refused (`rate_limited`) until answers come.
pub const MAX_PENDING_SENDS: usize = 256;
/// A send in flight with no answer for this long is sent again (same `client_msg_id`).
pub const ANSWER_TIMEOUT: Duration = Duration::from_secs(20);

/// What to do with a new send.
#[derive(Debug, PartialEq, Eq)]
pub enum Admit {
    /// Append it to its stream now.
    Go(SendMessage),
    /// It waits for the answer to an earlier send of its conversation.
    Queued,
    /// Too many sends wait: refuse it.
    Full(SendMessage),
}

#[derive(Debug, Default)]
pub struct SendQueue {
    lines: HashMap<ConversationId, Line>,
    pending: usize,
}

/// One conversation's sends: the one in the stream, and those behind it.
#[derive(Debug)]
struct Line {
    in_flight: SendMessage,
    /// When `in_flight` went to the stream (last).
    since: Instant,
    waiting: VecDeque<SendMessage>,
}

impl SendQueue {
    pub fn admit(
        &mut self,
        conversation: ConversationId,
        send: SendMessage,
        now: Instant,
    ) -> Admit {
        if self.pending >= MAX_PENDING_SENDS {
            return Admit::Full(send);
        }
        self.pending += 1;
        match self.lines.get_mut(&conversation) {
            Some(line) => {
                line.waiting.push_back(send);
                Admit::Queued
            }
            None => {
                self.lines.insert(
                    conversation,
                    Line {
                        in_flight: send.clone(),
                        since: now,
                        waiting: VecDeque::new(),
                    },
                );
                Admit::Go(send)
            }
        }
    }

    /// The send `id` was answered (stored or refused): the next one of its conversation, if
    /// any, goes to the stream now. An answer to no send in flight (another session's, or a
    /// repeat) changes nothing.
    pub fn answered(&mut self, id: ClientMsgId, now: Instant) -> Option<SendMessage> {
        let conversation = self.conversation_of(id)?;
        self.pending -= 1;
        let line = self.lines.get_mut(&conversation)?;
        match line.waiting.pop_front() {
            Some(next) => {
                line.in_flight = next.clone();
                line.since = now;
                Some(next)
            }
            None => {
                self.lines.remove(&conversation);
                None
            }
        }
    }

    /// The send `id` could not be appended: it and every send behind it are given back, in
    /// order, to be refused (none may overtake it).
    pub fn failed(&mut self, id: ClientMsgId) -> Vec<SendMessage> {
        let Some(line) = self.conversation_of(id).and_then(|c| self.lines.remove(&c)) else {
            return Vec::new();
        };
        let mut given_back = Vec::with_capacity(1 + line.waiting.len());
        given_back.push(line.in_flight);
        given_back.extend(line.waiting);
        self.pending -= given_back.len();
        given_back
    }

    /// Sends in flight whose answer may be lost: all of them after a resync (`every`), else
    /// those older than [`ANSWER_TIMEOUT`]. Each goes to the stream again from `now`.
    pub fn unanswered(&mut self, every: bool, now: Instant) -> Vec<SendMessage> {
        self.lines
            .values_mut()
            .filter(|line| every || now >= line.since + ANSWER_TIMEOUT)
            .map(|line| {
                line.since = now;
                line.in_flight.clone()
            })
            .collect()
    }

    /// When [`SendQueue::unanswered`] has something to send again.
    pub fn next_timeout(&self) -> Option<Instant> {
        self.lines
            .values()
            .map(|line| line.since + ANSWER_TIMEOUT)
            .min()
    }

    fn conversation_of(&self, id: ClientMsgId) -> Option<ConversationId> {
        self.lines
            .iter()
            .find(|(_, line)| line.in_flight.client_msg_id == id)
            .map(|(conversation, _)| *conversation)
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use haberci_wire::{MessageKind, Recipient, UserId};
    use uuid::Uuid;

    fn conversation(n: u128) -> ConversationId {
        ConversationId::new(Uuid::from_u128(1000 + n)).unwrap()
    }

    fn send(n: u128) -> SendMessage {
        SendMessage {
            client_msg_id: ClientMsgId::new(Uuid::from_u128(n)).unwrap(),
            recipient: Recipient::User(UserId::new(Uuid::from_u128(7)).unwrap()),
            kind: MessageKind::Text,
            content: format!("m{n}"),
            media: None,
        }
    }

    fn id(n: u128) -> ClientMsgId {
        send(n).client_msg_id
    }

    #[test]
    fn one_send_per_conversation_goes_out_each_after_the_answer_to_the_one_before() {
        let t = Instant::now();
        let mut q = SendQueue::default();
        assert_eq!(q.admit(conversation(1), send(1), t), Admit::Go(send(1)));
        assert_eq!(q.admit(conversation(1), send(2), t), Admit::Queued);
        assert_eq!(q.admit(conversation(1), send(3), t), Admit::Queued);
        // Another conversation is not held up.
        assert_eq!(q.admit(conversation(2), send(4), t), Admit::Go(send(4)));
        // An answer to a send that is not in flight (a waiting one, another session's)
        // releases nothing.
        assert_eq!(q.answered(id(3), t), None);
        assert_eq!(q.answered(id(99), t), None);
        assert_eq!(q.answered(id(1), t), Some(send(2)));
        assert_eq!(q.answered(id(4), t), None);
        assert_eq!(q.answered(id(2), t), Some(send(3)));
        assert_eq!(q.answered(id(3), t), None);
        assert_eq!(q.next_timeout(), None, "nothing is left in flight");
        assert_eq!(q.pending, 0);
    }

    #[test]
    fn a_send_that_cannot_be_appended_gives_back_the_ones_behind_it_in_order() {
        let t = Instant::now();
        let mut q = SendQueue::default();
        q.admit(conversation(1), send(1), t);
        q.admit(conversation(1), send(2), t);
        q.admit(conversation(1), send(3), t);
        q.admit(conversation(2), send(4), t);
        assert_eq!(q.failed(id(1)), vec![send(1), send(2), send(3)]);
        assert_eq!(q.failed(id(1)), vec![], "given back once");
        assert_eq!(q.pending, 1);
        // The conversation starts afresh.
        assert_eq!(q.admit(conversation(1), send(5), t), Admit::Go(send(5)));
    }

    #[test]
    fn sends_in_flight_go_again_after_the_timeout_or_a_resync() {
        let t = Instant::now();
        let mut q = SendQueue::default();
        q.admit(conversation(1), send(1), t);
        q.admit(conversation(1), send(2), t);
        let later = t + Duration::from_secs(5);
        q.admit(conversation(2), send(3), later);
        assert_eq!(q.next_timeout(), Some(t + ANSWER_TIMEOUT));
        assert_eq!(
            q.unanswered(false, t + ANSWER_TIMEOUT - Duration::from_millis(1)),
            vec![]
        );
        assert_eq!(q.unanswered(false, t + ANSWER_TIMEOUT), vec![send(1)]);
        // Only the one in flight is sent again, and its clock starts over.
        assert_eq!(q.next_timeout(), Some(later + ANSWER_TIMEOUT));
        let mut all = q.unanswered(true, later);
        all.sort_by_key(|s| s.client_msg_id);
        assert_eq!(all, vec![send(1), send(3)]);
    }

    #[test]
    fn too_many_pending_sends_are_refused_until_answers_come() {
        let t = Instant::now();
        let mut q = SendQueue::default();
        let n = MAX_PENDING_SENDS as u128;
        for i in 0..n {
            assert_ne!(
                q.admit(conversation(i % 3), send(i + 1), t),
                Admit::Full(send(i + 1))
            );
        }
        assert_eq!(
            q.admit(conversation(9), send(n + 1), t),
            Admit::Full(send(n + 1))
        );
        assert!(q.answered(id(1), t).is_some());
        assert_eq!(
            q.admit(conversation(9), send(n + 1), t),
            Admit::Go(send(n + 1))
        );
    }
}
