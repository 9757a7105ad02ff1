//! `haberci-bench`: load tests against a running Haberci stack (docs/BENCHMARKS.md).
//!
//! Map of the crate:
//!
//! - `cli`: the command line (scenarios and their flags), parsed before anything connects.
//! - `scenarios`: what every scenario shares — the system under test (`Side`: the Haberci
//!   stack or the Socket.IO peer), participants, session plans over gateways (`Edges`),
//!   server sampling for the plots — and the coordinator's side of `connect` and `chat`.
//! - `group`, `storm`, `churn`, `db`, `compare`: the other scenarios (each its arguments,
//!   coordinator side, figures and Markdown; `storm` and `churn` also their shard side).
//! - `social`: the home feed and social API on a generated graph (its own folder: the graph
//!   plan, the data generator, an HTTP/2 load client, `pg_stat_statements` deltas, a minimal
//!   RESP client, the phases).
//! - `media`: uploads over HTTP/2 and HTTP/3, image processing per megapixel and concurrent
//!   range reads of `/v1/media` (its own folder: a raw-body HTTP/2 and HTTP/3 client, the
//!   payloads and quota plan, the phases).
//! - `coordinator` / `shard` / `protocol`: the client side runs as several processes (the
//!   open-files limit is 20,000 per process); the coordinator starts `haberci-bench shard`
//!   children and talks JSON lines with them over stdin/stdout.
//! - `conn`: one session, whatever it speaks (Haberci SDK client, or `socketio`: a Socket.IO
//!   v5 / Engine.IO v4 client over WebSocket, sans-IO frame parsing plus a thin driver).
//! - `peer`: starts and stops the Socket.IO peer (`bench/peers/socketio`) for `compare`.
//! - `users`: the bench user pool — registered once through the API, cached under
//!   `.dev/bench/`, refreshed per run; `api`: the small HTTP client it uses.
//! - `servers` / `procfs`: which processes are the servers (from the stack's pid files, or
//!   the peer's children) and their CPU time and resident memory from /proc.
//! - `latency`: HDR histograms, merged exactly across shards; `plots`: SVG charts
//!   (plotters, no system fonts); `report`: JSON, Markdown and plots on disk.

pub mod api;
pub mod churn;
pub mod cli;
pub mod compare;
pub mod conn;
mod coordinator;
pub mod db;
pub mod group;
pub mod latency;
pub mod media;
pub mod peer;
pub mod plots;
pub mod procfs;
pub mod protocol;
mod report;
pub mod scenarios;
pub mod servers;
pub mod shard;
pub mod social;
pub mod socketio;
pub mod storm;
pub mod users;

/// Runs a parsed command. `Ok(false)`: the run finished but `--check` found counts that do
/// not add up.
pub async fn run(cli: cli::Cli) -> anyhow::Result<bool> {
    match cli.command {
        cli::Command::Connect(args) => scenarios::connect(args).await,
        cli::Command::Chat(args) => scenarios::chat(args).await,
        cli::Command::Compare(args) => compare::compare(args).await,
        cli::Command::Group(args) => group::group(args).await,
        cli::Command::Storm(args) => storm::storm(args).await,
        cli::Command::Db(args) => db::db(args).await,
        cli::Command::Churn(args) => churn::churn(args).await,
        cli::Command::Social(args) => social::social(args).await,
        cli::Command::Media(args) => media::media(args).await,
        cli::Command::Users(args) => scenarios::users(args).await,
        cli::Command::Shard { shard } => {
            shard::run()
                .await
                .map_err(|err| err.context(format!("shard {shard}")))?;
            Ok(true)
        }
    }
}
