//! The listener and the state every session shares.
//!
//! `run` accepts clients, caps them at `max_connections` (further clients get
//! ERR 1040) and spawns one task per session; `session` drives a session
//! through its phases and `relay` moves its bytes afterwards. Around them:
//! the health checker, configuration reloads (SIGHUP, admin endpoint), the
//! admin endpoint itself, systemd notifications and the drain on shutdown.

mod change_user;
mod codes;
mod control;
pub mod fleet;
pub(crate) mod kill;
pub mod limits;
mod login;
mod profile;
mod proxied;
mod relay;
mod reuse;
mod runaway;
mod session;
mod splice;
pub(crate) mod split;
pub mod state;
#[cfg(test)]
mod testing;
pub mod users;
mod watch;

use std::future::Future;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use arc_swap::ArcSwap;
use bytes::BytesMut;
use tokio::io::AsyncWriteExt;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{Notify, Semaphore};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{info, warn};

pub use codes::*;
pub use profile::ServerProfile;
pub use state::State;

use crate::config::Config;
use crate::metrics::{Metrics, Outcome};
use crate::notify;
use crate::pool::Registry;
use crate::protocol::encode_packet;

/// The first connection id Switchyard gives out. A client's `KILL <id>`
/// and `KILL QUERY <id>` go to its backend, which knows only its own thread
/// ids; those count up from 1 with every connection since the server
/// started. Switchyard's ids start at 2^30 so that a greeting's id does not
/// name an unrelated backend thread: the backend answers 1094 (unknown
/// thread id) instead of killing someone else's query. The id that kills
/// through Switchyard is the backend's own, `CONNECTION_ID()`.
pub const FIRST_CONNECTION_ID: u32 = 1 << 30;

/// The `n`th connection id, within `FIRST_CONNECTION_ID..=u32::MAX`.
fn connection_id_at(n: u32) -> u32 {
    FIRST_CONNECTION_ID + n % (u32::MAX - FIRST_CONNECTION_ID + 1)
}

/// Everything sessions share: the state in force (swapped on reload) and
/// what outlives reloads.
#[derive(Debug)]
pub struct Shared {
    state: ArcSwap<State>,
    /// Every backend that still exists, for reloads and status.
    pub registry: Registry,
    /// Process-wide figures.
    pub metrics: Metrics,
    /// Failed logins per client address.
    pub throttle: limits::Throttle,
    /// Connections per client address that are still logging in.
    pub pending_logins: Arc<limits::PendingLogins>,
    /// Sessions per user.
    pub user_sessions: Arc<limits::UserSessions>,
    /// Accounts loaded from the primary.
    pub loaded_users: users::LoadedUsers,
    /// What clients are greeted with.
    pub profile: profile::ProfileCell,
    /// `caching_sha2_password` fast-path verifiers.
    pub sha2_cache: crate::auth::caching_sha2::Cache,
    /// The RSA key generated for `caching_sha2_password`, when no
    /// `[auth] rsa_private_key` is configured.
    generated_rsa: tokio::sync::OnceCell<Arc<crate::auth::caching_sha2::RsaKey>>,
    /// RSA decryptions that may run at once (each on a blocking thread).
    rsa_permits: Arc<tokio::sync::Semaphore>,
    config_path: Option<PathBuf>,
    /// Logged-in sessions by greeting connection id, for KILL.
    sessions: Arc<kill::Registry>,
    health_wake: Arc<Notify>,
    reload_lock: tokio::sync::Mutex<()>,
    /// Cancelled on SIGTERM/SIGINT: listeners close, sessions that wait
    /// for nothing close, the others finish their command first.
    stopping: CancellationToken,
    /// Cancelled by a second signal or at `shutdown_timeout_ms`: every
    /// session closes now.
    force_stop: CancellationToken,
    started: Instant,
    /// Per worker thread: milliseconds since start at its last heartbeat.
    heartbeats: Vec<AtomicU64>,
    /// Set by `POST /drain`: not ready for new clients (still serving).
    draining: std::sync::atomic::AtomicBool,
    /// The fleet store, with `[fleet]`.
    pub fleet: Option<fleet::Fleet>,
}

