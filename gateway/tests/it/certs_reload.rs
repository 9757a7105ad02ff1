//! Replacing the certificate files changes what new connections see, without dropping the
//! connections already open.

use haberci_certs::CertPaths;
use haberci_testkit::{Backend, Stack, TIMEOUT, tls};
use rustls_pki_types::CertificateDer;
use rustls_pki_types::pem::PemObject;

use crate::support::{self, H3Client, TcpClient, Version, get};

fn first_cert(path: &std::path::Path) -> CertificateDer<'static> {
    CertificateDer::pem_file_iter(path)
        .unwrap()
        .next()
        .unwrap()
        .unwrap()
}

/// Copies `from`'s certificate files over `to`'s, each through a rename (as deploy tools do).
fn replace(from: &CertPaths, to: &CertPaths) {
    for (src, dst) in [
        (from.server_key(), to.server_key()),
        (from.server_cert(), to.server_cert()),
        (from.wt_key(), to.wt_key()),
        (from.wt_cert(), to.wt_cert()),
    ] {
        let tmp = dst.with_extension("incoming");
        std::fs::copy(&src, &tmp).unwrap();
        std::fs::rename(&tmp, &dst).unwrap();
    }
}

#[tokio::test]
async fn new_connections_see_new_certificates_and_open_ones_stay_up() {
    let stack = Stack::start(Backend::Api).await;
    let fresh_dir = tempfile::tempdir().unwrap();
    let fresh = CertPaths::new(fresh_dir.path());
    haberci_certs::ensure(&fresh, time::OffsetDateTime::now_utc()).unwrap();
    let both = || tls::roots(&[&stack.certs.ca_cert(), &fresh.ca_cert()]);

    let mut old_tcp = TcpClient::connect(stack.gateway_tcp, both(), Version::Http1).await;
    let mut old_h3 = H3Client::connect(stack.gateway_udp, both()).await;
    assert_eq!(old_tcp.peer_cert, first_cert(&stack.certs.server_cert()));
    assert_eq!(old_h3.quic.peer_cert(), first_cert(&stack.certs.wt_cert()));

    let mut reloads = stack.gateway.certs.reloads();
    replace(&fresh, &stack.certs);
    let new_server = first_cert(&fresh.server_cert());
    let new_wt = first_cert(&fresh.wt_cert());

    // Wait for the file watcher to swap both in (it may see the files in two polls).
    tokio::time::timeout(TIMEOUT, async {
        while stack.gateway.certs.tcp_cert_der() != new_server
            || stack.gateway.certs.quic_cert_der() != new_wt
        {
            reloads.changed().await.unwrap();
        }
    })
    .await
    .expect("new certificates loaded within the timeout");

    // New handshakes present the new leaves.
    let tcp = TcpClient::connect(stack.gateway_tcp, both(), Version::Http1).await;
    assert_eq!(tcp.peer_cert, new_server);
    let h3 = H3Client::connect(stack.gateway_udp, both()).await;
    assert_eq!(h3.quic.peer_cert(), new_wt);

    // The connections opened before the swap still work.
    assert_eq!(old_tcp.send(get("/healthz")).await.status, 200);
    assert_eq!(old_h3.send(get("/healthz")).await.status, 200);
}

#[tokio::test]
async fn a_broken_certificate_file_keeps_the_current_one_in_service() {
    let stack = Stack::start(Backend::Api).await;
    let before = stack.gateway.certs.tcp_cert_der();
    std::fs::write(stack.certs.server_cert(), "not a certificate").unwrap();
    assert!(!stack.gateway.certs.reload(), "nothing valid to swap in");
    assert_eq!(stack.gateway.certs.tcp_cert_der(), before);
    let roots = support::roots(&stack);
    let mut client = TcpClient::connect(stack.gateway_tcp, roots, Version::Http2).await;
    assert_eq!(client.peer_cert, before);
    assert_eq!(client.send(get("/healthz")).await.status, 200);
}
