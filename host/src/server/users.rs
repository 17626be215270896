//! Accounts loaded from the primary (`[users] source = "backend"`): user
//! names, host patterns and `mysql_native_password` hashes read from
//! `mysql.global_priv` (else `mysql.user`) through a service account,
//! refreshed periodically and, rate-limited, in the background when an
//! unknown user tries to log in. Accounts in the file win over these.
//!
//! As the server would, a login is checked against the most specific row
//! of its user whose host matches the client's address (not Switchyard's,
//! which is what the backend sees); locked accounts, roles and expired
//! passwords are not loaded.

use std::collections::HashMap;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use arc_swap::ArcSwap;
use tracing::{info, warn};

use super::State;
use crate::auth::{PasswordHash, Sha1Password};
use crate::backend::{BackendError, MonitorSession};
use crate::config::Role;
use crate::protocol::TextResult;

/// The query that reads the accounts with what decides whether they may
/// log in (MariaDB 10.4 and later: `mysql.global_priv`).
const ACCOUNTS_SQL: &str = "SELECT User, Host, \
     JSON_VALUE(Priv, '$.plugin') AS plugin, \
     JSON_VALUE(Priv, '$.authentication_string') AS authentication_string, \
     JSON_VALUE(Priv, '$.account_locked') AS account_locked, \
     JSON_VALUE(Priv, '$.is_role') AS is_role, \
     JSON_VALUE(Priv, '$.password_last_changed') AS password_last_changed, \
     JSON_VALUE(Priv, '$.password_lifetime') AS password_lifetime, \
     @@default_password_lifetime AS default_password_lifetime, \
     UNIX_TIMESTAMP() AS now \
     FROM mysql.global_priv";
/// The fallback where `mysql.global_priv` cannot be read (MySQL, an older
/// MariaDB, or a service account granted `mysql.user` only): locks and
/// expiry are not visible there, so passwordless accounts are not loaded.
const ACCOUNTS_SQL_FALLBACK: &str =
    "SELECT User, Host, plugin, authentication_string FROM mysql.user";
/// Most accounts read (a larger `mysql.user` fails to load, loudly).
const MAX_ACCOUNTS: usize = 1_000_000;

/// Where an account may log in from: its `Host`, as the server matches it
/// against the client's address. Switchyard resolves no names: a host
/// name matches nothing, except `localhost`, which matches 127.0.0.1 and
/// ::1 (what a server resolving names makes of them).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HostPattern {
    /// `%`: any address.
    Any,
    /// One address.
    Exact(IpAddr),
    /// `localhost`.
    Localhost,
    /// `a.b.c.d/m.m.m.m` or `a.b.c.d/len`: a network.
    Network { addr: u32, mask: u32 },
    /// A pattern with `%` and `_` wildcards, matched against the address's
    /// text.
    Wildcard(String),
    /// A host name (not resolved) or anything else: matches nothing.
    Never,
}

impl HostPattern {
    /// The pattern of a `Host` column.
    pub fn parse(host: &str) -> Self {
        if host == "%" {
            return Self::Any;
        }
        if host.eq_ignore_ascii_case("localhost") {
            return Self::Localhost;
        }
        if let Ok(ip) = host.parse::<IpAddr>() {
            return Self::Exact(normalize(ip));
        }
        if let Some((addr, mask)) = host.split_once('/') {
            let Ok(addr) = addr.parse::<Ipv4Addr>() else {
                return Self::Never;
            };
            let mask = match (mask.parse::<Ipv4Addr>(), mask.parse::<u32>()) {
                (Ok(m), _) => u32::from(m),
                (_, Ok(len)) if len <= 32 => u32::MAX.checked_shl(32 - len).unwrap_or(0),
                _ => return Self::Never,
            };
            return Self::Network {
                addr: u32::from(addr) & mask,
                mask,
            };
        }
        if host.contains(['%', '_']) {
            return Self::Wildcard(host.to_ascii_lowercase());
        }
        Self::Never
    }

