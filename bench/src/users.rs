//! The pool of bench users: registered once through the public API, cached in a file
//! (`.dev/bench/users.json`, mode 0600), and given fresh access tokens per run.
//!
//! Registration hashes a password with argon2id (≈ 38 ms of one core, docs/BENCHMARKS.md),
//! so 10,000 users take minutes; they are made once and kept. Each run then spends the cached
//! refresh tokens (`/v1/auth/refresh`, cheap, rotating) and writes the next ones back. Access
//! tokens still valid for the whole run are reused as they are. A refresh token that no longer
//! works (the database was reset, a run died between rotating and saving) falls back to a
//! login with the pool's password; a user that no longer exists is registered again.
//!
//! Nothing here bypasses the product's rules: every user is made and logged in by the same
//! API calls a client makes, under the same rate limits, spread over loopback source
//! addresses as many real clients would be (see `api`).

use std::io::Write;
use std::net::IpAddr;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{Context, anyhow, bail};
use http::StatusCode;
use serde::{Deserialize, Serialize};
use serde_json::json;
use tokio::sync::mpsc;

use crate::api::{Answer, ApiConnection, ApiTarget};

/// Calls in flight during setup. Registration is bound by the API's hashing pool (one slot
/// per CPU); refresh by Postgres round trips.
pub const DEFAULT_SETUP_CONCURRENCY: usize = 8;
/// How many loopback source addresses setup calls come from (127.0.0.2 …): the dev stack
/// allows 1,000 registrations and 1,000 refreshes per minute per address.
pub const DEFAULT_SOURCE_ADDRESSES: u8 = 32;
/// Attempts per call before giving up (429 and 503 are retried after `Retry-After`).
const MAX_ATTEMPTS: u32 = 30;
/// Results between two saves of the cache file.
const SAVE_EVERY: usize = 250;

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct BenchUser {
    pub id: uuid::Uuid,
    pub username: String,
    pub refresh_token: String,
    pub access_token: String,
    /// Unix seconds.
    pub access_expires_at: u64,
}

#[derive(Debug, Serialize, Deserialize)]
struct PoolFile {
    /// The API the users were registered through.
    api: String,
    /// Makes this pool's usernames unique (`b<prefix>_<n>`).
    prefix: String,
    /// One password for the whole pool (bench accounts on a dev stack only).
    password: String,
    users: Vec<BenchUser>,
}

/// What a setup did, for the report.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct SetupStats {
    pub registered: usize,
    pub refreshed: usize,
    pub logged_in: usize,
    pub reused_tokens: usize,
    pub seconds: f64,
}

pub struct Pool {
    path: PathBuf,
    file: PoolFile,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Op {
    Register,
    Refresh,
    Login,
}

struct Task {
    index: usize,
    op: Op,
    username: String,
    refresh_token: String,
}

impl Pool {
    /// Loads the cache, or starts an empty pool.
    pub fn open(path: &Path, api: &str) -> anyhow::Result<Pool> {
        let file = match std::fs::read(path) {
            Ok(bytes) => {
                let file: PoolFile = serde_json::from_slice(&bytes)
                    .with_context(|| format!("{} is not a bench user pool", path.display()))?;
                if file.api != api {
                    bail!(
                        "{} holds users of {}, not {api}: pass another --users-file",
                        path.display(),
                        file.api
                    );
                }
                file
            }
            Err(err) if err.kind() == std::io::ErrorKind::NotFound => PoolFile {
                api: api.into(),
                prefix: uuid::Uuid::new_v4().simple().to_string()[..8].into(),
                password: format!("bench-{}", uuid::Uuid::new_v4().simple()),
                users: Vec::new(),
            },
            Err(err) => return Err(err).with_context(|| format!("reading {}", path.display())),
        };
        Ok(Pool {
            path: path.into(),
            file,
        })
    }

    pub fn users(&self) -> &[BenchUser] {
        &self.file.users
    }

