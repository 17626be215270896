//! Helpers the end-to-end test binaries share: a runtime per blocking call,
//! client options that go through the proxy, and test-result plumbing.

#![allow(dead_code)]

use std::sync::Arc;

use libtest_mimic::{Arguments, Failed, Trial};
use mysql_async::prelude::*;
use mysql_async::{Conn, OptsBuilder};

pub type TestResult = Result<(), Failed>;

pub fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime")
}

pub fn block_on<F: std::future::Future>(f: F) -> F::Output {
    runtime().block_on(f)
}

/// `mysql_async` options for `user` through the proxy on `port`.
pub fn opts(port: u16, (user, password): (&str, &str), db: Option<&str>) -> OptsBuilder {
    OptsBuilder::default()
        .ip_or_hostname("127.0.0.1")
        .tcp_port(port)
        .user(Some(user))
        .pass(Some(password))
        .db_name(db)
        // Otherwise mysql_async looks up the server's socket and bypasses
        // the proxy.
        .prefer_socket(false)
}

pub fn fail(e: impl std::fmt::Display) -> Failed {
    e.to_string().into()
}

pub fn check(cond: bool, msg: impl Into<String>) -> TestResult {
    if cond { Ok(()) } else { Err(msg.into().into()) }
}

/// The `@@server_id` of the backend `conn` is relayed to.
pub async fn server_id(conn: &mut Conn) -> Result<u32, Failed> {
    let id: Option<u32> = conn.query_first("SELECT @@server_id").await.map_err(fail)?;
    id.ok_or_else(|| "no server id".into())
}

/// Expects a server error; its code, SQLSTATE and message.
pub fn server_error(e: mysql_async::Error) -> Result<(u16, String, String), Failed> {
    match e {
        mysql_async::Error::Server(s) => Ok((s.code, s.state, s.message)),
        other => Err(format!("expected a server error, got {other:?}").into()),
    }
}

/// A test and its name.
pub type NamedTest<E> = (&'static str, fn(&E) -> TestResult);

/// Runs `tests` one at a time (they share `env`, which some of them change),
/// drops `env` (stopping its servers) and exits with the result.
pub fn run_one_at_a_time<E: Send + Sync + 'static>(
    mut args: Arguments,
    env: Arc<E>,
    tests: Vec<NamedTest<E>>,
) -> ! {
    let trials = tests
        .into_iter()
        .map(|(name, f)| {
            let env = Arc::clone(&env);
            Trial::test(name, move || f(&env))
        })
        .collect();
    args.test_threads = Some(1);
    let conclusion = libtest_mimic::run(&args, trials);
    drop(env);
    conclusion.exit()
}

/// Runs `tests` one at a time against each of `envs` in turn (the tests of
/// an env named `""` under their own names, the others' under
/// `<env>::<test>`), drops the envs and exits with the result.
pub fn run_against_each<E: Send + Sync + 'static>(
    mut args: Arguments,
    envs: Vec<(&'static str, Arc<E>)>,
    tests: Vec<NamedTest<E>>,
) -> ! {
    let mut trials = Vec::new();
    for (prefix, env) in &envs {
        for (name, f) in &tests {
            let env = Arc::clone(env);
            let f = *f;
            let name = match *prefix {
                "" => (*name).to_owned(),
                p => format!("{p}::{name}"),
            };
            trials.push(Trial::test(name, move || f(&env)));
        }
    }
    args.test_threads = Some(1);
    let conclusion = libtest_mimic::run(&args, trials);
    drop(envs);
    conclusion.exit()
}

/// A `[[users]]` table for `name` with the hash of `password`.
pub fn user_table(name: &str, password: &str) -> String {
    format!(
        "[[users]]\nname = \"{name}\"\npassword_hash = \"{}\"\n",
        switchyard::auth::PasswordHash::of_password(password.as_bytes())
    )
}

/// A CA and a server certificate it signed, for TLS towards clients that
/// verify what they connect to.
pub struct TlsFiles {
    /// The CA certificate (PEM): what clients trust.
    pub ca: std::path::PathBuf,
    /// The server's certificate (PEM), for `127.0.0.1` and `localhost`
    /// (subjectAltName), not itself a CA.
    pub cert: std::path::PathBuf,
    /// The server certificate's private key (PEM, PKCS#8).
    pub key: std::path::PathBuf,
}