    /// Whether a client at `ip` matches.
    pub fn matches(&self, ip: IpAddr) -> bool {
        let ip = normalize(ip);
        match self {
            Self::Any => true,
            Self::Exact(a) => *a == ip,
            Self::Localhost => ip == IpAddr::V4(Ipv4Addr::LOCALHOST) || ip == Ipv6Addr::LOCALHOST,
            Self::Network { addr, mask } => match ip {
                IpAddr::V4(v4) => u32::from(v4) & mask == *addr,
                IpAddr::V6(_) => false,
            },
            Self::Wildcard(p) => like(p.as_bytes(), ip.to_string().as_bytes()),
            Self::Never => false,
        }
    }

    /// How specific the pattern is; the server tries the most specific
    /// first: exact addresses, then networks (narrower first), then
    /// wildcard patterns (more literal characters before the first
    /// wildcard first), then `%`.
    fn rank(&self) -> (u8, u32) {
        match self {
            Self::Exact(_) | Self::Localhost | Self::Never => (4, 0),
            Self::Network { mask, .. } => (3, mask.count_ones()),
            Self::Wildcard(p) => (2, p.find(['%', '_']).unwrap_or(p.len()) as u32),
            Self::Any => (1, 0),
        }
    }
}

/// An IPv4-mapped IPv6 address as its IPv4 address.
fn normalize(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
        v4 => v4,
    }
}

/// SQL `LIKE` with `%` and `_` (no escapes), on ASCII-lowercased text.
fn like(pattern: &[u8], text: &[u8]) -> bool {
    // Iterative, with one backtrack point: linear in practice, never
    // exponential.
    let (mut p, mut t) = (0, 0);
    let mut star: Option<(usize, usize)> = None;
    while t < text.len() {
        match pattern.get(p) {
            Some(b'%') => {
                star = Some((p, t));
                p += 1;
            }
            Some(&c) if c == b'_' || c == text[t].to_ascii_lowercase() => {
                p += 1;
                t += 1;
            }
            _ => match star {
                Some((sp, st)) => {
                    p = sp + 1;
                    t = st + 1;
                    star = Some((sp, st + 1));
                }
                None => return false,
            },
        }
    }
    pattern[p.min(pattern.len())..].iter().all(|&c| c == b'%')
}

/// One loadable row of `mysql.user`: a host pattern and its verifier.
#[derive(Debug, Clone)]
struct Account {
    host: HostPattern,
    hash: PasswordHash,
}

/// The accounts as loaded: per user name, its rows most specific first;
/// and the anonymous rows' hosts, which the server would match before a
/// named row of a less specific host.
#[derive(Debug, Default)]
struct Accounts {
    by_user: HashMap<String, Vec<Account>>,
    anonymous: Vec<HostPattern>,
}

impl Accounts {
    fn get(&self, user: &str, client: IpAddr) -> Option<&PasswordHash> {
        let named = self
            .by_user
            .get(user)?
            .iter()
            .find(|a| a.host.matches(client))?;
        // The server sorts by host before user: an anonymous account of a
        // more specific host wins, and Switchyard lets no anonymous login
        // in.
        let shadowed = self
            .anonymous
            .iter()
            .any(|h| h.rank() > named.host.rank() && h.matches(client));
        (!shadowed).then_some(&named.hash)
    }
}

/// Accounts read from a backend.
#[derive(Debug, Default)]
pub struct LoadedUsers {
    map: ArcSwap<Accounts>,
    /// Wakes the refresh loop for an unknown user's login.
    wake: tokio::sync::Notify,
    last_attempt: Mutex<Option<Instant>>,
    one_at_a_time: tokio::sync::Mutex<()>,
}

impl LoadedUsers {
    /// The stored hash of `user` for a client at `client`, if a loaded
    /// account of that user matches the address (the most specific one).
    pub fn get(&self, user: &str, client: IpAddr) -> Option<PasswordHash> {
        self.map.load().get(user, client).cloned()
    }

    /// Asks the refresh loop to read the accounts again soon (at most every
    /// `min_refresh_ms`); returns at once.
    pub fn request_refresh(&self) {
        self.wake.notify_one();
    }

    /// How many users have accounts loaded.
    pub fn len(&self) -> usize {
        self.map.load().by_user.len()
    }

