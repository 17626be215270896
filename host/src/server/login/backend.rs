//! The backend side of a login: a kept backend session taken over, or a
//! new one opened, by the pool's balancing order.

use std::sync::atomic::Ordering;
use std::time::Duration;

use tokio::time::{Instant as Deadline, timeout_at};
use tracing::{info, warn};

use super::LoginError;
use crate::backend::{self, BackendError, BackendSession, LoginRequest};
use crate::metrics::Outcome;
use crate::pool::{BackendLease, Pool};
use crate::server::{codes, reuse};

/// A kept backend session of `addr` logged in to for `request`, if the
/// pool keeps them and one fits: `Some(Ok)` to use, `Some(Err)` the
/// backend's refusal of the user (`BackendError::Refused`, as a new login
/// would have been refused), `None` to open a new session (none kept, or
/// the kept one failed).
async fn take_kept(
    pool: &Pool,
    addr: std::net::SocketAddr,
    request: &LoginRequest<'_>,
    metrics: &crate::metrics::Metrics,
    deadline: Deadline,
) -> Option<Result<BackendSession, BackendError>> {
    if pool.idle_sessions == 0 {
        return None;
    }
    let shape = reuse::Shape::of(
        (request.client.capabilities, request.offered),
        (request.client.mariadb_capabilities, request.offered_mariadb),
    );
    while let Some(kept) = reuse::take(addr, shape, pool.tls.as_ref(), metrics) {
        match timeout_at(deadline, reuse::take_over(kept, request)).await {
            Ok(Ok(session)) => {
                metrics.backend_reused.fetch_add(1, Ordering::Relaxed);
                return Some(Ok(session));
            }
            Ok(Err(BackendError::NotAtRest(why))) => {
                metrics.backend_not_at_rest.fetch_add(1, Ordering::Relaxed);
                tracing::debug!(backend = %addr, why, "a kept backend session was not at rest; closed");
            }
            Ok(Err(e)) => match e.into_refusal() {
                Ok(err) => return Some(Err(BackendError::Refused(err))),
                Err(e) => {
                    info!(backend = %addr, error = %e, "a kept backend session failed; opening a new one");
                    return None;
                }
            },
            Err(_) => {
                info!(backend = %addr, "a kept backend session did not answer; opening a new one");
                return None;
            }
        }
    }
    None
}

/// Phase 4: a backend of the pool, by the pool's balancing order, each
/// attempt within `connect_timeout`; a backend that cannot be reached is
/// skipped for the next one.
pub(in crate::server) async fn open_backend(
    pool: &Pool,
    request: &LoginRequest<'_>,
    seq: u8,
    (connect_timeout, metrics): (Duration, &crate::metrics::Metrics),
    deadline: Deadline,
) -> Result<(BackendLease, BackendSession), LoginError> {
    let mut tried = 0;
    for candidate in pool.candidates() {
        let now = Deadline::now();
        if now >= deadline {
            break;
        }
        let Some(lease) = pool.lease(&candidate) else {
            // It reached its max_connections meanwhile.
            continue;
        };
        tried += 1;
        let backend = &candidate.backend;
        let attempt_deadline = deadline.min(now + connect_timeout);
        let result = match take_kept(pool, backend.addr, request, metrics, attempt_deadline).await {
            Some(kept) => kept,
            None => timeout_at(
                attempt_deadline,
                backend::open(backend.addr, request, pool.tls.as_ref()),
            )
            .await
            .unwrap_or(Err(BackendError::Timeout)),
        };
        match result {
            Ok(session) => return Ok((lease, session)),
            Err(e) if e.is_backend_fault() => {
                if backend.mark_failed(format!("login attempt: {e}")) {
                    warn!(backend = %backend.addr, error = %e, "backend failed a login; out of service until its checks pass; trying the next one");
                } else {
                    info!(backend = %backend.addr, error = %e, "backend still failing; trying the next one");
                }
            }
            Err(BackendError::Refused(err)) => {
                let reason = format!(
                    "backend {} refused: {} {}",
                    backend.addr, err.code, err.message
                );
                return Err(LoginError::deny(err, seq, Outcome::BackendRefused, reason));
            }
            Err(e) => {
                return Err(LoginError::deny(
                    codes::backend_unsupported(&e.to_string()),
                    seq,
                    Outcome::BackendUnsupported,
                    format!("backend {}: {e}", backend.addr),
                ));
            }
        }
    }
    Err(LoginError::deny(
        codes::no_backend(&pool.name, tried),
        seq,
        Outcome::NoBackend,
        format!("no backend of pool '{}' available", pool.name),
    ))
}
