//! TLS 1.3 session tickets that every gateway of the fleet opens, so a client that reconnects
//! to another gateway, or to a gateway restarted after a crash, resumes its TLS session
//! instead of making a full handshake (no certificate signed, sent or checked).
//!
//! The key of each rotation period (an *epoch* of [`ROTATE`]) lives in Redis under
//! `haberci_seam::streams::ticket_key`: the first gateway to need it writes 32 random bytes
//! with `SET NX` and an expiry of four periods, and every gateway reads back whichever won
//! (and offers the key it holds, not a new one, so a Redis that lost its keys gets them back).
//! A gateway holds the keys of the previous, current and next epoch ([`keep`] refreshes them),
//! seals with the current one and opens a ticket only of those three epochs, so a ticket
//! resumes for one to two periods wherever it is presented, and a clock a little ahead or
//! behind still agrees.
//!
//! Until the fleet's key is known (Redis away) tickets are sealed with a key of this process
//! alone, rotated the same way: they resume here only, as before.
//!
//! Used for QUIC only, where TLS 1.3 is the only version: a TLS 1.3 resumption keeps an
//! (EC)DHE exchange (rustls offers no PSK-only mode), so a ticket key that leaks does not open
//! recorded traffic. TLS 1.2 on TCP would resume from the ticket alone, so the TCP listener
//! keeps rustls's per-process ticketer.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use arc_swap::ArcSwap;
use fred::interfaces::KeysInterface;
use fred::types::{Expiration, SetOptions};
use haberci_kit::shutdown::Shutdown;
use ring::aead::{AES_256_GCM, Aad, LessSafeKey, NONCE_LEN, Nonce, UnboundKey};
use ring::rand::{SecureRandom, SystemRandom};

use crate::metrics::{self, Ticket};

/// How long one ticket key seals new tickets; a ticket's lifetime.
pub const ROTATE: Duration = Duration::from_secs(3600);
/// How long a key lives in Redis: made at the start of the period before its own at the
/// earliest, it is needed until the end of the period after, plus a clock a little ahead.
const KEY_EXPIRY: Duration = Duration::from_secs(4 * 3600);
/// How often the held keys are refreshed from Redis (and sooner after a failure).
const REFRESH: Duration = Duration::from_secs(60);
const RETRY: Duration = Duration::from_secs(5);
/// How long a gateway's start waits for the fleet's keys.
pub const FIRST_FETCH: Duration = Duration::from_secs(1);
const KEY_LEN: usize = 32;
const LABEL_LEN: usize = 8;
const TAG_LEN: usize = 16;
/// Set in the label of a ticket sealed with a key of this process alone; the label then
/// carries the process's random tag (bits 32–62) and the epoch (bits 0–31).
const LOCAL: u64 = 1 << 63;

/// A rotation period's number: Unix time / [`ROTATE`] (below 2³² until the year 491,000).
pub type Epoch = u64;

/// Why the fleet's keys could not all be fetched.
#[derive(Debug, thiserror::Error)]
pub enum RefreshError {
    #[error("redis: {0}")]
    Redis(#[from] fred::error::Error),
    #[error("{key} holds no {KEY_LEN}-byte key")]
    NotAKey { key: String },
    #[error("the system's random source failed")]
    Random,
}

/// A key of the fleet's, with its bytes (offered back to a Redis that lost it).
struct Held {
    raw: [u8; KEY_LEN],
    key: LessSafeKey,
}

#[derive(Default)]
struct Keys {
    fleet: BTreeMap<Epoch, Arc<Held>>,
    local: BTreeMap<Epoch, Arc<LessSafeKey>>,
}

/// Seals and opens session tickets with the fleet's keys (see the module's comment).
pub struct FleetTickets {
    keys: ArcSwap<Keys>,
    /// This process's random tag, in the label of what its own keys seal.
    tag: u64,
    random: SystemRandom,
}

impl std::fmt::Debug for FleetTickets {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FleetTickets")
            .field("epochs", &self.epochs())
            .finish_non_exhaustive()
    }
}

impl FleetTickets {
    pub fn new() -> FleetTickets {
        let random = SystemRandom::new();
        let mut tag = [0u8; 4];
        random.fill(&mut tag).expect("the system's random source");
        let tickets = FleetTickets {
            keys: ArcSwap::from_pointee(Keys::default()),
            tag: u64::from(u32::from_be_bytes(tag) & 0x7fff_ffff),
            random,
        };
        tickets.rotate_local(SystemTime::now());
        tickets
    }

