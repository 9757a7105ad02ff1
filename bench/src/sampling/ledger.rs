//! The cost ledger of a measured phase (#18): what the servers asked of the kernel, of Redis
//! and of Postgres, per 1,000 deliveries (or per connect). Counts, not times: two runs of one
//! build give nearly the same ledger on a busy or a quiet machine, so a change is judged by what
//! it removes.
//!
//! - Per server role: context switches (voluntary, involuntary) summed over threads (and over
//!   Postgres's backends alive at both ends), and `syscr`/`syscw` of `/proc/<pid>/io`: calls
//!   through the VFS (`read`, `write`, …); socket `recv*`/`send*` calls bypass it, so these
//!   are a lower bound of the system calls.
//! - Redis: calls by command (`INFO commandstats`), when `HABERCI_BENCH_REDIS_URL` is set.
//! - Postgres: transactions (`pg_stat_database`), statements (`pg_stat_statements`, the
//!   heaviest by calls) and WAL bytes (`pg_stat_wal`), when `HABERCI_BENCH_DATABASE_URL` is set.
//! - Network: UDP datagrams and TCP segments of the whole machine (`/proc/net/snmp{,6}`); on
//!   loopback each packet is counted out and in, and the load client's share is in it.

use std::collections::BTreeMap;

use serde::Serialize;
use sqlx::{Connection, PgConnection};

use crate::sampling::pgstat;
use crate::sampling::procfs::{self, KernelCounts, NetCounts};
use crate::sampling::resp::Redis;
use crate::sampling::servers::ServerSet;

/// Where the stores are, for their counters (both optional).
#[derive(Clone, Debug, Default)]
pub struct Stores {
    pub redis_url: Option<String>,
    pub database_url: Option<String>,
}

impl Stores {
    /// From `HABERCI_BENCH_REDIS_URL` and `HABERCI_BENCH_DATABASE_URL` (`./dev bench` sets both).
    pub fn from_env() -> Stores {
        let var = |name| std::env::var(name).ok().filter(|v: &String| !v.is_empty());
        Stores {
            redis_url: var("HABERCI_BENCH_REDIS_URL"),
            database_url: var("HABERCI_BENCH_DATABASE_URL"),
        }
    }
}

/// Cumulative counters at one instant.
pub struct Snapshot {
    kernel: BTreeMap<String, KernelCounts>,
    net: NetCounts,
    redis: Option<BTreeMap<String, u64>>,
    pg: Option<PgCounts>,
}

struct PgCounts {
    transactions: i64,
    wal_bytes: i64,
    statements: pgstat::Snapshot,
}

/// Reads every counter. A store that cannot be read is left out of the ledger (and logged).
pub async fn snapshot(servers: &ServerSet, stores: &Stores) -> Snapshot {
    let mut kernel: BTreeMap<String, KernelCounts> = BTreeMap::new();
    for server in servers.processes_now() {
        if let Some(counts) = procfs::kernel_counts(server.pid) {
            let entry = kernel.entry(server.role).or_default();
            entry.voluntary_switches += counts.voluntary_switches;
            entry.involuntary_switches += counts.involuntary_switches;
            entry.read_syscalls += counts.read_syscalls;
            entry.write_syscalls += counts.write_syscalls;
        }
    }
    let redis = match &stores.redis_url {
        Some(url) => match redis_calls(url).await {
            Ok(calls) => Some(calls),
            Err(err) => {
                eprintln!("ledger: no Redis command counts: {err}");
                None
            }
        },
        None => None,
    };
    let pg = match &stores.database_url {
        Some(url) => match pg_counts(url).await {
            Ok(counts) => Some(counts),
            Err(err) => {
                eprintln!("ledger: no Postgres counts: {err}");
                None
            }
        },
        None => None,
    };
    Snapshot {
        kernel,
        net: procfs::net_counts(),
        redis,
        pg,
    }
}

async fn redis_calls(url: &str) -> anyhow::Result<BTreeMap<String, u64>> {
    let mut redis = Redis::connect(url).await?;
    Ok(redis.command_calls().await?.into_iter().collect())
}

async fn pg_counts(url: &str) -> anyhow::Result<PgCounts> {
    let mut conn = PgConnection::connect(url).await?;
    let (transactions,): (i64,) = sqlx::query_as(
        "SELECT (xact_commit + xact_rollback)::bigint FROM pg_stat_database
         WHERE datname = current_database()",
    )
    .fetch_one(&mut conn)
    .await?;
    let (wal_bytes,): (i64,) = sqlx::query_as("SELECT wal_bytes::bigint FROM pg_stat_wal")
        .fetch_one(&mut conn)
        .await?;
    let statements = pgstat::snapshot(&mut conn).await?;
    let _ = conn.close().await;
    Ok(PgCounts {
        transactions,
        wal_bytes,
        statements,
    })
}

