//! Configuration: the TOML file, parsed strictly and validated.
//!
//! Unknown keys are rejected and every error names the file and the line.
//! Each field documents its default. The file is read at start and again on
//! reload (SIGHUP or the admin endpoint); a file that fails here changes
//! nothing.

use std::collections::{BTreeMap, HashSet};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Serialize};
use toml::Spanned;

use crate::auth::PasswordHash;
use crate::cidr::Cidr;
use crate::secret::Secret;

mod secret_files;

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
    /// Sessions one user may have at once (0: no limit); a user's own
    /// `max_connections` overrides it. Over the limit a login gets ERR 1226.
    /// Default 0.
    #[serde(default)]
    pub max_connections_per_user: u32,
    /// A logged-in session with no traffic for this long, while no command
    /// is waiting for its answer, is closed (milliseconds; 0: never).
    /// Default 0.
    #[serde(default)]
    pub idle_timeout_ms: u64,
    /// A command that waits for its answer while the backend sends nothing
    /// for this long (a statement that runs too long, a backend that hangs)
    /// ends the session: the client gets ERR 9105 in place of the answer
    /// (when none of it has arrived) and both connections are closed
    /// (milliseconds; 0: never). Default 36000000 (10 hours).
    #[serde(default = "default_query_timeout_ms")]
    pub query_timeout_ms: u64,
    /// On SIGTERM/SIGINT, how long a statement under way may go on before
    /// its session is closed (sessions that wait for nothing close at once;
    /// milliseconds). Default 30000.
    #[serde(default = "default_shutdown_timeout_ms")]
    pub shutdown_timeout_ms: u64,
    /// Accounts clients log in with (`mysql_native_password`): an array of
    /// `[[users]]` tables, or a `[users]` table that also loads accounts
    /// from the primary (`source = "backend"`) and lists its own as
    /// `[[users.accounts]]`.
    #[serde(default)]
    pub users: Users,
    /// More accounts, from a file of their own: `[[users]]` tables with
    /// the same keys, and nothing else. With it the configuration itself
    /// need hold no secret (a Kubernetes ConfigMap) and the hashes live in
    /// a Secret. Read at start and on every reload, and followed with
    /// `watch_config`; a name in both files is an error. Like the
    /// configuration file, one warning if anyone may read it. Relative to
    /// the working directory. Default: none.
    #[serde(default)]
    pub users_file: Option<Spanned<PathBuf>>,
    /// Backend pools by name.
    pub pools: BTreeMap<String, PoolConfig>,
    /// The routing policy (of `listen`).
    pub policy: PolicyConfig,
    /// More routing policies by name, for `[[listeners]]`; the same keys as
    /// `[policy]`.
    #[serde(default)]
    pub policies: BTreeMap<String, PolicyConfig>,
    /// More addresses to listen on, each with its own policy.
    #[serde(default)]
    pub listeners: Vec<ListenerConfig>,
    /// Reload the configuration when its file changes, as SIGHUP does
    /// (followed through symbolic links: a Kubernetes ConfigMap's swapped
    /// `..data` link counts). Checked 4 times a second. Default false:
    /// reloads happen on SIGHUP or `POST /reload` only.
    #[serde(default)]
    pub watch_config: bool,
    /// `listen` takes clients through an L4 balancer that sends the PROXY
    /// protocol header (version 1 or 2, told apart by itself): the client
    /// address it names is the one routing, limits and logs use. Only
    /// connections from `proxy_trusted` are accepted, and each must start
    /// with a header. Default false.
    #[serde(default)]
    pub proxy_protocol: bool,
    /// The balancers' addresses (`"10.0.0.0/8"`, `"192.0.2.7"`), for
    /// `proxy_protocol`.
    #[serde(default)]
    pub proxy_trusted: Vec<Cidr>,
    /// Background health checks of the backends.
    #[serde(default)]
    pub health: HealthConfig,
    /// The account health checks log in with; without it they only read the
    /// greeting, and replication lag and `read_only` are not known.
    #[serde(default)]
    pub monitor: Option<MonitorConfig>,
    /// Refusing client addresses that keep failing to log in.
    #[serde(default)]
    pub throttle: ThrottleConfig,
    /// The admin HTTP endpoint; off unless this table is present.
    #[serde(default)]
    pub admin: Option<AdminConfig>,
    /// State shared with other Switchyards through a Redis server (failed
    /// logins and blocks, per-user session counts, policy digests); off
    /// unless this table is present. Read at start: a change takes a
    /// restart.
    #[serde(default)]
    pub fleet: Option<FleetConfig>,
    /// TLS for clients; off unless this table is present.
    #[serde(default)]
    pub tls: Option<TlsConfig>,
    /// How clients authenticate: the greeting's plugin and the RSA key of
    /// `caching_sha2_password`.
    #[serde(default)]
    pub auth: AuthConfig,
    /// Whether the file itself (not the files it names) holds secrets.
    #[serde(skip)]
    inline_secrets: bool,
}

/// A password authentication plugin Switchyard speaks with clients.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
pub enum AuthPlugin {
    /// `mysql_native_password`.
    #[default]
    #[serde(rename = "mysql_native_password")]
    Native,
    /// `caching_sha2_password` (MySQL 8/9 clients).
    #[serde(rename = "caching_sha2_password")]
    CachingSha2,
}

impl AuthPlugin {
    /// The plugin's name on the wire.
    pub fn name(self) -> &'static str {
        match self {
            Self::Native => crate::protocol::NATIVE_PASSWORD_PLUGIN,
            Self::CachingSha2 => crate::auth::caching_sha2::PLUGIN,
        }
    }

    /// The plugin called `name` on the wire, if Switchyard speaks it.
    pub fn from_name(name: &str) -> Option<Self> {
        [Self::Native, Self::CachingSha2]
            .into_iter()
            .find(|p| p.name() == name)
    }
}

/// The `[auth]` table.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AuthConfig {
    /// The plugin the greeting names and accounts use unless they name
    /// their own: `"mysql_native_password"` (default) or
    /// `"caching_sha2_password"`. A client that starts with another plugin
    /// is switched to its account's. Reloads.
    #[serde(default)]
    pub default_plugin: AuthPlugin,
    /// The RSA private key (PEM, PKCS#8 or PKCS#1; 2048 to 8192 bits)
    /// whose public half `caching_sha2_password` clients without TLS
    /// encrypt their password with. Default: a 2048-bit key generated when
    /// the process starts (clients that pinned the previous public key must
    /// fetch it again after a restart). Read again on reload. Refused if
    /// anyone may read it; a warning if its group may.
    #[serde(default)]
    pub rsa_private_key: Option<Spanned<PathBuf>>,
}

/// TLS towards clients.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TlsConfig {
    /// The certificate chain (PEM). Read again on reload.
    pub cert: Spanned<PathBuf>,
    /// Its private key (PEM). Refused if anyone may read it; a warning if
    /// its group may.
    pub key: Spanned<PathBuf>,
    /// Refuse plaintext logins of every user (ERR 1045). Per user:
    /// `require_tls` in `[[users]]`. Default false.
    #[serde(default)]
    pub require: bool,
}

