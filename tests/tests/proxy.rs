//! End-to-end tests: Switchyard as a real process in front of a real MariaDB
//! primary and two GTID replicas, driven by real clients (`mysql_async`, the
//! `mariadb` command-line client) and by a raw client for what libraries
//! never send.
//!
//! The topology is started once for this binary and torn down at the end,
//! also when a test fails. Tests run one at a time: some stop replicas, and
//! one counts the connections the servers see.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use libtest_mimic::{Arguments, Failed};
use mysql_async::Conn;
use mysql_async::prelude::*;

use switchyard::auth::PasswordHash;
use switchyard::pool::gtid::{Gtid, GtidPos};
use switchyard::protocol::{
    CapabilityFlags, ErrPacket, QueryReply, REPLY_HEAD, ReplyFramer, ReplyStep, ReplyTo,
    ResultSetDecoder, StateChange, StatusFlags, state_changes,
};
use switchyard::sql::SessionState;
use switchyard_e2e::raw::{LoginOutcome, RawClient};
use switchyard_e2e::{MASTER_USER, Proxy, SLAVE_USER, Topology, free_port, http, mariadb_cli};

mod common;
use common::*;

type TestFn = fn(&Env) -> TestResult;

/// What every test shares.
struct Env {
    topology: Mutex<Topology>,
    proxy: Proxy,
    /// The shared proxy's admin endpoint.
    admin: SocketAddr,
}

const ADMIN_TOKEN: &str = "proxy-tests";

/// `config` with an admin endpoint on a free port, and that port's address.
fn with_admin(config: String) -> (String, SocketAddr) {
    let admin = SocketAddr::from(([127, 0, 0, 1], free_port()));
    (
        format!("{config}\n[admin]\nlisten = \"{admin}\"\ntoken = \"{ADMIN_TOKEN}\"\n"),
        admin,
    )
}

/// A counter from the admin endpoint's `/metrics`: `family{label="value"}`.
fn metric(admin: SocketAddr, family: &str, label: &str, value: &str) -> Result<u64, Failed> {
    let name = format!("{family}{{{label}=\"{value}\"}}");
    let (code, body) = http(admin, "GET", "/metrics", Some(ADMIN_TOKEN), b"").map_err(fail)?;
    check(code == 200, format!("GET /metrics: {code}"))?;
    body.lines()
        .find_map(|l| {
            l.strip_prefix(&name)?
                .strip_prefix(' ')?
                .trim()
                .parse()
                .ok()
        })
        .ok_or_else(|| format!("no {name} in /metrics").into())
}

impl Env {
    fn topology(&self) -> MutexGuard<'_, Topology> {
        self.topology.lock().unwrap_or_else(|e| e.into_inner())
    }
}

const PRIMARY_ID: u32 = 1;
const REPLICA_IDS: [u32; 2] = [2, 3];

/// The shared proxy's config; `{port}`, `{policy}` and the backend ports are
/// filled in.
fn proxy_config(topology: &Topology) -> String {
    let user = user_table;
    format!(
        r#"listen = "127.0.0.1:{{port}}"
login_timeout_ms = 3000
connect_timeout_ms = 700
probe_interval_ms = 300
shutdown_timeout_ms = 1000
{master}{slave}{outsider}{ghost}{lost}{edward}
[pools.master]
backends = ["{primary}"]
[pools.replicas]
backends = ["{r1}", "{r2}"]
balance = "least-connections"
[policy]
module = "{{policy}}"
[policy.settings]
"user.mysqlmaster" = "master"
"user.mysqlslave" = "replicas"
"user.ghost" = "master"
"user.lost" = "nowhere"
"user.edward" = "master"
"#,
        master = user(MASTER_USER.0, MASTER_USER.1),
        slave = user(SLAVE_USER.0, SLAVE_USER.1),
        outsider = user("outsider", "outsiderpass"),
        ghost = user("ghost", "ghostpass"),
        lost = user("lost", "lostpass"),
        edward = user("edward", "edpass"),
        primary = topology.primary.addr(),
        r1 = topology.replicas[0].addr(),
        r2 = topology.replicas[1].addr(),
    )
}

fn main() {
    let args = Arguments::from_args();
    let topology = Topology::start(2, None).expect("start the MariaDB topology");
    let (config, admin) = with_admin(proxy_config(&topology));
    let proxy = Proxy::start(&config).expect("start switchyard");
    let env = Arc::new(Env {
        topology: Mutex::new(topology),
        proxy,
        admin,
    });
    let tests: Vec<(&str, TestFn)> = vec![
        (
            "greeting_presents_the_backends_identity",
            greeting_presents_the_backends_identity,
        ),
        (
            "master_lands_on_the_primary_and_writes",
            master_lands_on_the_primary_and_writes,
        ),
        (
            "slave_is_spread_across_replicas_and_reads_replicated_rows",
            slave_is_spread_across_replicas,
        ),
        (
            "bad_credentials_get_1045_and_open_no_backend_connection",
            bad_credentials_get_1045,
        ),
        (
            "policy_refusal_reaches_the_client",
            policy_refusal_reaches_the_client,
        ),
        (
            "unknown_pool_is_a_policy_failure",
            unknown_pool_is_a_policy_failure,
        ),
        (
            "backend_errors_pass_through_in_the_clients_sequence",
            backend_errors_pass_through,
        ),
        (
            "database_given_at_connect_time",
            database_given_at_connect_time,
        ),
        ("mariadb_command_line_client", mariadb_command_line_client),
        (
            "prepared_statements_with_parameters",
            prepared_statements_with_parameters,
        ),
        ("twenty_mib_value_round_trip", twenty_mib_value_round_trip),
        ("pipelined_commands_from_a_raw_client", pipelined_commands),
        (
            "session_state_tracking_reaches_the_client_and_decodes",
            session_state_tracking,
        ),
        (
            "answers_end_where_the_framer_says",
            answers_end_where_the_framer_says,
        ),
        (
            "session_state_replays_on_another_session",
            session_state_replays_on_another_session,
        ),
        (
            "a_writes_gtid_is_applied_where_replicas_say",
            a_writes_gtid_is_applied_where_replicas_say,
        ),
        (
            "kill_by_greeting_id_and_backend_id",
            kill_by_greeting_id_and_backend_id,
        ),
        (
            "large_results_around_com_change_user",
            large_results_around_change_user,
        ),
        (
            "auth_switch_from_caching_sha2_password",
            auth_switch_from_caching_sha2,
        ),
        (
            "com_change_user_moves_between_pools",
            com_change_user_moves_between_pools,
        ),
        (
            "com_change_user_refused_ends_the_session",
            com_change_user_refused_ends_the_session,
        ),
        ("throttle_counts_every_path", throttle_counts_every_path),
        (
            "caching_sha2_full_authentication_then_fast_path",
            caching_sha2_full_then_fast,
        ),
        (
            "com_reset_connection_passes_through",
            com_reset_connection_passes_through,
        ),
        (
            "garbage_and_truncated_packets_are_contained",
            garbage_and_truncated_packets,
        ),
        ("too_many_connections", too_many_connections),
        (
            "backend_auth_plugin_switch_it_cannot_answer",
            backend_plugin_it_cannot_answer,
        ),
        (
            "hung_replica_is_skipped_after_the_connect_timeout",
            hung_replica_is_skipped,
        ),
        (
            "misbehaving_policies_are_contained",
            misbehaving_policies_are_contained,
        ),
        ("hash_password_command", hash_password_command),
        ("sigterm_stops_the_daemon", sigterm_stops_the_daemon),
        (
            "bad_config_names_file_and_line",
            bad_config_names_file_and_line,
        ),
        (
            "replica_down_then_all_down_then_back",
            replica_down_then_all_down,
        ),
    ];
    run_one_at_a_time(args, env, tests);
}

async fn connect(env: &Env, user: (&str, &str), db: Option<&str>) -> Result<Conn, Failed> {
    Conn::new(opts(env.proxy.port, user, db))
        .await
        .map_err(|e| format!("login as {} failed: {e}", user.0).into())
}

async fn login_error(
    env: &Env,
    user: (&str, &str),
    db: Option<&str>,
) -> Result<(u16, String, String), Failed> {
    match Conn::new(opts(env.proxy.port, user, db)).await {
        Ok(_) => Err(format!("login as {} succeeded", user.0).into()),
        Err(e) => server_error(e),
    }
}

fn greeting_presents_the_backends_identity(env: &Env) -> TestResult {
    let version = env.topology().primary.sql("SELECT @@version");
    let a = RawClient::connect(env.proxy.addr())?.greeting()?;
    let b = RawClient::connect(env.proxy.addr())?.greeting()?;
    check(
        a.server_version == format!("5.5.5-{version}"),
        format!("version {:?} vs {version}", a.server_version),
    )?;
    check(a.charset == 45, format!("charset {}", a.charset))?;
    check(
        a.auth_data.len() == 20 && !a.auth_data.contains(&0),
        "nonce is 20 bytes without NUL",
    )?;
    check(
        a.auth_data != b.auth_data,
        "every connection gets a fresh nonce",
    )?;
    check(a.connection_id != b.connection_id, "connection ids differ")?;
    check(
        a.auth_plugin == "mysql_native_password",
        "native password plugin",
    )?;
    let caps = a.capabilities;
    check(
        !caps.intersects(CapabilityFlags::CLIENT_SSL | CapabilityFlags::CLIENT_COMPRESS),
        "no TLS, no compression",
    )?;
    check(
        caps.contains(
            CapabilityFlags::CLIENT_PROTOCOL_41
                | CapabilityFlags::CLIENT_PLUGIN_AUTH
                | CapabilityFlags::CLIENT_DEPRECATE_EOF,
        ),
        format!("caps {caps:?}"),
    )?;
    // MariaDB backends: CLIENT_MYSQL clear, extended capabilities offered.
    check(
        !caps.contains(CapabilityFlags::CLIENT_LONG_PASSWORD),
        "MariaDB-style greeting",
    )?;
    check(
        !a.mariadb_capabilities.is_empty(),
        "MariaDB extended capabilities",
    )
}

fn master_lands_on_the_primary_and_writes(env: &Env) -> TestResult {
    block_on(async {
        let mut conn = connect(env, MASTER_USER, Some("app")).await?;
        check(
            server_id(&mut conn).await? == PRIMARY_ID,
            "mysqlmaster is on the primary",
        )?;
        conn.query_drop("CREATE TABLE writes (id INT PRIMARY KEY, v VARCHAR(20))")
            .await
            .map_err(fail)?;
        conn.query_drop("INSERT INTO writes VALUES (1, 'one'), (2, 'two')")
            .await
            .map_err(fail)?;
        let n: Option<u64> = conn
            .query_first("SELECT COUNT(*) FROM writes")
            .await
            .map_err(fail)?;
        check(n == Some(2), format!("count {n:?}"))?;
        conn.disconnect().await.map_err(fail)
    })?;
    let rows = env
        .topology()
        .primary
        .sql("SELECT v FROM app.writes ORDER BY id");
    check(rows == "one\ntwo", format!("primary has {rows:?}"))
}

