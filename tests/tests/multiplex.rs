//! End-to-end leak suite of multiplexing: a real MariaDB primary and two
//! GTID replicas behind a multiplexed split pool with deliberately few
//! backend sessions (the primary takes 2, each replica 1), driven by
//! interleaved real clients (mysql_async, and raw clients with and without
//! state tracking). Every case checks both that backend sessions really
//! were shared (the clients met on one backend thread) and that no client
//! saw another's state or lost its own.

use std::collections::HashSet;
use std::sync::{Arc, Mutex};

use libtest_mimic::{Arguments, Failed};
use mysql_async::Conn;
use mysql_async::prelude::*;

use switchyard::auth::Sha1Password;
use switchyard_e2e::raw::RawClient;
use switchyard_e2e::{MASTER_USER, Proxy, SLAVE_USER, Topology, free_port, http};

mod common;
use common::*;

type TestFn = fn(&Env) -> TestResult;

const MONITOR: (&str, &str) = ("monitor", "monitorpass");
const TOKEN: &str = "multiplex-tests";
const PRIMARY_ID: u32 = 1;
/// Backend sessions the primary takes (the writer pool's cap).
const WRITER_CAP: usize = 2;

struct Env {
    topology: Arc<Mutex<Topology>>,
    proxy: Proxy,
    admin: std::net::SocketAddr,
    /// The clients' pool is the primary's own pool, multiplexed (not a
    /// split pool).
    plain: bool,
}

/// The proxy's config: mysqlmaster's pool is `app`, a multiplexed split
/// pool, or (`plain`) `master` itself, multiplexed.
fn config(topology: &Topology, admin: u16, plain: bool) -> String {
    let config = format!(
        r#"listen = "127.0.0.1:{{port}}"
threads = 1
login_timeout_ms = 5000
connect_timeout_ms = 700
{master}{slave}
[pools.master]
backends = [{{ addr = "{p}", max_connections = {WRITER_CAP} }}]
[pools.replicas]
backends = [{{ addr = "{r1}", max_connections = 1 }}, {{ addr = "{r2}", max_connections = 1 }}]
[pools.app]
writer = "master"
reader = "replicas"
multiplex = true
multiplex_wait_ms = 1500
[health]
interval_ms = 100
timeout_ms = 500
[monitor]
user = "{mon}"
password_sha1 = "{mon_sha1}"
[admin]
listen = "127.0.0.1:{admin}"
token = "{TOKEN}"
[policy]
module = "{{policy}}"
[policy.settings]
"user.mysqlmaster" = "app"
"user.mysqlslave" = "app"
"#,
        master = user_table(MASTER_USER.0, MASTER_USER.1),
        slave = user_table(SLAVE_USER.0, SLAVE_USER.1),
        p = topology.primary.addr(),
        r1 = topology.replicas[0].addr(),
        r2 = topology.replicas[1].addr(),
        mon = MONITOR.0,
        mon_sha1 = Sha1Password::of_password(MONITOR.1.as_bytes()).to_hex(),
    );
    if !plain {
        return config;
    }
    config
        .replace(
            "\"user.mysqlmaster\" = \"app\"\n\"user.mysqlslave\" = \"app\"",
            "\"user.mysqlmaster\" = \"master\"\n\"user.mysqlslave\" = \"master\"",
        )
        .replace(
            &format!("max_connections = {WRITER_CAP} }}]\n"),
            &format!(
                "max_connections = {WRITER_CAP} }}]\nmultiplex = true\nmultiplex_wait_ms = 1500\n"
            ),
        )
}

fn main() {
    let args = Arguments::from_args();
    let topology = Topology::start(2, None).expect("start the MariaDB topology");
    topology.primary.sql(&format!(
        "CREATE USER '{0}'@'%' IDENTIFIED BY '{1}';
         GRANT SLAVE MONITOR ON *.* TO '{0}'@'%';
         CREATE TABLE app.t (id INT AUTO_INCREMENT PRIMARY KEY, v VARCHAR(64));
         CREATE DATABASE app2;
         CREATE TABLE app2.marker (db VARCHAR(8));
         INSERT INTO app2.marker VALUES ('app2');
         GRANT ALL ON app2.* TO '{2}'@'%';",
        MONITOR.0, MONITOR.1, MASTER_USER.0
    ));
    topology.sync_replicas().expect("replicas have the schema");
    let topology = Arc::new(Mutex::new(topology));
    let env = |plain: bool| {
        let admin = free_port();
        let config = config(&topology.lock().unwrap(), admin, plain);
        assert!(
            !plain
                || config.contains("multiplex = true\nmultiplex_wait_ms = 1500\n[pools.replicas]")
        );
        let proxy = Proxy::start(&config).expect("start switchyard");
        Arc::new(Env {
            topology: Arc::clone(&topology),
            proxy,
            admin: std::net::SocketAddr::from(([127, 0, 0, 1], admin)),
            plain,
        })
    };
    // Every case again with the primary's own pool multiplexed.
    let envs = vec![("", env(false)), ("plain", env(true))];
    let tests: Vec<(&str, TestFn)> = vec![
        (
            "sessions_at_rest_hold_no_backend_session",
            sessions_at_rest_hold_no_backend_session,
        ),
        (
            "session_variables_stay_with_their_session",
            session_variables_stay_with_their_session,
        ),
        (
            "raw_clients_keep_their_state_tracked_or_not",
            raw_clients_keep_their_state_tracked_or_not,
        ),
        (
            "last_insert_id_moves_with_its_session",
            last_insert_id_moves_with_its_session,
        ),
        (
            "warnings_are_read_by_their_session_only",
            warnings_are_read_by_their_session_only,
        ),
        (
            "pinned_state_stays_with_its_session",
            pinned_state_stays_with_its_session,
        ),
        (
            "transactions_and_autocommit_off_keep_their_backend_session",
            transactions_and_autocommit_off_keep_their_backend_session,
        ),
        (
            "prepared_statements_with_the_same_ids",
            prepared_statements_with_the_same_ids,
        ),
        (
            "kill_reaches_the_statement_wherever_it_runs",
            kill_reaches_the_statement_wherever_it_runs,
        ),
        (
            "a_full_pool_queues_statements_then_refuses",
            a_full_pool_queues_statements_then_refuses,
        ),
        (
            "many_clients_under_load_keep_their_own_state",
            many_clients_under_load_keep_their_own_state,
        ),
        (
            "a_switchover_moves_sessions_at_rest_without_errors",
            a_switchover_moves_sessions_at_rest_without_errors,
        ),
    ];
    run_against_each(args, envs, tests);
}

