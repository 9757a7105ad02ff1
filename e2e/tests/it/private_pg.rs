//! A private PostgreSQL and a PgBouncer in front of it, for tests that restart them (the chaos
//! run): the shared test database cannot be restarted under the other tests.
//!
//! Both refuse to run as root, so when the test runs as root they run as the `postgres` user
//! (the one Debian's package made), in a directory that user owns. The server binaries come
//! from `HABERCI_TEST_PG_BIN` (`./dev test` sets it), else the newest
//! `/usr/lib/postgresql/*/bin`.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use haberci_testkit::unique::free_port;

use crate::support::{Process, binary};

/// Who the servers run as: `None` is this process's user.
#[derive(Clone, Copy)]
struct RunAs(Option<(u32, u32)>);

impl RunAs {
    fn detect() -> RunAs {
        let status = std::fs::read_to_string("/proc/self/status").expect("/proc/self/status");
        let root = status
            .lines()
            .find_map(|l| l.strip_prefix("Uid:"))
            .and_then(|ids| ids.split_whitespace().nth(1))
            == Some("0");
        if !root {
            return RunAs(None);
        }
        let passwd = std::fs::read_to_string("/etc/passwd").expect("/etc/passwd");
        let ids = passwd
            .lines()
            .map(|l| l.split(':').collect::<Vec<_>>())
            .find(|f| f.first() == Some(&"postgres") && f.len() > 3)
            .map(|f| (f[2].parse().expect("uid"), f[3].parse().expect("gid")))
            .expect("running as root needs a `postgres` user (Debian's postgresql package)");
        RunAs(Some(ids))
    }

    fn own(&self, path: &Path) {
        if let Some((uid, gid)) = self.0 {
            std::os::unix::fs::chown(path, Some(uid), Some(gid)).expect("chown to postgres");
        }
    }

    fn command(&self, program: &Path) -> tokio::process::Command {
        let mut command = tokio::process::Command::new(program);
        if let Some((uid, gid)) = self.0 {
            command.uid(uid).gid(gid);
        }
        command
    }
}

fn pg_bin() -> PathBuf {
    if let Some(dir) = std::env::var_os("HABERCI_TEST_PG_BIN") {
        return dir.into();
    }
    let mut dirs: Vec<PathBuf> = std::fs::read_dir("/usr/lib/postgresql")
        .expect("PostgreSQL under /usr/lib/postgresql (or set HABERCI_TEST_PG_BIN)")
        .flatten()
        .map(|e| e.path().join("bin"))
        .filter(|p| p.join("postgres").exists())
        .collect();
    dirs.sort_by_key(|p| {
        p.parent()
            .and_then(|v| v.file_name())
            .and_then(|v| v.to_str())
            .and_then(|v| v.parse::<u32>().ok())
            .unwrap_or(0)
    });
    dirs.pop().expect("a PostgreSQL server binary")
}

/// The role and database the deployment uses.
pub const USER: &str = "haberci";
pub const DATABASE: &str = "haberci";

/// A private PostgreSQL server (trust authentication on 127.0.0.1 only), migrated.
pub struct Postgres {
    pub port: u16,
    data: PathBuf,
    run_as: RunAs,
    process: Option<Process>,
    /// A streaming replica (hot standby) rather than a primary.
    standby: bool,
}

