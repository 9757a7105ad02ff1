//! The QUIC connections a gateway holds, kept in a file so that its next life can end them at
//! once.
//!
//! A gateway restarted after a crash answers its lost connections' packets with a stateless
//! reset ([`super::cid`]), but a client that sends nothing (a phone waiting for messages)
//! sends no packet until its heartbeat: up to 35 s of not hearing anything, while its
//! messages wait. So the gateway lists, per connection, the client's address and the
//! connection ID the client sends to; its next life reads the list and sends each client a
//! stateless reset unprompted ([`call_back`]), paced so that the reconnects it causes fit its
//! handshake admission. A client ends its connection when the token matches (RFC 9000 §10.3)
//! and reconnects; one whose connection is already gone, or that is now on a new one, drops
//! the packet (its token matches nothing).
//!
//! The file is a journal of lines `+ <cid hex> <address>` and `- <cid hex>`, appended by one
//! thread ([`Roster::open`]) at most every [`FLUSH_INTERVAL`]: a connection opened within the
//! last interval before a crash is missed, and its client hears of the crash at its
//! heartbeat, as it would without a roster. A crash needs no `fsync`: the page cache outlives
//! the process (a machine that crashes has lost its clients' connections anyway). The
//! journal is rewritten with the live connections alone once it holds more than twice as many
//! lines as there are connections, plus [`COMPACT_SLACK`].

use std::collections::HashMap;
use std::io::{BufRead, Write};
use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::mpsc;
use std::time::{Duration, Instant};

use haberci_kit::shutdown::Shutdown;
use quinn::ConnectionId;
use ring::rand::{SecureRandom, SystemRandom};

use super::cid::{FleetKeys, RESET_TOKEN_LEN};
use super::quic::Admission;

/// How often the journal's new lines are written out.
pub const FLUSH_INTERVAL: Duration = Duration::from_secs(1);
/// Lines beyond twice the live connections a journal may hold before it is rewritten.
pub const COMPACT_SLACK: usize = 10_000;
/// Resets sent per second by default (`HABERCI_QUIC_CALLBACK_RATE`).
pub const DEFAULT_CALLBACK_RATE: u32 = 1_000;
/// Resets go out in bursts this often.
const CALLBACK_TICK: Duration = Duration::from_millis(10);
/// Bytes of an unprompted reset: a short-header packet's first byte, 24 unpredictable bytes,
/// the token. RFC 9000 §10.3 asks for at least 21; this one looks like a small 1-RTT packet.
const RESET_PACKET_LEN: usize = 41;
const _: () = assert!(RESET_PACKET_LEN >= 21);

/// Where a connection's packets go: the client's address, and the gateway's own address the
/// client sends to (a client accepts a reset only from there; `None` where the platform does
/// not tell, and the kernel chooses).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Path {
    pub client: SocketAddr,
    pub local: Option<IpAddr>,
}

/// One connection of a previous life.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Lost {
    pub cid: ConnectionId,
    pub path: Path,
}

enum Change {
    Opened(ConnectionId, Path),
    Closed(ConnectionId),
}

/// Where connections are listed as they open and close. Cloned into every connection's task.
#[derive(Clone)]
pub struct Roster {
    changes: mpsc::Sender<Change>,
}

/// A listed connection; dropping it (when the connection's task ends) takes it off the list.
pub struct Listed {
    changes: mpsc::Sender<Change>,
    cid: ConnectionId,
}

impl Drop for Listed {
    fn drop(&mut self) {
        let _ = self.changes.send(Change::Closed(self.cid));
    }
}

impl Roster {
    /// Reads what the previous life listed at `path`, then starts a new list there, written
    /// by a thread of its own until every [`Roster`] and [`Listed`] is dropped (join it at
    /// exit, so the last lines are written: [`Writer::finish`]).
    pub fn open(path: &std::path::Path) -> std::io::Result<(Roster, Vec<Lost>, Writer)> {
        let lost = match std::fs::File::open(path) {
            Ok(file) => read(std::io::BufReader::new(file))?,
            Err(err) if err.kind() == std::io::ErrorKind::NotFound => Vec::new(),
            Err(err) => return Err(err),
        };
        let file = append_to_new(path)?;
        let (changes, receiver) = mpsc::channel();
        let journal = Journal {
            path: path.to_owned(),
            file,
            live: HashMap::new(),
            lines: 0,
            pending: Vec::new(),
            rewrite: false,
        };
        let thread = std::thread::Builder::new()
            .name("quic-roster".into())
            .spawn(move || journal.run(receiver))?;
        Ok((Roster { changes }, lost, Writer(thread)))
    }

