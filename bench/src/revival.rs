//! Stopping a gateway of the dev stack and starting it again as it was (same command line,
//! environment, directory, log and pid file, network namespace): `--fresh-gateways` restarts every gateway before
//! a run, and `storm` kills one mid-run and brings it back.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};

use crate::sampling::servers::ServerSet;
use crate::target::{Target, ca_store};

/// Restarts every gateway of the stack (SIGTERM, wait, start again as it was) and waits until
/// each answers `/readyz`.
pub(crate) async fn restart_gateways(target: &Target) -> anyhow::Result<()> {
    let servers = ServerSet::discover(&target.dev_dir, &[])?;
    let roots = ca_store(target)?;
    for gw in servers.gateways() {
        let revival = Revival::capture(gw.pid, &target.dev_dir, &gw.role)?;
        signal(gw.pid, "-TERM")?;
        let deadline = Instant::now() + Duration::from_secs(20);
        while crate::sampling::procfs::sample(gw.pid).is_some() && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        if crate::sampling::procfs::sample(gw.pid).is_some() {
            let _ = kill9(gw.pid);
        }
        revival.start()?;
        let Some(spec) = victim_index(&gw.role).and_then(|i| target.gateways.get(i)) else {
            continue;
        };
        let port = spec.tcp.rsplit_once(':').map_or("", |(_, p)| p);
        let api = crate::api::ApiTarget::new(
            &format!("https://{}:{port}", target.server_name),
            roots.clone(),
        )
        .await?;
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let ready = match api.connect([127, 0, 0, 1].into()).await {
                Ok(mut conn) => conn
                    .get("/readyz")
                    .await
                    .is_ok_and(|a| a.status == http::StatusCode::OK),
                Err(_) => false,
            };
            if ready {
                break;
            }
            if Instant::now() > deadline {
                bail!("{} did not become ready after its restart", gw.role);
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }
    Ok(())
}

/// What it takes to start a process again as it was: command line, environment, directory,
/// and the dev pid file's second line (the stamp `./dev up` compares).
pub(crate) struct Revival {
    argv: Vec<String>,
    env: Vec<(String, String)>,
    cwd: PathBuf,
    pid_file: PathBuf,
    stamp: String,
    log: PathBuf,
    /// The named network namespace it ran in (`./dev hosts`), if not the bench's own.
    netns: Option<String>,
}

/// The name (under /run/netns, as `ip netns` names them) of the network namespace `pid` runs
/// in, when it is not this process's.
fn netns_of(pid: u32) -> Option<String> {
    let theirs = std::fs::read_link(format!("/proc/{pid}/ns/net")).ok()?;
    if std::fs::read_link("/proc/self/ns/net").ok()? == theirs {
        return None;
    }
    // `net:[4026532]`: the inode of the namespace, which its /run/netns file has too.
    let inode: u64 = theirs
        .to_str()?
        .strip_prefix("net:[")?
        .strip_suffix(']')?
        .parse()
        .ok()?;
    std::fs::read_dir("/run/netns")
        .ok()?
        .flatten()
        .find_map(|entry| {
            use std::os::unix::fs::MetadataExt;
            (entry.metadata().ok()?.ino() == inode).then(|| entry.file_name().into_string().ok())?
        })
}

impl Revival {
    pub(crate) fn capture(
        pid: u32,
        dev_dir: &std::path::Path,
        role: &str,
    ) -> anyhow::Result<Revival> {
        let split = |bytes: Vec<u8>| -> Vec<String> {
            bytes
                .split(|b| *b == 0)
                .filter(|s| !s.is_empty())
                .map(|s| String::from_utf8_lossy(s).into_owned())
                .collect()
        };
        let argv = split(std::fs::read(format!("/proc/{pid}/cmdline"))?);
        let env = split(std::fs::read(format!("/proc/{pid}/environ"))?)
            .into_iter()
            .filter_map(|kv| {
                kv.split_once('=')
                    .map(|(k, v)| (k.to_owned(), v.to_owned()))
            })
            .collect();
        let cwd = std::fs::read_link(format!("/proc/{pid}/cwd"))?;
        let pid_file = dev_dir.join(format!("run/{role}.pid"));
        let stamp = std::fs::read_to_string(&pid_file)
            .unwrap_or_default()
            .lines()
            .nth(1)
            .unwrap_or_default()
            .to_owned();
        if argv.is_empty() {
            bail!("cannot read the command line of {role} (pid {pid})");
        }
        Ok(Revival {
            argv,
            env,
            cwd,
            pid_file,
            stamp,
            log: dev_dir.join(format!("log/{role}.log")),
            netns: netns_of(pid),
        })
    }

    /// Starts it again, detached (own process group), logging where `./dev` logs it, and
    /// writes its pid file as `./dev up` does. Returns the new pid.
    // The child outlives the bench on purpose (it is the stack's gateway): never waited for.
    #[allow(clippy::zombie_processes)]
    pub(crate) fn start(&self) -> anyhow::Result<u32> {
        use std::os::unix::process::CommandExt;
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)?;
        // In its host's namespace again: `ip netns exec` execs the program, so the pid is
        // the program's.
        let mut command = match &self.netns {
            Some(ns) => {
                let mut ip = std::process::Command::new("ip");
                ip.args(["netns", "exec", ns]).args(&self.argv);
                ip
            }
            None => {
                let mut own = std::process::Command::new(&self.argv[0]);
                own.args(&self.argv[1..]);
                own
            }
        };
        let child = command
            .env_clear()
            .envs(self.env.iter().map(|(k, v)| (k, v)))
            .current_dir(&self.cwd)
            .stdin(std::process::Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .process_group(0)
            .spawn()
            .with_context(|| format!("cannot start {} again", self.argv[0]))?;
        let pid = child.id();
        std::fs::write(&self.pid_file, format!("{pid}\n{}\n", self.stamp))?;
        Ok(pid)
    }
}

/// `gateway` → 0, `gatewayN` → N − 1: the victim's place in the gateway list.
pub(crate) fn victim_index(role: &str) -> Option<usize> {
    match role.strip_prefix("gateway")? {
        "" => Some(0),
        n => n.parse::<usize>().ok()?.checked_sub(1),
    }
}

/// Restarts a backend process of the stack (`api`, `worker`, `worker2`, …) as an upgrade
/// would: SIGTERM, wait until it has exited, start the binary at the same path again with the
/// same settings (a new binary when the file was replaced), and wait until it is ready (the
/// api listens on its `HABERCI_API_ADDR`; a worker logs `worker ready` again). Returns how long
/// the role had no process ready.
pub(crate) async fn roll(dev_dir: &std::path::Path, role: &str) -> anyhow::Result<Duration> {
    let servers = ServerSet::discover(dev_dir, &[])?;
    let pid = servers
        .pid_of(role)
        .with_context(|| format!("no running {role} in {}", dev_dir.display()))?;
    let revival = Revival::capture(pid, dev_dir, role)?;
    let readies = |log: &std::path::Path| {
        std::fs::read_to_string(log)
            .map(|text| text.matches("worker ready").count())
            .unwrap_or(0)
    };
    let readies_before = readies(&revival.log);
    let started = Instant::now();
    signal(pid, "-TERM")?;
    let deadline = Instant::now() + Duration::from_secs(30);
    while crate::sampling::procfs::sample(pid).is_some() {
        if Instant::now() > deadline {
            bail!("{role} (pid {pid}) did not exit within 30 s of SIGTERM");
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let api_addr = revival
        .env
        .iter()
        .find(|(k, _)| k == "HABERCI_API_ADDR")
        .and_then(|(_, v)| v.parse::<SocketAddr>().ok());
    if role == "api"
        && let Some(addr) = api_addr
    {
        wait_refused(addr, Duration::from_secs(10)).await;
    }
    revival.start()?;
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let ready = match (role, api_addr) {
            ("api", Some(addr)) => tokio::net::TcpStream::connect(addr).await.is_ok(),
            _ => readies(&revival.log) > readies_before,
        };
        if ready {
            return Ok(started.elapsed());
        }
        if Instant::now() > deadline {
            bail!("{role} was not ready within 60 s of its restart");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Waits (bounded) until `addr` accepts TCP connections.
pub(crate) async fn wait_listening(addr: SocketAddr, limit: Duration) {
    let deadline = Instant::now() + limit;
    while Instant::now() < deadline {
        if tokio::net::TcpStream::connect(addr).await.is_ok() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Waits (bounded) until `addr` refuses TCP connections: a killed process's sockets close only
/// once its last thread has exited, after its pid already shows it dead; a process started
/// again before then cannot bind the same ports.
pub(crate) async fn wait_refused(addr: SocketAddr, limit: Duration) {
    let deadline = Instant::now() + limit;
    while Instant::now() < deadline {
        let connect = tokio::time::timeout(
            Duration::from_millis(200),
            tokio::net::TcpStream::connect(addr),
        );
        if matches!(connect.await, Ok(Err(_))) {
            return;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

pub(crate) fn kill9(pid: u32) -> anyhow::Result<()> {
    signal(pid, "-KILL")
}

/// `kill SIGNAL pid` (the kill(1) command: the crate forbids `unsafe`, so no libc call).
pub(crate) fn signal(pid: u32, signal: &str) -> anyhow::Result<()> {
    let status = std::process::Command::new("kill")
        .args([signal, &pid.to_string()])
        .status()
        .context("cannot run kill")?;
    if !status.success() {
        bail!("kill {signal} {pid} failed");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn waiting_for_a_closed_listener_ends_once_it_refuses() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let addr = listener.local_addr().expect("addr");
        let closer = tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(100)).await;
            drop(listener);
        });
        wait_refused(addr, Duration::from_secs(10)).await;
        assert!(
            closer.is_finished(),
            "returned only after the listener closed"
        );
        assert!(tokio::net::TcpStream::connect(addr).await.is_err());
    }

    #[test]
    fn victims_are_found_in_the_gateway_list() {
        assert_eq!(victim_index("gateway"), Some(0));
        assert_eq!(victim_index("gateway2"), Some(1));
        assert_eq!(victim_index("gateway0"), None);
        assert_eq!(victim_index("worker"), None);
    }
}
