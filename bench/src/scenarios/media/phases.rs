//! The measured phases of `media`: what is sent, what is timed, what the servers spent.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use bytes::Bytes;
use http::{Method, Request, StatusCode, header};
use serde::Serialize;

use super::client::{Answer, Connection, Gateway, Version};
use super::payload::{assign, jpeg, random_bytes, splitmix, stamped};
use super::{MediaArgs, MediaFigures, Phase, dimensions};
use crate::report::latency::{Latency, Summary};
use crate::report::{bar, run_id};
use crate::sampling::servers::{CpuSnapshot, ServerSet};
use crate::users::BenchUser;

/// One size of upload over one transport.
#[derive(Debug, Serialize)]
pub struct UploadFigures {
    pub version: Version,
    pub bytes_each: usize,
    pub uploads: usize,
    /// Bytes stored ÷ the summed request latencies (the client's buffer copies excluded).
    pub mb_per_s: f64,
    pub latency: Summary,
    /// Server CPU over the phase, per role, ms.
    pub cpu_ms: BTreeMap<String, f64>,
    /// API and gateway CPU seconds per MB uploaded.
    pub edge_cpu_s_per_mb: f64,
    pub errors: BTreeMap<String, u64>,
}

#[derive(Debug, Serialize)]
pub struct CopyFigures {
    pub dir: String,
    pub bytes: usize,
    pub seconds: f64,
    pub mb_per_s: f64,
    /// `cp` and then an fsync of the copy.
    pub seconds_fsync: f64,
    pub mb_per_s_fsync: f64,
}

#[derive(Debug, Serialize)]
pub struct ImageFigures {
    pub megapixels: u32,
    pub width: u32,
    pub height: u32,
    /// The mean size of the JPEGs sent.
    pub jpeg_bytes: usize,
    pub uploads: usize,
    pub image_p50_ms: f64,
    pub file_p50_ms: f64,
    /// (image p50 − file p50) ÷ megapixels.
    pub server_ms_per_mp: f64,
    /// image p50 ÷ megapixels.
    pub image_ms_per_mp: f64,
    pub errors: BTreeMap<String, u64>,
}

#[derive(Debug, Serialize)]
pub struct DownloadFigures {
    pub readers: usize,
    pub range_bytes: usize,
    pub file_bytes: usize,
    pub seconds: f64,
    pub requests_per_s: f64,
    pub mb_per_s: f64,
    pub latency: Summary,
    pub cpu_ms: BTreeMap<String, f64>,
    pub errors: BTreeMap<String, u64>,
}

/// An upload's owner and the token it is sent with, in the order uploads happen.
struct Owners {
    tokens: Vec<String>,
    next: usize,
}

impl Owners {
    fn next_token(&mut self) -> anyhow::Result<&str> {
        let token = self
            .tokens
            .get(self.next)
            .context("more uploads than planned")?;
        self.next += 1;
        Ok(token)
    }
}

/// A stored upload, as the 201 answer describes it.
#[derive(Clone, Debug)]
struct Stored {
    size: usize,
    /// The signed relative link to the bytes.
    url: String,
}