impl Shared {
    /// Shared state for `config` (read from `config_path`, which reloads
    /// read again). Blocking: compiles the policy.
    pub fn new(config: Config, config_path: Option<PathBuf>) -> anyhow::Result<Self> {
        let registry = Registry::default();
        let profile = profile::ProfileCell::new(ServerProfile::fallback(&config));
        let threads = config.threads();
        let fleet = fleet::Fleet::of(&config)?;
        let state = State::build(config, &registry, None)?;
        // Generated now, off the event loops, when it will be needed; a
        // reload that starts needing it generates it at the first use.
        let generated_rsa = if state.rsa_key.is_none() && state.config.uses_caching_sha2() {
            let key = crate::auth::caching_sha2::RsaKey::generate()?;
            info!("generated an RSA key pair for caching_sha2_password");
            tokio::sync::OnceCell::new_with(Some(Arc::new(key)))
        } else {
            tokio::sync::OnceCell::new()
        };
        Ok(Self {
            state: ArcSwap::from_pointee(state),
            registry,
            metrics: Metrics::default(),
            throttle: limits::Throttle::default(),
            pending_logins: Arc::default(),
            user_sessions: Arc::default(),
            loaded_users: users::LoadedUsers::default(),
            profile,
            sha2_cache: Default::default(),
            generated_rsa,
            rsa_permits: Arc::new(tokio::sync::Semaphore::new(threads)),
            config_path,
            sessions: Arc::default(),
            health_wake: Arc::new(Notify::new()),
            reload_lock: tokio::sync::Mutex::new(()),
            stopping: CancellationToken::new(),
            force_stop: CancellationToken::new(),
            started: Instant::now(),
            heartbeats: (0..threads).map(|_| AtomicU64::new(0)).collect(),
            draining: std::sync::atomic::AtomicBool::new(false),
            fleet,
        })
    }

    /// The state in force.
    pub fn state(&self) -> Arc<State> {
        self.state.load_full()
    }

    /// Time since the process started serving.
    pub fn uptime(&self) -> Duration {
        self.started.elapsed()
    }

    /// The RSA key `caching_sha2_password` clients encrypt with: the
    /// configured one, else the generated one (generated now if need be).
    pub async fn rsa_key(
        &self,
        state: &State,
    ) -> anyhow::Result<Arc<crate::auth::caching_sha2::RsaKey>> {
        if let Some(k) = &state.rsa_key {
            return Ok(Arc::clone(k));
        }
        self.generated_rsa
            .get_or_try_init(|| async {
                let key = tokio::task::spawn_blocking(crate::auth::caching_sha2::RsaKey::generate)
                    .await??;
                info!("generated an RSA key pair for caching_sha2_password");
                Ok(Arc::new(key))
            })
            .await
            .cloned()
    }

    /// Decrypts a `caching_sha2_password` RSA block with `key` (see
    /// [`RsaKey::decrypt_password`](crate::auth::caching_sha2::RsaKey::decrypt_password))
    /// on a blocking thread: the block comes from a client that has not
    /// logged in, and a private-key operation costs about a millisecond,
    /// which an event loop does not spend. At most one decryption per
    /// worker thread runs at once; a flood of blocks waits for a permit
    /// (under each login's own timeout) instead of taking every blocking
    /// thread.
    pub async fn decrypt_rsa_password(
        &self,
        key: Arc<crate::auth::caching_sha2::RsaKey>,
        block: zeroize::Zeroizing<Vec<u8>>,
        nonce: [u8; crate::auth::NONCE_LEN],
    ) -> Option<zeroize::Zeroizing<Vec<u8>>> {
        let permit = Arc::clone(&self.rsa_permits).acquire_owned().await.ok()?;
        tokio::task::spawn_blocking(move || {
            let _permit = permit;
            key.decrypt_password(&block, &nonce)
        })
        .await
        .ok()
        .flatten()
    }

