//! Results on disk: `<out>/<date>/<scenario>-<time>[-label].json` (everything) and `.md` (a
//! summary to paste into docs/BENCHMARKS.md).

use std::fmt::Write as _;
use std::path::PathBuf;

use serde::Serialize;

use crate::cli::{ConnectArgs, Mix, Target};
use crate::latency::Summary;
use crate::plots::Chart;
use crate::scenarios::{ChatFigures, ConnectFigures};
use crate::servers::Server;
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
            load_after: crate::procfs::load_average(),
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

/// Writes `DIR/<date>/<scenario>-<time>[-label]`: `.json` (everything), `.md` (the summary,
/// with the plots linked) and one `-<plot>.svg` per chart that has points. Prints where, and
/// the Markdown, on stderr.
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
        if crate::plots::draw(&dir.join(&file), &chart)? {
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

fn latency_row(md: &mut String, what: &str, s: &Summary) {
    let _ = writeln!(
        md,
        "| {what} | {} | {:.2} | {:.2} | {:.2} | {:.2} | {:.2} |",
        s.count, s.p50_ms, s.p90_ms, s.p99_ms, s.p999_ms, s.max_ms
    );
}

const LATENCY_HEADER: &str =
    "| ms | count | p50 | p90 | p99 | p99.9 | max |\n|---|---:|---:|---:|---:|---:|---:|\n";

fn setup_line(setup: &SetupStats) -> String {
    format!(
        "users: {} registered, {} refreshed, {} logged in, {} reused, in {:.1} s",
        setup.registered, setup.refreshed, setup.logged_in, setup.reused_tokens, setup.seconds
    )
}

/// Said when a gateway's memory did not grow with the sessions.
pub const REUSED_MEMORY: &str = "Memory per idle connection is not measurable here: the gateways \
reused memory that an earlier run had freed. Run with --fresh-gateways.";

pub fn connect_markdown(
    args: &ConnectArgs,
    mix: Mix,
    f: &ConnectFigures,
    machine: &Machine,
    setup: &SetupStats,
) -> String {
    let mut md = String::new();
    let _ = writeln!(
        md,
        "### connect: {} {:?} sessions, ramp {}/s, hold {} s\n",
        args.sessions, mix, args.target.ramp, args.hold
    );
    let _ = writeln!(md, "{}; {}\n", machine.line(), setup_line(setup));
    let _ = writeln!(md, "| what | figure |\n|---|---:|");
    let _ = writeln!(
        md,
        "| connected / failed | {} / {} |",
        f.connected, f.failed
    );
    let _ = writeln!(md, "| connects/s | {:.0} |", f.connects_per_sec);
    let _ = writeln!(
        md,
        "| all gateways, RSS before → after | {:.1} → {:.1} MiB |",
        f.gateway_rss_before_kib as f64 / 1024.0,
        f.gateway_rss_after_kib as f64 / 1024.0
    );
    for (role, before) in &f.rss_before_kib_by_process {
        if let Some(after) = f.rss_after_kib_by_process.get(role) {
            let _ = writeln!(
                md,
                "| {role} RSS before → after | {:.1} → {:.1} MiB |",
                *before as f64 / 1024.0,
                *after as f64 / 1024.0
            );
        }
    }
    let _ = writeln!(
        md,
        "| **gateway memory per idle session** | **{:.1} KB** |",
        f.bytes_per_idle_session / 1000.0
    );
    let _ = writeln!(
        md,
        "| gateway CPU per handshake | {:.3} ms |",
        f.gateway_cpu_ms_per_handshake
    );
    let _ = writeln!(
        md,
        "| gateway CPU while idle, per session | {:.2} µs/s ({:.2} cores per 100K sessions) |",
        f.edge_cpu_us_per_idle_session_second,
        f.edge_cpu_us_per_idle_session_second / 10.0
    );
    let _ = writeln!(
        md,
        "| client CPU while idle, per session | {:.2} µs/s |",
        f.client_cpu_us_per_idle_session_second
    );
    let _ = writeln!(md, "| dropped while idle | {} |", f.disconnected_while_idle);
    if f.bytes_per_idle_session <= 0.0 {
        let _ = writeln!(md, "| note | {REUSED_MEMORY} |");
    }
    let _ = writeln!(md, "| client CPU (ramp) | {:.0} ms |\n", f.client_cpu_ms);
    md.push_str(LATENCY_HEADER);
    latency_row(
        &mut md,
        "handshake (transport + TLS + Hello/Welcome)",
        &f.handshake,
    );
    for (why, n) in &f.failures {
        let _ = writeln!(md, "\nfailure ×{n}: {why}");
    }
    md
}

pub fn chat_markdown(mix: Mix, f: &ChatFigures, machine: &Machine, setup: &SetupStats) -> String {
    let mut md = String::new();
    let _ = writeln!(
        md,
        "### chat: {} users ({:?}), {} gateway(s), {} msg/s for {:.1} s\n",
        f.users, mix, f.gateways, f.rate, f.duration_s
    );
    let _ = writeln!(md, "{}; {}\n", machine.line(), setup_line(setup));
    let _ = writeln!(md, "| what | figure |\n|---|---:|");
    let _ = writeln!(
        md,
        "| planned / sent (Sent) / delivered | {} / {} / {} |",
        f.messages_planned, f.sent_ok, f.delivered
    );
    let _ = writeln!(
        md,
        "| lost / duplicated / out of order / send failed | {} / {} / {} / {} |",
        f.lost, f.duplicates, f.out_of_order, f.send_failed
    );
    let _ = writeln!(md, "| delivered/s | {:.0} |", f.delivered_per_sec);
    let _ = writeln!(
        md,
        "| **server CPU per 1,000 deliveries** | **{:.1} ms** |",
        f.server_cpu_ms_per_1000_deliveries
    );
    let roles = f
        .server_cpu_ms
        .iter()
        .map(|(role, ms)| format!("{role} {ms:.0}"))
        .collect::<Vec<_>>()
        .join(", ");
    let _ = writeln!(
        md,
        "| server CPU, ms ({:.1} s window) | {:.0}: {roles} |",
        f.measured_seconds, f.server_cpu_ms_total
    );
    let _ = writeln!(
        md,
        "| client CPU per 1,000 deliveries | {:.1} ms |",
        f.client_cpu_ms_per_1000_deliveries
    );
    let _ = writeln!(
        md,
        "| connect failed / dropped / replayed from earlier runs | {} / {} / {} |\n",
        f.connect_failed, f.disconnected, f.stale
    );
    md.push_str(LATENCY_HEADER);
    latency_row(&mut md, "**send → deliver**", &f.latency);
    latency_row(&mut md, "handshake", &f.handshake);
    for (why, n) in f.send_failures.iter().chain(&f.connect_failures) {
        let _ = writeln!(md, "\nfailure ×{n}: {why}");
    }
    md
}