/// The accounts, in either of the two shapes the file may give them.
#[derive(Debug, Clone)]
pub enum Users {
    /// `[[users]]`: accounts from the file only.
    List(Vec<UserConfig>),
    /// `[users]`: accounts from the file and, optionally, from a backend.
    Table(UsersTable),
}

impl Default for Users {
    fn default() -> Self {
        Self::List(Vec::new())
    }
}

impl<'de> Deserialize<'de> for Users {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        use serde::de::value::{MapAccessDeserializer, SeqAccessDeserializer};
        struct Shape;
        impl<'de> serde::de::Visitor<'de> for Shape {
            type Value = Users;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("an array of [[users]] tables or a [users] table")
            }
            fn visit_seq<A: serde::de::SeqAccess<'de>>(self, seq: A) -> Result<Users, A::Error> {
                Vec::<UserConfig>::deserialize(SeqAccessDeserializer::new(seq)).map(Users::List)
            }
            fn visit_map<A: serde::de::MapAccess<'de>>(self, map: A) -> Result<Users, A::Error> {
                UsersTable::deserialize(MapAccessDeserializer::new(map)).map(Users::Table)
            }
        }
        d.deserialize_any(Shape)
    }
}

impl Users {
    /// The accounts the file lists.
    pub fn accounts(&self) -> &[UserConfig] {
        match self {
            Self::List(v) => v,
            Self::Table(t) => &t.accounts,
        }
    }

    /// How accounts are loaded from a backend, if they are.
    pub fn from_backend(&self) -> Option<&UsersTable> {
        match self {
            Self::Table(t) if t.source == UserSource::Backend => Some(t),
            _ => None,
        }
    }
}

/// Where accounts come from besides the file.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum UserSource {
    /// The file only.
    #[default]
    Config,
    /// Also `mysql.user` on the primary (the file's accounts win).
    Backend,
}

/// The `[users]` table.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UsersTable {
    /// `"config"` (default) or `"backend"`.
    #[serde(default)]
    pub source: UserSource,
    /// The pool whose backend holds the accounts (the primary). Default:
    /// the pool with `role = "writer"`.
    #[serde(default)]
    pub pool: Option<Spanned<String>>,
    /// How often to read the accounts again, in milliseconds. Default 60000.
    #[serde(default = "default_users_refresh_ms")]
    pub refresh_ms: u64,
    /// A login by an unknown user has the accounts read again in the
    /// background (the login itself is refused as unknown; a retry after
    /// the read succeeds), but not more often than this, in milliseconds;
    /// at least 1000 whatever is set. Default 5000.
    #[serde(default = "default_users_min_refresh_ms")]
    pub min_refresh_ms: u64,
    /// The service account that reads them (needs `SELECT` on
    /// `mysql.global_priv` on MariaDB 10.4+, to see locked and expired
    /// accounts; with `SELECT` on `mysql.user` only, passwordless accounts
    /// are not loaded). Default: the `[monitor]` account.
    #[serde(default)]
    pub user: Option<String>,
    /// Its `SHA1(password)`, 40 hex digits (never printed).
    #[serde(default)]
    pub password_sha1: Option<Spanned<Secret<String>>>,
    /// A file holding `password_sha1` instead (surrounding whitespace
    /// ignored), read at start and on every reload. Refused if anyone may
    /// read it; a warning if its group may.
    #[serde(default)]
    pub password_sha1_file: Option<Spanned<PathBuf>>,
    /// Accounts from the file; they win over loaded ones.
    #[serde(default)]
    pub accounts: Vec<UserConfig>,
}

/// One more listening address.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ListenerConfig {
    /// The address.
    pub listen: Spanned<SocketAddr>,
    /// The `[policies.<name>]` its logins are routed by. Default: `[policy]`.
    #[serde(default)]
    pub policy: Option<Spanned<String>>,
    /// As the top-level `proxy_protocol`, for this address.
    #[serde(default)]
    pub proxy_protocol: bool,
    /// As the top-level `proxy_trusted`, for this address.
    #[serde(default)]
    pub proxy_trusted: Vec<Cidr>,
}

/// Background health checks.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HealthConfig {
    /// Time between two checks of a backend, in milliseconds. Default 1000.
    #[serde(default = "default_health_interval_ms")]
    pub interval_ms: u64,
    /// Time one check may take, in milliseconds. Default 1000.
    #[serde(default = "default_health_timeout_ms")]
    pub timeout_ms: u64,
    /// Consecutive failed checks that take a backend out. Default 3.
    #[serde(default = "default_fall")]
    pub fall: u32,
    /// Consecutive good checks that bring it back. Default 2.
    #[serde(default = "default_rise")]
    pub rise: u32,
}

impl Default for HealthConfig {
    fn default() -> Self {
        Self {
            interval_ms: default_health_interval_ms(),
            timeout_ms: default_health_timeout_ms(),
            fall: default_fall(),
            rise: default_rise(),
        }
    }
}

/// The monitor account.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MonitorConfig {
    /// Its user name. It needs no privilege on data; see the README for the
    /// grant (`REPLICATION CLIENT` / `SLAVE MONITOR` for the lag).
    pub user: String,
    /// `SHA1(password)` as 40 hex digits (`switchyard hash-password
    /// --sha1`): what `mysql_native_password` needs to log in, so the
    /// password itself is not stored. Treat it as a password (it is never
    /// printed). Either this or `password_sha1_file`.
    #[serde(default = "unset_secret")]
    pub password_sha1: Spanned<Secret<String>>,
    /// A file holding `password_sha1` instead (surrounding whitespace
    /// ignored; a Kubernetes Secret, say), read at start and on every
    /// reload. Refused if anyone may read it; a warning if its group may.
    #[serde(default)]
    pub password_sha1_file: Option<Spanned<PathBuf>>,
}

fn unset_secret() -> Spanned<Secret<String>> {
    Spanned::new(0..0, Secret::default())
}

/// Protection against password guessing.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ThrottleConfig {
    /// Failed logins (wrong user or password) from one client address
    /// within `window_ms` that get the address refused (0: never).
    /// Default 20.
    #[serde(default = "default_throttle_failures")]
    pub max_failures: u32,
    /// The window failures are counted in, in milliseconds. Default 60000.
    #[serde(default = "default_throttle_window_ms")]
    pub window_ms: u64,
    /// How long a refused address stays refused, in milliseconds.
    /// Default 60000.
    #[serde(default = "default_throttle_block_ms")]
    pub block_ms: u64,
    /// IPv6 clients are counted by this many leading bits of their
    /// address (one host commonly holds a whole /64); 128 counts each
    /// address alone. IPv4 addresses (and IPv4-mapped IPv6 ones) are
    /// counted alone. Default 64. Applies to `max_pending_logins` too.
    #[serde(default = "default_throttle_ipv6_prefix")]
    pub ipv6_prefix: u8,
    /// Connections from one client address (IPv6: prefix) that may be
    /// logging in at once, greeted and not yet logged in; more are
    /// refused with ERR 1040 before the greeting (0: no limit). A login
    /// that times out counts as a failed login. Default 64.
    #[serde(default = "default_throttle_max_pending_logins")]
    pub max_pending_logins: u32,
}

impl Default for ThrottleConfig {
    fn default() -> Self {
        Self {
            max_failures: default_throttle_failures(),
            window_ms: default_throttle_window_ms(),
            block_ms: default_throttle_block_ms(),
            ipv6_prefix: default_throttle_ipv6_prefix(),
            max_pending_logins: default_throttle_max_pending_logins(),
        }
    }
}

