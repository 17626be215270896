//! The listener and the state every session shares.
//!
//! `run` accepts clients, caps them at `max_connections` (further clients get
//! ERR 1040) and spawns one task per session; `session` drives a session
//! through its phases and `relay` moves its bytes afterwards. The greeting
//! presented to clients comes from the backends' own greetings, probed at
//! start and again until every backend has answered.

mod codes;
mod profile;
mod relay;
mod session;

use std::collections::HashMap;
use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};

use bytes::BytesMut;
use tokio::io::AsyncWriteExt;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Semaphore;
use tracing::{info, warn};

pub use codes::*;
pub use profile::ServerProfile;

use crate::auth::PasswordHash;
use crate::config::Config;
use crate::policy::Policy;
use crate::pool::Pools;
use crate::protocol::encode_packet;

/// Everything a session needs, shared by all of them.
#[derive(Debug)]
pub struct Shared {
    /// The configuration in force.
    pub config: Config,
    /// Accounts by name.
    pub users: HashMap<String, PasswordHash>,
    /// Backend pools.
    pub pools: Arc<Pools>,
    /// The routing policy.
    pub policy: Arc<Policy>,
    /// What clients are greeted with.
    pub profile: profile::ProfileCell,
    next_connection_id: AtomicU32,
}

impl Shared {
    /// Shared state for `config`, with `pools` and a loaded `policy`.
    pub fn new(config: Config, pools: Arc<Pools>, policy: Arc<Policy>) -> Self {
        let users = config
            .users
            .iter()
            .map(|u| (u.name.get_ref().clone(), u.password_hash.clone()))
            .collect();
        let profile = profile::ProfileCell::new(ServerProfile::fallback(&config));
        Self {
            config,
            users,
            pools,
            policy,
            profile,
            next_connection_id: AtomicU32::new(1),
        }
    }

    fn connection_id(&self) -> u32 {
        self.next_connection_id.fetch_add(1, Ordering::Relaxed)
    }
}

/// Serves clients on `config.listen` until `shutdown` completes, on
/// `config.threads` threads. Each thread runs its own single-threaded
/// runtime and its own listening socket (`SO_REUSEPORT`: the kernel spreads
/// new connections), so a session, its two sockets and its wake-ups stay on
/// one core. A small control runtime on the calling thread probes backends
/// and waits for `shutdown`. Sessions in progress when it completes are
/// dropped.
pub fn run(shared: Arc<Shared>, shutdown: impl Future<Output = ()>) -> std::io::Result<()> {
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let limit = Arc::new(Semaphore::new(shared.config.max_connections));
    let threads = shared.config.threads();
    // Bind every socket here, so that a taken address fails the start.
    let sockets = (0..threads)
        .map(|_| bind(shared.config.listen))
        .collect::<std::io::Result<Vec<_>>>()?;
    let mut workers = Vec::with_capacity(threads);
    for (i, socket) in sockets.into_iter().enumerate() {
        let (shared, limit, mut stop) = (Arc::clone(&shared), Arc::clone(&limit), stop_rx.clone());
        let worker = std::thread::Builder::new()
            .name(format!("switchyard-{i}"))
            .spawn(move || -> std::io::Result<()> {
                let runtime = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()?;
                runtime.block_on(async {
                    let listener = socket.listen(1024)?;
                    tokio::select! {
                        _ = accept_loop(&listener, &shared, &limit) => {}
                        _ = stop.wait_for(|stop| *stop) => {}
                    }
                    std::io::Result::Ok(())
                })?;
                runtime.shutdown_timeout(std::time::Duration::from_secs(1));
                Ok(())
            })?;
        workers.push(worker);
    }
    let control = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    control.block_on(async {
        let profile_task = tokio::spawn(profile::probe_until_known(Arc::clone(&shared)));
        let recovery_task = tokio::spawn(crate::pool::recover_failing(
            Arc::clone(&shared.pools),
            std::time::Duration::from_millis(shared.config.probe_interval_ms),
            shared.config.connect_timeout(),
        ));
        info!(
            listen = %shared.config.listen,
            policy = shared.policy.name(),
            threads,
            "switchyard is serving"
        );
        shutdown.await;
        info!("shutting down: no longer accepting clients");
        profile_task.abort();
        recovery_task.abort();
    });
    let _ = stop_tx.send(true);
    for worker in workers {
        match worker.join() {
            Ok(r) => r?,
            Err(panic) => std::panic::resume_unwind(panic),
        }
    }
    Ok(())
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

async fn accept_loop(listener: &TcpListener, shared: &Arc<Shared>, limit: &Arc<Semaphore>) {
    loop {
        let (socket, peer) = match listener.accept().await {
            Ok(c) => c,
            Err(e) => {
                // EMFILE and friends: back off instead of spinning.
                warn!(error = %e, "accept failed");
                tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                continue;
            }
        };
        let _ = socket.set_nodelay(true);
        match Arc::clone(limit).try_acquire_owned() {
            Ok(permit) => {
                let shared = Arc::clone(shared);
                tokio::spawn(async move {
                    session::serve(socket, peer, shared).await;
                    drop(permit);
                });
            }
            Err(_) => {
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
    let _ = tokio::time::timeout(std::time::Duration::from_secs(1), async {
        let _ = socket.write_all(&out).await;
        let _ = socket.shutdown().await;
    })
    .await;
}
