//! `media` (#16): uploads and range reads of `/v1/media` through the gateway.
//!
//! Measured, in this order (`phases`), each phase bounded by a count or a duration:
//!
//! 1. `upload`: `--small-uploads` files of `--small-bytes` and `--large-uploads` of
//!    `--large-bytes` (random bytes, `kind=file`, each upload different so none is
//!    deduplicated), one after another over HTTP/2 and then over HTTP/3: MB/s, latency, and
//!    server CPU seconds per MB (from /proc, per role);
//! 2. `cp`: the same number of bytes copied by `cp` on the stack's own disk (DEV_DIR), the
//!    yardstick the upload rate is divided by;
//! 3. `image`: JPEGs of `--megapixels` (made here beforehand, each different) uploaded as
//!    `kind=image` and, for the baseline, random files of the same sizes as `kind=file`; the
//!    server's processing time per megapixel is the difference of the medians over the
//!    megapixels;
//! 4. `download`: `--readers` clients, each on its own HTTP/2 connection, reading random
//!    `--range-bytes` ranges of one `--large-bytes` upload for `--read-seconds`.
//!
//! Uploads are charged to the bench users of their own pool (`payload::assign`): the quota
//! (`HABERCI_MEDIA_QUOTA_BYTES`, 2 GiB) is per account and media cannot be deleted yet, so
//! each run fills the first users that still have room.

pub mod client;
pub mod payload;
pub mod phases;

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Context, bail};
use clap::{Args, ValueEnum};
use serde::Serialize;

use self::client::Gateway;
use self::phases::{CopyFigures, DownloadFigures, ImageFigures, UploadFigures};
use crate::api::{ApiTarget, resolve_v4};
use crate::report::{self, Machine, bar, command_line};
use crate::sampling::servers::ServerSet;
use crate::target::{Target, ca_store};
use crate::users::{Pool, SetupStats};

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Phase {
    Upload,
    Cp,
    Image,
    Download,
}

#[derive(Debug, Args, Serialize)]
pub struct MediaArgs {
    #[command(flatten)]
    pub target: Target,
    /// Postgres (optional): how much each bench user already stores, so uploads go to users
    /// with room. Without it every user is taken as empty.
    #[arg(long, env = "HABERCI_BENCH_DATABASE_URL")]
    #[serde(skip)]
    pub database_url: Option<String>,
    /// Bench users the uploads are spread over (each has its own quota).
    #[arg(long, default_value_t = 16)]
    pub users: usize,
    #[arg(long, default_value_t = 50)]
    pub small_uploads: usize,
    #[arg(long, default_value_t = 1_000_000)]
    pub small_bytes: usize,
    #[arg(long, default_value_t = 3)]
    pub large_uploads: usize,
    /// The file limit is 100 MB (decimal): this is the largest file upload.
    #[arg(long, default_value_t = 100_000_000)]
    pub large_bytes: usize,
    /// Image sizes, in megapixels (4:3).
    #[arg(long, value_delimiter = ',', default_value = "1,4,12")]
    pub megapixels: Vec<u32>,
    /// Images (and as many same-size files) uploaded per size.
    #[arg(long, default_value_t = 3)]
    pub image_uploads: usize,
    /// Download: concurrent clients, seconds, and the size of each range read.
    #[arg(long, default_value_t = 32)]
    pub readers: usize,
    #[arg(long, default_value_t = 20.0)]
    pub read_seconds: f64,
    #[arg(long, default_value_t = 1 << 20)]
    pub range_bytes: usize,
    /// Seconds one request may take.
    #[arg(long, default_value_t = 120)]
    pub request_timeout: u64,
    #[arg(
        long,
        value_enum,
        value_delimiter = ',',
        default_value = "upload,cp,image,download"
    )]
    pub phases: Vec<Phase>,
    /// The uploading users' cache (default: DEV_DIR/bench/media-users.json).
    #[arg(long)]
    pub pool_file: Option<PathBuf>,
}

