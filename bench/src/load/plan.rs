//! The coordinator's plan of a run, shared by every scenario that opens sessions: the system
//! under test (`Side`: the Haberci stack or the Socket.IO peer), its participants (Haberci's
//! bench users through the API; the peer's minted), where each session connects (`Edges`),
//! and how the sessions are split over shard processes.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::time::{Duration, Instant};

use anyhow::bail;
use indicatif::MultiProgress;

use crate::api::ApiTarget;
use crate::load::protocol::{Common, SessionSpec, TransportKind};
use crate::report::bar;
use crate::target::{Mix, Target, ca_store};
use crate::users::{Pool, SetupStats};

/// Sessions per shard process when `--shards` is not given: well under the 20,000
/// open-files limit (a WebSocket session is one file; QUIC shares sockets).
const SESSIONS_PER_SHARD: usize = 8_000;
/// WebSocket sessions per address pair: one (source, destination) address pair has ~28,000
/// ephemeral ports. The client crate cannot bind a source address, so beyond this Haberci
/// sessions go to 127.0.0.2, 127.0.0.3, … of the same gateway (it listens on `[::]`); the
/// Socket.IO client binds 127.0.0.2, 127.0.0.3, … as its source instead (the peer listens on
/// 127.0.0.1 only). Either way each gets its own 4-tuple space.
const WS_SESSIONS_PER_ADDRESS: usize = 20_000;
/// Slack added to every shard deadline.
pub(crate) const DEADLINE_SLACK: Duration = Duration::from_secs(120);

/// The system under test: the Haberci stack, or the Socket.IO peer.
#[derive(Clone, Debug)]
pub enum Side {
    Haberci,
    SocketIo {
        nodes: Vec<SocketAddr>,
        secret: Vec<u8>,
        plain: bool,
    },
}

impl Side {
    pub fn name(&self) -> &'static str {
        match self {
            Side::Haberci => "haberci",
            Side::SocketIo { .. } => "socketio",
        }
    }
}

/// Someone who connects: a user id and an access token.
#[derive(Clone, Debug)]
pub struct Participant {
    pub id: uuid::Uuid,
    pub token: String,
}

/// `n` participants valid for `valid_for`: Haberci's bench users (registered once, cached,
/// refreshed), or for the peer fresh ids with tokens signed by its secret.
pub(crate) async fn participants(
    target: &Target,
    side: &Side,
    n: usize,
    valid_for: Duration,
    multi: &MultiProgress,
) -> anyhow::Result<(Vec<Participant>, SetupStats)> {
    match side {
        Side::Haberci => {
            let roots = ca_store(target)?;
            let api = ApiTarget::of(target, roots).await?;
            let mut pool = Pool::open(&target.users_file(), &target.api)?;
            let progress = bar(multi, n as u64, "users");
            let stats = pool
                .prepare(
                    &api,
                    n,
                    valid_for,
                    &api.sources(target.source_addresses),
                    target.setup_concurrency,
                    &progress,
                )
                .await?;
            progress.finish_with_message(format!(
                "registered {}, refreshed {}, logged in {}, reused {} in {:.1}s",
                stats.registered,
                stats.refreshed,
                stats.logged_in,
                stats.reused_tokens,
                stats.seconds
            ));
            Ok((
                pool.users()[..n]
                    .iter()
                    .map(|u| Participant {
                        id: u.id,
                        token: u.access_token.clone(),
                    })
                    .collect(),
                stats,
            ))
        }
        Side::SocketIo { secret, .. } => {
            let started = Instant::now();
            let now = crate::users::unix_now();
            let all = (0..n)
                .map(|_| {
                    let id = uuid::Uuid::new_v4();
                    Participant {
                        id,
                        token: crate::socketio::hs256_token(
                            secret,
                            &id.to_string(),
                            now,
                            valid_for,
                        ),
                    }
                })
                .collect();
            Ok((
                all,
                SetupStats {
                    reused_tokens: 0,
                    seconds: started.elapsed().as_secs_f64(),
                    ..SetupStats::default()
                },
            ))
        }
    }
}

/// Where sessions connect: Haberci's gateways (QUIC and TCP addresses) or the peer's nodes.
pub(crate) struct Edges {
    side: Side,
    gateways: Vec<(SocketAddr, SocketAddr)>,
    ws_index: usize,
}

impl Edges {
    pub(crate) async fn resolve(target: &Target, side: &Side) -> anyhow::Result<Edges> {
        let mut gateways = Vec::new();
        match side {
            Side::Haberci => {
                for g in &target.gateways {
                    gateways.push((
                        crate::target::resolve(&g.quic).await?,
                        crate::target::resolve(&g.tcp).await?,
                    ));
                }
            }
            Side::SocketIo { nodes, .. } => {
                gateways.extend(nodes.iter().map(|n| (*n, *n)));
            }
        }
        if gateways.is_empty() {
            bail!("no gateway to connect to");
        }
        Ok(Edges {
            side: side.clone(),
            gateways,
            ws_index: 0,
        })
    }

    pub(crate) fn len(&self) -> usize {
        self.gateways.len()
    }

    /// The session of `who` as the `i`-th session of the run, on gateway (or node) `g`.
    pub(crate) fn session(
        &mut self,
        who: &Participant,
        mix: Mix,
        i: usize,
        g: usize,
    ) -> SessionSpec {
        let transport = match self.side {
            Side::Haberci => mix.transport(i),
            Side::SocketIo { .. } => TransportKind::SocketIo,
        };
        let (quic, tcp) = self.gateways[g % self.gateways.len()];
        let (addr, source) = match transport {
            TransportKind::Quic | TransportKind::Wt => (quic, None),
            TransportKind::Ws => {
                let spread = self.ws_index / WS_SESSIONS_PER_ADDRESS;
                self.ws_index += 1;
                let addr = match tcp.ip() {
                    IpAddr::V4(ip) if ip == Ipv4Addr::LOCALHOST && spread > 0 => SocketAddr::new(
                        IpAddr::V4(Ipv4Addr::new(127, 0, 0, 1 + spread.min(250) as u8)),
                        tcp.port(),
                    ),
                    _ => tcp,
                };
                (addr, None)
            }
            TransportKind::SocketIo => {
                let spread = self.ws_index / WS_SESSIONS_PER_ADDRESS;
                self.ws_index += 1;
                let source = IpAddr::V4(Ipv4Addr::new(127, 0, 0, 2 + spread.min(250) as u8));
                (tcp, Some(source))
            }
        };
        SessionSpec {
            user: who.id,
            token: who.token.clone(),
            transport,
            addr,
            gateway: g % self.gateways.len(),
            source,
        }
    }
}

pub(crate) fn common(target: &Target, side: &Side, shards: usize, deadline: Duration) -> Common {
    Common {
        server_name: target.server_name.clone(),
        ca: target.ca.clone(),
        sessions_per_socket: target.sessions_per_socket,
        connect_timeout_ms: target.connect_timeout_ms,
        ramp_per_sec: target.ramp / shards as f64,
        deadline_secs: deadline.as_secs(),
        socketio_plain: matches!(side, Side::SocketIo { plain: true, .. }),
        tls_resume: target.tls_resume,
        quic_keep_alive_ms: target.quic_keep_alive_ms,
    }
}

pub(crate) fn shard_count(target: &Target, sessions: usize) -> usize {
    target
        .shards
        .unwrap_or_else(|| sessions.div_ceil(SESSIONS_PER_SHARD))
        .clamp(1, sessions.max(1))
}
