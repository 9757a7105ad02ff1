//! The `HABERCI_TEST_*` settings: `./dev test` exports them for the services it runs. A missing
//! one fails the test that needs it, naming it.

use std::net::SocketAddr;
use std::path::PathBuf;

/// The value of `key`; panics, naming it, when it is not set.
pub fn var(key: &str) -> String {
    std::env::var(key).unwrap_or_else(|_| {
        panic!("{key} is not set: run the tests through `./dev test`, which starts the stack")
    })
}

/// `HABERCI_TEST_DATABASE_URL`: the test database through PgBouncer.
pub fn database_url() -> String {
    var("HABERCI_TEST_DATABASE_URL")
}

/// `HABERCI_TEST_DIRECT_DATABASE_URL`: the test database, not through PgBouncer.
pub fn direct_database_url() -> String {
    var("HABERCI_TEST_DIRECT_DATABASE_URL")
}

/// `HABERCI_TEST_REDIS_URL`: the shared test Redis.
pub fn redis_url() -> String {
    var("HABERCI_TEST_REDIS_URL")
}

/// The gateway `./dev up` runs: its TCP and UDP addresses on loopback
/// (`HABERCI_TEST_GATEWAY_URL`, `HABERCI_TEST_GATEWAY_UDP`) and its CA (`HABERCI_TEST_CA`).
pub struct DevGateway {
    pub tcp: SocketAddr,
    pub udp: SocketAddr,
    pub ca: PathBuf,
}

pub fn dev_gateway() -> DevGateway {
    let port = |key: &str| -> u16 {
        let text = var(key);
        let port = text.rsplit(':').next().unwrap_or_default();
        port.trim_end_matches('/')
            .parse()
            .unwrap_or_else(|_| panic!("no port in {key}={text:?}"))
    };
    DevGateway {
        tcp: SocketAddr::from(([127, 0, 0, 1], port("HABERCI_TEST_GATEWAY_URL"))),
        udp: SocketAddr::from(([127, 0, 0, 1], port("HABERCI_TEST_GATEWAY_UDP"))),
        ca: PathBuf::from(var("HABERCI_TEST_CA")),
    }
}