/// The admin status.
fn status(env: &Env) -> Result<serde_json::Value, Failed> {
    let (code, body) = http(env.admin, "GET", "/status", Some(TOKEN), b"").map_err(fail)?;
    check(code == 200, format!("GET /status: {code}"))?;
    serde_json::from_str(&body).map_err(fail)
}

async fn connect(env: &Env, db: Option<&str>) -> Result<Conn, Failed> {
    Conn::new(opts(env.proxy.addr().port(), MASTER_USER, db))
        .await
        .map_err(fail)
}

/// The one value of `sql`.
async fn value(conn: &mut Conn, sql: &str) -> Result<Option<String>, Failed> {
    let row: Option<mysql_async::Row> = conn.query_first(sql).await.map_err(fail)?;
    let row = row.ok_or_else(|| fail(format!("{sql}: no row")))?;
    row.get_opt::<Option<String>, _>(0)
        .ok_or_else(|| fail("no column"))?
        .map_err(fail)
}

/// Where `sql`'s one value was read: (server id, backend thread id), and
/// the value.
async fn traced(conn: &mut Conn, sql: &str) -> Result<((u32, u64), Option<String>), Failed> {
    let row: Option<(u32, u64, Option<String>)> = conn
        .query_first(format!("SELECT @@server_id, @@pseudo_thread_id, ({sql})"))
        .await
        .map_err(fail)?;
    let (server, thread, v) = row.ok_or_else(|| fail(format!("{sql}: no row")))?;
    Ok(((server, thread), v))
}

fn sessions_at_rest_hold_no_backend_session(env: &Env) -> TestResult {
    block_on(async {
        let mut conns = Vec::new();
        for _ in 0..20 {
            let mut conn = connect(env, Some("app")).await?;
            conn.query_drop("SELECT 1").await.map_err(fail)?;
            conn.query_drop("INSERT INTO t (v) VALUES ('rest')")
                .await
                .map_err(fail)?;
            conns.push(conn);
        }
        // The last insert's session asks LAST_INSERT_ID() before it rests.
        check_none_held(env)?;
        let s = status(env)?;
        let clients = s["statements"]["client_sessions"].as_i64().unwrap_or(-1);
        let idle = s["multiplex"]["idle_backend_sessions"]
            .as_i64()
            .unwrap_or(-1);
        check(clients == 20, format!("{clients} sessions"))?;
        check(
            (1..=4).contains(&idle),
            format!("{idle} idle backend sessions for 20 clients (cap 2 + 1 + 1)"),
        )?;
        // The primary holds no more than its cap of this proxy's sessions.
        let primary = env.topology.lock().unwrap().primary.addr().to_string();
        let on_primary = s["backends"]
            .as_array()
            .and_then(|b| b.iter().find(|b| b["addr"] == primary.as_str()))
            .and_then(|b| b["sessions"].as_u64());
        check(
            on_primary.is_some_and(|n| (1..=WRITER_CAP as u64).contains(&n)),
            format!("{on_primary:?} backend sessions on the primary"),
        )?;
        for conn in conns {
            conn.disconnect().await.map_err(fail)?;
        }
        Ok(())
    })
}