fn slave_is_spread_across_replicas(env: &Env) -> TestResult {
    block_on(async {
        let mut master = connect(env, MASTER_USER, Some("app")).await?;
        master.query_drop("CREATE TABLE spread (id INT PRIMARY KEY, v VARCHAR(20)); INSERT INTO spread VALUES (7, 'replicated')").await.map_err(fail)?;
        master.disconnect().await.map_err(fail)?;
        env.topology().sync_replicas().map_err(fail)?;
        // Held at once, four sessions are spread two and two.
        let mut conns = Vec::new();
        let mut ids = Vec::new();
        for _ in 0..4 {
            let mut c = connect(env, SLAVE_USER, Some("app")).await?;
            ids.push(server_id(&mut c).await?);
            let v: Option<String> = c
                .query_first("SELECT v FROM spread WHERE id = 7")
                .await
                .map_err(fail)?;
            check(
                v.as_deref() == Some("replicated"),
                format!("replica read {v:?}"),
            )?;
            conns.push(c);
        }
        ids.sort();
        check(ids == [2, 2, 3, 3], format!("sessions landed on {ids:?}"))?;
        // The read-only user really is on a replica: writes fail there.
        let err = conns[0]
            .query_drop("INSERT INTO spread VALUES (8, 'x')")
            .await
            .expect_err("write as mysqlslave");
        let code = server_error(err)?.0;
        // No INSERT privilege (1142), or read-only replica (1290).
        check(
            code == 1142 || code == 1290,
            format!("write refused with {code}"),
        )?;
        for c in conns {
            c.disconnect().await.map_err(fail)?;
        }
        Ok(())
    })
}

/// What the servers and the shared proxy have seen of backend logins.
struct Seen {
    /// Per server, the logins it accepted: connections less the failed
    /// ones (Switchyard's greeting probes and health checks, which log in
    /// as `switchyard-check` and are refused, on their own schedule).
    accepted: Vec<u64>,
    /// Logins the shared proxy sent on and a backend refused (its log).
    refused: usize,
}

fn seen(env: &Env) -> Seen {
    let accepted = {
        let topology = env.topology();
        std::iter::once(&topology.primary)
            .chain(topology.replicas.iter())
            .map(|s| {
                let v = s.sql(
                    "SELECT SUM(IF(VARIABLE_NAME = 'CONNECTIONS', VARIABLE_VALUE, -VARIABLE_VALUE)) \
                     FROM information_schema.GLOBAL_STATUS \
                     WHERE VARIABLE_NAME IN ('CONNECTIONS', 'ABORTED_CONNECTS')",
                );
                v.trim().parse().expect("Connections")
            })
            .collect()
    };
    let refused = backend_refusals(&env.proxy.log());
    Seen { accepted, refused }
}

/// The proxy log's lines of logins a backend refused.
fn backend_refusals(log: &str) -> usize {
    log.lines()
        .filter(|l| l.contains("login refused") && l.contains("backend") && l.contains("refused:"))
        .count()
}

/// Fails if a login reached a backend since `before`: no server accepted
/// one (each count includes only the queries that read it), and none was
/// sent on and refused. Health checks and greeting probes, which every
/// server refuses, do not count, so the windows need no quiet from them;
/// but one caught between its connect and its refusal reads as accepted,
/// so a count one too high is read again once it has had time to end.
fn no_connections_since(env: &Env, before: &Seen) -> TestResult {
    let deltas = |after: &Seen| -> Vec<u64> {
        after
            .accepted
            .iter()
            .zip(&before.accepted)
            .map(|(a, b)| a.saturating_sub(*b))
            .collect()
    };
    let mut after = seen(env);
    let mut queries = 1;
    if deltas(&after) != [1, 1, 1] {
        std::thread::sleep(Duration::from_millis(300));
        after = seen(env);
        queries = 2;
    }
    check(
        deltas(&after).iter().all(|d| *d <= queries) && after.refused == before.refused,
        format!(
            "servers accepted new logins: {:?} ({queries} of them the counts' own); backend refusals {} -> {}",
            deltas(&after),
            before.refused,
            after.refused
        ),
    )
}

fn bad_credentials_get_1045(env: &Env) -> TestResult {
    let before = seen(env);
    block_on(async {
        let (code, state, msg) = login_error(env, (SLAVE_USER.0, "wrong"), None).await?;
        check(
            (code, state.as_str()) == (1045, "28000"),
            format!("{code} {state}"),
        )?;
        check(
            msg == "Access denied for user 'mysqlslave'@'127.0.0.1' (using password: YES)",
            msg.clone(),
        )?;
        let (code, _, msg) = login_error(env, ("nobody", "whatever"), None).await?;
        check(code == 1045, format!("{code}"))?;
        check(
            msg == "Access denied for user 'nobody'@'127.0.0.1' (using password: YES)",
            msg.clone(),
        )?;
        let (code, _, msg) = login_error(env, (MASTER_USER.0, ""), None).await?;
        check(
            code == 1045 && msg.ends_with("(using password: NO)"),
            msg.clone(),
        )?;
        Ok::<_, Failed>(())
    })?;
    // A user name cannot forge a log line (text logs).
    let evil_from: std::net::IpAddr = "127.0.0.23".parse().map_err(fail)?;
    let mut raw = RawClient::connect_from(env.proxy.addr(), evil_from)?;
    match raw.login(
        "evil\nFORGED-LOG-LINE x",
        "wrong",
        None,
        "mysql_native_password",
    )? {
        LoginOutcome::Err(e, _) => check(e.code == 1045, format!("{e:?}"))?,
        other => return Err(format!("{other:?}").into()),
    }
    env.proxy
        .wait_for_log("evil\\nFORGED-LOG-LINE", Duration::from_secs(5))
        .map_err(fail)?;
    check(
        !env.proxy
            .log()
            .lines()
            .any(|l| l.starts_with("FORGED-LOG-LINE")),
        "a user name started a log line of its own",
    )?;
    // Raw: through an auth switch as well, in the right sequence.
    let mut raw = RawClient::connect(env.proxy.addr())?;
    match raw.login(SLAVE_USER.0, "wrong", None, "caching_sha2_password")? {
        LoginOutcome::Err(e, seq) => check(e.code == 1045 && seq == 4, format!("{e:?} at {seq}"))?,
        other => return Err(format!("{other:?}").into()),
    }
    no_connections_since(env, &before)
}

fn policy_refusal_reaches_the_client(env: &Env) -> TestResult {
    let (code, state, msg) = block_on(login_error(env, ("outsider", "outsiderpass"), None))?;
    check(code == 9100 && state == "28000", format!("{code} {state}"))?;
    check(
        msg.contains("no pool is configured for user 'outsider'"),
        msg,
    )
}

fn unknown_pool_is_a_policy_failure(env: &Env) -> TestResult {
    let (code, _, msg) = block_on(login_error(env, ("lost", "lostpass"), None))?;
    check(code == 9101, format!("{code}"))?;
    check(
        msg.contains("'nowhere'") && msg.contains("not configured"),
        msg,
    )?;
    env.proxy
        .wait_for_log("it chose pool 'nowhere'", Duration::from_secs(5))
        .map_err(fail)
}

fn backend_errors_pass_through(env: &Env) -> TestResult {
    // Switchyard knows 'ghost'; the primary does not.
    let (code, state, msg) = block_on(login_error(env, ("ghost", "ghostpass"), None))?;
    check(code == 1045 && state == "28000", format!("{code} {state}"))?;
    check(msg.contains("'ghost'"), msg)?;
    let mut raw = RawClient::connect(env.proxy.addr())?;
    match raw.login("ghost", "ghostpass", None, "mysql_native_password")? {
        LoginOutcome::Err(e, seq) => check(e.code == 1045 && seq == 2, format!("{e:?} at {seq}")),
        other => Err(format!("{other:?}").into()),
    }
}

fn database_given_at_connect_time(env: &Env) -> TestResult {
    block_on(async {
        let mut conn = connect(env, MASTER_USER, Some("app")).await?;
        let db: Option<String> = conn.query_first("SELECT DATABASE()").await.map_err(fail)?;
        check(db.as_deref() == Some("app"), format!("{db:?}"))?;
        conn.disconnect().await.map_err(fail)?;
        let mut conn = connect(env, SLAVE_USER, None).await?;
        let db: Option<Option<String>> =
            conn.query_first("SELECT DATABASE()").await.map_err(fail)?;
        check(db == Some(None), format!("{db:?}"))?;
        conn.disconnect().await.map_err(fail)?;
        let (code, _, msg) = login_error(env, MASTER_USER, Some("nosuchdb")).await?;
        check(code == 1044 || code == 1049, format!("{code} {msg}"))
    })
}

fn mariadb_command_line_client(env: &Env) -> TestResult {
    let port = env.proxy.port.to_string();
    let base = [
        "-h",
        "127.0.0.1",
        "-P",
        port.as_str(),
        "--batch",
        "--skip-column-names",
    ];
    let out = mariadb_cli(
        &[&base[..], &["-u", "mysqlmaster", "-pmasterpass", "app"]].concat(),
        "CREATE TABLE cli (id INT PRIMARY KEY);\nINSERT INTO cli VALUES (1), (2), (3);\nSELECT @@server_id, DATABASE(), SUM(id) FROM cli;\n",
    );
    let stdout = String::from_utf8_lossy(&out.stdout);
    check(
        out.status.success(),
        format!("{}", String::from_utf8_lossy(&out.stderr)),
    )?;
    check(stdout.trim() == "1\tapp\t6", format!("{stdout:?}"))?;
    let out = mariadb_cli(
        &[
            &base[..],
            &[
                "-u",
                "mysqlslave",
                "-pslavepass",
                "-e",
                "SELECT @@server_id",
            ],
        ]
        .concat(),
        "",
    );
    let id = String::from_utf8_lossy(&out.stdout).trim().to_owned();
    check(
        out.status.success() && (id == "2" || id == "3"),
        format!("{id:?}"),
    )?;
    let out = mariadb_cli(
        &[&base[..], &["-u", "mysqlslave", "-pnope", "-e", "SELECT 1"]].concat(),
        "",
    );
    let stderr = String::from_utf8_lossy(&out.stderr);
    check(!out.status.success(), "bad password fails")?;
    check(
        stderr.contains("ERROR 1045 (28000): Access denied for user 'mysqlslave'@'127.0.0.1' (using password: YES)"),
        stderr.to_string(),
    )
}

