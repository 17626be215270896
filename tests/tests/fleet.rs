//! End-to-end tests of several Switchyards behind a balancer: the PROXY
//! protocol with HAProxy (Debian's `haproxy`) in front, malformed and
//! truncated headers, and fleet state (failed-login blocks, per-user
//! session leases, policy digests) shared through a real Redis server with
//! three Switchyard processes.
//!
//! One real topology (a MariaDB primary and two GTID replicas); each test
//! starts the Switchyards, HAProxy and Redis it needs. Tests run one at a
//! time.

use std::io::{Read, Write};
use std::net::{IpAddr, SocketAddr, TcpStream};
use std::sync::Arc;
use std::time::{Duration, Instant};

use libtest_mimic::{Arguments, Failed};

use switchyard_e2e::raw::{LoginOutcome, RawClient};
use switchyard_e2e::{
    HaProxy, MASTER_USER, Proxy, Redis, SLAVE_USER, Topology, fill_config, free_port, http,
    workspace_root,
};

mod common;
use common::*;

const TOKEN: &str = "test-admin-token";
const PRIMARY_ID: u32 = 1;
const MONITOR: (&str, &str) = ("monitor", "monitorpass");

struct Env {
    topology: Topology,
}

fn main() {
    let args = Arguments::from_args();
    let topology = Topology::start(2, None).expect("start the MariaDB topology");
    topology.primary.sql(&format!(
        "CREATE USER '{0}'@'%' IDENTIFIED BY '{1}'; GRANT SLAVE MONITOR ON *.* TO '{0}'@'%';",
        MONITOR.0, MONITOR.1
    ));
    topology
        .sync_replicas()
        .expect("replicas have the monitor account");
    let env = Arc::new(Env { topology });
    let tests: Vec<NamedTest<Env>> = vec![
        (
            "haproxy_send_proxy_v1_and_v2_carry_the_client_address",
            haproxy_carries_the_client_address,
        ),
        (
            "malformed_truncated_and_untrusted_headers_close_cleanly",
            bad_headers_close_cleanly,
        ),
        (
            "the_throttle_and_the_policy_see_the_header_address",
            throttle_and_policy_see_the_header_address,
        ),
        (
            "configmap_symlink_swap_reloads_config_and_policy",
            configmap_swap_reloads,
        ),
        (
            "config_from_a_configmap_with_accounts_and_monitor_from_a_secret",
            configmap_config_with_secret_files,
        ),
        (
            "probes_and_the_drain_command_for_kubernetes",
            probes_and_drain_command,
        ),
        (
            "fleet_a_block_through_one_instance_refuses_logins_through_the_others",
            fleet_blocks_cross_instances,
        ),
        (
            "fleet_a_user_limit_holds_across_three_and_a_dead_instance_frees_its_slots",
            fleet_user_limit_and_dead_instance,
        ),
        (
            "fleet_store_down_falls_back_to_local_limits_and_catches_up",
            fleet_store_down_and_back,
        ),
        (
            "fleet_store_with_a_password_from_password_file",
            fleet_store_password_file,
        ),
    ];
    run_one_at_a_time(args, env, tests)
}

/// A config: `[pools.master]` (the primary), `[pools.replicas]`, the
/// by-client policy sending 127.0.0.5 and 10.9.9.0/24 to the master pool,
/// TLS offered, an admin endpoint; `top` goes before the first table.
fn config(env: &Env, admin: u16, top: &str, tls: &TlsFiles) -> String {
    let t = &env.topology;
    format!(
        r#"listen = "127.0.0.1:{{port}}"
login_timeout_ms = 1500
{top}
{master}{slave}
[pools.master]
backends = ["{p}"]
[pools.replicas]
backends = ["{r1}", "{r2}"]
[tls]
cert = "{cert}"
key = "{key}"
[admin]
listen = "127.0.0.1:{admin}"
token = "{TOKEN}"
[throttle]
max_failures = 2
window_ms = 60000
block_ms = 60000
[policy]
module = "{{by_client}}"
[policy.settings]
"client.127.0.0.5/32" = "master"
"client.10.9.9.0/24" = "master"
default = "replicas"
"#,
        master = user_table(MASTER_USER.0, MASTER_USER.1),
        slave = user_table(SLAVE_USER.0, SLAVE_USER.1),
        p = t.primary.addr(),
        r1 = t.replicas[0].addr(),
        r2 = t.replicas[1].addr(),
        cert = tls.cert.display(),
        key = tls.key.display(),
    )
}

/// Logs in with PyMySQL (a real client library) from the local address
/// `from` to `port`, over TLS (verifying the certificate) or not; the
/// server id it reached and the TLS version it used ("" without).
fn pymysql_from(port: u16, from: &str, tls: Option<&TlsFiles>) -> Result<(u32, String), Failed> {
    let python = workspace_root().join("target/pyvenv/bin/python");
    let script = r#"
import sys, pymysql
port, bind, ca = int(sys.argv[1]), sys.argv[2], sys.argv[3]
kw = dict(host="127.0.0.1", port=port, user="mysqlslave", password="slavepass",
          bind_address=bind, connect_timeout=10)
if ca:
    kw.update(ssl_ca=ca, ssl_verify_cert=True, ssl_verify_identity=True)
else:
    kw.update(ssl_disabled=True)
c = pymysql.connect(**kw)
cur = c.cursor()
cur.execute("SELECT @@server_id")
version = c._sock.version() if hasattr(c._sock, "version") else ""
print(cur.fetchone()[0], version)
c.close()
"#;
    let ca = tls.map(|t| t.ca.display().to_string()).unwrap_or_default();
    let out = std::process::Command::new(python)
        .args(["-c", script, &port.to_string(), from, &ca])
        .output()
        .map_err(fail)?;
    let stdout = String::from_utf8_lossy(&out.stdout);
    check(
        out.status.success(),
        format!(
            "pymysql from {from} to {port}: {stdout}{}",
            String::from_utf8_lossy(&out.stderr)
        ),
    )?;
    let mut words = stdout.split_whitespace();
    let id = words
        .next()
        .and_then(|w| w.parse().ok())
        .ok_or_else(|| fail(format!("no server id in {stdout:?}")))?;
    Ok((id, words.next().unwrap_or_default().to_owned()))
}

