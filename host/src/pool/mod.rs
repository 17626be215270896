//! Backends and pools: which backends exist, how healthy each one is, how
//! many sessions each serves, and which one a new session goes to.
//!
//! A [`Backend`] is one server, shared by every pool that lists it and kept
//! across configuration reloads (its session count and health carry over).
//! Its health comes from the background checker ([`health`]) and from real
//! logins: a backend that fails one is taken out at once and comes back
//! through the checker. A set of [`Pools`] is immutable; a reload builds a
//! new one from the same backends.

pub mod gtid;
pub mod health;

use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU8, AtomicU32, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, Weak};

use crate::config::{Balance, Config, HealthConfig, Role, WhenAllDown};

/// What the checker knows of a backend's replication.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Lag {
    /// Not measured (no monitor account, or not checked yet).
    Unknown,
    /// The backend replicates from nothing.
    NotReplica,
    /// Replication is configured but a thread is stopped: lag unknown.
    Stopped,
    /// Seconds behind its source.
    Seconds(u64),
}

const LAG_UNKNOWN: u64 = u64::MAX;
const LAG_NOT_REPLICA: u64 = u64::MAX - 1;
const LAG_STOPPED: u64 = u64::MAX - 2;

impl Lag {
    fn encode(self) -> u64 {
        match self {
            Self::Unknown => LAG_UNKNOWN,
            Self::NotReplica => LAG_NOT_REPLICA,
            Self::Stopped => LAG_STOPPED,
            Self::Seconds(s) => s.min(LAG_STOPPED - 1),
        }
    }

    fn decode(v: u64) -> Self {
        match v {
            LAG_UNKNOWN => Self::Unknown,
            LAG_NOT_REPLICA => Self::NotReplica,
            LAG_STOPPED => Self::Stopped,
            s => Self::Seconds(s),
        }
    }
}

/// Consecutive check outcomes, for rise/fall.
#[derive(Debug, Default)]
struct Streak {
    ok: u32,
    failed: u32,
}

/// One backend server.
#[derive(Debug)]
pub struct Backend {
    /// Its address.
    pub addr: SocketAddr,
    active: AtomicU32,
    up: AtomicBool,
    drain: AtomicBool,
    /// 0: unknown, 1: OFF, 2: ON.
    read_only: AtomicU8,
    lag: AtomicU64,
    streak: Mutex<Streak>,
    last_error: Mutex<Option<String>>,
    /// Its replication position as last read (`Gtid_Slave_Pos`).
    gtid_pos: Mutex<Option<gtid::GtidPos>>,
}

impl Backend {
    fn new(addr: SocketAddr) -> Self {
        Self {
            addr,
            active: AtomicU32::new(0),
            up: AtomicBool::new(true),
            drain: AtomicBool::new(false),
            read_only: AtomicU8::new(0),
            lag: AtomicU64::new(LAG_UNKNOWN),
            streak: Mutex::new(Streak::default()),
            last_error: Mutex::new(None),
            gtid_pos: Mutex::new(None),
        }
    }

    /// Sessions currently assigned to this backend (including logins in
    /// progress), from every pool.
    pub fn active_sessions(&self) -> u32 {
        self.active.load(Ordering::Relaxed)
    }

    /// Whether the backend is in service (its checks pass).
    pub fn is_up(&self) -> bool {
        self.up.load(Ordering::Relaxed)
    }

    /// Whether it takes no new sessions (admin drain).
    pub fn is_draining(&self) -> bool {
        self.drain.load(Ordering::Relaxed)
    }

    /// Puts the backend in drain (no new sessions) or takes it out.
    /// Returns whether that changed anything.
    pub fn set_drain(&self, drain: bool) -> bool {
        self.drain.swap(drain, Ordering::Relaxed) != drain
    }

    /// Its `read_only`, when the checker has read it.
    pub fn read_only(&self) -> Option<bool> {
        match self.read_only.load(Ordering::Relaxed) {
            1 => Some(false),
            2 => Some(true),
            _ => None,
        }
    }