/// Three clients, interleaved statement by statement: one sets time zone,
/// SQL mode, isolation level, character set and database; the others keep
/// the defaults. Reads go to replicas, and to the primary inside
/// transactions; clients meet on the same backend threads (three clients,
/// two backend sessions per pool at most).
fn session_variables_stay_with_their_session(env: &Env) -> TestResult {
    block_on(async {
        let mut a = connect(env, Some("app")).await?;
        let mut b = connect(env, Some("app")).await?;
        let mut c = connect(env, Some("app")).await?;
        let defaults = (
            value(&mut b, "SELECT @@time_zone").await?,
            value(&mut b, "SELECT @@sql_mode").await?,
            value(&mut b, "SELECT @@tx_isolation").await?,
            value(&mut b, "SELECT @@character_set_client").await?,
        );
        a.query_drop("SET time_zone = '+05:00', sql_mode = 'ANSI_QUOTES'")
            .await
            .map_err(fail)?;
        a.query_drop("SET SESSION TRANSACTION ISOLATION LEVEL SERIALIZABLE")
            .await
            .map_err(fail)?;
        a.query_drop("SET NAMES latin1").await.map_err(fail)?;
        a.query_drop("USE app2").await.map_err(fail)?;
        let (mut seen_a, mut seen_b, mut seen_c) = (HashSet::new(), HashSet::new(), HashSet::new());
        for round in 0..40 {
            let in_trx = round % 4 == 3;
            for (conn, mine, seen) in [
                (&mut a, true, &mut seen_a),
                (&mut b, false, &mut seen_b),
                (&mut c, false, &mut seen_c),
            ] {
                if in_trx {
                    conn.query_drop("BEGIN").await.map_err(fail)?;
                }
                let (at, tz) = traced(conn, "SELECT @@time_zone").await?;
                let (_, mode) = traced(conn, "SELECT @@sql_mode").await?;
                let (_, iso) = traced(conn, "SELECT @@tx_isolation").await?;
                let (_, cs) = traced(conn, "SELECT @@character_set_client").await?;
                let (_, db) = traced(conn, "SELECT DATABASE()").await?;
                if in_trx {
                    check(at.0 == PRIMARY_ID, "a read in a transaction on the primary")?;
                    conn.query_drop("COMMIT").await.map_err(fail)?;
                }
                seen.insert(at);
                let got = (tz, mode, iso, cs, db);
                let want = if mine {
                    (
                        Some("+05:00".to_owned()),
                        Some("ANSI_QUOTES".to_owned()),
                        Some("SERIALIZABLE".to_owned()),
                        Some("latin1".to_owned()),
                        Some("app2".to_owned()),
                    )
                } else {
                    (
                        defaults.0.clone(),
                        defaults.1.clone(),
                        defaults.2.clone(),
                        defaults.3.clone(),
                        Some("app".to_owned()),
                    )
                };
                check(
                    got == want,
                    format!(
                        "round {round}, client {}: {got:?}, not {want:?}",
                        if mine { "a" } else { "b" }
                    ),
                )?;
            }
        }
        check(
            met(&[seen_a.clone(), seen_b.clone(), seen_c.clone()]),
            format!(
                "the clients never shared a backend session: {seen_a:?} / {seen_b:?} / {seen_c:?}"
            ),
        )?;
        a.disconnect().await.map_err(fail)?;
        b.disconnect().await.map_err(fail)?;
        c.disconnect().await.map_err(fail)
    })
}

/// A raw client of the pool, tracked or not, as mysqlmaster in `app`.
fn raw(env: &Env, tracked: bool) -> Result<Raw, Failed> {
    Raw::login(env.proxy.addr(), tracked, MASTER_USER, Some("app"))
}

/// Whether two of the clients, by the backend threads each was served
/// on, met on one.
fn met<T: std::hash::Hash + Eq>(threads: &[HashSet<T>]) -> bool {
    threads
        .iter()
        .enumerate()
        .any(|(i, a)| threads[i + 1..].iter().any(|b| !a.is_disjoint(b)))
}

/// Clients: more than the backend sessions (2 + 1 + 1), so that some of
/// them must share one.
const CLIENTS: usize = 6;

/// Tracked and untracked raw clients (the proxy learns state from the
/// backend's reports, or keeps the statements), interleaved: every other
/// one with its own time zone and database, the rest with the defaults;
/// each keeps its own.
fn raw_clients_keep_their_state_tracked_or_not(env: &Env) -> TestResult {
    for tracked in [true, false] {
        let mut clients = Vec::new();
        for n in 0..CLIENTS {
            let mut c = raw(env, tracked)?;
            if n % 2 == 0 {
                c.exec(&format!("SET time_zone = '-0{}:00'", n + 1))?;
                c.exec("USE app2")?;
            }
            clients.push(c);
        }
        let mut threads = vec![HashSet::new(); CLIENTS];
        for round in 0..15 {
            for (n, c) in clients.iter_mut().enumerate() {
                let r = c.row("SELECT @@time_zone, DATABASE(), @@server_id, @@pseudo_thread_id")?;
                let want = if n % 2 == 0 {
                    [Some(format!("-0{}:00", n + 1)), Some("app2".into())]
                } else {
                    [Some("SYSTEM".into()), Some("app".into())]
                };
                check(
                    r[..2] == want,
                    format!("tracked = {tracked}, round {round}: client {n} has {r:?}"),
                )?;
                threads[n].insert((r[2].clone(), r[3].clone()));
            }
            if round % 5 == 2 {
                // Another client of fresh state in between.
                let mut c = raw(env, tracked)?;
                let rc = c.row("SELECT @@time_zone, DATABASE()")?;
                check(
                    rc == [Some("SYSTEM".into()), Some("app".into())],
                    format!("tracked = {tracked}: a new client has {rc:?}"),
                )?;
            }
        }
        check(
            met(&threads),
            format!("tracked = {tracked}: the clients never shared a backend session"),
        )?;
    }
    Ok(())
}

