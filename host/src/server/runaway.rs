//! A statement that outran `query_timeout_ms`. Its session is closed (the
//! client gets ERR 9105), but closing the backend connection does not stop
//! the statement: the server notices only when it next writes to the
//! connection, after the statement's work is done. So the backend thread
//! is killed, over a login of the monitor account (which needs `CONNECTION
//! ADMIN`, or `SUPER` before MariaDB 10.5, to kill another user's thread).

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::Ordering;

use tracing::{info, warn};

use super::Shared;
use crate::backend::BackendError;
use crate::protocol::QueryReply;

/// Kills backend `thread` on `backend`, in a task of its own (the session
/// that ran it is closing), and counts and logs what came of it.
pub(super) fn kill(shared: &Arc<Shared>, backend: SocketAddr, thread: u32) {
    let state = shared.state();
    let Some(monitor) = state.monitor.clone() else {
        shared
            .metrics
            .runaway_not_killed
            .fetch_add(1, Ordering::Relaxed);
        warn!(%backend, thread, "no [monitor] account to KILL the backend thread: its statement runs on until it ends");
        return;
    };
    let shared = Arc::clone(shared);
    tokio::spawn(async move {
        let metrics = &shared.metrics;
        let tls = state.pools.tls_for(backend);
        let killed = tokio::time::timeout(state.config.connect_timeout(), async {
            let mut session = monitor.open(backend, tls).await?;
            match session.query(&format!("KILL {thread}")).await? {
                QueryReply::Err(e) => Err(BackendError::Refused(e)),
                QueryReply::Ok | QueryReply::Rows(_) => Ok(()),
            }
        })
        .await;
        match killed {
            Ok(Ok(())) => {
                metrics.runaway_killed.fetch_add(1, Ordering::Relaxed);
                info!(%backend, thread, "killed the backend thread whose statement outran query_timeout_ms");
            }
            // 1094: the statement ended (and the server closed the thread)
            // meanwhile.
            Ok(Err(BackendError::Refused(e))) if e.code == 1094 => {
                metrics.runaway_killed.fetch_add(1, Ordering::Relaxed);
            }
            Ok(Err(e)) => {
                metrics.runaway_not_killed.fetch_add(1, Ordering::Relaxed);
                warn!(%backend, thread, error = %e, "could not KILL the backend thread whose statement outran query_timeout_ms (the monitor needs CONNECTION ADMIN)");
            }
            Err(_) => {
                metrics.runaway_not_killed.fetch_add(1, Ordering::Relaxed);
                warn!(%backend, thread, "could not KILL the backend thread whose statement outran query_timeout_ms: no answer within connect_timeout_ms");
            }
        }
    });
}
