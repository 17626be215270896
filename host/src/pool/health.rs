//! Background health checks.
//!
//! Every `[health] interval_ms` each configured backend is checked: without
//! a monitor account, a TCP connect and its greeting (then a login as a user
//! that does not exist, refused: a connection dropped after its greeting
//! counts towards the server's `max_connect_errors`, a refused login does
//! not); with one, a logged-in
//! session (kept open between checks) that reads `@@global.read_only` and the
//! replication status (`SHOW ALL SLAVES STATUS` on MariaDB, `SHOW REPLICA
//! STATUS` or `SHOW SLAVE STATUS` on MySQL), with a MariaDB replica's
//! position (`Gtid_Slave_Pos`), which read-your-writes compares with a
//! session's last write. A backend changes state only after `fall` failed
//! or `rise` good checks in a row.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::task::JoinSet;
use tracing::{info, warn};

use super::gtid::GtidPos;
use super::{Backend, Lag, Pools};
use crate::auth::Sha1Password;
use crate::backend::{BackendError, MonitorSession};
use crate::config::{HealthConfig, MonitorConfig};
use crate::protocol::TextResult;

/// Which statement shows a backend's replication status.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum StatusQuery {
    AllSlaves,
    Replica,
    Slave,
}

impl StatusQuery {
    fn sql(self) -> &'static str {
        match self {
            Self::AllSlaves => "SHOW ALL SLAVES STATUS",
            Self::Replica => "SHOW REPLICA STATUS",
            Self::Slave => "SHOW SLAVE STATUS",
        }
    }

    fn fallback(self) -> Option<Self> {
        match self {
            Self::AllSlaves => Some(Self::Replica),
            Self::Replica => Some(Self::Slave),
            Self::Slave => None,
        }
    }
}

/// The monitor's open session to one backend, kept between checks.
#[derive(Debug)]
pub struct MonitorConn {
    session: MonitorSession,
    status_query: StatusQuery,
}

/// The monitor account, ready to log in.
#[derive(Debug, Clone)]
pub struct Monitor {
    user: String,
    password: Arc<Sha1Password>,
}

impl Monitor {
    /// Logs in to `addr` as the monitor (over TLS if `tls`).
    pub async fn open(
        &self,
        addr: SocketAddr,
        tls: Option<&crate::backend::BackendTls>,
    ) -> Result<MonitorSession, crate::backend::BackendError> {
        MonitorSession::open(addr, &self.user, &self.password, tls).await
    }

    /// From the configuration (validated: 40 hex digits).
    pub fn from_config(config: &MonitorConfig) -> Option<Self> {
        Some(Self {
            user: config.user.clone(),
            password: Arc::new(Sha1Password::from_hex(config.password_sha1.get_ref())?),
        })
    }
}

/// What one check found.
#[derive(Debug)]
struct Finding {
    reachable: Result<(), String>,
    replication: Option<Replication>,
}

/// What a check read of a backend's replication.
#[derive(Debug)]
struct Replication {
    read_only: Option<bool>,
    lag: Lag,
    /// `Gtid_Slave_Pos` (MariaDB replicas).
    gtid_pos: Option<GtidPos>,
}

/// State the checker keeps between rounds.
#[derive(Debug, Default)]
pub struct Checker {
    conns: HashMap<SocketAddr, MonitorConn>,
}

impl Checker {
    /// Checks every backend of `pools` once, concurrently, and records the
    /// outcomes.
    pub async fn round(&mut self, pools: &Pools, health: &HealthConfig, monitor: Option<&Monitor>) {
        let timeout = Duration::from_millis(health.timeout_ms);
        let mut set = JoinSet::new();
        for backend in pools.backends() {
            let backend = Arc::clone(backend);
            let conn = self.conns.remove(&backend.addr);
            let monitor = monitor.cloned();
            let tls = pools.tls_for(backend.addr).cloned();
            set.spawn(async move {
                let addr = backend.addr;
                let (finding, conn) = match tokio::time::timeout(
                    timeout,
                    check(addr, monitor.as_ref(), tls.as_ref(), conn),
                )
                .await
                {
                    Ok(r) => r,
                    Err(_) => (
                        Finding {
                            reachable: Err("health check timed out".into()),
                            replication: None,
                        },
                        None,
                    ),
                };
                (backend, finding, conn)
            });
        }
        while let Some(joined) = set.join_next().await {
            let Ok((backend, finding, conn)) = joined else {
                continue;
            };
            if let Some(conn) = conn {
                self.conns.insert(backend.addr, conn);
            }
            apply(&backend, finding, health, monitor.is_some());
        }
        // Sessions to backends no longer configured are closed.
        self.conns.retain(|addr, _| pools.backend(*addr).is_some());
    }
}

