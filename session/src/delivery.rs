//! What a session is owed: every message of its conversations, once, in seq order, with no
//! gap — whether it arrives live (pub/sub) or from the backlog (the backend's sync endpoint).
//!
//! Sans-IO, owned by [`crate::Session`]: events and backlog pages go in, frames and
//! requests ([`Need`]) come out.
//!
//! How it holds the guarantee (DESIGN: correctness rests on Postgres seq + resume, not on
//! pub/sub):
//! - Per conversation it keeps `pos`, the highest seq written to the client; everything at or
//!   below it was written, in order.
//! - A live message with seq `pos + 1` is written at once; one at or below `pos` is a duplicate
//!   and dropped; one above `pos + 1` reveals a gap (pub/sub lost something, or two workers
//!   published out of order): it is held in `pending` and the gap is fetched from the backlog.
//! - While a fetch is out, live messages are held; the fetched page is written (only seqs above
//!   `pos`), then the held ones that now follow on. That is the seam between backlog and live:
//!   no gap, no duplicate.
//! - Before the session's first sync ([`Delivery::start`]) everything is held, because `pos`
//!   is not known yet.
//!
//! Invariant: a seq fetched from the backlog was committed before the gateway asked, and a
//! worker publishes only after commit, so a gap is always filled by the fetch that follows it.
//! (Should a fetch ever come back without filling it, the held messages are written after
//! [`MAX_EMPTY_FETCHES`] tries, and that is logged as the fault it is.)

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::Arc;

use haberci_seam::streams::Event;
use haberci_wire::{
    ConversationId, ErrorFrame, Message, MessageStatus, ResumePosition, ServerFrame, SessionId,
    UserId,
};

/// Live messages held per conversation while a gap is fetched. Above it the held messages
/// are dropped: the fetch pages through them anyway.
pub const MAX_PENDING: usize = 256;
/// Events held before the first sync.
pub const MAX_EARLY: usize = 1024;
/// Fetches in a row that leave a gap open before the held messages are written anyway.
pub const MAX_EMPTY_FETCHES: u8 = 3;

/// A conversation the user is a member of, as the backend lists it at session start.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ConversationInfo {
    pub id: ConversationId,
    /// The other user of a direct conversation; `None` for a group.
    pub peer: Option<UserId>,
    pub last_seq: u64,
    /// Where the user's delivered watermark is (resume point when the client names none).
    pub delivered_seq: u64,
}

/// "Send me what follows `after` in `conversation`."
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FetchFrom {
    pub conversation: ConversationId,
    pub after: u64,
}

/// One page of a conversation's backlog, ascending by seq.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Backlog {
    pub conversation: ConversationId,
    pub messages: Vec<Message>,
    /// More follows the last message.
    pub more: bool,
}

/// What delivery needs done.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Need {
    /// Write this frame to the client.
    Frame(ServerFrame),
    /// Fetch these backlogs and hand them to [`Delivery::backlog`].
    Fetch(Vec<FetchFrom>),
    /// Listen to this group conversation's channel (done before the fetch that follows it).
    Subscribe(ConversationId),
    /// Stop listening to this group conversation's channel.
    Unsubscribe(ConversationId),
}

#[derive(Debug)]
struct Track {
    peer: Option<UserId>,
    pos: u64,
    fetching: bool,
    empty_fetches: u8,
    pending: BTreeMap<u64, Message>,
}

impl Track {
    fn new(peer: Option<UserId>, pos: u64) -> Track {
        Track {
            peer,
            pos,
            fetching: false,
            empty_fetches: 0,
            pending: BTreeMap::new(),
        }
    }
}

#[derive(Debug)]
pub struct Delivery {
    session: SessionId,
    user: UserId,
    /// `None` until [`Delivery::start`]; then every conversation followed.
    tracks: Option<HashMap<ConversationId, Track>>,
    early: Vec<Arc<Event>>,
    needs: VecDeque<Need>,
}

impl Delivery {
    pub fn new(session: SessionId, user: UserId) -> Delivery {
        Delivery {
            session,
            user,
            tracks: None,
            early: Vec::new(),
            needs: VecDeque::new(),
        }
    }