    /// The epochs whose fleet keys are held.
    pub fn epochs(&self) -> Vec<Epoch> {
        self.keys.load().fleet.keys().copied().collect()
    }

    /// Fetches (or creates) the keys of the epochs around `now` from Redis, forgets older
    /// ones and rotates this process's own key. Each epoch is fetched on its own: one that
    /// fails keeps the key held for it (if any) and does not stop the others.
    pub async fn refresh(
        &self,
        redis: &fred::clients::Client,
        now: SystemTime,
    ) -> Result<(), RefreshError> {
        let current = epoch(now);
        let held = self.keys.load_full();
        let mut fleet = BTreeMap::new();
        let mut first_error = None;
        for e in current.saturating_sub(1)..=current + 1 {
            let was = held.fleet.get(&e);
            match self.fetch(redis, e, was.map(|h| h.raw)).await {
                Ok(raw) => {
                    let same = was.filter(|h| h.raw == raw).cloned();
                    let key = same.unwrap_or_else(|| {
                        Arc::new(Held {
                            raw,
                            key: key(&raw),
                        })
                    });
                    fleet.insert(e, key);
                }
                Err(err) => {
                    if let Some(was) = was {
                        fleet.insert(e, was.clone());
                    }
                    first_error.get_or_insert(err);
                }
            }
        }
        self.keys.store(Arc::new(Keys {
            fleet,
            local: held.local.clone(),
        }));
        self.rotate_local(now);
        first_error.map_or(Ok(()), Err)
    }

    /// Epoch `e`'s key as Redis holds it, offering `held` (or new random bytes) first.
    async fn fetch(
        &self,
        redis: &fred::clients::Client,
        e: Epoch,
        held: Option<[u8; KEY_LEN]>,
    ) -> Result<[u8; KEY_LEN], RefreshError> {
        let name = haberci_seam::streams::ticket_key(e);
        let offer = match held {
            Some(raw) => raw,
            None => {
                let mut fresh = [0u8; KEY_LEN];
                self.random
                    .fill(&mut fresh)
                    .map_err(|_| RefreshError::Random)?;
                fresh
            }
        };
        // "OK" when the offer was taken, nil when a key was there first.
        let _: Option<String> = redis
            .set(
                &name,
                offer.as_slice(),
                Some(Expiration::EX(KEY_EXPIRY.as_secs() as i64)),
                Some(SetOptions::NX),
                false,
            )
            .await?;
        let stored: Option<Vec<u8>> = redis.get(&name).await?;
        stored
            .and_then(|bytes| <[u8; KEY_LEN]>::try_from(bytes.as_slice()).ok())
            .ok_or(RefreshError::NotAKey { key: name })
    }

    /// This process's own keys: the current epoch's (made if missing) and the previous one's.
    fn rotate_local(&self, now: SystemTime) {
        let current = epoch(now);
        let held = self.keys.load_full();
        if held.local.contains_key(&current) {
            return;
        }
        let mut raw = [0u8; KEY_LEN];
        if self.random.fill(&mut raw).is_err() {
            return;
        }
        let mut local: BTreeMap<Epoch, Arc<LessSafeKey>> = held
            .local
            .iter()
            .filter(|(e, _)| **e + 1 >= current)
            .map(|(e, k)| (*e, k.clone()))
            .collect();
        local.insert(current, Arc::new(key(&raw)));
        self.keys.store(Arc::new(Keys {
            fleet: held.fleet.clone(),
            local,
        }));
    }

    /// A ticket holding `plain`, sealed as at `now` (rustls calls it through
    /// [`rustls::server::ProducesTickets`] with the clock's time).
    pub fn seal(&self, plain: &[u8], now: SystemTime) -> Option<Vec<u8>> {
        let keys = self.keys.load();
        let current = epoch(now);
        let (label, key) = match keys.fleet.get(&current) {
            Some(held) => (current, &held.key),
            // Before the fleet's key is known, or while Redis is away: this process's newest.
            None => {
                let (e, key) = keys.local.last_key_value()?;
                (LOCAL | self.tag << 32 | (e & 0xffff_ffff), key.as_ref())
            }
        };
        let mut nonce = [0u8; NONCE_LEN];
        self.random.fill(&mut nonce).ok()?;
        let mut body = plain.to_vec();
        key.seal_in_place_append_tag(
            Nonce::assume_unique_for_key(nonce),
            Aad::from(label.to_be_bytes()),
            &mut body,
        )
        .ok()?;
        let mut sealed = Vec::with_capacity(LABEL_LEN + NONCE_LEN + body.len());
        sealed.extend_from_slice(&label.to_be_bytes());
        sealed.extend_from_slice(&nonce);
        sealed.extend_from_slice(&body);
        metrics::ticket(Ticket::Sealed);
        Some(sealed)
    }