fn prepared_statements_with_parameters(env: &Env) -> TestResult {
    block_on(async {
        let mut conn = connect(env, MASTER_USER, Some("app")).await?;
        conn.query_drop("CREATE TABLE ps (id INT PRIMARY KEY, name VARCHAR(50), score DOUBLE)")
            .await
            .map_err(fail)?;
        let insert = conn
            .prep("INSERT INTO ps (id, name, score) VALUES (?, ?, ?)")
            .await
            .map_err(fail)?;
        conn.exec_batch(
            &insert,
            (1..=20).map(|i| (i, format!("name-{i}"), i as f64 / 4.0)),
        )
        .await
        .map_err(fail)?;
        let rows: Vec<(i32, String, f64)> = conn
            .exec(
                "SELECT id, name, score FROM ps WHERE id > ? AND name LIKE ? ORDER BY id",
                (17, "name-%"),
            )
            .await
            .map_err(fail)?;
        check(
            rows == vec![
                (18, "name-18".into(), 4.5),
                (19, "name-19".into(), 4.75),
                (20, "name-20".into(), 5.0),
            ],
            format!("{rows:?}"),
        )?;
        let null: Option<Option<String>> = conn
            .exec_first("SELECT ?", (None::<String>,))
            .await
            .map_err(fail)?;
        check(null == Some(None), "NULL parameter")?;
        conn.close(insert).await.map_err(fail)?;
        conn.disconnect().await.map_err(fail)
    })
}

fn twenty_mib_value_round_trip(env: &Env) -> TestResult {
    let value: Vec<u8> = (0..20 * 1024 * 1024u32)
        .map(|i| (i.wrapping_mul(2_654_435_761) >> 24) as u8)
        .collect();
    block_on(async {
        let mut conn = connect(env, MASTER_USER, Some("app")).await?;
        conn.query_drop("CREATE TABLE big (id INT PRIMARY KEY, b LONGBLOB)")
            .await
            .map_err(fail)?;
        conn.exec_drop("INSERT INTO big VALUES (?, ?)", (1, value.clone()))
            .await
            .map_err(fail)?;
        let back: Option<Vec<u8>> = conn
            .query_first("SELECT b FROM big WHERE id = 1")
            .await
            .map_err(fail)?;
        check(
            back.as_deref() == Some(&value[..]),
            "text protocol read back the same 20 MiB",
        )?;
        let back: Option<Vec<u8>> = conn
            .exec_first("SELECT b FROM big WHERE id = ?", (1,))
            .await
            .map_err(fail)?;
        check(
            back.as_deref() == Some(&value[..]),
            "binary protocol read back the same 20 MiB",
        )?;
        // An 18 MiB statement in one COM_QUERY (two packets).
        let hex: String = value[..9 * 1024 * 1024]
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect();
        conn.query_drop(format!("INSERT INTO big VALUES (2, x'{hex}')"))
            .await
            .map_err(fail)?;
        let len: Option<u64> = conn
            .query_first("SELECT LENGTH(b) FROM big WHERE id = 2")
            .await
            .map_err(fail)?;
        check(len == Some(9 * 1024 * 1024), format!("{len:?}"))?;
        conn.disconnect().await.map_err(fail)?;
        env.topology().sync_replicas().map_err(fail)?;
        let mut slave = connect(env, SLAVE_USER, Some("app")).await?;
        let back: Option<Vec<u8>> = slave
            .query_first("SELECT b FROM big WHERE id = 1")
            .await
            .map_err(fail)?;
        check(
            back.as_deref() == Some(&value[..]),
            "the replica read back the same 20 MiB",
        )?;
        slave.disconnect().await.map_err(fail)
    })
}

fn pipelined_commands(env: &Env) -> TestResult {
    let mut raw = RawClient::connect(env.proxy.addr())?;
    match raw.login(SLAVE_USER.0, SLAVE_USER.1, None, "mysql_native_password")? {
        LoginOutcome::Ok(2) => {}
        other => return Err(format!("{other:?}").into()),
    }
    // Three queries, a ping and a quit in one write, split at odd places.
    let mut bytes = Vec::new();
    for n in 1..=3 {
        bytes.extend(RawClient::query_packet(&format!("SELECT {n}")));
    }
    bytes.extend(RawClient::command_packet(&[0x0e]));
    bytes.extend(RawClient::command_packet(&[0x01]));
    raw.write_raw(&bytes[..7])?;
    std::thread::sleep(Duration::from_millis(20));
    raw.write_raw(&bytes[7..])?;
    let mut rows = Vec::new();
    let mut oks = 0;
    let mut first_seqs = Vec::new();
    let mut expect_first = true;
    while let Some(p) = raw.read_packet()? {
        if expect_first {
            first_seqs.push(p.seq);
        }
        // Without CLIENT_DEPRECATE_EOF: count, column, EOF, row, EOF.
        expect_first = false;
        match &p.payload[..] {
            [0x01, digit] => rows.push(*digit),
            [0xfe, ..] if p.payload.len() < 9 && p.seq == 5 => expect_first = true,
            [0x00, ..] => {
                oks += 1;
                expect_first = true;
            }
            _ => {}
        }
    }
    check(rows == b"123", format!("rows {rows:?}"))?;
    check(oks == 1, format!("ping answered {oks} times"))?;
    check(
        first_seqs == [1, 1, 1, 1],
        format!("responses start at {first_seqs:?}"),
    )
}

fn auth_switch_from_caching_sha2(env: &Env) -> TestResult {
    let mut raw = RawClient::connect(env.proxy.addr())?;
    match raw.login(
        MASTER_USER.0,
        MASTER_USER.1,
        Some("app"),
        "caching_sha2_password",
    )? {
        LoginOutcome::Ok(4) => {}
        other => return Err(format!("{other:?}").into()),
    }
    raw.write_raw(&RawClient::query_packet("SELECT @@server_id"))?;
    let mut saw_id = false;
    for _ in 0..5 {
        let p = raw.expect_packet()?;
        if p.payload[..] == [0x01, b'1'] {
            saw_id = true;
            break;
        }
    }
    check(saw_id, "the switched session is on the primary")
}

fn com_change_user_moves_between_pools(env: &Env) -> TestResult {
    let outcome = |o: &str| metric(env.admin, "switchyard_change_user_total", "outcome", o);
    let (moved, in_place) = (outcome("moved")?, outcome("in_place")?);
    block_on(async {
        let mut conn = connect(env, MASTER_USER, Some("app")).await?;
        check(
            server_id(&mut conn).await? == PRIMARY_ID,
            "master on the primary",
        )?;
        let change = |(user, pass): (&str, &str), db: Option<&str>| {
            mysql_async::ChangeUserOpts::default()
                .with_user(Some(user.into()))
                .with_pass(Some(pass.into()))
                .with_db_name(db.map(str::to_owned))
        };
        // master → slave: another pool, so another backend session.
        conn.change_user(change(SLAVE_USER, Some("app")))
            .await
            .map_err(fail)?;
        let id = server_id(&mut conn).await?;
        check(
            REPLICA_IDS.contains(&id),
            format!("slave on a replica, got {id}"),
        )?;
        let who: Option<String> = conn
            .query_first("SELECT CURRENT_USER()")
            .await
            .map_err(fail)?;
        check(
            who.as_deref().is_some_and(|w| w.starts_with("mysqlslave@")),
            format!("{who:?}"),
        )?;
        let db: Option<String> = conn.query_first("SELECT DATABASE()").await.map_err(fail)?;
        check(db.as_deref() == Some("app"), format!("database {db:?}"))?;
        // slave → master: back to the primary.
        conn.change_user(change(MASTER_USER, None))
            .await
            .map_err(fail)?;
        check(
            server_id(&mut conn).await? == PRIMARY_ID,
            "master on the primary again",
        )?;
        // master → master: the same pool, so the backend session is
        // re-authenticated in place (same backend thread), and reset.
        conn.query_drop("SET @mark = 42").await.map_err(fail)?;
        let before: Option<u64> = conn
            .query_first("SELECT CONNECTION_ID()")
            .await
            .map_err(fail)?;
        conn.change_user(change(MASTER_USER, Some("app")))
            .await
            .map_err(fail)?;
        let after: Option<u64> = conn
            .query_first("SELECT CONNECTION_ID()")
            .await
            .map_err(fail)?;
        check(
            before == after,
            format!("backend thread {before:?} → {after:?}"),
        )?;
        let mark: Option<Option<i64>> = conn.query_first("SELECT @mark").await.map_err(fail)?;
        check(mark == Some(None), format!("session state kept: {mark:?}"))?;
        // Still a working session, which writes on the primary.
        conn.query_drop("CREATE TABLE IF NOT EXISTS app.cu (id INT PRIMARY KEY)")
            .await
            .map_err(fail)?;
        conn.query_drop("REPLACE INTO app.cu VALUES (1)")
            .await
            .map_err(fail)?;
        conn.disconnect().await.map_err(fail)?;
        Ok::<(), Failed>(())
    })?;
    // Two moves between pools, one change in place, as the metrics say.
    let (moved_now, in_place_now) = (outcome("moved")?, outcome("in_place")?);
    check(
        (moved_now - moved, in_place_now - in_place) == (2, 1),
        format!(
            "moved +{}, in place +{}",
            moved_now - moved,
            in_place_now - in_place
        ),
    )
}

/// Runs `SELECT SLEEP(30)` on `victim` (whose backend thread is `thread`),
/// has `killer` send `kill` once the query runs, and checks the query was
/// interrupted; gives the victim back.
async fn interrupted_by(
    mut victim: Conn,
    thread: u64,
    killer: &mut Conn,
    kill: String,
) -> Result<Conn, Failed> {
    let started = Instant::now();
    let sleeping = tokio::spawn(async move {
        let r: Result<Option<i64>, _> = victim.query_first("SELECT SLEEP(30)").await;
        (r, victim)
    });
    // Until the query runs, KILL QUERY finds nothing to interrupt. The
    // process list is read on the primary, where the victims are.
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let running: Option<u64> = killer
            .query_first(format!(
                "SELECT COUNT(*) FROM information_schema.PROCESSLIST \
                 WHERE ID = {thread} AND INFO LIKE 'SELECT SLEEP%'"
            ))
            .await
            .map_err(fail)?;
        if running == Some(1) {
            break;
        }
        check(Instant::now() < deadline, "the SLEEP never started")?;
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    killer.query_drop(&kill).await.map_err(fail)?;
    let (result, victim) = sleeping.await.map_err(fail)?;
    match result {
        // MariaDB interrupts SLEEP with 1317, or SLEEP returns 1.
        Err(mysql_async::Error::Server(e)) if e.code == 1317 => {}
        Ok(Some(1)) => {}
        other => return Err(format!("{kill}: the SLEEP gave {other:?}").into()),
    }
    check(
        started.elapsed() < Duration::from_secs(20),
        format!("{kill} took {:?}", started.elapsed()),
    )?;
    Ok(victim)
}

