//! TLS 1.3 session tickets that every gateway of the fleet opens, so a client that reconnects
//! to another gateway, or to a gateway restarted after a crash, resumes its TLS session
//! instead of making a full handshake (no certificate signed, sent or checked).
//!
//! The key of each rotation period (an *epoch* of [`ROTATE`]) lives in Redis under
//! `haberci_seam::streams::ticket_key`: the first gateway to need it writes 32 random bytes
//! with `SET NX` and an expiry of three periods, and every gateway reads back whichever won.
//! A gateway holds the keys of the previous, current and next epoch ([`keep`] refreshes them),
//! seals with the current one and opens with any it holds, so a ticket resumes for one to two
//! periods wherever it is presented, and a clock a little ahead or behind still agrees.
//!
//! Until the fleet's key is known (Redis away at start) tickets are sealed with a key of this
//! process alone: they resume here only, as before.
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
/// How often the held keys are refreshed from Redis (and sooner after a failure).
const REFRESH: Duration = Duration::from_secs(60);
const RETRY: Duration = Duration::from_secs(5);
const KEY_LEN: usize = 32;
const EPOCH_LEN: usize = 8;
const TAG_LEN: usize = 16;
/// The epoch a ticket sealed with this process's own key carries.
const LOCAL: u64 = 0;

/// Seals and opens session tickets with the fleet's keys (see the module's comment).
pub struct FleetTickets {
    /// Epoch → key: the previous, current and next epoch's, once fetched.
    fleet: ArcSwap<BTreeMap<u64, Arc<LessSafeKey>>>,
    local: LessSafeKey,
    random: SystemRandom,
}

impl std::fmt::Debug for FleetTickets {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FleetTickets")
            .field("epochs", &self.fleet.load().keys().collect::<Vec<_>>())
            .finish_non_exhaustive()
    }
}

impl FleetTickets {
    pub fn new() -> FleetTickets {
        let random = SystemRandom::new();
        let mut local = [0u8; KEY_LEN];
        random.fill(&mut local).expect("the system's random source");
        FleetTickets {
            fleet: ArcSwap::from_pointee(BTreeMap::new()),
            local: key(&local),
            random,
        }
    }

    /// The epochs whose keys are held.
    pub fn epochs(&self) -> Vec<u64> {
        self.fleet.load().keys().copied().collect()
    }

    /// Fetches (or creates) the keys of the epochs around `now` from Redis and forgets older
    /// ones.
    pub async fn refresh(
        &self,
        redis: &fred::clients::Client,
        now: SystemTime,
    ) -> Result<(), fred::error::Error> {
        let current = epoch(now);
        let held = self.fleet.load_full();
        let mut keys = BTreeMap::new();
        for e in current.saturating_sub(1)..=current + 1 {
            if let Some(key) = held.get(&e) {
                keys.insert(e, key.clone());
                continue;
            }
            let name = haberci_seam::streams::ticket_key(e);
            let mut fresh = [0u8; KEY_LEN];
            self.random
                .fill(&mut fresh)
                .map_err(|_| fred::error::Error::new(fred::error::ErrorKind::Unknown, "random"))?;
            // "OK" when this gateway's key won, nil when another's was there first.
            let _: Option<String> = redis
                .set(
                    &name,
                    fresh.as_slice(),
                    Some(Expiration::EX(3 * ROTATE.as_secs() as i64)),
                    Some(SetOptions::NX),
                    false,
                )
                .await?;
            let stored: Option<Vec<u8>> = redis.get(&name).await?;
            match stored {
                Some(bytes) if bytes.len() == KEY_LEN => {
                    keys.insert(e, Arc::new(key(&bytes)));
                }
                // Expired between the two commands, or not ours: the next refresh retries.
                _ => {
                    return Err(fred::error::Error::new(
                        fred::error::ErrorKind::Unknown,
                        format!("{name} holds no {KEY_LEN}-byte key"),
                    ));
                }
            }
        }
        self.fleet.store(Arc::new(keys));
        Ok(())
    }

