//! Accounts loaded from the primary (`[users] source = "backend"`): user
//! names and `mysql_native_password` hashes read from `mysql.user` through a
//! service account, refreshed periodically and, rate-limited, when an
//! unknown user tries to log in. Accounts in the file win over these.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use arc_swap::ArcSwap;
use tracing::{info, warn};

use super::State;
use crate::auth::{PasswordHash, Sha1Password};
use crate::backend::MonitorSession;
use crate::config::Role;
use crate::protocol::TextResult;

/// The query that reads the accounts (MariaDB and MySQL alike).
const ACCOUNTS_SQL: &str = "SELECT User, Host, plugin, authentication_string FROM mysql.user";

/// Accounts read from a backend.
#[derive(Debug, Default)]
pub struct LoadedUsers {
    map: ArcSwap<HashMap<String, PasswordHash>>,
    last_attempt: Mutex<Option<Instant>>,
    one_at_a_time: tokio::sync::Mutex<()>,
}

impl LoadedUsers {
    /// The stored hash of `user`, if it was loaded.
    pub fn get(&self, user: &str) -> Option<PasswordHash> {
        self.map.load().get(user).cloned()
    }

    /// How many accounts are loaded.
    pub fn len(&self) -> usize {
        self.map.load().len()
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
            Ok(Ok((map, skipped))) => {
                let before = self.len();
                if !skipped.is_empty() {
                    tracing::debug!(?skipped, "accounts not loaded (another auth plugin)");
                }
                if map.len() != before {
                    info!(accounts = map.len(), "accounts loaded from the primary");
                }
                self.map.store(std::sync::Arc::new(map));
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

/// Reads `mysql.user` from the first usable backend of the configured pool.
async fn read_accounts(
    state: &State,
) -> Result<(HashMap<String, PasswordHash>, Vec<String>), String> {
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
    let mut session = MonitorSession::open(member.backend.addr, &user, &password, tls)
        .await
        .map_err(|e| format!("{}: {e}", member.backend.addr))?;
    let rows = session
        .rows(ACCOUNTS_SQL)
        .await
        .map_err(|e| format!("{}: {e}", member.backend.addr))?;
    Ok(accounts_from(&rows))
}

/// The `mysql_native_password` accounts in `rows`, by user name; for a
/// user with several host entries, the `'%'` one. Also the names skipped
/// for another auth plugin.
fn accounts_from(rows: &TextResult) -> (HashMap<String, PasswordHash>, Vec<String>) {
    let mut map: HashMap<String, (bool, PasswordHash)> = HashMap::new();
    let mut skipped = Vec::new();
    for i in 0..rows.rows.len() {
        let Some(user) = rows.get(i, "User") else {
            continue;
        };
        if user.is_empty() {
            // Anonymous accounts are never loaded.
            continue;
        }
        let plugin = rows.get(i, "plugin").unwrap_or("");
        let hash_text = rows.get(i, "authentication_string").unwrap_or("");
        let native =
            plugin == "mysql_native_password" || (plugin.is_empty() && hash_text.starts_with('*'));
        let hash = match hash_text.parse::<PasswordHash>() {
            Ok(h) if native => h,
            _ => {
                skipped.push(user.to_owned());
                continue;
            }
        };
        let any_host = rows.get(i, "Host") == Some("%");
        match map.get(user) {
            Some((true, _)) => {}
            Some((false, _)) if !any_host => {}
            _ => {
                map.insert(user.to_owned(), (any_host, hash));
            }
        }
    }
    skipped.retain(|u| !map.contains_key(u));
    skipped.sort();
    skipped.dedup();
    (map.into_iter().map(|(u, (_, h))| (u, h)).collect(), skipped)
}

/// Reads the accounts every `refresh_ms` while `[users] source =
/// "backend"` is configured. Runs forever.
pub async fn refresh_loop(shared: std::sync::Arc<super::Shared>) {
    loop {
        let state = shared.state();
        let every = match state.config.users.from_backend() {
            Some(t) => {
                let every = Duration::from_millis(t.refresh_ms.max(100));
                shared.loaded_users.refresh_if_due(&state, every).await;
                every
            }
            None => Duration::from_secs(1),
        };
        drop(state);
        tokio::time::sleep(every.min(Duration::from_secs(1))).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn native_accounts_prefer_any_host() {
        let row = |u: &str, h: &str, p: &str, a: &str| {
            vec![
                Some(u.into()),
                Some(h.into()),
                Some(p.into()),
                Some(a.into()),
            ]
        };
        let one = PasswordHash::of_password(b"one").to_string();
        let two = PasswordHash::of_password(b"two").to_string();
        let t = TextResult {
            columns: ["User", "Host", "plugin", "authentication_string"]
                .map(String::from)
                .to_vec(),
            rows: vec![
                row("app", "localhost", "mysql_native_password", &one),
                row("app", "%", "mysql_native_password", &two),
                row("app", "10.0.0.1", "mysql_native_password", &one),
                row("ed", "%", "ed25519", "xyz"),
                row("sock", "localhost", "unix_socket", ""),
                row("", "%", "mysql_native_password", ""),
                row("nopass", "%", "mysql_native_password", ""),
                row("old", "%", "", &one),
                row("broken", "%", "mysql_native_password", "*12"),
            ],
        };
        let (map, skipped) = accounts_from(&t);
        assert_eq!(map["app"], PasswordHash::of_password(b"two"));
        assert_eq!(map["nopass"], PasswordHash::Empty);
        assert_eq!(map["old"], PasswordHash::of_password(b"one"));
        assert_eq!(map.len(), 3);
        assert_eq!(skipped, vec!["broken", "ed", "sock"]);
    }
}