/// `KILL [QUERY] <id>` through Switchyard. The greeting's connection id
/// (from 2^30 up; what Connector/J's cancel and `mysql_kill()` use) is
/// translated to the backend thread when the killing session is on the
/// same server, and refused with 1094 otherwise (never passed on, where it
/// could name an unrelated thread); the backend's own id
/// (`CONNECTION_ID()`), and any id no session holds, pass unchanged.
fn kill_by_greeting_id_and_backend_id(env: &Env) -> TestResult {
    let kills = |r: &str| metric(env.admin, "switchyard_kills_total", "result", r);
    let (translated, unknown) = (kills("translated")?, kills("unknown")?);
    block_on(async {
        let mut victim = connect(env, MASTER_USER, Some("app")).await?;
        let mut killer = connect(env, MASTER_USER, Some("app")).await?;
        let greeting_id = victim.id();
        check(
            greeting_id >= switchyard::server::FIRST_CONNECTION_ID,
            format!("greeting connection id {greeting_id}"),
        )?;
        let thread: Option<u64> = victim
            .query_first("SELECT CONNECTION_ID()")
            .await
            .map_err(fail)?;
        let thread = thread.ok_or("no CONNECTION_ID()")?;
        check(
            thread != u64::from(greeting_id),
            "the backend thread id is not the greeting's",
        )?;
        // Both sessions are on the primary: the greeting id works.
        let victim = interrupted_by(
            victim,
            thread,
            &mut killer,
            format!("KILL QUERY {greeting_id}"),
        )
        .await?;
        // So does the backend's own id.
        let victim =
            interrupted_by(victim, thread, &mut killer, format!("kill query {thread};")).await?;
        // A KILL among several statements in one COM_QUERY (node-mysql2's
        // pool sends `kill ?; select sleep(0.05)`) is translated too.
        let mut victim = interrupted_by(
            victim,
            thread,
            &mut killer,
            format!("SELECT 'KILL {greeting_id}'; KILL QUERY {greeting_id}; SELECT SLEEP(0.05)"),
        )
        .await?;
        // From a session on a replica, the victim's server is elsewhere.
        let mut elsewhere = connect(env, SLAVE_USER, Some("app")).await?;
        for kill in [
            format!("KILL QUERY {greeting_id}"),
            format!("KILL {}", u32::MAX),
        ] {
            match elsewhere.query_drop(&kill).await {
                Err(mysql_async::Error::Server(e))
                    if e.code == 1094 && e.state == "HY000" && e.message.contains("thread id") => {}
                other => return Err(format!("{kill}: {other:?}").into()),
            }
        }
        // COM_PROCESS_KILL (mysql_kill()) by greeting id, from the replica:
        // the victim's server is elsewhere.
        check(
            process_kill(env, SLAVE_USER, greeting_id)? == Err(1094),
            "COM_PROCESS_KILL of a session elsewhere",
        )?;
        // From the primary it ends the session it names.
        let mut second = connect(env, MASTER_USER, Some("app")).await?;
        check(
            process_kill(env, MASTER_USER, second.id())? == Ok(()),
            "COM_PROCESS_KILL of a session on the same server",
        )?;
        check(
            second.query_drop("SELECT 1").await.is_err(),
            "the session COM_PROCESS_KILL named still answers",
        )?;
        // KILL (CONNECTION) by greeting id ends the victim's session.
        killer
            .query_drop(format!("KILL {greeting_id}"))
            .await
            .map_err(fail)?;
        check(
            victim.query_drop("SELECT 1").await.is_err(),
            "the killed session still answers",
        )?;
        // The killer's and the other session go on.
        let one: Option<u32> = killer.query_first("SELECT 1").await.map_err(fail)?;
        check(one == Some(1), "the killer's session works")?;
        let one: Option<u32> = elsewhere.query_first("SELECT 1").await.map_err(fail)?;
        check(one == Some(1), "the replica session works")?;
        killer.disconnect().await.map_err(fail)?;
        elsewhere.disconnect().await.map_err(fail)
    })?;
    // Four KILLs by greeting id on the same server (KILL QUERY alone and
    // among statements, COM_PROCESS_KILL, KILL); two answered 1094 by
    // Switchyard (the other 1094 is the backend's own: no session holds
    // u32::MAX, so it is a backend thread id).
    let (translated_now, unknown_now) = (kills("translated")?, kills("unknown")?);
    check(
        (translated_now - translated, unknown_now - unknown) == (4, 2),
        format!(
            "translated +{}, unknown +{}",
            translated_now - translated,
            unknown_now - unknown
        ),
    )
}

/// A raw client logged in to `addr` as `user` with database `app`,
/// announcing `caps` beyond a plain 4.1 client's.
fn raw_session(
    addr: SocketAddr,
    (user, password): (&str, &str),
    caps: CapabilityFlags,
) -> Result<RawClient, Failed> {
    let mut raw = RawClient::connect(addr)?.with_capabilities(caps);
    match raw.login(user, password, Some("app"), "mysql_native_password")? {
        LoginOutcome::Ok(2) => Ok(raw),
        other => Err(format!("{other:?}").into()),
    }
}

/// Sends `sql` and reads its answer: the OK's session state changes, as
/// `switchyard::protocol::state_changes` decodes them.
fn tracked(raw: &mut RawClient, sql: &str) -> Result<Vec<StateChange>, Failed> {
    raw.write_raw(&RawClient::query_packet(sql))?;
    let answer = raw.expect_packet()?;
    check(
        answer.seq == 1 && answer.payload.first() == Some(&0x00),
        format!("{sql}: answered {:?}", answer.payload),
    )?;
    Ok(state_changes(
        &answer.payload,
        CapabilityFlags::CLIENT_SESSION_TRACK,
    )?)
}

/// Session state tracking (what statement-level routing will follow) with a
/// client that announces CLIENT_SESSION_TRACK: the backend session gets the
/// capability, MariaDB's OK packets come through whole, and our decoder
/// reads from them a variable's new value, the schema, the transaction
/// state, and a commit's GTID (`last_gtid`).
fn session_state_tracking(env: &Env) -> TestResult {
    let mut raw = raw_session(
        env.proxy.addr(),
        MASTER_USER,
        CapabilityFlags::CLIENT_SESSION_TRACK,
    )?;
    tracked(
        &mut raw,
        "SET SESSION session_track_system_variables = 'last_gtid,time_zone', \
         session_track_schema = ON, session_track_state_change = ON, \
         session_track_transaction_info = 'STATE'",
    )?;
    tracked(&mut raw, "CREATE TABLE IF NOT EXISTS app.tracked (n INT)")?;
    let variable = |changes: &[StateChange], name: &str| {
        changes.iter().find_map(|c| match c {
            StateChange::SystemVariable { name: n, value } if n == name => Some(value.clone()),
            _ => None,
        })
    };
    let changes = tracked(&mut raw, "SET time_zone = '+01:00'")?;
    check(
        variable(&changes, "time_zone").as_deref() == Some("+01:00"),
        format!("SET time_zone: {changes:?}"),
    )?;
    let transaction = |changes: &[StateChange]| {
        changes.iter().find_map(|c| match c {
            StateChange::TransactionState(t) => Some(*t),
            _ => None,
        })
    };
    let changes = tracked(&mut raw, "BEGIN")?;
    check(
        transaction(&changes).is_some_and(|t| t.open() && !t.wrote()),
        format!("BEGIN: {changes:?}"),
    )?;
    let changes = tracked(&mut raw, "INSERT INTO app.tracked VALUES (1)")?;
    check(
        transaction(&changes).is_some_and(|t| t.open() && t.wrote()),
        format!("INSERT: {changes:?}"),
    )?;
    let changes = tracked(&mut raw, "COMMIT")?;
    check(
        transaction(&changes).is_some_and(|t| !t.open()),
        format!("COMMIT: {changes:?}"),
    )?;
    // The commit's GTID: domain-server-sequence.
    let gtid = variable(&changes, "last_gtid").unwrap_or_default();
    let parts: Vec<&str> = gtid.split('-').collect();
    check(
        parts.len() == 3 && parts.iter().all(|p| p.parse::<u64>().is_ok()),
        format!("COMMIT: last_gtid {gtid:?} in {changes:?}"),
    )?;
    let changes = tracked(&mut raw, "USE information_schema")?;
    check(
        changes.contains(&StateChange::Schema("information_schema".into())),
        format!("USE: {changes:?}"),
    )?;
    tracked(&mut raw, "DROP TABLE app.tracked")?;
    Ok(())
}

/// The first row of `sql`'s text result on `raw` (a session without
/// CLIENT_DEPRECATE_EOF).
fn first_row(raw: &mut RawClient, sql: &str) -> Result<Vec<Option<String>>, Failed> {
    raw.write_raw(&RawClient::query_packet(sql))?;
    let mut decoder = ResultSetDecoder::new(false);
    loop {
        let p = raw.expect_packet()?;
        match decoder.feed(&p.payload)? {
            None => {}
            Some(QueryReply::Rows(t)) => return Ok(t.rows.into_iter().next().unwrap_or_default()),
            Some(other) => return Err(format!("{sql}: {other:?}").into()),
        }
    }
}

