//! The command line: one subcommand per scenario, parsed (and checked) before anything
//! connects. Each scenario's flags are its own `…Args` (in `scenarios::*`); the flags they
//! all share are [`Target`](crate::target::Target).

use clap::{Parser, Subcommand};

use crate::scenarios::{chat, churn, compare, connect, db, group, media, social, storm, users};

#[derive(Debug, Parser)]
#[command(
    name = "haberci-bench",
    about = "Load tests against a running Haberci stack"
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Open N sessions at a ramp rate, hold them idle, report connects/s, handshake latency
    /// and the gateway's memory per idle connection.
    Connect(connect::ConnectArgs),
    /// N users, half sending 1:1 messages to the other half at R messages/s for D seconds;
    /// report send→deliver latency, losses, and server CPU per 1,000 deliveries.
    Chat(chat::ChatArgs),
    /// Fan-out: groups of G members (made through the API, cached), the owner sends, every
    /// member must get every message; reports the time until the last member has it.
    Group(group::GroupArgs),
    /// A gateway is killed (SIGKILL) mid-chat; its clients reconnect at once and resume.
    /// Reports the time until all are back and any gap, duplicate or reordering.
    Storm(storm::StormArgs),
    /// The database alone: the worker's insert path through PgBouncer at several batch sizes,
    /// and history-page latency on a generated table of 10 million messages.
    Db(db::DbArgs),
    /// Users connecting and leaving continuously at a level session count.
    Churn(churn::ChurnArgs),
    /// The social half on a generated network (100,000 users, 1,000,000 posts, made once in
    /// the dev database): home pages warm and cold, Postgres statements per page, a
    /// celebrity's post reaching a follower, fan-out throughput, and a 95/5 read/write load
    /// over HTTP/2.
    Social(social::SocialArgs),
    /// Media (#16): upload MB/s and server CPU per MB over HTTP/2 and HTTP/3 (against `cp`
    /// on the same disk), image processing time per megapixel, and concurrent 1 MiB range
    /// reads over HTTP/2.
    Media(media::MediaArgs),
    /// Run `connect` and `chat` against the Haberci stack and against the Socket.IO peer
    /// (bench/peers/socketio, started and stopped here) on the same machine in one run;
    /// report both and their ratios.
    Compare(compare::CompareArgs),
    /// Register the first N bench users (once; they are cached) and exit: the slow part of a
    /// large run's setup, done ahead of the measured run.
    Users(users::UsersArgs),
    /// (internal) A worker process started by the coordinator; reads its job on stdin.
    #[command(hide = true)]
    Shard {
        /// `i/n`, for messages only.
        #[arg(long)]
        shard: String,
    },
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    #[test]
    fn the_cli_is_consistent() {
        use clap::CommandFactory;
        Cli::command().debug_assert();
        let cli = Cli::try_parse_from([
            "haberci-bench",
            "chat",
            "--users",
            "50",
            "--messages",
            "200",
        ])
        .unwrap();
        let Command::Chat(chat) = cli.command else {
            panic!("not chat")
        };
        assert_eq!((chat.users, chat.messages), (50, Some(200)));
        assert_eq!(chat.target.gateways.len(), 1);
    }
}
