//! The end-to-end benchmark: one MariaDB server, HAProxy (`mode tcp`) in
//! front of it, and Switchyard (release build, default policy) in front of
//! it twice: with the default settings, and `switchyard-tuned` with kept
//! backend sessions (`idle_sessions`) and reused policy instances. The same
//! workloads run against every target (and `switchyard-split`, a split
//! pool whose writer and reader are that one server, and
//! `switchyard-multiplexed`, that pool multiplexed on at most 32 backend
//! sessions), the order alternating (A B C D, then
//! D C B A) over several rounds. Prints medians, min–max and every target's
//! ratio to the direct connection, and writes the table to `bench/results/`
//! and into the README.
//!
//! Run it with `bench/run.sh` (which installs sysbench and HAProxy).
//! Options: `--rounds N` (3), `--seconds S` per sysbench run (10),
//! `--no-readme`, `--only WORKLOAD` (any of `point1`, `point32`,
//! `point2000` (2,000 clients at once), `streaming`, `churn`, `memory`;
//! repeatable; implies `--no-readme`),
//! `--alt-policy 'KEY = VALUE'` and `--alt-pool 'KEY = VALUE'`
//! (repeatable): one more target, a Switchyard whose `[policy]` or
//! `[pools.main]` table has these lines too, measured in the same rounds
//! (an A/B comparison of a setting; implies `--no-readme`),
//! `--alt-env KEY=VALUE` (repeatable): the same with an environment
//! variable set for that Switchyard; `--target NAME` (repeatable): measure
//! only these targets (`direct`, `haproxy`, `switchyard`,
//! `switchyard-tuned`, `switchyard-split`, `switchyard-multiplexed`,
//! `switchyard-alt`, `kernel-relay`), e.g. to profile
//! one of them; `--fleet`: one more target, `switchyard-fleet`, in a
//! fleet with a Redis store (every login asks it: the user has a limit);
//! `--kernel-relay`: one more target, the `kernel_relay`
//! instrument (root only), a TCP relay whose server-to-client bytes never
//! leave the kernel: what a relay could reach with a BPF sockmap.

use std::fmt::Write as _;
use std::net::{Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use switchyard::auth::PasswordHash;
use switchyard_e2e::raw::{LoginOutcome, RawClient};
use switchyard_e2e::{
    HaProxy, MariaDb, Proxy, Redis, cargo_command, free_port, spawn, wait_port, workspace_root,
};

const USER: (&str, &str) = ("bench", "benchpass");
const IDLE_SESSIONS: usize = 1000;
/// The many-sessions row: this many idle sessions held at once.
const MANY_IDLE_SESSIONS: usize = 5000;
const CHURN_WORKERS: usize = 8;
/// How long one streaming measurement reads.
const STREAMING_FOR: Duration = Duration::from_secs(3);
/// `[pools.main]` lines of the `switchyard-tuned` target.
const TUNED_POOL: [&str; 1] = ["idle_sessions = 16"];
/// `[policy]` lines of the `switchyard-tuned` target.
const TUNED_POLICY: [&str; 1] = ["instances = \"reuse\""];

struct Options {
    rounds: usize,
    seconds: u64,
    readme: bool,
    only: Vec<String>,
    alt_policy: Vec<String>,
    alt_pool: Vec<String>,
    alt_env: Vec<(String, String)>,
    targets: Vec<String>,
    kernel_relay: bool,
    fleet: bool,
}

impl Options {
    fn runs(&self, workload: &str) -> bool {
        self.only.is_empty() || self.only.iter().any(|o| o == workload)
    }

    fn measures(&self, target: &str) -> bool {
        self.targets.is_empty() || self.targets.iter().any(|t| t == target)
    }
}

fn options() -> Result<Options> {
    let mut o = Options {
        rounds: 3,
        seconds: 10,
        readme: true,
        only: Vec::new(),
        alt_policy: Vec::new(),
        alt_pool: Vec::new(),
        alt_env: Vec::new(),
        targets: Vec::new(),
        kernel_relay: false,
        fleet: false,
    };
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        match a.as_str() {
            "--rounds" => o.rounds = args.next().context("--rounds N")?.parse()?,
            "--seconds" => o.seconds = args.next().context("--seconds S")?.parse()?,
            "--no-readme" => o.readme = false,
            "--only" => {
                o.only.push(args.next().context("--only WORKLOAD")?);
                o.readme = false;
            }
            "--alt-policy" => {
                o.alt_policy
                    .push(args.next().context("--alt-policy 'KEY = VALUE'")?);
                o.readme = false;
            }
            "--alt-pool" => {
                o.alt_pool
                    .push(args.next().context("--alt-pool 'KEY = VALUE'")?);
                o.readme = false;
            }
            "--alt-env" => {
                let kv = args.next().context("--alt-env KEY=VALUE")?;
                let (k, v) = kv.split_once('=').context("--alt-env KEY=VALUE")?;
                o.alt_env.push((k.to_owned(), v.to_owned()));
                o.readme = false;
            }
            "--kernel-relay" => {
                o.kernel_relay = true;
                o.readme = false;
            }
            "--fleet" => {
                o.fleet = true;
                o.readme = false;
            }
            "--target" => {
                o.targets.push(args.next().context("--target NAME")?);
                o.readme = false;
            }
            other => bail!("unknown option {other}"),
        }
    }
    Ok(o)
}