/// The admin HTTP endpoint.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AdminConfig {
    /// Where it listens. Default `127.0.0.1:9033`.
    #[serde(default = "default_admin_listen")]
    pub listen: Spanned<SocketAddr>,
    /// A file holding the bearer token every request must carry
    /// (`Authorization: Bearer <token>`); surrounding whitespace is ignored.
    /// Required unless `listen` is a loopback address. Refused if anyone
    /// may read it; a warning if its group may.
    #[serde(default)]
    pub token_file: Option<PathBuf>,
    /// The token itself, for a config file that is itself secret. At most
    /// one of `token` and `token_file`. Never printed.
    #[serde(default)]
    pub token: Option<Secret<String>>,
}

/// The fleet store.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FleetConfig {
    /// `redis://[[user]:password@]host[:port][/db]` (never printed with
    /// its password).
    pub store: Spanned<Secret<String>>,
    /// A file holding the store's password (surrounding whitespace
    /// ignored), for a `store` URL without one. Read at start. Refused if
    /// anyone may read it; a warning if its group may.
    #[serde(default)]
    pub password_file: Option<Spanned<PathBuf>>,
    /// The password read from `password_file`.
    #[serde(skip)]
    pub password: Option<Secret<String>>,
    /// This instance's name, unique in the fleet. Default: the host name
    /// and the process id (`<pod name>:1` in a container).
    #[serde(default)]
    pub instance: Option<String>,
    /// How long this instance's lease (its session counts, its policy
    /// digest) outlives its last renewal, in milliseconds; renewed every
    /// third of it. An instance that dies frees its users' slots this long
    /// after. Default 10000.
    #[serde(default = "default_fleet_lease_ms")]
    pub lease_ms: u64,
    /// Time one store command may take before the instance decides
    /// locally, in milliseconds. Default 250.
    #[serde(default = "default_fleet_timeout_ms")]
    pub timeout_ms: u64,
    /// Prepended to every key, so that fleets can share a server. Default
    /// `"switchyard:"`.
    #[serde(default = "default_fleet_key_prefix")]
    pub key_prefix: String,
}

impl FleetConfig {
    /// [`FleetConfig::instance`], or its default.
    pub fn instance_name(&self) -> String {
        self.instance.clone().unwrap_or_else(|| {
            let mut buf = [0u8; 256];
            // SAFETY: gethostname writes at most `buf.len()` bytes.
            let host = unsafe {
                if libc::gethostname(buf.as_mut_ptr().cast(), buf.len()) == 0 {
                    let end = buf.iter().position(|&b| b == 0).unwrap_or(buf.len());
                    String::from_utf8_lossy(&buf[..end]).into_owned()
                } else {
                    "switchyard".to_owned()
                }
            };
            format!("{host}:{}", std::process::id())
        })
    }
}

fn default_fleet_lease_ms() -> u64 {
    10_000
}
fn default_fleet_timeout_ms() -> u64 {
    250
}
fn default_fleet_key_prefix() -> String {
    "switchyard:".to_owned()
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
    /// Sessions this user may have at once; overrides
    /// `max_connections_per_user`. 0: no limit.
    #[serde(default)]
    pub max_connections: Option<u32>,
    /// Refuse this user's plaintext logins (ERR 1045). Default false.
    #[serde(default)]
    pub require_tls: bool,
    /// The plugin this user authenticates with (`"mysql_native_password"`
    /// or `"caching_sha2_password"`); a client that starts with another is
    /// switched to it. Default: `[auth] default_plugin`.
    #[serde(default)]
    pub plugin: Option<AuthPlugin>,
}

/// How a pool chooses a backend for a new session.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Balance {
    /// The backend with the fewest active sessions; ties go round-robin.
    #[default]
    LeastConnections,
    /// Each backend in turn.
    RoundRobin,
    /// Two backends at random, the one with fewer sessions (power of two
    /// choices).
    Random,
    /// In proportion to each backend's `weight` (smooth weighted
    /// round-robin).
    Weighted,
}

/// Which backends of a pool may take its sessions, by their `read_only`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Role {
    /// Any backend.
    #[default]
    Any,
    /// Only backends with `read_only = OFF`: the pool follows the
    /// topology's writer. Needs `[monitor]`.
    Writer,
    /// Only backends with `read_only = ON`. Needs `[monitor]`.
    Reader,
}

/// What a pool does when none of its backends qualifies.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum WhenAllDown {
    /// Use the least bad backend: lagging before failing, then by lag.
    #[default]
    LeastBad,
    /// Refuse the login (ERR 9102).
    Refuse,
}

/// One pool of interchangeable backends.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PoolConfig {
    /// Backends: `"ip:port"`, or `{ addr = "ip:port", weight = 1,
    /// max_connections = 0 }`. At least one, unless the pool splits.
    #[serde(default = "no_backends")]
    pub backends: Spanned<Vec<BackendConfig>>,
    /// A split pool: the pool its sessions send writes (and everything not
    /// known to be a harmless read) to. With `reader`, in place of
    /// `backends`.
    #[serde(default)]
    pub writer: Option<Spanned<String>>,
    /// A split pool: the pool its sessions send reads outside transactions
    /// to. With `writer`.
    #[serde(default)]
    pub reader: Option<Spanned<String>>,
    /// A split pool: a read that follows the session's own write goes to a
    /// reader only once that reader has applied the write (by GTID), else
    /// to the writer. Default true.
    #[serde(default = "default_true")]
    pub causal_reads: bool,
    /// A split pool with causal reads: when the monitor does not yet show
    /// a reader has the session's last write, wait up to this many
    /// milliseconds for it there (`MASTER_GTID_WAIT`) before the writer
    /// answers the read instead. Default 0: no wait.
    #[serde(default)]
    pub causal_wait_ms: u64,
    /// Client sessions hold no backend session while at rest (between
    /// statements, outside transactions, unpinned): each statement borrows
    /// an idle backend session of the same pool and user from this worker,
    /// given the session's state, and returns it. The backends'
    /// `max_connections` then caps the backend sessions. A split pool's
    /// sessions borrow in its writer and reader pools; a pool with backends
    /// of its own is then split between itself and itself (every
    /// statement may run on any of its backends). Default false.
    #[serde(default)]
    pub multiplex: bool,
    /// A multiplexed split pool: how long a statement waits for a backend
    /// session when every backend of the pool is at its `max_connections`,
    /// before the client gets ERR 9102. Default 2000.
    #[serde(default = "default_multiplex_wait_ms")]
    pub multiplex_wait_ms: u64,
    /// Balancing method. Default `least-connections`.
    #[serde(default)]
    pub balance: Balance,
    /// Which backends qualify by `read_only`. Default `any`.
    #[serde(default)]
    pub role: Role,
    /// Replicas lagging more than this many seconds (or whose replication
    /// is stopped) take no new sessions. Needs `[monitor]`. Default: no
    /// limit.
    #[serde(default)]
    pub max_lag: Option<u32>,
    /// When no backend qualifies. Default `least-bad`.
    #[serde(default)]
    pub when_all_down: WhenAllDown,
    /// TLS towards this pool's backends: `off`, `preferred` (when the
    /// backend offers it) or `required`. Independent of the client's TLS.
    /// Default `off`.
    #[serde(default)]
    pub tls: BackendTlsMode,
    /// CA certificates (PEM) that sign the backends' certificates. Default:
    /// none (then `tls_verify` must be false).
    #[serde(default)]
    pub tls_ca: Option<PathBuf>,
    /// Verify the backend's certificate against `tls_ca` and its IP
    /// address. Default true.
    #[serde(default = "default_true")]
    pub tls_verify: bool,
    /// Backend sessions kept open (per backend and worker thread) after
    /// their clients quit, for later logins to take over with
    /// COM_CHANGE_USER (the backend authenticates the new user and resets
    /// the session) instead of a new connection and login. Default 0: off.
    /// Reloads.
    #[serde(default)]
    pub idle_sessions: u32,
    /// Milliseconds a kept backend session waits for a login before it is
    /// closed; keep it under the backend's `wait_timeout`. Default 30000.
    /// Reloads.
    #[serde(default = "default_idle_session_ms")]
    pub idle_session_ms: u64,
}

