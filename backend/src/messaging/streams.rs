//! The inbound streams in Redis: consumer groups, reading, claiming, acknowledging, trimming.
//! Replies are parsed from fred's raw [`Value`]s here, so the rest of the worker sees
//! [`RawEntry`]s only.

use std::collections::BTreeMap;
use std::fmt;
use std::str::FromStr;

use fred::prelude::*;
use fred::types::streams::{XCapKind, XCapTrim};
use haberci_seam::streams;

/// A stream entry id, `<ms>-<seq>`. Ordered as Redis orders them.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Debug)]
pub struct EntryId {
    pub ms: u64,
    pub seq: u64,
}

impl EntryId {
    pub const ZERO: EntryId = EntryId { ms: 0, seq: 0 };

    /// The smallest id after this one.
    pub fn next(self) -> EntryId {
        match self.seq.checked_add(1) {
            Some(seq) => EntryId { ms: self.ms, seq },
            None => EntryId {
                ms: self.ms.saturating_add(1),
                seq: 0,
            },
        }
    }
}

impl fmt::Display for EntryId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}-{}", self.ms, self.seq)
    }
}

impl FromStr for EntryId {
    type Err = StreamError;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        let bad = || StreamError::Reply(format!("{text:?} is not a stream entry id"));
        let (ms, seq) = text.split_once('-').ok_or_else(bad)?;
        Ok(EntryId {
            ms: ms.parse().map_err(|_| bad())?,
            seq: seq.parse().map_err(|_| bad())?,
        })
    }
}

/// One entry as read from a shard. `payload` is `None` when the entry has no
/// [`streams::ENTRY_FIELD`] (or was deleted while pending): it is poison.
#[derive(Clone, Debug)]
pub struct RawEntry {
    pub shard: u16,
    pub id: EntryId,
    pub payload: Option<Vec<u8>>,
}

#[derive(Debug, thiserror::Error)]
pub enum StreamError {
    /// The consumer group is gone (Redis restarted without persistence, or the key was
    /// deleted): recreate the groups and read again.
    #[error("consumer group missing: {0}")]
    NoGroup(String),
    #[error("redis: {0}")]
    Redis(fred::error::Error),
    /// Redis answered something this code does not understand (a bug, or a new Redis).
    #[error("unexpected reply: {0}")]
    Reply(String),
}

impl From<fred::error::Error> for StreamError {
    fn from(err: fred::error::Error) -> Self {
        // `UNBLOCKED …`: the stream was deleted while we were blocked on it; its group went
        // with it.
        if err.details().contains("NOGROUP") || err.details().contains("UNBLOCKED") {
            StreamError::NoGroup(err.details().to_owned())
        } else {
            StreamError::Redis(err)
        }
    }
}

/// The shards one worker consumes, as one consumer of [`streams::CONSUMER_GROUP`].
#[derive(Clone, Debug)]
pub struct Shards {
    prefix: String,
    count: u16,
    consumer: String,
}

impl Shards {
    pub fn new(prefix: &str, count: u16, consumer: &str) -> Shards {
        Shards {
            prefix: prefix.to_owned(),
            count: count.max(1),
            consumer: consumer.to_owned(),
        }
    }

    pub fn key(&self, shard: u16) -> String {
        streams::stream_key(&self.prefix, shard)
    }

    pub fn consumer(&self) -> &str {
        &self.consumer
    }

    pub fn all(&self) -> impl Iterator<Item = u16> + use<> {
        0..self.count
    }

    fn keys(&self) -> Vec<String> {
        self.all().map(|shard| self.key(shard)).collect()
    }

    /// Creates the group on every shard that lacks it, from id `0` so that entries added
    /// before the group existed are read too.
    pub async fn ensure_groups(&self, redis: &Client) -> Result<(), StreamError> {
        for key in self.keys() {
            let created: Result<Value, _> = redis
                .xgroup_create(key, streams::CONSUMER_GROUP, "0", true)
                .await;
            match created {
                Ok(_) => {}
                Err(err) if err.details().contains("BUSYGROUP") => {}
                Err(err) => return Err(err.into()),
            }
        }
        Ok(())
    }

    /// New entries (`>`) from every shard: at most `count` from each (Redis applies `COUNT`
    /// per stream), waiting up to `block_ms`
    /// (`None`: answer at once with what is there).
    pub async fn read_new(
        &self,
        blocking: &Client,
        count: u32,
        block_ms: Option<u64>,
    ) -> Result<Vec<RawEntry>, StreamError> {
        let keys = self.keys();
        let ids: Vec<&str> = keys.iter().map(|_| ">").collect();
        let reply: Value = blocking
            .xreadgroup(
                streams::CONSUMER_GROUP,
                self.consumer.as_str(),
                Some(u64::from(count)),
                block_ms,
                false,
                keys,
                ids,
            )
            .await?;
        self.parse_read(reply)
    }

