//! Just enough of the Redis protocol (RESP2) for the bench's own few commands: drop a reader's
//! timeline before a cold read (`DEL`), look at one (`ZCARD`, `ZRANGE`), and read
//! `INFO commandstats` (how many `ZADD`s the fan-out ran). The codec is pure and tested; the
//! connection is a thin loop around it. The backend's own Redis client is not used for this
//! because these calls are the bench's, not the product's.

use anyhow::{Context, anyhow, bail};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// One reply.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Value {
    Simple(String),
    Error(String),
    Int(i64),
    Bulk(Option<Vec<u8>>),
    Array(Option<Vec<Value>>),
}

impl Value {
    pub fn int(&self) -> anyhow::Result<i64> {
        match self {
            Value::Int(n) => Ok(*n),
            other => bail!("expected an integer reply, got {other:?}"),
        }
    }

    pub fn text(&self) -> anyhow::Result<String> {
        match self {
            Value::Bulk(Some(bytes)) => Ok(String::from_utf8_lossy(bytes).into_owned()),
            Value::Simple(s) => Ok(s.clone()),
            other => bail!("expected a string reply, got {other:?}"),
        }
    }

    pub fn texts(&self) -> anyhow::Result<Vec<String>> {
        match self {
            Value::Array(Some(items)) => items.iter().map(Value::text).collect(),
            Value::Array(None) => Ok(Vec::new()),
            other => bail!("expected an array reply, got {other:?}"),
        }
    }
}

/// A command as RESP: an array of bulk strings.
pub fn encode(args: &[&str]) -> Vec<u8> {
    let mut out = format!("*{}\r\n", args.len()).into_bytes();
    for arg in args {
        out.extend_from_slice(format!("${}\r\n", arg.len()).as_bytes());
        out.extend_from_slice(arg.as_bytes());
        out.extend_from_slice(b"\r\n");
    }
    out
}

/// Parses one reply at the start of `buf`: `Ok(None)` when more bytes are needed, else the
/// value and how many bytes it took.
pub fn parse(buf: &[u8]) -> anyhow::Result<Option<(Value, usize)>> {
    let Some(end) = buf.windows(2).position(|w| w == b"\r\n") else {
        return Ok(None);
    };
    let Some((&kind, line)) = buf[..end].split_first() else {
        bail!("empty RESP line");
    };
    let line = std::str::from_utf8(line).context("RESP line is not UTF-8")?;
    let after = end + 2;
    let number = || -> anyhow::Result<i64> {
        line.parse()
            .map_err(|_| anyhow!("bad RESP length {line:?}"))
    };
    Ok(match kind {
        b'+' => Some((Value::Simple(line.into()), after)),
        b'-' => Some((Value::Error(line.into()), after)),
        b':' => Some((Value::Int(number()?), after)),
        b'$' => {
            let len = number()?;
            if len < 0 {
                return Ok(Some((Value::Bulk(None), after)));
            }
            let len = usize::try_from(len)?;
            if buf.len() < after + len + 2 {
                return Ok(None);
            }
            let bytes = buf[after..after + len].to_vec();
            Some((Value::Bulk(Some(bytes)), after + len + 2))
        }
        b'*' => {
            let len = number()?;
            if len < 0 {
                return Ok(Some((Value::Array(None), after)));
            }
            let mut items = Vec::new();
            let mut at = after;
            for _ in 0..len {
                match parse(&buf[at..])? {
                    Some((item, used)) => {
                        items.push(item);
                        at += used;
                    }
                    None => return Ok(None),
                }
            }
            Some((Value::Array(Some(items)), at))
        }
        other => bail!("unknown RESP type {:?}", other as char),
    })
}

/// `calls` of every command in an `INFO commandstats` text, e.g. `("zadd", 123)`.
pub fn command_calls(info: &str) -> Vec<(String, u64)> {
    info.lines()
        .filter_map(|line| {
            let (name, rest) = line.trim().strip_prefix("cmdstat_")?.split_once(':')?;
            let calls = rest
                .split(',')
                .find_map(|field| field.strip_prefix("calls="))?
                .parse()
                .ok()?;
            Some((name.to_owned(), calls))
        })
        .collect()
}

/// One connection, one command at a time.
pub struct Redis {
    stream: TcpStream,
    buf: Vec<u8>,
}

