//! Structured logs. `HABERCI_LOG` is an env-filter directive (default `info`);
//! `HABERCI_LOG_FORMAT=json` switches to one JSON object per line (what production ships).

use tracing_subscriber::EnvFilter;

/// Installs the global subscriber. Call once, from `main`.
pub fn init(service: &'static str) {
    let filter = EnvFilter::try_from_env("HABERCI_LOG").unwrap_or_else(|_| EnvFilter::new("info"));
    let json = std::env::var("HABERCI_LOG_FORMAT").is_ok_and(|v| v == "json");
    // Colours only on a terminal: a log file or the journal gets plain text, which people,
    // grep and fail2ban's date detection all read.
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stdout()))
        .with_target(true);
    let result = if json {
        builder.json().flatten_event(true).try_init()
    } else {
        builder.try_init()
    };
    if result.is_ok() {
        tracing::debug!(service, "logging initialised");
    }
}