fn metrics_text(admin: u16) -> Result<String, Failed> {
    let (code, body) = http(
        SocketAddr::from(([127, 0, 0, 1], admin)),
        "GET",
        "/metrics",
        Some(TOKEN),
        b"",
    )
    .map_err(fail)?;
    check(code == 200, format!("/metrics: {code}"))?;
    Ok(body)
}

/// The value of the sample `name` (with its labels) in a metrics text.
fn sample(text: &str, name: &str) -> f64 {
    text.lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.parse().ok())
        .unwrap_or(0.0)
}

fn headers_metric(admin: u16, result: &str) -> Result<f64, Failed> {
    Ok(sample(
        &metrics_text(admin)?,
        &format!("switchyard_proxy_headers_total{{result=\"{result}\"}}"),
    ))
}

/// Switchyard taking PROXY protocol connections from `trusted`, with
/// TLS offered.
struct Proxied {
    proxy: Proxy,
    admin: u16,
    tls: TlsFiles,
    _dir: tempfile::TempDir,
}

impl Proxied {
    fn start(env: &Env, trusted: &str) -> Result<Self, Failed> {
        let dir = tempfile::tempdir().map_err(fail)?;
        let tls = ca_signed_certificate(dir.path())?;
        let admin = free_port();
        let top = format!("proxy_protocol = true\nproxy_trusted = [\"{trusted}\"]");
        let proxy = Proxy::start(&config(env, admin, &top, &tls)).map_err(fail)?;
        Ok(Self {
            proxy,
            admin,
            tls,
            _dir: dir,
        })
    }
}

fn haproxy_carries_the_client_address(env: &Env) -> TestResult {
    let Proxied {
        proxy,
        admin,
        tls,
        _dir,
    } = Proxied::start(env, "127.0.0.1/32")?;
    let (v1, v2) = (free_port(), free_port());
    let _haproxy = HaProxy::start(&[
        (v1, format!("{} send-proxy", proxy.addr())),
        (v2, format!("{} send-proxy-v2", proxy.addr())),
    ])
    .map_err(fail)?;
    for port in [v1, v2] {
        for tls in [None, Some(&tls)] {
            // HAProxy connects from 127.0.0.1 in every case: only the
            // header tells the two clients apart.
            let (id, version) = pymysql_from(port, "127.0.0.5", tls)?;
            check(
                id == PRIMARY_ID,
                format!("127.0.0.5 through {port} reached server {id}, not the master pool"),
            )?;
            check(
                tls.is_some() == version.starts_with("TLS"),
                format!("TLS {} but the client used {version:?}", tls.is_some()),
            )?;
            let (id, _) = pymysql_from(port, "127.0.0.6", tls)?;
            check(
                id != PRIMARY_ID,
                format!("127.0.0.6 through {port} reached the primary"),
            )?;
        }
    }
    let log = proxy.log();
    check(
        log.contains("client=127.0.0.5:") && log.contains("client=127.0.0.6:"),
        "session log lines name the clients' own addresses",
    )?;
    check(
        headers_metric(admin, "proxied")? >= 8.0,
        "switchyard_proxy_headers_total{result=\"proxied\"} counts the headers",
    )?;
    // Straight to Switchyard from an address not in proxy_trusted: closed,
    // with or without a header, before any greeting.
    for header in [&b""[..], b"PROXY TCP4 192.0.2.1 127.0.0.1 1 2\r\n"] {
        let mut raw = RawClient::connect_from(proxy.addr(), "127.0.0.5".parse().map_err(fail)?)
            .map_err(fail)?;
        raw.write_raw(header).map_err(fail)?;
        check(
            matches!(raw.read_packet(), Ok(None)),
            "an untrusted peer is closed without a greeting",
        )?;
    }
    check(
        headers_metric(admin, "untrusted")? == 2.0,
        "two untrusted peers counted",
    )?;
    proxy
        .wait_for_log("peer=127.0.0.5", Duration::from_secs(5))
        .map_err(fail)
}

/// A TCP connection to `addr` from 127.0.0.1 (a trusted balancer).
fn balancer(addr: SocketAddr) -> Result<TcpStream, Failed> {
    let s = TcpStream::connect(addr).map_err(fail)?;
    s.set_read_timeout(Some(Duration::from_secs(10)))
        .map_err(fail)?;
    Ok(s)
}

/// Reads until the peer closes (true) or sends something (false).
fn closed_without_a_byte(s: &mut TcpStream) -> Result<bool, Failed> {
    let mut b = [0u8; 64];
    match s.read(&mut b) {
        Ok(0) => Ok(true),
        Ok(_) => Ok(false),
        Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => Ok(true),
        Err(e) => Err(fail(e)),
    }
}

/// A PROXY v2 header naming `source` as the client of `destination`.
fn v2_header(source: SocketAddr, destination: SocketAddr) -> Vec<u8> {
    let mut h = b"\r\n\r\n\0\r\nQUIT\n".to_vec();
    h.extend_from_slice(&[0x21, 0x11, 0, 12]);
    for a in [source, destination] {
        if let IpAddr::V4(ip) = a.ip() {
            h.extend_from_slice(&ip.octets());
        }
    }
    h.extend_from_slice(&source.port().to_be_bytes());
    h.extend_from_slice(&destination.port().to_be_bytes());
    h
}

