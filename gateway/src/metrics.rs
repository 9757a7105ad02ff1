//! What the gateway counts, in one place: every metric it records is a function here, so the
//! names, their units and their few label values are read in one file (docs/OPERATIONS.md,
//! "Metrics", lists them for operators). Labels take fixed values only: a transport, a frame
//! kind, a close code, a handshake outcome (HTTP requests are counted by `haberci_kit::metrics`).

use std::time::Duration;

use metrics::{counter, describe_counter, describe_gauge, describe_histogram, gauge, histogram};

/// The transport a realtime session runs on.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Transport {
    Quic,
    WebTransport,
    WebSocket,
}

impl Transport {
    pub const fn name(self) -> &'static str {
        match self {
            Transport::Quic => "quic",
            Transport::WebTransport => "webtransport",
            Transport::WebSocket => "websocket",
        }
    }
}

/// Which listener a TLS handshake came in on.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Listener {
    Tcp,
    Quic,
}

/// How a TLS handshake ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Handshake {
    Ok,
    Failed,
    TimedOut,
    /// Refused before any crypto: too many handshakes in flight (QUIC admission control), or
    /// too many connections from one address.
    Refused,
    /// Sent a QUIC Retry: the client must prove its address before its handshake starts.
    Retried,
}

/// Gives every metric its help text and unit; called once at start.
pub fn describe() {
    describe_gauge!(
        "haberci_gateway_sessions",
        "Realtime sessions open, by transport."
    );
    describe_counter!(
        "haberci_gateway_sessions_opened_total",
        "Realtime sessions begun, by transport."
    );
    describe_counter!(
        "haberci_gateway_session_closes_total",
        "Realtime sessions ended, by close code (`client_gone` when the client left without one)."
    );
    describe_counter!(
        "haberci_gateway_frames_received_total",
        "Frames read from clients, by kind."
    );
    describe_counter!(
        "haberci_gateway_frames_sent_total",
        "Frames written to clients, by kind."
    );
    describe_counter!(
        "haberci_gateway_tls_tickets_total",
        "QUIC TLS session tickets, by outcome: sealed, opened (the session resumes), unknown_key, refused."
    );
    describe_counter!(
        "haberci_gateway_handshakes_total",
        "TLS handshakes by listener (tcp, quic) and result (ok, failed, timed_out, refused)."
    );
    describe_counter!(
        "haberci_gateway_quic_callbacks_total",
        "Stateless resets sent unprompted to the QUIC clients of this gateway's previous life (its roster), so they reconnect at once."
    );
    describe_histogram!(
        "haberci_gateway_send_seconds",
        metrics::Unit::Seconds,
        "From a Send read from the client to its Sent written back (persisted)."
    );
    describe_histogram!(
        "haberci_gateway_delivery_seconds",
        metrics::Unit::Seconds,
        "From a live message's server timestamp (when its batch was stored) to its arrival at a recipient's session (backlog pages excluded)."
    );
    describe_counter!(
        "haberci_gateway_revocations_total",
        "Sessions on this gateway closed because their login session was revoked."
    );
    describe_gauge!(
        "haberci_gateway_certificate_expiry_timestamp_seconds",
        "When the certificate on disk expires (Unix seconds), by use: tcp (TLS over TCP and HTTP/3), webtransport (the short-lived QUIC leaf)."
    );
    describe_counter!(
        "haberci_gateway_udp_receive_buffer_errors_total",
        "UDP datagrams the kernel dropped for a full receive buffer (host-wide, IPv4 + IPv6; /proc/net/snmp)."
    );
}

/// A realtime session, counted in `haberci_gateway_sessions` while this lives.
pub struct OpenSession(Transport);

impl OpenSession {
    pub fn new(transport: Transport) -> OpenSession {
        counter!("haberci_gateway_sessions_opened_total", "transport" => transport.name())
            .increment(1);
        gauge!("haberci_gateway_sessions", "transport" => transport.name()).increment(1.0);
        OpenSession(transport)
    }
}

impl Drop for OpenSession {
    fn drop(&mut self) {
        gauge!("haberci_gateway_sessions", "transport" => self.0.name()).decrement(1.0);
    }
}

pub fn session_closed(code: &'static str) {
    counter!("haberci_gateway_session_closes_total", "code" => code).increment(1);
}

