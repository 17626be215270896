//! Client compatibility suite: independent implementations of the MySQL
//! protocol, each as a real program with its default settings, through
//! Switchyard in front of a real MariaDB primary and two GTID replicas:
//! the `mariadb` CLI (libmariadb), `mysql_async` (Rust), PyMySQL,
//! mysql-connector-python (pure Python), node `mysql2`, PHP mysqli and PDO
//! (mysqlnd) and MariaDB Connector/J.
//!
//! Each client runs the same scenarios (connect, query, prepared
//! statement, transaction, a value over 16 MiB, disconnect, a wrong
//! password) twice: against a plaintext listener and against one with
//! `[tls] require = true` (the client requiring TLS and verifying the
//! certificate; a plaintext login must then get 1045). The programs are
//! under `tests/compat/` and print one JSON line per scenario; the
//! `mariadb` CLI and `mysql_async` are driven from here. A client × scenario
//! table is printed at the end; any FAIL fails the run. A separate trial
//! checks `caching_sha2_password` (full authentication over TLS and over
//! RSA, the fast path from the cache, wrong passwords).
//!
//! The clients are installed by `scripts/compat-deps.sh` (Debian packages,
//! PyPI into target/pyvenv, npm into target/npm-clients).

use std::collections::BTreeMap;
use std::io::Read;
use std::net::SocketAddr;
use std::ops::Range;
use std::path::Path;
use std::process::{Command, ExitStatus, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use libtest_mimic::{Arguments, Failed, Trial};
use mysql_async::prelude::*;
use mysql_async::{Conn, SslOpts, TxOpts};

use switchyard_e2e::{MASTER_USER, Proxy, SLAVE_USER, Topology, free_port, http, workspace_root};

mod common;
use common::*;

/// The scenarios, in the order every client runs them.
const SCENARIOS: [&str; 9] = [
    "connect",
    "tls",
    "query",
    "prepared",
    "transaction",
    "big_value",
    "disconnect",
    "bad_password",
    "plaintext_refused",
];
/// The value read in `big_value`: this many copies of 16 bytes, and "END":
/// 17 MiB + 3 bytes, more than one 16 MiB packet.
const BIG_UNITS: usize = 17 * 1024 * 1024 / 16;
const TOKEN: &str = "compat-admin-token";
const PROGRAM_TIMEOUT: Duration = Duration::from_secs(180);
/// The primary's server id: `mysqlmaster` is routed there.
const PRIMARY_ID: u32 = 1;
/// The server id of the one replica the split listener's reader pool has:
/// a read there runs on it.
const SPLIT_READER_ID: u32 = 2;
const CONNECTOR_J_JAR: &str = "/usr/share/java/mariadb-java-client.jar";

/// Whether the client must use TLS.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Mode {
    /// Default settings against a listener without TLS.
    Plain,
    /// TLS required and verified, against a listener that requires TLS.
    Tls,
    /// Default settings, `mysqlmaster` routed to a split pool (reads to a
    /// replica, the rest to the primary).
    Split,
    /// As `Split`, the split pool multiplexed: backend sessions shared
    /// between statements.
    Multiplexed,
}

impl Mode {
    fn label(self) -> &'static str {
        match self {
            Self::Plain => "plaintext",
            Self::Tls => "TLS required",
            Self::Split => "split pool",
            Self::Multiplexed => "multiplexed split pool",
        }
    }

    fn slug(self) -> &'static str {
        match self {
            Self::Plain => "plain",
            Self::Tls => "tls",
            Self::Split => "split",
            Self::Multiplexed => "multiplexed",
        }
    }

    /// `COMPAT_TLS` for the programs.
    fn env(self) -> &'static str {
        match self {
            Self::Plain | Self::Split | Self::Multiplexed => "off",
            Self::Tls => "required",
        }
    }

    /// Where the `query` scenario's read runs for `client`: in a split
    /// pool a replica, unless the client turns autocommit off (PyMySQL and
    /// mysql-connector-python do by default): then every statement opens a
    /// transaction, and transactions run on the writer.
    fn server_id(self, client: Client) -> u32 {
        match self {
            Self::Plain | Self::Tls => PRIMARY_ID,
            Self::Split | Self::Multiplexed if client.autocommit_off() => PRIMARY_ID,
            Self::Split | Self::Multiplexed => SPLIT_READER_ID,
        }
    }
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Client {
    MariadbCli,
    MysqlAsync,
    PyMySql,
    ConnectorPython,
    Mysql2,
    Mysqli,
    Pdo,
    ConnectorJ,
}

impl Client {
    const ALL: [Self; 8] = [
        Self::MariadbCli,
        Self::MysqlAsync,
        Self::PyMySql,
        Self::ConnectorPython,
        Self::Mysql2,
        Self::Mysqli,
        Self::Pdo,
        Self::ConnectorJ,
    ];

    /// Whether the client turns autocommit off by default.
    fn autocommit_off(self) -> bool {
        matches!(self, Self::PyMySql | Self::ConnectorPython)
    }

