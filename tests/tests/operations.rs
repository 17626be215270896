//! End-to-end tests of what operators rely on: health checks, replication
//! lag, the writer role following `read_only`, balancing, reloads, the
//! drain on shutdown, the admin endpoint and its metrics, limits, the
//! failed-login throttle, systemd notifications and JSON logs.
//!
//! One real topology (a MariaDB primary and two GTID replicas) for the
//! binary; each test starts its own Switchyard with the settings it needs.
//! Tests run one at a time: several stop replicas or change `read_only`.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use libtest_mimic::{Arguments, Failed};
use mysql_async::Conn;
use mysql_async::prelude::*;

use switchyard::auth::{PasswordHash, Sha1Password};
use switchyard::pool::gtid::{Gtid, GtidPos};
use switchyard::protocol::ErrPacket;
use switchyard_e2e::raw::{LoginOutcome, RawClient};
use switchyard_e2e::{MASTER_USER, Proxy, SLAVE_USER, Topology, free_port, http};

mod common;
use common::*;

type TestFn = fn(&Env) -> TestResult;

const MONITOR: (&str, &str) = ("monitor", "monitorpass");
const TOKEN: &str = "test-admin-token";
const PRIMARY_ID: u32 = 1;
const REPLICA_IDS: [u32; 2] = [2, 3];

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
         GRANT SLAVE MONITOR ON *.* TO '{0}'@'%';",
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
            "stopped_replica_leaves_the_pool_and_returns",
            stopped_replica_leaves_and_returns,
        ),
        (
            "failed_login_marks_a_backend_until_its_checks_pass",
            failed_login_marks_a_backend_until_its_checks_pass,
        ),
        (
            "replica_with_stopped_sql_thread_is_excluded_by_max_lag",
            lagging_replica_is_excluded,
        ),
        (
            "promotion_moves_writer_sessions_without_reload",
            promotion_moves_writer_sessions,
        ),
        (
            "sighup_adds_a_backend_and_changes_weights_keeping_sessions",
            sighup_reload_keeps_sessions,
        ),
        ("sigterm_drains_sessions", sigterm_drains_sessions),
        (
            "metrics_parse_and_match_what_happened",
            metrics_match_what_happened,
        ),
        (
            "failed_login_throttle_engages_and_expires",
            throttle_engages_and_expires,
        ),
        (
            "pending_logins_are_limited_per_address",
            pending_logins_are_limited_per_address,
        ),
        (
            "per_user_limit_and_idle_timeout",
            per_user_limit_and_idle_timeout,
        ),
        (
            "admin_drain_status_and_policy_upload",
            admin_drain_status_and_policy_upload,
        ),
        (
            "systemd_notifications_and_json_logs",
            systemd_notifications_and_json_logs,
        ),
        (
            "policy_swaps_ten_times_under_continuous_logins",
            policy_swaps_under_load,
        ),
        (
            "broken_policies_are_refused_and_the_old_one_serves",
            broken_policies_are_refused,
        ),
        (
            "hostile_policies_reroute_per_on_error",
            hostile_policies_reroute_per_on_error,
        ),
        (
            "compiled_policies_are_cached_on_disk",
            compile_cache_on_disk,
        ),
        (
            "users_loaded_from_the_primary",
            users_loaded_from_the_primary,
        ),
        (
            "a_second_listener_routes_by_its_own_policy",
            second_listener_own_policy,
        ),
        (
            "replica_fallback_policy_reads_pools",
            replica_fallback_policy,
        ),
        ("python_policy_routes_real_logins", python_policy),
        ("javascript_policy_routes_real_logins", javascript_policy),
        ("zig_policy_routes_real_logins", zig_policy),
        ("c_policy_routes_real_logins", c_policy),
        ("go_policy_routes_real_logins", go_policy),
        (
            "policy_route_shows_the_statement_rule",
            policy_route_shows_the_statement_rule,
        ),
        (
            "tls_for_clients_require_tls_and_cert_reload",
            tls_for_clients,
        ),
        ("tls_towards_backends", tls_towards_backends),
        (
            "both_logins_share_the_tls_rule_and_the_throttle",
            both_logins_share_the_tls_rule_and_the_throttle,
        ),
        ("kept_sessions_keep_their_tls", kept_sessions_keep_their_tls),
        (
            "kept_backend_sessions_are_taken_over_and_reset",
            kept_backend_sessions,
        ),
        (
            "kept_backend_sessions_hold_no_locks",
            kept_backend_sessions_hold_no_locks,
        ),
        (
            "policies_leave_the_event_loop_when_slow_or_blocking",
            policies_leave_the_event_loop,
        ),
        (
            "sleeping_policies_time_out_and_logins_keep_flowing",
            sleeping_policies_time_out,
        ),
    ];
    run_one_at_a_time(args, env, tests);
}

/// Settings a test's proxy differs in.
struct Setup {
    admin_port: u16,
    /// Extra top-level keys (before any table).
    top: String,
    /// The `[pools.*]` tables.
    pools: String,
    /// Extra tables at the end.
    tail: String,
    /// `[policy] timeout_ms`: generous, so that a loaded test machine does
    /// not time out policies whose tests are not about timeouts.
    policy_timeout_ms: u64,
}

impl Setup {
    fn new(topology: &Topology) -> Self {
        Self {
            admin_port: free_port(),
            top: String::new(),
            policy_timeout_ms: 3000,
            pools: format!(
                "[pools.master]\nrole = \"writer\"\nbackends = [\"{p}\", \"{r1}\", \"{r2}\"]\n\
                 [pools.replicas]\nbackends = [\"{r1}\", \"{r2}\"]\nmax_lag = 5\n",
                p = topology.primary.addr(),
                r1 = topology.replicas[0].addr(),
                r2 = topology.replicas[1].addr(),
            ),
            tail: String::new(),
        }
    }

    fn config(&self) -> String {
        let user = user_table;
        format!(
            r#"listen = "127.0.0.1:{{port}}"
login_timeout_ms = 5000
connect_timeout_ms = 700
{top}
{master}{slave}{outsider}
{pools}
[health]
interval_ms = 200
timeout_ms = 500
fall = 2
rise = 2
[monitor]
user = "{mon}"
password_sha1 = "{mon_sha1}"
[admin]
listen = "127.0.0.1:{admin}"
token = "{TOKEN}"
[policy]
timeout_ms = {policy_timeout}
module = "{{policy}}"
[policy.settings]
"user.mysqlmaster" = "master"
"user.mysqlslave" = "replicas"
{tail}
"#,
            policy_timeout = self.policy_timeout_ms,
            top = self.top,
            master = user(MASTER_USER.0, MASTER_USER.1),
            slave = user(SLAVE_USER.0, SLAVE_USER.1),
            outsider = user("outsider", "outsiderpass"),
            pools = self.pools,
            mon = MONITOR.0,
            mon_sha1 = Sha1Password::of_password(MONITOR.1.as_bytes()).to_hex(),
            admin = self.admin_port,
            tail = self.tail,
        )
    }

    fn admin(&self) -> std::net::SocketAddr {
        std::net::SocketAddr::from(([127, 0, 0, 1], self.admin_port))
    }
}

/// Logs in `n` times one after the other (each session closed before the
/// next) and returns the server ids the sessions landed on.
fn login_ids(proxy: &Proxy, user: (&str, &str), n: usize) -> Result<Vec<u32>, Failed> {
    block_on(async {
        let mut ids = Vec::new();
        for _ in 0..n {
            let mut c = Conn::new(opts(proxy.port, user, None))
                .await
                .map_err(|e| fail(format!("login as {}: {e}", user.0)))?;
            ids.push(server_id(&mut c).await?);
            c.disconnect().await.map_err(fail)?;
        }
        Ok(ids)
    })
}

fn login_error(proxy: &Proxy, user: (&str, &str)) -> Result<(u16, String), Failed> {
    match block_on(Conn::new(opts(proxy.port, user, None))) {
        Ok(_) => Err(format!("login as {} succeeded", user.0).into()),
        Err(e) => server_error(e).map(|(code, _, message)| (code, message)),
    }
}

fn status(setup: &Setup) -> Result<serde_json::Value, Failed> {
    let (code, body) = http(setup.admin(), "GET", "/status", Some(TOKEN), b"").map_err(fail)?;
    check(code == 200, format!("GET /status: {code} {body}"))?;
    serde_json::from_str(&body).map_err(fail)
}

