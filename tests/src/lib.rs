//! Test harness for Switchyard's end-to-end tests and demo: real MariaDB
//! servers (a primary and replicas with GTID replication) started from the
//! Debian `mariadb-server` binaries in temp dirs on free loopback ports, and
//! Switchyard started as a real process from its binary.
//!
//! Every process is started from one long-lived spawner thread with
//! `PR_SET_PDEATHSIG`, so none outlives the test binary even if it is
//! killed; `Drop` stops them and removes their directories on a normal exit.

use std::io::Write;
use std::net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::mpsc;
use std::sync::{Mutex, OnceLock};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};

pub mod raw;

/// The account the tests use to write (all privileges on `app`).
pub const MASTER_USER: (&str, &str) = ("mysqlmaster", "masterpass");
/// The account the tests use to read (SELECT on `app`).
pub const SLAVE_USER: (&str, &str) = ("mysqlslave", "slavepass");
const REPL_USER: (&str, &str) = ("repl", "replpass");

/// The workspace root.
pub fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("tests/ has a parent")
        .to_owned()
}

/// A loopback port nothing listens on right now.
pub fn free_port() -> u16 {
    let l = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).expect("bind an ephemeral port");
    l.local_addr().expect("local addr").port()
}

type SpawnRequest = (Command, mpsc::Sender<std::io::Result<Child>>);

/// Starts `cmd` from the spawner thread, which lives as long as the process:
/// `PR_SET_PDEATHSIG` fires when the *thread* that forked a child exits, so
/// children must not be forked from short-lived test threads.
pub fn spawn(mut cmd: Command) -> std::io::Result<Child> {
    static SPAWNER: OnceLock<Mutex<mpsc::Sender<SpawnRequest>>> = OnceLock::new();
    let sender = SPAWNER.get_or_init(|| {
        let (tx, rx) = mpsc::channel::<SpawnRequest>();
        std::thread::Builder::new()
            .name("spawner".into())
            .spawn(move || {
                for (mut cmd, reply) in rx {
                    let _ = reply.send(cmd.spawn());
                }
                // Keep this thread (the children's parent) alive until exit.
                loop {
                    std::thread::park();
                }
            })
            .expect("start the spawner thread");
        Mutex::new(tx)
    });
    // SAFETY: prctl and getppid are async-signal-safe.
    unsafe {
        cmd.pre_exec(|| {
            libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
            if libc::getppid() == 1 {
                // The parent died before prctl took effect.
                libc::_exit(1);
            }
            Ok(())
        });
    }
    let (tx, rx) = mpsc::channel();
    sender
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .send((cmd, tx))
        .map_err(|_| std::io::Error::other("spawner thread is gone"))?;
    rx.recv()
        .map_err(|_| std::io::Error::other("spawner thread is gone"))?
}