    pub fn poll(&mut self) -> Option<Need> {
        self.needs.pop_front()
    }

    /// The other user of a direct conversation this session follows (typing goes to them).
    pub fn route(&self, conversation: ConversationId) -> Option<Route> {
        let track = self.tracks.as_ref()?.get(&conversation)?;
        Some(match track.peer {
            Some(peer) => Route::Direct(peer),
            None => Route::Group,
        })
    }

    /// The session's first sync: the user's conversations (from the backend, listed after the
    /// user's channel was subscribed) and the client's resume positions. Group channels are
    /// subscribed, then every conversation that may hold something the client lacks is fetched.
    pub fn start(&mut self, conversations: &[ConversationInfo], resume: &[ResumePosition]) {
        if self.tracks.is_some() {
            return;
        }
        let mut tracks = HashMap::with_capacity(conversations.len());
        let mut fetch = Vec::new();
        for info in conversations {
            let pos = resume
                .iter()
                .find(|r| r.conversation_id == info.id)
                .map(|r| r.last_seq.map_or(0, |s| s.get()))
                .unwrap_or(info.delivered_seq)
                // A client cannot hold what was never stored: a position above the last seq
                // would hide the next messages from it, so it is clamped (docs/PROTOCOL.md).
                .min(info.last_seq);
            let mut track = Track::new(info.peer, pos);
            if info.peer.is_none() {
                self.needs.push_back(Need::Subscribe(info.id));
            }
            // Groups are fetched even when nothing was missing at listing time: a message
            // stored between the listing and the subscription would otherwise wait for the
            // next one to reveal the gap.
            if info.last_seq > pos || info.peer.is_none() {
                track.fetching = true;
                fetch.push(FetchFrom {
                    conversation: info.id,
                    after: pos,
                });
            }
            tracks.insert(info.id, track);
        }
        self.tracks = Some(tracks);
        if !fetch.is_empty() {
            self.needs.push_back(Need::Fetch(fetch));
        }
        for event in std::mem::take(&mut self.early) {
            self.event(&event);
        }
    }

    /// Something published on a channel this session listens to.
    pub fn event(&mut self, event: &Arc<Event>) {
        if self.tracks.is_none() {
            if self.early.len() < MAX_EARLY {
                self.early.push(event.clone());
            }
            return;
        }
        match event.as_ref() {
            Event::Message(message) => self.message(message),
            Event::Sent { session, sent } if *session == self.session => {
                self.frame(ServerFrame::Sent(*sent))
            }
            Event::SentMessage { message, .. } => {
                if let Some(sent) = event.sent_to(self.session) {
                    self.frame(ServerFrame::Sent(sent));
                }
                self.message(message);
            }
            Event::Refused { session, error } if *session == self.session => {
                self.frame(ServerFrame::Error(ErrorFrame::clone(error)))
            }
            Event::Sent { .. } | Event::Refused { .. } => {}
            Event::Status(status) => self.frame(ServerFrame::Status(*status)),
            Event::Typing(typing) if typing.user_id != self.user => {
                self.frame(ServerFrame::Typing(*typing))
            }
            Event::Typing(_) => {}
            Event::Presence(presence) => self.frame(ServerFrame::Presence(*presence)),
            Event::Notification(notification) => {
                self.frame(ServerFrame::Notification(notification.clone()))
            }
            Event::Joined {
                conversation,
                group,
                after,
            } => self.joined(*conversation, *group, after.map_or(0, |s| s.get())),
            Event::Left { conversation } => self.left(*conversation),
        }
    }

    /// A backlog page asked for with [`Need::Fetch`].
    pub fn backlog(&mut self, page: Backlog) {
        let Some(track) = self
            .tracks
            .as_mut()
            .and_then(|t| t.get_mut(&page.conversation))
        else {
            return; // left meanwhile
        };
        let before = track.pos;
        for message in page.messages {
            let seq = message.seq.get();
            if seq > track.pos {
                track.pos = seq;
                self.needs
                    .push_back(Need::Frame(ServerFrame::Message(message)));
            }
        }
        if page.more {
            track.empty_fetches = 0;
            self.needs.push_back(Need::Fetch(vec![FetchFrom {
                conversation: page.conversation,
                after: track.pos,
            }]));
            return;
        }
        track.fetching = false;
        if track.pos > before {
            track.empty_fetches = 0;
        }
        Self::release(track, page.conversation, &mut self.needs);
    }