    fn name(self) -> &'static str {
        match self {
            Self::MariadbCli => "mariadb CLI (libmariadb)",
            Self::MysqlAsync => "mysql_async (Rust)",
            Self::PyMySql => "PyMySQL",
            Self::ConnectorPython => "mysql-connector-python (pure)",
            Self::Mysql2 => "node mysql2",
            Self::Mysqli => "PHP mysqli (mysqlnd)",
            Self::Pdo => "PHP PDO (mysqlnd)",
            Self::ConnectorJ => "MariaDB Connector/J",
        }
    }

    fn slug(self) -> &'static str {
        match self {
            Self::MariadbCli => "mariadb_cli",
            Self::MysqlAsync => "mysql_async",
            Self::PyMySql => "pymysql",
            Self::ConnectorPython => "connector_python",
            Self::Mysql2 => "mysql2",
            Self::Mysqli => "mysqli",
            Self::Pdo => "pdo",
            Self::ConnectorJ => "connector_j",
        }
    }

    /// The command that runs this client's program, or why it cannot
    /// run; `None` for the clients driven from Rust.
    fn program(self) -> Option<Result<Command, String>> {
        let root = workspace_root();
        let compat = root.join("tests/compat");
        let missing = |what: &str| Err(format!("{what} is missing: run scripts/compat-deps.sh"));
        let python = |script: &str, module: &str| {
            let venv = root.join("target/pyvenv/bin/python");
            let found = Command::new(&venv)
                .args(["-c", &format!("import {module}")])
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status()
                .is_ok_and(|s| s.success());
            if !found {
                return missing(&format!("{module} in target/pyvenv"));
            }
            let mut cmd = Command::new(venv);
            cmd.arg(compat.join(script));
            Ok(cmd)
        };
        let php = |api: &str| {
            if !has_command("php") {
                return missing("php (php-cli, php-mysql)");
            }
            let mut cmd = Command::new("php");
            cmd.arg(compat.join("php_client.php"))
                .env("COMPAT_API", api);
            Ok(cmd)
        };
        Some(match self {
            Self::MariadbCli | Self::MysqlAsync => return None,
            Self::PyMySql => python("pymysql_client.py", "pymysql"),
            Self::ConnectorPython => python("connector_python_client.py", "mysql.connector"),
            Self::Mysql2 => {
                let modules = root.join("target/npm-clients/node_modules");
                if !modules.join("mysql2").is_dir() || !has_command("node") {
                    missing("node mysql2 in target/npm-clients")
                } else {
                    let mut cmd = Command::new("node");
                    cmd.arg(compat.join("mysql2_client.js"))
                        .env("NODE_PATH", modules);
                    Ok(cmd)
                }
            }
            Self::Mysqli => php("mysqli"),
            Self::Pdo => php("pdo"),
            Self::ConnectorJ => {
                if !Path::new(CONNECTOR_J_JAR).is_file() || !has_command("javac") {
                    missing("Connector/J (libmariadb-java) or a JDK")
                } else {
                    // A single-file source program (the JDK compiles it).
                    let mut cmd = Command::new("java");
                    cmd.args(["-cp", CONNECTOR_J_JAR])
                        .arg(compat.join("ConnectorJClient.java"));
                    Ok(cmd)
                }
            }
        })
    }
}