fn bad_headers_close_cleanly(env: &Env) -> TestResult {
    let Proxied {
        proxy, admin, _dir, ..
    } = Proxied::start(env, "127.0.0.1")?;
    // A session through a good header, open across the bad ones.
    let mut good = RawClient::connect(proxy.addr()).map_err(fail)?;
    good.write_raw(&v2_header(
        "192.0.2.10:4000".parse().map_err(fail)?,
        proxy.addr(),
    ))
    .map_err(fail)?;
    let LoginOutcome::Ok(_) = good
        .login(SLAVE_USER.0, SLAVE_USER.1, None, "mysql_native_password")
        .map_err(fail)?
    else {
        return Err("login behind a v2 header refused".into());
    };
    let mut too_long = v2_header("192.0.2.1:1".parse().map_err(fail)?, proxy.addr());
    too_long[14..16].copy_from_slice(&u16::MAX.to_be_bytes());
    let at_once: [(&str, Vec<u8>); 5] = [
        ("not a header", b"GET / HTTP/1.0\r\n\r\n".to_vec()),
        (
            "bad v1 port",
            b"PROXY TCP4 192.0.2.1 127.0.0.1 99999 6033\r\n".to_vec(),
        ),
        (
            "v1 without CRLF",
            [b"PROXY UNKNOWN ".as_slice(), &[b'x'; 200]].concat(),
        ),
        ("v2 too long", too_long),
        ("v2 bad family", {
            let mut h = v2_header("192.0.2.1:1".parse().map_err(fail)?, proxy.addr());
            h[13] = 0x51;
            h
        }),
    ];
    for (what, bytes) in &at_once {
        let mut s = balancer(proxy.addr())?;
        let _ = s.write_all(bytes);
        let started = Instant::now();
        check(
            closed_without_a_byte(&mut s)?,
            format!("{what}: no greeting"),
        )?;
        check(
            started.elapsed() < Duration::from_secs(1),
            format!("{what}: closed at once, not at the timeout"),
        )?;
    }
    // Truncated: a v1 line cut short and the sender gone; a v2 header cut
    // short and the sender silent; no header at all (a MySQL client that
    // waits for the greeting). The last two end at login_timeout_ms.
    let mut s = balancer(proxy.addr())?;
    s.write_all(b"PROXY TCP4 192.0.2.1 127.0").map_err(fail)?;
    s.shutdown(std::net::Shutdown::Write).map_err(fail)?;
    check(closed_without_a_byte(&mut s)?, "cut v1: closed")?;
    for bytes in [
        &v2_header("192.0.2.1:1".parse().map_err(fail)?, proxy.addr())[..20],
        b"",
    ] {
        let mut s = balancer(proxy.addr())?;
        s.write_all(bytes).map_err(fail)?;
        let started = Instant::now();
        check(closed_without_a_byte(&mut s)?, "silent: no greeting")?;
        let waited = started.elapsed();
        check(
            waited >= Duration::from_millis(1000) && waited < Duration::from_secs(6),
            format!("silent peer closed after {waited:?}, not at login_timeout_ms"),
        )?;
    }
    // Every refusal was one log line; the good session still works.
    let log = proxy.log();
    let bad = log.matches("refused: bad PROXY protocol header").count();
    let missing = log
        .matches("refused: no PROXY protocol header in time")
        .count();
    let ended = log
        .matches("refused: connection ended before its PROXY protocol header did")
        .count();
    // (The harness's own check that Switchyard listens is one more
    // connection that ended without a header.)
    check(
        bad == 5 && missing == 2 && ended >= 1,
        format!("log lines: bad {bad}, missing {missing}, ended {ended}"),
    )?;
    check(
        headers_metric(admin, "malformed")? == 5.0
            && headers_metric(admin, "missing")? == (missing + ended) as f64,
        "metrics count the refusals",
    )?;
    check(
        Raw(good).row("SELECT 1")? == [Some("1".to_owned())],
        "the good session is unaffected",
    )?;
    // Its session's lines name the header's client.
    proxy
        .wait_for_log("client=192.0.2.10:4000", Duration::from_secs(5))
        .map_err(fail)
}

fn throttle_and_policy_see_the_header_address(env: &Env) -> TestResult {
    let Proxied { proxy, _dir, .. } = Proxied::start(env, "127.0.0.0/8")?;
    let through = |client: &str| -> Result<RawClient, Failed> {
        let mut raw = RawClient::connect(proxy.addr()).map_err(fail)?;
        raw.write_raw(&v2_header(client.parse().map_err(fail)?, proxy.addr()))
            .map_err(fail)?;
        Ok(raw)
    };
    // The by-client policy sends 10.9.9.0/24 to the master pool.
    let mut raw = through("10.9.9.1:1000")?;
    let LoginOutcome::Ok(_) = raw
        .login(SLAVE_USER.0, SLAVE_USER.1, None, "mysql_native_password")
        .map_err(fail)?
    else {
        return Err("login refused".into());
    };
    check(
        Raw(raw).row("SELECT @@server_id")? == [Some(PRIMARY_ID.to_string())],
        "the policy routed by the header's address",
    )?;
    // Two failures from 10.9.9.9 block it (max_failures = 2); 10.9.9.10,
    // through the same balancer address, is not blocked.
    for _ in 0..2 {
        let outcome = through("10.9.9.9:2000")?
            .login(SLAVE_USER.0, "wrong", None, "mysql_native_password")
            .map_err(fail)?;
        check(
            matches!(outcome, LoginOutcome::Err(ref e, _) if e.code == 1045),
            format!("{outcome:?}"),
        )?;
    }
    let mut blocked = through("10.9.9.9:2001")?;
    let p = blocked.expect_packet().map_err(fail)?;
    let err = switchyard::protocol::ErrPacket::decode(&p.payload).map_err(fail)?;
    check(
        err.code == 1129 && err.message.contains("10.9.9.9"),
        format!("{err:?}"),
    )?;
    let LoginOutcome::Ok(_) = through("10.9.9.10:2002")?
        .login(SLAVE_USER.0, SLAVE_USER.1, None, "mysql_native_password")
        .map_err(fail)?
    else {
        return Err("another client behind the same balancer was blocked".into());
    };
    check(
        proxy.log().contains("client=10.9.9.9:2001"),
        "the block's log line names the header's client",
    )
}

/// A config whose policy module is `module`, with `settings` (TOML lines,
/// which may go on with more tables) and `top` before the first table.
fn plain_config(
    env: &Env,
    port: u16,
    admin: u16,
    top: &str,
    module: &str,
    settings: &str,
) -> String {
    fleet_config(env, (port, admin), top, "", module, settings)
}

/// [`plain_config`] with `slave_keys` added to mysqlslave's account.
fn fleet_config(
    env: &Env,
    (port, admin): (u16, u16),
    top: &str,
    slave_keys: &str,
    module: &str,
    settings: &str,
) -> String {
    let t = &env.topology;
    format!(
        r#"listen = "127.0.0.1:{port}"
{top}
{master}{slave}{slave_keys}
[pools.master]
backends = ["{p}"]
[pools.replicas]
backends = ["{r1}", "{r2}"]
[admin]
listen = "127.0.0.1:{admin}"
token = "{TOKEN}"
[policy]
module = "{module}"
[policy.settings]
{settings}
"#,
        master = user_table(MASTER_USER.0, MASTER_USER.1),
        slave = user_table(SLAVE_USER.0, SLAVE_USER.1),
        p = t.primary.addr(),
        r1 = t.replicas[0].addr(),
        r2 = t.replicas[1].addr(),
    )
}

