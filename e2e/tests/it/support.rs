//! A whole Haberci deployment per test, as real processes:
//!
//! - a private `redis-server` (AOF on) in a temp dir, so a test may kill or restart it, with the
//!   deployment's users (deploy/redis/users.acl): each process runs as its own;
//! - one `haberci-backend api`, any number of `haberci-backend worker`s and `haberci-gateway`s,
//!   run from the binaries cargo built next to this test executable;
//! - the shared test database (`HABERCI_TEST_DATABASE_URL`, through PgBouncer), where every
//!   test uses users of its own, and a stream prefix of its own on its own Redis; or, for a
//!   test that crashes them ([`Cluster::start_private`]), a Postgres and PgBouncer of its own
//!   ([`crate::private_pg`]).
//!
//! Every wait is on an event (a log line, an answer) and bounded by [`TIMEOUT`]; every
//! process is killed when the [`Cluster`] is dropped.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use haberci_client::{ClientConfig, GroupId, Roots, Transport, UserId};
use haberci_testkit::unique::free_port;
use haberci_testkit::{TransportKind, User, api, env, unique, users};
use serde_json::Value;
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::process::{Child, Command};
use tokio::sync::watch;

use haberci_bench::sampling::resp::Redis as RespClient;

use crate::private_pg::{PgBouncer, Postgres};

/// Bounds every wait: longer than `haberci_testkit::TIMEOUT`, for processes that start cold.
pub const TIMEOUT: Duration = Duration::from_secs(20);

/// The directory holding the workspace's binaries: this test runs from `<target>/<profile>/deps`,
/// unless `HABERCI_E2E_BIN_DIR` names another.
fn bin_dir() -> PathBuf {
    if let Some(dir) = std::env::var_os("HABERCI_E2E_BIN_DIR") {
        return dir.into();
    }
    let exe = std::env::current_exe().expect("current exe");
    exe.parent()
        .and_then(Path::parent)
        .expect("target dir")
        .to_path_buf()
}

pub(crate) fn binary(name: &str) -> PathBuf {
    let path = bin_dir().join(name);
    assert!(
        path.exists(),
        "{} is missing: build the workspace (`cargo nextest run --workspace` does)",
        path.display()
    );
    path
}

/// One child process, its log file, and the last log line it printed.
pub struct Process {
    pub name: String,
    child: Child,
    lines: watch::Receiver<Vec<String>>,
}

impl Process {
    async fn spawn(
        name: &str,
        program: &Path,
        args: &[&str],
        envs: &[(String, String)],
        log_dir: &Path,
    ) -> Process {
        let mut command = Command::new(program);
        command.args(args);
        Process::spawn_command(name, command, envs, log_dir).await
    }