    /// Makes sure the first `n` users exist and hold access tokens valid for `valid_for`.
    pub async fn prepare(
        &mut self,
        target: &ApiTarget,
        n: usize,
        valid_for: Duration,
        sources: &[IpAddr],
        concurrency: usize,
        progress: &indicatif::ProgressBar,
    ) -> anyhow::Result<SetupStats> {
        let started = Instant::now();
        let mut stats = SetupStats::default();
        let deadline = unix_now() + valid_for.as_secs();
        let mut tasks = Vec::new();
        for index in 0..n {
            match self.file.users.get(index) {
                None => tasks.push(Task {
                    index,
                    op: Op::Register,
                    username: self.username(index),
                    refresh_token: String::new(),
                }),
                Some(user) if user.access_expires_at < deadline => tasks.push(Task {
                    index,
                    op: Op::Refresh,
                    username: user.username.clone(),
                    refresh_token: user.refresh_token.clone(),
                }),
                Some(_) => stats.reused_tokens += 1,
            }
        }
        progress.set_length(tasks.len() as u64);
        progress.set_position(0);
        if tasks.is_empty() {
            stats.seconds = started.elapsed().as_secs_f64();
            return Ok(stats);
        }
        let (tx, mut rx) = mpsc::unbounded_channel();
        let tasks = Arc::new(tasks);
        let next = Arc::new(AtomicUsize::new(0));
        for worker in 0..concurrency.max(1) {
            let source = sources[worker % sources.len()];
            let (tasks, next, tx) = (tasks.clone(), next.clone(), tx.clone());
            let target = target.clone();
            let password = self.file.password.clone();
            let prefix = self.file.prefix.clone();
            tokio::spawn(async move {
                let mut conn: Option<ApiConnection> = None;
                loop {
                    let i = next.fetch_add(1, Ordering::Relaxed);
                    let Some(task) = tasks.get(i) else { break };
                    let result =
                        perform(&target, source, &mut conn, task, &password, &prefix).await;
                    if tx.send((task.index, result)).is_err() {
                        break;
                    }
                }
            });
        }
        drop(tx);
        let mut done = 0;
        let mut first_error = None;
        while let Some((index, result)) = rx.recv().await {
            progress.inc(1);
            match result {
                Ok((op, user)) => {
                    match op {
                        Op::Register => stats.registered += 1,
                        Op::Refresh => stats.refreshed += 1,
                        Op::Login => stats.logged_in += 1,
                    }
                    self.put(index, user);
                }
                Err(err) => {
                    first_error.get_or_insert(err);
                }
            }
            done += 1;
            if done % SAVE_EVERY == 0 {
                self.save()?;
            }
        }
        self.save()?;
        if let Some(err) = first_error {
            return Err(err.context("bench user setup failed"));
        }
        stats.seconds = started.elapsed().as_secs_f64();
        Ok(stats)
    }

    fn username(&self, index: usize) -> String {
        format!("b{}_{index}", self.file.prefix)
    }

    /// Registration results arrive out of order: the vector only grows contiguously, so a
    /// gap is filled by a placeholder that the next run will re-register (its access token
    /// is already expired).
    fn put(&mut self, index: usize, user: BenchUser) {
        while self.file.users.len() < index {
            let i = self.file.users.len();
            self.file.users.push(BenchUser {
                id: uuid::Uuid::nil(),
                username: self.username(i),
                refresh_token: String::new(),
                access_token: String::new(),
                access_expires_at: 0,
            });
        }
        if index == self.file.users.len() {
            self.file.users.push(user);
        } else {
            self.file.users[index] = user;
        }
    }