pub async fn run(
    args: &MediaArgs,
    gateway: &Gateway,
    servers: &ServerSet,
    users: &[BenchUser],
    room: &[u64],
    multi: &indicatif::MultiProgress,
) -> anyhow::Result<MediaFigures> {
    let run = run_id();
    let timeout = Duration::from_secs(args.request_timeout);
    let wants = |phase: Phase| args.phases.contains(&phase);

    // Everything sent is made before any clock starts.
    let base = random_bytes(args.large_bytes.max(args.small_bytes), run);
    let mut jpegs: Vec<(u32, Vec<Vec<u8>>)> = Vec::new();
    if wants(Phase::Image) {
        let progress = bar(
            multi,
            (args.megapixels.len() * args.image_uploads) as u64,
            "jpegs",
        );
        for (i, &mp) in args.megapixels.iter().enumerate() {
            let (w, h) = dimensions(mp);
            let mut made = Vec::new();
            for k in 0..args.image_uploads {
                let seed = run ^ ((i * 1000 + k) as u64);
                made.push(
                    tokio::task::spawn_blocking(move || jpeg(w, h, seed))
                        .await
                        .context("the JPEG encoder panicked")??,
                );
                progress.inc(1);
            }
            jpegs.push((mp, made));
        }
        progress.finish();
    }

    // Who each upload is charged to. Images count twice: the API stores its re-encoding.
    let mut sizes = Vec::new();
    if wants(Phase::Upload) {
        for _ in 0..2 {
            sizes.extend(std::iter::repeat_n(
                args.small_bytes as u64,
                args.small_uploads,
            ));
            sizes.extend(std::iter::repeat_n(
                args.large_bytes as u64,
                args.large_uploads,
            ));
        }
    }
    for (_, made) in &jpegs {
        for j in made {
            sizes.extend([2 * j.len() as u64, j.len() as u64]);
        }
    }
    let reuse_download = wants(Phase::Upload) && args.large_uploads > 0;
    if wants(Phase::Download) && !reuse_download {
        sizes.push(args.large_bytes as u64);
    }
    let Some(plan) = assign(room, &sizes) else {
        bail!(
            "the {} bench users have {:.0} MB of quota left, the run needs {:.0} MB: \
             pass a larger --users",
            users.len(),
            room.iter().sum::<u64>() as f64 / 1e6,
            sizes.iter().sum::<u64>() as f64 / 1e6,
        );
    };
    let mut owners = Owners {
        tokens: plan
            .iter()
            .map(|&u| users[u].access_token.clone())
            .collect(),
        next: 0,
    };

    let mut figures = MediaFigures::default();
    let mut counter = 0usize;
    let mut large: Option<Stored> = None;
    if wants(Phase::Upload) {
        for version in [Version::Http2, Version::Http3] {
            for (count, size) in [
                (args.small_uploads, args.small_bytes),
                (args.large_uploads, args.large_bytes),
            ] {
                if count == 0 {
                    continue;
                }
                let what = format!("{} {:.0} MB", version.label(), size as f64 / 1e6);
                let progress = bar(multi, count as u64, &what);
                let conn = gateway.connect(version).await?;
                let before = servers.cpu();
                let mut latency = Latency::new();
                let mut errors = BTreeMap::new();
                let mut stored_bytes = 0usize;
                let mut busy = Duration::ZERO;
                for _ in 0..count {
                    let body = stamped(&base[..size], run, counter);
                    counter += 1;
                    let token = owners.next_token()?;
                    let started = Instant::now();
                    match upload(&conn, token, "file", body, timeout).await {
                        Ok(stored) => {
                            let took = started.elapsed();
                            latency.record(took);
                            busy += took;
                            stored_bytes += stored.size;
                            if version == Version::Http2 && size == args.large_bytes {
                                large = Some(stored);
                            }
                        }
                        Err(why) => *errors.entry(why).or_default() += 1,
                    }
                    progress.inc(1);
                }
                let cpu_ms = before.delta_ms(&servers.cpu(), ticks());
                progress.finish();
                let busy_s = busy.as_secs_f64();
                let mb = stored_bytes as f64 / 1e6;
                figures.uploads.push(UploadFigures {
                    version,
                    bytes_each: size,
                    uploads: count,
                    mb_per_s: if busy_s > 0.0 { mb / busy_s } else { 0.0 },
                    latency: latency.summary(),
                    edge_cpu_s_per_mb: edge_cpu_s(&cpu_ms) / mb.max(1e-9),
                    cpu_ms,
                    errors,
                });
            }
        }
    }

    if wants(Phase::Cp) {
        figures.cp = Some(copy(&args.target.dev_dir, &base[..args.large_bytes])?);
    }

    if !jpegs.is_empty() {
        let conn = gateway.connect(Version::Http2).await?;
        let progress = bar(
            multi,
            (jpegs.len() * args.image_uploads * 2) as u64,
            "images",
        );
        for (mp, made) in &jpegs {
            let (width, height) = dimensions(*mp);
            let (mut image, mut file) = (Latency::new(), Latency::new());
            let mut errors = BTreeMap::new();
            for j in made {
                // The image, then random bytes of its size: both warm, interleaved.
                for (kind, body, latency) in [
                    ("image", Bytes::from(j.clone()), &mut image),
                    (
                        "file",
                        stamped(&base[..j.len().min(base.len())], run, counter),
                        &mut file,
                    ),
                ] {
                    counter += 1;
                    let token = owners.next_token()?;
                    let started = Instant::now();
                    match upload(&conn, token, kind, body, timeout).await {
                        Ok(_) => latency.record(started.elapsed()),
                        Err(why) => *errors.entry(format!("{kind}: {why}")).or_default() += 1,
                    }
                    progress.inc(1);
                }
            }
            let (image_p50_ms, file_p50_ms) = (image.summary().p50_ms, file.summary().p50_ms);
            figures.images.push(ImageFigures {
                megapixels: *mp,
                width,
                height,
                jpeg_bytes: made.iter().map(Vec::len).sum::<usize>() / made.len().max(1),
                uploads: made.len(),
                image_p50_ms,
                file_p50_ms,
                server_ms_per_mp: (image_p50_ms - file_p50_ms) / f64::from(*mp),
                image_ms_per_mp: image_p50_ms / f64::from(*mp),
                errors,
            });
        }
        progress.finish();
    }

    if wants(Phase::Download) {
        let file = match large {
            Some(stored) => stored,
            None => {
                let conn = gateway.connect(Version::Http2).await?;
                let body = stamped(&base[..args.large_bytes], run, counter);
                upload(&conn, owners.next_token()?, "file", body, timeout)
                    .await
                    .map_err(anyhow::Error::msg)
                    .context("uploading the file the range reads read")?
            }
        };
        figures.download = Some(download(args, gateway, servers, &file, run, multi).await?);
    }
    Ok(figures)
}