fn backend_status(setup: &Setup, addr: std::net::SocketAddr) -> Result<serde_json::Value, Failed> {
    let s = status(setup)?;
    s["backends"]
        .as_array()
        .and_then(|b| b.iter().find(|b| b["addr"] == addr.to_string()).cloned())
        .ok_or_else(|| format!("{addr} not in /status: {s}").into())
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

fn sorted_unique(mut ids: Vec<u32>) -> Vec<u32> {
    ids.sort();
    ids.dedup();
    ids
}

fn stopped_replica_leaves_and_returns(env: &Env) -> TestResult {
    let setup = Setup::new(&env.topology());
    let proxy = Proxy::start(&setup.config()).map_err(fail)?;
    let r1 = env.topology().replicas[0].addr();
    check(
        sorted_unique(login_ids(&proxy, SLAVE_USER, 4)?) == REPLICA_IDS,
        "both replicas serve at first",
    )?;
    env.topology().replicas[0].stop();
    let stopped = Instant::now();
    // The checker alone notices (no login touches the replica meanwhile):
    // two failed checks 200 ms apart.
    wait_until(
        "the stopped replica is down",
        Duration::from_secs(10),
        || Ok(backend_status(&setup, r1)?["state"] == "down"),
    )?;
    let noticed = stopped.elapsed();
    proxy.wait_for_log("failed its checks; out of service", Duration::from_secs(1))?;
    let ids = login_ids(&proxy, SLAVE_USER, 6)?;
    check(
        ids.iter().all(|&id| id == REPLICA_IDS[1]),
        format!("new sessions avoid the stopped replica: {ids:?}"),
    )?;
    check(
        !proxy.log().contains("backend failed a login"),
        "no login was sent to the stopped replica",
    )?;
    {
        let mut t = env.topology();
        t.replicas[0].restart().map_err(fail)?;
        t.replicas[0].sql("SET GLOBAL read_only = ON");
    }
    wait_until("the replica is back", Duration::from_secs(15), || {
        Ok(backend_status(&setup, r1)?["state"] == "up")
    })?;
    proxy.wait_for_log("back in service", Duration::from_secs(1))?;
    check(
        sorted_unique(login_ids(&proxy, SLAVE_USER, 4)?) == REPLICA_IDS,
        "both replicas serve again",
    )?;
    eprintln!("stopped replica marked down after {noticed:?}");
    Ok(())
}

fn failed_login_marks_a_backend_until_its_checks_pass(env: &Env) -> TestResult {
    let mut setup = Setup::new(&env.topology());
    // Checks that would take a minute to notice by themselves; and no
    // max_lag, which would exclude the stopped replica as soon as its lag
    // is unknown, before any login tries it.
    setup.tail = String::new();
    setup.pools = setup.pools.replace("max_lag = 5\n", "");
    let config = setup.config().replace("fall = 2", "fall = 300");
    let proxy = Proxy::start(&config).map_err(fail)?;
    let r1 = env.topology().replicas[0].addr();
    env.topology().replicas[0].stop();
    // Least connections with round-robin ties: within a few logins one
    // picks the stopped replica, fails over to the other, and marks it.
    let ids = login_ids(&proxy, SLAVE_USER, 4)?;
    let result: TestResult = (|| {
        check(
            ids.iter().all(|&id| id == REPLICA_IDS[1]),
            format!("{ids:?}"),
        )?;
        proxy
            .wait_for_log("backend failed a login", Duration::from_secs(1))
            .map_err(fail)?;
        check(
            backend_status(&setup, r1)?["state"] == "down",
            "marked down by the failed login",
        )?;
        Ok(())
    })();
    {
        let mut t = env.topology();
        t.replicas[0].restart().map_err(fail)?;
        t.replicas[0].sql("SET GLOBAL read_only = ON");
    }
    result?;
    // Back through the checker (rise = 2).
    wait_until("the replica is back", Duration::from_secs(10), || {
        Ok(backend_status(&setup, r1)?["state"] == "up")
    })?;
    check(
        sorted_unique(login_ids(&proxy, SLAVE_USER, 4)?) == REPLICA_IDS,
        "both replicas serve again",
    )
}

/// The primary's last write (one replication domain).
fn primary_gtid(env: &Env) -> Result<Gtid, Failed> {
    let pos = env.topology().primary.sql("SELECT @@gtid_binlog_pos");
    pos.parse().map_err(fail)
}

fn lagging_replica_is_excluded(env: &Env) -> TestResult {
    let setup = Setup::new(&env.topology());
    let proxy = Proxy::start(&setup.config()).map_err(fail)?;
    let (r1, r2) = {
        let t = env.topology();
        (t.replicas[0].addr(), t.replicas[1].addr())
    };
    let result: TestResult = (|| {
        env.topology().replicas[0].sql("STOP SLAVE SQL_THREAD");
        // The primary moves on; the replica does not.
        env.topology()
            .primary
            .sql("CREATE TABLE IF NOT EXISTS app.lag (id INT); INSERT INTO app.lag VALUES (1)");
        wait_until(
            "the replica's stopped replication is seen",
            Duration::from_secs(10),
            || Ok(backend_status(&setup, r1)?["replication"] == "stopped"),
        )?;
        // Its position, as the monitor reads it, lacks the primary's last
        // write; the other replica's has it.
        let written = primary_gtid(env)?;
        let applied = |addr| -> Result<Option<bool>, Failed> {
            let pos = backend_status(&setup, addr)?["gtid_slave_pos"].clone();
            Ok(match pos.as_str() {
                Some(p) => Some(p.parse::<GtidPos>().map_err(fail)?.has_applied(&written)),
                None => None,
            })
        };
        wait_until(
            "the running replica's position has the write",
            Duration::from_secs(10),
            || Ok(applied(r2)? == Some(true)),
        )?;
        check(
            applied(r1)? == Some(false),
            "the stopped replica's position has the write",
        )?;
        let ids = login_ids(&proxy, SLAVE_USER, 6)?;
        check(
            ids.iter().all(|&id| id == REPLICA_IDS[1]),
            format!("the lagging replica takes no new sessions: {ids:?}"),
        )?;
        let s = status(&setup)?;
        let pool = &s["pools"].as_array().unwrap()[1];
        check(
            pool["name"] == "replicas" && pool["healthy_backends"] == 1,
            format!("{pool}"),
        )?;
        // Settings as the configuration spells them.
        check(
            pool["balance"] == "least-connections" && pool["role"] == "any",
            format!("{pool}"),
        )?;
        check(
            backend_status(&setup, r1)?["state"] == "up",
            "lagging is not down",
        )?;
        let m = metrics(&setup)?;
        check(
            m.get("switchyard_pool_lagging_backends{pool=\"replicas\"}") == Some(&1.0)
                && m.get("switchyard_pool_lagging_backends{pool=\"master\"}") == Some(&0.0),
            "switchyard_pool_lagging_backends counts the lagging replica",
        )?;
        // Both lagging: never all excluded; the least bad one serves.
        env.topology().replicas[1].sql("STOP SLAVE SQL_THREAD");
        wait_until("both replicas lag", Duration::from_secs(10), || {
            Ok(backend_status(&setup, r2)?["replication"] == "stopped")
        })?;
        check(
            login_ids(&proxy, SLAVE_USER, 2)?.len() == 2,
            "least-bad still serves",
        )?;
        proxy.wait_for_log("no backend of the pool qualifies", Duration::from_secs(2))?;
        Ok(())
    })();
    {
        let t = env.topology();
        for r in &t.replicas {
            r.sql("START SLAVE SQL_THREAD");
        }
        t.sync_replicas().map_err(fail)?;
    }
    result?;
    wait_until("replication runs again", Duration::from_secs(10), || {
        Ok(backend_status(&setup, r1)?["replication"] == "running")
    })?;
    // Caught up: its position has the primary's writes.
    let written = primary_gtid(env)?;
    wait_until(
        "the replica's position catches up",
        Duration::from_secs(10),
        || {
            let pos = backend_status(&setup, r1)?["gtid_slave_pos"].clone();
            Ok(pos
                .as_str()
                .and_then(|p| p.parse::<GtidPos>().ok())
                .is_some_and(|p| p.has_applied(&written)))
        },
    )?;
    check(
        sorted_unique(login_ids(&proxy, SLAVE_USER, 4)?) == REPLICA_IDS,
        "both replicas serve again",
    )
}

fn promotion_moves_writer_sessions(env: &Env) -> TestResult {
    let setup = Setup::new(&env.topology());
    let proxy = Proxy::start(&setup.config()).map_err(fail)?;
    let ids = login_ids(&proxy, MASTER_USER, 3)?;
    check(
        ids.iter().all(|&id| id == PRIMARY_ID),
        format!("the writer is the primary: {ids:?}"),
    )?;
    let promote = |primary_ro: &str, replica_ro: &str| {
        let t = env.topology();
        t.primary
            .sql(&format!("SET GLOBAL read_only = {primary_ro}"));
        t.replicas[0].sql(&format!("SET GLOBAL read_only = {replica_ro}"));
    };
    promote("ON", "OFF");
    let result = wait_until(
        "writer sessions follow the promotion",
        Duration::from_secs(10),
        || Ok(login_ids(&proxy, MASTER_USER, 1)? == [REPLICA_IDS[0]]),
    );
    let after = login_ids(&proxy, MASTER_USER, 3);
    promote("OFF", "ON");
    result?;
    let after = after?;
    check(
        after.iter().all(|&id| id == REPLICA_IDS[0]),
        format!("{after:?}"),
    )?;
    proxy.wait_for_log("read_only changed", Duration::from_secs(1))?;
    wait_until("the writer moves back", Duration::from_secs(10), || {
        Ok(login_ids(&proxy, MASTER_USER, 1)? == [PRIMARY_ID])
    })
}

fn sighup_reload_keeps_sessions(env: &Env) -> TestResult {
    let mut setup = Setup::new(&env.topology());
    let (r1, r2) = {
        let t = env.topology();
        (t.replicas[0].addr(), t.replicas[1].addr())
    };
    setup.pools = format!(
        "[pools.master]\nbackends = [\"{}\"]\n[pools.replicas]\nbalance = \"weighted\"\nbackends = [\"{r1}\"]\n",
        env.topology().primary.addr()
    );
    let proxy = Proxy::start(&setup.config()).map_err(fail)?;
    let rt = runtime();
    let mut open = Vec::new();
    for user in [MASTER_USER, SLAVE_USER, SLAVE_USER, MASTER_USER] {
        open.push(
            rt.block_on(Conn::new(opts(proxy.port, user, None)))
                .map_err(fail)?,
        );
    }
    let ids = login_ids(&proxy, SLAVE_USER, 3)?;
    check(ids.iter().all(|&i| i == REPLICA_IDS[0]), format!("{ids:?}"))?;
    // Add the second replica with three times the weight.
    setup.pools = format!(
        "[pools.master]\nbackends = [\"{}\"]\n[pools.replicas]\nbalance = \"weighted\"\n\
         backends = [{{ addr = \"{r1}\", weight = 1 }}, {{ addr = \"{r2}\", weight = 3 }}]\n",
        env.topology().primary.addr()
    );
    proxy.rewrite_config(&setup.config()).map_err(fail)?;
    proxy.signal(libc::SIGHUP);
    proxy.wait_for_log("configuration reloaded", Duration::from_secs(10))?;
    let ids = login_ids(&proxy, SLAVE_USER, 8)?;
    let on_r2 = ids.iter().filter(|&&i| i == REPLICA_IDS[1]).count();
    check(on_r2 == 6, format!("weights 1:3 over 8 logins: {ids:?}"))?;
    // A bad file changes nothing, by SIGHUP or by the admin endpoint.
    proxy
        .rewrite_config(
            &setup
                .config()
                .replace("balance = \"weighted\"", "balance = \"fastest\""),
        )
        .map_err(fail)?;
    proxy.signal(libc::SIGHUP);
    proxy.wait_for_log("reload refused", Duration::from_secs(10))?;
    let (code, body) = http(setup.admin(), "POST", "/reload", Some(TOKEN), b"").map_err(fail)?;
    check(
        code == 400 && body.contains("switchyard.toml:") && body.contains("fastest"),
        format!("{code} {body}"),
    )?;
    let ids = login_ids(&proxy, SLAVE_USER, 8)?;
    let on_r2 = ids.iter().filter(|&&i| i == REPLICA_IDS[1]).count();
    check(
        on_r2 == 6,
        format!("the old configuration still serves: {ids:?}"),
    )?;
    // Remove the first replica: it drains (its sessions go on, it takes no
    // new ones and is no longer checked).
    setup.pools = format!(
        "[pools.master]\nbackends = [\"{}\"]\n[pools.replicas]\nbackends = [\"{r2}\"]\n",
        env.topology().primary.addr()
    );
    proxy.rewrite_config(&setup.config()).map_err(fail)?;
    let (code, body) = http(setup.admin(), "POST", "/reload", Some(TOKEN), b"").map_err(fail)?;
    check(code == 200, format!("{code} {body}"))?;
    let ids = login_ids(&proxy, SLAVE_USER, 4)?;
    check(
        ids.iter().all(|&i| i == REPLICA_IDS[1]),
        format!("removed backend takes no new sessions: {ids:?}"),
    )?;
    let removed = backend_status(&setup, r1)?;
    check(
        removed["configured"] == false && removed["sessions"] == 2,
        format!("removed backend still serves its sessions: {removed}"),
    )?;
    // Every session opened before the reloads still works, where it was.
    rt.block_on(async {
        for (i, c) in open.iter_mut().enumerate() {
            let id = server_id(c).await?;
            let expected = if i == 0 || i == 3 {
                PRIMARY_ID
            } else {
                REPLICA_IDS[0]
            };
            check(id == expected, format!("session {i} on {id}"))?;
        }
        for c in open {
            c.disconnect().await.map_err(fail)?;
        }
        Ok::<_, Failed>(())
    })?;
    let m = metrics(&setup)?;
    check(
        m.get("switchyard_reloads_total{result=\"ok\"}") == Some(&2.0)
            && m.get("switchyard_reloads_total{result=\"failed\"}") == Some(&2.0),
        format!("reload counters: {m:?}"),
    )
}

/// SIGTERM: no new clients; a session in the middle of a statement gets
/// its answer, one that waits for nothing is closed at once (not held for
/// `shutdown_timeout_ms`), and the daemon exits once the last is done. A
/// statement that outlives `shutdown_timeout_ms` gets ERR 1053 then. A
/// second signal does not wait for the drain.
fn sigterm_drains_sessions(env: &Env) -> TestResult {
    let mut setup = Setup::new(&env.topology());
    setup.top = "shutdown_timeout_ms = 20000".into();
    let mut proxy = Proxy::start(&setup.config()).map_err(fail)?;
    let rt = runtime();
    let connect = |proxy: &Proxy, user| rt.block_on(Conn::new(opts(proxy.port, user, None)));
    let mut idle = connect(&proxy, SLAVE_USER).map_err(fail)?;
    let mut busy = connect(&proxy, SLAVE_USER).map_err(fail)?;
    rt.block_on(server_id(&mut idle))?;
    let started = Instant::now();
    let (answer, idle_after) = rt.block_on(async {
        let mut running =
            Box::pin(busy.query_first::<(u32, u32), _>("SELECT SLEEP(3), @@server_id"));
        check(
            tokio::time::timeout(Duration::from_millis(300), &mut running)
                .await
                .is_err(),
            "the statement runs",
        )?;
        proxy.signal(libc::SIGTERM);
        // The idle session is closed within a second.
        tokio::time::sleep(Duration::from_secs(1)).await;
        let idle_after = idle.ping().await;
        let answer = tokio::time::timeout(Duration::from_secs(10), running)
            .await
            .map_err(|_| fail("no answer to the running statement"))?;
        Ok::<_, Failed>((answer, idle_after))
    })?;
    check(
        matches!(answer, Ok(Some((0, sid))) if REPLICA_IDS.contains(&sid)),
        format!("the running statement's answer: {answer:?}"),
    )?;
    check(idle_after.is_err(), "the idle session was closed at once")?;
    check(
        std::net::TcpStream::connect(proxy.addr()).is_err(),
        "the listener is closed",
    )?;
    let status = proxy
        .wait_exit(Duration::from_secs(5))
        .ok_or("no exit after the last session's statement")?;
    check(status.success(), format!("exit status {status}"))?;
    check(
        started.elapsed() < Duration::from_secs(10),
        format!("exited after {:?}, not at the timeout", started.elapsed()),
    )?;
    // A statement that outlives the timeout: ERR 1053 at the timeout.
    setup.top = "shutdown_timeout_ms = 1000".into();
    let mut proxy = Proxy::start(&setup.config()).map_err(fail)?;
    let mut conn = connect(&proxy, MASTER_USER).map_err(fail)?;
    let (took, outcome) = rt.block_on(async {
        let mut running = Box::pin(conn.query_drop("SELECT SLEEP(30)"));
        check(
            tokio::time::timeout(Duration::from_millis(300), &mut running)
                .await
                .is_err(),
            "the statement runs",
        )?;
        let started = Instant::now();
        proxy.signal(libc::SIGTERM);
        let outcome = tokio::time::timeout(Duration::from_secs(10), running)
            .await
            .map_err(|_| fail("no answer 10 s after SIGTERM"))?;
        Ok::<_, Failed>((started.elapsed(), outcome))
    })?;
    let (code, state, message) = match outcome {
        Ok(()) => return Err(fail("SLEEP(30) finished")),
        Err(e) => server_error(e)?,
    };
    check(
        (code, state.as_str()) == (1053, "08S01"),
        format!("{code} ({state}) {message}"),
    )?;
    check(
        took >= Duration::from_millis(900) && took < Duration::from_secs(5),
        format!("ERR 1053 after {took:?}"),
    )?;
    let status = proxy
        .wait_exit(Duration::from_secs(10))
        .ok_or("no exit after the shutdown timeout")?;
    check(status.success(), format!("exit status {status}"))?;
    // A second signal does not wait for the drain (a statement runs).
    setup.top = "shutdown_timeout_ms = 60000".into();
    let mut proxy = Proxy::start(&setup.config()).map_err(fail)?;
    let mut conn = connect(&proxy, MASTER_USER).map_err(fail)?;
    rt.block_on(async {
        let running = conn.query_drop("SELECT SLEEP(60)");
        let _ = tokio::time::timeout(Duration::from_millis(300), running).await;
    });
    proxy.signal(libc::SIGTERM);
    proxy.wait_for_log("draining sessions", Duration::from_secs(5))?;
    let started = Instant::now();
    proxy.signal(libc::SIGINT);
    let status = proxy
        .wait_exit(Duration::from_secs(10))
        .ok_or("no exit after the second signal")?;
    check(status.success(), format!("exit status {status}"))?;
    check(
        started.elapsed() < Duration::from_secs(3),
        format!("second signal took {:?}", started.elapsed()),
    )
}

/// `/metrics`, checked against the text format, as name{labels} → value.
fn metrics(setup: &Setup) -> Result<BTreeMap<String, f64>, Failed> {
    let (code, body) = http(setup.admin(), "GET", "/metrics", Some(TOKEN), b"").map_err(fail)?;
    check(code == 200, format!("GET /metrics: {code}"))?;
    parse_prometheus(&body)
}

/// A strict reader of the Prometheus text format (0.0.4): HELP and TYPE
/// before a family's samples, valid names and labels, numeric values,
/// histogram buckets cumulative and ending in +Inf = count.
fn parse_prometheus(text: &str) -> Result<BTreeMap<String, f64>, Failed> {
    let name_ok = |n: &str| {
        !n.is_empty()
            && n.chars().enumerate().all(|(i, c)| {
                c.is_ascii_alphabetic() || c == '_' || c == ':' || (i > 0 && c.is_ascii_digit())
            })
    };
    let mut types: BTreeMap<String, String> = BTreeMap::new();
    let mut samples = BTreeMap::new();
    for line in text.lines() {
        if let Some(rest) = line.strip_prefix("# ") {
            let mut parts = rest.splitn(3, ' ');
            let (kind, name) = (parts.next().unwrap_or(""), parts.next().unwrap_or(""));
            check(name_ok(name), format!("bad name in {line}"))?;
            if kind == "TYPE" {
                let t = parts.next().unwrap_or("");
                check(
                    ["counter", "gauge", "histogram"].contains(&t),
                    format!("bad type {line}"),
                )?;
                check(
                    types.insert(name.to_owned(), t.to_owned()).is_none(),
                    format!("family declared twice: {name}"),
                )?;
            }
            continue;
        }
        check(!line.is_empty(), "empty line")?;
        let (series, value) = line
            .rsplit_once(' ')
            .ok_or_else(|| fail(format!("no value: {line}")))?;
        let value: f64 = if value == "+Inf" {
            f64::INFINITY
        } else {
            value
                .parse()
                .map_err(|_| fail(format!("bad value: {line}")))?
        };
        let name = series.split('{').next().unwrap_or("");
        check(name_ok(name), format!("bad metric name: {line}"))?;
        if let Some(labels) = series.strip_prefix(name)
            && !labels.is_empty()
        {
            check(
                labels.starts_with('{') && labels.ends_with('}'),
                format!("bad labels: {line}"),
            )?;
            for pair in labels[1..labels.len() - 1].split("\",") {
                let (k, v) = pair
                    .split_once("=\"")
                    .ok_or_else(|| fail(format!("bad label: {line}")))?;
                check(name_ok(k), format!("bad label name: {line}"))?;
                check(!v.trim_end_matches('"').contains('"'), line.to_string())?;
            }
        }
        let family = ["_bucket", "_sum", "_count"]
            .iter()
            .find_map(|s| {
                name.strip_suffix(s)
                    .filter(|f| types.get(*f).map(String::as_str) == Some("histogram"))
            })
            .unwrap_or(name);
        check(
            types.contains_key(family),
            format!("sample before its TYPE: {line}"),
        )?;
        check(
            samples.insert(series.to_owned(), value).is_none(),
            format!("duplicate series {series}"),
        )?;
    }
    for (family, t) in &types {
        if t != "histogram" {
            continue;
        }
        let buckets: Vec<f64> = samples
            .iter()
            .filter(|(k, _)| k.starts_with(&format!("{family}_bucket{{")))
            .map(|(_, v)| *v)
            .collect();
        let inf = samples.get(&format!("{family}_bucket{{le=\"+Inf\"}}"));
        let count = samples.get(&format!("{family}_count"));
        check(
            inf.is_some() && inf == count,
            format!("{family}: +Inf bucket {inf:?} vs count {count:?}"),
        )?;
        check(
            buckets.iter().all(|b| b <= inf.unwrap_or(&0.0)),
            format!("{family}: buckets not cumulative"),
        )?;
    }
    Ok(samples)
}

fn metrics_match_what_happened(env: &Env) -> TestResult {
    let setup = Setup::new(&env.topology());
    let proxy = Proxy::start(&setup.config()).map_err(fail)?;
    let (code, _) = http(setup.admin(), "GET", "/metrics", None, b"").map_err(fail)?;
    check(code == 401, format!("no token: {code}"))?;
    let (code, _) = http(setup.admin(), "GET", "/metrics", Some("wrong"), b"").map_err(fail)?;
    check(code == 401, format!("wrong token: {code}"))?;
    login_ids(&proxy, MASTER_USER, 2)?;
    login_ids(&proxy, SLAVE_USER, 1)?;
    for _ in 0..2 {
        let (code, _) = login_error(&proxy, (MASTER_USER.0, "wrong"))?;
        check(code == 1045, format!("{code}"))?;
    }
    let (code, _) = login_error(&proxy, ("outsider", "outsiderpass"))?;
    check(code == 9100, format!("{code}"))?;
    wait_until("sessions are closed", Duration::from_secs(5), || {
        Ok(metrics(&setup)?.get("switchyard_sessions") == Some(&0.0))
    })?;
    let m = metrics(&setup)?;
    let get = |k: &str| m.get(k).copied().unwrap_or(f64::NAN);
    let expect = [
        ("switchyard_logins_total{outcome=\"ok\"}", 3.0),
        ("switchyard_logins_total{outcome=\"access_denied\"}", 2.0),
        ("switchyard_logins_total{outcome=\"policy_refused\"}", 1.0),
        ("switchyard_logins_total{outcome=\"no_backend\"}", 0.0),
        ("switchyard_login_duration_seconds_count", 3.0),
        ("switchyard_policy_call_duration_seconds_count", 4.0),
        ("switchyard_policy_refusals_total", 1.0),
        ("switchyard_policy_errors_total", 0.0),
        ("switchyard_throttle_blocks_total", 0.0),
    ];
    for (k, v) in expect {
        check(get(k) == v, format!("{k} = {} (expected {v})", get(k)))?;
    }
    check(
        get("switchyard_bytes_total{direction=\"from_clients\"}") > 0.0
            && get("switchyard_bytes_total{direction=\"to_clients\"}") > 0.0,
        "bytes counted",
    )?;
    let t = env.topology();
    for b in std::iter::once(&t.primary).chain(&t.replicas) {
        let k = format!("switchyard_backend_up{{backend=\"{}\"}}", b.addr());
        check(get(&k) == 1.0, format!("{k} = {}", get(&k)))?;
    }
    Ok(())
}

fn throttle_engages_and_expires(env: &Env) -> TestResult {
    let mut setup = Setup::new(&env.topology());
    setup.tail = "[throttle]\nmax_failures = 3\nwindow_ms = 10000\nblock_ms = 1500\n".into();
    let proxy = Proxy::start(&setup.config()).map_err(fail)?;
    for _ in 0..3 {
        let (code, _) = login_error(&proxy, (SLAVE_USER.0, "guess"))?;
        check(code == 1045, format!("{code}"))?;
    }
    let blocked_at = Instant::now();
    // Even the right password is refused now, before any greeting.
    let (code, msg) = login_error(&proxy, SLAVE_USER)?;
    check(code == 1129, format!("{code} {msg}"))?;
    proxy.wait_for_log(
        "blocked after repeated failed logins",
        Duration::from_secs(1),
    )?;
    let m = metrics(&setup)?;
    check(
        m.get("switchyard_throttle_blocks_total") == Some(&1.0)
            && m.get("switchyard_logins_total{outcome=\"throttled\"}") == Some(&1.0)
            && m.get("switchyard_throttled_addresses") == Some(&1.0),
        format!("{m:?}"),
    )?;
    std::thread::sleep(Duration::from_millis(1600).saturating_sub(blocked_at.elapsed()));
    check(
        login_ids(&proxy, SLAVE_USER, 1)?.len() == 1,
        "the block expires",
    )?;
    proxy
        .wait_for_log("no longer blocked", Duration::from_secs(1))
        .map_err(fail)
}

fn pending_logins_are_limited_per_address(env: &Env) -> TestResult {
    let mut setup = Setup::new(&env.topology());
    setup.tail = "[throttle]\nmax_pending_logins = 2\nmax_failures = 2\nblock_ms = 60000\n".into();
    let config = setup
        .config()
        .replace("login_timeout_ms = 5000", "login_timeout_ms = 1000");
    let proxy = Proxy::start(&config).map_err(fail)?;
    let addr: std::net::SocketAddr = ([127, 0, 0, 1], proxy.port).into();
    let silent: std::net::IpAddr = "127.0.0.31".parse().map_err(fail)?;
    let other: std::net::IpAddr = "127.0.0.32".parse().map_err(fail)?;
    let first_error = |from| -> Result<Option<u16>, Failed> {
        let mut raw = RawClient::connect_from(addr, from)?;
        let p = raw.expect_packet()?;
        Ok(ErrPacket::is_err(&p.payload).then(|| u16::from_le_bytes([p.payload[1], p.payload[2]])))
    };
    // Two connections that are greeted and say nothing hold the address's
    // pending logins...
    let mut held = Vec::new();
    for _ in 0..2 {
        let mut raw = RawClient::connect_from(addr, silent)?;
        raw.greeting()?;
        held.push(raw);
    }
    // ...so a third from it is refused before the greeting,
    check(
        first_error(silent)? == Some(1040),
        "a third pending login from one address",
    )?;
    // while another address logs in.
    let mut raw = RawClient::connect_from(addr, other)?;
    match raw.login(SLAVE_USER.0, SLAVE_USER.1, None, "mysql_native_password")? {
        LoginOutcome::Ok(_) => {}
        other => return Err(format!("{other:?}").into()),
    }
    // The silent ones time out and are closed; their timeouts count as
    // failed logins, and two block the address.
    for raw in &mut held {
        check(
            matches!(raw.read_packet(), Ok(None) | Err(_)),
            "a silent login is closed at login_timeout_ms",
        )?;
    }
    check(
        first_error(silent)? == Some(1129),
        "timeouts count towards the throttle",
    )?;
    check(
        first_error(other)?.is_none(),
        "the other address is not blocked",
    )
}

fn per_user_limit_and_idle_timeout(env: &Env) -> TestResult {
    let mut setup = Setup::new(&env.topology());
    setup.top = "max_connections_per_user = 2\nidle_timeout_ms = 800".into();
    let proxy = Proxy::start(&setup.config()).map_err(fail)?;
    let rt = runtime();
    let mut a = rt
        .block_on(Conn::new(opts(proxy.port, SLAVE_USER, None)))
        .map_err(fail)?;
    let mut b = rt
        .block_on(Conn::new(opts(proxy.port, SLAVE_USER, None)))
        .map_err(fail)?;
    let (code, msg) = login_error(&proxy, SLAVE_USER)?;
    check(
        code == 1226 && msg.contains("max_user_connections"),
        format!("{code} {msg}"),
    )?;
    // Another user is not affected.
    check(login_ids(&proxy, MASTER_USER, 1)?.len() == 1, "other user")?;
    let s = status(&setup)?;
    check(
        s["users"].as_array().is_some_and(|u| {
            u.iter()
                .any(|u| u["user"] == SLAVE_USER.0 && u["sessions"] == 2)
        }),
        format!("{s}"),
    )?;
    // A query longer than the idle timeout is not cut...
    let slept: Option<u32> = rt
        .block_on(a.query_first("SELECT SLEEP(1.5)"))
        .map_err(fail)?;
    check(slept == Some(0), "long query survives")?;
    // ...but a session left alone is closed.
    std::thread::sleep(Duration::from_millis(1500));
    check(
        rt.block_on(b.query_drop("SELECT 1")).is_err(),
        "idle session closed",
    )?;
    check(
        rt.block_on(a.query_drop("SELECT 1")).is_err(),
        "idle session closed",
    )?;
    proxy.wait_for_log("session idle for too long", Duration::from_secs(1))?;
    let m = metrics(&setup)?;
    check(
        m.get("switchyard_idle_sessions_closed_total") == Some(&2.0),
        format!("{m:?}"),
    )?;
    // The user's count went back down.
    check(
        login_ids(&proxy, SLAVE_USER, 2)?.len() == 2,
        "limit released",
    )
}

fn admin_drain_status_and_policy_upload(env: &Env) -> TestResult {
    let mut setup = Setup::new(&env.topology());
    // Read by the misbehave policy once it is posted (still in
    // [policy.settings]).
    setup.tail = "\"mode.outsider\" = \"inspect\"\n".into();
    let proxy = Proxy::start(&setup.config()).map_err(fail)?;
    let r1 = env.topology().replicas[0].addr();
    let (code, body) = http(
        setup.admin(),
        "POST",
        &format!("/backends/{r1}/drain"),
        Some(TOKEN),
        b"",
    )
    .map_err(fail)?;
    check(code == 200, format!("{code} {body}"))?;
    let ids = login_ids(&proxy, SLAVE_USER, 4)?;
    check(
        ids.iter().all(|&i| i == REPLICA_IDS[1]),
        format!("drained backend takes no sessions: {ids:?}"),
    )?;
    check(
        backend_status(&setup, r1)?["draining"] == true,
        "status shows the drain",
    )?;
    let (code, _) = http(
        setup.admin(),
        "POST",
        &format!("/backends/{r1}/undrain"),
        Some(TOKEN),
        b"",
    )
    .map_err(fail)?;
    check(code == 200, "undrain")?;
    check(
        sorted_unique(login_ids(&proxy, SLAVE_USER, 4)?) == REPLICA_IDS,
        "back in rotation",
    )?;
    let (code, _) = http(
        setup.admin(),
        "POST",
        "/backends/127.0.0.1:1/drain",
        Some(TOKEN),
        b"",
    )
    .map_err(fail)?;
    check(code == 404, format!("unknown backend: {code}"))?;
    let (code, page) = http(setup.admin(), "GET", "/", Some(TOKEN), b"").map_err(fail)?;
    check(
        code == 200 && page.contains("<table") && page.contains(&r1.to_string()),
        "status page",
    )?;
    // A posted policy: garbage is refused and the old one stays; a real
    // component is swapped in for new logins.
    let (code, msg) = login_error(&proxy, ("outsider", "outsiderpass"))?;
    check(
        code == 9100 && !msg.contains("user=outsider"),
        format!("{code} {msg}"),
    )?;
    let before = status(&setup)?["policy"]["sha256"].clone();
    let (code, body) =
        http(setup.admin(), "POST", "/policy", Some(TOKEN), b"not wasm").map_err(fail)?;
    check(code == 400, format!("{code} {body}"))?;
    check(
        status(&setup)?["policy"]["sha256"] == before,
        "old policy stays",
    )?;
    let misbehave = std::fs::read(&switchyard_e2e::artifacts().misbehave_policy).map_err(fail)?;
    let (code, body) =
        http(setup.admin(), "POST", "/policy", Some(TOKEN), &misbehave).map_err(fail)?;
    check(code == 200, format!("{code} {body}"))?;
    check(
        status(&setup)?["policy"]["sha256"] != before,
        "new policy in use",
    )?;
    // The posted policy answers for new logins: it echoes what it sees,
    // including the pools' live figures.
    let (code, msg) = login_error(&proxy, ("outsider", "outsiderpass"))?;
    check(
        code == 9100 && msg.contains("user=outsider") && msg.contains("replicas:healthy=2,total=2"),
        format!("{code} {msg}"),
    )?;
    check(
        login_ids(&proxy, SLAVE_USER, 1)?.len() == 1,
        "other users still routed",
    )
}

fn systemd_notifications_and_json_logs(env: &Env) -> TestResult {
    let setup = Setup::new(&env.topology());
    let dir = tempfile::tempdir().map_err(fail)?;
    let socket_path = dir.path().join("notify.sock");
    let socket = std::os::unix::net::UnixDatagram::bind(&socket_path).map_err(fail)?;
    socket
        .set_read_timeout(Some(Duration::from_secs(10)))
        .map_err(fail)?;
    let mut proxy = Proxy::start_env(
        &setup.config(),
        &[
            ("NOTIFY_SOCKET", socket_path.to_str().unwrap()),
            ("WATCHDOG_USEC", "400000"),
        ],
    )
    .map_err(fail)?;
    let mut seen = Vec::new();
    let mut recv_until = |needle: &str| -> TestResult {
        let mut buf = [0u8; 512];
        loop {
            let n = socket
                .recv(&mut buf)
                .map_err(|e| fail(format!("waiting for {needle}: {e}; got {seen:?}")))?;
            let msg = String::from_utf8_lossy(&buf[..n]).into_owned();
            let hit = msg.contains(needle);
            seen.push(msg);
            if hit {
                return Ok(());
            }
        }
    };
    recv_until("READY=1")?;
    recv_until("WATCHDOG=1")?;
    proxy.signal(libc::SIGHUP);
    recv_until("RELOADING=1")?;
    recv_until("READY=1")?;
    proxy.signal(libc::SIGTERM);
    recv_until("STOPPING=1")?;
    let status = proxy
        .wait_exit(Duration::from_secs(10))
        .ok_or("did not exit")?;
    check(status.success(), format!("{status}"))?;

    // JSON logs: every line is one JSON object.
    let config = dir.path().join("switchyard.toml");
    let port = free_port();
    std::fs::write(
        &config,
        setup
            .config()
            .replace("{port}", &port.to_string())
            .replace(
                "{policy}",
                &switchyard_e2e::artifacts()
                    .default_policy
                    .display()
                    .to_string(),
            )
            .replace(
                &format!("127.0.0.1:{}", setup.admin_port),
                &format!("127.0.0.1:{}", free_port()),
            ),
    )
    .map_err(fail)?;
    let log = dir.path().join("json.log");
    let mut child = switchyard_e2e::spawn({
        let mut cmd = std::process::Command::new(&switchyard_e2e::artifacts().switchyard);
        cmd.args(["run", "--log-format", "json", "--config"])
            .arg(&config)
            .stderr(std::fs::File::create(&log).map_err(fail)?);
        cmd
    })
    .map_err(fail)?;
    let text = (|| {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let text = std::fs::read_to_string(&log).unwrap_or_default();
            if text.contains("switchyard is serving") || Instant::now() > deadline {
                return text;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    })();
    let _ = child.kill();
    let _ = child.wait();
    check(
        text.contains("switchyard is serving"),
        format!("no start line: {text}"),
    )?;
    for line in text.lines() {
        let v: serde_json::Value =
            serde_json::from_str(line).map_err(|e| fail(format!("{e}: {line}")))?;
        check(
            v["level"].is_string() && v["timestamp"].is_string(),
            line.to_string(),
        )?;
    }
    Ok(())
}

/// A proxy whose policy module is a file in its own directory, with
/// settings under which the default policy sends `mysqlslave` to the
/// replicas and the by-client policy sends every loopback client to the
/// primary.
struct SwapSetup {
    setup: Setup,
    dir: tempfile::TempDir,
}

impl SwapSetup {
    fn new(env: &Env, extra_settings: &str) -> Result<Self, Failed> {
        let mut setup = Setup::new(&env.topology());
        let dir = tempfile::tempdir().map_err(fail)?;
        std::fs::copy(
            &switchyard_e2e::artifacts().default_policy,
            dir.path().join("a.wasm"),
        )
        .map_err(fail)?;
        setup.tail = format!(
            "\"client.127.0.0.0/8\" = \"master\"\n\"user.selfcheck\" = \"replicas\"\n{extra_settings}\n\
             [[policy.selftest]]\nuser = \"selfcheck\"\nclient = \"192.0.2.1:1\"\nexpect = \"pool:replicas\"\n"
        );
        Ok(Self { setup, dir })
    }

    fn config(&self, module: &str) -> String {
        self.setup.config().replace(
            "module = \"{policy}\"",
            &format!(
                "module = \"{}\"\ncache_dir = \"{}\"",
                self.dir.path().join(module).display(),
                self.dir.path().join("cache").display()
            ),
        )
    }

    /// Replaces `module` atomically with `bytes`.
    fn write_module(&self, module: &str, bytes: &[u8]) -> TestResult {
        let tmp = self.dir.path().join(".new.wasm");
        std::fs::write(&tmp, bytes).map_err(fail)?;
        std::fs::rename(tmp, self.dir.path().join(module)).map_err(fail)
    }
}

fn policy_swaps_under_load(env: &Env) -> TestResult {
    let swap = SwapSetup::new(env, "")?;
    let proxy = Proxy::start(&swap.config("a.wasm")).map_err(fail)?;
    let default = std::fs::read(&switchyard_e2e::artifacts().default_policy).map_err(fail)?;
    let by_client = std::fs::read(&switchyard_e2e::artifacts().by_client_policy).map_err(fail)?;
    // As an operator would before a swap: check the new module with the
    // proxy's configuration, which also compiles it into the cache.
    let check_config = swap.dir.path().join("check.toml");
    std::fs::write(&check_config, swap.config("a.wasm").replace("{port}", "0")).map_err(fail)?;
    let out = std::process::Command::new(&switchyard_e2e::artifacts().switchyard)
        .args(["policy", "check"])
        .arg(&switchyard_e2e::artifacts().by_client_policy)
        .arg("--config")
        .arg(&check_config)
        .output()
        .map_err(fail)?;
    let stdout = String::from_utf8_lossy(&out.stdout);
    check(
        out.status.success()
            && stdout.contains("imports:  switchyard:policy/host@0.1.0")
            && stdout.contains("selftest: 1 case(s) passed"),
        format!(
            "policy check: {stdout}{}",
            String::from_utf8_lossy(&out.stderr)
        ),
    )?;
    // Two clients log in continuously, one session after the other.
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let port = proxy.port;
    let clients: Vec<_> = (0..2)
        .map(|_| {
            let stop = Arc::clone(&stop);
            std::thread::spawn(move || {
                let (mut ok, mut failed) = (0u32, Vec::new());
                let rt = runtime();
                while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                    let r = rt.block_on(async {
                        let mut c = Conn::new(opts(port, SLAVE_USER, None)).await?;
                        let id: Option<u32> = c.query_first("SELECT @@server_id").await?;
                        c.disconnect().await?;
                        Ok::<_, mysql_async::Error>(id)
                    });
                    match r {
                        Ok(_) => ok += 1,
                        Err(e) => failed.push(e.to_string()),
                    }
                }
                (ok, failed)
            })
        })
        .collect();
    let mut module = "a.wasm";
    let result: TestResult = (|| {
        for i in 0..10 {
            // Odd swaps bring in the by-client policy (mysqlslave → the
            // primary), even ones the default policy back (→ a replica).
            let (bytes, to_primary) = if i % 2 == 0 {
                (&by_client, true)
            } else {
                (&default, false)
            };
            let started = Instant::now();
            match i % 3 {
                0 => swap.write_module(module, bytes)?,
                1 => {
                    module = if module == "a.wasm" {
                        "b.wasm"
                    } else {
                        "a.wasm"
                    };
                    swap.write_module(module, bytes)?;
                    proxy.rewrite_config(&swap.config(module)).map_err(fail)?;
                    proxy.signal(libc::SIGHUP);
                }
                _ => {
                    let (code, body) =
                        http(swap.setup.admin(), "POST", "/policy", Some(TOKEN), bytes)
                            .map_err(fail)?;
                    check(code == 200, format!("{code} {body}"))?;
                }
            }
            let how = ["file change", "SIGHUP", "admin endpoint"][i % 3];
            loop {
                let id = login_ids(&proxy, SLAVE_USER, 1)?[0];
                if (id == PRIMARY_ID) == to_primary {
                    break;
                }
                check(
                    started.elapsed() < Duration::from_secs(1),
                    format!("swap {i} by {how}: new logins still on the old policy after 1 s"),
                )?;
            }
            eprintln!("swap {i} by {how}: followed after {:?}", started.elapsed());
            // Let the clients log in under this policy for a moment.
            std::thread::sleep(Duration::from_millis(150));
        }
        Ok(())
    })();
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let mut total = 0;
    for c in clients {
        let (ok, failed) = c.join().map_err(|_| "client thread panicked")?;
        check(
            failed.is_empty(),
            format!("failed logins during swaps: {failed:?}"),
        )?;
        total += ok;
    }
    result?;
    check(total > 20, format!("only {total} logins during the swaps"))?;
    eprintln!("{total} logins during ten swaps, none failed");
    Ok(())
}

fn broken_policies_are_refused(env: &Env) -> TestResult {
    let swap = SwapSetup::new(env, "\"mode.selfcheck\" = \"panic\"")?;
    let proxy = Proxy::start(&swap.config("a.wasm")).map_err(fail)?;
    let artifacts = switchyard_e2e::artifacts();
    let post = |bytes: &[u8]| http(swap.setup.admin(), "POST", "/policy", Some(TOKEN), bytes);
    let serving = || -> TestResult {
        let ids = login_ids(&proxy, SLAVE_USER, 2)?;
        check(
            ids.iter().all(|id| REPLICA_IDS.contains(id)),
            format!("the default policy still serves: {ids:?}"),
        )
    };
    let forbidden = std::fs::read(&artifacts.forbidden_policy).map_err(fail)?;
    // A component that exports nothing: the wrong world.
    let empty_component = b"\0asm\x0d\x00\x01\x00".to_vec();
    // The misbehave policy panics for the self-test's user.
    let failing_selftest = std::fs::read(&artifacts.misbehave_policy).map_err(fail)?;
    for (bytes, why) in [
        (b"not wasm at all".to_vec(), "not a WebAssembly module"),
        (empty_component, "does not export `route`"),
        (forbidden.clone(), "imports `evil:net/socket`"),
        (failing_selftest, "self-test 1"),
    ] {
        let (code, body) = post(&bytes).map_err(fail)?;
        check(
            code == 400 && body.contains(why),
            format!("expected 400 naming '{why}': {code} {body}"),
        )?;
        proxy
            .wait_for_log(why, Duration::from_secs(1))
            .map_err(fail)?;
        serving()?;
    }
    // The same through the watched file.
    swap.write_module("a.wasm", &forbidden)?;
    wait_until(
        "the changed file is refused",
        Duration::from_secs(5),
        || Ok(proxy.log().matches("imports `evil:net/socket`").count() >= 2),
    )?;
    serving()?;
    let m = metrics(&swap.setup)?;
    check(
        m.get("switchyard_policy_swaps_total{result=\"failed\"}") == Some(&5.0)
            && m.get("switchyard_policy_swaps_total{result=\"ok\"}") == Some(&0.0),
        format!("{m:?}"),
    )
}

fn hostile_policies_reroute_per_on_error(env: &Env) -> TestResult {
    let mut setup = Setup::new(&env.topology());
    setup.tail = "\"mode.loop\" = \"loop\"\n\"mode.bomb\" = \"memory\"\n\"mode.panic\" = \"panic\"\n\"mode.huge\" = \"huge\"\n".into();
    let user = |name: &str| {
        format!(
            "[[users]]\nname = \"{name}\"\npassword_hash = \"{}\"\n",
            PasswordHash::of_password(MASTER_USER.1.as_bytes())
        )
    };
    // Accounts that exist on the backends under these names: log in as
    // mysqlmaster's password, but the backend login is as the same user, so
    // create them there.
    let names = ["loop", "bomb", "panic", "huge"];
    {
        let t = env.topology();
        for n in names {
            t.primary.sql(&format!(
                "CREATE USER IF NOT EXISTS '{n}'@'%' IDENTIFIED BY '{}'",
                MASTER_USER.1
            ));
        }
        t.sync_replicas().map_err(fail)?;
    }
    setup.top = names.iter().map(|n| user(n)).collect::<String>();
    setup.policy_timeout_ms = 200;
    let config = setup.config().replace(
        "module = \"{policy}\"",
        "module = \"{misbehave}\"\non_error = \"pool:master\"\n\
             instances = \"reuse\"\nreuse_calls = 3",
    );
    // [[users]] tables must come after the top-level keys: move them.
    let proxy = Proxy::start(&config).map_err(fail)?;
    for n in names {
        let ids = login_ids(&proxy, (n, MASTER_USER.1), 1)?;
        check(
            ids == [PRIMARY_ID],
            format!("{n}: rerouted to the primary: {ids:?}"),
        )?;
    }
    proxy
        .wait_for_log("per on_error", Duration::from_secs(1))
        .map_err(fail)?;
    proxy
        .wait_for_log("instances=\"reuse\"", Duration::from_secs(1))
        .map_err(fail)?;
    // Instances that trapped are never reused: each hostile login traps
    // again, on a fresh instance, and is rerouted again.
    for n in names {
        let ids = login_ids(&proxy, (n, MASTER_USER.1), 1)?;
        check(ids == [PRIMARY_ID], format!("{n} again: {ids:?}"))?;
    }
    // Others are served as usual meanwhile.
    check(
        login_ids(&proxy, SLAVE_USER, 2)?
            .iter()
            .all(|id| REPLICA_IDS.contains(id)),
        "other users unaffected",
    )?;
    let m = metrics(&setup)?;
    check(
        m.get("switchyard_policy_errors_total") == Some(&8.0),
        format!("{m:?}"),
    )
}

fn compile_cache_on_disk(env: &Env) -> TestResult {
    let swap = SwapSetup::new(env, "")?;
    let cache = swap.dir.path().join("cache");
    let mut first = Proxy::start(&swap.config("a.wasm")).map_err(fail)?;
    first
        .wait_for_log("code=\"compiled\"", Duration::from_secs(1))
        .map_err(fail)?;
    first.terminate();
    let entries: Vec<_> = std::fs::read_dir(&cache)
        .map_err(fail)?
        .filter_map(|e| e.ok())
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.ends_with(".cwasm"))
        .collect();
    check(entries.len() == 1, format!("cache entries: {entries:?}"))?;
    let second = Proxy::start(&swap.config("a.wasm")).map_err(fail)?;
    second
        .wait_for_log("code=\"disk cache\"", Duration::from_secs(1))
        .map_err(fail)?;
    check(
        login_ids(&second, SLAVE_USER, 2)?
            .iter()
            .all(|id| REPLICA_IDS.contains(id)),
        "the cached policy routes",
    )
}

