//! What Switchyard presents itself as: the backends' version string and
//! charset, and the capabilities every backend and Switchyard share.

use std::sync::{Arc, RwLock};
use std::time::Duration;

use tracing::{debug, info, warn};

use crate::backend;
use crate::config::Config;
use crate::protocol::{CapabilityFlags, Greeting, MariaDbCapabilities, StatusFlags};

use super::Shared;

/// The server identity presented in greetings.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServerProfile {
    /// Version string.
    pub version: String,
    /// Collation id.
    pub charset: u8,
    /// Capabilities offered to clients.
    pub capabilities: CapabilityFlags,
    /// MariaDB extended capabilities offered to clients.
    pub mariadb_capabilities: MariaDbCapabilities,
    /// Status flags for the greeting.
    pub status: StatusFlags,
}

impl ServerProfile {
    /// The profile used before any backend has answered: the configured
    /// version and charset, and what Switchyard implements, MariaDB-style.
    pub fn fallback(config: &Config) -> Self {
        Self {
            version: config.default_server_version.clone(),
            charset: config.default_charset,
            capabilities: CapabilityFlags::implemented() - CapabilityFlags::CLIENT_LONG_PASSWORD,
            mariadb_capabilities: MariaDbCapabilities::implemented(),
            status: StatusFlags::SERVER_STATUS_AUTOCOMMIT,
        }
    }

    /// The profile for a set of backend greetings (at least one): the first
    /// one's version and charset; capabilities that Switchyard implements and
    /// every backend advertises.
    pub fn from_greetings(greetings: &[Greeting]) -> Option<Self> {
        let first = greetings.first()?;
        let mut caps = CapabilityFlags::implemented();
        let mut mariadb = MariaDbCapabilities::implemented();
        for g in greetings {
            caps &= g.capabilities;
            mariadb &= g.mariadb_capabilities;
        }
        if caps.contains(CapabilityFlags::CLIENT_LONG_PASSWORD) {
            mariadb = MariaDbCapabilities::empty();
        }
        Some(Self {
            version: first.server_version.clone(),
            charset: first.charset,
            capabilities: caps,
            mariadb_capabilities: mariadb,
            status: StatusFlags::SERVER_STATUS_AUTOCOMMIT,
        })
    }
}

/// The current profile, replaced as probes answer.
#[derive(Debug)]
pub struct ProfileCell(RwLock<Arc<ServerProfile>>);

impl ProfileCell {
    pub(super) fn new(p: ServerProfile) -> Self {
        Self(RwLock::new(Arc::new(p)))
    }

    /// The profile in force.
    pub fn get(&self) -> Arc<ServerProfile> {
        Arc::clone(&self.0.read().unwrap_or_else(|e| e.into_inner()))
    }

    fn set(&self, p: ServerProfile) {
        *self.0.write().unwrap_or_else(|e| e.into_inner()) = Arc::new(p);
    }
}

/// Probes every backend's greeting; repeats for those that did not answer
/// every `probe_interval_ms` until all have.
pub(super) async fn probe_until_known(shared: Arc<Shared>) {
    let state = shared.state();
    let addrs: Vec<_> = state.pools.backends().map(|b| b.addr).collect();
    let mut answers: Vec<Option<Greeting>> = vec![None; addrs.len()];
    let timeout = state.config.connect_timeout();
    loop {
        let pending: Vec<usize> = (0..addrs.len()).filter(|&i| answers[i].is_none()).collect();
        let results = probe_all(pending.iter().map(|&i| addrs[i]), timeout).await;
        for (&i, r) in pending.iter().zip(results) {
            match r {
                Ok(g) => {
                    debug!(backend = %addrs[i], version = %g.server_version, "probed backend");
                    answers[i] = Some(g);
                }
                Err(e) => debug!(backend = %addrs[i], error = %e, "probe failed"),
            }
        }
        let known: Vec<Greeting> = answers.iter().flatten().cloned().collect();
        if let Some(p) = ServerProfile::from_greetings(&known) {
            if *shared.profile.get() != p {
                info!(version = %p.version, charset = p.charset, backends = known.len(), "presenting the backends' greeting");
                shared.profile.set(p);
            }
        } else {
            warn!("no backend answered yet; greeting clients with the configured default version");
        }
        if known.len() == addrs.len() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(state.config.probe_interval_ms)).await;
    }
}

/// Probes `addrs` concurrently.
async fn probe_all(
    addrs: impl Iterator<Item = std::net::SocketAddr>,
    timeout: Duration,
) -> Vec<Result<Greeting, backend::BackendError>> {
    let handles: Vec<_> = addrs
        .map(|a| tokio::spawn(backend::probe(a, timeout)))
        .collect();
    let mut out = Vec::with_capacity(handles.len());
    for h in handles {
        out.push(h.await.unwrap_or(Err(backend::BackendError::Timeout)));
    }
    out
}