    /// Reads the configuration file again and swaps in what it describes:
    /// parse → validate → build → swap. On any error the running state stays
    /// and the error (with file and line) is returned and logged.
    ///
    /// Runs as a task of its own: once started it finishes (and systemd
    /// hears `READY=1` again) even if the caller stops waiting.
    pub async fn reload(self: &Arc<Self>) -> Result<(), String> {
        let this = Arc::clone(self);
        let task = tokio::spawn(async move {
            let _one_at_a_time = this.reload_lock.lock().await;
            notify::reloading();
            let result = this.reload_inner().await;
            match &result {
                Ok(()) => {
                    this.metrics.reloads_ok.fetch_add(1, Ordering::Relaxed);
                    this.health_wake.notify_one();
                    info!("configuration reloaded");
                }
                Err(e) => {
                    this.metrics.reloads_failed.fetch_add(1, Ordering::Relaxed);
                    warn!("reload refused, the running configuration stays: {e}");
                }
            }
            notify::ready();
            result
        });
        task.await
            .unwrap_or_else(|e| Err(format!("reload aborted: {e}")))
    }

    async fn reload_inner(self: &Arc<Self>) -> Result<(), String> {
        let path = self
            .config_path
            .clone()
            .ok_or_else(|| "no configuration file to reload".to_owned())?;
        let this = Arc::clone(self);
        let built = tokio::task::spawn_blocking(move || {
            let config = Config::load(&path).map_err(|e| e.to_string())?;
            let current = this.state();
            let fixed = current.restart_only_changes(&config);
            if !fixed.is_empty() {
                warn!(settings = ?fixed, "these settings take effect only after a restart");
            }
            State::build(config, &this.registry, Some(&current)).map_err(|e| format!("{e:#}"))
        })
        .await
        .map_err(|e| format!("reload aborted: {e}"))??;
        self.state.store(Arc::new(built));
        Ok(())
    }

    /// Compiles `bytes` as the routing policy (named `name`), runs the
    /// configured self-test, and swaps it in for new logins; returns its
    /// SHA-256. On any error the running policy stays.
    ///
    /// Runs as a task of its own that holds the reload lock from reading
    /// the state in force to storing its successor: a caller that stops
    /// waiting (an admin client that hangs up or times out) leaves the
    /// compile running, and if the lock were released with it, a reload
    /// made meanwhile would be undone when the compile stores the policy
    /// into the state it started from.
    pub async fn swap_policy(
        self: &Arc<Self>,
        bytes: Vec<u8>,
        name: Option<PathBuf>,
        which: Option<String>,
    ) -> Result<String, String> {
        let this = Arc::clone(self);
        let task = tokio::spawn(async move {
            let _one_at_a_time = this.reload_lock.lock().await;
            let shared = Arc::clone(&this);
            let result = tokio::task::spawn_blocking(move || {
                let current = shared.state();
                if let Some(w) = &which
                    && !current.named.contains_key(w)
                {
                    return Err(format!("no policy is called '{w}'"));
                }
                let config = current.config.policy_config(which.as_deref());
                let name = name.unwrap_or_else(|| {
                    PathBuf::from(format!(
                        "posted-{}.wasm",
                        &crate::policy::sha256_hex(&bytes)[..12]
                    ))
                });
                let policy = state::load_policy(&bytes, &name, config, &current.pools)
                    .map_err(|e| format!("{e:#}"))?;
                policy
                    .self_test(&config.selftest)
                    .map_err(|e| format!("policy {}: {e}", policy.name()))?;
                let hash = policy.hash().to_owned();
                shared
                    .state
                    .store(Arc::new(current.with_policy(which.as_deref(), policy)));
                Ok(hash)
            })
            .await
            .unwrap_or_else(|e| Err(format!("policy swap aborted: {e}")));
            match &result {
                Ok(hash) => {
                    this.metrics.policy_swaps.fetch_add(1, Ordering::Relaxed);
                    info!(sha256 = %hash, "new policy in use for new logins");
                }
                Err(e) => {
                    this.metrics
                        .policy_swaps_failed
                        .fetch_add(1, Ordering::Relaxed);
                    warn!("new policy refused, the running policy stays: {e}");
                }
            }
            result
        });
        task.await
            .unwrap_or_else(|e| Err(format!("policy swap aborted: {e}")))
    }