#[derive(Debug, Default, Serialize)]
pub struct MediaFigures {
    /// The API's quota per account, and what the users had stored before the run.
    pub quota_bytes: u64,
    pub stored_before: Vec<u64>,
    pub uploads: Vec<UploadFigures>,
    pub cp: Option<CopyFigures>,
    pub images: Vec<ImageFigures>,
    pub download: Option<DownloadFigures>,
}

impl MediaFigures {
    pub fn counts_add_up(&self) -> bool {
        self.uploads.iter().all(|u| u.errors.is_empty())
            && self.images.iter().all(|i| i.errors.is_empty())
            && self.download.as_ref().is_none_or(|d| d.errors.is_empty())
    }
}

/// `HABERCI_MEDIA_QUOTA_BYTES` from a process's `environ` (NUL-separated), if set.
pub fn quota_setting(environ: &[u8]) -> Option<u64> {
    environ.split(|b| *b == 0).find_map(|entry| {
        std::str::from_utf8(entry)
            .ok()?
            .strip_prefix("HABERCI_MEDIA_QUOTA_BYTES=")?
            .trim()
            .parse()
            .ok()
    })
}

/// Width and height of a 4:3 image of `mp` megapixels.
pub fn dimensions(mp: u32) -> (u32, u32) {
    let pixels = f64::from(mp) * 1e6;
    let width = (pixels * 4.0 / 3.0).sqrt().round();
    let height = (pixels / width).round();
    (width as u32, height as u32)
}

pub async fn media(args: MediaArgs) -> anyhow::Result<bool> {
    if args.users == 0 || args.readers == 0 || args.read_seconds <= 0.0 || args.range_bytes == 0 {
        bail!("--users, --readers, --read-seconds and --range-bytes must be positive");
    }
    if args.range_bytes > args.large_bytes {
        bail!("--range-bytes must be at most --large-bytes");
    }
    let target = &args.target;
    let started_at = report::now();
    let load_before = crate::sampling::procfs::load_average();
    let servers = ServerSet::discover(&target.dev_dir, &target.server_pids)?;
    let roots = ca_store(target)?;
    let spec = target
        .gateways
        .first()
        .context("no --gateway to send the requests to")?;
    let host_port = |text: &str| -> anyhow::Result<(String, u16)> {
        let (host, port) = text.rsplit_once(':').context("HOST:PORT")?;
        Ok((host.to_owned(), port.parse()?))
    };
    let ((tcp_host, tcp_port), (udp_host, udp_port)) =
        (host_port(&spec.tcp)?, host_port(&spec.quic)?);
    let gateway = Gateway {
        tcp: resolve_v4(&tcp_host, tcp_port).await?,
        udp: resolve_v4(&udp_host, udp_port).await?,
        server_name: target.server_name.clone(),
        roots: roots.clone(),
    };

    // Users and tokens that outlive the run (access tokens live 15 minutes).
    let multi = report::progress();
    let api = ApiTarget::of(target, roots).await?;
    let pool_file = args
        .pool_file
        .clone()
        .unwrap_or_else(|| target.dev_dir.join("bench/media-users.json"));
    let mut pool = Pool::open(&pool_file, &target.api)?;
    let progress = bar(&multi, args.users as u64, "users");
    let setup: SetupStats = pool
        .prepare(
            &api,
            args.users,
            Duration::from_secs(12 * 60),
            &api.sources(target.source_addresses),
            target.setup_concurrency,
            &progress,
        )
        .await?;
    progress.finish();
    let users = &pool.users()[..args.users];

    let quota = servers
        .pid_of("api")
        .and_then(|pid| std::fs::read(format!("/proc/{pid}/environ")).ok())
        .and_then(|environ| quota_setting(&environ))
        .unwrap_or(haberci_backend::media::DEFAULT_QUOTA_BYTES);
    let stored_before = stored_bytes(args.database_url.as_deref(), users).await?;
    let room: Vec<u64> = stored_before
        .iter()
        .map(|used| quota.saturating_sub(*used))
        .collect();

    let figures = phases::run(&args, &gateway, &servers, users, &room, &multi).await?;
    let figures = MediaFigures {
        quota_bytes: quota,
        stored_before,
        ..figures
    };
    let ok = figures.counts_add_up();
    let machine = Machine::now(load_before, 1);
    let md = markdown(&args, &figures, &machine, &setup);
    report::finish(
        target,
        &report::Envelope {
            scenario: "media",
            command: command_line(),
            started_at,
            machine,
            settings: &args,
            servers: servers.processes(),
            setup,
            figures: &figures,
        },
        md,
        Vec::new(),
        ok,
    )
}