    /// Its replication lag as last measured.
    pub fn lag(&self) -> Lag {
        Lag::decode(self.lag.load(Ordering::Relaxed))
    }

    /// The last failure seen, for status pages.
    pub fn last_error(&self) -> Option<String> {
        self.last_error.lock().map_or(None, |e| e.clone())
    }

    /// Its replication position as the last check read it (`None`: not
    /// a replica, no monitor account, or not read yet).
    pub fn gtid_pos(&self) -> Option<gtid::GtidPos> {
        self.gtid_pos.lock().map_or(None, |p| p.clone())
    }

    /// Whether it has applied `gtid`, as far as its last check knows
    /// (`None`: its position is unknown).
    pub fn has_applied(&self, gtid: &gtid::Gtid) -> Option<bool> {
        let pos = self.gtid_pos.lock().ok()?;
        pos.as_ref().map(|p| p.has_applied(gtid))
    }

    /// Records the replication position a check read.
    pub fn set_gtid_pos(&self, pos: Option<gtid::GtidPos>) {
        if let Ok(mut p) = self.gtid_pos.lock() {
            *p = pos;
        }
    }

    /// Records what a check read of replication.
    pub fn set_replication(&self, read_only: Option<bool>, lag: Lag) {
        let ro = match read_only {
            None => 0,
            Some(false) => 1,
            Some(true) => 2,
        };
        self.read_only.store(ro, Ordering::Relaxed);
        self.lag.store(lag.encode(), Ordering::Relaxed);
    }

    /// Records a health check's outcome; the backend changes state only
    /// after `fall` failures or `rise` successes in a row. Returns the new
    /// state when it changed.
    pub fn record_check(&self, result: Result<(), String>, health: &HealthConfig) -> Option<bool> {
        let mut streak = self.streak.lock().unwrap_or_else(|p| p.into_inner());
        let up = self.is_up();
        match result {
            Ok(()) => {
                streak.failed = 0;
                streak.ok = streak.ok.saturating_add(1);
                if !up && streak.ok >= health.rise {
                    self.up.store(true, Ordering::Relaxed);
                    return Some(true);
                }
            }
            Err(e) => {
                streak.ok = 0;
                streak.failed = streak.failed.saturating_add(1);
                if let Ok(mut last) = self.last_error.lock() {
                    *last = Some(e);
                }
                if up && streak.failed >= health.fall {
                    self.up.store(false, Ordering::Relaxed);
                    return Some(false);
                }
            }
        }
        None
    }

    /// A real login could not reach or log in to this backend: it is taken
    /// out at once and comes back only through the checker. Returns whether
    /// it was up.
    pub fn mark_failed(&self, error: String) -> bool {
        let mut streak = self.streak.lock().unwrap_or_else(|p| p.into_inner());
        streak.ok = 0;
        if let Ok(mut last) = self.last_error.lock() {
            *last = Some(error);
        }
        self.up.swap(false, Ordering::Relaxed)
    }
}

/// A session's claim on a backend: counted in its active sessions until
/// dropped.
#[derive(Debug)]
pub struct BackendLease {
    backend: Arc<Backend>,
}

impl BackendLease {
    /// Claims `backend`, unless it already has `max` sessions (0: no limit).
    fn try_new(backend: &Arc<Backend>, max: u32) -> Option<Self> {
        let before = backend.active.fetch_add(1, Ordering::Relaxed);
        if max > 0 && before >= max {
            backend.active.fetch_sub(1, Ordering::Relaxed);
            return None;
        }
        Some(Self {
            backend: Arc::clone(backend),
        })
    }