fn no_backends() -> Spanned<Vec<BackendConfig>> {
    Spanned::new(0..0, Vec::new())
}

impl PoolConfig {
    /// The writer and reader pools' names, if this pool splits.
    pub fn split(&self) -> Option<(&str, &str)> {
        Some((
            self.writer.as_ref()?.get_ref(),
            self.reader.as_ref()?.get_ref(),
        ))
    }
}

fn default_statement_text_max() -> usize {
    1024
}

fn default_multiplex_wait_ms() -> u64 {
    2_000
}

fn default_idle_session_ms() -> u64 {
    30_000
}

/// TLS towards a pool's backends.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum BackendTlsMode {
    /// Plain TCP.
    #[default]
    Off,
    /// TLS when the backend offers it.
    Preferred,
    /// TLS, or the backend is not used.
    Required,
}

/// One backend of a pool.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(untagged)]
pub enum BackendConfig {
    /// Just the address.
    Addr(SocketAddr),
    /// The address with options.
    Full(BackendOptions),
}

/// A backend's options.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BackendOptions {
    /// `ip:port`.
    pub addr: SocketAddr,
    /// Share of sessions under `balance = "weighted"`. Default 1.
    #[serde(default = "default_weight")]
    pub weight: u32,
    /// Sessions this backend takes from the pool at most (0: no limit).
    /// Default 0.
    #[serde(default)]
    pub max_connections: u32,
}

impl BackendConfig {
    /// The backend's address.
    pub fn addr(&self) -> SocketAddr {
        match self {
            Self::Addr(a) => *a,
            Self::Full(o) => o.addr,
        }
    }

    /// Its weight.
    pub fn weight(&self) -> u32 {
        match self {
            Self::Addr(_) => 1,
            Self::Full(o) => o.weight,
        }
    }

    /// Its session limit (0: none).
    pub fn max_connections(&self) -> u32 {
        match self {
            Self::Addr(_) => 0,
            Self::Full(o) => o.max_connections,
        }
    }
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
    /// What a trap, timeout or bad answer of the policy does to that login:
    /// `"refuse"` (ERR 9101) or `"pool:<name>"` (route it there). Default
    /// `"refuse"`.
    #[serde(default = "default_on_error")]
    pub on_error: Spanned<String>,
    /// Watch `module` and swap in a new version when the file changes.
    /// Default true.
    #[serde(default = "default_true")]
    pub watch: bool,
    /// Where compiled policies are cached (keyed by the module's SHA-256
    /// and the engine's compatibility hash); `""` turns the cache off.
    /// Default: systemd's `$CACHE_DIRECTORY`, else
    /// `$XDG_CACHE_HOME/switchyard`, else `~/.cache/switchyard`.
    #[serde(default)]
    pub cache_dir: Option<PathBuf>,
    /// Cases a new policy must pass before it is used (at start, reload or
    /// swap).
    #[serde(default)]
    pub selftest: Vec<SelfTest>,
    /// `"fresh"`: a new instance per call (full isolation between logins);
    /// `"reuse"`: a small pool of instances, each used for up to
    /// `reuse_calls` calls and dropped after any trap (for guests whose
    /// runtime is slow to start: Python, JavaScript, Go); `"auto"`: reuse
    /// when one instantiation takes over 250 µs or an instance starts with
    /// over 1 MiB of linear memory. Default `"auto"`.
    #[serde(default)]
    pub instances: Instances,
    /// Calls one reused instance serves before it is replaced. Default 1000.
    #[serde(default = "default_reuse_calls")]
    pub reuse_calls: u32,
    /// How much of a statement's text (bytes) a policy's `route-statement`
    /// gets. Default 1024.
    #[serde(default = "default_statement_text_max")]
    pub statement_text_max: usize,
}

/// How policy instances are used.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Instances {
    /// Decide by the cost of an instantiation.
    #[default]
    Auto,
    /// A fresh instance per call.
    Fresh,
    /// Reused instances.
    Reuse,
}

/// One self-test case of a policy.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SelfTest {
    /// The user logging in.
    pub user: String,
    /// The database given at login, if any.
    #[serde(default)]
    pub db: Option<String>,
    /// The client's address. Default `127.0.0.1:40000`.
    #[serde(default = "default_selftest_client")]
    pub client: String,
    /// `"pool:<name>"` or `"refuse"`.
    pub expect: String,
}

impl PolicyConfig {
    /// The compile cache directory, if the cache is on.
    pub fn cache_dir(&self) -> Option<PathBuf> {
        match &self.cache_dir {
            Some(d) if d.as_os_str().is_empty() => None,
            Some(d) => Some(d.clone()),
            None => std::env::var("CACHE_DIRECTORY")
                .ok()
                .and_then(|v| {
                    v.split(':')
                        .next()
                        .filter(|d| !d.is_empty())
                        .map(PathBuf::from)
                })
                .or_else(|| {
                    std::env::var_os("XDG_CACHE_HOME")
                        .filter(|v| !v.is_empty())
                        .map(PathBuf::from)
                        .or_else(|| {
                            std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache"))
                        })
                        .map(|d| d.join("switchyard"))
                }),
        }
    }

