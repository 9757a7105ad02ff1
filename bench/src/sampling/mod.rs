//! What the servers cost while a run goes: CPU time and resident memory from /proc
//! ([`procfs`]) of the processes that are the servers ([`servers`]), sampled every second for
//! the plots (`Sampler`); and the counters of the stack's stores, Postgres statements
//! ([`pgstat`]) and Redis commands ([`resp`]).

pub mod ledger;
pub mod pgstat;
pub mod procfs;
pub mod resp;
pub mod servers;

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use serde::Serialize;

use crate::sampling::servers::{CpuSnapshot, ServerSet};

/// How often the servers are sampled for the plots.
pub(crate) const SAMPLE_EVERY: Duration = Duration::from_secs(1);

/// The servers at one instant of the measured phase, for the plots.
#[derive(Clone, Debug, Serialize)]
pub struct ServerSample {
    /// Seconds since the phase started.
    pub t_s: f64,
    /// What the phase counts (sessions connected, messages delivered) at that instant.
    pub done: u64,
    /// CPU since the previous sample, per role, ms.
    pub cpu_ms: BTreeMap<String, f64>,
    /// Resident memory of the edge processes (gateways, Socket.IO nodes), KiB.
    pub edge_rss_kib: u64,
}

pub(crate) struct Sampler<'a> {
    servers: &'a ServerSet,
    ticks: u64,
    t0: Instant,
    last_at: Instant,
    last: CpuSnapshot,
    pub samples: Vec<ServerSample>,
}

impl<'a> Sampler<'a> {
    pub(crate) fn start(servers: &'a ServerSet) -> Sampler<'a> {
        let now = Instant::now();
        Sampler {
            servers,
            ticks: procfs::clock_ticks_per_sec(),
            t0: now,
            last_at: now,
            last: servers.cpu(),
            samples: Vec::new(),
        }
    }

    /// Samples when a second has passed since the last sample.
    pub(crate) fn tick(&mut self, done: u64) {
        if self.last_at.elapsed() >= SAMPLE_EVERY {
            self.sample(done);
        }
    }

    pub(crate) fn sample(&mut self, done: u64) {
        let now = Instant::now();
        let cpu = self.servers.cpu();
        self.samples.push(ServerSample {
            t_s: (now - self.t0).as_secs_f64(),
            done,
            cpu_ms: self.last.delta_ms(&cpu, self.ticks),
            edge_rss_kib: self.servers.gateway_rss_kib().unwrap_or(0),
        });
        self.last = cpu;
        self.last_at = now;
    }
}