impl Postgres {
    /// initdb, start, create the database and migrate it.
    pub async fn start(dir: &Path, log_dir: &Path) -> Postgres {
        let run_as = RunAs::detect();
        // The postgres user must reach its data directory through the test's temp dir.
        for ancestor in [dir.parent().expect("parent"), dir] {
            let _ = std::fs::set_permissions(ancestor, std::fs::Permissions::from_mode(0o755));
        }
        let data = dir.join("data");
        std::fs::create_dir_all(&data).expect("data dir");
        run_as.own(&data);
        let out = run_as
            .command(&pg_bin().join("initdb"))
            .args(["-A", "trust", "-U", USER, "-E", "UTF8", "--no-sync", "-D"])
            .arg(&data)
            .output()
            .await
            .expect("run initdb");
        assert!(
            out.status.success(),
            "initdb: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let mut postgres = Postgres {
            port: free_port(),
            data,
            run_as,
            process: None,
            standby: false,
        };
        postgres.launch(log_dir).await;
        let out = tokio::process::Command::new(binary("haberci-backend"))
            .arg("migrate")
            .env(
                "HABERCI_MIGRATE_DATABASE_URL",
                postgres.create_database().await,
            )
            .env("HABERCI_LOG", "warn")
            .output()
            .await
            .expect("run migrate");
        assert!(
            out.status.success(),
            "migrate: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        postgres
    }

    /// A streaming replica of `primary` (a base backup, then hot standby), started.
    pub async fn start_replica(primary: &Postgres, dir: &Path, log_dir: &Path) -> Postgres {
        let run_as = RunAs::detect();
        std::fs::create_dir_all(dir).expect("replica dir");
        let _ = std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o755));
        run_as.own(dir);
        let data = dir.join("data");
        let out = run_as
            .command(&pg_bin().join("pg_basebackup"))
            .args([
                "-h",
                "127.0.0.1",
                "-U",
                USER,
                "-X",
                "stream",
                "-R",
                "-c",
                "fast",
            ])
            .args(["--no-sync", "-p", &primary.port.to_string(), "-D"])
            .arg(&data)
            .output()
            .await
            .expect("run pg_basebackup");
        assert!(
            out.status.success(),
            "pg_basebackup: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let mut replica = Postgres {
            port: free_port(),
            data,
            run_as,
            process: None,
            standby: true,
        };
        replica.launch(log_dir).await;
        replica
    }

    /// Stops at once (as a crash would), without a restart.
    pub async fn stop(&mut self) {
        self.stop_immediately().await;
        if let Some(mut process) = self.process.take() {
            process.wait_exit().await;
        }
    }

    /// Starts again after [`Postgres::stop`].
    pub async fn start_again(&mut self, log_dir: &Path) {
        self.launch(log_dir).await;
    }

    /// Runs `sql` on this server's database, directly; the first column of the first row, as
    /// text (`None` for no row or NULL).
    pub async fn query(&self, sql: &str) -> Option<String> {
        use sqlx::Connection;
        let mut conn = sqlx::PgConnection::connect(&self.url())
            .await
            .expect("connect to the private Postgres");
        sqlx::query_scalar::<_, Option<String>>(sql)
            .fetch_optional(&mut conn)
            .await
            .unwrap_or_else(|err| panic!("{sql}: {err}"))
            .flatten()
    }

    async fn create_database(&self) -> String {
        use sqlx::Connection;
        let admin = format!("postgres://{USER}@127.0.0.1:{}/postgres", self.port);
        let mut conn = sqlx::PgConnection::connect(&admin)
            .await
            .expect("connect to the private Postgres");
        sqlx::query(&format!("CREATE DATABASE {DATABASE}"))
            .execute(&mut conn)
            .await
            .expect("create the database");
        self.url()
    }

    async fn launch(&mut self, log_dir: &Path) {
        let port = self.port.to_string();
        let mut command = self.run_as.command(&pg_bin().join("postgres"));
        command.arg("-D").arg(&self.data).args([
            "-p",
            &port,
            "-c",
            "listen_addresses=127.0.0.1",
            "-c",
            "unix_socket_directories=",
            "-c",
            "fsync=off",
            "-c",
            "max_connections=200",
        ]);
        let (name, ready) = if self.standby {
            (
                "postgres-replica",
                "database system is ready to accept read-only connections",
            )
        } else {
            ("postgres", "database system is ready to accept connections")
        };
        let mut process = Process::spawn_command(name, command, &[], log_dir).await;
        process.wait_for_text(ready).await;
        self.process = Some(process);
    }

    /// Directly, not through PgBouncer.
    pub fn url(&self) -> String {
        format!("postgres://{USER}@127.0.0.1:{}/{DATABASE}", self.port)
    }

    /// A crash and a restart: SIGKILL of the postmaster would leave its backends holding
    /// shared memory, so the crash is `pg_ctl stop -m immediate` (every process quits at
    /// once, no checkpoint; the next start replays WAL), then the server starts again.
    pub async fn crash_and_restart(&mut self, log_dir: &Path) {
        self.stop_immediately().await;
        if let Some(mut process) = self.process.take() {
            process.wait_exit().await;
        }
        self.launch(log_dir).await;
    }

    async fn stop_immediately(&self) {
        let _ = self
            .run_as
            .command(&pg_bin().join("pg_ctl"))
            .args(["stop", "-m", "immediate", "-w", "-D"])
            .arg(&self.data)
            .output()
            .await;
    }
}

