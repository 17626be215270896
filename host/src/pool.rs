//! Backends and pools: which backends exist, how many sessions each serves,
//! which of them are failing, and which one a new session goes to.
//!
//! The set of pools is immutable once built; live figures are atomics. Until
//! full health checks exist, a backend is "failing" from a failed connect or
//! login attempt until it answers again: either a later login attempt
//! succeeds (failing backends are tried last, never skipped) or the recovery
//! loop ([`recover_failing`]) reads its greeting.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicUsize, Ordering};
use std::time::Duration;

use crate::config::{Balance, Config};

/// One backend server.
#[derive(Debug)]
pub struct Backend {
    /// Its address.
    pub addr: SocketAddr,
    active: AtomicU32,
    failing: AtomicBool,
}

impl Backend {
    fn new(addr: SocketAddr) -> Self {
        Self {
            addr,
            active: AtomicU32::new(0),
            failing: AtomicBool::new(false),
        }
    }

    /// Sessions currently assigned to this backend (including logins in
    /// progress).
    pub fn active_sessions(&self) -> u32 {
        self.active.load(Ordering::Relaxed)
    }

    /// Whether the last attempt to connect or log in failed.
    pub fn is_failing(&self) -> bool {
        self.failing.load(Ordering::Relaxed)
    }

    /// Records the outcome of a connect/login attempt. Returns whether the
    /// state changed.
    pub fn mark_failing(&self, failing: bool) -> bool {
        self.failing.swap(failing, Ordering::Relaxed) != failing
    }
}

/// A session's claim on a backend: counted in its active sessions until
/// dropped.
#[derive(Debug)]
pub struct BackendLease {
    backend: Arc<Backend>,
}

impl BackendLease {
    fn new(backend: Arc<Backend>) -> Self {
        backend.active.fetch_add(1, Ordering::Relaxed);
        Self { backend }
    }

    /// The backend.
    pub fn backend(&self) -> &Arc<Backend> {
        &self.backend
    }
}

impl Drop for BackendLease {
    fn drop(&mut self) {
        self.backend.active.fetch_sub(1, Ordering::Relaxed);
    }
}

/// A named set of interchangeable backends.
#[derive(Debug)]
pub struct Pool {
    /// The pool's name.
    pub name: String,
    /// Its backends, in configuration order.
    pub backends: Vec<Arc<Backend>>,
    balance: Balance,
    next: AtomicUsize,
}

/// Live figures of one pool.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PoolStatus {
    /// The pool's name.
    pub name: String,
    /// Backends not currently failing.
    pub healthy_backends: u32,
    /// All backends.
    pub total_backends: u32,
    /// Sessions assigned to the pool's backends.
    pub active_sessions: u32,
    /// Largest replication lag, when measured (not yet).
    pub max_lag_ms: Option<u64>,
}

impl Pool {
    fn new(name: String, addrs: &[SocketAddr], balance: Balance) -> Self {
        Self {
            name,
            backends: addrs.iter().map(|a| Arc::new(Backend::new(*a))).collect(),
            balance,
            next: AtomicUsize::new(0),
        }
    }

    /// The backends in the order a new session should try them: healthy
    /// ones first, by fewest active sessions, ties in round-robin order;
    /// failing ones last.
    pub fn candidates(&self) -> Vec<Arc<Backend>> {
        let n = self.backends.len();
        let start = self.next.fetch_add(1, Ordering::Relaxed) % n.max(1);
        let mut order: Vec<Arc<Backend>> = (0..n)
            .map(|i| Arc::clone(&self.backends[(start + i) % n]))
            .collect();
        match self.balance {
            Balance::LeastConnections => {
                // A stable sort keeps the rotated order among equals.
                order.sort_by_key(|b| (b.is_failing(), b.active_sessions()));
            }
        }
        order
    }

    /// Claims `backend` for a session.
    pub fn lease(&self, backend: &Arc<Backend>) -> BackendLease {
        BackendLease::new(Arc::clone(backend))
    }