/// What each user stores now (the API's own count), or zeros without a database URL.
async fn stored_bytes(
    database_url: Option<&str>,
    users: &[crate::users::BenchUser],
) -> anyhow::Result<Vec<u64>> {
    let Some(url) = database_url else {
        return Ok(vec![0; users.len()]);
    };
    let pool = sqlx::PgPool::connect(url)
        .await
        .context("cannot connect to Postgres (--database-url)")?;
    let mut stored = Vec::with_capacity(users.len());
    for user in users {
        let id = haberci_wire::UserId::try_from(user.id)?;
        stored.push(haberci_backend::media::store::used_bytes(&pool, id).await?);
    }
    pool.close().await;
    Ok(stored)
}

fn mb(bytes: f64) -> f64 {
    bytes / 1e6
}

fn cpu_cell(cpu_ms: &BTreeMap<String, f64>, role: &str) -> String {
    format!("{:.2}", cpu_ms.get(role).copied().unwrap_or(0.0) / 1000.0)
}

pub fn markdown(
    args: &MediaArgs,
    f: &MediaFigures,
    machine: &Machine,
    setup: &SetupStats,
) -> String {
    let mut md = String::new();
    let _ = writeln!(md, "## media\n");
    let _ = writeln!(md, "{}  ", machine.line());
    let _ = writeln!(
        md,
        "{} bench users (quota {:.2} GiB each; {:.0} MB stored before the run); users: {} \
         registered, {} refreshed, {} logged in, {} reused\n",
        args.users,
        f.quota_bytes as f64 / f64::from(1u32 << 30),
        mb(f.stored_before.iter().sum::<u64>() as f64),
        setup.registered,
        setup.refreshed,
        setup.logged_in,
        setup.reused_tokens,
    );
    if !f.uploads.is_empty() {
        let _ = writeln!(
            md,
            "### Uploads (`kind=file`, random bytes, one at a time)\n\n\
             | transport | size | uploads | MB/s | p50 ms | max ms | api CPU s | gateway CPU s | s3 CPU s | postgres CPU s | api+gateway CPU s/MB | ÷ cp MB/s | errors |\n\
             |---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"
        );
        for u in &f.uploads {
            let vs_cp = f.cp.as_ref().map_or("–".to_owned(), |cp| {
                format!("{:.3}", u.mb_per_s / cp.mb_per_s)
            });
            let _ = writeln!(
                md,
                "| {} | {:.0} MB | {} | {:.1} | {:.1} | {:.1} | {} | {} | {} | {} | {:.4} | {} | {} |",
                u.version.label(),
                mb(u.bytes_each as f64),
                u.uploads,
                u.mb_per_s,
                u.latency.p50_ms,
                u.latency.max_ms,
                cpu_cell(&u.cpu_ms, "api"),
                cpu_cell(&u.cpu_ms, "gateway"),
                cpu_cell(&u.cpu_ms, "s3"),
                cpu_cell(&u.cpu_ms, "postgres"),
                u.edge_cpu_s_per_mb,
                vs_cp,
                u.errors.values().sum::<u64>(),
            );
        }
        md.push('\n');
    }
    if let Some(cp) = &f.cp {
        let _ = writeln!(
            md,
            "`cp` of {:.0} MB on {} (source in the page cache): {:.3} s → **{:.0} MB/s**; \
             with an fsync of the copy: {:.3} s → {:.0} MB/s.\n",
            mb(cp.bytes as f64),
            cp.dir,
            cp.seconds,
            cp.mb_per_s,
            cp.seconds_fsync,
            cp.mb_per_s_fsync,
        );
    }
    if !f.images.is_empty() {
        let _ = writeln!(
            md,
            "### Images (HTTP/2, one at a time)\n\n\
             Server time per MP = (median `kind=image` latency − median `kind=file` latency of \
             random bytes of the same size) ÷ MP: the decode, thumbnail, preview and re-encode, \
             beyond moving and storing the bytes.\n\n\
             | MP | pixels | JPEG KB | uploads | image p50 ms | file p50 ms | server ms/MP | image ms/MP (whole request) | errors |\n\
             |---:|---|---:|---:|---:|---:|---:|---:|---:|"
        );
        for i in &f.images {
            let _ = writeln!(
                md,
                "| {} | {}×{} | {:.0} | {} | {:.1} | {:.1} | {:.1} | {:.1} | {} |",
                i.megapixels,
                i.width,
                i.height,
                i.jpeg_bytes as f64 / 1e3,
                i.uploads,
                i.image_p50_ms,
                i.file_p50_ms,
                i.server_ms_per_mp,
                i.image_ms_per_mp,
                i.errors.values().sum::<u64>(),
            );
        }
        md.push('\n');
    }
    if let Some(d) = &f.download {
        let s = &d.latency;
        let _ = writeln!(
            md,
            "### Range reads (HTTP/2, {} clients, {} B ranges of a {:.0} MB file, {:.0} s)\n\n\
             | requests | req/s | MB/s | p50 ms | p90 ms | p99 ms | max ms | api CPU s | gateway CPU s | s3 CPU s | errors |\n\
             |---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|\n\
             | {} | {:.0} | {:.0} | {:.2} | {:.2} | {:.2} | {:.2} | {} | {} | {} | {} |\n",
            d.readers,
            d.range_bytes,
            mb(d.file_bytes as f64),
            d.seconds,
            s.count,
            d.requests_per_s,
            d.mb_per_s,
            s.p50_ms,
            s.p90_ms,
            s.p99_ms,
            s.max_ms,
            cpu_cell(&d.cpu_ms, "api"),
            cpu_cell(&d.cpu_ms, "gateway"),
            cpu_cell(&d.cpu_ms, "s3"),
            d.errors.values().sum::<u64>(),
        );
    }
    let errors: BTreeMap<&str, u64> = f
        .uploads
        .iter()
        .flat_map(|u| &u.errors)
        .chain(f.images.iter().flat_map(|i| &i.errors))
        .chain(f.download.iter().flat_map(|d| &d.errors))
        .fold(BTreeMap::new(), |mut all, (why, n)| {
            *all.entry(why.as_str()).or_default() += n;
            all
        });
    if !errors.is_empty() {
        let _ = writeln!(md, "Errors:\n");
        for (why, n) in errors {
            let _ = writeln!(md, "- {n} × {why}");
        }
    }
    md
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn four_by_three_dimensions_hold_the_megapixels() {
        assert_eq!(dimensions(12), (4000, 3000));
        for mp in [1, 4, 12] {
            let (w, h) = dimensions(mp);
            let pixels = f64::from(w) * f64::from(h);
            assert!((pixels / (f64::from(mp) * 1e6) - 1.0).abs() < 0.01);
        }
    }

    #[test]
    fn the_quota_is_read_from_the_environment() {
        assert_eq!(
            quota_setting(b"A=1\0HABERCI_MEDIA_QUOTA_BYTES=5000\0B=2"),
            Some(5000)
        );
        assert_eq!(quota_setting(b"A=1\0B=2"), None);
    }
}