    /// Whether none is.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Reads the accounts again if the last attempt is older than `min`
    /// (or there was none). Returns whether it read them.
    pub async fn refresh_if_due(&self, state: &State, min: Duration) -> bool {
        let _one = self.one_at_a_time.lock().await;
        let due = self
            .last_attempt
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .is_none_or(|t| t.elapsed() >= min);
        if due {
            self.refresh_locked(state).await;
        }
        due
    }

    async fn refresh_locked(&self, state: &State) {
        *self.last_attempt.lock().unwrap_or_else(|p| p.into_inner()) = Some(Instant::now());
        let timeout = state.config.connect_timeout() * 2;
        match tokio::time::timeout(timeout, read_accounts(state)).await {
            Ok(Ok((accounts, skipped))) => {
                let before = self.len();
                if !skipped.is_empty() {
                    tracing::debug!(?skipped, "accounts not loaded");
                }
                if accounts.by_user.len() != before {
                    info!(
                        accounts = accounts.by_user.len(),
                        "accounts loaded from the primary"
                    );
                }
                self.map.store(std::sync::Arc::new(accounts));
            }
            Ok(Err(e)) => warn!(
                "cannot load accounts from the primary (keeping {}): {e}",
                self.len()
            ),
            Err(_) => warn!(
                "loading accounts from the primary timed out (keeping {})",
                self.len()
            ),
        }
    }
}

/// Reads the accounts from the first usable backend of the configured pool.
async fn read_accounts(state: &State) -> Result<(Accounts, Vec<String>), String> {
    let Some(t) = state.config.users.from_backend() else {
        return Ok(Default::default());
    };
    let pool_name = t
        .pool
        .as_ref()
        .map(|p| p.get_ref().clone())
        .or_else(|| {
            state
                .config
                .pools
                .iter()
                .find(|(_, p)| p.role == Role::Writer)
                .map(|(n, _)| n.clone())
        })
        .ok_or("no pool to read accounts from")?;
    let pool = state
        .pools
        .get(&pool_name)
        .ok_or_else(|| format!("pool '{pool_name}' is not configured"))?;
    let (user, password) = match (&t.user, &t.password_sha1, &state.config.monitor) {
        (Some(u), Some(h), _) => (u.clone(), h.get_ref().clone()),
        (_, _, Some(m)) => (m.user.clone(), m.password_sha1.get_ref().clone()),
        _ => return Err("no service account configured".into()),
    };
    let password = Sha1Password::from_hex(&password).ok_or("bad service password_sha1")?;
    let member = pool
        .candidates()
        .into_iter()
        .next()
        .ok_or_else(|| format!("no backend of pool '{pool_name}' is available"))?;
    let tls = pool
        .tls
        .as_ref()
        .or(state.pools.tls_for(member.backend.addr));
    let addr = member.backend.addr;
    let mut session = MonitorSession::open(addr, &user, &password, tls)
        .await
        .map_err(|e| format!("{addr}: {e}"))?;
    match session.rows_up_to(ACCOUNTS_SQL, MAX_ACCOUNTS).await {
        Ok(rows) => Ok(accounts_from(&rows, true)),
        // No such table, or no right to read it: the older view.
        Err(BackendError::Refused(e)) if matches!(e.code, 1142 | 1146 | 1356) => {
            warn_fallback_once(&user, &e.message);
            let rows = session
                .rows_up_to(ACCOUNTS_SQL_FALLBACK, MAX_ACCOUNTS)
                .await
                .map_err(|e| format!("{addr}: {e}"))?;
            Ok(accounts_from(&rows, false))
        }
        Err(e) => Err(format!("{addr}: {e}")),
    }
}

/// Says once per process that locks and expiry cannot be seen.
fn warn_fallback_once(user: &str, why: &str) {
    static WARNED: std::sync::Once = std::sync::Once::new();
    WARNED.call_once(|| {
        warn!(
            "cannot read mysql.global_priv ({why}); reading mysql.user instead, where locked and \
             expired accounts cannot be told apart: passwordless accounts are not loaded. \
             Grant SELECT ON mysql.global_priv TO the service account '{user}'"
        )
    });
}