/// What a phase cost, per [`Ledger::per`] units.
#[derive(Clone, Debug, Serialize, PartialEq)]
pub struct Ledger {
    /// What was counted (`deliveries`, `connects`) and how many.
    pub unit: &'static str,
    pub units: u64,
    /// Every figure below is per this many units (1,000 deliveries, 1 connect).
    pub per: u64,
    pub by_role: BTreeMap<String, RoleCosts>,
    pub udp_datagrams: f64,
    pub tcp_segments: f64,
    /// `None`: Redis not measured.
    pub redis_commands: Option<f64>,
    pub redis_by_command: BTreeMap<String, f64>,
    pub pg_transactions: Option<f64>,
    pub pg_statements: Option<f64>,
    pub wal_bytes: Option<f64>,
    /// The statements with the most calls: (statement, calls per `per` units).
    pub pg_top: Vec<(String, f64)>,
}

#[derive(Clone, Debug, Default, Serialize, PartialEq)]
pub struct RoleCosts {
    pub voluntary_switches: f64,
    pub involuntary_switches: f64,
    pub read_syscalls: f64,
    pub write_syscalls: f64,
}

impl Ledger {
    /// The difference of two snapshots, scaled to `per` of `units`.
    pub fn between(
        before: &Snapshot,
        after: &Snapshot,
        unit: &'static str,
        units: u64,
        per: u64,
    ) -> Ledger {
        let scale = |n: f64| {
            if units == 0 {
                0.0
            } else {
                n * per as f64 / units as f64
            }
        };
        let diff = |a: u64, b: u64| scale(a.saturating_sub(b) as f64);
        let by_role = after
            .kernel
            .iter()
            .map(|(role, a)| {
                let b = before.kernel.get(role).copied().unwrap_or_default();
                let costs = RoleCosts {
                    voluntary_switches: diff(a.voluntary_switches, b.voluntary_switches),
                    involuntary_switches: diff(a.involuntary_switches, b.involuntary_switches),
                    read_syscalls: diff(a.read_syscalls, b.read_syscalls),
                    write_syscalls: diff(a.write_syscalls, b.write_syscalls),
                };
                (role.clone(), costs)
            })
            .collect();
        let (mut redis_commands, mut redis_by_command) = (None, BTreeMap::new());
        if let (Some(b), Some(a)) = (&before.redis, &after.redis) {
            for (command, calls) in a {
                // The ledger's own INFO calls are not the servers' work.
                if command == "info" {
                    continue;
                }
                let n = calls.saturating_sub(b.get(command).copied().unwrap_or(0));
                if n > 0 {
                    redis_by_command.insert(command.clone(), scale(n as f64));
                }
            }
            redis_commands = Some(redis_by_command.values().sum());
        }
        let (mut pg_transactions, mut pg_statements, mut wal_bytes, mut pg_top) =
            (None, None, None, Vec::new());
        if let (Some(b), Some(a)) = (&before.pg, &after.pg) {
            // Less the ledger's own: one transaction per snapshot query in between.
            pg_transactions = Some(scale((a.transactions - b.transactions - 4).max(0) as f64));
            wal_bytes = Some(scale((a.wal_bytes - b.wal_bytes).max(0) as f64));
            let mut calls: Vec<(String, i64)> = a
                .statements
                .iter()
                .filter_map(|(key, counter)| {
                    let before = b.statements.get(key).map_or(0, |c| c.calls);
                    let n = counter.calls - before;
                    let own = counter.query.contains("pg_stat_");
                    (n > 0 && !own).then(|| (pgstat::one_line(&counter.query, 120), n))
                })
                .collect();
            pg_statements = Some(scale(calls.iter().map(|(_, n)| *n as f64).sum()));
            calls.sort_by_key(|(_, n)| std::cmp::Reverse(*n));
            pg_top = calls
                .into_iter()
                .take(8)
                .map(|(statement, n)| (statement, scale(n as f64)))
                .collect();
        }
        Ledger {
            unit,
            units,
            per,
            by_role,
            udp_datagrams: diff(
                after.net.udp_in + after.net.udp_out,
                before.net.udp_in + before.net.udp_out,
            ),
            tcp_segments: diff(
                after.net.tcp_in + after.net.tcp_out,
                before.net.tcp_in + before.net.tcp_out,
            ),
            redis_commands,
            redis_by_command,
            pg_transactions,
            pg_statements,
            wal_bytes,
            pg_top,
        }
    }