    /// [`Shards::read_new`] of one shard: on a Redis Cluster the shards are in different hash
    /// slots, which one command may not span (see `shard_readers`).
    pub async fn read_new_from(
        &self,
        blocking: &Client,
        shard: u16,
        count: u32,
        block_ms: Option<u64>,
    ) -> Result<Vec<RawEntry>, StreamError> {
        let reply: Value = blocking
            .xreadgroup(
                streams::CONSUMER_GROUP,
                self.consumer.as_str(),
                Some(u64::from(count)),
                block_ms,
                false,
                self.key(shard),
                ">",
            )
            .await?;
        self.parse_read(reply)
    }

    /// This consumer's own pending entries of one shard after `after` (reading history, as
    /// after a restart under the same name).
    pub async fn read_pending(
        &self,
        redis: &Client,
        shard: u16,
        after: EntryId,
        count: u32,
    ) -> Result<Vec<RawEntry>, StreamError> {
        let reply: Value = redis
            .xreadgroup(
                streams::CONSUMER_GROUP,
                self.consumer.as_str(),
                Some(u64::from(count)),
                None,
                false,
                self.key(shard),
                after.to_string(),
            )
            .await?;
        self.parse_read(reply)
    }

    /// Takes over entries of one shard that some consumer read and has not acknowledged for
    /// `min_idle_ms`, starting at `cursor`. Returns them and the next cursor (`0-0`: done).
    pub async fn autoclaim(
        &self,
        redis: &Client,
        shard: u16,
        min_idle_ms: u64,
        cursor: EntryId,
        count: u32,
    ) -> Result<(Vec<RawEntry>, EntryId), StreamError> {
        let reply: Value = redis
            .xautoclaim(
                self.key(shard),
                streams::CONSUMER_GROUP,
                self.consumer.as_str(),
                min_idle_ms,
                cursor.to_string(),
                Some(u64::from(count)),
                false,
            )
            .await?;
        // [next-cursor, [[id, [field, value, …]], …], [deleted ids…] (Redis ≥ 7)]
        let mut parts = reply.into_array().into_iter();
        let next = parts
            .next()
            .and_then(|v| v.as_string())
            .ok_or_else(|| StreamError::Reply("XAUTOCLAIM without a cursor".into()))?
            .parse()?;
        let entries = match parts.next() {
            Some(list) => parse_entries(shard, list)?,
            None => Vec::new(),
        };
        Ok((entries, next))
    }

    /// Acknowledges `ids`, by shard, on one pipeline: one round trip for a batch, however
    /// many shards it spans (a Redis Cluster sends each node its part).
    pub async fn ack(
        &self,
        redis: &Client,
        ids: &BTreeMap<u16, Vec<EntryId>>,
    ) -> Result<(), StreamError> {
        let pipeline = redis.pipeline();
        let mut any = false;
        for (shard, ids) in ids.iter().filter(|(_, ids)| !ids.is_empty()) {
            let ids: Vec<String> = ids.iter().map(EntryId::to_string).collect();
            let () = pipeline
                .xack(self.key(*shard), streams::CONSUMER_GROUP, ids)
                .await?;
            any = true;
        }
        if any {
            let _: Vec<Value> = pipeline.all().await?;
        }
        Ok(())
    }

    /// The trim point of one shard: every entry below it has been acknowledged by the group.
    /// `None` when the group does not exist (nothing is trimmed then).
    ///
    /// Invariant (the order of the two reads matters): the group's last-delivered id `L` is
    /// read **before** its oldest pending id `P`. An entry unacknowledged at trim time was
    /// either pending when `P` was read (so it is `>= P`), or delivered after `L` was read
    /// (so it is `> L`), or never delivered (`> L`). So `min(P, L+1)` is at or below every
    /// unacknowledged entry. Read the other way round, an entry delivered between the two
    /// reads could fall below the point.
    pub async fn trim_point(
        &self,
        redis: &Client,
        shard: u16,
    ) -> Result<Option<EntryId>, StreamError> {
        let key = self.key(shard);
        let groups: Value = match redis.xinfo_groups(key.as_str()).await {
            Ok(groups) => groups,
            // No stream yet: nothing to trim.
            Err(err) if err.details().contains("no such key") => return Ok(None),
            Err(err) => return Err(err.into()),
        };
        let Some(last_delivered) = last_delivered_id(groups)? else {
            return Ok(None);
        };
        let summary: Value = redis
            .xpending(key.as_str(), streams::CONSUMER_GROUP, ())
            .await?;
        // [count, smallest id, largest id, [[consumer, count], …]]
        let mut parts = summary.into_array().into_iter();
        let pending = parts.next().and_then(|v| v.as_u64()).unwrap_or(0);
        let oldest = match parts.next().and_then(|v| v.as_string()) {
            Some(id) if pending > 0 => Some(id.parse::<EntryId>()?),
            _ => None,
        };
        let after_delivered = last_delivered.next();
        Ok(Some(match oldest {
            Some(oldest) => oldest.min(after_delivered),
            None => after_delivered,
        }))
    }

    /// Removes the entries of one shard below `point` (exactly; `XTRIM … MINID`). Returns how
    /// many went.
    pub async fn trim(
        &self,
        redis: &Client,
        shard: u16,
        point: EntryId,
    ) -> Result<u64, StreamError> {
        let trimmed: u64 = redis
            .xtrim(
                self.key(shard),
                (XCapKind::MinID, XCapTrim::Exact, point.to_string()),
            )
            .await?;
        Ok(trimmed)
    }

