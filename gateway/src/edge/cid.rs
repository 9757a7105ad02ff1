//! QUIC connection IDs and stateless-reset tokens that outlive the process.
//!
//! quinn keys both with random bytes drawn when the endpoint starts. After a crash, the
//! restarted gateway (or another gateway a balancer now sends the packets to) cannot validate
//! the old connections' CIDs, drops their packets without a word, and every client learns that
//! its connection is gone only from its heartbeat: half a minute in a reconnect storm
//! (docs/BENCHMARKS.md, "Reconnect storm"). Keyed by the fleet's secret instead, any gateway
//! answers a packet of a connection it does not hold with a stateless reset (RFC 9000 §10.3)
//! that the client accepts as the end of its connection, and the client reconnects at once.
//!
//! A CID is [`CID_LEN`] bytes, in the layout of QUIC-LB's plaintext algorithm
//! (draft-ietf-quic-load-balancers), so that a stateless balancer can route a packet to the
//! gateway that issued its CID without holding per-connection state:
//!
//! | bytes | what |
//! |---|---|
//! | 0 | first octet: config rotation 0 (3 high bits), length of the rest (5 low bits): `0x0b` |
//! | 1–2 | the gateway's server id (`HABERCI_QUIC_SERVER_ID`), big-endian |
//! | 3–7 | random nonce |
//! | 8–11 | tag: HMAC-SHA-256 of bytes 0–7 under the fleet's CID key, truncated |
//!
//! The tag lets a gateway tell CIDs of its fleet from garbage without state, so it resets only
//! what some gateway issued. The server id is readable by anyone on the path; it links a
//! connection's CIDs to one gateway among all of its connections, which QUIC-LB accepts for
//! its plaintext mode.
//!
//! Invariant: every gateway of one deployment derives the same keys from the same secret
//! (`HABERCI_INTERNAL_TOKEN`): the CID key, and one reset key per server id, so a gateway
//! restarted with its server id signs the tokens its previous life gave out. Which lost
//! connections it resets is [`ResetScope`]'s question.

use std::sync::Arc;
use std::time::Duration;

use quinn::ConnectionId;
use quinn::crypto::HmacKey;
use ring::hmac;
use ring::rand::{SecureRandom, SystemRandom};

/// Bytes in a connection ID this gateway issues.
pub const CID_LEN: usize = 12;
/// The first octet: config rotation 0, and the length of what follows it.
const FIRST_OCTET: u8 = (CID_LEN - 1) as u8;
const SERVER_ID: std::ops::Range<usize> = 1..3;
const NONCE: std::ops::Range<usize> = 3..8;
const TAG: std::ops::Range<usize> = 8..CID_LEN;

/// Bytes of a stateless-reset token (RFC 9000 §10.3).
pub const RESET_TOKEN_LEN: usize = 16;

thread_local! {
    /// The CID this thread's [`Generator`] issued last.
    static LAST_ISSUED: std::cell::Cell<Option<ConnectionId>> = const { std::cell::Cell::new(None) };
}

/// Takes the CID the [`Generator`] issued last on this thread.
///
/// quinn generates a new connection's first CID inside `Incoming::accept`, synchronously and on
/// the calling thread (under the endpoint's lock; the later `NEW_CONNECTION_ID`s come from its
/// driver). So a call before `accept` (to clear it) and one right after give the CID the
/// client sends its packets to until it migrates: the one a stateless reset must name
/// ([`super::roster`]). quinn offers no accessor for it.
pub fn take_last_issued() -> Option<ConnectionId> {
    LAST_ISSUED.with(std::cell::Cell::take)
}

/// At most one stateless reset per this interval. quinn's default (20 ms, 50 a second) is a
/// defence against reset floods; after a crash thousands of clients each need one reset, and
/// a client whose packet got none waits for its next retransmission, which backs off. A reset
/// is smaller than the packet that caused it, so a faster rate amplifies nothing.
pub const MIN_RESET_INTERVAL: Duration = Duration::from_micros(100);