    /// Lists a connection whose client sends to `cid` along `path`, until the guard is
    /// dropped. The path is the one of the handshake: a client that migrates (a new address,
    /// a new CID) is missed, and hears of a crash at its heartbeat.
    pub fn list(&self, cid: ConnectionId, path: Path) -> Listed {
        let _ = self.changes.send(Change::Opened(cid, path));
        Listed {
            changes: self.changes.clone(),
            cid,
        }
    }
}

/// The thread that writes a [`Roster`].
pub struct Writer(std::thread::JoinHandle<()>);

impl Writer {
    /// Waits (at most `limit`) for the writer to write its last lines; it ends once every
    /// [`Roster`] and [`Listed`] is gone. A drained gateway so leaves an empty list.
    pub async fn finish(self, limit: Duration) {
        let joined = tokio::task::spawn_blocking(move || self.0.join());
        if tokio::time::timeout(limit, joined).await.is_err() {
            tracing::warn!("the QUIC roster was still open at exit: its last lines may be missing");
        }
    }
}

/// The live connections of a journal: every `+` not followed by its `-`. A line that does not
/// parse is skipped, and so is a last line without its newline (torn by the crash: it might
/// parse, with a cut address).
fn read(mut input: impl BufRead) -> std::io::Result<Vec<Lost>> {
    let mut live: HashMap<ConnectionId, Path> = HashMap::new();
    let mut order: Vec<ConnectionId> = Vec::new();
    let mut line = Vec::new();
    loop {
        line.clear();
        if input.read_until(b'\n', &mut line)? == 0 || line.last() != Some(&b'\n') {
            break;
        }
        // Bytes that are not UTF-8: a torn write.
        let Ok(text) = std::str::from_utf8(&line[..line.len() - 1]) else {
            continue;
        };
        let mut words = text.split(' ');
        let (kind, cid) = (words.next(), words.next().and_then(parse_cid));
        let rest: Vec<&str> = words.collect();
        match (kind, cid, rest.as_slice()) {
            (Some("+"), Some(cid), [client, local]) => {
                let local = match *local {
                    "-" => Ok(None),
                    ip => ip.parse().map(Some),
                };
                if let (Ok(client), Ok(local)) = (client.parse(), local) {
                    if live.insert(cid, Path { client, local }).is_none() {
                        order.push(cid);
                    }
                }
            }
            (Some("-"), Some(cid), []) => {
                live.remove(&cid);
            }
            _ => {}
        }
    }
    Ok(order
        .into_iter()
        .filter_map(|cid| live.remove(&cid).map(|path| Lost { cid, path }))
        .collect())
}

/// A journal line listing `cid`.
fn opened_line(out: &mut impl Write, cid: &ConnectionId, path: &Path) -> std::io::Result<()> {
    match path.local {
        Some(local) => writeln!(out, "+ {} {} {local}", cid_hex(cid), path.client),
        None => writeln!(out, "+ {} {} -", cid_hex(cid), path.client),
    }
}

/// `path` emptied (created readable by this user alone: it lists clients' addresses), open
/// for appending.
fn append_to_new(path: &std::path::Path) -> std::io::Result<std::fs::File> {
    private(path)?;
    std::fs::OpenOptions::new().append(true).open(path)
}

/// `path` created empty (or emptied), mode 0600.
fn private(path: &std::path::Path) -> std::io::Result<std::fs::File> {
    use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
    let file = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(path)?;
    // An existing file keeps its mode through `open`.
    file.set_permissions(std::fs::Permissions::from_mode(0o600))?;
    Ok(file)
}

fn parse_cid(hex: &str) -> Option<ConnectionId> {
    if hex.is_empty() || hex.len() % 2 != 0 || hex.len() > 40 {
        return None;
    }
    let bytes: Option<Vec<u8>> = (0..hex.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(hex.get(i..i + 2)?, 16).ok())
        .collect();
    Some(ConnectionId::new(&bytes?))
}

fn cid_hex(cid: &ConnectionId) -> String {
    cid.iter().map(|b| format!("{b:02x}")).collect()
}

struct Journal {
    path: PathBuf,
    file: std::fs::File,
    live: HashMap<ConnectionId, Path>,
    /// Lines in the file.
    lines: usize,
    /// Lines not written yet.
    pending: Vec<u8>,
    /// A write failed (the file may end in part of a line): the next flush rewrites it whole.
    rewrite: bool,
}