    /// Claims `backend` whatever its limits (a session's short errand).
    pub fn claim(backend: &Arc<Backend>) -> Self {
        backend.active.fetch_add(1, Ordering::Relaxed);
        Self {
            backend: Arc::clone(backend),
        }
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

/// A backend as a member of one pool.
#[derive(Debug, Clone)]
pub struct Member {
    /// The server.
    pub backend: Arc<Backend>,
    /// Its share under weighted balancing.
    pub weight: u32,
    /// Sessions it takes at most (0: no limit).
    pub max_connections: u32,
}

impl Member {
    fn is_full(&self) -> bool {
        self.max_connections > 0 && self.backend.active_sessions() >= self.max_connections
    }
}

/// How a member stands for a new session.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Standing {
    /// Qualifies.
    Good,
    /// Up, but lagging beyond `max_lag` (or replication stopped): the lag in
    /// seconds, `u64::MAX` when unknown.
    Lagging(u64),
    /// Failing its checks.
    Down,
    /// Never used: drained, full, or the wrong role.
    Excluded,
}

/// A named set of interchangeable backends.
#[derive(Debug)]
pub struct Pool {
    /// The pool's name.
    pub name: String,
    /// Its backends, in configuration order.
    pub members: Vec<Member>,
    balance: Balance,
    role: Role,
    max_lag: Option<u32>,
    when_all_down: WhenAllDown,
    next: AtomicUsize,
    /// Current weights of smooth weighted round-robin.
    wrr: Mutex<Vec<i64>>,
    /// Whether the last choice found no qualifying backend (logged once per
    /// episode).
    all_down: AtomicBool,
    /// TLS towards the backends, if the pool uses it.
    pub tls: Option<crate::backend::BackendTls>,
    /// Backend sessions kept per backend and worker after their clients
    /// quit (0: none).
    pub idle_sessions: u32,
    /// How long a kept backend session may wait for a login.
    pub idle_session_max: std::time::Duration,
    /// For a split pool (no members of its own): the pools it sends writes
    /// and reads to.
    pub split: Option<Arc<Split>>,
    /// For a multiplexed pool with members: its sessions are split
    /// sessions whose writer and reader are this pool.
    own_split: Option<Arc<Split>>,
}

/// What a split pool names: its sessions route statement by statement.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Split {
    /// The pool of the writer.
    pub writer: String,
    /// The pool of the readers.
    pub reader: String,
    /// Reads after the session's own writes wait for readers to apply them.
    pub causal_reads: bool,
    /// How long a read may wait on a reader for the session's last write.
    pub causal_wait: std::time::Duration,
    /// Its sessions share backend sessions between statements.
    pub multiplex: bool,
    /// How long a statement waits for a backend session of a full pool.
    pub multiplex_wait: std::time::Duration,
}

/// Live figures of one pool.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PoolStatus {
    /// The pool's name.
    pub name: String,
    /// Backends that qualify for a new session now.
    pub healthy_backends: u32,
    /// All backends.
    pub total_backends: u32,
    /// Sessions assigned to the pool's backends.
    pub active_sessions: u32,
    /// Largest replication lag among backends that are up, when measured.
    pub max_lag_ms: Option<u64>,
}

impl Pool {
    fn new(name: String, members: Vec<Member>, config: &crate::config::PoolConfig) -> Self {
        let n = members.len();
        let own_split = (config.multiplex && config.split().is_none()).then(|| {
            Arc::new(Split {
                writer: name.clone(),
                reader: name.clone(),
                causal_reads: false,
                causal_wait: std::time::Duration::ZERO,
                multiplex: true,
                multiplex_wait: std::time::Duration::from_millis(config.multiplex_wait_ms),
            })
        });
        Self {
            name,
            members,
            balance: config.balance,
            role: config.role,
            max_lag: config.max_lag,
            when_all_down: config.when_all_down,
            next: AtomicUsize::new(0),
            wrr: Mutex::new(vec![0; n]),
            all_down: AtomicBool::new(false),
            tls: None,
            idle_sessions: config.idle_sessions,
            idle_session_max: std::time::Duration::from_millis(config.idle_session_ms),
            own_split,
            split: config.split().map(|(writer, reader)| {
                Arc::new(Split {
                    writer: writer.to_owned(),
                    reader: reader.to_owned(),
                    causal_reads: config.causal_reads,
                    causal_wait: std::time::Duration::from_millis(config.causal_wait_ms),
                    multiplex: config.multiplex,
                    multiplex_wait: std::time::Duration::from_millis(config.multiplex_wait_ms),
                })
            }),
        }
    }