/// `sql::SessionState` against the real primary: the state a session sets
/// (SET NAMES with a collation, sql_mode, time_zone, a numeric variable,
/// lc_time_names, USE), learnt from its OK packets' session tracking (and,
/// for the collation tracking misses, the SET NAMES), replayed on a fresh
/// session, gives that session the same state (what a reader opened in the
/// middle of a split session will need).
fn session_state_replays_on_another_session(env: &Env) -> TestResult {
    let primary = env.topology().primary.addr();
    let mut a = raw_session(primary, MASTER_USER, CapabilityFlags::CLIENT_SESSION_TRACK)?;
    tracked(
        &mut a,
        "SET SESSION session_track_system_variables = '*', session_track_schema = ON",
    )?;
    let mut state = SessionState::default();
    for sql in [
        "SET NAMES latin1 COLLATE latin1_german1_ci",
        // After SET NAMES: replayed after it.
        "SET character_set_results = utf8mb4",
        "SET SESSION sql_mode = 'ANSI_QUOTES,STRICT_ALL_TABLES'",
        "SET time_zone = '+02:00'",
        "SET SESSION wait_timeout = 1234",
        "SET lc_time_names = 'de_DE'",
        "USE information_schema",
    ] {
        state.apply(&tracked(&mut a, sql)?);
        state.ran(sql);
    }
    let probe = "SELECT @@character_set_client, @@character_set_connection, \
                 @@character_set_results, @@collation_connection, @@sql_mode, \
                 @@time_zone, @@wait_timeout, @@lc_time_names, DATABASE()";
    let wanted = first_row(&mut a, probe)?;
    let mut b = raw_session(primary, MASTER_USER, CapabilityFlags::empty())?;
    check(
        first_row(&mut b, probe)? != wanted,
        "a fresh session already had the state",
    )?;
    let replay = state.replay().map_err(|e| format!("{e:?}"))?;
    for sql in &replay {
        b.write_raw(&RawClient::query_packet(sql))?;
        let answer = b.expect_packet()?;
        check(
            answer.payload.first() == Some(&0x00),
            format!("{sql}: {:?}", String::from_utf8_lossy(&answer.payload)),
        )?;
    }
    let got = first_row(&mut b, probe)?;
    check(
        got == wanted,
        format!("replayed {replay:?}: {got:?}, wanted {wanted:?}"),
    )
}

/// Read-your-writes' two facts against real replication: a write through
/// the proxy reports its GTID in the OK's session tracking (`last_gtid`),
/// and `GtidPos::has_applied` over a replica's `@@gtid_slave_pos` says
/// whether that replica has it: yes once it caught up, no while its SQL
/// thread is stopped.
fn a_writes_gtid_is_applied_where_replicas_say(env: &Env) -> TestResult {
    let mut raw = raw_session(
        env.proxy.addr(),
        MASTER_USER,
        CapabilityFlags::CLIENT_SESSION_TRACK,
    )?;
    tracked(
        &mut raw,
        "SET SESSION session_track_system_variables = 'last_gtid'",
    )?;
    tracked(&mut raw, "CREATE TABLE IF NOT EXISTS app.causal (n INT)")?;
    let mut write = |n: u32| -> Result<Gtid, Failed> {
        let changes = tracked(&mut raw, &format!("INSERT INTO app.causal VALUES ({n})"))?;
        let last = changes.iter().find_map(|c| match c {
            StateChange::SystemVariable { name, value } if name == "last_gtid" => Some(value),
            _ => None,
        });
        Ok(last
            .ok_or(format!("no last_gtid in {changes:?}"))?
            .parse()?)
    };
    let replica_pos = |env: &Env| -> Result<GtidPos, Failed> {
        Ok(env.topology().replicas[0]
            .sql("SELECT @@gtid_slave_pos")
            .parse()?)
    };
    let first = write(1)?;
    env.topology().sync_replicas().map_err(fail)?;
    check(
        replica_pos(env)?.has_applied(&first),
        format!("{first} not applied at {:?}", replica_pos(env)?),
    )?;
    env.topology().replicas[0].sql("STOP SLAVE SQL_THREAD");
    let stopped = write(2).and_then(|second| {
        check(second.seq > first.seq, format!("{second} after {first}"))?;
        let pos = replica_pos(env)?;
        check(
            !pos.has_applied(&second) && pos.has_applied(&first),
            format!("{second} applied at {pos:?} with the SQL thread stopped"),
        )?;
        Ok(second)
    });
    // Replication back in any case, for the tests after this one.
    env.topology().replicas[0].sql("START SLAVE SQL_THREAD");
    let second = stopped?;
    env.topology().sync_replicas().map_err(fail)?;
    check(
        replica_pos(env)?.has_applied(&second),
        "applied once restarted",
    )?;
    tracked(&mut raw, "DROP TABLE app.causal")?;
    Ok(())
}

/// Sends the command `payload` and reads its answer to where
/// `ReplyFramer` says it ends (sending LOAD DATA LOCAL's file when asked),
/// then a COM_PING whose OK must be the very next packet: an answer framed
/// short leaves packets before it, one framed long waits for a packet that
/// never comes. The answer's packets and the final status.
fn framed(
    raw: &mut RawClient,
    payload: &[u8],
    deprecate_eof: bool,
    status: StatusFlags,
) -> Result<(Vec<Vec<u8>>, StatusFlags), Failed> {
    let what = String::from_utf8_lossy(payload).into_owned();
    raw.write_raw(&RawClient::command_packet(payload))?;
    let mut framer = ReplyFramer::new(ReplyTo::of(payload), deprecate_eof, status);
    let mut packets = Vec::new();
    let mut status = status;
    while !framer.is_done() {
        let p = raw.expect_packet()?;
        let head = &p.payload[..p.payload.len().min(REPLY_HEAD)];
        let step = framer
            .packet(p.payload.len(), head)
            .map_err(|e| format!("{what}: packet {} {:?}: {e}", packets.len(), p.payload))?;
        packets.push(p.payload.to_vec());
        match step {
            ReplyStep::More => {}
            ReplyStep::WaitsForClient => {
                raw.write_packet(p.seq + 1, b"7\n8\n")?;
                raw.write_packet(p.seq + 2, b"")?;
            }
            ReplyStep::Done(s) => status = s,
        }
    }
    raw.write_raw(&RawClient::command_packet(&[0x0e]))?;
    let ping = raw.expect_packet()?;
    check(
        ping.seq == 1 && ping.payload.first() == Some(&0x00),
        format!(
            "{what}: after the framed answer {packets:?} came {:?}",
            ping.payload
        ),
    )?;
    Ok((packets, status))
}

/// `ReplyFramer` against the real primary's answers, with and without
/// CLIENT_DEPRECATE_EOF: text and binary results, multi-statements and
/// CALL (more results), errors mid-chain, transactions' status flags,
/// LOAD DATA LOCAL, prepared statements with and without parameters, a
/// cursor and its fetches, COM_FIELD_LIST, COM_STATISTICS, COM_SET_OPTION.
fn answers_end_where_the_framer_says(env: &Env) -> TestResult {
    let primary = env.topology().primary.addr();
    env.topology()
        .primary
        .sql("CREATE TABLE IF NOT EXISTS app.framer_t (n INT)");
    for deprecate_eof in [false, true] {
        let mut caps = CapabilityFlags::CLIENT_MULTI_STATEMENTS
            | CapabilityFlags::CLIENT_MULTI_RESULTS
            | CapabilityFlags::CLIENT_PS_MULTI_RESULTS
            | CapabilityFlags::CLIENT_LOCAL_FILES;
        caps.set(CapabilityFlags::CLIENT_DEPRECATE_EOF, deprecate_eof);
        let mut raw = raw_session(primary, MASTER_USER, caps)?;
        let mut status = StatusFlags::SERVER_STATUS_AUTOCOMMIT;
        let mut run = |raw: &mut RawClient, payload: &[u8]| {
            let (packets, now) = framed(raw, payload, deprecate_eof, status)?;
            status = now;
            Ok::<_, Failed>((packets, now))
        };
        let query = |sql: &str| [&[0x03][..], sql.as_bytes()].concat();
        for sql in [
            // Its body's semicolons are the server's to read.
            "CREATE OR REPLACE PROCEDURE app.framer_p() BEGIN SELECT 1; SELECT 2, 3; END",
            "SELECT 1",
            "SELECT seq, 'x' FROM seq_1_to_1000",
            "SELECT 1; SELECT 2; DO 1",
            "SELECT nope",
            "SELECT 1; SELECT nope; SELECT 3",
            "CALL app.framer_p()",
            "LOAD DATA LOCAL INFILE 'rows.csv' INTO TABLE app.framer_t",
        ] {
            run(&mut raw, &query(sql))?;
        }
        let (_, s) = run(&mut raw, &query("BEGIN"))?;
        check(
            s.contains(StatusFlags::SERVER_STATUS_IN_TRANS),
            "BEGIN: in a transaction",
        )?;
        run(&mut raw, &query("INSERT INTO app.framer_t VALUES (1)"))?;
        let (_, s) = run(&mut raw, &query("SELECT COUNT(*) FROM app.framer_t"))?;
        check(
            s.contains(StatusFlags::SERVER_STATUS_IN_TRANS),
            "a result in a transaction",
        )?;
        let (_, s) = run(&mut raw, &query("COMMIT"))?;
        check(
            !s.contains(StatusFlags::SERVER_STATUS_IN_TRANS),
            "COMMIT: none",
        )?;
        // Prepared statements: their ids from the prepare OKs.
        let id = |packets: &[Vec<u8>]| -> Result<[u8; 4], Failed> {
            Ok(packets[0].get(1..5).ok_or("no statement id")?.try_into()?)
        };
        let (with_params, _) = run(&mut raw, &[&[0x16][..], b"SELECT ?, 2 FROM dual"].concat())?;
        let (rows, _) = run(
            &mut raw,
            &[&[0x16][..], b"SELECT seq FROM seq_1_to_50"].concat(),
        )?;
        run(&mut raw, &[&[0x16][..], b"SELECT nope"].concat())?;
        let rows = id(&rows)?;
        let execute = |flags: u8| [&[0x17][..], &rows, &[flags, 1, 0, 0, 0]].concat();
        run(&mut raw, &execute(0))?;
        run(&mut raw, &execute(1))?;
        for _ in 0..3 {
            run(
                &mut raw,
                &[&[0x1c][..], &rows, &20u32.to_le_bytes()].concat(),
            )?;
        }
        run(&mut raw, &[&[0x1a][..], &rows].concat())?;
        // COM_STMT_CLOSE gets no answer.
        run(&mut raw, &[&[0x19][..], &id(&with_params)?].concat())?;
        run(&mut raw, b"\x04framer_t\0")?;
        run(&mut raw, b"\x09")?;
        run(&mut raw, b"\x1b\x00\x00")?;
        run(&mut raw, b"\x02app")?;
    }
    env.topology()
        .primary
        .sql("DROP TABLE app.framer_t; DROP PROCEDURE app.framer_p");
    Ok(())
}