/// Which lost connections a gateway answers with a stateless reset.
///
/// RFC 9000 §21.11: endpoints that share a reset key MUST see every packet of a live
/// connection arrive at the one endpoint holding it; else anyone who saw a connection ID can
/// send it from elsewhere, land on another endpoint, learn the reset token from its answer,
/// and end the live connection. So by default a gateway resets only connections with its own
/// server id (its previous life's); only behind a balancer that routes by CID, which sends a
/// packet elsewhere only when its gateway is down, may it reset the whole fleet's.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ResetScope {
    /// CIDs with this gateway's server id.
    Own,
    /// Every CID of the fleet (`HABERCI_QUIC_RESET_FLEET=1`).
    Fleet,
}

/// The fleet's keys for stateless resets and CID tags.
#[derive(Clone)]
pub struct FleetKeys {
    /// The reset key of each server id derives from this one.
    reset_root: Arc<hmac::Key>,
    cid: Arc<hmac::Key>,
}

impl std::fmt::Debug for FleetKeys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("FleetKeys(..)")
    }
}

impl FleetKeys {
    /// The keys every gateway holding `secret` derives alike.
    pub fn derive(secret: &[u8]) -> FleetKeys {
        let root = hmac::Key::new(hmac::HMAC_SHA256, secret);
        let sub = |label: &[u8]| {
            Arc::new(hmac::Key::new(
                hmac::HMAC_SHA256,
                hmac::sign(&root, label).as_ref(),
            ))
        };
        FleetKeys {
            reset_root: sub(b"haberci quic stateless reset v1"),
            cid: sub(b"haberci quic connection id v1"),
        }
    }

    /// Keys of this process alone (no fleet secret, or no server id of its own): resets work
    /// only within its lifetime.
    pub fn random() -> FleetKeys {
        let mut secret = [0u8; 32];
        // The OS's generator failing leaves nothing to fall back to.
        #[allow(clippy::expect_used)]
        SystemRandom::new()
            .fill(&mut secret)
            .expect("the system's random generator works");
        FleetKeys::derive(&secret)
    }

    /// The reset key of the gateway with `server_id`: tokens of its CIDs are signed with it.
    fn reset_key(&self, server_id: u16) -> hmac::Key {
        let mut label = b"server ".to_vec();
        label.extend_from_slice(&server_id.to_be_bytes());
        hmac::Key::new(
            hmac::HMAC_SHA256,
            hmac::sign(&self.reset_root, &label).as_ref(),
        )
    }

    /// The stateless-reset token gateway `server_id` gave its client for `cid`: what quinn
    /// puts in the transport parameters and `NEW_CONNECTION_ID` frames (the first
    /// [`RESET_TOKEN_LEN`] bytes of [`ResetKeys`]'s signature), for resets this gateway sends
    /// unprompted ([`super::roster`]).
    pub fn reset_token(&self, server_id: u16, cid: &[u8]) -> [u8; RESET_TOKEN_LEN] {
        let mut token = [0u8; RESET_TOKEN_LEN];
        token.copy_from_slice(
            &hmac::sign(&self.reset_key(server_id), cid).as_ref()[..RESET_TOKEN_LEN],
        );
        token
    }

    /// quinn's endpoint settings with these keys, CIDs carrying `server_id`.
    pub fn endpoint_config(&self, server_id: u16, scope: ResetScope) -> quinn::EndpointConfig {
        let reset = ResetKeys {
            own: self.reset_key(server_id),
            own_id: server_id,
            fleet: self.clone(),
        };
        let mut config = quinn::EndpointConfig::new(Arc::new(reset));
        let keys = self.clone();
        config
            .cid_generator(move || Box::new(keys.generator(server_id, scope)))
            .min_reset_interval(MIN_RESET_INTERVAL);
        config
    }

