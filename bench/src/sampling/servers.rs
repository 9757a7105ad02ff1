//! The server processes a run is charged for, and their CPU and memory before and after.
//!
//! They are found through the dev stack's own pid files (`.dev/run/*.pid`: api, workers, gateways;
//! `.dev/redis/redis.pid`, `.dev/pgbouncer/pgbouncer.pid`, `.dev/pg/data/postmaster.pid` and
//! the postmaster's children), never by name alone: other worktrees and the e2e tests run
//! gateways and Redis servers of their own on this machine, and charging their CPU to a run
//! would be wrong. Processes outside the stack (a gateway started by hand) are added with
//! `--server-pid ROLE=PID`. The stack's watchers are not charged either: Prometheus, the
//! exporters, fail2ban and Pebble (see [`WATCHERS`]) run beside the system under test, not in
//! it, and the peer has none (before this rule, #18's fourth round counted ≈ 30 ms of them per
//! 1,000 deliveries).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use anyhow::{Context, bail};
use serde::{Deserialize, Serialize};

use crate::sampling::procfs;

/// A process and the role it plays (`gateway`, `worker`, `api`, `redis`, `pgbouncer`,
/// `postgres`, or what `--server-pid` said).
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct Server {
    pub role: String,
    pub pid: u32,
}

/// Services `./dev` runs that watch the stack rather than serve it: never sampled.
pub const WATCHERS: &[&str] = &[
    "prometheus",
    "node-exporter",
    "postgres-exporter",
    "redis-exporter",
    "pgbouncer-metrics",
    "fail2ban",
    "pebble",
];

/// Where the server processes are.
#[derive(Clone, Debug)]
pub struct ServerSet {
    fixed: Vec<Server>,
    /// The postmaster: its children (one backend per connection, plus helpers) are sampled
    /// anew each time, since connections come and go.
    postmaster: Option<u32>,
}

impl ServerSet {
    /// The stack under `dev_dir` plus `extra`. Fails if the stack's gateway is not running.
    pub fn discover(dev_dir: &Path, extra: &[Server]) -> anyhow::Result<ServerSet> {
        let mut fixed = Vec::new();
        // `./dev up` names its services after their pid files: `api`, `worker`, `worker2`,
        // `gateway`, `gateway2`, …
        let mut files: Vec<(String, PathBuf)> = std::fs::read_dir(dev_dir.join("run"))
            .into_iter()
            .flatten()
            .flatten()
            .map(|entry| entry.path())
            .filter(|path| path.extension().is_some_and(|ext| ext == "pid"))
            .filter_map(|path| {
                let role = path.file_stem()?.to_str()?.to_owned();
                Some((role, path))
            })
            .filter(|(role, _)| !WATCHERS.contains(&role.as_str()))
            .collect();
        files.sort();
        files.push(("redis".into(), dev_dir.join("redis/redis.pid")));
        files.push(("pgbouncer".into(), dev_dir.join("pgbouncer/pgbouncer.pid")));
        for (role, file) in files {
            if let Some(pid) = procfs::pid_from_file(&file) {
                fixed.push(Server { role, pid });
            }
        }
        if !fixed.iter().any(|s| s.role == "gateway") {
            bail!(
                "no running gateway found through {}; is the stack up (./dev up)?",
                dev_dir.join("run/gateway.pid").display()
            );
        }
        for server in extra {
            if procfs::sample(server.pid).is_none() {
                bail!(
                    "--server-pid {}={}: no such process",
                    server.role,
                    server.pid
                );
            }
            fixed.push(server.clone());
        }
        let postmaster = procfs::pid_from_file(&dev_dir.join("pg/data/postmaster.pid"));
        Ok(ServerSet { fixed, postmaster })
    }

    /// A set of processes given by the caller (the Socket.IO peer's), no postmaster.
    pub fn of(servers: Vec<Server>) -> ServerSet {
        ServerSet {
            fixed: servers,
            postmaster: None,
        }
    }

    /// The processes that hold the client connections (see [`is_edge`]).
    pub fn gateways(&self) -> Vec<Server> {
        self.fixed
            .iter()
            .filter(|s| is_edge(&s.role))
            .cloned()
            .collect()
    }

    /// The pid of a role, if it is in the set.
    pub fn pid_of(&self, role: &str) -> Option<u32> {
        self.fixed.iter().find(|s| s.role == role).map(|s| s.pid)
    }

    /// CPU ticks of every server process now.
    pub fn cpu(&self) -> CpuSnapshot {
        let mut ticks = BTreeMap::new();
        for server in &self.fixed {
            if let Some(s) = procfs::sample(server.pid) {
                ticks.insert(server.pid, (server.role.clone(), s.cpu_ticks));
            }
        }
        if let Some(pm) = self.postmaster {
            if let Some(s) = procfs::sample(pm) {
                ticks.insert(pm, ("postgres".into(), s.cpu_ticks));
            }
            for child in procfs::children(pm) {
                ticks.insert(child.pid, ("postgres".into(), child.cpu_ticks));
            }
        }
        CpuSnapshot { ticks }
    }

