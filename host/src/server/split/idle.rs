//! Backend sessions of multiplexed split pools between statements: a
//! client session at rest gives its backend sessions back here, and its
//! next statement (or another client session's) borrows one.
//!
//! Idle sessions live per worker thread (a socket stays with the event
//! loop that registered it, and taking one needs no lock), by [`Key`]: the
//! same pool, backend, user, database and session flags and character set,
//! so that a borrowed session differs from the borrower's at most in the
//! session state carried ([`super::route::Carried`]), which the borrower
//! compares and gives it ([`super::SplitSession`]). Each keeps its lease:
//! the backend's `max_connections` counts it. Each worker closes those that
//! waited `idle_session_ms`, and all of them when it stops.

use std::cell::RefCell;
use std::collections::HashMap;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use tokio::sync::Notify;

use super::Side;
use super::route::Carried;
use crate::metrics::Metrics;
use crate::server::reuse::Shape;

/// How often a worker looks for idle sessions that waited too long, or
/// that another worker's waiting statements need the room of.
const SWEEP_INTERVAL: Duration = Duration::from_millis(100);

/// What makes two backend sessions interchangeable for a client session,
/// up to the carried session state.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub(super) struct Key {
    /// The pool it was opened in.
    pub pool: String,
    /// The backend.
    pub backend: SocketAddr,
    /// The user it is logged in as.
    pub user: String,
    /// Its current database.
    pub db: Option<String>,
    /// The client-side choices that shape the session's flags.
    pub shape: Shape,
    /// The character set of its login.
    pub charset: u8,
}

/// A backend session between statements.
pub(in crate::server) struct Idle {
    /// The session.
    pub(super) side: Box<Side>,
    /// The session state it has: the last borrower's (`None`: not known,
    /// it is reset before use).
    pub(super) carried: Option<Carried>,
    /// Its `LAST_INSERT_ID()`.
    pub(super) last_insert_id: u64,
    expires: Instant,
}

impl Idle {
    /// `side`, with `carried` and `last_insert_id`, kept for `max`.
    pub(super) fn new(
        side: Box<Side>,
        carried: Option<Carried>,
        last_insert_id: u64,
        max: Duration,
    ) -> Self {
        Self {
            side,
            carried,
            last_insert_id,
            expires: Instant::now() + max,
        }
    }
}

/// Statements waiting for a backend session, on every worker.
static WAITING: AtomicUsize = AtomicUsize::new(0);
/// Woken when a worker closed an idle session for another worker's waiter.
static FREED: Notify = Notify::const_new();

thread_local! {
    /// Statements waiting for a backend session on this worker, by pool.
    static WAITING_HERE: RefCell<HashMap<String, usize>> = RefCell::default();
    /// This worker's idle sessions.
    static IDLE: RefCell<HashMap<Key, Vec<Idle>>> = RefCell::default();
    /// Woken when a session is given back on this worker (statements that
    /// wait for one).
    static RETURNED: RefCell<HashMap<String, Arc<Notify>>> = RefCell::default();
}

/// The notifier of `pool`'s waiting statements on this worker.
fn returned_of(pool: &str) -> Arc<Notify> {
    RETURNED.with_borrow_mut(|r| Arc::clone(r.entry(pool.to_owned()).or_default()))
}

/// Wakes the first statement of `pool` waiting on this worker.
fn wake(pool: &str) {
    if queued(pool) {
        returned_of(pool).notify_one();
    }
}

/// Whether statements wait on other workers and none on this one: idle
/// sessions here would hold room they need (a socket cannot move to
/// another worker; its lease can be given up).
fn others_wait() -> bool {
    WAITING.load(Ordering::Relaxed) > 0 && WAITING_HERE.with_borrow(HashMap::is_empty)
}

/// Whether statements of `pool` wait on this worker: a newcomer queues
/// behind them (first come, first served).
pub(super) fn queued(pool: &str) -> bool {
    WAITING_HERE.with_borrow(|w| w.contains_key(pool))
}

/// A waiting statement of `pool` was served: the next one in line looks
/// again (there may be room or an idle session for it too).
pub(super) fn pass_on(pool: &str) {
    wake(pool);
}

/// A backend session was closed (its room is free): a waiting statement
/// may open one.
pub(super) fn room_freed(pool: &str) {
    wake(pool);
    FREED.notify_waiters();
}

/// Gives `idle` back under `key` (or closes it when another worker's
/// statement waits for room).
pub(super) fn put(key: Key, idle: Idle, metrics: &Metrics) {
    metrics.multiplex.releases.fetch_add(1, Ordering::Relaxed);
    if others_wait() {
        tokio::spawn(quit(*idle.side));
        FREED.notify_waiters();
        return;
    }
    let pool = key.pool.clone();
    IDLE.with_borrow_mut(|m| m.entry(key).or_default().push(idle));
    metrics.multiplex.idle.fetch_add(1, Ordering::Relaxed);
    wake(&pool);
}