    /// What its sessions route statement by statement between, if they
    /// do: a split pool's writer and reader pools, or a multiplexed pool
    /// itself (as both).
    pub fn sessions_split(&self) -> Option<&Arc<Split>> {
        self.split.as_ref().or(self.own_split.as_ref())
    }

    fn standing(&self, m: &Member) -> Standing {
        if m.is_full() {
            return Standing::Excluded;
        }
        self.standing_but_room(m)
    }

    /// How `m` stands, whether or not it has room for another session.
    fn standing_but_room(&self, m: &Member) -> Standing {
        let b = &m.backend;
        if b.is_draining() {
            return Standing::Excluded;
        }
        let role_ok = match self.role {
            Role::Any => true,
            Role::Writer => b.read_only() == Some(false),
            Role::Reader => b.read_only() == Some(true),
        };
        if !role_ok {
            return Standing::Excluded;
        }
        if !b.is_up() {
            return Standing::Down;
        }
        if let Some(max) = self.max_lag {
            match b.lag() {
                Lag::NotReplica => {}
                Lag::Seconds(s) if s <= u64::from(max) => {}
                Lag::Seconds(s) => return Standing::Lagging(s),
                Lag::Stopped | Lag::Unknown => return Standing::Lagging(u64::MAX),
            }
        }
        Standing::Good
    }

    /// The members whose idle backend sessions a multiplexed statement may
    /// borrow: those that qualify, at their `max_connections` or not (an
    /// idle session is counted already), rotated so that borrows spread.
    pub fn borrowable(&self) -> Vec<&Member> {
        let n = self.members.len();
        if n == 0 {
            return Vec::new();
        }
        let start = self.next.fetch_add(1, Ordering::Relaxed) % n;
        (0..n)
            .map(|k| &self.members[(start + k) % n])
            .filter(|m| self.standing_but_room(m) == Standing::Good)
            .collect()
    }

    /// Whether a new backend session must wait for room: no member
    /// qualifies, and one would but for its `max_connections`.
    pub fn is_full(&self) -> bool {
        let (mut full, mut good) = (false, false);
        for m in &self.members {
            match self.standing_but_room(m) {
                Standing::Good if m.is_full() => full = true,
                Standing::Good => good = true,
                _ => {}
            }
        }
        full && !good
    }

    /// The backends a new session should try, in order: those that qualify,
    /// by the pool's balancing method; when none does, by `when_all_down`
    /// (the least bad first, or none). Retries take the next one.
    pub fn candidates(&self) -> Vec<Member> {
        let standings: Vec<Standing> = self.members.iter().map(|m| self.standing(m)).collect();
        let good: Vec<usize> = (0..self.members.len())
            .filter(|&i| standings[i] == Standing::Good)
            .collect();
        if !good.is_empty() {
            if self.all_down.swap(false, Ordering::Relaxed) {
                tracing::info!(pool = %self.name, "pool has qualifying backends again");
            }
            return self
                .order(&good)
                .into_iter()
                .map(|i| self.members[i].clone())
                .collect();
        }
        if !self.all_down.swap(true, Ordering::Relaxed) {
            tracing::warn!(
                pool = %self.name,
                when_all_down = ?self.when_all_down,
                "no backend of the pool qualifies (down, lagging, drained, full or wrong role)"
            );
        }
        match self.when_all_down {
            WhenAllDown::Refuse => Vec::new(),
            WhenAllDown::LeastBad => {
                let mut rest: Vec<usize> = (0..self.members.len())
                    .filter(|&i| standings[i] != Standing::Excluded)
                    .collect();
                rest.sort_by_key(|&i| (standings[i], self.members[i].backend.active_sessions()));
                rest.into_iter().map(|i| self.members[i].clone()).collect()
            }
        }
    }

