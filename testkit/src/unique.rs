//! What a test must not share with the tests running beside it: user names, Redis stream
//! prefixes, secrets, ports.

use std::net::{SocketAddr, TcpListener, UdpSocket};

/// `{prefix}_` and 12 random hex digits: a valid username for a `prefix` of at most 19
/// characters `a-z 0-9 _` starting with a letter.
pub fn name(prefix: &str) -> String {
    format!(
        "{prefix}_{}",
        &uuid::Uuid::new_v4().simple().to_string()[..12]
    )
}

/// A Redis stream prefix of its own (`{tag}{12 hex}:msg:in:`), so parallel stacks never read
/// each other's stream entries.
pub fn stream_prefix(tag: &str) -> String {
    format!(
        "{tag}{}:msg:in:",
        &uuid::Uuid::new_v4().simple().to_string()[..12]
    )
}

/// 64 random hex digits: an internal API secret.
pub fn secret() -> String {
    format!(
        "{}{}",
        uuid::Uuid::new_v4().simple(),
        uuid::Uuid::new_v4().simple()
    )
}

/// A loopback address nothing listens on (bound, then released).
pub fn free_addr() -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    listener.local_addr().unwrap()
}

/// A port for a child process to bind, over TCP and UDP: nobody listens on it now, no other
/// test process on this machine is handed it while this one runs, and the kernel never hands
/// it out by itself.
///
/// A port chosen by binding port 0 and releasing it comes from the ephemeral range, which
/// the kernel also gives every outgoing connection and every other `bind(0)`: between the
/// release and the child's bind, a parallel test's client could take it. So the port is
/// drawn below the ephemeral range instead, and reserved across processes by an exclusive
/// lock on a file named after it, held until this process exits.
pub fn free_port() -> u16 {
    let (low, span) = port_window();
    for _ in 0..10_000 {
        let draw = u16::from_le_bytes(uuid::Uuid::new_v4().as_bytes()[..2].try_into().unwrap());
        let port = low + draw % span;
        if reserve(port)
            && TcpListener::bind(("127.0.0.1", port)).is_ok()
            && UdpSocket::bind(("::", port)).is_ok()
            && UdpSocket::bind(("127.0.0.1", port)).is_ok()
        {
            return port;
        }
    }
    panic!(
        "no free port in {low}..{} after 10,000 tries: are the locks in {} writable?",
        u32::from(low) + u32::from(span),
        ports_dir().display()
    );
}

/// The ports `free_port` draws from: `RESERVED_FLOOR` up to the kernel's ephemeral range, or
/// above it when it starts too low to leave room below.
fn port_window() -> (u16, u16) {
    let (low, high) = ephemeral_range();
    if low >= RESERVED_FLOOR + 1_000 {
        (RESERVED_FLOOR, low - RESERVED_FLOOR)
    } else if high <= u16::MAX - 1_000 {
        (high + 1, u16::MAX - high)
    } else {
        panic!(
            "the ephemeral port range {low}-{high} leaves no room for test ports \
             (/proc/sys/net/ipv4/ip_local_port_range)"
        );
    }
}

/// The lowest port `free_port` hands out: above the well-known services and the dev stack's
/// fixed ports below it.
const RESERVED_FLOOR: u16 = 20_000;

/// The kernel's ephemeral port range (32768–60999 when it cannot be read).
fn ephemeral_range() -> (u16, u16) {
    std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
        .ok()
        .and_then(|range| {
            let mut bounds = range.split_whitespace().map(|b| b.parse::<u16>().ok());
            Some((bounds.next()??, bounds.next()??))
        })
        .unwrap_or((32_768, 60_999))
}

/// Where the port locks live: one directory for every user of the machine.
fn ports_dir() -> std::path::PathBuf {
    std::env::temp_dir().join("haberci-test-ports")
}

/// Takes `port` for this process, unless another process holds it. The lock lives as long as
/// the process: a test's children are gone by then.
fn reserve(port: u16) -> bool {
    static HELD: std::sync::Mutex<Vec<std::fs::File>> = std::sync::Mutex::new(Vec::new());
    use std::os::unix::fs::PermissionsExt;
    let dir = ports_dir();
    if !dir.exists() {
        // Sticky and open to all, like /tmp: test runs of several users share the locks.
        if std::fs::create_dir_all(&dir).is_err() {
            return false;
        }
        let _ = std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o1777));
    }
    let Ok(file) = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(dir.join(port.to_string()))
    else {
        return false;
    };
    if rustix::fs::flock(&file, rustix::fs::FlockOperation::NonBlockingLockExclusive).is_err() {
        return false;
    }
    HELD.lock().unwrap_or_else(|e| e.into_inner()).push(file);
    true
}

#[cfg(test)]
mod tests {
    use std::collections::HashSet;

    use super::*;

    #[test]
    fn a_port_is_handed_out_once_and_never_from_the_ephemeral_range() {
        let (low, high) = ephemeral_range();
        let ports: HashSet<u16> = (0..50).map(|_| free_port()).collect();
        assert_eq!(ports.len(), 50, "each call hands out a port of its own");
        assert!(ports.iter().all(|p| !(low..=high).contains(p)));
        let held = *ports.iter().next().unwrap();
        assert!(
            !reserve(held),
            "a port held by a process is not reserved again"
        );
    }
}
