//! A shard process: reads its [`Job`], opens its sessions, runs its share of the scenario (the
//! work its caller hands `run`) and reports on stdout (see `protocol`). Also what every
//! scenario's shard side opens sessions with.

use std::collections::BTreeMap;
use std::future::Future;
use std::net::{Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use futures::StreamExt;
use haberci_client::{Client, ClientConfig, Roots, Transport};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, ServerName};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::sync::mpsc;

use crate::conn::{self, Conn, Inbox, Incoming};
use crate::load::protocol::{Common, Counts, Job, Report, SessionSpec, ShardResult, TransportKind};
use crate::report::latency::Latency;
use crate::sampling::procfs;
use crate::socketio::{SioClient, SioConfig};

/// Kernel buffers asked for each shared client UDP socket (capped by `net.core.rmem_max`).
const CLIENT_SOCKET_BUFFER: usize = 8 << 20;

/// How often a shard reports its counts.
const PROGRESS_EVERY: Duration = Duration::from_millis(250);
/// How long closing all sessions may take at the end.
pub(crate) const CLOSE_WAIT: Duration = Duration::from_secs(5);
/// Longest error text kept as a failure key.
const FAILURE_KEY_LEN: usize = 100;

/// Live counters, reported every [`PROGRESS_EVERY`].
#[derive(Default)]
pub(crate) struct Live {
    pub(crate) connected: AtomicU64,
    pub(crate) connect_failed: AtomicU64,
    pub(crate) sent: AtomicU64,
    pub(crate) received: AtomicU64,
    pub(crate) disconnected: AtomicU64,
    /// Storm: sessions back after their gateway died.
    pub(crate) reconnected: AtomicU64,
}

impl Live {
    pub(crate) fn counts(&self) -> Counts {
        Counts {
            connected: self.connected.load(Ordering::Relaxed),
            connect_failed: self.connect_failed.load(Ordering::Relaxed),
            sent: self.sent.load(Ordering::Relaxed),
            received: self.received.load(Ordering::Relaxed),
            reconnected: self.reconnected.load(Ordering::Relaxed),
        }
    }
}

/// The shard's entry point: stdin carries the job and the `go`s, stdout the reports. `work`
/// runs the job (the scenario's shard side, `scenarios::shard`) with the live counters, the
/// report channel and the `go`s.
pub(crate) async fn run<W, F>(work: W) -> anyhow::Result<()>
where
    W: FnOnce(Job, Arc<Live>, mpsc::UnboundedSender<Report>, mpsc::UnboundedReceiver<()>) -> F,
    F: Future<Output = anyhow::Result<ShardResult>>,
{
    let mut stdin = BufReader::new(tokio::io::stdin()).lines();
    let line = stdin
        .next_line()
        .await?
        .context("no job on stdin (a shard is started by the coordinator)")?;
    let job: Job = serde_json::from_str(&line).context("the job line is not a Job")?;
    let (go_tx, go) = mpsc::unbounded_channel();
    tokio::spawn(async move {
        while let Ok(Some(line)) = stdin.next_line().await {
            if line.trim() == "go" && go_tx.send(()).is_err() {
                break;
            }
        }
        // End of stdin: the coordinator is gone or wants us to stop; `go` waits end.
    });
    let (out_tx, out_rx) = mpsc::unbounded_channel::<Report>();
    let writer = tokio::spawn(write_reports(out_rx));
    let live = Arc::new(Live::default());
    let progress = {
        let (live, out) = (live.clone(), out_tx.clone());
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(PROGRESS_EVERY);
            loop {
                tick.tick().await;
                if out.send(Report::Progress(live.counts())).is_err() {
                    break;
                }
            }
        })
    };
    let deadline = Duration::from_secs(job.common().deadline_secs);
    let work = work(job, live.clone(), out_tx.clone(), go);
    let result = match tokio::time::timeout(deadline, work).await {
        Ok(result) => result?,
        Err(_) => bail!("the shard's deadline ({deadline:?}) passed"),
    };
    progress.abort();
    let _ = out_tx.send(Report::Done(Box::new(result)));
    drop(out_tx);
    writer.await??;
    Ok(())
}

async fn write_reports(mut rx: mpsc::UnboundedReceiver<Report>) -> anyhow::Result<()> {
    let mut stdout = tokio::io::stdout();
    while let Some(report) = rx.recv().await {
        let mut line = serde_json::to_vec(&report)?;
        line.push(b'\n');
        stdout.write_all(&line).await?;
        stdout.flush().await?;
    }
    Ok(())
}