impl Drop for Postgres {
    fn drop(&mut self) {
        // The postmaster's children outlive a SIGKILL of it: stop them all.
        use std::os::unix::process::CommandExt;
        let mut command = std::process::Command::new(pg_bin().join("pg_ctl"));
        if let Some((uid, gid)) = self.run_as.0 {
            command.uid(uid).gid(gid);
        }
        let _ = command
            .args(["stop", "-m", "immediate", "-D"])
            .arg(&self.data)
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .status();
    }
}

/// A private PgBouncer in front of a [`Postgres`], as deploy/pgbouncer configures it (session
/// pooling), with trust authentication.
pub struct PgBouncer {
    pub port: u16,
    config: PathBuf,
    run_as: RunAs,
    process: Option<Process>,
}

impl PgBouncer {
    /// In front of `postgres`, and of `replica` as database `haberci_replica` (without one,
    /// that name reaches the primary too).
    pub async fn start(
        dir: &Path,
        postgres: &Postgres,
        replica: Option<&Postgres>,
        log_dir: &Path,
    ) -> PgBouncer {
        let run_as = RunAs::detect();
        std::fs::create_dir_all(dir).expect("pgbouncer dir");
        let _ = std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o755));
        let port = free_port();
        let users = dir.join("userlist.txt");
        std::fs::write(&users, format!("\"{USER}\" \"\"\n")).expect("userlist");
        // The deployment's own settings (deploy/pgbouncer), on this run's ports, with trust
        // authentication as the private Postgres has.
        let template = concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../deploy/pgbouncer/pgbouncer.ini"
        );
        let settings = std::fs::read_to_string(template)
            .expect("deploy/pgbouncer/pgbouncer.ini")
            .replace("@PG_PORT@", &postgres.port.to_string())
            .replace(
                "@PG_REPLICA_PORT@",
                &replica.unwrap_or(postgres).port.to_string(),
            )
            .replace("@PGBOUNCER_PORT@", &port.to_string())
            .replace("@PGBOUNCER_DIR@", &dir.display().to_string())
            .replace("@PG_USER@", USER)
            .replace("auth_type = scram-sha-256", "auth_type = trust");
        assert!(
            settings.contains("auth_type = trust"),
            "{template}: auth_type"
        );
        let config = dir.join("pgbouncer.ini");
        std::fs::write(&config, settings).expect("pgbouncer.ini");
        for file in [dir, &users, &config] {
            run_as.own(file);
        }
        let mut bouncer = PgBouncer {
            port,
            config,
            run_as,
            process: None,
        };
        bouncer.launch(log_dir).await;
        bouncer
    }

    async fn launch(&mut self, log_dir: &Path) {
        let mut command = self.run_as.command(Path::new("pgbouncer"));
        command.arg(&self.config);
        let mut process = Process::spawn_command("pgbouncer", command, &[], log_dir).await;
        process.wait_for_text("process up").await;
        self.process = Some(process);
    }

    pub fn url(&self) -> String {
        format!("postgres://{USER}@127.0.0.1:{}/{DATABASE}", self.port)
    }

    /// The replica through this PgBouncer.
    pub fn replica_url(&self) -> String {
        format!(
            "postgres://{USER}@127.0.0.1:{}/{DATABASE}_replica",
            self.port
        )
    }

    /// SIGKILL (every client connection drops at once) and a start on the same port.
    pub async fn kill_and_restart(&mut self, log_dir: &Path) {
        if let Some(mut process) = self.process.take() {
            process.kill().await;
        }
        self.launch(log_dir).await;
    }
}