/// `LAST_INSERT_ID()` after interleaved inserts: each client reads its own,
/// statements later, on whatever backend session; a new client reads 0.
fn last_insert_id_moves_with_its_session(env: &Env) -> TestResult {
    block_on(async {
        let mut clients = Vec::new();
        for _ in 0..CLIENTS {
            clients.push(connect(env, Some("app")).await?);
        }
        let mut threads = vec![HashSet::new(); CLIENTS];
        for round in 0..10 {
            let mut mine = Vec::new();
            for c in clients.iter_mut() {
                c.query_drop("INSERT INTO t (v) VALUES ('lid')")
                    .await
                    .map_err(fail)?;
                mine.push(c.last_insert_id().unwrap_or(0));
            }
            // Statements in between, on other backend sessions maybe.
            for c in clients.iter_mut() {
                c.query_drop("SELECT 1").await.map_err(fail)?;
                c.query_drop("DO 1").await.map_err(fail)?;
            }
            for (n, c) in clients.iter_mut().enumerate() {
                let (at, got) = traced(c, "SELECT LAST_INSERT_ID()").await?;
                threads[n].insert(at);
                check(
                    got == Some(mine[n].to_string()),
                    format!(
                        "round {round}: client {n} inserted {}, reads {got:?}",
                        mine[n]
                    ),
                )?;
            }
            let mut fresh = connect(env, Some("app")).await?;
            let (_, got) = traced(&mut fresh, "SELECT LAST_INSERT_ID()").await?;
            check(
                got.as_deref() == Some("0"),
                format!("a new client reads LAST_INSERT_ID() {got:?}"),
            )?;
            fresh.disconnect().await.map_err(fail)?;
        }
        check(
            met(&threads),
            "the clients never read on the same backend session",
        )?;
        for c in clients {
            c.disconnect().await.map_err(fail)?;
        }
        Ok(())
    })
}

/// A statement that leaves warnings keeps its backend session for the
/// next, which reads them; another client never sees them.
fn warnings_are_read_by_their_session_only(env: &Env) -> TestResult {
    block_on(async {
        let mut a = connect(env, Some("app")).await?;
        let mut b = connect(env, Some("app")).await?;
        for round in 0..10 {
            a.query_drop("SELECT CAST('12abc' AS SIGNED)")
                .await
                .map_err(fail)?;
            let b_warnings: Vec<(String, u16, String)> =
                b.query("SHOW WARNINGS").await.map_err(fail)?;
            check(
                b_warnings.is_empty(),
                format!("round {round}: b sees warnings {b_warnings:?}"),
            )?;
            let a_warnings: Vec<(String, u16, String)> =
                a.query("SHOW WARNINGS").await.map_err(fail)?;
            check(
                a_warnings.len() == 1 && a_warnings[0].1 == 1292,
                format!("round {round}: a sees warnings {a_warnings:?}"),
            )?;
            a.query_drop("SELECT 1").await.map_err(fail)?;
        }
        a.disconnect().await.map_err(fail)?;
        b.disconnect().await.map_err(fail)
    })
}

/// User variables, temporary tables, named locks, `LOCK TABLES` and
/// `SQL_CALC_FOUND_ROWS` pin a session to its backend session; the other
/// client sees none of them, and the pinned one keeps them all.
fn pinned_state_stays_with_its_session(env: &Env) -> TestResult {
    block_on(async {
        let mut a = connect(env, Some("app")).await?;
        let mut b = connect(env, Some("app")).await?;
        a.query_drop("SET @mine = 'a'").await.map_err(fail)?;
        a.query_drop("CREATE TEMPORARY TABLE tmp_a (id INT)")
            .await
            .map_err(fail)?;
        a.query_drop("INSERT INTO tmp_a VALUES (1), (2), (3)")
            .await
            .map_err(fail)?;
        let got: Option<i64> = a
            .query_first("SELECT GET_LOCK('mx-lock', 0)")
            .await
            .map_err(fail)?;
        check(got == Some(1), "a takes the lock")?;
        let rows: Vec<i64> = a
            .query("SELECT SQL_CALC_FOUND_ROWS id FROM tmp_a LIMIT 1")
            .await
            .map_err(fail)?;
        check(rows.len() == 1, "one row")?;
        for round in 0..10 {
            check(
                value(&mut b, "SELECT @mine").await?.is_none(),
                format!("round {round}: b sees a's user variable"),
            )?;
            let tmp = b.query_drop("SELECT * FROM tmp_a").await;
            check(
                server_error_code(tmp) == Some(1146),
                format!("round {round}: b sees a's temporary table"),
            )?;
            let lock: Option<i64> = b
                .query_first("SELECT GET_LOCK('mx-lock', 0)")
                .await
                .map_err(fail)?;
            check(lock == Some(0), format!("round {round}: b took a's lock"))?;
            check(
                value(&mut a, "SELECT @mine").await?.as_deref() == Some("a"),
                format!("round {round}: a lost its user variable"),
            )?;
            let n: Option<i64> = a
                .query_first("SELECT COUNT(*) FROM tmp_a")
                .await
                .map_err(fail)?;
            check(n == Some(3), format!("round {round}: a's temporary table"))?;
        }
        let found: Option<i64> = a.query_first("SELECT FOUND_ROWS()").await.map_err(fail)?;
        // The last statement before it: COUNT(*), one row.
        check(found == Some(1), format!("FOUND_ROWS() {found:?}"))?;
        a.query_drop("LOCK TABLES t READ").await.map_err(fail)?;
        let theirs = b.query_drop("SELECT COUNT(*) FROM tmp_a").await;
        check(
            server_error_code(theirs) == Some(1146),
            "b reads a's temporary table while a holds LOCK TABLES",
        )?;
        a.query_drop("UNLOCK TABLES").await.map_err(fail)?;
        a.disconnect().await.map_err(fail)?;
        // Once a is gone, the lock is free and b takes it.
        let lock: Option<i64> = b
            .query_first("SELECT GET_LOCK('mx-lock', 2)")
            .await
            .map_err(fail)?;
        check(lock == Some(1), "the lock is free once its session is gone")?;
        b.query_drop("SELECT RELEASE_LOCK('mx-lock')")
            .await
            .map_err(fail)?;
        b.disconnect().await.map_err(fail)
    })
}