pub fn frame_received(kind: &'static str) {
    counter!("haberci_gateway_frames_received_total", "kind" => kind).increment(1);
}

pub fn frame_sent(kind: &'static str) {
    counter!("haberci_gateway_frames_sent_total", "kind" => kind).increment(1);
}

/// Resets sent to a previous life's clients (`edge::roster::call_back`).
pub fn callbacks(count: u64) {
    counter!("haberci_gateway_quic_callbacks_total").increment(count);
}

pub fn handshake(listener: Listener, result: Handshake) {
    let listener = match listener {
        Listener::Tcp => "tcp",
        Listener::Quic => "quic",
    };
    let result = match result {
        Handshake::Ok => "ok",
        Handshake::Failed => "failed",
        Handshake::TimedOut => "timed_out",
        Handshake::Refused => "refused",
        Handshake::Retried => "retried",
    };
    counter!("haberci_gateway_handshakes_total", "listener" => listener, "result" => result)
        .increment(1);
}

/// What became of a QUIC session ticket (`edge::tickets`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Ticket {
    Sealed,
    /// Presented and opened: the session resumes.
    Opened,
    /// Presented, sealed with a key this gateway does not hold (too old, or another process's
    /// own key).
    UnknownKey,
    /// Presented, damaged or forged.
    Refused,
}

pub fn ticket(outcome: Ticket) {
    let outcome = match outcome {
        Ticket::Sealed => "sealed",
        Ticket::Opened => "opened",
        Ticket::UnknownKey => "unknown_key",
        Ticket::Refused => "refused",
    };
    counter!("haberci_gateway_tls_tickets_total", "outcome" => outcome).increment(1);
}

pub fn send_answered(took: Duration) {
    histogram!("haberci_gateway_send_seconds").record(took.as_secs_f64());
}

pub fn delivered(after: Duration) {
    histogram!("haberci_gateway_delivery_seconds").record(after.as_secs_f64());
}

pub fn revoked() {
    counter!("haberci_gateway_revocations_total").increment(1);
}

/// Reads when the gateway's certificates expire into their gauge; called on every scrape.
pub fn sample_certificates(paths: &haberci_certs::CertPaths, quic: crate::config::QuicCert) {
    // With `HABERCI_QUIC_CERT=tls` no WebTransport leaf is served: a stale `wt.pem` on disk
    // must not page anyone.
    let webtransport =
        (quic == crate::config::QuicCert::WebTransport).then(|| ("webtransport", paths.wt_cert()));
    for (usage, path) in std::iter::once(("tcp", paths.server_cert())).chain(webtransport) {
        if let Some(not_after) = haberci_certs::not_after(&path) {
            gauge!("haberci_gateway_certificate_expiry_timestamp_seconds", "usage" => usage)
                .set(not_after.unix_timestamp() as f64);
        }
    }
}

/// Reads the kernel's UDP receive-buffer drops (IPv4 and IPv6) into their counter; called on
/// every scrape.
pub fn sample_udp_drops() {
    let v4 = std::fs::read_to_string("/proc/net/snmp")
        .ok()
        .and_then(|text| snmp_udp_rcvbuf_errors(&text));
    let v6 = std::fs::read_to_string("/proc/net/snmp6")
        .ok()
        .and_then(|text| snmp6_udp_rcvbuf_errors(&text));
    if v4.is_some() || v6.is_some() {
        counter!("haberci_gateway_udp_receive_buffer_errors_total")
            .absolute(v4.unwrap_or(0) + v6.unwrap_or(0));
    }
}

/// `RcvbufErrors` of the `Udp:` table in /proc/net/snmp (a header line, then a value line).
fn snmp_udp_rcvbuf_errors(text: &str) -> Option<u64> {
    let mut lines = text.lines().filter(|line| line.starts_with("Udp: "));
    let header = lines.next()?;
    let values = lines.next()?;
    let at = header
        .split_whitespace()
        .position(|name| name == "RcvbufErrors")?;
    values.split_whitespace().nth(at)?.parse().ok()
}

