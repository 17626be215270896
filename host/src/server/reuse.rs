//! Backend sessions kept after their clients quit, for later logins to take
//! over (a pool's `idle_sessions`).
//!
//! When a client of such a pool sends COM_QUIT, the relay stops at a safe
//! point and hands the backend session back instead of closing it; it is
//! kept while the backend has fewer than `idle_sessions` kept on this
//! worker. A later login routed to that backend takes the newest kept
//! session whose flags fit its own ([`Shape`]), checks that it is at rest
//! (no answer still on its way to the departed client) and logs in with
//! COM_CHANGE_USER, both in one write ([`backend::take_over`]): the backend
//! authenticates the new user with its own nonce and resets the session
//! (transactions, temporary tables, variables, prepared statements). So a
//! login still authenticates at the backend, without a new TCP connection,
//! greeting and thread.
//!
//! Kept sessions live per worker thread: a socket stays with the event loop
//! that registered it, and taking one needs no lock. Each worker closes its
//! sessions that waited `idle_session_ms` (with COM_QUIT).

use std::cell::RefCell;
use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use crate::backend::{self, BackendSession};
use crate::conn::{PacketStream, Stream};
use crate::metrics::Metrics;
use crate::pool::Pool;
use crate::protocol::{CapabilityFlags, Command, MariaDbCapabilities};

/// How long a kept session may take to answer the at-rest check: a
/// literal SELECT; a slower answer most likely waits behind a query of the
/// departed client's, and a new session is opened instead.
const AT_REST_WITHIN: Duration = Duration::from_millis(100);
/// How long a COM_QUIT may take to write.
const QUIT_TIMEOUT: Duration = Duration::from_secs(1);
/// How often a worker looks for kept sessions that waited too long.
const SWEEP_INTERVAL: Duration = Duration::from_secs(1);

/// The client-side choices that decide a backend session's flags: a kept
/// session fits a login of the same shape (against the same backend, the
/// same choices give the same session flags; the database, attributes and
/// charset are the COM_CHANGE_USER's).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct Shape {
    caps: CapabilityFlags,
    mariadb: MariaDbCapabilities,
    tls: bool,
}

impl Shape {
    /// The shape of a client session with these flags, offered these, on a
    /// backend session that is (or is not) TLS.
    pub(super) fn of(
        (client, offered): (CapabilityFlags, CapabilityFlags),
        (client_mariadb, offered_mariadb): (MariaDbCapabilities, MariaDbCapabilities),
        tls: bool,
    ) -> Self {
        let login_only = CapabilityFlags::CLIENT_CONNECT_WITH_DB
            | CapabilityFlags::CLIENT_CONNECT_ATTRS
            | CapabilityFlags::CLIENT_SSL;
        Self {
            caps: (client & offered) - login_only,
            mariadb: client_mariadb & offered_mariadb,
            tls,
        }
    }
}

/// A backend session waiting for a login.
struct Kept {
    session: BackendSession,
    shape: Shape,
    expires: Instant,
}

thread_local! {
    /// This worker's kept sessions, by backend address.
    static KEPT: RefCell<HashMap<SocketAddr, Vec<Kept>>> = RefCell::default();
}

/// What the session knew of its backend session when its client quit.
pub(super) struct Quitting<'a> {
    /// The backend's stream.
    pub stream: Stream,
    /// The backend's thread id.
    pub thread_id: u32,
    /// The greeting nonce a COM_CHANGE_USER answers.
    pub nonce: &'a [u8],
    /// The backend session's flags.
    pub capabilities: CapabilityFlags,
    /// The shape of the client session it served.
    pub shape: Shape,
}

/// Keeps the backend session of a client that quit, if `pool` has room
/// for it on this worker; otherwise closes it. Whether it is at rest is
/// checked when a login takes it over (see [`backend::take_over`]), in the
/// same write as the change of user, so that keeping costs nothing.
pub(super) async fn keep(quitting: Quitting<'_>, addr: SocketAddr, pool: &Pool, metrics: &Metrics) {
    let stream = PacketStream::from_parts(
        quitting.stream,
        bytes::BytesMut::new(),
        backend::MAX_LOGIN_PACKET,
    );
    let full =
        KEPT.with_borrow(|k| k.get(&addr).map_or(0, Vec::len) >= pool.idle_sessions as usize);
    if full {
        metrics.backend_no_room.fetch_add(1, Ordering::Relaxed);
        return quit(stream).await;
    }
    let kept = Kept {
        session: BackendSession {
            stream,
            thread_id: quitting.thread_id,
            nonce: quitting.nonce.to_vec(),
            ok: bytes::Bytes::new(),
            capabilities: quitting.capabilities,
        },
        shape: quitting.shape,
        expires: Instant::now() + pool.idle_session_max,
    };
    KEPT.with_borrow_mut(|k| k.entry(addr).or_default().push(kept));
    metrics.backend_kept.fetch_add(1, Ordering::Relaxed);
    metrics.backend_idle.fetch_add(1, Ordering::Relaxed);
}