    /// The pool a failed policy call routes to, if `on_error` names one.
    pub fn on_error_pool(&self) -> Option<&str> {
        self.on_error.get_ref().strip_prefix("pool:")
    }
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
fn default_query_timeout_ms() -> u64 {
    36_000_000
}

fn default_shutdown_timeout_ms() -> u64 {
    30_000
}
fn default_health_interval_ms() -> u64 {
    1_000
}
fn default_health_timeout_ms() -> u64 {
    1_000
}
fn default_fall() -> u32 {
    3
}
fn default_rise() -> u32 {
    2
}
fn default_throttle_failures() -> u32 {
    20
}
fn default_throttle_window_ms() -> u64 {
    60_000
}
fn default_throttle_block_ms() -> u64 {
    60_000
}
fn default_throttle_ipv6_prefix() -> u8 {
    64
}
fn default_throttle_max_pending_logins() -> u32 {
    64
}
fn default_admin_listen() -> Spanned<SocketAddr> {
    Spanned::new(0..0, SocketAddr::from(([127, 0, 0, 1], 9033)))
}
fn default_users_refresh_ms() -> u64 {
    60_000
}
fn default_users_min_refresh_ms() -> u64 {
    5_000
}
fn default_reuse_calls() -> u32 {
    1000
}
fn default_on_error() -> Spanned<String> {
    Spanned::new(0..0, "refuse".into())
}
fn default_true() -> bool {
    true
}
fn default_selftest_client() -> String {
    "127.0.0.1:40000".into()
}
fn default_weight() -> u32 {
    1
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
    /// Reads, parses and validates the file at `path`, and the files it
    /// names for its secrets.
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Io {
            path: path.to_owned(),
            source,
        })?;
        let config = Self::parse(&text, path)?;
        if config.holds_secrets() {
            crate::secret::warn_if_exposed(path, "the configuration file");
        }
        Ok(config)
    }

    /// Whether the file itself holds secrets: password hashes, a service
    /// account's `SHA1(password)`, the admin token, the store's password
    /// (not counting those it reads from files of their own).
    pub fn holds_secrets(&self) -> bool {
        self.inline_secrets
    }

    fn inline_secrets(&self) -> bool {
        let service = matches!(&self.users, Users::Table(t) if t.password_sha1.is_some());
        self.users
            .accounts()
            .iter()
            .any(|u| u.password_hash != PasswordHash::Empty)
            || self
                .monitor
                .as_ref()
                .is_some_and(|m| !m.password_sha1.get_ref().is_empty())
            || service
            || self.admin.as_ref().is_some_and(|a| a.token.is_some())
            || self
                .fleet
                .as_ref()
                .is_some_and(|f| f.store.get_ref().contains('@'))
    }

    /// Parses and validates `text`, reading the files it names for its
    /// secrets; `path` is used in error messages.
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
        let mut config: Config =
            toml::from_str(text).map_err(|e| invalid(e.span(), e.message().trim().to_owned()))?;
        config.inline_secrets = config.inline_secrets();
        // The file's own accounts, before `users_file` adds its own (which
        // are checked against these as they are read).
        config
            .validate_users()
            .map_err(|(span, message)| invalid(span, message))?;
        config
            .read_secret_files()
            .map_err(|e| e.into_config_error(&invalid))?;
        config
            .validate()
            .map_err(|(span, message)| invalid(span, message))?;
        Ok(config)
    }

    fn validate(&self) -> Result<(), (Option<std::ops::Range<usize>>, String)> {
        if self.throttle.ipv6_prefix > 128 {
            return Err((None, "[throttle] ipv6_prefix must be at most 128".into()));
        }
        self.validate_pools()?;
        self.validate_backend_users()?;
        for policy in std::iter::once(&self.policy).chain(self.policies.values()) {
            self.validate_policy(policy)?;
        }
        self.validate_listeners()?;
        self.validate_fleet()?;
        self.validate_monitor()?;
        let h = &self.health;
        if h.interval_ms == 0 || h.timeout_ms == 0 || h.fall == 0 || h.rise == 0 {
            return Err((
                None,
                "[health] interval_ms, timeout_ms, fall and rise must be at least 1".into(),
            ));
        }
        self.validate_admin()?;
        if self.max_connections == 0 {
            return Err((None, "max_connections must be at least 1".into()));
        }
        Ok(())
    }

    /// `[[users]]`: names present and unique, `[tls]` configured when a
    /// user requires TLS.
    fn validate_users(&self) -> Result<(), (Option<std::ops::Range<usize>>, String)> {
        check_accounts(
            self.users.accounts(),
            &mut HashSet::new(),
            self.tls.is_some(),
        )
        .map_err(|(span, message)| (Some(span), message))
    }

    /// `[pools]`: at least one, each valid.
    fn validate_pools(&self) -> Result<(), (Option<std::ops::Range<usize>>, String)> {
        if self.pools.is_empty() {
            return Err((None, "at least one pool must be configured".into()));
        }
        for (name, pool) in &self.pools {
            self.validate_pool(name, pool)?;
        }
        Ok(())
    }

    /// One pool: backends listed once with a weight, TLS verification
    /// with a CA, `role`/`max_lag` with a monitor.
    fn validate_pool(
        &self,
        name: &str,
        pool: &PoolConfig,
    ) -> Result<(), (Option<std::ops::Range<usize>>, String)> {
        if pool.writer.is_some() || pool.reader.is_some() {
            return self.validate_split_pool(name, pool);
        }
        let span = Some(pool.backends.span());
        if pool.backends.get_ref().is_empty() {
            return Err((span, format!("pool '{name}' has no backends")));
        }

        let mut addrs = HashSet::new();
        for b in pool.backends.get_ref() {
            if !addrs.insert(b.addr()) {
                return Err((
                    span,
                    format!("pool '{name}' lists backend {} twice", b.addr()),
                ));
            }
            if b.weight() == 0 {
                return Err((
                    span,
                    format!("pool '{name}': backend {} has weight 0", b.addr()),
                ));
            }
        }
        if pool.tls != BackendTlsMode::Off && pool.tls_verify && pool.tls_ca.is_none() {
            return Err((
                span,
                format!("pool '{name}': tls_verify needs tls_ca (or set tls_verify = false)"),
            ));
        }
        if self.monitor.is_none() && (pool.role != Role::Any || pool.max_lag.is_some()) {
            return Err((
                span,
                format!("pool '{name}' uses `role` or `max_lag`, which need a [monitor] account"),
            ));
        }
        Ok(())
    }

    /// A split pool: a writer and a reader that are pools with backends,
    /// and nothing of its own to balance.
    fn validate_split_pool(
        &self,
        name: &str,
        pool: &PoolConfig,
    ) -> Result<(), (Option<std::ops::Range<usize>>, String)> {
        let (Some(writer), Some(reader)) = (&pool.writer, &pool.reader) else {
            let span = pool
                .writer
                .as_ref()
                .or(pool.reader.as_ref())
                .map(|s| s.span());
            return Err((
                span,
                format!("split pool '{name}' needs both `writer` and `reader`"),
            ));
        };
        if !pool.backends.get_ref().is_empty() {
            return Err((
                Some(pool.backends.span()),
                format!("split pool '{name}' takes `writer` and `reader`, not `backends`"),
            ));
        }
        for side in [writer, reader] {
            match self.pools.get(side.get_ref()) {
                None => {
                    return Err((
                        Some(side.span()),
                        format!("split pool '{name}': no pool '{}'", side.get_ref()),
                    ));
                }
                Some(p) if p.split().is_some() || p.writer.is_some() || p.reader.is_some() => {
                    return Err((
                        Some(side.span()),
                        format!(
                            "split pool '{name}': '{}' is a split pool itself",
                            side.get_ref()
                        ),
                    ));
                }
                Some(_) => {}
            }
        }
        Ok(())
    }

    /// `users.source = "backend"`: a pool to read the users from, and an
    /// account to read them with.
    fn validate_backend_users(&self) -> Result<(), (Option<std::ops::Range<usize>>, String)> {
        if let Some(t) = self.users.from_backend() {
            let pool = t.pool.as_ref().map(|p| p.get_ref().as_str()).or_else(|| {
                self.pools
                    .iter()
                    .find(|(_, p)| p.role == Role::Writer)
                    .map(|(n, _)| n.as_str())
            });
            match pool {
                Some(p) if self.pools.get(p).is_some_and(|p| p.split().is_none()) => {}
                Some(p) if self.pools.contains_key(p) => {
                    return Err((
                        t.pool.as_ref().map(|s| s.span()),
                        format!("users.pool '{p}' is a split pool: name its writer"),
                    ));
                }
                Some(p) => {
                    return Err((
                        t.pool.as_ref().map(|s| s.span()),
                        format!("users.pool '{p}' is not configured"),
                    ));
                }
                None => {
                    return Err((
                        None,
                        "users.source = \"backend\" needs users.pool (or a pool with role = \"writer\")"
                            .into(),
                    ));
                }
            }
            match (&t.user, &t.password_sha1, &self.monitor) {
                (Some(_), Some(hex), _) => {
                    let h = hex.get_ref();
                    if h.len() != 40 || !h.bytes().all(|b| b.is_ascii_hexdigit()) {
                        return Err((
                            Some(hex.span()),
                            "users.password_sha1 must be 40 hex digits".into(),
                        ));
                    }
                }
                (None, None, Some(_)) => {}
                _ => {
                    return Err((
                        None,
                        "users.source = \"backend\" needs users.user and users.password_sha1, or a [monitor] account"
                            .into(),
                    ));
                }
            }
        }
        Ok(())
    }

    /// `[fleet]`: a store URL, a lease long enough to renew.
    fn validate_fleet(&self) -> Result<(), (Option<std::ops::Range<usize>>, String)> {
        let Some(f) = &self.fleet else {
            return Ok(());
        };
        crate::fleet::check_url(f.store.get_ref().expose())
            .map_err(|e| (Some(f.store.span()), format!("[fleet] store: {e}")))?;
        if f.lease_ms < 300 || f.timeout_ms == 0 || f.timeout_ms * 3 > f.lease_ms {
            return Err((
                None,
                "[fleet] lease_ms must be at least 300 and three times timeout_ms (> 0)".to_owned(),
            ));
        }
        if f.instance
            .as_ref()
            .is_some_and(|i| i.is_empty() || i.len() > 200)
        {
            return Err((
                None,
                "[fleet] instance must be 1 to 200 characters".to_owned(),
            ));
        }
        Ok(())
    }

    /// `[[listeners]]`: addresses listened on once, policies that exist.
    fn validate_listeners(&self) -> Result<(), (Option<std::ops::Range<usize>>, String)> {
        let mut addrs = HashSet::from([self.listen]);
        if self.proxy_protocol && self.proxy_trusted.is_empty() {
            return Err((
                None,
                "proxy_protocol needs proxy_trusted: the balancers' addresses".to_owned(),
            ));
        }
        for l in &self.listeners {
            if l.proxy_protocol && l.proxy_trusted.is_empty() {
                return Err((
                    Some(l.listen.span()),
                    format!(
                        "listener {}: proxy_protocol needs proxy_trusted: the balancers' addresses",
                        l.listen.get_ref()
                    ),
                ));
            }
            if !addrs.insert(*l.listen.get_ref()) {
                return Err((
                    Some(l.listen.span()),
                    format!("{} is listened on twice", l.listen.get_ref()),
                ));
            }
            if let Some(name) = &l.policy
                && !self.policies.contains_key(name.get_ref())
            {
                return Err((
                    Some(name.span()),
                    format!(
                        "listener policy '{}' is not a [policies.<name>] table",
                        name.get_ref()
                    ),
                ));
            }
        }
        Ok(())
    }

    /// `[monitor]`: its password hash.
    fn validate_monitor(&self) -> Result<(), (Option<std::ops::Range<usize>>, String)> {
        if let Some(m) = &self.monitor {
            let hex = m.password_sha1.get_ref();
            if hex.len() != 40 || !hex.bytes().all(|b| b.is_ascii_hexdigit()) {
                return Err((
                    Some(m.password_sha1.span()),
                    "monitor password_sha1 must be 40 hex digits (`switchyard hash-password --sha1`)"
                        .into(),
                ));
            }
        }
        Ok(())
    }

    /// `[admin]`: one token source, and one at all off loopback.
    fn validate_admin(&self) -> Result<(), (Option<std::ops::Range<usize>>, String)> {
        if let Some(admin) = &self.admin {
            let span = Some(admin.listen.span());
            if admin.token.is_some() && admin.token_file.is_some() {
                return Err((
                    span,
                    "[admin] takes `token` or `token_file`, not both".into(),
                ));
            }
            if admin.token.is_none()
                && admin.token_file.is_none()
                && !admin.listen.get_ref().ip().is_loopback()
            {
                return Err((
                    span,
                    "[admin] on a non-loopback address needs `token` or `token_file`".into(),
                ));
            }
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

    fn validate_policy(
        &self,
        policy: &PolicyConfig,
    ) -> Result<(), (Option<std::ops::Range<usize>>, String)> {
        let on_error = &policy.on_error;
        match policy.on_error_pool() {
            Some(pool) if !self.pools.contains_key(pool) => {
                return Err((
                    Some(on_error.span()),
                    format!("on_error names pool '{pool}', which is not configured"),
                ));
            }
            Some(_) => {}
            None if on_error.get_ref() == "refuse" => {}
            None => {
                return Err((
                    Some(on_error.span()),
                    "on_error must be \"refuse\" or \"pool:<name>\"".into(),
                ));
            }
        }
        for case in &policy.selftest {
            if case.expect != "refuse" && !case.expect.starts_with("pool:") {
                return Err((
                    Some(policy.module.span()),
                    format!(
                        "selftest for user '{}': expect must be \"refuse\" or \"pool:<name>\"",
                        case.user
                    ),
                ));
            }
        }
        if policy.timeout_ms == 0 || policy.max_concurrent_calls == 0 {
            return Err((
                Some(policy.module.span()),
                "policy timeout_ms and max_concurrent_calls must be at least 1".into(),
            ));
        }
        Ok(())
    }

    /// The configuration of the policy called `name` (`None`: `[policy]`).
    pub fn policy_config(&self, name: Option<&str>) -> &PolicyConfig {
        name.and_then(|n| self.policies.get(n))
            .unwrap_or(&self.policy)
    }

    /// Every address to listen on, with the name of its policy.
    pub fn listen_addrs(&self) -> Vec<(SocketAddr, Option<String>)> {
        std::iter::once((self.listen, None))
            .chain(self.listeners.iter().map(|l| {
                (
                    *l.listen.get_ref(),
                    l.policy.as_ref().map(|p| p.get_ref().clone()),
                )
            }))
            .collect()
    }

    /// The sources trusted to send a PROXY protocol header to `addr`, if
    /// that listener expects one.
    pub fn proxy_trusted(&self, addr: SocketAddr) -> Option<&[Cidr]> {
        if addr == self.listen {
            return self.proxy_protocol.then_some(&self.proxy_trusted[..]);
        }
        self.listeners
            .iter()
            .find(|l| *l.listen.get_ref() == addr)
            .and_then(|l| l.proxy_protocol.then_some(&l.proxy_trusted[..]))
    }

    /// Whether `user` must log in over TLS.
    pub fn requires_tls(&self, user: &str) -> bool {
        self.tls.as_ref().is_some_and(|t| t.require)
            || self
                .users
                .accounts()
                .iter()
                .any(|u| u.name.get_ref() == user && u.require_tls)
    }

    /// The plugin `user` must authenticate with, if the file says.
    pub fn user_plugin(&self, user: &str) -> Option<AuthPlugin> {
        self.users
            .accounts()
            .iter()
            .find(|u| u.name.get_ref() == user)
            .and_then(|u| u.plugin)
    }

    /// Whether any client may be asked for `caching_sha2_password`.
    pub fn uses_caching_sha2(&self) -> bool {
        self.auth.default_plugin == AuthPlugin::CachingSha2
            || self
                .users
                .accounts()
                .iter()
                .any(|u| u.plugin == Some(AuthPlugin::CachingSha2))
    }

    /// The session limit of `user`, if any.
    pub fn user_limit(&self, user: &str) -> Option<u32> {
        let own = self
            .users
            .accounts()
            .iter()
            .find(|u| u.name.get_ref() == user)
            .and_then(|u| u.max_connections);
        match own.unwrap_or(self.max_connections_per_user) {
            0 => None,
            n => Some(n),
        }
    }

    /// [`Config::connect_timeout_ms`] as a duration.
    pub fn connect_timeout(&self) -> Duration {
        Duration::from_millis(self.connect_timeout_ms)
    }
}

/// `accounts` (of one file): names present and not in `names` already
/// (each is added), TLS configured (`tls`) when one requires it; the span
/// and message of the first that is not.
fn check_accounts<'a>(
    accounts: &'a [UserConfig],
    names: &mut HashSet<&'a str>,
    tls: bool,
) -> Result<(), (std::ops::Range<usize>, String)> {
    if !tls && let Some(u) = accounts.iter().find(|u| u.require_tls) {
        return Err((
            u.name.span(),
            format!(
                "user '{}' requires TLS, but no [tls] is configured",
                u.name.get_ref()
            ),
        ));
    }
    for user in accounts {
        if user.name.get_ref().is_empty() {
            return Err((user.name.span(), "user name is empty".into()));
        }
        if !names.insert(user.name.get_ref()) {
            return Err((
                user.name.span(),
                format!("user '{}' is defined twice", user.name.get_ref()),
            ));
        }
    }
    Ok(())
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
    fn a_split_pool_names_two_pools_with_backends() {
        let split = format!("{EXAMPLE}[pools.app]\nwriter = \"master\"\nreader = \"replicas\"\n");
        let c = parse(&split).unwrap();
        assert_eq!(c.pools["app"].split(), Some(("master", "replicas")));
        assert!(c.pools["app"].causal_reads);
        assert!(!c.pools["app"].multiplex);
        assert_eq!(c.pools["master"].split(), None);
        let multiplexed = parse(&format!(
            "{split}multiplex = true\nmultiplex_wait_ms = 250\n"
        ))
        .unwrap();
        assert!(multiplexed.pools["app"].multiplex);
        assert_eq!(multiplexed.pools["app"].multiplex_wait_ms, 250);
        let plain = parse(&format!(
            "{EXAMPLE}[pools.more]\nbackends = [\"127.0.0.1:2\"]\nmultiplex = true\n"
        ))
        .unwrap();
        assert!(plain.pools["more"].multiplex);
        for (extra, says) in [
            ("[pools.app]\nwriter = \"master\"\n", "needs both"),
            (
                "[pools.app]\nwriter = \"master\"\nreader = \"nope\"\n",
                "no pool 'nope'",
            ),
            (
                "[pools.app]\nwriter = \"master\"\nreader = \"replicas\"\nbackends = [\"127.0.0.1:1\"]\n",
                "not `backends`",
            ),
            (
                "[pools.app]\nwriter = \"master\"\nreader = \"replicas\"\n[pools.b]\nwriter = \"app\"\nreader = \"replicas\"\n",
                "split pool itself",
            ),
        ] {
            let err = parse(&format!("{EXAMPLE}{extra}")).unwrap_err().to_string();
            assert!(err.contains(says), "{extra}: {err}");
        }
    }

    #[test]
    fn parses_the_issue_example_with_defaults() {
        let c = parse(EXAMPLE).unwrap();
        assert_eq!(c.listen.to_string(), "127.0.0.1:6033");
        assert_eq!(c.users.accounts().len(), 1);
        assert_eq!(c.pools["replicas"].backends.get_ref().len(), 2);
        assert_eq!(c.policy.settings["user.mysqlslave"], "replicas");
        assert_eq!(c.max_connections, 4096);
        assert_eq!(c.policy.timeout_ms, 50);
        assert_eq!((c.idle_timeout_ms, c.query_timeout_ms), (0, 36_000_000));
    }

    #[test]
    fn pool_settings_serialize_as_they_are_written() {
        let text = EXAMPLE.replace(
            "balance = \"least-connections\"",
            "balance = \"round-robin\"\nwhen_all_down = \"refuse\"",
        );
        let c = parse(&text).unwrap();
        let p = &c.pools["replicas"];
        let written = serde_json::json!([p.balance, Role::Reader, p.when_all_down]);
        assert_eq!(
            written,
            serde_json::json!(["round-robin", "reader", "refuse"])
        );
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

    #[test]
    fn operating_keys_parse_and_validate() {
        let text = format!(
            "{EXAMPLE}\n[monitor]\nuser = \"monitor\"\npassword_sha1 = \"{}\"\n[admin]\n[throttle]\nmax_failures = 3\n",
            "AB".repeat(20)
        )
        .replace(
            r#"backends = ["127.0.0.1:13307", "127.0.0.1:13308"]"#,
            r#"backends = ["127.0.0.1:13307", { addr = "127.0.0.1:13308", weight = 3, max_connections = 10 }]
role = "reader"
max_lag = 10
when_all_down = "refuse""#,
        );
        let c = parse(&text).unwrap();
        let r = &c.pools["replicas"];
        assert_eq!(r.role, Role::Reader);
        assert_eq!(r.max_lag, Some(10));
        assert_eq!(r.when_all_down, WhenAllDown::Refuse);
        let b = &r.backends.get_ref()[1];
        assert_eq!((b.weight(), b.max_connections()), (3, 10));
        assert_eq!(r.backends.get_ref()[0].weight(), 1);
        assert_eq!(c.admin.unwrap().listen.get_ref().port(), 9033);
        assert_eq!(c.throttle.max_failures, 3);
        assert_eq!(c.throttle.window_ms, 60_000);
        assert_eq!(c.health.fall, 3);

        // A role without a monitor account is refused, at the pool.
        let e = parse(&EXAMPLE.replace(r#"balance = "least-connections""#, "role = \"writer\""))
            .unwrap_err()
            .to_string();
        assert!(
            e.starts_with("sy.toml:9:") && e.contains("[monitor]"),
            "{e}"
        );
        let e = parse(&text.replace(&"AB".repeat(20), "xyz"))
            .unwrap_err()
            .to_string();
        assert!(e.contains("40 hex digits"), "{e}");
        let e = parse(&text.replace("[admin]\n", "[admin]\nlisten = \"0.0.0.0:9033\"\n"))
            .unwrap_err()
            .to_string();
        assert!(e.contains("needs `token`"), "{e}");
        let e = parse(&EXAMPLE.replace("\"127.0.0.1:13308\"", "\"127.0.0.1:13307\""))
            .unwrap_err()
            .to_string();
        assert!(e.contains("twice"), "{e}");
    }

    #[test]
    fn proxy_protocol_needs_trusted_sources_per_listener() {
        let on = |top: &str, listener: &str| {
            parse(&format!(
                "{top}\n{EXAMPLE}\n[[listeners]]\nlisten = \"127.0.0.1:7000\"\n{listener}\n"
            ))
        };
        let e = on("proxy_protocol = true", "").unwrap_err().to_string();
        assert!(e.contains("needs proxy_trusted"), "{e}");
        let e = on("", "proxy_protocol = true").unwrap_err().to_string();
        assert!(
            e.contains("127.0.0.1:7000") && e.contains("proxy_trusted"),
            "{e}"
        );
        let e = on(
            "proxy_protocol = true\nproxy_trusted = [\"10.0.0.0/33\"]",
            "",
        )
        .unwrap_err()
        .to_string();
        assert!(e.contains("10.0.0.0/33"), "{e}");
        let c = on(
            "proxy_protocol = true\nproxy_trusted = [\"10.0.0.0/8\"]",
            "proxy_protocol = true\nproxy_trusted = [\"192.0.2.7\"]",
        )
        .unwrap();
        let main = c.proxy_trusted(c.listen).unwrap();
        assert!(main[0].contains("10.1.2.3".parse().unwrap()));
        let second = c.proxy_trusted("127.0.0.1:7000".parse().unwrap()).unwrap();
        assert!(!second[0].contains("10.1.2.3".parse().unwrap()));
        assert!(parse(EXAMPLE).unwrap().proxy_trusted(c.listen).is_none());
    }

    #[test]
    fn auth_plugins_default_and_per_user() {
        let c = parse(EXAMPLE).unwrap();
        assert_eq!(c.auth.default_plugin, AuthPlugin::Native);
        assert!(!c.uses_caching_sha2());
        assert_eq!(c.user_plugin("mysqlmaster"), None);
        let text = format!(
            "{EXAMPLE}\n[auth]\ndefault_plugin = \"caching_sha2_password\"\n\
             [[users]]\nname = \"old\"\npassword_hash = \"\"\nplugin = \"mysql_native_password\"\n"
        );
        let c = parse(&text).unwrap();
        assert_eq!(c.auth.default_plugin, AuthPlugin::CachingSha2);
        assert!(c.uses_caching_sha2());
        assert_eq!(c.user_plugin("old"), Some(AuthPlugin::Native));
        assert_eq!(
            AuthPlugin::from_name("caching_sha2_password"),
            Some(AuthPlugin::CachingSha2)
        );
        assert_eq!(AuthPlugin::from_name("sha256_password"), None);
        let bad = format!("{EXAMPLE}\n[auth]\ndefault_plugin = \"sha256_password\"\n");
        let e = parse(&bad).unwrap_err().to_string();
        assert!(e.contains("sha256_password"), "{e}");
    }

    #[test]
    fn user_limits_fall_back_to_the_global_one() {
        let text = EXAMPLE.replace(
            "listen = \"127.0.0.1:6033\"",
            "listen = \"127.0.0.1:6033\"\nmax_connections_per_user = 5",
        );
        let text = format!(
            "{text}\n[[users]]\nname = \"capped\"\npassword_hash = \"\"\nmax_connections = 1\n"
        );
        let c = parse(&text).unwrap();
        assert_eq!(c.user_limit("mysqlmaster"), Some(5));
        assert_eq!(c.user_limit("capped"), Some(1));
        assert_eq!(parse(EXAMPLE).unwrap().user_limit("mysqlmaster"), None);
    }

    #[test]
    fn debug_output_shows_no_secret() {
        let (token, sha1, svc) = ("tok-SECRET-123", "AB".repeat(20), "CD".repeat(20));
        let hash = "9C01670BF00D3764A16EF8B0611F8FC02173FC31";
        let text = format!(
            "{EXAMPLE}\n[monitor]\nuser = \"monitor\"\npassword_sha1 = \"{sha1}\"\n\
             [admin]\ntoken = \"{token}\"\n"
        );
        let c = parse(&text).unwrap();
        assert_eq!(
            c.admin.as_ref().unwrap().token.as_ref().unwrap().expose(),
            token
        );
        let debug = format!("{c:?}");
        for secret in [token, &sha1, hash] {
            assert!(!debug.contains(secret), "{secret} in {debug}");
        }
        assert!(debug.contains("Secret(..)") && debug.contains("PasswordHash(..)"));
        // The `[users]` table's service account too.
        let text = EXAMPLE.replace(
            "[[users]]\n",
            &format!(
                "[users]\nsource = \"backend\"\npool = \"master\"\nuser = \"svc\"\n\
                 password_sha1 = \"{svc}\"\n[[users.accounts]]\n"
            ),
        );
        let c = parse(&text).unwrap();
        assert!(c.users.from_backend().is_some());
        let debug = format!("{c:?}");
        assert!(!debug.contains(&svc) && !debug.contains(hash), "{debug}");
    }

    #[test]
    fn a_config_file_with_secrets_others_can_read_gets_one_warning() {
        use std::os::unix::fs::PermissionsExt;
        #[derive(Clone, Default)]
        struct Lines(std::sync::Arc<std::sync::Mutex<Vec<u8>>>);
        impl std::io::Write for Lines {
            fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
                self.0.lock().unwrap().extend_from_slice(b);
                Ok(b.len())
            }
            fn flush(&mut self) -> std::io::Result<()> {
                Ok(())
            }
        }
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("switchyard.toml");
        let load = |text: &str, mode: u32| -> String {
            std::fs::write(&path, text).unwrap();
            std::fs::set_permissions(&path, std::fs::Permissions::from_mode(mode)).unwrap();
            let lines = Lines::default();
            let sink = lines.clone();
            let subscriber = tracing_subscriber::fmt()
                .with_writer(move || sink.clone())
                .with_ansi(false)
                .finish();
            tracing::subscriber::with_default(subscriber, || Config::load(&path).unwrap());
            String::from_utf8(lines.0.lock().unwrap().clone()).unwrap()
        };
        let logged = load(EXAMPLE, 0o644);
        assert_eq!(logged.lines().count(), 1, "{logged}");
        assert!(
            logged.contains("holds secrets") && logged.contains("0644"),
            "{logged}"
        );
        assert_eq!(load(EXAMPLE, 0o600), "");
        // No hash, no token, no service account: nothing to protect.
        let no_secrets = EXAMPLE.replace("*9C01670BF00D3764A16EF8B0611F8FC02173FC31", "");
        assert_eq!(load(&no_secrets, 0o644), "");
    }

    #[test]
    fn the_shipped_example_parses() {
        let text = include_str!("../../examples/switchyard.toml");
        let c = parse(text).unwrap();
        assert!(c.admin.is_some());
        assert_eq!(c.pools.len(), 3);
        assert_eq!(c.pools["app"].split(), Some(("master", "replicas")));
        assert_eq!(c.monitor.as_ref().map(|m| m.user.as_str()), Some("monitor"));
    }
}
