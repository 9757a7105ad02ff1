//! `haberci-gateway`: parses config, sets up logging and the runtime, and runs the gateway.

use std::process::ExitCode;

use haberci_gateway::{Gateway, GatewayConfig};
use haberci_kit::config::EXIT_BAD_CONFIG;

fn main() -> ExitCode {
    haberci_kit::telemetry::init("gateway");
    haberci_kit::crypto::install_crypto_provider();
    let (config, threads) = match haberci_kit::runtime::settings(GatewayConfig::from_env) {
        Ok(read) => read,
        Err(err) => {
            eprintln!("haberci-gateway: {err}");
            return ExitCode::from(EXIT_BAD_CONFIG as u8);
        }
    };
    let runtime = match haberci_kit::runtime::build(threads) {
        Ok(rt) => rt,
        Err(err) => {
            eprintln!("haberci-gateway: cannot start the runtime: {err}");
            return ExitCode::FAILURE;
        }
    };
    let cert_paths = config.tls.cert_paths.clone();
    let quic_cert = config.tls.quic_cert;
    let metrics = match haberci_kit::metrics::install() {
        Ok(metrics) => metrics
            .sampled_by(haberci_gateway::metrics::sample_udp_drops)
            .sampled_by(move || {
                haberci_gateway::metrics::sample_certificates(&cert_paths, quic_cert)
            }),
        Err(err) => {
            eprintln!("haberci-gateway: {err}");
            return ExitCode::FAILURE;
        }
    };
    haberci_gateway::metrics::describe();
    runtime.block_on(async {
        let shutdown = haberci_kit::shutdown::on_signals();
        if let Some(addr) = config.listen.metrics.addr {
            let page = metrics.clone();
            let status = axum::Router::new().route(
                "/",
                axum::routing::get(move || {
                    let page = page.clone();
                    async move {
                        axum::response::Html(haberci_gateway::metrics::status_page(&page.render()))
                    }
                }),
            );
            let router = haberci_kit::metrics::router(metrics, status);
            if let Err(err) = haberci_kit::metrics::serve(addr, router, shutdown.clone()).await {
                eprintln!("haberci-gateway: cannot bind the metrics listener {addr}: {err}");
                return ExitCode::FAILURE;
            }
        }
        match Gateway::start(config, shutdown).await {
            Ok(gateway) => {
                tracing::info!("gateway ready");
                gateway.wait().await;
                tracing::info!("gateway stopped");
                ExitCode::SUCCESS
            }
            Err(err) => {
                tracing::error!(error = format!("{err:#}"), "gateway failed to start");
                eprintln!("haberci-gateway: {err:#}");
                ExitCode::FAILURE
            }
        }
    })
}