    /// Orders the qualifying members `good` (indexes) by the balancing
    /// method: the first is the choice, the rest are retries.
    fn order(&self, good: &[usize]) -> Vec<usize> {
        let n = good.len();
        let start = self.next.fetch_add(1, Ordering::Relaxed) % n;
        let mut rotated: Vec<usize> = (0..n).map(|k| good[(start + k) % n]).collect();
        let active = |i: usize| self.members[i].backend.active_sessions();
        match self.balance {
            Balance::LeastConnections => {
                // A stable sort keeps the rotated order among equals.
                rotated.sort_by_key(|&i| active(i));
            }
            Balance::RoundRobin => {}
            Balance::Random => {
                use rand::seq::SliceRandom;
                let mut rng = rand::rng();
                rotated.shuffle(&mut rng);
                if n >= 2 && active(rotated[1]) < active(rotated[0]) {
                    rotated.swap(0, 1);
                }
            }
            Balance::Weighted => {
                // Smooth weighted round-robin (as nginx): every member gains
                // its weight, the highest is chosen and pays the total.
                let mut current = self.wrr.lock().unwrap_or_else(|p| p.into_inner());
                let total: i64 = good
                    .iter()
                    .map(|&i| i64::from(self.members[i].weight))
                    .sum();
                let mut best = good[0];
                for &i in good {
                    current[i] += i64::from(self.members[i].weight);
                    if current[i] > current[best] {
                        best = i;
                    }
                }
                current[best] -= total;
                rotated.retain(|&i| i != best);
                rotated.sort_by_key(|&i| std::cmp::Reverse(self.members[i].weight));
                rotated.insert(0, best);
            }
        }
        rotated
    }

    /// Claims `member` for a session, unless it has reached its
    /// `max_connections` meanwhile.
    pub fn lease(&self, member: &Member) -> Option<BackendLease> {
        BackendLease::try_new(&member.backend, member.max_connections)
    }

    /// Its backends that are up but behind its `max_lag` (or whose
    /// replication stopped or cannot be read): out of new sessions.
    pub fn lagging(&self) -> u32 {
        self.members
            .iter()
            .filter(|m| matches!(self.standing(m), Standing::Lagging(_)))
            .count() as u32
    }

    /// Live figures.
    pub fn status(&self) -> PoolStatus {
        let max_lag_ms = self
            .members
            .iter()
            .filter(|m| m.backend.is_up())
            .filter_map(|m| match m.backend.lag() {
                Lag::Seconds(s) => Some(s.saturating_mul(1000)),
                Lag::NotReplica => Some(0),
                Lag::Stopped | Lag::Unknown => None,
            })
            .max();
        PoolStatus {
            name: self.name.clone(),
            healthy_backends: self
                .members
                .iter()
                .filter(|m| self.standing(m) == Standing::Good)
                .count() as u32,
            total_backends: self.members.len() as u32,
            active_sessions: self
                .members
                .iter()
                .map(|m| m.backend.active_sessions())
                .sum(),
            max_lag_ms,
        }
    }
}

/// Every backend ever configured that still exists: reloads find their
/// backends here, so that session counts and health carry over.
#[derive(Debug, Default)]
pub struct Registry {
    backends: Mutex<HashMap<SocketAddr, Weak<Backend>>>,
}

impl Registry {
    /// The backend at `addr`, created if needed.
    fn get(&self, addr: SocketAddr) -> Arc<Backend> {
        let mut map = self.backends.lock().unwrap_or_else(|p| p.into_inner());
        map.retain(|_, w| w.strong_count() > 0);
        if let Some(b) = map.get(&addr).and_then(Weak::upgrade) {
            return b;
        }
        let b = Arc::new(Backend::new(addr));
        map.insert(addr, Arc::downgrade(&b));
        b
    }

