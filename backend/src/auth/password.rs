//! Password hashing with argon2id on a bounded blocking pool.
//!
//! Parameters (OWASP Password Storage Cheat Sheet, argon2id "m=19456 (19 MiB), t=2, p=1"):
//! [`ARGON2_MEMORY_KIB`], [`ARGON2_ITERATIONS`], [`ARGON2_PARALLELISM`]. They are written into
//! each PHC string, so raising them later leaves old hashes verifiable.
//!
//! Invariant: at most `concurrency` hashes run at once, each on tokio's blocking pool, never on
//! an async worker thread. A login flood therefore queues here (and times out with "busy")
//! instead of stalling every other request; memory is bounded by `concurrency × 19 MiB`.

use std::sync::Arc;
use std::time::Duration;

use argon2::password_hash::{PasswordHash, PasswordHasher as _, PasswordVerifier, SaltString};
use argon2::{Algorithm, Argon2, Params, Version};
use ring::rand::{SecureRandom, SystemRandom};
use tokio::sync::Semaphore;

use crate::accounts::Password;

pub const ARGON2_MEMORY_KIB: u32 = 19_456;
pub const ARGON2_ITERATIONS: u32 = 2;
pub const ARGON2_PARALLELISM: u32 = 1;
/// How long a request waits for a hashing slot before it is answered 503
/// (`HABERCI_PASSWORD_HASH_QUEUE_TIMEOUT_MS`).
///
/// Invariant: well below the gateway's backend timeout (`HABERCI_BACKEND_TIMEOUT_MS`, 10 s), so
/// a saturated pool answers `503` with `Retry-After` before the gateway gives up with `504`.
pub const DEFAULT_HASH_QUEUE_TIMEOUT: Duration = Duration::from_secs(5);

#[derive(Debug, thiserror::Error)]
pub enum HashError {
    /// Every hashing slot stayed busy for the queue timeout.
    #[error("password hashing is saturated")]
    Busy,
    #[error("password hashing failed: {0}")]
    Failed(String),
}

#[derive(Clone)]
pub struct PasswordHasher {
    argon: Argon2<'static>,
    permits: Arc<Semaphore>,
    queue_timeout: Duration,
    /// A PHC string with the stated parameters, a random salt and a random digest, verified
    /// against when the user does not exist so that an unknown user costs the same time as a
    /// wrong password. Made at construction (start-up), so the first unknown-user login costs
    /// no extra hash either.
    dummy: Arc<str>,
}

impl PasswordHasher {
    /// A hasher with [`DEFAULT_HASH_QUEUE_TIMEOUT`].
    pub fn new(concurrency: usize) -> PasswordHasher {
        PasswordHasher::with_queue_timeout(concurrency, DEFAULT_HASH_QUEUE_TIMEOUT)
    }

    pub fn with_queue_timeout(concurrency: usize, queue_timeout: Duration) -> PasswordHasher {
        // Invariant: the constants above are within argon2's accepted ranges.
        let params = Params::new(
            ARGON2_MEMORY_KIB,
            ARGON2_ITERATIONS,
            ARGON2_PARALLELISM,
            None,
        )
        .unwrap_or_default();
        PasswordHasher {
            argon: Argon2::new(Algorithm::Argon2id, Version::V0x13, params),
            permits: Arc::new(Semaphore::new(concurrency.max(1))),
            queue_timeout,
            dummy: dummy_phc().into(),
        }
    }

    /// Runs `work` on the blocking pool once a slot is free.
    async fn run<T: Send + 'static>(
        &self,
        work: impl FnOnce(&Argon2<'static>) -> T + Send + 'static,
    ) -> Result<T, HashError> {
        let permit = tokio::time::timeout(self.queue_timeout, self.permits.clone().acquire_owned())
            .await
            .map_err(|_| HashError::Busy)?
            .map_err(|_| HashError::Busy)?;
        let argon = self.argon.clone();
        tokio::task::spawn_blocking(move || {
            let _permit = permit;
            work(&argon)
        })
        .await
        .map_err(|err| HashError::Failed(err.to_string()))
    }

