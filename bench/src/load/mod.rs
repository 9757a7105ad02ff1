//! The load client. Sessions are planned on the coordinator ([`plan`]: who connects, to which
//! gateway, over what), then run by `haberci-bench shard` child processes ([`coordinator`]
//! starts them and gathers their results; [`protocol`] is what the two say to each other as
//! JSON lines) because the open-files limit is 20,000 per process. A shard ([`shard`]) opens
//! its sessions and runs its scenario's shard side; [`flows`] is the message traffic that
//! `chat`, `group` and `storm` share (paced sends, counted deliveries).
//!
//! API boundary: a shard's work is the scenario's, so `shard::run` is handed it by the
//! caller (`scenarios::shard`) instead of naming the scenarios here.

pub mod coordinator;
pub mod flows;
pub mod plan;
pub mod protocol;
pub mod shard;
