//! End-to-end tests of backend faults: a backend killed (SIGKILL) in the
//! middle of a result set or of a transaction, and backends that accept TCP
//! but never greet or send garbage. For each: the affected client gets an
//! error (or a closed connection) within the configured timeouts, other
//! sessions are undisturbed, no writer login lands on a `read_only` server,
//! the proxy does not panic and its descriptor count returns to its level
//! before the fault.
//!
//! One real topology (a MariaDB primary and two GTID replicas) for the
//! binary; each test starts its own Switchyard. Tests run one at a time:
//! they kill and restart servers.

use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use libtest_mimic::{Arguments, Failed};
use mysql_async::Conn;
use mysql_async::prelude::*;

use switchyard::auth::Sha1Password;
use switchyard_e2e::{MASTER_USER, MariaDb, Proxy, SLAVE_USER, Topology};

mod common;
use common::*;

type TestFn = fn(&Env) -> TestResult;

const MONITOR: (&str, &str) = ("monitor", "monitorpass");
const PRIMARY_ID: u32 = 1;
const CONNECT_TIMEOUT_MS: u64 = 700;
/// `query_timeout_ms` where a test sets it.
const QUERY_TIMEOUT_MS: u64 = 2500;

struct Env {
    topology: Mutex<Topology>,
}

impl Env {
    fn topology(&self) -> MutexGuard<'_, Topology> {
        self.topology.lock().unwrap_or_else(|e| e.into_inner())
    }
}

fn main() {
    let args = Arguments::from_args();
    let topology = Topology::start(2, None).expect("start the MariaDB topology");
    topology.primary.sql(&format!(
        "CREATE USER '{0}'@'%' IDENTIFIED BY '{1}';
         GRANT SLAVE MONITOR, CONNECTION ADMIN ON *.* TO '{0}'@'%';
         CREATE TABLE app.faults (id INT PRIMARY KEY, note VARCHAR(20)) ENGINE=InnoDB;",
        MONITOR.0, MONITOR.1
    ));
    topology
        .sync_replicas()
        .expect("replicas have the monitor account");
    let env = Arc::new(Env {
        topology: Mutex::new(topology),
    });
    let tests: Vec<(&str, TestFn)> = vec![
        (
            "backend_killed_in_the_middle_of_a_result_set",
            killed_mid_result_set,
        ),
        (
            "backend_killed_in_the_middle_of_a_transaction",
            killed_mid_transaction,
        ),
        (
            "backend_that_never_greets_or_sends_garbage",
            silent_and_garbage_backends,
        ),
        (
            "primary_restarted_while_writers_are_connected",
            primary_restarted_under_writers,
        ),
        (
            "backend_stopped_by_sigstop_during_a_query_and_logins",
            stopped_backend_during_query_and_login,
        ),
        (
            "a_statement_past_query_timeout_is_killed_on_its_backend",
            runaway_statement_is_killed,
        ),
    ];
    run_one_at_a_time(args, env, tests);
}

/// The proxy's configuration: `pools` (the `[pools.*]` tables) and the
/// health-check interval.
fn config(pools: &str, health_interval_ms: u64) -> String {
    format!(
        r#"listen = "127.0.0.1:{{port}}"
login_timeout_ms = 5000
connect_timeout_ms = {CONNECT_TIMEOUT_MS}
{master}{slave}
{pools}
[health]
interval_ms = {health_interval_ms}
timeout_ms = 500
fall = 2
rise = 2
[monitor]
user = "{mon}"
password_sha1 = "{mon_sha1}"
[policy]
timeout_ms = 3000
module = "{{policy}}"
[policy.settings]
"user.mysqlmaster" = "master"
"user.mysqlslave" = "replicas"
"#,
        master = user_table(MASTER_USER.0, MASTER_USER.1),
        slave = user_table(SLAVE_USER.0, SLAVE_USER.1),
        mon = MONITOR.0,
        mon_sha1 = Sha1Password::of_password(MONITOR.1.as_bytes()).to_hex(),
    )
}

/// The usual pools: `master` (writer role over every server) and
/// `replicas`.
fn standard_pools(t: &Topology) -> String {
    format!(
        "[pools.master]\nrole = \"writer\"\nbackends = [\"{p}\", \"{r1}\", \"{r2}\"]\n\
         [pools.replicas]\nbackends = [\"{r1}\", \"{r2}\"]\nmax_lag = 5\n",
        p = t.primary.addr(),
        r1 = t.replicas[0].addr(),
        r2 = t.replicas[1].addr(),
    )
}