fn server_error_code(r: Result<(), mysql_async::Error>) -> Option<u16> {
    match r {
        Err(mysql_async::Error::Server(e)) => Some(e.code),
        _ => None,
    }
}

/// An open transaction keeps its backend session: another client never
/// sees its uncommitted rows, and it sees them itself; autocommit off
/// holds the same way and is not seen by others.
fn transactions_and_autocommit_off_keep_their_backend_session(env: &Env) -> TestResult {
    block_on(async {
        let mut a = connect(env, Some("app")).await?;
        let mut b = connect(env, Some("app")).await?;
        a.query_drop("BEGIN").await.map_err(fail)?;
        a.query_drop("INSERT INTO t (v) VALUES ('uncommitted-mx')")
            .await
            .map_err(fail)?;
        for _ in 0..5 {
            let theirs: Option<i64> = b
                .query_first("SELECT COUNT(*) FROM t WHERE v = 'uncommitted-mx'")
                .await
                .map_err(fail)?;
            check(theirs == Some(0), "b sees a's uncommitted row")?;
            let mine: Option<i64> = a
                .query_first("SELECT COUNT(*) FROM t WHERE v = 'uncommitted-mx'")
                .await
                .map_err(fail)?;
            check(mine == Some(1), "a lost its uncommitted row")?;
        }
        a.query_drop("ROLLBACK").await.map_err(fail)?;
        a.query_drop("SET autocommit = 0").await.map_err(fail)?;
        for _ in 0..5 {
            check(
                value(&mut b, "SELECT @@autocommit").await?.as_deref() == Some("1"),
                "b has autocommit off",
            )?;
            check(
                value(&mut a, "SELECT @@autocommit").await?.as_deref() == Some("0"),
                "a lost autocommit = 0",
            )?;
        }
        a.query_drop("SET autocommit = 1").await.map_err(fail)?;
        a.disconnect().await.map_err(fail)?;
        b.disconnect().await.map_err(fail)
    })
}