    /// Removes this consumer from every group where it holds nothing pending, so that
    /// restarts do not pile up dead consumer names. A consumer with pending entries stays:
    /// deleting it would drop them from the pending list, and then nothing would reclaim them.
    pub async fn leave(&self, redis: &Client) -> Result<(), StreamError> {
        for shard in self.all() {
            let key = self.key(shard);
            let summary: Value = redis
                .xpending(
                    key.as_str(),
                    streams::CONSUMER_GROUP,
                    ("-", "+", 1, self.consumer.as_str()),
                )
                .await?;
            let holds_nothing = summary.into_array().iter().all(Value::is_null);
            if holds_nothing {
                let _: i64 = redis
                    .xgroup_delconsumer(key, streams::CONSUMER_GROUP, self.consumer.as_str())
                    .await?;
            }
        }
        Ok(())
    }

    /// `XREADGROUP` replies: nil (nothing), or per stream `[key, [[id, fields], …]]` (RESP2
    /// array of pairs; a map in RESP3).
    fn parse_read(&self, reply: Value) -> Result<Vec<RawEntry>, StreamError> {
        if reply.is_null() {
            return Ok(Vec::new());
        }
        let mut out = Vec::new();
        let pairs: Vec<(Value, Value)> = match reply {
            Value::Map(map) => map
                .inner()
                .into_iter()
                .map(|(k, v)| (k.into(), v))
                .collect(),
            other => other
                .into_array()
                .into_iter()
                .map(|stream| {
                    let mut parts = stream.into_array().into_iter();
                    (
                        parts.next().unwrap_or(Value::Null),
                        parts.next().unwrap_or(Value::Null),
                    )
                })
                .collect(),
        };
        for (key, entries) in pairs {
            let key = key
                .as_string()
                .ok_or_else(|| StreamError::Reply("stream reply without a key".into()))?;
            let shard = self
                .all()
                .find(|&shard| self.key(shard) == key)
                .ok_or_else(|| StreamError::Reply(format!("reply for unknown stream {key}")))?;
            out.extend(parse_entries(shard, entries)?);
        }
        out.sort_by_key(|entry| (entry.shard, entry.id));
        Ok(out)
    }
}

/// `[[id, [field, value, …] or nil], …]`.
fn parse_entries(shard: u16, list: Value) -> Result<Vec<RawEntry>, StreamError> {
    if list.is_null() {
        return Ok(Vec::new());
    }
    list.into_array()
        .into_iter()
        .map(|entry| {
            let mut parts = entry.into_array().into_iter();
            let id = parts
                .next()
                .and_then(|v| v.as_string())
                .ok_or_else(|| StreamError::Reply("stream entry without an id".into()))?
                .parse()?;
            let fields = parts.next().unwrap_or(Value::Null);
            let mut payload = None;
            if !fields.is_null() {
                let mut fields = fields.into_array().into_iter();
                while let (Some(name), Some(value)) = (fields.next(), fields.next()) {
                    if name.as_str().as_deref() == Some(streams::ENTRY_FIELD) {
                        payload = value.as_bytes().map(<[u8]>::to_vec);
                    }
                }
            }
            Ok(RawEntry { shard, id, payload })
        })
        .collect()
}

/// `last-delivered-id` of [`streams::CONSUMER_GROUP`] in an `XINFO GROUPS` reply (a list of
/// groups, each a flat list or a map of name/value).
fn last_delivered_id(groups: Value) -> Result<Option<EntryId>, StreamError> {
    for group in groups.into_array() {
        let fields = group.into_array();
        let mut name = None;
        let mut last = None;
        for pair in fields.chunks(2) {
            if let [key, value] = pair {
                match key.as_str().as_deref() {
                    Some("name") => name = value.as_string(),
                    Some("last-delivered-id") => last = value.as_string(),
                    _ => {}
                }
            }
        }
        if name.as_deref() == Some(streams::CONSUMER_GROUP) {
            return match last {
                Some(last) => Ok(Some(last.parse()?)),
                None => Err(StreamError::Reply(
                    "XINFO GROUPS without last-delivered-id".into(),
                )),
            };
        }
    }
    Ok(None)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn entry_ids_parse_order_and_step() {
        let a: EntryId = "1700000000000-5".parse().unwrap_or(EntryId::ZERO);
        assert_eq!(
            a,
            EntryId {
                ms: 1_700_000_000_000,
                seq: 5
            }
        );
        assert_eq!(a.next().to_string(), "1700000000000-6");
        assert!(a < a.next());
        assert!(EntryId { ms: 1, seq: 9 } < EntryId { ms: 2, seq: 0 });
        let last = EntryId {
            ms: 3,
            seq: u64::MAX,
        };
        assert_eq!(last.next(), EntryId { ms: 4, seq: 0 });
        for bad in ["", "12", "a-1", "1-", "-1"] {
            assert!(bad.parse::<EntryId>().is_err(), "{bad:?}");
        }
    }
}