    /// A fetch failed (backend unreachable): ask again; held messages stay held.
    pub fn fetch_failed(&mut self, conversation: ConversationId) {
        if let Some(track) = self.tracks.as_mut().and_then(|t| t.get_mut(&conversation)) {
            self.needs.push_back(Need::Fetch(vec![FetchFrom {
                conversation,
                after: track.pos,
            }]));
        }
    }

    /// Every conversation may have missed live messages (the subscriber lagged or
    /// reconnected): fetch each from its position.
    pub fn resync(&mut self) {
        let Some(tracks) = self.tracks.as_mut() else {
            return;
        };
        let mut fetch = Vec::new();
        for (id, track) in tracks.iter_mut() {
            if !track.fetching {
                track.fetching = true;
                fetch.push(FetchFrom {
                    conversation: *id,
                    after: track.pos,
                });
            }
        }
        if !fetch.is_empty() {
            self.needs.push_back(Need::Fetch(fetch));
        }
    }

    fn message(&mut self, message: &Message) {
        let conversation = message.conversation_id;
        let viewer = self.user;
        let Some(tracks) = self.tracks.as_mut() else {
            return;
        };
        let seq = message.seq.get();
        let track = tracks.entry(conversation).or_insert_with(|| {
            // A conversation that began after the session's listing (a first direct message):
            // everything in it is new to this session. A direct conversation has both users
            // from its start, and the user's channel was subscribed before the listing, so its
            // seq 1 arriving live is all there is: written at once, nothing fetched (this was
            // one backlog query per new conversation per session, docs/BENCHMARKS.md "Cost
            // ledger"). Anything else — a group, or a later seq (something was lost) — is
            // fetched from the start; the backend starts after the user's join point.
            let peer = direct_peer(message, self.user);
            let mut track = Track::new(peer, 0);
            if peer.is_none() || seq != 1 {
                track.fetching = true;
                self.needs.push_back(Need::Fetch(vec![FetchFrom {
                    conversation,
                    after: 0,
                }]));
            }
            track
        });
        if seq <= track.pos {
            return; // a duplicate of what the client has
        }
        if track.fetching {
            hold(track, seen_live_by(message, viewer));
            return;
        }
        if seq == track.pos + 1 {
            track.pos = seq;
            self.needs
                .push_back(Need::Frame(ServerFrame::Message(seen_live_by(
                    message, viewer,
                ))));
            Self::release(track, conversation, &mut self.needs);
        } else {
            hold(track, seen_live_by(message, viewer));
            track.fetching = true;
            self.needs.push_back(Need::Fetch(vec![FetchFrom {
                conversation,
                after: track.pos,
            }]));
        }
    }

    /// Writes the held messages that follow `pos`; fetches again if a gap remains.
    fn release(track: &mut Track, conversation: ConversationId, needs: &mut VecDeque<Need>) {
        while let Some(entry) = track.pending.first_entry() {
            let seq = *entry.key();
            if seq <= track.pos {
                entry.remove();
            } else if seq == track.pos + 1 {
                track.pos = seq;
                needs.push_back(Need::Frame(ServerFrame::Message(entry.remove())));
            } else if track.empty_fetches >= MAX_EMPTY_FETCHES {
                tracing::error!(%conversation, pos = track.pos, next = seq, "backlog did not fill a gap; writing past it");
                track.pos = seq;
                needs.push_back(Need::Frame(ServerFrame::Message(entry.remove())));
                track.empty_fetches = 0;
            } else {
                track.empty_fetches += 1;
                track.fetching = true;
                needs.push_back(Need::Fetch(vec![FetchFrom {
                    conversation,
                    after: track.pos,
                }]));
                return;
            }
        }
    }

