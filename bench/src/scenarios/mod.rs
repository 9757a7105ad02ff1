//! The scenarios, one module each: its flags (`…Args`, a subcommand in `cli`), its coordinator
//! side (plan the sessions, drive the shards, sample the servers, figures, Markdown and plots)
//! and, for those that run sessions in shard processes, its shard side (`shard`). `social`
//! and `media` are folders: their own clients, data and phases.
//!
//! Invariant: imports go one way. A scenario uses the shared library (`load`, `report`,
//! `sampling`, `target`, the clients); nothing outside `scenarios/` imports a scenario except
//! `cli` (the flags) and `lib.rs` (the dispatch). One scenario may build on another — `compare`
//! runs `connect`'s and `chat`'s measurements — never in a circle.

pub mod chat;
pub mod churn;
pub mod compare;
pub mod connect;
pub mod db;
pub mod group;
pub mod media;
pub mod social;
pub mod storm;
pub mod users;

use std::sync::Arc;

use tokio::sync::mpsc;

use crate::load::protocol::{Job, Report, ShardResult};
use crate::load::shard::Live;

/// A shard's work: its job, run by its scenario's shard side (`load::shard::run` is handed
/// this, so the shard machinery never names a scenario).
pub(crate) async fn shard(
    job: Job,
    live: Arc<Live>,
    out: mpsc::UnboundedSender<Report>,
    go: mpsc::UnboundedReceiver<()>,
) -> anyhow::Result<ShardResult> {
    match job {
        Job::Connect { common, sessions } => {
            connect::shard(common, sessions, &live, &out, go).await
        }
        Job::Chat {
            common,
            pairs,
            timing,
        } => chat::shard(common, pairs, timing, &live, &out, go).await,
        Job::Group {
            common,
            groups,
            timing,
        } => group::shard(common, groups, timing, &live, &out, go).await,
        Job::Storm(job) => storm::shard(*job, &live, &out, go).await,
        Job::Churn(job) => churn::shard(*job, &live, &out, go).await,
    }
}
