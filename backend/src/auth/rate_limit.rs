//! Rate limits shared by every backend process, kept in Redis by one Lua script (GCRA, the
//! generic cell rate algorithm).
//!
//! A limit of `count` per `period` gives each request a cost of `interval = period / count`.
//! A bucket stores one number, its theoretical arrival time (TAT, ms on Redis' clock). A
//! request at `now` is allowed when `max(TAT, now) + interval - now <= period`, i.e. at most
//! `count` requests in a burst, then one per `interval`. The script checks every bucket of a
//! request (e.g. per IP and per account) and consumes from all of them only when all allow, so
//! a refused request costs nothing. It reads Redis' `TIME`, so processes need no common clock.
//!
//! Keys: `rl:{<action>}:{dimension}:{count}/{period}s:{subject}`, e.g.
//! `rl:{login}:ip:10/60s:203.0.113.7`, `rl:{login}:ip:10/60s:2001:db8:1:2::/64` or
//! `rl:{login}:account:10/300s:user:0192…`. The braces are a hash tag: every bucket of one
//! action is in one Redis Cluster slot, so the script that checks a request's buckets together
//! may touch them all. The limit is part of the key so that processes configured differently
//! (or a changed setting) never misread each other's TAT. Each key expires when its bucket is
//! full again. Subjects: [`ip_subject`] and [`Account`].

use std::fmt;
use std::net::{IpAddr, Ipv6Addr};
use std::time::Duration;

use fred::clients::Client;
use fred::types::scripts::Script;
use haberci_wire::UserId;

use crate::config::Rate;

/// Prefix length an IPv6 client is bucketed by: a /64 is the smallest block a site or
/// subscriber gets (RFC 6177), and anyone holding one can use all 2^64 of its addresses.
pub const IPV6_BUCKET_PREFIX: u8 = 64;

/// The subject of a per-IP bucket. Invariant: every address of one IPv6 /64 maps to the same
/// subject (`2001:db8:1:2::/64`), so rotating through one's own /64 buys no extra attempts; an
/// IPv4 address (also when written IPv4-mapped, `::ffff:a.b.c.d`) is its own subject (/32).
pub fn ip_subject(ip: IpAddr) -> String {
    match ip.to_canonical() {
        IpAddr::V4(v4) => v4.to_string(),
        IpAddr::V6(v6) => {
            let mask = u128::MAX << (128 - u32::from(IPV6_BUCKET_PREFIX));
            let network = Ipv6Addr::from(u128::from(v6) & mask);
            format!("{network}/{IPV6_BUCKET_PREFIX}")
        }
    }
}

/// The subject of a per-account bucket.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Account<'a> {
    /// An existing account, whatever name it was reached by: its username and its email share
    /// one budget.
    User(UserId),
    /// A normalized username or email that names no account (yet).
    Name(&'a str),
}

impl fmt::Display for Account<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // The prefixes keep the two kinds apart (a username never parses as a UUID anyway).
        match self {
            Account::User(id) => write!(f, "user:{id}"),
            Account::Name(name) => write!(f, "name:{name}"),
        }
    }
}

/// KEYS: one per bucket. ARGV: for bucket i, its interval (ms) at 2i-1 and period (ms) at 2i.
/// Returns 0 when allowed (and consumed), else the milliseconds to wait.
const GCRA_LUA: &str = r#"
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local wait = 0
local tats = {}
for i, key in ipairs(KEYS) do
  local interval = tonumber(ARGV[2 * i - 1])
  local period = tonumber(ARGV[2 * i])
  local tat = tonumber(redis.call('GET', key) or now) or now
  if tat < now then tat = now end
  local new_tat = tat + interval
  local over = new_tat - now - period
  if over > wait then wait = over end
  tats[i] = new_tat
end
if wait > 0 then return wait end
for i, key in ipairs(KEYS) do
  redis.call('SET', key, string.format('%d', tats[i]), 'PX', string.format('%d', tats[i] - now))
end
return 0
"#;

/// One bucket a request draws from.
#[derive(Debug, Clone)]
pub struct Bucket {
    pub key: String,
    pub rate: Rate,
}

