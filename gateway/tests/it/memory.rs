//! How much memory a process holds, from `/proc`: a bound on memory is a property a test can
//! assert (a timing is not).
//!
//! RSS counts what the allocator holds, freed or not, so growth is measured from a baseline
//! taken just before the load, and is only meaningful for a process that has not held more
//! before: a fresh test process (nextest runs each test in its own), or a freshly started
//! service.

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

/// How much a process may grow while a large body passes through it. One that buffered a
/// 100 MB body would grow by 100 MB; streaming costs flow-control windows and buffers.
pub const RSS_GROWTH_LIMIT: u64 = 64 << 20;

/// A process to watch.
pub struct Process {
    name: String,
    pid: u32,
}

impl Process {
    /// This test process.
    pub fn current() -> Process {
        Process {
            name: "this test".to_owned(),
            pid: std::process::id(),
        }
    }

    /// A service `./dev up` runs, by its pid file in `.dev/run`; `command` is checked against
    /// the process's name.
    pub fn dev_service(name: &str, command: &str) -> Process {
        let file = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
            .join("../.dev/run")
            .join(format!("{name}.pid"));
        let text = std::fs::read_to_string(&file)
            .unwrap_or_else(|err| panic!("{}: {err} (is ./dev up running?)", file.display()));
        let pid: u32 = text
            .lines()
            .next()
            .unwrap_or_default()
            .trim()
            .parse()
            .unwrap();
        let comm = std::fs::read_to_string(format!("/proc/{pid}/comm")).unwrap_or_default();
        assert_eq!(comm.trim(), command, "{name}: pid {pid} is not {command}");
        Process {
            name: name.to_owned(),
            pid,
        }
    }

    /// Resident memory now, in bytes.
    pub fn rss(&self) -> u64 {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.pid))
            .unwrap_or_else(|err| panic!("{} (pid {}) is gone: {err}", self.name, self.pid));
        let kib: u64 = status
            .lines()
            .find_map(|line| line.strip_prefix("VmRSS:"))
            .and_then(|rest| rest.trim().trim_end_matches("kB").trim().parse().ok())
            .expect("VmRSS in /proc/<pid>/status");
        kib * 1024
    }
}

/// The highest RSS of a process seen since [`Peak::start`], sampled every 20 ms.
pub struct Peak {
    baseline: u64,
    peak: Arc<AtomicU64>,
    done: Arc<AtomicBool>,
    sampler: tokio::task::JoinHandle<()>,
}

impl Peak {
    pub fn start(process: Process) -> Peak {
        let baseline = process.rss();
        let peak = Arc::new(AtomicU64::new(baseline));
        let done = Arc::new(AtomicBool::new(false));
        let sampler = {
            let (peak, done) = (peak.clone(), done.clone());
            tokio::spawn(async move {
                while !done.load(Ordering::Acquire) {
                    peak.fetch_max(process.rss(), Ordering::AcqRel);
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
            })
        };
        Peak {
            baseline,
            peak,
            done,
            sampler,
        }
    }

    /// (baseline, peak) in bytes.
    pub async fn stop(self) -> (u64, u64) {
        self.done.store(true, Ordering::Release);
        self.sampler.await.unwrap();
        (self.baseline, self.peak.load(Ordering::Acquire))
    }
}

pub fn mib(bytes: u64) -> f64 {
    bytes as f64 / (1024.0 * 1024.0)
}