/// Sends COM_PROCESS_KILL for connection `id` as `user` (a raw client:
/// client libraries send KILL statements); the ERR's code if refused.
fn process_kill(
    env: &Env,
    (user, password): (&str, &str),
    id: u32,
) -> Result<Result<(), u16>, Failed> {
    let mut raw = raw_session(env.proxy.addr(), (user, password), CapabilityFlags::empty())?;
    let mut payload = vec![0x0c];
    payload.extend_from_slice(&id.to_le_bytes());
    raw.write_raw(&RawClient::command_packet(&payload))?;
    let answer = raw.expect_packet()?;
    check(answer.seq == 1, format!("answered at #{}", answer.seq))?;
    match answer.payload.first() {
        Some(0x00) => Ok(Ok(())),
        Some(0xff) => Ok(Err(u16::from_le_bytes([
            answer.payload[1],
            answer.payload[2],
        ]))),
        _ => Err(format!("COM_PROCESS_KILL answered {:?}", answer.payload).into()),
    }
}

/// Reads the large answer `big` three times, each followed by a small one.
async fn read_big(conn: &mut Conn, big: &str, expected: &str) -> TestResult {
    conn.query_drop("SET SESSION group_concat_max_len = 67108864")
        .await
        .map_err(fail)?;
    for round in 0..3 {
        let got: Option<String> = conn.query_first(big).await.map_err(fail)?;
        check(
            got.as_deref() == Some(expected),
            format!(
                "round {round}: {} bytes back, {} expected",
                got.map_or(0, |g| g.len()),
                expected.len()
            ),
        )?;
        let one: Option<u32> = conn.query_first("SELECT 1").await.map_err(fail)?;
        check(one == Some(1), format!("SELECT 1 gave {one:?}"))?;
    }
    Ok(())
}

/// Large answers (which the relay moves with splice(2) on plain TCP), then
/// COM_CHANGE_USER to another pool and in place, then large answers again:
/// every byte arrives, in order, on every backend session.
fn large_results_around_change_user(env: &Env) -> TestResult {
    const N: u32 = 400_000;
    let expected = (1..=N).map(|i| i.to_string()).collect::<Vec<_>>().join(",");
    let big = format!("SELECT GROUP_CONCAT(seq ORDER BY seq SEPARATOR ',') FROM app.seq_1_to_{N}");
    block_on(async {
        let change = |(user, pass): (&str, &str)| {
            mysql_async::ChangeUserOpts::default()
                .with_user(Some(user.into()))
                .with_pass(Some(pass.into()))
        };
        let mut conn = connect(env, MASTER_USER, None).await?;
        read_big(&mut conn, &big, &expected).await?;
        // To another pool: the session moves to a replica.
        conn.change_user(change(SLAVE_USER)).await.map_err(fail)?;
        let id = server_id(&mut conn).await?;
        check(
            REPLICA_IDS.contains(&id),
            format!("slave on a replica, got {id}"),
        )?;
        read_big(&mut conn, &big, &expected).await?;
        // The same pool: re-authenticated in place.
        conn.change_user(change(SLAVE_USER)).await.map_err(fail)?;
        check(
            server_id(&mut conn).await? == id,
            "still on the same replica",
        )?;
        read_big(&mut conn, &big, &expected).await?;
        conn.disconnect().await.map_err(fail)
    })
}

fn com_change_user_refused_ends_the_session(env: &Env) -> TestResult {
    let before = seen(env);
    // A wrong password, and an unknown user: ERR 1045 in the client's
    // sequence, no backend connection, and the session is over (as MariaDB
    // leaves it): one session cannot be used to guess password after
    // password.
    for (user, pass) in [(SLAVE_USER.0, "wrong"), ("nobody", "x")] {
        let mut raw = RawClient::connect(env.proxy.addr())?;
        let nonce = match raw.login(MASTER_USER.0, MASTER_USER.1, None, "mysql_native_password")? {
            LoginOutcome::Ok(_) => raw.nonce.clone(),
            other => return Err(format!("{other:?}").into()),
        };
        let opened = seen(env);
        raw.write_raw(&RawClient::change_user_packet(user, pass, &nonce, None))?;
        let p = raw.expect_packet()?;
        check(
            ErrPacket::is_err(&p.payload) && p.seq == 1,
            format!("{p:?}"),
        )?;
        let err = ErrPacket::decode(&p.payload)?;
        check(
            err.code == 1045
                && err.message
                    == format!("Access denied for user '{user}'@'127.0.0.1' (using password: YES)"),
            format!("{err:?}"),
        )?;
        // A second guess on the same session gets nowhere.
        let _ = raw.write_raw(&RawClient::change_user_packet(
            SLAVE_USER.0,
            SLAVE_USER.1,
            &nonce,
            None,
        ));
        check(
            matches!(raw.read_packet(), Ok(None) | Err(_)),
            "the session is closed after a refused COM_CHANGE_USER",
        )?;
        no_connections_since(env, &opened)?;
    }
    let _ = before;
    // The right password works, in place.
    let mut raw = RawClient::connect(env.proxy.addr())?;
    let LoginOutcome::Ok(_) =
        raw.login(MASTER_USER.0, MASTER_USER.1, None, "mysql_native_password")?
    else {
        return Err("login".into());
    };
    let nonce = raw.nonce.clone();
    raw.write_raw(&RawClient::change_user_packet(
        SLAVE_USER.0,
        SLAVE_USER.1,
        &nonce,
        None,
    ))?;
    let p = raw.expect_packet()?;
    check(
        p.payload.first() == Some(&0) && p.seq == 1,
        format!("{p:?}"),
    )
}

/// Logs in on `raw` and fails the test on anything but OK.
fn raw_login(raw: &mut RawClient, user: (&str, &str)) -> TestResult {
    match raw.login(user.0, user.1, None, "mysql_native_password")? {
        LoginOutcome::Ok(_) => Ok(()),
        other => Err(format!("login as {}: {other:?}", user.0).into()),
    }
}

/// The first packet of a connection from `from`: its error code, if it is
/// an ERR (the greeting otherwise).
fn first_packet_error(env: &Env, from: std::net::IpAddr) -> Result<Option<u16>, Failed> {
    let mut raw = RawClient::connect_from(env.proxy.addr(), from)?;
    let p = raw.expect_packet()?;
    Ok(ErrPacket::is_err(&p.payload).then(|| u16::from_le_bytes([p.payload[1], p.payload[2]])))
}

fn throttle_counts_every_path(env: &Env) -> TestResult {
    // An address of its own: the shared proxy's throttle (20 failures a
    // minute) sees only this test's failures.
    let me: std::net::IpAddr = "127.0.0.21".parse().map_err(fail)?;
    let addr = env.proxy.addr();
    let wrong = |user: &str| -> TestResult {
        let mut raw = RawClient::connect_from(addr, me)?;
        match raw.login(user, "guess", None, "mysql_native_password")? {
            LoginOutcome::Err(e, _) if e.code == 1045 => Ok(()),
            other => Err(format!("wrong password of {user}: {other:?}").into()),
        }
    };
    // Sessions logged in before any failure: one to try COM_CHANGE_USER
    // once blocked, nine to fail one each.
    let mut sessions = Vec::new();
    for _ in 0..10 {
        let mut raw = RawClient::connect_from(addr, me)?;
        raw_login(&mut raw, MASTER_USER)?;
        sessions.push(raw);
    }
    let mut survivor = sessions.pop().ok_or("no session")?;
    // A connection greeted now and answered only once the address is
    // blocked.
    let mut early = RawClient::connect_from(addr, me)?;
    let early_greeting = early.greeting()?;
    for _ in 0..10 {
        wrong(SLAVE_USER.0)?;
    }
    // Wrong passwords through COM_CHANGE_USER count too.
    for mut raw in sessions {
        let nonce = raw.nonce.clone();
        raw.write_raw(&RawClient::change_user_packet(
            SLAVE_USER.0,
            "guess",
            &nonce,
            None,
        ))?;
        let p = raw.expect_packet()?;
        check(
            ErrPacket::decode(&p.payload).is_ok_and(|e| e.code == 1045),
            format!("{p:?}"),
        )?;
    }
    // Switchyard accepts ghost's password, the backend refuses the login:
    // that is no successful login, and the count stays.
    let mut raw = RawClient::connect_from(addr, me)?;
    match raw.login("ghost", "ghostpass", None, "mysql_native_password")? {
        LoginOutcome::Err(e, _) if e.code == 1045 => {}
        other => return Err(format!("ghost: {other:?}").into()),
    }
    check(
        first_packet_error(env, me)?.is_none(),
        "19 failures do not block yet",
    )?;
    // The twentieth failure blocks the address.
    wrong(SLAVE_USER.0)?;
    check(
        first_packet_error(env, me)? == Some(1129),
        "the address is blocked at accept",
    )?;
    // Blocked, it cannot authenticate by any path: not on a connection
    // greeted before the block...
    match early.respond(
        &early_greeting,
        MASTER_USER.0,
        MASTER_USER.1,
        None,
        "mysql_native_password",
    )? {
        LoginOutcome::Err(e, _) if e.code == 1129 => {}
        other => return Err(format!("login greeted before the block: {other:?}").into()),
    }
    // ...nor by COM_CHANGE_USER on a session logged in before it.
    let nonce = survivor.nonce.clone();
    survivor.write_raw(&RawClient::change_user_packet(
        SLAVE_USER.0,
        SLAVE_USER.1,
        &nonce,
        None,
    ))?;
    let p = survivor.expect_packet()?;
    check(
        ErrPacket::decode(&p.payload).is_ok_and(|e| e.code == 1129) && p.seq == 1,
        format!("COM_CHANGE_USER while blocked: {p:?}"),
    )?;
    check(
        matches!(survivor.read_packet(), Ok(None) | Err(_)),
        "closed after the refused COM_CHANGE_USER",
    )?;
    // Other addresses are not affected.
    let other: std::net::IpAddr = "127.0.0.22".parse().map_err(fail)?;
    let mut raw = RawClient::connect_from(addr, other)?;
    raw_login(&mut raw, MASTER_USER)
}

/// A proxy whose accounts use caching_sha2_password, with an RSA key from
/// a file made by `openssl genpkey`.
fn sha2_proxy(env: &Env, dir: &std::path::Path) -> Result<(Proxy, SocketAddr), Failed> {
    let key = dir.join("rsa.pem");
    let out = std::process::Command::new("openssl")
        .args([
            "genpkey",
            "-algorithm",
            "RSA",
            "-pkeyopt",
            "rsa_keygen_bits:2048",
            "-out",
        ])
        .arg(&key)
        .output()
        .map_err(fail)?;
    check(out.status.success(), String::from_utf8_lossy(&out.stderr))?;
    let config = proxy_config(&env.topology()).replace(
        "[pools.master]",
        &format!(
            "[auth]\ndefault_plugin = \"caching_sha2_password\"\nrsa_private_key = \"{}\"\n\n[pools.master]",
            key.display()
        ),
    );
    let (config, admin) = with_admin(config);
    Ok((Proxy::start(&config).map_err(fail)?, admin))
}

