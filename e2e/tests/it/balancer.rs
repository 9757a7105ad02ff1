//! A stateless QUIC balancer in front of several gateways, written from the connection-ID
//! layout in docs/OPERATIONS.md (`HABERCI_QUIC_SERVER_ID`) and `gateway/src/edge/cid.rs`:
//! what QUIC-LB's plaintext mode asks of a balancer, and nothing more.
//!
//! - A datagram whose destination CID is in the gateways' layout goes to the gateway of the
//!   server id in it, whatever address it comes from: a client that moves stays on its
//!   gateway.
//! - Any other (an Initial, whose CID the client chose) goes to the gateway named by
//!   [`QuicBalancer::send_new_connections_to`].
//! - A gateway marked down, as a health check would, gets nothing; its connections' packets go
//!   to the first gateway that is up, which answers them with a stateless reset.
//!
//! Like `impair.rs`, each client address gets an upstream socket of its own, so a gateway sees
//! one address per client address.

use std::collections::{BTreeSet, HashMap};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use tokio::net::UdpSocket;
use tokio::task::AbortHandle;

/// The layout's first octet: config rotation 0, 11 more bytes.
const FIRST_OCTET: u8 = 0x0b;
const CID_LEN: usize = 12;

/// The server id in a CID of the gateways' layout.
fn server_id(cid: &[u8]) -> Option<u16> {
    (cid.len() == CID_LEN && cid[0] == FIRST_OCTET).then(|| u16::from_be_bytes([cid[1], cid[2]]))
}

/// The destination CID of a QUIC datagram (RFC 9000 §17), as far as a balancer can tell.
fn destination_cid(datagram: &[u8]) -> Option<&[u8]> {
    let first = *datagram.first()?;
    if first & 0x80 != 0 {
        // Long header: flags, version (4), DCID length, DCID.
        let len = usize::from(*datagram.get(5)?);
        datagram.get(6..6 + len)
    } else {
        // Short header: the gateways' CIDs all have one length.
        datagram.get(1..1 + CID_LEN)
    }
}

struct Backend {
    server_id: u16,
    addr: SocketAddr,
    up: bool,
}

struct Shared {
    listen: Arc<UdpSocket>,
    backends: Mutex<Vec<Backend>>,
    new_to: AtomicUsize,
    flows: Mutex<HashMap<SocketAddr, Arc<UdpSocket>>>,
    readers: Mutex<Vec<AbortHandle>>,
    /// Per client address, the server ids its datagrams were routed to by CID.
    routed: Mutex<HashMap<SocketAddr, BTreeSet<u16>>>,
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

pub struct QuicBalancer {
    pub addr: SocketAddr,
    shared: Arc<Shared>,
    task: AbortHandle,
}

impl QuicBalancer {
    /// A balancer on 127.0.0.1 in front of `gateways` (server id, UDP address).
    pub async fn start(gateways: Vec<(u16, SocketAddr)>) -> QuicBalancer {
        let listen = Arc::new(UdpSocket::bind("127.0.0.1:0").await.expect("bind balancer"));
        let addr = listen.local_addr().expect("balancer addr");
        let shared = Arc::new(Shared {
            listen,
            backends: Mutex::new(
                gateways
                    .into_iter()
                    .map(|(server_id, addr)| Backend {
                        server_id,
                        addr,
                        up: true,
                    })
                    .collect(),
            ),
            new_to: AtomicUsize::new(0),
            flows: Mutex::new(HashMap::new()),
            readers: Mutex::new(Vec::new()),
            routed: Mutex::new(HashMap::new()),
        });
        let task = tokio::spawn(from_clients(shared.clone())).abort_handle();
        QuicBalancer { addr, shared, task }
    }

    /// New connections go to the gateway with this server id.
    pub fn send_new_connections_to(&self, server_id: u16) {
        let index = lock(&self.shared.backends)
            .iter()
            .position(|b| b.server_id == server_id)
            .expect("a gateway with that id");
        self.shared.new_to.store(index, Ordering::Relaxed);
    }

    /// The gateway with this server id gets nothing more (its health check failed).
    pub fn mark_down(&self, server_id: u16) {
        for backend in lock(&self.shared.backends).iter_mut() {
            if backend.server_id == server_id {
                backend.up = false;
            }
        }
    }

    /// Per client address seen, the server ids its datagrams were routed to by their CID.
    pub fn routed_by_cid(&self) -> HashMap<SocketAddr, BTreeSet<u16>> {
        lock(&self.shared.routed).clone()
    }
}

impl Drop for QuicBalancer {
    fn drop(&mut self) {
        self.task.abort();
        for reader in lock(&self.shared.readers).iter() {
            reader.abort();
        }
    }
}

impl Shared {
    /// Where `datagram` from `client` goes.
    fn route(&self, client: SocketAddr, datagram: &[u8]) -> Option<SocketAddr> {
        let backends = lock(&self.backends);
        let first_up = || backends.iter().find(|b| b.up).map(|b| b.addr);
        match destination_cid(datagram).and_then(server_id) {
            Some(id) => {
                lock(&self.routed).entry(client).or_default().insert(id);
                match backends.iter().find(|b| b.server_id == id && b.up) {
                    Some(backend) => Some(backend.addr),
                    None => first_up(),
                }
            }
            None => match backends.get(self.new_to.load(Ordering::Relaxed)) {
                Some(backend) if backend.up => Some(backend.addr),
                _ => first_up(),
            },
        }
    }
}

async fn from_clients(shared: Arc<Shared>) {
    let mut buf = vec![0u8; 65_536];
    loop {
        let Ok((n, client)) = shared.listen.recv_from(&mut buf).await else {
            continue;
        };
        let Some(to) = shared.route(client, &buf[..n]) else {
            continue;
        };
        let existing = lock(&shared.flows).get(&client).cloned();
        let upstream = match existing {
            Some(socket) => socket,
            None => {
                let socket = Arc::new(UdpSocket::bind("127.0.0.1:0").await.expect("bind flow"));
                let reader = tokio::spawn(from_gateways(shared.clone(), socket.clone(), client));
                lock(&shared.readers).push(reader.abort_handle());
                lock(&shared.flows).insert(client, socket.clone());
                socket
            }
        };
        let _ = upstream.try_send_to(&buf[..n], to);
    }
}

/// Whatever any gateway sends to `client`'s upstream socket goes back to the client.
async fn from_gateways(shared: Arc<Shared>, socket: Arc<UdpSocket>, client: SocketAddr) {
    let mut buf = vec![0u8; 65_536];
    while let Ok(n) = socket.recv(&mut buf).await {
        let _ = shared.listen.try_send_to(&buf[..n], client);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_destination_cid_is_read_from_both_header_forms() {
        let mut short = vec![0x40];
        short.extend_from_slice(&[FIRST_OCTET, 0, 7, 1, 2, 3, 4, 5, 6, 7, 8, 9]);
        short.extend_from_slice(&[0xaa; 20]);
        assert_eq!(destination_cid(&short).and_then(server_id), Some(7));
        let mut long = vec![0xc0, 0, 0, 0, 1, 8];
        long.extend_from_slice(&[9; 8]);
        assert_eq!(destination_cid(&long), Some(&[9u8; 8][..]));
        assert_eq!(destination_cid(&long).and_then(server_id), None);
        assert_eq!(destination_cid(&[0x40, 1]), None);
    }
}