pub(crate) async fn wait_go(go: &mut mpsc::UnboundedReceiver<()>) -> anyhow::Result<()> {
    go.recv()
        .await
        .context("stdin closed: the coordinator stopped the run")
}

pub(crate) fn cpu_ms_now(ticks_per_sec: u64) -> f64 {
    procfs::sample(std::process::id())
        .map_or(0.0, |s| s.cpu_ticks as f64 * 1000.0 / ticks_per_sec as f64)
}

/// The sessions of one shard, opened at the ramp rate, in order.
pub(crate) struct Opened {
    pub(crate) clients: Vec<Option<(Conn, Inbox)>>,
    pub(crate) handshake: Latency,
    pub(crate) failures: BTreeMap<String, u64>,
}

/// What every session of a shard shares: trust roots, QUIC sockets, the Socket.IO TLS setup.
struct Connector {
    common: Common,
    roots: rustls::RootCertStore,
    endpoints: Vec<quinn::Endpoint>,
    per_socket: usize,
    quic_index: usize,
    socketio_tls: Option<(tokio_rustls::TlsConnector, ServerName<'static>)>,
}

impl Connector {
    fn new(common: &Common, specs: &[SessionSpec]) -> anyhow::Result<Connector> {
        let roots = root_store(common)?;
        // One UDP socket per `sessions_per_socket` QUIC or WebTransport sessions.
        let quic_count = specs
            .iter()
            .filter(|s| matches!(s.transport, TransportKind::Quic | TransportKind::Wt))
            .count();
        let per_socket = common.sessions_per_socket.max(1);
        let endpoints = (0..quic_count.div_ceil(per_socket))
            .map(|_| client_endpoint())
            .collect::<anyhow::Result<Vec<_>>>()?;
        let socketio_tls = if common.socketio_plain
            || !specs.iter().any(|s| s.transport == TransportKind::SocketIo)
        {
            None
        } else {
            let mut config = rustls::ClientConfig::builder_with_provider(Arc::new(
                rustls::crypto::ring::default_provider(),
            ))
            .with_safe_default_protocol_versions()?
            .with_root_certificates(roots.clone())
            .with_no_client_auth();
            config.alpn_protocols = vec![b"http/1.1".to_vec()];
            Some((
                tokio_rustls::TlsConnector::from(Arc::new(config)),
                ServerName::try_from(common.server_name.clone())?,
            ))
        };
        Ok(Connector {
            common: common.clone(),
            roots,
            endpoints,
            per_socket,
            quic_index: 0,
            socketio_tls,
        })
    }

    /// A future that opens the session `spec` describes.
    fn open(
        &mut self,
        spec: &SessionSpec,
    ) -> impl Future<Output = Result<(Conn, Inbox), String>> + Send + 'static {
        let endpoint =
            matches!(spec.transport, TransportKind::Quic | TransportKind::Wt).then(|| {
                let e = self.endpoints[self.quic_index / self.per_socket].clone();
                self.quic_index += 1;
                e
            });
        let haberci = (spec.transport != TransportKind::SocketIo)
            .then(|| client_config(&self.common, spec, &self.roots, endpoint));
        let socketio = SioConfig {
            addr: spec.addr,
            source: spec.source,
            tls: self.socketio_tls.clone(),
            token: spec.token.clone(),
        };
        let limit = Duration::from_millis(self.common.connect_timeout_ms);
        async move {
            match haberci {
                Some(config) => Client::connect(config)
                    .await
                    .map(|(client, events)| (Conn::Haberci(client), conn::haberci_inbox(events)))
                    .map_err(|err| failure_key(&err)),
                None => match tokio::time::timeout(limit, SioClient::connect(&socketio)).await {
                    Ok(Ok((client, events))) => {
                        Ok((Conn::SocketIo(client), conn::socketio_inbox(events)))
                    }
                    Ok(Err(err)) => Err(failure_key(&err)),
                    Err(_) => Err(format!("no connect within {limit:?}")),
                },
            }
        }
    }
}