/// The newest kept session of `addr` (on this worker) that fits `shape`.
pub(super) fn take(addr: SocketAddr, shape: Shape, metrics: &Metrics) -> Option<BackendSession> {
    let now = Instant::now();
    KEPT.with_borrow_mut(|k| {
        let list = k.get_mut(&addr)?;
        let i = list
            .iter()
            .rposition(|kept| kept.shape == shape && kept.expires > now)?;
        metrics.backend_idle.fetch_sub(1, Ordering::Relaxed);
        Some(list.remove(i).session)
    })
}

/// Logs in to `session` as the user of `req` once it is shown at rest
/// (COM_CHANGE_USER).
pub(super) async fn take_over(
    mut session: BackendSession,
    req: &backend::LoginRequest<'_>,
) -> Result<BackendSession, backend::BackendError> {
    let ok = backend::take_over(
        &mut session.stream,
        (&session.nonce, session.capabilities),
        req,
        AT_REST_WITHIN,
    )
    .await?;
    session.ok = ok;
    Ok(session)
}

/// Closes kept sessions that waited too long, every second, on this
/// worker; on shutdown (when this future is dropped), the rest too.
pub(super) async fn sweep(metrics: &Metrics) {
    let mut ticks = tokio::time::interval(SWEEP_INTERVAL);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        ticks.tick().await;
        let now = Instant::now();
        let expired = take_all(|kept| kept.expires <= now, metrics);
        for session in expired {
            tokio::spawn(quit(session.stream));
        }
    }
}

/// Closes every kept session of this worker.
pub(super) async fn close_all(metrics: &Metrics) {
    let all = take_all(|_| true, metrics);
    for session in all {
        quit(session.stream).await;
    }
}

fn take_all(which: impl Fn(&Kept) -> bool, metrics: &Metrics) -> Vec<BackendSession> {
    let mut out = Vec::new();
    KEPT.with_borrow_mut(|k| {
        for list in k.values_mut() {
            // In order: `take` relies on the newest being last.
            out.extend(
                list.extract_if(.., |kept| which(kept))
                    .map(|kept| kept.session),
            );
        }
        k.retain(|_, list| !list.is_empty());
    });
    metrics
        .backend_idle
        .fetch_sub(out.len() as i64, Ordering::Relaxed);
    out
}

/// Ends a backend session politely: COM_QUIT, then close.
pub(super) async fn quit(mut stream: PacketStream) {
    let _ = tokio::time::timeout(QUIT_TIMEOUT, stream.write(0, &[Command::Quit as u8])).await;
}

#[cfg(test)]
mod tests {
    use super::*;

    fn shape(client: CapabilityFlags, tls: bool) -> Shape {
        Shape::of(
            (client, CapabilityFlags::implemented()),
            (
                MariaDbCapabilities::all(),
                MariaDbCapabilities::implemented(),
            ),
            tls,
        )
    }

    #[test]
    fn shapes_differ_by_what_shapes_the_session_only() {
        let base = CapabilityFlags::CLIENT_PROTOCOL_41
            | CapabilityFlags::CLIENT_SECURE_CONNECTION
            | CapabilityFlags::CLIENT_PLUGIN_AUTH
            | CapabilityFlags::CLIENT_MULTI_RESULTS;
        // The database, attributes and TLS of the login itself do not
        // matter: COM_CHANGE_USER carries the first two, TLS is per hop.
        let login_only = CapabilityFlags::CLIENT_CONNECT_WITH_DB
            | CapabilityFlags::CLIENT_CONNECT_ATTRS
            | CapabilityFlags::CLIENT_SSL;
        assert_eq!(shape(base, false), shape(base | login_only, false));
        // Result-shaping flags do.
        assert_ne!(
            shape(base, false),
            shape(base | CapabilityFlags::CLIENT_DEPRECATE_EOF, false)
        );
        assert_ne!(
            shape(base, false),
            shape(base - CapabilityFlags::CLIENT_MULTI_RESULTS, false)
        );
        // So does TLS towards the backend.
        assert_ne!(shape(base, false), shape(base, true));
        // A flag Switchyard did not offer is not part of the session.
        let offered = CapabilityFlags::implemented() - CapabilityFlags::CLIENT_DEPRECATE_EOF;
        let of = |client| {
            Shape::of(
                (client, offered),
                (MariaDbCapabilities::empty(), MariaDbCapabilities::empty()),
                false,
            )
        };
        assert_eq!(of(base), of(base | CapabilityFlags::CLIENT_DEPRECATE_EOF));
    }
}