    /// An argon2id PHC string for `password`, with a fresh 128-bit salt.
    pub async fn hash(&self, password: &Password) -> Result<String, HashError> {
        let mut salt = [0u8; 16];
        SystemRandom::new()
            .fill(&mut salt)
            .map_err(|_| HashError::Failed("no randomness".into()))?;
        let salt = SaltString::encode_b64(&salt).map_err(|e| HashError::Failed(e.to_string()))?;
        let password = password.expose().to_owned();
        self.run(move |argon| {
            argon
                .hash_password(password.as_bytes(), &salt)
                .map(|hash| hash.to_string())
                .map_err(|e| HashError::Failed(e.to_string()))
        })
        .await?
    }

    /// Whether `password` matches `stored`. With `stored: None` (no such user) it verifies
    /// against a dummy hash and answers `false`, spending the same time.
    ///
    /// The comparison of the computed and stored digests is constant-time (password-hash's
    /// `Output` compares with `subtle`).
    pub async fn verify(&self, password: &str, stored: Option<String>) -> Result<bool, HashError> {
        let (stored, real) = match stored {
            Some(stored) => (stored, true),
            None => (self.dummy.to_string(), false),
        };
        let password = password.to_owned();
        let matched = self
            .run(move |argon| {
                PasswordHash::new(&stored)
                    .map(|hash| argon.verify_password(password.as_bytes(), &hash).is_ok())
                    .unwrap_or(false)
            })
            .await?;
        Ok(matched && real)
    }
}

/// `$argon2id$v=19$m=19456,t=2,p=1$<salt>$<digest>` with a random 128-bit salt and a random
/// 256-bit digest: verifying against it costs one full argon2id computation with the stated
/// parameters, like a real hash, and no password matches it (no preimage of a random digest is
/// known; the chance of a match is 2^-256). Costs nothing to make, so it is made at start-up.
fn dummy_phc() -> String {
    use base64::Engine;
    let mut random = [0u8; 48];
    // Invariant: without randomness the constant bytes are just as unmatchable (nobody knows a
    // preimage of an all-zero digest either); the salt only varies the work, not the answer.
    let _ = SystemRandom::new().fill(&mut random);
    let (salt, digest) = random.split_at(16);
    let b64 = base64::engine::general_purpose::STANDARD_NO_PAD;
    format!(
        "$argon2id$v=19$m={ARGON2_MEMORY_KIB},t={ARGON2_ITERATIONS},p={ARGON2_PARALLELISM}${}${}",
        b64.encode(salt),
        b64.encode(digest)
    )
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    #[tokio::test]
    async fn hashes_are_argon2id_with_the_stated_parameters_and_verify() {
        let hasher = PasswordHasher::new(2);
        let password = Password::parse("correct horse battery").unwrap();
        let hash = hasher.hash(&password).await.unwrap();
        assert!(
            hash.starts_with("$argon2id$v=19$m=19456,t=2,p=1$"),
            "{hash}"
        );
        assert!(
            hasher
                .verify("correct horse battery", Some(hash.clone()))
                .await
                .unwrap()
        );
        assert!(
            !hasher
                .verify("correct horse battery!", Some(hash.clone()))
                .await
                .unwrap()
        );
        assert!(!hasher.verify("correct horse battery", None).await.unwrap());
        // The dummy is made at construction and has a real hash's shape and parameters.
        let dummy = PasswordHash::new(&hasher.dummy).unwrap();
        assert_eq!(dummy.algorithm.as_str(), "argon2id");
        assert_eq!(hasher.dummy.get(..31), hash.get(..31));
        assert_eq!(dummy.hash.map(|h| h.len()), Some(32));
        assert!(
            !hasher
                .verify("x", Some("not a phc string".into()))
                .await
                .unwrap()
        );
    }
}
