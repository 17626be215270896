//! The `switchyard` daemon: parses the command line, sets up logging and
//! hands over to the library.

use std::io::Read;
use std::path::PathBuf;
use std::sync::Arc;

use anyhow::Context;
use clap::{Parser, Subcommand, ValueEnum};

use switchyard::auth::{PasswordHash, Sha1Password};
use switchyard::config::Config;
use switchyard::policy::{Policy, PoolSource, RouteError};
use switchyard::server::{self, Shared};

/// A MySQL/MariaDB proxy whose routing decisions come from WebAssembly
/// components.
#[derive(Debug, Parser)]
#[command(name = "switchyard", version)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Runs the proxy.
    Run {
        /// The configuration file (TOML). SIGHUP reads it again.
        #[arg(long, short)]
        config: PathBuf,
        /// Log line format on standard error.
        #[arg(long, value_enum, default_value_t = LogFormat::Text)]
        log_format: LogFormat,
    },
    /// Reads a password on standard input and prints its `*HEX` hash (as
    /// MySQL's PASSWORD() and mysql.user show it).
    HashPassword {
        /// Print SHA1(password) instead, as `[monitor] password_sha1` takes
        /// it.
        #[arg(long)]
        sha1: bool,
    },
    /// Tools for policy authors.
    #[command(subcommand)]
    Policy(PolicyCommand),
    /// Tells a running Switchyard to stop being ready (`POST /drain` on its
    /// admin endpoint: `/ready` answers 503, so balancers and Kubernetes
    /// stop sending new clients; it still serves and accepts until
    /// SIGTERM), then waits `--wait-ms`. For a `preStop` hook.
    Drain {
        /// The admin endpoint (`host:port`). Default: `[admin] listen` of
        /// `--config` (its loopback address when it listens on all), else
        /// 127.0.0.1:9033.
        #[arg(long)]
        admin: Option<String>,
        /// A file holding the admin token. Default: `[admin] token` or
        /// `token_file` of `--config`.
        #[arg(long)]
        token_file: Option<PathBuf>,
        /// The running instance's configuration file.
        #[arg(long, short)]
        config: Option<PathBuf>,
        /// Milliseconds to wait after the instance answered, for balancers
        /// to see it unready before SIGTERM closes its listeners.
        #[arg(long, default_value_t = 0)]
        wait_ms: u64,
    },
}

