//! The coordinator's side of the shards: start them, hand out jobs, say `go`, gather reports,
//! and merge their results.

use std::collections::BTreeMap;
use std::process::Stdio;
use std::time::Duration;

use anyhow::{Context, bail};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::process::{Child, ChildStdin, Command};
use tokio::sync::mpsc;

use crate::load::protocol::{Counts, Job, Report, ShardResult};
use crate::report::latency::{Buckets, Latency, Window};

enum Note {
    Report(usize, Report),
    /// The shard's stdout ended (it exited or crashed).
    Ended(usize),
}

pub struct Shards {
    children: Vec<Child>,
    stdins: Vec<Option<ChildStdin>>,
    notes: mpsc::UnboundedReceiver<Note>,
    latest: Vec<Counts>,
    done: Vec<Option<ShardResult>>,
    ended: Vec<bool>,
}

/// The niceness load processes run at (`HABERCI_BENCH_CLIENT_NICE`, default
/// [`DEFAULT_CLIENT_NICE`]).
///
/// The load client shares the servers' cores here, where on a real deployment it would be
/// other machines. At equal priority its processes (one per 8,000 sessions) outnumber the
/// gateway's threads, and the kernel's fair share starves the gateway as soon as the cores are
/// busy: its UDP socket overflows, every QUIC connection retransmits at once, and a 100,000
/// session run collapses (docs/BENCHMARKS.md, "Idle QUIC sessions on one gateway"). Niced, the
/// client waits instead of the server; its own delays then count against the latencies it
/// measures, which only makes the servers look slower.
pub const DEFAULT_CLIENT_NICE: i32 = 10;

pub(crate) fn client_nice() -> i32 {
    std::env::var("HABERCI_BENCH_CLIENT_NICE")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(DEFAULT_CLIENT_NICE)
}

impl Shards {
    /// Starts one process of this executable per job (`shard --shard i/n`).
    pub async fn start(jobs: Vec<Job>) -> anyhow::Result<Shards> {
        let exe = std::env::current_exe().context("cannot find this executable")?;
        let n = jobs.len();
        let (tx, notes) = mpsc::unbounded_channel();
        let mut children = Vec::new();
        let mut stdins = Vec::new();
        let nice = client_nice();
        for (i, job) in jobs.into_iter().enumerate() {
            // `nice` execs the shard, so the child's pid is the shard's.
            let mut child = Command::new("nice")
                .arg("-n")
                .arg(nice.to_string())
                .arg(&exe)
                .arg("shard")
                .arg("--shard")
                .arg(format!("{i}/{n}"))
                .stdin(Stdio::piped())
                .stdout(Stdio::piped())
                .stderr(Stdio::inherit())
                .kill_on_drop(true)
                .spawn()
                .with_context(|| format!("cannot start shard {i}"))?;
            let mut stdin = child.stdin.take().context("shard stdin")?;
            let mut line = serde_json::to_vec(&job)?;
            line.push(b'\n');
            stdin.write_all(&line).await?;
            stdin.flush().await?;
            let stdout = child.stdout.take().context("shard stdout")?;
            let tx = tx.clone();
            tokio::spawn(async move {
                let mut lines = BufReader::new(stdout).lines();
                while let Ok(Some(line)) = lines.next_line().await {
                    match serde_json::from_str::<Report>(&line) {
                        Ok(report) => {
                            let _ = tx.send(Note::Report(i, report));
                        }
                        Err(err) => eprintln!("shard {i}: unreadable report ({err}): {line}"),
                    }
                }
                let _ = tx.send(Note::Ended(i));
            });
            children.push(child);
            stdins.push(Some(stdin));
        }
        Ok(Shards {
            children,
            stdins,
            notes,
            latest: vec![Counts::default(); n],
            done: (0..n).map(|_| None).collect(),
            ended: vec![false; n],
        })
    }

    pub fn count(&self) -> usize {
        self.children.len()
    }

    /// CPU the shard processes have used so far (utime + stime), in clock ticks.
    pub fn cpu_ticks(&self) -> u64 {
        self.children
            .iter()
            .filter_map(Child::id)
            .filter_map(crate::sampling::procfs::sample)
            .map(|s| s.cpu_ticks)
            .sum()
    }

    /// Moves every shard to its next phase.
    pub async fn go(&mut self) -> anyhow::Result<()> {
        for (i, stdin) in self.stdins.iter_mut().enumerate() {
            if let Some(stdin) = stdin {
                stdin
                    .write_all(b"go\n")
                    .await
                    .with_context(|| format!("shard {i} is gone"))?;
                stdin.flush().await?;
            }
        }
        Ok(())
    }