/// Every split session is at rest: none holds a backend session (within a
/// moment: the sessions of earlier cases may still be closing).
fn check_none_held(env: &Env) -> TestResult {
    let mut held = -1;
    for _ in 0..20 {
        held = status(env)?["statements"]["backend_sessions"]
            .as_i64()
            .unwrap_or(-1);
        if held == 0 {
            return Ok(());
        }
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    Err(fail(format!("{held} backend sessions held at rest")))
}

/// Both clients prepare (binary protocol) statements that get the same ids
/// from the proxy, with different session state (so that the backend
/// sessions they borrow are reset between them), and execute them
/// interleaved, at rest in between (holding no backend session): each gets
/// its own statement's answers under its own state; the statements
/// prepared on the primary stay bounded; an id the session never prepared
/// gets ERR 1243.
fn prepared_statements_with_the_same_ids(env: &Env) -> TestResult {
    block_on(async {
        let mut a = connect(env, Some("app")).await?;
        let mut b = connect(env, Some("app")).await?;
        a.query_drop("SET time_zone = '+07:00'")
            .await
            .map_err(fail)?;
        let sa = a
            .prep("SELECT CONCAT('a:', ?, @@time_zone)")
            .await
            .map_err(fail)?;
        let sb = b
            .prep("SELECT CONCAT('b:', ?, @@time_zone)")
            .await
            .map_err(fail)?;
        check(
            sa.id() == sb.id(),
            format!("the proxy's ids: {} / {}", sa.id(), sb.id()),
        )?;
        // A third client: more clients than backend sessions per pool.
        let mut c = connect(env, Some("app")).await?;
        let sc = c.prep("SELECT CONCAT('c:', ?)").await.map_err(fail)?;
        let mut threads = vec![HashSet::new(), HashSet::new(), HashSet::new()];
        for i in 0..20 {
            let ra: Option<String> = a.exec_first(&sa, (i,)).await.map_err(fail)?;
            check_none_held(env)?;
            let rb: Option<String> = b.exec_first(&sb, (i,)).await.map_err(fail)?;
            let rc: Option<String> = c.exec_first(&sc, (i,)).await.map_err(fail)?;
            check(
                ra == Some(format!("a:{i}+07:00"))
                    && rb == Some(format!("b:{i}SYSTEM"))
                    && rc == Some(format!("c:{i}")),
                format!("{ra:?} / {rb:?} / {rc:?}"),
            )?;
            threads[0].insert(traced(&mut a, "SELECT 1").await?.0);
            threads[1].insert(traced(&mut b, "SELECT 1").await?.0);
            threads[2].insert(traced(&mut c, "SELECT 1").await?.0);
        }
        c.close(sc).await.map_err(fail)?;
        c.disconnect().await.map_err(fail)?;
        check(met(&threads), "the clients never shared a backend session")?;
        a.close(sa).await.map_err(fail)?;
        b.close(sb).await.map_err(fail)?;
        a.disconnect().await.map_err(fail)?;
        b.disconnect().await.map_err(fail)?;
        let count = env
            .topology
            .lock()
            .unwrap()
            .primary
            .sql("SHOW GLOBAL STATUS LIKE 'Prepared_stmt_count'");
        let n: usize = count
            .split_whitespace()
            .last()
            .and_then(|v| v.parse().ok())
            .unwrap_or(usize::MAX);
        check(
            n <= 64 * WRITER_CAP,
            format!("{n} statements prepared on the primary"),
        )?;
        // An id the session never prepared.
        let mut raw = raw(env, true)?;
        let mut execute = vec![0x17];
        execute.extend_from_slice(&77u32.to_le_bytes());
        execute.extend_from_slice(&[0, 1, 0, 0, 0]);
        raw.0.write_raw(&RawClient::command_packet(&execute))?;
        let err = raw.0.expect_packet()?;
        check(
            err.seq == 1
                && err.payload.first() == Some(&0xff)
                && err.payload[1..3] == 1243u16.to_le_bytes(),
            format!("executing an unknown id: {:?}", err.payload),
        )
    })
}

/// `KILL QUERY <greeting id>` stops the named client's running statement
/// on whichever backend session runs it; the killer's own session and a
/// bystander go on. At rest, the named session runs nothing: `KILL QUERY`
/// is answered OK, `KILL` ends it; a session of another user gets 1095
/// for either (as MariaDB answers a KILL without `CONNECTION ADMIN`).
fn kill_reaches_the_statement_wherever_it_runs(env: &Env) -> TestResult {
    block_on(async {
        let mut sleeper = connect(env, Some("app")).await?;
        let mut killer = connect(env, Some("app")).await?;
        // Move both around first.
        for _ in 0..3 {
            sleeper.query_drop("SELECT 1").await.map_err(fail)?;
            killer.query_drop("SELECT 1").await.map_err(fail)?;
        }
        let id = sleeper.id();
        let started = std::time::Instant::now();
        let sleeping = tokio::spawn(async move {
            let r: Result<Option<i64>, _> = sleeper.query_first("SELECT SLEEP(20)").await;
            (r, sleeper)
        });
        tokio::time::sleep(std::time::Duration::from_millis(500)).await;
        killer
            .query_drop(format!("KILL QUERY {id}"))
            .await
            .map_err(fail)?;
        let (r, mut sleeper) = sleeping.await.map_err(fail)?;
        check(
            started.elapsed() < std::time::Duration::from_secs(10),
            "the statement was not stopped",
        )?;
        // MariaDB: a killed SLEEP() returns 1, or the query fails 1317.
        let stopped = match r {
            Ok(v) => v == Some(1),
            Err(mysql_async::Error::Server(e)) => e.code == 1317,
            Err(e) => return Err(fail(e)),
        };
        check(stopped, "SLEEP was not interrupted")?;
        sleeper.query_drop("SELECT 1").await.map_err(fail)?;
        killer.query_drop("SELECT 1").await.map_err(fail)?;
        // The sleeper is at rest now: holding no backend session, it runs
        // nothing. KILL QUERY is answered OK (as a server does for an idle
        // thread), the session goes on; KILL ends it.
        check_none_held(env)?;
        killer
            .query_drop(format!("KILL QUERY {id}"))
            .await
            .map_err(fail)?;
        sleeper.query_drop("SELECT 1").await.map_err(fail)?;
        check_none_held(env)?;
        let mut other = Conn::new(opts(env.proxy.addr().port(), SLAVE_USER, Some("app")))
            .await
            .map_err(fail)?;
        for kill in [format!("KILL QUERY {id}"), format!("KILL {id}")] {
            let denied = other.query_drop(&kill).await;
            check(
                matches!(denied, Err(mysql_async::Error::Server(ref e)) if e.code == 1095),
                format!("{kill} by another user: {denied:?}"),
            )?;
        }
        other.query_drop("SELECT 1").await.map_err(fail)?;
        other.disconnect().await.map_err(fail)?;
        sleeper.query_drop("SELECT 1").await.map_err(fail)?;
        check_none_held(env)?;
        killer
            .query_drop(format!("KILL {id}"))
            .await
            .map_err(fail)?;
        let after = sleeper.query_drop("SELECT 1").await;
        check(after.is_err(), "the killed session still answers")?;
        killer.query_drop("SELECT 1").await.map_err(fail)?;
        killer.disconnect().await.map_err(fail)
    })
}

/// With both of the primary's backend sessions held (two transactions), a
/// third client's write waits for one; when none comes free in
/// `multiplex_wait_ms` it gets ERR 9102; once one ends, it runs.
fn a_full_pool_queues_statements_then_refuses(env: &Env) -> TestResult {
    block_on(async {
        // Logged in first: a login needs a backend session too.
        let mut c = connect(env, Some("app")).await?;
        let mut holders = Vec::new();
        for _ in 0..WRITER_CAP {
            let mut h = connect(env, Some("app")).await?;
            h.query_drop("BEGIN").await.map_err(fail)?;
            h.query_drop("INSERT INTO t (v) VALUES ('holder')")
                .await
                .map_err(fail)?;
            holders.push(h);
        }
        let started = std::time::Instant::now();
        let refused = c.query_drop("INSERT INTO t (v) VALUES ('waiter')").await;
        check(
            server_error_code(refused) == Some(9102),
            "a write with the writer pool full is refused with 9102",
        )?;
        check(
            started.elapsed() >= std::time::Duration::from_millis(1400),
            format!(
                "refused after {:?}, before multiplex_wait_ms",
                started.elapsed()
            ),
        )?;
        // Queued: the holder commits while the write waits.
        let write = tokio::spawn(async move {
            let r = c.query_drop("INSERT INTO t (v) VALUES ('waiter')").await;
            (r, c)
        });
        tokio::time::sleep(std::time::Duration::from_millis(300)).await;
        let mut first = holders.remove(0);
        first.query_drop("COMMIT").await.map_err(fail)?;
        let (r, c) = write.await.map_err(fail)?;
        r.map_err(fail)?;
        let s = status(env)?;
        check(
            s["multiplex"]["waits"]["served"].as_u64().unwrap_or(0) >= 1
                && s["multiplex"]["waits"]["timed-out"].as_u64().unwrap_or(0) >= 1,
            format!("waits counted: {}", s["multiplex"]["waits"]),
        )?;
        for mut h in holders {
            h.query_drop("COMMIT").await.map_err(fail)?;
            h.disconnect().await.map_err(fail)?;
        }
        first.disconnect().await.map_err(fail)?;
        c.disconnect().await.map_err(fail)
    })
}

/// Sixteen clients at once, each with its own time zone, SQL mode,
/// database and inserts, on 2 + 1 + 1 backend sessions: every answer is
/// the client's own.
fn many_clients_under_load_keep_their_own_state(env: &Env) -> TestResult {
    let errors = Arc::new(Mutex::new(Vec::<String>::new()));
    let port = env.proxy.addr().port();
    let rt = runtime();
    rt.block_on(async {
        let mut tasks = Vec::new();
        for n in 0..16u32 {
            let errors = Arc::clone(&errors);
            tasks.push(tokio::spawn(async move {
                let r: Result<(), String> = async {
                    let db = if n % 2 == 0 { "app" } else { "app2" };
                    let mut c = Conn::new(opts(port, MASTER_USER, Some(db)))
                        .await
                        .map_err(|e| e.to_string())?;
                    let tz = format!("+{:02}:00", n % 13);
                    c.query_drop(format!("SET time_zone = '{tz}'"))
                        .await
                        .map_err(|e| e.to_string())?;
                    if n % 3 == 0 {
                        c.query_drop("SET sql_mode = 'ANSI_QUOTES'")
                            .await
                            .map_err(|e| e.to_string())?;
                    }
                    for i in 0..60 {
                        if i % 10 == 0 {
                            c.query_drop(format!("INSERT INTO app.t (v) VALUES ('load-{n}')"))
                                .await
                                .map_err(|e| e.to_string())?;
                            let mine = c.last_insert_id().unwrap_or(0);
                            let read: Option<u64> = c
                                .query_first("SELECT LAST_INSERT_ID()")
                                .await
                                .map_err(|e| e.to_string())?;
                            if read != Some(mine) {
                                return Err(format!(
                                    "client {n}: LAST_INSERT_ID() {read:?}, inserted {mine}"
                                ));
                            }
                        }
                        let row: Option<(String, String, String)> = c
                            .query_first("SELECT @@time_zone, @@sql_mode, DATABASE()")
                            .await
                            .map_err(|e| e.to_string())?;
                        let (got_tz, mode, got_db) = row.ok_or("no row")?;
                        let mode_ok = (n % 3 == 0) == (mode == "ANSI_QUOTES");
                        if got_tz != tz || got_db != db || !mode_ok {
                            return Err(format!(
                                "client {n}, statement {i}: {got_tz} {mode} {got_db}"
                            ));
                        }
                    }
                    c.disconnect().await.map_err(|e| e.to_string())
                }
                .await;
                if let Err(e) = r {
                    errors.lock().unwrap().push(e);
                }
            }));
        }
        for t in tasks {
            let _ = t.await;
        }
    });
    let errors = errors.lock().unwrap();
    check(
        errors.is_empty(),
        format!(
            "{} errors: {:?}",
            errors.len(),
            &errors[..errors.len().min(5)]
        ),
    )?;
    let s = status(env)?;
    let borrows = &s["multiplex"]["borrows"];
    check(
        borrows["same-state"].as_u64().unwrap_or(0) + borrows["reset"].as_u64().unwrap_or(0) > 100,
        format!("the load shared backend sessions: {borrows}"),
    )
}

/// A planned switchover under load: the writer pool follows `read_only`
/// (the primary and the first replica are its members); the primary is set
/// `read_only = ON` and the replica `OFF`. Eight clients writing and
/// reading in a loop, at rest between statements, see no error: each
/// statement runs on whichever server is the writer, with the client's
/// state. A client inside a transaction on the old writer gets a clear
/// error for its next write, never a silent move.
fn a_switchover_moves_sessions_at_rest_without_errors(env: &Env) -> TestResult {
    let (primary, r1, r2) = {
        let t = env.topology.lock().unwrap();
        (t.primary.addr(), t.replicas[0].addr(), t.replicas[1].addr())
    };
    let admin = free_port();
    let config = config(&env.topology.lock().unwrap(), admin, env.plain).replace(
        &format!(
            "[pools.master]\nbackends = [{{ addr = \"{primary}\", max_connections = {WRITER_CAP} }}]"
        ),
        &format!("[pools.master]\nrole = \"writer\"\nbackends = [\"{primary}\", \"{r1}\"]\n"),
    )
    .replace(
        &format!("backends = [{{ addr = \"{r1}\", max_connections = 1 }}, {{ addr = \"{r2}\", max_connections = 1 }}]"),
        &format!("backends = [\"{r2}\"]"),
    );
    check(
        config.contains("role = \"writer\""),
        "the writer pool follows read_only",
    )?;
    let proxy = Proxy::start(&config).map_err(fail)?;
    let port = proxy.addr().port();
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let errors = Arc::new(Mutex::new(Vec::<String>::new()));
    let servers = Arc::new(Mutex::new(HashSet::<u32>::new()));
    let rt = runtime();
    let result = rt.block_on(async {
        let mut in_trx = Conn::new(opts(port, MASTER_USER, Some("app")))
            .await
            .map_err(fail)?;
        in_trx.query_drop("BEGIN").await.map_err(fail)?;
        in_trx
            .query_drop("INSERT INTO t (v) VALUES ('in a transaction')")
            .await
            .map_err(fail)?;
        let mut tasks = Vec::new();
        for n in 0..8u32 {
            let (stop, errors, servers) =
                (Arc::clone(&stop), Arc::clone(&errors), Arc::clone(&servers));
            tasks.push(tokio::spawn(async move {
                let r: Result<(), String> = async {
                    let mut c = Conn::new(opts(port, MASTER_USER, Some("app")))
                        .await
                        .map_err(|e| e.to_string())?;
                    let tz = format!("+{:02}:00", n + 1);
                    c.query_drop(format!("SET time_zone = '{tz}'"))
                        .await
                        .map_err(|e| e.to_string())?;
                    let mut i = 0;
                    while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                        i += 1;
                        c.query_drop(format!("INSERT INTO t (v) VALUES ('switch-{n}-{i}')"))
                            .await
                            .map_err(|e| format!("client {n}, write {i}: {e}"))?;
                        // On the writer (LAST_INSERT_ID() is read there): where
                        // the write went.
                        let row: Option<(u32, String, u64)> = c
                            .query_first("SELECT @@server_id, @@time_zone, LAST_INSERT_ID()")
                            .await
                            .map_err(|e| format!("client {n}, read {i}: {e}"))?;
                        let (server, got) = row
                            .map(|(s, t, _): (u32, String, u64)| (s, t))
                            .ok_or("no row")?;
                        if got != tz {
                            return Err(format!("client {n}: time zone {got}, not {tz}"));
                        }
                        servers.lock().unwrap().insert(server);
                    }
                    c.disconnect().await.map_err(|e| e.to_string())
                }
                .await;
                if let Err(e) = r {
                    errors.lock().unwrap().push(e);
                }
            }));
        }
        tokio::time::sleep(std::time::Duration::from_millis(700)).await;
        {
            let t = env.topology.lock().unwrap();
            t.primary.sql("SET GLOBAL read_only = ON");
            t.replicas[0].sql("SET GLOBAL read_only = OFF");
        }
        tokio::time::sleep(std::time::Duration::from_millis(1500)).await;
        stop.store(true, std::sync::atomic::Ordering::Relaxed);
        for t in tasks {
            let _ = t.await;
        }
        // The transaction's next write: the old writer refuses it.
        let refused = in_trx
            .query_drop("INSERT INTO t (v) VALUES ('after the switch')")
            .await;
        let code = server_error_code(refused);
        let _ = in_trx.query_drop("ROLLBACK").await;
        check(
            code == Some(1290),
            format!("a write in a transaction on the old writer: {code:?}"),
        )
    });
    {
        let t = env.topology.lock().unwrap();
        t.replicas[0].sql("SET GLOBAL read_only = ON");
        t.primary.sql("SET GLOBAL read_only = OFF");
    }
    result?;
    let errors = errors.lock().unwrap();
    check(
        errors.is_empty(),
        format!(
            "{} client errors: {:?}",
            errors.len(),
            &errors[..errors.len().min(3)]
        ),
    )?;
    let servers = servers.lock().unwrap();
    check(
        servers.contains(&PRIMARY_ID) && servers.contains(&2),
        format!("writes ran on {servers:?}: not on both writers"),
    )
}
