//! Configuration: the TOML file, parsed strictly and validated.
//!
//! Unknown keys are rejected and every error names the file and the line.
//! Each field documents its default. (Reloading comes with a later change:
//! today the file is read once at start.)

use std::collections::{BTreeMap, HashSet};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;
use toml::Spanned;

use crate::auth::PasswordHash;

/// The whole configuration file.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// Address the proxy listens on for MySQL clients. Default `127.0.0.1:6033`.
    #[serde(default = "default_listen")]
    pub listen: SocketAddr,
    /// Threads that serve sessions, each with its own event loop. Default:
    /// the number of CPUs.
    #[serde(default)]
    pub threads: Option<usize>,
    /// Client sessions served at once; further clients get ERR 1040
    /// "Too many connections". Default 4096.
    #[serde(default = "default_max_connections")]
    pub max_connections: usize,
    /// Time a client has from TCP accept to a finished login (greeting,
    /// credentials, routing and backend login), in milliseconds. Default 10000.
    #[serde(default = "default_login_timeout_ms")]
    pub login_timeout_ms: u64,
    /// Time one backend attempt may take (TCP connect, greeting and login),
    /// in milliseconds; on expiry the next backend of the pool is tried.
    /// Default 3000.
    #[serde(default = "default_connect_timeout_ms")]
    pub connect_timeout_ms: u64,
    /// Version string presented to clients until a backend's greeting has
    /// been read; after that, the backends' own version is presented.
    /// Default `5.5.5-10.11.0-MariaDB-switchyard`.
    #[serde(default = "default_server_version")]
    pub default_server_version: String,
    /// Collation id presented to clients until a backend has been probed.
    /// Default 45 (`utf8mb4_general_ci`).
    #[serde(default = "default_charset")]
    pub default_charset: u8,
    /// How often to probe backends that have not answered yet (at start) or
    /// that failed a login attempt, in milliseconds; a failing backend that
    /// answers a probe takes new sessions again. Default 2000.
    #[serde(default = "default_probe_interval_ms")]
    pub probe_interval_ms: u64,
    /// Accounts clients log in with (`mysql_native_password`).
    #[serde(default)]
    pub users: Vec<UserConfig>,
    /// Backend pools by name.
    pub pools: BTreeMap<String, PoolConfig>,
    /// The routing policy.
    pub policy: PolicyConfig,
}

/// One account.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UserConfig {
    /// The user name.
    pub name: Spanned<String>,
    /// `*` + 40 hex digits, as `mysql.user` shows it (`PASSWORD('...')`,
    /// or `switchyard hash-password`); empty for an account without a
    /// password. The same password must be valid on the backends.
    pub password_hash: PasswordHash,
}

/// How a pool chooses a backend for a new session.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Balance {
    /// The backend with the fewest active sessions; ties go round-robin.
    #[default]
    LeastConnections,
}

/// One pool of interchangeable backends.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PoolConfig {
    /// Backend addresses (`ip:port`). At least one.
    pub backends: Spanned<Vec<SocketAddr>>,
    /// Balancing method. Default `least-connections`.
    #[serde(default)]
    pub balance: Balance,
}

/// The routing policy component.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PolicyConfig {
    /// Path of the policy component (`.wasm`), relative to the working
    /// directory unless absolute.
    pub module: Spanned<PathBuf>,
    /// Wall-clock time one `route` call may run, in milliseconds (waiting
    /// for a call slot does not count). Default 50: well above what a policy
    /// needs (tens of microseconds), with room for a busy machine.
    #[serde(default = "default_policy_timeout_ms")]
    pub timeout_ms: u64,
    /// Linear memory one policy instance may grow to, in MiB. Default 16.
    #[serde(default = "default_policy_memory_mib")]
    pub memory_limit_mib: u64,
    /// Policy calls that may run at once; further logins wait for a slot.
    /// Default: the number of CPUs, so that a running call has a core and
    /// its deadline measures its own work.
    #[serde(default = "default_policy_concurrency")]
    pub max_concurrent_calls: u32,
    /// Free-form settings the policy reads with `setting(key)`.
    #[serde(default)]
    pub settings: BTreeMap<String, String>,
}

fn default_listen() -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], 6033))
}
fn default_max_connections() -> usize {
    4096
}
fn default_login_timeout_ms() -> u64 {
    10_000
}
fn default_connect_timeout_ms() -> u64 {
    3_000
}
fn default_server_version() -> String {
    "5.5.5-10.11.0-MariaDB-switchyard".into()
}
fn default_charset() -> u8 {
    45
}
fn default_probe_interval_ms() -> u64 {
    2_000
}
fn default_policy_timeout_ms() -> u64 {
    50
}
fn default_policy_memory_mib() -> u64 {
    16
}
fn default_policy_concurrency() -> u32 {
    std::thread::available_parallelism().map_or(2, |n| n.get() as u32)
}

/// A configuration that could not be read, parsed or validated.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file could not be read.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// What went wrong.
        source: std::io::Error,
    },
    /// The file is not valid TOML, has an unknown key or a bad value, or
    /// fails validation.
    #[error("{path}:{line}:{column}: {message}")]
    Invalid {
        /// The file.
        path: PathBuf,
        /// 1-based line.
        line: usize,
        /// 1-based column.
        column: usize,
        /// What is wrong.
        message: String,
    },
}