fn users_loaded_from_the_primary(env: &Env) -> TestResult {
    let mut setup = Setup::new(&env.topology());
    // A route for the account the test creates on the primary later.
    setup.tail = "\"user.newcomer\" = \"replicas\"\n\"user.hostbound\" = \"replicas\"\n\
                  \"user.locked\" = \"replicas\"\n"
        .into();
    env.topology().primary.sql(
        "CREATE USER IF NOT EXISTS 'svc'@'%' IDENTIFIED BY 'svcpass';
         GRANT SELECT ON mysql.global_priv TO 'svc'@'%';
         CREATE USER 'hostbound'@'127.0.0.1' IDENTIFIED BY 'boundpass';
         GRANT SELECT ON app.* TO 'hostbound'@'127.0.0.1';
         CREATE USER 'locked'@'%' IDENTIFIED BY 'lockedpass' ACCOUNT LOCK;",
    );
    env.topology().sync_replicas().map_err(fail)?;
    // The file lists only mysqlmaster, with another password than the
    // servers have: the file's account wins over the loaded one.
    let accounts = format!(
        "[users]\nsource = \"backend\"\npool = \"master\"\nrefresh_ms = 60000\nmin_refresh_ms = 1000\n\
         user = \"svc\"\npassword_sha1 = \"{}\"\n[[users.accounts]]\nname = \"mysqlmaster\"\npassword_hash = \"{}\"\n",
        Sha1Password::of_password(b"svcpass").to_hex(),
        PasswordHash::of_password(b"filepass"),
    );
    let config = setup.config();
    let start = config.find("[[users]]").ok_or("no users in the config")?;
    let end = config.find("[pools.").ok_or("no pools")?;
    let config = format!("{}{accounts}{}", &config[..start], &config[end..]);
    let proxy = Proxy::start(&config).map_err(fail)?;
    // Loaded at start: mysqlslave is not in the file.
    let ids = login_ids(&proxy, SLAVE_USER, 2).map_err(|e| {
        fail(format!(
            "{}\n{}",
            e.message().unwrap_or_default(),
            proxy.log()
        ))
    })?;
    check(
        ids.iter().all(|id| REPLICA_IDS.contains(id)),
        format!("{ids:?}"),
    )?;
    // The file wins: the servers' password is refused by the proxy itself,
    // before any backend connection.
    let (code, _) = login_error(&proxy, MASTER_USER)?;
    check(code == 1045, format!("file account wins: {code}"))?;
    let (code, _) = login_error(&proxy, (SLAVE_USER.0, "wrong"))?;
    check(
        code == 1045,
        format!("wrong password of a loaded account: {code}"),
    )?;
    let result: TestResult = (|| {
        // Host restrictions hold against the client's address, not the
        // proxy's (which is what the backend sees).
        let addr: std::net::SocketAddr = ([127, 0, 0, 1], proxy.port).into();
        let from = |ip: &str, user: (&str, &str)| -> Result<LoginOutcome, Failed> {
            let mut raw = RawClient::connect_from(addr, ip.parse().map_err(fail)?)?;
            Ok(raw.login(user.0, user.1, None, "mysql_native_password")?)
        };
        match from("127.0.0.1", ("hostbound", "boundpass"))? {
            LoginOutcome::Ok(_) => {}
            other => return Err(format!("hostbound from 127.0.0.1: {other:?}").into()),
        }
        match from("127.0.0.2", ("hostbound", "boundpass"))? {
            LoginOutcome::Err(e, _) if e.code == 1045 => {}
            other => return Err(format!("hostbound from 127.0.0.2: {other:?}").into()),
        }
        // Locked accounts and passwordless system accounts are not loaded.
        let (code, _) = login_error(&proxy, ("locked", "lockedpass"))?;
        check(code == 1045, format!("locked account: {code}"))?;
        let (code, _) = login_error(&proxy, ("mariadb.sys", ""))?;
        check(code == 1045, format!("mariadb.sys: {code}"))?;
        Ok(())
    })();
    env.topology()
        .primary
        .sql("DROP USER 'hostbound'@'127.0.0.1'; DROP USER 'locked'@'%';");
    if let Err(e) = result {
        env.topology().primary.sql("DROP USER 'svc'@'%';");
        return Err(fail(format!(
            "{}\n{}",
            e.message().unwrap_or_default(),
            proxy.log()
        )));
    }
    // A user created on the primary logs in once the accounts are read
    // again, which an unknown user's login asks for (in the background:
    // that login itself is refused as unknown).
    env.topology().primary.sql(
        "CREATE USER 'newcomer'@'%' IDENTIFIED BY 'newpass';
         GRANT SELECT ON app.* TO 'newcomer'@'%';",
    );
    env.topology().sync_replicas().map_err(fail)?;
    let result: TestResult = (|| {
        // It logs in, through the policy, to a replica, within a few
        // refreshes (unknown-user refreshes are at least a second apart).
        let deadline = Instant::now() + Duration::from_secs(5);
        let ids = loop {
            match login_ids(&proxy, ("newcomer", "newpass"), 1) {
                Ok(ids) => break ids,
                Err(e) if Instant::now() > deadline => return Err(e),
                Err(_) => std::thread::sleep(Duration::from_millis(200)),
            }
        };
        check(
            ids.iter().all(|id| REPLICA_IDS.contains(id)),
            format!("newcomer: {ids:?}\n{}", proxy.log()),
        )?;
        let (code, _) = login_error(&proxy, ("newcomer", "wrongpass"))?;
        check(code == 1045, format!("{code}"))?;
        let s = status(&setup)?;
        check(
            s["accounts_loaded_from_primary"].as_u64() >= Some(4),
            format!("{s}"),
        )?;
        Ok(())
    })();
    env.topology()
        .primary
        .sql("DROP USER 'newcomer'@'%'; DROP USER 'svc'@'%';");
    result
}

