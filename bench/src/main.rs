//! `haberci-bench`: see the crate documentation and docs/BENCHMARKS.md.

use std::process::ExitCode;

use clap::Parser;

fn main() -> ExitCode {
    let cli = haberci_bench::cli::Cli::parse();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(err) => {
            eprintln!("haberci-bench: cannot start the runtime: {err}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(haberci_bench::run(cli)) {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::FAILURE,
        Err(err) => {
            eprintln!("haberci-bench: {err:#}");
            ExitCode::FAILURE
        }
    }
}