fn has_command(name: &str) -> bool {
    Command::new("sh")
        .args(["-c", &format!("command -v {name}")])
        .stdout(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Status {
    Ok,
    Fail,
    Na,
}

/// One cell of a table: what happened, and why.
#[derive(Clone)]
struct Cell {
    status: Status,
    detail: String,
    /// For an `ok` that comes with a caveat worth a footnote.
    note: Option<String>,
}

impl Cell {
    fn ok(detail: impl Into<String>) -> Self {
        Self {
            status: Status::Ok,
            detail: detail.into(),
            note: None,
        }
    }

    fn fail(detail: impl Into<String>) -> Self {
        Self {
            status: Status::Fail,
            detail: detail.into(),
            note: None,
        }
    }

    fn na(detail: impl Into<String>) -> Self {
        Self {
            status: Status::Na,
            detail: detail.into(),
            note: None,
        }
    }

    fn noted(mut self, note: impl Into<String>) -> Self {
        self.note = Some(note.into());
        self
    }

    fn from_bool(ok: bool, detail: impl Into<String>) -> Self {
        if ok {
            Self::ok(detail)
        } else {
            Self::fail(detail)
        }
    }
}

type Cells = BTreeMap<&'static str, Cell>;

/// One row of a printed table.
struct Row {
    label: String,
    cells: Cells,
}

/// A listener of the proxy, with its admin endpoint.
struct Listener {
    proxy: Proxy,
    admin: SocketAddr,
}

impl Listener {
    /// Waits up to 10 s until the proxy serves no session; the last count.
    fn wait_idle(&self) -> Option<f64> {
        let started = Instant::now();
        let mut sessions = self.sessions();
        while sessions != Some(0.0) && started.elapsed() < Duration::from_secs(10) {
            std::thread::sleep(Duration::from_millis(50));
            sessions = self.sessions();
        }
        sessions
    }

    fn sessions(&self) -> Option<f64> {
        let (status, body) = http(self.admin, "GET", "/metrics", Some(TOKEN), b"").ok()?;
        if status != 200 {
            return None;
        }
        body.lines()
            .find_map(|l| l.strip_prefix("switchyard_sessions "))
            .and_then(|v| v.trim().parse().ok())
    }
}

struct Env {
    topology: Topology,
    plain: Listener,
    tls: Listener,
    split: Listener,
    multiplexed: Listener,
    certs: TlsFiles,
    _dir: tempfile::TempDir,
    rows: Mutex<Vec<Row>>,
    sha2_rows: Mutex<Vec<Row>>,
}

impl Env {
    fn listener(&self, mode: Mode) -> &Listener {
        match mode {
            Mode::Plain => &self.plain,
            Mode::Tls => &self.tls,
            Mode::Split => &self.split,
            Mode::Multiplexed => &self.multiplexed,
        }
    }
}

/// A proxy config: the test accounts, the topology's pools (and `app`,
/// which splits between the primary and one replica), no login throttle
/// (the suite fails logins on purpose), an admin endpoint, `mysqlmaster`
/// routed to `master_pool`, and `extra` at the end.
fn proxy_config(
    topology: &Topology,
    admin_port: u16,
    (users, master_pool): (&str, &str),
    extra: &str,
) -> String {
    format!(
        r#"listen = "127.0.0.1:{{port}}"
login_timeout_ms = 20000
connect_timeout_ms = 2000
{master}{slave}{users}
[pools.master]
backends = ["{primary}"]
[pools.replicas]
backends = ["{r1}", "{r2}"]
[pools.one_replica]
backends = ["{r1}"]
[pools.app]
writer = "master"
reader = "one_replica"
[pools.app_mx]
writer = "master"
reader = "one_replica"
multiplex = true
[throttle]
max_failures = 0
[admin]
listen = "127.0.0.1:{admin_port}"
token = "{TOKEN}"
[policy]
module = "{{policy}}"
[policy.settings]
"user.mysqlmaster" = "{master_pool}"
"user.mysqlslave" = "replicas"
"default" = "master"
{extra}"#,
        master = user_table(MASTER_USER.0, MASTER_USER.1),
        slave = user_table(SLAVE_USER.0, SLAVE_USER.1),
        primary = topology.primary.addr(),
        r1 = topology.replicas[0].addr(),
        r2 = topology.replicas[1].addr(),
    )
}

fn start_listener(topology: &Topology, extra: &str, master_pool: &str) -> Listener {
    let admin_port = free_port();
    let proxy = Proxy::start(&proxy_config(
        topology,
        admin_port,
        ("", master_pool),
        extra,
    ))
    .expect("start switchyard");
    Listener {
        proxy,
        admin: SocketAddr::from(([127, 0, 0, 1], admin_port)),
    }
}

fn main() {
    let args = Arguments::from_args();
    let topology = Topology::start(2, None).expect("start the MariaDB topology");
    let dir = tempfile::tempdir().expect("temp dir");
    let certs = ca_signed_certificate(dir.path()).expect("make certificates");
    let plain = start_listener(&topology, "", "master");
    let split = start_listener(&topology, "", "app");
    let multiplexed = start_listener(&topology, "", "app_mx");
    let tls = start_listener(
        &topology,
        &format!(
            "[tls]\ncert = \"{}\"\nkey = \"{}\"\nrequire = true\n",
            certs.cert.display(),
            certs.key.display()
        ),
        "master",
    );
    let env = Arc::new(Env {
        topology,
        plain,
        tls,
        split,
        multiplexed,
        certs,
        _dir: dir,
        rows: Mutex::new(Vec::new()),
        sha2_rows: Mutex::new(Vec::new()),
    });
    let mut trials = Vec::new();
    for client in Client::ALL {
        for mode in [Mode::Plain, Mode::Tls, Mode::Split, Mode::Multiplexed] {
            let env = Arc::clone(&env);
            trials.push(Trial::test(
                format!("{}::{}", client.slug(), mode.slug()),
                move || run_client(&env, client, mode),
            ));
        }
    }
    {
        let env = Arc::clone(&env);
        trials.push(Trial::test("caching_sha2", move || caching_sha2(&env)));
    }
    {
        let env = Arc::clone(&env);
        trials.push(Trial::test("change_user_over_tls", move || {
            change_user_over_tls(&env)
        }));
    }
    let mut args = args;
    // One at a time: each run's sessions are told apart in the proxy's log
    // by when they happened, and the machine is small.
    args.test_threads = Some(1);
    let conclusion = libtest_mimic::run(&args, trials);
    let rows = std::mem::take(&mut *env.rows.lock().unwrap_or_else(|e| e.into_inner()));
    if !rows.is_empty() {
        print_table("Client compatibility through Switchyard", &SCENARIOS, &rows);
    }
    let rows = std::mem::take(&mut *env.sha2_rows.lock().unwrap_or_else(|e| e.into_inner()));
    if !rows.is_empty() {
        print_table(
            "caching_sha2_password through Switchyard",
            &SHA2_COLUMNS,
            &rows,
        );
    }
    drop(env);
    conclusion.exit()
}

/// Prints `rows` under `columns` (ok / FAIL / n/a, with numbered notes for
/// everything but a plain ok; with `COMPAT_DETAILS` set, every cell's
/// detail too).
fn print_table(title: &str, columns: &[&str], rows: &[Row]) {
    let mut notes = Vec::new();
    let mut grid: Vec<Vec<String>> = Vec::new();
    for row in rows {
        let mut line = vec![row.label.clone()];
        for column in columns {
            let text = match row.cells.get(column) {
                None => "-".to_owned(),
                Some(cell) => {
                    let (word, note) = match cell.status {
                        Status::Ok => ("ok", cell.note.clone()),
                        Status::Fail => ("FAIL", Some(cell.detail.clone())),
                        Status::Na => ("n/a", Some(cell.detail.clone())),
                    };
                    match note {
                        Some(note) => {
                            notes.push(format!("{} / {column}: {word}: {note}", row.label));
                            format!("{word}[{}]", notes.len())
                        }
                        None => word.to_owned(),
                    }
                }
            };
            line.push(text);
        }
        grid.push(line);
    }
    let header: Vec<String> = std::iter::once("client / mode".to_owned())
        .chain(columns.iter().map(|c| c.to_string()))
        .collect();
    let widths: Vec<usize> = (0..header.len())
        .map(|i| {
            grid.iter()
                .map(|l| l[i].chars().count())
                .chain([header[i].len()])
                .max()
                .unwrap_or(0)
        })
        .collect();
    let fmt = |line: &[String]| {
        line.iter()
            .zip(&widths)
            .map(|(t, w)| format!("{t:<w$}"))
            .collect::<Vec<_>>()
            .join(" | ")
    };
    let mut out = format!("\n{title}\n\n{}\n", fmt(&header));
    out.push_str(
        &widths
            .iter()
            .map(|w| "-".repeat(*w))
            .collect::<Vec<_>>()
            .join("-|-"),
    );
    out.push('\n');
    for line in &grid {
        out.push_str(&fmt(line));
        out.push('\n');
    }
    if !notes.is_empty() {
        out.push('\n');
        for (i, n) in notes.iter().enumerate() {
            out.push_str(&format!("[{}] {n}\n", i + 1));
        }
    }
    // COMPAT_DETAILS=1: what every cell saw, the oks too.
    if std::env::var_os("COMPAT_DETAILS").is_some() {
        out.push_str("\nDetails:\n");
        for row in rows {
            for column in columns {
                if let Some(cell) = row.cells.get(column) {
                    out.push_str(&format!("{} / {column}: {}\n", row.label, cell.detail));
                }
            }
        }
    }
    println!("{out}");
}

/// What a program printed and how it ended.
struct Run {
    status: Option<ExitStatus>,
    stdout: String,
    stderr: String,
    timed_out: bool,
}

impl Run {
    /// The JSON lines it printed.
    fn lines(&self) -> Vec<serde_json::Value> {
        self.stdout
            .lines()
            .filter(|l| l.starts_with('{'))
            .filter_map(|l| serde_json::from_str(l).ok())
            .collect()
    }

    fn ended(&self) -> String {
        if self.timed_out {
            format!("killed after {PROGRAM_TIMEOUT:?}")
        } else {
            match self.status {
                Some(s) => format!("exited: {s}"),
                None => "no exit status".into(),
            }
        }
    }

    /// The end of stderr, for a failure message.
    fn stderr_tail(&self) -> String {
        tail(&self.stderr, 6000)
    }
}

fn tail(s: &str, n: usize) -> String {
    if s.len() <= n {
        return s.to_owned();
    }
    let mut start = s.len() - n;
    while !s.is_char_boundary(start) {
        start += 1;
    }
    format!("...{}", &s[start..])
}

/// Runs `cmd` (killed with the test binary, and after `timeout`) with its
/// output captured.
fn run_program(mut cmd: Command, timeout: Duration) -> Result<Run, Failed> {
    cmd.stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let shown = format!("{cmd:?}");
    let mut child =
        switchyard_e2e::spawn(cmd).map_err(|e| fail(format!("starting {shown}: {e}")))?;
    let reader = |pipe: Option<Box<dyn Read + Send>>| {
        std::thread::spawn(move || {
            let mut buf = Vec::new();
            if let Some(mut p) = pipe {
                let _ = p.read_to_end(&mut buf);
            }
            String::from_utf8_lossy(&buf).into_owned()
        })
    };
    let out = reader(
        child
            .stdout
            .take()
            .map(|p| Box::new(p) as Box<dyn Read + Send>),
    );
    let err = reader(
        child
            .stderr
            .take()
            .map(|p| Box::new(p) as Box<dyn Read + Send>),
    );
    let started = Instant::now();
    let mut timed_out = false;
    let status = loop {
        match child.try_wait() {
            Ok(Some(status)) => break Some(status),
            Ok(None) if started.elapsed() > timeout => {
                timed_out = true;
                let _ = child.kill();
                break child.wait().ok();
            }
            Ok(None) => std::thread::sleep(Duration::from_millis(20)),
            Err(e) => return Err(fail(format!("waiting for {shown}: {e}"))),
        }
    };
    Ok(Run {
        status,
        stdout: out.join().unwrap_or_default(),
        stderr: err.join().unwrap_or_default(),
        timed_out,
    })
}

/// The settings every program reads.
struct ProgramEnv<'a> {
    port: u16,
    user: (&'a str, &'a str),
    tls: &'a str,
    table: &'a str,
    action: &'a str,
    /// Where the `query` scenario's read runs.
    server_id: u32,
}

fn program_command(env: &Env, client: Client, p: &ProgramEnv) -> Result<Command, Failed> {
    let mut cmd = match client.program() {
        Some(Ok(cmd)) => cmd,
        Some(Err(why)) => return Err(why.into()),
        None => return Err(format!("{} has no program", client.name()).into()),
    };
    cmd.current_dir(workspace_root())
        .env("COMPAT_HOST", "127.0.0.1")
        .env("COMPAT_PORT", p.port.to_string())
        .env("COMPAT_PLAIN_PORT", env.plain.proxy.port.to_string())
        .env("COMPAT_USER", p.user.0)
        .env("COMPAT_PASSWORD", p.user.1)
        .env("COMPAT_DB", "app")
        .env("COMPAT_TABLE", p.table)
        .env("COMPAT_TLS", p.tls)
        .env("COMPAT_CA", &env.certs.ca)
        .env("COMPAT_SERVER_ID", p.server_id.to_string())
        .env("COMPAT_BIG_UNITS", BIG_UNITS.to_string())
        .env("COMPAT_ACTION", p.action)
        .env("PYTHONIOENCODING", "utf-8");
    Ok(cmd)
}

/// One client in one mode: runs its scenarios, checks on the proxy's and
/// the primary's side what can be, records the row.
fn run_client(env: &Env, client: Client, mode: Mode) -> Result<(), Failed> {
    let listener = env.listener(mode);
    let table = format!("compat_{}_{}", client.slug(), mode.slug());
    env.topology.primary.sql(&format!(
        "DROP TABLE IF EXISTS app.{table};
         CREATE TABLE app.{table} (id INT PRIMARY KEY, v VARCHAR(64))"
    ));
    // A split pool's reads of it run on a replica.
    env.topology.sync_replicas().map_err(fail)?;
    let log_from = listener.proxy.log().len();
    let mut run_info = None;
    // Parts of the log whose sessions the client dropped on purpose.
    let mut excluded = Vec::new();
    let mut cells = match client {
        Client::MariadbCli => cli_suite(env, mode, &table, &mut excluded)?,
        // In-process: under the same time limit as the programs, so that a
        // hang is a failure, not a stuck test run.
        Client::MysqlAsync => block_on(async {
            tokio::time::timeout(PROGRAM_TIMEOUT, mysql_async_suite(env, mode, &table)).await
        })
        .unwrap_or_else(|_| {
            Cells::from([(
                "connect",
                Cell::fail(format!("the suite did not finish in {PROGRAM_TIMEOUT:?}")),
            )])
        }),
        _ => {
            let cmd = program_command(
                env,
                client,
                &ProgramEnv {
                    port: listener.proxy.port,
                    user: MASTER_USER,
                    tls: mode.env(),
                    table: &table,
                    action: "suite",
                    server_id: mode.server_id(client),
                },
            )?;
            let run = run_program(cmd, PROGRAM_TIMEOUT)?;
            let cells = cells_from(&run);
            run_info = Some(run);
            cells
        }
    };
    for s in SCENARIOS {
        cells.entry(s).or_insert_with(|| {
            Cell::fail(match &run_info {
                Some(run) => format!("no result ({})", run.ended()),
                None => "no result".to_owned(),
            })
        });
    }
    proxy_side_checks(env, listener, log_from, &excluded, &table, &mut cells);
    let failed: Vec<String> = SCENARIOS
        .iter()
        .filter(|s| cells[*s].status == Status::Fail)
        .map(|s| format!("{s}: {}", cells[s].detail))
        .collect();
    env.rows
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .push(Row {
            label: format!("{} ({})", client.name(), mode.label()),
            cells,
        });
    if failed.is_empty() {
        return Ok(());
    }
    let mut msg = format!(
        "{} ({}):\n  {}",
        client.name(),
        mode.label(),
        failed.join("\n  ")
    );
    if let Some(run) = run_info {
        msg.push_str(&format!(
            "\nprogram {}\nstdout:\n{}\nstderr:\n{}",
            run.ended(),
            tail(&run.stdout, 4000),
            run.stderr_tail()
        ));
    }
    Err(msg.into())
}

/// The cells a program reported.
fn cells_from(run: &Run) -> Cells {
    let mut cells = Cells::new();
    for line in run.lines() {
        let Some(scenario) = line["scenario"]
            .as_str()
            .and_then(|s| SCENARIOS.iter().find(|k| **k == s))
        else {
            continue;
        };
        let detail = line["detail"].as_str().unwrap_or_default().to_owned();
        let mut cell = match line["status"].as_str() {
            Some("ok") => Cell::ok(detail),
            Some("na") => Cell::na(detail),
            _ => Cell::fail(detail),
        };
        if let Some(note) = line["note"].as_str() {
            cell = cell.noted(note);
        }
        cells.insert(scenario, cell);
    }
    cells
}

/// After a run: every session the proxy relayed must have ended with the
/// client's COM_QUIT and none may be left; the transaction's rows must be
/// on the primary as the client saw them.
fn proxy_side_checks(
    env: &Env,
    listener: &Listener,
    log_from: usize,
    excluded: &[Range<usize>],
    table: &str,
    cells: &mut Cells,
) {
    let sessions = listener.wait_idle();
    let log = listener.proxy.log();
    let mut at = log_from;
    let mut ends = Vec::new();
    for range in excluded.iter().chain([&(log.len()..log.len())]) {
        ends.extend(session_ends(log.get(at..range.start).unwrap_or_default()));
        at = range.end;
    }
    let skipped: usize = excluded
        .iter()
        .map(|r| session_ends(log.get(r.clone()).unwrap_or_default()).len())
        .sum();
    if let Some(cell) = cells.get_mut("disconnect")
        && cell.status == Status::Ok
    {
        let quit = ends.iter().filter(|e| *e == "client quit").count();
        if sessions != Some(0.0) {
            *cell = Cell::fail(format!(
                "{}; the proxy still counts {sessions:?} sessions 10 s later",
                cell.detail
            ));
        } else if ends.is_empty() || quit != ends.len() {
            *cell = Cell::fail(format!(
                "{}; the proxy saw the sessions end as {ends:?} (want every one \"client quit\")",
                cell.detail
            ));
        } else {
            cell.detail = format!(
                "{}; proxy: {quit} session(s) ended with COM_QUIT, none left{}",
                cell.detail,
                if skipped > 0 {
                    format!(" ({skipped} that the client dropped on purpose not counted)")
                } else {
                    String::new()
                }
            );
        }
    }
    if let Some(cell) = cells.get_mut("transaction")
        && cell.status == Status::Ok
    {
        let rows = env.topology.primary.sql(&format!(
            "SELECT GROUP_CONCAT(id ORDER BY id), GROUP_CONCAT(v ORDER BY id) FROM app.{table}"
        ));
        if rows != "2\tcommitted" {
            *cell = Cell::fail(format!(
                "{}; but the primary has {rows:?} (want only row 2 'committed')",
                cell.detail
            ));
        }
    }
}

/// How each session the proxy relayed in `log` ended (its `end` field).
fn session_ends(log: &str) -> Vec<String> {
    log.lines()
        .filter(|l| l.contains("session finished"))
        .map(|l| {
            l.split("end=\"")
                .nth(1)
                .and_then(|rest| rest.split('"').next())
                .unwrap_or("?")
                .to_owned()
        })
        .collect()
}

/// The expected `big_value`.
fn big_value() -> String {
    let mut v = "0123456789abcdef".repeat(BIG_UNITS);
    v.push_str("END");
    v
}

fn big_query() -> String {
    format!("SELECT CONCAT(REPEAT('0123456789abcdef', {BIG_UNITS}), 'END')")
}

// ---------------------------------------------------------------------------
// The mariadb CLI (libmariadb), one invocation (session) per scenario.

/// TLS options of the CLI: required and verified, or off.
fn cli_tls_args(env: &Env, tls: &str) -> Vec<String> {
    match tls {
        // --ssl-verify-server-cert checks the certificate and the name
        // against the CA; with it, a server without TLS is refused.
        "required" => vec![
            "--ssl".into(),
            format!("--ssl-ca={}", env.certs.ca.display()),
            "--ssl-verify-server-cert".into(),
        ],
        "disabled" => vec!["--skip-ssl".into()],
        _ => Vec::new(),
    }
}

fn cli(
    env: &Env,
    port: u16,
    tls: &str,
    password: &str,
    extra: &[&str],
    sql: &str,
) -> Result<Run, Failed> {
    let mut cmd = Command::new("mariadb");
    cmd.arg("--no-defaults")
        .args(["-h", "127.0.0.1", "-P", &port.to_string()])
        .args(["-u", MASTER_USER.0, &format!("-p{password}")])
        .args(["--batch", "--skip-column-names"])
        .args(cli_tls_args(env, tls))
        .args(extra)
        .args(["-e", sql, "app"]);
    run_program(cmd, PROGRAM_TIMEOUT)
}

/// The CLI's output if it succeeded, its error otherwise.
fn cli_ok(run: &Run) -> Result<String, String> {
    if run.status.is_some_and(|s| s.success()) {
        Ok(run.stdout.trim_end().to_owned())
    } else {
        Err(format!("{}: {}", run.ended(), run.stderr.trim()))
    }
}

fn cli_expect_1045(run: &Run) -> Cell {
    match cli_ok(run) {
        Ok(_) => Cell::fail("login succeeded"),
        Err(e) => Cell::from_bool(e.contains("ERROR 1045"), e),
    }
}

fn cli_suite(
    env: &Env,
    mode: Mode,
    table: &str,
    excluded: &mut Vec<Range<usize>>,
) -> Result<Cells, Failed> {
    let listener = env.listener(mode);
    let port = listener.proxy.port;
    let tls = mode.env();
    let pass = MASTER_USER.1;
    let mut cells = Cells::new();
    let run = cli(env, port, tls, pass, &[], "SELECT VERSION()")?;
    cells.insert(
        "connect",
        match cli_ok(&run) {
            Ok(v) => Cell::ok(format!("server {v}")),
            Err(e) => Cell::fail(e),
        },
    );
    cells.insert(
        "tls",
        match mode {
            Mode::Plain | Mode::Split | Mode::Multiplexed => Cell::na("plaintext run"),
            Mode::Tls => {
                let status = cli(env, port, tls, pass, &[], "status")?;
                let cipher = cli_ok(&status).ok().and_then(|s| {
                    s.lines()
                        .find(|l| l.contains("Cipher in use"))
                        .map(|l| l.trim().to_owned())
                });
                let plain = cli(env, env.plain.proxy.port, tls, pass, &[], "SELECT 1")?;
                match (cipher, cli_ok(&plain)) {
                    (Some(c), Err(e)) => Cell::ok(format!(
                        "status: {c}; the same options refuse a server without TLS: {e}"
                    )),
                    (c, p) => Cell::fail(format!(
                        "cipher {c:?}; against a server without TLS: {p:?}; {}",
                        status.stderr
                    )),
                }
            }
        },
    );
    let run = cli(
        env,
        port,
        tls,
        pass,
        &[],
        "SELECT @@server_id, 1+1, DATABASE()",
    )?;
    cells.insert(
        "query",
        match cli_ok(&run) {
            Ok(out) => Cell::from_bool(
                out == format!("{}\t2\tapp", mode.server_id(Client::MariadbCli)),
                format!("{out:?}"),
            ),
            Err(e) => Cell::fail(e),
        },
    );
    let run = cli(
        env,
        port,
        tls,
        pass,
        &[],
        "PREPARE st FROM 'SELECT ? * 2, CONCAT(''<'', ?, ''>'')';
         SET @n = 21, @s = 'héllo'; EXECUTE st USING @n, @s;
         SET @n = 50, @s = 'wörld'; EXECUTE st USING @n, @s;
         DEALLOCATE PREPARE st;",
    )?;
    cells.insert(
        "prepared",
        match cli_ok(&run) {
            Ok(out) if out == "42\t<héllo>\n100\t<wörld>" => Cell::na(
                "the CLI has no binary-protocol prepared statements \
                 (SQL PREPARE/EXECUTE checked: ok)",
            ),
            Ok(out) => Cell::fail(format!("SQL PREPARE/EXECUTE gave {out:?}")),
            Err(e) => Cell::fail(e),
        },
    );
    let run = cli(
        env,
        port,
        tls,
        pass,
        &[],
        &format!(
            "BEGIN; INSERT INTO {table} VALUES (1, 'rolled back'); ROLLBACK;
             SELECT COUNT(*) FROM {table} WHERE id = 1;
             BEGIN; INSERT INTO {table} VALUES (2, 'committed'); COMMIT;
             SELECT v FROM {table} WHERE id = 2;"
        ),
    )?;
    cells.insert(
        "transaction",
        match cli_ok(&run) {
            Ok(out) => Cell::from_bool(
                out == "0\ncommitted",
                format!("after rollback, then commit: {out:?}"),
            ),
            Err(e) => Cell::fail(e),
        },
    );
    // The CLI's max_allowed_packet, a limit on what it reads too, is
    // 16 MiB by default: if the default fails, it must fail the same way
    // against the primary directly (the client's limit, not the proxy's),
    // and work through the proxy with a larger one.
    let want = big_value();
    let from = listener.proxy.log().len();
    let run = cli(env, port, tls, pass, &[], &big_query())?;
    if cli_ok(&run).is_err() {
        // The CLI dropped that session when the value exceeded its limit.
        listener.wait_idle();
        excluded.push(from..listener.proxy.log().len());
    }
    cells.insert(
        "big_value",
        match cli_ok(&run) {
            Ok(out) => Cell::from_bool(out == want, format!("{} bytes read", out.len())),
            Err(e) => {
                let direct = cli(
                    env,
                    env.topology.primary.port,
                    "off",
                    pass,
                    &[],
                    &big_query(),
                )?;
                let again = cli(
                    env,
                    port,
                    tls,
                    pass,
                    &["--max-allowed-packet=64M"],
                    &big_query(),
                )?;
                match (cli_ok(&direct), cli_ok(&again)) {
                    (Err(_), Ok(out)) if out == want => {
                        Cell::ok(format!("{} bytes read", out.len())).noted(format!(
                            "with --max-allowed-packet=64M: the CLI's default (16 MiB) fails the \
                             same way through the proxy and against MariaDB directly ({})",
                            e.trim_start_matches("exited: exit status: 1: ")
                        ))
                    }
                    (Ok(_), _) => Cell::fail(format!(
                        "{e}, but the same command works against MariaDB directly"
                    )),
                    (Err(_), Ok(out)) => {
                        Cell::fail(format!("{} bytes read, content differs", out.len()))
                    }
                    (Err(_), Err(e2)) => {
                        Cell::fail(format!("{e}; with --max-allowed-packet=64M: {e2}"))
                    }
                }
            }
        },
    );
    // Every invocation above ended with the CLI's COM_QUIT: checked on
    // the proxy's side.
    cells.insert("disconnect", Cell::ok("each invocation quits when done"));
    let run = cli(env, port, tls, &format!("{pass}-wrong"), &[], "SELECT 1")?;
    cells.insert("bad_password", cli_expect_1045(&run));
    cells.insert(
        "plaintext_refused",
        match mode {
            Mode::Plain | Mode::Split | Mode::Multiplexed => Cell::na("plaintext run"),
            Mode::Tls => cli_expect_1045(&cli(env, port, "disabled", pass, &[], "SELECT 1")?),
        },
    );
    Ok(cells)
}

// ---------------------------------------------------------------------------
// mysql_async (Rust, rustls).

fn async_opts(env: &Env, port: u16, tls: bool, password: &str) -> mysql_async::OptsBuilder {
    let o = opts(port, (MASTER_USER.0, password), Some("app"));
    if tls {
        // With SslOpts mysql_async refuses a server without TLS; the
        // certificate and the name are checked against the CA.
        o.ssl_opts(SslOpts::default().with_root_certs(vec![env.certs.ca.clone().into()]))
    } else {
        o
    }
}

/// COM_CHANGE_USER on a TLS session: the relay stops on the TLS halves,
/// Switchyard verifies over TLS, and the session moves between pools (and
/// stays in place for the same pool) without leaving TLS.
fn change_user_over_tls(env: &Env) -> Result<(), Failed> {
    const PRIMARY: u32 = 1;
    let port = env.listener(Mode::Tls).proxy.port;
    let run = async {
        let mut c = Conn::new(async_opts(env, port, true, MASTER_USER.1))
            .await
            .map_err(fail)?;
        let change = |(user, pass): (&str, &str)| {
            mysql_async::ChangeUserOpts::default()
                .with_user(Some(user.into()))
                .with_pass(Some(pass.into()))
                .with_db_name(Some("app".into()))
        };
        let first = server_id(&mut c).await?;
        check(first == PRIMARY, format!("master on {first}"))?;
        c.change_user(change(SLAVE_USER)).await.map_err(fail)?;
        let second = server_id(&mut c).await?;
        check(second != PRIMARY, format!("slave on {second}"))?;
        let wrong = c.change_user(change((MASTER_USER.0, "wrong"))).await;
        check(
            matches!(&wrong, Err(mysql_async::Error::Server(e)) if e.code == 1045),
            format!("wrong password: {wrong:?}"),
        )?;
        drop(c);
        // A fresh TLS session for the in-place case (mysql_async does not
        // reuse a connection after a failed COM_CHANGE_USER).
        let mut c = Conn::new(async_opts(env, port, true, MASTER_USER.1))
            .await
            .map_err(fail)?;
        let before: Option<u64> = c
            .query_first("SELECT CONNECTION_ID()")
            .await
            .map_err(fail)?;
        c.change_user(change(MASTER_USER)).await.map_err(fail)?;
        let after: Option<u64> = c
            .query_first("SELECT CONNECTION_ID()")
            .await
            .map_err(fail)?;
        check(
            before == after,
            format!("backend thread {before:?} -> {after:?}"),
        )?;
        let third = server_id(&mut c).await?;
        check(third == PRIMARY, format!("master again on {third}"))?;
        c.disconnect().await.map_err(fail)?;
        Ok(())
    };
    block_on(async { tokio::time::timeout(PROGRAM_TIMEOUT, run).await })
        .map_err(|_| fail(format!("did not finish in {PROGRAM_TIMEOUT:?}")))?
}

async fn async_expect_1045(opts: mysql_async::OptsBuilder) -> Cell {
    match Conn::new(opts).await {
        Ok(c) => {
            let _ = c.disconnect().await;
            Cell::fail("login succeeded")
        }
        Err(mysql_async::Error::Server(e)) => {
            Cell::from_bool(e.code == 1045, format!("{} {}", e.code, e.message))
        }
        Err(e) => Cell::fail(format!("{e}")),
    }
}

async fn mysql_async_suite(env: &Env, mode: Mode, table: &str) -> Cells {
    let port = env.listener(mode).proxy.port;
    let tls = mode == Mode::Tls;
    let mut cells = Cells::new();
    let mut conn = match Conn::new(async_opts(env, port, tls, MASTER_USER.1)).await {
        Ok(c) => {
            let v = c.server_version();
            cells.insert(
                "connect",
                Cell::ok(format!("server {}.{}.{}", v.0, v.1, v.2)),
            );
            Some(c)
        }
        Err(e) => {
            cells.insert("connect", Cell::fail(e.to_string()));
            None
        }
    };
    cells.insert(
        "tls",
        if tls {
            match Conn::new(async_opts(env, env.plain.proxy.port, true, MASTER_USER.1)).await {
                Ok(c) => {
                    let _ = c.disconnect().await;
                    Cell::fail("the TLS settings also logged in to a server without TLS")
                }
                Err(e) => Cell::ok(format!(
                    "no cipher report in mysql_async's API; \
                     the same settings refuse a server without TLS: {e}"
                )),
            }
        } else {
            Cell::na("plaintext run")
        },
    );
    if let Some(c) = conn.as_mut() {
        let r: Result<Option<(u32, i64, String)>, _> =
            c.query_first("SELECT @@server_id, 1+1, DATABASE()").await;
        cells.insert(
            "query",
            match r {
                Ok(row) => Cell::from_bool(
                    row == Some((mode.server_id(Client::MysqlAsync), 2, "app".into())),
                    format!("{row:?}"),
                ),
                Err(e) => Cell::fail(e.to_string()),
            },
        );
        let mut got = Vec::new();
        let mut error = None;
        for (n, s) in [(21i64, "héllo"), (50, "wörld")] {
            match c
                .exec_first::<(i64, String), _, _>("SELECT ? * 2, CONCAT('<', ?, '>')", (n, s))
                .await
            {
                Ok(row) => got.push(row),
                Err(e) => error = Some(e.to_string()),
            }
        }
        let want = vec![
            Some((42, "<héllo>".to_owned())),
            Some((100, "<wörld>".to_owned())),
        ];
        cells.insert(
            "prepared",
            match error {
                Some(e) => Cell::fail(e),
                None => Cell::from_bool(
                    got == want,
                    format!("server-side (binary protocol): {got:?}"),
                ),
            },
        );
        let tx = async {
            let insert = format!("INSERT INTO {table} VALUES (?, ?)");
            let mut tx = c.start_transaction(TxOpts::default()).await?;
            tx.exec_drop(&insert, (1, "rolled back")).await?;
            tx.rollback().await?;
            let gone: Option<u64> = c
                .query_first(format!("SELECT COUNT(*) FROM {table} WHERE id = 1"))
                .await?;
            let mut tx = c.start_transaction(TxOpts::default()).await?;
            tx.exec_drop(&insert, (2, "committed")).await?;
            tx.commit().await?;
            let kept: Option<String> = c
                .query_first(format!("SELECT v FROM {table} WHERE id = 2"))
                .await?;
            Ok::<_, mysql_async::Error>((gone, kept))
        };
        cells.insert(
            "transaction",
            match tx.await {
                Ok((gone, kept)) => Cell::from_bool(
                    gone == Some(0) && kept.as_deref() == Some("committed"),
                    format!("after rollback {gone:?} rows; after commit {kept:?}"),
                ),
                Err(e) => Cell::fail(e.to_string()),
            },
        );
        let big: Result<Option<String>, _> = c.query_first(big_query()).await;
        cells.insert(
            "big_value",
            match big {
                Ok(Some(v)) => Cell::from_bool(v == big_value(), format!("{} bytes read", v.len())),
                Ok(None) => Cell::fail("no row"),
                Err(e) => Cell::fail(e.to_string()),
            },
        );
    }
    if let Some(c) = conn.take() {
        cells.insert(
            "disconnect",
            match c.disconnect().await {
                Ok(()) => Cell::ok("disconnect() sent COM_QUIT"),
                Err(e) => Cell::fail(e.to_string()),
            },
        );
    }
    cells.insert(
        "bad_password",
        async_expect_1045(async_opts(
            env,
            port,
            tls,
            &format!("{}-wrong", MASTER_USER.1),
        ))
        .await,
    );
    cells.insert(
        "plaintext_refused",
        if tls {
            async_expect_1045(async_opts(env, port, false, MASTER_USER.1)).await
        } else {
            Cell::na("plaintext run")
        },
    );
    cells
}

// ---------------------------------------------------------------------------
// caching_sha2_password.

const SHA2_COLUMNS: [&str; 5] = [
    "full_auth_tls",
    "fast_path",
    "full_auth_rsa",
    "wrong_password",
    "cleartext_refused",
];

/// One login's outcome, as the client program saw it.
struct Login {
    ok: bool,
    /// The server's error code when refused.
    code: Option<i64>,
    /// What the client saw of the exchange: "fast" (fast auth success),
    /// "full" (full authentication: the password inside TLS, or in
    /// cleartext for a client that knows nothing better), "full+rsa" (the
    /// password encrypted with the server's public key) or "none".
    path: String,
    detail: String,
}

impl std::fmt::Display for Login {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if self.ok {
            write!(f, "logged in ({})", self.path)
        } else {
            write!(
                f,
                "refused {:?} ({}): {}",
                self.code, self.path, self.detail
            )
        }
    }
}