fn run_checked(cmd: &mut Command, what: &str) -> Result<Output> {
    let out = cmd.output().with_context(|| format!("running {what}"))?;
    if !out.status.success() {
        bail!(
            "{what} failed ({}): {}{}",
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(out)
}

fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions.
    unsafe { libc::geteuid() == 0 }
}

/// One `mariadbd` process with its own data directory.
pub struct MariaDb {
    /// Its loopback port.
    pub port: u16,
    /// Its `server_id`.
    pub server_id: u32,
    dir: PathBuf,
    child: Option<Child>,
    /// Options added to (and overriding) the harness's defaults.
    extra_args: Vec<String>,
}

impl MariaDb {
    /// One server of its own (no replication) in `dir`, with `extra_args`
    /// after the harness's options (later options win): for benchmarks.
    pub fn standalone(dir: &Path, port: u16, extra_args: &[&str]) -> Result<Self> {
        Self::install(dir)?;
        let mut db = Self {
            port,
            server_id: 1,
            dir: dir.to_owned(),
            child: None,
            extra_args: extra_args.iter().map(|s| s.to_string()).collect(),
        };
        db.launch()?;
        Ok(db)
    }

    /// The server's process id, while it runs.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// Creates a fresh data directory in `dir` with `mariadb-install-db`.
    fn install(dir: &Path) -> Result<()> {
        std::fs::create_dir_all(dir)?;
        let mut cmd = Command::new("mariadb-install-db");
        cmd.arg("--no-defaults")
            .arg(format!("--datadir={}", dir.join("data").display()))
            .arg("--auth-root-authentication-method=normal")
            .arg("--skip-test-db")
            .arg("--skip-name-resolve");
        if is_root() {
            cmd.arg("--user=root");
        }
        run_checked(&mut cmd, "mariadb-install-db")?;
        Ok(())
    }

    /// Starts `mariadbd` on `dir` (which holds `data/`).
    fn start(dir: &Path, port: u16, server_id: u32) -> Result<Self> {
        let mut db = Self {
            port,
            server_id,
            dir: dir.to_owned(),
            child: None,
            extra_args: Vec::new(),
        };
        db.launch()?;
        Ok(db)
    }

    fn socket(&self) -> PathBuf {
        self.dir.join("mysqld.sock")
    }

    /// The server's error log so far.
    pub fn error_log(&self) -> String {
        std::fs::read_to_string(self.dir.join("error.log")).unwrap_or_default()
    }

    fn launch(&mut self) -> Result<()> {
        let d = &self.dir;
        let mut cmd = Command::new("mariadbd");
        cmd.arg("--no-defaults")
            .arg(format!("--datadir={}", d.join("data").display()))
            .arg(format!("--socket={}", self.socket().display()))
            .arg(format!("--pid-file={}", d.join("mysqld.pid").display()))
            .arg(format!("--log-error={}", d.join("error.log").display()))
            .arg(format!("--port={}", self.port))
            .arg("--bind-address=127.0.0.1")
            .arg(format!("--server-id={}", self.server_id))
            .arg(format!("--log-bin={}", d.join("data/binlog").display()))
            .arg("--log-slave-updates")
            .arg("--binlog-format=ROW")
            .arg("--gtid-strict-mode=1")
            .arg("--skip-name-resolve")
            .arg("--max-allowed-packet=64M")
            .arg("--max-connections=500")
            .arg("--innodb-buffer-pool-size=32M")
            .arg("--innodb-log-file-size=16M")
            .arg("--innodb-flush-log-at-trx-commit=2")
            .arg("--sync-binlog=0")
            .arg("--performance-schema=OFF")
            .arg("--character-set-server=utf8mb4")
            .arg("--collation-server=utf8mb4_general_ci")
            .args(&self.extra_args)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        if is_root() {
            cmd.arg("--user=root");
        }
        self.child = Some(spawn(cmd).context("starting mariadbd")?);
        let started = Instant::now();
        loop {
            if let Some(child) = self.child.as_mut()
                && let Some(status) = child.try_wait()?
            {
                bail!("mariadbd exited ({status}):\n{}", self.error_log());
            }
            if self.try_sql("SELECT 1").is_ok() {
                return Ok(());
            }
            if started.elapsed() > Duration::from_secs(60) {
                bail!("mariadbd did not start in 60 s:\n{}", self.error_log());
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// Runs `sql` as root over the server's socket: its output, or the
    /// client's error.
    pub fn try_sql(&self, sql: &str) -> Result<String> {
        let out = run_checked(
            Command::new("mariadb")
                .arg("--no-defaults")
                .arg(format!("--socket={}", self.socket().display()))
                .args(["-uroot", "--batch", "--skip-column-names", "-e", sql]),
            "mariadb",
        )?;
        Ok(String::from_utf8_lossy(&out.stdout).trim_end().to_owned())
    }

    /// Runs `sql` as root over the server's socket; returns the output
    /// (tab-separated, no column names).
    pub fn sql(&self, sql: &str) -> String {
        self.try_sql(sql)
            .unwrap_or_else(|e| panic!("SQL on port {} failed: {e:#}\n{sql}", self.port))
    }

    /// Stops the server (SIGTERM, then SIGKILL after 30 s) and waits.
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            // SAFETY: kill has no memory-safety preconditions.
            unsafe {
                libc::kill(child.id() as i32, libc::SIGTERM);
            }
            let started = Instant::now();
            while started.elapsed() < Duration::from_secs(30) {
                if let Ok(Some(_)) = child.try_wait() {
                    return;
                }
                std::thread::sleep(Duration::from_millis(50));
            }
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Freezes the server (SIGSTOP): it still accepts TCP connections (the
    /// kernel queues them) but answers nothing, like a hung server.
    pub fn pause(&self) {
        if let Some(child) = &self.child {
            // SAFETY: kill has no memory-safety preconditions.
            unsafe {
                libc::kill(child.id() as i32, libc::SIGSTOP);
            }
            // The signal is only queued when kill returns: wait until every
            // thread has stopped, or a request sent right after could still
            // be served (up to 2 s).
            let task = format!("/proc/{}/task", child.id());
            let stopped = || {
                std::fs::read_dir(&task).is_ok_and(|threads| {
                    threads.flatten().all(|t| {
                        std::fs::read_to_string(t.path().join("stat")).is_ok_and(|stat| {
                            // The state follows the command name's ')'.
                            stat.rsplit_once(')')
                                .is_some_and(|(_, rest)| rest.trim_start().starts_with('T'))
                        })
                    })
                })
            };
            let deadline = Instant::now() + Duration::from_secs(2);
            while !stopped() && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(5));
            }
        }
    }

    /// Lets a paused server run again (SIGCONT).
    pub fn resume(&self) {
        if let Some(child) = &self.child {
            // SAFETY: kill has no memory-safety preconditions.
            unsafe {
                libc::kill(child.id() as i32, libc::SIGCONT);
            }
        }
    }

    /// Starts the server again on the same data directory and port.
    pub fn restart(&mut self) -> Result<()> {
        self.stop();
        self.launch()
    }

    /// Whether the server process runs.
    pub fn is_running(&self) -> bool {
        self.child.is_some()
    }

    /// The address clients connect to.
    pub fn addr(&self) -> SocketAddr {
        SocketAddr::from((Ipv4Addr::LOCALHOST, self.port))
    }
}

impl Drop for MariaDb {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// A primary and its replicas, replicating with GTIDs, with the test
/// accounts and database created.
pub struct Topology {
    /// The primary (server_id 1).
    pub primary: MariaDb,
    /// The replicas (server_id 2, 3, ...).
    pub replicas: Vec<MariaDb>,
    _root: tempfile::TempDir,
}

impl Topology {
    /// Starts a primary and `replicas` replicas on `ports` (free ports when
    /// `None`), creates the accounts and waits until the replicas have them.
    pub fn start(replicas: usize, ports: Option<&[u16]>) -> Result<Self> {
        let root = tempfile::Builder::new()
            .prefix("switchyard-topology-")
            .tempdir_in(std::env::temp_dir())?;
        let port = |i: usize| {
            ports
                .and_then(|p| p.get(i).copied())
                .unwrap_or_else(free_port)
        };
        // One install, copied: every server starts from the same data files.
        let template = root.path().join("template");
        MariaDb::install(&template)?;
        let mut dirs = Vec::new();
        for i in 0..=replicas {
            let dir = root.path().join(if i == 0 {
                "primary".to_owned()
            } else {
                format!("replica{i}")
            });
            run_checked(
                Command::new("cp").arg("-a").arg(&template).arg(&dir),
                "cp -a",
            )?;
            dirs.push(dir);
        }
        let primary = MariaDb::start(&dirs[0], port(0), 1)?;
        primary.sql(&format!(
            "CREATE USER '{ru}'@'%' IDENTIFIED BY '{rp}';
             GRANT REPLICATION SLAVE ON *.* TO '{ru}'@'%';
             CREATE DATABASE app;
             CREATE USER '{mu}'@'%' IDENTIFIED BY '{mp}';
             GRANT ALL ON app.* TO '{mu}'@'%';
             CREATE USER '{su}'@'%' IDENTIFIED BY '{sp}';
             GRANT SELECT ON app.* TO '{su}'@'%';",
            ru = REPL_USER.0,
            rp = REPL_USER.1,
            mu = MASTER_USER.0,
            mp = MASTER_USER.1,
            su = SLAVE_USER.0,
            sp = SLAVE_USER.1,
        ));
        let mut started = Vec::new();
        for (i, dir) in dirs.iter().enumerate().skip(1) {
            let replica = MariaDb::start(dir, port(i), i as u32 + 1)?;
            replica.sql(&format!(
                "CHANGE MASTER TO MASTER_HOST='127.0.0.1', MASTER_PORT={}, MASTER_USER='{}',
                 MASTER_PASSWORD='{}', MASTER_USE_GTID=slave_pos;
                 SET GLOBAL read_only = ON;
                 START SLAVE;",
                primary.port, REPL_USER.0, REPL_USER.1
            ));
            started.push(replica);
        }
        let topology = Self {
            primary,
            replicas: started,
            _root: root,
        };
        topology.sync_replicas()?;
        Ok(topology)
    }

    /// Waits until every running replica has applied everything the primary
    /// has written so far.
    pub fn sync_replicas(&self) -> Result<()> {
        let pos = self.primary.sql("SELECT @@gtid_binlog_pos");
        for r in self.replicas.iter().filter(|r| r.is_running()) {
            let waited = r.sql(&format!("SELECT MASTER_GTID_WAIT('{pos}', 60)"));
            if waited.trim() != "0" {
                bail!(
                    "replica {} did not reach {pos}: {}",
                    r.server_id,
                    r.sql("SHOW SLAVE STATUS\\G")
                );
            }
        }
        Ok(())
    }
}

/// Paths of the artifacts the proxy needs, built on first use.
pub struct Artifacts {
    /// The `switchyard` binary.
    pub switchyard: PathBuf,
    /// The default policy component.
    pub default_policy: PathBuf,
    /// The hostile test policy component.
    pub misbehave_policy: PathBuf,
    /// The route-by-client-address policy.
    pub by_client_policy: PathBuf,
    /// The replica-fallback policy.
    pub fallback_policy: PathBuf,
    /// A component with a forbidden import.
    pub forbidden_policy: PathBuf,
    /// The per-statement hook example (`policies/hint`).
    pub hint_policy: PathBuf,
    /// The per-statement hook example in JavaScript (built by
    /// `scripts/test.sh`).
    pub js_statement_policy: PathBuf,
    /// The Python example policy (built by `scripts/test.sh`).
    pub python_policy: PathBuf,
    /// The JavaScript example policy (built by `scripts/test.sh`).
    pub js_policy: PathBuf,
    /// The Zig example policy (built by `scripts/test.sh`).
    pub zig_policy: PathBuf,
    /// The C example policy (built by `scripts/test.sh`).
    pub c_policy: PathBuf,
    /// The Go example policy (built by `scripts/test.sh`).
    pub go_policy: PathBuf,
}

/// A `cargo` command without the variables Cargo sets for the crate it
/// runs (`CARGO_MANIFEST_DIR`, `CARGO_PKG_*`, ...): build scripts that watch
/// one of them (ring watches `CARGO_MANIFEST_DIR`) would otherwise rebuild
/// here, and again in the next build from a shell.
pub fn cargo_command() -> Command {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let mut cmd = Command::new(cargo);
    for (name, _) in std::env::vars_os() {
        let Some(name) = name.to_str() else { continue };
        let set_for_crate = name == "OUT_DIR"
            || name.starts_with("CARGO_PKG_")
            || name.starts_with("CARGO_BIN_")
            || name.starts_with("CARGO_MANIFEST_")
            || matches!(
                name,
                "CARGO_CRATE_NAME" | "CARGO_PRIMARY_PACKAGE" | "CARGO_TARGET_TMPDIR"
            );
        if set_for_crate {
            cmd.env_remove(name);
        }
    }
    cmd
}

/// Builds (if needed) the `switchyard` binary (debug profile) and the
/// policies (release, wasm32-wasip2), once per process.
pub fn artifacts() -> &'static Artifacts {
    static ARTIFACTS: OnceLock<Artifacts> = OnceLock::new();
    ARTIFACTS.get_or_init(|| {
        let root = workspace_root();
        for args in [
            &["build", "-q", "-p", "switchyard", "--bin", "switchyard"][..],
            &[
                "build",
                "-q",
                "--release",
                "-p",
                "default-policy",
                "-p",
                "misbehave-policy",
                "-p",
                "by-client-policy",
                "-p",
                "replica-fallback-policy",
                "-p",
                "forbidden-policy",
                "-p",
                "hint-policy",
                "--target",
                "wasm32-wasip2",
            ][..],
        ] {
            let status = cargo_command()
                .args(args)
                .current_dir(&root)
                .status()
                .expect("run cargo");
            assert!(status.success(), "cargo {args:?} failed");
        }
        let target = std::env::var_os("CARGO_TARGET_DIR")
            .map(PathBuf::from)
            .unwrap_or_else(|| root.join("target"));
        Artifacts {
            switchyard: target.join("debug/switchyard"),
            default_policy: target.join("wasm32-wasip2/release/default_policy.wasm"),
            misbehave_policy: target.join("wasm32-wasip2/release/misbehave_policy.wasm"),
            by_client_policy: target.join("wasm32-wasip2/release/by_client_policy.wasm"),
            fallback_policy: target.join("wasm32-wasip2/release/replica_fallback_policy.wasm"),
            forbidden_policy: target.join("wasm32-wasip2/release/forbidden_policy.wasm"),
            hint_policy: target.join("wasm32-wasip2/release/hint_policy.wasm"),
            python_policy: target.join("examples/python_policy.wasm"),
            js_policy: target.join("examples/js_policy.wasm"),
            js_statement_policy: target.join("examples/js_statement_policy.wasm"),
            zig_policy: target.join("examples/zig_policy.wasm"),
            c_policy: target.join("examples/c_policy.wasm"),
            go_policy: target.join("examples/go_policy.wasm"),
        }
    })
}

/// A running `switchyard` process with its generated config.
pub struct Proxy {
    /// Its loopback port.
    pub port: u16,
    child: Option<Child>,
    dir: tempfile::TempDir,
}

impl Proxy {
    /// Starts `binary` (a `switchyard` build) on `config` as it is, listening
    /// on `port`, with logs at `log_level`.
    pub fn start_with(binary: &Path, config: &str, port: u16, log_level: &str) -> Result<Self> {
        Self::start_with_env(binary, config, port, log_level, &[])
    }

    /// [`Proxy::start_with`] with extra environment variables.
    pub fn start_with_env(
        binary: &Path,
        config: &str,
        port: u16,
        log_level: &str,
        env: &[(&str, &str)],
    ) -> Result<Self> {
        let dir = tempfile::Builder::new()
            .prefix("switchyard-proxy-")
            .tempdir()?;
        let config_path = dir.path().join("switchyard.toml");
        std::fs::write(&config_path, config)?;
        Self::run_file(binary, dir, &config_path, port, log_level, env)
    }

    /// Starts Switchyard (the test build) on the config file at `path`
    /// as it is (it listens on `port`), where it may change while it runs.
    pub fn start_file(path: &Path, port: u16) -> Result<Self> {
        let dir = tempfile::Builder::new()
            .prefix("switchyard-proxy-")
            .tempdir()?;
        Self::run_file(&artifacts().switchyard, dir, path, port, "debug", &[])
    }

    fn run_file(
        binary: &Path,
        dir: tempfile::TempDir,
        config_path: &Path,
        port: u16,
        log_level: &str,
        env: &[(&str, &str)],
    ) -> Result<Self> {
        let log = std::fs::File::create(dir.path().join("switchyard.log"))?;
        let mut cmd = Command::new(binary);
        cmd.arg("run")
            .arg("--config")
            .arg(config_path)
            .env("SWITCHYARD_LOG", log_level)
            .env("NO_COLOR", "1")
            .envs(env.iter().copied())
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log);
        let mut proxy = Self {
            port,
            child: Some(spawn(cmd).context("starting switchyard")?),
            dir,
        };
        proxy.wait_listening()?;
        Ok(proxy)
    }

    fn wait_listening(&mut self) -> Result<()> {
        let started = Instant::now();
        loop {
            if let Some(child) = self.child.as_mut()
                && let Some(status) = child.try_wait()?
            {
                bail!("switchyard exited ({status}):\n{}", self.log());
            }
            if TcpStream::connect(self.addr()).is_ok() {
                return Ok(());
            }
            if started.elapsed() > Duration::from_secs(120) {
                bail!("switchyard did not listen in 120 s:\n{}", self.log());
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// The process id.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// Writes `config` (TOML; `{port}`, `{policy}` and `{misbehave}` are
    /// filled in with the listen port and the policies' paths) and starts
    /// Switchyard on it, waiting until it accepts connections.
    pub fn start(config: &str) -> Result<Self> {
        Self::start_env(config, &[])
    }

    /// [`Proxy::start`] with extra environment variables.
    pub fn start_env(config: &str, env: &[(&str, &str)]) -> Result<Self> {
        let port = free_port();
        let config = fill_config(config, port);
        Self::start_with_env(&artifacts().switchyard, &config, port, "debug", env)
    }

    /// Replaces the config file (placeholders filled as in
    /// [`Proxy::start`]); the running process reads it on SIGHUP or reload.
    pub fn rewrite_config(&self, config: &str) -> Result<()> {
        let path = self.dir.path().join("switchyard.toml");
        let tmp = self.dir.path().join("switchyard.toml.new");
        std::fs::write(&tmp, fill_config(config, self.port))?;
        std::fs::rename(tmp, path)?;
        Ok(())
    }

    /// Sends `signal` (e.g. `libc::SIGHUP`) to the process.
    pub fn signal(&self, signal: i32) {
        if let Some(pid) = self.pid() {
            // SAFETY: kill has no memory-safety preconditions.
            unsafe {
                libc::kill(pid as i32, signal);
            }
        }
    }

    /// Waits for the process to exit, up to `timeout`; its status.
    pub fn wait_exit(&mut self, timeout: Duration) -> Option<std::process::ExitStatus> {
        let started = Instant::now();
        while started.elapsed() < timeout {
            if let Some(child) = self.child.as_mut()
                && let Ok(Some(status)) = child.try_wait()
            {
                self.child = None;
                return Some(status);
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        None
    }

    /// The address clients connect to.
    pub fn addr(&self) -> SocketAddr {
        SocketAddr::from((Ipv4Addr::LOCALHOST, self.port))
    }

    /// Everything Switchyard logged so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("switchyard.log")).unwrap_or_default()
    }

    /// Waits until the log contains `needle`.
    pub fn wait_for_log(&self, needle: &str, timeout: Duration) -> Result<()> {
        let started = Instant::now();
        while started.elapsed() < timeout {
            if self.log().contains(needle) {
                return Ok(());
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        bail!("'{needle}' not logged within {timeout:?}:\n{}", self.log())
    }

    /// Whether the process still runs.
    pub fn is_running(&mut self) -> bool {
        matches!(self.child.as_mut().map(|c| c.try_wait()), Some(Ok(None)))
    }

    /// Sends SIGTERM and waits for the exit status.
    pub fn terminate(&mut self) -> Option<std::process::ExitStatus> {
        let mut child = self.child.take()?;
        // SAFETY: kill has no memory-safety preconditions.
        unsafe {
            libc::kill(child.id() as i32, libc::SIGTERM);
        }
        child.wait().ok()
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// Fills `{port}`, `{policy}` and `{misbehave}` in a config template.
pub fn fill_config(config: &str, port: u16) -> String {
    config
        .replace("{port}", &port.to_string())
        .replace(
            "{policy}",
            &artifacts().default_policy.display().to_string(),
        )
        .replace(
            "{misbehave}",
            &artifacts().misbehave_policy.display().to_string(),
        )
        .replace(
            "{by_client}",
            &artifacts().by_client_policy.display().to_string(),
        )
        .replace(
            "{fallback}",
            &artifacts().fallback_policy.display().to_string(),
        )
        .replace("{python}", &artifacts().python_policy.display().to_string())
        .replace("{javascript}", &artifacts().js_policy.display().to_string())
        .replace("{zig}", &artifacts().zig_policy.display().to_string())
        .replace("{c}", &artifacts().c_policy.display().to_string())
        .replace("{go}", &artifacts().go_policy.display().to_string())
}

/// One HTTP/1.1 request over loopback (for the admin endpoint): the status
/// code and the body.
pub fn http(
    addr: SocketAddr,
    method: &str,
    path: &str,
    token: Option<&str>,
    body: &[u8],
) -> Result<(u16, String)> {
    use std::io::Read;
    let mut stream = TcpStream::connect(addr)?;
    stream.set_read_timeout(Some(Duration::from_secs(60)))?;
    let auth = token
        .map(|t| format!("Authorization: Bearer {t}\r\n"))
        .unwrap_or_default();
    let head = format!(
        "{method} {path} HTTP/1.1\r\nHost: {addr}\r\n{auth}Content-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    );
    stream.write_all(head.as_bytes())?;
    stream.write_all(body)?;
    let mut response = Vec::new();
    stream.read_to_end(&mut response)?;
    let text = String::from_utf8_lossy(&response).into_owned();
    let (head, body) = text
        .split_once("\r\n\r\n")
        .with_context(|| format!("not an HTTP response: {text}"))?;
    let status = head
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .with_context(|| format!("no status in {head}"))?;
    Ok((status, body.to_owned()))
}

/// Runs the `mariadb` command-line client with `args` and `stdin`.
pub fn mariadb_cli(args: &[&str], stdin: &str) -> Output {
    let mut child = Command::new("mariadb")
        .arg("--no-defaults")
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run the mariadb client");
    if let Some(mut input) = child.stdin.take() {
        let _ = input.write_all(stdin.as_bytes());
    }
    child
        .wait_with_output()
        .expect("wait for the mariadb client")
}

/// Waits until something accepts TCP connections on loopback `port`.
pub fn wait_port(port: u16, timeout: Duration) -> Result<()> {
    let started = Instant::now();
    while TcpStream::connect((Ipv4Addr::LOCALHOST, port)).is_err() {
        if started.elapsed() > timeout {
            bail!("nothing listens on 127.0.0.1:{port} after {timeout:?}");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    Ok(())
}

/// A running HAProxy (Debian's `haproxy`) relaying TCP.
pub struct HaProxy {
    child: Child,
    _dir: tempfile::TempDir,
}

impl HaProxy {
    /// Starts HAProxy with one TCP frontend per `(port, server line)`:
    /// clients on `127.0.0.1:port` go to that `server` line (e.g.
    /// `"127.0.0.1:6033 send-proxy-v2"`).
    pub fn start(frontends: &[(u16, String)]) -> Result<Self> {
        let dir = tempfile::tempdir()?;
        let mut cfg = String::from(
            "global\n  maxconn 8192\ndefaults\n  mode tcp\n  timeout connect 5s\n  \
             timeout client 1h\n  timeout server 1h\n",
        );
        for (i, (port, server)) in frontends.iter().enumerate() {
            cfg.push_str(&format!(
                "listen f{i}\n  bind 127.0.0.1:{port}\n  server s{i} {server}\n"
            ));
        }
        let path = dir.path().join("haproxy.cfg");
        std::fs::write(&path, cfg)?;
        let haproxy = ["/usr/sbin/haproxy", "haproxy"]
            .into_iter()
            .find(|p| Path::new(p).exists())
            .unwrap_or("haproxy");
        let mut cmd = Command::new(haproxy);
        cmd.arg("-db")
            .arg("-f")
            .arg(&path)
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        let child = spawn(cmd).context("starting haproxy (apt-get install haproxy)")?;
        for (port, _) in frontends {
            wait_port(*port, Duration::from_secs(30))?;
        }
        Ok(Self { child, _dir: dir })
    }

    /// The process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }
}

impl Drop for HaProxy {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A running `redis-server` (Debian's `redis-server`) on a loopback port,
/// keeping nothing on disk.
pub struct Redis {
    /// Its port.
    pub port: u16,
    child: Option<Child>,
    password: Option<String>,
    _dir: tempfile::TempDir,
}

impl Redis {
    /// Starts one on a free port.
    pub fn start() -> Result<Self> {
        Self::start_with(None)
    }

    /// Starts one on a free port that takes commands only after `AUTH
    /// <password>` (`--requirepass`).
    pub fn start_with_password(password: &str) -> Result<Self> {
        Self::start_with(Some(password.to_owned()))
    }

    fn start_with(password: Option<String>) -> Result<Self> {
        let mut r = Self {
            port: free_port(),
            child: None,
            password,
            _dir: tempfile::tempdir()?,
        };
        r.restart()?;
        Ok(r)
    }

    /// Starts it again (on the same port, empty) after [`Redis::stop`].
    pub fn restart(&mut self) -> Result<()> {
        let mut cmd = Command::new("redis-server");
        cmd.args(["--bind", "127.0.0.1", "--port"])
            .arg(self.port.to_string())
            .args(["--save", "", "--appendonly", "no", "--daemonize", "no"])
            .arg("--dir")
            .arg(self._dir.path())
            .args(self.password.iter().flat_map(|p| ["--requirepass", p]))
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        self.child =
            Some(spawn(cmd).context("starting redis-server (apt-get install redis-server)")?);
        wait_port(self.port, Duration::from_secs(30))
    }

    /// Kills it (SIGKILL: as a crash).
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// `redis://127.0.0.1:<port>`.
    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }
}

impl Drop for Redis {
    fn drop(&mut self) {
        self.stop();
    }
}