/// Whether a row of [`ACCOUNTS_SQL`] may log in: not a role, not locked,
/// its password not expired (by `PASSWORD EXPIRE` or by its lifetime).
fn usable(rows: &TextResult, i: usize) -> Result<(), &'static str> {
    let flag = |c| matches!(rows.get(i, c), Some("1" | "true"));
    let number = |c| rows.get(i, c).and_then(|v| v.parse::<i64>().ok());
    if flag("is_role") {
        return Err("a role");
    }
    if flag("account_locked") {
        return Err("locked");
    }
    let changed = number("password_last_changed");
    if changed == Some(0) {
        return Err("password expired");
    }
    let lifetime = match number("password_lifetime") {
        None | Some(-1) => number("default_password_lifetime").unwrap_or(0),
        Some(days) => days,
    };
    if let (Some(changed), Some(now)) = (changed, number("now"))
        && lifetime > 0
        && now >= changed.saturating_add(lifetime.saturating_mul(86_400))
    {
        return Err("password expired");
    }
    Ok(())
}

/// The loadable `mysql_native_password` accounts in `rows`, by user name,
/// most specific host first; also the names skipped and why. `checked`:
/// the rows come from [`ACCOUNTS_SQL`] (locks and expiry visible); else
/// passwordless accounts are skipped, since a locked system account such
/// as `mariadb.sys` looks like one.
fn accounts_from(rows: &TextResult, checked: bool) -> (Accounts, Vec<String>) {
    let mut accounts = Accounts::default();
    let mut skipped = Vec::new();
    for i in 0..rows.rows.len() {
        let Some(user) = rows.get(i, "User") else {
            continue;
        };
        let Some(host) = rows.get(i, "Host").filter(|h| !h.is_empty()) else {
            // Roles (and nothing that can log in) have no host.
            continue;
        };
        let host = HostPattern::parse(host);
        if user.is_empty() {
            // Anonymous accounts are never loaded, but they shadow named
            // ones of less specific hosts.
            accounts.anonymous.push(host);
            continue;
        }
        if checked && let Err(why) = usable(rows, i) {
            skipped.push(format!("{user} ({why})"));
            continue;
        }
        let plugin = rows.get(i, "plugin").unwrap_or("");
        let hash_text = rows.get(i, "authentication_string").unwrap_or("");
        let native =
            plugin == "mysql_native_password" || (plugin.is_empty() && hash_text.starts_with('*'));
        let hash = match hash_text.parse::<PasswordHash>() {
            Ok(PasswordHash::Empty) if !checked => {
                skipped.push(format!("{user} (no password, lock not visible)"));
                continue;
            }
            Ok(h) if native => h,
            _ => {
                skipped.push(format!("{user} (another auth plugin)"));
                continue;
            }
        };
        accounts
            .by_user
            .entry(user.to_owned())
            .or_default()
            .push(Account { host, hash });
    }
    for list in accounts.by_user.values_mut() {
        // Stable: of equally specific rows, the first read stays first.
        list.sort_by_key(|a| std::cmp::Reverse(a.host.rank()));
    }
    skipped.sort();
    skipped.dedup();
    (accounts, skipped)
}

/// The least time between two reads of the accounts that unknown users'
/// logins ask for, whatever `min_refresh_ms` says: they must not be able
/// to keep the primary busy.
const MIN_REFRESH_FLOOR: Duration = Duration::from_secs(1);