    /// The ledger as a Markdown section.
    pub fn markdown(&self) -> String {
        let per = if self.per == 1 {
            format!("per {}", self.unit.trim_end_matches('s'))
        } else {
            format!("per {} {}", self.per, self.unit)
        };
        let mut out = format!(
            "### Cost ledger ({per}; {} {} counted)\n\n",
            self.units, self.unit
        );
        out.push_str("| role | voluntary switches | involuntary switches | VFS reads (syscr) | VFS writes (syscw) |\n|---|---:|---:|---:|---:|\n");
        for (role, c) in &self.by_role {
            out.push_str(&format!(
                "| {role} | {:.1} | {:.1} | {:.1} | {:.1} |\n",
                c.voluntary_switches, c.involuntary_switches, c.read_syscalls, c.write_syscalls
            ));
        }
        out.push_str(&format!(
            "\nMachine-wide packets (loopback: counted out and in, load client included): {:.1} UDP datagrams, {:.1} TCP segments.\n",
            self.udp_datagrams, self.tcp_segments
        ));
        match self.redis_commands {
            Some(total) => {
                let by: Vec<String> = self
                    .redis_by_command
                    .iter()
                    .map(|(c, n)| format!("{c} {n:.1}"))
                    .collect();
                out.push_str(&format!(
                    "\nRedis commands: {total:.1} ({}).\n",
                    by.join(", ")
                ));
            }
            None => {
                out.push_str("\nRedis commands: not measured (HABERCI_BENCH_REDIS_URL unset).\n")
            }
        }
        match (self.pg_transactions, self.pg_statements, self.wal_bytes) {
            (Some(tx), Some(statements), Some(wal)) => {
                out.push_str(&format!(
                    "\nPostgres: {tx:.1} transactions, {statements:.1} statements, {wal:.0} WAL bytes. Most called:\n\n"
                ));
                for (statement, calls) in &self.pg_top {
                    out.push_str(&format!("- {calls:.1} × `{statement}`\n"));
                }
            }
            _ => out.push_str("\nPostgres: not measured (HABERCI_BENCH_DATABASE_URL unset).\n"),
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn snapshot(switches: u64, udp: u64, zadd: u64, tx: i64) -> Snapshot {
        let mut kernel = BTreeMap::new();
        kernel.insert(
            "gateway".to_owned(),
            KernelCounts {
                voluntary_switches: switches,
                involuntary_switches: 0,
                read_syscalls: 2 * switches,
                write_syscalls: switches,
            },
        );
        let mut statements = pgstat::Snapshot::new();
        statements.insert(
            (1, 1),
            pgstat::Counter {
                calls: tx,
                exec_ms: 0.0,
                query: "INSERT INTO messages".into(),
            },
        );
        Snapshot {
            kernel,
            net: NetCounts {
                udp_in: udp,
                udp_out: udp,
                tcp_in: 0,
                tcp_out: 0,
            },
            redis: Some(BTreeMap::from([
                ("xadd".to_owned(), zadd),
                ("info".to_owned(), zadd),
            ])),
            pg: Some(PgCounts {
                transactions: tx,
                wal_bytes: 10 * tx,
                statements,
            }),
        }
    }

    #[test]
    fn a_ledger_is_the_difference_scaled_to_its_unit() {
        let before = snapshot(100, 1_000, 50, 20);
        let after = snapshot(600, 3_000, 2_050, 524);
        let ledger = Ledger::between(&before, &after, "deliveries", 2_000, 1_000);
        let gateway = &ledger.by_role["gateway"];
        assert_eq!(gateway.voluntary_switches, 250.0);
        assert_eq!(gateway.read_syscalls, 500.0);
        assert_eq!(ledger.udp_datagrams, 2_000.0);
        assert_eq!(
            ledger.redis_commands,
            Some(1_000.0),
            "INFO is the ledger's own"
        );
        assert_eq!(
            ledger.pg_transactions,
            Some(250.0),
            "less the ledger's own 4"
        );
        assert_eq!(ledger.pg_statements, Some(252.0));
        assert_eq!(ledger.wal_bytes, Some(2_520.0));
        assert!(ledger.markdown().contains("per 1000 deliveries"));
        let none = Ledger::between(&before, &after, "connects", 0, 1);
        assert_eq!(none.udp_datagrams, 0.0, "no units, no division by zero");
    }
}