    fn joined(&mut self, conversation: ConversationId, group: bool, after: u64) {
        let Some(tracks) = self.tracks.as_mut() else {
            return;
        };
        if tracks.contains_key(&conversation) {
            return;
        }
        let mut track = Track::new(None, after);
        if group {
            self.needs.push_back(Need::Subscribe(conversation));
        }
        track.fetching = true;
        self.needs.push_back(Need::Fetch(vec![FetchFrom {
            conversation,
            after,
        }]));
        tracks.insert(conversation, track);
    }

    fn left(&mut self, conversation: ConversationId) {
        let Some(tracks) = self.tracks.as_mut() else {
            return;
        };
        if let Some(track) = tracks.remove(&conversation) {
            if track.peer.is_none() {
                self.needs.push_back(Need::Unsubscribe(conversation));
            }
        }
    }

    fn frame(&mut self, frame: ServerFrame) {
        self.needs.push_back(Need::Frame(frame));
    }
}

/// Where a conversation's ephemeral frames go.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Route {
    Direct(UserId),
    Group,
}

/// A live message as `viewer` is given it (the one copy made per session), its status by the
/// rule of docs/PROTOCOL.md ("Receipts") that the backend's `status_for` applies to backlog
/// and history: the sender's own message is `sent` (no other member has it yet); anyone
/// else's is `delivered` (it is being delivered to them and cannot have been read yet).
fn seen_live_by(message: &Message, viewer: UserId) -> Message {
    let mut seen = message.clone();
    seen.status = match message.sender_id == viewer {
        true => MessageStatus::Sent,
        false => MessageStatus::Delivered,
    };
    seen
}

fn hold(track: &mut Track, message: Message) {
    if track.pending.len() < MAX_PENDING {
        track.pending.insert(message.seq.get(), message);
    }
}