#[derive(Debug, Subcommand)]
enum PolicyCommand {
    /// Loads a policy component: checks its world and imports, prints what
    /// it imports and exports, and runs the self-test of `--config`.
    Check {
        /// The component (`.wasm`).
        file: PathBuf,
        /// A Switchyard config whose `[policy]` limits, settings and
        /// self-test to use.
        #[arg(long, short)]
        config: Option<PathBuf>,
    },
    /// Makes one `route` call offline and prints the answer, the time it
    /// took and the memory it used.
    Route {
        /// The component (`.wasm`).
        file: PathBuf,
        /// The user logging in.
        #[arg(long)]
        user: String,
        /// The database given at login.
        #[arg(long)]
        db: Option<String>,
        /// The client's address.
        #[arg(long, default_value = "127.0.0.1:40000")]
        client: String,
        /// A setting `key=value` (repeatable; added to those of `--config`).
        #[arg(long = "setting", value_name = "KEY=VALUE")]
        settings: Vec<String>,
        /// A JSON array of pools as `pools()` reports them: `[{"name":
        /// "replicas", "healthy_backends": 2, "total_backends": 2,
        /// "active_sessions": 0, "max_lag_ms": null}]`.
        #[arg(long)]
        pools_json: Option<PathBuf>,
        /// A Switchyard config whose `[policy]` limits and settings to use.
        #[arg(long, short)]
        config: Option<PathBuf>,
        /// Make this many calls and report the median time too (with
        /// reused instances, the cost of a call after the first).
        #[arg(long, default_value_t = 1)]
        calls: u32,
        /// A statement (COM_QUERY text) to classify and route by the
        /// built-in statement rule, for a session in the state the flags
        /// below describe.
        #[arg(long, value_name = "SQL")]
        statement: Option<String>,
        /// The session is inside a transaction.
        #[arg(long, requires = "statement")]
        in_transaction: bool,
        /// ... a READ ONLY one, running on a reader.
        #[arg(long, requires = "in_transaction")]
        read_only_transaction: bool,
        /// The session has autocommit off.
        #[arg(long, requires = "statement")]
        autocommit_off: bool,
    },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum LogFormat {
    /// Human-readable lines.
    Text,
    /// One JSON object per line.
    Json,
}

fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    if !matches!(cli.command, Command::Run { .. }) {
        // The tools print to stdout: behave like other command-line tools
        // when the reader goes away (`... | head`), instead of panicking.
        // The daemon keeps SIGPIPE ignored (a write to a closed socket is
        // an error there, not a reason to die).
        // SAFETY: setting a signal disposition before any thread starts.
        unsafe {
            libc::signal(libc::SIGPIPE, libc::SIG_DFL);
        }
    }
    let result = match cli.command {
        Command::Run { config, log_format } => run(config, log_format),
        Command::HashPassword { sha1 } => hash_password(sha1),
        Command::Policy(command) => policy_tool(command),
        Command::Drain {
            admin,
            token_file,
            config,
            wait_ms,
        } => drain(admin, token_file, config, wait_ms),
    };
    match result {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("switchyard: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

fn hash_password(sha1: bool) -> anyhow::Result<()> {
    let mut input = Vec::new();
    std::io::stdin()
        .take(64 * 1024)
        .read_to_end(&mut input)
        .context("reading the password from standard input")?;
    // One line: drop the newline a terminal or `echo` adds.
    if input.ends_with(b"\n") {
        input.pop();
        if input.ends_with(b"\r") {
            input.pop();
        }
    }
    if sha1 {
        println!("{}", Sha1Password::of_password(&input).to_hex());
    } else {
        println!("{}", PasswordHash::of_password(&input));
    }
    zeroize::Zeroize::zeroize(&mut input);
    Ok(())
}

fn drain(
    admin: Option<String>,
    token_file: Option<PathBuf>,
    config: Option<PathBuf>,
    wait_ms: u64,
) -> anyhow::Result<()> {
    let config = config.map(|p| Config::load(&p)).transpose()?;
    let from_config = config.as_ref().and_then(|c| c.admin.as_ref());
    let addr = match (admin, from_config) {
        (Some(a), _) => a,
        (None, Some(a)) => {
            let mut addr = *a.listen.get_ref();
            if addr.ip().is_unspecified() {
                addr.set_ip(match addr {
                    std::net::SocketAddr::V4(_) => std::net::Ipv4Addr::LOCALHOST.into(),
                    std::net::SocketAddr::V6(_) => std::net::Ipv6Addr::LOCALHOST.into(),
                });
            }
            addr.to_string()
        }
        (None, None) => "127.0.0.1:9033".to_owned(),
    };
    let token = match (token_file, from_config) {
        (Some(path), _) => Some(read_secret_file(&path)?),
        (None, Some(a)) => match (&a.token, &a.token_file) {
            (Some(t), _) => Some(t.expose().clone()),
            (None, Some(path)) => Some(read_secret_file(path)?),
            (None, None) => None,
        },
        (None, None) => None,
    };
    let status = switchyard::admin::post(&addr, "/drain", token.as_deref())
        .with_context(|| format!("POST /drain to {addr}"))?;
    anyhow::ensure!(status == 200, "POST /drain to {addr} answered {status}");
    eprintln!("switchyard: {addr} is draining; waiting {wait_ms} ms");
    std::thread::sleep(std::time::Duration::from_millis(wait_ms));
    Ok(())
}

/// A file's text without surrounding whitespace.
fn read_secret_file(path: &std::path::Path) -> anyhow::Result<String> {
    let text =
        std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    Ok(text.trim().to_owned())
}

fn run(config_path: PathBuf, log_format: LogFormat) -> anyhow::Result<()> {
    switchyard::logging::init(log_format == LogFormat::Json);
    let config = Config::load(&config_path)?;
    let listen = config.listen;
    let shared = Arc::new(Shared::new(config, Some(config_path))?);
    server::run(shared, shutdown_signal()).with_context(|| format!("serving on {listen}"))?;
    Ok(())
}

/// The `[policy]` section of `config`, or the defaults, for `file`.
fn policy_config(
    file: &std::path::Path,
    config: Option<&PathBuf>,
) -> anyhow::Result<(switchyard::config::PolicyConfig, Option<Config>)> {
    let config = config.map(|p| Config::load(p)).transpose()?;
    let mut policy = match &config {
        Some(c) => c.policy.clone(),
        None => toml::from_str(&format!("module = {:?}", file.display().to_string()))
            .context("default policy settings")?,
    };
    policy.module = toml::Spanned::new(0..0, file.to_owned());
    Ok((policy, config))
}

fn policy_tool(command: PolicyCommand) -> anyhow::Result<()> {
    match command {
        PolicyCommand::Check { file, config } => policy_check(&file, config.as_ref()),
        PolicyCommand::Route {
            file,
            user,
            db,
            client,
            settings,
            pools_json,
            config,
            calls,
            statement,
            in_transaction,
            read_only_transaction,
            autocommit_off,
        } => {
            let (mut policy_config, config) = policy_config(&file, config.as_ref())?;
            for kv in settings {
                let (k, v) = kv
                    .split_once('=')
                    .with_context(|| format!("--setting {kv}: expected KEY=VALUE"))?;
                policy_config.settings.insert(k.to_owned(), v.to_owned());
            }
            let pools = match pools_json {
                Some(path) => read_pools_json(&path)?,
                None => configured_pools(config.as_ref()),
            };
            let bytes =
                std::fs::read(&file).with_context(|| format!("reading {}", file.display()))?;
            let policy =
                Policy::with_pools(&bytes, &file, &policy_config, PoolSource::Fixed(pools))?;
            policy_route(&policy, &user, db.as_deref(), &client, calls)?;
            if let Some(sql) = statement {
                let session = switchyard::sql::SessionView {
                    in_transaction,
                    read_only_transaction,
                    autocommit_off,
                    ..Default::default()
                };
                statement_route(&sql, &session);
                statement_hook(&policy, &sql, (&user, db.as_deref()), &session);
            }
            Ok(())
        }
    }
}

/// Prints what the host makes of `sql` and where the built-in statement
/// rule sends it.
fn statement_route(sql: &str, session: &switchyard::sql::SessionView) {
    let class = switchyard::sql::classify(sql.as_bytes());
    let (target, why) = switchyard::sql::rule(&class, session);
    println!(
        "statement: {}{}{}{}{}",
        format!("{:?}", class.kind).to_lowercase(),
        if class.multi {
            ", several statements"
        } else {
            ""
        },
        if class.reads_previous {
            ", reads the previous statement's outcome"
        } else {
            ""
        },
        class
            .pin
            .map(|p| format!(", pins ({p:?})"))
            .unwrap_or_default(),
        class
            .transaction
            .map(|t| format!(", transaction: {t:?}"))
            .unwrap_or_default(),
    );
    println!("built-in:  {} ({why})", target.as_str());
}

/// What the policy's `route-statement` answers for `sql`, if it has one.
fn statement_hook(
    policy: &Policy,
    sql: &str,
    (user, db): (&str, Option<&str>),
    session: &switchyard::sql::SessionView,
) {
    if !policy.has_statement_hook() {
        println!("policy:    no route-statement (the built-in rule decides)");
        return;
    }
    let class = switchyard::sql::classify(sql.as_bytes());
    let info = switchyard::policy::StatementInfo {
        kind: class.kind,
        in_transaction: session.in_transaction,
        read_only_transaction: session.read_only_transaction,
        digest: switchyard::sql::digest(sql.as_bytes()),
        text: sql,
        user,
        db,
        unseen_writes: false,
    };
    match policy.route_statement(&info) {
        Ok(decision) => println!(
            "policy:    {decision:?} (route-statement; in a transaction, for session state, statements that pin or read the previous outcome, several statements and transaction control the host keeps its rule)"
        ),
        Err(e) => println!("policy:    {e} (the built-in rule decides)"),
    }
}

/// `switchyard policy check`: loads the policy, describes it and runs the
/// configuration's self-tests.
fn policy_check(file: &std::path::Path, config: Option<&PathBuf>) -> anyhow::Result<()> {
    let (policy_config, _) = policy_config(file, config)?;
    let bytes = std::fs::read(file).with_context(|| format!("reading {}", file.display()))?;
    let started = std::time::Instant::now();
    let policy = Policy::with_pools(&bytes, file, &policy_config, PoolSource::Fixed(Vec::new()))?;
    println!("policy:   {}", policy.name());
    println!("sha256:   {}", policy.hash());
    println!("size:     {} bytes", bytes.len());
    println!(
        "load:     {} ms ({})",
        started.elapsed().as_millis(),
        policy.origin().as_str()
    );
    println!(
        "instance: {} µs to instantiate; {}",
        policy.instantiation_time().as_micros(),
        if policy.reuses_instances() {
            "instances are reused"
        } else {
            "a fresh instance per call"
        }
    );
    println!("exports:  route (switchyard:policy/router)");
    for import in policy.imports() {
        println!("imports:  {import}");
    }
    let cases = &policy_config.selftest;
    policy.self_test(cases).map_err(anyhow::Error::msg)?;
    println!("selftest: {} case(s) passed", cases.len());
    Ok(())
}

/// The configured pools, all healthy and idle.
fn configured_pools(config: Option<&Config>) -> Vec<switchyard::pool::PoolStatus> {
    config
        .iter()
        .flat_map(|c| c.pools.iter())
        .map(|(name, p)| {
            let n = p.backends.get_ref().len() as u32;
            switchyard::pool::PoolStatus {
                name: name.clone(),
                healthy_backends: n,
                total_backends: n,
                active_sessions: 0,
                max_lag_ms: None,
            }
        })
        .collect()
}

/// `switchyard policy route`: one call of `policy`, its answer and cost,
/// and the median time of `calls - 1` more; an error when the policy
/// failed.
fn policy_route(
    policy: &Policy,
    user: &str,
    db: Option<&str>,
    client: &str,
    calls: u32,
) -> anyhow::Result<()> {
    let (answer, cost) = policy.route_measured(user, db, client);
    match &answer {
        Ok(pool) => println!("pool:    {pool}"),
        Err(RouteError::Refused(text)) => {
            println!("refused: {text}")
        }
        Err(RouteError::Failed(why)) => println!("failed:  {why}"),
    }
    println!("time:    {} µs", cost.duration.as_micros());
    println!("memory:  {} KiB", cost.peak_memory / 1024);
    if calls > 1 {
        let mut times: Vec<u128> = (1..calls)
            .map(|_| {
                policy
                    .route_measured(user, db, client)
                    .1
                    .duration
                    .as_micros()
            })
            .collect();
        times.sort_unstable();
        println!(
            "median:  {} µs over {} more calls ({})",
            times[times.len() / 2],
            times.len(),
            if policy.reuses_instances() {
                "reused instances"
            } else {
                "fresh instances"
            }
        );
    }
    match answer {
        Err(RouteError::Failed(_)) => {
            anyhow::bail!("the policy failed")
        }
        _ => Ok(()),
    }
}

fn read_pools_json(path: &std::path::Path) -> anyhow::Result<Vec<switchyard::pool::PoolStatus>> {
    #[derive(serde::Deserialize)]
    struct Entry {
        name: String,
        #[serde(default)]
        healthy_backends: u32,
        #[serde(default)]
        total_backends: u32,
        #[serde(default)]
        active_sessions: u32,
        #[serde(default)]
        max_lag_ms: Option<u64>,
    }
    let text =
        std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    let entries: Vec<Entry> =
        serde_json::from_str(&text).with_context(|| format!("parsing {}", path.display()))?;
    Ok(entries
        .into_iter()
        .map(|e| switchyard::pool::PoolStatus {
            name: e.name,
            healthy_backends: e.healthy_backends,
            total_backends: e.total_backends,
            active_sessions: e.active_sessions,
            max_lag_ms: e.max_lag_ms,
        })
        .collect())
}

/// Completes on SIGINT or SIGTERM.
async fn shutdown_signal() {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = match signal(SignalKind::terminate()) {
        Ok(s) => s,
        Err(_) => return std::future::pending().await,
    };
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term.recv() => {}
    }
}