    /// Backends that still exist (configured, or serving sessions after
    /// being removed from the configuration).
    pub fn alive(&self) -> Vec<Arc<Backend>> {
        let map = self.backends.lock().unwrap_or_else(|p| p.into_inner());
        let mut v: Vec<Arc<Backend>> = map.values().filter_map(Weak::upgrade).collect();
        v.sort_by_key(|b| b.addr);
        v
    }
}

/// Every configured pool.
#[derive(Debug)]
pub struct Pools {
    pools: BTreeMap<String, Arc<Pool>>,
    backends: BTreeMap<SocketAddr, Arc<Backend>>,
}

impl Pools {
    /// Builds the pools of `config` from the backends in `registry`.
    pub fn from_config(config: &Config, registry: &Registry) -> Self {
        let mut backends = BTreeMap::new();
        let pools = config
            .pools
            .iter()
            .map(|(name, p)| {
                let members = p
                    .backends
                    .get_ref()
                    .iter()
                    .map(|b| {
                        let backend = registry.get(b.addr());
                        backends.insert(b.addr(), Arc::clone(&backend));
                        Member {
                            backend,
                            weight: b.weight(),
                            max_connections: b.max_connections(),
                        }
                    })
                    .collect();
                (name.clone(), Arc::new(Pool::new(name.clone(), members, p)))
            })
            .collect();
        Self { pools, backends }
    }

    /// Sets up each pool's TLS towards its backends (reads CA files).
    /// Call before the pools are shared.
    pub fn attach_tls(&mut self, config: &Config) -> anyhow::Result<()> {
        for (name, pool) in self.pools.iter_mut() {
            let Some(pc) = config.pools.get(name) else {
                continue;
            };
            let tls = crate::backend::BackendTls::from_config(pc)
                .map_err(|e| anyhow::anyhow!("pool '{name}': {e:#}"))?;
            if let Some(p) = Arc::get_mut(pool) {
                p.tls = tls;
            }
        }
        Ok(())
    }

    /// The pool called `name`.
    pub fn get(&self, name: &str) -> Option<&Arc<Pool>> {
        self.pools.get(name)
    }

    /// Every pool, by name.
    pub fn iter(&self) -> impl Iterator<Item = &Arc<Pool>> {
        self.pools.values()
    }

    /// Every configured backend, once, by address.
    pub fn backends(&self) -> impl Iterator<Item = &Arc<Backend>> {
        self.backends.values()
    }

    /// The TLS to speak to the backend at `addr` outside a client's session
    /// (health checks, loading accounts): that of a pool it is in, one that
    /// requires TLS first.
    pub fn tls_for(&self, addr: SocketAddr) -> Option<&crate::backend::BackendTls> {
        let mut found = None;
        for pool in self.pools.values() {
            let Some(tls) = &pool.tls else { continue };
            if !pool.members.iter().any(|m| m.backend.addr == addr) {
                continue;
            }
            if tls.required {
                return Some(tls);
            }
            found.get_or_insert(tls);
        }
        found
    }

    /// The configured backend at `addr`.
    pub fn backend(&self, addr: SocketAddr) -> Option<&Arc<Backend>> {
        self.backends.get(&addr)
    }

    /// Live figures of every pool.
    pub fn status(&self) -> Vec<PoolStatus> {
        self.pools.values().map(|p| self.status_of(p)).collect()
    }