    /// Atomically, readable by the owner only (the file holds live refresh tokens).
    pub fn save(&self) -> anyhow::Result<()> {
        if let Some(dir) = self.path.parent() {
            std::fs::create_dir_all(dir)?;
        }
        let tmp = self.path.with_extension("json.tmp");
        let mut out = std::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .open(&tmp)
            .with_context(|| format!("writing {}", tmp.display()))?;
        out.write_all(&serde_json::to_vec(&self.file)?)?;
        out.sync_all()?;
        std::fs::rename(&tmp, &self.path)?;
        Ok(())
    }
}

async fn perform(
    target: &ApiTarget,
    source: IpAddr,
    conn: &mut Option<ApiConnection>,
    task: &Task,
    password: &str,
    prefix: &str,
) -> anyhow::Result<(Op, BenchUser)> {
    let mut op = task.op;
    // A placeholder left by an interrupted registration has no refresh token.
    if op == Op::Refresh && task.refresh_token.is_empty() {
        op = Op::Register;
    }
    let mut last_error = None;
    for _ in 0..MAX_ATTEMPTS {
        let (path, body) = match op {
            Op::Register => (
                "/v1/auth/register",
                json!({
                    "username": task.username,
                    "email": format!("{}@bench-{prefix}.example.com", task.username),
                    "password": password,
                    "displayName": format!("Bench {}", task.index),
                }),
            ),
            Op::Login => (
                "/v1/auth/login",
                json!({ "usernameOrEmail": task.username, "password": password }),
            ),
            Op::Refresh => (
                "/v1/auth/refresh",
                json!({ "refreshToken": task.refresh_token }),
            ),
        };
        let answer = match call(target, source, conn, path, &body).await {
            Ok(answer) => answer,
            Err(err) => {
                *conn = None;
                last_error = Some(err);
                tokio::time::sleep(Duration::from_millis(200)).await;
                continue;
            }
        };
        match (op, answer.status) {
            (_, StatusCode::TOO_MANY_REQUESTS | StatusCode::SERVICE_UNAVAILABLE) => {
                let wait = answer.retry_after.unwrap_or(1).min(60);
                tokio::time::sleep(Duration::from_secs(wait)).await;
            }
            (Op::Register, StatusCode::CREATED) => {
                let id = answer.body["user"]["id"]
                    .as_str()
                    .and_then(|s| s.parse().ok())
                    .ok_or_else(|| anyhow!("register: no user.id in {}", answer.body))?;
                return Ok((op, user_from(id, &task.username, &answer.body["tokens"])?));
            }
            // Registered by a run that died before saving: log in instead.
            (Op::Register, StatusCode::CONFLICT) => op = Op::Login,
            (Op::Refresh, StatusCode::UNAUTHORIZED) => op = Op::Login,
            (Op::Login | Op::Refresh, StatusCode::OK) => {
                let id = access_token_subject(answer.body["accessToken"].as_str())?;
                return Ok((op, user_from(id, &task.username, &answer.body)?));
            }
            // The user is gone (a reset database): make it again.
            (Op::Login, StatusCode::UNAUTHORIZED) => op = Op::Register,
            (_, status) => bail!(
                "{path} for {}: HTTP {status}: {}",
                task.username,
                answer.body
            ),
        }
    }
    let why = last_error.map_or_else(
        || "rate limited or unavailable".into(),
        |e| format!("{e:#}"),
    );
    bail!(
        "{} for {}: no success after {MAX_ATTEMPTS} attempts ({why})",
        op_name(op),
        task.username
    )
}

fn op_name(op: Op) -> &'static str {
    match op {
        Op::Register => "register",
        Op::Refresh => "refresh",
        Op::Login => "login",
    }
}

async fn call(
    target: &ApiTarget,
    source: IpAddr,
    conn: &mut Option<ApiConnection>,
    path: &str,
    body: &serde_json::Value,
) -> anyhow::Result<Answer> {
    if !conn.as_ref().is_some_and(ApiConnection::is_usable) {
        *conn = Some(target.connect(source).await?);
    }
    match conn {
        Some(c) => c.post_json(path, body).await,
        None => bail!("no API connection"),
    }
}

fn user_from(
    id: uuid::Uuid,
    username: &str,
    tokens: &serde_json::Value,
) -> anyhow::Result<BenchUser> {
    let text = |field: &str| {
        tokens[field]
            .as_str()
            .map(str::to_owned)
            .ok_or_else(|| anyhow!("no {field} in {tokens}"))
    };
    let expires_in = tokens["expiresIn"]
        .as_u64()
        .ok_or_else(|| anyhow!("no expiresIn in {tokens}"))?;
    Ok(BenchUser {
        id,
        username: username.into(),
        refresh_token: text("refreshToken")?,
        access_token: text("accessToken")?,
        access_expires_at: unix_now() + expires_in,
    })
}

