//! [`PerAddress`]: how many connections one client address may hold at once, over TCP and
//! QUIC together. An IPv6 client is counted by its /64, which one subscriber usually holds
//! whole. Addresses in the exempt list (loopback by default: health checks, load tests on one
//! machine, a balancer that does not keep client addresses) are not counted.
//!
//! QUIC connections are counted once their handshake finished: a spoofed source address never
//! gets that far, so it cannot use up a real client's places (docs/OPERATIONS.md).

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::{Arc, Mutex, PoisonError};

use ipnet::IpNet;

pub struct PerAddress {
    limit: usize,
    exempt: Vec<IpNet>,
    held: Mutex<HashMap<IpAddr, usize>>,
}

/// A place held by one connection; dropping it frees the place.
pub struct AddressSlot(Option<(Arc<PerAddress>, IpAddr)>);

impl Drop for AddressSlot {
    fn drop(&mut self) {
        if let Some((limits, key)) = self.0.take() {
            let mut held = limits.held.lock().unwrap_or_else(PoisonError::into_inner);
            if let Some(count) = held.get_mut(&key) {
                *count -= 1;
                if *count == 0 {
                    held.remove(&key);
                }
            }
        }
    }
}

impl PerAddress {
    pub fn new(limit: usize, exempt: Vec<IpNet>) -> Arc<PerAddress> {
        Arc::new(PerAddress {
            limit,
            exempt,
            held: Mutex::new(HashMap::new()),
        })
    }

    /// A place for one more connection from `ip`, or `None`: it holds `limit` already.
    pub fn admit(self: &Arc<Self>, ip: IpAddr) -> Option<AddressSlot> {
        let ip = ip.to_canonical();
        if self.exempt.iter().any(|net| net.contains(&ip)) {
            return Some(AddressSlot(None));
        }
        let key = counted_as(ip);
        let mut held = self.held.lock().unwrap_or_else(PoisonError::into_inner);
        let count = held.entry(key).or_default();
        if *count >= self.limit {
            return None;
        }
        *count += 1;
        Some(AddressSlot(Some((self.clone(), key))))
    }
}

/// IPv4 as it is; IPv6 by its /64.
pub fn counted_as(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V4(_) => ip,
        IpAddr::V6(v6) => IpAddr::V6((u128::from(v6) & (u128::MAX << 64)).into()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(text: &str) -> IpAddr {
        text.parse().unwrap_or(IpAddr::from([0, 0, 0, 0]))
    }

    #[test]
    fn an_address_holds_at_most_the_limit_and_a_closed_connection_frees_its_place() {
        let limits = PerAddress::new(2, vec!["127.0.0.0/8".parse().unwrap_or(IpNet::default())]);
        let a = limits.admit(ip("198.51.100.7"));
        let b = limits.admit(ip("198.51.100.7"));
        assert!(a.is_some() && b.is_some());
        assert!(
            limits.admit(ip("198.51.100.7")).is_none(),
            "a third is refused"
        );
        assert!(
            limits.admit(ip("198.51.100.8")).is_some(),
            "another address is not"
        );
        drop(a);
        assert!(limits.admit(ip("198.51.100.7")).is_some(), "a place freed");
        // One /64 is one subscriber; IPv4-mapped IPv6 is the IPv4 address.
        let v6: Vec<_> = ["2001:db8::1", "2001:db8::2"]
            .map(|a| limits.admit(ip(a)))
            .into();
        assert!(v6.iter().all(Option::is_some));
        assert!(limits.admit(ip("2001:db8::ffff:1")).is_none());
        assert!(limits.admit(ip("2001:db8:0:1::1")).is_some());
        assert!(limits.admit(ip("::ffff:198.51.100.8")).is_some());
        // Exempt addresses are never counted.
        let held: Vec<_> = (0..10).map(|_| limits.admit(ip("127.0.0.1"))).collect();
        assert!(held.iter().all(Option::is_some));
        assert!(
            limits
                .held
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .get(&ip("127.0.0.1"))
                .is_none()
        );
    }
}