impl Bucket {
    /// `action`: `register` / `login` / `refresh`; `dimension`: `ip` / `account`.
    pub fn new(action: &str, dimension: &str, subject: &str, rate: Rate) -> Bucket {
        Bucket {
            key: format!(
                "rl:{{{action}}}:{dimension}:{}/{}s:{subject}",
                rate.count,
                rate.period.as_secs()
            ),
            rate,
        }
    }

    /// The per-client-IP bucket of `action` ([`ip_subject`]).
    pub fn ip(action: &str, ip: IpAddr, rate: Rate) -> Bucket {
        Bucket::new(action, "ip", &ip_subject(ip), rate)
    }

    /// The per-account bucket of `action`.
    pub fn account(action: &str, account: Account<'_>, rate: Rate) -> Bucket {
        Bucket::new(action, "account", &account.to_string(), rate)
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Decision {
    Allowed,
    Limited { retry_after: Duration },
}

#[derive(Clone)]
pub struct RateLimiter {
    script: Script,
}

impl Default for RateLimiter {
    fn default() -> Self {
        RateLimiter {
            script: Script::from_lua(GCRA_LUA),
        }
    }
}

impl RateLimiter {
    /// Draws one request from every bucket, or from none. `EVALSHA`, loading the script on
    /// `NOSCRIPT` (after a Redis restart or `SCRIPT FLUSH`).
    pub async fn check(
        &self,
        redis: &Client,
        buckets: &[Bucket],
    ) -> Result<Decision, fred::error::Error> {
        let keys: Vec<String> = buckets.iter().map(|b| b.key.clone()).collect();
        let mut args: Vec<i64> = Vec::with_capacity(buckets.len() * 2);
        for bucket in buckets {
            let period = i64::try_from(bucket.rate.period.as_millis()).unwrap_or(i64::MAX);
            let interval = (period / i64::from(bucket.rate.count.max(1))).max(1);
            args.push(interval);
            args.push(period);
        }
        let wait_ms: i64 = self.script.evalsha_with_reload(redis, keys, args).await?;
        Ok(if wait_ms <= 0 {
            Decision::Allowed
        } else {
            if let Some(bucket) = buckets.first() {
                crate::metrics::rate_limited(&bucket.key);
            }
            Decision::Limited {
                retry_after: Duration::from_millis(wait_ms.unsigned_abs()),
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(text: &str) -> IpAddr {
        text.parse().unwrap_or(IpAddr::from([0, 0, 0, 0]))
    }

    #[test]
    fn ipv6_clients_share_a_bucket_per_64_and_ipv4_clients_have_their_own() {
        let rate = Rate::new(10, Duration::from_secs(60));
        let key = |text: &str| Bucket::ip("login", ip(text), rate).key;
        assert_eq!(
            key("2001:db8:1:2::1"),
            "rl:{login}:ip:10/60s:2001:db8:1:2::/64"
        );
        assert_eq!(
            key("2001:db8:1:2::1"),
            key("2001:db8:1:2:ffff:ffff:ffff:fffe"),
            "one /64, one bucket"
        );
        assert_ne!(key("2001:db8:1:2::1"), key("2001:db8:1:3::1"));
        assert_eq!(key("203.0.113.7"), "rl:{login}:ip:10/60s:203.0.113.7");
        assert_ne!(key("203.0.113.7"), key("203.0.113.8"));
        assert_eq!(key("::ffff:203.0.113.7"), key("203.0.113.7"));
    }

    #[test]
    fn account_subjects_keep_users_and_names_apart() {
        let rate = Rate::new(10, Duration::from_secs(300));
        let id = UserId::new(uuid::Uuid::from_u128(1)).unwrap_or_else(|| unreachable!());
        assert_eq!(
            Bucket::account("login", Account::User(id), rate).key,
            "rl:{login}:account:10/300s:user:00000000-0000-0000-0000-000000000001"
        );
        assert_eq!(
            Bucket::account("login", Account::Name("alice"), rate).key,
            "rl:{login}:account:10/300s:name:alice"
        );
    }
}