fn ticks() -> u64 {
    crate::sampling::procfs::clock_ticks_per_sec()
}

/// API and gateway CPU, seconds.
fn edge_cpu_s(cpu_ms: &BTreeMap<String, f64>) -> f64 {
    cpu_ms
        .iter()
        .filter(|(role, _)| role.as_str() == "api" || crate::sampling::servers::is_edge(role))
        .map(|(_, ms)| ms / 1000.0)
        .sum()
}

/// `POST /v1/media?kind=…`; `Err` is the reason to tally.
async fn upload(
    conn: &Connection,
    token: &str,
    kind: &str,
    body: Bytes,
    timeout: Duration,
) -> Result<Stored, String> {
    let len = body.len();
    let content_type = if kind == "image" {
        "image/jpeg"
    } else {
        "application/octet-stream"
    };
    let head = Request::builder()
        .method(Method::POST)
        .uri(format!("/v1/media?kind={kind}"))
        .header(header::USER_AGENT, "haberci-bench")
        .header(header::AUTHORIZATION, format!("Bearer {token}"))
        .header(header::CONTENT_TYPE, content_type)
        .header(header::CONTENT_LENGTH, len)
        .body(())
        .map_err(|err| err.to_string())?;
    let answer = conn
        .send(head, body, timeout)
        .await
        .map_err(|err| format!("{err:#}").chars().take(120).collect::<String>())?;
    if answer.status != StatusCode::CREATED {
        return Err(refusal(&answer));
    }
    let view = answer.json().map_err(|err| err.to_string())?;
    let size = view["size"].as_u64().unwrap_or(0) as usize;
    if kind == "file" && size != len {
        return Err(format!("stored {size} bytes of {len}"));
    }
    let url = view["url"]
        .as_str()
        .ok_or_else(|| "no url in the answer".to_owned())?;
    Ok(Stored {
        size,
        url: url.to_owned(),
    })
}

/// `HTTP 413 media_quota_exceeded`, from an error answer.
fn refusal(answer: &Answer) -> String {
    let code = answer
        .json()
        .ok()
        .and_then(|b| b["error"]["code"].as_str().map(str::to_owned))
        .unwrap_or_default();
    format!("HTTP {} {code}", answer.status.as_u16())
        .trim_end()
        .to_owned()
}

/// `cp` of `bytes` on the disk under `dev_dir`, then an fsync of the copy.
fn copy(dev_dir: &Path, bytes: &[u8]) -> anyhow::Result<CopyFigures> {
    let dir = dev_dir.join("bench");
    std::fs::create_dir_all(&dir)?;
    let (src, dst) = (dir.join("media-cp.src"), dir.join("media-cp.dst"));
    let _ = std::fs::remove_file(&dst);
    std::fs::write(&src, bytes)?;
    std::fs::File::open(&src)?.sync_all()?;
    let started = Instant::now();
    let status = std::process::Command::new("cp")
        .arg(&src)
        .arg(&dst)
        .status()
        .context("cannot run cp")?;
    let seconds = started.elapsed().as_secs_f64();
    std::fs::File::open(&dst)?.sync_all()?;
    let seconds_fsync = started.elapsed().as_secs_f64();
    let _ = std::fs::remove_file(&src);
    let _ = std::fs::remove_file(&dst);
    if !status.success() {
        bail!("cp failed: {status}");
    }
    let mb = bytes.len() as f64 / 1e6;
    Ok(CopyFigures {
        dir: dir.display().to_string(),
        bytes: bytes.len(),
        seconds,
        mb_per_s: mb / seconds,
        seconds_fsync,
        mb_per_s_fsync: mb / seconds_fsync,
    })
}

