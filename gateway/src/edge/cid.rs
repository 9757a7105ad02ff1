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
//! Invariant: every gateway of one deployment derives the same two keys from the same secret
//! (`HABERCI_INTERNAL_TOKEN`), so a reset from any of them is one the client verifies.

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

/// At most one stateless reset per this interval. quinn's default (20 ms, 50 a second) is a
/// defence against reset floods; after a crash thousands of clients each need one reset, and
/// a client whose packet got none waits for its next retransmission, which backs off. A reset
/// is smaller than the packet that caused it, so a faster rate amplifies nothing.
pub const MIN_RESET_INTERVAL: Duration = Duration::from_micros(100);

/// The fleet's keys for stateless resets and CID tags.
#[derive(Clone)]
pub struct FleetKeys {
    reset: Arc<hmac::Key>,
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
            reset: sub(b"haberci quic stateless reset v1"),
            cid: sub(b"haberci quic connection id v1"),
        }
    }

    /// Keys of this process alone (no fleet secret): resets work only within its lifetime.
    pub fn random() -> FleetKeys {
        let mut secret = [0u8; 32];
        // The OS's generator failing leaves nothing to fall back to.
        #[allow(clippy::expect_used)]
        SystemRandom::new()
            .fill(&mut secret)
            .expect("the system's random generator works");
        FleetKeys::derive(&secret)
    }

    /// quinn's endpoint settings with these keys, CIDs carrying `server_id`.
    pub fn endpoint_config(&self, server_id: u16) -> quinn::EndpointConfig {
        let mut config = quinn::EndpointConfig::new(self.reset.clone() as Arc<dyn HmacKey>);
        let keys = self.clone();
        config
            .cid_generator(move || Box::new(keys.generator(server_id)))
            .min_reset_interval(MIN_RESET_INTERVAL);
        config
    }

    pub fn generator(&self, server_id: u16) -> Generator {
        Generator {
            key: self.cid.clone(),
            server_id,
            random: SystemRandom::new(),
        }
    }
}

/// quinn's [`quinn::ConnectionIdGenerator`] for the layout above.
pub struct Generator {
    key: Arc<hmac::Key>,
    server_id: u16,
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
        ConnectionId::new(&bytes)
    }

    fn validate(&self, cid: &ConnectionId) -> Result<(), quinn_proto::InvalidCid> {
        // Not compared in constant time: the tag only tells the fleet's CIDs from garbage, and
        // forging one buys a reset that matches no connection (its token has its own key).
        let valid = cid.len() == CID_LEN
            && cid[0] == FIRST_OCTET
            && self.tag(&cid[..TAG.start])[..] == cid[TAG];
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
    fn a_cid_from_one_gateway_validates_at_every_gateway_of_the_fleet_and_nowhere_else() {
        let fleet = FleetKeys::derive(b"the deployment's internal token, 32+ chars");
        let cid = fleet.generator(7).generate_cid();
        assert_eq!(cid.len(), CID_LEN);
        assert_eq!(server_id(&cid), Some(7));
        // Another gateway of the fleet, or this one restarted.
        let again = FleetKeys::derive(b"the deployment's internal token, 32+ chars");
        assert!(again.generator(9).validate(&cid).is_ok());
        assert!(FleetKeys::random().generator(7).validate(&cid).is_err());
        let mut forged = cid.to_vec();
        forged[SERVER_ID.start] ^= 1;
        assert!(
            again
                .generator(7)
                .validate(&ConnectionId::new(&forged))
                .is_err()
        );
        assert!(
            again
                .generator(7)
                .validate(&ConnectionId::new(&cid[..8]))
                .is_err()
        );
    }

    #[test]
    fn cids_differ_and_the_reset_key_is_not_the_cid_key() {
        let fleet = FleetKeys::derive(b"secret");
        let mut generator = fleet.generator(1);
        let (a, b) = (generator.generate_cid(), generator.generate_cid());
        assert_ne!(a, b);
        assert_eq!(server_id(&a), server_id(&b));
        assert_ne!(
            hmac::sign(&fleet.reset, b"x").as_ref(),
            hmac::sign(&fleet.cid, b"x").as_ref()
        );
        assert_eq!(server_id(&[0u8; 8]), None);
    }
}