    /// Summed RSS of the gateway processes, KiB.
    pub fn gateway_rss_kib(&self) -> anyhow::Result<u64> {
        let mut total = 0;
        for gw in self.gateways() {
            total += procfs::rss_kib(gw.pid)
                .with_context(|| format!("cannot read VmRSS of {} (pid {})", gw.role, gw.pid))?;
        }
        Ok(total)
    }

    /// RSS of each edge process by role, KiB (a process that is gone is left out).
    pub fn edge_rss_by_role(&self) -> BTreeMap<String, u64> {
        self.gateways()
            .into_iter()
            .filter_map(|gw| Some((gw.role, procfs::rss_kib(gw.pid)?)))
            .collect()
    }

    pub fn processes(&self) -> Vec<Server> {
        let mut all = self.fixed.clone();
        all.extend(self.postmaster.map(|pid| Server {
            role: "postgres".into(),
            pid,
        }));
        all
    }

    /// [`ServerSet::processes`] and the postmaster's children alive now (one backend per
    /// connection, plus helpers), each as `postgres`.
    pub fn processes_now(&self) -> Vec<Server> {
        let mut all = self.processes();
        if let Some(pm) = self.postmaster {
            all.extend(procfs::children(pm).into_iter().map(|child| Server {
                role: "postgres".into(),
                pid: child.pid,
            }));
        }
        all
    }
}

/// Whether a role holds client connections: Haberci's gateways (`gateway`, `gateway2`, …) and
/// the Socket.IO peer's nodes (`socketio1`, …; not its Redis). Their memory is what an idle
/// connection costs.
pub fn is_edge(role: &str) -> bool {
    role.starts_with("gateway") || (role.starts_with("socketio") && role != "socketio-redis")
}

/// CPU ticks per pid (with its role) at one instant.
#[derive(Clone, Debug, Default)]
pub struct CpuSnapshot {
    ticks: BTreeMap<u32, (String, u64)>,
}

impl CpuSnapshot {
    /// CPU spent between `self` and `later`, per role, in milliseconds. A process that
    /// appeared in between (a new Postgres backend) counts from zero; one that exited in
    /// between is lost (its CPU is not visible any more).
    pub fn delta_ms(&self, later: &CpuSnapshot, ticks_per_sec: u64) -> BTreeMap<String, f64> {
        let mut per_role: BTreeMap<String, f64> = BTreeMap::new();
        for (pid, (role, after)) in &later.ticks {
            let before = self.ticks.get(pid).map_or(0, |(_, t)| *t);
            let ms = after.saturating_sub(before) as f64 * 1000.0 / ticks_per_sec as f64;
            *per_role.entry(role.clone()).or_default() += ms;
        }
        per_role
    }
}

/// `ROLE=PID`.
pub fn parse_server_pid(text: &str) -> Result<Server, String> {
    let (role, pid) = text
        .split_once('=')
        .ok_or_else(|| format!("{text:?} is not ROLE=PID"))?;
    let pid = pid
        .parse()
        .map_err(|_| format!("{text:?}: {pid:?} is not a pid"))?;
    if role.is_empty() {
        return Err(format!("{text:?}: empty role"));
    }
    Ok(Server {
        role: role.into(),
        pid,
    })
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    #[test]
    fn the_stacks_watchers_are_not_charged_to_a_run() {
        let dev = tempfile::tempdir().unwrap();
        std::fs::create_dir(dev.path().join("run")).unwrap();
        // This process stands in for every service: only the role decides.
        let me = std::process::id();
        for role in [
            "api",
            "gateway",
            "worker",
            "s3",
            "prometheus",
            "node-exporter",
            "fail2ban",
        ] {
            std::fs::write(
                dev.path().join(format!("run/{role}.pid")),
                format!("{me}\n"),
            )
            .unwrap();
        }
        let set = ServerSet::discover(dev.path(), &[]).unwrap();
        let roles: Vec<&str> = set.fixed.iter().map(|s| s.role.as_str()).collect();
        assert_eq!(roles, ["api", "gateway", "s3", "worker"]);
    }

    #[test]
    fn deltas_add_up_per_role_and_count_new_processes_from_zero() {
        let before = CpuSnapshot {
            ticks: [(1, ("gateway".into(), 100)), (2, ("postgres".into(), 50))].into(),
        };
        let after = CpuSnapshot {
            ticks: [
                (1, ("gateway".into(), 150)),
                (2, ("postgres".into(), 60)),
                (3, ("postgres".into(), 5)),
            ]
            .into(),
        };
        let d = before.delta_ms(&after, 100);
        assert_eq!(d["gateway"], 500.0);
        assert_eq!(d["postgres"], 150.0);
    }

    #[test]
    fn edges_are_gateways_and_socketio_nodes() {
        assert!(is_edge("gateway") && is_edge("gateway2") && is_edge("socketio1"));
        assert!(!is_edge("socketio-redis") && !is_edge("redis") && !is_edge("worker"));
    }

    #[test]
    fn server_pids_parse() {
        assert_eq!(
            parse_server_pid("gateway2=42").unwrap(),
            Server {
                role: "gateway2".into(),
                pid: 42
            }
        );
        assert!(parse_server_pid("42").is_err());
        assert!(parse_server_pid("=42").is_err());
        assert!(parse_server_pid("x=y").is_err());
    }
}
