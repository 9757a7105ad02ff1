//! `users`: fills the bench user pool ahead of a large run (registration is the slow part of
//! its setup), then exits.

use std::time::Duration;

use clap::Args;
use serde::Serialize;

use crate::load::plan::{Side, participants};
use crate::report;
use crate::target::Target;

#[derive(Debug, Args, Serialize)]
pub struct UsersArgs {
    #[command(flatten)]
    pub target: Target,
    /// Users the pool must hold.
    #[arg(long)]
    pub count: usize,
}

/// `users --count N`: makes the pool hold N registered users, refreshing only expired
/// tokens (a scenario refreshes what it needs for its own run time).
pub async fn users(args: UsersArgs) -> anyhow::Result<bool> {
    let multi = report::progress();
    let (_, stats) = participants(
        &args.target,
        &Side::Haberci,
        args.count,
        Duration::ZERO,
        &multi,
    )
    .await?;
    println!(
        "{} bench users ready: {} registered, {} refreshed, {} logged in, {} reused, in {:.1}s",
        args.count,
        stats.registered,
        stats.refreshed,
        stats.logged_in,
        stats.reused_tokens,
        stats.seconds
    );
    Ok(true)
}
