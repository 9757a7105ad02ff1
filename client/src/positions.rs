//! Resume positions: per conversation, the highest seq this client holds with no gap below it.
//!
//! Sans-IO. The [`Session`](crate::Session) feeds it every seq it learns of (a received
//! `Message`, or the `Sent` answering one of our own sends in a conversation it already
//! knows), and [`Positions::resume`] turns it into `Hello.resume` for the next
//! connection.
//!
//! Rules (docs/PROTOCOL.md, "Resume"):
//! - a conversation listed in the initial resume positions expects `last_seq + 1` next;
//! - a conversation this client has never seen starts at the first seq it sees: earlier
//!   history is the HTTP API's business, not the realtime session's;
//! - a seq at or below the position (or already held above it) is a duplicate;
//! - a seq above `position + 1` is held until the gap below it fills. A correct server never
//!   leaves a gap within one conversation's `Message`s, but our own `Sent` and another
//!   member's `Message` travel separately and may arrive in either order.

use std::collections::{BTreeMap, BTreeSet};

use haberci_wire::{ConversationId, ResumePosition, Seq};

/// Seqs held above a gap, per conversation, before new ones are dropped. Dropping is safe: a
/// dropped seq is above the position, so a reconnect with resume gets it again.
pub const MAX_HELD_ABOVE_GAP: usize = 4096;

/// What one observed seq did to its conversation's position.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum Observed {
    /// Already held (at or below the position, or held above a gap): drop the message.
    Duplicate,
    /// The position moved to this seq (it may have swallowed seqs held above a gap).
    Advanced(Seq),
    /// Above a gap: held until the gap fills; the position did not move.
    Held,
}

#[derive(Clone, Debug, Default)]
struct Track {
    /// `None`: listed in resume with nothing yet; the next seq expected is 1.
    last: Option<Seq>,
    /// Seqs received above a gap. Invariant: every element is above `last + 1`.
    above: BTreeSet<Seq>,
}

/// The contiguous position of every conversation this client has seen or was told about.
#[derive(Clone, Debug, Default)]
pub struct Positions {
    // BTreeMap so that `resume()` lists conversations in a stable order.
    tracks: BTreeMap<ConversationId, Track>,
}

impl Positions {
    /// Starts from the positions a connection resumes from.
    pub fn from_resume(resume: &[ResumePosition]) -> Positions {
        let tracks = resume
            .iter()
            .map(|p| {
                let track = Track {
                    last: p.last_seq,
                    above: BTreeSet::new(),
                };
                (p.conversation_id, track)
            })
            .collect();
        Positions { tracks }
    }

    /// Records that this client holds `seq` of `conversation`.
    pub fn observe(&mut self, conversation: ConversationId, seq: Seq) -> Observed {
        let Some(track) = self.tracks.get_mut(&conversation) else {
            // First sight of this conversation: adopt the seq as the starting point.
            self.tracks.insert(
                conversation,
                Track {
                    last: Some(seq),
                    above: BTreeSet::new(),
                },
            );
            return Observed::Advanced(seq);
        };
        if track.last.is_some_and(|last| seq <= last) || track.above.contains(&seq) {
            return Observed::Duplicate;
        }
        let expected = track.last.map_or(Some(Seq::FIRST), Seq::next);
        if Some(seq) != expected {
            if track.above.len() < MAX_HELD_ABOVE_GAP {
                track.above.insert(seq);
            }
            return Observed::Held;
        }
        let mut last = seq;
        // Invariant kept: everything left in `above` is beyond the new `last + 1`.
        while let Some(next) = last.next().filter(|n| track.above.remove(n)) {
            last = next;
        }
        track.last = Some(last);
        Observed::Advanced(last)
    }

    /// Whether `conversation` has a starting point: listed in the resume positions, or seen.
    pub fn knows(&self, conversation: ConversationId) -> bool {
        self.tracks.contains_key(&conversation)
    }

    /// The contiguous position of `conversation`: `None` if nothing is held yet (or the
    /// conversation is unknown).
    pub fn last(&self, conversation: ConversationId) -> Option<Seq> {
        self.tracks.get(&conversation).and_then(|t| t.last)
    }

