//! What a user sees for each thing a client can get wrong, through real processes, on every
//! transport — and that none of it touches anyone else's session on the same gateway.

use std::time::Duration;

use haberci_client::{
    Client, ConnectError, Disconnect, ErrorCode, MessageKind, Recipient, SendError, UserId,
};
use haberci_testkit::TransportKind;
use haberci_wire::ServerFrame;

use crate::peer::Peer;
use crate::raw_ws::Raw;
use crate::support::{Cluster, TIMEOUT};

/// How soon a revoked session must end. A session's token lives for minutes, so an end
/// within this bound is the revocation's doing, not the token's expiry.
const REVOCATION_BOUND: Duration = Duration::from_secs(5);

/// Two bystanders on the same gateway, one per transport, who talk to each other.
struct Bystanders {
    a: Peer,
    b: Peer,
    sent: u64,
}

impl Bystanders {
    /// `a` and `b` still send and receive: one message each way.
    async fn still_talk(&mut self) {
        for (from, to) in [(&self.a, &self.b), (&self.b, &self.a)] {
            let sent = from
                .send_reliably(haberci_client::text_to(to.id, "still here"))
                .await;
            self.sent += 1;
            assert_eq!(sent.seq.get(), self.sent);
            to.wait_for_seq(sent.conversation_id, sent.seq.get()).await;
        }
        for peer in [&self.a, &self.b] {
            let log = peer.log();
            assert!(
                log.disconnects.is_empty(),
                "{}: {:?}",
                peer.name(),
                log.disconnects
            );
            assert!(log.errors.is_empty(), "{}: {:?}", peer.name(), log.errors);
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_input_gets_its_error_and_leaves_others_untouched() {
    let cluster = Cluster::start(1, 1).await;
    let (a, b) = (
        cluster.register("by_a").await,
        cluster.register("by_b").await,
    );
    let mut bystanders = Bystanders {
        a: Peer::connect(&a, cluster.client_config(0, TransportKind::Quic, &a.token)).await,
        b: Peer::connect(
            &b,
            cluster.client_config(0, TransportKind::WebSocket, &b.token),
        )
        .await,
        sent: 0,
    };
    bystanders.still_talk().await;
    // A group the offenders are not in.
    let owner = cluster.register("owner").await;
    let group = cluster.create_group(&owner, &[&a]).await;
    let nobody = UserId::new(uuid::Uuid::now_v7()).expect("not nil");

    for kind in TransportKind::ALL {
        let user = cluster.register("offender").await;
        let (client, _events) = Client::connect(cluster.client_config(0, kind, &user.token))
            .await
            .expect("connect");
        let refusals: [(&str, Recipient, String, ErrorCode); 4] = [
            (
                "a group one is not a member of",
                Recipient::Group(group),
                "let me in".into(),
                ErrorCode::Forbidden,
            ),
            (
                "a user that does not exist",
                Recipient::User(nobody),
                "hello?".into(),
                ErrorCode::UnknownRecipient,
            ),
            (
                "content above 16 KiB",
                Recipient::User(a.id),
                "x".repeat(haberci_wire::MAX_CONTENT_BYTES + 1),
                ErrorCode::ContentTooLarge,
            ),
            (
                "a direct message to oneself",
                Recipient::User(user.id),
                "me".into(),
                ErrorCode::InvalidField,
            ),
        ];
        for (case, recipient, content, code) in refusals {
            let message = haberci_client::message(recipient, MessageKind::Text, content);
            match tokio::time::timeout(TIMEOUT, client.send(message)).await {
                Ok(Err(SendError::Refused { code: got, .. })) => {
                    assert_eq!(got, code, "{kind:?}: {case}")
                }
                other => panic!("{kind:?}: {case}: expected {code:?}, got {other:?}"),
            }
            assert!(client.is_open(), "{kind:?}: {case}: a refusal is not fatal");
            bystanders.still_talk().await;
        }
        client.close().await;

        // An expired token is refused at the door with token_expired.
        let expired = cluster.expired_token(&user);
        match Client::connect(cluster.client_config(0, kind, &expired)).await {
            Err(ConnectError::Closed { code, .. }) => {
                assert_eq!(code, ErrorCode::TokenExpired, "{kind:?}")
            }
            other => panic!("{kind:?}: expected token_expired, got {other:?}"),
        }
        bystanders.still_talk().await;

        // Logging out revokes the login session: its open sessions close with unauthenticated.
        let (_client, mut events) = Client::connect(cluster.client_config(0, kind, &user.token))
            .await
            .expect("connect");
        cluster.logout(&user).await;
        let closed = tokio::time::timeout(REVOCATION_BOUND, async {
            let mut closing = None;
            while let Some(event) = events.recv().await {
                match event {
                    haberci_client::Event::Closing(c) => closing = Some(c.code),
                    haberci_client::Event::Disconnected(reason) => return (closing, reason),
                    _ => {}
                }
            }
            panic!("events ended without Disconnected")
        })
        .await
        .unwrap_or_else(|_| panic!("{kind:?}: the revoked session is still open"));
        assert_eq!(closed.0, Some(ErrorCode::Unauthenticated), "{kind:?}");
        assert!(
            matches!(
                closed.1,
                Disconnect::Server {
                    code: Some(ErrorCode::Unauthenticated),
                    ..
                }
            ),
            "{kind:?}: {:?}",
            closed.1
        );
        // A new session with the revoked (unexpired) access token is ended as well: at once,
        // or right after its Welcome.
        match Client::connect(cluster.client_config(0, kind, &user.token)).await {
            Err(haberci_client::ConnectError::Closed { code, .. }) => {
                assert_eq!(code, ErrorCode::Unauthenticated, "{kind:?}")
            }
            Ok((_client, mut events)) => {
                let code = tokio::time::timeout(REVOCATION_BOUND, async {
                    while let Some(event) = events.recv().await {
                        if let haberci_client::Event::Disconnected(Disconnect::Server {
                            code,
                            ..
                        }) = event
                        {
                            return code;
                        }
                    }
                    None
                })
                .await
                .unwrap_or_else(|_| panic!("{kind:?}: a session with a revoked token stays open"));
                assert_eq!(code, Some(ErrorCode::Unauthenticated), "{kind:?}");
            }
            Err(other) => panic!("{kind:?}: expected unauthenticated, got {other:?}"),
        }
        bystanders.still_talk().await;
    }

    // Bytes that are not a frame close the session with bad_frame (WebSocket: a binary
    // message is one frame body, and this one is not protobuf).
    let user = cluster.register("garbler").await;
    let mut raw = Raw::connect(&cluster, 0, &user.token).await;
    raw.write_binary(vec![0xff; 16]).await;
    let closing = loop {
        match raw.next_frame().await {
            Some(ServerFrame::Closing(closing)) => break closing,
            Some(_) => continue,
            None => panic!("closed without a Closing frame"),
        }
    };
    assert_eq!(closing.code, ErrorCode::BadFrame);
    assert!(raw.next_frame().await.is_none(), "the connection ends");
    bystanders.still_talk().await;
}
