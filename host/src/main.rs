//! The `switchyard` daemon: parses the command line, sets up logging and
//! hands over to the library.

use std::io::Read;
use std::path::PathBuf;
use std::sync::Arc;

use anyhow::Context;
use clap::{Parser, Subcommand, ValueEnum};

use switchyard::auth::{PasswordHash, Sha1Password};
use switchyard::config::Config;
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
    let result = match cli.command {
        Command::Run { config, log_format } => run(config, log_format),
        Command::HashPassword { sha1 } => hash_password(sha1),
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

fn run(config_path: PathBuf, log_format: LogFormat) -> anyhow::Result<()> {
    switchyard::logging::init(log_format == LogFormat::Json);
    let config = Config::load(&config_path)?;
    let listen = config.listen;
    let shared = Arc::new(Shared::new(config, Some(config_path))?);
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