    /// `Hello.resume` for the next connection: every known conversation, in a stable order.
    pub fn resume(&self) -> Vec<ResumePosition> {
        self.tracks
            .iter()
            .map(|(&conversation_id, track)| ResumePosition {
                conversation_id,
                last_seq: track.last,
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    fn conv(n: u128) -> ConversationId {
        ConversationId::new(uuid::Uuid::from_u128(n)).unwrap()
    }

    fn seq(n: u64) -> Seq {
        Seq::new(n).unwrap()
    }

    #[test]
    fn a_listed_conversation_advances_one_seq_at_a_time() {
        let c = conv(1);
        let mut p = Positions::from_resume(&[ResumePosition {
            conversation_id: c,
            last_seq: Some(seq(41)),
        }]);
        assert_eq!(p.observe(c, seq(42)), Observed::Advanced(seq(42)));
        assert_eq!(p.observe(c, seq(43)), Observed::Advanced(seq(43)));
        assert_eq!(p.last(c), Some(seq(43)));
    }

    #[test]
    fn a_conversation_listed_with_nothing_expects_seq_one() {
        let c = conv(1);
        let mut p = Positions::from_resume(&[ResumePosition {
            conversation_id: c,
            last_seq: None,
        }]);
        assert_eq!(p.observe(c, seq(2)), Observed::Held);
        assert_eq!(p.last(c), None);
        assert_eq!(p.observe(c, seq(1)), Observed::Advanced(seq(2)));
    }

    #[test]
    fn an_unknown_conversation_starts_at_the_first_seq_seen() {
        let c = conv(7);
        let mut p = Positions::default();
        assert_eq!(p.last(c), None);
        assert_eq!(p.observe(c, seq(57)), Observed::Advanced(seq(57)));
        assert_eq!(p.observe(c, seq(58)), Observed::Advanced(seq(58)));
    }

    #[test]
    fn duplicates_are_reported_and_change_nothing() {
        let c = conv(1);
        let mut p = Positions::default();
        p.observe(c, seq(5));
        assert_eq!(p.observe(c, seq(5)), Observed::Duplicate);
        assert_eq!(p.observe(c, seq(3)), Observed::Duplicate);
        assert_eq!(p.observe(c, seq(7)), Observed::Held);
        assert_eq!(p.observe(c, seq(7)), Observed::Duplicate);
        assert_eq!(p.last(c), Some(seq(5)));
    }

    #[test]
    fn seqs_above_a_gap_are_held_until_it_fills() {
        let c = conv(1);
        let mut p = Positions::default();
        p.observe(c, seq(4));
        assert_eq!(p.observe(c, seq(6)), Observed::Held);
        assert_eq!(p.observe(c, seq(7)), Observed::Held);
        assert_eq!(p.observe(c, seq(9)), Observed::Held);
        assert_eq!(p.last(c), Some(seq(4)));
        // Our own Sent for 5 arrives late: 5, 6, 7 are now contiguous; 9 still waits for 8.
        assert_eq!(p.observe(c, seq(5)), Observed::Advanced(seq(7)));
        assert_eq!(p.observe(c, seq(8)), Observed::Advanced(seq(9)));
    }

    #[test]
    fn resume_lists_every_known_conversation_in_a_stable_order() {
        let (a, b, c) = (conv(1), conv(2), conv(3));
        let mut p = Positions::from_resume(&[ResumePosition {
            conversation_id: c,
            last_seq: None,
        }]);
        p.observe(b, seq(10));
        p.observe(a, seq(3));
        p.observe(a, seq(5)); // held: the position stays at 3
        assert_eq!(
            p.resume(),
            vec![
                ResumePosition {
                    conversation_id: a,
                    last_seq: Some(seq(3))
                },
                ResumePosition {
                    conversation_id: b,
                    last_seq: Some(seq(10))
                },
                ResumePosition {
                    conversation_id: c,
                    last_seq: None
                },
            ]
        );
    }

    #[test]
    fn held_seqs_are_bounded() {
        let c = conv(1);
        let mut p = Positions::default();
        p.observe(c, seq(1));
        for n in 3..(3 + MAX_HELD_ABOVE_GAP as u64 + 10) {
            assert_eq!(p.observe(c, seq(n)), Observed::Held);
        }
        // The seqs that did not fit were dropped; the position stops where the held run ends,
        // and a resume from there gets the rest again.
        let end = 3 + MAX_HELD_ABOVE_GAP as u64 - 1;
        assert_eq!(p.observe(c, seq(2)), Observed::Advanced(seq(end)));
    }
}
