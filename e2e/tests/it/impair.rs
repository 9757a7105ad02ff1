//! A UDP relay between QUIC clients and a gateway that can lose, delay and reorder datagrams,
//! and move every client to a new source port (what a NAT rebinding or a phone changing
//! networks looks like to the server).
//!
//! It stands in for `tc netem`: the kernel this project is tested on has no `sch_netem` (nor
//! any qdisc module), so the impairment is made in user space, on the real QUIC datagrams.
//! Each client gets an upstream socket of its own, so the gateway sees one address per client.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use tokio::net::UdpSocket;
use tokio::task::AbortHandle;

/// What happens to each datagram, both ways.
#[derive(Clone, Copy, Debug, Default)]
pub struct Impairment {
    /// Datagrams dropped, in percent.
    pub loss_percent: u64,
    /// Each datagram is held a uniformly random time in this range (ms); datagrams overtake
    /// each other whenever the range is wider than their spacing.
    pub delay_ms: (u64, u64),
}

/// Counts since the start.
#[derive(Clone, Copy, Debug, Default)]
pub struct Counts {
    pub forwarded: u64,
    pub dropped: u64,
    pub delayed: u64,
}

struct Shared {
    upstream: SocketAddr,
    listen: Arc<UdpSocket>,
    impairment: Mutex<Impairment>,
    flows: Mutex<HashMap<SocketAddr, Flow>>,
    rng: AtomicU64,
    forwarded: AtomicU64,
    dropped: AtomicU64,
    delayed: AtomicU64,
}

struct Flow {
    socket: Arc<UdpSocket>,
    reader: AbortHandle,
}

pub struct UdpRelay {
    pub addr: SocketAddr,
    shared: Arc<Shared>,
    task: AbortHandle,
}

impl UdpRelay {
    /// A relay on 127.0.0.1 to `upstream`, passing everything until [`UdpRelay::impair`].
    pub async fn start(upstream: SocketAddr) -> UdpRelay {
        let listen = Arc::new(UdpSocket::bind("127.0.0.1:0").await.expect("bind relay"));
        let addr = listen.local_addr().expect("relay addr");
        let seed = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(1, |d| d.as_nanos() as u64)
            | 1;
        let shared = Arc::new(Shared {
            upstream,
            listen,
            impairment: Mutex::new(Impairment::default()),
            flows: Mutex::new(HashMap::new()),
            rng: AtomicU64::new(seed),
            forwarded: AtomicU64::new(0),
            dropped: AtomicU64::new(0),
            delayed: AtomicU64::new(0),
        });
        let task = tokio::spawn(from_clients(shared.clone())).abort_handle();
        UdpRelay { addr, shared, task }
    }

    pub fn impair(&self, impairment: Impairment) {
        *self
            .shared
            .impairment
            .lock()
            .unwrap_or_else(PoisonError::into_inner) = impairment;
    }

    pub fn heal(&self) {
        self.impair(Impairment::default());
    }

    /// Every client's datagrams leave from a new port from now on; the old ports are closed
    /// (whatever the gateway sends to them is lost, as behind a NAT that forgot the mapping).
    /// Returns how many clients moved.
    pub async fn rebind(&self) -> usize {
        let clients: Vec<SocketAddr> = self.shared.flows().keys().copied().collect();
        for client in &clients {
            let flow = Flow::open(&self.shared, *client).await;
            if let Some(old) = self.shared.flows().insert(*client, flow) {
                old.reader.abort();
            }
        }
        clients.len()
    }

    pub fn counts(&self) -> Counts {
        Counts {
            forwarded: self.shared.forwarded.load(Ordering::Relaxed),
            dropped: self.shared.dropped.load(Ordering::Relaxed),
            delayed: self.shared.delayed.load(Ordering::Relaxed),
        }
    }
}

impl Drop for UdpRelay {
    fn drop(&mut self) {
        self.task.abort();
        for flow in self.shared.flows().values() {
            flow.reader.abort();
        }
    }
}

impl Shared {
    fn flows(&self) -> std::sync::MutexGuard<'_, HashMap<SocketAddr, Flow>> {
        self.flows.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// xorshift64: good enough to pick which datagrams to lose.
    fn random(&self) -> u64 {
        let mut x = self.rng.load(Ordering::Relaxed);
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        self.rng.store(x, Ordering::Relaxed);
        x
    }

    /// Sends `datagram` from `socket` to `to`, after the current impairment had its way.
    fn forward(self: &Arc<Self>, socket: Arc<UdpSocket>, datagram: Vec<u8>, to: SocketAddr) {
        let impairment = *self
            .impairment
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        if impairment.loss_percent > 0 && self.random() % 100 < impairment.loss_percent {
            self.dropped.fetch_add(1, Ordering::Relaxed);
            return;
        }
        self.forwarded.fetch_add(1, Ordering::Relaxed);
        let (low, high) = impairment.delay_ms;
        if high == 0 {
            let _ = socket.try_send_to(&datagram, to);
            return;
        }
        self.delayed.fetch_add(1, Ordering::Relaxed);
        let delay = low + self.random() % (high - low + 1);
        tokio::spawn(async move {
            // The impairment itself: this datagram is late by `delay`.
            tokio::time::sleep(Duration::from_millis(delay)).await;
            let _ = socket.send_to(&datagram, to).await;
        });
    }
}

impl Flow {
    async fn open(shared: &Arc<Shared>, client: SocketAddr) -> Flow {
        let socket = Arc::new(UdpSocket::bind("127.0.0.1:0").await.expect("bind flow"));
        let reader = tokio::spawn(from_gateway(shared.clone(), socket.clone(), client));
        Flow {
            socket,
            reader: reader.abort_handle(),
        }
    }
}

async fn from_clients(shared: Arc<Shared>) {
    let mut buf = vec![0u8; 65_536];
    loop {
        let Ok((n, client)) = shared.listen.recv_from(&mut buf).await else {
            continue;
        };
        let existing = shared.flows().get(&client).map(|f| f.socket.clone());
        let socket = match existing {
            Some(socket) => socket,
            None => {
                let flow = Flow::open(&shared, client).await;
                let socket = flow.socket.clone();
                shared.flows().insert(client, flow);
                socket
            }
        };
        shared.forward(socket, buf[..n].to_vec(), shared.upstream);
    }
}

async fn from_gateway(shared: Arc<Shared>, socket: Arc<UdpSocket>, client: SocketAddr) {
    let mut buf = vec![0u8; 65_536];
    while let Ok(n) = socket.recv(&mut buf).await {
        shared.forward(shared.listen.clone(), buf[..n].to_vec(), client);
    }
}
