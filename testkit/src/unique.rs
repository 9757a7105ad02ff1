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

/// A port nobody listens on right now, over TCP and UDP, for a child process to bind.
pub fn free_port() -> u16 {
    loop {
        let port = free_addr().port();
        if UdpSocket::bind(("::", port)).is_ok() && UdpSocket::bind(("127.0.0.1", port)).is_ok() {
            return port;
        }
    }
}
