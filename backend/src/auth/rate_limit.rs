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
//! Keys: `rl:{action}:{dimension}:{count}/{period}s:{subject}`, e.g.
//! `rl:login:ip:10/60s:203.0.113.7` or `rl:login:account:10/300s:alice`. The limit is part of
//! the key so that processes configured differently (or a changed setting) never misread each
//! other's TAT. Each key expires when its bucket is full again.

use std::time::Duration;

use fred::clients::Client;
use fred::types::scripts::Script;

use crate::config::Rate;

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
                "rl:{action}:{dimension}:{}/{}s:{subject}",
                rate.count,
                rate.period.as_secs()
            ),
            rate,
        }
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
            Decision::Limited {
                retry_after: Duration::from_millis(wait_ms.unsigned_abs()),
            }
        })
    }
}
