//! UDP sockets for QUIC endpoints that carry many connections.
//!
//! Every connection of a QUIC endpoint shares its one socket, and Linux gives a new UDP socket
//! a receive buffer of `net.core.rmem_default` (208 KiB). A burst towards thousands of
//! connections overflows that in microseconds: the kernel drops datagrams (`netstat -su`,
//! "receive buffer errors"), QUIC retransmits and backs off, and latency climbs by seconds.
//! Measured here: a 10,000-user chat at 5,000 messages/s lost 776,839 datagrams with the
//! default buffers. [`bind`] asks for larger buffers; the kernel caps the request at
//! `net.core.rmem_max` / `wmem_max` (see docs/OPERATIONS.md) unless the process holds
//! `CAP_NET_ADMIN`, in which case [`bind`] forces the size past the cap (`SO_RCVBUFFORCE`), as
//! that limit is meant for unprivileged sockets. [`Bound`] reports what was granted so the
//! caller can say so.
//!
//! A larger buffer turns a short stall of the endpoint's task (a busy core, a burst of
//! handshakes) into queueing instead of loss. Loss is the expensive outcome: every QUIC
//! connection that lost a packet retransmits after its probe timeout, which doubles on each
//! loss, and 100,000 connections doing so at once kept the gateway's socket overflowing
//! (docs/BENCHMARKS.md, "Idle QUIC sessions").

use std::io;
use std::net::{SocketAddr, UdpSocket};

use socket2::{Domain, Protocol, Socket, Type};

/// What a socket got from the kernel: Linux reports the doubled bookkeeping size.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Bound {
    pub recv_buffer: usize,
    pub send_buffer: usize,
    /// Whether a buffer was forced past `net.core.rmem_max` / `wmem_max` (needs
    /// `CAP_NET_ADMIN`).
    pub forced: bool,
}

/// Binds a UDP socket at `addr` with receive and send buffers of `buffer_bytes` each: past the
/// kernel's cap when the process may, else as far as the cap allows. An IPv6 wildcard address
/// is dual-stack, as `std` binds it.
pub fn bind(addr: SocketAddr, buffer_bytes: usize) -> io::Result<(UdpSocket, Bound)> {
    let socket = Socket::new(Domain::for_address(addr), Type::DGRAM, Some(Protocol::UDP))?;
    if addr.is_ipv6() {
        socket.set_only_v6(false)?;
    }
    // Best effort: a smaller buffer still works, and `Bound` tells the caller what it got.
    // Linux books twice the size asked for, so a request it granted in full reads back doubled.
    let wanted = buffer_bytes.saturating_mul(2);
    let mut forced = false;
    let _ = socket.set_recv_buffer_size(buffer_bytes);
    if socket.recv_buffer_size()? < wanted {
        forced |=
            rustix::net::sockopt::set_socket_recv_buffer_size_force(&socket, buffer_bytes).is_ok();
    }
    let _ = socket.set_send_buffer_size(buffer_bytes);
    if socket.send_buffer_size()? < wanted {
        forced |=
            rustix::net::sockopt::set_socket_send_buffer_size_force(&socket, buffer_bytes).is_ok();
    }
    socket.bind(&addr.into())?;
    let bound = Bound {
        recv_buffer: socket.recv_buffer_size()?,
        send_buffer: socket.send_buffer_size()?,
        forced,
    };
    Ok((socket.into(), bound))
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    fn default_recv_buffer() -> usize {
        let socket = UdpSocket::bind("127.0.0.1:0").expect("bind");
        Socket::from(socket).recv_buffer_size().expect("SO_RCVBUF")
    }

    #[test]
    fn buffers_grow_beyond_the_default() {
        let addr = "127.0.0.1:0".parse().expect("address");
        let (socket, bound) = bind(addr, 4 << 20).expect("bind");
        assert_ne!(socket.local_addr().expect("local address").port(), 0);
        let default = default_recv_buffer();
        assert!(
            bound.recv_buffer > default,
            "asked for 4 MiB, got {bound:?} (default {default})"
        );
        assert!(bound.send_buffer > 0);
    }

    fn sysctl(name: &str) -> usize {
        std::fs::read_to_string(format!("/proc/sys/net/core/{name}"))
            .expect("sysctl")
            .trim()
            .parse()
            .expect("a number")
    }

    /// Whether this process holds CAP_NET_ADMIN (bit 12 of the effective set).
    fn has_net_admin() -> bool {
        let status = std::fs::read_to_string("/proc/self/status").expect("status");
        let caps = status
            .lines()
            .find_map(|l| l.strip_prefix("CapEff:"))
            .expect("CapEff");
        let caps = u64::from_str_radix(caps.trim(), 16).expect("hex");
        caps & (1 << 12) != 0
    }

    #[test]
    fn buffers_go_past_the_kernel_cap_only_with_net_admin() {
        let cap = sysctl("rmem_max").max(sysctl("wmem_max"));
        let asked = cap * 2 + (1 << 20);
        let addr = "127.0.0.1:0".parse().expect("address");
        let (_socket, bound) = bind(addr, asked).expect("bind");
        if has_net_admin() {
            assert!(bound.forced, "{bound:?}");
            assert!(
                bound.recv_buffer >= asked * 2,
                "asked {asked}, got {bound:?}"
            );
            assert!(
                bound.send_buffer >= asked * 2,
                "asked {asked}, got {bound:?}"
            );
        } else {
            assert!(!bound.forced, "{bound:?}");
            assert!(bound.recv_buffer <= cap * 2, "cap {cap}, got {bound:?}");
        }
    }

    #[test]
    fn an_ipv6_wildcard_takes_ipv4_too() {
        let addr = "[::]:0".parse().expect("address");
        let (socket, _) = bind(addr, 1 << 20).expect("bind");
        socket
            .set_read_timeout(Some(Duration::from_secs(5)))
            .expect("timeout");
        let port = socket.local_addr().expect("local address").port();
        let sender = UdpSocket::bind("127.0.0.1:0").expect("bind sender");
        sender.send_to(b"ping", ("127.0.0.1", port)).expect("send");
        let mut buf = [0u8; 8];
        let (n, _) = socket.recv_from(&mut buf).expect("an IPv4 datagram");
        assert_eq!(&buf[..n], b"ping");
    }
}