fn second_listener_own_policy(env: &Env) -> TestResult {
    let mut setup = Setup::new(&env.topology());
    let second = free_port();
    setup.tail = format!(
        "[policies.by-client]\nmodule = \"{{by_client}}\"\n\
         [policies.by-client.settings]\n\"client.127.0.0.0/8\" = \"master\"\n\
         [[listeners]]\nlisten = \"127.0.0.1:{second}\"\npolicy = \"by-client\"\n"
    );
    let proxy = Proxy::start(&setup.config()).map_err(fail)?;
    let on = |port: u16| -> Result<Vec<u32>, Failed> {
        block_on(async {
            let mut ids = Vec::new();
            for _ in 0..2 {
                let mut c = Conn::new(opts(port, SLAVE_USER, None))
                    .await
                    .map_err(fail)?;
                ids.push(server_id(&mut c).await?);
                c.disconnect().await.map_err(fail)?;
            }
            Ok(ids)
        })
    };
    let main = on(proxy.port)?;
    check(
        main.iter().all(|id| REPLICA_IDS.contains(id)),
        format!("main listener, default policy: {main:?}"),
    )?;
    check(
        on(second)? == [PRIMARY_ID, PRIMARY_ID],
        "second listener routes by client address",
    )?;
    // Swap the second listener's policy only.
    let default = std::fs::read(&switchyard_e2e::artifacts().default_policy).map_err(fail)?;
    let (code, body) = http(
        setup.admin(),
        "POST",
        "/policies/by-client",
        Some(TOKEN),
        &default,
    )
    .map_err(fail)?;
    check(code == 200, format!("{code} {body}"))?;
    // The by-client table has no user settings: the default policy now
    // refuses mysqlslave there, while the main listener is unchanged.
    let err = block_on(Conn::new(opts(second, SLAVE_USER, None)))
        .err()
        .ok_or("login on the second listener should be refused")?;
    let (code, _, _) = server_error(err)?;
    check(code == 9100, format!("{code}"))?;
    check(
        on(proxy.port)?.iter().all(|id| REPLICA_IDS.contains(id)),
        "main listener unchanged",
    )?;
    let s = status(&setup)?;
    check(
        s["policies"]["by-client"]["name"]
            .as_str()
            .is_some_and(|n| n.starts_with("posted-")),
        format!("{s}"),
    )
}