/// The server a fresh login of `user` reaches.
fn reached(port: u16, user: (&str, &str)) -> Result<u32, Failed> {
    block_on(async {
        let mut c = mysql_async::Conn::new(opts(port, user, None))
            .await
            .map_err(fail)?;
        let id = server_id(&mut c).await?;
        c.disconnect().await.map_err(fail)?;
        Ok(id)
    })
}

/// Waits up to 10 s for `user`'s logins to reach the primary (`true`) or
/// not.
fn wait_route(port: u16, user: (&str, &str), to_primary: bool) -> TestResult {
    let started = Instant::now();
    loop {
        let id = reached(port, user)?;
        if (id == PRIMARY_ID) == to_primary {
            return Ok(());
        }
        if started.elapsed() > Duration::from_secs(10) {
            return Err(format!("{} still reaches server {id}", user.0).into());
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// A directory laid out as Kubernetes mounts a ConfigMap: the files are
/// links through `..data`, a link to the current version's directory.
struct ConfigMapDir {
    dir: tempfile::TempDir,
    version: u32,
    /// The files' mode (a Secret's `defaultMode`).
    mode: u32,
}

impl ConfigMapDir {
    fn new(files: &[(&str, &[u8])]) -> Result<Self, Failed> {
        Self::with_mode(files, 0o644)
    }

    fn with_mode(files: &[(&str, &[u8])], mode: u32) -> Result<Self, Failed> {
        let mut m = Self {
            dir: tempfile::tempdir().map_err(fail)?,
            version: 0,
            mode,
        };
        m.publish(files)?;
        for (name, _) in files {
            std::os::unix::fs::symlink(format!("..data/{name}"), m.dir.path().join(name))
                .map_err(fail)?;
        }
        Ok(m)
    }

    /// A new version's directory, then `..data` swapped to it atomically
    /// (a new link renamed over the old), as the kubelet does.
    fn publish(&mut self, files: &[(&str, &[u8])]) -> TestResult {
        self.version += 1;
        let name = format!("..2026_12_03_v{}", self.version);
        let version = self.dir.path().join(&name);
        std::fs::create_dir(&version).map_err(fail)?;
        for (file, bytes) in files {
            use std::os::unix::fs::PermissionsExt;
            std::fs::write(version.join(file), bytes).map_err(fail)?;
            std::fs::set_permissions(
                version.join(file),
                std::fs::Permissions::from_mode(self.mode),
            )
            .map_err(fail)?;
        }
        let tmp = self.dir.path().join("..data_tmp");
        std::os::unix::fs::symlink(&name, &tmp).map_err(fail)?;
        std::fs::rename(&tmp, self.dir.path().join("..data")).map_err(fail)
    }

    fn path(&self, file: &str) -> std::path::PathBuf {
        self.dir.path().join(file)
    }
}

fn configmap_swap_reloads(env: &Env) -> TestResult {
    let artifacts = switchyard_e2e::artifacts();
    let default = std::fs::read(&artifacts.default_policy).map_err(fail)?;
    let by_client = std::fs::read(&artifacts.by_client_policy).map_err(fail)?;
    let (port, admin) = (free_port(), free_port());
    let module_placeholder = "MODULE";
    let config = |settings: &str| {
        plain_config(
            env,
            port,
            admin,
            "watch_config = true",
            module_placeholder,
            settings,
        )
    };
    let users = "\"user.mysqlmaster\" = \"master\"\n\"user.mysqlslave\" = \"replicas\"\n";
    let mut map = ConfigMapDir::new(&[("switchyard.toml", b""), ("policy.wasm", &default)])?;
    let module = map.path("policy.wasm").display().to_string();
    let fill = |c: String| c.replace(module_placeholder, &module);
    map.publish(&[
        ("switchyard.toml", fill(config(users)).as_bytes()),
        ("policy.wasm", &default),
    ])?;
    let proxy = Proxy::start_file(&map.path("switchyard.toml"), port).map_err(fail)?;
    check(
        reached(port, SLAVE_USER)? != PRIMARY_ID,
        "mysqlslave on a replica",
    )?;
    check(
        reached(port, MASTER_USER)? == PRIMARY_ID,
        "mysqlmaster on the primary",
    )?;
    // A new ConfigMap version: mysqlslave goes to the master pool.
    let swapped = "\"user.mysqlmaster\" = \"master\"\n\"user.mysqlslave\" = \"master\"\n";
    map.publish(&[
        ("switchyard.toml", fill(config(swapped)).as_bytes()),
        ("policy.wasm", &default),
    ])?;
    wait_route(port, SLAVE_USER, true)?;
    proxy
        .wait_for_log(
            "configuration file changed on disk; reloading",
            Duration::from_secs(5),
        )
        .map_err(fail)?;
    // The policy and its settings change in one version: the by-client
    // policy sends every loopback client to the replicas, the master user
    // included (the default policy sent it to the primary).
    map.publish(&[
        (
            "switchyard.toml",
            fill(config("\"client.127.0.0.0/8\" = \"replicas\"\n")).as_bytes(),
        ),
        ("policy.wasm", &by_client),
    ])?;
    wait_route(port, MASTER_USER, false)?;
    // A version that does not load changes nothing, and says so.
    map.publish(&[
        ("switchyard.toml", b"listen = [broken" as &[u8]),
        ("policy.wasm", &by_client),
    ])?;
    proxy
        .wait_for_log("reload refused", Duration::from_secs(5))
        .map_err(fail)?;
    check(
        reached(port, MASTER_USER)? != PRIMARY_ID,
        "the running configuration stays",
    )
}

/// The code a fresh login of `user` ends with (0: logged in).
fn login_code(port: u16, user: (&str, &str)) -> Result<u16, Failed> {
    block_on(async {
        match mysql_async::Conn::new(opts(port, user, None)).await {
            Ok(c) => c.disconnect().await.map(|()| 0).map_err(fail),
            Err(mysql_async::Error::Server(e)) => Ok(e.code),
            Err(e) => Err(fail(e)),
        }
    })
}

/// Waits up to 10 s for a login of `user` to end with `code`.
fn wait_login_code(port: u16, user: (&str, &str), code: u16) -> TestResult {
    let started = Instant::now();
    loop {
        let got = login_code(port, user)?;
        if got == code {
            return Ok(());
        }
        if started.elapsed() > Duration::from_secs(10) {
            return Err(format!("{}'s login ends with {got}, not {code}", user.0).into());
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// As the Kubernetes overlay runs it: the configuration, which holds no
/// secret, from a ConfigMap; the accounts (`users_file`) and the monitor's
/// `SHA1(password)` (`password_sha1_file`) from a Secret (mode 0440). The
/// monitor's login is what lets the reader pool (`role = "reader"`,
/// refusing when no backend qualifies) take sessions; a new version of the
/// Secret alone reloads the accounts; a broken one changes nothing.
fn configmap_config_with_secret_files(env: &Env) -> TestResult {
    use switchyard::auth::Sha1Password;
    let t = &env.topology;
    let (port, admin) = (free_port(), free_port());
    let users =
        |list: &[(&str, &str)]| -> String { list.iter().map(|(u, p)| user_table(u, p)).collect() };
    let monitor_sha1 = Sha1Password::of_password(MONITOR.1.as_bytes()).to_hex();
    let mut secret = ConfigMapDir::with_mode(
        &[
            ("users.toml", users(&[MASTER_USER]).as_bytes()),
            ("monitor-sha1", format!("{monitor_sha1}\n").as_bytes()),
        ],
        0o440,
    )?;
    let default = &switchyard_e2e::artifacts().default_policy;
    let config = format!(
        r#"listen = "127.0.0.1:{port}"
watch_config = true
users_file = "{users}"
[pools.master]
backends = ["{p}"]
role = "writer"
[pools.replicas]
backends = ["{r1}", "{r2}"]
role = "reader"
when_all_down = "refuse"
[health]
interval_ms = 200
[monitor]
user = "{mon}"
password_sha1_file = "{mon_file}"
[admin]
listen = "127.0.0.1:{admin}"
[policy]
module = "{module}"
[policy.settings]
"user.mysqlmaster" = "master"
"user.mysqlslave" = "replicas"
"#,
        users = secret.path("users.toml").display(),
        mon_file = secret.path("monitor-sha1").display(),
        p = t.primary.addr(),
        r1 = t.replicas[0].addr(),
        r2 = t.replicas[1].addr(),
        mon = MONITOR.0,
        module = default.display(),
    );
    check(
        !config.contains("password_hash") && !config.contains(&monitor_sha1),
        "the configuration holds no secret",
    )?;
    let map = ConfigMapDir::new(&[("switchyard.toml", config.as_bytes())])?;
    let proxy = Proxy::start_file(&map.path("switchyard.toml"), port).map_err(fail)?;
    check(
        reached(port, MASTER_USER)? == PRIMARY_ID,
        "mysqlmaster (from users_file) on the primary",
    )?;
    check(
        login_code(port, SLAVE_USER)? == 1045,
        "mysqlslave is not an account yet",
    )?;
    // The Secret alone changes: mysqlslave is an account now, and reaches
    // a replica, which qualifies for the reader pool only through the
    // monitor's login.
    secret.publish(&[
        ("users.toml", users(&[MASTER_USER, SLAVE_USER]).as_bytes()),
        ("monitor-sha1", monitor_sha1.as_bytes()),
    ])?;
    wait_login_code(port, SLAVE_USER, 0)?;
    proxy
        .wait_for_log(
            "configuration file changed on disk; reloading",
            Duration::from_secs(5),
        )
        .map_err(fail)?;
    check(
        reached(port, SLAVE_USER)? != PRIMARY_ID,
        "mysqlslave on a replica",
    )?;
    // A broken users file is refused, naming its line; the accounts stay.
    secret.publish(&[
        (
            "users.toml",
            b"[[users]]\nname = \"x\"\nbogus = 1\n" as &[u8],
        ),
        ("monitor-sha1", monitor_sha1.as_bytes()),
    ])?;
    proxy
        .wait_for_log("users.toml:3:1", Duration::from_secs(5))
        .map_err(fail)?;
    check(login_code(port, SLAVE_USER)? == 0, "the accounts stay")?;
    // A wrong monitor password is refused too (not 40 hex digits).
    secret.publish(&[
        ("users.toml", users(&[MASTER_USER]).as_bytes()),
        ("monitor-sha1", b"not-a-sha1" as &[u8]),
    ])?;
    proxy
        .wait_for_log("must hold 40 hex digits", Duration::from_secs(5))
        .map_err(fail)?;
    check(
        login_code(port, SLAVE_USER)? == 0,
        "the running configuration stays",
    )
}

fn probes_and_drain_command(env: &Env) -> TestResult {
    let (port, admin) = (free_port(), free_port());
    let dir = tempfile::tempdir().map_err(fail)?;
    let config_path = dir.path().join("switchyard.toml");
    let settings = "\"user.mysqlmaster\" = \"master\"\n\"user.mysqlslave\" = \"replicas\"\n";
    let text = fill_config(
        &plain_config(
            env,
            port,
            admin,
            "shutdown_timeout_ms = 5000",
            "{policy}",
            settings,
        ),
        port,
    );
    std::fs::write(&config_path, text).map_err(fail)?;
    let mut proxy = Proxy::start_file(&config_path, port).map_err(fail)?;
    let admin_addr = SocketAddr::from(([127, 0, 0, 1], admin));
    let probe = |path: &str| http(admin_addr, "GET", path, None, b"").map_err(fail);
    check(
        probe("/live")? == (200, "ok\n".into()),
        "live without a token",
    )?;
    check(
        probe("/ready")? == (200, "ok\n".into()),
        "ready without a token",
    )?;
    check(
        http(admin_addr, "GET", "/status", None, b"")
            .map_err(fail)?
            .0
            == 401,
        "the rest still needs the token",
    )?;
    // An open session, then the preStop hook's command.
    let rt = runtime();
    let mut open = rt
        .block_on(mysql_async::Conn::new(opts(port, SLAVE_USER, None)))
        .map_err(fail)?;
    let started = Instant::now();
    let out = std::process::Command::new(&switchyard_e2e::artifacts().switchyard)
        .args(["drain", "--config"])
        .arg(&config_path)
        .args(["--wait-ms", "300"])
        .output()
        .map_err(fail)?;
    check(
        out.status.success() && started.elapsed() >= Duration::from_millis(300),
        format!("switchyard drain: {}", String::from_utf8_lossy(&out.stderr)),
    )?;
    check(
        probe("/ready")? == (503, "draining\n".into()),
        "not ready once draining",
    )?;
    check(probe("/live")?.0 == 200, "still live")?;
    // Draining still serves, old sessions and new ones, until SIGTERM.
    check(
        rt.block_on(server_id(&mut open))? != PRIMARY_ID,
        "the open session goes on",
    )?;
    check(
        reached(port, MASTER_USER)? == PRIMARY_ID,
        "new clients are still served",
    )?;
    proxy
        .wait_for_log("instance draining", Duration::from_secs(5))
        .map_err(fail)?;
    // A wrong token is refused, and says so.
    let bad = dir.path().join("bad-token");
    std::fs::write(&bad, "nope\n").map_err(fail)?;
    let out = std::process::Command::new(&switchyard_e2e::artifacts().switchyard)
        .args(["drain", "--admin", &admin_addr.to_string(), "--token-file"])
        .arg(&bad)
        .output()
        .map_err(fail)?;
    check(
        !out.status.success() && String::from_utf8_lossy(&out.stderr).contains("401"),
        "a wrong token fails the command",
    )?;
    rt.block_on(open.disconnect()).map_err(fail)?;
    check(
        proxy.terminate().is_some_and(|s| s.success()),
        "SIGTERM then stops it",
    )
}

/// Three Switchyards sharing `redis`: mysqlslave may have 2 sessions in
/// all; 3 failed logins within a minute block an address for a minute.
struct Three {
    proxies: Vec<Proxy>,
    admins: Vec<u16>,
}

impl Three {
    fn start(env: &Env, redis: &Redis) -> Result<Self, Failed> {
        let mut proxies = Vec::new();
        let mut admins = Vec::new();
        for name in ["a", "b", "c"] {
            let (port, admin) = (free_port(), free_port());
            let settings = format!(
                "\"user.mysqlmaster\" = \"master\"\n\"user.mysqlslave\" = \"replicas\"\n\
                 [throttle]\nmax_failures = 3\nwindow_ms = 60000\nblock_ms = 60000\n\
                 [fleet]\nstore = \"{}\"\ninstance = \"{name}\"\nlease_ms = 1500\n",
                redis.url()
            );
            let text = fill_config(
                &fleet_config(
                    env,
                    (port, admin),
                    "",
                    "max_connections = 2\n",
                    "{policy}",
                    &settings,
                ),
                port,
            );
            let proxy = Proxy::start_with(
                &switchyard_e2e::artifacts().switchyard,
                &text,
                port,
                "debug",
            )
            .map_err(fail)?;
            proxies.push(proxy);
            admins.push(admin);
        }
        let three = Self { proxies, admins };
        for i in 0..3 {
            three.wait_metric(i, "switchyard_fleet_store_up", 1.0)?;
        }
        Ok(three)
    }

    fn metric(&self, i: usize, name: &str) -> Result<f64, Failed> {
        Ok(sample(&metrics_text(self.admins[i])?, name))
    }

    fn wait_metric(&self, i: usize, name: &str, want: f64) -> TestResult {
        let started = Instant::now();
        loop {
            let got = self.metric(i, name)?;
            if got == want {
                return Ok(());
            }
            if started.elapsed() > Duration::from_secs(10) {
                return Err(format!("instance {i}: {name} is {got}, not {want}").into());
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// A login of `user` from `from` through instance `i` (an address
    /// refused before the greeting gets an ERR in its place).
    fn login(
        &self,
        i: usize,
        from: &str,
        (user, password): (&str, &str),
    ) -> Result<(LoginOutcome, RawClient), Failed> {
        let mut raw = RawClient::connect_from(self.proxies[i].addr(), from.parse().map_err(fail)?)
            .map_err(fail)?;
        let first = raw.expect_packet().map_err(fail)?;
        if switchyard::protocol::ErrPacket::is_err(&first.payload) {
            let err = switchyard::protocol::ErrPacket::decode(&first.payload).map_err(fail)?;
            return Ok((LoginOutcome::Err(err, first.seq), raw));
        }
        let greeting = switchyard::protocol::Greeting::decode(&first.payload).map_err(fail)?;
        let outcome = raw
            .respond(&greeting, user, password, None, "mysql_native_password")
            .map_err(fail)?;
        Ok((outcome, raw))
    }

    /// The code a login ends with (0 for OK), and the client (open while
    /// held).
    fn code(&self, i: usize, from: &str, user: (&str, &str)) -> Result<(u16, RawClient), Failed> {
        let (outcome, raw) = self.login(i, from, user)?;
        Ok(match outcome {
            LoginOutcome::Ok(_) => (0, raw),
            LoginOutcome::Err(e, _) => (e.code, raw),
        })
    }

    /// Waits up to `within` for a login through `i` to end with `code`.
    fn wait_code(
        &self,
        i: usize,
        from: &str,
        user: (&str, &str),
        code: u16,
        within: Duration,
    ) -> Result<(Duration, RawClient), Failed> {
        let started = Instant::now();
        loop {
            let (got, raw) = self.code(i, from, user)?;
            if got == code {
                return Ok((started.elapsed(), raw));
            }
            if started.elapsed() > within {
                return Err(
                    format!("instance {i}: login from {from} ends with {got}, not {code}").into(),
                );
            }
            std::thread::sleep(Duration::from_millis(25));
        }
    }
}

fn fleet_blocks_cross_instances(env: &Env) -> TestResult {
    let redis = Redis::start().map_err(fail)?;
    let three = Three::start(env, &redis)?;
    let wrong = (SLAVE_USER.0, "wrong");
    // One failure through each instance: three in the fleet's window, so
    // the address is blocked (each instance alone saw one).
    for i in 0..3 {
        check(
            three.code(i, "127.0.0.8", wrong)?.0 == 1045,
            "a wrong password",
        )?;
    }
    // A login from `from` through `i` is refused as blocked within a
    // second.
    let blocked_soon = |i: usize, from: &str| -> TestResult {
        let (waited, _) = three.wait_code(i, from, SLAVE_USER, 1129, Duration::from_secs(1))?;
        check(
            waited <= Duration::from_secs(1),
            format!("{from} blocked on instance {i} after {waited:?}"),
        )
    };
    for i in 0..3 {
        blocked_soon(i, "127.0.0.8")?;
    }
    // Three failures through one instance: the next login through another
    // is refused within a second.
    for _ in 0..3 {
        check(
            three.code(0, "127.0.0.9", wrong)?.0 == 1045,
            "a wrong password",
        )?;
    }
    blocked_soon(1, "127.0.0.9")?;
    // Other addresses are served everywhere.
    for i in 0..3 {
        check(
            three.code(i, "127.0.0.10", SLAVE_USER)?.0 == 0,
            "another address logs in",
        )?;
    }
    three.proxies[2]
        .wait_for_log(
            "client address blocked by another instance of the fleet",
            Duration::from_secs(5),
        )
        .map_err(fail)?;
    policy_digests_per_instance(&three)
}

/// Every instance sees the others and the policy each runs; a policy
/// swapped on one is noticed by the others.
fn policy_digests_per_instance(three: &Three) -> TestResult {
    let status = |i: usize| -> Result<serde_json::Value, Failed> {
        let (code, body) = http(
            SocketAddr::from(([127, 0, 0, 1], three.admins[i])),
            "GET",
            "/status",
            Some(TOKEN),
            b"",
        )
        .map_err(fail)?;
        check(code == 200, format!("/status {code}"))?;
        serde_json::from_str(&body).map_err(fail)
    };
    let digests = |i: usize| -> Result<Vec<(String, String)>, Failed> {
        let s = status(i)?;
        let mut v: Vec<(String, String)> = s["fleet"]["instances"]
            .as_array()
            .map(|a| {
                a.iter()
                    .map(|p| {
                        (
                            p["instance"].as_str().unwrap_or_default().to_owned(),
                            p["info"]["policies"][""]
                                .as_str()
                                .unwrap_or_default()
                                .to_owned(),
                        )
                    })
                    .collect()
            })
            .unwrap_or_default();
        v.sort();
        Ok(v)
    };
    let own = status(0)?["policy"]["sha256"]
        .as_str()
        .unwrap_or_default()
        .to_owned();
    // Leases are renewed every third of lease_ms (500 ms here).
    type Seen = [(String, String)];
    let wait_seen = |want: &dyn Fn(&Seen) -> bool| -> Result<(), Failed> {
        let started = Instant::now();
        loop {
            let seen = digests(0)?;
            if want(&seen) {
                return Ok(());
            }
            if started.elapsed() > Duration::from_secs(5) {
                return Err(format!("a sees {seen:?}").into());
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    };
    wait_seen(&|seen| {
        seen.iter().map(|(i, _)| i.as_str()).collect::<Vec<_>>() == ["a", "b", "c"]
            && seen.iter().all(|(_, d)| *d == own)
    })?;
    let other = std::fs::read(&switchyard_e2e::artifacts().by_client_policy).map_err(fail)?;
    let (code, body) = http(
        SocketAddr::from(([127, 0, 0, 1], three.admins[2])),
        "POST",
        "/policy",
        Some(TOKEN),
        &other,
    )
    .map_err(fail)?;
    check(code == 200, format!("swap on c: {code} {body}"))?;
    three.proxies[0]
        .wait_for_log(
            "instances of the fleet run different policies",
            Duration::from_secs(5),
        )
        .map_err(fail)?;
    wait_seen(&|seen| seen.len() == 3 && seen[2].1 != own && seen[0].1 == own)
}

fn fleet_user_limit_and_dead_instance(env: &Env) -> TestResult {
    let redis = Redis::start().map_err(fail)?;
    let mut three = Three::start(env, &redis)?;
    // Two sessions of mysqlslave in the fleet, on a and b: c refuses a
    // third (it holds none itself).
    let (code, on_a) = three.code(0, "127.0.0.1", SLAVE_USER)?;
    check(code == 0, "first session on a")?;
    let (code, _on_b) = three.code(1, "127.0.0.1", SLAVE_USER)?;
    check(code == 0, "second session on b")?;
    let (code, _) = three.code(2, "127.0.0.1", SLAVE_USER)?;
    check(
        code == 1226,
        format!("a third on c is over the limit: {code}"),
    )?;
    check(
        three.code(0, "127.0.0.1", SLAVE_USER)?.0 == 1226,
        "a third on a is over the limit",
    )?;
    // Other users are not limited.
    check(
        three.code(2, "127.0.0.1", MASTER_USER)?.0 == 0,
        "mysqlmaster is not limited",
    )?;
    // The session on a ends: c may have one.
    drop(on_a);
    let (_, on_c) = three.wait_code(2, "127.0.0.1", SLAVE_USER, 0, Duration::from_secs(3))?;
    check(
        three.code(0, "127.0.0.1", SLAVE_USER)?.0 == 1226,
        "at the limit again",
    )?;
    // c dies holding its session: its lease ends, and its slot with it.
    let c = three.proxies.remove(2);
    if let Some(pid) = c.pid() {
        // SAFETY: kill has no memory-safety preconditions.
        unsafe {
            libc::kill(pid as i32, libc::SIGKILL);
        }
    }
    drop(on_c);
    let (waited, _held) = three.wait_code(0, "127.0.0.1", SLAVE_USER, 0, Duration::from_secs(6))?;
    check(
        waited >= Duration::from_millis(500),
        format!("the dead instance's slot was free at once ({waited:?}): not held by its lease"),
    )?;
    // The survivors serve, and count each other.
    check(
        three.code(1, "127.0.0.1", SLAVE_USER)?.0 == 1226,
        "a and b hold the two slots",
    )?;
    check(three.code(1, "127.0.0.1", MASTER_USER)?.0 == 0, "b serves")?;
    drop(c);
    Ok(())
}

fn fleet_store_down_and_back(env: &Env) -> TestResult {
    let mut redis = Redis::start().map_err(fail)?;
    let three = Three::start(env, &redis)?;
    let (code, _on_a) = three.code(0, "127.0.0.1", SLAVE_USER)?;
    check(code == 0, "a session on a")?;
    redis.stop();
    for i in 0..3 {
        three.wait_metric(i, "switchyard_fleet_store_up", 0.0)?;
    }
    // Each instance serves on its own limits: b and c take one each
    // (three in the fleet, each within its own two).
    let (code, _on_b) = three.code(1, "127.0.0.1", SLAVE_USER)?;
    check(code == 0, "b serves without the store")?;
    let (code, _on_c) = three.code(2, "127.0.0.1", SLAVE_USER)?;
    check(code == 0, "c serves without the store")?;
    // Failed logins count locally meanwhile: three through a block there.
    for _ in 0..3 {
        check(
            three.code(0, "127.0.0.11", (SLAVE_USER.0, "wrong"))?.0 == 1045,
            "wrong",
        )?;
    }
    check(
        three.code(0, "127.0.0.11", SLAVE_USER)?.0 == 1129,
        "blocked on a",
    )?;
    for p in &three.proxies {
        let log = p.log();
        check(
            log.matches("fleet store unreachable").count() == 1,
            "the loss is logged once per instance",
        )?;
    }
    // The store returns, empty: the instances publish their counts and
    // blocks again, and the limit holds across them once more.
    redis.restart().map_err(fail)?;
    for i in 0..3 {
        three.wait_metric(i, "switchyard_fleet_store_up", 1.0)?;
    }
    three.proxies[0]
        .wait_for_log("fleet store reachable again", Duration::from_secs(5))
        .map_err(fail)?;
    three.wait_code(1, "127.0.0.1", SLAVE_USER, 1226, Duration::from_secs(3))?;
    // a's block reached the others through the store.
    three.wait_code(2, "127.0.0.11", SLAVE_USER, 1129, Duration::from_secs(3))?;
    // The server forgets its scripts (SCRIPT FLUSH): the next decision
    // sends the script again, and the limit still holds.
    let mut r = TcpStream::connect(("127.0.0.1", redis.port)).map_err(fail)?;
    r.write_all(b"*2\r\n$6\r\nSCRIPT\r\n$5\r\nFLUSH\r\n")
        .map_err(fail)?;
    let mut ok = [0u8; 5];
    r.read_exact(&mut ok).map_err(fail)?;
    check(&ok == b"+OK\r\n", "SCRIPT FLUSH")?;
    check(
        three.code(1, "127.0.0.1", SLAVE_USER)?.0 == 1226,
        "the limit holds after the scripts were flushed",
    )?;
    // What was decided locally while it was away is counted.
    let errors = three.metric(0, "switchyard_fleet_store_errors_total")?;
    check(
        errors >= 3.0,
        format!("a's three failed logins went unreported: {errors} errors"),
    )
}

/// A store that takes commands only after `AUTH`: an instance whose
/// `[fleet] password_file` holds the password uses the store (its limit
/// holds across it and one with the password in the URL); one with a
/// wrong password, or none, stays on its own (`switchyard_fleet_store_up`
/// 0) and says why.
fn fleet_store_password_file(env: &Env) -> TestResult {
    use std::os::unix::fs::PermissionsExt;
    let redis = Redis::start_with_password("fleet-pw").map_err(fail)?;
    let dir = tempfile::tempdir().map_err(fail)?;
    let file = |name: &str, text: &str| -> Result<String, Failed> {
        let path = dir.path().join(name);
        std::fs::write(&path, text).map_err(fail)?;
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).map_err(fail)?;
        Ok(path.display().to_string())
    };
    let (good, wrong) = (file("good", "fleet-pw\n")?, file("wrong", "not-it\n")?);
    let in_url = format!("redis://:fleet-pw@127.0.0.1:{}", redis.port);
    let cases = [
        ("file", redis.url(), format!("password_file = \"{good}\"\n")),
        ("url", in_url, String::new()),
        (
            "wrong",
            redis.url(),
            format!("password_file = \"{wrong}\"\n"),
        ),
        ("none", redis.url(), String::new()),
    ];
    let mut started = Vec::new();
    for (name, store, keys) in &cases {
        let (port, admin) = (free_port(), free_port());
        let settings = format!(
            "\"user.mysqlmaster\" = \"master\"\n\"user.mysqlslave\" = \"replicas\"\n\
             [fleet]\nstore = \"{store}\"\n{keys}instance = \"{name}\"\nlease_ms = 1500\n"
        );
        let text = fleet_config(
            env,
            (port, admin),
            "",
            "max_connections = 1\n",
            &switchyard_e2e::artifacts()
                .default_policy
                .display()
                .to_string(),
            &settings,
        );
        let proxy = Proxy::start_with(&switchyard_e2e::artifacts().switchyard, &text, port, "info")
            .map_err(fail)?;
        started.push((proxy, admin));
    }
    let up = |i: usize| -> Result<f64, Failed> {
        Ok(sample(
            &metrics_text(started[i].1)?,
            "switchyard_fleet_store_up",
        ))
    };
    let deadline = Instant::now() + Duration::from_secs(10);
    while (up(0)? != 1.0 || up(1)? != 1.0) && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(50));
    }
    check(
        up(0)? == 1.0,
        "the instance with password_file reaches the store",
    )?;
    check(
        up(1)? == 1.0,
        "the instance with the password in the URL too",
    )?;
    started[2]
        .0
        .wait_for_log("AUTH refused", Duration::from_secs(5))
        .map_err(fail)?;
    check(up(2)? == 0.0, "a wrong password: not up")?;
    check(up(3)? == 0.0, "no password: not up")?;
    // mysqlslave may hold one session: through the file's instance, the
    // URL's refuses a second (the limit is the store's).
    let slave = |i: usize| {
        let mut raw = RawClient::connect(started[i].0.addr()).map_err(fail)?;
        let outcome = raw
            .login(SLAVE_USER.0, SLAVE_USER.1, None, "mysql_native_password")
            .map_err(fail)?;
        Ok::<_, Failed>((outcome, raw))
    };
    let (first, _held) = slave(0)?;
    check(matches!(first, LoginOutcome::Ok(_)), "the first session")?;
    let (second, _) = slave(1)?;
    check(
        matches!(second, LoginOutcome::Err(ref e, _) if e.code == 1226),
        format!("the second, through the other instance: {second:?}"),
    )
}