    /// [`Process::spawn`] of a prepared command (its program, arguments and user).
    pub async fn spawn_command(
        name: &str,
        mut command: Command,
        envs: &[(String, String)],
        log_dir: &Path,
    ) -> Process {
        command
            .env_clear()
            .env("PATH", std::env::var("PATH").unwrap_or_default())
            .env("HABERCI_LOG_FORMAT", "json")
            .env(
                "HABERCI_LOG",
                std::env::var("HABERCI_E2E_LOG").unwrap_or_else(|_| "info".into()),
            )
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true)
            // Many processes of a kind run at once (across tests too): each serves its
            // metrics on a port of its own.
            .env("HABERCI_METRICS_ADDR", "127.0.0.1:0");
        for (key, value) in envs {
            command.env(key, value);
        }
        let mut child = command
            .spawn()
            .unwrap_or_else(|e| panic!("spawn {name}: {e}"));
        let (tx, rx) = watch::channel(Vec::new());
        let log_path = log_dir.join(format!("{name}.log"));
        for stream in [
            child
                .stdout
                .take()
                .map(|s| Box::new(s) as Box<dyn tokio::io::AsyncRead + Send + Unpin>),
            child
                .stderr
                .take()
                .map(|s| Box::new(s) as Box<dyn tokio::io::AsyncRead + Send + Unpin>),
        ]
        .into_iter()
        .flatten()
        {
            let tx = tx.clone();
            let log_path = log_path.clone();
            tokio::spawn(async move {
                let mut file = tokio::fs::OpenOptions::new()
                    .create(true)
                    .append(true)
                    .open(&log_path)
                    .await
                    .ok();
                let mut lines = BufReader::new(stream).lines();
                while let Ok(Some(line)) = lines.next_line().await {
                    if let Some(file) = file.as_mut() {
                        let _ = file.write_all(format!("{line}\n").as_bytes()).await;
                    }
                    tx.send_modify(|all| all.push(line));
                }
            });
        }
        Process {
            name: name.to_owned(),
            child,
            lines: rx,
        }
    }

    /// Waits until the process logs a JSON line whose message is `message`; returns the line.
    pub async fn wait_for_log(&mut self, message: &str) -> Value {
        let wanted = message.to_owned();
        self.wait_for(message, move |line| {
            serde_json::from_str::<Value>(line)
                .ok()
                .filter(|v| v["message"] == wanted.as_str())
        })
        .await
    }

    /// Waits until the process has logged `message` `n` times in all.
    pub async fn wait_for_nth_log(&mut self, message: &str, n: usize) {
        let wanted = message.to_owned();
        let seen = std::sync::atomic::AtomicUsize::new(0);
        self.wait_for(&format!("{message} (#{n})"), move |line| {
            let matches =
                serde_json::from_str::<Value>(line).is_ok_and(|v| v["message"] == wanted.as_str());
            (matches && seen.fetch_add(1, std::sync::atomic::Ordering::Relaxed) + 1 == n)
                .then_some(Value::Null)
        })
        .await;
    }

    /// Waits until the process prints a line containing `text`.
    pub async fn wait_for_text(&mut self, text: &str) {
        let wanted = text.to_owned();
        self.wait_for(text, move |line| {
            line.contains(&wanted).then_some(Value::Null)
        })
        .await;
    }

    async fn wait_for(&mut self, what: &str, matches: impl Fn(&str) -> Option<Value>) -> Value {
        let name = self.name.clone();
        let found = tokio::time::timeout(TIMEOUT, async {
            let mut seen = 0;
            loop {
                {
                    let lines = self.lines.borrow_and_update();
                    for line in &lines[seen..] {
                        if let Some(value) = matches(line) {
                            return value;
                        }
                    }
                    seen = lines.len();
                }
                if self.lines.changed().await.is_err() {
                    panic!("{name} exited before logging {what:?}");
                }
            }
        })
        .await;
        found.unwrap_or_else(|_| {
            let lines = self.lines.borrow();
            let tail = lines[lines.len().saturating_sub(20)..].join("\n");
            panic!("{name} did not log {what:?} within {TIMEOUT:?}; its last lines:\n{tail}")
        })
    }

    /// SIGKILL, and wait until it is gone.
    pub async fn kill(&mut self) {
        let _ = self.child.start_kill();
        let _ = self.child.wait().await;
    }

    /// Waits until the process has exited by itself.
    pub async fn wait_exit(&mut self) {
        let name = self.name.clone();
        tokio::time::timeout(TIMEOUT, self.child.wait())
            .await
            .unwrap_or_else(|_| panic!("{name} did not exit within {TIMEOUT:?}"))
            .unwrap_or_else(|e| panic!("wait for {name}: {e}"));
    }

    /// Sends `signal` (a name `kill -s` knows, e.g. `STOP`, `CONT`).
    pub async fn signal(&self, signal: &str) {
        let pid = self.child.id().expect("the process runs");
        let status = Command::new("kill")
            .args(["-s", signal, &pid.to_string()])
            .status()
            .await
            .expect("run kill");
        assert!(status.success(), "kill -s {signal} {}", self.name);
    }
}

/// The Redis users of deploy/redis/users.acl that the processes run as.
pub const REDIS_USERS: [&str; 5] = [
    "haberci-admin",
    "haberci-exporter",
    "haberci-gateway",
    "haberci-worker",
    "haberci-api",
];

/// A private Redis with AOF, restartable on the same port and data, with the deployment's
/// users (deploy/redis/users.acl) for this cluster's stream prefix: one server, or a Redis
/// Cluster of 3 masters and 3 replicas ([`Redis::start_cluster`]).
pub struct Redis {
    dir: PathBuf,
    /// user → password.
    passwords: std::collections::HashMap<&'static str, String>,
    nodes: Vec<RedisNode>,
    clustered: bool,
}

struct RedisNode {
    port: u16,
    /// The cluster bus (gossip between nodes).
    bus_port: u16,
    process: Option<Process>,
}

/// A Redis Cluster's node timeout here: how long a master may be silent before its replica
/// takes over (Redis's default is 15 s).
pub const CLUSTER_NODE_TIMEOUT_MS: u64 = 2000;