fn apply(backend: &Backend, finding: Finding, health: &HealthConfig, monitored: bool) {
    let addr = backend.addr;
    match &finding.reachable {
        Ok(()) => {
            let (read_only, lag, gtid_pos) = match finding.replication {
                Some(r) => (r.read_only, r.lag, r.gtid_pos),
                None => (None, Lag::Unknown, None),
            };
            let before = (backend.read_only(), backend.lag());
            backend.set_replication(read_only, lag);
            backend.set_gtid_pos(gtid_pos);
            if monitored && before.0.is_some() && before.0 != read_only {
                info!(backend = %addr, read_only = ?read_only, "backend's read_only changed");
            }
            if matches!(lag, Lag::Stopped) && !matches!(before.1, Lag::Stopped) {
                warn!(backend = %addr, "backend's replication is stopped");
            }
        }
        Err(_) => {
            backend.set_replication(None, Lag::Unknown);
            backend.set_gtid_pos(None);
        }
    }
    let reason = finding.reachable.as_ref().err().cloned();
    match backend.record_check(finding.reachable, health) {
        Some(true) => info!(backend = %addr, "backend passes its checks again; back in service"),
        Some(false) => warn!(
            backend = %addr,
            reason = reason.as_deref().unwrap_or(""),
            fall = health.fall,
            "backend failed its checks; out of service"
        ),
        None => {}
    }
}

async fn check(
    addr: SocketAddr,
    monitor: Option<&Monitor>,
    tls: Option<&crate::backend::BackendTls>,
    conn: Option<MonitorConn>,
) -> (Finding, Option<MonitorConn>) {
    let Some(monitor) = monitor else {
        let reachable = crate::backend::reach(addr)
            .await
            .map(|_| ())
            .map_err(|e| e.to_string());
        return (
            Finding {
                reachable,
                replication: None,
            },
            None,
        );
    };
    let mut conn = match conn {
        Some(c) => c,
        None => match MonitorSession::open(addr, &monitor.user, &monitor.password, tls).await {
            Ok(session) => MonitorConn {
                session,
                status_query: StatusQuery::AllSlaves,
            },
            Err(BackendError::TlsUnavailable) => {
                // Up, but not as its pool requires: sessions to it fail
                // with their own error; its replication is unknown.
                warn!(backend = %addr, "monitor login: the backend offers no TLS, which its pool requires");
                return (
                    Finding {
                        reachable: Ok(()),
                        replication: None,
                    },
                    None,
                );
            }
            Err(BackendError::Refused(e)) if !crate::backend::is_server_fault(&e) => {
                // The server answers but refuses the monitor account: it is
                // up, its replication is unknown.
                warn!(backend = %addr, code = e.code, "monitor login refused: {}", e.message);
                return (
                    Finding {
                        reachable: Ok(()),
                        replication: None,
                    },
                    None,
                );
            }
            Err(e) => {
                return (
                    Finding {
                        reachable: Err(e.to_string()),
                        replication: None,
                    },
                    None,
                );
            }
        },
    };
    match replication(&mut conn).await {
        Ok(r) => (
            Finding {
                reachable: Ok(()),
                replication: Some(r),
            },
            Some(conn),
        ),
        Err(BackendError::Refused(e)) => {
            warn!(backend = %addr, code = e.code, "monitor query refused: {}", e.message);
            (
                Finding {
                    reachable: Ok(()),
                    replication: None,
                },
                Some(conn),
            )
        }
        Err(e) => (
            Finding {
                reachable: Err(e.to_string()),
                replication: None,
            },
            None,
        ),
    }
}

/// Reads `read_only`, the replication lag and position.
async fn replication(conn: &mut MonitorConn) -> Result<Replication, BackendError> {
    let ro = conn.session.rows("SELECT @@global.read_only").await?;
    let read_only = ro
        .rows
        .first()
        .and_then(|r| r.first())
        .and_then(|v| v.as_deref())
        .map(|v| v != "0" && !v.eq_ignore_ascii_case("OFF"));
    loop {
        match conn.session.rows(conn.status_query.sql()).await {
            Ok(t) => {
                return Ok(Replication {
                    read_only,
                    lag: lag_of(&t),
                    gtid_pos: gtid_pos_of(&t),
                });
            }
            // A syntax error: this server spells it differently.
            Err(BackendError::Refused(e)) if e.code == 1064 => match conn.status_query.fallback() {
                Some(next) => conn.status_query = next,
                None => return Err(BackendError::Refused(e)),
            },
            Err(e) => return Err(e),
        }
    }
}