/// One thing clients connect to.
struct Target {
    name: &'static str,
    port: u16,
    pid: u32,
}

/// HAProxy relaying to `backend` on a free port: the proxy and its port.
fn haproxy(backend: SocketAddr) -> Result<(HaProxy, u16)> {
    let port = free_port();
    Ok((HaProxy::start(&[(port, backend.to_string())])?, port))
}

/// The `kernel_relay` instrument (see `src/bin/kernel_relay.rs`): a TCP
/// relay whose server-to-client bytes are redirected inside the kernel.
struct KernelRelay {
    child: Child,
    port: u16,
}

impl KernelRelay {
    fn start(backend: SocketAddr) -> Result<Self> {
        let bin = std::env::current_exe()?.with_file_name("kernel_relay");
        let port = free_port();
        let mut cmd = Command::new(bin);
        cmd.arg(port.to_string())
            .arg(backend.to_string())
            .stdout(Stdio::null());
        let child = spawn(cmd).context("starting kernel_relay (it needs root)")?;
        wait_port(port, Duration::from_secs(30))?;
        Ok(Self { child, port })
    }
}

impl Drop for KernelRelay {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Switchyard's configuration; `extra` has lines for the `[pools.main]` and
/// the `[policy]` table. The load comes from one address: no limit on its
/// logins in progress (the many-clients row opens 2,000 at once).
fn switchyard_config(
    port: u16,
    backend: SocketAddr,
    policy: &Path,
    extra: (&[String], &[String]),
) -> String {
    let lines = |l: &[String]| l.iter().map(|l| format!("{l}\n")).collect::<String>();
    format!(
        "listen = \"127.0.0.1:{port}\"\nmax_connections = 8192\n\
         [throttle]\nmax_pending_logins = 0\n\
         [[users]]\nname = \"{}\"\npassword_hash = \"{}\"\n\
         [pools.main]\nbackends = [\"{backend}\"]\n{}\
         [policy]\nmodule = \"{}\"\n{}[policy.settings]\ndefault = \"main\"\n",
        USER.0,
        PasswordHash::of_password(USER.1.as_bytes()),
        lines(extra.0),
        policy.display(),
        lines(extra.1),
    )
}

/// The `switchyard-split` target's configuration: `[pools.main]` splits
/// between a writer and a reader pool that are both the one server, so
/// that what it measures against `switchyard` is the statement-level
/// routing itself (classification, answer framing, session tracking).
fn split_config(port: u16, backend: SocketAddr, policy: &Path) -> String {
    switchyard_config(port, backend, policy, (&[], &[])).replace(
        &format!("[pools.main]\nbackends = [\"{backend}\"]\n"),
        &format!(
            "[pools.main]\nwriter = \"w\"\nreader = \"r\"\n\
             [pools.w]\nbackends = [\"{backend}\"]\n[pools.r]\nbackends = [\"{backend}\"]\n"
        ),
    )
}

/// The `switchyard-fleet` target's configuration: `switchyard`'s, in a
/// fleet whose store is `redis`, the user's sessions limited (far above
/// what the load opens), so that every login asks the store.
fn fleet_config(port: u16, backend: SocketAddr, policy: &Path, redis: &Redis) -> String {
    let mut config = switchyard_config(port, backend, policy, (&[], &[])).replacen(
        "\n",
        "\nmax_connections_per_user = 100000\n",
        1,
    );
    let _ = write!(
        config,
        "[fleet]\nstore = \"{}\"\ninstance = \"bench\"\n",
        redis.url()
    );
    config
}

/// Backend sessions a `switchyard-multiplexed` target may hold (its
/// writer and reader pools together: they are the one server).
const MULTIPLEXED_BACKEND_SESSIONS: usize = 32;
/// The many-clients row: this many clients running point selects at once.
const MANY_CLIENTS: usize = 2000;

/// The `switchyard-multiplexed` target's configuration: the split pool of
/// `switchyard-split`, multiplexed, the server capped at
/// [`MULTIPLEXED_BACKEND_SESSIONS`] backend sessions.
fn multiplexed_config(port: u16, backend: SocketAddr, policy: &Path) -> String {
    let capped = format!(
        "backends = [{{ addr = \"{backend}\", max_connections = {MULTIPLEXED_BACKEND_SESSIONS} }}]"
    );
    split_config(port, backend, policy)
        .replace(
            "[pools.main]\nwriter = \"w\"\nreader = \"r\"\n",
            "[pools.main]\nwriter = \"w\"\nreader = \"r\"\nmultiplex = true\n",
        )
        .replace(&format!("backends = [\"{backend}\"]"), &capped)
}

/// Builds Switchyard and the default policy (and, when asked, the
/// `kernel_relay` instrument) for release.
fn build_release(kernel_relay: bool) -> Result<(PathBuf, PathBuf)> {
    let root = workspace_root();
    let relay: &[&str] = &[
        "build",
        "-q",
        "--release",
        "-p",
        "switchyard-e2e",
        "--bin",
        "kernel_relay",
    ];
    for args in [
        &[
            "build",
            "-q",
            "--release",
            "-p",
            "switchyard",
            "--bin",
            "switchyard",
        ][..],
        &[
            "build",
            "-q",
            "--release",
            "-p",
            "default-policy",
            "--target",
            "wasm32-wasip2",
        ][..],
    ]
    .into_iter()
    .chain(kernel_relay.then_some(relay))
    {
        let ok = cargo_command()
            .args(args)
            .current_dir(&root)
            .status()?
            .success();
        if !ok {
            bail!("cargo {args:?} failed");
        }
    }
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| root.join("target"));
    Ok((
        target.join("release/switchyard"),
        target.join("wasm32-wasip2/release/default_policy.wasm"),
    ))
}