impl Journal {
    fn run(mut self, changes: mpsc::Receiver<Change>) {
        let mut failed = false;
        let mut due = Instant::now() + FLUSH_INTERVAL;
        loop {
            match changes.recv_timeout(due.saturating_duration_since(Instant::now())) {
                Ok(change) => self.apply(change),
                Err(mpsc::RecvTimeoutError::Timeout) => {}
                Err(mpsc::RecvTimeoutError::Disconnected) => {
                    let _ = self.flush();
                    return;
                }
            }
            if Instant::now() < due {
                continue;
            }
            due = Instant::now() + FLUSH_INTERVAL;
            match self.flush() {
                Ok(()) => failed = false,
                Err(err) if !failed => {
                    failed = true;
                    tracing::warn!(path = %self.path.display(), %err, "cannot write the QUIC roster: after a crash, idle clients will hear of it only at their heartbeat");
                }
                Err(_) => {}
            }
        }
    }

    fn apply(&mut self, change: Change) {
        match change {
            Change::Opened(cid, path) => {
                self.live.insert(cid, path);
                opened_line(&mut self.pending, &cid, &path).ok();
            }
            Change::Closed(cid) => {
                if self.live.remove(&cid).is_none() {
                    return;
                }
                writeln!(self.pending, "- {}", cid_hex(&cid)).ok();
            }
        }
        self.lines += 1;
    }

    fn flush(&mut self) -> std::io::Result<()> {
        if self.rewrite || self.lines > 2 * self.live.len() + COMPACT_SLACK {
            // What is pending is in `live` too; kept only if the rewrite fails, it would grow
            // without bound.
            self.pending.clear();
            self.rewrite = true;
            self.compact()?;
            self.rewrite = false;
            return Ok(());
        }
        if !self.pending.is_empty() {
            let written = self.file.write_all(&self.pending);
            self.pending.clear();
            if written.is_err() {
                self.rewrite = true;
            }
            written?;
        }
        Ok(())
    }

    /// Rewrites the journal with the live connections alone (a new file renamed over it).
    fn compact(&mut self) -> std::io::Result<()> {
        let fresh = self.path.with_extension("compacting");
        let mut out = std::io::BufWriter::new(private(&fresh)?);
        for (cid, path) in &self.live {
            opened_line(&mut out, cid, path)?;
        }
        out.into_inner().map_err(|err| err.into_error())?;
        std::fs::rename(&fresh, &self.path)?;
        self.file = std::fs::OpenOptions::new().append(true).open(&self.path)?;
        self.lines = self.live.len();
        self.pending.clear();
        Ok(())
    }
}