/// The proxy's open file descriptors.
fn fd_count(proxy: &Proxy) -> Result<usize, Failed> {
    let pid = proxy.pid().ok_or("the proxy is not running")?;
    Ok(std::fs::read_dir(format!("/proc/{pid}/fd"))
        .map_err(fail)?
        .count())
}

/// The proxy's resident set size in KiB.
fn rss_kib(proxy: &Proxy) -> Result<u64, Failed> {
    let pid = proxy.pid().ok_or("the proxy is not running")?;
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).map_err(fail)?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .ok_or_else(|| "no VmRSS".into())
}

/// A proxy on the standard pools, its port, a runtime, and a reader
/// session on a replica that a fault of the primary must not disturb.
struct Watched {
    proxy: Proxy,
    port: u16,
    rt: tokio::runtime::Runtime,
    other: Conn,
    other_id: u32,
}

fn watched(env: &Env) -> Result<Watched, Failed> {
    let proxy = Proxy::start(&config(&standard_pools(&env.topology()), 200)).map_err(fail)?;
    let port = proxy.port;
    let rt = runtime();
    let mut other = rt
        .block_on(Conn::new(opts(port, SLAVE_USER, None)))
        .map_err(fail)?;
    let other_id = rt.block_on(server_id(&mut other))?;
    Ok(Watched {
        proxy,
        port,
        rt,
        other,
        other_id,
    })
}

/// The proxy's open descriptors and what they point to.
fn fds(proxy: &Proxy) -> Vec<String> {
    let pid = proxy.pid().unwrap_or(0);
    let mut v: Vec<String> = std::fs::read_dir(format!("/proc/{pid}/fd"))
        .map(|d| {
            d.flatten()
                .map(|e| {
                    let target = std::fs::read_link(e.path()).unwrap_or_default();
                    format!("{}->{}", e.file_name().to_string_lossy(), target.display())
                })
                .collect()
        })
        .unwrap_or_default();
    v.sort();
    v
}

/// Waits until the proxy's descriptor count is back at `before` (at most);
/// on timeout the error lists the descriptors before and now.
fn fds_back(proxy: &Proxy, before: &[String]) -> TestResult {
    wait_until(
        "the proxy's descriptors are back at their level",
        Duration::from_secs(10),
        || Ok(fd_count(proxy)? <= before.len()),
    )
    .map_err(|e| {
        fail(format!(
            "{e:?}: before {before:?}\nnow {:?}\n{}",
            fds(proxy),
            proxy.log()
        ))
    })
}