/// CPU seconds (user + system) a process has used.
fn cpu_seconds(pid: u32) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    // Fields after the command name, which is in parentheses.
    let rest = stat.rsplit_once(')').map_or("", |(_, r)| r);
    let f: Vec<&str> = rest.split_whitespace().collect();
    let ticks = |i: usize| f.get(i).and_then(|v| v.parse::<f64>().ok()).unwrap_or(0.0);
    // SAFETY: sysconf has no preconditions.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as f64;
    (ticks(11) + ticks(12)) / hz
}

/// Runs `f` and returns its result with the CPU seconds `pid` used meanwhile.
fn with_cpu<T>(pid: u32, f: impl FnOnce() -> Result<T>) -> Result<(T, f64)> {
    let before = cpu_seconds(pid);
    let value = f()?;
    Ok((value, cpu_seconds(pid) - before))
}

/// CPU seconds all CPUs of the machine have spent busy (not idle or
/// waiting for I/O), from `/proc/stat`.
fn machine_busy_seconds() -> f64 {
    let stat = std::fs::read_to_string("/proc/stat").unwrap_or_default();
    let f: Vec<f64> = stat
        .lines()
        .next()
        .unwrap_or_default()
        .split_whitespace()
        .skip(1)
        .filter_map(|v| v.parse().ok())
        .collect();
    // user nice system idle iowait irq softirq steal ...
    let busy: f64 = f
        .iter()
        .enumerate()
        .filter(|(i, _)| *i != 3 && *i != 4)
        .map(|(_, v)| v)
        .sum();
    // SAFETY: sysconf has no preconditions.
    busy / unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as f64
}

fn rss_kib(pid: u32) -> f64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or(0.0)
}

fn own_cpu_seconds() -> f64 {
    // SAFETY: getrusage writes into the struct we pass.
    let mut u: libc::rusage = unsafe { std::mem::zeroed() };
    unsafe { libc::getrusage(libc::RUSAGE_SELF, &mut u) };
    let t = |tv: libc::timeval| tv.tv_sec as f64 + tv.tv_usec as f64 / 1e6;
    t(u.ru_utime) + t(u.ru_stime)
}

fn raise_fd_limit() {
    // SAFETY: plain getrlimit/setrlimit on our own process.
    unsafe {
        let mut l: libc::rlimit = std::mem::zeroed();
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut l) == 0 {
            l.rlim_cur = l.rlim_max.min(65536);
            libc::setrlimit(libc::RLIMIT_NOFILE, &l);
        }
    }
}

/// One sysbench oltp_point_select run.
struct Sysbench {
    qps: f64,
    avg_ms: f64,
    p95_ms: f64,
    queries: f64,
}

