//! Many users on two gateways and two workers, over every transport, talk at once: direct
//! messages both ways and a group. Everyone gets every message of their conversations exactly
//! once, in seq order with no gap, and receipts travel back as `Status` (delivered, then read).

use std::collections::BTreeMap;

use futures::future::join_all;
use haberci_client::{ConversationId, MessageKind, Recipient, Seq};
use haberci_testkit::{TransportKind, User};
use haberci_wire::MessageId;

use crate::peer::Peer;
use crate::support::Cluster;

/// Messages each member sends into each of their conversations.
const PER_SENDER: usize = 4;

struct Conversation {
    recipient_of: Box<dyn Fn(usize) -> Recipient>,
    members: Vec<usize>,
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn users_across_gateways_and_transports_get_every_message_once_in_order() {
    let cluster = Cluster::start(2, 2).await;
    let mut users: Vec<User> = Vec::new();
    for i in 0..6 {
        users.push(cluster.register(&format!("u{i}")).await);
    }
    // Gateway by parity, transport by pairs: every (gateway, transport) holds someone.
    let mut peers = Vec::new();
    for (i, user) in users.iter().enumerate() {
        let kind = TransportKind::ALL[(i / 2) % TransportKind::ALL.len()];
        let config = cluster.client_config(i % 2, kind, &user.token);
        peers.push(Peer::connect(user, config).await);
    }
    let group = cluster
        .create_group(&users[0], &users[1..].iter().collect::<Vec<_>>())
        .await;

    let ids: Vec<_> = users.iter().map(|u| u.id).collect();
    let direct = |a: usize, b: usize| Conversation {
        recipient_of: Box::new({
            let ids = ids.clone();
            move |sender| Recipient::User(ids[if sender == a { b } else { a }])
        }),
        members: vec![a, b],
    };
    // Pairs cross gateways (0-1, 2-3, 4-5), stay on one (0-2, 1-3), and mix transports.
    let mut conversations = vec![
        direct(0, 1),
        direct(2, 3),
        direct(4, 5),
        direct(0, 2),
        direct(1, 3),
    ];
    conversations.push(Conversation {
        recipient_of: Box::new(move |_| Recipient::Group(group)),
        members: (0..users.len()).collect(),
    });

    // Everyone sends into each of their conversations at once.
    let mut sends = Vec::new();
    for (c, conversation) in conversations.iter().enumerate() {
        for &sender in &conversation.members {
            for k in 0..PER_SENDER {
                let message = haberci_client::message(
                    (conversation.recipient_of)(sender),
                    MessageKind::Text,
                    format!("c{c} from u{sender} #{k}"),
                );
                let peer = peers[sender].clone();
                sends.push(async move { (c, peer.send_reliably(message).await) });
            }
        }
    }
    let answers = join_all(sends).await;

    // The history of each conversation, as the senders' `Sent`s tell it.
    let mut histories: Vec<(ConversationId, BTreeMap<u64, MessageId>)> = Vec::new();
    for (c, conversation) in conversations.iter().enumerate() {
        let mine: Vec<_> = answers.iter().filter(|(i, _)| *i == c).collect();
        let id = mine[0].1.conversation_id;
        let mut history = BTreeMap::new();
        for (_, sent) in &mine {
            assert_eq!(sent.conversation_id, id, "one conversation per recipient");
            assert!(
                history.insert(sent.seq.get(), sent.message_id).is_none(),
                "seq {} answered twice in c{c}",
                sent.seq
            );
        }
        assert_eq!(history.len(), conversation.members.len() * PER_SENDER);
        histories.push((id, history));
    }

    for ((id, history), conversation) in histories.iter().zip(&conversations) {
        let last = history.len() as u64;
        for &member in &conversation.members {
            peers[member].wait_for_seq(*id, last).await;
            peers[member].assert_exactly_once(*id, history);
        }
    }

    // Receipts: each member acks everything (delivered), and the others hear of it; then each
    // reads everything, and the others hear that too.
    for step in ["delivered", "read"] {
        for ((id, history), conversation) in histories.iter().zip(&conversations) {
            let last = Seq::new(history.len() as u64).expect("a seq");
            for &member in &conversation.members {
                let client = peers[member].client();
                match step {
                    "delivered" => client.ack(*id, last),
                    _ => client.read(*id, last),
                }
                .expect("the session is open");
            }
        }
        for ((id, history), conversation) in histories.iter().zip(&conversations) {
            let last = history.len() as u64;
            let read = if step == "read" { last } else { 0 };
            for &member in &conversation.members {
                for &other in conversation.members.iter().filter(|&&o| o != member) {
                    let who = peers[member].id;
                    peers[other]
                        .wait(&format!("told {who} {step} {last} in {id}"), |log| {
                            log.status_reached(*id, who, last, read)
                        })
                        .await;
                }
            }
        }
    }
    for peer in &peers {
        let log = peer.log();
        assert!(log.errors.is_empty(), "{}: {:?}", peer.name(), log.errors);
        assert!(
            log.disconnects.is_empty(),
            "{}: {:?}",
            peer.name(),
            log.disconnects
        );
        for status in &log.statuses {
            assert!(status.read <= status.delivered, "{status:?}");
        }
    }
}