    /// Live figures.
    pub fn status(&self) -> PoolStatus {
        PoolStatus {
            name: self.name.clone(),
            healthy_backends: self.backends.iter().filter(|b| !b.is_failing()).count() as u32,
            total_backends: self.backends.len() as u32,
            active_sessions: self.backends.iter().map(|b| b.active_sessions()).sum(),
            max_lag_ms: None,
        }
    }
}

/// Every configured pool.
#[derive(Debug)]
pub struct Pools {
    pools: BTreeMap<String, Arc<Pool>>,
}

impl Pools {
    /// Builds the pools of `config`.
    pub fn from_config(config: &Config) -> Self {
        let pools = config
            .pools
            .iter()
            .map(|(name, p)| {
                let pool = Pool::new(name.clone(), p.backends.get_ref(), p.balance);
                (name.clone(), Arc::new(pool))
            })
            .collect();
        Self { pools }
    }

    /// The pool called `name`.
    pub fn get(&self, name: &str) -> Option<&Arc<Pool>> {
        self.pools.get(name)
    }

    /// Every pool, by name.
    pub fn iter(&self) -> impl Iterator<Item = &Arc<Pool>> {
        self.pools.values()
    }

    /// Every backend of every pool (a backend in two pools appears twice).
    pub fn all_backends(&self) -> impl Iterator<Item = &Arc<Backend>> {
        self.pools.values().flat_map(|p| p.backends.iter())
    }

    /// Live figures of every pool.
    pub fn status(&self) -> Vec<PoolStatus> {
        self.pools.values().map(|p| p.status()).collect()
    }
}

/// Every `interval`, reads the greeting of each failing backend and marks
/// those that answer as healthy again. Runs forever.
pub async fn recover_failing(pools: Arc<Pools>, interval: Duration, timeout: Duration) {
    loop {
        tokio::time::sleep(interval).await;
        for backend in pools.all_backends().filter(|b| b.is_failing()) {
            if crate::backend::probe(backend.addr, timeout).await.is_ok()
                && backend.mark_failing(false)
            {
                tracing::info!(backend = %backend.addr, "backend answers again; back in rotation");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pool(n: u16) -> Pool {
        let addrs: Vec<SocketAddr> = (0..n)
            .map(|i| SocketAddr::from(([127, 0, 0, 1], 3000 + i)))
            .collect();
        Pool::new("p".into(), &addrs, Balance::LeastConnections)
    }

    #[test]
    fn least_connections_with_round_robin_ties() {
        let p = pool(3);
        let mut leases = Vec::new();
        for _ in 0..6 {
            let first = p.candidates().remove(0);
            leases.push(p.lease(&first));
        }
        let counts: Vec<u32> = p.backends.iter().map(|b| b.active_sessions()).collect();
        assert_eq!(counts, vec![2, 2, 2]);
        // Ties rotate even when nothing is leased.
        drop(leases);
        let firsts: Vec<u16> = (0..3).map(|_| p.candidates()[0].addr.port()).collect();
        assert_eq!(firsts.len(), 3);
        let mut sorted = firsts.clone();
        sorted.sort();
        sorted.dedup();
        assert_eq!(sorted.len(), 3, "{firsts:?}");
    }

    #[test]
    fn failing_backends_come_last_and_status_counts() {
        let p = pool(2);
        assert!(p.backends[0].mark_failing(true));
        for _ in 0..4 {
            let c = p.candidates();
            assert_eq!(c[0].addr, p.backends[1].addr);
            assert_eq!(c[1].addr, p.backends[0].addr);
        }
        let _l = p.lease(&p.backends[1]);
        let s = p.status();
        assert_eq!(
            (s.healthy_backends, s.total_backends, s.active_sessions),
            (1, 2, 1)
        );
        drop(_l);
        assert_eq!(p.status().active_sessions, 0);
    }
}