    /// Whether the proxy is draining for shutdown.
    pub fn is_shutting_down(&self) -> bool {
        self.stopping.is_cancelled()
    }
}

/// A client connection being served, counted in the sessions gauge.
struct SessionGauge<'a>(&'a Metrics);

impl<'a> SessionGauge<'a> {
    fn new(m: &'a Metrics) -> Self {
        m.sessions.fetch_add(1, Ordering::Relaxed);
        Self(m)
    }
}

impl Drop for SessionGauge<'_> {
    fn drop(&mut self) {
        self.0.sessions.fetch_sub(1, Ordering::Relaxed);
    }
}

/// Serves clients on `config.listen` until `shutdown` completes, then
/// drains: no new clients, open sessions get up to `shutdown_timeout_ms`
/// to finish, the rest are closed. Runs on `config.threads` threads, each
/// with its own single-threaded event loop and listening socket
/// (`SO_REUSEPORT`: the kernel spreads new connections), so a session, its
/// two sockets and its wake-ups stay on one core. A control event loop on
/// the calling thread runs health checks, reloads (SIGHUP), the admin
/// endpoint and systemd notifications.
pub fn run(shared: Arc<Shared>, shutdown: impl Future<Output = ()>) -> std::io::Result<()> {
    let initial = shared.state();
    let limit = Arc::new(Semaphore::new(initial.config.max_connections));
    let threads = shared.heartbeats.len();
    // Bind every socket here, so that a taken address fails the start: per
    // worker, one socket per listening address.
    let addrs = initial.config.listen_addrs();
    let sockets = (0..threads)
        .map(|_| {
            addrs
                .iter()
                .map(|(addr, policy)| Ok((bind(*addr)?, *addr, policy.clone())))
                .collect::<std::io::Result<Vec<_>>>()
        })
        .collect::<std::io::Result<Vec<_>>>()?;
    let admin_listener = match &initial.config.admin {
        Some(a) => Some(std::net::TcpListener::bind(*a.listen.get_ref())?),
        None => None,
    };
    let control = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    control.block_on(first_round(&shared));
    // Each worker holds a sender, dropped when its thread ends.
    let (done_tx, mut done_rx) = tokio::sync::mpsc::channel::<()>(1);
    let workers = sockets
        .into_iter()
        .enumerate()
        .map(|(i, sockets)| {
            let (shared, limit, done) = (Arc::clone(&shared), Arc::clone(&limit), done_tx.clone());
            std::thread::Builder::new()
                .name(format!("switchyard-{i}"))
                .spawn(move || worker(i, sockets, &shared, limit, done))
        })
        .collect::<std::io::Result<Vec<_>>>()?;
    drop(done_tx);
    control.block_on(async {
        let mut background = spawn_background(&shared, admin_listener);
        serving(&shared, threads);
        shutdown.await;
        shared.stopping.cancel();
        notify::stopping();
        info!(
            open_sessions = shared.metrics.sessions.load(Ordering::Relaxed),
            shutdown_timeout_ms = shared.state().config.shutdown_timeout_ms,
            "shutting down: no longer accepting clients; draining sessions"
        );
        background.abort_all();
        // Wait for the workers to drain (`recv` gives `None` once every
        // worker has dropped its sender); a second SIGTERM/SIGINT closes
        // what is still open at once.
        tokio::select! {
            _ = done_rx.recv() => {}
            _ = second_signal() => {
                warn!("second stop signal: closing open sessions now");
                shared.force_stop.cancel();
            }
        }
    });
    for worker in workers {
        match worker.join() {
            Ok(r) => r?,
            Err(panic) => std::panic::resume_unwind(panic),
        }
    }
    let left = shared.metrics.sessions.load(Ordering::Relaxed);
    info!(sessions_closed = left, "switchyard stopped");
    Ok(())
}

/// The first health round, which decides which backends take the first
/// sessions (and which one is the writer), and the first read of the
/// primary's accounts.
async fn first_round(shared: &Shared) {
    let state = shared.state();
    let timeout = Duration::from_millis(state.config.health.timeout_ms + 200);
    let mut checker = crate::pool::health::Checker::default();
    let _ = tokio::time::timeout(
        timeout,
        checker.round(&state.pools, &state.config.health, state.monitor.as_ref()),
    )
    .await;
    if state.config.users.from_backend().is_some() {
        shared
            .loaded_users
            .refresh_if_due(&state, Duration::ZERO)
            .await;
    }
}