/// `Udp6RcvbufErrors` in /proc/net/snmp6 (one `name value` pair per line).
fn snmp6_udp_rcvbuf_errors(text: &str) -> Option<u64> {
    text.lines().find_map(|line| {
        let mut parts = line.split_whitespace();
        (parts.next()? == "Udp6RcvbufErrors").then(|| parts.next()?.parse().ok())?
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn receive_buffer_errors_are_read_from_both_tables() {
        let snmp = "Ip: Forwarding DefaultTTL\nIp: 1 64\n\
            Udp: InDatagrams NoPorts InErrors OutDatagrams RcvbufErrors SndbufErrors\n\
            Udp: 10 2 7 12 5 0\n";
        assert_eq!(snmp_udp_rcvbuf_errors(snmp), Some(5));
        let snmp6 = "Udp6InDatagrams                 \t41\nUdp6RcvbufErrors                \t3\n";
        assert_eq!(snmp6_udp_rcvbuf_errors(snmp6), Some(3));
        assert_eq!(snmp_udp_rcvbuf_errors("Ip: a\nIp: 1\n"), None);
        assert_eq!(snmp6_udp_rcvbuf_errors(""), None);
    }
}

/// The families the status page shows, in this order.
const STATUS_FAMILIES: &[&str] = &[
    "haberci_gateway_sessions",
    "haberci_gateway_sessions_opened_total",
    "haberci_gateway_session_closes_total",
    "haberci_gateway_handshakes_total",
    "haberci_gateway_tls_tickets_total",
    "haberci_gateway_revocations_total",
    "haberci_gateway_certificate_expiry_timestamp_seconds",
    "haberci_gateway_udp_receive_buffer_errors_total",
    "process_resident_memory_bytes",
    "process_open_fds",
    "process_cpu_seconds_total",
];

/// The gateway's status page (`GET /` on the metrics listener), for people without Grafana:
/// the current value of the metrics above, read from `rendered` (the Prometheus text of this
/// process), as a plain HTML table.
pub fn status_page(rendered: &str) -> String {
    let mut rows = String::new();
    for family in STATUS_FAMILIES {
        for line in rendered.lines() {
            let Some(rest) = line.strip_prefix(family) else {
                continue;
            };
            // `name value` or `name{labels} value`, and not a longer name with this prefix.
            let (labels, value) = match rest.chars().next() {
                Some('{') => match rest.rsplit_once("} ") {
                    Some((labels, value)) => (&labels[1..], value),
                    None => continue,
                },
                Some(' ') => ("", rest.trim_start()),
                _ => continue,
            };
            rows.push_str(&format!(
                "<tr><td>{}</td><td>{}</td><td>{}</td></tr>\n",
                escape(family),
                escape(labels),
                escape(value)
            ));
        }
    }
    format!(
        "<!doctype html>\n<html><head><meta charset=\"utf-8\"><title>Haberci gateway</title></head>\n\
         <body><h1>Haberci gateway</h1>\n<p>Every metric: <a href=\"/metrics\">/metrics</a>. \
         Certificate expiry in Unix seconds.</p>\n\
         <table border=\"1\" cellpadding=\"4\">\n<tr><th>metric</th><th>labels</th><th>value</th></tr>\n\
         {rows}</table></body></html>\n"
    )
}

fn escape(text: &str) -> String {
    text.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

#[cfg(test)]
mod status_tests {
    use super::status_page;

    #[test]
    fn the_status_page_shows_the_chosen_families_escaped_and_nothing_else() {
        let rendered = "# HELP haberci_gateway_sessions Realtime sessions open.\n\
            haberci_gateway_sessions{transport=\"quic\"} 12\n\
            haberci_gateway_sessions_opened_total{transport=\"quic\"} 40\n\
            haberci_gateway_frames_sent_total{kind=\"message\"} 9\n\
            process_open_fds 31\n";
        let page = status_page(rendered);
        assert!(
            page.contains(
                "<td>haberci_gateway_sessions</td><td>transport=&quot;quic&quot;</td><td>12</td>"
            ),
            "{page}"
        );
        assert!(page.contains("<td>haberci_gateway_sessions_opened_total</td><td>transport=&quot;quic&quot;</td><td>40</td>"), "{page}");
        assert!(
            page.contains("<td>process_open_fds</td><td></td><td>31</td>"),
            "{page}"
        );
        assert!(!page.contains("frames_sent"), "not a status family: {page}");
        // `haberci_gateway_sessions` must not also list `…_sessions_opened_total` as its own.
        assert_eq!(
            page.matches("<td>haberci_gateway_sessions</td>").count(),
            1,
            "{page}"
        );
    }
}