fn replica_fallback_policy(env: &Env) -> TestResult {
    let mut setup = Setup::new(&env.topology());
    setup.tail = "\"fallback.replicas\" = \"master\"\n".into();
    let config = setup
        .config()
        .replace("module = \"{policy}\"", "module = \"{fallback}\"");
    let proxy = Proxy::start(&config).map_err(fail)?;
    let (r1, r2) = {
        let t = env.topology();
        (t.replicas[0].addr(), t.replicas[1].addr())
    };
    check(
        login_ids(&proxy, SLAVE_USER, 2)?
            .iter()
            .all(|id| REPLICA_IDS.contains(id)),
        "replicas while they are healthy",
    )?;
    // Drain both replicas: pools() reports no healthy backend in
    // "replicas", and the policy sends reads to the primary.
    let drain = |addr: std::net::SocketAddr, action: &str| {
        http(
            setup.admin(),
            "POST",
            &format!("/backends/{addr}/{action}"),
            Some(TOKEN),
            b"",
        )
        .map_err(fail)
    };
    drain(r1, "drain")?;
    drain(r2, "drain")?;
    let ids = login_ids(&proxy, SLAVE_USER, 2)?;
    drain(r1, "undrain")?;
    drain(r2, "undrain")?;
    check(
        ids == [PRIMARY_ID, PRIMARY_ID],
        format!("fallback to the primary: {ids:?}"),
    )?;
    proxy
        .wait_for_log("goes to 'master'", Duration::from_secs(1))
        .map_err(fail)?;
    check(
        login_ids(&proxy, SLAVE_USER, 2)?
            .iter()
            .all(|id| REPLICA_IDS.contains(id)),
        "back to the replicas",
    )
}