fn sysbench(port: u16, threads: usize, seconds: u64, command: &str) -> Result<Sysbench> {
    let out = Command::new("sysbench")
        .arg("oltp_point_select")
        .args([
            "--mysql-host=127.0.0.1",
            &format!("--mysql-port={port}"),
            &format!("--mysql-user={}", USER.0),
            &format!("--mysql-password={}", USER.1),
            "--mysql-db=sbtest",
            "--mysql-ssl=off",
            "--tables=1",
            "--table-size=10000",
            &format!("--threads={threads}"),
            &format!("--time={seconds}"),
            "--report-interval=0",
            command,
        ])
        .output()
        .context("running sysbench (apt-get install sysbench)")?;
    let text = String::from_utf8_lossy(&out.stdout);
    if !out.status.success() {
        bail!(
            "sysbench {command} failed: {text}{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let field = |label: &str| -> f64 {
        text.lines()
            .find(|l| l.trim_start().starts_with(label))
            .and_then(|l| l.split(':').nth(1))
            .and_then(|v| v.split_whitespace().next())
            .and_then(|v| v.parse().ok())
            .unwrap_or(f64::NAN)
    };
    let qps = text
        .lines()
        .find(|l| l.trim_start().starts_with("queries:"))
        .and_then(|l| l.split('(').nth(1))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .unwrap_or(f64::NAN);
    Ok(Sysbench {
        qps,
        avg_ms: field("avg:"),
        p95_ms: field("95th percentile:"),
        queries: field("queries:"),
    })
}

fn login(port: u16) -> Result<RawClient> {
    let mut c = RawClient::connect(SocketAddr::from((Ipv4Addr::LOCALHOST, port)))?;
    match c.login(USER.0, USER.1, Some("sbtest"), "mysql_native_password")? {
        LoginOutcome::Ok(_) => Ok(c),
        LoginOutcome::Err(e, _) => bail!("login failed: {} {}", e.code, e.message),
    }
}

/// Reads one text result set (without CLIENT_DEPRECATE_EOF); returns the
/// payload bytes of its rows.
fn read_result(c: &mut RawClient) -> Result<u64> {
    let mut eofs = 0;
    let mut bytes = 0u64;
    loop {
        let p = c.expect_packet()?;
        match p.payload.first() {
            Some(0xff) => bail!("query failed: {:?}", String::from_utf8_lossy(&p.payload)),
            Some(0xfe) if p.payload.len() < 9 => {
                eofs += 1;
                if eofs == 2 {
                    return Ok(bytes);
                }
            }
            _ if eofs == 1 => bytes += p.payload.len() as u64,
            _ => {}
        }
    }
}

/// MB/s reading 64 rows of 1 MiB, again and again for at least
/// [`STREAMING_FOR`] (at least 4 times): one read takes a few tens of
/// milliseconds, too short to measure alone on a machine whose speed
/// drifts.
fn streaming(port: u16, target_pid: u32, db_pid: u32) -> Result<Streaming> {
    let mut c = login(port)?;
    let started = Instant::now();
    let cpu = [
        cpu_seconds(target_pid),
        cpu_seconds(db_pid),
        own_cpu_seconds(),
        machine_busy_seconds(),
    ];
    let mut total = 0;
    let mut reads = 0;
    while reads < 4 || started.elapsed() < STREAMING_FOR {
        c.write_raw(&RawClient::query_packet("SELECT b FROM blobs"))?;
        total += read_result(&mut c)?;
        reads += 1;
    }
    let wall = started.elapsed().as_secs_f64();
    let mb = total as f64 / 1e6;
    let per_mb = |now: f64, before: f64| (now - before) / mb * 1e6;
    Ok(Streaming {
        mb_per_sec: mb / wall,
        target_us_per_mb: per_mb(cpu_seconds(target_pid), cpu[0]),
        db_us_per_mb: per_mb(cpu_seconds(db_pid), cpu[1]),
        client_us_per_mb: per_mb(own_cpu_seconds(), cpu[2]),
        cores_busy: (machine_busy_seconds() - cpu[3]) / wall,
    })
}

/// One streaming measurement: throughput, and where the CPU went.
struct Streaming {
    mb_per_sec: f64,
    /// CPU per MB of the target process (mariadbd itself for direct).
    target_us_per_mb: f64,
    db_us_per_mb: f64,
    /// The reading client (this process).
    client_us_per_mb: f64,
    /// All CPUs of the machine, busy time over wall time.
    cores_busy: f64,
}

/// Connection churn: connect, log in, SELECT 1, quit.
struct Churn {
    per_sec: f64,
    p50_ms: f64,
    p99_ms: f64,
    logins: f64,
    generator_cores: f64,
}

fn churn(port: u16, seconds: u64) -> Result<Churn> {
    let stop = Arc::new(AtomicBool::new(false));
    let latencies = Arc::new(Mutex::new(Vec::new()));
    let cpu0 = own_cpu_seconds();
    let started = Instant::now();
    let workers: Vec<_> = (0..CHURN_WORKERS)
        .map(|_| {
            let stop = Arc::clone(&stop);
            let latencies = Arc::clone(&latencies);
            std::thread::spawn(move || -> Result<()> {
                let mut mine = Vec::new();
                while !stop.load(Ordering::Relaxed) {
                    let t = Instant::now();
                    let mut c = login(port)?;
                    mine.push(t.elapsed().as_secs_f64() * 1e3);
                    c.write_raw(&RawClient::query_packet("SELECT 1"))?;
                    read_result(&mut c)?;
                    c.write_raw(&RawClient::command_packet(&[0x01]))?;
                }
                latencies
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .extend(mine);
                Ok(())
            })
        })
        .collect();
    std::thread::sleep(Duration::from_secs(seconds));
    stop.store(true, Ordering::Relaxed);
    for w in workers {
        w.join().map_err(|_| anyhow::anyhow!("worker panicked"))??;
    }
    let wall = started.elapsed().as_secs_f64();
    let mut l = std::mem::take(&mut *latencies.lock().unwrap_or_else(|e| e.into_inner()));
    l.sort_by(f64::total_cmp);
    let pct = |p: f64| {
        l.get(((l.len() as f64 - 1.0) * p) as usize)
            .copied()
            .unwrap_or(f64::NAN)
    };
    Ok(Churn {
        per_sec: l.len() as f64 / wall,
        p50_ms: pct(0.5),
        p99_ms: pct(0.99),
        logins: l.len() as f64,
        generator_cores: (own_cpu_seconds() - cpu0) / wall,
    })
}

/// RSS of a target holding idle sessions: KiB per session and the whole
/// process's MiB.
#[derive(Debug, Clone, Copy)]
struct IdleMemory {
    per_session_kib: f64,
    total_mib: f64,
}

/// KiB of RSS per idle session (each with its backend session) on a
/// freshly started process, for `n` sessions held at once. Idle means what
/// users run: each session has run a statement (a point select, its
/// result read) and waits for the next.
fn idle_memory(
    start: &dyn Fn() -> Result<(u16, u32, Box<dyn std::any::Any>)>,
    n: usize,
) -> Result<IdleMemory> {
    let (port, pid, guard) = start()?;
    let mut warm = login(port)?;
    point_select(&mut warm)?;
    drop(warm);
    std::thread::sleep(Duration::from_millis(300));
    let base = rss_kib(pid);
    let mut sessions = Vec::with_capacity(n);
    for i in 0..n {
        let mut c = login(port)?;
        point_select(&mut c).with_context(|| format!("session {i}"))?;
        sessions.push(c);
    }
    std::thread::sleep(Duration::from_secs(1));
    let rss = rss_kib(pid);
    drop(sessions);
    drop(guard);
    Ok(IdleMemory {
        per_session_kib: (rss - base) / n as f64,
        total_mib: rss / 1024.0,
    })
}

/// One point select on `c`, its result read.
fn point_select(c: &mut RawClient) -> Result<()> {
    c.write_raw(&RawClient::query_packet(
        "SELECT c FROM sbtest1 WHERE id = 4242",
    ))?;
    read_result(c).map(drop)
}

/// Every measurement of one metric, per target.
#[derive(Default)]
struct Samples(Vec<(String, Vec<f64>)>);

impl Samples {
    fn add(&mut self, metric: &str, v: f64) {
        let row = match self.0.iter().position(|(m, _)| m == metric) {
            Some(i) => i,
            None => {
                self.0.push((metric.to_owned(), Vec::new()));
                self.0.len() - 1
            }
        };
        self.0[row].1.push(v);
    }
}

fn median(v: &mut [f64]) -> f64 {
    v.sort_by(f64::total_cmp);
    if v.is_empty() {
        return f64::NAN;
    }
    v[v.len() / 2]
}

fn main() -> Result<()> {
    let o = options()?;
    raise_fd_limit();
    let (switchyard_bin, policy) = build_release(o.kernel_relay)?;
    let dir = tempfile::Builder::new()
        .prefix("switchyard-bench-")
        .tempdir()?;
    eprintln!("bench: starting MariaDB");
    let db = MariaDb::standalone(
        &dir.path().join("db"),
        free_port(),
        &[
            "--skip-log-bin",
            // The many-idle-sessions row holds 5,000 at once.
            "--max-connections=6000",
            "--innodb-buffer-pool-size=256M",
            "--thread-cache-size=128",
            "--max-allowed-packet=128M",
        ],
    )?;
    db.sql(&format!(
        "CREATE DATABASE sbtest; CREATE USER '{u}'@'%' IDENTIFIED BY '{p}';
         GRANT ALL ON sbtest.* TO '{u}'@'%';
         USE sbtest; CREATE TABLE blobs (id INT PRIMARY KEY, b LONGBLOB);
         INSERT INTO blobs SELECT seq, REPEAT('x', 1048576) FROM seq_1_to_64;",
        u = USER.0,
        p = USER.1
    ));
    sysbench(db.port, 1, 1, "prepare")?;
    let (haproxy, haproxy_port) = haproxy(db.addr())?;
    let sy_port = free_port();
    let switchyard = Proxy::start_with(
        &switchyard_bin,
        &switchyard_config(sy_port, db.addr(), &policy, (&[], &[])),
        sy_port,
        "warn",
    )?;
    // The same with the two settings that trade per-login work for reuse:
    // kept backend sessions and reused policy instances.
    let tuned_port = free_port();
    let tuned = Proxy::start_with(
        &switchyard_bin,
        &switchyard_config(
            tuned_port,
            db.addr(),
            &policy,
            (
                &TUNED_POOL.map(String::from),
                &TUNED_POLICY.map(String::from),
            ),
        ),
        tuned_port,
        "warn",
    )?;
    let split_port = free_port();
    let split = Proxy::start_with(
        &switchyard_bin,
        &split_config(split_port, db.addr(), &policy),
        split_port,
        "warn",
    )?;
    let multiplexed_port = free_port();
    let multiplexed = Proxy::start_with(
        &switchyard_bin,
        &multiplexed_config(multiplexed_port, db.addr(), &policy),
        multiplexed_port,
        "warn",
    )?;
    let alt_port = free_port();
    let alt = if o.alt_policy.is_empty() && o.alt_pool.is_empty() && o.alt_env.is_empty() {
        None
    } else {
        let env: Vec<(&str, &str)> = o
            .alt_env
            .iter()
            .map(|(k, v)| (k.as_str(), v.as_str()))
            .collect();
        Some(Proxy::start_with_env(
            &switchyard_bin,
            &switchyard_config(alt_port, db.addr(), &policy, (&o.alt_pool, &o.alt_policy)),
            alt_port,
            "warn",
            &env,
        )?)
    };
    let mut targets = vec![
        Target {
            name: "direct",
            port: db.port,
            pid: db.pid().context("mariadbd pid")?,
        },
        Target {
            name: "haproxy",
            port: haproxy_port,
            pid: haproxy.pid(),
        },
        Target {
            name: "switchyard",
            port: sy_port,
            pid: switchyard.pid().context("pid")?,
        },
        Target {
            name: "switchyard-tuned",
            port: tuned_port,
            pid: tuned.pid().context("pid")?,
        },
        Target {
            name: "switchyard-split",
            port: split_port,
            pid: split.pid().context("pid")?,
        },
        Target {
            name: "switchyard-multiplexed",
            port: multiplexed_port,
            pid: multiplexed.pid().context("pid")?,
        },
    ];
    if let Some(alt) = &alt {
        targets.push(Target {
            name: "switchyard-alt",
            port: alt_port,
            pid: alt.pid().context("pid")?,
        });
    }
    let _fleet = if o.fleet {
        let redis = Redis::start()?;
        let port = free_port();
        let proxy = Proxy::start_with(
            &switchyard_bin,
            &fleet_config(port, db.addr(), &policy, &redis),
            port,
            "warn",
        )?;
        targets.push(Target {
            name: "switchyard-fleet",
            port,
            pid: proxy.pid().context("pid")?,
        });
        Some((redis, proxy))
    } else {
        None
    };
    let kernel_relay = if o.kernel_relay {
        Some(KernelRelay::start(db.addr())?)
    } else {
        None
    };
    if let Some(k) = &kernel_relay {
        targets.push(Target {
            name: "kernel-relay",
            port: k.port,
            pid: k.child.id(),
        });
    }
    let mut samples: Vec<Samples> = (0..targets.len()).map(|_| Samples::default()).collect();
    for t in &targets {
        sysbench(t.port, 4, 2, "run")?; // warm-up
    }
    let churn_seconds = o.seconds.div_ceil(2).max(2);
    for round in 0..o.rounds {
        let mut order: Vec<usize> = (0..targets.len())
            .filter(|&i| o.measures(targets[i].name))
            .collect();
        if round % 2 == 1 {
            order.reverse();
        }
        eprintln!(
            "bench: round {} of {} ({:?})",
            round + 1,
            o.rounds,
            order.iter().map(|&i| targets[i].name).collect::<Vec<_>>()
        );
        for &i in order.iter().filter(|_| o.runs("point1")) {
            let t = &targets[i];
            let (s, cpu) = with_cpu(t.pid, || sysbench(t.port, 1, o.seconds, "run"))?;
            let m = &mut samples[i];
            m.add("point_select 1 thread, q/s", s.qps);
            m.add("point_select 1 thread, avg latency ms", s.avg_ms);
            m.add("point_select 1 thread, p95 latency ms", s.p95_ms);
            m.add(
                "CPU per query of the target process, µs",
                cpu / s.queries * 1e6,
            );
        }
        for &i in order.iter().filter(|_| o.runs("point32")) {
            let s = sysbench(targets[i].port, 32, o.seconds, "run")?;
            samples[i].add("point_select 32 threads, q/s", s.qps);
        }
        for &i in order.iter().filter(|_| o.runs("point2000")) {
            let s = sysbench(targets[i].port, MANY_CLIENTS, o.seconds, "run")?;
            let m = &mut samples[i];
            m.add(
                &format!("point_select {MANY_CLIENTS} clients at once, q/s"),
                s.qps,
            );
            m.add(
                &format!("point_select {MANY_CLIENTS} clients, p95 latency ms"),
                s.p95_ms,
            );
        }
        for &i in order.iter().filter(|_| o.runs("streaming")) {
            let s = streaming(targets[i].port, targets[i].pid, targets[0].pid)?;
            let m = &mut samples[i];
            m.add("streaming 64 × 1 MiB rows, MB/s", s.mb_per_sec);
            m.add(
                "streaming: CPU per MB of the target process, µs",
                s.target_us_per_mb,
            );
            m.add("streaming: CPU per MB of mariadbd, µs", s.db_us_per_mb);
            m.add(
                "streaming: CPU per MB of the client, µs",
                s.client_us_per_mb,
            );
            m.add("streaming: CPUs busy (whole machine)", s.cores_busy);
        }
        for &i in order.iter().filter(|_| o.runs("churn")) {
            let t = &targets[i];
            let (c, cpu) = with_cpu(t.pid, || churn(t.port, churn_seconds))?;
            let m = &mut samples[i];
            m.add("churn (connect, login, SELECT 1, quit), conn/s", c.per_sec);
            m.add("churn connect+login p50 ms", c.p50_ms);
            m.add("churn connect+login p99 ms", c.p99_ms);
            m.add(
                "CPU per login of the target process, µs",
                cpu / c.logins * 1e6,
            );
            m.add("churn load generator, cores used", c.generator_cores);
        }
    }
    let backend = db.addr();
    let mut memory = Vec::new();
    let mut multiplexed_memory = Vec::new();
    if o.runs("memory") {
        for n in [IDLE_SESSIONS, MANY_IDLE_SESSIONS] {
            eprintln!("bench: idle memory, {n} sessions");
            memory.push((
                n,
                measure_idle_memory(backend, &switchyard_bin, &policy, n)?,
            ));
            eprintln!("bench: idle memory, {n} multiplexed sessions");
            multiplexed_memory.push((
                n,
                idle_memory(
                    &|| {
                        let port = free_port();
                        let p = Proxy::start_with(
                            &switchyard_bin,
                            &multiplexed_config(port, backend, &policy),
                            port,
                            "warn",
                        )?;
                        let pid = p.pid().context("pid")?;
                        Ok((port, pid, Box::new(p) as Box<dyn std::any::Any>))
                    },
                    n,
                )?,
            ));
        }
    }
    let mut table = report(&targets, &mut samples, &memory, &o);
    for (n, m) in &multiplexed_memory {
        let _ = writeln!(
            table,
            "\nRSS per idle client session of `switchyard-multiplexed` after a statement, holding no backend session ({n} sessions on at most {MULTIPLEXED_BACKEND_SESSIONS} backend sessions, fresh process, process RSS {} MiB): {} KiB.",
            fmt(m.total_mib),
            fmt(m.per_session_kib),
        );
    }
    println!("{table}");
    save(&table, o.readme)?;
    drop(multiplexed);
    Ok(())
}

fn measure_idle_memory(
    backend: SocketAddr,
    switchyard_bin: &Path,
    policy: &Path,
    n: usize,
) -> Result<(IdleMemory, IdleMemory)> {
    let ha_mem = idle_memory(
        &|| {
            let (h, port) = haproxy(backend)?;
            Ok((port, h.pid(), Box::new(h) as Box<dyn std::any::Any>))
        },
        n,
    )?;
    let sy_mem = idle_memory(
        &|| {
            let port = free_port();
            let p = Proxy::start_with(
                switchyard_bin,
                &switchyard_config(port, backend, policy, (&[], &[])),
                port,
                "warn",
            )?;
            let pid = p.pid().context("pid")?;
            Ok((port, pid, Box::new(p) as Box<dyn std::any::Any>))
        },
        n,
    )?;
    Ok((ha_mem, sy_mem))
}

fn report(
    targets: &[Target],
    samples: &mut [Samples],
    memory: &[(usize, (IdleMemory, IdleMemory))],
    o: &Options,
) -> String {
    let mut t = String::new();
    let _ = writeln!(
        t,
        "Measured {} on this machine ({} CPUs), {} rounds, {} s per sysbench run; \
         median (min–max), ratio = median / direct median.\n",
        chrono_like_now(),
        std::thread::available_parallelism().map_or(0, |n| n.get()),
        o.rounds,
        o.seconds
    );
    let names: Vec<&str> = targets.iter().map(|t| t.name).collect();
    let ratios: Vec<String> = names[1..].iter().map(|n| format!("{n} / direct")).collect();
    let _ = writeln!(
        t,
        "| workload | {} | {} |",
        names.join(" | "),
        ratios.join(" | ")
    );
    let _ = writeln!(t, "|---|{}", "---|".repeat(2 * names.len() - 1));
    let mut metrics: Vec<String> = Vec::new();
    for (m, _) in samples.iter().flat_map(|s| s.0.iter()) {
        if !metrics.contains(m) {
            metrics.push(m.clone());
        }
    }
    for metric in metrics {
        let mut cells = Vec::new();
        let mut medians = Vec::new();
        for s in samples.iter_mut() {
            let v = s.0.iter_mut().find(|(m, _)| *m == metric).map(|(_, v)| v);
            match v {
                Some(v) => {
                    let med = median(v);
                    let (lo, hi) = (
                        v.first().copied().unwrap_or(f64::NAN),
                        v.last().copied().unwrap_or(f64::NAN),
                    );
                    cells.push(format!("{} ({}–{})", fmt(med), fmt(lo), fmt(hi)));
                    medians.push(med);
                }
                None => {
                    cells.push("–".into());
                    medians.push(f64::NAN);
                }
            }
        }
        let ratios: Vec<String> = medians[1..]
            .iter()
            .map(|m| format!("{:.2}", m / medians[0]))
            .collect();
        let _ = writeln!(
            t,
            "| {metric} | {} | {} |",
            cells.join(" | "),
            ratios.join(" | ")
        );
    }
    for (n, (ha, sy)) in memory {
        let _ = writeln!(
            t,
            "| RSS per idle session after a statement ({n} sessions, fresh process; process RSS HAProxy {} MiB, Switchyard {} MiB), KiB | – | {} | {} |{}",
            fmt(ha.total_mib),
            fmt(sy.total_mib),
            fmt(ha.per_session_kib),
            fmt(sy.per_session_kib),
            " – |".repeat(targets.len() - 3) + &" |".repeat(targets.len() - 1)
        );
    }
    t
}

fn fmt(v: f64) -> String {
    if !v.is_finite() {
        "–".into()
    } else if v.abs() >= 100.0 {
        format!("{v:.0}")
    } else if v.abs() >= 10.0 {
        format!("{v:.1}")
    } else {
        format!("{v:.2}")
    }
}

fn chrono_like_now() -> String {
    let out = Command::new("date")
        .args(["-u", "+%Y-%m-%d %H:%M UTC"])
        .output();
    out.map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned())
        .unwrap_or_default()
}

/// Writes the table to `bench/results/` and between the README's bench
/// markers.
fn save(table: &str, readme: bool) -> Result<()> {
    let root = workspace_root();
    let results = root.join("bench/results");
    std::fs::create_dir_all(&results)?;
    let stamp = Command::new("date")
        .args(["-u", "+%Y%m%d-%H%M%S"])
        .output()?;
    let name = format!("{}.md", String::from_utf8_lossy(&stamp.stdout).trim());
    std::fs::write(results.join(&name), table)?;
    eprintln!("bench: wrote bench/results/{name}");
    if readme {
        let path = root.join("README.md");
        let text = std::fs::read_to_string(&path)?;
        let (start, end) = ("<!-- bench:start -->", "<!-- bench:end -->");
        if let (Some(a), Some(b)) = (text.find(start), text.find(end)) {
            let updated = format!("{}{start}\n{table}{}", &text[..a], &text[b..]);
            std::fs::write(&path, updated)?;
            eprintln!("bench: updated the README");
        }
    }
    Ok(())
}
