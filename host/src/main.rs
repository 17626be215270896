//! The `switchyard` daemon: parses the command line, sets up logging and
//! hands over to the library.

use std::io::Read;
use std::path::PathBuf;
use std::sync::Arc;

use anyhow::Context;
use clap::{Parser, Subcommand};
use tracing_subscriber::EnvFilter;

use switchyard::auth::PasswordHash;
use switchyard::config::Config;
use switchyard::policy::Policy;
use switchyard::pool::Pools;
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
        /// The configuration file (TOML).
        #[arg(long, short)]
        config: PathBuf,
    },
    /// Reads a password on standard input and prints its `*HEX` hash (as
    /// MySQL's PASSWORD() and mysql.user show it).
    HashPassword,
}

fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Run { config } => run(config),
        Command::HashPassword => hash_password(),
    };
    match result {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("switchyard: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

fn hash_password() -> anyhow::Result<()> {
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
    println!("{}", PasswordHash::of_password(&input));
    zeroize::Zeroize::zeroize(&mut input);
    Ok(())
}

fn run(config_path: PathBuf) -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            EnvFilter::try_from_env("SWITCHYARD_LOG").unwrap_or_else(|_| EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .init();
    let config = Config::load(&config_path)?;
    let pools = Arc::new(Pools::from_config(&config));
    let started = std::time::Instant::now();
    let policy = Policy::load(&config.policy, Arc::clone(&pools))?;
    tracing::info!(
        policy = policy.name(),
        sha256 = policy.hash(),
        compile_ms = started.elapsed().as_millis() as u64,
        "policy loaded"
    );
    let listen = config.listen;
    let shared = Arc::new(Shared::new(config, pools, Arc::new(policy)));
    server::run(shared, shutdown_signal()).with_context(|| format!("serving on {listen}"))?;
    Ok(())
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
