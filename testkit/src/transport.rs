//! The three realtime transports a client can reach a gateway with; tests that must hold on
//! each iterate [`TransportKind::ALL`].

use std::net::SocketAddr;

/// Which transport, without where: [`TransportKind::client_transport`] adds the addresses.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TransportKind {
    /// Native QUIC (ALPN `haberci/1`) on the UDP port.
    Quic,
    /// HTTP/3 CONNECT on `/v1/rt` on the UDP port, as a browser connects.
    WebTransport,
    /// `wss:///v1/ws` on the TCP port.
    WebSocket,
}

impl TransportKind {
    pub const ALL: [TransportKind; 3] = [
        TransportKind::Quic,
        TransportKind::WebTransport,
        TransportKind::WebSocket,
    ];

    /// Where the SDK dials this transport on a gateway listening on `tcp` and `udp`.
    pub fn client_transport(self, tcp: SocketAddr, udp: SocketAddr) -> haberci_client::Transport {
        match self {
            TransportKind::Quic => haberci_client::Transport::Quic {
                addr: format!("localhost:{}", udp.port()),
            },
            TransportKind::WebTransport => haberci_client::Transport::WebTransport {
                url: format!(
                    "https://localhost:{}{}",
                    udp.port(),
                    haberci_wire::WEBTRANSPORT_PATH
                ),
            },
            TransportKind::WebSocket => haberci_client::Transport::WebSocket {
                url: format!("wss://localhost:{}/v1/ws", tcp.port()),
            },
        }
    }
}

impl std::fmt::Display for TransportKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            TransportKind::Quic => "native QUIC",
            TransportKind::WebTransport => "WebTransport",
            TransportKind::WebSocket => "WebSocket",
        })
    }
}