/// Reads the accounts every `refresh_ms` while `[users] source =
/// "backend"` is configured, and when an unknown user's login asks for it
/// (at most every `min_refresh_ms`, at least a second apart). Runs forever.
pub async fn refresh_loop(shared: std::sync::Arc<super::Shared>) {
    loop {
        let state = shared.state();
        let (every, min) = match state.config.users.from_backend() {
            Some(t) => (
                Duration::from_millis(t.refresh_ms.max(100)),
                Duration::from_millis(t.min_refresh_ms).max(MIN_REFRESH_FLOOR),
            ),
            None => (Duration::from_secs(1), Duration::from_secs(1)),
        };
        if state.config.users.from_backend().is_some() {
            shared.loaded_users.refresh_if_due(&state, every).await;
        }
        drop(state);
        tokio::select! {
            _ = tokio::time::sleep(every.min(Duration::from_secs(1))) => {}
            _ = shared.loaded_users.wake.notified() => {
                let state = shared.state();
                if state.config.users.from_backend().is_some() {
                    shared.loaded_users.refresh_if_due(&state, min).await;
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const COLUMNS: [&str; 10] = [
        "User",
        "Host",
        "plugin",
        "authentication_string",
        "account_locked",
        "is_role",
        "password_last_changed",
        "password_lifetime",
        "default_password_lifetime",
        "now",
    ];
    const NOW: i64 = 1_800_000_000;

    /// A row of ACCOUNTS_SQL: user, host, plugin, hash, and the rest as
    /// `(column, value)` overrides.
    fn row(
        u: &str,
        h: &str,
        p: &str,
        a: &str,
        extra: &[(&str, Option<&str>)],
    ) -> Vec<Option<String>> {
        let now = NOW.to_string();
        COLUMNS
            .iter()
            .map(|c| {
                if let Some((_, v)) = extra.iter().find(|(k, _)| k == c) {
                    return v.map(String::from);
                }
                Some(match *c {
                    "User" => u.into(),
                    "Host" => h.into(),
                    "plugin" => p.into(),
                    "authentication_string" => a.into(),
                    "password_last_changed" => (NOW - 1000).to_string(),
                    "default_password_lifetime" => "0".into(),
                    "now" => now.clone(),
                    _ => return None,
                })
            })
            .collect()
    }

    fn table(rows: Vec<Vec<Option<String>>>) -> TextResult {
        TextResult {
            columns: COLUMNS.map(String::from).to_vec(),
            rows,
        }
    }

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn host_patterns_match_as_the_server_does() {
        let p = HostPattern::parse;
        assert!(p("%").matches(ip("10.1.2.3")));
        assert!(p("127.0.0.1").matches(ip("127.0.0.1")));
        assert!(p("127.0.0.1").matches(ip("::ffff:127.0.0.1")));
        assert!(!p("127.0.0.1").matches(ip("127.0.0.2")));
        assert!(p("localhost").matches(ip("127.0.0.1")));
        assert!(p("LOCALHOST").matches(ip("::1")));
        assert!(!p("localhost").matches(ip("127.0.0.2")));
        assert!(!p("localhost").matches(ip("10.0.0.1")));
        assert!(p("10.%").matches(ip("10.200.0.1")));
        assert!(!p("10.%").matches(ip("110.0.0.1")));
        assert!(!p("10.%").matches(ip("127.0.0.1")));
        assert!(p("192.168.1._").matches(ip("192.168.1.7")));
        assert!(!p("192.168.1._").matches(ip("192.168.1.17")));
        assert!(p("10.0.0.0/255.0.0.0").matches(ip("10.9.9.9")));
        assert!(!p("10.0.0.0/255.0.0.0").matches(ip("11.0.0.1")));
        assert!(p("10.1.0.0/16").matches(ip("10.1.255.1")));
        assert!(!p("10.1.0.0/16").matches(ip("10.2.0.1")));
        assert!(p("2001:db8::%").matches(ip("2001:db8::5")));
        // Names are not resolved: they match nothing.
        assert!(!p("db.example.com").matches(ip("127.0.0.1")));
        assert!(!p("%.example.com").matches(ip("127.0.0.1")));
        assert!(!p("10.0.0.0/garbage").matches(ip("10.0.0.1")));
        // Pathological patterns stay fast.
        let evil = HostPattern::parse(&"%a".repeat(50));
        assert!(!evil.matches(ip("127.0.0.1")));
    }

    #[test]
    fn the_most_specific_matching_host_wins() {
        let one = PasswordHash::of_password(b"one").to_string();
        let two = PasswordHash::of_password(b"two").to_string();
        let three = PasswordHash::of_password(b"three").to_string();
        let native = "mysql_native_password";
        let (a, _) = accounts_from(
            &table(vec![
                row("app", "%", native, &two, &[]),
                row("app", "127.0.0.1", native, &one, &[]),
                row("app", "10.%", native, &three, &[]),
                row("bound", "127.0.0.1", native, &one, &[]),
                row("local", "localhost", native, &one, &[]),
                row("net", "10.0.0.0/255.0.0.0", native, &one, &[]),
                row("net", "10.1.%", native, &two, &[]),
            ]),
            true,
        );
        let h = |s: &str| s.parse::<PasswordHash>().unwrap();
        assert_eq!(a.get("app", ip("127.0.0.1")), Some(&h(&one)));
        assert_eq!(a.get("app", ip("10.0.0.5")), Some(&h(&three)));
        assert_eq!(a.get("app", ip("127.0.0.2")), Some(&h(&two)));
        assert_eq!(a.get("bound", ip("127.0.0.1")), Some(&h(&one)));
        assert_eq!(a.get("bound", ip("127.0.0.2")), None);
        assert_eq!(a.get("local", ip("127.0.0.1")), Some(&h(&one)));
        assert_eq!(a.get("local", ip("127.0.0.3")), None);
        // A network is more specific than a wildcard pattern.
        assert_eq!(a.get("net", ip("10.1.0.1")), Some(&h(&one)));
        assert_eq!(a.get("nobody", ip("127.0.0.1")), None);
    }

    #[test]
    fn an_anonymous_account_of_a_more_specific_host_shadows() {
        let one = PasswordHash::of_password(b"one").to_string();
        let (a, _) = accounts_from(
            &table(vec![
                row("app", "%", "mysql_native_password", &one, &[]),
                row("", "127.0.0.1", "mysql_native_password", "", &[]),
            ]),
            true,
        );
        assert_eq!(a.get("app", ip("127.0.0.1")), None);
        assert!(a.get("app", ip("127.0.0.2")).is_some());
    }

    #[test]
    fn locked_expired_roles_and_other_plugins_are_not_loaded() {
        let one = PasswordHash::of_password(b"one").to_string();
        let n = "mysql_native_password";
        let changed_long_ago = (NOW - 10 * 86_400).to_string();
        let (a, skipped) = accounts_from(
            &table(vec![
                row("ok", "%", n, &one, &[]),
                row("locked", "%", n, &one, &[("account_locked", Some("1"))]),
                row(
                    "mariadb.sys",
                    "localhost",
                    n,
                    "",
                    &[
                        ("account_locked", Some("1")),
                        ("password_last_changed", Some("0")),
                    ],
                ),
                row(
                    "expired",
                    "%",
                    n,
                    &one,
                    &[("password_last_changed", Some("0"))],
                ),
                row(
                    "aged",
                    "%",
                    n,
                    &one,
                    &[
                        ("password_last_changed", Some(&changed_long_ago)),
                        ("password_lifetime", Some("5")),
                    ],
                ),
                row(
                    "aged_default",
                    "%",
                    n,
                    &one,
                    &[
                        ("password_last_changed", Some(&changed_long_ago)),
                        ("default_password_lifetime", Some("7")),
                    ],
                ),
                row("young", "%", n, &one, &[("password_lifetime", Some("5"))]),
                row(
                    "forever",
                    "%",
                    n,
                    &one,
                    &[
                        ("password_last_changed", Some(&changed_long_ago)),
                        ("password_lifetime", Some("0")),
                        ("default_password_lifetime", Some("7")),
                    ],
                ),
                row("role", "", "", "", &[("is_role", Some("1"))]),
                row("ed", "%", "ed25519", "xyz", &[]),
                row("sock", "localhost", "unix_socket", "", &[]),
                row("invalid", "%", n, "invalid", &[]),
                row("nopass", "%", n, "", &[]),
                row("old", "%", "", &one, &[]),
            ]),
            true,
        );
        let mut loaded: Vec<_> = a.by_user.keys().cloned().collect();
        loaded.sort();
        assert_eq!(loaded, ["forever", "nopass", "ok", "old", "young"]);
        assert!(skipped.contains(&"locked (locked)".to_owned()));
        assert!(skipped.contains(&"aged (password expired)".to_owned()));
        assert!(skipped.contains(&"aged_default (password expired)".to_owned()));
        assert!(skipped.iter().any(|s| s.starts_with("mariadb.sys")));
        // Read from mysql.user, where a lock cannot be seen, no
        // passwordless account is loaded.
        let (a, _) = accounts_from(
            &table(vec![
                row("mariadb.sys", "localhost", n, "", &[]),
                row("ok", "%", n, &one, &[]),
            ]),
            false,
        );
        assert!(a.by_user.contains_key("ok"));
        assert!(!a.by_user.contains_key("mariadb.sys"));
    }
}
