//! `haberci-bench`: load tests against a running Haberci stack (docs/BENCHMARKS.md).
//!
//! Map of the crate: the scenarios, then the shared library they stand on.
//!
//! Invariant: imports go one way. Only `cli` (the flags), this file (the dispatch) and
//! `scenarios/` itself name a scenario; every other module is shared library and never imports
//! one (`grep -rn 'crate::scenarios' bench/src` lists nothing else). Among the shared modules
//! there is no import cycle either: a shard's work is handed to `load::shard::run` by the
//! dispatch (`scenarios::shard`) rather than named there, and the jobs shards receive are
//! plain data in `load::protocol`.
//!
//! - `cli`: the command line, one subcommand per scenario, parsed before anything connects;
//!   `main.rs` is only the runtime around [`run`].
//! - `scenarios/`: one module per scenario — its flags, its coordinator side (plan, drive the
//!   shards, figures, Markdown, plots) and, for those that run sessions, its shard side:
//!   `connect`, `chat`, `group`, `storm`, `churn`, `db`, `compare` (connect's and chat's
//!   measurements against the Socket.IO peer too, the one scenario built on others), `users`
//!   (fills the user pool ahead of a run), and the folders `social` (the home feed on a
//!   generated graph: graph plan, data generator, HTTP/2 load client, phases) and `media`
//!   (uploads over HTTP/2 and HTTP/3, image processing, range reads: a raw-body client,
//!   payloads and quota plan, phases).
//!
//!   Why `social/` and `media/` sit under `scenarios/` and not beside it: they are scenarios
//!   like the others, only too large for one file. With every scenario in one folder, "nothing
//!   outside `scenarios/` imports a scenario" is a single grep; their reusable parts (the
//!   Postgres and Redis counters) moved down to `sampling`, and what stays in their folders is
//!   theirs alone.
//! - `load/`: the load client. `plan` (the system under test, `Side`; participants; which
//!   gateway each session uses, `Edges`; sessions per shard), `coordinator` (starts
//!   `haberci-bench shard` children — the open-files limit is 20,000 per process — talks JSON
//!   lines with them and merges their results), `protocol` (those lines: jobs, reports),
//!   `shard` (a shard process and how it opens sessions), `flows` (paced sends and counted
//!   deliveries, for chat, group and storm).
//! - `report/`: results on disk (JSON, Markdown, SVG), what identifies a run, progress bars;
//!   `latency` (HDR histograms, merged exactly across shards; a leaf, which shards record into
//!   and `protocol` carries), `plots` (SVG charts, plotters, no system fonts), `charts` (the
//!   charts several scenarios draw).
//! - `sampling/`: what the servers cost — `servers` (which processes are the servers, from the
//!   stack's pid files or the peer's children), `procfs` (CPU time and resident memory from
//!   /proc), a per-second `Sampler`; and the stores' counters, `pgstat` (`pg_stat_statements`
//!   deltas) and `resp` (a minimal Redis client: `INFO commandstats`, timelines).
//! - `target`: the flags every scenario shares (where the stack is, how to reach and measure
//!   it, where reports go) and the transport `Mix`.
//! - Clients and processes: `conn` (one session, whatever it speaks: Haberci SDK client or
//!   `socketio`, a Socket.IO v5 / Engine.IO v4 client over WebSocket, sans-IO frame parsing
//!   plus a thin driver), `api` (the small HTTP client of the JSON API), `users` (the bench
//!   user pool: registered once through the API, cached under `.dev/bench/`, refreshed per
//!   run), `peer` (starts and stops the Socket.IO peer, `bench/peers/socketio`), `revival`
//!   (restarts a gateway as it was: `--fresh-gateways`, `storm`'s victim).

pub mod api;
pub mod cli;
pub mod conn;
pub mod load;
pub mod peer;
pub mod report;
pub mod revival;
pub mod sampling;
pub mod scenarios;
pub mod socketio;
pub mod target;
pub mod users;

/// Runs a parsed command. `Ok(false)`: the run finished but `--check` found counts that do
/// not add up.
pub async fn run(cli: cli::Cli) -> anyhow::Result<bool> {
    match cli.command {
        cli::Command::Connect(args) => scenarios::connect::connect(args).await,
        cli::Command::Chat(args) => scenarios::chat::chat(args).await,
        cli::Command::Compare(args) => scenarios::compare::compare(args).await,
        cli::Command::Group(args) => scenarios::group::group(args).await,
        cli::Command::Storm(args) => scenarios::storm::storm(args).await,
        cli::Command::Db(args) => scenarios::db::db(args).await,
        cli::Command::Churn(args) => scenarios::churn::churn(args).await,
        cli::Command::Social(args) => scenarios::social::social(args).await,
        cli::Command::Media(args) => scenarios::media::media(args).await,
        cli::Command::Users(args) => scenarios::users::users(args).await,
        cli::Command::Shard { shard } => {
            load::shard::run(scenarios::shard)
                .await
                .map_err(|err| err.context(format!("shard {shard}")))?;
            Ok(true)
        }
    }
}