impl Login {
    /// Logged in through exactly `path`.
    fn is(&self, path: &str) -> bool {
        self.ok && self.path == path
    }

    /// Refused with 1045.
    fn denied(&self) -> bool {
        !self.ok && self.code == Some(1045)
    }
}

/// One login through the caching_sha2 proxy with `client` in its
/// program's `login` mode.
fn sha2_login(
    env: &Env,
    client: Client,
    port: u16,
    user: (&str, &str),
    tls: &str,
) -> Result<Login, Failed> {
    let mut cmd = program_command(
        env,
        client,
        &ProgramEnv {
            port,
            user,
            tls,
            table: "",
            action: "login",
            server_id: PRIMARY_ID,
        },
    )?;
    if client == Client::ConnectorPython {
        cmd.env("COMPAT_AUTH_PLUGIN", "caching_sha2_password");
    }
    let run = run_program(cmd, PROGRAM_TIMEOUT)?;
    let Some(line) = run.lines().into_iter().find(|l| l["scenario"] == "login") else {
        return Err(format!(
            "{} printed no login result ({}):\n{}\n{}",
            client.name(),
            run.ended(),
            run.stdout,
            run.stderr_tail()
        )
        .into());
    };
    Ok(Login {
        ok: line["status"] == "ok",
        code: line["code"].as_i64(),
        path: line["auth_path"].as_str().unwrap_or("?").to_owned(),
        detail: line["detail"].as_str().unwrap_or_default().to_owned(),
    })
}

