//! The Socket.IO peer (`bench/peers/socketio/`), started and stopped by the bench for
//! `compare`: its own Redis (no persistence: the peer is a relay) and N Node processes on
//! consecutive ports, all on 127.0.0.1. Their pids are the servers charged for the peer's
//! side, the same way the Haberci stack's are.
//!
//! Every child is killed when the `Peer` is dropped (`kill_on_drop`), and the Node processes
//! also exit when their stdin closes, so a bench that dies leaves nothing running.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::Stdio;
use std::time::Duration;

use anyhow::{Context, bail};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::process::{Child, Command};

use crate::sampling::servers::Server;

/// How long a node or Redis may take to come up.
const START_TIMEOUT: Duration = Duration::from_secs(30);

#[derive(Clone, Debug)]
pub struct PeerSpec {
    /// The folder with `server.js` and `node_modules/` (`npm ci` done).
    pub dir: PathBuf,
    pub nodes: usize,
    /// Redis listens here; node i on `port + 1 + i`.
    pub port: u16,
    /// The certificate and key to serve TLS with (None: plain WebSocket).
    pub tls: Option<(PathBuf, PathBuf)>,
    pub node: String,
    pub redis_server: String,
}

pub struct Peer {
    children: Vec<Child>,
    pub nodes: Vec<SocketAddr>,
    /// The HS256 secret the nodes check tokens with (ASCII).
    pub secret: Vec<u8>,
    pub servers: Vec<Server>,
}

impl Peer {
    pub async fn start(spec: &PeerSpec) -> anyhow::Result<Peer> {
        if !spec.dir.join("node_modules").is_dir() {
            bail!(
                "{} has no node_modules: run `npm ci` there (./dev bench compare does)",
                spec.dir.display()
            );
        }
        // The nodes take the secret as text (jsonwebtoken uses its UTF-8 bytes): 64 hex digits.
        let secret: Vec<u8> = format!(
            "{}{}",
            uuid::Uuid::new_v4().simple(),
            uuid::Uuid::new_v4().simple()
        )
        .into_bytes();
        let mut peer = Peer {
            children: Vec::new(),
            nodes: Vec::new(),
            secret,
            servers: Vec::new(),
        };
        let redis_addr = SocketAddr::from(([127, 0, 0, 1], spec.port));
        let redis = Command::new(&spec.redis_server)
            .args(["--port", &spec.port.to_string(), "--bind", "127.0.0.1"])
            .args(["--save", "", "--appendonly", "no", "--daemonize", "no"])
            .args(["--maxclients", "1000", "--logfile", ""])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .kill_on_drop(true)
            .spawn()
            .with_context(|| format!("cannot start {}", spec.redis_server))?;
        peer.track("socketio-redis", &redis);
        peer.children.push(redis);
        tokio::time::timeout(START_TIMEOUT, wait_redis(redis_addr))
            .await
            .map_err(|_| anyhow::anyhow!("the peer's Redis on {redis_addr} did not answer"))?;
        let secret_text = String::from_utf8_lossy(&peer.secret).into_owned();
        for i in 0..spec.nodes {
            let port = spec.port + 1 + i as u16;
            let mut command = Command::new(&spec.node);
            command
                .arg("server.js")
                .current_dir(&spec.dir)
                .env("SIO_PORT", port.to_string())
                .env("SIO_HOST", "127.0.0.1")
                .env("SIO_REDIS_URL", format!("redis://{redis_addr}"))
                .env("SIO_JWT_SECRET", &secret_text)
                .stdin(Stdio::piped())
                .stdout(Stdio::piped())
                .stderr(Stdio::inherit())
                .kill_on_drop(true);
            if let Some((cert, key)) = &spec.tls {
                command.env("SIO_TLS_CERT", cert).env("SIO_TLS_KEY", key);
            }
            let mut child = command
                .spawn()
                .with_context(|| format!("cannot start {} (Node.js)", spec.node))?;
            let stdout = child.stdout.take().context("node stdout")?;
            peer.track(&format!("socketio{}", i + 1), &child);
            peer.children.push(child);
            let mut lines = BufReader::new(stdout).lines();
            let ready = tokio::time::timeout(START_TIMEOUT, async {
                while let Some(line) = lines.next_line().await? {
                    if line.starts_with("ready") {
                        return anyhow::Ok(true);
                    }
                }
                Ok(false)
            })
            .await;
            match ready {
                Ok(Ok(true)) => {}
                _ => bail!("Socket.IO node {} on port {port} did not start", i + 1),
            }
            // Keep reading its stdout so a chatty node never blocks on a full pipe.
            tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
            peer.nodes.push(SocketAddr::from(([127, 0, 0, 1], port)));
        }
        Ok(peer)
    }

    fn track(&mut self, role: &str, child: &Child) {
        if let Some(pid) = child.id() {
            self.servers.push(Server {
                role: role.into(),
                pid,
            });
        }
    }

    /// Stops the nodes (stdin closed, then killed if still there), then Redis.
    pub async fn stop(mut self) {
        let mut children = std::mem::take(&mut self.children);
        if children.is_empty() {
            return;
        }
        let mut redis = children.remove(0);
        for child in &mut children {
            drop(child.stdin.take());
        }
        for child in &mut children {
            if tokio::time::timeout(Duration::from_secs(3), child.wait())
                .await
                .is_err()
            {
                let _ = child.kill().await;
            }
        }
        let _ = redis.kill().await;
    }
}

async fn wait_redis(addr: SocketAddr) {
    loop {
        if let Ok(mut tcp) = tokio::net::TcpStream::connect(addr).await {
            let mut answer = [0u8; 7];
            if tcp.write_all(b"PING\r\n").await.is_ok()
                && tcp.read_exact(&mut answer).await.is_ok()
                && &answer == b"+PONG\r\n"
            {
                return;
            }
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}