    /// Live figures of `pool`; a split pool's are those of its writer and
    /// reader pools together.
    pub fn status_of(&self, pool: &Pool) -> PoolStatus {
        let Some(split) = &pool.split else {
            return pool.status();
        };
        let mut status = PoolStatus {
            name: pool.name.clone(),
            healthy_backends: 0,
            total_backends: 0,
            active_sessions: 0,
            max_lag_ms: None,
        };
        for side in [&split.writer, &split.reader] {
            let Some(p) = self.get(side) else { continue };
            let s = p.status();
            status.healthy_backends += s.healthy_backends;
            status.total_backends += s.total_backends;
            status.active_sessions += s.active_sessions;
            status.max_lag_ms = status.max_lag_ms.max(s.max_lag_ms);
        }
        status
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::PoolConfig;

    fn pool_with(n: u16, toml_extra: &str) -> Pool {
        let backends: Vec<String> = (0..n)
            .map(|i| format!("\"127.0.0.1:{}\"", 3000 + i))
            .collect();
        pool_from(&format!(
            "backends = [{}]\n{toml_extra}",
            backends.join(",")
        ))
    }

    /// A pool from its TOML table.
    fn pool_from(text: &str) -> Pool {
        let config: PoolConfig = toml::from_str(text).unwrap();
        let registry = Registry::default();
        let members = config
            .backends
            .get_ref()
            .iter()
            .map(|b| Member {
                backend: registry.get(b.addr()),
                weight: b.weight(),
                max_connections: b.max_connections(),
            })
            .collect();
        Pool::new("p".into(), members, &config)
    }

    fn first_port(p: &Pool) -> u16 {
        p.candidates()[0].backend.addr.port()
    }

    #[test]
    fn least_connections_with_round_robin_ties() {
        let p = pool_with(3, "");
        let mut leases = Vec::new();
        for _ in 0..6 {
            let first = p.candidates().remove(0);
            leases.push(p.lease(&first).unwrap());
        }
        let counts: Vec<u32> = p
            .members
            .iter()
            .map(|m| m.backend.active_sessions())
            .collect();
        assert_eq!(counts, vec![2, 2, 2]);
        // Ties rotate even when nothing is leased.
        drop(leases);
        let mut firsts: Vec<u16> = (0..3).map(|_| first_port(&p)).collect();
        firsts.sort();
        firsts.dedup();
        assert_eq!(firsts.len(), 3, "{firsts:?}");
    }

    #[test]
    fn down_backends_are_avoided_and_least_bad_uses_them_last() {
        let p = pool_with(2, "");
        assert!(p.members[0].backend.mark_failed("refused".into()));
        for _ in 0..4 {
            let c = p.candidates();
            assert_eq!(c.len(), 1);
            assert_eq!(c[0].backend.addr.port(), 3001);
        }
        let _l = p.lease(&p.members[1]).unwrap();
        let s = p.status();
        assert_eq!(
            (s.healthy_backends, s.total_backends, s.active_sessions),
            (1, 2, 1)
        );
        drop(_l);
        assert_eq!(p.status().active_sessions, 0);
        // All down: least-bad still offers them; refuse offers none.
        p.members[1].backend.mark_failed("refused".into());
        assert_eq!(p.candidates().len(), 2);
        let strict = pool_with(1, "when_all_down = \"refuse\"");
        strict.members[0].backend.mark_failed("x".into());
        assert!(strict.candidates().is_empty());
    }

    #[test]
    fn rise_and_fall_need_streaks() {
        let p = pool_with(1, "");
        let b = &p.members[0].backend;
        let h = HealthConfig::default(); // fall 3, rise 2
        assert_eq!(b.record_check(Err("x".into()), &h), None);
        assert_eq!(b.record_check(Err("x".into()), &h), None);
        assert_eq!(b.record_check(Ok(()), &h), None);
        assert!(b.is_up(), "a success resets the failure streak");
        for _ in 0..2 {
            assert_eq!(b.record_check(Err("x".into()), &h), None);
        }
        assert_eq!(b.record_check(Err("gone".into()), &h), Some(false));
        assert_eq!(b.last_error().as_deref(), Some("gone"));
        assert_eq!(b.record_check(Ok(()), &h), None);
        assert_eq!(b.record_check(Ok(()), &h), Some(true));
    }

    #[test]
    fn lag_and_roles_filter() {
        let p = pool_with(3, "max_lag = 10");
        let [a, b, c] = [0, 1, 2].map(|i| Arc::clone(&p.members[i].backend));
        a.set_replication(Some(true), Lag::Seconds(3));
        b.set_replication(Some(true), Lag::Stopped);
        c.set_replication(Some(true), Lag::Seconds(60));
        for _ in 0..5 {
            let cands = p.candidates();
            assert_eq!(cands.len(), 1);
            assert_eq!(cands[0].backend.addr, a.addr);
        }
        assert_eq!(p.status().healthy_backends, 1);
        assert_eq!(p.status().max_lag_ms, Some(60_000));
        // Every replica lagging: least bad first (measured lag before unknown).
        a.set_replication(Some(true), Lag::Seconds(30));
        let order: Vec<SocketAddr> = p.candidates().iter().map(|m| m.backend.addr).collect();
        assert_eq!(order, vec![a.addr, c.addr, b.addr]);

        let w = pool_with(2, "role = \"writer\"");
        assert!(w.candidates().is_empty(), "read_only unknown: no writer");
        w.members[0]
            .backend
            .set_replication(Some(true), Lag::Unknown);
        w.members[1]
            .backend
            .set_replication(Some(false), Lag::NotReplica);
        assert_eq!(first_port(&w), 3001);
        // Promotion: the roles swap, so does the writer.
        w.members[0]
            .backend
            .set_replication(Some(false), Lag::NotReplica);
        w.members[1]
            .backend
            .set_replication(Some(true), Lag::NotReplica);
        for _ in 0..3 {
            assert_eq!(w.candidates().len(), 1);
            assert_eq!(first_port(&w), 3000);
        }
    }

    #[test]
    fn balancing_methods() {
        let rr = pool_with(3, "balance = \"round-robin\"");
        let _busy = rr.lease(&rr.members[0]).unwrap();
        let firsts: Vec<u16> = (0..6).map(|_| first_port(&rr)).collect();
        assert_eq!(firsts, vec![3000, 3001, 3002, 3000, 3001, 3002]);

        let text = r#"balance = "weighted""#;
        let backends = r#"backends = ["127.0.0.1:3000", { addr = "127.0.0.1:3001", weight = 3 }]"#;
        let w = pool_from(&format!("{backends}\n{text}"));
        let firsts: Vec<u16> = (0..8).map(|_| first_port(&w)).collect();
        assert_eq!(
            firsts.iter().filter(|&&p| p == 3001).count(),
            6,
            "{firsts:?}"
        );
        // Smooth: never three of the light one in a row, spread evenly.
        assert!(firsts.windows(4).all(|w| w.contains(&3001)), "{firsts:?}");

        let r = pool_with(2, "balance = \"random\"");
        let _l: Vec<_> = (0..5).map(|_| r.lease(&r.members[0]).unwrap()).collect();
        // Power of two choices among two: always the less loaded one.
        for _ in 0..20 {
            assert_eq!(first_port(&r), 3001);
        }
    }

    #[test]
    fn drain_and_max_connections_exclude() {
        let p = pool_with(2, "");
        p.members[0].backend.set_drain(true);
        assert!(p.candidates().iter().all(|m| m.backend.addr.port() == 3001));
        p.members[0].backend.set_drain(false);
        let p = pool_from(r#"backends = [{ addr = "127.0.0.1:4000", max_connections = 1 }]"#);
        let first = p.candidates().remove(0);
        let lease = p.lease(&first).unwrap();
        assert!(p.lease(&first).is_none());
        assert!(
            p.candidates().is_empty(),
            "a full backend is never least bad"
        );
        drop(lease);
        assert_eq!(p.candidates().len(), 1);
    }

    #[test]
    fn registry_keeps_backends_across_rebuilds() {
        let registry = Registry::default();
        let a = registry.get("127.0.0.1:1".parse().unwrap());
        let again = registry.get("127.0.0.1:1".parse().unwrap());
        assert!(Arc::ptr_eq(&a, &again));
        drop((a, again));
        assert!(registry.alive().is_empty());
    }
}
