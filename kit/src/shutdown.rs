//! Explicit shutdown: one token per process, tripped by SIGINT or SIGTERM. Listeners stop
//! accepting first; tasks finish their current unit of work; sessions are closed with a code.

pub use tokio_util::sync::CancellationToken as Shutdown;

/// A token cancelled when the process receives SIGINT or SIGTERM.
pub fn on_signals() -> Shutdown {
    let token = Shutdown::new();
    let trip = token.clone();
    tokio::spawn(async move {
        let ctrl_c = tokio::signal::ctrl_c();
        #[cfg(unix)]
        {
            let mut term =
                match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
                    Ok(term) => term,
                    Err(err) => {
                        tracing::error!(%err, "cannot listen for SIGTERM");
                        let _ = ctrl_c.await;
                        trip.cancel();
                        return;
                    }
                };
            tokio::select! {
                _ = ctrl_c => {}
                _ = term.recv() => {}
            }
        }
        #[cfg(not(unix))]
        let _ = ctrl_c.await;
        tracing::info!("shutdown requested");
        trip.cancel();
    });
    token
}