impl Config {
    /// Reads, parses and validates the file at `path`.
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Io {
            path: path.to_owned(),
            source,
        })?;
        Self::parse(&text, path)
    }

    /// Parses and validates `text`; `path` is used in error messages.
    pub fn parse(text: &str, path: &Path) -> Result<Self, ConfigError> {
        let invalid = |span: Option<std::ops::Range<usize>>, message: String| {
            let (line, column) = line_col(text, span.map_or(0, |s| s.start));
            ConfigError::Invalid {
                path: path.to_owned(),
                line,
                column,
                message,
            }
        };
        let config: Config =
            toml::from_str(text).map_err(|e| invalid(e.span(), e.message().trim().to_owned()))?;
        config
            .validate()
            .map_err(|(span, message)| invalid(span, message))?;
        Ok(config)
    }

    fn validate(&self) -> Result<(), (Option<std::ops::Range<usize>>, String)> {
        let mut names = HashSet::new();
        for user in &self.users {
            if user.name.get_ref().is_empty() {
                return Err((Some(user.name.span()), "user name is empty".into()));
            }
            if !names.insert(user.name.get_ref()) {
                return Err((
                    Some(user.name.span()),
                    format!("user '{}' is defined twice", user.name.get_ref()),
                ));
            }
        }
        if self.pools.is_empty() {
            return Err((None, "at least one pool must be configured".into()));
        }
        for (name, pool) in &self.pools {
            if pool.backends.get_ref().is_empty() {
                return Err((
                    Some(pool.backends.span()),
                    format!("pool '{name}' has no backends"),
                ));
            }
        }
        if self.max_connections == 0 {
            return Err((None, "max_connections must be at least 1".into()));
        }
        if self.policy.timeout_ms == 0 || self.policy.max_concurrent_calls == 0 {
            return Err((
                Some(self.policy.module.span()),
                "policy timeout_ms and max_concurrent_calls must be at least 1".into(),
            ));
        }
        Ok(())
    }

    /// [`Config::threads`], or the number of CPUs.
    pub fn threads(&self) -> usize {
        self.threads
            .unwrap_or_else(|| std::thread::available_parallelism().map_or(2, |n| n.get()))
            .max(1)
    }

    /// [`Config::login_timeout_ms`] as a duration.
    pub fn login_timeout(&self) -> Duration {
        Duration::from_millis(self.login_timeout_ms)
    }

    /// [`Config::connect_timeout_ms`] as a duration.
    pub fn connect_timeout(&self) -> Duration {
        Duration::from_millis(self.connect_timeout_ms)
    }
}

fn line_col(text: &str, offset: usize) -> (usize, usize) {
    let before = &text[..offset.min(text.len())];
    let line = before.matches('\n').count() + 1;
    let column = before.len() - before.rfind('\n').map_or(0, |i| i + 1) + 1;
    (line, column)
}

#[cfg(test)]
mod tests {
    use super::*;

    const EXAMPLE: &str = r#"
listen = "127.0.0.1:6033"
[[users]]
name = "mysqlmaster"
password_hash = "*9C01670BF00D3764A16EF8B0611F8FC02173FC31"
[pools.master]
backends = ["127.0.0.1:13306"]
[pools.replicas]
backends = ["127.0.0.1:13307", "127.0.0.1:13308"]
balance = "least-connections"
[policy]
module = "target/wasm32-wasip2/release/default_policy.wasm"
[policy.settings]
"user.mysqlmaster" = "master"
"user.mysqlslave" = "replicas"
"#;

    fn parse(text: &str) -> Result<Config, ConfigError> {
        Config::parse(text, Path::new("sy.toml"))
    }

    #[test]
    fn parses_the_issue_example_with_defaults() {
        let c = parse(EXAMPLE).unwrap();
        assert_eq!(c.listen.to_string(), "127.0.0.1:6033");
        assert_eq!(c.users.len(), 1);
        assert_eq!(c.pools["replicas"].backends.get_ref().len(), 2);
        assert_eq!(c.policy.settings["user.mysqlslave"], "replicas");
        assert_eq!(c.max_connections, 4096);
        assert_eq!(c.policy.timeout_ms, 50);
    }

    #[test]
    fn unknown_keys_name_file_and_line() {
        let text = EXAMPLE.replace("balance =", "balanse =");
        let e = parse(&text).unwrap_err().to_string();
        assert!(e.starts_with("sy.toml:10:"), "{e}");
        assert!(e.contains("balanse"), "{e}");
    }

    #[test]
    fn bad_values_name_file_and_line() {
        let e = parse(&EXAMPLE.replace("*9C01", "9C01"))
            .unwrap_err()
            .to_string();
        assert!(e.starts_with("sy.toml:5:"), "{e}");
        assert!(e.contains("40 hex digits"), "{e}");
        let e = parse(&EXAMPLE.replace("127.0.0.1:13306", "nowhere"))
            .unwrap_err()
            .to_string();
        assert!(e.starts_with("sy.toml:7:"), "{e}");
        let e = parse(&EXAMPLE.replace("least-connections", "fastest"))
            .unwrap_err()
            .to_string();
        assert!(e.starts_with("sy.toml:10:"), "{e}");
    }

    #[test]
    fn validation_errors_name_the_line() {
        let text = format!("{EXAMPLE}\n[[users]]\nname = \"mysqlmaster\"\npassword_hash = \"\"\n");
        let e = parse(&text).unwrap_err().to_string();
        assert!(e.starts_with("sy.toml:18:"), "{e}");
        assert!(e.contains("defined twice"), "{e}");
        let e = parse(&EXAMPLE.replace(r#"["127.0.0.1:13306"]"#, "[]"))
            .unwrap_err()
            .to_string();
        assert!(
            e.starts_with("sy.toml:7:") && e.contains("no backends"),
            "{e}"
        );
    }
}