/// Opens `specs` at the ramp rate, in order, counting into `live`.
pub(crate) async fn open_sessions(
    common: &Common,
    specs: &[SessionSpec],
    live: &Arc<Live>,
) -> anyhow::Result<Opened> {
    let mut connector = Connector::new(common, specs)?;
    let started = tokio::time::Instant::now();
    let rate = common.ramp_per_sec.max(0.001);
    let mut handles = Vec::with_capacity(specs.len());
    for (i, spec) in specs.iter().enumerate() {
        tokio::time::sleep_until(started + Duration::from_secs_f64(i as f64 / rate)).await;
        let open = connector.open(spec);
        let live = live.clone();
        handles.push(tokio::spawn(async move {
            let t0 = Instant::now();
            let result = open.await;
            match &result {
                Ok(_) => live.connected.fetch_add(1, Ordering::Relaxed),
                Err(_) => live.connect_failed.fetch_add(1, Ordering::Relaxed),
            };
            (result, t0.elapsed())
        }));
    }
    let mut opened = Opened {
        clients: Vec::with_capacity(specs.len()),
        handshake: Latency::new(),
        failures: BTreeMap::new(),
    };
    for handle in handles {
        let (result, took) = handle.await?;
        match result {
            Ok(pair) => {
                opened.handshake.record(took);
                opened.clients.push(Some(pair));
            }
            Err(why) => {
                *opened.failures.entry(why).or_default() += 1;
                opened.clients.push(None);
            }
        }
    }
    Ok(opened)
}

/// A client UDP socket for many QUIC sessions. Hundreds of sessions share it: the default
/// 208 KiB receive buffer drops bursts, and the drops would be charged to the server as
/// latency.
pub(crate) fn client_endpoint() -> anyhow::Result<quinn::Endpoint> {
    let (socket, _) = haberci_kit::udp::bind(
        SocketAddr::from((Ipv4Addr::UNSPECIFIED, 0)),
        CLIENT_SOCKET_BUFFER,
    )
    .context("cannot bind a UDP socket for QUIC clients")?;
    let runtime = quinn::default_runtime().context("no async runtime for quinn")?;
    quinn::Endpoint::new(quinn::EndpointConfig::default(), None, socket, runtime)
        .context("cannot start a QUIC client endpoint")
}

pub(crate) fn failure_key(err: &dyn std::fmt::Display) -> String {
    let mut text = err.to_string();
    if text.len() > FAILURE_KEY_LEN {
        let mut cut = FAILURE_KEY_LEN;
        while !text.is_char_boundary(cut) {
            cut -= 1;
        }
        text.truncate(cut);
    }
    text
}

pub(crate) fn root_store(common: &Common) -> anyhow::Result<rustls::RootCertStore> {
    let mut store = rustls::RootCertStore::empty();
    for cert in CertificateDer::pem_file_iter(&common.ca)
        .with_context(|| format!("reading {}", common.ca.display()))?
    {
        store.add(cert?)?;
    }
    Ok(store)
}

pub(crate) fn client_config(
    common: &Common,
    spec: &SessionSpec,
    roots: &rustls::RootCertStore,
    endpoint: Option<quinn::Endpoint>,
) -> ClientConfig {
    let transport = match spec.transport {
        TransportKind::Quic => Transport::Quic {
            addr: spec.addr.to_string(),
        },
        TransportKind::Ws | TransportKind::SocketIo => Transport::WebSocket {
            url: format!("wss://{}/v1/ws", spec.addr),
        },
        TransportKind::Wt => Transport::WebTransport {
            url: format!("https://{}/v1/rt", spec.addr),
        },
    };
    let mut config = ClientConfig::new(transport, Roots::Store(roots.clone()), spec.token.clone());
    config.server_name = Some(common.server_name.clone());
    config.client_name = "haberci-bench".into();
    config.connect_timeout = Duration::from_millis(common.connect_timeout_ms);
    config.quic_endpoint = endpoint;
    config.quic_keep_alive = common.quic_keep_alive_ms.map(Duration::from_millis);
    if common.tls_resume {
        config.tickets = tickets();
    }
    config
}

/// The TLS session tickets of this load process, shared by all its sessions: a session that
/// reconnects (or a slot's next session) resumes with a ticket an earlier one was given, as
/// a device reconnecting with its own ticket would. rustls keeps a few per server name.
fn tickets() -> Arc<dyn rustls::client::ClientSessionStore> {
    static TICKETS: std::sync::OnceLock<Arc<rustls::client::ClientSessionMemoryCache>> =
        std::sync::OnceLock::new();
    TICKETS
        .get_or_init(|| Arc::new(rustls::client::ClientSessionMemoryCache::new(16)))
        .clone()
}

/// Drains a session's inbox and counts an early end.
pub(crate) fn drain_events(mut inbox: Inbox, live: Arc<Live>) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        while let Some(event) = inbox.next().await {
            if let Incoming::Disconnected(_) = event {
                live.disconnected.fetch_add(1, Ordering::Relaxed);
            }
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn failure_keys_are_cut_on_char_boundaries() {
        let long = "ş".repeat(200);
        let key = failure_key(&long);
        assert!(key.len() <= FAILURE_KEY_LEN);
        assert!(key.chars().all(|c| c == 'ş'));
    }
}