/// Makes a CA and a server certificate for `127.0.0.1` signed by it in
/// `dir` (openssl CLI). Clients that verify names (and rustls, which refuses
/// a CA certificate used as a server's) accept it given the CA.
pub fn ca_signed_certificate(dir: &std::path::Path) -> Result<TlsFiles, Failed> {
    let openssl = |args: &[&str]| -> TestResult {
        let out = std::process::Command::new("openssl")
            .args(args)
            .current_dir(dir)
            .output()
            .map_err(fail)?;
        check(
            out.status.success(),
            format!("openssl {args:?}: {}", String::from_utf8_lossy(&out.stderr)),
        )
    };
    openssl(&[
        "req",
        "-x509",
        "-newkey",
        "rsa:2048",
        "-nodes",
        "-days",
        "2",
        "-subj",
        "/CN=switchyard-test-ca",
        "-keyout",
        "ca.key",
        "-out",
        "ca.crt",
    ])?;
    openssl(&[
        "req",
        "-newkey",
        "rsa:2048",
        "-nodes",
        "-subj",
        "/CN=127.0.0.1",
        "-keyout",
        "server.key",
        "-out",
        "server.csr",
    ])?;
    std::fs::write(
        dir.join("server.ext"),
        "subjectAltName = IP:127.0.0.1, DNS:localhost\n\
         basicConstraints = critical, CA:FALSE\n\
         keyUsage = critical, digitalSignature, keyEncipherment\n\
         extendedKeyUsage = serverAuth\n",
    )
    .map_err(fail)?;
    openssl(&[
        "x509",
        "-req",
        "-in",
        "server.csr",
        "-CA",
        "ca.crt",
        "-CAkey",
        "ca.key",
        "-CAcreateserial",
        "-days",
        "2",
        "-extfile",
        "server.ext",
        "-out",
        "server.crt",
    ])?;
    Ok(TlsFiles {
        ca: dir.join("ca.crt"),
        cert: dir.join("server.crt"),
        key: dir.join("server.key"),
    })
}

/// A raw client of a proxy (`switchyard_e2e::raw`), logged in with or
/// without CLIENT_SESSION_TRACK (then a split session's backend sessions
/// report state changes, else the proxy keeps the session statements).
pub struct Raw(pub switchyard_e2e::raw::RawClient);

impl Raw {
    /// Logs in to the proxy at `addr` as `user`, to `db`.
    pub fn login(
        addr: std::net::SocketAddr,
        tracked: bool,
        (user, password): (&str, &str),
        db: Option<&str>,
    ) -> Result<Self, Failed> {
        use switchyard::protocol::CapabilityFlags;
        use switchyard_e2e::raw::{LoginOutcome, RawClient};
        let caps = if tracked {
            CapabilityFlags::CLIENT_SESSION_TRACK
        } else {
            CapabilityFlags::empty()
        };
        let mut raw = RawClient::connect(addr)?.with_capabilities(caps);
        match raw.login(user, password, db, "mysql_native_password")? {
            LoginOutcome::Ok(2) => Ok(Self(raw)),
            other => Err(format!("{other:?}").into()),
        }
    }

    /// `sql`'s answer.
    pub fn answer(&mut self, sql: &str) -> Result<switchyard::protocol::QueryReply, Failed> {
        use switchyard::protocol::ResultSetDecoder;
        self.0
            .write_raw(&switchyard_e2e::raw::RawClient::query_packet(sql))?;
        let mut decoder = ResultSetDecoder::new(false);
        loop {
            let p = self.0.expect_packet()?;
            if let Some(reply) = decoder.feed(&p.payload)? {
                return Ok(reply);
            }
        }
    }

    /// Runs `sql`, which must succeed.
    pub fn exec(&mut self, sql: &str) -> TestResult {
        match self.answer(sql)? {
            switchyard::protocol::QueryReply::Err(e) => {
                Err(format!("{sql}: {} {}", e.code, e.message).into())
            }
            _ => Ok(()),
        }
    }

    /// The first row of `sql`.
    pub fn row(&mut self, sql: &str) -> Result<Vec<Option<String>>, Failed> {
        match self.answer(sql)? {
            switchyard::protocol::QueryReply::Rows(t) => {
                Ok(t.rows.into_iter().next().unwrap_or_default())
            }
            other => Err(format!("{sql}: {other:?}").into()),
        }
    }
}