impl Redis {
    async fn start(dir: &Path, log_dir: &Path, stream_prefix: &str) -> Redis {
        let mut redis = Redis::prepare(dir, stream_prefix, 1, false);
        redis.launch(0, log_dir).await;
        redis
    }

    /// Six nodes in cluster mode, joined by `redis-cli --cluster create` (one replica per
    /// master), and ready: every slot served, every replica in sync.
    pub async fn start_cluster(dir: &Path, log_dir: &Path, stream_prefix: &str) -> Redis {
        let mut redis = Redis::prepare(dir, stream_prefix, 6, true);
        for node in 0..6 {
            redis.launch(node, log_dir).await;
        }
        let mut create = Command::new("redis-cli");
        create
            .args([
                "--no-auth-warning",
                "--user",
                "haberci-admin",
                "--cluster",
                "create",
            ])
            .args(redis.nodes.iter().map(|n| format!("127.0.0.1:{}", n.port)))
            .args(["--cluster-replicas", "1", "--cluster-yes"])
            .env("REDISCLI_AUTH", &redis.passwords["haberci-admin"]);
        let out = create
            .output()
            .await
            .expect("run redis-cli --cluster create");
        assert!(
            out.status.success(),
            "redis-cli --cluster create: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        redis.wait_until_healthy().await;
        redis
    }

    fn prepare(dir: &Path, stream_prefix: &str, nodes: usize, clustered: bool) -> Redis {
        let passwords: std::collections::HashMap<&'static str, String> = REDIS_USERS
            .iter()
            .map(|user| (*user, unique::secret()))
            .collect();
        let template = concat!(env!("CARGO_MANIFEST_DIR"), "/../deploy/redis/users.acl");
        // Redis's ACL files take no comments.
        let mut acl: String = std::fs::read_to_string(template)
            .expect("deploy/redis/users.acl")
            .lines()
            .filter(|l| !l.is_empty() && !l.starts_with('#'))
            .map(|l| format!("{l}\n"))
            .collect();
        acl = acl.replace("@STREAM_PREFIX@", stream_prefix);
        for (user, password) in &passwords {
            let var = user.trim_start_matches("haberci-").to_uppercase();
            acl = acl.replace(&format!("#@{var}_HASH@"), &format!(">{password}"));
        }
        assert!(
            !acl.contains("_HASH@") && !acl.contains("@STREAM_PREFIX@"),
            "{template}: a variable left: {acl}"
        );
        std::fs::write(dir.join("users.acl"), acl).expect("users.acl");
        Redis {
            dir: dir.to_path_buf(),
            passwords,
            nodes: (0..nodes)
                .map(|_| RedisNode {
                    port: free_port(),
                    bus_port: free_port(),
                    process: None,
                })
                .collect(),
            clustered,
        }
    }

    async fn launch(&mut self, node: usize, log_dir: &Path) {
        let port = self.nodes[node].port.to_string();
        let dir = self.dir.join(format!("node{node}"));
        std::fs::create_dir_all(&dir).expect("redis node dir");
        let dir = dir.display().to_string();
        let acl = self.dir.join("users.acl").display().to_string();
        let mut args: Vec<String> = [
            "--port",
            &port,
            "--bind",
            "127.0.0.1",
            "--dir",
            &dir,
            "--aclfile",
            &acl,
            "--appendonly",
            "yes",
            "--appendfsync",
            "everysec",
            "--save",
            "",
            "--loglevel",
            "notice",
        ]
        .map(String::from)
        .to_vec();
        if self.clustered {
            args.extend(
                [
                    "--cluster-enabled",
                    "yes",
                    "--cluster-port",
                    &self.nodes[node].bus_port.to_string(),
                    "--cluster-config-file",
                    "nodes.conf",
                    "--cluster-node-timeout",
                    &CLUSTER_NODE_TIMEOUT_MS.to_string(),
                    // Replicas log in to their master as the admin (the default user is off).
                    "--masteruser",
                    "haberci-admin",
                    "--masterauth",
                    &self.passwords["haberci-admin"],
                ]
                .map(String::from),
            );
        }
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let name = if self.clustered {
            format!("redis{}", node + 1)
        } else {
            "redis".to_owned()
        };
        let mut process =
            Process::spawn(&name, Path::new("redis-server"), &args, &[], log_dir).await;
        // Redis logs plain text; it says so once the AOF is loaded and the port is open.
        process.wait_for_text("Ready to accept connections").await;
        self.nodes[node].process = Some(process);
    }

    /// The nodes that run (not killed).
    pub fn live_nodes(&self) -> Vec<usize> {
        (0..self.nodes.len())
            .filter(|n| self.nodes[*n].process.is_some())
            .collect()
    }

    /// Polls until every live node says the cluster is ok and every replica's link to its
    /// master is up (bounded by [`TIMEOUT`]).
    pub async fn wait_until_healthy(&self) {
        let deadline = tokio::time::Instant::now() + TIMEOUT;
        loop {
            let mut healthy = true;
            for node in self.live_nodes() {
                let Ok(mut redis) = RespClient::connect(&self.node_url(node)).await else {
                    healthy = false;
                    break;
                };
                let info = redis.command(&["CLUSTER", "INFO"]).await;
                let replication = redis.command(&["INFO", "replication"]).await;
                let ok = info
                    .ok()
                    .and_then(|v| v.text().ok())
                    .is_some_and(|t| t.contains("cluster_state:ok"));
                let linked = replication
                    .ok()
                    .and_then(|v| v.text().ok())
                    .is_some_and(|t| {
                        !t.contains("role:slave") || t.contains("master_link_status:up")
                    });
                healthy &= ok && linked;
            }
            if healthy {
                return;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "the Redis Cluster is not healthy within {TIMEOUT:?}"
            );
            // Polling the cluster's own view: gossip has no event to wait on.
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// The node that serves `key` as master now.
    pub async fn master_of(&self, key: &str) -> usize {
        for node in self.live_nodes() {
            let mut redis = RespClient::connect(&self.node_url(node))
                .await
                .expect("connect to a node");
            if self.role(node).await != "master" {
                continue;
            }
            // A master answers for its own slots; for others it redirects.
            if redis.command(&["EXISTS", key]).await.is_ok() {
                return node;
            }
        }
        panic!("no master serves {key}");
    }

    /// A node's role now: `master` or `slave`.
    async fn role(&self, node: usize) -> String {
        let mut redis = RespClient::connect(&self.node_url(node))
            .await
            .expect("connect to a node");
        match redis.command(&["ROLE"]).await.expect("ROLE") {
            haberci_bench::sampling::resp::Value::Array(Some(fields)) => fields
                .first()
                .and_then(|f| f.text().ok())
                .unwrap_or_default(),
            other => panic!("ROLE answered {other:?}"),
        }
    }

    /// A planned failover of every master that has a replica (`CLUSTER FAILOVER` on the
    /// replica): every slot they served moves, with no connection closed. Returns once each
    /// of those replicas is a master.
    pub async fn fail_over_every_master(&self) {
        let mut promoted = Vec::new();
        for node in self.live_nodes() {
            if self.role(node).await == "slave" {
                let mut redis = RespClient::connect(&self.node_url(node))
                    .await
                    .expect("connect to a node");
                redis
                    .command(&["CLUSTER", "FAILOVER"])
                    .await
                    .expect("CLUSTER FAILOVER");
                promoted.push(node);
            }
        }
        assert!(!promoted.is_empty(), "no replica to promote");
        let deadline = tokio::time::Instant::now() + TIMEOUT;
        for node in promoted {
            while self.role(node).await != "master" {
                assert!(
                    tokio::time::Instant::now() < deadline,
                    "node {node} was not promoted within {TIMEOUT:?}"
                );
                // The handover is the cluster's own protocol: nothing to wait on but its state.
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    }

    /// SIGKILL of node `node`, left down.
    pub async fn kill_node(&mut self, node: usize) {
        if let Some(mut process) = self.nodes[node].process.take() {
            process.kill().await;
        }
    }

    /// Node `node` directly, as the admin.
    pub fn node_url(&self, node: usize) -> String {
        format!(
            "redis://haberci-admin:{}@127.0.0.1:{}",
            self.passwords["haberci-admin"], self.nodes[node].port
        )
    }

    /// As the admin user (everything allowed).
    pub fn url(&self) -> String {
        self.url_as("haberci-admin")
    }

    /// As `user`, one of [`REDIS_USERS`]; on a cluster, fred's `redis-cluster://` form naming
    /// every node.
    pub fn url_as(&self, user: &str) -> String {
        let password = self
            .passwords
            .get(user)
            .unwrap_or_else(|| panic!("no Redis user {user}"));
        let first = self.nodes[0].port;
        if !self.clustered {
            return format!("redis://{user}:{password}@127.0.0.1:{first}");
        }
        let others: Vec<String> = self.nodes[1..]
            .iter()
            .map(|n| format!("node=127.0.0.1:{}", n.port))
            .collect();
        format!(
            "redis-cluster://{user}:{password}@127.0.0.1:{first}?{}",
            others.join("&")
        )
    }

    /// Without a user: what anyone on the host could try.
    pub fn anonymous_url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.nodes[0].port)
    }

    fn single(&self) -> &Process {
        assert!(!self.clustered, "a single-server operation on a cluster");
        self.nodes[0].process.as_ref().expect("redis runs")
    }

    /// SIGSTOP: Redis keeps its sockets open and answers nothing, which is what a network
    /// partition looks like to its clients. [`Redis::thaw`] ends it.
    pub async fn freeze(&self) {
        self.single().signal("STOP").await;
    }

    pub async fn thaw(&self) {
        self.single().signal("CONT").await;
    }

    /// Stops Redis (SIGKILL: nothing is flushed beyond what AOF already holds) and starts it
    /// again on the same port and data.
    pub async fn restart(&mut self, log_dir: &Path) {
        self.single();
        self.kill_node(0).await;
        self.launch(0, log_dir).await;
    }
}

/// A gateway process and where it listens.
pub struct GatewayProcess {
    pub process: Process,
    pub tcp: SocketAddr,
    pub udp: SocketAddr,
}

impl GatewayProcess {
    /// The QUIC server id of gateway `index` (`HABERCI_QUIC_SERVER_ID`).
    pub fn server_id(index: usize) -> u16 {
        u16::try_from(index + 1).expect("a few gateways")
    }

    /// Where a client reaches this gateway over `kind`.
    pub fn transport(&self, kind: TransportKind) -> Transport {
        kind.client_transport(self.tcp, self.udp)
    }
}

/// A Postgres and PgBouncer of one cluster's own.
pub struct PrivateDatabase {
    pub postgres: Postgres,
    pub bouncer: PgBouncer,
    /// Its streaming replica ([`Cluster::start_private_with_replica`]).
    pub replica: Option<Postgres>,
}

/// How stale a replica read may be in a cluster with a replica: long, so that a test can tell
/// a replica's answer from the primary's before the api stops trusting it.
pub const REPLICA_MAX_STALENESS: Duration = Duration::from_secs(20);

fn new_dir() -> tempfile::TempDir {
    let dir = tempfile::tempdir().expect("tempdir");
    std::fs::create_dir_all(dir.path().join("logs")).expect("logs dir");
    dir
}

/// The whole deployment of one test.
pub struct Cluster {
    pub dir: tempfile::TempDir,
    pub redis: Redis,
    pub api: Option<Process>,
    pub api_addr: SocketAddr,
    pub workers: Vec<Process>,
    pub gateways: Vec<GatewayProcess>,
    pub certs: haberci_certs::CertPaths,
    pub prefix: String,
    /// The database the processes use, through PgBouncer.
    database_url: String,
    /// The same database, directly.
    direct_url: String,
    /// Postgres and PgBouncer of this cluster's own ([`Cluster::start_private`]).
    pub private_db: Option<PrivateDatabase>,
    internal_token: String,
    key_dir: PathBuf,
}

impl Cluster {
    /// Redis, the api, `workers` workers and `gateways` gateways, all ready, on the shared
    /// test database.
    pub async fn start(workers: usize, gateways: usize) -> Cluster {
        Cluster::start_on(env::database_url(), workers, gateways).await
    }

    /// [`Cluster::start`] on the database at `database_url` (through PgBouncer).
    pub async fn start_on(database_url: String, workers: usize, gateways: usize) -> Cluster {
        let dir = new_dir();
        Cluster::launch(
            dir,
            database_url,
            env::direct_database_url(),
            None,
            false,
            workers,
            gateways,
        )
        .await
    }

    /// [`Cluster::start_on`] a Redis Cluster (3 masters, 3 replicas) instead of one Redis, and
    /// the database at `database_url` (through PgBouncer) and `direct_url`.
    pub async fn start_on_redis_cluster(
        database_url: String,
        direct_url: String,
        workers: usize,
        gateways: usize,
    ) -> Cluster {
        Cluster::launch(
            new_dir(),
            database_url,
            direct_url,
            None,
            true,
            workers,
            gateways,
        )
        .await
    }

    /// [`Cluster::start`] on a Postgres and a PgBouncer of its own, which the test may crash
    /// and restart ([`Cluster::private_db`]).
    pub async fn start_private(workers: usize, gateways: usize) -> Cluster {
        Cluster::start_private_with(false, workers, gateways).await
    }

    /// [`Cluster::start_private`], and a streaming replica of its Postgres that the api reads
    /// from (`HABERCI_REPLICA_DATABASE_URL`, through the PgBouncer) while it is fresh: at most
    /// [`REPLICA_MAX_STALENESS`] behind.
    pub async fn start_private_with_replica(workers: usize, gateways: usize) -> Cluster {
        Cluster::start_private_with(true, workers, gateways).await
    }

    async fn start_private_with(replica: bool, workers: usize, gateways: usize) -> Cluster {
        let dir = new_dir();
        let logs = dir.path().join("logs");
        let postgres = Postgres::start(&dir.path().join("pg"), &logs).await;
        let replica = if replica {
            Some(Postgres::start_replica(&postgres, &dir.path().join("pg-replica"), &logs).await)
        } else {
            None
        };
        let bouncer = PgBouncer::start(
            &dir.path().join("pgbouncer"),
            &postgres,
            replica.as_ref(),
            &logs,
        )
        .await;
        let (pooled, direct) = (bouncer.url(), postgres.url());
        let private = PrivateDatabase {
            postgres,
            bouncer,
            replica,
        };
        Cluster::launch(dir, pooled, direct, Some(private), false, workers, gateways).await
    }

    async fn launch(
        dir: tempfile::TempDir,
        database_url: String,
        direct_url: String,
        private_db: Option<PrivateDatabase>,
        clustered_redis: bool,
        workers: usize,
        gateways: usize,
    ) -> Cluster {
        let logs = dir.path().join("logs");
        let redis_dir = dir.path().join("redis");
        std::fs::create_dir_all(&redis_dir).expect("redis dir");
        let prefix = unique::stream_prefix("e2e");
        let redis = if clustered_redis {
            Redis::start_cluster(&redis_dir, &logs, &prefix).await
        } else {
            Redis::start(&redis_dir, &logs, &prefix).await
        };

        let certs = haberci_certs::CertPaths::new(dir.path().join("certs"));
        haberci_certs::ensure(&certs, time_now()).expect("certs");
        let key_dir = dir.path().join("keys");
        let out = std::process::Command::new(binary("haberci-backend"))
            .args(["keys", "ensure", "--dir"])
            .arg(&key_dir)
            .output()
            .expect("keys ensure");
        assert!(
            out.status.success(),
            "keys ensure: {}",
            String::from_utf8_lossy(&out.stderr)
        );

        let internal_token = unique::secret();
        let api_port = free_port();
        let api_addr: SocketAddr = format!("127.0.0.1:{api_port}").parse().expect("addr");
        let mut cluster = Cluster {
            dir,
            redis,
            api: None,
            api_addr,
            workers: Vec::new(),
            gateways: Vec::new(),
            certs,
            prefix,
            database_url,
            direct_url,
            private_db,
            internal_token,
            key_dir,
        };
        cluster.spawn_api().await;
        for _ in 0..workers {
            cluster.add_worker().await;
        }
        for _ in 0..gateways {
            cluster.add_gateway().await;
        }
        cluster
    }

    async fn spawn_api(&mut self) {
        let mut env = self.common_env("haberci-api");
        if let Some(private) = self.private_db.as_ref().filter(|p| p.replica.is_some()) {
            env.push((
                "HABERCI_REPLICA_DATABASE_URL".into(),
                private.bouncer.replica_url(),
            ));
            env.push((
                "HABERCI_REPLICA_MAX_STALENESS_MS".into(),
                REPLICA_MAX_STALENESS.as_millis().to_string(),
            ));
        }
        let mut api = Process::spawn(
            "api",
            &binary("haberci-backend"),
            &["api"],
            &env,
            &self.logs(),
        )
        .await;
        api.wait_for_log("api listening").await;
        self.api = Some(api);
    }

    /// SIGKILL of the api, and a new one on the same address.
    pub async fn kill_and_restart_api(&mut self) {
        if let Some(mut api) = self.api.take() {
            api.kill().await;
        }
        self.spawn_api().await;
    }

    /// SIGKILL of worker `index`, and a new worker in its place.
    pub async fn kill_and_replace_worker(&mut self, index: usize) {
        self.workers[index].kill().await;
        self.workers.remove(index);
        self.add_worker().await;
    }

    /// SIGKILL of gateway `index`, without a restart (its clients move to another).
    pub async fn kill_gateway(&mut self, index: usize) {
        self.gateways[index].process.kill().await;
    }

    /// A new gateway on gateway `index`'s ports, in its place (after [`Cluster::kill_gateway`]).
    pub async fn restart_gateway(&mut self, index: usize) {
        let (tcp, udp) = (
            self.gateways[index].tcp.port(),
            self.gateways[index].udp.port(),
        );
        self.gateways[index] = self.spawn_gateway(index, tcp, udp).await;
    }

    /// Removes gateway `index`'s roster (after [`Cluster::kill_gateway`]): its next life
    /// resets no client unprompted, so a test sees what else tells a client of the crash.
    pub fn forget_roster(&self, index: usize) {
        std::fs::remove_file(self.roster(index)).expect("the roster of a gateway that ran");
    }

    /// Where gateway `index` lists its QUIC connections (`HABERCI_QUIC_ROSTER`).
    pub fn roster(&self, index: usize) -> PathBuf {
        self.dir.path().join(format!("gateway{}.roster", index + 1))
    }

    pub fn logs(&self) -> PathBuf {
        self.dir.path().join("logs")
    }

    /// What every process is given; each is the Redis user `redis_user`.
    fn common_env(&self, redis_user: &str) -> Vec<(String, String)> {
        let mut env = vec![
            ("HABERCI_DATABASE_URL", self.database_url.clone()),
            ("HABERCI_REDIS_URL", self.redis.url_as(redis_user)),
            ("HABERCI_API_ADDR", self.api_addr.to_string()),
            ("HABERCI_BACKEND_URL", format!("http://{}", self.api_addr)),
            ("HABERCI_JWT_KEY_DIR", self.key_dir.display().to_string()),
            ("HABERCI_INTERNAL_TOKEN", self.internal_token.clone()),
            ("HABERCI_STREAM_PREFIX", self.prefix.clone()),
            ("HABERCI_STREAM_SHARDS", "4".to_owned()),
            // Reclaim quickly what a killed worker left pending.
            ("HABERCI_CLAIM_IDLE", "2s".to_owned()),
            ("HABERCI_CLAIM_INTERVAL", "500ms".to_owned()),
            ("HABERCI_CERT_DIR", self.certs.dir.display().to_string()),
        ];
        for key in [
            "HABERCI_RATE_REGISTER_IP",
            "HABERCI_RATE_LOGIN_IP",
            "HABERCI_RATE_REFRESH_IP",
            "HABERCI_RATE_REGISTER_ACCOUNT",
        ] {
            env.push((key, "100000/60s".to_owned()));
        }
        env.into_iter().map(|(k, v)| (k.to_owned(), v)).collect()
    }

    pub async fn add_worker(&mut self) {
        let name = format!("worker{}", self.workers.len() + 1);
        let mut worker = Process::spawn(
            &name,
            &binary("haberci-backend"),
            &["worker"],
            &self.common_env("haberci-worker"),
            &self.logs(),
        )
        .await;
        worker.wait_for_log("worker ready").await;
        self.workers.push(worker);
    }

    pub async fn add_gateway(&mut self) {
        let gateway = self
            .spawn_gateway(self.gateways.len(), free_port(), free_port())
            .await;
        self.gateways.push(gateway);
    }

    /// Gateway `index` (0-based) is `gateway{index + 1}`, with QUIC server id `index + 1`.
    async fn spawn_gateway(&self, index: usize, tcp_port: u16, udp_port: u16) -> GatewayProcess {
        let name = format!("gateway{}", index + 1);
        let mut env = self.common_env("haberci-gateway");
        env.push((
            "HABERCI_QUIC_SERVER_ID".into(),
            GatewayProcess::server_id(index).to_string(),
        ));
        // Each gateway has an address of its own, except behind quic_lb.rs's balancer, which
        // routes by CID: either way no packet of a live connection reaches another gateway.
        env.push(("HABERCI_QUIC_RESET_FLEET".into(), "true".into()));
        // As deployed: a restarted gateway resets its previous life's connections unprompted.
        env.push((
            "HABERCI_QUIC_ROSTER".into(),
            self.roster(index).display().to_string(),
        ));
        env.push((
            "HABERCI_GATEWAY_TCP_ADDR".into(),
            format!("127.0.0.1:{tcp_port}"),
        ));
        env.push((
            "HABERCI_GATEWAY_UDP_ADDR".into(),
            format!("[::]:{udp_port}"),
        ));
        // Streams of hundreds of sends from one session: the default rate (20/s, burst 40)
        // would make these tests about the rate limiter.
        env.push(("HABERCI_SESSION_SEND_RATE".into(), "5000".into()));
        env.push(("HABERCI_SESSION_SEND_BURST".into(), "5000".into()));
        let mut process =
            Process::spawn(&name, &binary("haberci-gateway"), &[], &env, &self.logs()).await;
        process.wait_for_log("gateway ready").await;
        GatewayProcess {
            process,
            tcp: format!("127.0.0.1:{tcp_port}").parse().expect("addr"),
            udp: format!("127.0.0.1:{udp_port}").parse().expect("addr"),
        }
    }

    /// A request to the api (as a gateway on loopback would send it); the JSON answer.
    pub async fn api(
        &self,
        method: http::Method,
        path: &str,
        token: Option<&str>,
        body: Value,
    ) -> (u16, Value) {
        api::call(self.api_addr, method, path, body, token).await
    }

    /// Registers a new user named `prefix_<random>`.
    pub async fn register(&self, prefix: &str) -> User {
        users::register(self.api_addr, prefix).await
    }

    /// `POST /v1/groups` as `owner`, with `members` besides the owner.
    pub async fn create_group(&self, owner: &User, members: &[&User]) -> GroupId {
        users::create_group(self.api_addr, owner, members).await
    }

    /// `POST /v1/auth/logout`: revokes the login session `user.token` belongs to.
    pub async fn logout(&self, user: &User) {
        users::logout(self.api_addr, &user.token).await;
    }

    /// An access token for `user`, correctly signed with the deployment's key, that expired
    /// an hour ago (beyond any clock-skew leeway).
    pub fn expired_token(&self, user: &User) -> String {
        let keys = haberci_token::KeySet::load_dir(&self.key_dir, None).expect("signing keys");
        let now = time_now().unix_timestamp();
        let claims =
            haberci_token::Claims::new(user.id.as_uuid(), uuid::Uuid::now_v7(), now - 7200, 3600);
        keys.sign(&claims)
    }

    /// A client configuration for `kind` to gateway number `gateway`, trusting the cluster's CA.
    pub fn client_config(&self, gateway: usize, kind: TransportKind, token: &str) -> ClientConfig {
        let mut config = ClientConfig::new(
            self.gateways[gateway].transport(kind),
            Roots::PemFile(self.certs.ca_cert()),
            token,
        );
        config.client_name = "haberci-e2e".into();
        config
    }

    /// The cluster's database, directly (not through PgBouncer): for checking what is stored.
    pub async fn db(&self) -> sqlx::PgPool {
        sqlx::postgres::PgPoolOptions::new()
            .max_connections(2)
            .connect(&self.direct_url)
            .await
            .expect("connect to the test database")
    }
}

/// How many rows `messages` holds for each `client_msg_id` of `sender`.
/// A text message from whoever sends it to `user`.
pub fn text_to(user: &User, text: impl Into<String>) -> haberci_client::SendMessage {
    haberci_client::message(
        haberci_client::Recipient::User(user.id),
        haberci_client::MessageKind::Text,
        text,
    )
}

pub async fn stored_per_client_msg_id(
    db: &sqlx::PgPool,
    sender: UserId,
) -> std::collections::HashMap<uuid::Uuid, i64> {
    let rows: Vec<(uuid::Uuid, i64)> = sqlx::query_as(
        "SELECT client_msg_id, count(*) FROM messages WHERE sender_id = $1 GROUP BY client_msg_id",
    )
    .bind(sender.as_uuid())
    .fetch_all(db)
    .await
    .expect("count stored messages");
    rows.into_iter().collect()
}

fn time_now() -> time::OffsetDateTime {
    time::OffsetDateTime::now_utc()
}

impl Drop for Cluster {
    fn drop(&mut self) {
        // A failed test keeps its processes' logs (any test, with HABERCI_E2E_KEEP_LOGS set):
        // the temp dir goes, a copy stays.
        if std::thread::panicking() || std::env::var_os("HABERCI_E2E_KEEP_LOGS").is_some() {
            let keep =
                std::env::temp_dir().join(format!("haberci-e2e-{}", uuid::Uuid::new_v4().simple()));
            if std::fs::create_dir_all(&keep).is_ok() {
                if let Ok(entries) = std::fs::read_dir(self.logs()) {
                    for entry in entries.flatten() {
                        let _ = std::fs::copy(entry.path(), keep.join(entry.file_name()));
                    }
                }
                eprintln!("process logs kept in {}", keep.display());
            }
        }
    }
}