fn python_policy(env: &Env) -> TestResult {
    example_policy(env, &switchyard_e2e::artifacts().python_policy, "{python}")
}

fn javascript_policy(env: &Env) -> TestResult {
    example_policy(env, &switchyard_e2e::artifacts().js_policy, "{javascript}")
}

fn zig_policy(env: &Env) -> TestResult {
    example_policy(env, &switchyard_e2e::artifacts().zig_policy, "{zig}")
}

fn c_policy(env: &Env) -> TestResult {
    example_policy(env, &switchyard_e2e::artifacts().c_policy, "{c}")
}

fn go_policy(env: &Env) -> TestResult {
    example_policy(env, &switchyard_e2e::artifacts().go_policy, "{go}")
}

/// `switchyard policy route --statement`: the host's classification and
/// the built-in statement rule's decision, for a session in the state the
/// flags describe (the login's `route` answer still comes first).
fn policy_route_shows_the_statement_rule(_env: &Env) -> TestResult {
    let cases: [(&str, &[&str], &str); 6] = [
        ("SELECT * FROM t WHERE id = 1", &[], "built-in:  reader"),
        (
            "SELECT * FROM t WHERE id = 1",
            &["--in-transaction"],
            "built-in:  writer",
        ),
        (
            "SELECT 1",
            &["--in-transaction", "--read-only-transaction"],
            "built-in:  reader",
        ),
        ("SELECT 1", &["--autocommit-off"], "built-in:  writer"),
        ("SET NAMES utf8mb4", &[], "built-in:  all"),
        ("SET @x = 1; SELECT @x", &[], "pins (UserVariable)"),
    ];
    for (sql, flags, expected) in cases {
        let out = std::process::Command::new(&switchyard_e2e::artifacts().switchyard)
            .args([
                "policy",
                "route",
                "--user",
                "u",
                "--setting",
                "default=replicas",
            ])
            .args(["--statement", sql])
            .args(flags)
            .arg(&switchyard_e2e::artifacts().default_policy)
            .output()
            .map_err(fail)?;
        let text = String::from_utf8_lossy(&out.stdout);
        check(
            out.status.success() && text.contains("pool:    replicas") && text.contains(expected),
            format!(
                "{sql} {flags:?}: {text}{}",
                String::from_utf8_lossy(&out.stderr)
            ),
        )?;
    }
    // The transaction flags describe a statement's session: alone they are
    // refused.
    let out = std::process::Command::new(&switchyard_e2e::artifacts().switchyard)
        .args(["policy", "route", "--user", "u", "--in-transaction"])
        .arg(&switchyard_e2e::artifacts().default_policy)
        .output()
        .map_err(fail)?;
    check(
        !out.status.success(),
        "--in-transaction without --statement",
    )
}

/// Routes real logins through an example policy of another language
/// (`placeholder` names its module in configs).
fn example_policy(env: &Env, module: &std::path::Path, placeholder: &str) -> TestResult {
    check(
        module.exists(),
        format!("{} is missing: run scripts/test.sh", module.display()),
    )?;
    // An IPv4 client seen through a dual-stack listener ([::ffff:a.b.c.d])
    // is denied as that IPv4 client (the examples let it through before).
    for client in [
        "10.1.2.3:5000",
        "[::ffff:10.1.2.3]:5000",
        "[::FFFF:10.9.9.9]:1",
    ] {
        let out = std::process::Command::new(&switchyard_e2e::artifacts().switchyard)
            .args(["policy", "route", "--user", "u", "--client", client])
            .args([
                "--setting",
                "deny=10.0.0.0/8",
                "--setting",
                "default=replicas",
            ])
            .arg(module)
            .output()
            .map_err(fail)?;
        let text = String::from_utf8_lossy(&out.stdout);
        check(
            text.contains("are not allowed"),
            format!("{client} not denied: {text}"),
        )?;
    }
    let mut setup = Setup::new(&env.topology());
    let second = free_port();
    // The same module twice: for `listen`, and with loopback denied for a
    // second listener (one compile: the engine caches it by hash).
    setup.tail = format!(
        "[policies.strict]\nmodule = \"{placeholder}\"\nmemory_limit_mib = 64\ntimeout_ms = 3000\n\
         [policies.strict.settings]\ndeny = \"10.0.0.0/8, 127.0.0.0/8\"\n\"user.mysqlslave\" = \"replicas\"\n\
         [[listeners]]\nlisten = \"127.0.0.1:{second}\"\npolicy = \"strict\"\n"
    );
    let config = setup.config().replace(
        "module = \"{policy}\"",
        &format!("module = \"{placeholder}\"\nmemory_limit_mib = 64"),
    );
    let proxy = Proxy::start(&config).map_err(fail)?;
    let ids = login_ids(&proxy, SLAVE_USER, 4)?;
    check(
        ids.iter().all(|id| REPLICA_IDS.contains(id)),
        format!("{ids:?}"),
    )?;
    check(
        login_ids(&proxy, MASTER_USER, 1)? == [PRIMARY_ID],
        "master routed by the example policy",
    )?;
    let (code, msg) = login_error(&proxy, ("outsider", "outsiderpass"))?;
    check(
        code == 9100 && msg.contains("no pool is configured for user 'outsider'"),
        format!("{code} {msg}"),
    )?;
    let err = block_on(Conn::new(opts(second, SLAVE_USER, None)))
        .err()
        .ok_or("the strict listener should refuse loopback clients")?;
    let (code, _, msg) = server_error(err)?;
    check(
        code == 9100 && msg.contains("are not allowed"),
        format!("{code} {msg}"),
    )?;
    // Posted to the admin endpoint as it is: the Go (2 MiB), JavaScript
    // (12 MiB) and Python (18 MiB) modules are over the 1 MiB that
    // `/policies/{name}` once took.
    let bytes = std::fs::read(module).map_err(fail)?;
    let (code, body) = http(
        setup.admin(),
        "POST",
        "/policies/strict",
        Some(TOKEN),
        &bytes,
    )
    .map_err(fail)?;
    check(
        code == 200,
        format!("posting {} bytes: {code} {body}", bytes.len()),
    )?;
    // The proxy chose fresh or reused instances by what the guest costs,
    // and said so.
    proxy
        .wait_for_log("instances=", Duration::from_secs(1))
        .map_err(fail)
}