/// Polls `cond` every 100 ms until it holds or `timeout` passes.
fn wait_until(
    what: &str,
    timeout: Duration,
    mut cond: impl FnMut() -> Result<bool, Failed>,
) -> TestResult {
    let deadline = Instant::now() + timeout;
    loop {
        if cond()? {
            return Ok(());
        }
        if Instant::now() > deadline {
            return Err(format!("timed out waiting until {what}").into());
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn no_panic(proxy: &mut Proxy) -> TestResult {
    let log = proxy.log();
    check(
        !log.contains("panicked"),
        format!("the proxy panicked:\n{log}"),
    )?;
    check(proxy.is_running(), format!("the proxy exited:\n{log}"))
}

/// Sends SIGKILL to `server` (no shutdown of any kind).
fn kill9(server: &MariaDb) -> TestResult {
    let pid = server.pid().ok_or("the server is not running")?;
    // SAFETY: kill has no memory-safety preconditions.
    let r = unsafe { libc::kill(pid as i32, libc::SIGKILL) };
    check(r == 0, "kill -9 the server")
}

/// Restarts the primary after a test killed it (also when the test failed),
/// and waits until the replicas replicate from it again.
struct RestorePrimary<'a>(&'a Env);

impl Drop for RestorePrimary<'_> {
    fn drop(&mut self) {
        let mut t = self.0.topology();
        if let Err(e) = t.primary.restart() {
            eprintln!("restarting the primary: {e:#}");
            return;
        }
        for r in &t.replicas {
            r.sql("STOP SLAVE; START SLAVE;");
        }
        if let Err(e) = t.sync_replicas() {
            eprintln!("replicas after the primary's restart: {e:#}");
        }
    }
}

/// A client (on the writer pool, so the primary) streams a large result set;
/// the primary is killed with SIGKILL after the first rows. The client's
/// stream ends in an error well within the timeouts; a client on a replica
/// goes on as if nothing happened; a writer login during the outage does not
/// land on a `read_only` replica; the proxy's descriptors return to their
/// level once the client is gone.
fn killed_mid_result_set(env: &Env) -> TestResult {
    let Watched {
        mut proxy,
        port,
        rt,
        mut other,
        other_id,
    } = watched(env)?;
    check(other_id != PRIMARY_ID, "the other client is on a replica")?;
    // Settle: the health checker's connections are open.
    std::thread::sleep(Duration::from_millis(600));
    let fds_before = fds(&proxy);
    let rss_before = rss_kib(&proxy)?;

    let _restore = RestorePrimary(env);
    let outcome: Result<(usize, Duration, String), Failed> = rt.block_on(async {
        let mut conn = Conn::new(opts(port, MASTER_USER, None))
            .await
            .map_err(fail)?;
        check(
            server_id(&mut conn).await? == PRIMARY_ID,
            "the writer session is on the primary",
        )?;
        let mut result = conn
            .query_iter("SELECT seq, REPEAT('x', 200) FROM app.seq_1_to_50000000")
            .await
            .map_err(fail)?;
        let mut rows = 0usize;
        let mut killed_at = None;
        let error = loop {
            if rows == 2000 && killed_at.is_none() {
                kill9(&env.topology().primary)?;
                killed_at = Some(Instant::now());
            }
            let next = tokio::time::timeout(Duration::from_secs(10), result.next())
                .await
                .map_err(|_| fail("no row and no error 10 s after the kill"))?;
            match next {
                Ok(Some(_)) => rows += 1,
                Ok(None) => return Err(fail("the result set ended normally")),
                Err(e) => break e.to_string(),
            }
        };
        let killed_at = killed_at.ok_or("the stream failed before the kill")?;
        drop(result);
        drop(conn);
        Ok((rows, killed_at.elapsed(), error))
    });
    let (rows, took, error) = outcome?;
    eprintln!("stream ended after {rows} rows, {took:?} after the kill: {error}");
    check(
        took < Duration::from_secs(5),
        format!("the stream's error came {took:?} after the kill"),
    )?;
    check(
        rows < 50_000_000,
        "rows stopped coming after the kill (the stream did not finish)",
    )?;

    // The other session is undisturbed.
    check(
        rt.block_on(server_id(&mut other))? == other_id,
        "the replica session still answers, on the same server",
    )?;
    // A writer login while the primary is down never reaches a replica.
    match rt.block_on(Conn::new(opts(port, MASTER_USER, None))) {
        Ok(mut c) => {
            let id = rt.block_on(server_id(&mut c))?;
            rt.block_on(c.disconnect()).map_err(fail)?;
            check(
                id == PRIMARY_ID,
                format!("a writer login landed on read_only server {id}"),
            )?;
        }
        Err(e) => eprintln!("writer login while the primary is down: {e}"),
    }
    fds_back(&proxy, &fds_before)?;
    check(
        rt.block_on(server_id(&mut other))? == other_id,
        "the replica session still answers",
    )?;
    let rss_after = rss_kib(&proxy)?;
    eprintln!("proxy RSS: {rss_before} KiB before, {rss_after} KiB after");
    // Relaying thousands of rows buffers at most a few packets: the RSS
    // stays within a few MiB of its level before (allocator slack).
    check(
        rss_after < rss_before + 8 * 1024,
        format!("the proxy's RSS grew from {rss_before} to {rss_after} KiB"),
    )?;
    rt.block_on(other.disconnect()).map_err(fail)?;
    no_panic(&mut proxy)
}

/// A writer session inside a transaction (one row inserted, not committed)
/// when the primary is killed: its next statement fails within the
/// timeouts; another writer session whose statement is running gets ERR
/// 9104 (08S01) in place of its answer at once; the row never appears (not on the primary after recovery, not
/// on a replica), a reader session is undisturbed, and once the primary is
/// back a new writer login works and lands on it.
fn killed_mid_transaction(env: &Env) -> TestResult {
    let Watched {
        mut proxy,
        port,
        rt,
        mut other,
        other_id,
    } = watched(env)?;
    std::thread::sleep(Duration::from_millis(600));
    let fds_before = fds(&proxy);
    {
        let restore = RestorePrimary(env);
        let (took, error) = rt.block_on(async {
            let mut conn = Conn::new(opts(port, MASTER_USER, None))
                .await
                .map_err(fail)?;
            check(
                server_id(&mut conn).await? == PRIMARY_ID,
                "the writer session is on the primary",
            )?;
            conn.query_drop("BEGIN").await.map_err(fail)?;
            conn.query_drop("INSERT INTO app.faults VALUES (1, 'uncommitted')")
                .await
                .map_err(fail)?;
            // A second writer whose statement runs when the server dies.
            let mut sleeper = Conn::new(opts(port, MASTER_USER, None))
                .await
                .map_err(fail)?;
            let mut running = Box::pin(sleeper.query_drop("SELECT SLEEP(60)"));
            check(
                tokio::time::timeout(Duration::from_millis(500), &mut running)
                    .await
                    .is_err(),
                "SLEEP(60) is running",
            )?;
            kill9(&env.topology().primary)?;
            let killed = Instant::now();
            let lost = tokio::time::timeout(Duration::from_secs(5), &mut running)
                .await
                .map_err(|_| fail("the running statement got no answer 5 s after the kill"))?;
            let (code, state, message) = match lost {
                Ok(()) => return Err(fail("SLEEP(60) succeeded after the kill")),
                Err(e) => server_error(e)?,
            };
            eprintln!("running statement: ERR {code} ({state}) {message}");
            check(
                (code, state.as_str()) == (9104, "08S01"),
                format!("the running statement's error: {code} ({state}) {message}"),
            )?;
            drop(running);
            drop(sleeper);
            let next = tokio::time::timeout(
                Duration::from_secs(10),
                conn.query_drop("INSERT INTO app.faults VALUES (2, 'after the kill')"),
            )
            .await
            .map_err(|_| fail("no answer 10 s after the kill"))?;
            let error = match next {
                Ok(()) => return Err(fail("a statement succeeded after the kill")),
                Err(e) => e.to_string(),
            };
            Ok::<_, Failed>((killed.elapsed(), error))
        })?;
        eprintln!("next statement failed {took:?} after the kill: {error}");
        check(
            took < Duration::from_secs(5),
            format!("the error came {took:?} after the kill"),
        )?;
        check(
            rt.block_on(server_id(&mut other))? == other_id,
            "the reader session still answers, on the same server",
        )?;
        drop(restore);
    }
    // Back: the uncommitted row is nowhere, a writer login lands on the
    // primary.
    {
        let t = env.topology();
        check(
            t.primary.sql("SELECT COUNT(*) FROM app.faults").trim() == "0",
            "the uncommitted row is not on the restarted primary",
        )?;
        for r in &t.replicas {
            check(
                r.sql("SELECT COUNT(*) FROM app.faults").trim() == "0",
                format!("no row reached replica {}", r.server_id),
            )?;
        }
    }
    wait_until(
        "a writer login works again",
        Duration::from_secs(15),
        || {
            Ok(rt.block_on(async {
                match Conn::new(opts(port, MASTER_USER, None)).await {
                    Ok(mut c) => {
                        let on_primary = server_id(&mut c).await.ok() == Some(PRIMARY_ID);
                        // Dropped without this, the session would stay open
                        // until the runtime runs again.
                        let _ = c.disconnect().await;
                        on_primary
                    }
                    Err(_) => false,
                }
            }))
        },
    )?;
    fds_back(&proxy, &fds_before)?;
    rt.block_on(other.disconnect()).map_err(fail)?;
    no_panic(&mut proxy)
}

/// A fake backend on a loopback port: accepts TCP and then either never
/// writes a byte or writes `reply` (garbage), holding every connection open
/// until dropped.
struct FakeBackend {
    addr: SocketAddr,
    stop: Arc<AtomicBool>,
    accepted: Arc<Mutex<usize>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl FakeBackend {
    fn start(reply: &'static [u8]) -> Result<Self, Failed> {
        let listener = TcpListener::bind("127.0.0.1:0").map_err(fail)?;
        listener.set_nonblocking(true).map_err(fail)?;
        let addr = listener.local_addr().map_err(fail)?;
        let stop = Arc::new(AtomicBool::new(false));
        let accepted = Arc::new(Mutex::new(0));
        let thread = {
            let (stop, accepted) = (Arc::clone(&stop), Arc::clone(&accepted));
            std::thread::spawn(move || {
                let mut held: Vec<TcpStream> = Vec::new();
                while !stop.load(Ordering::Relaxed) {
                    match listener.accept() {
                        Ok((mut s, _)) => {
                            *accepted.lock().unwrap() += 1;
                            if !reply.is_empty() {
                                use std::io::Write;
                                let _ = s.write_all(reply);
                            }
                            held.push(s);
                        }
                        Err(_) => std::thread::sleep(Duration::from_millis(10)),
                    }
                }
            })
        };
        Ok(Self {
            addr,
            stop,
            accepted,
            thread: Some(thread),
        })
    }

    fn accepted(&self) -> usize {
        *self.accepted.lock().unwrap()
    }
}

impl Drop for FakeBackend {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// The `replicas` pool lists a backend that accepts TCP and never greets,
/// one that answers with garbage, then a real replica. With health checks
/// too rare to have noticed, every login either fails over to the replica
/// within the connect timeouts or gets ERR 9102; the proxy stays healthy
/// (a writer login works, no panic) and its descriptors return to their
/// level.
fn silent_and_garbage_backends(env: &Env) -> TestResult {
    let silent = FakeBackend::start(b"")?;
    // A packet whose protocol version byte is no 10 (no greeting, no ERR),
    // then a header announcing 0xFFFFFF bytes.
    let garbage = FakeBackend::start(b"\x0a\x00\x00\x00GARBAGE!!\x00\xff\xff\xff\x01junk")?;
    // An ERR in place of the greeting (1130, host not allowed): the
    // server's state, not the user's fault, so logins fail over too.
    let refusing = FakeBackend::start(b"\x13\x00\x00\x00\xff\x6a\x04Host not allowed")?;
    let (r1, r1_id) = {
        let t = env.topology();
        (t.replicas[0].addr(), t.replicas[0].server_id)
    };

    let pools = format!(
        "[pools.master]\nrole = \"writer\"\nbackends = [\"{p}\"]\n\
         [pools.replicas]\nbackends = [\"{s}\", \"{g}\", \"{e}\", \"{r1}\"]\n",
        p = env.topology().primary.addr(),
        s = silent.addr,
        g = garbage.addr,
        e = refusing.addr,
    );
    let mut proxy = Proxy::start(&config(&pools, 600_000)).map_err(fail)?;
    let port = proxy.port;
    let rt = runtime();
    std::thread::sleep(Duration::from_millis(300));
    let fds_before = fds(&proxy);
    let mut fell_over = 0;
    let mut refused = 0;
    for i in 0..6 {
        let started = Instant::now();
        let outcome = rt.block_on(async {
            tokio::time::timeout(Duration::from_secs(10), async {
                let mut c = Conn::new(opts(port, SLAVE_USER, None)).await?;
                let id: Option<u32> = c.query_first("SELECT @@server_id").await?;
                c.disconnect().await?;
                Ok::<_, mysql_async::Error>(id)
            })
            .await
        });
        let took = started.elapsed();
        match outcome {
            Err(_) => return Err(format!("login {i}: no answer in 10 s").into()),
            Ok(Ok(id)) => {
                check(
                    id == Some(r1_id),
                    format!("login {i} landed on {id:?}, not the replica"),
                )?;
                fell_over += 1;
            }
            Ok(Err(e)) => {
                let (code, _, message) = server_error(e)?;
                check(
                    code == 9102,
                    format!("login {i}: ERR {code} {message}, expected 9102"),
                )?;
                refused += 1;
            }
        }
        // Three bad backends, each given connect_timeout_ms at most, plus
        // slack for a loaded machine.
        check(
            took < Duration::from_millis(3 * CONNECT_TIMEOUT_MS + 2000),
            format!("login {i} took {took:?}"),
        )?;
    }
    eprintln!(
        "fell over: {fell_over}, ERR 9102: {refused}; silent accepted {}, garbage accepted {}",
        silent.accepted(),
        garbage.accepted()
    );
    check(
        silent.accepted() > 0 && garbage.accepted() > 0 && refusing.accepted() > 0,
        "the proxy tried every fake backend",
    )?;
    // The proxy is healthy: a writer login works.
    rt.block_on(async {
        let mut c = Conn::new(opts(port, MASTER_USER, None))
            .await
            .map_err(fail)?;
        check(server_id(&mut c).await? == PRIMARY_ID, "writer on primary")?;
        c.disconnect().await.map_err(fail)
    })?;
    fds_back(&proxy, &fds_before)?;
    no_panic(&mut proxy)
}

/// Two writer sessions are connected (idle) when the primary is restarted
/// (a clean shutdown, then a start on the same data): each one's next
/// statement fails within a bound, a reader session is undisturbed, and
/// once the primary is back new writer logins land on it.
fn primary_restarted_under_writers(env: &Env) -> TestResult {
    let Watched {
        mut proxy,
        port,
        rt,
        mut other,
        other_id,
    } = watched(env)?;
    std::thread::sleep(Duration::from_millis(600));
    let fds_before = fds(&proxy);
    let mut writers = Vec::new();
    for _ in 0..2 {
        let mut c = rt
            .block_on(Conn::new(opts(port, MASTER_USER, None)))
            .map_err(fail)?;
        check(
            rt.block_on(server_id(&mut c))? == PRIMARY_ID,
            "the writer session is on the primary",
        )?;
        writers.push(c);
    }
    {
        let restore = RestorePrimary(env);
        env.topology().primary.stop();
        for (i, mut c) in writers.into_iter().enumerate() {
            let started = Instant::now();
            let next = rt.block_on(async move {
                let r = tokio::time::timeout(
                    Duration::from_secs(10),
                    c.query_drop("INSERT INTO app.faults VALUES (10, 'restart')"),
                )
                .await;
                drop(c);
                r
            });
            let took = started.elapsed();
            match next {
                Err(_) => return Err(format!("writer {i}: no answer in 10 s").into()),
                Ok(Ok(())) => {
                    return Err(
                        format!("writer {i}: a write succeeded with the primary down").into(),
                    );
                }
                Ok(Err(e)) => eprintln!("writer {i}: error after {took:?}: {e}"),
            }
            check(
                took < Duration::from_secs(5),
                format!("writer {i}'s error took {took:?}"),
            )?;
        }
        check(
            rt.block_on(server_id(&mut other))? == other_id,
            "the reader session still answers, on the same server",
        )?;
        drop(restore);
    }
    wait_until(
        "a writer login works again",
        Duration::from_secs(15),
        || {
            Ok(rt.block_on(async {
                match Conn::new(opts(port, MASTER_USER, None)).await {
                    Ok(mut c) => {
                        let on_primary = server_id(&mut c).await.ok() == Some(PRIMARY_ID);
                        let _ = c.disconnect().await;
                        on_primary
                    }
                    Err(_) => false,
                }
            }))
        },
    )?;
    {
        let t = env.topology();
        for r in &t.replicas {
            check(
                r.sql("SELECT COUNT(*) FROM app.faults").trim() == "0",
                format!("no write reached replica {}", r.server_id),
            )?;
        }
    }
    fds_back(&proxy, &fds_before)?;
    rt.block_on(other.disconnect()).map_err(fail)?;
    no_panic(&mut proxy)
}

/// Sends SIGCONT to the replica at `index` when dropped (also when the test
/// failed).
struct Resume<'a>(&'a Env, usize);

impl Drop for Resume<'_> {
    fn drop(&mut self) {
        self.0.topology().replicas[self.1].resume();
    }
}

/// A reader session's backend is stopped (SIGSTOP) while the session is
/// idle; the session then sends a query: it gets ERR 9105 (08S01) once
/// `query_timeout_ms` passes without a byte from the backend (not before,
/// and not later than the watchdog's granularity allows), and the session
/// is closed. Meanwhile, with health checks too rare to notice, new logins
/// fail over to the other replica within `connect_timeout_ms` (or get ERR
/// 9102), and a session on the other replica is undisturbed (it is never
/// quiet for `idle_timeout_ms`, and `query_timeout_ms` does not apply to
/// idle sessions). The proxy's descriptors return to their level.
fn stopped_backend_during_query_and_login(env: &Env) -> TestResult {
    let (r1, r2) = {
        let t = env.topology();
        (t.replicas[0].addr(), t.replicas[1].addr())
    };
    let pools = format!(
        "[pools.master]\nrole = \"writer\"\nbackends = [\"{p}\"]\n\
         [pools.replicas]\nbackends = [\"{r1}\", \"{r2}\"]\n",
        p = env.topology().primary.addr(),
    );
    let mut proxy = Proxy::start(&config(&pools, 600_000).replace(
        "login_timeout_ms = 5000",
        &format!(
            "login_timeout_ms = 5000\nidle_timeout_ms = 1000\nquery_timeout_ms = {QUERY_TIMEOUT_MS}"
        ),
    ))
    .map_err(fail)?;
    let port = proxy.port;
    let rt = runtime();
    rt.block_on(async {
        // One session on each replica.
        let mut sessions = Vec::new();
        for _ in 0..6 {
            let mut c = Conn::new(opts(port, SLAVE_USER, None))
                .await
                .map_err(fail)?;
            let id = server_id(&mut c).await?;
            if sessions.iter().all(|(i, _)| *i != id) {
                sessions.push((id, c));
            }
            if sessions.len() == 2 {
                break;
            }
        }
        check(sessions.len() == 2, "sessions on both replicas")?;
        let (other_id, mut other) = sessions.pop().expect("two sessions");
        let (stopped_id, mut victim) = sessions.pop().expect("two sessions");
        let index = env
            .topology()
            .replicas
            .iter()
            .position(|r| r.server_id == stopped_id)
            .ok_or("the victim's replica")?;
        let fds_before = fds(&proxy);
        env.topology().replicas[index].pause();
        let resume = Resume(env, index);
        let started = Instant::now();
        let mut pending = Box::pin(victim.query_first::<u32, _>("SELECT 41 + 1"));
        // Every 500 ms, the other session (which idle_timeout_ms would
        // close if idle) answering in between.
        let mut ended = None;
        for _ in 0..16 {
            if let Ok(r) = tokio::time::timeout(Duration::from_millis(500), &mut pending).await {
                ended = Some(r);
                break;
            }
            check(
                server_id(&mut other).await? == other_id,
                "the session on the other replica is undisturbed",
            )?;
        }
        let took = started.elapsed();
        let ended = ended.ok_or_else(|| fail(format!("no answer after {took:?}")))?;
        let (code, state, message) = match ended {
            Ok(r) => return Err(fail(format!("the stopped backend answered: {r:?}"))),
            Err(e) => server_error(e)?,
        };
        eprintln!("query to the stopped backend: ERR {code} ({state}) {message} after {took:?}");
        check(
            (code, state.as_str()) == (9105, "08S01"),
            format!("the error: {code} ({state}) {message}"),
        )?;
        let timeout = Duration::from_millis(QUERY_TIMEOUT_MS);
        check(
            took >= timeout && took < timeout * 5 / 4 + Duration::from_millis(1500),
            format!("ERR 9105 came after {took:?} (query_timeout_ms = {QUERY_TIMEOUT_MS})"),
        )?;
        drop(pending);
        check(
            victim.ping().await.is_err(),
            "the session is closed after ERR 9105",
        )?;
        // New logins avoid the stopped backend within connect_timeout_ms.
        for i in 0..4 {
            let t0 = Instant::now();
            let outcome = tokio::time::timeout(Duration::from_secs(10), async {
                let mut c = Conn::new(opts(port, SLAVE_USER, None)).await?;
                let id: Option<u32> = c.query_first("SELECT @@server_id").await?;
                c.disconnect().await?;
                Ok::<_, mysql_async::Error>(id)
            })
            .await
            .map_err(|_| fail(format!("login {i}: no answer in 10 s")))?;
            let took = t0.elapsed();
            match outcome {
                Ok(id) => check(
                    id == Some(other_id),
                    format!("login {i} landed on {id:?}, not the running replica"),
                )?,
                Err(e) => {
                    let (code, _, message) = server_error(e)?;
                    check(code == 9102, format!("login {i}: ERR {code} {message}"))?;
                }
            }
            check(
                took < Duration::from_millis(CONNECT_TIMEOUT_MS + 2000),
                format!("login {i} took {took:?}"),
            )?;
            check(
                server_id(&mut other).await? == other_id,
                "the session on the other replica is undisturbed",
            )?;
        }
        check(
            server_id(&mut other).await? == other_id,
            "the session on the other replica is undisturbed",
        )?;
        drop(resume);
        drop(victim);
        fds_back(&proxy, &fds_before)?;
        other.disconnect().await.map_err(fail)
    })?;
    let _ = (r1, r2);
    no_panic(&mut proxy)
}

/// Backend threads whose statement text holds `marker`.
fn threads_running(server: &MariaDb, marker: &str) -> Result<u32, Failed> {
    // The marker split in two, so that this query does not count itself.
    let (a, b) = marker.split_at(marker.len() / 2);
    server
        .try_sql(&format!(
            "SELECT COUNT(*) FROM information_schema.PROCESSLIST \
             WHERE INFO LIKE CONCAT('%', '{a}', '{b}', '%')"
        ))
        .map_err(fail)?
        .parse()
        .map_err(fail)
}

/// A statement that runs past `query_timeout_ms` (a long SLEEP) gets ERR
/// 9105 and its session is closed, and its backend thread is killed over
/// the monitor's login (which has CONNECTION ADMIN here): the statement no
/// longer runs on the server, for a bound session on the primary and for a
/// split session's read on a replica (checked running there first).
/// Without the KILL it would run on: a closed connection does not stop a
/// statement (SLEEP() checks for one every 5 s; a split session's closing
/// COM_QUIT, waiting in the socket, keeps even that check from seeing it).
fn runaway_statement_is_killed(env: &Env) -> TestResult {
    let t = env.topology();
    let pools = format!(
        "[pools.master]\nbackends = [\"{p}\"]\n\
         [pools.readers]\nbackends = [\"{r1}\"]\n\
         [pools.replicas]\nwriter = \"master\"\nreader = \"readers\"\n",
        p = t.primary.addr(),
        r1 = t.replicas[0].addr(),
    );
    let config = config(&pools, 1000).replace(
        "login_timeout_ms = 5000",
        "login_timeout_ms = 5000\nquery_timeout_ms = 1000",
    );
    let proxy = Proxy::start(&config).map_err(fail)?;
    let port = proxy.port;
    let rt = runtime();
    for (user, server, marker) in [
        (MASTER_USER, &t.primary, "runaway-bound"),
        (SLAVE_USER, &t.replicas[0], "runaway-split"),
    ] {
        rt.block_on(async {
            let mut c = Conn::new(opts(port, user, None)).await.map_err(fail)?;
            if user == SLAVE_USER {
                // SLEEP() is no function the rule knows harmless: inside a
                // read-only transaction it runs on the reader all the same.
                c.query_drop("START TRANSACTION READ ONLY")
                    .await
                    .map_err(fail)?;
            }
            let started = Instant::now();
            let running = tokio::spawn(async move {
                c.query_first::<u32, _>(format!("SELECT /* {marker} */ SLEEP(60)"))
                    .await
            });
            // It runs where it should (so that its absence later means
            // something).
            tokio::time::sleep(Duration::from_millis(400)).await;
            check(
                threads_running(server, marker)? == 1,
                format!("{marker}: the statement runs on the expected server"),
            )?;
            let r = running.await.map_err(fail)?;
            let (code, _, message) = match r {
                Ok(v) => return Err(fail(format!("{marker}: answered {v:?}"))),
                Err(e) => server_error(e)?,
            };
            check(
                code == 9105 && started.elapsed() < Duration::from_secs(10),
                format!(
                    "{marker}: ERR {code} {message} after {:?}",
                    started.elapsed()
                ),
            )
        })?;
        // Within 2 s of the ERR: SLEEP() itself looks for a closed
        // connection only every 5 s, and another statement never does.
        let deadline = Instant::now() + Duration::from_secs(2);
        while threads_running(server, marker)? > 0 && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(100));
        }
        check(
            threads_running(server, marker)? == 0,
            format!("{marker}: the statement still runs on its backend"),
        )?;
    }
    proxy
        .wait_for_log(
            "killed the backend thread whose statement outran query_timeout_ms",
            Duration::from_secs(1),
        )
        .map_err(fail)
}