/// The `sub` claim of a JWT, read without verifying it (the server verifies; the bench only
/// needs to know whose token it holds).
fn access_token_subject(token: Option<&str>) -> anyhow::Result<uuid::Uuid> {
    use base64_free::decode_url_no_pad;
    let token = token.ok_or_else(|| anyhow!("no access_token"))?;
    let payload = token
        .split('.')
        .nth(1)
        .ok_or_else(|| anyhow!("access token is not a JWT"))?;
    let claims: serde_json::Value = serde_json::from_slice(&decode_url_no_pad(payload)?)?;
    claims["sub"]
        .as_str()
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| anyhow!("access token has no uuid sub"))
}

/// base64url without padding, the JWT encoding; small enough not to need a crate.
mod base64_free {
    pub fn decode_url_no_pad(text: &str) -> anyhow::Result<Vec<u8>> {
        let mut out = Vec::with_capacity(text.len() * 3 / 4);
        let mut acc: u32 = 0;
        let mut bits = 0;
        for c in text.bytes() {
            let v = match c {
                b'A'..=b'Z' => c - b'A',
                b'a'..=b'z' => c - b'a' + 26,
                b'0'..=b'9' => c - b'0' + 52,
                b'-' => 62,
                b'_' => 63,
                _ => anyhow::bail!("not base64url: {:?}", c as char),
            };
            acc = (acc << 6) | u32::from(v);
            bits += 6;
            if bits >= 8 {
                bits -= 8;
                out.push((acc >> bits) as u8);
                acc &= (1 << bits) - 1;
            }
        }
        Ok(out)
    }
}

pub fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// `count` loopback source addresses: 127.0.0.2, 127.0.0.3, …
pub fn loopback_sources(count: u8) -> Vec<IpAddr> {
    (0..count.max(1))
        .map(|i| IpAddr::from([127, 0, 0, i.saturating_add(2)]))
        .collect()
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    #[test]
    fn the_subject_is_read_from_the_payload() {
        // {"sub":"0190d6a0-0000-7000-8000-000000000001","exp":1}
        let payload = "eyJzdWIiOiIwMTkwZDZhMC0wMDAwLTcwMDAtODAwMC0wMDAwMDAwMDAwMDEiLCJleHAiOjF9";
        let token = format!("e30.{payload}.sig");
        assert_eq!(
            access_token_subject(Some(&token)).unwrap().to_string(),
            "0190d6a0-0000-7000-8000-000000000001"
        );
        assert!(access_token_subject(Some("nodots")).is_err());
        assert!(access_token_subject(None).is_err());
    }

    #[test]
    fn results_out_of_order_keep_the_pool_contiguous() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("users.json");
        let mut pool = Pool::open(&path, "https://localhost:8443").unwrap();
        let user = |n: &str| BenchUser {
            id: uuid::Uuid::new_v4(),
            username: n.into(),
            refresh_token: "r".into(),
            access_token: "a".into(),
            access_expires_at: unix_now() + 900,
        };
        pool.put(2, user("c"));
        pool.put(0, user("a"));
        assert_eq!(pool.users().len(), 3);
        assert_eq!(pool.users()[1].access_expires_at, 0, "a placeholder");
        pool.save().unwrap();
        let again = Pool::open(&path, "https://localhost:8443").unwrap();
        assert_eq!(again.users()[2].username, "c");
        assert!(Pool::open(&path, "https://elsewhere:1").is_err());
    }

    #[test]
    fn sources_start_at_127_0_0_2() {
        let s = loopback_sources(3);
        assert_eq!(s[0].to_string(), "127.0.0.2");
        assert_eq!(s[2].to_string(), "127.0.0.4");
    }
}