/// A worker thread: its own event loop, its listeners and their sessions,
/// until the proxy stops and its sessions are drained. `_done` is dropped
/// when it returns, however it returns.
fn worker(
    i: usize,
    sockets: Vec<(tokio::net::TcpSocket, SocketAddr, Option<String>)>,
    shared: &Arc<Shared>,
    limit: Arc<Semaphore>,
    _done: tokio::sync::mpsc::Sender<()>,
) -> std::io::Result<()> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    runtime.block_on(async {
        let mut accepting = tokio::task::JoinSet::new();
        let sessions = TaskTracker::new();
        for (socket, addr, policy) in sockets {
            let listener = socket.listen(1024)?;
            let policy: Option<Arc<str>> = policy.map(Into::into);
            accepting.spawn(accept_loop(
                listener,
                addr,
                Admission {
                    shared: Arc::clone(shared),
                    limit: Arc::clone(&limit),
                    policy,
                    sessions: sessions.clone(),
                },
            ));
        }
        tokio::spawn(heartbeat(Arc::clone(shared), i));
        let sweeping = {
            let shared = Arc::clone(shared);
            tokio::spawn(async move { reuse::sweep(&shared.metrics).await })
        };
        let sweeping_idle = {
            let shared = Arc::clone(shared);
            tokio::spawn(async move { split::idle::sweep(&shared.metrics).await })
        };
        shared.stopping.cancelled().await;
        // Closes the listeners.
        accepting.abort_all();
        while accepting.join_next().await.is_some() {}
        drain(shared, &sessions).await;
        sweeping.abort();
        sweeping_idle.abort();
        reuse::close_all(&shared.metrics).await;
        split::idle::close_all(&shared.metrics).await;
        std::io::Result::Ok(())
    })?;
    runtime.shutdown_timeout(Duration::from_millis(500));
    Ok(())
}

/// The control thread's tasks: probes, health checks, reloads, policy
/// files, the primary's accounts, the watchdog, suppressed-log reports and
/// the admin endpoint.
fn spawn_background(
    shared: &Arc<Shared>,
    admin_listener: Option<std::net::TcpListener>,
) -> tokio::task::JoinSet<()> {
    let mut background = tokio::task::JoinSet::new();
    background.spawn(profile::probe_until_known(Arc::clone(shared)));
    let for_health = Arc::clone(shared);
    background.spawn(crate::pool::health::run(
        move || {
            let s = for_health.state();
            (
                Arc::clone(&s.pools),
                s.config.health.clone(),
                s.monitor.clone(),
            )
        },
        Arc::clone(&shared.health_wake),
    ));
    background.spawn(reload_on_sighup(Arc::clone(shared)));
    background.spawn(watch::policy_files(Arc::clone(shared)));
    background.spawn(watch::config_file(Arc::clone(shared)));
    background.spawn(users::refresh_loop(Arc::clone(shared)));
    background.spawn(fleet::run(Arc::clone(shared)));
    background.spawn(watchdog(Arc::clone(shared)));
    background.spawn(crate::logging::report_suppressed(Duration::from_secs(10)));
    if let Some(listener) = admin_listener {
        match crate::admin::serve(listener, Arc::clone(shared)) {
            Ok(task) => {
                background.spawn(task);
            }
            Err(e) => warn!(error = %e, "admin endpoint could not start"),
        }
    }
    background
}

/// Says so: the log line and systemd's READY=1.
fn serving(shared: &Shared, threads: usize) {
    let state = shared.state();
    info!(
        listen = ?state.config.listen_addrs().iter().map(|(a, _)| a.to_string()).collect::<Vec<_>>(),
        admin = ?state.config.admin.as_ref().map(|a| *a.listen.get_ref()),
        policy = state.policy.name(),
        threads,
        "switchyard is serving"
    );
    notify::ready();
}