impl Redis {
    /// `redis://[[user]:password@]host:port[/db]`.
    pub async fn connect(url: &str) -> anyhow::Result<Redis> {
        let rest = url
            .strip_prefix("redis://")
            .with_context(|| format!("{url:?} is not redis://HOST:PORT"))?;
        let (auth, rest) = match rest.rsplit_once('@') {
            Some((auth, rest)) => (Some(auth), rest),
            None => (None, rest),
        };
        let (addr, db) = match rest.split_once('/') {
            Some((addr, db)) => (addr, Some(db).filter(|d| !d.is_empty())),
            None => (rest, None),
        };
        let stream = TcpStream::connect(addr)
            .await
            .with_context(|| format!("cannot connect to Redis at {addr}"))?;
        stream.set_nodelay(true)?;
        let mut redis = Redis {
            stream,
            buf: Vec::new(),
        };
        match auth.map(|auth| auth.split_once(':').unwrap_or(("", auth))) {
            Some(("", password)) => redis.ok(&["AUTH", password]).await?,
            Some((user, password)) => redis.ok(&["AUTH", user, password]).await?,
            None => {}
        }
        if let Some(db) = db {
            redis.ok(&["SELECT", db]).await?;
        }
        Ok(redis)
    }

    async fn ok(&mut self, args: &[&str]) -> anyhow::Result<()> {
        self.command(args).await.map(|_| ())
    }

    /// Sends a command and reads its reply; an error reply is an error.
    pub async fn command(&mut self, args: &[&str]) -> anyhow::Result<Value> {
        self.stream.write_all(&encode(args)).await?;
        loop {
            if let Some((value, used)) = parse(&self.buf)? {
                self.buf.drain(..used);
                if let Value::Error(e) = value {
                    bail!("Redis {}: {e}", args.first().unwrap_or(&""));
                }
                return Ok(value);
            }
            let mut chunk = [0u8; 16 * 1024];
            let n = self.stream.read(&mut chunk).await?;
            if n == 0 {
                bail!("Redis closed the connection");
            }
            self.buf.extend_from_slice(&chunk[..n]);
        }
    }

    /// `calls` per command since Redis started (or its last `CONFIG RESETSTAT`).
    pub async fn command_calls(&mut self) -> anyhow::Result<Vec<(String, u64)>> {
        let info = self.command(&["INFO", "commandstats"]).await?.text()?;
        Ok(command_calls(&info))
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    #[test]
    fn commands_encode_as_arrays_of_bulk_strings() {
        assert_eq!(
            encode(&["DEL", "tl:{x}"]),
            b"*2\r\n$3\r\nDEL\r\n$6\r\ntl:{x}\r\n".to_vec()
        );
    }

    #[test]
    fn replies_parse_whole_or_ask_for_more() {
        assert_eq!(parse(b":12\r\nrest").unwrap(), Some((Value::Int(12), 5)));
        assert_eq!(
            parse(b"+OK\r\n").unwrap(),
            Some((Value::Simple("OK".into()), 5))
        );
        assert_eq!(parse(b"$5\r\nhel").unwrap(), None);
        assert_eq!(parse(b"$-1\r\n").unwrap(), Some((Value::Bulk(None), 5)));
        let array = b"*3\r\n$1\r\n~\r\n:7\r\n$2\r\nab\r\n";
        let (value, used) = parse(array).unwrap().unwrap();
        assert_eq!(used, array.len());
        assert_eq!(
            value,
            Value::Array(Some(vec![
                Value::Bulk(Some(b"~".to_vec())),
                Value::Int(7),
                Value::Bulk(Some(b"ab".to_vec())),
            ]))
        );
        assert_eq!(parse(&array[..array.len() - 3]).unwrap(), None);
        assert_eq!(parse(b"").unwrap(), None);
        assert!(parse(b"?x\r\n").is_err());
        assert!(parse(b":x\r\n").is_err());
        let (e, _) = parse(b"-ERR nope\r\n").unwrap().unwrap();
        assert_eq!(e, Value::Error("ERR nope".into()));
    }

    #[test]
    fn command_stats_are_read_per_command() {
        let info = "# Commandstats\r\ncmdstat_zadd:calls=1234,usec=99,usec_per_call=0.08,rejected_calls=0,failed_calls=0\r\ncmdstat_evalsha:calls=7,usec=1\r\n";
        assert_eq!(
            command_calls(info),
            vec![("zadd".into(), 1234), ("evalsha".into(), 7)]
        );
    }
}