    /// The sum of every shard's latest counts.
    pub fn counts(&self) -> Counts {
        self.latest.iter().fold(Counts::default(), |a, c| Counts {
            connected: a.connected + c.connected,
            connect_failed: a.connect_failed + c.connect_failed,
            sent: a.sent + c.sent,
            received: a.received + c.received,
            reconnected: a.reconnected + c.reconnected,
        })
    }

    /// Waits until every shard reported `Connected`, calling `tick` on each report.
    pub async fn wait_connected(
        &mut self,
        limit: Duration,
        mut tick: impl FnMut(Counts),
    ) -> anyhow::Result<Counts> {
        let mut connected = vec![false; self.count()];
        self.wait(limit, |this, i, report| {
            if let Report::Connected(c) = report {
                connected[i] = true;
                this.latest[i] = *c;
            }
            tick(this.counts());
            connected.iter().all(|c| *c)
        })
        .await?;
        Ok(self.counts())
    }

    /// Waits for every shard's result.
    pub async fn wait_done(
        &mut self,
        limit: Duration,
        mut tick: impl FnMut(Counts),
    ) -> anyhow::Result<Vec<ShardResult>> {
        self.wait(limit, |this, _, _| {
            tick(this.counts());
            this.done.iter().all(Option::is_some)
        })
        .await?;
        for stdin in &mut self.stdins {
            stdin.take();
        }
        for child in &mut self.children {
            let _ = tokio::time::timeout(Duration::from_secs(10), child.wait()).await;
        }
        Ok(self.done.iter_mut().filter_map(Option::take).collect())
    }

    async fn wait(
        &mut self,
        limit: Duration,
        mut until: impl FnMut(&mut Shards, usize, &Report) -> bool,
    ) -> anyhow::Result<()> {
        let deadline = tokio::time::Instant::now() + limit;
        loop {
            let note = match tokio::time::timeout_at(deadline, self.notes.recv()).await {
                Ok(Some(note)) => note,
                Ok(None) => bail!("every shard is gone"),
                Err(_) => bail!("the shards did not get there within {limit:?}"),
            };
            match note {
                Note::Report(i, report) => {
                    match &report {
                        Report::Progress(c) | Report::Connected(c) => self.latest[i] = *c,
                        Report::Done(result) => self.done[i] = Some((**result).clone()),
                    }
                    if until(self, i, &report) {
                        return Ok(());
                    }
                }
                Note::Ended(i) => {
                    self.ended[i] = true;
                    if self.done[i].is_none() {
                        let status = self.children[i].wait().await.ok();
                        bail!(
                            "shard {i} ended without a result ({status:?}); see its stderr above"
                        );
                    }
                }
            }
        }
    }
}

// ---- merging the shards' results --------------------------------------------------------------

pub(crate) fn merged(results: &[ShardResult], pick: impl Fn(&ShardResult) -> &Buckets) -> Latency {
    let mut h = Latency::new();
    for r in results {
        h.merge(pick(r));
    }
    h
}

pub(crate) fn merged_counts(
    maps: impl Iterator<Item = BTreeMap<String, u64>>,
) -> BTreeMap<String, u64> {
    let mut all = BTreeMap::new();
    for map in maps {
        for (k, v) in map {
            *all.entry(k).or_default() += v;
        }
    }
    all
}

pub(crate) fn timeline(results: &[ShardResult]) -> Vec<Window> {
    let mut by_second: BTreeMap<u64, Latency> = BTreeMap::new();
    for r in results {
        for (second, buckets) in &r.timeline {
            by_second.entry(*second).or_default().merge(buckets);
        }
    }
    let first = by_second.keys().next().copied().unwrap_or(0);
    by_second
        .iter()
        .map(|(second, h)| {
            let s = h.summary();
            Window {
                t_s: second - first,
                count: s.count,
                p50_ms: s.p50_ms,
                p90_ms: s.p90_ms,
                p99_ms: s.p99_ms,
                max_ms: s.max_ms,
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    #[test]
    fn timelines_merge_shards_by_second_from_the_first() {
        let mut a = Latency::new();
        a.record(Duration::from_millis(2));
        let mut b = Latency::new();
        b.record(Duration::from_millis(4));
        let results = vec![
            ShardResult {
                timeline: vec![(100, a.buckets()), (102, a.buckets())],
                ..ShardResult::default()
            },
            ShardResult {
                timeline: vec![(100, b.buckets())],
                ..ShardResult::default()
            },
        ];
        let t = timeline(&results);
        assert_eq!(
            t.iter().map(|w| (w.t_s, w.count)).collect::<Vec<_>>(),
            [(0, 2), (2, 1)]
        );
        assert!((t[0].max_ms - 4.0).abs() < 0.01);
    }
}