    fn seal(&self, plain: &[u8], now: SystemTime) -> Option<Vec<u8>> {
        let fleet = self.fleet.load();
        let current = epoch(now);
        let (epoch, key) = match fleet.get(&current) {
            Some(key) => (current, key.as_ref()),
            None => (LOCAL, &self.local),
        };
        let mut nonce = [0u8; NONCE_LEN];
        self.random.fill(&mut nonce).ok()?;
        let mut sealed = Vec::with_capacity(EPOCH_LEN + NONCE_LEN + plain.len() + TAG_LEN);
        sealed.extend_from_slice(&epoch.to_be_bytes());
        sealed.extend_from_slice(&nonce);
        sealed.extend_from_slice(plain);
        let mut body = sealed.split_off(EPOCH_LEN + NONCE_LEN);
        key.seal_in_place_append_tag(
            Nonce::assume_unique_for_key(nonce),
            Aad::from(epoch.to_be_bytes()),
            &mut body,
        )
        .ok()?;
        sealed.extend_from_slice(&body);
        metrics::ticket(Ticket::Sealed);
        Some(sealed)
    }

    fn open(&self, sealed: &[u8]) -> Option<Vec<u8>> {
        if sealed.len() < EPOCH_LEN + NONCE_LEN + TAG_LEN {
            metrics::ticket(Ticket::Refused);
            return None;
        }
        let (epoch, rest) = sealed.split_at(EPOCH_LEN);
        let (nonce, body) = rest.split_at(NONCE_LEN);
        let epoch = u64::from_be_bytes(epoch.try_into().ok()?);
        let fleet = self.fleet.load();
        let key = match epoch {
            LOCAL => &self.local,
            e => match fleet.get(&e) {
                Some(key) => key.as_ref(),
                None => {
                    metrics::ticket(Ticket::UnknownKey);
                    return None;
                }
            },
        };
        let mut body = body.to_vec();
        let opened = key
            .open_in_place(
                Nonce::try_assume_unique_for_key(nonce).ok()?,
                Aad::from(epoch.to_be_bytes()),
                &mut body,
            )
            .ok();
        match opened {
            Some(plain) => {
                let len = plain.len();
                body.truncate(len);
                metrics::ticket(Ticket::Opened);
                Some(body)
            }
            None => {
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
        self.open(cipher)
    }
}

/// How long a gateway's start waits for the fleet's keys.
pub const FIRST_FETCH: Duration = Duration::from_secs(1);

/// One refresh, given [`FIRST_FETCH`] at most; a failure is logged and left to [`keep`].
pub async fn first_fetch(tickets: &FleetTickets, redis: &fred::clients::Client) {
    match tokio::time::timeout(FIRST_FETCH, tickets.refresh(redis, SystemTime::now())).await {
        Ok(Ok(())) => {}
        Ok(Err(err)) => tracing::warn!(%err, "no fleet TLS ticket keys yet; tickets stay local"),
        Err(_) => {
            tracing::warn!("no fleet TLS ticket keys within {FIRST_FETCH:?}; tickets stay local")
        }
    }
}

/// Keeps `tickets`' keys fresh from Redis until shutdown.
pub async fn keep(tickets: Arc<FleetTickets>, redis: fred::clients::Client, shutdown: Shutdown) {
    let mut failing = false;
    loop {
        let wait = match tickets.refresh(&redis, SystemTime::now()).await {
            Ok(()) => {
                if failing {
                    tracing::info!("TLS ticket keys fetched from Redis again");
                }
                failing = false;
                REFRESH
            }
            Err(err) => {
                if !failing {
                    tracing::warn!(%err, "cannot fetch the fleet's TLS ticket keys; retrying");
                }
                failing = true;
                RETRY
            }
        };
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tokio::time::sleep(wait) => {}
        }
    }
}

fn epoch(now: SystemTime) -> u64 {
    // Epoch 0 is [`LOCAL`]'s: no clock reads a time in the first hour of 1970.
    now.duration_since(UNIX_EPOCH)
        .map_or(1, |since| (since.as_secs() / ROTATE.as_secs()).max(1))
}

fn key(bytes: &[u8]) -> LessSafeKey {
    LessSafeKey::new(UnboundKey::new(&AES_256_GCM, bytes).expect("a 32-byte AES-256 key"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at_epoch(e: u64) -> SystemTime {
        UNIX_EPOCH + ROTATE * (e as u32) + Duration::from_secs(7)
    }

    /// Two gateways' tickets, as if both had fetched the keys of `epochs` from Redis.
    fn fleet_of_two(epochs: &[u64]) -> (FleetTickets, FleetTickets) {
        let (a, b) = (FleetTickets::new(), FleetTickets::new());
        let mut keys = BTreeMap::new();
        for &e in epochs {
            let bytes = [e as u8; KEY_LEN];
            keys.insert(e, Arc::new(key(&bytes)));
        }
        let shared: BTreeMap<u64, Arc<LessSafeKey>> = keys;
        a.fleet.store(Arc::new(shared.clone()));
        b.fleet.store(Arc::new(shared));
        (a, b)
    }

    #[test]
    fn a_ticket_sealed_by_one_gateway_opens_at_another() {
        let (a, b) = fleet_of_two(&[10, 11, 12]);
        let sealed = a.seal(b"session state", at_epoch(11)).expect("sealed");
        assert_eq!(&sealed[..EPOCH_LEN], &11u64.to_be_bytes());
        assert_eq!(b.open(&sealed).as_deref(), Some(&b"session state"[..]));
    }

    #[test]
    fn a_ticket_opens_while_its_epochs_key_is_held_and_not_after() {
        let (a, b) = fleet_of_two(&[10, 11, 12]);
        let sealed = a.seal(b"state", at_epoch(11)).expect("sealed");
        // One period on: keys 11, 12, 13 are held.
        let (_, later) = fleet_of_two(&[11, 12, 13]);
        assert!(later.open(&sealed).is_some());
        // Two periods on: 11 is forgotten.
        let (_, much_later) = fleet_of_two(&[12, 13, 14]);
        assert_eq!(much_later.open(&sealed), None);
        assert!(b.open(&sealed).is_some());
    }

    #[test]
    fn without_the_fleets_key_a_ticket_is_sealed_for_this_process_alone() {
        let (a, b) = (FleetTickets::new(), FleetTickets::new());
        let sealed = a.seal(b"state", at_epoch(5)).expect("sealed");
        assert_eq!(&sealed[..EPOCH_LEN], &LOCAL.to_be_bytes());
        assert_eq!(a.open(&sealed).as_deref(), Some(&b"state"[..]));
        assert_eq!(b.open(&sealed), None);
    }

    #[test]
    fn a_damaged_truncated_or_relabelled_ticket_is_refused() {
        let (a, b) = fleet_of_two(&[10, 11, 12]);
        let sealed = a.seal(b"state", at_epoch(11)).expect("sealed");
        for cut in 0..sealed.len() {
            assert_eq!(b.open(&sealed[..cut]), None, "cut at {cut}");
        }
        for i in 0..sealed.len() {
            let mut flipped = sealed.clone();
            flipped[i] ^= 0x01;
            assert_eq!(b.open(&flipped), None, "bit flipped in byte {i}");
        }
        // The epoch is authenticated: the same body under another held epoch fails.
        let mut relabelled = sealed.clone();
        relabelled[..EPOCH_LEN].copy_from_slice(&12u64.to_be_bytes());
        assert_eq!(b.open(&relabelled), None);
        assert_eq!(b.open(&[]), None);
    }

    #[test]
    fn no_clock_reads_the_local_epoch() {
        assert_eq!(epoch(UNIX_EPOCH), 1);
        assert!(epoch(SystemTime::now()) > 1);
    }
}