fn caching_sha2_full_then_fast(env: &Env) -> TestResult {
    use switchyard_e2e::raw::Sha2Path;
    let dir = tempfile::tempdir().map_err(fail)?;
    let (proxy, admin) = sha2_proxy(env, dir.path())?;
    let login = |user: &str, pass: &str| -> Result<(Sha2Path, LoginOutcome), Failed> {
        let mut raw = RawClient::connect(proxy.addr())?;
        Ok(raw.login_caching_sha2(user, pass, None)?)
    };
    let before = seen(env);
    // Cold cache: full authentication over RSA; a wrong password, an
    // unknown user and a wrong password on the fast path all get 1045 in
    // the client's sequence and open no backend connection.
    for (user, pass, path, seq) in [
        (MASTER_USER.0, "wrong", Sha2Path::FullRsa, 6),
        ("nobody", "x", Sha2Path::FullRsa, 6),
    ] {
        match login(user, pass)? {
            (p, LoginOutcome::Err(e, s)) if p == path && e.code == 1045 && s == seq => {}
            other => return Err(format!("{user}/{pass}: {other:?}").into()),
        }
    }
    no_connections_since(env, &before)?;
    match login(MASTER_USER.0, MASTER_USER.1)? {
        (Sha2Path::FullRsa, LoginOutcome::Ok(6)) => {}
        other => return Err(format!("first login: {other:?}").into()),
    }
    // Now cached: the fast path, OK right after "fast auth success".
    match login(MASTER_USER.0, MASTER_USER.1)? {
        (Sha2Path::Fast, LoginOutcome::Ok(3)) => {}
        other => return Err(format!("second login: {other:?}").into()),
    }
    // A wrong password after that falls back to full authentication.
    match login(MASTER_USER.0, "wrong")? {
        (Sha2Path::FullRsa, LoginOutcome::Err(e, 6)) if e.code == 1045 => {}
        other => return Err(format!("wrong password, warm: {other:?}").into()),
    }
    // A native client is switched to caching_sha2_password; a library
    // client (mysql_async) does the whole exchange and lands by policy.
    let mut raw = RawClient::connect(proxy.addr())?;
    match raw.login(SLAVE_USER.0, SLAVE_USER.1, None, "mysql_native_password") {
        Err(e)
            if e.to_string()
                .contains("asked to switch to caching_sha2_password") => {}
        other => return Err(format!("native client: {other:?}").into()),
    }
    block_on(async {
        let mut conn = Conn::new(opts(proxy.addr().port(), SLAVE_USER, Some("app")))
            .await
            .map_err(fail)?;
        let id = server_id(&mut conn).await?;
        check(
            REPLICA_IDS.contains(&id),
            format!("slave on a replica, got {id}"),
        )?;
        conn.disconnect().await.map_err(fail)?;
        let wrong = Conn::new(opts(proxy.addr().port(), (SLAVE_USER.0, "nope"), None)).await;
        let (code, _, _) = server_error(wrong.err().ok_or("wrong password accepted")?)?;
        check(code == 1045, format!("{code}"))
    })?;
    // The paths, as the metrics count them: one fast path, the rest full
    // authentication over RSA (this proxy has no TLS).
    let path = |p: &str| metric(admin, "switchyard_caching_sha2_exchanges_total", "path", p);
    let (fast, tls, rsa) = (path("fast")?, path("full_tls")?, path("full_rsa")?);
    check(
        fast == 1 && tls == 0 && rsa >= 4,
        format!("fast {fast}, full_tls {tls}, full_rsa {rsa}"),
    )
}