/// A self-signed certificate for `cn` (openssl CLI) in `dir`.
fn certificate(
    dir: &std::path::Path,
    cn: &str,
) -> Result<(std::path::PathBuf, std::path::PathBuf), Failed> {
    let (cert, key) = (dir.join(format!("{cn}.crt")), dir.join(format!("{cn}.key")));
    let out = std::process::Command::new("openssl")
        .args([
            "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1",
        ])
        .arg("-subj")
        .arg(format!("/CN={cn}"))
        .arg("-keyout")
        .arg(&key)
        .arg("-out")
        .arg(&cert)
        .output()
        .map_err(fail)?;
    check(
        out.status.success(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )?;
    Ok((cert, key))
}

/// The subject of the certificate a MySQL server at `port` presents
/// (`openssl s_client -starttls mysql`).
fn presented_subject(port: u16) -> Result<String, Failed> {
    let out = std::process::Command::new("openssl")
        .args(["s_client", "-starttls", "mysql", "-connect"])
        .arg(format!("127.0.0.1:{port}"))
        .stdin(std::process::Stdio::null())
        .output()
        .map_err(fail)?;
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    text.lines()
        .find(|l| l.starts_with("subject="))
        .map(str::to_owned)
        .ok_or_else(|| fail(format!("no certificate from s_client: {text}")))
}

/// The usual setup with TLS for clients (`cert`, `key`), `mysqlmaster`
/// required to use it, and `tail` (more tables) at the end.
fn tls_only_master(
    env: &Env,
    (cert, key): (&std::path::Path, &std::path::Path),
    tail: &str,
) -> String {
    let mut setup = Setup::new(&env.topology());
    setup.tail = format!(
        "[tls]\ncert = \"{}\"\nkey = \"{}\"\n{tail}",
        cert.display(),
        key.display()
    );
    setup.config().replacen(
        &format!("name = \"{}\"\n", MASTER_USER.0),
        &format!("name = \"{}\"\nrequire_tls = true\n", MASTER_USER.0),
        1,
    )
}

/// The first login and COM_CHANGE_USER go through one login gate: a user
/// that must use TLS, with the right password over plaintext, gets the same
/// 1045 on both, and both count towards the address's throttle (with
/// `max_failures = 2`, one of each blocks the address). Counting the right
/// password too keeps the throttle from telling it from a wrong one.
fn both_logins_share_the_tls_rule_and_the_throttle(env: &Env) -> TestResult {
    let dir = tempfile::tempdir().map_err(fail)?;
    let (cert, key) = certificate(dir.path(), "switchyard-gate")?;
    let throttle = "[throttle]\nmax_failures = 2\nwindow_ms = 60000\nblock_ms = 60000\n";
    let config = tls_only_master(env, (&cert, &key), throttle);
    let proxy = Proxy::start(&config).map_err(fail)?;
    let me: std::net::IpAddr = "127.0.0.31".parse().map_err(fail)?;
    let native = "mysql_native_password";
    // A plaintext session of a user that may use it, for COM_CHANGE_USER.
    let mut session = RawClient::connect_from(proxy.addr(), me)?;
    match session.login(SLAVE_USER.0, SLAVE_USER.1, None, native)? {
        LoginOutcome::Ok(_) => {}
        other => return Err(format!("plaintext login: {other:?}").into()),
    }
    // The first login: the right password, no TLS.
    let mut first = RawClient::connect_from(proxy.addr(), me)?;
    let first_err = match first.login(MASTER_USER.0, MASTER_USER.1, None, native)? {
        LoginOutcome::Err(e, _) => e,
        other => return Err(format!("plaintext login of the TLS user: {other:?}").into()),
    };
    // COM_CHANGE_USER to the same user, right password, no TLS.
    let nonce = session.nonce.clone();
    session.write_raw(&RawClient::change_user_packet(
        MASTER_USER.0,
        MASTER_USER.1,
        &nonce,
        None,
    ))?;
    let p = session.expect_packet()?;
    let change_err = ErrPacket::decode(&p.payload).map_err(|e| fail(format!("{e}: {p:?}")))?;
    for (path, e) in [("login", &first_err), ("COM_CHANGE_USER", &change_err)] {
        check(
            e.code == 1045
                && e.message
                    == format!(
                        "Access denied for user '{}'@'127.0.0.31' (using password: YES)",
                        MASTER_USER.0
                    ),
            format!("{path}: {e:?}"),
        )?;
    }
    // One failure on each path: the address is blocked.
    let mut after = RawClient::connect_from(proxy.addr(), me)?;
    let p = after.expect_packet()?;
    check(
        ErrPacket::is_err(&p.payload) && u16::from_le_bytes([p.payload[1], p.payload[2]]) == 1129,
        format!("after one failure on each path: {p:?}"),
    )
}

fn tls_for_clients(env: &Env) -> TestResult {
    let dir = tempfile::tempdir().map_err(fail)?;
    let (cert, key) = certificate(dir.path(), "switchyard-one")?;
    // mysqlmaster must use TLS; mysqlslave may.
    let config = tls_only_master(env, (&cert, &key), "");
    let proxy = Proxy::start(&config).map_err(fail)?;
    let port = proxy.port.to_string();
    let cli = |user: (&str, &str), tls: bool| {
        let password = format!("-p{}", user.1);
        let mut args = vec!["-h", "127.0.0.1", "-P", &port, "-u", user.0, &password];
        args.push(if tls { "--ssl" } else { "--skip-ssl" });
        let args: Vec<String> = args.into_iter().map(str::to_owned).collect();
        let refs: Vec<&str> = args.iter().map(String::as_str).collect();
        switchyard_e2e::mariadb_cli(&refs, "status\nSELECT CONCAT('id=', @@server_id);\n")
    };
    let out = cli(SLAVE_USER, true);
    let text = String::from_utf8_lossy(&out.stdout);
    check(
        out.status.success()
            && text.contains("Cipher in use")
            && (text.contains("id=2") || text.contains("id=3")),
        format!(
            "TLS session: {text}{}",
            String::from_utf8_lossy(&out.stderr)
        ),
    )?;
    let out = cli(SLAVE_USER, false);
    let text = String::from_utf8_lossy(&out.stdout);
    check(
        out.status.success() && text.contains("Not in use"),
        format!(
            "plaintext session: {text}{}",
            String::from_utf8_lossy(&out.stderr)
        ),
    )?;
    // A user that must use TLS: refused in plaintext as a wrong password
    // would be, served over TLS.
    let out = cli(MASTER_USER, false);
    let err = String::from_utf8_lossy(&out.stderr);
    check(
        !out.status.success() && err.contains("1045"),
        format!("plaintext login of a TLS-only user: {err}"),
    )?;
    proxy
        .wait_for_log("must log in over TLS", Duration::from_secs(1))
        .map_err(fail)?;
    let out = cli(MASTER_USER, true);
    let text = String::from_utf8_lossy(&out.stdout);
    check(
        out.status.success() && text.contains("id=1"),
        format!(
            "TLS login of a TLS-only user: {text}{}",
            String::from_utf8_lossy(&out.stderr)
        ),
    )?;
    // A new certificate takes effect on SIGHUP.
    check(
        presented_subject(proxy.port)?.contains("switchyard-one"),
        "first certificate",
    )?;
    let (cert2, key2) = certificate(dir.path(), "switchyard-two")?;
    std::fs::rename(cert2, &cert).map_err(fail)?;
    std::fs::rename(key2, &key).map_err(fail)?;
    proxy.signal(libc::SIGHUP);
    proxy
        .wait_for_log("configuration reloaded", Duration::from_secs(10))
        .map_err(fail)?;
    check(
        presented_subject(proxy.port)?.contains("switchyard-two"),
        "the reloaded certificate",
    )
}

/// A standalone server with TLS (a certificate for IP 127.0.0.1 signed by
/// a CA, both kept in `dir`), an account `tlsuser` and the monitor account
/// that must use it; its port and the CA's certificate.
fn tls_server(
    dir: &std::path::Path,
) -> Result<(switchyard_e2e::MariaDb, u16, std::path::PathBuf), Failed> {
    let TlsFiles { cert, key, ca } = ca_signed_certificate(dir)?;
    let port = free_port();
    let server = switchyard_e2e::MariaDb::standalone(
        &dir.join("secure"),
        port,
        &[
            &format!("--ssl-cert={}", cert.display()),
            &format!("--ssl-key={}", key.display()),
        ],
    )
    .map_err(fail)?;
    server.sql(&format!(
        "CREATE USER 'tlsuser'@'%' IDENTIFIED BY 'tlspass' REQUIRE SSL;
         CREATE USER '{m}'@'%' IDENTIFIED BY '{p}' REQUIRE SSL;
         GRANT SLAVE MONITOR ON *.* TO '{m}'@'%';",
        m = MONITOR.0,
        p = MONITOR.1
    ));
    Ok((server, port, ca))
}

/// Kept backend sessions carry the TLS they were opened with: a login
/// through a pool whose TLS settings differ (certificate verification on,
/// with the server's CA) never takes over a session opened without
/// verification, while a login through that same pool does.
fn kept_sessions_keep_their_tls(env: &Env) -> TestResult {
    let dir = tempfile::tempdir().map_err(fail)?;
    let (server, port, ca) = tls_server(dir.path())?;
    server.sql("CREATE USER 'laxuser'@'%' IDENTIFIED BY 'laxpass' REQUIRE SSL;");
    let mut setup = Setup::new(&env.topology());
    // One worker: kept sessions and later logins meet on it.
    setup.top = format!(
        "threads = 1\n[[users]]\nname = \"tlsuser\"\npassword_hash = \"{}\"\n\
         [[users]]\nname = \"laxuser\"\npassword_hash = \"{}\"\n",
        PasswordHash::of_password(b"tlspass"),
        PasswordHash::of_password(b"laxpass"),
    );
    let keep = "idle_sessions = 2\nidle_session_ms = 60000\n";
    setup.pools += &format!(
        "[pools.lax]\nbackends = [\"127.0.0.1:{port}\"]\ntls = \"required\"\ntls_verify = false\n{keep}\
         [pools.strict]\nbackends = [\"127.0.0.1:{port}\"]\ntls = \"required\"\ntls_verify = true\n\
         tls_ca = \"{}\"\n{keep}",
        ca.display()
    );
    setup.tail = "\"user.tlsuser\" = \"strict\"\n\"user.laxuser\" = \"lax\"\n".into();
    let proxy = Proxy::start(&setup.config()).map_err(fail)?;
    // The backend's thread id (the same after a takeover) and the cipher.
    let session = |user: (&str, &str)| {
        block_on(async {
            let mut c = Conn::new(opts(proxy.port, user, None))
                .await
                .map_err(fail)?;
            let id: Option<u64> = c
                .query_first("SELECT CONNECTION_ID()")
                .await
                .map_err(fail)?;
            let cipher: Option<(String, String)> = c
                .query_first("SHOW SESSION STATUS LIKE 'Ssl_cipher'")
                .await
                .map_err(fail)?;
            c.disconnect().await.map_err(fail)?;
            Ok::<_, Failed>((id.unwrap_or(0), cipher.map(|c| c.1).unwrap_or_default()))
        })
    };
    let kept = "switchyard_backend_sessions_kept_total{result=\"kept\"}";
    let (lax, _) = session(("laxuser", "laxpass"))?;
    wait_for_metric(&setup, kept, 1.0)?;
    // The same pool takes its kept session over.
    let (again, _) = session(("laxuser", "laxpass"))?;
    check(
        again == lax,
        format!("lax pool: thread {again}, kept {lax}"),
    )?;
    wait_for_metric(&setup, kept, 2.0)?;
    // The verifying pool opens its own.
    let (strict, cipher) = session(("tlsuser", "tlspass"))?;
    check(
        strict != lax && !cipher.is_empty(),
        format!("strict pool: thread {strict} (lax kept {lax}), cipher '{cipher}'"),
    )?;
    wait_for_metric(&setup, kept, 3.0)?;
    // The lax session was left alone.
    let (last, _) = session(("laxuser", "laxpass"))?;
    check(
        last == lax,
        format!("lax pool again: thread {last}, kept {lax}"),
    )?;
    drop(proxy);
    drop(server);
    Ok(())
}

fn tls_towards_backends(env: &Env) -> TestResult {
    let dir = tempfile::tempdir().map_err(fail)?;
    // A server with TLS, and an account that must use it.
    let (server, port, _) = tls_server(dir.path())?;
    let mut setup = Setup::new(&env.topology());
    let addrs = {
        let t = env.topology();
        (t.primary.addr(), t.replicas[0].addr(), t.replicas[1].addr())
    };
    setup.top = format!(
        "[[users]]\nname = \"tlsuser\"\npassword_hash = \"{}\"\n",
        PasswordHash::of_password(b"tlspass")
    );
    setup.pools = format!(
        "[pools.master]\nbackends = [\"{p}\"]\n\
         [pools.replicas]\nbackends = [\"{r1}\", \"{r2}\"]\ntls = \"preferred\"\ntls_verify = false\n\
         [pools.secure]\nbackends = [\"127.0.0.1:{port}\"]\ntls = \"required\"\ntls_verify = false\n",
        p = addrs.0,
        r1 = addrs.1,
        r2 = addrs.2,
    );
    setup.tail = "\"user.tlsuser\" = \"secure\"\n".into();
    let proxy = Proxy::start(&setup.config()).map_err(fail)?;
    // The client speaks plaintext to Switchyard; Switchyard speaks TLS to
    // the backend, which would refuse it otherwise.
    let (cipher, backend_port): (String, u16) = block_on(async {
        let mut c = Conn::new(opts(proxy.port, ("tlsuser", "tlspass"), None))
            .await
            .map_err(fail)?;
        let row: Option<(String, String)> = c
            .query_first("SHOW SESSION STATUS LIKE 'Ssl_cipher'")
            .await
            .map_err(fail)?;
        let port: Option<u16> = c.query_first("SELECT @@port").await.map_err(fail)?;
        c.disconnect().await.map_err(fail)?;
        Ok::<_, Failed>((row.map(|r| r.1).unwrap_or_default(), port.unwrap_or(0)))
    })?;
    check(
        !cipher.is_empty() && backend_port == port,
        format!("backend session cipher '{cipher}' on port {backend_port}"),
    )?;
    // The monitor account, which must use TLS there too, logs in over the
    // pool's TLS: the server's read_only becomes known.
    let read_only = format!("switchyard_backend_read_only{{backend=\"127.0.0.1:{port}\"}}");
    wait_until(
        "the monitor reads the TLS backend",
        Duration::from_secs(5),
        || Ok(metrics(&setup)?.get(&read_only) == Some(&0.0)),
    )?;
    // "preferred" towards servers without TLS: plain, and it works.
    check(
        login_ids(&proxy, SLAVE_USER, 2)?
            .iter()
            .all(|id| REPLICA_IDS.contains(id)),
        "preferred TLS falls back to plaintext",
    )?;
    // Without TLS towards it, the server's own refusal reaches the client.
    setup.pools = setup
        .pools
        .replace("tls = \"required\"\ntls_verify = false\n", "");
    setup.admin_port = free_port();
    let plain = Proxy::start(&setup.config()).map_err(fail)?;
    let (code, msg) = login_error(&plain, ("tlsuser", "tlspass"))?;
    check(code == 1045, format!("{code} {msg}"))?;
    drop(server);
    Ok(())
}

/// The value of metric `name` (0 when absent).
fn metric(setup: &Setup, name: &str) -> Result<f64, Failed> {
    Ok(metrics(setup)?.get(name).copied().unwrap_or(0.0))
}

/// Waits until metric `name` reaches `want`.
fn wait_for_metric(setup: &Setup, name: &str, want: f64) -> TestResult {
    wait_until(&format!("{name} is {want}"), Duration::from_secs(5), || {
        Ok(metric(setup, name)? == want)
    })
}

/// `idle_sessions`: a backend session whose client quit is kept and taken
/// over by the next login (another user, another pool on the same server)
/// with COM_CHANGE_USER, which authenticates the new user and resets the
/// session; one with an answer still under way is not kept; kept sessions
/// are closed after `idle_session_ms`.
fn kept_backend_sessions_hold_no_locks(env: &Env) -> TestResult {
    let topology = env.topology();
    let primary = topology.primary.addr();
    let mut setup = Setup::new(&topology);
    setup.top = "threads = 1".into();
    setup.pools = format!(
        "[pools.master]\nbackends = [\"{primary}\"]\nidle_sessions = 2\nidle_session_ms = 60000\n\
         [pools.replicas]\nbackends = [\"{primary}\"]\n"
    );
    let proxy = Proxy::start(&setup.config()).map_err(fail)?;
    topology.primary.sql(
        "CREATE TABLE IF NOT EXISTS app.held (x INT PRIMARY KEY); \
         INSERT IGNORE INTO app.held VALUES (1);",
    );
    // A client quits inside a transaction holding a row lock and a named
    // lock.
    block_on(async {
        let mut c = Conn::new(opts(proxy.port, MASTER_USER, Some("app")))
            .await
            .map_err(fail)?;
        c.query_drop("BEGIN").await.map_err(fail)?;
        c.query_drop("UPDATE app.held SET x = x WHERE x = 1")
            .await
            .map_err(fail)?;
        let got: Option<u32> = c
            .query_first("SELECT GET_LOCK('switchyard_kept', 0)")
            .await
            .map_err(fail)?;
        check(got == Some(1), "GET_LOCK")?;
        c.disconnect().await.map_err(fail)
    })?;
    wait_for_metric(
        &setup,
        "switchyard_backend_sessions_kept_total{result=\"kept\"}",
        1.0,
    )?;
    // Its backend session is kept, and holds nothing: the row and the
    // named lock are free for others at once.
    let out = topology.primary.try_sql(
        "SET SESSION innodb_lock_wait_timeout = 1; \
         UPDATE app.held SET x = x WHERE x = 1; \
         SELECT IS_FREE_LOCK('switchyard_kept');",
    );
    check(
        out.as_ref().is_ok_and(|o| o.trim() == "1"),
        format!("locks left on the kept session: {out:?}"),
    )?;
    check(
        metric(&setup, "switchyard_backend_sessions_idle")? == 1.0,
        "the session is kept",
    )
}

fn kept_backend_sessions(env: &Env) -> TestResult {
    let topology = env.topology();
    let primary = topology.primary.addr();
    let mut setup = Setup::new(&topology);
    // One worker: the kept session and the next login meet on it.
    setup.top = "threads = 1".into();
    setup.pools = format!(
        "[pools.master]\nbackends = [\"{primary}\"]\nidle_sessions = 2\nidle_session_ms = 3000\n\
         [pools.replicas]\nbackends = [\"{primary}\"]\nidle_sessions = 2\nidle_session_ms = 3000\n"
    );
    let proxy = Proxy::start(&setup.config()).map_err(fail)?;
    topology
        .primary
        .sql("CREATE TABLE IF NOT EXISTS app.kept (x INT); DELETE FROM app.kept;");
    let rt = runtime();
    // The first session leaves state behind: a variable, a temporary
    // table, a session setting and an open transaction.
    let first_thread: u32 = rt.block_on(async {
        let mut c = Conn::new(opts(proxy.port, MASTER_USER, Some("app")))
            .await
            .map_err(fail)?;
        c.query_drop(
            "SET @left = 42; CREATE TEMPORARY TABLE left_behind (x INT); \
             SET SESSION sql_mode = 'ANSI'; BEGIN; INSERT INTO app.kept VALUES (1)",
        )
        .await
        .map_err(fail)?;
        let id: Option<u32> = c
            .query_first("SELECT CONNECTION_ID()")
            .await
            .map_err(fail)?;
        c.disconnect().await.map_err(fail)?;
        id.ok_or_else(|| fail("no connection id"))
    })?;
    wait_for_metric(
        &setup,
        "switchyard_backend_sessions_kept_total{result=\"kept\"}",
        1.0,
    )?;
    check(
        metric(&setup, "switchyard_backend_sessions_idle")? == 1.0,
        "one session kept",
    )?;
    // The next login, as another user through another pool, takes it.
    rt.block_on(async {
        let mut c = Conn::new(opts(proxy.port, SLAVE_USER, Some("app")))
            .await
            .map_err(fail)?;
        let row: Option<(u32, String, Option<u32>, String)> = c
            .query_first(
                "SELECT CONNECTION_ID(), CURRENT_USER(), @left, \
                 @@session.sql_mode = @@global.sql_mode",
            )
            .await
            .map_err(fail)?;
        let (thread, user, left, mode_reset) = row.ok_or_else(|| fail("no row"))?;
        check(
            thread == first_thread,
            format!("thread {thread}, kept {first_thread}"),
        )?;
        check(user.starts_with(&format!("{}@", SLAVE_USER.0)), user)?;
        check(left.is_none(), format!("@left survived: {left:?}"))?;
        check(mode_reset == "1", "sql_mode not reset")?;
        match c.query_drop("SELECT * FROM left_behind").await {
            Ok(()) => return Err(fail("the temporary table survived")),
            Err(e) => check(server_error(e)?.0 == 1146, "the temporary table survived")?,
        }
        let rows: Option<u32> = c
            .query_first("SELECT COUNT(*) FROM app.kept")
            .await
            .map_err(fail)?;
        check(rows == Some(0), "the open transaction was not rolled back")?;
        c.disconnect().await.map_err(fail)
    })?;
    check(
        metric(&setup, "switchyard_backend_sessions_reused_total")? == 1.0,
        "one takeover",
    )?;
    wait_for_metric(
        &setup,
        "switchyard_backend_sessions_kept_total{result=\"kept\"}",
        2.0,
    )?;
    // A client that quits while its query runs: its session is not kept
    // (the reset that would make it clean is answered after the query),
    // and the next login gets a session that answers its own queries.
    let mut raw = raw_login(&proxy)?;
    raw.write_raw(&RawClient::query_packet("SELECT SLEEP(2), 'late answer'"))
        .map_err(fail)?;
    raw.write_raw(&RawClient::command_packet(&[0x01]))
        .map_err(fail)?;
    drop(raw);
    let mut unsettled = String::new();
    wait_until("the query runs", Duration::from_secs(2), || {
        unsettled = topology.primary.sql(
            "SELECT ID FROM information_schema.PROCESSLIST WHERE INFO LIKE 'SELECT SLEEP(2), %'",
        );
        Ok(!unsettled.is_empty())
    })?;
    wait_for_metric(
        &setup,
        "switchyard_backend_sessions_kept_total{result=\"not_clean\"}",
        1.0,
    )?;
    check(
        metric(
            &setup,
            "switchyard_backend_sessions_kept_total{result=\"kept\"}",
        )? == 2.0,
        "the unsettled session was kept",
    )?;
    let mut raw = raw_login(&proxy)?;
    let row = raw_query(&mut raw, "SELECT 'my answer', CONNECTION_ID()")?;
    check(
        row.first().and_then(Option::as_deref) == Some("my answer"),
        format!("{row:?}"),
    )?;
    let last_thread = row.get(1).cloned().flatten().unwrap_or_default();
    check(
        last_thread != unsettled,
        "the unsettled session was taken over",
    )?;
    raw.write_raw(&RawClient::command_packet(&[0x01]))
        .map_err(fail)?;
    wait_for_metric(
        &setup,
        "switchyard_backend_sessions_kept_total{result=\"kept\"}",
        3.0,
    )?;
    // A COM_CHANGE_USER that moves a session to another pool keeps the
    // backend session it leaves, and the next login of its shape takes it
    // (while the moved session is still open, so that its own backend
    // session is not the newest kept one).
    rt.block_on(async {
        let mut c = Conn::new(opts(proxy.port, MASTER_USER, Some("app")))
            .await
            .map_err(fail)?;
        let before: Option<u32> = c
            .query_first("SELECT CONNECTION_ID()")
            .await
            .map_err(fail)?;
        let before = before.ok_or_else(|| fail("no connection id"))?;
        c.query_drop("SET @moved_from = 1").await.map_err(fail)?;
        let change = mysql_async::ChangeUserOpts::default()
            .with_user(Some(SLAVE_USER.0.into()))
            .with_pass(Some(SLAVE_USER.1.into()))
            .with_db_name(Some("app".into()));
        c.change_user(change).await.map_err(fail)?;
        let after: Option<(u32, String)> = c
            .query_first("SELECT CONNECTION_ID(), CURRENT_USER()")
            .await
            .map_err(fail)?;
        let (after, user) = after.ok_or_else(|| fail("no row"))?;
        check(after != before, "the move did not open a backend session")?;
        check(user.starts_with(&format!("{}@", SLAVE_USER.0)), user)?;
        wait_for_metric(
            &setup,
            "switchyard_backend_sessions_kept_total{result=\"kept\"}",
            4.0,
        )?;
        let mut next = Conn::new(opts(proxy.port, MASTER_USER, Some("app")))
            .await
            .map_err(fail)?;
        let row: Option<(u32, Option<u32>)> = next
            .query_first("SELECT CONNECTION_ID(), @moved_from")
            .await
            .map_err(fail)?;
        let (thread, moved_from) = row.ok_or_else(|| fail("no row"))?;
        check(
            thread == before,
            format!("thread {thread}, left behind {before}"),
        )?;
        check(moved_from.is_none(), "@moved_from survived")?;
        next.disconnect().await.map_err(fail)?;
        c.disconnect().await.map_err(fail)
    })?;
    // Kept sessions are closed (with COM_QUIT) after idle_session_ms.
    wait_until("kept sessions are closed", Duration::from_secs(8), || {
        Ok(metric(&setup, "switchyard_backend_sessions_idle")? == 0.0)
    })?;
    wait_until("the backend thread ends", Duration::from_secs(3), || {
        Ok(topology.primary.sql(&format!(
            "SELECT COUNT(*) FROM information_schema.PROCESSLIST WHERE ID = {last_thread}"
        )) == "0")
    })
}

/// A raw client logged in through `proxy` as the master user.
fn raw_login(proxy: &Proxy) -> Result<RawClient, Failed> {
    let mut raw = RawClient::connect(proxy.addr()).map_err(fail)?;
    match raw
        .login(
            MASTER_USER.0,
            MASTER_USER.1,
            Some("app"),
            "mysql_native_password",
        )
        .map_err(fail)?
    {
        LoginOutcome::Ok(_) => Ok(raw),
        LoginOutcome::Err(e, _) => Err(fail(e.message)),
    }
}

/// The first row of `sql`'s answer, read by a raw client.
fn raw_query(raw: &mut RawClient, sql: &str) -> Result<Vec<Option<String>>, Failed> {
    raw.write_raw(&RawClient::query_packet(sql)).map_err(fail)?;
    let mut decoder = switchyard::protocol::ResultSetDecoder::new(false);
    loop {
        let p = raw.expect_packet().map_err(fail)?;
        match decoder.feed(&p.payload).map_err(fail)? {
            Some(switchyard::protocol::QueryReply::Rows(t)) => {
                return t.rows.into_iter().next().ok_or_else(|| fail("no row"));
            }
            Some(other) => return Err(fail(format!("{other:?}"))),
            None => {}
        }
    }
}

/// Policy calls run on the event loop until one is slow (over 5 ms) or
/// waits in a WASI call (sleeps); then that policy's calls move to blocking
/// threads, and every login is still answered. Writing to stdout never
/// waits (it goes nowhere), so a policy that prints stays.
fn policies_leave_the_event_loop(env: &Env) -> TestResult {
    const MOVED: &str = "this policy's calls run on blocking threads";
    for (mode, why) in [
        ("slow", Some("a call ran longer than 5 ms on an event loop")),
        (
            "sleep",
            Some("it waits in a WASI call (a clock or a poll) on an event loop"),
        ),
        ("print", None),
    ] {
        let mut setup = Setup::new(&env.topology());
        setup.tail = format!(
            "\"mode.{0}\" = \"{mode}\"\n\"sleep_ms.{0}\" = \"10\"\n",
            MASTER_USER.0
        );
        let config = setup.config().replace("{policy}", "{misbehave}");
        let proxy = Proxy::start(&config).map_err(fail)?;
        // Light calls first: they stay on the event loop.
        check(login_ids(&proxy, SLAVE_USER, 3)?.len() == 3, "light logins")?;
        check(
            !proxy.log().contains(MOVED),
            format!("moved too early: {}", proxy.log()),
        )?;
        // The slow or waiting one is answered, and moves the policy.
        let ids = login_ids(&proxy, MASTER_USER, 2)?;
        check(ids == [PRIMARY_ID, PRIMARY_ID], format!("{mode}: {ids:?}"))?;
        match why {
            Some(why) => {
                proxy
                    .wait_for_log(why, Duration::from_secs(2))
                    .map_err(fail)?;
                check(proxy.log().matches(why).count() == 1, "said once")?;
            }
            None => check(
                !proxy.log().contains(MOVED),
                format!("{mode} moved the policy: {}", proxy.log()),
            )?,
        }
        check(!proxy.log().contains("panicked"), "a panic was printed")?;
        check(login_ids(&proxy, SLAVE_USER, 2)?.len() == 2, "later logins")?;
        check(
            metric(&setup, "switchyard_policy_errors_total")? == 0.0,
            "policy errors",
        )?;
    }
    Ok(())
}

/// One login as `user` (client-side limit `limit`): the server id it
/// landed on and how long the login took, or what went wrong.
async fn timed_login(
    port: u16,
    user: (&str, &str),
    limit: Duration,
) -> Result<(u32, Duration), String> {
    let started = Instant::now();
    let login = async {
        let mut c = Conn::new(opts(port, user, None))
            .await
            .map_err(|e| e.to_string())?;
        let took = started.elapsed();
        let id = server_id(&mut c)
            .await
            .map_err(|e| e.message().unwrap_or_default().to_owned())?;
        c.disconnect().await.map_err(|e| e.to_string())?;
        Ok((id, took))
    };
    tokio::time::timeout(limit, login)
        .await
        .map_err(|_| format!("no answer in {limit:?}"))?
}

/// A policy that sleeps in a WASI call (a `wasi:clocks` pollable) is not
/// running wasm, so epoch interruption cannot stop it: the host-side
/// deadline must. More sleeping logins than call slots: each is answered
/// per `on_error` once its deadline passes, and other logins keep flowing
/// meanwhile.
fn sleeping_policies_time_out(env: &Env) -> TestResult {
    const SLOTS: usize = 2;
    const SLEEPERS: usize = 6;
    const OTHERS: usize = 10;
    let mut setup = Setup::new(&env.topology());
    setup.policy_timeout_ms = 300;
    // mysqlmaster's policy sleeps for an hour; when its call fails it goes
    // to the replicas, where its own answer would have been the primary.
    setup.tail = format!("\"mode.{}\" = \"sleep\"\n", MASTER_USER.0);
    let config = setup.config().replace(
        "module = \"{policy}\"",
        &format!(
            "module = \"{{misbehave}}\"\non_error = \"pool:replicas\"\nmax_concurrent_calls = {SLOTS}"
        ),
    );
    let proxy = Proxy::start(&config).map_err(fail)?;
    let limit = Duration::from_secs(6);
    let port = proxy.port;
    let started = Instant::now();
    let (sleepers, others) = block_on(async move {
        let sleepers: Vec<_> = (0..SLEEPERS)
            .map(|_| tokio::spawn(timed_login(port, MASTER_USER, limit)))
            .collect();
        // The sleepers hold every call slot by now.
        tokio::time::sleep(Duration::from_millis(100)).await;
        let mut others = Vec::new();
        for _ in 0..OTHERS {
            let login = timed_login(port, SLAVE_USER, limit).await;
            let failed = login.is_err();
            others.push(login);
            if failed {
                break;
            }
        }
        let mut slept = Vec::new();
        for s in sleepers {
            slept.push(s.await.unwrap_or_else(|e| Err(e.to_string())));
        }
        (slept, others)
    });
    let all_took = started.elapsed();
    let log = || proxy.log();
    // Each login waits at most for the sleepers ahead of it (three rounds
    // of two slots at 300 ms), then its own deadline.
    for (i, s) in sleepers.iter().enumerate() {
        match s {
            Ok((id, took)) => check(
                REPLICA_IDS.contains(id) && *took < Duration::from_millis(2500),
                format!("sleeper {i}: server {id} after {took:?} (want a replica per on_error)"),
            )?,
            Err(e) => return Err(fail(format!("sleeper {i}: {e}\n{}", log()))),
        }
    }
    for (i, o) in others.iter().enumerate() {
        match o {
            Ok((id, took)) => check(
                REPLICA_IDS.contains(id) && *took < Duration::from_millis(2500),
                format!("login {i}: server {id} after {took:?}"),
            )?,
            Err(e) => return Err(fail(format!("login {i}: {e}\n{}", log()))),
        }
    }
    check(
        all_took < Duration::from_secs(5),
        format!("everything took {all_took:?}"),
    )?;
    check(
        metric(&setup, "switchyard_policy_errors_total")? == SLEEPERS as f64,
        format!("policy errors: {:?}", metrics(&setup)?),
    )?;
    // The slots are free again: a login right after is answered at once.
    let ids = login_ids(&proxy, SLAVE_USER, 2)?;
    check(
        ids.iter().all(|id| REPLICA_IDS.contains(id)),
        format!("after: {ids:?}"),
    )
}