fn caching_sha2(env: &Env) -> TestResult {
    let dir = tempfile::tempdir().map_err(fail)?;
    let key = dir.path().join("rsa.pem");
    let out = Command::new("openssl")
        .args(["genrsa", "-out"])
        .arg(&key)
        .arg("2048")
        .output()
        .map_err(fail)?;
    check(out.status.success(), String::from_utf8_lossy(&out.stderr))?;
    let clients = [Client::ConnectorPython, Client::PyMySql, Client::Mysql2];
    // A fresh account per case: the proxy's cache starts cold for each.
    let cases = ["tls", "rsa", "wrong_tls", "wrong_rsa", "cold"];
    let account = |client: Client, case: &str| {
        (
            format!("sha2_{}_{case}", client.slug()),
            format!("{case}-Pass-{}", client.slug()),
        )
    };
    let mut users = String::new();
    let mut sql = String::new();
    for client in clients {
        for case in cases {
            let (name, password) = account(client, case);
            users.push_str(&user_table(&name, &password));
            users.push_str("plugin = \"caching_sha2_password\"\n");
            sql.push_str(&format!(
                "CREATE USER IF NOT EXISTS '{name}'@'%' IDENTIFIED BY '{password}';
                 GRANT ALL ON app.* TO '{name}'@'%';"
            ));
        }
    }
    env.topology.primary.sql(&sql);
    env.topology.sync_replicas().map_err(fail)?;
    let config = proxy_config(
        &env.topology,
        free_port(),
        (&users, "master"),
        &format!(
            "[auth]\ndefault_plugin = \"caching_sha2_password\"\nrsa_private_key = \"{}\"\n\
             [tls]\ncert = \"{}\"\nkey = \"{}\"\n",
            key.display(),
            env.certs.cert.display(),
            env.certs.key.display()
        ),
    );
    let proxy = Proxy::start(&config).map_err(|e| {
        fail(format!(
            "switchyard with [auth] caching_sha2_password did not start: {e:#}"
        ))
    })?;
    let mut failures = Vec::new();
    for client in clients {
        let mut cells = Cells::new();
        let login = |(name, password): &(String, String), wrong: bool, tls: &str| {
            let password = if wrong {
                format!("{password}-wrong")
            } else {
                password.clone()
            };
            sha2_login(env, client, proxy.port, (name, &password), tls)
        };
        // Full authentication inside TLS (the password in cleartext
        // there), then the same user without TLS from the cache (fast
        // path), then a wrong password on that fast path.
        let u = account(client, "tls");
        let full = login(&u, false, "required")?;
        cells.insert(
            "full_auth_tls",
            Cell::from_bool(full.is("full"), format!("cold cache, TLS: {full}")),
        );
        let mut wrongs = Vec::new();
        if full.ok {
            let fast = login(&u, false, "disabled")?;
            cells.insert(
                "fast_path",
                Cell::from_bool(fast.is("fast"), format!("warm cache, no TLS: {fast}")),
            );
            let l = login(&u, true, "disabled")?;
            wrongs.push((l.denied(), format!("warm cache, no TLS: {l}")));
        } else {
            cells.insert("fast_path", Cell::fail("the first (full) login failed"));
        }
        let l = login(&account(client, "wrong_tls"), true, "required")?;
        wrongs.push((l.denied(), format!("full auth over TLS: {l}")));
        if client == Client::ConnectorPython {
            cells.insert(
                "full_auth_rsa",
                Cell::na(
                    "mysql-connector-python cannot encrypt with RSA (its plugin: 'encrypting \
                     using RSA is not supported'); without TLS it answers a full authentication \
                     request with the password in cleartext: see cleartext_refused",
                ),
            );
            // Cold cache, no TLS: the connector answers the full
            // authentication request with the cleartext password, which
            // must be refused; over TLS the same account then works.
            let u = account(client, "cold");
            let plain = login(&u, false, "disabled")?;
            let after = login(&u, false, "required")?;
            cells.insert(
                "cleartext_refused",
                Cell::from_bool(
                    plain.denied() && plain.path == "full" && after.is("full"),
                    format!("cold cache, no TLS: {plain}; then over TLS: {after}"),
                ),
            );
        } else {
            let u = account(client, "rsa");
            let first = login(&u, false, "disabled")?;
            let second = login(&u, false, "disabled")?;
            cells.insert(
                "full_auth_rsa",
                Cell::from_bool(
                    first.is("full+rsa") && second.is("fast"),
                    format!("cold cache, no TLS: {first}; again: {second}"),
                ),
            );
            let l = login(&account(client, "wrong_rsa"), true, "disabled")?;
            wrongs.push((l.denied(), format!("full auth over RSA: {l}")));
            cells.insert(
                "cleartext_refused",
                Cell::na(
                    "the client encrypts with RSA without TLS: it sends no cleartext password",
                ),
            );
        }
        cells.insert(
            "wrong_password",
            Cell::from_bool(
                wrongs.iter().all(|(ok, _)| *ok),
                wrongs
                    .iter()
                    .map(|(_, d)| d.as_str())
                    .collect::<Vec<_>>()
                    .join("; "),
            ),
        );
        for c in SHA2_COLUMNS {
            if cells[c].status == Status::Fail {
                failures.push(format!("{} / {c}: {}", client.name(), cells[c].detail));
            }
        }
        env.sha2_rows
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(Row {
                label: client.name().to_owned(),
                cells,
            });
    }
    check(
        failures.is_empty(),
        format!(
            "{}\nproxy log (end):\n{}",
            failures.join("\n"),
            tail(&proxy.log(), 6000)
        ),
    )
}