/// The lag a replication status shows: the largest over its channels;
/// stopped when any channel's thread is not running (its lag is NULL).
fn lag_of(t: &TextResult) -> Lag {
    if t.rows.is_empty() {
        return Lag::NotReplica;
    }
    let mut worst = 0u64;
    for row in 0..t.rows.len() {
        let running = |names: [&str; 2]| {
            names
                .iter()
                .find_map(|n| t.get(row, n))
                .is_some_and(|v| v.eq_ignore_ascii_case("Yes"))
        };
        if !running(["Slave_SQL_Running", "Replica_SQL_Running"])
            || !running(["Slave_IO_Running", "Replica_IO_Running"])
        {
            return Lag::Stopped;
        }
        let seconds = ["Seconds_Behind_Master", "Seconds_Behind_Source"]
            .iter()
            .find_map(|n| t.get(row, n))
            .and_then(|v| v.parse::<u64>().ok());
        match seconds {
            Some(s) => worst = worst.max(s),
            None => return Lag::Stopped,
        }
    }
    Lag::Seconds(worst)
}

/// The replication position a MariaDB status shows (`Gtid_Slave_Pos`, the
/// same on every channel's row); `None` where it shows none (not a
/// replica, MySQL) or one that does not parse.
fn gtid_pos_of(t: &TextResult) -> Option<GtidPos> {
    t.get(0, "Gtid_Slave_Pos")?.parse().ok()
}

/// Runs health-check rounds forever: every `interval_ms`, or at once when
/// `wake` is notified (after a reload). `current` gives the pools and
/// settings in force at each round.
pub async fn run<F>(current: F, wake: Arc<tokio::sync::Notify>)
where
    F: Fn() -> (Arc<Pools>, HealthConfig, Option<Monitor>),
{
    let mut checker = Checker::default();
    loop {
        let (pools, health, monitor) = current();
        checker.round(&pools, &health, monitor.as_ref()).await;
        tokio::select! {
            _ = tokio::time::sleep(Duration::from_millis(health.interval_ms)) => {}
            _ = wake.notified() => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn status(columns: &[&str], rows: &[&[Option<&str>]]) -> TextResult {
        TextResult {
            columns: columns.iter().map(|c| c.to_string()).collect(),
            rows: rows
                .iter()
                .map(|r| r.iter().map(|v| v.map(str::to_owned)).collect())
                .collect(),
        }
    }

    #[test]
    fn gtid_position_from_mariadbs_status() {
        let t = status(
            &["Slave_SQL_Running", "Gtid_Slave_Pos"],
            &[&[Some("Yes"), Some("0-1-42,1-2-7")]],
        );
        let pos = gtid_pos_of(&t).unwrap();
        assert!(pos.has_applied(&"1-2-7".parse().unwrap()));
        assert!(!pos.has_applied(&"0-1-43".parse().unwrap()));
        // MySQL's status, no status, or text that is not a position.
        assert_eq!(
            gtid_pos_of(&status(&["Slave_SQL_Running"], &[&[Some("Yes")]])),
            None
        );
        assert_eq!(gtid_pos_of(&status(&["Gtid_Slave_Pos"], &[])), None);
        assert_eq!(
            gtid_pos_of(&status(&["Gtid_Slave_Pos"], &[&[Some("x")]])),
            None
        );
    }

    #[test]
    fn lag_from_mariadb_and_mysql_spellings() {
        let maria = [
            "Connection_name",
            "Slave_IO_Running",
            "Slave_SQL_Running",
            "Seconds_Behind_Master",
        ];
        assert_eq!(lag_of(&status(&maria, &[])), Lag::NotReplica);
        assert_eq!(
            lag_of(&status(
                &maria,
                &[&[Some(""), Some("Yes"), Some("Yes"), Some("4")]]
            )),
            Lag::Seconds(4)
        );
        assert_eq!(
            lag_of(&status(
                &maria,
                &[
                    &[Some("a"), Some("Yes"), Some("Yes"), Some("4")],
                    &[Some("b"), Some("Yes"), Some("Yes"), Some("9")]
                ]
            )),
            Lag::Seconds(9)
        );
        assert_eq!(
            lag_of(&status(
                &maria,
                &[&[Some(""), Some("Yes"), Some("No"), None]]
            )),
            Lag::Stopped
        );
        let mysql = [
            "Replica_IO_Running",
            "Replica_SQL_Running",
            "Seconds_Behind_Source",
        ];
        assert_eq!(
            lag_of(&status(&mysql, &[&[Some("Yes"), Some("Yes"), Some("0")]])),
            Lag::Seconds(0)
        );
        assert_eq!(
            lag_of(&status(&mysql, &[&[Some("Connecting"), Some("Yes"), None]])),
            Lag::Stopped
        );
    }
}