/// An idle session under `key`: the most recently returned whose carried
/// state is `carried` if there is one (nothing to give it), else the most
/// recently returned.
pub(super) fn take(key: &Key, carried: &Carried, metrics: &Metrics) -> Option<Idle> {
    let now = Instant::now();
    IDLE.with_borrow_mut(|m| {
        let list = m.get_mut(key)?;
        let found = loop {
            let i = list
                .iter()
                .rposition(|idle| idle.carried.as_ref() == Some(carried) && idle.expires > now)
                .or_else(|| list.iter().rposition(|idle| idle.expires > now));
            let Some(i) = i else {
                break None;
            };
            let idle = list.swap_remove(i);
            metrics.multiplex.idle.fetch_sub(1, Ordering::Relaxed);
            // One its server closed (a restart, `wait_timeout`, a KILL) is
            // let go, and the next one looked at.
            if idle.side.wire.is_quiet() {
                break Some(idle);
            }
            tokio::spawn(quit(*idle.side));
        };
        if list.is_empty() {
            m.remove(key);
        }
        found
    })
}

/// Closes the idle session of `pool` on this worker that was given back
/// longest ago, of any key: a statement whose key has none idle needs its
/// room (the pool is at its `max_connections`). Whether there was one.
pub(super) fn evict(pool: &str, metrics: &Metrics) -> bool {
    let victim = IDLE.with_borrow_mut(|m| {
        let (key, i) = m
            .iter()
            .filter(|(key, _)| key.pool == pool)
            .flat_map(|(key, list)| {
                list.iter()
                    .enumerate()
                    .map(move |(i, idle)| (idle.expires, key, i))
            })
            .min_by_key(|(expires, ..)| *expires)
            .map(|(_, key, i)| (key.clone(), i))?;
        let list = m.get_mut(&key)?;
        let idle = list.remove(i);
        if list.is_empty() {
            m.remove(&key);
        }
        Some(idle)
    });
    let Some(idle) = victim else {
        return false;
    };
    metrics.multiplex.idle.fetch_sub(1, Ordering::Relaxed);
    metrics.multiplex.evicted.fetch_add(1, Ordering::Relaxed);
    // Its room is free at once; the goodbye follows.
    let Side { wire, lease, .. } = *idle.side;
    drop(lease);
    tokio::spawn(quit_wire(wire));
    true
}

/// Waits (as a statement of `pool`) until a session is given back or
/// closed on this worker, or room is made by another (or `deadline`).
/// Waiters on this worker are woken first come, first served.
pub(super) async fn returned(pools: &[&str], deadline: tokio::time::Instant) {
    struct Waiting(Vec<String>);
    impl Drop for Waiting {
        fn drop(&mut self) {
            WAITING.fetch_sub(1, Ordering::Relaxed);
            WAITING_HERE.with_borrow_mut(|w| {
                for pool in &self.0 {
                    if let Some(n) = w.get_mut(pool) {
                        *n -= 1;
                        if *n == 0 {
                            w.remove(pool);
                        }
                    }
                }
            });
        }
    }
    WAITING.fetch_add(1, Ordering::Relaxed);
    WAITING_HERE.with_borrow_mut(|w| {
        for pool in pools {
            *w.entry((*pool).to_owned()).or_default() += 1;
        }
    });
    let _waiting = Waiting(pools.iter().map(|p| (*p).to_owned()).collect());
    let notifies: Vec<Arc<Notify>> = pools.iter().map(|p| returned_of(p)).collect();
    let any = futures_select_all(&notifies);
    let woken = async {
        tokio::select! {
            () = any => {}
            () = FREED.notified() => {}
        }
    };
    let _ = tokio::time::timeout_at(deadline, woken).await;
}

/// Completes when any of `notifies` is notified.
async fn futures_select_all(notifies: &[Arc<Notify>]) {
    let mut waits: Vec<_> = notifies.iter().map(|n| Box::pin(n.notified())).collect();
    std::future::poll_fn(|cx| {
        for w in &mut waits {
            if w.as_mut().poll(cx).is_ready() {
                return std::task::Poll::Ready(());
            }
        }
        std::task::Poll::Pending
    })
    .await;
}

/// Closes idle sessions that waited too long, every second, on this
/// worker.
pub(in crate::server) async fn sweep(metrics: &Metrics) {
    let mut ticks = tokio::time::interval(SWEEP_INTERVAL);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        ticks.tick().await;
        let now = Instant::now();
        let others_wait = others_wait();
        let closed = take_all(|idle| others_wait || idle.expires <= now, metrics);
        if others_wait && !closed.is_empty() {
            FREED.notify_waiters();
        }
        for side in closed {
            tokio::spawn(quit(side));
        }
    }
}

/// Closes every idle session of this worker.
pub(in crate::server) async fn close_all(metrics: &Metrics) {
    for side in take_all(|_| true, metrics) {
        quit(side).await;
    }
}

fn take_all(which: impl Fn(&Idle) -> bool, metrics: &Metrics) -> Vec<Side> {
    let mut out = Vec::new();
    IDLE.with_borrow_mut(|m| {
        for list in m.values_mut() {
            out.extend(
                list.extract_if(.., |idle| which(idle))
                    .map(|idle| *idle.side),
            );
        }
        m.retain(|_, list| !list.is_empty());
    });
    metrics
        .multiplex
        .idle
        .fetch_sub(out.len() as i64, Ordering::Relaxed);
    out
}

/// Ends a backend session: COM_QUIT, then close.
pub(super) async fn quit(side: Side) {
    quit_wire(side.wire).await;
}

async fn quit_wire(mut wire: super::Wire) {
    let _ = tokio::time::timeout(Duration::from_secs(1), async {
        let _ = wire.send(0, &[0x01]).await;
        wire.shutdown().await;
    })
    .await;
}
