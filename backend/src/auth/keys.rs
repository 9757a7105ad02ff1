//! The access-token key set, reloadable without a restart.
//!
//! [`KeyStore`] holds the current [`KeySet`] (and its [`Verifier`]) behind an `ArcSwap`: every
//! request reads one consistent snapshot, and a reload swaps in a whole new set at once. A
//! store loaded from a directory reloads it on SIGHUP and when the directory's `*.pem` files
//! change (polled every [`DEFAULT_KEY_POLL_INTERVAL`], see [`watch`]).
//!
//! Invariant: a reload that fails (unreadable directory, a bad key file, no key left, the
//! pinned `HABERCI_JWT_SIGNING_KID` gone) keeps the current set, so a half-written key file can
//! never take signing down. A failure is logged once per change of the directory.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use arc_swap::ArcSwap;
use haberci_kit::shutdown::Shutdown;
use haberci_token::keys::KEY_FILE_EXTENSION;
use haberci_token::{KeyError, KeySet, Verifier};

/// How often the key directory is checked for changes.
pub const DEFAULT_KEY_POLL_INTERVAL: Duration = Duration::from_secs(5);

/// One consistent key set: what signs and what verifies.
pub struct Keys {
    pub set: KeySet,
    pub verifier: Verifier,
}

impl Keys {
    fn new(set: KeySet) -> Keys {
        let verifier = set.verifier();
        Keys { set, verifier }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ReloadError {
    #[error("the keys were not loaded from a directory; nothing to reload")]
    NotReloadable,
    #[error(transparent)]
    Keys(#[from] KeyError),
}

/// Where a reloadable store reads its keys, and what the directory looked like when last read.
struct Source {
    dir: PathBuf,
    signing_kid: Option<String>,
    stamp: Mutex<Stamp>,
}

/// Names, inodes, change times, modification times and lengths of the directory's key files,
/// sorted; `None` when the directory cannot be read. Any difference triggers a reload.
type Stamp = Option<Vec<(std::ffi::OsString, u64, i64, Option<SystemTime>, u64)>>;

fn stamp(dir: &Path) -> Stamp {
    use std::os::unix::fs::MetadataExt;
    let mut files: Vec<_> = std::fs::read_dir(dir)
        .ok()?
        .flatten()
        .filter(|e| e.path().extension().and_then(|x| x.to_str()) == Some(KEY_FILE_EXTENSION))
        .filter_map(|e| {
            let m = e.metadata().ok()?;
            Some((
                e.file_name(),
                m.ino(),
                m.ctime() * 1_000_000_000 + m.ctime_nsec(),
                m.modified().ok(),
                m.len(),
            ))
        })
        .collect();
    files.sort();
    Some(files)
}

/// The current keys, swappable at run time.
pub struct KeyStore {
    current: ArcSwap<Keys>,
    source: Option<Source>,
}

impl KeyStore {
    /// Keys that never change (tests, benchmarks).
    pub fn fixed(set: KeySet) -> KeyStore {
        KeyStore {
            current: ArcSwap::from_pointee(Keys::new(set)),
            source: None,
        }
    }

    /// Loads `dir` (see [`KeySet::load_dir`]); [`KeyStore::reload`] reads it again.
    pub fn load_dir(dir: &Path, signing_kid: Option<&str>) -> Result<KeyStore, KeyError> {
        let stamp = stamp(dir);
        let set = KeySet::load_dir(dir, signing_kid)?;
        Ok(KeyStore {
            current: ArcSwap::from_pointee(Keys::new(set)),
            source: Some(Source {
                dir: dir.to_owned(),
                signing_kid: signing_kid.map(str::to_owned),
                stamp: Mutex::new(stamp),
            }),
        })
    }

    /// A snapshot of the current keys; hold it for one request, not longer.
    pub fn current(&self) -> Arc<Keys> {
        self.current.load_full()
    }

    /// Reads the key directory again and swaps the new set in; on failure keeps the current
    /// one. Returns the kids now published.
    pub fn reload(&self) -> Result<Vec<String>, ReloadError> {
        let source = self.source.as_ref().ok_or(ReloadError::NotReloadable)?;
        let stamp = stamp(&source.dir);
        let set = KeySet::load_dir(&source.dir, source.signing_kid.as_deref());
        if let Ok(mut last) = source.stamp.lock() {
            *last = stamp;
        }
        let set = set?;
        let kids = set.kids().into_iter().map(str::to_owned).collect();
        self.current.store(Arc::new(Keys::new(set)));
        Ok(kids)
    }

    /// [`KeyStore::reload`] when the directory changed since the last load, logging the
    /// outcome (once per change). Returns whether a new set was swapped in.
    pub fn reload_if_changed(&self) -> bool {
        let Some(source) = &self.source else {
            return false;
        };
        let now = stamp(&source.dir);
        match source.stamp.lock() {
            Ok(last) if *last != now => {}
            _ => return false,
        }
        self.reload_logged()
    }

    /// [`KeyStore::reload`], logging the outcome. Returns whether a new set was swapped in.
    pub fn reload_logged(&self) -> bool {
        match self.reload() {
            Ok(kids) => {
                let current = self.current();
                tracing::info!(?kids, signing = %current.set.signing_kid(), "access-token keys reloaded");
                true
            }
            Err(ReloadError::NotReloadable) => false,
            Err(err) => {
                let current = self.current();
                tracing::error!(
                    %err,
                    kept = ?current.set.kids(),
                    "access-token key reload failed; keeping the current keys"
                );
                false
            }
        }
    }
}

/// Reloads `store` when its directory changes (checked every `interval`) or on SIGHUP, until
/// shutdown. File reads run on the blocking pool.
pub async fn watch(store: Arc<KeyStore>, interval: Duration, shutdown: Shutdown) {
    let mut hangup = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup())
        .map_err(
            |err| tracing::error!(%err, "cannot listen for SIGHUP; key reload by polling only"),
        )
        .ok();
    let mut tick = tokio::time::interval(interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        let sighup = async {
            match hangup.as_mut() {
                Some(signal) => signal.recv().await,
                None => std::future::pending().await,
            }
        };
        let forced = tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tick.tick() => false,
            _ = sighup => {
                tracing::info!("SIGHUP: reloading access-token keys");
                true
            }
        };
        let store = store.clone();
        let reload = tokio::task::spawn_blocking(move || {
            if forced {
                store.reload_logged();
            } else {
                store.reload_if_changed();
            }
        });
        if let Err(err) = reload.await {
            tracing::error!(%err, "access-token key reload task failed");
        }
    }
}

/// The id of a key made at `now`: its UTC time, `20261125T100000Z`, so a newer key sorts last
/// (and, unpinned, signs).
pub fn kid_at(now: time::OffsetDateTime) -> String {
    let now = now.to_offset(time::UtcOffset::UTC);
    format!(
        "{:04}{:02}{:02}T{:02}{:02}{:02}Z",
        now.year(),
        u8::from(now.month()),
        now.day(),
        now.hour(),
        now.minute(),
        now.second()
    )
}

/// `keys ensure`: a new key in `dir` unless it holds one already (idempotent). The file
/// written, or `None` when there was a key.
pub fn ensure_key(dir: &Path, now: time::OffsetDateTime) -> Result<Option<PathBuf>, KeyError> {
    if haberci_token::keys::has_keys(dir) {
        return Ok(None);
    }
    add_key(dir, now).map(Some)
}

/// `keys new`: a new key in `dir`, named by [`kid_at`]`(now)` (rotation: it is published at
/// once, and signs once it sorts last or is named by `HABERCI_JWT_SIGNING_KID`).
pub fn add_key(dir: &Path, now: time::OffsetDateTime) -> Result<PathBuf, KeyError> {
    haberci_token::keys::write_new_key(dir, &kid_at(now))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn key_ids_are_utc_times_that_sort_by_age() {
        let at = |unix: i64| {
            time::OffsetDateTime::from_unix_timestamp(unix)
                .unwrap_or(time::OffsetDateTime::UNIX_EPOCH)
        };
        assert_eq!(kid_at(at(1_795_600_800)), "20261125T100000Z");
        let east = at(1_795_600_800).to_offset(time::macros::offset!(+3));
        assert_eq!(kid_at(east), "20261125T100000Z");
        assert!(kid_at(at(1_795_600_800)) < kid_at(at(1_795_600_801)));
    }
}