/// The other user of a direct message as `me` sees it; `None` for a group message.
fn direct_peer(message: &Message, me: UserId) -> Option<UserId> {
    let recipient = UserId::new(message.recipient_id.as_uuid())?;
    let direct = haberci_seam::streams::direct_conversation(message.sender_id, recipient);
    if direct != message.conversation_id {
        return None;
    }
    Some(if message.sender_id == me {
        recipient
    } else {
        message.sender_id
    })
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use haberci_seam::streams::direct_conversation;
    use haberci_wire::{ClientMsgId, MessageId, MessageKind, MessageStatus, Sent, Seq, Timestamp};
    use uuid::Uuid;

    fn user(n: u128) -> UserId {
        UserId::new(Uuid::from_u128(n)).unwrap()
    }

    const ME: u128 = 1;
    const PEER: u128 = 2;

    fn conv() -> ConversationId {
        direct_conversation(user(ME), user(PEER))
    }

    fn group() -> ConversationId {
        ConversationId::new(Uuid::from_u128(0x9000)).unwrap()
    }

    fn msg(conversation: ConversationId, seq: u64) -> Message {
        Message {
            id: MessageId::new(Uuid::from_u128(0x1000 + u128::from(seq))).unwrap(),
            sender_id: user(PEER),
            recipient_id: if conversation == conv() {
                user(ME).into()
            } else {
                haberci_wire::RecipientId::new(conversation.as_uuid()).unwrap()
            },
            kind: MessageKind::Text,
            content: format!("m{seq}"),
            timestamp: Timestamp::from_unix_millis(1_000).unwrap(),
            status: MessageStatus::Sent,
            conversation_id: conversation,
            seq: Seq::new(seq).unwrap(),
            media: None,
        }
    }

    fn live(d: &mut Delivery, conversation: ConversationId, seq: u64) {
        d.event(&Arc::new(Event::Message(msg(conversation, seq))));
    }

    fn delivery() -> Delivery {
        Delivery::new(SessionId::new(Uuid::from_u128(0x5e5)).unwrap(), user(ME))
    }

    fn info(
        id: ConversationId,
        peer: Option<UserId>,
        last: u64,
        delivered: u64,
    ) -> ConversationInfo {
        ConversationInfo {
            id,
            peer,
            last_seq: last,
            delivered_seq: delivered,
        }
    }

    /// Drains the needs: the seqs written, and the fetches asked for.
    fn drain(d: &mut Delivery) -> (Vec<u64>, Vec<FetchFrom>, Vec<Need>) {
        let (mut written, mut fetches, mut other) = (Vec::new(), Vec::new(), Vec::new());
        while let Some(need) = d.poll() {
            match need {
                Need::Frame(ServerFrame::Message(m)) => written.push(m.seq.get()),
                Need::Fetch(f) => fetches.extend(f),
                need => other.push(need),
            }
        }
        (written, fetches, other)
    }

    fn page(
        conversation: ConversationId,
        seqs: std::ops::RangeInclusive<u64>,
        more: bool,
    ) -> Backlog {
        Backlog {
            conversation,
            messages: seqs.map(|s| msg(conversation, s)).collect(),
            more,
        }
    }

    #[test]
    fn live_messages_in_order_are_written_at_once_and_duplicates_dropped() {
        let mut d = delivery();
        d.start(&[info(conv(), Some(user(PEER)), 0, 0)], &[]);
        assert_eq!(drain(&mut d).1, vec![], "nothing to fetch");
        for seq in [1, 2, 2, 1, 3] {
            live(&mut d, conv(), seq);
        }
        assert_eq!(drain(&mut d).0, vec![1, 2, 3]);
    }

    /// The status a live message carries is the viewer's, by the rule backlog and history
    /// follow: someone else's message is `delivered` to me, my own (on my other sessions) is
    /// `sent`.
    #[test]
    fn live_messages_carry_the_viewers_status() {
        let mut d = delivery();
        d.start(&[info(conv(), Some(user(PEER)), 0, 0)], &[]);
        live(&mut d, conv(), 1);
        let mut mine = msg(conv(), 2);
        mine.sender_id = user(ME);
        mine.recipient_id = user(PEER).into();
        d.event(&Arc::new(Event::Message(mine)));
        let statuses: Vec<_> = std::iter::from_fn(|| d.poll())
            .filter_map(|need| match need {
                Need::Frame(ServerFrame::Message(m)) => Some((m.seq.get(), m.status)),
                _ => None,
            })
            .collect();
        assert_eq!(
            statuses,
            [(1, MessageStatus::Delivered), (2, MessageStatus::Sent)]
        );
    }

    #[test]
    fn a_gap_is_fetched_and_the_seam_has_no_gap_and_no_duplicate() {
        let mut d = delivery();
        d.start(&[info(conv(), Some(user(PEER)), 2, 2)], &[]);
        drain(&mut d);
        live(&mut d, conv(), 5); // 3 and 4 lost on pub/sub
        let (written, fetches, _) = drain(&mut d);
        assert_eq!(written, Vec::<u64>::new());
        assert_eq!(
            fetches,
            vec![FetchFrom {
                conversation: conv(),
                after: 2
            }]
        );
        live(&mut d, conv(), 6); // held while fetching
        live(&mut d, conv(), 4); // arrives late, also held
        d.backlog(page(conv(), 3..=5, false));
        assert_eq!(drain(&mut d).0, vec![3, 4, 5, 6]);
        live(&mut d, conv(), 7);
        assert_eq!(drain(&mut d).0, vec![7]);
    }

    #[test]
    fn resume_starts_from_the_clients_position_else_from_the_delivered_watermark() {
        let other = direct_conversation(user(ME), user(3));
        let mut d = delivery();
        d.start(
            &[
                info(conv(), Some(user(PEER)), 10, 4),
                info(other, Some(user(3)), 10, 7),
            ],
            &[ResumePosition {
                conversation_id: conv(),
                last_seq: Seq::new(8),
            }],
        );
        let (_, mut fetches, _) = drain(&mut d);
        fetches.sort_by_key(|f| f.after);
        assert_eq!(
            fetches,
            vec![
                FetchFrom {
                    conversation: other,
                    after: 7
                },
                FetchFrom {
                    conversation: conv(),
                    after: 8
                },
            ]
        );
    }

    /// A position above the conversation's last seq is clamped to it: the next live
    /// message is delivered, not mistaken for one the client already holds.
    #[test]
    fn a_resume_position_above_the_last_seq_is_clamped_to_it() {
        let mut d = delivery();
        d.start(
            &[info(conv(), Some(user(PEER)), 3, 3)],
            &[ResumePosition {
                conversation_id: conv(),
                last_seq: Seq::new(1_000),
            }],
        );
        assert_eq!(drain(&mut d).1, vec![], "nothing missing up to 3");
        live(&mut d, conv(), 4);
        assert_eq!(drain(&mut d).0, vec![4]);
    }

    #[test]
    fn backlog_is_paged_until_done_then_live_messages_follow() {
        let mut d = delivery();
        d.start(&[info(conv(), Some(user(PEER)), 5, 0)], &[]);
        drain(&mut d);
        live(&mut d, conv(), 6);
        d.backlog(page(conv(), 1..=3, true));
        let (written, fetches, _) = drain(&mut d);
        assert_eq!(written, vec![1, 2, 3]);
        assert_eq!(
            fetches,
            vec![FetchFrom {
                conversation: conv(),
                after: 3
            }]
        );
        d.backlog(page(conv(), 4..=6, false));
        assert_eq!(drain(&mut d).0, vec![4, 5, 6], "6 came twice, written once");
    }

    #[test]
    fn events_before_the_first_sync_wait_for_it() {
        let mut d = delivery();
        live(&mut d, conv(), 3);
        assert_eq!(drain(&mut d).0, Vec::<u64>::new());
        d.start(&[info(conv(), Some(user(PEER)), 2, 2)], &[]);
        assert_eq!(drain(&mut d).0, vec![3]);
    }

    #[test]
    fn groups_are_subscribed_before_they_are_fetched() {
        let mut d = delivery();
        d.start(&[info(group(), None, 0, 0)], &[]);
        let needs: Vec<Need> = std::iter::from_fn(|| d.poll()).collect();
        assert_eq!(
            needs,
            vec![
                Need::Subscribe(group()),
                Need::Fetch(vec![FetchFrom {
                    conversation: group(),
                    after: 0
                }]),
            ]
        );
        assert_eq!(d.route(group()), Some(Route::Group));
        assert_eq!(d.route(conv()), None);
    }

    #[test]
    fn a_new_direct_conversation_is_written_from_its_first_message_without_a_fetch() {
        let mut d = delivery();
        d.start(&[], &[]);
        live(&mut d, conv(), 1);
        live(&mut d, conv(), 2);
        let (written, fetches, _) = drain(&mut d);
        assert_eq!(written, vec![1, 2]);
        assert_eq!(
            fetches,
            Vec::<FetchFrom>::new(),
            "seq 1 is the start: no backlog"
        );
        assert_eq!(d.route(conv()), Some(Route::Direct(user(PEER))));
    }

    #[test]
    fn a_message_of_a_group_the_session_does_not_follow_is_fetched_even_at_seq_1() {
        let mut d = delivery();
        d.start(&[], &[]);
        live(&mut d, group(), 1);
        let (written, fetches, _) = drain(&mut d);
        assert_eq!(written, Vec::<u64>::new(), "a group has join points: held");
        assert_eq!(
            fetches,
            vec![FetchFrom {
                conversation: group(),
                after: 0
            }]
        );
    }

    #[test]
    fn a_new_direct_conversation_first_seen_past_its_start_is_fetched_from_its_start() {
        let mut d = delivery();
        d.start(&[], &[]);
        live(&mut d, conv(), 2);
        let (written, fetches, _) = drain(&mut d);
        assert_eq!(written, Vec::<u64>::new(), "seq 1 was lost: held");
        assert_eq!(
            fetches,
            vec![FetchFrom {
                conversation: conv(),
                after: 0
            }]
        );
        d.backlog(page(conv(), 1..=2, false));
        assert_eq!(drain(&mut d).0, vec![1, 2], "2 came twice, written once");
        assert_eq!(d.route(conv()), Some(Route::Direct(user(PEER))));
    }

    #[test]
    fn joining_and_leaving_a_group_subscribes_and_unsubscribes() {
        let mut d = delivery();
        d.start(&[], &[]);
        d.event(&Arc::new(Event::Joined {
            conversation: group(),
            group: true,
            after: Seq::new(9),
        }));
        let needs: Vec<Need> = std::iter::from_fn(|| d.poll()).collect();
        assert_eq!(
            needs,
            vec![
                Need::Subscribe(group()),
                Need::Fetch(vec![FetchFrom {
                    conversation: group(),
                    after: 9
                }]),
            ]
        );
        d.event(&Arc::new(Event::Left {
            conversation: group(),
        }));
        assert_eq!(d.poll(), Some(Need::Unsubscribe(group())));
        live(&mut d, group(), 10);
        // A message of a group left: followed again only as a new conversation would be.
        assert!(matches!(d.poll(), Some(Need::Fetch(_))));
    }

    #[test]
    fn sent_goes_only_to_the_session_that_sent() {
        let mut d = delivery();
        d.start(&[], &[]);
        let sent = Sent {
            client_msg_id: ClientMsgId::new(Uuid::from_u128(7)).unwrap(),
            message_id: MessageId::new(Uuid::from_u128(8)).unwrap(),
            conversation_id: conv(),
            seq: Seq::FIRST,
            timestamp: Timestamp::from_unix_millis(1).unwrap(),
        };
        d.event(&Arc::new(Event::Sent {
            session: SessionId::new(Uuid::from_u128(0xbad)).unwrap(),
            sent,
        }));
        assert_eq!(d.poll(), None);
        d.event(&Arc::new(Event::Sent {
            session: SessionId::new(Uuid::from_u128(0x5e5)).unwrap(),
            sent,
        }));
        assert_eq!(d.poll(), Some(Need::Frame(ServerFrame::Sent(sent))));
    }

    #[test]
    fn a_sent_message_is_sent_then_the_copy_for_its_session_and_the_copy_alone_for_others() {
        let client_msg_id = ClientMsgId::new(Uuid::from_u128(7)).unwrap();
        let mut own = msg(conv(), 1);
        own.sender_id = user(ME);
        own.recipient_id = user(PEER).into();
        let event = |session: u128| {
            Arc::new(Event::SentMessage {
                session: SessionId::new(Uuid::from_u128(session)).unwrap(),
                client_msg_id,
                message: own.clone(),
            })
        };
        let sent = Sent {
            client_msg_id,
            message_id: own.id,
            conversation_id: conv(),
            seq: Seq::FIRST,
            timestamp: own.timestamp,
        };
        // The session that sent it.
        let mut d = delivery();
        d.start(&[], &[]);
        d.event(&event(0x5e5));
        assert_eq!(d.poll(), Some(Need::Frame(ServerFrame::Sent(sent))));
        assert_eq!(
            d.poll(),
            Some(Need::Frame(ServerFrame::Message(own.clone())))
        );
        assert_eq!(d.poll(), None);
        // Another session of the sender: the copy only, once.
        let mut d = delivery();
        d.start(&[], &[]);
        d.event(&event(0xbad));
        d.event(&event(0xbad));
        assert_eq!(drain(&mut d), (vec![1], vec![], vec![]));
    }

    #[test]
    fn a_gap_the_backlog_never_fills_is_crossed_after_bounded_tries() {
        let mut d = delivery();
        d.start(&[info(conv(), Some(user(PEER)), 1, 1)], &[]);
        drain(&mut d);
        live(&mut d, conv(), 3);
        for _ in 0..=MAX_EMPTY_FETCHES {
            let (_, fetches, _) = drain(&mut d);
            assert_eq!(fetches.len(), 1, "one fetch per try");
            d.backlog(page(conv(), 1..=1, false));
        }
        assert_eq!(drain(&mut d).0, vec![3]);
    }

    #[test]
    fn resync_fetches_every_conversation_from_its_position() {
        let mut d = delivery();
        d.start(&[info(conv(), Some(user(PEER)), 4, 4)], &[]);
        drain(&mut d);
        d.resync();
        assert_eq!(
            drain(&mut d).1,
            vec![FetchFrom {
                conversation: conv(),
                after: 4
            }]
        );
    }
}