    /// What `sealed` holds, if it opens as at `now`.
    pub fn open(&self, sealed: &[u8], now: SystemTime) -> Option<Vec<u8>> {
        if sealed.len() < LABEL_LEN + NONCE_LEN + TAG_LEN {
            metrics::ticket(Ticket::Refused);
            return None;
        }
        let (label, rest) = sealed.split_at(LABEL_LEN);
        let (nonce, body) = rest.split_at(NONCE_LEN);
        let label = u64::from_be_bytes(label.try_into().ok()?);
        let keys = self.keys.load();
        let current = epoch(now);
        let local = label & LOCAL != 0;
        let e = if local { label & 0xffff_ffff } else { label };
        // Only the previous, current and next epoch open, whatever keys are still held.
        let in_window = e + 1 >= current && e <= current + 1;
        let key = match (local, in_window) {
            (_, false) => None,
            (true, true) if (label >> 32) & 0x7fff_ffff == self.tag => {
                keys.local.get(&e).map(|k| k.as_ref())
            }
            (true, true) => None,
            (false, true) => keys.fleet.get(&e).map(|h| &h.key),
        };
        let Some(key) = key else {
            metrics::ticket(Ticket::UnknownKey);
            return None;
        };
        let mut body = body.to_vec();
        let opened = key
            .open_in_place(
                Nonce::try_assume_unique_for_key(nonce).ok()?,
                Aad::from(label.to_be_bytes()),
                &mut body,
            )
            .map(|plain| plain.len());
        match opened {
            Ok(len) => {
                body.truncate(len);
                metrics::ticket(Ticket::Opened);
                Some(body)
            }
            Err(_) => {
                metrics::ticket(Ticket::Refused);
                None
            }
        }
    }
}

impl Default for FleetTickets {
    fn default() -> Self {
        FleetTickets::new()
    }
}

impl rustls::server::ProducesTickets for FleetTickets {
    fn enabled(&self) -> bool {
        true
    }

    fn lifetime(&self) -> u32 {
        ROTATE.as_secs() as u32
    }

    fn encrypt(&self, plain: &[u8]) -> Option<Vec<u8>> {
        self.seal(plain, SystemTime::now())
    }

    fn decrypt(&self, cipher: &[u8]) -> Option<Vec<u8>> {
        self.open(cipher, SystemTime::now())
    }
}

/// One refresh, given [`FIRST_FETCH`] at most; returns whether the fleet's keys are held. A
/// failure is logged and left to [`keep`].
pub async fn first_fetch(tickets: &FleetTickets, redis: &fred::clients::Client) -> bool {
    match tokio::time::timeout(FIRST_FETCH, tickets.refresh(redis, SystemTime::now())).await {
        Ok(Ok(())) => {
            tracing::info!("fleet TLS ticket keys ready");
            true
        }
        Ok(Err(err)) => {
            tracing::warn!(%err, "no fleet TLS ticket keys yet; tickets stay local");
            false
        }
        Err(_) => {
            tracing::warn!("no fleet TLS ticket keys within {FIRST_FETCH:?}; tickets stay local");
            false
        }
    }
}

/// Keeps `tickets`' keys fresh from Redis until shutdown; `ready` says whether the first
/// fetch got them.
pub async fn keep(
    tickets: Arc<FleetTickets>,
    redis: fred::clients::Client,
    mut ready: bool,
    shutdown: Shutdown,
) {
    let mut failing = false;
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tokio::time::sleep(if failing || !ready { RETRY } else { REFRESH }) => {}
        }
        match tickets.refresh(&redis, SystemTime::now()).await {
            Ok(()) => {
                if !ready {
                    tracing::info!("fleet TLS ticket keys ready");
                } else if failing {
                    tracing::info!("fleet TLS ticket keys fetched from Redis again");
                }
                ready = true;
                failing = false;
            }
            Err(err) => {
                if !failing {
                    tracing::warn!(%err, "cannot fetch the fleet's TLS ticket keys; retrying");
                }
                failing = true;
            }
        }
    }
}