/// Waits (on a worker's event loop, its listeners closed) until its
/// sessions are over: those that wait for nothing close at once (they
/// watch `Shared::stopping`), the others after their command. At
/// `shutdown_timeout_ms` (or a second signal) every session is told to
/// close now, and gets a moment to.
async fn drain(shared: &Shared, sessions: &TaskTracker) {
    sessions.close();
    let timeout = Duration::from_millis(shared.state().config.shutdown_timeout_ms);
    tokio::select! {
        () = sessions.wait() => return,
        () = tokio::time::sleep(timeout) => {}
        () = shared.force_stop.cancelled() => {}
    }
    shared.force_stop.cancel();
    let _ = tokio::time::timeout(Duration::from_millis(500), sessions.wait()).await;
}

/// Marks worker `i` alive every 100 ms, for the systemd watchdog.
async fn heartbeat(shared: Arc<Shared>, i: usize) {
    loop {
        let now = shared.started.elapsed().as_millis() as u64;
        shared.heartbeats[i].store(now, Ordering::Relaxed);
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

impl Shared {
    /// Whether a worker's event loop has not marked itself alive for
    /// longer than `limit`.
    fn stalled(&self, limit: Duration) -> bool {
        let now = self.started.elapsed().as_millis() as u64;
        self.heartbeats
            .iter()
            .any(|h| now.saturating_sub(h.load(Ordering::Relaxed)) > limit.as_millis() as u64)
    }

    /// What `/live` and `/ready` answer.
    pub fn health(&self) -> crate::admin::Health {
        crate::admin::Health {
            live: !self.stalled(Duration::from_secs(5)),
            unready: if self.stopping.is_cancelled() {
                Some("stopping")
            } else if self.draining.load(Ordering::Relaxed) {
                Some("draining")
            } else {
                None
            },
        }
    }

    /// Marks the instance draining; true the first time.
    pub fn drain_instance(&self) -> bool {
        !self.draining.swap(true, Ordering::Relaxed)
    }
}

/// Pings systemd's watchdog while every worker's event loop is alive.
async fn watchdog(shared: Arc<Shared>) {
    let Some(interval) = notify::watchdog_interval() else {
        return;
    };
    loop {
        tokio::time::sleep(interval).await;
        if shared.stalled(interval) {
            warn!("a worker's event loop is stalled; not pinging the watchdog");
        } else {
            notify::watchdog();
        }
    }
}

/// Completes on the next SIGINT or SIGTERM.
async fn second_signal() {
    use tokio::signal::unix::{SignalKind, signal};
    let (Ok(mut term), Ok(mut int)) = (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
    ) else {
        return std::future::pending().await;
    };
    tokio::select! {
        _ = term.recv() => {}
        _ = int.recv() => {}
    }
}

/// Reloads the configuration on every SIGHUP.
async fn reload_on_sighup(shared: Arc<Shared>) {
    use tokio::signal::unix::{SignalKind, signal};
    let Ok(mut hup) = signal(SignalKind::hangup()) else {
        warn!("cannot listen for SIGHUP; reloads only through the admin endpoint");
        return;
    };
    while hup.recv().await.is_some() {
        info!("SIGHUP: reloading the configuration");
        let _ = shared.reload().await;
    }
}

/// A socket bound to `addr` that other sockets may bind too.
fn bind(addr: std::net::SocketAddr) -> std::io::Result<tokio::net::TcpSocket> {
    let socket = if addr.is_ipv4() {
        tokio::net::TcpSocket::new_v4()?
    } else {
        tokio::net::TcpSocket::new_v6()?
    };
    socket.set_reuseaddr(true)?;
    socket.set_reuseport(true)?;
    socket.bind(addr)?;
    Ok(socket)
}

/// Accepts clients on `listener` (configured as `addr`): through a
/// PROXY protocol balancer if that listener takes them so.
async fn accept_loop(listener: TcpListener, addr: SocketAddr, admission: Admission) {
    loop {
        let (mut socket, peer) = match listener.accept().await {
            Ok(c) => c,
            Err(e) => {
                // EMFILE and friends: back off instead of spinning.
                warn!(error = %e, "accept failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let _ = socket.set_nodelay(true);
        let proxied = {
            let state = admission.shared.state();
            state.config.proxy_trusted(addr).map(|trusted| {
                (
                    trusted.iter().any(|c| c.contains(peer.ip())),
                    state.config.login_timeout(),
                )
            })
        };
        let Some((trusted, timeout)) = proxied else {
            admission.admit(socket, peer);
            continue;
        };
        let admission = admission.clone();
        admission.sessions.clone().spawn(async move {
            let metrics = &admission.shared.metrics;
            if let proxied::Arrival::Client(client) =
                proxied::arrive(&mut socket, peer, addr, trusted, timeout, metrics).await
            {
                admission.admit(socket, client);
            }
        });
    }
}

/// What a listener needs to let a client in.
#[derive(Clone)]
struct Admission {
    shared: Arc<Shared>,
    limit: Arc<Semaphore>,
    /// The listener's policy (`None`: the one of `listen`).
    policy: Option<Arc<str>>,
    sessions: TaskTracker,
}

impl Admission {
    /// Serves the client at `peer` on `socket`, or refuses it: a blocked
    /// address, too many of its logins pending, `max_connections` reached.
    fn admit(&self, socket: TcpStream, peer: SocketAddr) {
        let shared = &self.shared;
        let (key, max_pending) = {
            let state = shared.state();
            let t = &state.config.throttle;
            (
                limits::client_key(peer.ip(), t.ipv6_prefix),
                t.max_pending_logins,
            )
        };
        if let limits::Verdict::Blocked(left) = shared.throttle.check(key, Instant::now()) {
            shared.metrics.login(Outcome::Throttled);
            warn!(client = %peer, blocked_for_ms = left.as_millis() as u64, "refused: client address blocked after failed logins");
            tokio::spawn(refuse(socket, host_blocked(&peer.ip().to_string(), left)));
            return;
        }
        let Some(pending) = shared.pending_logins.claim(key, max_pending) else {
            shared.metrics.login(Outcome::TooManyConnections);
            warn!(client = %peer, max_pending_logins = max_pending, "refused: too many connections from this address still logging in");
            tokio::spawn(refuse(socket, too_many_pending(&peer.ip().to_string())));
            return;
        };
        match Arc::clone(&self.limit).try_acquire_owned() {
            Ok(permit) => {
                let shared = Arc::clone(shared);
                let policy = self.policy.clone();
                self.sessions.spawn(async move {
                    let _gauge = SessionGauge::new(&shared.metrics);
                    session::serve(socket, peer, &shared, policy.as_deref(), pending).await;
                    drop(permit);
                });
            }
            Err(_) => {
                shared.metrics.login(Outcome::TooManyConnections);
                warn!(client = %peer, "refused: max_connections reached");
                tokio::spawn(refuse(socket, too_many_connections()));
            }
        }
    }
}

/// Sends `err` as the first packet (in place of the greeting, so without
/// SQLSTATE, as MySQL does) and closes.
async fn refuse(mut socket: TcpStream, err: crate::protocol::ErrPacket) {
    let mut out = BytesMut::new();
    encode_packet(0, &err.encode_pre_41(), &mut out);
    let _ = tokio::time::timeout(Duration::from_secs(1), async {
        let _ = socket.write_all(&out).await;
        let _ = socket.shutdown().await;
    })
    .await;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn connection_ids_stay_above_backend_thread_ids() {
        assert_eq!(connection_id_at(0), FIRST_CONNECTION_ID);
        assert_eq!(connection_id_at(1), FIRST_CONNECTION_ID + 1);
        assert_eq!(connection_id_at(u32::MAX - FIRST_CONNECTION_ID), u32::MAX);
        // Past the top, back to the first id, never below it.
        assert_eq!(
            connection_id_at(u32::MAX - FIRST_CONNECTION_ID + 1),
            FIRST_CONNECTION_ID
        );
        assert!(
            (0..=u32::MAX)
                .step_by(65_537)
                .all(|n| connection_id_at(n) >= FIRST_CONNECTION_ID)
        );
    }
}