fn garbage_and_truncated_packets(env: &Env) -> TestResult {
    let addr = env.proxy.addr();
    // A session that is open all along must not notice anything.
    let rt = runtime();
    let mut bystander = rt.block_on(connect(env, SLAVE_USER, None))?;
    let started = Instant::now();
    // Garbage before the greeting is even read.
    let mut c = RawClient::connect(addr)?;
    c.write_raw(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")?;
    c.greeting()?;
    check(c.is_closed_by_peer(), "HTTP request: closed")?;
    // A packet announcing 16 MiB during login.
    let mut c = RawClient::connect(addr)?;
    c.greeting()?;
    c.write_raw(&[0xff, 0xff, 0xff, 1, 0xde, 0xad])?;
    check(c.is_closed_by_peer(), "oversized packet: closed")?;
    // Well framed, but not a handshake response.
    let mut c = RawClient::connect(addr)?;
    c.greeting()?;
    c.write_packet(1, &[0x85, 0xa6, 0x03, 0x00, 0x00])?;
    check(c.is_closed_by_peer(), "malformed response: closed")?;
    // Wrong sequence id.
    let mut c = RawClient::connect(addr)?;
    c.greeting()?;
    c.write_packet(9, &[0u8; 40])?;
    check(c.is_closed_by_peer(), "out-of-order packet: closed")?;
    // Random bytes of every kind.
    for seed in 0..20u32 {
        let mut c = RawClient::connect(addr)?;
        c.greeting()?;
        let junk: Vec<u8> = (0..64 + seed * 13)
            .map(|i| (i.wrapping_mul(seed + 7).wrapping_mul(2_654_435_761) >> 13) as u8)
            .collect();
        c.write_raw(&junk)?;
        drop(c);
    }
    // A truncated packet, then silence: closed at the login timeout (3 s).
    let mut c = RawClient::connect(addr)?;
    c.greeting()?;
    c.write_raw(&[100, 0, 0, 1, 1, 2, 3])?;
    let t = Instant::now();
    check(c.is_closed_by_peer(), "truncated packet: closed")?;
    check(
        t.elapsed() < Duration::from_secs(8),
        "closed at the login timeout",
    )?;
    // A logged-in client that sends a truncated packet and vanishes.
    let mut c = RawClient::connect(addr)?;
    match c.login(SLAVE_USER.0, SLAVE_USER.1, None, "mysql_native_password")? {
        LoginOutcome::Ok(_) => {}
        other => return Err(format!("{other:?}").into()),
    }
    c.write_raw(&[0x40, 0, 0, 0, 0x03, b'S'])?;
    drop(c);
    // Everyone else is served as before.
    rt.block_on(async {
        let one: Option<u32> = bystander.query_first("SELECT 1").await.map_err(fail)?;
        check(one == Some(1), "the bystander session still works")?;
        let mut fresh = connect(env, MASTER_USER, None).await?;
        check(
            server_id(&mut fresh).await? == PRIMARY_ID,
            "new logins work",
        )?;
        fresh.disconnect().await.map_err(fail)?;
        bystander.disconnect().await.map_err(fail)
    })?;
    env.proxy
        .wait_for_log("bad handshake response", Duration::from_secs(5))
        .map_err(fail)?;
    env.proxy
        .wait_for_log("login timed out", Duration::from_secs(5))
        .map_err(fail)?;
    check(
        !env.proxy.log().contains("panicked"),
        "no panic in the proxy",
    )?;
    // Every client so far (mysql_async, the CLI, raw) got its flags on the backend.
    check(
        !env.proxy.log().contains("lacks capabilities"),
        "capability parity held for every session",
    )?;
    check(
        started.elapsed() < Duration::from_secs(30),
        "contained quickly",
    )
}

fn too_many_connections(env: &Env) -> TestResult {
    let config = {
        let t = env.topology();
        proxy_config(&t).replace(
            "login_timeout_ms = 3000",
            "login_timeout_ms = 3000\nmax_connections = 2",
        )
    };
    let proxy = Proxy::start(&config).map_err(fail)?;
    block_on(async {
        let a = Conn::new(opts(proxy.port, SLAVE_USER, None))
            .await
            .map_err(fail)?;
        let b = Conn::new(opts(proxy.port, SLAVE_USER, None))
            .await
            .map_err(fail)?;
        let e = Conn::new(opts(proxy.port, SLAVE_USER, None))
            .await
            .expect_err("third session");
        // Sent before any capabilities are negotiated, the ERR has no
        // SQLSTATE, as MySQL's and MariaDB's own (clients show HY000).
        let (code, _, msg) = server_error(e)?;
        check(
            code == 1040 && msg == "Too many connections",
            format!("{code} {msg}"),
        )?;
        a.disconnect().await.map_err(fail)?;
        // The slot is free again once a session ends.
        let mut ok = false;
        for _ in 0..50 {
            if let Ok(c) = Conn::new(opts(proxy.port, SLAVE_USER, None)).await {
                c.disconnect().await.map_err(fail)?;
                ok = true;
                break;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        check(ok, "a freed slot is reused")?;
        b.disconnect().await.map_err(fail)
    })
}

fn replica_down_then_all_down(env: &Env) -> TestResult {
    let result = replica_failover_steps(env);
    // Whatever happened, bring the replicas back for later tests.
    let mut topology = env.topology();
    for r in topology.replicas.iter_mut() {
        if !r.is_running() {
            r.restart().map_err(fail)?;
        }
    }
    result
}

fn replica_failover_steps(env: &Env) -> TestResult {
    env.topology().replicas[1].stop();
    block_on(async {
        let mut conns = Vec::new();
        for _ in 0..4 {
            let mut c = connect(env, SLAVE_USER, None).await?;
            check(
                server_id(&mut c).await? == REPLICA_IDS[0],
                "sessions avoid the stopped replica",
            )?;
            conns.push(c);
        }
        for c in conns {
            c.disconnect().await.map_err(fail)?;
        }
        Ok::<_, Failed>(())
    })?;
    env.topology().replicas[0].stop();
    let (code, state, msg) = block_on(login_error(env, SLAVE_USER, None))?;
    check(code == 9102 && state == "HY000", format!("{code} {state}"))?;
    check(msg.contains("pool 'replicas'"), msg.clone())?;
    // The primary is not affected.
    block_on(async {
        let mut c = connect(env, MASTER_USER, None).await?;
        check(
            server_id(&mut c).await? == PRIMARY_ID,
            "master still served",
        )?;
        c.disconnect().await.map_err(fail)
    })?;
    // A proxy started while none of its backends answers greets with the
    // configured default, and with the backends' identity once they answer.
    let late = {
        let t = env.topology();
        Proxy::start(&format!(
            "listen = \"127.0.0.1:{{port}}\"\nprobe_interval_ms = 200\n\
             [pools.replicas]\nbackends = [\"{}\", \"{}\"]\n\
             [policy]\nmodule = \"{{policy}}\"\n",
            t.replicas[0].addr(),
            t.replicas[1].addr()
        ))
        .map_err(fail)?
    };
    let g = RawClient::connect(late.addr())?.greeting()?;
    check(
        g.server_version == "5.5.5-10.11.0-MariaDB-switchyard",
        format!("{g:?}"),
    )?;
    // Back up: both replicas take sessions again.
    {
        let mut t = env.topology();
        t.replicas[0].restart().map_err(fail)?;
        t.replicas[1].restart().map_err(fail)?;
    }
    let version = env.topology().replicas[0].sql("SELECT @@version");
    let deadline = Instant::now() + Duration::from_secs(10);
    while RawClient::connect(late.addr())?.greeting()?.server_version != format!("5.5.5-{version}")
    {
        check(
            Instant::now() < deadline,
            "the late proxy presents the backends' version",
        )?;
        std::thread::sleep(Duration::from_millis(100));
    }
    drop(late);
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let ids = block_on(async {
            let mut conns = Vec::new();
            let mut ids = Vec::new();
            for _ in 0..2 {
                let mut c = connect(env, SLAVE_USER, None).await?;
                ids.push(server_id(&mut c).await?);
                conns.push(c);
            }
            for c in conns {
                c.disconnect().await.map_err(fail)?;
            }
            ids.sort();
            Ok::<_, Failed>(ids)
        })?;
        if ids == REPLICA_IDS {
            return Ok(());
        }
        if Instant::now() > deadline {
            return Err(format!("replicas not both back in rotation: {ids:?}").into());
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}

fn misbehaving_policies_are_contained(env: &Env) -> TestResult {
    let config = {
        let t = env.topology();
        let mut c = proxy_config(&t).replace("module = \"{policy}\"", "module = \"{misbehave}\"");
        for (name, mode) in [
            ("looper", "loop"),
            ("panicker", "panic"),
            ("hog", "memory"),
            ("chatty", "huge"),
            ("refuser", "huge-refusal"),
            ("inspector", "inspect"),
        ] {
            c = c.replace(
                "[pools.master]",
                &format!(
                    "[[users]]\nname = \"{name}\"\npassword_hash = \"{}\"\n[pools.master]",
                    PasswordHash::of_password(b"pw")
                ),
            );
            c.push_str(&format!("\"mode.{name}\" = \"{mode}\"\n"));
        }
        c
    };
    let proxy = Proxy::start(&config).map_err(fail)?;
    let port = proxy.port;
    block_on(async move {
        let attempt = |user: &'static str| async move {
            Conn::new(opts(port, (user, "pw"), None))
                .await
                .map(|_| ())
                .map_err(server_error)
        };
        for user in ["looper", "panicker", "hog", "chatty"] {
            let started = Instant::now();
            let (code, state, msg) = match attempt(user).await {
                Ok(()) => return Err(format!("{user} logged in").into()),
                Err(e) => e?,
            };
            check(
                code == 9101 && state == "HY000",
                format!("{user}: {code} {state} {msg}"),
            )?;
            check(msg.contains(&format!("user '{user}'")), msg.clone())?;
            // The engine's error text stays in the log.
            check(
                !msg.contains("wasm") && !msg.contains("trap") && !msg.contains('\n'),
                format!("{user}: engine text reached the client: {msg}"),
            )?;
            check(
                started.elapsed() < Duration::from_secs(2),
                format!("{user} answered quickly"),
            )?;
        }
        // The host functions: arguments, settings and live pool figures.
        let held = Conn::new(opts(port, SLAVE_USER, None))
            .await
            .map_err(fail)?;
        let (code, _, msg) = match Conn::new(opts(port, ("inspector", "pw"), Some("app"))).await {
            Ok(_) => return Err("inspector logged in".into()),
            Err(e) => server_error(e)?,
        };
        check(code == 9100, format!("{code} {msg}"))?;
        check(
            msg.starts_with("user=inspector db=app client=127.0.0.1:"),
            msg.clone(),
        )?;
        check(
            msg.contains("master:healthy=1,total=1,active=0,lag=None")
                && msg.contains("replicas:healthy=2,total=2,active=1,lag=None"),
            msg.clone(),
        )?;
        held.disconnect().await.map_err(fail)?;
        let (code, _, msg) = attempt("refuser").await.expect_err("refused")?;
        check(
            code == 9100 && msg.len() <= 1100 && msg.starts_with("no no"),
            format!("{code} {}", msg.len()),
        )?;
        // Endless loops in flight do not hold up anyone else.
        let mut tasks = Vec::new();
        for i in 0..12 {
            let user = if i % 3 == 0 { "looper" } else { SLAVE_USER.0 };
            let password = if i % 3 == 0 { "pw" } else { SLAVE_USER.1 };
            tasks.push(tokio::spawn(async move {
                let r = Conn::new(opts(port, (user, password), None)).await;
                (user, r.map(drop).is_ok())
            }));
        }
        for t in tasks {
            let (user, ok) = t.await.map_err(fail)?;
            check(ok == (user != "looper"), format!("{user}: ok={ok}"))?;
        }
        Ok::<_, Failed>(())
    })?;
    proxy
        .wait_for_log("did not answer in time", Duration::from_secs(5))
        .map_err(fail)?;
    check(
        proxy.log().contains("policy misbehave_policy.wasm failed"),
        "failures are logged with the policy's name",
    )?;
    check(!proxy.log().contains("panicked at"), "no host panic")
}

fn hash_password_command(_env: &Env) -> TestResult {
    use std::io::Write;
    let mut child = std::process::Command::new(&switchyard_e2e::artifacts().switchyard)
        .arg("hash-password")
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()?;
    child
        .stdin
        .take()
        .ok_or("stdin")?
        .write_all(b"masterpass\n")?;
    let out = child.wait_with_output()?;
    let printed = String::from_utf8_lossy(&out.stdout);
    check(
        out.status.success() && printed.trim() == "*9C01670BF00D3764A16EF8B0611F8FC02173FC31",
        printed.to_string(),
    )
}

fn bad_config_names_file_and_line(_env: &Env) -> TestResult {
    let dir = tempfile::tempdir()?;
    let path = dir.path().join("bad.toml");
    std::fs::write(
        &path,
        "listen = \"127.0.0.1:1\"\n[pools.p]\nbackends = [\"127.0.0.1:2\"]\nbalanse = \"x\"\n",
    )?;
    let out = std::process::Command::new(&switchyard_e2e::artifacts().switchyard)
        .arg("run")
        .arg("--config")
        .arg(&path)
        .output()?;
    let stderr = String::from_utf8_lossy(&out.stderr);
    check(!out.status.success(), "a bad config is refused")?;
    check(
        stderr.contains(&format!("{}:4:", path.display())) && stderr.contains("balanse"),
        stderr.to_string(),
    )
}

fn backend_plugin_it_cannot_answer(env: &Env) -> TestResult {
    // 'edward' logs in to the primary with ed25519, which needs the
    // cleartext password; kept out of the binlog (replicas lack the plugin).
    env.topology().primary.sql(
        "SET sql_log_bin = 0;
         INSTALL SONAME 'auth_ed25519';
         CREATE USER 'edward'@'%' IDENTIFIED VIA ed25519 USING PASSWORD('edpass');",
    );
    let result = block_on(login_error(env, ("edward", "edpass"), None));
    env.topology()
        .primary
        .sql("SET sql_log_bin = 0; DROP USER 'edward'@'%';");
    let (code, state, msg) = result?;
    check(code == 9103 && state == "HY000", format!("{code} {state}"))?;
    check(msg.contains("client_ed25519"), msg)
}

fn hung_replica_is_skipped(env: &Env) -> TestResult {
    env.topology().replicas[1].pause();
    let result = block_on(async {
        let mut conns = Vec::new();
        for _ in 0..4 {
            let started = Instant::now();
            let mut c = connect(env, SLAVE_USER, None).await?;
            check(
                server_id(&mut c).await? == REPLICA_IDS[0],
                "sessions avoid the hung replica",
            )?;
            // At most one connect timeout (700 ms) is spent on the hung one.
            check(
                started.elapsed() < Duration::from_millis(2500),
                format!("login took {:?}", started.elapsed()),
            )?;
            conns.push(c);
        }
        for c in conns {
            c.disconnect().await.map_err(fail)?;
        }
        Ok::<_, Failed>(())
    });
    env.topology().replicas[1].resume();
    result?;
    env.proxy
        .wait_for_log("timed out", Duration::from_secs(5))
        .map_err(fail)?;
    // Once it answers again, the recovery probe puts it back in rotation.
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let ids = block_on(async {
            let mut a = connect(env, SLAVE_USER, None).await?;
            let mut b = connect(env, SLAVE_USER, None).await?;
            let mut ids = vec![server_id(&mut a).await?, server_id(&mut b).await?];
            a.disconnect().await.map_err(fail)?;
            b.disconnect().await.map_err(fail)?;
            ids.sort();
            Ok::<_, Failed>(ids)
        })?;
        if ids == REPLICA_IDS {
            return Ok(());
        }
        check(
            Instant::now() < deadline,
            format!("the resumed replica is not back: {ids:?}"),
        )?;
        std::thread::sleep(Duration::from_millis(200));
    }
}

fn sigterm_stops_the_daemon(env: &Env) -> TestResult {
    let config = {
        let t = env.topology();
        proxy_config(&t)
    };
    let mut proxy = Proxy::start(&config).map_err(fail)?;
    let rt = runtime();
    let conn = rt
        .block_on(Conn::new(opts(proxy.port, SLAVE_USER, None)))
        .map_err(fail)?;
    let started = Instant::now();
    let status = proxy.terminate().ok_or("no exit status")?;
    check(status.success(), format!("exit status {status}"))?;
    check(
        started.elapsed() < Duration::from_secs(10),
        "stopped promptly",
    )?;
    check(proxy.log().contains("shutting down"), "logged the shutdown")?;
    drop(conn);
    Ok(())
}

fn com_reset_connection_passes_through(env: &Env) -> TestResult {
    block_on(async {
        let mut c = connect(env, SLAVE_USER, None).await?;
        let before = server_id(&mut c).await?;
        c.query_drop("SET @kept = 42").await.map_err(fail)?;
        let kept: Option<Option<u32>> = c.query_first("SELECT @kept").await.map_err(fail)?;
        check(kept == Some(Some(42)), format!("{kept:?}"))?;
        // COM_RESET_CONNECTION: the backend session forgets its state and
        // stays the same session, on the same backend.
        c.reset().await.map_err(fail)?;
        let gone: Option<Option<u32>> = c.query_first("SELECT @kept").await.map_err(fail)?;
        check(gone == Some(None), format!("after reset: {gone:?}"))?;
        check(
            server_id(&mut c).await? == before,
            "same backend after reset",
        )?;
        c.disconnect().await.map_err(fail)
    })
}
