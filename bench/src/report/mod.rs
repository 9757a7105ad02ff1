//! Results on disk: `<out>/<date>/<scenario>-<time>[-label].json` (everything) and `.md` (a
//! summary to paste into docs/BENCHMARKS.md), with the plots beside them; what identifies a run
//! (`now`, `command_line`, `run_id`) and its progress bars. The figures themselves are each
//! scenario's; `latency` (HDR histograms), `plots` (SVG) and `charts` (the charts scenarios
//! share) are what they are made of.

pub mod charts;
pub mod latency;
pub mod plots;

use std::fmt::Write as _;
use std::path::PathBuf;

use indicatif::{MultiProgress, ProgressBar, ProgressStyle};
use serde::Serialize;

use crate::report::latency::Summary;
use crate::report::plots::Chart;
use crate::sampling::servers::Server;
use crate::target::Target;
use crate::users::SetupStats;

#[derive(Debug, Serialize)]
pub struct Machine {
    pub cpus: usize,
    /// 1-minute load average before the run and after it.
    pub load_before: Option<f64>,
    pub load_after: Option<f64>,
    pub client_processes: usize,
}

impl Machine {
    pub fn now(load_before: Option<f64>, client_processes: usize) -> Machine {
        Machine {
            cpus: std::thread::available_parallelism().map_or(1, |n| n.get()),
            load_before,
            load_after: crate::sampling::procfs::load_average(),
            client_processes,
        }
    }

    pub fn line(&self) -> String {
        let f = |l: Option<f64>| l.map_or("?".into(), |l| format!("{l:.2}"));
        format!(
            "{} CPUs, load {} before / {} after, {} client process(es) on the same machine",
            self.cpus,
            f(self.load_before),
            f(self.load_after),
            self.client_processes
        )
    }
}

#[derive(Debug, Serialize)]
pub struct Envelope<'a, S: Serialize, F: Serialize> {
    pub scenario: &'static str,
    pub command: String,
    pub started_at: String,
    pub machine: Machine,
    pub settings: &'a S,
    pub servers: Vec<Server>,
    pub setup: SetupStats,
    pub figures: &'a F,
}

/// What a measured phase produced besides its figures.
pub struct Measured<F> {
    pub figures: F,
    pub setup: SetupStats,
    pub machine: Machine,
}

pub fn now() -> String {
    time::OffsetDateTime::now_utc()
        .format(&time::format_description::well_known::Rfc3339)
        .unwrap_or_default()
}

/// The progress bars of a run: on stderr, drawn only when stderr is a terminal (indicatif
/// hides them otherwise), so logs and CI output stay clean.
pub fn progress() -> indicatif::MultiProgress {
    indicatif::MultiProgress::with_draw_target(indicatif::ProgressDrawTarget::stderr())
}

pub(crate) fn bar(multi: &MultiProgress, len: u64, what: &str) -> ProgressBar {
    let bar = multi.add(ProgressBar::new(len));
    bar.set_style(
        ProgressStyle::with_template("{prefix:>10} [{bar:40}] {pos}/{len} {msg} ({elapsed})")
            .unwrap_or_else(|_| ProgressStyle::default_bar())
            .progress_chars("=> "),
    );
    bar.set_prefix(what.to_owned());
    bar
}

pub(crate) fn command_line() -> String {
    std::env::args().collect::<Vec<_>>().join(" ")
}

pub(crate) fn run_id() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_nanos()).unwrap_or(u64::MAX))
}

/// Writes the report of `envelope`'s scenario, then the `--check` verdict: `Ok(false)` only
/// when `--check` was asked and the counts (`ok`) do not add up.
pub fn finish<S: Serialize, F: Serialize>(
    target: &Target,
    envelope: &Envelope<'_, S, F>,
    markdown: String,
    charts: Vec<(&str, Chart)>,
    ok: bool,
) -> anyhow::Result<bool> {
    write(target, envelope.scenario, envelope, markdown, charts)?;
    if target.check && !ok {
        eprintln!("haberci-bench: the counts do not add up (see the report)");
    }
    Ok(ok || !target.check)
}

/// Writes `DIR/<date>/<scenario>-<time>[-label]`: `.json` (everything), `.md` (the summary,
/// with the plots linked) and one `-<plot>.svg` per chart that has points. Prints where, and
/// the Markdown, on stderr.
pub fn write<S: Serialize, F: Serialize>(
    target: &Target,
    scenario: &str,
    envelope: &Envelope<'_, S, F>,
    mut markdown: String,
    charts: Vec<(&str, Chart)>,
) -> anyhow::Result<PathBuf> {
    let now = time::OffsetDateTime::now_utc();
    let date = format!(
        "{:04}-{:02}-{:02}",
        now.year(),
        u8::from(now.month()),
        now.day()
    );
    let stamp = format!("{:02}{:02}{:02}", now.hour(), now.minute(), now.second());
    let dir = target.out.join(date);
    std::fs::create_dir_all(&dir)?;
    let mut name = format!("{scenario}-{stamp}");
    if let Some(label) = &target.label {
        name.push('-');
        name.extend(
            label
                .chars()
                .filter(|c| c.is_ascii_alphanumeric() || *c == '-'),
        );
    }
    let mut drawn = Vec::new();
    for (plot, chart) in charts {
        let file = format!("{name}-{plot}.svg");
        if plots::draw(&dir.join(&file), &chart)? {
            drawn.push((chart.title.clone(), file));
        }
    }
    if !drawn.is_empty() {
        markdown.push('\n');
        for (title, file) in &drawn {
            let _ = writeln!(markdown, "![{title}]({file})");
        }
    }
    let json = dir.join(format!("{name}.json"));
    std::fs::write(&json, serde_json::to_vec_pretty(envelope)?)?;
    std::fs::write(dir.join(format!("{name}.md")), &markdown)?;
    eprintln!("\n{markdown}\nreport: {}", json.display());
    Ok(json)
}

pub(crate) fn latency_row(md: &mut String, what: &str, s: &Summary) {
    let _ = writeln!(
        md,
        "| {what} | {} | {:.2} | {:.2} | {:.2} | {:.2} | {:.2} |",
        s.count, s.p50_ms, s.p90_ms, s.p99_ms, s.p999_ms, s.max_ms
    );
}

pub(crate) const LATENCY_HEADER: &str =
    "| ms | count | p50 | p90 | p99 | p99.9 | max |\n|---|---:|---:|---:|---:|---:|---:|\n";

pub(crate) fn setup_line(setup: &SetupStats) -> String {
    format!(
        "users: {} registered, {} refreshed, {} logged in, {} reused, in {:.1} s",
        setup.registered, setup.refreshed, setup.logged_in, setup.reused_tokens, setup.seconds
    )
}

/// Said when a gateway's memory did not grow with the sessions.
pub const REUSED_MEMORY: &str = "Memory per idle connection is not measurable here: the gateways \
reused memory that an earlier run had freed. Run with --fresh-gateways.";