fn epoch(now: SystemTime) -> Epoch {
    now.duration_since(UNIX_EPOCH)
        .map_or(0, |since| since.as_secs() / ROTATE.as_secs())
}

fn key(bytes: &[u8; KEY_LEN]) -> LessSafeKey {
    LessSafeKey::new(UnboundKey::new(&AES_256_GCM, bytes).expect("a 32-byte AES-256 key"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at_epoch(e: Epoch) -> SystemTime {
        UNIX_EPOCH + ROTATE * (e as u32) + Duration::from_secs(7)
    }

    /// Gateways' tickets, as if each had fetched the keys of `epochs` from Redis.
    fn fleet_of(epochs: &[Epoch]) -> FleetTickets {
        let tickets = FleetTickets::new();
        let fleet = epochs
            .iter()
            .map(|&e| {
                let raw = [e as u8; KEY_LEN];
                (
                    e,
                    Arc::new(Held {
                        raw,
                        key: key(&raw),
                    }),
                )
            })
            .collect();
        let local = tickets.keys.load().local.clone();
        tickets.keys.store(Arc::new(Keys { fleet, local }));
        tickets
    }

    #[test]
    fn a_ticket_sealed_by_one_gateway_opens_at_another() {
        let (a, b) = (fleet_of(&[10, 11, 12]), fleet_of(&[10, 11, 12]));
        let sealed = a.seal(b"session state", at_epoch(11)).expect("sealed");
        assert_eq!(&sealed[..LABEL_LEN], &11u64.to_be_bytes());
        assert_eq!(
            b.open(&sealed, at_epoch(11)).as_deref(),
            Some(&b"session state"[..])
        );
    }

    #[test]
    fn a_ticket_opens_for_one_epoch_after_its_own_and_not_later() {
        let a = fleet_of(&[10, 11, 12]);
        let sealed = a.seal(b"state", at_epoch(11)).expect("sealed");
        let later = fleet_of(&[11, 12, 13]);
        assert!(later.open(&sealed, at_epoch(12)).is_some());
        // Two epochs on, even a gateway that still holds the key refuses it.
        assert_eq!(a.open(&sealed, at_epoch(13)), None);
        let much_later = fleet_of(&[12, 13, 14]);
        assert_eq!(much_later.open(&sealed, at_epoch(13)), None);
        // A clock an epoch behind still opens it.
        assert!(a.open(&sealed, at_epoch(10)).is_some());
    }

    #[test]
    fn without_the_fleets_key_a_ticket_is_sealed_for_this_process_alone() {
        let (a, b) = (FleetTickets::new(), FleetTickets::new());
        let now = SystemTime::now();
        let sealed = a.seal(b"state", now).expect("sealed");
        assert_ne!(
            u64::from_be_bytes(sealed[..LABEL_LEN].try_into().expect("a label")) & LOCAL,
            0
        );
        assert_eq!(a.open(&sealed, now).as_deref(), Some(&b"state"[..]));
        assert_eq!(b.open(&sealed, now), None);
        // This process's own key rotates like the fleet's: two epochs on, it no longer opens.
        assert_eq!(a.open(&sealed, now + 2 * ROTATE), None);
    }

    #[test]
    fn a_damaged_truncated_or_relabelled_ticket_is_refused() {
        let (a, b) = (fleet_of(&[10, 11, 12]), fleet_of(&[10, 11, 12]));
        let now = at_epoch(11);
        let sealed = a.seal(b"state", now).expect("sealed");
        for cut in 0..sealed.len() {
            assert_eq!(b.open(&sealed[..cut], now), None, "cut at {cut}");
        }
        for i in 0..sealed.len() {
            let mut flipped = sealed.clone();
            flipped[i] ^= 0x01;
            assert_eq!(b.open(&flipped, now), None, "bit flipped in byte {i}");
        }
        // The label is authenticated: the same body under another held epoch fails.
        let mut relabelled = sealed.clone();
        relabelled[..LABEL_LEN].copy_from_slice(&12u64.to_be_bytes());
        assert_eq!(b.open(&relabelled, now), None);
        assert_eq!(b.open(&[], now), None);
    }
}