/// Sends each of `lost` a stateless reset from `socket` (the endpoint's port, and the local
/// address the client sent to: it accepts a reset from there alone), at most `rate` a second,
/// pausing while half of the admission's handshake places are taken. The clients reconnect
/// 250–500 ms later; those the admission still refuses back off and come again.
pub async fn call_back(
    socket: std::net::UdpSocket,
    lost: Vec<Lost>,
    keys: FleetKeys,
    server_id: u16,
    rate: u32,
    admission: Arc<Admission>,
    shutdown: Shutdown,
) {
    if lost.is_empty() {
        return;
    }
    let opened = socket
        .set_nonblocking(true)
        .and_then(|()| tokio::net::UdpSocket::from_std(socket))
        .and_then(|socket| {
            let state = quinn::udp::UdpSocketState::new((&socket).into())?;
            Ok((socket, state))
        });
    let (socket, state) = match opened {
        Ok(opened) => opened,
        Err(err) => {
            tracing::warn!(%err, "cannot send the lost connections' resets");
            return;
        }
    };
    let v6 = socket.local_addr().is_ok_and(|addr| addr.is_ipv6());
    let (every, per_tick) = pace(rate);
    let random = SystemRandom::new();
    let mut tick = tokio::time::interval(every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let (mut sent, mut failed) = (0u64, 0u64);
    let mut rest = lost.as_slice();
    while !rest.is_empty() {
        tokio::select! {
            _ = shutdown.cancelled() => break,
            _ = tick.tick() => {}
        }
        if !admission.has_room_for_callbacks() {
            continue;
        }
        let (now, later) = rest.split_at(per_tick.min(rest.len()));
        rest = later;
        let mut sent_now = 0;
        for one in now {
            let packet = reset_packet(keys.reset_token(server_id, &one.cid), &random);
            let transmit = quinn::udp::Transmit {
                destination: for_socket(one.path.client, v6),
                ecn: None,
                contents: &packet,
                segment_size: None,
                src_ip: one.path.local,
            };
            let result = socket
                .async_io(tokio::io::Interest::WRITABLE, || {
                    state.send((&socket).into(), &transmit)
                })
                .await;
            match result {
                Ok(()) => sent_now += 1,
                Err(_) => failed += 1,
            }
        }
        sent += sent_now;
        crate::metrics::callbacks(sent_now);
    }
    tracing::info!(
        sent,
        failed,
        left = rest.len(),
        "told the previous life's QUIC clients that their connections are gone"
    );
}

/// How often resets go out, and how many each time, for `rate` a second (at least 1).
fn pace(rate: u32) -> (Duration, usize) {
    let rate = rate.max(1);
    let per_second = 1000 / CALLBACK_TICK.as_millis() as u32;
    if rate >= per_second {
        (CALLBACK_TICK, (rate / per_second) as usize)
    } else {
        (Duration::from_secs(1) / rate, 1)
    }
}

/// A stateless reset (RFC 9000 §10.3): `0b01` and unpredictable bits, then the token.
fn reset_packet(token: [u8; RESET_TOKEN_LEN], random: &SystemRandom) -> [u8; RESET_PACKET_LEN] {
    let mut packet = [0u8; RESET_PACKET_LEN];
    // Without randomness the packet is still a valid reset; only its disguise is weaker.
    let _ = random.fill(&mut packet[..RESET_PACKET_LEN - RESET_TOKEN_LEN]);
    packet[0] = 0x40 | (packet[0] & 0x3f);
    packet[RESET_PACKET_LEN - RESET_TOKEN_LEN..].copy_from_slice(&token);
    packet
}

/// `addr` as the socket can send to it: a dual-stack IPv6 socket takes IPv4 addresses mapped.
fn for_socket(addr: SocketAddr, v6: bool) -> SocketAddr {
    match addr {
        SocketAddr::V4(v4) if v6 => SocketAddr::new(v4.ip().to_ipv6_mapped().into(), v4.port()),
        other => other,
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    fn cid(n: u8) -> ConnectionId {
        ConnectionId::new(&[n; 12])
    }

    fn path(client: &str, local: Option<&str>) -> Path {
        Path {
            client: client.parse().unwrap(),
            local: local.map(|ip| ip.parse().unwrap()),
        }
    }

    #[test]
    fn a_journal_lists_what_opened_and_did_not_close_and_skips_torn_lines() {
        let a = path("[::ffff:127.0.0.1]:5000", Some("::ffff:127.0.0.1"));
        let b = path("192.0.2.1:6000", None);
        let mut text = Vec::new();
        opened_line(&mut text, &cid(1), &a).unwrap();
        opened_line(&mut text, &cid(2), &b).unwrap();
        let more = format!(
            "- {c1}\nnonsense\n+ zz {a} -\n+ {c5} {a}\n- {c3}\n+ {c3} {b} -\n+ {c4} 192.0.2.1:60",
            c1 = cid_hex(&cid(1)),
            c3 = cid_hex(&cid(3)),
            c4 = cid_hex(&cid(4)),
            c5 = cid_hex(&cid(5)),
            a = a.client,
            b = b.client,
        );
        text.extend_from_slice(more.as_bytes());
        let lost = read(&text[..]).unwrap();
        assert_eq!(
            lost,
            vec![
                Lost {
                    cid: cid(2),
                    path: b
                },
                Lost {
                    cid: cid(3),
                    path: b
                },
            ],
            "1 closed; 5 without its local address; 4 torn at the crash (no newline)"
        );
        assert_eq!(read(&b"\xff\xfe\n"[..]).unwrap(), vec![]);
    }

    #[test]
    fn a_roster_is_what_the_next_life_reads_and_starts_afresh() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("gateway.roster");
        let at = path("127.0.0.1:4000", Some("127.0.0.1"));
        let (roster, lost, writer) = Roster::open(&file).unwrap();
        assert!(lost.is_empty(), "no previous life");
        let kept = roster.list(cid(1), at);
        let closed = roster.list(cid(2), at);
        drop(closed);
        drop(roster);
        drop(kept);
        // The writer writes its last lines once the last handle is gone.
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap()
            .block_on(writer.finish(Duration::from_secs(10)));
        let written = std::fs::read_to_string(&file).unwrap();
        assert_eq!(written.lines().count(), 4, "{written}");
        assert_eq!(read(written.as_bytes()).unwrap(), vec![]);

        // A crash: the connection is still listed.
        let (roster, _, _) = Roster::open(&file).unwrap();
        let _alive = roster.list(cid(7), at);
        wait_for(&file, |text| text.contains(&cid_hex(&cid(7))));
        let (_next, lost, _) = Roster::open(&file).unwrap();
        assert_eq!(
            lost,
            vec![Lost {
                cid: cid(7),
                path: at
            }]
        );
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(&file).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600, "clients' addresses are private");
    }

    fn journal(file: &std::path::Path) -> Journal {
        Journal {
            path: file.to_owned(),
            file: append_to_new(file).unwrap(),
            live: HashMap::new(),
            lines: 0,
            pending: Vec::new(),
            rewrite: false,
        }
    }

    #[test]
    fn a_long_journal_is_rewritten_with_the_live_connections_alone() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("gateway.roster");
        let at = path("127.0.0.1:4000", None);
        let mut journal = journal(&file);
        journal.apply(Change::Opened(cid(1), at));
        for _ in 0..=COMPACT_SLACK / 2 {
            journal.apply(Change::Opened(cid(2), at));
            journal.apply(Change::Closed(cid(2)));
        }
        journal.flush().unwrap();
        let text = std::fs::read_to_string(&file).unwrap();
        assert_eq!(text, format!("+ {} {} -\n", cid_hex(&cid(1)), at.client));
        assert_eq!(journal.lines, 1);
        journal.apply(Change::Closed(cid(1)));
        journal.flush().unwrap();
        let text = std::fs::read_to_string(&file).unwrap();
        assert_eq!(
            read(text.as_bytes()).unwrap(),
            vec![],
            "appended after the rewrite"
        );
    }

    #[test]
    fn a_failed_write_is_repaired_by_a_rewrite_and_holds_nothing_back() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("gateway.roster");
        let at = path("127.0.0.1:4000", None);
        let mut journal = journal(&file);
        // A handle that cannot write: every append fails.
        journal.file = std::fs::File::open(&file).unwrap();
        journal.apply(Change::Opened(cid(1), at));
        assert!(journal.flush().is_err());
        assert!(journal.pending.is_empty(), "not kept to grow");
        assert!(journal.rewrite);
        journal.apply(Change::Opened(cid(2), at));
        journal.flush().unwrap();
        let text = std::fs::read_to_string(&file).unwrap();
        let mut listed: Vec<_> = read(text.as_bytes())
            .unwrap()
            .iter()
            .map(|l| l.cid)
            .collect();
        listed.sort();
        assert_eq!(listed, vec![cid(1), cid(2)], "rebuilt from the live ones");
        assert!(!journal.rewrite);
    }

    #[test]
    fn resets_are_paced_at_the_rate_asked_even_below_one_per_tick() {
        assert_eq!(pace(1000), (CALLBACK_TICK, 10));
        assert_eq!(pace(100), (CALLBACK_TICK, 1));
        assert_eq!(pace(20), (Duration::from_millis(50), 1));
        assert_eq!(pace(0), (Duration::from_secs(1), 1));
    }

    #[test]
    fn an_unprompted_reset_is_a_short_header_packet_ending_in_the_token() {
        let token = [9u8; RESET_TOKEN_LEN];
        let packet = reset_packet(token, &SystemRandom::new());
        assert_eq!(packet[0] & 0xc0, 0x40, "short header, fixed bit");
        assert_eq!(packet[RESET_PACKET_LEN - RESET_TOKEN_LEN..], token);
        let v4: SocketAddr = "192.0.2.1:6000".parse().unwrap();
        assert_eq!(for_socket(v4, false), v4);
        assert_eq!(
            for_socket(v4, true),
            "[::ffff:192.0.2.1]:6000".parse::<SocketAddr>().unwrap()
        );
    }

    /// The writer's thread writes within a flush interval; waits (bounded) for its result.
    fn wait_for(file: &std::path::Path, done: impl Fn(&str) -> bool) -> String {
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        loop {
            let text = std::fs::read_to_string(file).unwrap_or_default();
            if done(&text) {
                return text;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "the roster was not written: {text:?}"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}
