//! `haberci-bench`: see the crate documentation and docs/BENCHMARKS.md.

use std::process::ExitCode;

use clap::Parser;

fn main() -> ExitCode {
    let cli = haberci_bench::cli::Cli::parse();
    // A shard is one of several load processes on the same cores as the servers: one thread
    // each, so its sessions wake no other thread (half its idle CPU was threads parking and
    // unparking). The coordinator keeps a multi-thread runtime.
    let mut builder = if matches!(cli.command, haberci_bench::cli::Command::Shard { .. }) {
        tokio::runtime::Builder::new_current_thread()
    } else {
        tokio::runtime::Builder::new_multi_thread()
    };
    let runtime = match builder.enable_all().build() {
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