    pub fn generator(&self, server_id: u16, scope: ResetScope) -> Generator {
        Generator {
            key: self.cid.clone(),
            server_id,
            scope,
            random: SystemRandom::new(),
        }
    }
}

/// The reset tokens quinn signs (`HMAC(key, cid)`): with the key of the CID's server id, so
/// that a gateway resetting another's connection ([`ResetScope::Fleet`]) signs the token
/// that gateway gave its client.
struct ResetKeys {
    own: hmac::Key,
    own_id: u16,
    fleet: FleetKeys,
}

impl ResetKeys {
    fn key_for(&self, cid: &[u8]) -> std::borrow::Cow<'_, hmac::Key> {
        match server_id(cid) {
            Some(id) if id != self.own_id => std::borrow::Cow::Owned(self.fleet.reset_key(id)),
            _ => std::borrow::Cow::Borrowed(&self.own),
        }
    }
}

impl HmacKey for ResetKeys {
    fn sign(&self, data: &[u8], signature_out: &mut [u8]) {
        signature_out.copy_from_slice(hmac::sign(&self.key_for(data), data).as_ref());
    }

    fn signature_len(&self) -> usize {
        hmac::HMAC_SHA256.digest_algorithm().output_len()
    }

    fn verify(
        &self,
        data: &[u8],
        signature: &[u8],
    ) -> Result<(), quinn_proto::crypto::CryptoError> {
        hmac::verify(&self.key_for(data), data, signature)
            .map_err(|_| quinn_proto::crypto::CryptoError)
    }
}

/// quinn's [`quinn::ConnectionIdGenerator`] for the layout above.
pub struct Generator {
    key: Arc<hmac::Key>,
    server_id: u16,
    scope: ResetScope,
    random: SystemRandom,
}

impl Generator {
    fn tag(&self, head: &[u8]) -> [u8; TAG.end - TAG.start] {
        let mut tag = [0; TAG.end - TAG.start];
        let len = tag.len();
        tag.copy_from_slice(&hmac::sign(&self.key, head).as_ref()[..len]);
        tag
    }
}

/// The server id of a CID in this layout, as a balancer reads it; `None` for another layout.
pub fn server_id(cid: &[u8]) -> Option<u16> {
    (cid.len() == CID_LEN && cid[0] == FIRST_OCTET)
        .then(|| u16::from_be_bytes([cid[SERVER_ID.start], cid[SERVER_ID.start + 1]]))
}

impl quinn::ConnectionIdGenerator for Generator {
    fn generate_cid(&mut self) -> ConnectionId {
        let mut bytes = [0u8; CID_LEN];
        bytes[0] = FIRST_OCTET;
        bytes[SERVER_ID].copy_from_slice(&self.server_id.to_be_bytes());
        // As in FleetKeys::random: no fallback exists for a broken system generator.
        #[allow(clippy::expect_used)]
        self.random
            .fill(&mut bytes[NONCE])
            .expect("the system's random generator works");
        let tag = self.tag(&bytes[..TAG.start]);
        bytes[TAG].copy_from_slice(&tag);
        let cid = ConnectionId::new(&bytes);
        LAST_ISSUED.with(|last| last.set(Some(cid)));
        cid
    }

    fn validate(&self, cid: &ConnectionId) -> Result<(), quinn_proto::InvalidCid> {
        // Not compared in constant time: the tag only tells the fleet's CIDs from garbage, and
        // forging one buys a reset that matches no connection (its token has its own key).
        let valid = cid.len() == CID_LEN
            && cid[0] == FIRST_OCTET
            && self.tag(&cid[..TAG.start])[..] == cid[TAG]
            && (self.scope == ResetScope::Fleet || server_id(cid) == Some(self.server_id));
        if valid {
            Ok(())
        } else {
            Err(quinn_proto::InvalidCid)
        }
    }