/// `--readers` clients, each on its own HTTP/2 connection, reading random ranges of `file`
/// until `--read-seconds` have passed.
async fn download(
    args: &MediaArgs,
    gateway: &Gateway,
    servers: &ServerSet,
    file: &Stored,
    run: u64,
    multi: &indicatif::MultiProgress,
) -> anyhow::Result<DownloadFigures> {
    let mut conns = Vec::with_capacity(args.readers);
    for _ in 0..args.readers {
        conns.push(gateway.connect(Version::Http2).await?);
    }
    let progress = bar(multi, args.read_seconds as u64, "ranges");
    let range = args.range_bytes;
    let ranges = (file.size / range).max(1) as u64;
    let url: Arc<str> = Arc::from(file.url.as_str());
    let timeout = Duration::from_secs(args.request_timeout);
    let before = servers.cpu();
    let started = Instant::now();
    let deadline = started + Duration::from_secs_f64(args.read_seconds);
    let mut tasks = tokio::task::JoinSet::new();
    for (i, conn) in conns.into_iter().enumerate() {
        let url = url.clone();
        tasks.spawn(async move {
            let mut state = run ^ (i as u64).wrapping_mul(0x51_7CC1_B727_220A);
            let mut latency = Latency::new();
            let mut errors: BTreeMap<String, u64> = BTreeMap::new();
            while Instant::now() < deadline {
                let start = (splitmix(&mut state) % ranges) as usize * range;
                let head = Request::builder()
                    .uri(&*url)
                    .header(header::USER_AGENT, "haberci-bench")
                    .header(
                        header::RANGE,
                        format!("bytes={start}-{}", start + range - 1),
                    )
                    .body(());
                let Ok(head) = head else {
                    *errors.entry("bad request".into()).or_default() += 1;
                    break;
                };
                let asked = Instant::now();
                match conn.send(head, Bytes::new(), timeout).await {
                    Ok(a) if a.status == StatusCode::PARTIAL_CONTENT && a.body.len() == range => {
                        latency.record(asked.elapsed());
                    }
                    Ok(a) if a.status == StatusCode::PARTIAL_CONTENT => {
                        *errors
                            .entry(format!("206 with {} bytes", a.body.len()))
                            .or_default() += 1;
                    }
                    Ok(a) => *errors.entry(refusal(&a)).or_default() += 1,
                    Err(err) => {
                        let why = format!("{err:#}").chars().take(120).collect::<String>();
                        *errors.entry(why).or_default() += 1;
                    }
                }
            }
            (latency, errors)
        });
    }
    let ticker = {
        let progress = progress.clone();
        tokio::spawn(async move {
            loop {
                tokio::time::sleep(Duration::from_secs(1)).await;
                progress.inc(1);
            }
        })
    };
    let mut latency = Latency::new();
    let mut errors: BTreeMap<String, u64> = BTreeMap::new();
    while let Some(done) = tasks.join_next().await {
        let (l, e) = done.context("a range reader panicked")?;
        latency.merge(&l.buckets());
        for (why, n) in e {
            *errors.entry(why).or_default() += n;
        }
    }
    let seconds = started.elapsed().as_secs_f64();
    let after: CpuSnapshot = servers.cpu();
    ticker.abort();
    progress.finish();
    let ok = latency.len() as f64;
    Ok(DownloadFigures {
        readers: args.readers,
        range_bytes: range,
        file_bytes: file.size,
        seconds,
        requests_per_s: ok / seconds,
        mb_per_s: ok * range as f64 / 1e6 / seconds,
        latency: latency.summary(),
        cpu_ms: before.delta_ms(&after, ticks()),
        errors,
    })
}
