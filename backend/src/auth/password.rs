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
use tokio::sync::{OnceCell, Semaphore};

use crate::accounts::Password;

pub const ARGON2_MEMORY_KIB: u32 = 19_456;
pub const ARGON2_ITERATIONS: u32 = 2;
pub const ARGON2_PARALLELISM: u32 = 1;
/// How long a request waits for a hashing slot before it is answered 503.
pub const DEFAULT_HASH_QUEUE_TIMEOUT: Duration = Duration::from_secs(10);

#[derive(Debug, thiserror::Error)]
pub enum HashError {
    /// Every hashing slot stayed busy for [`DEFAULT_HASH_QUEUE_TIMEOUT`].
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
    /// A hash of a random password, verified against when the user does not exist so that an
    /// unknown user costs the same time as a wrong password.
    dummy: Arc<OnceCell<String>>,
}

impl PasswordHasher {
    pub fn new(concurrency: usize) -> PasswordHasher {
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
            queue_timeout: DEFAULT_HASH_QUEUE_TIMEOUT,
            dummy: Arc::new(OnceCell::new()),
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
            None => (self.dummy_hash().await?, false),
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

    async fn dummy_hash(&self) -> Result<String, HashError> {
        self.dummy
            .get_or_try_init(|| async {
                let mut random = [0u8; 16];
                SystemRandom::new()
                    .fill(&mut random)
                    .map_err(|_| HashError::Failed("no randomness".into()))?;
                let password = Password::parse(&base64_16(&random))
                    .map_err(|e| HashError::Failed(e.to_string()))?;
                self.hash(&password).await
            })
            .await
            .cloned()
    }
}

fn base64_16(bytes: &[u8; 16]) -> String {
    use base64::Engine;
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
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
                .verify("correct horse battery!", Some(hash))
                .await
                .unwrap()
        );
        assert!(!hasher.verify("correct horse battery", None).await.unwrap());
        assert!(
            !hasher
                .verify("x", Some("not a phc string".into()))
                .await
                .unwrap()
        );
    }
}