    fn cid_len(&self) -> usize {
        CID_LEN
    }

    fn cid_lifetime(&self) -> Option<Duration> {
        None
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use quinn::ConnectionIdGenerator as _;

    use super::*;

    #[test]
    fn a_cid_validates_at_its_own_gateway_restarted_and_at_others_only_for_a_fleet() {
        let secret = b"the deployment's internal token, 32+ chars";
        let cid = FleetKeys::derive(secret)
            .generator(7, ResetScope::Own)
            .generate_cid();
        assert_eq!(cid.len(), CID_LEN);
        assert_eq!(server_id(&cid), Some(7));
        let again = FleetKeys::derive(secret);
        // The same gateway after a restart.
        assert!(again.generator(7, ResetScope::Own).validate(&cid).is_ok());
        // Another gateway: only behind a balancer that routes by CID.
        assert!(again.generator(9, ResetScope::Own).validate(&cid).is_err());
        assert!(again.generator(9, ResetScope::Fleet).validate(&cid).is_ok());
        assert!(
            FleetKeys::random()
                .generator(7, ResetScope::Fleet)
                .validate(&cid)
                .is_err()
        );
        let mut forged = cid.to_vec();
        forged[SERVER_ID.start] ^= 1;
        let fleet = again.generator(7, ResetScope::Fleet);
        assert!(fleet.validate(&ConnectionId::new(&forged)).is_err());
        assert!(fleet.validate(&ConnectionId::new(&cid[..8])).is_err());
    }

    #[test]
    fn a_reset_token_is_the_issuing_gateways_whoever_signs_it() {
        let fleet = FleetKeys::derive(b"secret");
        let cid = fleet.generator(1, ResetScope::Own).generate_cid();
        let sign = |own_id: u16| {
            let keys = ResetKeys {
                own: fleet.reset_key(own_id),
                own_id,
                fleet: fleet.clone(),
            };
            let mut out = [0u8; 32];
            keys.sign(&cid, &mut out);
            assert!(keys.verify(&cid, &out).is_ok());
            out
        };
        assert_eq!(
            sign(1),
            sign(2),
            "gateway 2 signs gateway 1's token for its CID"
        );
        assert_ne!(
            hmac::sign(&fleet.reset_key(1), &cid).as_ref(),
            hmac::sign(&fleet.reset_key(2), &cid).as_ref()
        );
    }

    #[test]
    fn the_token_of_an_unprompted_reset_is_the_one_quinn_gave_out() {
        let fleet = FleetKeys::derive(b"secret");
        let mut generator = fleet.generator(3, ResetScope::Own);
        assert_eq!(take_last_issued(), None);
        let cid = generator.generate_cid();
        assert_eq!(take_last_issued(), Some(cid), "the last one issued here");
        assert_eq!(take_last_issued(), None, "taken");
        let keys = ResetKeys {
            own: fleet.reset_key(3),
            own_id: 3,
            fleet: fleet.clone(),
        };
        let mut signature = [0u8; 32];
        keys.sign(&cid, &mut signature);
        assert_eq!(fleet.reset_token(3, &cid)[..], signature[..RESET_TOKEN_LEN]);
        assert_ne!(fleet.reset_token(4, &cid), fleet.reset_token(3, &cid));
    }

    #[test]
    fn cids_differ_and_the_reset_keys_are_not_the_cid_key() {
        let fleet = FleetKeys::derive(b"secret");
        let mut generator = fleet.generator(1, ResetScope::Own);
        let (a, b) = (generator.generate_cid(), generator.generate_cid());
        assert_ne!(a, b);
        assert_eq!(server_id(&a), server_id(&b));
        assert_ne!(
            hmac::sign(&fleet.reset_key(1), b"x").as_ref(),
            hmac::sign(&fleet.cid, b"x").as_ref()
        );
        assert_eq!(server_id(&[0u8; 8]), None);
    }
}
